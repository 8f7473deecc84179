"""CPU table for the trained `tiny` pair: baseline vs speculative tokens/s, tau and speed-up.

Trains the pair first if the cache does not hold it (<= 5 minutes on 2 cores). Prompts are
64-byte windows of held-out stdlib files. Prints one JSON document.

    python benchmarks/engine_cpu.py [--preset tiny] [--cache-dir DIR] [--new-tokens 256]
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch

from dspark_sim.config.schema import ConfidenceThreshold, FixedGamma
from dspark_sim.engine import data
from dspark_sim.engine.data import load_corpus
from dspark_sim.engine.generate import generate_baseline, speculative_generate
from dspark_sim.engine.sampling import Sampling
from dspark_sim.engine.train import get_preset, train_pair


def held_out_prompts(preset: str, n: int, length: int = 64) -> list[list[int]]:
    return data.held_out_prompts(load_corpus(get_preset(preset).max_corpus_bytes), n, length)


def _best(fn: Any, repeats: int) -> Any:
    runs = [fn() for _ in range(repeats)]
    return min(runs, key=lambda r: r.total_time_s)


def run(preset: str = "tiny", seed: int = 0, cache_dir: str | None = None, new_tokens: int = 256,
        gammas: tuple[int, ...] = (1, 2, 3, 4, 6), batches: tuple[int, ...] = (1, 4),
        temperatures: tuple[float, ...] = (0.0, 1.0), repeats: int = 2, threads: int | None = None) -> dict[str, Any]:
    if threads:
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    pair = train_pair(preset, seed, cache_dir)
    train_s = time.perf_counter() - t0
    target, draft = pair.target, pair.draft
    prompts_all = held_out_prompts(preset, max(batches))
    rows = []
    for temp in temperatures:
        sampling = Sampling(temperature=temp)
        for b in batches:
            prompts = prompts_all[:b]

            def gen() -> torch.Generator:
                return torch.Generator().manual_seed(0)

            generate_baseline(target, prompts, 16, sampling, generator=gen())  # warm-up
            base = _best(lambda p=prompts, s=sampling: generate_baseline(target, p, new_tokens, s, generator=gen()),
                         repeats)
            policies = [(f"fixed-{g}", FixedGamma(gamma=g)) for g in gammas]
            policies.append(("confidence-6@0.3", ConfidenceThreshold(gamma_max=6, threshold=0.3)))
            for name, spec in policies:
                res = _best(lambda p=prompts, s=sampling, sp=spec: speculative_generate(
                    target, draft, p, new_tokens, sp, s, generator=gen()), repeats)
                rows.append({
                    "temperature": temp, "batch": b, "policy": name,
                    "baseline_tok_s": round(base.tokens_per_s, 1), "spec_tok_s": round(res.tokens_per_s, 1),
                    "speedup": round(res.tokens_per_s / base.tokens_per_s, 3), "tau": round(res.tau, 3),
                    "acceptance_by_position": [round(a, 3) for a in res.acceptance_by_position()],
                    "greedy_identical": (res.tokens == base.tokens) if temp == 0.0 else None,
                })
    m = pair.metrics
    return {
        "preset": preset, "seed": seed, "threads": torch.get_num_threads(), "new_tokens": new_tokens,
        "pair": str(pair.folder), "load_or_train_s": round(train_s, 1),
        "training": {k: m.get(k) for k in ("total_time_s", "target_train_time_s", "draft_train_time_s",
                                           "target_final_loss", "target_eval_loss", "draft_final_kl",
                                           "draft_eval_loss", "alpha_t1", "target_params", "draft_params")},
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--gammas", default="1,2,3,4,6")
    ap.add_argument("--batches", default="1,4")
    ap.add_argument("--temperatures", default="0,1")
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args(argv)
    report = run(a.preset, a.seed, a.cache_dir, a.new_tokens, tuple(int(g) for g in a.gammas.split(",")),
                 tuple(int(b) for b in a.batches.split(",")), tuple(float(t) for t in a.temperatures.split(",")),
                 a.repeats)
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
