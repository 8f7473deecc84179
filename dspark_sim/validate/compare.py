"""Measured against predicted: how timed repeats become one figure, each point's errors, the error table.

A point's timed repeats and the profile's rounds become one figure by the run's estimator: the fastest on
a GPU; on a CPU the median, once every timing is brought to one host speed (`resolve_estimator` says why).
Torch-free.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

from dspark_sim.config.errors import InputError
from dspark_sim.config.measurements import (
    ErrorSummary,
    Estimator,
    MeasuredCase,
    ValidationMeasurements,
    ValidationPoint,
)
from dspark_sim.validate.cases import Case, Measured

ESTIMATORS: dict[str, Estimator] = {"median": "median", "best": "best", "probed": "probed"}


def resolve_estimator(choice: str | None, device_kind: str) -> Estimator:
    """`auto` (or None): the fastest repeat on a GPU, the probed median on a CPU.

    Why the two differ (docs/validation.md, estimators): on the H200 the device's own speed is steady
    (the plain loop within 0.3% across repeats, the SM clock at 1,980 MHz) and what moves is the host
    driving the tiny pair's launches, which only ever adds time: there one disturbed profile round or
    measured repeat decided a point (errors to 19%), and the fastest of each side agrees with the other.
    On a 2-core CPU the machine's own speed moves both ways with its neighbours (the plain batch-16
    loop reads 5.2-6.4k tokens/s in some minutes and 7.5-8.6k in others): the fastest profile round of
    many shapes then outruns the fastest of three measured repeats, and the median is the fairer figure.
    There the spells last minutes, so every timing is first brought to one host speed by a yardstick
    timed beside it ('probed', measure/host_speed.py)."""
    if choice in (None, "auto"):
        return "best" if device_kind == "cuda" else "probed"
    if choice not in ESTIMATORS:
        raise InputError("--estimator", None, f"got {choice!r}, allowed: auto, median, best, probed")
    return ESTIMATORS[choice]


def summarised(meas: ValidationMeasurements) -> list[tuple[Measured, Measured]]:
    """Each measured case's (speculative, plain) figures under the measurements' estimator.

    'median' takes the figures as measured (each prompt round's median over the repeats; the baseline the
    median over the cases sharing its temperature, batch and prompt length). 'best' takes each case's
    fastest repeat, and as the baseline the median over those cases of their fastest plain repeats.
    'probed' brings each repeat to the run's reference host speed (the yardstick read beside it) and takes
    the median, of the speculative runs and of the case's own plain runs (timed beside them)."""
    if meas.estimator == "probed":
        return [_probed(i, m, meas.host_probe_reference_s) for i, m in enumerate(meas.cases)]
    best = meas.estimator == "best"
    groups: dict[tuple, list[float]] = {}
    for m in meas.cases:
        if best and m.baseline_repeats_tokens_per_s:
            groups.setdefault((m.temperature, m.batch_size, m.prompt_tokens), []).append(
                max(m.baseline_repeats_tokens_per_s))
    out = []
    for m in meas.cases:
        spec_rate, base_rate = m.tokens_per_s, m.baseline_tokens_per_s
        key = (m.temperature, m.batch_size, m.prompt_tokens)
        if best and m.repeats_tokens_per_s:
            spec_rate = max(m.repeats_tokens_per_s)
        if best and key in groups:
            base_rate = statistics.median(groups[key])
        out.append((Measured(spec_rate, m.tau, m.batch_tokens_per_s, m.repeats_tokens_per_s or None, m.verified),
                    Measured(base_rate, 1.0, base_rate, m.baseline_repeats_tokens_per_s or None)))
    return out


def _probed(i: int, m: MeasuredCase, reference: dict[str, float] | None) -> tuple[Measured, Measured]:
    probes = m.host_probe_s
    if reference is None or not probes or len(probes) != len(m.repeats_tokens_per_s):
        raise InputError("measurements", f"cases[{i}].host_probe_s", "the 'probed' estimator needs the host-speed "
                         "yardstick read beside every repeat (validate reads it on a CPU); allowed without it: "
                         "--estimator median, best")
    # a rate scales inversely to a time: taken while the yardstick read slower than the reference, it grows
    ref = reference["step"]
    spec = [v * p / ref for v, p in zip(m.repeats_tokens_per_s, probes, strict=True)]
    base = [v * p / ref for v, p in zip(m.baseline_repeats_tokens_per_s, probes, strict=True)]
    spec_rate, base_rate = statistics.median(spec), statistics.median(base)
    return (Measured(spec_rate, m.tau, m.batch_tokens_per_s, m.repeats_tokens_per_s, m.verified, probes),
            Measured(base_rate, 1.0, base_rate, m.baseline_repeats_tokens_per_s))


def error_pct(pred: float, meas: float) -> float:
    return 100.0 * (pred / meas - 1.0)


def repeat_spread_pct(values: list[float] | None) -> float | None:
    """(max - min) / median of a point's timed repeats, in percent: how far the machine's own speed moved
    between them, the scale an error is read against (None with fewer than two repeats)."""
    if not values or len(values) < 2:
        return None
    return 100.0 * (max(values) - min(values)) / statistics.median(values)


def speedup_repeats(spec: list[float] | None, base: list[float] | None) -> list[float] | None:
    """Each timed repeat's speed-up: its speculative run over the plain run measured beside it."""
    if not spec or not base or len(spec) != len(base):
        return None
    return [a / b for a, b in zip(spec, base, strict=True)]


def _median_or_none(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _abs_or_none(value: float | None) -> float | None:
    return None if value is None else abs(value)


def _group_summary(name: str, pts: list[ValidationPoint]) -> ErrorSummary:
    s = [abs(p.speedup_error_pct) for p in pts]
    t = [abs(p.tokens_per_s_error_pct) for p in pts]
    return ErrorSummary(
        group=name, points=len(pts), median_abs_speedup_error_pct=statistics.median(s),
        worst_abs_speedup_error_pct=max(s), median_abs_tokens_per_s_error_pct=statistics.median(t),
        worst_abs_tokens_per_s_error_pct=max(t),
        median_abs_tau_error_pct=_median_or_none([_abs_or_none(p.tau_error_pct) for p in pts]),
        median_abs_per_tau_error_pct=_median_or_none([_abs_or_none(p.per_tau_error_pct) for p in pts]),
        median_repeat_spread_tokens_per_s_pct=_median_or_none([p.measured_repeat_spread_pct for p in pts]),
        median_repeat_spread_speedup_pct=_median_or_none([p.measured_speedup_repeat_spread_pct for p in pts]))


def summarise(points: list[ValidationPoint]) -> list[ErrorSummary]:
    """The error table: every point in the calibrated range, then each regime, then the cross-predictions."""
    groups: dict[str, list[ValidationPoint]] = {"all (in calibrated range)": [p for p in points if not p.cross_prediction]}
    for p in points:
        groups.setdefault("cross-prediction: batch beyond calibration" if p.cross_prediction else p.regime, []).append(p)
    return [_group_summary(name, pts) for name, pts in groups.items() if pts]


def make_point(case: Case, new_tokens: int, spec_m: Measured, base_m: Measured, spec_p: Measured,
               base_p: Measured, median_m: tuple[float, float] | None = None) -> ValidationPoint:
    """Measured and predicted figures of one case, and their errors. `median_m`: the measured (speculative,
    plain) tokens/s under the 'median' estimator, kept beside whichever the figures use."""
    return ValidationPoint(
        label=case.label, regime=case.regime, temperature=case.temperature, batch_size=case.batch_size,
        prompt_tokens=case.prompt_tokens, new_tokens=new_tokens, policy=case.policy,
        gamma_max=case.gamma_max, rounds=case.rounds,
        measured_tokens_per_s=spec_m.tokens_per_s, predicted_tokens_per_s=spec_p.tokens_per_s,
        measured_baseline_tokens_per_s=base_m.tokens_per_s, predicted_baseline_tokens_per_s=base_p.tokens_per_s,
        measured_speedup=spec_m.tokens_per_s / base_m.tokens_per_s,
        predicted_speedup=spec_p.tokens_per_s / base_p.tokens_per_s,
        measured_tau=spec_m.tau, predicted_tau=spec_p.tau,
        tokens_per_s_error_pct=error_pct(spec_p.tokens_per_s, spec_m.tokens_per_s),
        speedup_error_pct=error_pct(spec_p.tokens_per_s / base_p.tokens_per_s,
                                    spec_m.tokens_per_s / base_m.tokens_per_s),
        baseline_error_pct=error_pct(base_p.tokens_per_s, base_m.tokens_per_s),
        tau_error_pct=error_pct(spec_p.tau, spec_m.tau),
        per_tau_error_pct=error_pct(spec_p.tokens_per_s / spec_p.tau, spec_m.tokens_per_s / spec_m.tau),
        cross_prediction=case.cross,
        measured_batch_tokens_per_s=spec_m.batch_tokens_per_s, predicted_batch_tokens_per_s=spec_p.batch_tokens_per_s,
        measured_repeats_tokens_per_s=spec_m.repeats, measured_baseline_repeats_tokens_per_s=base_m.repeats,
        measured_verified=spec_m.verified, predicted_verified=spec_p.verified,
        measured_repeat_spread_pct=repeat_spread_pct(spec_m.repeats),
        measured_speedup_repeat_spread_pct=repeat_spread_pct(speedup_repeats(spec_m.repeats, base_m.repeats)),
        measured_median_tokens_per_s=median_m[0] if median_m else None,
        measured_median_baseline_tokens_per_s=median_m[1] if median_m else None,
        measured_host_probe_s=spec_m.host_probes,
    )


def log_point(log: Callable[[str], object], pt: ValidationPoint) -> None:
    """One progress line per point: measured and predicted figures beside their errors."""
    log(f"  {pt.label:34s} measured {pt.measured_tokens_per_s:9.1f} tok/s x{pt.measured_speedup:.2f} "
        f"(tau {pt.measured_tau:.2f}) | predicted {pt.predicted_tokens_per_s:9.1f} x{pt.predicted_speedup:.2f} "
        f"(tau {pt.predicted_tau:.2f}) | err {pt.tokens_per_s_error_pct:+.1f}% / {pt.speedup_error_pct:+.1f}%"
        + (f" | verified {pt.measured_verified:.2f} / {pt.predicted_verified:.2f}"
           if pt.measured_verified is not None and pt.predicted_verified is not None else ""))
