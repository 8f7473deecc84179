"""Speculative steps with their phases graphed (cudagraphs.StepGraphs) against the eager-phase loop
(forward passes graphed only, each phase's launches from the host), on the trained tiny pair.

Per (temperature, batch, gamma): the median step time and decode tokens/s of each loop over interleaved
repeats (same prompts, same seed), whether both gave the same tokens, and the plain loop beside them.
Prints a markdown table; --out writes the rows as JSON.

    python benchmarks/step_graphs_gpu.py --cache-dir .carry/engine --out step_graphs.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from dspark_sim.config.schema import FixedGamma
from dspark_sim.engine.caches import cache_tokens
from dspark_sim.engine.cudagraphs import GraphedForward, StepGraphs, precapture
from dspark_sim.engine.data import load_corpus
from dspark_sim.engine.generate import generate_baseline, speculative_generate
from dspark_sim.engine.sampling import Sampling
from dspark_sim.validate.engine_runs import load_pair, prompt_sets


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--batches", default="1,4,16")
    ap.add_argument("--gammas", default="1,3,5")
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()

    target, draft, dev = load_pair("tiny", 0, a.cache_dir, a.device, a.dtype)
    _, pool = prompt_sets(load_corpus(2_000_000).eval, a.prompt_tokens, 64)
    tf, df, graphs = GraphedForward(target), GraphedForward(draft), StepGraphs(target, draft)
    rows = []
    for temperature in (0.0, 1.0):
        sampling = Sampling(temperature)
        for b in map(int, a.batches.split(",")):
            prompts = [p[: a.prompt_tokens] for p in pool[:b]]
            for gamma in map(int, a.gammas.split(",")):
                cap = cache_tokens(a.prompt_tokens, a.new_tokens, gamma)
                for m in (target, draft):
                    m.setup_caches(b, cap)
                precapture(tf, df, b, gamma)
                graphs.precapture(b, a.prompt_tokens, a.new_tokens, gamma, sampling)

                def spec(step_graphs, prompts=prompts, gamma=gamma, sampling=sampling):
                    gen = torch.Generator(device=dev).manual_seed(1)
                    return speculative_generate(target, draft, prompts, a.new_tokens, FixedGamma(gamma=gamma), sampling,
                                                generator=gen, target_forward=tf, draft_forward=df,
                                                step_graphs=step_graphs)

                def plain(prompts=prompts, sampling=sampling):
                    gen = torch.Generator(device=dev).manual_seed(1)
                    return generate_baseline(target, prompts, a.new_tokens, sampling, forward=tf, generator=gen)

                for run in (lambda: spec(None), lambda: spec(graphs), plain):  # warm-up
                    run()
                times: dict[str, list[float]] = {"eager": [], "graphed": [], "plain": []}
                tps: dict[str, list[float]] = {"eager": [], "graphed": [], "plain": []}
                same = True
                for _ in range(a.repeats):
                    e, g, p = spec(None), spec(graphs), plain()
                    same &= e.tokens == g.tokens
                    for name, res in (("eager", e), ("graphed", g)):
                        times[name].append(statistics.median(res.step_wall_s))
                        tps[name].append(res.decode_tokens_per_s)
                    times["plain"].append(p.decode_time_s / max(p.target_passes, 1))
                    tps["plain"].append(p.decode_tokens_per_s)
                row = {"temperature": temperature, "batch": b, "gamma": gamma, "same_tokens": same,
                       **{f"{k}_step_ms": 1e3 * statistics.median(v) for k, v in times.items()},
                       **{f"{k}_tokens_per_s": statistics.median(v) for k, v in tps.items()},
                       "eager_step_ms_all": [1e3 * t for t in times["eager"]],
                       "graphed_step_ms_all": [1e3 * t for t in times["graphed"]]}
                rows.append(row)
                print(f"T={temperature:g} B={b:2d} gamma={gamma}: step eager {row['eager_step_ms']:.3f} ms, graphed "
                      f"{row['graphed_step_ms']:.3f} ms (plain {row['plain_step_ms']:.3f}); tok/s eager "
                      f"{row['eager_tokens_per_s']:.0f}, graphed {row['graphed_tokens_per_s']:.0f}, plain "
                      f"{row['plain_tokens_per_s']:.0f}; same tokens {same}", flush=True)
    print("\n| T | batch | gamma | step eager (ms) | step graphed (ms) | plain step (ms) | tok/s eager | tok/s graphed | "
          "graphed / eager | same tokens |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['temperature']:g} | {r['batch']} | {r['gamma']} | {r['eager_step_ms']:.3f} | "
              f"{r['graphed_step_ms']:.3f} | {r['plain_step_ms']:.3f} | {r['eager_tokens_per_s']:.0f} | "
              f"{r['graphed_tokens_per_s']:.0f} | {r['graphed_tokens_per_s'] / r['eager_tokens_per_s']:.2f}x | "
              f"{r['same_tokens']} |")
    if a.out:
        a.out.write_text(json.dumps({"device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu",
                                     "args": vars(a) | {"out": str(a.out)}, "unix_time": time.time(),
                                     "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
