"""The benchmark scripts' CPU paths run (tiny shapes), so the GPU script is exercised before a GPU."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("torch")

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_engine_gpu_cpu_path(capsys):
    mod = _load("engine_gpu")
    report = mod.main(["--device", "cpu", "--shapes", "test-target", "--prompt-len", "8", "--new-tokens", "8",
                       "--repeats", "1", "--dtype", "fp32"])
    row = report["results"]["test-target"]
    assert row["ours"]["tok_s"] > 0 and not row["ours"]["cuda_graphs"]
    if row.get("hf"):  # transformers installed: same config, same random-weight setup
        assert row["hf"]["tok_s"] > 0 and row["speedup_vs_hf"] > 0
    assert json.loads(capsys.readouterr().out)["results"]
    assert mod.hf_config is not None


def test_engine_cpu_table(tmp_path):
    mod = _load("engine_cpu")
    report = mod.run("test", 0, str(tmp_path), new_tokens=12, gammas=(2,), batches=(1, 2),
                     temperatures=(0.0, 1.0), repeats=1)
    rows = report["rows"]
    assert len(rows) == 2 * 2 * 2
    assert all(r["spec_tok_s"] > 0 and r["baseline_tok_s"] > 0 and r["tau"] >= 1 for r in rows)
    assert all(r["greedy_identical"] for r in rows if r["temperature"] == 0.0)


def test_engine_gpu_profile_option_sets_are_inductor_settings():
    """Every inductor option the GPU profiler compares (and the engine's default set) names a real
    inductor setting of the installed torch, so a GPU call is not spent on a typo."""
    from torch._inductor import config as inductor_config

    from dspark_sim.engine.generate import DECODE_INDUCTOR_OPTIONS

    mod = _load("engine_gpu_profile")
    names = set(inductor_config.get_config_copy())
    for options in (DECODE_INDUCTOR_OPTIONS, *mod.VARIANTS.values()):
        assert set(options) <= names, set(options) - names
    assert "default" in mod.VARIANTS and mod.VARIANTS["default"] == {}
