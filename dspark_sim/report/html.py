"""Self-contained HTML dashboards (`dspark-sim dashboard`): one file, plotly.js inline, opens offline.

`dashboard_html` renders what `studies.dashboard.dashboard_data` computed from the result documents:
the overview tiles, then the sections (plans, throughput, where speculation pays, latency, time and
bytes, acceptance, validation, sweeps), each left out when it has nothing to draw.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dspark_sim.report import figures as F
from dspark_sim.report.page import render_page
from dspark_sim.report.sections_performance import (
    section_acceptance,
    section_costs,
    section_latency,
    section_tradeoffs,
)
from dspark_sim.report.sections_studies import (
    section_heatmaps,
    section_plans,
    section_sweeps,
    section_validation,
)
from dspark_sim.studies.dashboard import DashboardData
from dspark_sim.studies.dashboard_inputs import Inputs
from dspark_sim.studies.dashboard_rows import Row


def overview(inputs: Inputs, rows: list[Row]) -> list[tuple[str, str, str]]:
    """(big number, label, detail) tiles for the top of the page."""
    tiles = []
    spec = [r for r in rows if r.summary.speculative and r.summary.speedup_tokens_per_s_per_user]
    if spec:
        top = max(spec, key=lambda r: r.summary.speedup_tokens_per_s_per_user or 0.0)
        tiles.append((f"{top.summary.speedup_tokens_per_s_per_user:.2f}×", "best per-user speed-up (simulated)",
                      top.label + (f" @ {top.load_name} {top.load:g}" if top.load is not None else "")))
        thr = max(spec, key=lambda r: r.summary.throughput_tokens_per_s_per_gpu)
        tiles.append((f"{thr.summary.throughput_tokens_per_s_per_gpu:,.0f}", "peak tokens/s per GPU", thr.label))
    for pred, _ in inputs.predicts[:1]:
        if pred.points:
            p = max(pred.points, key=lambda p: p.best.speedup)
            tiles.append((f"{p.best.speedup:.2f}×", "best predicted speed-up",
                          f"batch {p.batch_size}, context {p.context_tokens}, γ={p.best_gamma}"))
    for plan, _ in inputs.plans[:1]:
        if plan.best is not None:
            tiles.append((f"${plan.best.usd_per_million_output_tokens:.3f}", "per million output tokens (cheapest plan)",
                          f"{plan.best.hardware} TP{plan.best.tensor_parallel} × {plan.best.replicas}, "
                          f"{plan.best.speculation}"))
        if plan.saving_fraction is not None:
            tiles.append((f"{plan.saving_fraction:.0%}", "saved by speculation", "vs the cheapest plan without it"))
    for sw in inputs.sweeps[:2]:
        ok = sum(1 for r in sw.records if r.get("status") == "ok")
        tiles.append((f"{ok}/{sw.manifest.get('total_points', len(sw.records))}", "sweep points finished",
                      f"{sw.manifest.get('name', '')} ({sw.manifest.get('command', '')})"))
    for pts, _q, src in inputs.validation[:1]:
        errs = [abs(p - m) / abs(m) for p, m, _ in pts if m]
        if errs:
            tiles.append((f"{np.mean(errs):.1%}", "mean absolute error (validation)", Path(src).name))
    return tiles[:6]


def _subtitle(inputs: Inputs) -> str:
    """What the page is about: each document's scenario, model and hardware, once each."""
    what = []
    for b in inputs.runs:
        what.append(f"{b.result.scenario}: {b.result.model} on {b.result.hardware}")
    for pred, _ in inputs.predicts:
        what.append(f"{pred.scenario}: {pred.model} on {pred.hardware} ×{pred.tensor_parallel}")
    for sw in inputs.sweeps:
        what.append(f"sweep {sw.manifest.get('name', '')} ({len(sw.records)} points, {sw.manifest.get('command', '')})")
    for plan, _ in inputs.plans:
        what.append(f"plan {plan.name}: {plan.model}")
    return "; ".join(dict.fromkeys(what)) or "validation"


def dashboard_html(data: DashboardData, title: str | None = None, sources: Sequence[str] = ()) -> str:
    """The page: overview tiles and every section with something to draw."""
    colors = F.Colors()
    for r in data.rows:  # speculative labels take the first colours, in a stable order
        if r.summary.speculative:
            colors(r.label)
    sweeps = section_sweeps(data, colors)
    sweeps_first = sweeps is not None and not data.rows  # a predict sweep: its own figures lead
    sections = [s for s in (
        section_plans(data),
        sweeps if sweeps_first else None,
        section_tradeoffs(data, colors),
        section_heatmaps(data),
        section_latency(data, colors),
        section_costs(data),
        section_acceptance(data, colors),
        section_validation(data),
        None if sweeps_first else sweeps,
    ) if s is not None]
    tiles = overview(data.inputs, data.rows)
    return render_page(title or "dspark-sim dashboard", _subtitle(data.inputs), sources, tiles, sections)
