"""profile -> calibrate -> validate, the teacher-forced acceptance traces, HF export."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from dspark_sim.config.schema import FixedGamma  # noqa: E402
from dspark_sim.core.acceptance import load_acceptance_trace, trace_tau  # noqa: E402
from dspark_sim.engine.checkpoints import export_hf_llama, load_hf_llama  # noqa: E402
from dspark_sim.engine.generate import speculative_generate  # noqa: E402
from dspark_sim.engine.sampling import Sampling  # noqa: E402
from dspark_sim.measure.acceptance_trace import acceptance_records, conditional_acceptance  # noqa: E402


def _cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dspark_sim.cli.main", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_greedy_trace_predicts_engine_tau_exactly(pair, tmp_path):
    """Teacher forcing gives, at every position, what a greedy speculative step would accept: walking
    the trace at gamma reproduces the engine's own tau (batch 1, so no padding effects)."""
    target, draft = pair
    gen = torch.Generator().manual_seed(0)
    prompts = torch.randint(0, 264, (3, 12), generator=gen).tolist()
    recs = acceptance_records(target, draft, prompts, 40, Sampling())
    path = tmp_path / "trace.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    trace = load_acceptance_trace(str(path), "accept_len", None, "confidence")
    assert trace.confidences is not None and len(trace.confidences[0]) == len(trace.yields[0])
    for gamma in (1, 3, 5):
        gained = steps = 0
        for p in prompts:
            res = speculative_generate(target, draft, [p], 40, FixedGamma(gamma=gamma))
            gained += sum(int((s.accepted + 1)[s.active].sum()) for s in res.steps)
            steps += sum(int(s.active.sum()) for s in res.steps)
        engine_tau = gained / steps
        # the engine starts stepping after the prefill's token (output position 1); so does this walk
        shifted = trace.__class__(trace.path, trace.prompt_lens, trace.output_lens,
                                  tuple(y[1:] for y in trace.yields), None)
        assert trace_tau(shifted, gamma) == pytest.approx(engine_tau, rel=0.02)
    cond = conditional_acceptance(recs, 4)
    assert all(0.0 <= c <= 1.0 for c in cond)


def test_sampled_trace_couples_acceptance_to_the_confidence(pair):
    """accept_prob = min(1, p(x)/q(x)) of the token x whose q(x) is the recorded confidence: its mean is
    alpha's (E over x ~ q); a draft that is the target is accepted for sure; greedy traces need none."""
    target, draft = pair
    gen = torch.Generator().manual_seed(1)
    prompts = torch.randint(0, 264, (16, 12), generator=gen).tolist()
    recs = acceptance_records(target, draft, prompts, 48, Sampling(1.0))
    alpha = np.concatenate([r["alpha"] for r in recs])
    prob = np.concatenate([r["accept_prob"] for r in recs])
    assert prob.min() >= 0.0 and prob.max() <= 1.0 and prob.std() > 0.1
    assert prob.mean() == pytest.approx(alpha.mean(), abs=0.03)  # 768 positions
    same = acceptance_records(target, target, prompts[:4], 16, Sampling(1.0))
    assert all(a == pytest.approx(1.0, abs=1e-5) for r in same for a in r["accept_prob"])
    assert "accept_prob" not in acceptance_records(target, draft, prompts[:2], 8, Sampling())[0]


def _leading_ones(rows) -> list[int]:
    out = []
    for row in rows:
        k = 0
        while k < len(row) and row[k] == 1.0:
            k += 1
        out.append(k)
    return out


def test_draft_chains_follow_the_drafts_own_tokens(pair):
    """A chain starts with the per-position fields' token (same confidence and acceptance), and while the
    target accepts it, it drafts the target's own tokens: greedy, its accepted run from position i is the
    trace's yield there (capped at its length). The per-position fields are those of a run without chains."""
    target, draft = pair
    gen = torch.Generator().manual_seed(3)
    prompts = torch.randint(0, 264, (3, 12), generator=gen).tolist()
    for sampling in (Sampling(), Sampling(1.0)):
        plain = acceptance_records(target, draft, prompts, 24, sampling)
        recs = acceptance_records(target, draft, prompts, 24, sampling, chain=4)
        for r, q in zip(recs, plain, strict=True):
            assert {k: v for k, v in r.items() if not k.startswith("chain_")} == q
            conf, acc = np.array(r["chain_confidence"]), np.array(r["chain_accept_prob"])
            assert conf.shape == acc.shape == (len(r["accept_len"]), 4)
            assert conf[:, 0] == pytest.approx(np.array(r["confidence"]), abs=2e-5)
            if sampling.greedy:
                assert set(np.unique(acc)) <= {0.0, 1.0}
                n = len(r["accept_len"])  # the trace's runs stop at the output's end, a chain does not
                assert [min(k, n - i) for i, k in enumerate(_leading_ones(acc))] == [min(y - 1, 4) for y in
                                                                                     r["accept_len"]]
            else:
                assert acc[:, 0] == pytest.approx(np.array(r["accept_prob"]), abs=2e-5)
                assert acc.min() >= 0.0 and acc.max() <= 1.0 and conf.min() >= 0.0 and conf.max() <= 1.0
    same = acceptance_records(target, target, prompts[:2], 16, Sampling(1.0), chain=3)
    assert all(a == pytest.approx(1.0, abs=1e-4) for r in same for row in r["chain_accept_prob"] for a in row)


def test_chain_confidences_are_the_live_drafts(pair):
    """Statistically: the confidences a chain records k tokens into a step are distributed as those the
    engine's draft reports at its k-th draft token (sampled, fixed gamma), where the per-position field
    at position i + k, given the target's tokens, is not what the live draft sees."""
    target, draft = pair
    gen = torch.Generator().manual_seed(5)
    prompts = torch.randint(0, 264, (24, 12), generator=gen).tolist()
    recs = acceptance_records(target, draft, prompts, 40, Sampling(1.0), chain=4)
    chain = np.concatenate([np.array(r["chain_confidence"])[1:-4] for r in recs])  # the engine steps from 1
    per_position = np.concatenate([np.array(r["confidence"]) for r in recs])
    live = []
    for i in range(0, len(prompts), 8):
        res = speculative_generate(target, draft, prompts[i: i + 8], 40, FixedGamma(gamma=4), Sampling(1.0),
                                   generator=torch.Generator().manual_seed(i))
        live += [s.confidences[s.active] for s in res.steps]
    live = np.concatenate(live)
    live = live[~np.isnan(live).any(axis=1)]  # steps near the end draft fewer
    for k in (1, 2, 3):
        se = np.sqrt(live[:, k].var() / len(live) + chain[:, k].var() / len(chain))
        assert abs(live[:, k].mean() - chain[:, k].mean()) < 4 * se, k
    print("live", live.mean(0), "chain", chain.mean(0), "per-position", per_position.mean())


def test_dspark_cases_replay_the_coupled_acceptance(tmp_path):
    from dspark_sim.validate.run import trace_probability_field

    sampled, greedy, yields = tmp_path / "s.jsonl", tmp_path / "g.jsonl", tmp_path / "y.jsonl"
    sampled.write_text(json.dumps({"accept_len": [1], "alpha": [0.5], "accept_prob": [0.4], "confidence": [0.3]}) + "\n")
    greedy.write_text(json.dumps({"accept_len": [1], "alpha": [1.0], "confidence": [0.3]}) + "\n")
    yields.write_text(json.dumps({"accept_len": [1], "confidence": [0.3]}) + "\n")
    assert trace_probability_field("dspark:5", sampled) == "accept_prob"
    assert trace_probability_field("fixed:3", sampled) == "alpha"
    assert trace_probability_field("dspark:5", greedy) == "alpha"
    assert trace_probability_field("dspark:5", yields) is None


def test_cases_replay_the_traces_of_their_prompt_length(tmp_path):
    from dspark_sim.validate.run import prompt_length_trace

    trace = tmp_path / "acceptance-T0.jsonl"
    recs = [{"prompt_len": n, "accept_len": [k]} for k, n in enumerate((64, 256, 64, 256, 64))]
    trace.write_text("".join(json.dumps(r) + "\n" for r in recs))
    short = prompt_length_trace(trace, 64, tmp_path / "out")
    assert short.name == "acceptance-T0-P64.jsonl"
    assert [json.loads(ln)["accept_len"] for ln in short.read_text().splitlines()] == [[0], [2], [4]]
    assert prompt_length_trace(trace, 128, tmp_path / "out") == trace  # no records of that length: all of them
    one = tmp_path / "one.jsonl"
    one.write_text(json.dumps(recs[0]) + "\n")
    assert prompt_length_trace(one, 64, tmp_path / "out") == one  # nothing to filter


def test_predictions_replay_every_trace_record_equally(tmp_path):
    """Drawn at random, a prediction's records are a sample of the trace's; in order, each is used
    equally often, so the simulated tau is the trace's own (greedy: exactly the walked mean)."""
    from dspark_sim.validate.run import Case, simulated_runs

    assert simulated_runs(Case(0.0, 16, 64, "fixed:3", rounds=6, new_tokens=64), 2, 192) == 12  # 2 x 6 x 16 = 192
    assert simulated_runs(Case(0.0, 16, 64, "fixed:3", rounds=1, new_tokens=64), 2, 192) == 12  # one pass: 192
    assert simulated_runs(Case(1.0, 1, 64, "fixed:3", rounds=16, new_tokens=64), 4, 96) == 96  # 64 -> a pass
    assert simulated_runs(Case(0.0, 4, 64, "fixed:3", rounds=12, new_tokens=64), 4, 96) == 48  # 192 = 2 passes


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


def test_validate_quick_end_to_end(tmp_path):
    """CI's regression guard for the simulator and the engine together: the quick grid, a looser
    tolerance (machines are noisy), the report files written."""
    # timings on a shared machine can be disturbed by anything else running: a second attempt is
    # allowed, and one of the two must meet the tolerance
    for _attempt in range(2):
        out = _cli("validate", "--quick", "--cache-dir", str(tmp_path / "pairs"), "--tolerance", "25",
                   "-o", str(tmp_path / "report"), timeout=900)
        if out.returncode == 0:
            break
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["passed"] and len(report["points"]) == 8
    html = (tmp_path / "report" / "report.html").read_text()
    assert "plotly" in html.lower() and "Errors by regime" in html
    # greedy: the replayed trace reproduces the engine's tau almost exactly
    greedy = [p for p in report["points"] if p["temperature"] == 0 and p["policy"].startswith("fixed")]
    assert all(abs(p["predicted_tau"] / p["measured_tau"] - 1) < 0.05 for p in greedy)
    assert np.isfinite([p["speedup_error_pct"] for p in report["points"]]).all()
    # the tokens/s error splits into its acceptance and timing sides
    for p in report["points"]:
        tau = p["predicted_tau"] / p["measured_tau"]
        rate = (p["predicted_tokens_per_s"] / p["predicted_tau"]) / (p["measured_tokens_per_s"] / p["measured_tau"])
        assert p["tau_error_pct"] == pytest.approx(100 * (tau - 1))
        assert p["per_tau_error_pct"] == pytest.approx(100 * (rate - 1))
        assert 1 + p["tokens_per_s_error_pct"] / 100 == pytest.approx(tau * rate)
    assert report["summary"][0]["median_abs_tau_error_pct"] is not None
    # the policies' decisions, both sides: a fixed gamma verifies gamma drafts a pass, short of sequence ends
    # (the test pair's DSpark scheduler may verify none)
    for p in report["points"]:
        assert 0 <= p["measured_verified"] <= p["gamma_max"] and 0 <= p["predicted_verified"] <= p["gamma_max"]
        if p["policy"].startswith("fixed"):
            assert p["measured_verified"] > 0.8 * p["gamma_max"]
            assert p["predicted_verified"] == pytest.approx(p["measured_verified"], rel=0.1)
    assert np.isfinite(report["host_drift_pct"]) and "host drift" in html
    # profiled in three rounds between the measurement rounds; the merged profile holds every round's
    # repeats, and the SPS table the engine's DSpark policy ran with is kept for re-prediction
    assert report["profile_rounds"] == 3 and report["sps_table"]
    prof = json.loads((tmp_path / "report" / "profile.json").read_text())
    assert all(len(s["times_s"]) == 3 for s in prof["samples"])
    # --repredict: the same code predicts the stored measurements again, byte for byte the same figures
    again = _cli("validate", "--repredict", str(tmp_path / "report"), "--tolerance", "25",
                 "-o", str(tmp_path / "again"))
    assert again.returncode == 0, again.stderr[-2000:]
    redo = json.loads((tmp_path / "again" / "report.json").read_text())
    assert redo["points"] == report["points"] and redo["summary"] == report["summary"]
    assert (tmp_path / "again" / "profile.json").is_file() and (tmp_path / "again" / "report.html").is_file()
    # every timed repeat is kept, and the measurements were on disk before predicting: a run cut short
    # while predicting (no report.json) is finished by --repredict with the same figures
    assert all(len(p["measured_repeats_tokens_per_s"]) == 3 for p in report["points"])
    assert sorted(x.name for x in (tmp_path / "report").glob("profile-round-*.json")) == [
        "profile-round-1.json", "profile-round-2.json", "profile-round-3.json"]
    cut = tmp_path / "cut"
    cut.mkdir()
    for f in (tmp_path / "report").iterdir():
        if f.name not in ("report.json", "report.html") and not f.name.startswith("calibration"):
            (cut / f.name).write_bytes(f.read_bytes())
    # (predicted by one process where the run used one a core: the same figures for any worker count)
    finished = _cli("validate", "--repredict", str(cut), "--tolerance", "25", "--workers", "1",
                    "-o", str(tmp_path / "finished"))
    assert finished.returncode == 0, finished.stderr[-2000:]
    done = json.loads((tmp_path / "finished" / "report.json").read_text())
    assert done["points"] == report["points"] and done["summary"] == report["summary"]
    for args, words in ((["--repredict", str(tmp_path / "report")], "needs --out"),
                        (["--repredict", str(tmp_path / "nope"), "-o", str(tmp_path / "x")], "not found"),
                        (["--repredict", str(cut), "-o", str(tmp_path / "x"), "--workers", "0"], "--workers")):
        bad = _cli("validate", *args)
        assert bad.returncode == 2 and words in bad.stderr and "Traceback" not in bad.stderr
    assert "tok/s per tau err" in html
    # each point's own measurement noise beside its error: the spread of its timed repeats
    for p in report["points"]:
        reps = p["measured_repeats_tokens_per_s"]
        assert p["measured_repeat_spread_pct"] == pytest.approx(100 * (max(reps) - min(reps)) / float(np.median(reps)))
        assert p["measured_speedup_repeat_spread_pct"] >= 0
    assert report["summary"][0]["median_repeat_spread_tokens_per_s_pct"] == pytest.approx(
        float(np.median([p["measured_repeat_spread_pct"] for p in report["points"] if not p["cross_prediction"]])))
    assert "repeat spread" in html
    # on a CPU the figure is the median of the repeats brought to the run's reference host speed by the
    # yardstick read beside each (the figures as measured kept beside it); the profile likewise
    assert report["estimator"] == "probed"
    refs = report["host_probe_reference_s"]
    ref = refs["step"]
    assert set(refs) == {"step", "target", "draft"} and ref > 0 and len(report["host_probes"]["step"]) > 5
    for kind, timeline in report["host_probes"].items():
        # (the timeline is kept to the nanosecond)
        assert refs[kind] == pytest.approx(float(np.median([v for _, v in timeline])), abs=1e-9)
    for p in report["points"]:
        probes = p["measured_host_probe_s"]
        assert len(probes) == 3
        assert p["measured_tokens_per_s"] == pytest.approx(float(np.median(
            [v * q / ref for v, q in zip(p["measured_repeats_tokens_per_s"], probes, strict=True)])))
    assert all(s["host_probe_s"] == [refs[s["role"]]] * len(s["times_s"]) for s in prof["samples"])
    assert all(st["host_probe_s"] == ref for st in prof["steps"])
    raw = json.loads((tmp_path / "report" / "profile-round-2.json").read_text())
    assert all(len(s["host_probe_s"]) == len(s["times_s"]) for s in raw["samples"])
    med = _cli("validate", "--repredict", str(tmp_path / "report"), "--tolerance", "100", "--estimator", "median",
               "-o", str(tmp_path / "median"))
    assert med.returncode == 0, med.stderr[-2000:]
    as_measured = json.loads((tmp_path / "median" / "report.json").read_text())
    assert all(p["measured_median_tokens_per_s"] == p["measured_tokens_per_s"] for p in as_measured["points"])
    # re-predicted with --estimator best, each point takes its fastest repeat (the figures as measured
    # kept beside it) and the calibration the profile's fastest round
    fast = _cli("validate", "--repredict", str(tmp_path / "report"), "--tolerance", "100", "--estimator", "best",
                "-o", str(tmp_path / "best"))
    assert fast.returncode == 0, fast.stderr[-2000:]
    best = json.loads((tmp_path / "best" / "report.json").read_text())
    assert best["estimator"] == "best"
    for b, m in zip(best["points"], report["points"], strict=True):
        assert b["measured_tokens_per_s"] == max(m["measured_repeats_tokens_per_s"])
        assert b["measured_median_tokens_per_s"] == m["measured_median_tokens_per_s"]
        assert b["measured_median_baseline_tokens_per_s"] == m["measured_median_baseline_tokens_per_s"]
    steps = {(st["batch_size"], st["gamma"], st["temperature"], st["policy"]): st["step_s"]
             for st in json.loads((tmp_path / "best" / "profile.json").read_text())["steps"]}
    rounds = [json.loads(f.read_text()) for f in sorted((tmp_path / "report").glob("profile-round-*.json"))]
    for k, st in enumerate(rounds[0]["steps"]):
        assert steps[(st["batch_size"], st["gamma"], st["temperature"], st["policy"])] == min(
            r["steps"][k]["step_s"] for r in rounds)
    bad = _cli("validate", "--repredict", str(tmp_path / "report"), "--estimator", "mean", "-o", str(tmp_path / "x"))
    assert bad.returncode == 2 and "--estimator" in bad.stderr and "allowed: auto, median, best" in bad.stderr


def test_best_estimator_takes_each_side_at_its_fastest():
    """'best': a point's fastest timed repeat, and as the baseline the median over the cases of one setting
    of their fastest plain repeats; 'median': the figures as measured. auto: best on a GPU, probed on a CPU."""
    from dspark_sim.config.measurements import DeviceInfo, MeasuredCase, ValidationMeasurements
    from dspark_sim.validate.run import resolve_estimator, summarised

    def case(policy, reps, base_reps):
        return MeasuredCase(temperature=0.0, batch_size=4, prompt_tokens=64, new_tokens=32, policy=policy, rounds=1,
                            tokens_per_s=sorted(reps)[1], tau=2.0, batch_tokens_per_s=1.0, repeats_tokens_per_s=reps,
                            baseline_tokens_per_s=100.0, baseline_repeats_tokens_per_s=base_reps)

    cases = [case("fixed:1", [150.0, 180.0, 160.0], [90.0, 100.0, 95.0]),
             case("fixed:3", [200.0, 210.0, 150.0], [99.0, 110.0, 101.0]),
             case("dspark:5", [220.0, 190.0, 230.0], [120.0, 98.0, 105.0])]
    meas = ValidationMeasurements(device=DeviceInfo(kind="cpu", name="x", torch_version="t", threads=2, memory_gb=1.0,
                                                         onchip_mb=1.0), engine_version="v", preset="test",
                                  quick=True, command="c", acceptance_by_temperature={}, timings_s={},
                                  sps_table={1: 1.0}, profile_rounds=3, cases=cases)
    med = summarised(meas)
    assert [s.tokens_per_s for s, _ in med] == [160.0, 200.0, 220.0] and {b.tokens_per_s for _, b in med} == {100.0}
    best = summarised(meas.model_copy(update={"estimator": "best"}))
    assert [s.tokens_per_s for s, _ in best] == [180.0, 210.0, 230.0]
    assert {b.tokens_per_s for _, b in best} == {110.0}  # the median of 100, 110, 120
    assert [s.tau for s, _ in best] == [2.0, 2.0, 2.0]
    assert (resolve_estimator(None, "cuda"), resolve_estimator("auto", "cpu"), resolve_estimator("best", "cpu")) == (
        "best", "probed", "best")


def test_repeat_spread_is_the_measurements_own_noise():
    """The spread of a point's repeats (max - min over the median), and of their paired speed-ups."""
    from dspark_sim.validate.run import repeat_spread_pct, speedup_repeats

    assert repeat_spread_pct([90.0, 100.0, 120.0]) == pytest.approx(30.0)
    assert repeat_spread_pct([100.0]) is None and repeat_spread_pct(None) is None
    # a host twice as fast in one repeat moves both loops: the speed-up's spread stays 0
    ups = speedup_repeats([200.0, 400.0, 210.0], [100.0, 200.0, 105.0])
    assert ups == pytest.approx([2.0, 2.0, 2.0]) and repeat_spread_pct(ups) == pytest.approx(0.0)
    assert speedup_repeats([1.0, 2.0], [1.0]) is None


def test_profile_rounds_merge(tmp_path):
    """validate's profile rounds: each round runs its share of the repeats; merged, every pass shape
    pools all rounds' timings and every step configuration keeps its median run."""
    from dspark_sim.measure.profile import ProfileGrid, load_engine_models, merge_profiles, run_profile

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


def test_validate_refuses_foreign_profile(tmp_path):
    prof = tmp_path / "p.json"
    out = _cli("profile", "--random-weights", "--preset", "test", "--batch-sizes", "1", "--query-tokens", "1",
               "--contexts", "16", "--repeats", "1", "-o", str(prof))
    assert out.returncode == 0, out.stderr
    doc = json.loads(prof.read_text())
    doc["engine_version"] = "0.0.0+other"
    prof.write_text(json.dumps(doc))
    out = _cli("validate", "--quick", "--profile", str(prof), "-o", str(tmp_path / "r"))
    assert out.returncode == 2 and "engine_version" in out.stderr


def test_live_steps_are_the_engines_own_steps(pair):
    """`live_steps` runs the engine's draft and rejection sampling: with a draft that is the target every
    chain token is accepted and the run takes the engine's very steps; with the real pair, the confidences
    of its steps are distributed as those of the engine's own DSpark steps (4 s.e. a position), and each
    step's tested tokens keep their outcome (a run of ones, then at most one zero)."""
    from dspark_sim.core.policies import DSparkPolicy, FixedPolicy, table_sps
    from dspark_sim.measure.acceptance_trace import live_steps

    target, draft = pair
    gen = torch.Generator().manual_seed(7)
    prompts = torch.randint(0, 264, (24, 12), generator=gen).tolist()
    same = live_steps(target, target, prompts[:3], 20, Sampling(1.0), FixedPolicy(3))
    for rec, p in zip(same, prompts[:3], strict=True):
        assert all(a == 1.0 for row in rec["step_accept_prob"] for a in row)
        engine = speculative_generate(target, target, [p], 20, FixedGamma(gamma=3), Sampling(1.0))
        assert len(rec["step_confidence"]) == sum(int(s.active[0]) for s in engine.steps)
    sps = {1: 1000.0, 2: 950.0, 4: 900.0, 8: 700.0}
    policy = DSparkPolicy(4, table_sps(sps))
    recs = live_steps(target, draft, prompts, 32, Sampling(1.0), policy, rows=8)
    rec_conf = np.concatenate([np.array(r["step_confidence"]) for r in recs])
    rows = np.concatenate([np.array(r["step_accept_prob"]) for r in recs])
    assert rows.min() >= 0.0 and rows.max() <= 1.0
    rejected = rows == 0.0  # only a tested token can hold 0 (softmax probabilities are positive)
    assert rejected.sum(axis=1).max() == 1 and rejected.any(axis=1).mean() > 0.1
    for row in rows[rejected.any(axis=1)]:
        assert (row[: int(np.argmax(row == 0.0))] == 1.0).all()  # the tokens before it were accepted
    live = []
    for i in range(0, len(prompts), 8):
        res = speculative_generate(target, draft, prompts[i: i + 8], 32, DSparkPolicy(4, table_sps(sps)),
                                   Sampling(1.0), generator=torch.Generator().manual_seed(i))
        live += [s.confidences[s.active] for s in res.steps if s.confidences is not None]
    live = np.concatenate(live)
    live = live[~np.isnan(live).any(axis=1)]
    for k in range(4):
        se = np.sqrt(live[:, k].var() / len(live) + rec_conf[:, k].var() / len(rec_conf))
        assert abs(live[:, k].mean() - rec_conf[:, k].mean()) < 4 * se, k
    with pytest.raises(ValueError, match="sampled"):
        live_steps(target, draft, prompts[:1], 8, Sampling(), policy)


def test_live_steps_decide_each_batch_jointly(pair):
    """With `batch`, the policy decides each group of rows as the engine decides a static batch of that size.
    An SPS table flat up to 8 tokens a pass and collapsing after makes DSpark verify all 4 drafts alone
    and none in a batch of 8: the batch-8 steps then gain one token each, every row taking as many steps as
    in the engine's batch-8 run, while the same prompts decided one by one take far fewer."""
    from dspark_sim.core.policies import DSparkPolicy, table_sps
    from dspark_sim.measure.acceptance_trace import live_steps

    target, draft = pair
    prompts = torch.randint(0, 264, (8, 12), generator=torch.Generator().manual_seed(3)).tolist()
    sps = {1: 1000.0, 8: 1000.0, 9: 1.0, 64: 1.0}
    joint = live_steps(target, draft, prompts, 16, Sampling(1.0), DSparkPolicy(4, table_sps(sps)), batch=8)
    engine = speculative_generate(target, draft, prompts, 16, DSparkPolicy(4, table_sps(sps)), Sampling(1.0))
    for i, rec in enumerate(joint):
        assert len(rec["step_confidence"]) == sum(int(s.active[i]) for s in engine.steps) == 15
        assert min(min(row) for row in rec["step_accept_prob"]) > 0.0  # nothing tested, nothing rejected
    alone = live_steps(target, draft, prompts, 16, Sampling(1.0), DSparkPolicy(4, table_sps(sps)), batch=1)
    assert sum(len(r["step_confidence"]) for r in alone) < 0.7 * 8 * 15
    # groups of 4 never straddle the rows run at once: 6 rows a chunk becomes 4
    fours = live_steps(target, draft, prompts, 16, Sampling(1.0), DSparkPolicy(4, table_sps(sps)), batch=4, rows=6)
    assert len(fours) == 8
    with pytest.raises(ValueError, match="batch"):
        live_steps(target, draft, prompts, 16, Sampling(1.0), DSparkPolicy(4, table_sps(sps)), batch=0)


def test_sampled_dspark_cases_replay_the_live_steps_of_their_policy(tmp_path):
    from dspark_sim.validate.run import trace_confidence_field, trace_probability_field

    path = tmp_path / "s.jsonl"
    path.write_text(json.dumps({"accept_len": [1], "alpha": [0.5], "accept_prob": [0.4], "confidence": [0.3],
                                "chain_confidence": [[0.3]], "chain_accept_prob": [[0.4]], "step_policy": "dspark:5",
                                "step_confidence": [[0.3]], "step_accept_prob": [[1.0]]}) + "\n")
    assert trace_confidence_field("dspark:5", path) == "step_confidence"
    assert trace_probability_field("dspark:5", path) == "step_accept_prob"
    # no steps recorded at batch 16 (a trace from before session 17): batch 1's
    assert trace_confidence_field("dspark:5", path, 16) == "step_confidence"
    both = tmp_path / "b.jsonl"
    both.write_text(json.dumps({"accept_len": [1], "alpha": [0.5], "step_policy": "dspark:5",
                                "step_confidence": [[0.3]], "step_accept_prob": [[1.0]],
                                "step_confidence_b16": [[0.4]], "step_accept_prob_b16": [[0.0]]}) + "\n")
    assert trace_confidence_field("dspark:5", both, 16) == "step_confidence_b16"
    assert trace_probability_field("dspark:5", both, 16) == "step_accept_prob_b16"
    assert trace_confidence_field("dspark:5", both, 4) == "step_confidence"
    # recorded under another policy: the chains along the target's tokens
    assert trace_confidence_field("dspark:3", path) == "chain_confidence"
    assert trace_probability_field("dspark:3", path) == "chain_accept_prob"
    assert trace_probability_field("fixed:5", path) == "alpha"
