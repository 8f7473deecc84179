"""The communication model calibrated from measured all-reduces: the fit recovers known figures,
says what it cannot identify, mirrors the cost model's all-reduce term, and runs end to end on gloo
(2 CPU processes; the fitted numbers are gloo-over-loopback's, not an interconnect's)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml

from dspark_sim.config.errors import InputError
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

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def _samples(lat_us: float, bw_gbps: float, worlds=(2, 4), sizes=None, noise: float = 0.0) -> list[dict]:
    rng = np.random.default_rng(0)
    sizes = sizes if sizes is not None else [2**k for k in range(8, 26, 2)]  # 256 B .. 16 MB
    out = []
    for w in worlds:
        for b in sizes:
            t = float(allreduce_time_s(w, b, lat_us, bw_gbps)) * float(np.exp(noise * rng.standard_normal()))
            out.append({"world_size": w, "message_bytes": b, "median_s": t})
    return out


def test_fit_recovers_latency_and_bandwidth():
    fit = fit_interconnect(_samples(6.0, 180.0))
    assert fit.latency_identified and fit.bandwidth_identified
    assert fit.latency_us == pytest.approx(6.0, rel=1e-6) and fit.bandwidth_gbps == pytest.approx(180.0, rel=1e-6)
    assert fit.max_abs_error_pct < 1e-6
    noisy = fit_interconnect(_samples(6.0, 180.0, noise=0.05))
    assert noisy.latency_us == pytest.approx(6.0, rel=0.1) and noisy.bandwidth_gbps == pytest.approx(180.0, rel=0.1)


def test_unidentified_parameters_keep_the_base():
    base = load_hardware_profile("h200-sxm")
    small = fit_interconnect(_samples(6.0, 180.0, sizes=[64, 128, 256]), base)  # latency-bound only
    assert small.latency_identified and not small.bandwidth_identified
    assert small.bandwidth_gbps == pytest.approx(base.interconnect_bandwidth_gbps * base.efficiency.interconnect)
    assert any("bandwidth not identified" in n for n in small.notes)
    big = fit_interconnect(_samples(0.5, 180.0, sizes=[2**28, 2**29]), base)  # bandwidth-bound only
    assert big.bandwidth_identified and not big.latency_identified
    assert big.latency_us == base.interconnect_latency_us
    with pytest.raises(InputError, match="need >= 2 ranks"):
        fit_interconnect([{"world_size": 1, "message_bytes": 8, "median_s": 1e-5}])


def test_fitted_profile_prices_tp_all_reduces_as_measured():
    """forward_cost's comm term = 2 x layers all-reduces of T x hidden x act bytes at the fitted figures."""
    base = load_hardware_profile("h200-sxm")
    fit = fit_interconnect(_samples(7.5, 210.0))
    hw = apply_interconnect_fit(base, fit)
    assert hw.efficiency.interconnect == 1.0 and hw.interconnect_latency_us == pytest.approx(7.5)
    model = load_model_preset("llama-3.1-8b")
    for tp in (2, 4, 8):
        for tokens in (1, 16, 512):
            cost = forward_cost(model, hw, uniform_batch(1, tokens, 1024), tp, stats=model_stats(model))
            msg = tokens * model.hidden_size * 2  # bf16 activations
            want = 2 * model.num_layers * float(allreduce_time_s(tp, msg, 7.5, 210.0))
            assert float(np.asarray(cost.comm_s)) == pytest.approx(want, rel=1e-9)
    text = interconnect_yaml(hw, fit, "h200-sxm")
    again = HardwareProfile.model_validate(yaml.safe_load(text))
    assert again.interconnect_bandwidth_gbps == pytest.approx(210.0) and text.startswith("# Interconnect calibrated")


def test_gloo_allreduce_profile_and_fit(tmp_path):
    """Measured end to end on 2 gloo processes: profile -> fit -> calibrated hardware YAML."""
    pytest.importorskip("torch")
    out_json, out_hw = tmp_path / "allreduce.json", tmp_path / "hw.yaml"
    proc = subprocess.run(
        [sys.executable, "-m", "dspark_sim.cli.tp", "allreduce", "--tp", "2", "--hidden", "256",
         "--tokens", "1,16,256,1024,4096", "--repeats", "5", "--hardware", "cpu-generic",
         "--hardware-out", str(out_hw), "-o", str(out_json)],
        capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "fit: latency" in proc.stdout
    doc = json.loads(out_json.read_text())
    assert doc["kind"] == "allreduce-profile" and doc["backend"] == "gloo" and doc["world_size"] == 2
    sizes = [s["message_bytes"] for s in doc["samples"]]
    assert sizes == [t * 256 * 4 for t in (1, 16, 256, 1024, 4096)]
    assert all(s["median_s"] > 0 for s in doc["samples"])
    # 4 MB takes longer than 1 KB, whatever the machine's load
    assert doc["samples"][-1]["median_s"] > doc["samples"][0]["median_s"]
    fit = doc["fit"]
    assert fit["latency_us"] > 0 and fit["bandwidth_gbps"] > 0
    hw = HardwareProfile.model_validate(yaml.safe_load(out_hw.read_text()))
    assert hw.efficiency.interconnect == 1.0
    assert hw.interconnect_latency_us == pytest.approx(fit["latency_us"])
    assert hw.interconnect_bandwidth_gbps == pytest.approx(fit["bandwidth_gbps"])


def test_gloo_allreduce_between_matmuls(tmp_path):
    """--between-matmuls: each all-reduce timed after the row-parallel matmul it reduces (the matmuls'
    own time subtracted), samples marked with that context, the fit made from them."""
    pytest.importorskip("torch")
    out_json = tmp_path / "allreduce.json"
    proc = subprocess.run(
        [sys.executable, "-m", "dspark_sim.cli.tp", "allreduce", "--tp", "2", "--shape", "test-target",
         "--tokens", "1,64,1024", "--repeats", "3", "--between-matmuls", "-o", str(out_json)],
        capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "between matmuls" in proc.stdout
    doc = json.loads(out_json.read_text())
    assert [s["context"] for s in doc["samples"]] == ["between-matmuls"] * 3
    assert all(s["median_s"] > 0 for s in doc["samples"])
    assert doc["fit"]["bandwidth_gbps"] > 0


def test_profile_command_runs_the_allreduce_profile(tmp_path):
    """`dspark-sim profile --allreduce-ranks 2`: the same profile and fit from the main CLI; bad input is
    one line and exit 2."""
    pytest.importorskip("torch")
    out_json, out_hw = tmp_path / "allreduce.json", tmp_path / "hw.yaml"
    cli = [sys.executable, "-m", "dspark_sim.cli.main", "profile"]
    proc = subprocess.run(
        cli + ["--allreduce-ranks", "2", "--shape", "test-target", "--allreduce-tokens", "1,64,1024",
               "--repeats", "3", "--between-matmuls", "--hardware", "cpu-generic", "--hardware-out", str(out_hw),
               "-o", str(out_json)],
        capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(out_json.read_text())
    assert doc["kind"] == "allreduce-profile" and doc["world_size"] == 2
    assert [s["context"] for s in doc["samples"]] == ["between-matmuls"] * 3
    hw = HardwareProfile.model_validate(yaml.safe_load(out_hw.read_text()))
    assert hw.interconnect_latency_us == pytest.approx(doc["fit"]["latency_us"])
    for bad, field in ((["--allreduce-ranks", "1"], "--allreduce-ranks"),
                       (["--allreduce-ranks", "2", "--hardware-out", str(out_hw)], "--hardware-out")):
        proc = subprocess.run(cli + bad + ["-o", str(tmp_path / "x.json")], capture_output=True, text=True,
                              cwd=REPO, timeout=60)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert field in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
