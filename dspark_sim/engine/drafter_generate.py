"""Speculative decoding with the hidden-state drafters (`engine.drafters`): batched, ragged, lossless.

The step loop is `loop.speculative_loop`, the one `generate.speculative_generate` runs; what is the
drafters' is their `StepPhases`: the target's passes also return its final-norm hidden states, from
which the drafter's context cache (`drafters.DrafterState`: fused features and per-layer keys/values, by
absolute position) is updated at the verified positions once the token after them is known. As with
the static KV cache, entries of rejected tokens lie past the sequence's position, are never read, and
are overwritten later. The drafter reads the window of context that ends at each row's last accepted
token: no catch-up pass. Random numbers are drawn inline from the generator, as each is needed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from dspark_sim.core.policies import Policy, Spec, as_policy
from dspark_sim.engine.caches import cache_tokens, ensure_caches, prefill
from dspark_sim.engine.loop import Proposal, no_drafts, speculative_loop
from dspark_sim.engine.model import Forward, Transformer
from dspark_sim.engine.results import GenerationResult
from dspark_sim.engine.sampling import Sampling
from dspark_sim.engine.step import accept, draft_tokens, verify_positions

#: a target pass that also returns its final-norm hidden states: f(tokens, positions, return_hidden=True)
HiddenForward = Callable[..., Any]


class DrafterContext(Protocol):
    """A batch's drafter context (`drafters.DrafterState`), by absolute position."""

    def init(self, hidden: Tensor, buf: Tensor, lens: Tensor, width: int) -> None: ...

    def update(self, hidden: Tensor, buf: Tensor, positions: Tensor) -> None: ...


class HiddenStateDrafter(Protocol):
    """What the loop asks of a drafter (`drafters.Drafter`, or the draft model as `DraftModelDrafter`)."""

    @property
    def kind(self) -> str: ...

    @property
    def max_gamma(self) -> int | None: ...

    def new_state(self, batch: int, length: int) -> DrafterContext: ...

    def propose(self, state: Any, buf: Tensor, pend: Tensor, gamma: int, sampling: Any,
                generator: torch.Generator | None = None) -> tuple[Tensor, Tensor | None, Tensor]: ...


class DraftModelDrafter:
    """The autoregressive draft model (`step.draft_tokens`: its own KV cache, a 2-token catch-up first
    pass, one pass per draft token) behind the drafters' interface, so every kind runs the same phases."""

    kind = "draft_model"
    max_gamma: int | None = None

    def __init__(self, model: Transformer, forward: Forward | None = None):
        self.model, self.forward = model, forward or model

    def new_state(self, batch: int, length: int) -> _DraftModelState:
        ensure_caches(self.model, batch, length, None)
        return _DraftModelState(self.model)

    def propose(self, state: Any, buf: Tensor, pend: Tensor, gamma: int, sampling: Sampling,
                generator: torch.Generator | None = None) -> tuple[Tensor, Tensor | None, Tensor]:
        return draft_tokens(self.forward, buf, pend, gamma, sampling, generator)


class _DraftModelState:
    def __init__(self, model: Transformer):
        self.model = model

    def init(self, hidden: Tensor, buf: Tensor, lens: Tensor, width: int) -> None:
        prefill(self.model, buf, lens, width)

    def update(self, hidden: Tensor, buf: Tensor, positions: Tensor) -> None:
        return None  # the draft model catches up in its own first pass


@dataclass
class DrafterSteps:
    """The hidden-state drafters' `loop.StepPhases`; `state` is the run's drafter context."""

    target_forward: HiddenForward
    drafter: HiddenStateDrafter | None  # None: the policy never speculates
    gamma: int
    sampling: Sampling
    generator: torch.Generator | None
    device: torch.device
    state: DrafterContext | None = None

    def buffers(self, bsz: int, length: int) -> tuple[Tensor, Tensor]:
        return (torch.zeros(bsz, length, dtype=torch.long, device=self.device),
                torch.zeros(bsz, dtype=torch.long, device=self.device))

    def prefill(self, buf: Tensor, lens: Tensor, width: int) -> tuple[Tensor, Tensor | None]:
        logits, hidden = self.target_forward(buf[:, :width], torch.zeros_like(lens), return_hidden=True)
        return logits[torch.arange(buf.shape[0], device=buf.device), lens - 1], hidden

    def start(self, hidden: Tensor | None, buf: Tensor, lens: Tensor, width: int) -> None:
        if self.drafter is None or hidden is None:
            return
        # the prompt's context (padding entries lie past each prompt: overwritten first)
        self.state = self.drafter.new_state(buf.shape[0], buf.shape[1])
        self.state.init(hidden, buf, lens, width)

    def propose(self, buf: Tensor, pend: Tensor, drafting: bool) -> Proposal:
        if not drafting or self.drafter is None:
            return no_drafts(pend)
        drafts, q, conf = self.drafter.propose(self.state, buf, pend, self.gamma, self.sampling, self.generator)
        rows = torch.arange(buf.shape[0], device=buf.device)
        buf[rows[:, None], pend[:, None] + 1 + torch.arange(self.gamma, device=buf.device)] = drafts
        return Proposal(drafts, q, torch.cat([pend[:, None].double(), conf.double()], dim=1))

    def verify(self, buf: Tensor, pend: Tensor, proposal: Proposal, verified: np.ndarray, active: np.ndarray,
               g: int) -> None:
        v_dev = torch.from_numpy(verified).to(buf.device, non_blocking=True)
        act_dev = torch.from_numpy(active.astype(np.int64)).to(buf.device, non_blocking=True)
        positions = verify_positions(pend, g)
        logits, hidden = self.target_forward(buf.gather(1, positions), positions, return_hidden=True)
        accept(logits, buf, pend, proposal.drafts, proposal.q, v_dev, act_dev, g, self.sampling,
               generator=self.generator)
        if self.state is not None:  # context of the verified positions, now that x_{s+1} is known
            self.state.update(hidden, buf, positions)


def as_drafter(drafter: HiddenStateDrafter | Transformer | None) -> HiddenStateDrafter | None:
    """A draft `Transformer` behind the drafters' interface (`DraftModelDrafter`); others as they are."""
    return DraftModelDrafter(drafter) if isinstance(drafter, Transformer) else drafter


@torch.no_grad()
def drafter_generate(target: Transformer, drafter: HiddenStateDrafter | Transformer | None,
                     prompts: Sequence[Sequence[int]], max_new_tokens: int, policy: Policy | Spec,
                     sampling: Sampling = Sampling(), *, generator: torch.Generator | None = None,
                     kv_dtype: str | None = None, target_forward: HiddenForward | None = None,
                     seq_ids: Sequence[int] | None = None) -> GenerationResult:
    """Speculative decoding of a batch with any engine drafter.

    `drafter`: a `Drafter` (mtp / parallel / dspark), an autoregressive draft `Transformer` (run through
    `DraftModelDrafter`, the same step as `generate.speculative_generate`) or None (plain decoding with
    a policy that never speculates). `policy`: a `dspark_sim.core.policies` policy or a schema policy spec.
    """
    runtime = as_policy(policy)
    if max_new_tokens < 1:
        raise ValueError("max_new_tokens must be >= 1")
    gamma = int(runtime.gamma_max)
    ctx = as_drafter(drafter)
    if ctx is None and gamma > 0:
        raise ValueError("a policy that speculates needs a drafter")
    if ctx is not None and ctx.max_gamma is not None and gamma > ctx.max_gamma:
        raise ValueError(f"gamma_max {gamma} exceeds the {ctx.kind} drafter's block of {ctx.max_gamma}")
    ensure_caches(target, len(prompts), cache_tokens(max(len(p) for p in prompts), max_new_tokens, gamma), kv_dtype)
    phases = DrafterSteps(target_forward or target, ctx, gamma, sampling, generator, target.device)
    return speculative_loop(phases, runtime, prompts, max_new_tokens, sampling, generator, target.device, seq_ids)
