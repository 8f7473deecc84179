"""Speculation policies: how many tokens each sequence drafts and verifies, step by step.

Shared, unchanged, by the simulator and the real engine (numpy only: no simpy, no torch), so a policy
validated in one is the policy measured in the other. Each step the caller asks:

1. `draft_lengths(view)`: tokens each sequence drafts (before drafting);
2. `verify_lengths(view, draft, confidences)`: the prefix of the drafted tokens each sequence sends to
   verification, from draft-side information only (confidences), which keeps decoding lossless;
3. `observe(view, verified, accepted, step_time_s)`: feedback for adaptive policies.

A policy whose lengths follow from the batch's shape alone sets `decides_from_shape = True`: a
tensor-parallel engine then lets every rank decide for itself instead of broadcasting rank 0's choice.

`sps(tokens_per_pass) -> verify steps per second` is the engine's measured (or the cost model's)
throughput curve, used by the goodput and DSpark policies to price extra verify tokens.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from dspark_sim.config.schema import (
    BatchTableGamma,
    ConfidenceThreshold,
    DSparkScheduler,
    FeedbackController,
    FixedGamma,
    GoodputPolicy,
    NoSpeculation,
)

SPSFn = Callable[[np.ndarray], np.ndarray]
#: the schema's policy specs, which `make_policy` turns into runtime policies
Spec = (NoSpeculation | FixedGamma | BatchTableGamma | GoodputPolicy | ConfidenceThreshold | DSparkScheduler
        | FeedbackController)


@dataclass
class StepView:
    """What a policy may look at when deciding one decode step of a batch."""

    context_lens: np.ndarray  # (B,) tokens already in each sequence's KV cache
    step: int = 0
    seq_ids: np.ndarray | None = None  # (B,) stable ids, needed for lagged confidences
    max_batched_tokens: int | None = None  # the engine's token budget per pass (for utilisation)

    @property
    def batch_size(self) -> int:
        return int(len(self.context_lens))


class Policy(Protocol):
    """What the simulator and the engine ask of a policy, step by step (the module docstring's 1-3)."""

    @property
    def gamma_max(self) -> int:
        """The most tokens a step drafts: the engine drafts this many and the policy truncates."""
        ...

    def draft_lengths(self, view: StepView) -> np.ndarray: ...

    def verify_lengths(self, view: StepView, draft: np.ndarray,
                       confidences: np.ndarray | None = None) -> np.ndarray: ...

    def observe(self, view: StepView, verified: np.ndarray, accepted: np.ndarray, step_time_s: float) -> None: ...


def _full(view: StepView, value: int) -> np.ndarray:
    return np.full(view.batch_size, value, dtype=np.int64)


def _conf_matrix(confidences: np.ndarray | None, draft: np.ndarray, gamma_max: int) -> np.ndarray:
    """Confidences as a (B, gamma_max) float array with 0 where nothing was drafted."""
    b = len(draft)
    if confidences is None:
        conf = np.ones((b, gamma_max))
    else:
        conf = np.array(confidences, dtype=float, copy=True).reshape(b, -1)[:, :gamma_max]
        if conf.shape[1] < gamma_max:
            conf = np.pad(conf, ((0, 0), (0, gamma_max - conf.shape[1])))
    conf = np.nan_to_num(np.clip(conf, 0.0, 1.0), nan=0.0)
    positions = np.arange(gamma_max)[None, :]
    conf[positions >= draft[:, None]] = 0.0
    return conf


def leading_run(mask: np.ndarray) -> np.ndarray:
    """Per row, how many leading entries of a boolean matrix are True."""
    if mask.shape[1] == 0:
        return np.zeros(mask.shape[0], dtype=np.int64)
    return np.where(mask.all(axis=1), mask.shape[1], np.argmin(mask, axis=1)).astype(np.int64)


def expected_tokens_iid(alpha: float | np.ndarray, gamma: np.ndarray | int) -> np.ndarray:
    """Leviathan et al.: E[tokens per step] = (1 - alpha^(gamma+1)) / (1 - alpha), incl. the bonus."""
    a = np.asarray(alpha, dtype=float)
    g = np.asarray(gamma, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = (1.0 - a ** (g + 1.0)) / (1.0 - a)
    return np.where(np.isclose(a, 1.0), g + 1.0, out)


# --------------------------------------------------------------------------------------------
# Static policies
# --------------------------------------------------------------------------------------------


@dataclass
class NoSpecPolicy:
    gamma_max: int = 0
    decides_from_shape = True  # (a class attribute: not a dataclass field)

    def draft_lengths(self, view: StepView) -> np.ndarray:
        return _full(view, 0)

    def verify_lengths(self, view: StepView, draft: np.ndarray, confidences: np.ndarray | None = None
                       ) -> np.ndarray:
        return np.zeros_like(draft)

    def observe(self, view: StepView, verified: np.ndarray, accepted: np.ndarray, step_time_s: float) -> None:
        return None


@dataclass
class FixedPolicy:
    gamma: int
    decides_from_shape = True

    @property
    def gamma_max(self) -> int:
        return self.gamma

    def draft_lengths(self, view: StepView) -> np.ndarray:
        return _full(view, self.gamma)

    def verify_lengths(self, view: StepView, draft: np.ndarray, confidences: np.ndarray | None = None
                       ) -> np.ndarray:
        return np.asarray(draft, dtype=np.int64).copy()

    def observe(self, view: StepView, verified: np.ndarray, accepted: np.ndarray, step_time_s: float) -> None:
        return None


@dataclass
class BatchTablePolicy:
    """vLLM-style static table: gamma from the smallest batch-size bound >= the batch size."""

    table: dict[int, int]
    decides_from_shape = True

    @property
    def gamma_max(self) -> int:
        return max(self.table.values(), default=0)

    def gamma_for(self, batch_size: int) -> int:
        for bound in sorted(self.table):
            if batch_size <= bound:
                return self.table[bound]
        return 0

    def draft_lengths(self, view: StepView) -> np.ndarray:
        return _full(view, self.gamma_for(view.batch_size))

    def verify_lengths(self, view: StepView, draft: np.ndarray, confidences: np.ndarray | None = None
                       ) -> np.ndarray:
        return np.asarray(draft, dtype=np.int64).copy()

    def observe(self, view: StepView, verified: np.ndarray, accepted: np.ndarray, step_time_s: float) -> None:
        return None


# --------------------------------------------------------------------------------------------
# Adaptive policies
# --------------------------------------------------------------------------------------------


@dataclass
class GoodputMaxPolicy:
    """SmartSpec-style: one gamma for the batch, maximising expected tokens x steps per second.

    Acceptance is a moving estimate from observed (verified, accepted) counts, as SmartSpec does.
    """

    gamma_max: int
    sps: SPSFn
    alpha_estimate: float = 0.7
    smoothing: float = 0.1

    def choose_gamma(self, batch_size: int) -> int:
        gammas = np.arange(self.gamma_max + 1)
        tokens = batch_size * expected_tokens_iid(self.alpha_estimate, gammas)
        rate = tokens * self.sps(batch_size * (gammas + 1.0))
        return int(gammas[int(np.argmax(rate))])

    def draft_lengths(self, view: StepView) -> np.ndarray:
        return _full(view, self.choose_gamma(view.batch_size))

    def verify_lengths(self, view: StepView, draft: np.ndarray, confidences: np.ndarray | None = None
                       ) -> np.ndarray:
        return np.asarray(draft, dtype=np.int64).copy()

    def observe(self, view: StepView, verified: np.ndarray, accepted: np.ndarray, step_time_s: float) -> None:
        verified = np.asarray(verified)
        accepted = np.asarray(accepted)
        if verified.sum() <= 0:
            return
        # per-token acceptance that reproduces the observed mean accepted length (truncated geometric)
        observed = float(accepted.sum() / verified.sum())
        self.alpha_estimate = float(
            np.clip((1 - self.smoothing) * self.alpha_estimate + self.smoothing * observed, 0.01, 0.99)
        )


@dataclass
class ThresholdPolicy:
    """Verify while the drafter's confidence stays at or above a threshold (per sequence)."""

    gamma_max: int
    threshold: float
    on: str = "survival"

    def draft_lengths(self, view: StepView) -> np.ndarray:
        return _full(view, self.gamma_max)

    def verify_lengths(self, view: StepView, draft: np.ndarray, confidences: np.ndarray | None = None
                       ) -> np.ndarray:
        draft = np.asarray(draft, dtype=np.int64)
        conf = _conf_matrix(confidences, draft, self.gamma_max)
        score = np.cumprod(conf, axis=1) if self.on == "survival" else conf
        return np.minimum(leading_run(score >= self.threshold), draft)

    def observe(self, view: StepView, verified: np.ndarray, accepted: np.ndarray, step_time_s: float) -> None:
        return None


def prefix_schedule(survival: np.ndarray, sps: SPSFn, min_tokens: int = 0) -> np.ndarray:
    """DSpark Algorithm 1: admit candidate tokens in descending prefix survival while tau x SPS grows.

    `survival[i, k]` = a_{k+1} = P(the first k+1 draft tokens of sequence i are all accepted); rows are
    non-increasing. Every sequence always verifies its target token (B starts at the batch size, the
    expected tokens at one per sequence). Returns the number of draft tokens each sequence verifies.
    Stopping at the first drop (not the global best) is the paper's early stop.
    """
    b, g = survival.shape
    verify = np.zeros(b, dtype=np.int64)
    if b == 0 or g == 0:
        return verify
    if min_tokens > 0:
        verify[:] = min(min_tokens, g)
    # candidates beyond the forced minimum, ordered by survival (desc), then position (asc)
    rows, cols = np.nonzero(np.arange(g)[None, :] >= verify[:, None])
    values = survival[rows, cols]
    keep = values > 0
    rows, cols, values = rows[keep], cols[keep], values[keep]
    order = np.lexsort((cols, -values))
    rows, cols, values = rows[order], cols[order], values[order]
    base_tokens = b + int(verify.sum())
    forced_gain = float(np.sum(np.where(np.arange(g)[None, :] < verify[:, None], survival, 0.0)))
    budgets = base_tokens + np.arange(len(values) + 1, dtype=float)
    taus = b + forced_gain + np.concatenate([[0.0], np.cumsum(values)])
    objective = taus * np.asarray(sps(budgets), dtype=float)
    drops = np.nonzero(np.diff(objective) <= 0)[0]
    admitted = int(drops[0]) if len(drops) else len(values)
    np.add.at(verify, rows[:admitted], 1)
    # admitted tokens form prefixes because survival is non-increasing along each row
    return verify


@dataclass
class DSparkPolicy:
    """DSpark's hardware-aware prefix scheduler, optionally on confidences `lag` steps old.

    With a lag, each request's verification budget is decided by the global search over survival
    probabilities from `lag` steps earlier (as the production system does, asynchronously), then
    applied to the current draft; requests without such history use the current confidences.
    """

    gamma_max: int
    sps: SPSFn
    lag: int = 0
    min_tokens: int = 0
    _history: dict[int, deque] = field(default_factory=dict)

    def draft_lengths(self, view: StepView) -> np.ndarray:
        return _full(view, self.gamma_max)

    def verify_lengths(self, view: StepView, draft: np.ndarray, confidences: np.ndarray | None = None
                       ) -> np.ndarray:
        draft = np.asarray(draft, dtype=np.int64)
        conf = _conf_matrix(confidences, draft, self.gamma_max)
        survival = np.cumprod(conf, axis=1)
        if self.lag and view.seq_ids is not None:
            lagged = survival.copy()
            for i, sid in enumerate(view.seq_ids.tolist()):
                hist = self._history.setdefault(sid, deque(maxlen=self.lag))
                if len(hist) == self.lag:
                    lagged[i] = hist[0]
                hist.append(survival[i].copy())
            survival_for_budget = lagged
        else:
            survival_for_budget = survival
        verify = prefix_schedule(survival_for_budget, self.sps, self.min_tokens)
        return np.minimum(verify, draft)

    def forget(self, seq_id: int) -> None:
        """Drop a finished sequence's confidence history."""
        self._history.pop(seq_id, None)

    def observe(self, view: StepView, verified: np.ndarray, accepted: np.ndarray, step_time_s: float) -> None:
        return None


@dataclass
class FeedbackPolicy:
    """The seed's "dynamic threshold": raise the confidence bar when the engine is busy or slow.

    Error signal: utilisation (tokens per pass / token budget) above its target, or the time per
    accepted token above the TPOT target. The threshold moves by `gain` x error each step.
    """

    gamma_max: int
    threshold: float
    target_utilisation: float
    gain: float
    target_tpot_s: float | None = None

    def draft_lengths(self, view: StepView) -> np.ndarray:
        return _full(view, self.gamma_max)

    def verify_lengths(self, view: StepView, draft: np.ndarray, confidences: np.ndarray | None = None
                       ) -> np.ndarray:
        draft = np.asarray(draft, dtype=np.int64)
        conf = _conf_matrix(confidences, draft, self.gamma_max)
        return np.minimum(leading_run(np.cumprod(conf, axis=1) >= self.threshold), draft)

    def observe(self, view: StepView, verified: np.ndarray, accepted: np.ndarray, step_time_s: float) -> None:
        verified = np.asarray(verified)
        accepted = np.asarray(accepted)
        errors = []
        if view.max_batched_tokens:
            used = view.batch_size + float(verified.sum())
            errors.append(used / view.max_batched_tokens - self.target_utilisation)
        if self.target_tpot_s and view.batch_size:
            tokens_per_seq = 1.0 + float(accepted.mean())
            errors.append((step_time_s / tokens_per_seq) / self.target_tpot_s - 1.0)
        if errors:
            self.threshold = float(np.clip(self.threshold + self.gain * max(errors), 0.0, 0.999))


def table_sps(table: dict[int, float]) -> SPSFn:
    """A profiled SPS(B) table as a function: linear interpolation, flat beyond the ends."""
    xs = np.array(sorted(table), dtype=float)
    ys = np.array([table[int(x)] for x in xs], dtype=float)

    def sps(budget: np.ndarray) -> np.ndarray:
        return np.interp(np.asarray(budget, dtype=float), xs, ys)

    return sps


def make_policy(spec: Spec, sps: SPSFn | None = None) -> Policy:
    """Build the runtime policy for a schema `PolicySpec`. `sps` is needed by goodput and dspark."""
    if isinstance(spec, NoSpeculation):
        return NoSpecPolicy()
    if isinstance(spec, FixedGamma):
        return FixedPolicy(spec.gamma) if spec.gamma > 0 else NoSpecPolicy()
    if isinstance(spec, BatchTableGamma):
        return BatchTablePolicy(dict(spec.table))
    if isinstance(spec, ConfidenceThreshold):
        return ThresholdPolicy(spec.gamma_max, spec.threshold, spec.on)
    if isinstance(spec, FeedbackController):
        return FeedbackPolicy(
            spec.gamma_max,
            spec.initial_threshold,
            spec.target_utilisation,
            spec.gain,
            spec.target_tpot_ms / 1000.0 if spec.target_tpot_ms else None,
        )
    if isinstance(spec, GoodputPolicy | DSparkScheduler):
        if isinstance(spec, DSparkScheduler) and spec.sps_source == "table":
            if not spec.sps_table:
                raise ValueError("policy.sps_table is required when sps_source is 'table'")
            sps = table_sps(spec.sps_table)
        if sps is None:
            raise ValueError(f"policy {spec.kind!r} needs an SPS(B) curve (from the cost model or a table)")
        if isinstance(spec, GoodputPolicy):
            return GoodputMaxPolicy(spec.gamma_max, sps)
        return DSparkPolicy(spec.gamma_max, sps, spec.confidence_lag_steps, spec.min_verify_tokens)
    raise TypeError(f"unknown policy spec {spec!r}")


def as_policy(policy: Policy | Spec, sps: SPSFn | None = None) -> Policy:
    """A runtime policy as it is, a schema spec through `make_policy`: what the decoding loops accept."""
    return make_policy(policy, sps) if isinstance(policy, Spec) else policy
