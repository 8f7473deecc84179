"""What a simulated step draws per decoding sequence: how many of its draft tokens are accepted, and the
drafter's confidence in each, from the requests' true conditionals or replayed from a recorded trace.

Draws are pure functions of each request's seed and output position (`workload.uniforms`), so a
request's outcome does not depend on which others share its batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dspark_sim.core.acceptance import sample_accepted


@dataclass(frozen=True)
class TraceRows:
    """Where the decoding sequences stand in their requests' recorded traces (arrays by sequence)."""

    offset: np.ndarray  # each request's first entry in the flat trace arrays
    length: np.ndarray  # entries its trace has (0: no trace)
    position: np.ndarray  # the output position this step starts at
    step: np.ndarray | None  # the request's step number where chains are recorded by step, else None

    def recorded(self, flat: np.ndarray, width: int) -> np.ndarray:
        """[sequences, width] recorded values (confidences, acceptance probabilities) of the draft tokens a
        step starting at each sequence's output position proposes: one value per output position (the
        k-th draft token's at position + k), or per-position chains (the k-th value of the chain recorded
        at the step's start), or per-step chains (that of the request's step number: chains_by step).
        0 past a request's trace and past a chain's end."""
        tl = self.length
        g = self.position
        at = g[:, None] + np.arange(width)[None, :]
        if flat.ndim == 1:
            idx = self.offset[:, None] + np.minimum(at, np.maximum(tl[:, None] - 1, 0))
            return np.where(at < tl[:, None], flat[idx], 0.0)
        k = min(width, flat.shape[1])
        row = self.step if self.step is not None else g
        rows = self.offset + np.minimum(row, np.maximum(tl - 1, 0))
        out = np.zeros((len(g), width))
        out[:, :k] = flat[rows, :k]
        return np.where(at < tl[:, None], out, 0.0)


def accepted_counts(cond: np.ndarray, verify: np.ndarray, u: np.ndarray, rows: TraceRows | None,
                    yields: np.ndarray, prob: np.ndarray | None) -> np.ndarray:
    """Accepted draft tokens per sequence: drawn from the true conditionals `cond`, or, for requests with a
    trace (`rows` given), a fresh draw from its recorded acceptance probabilities when it has them, else its
    recorded yield at this position (capped at the tokens verified)."""
    acc = sample_accepted(cond, verify, u)
    if rows is None:
        return acc
    tl = rows.length
    tr = tl > 0
    if tr.any() and prob is not None:  # a fresh draw from the recorded probabilities
        drawn = sample_accepted(rows.recorded(prob, u.shape[1]), verify, u)
        return np.where(tr, drawn, acc)
    if tr.any():
        g = rows.position
        pos = np.minimum(g, np.maximum(tl - 1, 0))
        y = np.where(g < tl, yields[rows.offset + pos], 1)
        return np.where(tr, np.minimum(y - 1, verify), acc)
    return acc


def drafter_confidences(cond: np.ndarray, width: int, rows: TraceRows | None, recorded_conf: np.ndarray | None,
                        calibration_error: float, rng: np.random.Generator) -> np.ndarray:
    """The drafter's confidence c_k in each of its `width` draft tokens: recorded confidences where the
    request's trace has them (`rows` and `recorded_conf` given), else the true conditional `cond`,
    perturbed in logit space if miscalibrated."""
    c = cond
    if rows is not None and recorded_conf is not None:
        c = np.where(rows.length[:, None] > 0, rows.recorded(recorded_conf, width), c)
    if calibration_error <= 0:
        return c
    eps = 1e-6
    p = np.clip(c, eps, 1.0 - eps)
    z = np.log(p / (1.0 - p)) + calibration_error * rng.standard_normal(p.shape)
    return np.asarray(1.0 / (1.0 + np.exp(-z)))
