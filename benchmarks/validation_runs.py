"""Compare `dspark-sim validate` runs: each run's errors beside its measurements' own noise, and how far its
profile rounds moved from one another.

    python benchmarks/validation_runs.py validation/reports/cuda validation/reports/cuda-session16-b ...

Why: a run's worst points may be the model's error or the machine's; the repeat spread (max - min over the
median of a point's timed repeats) is what the machine itself varied between repeats, and profile rounds that disagree
(the calibration takes their median) say the profile saw a different machine than the measurements did.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def run_row(folder: Path) -> str:
    """One markdown row: errors, the median repeat spread, points within their spread, the worst points."""
    r = json.loads((folder / "report.json").read_text())
    s = r["summary"][0]
    pts = [p for p in r["points"] if not p["cross_prediction"]]
    if s.get("median_repeat_spread_speedup_pct") is None:
        return f"| `{folder}` | (no repeat spread: re-predict it with `dspark-sim validate --repredict`) |"
    within_s = sum(abs(p["speedup_error_pct"]) <= p["measured_speedup_repeat_spread_pct"] for p in pts)
    within_t = sum(abs(p["tokens_per_s_error_pct"]) <= p["measured_repeat_spread_pct"] for p in pts)
    ws = max(pts, key=lambda p: abs(p["speedup_error_pct"]))
    wt = max(pts, key=lambda p: abs(p["tokens_per_s_error_pct"]))
    drift = r.get("host_drift_pct")
    return (f"| `{folder}` | {s['median_abs_speedup_error_pct']:.1f} / {s['worst_abs_speedup_error_pct']:.1f} | "
            f"{s['median_abs_tokens_per_s_error_pct']:.1f} / {s['worst_abs_tokens_per_s_error_pct']:.1f} | "
            f"{s['median_repeat_spread_speedup_pct']:.1f} / {s['median_repeat_spread_tokens_per_s_pct']:.1f} | "
            f"{within_s} / {within_t} of {len(pts)} | {ws['label']} {ws['speedup_error_pct']:+.1f} "
            f"({ws['measured_speedup_repeat_spread_pct']:.1f}); tok/s {wt['label']} {wt['tokens_per_s_error_pct']:+.1f} "
            f"({wt['measured_repeat_spread_pct']:.1f}) | {'-' if drift is None else f'{drift:+.1f}'} |")


def round_rows(folder: Path) -> list[str]:
    """Per temperature and batch class: the median ratio of rounds 2 and 3 to round 1, speculative and plain steps."""
    files = sorted(folder.glob("profile-round-*.json"))
    if len(files) < 2:
        return [f"| `{folder}` | (one profile round) |"]
    rounds = [json.loads(f.read_text())["steps"] for f in files]
    by: dict[tuple, list[float | None]] = {}
    for i, steps in enumerate(rounds):
        for st in steps:
            key = (st["temperature"], st["policy"], st["batch_size"], st["gamma"], st["context_tokens"])
            by.setdefault(key, [None] * len(rounds))[i] = st["step_s"]
    rows = []
    for temp in sorted({k[0] for k in by}):
        for label, batches in (("1-2", (1, 2)), ("4-16", (4, 8, 16))):
            cells = []
            for spec in (True, False):
                sel = [v for k, v in by.items() if k[0] == temp and (k[3] > 0) == spec and k[2] in batches
                       and None not in v]
                cells.append(" / ".join(f"{statistics.median(v[j] / v[0] for v in sel):.2f}"
                                        for j in range(1, len(rounds))) if sel else "-")
            rows.append(f"| `{folder}` | {temp:g} | {label} | {cells[0]} | {cells[1]} |")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="+", type=Path, help="validation report folders")
    args = ap.parse_args()
    print("| report | speed-up err median / worst | tokens/s err median / worst | repeat spread median: speed-up / "
          "tokens/s | points within their spread: speed-up / tokens/s | worst points (error, their spread) | host drift |")
    print("|---|---|---|---|---|---|---|")
    for f in args.folders:
        print(run_row(f))
    print()
    print("| report | T | batch | speculative steps: rounds 2, 3 over round 1 (median) | plain steps |")
    print("|---|---|---|---|---|")
    for f in args.folders:
        print("\n".join(round_rows(f)))


if __name__ == "__main__":
    main()
