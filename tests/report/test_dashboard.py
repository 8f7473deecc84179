"""Dashboards: self-contained HTML that renders every figure with data in headless Chromium."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from dspark_sim.cli.dashboard import (
    write_dashboard,
    write_predict_dashboard,
    write_run_dashboard,
    write_validation_dashboard,
)
from dspark_sim.config.errors import InputError
from dspark_sim.config.loader import load_scenario
from dspark_sim.studies.dashboard_inputs import load_inputs, validation_points
from dspark_sim.studies.labels import short

from .conftest import ARTIFACTS, DSPARK, QUICKSTART, REPO

#: every figure div: its trace count and the data points of each trace (x, y or z entries)
FIGURE_PROBE = """
window.dsparkFigureIds.map(function (id) {
  var gd = document.getElementById(id);
  var traces = (gd && gd.data) || [];
  return {id: id, svg: !!(gd && gd.querySelector('.main-svg')),
          points: traces.map(function (t) {
            var n = 0;
            ['x', 'y', 'z'].forEach(function (k) { if (t[k] && t[k].length) { n = Math.max(n, t[k].length); } });
            return n; })};
})
"""


@pytest.fixture(scope="session")
def pages(documents, tmp_path_factory) -> dict[str, object]:
    out = tmp_path_factory.mktemp("pages")
    d = documents
    full = write_dashboard([d["run"], d["predict"], d["sweep"], d["plan"], d["validation"]], out / "full.html",
                           scenario=load_scenario(DSPARK), title="dspark-sim dashboard (test page)")
    run_page = write_run_dashboard(d["scenario_run"], out / "run.html")
    sc = load_scenario(QUICKSTART)
    from dspark_sim.core.analytic import predict_scenario

    predict_page = write_predict_dashboard(predict_scenario(sc), sc, out / "predict.html")
    validation_page = write_validation_dashboard([(1.0, 1.1, "a"), (2.0, 1.8, "b")], out / "validation.html",
                                                 quantity="speed-up")
    cli_page = out / "sweep.html"
    r = subprocess.run([sys.executable, "-m", "dspark_sim.cli.main", "dashboard", str(d["sweep"]), "-o", str(cli_page)],
                       capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "self-contained" in r.stdout
    return {"full": full, "run": run_page, "predict": predict_page, "validation": validation_page,
            "sweep": cli_page}


# --------------------------------------------------------------------------------------------
# without a browser
# --------------------------------------------------------------------------------------------


def test_pages_are_self_contained(pages):
    for name, path in pages.items():
        html = path.read_text()
        # no external script, stylesheet or image (plotly.js mentions a topojson CDN for geo maps, unused)
        markup = re.sub(r"<script[^>]*>.*?</script>", "", html, flags=re.S)
        assert "<script src=" not in html and not re.search(r"(src|href)=[\"']https?:", markup), name
        assert "plotly.js v" in html  # the library itself is inline
        assert 3e6 < path.stat().st_size < 8e6, (name, path.stat().st_size)
    full = pages["full"].read_text()
    for heading in ("Capacity and cost", "Throughput and speed", "Where speculation pays", "Latency",
                    "Where time and bytes go", "Acceptance", "Validation", "Sweeps"):
        assert f"<h2>{heading}</h2>" in full, heading


def test_inputs_are_recognised(documents):
    d = documents
    inputs = load_inputs([d["run"], d["predict"], d["sweep"] / "summary.json", d["plan"], d["validation"]])
    assert len(inputs.runs) == 1 and inputs.runs[0].records and inputs.runs[0].series
    assert len(inputs.predicts) == 1 and len(inputs.sweeps) == 1 and len(inputs.plans) == 1
    assert len(inputs.validation[0][0]) == 3 and inputs.validation[0][1] == "tokens per s"
    assert inputs.measured_acceptance == {"measured (engine, T=0)": [0.8, 0.7]}


def test_unknown_documents_are_one_line_errors(tmp_path, run_cli):
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"kind": "mystery", "x": 1}))
    with pytest.raises(InputError, match="not a result document"):
        load_inputs([other])
    r = run_cli("dashboard", str(tmp_path), "-o", str(tmp_path / "x.html"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "summary.json" in r.stderr
    r = run_cli("dashboard", str(tmp_path / "missing.json"))
    assert r.returncode == 2 and "not found" in r.stderr


def test_validation_points_and_labels():
    series = validation_points({"rows": [
        {"name": "a", "predicted_speedup": 1.5, "measured_speedup": 1.4, "predicted_tau": 2.0, "measured_tau": 2.1,
         "predicted_only": 3.0},
        {"nested": {"predicted_speedup": 2, "measured_speedup": 2.2}}]})
    assert series == {"speedup": [(1.5, 1.4, "a"), (2.0, 2.2, "rows[1].nested")], "tau": [(2.0, 2.1, "a")]}
    assert short({"kind": "iid", "alpha": 0.7}) == "iid(alpha=0.7)"
    assert short([0.5, 0.6]) == "[0.5, 0.6]" and short(0.123456) == "0.1235"


# --------------------------------------------------------------------------------------------
# in headless Chromium
# --------------------------------------------------------------------------------------------


def _check_page(browser, path, min_figures: int) -> list[dict]:
    browser.open(path.resolve().as_uri())
    browser.evaluate("window.dsparkRendered")
    figures = browser.evaluate(FIGURE_PROBE)
    assert len(figures) >= min_figures, figures
    for f in figures:
        assert f["svg"], f"{path.name} {f['id']}: plotly drew nothing"
        assert f["points"] and max(f["points"]) > 0, f"{path.name} {f['id']}: no trace has data"
    assert browser.errors() == [], browser.errors()
    remote = browser.evaluate("performance.getEntriesByType('resource').map(function (e) { return e.name; })"
                              ".filter(function (u) { return !u.startsWith('file:') && !u.startsWith('data:'); })")
    assert remote == [], f"the page fetched {remote}"
    return figures


def test_full_dashboard_renders_every_figure(browser, pages):
    figures = _check_page(browser, pages["full"], min_figures=14)
    ARTIFACTS.mkdir(exist_ok=True)
    browser.screenshot(ARTIFACTS / "dashboard.png", full_page=True)
    browser.screenshot(ARTIFACTS / "dashboard_top.png", full_page=False)
    assert (ARTIFACTS / "dashboard.png").stat().st_size > 50_000
    assert len(figures) == len(set(f["id"] for f in figures))


@pytest.mark.parametrize("name,min_figures", [("run", 8), ("predict", 6), ("validation", 1), ("sweep", 5)])
def test_command_pages_render(browser, pages, name, min_figures):
    _check_page(browser, pages[name], min_figures)
    browser.screenshot(ARTIFACTS / f"dashboard_{name}.png", full_page=True)
