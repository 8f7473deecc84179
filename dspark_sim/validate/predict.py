"""The predict half of `validate` (and all of `validate --repredict`): calibrate the cost model on the
engine's profile, simulate every measured case's run with it and the held-apart acceptance trace, compare.

Torch-free, so that a folder measured on one machine is predicted again on any other. The cases are
simulated in parallel processes, each from its own seeds: the same figures for any worker count.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from dspark_sim.config.io import write_atomic
from dspark_sim.config.measurements import (
    CalibrationReport,
    EngineProfile,
    ValidationMeasurements,
    ValidationReport,
)
from dspark_sim.config.schema import HardwareProfile
from dspark_sim.fit.calibrate import calibrate
from dspark_sim.sim.run import Simulation
from dspark_sim.studies.executors import default_workers, map_unordered
from dspark_sim.validate.cases import Case, Grid, Measured, case_cache_tokens, grid_of
from dspark_sim.validate.compare import log_point, make_point, summarise, summarised
from dspark_sim.validate.engine_scenario import case_scenario, decode_tokens_and_passes, full_batch_window
from dspark_sim.validate.report_data import case_of, validation_report
from dspark_sim.validate.trace_fields import prompt_length_trace, simulated_runs, trace_records

Log = Callable[[str], object]
#: the calibrations by temperature: the hardware fitted on the whole profile, its report, and the
#: hardware fitted on small batches only (cross-prediction; absent without it)
Calibrations = tuple[dict[float, HardwareProfile], dict[float, CalibrationReport], dict[float, HardwareProfile]]


def restrict_profile(profile: EngineProfile, max_batch: int) -> EngineProfile:
    """The profile as if only batches up to `max_batch` had been measured (for cross-prediction)."""
    return profile.model_copy(update={
        "samples": [s for s in profile.samples if s.batch_size <= max_batch],
        "steps": [s for s in profile.steps if s.batch_size <= max_batch],
    })


def _calibrate_task(task: tuple) -> tuple[tuple, HardwareProfile, CalibrationReport]:
    key, profile, name, temperature = task
    return key, *calibrate(profile, name, temperature=temperature)


def calibrations(profile: EngineProfile, grid: Grid, device: str, workers: int = 1) -> Calibrations:
    """One calibration per temperature (sampling costs more per step than greedy decoding), and the
    cross-prediction's calibration on small batches only: (hardware, report, small-batch hardware) by T.
    The fits are independent, so they run in `workers` processes (a fit of a CPU profile can take 15 s)."""
    measured_temps = {s.temperature for s in profile.steps}
    tasks = []
    for t in grid.temperatures:
        t_fit = t if t in measured_temps else None
        tasks.append((("all", t), profile, f"calibrated-{device}-T{t:g}", t_fit))
        if grid.calibrate_max_batch:
            tasks.append((("small", t), restrict_profile(profile, grid.calibrate_max_batch),
                          f"calibrated-{device}-T{t:g}-small-batch", t_fit))
    fits = {key: (hw, rep) for key, hw, rep in map_unordered(_calibrate_task, tasks, "local" if workers > 1 else
                                                             "inline", min(workers, len(tasks)))}
    hw_by_temp = {t: fits[("all", t)][0] for t in grid.temperatures}
    cal_by_temp = {t: fits[("all", t)][1] for t in grid.temperatures}
    cross_by_temp = {t: fits[("small", t)][0] for t in grid.temperatures if ("small", t) in fits}
    return hw_by_temp, cal_by_temp, cross_by_temp


def _simulate(case: Case, profile: EngineProfile, hw: HardwareProfile, trace_path: Path, sps_table: dict[int, float],
              cap: int, seed: int, runs: int, speculative: bool) -> Measured:
    full_tokens = full_s = tokens = span = 0.0
    gained = passes = verified = 0.0
    for r in range(runs):
        sc = case_scenario(case, profile, hw, trace_path, sps_table, cap, seed + r, speculative,
                           first_record=r * case.batch_size)
        sim = Simulation(sc, "validate").run()
        window_tokens, window_s = full_batch_window(sim, case.batch_size)
        full_tokens += window_tokens
        full_s += window_s
        first = float(np.nanmin(sim.out.first_token))
        tokens += float((sim.out.gen - 1).sum())
        span += float(np.nanmax(sim.out.finish)) - first
        g, p, v = decode_tokens_and_passes(sim)
        gained += g
        passes += p
        verified += v
    return Measured(full_tokens / full_s, gained / max(passes, 1.0), tokens / span, verified=verified / max(passes, 1.0))


def predict_case(case: Case, profile: EngineProfile, hw: HardwareProfile, trace_path: Path,
                 sps_table: dict[int, float], cap_spec: int, cap_base: int, seed: int,
                 repeats: int) -> tuple[Measured, Measured]:
    """Simulated decode tokens/s of the engine's run (spec and baseline), over at least `repeats` x rounds
    seeds, every trace record replayed equally often: while the whole batch generates (the steps the
    simulator ran with every request decoding), and for the whole static batch (first token to last finish)."""
    runs = simulated_runs(case, repeats, trace_records(trace_path))
    spec = _simulate(case, profile, hw, trace_path, sps_table, cap_spec, seed, runs, speculative=True)
    base = _simulate(case, profile, hw, trace_path, sps_table, cap_base, seed, runs, speculative=False)
    return spec, base


def predict_point(case: Case, profile: EngineProfile, hw_by_temp: dict[float, HardwareProfile],
                  cross_by_temp: dict[float, HardwareProfile], trace_path: Path, sps_table: dict[int, float],
                  seed: int) -> tuple[Measured, Measured]:
    """The simulator's (speculative, plain) figures for one case, with the calibration it belongs to."""
    cap = case_cache_tokens(case)
    use_hw = (cross_by_temp.get(case.temperature) if case.cross else None) or hw_by_temp[case.temperature]
    return predict_case(case, profile, use_hw, trace_path, sps_table, cap, cap, seed,
                        repeats=4 if case.batch_size < 4 else 2)


def _predict_task(task: tuple) -> tuple[int, Measured, Measured]:
    i, *args = task
    return i, *predict_point(*args)


def _write_calibrations(cal_by_temp: dict[float, CalibrationReport], out_dir: Path, log: Log) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for t, c in cal_by_temp.items():
        write_atomic(out_dir / f"calibration-T{t:g}.json", c.model_dump_json(indent=1) + "\n")
        log(f"calibration T={t:g}: median |error| {c.median_abs_error_pct:.1f}% over {len(c.points)} pass and step shapes")


def _predict_cases(cases: list[Case], profile: EngineProfile, cal: Calibrations, traces: dict[float, Path],
                   sps_table: dict[int, float], out_dir: Path, seed: int, workers: int,
                   progress: Callable[[], object] | None) -> dict[int, tuple[Measured, Measured]]:
    """Every case's (speculative, plain) prediction, by case index (a slow host once spent more than 140 s
    here on one core: hence the processes)."""
    hw_by_temp, _, cross_by_temp = cal
    by_length = {(t, n): prompt_length_trace(traces[t], n, out_dir)
                 for t in {c.temperature for c in cases} for n in {c.prompt_tokens for c in cases}}
    tasks = [(i, case, profile, hw_by_temp, cross_by_temp, by_length[(case.temperature, case.prompt_tokens)],
              sps_table, seed) for i, case in enumerate(cases)]
    predicted: dict[int, tuple[Measured, Measured]] = {}
    for i, spec_p, base_p in map_unordered(_predict_task, tasks, "local" if workers > 1 else "inline", workers):
        predicted[i] = (spec_p, base_p)
        if progress:
            progress()
    return predicted


def predict_measurements(meas: ValidationMeasurements, profile: EngineProfile, traces: dict[float, Path],
                         out_dir: Path, tolerance_pct: float, seed: int, log: Log = print,
                         progress: Callable[[], object] | None = None,
                         workers: int | None = None) -> ValidationReport:
    """Calibrate on the profile, simulate every measured case, and compare. Writes the calibrations; the
    caller writes the report."""
    grid = grid_of(meas.quick)
    workers = min(workers or default_workers(), len(meas.cases))
    t0 = time.perf_counter()
    cal = calibrations(profile, grid, meas.device.kind, workers)
    _write_calibrations(cal[1], out_dir, log)
    cases = [case_of(m) for m in meas.cases]
    predicted = _predict_cases(cases, profile, cal, traces, meas.sps_table, out_dir, seed, workers, progress)
    points = []
    for i, (case, m, (spec_m, base_m)) in enumerate(zip(cases, meas.cases, summarised(meas), strict=True)):
        pt = make_point(case, m.new_tokens, spec_m, base_m, *predicted[i], (m.tokens_per_s, m.baseline_tokens_per_s))
        points.append(pt)
        log_point(log, pt)
    return validation_report(meas, points, summarise(points), list(cal[1].values()), tolerance_pct,
                             time.perf_counter() - t0)
