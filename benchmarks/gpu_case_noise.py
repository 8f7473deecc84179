"""Where do validate's GPU outliers come from? Re-run validate's measurement sequence with diagnostics.

On the H200 a few sampled cases (e.g. T=1 B=4 P=256, T=1 B=16 P=64 fixed:1) measured 30-50% slower than
predicted while their neighbours were within 10%, in two runs. The tiny pair's loop is host-bound (a step is
0.5 ms of Python and launches), so anything that stops the host for milliseconds shows. This runs the whole
FULL grid's cases in validate's order for several rounds and records, per run: the timed rounds, every
speculative step's wall time and the wall-clock moment (to line up with a log of the GPU's clocks). A
round's mode: cold (nothing between cases) or burst (a 0.3 s matmul burst before each case, in case an idle
GPU's clocks sag); pin-* also pins the process to one core.

    nvidia-smi --query-gpu=timestamp,clocks.sm,utilization.gpu,power.draw,pstate --format=csv -lms 200 > clocks.csv &
    python3 benchmarks/gpu_case_noise.py --device cuda --cache-dir .carry/engine \\
        --sps-from validation/reports/cuda/report.json --rounds cold,burst,cold -o noise.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from dspark_sim.config.io import write_atomic
from dspark_sim.validate.run import (
    ACCEPTANCE_PROMPTS,
    FULL,
    QUICK,
    Engine,
    _gpu_warm,
    _prompt_sets,
    case_prompts,
    load_pair,
    run_case_once,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--dtype", default=None, help="fp32 | bf16 (default: bf16 on cuda, fp32 on cpu, as validate)")
    ap.add_argument("--sps-from", required=True, help="a validate report.json whose sps_table DSpark uses")
    ap.add_argument("--rounds", default="cold,burst,cold", help="per round: cold or burst "
                    "(pin-cold etc.: also pinned to one core)")
    ap.add_argument("--min-batch", type=int, default=1, help="only cases with at least this batch")
    ap.add_argument("--quick", action="store_true", help="the quick grid (a smoke test of this script)")
    ap.add_argument("--eager-steps", action="store_true", help="steps' phases eager (only the passes graphed), "
                    "as validate ran them before session 9")
    ap.add_argument("-o", "--out", type=Path, required=True)
    a = ap.parse_args()

    from dspark_sim.engine.cudagraphs import GraphedForward, StepGraphs
    from dspark_sim.engine.data import load_corpus

    sps = {int(k): float(v) for k, v in json.loads(Path(a.sps_from).read_text())["sps_table"].items()}
    target, draft, dev = load_pair("tiny", 0, a.cache_dir, a.device, a.dtype or ("bf16" if a.device == "cuda" else "fp32"))
    grid = QUICK if a.quick else FULL
    set_a, set_b = _prompt_sets(load_corpus(2_000_000).eval, max(grid.prompt_tokens), ACCEPTANCE_PROMPTS)
    eng = Engine(target, draft, dev, set_a, set_b)
    if dev.type == "cuda":
        eng.target_forward, eng.draft_forward = GraphedForward(target), GraphedForward(draft)
        eng.step_graphs = None if a.eager_steps else StepGraphs(target, draft)
    cases = grid.cases()
    prompts = case_prompts(eng, cases)  # the same prompts as validate's measure_cases
    keep_idx = [i for i, c in enumerate(cases) if c.batch_size >= a.min_batch]
    cases, prompts = [cases[i] for i in keep_idx], [prompts[i] for i in keep_idx]
    all_cpus = sorted(os.sched_getaffinity(0))
    _gpu_warm(dev)
    out: dict = {"device": str(dev), "rounds": a.rounds.split(","), "runs": []}
    seen: set[int] = set()
    for r, mode in enumerate(a.rounds.split(",")):
        os.sched_setaffinity(0, {all_cpus[-1]} if mode.startswith("pin") else set(all_cpus))
        t_round = time.perf_counter()
        for i, case in enumerate(cases):
            if mode.endswith("burst"):
                _gpu_warm(dev, 0.3)
            walls: list[list[float]] = []
            t_wall = time.time()
            run = run_case_once(eng, case, prompts[i], sps, 0, warm=i not in seen, steps_out=walls)
            seen.add(i)
            flat_walls = [w for ws in walls for w in ws]
            out["runs"].append({
                "round": r, "mode": mode, "label": case.label, "start_unix_s": t_wall,
                "end_unix_s": time.time(), "base_s": run.base_s, "spec_s": run.spec_s,
                "spec_tokens": run.spec_tokens, "base_tokens": run.base_tokens,
                "step_median_s": statistics.median(flat_walls), "step_max_s": max(flat_walls),
                "step_walls_s": [[round(w, 7) for w in ws] for ws in walls],
            })
        print(f"round {r} ({mode}): {time.perf_counter() - t_round:.1f} s", flush=True)
        write_atomic(a.out, json.dumps(out) + "\n")
    os.sched_setaffinity(0, set(all_cpus))
    # summary: each case's speculative tokens/s per mode (median over that mode's rounds)
    by: dict[tuple[str, str], list[float]] = {}
    for x in out["runs"]:
        by.setdefault((x["label"], x["mode"]), []).append(x["spec_tokens"] / sum(x["spec_s"]))
    modes = list(dict.fromkeys(out["rounds"]))
    print("case".ljust(34) + "".join(m.rjust(22) for m in modes))
    for c in cases:
        print(c.label.ljust(34) + "".join(
            ("/".join(f"{v:.0f}" for v in by.get((c.label, m), []))).rjust(22) for m in modes))


if __name__ == "__main__":
    main()
