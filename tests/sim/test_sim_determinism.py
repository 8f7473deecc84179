"""Same seed, same bytes; and common random numbers across the baseline and every variant."""

from __future__ import annotations

import json

import numpy as np

from dspark_sim.cli.run import run_command
from dspark_sim.sim.run import Simulation, run_scenario

from .sim_helpers import base_dict, scenario, with_sets, write


def _scenario_file(tmp_path):
    d = with_sets(
        base_dict(seed=42),
        "workload.arrivals={kind: closed_loop, concurrency: 4}",
        "workload.num_requests=40",
        "policy={kind: dspark, gamma_max: 4, calibration_error: 0.4}",
        "acceptance={kind: per_request, mean_alpha: 0.75, concentration: 8}",
        'variants=[{name: fixed2, set: ["policy={kind: fixed, gamma: 2}"]}]',
        "sweep={path: workload.arrivals.concurrency, values: [1, 8]}",
    )
    return write(tmp_path, d)


def test_same_seed_same_summary_bytes(tmp_path):
    path = _scenario_file(tmp_path)
    a = run_scenario(path, []).result.model_dump_json(indent=2)
    b = run_scenario(path, []).result.model_dump_json(indent=2)
    assert a == b
    doc = json.loads(a)
    # 2 sweep values x (main + fixed2) + one shared baseline per sweep value
    assert len(doc["summaries"]) == 6


def test_cli_outputs_are_byte_identical(tmp_path, capsys):
    path = _scenario_file(tmp_path)
    outs = []
    for i in range(2):
        run_command(path, [], json_out=True, out_dir=tmp_path / f"out{i}", progress=False)
        outs.append(capsys.readouterr().out)
    assert outs[0] == outs[1]
    files = sorted(p.name for p in (tmp_path / "out0").iterdir())
    assert "summary.json" in files and "timeseries.json" in files
    for name in files:
        assert (tmp_path / "out0" / name).read_bytes() == (tmp_path / "out1" / name).read_bytes(), name


def test_another_seed_changes_the_result(tmp_path):
    a = run_scenario(_scenario_file(tmp_path), []).result.model_dump_json()
    b = run_scenario(_scenario_file(tmp_path), ["seed=43"]).result.model_dump_json()
    assert a != b


def test_baseline_and_variants_see_the_same_requests():
    d = with_sets(base_dict(seed=9), "workload.num_requests=50")
    runs = {}
    for name, sets in {
        "spec": [],
        "gamma5": ["policy={kind: fixed, gamma: 5}", "acceptance={kind: iid, alpha: 0.5}"],
        "baseline": ["policy={kind: none}", "deployment.drafter={kind: none}"],
    }.items():
        runs[name] = Simulation(scenario(d, *sets)).run()
    ref = runs["spec"].requests
    for sim in runs.values():
        np.testing.assert_array_equal(sim.requests.arrival, ref.arrival)
        np.testing.assert_array_equal(sim.requests.prompt, ref.prompt)
        np.testing.assert_array_equal(sim.requests.output, ref.output)
        np.testing.assert_array_equal(sim.requests.step_seed, ref.step_seed)
        np.testing.assert_array_equal(sim.out.gen, ref.output)
