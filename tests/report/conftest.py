"""Result documents and dashboards for the report tests, built once per session (a few seconds)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from .cdp import Chromium, find_chromium

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
QUICKSTART = REPO / "scenarios" / "quickstart.yaml"
DSPARK = REPO / "scenarios" / "deepseek-v4-flash-dspark-vs-mtp1.yaml"


def plan_doc() -> dict:
    """A small plan document (the planner itself is tested in tests/studies/test_plan.py)."""
    def cand(hw, tp, spec, speculative, cap, replicas, price):
        usd = replicas * tp * price
        return {
            "hardware": hw, "tensor_parallel": tp, "speculation": spec, "speculative": speculative,
            "feasible": True, "replica_capacity": cap, "replica_capacity_tokens_per_s": cap * 320,
            "simulations": 7, "replicas": replicas, "gpus": replicas * tp, "capacity": cap * replicas,
            "usd_per_hour": usd, "usd_per_million_output_tokens": usd / (100 * 326 * 3600) * 1e6,
            "usd_per_million_output_tokens_at_capacity": tp * price / (cap * 326 * 3600) * 1e6,
            "at_capacity": {"ttft_p99_s": 0.2, "tpot_p99_ms": 11.5, "tokens_per_s_per_user": 130.0},
        }
    cands = [cand("h100-sxm", 1, "eagle γ=3", True, 31.3, 4, 3.0), cand("h100-sxm", 1, "no speculation", False,
                                                                        22.6, 5, 3.0),
             cand("h200-sxm", 1, "eagle γ=3", True, 33.8, 3, 4.0), cand("h200-sxm", 1, "no speculation", False,
                                                                        31.2, 4, 4.0)]
    best = min(cands, key=lambda c: c["usd_per_million_output_tokens"])
    no = min((c for c in cands if not c["speculative"]), key=lambda c: c["usd_per_million_output_tokens"])
    return {"kind": "plan", "name": "test plan", "model": "llama-3.1-8b", "load_kind": "requests_per_s",
            "load": 100.0, "slo": {"ttft_p99_s": 1.0, "tpot_p99_ms": 12.0, "min_tokens_per_s_per_user": None},
            "prices_usd_per_gpu_hour": {"h100-sxm": 3.0, "h200-sxm": 4.0}, "candidates": cands, "best": best,
            "best_without_speculation": no, "best_with_speculation": best,
            "saving_fraction": 1 - best["usd_per_million_output_tokens"] / no["usd_per_million_output_tokens"],
            "wall_s": 1.0}


VALIDATION = {"kind": "validation", "acceptance_by_temperature": {"0": [0.8, 0.7]}, "points": [
    {"label": "tiny b1 g3", "predicted_tokens_per_s": 410.0, "measured_tokens_per_s": 389.0},
    {"label": "tiny b4 g3", "predicted_tokens_per_s": 1210.0, "measured_tokens_per_s": 1302.0},
    {"label": "tiny b8 g1", "predicted_tokens_per_s": 1820.0, "measured_tokens_per_s": 1650.0},
]}


@pytest.fixture(scope="session")
def documents(tmp_path_factory) -> dict[str, Path]:
    """A run folder (sweep over concurrency, two policies, per-request files), a predict JSON, a sweep
    folder, a plan JSON and a validation report."""
    from dspark_sim.cli.run import write_outputs
    from dspark_sim.config.loader import load_scenario
    from dspark_sim.core.analytic import predict_scenario
    from dspark_sim.sim import run_scenario
    from dspark_sim.studies.sweep import run_sweep

    root = tmp_path_factory.mktemp("docs")
    run = run_scenario(DSPARK, ["sweep.values=[1, 32, 128]", "simulation.max_simulated_s=6",
                                "simulation.warmup_s=1"], with_records=True)
    write_outputs(run, root / "run")
    (root / "predict.json").write_text(predict_scenario(load_scenario(QUICKSTART)).model_dump_json())
    sweep = root / "sweep.yaml"
    sweep.write_text(f"""
name: report_sweep
base: {QUICKSTART}
command: run
set: [workload.num_requests=60]
seed_from: [workload.arrivals.rate_per_s]
parameters:
  workload.arrivals.rate_per_s: [2, 8, 16]
groups:
  spec:
    gamma1: {{policy: {{kind: fixed, gamma: 1}}}}
    gamma3: {{policy: {{kind: fixed, gamma: 3}}}}
""")
    run_sweep(sweep, root / "sweep", executor="inline")
    (root / "plan.json").write_text(json.dumps(plan_doc()))
    (root / "validation.json").write_text(json.dumps(VALIDATION))
    return {"run": root / "run", "predict": root / "predict.json", "sweep": root / "sweep",
            "plan": root / "plan.json", "validation": root / "validation.json", "root": root,
            "scenario_run": run}


@pytest.fixture(scope="session")
def browser():
    """Headless Chromium (Debian's package), or a skip with the reason; under CI=true a missing browser fails."""
    path = find_chromium()
    if path is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("CI=true but no Chromium found: .ci/run installs .ci/debian-packages (chromium) "
                        "when apt-get is available; install it or set DSPARK_CHROMIUM")
        pytest.skip("Chromium not installed (Debian: apt-get install chromium); browser tests are skipped "
                    "outside CI (CI=true makes this a failure)")
    with Chromium(path, width=1400, height=1000) as b:
        yield b
