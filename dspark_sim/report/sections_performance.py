"""Dashboard sections on performance: throughput against per-user speed, latency, where replica time and
memory traffic go, and acceptance by draft position. Rendering only: the rows and curves come from
`studies.dashboard`.
"""

from __future__ import annotations

from collections.abc import Iterable

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from dspark_sim.config.results import PredictResult
from dspark_sim.report import figures as F
from dspark_sim.report import figures_breakdowns as B
from dspark_sim.report.page import Card, Section
from dspark_sim.studies.dashboard import DashboardData
from dspark_sim.studies.dashboard_rows import Row
from dspark_sim.studies.labels import summary_label


def _group(rows: Iterable[Row]) -> dict[str, list[Row]]:
    out: dict[str, list[Row]] = {}
    for r in rows:
        out.setdefault(r.label, []).append(r)
    # baselines last so speculative policies get the first colours
    return dict(sorted(out.items(), key=lambda kv: F.is_baseline_label(kv[0])))


def _slo_speed(data: DashboardData) -> float | None:
    """The per-user speed SLO: a plan's, else the given scenario's or a run's (not a sweep's base scenario)."""
    inputs = data.inputs
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


def section_tradeoffs(data: DashboardData, colors: F.Colors) -> Section | None:
    cards = _frontier_cards(data, colors) + _verify_budget_cards(data.rows, colors)
    ts_series: dict[str, list[tuple[float, float]]] = {}
    for b in data.inputs.runs:
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


def _frontier_cards(data: DashboardData, colors: F.Colors) -> list[Card]:
    """The simulated frontier by policy, then each predict document's frontier across batch sizes."""
    cards: list[Card] = []
    groups = _group(data.rows)
    if groups:
        series = {label: [(r.summary.tokens_per_s_per_user, r.summary.throughput_tokens_per_s_per_gpu, r.hover)
                          for r in rs] for label, rs in groups.items()}
        fig = F.frontier_figure(series, slo_tokens_per_s_per_user=_slo_speed(data), colors=colors,
                                title="Throughput per GPU vs tokens/s per user (simulated)")
        if fig is not None:
            slo_note = "; the dotted line is the per-user speed SLO" if _slo_speed(data) else ""
            cards.append(Card("Throughput–latency frontier by policy",
                              "Each point is one simulated load; lines join each policy's Pareto-optimal points. "
                              f"Up and to the right is better{slo_note}.", fig, wide=True))
    for pr, _src in data.inputs.predicts:
        fig = F.frontier_figure(predict_frontier_series(pr), colors=colors,
                                title=f"Closed-form frontier: {pr.model} on {pr.hardware}, context "
                                      f"{pr.points[0].context_tokens if pr.points else '?'}")
        if fig is not None:
            cards.append(Card("Predicted frontier across batch sizes",
                              "From `predict`: one point per batch size; best γ picks the draft length per batch.",
                              fig, wide=not groups))
    return cards


def _verify_budget_cards(rows: list[Row], colors: F.Colors) -> list[Card]:
    """Draft tokens verified per step against the load (when swept), else against the mean batch."""
    spec_rows = [r for r in rows if r.summary.speculative]
    by_label = _group(spec_rows)
    if by_label and any(r.load is not None for r in spec_rows):
        load_name = " / ".join(dict.fromkeys(r.load_name for r in spec_rows if r.load is not None))
        series = {label: [(r.load, r.summary.mean_verify_budget) for r in rs if r.load is not None]
                  for label, rs in by_label.items()}
        fig = F.verify_budget_figure(series, xtitle=load_name, colors=colors)
        if fig is not None:
            return [Card("Verification budget vs concurrency",
                         "Draft tokens verified per request per decode step (add 1 for the target's own token, "
                         "as DSpark counts). A load-aware policy verifies more when the batch is small.", fig)]
    elif by_label:
        series = {label: [(r.summary.mean_batch_size, r.summary.mean_verify_budget) for r in rs]
                  for label, rs in by_label.items()}
        fig = F.verify_budget_figure(series, xtitle="mean decode batch (concurrent requests)", colors=colors)
        if fig is not None:
            return [Card("Verification budget vs concurrency", "Draft tokens verified per request per decode step.",
                         fig)]
    return []


def section_latency(data: DashboardData, colors: F.Colors) -> Section | None:
    rows = data.rows
    cards: list[Card] = []
    with_records = [r for r in rows if r.records and any(x.get("measured", True) for x in r.records)]
    loads = sorted({r.load for r in with_records if r.load is not None})
    if loads:  # one load: the heaviest, so each policy is one curve in its own colour
        with_records = [r for r in with_records if r.load == loads[-1]]
    with_records = with_records[:10]
    if with_records:
        card = _latency_cdf_card(data, with_records, loads[-1] if loads else None, colors)
        if card is not None:
            cards.append(card)
    loaded = [r for r in rows if r.load is not None]
    if loaded:
        cards.append(_latency_vs_load_card(loaded, colors))
    elif not with_records and rows:
        stats = {r.label: {"ttft_s": r.summary.ttft_s.model_dump(), "tpot_ms": r.summary.tpot_ms.model_dump()}
                 for r in rows[:10]}
        fig = B.latency_percentiles_figure(stats, colors=colors)
        if fig is not None:
            cards.append(Card("Latency percentiles", "p50 / p90 / p99 of TTFT and TPOT (no per-request files).",
                              fig, wide=True))
    if not cards:
        return None
    return Section("Latency", "Time to first token (TTFT) and time per output token (TPOT).", cards)


def _latency_cdf_card(data: DashboardData, rows: list[Row], heavy: float | None, colors: F.Colors) -> Card | None:
    """Per-request TTFT and TPOT CDFs of rows with per-request records (at the heaviest load, if swept)."""
    sc = data.scenario
    slo = {"ttft_s": sc.slo.ttft_p99_s, "tpot_ms": sc.slo.tpot_p99_ms} if sc is not None else {}
    at = f" at {rows[0].load_name} {heavy:g}" if heavy is not None else ""
    samples: dict[str, dict[str, list[float]]] = {}
    for r in rows:
        recs = [x for x in r.records or [] if x.get("measured", True)]
        samples[r.label] = {k: [x[k] for x in recs if x.get(k) is not None] for k in ("ttft_s", "tpot_ms")}
    fig = B.latency_cdf_figure(samples, colors=colors, slo=slo)
    if fig is None:
        return None
    fig.update_layout(title={"text": f"Latency CDFs (per request){at}"})
    return Card("Latency CDFs", f"Per-request TTFT and TPOT{at}; dotted lines are the p99 SLOs.", fig, wide=True)


def _latency_vs_load_card(rows: list[Row], colors: F.Colors) -> Card:
    """p99 TTFT and TPOT against the swept load, one line per label."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=["TTFT p99, s", "TPOT p99, ms"], horizontal_spacing=0.1)
    for label, rs in _group(rows).items():
        by_load = sorted(rs, key=lambda r: r.load or 0.0)
        for col, get in ((1, lambda r: r.summary.ttft_s.p99), (2, lambda r: r.summary.tpot_ms.p99)):
            fig.add_trace(go.Scatter(
                x=[r.load for r in by_load], y=[get(r) for r in by_load], name=label, legendgroup=label,
                showlegend=col == 1, mode="lines+markers",
                line={"color": colors(label), "dash": "dash" if F.is_baseline_label(label) else "solid"},
            ), row=1, col=col)
    F.layout(fig, "p99 latency vs load", " / ".join(dict.fromkeys(r.load_name for r in rows)), "")
    return Card("Latency vs load", "Tail latency as the load grows; where a curve turns up is the "
                "capacity under that SLO.", fig, wide=True)


def _representative(rows: list[Row], limit: int = 10) -> list[Row]:
    """For the bar charts: every configuration if few, else each label at its heaviest load."""
    if len(rows) <= limit:
        return rows
    top: dict[str, Row] = {}
    for r in rows:
        if r.label not in top or (r.load or 0) > (top[r.label].load or 0):
            top[r.label] = r
    return list(top.values())[:limit]


def section_costs(data: DashboardData) -> Section | None:
    inputs, rows = data.inputs, data.rows
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
        fig = B.time_breakdown_figure(trows, title="Where replica time goes (simulated)")
        if fig is not None:
            cards.append(Card("Time breakdown", "Share of replica time in draft passes, target (verify and prefill) "
                              "passes, fixed per-step overhead, and idle.", fig, wide=wide))
        brows = [(name(r), {"hbm": r.summary.hbm_gb_per_output_token * 1e3,
                            "onchip": r.summary.onchip_gb_per_output_token * 1e3}) for r in rep]
        fig = B.bytes_figure(brows, title="Memory traffic per output token (simulated, per GPU)")
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
        fig = B.time_breakdown_figure(trows, percent=False, title="Predicted time per output token")
        if fig is not None:
            fig.update_xaxes(title_text="ms per output token per sequence")
            cards.append(Card("Time per output token (predict)", "Speculative steps divided by τ, the tokens a step "
                              "yields, next to a plain decode step.", fig))
        fig = B.bytes_figure(brows, title="Predicted memory traffic per output token (per GPU)")
        if fig is not None:
            cards.append(Card("Bytes per output token (predict)", "HBM vs on-chip traffic of a step, per output "
                              "token.", fig))
    if not cards:
        return None
    return Section("Where time and bytes go", "Draft, verify and overhead time; HBM and on-chip traffic.", cards)


def section_acceptance(data: DashboardData, colors: F.Colors) -> Section | None:
    inputs, rows = data.inputs, data.rows
    series: dict[str, list[float]] = {}
    for r in _representative([r for r in rows if r.summary.speculative], limit=8):
        if r.summary.acceptance_per_position:
            series.setdefault(r.label, list(r.summary.acceptance_per_position))
    for pr, _ in inputs.predicts[:2]:
        surv = [1.0, *pr.survival]
        cond = [surv[k + 1] / surv[k] if surv[k] > 0 else float("nan") for k in range(len(pr.survival))]
        series[f"{pr.scenario} (predict)"] = cond
    series.update(inputs.measured_acceptance)
    if data.scenario_acceptance is not None:
        series.setdefault("scenario's acceptance model", data.scenario_acceptance)
    fig = F.acceptance_figure(series, colors=colors)
    if fig is None:
        return None
    return Section("Acceptance", "Conditional acceptance of each draft position: parallel drafters start high and "
                   "decay, autoregressive ones start lower (DSpark, Fig. 2).",
                   [Card("Acceptance by position", ("Observed in simulation (per configuration) and the model's c_k."
                          if rows else "The acceptance model's c_k."), fig, wide=True)])
