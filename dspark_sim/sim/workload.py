"""Workload: the requests a simulation serves, drawn once, up front, from the scenario seed.

Common random numbers: every random quantity comes from its own `numpy.random.Generator`, derived
from (scenario seed, stream name, domain), so the speculative run, the no-speculation baseline and
every variant see the same arrivals, lengths, domains and per-request acceptance. Per-step
acceptance is not drawn from a sequential stream at all: the uniform for (request, output position,
draft position) is a counter-based hash of a per-request seed (see `uniforms`), so two policies that
verify different numbers of tokens still face the same coin at the same place in the same answer.

The result is a `RequestTable`: one numpy array per attribute, indexed by request id (the order in
which requests are issued), which the engine gathers from when it admits requests.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dspark_sim.config.errors import InputError
from dspark_sim.config.schema import (
    ClosedLoopArrivals,
    ConstantArrivals,
    Domain,
    EmpiricalLength,
    FixedLength,
    GammaArrivals,
    LognormalLength,
    PerRequestAcceptance,
    PoissonArrivals,
    Scenario,
    TraceAcceptance,
    TraceArrivals,
    UniformLength,
    WorkloadSpec,
)
from dspark_sim.core.acceptance import draw_request_acceptance, empirical_conditional, load_acceptance_trace
from dspark_sim.sim.arrival_trace import ArrivalTrace, load_arrival_trace

#: Stream ids: one generator per (seed, stream, domain). Never renumber (it would change every result).
STREAMS = {"arrivals": 1, "domains": 2, "prompt": 3, "output": 4, "acceptance": 5, "step_seeds": 6,
           "confidence": 7}


def stream(seed: int, name: str, sub: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, STREAMS[name], sub])


# --------------------------------------------------------------------------------------------
# Counter-based uniforms (SplitMix64 finaliser), vectorised
# --------------------------------------------------------------------------------------------

_C0 = np.uint64(0x9E3779B97F4A7C15)
_C1 = np.uint64(0xBF58476D1CE4E5B9)
_C2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S11, _S8 = (np.uint64(s) for s in (30, 27, 31, 11, 8))
_INV53 = 1.0 / float(1 << 53)


def uniforms(seeds: np.ndarray, positions: np.ndarray, width: int) -> np.ndarray:
    """(B, width) uniforms in [0, 1): u[i, k] = hash(seeds[i], positions[i], k). Pure function."""
    x = seeds[:, None] + ((positions.astype(np.uint64)[:, None] << _S8) | np.arange(width, dtype=np.uint64))
    x = x * _C0 + _C0
    x = (x ^ (x >> _S30)) * _C1
    x = (x ^ (x >> _S27)) * _C2
    x ^= x >> _S31
    return (x >> _S11).astype(np.float64) * _INV53


# --------------------------------------------------------------------------------------------
# Lengths and arrivals
# --------------------------------------------------------------------------------------------


def sample_lengths(dist, rng: np.random.Generator, n: int) -> np.ndarray:
    if isinstance(dist, FixedLength):
        return np.full(n, dist.tokens, dtype=np.int64)
    if isinstance(dist, UniformLength):
        return rng.integers(dist.min_tokens, dist.max_tokens + 1, size=n).astype(np.int64)
    if isinstance(dist, LognormalLength):
        x = np.exp(np.log(dist.median_tokens) + dist.sigma * rng.standard_normal(n))
        return np.clip(np.rint(x), dist.min_tokens, dist.max_tokens).astype(np.int64)
    if isinstance(dist, EmpiricalLength):
        return np.asarray(dist.values, dtype=np.int64)[rng.integers(len(dist.values), size=n)]
    raise TypeError(f"unknown length distribution {dist!r}")


def open_loop_arrivals(spec, rng: np.random.Generator, n: int) -> np.ndarray:
    """Arrival times (s) of n requests, the first at the first inter-arrival gap (constant: at 0)."""
    if isinstance(spec, PoissonArrivals):
        return np.cumsum(rng.exponential(1.0 / spec.rate_per_s, size=n))
    if isinstance(spec, GammaArrivals):
        shape = 1.0 / spec.cv**2
        return np.cumsum(rng.gamma(shape, 1.0 / (spec.rate_per_s * shape), size=n))
    if isinstance(spec, ConstantArrivals):
        return np.arange(n, dtype=float) / spec.rate_per_s
    raise TypeError(f"not an open-loop arrival process: {spec!r}")


# --------------------------------------------------------------------------------------------
# The request table
# --------------------------------------------------------------------------------------------


@dataclass
class RequestTable:
    """Everything known about each request before it is served, indexed by request id."""

    n: int
    arrival: np.ndarray  # (n,) s; NaN until issued for closed-loop workloads
    prompt: np.ndarray  # (n,) tokens
    output: np.ndarray  # (n,) tokens
    domain: np.ndarray  # (n,) index into domain_names
    domain_names: list[str]
    cond: np.ndarray  # (n, G) conditional acceptance c_k the request faces (true confidences)
    step_seed: np.ndarray  # (n,) uint64 seed of the per-step acceptance uniforms
    trace_off: np.ndarray  # (n,) offset into trace_yields (valid where trace_len > 0)
    trace_len: np.ndarray  # (n,) 0 = acceptance sampled from `cond`
    trace_yields: np.ndarray  # flat concatenation of recorded step yields
    closed_loop: bool
    trace_conf: np.ndarray | None = None  # recorded drafter confidences, aligned with trace_yields
    trace_prob: np.ndarray | None = None  # recorded acceptance probabilities, aligned with trace_yields
    chains_by_step: bool = False  # 2-D trace_conf / trace_prob rows are steps (TraceAcceptance.chains_by)
    concurrency: int = 0
    think_time_s: float = 0.0

    @property
    def has_trace(self) -> bool:
        return bool((self.trace_len > 0).any())


class _YieldStore:
    """Concatenates recorded yield arrays once each (keyed by identity) for vectorised lookup."""

    def __init__(self) -> None:
        self.parts: list[np.ndarray] = []
        self.size = 0
        self._seen: dict[int, int] = {}

    def add(self, arr: np.ndarray) -> tuple[int, int]:
        key = id(arr)
        if key not in self._seen:
            self._seen[key] = self.size
            self.parts.append(arr)
            self.size += len(arr)
        return self._seen[key], len(arr)

    def flat(self) -> np.ndarray:
        return np.concatenate(self.parts).astype(np.int64) if self.parts else np.ones(1, dtype=np.int64)


def _aligned(parts: dict[int, np.ndarray], store: _YieldStore, source: str, field: str) -> np.ndarray | None:
    """Recorded per-position values (or chains) laid out as the store's yields, when every replayed
    record has them; all of one shape (a position's value, or chains of one length)."""
    if not parts or len(parts) != len(store.parts):
        return None
    arrays = [parts[id(y)] for y in store.parts]
    if len({a.shape[1:] for a in arrays}) > 1:
        raise InputError(source, f"acceptance.{field}",
                         "the replayed traces mix per-position values and chains (or chain lengths)")
    return np.concatenate(arrays).astype(float)


@dataclass
class _Draws:
    """Per-request draws being filled in, domain by domain, and the recorded traces they replay."""

    prompt: np.ndarray
    output: np.ndarray
    cond: np.ndarray
    trace_off: np.ndarray
    trace_len: np.ndarray
    store: _YieldStore = field(default_factory=_YieldStore)
    conf_parts: dict[int, np.ndarray] = field(default_factory=dict)
    prob_parts: dict[int, np.ndarray] = field(default_factory=dict)
    chains_by: set[str] = field(default_factory=set)

    @classmethod
    def empty(cls, n: int, width: int) -> _Draws:
        return cls(np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64), np.empty((n, width), dtype=float),
                   np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64))


def _domains(wl: WorkloadSpec, seed: int, n: int) -> tuple[list[str], np.ndarray]:
    """The traffic slices' names and each request's slice (one default slice without a mixture)."""
    domains = wl.domains
    names = [d.name for d in domains] if domains else ["default"]
    if domains:
        w = np.asarray([d.weight for d in domains], dtype=float)
        dom = stream(seed, "domains").choice(len(domains), size=n, p=w / w.sum()).astype(np.int64)
    else:
        dom = np.zeros(n, dtype=np.int64)
    return names, dom


def _replay_trace(acc: TraceAcceptance, idx: np.ndarray, rng: np.random.Generator, width: int,
                  lengths_from_trace: bool, draws: _Draws) -> None:
    """The requests `idx` each replay a record of the acceptance trace (drawn, or in order)."""
    trace = load_acceptance_trace(acc.path, acc.field, acc.max_requests, acc.confidence_field,
                                  acc.probability_field, acc.chains_by)
    if acc.confidence_field or acc.probability_field:
        draws.chains_by.add(acc.chains_by)
    cache: dict[int, np.ndarray] = {}
    for i in idx.tolist():
        if lengths_from_trace or acc.records == "in_order":
            r = (acc.first_record + i) % trace.num_requests
        else:
            r = int(rng.integers(trace.num_requests))
        if r not in cache:
            conditional = draw_request_acceptance(acc, rng, width, index=r).trace_conditional
            assert conditional is not None  # a trace record's empirical conditional
            cache[r] = conditional
        draws.cond[i] = cache[r]
        draws.trace_off[i], draws.trace_len[i] = draws.store.add(trace.yields[r])
        if trace.confidences is not None:
            draws.conf_parts[id(trace.yields[r])] = trace.confidences[r]
        if trace.probabilities is not None:
            draws.prob_parts[id(trace.yields[r])] = trace.probabilities[r]
        if lengths_from_trace:
            draws.prompt[i], draws.output[i] = trace.prompt_lens[r], trace.output_lens[r]


def _draw_domain(sc: Scenario, d: int, slice_: Domain | None, idx: np.ndarray, n: int, width: int,
                 draws: _Draws) -> None:
    """Lengths and acceptance of the requests `idx` of traffic slice `d`."""
    wl, seed = sc.workload, sc.seed
    pdist = (slice_.prompt_tokens if slice_ and slice_.prompt_tokens else None) or wl.prompt_tokens
    odist = (slice_.output_tokens if slice_ and slice_.output_tokens else None) or wl.output_tokens
    # draw for all n and select, so adding a domain does not reshuffle the others' draws
    draws.prompt[idx] = sample_lengths(pdist, stream(seed, "prompt", d), n)[idx]
    draws.output[idx] = sample_lengths(odist, stream(seed, "output", d), n)[idx]
    acc = (slice_.acceptance if slice_ and slice_.acceptance else None) or sc.acceptance
    rng = stream(seed, "acceptance", d)
    if isinstance(acc, TraceAcceptance):
        _replay_trace(acc, idx, rng, width, wl.lengths_from_trace, draws)
    elif isinstance(acc, PerRequestAcceptance):
        for i in idx.tolist():
            draws.cond[i] = draw_request_acceptance(acc, rng, width).conditional
    else:
        draws.cond[idx] = draw_request_acceptance(acc, rng, width).conditional


def _arrivals(sc: Scenario, arrival_trace: ArrivalTrace | None, n: int, width: int, draws: _Draws) -> np.ndarray:
    """Arrival times: replayed (with the trace's lengths and recorded yields), NaN until a closed-loop user
    issues the request, or drawn from the open-loop process."""
    arr_spec = sc.workload.arrivals
    if arrival_trace is not None:
        draws.prompt[:] = arrival_trace.prompts[:n]
        draws.output[:] = arrival_trace.outputs[:n]
        for i, y in enumerate(arrival_trace.yields[:n]):
            if y is not None:
                draws.trace_off[i], draws.trace_len[i] = draws.store.add(y)
                draws.cond[i] = empirical_conditional(y, width)
        return arrival_trace.times[:n].copy()
    if isinstance(arr_spec, ClosedLoopArrivals):
        return np.full(n, np.nan)
    return open_loop_arrivals(arr_spec, stream(sc.seed, "arrivals"), n)


def build_requests(sc: Scenario, gamma_cap: int, source: str = "scenario") -> RequestTable:
    """Draw the whole workload of a scenario. `gamma_cap` is the width of the acceptance curves."""
    wl = sc.workload
    width = max(int(gamma_cap), 1)
    arr_spec = wl.arrivals
    arrival_trace = None
    n = wl.num_requests
    if isinstance(arr_spec, TraceArrivals):
        accept_field = sc.acceptance.field if isinstance(sc.acceptance, TraceAcceptance) else None
        arrival_trace = load_arrival_trace(arr_spec, accept_field)
        n = min(n, len(arrival_trace.times))
    names, dom = _domains(wl, sc.seed, n)
    draws = _Draws.empty(n, width)
    for d in range(len(names)):
        _draw_domain(sc, d, wl.domains[d] if wl.domains else None, np.flatnonzero(dom == d), n, width, draws)
    arrival = _arrivals(sc, arrival_trace, n, width, draws)
    if len(draws.chains_by) > 1:
        raise InputError(source, "acceptance.chains_by", "the replayed traces mix chains by position and by step")
    trace_conf = _aligned(draws.conf_parts, draws.store, source, "confidence_field")
    trace_prob = _aligned(draws.prob_parts, draws.store, source, "probability_field")
    step_seed = stream(sc.seed, "step_seeds").integers(0, 2**63, size=n, dtype=np.int64).astype(np.uint64)
    closed = arr_spec if isinstance(arr_spec, ClosedLoopArrivals) else None
    return RequestTable(
        n=n,
        arrival=arrival,
        prompt=draws.prompt,
        output=draws.output,
        domain=dom,
        domain_names=names,
        cond=np.clip(draws.cond, 0.0, 1.0),
        step_seed=step_seed,
        trace_off=draws.trace_off,
        trace_len=draws.trace_len,
        trace_yields=draws.store.flat(),
        trace_conf=trace_conf,
        trace_prob=trace_prob,
        chains_by_step=draws.chains_by == {"step"},
        closed_loop=closed is not None,
        concurrency=closed.concurrency if closed is not None else 0,
        think_time_s=closed.think_time_s if closed is not None else 0.0,
    )
