"""`dspark-sim validate --repredict FOLDER`: a validation folder's measured points predicted again by this
code (calibration included), from its own profile and acceptance traces: a change to the cost model or the
simulator is judged on the same measurements, free of the machine's run-to-run drift. Torch-free: any
machine re-predicts a folder measured on another.
"""

from __future__ import annotations

import time
from pathlib import Path

from dspark_sim.config.errors import InputError
from dspark_sim.config.io import write_atomic
from dspark_sim.config.measurements import EngineProfile, ValidationMeasurements, ValidationReport
from dspark_sim.fit.calibrate import calibrate, load_profile
from dspark_sim.measure.profile_merge import at_reference_speed, merge_profiles
from dspark_sim.validate.cases import grid_of
from dspark_sim.validate.compare import resolve_estimator
from dspark_sim.validate.predict import Log, predict_measurements
from dspark_sim.validate.report_data import (
    MEASUREMENTS_FILE,
    command_line,
    folder_traces,
    measurements_of_report,
    read_folder_document,
)


def _measurements(old: ValidationReport | ValidationMeasurements, profile: EngineProfile) -> ValidationMeasurements:
    """The folder's measurements; a report's with the SPS table the engine's DSpark policy ran with (reports
    written before it was kept: the first temperature's calibration's)."""
    if isinstance(old, ValidationMeasurements):
        return old
    t_first = grid_of(old.quick).temperatures[0]
    sps = old.sps_table or calibrate(profile, "sps", temperature=t_first if t_first in
                                     {st.temperature for st in profile.steps} else None)[1].sps_table
    return measurements_of_report(old, sps)


def _probe_reference(meas: ValidationMeasurements, source: Path) -> dict[str, float] | None:
    """The host speed the 'probed' estimator brings every timing to (None under the other estimators)."""
    if meas.estimator != "probed":
        return None
    if meas.host_probe_reference_s is None:
        raise InputError(str(source), "host_probe_reference_s", "the 'probed' estimator needs the host-speed "
                         "yardstick (validate reads it on a CPU); allowed for this folder: median, best")
    return meas.host_probe_reference_s


def _merged_profile(rounds: list[Path], meas: ValidationMeasurements,
                    reference: dict[str, float] | None) -> EngineProfile:
    """The folder's profile rounds merged as the measurements' estimator merges them."""
    loaded = [load_profile(r) for r in rounds]
    if reference is not None:
        loaded = [at_reference_speed(prof, reference) for prof in loaded]
    return merge_profiles(loaded, fastest_steps=meas.estimator == "best")


def repredict_report(folder: Path, out_dir: Path, *, tolerance_pct: float | None = None, seed: int = 0,
                     log: Log = print, workers: int | None = None, estimator: str | None = None) -> ValidationReport:
    """The folder's measured points predicted again into `out_dir`, its measured fields kept. The folder's
    report.json, or, where validate was cut short while predicting, its measurements.json.

    `estimator`: None keeps the folder's own; 'median', 'best' or 'auto' summarise its repeats and
    profile rounds that way instead (a folder without profile-round files keeps its profile.json)."""
    path, old = read_folder_document(folder)
    profile = load_profile(folder / "profile.json")
    traces = folder_traces(folder, grid_of(old.quick))
    meas = _measurements(old, profile)
    if estimator is not None:
        meas = meas.model_copy(update={"estimator": resolve_estimator(estimator, meas.device.kind)})
    reference = _probe_reference(meas, path)
    rounds = sorted(folder.glob("profile-round-*.json"))
    if rounds:  # the merge that matches the estimator (profile.json holds the one the folder was made with)
        profile = _merged_profile(rounds, meas, reference)
    t0 = time.perf_counter()
    tol = (old.tolerance_pct if isinstance(old, ValidationReport) else (15.0 if old.quick else 5.0)) \
        if tolerance_pct is None else tolerance_pct
    report = predict_measurements(meas, profile, traces, out_dir, tol, seed, log, workers=workers)
    meas_path = folder / MEASUREMENTS_FILE
    extra = [meas_path] if meas_path.is_file() else []
    for src in (*rounds, *extra, *traces.values()):  # the new folder can be re-predicted
        write_atomic(out_dir / src.name, src.read_bytes())
    write_atomic(out_dir / "profile.json", profile.model_dump_json(indent=1) + "\n")  # what was calibrated on
    return report.model_copy(update={
        "command": command_line(),
        "timings_s": {**meas.timings_s, "repredict_s": time.perf_counter() - t0},
    })
