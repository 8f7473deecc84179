"""One scenario dict evaluated: by the closed form (`predict`) or the simulator (`run`).

Sweeps evaluate their points here (in worker processes: `evaluate_point` is picklable) and the
planner runs its capacity probes through `simulate_dict`.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from dspark_sim.config.errors import InputError
from dspark_sim.config.loader import scenario_from_dict
from dspark_sim.config.results import PredictResult, RunResult, SweepPointRecord
from dspark_sim.core.analytic import predict_scenario
from dspark_sim.sim import run_scenario
from dspark_sim.studies.sweep_points import canonical, scenario_dict_for


def predict_metrics(result: PredictResult) -> dict[str, Any]:
    """Headline figures of a predict document: its best point, and its first grid point."""
    fits = [p for p in result.points if p.fits_in_memory] or list(result.points)
    if not fits:
        return {}
    speedups = [p.best.speedup for p in fits]
    top = max(fits, key=lambda p: p.best.speedup)
    first = result.points[0]
    return {
        "speedup_max": top.best.speedup,
        "speedup_geomean": float(np.exp(np.mean(np.log(np.maximum(speedups, 1e-12))))),
        "best_gamma_at_max": top.best_gamma,
        "batch_at_max": top.batch_size,
        "context_at_max": top.context_tokens,
        "speedup": first.best.speedup,
        "best_gamma": first.best_gamma,
        "tau": first.best.tau,
        "tokens_per_s_per_user": first.best.tokens_per_s_per_user,
        "throughput_tokens_per_s_per_gpu": first.best.throughput_tokens_per_s_per_gpu,
        "baseline_tokens_per_s_per_user": first.baseline_tokens_per_s_per_user,
    }


_RUN_FIELDS = (
    "throughput_tokens_per_s_per_gpu", "tokens_per_s_per_user", "requests_per_s", "tau",
    "mean_verify_budget", "acceptance_rate", "mean_batch_size", "slo_met", "slo_attainment",
    "speedup_throughput", "speedup_tokens_per_s_per_user", "requests_finished",
)


def run_metrics(result: RunResult) -> dict[str, Any]:
    """Headline figures of a run document: its first speculative summary (and its baseline)."""
    summaries = list(result.summaries)
    if not summaries:
        return {}
    main = next((s for s in summaries if s.variant != "baseline"), summaries[0])
    out: dict[str, Any] = {"variant": main.variant, "policy": main.policy}
    for f in _RUN_FIELDS:
        out[f] = getattr(main, f, None)
    out["ttft_p99_s"] = main.ttft_s.p99
    out["tpot_p99_ms"] = main.tpot_ms.p99
    base = next((s for s in summaries if s.variant == "baseline"), None)
    if base is not None:
        out["baseline_throughput_tokens_per_s_per_gpu"] = base.throughput_tokens_per_s_per_gpu
        out["baseline_tokens_per_s_per_user"] = base.tokens_per_s_per_user
    return out


def simulate_dict(raw: dict, source: str) -> RunResult:
    """Run the simulator on a resolved scenario dict -> RunResult (the `run` command's document).

    The simulator's public entry, `dspark_sim.sim.run_scenario`, reads a scenario file, so the dict
    (names resolved, paths absolute) goes through a private temporary file; JSON is YAML.
    """
    with tempfile.TemporaryDirectory(prefix="dspark-sweep-") as tmp:
        path = Path(tmp) / "scenario.yaml"
        path.write_text(json.dumps(raw), encoding="utf-8")
        try:
            run = run_scenario(path)
        except InputError as exc:  # name the user's files, not the temporary one
            raise InputError(source, exc.field, exc.message) from None
    return run.result


def evaluate(command: str, raw: dict, source: str) -> tuple[dict, dict[str, Any]]:
    """(result document, headline metrics) of one scenario dict."""
    if command == "predict":
        result = predict_scenario(scenario_from_dict(raw, source))
        return result.model_dump(mode="json"), predict_metrics(result)
    run = simulate_dict(raw, source)
    return run.model_dump(mode="json"), run_metrics(run)


def evaluate_point(task: dict) -> dict:
    """Worker entry (module level, picklable): one point -> a `SweepPointRecord` as a dict.

    Bad input for this point (a value that does not validate, a model that does not fit) is an
    'error' record, not a crash of the sweep.
    """
    t0 = time.perf_counter()
    source = f"{task['source']} (point {canonical(task['params'])})"
    rec: dict[str, Any] = {
        "key": task["key"], "index": task["index"], "params": task["params"], "seed": task["seed"],
    }
    try:
        raw = scenario_dict_for(task["base_raw"], Path(task["base_dir"]), task["overrides"], task["seed"])
        doc, metrics = evaluate(task["command"], raw, source)
        rec.update(status="ok", metrics=metrics, result=doc if task.get("keep_result", True) else None)
    except InputError as exc:
        rec.update(status="error", error=str(exc))
    except Exception as exc:  # a bug in one point must not lose the others
        rec.update(status="error", error=f"{type(exc).__name__}: {exc}")
    rec["elapsed_s"] = time.perf_counter() - t0
    return SweepPointRecord.model_validate(rec).model_dump(mode="json")
