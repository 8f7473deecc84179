"""benchmarks/tp_engine.py on CPU/gloo with tiny shapes: the path a multi-GPU run takes, end to end."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("torch")

from dspark_sim.measure.tp_table import MeasureConfig, measure_args  # noqa: E402
from dspark_sim.validate.tp import model_specs, predict  # noqa: E402

BENCH = Path(__file__).resolve().parents[3] / "benchmarks" / "tp_engine.py"


def test_tp_engine_benchmark_cpu(capsys):
    spec = importlib.util.spec_from_file_location("tp_engine", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    report = mod.main(["--device", "cpu", "--shape", "test-target", "--draft-shape", "test-draft", "--tp", "1,2",
                       "--batch", "1,2", "--prompt-len", "8", "--new-tokens", "8", "--gamma", "2", "--repeats", "1",
                       "--allreduce-tokens", "1,64,1024"])
    out = capsys.readouterr()
    assert json.loads(out.out)["tp"] == [1, 2]
    assert "base tok/s" in out.err  # the table
    rows = report["rows"]
    assert [(r["tp"], r["batch"]) for r in rows] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    for r in rows:
        assert r["baseline_decode_tok_s"] > 0 and r["predicted_baseline_decode_tok_s"] > 0
        assert r["spec_decode_tok_s"] > 0 and r["predicted_spec_decode_tok_s"] > 0
        assert r["ranks_agree"] and r["greedy_identical"] and r["tau"] >= 1.0
    # TP 1 is calibrated on its own profile; TP 2 adds the fitted gloo all-reduces to the prediction
    assert report["hardware"] == "calibrated on the TP-1 run"
    # the profile it was calibrated on is kept, loadable as a profile (to re-calibrate later)
    from dspark_sim.config.measurements import EngineProfile

    kept = EngineProfile.model_validate(report["profile"])
    assert {s.role for s in kept.samples} == {"target", "draft"} and kept.steps
    assert report["interconnect_used"]["efficiency"] == 1.0
    assert report["interconnect_used"]["latency_us"] == pytest.approx(report["interconnect_fit"]["latency_us"])
    tp2 = [r for r in rows if r["tp"] == 2]
    assert all(r["predicted_baseline_comm_share"] > 0 for r in tp2)
    assert all("baseline_scaling_measured" in r for r in tp2)
    assert rows[2]["weight_gb_per_rank"] < rows[0]["weight_gb_per_rank"]  # sharded
    # the all-reduces are timed back to back and between row-parallel matmuls; the latter are fitted
    contexts = sorted({s["context"] for s in report["allreduce"]})
    assert contexts == ["between-matmuls", "burst"]
    assert all(s["median_s"] > 0 for s in report["allreduce"])
    assert report["interconnect_fit"]["context"] == "between-matmuls"
    assert report["interconnect_fit_other"]["context"] == "burst"


def test_tp_engine_benchmark_refuses_a_degree_the_shapes_cannot_split(capsys):
    spec = importlib.util.spec_from_file_location("tp_engine", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    with pytest.raises(SystemExit) as exc:
        mod.main(["--device", "cpu", "--tp", "1,3"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: test-target: n_heads: 4 attention heads do not split over tensor parallel degree 3 "
                   "(tp must divide the head count)"]


def test_tp_engine_benchmark_replicated_draft(capsys):
    """--replicate-draft: each rank drafts with the whole draft (no collectives there), ranks agree,
    greedy output is the target's, and the prediction prices the draft passes at TP 1."""
    spec = importlib.util.spec_from_file_location("tp_engine", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    report = mod.main(["--device", "cpu", "--shape", "test-target", "--draft-shape", "test-draft", "--tp", "2",
                       "--batch", "2", "--prompt-len", "8", "--new-tokens", "8", "--gamma", "2", "--repeats", "1",
                       "--allreduce-tokens", "1,64", "--no-calibrate", "--replicate-draft"])
    capsys.readouterr()
    assert report["draft_replicated"] is True
    (row,) = report["rows"]
    assert row["ranks_agree"] and row["greedy_identical"] and row["spec_decode_tok_s"] > 0
    sharded = predict(row["batch"], row["cache_len"], row["tau"], 2, *_hw_and_specs(),
                      MeasureConfig(target_shape="test-target", draft_shape="test-draft", gamma=2))
    assert sharded.spec_comm_share is not None
    assert row["predicted_spec_comm_share"] < sharded.spec_comm_share


def _hw_and_specs():
    from dspark_sim.config.loader import load_hardware_profile

    cfg = MeasureConfig(target_shape="test-target", draft_shape="test-draft", gamma=2)
    targs, dargs, _ = measure_args(cfg)
    return (load_hardware_profile("cpu-generic"), *model_specs(cfg, targs, dargs))
