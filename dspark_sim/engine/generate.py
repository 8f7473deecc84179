"""Decoding with the engine's models: plain (`generate_baseline`) and speculative with a draft model
(`speculative_generate`, Leviathan et al. / Chen et al.), on the models' own forwards or compiled ones.

Speculative decoding runs the one step loop of every drafter (`loop.speculative_loop`); what is the
draft model's is its `StepPhases`: its own KV cache, a 2-token catch-up first pass and one pass per
draft token (`step.draft_tokens`), the random numbers of each phase drawn before it, so that
`cudagraphs.StepGraphs` can replay both phases as CUDA graphs and give the very tokens of the eager run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from dspark_sim.core.policies import Policy, Spec, as_policy
from dspark_sim.engine.caches import cache_tokens, ensure_caches, prefill, prompt_tensor
from dspark_sim.engine.clock import Clock
from dspark_sim.engine.cudagraphs import StepGraphs
from dspark_sim.engine.loop import Proposal, no_drafts, speculative_loop
from dspark_sim.engine.model import Forward, Transformer
from dspark_sim.engine.results import GenerationResult
from dspark_sim.engine.sampling import Sampling, next_token
from dspark_sim.engine.step import draft_noise, draft_phase, verify_noise, verify_phase

#: inductor settings of the compiled step. triton.cudagraphs: the step replays as one CUDA graph
#: (what mode="reduce-overhead" sets). coordinate_descent_tuning: a one-row matmul (batch-1 decode)
#: becomes a tuned Triton reduction that streams its weight near HBM speed (gpt-fast's setting; cuBLAS
#: GEMVs reach less, benchmarks/engine_gpu_profile.py measures both).
DECODE_INDUCTOR_OPTIONS: dict[str, Any] = {"triton.cudagraphs": True, "coordinate_descent_tuning": True}


def compile_forward(model: Transformer, options: dict[str, Any] | None = None) -> Forward:
    """torch.compile the cached forward with inductor `options` (default DECODE_INDUCTOR_OPTIONS),
    one graph per shape. The options apply to this compilation only, not to the process.

    Each call marks a new cudagraph step and clones the logits, which the next replay overwrites.
    """
    import torch._dynamo  # torch's compiler, loaded only by a run that compiles

    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    opts = dict(DECODE_INDUCTOR_OPTIONS if options is None else options)
    compiled = torch.compile(model, fullgraph=True, dynamic=False, options=opts)

    def forward(tokens: Tensor, positions: Tensor, **kw: Tensor) -> Tensor:
        torch.compiler.cudagraph_mark_step_begin()
        return compiled(tokens, positions, **kw).clone()

    return forward


@torch.no_grad()
def generate_baseline(model: Transformer, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                      sampling: Sampling = Sampling(), *, forward: Forward | None = None,
                      generator: torch.Generator | None = None, kv_dtype: str | None = None,
                      prefill_forward: Forward | None = None) -> GenerationResult:
    """Plain autoregressive decoding; no host sync until the end.

    prefill_forward: what runs the prompt pass (default: the model, eager). A compiled forward there
    compiles one more graph per prompt width; on an H200 a 128-token batch-1 prompt pass then takes
    2-7 ms instead of 26-29 ms eager (validation/engine/h200_decode_profile_options_*.json).
    """
    if max_new_tokens < 1:
        raise ValueError("max_new_tokens must be >= 1")
    dev, fwd = model.device, forward or model
    width = max(len(p) for p in prompts)
    ensure_caches(model, len(prompts), width + max_new_tokens + 1, kv_dtype)
    clock = Clock(dev)
    t0 = clock.mark()
    buf, lens = prompt_tensor(prompts, width, dev)
    tok = next_token(prefill(prefill_forward or model, buf, lens, width), sampling, generator)
    t1 = clock.mark()
    out = torch.empty(len(prompts), max_new_tokens, dtype=torch.long, device=dev)
    out[:, 0] = tok
    pos = lens.clone()
    for i in range(1, max_new_tokens):
        logits = fwd(tok[:, None], pos[:, None])[:, 0]
        tok = next_token(logits, sampling, generator)
        out[:, i] = tok
        pos += 1
    t2 = clock.mark()
    tokens = out.tolist()
    clock.sync()
    return GenerationResult(tokens, [len(p) for p in prompts], clock.seconds(t0, t1), clock.seconds(t1, t2),
                            max_new_tokens - 1)


@dataclass
class DraftModelSteps:
    """The draft model's `loop.StepPhases`, eager or replayed by `graphs` (which then also own the buffers)."""

    target: Transformer
    draft: Transformer | None  # None: the policy never speculates
    target_forward: Forward
    draft_forward: Forward | None
    gamma: int
    sampling: Sampling
    generator: torch.Generator | None
    graphs: StepGraphs | None = None

    def buffers(self, bsz: int, length: int) -> tuple[Tensor, Tensor]:
        if self.graphs is None:
            dev = self.target.device
            return (torch.zeros(bsz, length, dtype=torch.long, device=dev),
                    torch.zeros(bsz, dtype=torch.long, device=dev))
        buf, pend = self.graphs.buffers(bsz, length)  # a graph reads and writes fixed addresses
        buf.zero_()
        return buf, pend

    def prefill(self, buf: Tensor, lens: Tensor, width: int) -> tuple[Tensor, Tensor | None]:
        return prefill(self.target, buf, lens, width), None

    def start(self, hidden: Tensor | None, buf: Tensor, lens: Tensor, width: int) -> None:
        if self.draft is not None:
            prefill(self.draft, buf, lens, width)

    def propose(self, buf: Tensor, pend: Tensor, drafting: bool) -> Proposal:
        bsz, vocab, dev = buf.shape[0], self.target.args.vocab_size, buf.device
        if self.graphs is not None:
            proposal = Proposal(*self.graphs.draft(buf, pend, self.gamma, self.sampling, self.generator)) \
                if drafting else no_drafts(pend)
            self.graphs.draw_verify_noise(buf, self.gamma, self.sampling, self.generator)
            return proposal
        if not drafting:
            proposal = no_drafts(pend)
        elif self.draft_forward is None:
            raise ValueError("a policy that speculates needs a draft model")
        else:
            noise = draft_noise(bsz, self.gamma, vocab, self.sampling, self.generator, dev)
            proposal = Proposal(*draft_phase(self.draft_forward, buf, pend, self.gamma, self.sampling, noise))
        # the verify phase's random numbers, before the sync (for up to gamma drafts: the verify width is
        # not known yet), so that after it the host only decides and launches while the GPU waits
        proposal.uniforms, proposal.noise = verify_noise(bsz, self.gamma, vocab, self.sampling, self.generator, dev)
        return proposal

    def verify(self, buf: Tensor, pend: Tensor, proposal: Proposal, verified: np.ndarray, active: np.ndarray,
               g: int) -> None:
        act64 = active.astype(np.int64)
        if self.graphs is not None:
            self.graphs.verify(buf, pend, self.gamma, proposal.drafts is not None, verified, act64, g, self.sampling)
            return
        v_dev = torch.from_numpy(verified).to(buf.device, non_blocking=True)
        act_dev = torch.from_numpy(act64).to(buf.device, non_blocking=True)
        verify_phase(self.target_forward, buf, pend, proposal.drafts, proposal.q, v_dev, act_dev, g, self.sampling,
                     proposal.uniforms, proposal.noise)


@torch.no_grad()
def speculative_generate(target: Transformer, draft: Transformer | None, prompts: Sequence[Sequence[int]],
                         max_new_tokens: int, policy: Policy | Spec, sampling: Sampling = Sampling(), *,
                         generator: torch.Generator | None = None, kv_dtype: str | None = None,
                         target_forward: Forward | None = None, draft_forward: Forward | None = None,
                         seq_ids: Sequence[int] | None = None, step_graphs: StepGraphs | None = None
                         ) -> GenerationResult:
    """Speculative decoding of a batch with a draft model, ragged acceptance, one host sync per step.

    `policy` is a `dspark_sim.core.policies` policy or a schema policy spec (FixedGamma, NoSpeculation,
    ConfidenceThreshold, ...). With gamma_max 0 (NoSpeculation) this is plain decoding, same loop.
    `step_graphs` (a `cudagraphs.StepGraphs` of these models, on a GPU): each step's draft and verify
    phases replay as CUDA graphs (the forwards given are then unused after prefill); same tokens.
    """
    runtime = as_policy(policy)
    if max_new_tokens < 1:
        raise ValueError("max_new_tokens must be >= 1")
    gamma = int(runtime.gamma_max)
    if gamma > 0 and draft is None:
        raise ValueError("a policy that speculates needs a draft model")
    drafting = draft if gamma > 0 else None
    cap = cache_tokens(max(len(p) for p in prompts), max_new_tokens, gamma)
    for model in (target, drafting):
        if model is not None:
            ensure_caches(model, len(prompts), cap, kv_dtype)
    phases = DraftModelSteps(target, drafting, target_forward or target, draft_forward or drafting, gamma, sampling,
                             generator, step_graphs)
    return speculative_loop(phases, runtime, prompts, max_new_tokens, sampling, generator, target.device, seq_ids)
