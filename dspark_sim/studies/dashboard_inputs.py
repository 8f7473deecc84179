"""The dashboard's inputs: result documents found from the paths given, read and classified.

- a sweep folder (DIR/points.jsonl + DIR/sweep.json) or its summary.json;
- a run folder (summary.json, timeseries.json, requests_*.jsonl) or a run's summary.json;
- a predict JSON (`dspark-sim predict -o FILE`), a plan JSON (`dspark-sim plan -o FILE`);
- a validation report: any JSON whose records carry `predicted...` and `measured...` numbers.

`validate`'s own report.json (`ValidationReport`) has a page of its own: `read_validation_report`
recognises one.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from dspark_sim.config.errors import InputError, from_validation_error
from dspark_sim.config.measurements import ValidationReport
from dspark_sim.config.results import PlanResult, PredictResult, RunResult
from dspark_sim.config.schema import Scenario
from dspark_sim.sim.run import ScenarioRun
from dspark_sim.studies.labels import file_label
from dspark_sim.studies.sweep import POINTS_FILE, load_sweep_folder

M = TypeVar("M", bound=BaseModel)


@dataclass
class RunBundle:
    """A run's summary document, with its time series and per-request records when they are at hand."""

    result: RunResult
    source: str
    series: list[dict] = field(default_factory=list)  # RunTimeSeries dicts
    records: dict[str, list[dict]] = field(default_factory=dict)  # file label -> per-request records
    scenario: Scenario | None = None


@dataclass
class SweepBundle:
    """A sweep folder: its manifest and finished point records (by index)."""

    manifest: dict
    records: list[dict]
    source: str


@dataclass
class Inputs:
    """Every document of one page, by kind; `validation` holds (points, quantity, source) panels."""

    runs: list[RunBundle] = field(default_factory=list)
    predicts: list[tuple[PredictResult, str]] = field(default_factory=list)
    sweeps: list[SweepBundle] = field(default_factory=list)
    plans: list[tuple[PlanResult, str]] = field(default_factory=list)
    validation: list[tuple[list[tuple[float, float, str]], str, str]] = field(default_factory=list)
    measured_acceptance: dict[str, list[float]] = field(default_factory=dict)  # from validation reports
    scenario: Scenario | None = None

    @property
    def empty(self) -> bool:
        return not (self.runs or self.predicts or self.sweeps or self.plans or self.validation)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(str(path), None, "file not found") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(str(path), None, f"not a JSON result document: {exc}") from None


def _read_jsonl(path: Path) -> list[dict]:
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue  # a torn last line of a killed writer
    return out


def _validate(model: type[M], doc: dict, source: str) -> M:
    try:
        return model.model_validate(doc)
    except ValidationError as exc:
        raise from_validation_error(source, exc, "", doc) from None


def _run_folder(folder: Path, summary: dict | None = None) -> RunBundle:
    src = folder / "summary.json"
    doc = summary if summary is not None else _read_json(src)
    bundle = RunBundle(_validate(RunResult, doc, str(src)), str(folder))
    ts = folder / "timeseries.json"
    if ts.exists():
        bundle.series = list(_read_json(ts).get("series", []))
    for p in sorted(folder.glob("requests_*.jsonl")):
        bundle.records[p.stem.removeprefix("requests_")] = _read_jsonl(p)
    return bundle


def validation_points(doc: Any) -> dict[str, list[tuple[float, float, str]]]:
    """{quantity: [(predicted, measured, label), ...]} from any JSON whose records carry numeric
    `predicted_<quantity>` and `measured_<quantity>` pairs (`dspark-sim validate`'s report does; the
    format is its owner's, so any such shape is read)."""
    out: dict[str, list[tuple[float, float, str]]] = {}

    def num(v: Any) -> bool:
        return isinstance(v, int | float) and not isinstance(v, bool)

    def visit(node: Any, trail: str) -> None:
        if isinstance(node, dict):
            pairs = []
            for k, v in node.items():
                if k.startswith("predicted") and num(v):
                    q = k.removeprefix("predicted").strip("_")
                    mk = next((m for m in node if m.startswith("measured") and m.removeprefix("measured").strip("_")
                               == q and num(node[m])), None)
                    if mk is not None:
                        pairs.append((q or "value", float(v), float(node[mk])))
            if pairs:
                label = next((str(node[k]) for k in ("label", "name", "case", "id", "scenario") if k in node), trail)
                for q, pv, mv in pairs:
                    out.setdefault(q, []).append((pv, mv, label))
                return
            for k, v in node.items():
                visit(v, f"{trail}.{k}" if trail else str(k))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                visit(v, f"{trail}[{i}]")

    visit(doc, "")
    return out


def load_inputs(paths: Sequence[str | Path], scenario: Scenario | None = None) -> Inputs:
    """Read every result document named (files or folders); unknown files are one-line `InputError`s."""
    inputs = Inputs(scenario=scenario)
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            if (p / POINTS_FILE).exists():
                manifest, recs = load_sweep_folder(p)
                inputs.sweeps.append(SweepBundle(manifest, recs, str(p)))
            elif (p / "summary.json").exists():
                _add_doc(inputs, p / "summary.json", _read_json(p / "summary.json"))
            else:
                raise InputError(str(p), None, f"no {POINTS_FILE} (sweep) or summary.json (run) in this folder")
            continue
        doc = _read_json(p)
        kind = doc.get("kind") if isinstance(doc, dict) else None
        if kind in ("sweep", "sweep-manifest") and (p.parent / POINTS_FILE).exists():
            manifest, recs = load_sweep_folder(p.parent)
            inputs.sweeps.append(SweepBundle(manifest, recs, str(p.parent)))
        else:
            _add_doc(inputs, p, doc)
    return inputs


def _add_doc(inputs: Inputs, path: Path, doc: Any) -> None:
    kind = doc.get("kind") if isinstance(doc, dict) else None
    if kind == "run":
        if path.name == "summary.json":
            inputs.runs.append(_run_folder(path.parent, doc))
        else:
            inputs.runs.append(RunBundle(_validate(RunResult, doc, str(path)), str(path)))
    elif kind == "predict":
        inputs.predicts.append((_validate(PredictResult, doc, str(path)), str(path)))
    elif kind == "plan":
        inputs.plans.append((_validate(PlanResult, doc, str(path)), str(path)))
    elif kind == "run-timeseries":
        if inputs.runs:
            inputs.runs[-1].series.extend(doc.get("series", []))
    else:
        series = validation_points(doc)
        if not series:
            raise InputError(str(path), "kind", f"not a result document dspark-sim can draw (kind {kind!r}; "
                             "expected run, predict, sweep, plan or a validation report)")
        for quantity, pts in _ordered_quantities(series):
            inputs.validation.append((pts, quantity, str(path)))
        acc = doc.get("acceptance_by_temperature") if isinstance(doc, dict) else None
        if isinstance(acc, dict):
            for t, curve in acc.items():
                if isinstance(curve, list) and curve:
                    inputs.measured_acceptance[f"measured (engine, T={t})"] = [float(x) for x in curve]


def _ordered_quantities(series: dict[str, list]) -> list[tuple[str, list]]:
    """Speed-up and tokens/s first (what a validation is about), at most four panels."""
    order = ["speedup", "tokens_per_s", "tau", "baseline_tokens_per_s"]
    keys = sorted(series, key=lambda q: (order.index(q) if q in order else len(order), q))
    return [(q.replace("_", " "), series[q]) for q in keys[:4]]


# --------------------------------------------------------------------------------------------


def run_inputs(run: ScenarioRun | RunResult, *, scenario: Scenario | None = None,
               timeseries: Sequence[dict] | None = None, records: dict[str, list[dict]] | None = None) -> Inputs:
    """The inputs of one `run`'s page: a RunResult, or the simulator's ScenarioRun (its per-configuration
    time series and per-request records are used when present)."""
    if isinstance(run, ScenarioRun):
        scenario = scenario or run.scenario
        series = [r.series.model_dump(mode="json") for r in run.runs if r.series]
        recs = {file_label(r.summary): r.records for r in run.runs if r.records}
        result = run.result
    else:
        result, series, recs = run, [], {}
    if timeseries:
        series = [s if isinstance(s, dict) else s.model_dump(mode="json") for s in timeseries]
    if records:
        recs = dict(records)
    bundle = RunBundle(result, f"run {result.scenario}", list(series), recs, scenario)
    return Inputs(runs=[bundle], scenario=scenario)


def read_validation_report(path: str | Path) -> ValidationReport | None:
    """`validate`'s report.json (kind 'validation' with the run's device) as a ValidationReport, else None.

    Other documents with predicted/measured pairs (kind 'validation' without a device included) go
    to the dashboard's validation panels instead; a file that claims to be a report but does not
    validate is a one-line `InputError`.
    """
    p = Path(path)
    if p.is_dir():
        return None
    doc = _read_json(p)
    if not (isinstance(doc, dict) and doc.get("kind") == "validation" and "device" in doc):
        return None
    return _validate(ValidationReport, doc, str(p))
