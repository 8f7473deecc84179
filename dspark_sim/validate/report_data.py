"""The documents of a validation folder: what `validate` stores after measuring and after predicting, how a
report is assembled, and how a stored folder is read back for `validate --repredict`. Torch-free.

A folder holds measurements.json (written before predicting, so a run cut short there is finished on any
machine), report.json (measured and predicted figures), profile.json (and its profile-round-N.json when
merged from rounds), and one acceptance trace per temperature, acceptance-T<t>.jsonl.gz.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from dspark_sim.config.errors import InputError, from_validation_error
from dspark_sim.config.io import read_json
from dspark_sim.config.measurements import (
    CalibrationReport,
    ErrorSummary,
    MeasuredCase,
    ValidationMeasurements,
    ValidationPoint,
    ValidationReport,
)
from dspark_sim.validate.cases import Case, Grid, Measured

#: what `validate` writes after measuring, before predicting
MEASUREMENTS_FILE = "measurements.json"


def command_line() -> str:
    """The command that made a document, as stored in it."""
    return "dspark-sim " + " ".join(sys.argv[1:])


def measured_case(case: Case, new_tokens: int, spec_m: Measured, base_m: Measured) -> MeasuredCase:
    return MeasuredCase(
        temperature=case.temperature, batch_size=case.batch_size, prompt_tokens=case.prompt_tokens,
        new_tokens=new_tokens, policy=case.policy, rounds=case.rounds, cross_prediction=case.cross,
        tokens_per_s=spec_m.tokens_per_s, tau=spec_m.tau, batch_tokens_per_s=spec_m.batch_tokens_per_s,
        repeats_tokens_per_s=spec_m.repeats or [], baseline_tokens_per_s=base_m.tokens_per_s,
        baseline_repeats_tokens_per_s=base_m.repeats or [], verified=spec_m.verified, host_probe_s=spec_m.host_probes)


def case_of(m: MeasuredCase) -> Case:
    """The grid case a measured case is."""
    return Case(m.temperature, m.batch_size, m.prompt_tokens, m.policy, m.rounds, m.new_tokens, m.cross_prediction)


def validation_report(meas: ValidationMeasurements, points: list[ValidationPoint], summary: list[ErrorSummary],
                      calibrations: list[CalibrationReport], tolerance_pct: float,
                      predict_s: float) -> ValidationReport:
    """The report of measured cases and their predictions; passed when the median errors of the points in
    the calibrated range (the summary's first group) are within the tolerance."""
    main = summary[0]
    passed = max(main.median_abs_speedup_error_pct, main.median_abs_tokens_per_s_error_pct) <= tolerance_pct
    return ValidationReport(
        device=meas.device, engine_version=meas.engine_version, preset=meas.preset, quick=meas.quick,
        tolerance_pct=tolerance_pct, passed=passed, command=meas.command,
        calibration_median_error_pct=float(np.median([c.median_abs_error_pct for c in calibrations])),
        acceptance_by_temperature=meas.acceptance_by_temperature, summary=summary, points=points,
        host_drift_pct=meas.host_drift_pct, timings_s={**meas.timings_s, "predict_s": predict_s},
        sps_table=meas.sps_table, profile_rounds=meas.profile_rounds, estimator=meas.estimator,
        host_probe_reference_s=meas.host_probe_reference_s, host_probes=meas.host_probes,
    )


def read_folder_document(folder: Path) -> tuple[Path, ValidationReport | ValidationMeasurements]:
    """A validation folder's report.json, or, where validate was cut short while predicting, its
    measurements.json; a missing or malformed document is one InputError naming the file."""
    report_path, meas_path = folder / "report.json", folder / MEASUREMENTS_FILE
    path, doc = (report_path, ValidationReport) if report_path.is_file() or not meas_path.is_file() else \
        (meas_path, ValidationMeasurements)
    raw = read_json(path, "validation report",
                    "validation report not found (a folder written by `dspark-sim validate`)")
    try:
        return path, doc.model_validate(raw)
    except ValidationError as exc:
        raise from_validation_error(str(path), exc, data=raw) from None


def folder_traces(folder: Path, grid: Grid) -> dict[float, Path]:
    """The folder's acceptance trace of every grid temperature: gzipped JSONL, or plain JSONL in folders
    written before the chains made traces large enough to pack."""
    traces = {t: next((p for p in (folder / f"acceptance-T{t:g}.jsonl.gz", folder / f"acceptance-T{t:g}.jsonl")
                       if p.is_file()), folder / f"acceptance-T{t:g}.jsonl.gz") for t in grid.temperatures}
    for trace in traces.values():
        if not trace.is_file():
            raise InputError(str(trace), None, "acceptance trace missing (validate writes one per temperature)")
    return traces


def measured_from_point(p: ValidationPoint) -> MeasuredCase:
    """A report point's measured side, as validate stored it before predicting."""
    return MeasuredCase(
        temperature=p.temperature, batch_size=p.batch_size, prompt_tokens=p.prompt_tokens, new_tokens=p.new_tokens,
        policy=p.policy, rounds=p.rounds, cross_prediction=p.cross_prediction,
        # the figures as measured (reports written before other estimators hold only those)
        tokens_per_s=p.measured_median_tokens_per_s or p.measured_tokens_per_s,
        tau=p.measured_tau, batch_tokens_per_s=p.measured_batch_tokens_per_s or 0.0,
        repeats_tokens_per_s=p.measured_repeats_tokens_per_s or [],
        baseline_tokens_per_s=p.measured_median_baseline_tokens_per_s or p.measured_baseline_tokens_per_s,
        baseline_repeats_tokens_per_s=p.measured_baseline_repeats_tokens_per_s or [], verified=p.measured_verified,
        host_probe_s=p.measured_host_probe_s)


def measurements_of_report(old: ValidationReport, sps_table: dict[int, float]) -> ValidationMeasurements:
    """A report's measurements, with the SPS table the engine's DSpark policy ran with."""
    return ValidationMeasurements(
        device=old.device, engine_version=old.engine_version, preset=old.preset, quick=old.quick,
        command=old.command, acceptance_by_temperature=old.acceptance_by_temperature,
        host_drift_pct=old.host_drift_pct, timings_s=old.timings_s, sps_table=sps_table,
        profile_rounds=old.profile_rounds, estimator=old.estimator,
        host_probe_reference_s=old.host_probe_reference_s, host_probes=old.host_probes,
        cases=[measured_from_point(p) for p in old.points])
