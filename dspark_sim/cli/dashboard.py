"""Dashboard pages written: the result documents read and computed (`studies.dashboard`), rendered
(`report.html`), and written atomically. `dashboard`, `run -o`, `plan --report` and `sweep` write
their pages here; a validation report.json given alone gets `validate`'s own page.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from dspark_sim.config.errors import InputError
from dspark_sim.config.io import write_atomic
from dspark_sim.config.results import PlanResult, PredictResult, RunResult
from dspark_sim.config.schema import Scenario
from dspark_sim.report.html import dashboard_html
from dspark_sim.report.validation_page import validation_html
from dspark_sim.sim.run import ScenarioRun
from dspark_sim.studies.dashboard import dashboard_data
from dspark_sim.studies.dashboard_inputs import Inputs, load_inputs, read_validation_report, run_inputs


def write_dashboard(paths: Sequence[str | Path], out: str | Path, *, scenario: Scenario | None = None,
                    title: str | None = None) -> Path:
    """The `dashboard` command's page: read result documents, write one self-contained HTML file."""
    if not paths:
        raise InputError("dashboard", None, "give at least one result (sweep folder, run folder, JSON document)")
    inputs = load_inputs(paths, scenario)
    if inputs.empty:
        raise InputError(", ".join(str(p) for p in paths), None, "no result documents found")
    page = dashboard_html(dashboard_data(inputs), title, [str(p) for p in paths])
    return write_atomic(out, page)


def write_validation_report_page(report_json: str | Path, out: str | Path) -> Path | None:
    """`validate`'s page (report.html) rebuilt from its report.json; None if the file is another document."""
    report = read_validation_report(report_json)
    if report is None:
        return None
    return write_atomic(out, validation_html(report))


def write_run_dashboard(run_result: ScenarioRun | RunResult, path: str | Path, *, scenario: Scenario | None = None,
                        timeseries: Sequence[dict] | None = None,
                        records: dict[str, list[dict]] | None = None) -> Path:
    """A page for one `run`: a RunResult, or the simulator's ScenarioRun (its per-configuration time series
    and per-request records are used when present)."""
    inputs = run_inputs(run_result, scenario=scenario, timeseries=timeseries, records=records)
    result = inputs.runs[0].result
    page = dashboard_html(dashboard_data(inputs), f"dspark-sim run: {result.scenario}",
                          [f"scenario {result.scenario}, seed {result.seed}"])
    return write_atomic(path, page)


def write_predict_dashboard(predict_result: PredictResult, scenario: Scenario | None, path: str | Path) -> Path:
    """A page for one `predict`: frontier, heatmaps (from the scenario), time and bytes, acceptance."""
    inputs = Inputs(predicts=[(predict_result, "predict")], scenario=scenario)
    page = dashboard_html(dashboard_data(inputs), f"dspark-sim predict: {predict_result.scenario}",
                          [f"scenario {predict_result.scenario}"])
    return write_atomic(path, page)


def write_plan_dashboard(result: PlanResult, source: str, path: str | Path) -> Path:
    """A page for one `plan`: the candidates' capacities and costs."""
    inputs = Inputs(plans=[(result, source)])
    return write_atomic(path, dashboard_html(dashboard_data(inputs), f"dspark-sim plan: {result.name}", [source]))


def write_validation_dashboard(points: Sequence[tuple[float, float, str]], path: str | Path, *,
                               quantity: str = "value", title: str = "dspark-sim validation") -> Path:
    """A page with the predicted-vs-measured scatter of plain (predicted, measured, label) triples."""
    inputs = Inputs(validation=[(list(points), quantity, "validation")])
    return write_atomic(path, dashboard_html(dashboard_data(inputs), title, ["validation"]))
