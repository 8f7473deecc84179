"""The dashboard page's frame: cards and sections, the stylesheet, and the one self-contained HTML file.

plotly.js is written inline and every figure's JSON sits in one data block that a small script draws,
so the page opens offline; figure ids are numbered in order, so the same inputs give the same bytes.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from dataclasses import dataclass

import plotly.graph_objects as go
import plotly.io as pio
from plotly.offline import get_plotlyjs

import dspark_sim


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
    return get_plotlyjs().replace("</script", "<\\/script")


def _fig_json(fig: go.Figure) -> dict:
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
