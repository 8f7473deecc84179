"""Acceptance models: how many draft tokens the target accepts, in expectation and sampled.

One module serves both the closed-form predictor (expected tokens per step, per-position survival)
and the simulator (a per-request acceptance process sampled step by step), so the two cannot drift.

Vocabulary used throughout:
- conditional c_k: P(draft token k accepted | tokens 1..k-1 accepted), k = 1..gamma;
- survival a_k = c_1 * ... * c_k: P(the first k draft tokens are all accepted);
- tau(gamma) = 1 + sum_{k<=gamma} a_k: expected tokens per verify step, the bonus token included.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy.special import betaincinv

from dspark_sim.config.errors import InputError
from dspark_sim.config.io import open_text
from dspark_sim.config.schema import (
    HistogramAcceptance,
    IIDAcceptance,
    PerPositionAcceptance,
    PerRequestAcceptance,
    TraceAcceptance,
)

#: Beta quantiles used to integrate over per-request acceptance (deterministic, no sampling).
_BETA_NODES = 64


# --------------------------------------------------------------------------------------------
# Traces
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AcceptanceTrace:
    """Per-request yields: yields[r][i] = tokens a step starting at output position i produces when
    proposals are unlimited (accepted + 1), as SpecDecode-Bench records them."""

    path: str
    prompt_lens: tuple[int, ...]
    output_lens: tuple[int, ...]
    yields: tuple[np.ndarray, ...]
    confidences: tuple[np.ndarray, ...] | None = None  # by output position (or [position, chain]), as yields
    probabilities: tuple[np.ndarray, ...] | None = None  # P(accept) by output position (or chain), as yields

    @property
    def num_requests(self) -> int:
        return len(self.yields)


def load_acceptance_trace(path: str, field: str, max_requests: int | None = None,
                          confidence_field: str | None = None, probability_field: str | None = None,
                          chains_by: str = "position") -> AcceptanceTrace:
    """Read a JSONL trace; every malformed line is one `InputError` naming file, line and field.
    chains_by "step": the confidence and probability fields hold one chain per live step, laid out
    cyclically over the record's positions so that row k is step k (mod the steps recorded).

    Memoised on the file's identity (path, size, modification time), so a rewritten file is re-read.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(path, None, "trace file not found")
    st = p.stat()
    return _load_trace(path, st.st_size, st.st_mtime_ns, field, max_requests, confidence_field, probability_field,
                       chains_by)


@lru_cache(maxsize=16)
def _load_trace(path: str, _size: int, _mtime_ns: int, field: str, max_requests: int | None,
                confidence_field: str | None, probability_field: str | None = None,
                chains_by: str = "position") -> AcceptanceTrace:
    try:
        return _read_trace(path, field, max_requests, confidence_field, probability_field, chains_by)
    except (OSError, EOFError, UnicodeDecodeError) as exc:  # a truncated or corrupt .gz, a binary file
        raise InputError(path, None, f"not a readable JSONL trace ({exc})") from None


def _read_trace(path: str, field: str, max_requests: int | None, confidence_field: str | None,
                probability_field: str | None, chains_by: str = "position") -> AcceptanceTrace:
    p = Path(path)
    prompts: list[int] = []
    outputs: list[int] = []
    yields: list[np.ndarray] = []
    confs: list[np.ndarray] = []
    probs: list[np.ndarray] = []
    with open_text(p) as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(path, f"line {lineno}", f"not valid JSON ({exc.msg})") from None
            if rec.get("kind") not in (None, "request"):
                continue  # engine traces interleave per-step records
            for key in ("prompt_len", "output_len", field):
                if key not in rec:
                    raise InputError(path, f"line {lineno}.{key}", "missing field")
            arr = np.asarray(rec[field], dtype=np.int64)
            if arr.ndim != 1 or (arr.size and arr.min() < 1):
                raise InputError(path, f"line {lineno}.{field}", "expected a list of step yields >= 1")
            prompts.append(int(rec["prompt_len"]))
            outputs.append(int(rec["output_len"]))
            yields.append(arr if arr.size else np.ones(1, dtype=np.int64))
            for name, out in ((confidence_field, confs), (probability_field, probs)):
                if name:
                    out.append(_per_position(rec, name, len(yields[-1]), f"line {lineno}", path, chains_by == "step"))
            if max_requests and len(yields) >= max_requests:
                break
    if not yields:
        raise InputError(path, None, f"no request records with field {field!r}")
    return AcceptanceTrace(path, tuple(prompts), tuple(outputs), tuple(yields),
                           tuple(confs) if confidence_field else None, tuple(probs) if probability_field else None)


def _per_position(rec: dict, name: str, n: int, where: str, path: str, by_step: bool = False) -> np.ndarray:
    """A record's per-output-position values in [0, 1] (confidences, probabilities), cut or zero-padded
    to the record's n yields: one value a position, or a chain of them (a list per position, all of one
    length: the values of the draft tokens a step starting there proposes, engine traces' chain_*).
    by_step: chains one per live step (engine traces' step_*), repeated cyclically to n rows."""
    if name not in rec:
        raise InputError(path, f"{where}.{name}", "missing field")
    try:
        values = np.asarray(rec[name], dtype=float)
    except (TypeError, ValueError):
        values = None
    if values is None or values.ndim not in (1, 2) or (values.ndim == 2 and values.shape[1] == 0):
        raise InputError(path, f"{where}.{name}", "expected a list of numbers, or of equally long lists of numbers")
    values = np.clip(values, 0.0, 1.0)
    if by_step:
        if values.ndim != 2 or not len(values):
            raise InputError(path, f"{where}.{name}", "chains_by step needs a non-empty list of chains (lists)")
        return np.resize(values, (n, values.shape[1]))  # row k = step k mod the steps recorded
    fit = np.zeros((n, *values.shape[1:]))
    fit[: min(len(values), n)] = values[:n]
    return fit


def _trace_of(spec: TraceAcceptance) -> AcceptanceTrace:
    return load_acceptance_trace(spec.path, spec.field, spec.max_requests, spec.confidence_field,
                                 spec.probability_field, spec.chains_by)


def trace_tau(trace: AcceptanceTrace, gamma: int) -> float:
    """Tokens per step when every step proposes `gamma`: walk each request's trace step by step.

    All requests advance in lockstep (vectorised); a request past its trace's end yields 1 per step.
    """
    lengths = np.array([len(y) for y in trace.yields])
    width = int(lengths.max())
    table = np.ones((trace.num_requests, width + 1), dtype=np.int64)
    for r, y in enumerate(trace.yields):
        table[r, : len(y)] = y
    pos = np.zeros(trace.num_requests, dtype=np.int64)
    steps = np.zeros(trace.num_requests, dtype=np.int64)
    rows = np.arange(trace.num_requests)
    active = pos < lengths
    while active.any():
        step_yield = np.minimum(table[rows, np.minimum(pos, width)], gamma + 1)
        pos = np.where(active, pos + step_yield, pos)
        steps += active
        active = pos < lengths
    return float(np.minimum(pos, lengths).sum() / steps.sum()) if steps.sum() else 1.0


# --------------------------------------------------------------------------------------------
# Survival curves and expected tokens
# --------------------------------------------------------------------------------------------


def _extend(values: list[float], n: int) -> np.ndarray:
    arr = np.asarray(values, dtype=float)
    if len(arr) >= n:
        return arr[:n]
    return np.concatenate([arr, np.full(n - len(arr), arr[-1])])


def conditional_from_histogram(probabilities: list[float], n: int) -> np.ndarray:
    """c_k = P(L >= k) / P(L >= k-1) from an accepted-length histogram; the tail repeats the last ratio."""
    p = np.asarray(probabilities, dtype=float)
    tail = np.cumsum(p[::-1])[::-1]  # tail[j] = P(L >= j)
    with np.errstate(divide="ignore", invalid="ignore"):
        cond = np.where(tail[:-1] > 0, tail[1:] / tail[:-1], 0.0)
    return _extend(list(cond), n) if len(cond) else np.zeros(n)


def _beta_nodes(mean: float, concentration: float) -> np.ndarray:
    a, b = mean * concentration, (1.0 - mean) * concentration
    if a <= 0:
        return np.zeros(_BETA_NODES)
    if b <= 0:
        return np.ones(_BETA_NODES)
    q = (np.arange(_BETA_NODES) + 0.5) / _BETA_NODES
    return betaincinv(a, b, q)


def _per_request_survivals(spec: PerRequestAcceptance, n: int) -> np.ndarray:
    """(nodes, n) survival curves over the Beta quantiles of per-request alpha."""
    alphas = _beta_nodes(spec.mean_alpha, spec.concentration)
    decay = (1.0 - spec.decay_per_position) ** np.arange(n)
    cond = np.clip(alphas[:, None] * decay[None, :], 0.0, 1.0)
    return np.cumprod(cond, axis=1)


def survival_curve(spec, n: int) -> np.ndarray:
    """a_k for k = 1..n, averaged over requests where acceptance varies between them."""
    if n <= 0:
        return np.zeros(0)
    if isinstance(spec, IIDAcceptance):
        return spec.alpha ** np.arange(1, n + 1, dtype=float)
    if isinstance(spec, PerPositionAcceptance):
        return np.cumprod(_extend(spec.conditional, n))
    if isinstance(spec, HistogramAcceptance):
        return np.cumprod(conditional_from_histogram(spec.probabilities, n))
    if isinstance(spec, PerRequestAcceptance):
        return _per_request_survivals(spec, n).mean(axis=0)
    if isinstance(spec, TraceAcceptance):
        pooled = np.concatenate(_trace_of(spec).yields) - 1  # accepted with unlimited proposals
        return np.array([(pooled >= k).mean() for k in range(1, n + 1)])
    raise TypeError(f"unknown acceptance model {spec!r}")


def conditional_curve(spec, n: int) -> np.ndarray:
    """c_k for k = 1..n (from the averaged survival curve)."""
    a = survival_curve(spec, n)
    prev = np.concatenate([[1.0], a[:-1]])
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(prev > 0, a / prev, 0.0)


def expected_tokens(spec, gammas) -> np.ndarray:
    """tau(gamma): expected tokens per verify step (bonus included), for each gamma in `gammas`.

    For i.i.d. acceptance this is Leviathan's (1 - alpha^(gamma+1)) / (1 - alpha); for traces it
    walks the recorded steps, since a trace's acceptance depends on where each step starts.
    """
    g = np.atleast_1d(np.asarray(gammas, dtype=np.int64))
    if isinstance(spec, TraceAcceptance):
        trace = _trace_of(spec)
        return np.array([trace_tau(trace, int(x)) for x in g])
    gmax = int(g.max()) if g.size else 0
    if isinstance(spec, PerRequestAcceptance):
        # average of per-request tau = 1 + mean over requests of sum of survivals
        surv = _per_request_survivals(spec, max(gmax, 1)).mean(axis=0)
    else:
        surv = survival_curve(spec, max(gmax, 1))
    cum = np.concatenate([[0.0], np.cumsum(surv)])
    return 1.0 + cum[g]


def leviathan_expected_tokens(alpha: float, gamma: int) -> float:
    """The closed form of Leviathan et al. (2023), eq. 1, kept verbatim for tests and papers tables."""
    if alpha == 1.0:
        return gamma + 1.0
    return (1.0 - alpha ** (gamma + 1)) / (1.0 - alpha)


# --------------------------------------------------------------------------------------------
# Per-request acceptance processes (the simulator samples these)
# --------------------------------------------------------------------------------------------


@dataclass
class RequestAcceptance:
    """One request's acceptance: either a conditional curve (sampled) or recorded trace yields."""

    conditional: np.ndarray | None = None  # (gamma_cap,) c_k for this request
    yields: np.ndarray | None = None  # trace: yield per output position (unlimited proposals)
    trace_conditional: np.ndarray | None = None  # trace: this request's empirical c_k (for confidences)

    def true_conditional(self, output_pos: int, n: int) -> np.ndarray:
        """The conditional acceptance the drafter faces at this step (what a perfect confidence says)."""
        if self.conditional is not None:
            return _extend(list(self.conditional), n) if n else np.zeros(0)
        assert self.trace_conditional is not None
        return _extend(list(self.trace_conditional), n) if n else np.zeros(0)

    def trace_accepted(self, output_pos: int, verified: int) -> int:
        """Past the end of its trace a request accepts nothing (as `trace_tau` assumes)."""
        assert self.yields is not None
        y = int(self.yields[output_pos]) if output_pos < len(self.yields) else 1
        return min(y - 1, verified)


def empirical_conditional(yields: np.ndarray, n: int) -> np.ndarray:
    """c_k of one request's recorded yields (what a calibrated confidence head reports on average)."""
    acc = yields - 1
    tail = np.array([(acc >= k).mean() for k in range(0, n + 1)])
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(tail[:-1] > 0, tail[1:] / np.maximum(tail[:-1], 1e-12), 0.0)


def draw_request_acceptance(spec, rng: np.random.Generator, gamma_cap: int, index: int | None = None) -> RequestAcceptance:
    """Draw one request's acceptance process. `index` picks a trace record (else sampled)."""
    n = max(gamma_cap, 1)
    if isinstance(spec, IIDAcceptance | PerPositionAcceptance | HistogramAcceptance):
        return RequestAcceptance(conditional=conditional_curve(spec, n))
    if isinstance(spec, PerRequestAcceptance):
        a, b = spec.mean_alpha * spec.concentration, (1 - spec.mean_alpha) * spec.concentration
        alpha = float(rng.beta(a, b)) if 0 < spec.mean_alpha < 1 else spec.mean_alpha
        decay = (1.0 - spec.decay_per_position) ** np.arange(n)
        return RequestAcceptance(conditional=np.clip(alpha * decay, 0.0, 1.0))
    if isinstance(spec, TraceAcceptance):
        trace = _trace_of(spec)
        r = int(rng.integers(trace.num_requests)) if index is None else index % trace.num_requests
        y = trace.yields[r]
        return RequestAcceptance(yields=y, trace_conditional=empirical_conditional(y, n))
    raise TypeError(f"unknown acceptance model {spec!r}")


def sample_accepted(conditional: np.ndarray, verify: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
    """Accepted counts for a batch: row i accepts while uniforms[i, k] < conditional[i, k], k < verify[i].

    `conditional` and `uniforms` are (B, G); vectorised so the simulator draws a whole batch at once.
    """
    b, g = conditional.shape
    ok = uniforms < conditional
    ok &= np.arange(g)[None, :] < verify[:, None]
    return np.where(ok.all(axis=1), g, np.argmin(ok, axis=1)).astype(np.int64) if g else np.zeros(b, np.int64)
