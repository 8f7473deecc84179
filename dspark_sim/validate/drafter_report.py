"""The drafter table's prediction summarised: the error table per drafter and temperature, DSpark
against MTP-1 at matched throughput (measured and predicted), and the report as markdown (torch-free)."""

from __future__ import annotations

import statistics
from typing import Any

from dspark_sim.config.schema import DSparkScheduler, FixedGamma
from dspark_sim.config.shorthand import BASELINE, drafter_config, parse_drafter_config
from dspark_sim.core.matched_throughput import matched


def drafter_of(config: str) -> str:
    """The drafter kind of a row label (config.shorthand), or 'baseline'."""
    return BASELINE if config == BASELINE else parse_drafter_config(config)[0]


def error_table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Median and worst |error| of tok/s and speed-up, per drafter and temperature (and all temperatures)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        kind = drafter_of(r["config"])
        for temp in (f"T={r['temperature']:g}", "all"):
            groups.setdefault((kind, temp), []).append(r)
    out = []
    for (kind, temp), rs in sorted(groups.items()):
        tok = [abs(r["tok_s_error_pct"]) for r in rs]
        spd = [abs(r["speedup_error_pct"]) for r in rs] if kind != "baseline" else []
        worst = max(rs, key=lambda r: abs(r["tok_s_error_pct"]))
        out.append({
            "drafter": kind, "temperature": temp, "rows": len(rs),
            "median_abs_tok_s_error_pct": round(statistics.median(tok), 1),
            "worst_abs_tok_s_error_pct": round(max(tok), 1),
            "median_abs_speedup_error_pct": round(statistics.median(spd), 1) if spd else None,
            "worst_abs_speedup_error_pct": round(max(spd), 1) if spd else None,
            "worst_tok_s_row": f"T={worst['temperature']:g} B={worst['batch']} {worst['config']}",
        })
    return out


def comparison(rows: list[dict[str, Any]], gamma: int) -> dict[str, Any]:
    """DSpark (prefix scheduler) against MTP-1 at matched throughput, measured and predicted."""
    out: dict[str, Any] = {}
    for temp in sorted({r["temperature"] for r in rows}):
        side: dict[str, Any] = {}
        for which in ("measured", "predicted"):
            def curve(name: str, w: str = which, t: float = temp) -> list[dict[str, Any]]:
                return [{"batch": r["batch"], "throughput_tok_s": r[f"{w}_throughput_tok_s"],
                         "per_user_tok_s": r[f"{w}_per_user_tok_s"]}
                        for r in rows if r["config"] == name and r["temperature"] == t]
            a = curve(drafter_config("dspark", DSparkScheduler.model_validate({"gamma_max": gamma})))
            b = curve(drafter_config("mtp", FixedGamma(gamma=1)))
            if a and b:
                side[which] = matched(a, b)
        if side:
            out[f"T={temp:g}"] = side
    return out


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:+.0f}%"


def markdown(report: dict[str, Any]) -> str:
    """The error table, the DSpark-vs-MTP-1 comparison (measured vs predicted) and the command."""
    where = f" ({report['table']}, profiled on {report.get('profile_device', '?')})" if "table" in report else ""
    out = [f"Simulator prediction of the measured drafter table{where}: full-batch decode "
           "tokens/s and speed-up over plain decoding, |error| = |predicted / measured - 1|.", "",
           "| drafter | temperature | rows | tok/s median / worst abs error | speed-up median / worst abs error "
           "| worst tok/s row |", "|---|---|---|---|---|---|"]
    for e in report["errors"]:
        spd = "-" if e["median_abs_speedup_error_pct"] is None else \
            f"{e['median_abs_speedup_error_pct']:.1f}% / {e['worst_abs_speedup_error_pct']:.1f}%"
        out.append(f"| {e['drafter']} | {e['temperature']} | {e['rows']} | {e['median_abs_tok_s_error_pct']:.1f}% / "
                   f"{e['worst_abs_tok_s_error_pct']:.1f}% | {spd} | {e['worst_tok_s_row']} |")
    out += ["", "Every row: measured / predicted throughput tok/s, speed-up, tau", "",
            "| T | B | config | tok/s | speed-up | tau | tok/s error | speed-up error |", "|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        out.append(f"| {r['temperature']:g} | {r['batch']} | {r['config']} | {r['measured_throughput_tok_s']:.0f} / "
                   f"{r['predicted_throughput_tok_s']:.0f} | {r['measured_speedup']:.2f} / {r['predicted_speedup']:.2f} | "
                   f"{r['measured_tau']:.2f} / {r['predicted_tau']:.2f} | {r['tok_s_error_pct']:+.1f}% | "
                   f"{r['speedup_error_pct']:+.1f}% |")
    for key, side in report["comparison"].items():
        out += ["", f"{key}: DSpark (prefix scheduler, gamma_max {report['gamma']}) against MTP-1 at matched "
                "throughput, measured vs predicted (MTP-1 tok/s/user interpolated at DSpark's throughput)", "",
                "| batch | DSpark tok/s meas / pred | DSpark tok/s/user meas / pred | MTP-1 tok/s/user there meas / pred "
                "| gain meas / pred |", "|---|---|---|---|---|"]
        pred = {r["batch"]: r for r in side.get("predicted", [])}
        for m in side.get("measured", []):
            p = pred.get(m["batch"], {})
            mo, po = m["baseline_per_user_at_same_throughput"], p.get("baseline_per_user_at_same_throughput")
            out.append(f"| {m['batch']} | {m['throughput_tok_s']:.0f} / {p.get('throughput_tok_s', float('nan')):.0f} | "
                       f"{m['per_user_tok_s']:.0f} / {p.get('per_user_tok_s', float('nan')):.0f} | "
                       f"{'-' if mo is None else f'{mo:.0f}'} / {'-' if po is None else f'{po:.0f}'} | "
                       f"{_pct(m['per_user_gain_pct'])} / {_pct(p.get('per_user_gain_pct'))} |")
    out += ["", "Command:", "", f"    {report['command']}"]
    return "\n".join(out)


def assemble(rows: list[dict[str, Any]], gamma: int, meta: dict[str, Any]) -> dict[str, Any]:
    """The report: rows, error table, DSpark-vs-MTP-1 comparison at matched throughput."""
    return {**meta, "gamma": gamma, "errors": error_table(rows), "comparison": comparison(rows, gamma),
            "rows": rows}
