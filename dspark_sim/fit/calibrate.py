"""Fit the cost model's free parameters to an engine profile (`dspark-sim calibrate`).

Why fit rather than trust datasheets: uncalibrated roofline tools are 30-50% off (FACTS.md section 4)
because kernels reach a device-, shape- and software-dependent fraction of peak and pay fixed costs.
We fit, by least squares on relative error, exactly the knobs the cost model has: effective HBM
(DRAM) bandwidth, effective on-chip bandwidth, effective FLOP/s, per-pass and per-layer overhead,
plus the engine's per-step overhead (from whole measured steps). A parameter that no sample is
sensitive to is reported as not identified and keeps its base value.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares

from dspark_sim.config.errors import InputError
from dspark_sim.config.measurements import CalibrationReport, EngineProfile, ParameterFit
from dspark_sim.config.schema import DrafterSpec, Efficiency, HardwareProfile, ModelSpec, Overheads
from dspark_sim.core.costmodel import BatchShape, StepCoster, forward_cost

#: A parameter is identified when doubling it moves the predictions by at least this much (rms, log).
_IDENTIFY_THRESHOLD = 0.02

PARAMS = (
    ("memory_bandwidth_gbps", "GB/s"),
    ("onchip_bandwidth_gbps", "GB/s"),
    ("tflops", "TFLOP/s"),
    ("per_pass_us", "us"),
    ("per_layer_us", "us"),
    ("per_step_us", "us"),
    ("per_baseline_step_us", "us"),
    ("compute_memory_overlap", "fraction"),
    ("multi_token_weight_reads", "x"),
    ("per_layer_multi_token_us", "us"),
    ("per_layer_multi_query_us", "us"),
    ("per_draft_pass_us", "us"),
    ("multi_token_ramp_tokens", "tokens"),
    ("per_step_sequence_us", "us"),
    ("per_baseline_sequence_us", "us"),
)
_OVERLAP = 7  # index of the one parameter fitted as a fraction (logistic) rather than in log space
_MULTI_READS, _MULTI_LAYER, _MULTI_QUERY, _DRAFT_PASS, _RAMP, _STEP_SEQ, _BASE_SEQ = 8, 9, 10, 11, 12, 13, 14


@dataclass(frozen=True)
class _Samples:
    """Profile samples grouped by role, as arrays for one vectorised cost evaluation per role."""

    roles: dict[tuple[str, str], tuple[ModelSpec, BatchShape, np.ndarray]]  # (role, kv dtype) -> (arch, shapes, index)
    measured: np.ndarray


def _shapes(profile: EngineProfile) -> _Samples:
    groups: dict[tuple[str, str], list[int]] = {}
    for i, s in enumerate(profile.samples):  # a profile may time several KV-cache dtypes: each priced as itself
        groups.setdefault((s.role, s.kv_dtype), []).append(i)
    roles = {}
    for (role, kv_dtype), idx in groups.items():
        arch = profile.target if role == "target" else profile.draft
        if arch is None:
            raise InputError("profile", "draft", "samples for role 'draft' but no draft architecture")
        ss = [profile.samples[i] for i in idx]
        b = np.array([s.batch_size for s in ss], dtype=float)
        q = np.array([s.query_tokens for s in ss], dtype=float)
        att = np.array([s.attended_tokens for s in ss], dtype=float)
        arch = arch.model_copy(update={"kv_dtype": kv_dtype if kv_dtype in ("fp32", "bf16", "fp16", "int8") else arch.kv_dtype})
        # the engine attends over a static cache bucket: every query sees `attended` keys
        shape = BatchShape(b, b * q, b * att, b * att, b * q * att, b * q * att)
        roles[(role, kv_dtype)] = (arch, shape, np.array(idx))
    measured = np.array([s.median_s for s in profile.samples], dtype=float)
    return _Samples(roles, measured)


def hardware_from_params(base: HardwareProfile, x: np.ndarray, name: str, weight_dtype: str,
                         per_step_us: float | None = None) -> HardwareProfile:
    """A profile whose datasheet fields hold the fitted effective values (efficiencies 1.0).

    x = (bandwidth GB/s, on-chip GB/s, TFLOP/s, per-pass us, per-layer us[, per-step us, per-baseline-step us
    [, compute/memory overlap[, multi-token weight reads[, per-layer multi-token us]]]]).
    """
    vals = [float(v) for v in x]
    bw, onchip_bw, tflops, per_pass, per_layer = vals[:5]
    step = vals[5] if len(vals) > 5 else (per_step_us if per_step_us is not None else base.overheads.per_step_us)
    base_step = vals[6] if len(vals) > 6 else None
    overlap = min(max(vals[7], 0.0), 1.0) if len(vals) > 7 else base.compute_memory_overlap
    multi_reads = vals[8] if len(vals) > 8 else base.multi_token_weight_reads
    multi_layer = vals[9] if len(vals) > 9 else base.overheads.per_layer_multi_token_us
    multi_query = vals[10] if len(vals) > 10 else base.overheads.per_layer_multi_query_us
    draft_pass = vals[11] if len(vals) > 11 else base.overheads.per_draft_pass_us
    ramp = vals[12] if len(vals) > 12 else base.multi_token_ramp_tokens
    step_seq = vals[13] if len(vals) > 13 else base.overheads.per_step_sequence_us
    base_seq = vals[14] if len(vals) > 14 else base.overheads.per_baseline_sequence_us
    return base.model_copy(
        update={
            "name": name,
            "memory_bandwidth_gbps": bw,
            "onchip_bandwidth_gbps": onchip_bw,
            "compute_memory_overlap": overlap,
            "multi_token_weight_reads": multi_reads,
            "multi_token_ramp_tokens": ramp,
            "peak_tflops": {**{k: v for k, v in base.peak_tflops.items()}, weight_dtype: tflops},
            "efficiency": Efficiency(memory_bandwidth=1.0, compute=1.0, onchip_bandwidth=1.0,
                                     interconnect=base.efficiency.interconnect),
            "overheads": Overheads(per_pass_us=per_pass, per_layer_us=per_layer, per_step_us=step,
                                   per_baseline_step_us=base_step, per_layer_multi_token_us=multi_layer,
                                   per_layer_multi_query_us=multi_query, per_draft_pass_us=draft_pass,
                                   per_step_sequence_us=step_seq, per_baseline_sequence_us=base_seq),
        }
    )


def predict_samples(samples: _Samples, hw: HardwareProfile) -> np.ndarray:
    out = np.zeros_like(samples.measured)
    for arch, shape, idx in samples.roles.values():
        out[idx] = np.asarray(forward_cost(arch, hw, shape, 1, include_embedding=True).time_s)
    return out


def base_profile_for(profile: EngineProfile) -> HardwareProfile:
    """Starting point: generic figures of the device kind, with its measured memory and cache sizes."""
    d = profile.device
    dtype = profile.weight_dtype
    if d.kind == "cuda":
        start = dict(bw=3000.0, onchip=10000.0, tflops=300.0)
    else:
        start = dict(bw=20.0, onchip=200.0, tflops=0.2)
    return HardwareProfile(
        name=f"calibrated-{d.kind}",
        description=f"calibrated on {d.name}",
        kind="gpu" if d.kind == "cuda" else "cpu",
        memory_capacity_gb=max(d.memory_gb, 1e-3),
        memory_bandwidth_gbps=start["bw"],
        onchip_capacity_mb=d.onchip_mb,
        onchip_bandwidth_gbps=start["onchip"],
        peak_tflops={dtype: start["tflops"]},
    )


def _steps_of(profile: EngineProfile, temperature: float | None, policy: str = "fixed") -> list:
    return [s for s in profile.steps
            if (temperature is None or s.temperature == temperature) and s.policy == policy]


def dspark_steps_without_scheduler(profile: EngineProfile, hw: HardwareProfile, steps: list) -> np.ndarray:
    """DSpark steps priced as fixed-gamma steps would be: the draft of `gamma` tokens, the verify pass
    at each step's chosen width (averaged over the recorded widths), the per-step overhead. What the
    measured step takes beyond this is the scheduler's own decision time."""
    out = np.zeros(len(steps))
    for i, s in enumerate(steps):
        coster = engine_coster(profile, hw, s.attended_tokens)
        counts = s.verify_counts or {s.gamma: 1}
        k = np.array(sorted(counts), dtype=float)
        w = np.array([counts[int(j)] for j in k], dtype=float)
        b, c = float(s.batch_size), float(s.context_tokens)
        draft = float(np.asarray(coster.draft(b, float(s.gamma), c).time_s))
        verify = np.asarray(coster.verify(np.full_like(k, b), k, np.full_like(k, c)).time_s, dtype=float)
        out[i] = draft + float((verify * w).sum() / w.sum()) + coster.step_overhead_s()
    return out


def fit_scheduler_overhead(profile: EngineProfile, hw: HardwareProfile, temperature: float | None
                           ) -> tuple[HardwareProfile, ParameterFit, list[dict]]:
    """per_scheduler_step_us: the median of what the profile's DSpark steps took beyond their fixed-gamma
    price (never below 0), with the DSpark steps' fit errors. Fitted after the main fit, which it does
    not change (the other parameters see fixed-gamma steps only)."""
    steps = _steps_of(profile, temperature, "dspark")
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
    points = [{"role": "step-dspark", "batch_size": s.batch_size, "query_tokens": s.gamma + 1,
               "context_tokens": s.context_tokens, "measured_s": s.step_s,
               "predicted_s": float(s.step_s * (1 + e / 100)), "error_pct": float(e)} for s, e in zip(steps, err, strict=True)]
    return hw, ParameterFit(name="per_scheduler_step_us", value=us, unit="us", identified=True), points


def predict_steps(profile: EngineProfile, hw: HardwareProfile, steps: list) -> np.ndarray:
    """Whole engine steps as the simulator prices them: draft + verify + per-step overhead, or a plain
    decode pass + the plain loop's overhead; vectorised per static-cache length."""
    out = np.zeros(len(steps))
    groups: dict[int, list[int]] = {}
    for i, s in enumerate(steps):
        groups.setdefault(s.attended_tokens, []).append(i)
    for attended, idx in groups.items():
        coster = engine_coster(profile, hw, attended)
        b = np.array([steps[i].batch_size for i in idx], dtype=float)
        g = np.array([steps[i].gamma for i in idx], dtype=float)
        c = np.array([steps[i].context_tokens for i in idx], dtype=float)
        spec = (np.asarray(coster.draft(b, g, c).time_s) + np.asarray(coster.verify(b, g, c).time_s)
                + coster.step_overhead_s())
        plain = np.asarray(coster.baseline(b, c).time_s) + coster.baseline_step_overhead_s(b)
        out[idx] = np.where(g == 0, plain, spec)
    return out


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
    name = name or base.name
    samples = _shapes(profile)
    measured = samples.measured
    if np.any(measured <= 0):
        raise InputError("profile", "samples", "non-positive timings")
    steps = _steps_of(profile, temperature)
    step_measured = np.array([s.step_s for s in steps], dtype=float)
    has_spec = any(s.gamma > 0 for s in steps)
    has_plain = any(s.gamma == 0 for s in steps)
    w_steps = step_weight * np.sqrt(len(measured) / max(len(steps), 1))
    dtype = profile.weight_dtype
    x0 = np.array([
        base.memory_bandwidth_gbps, base.onchip_bandwidth_gbps, base.matmul_tflops(dtype),
        base.overheads.per_pass_us, base.overheads.per_layer_us, base.overheads.per_step_us,
        base.overheads.per_step_us, base.compute_memory_overlap, base.multi_token_weight_reads,
        base.overheads.per_layer_multi_token_us, base.overheads.per_layer_multi_query_us,
        base.overheads.per_draft_pass_us, max(base.multi_token_ramp_tokens, 1.0), base.overheads.per_step_sequence_us,
        base.overheads.per_baseline_sequence_us,
    ])

    def to_params(z: np.ndarray) -> np.ndarray:
        """Fit coordinates -> parameters: logs for the rates and overheads, a logit for the overlap."""
        z = np.clip(z, -30.0, 30.0)
        x = np.exp(z)
        x[_OVERLAP] = 1.0 / (1.0 + np.exp(-z[_OVERLAP]))
        return x

    # what a pass of several tokens costs beyond one: a CPU GEMM packs (re-reads) the weights; a GPU
    # switches to tiled GEMM kernels with a set-up per matmul (per layer), streaming the weights once
    gpu = profile.device.kind == "cuda"
    free = np.ones(len(PARAMS), dtype=bool)
    # the ramp of that set-up over the first few tokens: a GPU's small-M GEMM kernels (on this CPU, fitted in
    # session 10, it moved three runs' speed-up medians +1.0, -0.5 and +3.3 points: not fitted there)
    free[[_MULTI_READS] if gpu else [_MULTI_LAYER, _MULTI_QUERY, _RAMP]] = False
    # a host cost per sequence of a speculative step: on a GPU the engine's step runs as captured CUDA graphs
    # (cudagraphs.StepGraphs), and fitted on its batch <= 4 steps it put the batch-64 cross-prediction 22-31%
    # slow (validation/README.md, session 14): not fitted there
    # likewise a plain step's cost per sequence (its next token taken): fitted on a CPU, where sampling a batch-16
    # step's rows took 0.3 ms more than one row's (validation/README.md, session 15); a GPU's plain loop is one graph
    free[[_STEP_SEQ, _BASE_SEQ]] = not gpu
    x_fixed = np.where(np.arange(len(PARAMS)) == _MULTI_READS, 1.0, 0.0)

    def full(zf: np.ndarray) -> np.ndarray:
        z = np.zeros(len(PARAMS))
        z[free] = zf
        return z

    def params_of(zf: np.ndarray) -> np.ndarray:
        return np.where(free, to_params(full(zf)), x_fixed)

    def residuals(zf: np.ndarray) -> np.ndarray:
        x = params_of(zf)
        hw = hardware_from_params(base, x, name, dtype)
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
            r = np.log(predict_samples(samples, hw) / measured)
            if steps:
                r = np.concatenate([r, w_steps * np.log(predict_steps(profile, hw, steps) / step_measured)])
        return np.nan_to_num(r, nan=50.0, posinf=50.0, neginf=-50.0)

    # A roofline's max() gives zero gradient to whichever term does not bind, so one start can stall
    # in the wrong regime: start from a spread of bandwidth/FLOP scales and overhead shares, keep the best.
    x0[:_OVERLAP] = np.maximum(x0[:_OVERLAP], [1e-3, 1e-3, 1e-6, 0.1, 0.01, 0.1, 0.1])
    layers = max(profile.target.num_layers, 1)
    floor_us = float(np.min(measured)) * 1e6
    step_floor_us = float(np.min(step_measured)) * 1e6 if steps else x0[5]
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
                start[_OVERLAP] = overlap_logit
                fit = least_squares(residuals, start[free], method="trf", x_scale="jac", max_nfev=400)
                if best is None or fit.cost < best.cost:
                    best = fit
    fit = best
    x = params_of(fit.x)
    # sensitivity: rms change of log-predictions when a parameter doubles (the overlap: from 0 to 1)
    sens = np.zeros(len(PARAMS))
    sens[free] = np.sqrt(np.mean((fit.jac * np.log(2.0)) ** 2, axis=0))
    n_pass = len(measured)

    def log_preds(z: np.ndarray) -> np.ndarray:
        r = residuals(z[free])
        return np.concatenate([r[:n_pass], r[n_pass:] / w_steps])

    lo, hi = full(fit.x), full(fit.x)
    lo[_OVERLAP], hi[_OVERLAP] = -30.0, 30.0
    sens[_OVERLAP] = float(np.sqrt(np.mean((log_preds(hi) - log_preds(lo)) ** 2)))
    identified = sens >= _IDENTIFY_THRESHOLD
    # fixed costs may rightly fit to ~0, where doubling them changes nothing: they are identified
    # whenever the samples that carry them exist
    identified[3] = identified[4] = True
    identified[5] = has_spec
    identified[6] = has_plain
    has_multi = any(s.batch_size * s.query_tokens > 1 for s in profile.samples)
    identified[_MULTI_LAYER] = has_multi and free[_MULTI_LAYER]
    has_multi_query = any(s.query_tokens > 1 for s in profile.samples)
    identified[_MULTI_QUERY] = has_multi_query and free[_MULTI_QUERY]
    identified[_DRAFT_PASS] = len({s.gamma for s in steps if s.gamma > 0}) >= 2  # tells it from per_step_us
    identified[_STEP_SEQ] = len({s.batch_size for s in steps if s.gamma > 0}) >= 2  # likewise, by batch size
    identified[_BASE_SEQ] = len({s.batch_size for s in steps if s.gamma == 0}) >= 2
    identified[_MULTI_READS] &= bool(free[_MULTI_READS])
    fallback = x0.copy()
    fallback[6] = x[5] if identified[5] else x0[6]
    fallback[_MULTI_READS], fallback[_MULTI_LAYER] = 1.0, 0.0  # a multi-token pass costs what a 1-token one does
    fallback[[_MULTI_QUERY, _DRAFT_PASS, _RAMP, _STEP_SEQ, _BASE_SEQ]] = 0.0
    x_final = np.where(identified, x, fallback)
    hw = hardware_from_params(base, x_final, name, dtype)
    if not identified[6]:
        hw = hw.model_copy(update={"overheads": hw.overheads.model_copy(update={"per_baseline_step_us": None})})
    pred = predict_samples(samples, hw)
    err = 100.0 * (pred / measured - 1.0)
    step_err = 100.0 * (predict_steps(profile, hw, steps) / step_measured - 1.0) if steps else np.zeros(0)

    params = []
    notes = {5: "the profile has no speculative step samples", 6: "no plain-loop step samples; per_step_us applies",
             _MULTI_READS: "not fitted on a GPU (its GEMMs stream the weights once); kept 1",
             _MULTI_LAYER: "not fitted on a CPU (its GEMMs re-read the weights: multi_token_weight_reads); kept 0",
             _MULTI_QUERY: "not fitted on a CPU (one attention path for any query count); kept 0",
             _DRAFT_PASS: "the profile has speculative steps of fewer than two gammas",
             _STEP_SEQ: "the profile has speculative steps of fewer than two batch sizes",
             _BASE_SEQ: "the profile has plain-loop steps of fewer than two batch sizes",
             _RAMP: "the multi-token cost reaches its full value from 2 tokens"}
    if not gpu:
        notes[_RAMP] = "not fitted on a CPU (its weight re-reads start at 2 tokens); kept 0"
    else:
        notes[_STEP_SEQ] = "not fitted on a GPU (the engine's steps run as captured CUDA graphs); kept 0"
        notes[_BASE_SEQ] = "not fitted on a GPU (the engine's plain loop runs as captured CUDA graphs); kept 0"
    for i, ((pname, unit), val, ok, s) in enumerate(zip(PARAMS, x_final, identified, sens, strict=True)):
        if not free[i]:
            params.append(ParameterFit(name=pname, value=float(val), unit=unit, identified=False, note=notes[i]))
            continue
        note = "" if ok else (
            f"not identified: {notes[i]}" if i in (5, 6) and not (has_spec if i == 5 else has_plain) else
            f"not identified: {notes[i]}; kept 0" if i in (_DRAFT_PASS, _RAMP, _STEP_SEQ, _BASE_SEQ) else
            f"not identified: no profiled shape depends on it ({'0 -> 1' if i == _OVERLAP else 'doubling it'} moves "
            f"predictions {100 * s:.2f}% rms); "
            f"kept the base value"
        )
        params.append(ParameterFit(name=pname, value=float(val), unit=unit, identified=bool(ok), note=note))
    points = [
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


def engine_coster(profile: EngineProfile, hw: HardwareProfile, attended_tokens: int | None) -> StepCoster:
    """How the bundled engine runs: a draft model whose first pass digests 2 tokens, verify blocks
    padded to the batch's longest, attention over the whole static cache."""
    drafter = drafter_for_engine(profile.draft)
    if drafter.kind == "draft_model":
        drafter = drafter.model_copy(update={"first_pass_tokens": 2.0})
    return StepCoster(profile.target, drafter, hw, 1, pad_verify=True, static_kv_tokens=attended_tokens)


def sps_table(profile: EngineProfile, hw: HardwareProfile) -> dict[int, float]:
    """Verify steps per second at B tokens per verify pass, from the calibrated model.

    Each budget B is priced as the profiled target pass with B sequences of one token (at the median
    profiled context), plus the per-step overhead: the curve DSpark's prefix scheduler searches over.
    """
    target = [s for s in profile.samples if s.role == "target"]
    if not target:
        return {}
    attended = float(np.median([s.attended_tokens for s in target]))
    max_tokens = max(s.batch_size * s.query_tokens for s in target)
    budgets = np.unique(np.round(np.geomspace(1, max_tokens, num=min(max_tokens, 24))).astype(int))
    b = budgets.astype(float)
    shape = BatchShape(b, b, b * attended, b * attended, b * attended, b * attended)
    t = np.asarray(forward_cost(profile.target, hw, shape, 1).time_s) + hw.overheads.per_step_us * 1e-6
    return {int(k): float(1.0 / v) for k, v in zip(budgets, t, strict=True)}


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


def drafter_for_engine(draft: ModelSpec | None) -> DrafterSpec:
    """The engine's autoregressive draft model as a DrafterSpec for the simulator."""
    if draft is None:
        return DrafterSpec(kind="none")
    return DrafterSpec(kind="draft_model", model=draft)


def load_profile(path) -> EngineProfile:
    """Read a profile JSON; a missing, malformed or incomplete file is one InputError."""
    from pathlib import Path

    from pydantic import ValidationError

    from dspark_sim.config.errors import from_validation_error
    from dspark_sim.config.io import read_json
    from dspark_sim.config.measurements import PROFILE_SCHEMA_VERSION

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


def profile_yaml(hw: HardwareProfile, report: CalibrationReport, source) -> str:
    """The calibrated profile as YAML, with where it came from and how well it fits in comments."""
    import yaml

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


# ------------------------------------------------------------------------------------------------
# Communication: interconnect latency and bandwidth from measured all-reduces (tensor parallelism)
# ------------------------------------------------------------------------------------------------


def allreduce_time_s(world_size, message_bytes, latency_us: float, bandwidth_gbps: float,
                     efficiency: float = 1.0, launch_us: float = 0.0) -> np.ndarray:
    """One ring all-reduce as `costmodel.forward_cost` prices it: 2 (w - 1) hops of latency
    + 2 (w - 1) / w x bytes over the link bandwidth + a fixed cost per collective (`launch_us`:
    kernel launch and rank synchronisation, whatever the rank count; nothing on one rank)."""
    w = np.asarray(world_size, dtype=float)
    b = np.asarray(message_bytes, dtype=float)
    link = max(bandwidth_gbps, 1e-9) * 1e9 * efficiency
    return (2.0 * (w - 1.0) * latency_us * 1e-6 + 2.0 * (w - 1.0) / w * b / link
            + np.where(w > 1.0, launch_us * 1e-6, 0.0))


@dataclass(frozen=True)
class InterconnectFit:
    """Effective interconnect figures fitted to all-reduce timings (efficiency 1.0 implied)."""

    latency_us: float
    bandwidth_gbps: float
    latency_identified: bool
    bandwidth_identified: bool
    median_abs_error_pct: float
    max_abs_error_pct: float
    points: list[dict]
    notes: list[str]
    launch_us: float = 0.0  # fixed cost per collective (HardwareProfile.collective_launch_us)
    launch_identified: bool = False

    def to_dict(self) -> dict:
        return {
            "launch_us": self.launch_us, "latency_us": self.latency_us, "bandwidth_gbps": self.bandwidth_gbps,
            "launch_identified": self.launch_identified,
            "latency_identified": self.latency_identified, "bandwidth_identified": self.bandwidth_identified,
            "median_abs_error_pct": self.median_abs_error_pct, "max_abs_error_pct": self.max_abs_error_pct,
            "points": self.points, "notes": self.notes,
        }


def _field(sample, name: str):
    return sample[name] if isinstance(sample, dict) else getattr(sample, name)


def fit_interconnect(samples, base: HardwareProfile | None = None) -> InterconnectFit:
    """Least squares on relative error of `allreduce_time_s` to measured all-reduces.

    `samples`: all-reduce samples (objects or dicts with world_size, message_bytes, median_s), from
    one or several world sizes. The model is linear in (launch, per-hop latency, 1 / bandwidth), so
    the fit is a bounded (non-negative) linear least-squares solve, weighted by 1 / measured (relative
    error, as `calibrate` fits passes). A parameter no sample is sensitive to (doubling it moves the
    predictions less than 2% rms) is not identified and keeps `base`'s value (or the fitted one,
    flagged, without a base). With samples of one world size the fixed cost per collective and the
    per-hop latency are collinear: only the latency is fitted (over `base`'s launch cost, or none),
    and the launch cost is not identified.
    """
    from scipy.optimize import lsq_linear

    if not samples:
        raise InputError("allreduce profile", "samples", "no all-reduce samples")
    w = np.array([float(_field(s, "world_size")) for s in samples])
    b = np.array([float(_field(s, "message_bytes")) for s in samples])
    t = np.array([float(_field(s, "median_s")) for s in samples])
    if np.any(w < 2):
        raise InputError("allreduce profile", "samples.world_size", "all-reduce samples need >= 2 ranks")
    if np.any(t <= 0):
        raise InputError("allreduce profile", "samples.median_s", "non-positive timings")
    base_launch = base.collective_launch_us if base is not None else 0.0
    # unknowns: launch in us, latency in us per hop, inverse bandwidth in s per GB
    a = np.stack([np.full_like(w, 1e-6), 2.0 * (w - 1.0) * 1e-6, 2.0 * (w - 1.0) / w * b * 1e-9], axis=1)
    several_worlds = len(np.unique(w)) >= 2
    notes = []
    if several_worlds:
        sol = lsq_linear(a / t[:, None], np.ones_like(t), bounds=(0.0, np.inf), method="bvls")
        launch_us, lat_us, inv_bw = (float(v) for v in sol.x)
    else:  # launch and hop columns collinear: the launch stays at the base's, the rest is fitted over it
        launch_us = base_launch
        rhs = 1.0 - a[:, 0] * launch_us / t
        sol = lsq_linear(a[:, 1:] / t[:, None], rhs, bounds=(0.0, np.inf), method="bvls")
        lat_us, inv_bw = (float(v) for v in sol.x)
    pred = a @ np.array([launch_us, lat_us, inv_bw])
    pred_safe = np.where(pred > 0, pred, t)
    sens_launch = float(np.sqrt(np.mean((a[:, 0] * launch_us / pred_safe) ** 2)))
    sens_lat = float(np.sqrt(np.mean((a[:, 1] * lat_us / pred_safe) ** 2)))
    sens_bw = float(np.sqrt(np.mean((0.5 * a[:, 2] * inv_bw / pred_safe) ** 2)))
    launch_ok = several_worlds and launch_us > 0 and sens_launch >= _IDENTIFY_THRESHOLD
    lat_ok = lat_us > 0 and sens_lat >= _IDENTIFY_THRESHOLD
    bw_ok = inv_bw > 0 and sens_bw >= _IDENTIFY_THRESHOLD
    bandwidth = 1.0 / inv_bw if inv_bw > 0 else float("inf")
    # a base without an interconnect (bandwidth 0, a CPU profile) has nothing to fall back on
    keep_lat = base is not None
    keep_bw = base is not None and base.interconnect_bandwidth_gbps > 0
    if not several_worlds:
        notes.append(f"collective launch not identified (one world size, {int(w[0])} ranks: a fixed cost per "
                     f"collective and the per-hop latency are collinear); kept {launch_us:.4g} us"
                     + (" (the base value)" if base is not None else "") + ", fitted the latency over it")
    elif not launch_ok:
        notes.append(f"collective launch not identified (sensitivity {100 * sens_launch:.2f}%)"
                     + ("; kept the base value" if keep_lat else "; fitted value kept"))
        if keep_lat:
            launch_us = base_launch
    if not lat_ok:
        notes.append(f"latency not identified (the messages are bandwidth-bound; sensitivity {100 * sens_lat:.2f}%)"
                     + ("; kept the base value" if keep_lat else "; fitted value kept"))
        if keep_lat:
            lat_us = base.interconnect_latency_us
    if not bw_ok:
        notes.append(f"bandwidth not identified (the messages are latency-bound; sensitivity {100 * sens_bw:.2f}%)"
                     + ("; kept the base value" if keep_bw else "; fitted value kept"))
        if keep_bw:
            bandwidth = base.interconnect_bandwidth_gbps * base.efficiency.interconnect
    if not np.isfinite(bandwidth):
        bandwidth = 1e6  # nothing bandwidth-bound was measured and no base: effectively free transfers
    final = allreduce_time_s(w, b, lat_us, bandwidth, launch_us=launch_us)
    err = 100.0 * (final / t - 1.0)
    points = [{"world_size": int(wi), "message_bytes": int(bi), "measured_s": float(ti), "predicted_s": float(pi),
               "error_pct": float(ei)} for wi, bi, ti, pi, ei in zip(w, b, t, final, err, strict=True)]
    return InterconnectFit(latency_us=float(lat_us), bandwidth_gbps=float(bandwidth), latency_identified=bool(lat_ok),
                           bandwidth_identified=bool(bw_ok), median_abs_error_pct=float(np.median(np.abs(err))),
                           max_abs_error_pct=float(np.max(np.abs(err))), points=points, notes=notes,
                           launch_us=float(launch_us), launch_identified=bool(launch_ok))


def apply_interconnect_fit(hw: HardwareProfile, fit: InterconnectFit) -> HardwareProfile:
    """`hw` with the fitted effective interconnect figures (efficiency.interconnect = 1.0)."""
    return hw.model_copy(update={
        "interconnect_bandwidth_gbps": fit.bandwidth_gbps,
        "interconnect_latency_us": fit.latency_us,
        "collective_launch_us": fit.launch_us,
        "efficiency": hw.efficiency.model_copy(update={"interconnect": 1.0}),
    })


def interconnect_yaml(hw: HardwareProfile, fit: InterconnectFit, source) -> str:
    """The profile with a fitted interconnect, as YAML with the fit in comments."""
    import yaml

    ws = sorted({p["world_size"] for p in fit.points})
    header = [
        f"# Interconnect calibrated from measured all-reduces ({len(fit.points)} message sizes, world sizes {ws}),",
        f"# base profile: {source}. interconnect_* and collective_launch_us below are fitted *effective* figures",
        "# (efficiency 1.0); one all-reduce = launch + 2 (w - 1) x latency + 2 (w - 1) / w x bytes / bandwidth:",
        f"#   launch {fit.launch_us:.4g} us per collective ({'fitted' if fit.launch_identified else 'NOT IDENTIFIED'}),"
        f" latency {fit.latency_us:.4g} us per ring hop ({'fitted' if fit.latency_identified else 'NOT IDENTIFIED'}),",
        f"#   bandwidth {fit.bandwidth_gbps:.4g} GB/s ({'fitted' if fit.bandwidth_identified else 'NOT IDENTIFIED'});"
        f" median |error| {fit.median_abs_error_pct:.1f}%, worst {fit.max_abs_error_pct:.1f}%.",
    ] + [f"#   {n}" for n in fit.notes]
    body = yaml.safe_dump(hw.model_dump(mode="json", exclude_none=True), sort_keys=False)
    return "\n".join(header) + "\n" + body
