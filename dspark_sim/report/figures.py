"""Plotly figures for dashboards: colours, the common layout, trade-off lines, heatmaps, acceptance and
validation scatters (latency distributions and stacked bars: `figures_breakdowns`). Each builder takes
plain data (lists, dicts) and returns a figure, or None when it has nothing to draw, so any result
document can feed it.

Rendering only: the numbers come from result documents (`config/results.py`) or from `studies.dashboard`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import plotly.graph_objects as go

#: Colour per series, stable across figures of one page (policies keep their colour everywhere).
PALETTE = (
    "#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777",
    "#4b5563", "#65a30d", "#7c3aed", "#0d9488",
)
#: The no-speculation baseline is always grey and dashed.
BASELINE_COLOR = "#6b7280"

FONT = "Inter, -apple-system, 'Segoe UI', Roboto, Helvetica, Arial, sans-serif"


class Colors:
    """Assigns each label a colour the first time it is seen; baselines get the baseline grey."""

    def __init__(self) -> None:
        self._map: dict[str, str] = {}

    def __call__(self, label: str) -> str:
        if is_baseline_label(label):
            return BASELINE_COLOR
        if label not in self._map:
            self._map[label] = PALETTE[len(self._map) % len(PALETTE)]
        return self._map[label]


def is_baseline_label(label: str) -> bool:
    low = label.lower()
    return low.startswith("baseline") or "no speculation" in low


def wrap_label(label: str, width: int = 34) -> str:
    """Break a long category label at its ' · ' / ' @ ' joints so bar charts keep their plot area."""
    if len(label) <= width:
        return label
    parts = [p for p in label.replace(" @ ", " · @ ").split(" · ")]
    lines, cur = [], ""
    for p in parts:
        if cur and len(cur) + len(p) + 3 > width:
            lines.append(cur)
            cur = p
        else:
            cur = f"{cur} · {p}" if cur else p
    lines.append(cur)
    return "<br>".join(x.replace("· @", "@") for x in lines)


def layout(fig: go.Figure, title: str, xtitle: str, ytitle: str, *, height: int = 420, **kw) -> go.Figure:
    fig.update_layout(
        template="plotly_white",
        title={"text": title, "x": 0.0, "xanchor": "left", "font": {"size": 15}},
        font={"family": FONT, "size": 12, "color": "#1f2937"},
        height=height,
        margin={"l": 64, "r": 24, "t": 48, "b": 40},
        legend={"orientation": "h", "yanchor": "top", "y": -0.2, "x": 0, "font": {"size": 11}},
        hovermode="closest",
        **kw,
    )
    fig.update_xaxes(title_text=xtitle, gridcolor="#eef0f3", zeroline=False, title_standoff=6, automargin=True)
    fig.update_yaxes(title_text=ytitle, gridcolor="#eef0f3", zeroline=False, automargin=True)
    return fig


def finite(*xs: float | None) -> bool:
    return all(x is not None and isinstance(x, int | float) and math.isfinite(x) for x in xs)


def pareto_front(points: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points not dominated in (x up, y up), sorted by x: the frontier of a throughput/latency trade-off."""
    pts = sorted({(float(x), float(y)) for x, y in points if finite(x, y)}, key=lambda p: (-p[0], -p[1]))
    front: list[tuple[float, float]] = []
    best_y = -math.inf
    for x, y in pts:
        if y > best_y:
            front.append((x, y))
            best_y = y
    return sorted(front)


# --------------------------------------------------------------------------------------------
# Throughput / latency trade-offs
# --------------------------------------------------------------------------------------------


def frontier_figure(
    series: Mapping[str, Sequence[tuple[float, float, str]]],
    *,
    title: str = "Throughput per GPU vs tokens/s per user",
    slo_tokens_per_s_per_user: float | None = None,
    colors: Colors | None = None,
) -> go.Figure | None:
    """One scatter per policy of (tokens/s per user, tokens/s per GPU, hover text), with its Pareto frontier.

    This is the trade-off DSpark's production plots show: moving right (faster per user) costs
    throughput; a better policy's frontier sits above and to the right.
    """
    colors = colors or Colors()
    fig = go.Figure()
    any_data = False
    n_total = sum(1 for pts in series.values() for p in pts if finite(p[0], p[1]))
    for label, pts in series.items():
        pts = [p for p in pts if finite(p[0], p[1])]
        if not pts:
            continue
        any_data = True
        color = colors(label)
        dash = "dash" if is_baseline_label(label) else "solid"
        front = pareto_front((p[0], p[1]) for p in pts)
        fig.add_trace(go.Scatter(
            x=[p[0] for p in front], y=[p[1] for p in front], mode="lines", name=label, legendgroup=label,
            line={"color": color, "width": 2.5, "dash": dash, "shape": "linear"}, hoverinfo="skip",
        ))
        few = n_total <= 6  # a single run or two: label the points
        fig.add_trace(go.Scatter(
            x=[p[0] for p in pts], y=[p[1] for p in pts], mode="markers+text" if few else "markers", name=label,
            legendgroup=label, showlegend=False, textposition="top center",
            texttemplate=("%{y:,.0f} tok/s/GPU<br>%{x:.0f} tok/s/user" if few else None),
            marker={"color": color, "size": 12 if few else 8, "line": {"width": 1, "color": "white"}},
            text=[p[2] for p in pts],
            hovertemplate="<b>" + label + "</b><br>%{x:.1f} tok/s/user<br>%{y:,.0f} tok/s/GPU<br>%{text}"
            "<extra></extra>",
        ))
    if not any_data:
        return None
    xs = [p[0] for pts in series.values() for p in pts if finite(p[0], p[1])]
    ys = [p[1] for pts in series.values() for p in pts if finite(p[0], p[1])]
    if len(xs) <= 6:  # few points: leave room around them (and for their labels)
        fig.update_xaxes(range=[min(xs) * 0.8, max(xs) * 1.15])
        fig.update_yaxes(range=[0, max(ys) * 1.3])
    if slo_tokens_per_s_per_user:
        fig.add_vline(x=slo_tokens_per_s_per_user, line={"color": "#111827", "dash": "dot", "width": 1},
                      annotation_text=f"SLO {slo_tokens_per_s_per_user:g} tok/s/user",
                      annotation_position="top right")
    return layout(fig, title, "tokens/s per user", "throughput, tokens/s per GPU")


def lines_figure(
    series: Mapping[str, Sequence[tuple[float, float]]],
    *,
    title: str,
    xtitle: str,
    ytitle: str,
    log_x: bool = False,
    log_y: bool = False,
    colors: Colors | None = None,
    hline: tuple[float, str] | None = None,
    markers: bool = True,
) -> go.Figure | None:
    """Generic y-vs-x lines, one per label (sorted by x)."""
    colors = colors or Colors()
    fig = go.Figure()
    any_data = False
    for label, pts in series.items():
        pts = sorted((p for p in pts if finite(p[0], p[1])), key=lambda p: p[0])
        if not pts:
            continue
        any_data = True
        fig.add_trace(go.Scatter(
            x=[p[0] for p in pts], y=[p[1] for p in pts], name=label,
            mode="lines+markers" if markers else "lines",
            line={"color": colors(label), "width": 2.2, "dash": "dash" if is_baseline_label(label) else "solid"},
            marker={"size": 7},
        ))
    if not any_data:
        return None
    if hline is not None:
        fig.add_hline(y=hline[0], line={"color": "#111827", "dash": "dot", "width": 1},
                      annotation_text=hline[1], annotation_position="top left")
    layout(fig, title, xtitle, ytitle)
    if log_x:
        fig.update_xaxes(type="log")
    if log_y:
        fig.update_yaxes(type="log")
    return fig


def verify_budget_figure(
    series: Mapping[str, Sequence[tuple[float, float]]],
    *,
    xtitle: str = "concurrent requests",
    colors: Colors | None = None,
    scatter: bool = False,
) -> go.Figure | None:
    """Verification budget (draft tokens verified per request per step) against concurrency.

    DSpark reports about 4-6 verified tokens per request (target token included) below ~200 concurrent
    requests on V4-Flash, shrinking as concurrency grows, against MTP-1's fixed 2.
    """
    if scatter:
        colors = colors or Colors()
        fig = go.Figure()
        for label, pts in series.items():
            pts = [p for p in pts if finite(p[0], p[1])]
            if pts:
                fig.add_trace(go.Scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], mode="markers", name=label,
                                         marker={"color": colors(label), "size": 6, "opacity": 0.7}))
        if not fig.data:
            return None
        return layout(fig, "Verification budget vs concurrency (per time bin)", xtitle,
                       "draft tokens verified per request per step")
    return lines_figure(series, title="Verification budget vs concurrency", xtitle=xtitle,
                        ytitle="draft tokens verified per request per step", colors=colors)


# --------------------------------------------------------------------------------------------
# Heatmaps
# --------------------------------------------------------------------------------------------


def heatmap_figure(
    z: Sequence[Sequence[float | None]],
    x: Sequence[str | float],
    y: Sequence[str | float],
    *,
    title: str,
    xtitle: str,
    ytitle: str,
    colorbar: str = "speed-up",
    fmt: str = "{:.2f}",
    center: float | None = 1.0,
    text: Sequence[Sequence[str]] | None = None,
) -> go.Figure | None:
    """A heatmap with each cell's value written in it; a diverging scale centred on `center` (1x)."""
    vals = [v for row in z for v in row if v is not None and finite(v)]
    if not vals:
        return None
    labels = text or [[fmt.format(v) if finite(v) else "" for v in row] for row in z]
    kw: dict = {}
    if center is not None:
        lo, hi = min(vals), max(vals)
        if lo < center < hi:
            kw.update(zmid=center, colorscale="RdBu")
        elif hi <= center:
            kw.update(colorscale="Reds_r")
        else:
            kw.update(colorscale="Blues")
    else:
        kw.update(colorscale="Viridis")
    fig = go.Figure(go.Heatmap(
        z=[[v if finite(v) else None for v in row] for row in z],
        x=[str(v) for v in x], y=[str(v) for v in y], text=labels, texttemplate="%{text}",
        textfont={"size": 11}, colorbar={"title": {"text": colorbar}}, hoverongaps=False,
        hovertemplate=f"{xtitle} %{{x}}<br>{ytitle} %{{y}}<br>{colorbar} %{{z:.3f}}<extra></extra>", **kw,
    ))
    layout(fig, title, xtitle, ytitle)
    fig.update_xaxes(type="category", showgrid=False)
    fig.update_yaxes(type="category", showgrid=False)
    return fig


# --------------------------------------------------------------------------------------------
# Acceptance and validation
# --------------------------------------------------------------------------------------------


def acceptance_figure(series: Mapping[str, Sequence[float]], *, colors: Colors | None = None,
                      title: str = "Acceptance by draft position") -> go.Figure | None:
    """Conditional acceptance c_k (P(token k accepted | tokens before it were)) by position k = 1..."""
    pts = {label: [(k + 1, v) for k, v in enumerate(vals) if finite(v)] for label, vals in series.items()}
    fig = lines_figure(pts, title=title, xtitle="draft position k", ytitle="conditional acceptance c_k",
                       colors=colors)
    if fig is not None:
        fig.update_yaxes(range=[0, 1.02], tickformat=".0%")
        fig.update_xaxes(dtick=1)
    return fig



def validation_scatter(points: Sequence[tuple[float, float, str]], *, quantity: str = "value",
                       title: str = "Predicted vs measured") -> go.Figure | None:
    """(predicted, measured, label) triples; the diagonal is perfect agreement, the band is +-10% / +-25%."""
    pts = [(float(p), float(m), str(lab)) for p, m, lab in points if finite(p, m)]
    if not pts:
        return None
    lo = min(min(p, m) for p, m, _ in pts)
    hi = max(max(p, m) for p, m, _ in pts)
    pad = (hi - lo) * 0.05 or abs(hi) * 0.05 or 1.0
    lo, hi = lo - pad, hi + pad
    fig = go.Figure()
    for frac, color in ((0.25, "rgba(37,99,235,0.06)"), (0.10, "rgba(37,99,235,0.12)")):
        fig.add_trace(go.Scatter(
            x=[lo, hi, hi, lo], y=[lo * (1 - frac), hi * (1 - frac), hi * (1 + frac), lo * (1 + frac)],
            fill="toself", mode="lines", line={"width": 0}, fillcolor=color, name=f"+-{frac:.0%}",
            hoverinfo="skip",
        ))
    fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", name="predicted = measured",
                             line={"color": "#111827", "dash": "dot", "width": 1}, hoverinfo="skip"))
    errors = [(p - m) / m * 100 if m else float("nan") for p, m, _ in pts]
    fig.add_trace(go.Scatter(
        x=[p for p, _, _ in pts], y=[m for _, m, _ in pts], mode="markers", name="points",
        marker={"size": 9, "color": "#dc2626", "line": {"width": 1, "color": "white"}},
        text=[f"{lab}<br>error {e:+.1f}%" for (_, _, lab), e in zip(pts, errors)],
        hovertemplate="%{text}<br>predicted %{x:.4g}<br>measured %{y:.4g}<extra></extra>",
    ))
    layout(fig, title, f"predicted {quantity}", f"measured {quantity}")
    fig.update_xaxes(range=[lo, hi])
    fig.update_yaxes(range=[lo, hi])
    return fig
