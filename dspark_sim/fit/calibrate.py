"""Fit the cost model's free parameters to an engine profile (`dspark-sim calibrate`).

Why fit rather than trust datasheets: roofline predictions without calibration are commonly 30-50% off,
because kernels reach a device-, shape- and software-dependent fraction of peak and pay fixed costs.
We fit, by least squares on relative error, exactly the knobs the cost model has: effective HBM
(DRAM) bandwidth, effective on-chip bandwidth, effective FLOP/s, per-pass and per-layer overhead,
plus the engine's per-step overhead (from whole measured steps). A parameter that no sample is
sensitive to is reported as not identified and keeps its base value.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pydantic import ValidationError
from scipy.optimize import OptimizeResult, least_squares

from dspark_sim.config.errors import InputError, from_validation_error
from dspark_sim.config.io import read_json
from dspark_sim.config.measurements import (
    PROFILE_SCHEMA_VERSION,
    CalibrationReport,
    EngineProfile,
    ParameterFit,
    StepSample,
)
from dspark_sim.config.schema import HardwareProfile
from dspark_sim.fit.params import (
    I_BASE_SEQ,
    I_BASE_STEP,
    I_DRAFT_PASS,
    I_LAYER,
    I_MULTI_LAYER,
    I_MULTI_QUERY,
    I_MULTI_READS,
    I_OVERLAP,
    I_PASS,
    I_RAMP,
    I_STEP,
    I_STEP_SEQ,
    IDENTIFY_THRESHOLD,
    PARAMS,
    base_profile_for,
    final_params,
    free_params,
    hardware_from_params,
    start_params,
    to_params,
    unfitted_notes,
)
from dspark_sim.fit.pricing import (
    Samples,
    dspark_steps_without_scheduler,
    predict_samples,
    predict_steps,
    sample_shapes,
    sps_table,
    steps_of,
)


def fit_scheduler_overhead(profile: EngineProfile, hw: HardwareProfile, temperature: float | None
                           ) -> tuple[HardwareProfile, ParameterFit, list[dict[str, Any]]]:
    """per_scheduler_step_us: the median of what the profile's DSpark steps took beyond their fixed-gamma
    price (never below 0), with the DSpark steps' fit errors. Fitted after the main fit, which it does
    not change (the other parameters see fixed-gamma steps only)."""
    steps = steps_of(profile, temperature, "dspark")
    if not steps:
        fit = ParameterFit(name="per_scheduler_step_us", value=hw.overheads.per_scheduler_step_us, unit="us",
                           identified=False, note="not identified: the profile has no DSpark scheduler steps; "
                           "kept the base value")
        return hw, fit, []
    base = dspark_steps_without_scheduler(profile, hw, steps)
    measured = np.array([s.step_s for s in steps], dtype=float)
    us = max(float(np.median(measured - base)) * 1e6, 0.0)
    hw = hw.model_copy(update={"overheads": hw.overheads.model_copy(update={"per_scheduler_step_us": us})})
    err = 100.0 * ((base + us * 1e-6) / measured - 1.0)
    points: list[dict[str, Any]] = [
        {"role": "step-dspark", "batch_size": s.batch_size, "query_tokens": s.gamma + 1,
         "context_tokens": s.context_tokens, "measured_s": s.step_s,
         "predicted_s": float(s.step_s * (1 + e / 100)), "error_pct": float(e)} for s, e in zip(steps, err, strict=True)]
    return hw, ParameterFit(name="per_scheduler_step_us", value=us, unit="us", identified=True), points


@dataclass(frozen=True)
class _Problem:
    """The least-squares problem: the measured passes and steps, and which parameters move."""

    profile: EngineProfile
    base: HardwareProfile
    name: str
    samples: Samples
    steps: list[StepSample]
    step_measured: np.ndarray
    w_steps: float
    free: np.ndarray
    x_fixed: np.ndarray

    def full(self, zf: np.ndarray) -> np.ndarray:
        z = np.zeros(len(PARAMS))
        z[self.free] = zf
        return z

    def params_of(self, zf: np.ndarray) -> np.ndarray:
        return np.where(self.free, to_params(self.full(zf)), self.x_fixed)

    def hardware(self, x: np.ndarray) -> HardwareProfile:
        return hardware_from_params(self.base, x, self.name, self.profile.weight_dtype)

    def residuals(self, zf: np.ndarray) -> np.ndarray:
        hw = self.hardware(self.params_of(zf))
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
            r = np.log(predict_samples(self.samples, hw) / self.samples.measured)
            if self.steps:
                r = np.concatenate([r, self.w_steps * np.log(predict_steps(self.profile, hw, self.steps)
                                                              / self.step_measured)])
        return np.nan_to_num(r, nan=50.0, posinf=50.0, neginf=-50.0)


def _best_fit(problem: _Problem, x0: np.ndarray) -> OptimizeResult:
    """A roofline's max() gives zero gradient to whichever term does not bind, so one start can stall
    in the wrong regime: start from a spread of bandwidth/FLOP scales and overhead shares, keep the best."""
    measured = problem.samples.measured
    layers = max(problem.profile.target.num_layers, 1)
    floor_us = float(np.min(measured)) * 1e6
    step_floor_us = float(np.min(problem.step_measured)) * 1e6 if problem.steps else x0[I_STEP]
    best = None
    # overlap starts near each end: mostly overlapped (GPU-like) and mostly serial (CPU-like)
    for scale in (0.01, 0.1, 1.0, 10.0, 100.0):
        for share in (0.05, 0.5, 0.9):
            for overlap_logit in (3.0, -3.0):
                start = np.log([x0[0] * scale, x0[1] * scale, x0[2] * scale,
                                max(share * floor_us / 2, 0.1), max(share * floor_us / (2 * layers), 0.01),
                                max(0.3 * step_floor_us, 0.1), max(0.3 * step_floor_us, 0.1), 1.0, 1.5,
                                max(0.1 * share * floor_us / layers, 0.01), max(0.1 * share * floor_us / layers, 0.01),
                                max(0.05 * step_floor_us, 0.1), 2.0, max(0.02 * step_floor_us, 0.1),
                                max(0.01 * step_floor_us, 0.1)])
                start[I_OVERLAP] = overlap_logit
                fit = least_squares(problem.residuals, start[problem.free], method="trf", x_scale="jac",
                                    max_nfev=400)
                if best is None or fit.cost < best.cost:
                    best = fit
    assert best is not None  # the loops above always run
    return best


def _identified(problem: _Problem, fit: OptimizeResult) -> tuple[np.ndarray, np.ndarray]:
    """(sensitivity, identified) of each parameter: the rms change of the log-predictions when it
    doubles (the overlap: from 0 to 1), and whether the profile's samples tell it apart."""
    free, steps, samples = problem.free, problem.steps, problem.profile.samples
    sens = np.zeros(len(PARAMS))
    sens[free] = np.sqrt(np.mean((fit.jac * np.log(2.0)) ** 2, axis=0))
    n_pass = len(problem.samples.measured)

    def log_preds(z: np.ndarray) -> np.ndarray:
        r = problem.residuals(z[free])
        return np.concatenate([r[:n_pass], r[n_pass:] / problem.w_steps])

    lo, hi = problem.full(fit.x), problem.full(fit.x)
    lo[I_OVERLAP], hi[I_OVERLAP] = -30.0, 30.0
    sens[I_OVERLAP] = float(np.sqrt(np.mean((log_preds(hi) - log_preds(lo)) ** 2)))
    identified = sens >= IDENTIFY_THRESHOLD
    # fixed costs may rightly fit to ~0, where doubling them changes nothing: they are identified
    # whenever the samples that carry them exist
    identified[I_PASS] = identified[I_LAYER] = True
    identified[I_STEP] = any(s.gamma > 0 for s in steps)
    identified[I_BASE_STEP] = any(s.gamma == 0 for s in steps)
    identified[I_MULTI_LAYER] = any(s.batch_size * s.query_tokens > 1 for s in samples) and free[I_MULTI_LAYER]
    identified[I_MULTI_QUERY] = any(s.query_tokens > 1 for s in samples) and free[I_MULTI_QUERY]
    identified[I_DRAFT_PASS] = len({s.gamma for s in steps if s.gamma > 0}) >= 2  # tells it from per_step_us
    identified[I_STEP_SEQ] = len({s.batch_size for s in steps if s.gamma > 0}) >= 2  # likewise, by batch size
    identified[I_BASE_SEQ] = len({s.batch_size for s in steps if s.gamma == 0}) >= 2
    identified[I_MULTI_READS] &= bool(free[I_MULTI_READS])
    return sens, identified


def _parameter_fits(problem: _Problem, x_final: np.ndarray, identified: np.ndarray,
                    sens: np.ndarray) -> list[ParameterFit]:
    """One ParameterFit per entry of PARAMS, with why any was not identified."""
    notes = unfitted_notes(problem.profile.device.kind == "cuda")
    has_samples = {I_STEP: bool(identified[I_STEP]), I_BASE_STEP: bool(identified[I_BASE_STEP])}
    params = []
    for i, ((pname, unit), val, ok, s) in enumerate(zip(PARAMS, x_final, identified, sens, strict=True)):
        if not problem.free[i]:
            params.append(ParameterFit(name=pname, value=float(val), unit=unit, identified=False, note=notes[i]))
            continue
        note = "" if ok else (
            f"not identified: {notes[i]}" if i in has_samples and not has_samples[i] else
            f"not identified: {notes[i]}; kept 0" if i in (I_DRAFT_PASS, I_RAMP, I_STEP_SEQ, I_BASE_SEQ) else
            f"not identified: no profiled shape depends on it ({'0 -> 1' if i == I_OVERLAP else 'doubling it'} moves "
            f"predictions {100 * s:.2f}% rms); "
            f"kept the base value"
        )
        params.append(ParameterFit(name=pname, value=float(val), unit=unit, identified=bool(ok), note=note))
    return params


def _points(profile: EngineProfile, pred: np.ndarray, err: np.ndarray, steps: list[StepSample],
            step_err: np.ndarray) -> list[dict[str, Any]]:
    """Each profiled pass and step, measured beside predicted."""
    points: list[dict[str, Any]] = [
        {
            "role": s.role, "batch_size": s.batch_size, "query_tokens": s.query_tokens,
            "context_tokens": s.context_tokens, "measured_s": s.median_s, "predicted_s": float(p),
            "error_pct": float(e),
        }
        for s, p, e in zip(profile.samples, pred, err, strict=True)
    ]
    points += [
        {
            "role": "step", "batch_size": s.batch_size, "query_tokens": s.gamma + 1, "context_tokens": s.context_tokens,
            "measured_s": s.step_s, "predicted_s": float(s.step_s * (1 + e / 100)), "error_pct": float(e),
        }
        for s, e in zip(steps, step_err, strict=True)
    ]
    return points


def calibrate(profile: EngineProfile, name: str | None = None, base: HardwareProfile | None = None, *,
              temperature: float | None = None, step_weight: float = 2.0) -> tuple[HardwareProfile, CalibrationReport]:
    """Least-squares fit of the cost model to the profile; returns the calibrated profile and a report.

    One joint fit over the isolated pass timings and the whole engine steps (draft + verify + what
    lies outside the passes): steps are what a prediction of tokens/s is made of, so they weigh
    `step_weight` times as much in total as the passes. `temperature` picks the steps measured at
    that temperature (sampling costs more per step than greedy decoding).
    """
    if not profile.samples:
        raise InputError("profile", "samples", "no samples: run `dspark-sim profile` first")
    base = base or base_profile_for(profile)
    samples = sample_shapes(profile)
    measured = samples.measured
    if np.any(measured <= 0):
        raise InputError("profile", "samples", "non-positive timings")
    steps = steps_of(profile, temperature)
    step_measured = np.array([s.step_s for s in steps], dtype=float)
    free, x_fixed = free_params(profile.device.kind == "cuda")
    problem = _Problem(profile, base, name or base.name, samples, steps, step_measured,
                       float(step_weight * np.sqrt(len(measured) / max(len(steps), 1))), free, x_fixed)
    x0 = start_params(base, profile.weight_dtype)
    fit = _best_fit(problem, x0)
    sens, identified = _identified(problem, fit)
    x_final = final_params(problem.params_of(fit.x), x0, identified)
    hw = problem.hardware(x_final)
    if not identified[I_BASE_STEP]:
        hw = hw.model_copy(update={"overheads": hw.overheads.model_copy(update={"per_baseline_step_us": None})})
    pred = predict_samples(samples, hw)
    err = 100.0 * (pred / measured - 1.0)
    step_err = 100.0 * (predict_steps(profile, hw, steps) / step_measured - 1.0) if steps else np.zeros(0)
    params = _parameter_fits(problem, x_final, identified, sens)
    points = _points(profile, pred, err, steps, step_err)
    hw, sched_fit, sched_points = fit_scheduler_overhead(profile, hw, temperature)
    params.append(sched_fit)
    points += sched_points
    all_err = np.abs(np.concatenate([err, step_err, [p["error_pct"] for p in sched_points]]))
    report = CalibrationReport(
        profile_device=profile.device.name,
        engine_version=profile.engine_version,
        parameters=params,
        median_abs_error_pct=float(np.median(all_err)),
        max_abs_error_pct=float(np.max(all_err)),
        points=points,
        sps_table=sps_table(profile, hw),
    )
    return hw, report


def profile_yaml(hw: HardwareProfile, report: CalibrationReport, source: object) -> str:
    """The calibrated profile as YAML, with where it came from and how well it fits in comments."""
    header = [
        f"# Calibrated by `dspark-sim calibrate {source}` from an engine profile measured on",
        f"# {report.profile_device} (engine {report.engine_version}).",
        "# Bandwidths and FLOP/s below are the fitted *effective* figures (efficiencies are 1.0), not",
        f"# datasheet values. Fit: median |error| {report.median_abs_error_pct:.1f}%, "
        f"worst {report.max_abs_error_pct:.1f}% over {len(report.points)} pass shapes.",
    ]
    for p in report.parameters:
        status = "fitted" if p.identified else "NOT IDENTIFIED"
        header.append(f"#   {p.name}: {p.value:.4g} {p.unit} ({status}){' - ' + p.note if p.note else ''}")
    body = yaml.safe_dump(hw.model_dump(mode="json", exclude_none=True), sort_keys=False)
    return "\n".join(header) + "\n" + body


def check_profile_matches(profile: EngineProfile, *, device_kind: str | None = None,
                          engine_version: str | None = None, cuda_graphs: bool | None = None,
                          source: str = "profile") -> None:
    """Refuse a profile made on another device kind, by another engine version, or (on CUDA, when
    `cuda_graphs` is given) in the other pass mode: graph replays and eager calls differ several-fold."""
    if device_kind and profile.device.kind != device_kind:
        raise InputError(source, "device.kind",
                         f"profile was measured on {profile.device.kind!r}, this run is on {device_kind!r}")
    if engine_version and profile.engine_version != engine_version:
        raise InputError(source, "engine_version",
                         f"profile is from engine {profile.engine_version!r}, this engine is {engine_version!r}; re-run `dspark-sim profile`")
    if cuda_graphs is not None and profile.device.kind == "cuda" and profile.cuda_graphs is not cuda_graphs:
        have = {True: "CUDA-graph replays", False: "eager calls", None: "an unrecorded mode"}[profile.cuda_graphs]
        flag = "--cuda-graphs" if cuda_graphs else "--no-cuda-graphs"
        raise InputError(source, "cuda_graphs",
                         f"profile timed {have}; this run needs {'CUDA-graph replays' if cuda_graphs else 'eager calls'}"
                         f": re-run `dspark-sim profile --device cuda {flag}`")


def load_profile(path: str | Path) -> EngineProfile:
    """Read a profile JSON; a missing, malformed or incomplete file is one InputError."""
    p = Path(path)
    raw = read_json(p, "profile", "profile file not found (make one with `dspark-sim profile`)")
    if not isinstance(raw, dict) or raw.get("kind") != "engine-profile":
        raise InputError(str(p), "kind", "expected an engine profile (kind: engine-profile)")
    if raw.get("schema_version") != PROFILE_SCHEMA_VERSION:
        raise InputError(str(p), "schema_version",
                         f"profile format {raw.get('schema_version')!r}, this version reads {PROFILE_SCHEMA_VERSION}")
    try:
        doc = EngineProfile.model_validate(raw)
    except ValidationError as exc:
        raise from_validation_error(str(p), exc, data=raw) from None
    roles = {s.role for s in doc.samples}
    if "target" not in roles:
        raise InputError(str(p), "samples", "incomplete profile: no target pass samples")
    return doc
