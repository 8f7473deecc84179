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

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dspark_sim.config.errors import InputError
from dspark_sim.config.schema import (
    ClosedLoopArrivals,
    ConstantArrivals,
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
)
from dspark_sim.core.acceptance import draw_request_acceptance, load_acceptance_trace

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


_TIME_KEYS = ("arrival_s", "arrival_time_s", "arrival_time", "timestamp")
_PROMPT_KEYS = ("prompt_len", "prompt_tokens", "input_len")
_OUTPUT_KEYS = ("output_len", "output_tokens")
_ACCEPT_KEYS = ("accept_len",)


@dataclass(frozen=True)
class ArrivalTrace:
    times: np.ndarray
    prompts: np.ndarray
    outputs: np.ndarray
    yields: list[np.ndarray | None]


def _pick(rec: dict, keys: tuple[str, ...], path: str, where: str, required: bool = True):
    for k in keys:
        if k in rec and rec[k] not in (None, ""):
            return rec[k]
    if required:
        raise InputError(path, f"{where}.{keys[0]}", f"missing field (accepted names: {', '.join(keys)})")
    return None


def _number(value, path: str, where: str, integer: bool) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise InputError(path, where, f"expected a number, got {value!r}") from None
    if not np.isfinite(x) or x < 0 or (integer and (x != int(x) or x < 1)):
        kind = "a whole number >= 1" if integer else "a finite number >= 0"
        raise InputError(path, where, f"expected {kind}, got {value!r}")
    return x


def load_arrival_trace(spec: TraceArrivals, accept_field: str | None = None) -> ArrivalTrace:
    """Read a JSONL or CSV request trace: arrival time, prompt and output length, optional yields.

    Optional per-step acceptance: `accept_len` (or the acceptance trace's `field`), a list of step
    yields by output position (SpecDecode-Bench convention); in CSV, numbers separated by spaces or `;`.
    """
    path = spec.path
    p = Path(path)
    if not p.exists():
        raise InputError(path, None, "arrival trace not found")
    records: list[tuple[str, dict]] = []
    try:
        if p.suffix.lower() == ".csv":
            with p.open(encoding="utf-8", newline="") as fh:
                for i, row in enumerate(csv.DictReader(fh), 2):
                    records.append((f"line {i}", dict(row)))
        else:
            with p.open(encoding="utf-8") as fh:
                for i, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise InputError(path, f"line {i}", f"not valid JSON ({exc.msg})") from None
                    if not isinstance(rec, dict):
                        raise InputError(path, f"line {i}", "expected a JSON object per line")
                    records.append((f"line {i}", rec))
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(path, None, f"cannot read: {exc}") from None
    if not records:
        raise InputError(path, None, "no requests in the arrival trace")
    keys = _ACCEPT_KEYS + ((accept_field,) if accept_field else ())
    times, prompts, outputs, yields = [], [], [], []
    for where, rec in records:
        times.append(_number(_pick(rec, _TIME_KEYS, path, where), path, where, integer=False))
        prompts.append(_number(_pick(rec, _PROMPT_KEYS, path, where), path, where, integer=True))
        outputs.append(_number(_pick(rec, _OUTPUT_KEYS, path, where), path, where, integer=True))
        acc = _pick(rec, keys, path, where, required=False)
        if acc is None:
            yields.append(None)
            continue
        if isinstance(acc, str):
            acc = [x for x in acc.replace(";", " ").split() if x]
        try:
            arr = np.asarray([int(x) for x in acc], dtype=np.int64)
        except (TypeError, ValueError):
            raise InputError(path, f"{where}.accept_len", "expected a list of whole-number step yields") from None
        if arr.size == 0 or arr.min() < 1:
            raise InputError(path, f"{where}.accept_len", "expected step yields >= 1")
        yields.append(arr)
    t = np.asarray(times, dtype=float)
    order = np.argsort(t, kind="stable")
    t = (t[order] - t[order[0]]) * spec.time_scale
    return ArrivalTrace(
        times=t,
        prompts=np.asarray(prompts, dtype=np.int64)[order],
        outputs=np.asarray(outputs, dtype=np.int64)[order],
        yields=[yields[i] for i in order],
    )


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


def build_requests(sc: Scenario, gamma_cap: int, source: str = "scenario") -> RequestTable:
    """Draw the whole workload of a scenario. `gamma_cap` is the width of the acceptance curves."""
    wl = sc.workload
    seed = sc.seed
    width = max(int(gamma_cap), 1)
    arr_spec = wl.arrivals
    arrival_trace = None
    n = wl.num_requests
    if isinstance(arr_spec, TraceArrivals):
        accept_field = sc.acceptance.field if isinstance(sc.acceptance, TraceAcceptance) else None
        arrival_trace = load_arrival_trace(arr_spec, accept_field)
        n = min(n, len(arrival_trace.times))

    # domains (a mixture) or the single default slice
    domains = wl.domains
    names = [d.name for d in domains] if domains else ["default"]
    if domains:
        w = np.asarray([d.weight for d in domains], dtype=float)
        dom = stream(seed, "domains").choice(len(domains), size=n, p=w / w.sum()).astype(np.int64)
    else:
        dom = np.zeros(n, dtype=np.int64)

    prompt = np.empty(n, dtype=np.int64)
    output = np.empty(n, dtype=np.int64)
    cond = np.empty((n, width), dtype=float)
    trace_off = np.zeros(n, dtype=np.int64)
    trace_len = np.zeros(n, dtype=np.int64)
    store = _YieldStore()
    conf_parts: dict[int, np.ndarray] = {}
    prob_parts: dict[int, np.ndarray] = {}
    chains_by: set[str] = set()
    for d in range(len(names)):
        slice_ = domains[d] if domains else None
        idx = np.flatnonzero(dom == d)
        pdist = (slice_.prompt_tokens if slice_ and slice_.prompt_tokens else None) or wl.prompt_tokens
        odist = (slice_.output_tokens if slice_ and slice_.output_tokens else None) or wl.output_tokens
        # draw for all n and select, so adding a domain does not reshuffle the others' draws
        prompt[idx] = sample_lengths(pdist, stream(seed, "prompt", d), n)[idx]
        output[idx] = sample_lengths(odist, stream(seed, "output", d), n)[idx]
        acc = (slice_.acceptance if slice_ and slice_.acceptance else None) or sc.acceptance
        rng = stream(seed, "acceptance", d)
        if isinstance(acc, TraceAcceptance):
            trace = load_acceptance_trace(acc.path, acc.field, acc.max_requests, acc.confidence_field,
                                          acc.probability_field, acc.chains_by)
            if acc.confidence_field or acc.probability_field:
                chains_by.add(acc.chains_by)
            cache: dict[int, np.ndarray] = {}
            for i in idx.tolist():
                if wl.lengths_from_trace or acc.records == "in_order":
                    r = (acc.first_record + i) % trace.num_requests
                else:
                    r = int(rng.integers(trace.num_requests))
                if r not in cache:
                    cache[r] = draw_request_acceptance(acc, rng, width, index=r).trace_conditional
                cond[i] = cache[r]
                trace_off[i], trace_len[i] = store.add(trace.yields[r])
                if trace.confidences is not None:
                    conf_parts[id(trace.yields[r])] = trace.confidences[r]
                if trace.probabilities is not None:
                    prob_parts[id(trace.yields[r])] = trace.probabilities[r]
                if wl.lengths_from_trace:
                    prompt[i], output[i] = trace.prompt_lens[r], trace.output_lens[r]
        elif isinstance(acc, PerRequestAcceptance):
            for i in idx.tolist():
                cond[i] = draw_request_acceptance(acc, rng, width).conditional
        else:
            cond[idx] = draw_request_acceptance(acc, rng, width).conditional

    if arrival_trace is not None:
        arrival = arrival_trace.times[:n].copy()
        prompt[:] = arrival_trace.prompts[:n]
        output[:] = arrival_trace.outputs[:n]
        for i, y in enumerate(arrival_trace.yields[:n]):
            if y is not None:
                trace_off[i], trace_len[i] = store.add(y)
                cond[i] = _empirical_conditional(y, width)
    elif isinstance(arr_spec, ClosedLoopArrivals):
        arrival = np.full(n, np.nan)
    else:
        arrival = open_loop_arrivals(arr_spec, stream(seed, "arrivals"), n)

    if len(chains_by) > 1:
        raise InputError(source, "acceptance.chains_by", "the replayed traces mix chains by position and by step")
    trace_conf = _aligned(conf_parts, store, source, "confidence_field")
    trace_prob = _aligned(prob_parts, store, source, "probability_field")
    step_seed = stream(seed, "step_seeds").integers(0, 2**63, size=n, dtype=np.int64).astype(np.uint64)
    closed = isinstance(arr_spec, ClosedLoopArrivals)
    return RequestTable(
        n=n,
        arrival=arrival,
        prompt=prompt,
        output=output,
        domain=dom,
        domain_names=names,
        cond=np.clip(cond, 0.0, 1.0),
        step_seed=step_seed,
        trace_off=trace_off,
        trace_len=trace_len,
        trace_yields=store.flat(),
        trace_conf=trace_conf,
        trace_prob=trace_prob,
        chains_by_step=chains_by == {"step"},
        closed_loop=closed,
        concurrency=arr_spec.concurrency if closed else 0,
        think_time_s=arr_spec.think_time_s if closed else 0.0,
    )


def _empirical_conditional(yields: np.ndarray, n: int) -> np.ndarray:
    """c_k of one request's recorded yields (what a calibrated confidence head reports on average)."""
    acc = yields - 1
    tail = np.array([(acc >= k).mean() for k in range(0, n + 1)])
    return np.where(tail[:-1] > 0, tail[1:] / np.maximum(tail[:-1], 1e-12), 0.0)
