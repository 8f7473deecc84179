"""`dspark-sim dashboard REPORT.json`: a validation folder's report.html rebuilt from its report.json."""

from __future__ import annotations

import json

from dspark_sim.config.measurements import ValidationReport
from dspark_sim.report.validation_page import validation_html


def _point(label: str, policy: str, tok_s: tuple[float, float], speedup: tuple[float, float]) -> dict:
    """A measured point: (measured, predicted) tokens/s and speed-up; tau and the baseline follow from them."""
    (m_tok, p_tok), (m_x, p_x) = tok_s, speedup
    return {
        "label": label, "regime": "greedy", "temperature": 0.0, "batch_size": 4, "prompt_tokens": 64,
        "new_tokens": 32, "policy": policy, "gamma_max": 3, "rounds": 2,
        "measured_tokens_per_s": m_tok, "predicted_tokens_per_s": p_tok,
        "measured_baseline_tokens_per_s": m_tok / m_x, "predicted_baseline_tokens_per_s": p_tok / p_x,
        "measured_speedup": m_x, "predicted_speedup": p_x, "measured_tau": 2.5, "predicted_tau": 2.4,
        "tokens_per_s_error_pct": (p_tok / m_tok - 1) * 100, "speedup_error_pct": (p_x / m_x - 1) * 100,
        "baseline_error_pct": 1.0, "tau_error_pct": -4.0, "per_tau_error_pct": 2.0,
    }


def _report() -> dict:
    return ValidationReport.model_validate({
        "device": {"kind": "cpu", "name": "test CPU", "torch_version": "2.0", "threads": 2, "memory_gb": 8.0,
                   "onchip_mb": 32.0},
        "engine_version": "test-engine", "preset": "test", "quick": True, "tolerance_pct": 15.0, "passed": True,
        "command": "dspark-sim validate --quick", "calibration_median_error_pct": 3.2,
        "acceptance_by_temperature": {"0": [0.8, 0.7]},
        "summary": [{"group": "greedy", "points": 2, "median_abs_speedup_error_pct": 4.0,
                     "worst_abs_speedup_error_pct": 6.0, "median_abs_tokens_per_s_error_pct": 5.0,
                     "worst_abs_tokens_per_s_error_pct": 7.5}],
        "points": [_point("tiny b4 fixed g3", "fixed:3", (1302.0, 1210.0), (1.87, 1.78)),
                   _point("tiny b1 dspark g5", "dspark:5", (389.0, 410.0), (2.31, 2.44))],
        "timings_s": {"measure": 12.0},
    }).model_dump(mode="json")


def test_dashboard_rebuilds_a_validation_page_from_its_report(tmp_path, run_cli):
    folder = tmp_path / "cpu-quick"
    folder.mkdir()
    (folder / "report.json").write_text(json.dumps(_report(), indent=2) + "\n")
    page = folder / "report.html"
    r = run_cli("dashboard", str(folder / "report.json"), "-o", str(page))
    assert r.returncode == 0, r.stderr
    assert "validation page" in r.stdout and str(page) in r.stdout.replace("\n", "")
    html = page.read_text()
    # the page `validate` writes, byte for byte
    assert html == validation_html(ValidationReport.model_validate_json((folder / "report.json").read_text()))
    # the report's figures: both scatters, the error table and every point's numbers
    assert 'id="validation-fig-0"' in html and 'id="validation-fig-1"' in html and "plotly.js v" in html
    assert '"speed-up: predicted vs measured"' in html and '"decode tokens\\u002fs: predicted vs measured"' in html
    for measured in ("2.31", "1.87", "389.0", "1302.0"):  # each policy's trace carries its measured point
        assert f'"x":[{measured}]' in html, measured
    assert "<td>greedy</td><td>2</td><td>4.0%</td><td>6.0%</td><td>5.0%</td><td>7.5%</td>" in html
    assert "<td>tiny b4 fixed g3</td><td>1302.0</td><td>1210.0</td><td>1.87</td><td>1.78</td>" in html
    assert "<td>tiny b1 dspark g5</td><td>389.0</td><td>410.0</td><td>2.31</td><td>2.44</td>" in html
    assert "PASSED against a median-error tolerance of 15%" in html and "test CPU" in html


def test_a_validation_report_page_takes_no_dashboard_options_and_must_validate(tmp_path, run_cli):
    report = tmp_path / "report.json"
    report.write_text(json.dumps(_report()))
    r = run_cli("dashboard", str(report), "-o", str(tmp_path / "x.html"), "--title", "mine")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--title" in r.stderr
    broken = dict(_report())
    del broken["summary"]
    report.write_text(json.dumps(broken))
    r = run_cli("dashboard", str(report), "-o", str(tmp_path / "y.html"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "summary" in r.stderr
    assert not (tmp_path / "y.html").exists()
