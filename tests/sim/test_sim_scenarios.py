"""The bundled simulator scenarios load, validate and set up (they are run in full by hand / CI)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dspark_sim.config.loader import load_scenario
from dspark_sim.sim.run import Simulation, run_scenario

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"
OURS = ["long-context", "deepseek-v4-flash-dspark-vs-mtp1", "static-mtp-high-concurrency", "batch-size-effect",
        "specdecode-bench-traces"]


@pytest.mark.parametrize("name", OURS)
def test_scenario_validates(name):
    sc = load_scenario(SCENARIOS / f"{name}.yaml")
    assert sc.name == name and sc.sweep is not None
    if sc.acceptance.kind != "trace":  # the trace scenario reads the SpecDecode-Bench traces, not in the repo
        sim = Simulation(sc)
        assert sim.costs.fast  # the scalar cost path reproduces the shared cost model here


@pytest.mark.parametrize("name", ["long-context", "batch-size-effect"])
def test_scenario_runs_briefly(name):
    run = run_scenario(SCENARIOS / f"{name}.yaml", ["simulation.max_simulated_s=3", "simulation.warmup_s=0",
                                                    "sweep.values=[1024]" if name == "long-context" else
                                                    "sweep.values=[4]"])
    assert {s.variant for s in run.result.summaries} >= {"main", "baseline"}
    assert not run.result.skipped
