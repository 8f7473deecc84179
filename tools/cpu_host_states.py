"""Does this machine's own speed change while `validate` runs? One fixed workload timed for minutes.

Run it before trusting `dspark-sim validate` on a shared CPU. On a shared 2-core CPU validate missed its
tokens/s targets in some runs by a near-constant factor (all of a run's points predicted 11-18% fast) while
other runs sat within 2%; its profile rounds and measurement rounds of the plain batch-16 loop read
5.2-6.4k tokens/s in some rounds and 7.5-8.6k in others. This runs
one unchanging piece of work, the plain decoding loop of the bundled tiny target at batch 1 and batch 16
(same prompts, same caches, same process), back to back for `--minutes`, and prints how its speed moves:
quantiles, the slow and fast spells, and how long a spell lasts. Nothing in the engine changes between
samples, so whatever moves is the machine.

    python tools/cpu_host_states.py --minutes 8 -o /tmp/host_states.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from dspark_sim.config.io import write_atomic
from dspark_sim.engine.data import load_corpus
from dspark_sim.engine.generate import generate_baseline
from dspark_sim.engine.sampling import Sampling
from dspark_sim.validate.cases import ACCEPTANCE_PROMPTS
from dspark_sim.validate.engine_runs import load_pair, prompt_sets


def spells(values: list[float], cut: float) -> list[tuple[bool, int]]:
    """Runs of consecutive samples on one side of `cut`: (fast?, length)."""
    out: list[tuple[bool, int]] = []
    for v in values:
        fast = v >= cut
        if out and out[-1][0] == fast:
            out[-1] = (fast, out[-1][1] + 1)
        else:
            out.append((fast, 1))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=8.0)
    ap.add_argument("--cache-dir", default=None, help="where the trained tiny pair lives (default: the user cache)")
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("-o", "--out", type=Path, default=None)
    args = ap.parse_args()

    target, _, _ = load_pair("tiny", 0, args.cache_dir, "cpu", log=lambda m: None)
    corpus = load_corpus(2_000_000)
    prompts, _ = prompt_sets(corpus.eval, 64, ACCEPTANCE_PROMPTS)
    batches = [int(b) for b in args.batches.split(",")]
    series: dict[int, list[tuple[float, float]]] = {b: [] for b in batches}
    t_start = time.perf_counter()
    while time.perf_counter() - t_start < args.minutes * 60:
        for b in batches:
            batch = [p[:64] for p in prompts[:b]]
            target.setup_caches(b, 64 + args.new_tokens + 8)
            res = generate_baseline(target, batch, args.new_tokens, Sampling(),
                                    generator=torch.Generator().manual_seed(0))
            series[b].append((time.perf_counter() - t_start, (res.new_tokens - b) / res.decode_time_s))
    summary = {}
    for b, pts in series.items():
        v = [x for _, x in pts]
        q = statistics.quantiles(v, n=20)
        med = statistics.median(v)
        sp = spells(v, med)
        per_sample_s = pts[-1][0] / len(pts)
        summary[b] = {
            "samples": len(v), "median": med, "p5": q[0], "p95": q[-1], "p95_over_p5": q[-1] / q[0],
            "longest_spell_s": max(n for _, n in sp) * per_sample_s,
            "median_spell_s": statistics.median(n for _, n in sp) * per_sample_s,
            "lag1_autocorrelation": _lag1(v),
        }
        print(f"batch {b}: {len(v)} samples over {pts[-1][0]:.0f} s; tokens/s median {med:.0f}, "
              f"p5 {q[0]:.0f}, p95 {q[-1]:.0f} (p95/p5 {q[-1] / q[0]:.2f}); lag-1 autocorrelation "
              f"{summary[b]['lag1_autocorrelation']:.2f}; spells either side of the median: median "
              f"{summary[b]['median_spell_s']:.1f} s, longest {summary[b]['longest_spell_s']:.1f} s")
        # a coarse time line: the median of every 30 s
        line = []
        for k in range(int(pts[-1][0] // 30) + 1):
            w = [x for t, x in pts if k * 30 <= t < (k + 1) * 30]
            if w:
                line.append(f"{statistics.median(w):.0f}")
        print("   per 30 s: " + " ".join(line))
    if args.out:
        write_atomic(args.out, json.dumps({"summary": summary, "series": series}, indent=1) + "\n")


def _lag1(v: list[float]) -> float:
    """Near 1: a fast or slow sample is followed by another like it (spells); near 0: independent noise."""
    m = statistics.fmean(v)
    den = sum((x - m) ** 2 for x in v)
    return sum((a - m) * (b - m) for a, b in zip(v, v[1:])) / den if den else 0.0


if __name__ == "__main__":
    main()
