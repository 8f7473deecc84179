"""Predicted vs published speed-ups for the Leviathan et al. (arXiv 2211.17192, Table 4) and Chen et al.
(arXiv 2302.01318, Table 1) cases.

Run: python validation/papers/make_table.py   (writes validation/papers/papers.md and papers.json)

Both papers give per-token draft/target cost ratios (or times) and, for Leviathan, the acceptance
alpha; dspark-sim's predictor prices a step as gamma draft passes + one verify pass and uses the same
acceptance maths as every other command (dspark_sim.core.acceptance / dspark_sim.core.analytic).
"""

from __future__ import annotations

import json
from pathlib import Path

from scipy.optimize import brentq

from dspark_sim.config.io import write_atomic
from dspark_sim.config.schema import IIDAcceptance
from dspark_sim.core.acceptance import expected_tokens
from dspark_sim.core.analytic import speedup_from_times

HERE = Path(__file__).resolve().parent

# Leviathan, Kalman, Matias (ICML 2023, arXiv 2211.17192), Table 4: T5-XXL target on TPU-v4, batch 1.
# (case, gamma, alpha, c, published "Exp" (their formula), published "Emp" (measured))
LEVIATHAN = [
    ("EnDe T5-small greedy", 7, 0.75, 0.02, 3.2, 3.4),
    ("EnDe T5-base greedy", 7, 0.80, 0.04, 3.3, 2.8),
    ("EnDe T5-large greedy", 7, 0.82, 0.11, 2.5, 1.7),
    ("CNNDM T5-small greedy", 5, 0.65, 0.02, 2.4, 3.1),
    ("CNNDM T5-large T=1", 3, 0.56, 0.11, 1.6, 1.7),
]

# Chen et al. 2023 (arXiv 2302.01318), Table 1: Chinchilla 70B target, 4B draft, 16 TPU v4, K = 4.
TARGET_MS, DRAFT_MS, K = 14.1, 1.8, 4
CHEN = [("XSum nucleus", 7.52, 1.92), ("XSum greedy", 7.00, 2.01), ("HumanEval nucleus", 5.73, 2.46)]


def leviathan_rows() -> list[dict]:
    rows = []
    for case, gamma, alpha, c, exp, emp in LEVIATHAN:
        tau = float(expected_tokens(IIDAcceptance(alpha=alpha), [gamma])[0])
        pred = float(speedup_from_times(tau, t_base=1.0, t_draft=gamma * c, t_verify=1.0))
        rows.append(
            {
                "case": case, "gamma": gamma, "alpha": alpha, "c": c, "tau": round(tau, 3),
                "predicted": round(pred, 3), "published_formula": exp, "published_measured": emp,
                "error_vs_formula": round(pred - exp, 3),
                "error_vs_measured_pct": round(100 * (pred / emp - 1), 1),
            }
        )
    return rows


def chen_rows() -> list[dict]:
    """Chen gives times but not alpha: report the i.i.d. alpha that reproduces each published time,
    with the predictor's speed-up at that alpha (a consistency check, not an independent prediction)."""
    rows = []
    step_ms = K * DRAFT_MS + TARGET_MS  # K draft passes + one scoring pass priced as one target step
    for case, ms_per_token, published_speedup in CHEN:
        needed_tau = step_ms / ms_per_token

        def gap(alpha: float, need: float = needed_tau) -> float:
            return float(expected_tokens(IIDAcceptance(alpha=alpha), [K])[0]) - need

        alpha = brentq(gap, 0.0, 0.999999) if gap(0.999999) > 0 else float("nan")
        tau = float(expected_tokens(IIDAcceptance(alpha=alpha), [K])[0])
        pred = float(speedup_from_times(tau, TARGET_MS, K * DRAFT_MS, TARGET_MS))
        rows.append(
            {
                "case": case, "K": K, "implied_alpha": round(alpha, 3), "tau": round(tau, 3),
                "predicted_speedup_at_implied_alpha": round(pred, 3),
                "published_speedup": published_speedup,
                "published_ms_per_token": ms_per_token,
                "max_speedup_alpha_1": round(float(speedup_from_times(K + 1, TARGET_MS, K * DRAFT_MS, TARGET_MS)), 3),
            }
        )
    return rows


def main() -> None:
    lev, chen = leviathan_rows(), chen_rows()
    write_atomic(HERE / "papers.json", json.dumps({"leviathan": lev, "chen": chen}, indent=2) + "\n")
    lines = [
        "# Predicted vs published: Leviathan et al. (2023) and Chen et al. (2023)",
        "",
        "Made by `python validation/papers/make_table.py` (figures: Leviathan, Kalman, Matias, ICML 2023,",
        "arXiv 2211.17192, Table 4; Chen et al. 2023, arXiv 2302.01318, Table 1). Arithmetic only: any machine",
        "gives these figures, byte for byte (`papers.json` holds them).",
        "",
        "## Leviathan et al., Table 4 (T5-XXL target, TPU-v4, batch 1)",
        "",
        "| case | gamma | alpha | c | tau | predicted | paper's formula | paper measured | pred - formula | pred vs measured |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in lev:
        lines.append(
            f"| {r['case']} | {r['gamma']} | {r['alpha']} | {r['c']} | {r['tau']} | {r['predicted']:.2f}x | "
            f"{r['published_formula']}x | {r['published_measured']}x | {r['error_vs_formula']:+.2f} | "
            f"{r['error_vs_measured_pct']:+.1f}% |"
        )
    lines += [
        "",
        "## Chen et al., Table 1 (Chinchilla 70B, 4B draft, 16 TPU v4, K = 4, 14.1 / 1.8 ms per token)",
        "",
        "| case | published ms/token | published speed-up | implied alpha | tau | predicted at implied alpha | ceiling (alpha = 1) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in chen:
        lines.append(
            f"| {r['case']} | {r['published_ms_per_token']} | {r['published_speedup']}x | {r['implied_alpha']} | "
            f"{r['tau']} | {r['predicted_speedup_at_implied_alpha']:.2f}x | {r['max_speedup_alpha_1']:.2f}x |"
        )
    lines += [
        "",
        "## Tolerance we claim, and why",
        "",
        "- Against the closed form (Leviathan's 'Exp' column) the predictor is exact: the differences above",
        "  are the paper's rounding to one decimal (|pred - formula| <= 0.06; the last row's 1.6 vs 1.54",
        "  suggests the paper rounded alpha before printing it). `tests/core/test_analytic.py` checks the identity",
        "  to 1e-12 over random alpha, gamma and c.",
        "- Against the papers' *measured* speed-ups we claim no tolerance from these inputs alone: with only",
        "  (alpha, c) the error is -23% to +47%, the same gap the paper reports between its own formula and",
        "  its measurements. Its causes are what the inputs leave out: the verify pass costs more than one",
        "  target step for larger gamma (the paper's c is a per-token time ratio, not a pass cost), and",
        "  acceptance is not i.i.d. (CNNDM's measured 3.1x > formula: long copied spans accept in runs).",
        "  Closing that gap is what the cost model, per-position acceptance and `calibrate`/`validate` are for.",
        "- Chen et al. publish times but no acceptance rate for this table, so their rows are a consistency",
        "  check: every published time is reachable with an i.i.d. alpha in [0, 1] under the same step model,",
        "  and the implied alphas are ordered as the tasks' speed-ups are. With the implied alpha the",
        "  predictor reproduces the published speed-up within 2.5%; the one residual (XSum nucleus) is",
        "  the paper's own: 14.1 / 7.52 = 1.88x, so its printed 1.92x used a slightly slower baseline.",
        "",
    ]
    write_atomic(HERE / "papers.md", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
