"""Step times of each drafter's speculative loop at fixed gamma, for `validate --drafters` to fit the
per-step overhead the cost model does not price (the context update after verify, the confidence head,
sampling), as `calibrate` fits the draft-model loop's.

Timed on random-token prompts (never the table's prompts or runs), in rounds over the configurations:
a shared machine's slow spells then touch one repeat of many, not every repeat of one.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from typing import Any

import torch

from dspark_sim.config.schema import FixedGamma
from dspark_sim.engine.drafter_generate import drafter_generate
from dspark_sim.engine.model import Transformer
from dspark_sim.engine.results import GenerationResult
from dspark_sim.engine.sampling import Sampling

#: (drafter kind, temperature, gamma, batch)
LoopKey = tuple[str, float, int, int]


def profile_drafter_loops(target: Transformer, drafters: Mapping[str, Any], gammas: Mapping[str, tuple[int, ...]],
                          temperatures: tuple[float, ...], batches: tuple[int, ...], prompt_len: int, cache: int, *,
                          new_tokens: int = 32, repeats: int = 3, seed: int = 0) -> dict[LoopKey, float]:
    """Median wall time of a full-batch step of each drafter's loop at fixed gamma, after a few untimed
    steps; `cache` is the table's static cache length (the loop keeps a larger one)."""
    gen = torch.Generator().manual_seed(seed)
    vocab = target.args.vocab_size
    prompts = {b: torch.randint(0, vocab, (b, prompt_len), generator=gen).tolist() for b in batches}
    configs = [(k, t, g, b) for k in drafters for t in temperatures for g in gammas[k] for b in batches]
    times: dict[LoopKey, list[float]] = {c: [] for c in configs}
    for _ in range(repeats):
        for kind, t, gamma, b in configs:
            target.setup_caches(b, cache)

            def run(n: int, kind: str = kind, t: float = t, gamma: int = gamma, b: int = b) -> GenerationResult:
                g = torch.Generator(device=target.device).manual_seed(seed + 1)
                return drafter_generate(target, drafters[kind], prompts[b], n, FixedGamma(gamma=gamma),
                                        Sampling(temperature=t), generator=g)

            run(8)
            res = run(new_tokens)
            full = [w for s, w in zip(res.steps, res.step_wall_s, strict=True) if s.active.all()]
            if full:
                times[(kind, t, gamma, b)].append(statistics.median(full))
    return {c: statistics.median(v) for c, v in times.items() if v}
