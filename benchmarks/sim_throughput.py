"""How fast is the simulator? 10,000 chat requests with speculation, batches up to 256.

Prints wall time, simulated output tokens per wall-second and peak memory. Goal: >= 1,000,000
simulated tokens per wall-second on one core. Usage:

    python benchmarks/sim_throughput.py [--requests 10000] [--rate 60] [--profile]

The workload: Llama-3.1-8B + EAGLE-3-style head on one H200, DSpark prefix scheduler (gamma_max 5,
cost-model SPS), chat-like lognormal lengths, Poisson arrivals fast enough to keep ~256 sequences in
the batch. Only the speculative configuration is timed (the baseline adds a second, similar run).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import resource
import sys
import time
import tracemalloc

from dspark_sim.config.loader import load_scenario
from dspark_sim.sim.run import Simulation

OVERRIDES = [
    "deployment.max_batch_size=256",
    "policy={kind: dspark, gamma_max: 5}",
    "acceptance={kind: per_position, conditional: [0.72, 0.70, 0.68, 0.66, 0.65]}",
    "workload.prompt_tokens={kind: lognormal, median_tokens: 600, sigma: 0.8, min_tokens: 16, max_tokens: 8192}",
    "workload.output_tokens={kind: lognormal, median_tokens: 250, sigma: 0.7, min_tokens: 8, max_tokens: 2048}",
    "slo={}",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--rate", type=float, default=60.0, help="Poisson arrivals per second")
    ap.add_argument("--profile", action="store_true", help="print the top functions (cProfile)")
    ap.add_argument("--tracemalloc", action="store_true", help="peak Python heap via tracemalloc (slower)")
    args = ap.parse_args()
    sc = load_scenario(None, OVERRIDES + [f"workload.num_requests={args.requests}",
                                          f"workload.arrivals={{kind: poisson, rate_per_s: {args.rate}}}"])
    if args.tracemalloc:
        tracemalloc.start()
    t0 = time.perf_counter()
    sim = Simulation(sc, "benchmark")
    t_build = time.perf_counter() - t0
    prof = cProfile.Profile() if args.profile else None
    t1 = time.perf_counter()
    if prof:
        prof.enable()
    sim.run()
    if prof:
        prof.disable()
    t_run = time.perf_counter() - t1
    wall = time.perf_counter() - t0
    tokens = int(sim.out.gen.sum())
    steps = sum(len(r.log) for r in sim.replicas)
    decoders = sum(sum(row[2] for row in r.log) for r in sim.replicas)
    print(f"requests          {sim.requests.n:,} ({int((sim.out.finish == sim.out.finish).sum()):,} finished)")
    print(f"simulated         {sim.env.now:,.1f} s, {steps:,} engine steps, mean batch {decoders / max(steps, 1):.1f}")
    print(f"output tokens     {tokens:,}")
    print(f"wall              {wall:.3f} s (workload + setup {t_build:.3f} s, simulation {t_run:.3f} s)")
    print(f"tokens / wall-s   {tokens / wall:,.0f} (simulation only: {tokens / t_run:,.0f})")
    print(f"wall per step     {t_run / max(steps, 1) * 1e6:.1f} us")
    if args.tracemalloc:
        _, peak = tracemalloc.get_traced_memory()
        print(f"peak heap         {peak / 1e6:.1f} MB (tracemalloc)")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"peak RSS          {rss / 1024 if sys.platform != 'darwin' else rss / 1e6:.1f} MB (whole process)")
    if prof:
        pstats.Stats(prof).sort_stats("tottime").print_stats(15)


if __name__ == "__main__":
    main()
