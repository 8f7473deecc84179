"""Dashboard sections on studies: where speculation pays (the closed form's heatmaps), capacity plans and
their cost, predicted against measured, and sweeps. Rendering only: the grids come from
`studies.dashboard`.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go

from dspark_sim.config.results import PlanResult, PredictResult
from dspark_sim.report import figures as F
from dspark_sim.report import figures_breakdowns as B
from dspark_sim.report.page import Card, Section
from dspark_sim.studies.dashboard import DashboardData, SpeedupGrids
from dspark_sim.studies.dashboard_inputs import SweepBundle
from dspark_sim.studies.labels import short


def heatmaps(g: SpeedupGrids) -> list[Card]:
    """Speed-up over acceptance x gamma and over batch x context, from the closed form."""
    cards = []
    fig = F.heatmap_figure(g.by_alpha_gamma, g.gammas, g.alphas, title=f"Speed-up by α and γ (batch {g.batch}, "
                           f"context {g.context})", xtitle="γ (draft tokens per step)", ytitle="i.i.d. acceptance α")
    if fig is not None:
        cards.append(Card("Speed-up: acceptance × γ",
                          f"{g.model} + {g.drafter} on {g.hardware} ×{g.tensor_parallel}; "
                          "blue = faster than no speculation, red = slower.", fig))
    text = [[f"{v:.2f}<br>γ{gm}" if v is not None else "" for v, gm in zip(row, grow)]
            for row, grow in zip(g.best_speedup, g.best_gamma)]
    fig = F.heatmap_figure(g.best_speedup, g.batches, g.contexts, text=text,
                           title="Best-γ speed-up by batch and context",
                           xtitle="batch (sequences)", ytitle="context (tokens)")
    if fig is not None:
        cards.append(Card("Speed-up: batch × context",
                          f"Scenario acceptance ({g.acceptance_kind}, a₁..a₃ = "
                          f"{', '.join(f'{a:.2f}' for a in g.survival)}); each cell shows the speed-up and its best γ. "
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


def section_heatmaps(data: DashboardData) -> Section | None:
    cards: list[Card] = []
    if data.scenario is not None:
        cards += heatmaps(data.grids) if data.grids is not None else []
    elif data.inputs.predicts:
        card = predict_heatmap(data.inputs.predicts[0][0])
        if card:
            cards.append(card)
    if not cards:
        return None
    return Section("Where speculation pays", "Closed-form speed-up (tokens/s per user over no speculation at the "
                   "same batch) from the predictor, for the scenario's deployment.", cards)


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


def section_plans(data: DashboardData) -> Section | None:
    cards = []
    for pr, _src in data.inputs.plans:
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
        fig = B.cost_figure(rows, best_label=best_label)
        if fig is not None:
            cards.append(Card("Cost per million output tokens", "Green: the cheapest deployment meeting the SLOs; "
                              "grey: without speculation.", fig, wide=True))
    if not cards:
        return None
    return Section("Capacity and cost", "Cheapest deployment meeting the SLOs, from short simulations and a "
                   "bisection on the load (as Vidur's capacity search).", cards)


def section_validation(data: DashboardData) -> Section | None:
    cards = []
    for pts, quantity, src in data.inputs.validation:
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


def section_sweeps(data: DashboardData, colors: F.Colors) -> Section | None:
    cards: list[Card] = []
    for sw in data.inputs.sweeps:
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
