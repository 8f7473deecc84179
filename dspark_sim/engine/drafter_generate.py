"""Speculative decoding with the hidden-state drafters (`engine.drafters`): batched, ragged, lossless.

Same step as `generate.speculative_generate` (whose helpers and rejection step it reuses), with one
difference: the target's verify pass also returns its final-norm hidden states, from which the drafter's
context cache (`drafters.DrafterState`: fused features and per-layer keys/values, by absolute position)
is updated at the verified positions once the token after them is known. As with the static KV cache,
entries of rejected tokens lie past the sequence's position, are never read, and are overwritten later.
The drafter reads the window of context that ends at each row's last accepted token: no catch-up pass.

One host sync per step: positions after the previous step plus this step's confidences, as in
`speculative_generate`; the policy (fixed gamma, confidence threshold, DSpark's prefix scheduler) then
decides each row's verify length from draft-side information only, which keeps decoding lossless.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from dspark_sim.core.policies import StepView, make_policy
from dspark_sim.engine.drafters import Drafter
from dspark_sim.engine.generate import (
    Forward,
    GenerationResult,
    Sampling,
    StepStats,
    _Clock,
    _draft,
    _prefill,
    _prompt_tensor,
    cache_tokens,
    ensure_caches,
    logits_to_probs,
    next_token,
    verify_drafts,
    verify_greedy,
)
from dspark_sim.engine.model import Transformer


class DraftModelDrafter:
    """The autoregressive draft model (`generate._draft`: its own KV cache, a 2-token catch-up first
    pass, one pass per draft token) behind the drafters' interface, so every kind runs the same loop."""

    kind = "draft_model"
    max_gamma = None

    def __init__(self, model: Transformer, forward: Forward | None = None):
        self.model, self.forward = model, forward or model

    def new_state(self, batch: int, length: int) -> _DraftModelState:
        ensure_caches(self.model, batch, length, None)
        return _DraftModelState(self.model)

    def propose(self, state: Any, buf: Tensor, pend: Tensor, gamma: int, sampling: Sampling,
                generator: torch.Generator | None = None) -> tuple[Tensor, Tensor | None, Tensor]:
        return _draft(self.forward, buf, pend, gamma, sampling, generator)


class _DraftModelState:
    def __init__(self, model: Transformer):
        self.model = model

    def init(self, hidden: Tensor, buf: Tensor, lens: Tensor, width: int) -> None:
        _prefill(self.model, buf, lens, width)

    def update(self, hidden: Tensor, buf: Tensor, positions: Tensor) -> None:
        return None  # the draft model catches up in its own first pass


@torch.no_grad()
def drafter_generate(target: Transformer, drafter: Drafter | Transformer | None, prompts: Sequence[Sequence[int]],
                     max_new_tokens: int, policy: object, sampling: Sampling = Sampling(), *,
                     generator: torch.Generator | None = None, kv_dtype: str | None = None,
                     target_forward: Forward | None = None, seq_ids: Sequence[int] | None = None) -> GenerationResult:
    """Speculative decoding of a batch with any engine drafter.

    `drafter`: a `Drafter` (mtp / parallel / dspark), an autoregressive draft `Transformer` (run through
    `DraftModelDrafter`, the same step as `generate.speculative_generate`) or None (plain decoding with
    a policy that never speculates). `policy`: a `dspark_sim.core.policies` policy or a schema policy spec.
    """
    if not hasattr(policy, "draft_lengths"):
        policy = make_policy(policy)
    if max_new_tokens < 1:
        raise ValueError("max_new_tokens must be >= 1")
    gamma = int(policy.gamma_max)  # type: ignore[attr-defined]
    if isinstance(drafter, Transformer):
        drafter = DraftModelDrafter(drafter)
    if drafter is None and gamma > 0:
        raise ValueError("a policy that speculates needs a drafter")
    limit = getattr(drafter, "max_gamma", None)
    if limit is not None and gamma > limit:
        raise ValueError(f"gamma_max {gamma} exceeds the {drafter.kind} drafter's block of {limit}")
    dev = target.device
    tfwd = target_forward or target
    bsz, width = len(prompts), max(len(p) for p in prompts)
    cap = cache_tokens(width, max_new_tokens, gamma)
    ensure_caches(target, bsz, cap, kv_dtype)
    ids = np.asarray(seq_ids if seq_ids is not None else range(bsz), dtype=np.int64)
    clock = _Clock(dev)

    t0 = clock.mark()
    prompt_buf, lens_t = _prompt_tensor(prompts, width, dev)
    buf = torch.zeros(bsz, cap + gamma + 2, dtype=torch.long, device=dev)
    buf[:, :width] = prompt_buf
    logits, hidden = tfwd(buf[:, :width], torch.zeros_like(lens_t), return_hidden=True)
    rows = torch.arange(bsz, device=dev)
    first = next_token(logits[rows, lens_t - 1], sampling, generator)
    buf[rows, lens_t] = first
    state = drafter.new_state(bsz, cap + gamma + 2) if drafter is not None else None
    if state is not None:  # the prompt's context (padding entries lie past each prompt: overwritten first)
        state.init(hidden, buf, lens_t, width)
    pend = lens_t.clone()  # position of each sequence's newest token (not yet run through the target)
    t1 = clock.mark()

    lens = np.array([len(p) for p in prompts], dtype=np.int64)
    host_pend = lens.copy()
    steps: list[StepStats] = []
    marks: list[tuple[object, object, object, object]] = []
    passes, step = 0, 0
    while True:
        least = host_pend - lens + 1 + (1 if steps else 0)
        t_s = clock.mark()
        if drafter is not None and gamma > 0 and bool((least + 1 < max_new_tokens).any()):
            drafts, q, conf = drafter.propose(state, buf, pend, gamma, sampling, generator)
            buf[rows[:, None], pend[:, None] + 1 + torch.arange(gamma, device=dev)] = drafts
            payload = torch.cat([pend[:, None].double(), conf.double()], dim=1)
        else:
            drafts = q = conf = None
            payload = pend[:, None].double()
        t_d = clock.mark()
        host = payload.cpu().numpy()  # the one host sync of the step
        new_pend = host[:, 0].astype(np.int64)
        if steps:  # finish the previous step's record now that its outcome is known
            prev = steps[-1]
            prev.accepted = np.where(prev.active, new_pend - prev.context_lens - 1, 0)
            a, b, c, d = marks[-1]
            prev.draft_time_s, prev.verify_time_s = clock.seconds(a, b), clock.seconds(c, d)
            policy.observe(StepView(prev.context_lens, prev.step, ids), verified=prev.verified,  # type: ignore[attr-defined]
                           accepted=prev.accepted, step_time_s=clock.seconds(a, d))
        host_pend = new_pend
        generated = host_pend - lens + 1
        active = generated < max_new_tokens
        if not active.any():
            break
        view = StepView(context_lens=host_pend.copy(), step=step, seq_ids=ids)
        drafted = np.zeros(bsz, dtype=np.int64)
        conf_np = None
        if conf is not None:
            drafted = np.asarray(policy.draft_lengths(view), dtype=np.int64)  # type: ignore[attr-defined]
            drafted = np.clip(np.minimum(drafted, max_new_tokens - generated - 1), 0, gamma) * active
            conf_np = host[:, 1:].copy()
            conf_np[np.arange(gamma)[None, :] >= drafted[:, None]] = np.nan
        verified = np.asarray(policy.verify_lengths(view, drafted, conf_np), dtype=np.int64)  # type: ignore[attr-defined]
        verified = np.clip(verified, 0, drafted) * active
        t_v = clock.mark()
        g = int(verified.max(initial=0))
        v_dev = torch.from_numpy(verified).to(dev, non_blocking=True)
        act_dev = torch.from_numpy(active).to(dev, non_blocking=True)
        positions = pend[:, None] + torch.arange(g + 1, device=dev)
        logits, hidden = tfwd(buf.gather(1, positions), positions, return_hidden=True)
        if drafts is None or g == 0:
            acc = torch.zeros_like(pend)
            nxt = next_token(logits[:, 0], sampling, generator)
        elif sampling.greedy:
            acc, nxt = verify_greedy(logits, drafts, v_dev)
        else:
            acc, nxt = verify_drafts(logits_to_probs(logits, sampling), q, drafts, v_dev, False, generator)
        acc = acc * act_dev
        buf[rows, pend + acc + 1] = nxt
        if state is not None:  # context of the verified positions, now that x_{s+1} is known
            state.update(hidden, buf, positions)
        pend = pend + (acc + 1) * act_dev
        passes += 1
        t_e = clock.mark()
        steps.append(StepStats(step, host_pend.copy(), active, drafted, verified, np.zeros(bsz, np.int64), conf_np))
        marks.append((t_s, t_d, t_v, t_e))
        step += 1
    t2 = clock.mark()
    out = buf.cpu()
    clock.sync()
    tokens = [out[i, lens[i]: lens[i] + max_new_tokens].tolist() for i in range(bsz)]
    starts = [m[0] for m in marks] + [t2]
    walls = [clock.seconds(a, b) for a, b in zip(starts[:-1], starts[1:], strict=True)]
    return GenerationResult(tokens, lens.tolist(), clock.seconds(t0, t1), clock.seconds(t1, t2), passes, steps,
                            step_wall_s=walls)


@torch.no_grad()
def measure_step_sps(target: Transformer, drafter: Drafter | Transformer | None, batch: int, gamma_max: int, *,
                     context: int = 64, repeats: int = 5) -> dict[int, float]:
    """A measured SPS(B) table for DSpark's prefix scheduler: {B = batch x (g+1): 1 / (t_draft + t_verify)}.

    t_verify(g): the target's verify pass over batch x (g+1) tokens (hidden states returned, as the
    drafter loop runs it); t_draft: one proposal of gamma_max tokens (paid whatever gets verified, so it
    belongs in the price of every step). Medians of `repeats` timings after a warm-up.
    """
    import time

    dev = target.device
    cap = context + 2 * gamma_max + 4
    ensure_caches(target, batch, cap, None)
    buf = torch.zeros(batch, cap + gamma_max + 2, dtype=torch.long, device=dev)
    pend = torch.full((batch,), context, dtype=torch.long, device=dev)

    def timed(fn) -> float:
        fn()
        out = []
        for _ in range(repeats):
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            out.append(time.perf_counter() - t0)
        return float(np.median(out))

    t_draft = 0.0
    state = None
    if isinstance(drafter, Transformer):
        drafter = DraftModelDrafter(drafter)
    if drafter is not None and gamma_max > 0:
        state = drafter.new_state(batch, cap + gamma_max + 2)
        t_draft = timed(lambda: drafter.propose(state, buf, pend, gamma_max, Sampling()))
    table = {}
    for g in range(gamma_max + 1):
        positions = pend[:, None] + torch.arange(g + 1, device=dev)
        toks = buf.gather(1, positions)

        def verify(p: torch.Tensor = positions, t: torch.Tensor = toks) -> None:
            _, hidden = target(t, p, return_hidden=True)
            if state is not None:  # the drafter's context update belongs to the verify phase
                state.update(hidden, buf, p)

        t_verify = timed(verify)
        table[batch * (g + 1)] = 1.0 / max(t_draft + t_verify, 1e-9)
    return table
