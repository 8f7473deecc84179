"""One plan candidate's capacity: the highest load one replica sustains under the SLOs.

A first guess from the closed-form predictor, doubling or halving until the SLOs flip, then
bisection on the arrival rate (or the number of closed-loop users) until the bracket is within the
tolerance (Vidur's capacity search does the same on QPS). Each probe is a short simulation sized so
its batch reaches the steady state of the load it tries.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from dspark_sim.config.results import RunSummary
from dspark_sim.config.schema import (
    EmpiricalLength,
    FixedLength,
    LengthDist,
    PlanSpec,
    Scenario,
    UniformLength,
)
from dspark_sim.core.analytic import predict_grid
from dspark_sim.core.costmodel import StepCoster
from dspark_sim.studies.evaluate import simulate_dict

#: the first this-many in-flight lifetimes are the batch's ramp-up: left out of throughput and latencies
RAMP_LIFETIMES = 2.0


def with_load(raw: dict, spec: PlanSpec, load: float) -> dict:
    """The scenario dict with its arrivals at this load: a Poisson rate, or closed-loop users."""
    out = dict(raw)
    wl = dict(out.get("workload") or {})
    if spec.load.requests_per_s is not None:
        wl["arrivals"] = {"kind": "poisson", "rate_per_s": float(load)}
    else:
        wl["arrivals"] = {"kind": "closed_loop", "concurrency": int(load), "think_time_s": spec.load.think_time_s}
    out["workload"] = wl
    return out


def _lengths(dist: LengthDist) -> np.ndarray:
    """A fixed-seed sample of a length distribution (lognormal clipped to its bounds, as the simulator does)."""
    if isinstance(dist, FixedLength):
        return np.array([float(dist.tokens)])
    if isinstance(dist, EmpiricalLength):
        return np.asarray(dist.values, dtype=float)
    rng = np.random.default_rng(0)
    if isinstance(dist, UniformLength):
        return rng.integers(dist.min_tokens, dist.max_tokens + 1, 200_000).astype(float)
    x = np.round(dist.median_tokens * np.exp(dist.sigma * rng.standard_normal(200_000)))
    return np.clip(x, dist.min_tokens, dist.max_tokens)


def mean_len(dist: LengthDist) -> float:
    return float(_lengths(dist).mean())


def biased_mean_len(dist: LengthDist) -> float:
    """E[X^2] / E[X]: the mean length of the requests one finds in flight (long ones stay longer)."""
    x = _lengths(dist)
    return float((x * x).mean() / x.mean())


def first_guess(sc: Scenario, spec: PlanSpec) -> float:
    """The closed form's estimate of one replica's capacity: the largest batch whose per-user speed
    meets the TPOT / tokens-per-user SLO (with a margin), turned into a rate or a user count."""
    dep = sc.deployment
    coster = StepCoster.for_deployment(dep)
    gmax = int(getattr(sc.policy, "gamma", None) or getattr(sc.policy, "gamma_max", 0) or 0)
    gammas = [gmax] if sc.policy.kind == "fixed" else list(range(0, gmax + 1)) or [0]
    batches = sorted({int(b) for b in np.geomspace(1, dep.max_batch_size, 24).round()} | {dep.max_batch_size})
    ctx = mean_len(sc.workload.prompt_tokens) + mean_len(sc.workload.output_tokens) / 2
    g = predict_grid(coster, sc.acceptance, batches, [ctx], gammas if dep.drafter.kind != "none" else [0])
    per_user = np.max(g.tokens_per_s_per_user[:, 0, :], axis=1)
    need = 0.0
    if spec.slo.tpot_p99_ms is not None:
        need = max(need, 1e3 / (0.8 * spec.slo.tpot_p99_ms))
    if spec.slo.min_tokens_per_s_per_user is not None:
        need = max(need, spec.slo.min_tokens_per_s_per_user / 0.9)
    ok = [i for i in range(len(batches)) if per_user[i] >= need]
    i = ok[-1] if ok else 0
    batch = batches[i]
    if spec.load.concurrent_users is not None:
        return float(max(1, batch))
    # a replica serving `batch` sequences at `per_user` tokens/s each finishes this many requests/s
    # (prefill time ignored: the search corrects the guess)
    return max(1e-3, 0.7 * batch * float(per_user[i]) / max(mean_len(sc.workload.output_tokens), 1.0))


def lifetime_s(spec: PlanSpec, mean_output_tokens: float) -> float:
    """A request's decode time if it runs at the SLO's speed: the time scale of the batch's ramp-up."""
    if spec.slo.tpot_p99_ms is not None:
        tpot_s = spec.slo.tpot_p99_ms / 1e3
    elif spec.slo.min_tokens_per_s_per_user is not None:
        tpot_s = 1.0 / spec.slo.min_tokens_per_s_per_user
    else:
        tpot_s = 0.05
    return mean_output_tokens * tpot_s


def _sized(raw: dict, spec: PlanSpec, load: float) -> dict:
    """Size a probe so its batch reaches the steady state of this load, and measure only that.

    A short simulation at a high rate would otherwise end before the batch fills up (its transient
    looks better than the steady state). The time scale is the lifetime of the requests found in
    flight (length-biased: E[X^2]/E[X] output tokens at the SLO's TPOT): the probe leaves a ramp of
    RAMP_LIFETIMES out (`simulation.warmup_s`) and measures `steady_state_factor` lifetimes after it.
    """
    mean_out = raw.get("_plan_mean_output_tokens")
    out = {k: v for k, v in raw.items() if not k.startswith("_plan")}
    if mean_out is None:
        return out
    s = spec.search
    life = lifetime_s(spec, raw.get("_plan_inflight_output_tokens", mean_out))
    if spec.load.concurrent_users is not None:  # each user sends one request per (its own) lifetime
        rate = load / max(lifetime_s(spec, mean_out) + spec.load.think_time_s, 1e-9)
    else:
        rate = load
    need = rate * (RAMP_LIFETIMES + s.steady_state_factor) * life
    wl = dict(out.get("workload") or {})
    wl["num_requests"] = int(min(s.max_requests, max(s.num_requests, math.ceil(need))))
    out["workload"] = wl
    sim = dict(out.get("simulation") or {})
    sim["warmup_s"] = RAMP_LIFETIMES * life
    out["simulation"] = sim
    return out


def probe(raw: dict, spec: PlanSpec, load: float, source: str) -> RunSummary:
    """One short simulation of a replica at this load -> its speculative configuration's summary."""
    result = simulate_dict(with_load(_sized(raw, spec, load), spec, load), source)
    s = next(x for x in result.summaries if x.variant != "baseline" or len(result.summaries) == 1)
    return s


def probe_record(load: float, s: RunSummary) -> dict:
    return {
        "load": load, "slo_met": bool(s.slo_met), "ttft_p99_s": s.ttft_s.p99, "tpot_p99_ms": s.tpot_ms.p99,
        "tokens_per_s_per_user": s.tokens_per_s_per_user, "throughput_tokens_per_s": s.throughput_tokens_per_s,
        "requests_per_s": s.requests_per_s, "mean_batch_size": s.mean_batch_size,
    }


def capacity_search(raw: dict, spec: PlanSpec, source: str, guess: float) -> tuple[float, Any, list[dict]]:
    """Highest load meeting the SLOs on one replica -> (load, its summary or None, probes)."""
    integer = spec.load.concurrent_users is not None
    tol = spec.search.tolerance
    budget = spec.search.max_simulations
    probes: list[dict] = []
    cache: dict[float, Any] = {}

    def run(x: float) -> tuple[float, Any]:
        x = float(max(1, round(x))) if integer else float(f"{x:.4g}")
        if x not in cache:
            s = probe(raw, spec, x, source)
            cache[x] = s
            probes.append(probe_record(x, s))
        return x, cache[x]

    lo, lo_s, hi = 0.0, None, math.inf
    x = guess
    # bracket: double while the SLOs hold, halve while they do not
    while len(cache) < budget:
        x, s = run(x)
        if s.slo_met:
            lo, lo_s = x, s
            if hi < math.inf:
                break
            x *= 2
        else:
            hi = x
            if lo > 0 or (integer and x <= 1):
                break
            x /= 2
            if not integer and x < guess / 1024:
                break
        if hi < math.inf and lo > 0:
            break
    # bisect
    while lo > 0 and hi < math.inf and len(cache) < budget:
        if integer and hi - lo <= 1:
            break
        if not integer and (hi - lo) / hi <= tol:
            break
        mid = (lo + hi) / 2
        if integer:
            mid = math.floor(mid)
        x, s = run(mid)
        if x in (lo, hi):
            break
        if s.slo_met:
            lo, lo_s = x, s
        else:
            hi = x
    return lo, lo_s, probes

