"""The self-contained HTML page of a validation report: predicted vs measured, and the error table."""

from __future__ import annotations

import html

import plotly.graph_objects as go
import plotly.io as pio

from dspark_sim.config.measurements import ValidationReport

#: what a report's measured figures are, by its estimator (validate.resolve_estimator)
_ESTIMATOR_TEXT = {
    "best": "each point's fastest timed repeat, calibrated on the profile's fastest round",
    "median": "the median of the timed repeats, calibrated on the profile's median round",
    "probed": "the median of the timed repeats, each brought to the run's reference host speed by the yardstick "
              "read beside it (the profile likewise, then calibrated)",
}

def _scatter(report: ValidationReport, metric: str, title: str) -> go.Figure:
    fig = go.Figure()
    groups: dict[str, list] = {}
    for p in report.points:
        groups.setdefault(p.policy.split(":")[0] + (" (cross)" if p.cross_prediction else ""), []).append(p)
    lo, hi = float("inf"), 0.0
    for name, pts in sorted(groups.items()):
        xs = [getattr(p, f"measured_{metric}") for p in pts]
        ys = [getattr(p, f"predicted_{metric}") for p in pts]
        lo, hi = min(lo, *xs, *ys), max(hi, *xs, *ys)
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="markers", name=name, text=[p.label for p in pts],
                                 hovertemplate="%{text}<br>measured %{x:.3g}<br>predicted %{y:.3g}<extra></extra>"))
    if hi > 0:
        fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", name="predicted = measured",
                                 line={"dash": "dash", "color": "grey"}))
    fig.update_layout(title=title, xaxis_title="measured", yaxis_title="predicted", height=460,
                      margin={"l": 60, "r": 20, "t": 50, "b": 50})
    return fig


def _pct(v: float | None, sign: str = "+") -> str:
    return "-" if v is None else f"{v:{sign}.1f}%"


def validation_html(report: ValidationReport) -> str:
    figs = [_scatter(report, "speedup", "speed-up: predicted vs measured"),
            _scatter(report, "tokens_per_s", "decode tokens/s: predicted vs measured")]
    parts = []
    for i, fig in enumerate(figs):
        # fixed div ids: the same report gives the same bytes
        parts.append(pio.to_html(fig, include_plotlyjs=(i == 0), full_html=False, config={"displaylogo": False},
                                 div_id=f"validation-fig-{i}"))
    rows = "".join(
        f"<tr><td>{html.escape(s.group)}</td><td>{s.points}</td><td>{s.median_abs_speedup_error_pct:.1f}%</td>"
        f"<td>{s.worst_abs_speedup_error_pct:.1f}%</td><td>{s.median_abs_tokens_per_s_error_pct:.1f}%</td>"
        f"<td>{s.worst_abs_tokens_per_s_error_pct:.1f}%</td><td>{_pct(s.median_abs_tau_error_pct, '')}</td>"
        f"<td>{_pct(s.median_abs_per_tau_error_pct, '')}</td><td>{_pct(s.median_repeat_spread_speedup_pct, '')}</td>"
        f"<td>{_pct(s.median_repeat_spread_tokens_per_s_pct, '')}</td></tr>"
        for s in report.summary
    )
    pts = "".join(
        f"<tr><td>{html.escape(p.label)}</td><td>{p.measured_tokens_per_s:.1f}</td><td>{p.predicted_tokens_per_s:.1f}</td>"
        f"<td>{p.measured_speedup:.2f}</td><td>{p.predicted_speedup:.2f}</td><td>{p.measured_tau:.2f}</td>"
        f"<td>{p.predicted_tau:.2f}</td><td>{p.tokens_per_s_error_pct:+.1f}%</td><td>{p.speedup_error_pct:+.1f}%</td>"
        f"<td>{_pct(p.tau_error_pct)}</td><td>{_pct(p.per_tau_error_pct)}</td>"
        f"<td>{_pct(p.measured_speedup_repeat_spread_pct, '')}</td><td>{_pct(p.measured_repeat_spread_pct, '')}</td></tr>"
        for p in report.points
    )
    verdict = "PASSED" if report.passed else "FAILED"
    drift = ("" if report.host_drift_pct is None else
             f"&middot; host drift {report.host_drift_pct:+.1f}% (a reference run, end vs start)")
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>dspark-sim validation: {html.escape(report.device.name)}</title>
<style>body{{font-family:sans-serif;margin:24px;max-width:1100px}} table{{border-collapse:collapse;margin:12px 0}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}} td:first-child,th:first-child{{text-align:left}}</style></head>
<body><h1>Predicted vs measured on {html.escape(report.device.name)} ({report.device.kind})</h1>
<p>{verdict} against a median-error tolerance of {report.tolerance_pct:g}% &middot; engine {html.escape(report.engine_version)}
&middot; preset {html.escape(report.preset)} &middot; calibration fit median error {report.calibration_median_error_pct:.1f}%
{drift}
&middot; measured figures: {_ESTIMATOR_TEXT[report.estimator]}
&middot; command <code>{html.escape(report.command)}</code></p>
<h2>Errors by regime</h2><p>The tokens/s error splits into an acceptance side (tau predicted from the held-apart prompts'
traces vs tau measured) and a timing side (tokens/s per unit of tau). The repeat spread is the measurement's own
noise: (max - min) / median of a point's timed repeats; an error within it is within what the machine itself varied
between repeats.</p>
<table><tr><th>group</th><th>points</th><th>median |speed-up err|</th><th>worst</th>
<th>median |tok/s err|</th><th>worst</th><th>median |tau err|</th><th>median |tok/s per tau err|</th>
<th>median repeat spread: speed-up</th><th>tok/s</th></tr>{rows}</table>
{''.join(parts)}
<h2>Every point</h2><table><tr><th>point</th><th>measured tok/s</th><th>predicted tok/s</th><th>measured x</th>
<th>predicted x</th><th>measured tau</th><th>predicted tau</th><th>tok/s err</th><th>speed-up err</th><th>tau err</th>
<th>tok/s per tau err</th><th>repeat spread: speed-up</th><th>tok/s</th></tr>{pts}</table>
</body></html>
"""
