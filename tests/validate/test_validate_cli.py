"""`dspark-sim validate` end to end: profile, measure, predict, and `--repredict` of what it wrote."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("torch")


def _cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dspark_sim.cli.main", *args], capture_output=True, text=True,
                          timeout=timeout)


#: runs the CLI with torch made unimportable: `validate --repredict` must not need it
WITHOUT_TORCH = "import sys; sys.modules['torch'] = None; from dspark_sim.cli.main import main; main()"


def _cli_without_torch(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", WITHOUT_TORCH, *args], capture_output=True, text=True,
                          timeout=timeout)


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
    # (predicted by one process where the run used one a core: the same figures for any worker count;
    # and without torch: any machine re-predicts a folder)
    finished = _cli_without_torch("validate", "--repredict", str(cut), "--tolerance", "25", "--workers", "1",
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
