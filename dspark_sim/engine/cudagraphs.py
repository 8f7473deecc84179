"""Manual CUDA graphs for the engine: forward passes (GraphedForward) and a speculative step's two phases
of device work (StepGraphs), one capture per input shape, then replays.

Why not only torch.compile: a speculative engine meets many shapes (batch sizes x verify lengths
1..gamma+1 that a policy picks step by step); compiling each costs seconds to minutes, capturing
one costs milliseconds. Replays remove the per-kernel launch cost that dominates small decode passes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from dspark_sim.engine.caches import token_buffer_len
from dspark_sim.engine.model import Transformer
from dspark_sim.engine.sampling import Sampling
from dspark_sim.engine.step import draft_noise, draft_phase, verify_noise, verify_phase

#: a draft phase's outputs: drafts [B, gamma], q [B, gamma, V] (None when greedy), the host read
DraftOut = tuple[Tensor, Tensor | None, Tensor]


class Replayable(Protocol):
    """A captured graph (`torch.cuda.CUDAGraph`), or what a test substitutes for one."""

    def replay(self) -> None: ...


#: a run shape's buffers: tokens, pending positions, control rows on the device and pinned on the host
_IO = tuple[Tensor, Tensor, Tensor, Tensor]


@dataclass
class _DraftEntry:
    """A captured draft phase: its graph, its static outputs and the static noise it reads."""

    graph: Replayable
    out: DraftOut
    noise: Tensor | None


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


class StepGraphs:
    """A speculative step's two phases of device work (`step.draft_phase`, `step.verify_phase`)
    as CUDA graphs, one capture per shape; pass it to `speculative_generate(step_graphs=...)`.

    Why: with only the forward passes graphed (GraphedForward), the host still launches about 20 small
    kernels a drafted token and 30 a verify (sampling, rejection maths, buffer writes). On the H200 that
    launching took longer than the tiny pair's passes, so the loop ran at the host's speed, which moved
    by up to 2x between minutes (validation/README.md). Graphed, a step costs the host a few
    calls whatever gamma is, and the GPU sets its pace, as it does for plain decoding.

    The phases read and write the step's own buffers (`buffers()`), and their random numbers are drawn
    outside the graphs, into static tensors, by the same calls the eager loop makes: a graphed run gives
    the very tokens of an eager run with the same generator. The verify lengths and active rows go to
    the GPU in one copy from pinned memory. Each capture runs its phase `warmup` times first (on a side
    stream) and restores the token buffer and positions after each run; the K/V those runs write lies
    at positions the real step rewrites.
    """

    def __init__(self, target: Transformer, draft: Transformer | None, warmup: int = 2):
        self.target_model, self.draft_model, self.warmup = target, draft, warmup
        self.vocab = target.args.vocab_size
        self._io: dict[tuple[int, int], _IO] = {}
        self._noise: dict[tuple, tuple[Tensor, Tensor] | None] = {}
        self._phases: dict[tuple, _DraftEntry | Replayable] = {}
        self._version = self._versions()

    def _versions(self) -> tuple[int, int]:
        d = self.draft_model
        return self.target_model.buffers_version, (d.buffers_version if d is not None else -1)

    def buffers(self, bsz: int, length: int) -> tuple[Tensor, Tensor]:
        """The token buffer [bsz, length] and pending positions [bsz] every run of this shape uses."""
        return self._io_of(bsz, length)[:2]

    def _io_of(self, bsz: int, length: int) -> _IO:
        """buf, pend, and the step's control rows (verify lengths, active) on the device and pinned on the host."""
        io = self._io.get((bsz, length))
        if io is None:
            dev = self.target_model.device
            ctl = torch.zeros(2, bsz, dtype=torch.long, device=dev)
            host = torch.zeros(2, bsz, dtype=torch.long, pin_memory=dev.type == "cuda")
            io = (torch.zeros(bsz, length, dtype=torch.long, device=dev), torch.zeros(bsz, dtype=torch.long, device=dev),
                  ctl, host)
            self._io[(bsz, length)] = io
        return io

    def _check(self, buf: Tensor, pend: Tensor) -> _IO:
        # graphs bake in the addresses of every cache: new caches (setup_caches) make them all stale
        if self._versions() != self._version:
            self._phases.clear()
            self._version = self._versions()
        io = self._io_of(*buf.shape)
        if buf is not io[0] or pend is not io[1]:
            raise ValueError("step graphs run on their own buffers: take them from StepGraphs.buffers()")
        return io

    def _capture(self, run: Callable[[], Any], keep: tuple[Tensor, ...]) -> tuple[Replayable, Any]:
        """`run`'s warm-up runs on a side stream, then its capture -> (graph, its static outputs)."""
        if self.target_model.device.type != "cuda":
            raise ValueError("CUDA graphs need a CUDA model")
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self._warm(run, keep)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), torch.no_grad():  # capture runs nothing: buf and pend stay as restored
            out = run()
        return graph, out

    def _warm(self, run: Callable[[], Any], keep: tuple[Tensor, ...]) -> None:
        """Run `run` `warmup` times, putting `keep` (the token buffer, the positions) back after each."""
        saved = [t.clone() for t in keep]
        with torch.no_grad():
            for _ in range(self.warmup):
                run()
                for t, s in zip(keep, saved, strict=True):
                    t.copy_(s)

    def _verify_noise_of(self, buf: Tensor, gamma: int, sampling: Sampling) -> tuple[Tensor, Tensor] | None:
        """The static verify noise of a run shape (uniforms for up to gamma drafts, Exp(1) per token)."""
        key = (*buf.shape, gamma, sampling)
        if key not in self._noise:
            self._noise[key] = None if sampling.greedy else (
                torch.full((buf.shape[0], gamma), 0.5, device=buf.device),
                torch.ones(buf.shape[0], self.vocab, device=buf.device))
        return self._noise[key]

    def _draft_entry(self, io: _IO, gamma: int, sampling: Sampling) -> _DraftEntry:
        buf, pend = io[0], io[1]
        key = ("draft", *buf.shape, gamma, sampling)
        entry = self._phases.get(key)
        if not isinstance(entry, _DraftEntry):
            draft = self.draft_model
            if draft is None:
                raise ValueError("a policy that speculates needs a draft model")
            noise = None if sampling.greedy else torch.ones(buf.shape[0], gamma, self.vocab, device=buf.device)
            graph, out = self._capture(lambda: draft_phase(draft, buf, pend, gamma, sampling, noise), (buf, pend))
            entry = self._phases[key] = _DraftEntry(graph, out, noise)
        return entry

    def _verify_entry(self, io: _IO, gamma: int, drafted: bool, g: int, sampling: Sampling) -> Replayable:
        buf, pend, ctl = io[0], io[1], io[2]
        key = ("verify", *buf.shape, gamma, drafted, g, sampling)
        graph = self._phases.get(key)
        if graph is None or isinstance(graph, _DraftEntry):
            drafts = q = None
            if drafted:  # the drafts this verify reads are the draft graph's outputs
                drafts, q, _ = self._draft_entry(io, gamma, sampling).out
            u, e = self._verify_noise_of(buf, gamma, sampling) or (None, None)
            graph, _ = self._capture(
                lambda: verify_phase(self.target_model, buf, pend, drafts, q, ctl[0], ctl[1], g, sampling, u, e),
                (buf, pend))
            self._phases[key] = graph
        return graph

    def draft(self, buf: Tensor, pend: Tensor, gamma: int, sampling: Sampling, generator: torch.Generator | None
              ) -> DraftOut:
        """`draft_phase` replayed: drafts, q and the host read (static tensors, valid until the next replay)."""
        io = self._check(buf, pend)
        entry = self._draft_entry(io, gamma, sampling)
        if entry.noise is not None:
            draft_noise(buf.shape[0], gamma, self.vocab, sampling, generator, buf.device, out=entry.noise)
        entry.graph.replay()
        return entry.out

    def draw_verify_noise(self, buf: Tensor, gamma: int, sampling: Sampling,
                          generator: torch.Generator | None) -> None:
        """The next verify's random numbers, into the static tensors its graphs read (`step.verify_noise`)."""
        noise = self._verify_noise_of(buf, gamma, sampling)
        if noise is not None:
            verify_noise(buf.shape[0], gamma, self.vocab, sampling, generator, buf.device, out=noise)

    def verify(self, buf: Tensor, pend: Tensor, gamma: int, drafted: bool, verified: np.ndarray,
               active: np.ndarray, g: int, sampling: Sampling) -> None:
        """`verify_phase` replayed on this step's drafts (`drafted` False: a step that drafted nothing)."""
        io = self._check(buf, pend)
        graph = self._verify_entry(io, gamma, drafted, g, sampling)
        host = io[3].numpy()  # pinned: the copy below is asynchronous; the next write comes after a sync
        host[0], host[1] = verified, active
        io[2].copy_(io[3], non_blocking=True)
        graph.replay()

    def precapture(self, bsz: int, prompt_len: int, max_new_tokens: int, gamma: int, sampling: Sampling) -> None:
        """Capture every phase a run of this shape can meet (the draft phase; verifying 0..gamma drafts;
        a step that drafted nothing), so that no capture lands inside a timed run. The model caches must
        already have the run's size. Works on the buffers from position 1; every run refills them."""
        io = self._io_of(bsz, token_buffer_len(prompt_len, max_new_tokens, gamma))
        io[0].zero_()
        io[1].fill_(1)
        self._check(io[0], io[1])
        if gamma > 0:
            for g in range(gamma + 1):
                self._verify_entry(io, gamma, True, g, sampling)
        self._verify_entry(io, gamma, False, 0, sampling)
