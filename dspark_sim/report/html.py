"""Self-contained HTML dashboards (`dspark-sim dashboard`): one file, plotly.js inline, opens offline.

Inputs are result documents, found from the paths given:
- a sweep folder (DIR/points.jsonl + DIR/sweep.json) or its summary.json;
- a run folder (summary.json, timeseries.json, requests_*.jsonl) or a run's summary.json;
- a predict JSON (`dspark-sim predict -o FILE`), a plan JSON (`dspark-sim plan -o FILE`);
- a validation report: any JSON whose records carry `predicted...` and `measured...` numbers.

`write_dashboard(paths, out)` is the command; `write_run_dashboard` and `write_predict_dashboard` let
`run` and `predict`/`validate` write their own page from in-memory results.
"""

from __future__ import annotations

import contextlib
import html
import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go

import dspark_sim
from dspark_sim.config.errors import InputError
from dspark_sim.config.io import write_atomic
from dspark_sim.config.results import PlanResult, PredictResult, RunResult
from dspark_sim.config.schema import IIDAcceptance, Scenario
from dspark_sim.report import figures as F

# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


@dataclass
class RunBundle:
    result: RunResult
    source: str
    series: list[dict] = field(default_factory=list)  # RunTimeSeries dicts
    records: dict[str, list[dict]] = field(default_factory=dict)  # file label -> per-request records
    scenario: Scenario | None = None


@dataclass
class SweepBundle:
    manifest: dict
    records: list[dict]
    source: str


@dataclass
class Inputs:
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


def _validate(model, doc: dict, source: str):
    from pydantic import ValidationError

    from dspark_sim.config.errors import from_validation_error

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
    from dspark_sim.studies.sweep import POINTS_FILE, load_sweep_folder

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
# Labels
# --------------------------------------------------------------------------------------------


def short(value: Any) -> str:
    """A compact label for a parameter value: `{kind: iid, alpha: 0.7}` -> `iid(alpha=0.7)`."""
    if isinstance(value, dict):
        kind = value.get("kind")
        rest = ", ".join(f"{k}={short(v)}" for k, v in value.items() if k != "kind")
        return f"{kind}({rest})" if kind is not None else f"{{{rest}}}"
    if isinstance(value, list):
        inner = ", ".join(short(v) for v in value[:4])
        return f"[{inner}{', ...' if len(value) > 4 else ''}]"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _policy_text(s) -> str:
    if s.policy == "fixed":
        return f"fixed γ={s.gamma_max}"
    return f"{s.policy} γ≤{s.gamma_max}" if s.gamma_max else s.policy


def summary_label(s) -> str:
    """'no speculation', 'dspark, dspark γ≤5', 'mtp1: mtp, fixed γ=1'."""
    if not s.speculative:
        return "no speculation"
    text = f"{s.drafter}, {_policy_text(s)}"
    return text if s.variant == "main" else f"{s.variant}: {text}"


_LOAD_WORDS = ("arrivals", "concurrency", "rate_per_s", "think_time")
_SPEC_PREFIXES = ("policy", "deployment.drafter", "acceptance", "workload.domains")


def is_load_param(name: str) -> bool:
    return any(w in name for w in _LOAD_WORDS)


def _is_spec_param(name: str, groups: dict) -> bool:
    if name in groups:
        paths = {p for label in groups[name].values() for p in label}
        return bool(paths) and all(p.startswith(_SPEC_PREFIXES) for p in paths)
    return name.startswith(_SPEC_PREFIXES)


def _file_label(s) -> str:
    """The simulator's per-request file stem for a summary (requests_<stem>.jsonl)."""
    text = s.variant if s.sweep_value is None else f"{s.variant}_{s.sweep_value}"
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text)


# --------------------------------------------------------------------------------------------
# Run summaries from every source, with their context
# --------------------------------------------------------------------------------------------


@dataclass
class Row:
    """One simulated configuration: its summary, a series label, its load and a hover text."""

    summary: Any
    label: str
    load: float | None  # the swept concurrency / rate, when known
    load_name: str
    hover: str
    records: list[dict] | None = None


def run_rows(inputs: Inputs) -> list[Row]:
    rows: list[Row] = []
    multi = len(inputs.runs) + len(inputs.sweeps) > 1
    for b in inputs.runs:
        res = b.result
        prefix = f"{res.scenario} · " if multi else ""
        load_name = res.sweep_path.split(".")[-1] if res.sweep_path else "mean batch"
        for s in res.summaries:
            load = s.sweep_value if isinstance(s.sweep_value, int | float) and res.sweep_path else None
            hover = (f"{res.sweep_path.split('.')[-1]}={s.sweep_value}<br>" if res.sweep_path else "") + (
                f"TTFT p99 {s.ttft_s.p99:.3g} s, TPOT p99 {s.tpot_ms.p99:.3g} ms")
            rows.append(Row(s, prefix + summary_label(s), load, load_name, hover, b.records.get(_file_label(s))))
    for sw in inputs.sweeps:
        if sw.manifest.get("command") != "run":
            continue
        groups = (sw.manifest.get("spec") or {}).get("groups") or {}
        prefix = f"{sw.manifest.get('name', 'sweep')} · " if multi else ""
        for rec in sw.records:
            if rec.get("status") != "ok" or not rec.get("result"):
                continue
            try:
                res = RunResult.model_validate(rec["result"])
            except Exception:
                continue
            params = rec.get("params", {})
            load_params = [k for k in params if is_load_param(k)]
            load_name = load_params[0].split(".")[-1] if load_params else "mean batch"
            load = params[load_params[0]] if load_params and isinstance(params[load_params[0]], int | float) else None
            spec_swept = any(_is_spec_param(k, groups) for k in params)
            for s in res.summaries:
                if s.speculative:
                    others = [short(v) for k, v in params.items() if not is_load_param(k)]
                else:
                    others = [short(v) for k, v in params.items()
                              if not is_load_param(k) and not _is_spec_param(k, groups)]
                base = summary_label(s)
                if s.speculative and spec_swept and others:  # the swept values already name the policy
                    base = "" if s.variant == "main" else s.variant
                    if not base:
                        label = prefix + " · ".join(others)
                        sv = f"{res.sweep_path.split('.')[-1]}={s.sweep_value}, " if res.sweep_path else ""
                        hover = ", ".join(f"{k.split('.')[-1]}={short(v)}" for k, v in params.items()) + (
                            f"<br>{summary_label(s)}<br>{sv}TTFT p99 {s.ttft_s.p99:.3g} s, "
                            f"TPOT p99 {s.tpot_ms.p99:.3g} ms")
                        lv = load if load is not None else (
                            s.sweep_value if res.sweep_path and isinstance(s.sweep_value, int | float) else None)
                        rows.append(Row(s, label, lv, load_name, hover))
                        continue
                label = prefix + (" · ".join([*others, base]) if others and s.speculative else
                                  (" · ".join([base, *others]) if others else base))
                sv = f"{res.sweep_path.split('.')[-1]}={s.sweep_value}, " if res.sweep_path else ""
                hover = ", ".join(f"{k.split('.')[-1]}={short(v)}" for k, v in params.items()) + (
                    f"<br>{sv}TTFT p99 {s.ttft_s.p99:.3g} s, TPOT p99 {s.tpot_ms.p99:.3g} ms")
                lv = load if load is not None else (
                    s.sweep_value if res.sweep_path and isinstance(s.sweep_value, int | float) else None)
                ln = load_name if load is not None else (res.sweep_path.split(".")[-1] if res.sweep_path else load_name)
                rows.append(Row(s, label, lv, ln, hover))
    # one baseline per (label, load): sweeps repeat it for every speculative setting
    seen: set[tuple] = set()
    out = []
    for r in rows:
        if not r.summary.speculative:
            key = (r.label, r.load, round(r.summary.throughput_tokens_per_s_per_gpu, 6))
            if key in seen:
                continue
            seen.add(key)
        out.append(r)
    return out


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------


@dataclass
class Card:
    title: str
    caption: str = ""
    figure: go.Figure | None = None
    html: str = ""
    wide: bool = False


@dataclass
class Section:
    title: str
    intro: str
    cards: list[Card]


def _group(rows: Iterable[Row]) -> dict[str, list[Row]]:
    out: dict[str, list[Row]] = {}
    for r in rows:
        out.setdefault(r.label, []).append(r)
    # baselines last so speculative policies get the first colours
    return dict(sorted(out.items(), key=lambda kv: F.is_baseline_label(kv[0])))


def _slo_speed(inputs: Inputs) -> float | None:
    for pr, _ in inputs.plans:
        if pr.slo.get("min_tokens_per_s_per_user"):
            return pr.slo["min_tokens_per_s_per_user"]
    sc = inputs.scenario or next((b.scenario for b in inputs.runs if b.scenario is not None), None)
    return sc.slo.min_tokens_per_s_per_user if sc is not None else None


def predict_frontier_series(pr: PredictResult) -> dict[str, list[tuple[float, float, str]]]:
    """Across the grid's batch sizes at its first context length: no speculation, each gamma, best gamma."""
    if not pr.points:
        return {}
    ctx = pr.points[0].context_tokens
    pts = [p for p in pr.points if p.context_tokens == ctx]
    out: dict[str, list[tuple[float, float, str]]] = {"best γ (per batch)": [], "no speculation": []}
    for p in pts:
        out["best γ (per batch)"].append((p.best.tokens_per_s_per_user, p.best.throughput_tokens_per_s_per_gpu,
                                          f"batch {p.batch_size}, γ={p.best_gamma}, {p.best.speedup:.2f}x"))
        out["no speculation"].append((p.baseline_tokens_per_s_per_user, p.baseline_throughput_tokens_per_s_per_gpu,
                                      f"batch {p.batch_size}"))
        for s in p.by_gamma:
            if s.gamma in (1, 3, 5):
                out.setdefault(f"fixed γ={s.gamma}", []).append(
                    (s.tokens_per_s_per_user, s.throughput_tokens_per_s_per_gpu, f"batch {p.batch_size}"))
    return out


def section_tradeoffs(inputs: Inputs, rows: list[Row], colors: F.Colors) -> Section | None:
    cards: list[Card] = []
    groups = _group(rows)
    if groups:
        series = {label: [(r.summary.tokens_per_s_per_user, r.summary.throughput_tokens_per_s_per_gpu, r.hover)
                          for r in rs] for label, rs in groups.items()}
        fig = F.frontier_figure(series, slo_tokens_per_s_per_user=_slo_speed(inputs), colors=colors,
                                title="Throughput per GPU vs tokens/s per user (simulated)")
        if fig is not None:
            slo_note = "; the dotted line is the per-user speed SLO" if _slo_speed(inputs) else ""
            cards.append(Card("Throughput–latency frontier by policy",
                              "Each point is one simulated load; lines join each policy's Pareto-optimal points. "
                              f"Up and to the right is better{slo_note}.", fig, wide=True))
    for pr, _src in inputs.predicts:
        fig = F.frontier_figure(predict_frontier_series(pr), colors=colors,
                                title=f"Closed-form frontier: {pr.model} on {pr.hardware}, context "
                                      f"{pr.points[0].context_tokens if pr.points else '?'}")
        if fig is not None:
            cards.append(Card("Predicted frontier across batch sizes",
                              "From `predict`: one point per batch size; best γ picks the draft length per batch.",
                              fig, wide=not groups))
    spec_rows = [r for r in rows if r.summary.speculative]
    by_label = _group(spec_rows)
    if by_label and any(r.load is not None for r in spec_rows):
        load_name = " / ".join(dict.fromkeys(r.load_name for r in spec_rows if r.load is not None))
        series = {label: [(r.load, r.summary.mean_verify_budget) for r in rs if r.load is not None]
                  for label, rs in by_label.items()}
        fig = F.verify_budget_figure(series, xtitle=load_name, colors=colors)
        if fig is not None:
            cards.append(Card("Verification budget vs concurrency",
                              "Draft tokens verified per request per decode step (add 1 for the target's own token, "
                              "as DSpark counts). A load-aware policy verifies more when the batch is small.", fig))
    elif by_label:
        series = {label: [(r.summary.mean_batch_size, r.summary.mean_verify_budget) for r in rs]
                  for label, rs in by_label.items()}
        fig = F.verify_budget_figure(series, xtitle="mean decode batch (concurrent requests)", colors=colors)
        if fig is not None:
            cards.append(Card("Verification budget vs concurrency",
                              "Draft tokens verified per request per decode step.", fig))
    ts_series: dict[str, list[tuple[float, float]]] = {}
    for b in inputs.runs:
        for s in b.series:
            if not any(v is not None for v in s.get("verify_budget", [])):
                continue
            label = next((summary_label(x) for x in b.result.summaries
                          if x.variant == s["variant"] and x.sweep_value == s.get("sweep_value")), s["variant"])
            ts_series.setdefault(label, []).extend(
                (r, v) for r, v in zip(s["running"], s["verify_budget"]) if v is not None and r)
    if ts_series and len(cards) < 3:
        fig = F.verify_budget_figure(ts_series, xtitle="sequences in the batch (mean over a time bin)",
                                     colors=colors, scatter=True)
        if fig is not None:
            cards.append(Card("Verification budget over time vs batch",
                              "Each dot is one time bin of the simulation.", fig))
    if not cards:
        return None
    return Section("Throughput and speed", "How much throughput each policy keeps as per-user speed rises, "
                   "and how many tokens it chooses to verify.", cards)


def _scenario_for(inputs: Inputs) -> Scenario | None:
    if inputs.scenario is not None:
        return inputs.scenario
    for b in inputs.runs:
        if b.scenario is not None:
            return b.scenario
    from dspark_sim.config.loader import scenario_from_dict

    for sw in inputs.sweeps:
        raw = sw.manifest.get("base_scenario")
        if isinstance(raw, dict):
            try:
                return scenario_from_dict(raw, sw.source)
            except InputError:
                continue
    return None


def heatmaps(sc: Scenario) -> list[Card]:
    """Speed-up over acceptance x gamma and over batch x context, from the closed form (`predict_grid`)."""
    from dspark_sim.core.acceptance import survival_curve
    from dspark_sim.core.analytic import kv_bytes_per_token_per_gpu, memory_available_bytes, predict_grid
    from dspark_sim.core.costmodel import StepCoster

    dep = sc.deployment
    if dep.drafter.kind == "none":
        return []
    coster = StepCoster.for_deployment(dep)
    gammas = list(range(1, 9))
    batch = sc.predict.batch_sizes[0]
    ctx = sc.predict.context_lengths[0]
    alphas = [round(a, 2) for a in np.arange(0.40, 0.96, 0.05)]
    z = []
    for a in alphas:
        g = predict_grid(coster, IIDAcceptance(alpha=a), [batch], [ctx], gammas)
        z.append([float(v) for v in g.speedup[0, 0, :]])
    cards = []
    fig = F.heatmap_figure(z, gammas, alphas, title=f"Speed-up by α and γ (batch {batch}, "
                           f"context {ctx})", xtitle="γ (draft tokens per step)", ytitle="i.i.d. acceptance α")
    if fig is not None:
        cards.append(Card("Speed-up: acceptance × γ",
                          f"{dep.model.name} + {dep.drafter.kind} on {dep.hardware.name} ×{dep.tensor_parallel}; "
                          "blue = faster than no speculation, red = slower.", fig))
    batches = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
    contexts = [512, 1024, 2048, 4096, 8192, 16384, 32768, 65536]
    g = predict_grid(coster, sc.acceptance, batches, contexts, sorted(set(sc.predict.gammas)) or gammas)
    best = np.max(g.speedup, axis=2)
    best_g = np.asarray(g.gammas)[np.argmax(g.tokens_per_s_per_user, axis=2)]
    kv_tok = kv_bytes_per_token_per_gpu(coster)
    room = memory_available_bytes(sc)
    gmax = max(sc.predict.gammas or [8])
    z2: list[list[float | None]] = []
    text: list[list[str]] = []
    for j, c in enumerate(contexts):
        row, trow = [], []
        for i, b in enumerate(batches):
            fits = b * (c + gmax + 1) * kv_tok <= room
            row.append(float(best[i, j]) if fits else None)
            trow.append(f"{best[i, j]:.2f}<br>γ{int(best_g[i, j])}" if fits else "")
        z2.append(row)
        text.append(trow)
    fig = F.heatmap_figure(z2, batches, contexts, text=text, title="Best-γ speed-up by batch and context",
                           xtitle="batch (sequences)", ytitle="context (tokens)")
    if fig is not None:
        surv = survival_curve(sc.acceptance, 3)
        cards.append(Card("Speed-up: batch × context",
                          f"Scenario acceptance ({sc.acceptance.kind}, a₁..a₃ = "
                          f"{', '.join(f'{a:.2f}' for a in surv)}); each cell shows the speed-up and its best γ. "
                          "Blank: the batch's KV cache does not fit in memory.", fig))
    return cards


def predict_heatmap(pr: PredictResult) -> Card | None:
    batches = sorted({p.batch_size for p in pr.points})
    contexts = sorted({p.context_tokens for p in pr.points})
    if len(batches) < 2 and len(contexts) < 2:
        return None
    at = {(p.batch_size, p.context_tokens): p for p in pr.points}
    z = [[at[(b, c)].best.speedup if (b, c) in at and at[(b, c)].fits_in_memory else None for b in batches]
         for c in contexts]
    text = [[f"{at[(b, c)].best.speedup:.2f}<br>γ{at[(b, c)].best_gamma}" if (b, c) in at and at[(b, c)].fits_in_memory
             else "" for b in batches] for c in contexts]
    fig = F.heatmap_figure(z, batches, contexts, text=text, title=f"Predicted speed-up ({pr.scenario})",
                           xtitle="batch (sequences)", ytitle="context (tokens)")
    return Card("Speed-up: batch × context (predict grid)", "Blank: does not fit in memory.", fig) if fig else None


def section_heatmaps(inputs: Inputs) -> Section | None:
    cards: list[Card] = []
    sc = _scenario_for(inputs)
    if sc is not None:
        cards += heatmaps(sc)
    elif inputs.predicts:
        card = predict_heatmap(inputs.predicts[0][0])
        if card:
            cards.append(card)
    if not cards:
        return None
    return Section("Where speculation pays", "Closed-form speed-up (tokens/s per user over no speculation at the "
                   "same batch) from the predictor, for the scenario's deployment.", cards)


def section_latency(inputs: Inputs, rows: list[Row], colors: F.Colors) -> Section | None:
    cards: list[Card] = []
    slo = {}
    sc = _scenario_for(inputs)
    if sc is not None:
        slo = {"ttft_s": sc.slo.ttft_p99_s, "tpot_ms": sc.slo.tpot_p99_ms}
    with_records = [r for r in rows if r.records and any(x.get("measured", True) for x in r.records)]
    at = ""
    loads = sorted({r.load for r in with_records if r.load is not None})
    if loads:  # one load: the heaviest, so each policy is one curve in its own colour
        heavy = loads[-1]
        with_records = [r for r in with_records if r.load == heavy]
        at = f" at {with_records[0].load_name} {heavy:g}"
    with_records = with_records[:10]
    if with_records:
        samples: dict[str, dict[str, list[float]]] = {}
        for r in with_records:
            recs = [x for x in r.records or [] if x.get("measured", True)]
            samples[r.label] = {k: [x[k] for x in recs if x.get(k) is not None] for k in ("ttft_s", "tpot_ms")}
        fig = F.latency_cdf_figure(samples, colors=colors, slo=slo)
        if fig is not None:
            fig.update_layout(title={"text": f"Latency CDFs (per request){at}"})
            cards.append(Card("Latency CDFs", f"Per-request TTFT and TPOT{at}; dotted lines are the p99 SLOs.",
                              fig, wide=True))
    loads = [r for r in rows if r.load is not None]
    if loads:
        from plotly.subplots import make_subplots

        fig = make_subplots(rows=1, cols=2, subplot_titles=["TTFT p99, s", "TPOT p99, ms"], horizontal_spacing=0.1)
        for label, rs in _group(loads).items():
            rs = sorted(rs, key=lambda r: r.load)
            for col, get in ((1, lambda r: r.summary.ttft_s.p99), (2, lambda r: r.summary.tpot_ms.p99)):
                fig.add_trace(go.Scatter(
                    x=[r.load for r in rs], y=[get(r) for r in rs], name=label, legendgroup=label,
                    showlegend=col == 1, mode="lines+markers",
                    line={"color": colors(label), "dash": "dash" if F.is_baseline_label(label) else "solid"},
                ), row=1, col=col)
        F._layout(fig, "p99 latency vs load", " / ".join(dict.fromkeys(r.load_name for r in loads)), "")
        cards.append(Card("Latency vs load", "Tail latency as the load grows; where a curve turns up is the "
                          "capacity under that SLO.", fig, wide=True))
    elif not with_records and rows:
        stats = {r.label: {"ttft_s": r.summary.ttft_s.model_dump(), "tpot_ms": r.summary.tpot_ms.model_dump()}
                 for r in rows[:10]}
        fig = F.latency_percentiles_figure(stats, colors=colors)
        if fig is not None:
            cards.append(Card("Latency percentiles", "p50 / p90 / p99 of TTFT and TPOT (no per-request files).",
                              fig, wide=True))
    if not cards:
        return None
    return Section("Latency", "Time to first token (TTFT) and time per output token (TPOT).", cards)


def _representative(rows: list[Row], limit: int = 10) -> list[Row]:
    """For the bar charts: every configuration if few, else each label at its heaviest load."""
    if len(rows) <= limit:
        return rows
    top: dict[str, Row] = {}
    for r in rows:
        if r.label not in top or (r.load or 0) > (top[r.label].load or 0):
            top[r.label] = r
    return list(top.values())[:limit]


def section_costs(inputs: Inputs, rows: list[Row]) -> Section | None:
    cards: list[Card] = []
    rep = _representative(rows)
    multi_load = len({r.load for r in rep}) > 1

    def name(r: Row) -> str:
        return r.label + (f" @ {r.load_name} {r.load:g}" if multi_load and r.load is not None else "")

    if rep:
        trows = []
        for r in rep:
            s = r.summary
            busy = min(1.0, max(0.0, s.busy_fraction))
            trows.append((name(r), {"draft": s.draft_time_fraction * busy, "verify": s.verify_time_fraction * busy,
                                    "overhead": s.overhead_time_fraction * busy, "idle": 1.0 - busy}))
        wide = max(len(t[0]) for t in trows) > 40
        fig = F.time_breakdown_figure(trows, title="Where replica time goes (simulated)")
        if fig is not None:
            cards.append(Card("Time breakdown", "Share of replica time in draft passes, target (verify and prefill) "
                              "passes, fixed per-step overhead, and idle.", fig, wide=wide))
        brows = [(name(r), {"hbm": r.summary.hbm_gb_per_output_token * 1e3,
                            "onchip": r.summary.onchip_gb_per_output_token * 1e3}) for r in rep]
        fig = F.bytes_figure(brows, title="Memory traffic per output token (simulated, per GPU)")
        if fig is not None:
            cards.append(Card("Bytes moved", "HBM vs on-chip (SRAM/L2) reads per output token: speculation amortises "
                              "the weight and KV reads over the accepted tokens.", fig, wide=wide))
    for pr, _ in inputs.predicts[:1]:
        sel = pr.points[: min(6, len(pr.points))]
        trows, brows = [], []
        for p in sel:
            tag = f"b{p.batch_size} c{p.context_tokens}"
            trows.append((f"{tag} no spec.", {"verify": p.baseline.time_ms,
                                              "overhead": max(0.0, p.baseline_step_ms - p.baseline.time_ms)}))
            b = p.best
            trows.append((f"{tag} γ={b.gamma} (÷τ {b.tau:.2f})",
                          {"draft": b.draft.time_ms / b.tau, "verify": b.verify.time_ms / b.tau,
                           "overhead": max(0.0, b.step_ms - b.draft.time_ms - b.verify.time_ms) / b.tau}))
            brows.append((f"{tag} no spec.", {"hbm": p.baseline.hbm_gb * 1e3 / p.batch_size,
                                              "onchip": p.baseline.onchip_gb * 1e3 / p.batch_size}))
            n = p.batch_size * b.tau
            brows.append((f"{tag} γ={b.gamma}", {"hbm": (b.draft.hbm_gb + b.verify.hbm_gb) * 1e3 / n,
                                                 "onchip": (b.draft.onchip_gb + b.verify.onchip_gb) * 1e3 / n}))
        fig = F.time_breakdown_figure(trows, percent=False, title="Predicted time per output token")
        if fig is not None:
            fig.update_xaxes(title_text="ms per output token per sequence")
            cards.append(Card("Time per output token (predict)", "Speculative steps divided by τ, the tokens a step "
                              "yields, next to a plain decode step.", fig))
        fig = F.bytes_figure(brows, title="Predicted memory traffic per output token (per GPU)")
        if fig is not None:
            cards.append(Card("Bytes per output token (predict)", "HBM vs on-chip traffic of a step, per output "
                              "token.", fig))
    if not cards:
        return None
    return Section("Where time and bytes go", "Draft, verify and overhead time; HBM and on-chip traffic.", cards)


def section_acceptance(inputs: Inputs, rows: list[Row], colors: F.Colors) -> Section | None:
    from dspark_sim.core.acceptance import conditional_curve

    series: dict[str, list[float]] = {}
    for r in _representative([r for r in rows if r.summary.speculative], limit=8):
        if r.summary.acceptance_per_position:
            series.setdefault(r.label, list(r.summary.acceptance_per_position))
    for pr, _ in inputs.predicts[:2]:
        surv = [1.0, *pr.survival]
        cond = [surv[k + 1] / surv[k] if surv[k] > 0 else float("nan") for k in range(len(pr.survival))]
        series[f"{pr.scenario} (predict)"] = cond
    series.update(inputs.measured_acceptance)
    sc = _scenario_for(inputs)
    if sc is not None and sc.deployment.drafter.kind != "none":
        with contextlib.suppress(InputError):  # e.g. a trace file that is not there any more
            series.setdefault("scenario's acceptance model", [float(x) for x in conditional_curve(sc.acceptance, 8)])
    fig = F.acceptance_figure(series, colors=colors)
    if fig is None:
        return None
    return Section("Acceptance", "Conditional acceptance of each draft position: parallel drafters start high and "
                   "decay, autoregressive ones start lower (DSpark, Fig. 2).",
                   [Card("Acceptance by position", ("Observed in simulation (per configuration) and the model's c_k."
                          if rows else "The acceptance model's c_k."), fig, wide=True)])


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if not math.isfinite(v):
            return "–"
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.{digits}g}"
    return html.escape(str(v))


def plan_table(pr: PlanResult) -> str:
    load_unit = "req/s" if pr.load_kind == "requests_per_s" else "users"
    head = ("<tr><th>hardware</th><th>TP</th><th class=\"t\">speculation</th><th>capacity / replica</th><th>replicas</th>"
            "<th>GPUs</th><th>capacity</th><th>$/hour</th><th>$/M output tokens</th><th>TTFT p99 s</th>"
            "<th>TPOT p99 ms</th><th>tok/s/user</th><th>note</th></tr>")
    best = pr.best
    body = []
    cands = sorted(pr.candidates, key=lambda c: (c.usd_per_million_output_tokens is None,
                                                 c.usd_per_million_output_tokens or 0))
    for c in cands:
        is_best = best is not None and (c.hardware, c.tensor_parallel, c.speculation) == (
            best.hardware, best.tensor_parallel, best.speculation)
        cls = ' class="best"' if is_best else (' class="out"' if not c.feasible or c.replicas is None else "")
        at = c.at_capacity or {}
        note = "cheapest" if is_best else (c.reason or "")
        body.append(
            f"<tr{cls}><td>{html.escape(c.hardware)}</td><td>{c.tensor_parallel}</td>"
            f"<td class=\"t\">{html.escape(c.speculation)}</td><td>{_fmt(c.replica_capacity)} {load_unit}</td>"
            f"<td>{_fmt(c.replicas)}</td><td>{_fmt(c.gpus)}</td><td>{_fmt(c.capacity)}</td>"
            f"<td>{_fmt(c.usd_per_hour)}</td><td><b>{_fmt(c.usd_per_million_output_tokens)}</b></td>"
            f"<td>{_fmt(at.get('ttft_p99_s'))}</td><td>{_fmt(at.get('tpot_p99_ms'))}</td>"
            f"<td>{_fmt(at.get('tokens_per_s_per_user'))}</td><td>{html.escape(note)}</td></tr>"
        )
    return f'<div class="table-wrap"><table class="data">{head}{"".join(body)}</table></div>'


def section_plans(inputs: Inputs) -> Section | None:
    cards = []
    for pr, src in inputs.plans:
        slo = ", ".join(f"{k} {v:g}" for k, v in pr.slo.items() if v is not None)
        prices = ", ".join(f"{k} ${v:g}/GPU-hour" for k, v in pr.prices_usd_per_gpu_hour.items())
        lines = [f"Target: {pr.load:g} {'requests/s' if pr.load_kind == 'requests_per_s' else 'concurrent users'}; "
                 f"SLO: {slo}. GPU prices are the plan file's inputs: {prices}."]
        if pr.best is not None:
            lines.append(f"Cheapest: <b>{html.escape(pr.best.hardware)} TP{pr.best.tensor_parallel} × "
                         f"{pr.best.replicas} replicas, {html.escape(pr.best.speculation)}</b> at "
                         f"${pr.best.usd_per_million_output_tokens:.3f} per million output tokens.")
        if pr.saving_fraction is not None:
            lines.append(f"Speculation saves {pr.saving_fraction:.0%} against the cheapest plan without it.")
        cards.append(Card(f"Capacity plan: {pr.name}", "", html="<p>" + " ".join(lines) + "</p>" + plan_table(pr),
                          wide=True))
        rows = [(f"{c.hardware} TP{c.tensor_parallel} ×{c.replicas} · {c.speculation}",
                 c.usd_per_million_output_tokens, c.speculative) for c in pr.candidates
                if c.usd_per_million_output_tokens is not None]
        best_label = (f"{pr.best.hardware} TP{pr.best.tensor_parallel} ×{pr.best.replicas} · {pr.best.speculation}"
                      if pr.best else None)
        fig = F.cost_figure(rows, best_label=best_label)
        if fig is not None:
            cards.append(Card("Cost per million output tokens", "Green: the cheapest deployment meeting the SLOs; "
                              "grey: without speculation.", fig, wide=True))
        _ = src
    if not cards:
        return None
    return Section("Capacity and cost", "Cheapest deployment meeting the SLOs, from short simulations and a "
                   "bisection on the load (as Vidur's capacity search).", cards)


def section_validation(inputs: Inputs) -> Section | None:
    cards = []
    for pts, quantity, src in inputs.validation:
        fig = validation_figure(pts, quantity)
        if fig is not None:
            fig.update_layout(title={"text": f"Predicted vs measured {quantity}"})
            errs = [abs(p - m) / abs(m) * 100 for p, m, _ in pts if m]
            stat = f" Median |error| {float(np.median(errs)):.1f}%, worst {max(errs):.1f}%." if errs else ""
            cards.append(Card(f"{quantity} ({Path(src).name})", "Points on the diagonal agree; the bands are ±10% "
                              f"and ±25%.{stat}", fig))
    if not cards:
        return None
    return Section("Validation", "The model against measurements.", cards)


def validation_figure(points: Sequence[tuple[float, float, str]], quantity: str = "value") -> go.Figure | None:
    return F.validation_scatter(points, quantity=quantity)


def _sweep_metric(command: str) -> list[tuple[str, str]]:
    if command == "run":
        return [("throughput_tokens_per_s_per_gpu", "tokens/s per GPU"), ("tokens_per_s_per_user", "tokens/s per user")]
    return [("speedup", "speed-up (first grid point)"), ("speedup_max", "best speed-up over the grid")]


def section_sweeps(inputs: Inputs, colors: F.Colors) -> Section | None:
    cards: list[Card] = []
    for sw in inputs.sweeps:
        spec = sw.manifest.get("spec") or {}
        names = list(spec.get("parameters") or {}) + list(spec.get("groups") or {})
        ok = [r for r in sw.records if r.get("status") == "ok"]
        if not names:
            names = list(ok[0]["params"]) if ok else []
        numeric = [n for n in names if ok and all(isinstance(r["params"].get(n), int | float)
                                                    and not isinstance(r["params"].get(n), bool) for r in ok)]

        def distinct(n: str, ok: list = ok) -> int:
            return len({json.dumps(r["params"].get(n), sort_keys=True, default=str) for r in ok})

        # x: the (numeric, if any) parameter with the most values; the others make the lines
        pool = numeric or names
        x_name = max(pool, key=distinct) if pool else None
        for key, title in _sweep_metric(sw.manifest.get("command", "predict"))[:2]:
            if x_name is None:
                break
            series: dict[str, list[tuple[float, float]]] = {}
            cats = []
            for r in ok:
                y = r.get("metrics", {}).get(key)
                if y is None:
                    continue
                label = " · ".join(short(r["params"][n]) for n in names if n != x_name) or "all points"
                xv = r["params"][x_name]
                if not isinstance(xv, int | float):
                    sx = short(xv)
                    if sx not in cats:
                        cats.append(sx)
                    xv = cats.index(sx)
                series.setdefault(label, []).append((xv, y))
            fig = F.lines_figure(series, title=f"{title} by {x_name.split('.')[-1]}", xtitle=x_name, ytitle=title,
                                 colors=colors, log_x=bool(numeric) and _wide_range([r["params"][x_name] for r in ok]))
            if fig is not None:
                if cats:
                    fig.update_xaxes(tickvals=list(range(len(cats))), ticktext=cats)
                cards.append(Card(f"{sw.manifest.get('name', 'sweep')}: {title}",
                                  f"{len(ok)} points ({len(sw.records) - len(ok)} errors); one line per combination "
                                  "of the other parameters.", fig))
        cards.append(Card(f"{sw.manifest.get('name', 'sweep')}: points", "", html=sweep_table(sw, names), wide=True))
    if not cards:
        return None
    return Section("Sweeps", "Each point is the base scenario with the swept fields set.", cards)


def _wide_range(values: list) -> bool:
    nums = [v for v in values if isinstance(v, int | float) and v > 0]
    return bool(nums) and max(nums) / min(nums) >= 20


def sweep_table(sw: SweepBundle, names: list[str], limit: int = 300) -> str:
    cmd = sw.manifest.get("command", "predict")
    metrics = (["throughput_tokens_per_s_per_gpu", "tokens_per_s_per_user", "ttft_p99_s", "tpot_p99_ms", "tau",
                "mean_verify_budget", "speedup_throughput", "slo_met"] if cmd == "run"
               else ["speedup", "best_gamma", "tau", "tokens_per_s_per_user", "speedup_max", "best_gamma_at_max"])
    heads = {"throughput_tokens_per_s_per_gpu": "tok/s/GPU", "tokens_per_s_per_user": "tok/s/user",
             "ttft_p99_s": "TTFT p99 s", "tpot_p99_ms": "TPOT p99 ms", "mean_verify_budget": "verify",
             "speedup_throughput": "x tput", "slo_met": "SLO", "best_gamma": "γ", "speedup_max": "max speed-up",
             "best_gamma_at_max": "γ at max"}
    head = "".join(f"<th>{html.escape(n.split('.')[-1])}</th>" for n in names)
    head += "".join(f"<th>{heads.get(m, m)}</th>" for m in metrics)
    rows = []
    for r in sw.records[:limit]:
        cells = "".join(f"<td>{html.escape(short(r['params'].get(n)))}</td>" for n in names)
        if r.get("status") == "ok":
            cells += "".join(f"<td>{_fmt(r.get('metrics', {}).get(m))}</td>" for m in metrics)
        else:
            cells += f'<td colspan="{len(metrics)}" class="err">{html.escape(str(r.get("error", "")))}</td>'
        rows.append(f"<tr>{cells}</tr>")
    more = f"<p class='muted'>{len(sw.records) - limit} more points in points.jsonl</p>" if len(sw.records) > limit else ""
    return f'<div class="table-wrap"><table class="data"><tr>{head}</tr>{"".join(rows)}</table></div>{more}'


# --------------------------------------------------------------------------------------------
# Overview
# --------------------------------------------------------------------------------------------


def overview(inputs: Inputs, rows: list[Row]) -> list[tuple[str, str, str]]:
    """(big number, label, detail) tiles for the top of the page."""
    tiles = []
    spec = [r for r in rows if r.summary.speculative and r.summary.speedup_tokens_per_s_per_user]
    if spec:
        top = max(spec, key=lambda r: r.summary.speedup_tokens_per_s_per_user)
        tiles.append((f"{top.summary.speedup_tokens_per_s_per_user:.2f}×", "best per-user speed-up (simulated)",
                      top.label + (f" @ {top.load_name} {top.load:g}" if top.load is not None else "")))
        thr = max(spec, key=lambda r: r.summary.throughput_tokens_per_s_per_gpu)
        tiles.append((f"{thr.summary.throughput_tokens_per_s_per_gpu:,.0f}", "peak tokens/s per GPU", thr.label))
    for pr, _ in inputs.predicts[:1]:
        if pr.points:
            p = max(pr.points, key=lambda p: p.best.speedup)
            tiles.append((f"{p.best.speedup:.2f}×", "best predicted speed-up",
                          f"batch {p.batch_size}, context {p.context_tokens}, γ={p.best_gamma}"))
    for pr, _ in inputs.plans[:1]:
        if pr.best is not None:
            tiles.append((f"${pr.best.usd_per_million_output_tokens:.3f}", "per million output tokens (cheapest plan)",
                          f"{pr.best.hardware} TP{pr.best.tensor_parallel} × {pr.best.replicas}, "
                          f"{pr.best.speculation}"))
        if pr.saving_fraction is not None:
            tiles.append((f"{pr.saving_fraction:.0%}", "saved by speculation", "vs the cheapest plan without it"))
    for sw in inputs.sweeps[:2]:
        ok = sum(1 for r in sw.records if r.get("status") == "ok")
        tiles.append((f"{ok}/{sw.manifest.get('total_points', len(sw.records))}", "sweep points finished",
                      f"{sw.manifest.get('name', '')} ({sw.manifest.get('command', '')})"))
    for pts, _q, src in inputs.validation[:1]:
        errs = [abs(p - m) / abs(m) for p, m, _ in pts if m]
        if errs:
            tiles.append((f"{np.mean(errs):.1%}", "mean absolute error (validation)", Path(src).name))
    return tiles[:6]


# --------------------------------------------------------------------------------------------
# Page
# --------------------------------------------------------------------------------------------

_CSS = """
:root { --fg:#111827; --muted:#6b7280; --line:#e5e7eb; --bg:#f6f7f9; --card:#fff; --accent:#2563eb; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--fg);
  font: 14px/1.5 Inter, -apple-system, 'Segoe UI', Roboto, Helvetica, Arial, sans-serif; }
header { background:#0f172a; color:#f8fafc; padding:22px 32px 18px; }
header h1 { margin:0 0 4px; font-size:22px; font-weight:650; letter-spacing:-0.01em; }
header .sub { color:#cbd5e1; font-size:13px; }
header .src { color:#94a3b8; font-size:12px; margin-top:6px; word-break:break-all; }
main { max-width:1480px; margin:0 auto; padding:20px 28px 48px; }
.tiles { display:grid; grid-template-columns:repeat(auto-fit, minmax(210px, 1fr)); gap:12px; margin:4px 0 8px; }
.tile { background:var(--card); border:1px solid var(--line); border-radius:10px; padding:12px 16px; }
.tile .big { font-size:24px; font-weight:650; color:var(--accent); }
.tile .lab { font-size:12px; color:var(--fg); }
.tile .det { font-size:11px; color:var(--muted); margin-top:2px; }
section { margin-top:26px; }
section h2 { font-size:17px; margin:0 0 2px; font-weight:650; }
section > p.intro { margin:0 0 12px; color:var(--muted); font-size:13px; }
.grid { display:grid; grid-template-columns:repeat(2, minmax(0, 1fr)); gap:14px; }
.card { background:var(--card); border:1px solid var(--line); border-radius:10px; padding:12px 14px 8px;
  min-width:0; }
.card.wide { grid-column:1 / -1; }
.card h3 { font-size:14px; margin:0; font-weight:600; }
.card p.cap { margin:2px 0 6px; color:var(--muted); font-size:12px; }
.fig { width:100%; min-height:300px; }
.table-wrap { overflow-x:auto; max-height:520px; overflow-y:auto; }
table.data { border-collapse:collapse; width:100%; font-size:12.5px; font-variant-numeric:tabular-nums; }
table.data th { position:sticky; top:0; background:#f9fafb; text-align:right; font-weight:600;
  border-bottom:1px solid var(--line); padding:6px 8px; white-space:nowrap; }
table.data td { text-align:right; padding:5px 8px; border-bottom:1px solid #f1f2f4; white-space:nowrap; }
table.data th:first-child, table.data td:first-child, table.data .t { text-align:left; }
table.data tr.best td { background:#ecfdf5; }
table.data tr.out td { color:#9ca3af; }
td.err { color:#b91c1c; text-align:left !important; white-space:normal !important; }
.muted { color:var(--muted); font-size:12px; }
footer { color:var(--muted); font-size:12px; text-align:center; padding:18px; }
@media (max-width: 1000px) { .grid { grid-template-columns:1fr; } }
"""

_BOOT = """
(function () {
  var figs = JSON.parse(document.getElementById('dspark-figures').textContent);
  var config = {displaylogo: false, responsive: true, displayModeBar: 'hover',
                modeBarButtonsToRemove: ['select2d', 'lasso2d', 'autoScale2d']};
  var jobs = [];
  Object.keys(figs).forEach(function (id) {
    var f = figs[id];
    jobs.push(Plotly.newPlot(id, f.data, f.layout, config));
  });
  window.dsparkFigureIds = Object.keys(figs);
  window.dsparkRendered = Promise.all(jobs).then(function () { window.dsparkReady = true; });
})();
"""


def _plotly_js() -> str:
    from plotly.offline import get_plotlyjs

    return get_plotlyjs().replace("</script", "<\\/script")


def _fig_json(fig: go.Figure) -> dict:
    import plotly.io as pio

    return json.loads(pio.to_json(fig, validate=False, pretty=False))


def render_page(title: str, subtitle: str, sources: Sequence[str], tiles: Sequence[tuple[str, str, str]],
                sections: Sequence[Section]) -> str:
    figs: dict[str, dict] = {}
    parts: list[str] = []
    if tiles:
        parts.append('<div class="tiles">' + "".join(
            f'<div class="tile"><div class="big">{html.escape(b)}</div><div class="lab">{html.escape(lab)}</div>'
            f'<div class="det">{html.escape(d)}</div></div>' for b, lab, d in tiles) + "</div>")
    for sec in sections:
        cards = []
        col = 0  # a half-width card left alone on its row is widened
        for i, card in enumerate(sec.cards):
            if not card.wide:
                nxt = sec.cards[i + 1] if i + 1 < len(sec.cards) else None
                if col == 0 and (nxt is None or nxt.wide):
                    card.wide = True
                else:
                    col = 1 - col
            else:
                col = 0
            inner = ""
            if card.figure is not None:
                fid = f"fig-{len(figs)}"
                figs[fid] = _fig_json(card.figure)
                height = int(card.figure.layout.height or 420)
                inner += f'<div class="fig" id="{fid}" style="height:{height}px"></div>'
            inner += card.html
            cap = f'<p class="cap">{html.escape(card.caption)}</p>' if card.caption else ""
            cards.append(f'<div class="card{" wide" if card.wide else ""}"><h3>{html.escape(card.title)}</h3>'
                         f"{cap}{inner}</div>")
        parts.append(f'<section><h2>{html.escape(sec.title)}</h2><p class="intro">{html.escape(sec.intro)}</p>'
                     f'<div class="grid">{"".join(cards)}</div></section>')
    if not sections:
        parts.append('<section><p class="intro">Nothing to draw in these documents.</p></section>')
    data = json.dumps(figs, separators=(",", ":")).replace("</", "<\\/")
    src = " · ".join(html.escape(s) for s in sources)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style>"
        f"<script>{_plotly_js()}</script></head><body>"
        f"<header><h1>{html.escape(title)}</h1><div class=\"sub\">{html.escape(subtitle)}</div>"
        f"<div class=\"src\">{src}</div></header><main>{''.join(parts)}</main>"
        f"<footer>dspark-sim {html.escape(dspark_sim.__version__)} dashboard · self-contained (plotly.js inline), works offline"
        f"</footer><script type=\"application/json\" id=\"dspark-figures\">{data}</script>"
        f"<script>{_BOOT}</script></body></html>\n"
    )


def build_page(inputs: Inputs, title: str | None = None, sources: Sequence[str] = ()) -> str:
    colors = F.Colors()
    rows = run_rows(inputs)
    for r in rows:  # speculative labels take the first colours, in a stable order
        if r.summary.speculative:
            colors(r.label)
    sweeps = section_sweeps(inputs, colors)
    sweeps_first = sweeps is not None and not rows  # a predict sweep: its own figures lead
    sections = [s for s in (
        section_plans(inputs),
        sweeps if sweeps_first else None,
        section_tradeoffs(inputs, rows, colors),
        section_heatmaps(inputs),
        section_latency(inputs, rows, colors),
        section_costs(inputs, rows),
        section_acceptance(inputs, rows, colors),
        section_validation(inputs),
        None if sweeps_first else sweeps,
    ) if s is not None]
    what = []
    for b in inputs.runs:
        what.append(f"{b.result.scenario}: {b.result.model} on {b.result.hardware}")
    for pr, _ in inputs.predicts:
        what.append(f"{pr.scenario}: {pr.model} on {pr.hardware} ×{pr.tensor_parallel}")
    for sw in inputs.sweeps:
        what.append(f"sweep {sw.manifest.get('name', '')} ({len(sw.records)} points, {sw.manifest.get('command', '')})")
    for pr, _ in inputs.plans:
        what.append(f"plan {pr.name}: {pr.model}")
    subtitle = "; ".join(dict.fromkeys(what)) or "validation"
    return render_page(title or "dspark-sim dashboard", subtitle, sources, overview(inputs, rows), sections)


def write_dashboard(paths: Sequence[str | Path], out: str | Path, *, scenario: Scenario | None = None,
                    title: str | None = None) -> Path:
    """The `dashboard` command: read result documents, write one self-contained HTML file."""
    if not paths:
        raise InputError("dashboard", None, "give at least one result (sweep folder, run folder, JSON document)")
    inputs = load_inputs(paths, scenario)
    if inputs.empty:
        raise InputError(", ".join(str(p) for p in paths), None, "no result documents found")
    page = build_page(inputs, title, [str(p) for p in paths])
    return write_atomic(out, page)


def write_run_dashboard(run_result, path: str | Path, *, scenario: Scenario | None = None,
                        timeseries: Sequence[dict] | None = None,
                        records: dict[str, list[dict]] | None = None) -> Path:
    """A page for one `run`: accepts a RunResult, or the simulator's ScenarioRun (its per-configuration
    time series and per-request records are used when present)."""
    if hasattr(run_result, "result") and hasattr(run_result, "runs"):  # dspark_sim.sim.ScenarioRun
        scenario = scenario or getattr(run_result, "scenario", None)
        series = [r.series.model_dump(mode="json") for r in run_result.runs if getattr(r, "series", None)]
        recs = {_file_label(r.summary): r.records for r in run_result.runs if getattr(r, "records", None)}
        result = run_result.result
    else:
        result, series, recs = run_result, [], {}
    if timeseries:
        series = [s if isinstance(s, dict) else s.model_dump(mode="json") for s in timeseries]
    if records:
        recs = dict(records)
    bundle = RunBundle(result, f"run {result.scenario}", list(series), recs, scenario)
    inputs = Inputs(runs=[bundle], scenario=scenario)
    page = build_page(inputs, f"dspark-sim run: {result.scenario}", [f"scenario {result.scenario}, seed {result.seed}"])
    return write_atomic(path, page)


def write_predict_dashboard(predict_result: PredictResult, scenario: Scenario | None, path: str | Path) -> Path:
    """A page for one `predict`: frontier, heatmaps (from the scenario), time and bytes, acceptance."""
    inputs = Inputs(predicts=[(predict_result, "predict")], scenario=scenario)
    page = build_page(inputs, f"dspark-sim predict: {predict_result.scenario}", [f"scenario {predict_result.scenario}"])
    return write_atomic(path, page)


def write_validation_dashboard(points: Sequence[tuple[float, float, str]], path: str | Path, *,
                               quantity: str = "value", title: str = "dspark-sim validation") -> Path:
    """A page with the predicted-vs-measured scatter, for `validate` (plain (predicted, measured, label))."""
    inputs = Inputs(validation=[(list(points), quantity, "validation")])
    return write_atomic(path, build_page(inputs, title, ["validation"]))
