"""SPS(B) measured on this engine: verify steps per second at B tokens a pass, the curve the goodput and
DSpark policies price extra verify tokens with (`core.policies`), and those policies built on it."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from dspark_sim.config.schema import DSparkScheduler, GoodputPolicy
from dspark_sim.core.policies import Policy, Spec, SPSFn, make_policy, table_sps
from dspark_sim.engine.caches import ensure_caches
from dspark_sim.engine.drafter_generate import HiddenStateDrafter, as_drafter
from dspark_sim.engine.model import Forward, Transformer
from dspark_sim.engine.sampling import Sampling


def _median_seconds(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    """Median wall time of `fn` over `repeats` runs after one warm-up, each run between device syncs."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


@torch.no_grad()
def profile_sps(model: Transformer, batch: int, max_tokens_per_seq: int, *, context: int = 64,
                repeats: int = 5, forward: Forward | None = None) -> SPSFn:
    """Measure SPS(B), verify passes per second at B = batch x t tokens (t = 1..max), on this model."""
    fwd = forward or model
    ensure_caches(model, batch, context + max_tokens_per_seq + 1, None)
    dev = model.device
    table: dict[int, float] = {}
    for t in range(1, max_tokens_per_seq + 1):
        toks = torch.zeros(batch, t, dtype=torch.long, device=dev)
        pos = torch.full((batch,), context, dtype=torch.long, device=dev)

        def one_pass(k: Tensor = toks, p: Tensor = pos) -> None:
            fwd(k, p)

        table[batch * t] = 1.0 / max(_median_seconds(one_pass, repeats, dev), 1e-9)
    return table_sps(table)


@torch.no_grad()
def measure_step_sps(target: Transformer, drafter: HiddenStateDrafter | Transformer | None, batch: int,
                     gamma_max: int, *, context: int = 64, repeats: int = 5) -> dict[int, float]:
    """A measured SPS(B) table for DSpark's prefix scheduler: {B = batch x (g+1): 1 / (t_draft + t_verify)}.

    t_verify(g): the target's verify pass over batch x (g+1) tokens (hidden states returned, as the
    drafter loop runs it); t_draft: one proposal of gamma_max tokens (paid whatever gets verified, so it
    belongs in the price of every step). Medians of `repeats` timings after a warm-up.
    """
    dev = target.device
    cap = context + 2 * gamma_max + 4
    ensure_caches(target, batch, cap, None)
    buf = torch.zeros(batch, cap + gamma_max + 2, dtype=torch.long, device=dev)
    pend = torch.full((batch,), context, dtype=torch.long, device=dev)
    ctx = as_drafter(drafter)
    t_draft = 0.0
    state = None
    if ctx is not None and gamma_max > 0:
        state = ctx.new_state(batch, cap + gamma_max + 2)
        t_draft = _median_seconds(lambda: ctx.propose(state, buf, pend, gamma_max, Sampling()), repeats, dev)
    table = {}
    for g in range(gamma_max + 1):
        positions = pend[:, None] + torch.arange(g + 1, device=dev)
        toks = buf.gather(1, positions)

        def verify(p: Tensor = positions, t: Tensor = toks) -> None:
            _, hidden = target(t, p, return_hidden=True)
            if state is not None:  # the drafter's context update belongs to the verify phase
                state.update(hidden, buf, p)

        table[batch * (g + 1)] = 1.0 / max(t_draft + _median_seconds(verify, repeats, dev), 1e-9)
    return table


def _priced(spec: Spec) -> int | None:
    """gamma_max of a policy that prices verify tokens with an SPS(B) curve it does not carry, else None."""
    if isinstance(spec, DSparkScheduler) and spec.sps_source == "table":
        return None
    return spec.gamma_max if isinstance(spec, GoodputPolicy | DSparkScheduler) else None


def engine_policy(spec: Spec, target: Transformer, batch: int) -> Policy:
    """The runtime policy of `spec` for a run of `batch` sequences on `target`; goodput and DSpark price
    with an SPS(B) curve profiled on `target` now (`profile_sps`) unless the spec carries a table."""
    gamma = _priced(spec)
    return make_policy(spec) if gamma is None else make_policy(spec, sps=profile_sps(target, batch, gamma + 1))


def drafter_policy(spec: Spec, target: Transformer, drafter: HiddenStateDrafter | Transformer | None, batch: int,
                   context: int) -> Policy:
    """As `engine_policy`, for `drafter_generate`: the curve is the drafter loop's measured step
    (`measure_step_sps` at `context` tokens), the drafting paid with every verify."""
    gamma = _priced(spec)
    if gamma is None:
        return make_policy(spec)
    return make_policy(spec, sps=table_sps(measure_step_sps(target, drafter, batch, gamma, context=context)))
