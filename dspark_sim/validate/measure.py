"""Predict, then measure (`dspark-sim validate`): the simulator's tokens/s and speed-up against the engine's.

The loop, on whichever device the engine runs:
1. profile the engine's passes and steps (or take a given profile); its first round gives the SPS(B)
   table the engine's DSpark policy runs with;
2. measure acceptance on prompts held apart from the measured ones (teacher-forced traces, exact for
   greedy decoding; see measure/acceptance_trace.py);
3. run the engine on every point of the grid (temperature x batch x prompt length x policy), in rounds
   over the grid with a profile round before each, so the profile sees the host's speed of the minutes
   it measures; calibrate the cost model on the merged profile, then simulate every point's run with
   it and the held-apart acceptance trace (validate/predict.py);
4. report the errors (median and worst, by regime) and fail when the median exceeds the tolerance.
The simulator is told how this engine works (padded verify blocks, attention over the whole static
cache, a 2-token first draft pass, a leaner plain-decoding loop): those are facts about the engine,
not fitted knobs. Needs torch; everything measured is on disk (measurements.json) before predicting.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import torch

from dspark_sim.config.errors import InputError
from dspark_sim.config.io import write_atomic
from dspark_sim.config.measurements import EngineProfile, Estimator, ValidationMeasurements, ValidationReport
from dspark_sim.core.policies import make_policy
from dspark_sim.engine.cudagraphs import GraphedForward, StepGraphs
from dspark_sim.engine.data import load_corpus
from dspark_sim.engine.model import Transformer
from dspark_sim.engine.sampling import Sampling
from dspark_sim.fit.calibrate import calibrate
from dspark_sim.measure.acceptance_trace import acceptance_records, conditional_acceptance, live_steps
from dspark_sim.measure.host_speed import HostProbe, yardstick_s
from dspark_sim.measure.profile import ProfileGrid, engine_version, run_profile
from dspark_sim.measure.profile_merge import at_reference_speed, merge_profiles
from dspark_sim.validate.cases import ACCEPTANCE_PROMPTS, MEASURE_REPEATS, Grid, grid_of, policy_spec
from dspark_sim.validate.compare import error_pct, resolve_estimator
from dspark_sim.validate.engine_runs import (
    Engine,
    Prompts,
    gpu_warm,
    load_pair,
    measure_cases,
    prompt_sets,
    reference_step_s,
)
from dspark_sim.validate.predict import Log, predict_measurements
from dspark_sim.validate.report_data import MEASUREMENTS_FILE, command_line, measured_case
from dspark_sim.validate.trace_fields import attach_live_steps


def _host_probe(target: Transformer, draft: Transformer, dev: torch.device, estimator: Estimator) -> HostProbe | None:
    """On a CPU the host's own speed is probed throughout (measure/host_speed.py); 'probed' uses it."""
    if dev.type == "cpu":
        host = HostProbe(lambda: yardstick_s(target, draft))
        host.tick(force=True)
        return host
    if estimator == "probed":
        raise InputError("--estimator", None, "'probed' needs the host-speed yardstick, which validate reads on a "
                         "CPU only; allowed here: auto, median, best")
    return None


def _first_profile_round(target: Transformer, draft: Transformer, quick: bool, host: HostProbe | None,
                         log: Log) -> tuple[EngineProfile, ProfileGrid]:
    """The first profile round and the grid every round runs.

    Profile in rounds, one before each measurement round: a shared host's speed drifts by 14-55% within
    one run (docs/validation.md), and a calibration from a profile taken before all the measuring
    predicted whatever speed the host had then. Six whole-step repeats (two a round): one run of a step
    configuration carries +-8% of a 2-core host's noise, and the plain and gamma-1 loops' overheads are
    fitted from them."""
    log(f"profiling the engine's passes and steps (round 1 of {MEASURE_REPEATS}) ...")
    pgrid = ProfileGrid.quick() if quick else ProfileGrid(batch_sizes=(1, 2, 4, 8, 16, 32, 64), step_repeats=6)
    round_grid = pgrid.round_of(MEASURE_REPEATS)
    return run_profile(target, draft, round_grid, created_by="dspark-sim validate", host=host), round_grid


def _sps_table(first: EngineProfile, grid: Grid, device: str) -> dict[int, float]:
    """The SPS(B) table the engine's DSpark policy runs with while measuring (kept in the report)."""
    t_first = grid.temperatures[0]
    return calibrate(first, f"calibrated-{device}-T{t_first:g}",
                     temperature=t_first if t_first in {s.temperature for s in first.steps} else None)[1].sps_table


def _acceptance_part(target: Transformer, draft: Transformer, dev: torch.device, prompts: Prompts, grid: Grid,
                   t: float, sps: dict[int, float], seed: int) -> list[dict]:
    """Held-apart acceptance records at one temperature and prompt length; sampled DSpark's also hold the
    states its live steps start in (trace_fields.trace_confidence_field) at each batch size the grid
    measures (the states depend on it). The chains the draft drafts from every position (for the DSpark
    cases' confidences) are as long as the longest draft a case proposes."""
    chain = grid.longest_dspark_draft()
    part = acceptance_records(target, draft, prompts, grid.new_tokens, Sampling(temperature=t), seed, chain=chain)
    if chain and t > 0:
        name = f"dspark:{chain}"
        # all prompts at once on a GPU, where the tiny pair's steps cost the host's launches whatever the
        # rows (64 at a time: 9.5 s a batch size on the H200); on a CPU the rows' work is the cost, and 64
        # at a time are as fast as 192
        rows = len(prompts) if dev.type == "cuda" else 64
        for b in grid.batch_sizes:
            steps = live_steps(target, draft, prompts, grid.new_tokens, Sampling(temperature=t),
                               make_policy(policy_spec(name, sps)), seed, rows=rows, batch=b)
            attach_live_steps(part, steps, b, name)
    return part


def _record_acceptance(target: Transformer, draft: Transformer, dev: torch.device, grid: Grid, acceptance_set: Prompts,
                       sps: dict[int, float], seed: int, out_dir: Path,
                       log: Log) -> tuple[dict[float, Path], dict[str, list[float]]]:
    """One held-apart acceptance trace per temperature, written to `out_dir`, and its conditional acceptance."""
    traces: dict[float, Path] = {}
    acceptance: dict[str, list[float]] = {}
    out_dir.mkdir(parents=True, exist_ok=True)
    for t in grid.temperatures:
        recs = []
        for p in grid.prompt_tokens:
            prompts = [x[:p] for x in acceptance_set[:ACCEPTANCE_PROMPTS]]
            recs += _acceptance_part(target, draft, dev, prompts, grid, t, sps, seed)
        # gzipped: the chains make a temperature's trace about 4 MB of JSON (about 1 MB packed)
        path = out_dir / f"acceptance-T{t:g}.jsonl.gz"
        write_atomic(path, "".join(json.dumps(r) + "\n" for r in recs))
        traces[t] = path
        acceptance[f"{t:g}"] = conditional_acceptance(recs, 8)
        log(f"acceptance at T={t:g} (held-apart prompts): " + ", ".join(f"{c:.2f}" for c in acceptance[f'{t:g}'][:6]))
    return traces, acceptance


def _engine(target: Transformer, draft: Transformer, dev: torch.device, acceptance_set: Prompts,
            measure_set: Prompts) -> Engine:
    eng = Engine(target, draft, dev, acceptance_set, measure_set)
    if dev.type == "cuda":
        eng.target_forward, eng.draft_forward = GraphedForward(target), GraphedForward(draft)
        eng.step_graphs = StepGraphs(target, draft)
    return eng


def _store_profile(out_dir: Path, profile: EngineProfile, rounds: list[EngineProfile]) -> None:
    """The profile calibrated on, and the rounds merged into it (for re-analysis)."""
    write_atomic(out_dir / "profile.json", profile.model_dump_json(indent=1) + "\n")
    for r, prof in enumerate(rounds if len(rounds) > 1 else []):
        write_atomic(out_dir / f"profile-round-{r + 1}.json", prof.model_dump_json() + "\n")


def run_validation(*, device: str, quick: bool, preset: str, seed: int, cache_dir: str | Path | None,
                   profile: EngineProfile | None, out_dir: Path, tolerance_pct: float, log: Log = print,
                   progress: Callable[[], object] | None = None, dtype: str = "fp32", workers: int | None = None,
                   estimator: Estimator | None = None) -> ValidationReport:
    """Profile, measure and predict (see the module's docstring); `estimator` as resolve_estimator's."""
    grid = grid_of(quick)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    target, draft, dev = load_pair(preset, seed, cache_dir, device, dtype, log)
    timings["train_or_load_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    gpu_warm(dev)
    ref_before = reference_step_s(target, draft, dev)
    estimator = estimator or resolve_estimator(None, dev.type)
    host = _host_probe(target, draft, dev, estimator)
    profile_rounds: list[EngineProfile] = []
    round_grid = None
    first = profile
    if first is None:
        first, round_grid = _first_profile_round(target, draft, quick, host, log)
        profile_rounds.append(first)
    sps = _sps_table(first, grid, device)
    timings["profile_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    acceptance_set, measure_set = prompt_sets(load_corpus(2_000_000).eval, max(grid.prompt_tokens),
                                              ACCEPTANCE_PROMPTS)
    traces, acceptance = _record_acceptance(target, draft, dev, grid, acceptance_set, sps, seed, out_dir, log)
    timings["acceptance_s"] = time.perf_counter() - t0
    eng = _engine(target, draft, dev, acceptance_set, measure_set)

    def profile_round(r: int) -> None:
        if round_grid is None:  # a profile was given: nothing to profile
            return
        t = time.perf_counter()
        log(f"profiling round {r + 1} of {MEASURE_REPEATS} ...")
        profile_rounds.append(run_profile(target, draft, round_grid, created_by="dspark-sim validate", host=host))
        timings["profile_s"] += time.perf_counter() - t

    # measure everything first, then predict: the GPU stays busy (and its clocks up) while measuring
    t0 = time.perf_counter()
    t_profile_first = timings["profile_s"]
    gpu_warm(dev)
    log(f"measuring {len(grid.cases())} cases, {MEASURE_REPEATS} rounds ...")
    measured = measure_cases(eng, grid.cases(), sps, seed, repeats=MEASURE_REPEATS, between_rounds=profile_round,
                             host=host)
    drift_pct = error_pct(reference_step_s(target, draft, dev), ref_before)
    log(f"host drift: a reference run stepped {drift_pct:+.1f}% slower after measuring than at the start")
    timings["measure_s"] = time.perf_counter() - t0 - (timings["profile_s"] - t_profile_first)
    reference_s = host.reference() if host is not None else None
    # the profile given, or the rounds just taken merged as the estimator summarises them
    final = first if not profile_rounds else merge_profiles(
        [at_reference_speed(r, reference_s) if estimator == "probed" and reference_s is not None else r
         for r in profile_rounds], fastest_steps=estimator == "best")
    # everything measured is on disk before predicting (minutes on a slow host): a run cut short there is
    # finished with `validate --repredict` on any machine
    _store_profile(out_dir, final, profile_rounds)
    meas = ValidationMeasurements(
        device=final.device, engine_version=engine_version(), preset=preset, quick=quick,
        command=command_line(), acceptance_by_temperature=acceptance,
        host_drift_pct=drift_pct, timings_s=timings, sps_table=sps, profile_rounds=max(len(profile_rounds), 1),
        estimator=estimator, host_probe_reference_s=reference_s,
        host_probes=host.relative_timeline() if host is not None else None,
        cases=[measured_case(c, grid.new_tokens, spec_m, base_m)
               for c, (spec_m, base_m) in zip(grid.cases(), measured, strict=True)])
    write_atomic(out_dir / MEASUREMENTS_FILE, meas.model_dump_json(indent=1) + "\n")
    return predict_measurements(meas, final, traces, out_dir, tolerance_pct, seed, log, progress, workers)
