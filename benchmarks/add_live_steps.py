"""Give a stored validation folder's sampled acceptance traces the live DSpark steps that `validate` now
records (`acceptance_trace.live_steps`), so that `dspark-sim validate --repredict` can judge them on that
folder's measurements (CPU, a few seconds a temperature):

    python benchmarks/add_live_steps.py validation/reports/cpu-session15-a /tmp/runs/cpu-session15-a
    dspark-sim validate --repredict /tmp/runs/cpu-session15-a -o /tmp/repredicted/cpu-session15-a

The folder is copied whole; its traces keep every field and gain step_policy and, at each batch size of the
grid, the live steps' fields (`validate.live_step_fields`: step_confidence, step_accept_prob at batch 1),
recorded here with the folder's own SPS table and the prompts and seed validate
used (a GPU folder's live steps then come from this CPU's arithmetic: the same process, other draws).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch

from dspark_sim.config.io import open_text, write_atomic
from dspark_sim.core.policies import make_policy
from dspark_sim.engine.data import load_corpus
from dspark_sim.measure.acceptance_trace import live_steps
from dspark_sim.validate.run import (
    ACCEPTANCE_PROMPTS,
    FULL,
    MEASUREMENTS_FILE,
    QUICK,
    _policy_spec,
    _prompt_sets,
    _sampling,
    attach_live_steps,
    load_pair,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--seed", type=int, default=0, help="validate's --seed (default 0)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    src = args.folder / "report.json"
    if not src.is_file():
        src = args.folder / MEASUREMENTS_FILE
    doc = json.loads(src.read_text())
    table = {int(k): float(v) for k, v in doc["sps_table"].items()}
    grid = QUICK if doc.get("quick") else FULL
    chain = max((int(p.split(":")[1]) for p in grid.policies if p.startswith("dspark")), default=0)
    if args.out.exists():
        raise SystemExit(f"{args.out}: exists (give a new folder)")
    shutil.copytree(args.folder, args.out)
    target, draft, _ = load_pair(doc.get("preset", "tiny"), args.seed, None, "cpu")
    set_a, _ = _prompt_sets(load_corpus(2_000_000).eval, max(grid.prompt_tokens), ACCEPTANCE_PROMPTS)
    name = f"dspark:{chain}"
    policy = make_policy(_policy_spec(name, table))
    for t in grid.temperatures:
        if t == 0 or not chain:
            continue
        path = next(p for p in (args.out / f"acceptance-T{t:g}.jsonl.gz", args.out / f"acceptance-T{t:g}.jsonl")
                    if p.is_file())
        with open_text(path) as fh:
            recs = [json.loads(line) for line in fh if line.strip()]
        for b in grid.batch_sizes:
            steps = []
            for p in grid.prompt_tokens:  # validate's order: every prompt at one length, then the next
                steps += live_steps(target, draft, [x[:p] for x in set_a[:ACCEPTANCE_PROMPTS]], grid.new_tokens,
                                    _sampling(t), policy, args.seed, batch=b)
            if len(steps) != len(recs):
                raise SystemExit(f"{path}: {len(recs)} records, {len(steps)} prompts")
            attach_live_steps(recs, steps, b, name)
        write_atomic(path, "".join(json.dumps(r) + "\n" for r in recs))
        print(f"{path}: live steps of {name} at batch {', '.join(map(str, grid.batch_sizes))} added to "
              f"{len(recs)} records")


if __name__ == "__main__":
    main()
