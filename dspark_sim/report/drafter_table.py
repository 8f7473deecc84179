"""The drafter table as markdown (what validation/drafters/<device>.md shows): training, calibration,
every configuration's tau / tokens per second / speed-up, and DSpark against MTP-1 at matched throughput.
Rendering only."""

from __future__ import annotations

from collections.abc import Sequence

from dspark_sim.config.drafter_table import DrafterTable, DraftModelTraining, HeadDrafterTraining
from dspark_sim.config.schema import FixedGamma


def _f(values: Sequence[float | None] | None, digits: int = 2) -> str:
    return "-" if values is None else " / ".join("-" if v is None else f"{v:.{digits}f}" for v in values)


def _training(table: DrafterTable) -> list[str]:
    out = ["| drafter | params | train s (own + shared target passes) | alpha T=1 by position (teacher-forced) "
           "| greedy match by position |", "|---|---|---|---|---|"]
    for kind, t in table.training.items():
        if isinstance(t, DraftModelTraining):
            out.append(f"| {kind} | {t.params:,} | {t.train_time_s} | {t.alpha_t1:.2f} (all positions) | - |")
            continue
        out.append(f"| {kind} | {t.params:,} | {t.train_time_s} + {t.shared_target_time_s} | "
                   f"{_f(t.alpha_t1_by_position_teacher_forced)} | {_f(t.greedy_match_by_position_teacher_forced)} |")
    return out


def _calibration(table: DrafterTable) -> list[str]:
    out = ["| drafter | mode | ECE, teacher-forced held-out half: before -> after per-position temperature | "
           "live ECE in the engine (fixed gamma, largest batch) | live ECE, head uncalibrated |", "|---|---|---|---|---|"]
    nan = float("nan")
    for kind, t in table.training.items():
        if not isinstance(t, HeadDrafterTraining):
            continue
        for mode, key in (("sampled", "T=1"), ("greedy", "T=0")):
            cal = t.calibration_teacher_forced.get(mode)
            if cal is not None and cal.ece_before_all is not None and cal.ece_after_all is not None:
                tf = f"head: {cal.ece_before_all:.3f} -> {cal.ece_after_all:.3f} (T_k {_f(cal.temperature)})"
            else:
                tf = (f"q(token): {cal.token_conf_ece_before_all if cal else nan:.3f} -> "
                      f"{cal.token_conf_ece_after_all if cal else nan:.3f}")
            live = table.live_calibration.get(kind, {})
            raw = live.get(f"{key} uncalibrated")
            here = live.get(key)
            out.append(f"| {kind} | {mode} | {tf} | {here.ece_all if here else nan:.3f} | "
                       f"{'-' if raw is None else f'{raw.ece_all:.3f}'} |")
    live = table.live_calibration.get("draft_model", {})
    for key in ("T=1", "T=0"):
        if key in live:
            out.append(f"| draft_model | {'sampled' if key == 'T=1' else 'greedy'} | - | {live[key].ece_all:.3f} | - |")
    return out


def _rows(table: DrafterTable) -> list[str]:
    out = []
    for temp in sorted({r.temperature for r in table.rows}):
        rows = [r for r in table.rows if r.temperature == temp]
        fixed = FixedGamma(gamma=table.gamma)
        batches = sorted({r.batch for r in rows if r.config != "baseline" and r.drafter_and_policy()[1] == fixed})
        out += [f"T={temp:g}: tau / tok/s per user / throughput tok/s (speed-up vs plain decoding, same run)", "",
                "| config | acceptance by position (largest batch) | " + " | ".join(f"B={b}" for b in batches) + " |",
                "|---|---|" + "---|" * len(batches)]
        for name in dict.fromkeys(r.config for r in rows):
            cells = []
            acc: list[float] | None = None
            for b in batches:
                r = next((x for x in rows if x.config == name and x.batch == b), None)
                if r is None:
                    cells.append("-")
                    continue
                acc = r.acceptance_by_position
                cells.append(f"{r.tau:.2f} / {r.per_user_tok_s:.0f} / {r.throughput_tok_s:.0f} ({r.speedup:.2f}x)")
            out.append(f"| {name} | {_f(acc)} | " + " | ".join(cells) + " |")
        out.append("")
    return out


def _comparison(table: DrafterTable) -> list[str]:
    out = []
    for key, comp in table.comparison.items():
        out += [f"{key}: DSpark (prefix scheduler, gamma_max {table.gamma}) against MTP-1 at matched throughput", "",
                "| batch | DSpark tok/s | DSpark tok/s/user | verified/seq/step | MTP-1 tok/s/user at that throughput "
                "| gain |", "|---|---|---|---|---|---|"]
        ver = {r.batch: r.verified_per_seq_step for r in comp.dspark}
        for m in comp.dspark_vs_mtp1_at_matched_throughput:
            other, gain = m.baseline_per_user_at_same_throughput, m.per_user_gain_pct
            out.append(f"| {m.batch} | {m.throughput_tok_s:.0f} | {m.per_user_tok_s:.0f} | {ver[m.batch]:.2f} | "
                       f"{'-' if other is None else f'{other:.0f}'} | {'-' if gain is None else f'{gain:+.0f}%'} |")
        out.append("")
    return out


def drafter_table_markdown(table: DrafterTable) -> str:
    """The table's tables as markdown."""
    return "\n".join([*_training(table), "", *_calibration(table), "", *_rows(table), *_comparison(table)])
