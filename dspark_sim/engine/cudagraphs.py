"""Manual CUDA graphs for the engine's forward passes: one capture per input shape, then replays.

Why not only torch.compile: a speculative engine meets many shapes (batch sizes x verify lengths
1..gamma+1 that a policy picks step by step); compiling each costs seconds to minutes, capturing
one costs milliseconds. Replays remove the per-kernel launch cost that dominates small decode passes.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dspark_sim.engine.model import Transformer


class GraphedForward:
    """Callable like `model(tokens, positions, logit_index=...)`, replaying a captured graph per shape.

    The model's static KV cache lives in module buffers, so writes inside a replay land in the real
    cache. Inputs are copied into the graph's static buffers; the output is cloned because the next
    replay overwrites it. Caches must not be reallocated after capture (call `reset()` if they are).
    """

    def __init__(self, model: Transformer, warmup: int = 2):
        if model.device.type != "cuda":
            raise ValueError("CUDA graphs need a CUDA model")
        self.model = model
        self.warmup = warmup
        self.graphs: dict[tuple, tuple] = {}
        self.version = model.buffers_version

    def reset(self) -> None:
        self.graphs.clear()

    def _capture(self, tokens: Tensor, positions: Tensor, logit_index: Tensor | None) -> tuple:
        st, sp = tokens.clone(), positions.clone()
        sli = logit_index.clone() if logit_index is not None else None
        kw = {"logit_index": sli} if sli is not None else {}
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.no_grad():
            for _ in range(self.warmup):
                self.model(st, sp, **kw)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # each graph keeps a private memory pool: sharing one across graphs that are later dropped
        # trips the caching allocator (graphs are small: one decode or verify pass each)
        with torch.cuda.graph(graph), torch.no_grad():
            out = self.model(st, sp, **kw)
        return graph, st, sp, sli, out

    def __call__(self, tokens: Tensor, positions: Tensor, logit_index: Tensor | None = None) -> Tensor:
        # a graph bakes in the addresses of every cache and RoPE buffer: once the model reallocates
        # them (setup_caches, a RoPE rebuild) all earlier graphs are stale and are dropped
        if self.model.buffers_version != self.version:
            self.graphs.clear()
            self.version = self.model.buffers_version
        key = (tuple(tokens.shape), tuple(positions.shape), logit_index is not None)
        entry = self.graphs.get(key)
        if entry is None:
            entry = self._capture(tokens, positions, logit_index)
            self.graphs[key] = entry
        graph, st, sp, sli, out = entry
        st.copy_(tokens)
        sp.copy_(positions)
        if sli is not None and logit_index is not None:
            sli.copy_(logit_index)
        graph.replay()
        return out.clone()


def precapture(target_forward: GraphedForward | None, draft_forward: GraphedForward | None, batch: int,
               gamma_max: int, position: int = 0) -> None:
    """Capture every shape a speculative run at this batch can meet (verify blocks 1..gamma_max+1,
    the draft's 2-token catch-up and 1-token passes), so no capture lands inside a timed run.
    Writes K/V at `position`.. of the caches; every run re-prefills, so that is harmless."""
    for fwd, shapes in ((target_forward, [(q, False) for q in range(1, gamma_max + 2)]),
                        (draft_forward, [(2, True), (1, False)])):
        if fwd is None:
            continue
        dev = fwd.model.device
        for q, with_index in shapes:
            tokens = torch.zeros(batch, q, dtype=torch.long, device=dev)
            positions = position + torch.arange(q, device=dev).expand(batch, q)
            index = torch.full((batch,), q - 1, dtype=torch.long, device=dev) if with_index else None
            fwd(tokens, positions, logit_index=index)
