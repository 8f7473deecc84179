"""Does a short yardstick read right before an engine case track the case's own speed on this CPU?

The check behind `validate`'s host-speed yardstick (dspark_sim/measure/host_speed.py, the 'probed'
estimator on a CPU): run it on a new CPU host before relying on that estimator there. One process
alternates, for --minutes, a reading of four tiny engine steps (plain and gamma 5 at batch 1 and 16, 8 new
tokens) with four engine cases (T=0 B=16 P=64 fixed:5, T=0 B=1 P=64 fixed:5, T=1 B=4 P=256 fixed:3,
T=0 B=16 P=256 fixed:1), then prints, per case and loop, the spread (standard deviation) of log tokens/s and
how much of it the reading right before explains: the correlation, and the spread left once the rate is
multiplied by the reading. On the shared 2-core CPU where the yardstick was designed (6 minutes, 324 case
runs): correlation 0.70-0.81 with the four steps' geometric mean, spread 0.08-0.13 falling to 0.06-0.08
(docs/validation.md).

    python tools/host_yardstick_tracking.py --minutes 6 -o /tmp/host_yardstick_tracking.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from dspark_sim.config.io import write_atomic
from dspark_sim.engine.data import load_corpus
from dspark_sim.measure.profile import profile_steps
from dspark_sim.validate.cases import ACCEPTANCE_PROMPTS, Case
from dspark_sim.validate.engine_runs import Engine, case_prompts, load_pair, prompt_sets, run_case_once

CASES = [Case(0.0, 16, 64, "fixed:5", rounds=1, new_tokens=64), Case(0.0, 1, 64, "fixed:5", rounds=2, new_tokens=64),
         Case(1.0, 4, 256, "fixed:3", rounds=2, new_tokens=64), Case(0.0, 16, 256, "fixed:1", rounds=1, new_tokens=64)]


def analyse(runs: list[dict]) -> None:
    keys = list(runs[0]["probe"])
    for c in range(len(CASES)):
        rows = [x for x in runs if x["case"] == c][1:]  # the first visit warms the case up
        for side in ("base", "spec"):
            y = np.log([x[side] for x in rows])
            y -= y.mean()
            line = f"{CASES[c].label:26s} {side} sd {y.std():.3f}"
            for k in keys:
                p = -np.log([x["probe"][k] for x in rows])
                p -= p.mean()
                line += f" | {k} corr {np.corrcoef(y, p)[0, 1]:+.2f} left {np.std(y - p):.3f}"
            p = -np.mean([np.log([x["probe"][k] for x in rows]) for k in keys], axis=0)
            p -= p.mean()
            print(line + f" | all four corr {np.corrcoef(y, p)[0, 1]:+.2f} left {np.std(y - p):.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=6.0)
    ap.add_argument("-o", "--out", type=Path, default=None)
    args = ap.parse_args()
    target, draft, dev = load_pair("tiny", 0, None, "cpu", log=lambda m: None)
    corpus = load_corpus(2_000_000)
    set_a, set_b = prompt_sets(corpus.eval, 256, ACCEPTANCE_PROMPTS)
    eng = Engine(target, draft, dev, set_a, set_b)
    prompts = case_prompts(eng, CASES)
    runs: list[dict] = []
    t0 = time.perf_counter()
    first = True
    while time.perf_counter() - t0 < args.minutes * 60:
        for i, (case, p) in enumerate(zip(CASES, prompts, strict=True)):
            steps = profile_steps(target, draft, [1, 16], [0, 5], [64], 8, repeats=1)
            probe = {f"B{s.batch_size}-g{s.gamma}": s.step_s for s in steps}
            r = run_case_once(eng, case, p, {}, 0, warm=first)
            runs.append(dict(t=time.perf_counter() - t0, case=i, probe=probe,
                             base=r.base_tokens / sum(r.base_s), spec=r.spec_tokens / sum(r.spec_s)))
        first = False
    print(len(runs), "case runs")
    analyse(runs)
    if args.out:
        write_atomic(args.out, json.dumps(runs) + "\n")


if __name__ == "__main__":
    main()
