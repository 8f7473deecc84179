"""The speculative decoding loop, one for every drafter: batched, ragged acceptance, one host sync a step.

Everything a step needs stays on the device (token buffer, per-sequence positions, the accept/reject
maths), and one small tensor crosses to the host per step: the positions after the previous step plus
this step's draft confidences. The host then asks the speculation policy (`dspark_sim.core.policies`)
how many of the drafted tokens each sequence verifies, and sends the answer back without waiting. The
drafter always proposes `policy.gamma_max` tokens; the policy truncates, which keeps decoding lossless
because it only sees draft-side information.

What differs between drafters is the `StepPhases` a run is given: the prompt pass, the draft phase
(before the sync) and the verify phase (after it). `generate.speculative_generate` gives the draft
model's (eager or replayed as CUDA graphs); `drafter_generate.drafter_generate` the hidden-state
drafters', whose verify pass also updates the drafter's context.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from dspark_sim.core.policies import Policy, StepView
from dspark_sim.engine.caches import prompt_tensor, token_buffer_len
from dspark_sim.engine.clock import Clock, Mark
from dspark_sim.engine.results import GenerationResult, StepStats
from dspark_sim.engine.sampling import Sampling, next_token


@dataclass
class Proposal:
    """What a step's draft phase hands its verify phase."""

    drafts: Tensor | None  # [B, gamma], already in the token buffer after each pending token; None: no drafts
    q: Tensor | None  # [B, gamma, V] the distributions the drafts were drawn from (None when greedy)
    host: Tensor  # the step's one host read: [B, 1 + gamma] doubles, pending position then confidences
    uniforms: Tensor | None = None  # the verify phase's random numbers when drawn before the sync
    noise: Tensor | None = None


def no_drafts(pend: Tensor) -> Proposal:
    """The proposal of a step that drafts nothing: the host reads only the pending positions."""
    return Proposal(None, None, pend[:, None].double())


class StepPhases(Protocol):
    """One drafter's part of the loop. Each run builds its own (it may hold the run's drafter state)."""

    def buffers(self, bsz: int, length: int) -> tuple[Tensor, Tensor]:
        """A zeroed token buffer [bsz, length] and pending positions [bsz] for the run."""
        ...

    def prefill(self, buf: Tensor, lens: Tensor, width: int) -> tuple[Tensor, Tensor | None]:
        """The target's prompt pass: logits at each prompt's last token [B, V], and its hidden states
        [B, width, D] when the drafter reads them (else None)."""
        ...

    def start(self, hidden: Tensor | None, buf: Tensor, lens: Tensor, width: int) -> None:
        """The drafter's side of the prompts, once `buf` holds each sequence's first token."""
        ...

    def propose(self, buf: Tensor, pend: Tensor, drafting: bool) -> Proposal:
        """The draft phase: draft gamma_max tokens a row after buf[pend] when `drafting`, and draw any
        random numbers the verify phase takes from before the sync."""
        ...

    def verify(self, buf: Tensor, pend: Tensor, proposal: Proposal, verified: np.ndarray, active: np.ndarray,
               g: int) -> None:
        """The verify phase: one target pass over each row's pending token and its first `g` drafts, the
        `verified` [B] leading drafts tested, the next token written after the accepted ones, and `pend`
        advanced in place for the `active` [B] rows."""
        ...


@torch.no_grad()
def speculative_loop(phases: StepPhases, policy: Policy, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                     sampling: Sampling, generator: torch.Generator | None, device: torch.device,
                     seq_ids: Sequence[int] | None = None) -> GenerationResult:
    """Decode `prompts` to `max_new_tokens` each, drafting `policy.gamma_max` tokens a step. The caches
    of the models involved must already hold the run (`caches.cache_tokens`)."""
    gamma = int(policy.gamma_max)
    bsz, width = len(prompts), max(len(p) for p in prompts)
    ids = np.asarray(seq_ids if seq_ids is not None else range(bsz), dtype=np.int64)
    clock = Clock(device)
    t0 = clock.mark()
    prompt_buf, lens_t = prompt_tensor(prompts, width, device)
    buf, pend = phases.buffers(bsz, token_buffer_len(width, max_new_tokens, gamma))
    buf[:, :width] = prompt_buf
    logits, hidden = phases.prefill(buf, lens_t, width)
    buf[torch.arange(bsz, device=device), lens_t] = next_token(logits, sampling, generator)
    phases.start(hidden, buf, lens_t, width)
    pend.copy_(lens_t)  # position of each sequence's newest token (not yet run through the target)
    t1 = clock.mark()
    lens = np.array([len(p) for p in prompts], dtype=np.int64)
    steps, marks, t_last = _steps(phases, policy, buf, pend, lens, max_new_tokens, gamma, ids, clock)
    t2 = clock.mark()
    out = buf.cpu()
    clock.sync()
    for s, (a, b, c, d) in zip(steps, marks, strict=True):  # read after the loop: off the step's host path
        s.draft_time_s, s.verify_time_s = clock.seconds(a, b), clock.seconds(c, d)
    tokens = [out[i, lens[i]: lens[i] + max_new_tokens].tolist() for i in range(bsz)]
    starts = [m[0] for m in marks] + [t_last]
    walls = [clock.seconds(a, b) for a, b in zip(starts[:-1], starts[1:], strict=True)]
    return GenerationResult(tokens, lens.tolist(), clock.seconds(t0, t1), clock.seconds(t1, t2), len(steps),
                            steps, walls)


def _steps(phases: StepPhases, policy: Policy, buf: Tensor, pend: Tensor, lens: np.ndarray, max_new_tokens: int,
           gamma: int, ids: np.ndarray, clock: Clock
           ) -> tuple[list[StepStats], list[tuple[Mark, Mark, Mark, Mark]], Mark]:
    """Step until every row has its tokens -> the steps' records, their (start, drafted, decided, verified)
    marks, and the mark at which the finished batch was seen (the last step's end)."""
    bsz = len(lens)
    host_pend = lens.copy()
    steps: list[StepStats] = []
    marks: list[tuple[Mark, Mark, Mark, Mark]] = []
    while True:
        # host view, one step behind the device: each active row has gained >= 1 token since
        least = host_pend - lens + 1 + (1 if steps else 0)
        t_s = clock.mark()
        drafting = gamma > 0 and bool((least + 1 < max_new_tokens).any())  # someone may still use a draft
        proposal = phases.propose(buf, pend, drafting)
        t_d = clock.mark()
        host = proposal.host.cpu().numpy()  # the one host sync of the step
        host_pend = host[:, 0].astype(np.int64)
        if steps:  # finish the previous step's record now that its outcome is known
            prev = steps[-1]
            prev.accepted = np.where(prev.active, host_pend - prev.context_lens - 1, 0)
            policy.observe(StepView(prev.context_lens, prev.step, ids), verified=prev.verified,
                           accepted=prev.accepted, step_time_s=clock.seconds(marks[-1][0], marks[-1][3]))
        generated = host_pend - lens + 1
        active = generated < max_new_tokens
        if not active.any():
            return steps, marks, t_s
        view = StepView(context_lens=host_pend.copy(), step=len(steps), seq_ids=ids)
        drafted = np.zeros(bsz, dtype=np.int64)
        conf = None
        if proposal.drafts is not None:
            drafted = np.asarray(policy.draft_lengths(view), dtype=np.int64)
            drafted = np.clip(np.minimum(drafted, max_new_tokens - generated - 1), 0, gamma) * active
            conf = host[:, 1:].copy()
            conf[np.arange(gamma)[None, :] >= drafted[:, None]] = np.nan
        verified = np.asarray(policy.verify_lengths(view, drafted, conf), dtype=np.int64)
        verified = np.clip(verified, 0, drafted) * active
        t_v = clock.mark()
        phases.verify(buf, pend, proposal, verified, active, int(verified.max(initial=0)))
        t_e = clock.mark()
        steps.append(StepStats(len(steps), host_pend.copy(), active, drafted, verified, np.zeros(bsz, np.int64),
                               conf))
        marks.append((t_s, t_d, t_v, t_e))
