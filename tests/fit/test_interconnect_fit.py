"""The all-reduce model with a fixed cost per collective: the fit recovers (launch, per-hop latency,
bandwidth) from two world sizes, refuses to split launch from latency with one, a profile without a
launch cost prices exactly as before, and benchmarks/tp_engine.py --repredict re-predicts a report."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from dspark_sim.config.loader import load_hardware_profile, load_model_preset
from dspark_sim.config.schema import HardwareProfile
from dspark_sim.core.costmodel import forward_cost
from dspark_sim.core.models import model_stats
from dspark_sim.core.passes import uniform_batch
from dspark_sim.fit.interconnect import (
    allreduce_time_s,
    apply_interconnect_fit,
    fit_interconnect,
    interconnect_yaml,
)

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "tp_engine.py"
SIZES = [2**k for k in range(13, 23)]  # 8 KB .. 4 MB, the engine's all-reduce messages


def _samples(launch_us: float, lat_us: float, bw_gbps: float, worlds=(2, 4), sizes=SIZES) -> list[dict]:
    return [{"world_size": w, "message_bytes": b,
             "median_s": float(allreduce_time_s(w, b, lat_us, bw_gbps, launch_us=launch_us))}
            for w in worlds for b in sizes]


def test_two_world_sizes_recover_launch_latency_and_bandwidth():
    fit = fit_interconnect(_samples(9.0, 1.5, 120.0), load_hardware_profile("h200-sxm"))
    assert fit.launch_identified and fit.latency_identified and fit.bandwidth_identified
    assert fit.launch_us == pytest.approx(9.0, rel=1e-6)
    assert fit.latency_us == pytest.approx(1.5, rel=1e-6)
    assert fit.bandwidth_gbps == pytest.approx(120.0, rel=1e-6)
    assert fit.max_abs_error_pct < 1e-6 and fit.notes == []
    d = fit.to_dict()
    assert d["launch_us"] == fit.launch_us and d["launch_identified"] is True


def test_one_world_size_leaves_launch_at_the_base():
    base = load_hardware_profile("h200-sxm").model_copy(update={"collective_launch_us": 4.0})
    fit = fit_interconnect(_samples(4.0, 2.0, 150.0, worlds=(2,)), base)
    assert not fit.launch_identified and fit.launch_us == 4.0
    assert any("collective launch not identified" in n and "collinear" in n for n in fit.notes)
    # the latency is fitted over the base's launch cost: the generating figures come back
    assert fit.latency_identified and fit.latency_us == pytest.approx(2.0, rel=1e-6)
    assert fit.bandwidth_gbps == pytest.approx(150.0, rel=1e-6)
    # without a base: no launch cost, the whole fixed part goes to the hops (the old model)
    alone = fit_interconnect(_samples(4.0, 2.0, 150.0, worlds=(4,)))
    assert alone.launch_us == 0.0 and not alone.launch_identified
    assert alone.latency_us == pytest.approx(2.0 + 4.0 / 6, rel=1e-6)


def test_unidentified_launch_keeps_the_base():
    base = load_hardware_profile("h200-sxm").model_copy(update={"collective_launch_us": 3.0})
    big = fit_interconnect(_samples(0.5, 0.5, 180.0, sizes=[2**28, 2**29]), base)  # bandwidth-bound only
    assert not big.launch_identified and big.launch_us == 3.0
    assert any("collective launch not identified" in n for n in big.notes)


def test_no_launch_cost_prices_exactly_as_before():
    """collective_launch_us = 0 (the schema default): forward_cost and allreduce_time_s bit for bit as the
    hop-only formula; a launch cost adds launch x all-reduces, on TP > 1 only."""
    hw = load_hardware_profile("h200-sxm").model_copy(update={"collective_launch_us": 0.0})
    model = load_model_preset("llama-3.1-8b")
    stats = model_stats(model)
    link = hw.interconnect_bandwidth_gbps * 1e9 * hw.efficiency.interconnect
    launched = hw.model_copy(update={"collective_launch_us": 12.5})
    for tp in (1, 2, 4, 8):
        for tokens in (1, 16, 512):
            batch = uniform_batch(1, tokens, 1024)
            cost = forward_cost(model, hw, batch, tp, stats=stats)
            msg = tokens * model.hidden_size * 2
            old = (2 * model.num_layers * (2 * (tp - 1) * hw.interconnect_latency_us * 1e-6
                                           + 2 * (tp - 1) / tp * msg / link)) if tp > 1 else 0.0
            assert float(np.asarray(cost.comm_s)) == old
            if tp > 1:
                assert float(allreduce_time_s(tp, msg, 5.0, 200.0)) == (
                    2 * (tp - 1) * 5.0 * 1e-6 + 2 * (tp - 1) / tp * msg / 200e9)
            more = forward_cost(model, launched, batch, tp, stats=stats)
            extra = 2 * model.num_layers * 12.5e-6 if tp > 1 else 0.0
            assert float(np.asarray(more.comm_s)) == pytest.approx(old + extra, rel=1e-12)
            assert float(np.asarray(more.time_s)) == pytest.approx(float(np.asarray(cost.time_s)) + extra, rel=1e-12)


def test_fitted_launch_reaches_the_profile_and_the_cost_model():
    base = load_hardware_profile("h200-sxm")
    fit = fit_interconnect(_samples(9.0, 1.5, 120.0), base)
    hw = apply_interconnect_fit(base, fit)
    assert hw.collective_launch_us == pytest.approx(9.0) and hw.interconnect_latency_us == pytest.approx(1.5)
    model = load_model_preset("llama-3.1-8b")
    for tp in (2, 4):
        cost = forward_cost(model, hw, uniform_batch(1, 8, 1024), tp, stats=model_stats(model))
        want = 2 * model.num_layers * float(allreduce_time_s(tp, 8 * model.hidden_size * 2, 1.5, 120.0, launch_us=9.0))
        assert float(np.asarray(cost.comm_s)) == pytest.approx(want, rel=1e-6)
    text = interconnect_yaml(hw, fit, "h200-sxm")
    assert "launch 9 us per collective (fitted)" in text
    again = HardwareProfile.model_validate(yaml.safe_load(text))
    assert again.collective_launch_us == pytest.approx(9.0)


def test_tp_engine_repredict(tmp_path, capsys):
    """--repredict: the report's rows predicted again with the given hardware and the interconnect refitted
    to the report's own all-reduces; measured fields kept, the previous errors recorded."""
    pytest.importorskip("torch")
    from dspark_sim.measure.tp_table import MeasureConfig, measure_args
    from dspark_sim.validate.tp import model_specs, predict

    spec = importlib.util.spec_from_file_location("tp_engine", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rows = []
    for tp in (1, 2, 4):
        for batch in (1, 8):
            rows.append({"tp": tp, "batch": batch, "forward": "eager", "cache_len": 42,
                         "baseline_decode_tok_s": 100.0 * batch, "baseline_tok_s": 90.0 * batch,
                         "baseline_step_s": 0.01, "spec_decode_tok_s": 60.0 * batch, "tau": 1.5, "ranks_agree": True,
                         "weight_gb_per_rank": 1.0 / tp, "predicted_baseline_decode_tok_s": 1.0,
                         "baseline_error_pct": -99.0, "predicted_baseline_comm_share": 0.0, "spec_error_pct": 5.0,
                         "baseline_scaling_measured": 7.0})
    # a TP table's all-reduce samples: the fit reads world size, message bytes and median time
    allreduce = [{**s, "tokens": s["message_bytes"] // 512, "hidden": 256, "dtype": "bf16",
                  "times_s": [s["median_s"]], "spread": 0.0} for s in _samples(9.0, 1.5, 120.0)]
    old = {"device": "synthetic", "torch": "t", "target_shape": "test-target", "draft_shape": "test-draft",
           "dtype": "fp32", "prompt_len": 16, "new_tokens": 8, "gamma": 2, "tp": [1, 2, 4], "notes": [],
           "hardware": "x", "allreduce": allreduce,
           "interconnect_fit": {"latency_us": 3.0, "bandwidth_gbps": 100.0, "latency_identified": True,
                                "bandwidth_identified": True, "median_abs_error_pct": 1.0, "max_abs_error_pct": 2.0,
                                "notes": [], "points": []},
           "interconnect_used": {"latency_us": 3.0, "bandwidth_gbps": 100.0, "efficiency": 1.0}, "rows": rows}
    src, out = tmp_path / "report.json", tmp_path / "re.json"
    src.write_text(json.dumps(old))
    report = mod.main(["--repredict", str(src), "--hardware", "h200-sxm", "-o", str(out)])
    assert json.loads(out.read_text()) == json.loads(capsys.readouterr().out) == json.loads(json.dumps(report))
    assert report["interconnect_fit"]["launch_us"] == pytest.approx(9.0, rel=1e-6)
    assert report["interconnect_used"]["launch_us"] == pytest.approx(9.0, rel=1e-6)
    assert report["repredicted"]["previous_errors"][0] == {"tp": 1, "batch": 1, "baseline_error_pct": -99.0,
                                                           "spec_error_pct": 5.0}
    hw = apply_interconnect_fit(load_hardware_profile("h200-sxm"), fit_interconnect(old["allreduce"],
                                                                                    load_hardware_profile("h200-sxm")))
    cfg = MeasureConfig(target_shape="test-target", draft_shape="test-draft", dtype="fp32", prompt_len=16,
                        new_tokens=8, gamma=2)
    targs, dargs, _ = measure_args(cfg)
    target_spec, draft_spec = model_specs(cfg, targs, dargs)
    for r in report["rows"]:
        want = predict(r["batch"], 42, 1.5, r["tp"], hw, target_spec, draft_spec, cfg)
        assert r["predicted_baseline_decode_tok_s"] == pytest.approx(want.baseline_decode_tok_s, rel=1e-12)
        assert r["predicted_spec_decode_tok_s"] == pytest.approx(want.spec_decode_tok_s, rel=1e-12)
        assert r["baseline_error_pct"] == pytest.approx(100 * (want.baseline_decode_tok_s / (100 * r["batch"]) - 1))
        assert r["baseline_decode_tok_s"] == 100.0 * r["batch"] and r["weight_gb_per_rank"] == 1.0 / r["tp"]
        assert r["baseline_scaling_measured"] == pytest.approx(1.0)  # recomputed from the measured rows
        assert (r["predicted_baseline_comm_share"] > 0) == (r["tp"] > 1)
