"""How far apart two prompt samples put tau, and whether the draft's chains replay DSpark's live decisions:
the two studies behind `validate`'s prompt counts and its chain traces (validation/README.md, session 10).

1. Split error: greedy traces of every window of the held-out corpus pool `validate` draws from (both the
   acceptance and the measurement halves), then, over random splits into a "measured" set of n_m prompts
   and a "held-apart" set of n_a, the |relative difference| of their pooled taus at fixed gamma 3 and 5
   (median and 95th percentile), with the per-prompt c.v. and the correlation of neighbouring windows.
2. DSpark at batch 1, sampled (T=1), with the SPS table of a validation report: the engine run on the
   held-apart prompts themselves (drafts verified per step, tau), against a walk of the same policy over
   the prompts' traces, reading the chains (`chain_confidence`, `chain_accept_prob`) or the per-position
   fields (`confidence`, `accept_prob`).

    python benchmarks/tau_sampling.py --sps-from validation/reports/cpu/report.json
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from dspark_sim.config.schema import DSparkScheduler
from dspark_sim.core.policies import prefix_schedule
from dspark_sim.engine.data import load_corpus
from dspark_sim.engine.generate import speculative_generate
from dspark_sim.engine.sampling import Sampling
from dspark_sim.measure.acceptance_trace import acceptance_records
from dspark_sim.validate.run import ACCEPTANCE_PROMPTS, _prompt_sets, load_pair


def walk_fixed(yields: list[int], gamma: int) -> tuple[int, int]:
    """(tokens, steps) of a greedy request stepping at fixed gamma through its recorded yields."""
    i = tokens = steps = 0
    while i < len(yields):
        y = min(yields[i], gamma + 1)
        tokens += min(y, len(yields) - i)
        steps += 1
        i += y
    return tokens, steps


def split_errors(target, draft, windows: list[list[int]], lengths: tuple[int, ...], designs, splits: int) -> None:
    rng = np.random.default_rng(0)
    print("| prompt | gamma | pooled tau | per-prompt c.v. | neighbour corr. | "
          + " | ".join(f"{m}/{a} median / p95" for m, a in designs) + " |")
    print("|---|---|---|---|---|" + "---|" * len(designs))
    for p in lengths:
        recs = acceptance_records(target, draft, [w[:p] for w in windows], 64, Sampling())
        for g in (3, 5):
            ts = np.array([walk_fixed(r["accept_len"], g) for r in recs], dtype=float)
            tau = ts[:, 0] / ts[:, 1]
            cells = []
            for m, a in designs:
                errs = []
                for _ in range(splits):
                    perm = rng.permutation(len(recs))
                    meas, held = perm[:m], perm[m: m + a]
                    errs.append(abs((ts[held, 0].sum() / ts[held, 1].sum()) / (ts[meas, 0].sum() / ts[meas, 1].sum()) - 1))
                cells.append(f"{100 * np.median(errs):.1f}% / {100 * np.quantile(errs, 0.95):.1f}%")
            corr = np.corrcoef(tau[0::2], tau[1::2])[0, 1]
            print(f"| {p} | {g} | {ts[:, 0].sum() / ts[:, 1].sum():.2f} | {tau.std() / tau.mean():.2f} | "
                  f"{corr:+.2f} | " + " | ".join(cells) + " |")


def dspark_walk(recs: list[dict], conf_field: str, prob_field: str, sps, rng) -> tuple[float, float]:
    """(drafts verified per step, tau) of DSpark at batch 1 stepping through the records from output
    position 1 (the prefill gives position 0), acceptance drawn from the recorded probabilities."""
    verified, gained = [], []
    for r in recs:
        conf, prob = np.asarray(r[conf_field]), np.asarray(r[prob_field])
        n = len(conf)
        pos = 1
        while pos < n:
            if conf.ndim == 2:
                c, a = conf[pos], prob[pos]
            else:
                at = np.minimum(pos + np.arange(5), n - 1)
                c, a = conf[at], prob[at]
            v = min(int(prefix_schedule(np.cumprod(c[None, :], axis=1), sps)[0]), n - pos - 1)
            k = 0
            while k < v and rng.random() < a[k]:
                k += 1
            verified.append(v)
            gained.append(k + 1)
            pos += k + 1
    return float(np.mean(verified)), float(np.sum(gained) / len(gained))


def dspark_chains(target, draft, prompts: list[list[int]], sps_table: dict[int, float]) -> None:
    keys = sorted(sps_table)

    def sps(b):
        return np.interp(b, keys, [sps_table[k] for k in keys])

    recs = acceptance_records(target, draft, prompts, 64, Sampling(1.0), chain=5)
    policy = DSparkScheduler(gamma_max=5, sps_source="table", sps_table=sps_table)
    verified, gained = [], []
    for i, prompt in enumerate(prompts):
        for m in (target, draft):
            m.setup_caches(1, len(prompt) + 64 + 8)
        res = speculative_generate(target, draft, [prompt], 64, policy, Sampling(1.0),
                                   generator=torch.Generator(device=target.device).manual_seed(100 + i))
        for s in res.steps:
            if s.active[0]:
                verified.append(int(s.verified[0]))
                gained.append(int(s.accepted[0]) + 1)
    rng = np.random.default_rng(1)
    print("| DSpark, batch 1, T=1 | drafts verified / step | tau |")
    print("|---|---|---|")
    print(f"| engine on the {len(prompts)} prompts | {np.mean(verified):.3f} | {np.sum(gained) / len(gained):.3f} |")
    for name, cf, pf in (("walk over the chains", "chain_confidence", "chain_accept_prob"),
                         ("walk over the per-position fields", "confidence", "accept_prob")):
        v, t = dspark_walk(recs, cf, pf, sps, rng)
        print(f"| {name} | {v:.3f} | {t:.3f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sps-from", required=True, help="a validation report.json (its sps_table)")
    ap.add_argument("--splits", type=int, default=4000)
    ap.add_argument("--dspark-prompts", type=int, default=48)
    args = ap.parse_args()
    torch.set_num_threads(2)
    target, draft, _ = load_pair("tiny", 0, None, "cpu")
    corpus = load_corpus(2_000_000)
    held, measured = _prompt_sets(corpus.eval, 256, ACCEPTANCE_PROMPTS)
    windows = [w for pair in zip(held, measured, strict=True) for w in pair]  # corpus order
    split_errors(target, draft, windows, (64, 256), ((48, 96), (96, 192), (48, 192), (192, 192), (16, 192)),
                 args.splits)
    print()
    with open(args.sps_from, encoding="utf-8") as fh:
        table = {int(k): float(v) for k, v in json.load(fh)["sps_table"].items()}
    dspark_chains(target, draft, [w[:64] for w in held[: args.dspark_prompts]], table)


if __name__ == "__main__":
    main()
