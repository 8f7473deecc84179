"""Plotly figures of distributions and breakdowns: latency CDFs and percentiles, where replica time and
memory traffic go (stacked bars), and the cost of plan candidates. Same conventions as `figures`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from dspark_sim.report.figures import BASELINE_COLOR, Colors, finite, is_baseline_label, layout, wrap_label

# --------------------------------------------------------------------------------------------
# Latency
# --------------------------------------------------------------------------------------------


def _ecdf(values: Sequence[float], max_points: int = 400) -> tuple[list[float], list[float]]:
    xs = sorted(v for v in values if finite(v))
    n = len(xs)
    if n == 0:
        return [], []
    step = max(1, n // max_points)
    idx = list(range(0, n, step))
    if idx[-1] != n - 1:
        idx.append(n - 1)
    return [xs[i] for i in idx], [(i + 1) / n for i in idx]


def latency_cdf_figure(
    samples: Mapping[str, Mapping[str, Sequence[float]]],
    *,
    metrics: Sequence[tuple[str, str]] = (("ttft_s", "TTFT, s"), ("tpot_ms", "TPOT, ms")),
    colors: Colors | None = None,
    slo: Mapping[str, float | None] | None = None,
) -> go.Figure | None:
    """Empirical CDFs of per-request latencies: samples[label][metric] = values; one panel per metric."""
    colors = colors or Colors()
    fig = make_subplots(rows=1, cols=len(metrics), subplot_titles=[m[1] for m in metrics],
                        horizontal_spacing=0.1)
    any_data = False
    for label, by_metric in samples.items():
        for col, (key, _name) in enumerate(metrics, start=1):
            xs, ys = _ecdf(by_metric.get(key, []))
            if not xs:
                continue
            any_data = True
            fig.add_trace(go.Scatter(
                x=xs, y=ys, mode="lines", name=label, legendgroup=label, showlegend=col == 1,
                line={"color": colors(label), "width": 2, "shape": "hv",
                      "dash": "dash" if is_baseline_label(label) else "solid"},
                hovertemplate="%{x:.3f}: %{y:.1%}<extra>" + label + "</extra>",
            ), row=1, col=col)
    if not any_data:
        return None
    for col, (key, _name) in enumerate(metrics, start=1):
        limit = (slo or {}).get(key)
        if limit:
            fig.add_vline(x=limit, line={"color": "#111827", "dash": "dot", "width": 1}, row=1, col=col)
    layout(fig, "Latency CDFs (per request)", "", "fraction of requests")
    fig.update_yaxes(range=[0, 1.02], tickformat=".0%")
    return fig


def latency_percentiles_figure(
    stats: Mapping[str, Mapping[str, Mapping[str, float]]],
    *,
    metrics: Sequence[tuple[str, str]] = (("ttft_s", "TTFT, s"), ("tpot_ms", "TPOT, ms")),
    colors: Colors | None = None,
) -> go.Figure | None:
    """CDF sketch from summary statistics: stats[label][metric] = {p50, p90, p99} (no per-request data)."""
    samples: dict[str, dict[str, list[float]]] = {}
    colors = colors or Colors()
    fig = make_subplots(rows=1, cols=len(metrics), subplot_titles=[m[1] for m in metrics],
                        horizontal_spacing=0.1)
    for label, by_metric in stats.items():
        for col, (key, _name) in enumerate(metrics, start=1):
            st = by_metric.get(key) or {}
            quantiles = [(st.get(q), p) for q, p in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))]
            pts = [(x, p) for x, p in quantiles if x is not None and finite(x)]
            if not pts:
                continue
            samples.setdefault(label, {})[key] = [x for x, _ in pts]
            fig.add_trace(go.Scatter(
                x=[x for x, _ in pts], y=[p for _, p in pts], mode="lines+markers", name=label,
                legendgroup=label, showlegend=col == 1,
                line={"color": colors(label), "width": 2, "dash": "dash" if is_baseline_label(label) else "solid"},
                hovertemplate="%{x:.3f} at p%{y:.0%}<extra>" + label + "</extra>",
            ), row=1, col=col)
    if not samples:
        return None
    layout(fig, "Latency percentiles (p50, p90, p99)", "", "quantile")
    fig.update_yaxes(range=[0.4, 1.0], tickvals=[0.5, 0.9, 0.99], ticktext=["p50", "p90", "p99"])
    return fig


# --------------------------------------------------------------------------------------------
# Where time and bytes go; cost
# --------------------------------------------------------------------------------------------


def stacked_bars_figure(
    rows: Sequence[tuple[str, Mapping[str, float]]],
    *,
    title: str,
    xtitle: str,
    parts: Sequence[tuple[str, str, str]],
    percent: bool = False,
) -> go.Figure | None:
    """Horizontal stacked bars: rows of (label, {part key: value}); parts = (key, legend name, colour)."""
    rows = [r for r in rows if any(finite(r[1].get(k)) for k, _, _ in parts)]
    if not rows:
        return None
    labels = [wrap_label(r[0]) for r in rows]
    lines = sum(lab.count("<br>") + 1 for lab in labels)
    fig = go.Figure()
    for key, name, color in parts:
        vals = [float(r[1].get(key) or 0.0) for r in rows]
        if not any(vals):
            continue
        fig.add_trace(go.Bar(
            y=labels, x=vals, name=name, orientation="h", marker={"color": color},
            hovertemplate="%{y}<br>" + name + ": %{x:" + (".1%" if percent else ".4g") + "}<extra></extra>",
        ))
    layout(fig, title, xtitle, "", barmode="stack", height=max(300, 130 + 22 * lines + 14 * len(rows)))
    fig.update_layout(legend={"traceorder": "normal"})
    fig.update_yaxes(autorange="reversed", automargin=True)
    if percent:
        fig.update_xaxes(tickformat=".0%")
    return fig


TIME_PARTS = (("draft", "draft", "#f59e0b"), ("verify", "verify / target passes", "#2563eb"),
              ("overhead", "fixed overhead", "#9ca3af"), ("idle", "idle", "#e5e7eb"))
BYTE_PARTS = (("hbm", "HBM", "#7c3aed"), ("onchip", "on-chip (SRAM/L2)", "#10b981"))


def time_breakdown_figure(rows: Sequence[tuple[str, Mapping[str, float]]], *, percent: bool = True,
                          title: str = "Where the time goes") -> go.Figure | None:
    """rows: (label, {draft, verify, overhead[, idle]}) as fractions (percent) or milliseconds."""
    return stacked_bars_figure(rows, title=title, xtitle="share of time" if percent else "ms per step",
                               parts=TIME_PARTS, percent=percent)


def bytes_figure(rows: Sequence[tuple[str, Mapping[str, float]]], *, unit: str = "MB per output token",
                 title: str = "Memory traffic per output token") -> go.Figure | None:
    """rows: (label, {hbm, onchip}) in `unit`."""
    return stacked_bars_figure(rows, title=title, xtitle=unit, parts=BYTE_PARTS)



def cost_figure(rows: Sequence[tuple[str, float, bool]], *, title: str = "Cost per million output tokens",
                best_label: str | None = None) -> go.Figure | None:
    """rows: (candidate label, $ per million output tokens, speculative?) for feasible candidates."""
    rows = sorted([r for r in rows if finite(r[1])], key=lambda r: r[1])
    if not rows:
        return None
    colors = ["#2563eb" if spec else BASELINE_COLOR for _, _, spec in rows]
    if best_label is not None:
        colors = ["#16a34a" if lab == best_label else c for (lab, _, _), c in zip(rows, colors)]
    fig = go.Figure(go.Bar(
        y=[r[0] for r in rows], x=[r[1] for r in rows], orientation="h", marker={"color": colors},
        text=[f"${r[1]:.3f}" for r in rows], textposition="outside", cliponaxis=False,
        hovertemplate="%{y}<br>$%{x:.4f} per million output tokens<extra></extra>", showlegend=False,
    ))
    layout(fig, title, "USD per million output tokens (at the target load)", "",
            height=max(300, 120 + 30 * len(rows)))
    fig.update_yaxes(autorange="reversed", automargin=True)
    return fig
