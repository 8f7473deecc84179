"""`dspark-sim sweep`: expansion, point seeds, executors agree, durable records, resume after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dspark_sim.config.errors import InputError
from dspark_sim.config.schema import SweepSpec
from dspark_sim.studies.sweep import POINTS_FILE, read_points, run_sweep
from dspark_sim.studies.sweep_points import expand, load_sweep, point_key, point_seed

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "scenarios" / "quickstart.yaml"

PREDICT_SWEEP = f"""
name: t_predict
base: {QUICKSTART}
command: predict
set: ["predict.batch_sizes=[1, 32]", "predict.context_lengths=[1024]", "predict.gammas=[1, 2, 3, 4]"]
parameters:
  deployment.hardware: [h200-sxm, h100-sxm]
  acceptance.conditional: [[0.6], [0.8]]
groups:
  drafter:
    eagle1: {{deployment.drafter: {{kind: eagle, num_layers: 1}}}}
    eagle2: {{deployment.drafter: {{kind: eagle, num_layers: 2}}}}
"""

RUN_SWEEP = f"""
name: t_run
base: {QUICKSTART}
command: run
set: [workload.num_requests=40]
seed: 5
parameters:
  workload.arrivals.rate_per_s: [2, 6]
groups:
  spec:
    g1: {{policy: {{kind: fixed, gamma: 1}}}}
    g3: {{policy: {{kind: fixed, gamma: 3}}}}
"""


def _strip(rec: dict) -> dict:
    return {k: v for k, v in rec.items() if k != "elapsed_s"}


def _by_key(folder: Path) -> dict[str, dict]:
    return {r["key"]: _strip(r) for r in read_points(folder / POINTS_FILE, repair=False)}


# --------------------------------------------------------------------------------------------
# expansion and seeds
# --------------------------------------------------------------------------------------------


def test_grid_expansion_ranges_and_groups():
    spec = SweepSpec.model_validate({
        "name": "x", "base": "b.yaml",
        "parameters": {"a": [1, 2, 3], "b": {"min": 1, "max": 100, "log": True, "num": 3},
                       "c": {"min": 1, "max": 3, "integer": True, "num": 5}},
        "groups": {"g": {"one": {"p": 1}, "two": {"p": 2}}},
    })
    points, dups = expand(spec)
    assert dups == 0
    assert len(points) == 3 * 3 * 3 * 2  # integer range 1..3 in 5 steps dedupes to 3 values
    assert sorted({p["b"] for p in points}) == [1.0, 10.0, 100.0]
    assert sorted({p["c"] for p in points}) == [1, 2, 3]
    assert {p["g"] for p in points} == {"one", "two"}


def test_random_mode_is_deterministic_and_in_range():
    raw = {"name": "x", "base": "b.yaml", "mode": "random", "samples": 50, "seed": 7,
           "parameters": {"r": {"min": 0.5, "max": 0.9}, "n": {"min": 1, "max": 256, "log": True, "integer": True},
                          "k": ["a", "b"]}}
    a, _ = expand(SweepSpec.model_validate(raw))
    b, _ = expand(SweepSpec.model_validate(raw))
    assert a == b
    assert all(0.5 <= p["r"] <= 0.9 and 1 <= p["n"] <= 256 and isinstance(p["n"], int) for p in a)
    c, _ = expand(SweepSpec.model_validate({**raw, "seed": 8}))
    assert a != c


def test_point_seed_depends_on_values_not_order():
    p1 = {"a": 1, "b": [0.7], "c": {"kind": "iid", "alpha": 0.5}}
    p2 = {"c": {"alpha": 0.5, "kind": "iid"}, "b": [0.7], "a": 1}
    assert point_key(p1) == point_key(p2)
    assert point_seed(p1, 0) == point_seed(p2, 0)
    assert point_seed(p1, 0) != point_seed(p1, 1)
    assert point_seed({**p1, "a": 2}, 0) != point_seed(p1, 0)
    # seed_from: only the named parameters feed the seed (common random numbers across the rest)
    assert point_seed({**p1, "a": 2}, 0, ["b"]) == point_seed(p1, 0, ["b"])


def test_bad_sweep_files_are_one_line_errors(tmp_path, run_cli):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"name: b\nbase: {QUICKSTART}\nparameters:\n  acceptance.alpha: {{min: 0.5}}\n")
    r = run_cli("sweep", str(bad), "-o", str(tmp_path / "o"))
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "parameters" in r.stderr and "max" in r.stderr
    typo = tmp_path / "typo.yaml"
    typo.write_text(f"name: b\nbase: {QUICKSTART}\nparameters:\n  deployment.replicaz: [1, 2]\n")
    r = run_cli("sweep", str(typo), "-o", str(tmp_path / "o2"))
    assert r.returncode == 2 and "replicaz" in r.stderr and r.stderr.count("\n") == 1
    missing = tmp_path / "missing.yaml"
    missing.write_text("name: b\nbase: nowhere.yaml\nparameters:\n  seed: [1]\n")
    with pytest.raises(InputError, match="not found"):
        load_sweep(missing)


# --------------------------------------------------------------------------------------------
# running
# --------------------------------------------------------------------------------------------


def test_predict_sweep_inline_equals_local_processes(tmp_path, write_yaml):
    path = write_yaml(PREDICT_SWEEP, "sweep.yaml")
    a = run_sweep(path, tmp_path / "inline", executor="inline")
    b = run_sweep(path, tmp_path / "local", executor="local", workers=2)
    assert a.total_points == b.total_points == 8 and a.errors == b.errors == 0
    ra, rb = _by_key(tmp_path / "inline"), _by_key(tmp_path / "local")
    assert ra == rb  # same records (wall time aside) whatever the executor and order
    rec = next(iter(ra.values()))
    assert rec["result"]["kind"] == "predict" and rec["metrics"]["speedup"] > 1
    summary = json.loads((tmp_path / "local" / "summary.json").read_text())
    assert summary["kind"] == "sweep" and summary["finished"] == 8


def test_run_sweep_metrics_and_worker_count_independence(tmp_path, write_yaml):
    path = write_yaml(RUN_SWEEP, "run_sweep.yaml")
    one = run_sweep(path, tmp_path / "w1", executor="local", workers=1)
    two = run_sweep(path, tmp_path / "w2", executor="local", workers=2)
    assert one.errors == 0 and one.finished == 4
    assert _by_key(tmp_path / "w1") == _by_key(tmp_path / "w2")
    m = one.points[0].metrics
    assert m["throughput_tokens_per_s_per_gpu"] > 0 and m["baseline_tokens_per_s_per_user"] > 0
    assert two.points[0].seed == one.points[0].seed


def test_error_points_are_recorded_not_fatal(tmp_path, write_yaml):
    path = write_yaml(f"""
name: t_err
base: {QUICKSTART}
command: predict
set: ["predict.batch_sizes=[1]", "predict.context_lengths=[1024]"]
parameters:
  deployment.tensor_parallel: [1, 16]
""", "err.yaml")
    res = run_sweep(path, tmp_path / "o", executor="inline")
    assert res.finished == 2 and res.errors == 1
    bad = next(p for p in res.points if p.status == "error")
    assert "tensor_parallel" in bad.error


def test_resume_skips_finished_points_and_cuts_a_torn_line(tmp_path, write_yaml):
    path = write_yaml(PREDICT_SWEEP, "sweep.yaml")
    out = tmp_path / "o"
    first = run_sweep(path, out, executor="inline", limit=3)
    assert first.finished == 3
    points_file = out / POINTS_FILE
    before = points_file.read_bytes()
    with open(points_file, "ab") as fh:  # a writer killed mid-record
        fh.write(b'{"key": "deadbeef", "status": "ok", "par')
    res = run_sweep(path, out, executor="inline")
    assert res.resumed == 3 and res.finished == 8
    data = points_file.read_bytes()
    assert data.startswith(before)  # finished points untouched, not redone
    lines = data.decode().splitlines()
    assert len(lines) == 8 and all(json.loads(x)["status"] == "ok" for x in lines)
    assert len({json.loads(x)["key"] for x in lines}) == 8
    # a second resume has nothing to do
    again = run_sweep(path, out, executor="inline")
    assert again.resumed == 8 and points_file.read_bytes() == data


def test_out_dir_of_another_sweep_is_refused(tmp_path, write_yaml):
    out = tmp_path / "o"
    run_sweep(write_yaml(PREDICT_SWEEP, "a.yaml"), out, executor="inline", limit=1)
    other = write_yaml(PREDICT_SWEEP.replace("[[0.6], [0.8]]", "[[0.5], [0.9]]"), "b.yaml")
    with pytest.raises(InputError, match="different sweep"):
        run_sweep(other, out, executor="inline")


def test_killed_sweep_process_resumes_without_loss(tmp_path, write_yaml):
    """SIGKILL a real `dspark-sim sweep` mid-run, then resume: no lost, duplicated or half-written points."""
    path = write_yaml(f"""
name: t_kill
base: {QUICKSTART}
command: run
set: [workload.num_requests=60]
parameters:
  workload.arrivals.rate_per_s: [1, 2, 3, 4, 5, 6, 7, 8]
""", "kill.yaml")
    out = tmp_path / "o"
    cmd = [sys.executable, "-m", "dspark_sim.cli.main", "sweep", str(path), "-o", str(out), "--workers", "1",
           "--no-report", "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    points = out / POINTS_FILE
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if points.exists() and points.read_bytes().count(b"\n") >= 2:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its worker processes
    proc.wait(timeout=30)
    done_before = {r["key"]: _strip(r) for r in read_points(points, repair=False)}
    assert 2 <= len(done_before) < 8
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    after = _by_key(out)
    assert len(after) == 8
    assert len(points.read_text().splitlines()) == 8
    for key, rec in done_before.items():
        assert after[key] == rec
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed"] == len(done_before)


def test_sweep_cli_prints_table_and_writes_report(tmp_path, write_yaml, run_cli):
    path = write_yaml(PREDICT_SWEEP, "sweep.yaml")
    r = run_cli("sweep", str(path), "-o", str(tmp_path / "o"), "--workers", "2")
    assert r.returncode == 0, r.stderr
    assert "t_predict" in r.stdout and "8/8 points" in r.stdout
    html = (tmp_path / "o" / "report.html").read_text()
    assert "plotly" in html and "<script src=" not in html


def test_ray_executor_matches_local(tmp_path, write_yaml):
    """A small sweep on a local Ray instance gives the same records as local processes."""
    pytest.importorskip("ray")
    path = write_yaml(RUN_SWEEP, "run_sweep.yaml")
    run_sweep(path, tmp_path / "local", executor="local", workers=2)
    t0 = time.perf_counter()
    res = run_sweep(path, tmp_path / "ray", executor="ray", workers=2)
    assert res.errors == 0 and res.finished == 4
    assert _by_key(tmp_path / "ray") == _by_key(tmp_path / "local")
    print(f"ray sweep: {time.perf_counter() - t0:.1f} s")
