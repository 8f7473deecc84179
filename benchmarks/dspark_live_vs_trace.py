"""DSpark at batch 1, sampled: the engine's live decisions against the policy walked over trace chains of the
very prompts `validate` measured (CPU, about 30 s).

    python benchmarks/dspark_live_vs_trace.py --sps-from validation/reports/cpu/report.json [--paths 5]

Why: `validate` predicts DSpark from chains recorded on held-apart prompts; if the walk over the measured prompts'
own chains disagrees with the engine on those prompts, the gap is the trace's, not the prompt sets'. At T=1 each
trace and each engine run is one sampled path, which alone moves the figure by several percent on 48 prompts:
`--paths N` records N traces (seeds 0..N-1) and runs the engine with N generator seed sets, and prints each.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from tau_sampling import dspark_walk

from dspark_sim.config.schema import DSparkScheduler
from dspark_sim.engine.data import load_corpus
from dspark_sim.engine.generate import speculative_generate
from dspark_sim.engine.sampling import Sampling
from dspark_sim.measure.acceptance_trace import acceptance_records
from dspark_sim.validate.run import ACCEPTANCE_PROMPTS, FULL, Engine, _prompt_sets, case_prompts, load_pair


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sps-from", required=True, help="a validation report.json (its sps_table and points)")
    ap.add_argument("--paths", type=int, default=1, help="sampled paths a side (trace seeds, engine seed sets)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    with open(args.sps_from, encoding="utf-8") as fh:
        report = json.load(fh)
    table = {int(k): float(v) for k, v in report["sps_table"].items()}
    keys = sorted(table)

    def sps(b):
        return np.interp(b, keys, [table[k] for k in keys])

    target, draft, dev = load_pair("tiny", 0, None, "cpu")
    set_a, set_b = _prompt_sets(load_corpus(2_000_000).eval, max(FULL.prompt_tokens), ACCEPTANCE_PROMPTS)
    cases = FULL.cases()
    prompts = case_prompts(Engine(target, draft, dev, set_a, set_b), cases)  # what validate measured, case by case
    policy = DSparkScheduler(gamma_max=5, sps_source="table", sps_table=table)
    print("| point | prompts | walk over their chains: verified / tau | engine on them: verified / tau | "
          "in the report: measured, predicted (held apart) verified |")
    print("|---|---|---|---|---|")
    for i, case in enumerate(cases):
        if not (case.temperature == 1.0 and case.batch_size == 1 and case.policy.startswith("dspark")):
            continue
        flat = [p for rnd in prompts[i] for p in rnd]
        walks, runs = [], []
        for path in range(args.paths):
            recs = acceptance_records(target, draft, flat, case.new_tokens, Sampling(1.0), path, chain=5)
            walks.append(dspark_walk(recs, "chain_confidence", "chain_accept_prob", sps, np.random.default_rng(1)))
            verified, gained = [], []
            for j, prompt in enumerate(flat):
                for m in (target, draft):
                    m.setup_caches(1, len(prompt) + case.new_tokens + 8)
                res = speculative_generate(target, draft, [prompt], case.new_tokens, policy, Sampling(1.0),
                                           generator=torch.Generator().manual_seed(100 + 1000 * path + j))
                for s in res.steps:
                    if s.active[0]:
                        verified.append(int(s.verified[0]))
                        gained.append(int(s.accepted[0]) + 1)
            runs.append((float(np.mean(verified)), float(np.sum(gained) / len(gained))))
        pt = next((p for p in report["points"] if p["label"] == case.label), None)
        rep = "-" if pt is None else f"{pt['measured_verified']:.3f}, {pt['predicted_verified']:.3f}"

        def cell(pairs):
            each = ", ".join(f"{v:.3f} / {t:.3f}" for v, t in pairs)
            return each if len(pairs) == 1 else f"{each} (mean {np.mean([v for v, _ in pairs]):.3f})"

        print(f"| {case.label} | {len(flat)} | {cell(walks)} | {cell(runs)} | {rep} |")


if __name__ == "__main__":
    main()
