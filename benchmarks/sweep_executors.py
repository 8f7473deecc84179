"""Sweep wall time on local processes vs Ray (same sweep, same worker count), and the dashboard size.

Run: python benchmarks/sweep_executors.py [--points N] [--requests N] [--workers N] [--skip-ray]
Prints one JSON document: wall seconds per executor (inline = one process, no pool), whether every
executor produced the same records, and the size of the sweep's self-contained dashboard.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from dspark_sim.cli.dashboard import write_dashboard
from dspark_sim.studies.sweep import POINTS_FILE, read_points, run_sweep

REPO = Path(__file__).resolve().parent.parent

SWEEP = """
name: bench_executors
base: {base}
command: run
set: [workload.num_requests={requests}, simulation.simulate_baseline=true]
seed: 0
parameters:
  workload.arrivals.rate_per_s: {rates}
groups:
  spec:
    fixed3: {{policy: {{kind: fixed, gamma: 3}}}}
    goodput: {{policy: {{kind: goodput, gamma_max: 6}}}}
"""


def _records(folder: Path) -> dict:
    return {r["key"]: {k: v for k, v in r.items() if k != "elapsed_s"} for r in read_points(folder / POINTS_FILE)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=16, help="sweep points (half per policy)")
    ap.add_argument("--requests", type=int, default=400, help="requests per simulated point")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--skip-ray", action="store_true")
    args = ap.parse_args(argv)
    rates = [round(1.0 + 2.0 * i, 1) for i in range(max(1, args.points // 2))]
    with tempfile.TemporaryDirectory(prefix="dspark-bench-") as tmp:
        tmp = Path(tmp)
        sweep = tmp / "sweep.yaml"
        sweep.write_text(SWEEP.format(base=REPO / "scenarios" / "quickstart.yaml", requests=args.requests,
                                      rates=json.dumps(rates)))
        executors = ["inline", "local"] + ([] if args.skip_ray else ["ray"])
        walls: dict[str, float] = {}
        for ex in executors:
            if ex == "ray":
                try:
                    import ray  # noqa: F401
                except ImportError:
                    print("ray not installed: skipped", file=sys.stderr)
                    continue
            t0 = time.perf_counter()
            res = run_sweep(sweep, tmp / ex, executor=ex, workers=args.workers)
            walls[ex] = round(time.perf_counter() - t0, 2)
            assert res.errors == 0, [p.error for p in res.points if p.error]
        ref = _records(tmp / "inline")
        same = {ex: _records(tmp / ex) == ref for ex in walls}
        t0 = time.perf_counter()
        page = write_dashboard([tmp / "local"], tmp / "report.html")
        report = {
            "points": len(ref),
            "requests_per_point": args.requests,
            "simulations_per_point": 2,
            "workers": args.workers,
            "cpus": os.cpu_count(),
            "wall_s": walls,
            "same_records_as_inline": same,
            "dashboard_bytes": page.stat().st_size,
            "dashboard_build_s": round(time.perf_counter() - t0, 2),
        }
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
