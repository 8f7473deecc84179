"""Two serving curves compared at the same throughput: how much faster each user of curve A is than a
user of curve B would be at A's throughput (DSpark against MTP-1 in the drafter table and its
prediction).

A curve is a list of points {"batch", "throughput_tok_s", "per_user_tok_s"}, one per batch size.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def matched(curve_a: Sequence[Mapping[str, Any]], curve_b: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """For each point of curve A (throughput, per-user tok/s), B's per-user tok/s at the same throughput
    (linear interpolation in log throughput over B's points; None outside B's range)."""
    b = sorted(curve_b, key=lambda r: r["throughput_tok_s"])
    bx = np.log([r["throughput_tok_s"] for r in b])
    by = np.array([r["per_user_tok_s"] for r in b])
    out = []
    for r in sorted(curve_a, key=lambda r: r["throughput_tok_s"]):
        x = np.log(r["throughput_tok_s"])
        inside = bx.min() <= x <= bx.max()
        other = float(np.interp(x, bx, by)) if inside else None
        out.append({"batch": r["batch"], "throughput_tok_s": r["throughput_tok_s"], "per_user_tok_s": r["per_user_tok_s"],
                    "baseline_per_user_at_same_throughput": None if other is None else round(other, 1),
                    "per_user_gain_pct": None if other is None else round(100 * (r["per_user_tok_s"] / other - 1), 1)})
    return out
