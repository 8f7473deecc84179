"""What `dspark-sim run` prints and writes."""

from __future__ import annotations

import csv
import json

import pytest

from dspark_sim.cli.run import run_command
from dspark_sim.config.results import RunResult, RunTimeSeriesDoc

from .sim_helpers import base_dict, with_sets, write


def test_out_dir_files(tmp_path, capsys):
    d = with_sets(base_dict(), "workload.num_requests=30", "slo={ttft_p99_s: 5, tpot_p99_ms: 100}",
                  "simulation.time_series_interval_s=0.1")
    run_command(write(tmp_path, d), [], out_dir=tmp_path / "out", progress=False)
    printed = capsys.readouterr().out
    assert "main" in printed and "baseline" in printed and "tok/s/user" in printed
    result = RunResult.model_validate_json((tmp_path / "out" / "summary.json").read_text())
    main = next(s for s in result.summaries if s.variant == "main")
    base = next(s for s in result.summaries if s.variant == "baseline")
    assert main.speculative and not base.speculative and base.baseline_of == ["main"]
    assert main.speedup_tokens_per_s_per_user == pytest.approx(main.tokens_per_s_per_user / base.tokens_per_s_per_user)
    assert main.slo_attainment is not None and 0 <= main.slo_attainment <= 1
    assert main.ttft_s.p50 <= main.ttft_s.p90 <= main.ttft_s.p99
    assert len(main.acceptance_per_position) == 3
    assert main.draft_time_fraction + main.verify_time_fraction + main.overhead_time_fraction == pytest.approx(1.0)
    series = RunTimeSeriesDoc.model_validate_json((tmp_path / "out" / "timeseries.json").read_text())
    s = next(x for x in series.series if x.variant == "main")
    assert len(s.t_s) == len(s.verify_budget) == len(s.kv_fraction)
    assert all(v is None or 0 <= v <= 3 for v in s.verify_budget)
    lines = (tmp_path / "out" / "requests_main.jsonl").read_text().splitlines()
    assert len(lines) == 30
    rec = json.loads(lines[0])
    assert {"ttft_s", "tpot_ms", "verified", "accepted", "preemptions"} <= rec.keys()


def test_csv_per_request_output_and_json_stdout(tmp_path, capsys):
    d = with_sets(base_dict(), "workload.num_requests=10", "simulation.per_request_output=csv",
                  "simulation.simulate_baseline=false")
    run_command(write(tmp_path, d), [], json_out=True, out_dir=tmp_path / "o", progress=False)
    doc = json.loads(capsys.readouterr().out)
    assert doc["kind"] == "run" and [s["variant"] for s in doc["summaries"]] == ["main"]
    rows = list(csv.DictReader((tmp_path / "o" / "requests_main.csv").open()))
    assert len(rows) == 10 and int(rows[0]["output_tokens"]) >= 1


def test_sweep_curves_and_table(tmp_path, capsys):
    d = with_sets(base_dict(), "workload.arrivals={kind: closed_loop, concurrency: 1}", "workload.num_requests=40",
                  "slo={min_tokens_per_s_per_user: 100}",
                  'variants=[{name: g1, set: ["policy={kind: fixed, gamma: 1}"]}]',
                  "sweep={path: workload.arrivals.concurrency, values: [1, 16, 64]}")
    run = run_command(write(tmp_path, d), [], progress=False)
    out = capsys.readouterr().out
    assert "g1" in out and "sweep" in out
    names = {c.variant for c in run.result.curves}
    assert names == {"main", "g1", "baseline"}
    g1 = next(c for c in run.result.curves if c.variant == "g1")
    assert len(g1.matched) == 3
    assert run.result.sweep_path == "workload.arrivals.concurrency"


def test_default_scenario_runs(capsys):
    run = run_command(None, ["workload.num_requests=20"], progress=False)
    assert run.result.scenario == "quickstart"
    assert {s.variant for s in run.result.summaries} == {"main", "baseline"}
