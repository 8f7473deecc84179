"""Tensor parallelism, predicted then measured: the TP speed table (`benchmarks/tp_engine.py`).

For each TP degree the engine is measured (`measure.tp_table.measure_engine`, one process per rank);
the cost model is calibrated on the TP-1 run's profile (or a hardware profile is given), the
interconnect is fitted to the TP > 1 runs' all-reduces, and every measured row is predicted with
`StepCoster(..., tp)` (as the simulator prices a deployment) and the measured tau, so the table
isolates timing: TP 1 rows show the calibration's fit, TP > 1 rows the TP model (sharded weights and
KV, two all-reduces per layer). `repredict_table` predicts a written table again without measuring.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from dspark_sim.config.errors import InputError
from dspark_sim.config.loader import load_hardware_profile
from dspark_sim.config.measurements import CalibrationReport
from dspark_sim.config.schema import DrafterSpec, HardwareProfile, ModelSpec
from dspark_sim.config.tensor_parallel import (
    AllReduceSample,
    CalibrationSummary,
    InterconnectFitDoc,
    InterconnectUsed,
    MeasuredRow,
    Repredicted,
    RowErrors,
    TPRun,
    TPTable,
    TPTableRow,
)
from dspark_sim.core.costmodel import StepCoster
from dspark_sim.engine.model import WEIGHT_DTYPES, ModelArgs
from dspark_sim.engine.tp.shard import check_tp
from dspark_sim.engine.tp.workers import run_workers
from dspark_sim.fit.calibrate import calibrate
from dspark_sim.fit.interconnect import InterconnectFit, apply_interconnect_fit, fit_interconnect
from dspark_sim.measure.provenance import model_spec
from dspark_sim.measure.tp_table import MeasureConfig, measure_args, measure_engine

#: how the interconnect of the predictions is chosen: fitted to the all-reduces timed between matmuls
#: (else the bursts), fitted to the back-to-back bursts, or the hardware profile's own figures
INTERCONNECT_MODES = ("measured", "measured-burst", "profile")


def model_specs(cfg: MeasureConfig, targs: ModelArgs, dargs: ModelArgs | None) -> tuple[ModelSpec, ModelSpec | None]:
    """The simulator's ModelSpecs of the engine's target and draft shapes (draft None: baseline only)."""
    wd = WEIGHT_DTYPES[cfg.dtype]
    target_spec = model_spec(targs, cfg.target_shape, wd)
    draft_spec = model_spec(dargs, cfg.draft_shape or "draft", wd) if dargs is not None else None
    return target_spec, draft_spec


@dataclass(frozen=True)
class RowPrediction:
    """The cost model's figures for one measured row; the speculative ones when it has a draft and tau."""

    baseline_decode_tok_s: float
    baseline_step_s: float
    baseline_comm_share: float
    spec_decode_tok_s: float | None = None
    spec_step_s: float | None = None
    spec_comm_share: float | None = None


def predict(batch: int, cache_len: int, tau: float | None, tp: int, hw: HardwareProfile, target_spec: ModelSpec,
            draft_spec: ModelSpec | None, cfg: MeasureConfig) -> RowPrediction:
    """The cost model's tokens/s for one measured row (its batch, static cache length and measured tau; the
    engine's conventions)."""
    drafter = (DrafterSpec(kind="draft_model", model=draft_spec, first_pass_tokens=2.0,
                           replicated=cfg.replicate_draft) if draft_spec is not None else DrafterSpec(kind="none"))
    coster = StepCoster(target_spec, drafter, hw, tp, pad_verify=True, static_kv_tokens=cache_len)
    b, g = batch, cfg.gamma
    ctx = cfg.prompt_len + cfg.new_tokens / 2
    base_pass = coster.baseline(b, ctx)
    base_step = float(np.asarray(base_pass.time_s)) + float(coster.baseline_step_overhead_s())
    base_comm = float(np.asarray(base_pass.comm_s)) / base_step
    if draft_spec is None or tau is None:
        return RowPrediction(b / base_step, base_step, base_comm)
    draft = coster.draft(b, g, ctx)
    verify = coster.verify(b, g, ctx)
    step = float(np.asarray(draft.time_s) + np.asarray(verify.time_s)) + coster.step_overhead_s()
    return RowPrediction(b / base_step, base_step, base_comm, spec_decode_tok_s=b * tau / step, spec_step_s=step,
                         spec_comm_share=float(np.asarray(draft.comm_s) + np.asarray(verify.comm_s)) / step)


def _err(pred: float, meas: float) -> float:
    return 100.0 * (pred / meas - 1.0) if meas > 0 else float("nan")


def predicted_rows(measured: list[MeasuredRow], hw: HardwareProfile, target_spec: ModelSpec,
                   draft_spec: ModelSpec | None, cfg: MeasureConfig) -> list[TPTableRow]:
    """Each measured row with the cost model's prediction and error, and both sides' scaling against TP 1
    at the same batch where TP 1 was run."""
    rows: list[dict[str, Any]] = []
    for row in measured:
        pred = predict(row.batch, row.cache_len, row.tau, row.tp, hw, target_spec, draft_spec, cfg)
        out = row.model_dump(exclude_unset=True)
        out["predicted_baseline_decode_tok_s"] = pred.baseline_decode_tok_s
        out["baseline_error_pct"] = _err(pred.baseline_decode_tok_s, row.baseline_decode_tok_s)
        out["predicted_baseline_comm_share"] = pred.baseline_comm_share
        if pred.spec_decode_tok_s is not None and row.spec_decode_tok_s is not None:
            out["predicted_spec_decode_tok_s"] = pred.spec_decode_tok_s
            out["spec_error_pct"] = _err(pred.spec_decode_tok_s, row.spec_decode_tok_s)
            out["predicted_spec_comm_share"] = pred.spec_comm_share
        rows.append(out)
    # scaling against TP 1 at the same batch: the TP model's claim, free of the absolute calibration
    ref = {r["batch"]: r for r in rows if r["tp"] == 1}
    for r in rows:
        base = ref.get(r["batch"])
        if base is None:
            continue
        for kind in ("baseline", "spec"):
            m, p = f"{kind}_decode_tok_s", f"predicted_{kind}_decode_tok_s"
            if m in r and p in r:
                r[f"{kind}_scaling_measured"] = r[m] / base[m]
                r[f"{kind}_scaling_predicted"] = r[p] / base[p]
    return [TPTableRow(**r) for r in rows]


def fit_doc(fit: InterconnectFit, context: str | None = None) -> InterconnectFitDoc:
    """A fit as a document (with the context of the samples it was fitted to, in a TP table)."""
    return InterconnectFitDoc.model_validate({
        **({"context": context} if context is not None else {}),
        **{k: v for k, v in fit.to_dict().items() if k != "points"}, "points": fit.points})


def fit_interconnects(samples: list[AllReduceSample], hw: HardwareProfile,
                      mode: str) -> tuple[HardwareProfile, dict[str, Any]]:
    """Fit the interconnect to `samples` over `hw`: (`hw` with the fit unless mode is "profile", the table's
    fields). Mode "measured" fits the all-reduces timed between matmuls as the model runs them when the
    run has them (else the bursts); "measured-burst" the back-to-back bursts; the other fit is reported
    beside it (`interconnect_fit_other`)."""
    if not samples:
        return hw, {}
    by_context: dict[str, list[AllReduceSample]] = {}
    for s in samples:
        by_context.setdefault(s.context, []).append(s)
    fits = {ctx: fit_interconnect(group, hw) for ctx, group in by_context.items()}
    use = "burst" if mode == "measured-burst" or "between-matmuls" not in fits else "between-matmuls"
    use = use if use in fits else next(iter(fits))
    fields: dict[str, Any] = {"allreduce": samples, "interconnect_fit": fit_doc(fits[use], use)}
    others = [c for c in fits if c != use]
    if others:
        fields["interconnect_fit_other"] = fit_doc(fits[others[0]], others[0])
    if mode in ("measured", "measured-burst"):
        hw = apply_interconnect_fit(hw, fits[use])
    return hw, fields


def interconnect_used(hw: HardwareProfile) -> InterconnectUsed:
    return InterconnectUsed(launch_us=hw.collective_launch_us, latency_us=hw.interconnect_latency_us,
                            bandwidth_gbps=hw.interconnect_bandwidth_gbps, efficiency=hw.efficiency.interconnect)


def calibration_summary(cal: CalibrationReport) -> CalibrationSummary:
    """The table's record of a TP-1 calibration: its fit error and the fitted parameters."""
    return CalibrationSummary(median_abs_error_pct=cal.median_abs_error_pct, max_abs_error_pct=cal.max_abs_error_pct,
                              parameters={p.name: p.value for p in cal.parameters})


def check_degrees(cfg: MeasureConfig, tps: list[int]) -> tuple[ModelArgs, ModelArgs | None]:
    """The shapes of `cfg`; a degree a shape cannot split over is refused before any process starts."""
    try:
        targs, dargs, _ = measure_args(cfg)
    except KeyError as exc:
        raise InputError("tp_engine", "--shape/--draft-shape", str(exc.args[0])) from None
    for tp in tps:
        check_tp(targs, tp, cfg.target_shape)
        if dargs is not None and not cfg.replicate_draft:
            check_tp(dargs, tp, cfg.draft_shape or "draft")
    return targs, dargs


def measure_table(cfg: MeasureConfig, tps: list[int], *, device: str, threads: int, notes: list[str],
                  hardware: str | None, interconnect: str,
                  log: Callable[[str], object] = lambda _: None) -> tuple[TPTable, HardwareProfile]:
    """Measure every TP degree, then predict each row: the table and the hardware the predictions used
    (calibrated on the TP-1 run's profile when `cfg.profile`, else the `hardware` profile, with the fitted
    interconnect unless `interconnect` is "profile")."""
    targs, dargs = check_degrees(cfg, tps)
    runs: dict[int, TPRun] = {}
    for tp in tps:
        log(f"TP {tp}: measuring ...")
        runs[tp] = run_workers(measure_engine, tp, cfg, device=device, threads=threads)
    fields: dict[str, Any] = {
        "device": runs[tps[0]].device, "torch": torch.__version__, "target_shape": cfg.target_shape,
        "draft_shape": cfg.draft_shape, "dtype": cfg.dtype, "prompt_len": cfg.prompt_len,
        "new_tokens": cfg.new_tokens, "gamma": cfg.gamma, "tp": tps, "notes": notes,
        "draft_replicated": bool(cfg.draft_shape) and cfg.replicate_draft,
    }
    profile = runs[1].profile if 1 in runs else None
    if cfg.profile and profile is not None:
        hw, cal = calibrate(profile, name="calibrated-tp1", temperature=cfg.temperature)
        # kept whole, so that a changed cost model can be re-calibrated on it later without a GPU
        # (`dspark-sim calibrate` reads it once saved as its own file)
        fields.update(profile=profile, hardware="calibrated on the TP-1 run", calibration=calibration_summary(cal))
    else:
        name = hardware or ("h200-sxm" if device == "cuda" else "cpu-generic")
        hw = load_hardware_profile(name)
        fields["hardware"] = name
    samples = [s for tp in tps if tp > 1 for s in runs[tp].allreduce]
    hw, fit_fields = fit_interconnects(samples, hw, interconnect)
    fields.update(fit_fields)
    fields["interconnect_used"] = interconnect_used(hw)
    target_spec, draft_spec = model_specs(cfg, targs, dargs)
    measured = [MeasuredRow(**row.model_dump(exclude_unset=True), weight_gb_per_rank=runs[tp].weight_bytes_per_rank / 1e9)
                for tp in tps for row in runs[tp].rows]
    fields["rows"] = predicted_rows(measured, hw, target_spec, draft_spec, cfg)
    return TPTable(**fields), hw


def _row_errors(table: TPTable) -> list[RowErrors]:
    keep = {"tp", "batch", "baseline_error_pct", "spec_error_pct"}
    return [RowErrors(**r.model_dump(exclude_unset=True, include=keep)) for r in table.rows]


def table_config(table: TPTable) -> MeasureConfig:
    """The run's MeasureConfig, as far as a prediction reads it (shapes and their cache, gamma, lengths)."""
    if table.dtype not in WEIGHT_DTYPES:
        raise InputError("tp_engine", "dtype", f"unknown {table.dtype!r} in the table")
    return MeasureConfig(target_shape=table.target_shape, draft_shape=table.draft_shape, dtype=table.dtype,
                         prompt_len=table.prompt_len, new_tokens=table.new_tokens,
                         batch_sizes=tuple(sorted({r.batch for r in table.rows})), gamma=table.gamma,
                         replicate_draft=table.draft_replicated)


def repredict_table(old: TPTable, source: str, *, hardware: str | None,
                    interconnect: str) -> tuple[TPTable, HardwareProfile]:
    """A table predicted again with `hardware` (or its own TP-1 profile, calibrated again by this code) and
    the interconnect refitted to the table's own all-reduces; the measured fields are kept as they are."""
    if not hardware and old.profile is None:
        raise InputError("tp_engine", "--hardware", "--repredict needs the hardware to predict with (a profile "
                                                    "name or YAML, e.g. the run's --hardware-out) when the report "
                                                    "keeps no TP-1 profile")
    cfg = table_config(old)
    try:
        targs, dargs, _ = measure_args(cfg)
    except KeyError as exc:
        raise InputError("tp_engine", "target_shape/draft_shape", str(exc.args[0])) from None
    fields = old.model_dump(exclude_unset=True, by_alias=True, exclude={"interconnect_fit", "interconnect_used", "rows"})
    if hardware:
        hw = load_hardware_profile(hardware)
        used = str(hardware)
    else:
        assert old.profile is not None  # checked above
        hw, cal = calibrate(old.profile, name="calibrated-tp1", temperature=cfg.temperature)
        used = "calibrated again on the report's TP-1 profile"
        fields["calibration"] = calibration_summary(cal)
    previous_fit = (InterconnectFitDoc(**old.interconnect_fit.model_dump(exclude_unset=True, exclude={"points"}))
                    if old.interconnect_fit is not None else None)
    fields["repredicted"] = Repredicted.model_validate({
        "from": source, "hardware": used, "interconnect": interconnect, "previous_hardware": old.hardware,
        "previous_interconnect_fit": previous_fit, "previous_interconnect_used": old.interconnect_used,
        "previous_errors": _row_errors(old)})
    fields["hardware"] = used
    hw, fit_fields = fit_interconnects(old.allreduce or [], hw, interconnect)
    fields.update(fit_fields)
    fields["interconnect_used"] = interconnect_used(hw)
    target_spec, draft_spec = model_specs(cfg, targs, dargs)
    keep = set(MeasuredRow.model_fields)
    measured = [MeasuredRow(**r.model_dump(exclude_unset=True, include=keep)) for r in old.rows]
    fields["rows"] = predicted_rows(measured, hw, target_spec, draft_spec, cfg)
    return TPTable(**fields), hw
