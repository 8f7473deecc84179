"""How fast is `predict`? Prints: one process run, one in-process run, and the vectorised rate.

Run: python benchmarks/predict_speed.py [--repeats N]
Target (issue 2): 100,000 configurations in under a second; one predict well under a second.
The baseline in the same run is `python -c pass` (interpreter start-up), so noise is visible.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import numpy as np

from dspark_sim.config.loader import load_scenario
from dspark_sim.core.analytic import predict_grid, predict_scenario
from dspark_sim.core.costmodel import StepCoster


def _best_of(fn, repeats: int) -> tuple[float, float]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times), statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    def interp():
        subprocess.run([sys.executable, "-c", "pass"], check=True)

    def process():
        subprocess.run([sys.executable, "-m", "dspark_sim.cli.main", "predict", "--json"], check=True,
                       capture_output=True)

    def in_process():
        predict_scenario(load_scenario(None))

    sc = load_scenario(None)
    dep = sc.deployment
    coster = StepCoster(dep.model, dep.drafter, dep.hardware, dep.tensor_parallel)
    batches = np.arange(1, 501)
    contexts = np.linspace(128, 131072, 25).round()
    gammas = np.arange(1, 9)
    n_configs = len(batches) * len(contexts) * len(gammas)

    def vectorised():
        predict_grid(coster, sc.acceptance, batches, contexts, gammas)

    in_process()  # warm imports and caches
    results = {}
    for name, fn in [("python_startup_s", interp), ("predict_process_s", process),
                     ("predict_in_process_s", in_process), ("grid_100k_s", vectorised)]:
        best, median = _best_of(fn, args.repeats)
        results[name] = {"best": round(best, 4), "median": round(median, 4)}
    results["grid_configurations"] = n_configs
    results["configurations_per_s"] = round(n_configs / results["grid_100k_s"]["best"])
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
