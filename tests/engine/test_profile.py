"""profile -> calibrate: the engine's pass and step profiles, their merge over rounds, HF export."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from dspark_sim.engine.checkpoints import export_hf_llama, load_hf_llama  # noqa: E402


def _cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dspark_sim.cli.main", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_hf_export_round_trip(pair, tmp_path):
    target, _ = pair
    export_hf_llama(target, tmp_path / "hf")
    again = load_hf_llama(tmp_path / "hf", dtype=target.dtype)
    x = torch.randint(0, 264, (2, 7))
    assert torch.equal(target(x), again(x))


def test_profile_and_calibrate_cli(tmp_path):
    prof = tmp_path / "profile.json"
    out = _cli("profile", "--random-weights", "--preset", "test", "--batch-sizes", "1,2", "--query-tokens", "1,3",
               "--contexts", "16,48", "--kv-dtypes", "fp32,int8", "--repeats", "2", "-o", str(prof))
    assert out.returncode == 0, out.stderr
    doc = json.loads(prof.read_text())
    assert doc["kind"] == "engine-profile" and doc["device"]["kind"] == "cpu"
    assert {s["role"] for s in doc["samples"]} == {"target", "draft"}
    assert {s["kv_dtype"] for s in doc["samples"]} == {"fp32", "int8"}  # the KV dtype grid, each calibrated as itself
    assert doc["steps"] and all(s["step_s"] > 0 for s in doc["steps"])
    cal = tmp_path / "cal.yaml"
    rep = tmp_path / "cal.json"
    out = _cli("calibrate", str(prof), "-o", str(cal), "--report", str(rep))
    assert out.returncode == 0, out.stderr
    text = cal.read_text()
    assert text.startswith("# Calibrated by")
    from dspark_sim.config.loader import load_hardware_profile

    hw = load_hardware_profile(str(cal))
    assert hw.memory_bandwidth_gbps > 0 and hw.overheads.per_step_us >= 0
    assert json.loads(rep.read_text())["sps_table"]
    bad = _cli("calibrate", str(tmp_path / "nope.json"), "-o", str(cal))
    assert bad.returncode == 2 and "not found" in bad.stderr and "Traceback" not in bad.stderr


def test_profile_bad_input(tmp_path):
    # a missing model pair is named, with how to make it; never silently replaced by random weights
    out = _cli("profile", "--preset", "test", "--cache-dir", str(tmp_path / "no-pairs"), "-o", str(tmp_path / "p.json"))
    assert out.returncode == 2 and "no trained 'test' pair" in out.stderr and "engine train" in out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "p.json").exists()
    out = _cli("profile", "--device", "tpu")
    assert out.returncode == 2 and "allowed: cpu, cuda" in out.stderr
    out = _cli("profile", "--batch-sizes", "1,x")
    assert out.returncode == 2 and "--batch-sizes" in out.stderr
    out = _cli("profile", "--kv-dtypes", "bf16,fp8")
    assert out.returncode == 2 and "--kv-dtypes" in out.stderr and "allowed: fp32, bf16, fp16, int8" in out.stderr
    assert "Traceback" not in out.stderr
    # the host-speed yardstick is read on a CPU only
    out = _cli("validate", "--device", "cuda", "--estimator", "probed")
    assert out.returncode == 2 and "'probed'" in out.stderr and "Traceback" not in out.stderr


def test_profile_rounds_merge(tmp_path):
    """validate's profile rounds: each round runs its share of the repeats; merged, every pass shape
    pools all rounds' timings and every step configuration keeps its median run."""
    from dspark_sim.measure.profile import ProfileGrid, load_engine_models, run_profile
    from dspark_sim.measure.profile_merge import merge_profiles

    target, draft, _ = load_engine_models("test", 0, tmp_path, torch.device("cpu"), torch.float32, True)
    grid = ProfileGrid(batch_sizes=(1, 2), query_tokens=(1, 3), contexts=(16,), step_batch_sizes=(1,),
                       step_gammas=(0, 2), step_prompt_tokens=(16,), step_temperatures=(0.0,), step_new_tokens=8,
                       repeats=5, step_repeats=3, warmup=1)
    one = grid.round_of(3)
    assert (one.repeats, one.step_repeats) == (2, 1)
    rounds = [run_profile(target, draft, one, created_by="test") for _ in range(3)]
    merged = merge_profiles(rounds)
    assert len(merged.samples) == len(rounds[0].samples) and len(merged.steps) == len(rounds[0].steps)
    for k, s in enumerate(merged.samples):
        pooled = [t for r in rounds for t in r.samples[k].times_s]
        assert s.times_s == pooled and len(pooled) == 6
        assert s.median_s == pytest.approx(float(np.median(pooled)))
    for k, st in enumerate(merged.steps):
        assert st.step_s == sorted(r.steps[k].step_s for r in rounds)[1]
    assert merge_profiles(rounds[:1]) is rounds[0]
    # the 'best' estimator's merge: every step configuration's fastest round; the passes pooled as before
    fastest = merge_profiles(rounds, fastest_steps=True)
    assert fastest.samples == merged.samples
    assert [st.step_s for st in fastest.steps] == [min(r.steps[k].step_s for r in rounds)
                                                    for k in range(len(rounds[0].steps))]


def test_plain_loop_step_sample_allocates_once(tmp_path):
    """The plain loop's step sample sizes the caches for its timed run before the untimed one: a
    reallocation between them (on a GPU, a CUDA-graph re-capture inside the clock) once doubled the
    H200's plain-loop step time in validate's profile rounds."""
    from dspark_sim.measure.profile import _step_run, load_engine_models

    target, draft, _ = load_engine_models("test", 0, tmp_path, torch.device("cpu"), torch.float32, True)
    target.setup_caches(1, 8)  # what a smaller earlier configuration leaves behind
    calls = []
    real = target.setup_caches
    target.setup_caches = lambda *a, **k: (calls.append(a), real(*a, **k))[1]
    prompts = [[1, 2, 3, 4]] * 2
    _step_run(target, draft, prompts, 0, 24, 0.0, None, None, warm=True)
    assert len(calls) == 1 and target.cache_len >= 4 + 24 + 1


def test_step_samples_attend_over_the_engine_runs_cache(tmp_path):
    """Step samples run with caches sized exactly as the engine's run (prompt + new tokens + the last step's
    drafts), whatever a bigger earlier configuration left: the loops attend over the whole static cache, and
    a kept 529-token cache once made every CPU step sample attend over four times the measured length."""
    from dspark_sim.measure.profile import _step_run, load_engine_models

    target, draft, _ = load_engine_models("test", 0, tmp_path, torch.device("cpu"), torch.float32, True)
    prompts = [[1, 2, 3, 4]] * 2
    for gamma in (0, 1, 3):
        target.setup_caches(8, 300)  # what a bigger earlier configuration leaves behind
        draft.setup_caches(8, 300)
        sample = _step_run(target, draft, prompts, gamma, 12, 0.0, None, None, warm=True)
        assert sample.attended_tokens == 4 + 12 + 2 * gamma + 2 == target.cache_len
        assert target.cache_batch == 2
