"""Tensor-parallel engine speed: measured tokens/s at TP 1, 2, 4, ... beside the simulator's prediction.

For each TP degree the script starts that many processes (one GPU each over NCCL, with NVLink
multicast off: NCCL_NVLS_ENABLE=0; gloo on CPU), builds the target and the draft of the given model
shapes with seeded random weights, shards them (dspark_sim.engine.tp), and times the plain decoding
loop and speculative decoding (FixedGamma) at each batch size (CUDA graphs on a GPU, as `profile`
and `validate` run). The TP-1 run also profiles the passes and whole steps of this configuration and
the cost model is calibrated on them (`calibrate`); every TP > 1 run profiles its all-reduces (the
engine's message sizes, tokens x hidden x dtype), and the interconnect latency and bandwidth are
fitted to them (`fit.interconnect.fit_interconnect`). The prediction is the cost model with tensor_parallel
(`StepCoster(..., tp)`, as the simulator prices a deployment), with the measured tau, so the table
isolates timing: TP 1 rows show the calibration's fit, TP > 1 rows the TP model (sharded weights and
KV, two all-reduces per layer). Prints the table's JSON document (dspark_sim.config.tensor_parallel.TPTable)
on stdout and a text table on stderr. The measuring is dspark_sim.measure.tp_table, the predicting
dspark_sim.validate.tp.

    python benchmarks/tp_engine.py --device cuda --shape llama-3.1-8b --draft-shape llama-3.2-1b \
        --dtype bf16 --tp 1,2,4 --batch 1,8 --prompt-len 128 --new-tokens 128 --gamma 4
    python benchmarks/tp_engine.py --device cpu --shape test-target --draft-shape test-draft --tp 1,2
    # a shape too large for one GPU, predicted with the hardware calibrated on a smaller shape's TP-1 run:
    python benchmarks/tp_engine.py ... --shape llama-3.1-8b --tp 1,2,4 --hardware-out h200-tp.yaml
    python benchmarks/tp_engine.py ... --shape llama-3.1-70b --tp 2,4 --no-calibrate --hardware h200-tp.yaml

--no-calibrate predicts with a hardware profile's figures instead (--hardware, default h200-sxm on
CUDA, cpu-generic on CPU); --interconnect profile keeps that profile's interconnect figures.

--repredict REPORT.json re-predicts a report this script wrote (no GPU, no processes): the cost model
with --hardware (e.g. the TP-1 calibration the run wrote with --hardware-out), the interconnect refitted
to the report's own all-reduce samples (unless --interconnect profile), every row predicted again;
the same report comes out (-o), with `repredicted` holding the previous fit and errors.

    python benchmarks/tp_engine.py --repredict h200x4_tp_8b.json --hardware h200-tp.yaml -o repredicted.json
Random weights make tau about 1 (the draft guesses the target no better than chance), so the
speculative rows measure the cost of a speculative step more than a speed-up.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

os.environ.update({"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"})

import torch  # noqa: E402
import yaml  # noqa: E402

from dspark_sim.config.errors import InputError  # noqa: E402
from dspark_sim.config.io import write_atomic  # noqa: E402
from dspark_sim.config.schema import HardwareProfile  # noqa: E402
from dspark_sim.config.tensor_parallel import TPTable, load_tp_table  # noqa: E402
from dspark_sim.engine.model import WEIGHT_DTYPES  # noqa: E402
from dspark_sim.measure.tp_table import MeasureConfig  # noqa: E402
from dspark_sim.validate.tp import INTERCONNECT_MODES, measure_table, repredict_table  # noqa: E402


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu | cuda")
    p.add_argument("--shape", default=None, help="target shape (model preset; default llama-3.1-8b on CUDA, "
                                                 "test-target on CPU)")
    p.add_argument("--draft-shape", default=None, help="draft shape ('none': baseline only; default "
                                                       "llama-3.2-1b on CUDA, test-draft on CPU)")
    p.add_argument("--dtype", default=None, help="bf16 (CUDA default) | fp16 | fp32 (CPU default)")
    p.add_argument("--tp", default=None, help="TP degrees (default 1,2,4,8 up to the GPUs on CUDA; 1,2 on CPU)")
    p.add_argument("--batch", default="1", help="batch sizes, e.g. 1,8")
    p.add_argument("--prompt-len", type=int, default=None, help="default 128 on CUDA, 16 on CPU")
    p.add_argument("--new-tokens", type=int, default=None, help="default 128 on CUDA, 16 on CPU")
    p.add_argument("--gamma", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-graphs", action="store_true", help="eager forwards on CUDA")
    p.add_argument("--replicate-draft", action="store_true",
                   help="every rank holds the whole draft and drafts locally (no collectives in draft passes)")
    p.add_argument("--no-calibrate", action="store_true", help="predict with --hardware's figures")
    p.add_argument("--hardware", default=None, help="hardware profile name or YAML (with --no-calibrate)")
    p.add_argument("--interconnect", default="measured", choices=list(INTERCONNECT_MODES),
                   help="measured (fit the all-reduces timed between matmuls, else the bursts) | measured-burst "
                        "(fit the back-to-back bursts) | profile (the hardware profile's figures)")
    p.add_argument("--hardware-out", default=None, help="write the hardware the predictions used (calibrated, with "
                                                        "the fitted interconnect) as YAML")
    p.add_argument("--allreduce-tokens", default="1,2,4,8,16,32,64,128,256,512")
    p.add_argument("--threads", type=int, default=1, help="CPU: torch threads per rank")
    p.add_argument("--out", "-o", default=None, help="also write the JSON here")
    p.add_argument("--repredict", default=None, metavar="REPORT.json",
                   help="re-predict a report this script wrote, with --hardware (no measuring)")
    opts = p.parse_args(argv)
    gpu = opts.device == "cuda"
    opts.shape = opts.shape or ("llama-3.1-8b" if gpu else "test-target")
    opts.draft_shape = opts.draft_shape or ("llama-3.2-1b" if gpu else "test-draft")
    opts.dtype = opts.dtype or ("bf16" if gpu else "fp32")
    opts.prompt_len = opts.prompt_len or (128 if gpu else 16)
    opts.new_tokens = opts.new_tokens or (128 if gpu else 16)
    return opts


def degrees(opts: argparse.Namespace) -> tuple[list[int], list[str]]:
    asked = list(_ints(opts.tp)) if opts.tp else ([1, 2, 4, 8] if opts.device == "cuda" else [1, 2])
    notes = []
    if opts.device == "cuda":
        have = torch.cuda.device_count()
        skipped = [t for t in asked if t > have]
        if skipped:
            notes.append(f"TP {skipped} skipped: this machine has {have} GPU(s)")
        asked = [t for t in asked if t <= have]
    return asked, notes


def _with_hardware_out(opts: argparse.Namespace, hw: HardwareProfile, table: TPTable) -> TPTable:
    """Write the hardware the predictions used, for another shape's run (--no-calibrate --hardware)."""
    if not opts.hardware_out:
        return table
    write_atomic(opts.hardware_out, yaml.safe_dump(hw.model_dump(mode="json", exclude_none=True), sort_keys=False))
    return table.model_copy(update={"hardware_out": str(opts.hardware_out)})


def run(opts: argparse.Namespace) -> TPTable:
    if opts.dtype not in WEIGHT_DTYPES:
        raise InputError("tp_engine", "--dtype", f"unknown {opts.dtype!r} (allowed: {', '.join(WEIGHT_DTYPES)})")
    tps, notes = degrees(opts)
    if not tps:
        raise InputError("tp_engine", "--tp", "no TP degree fits this machine")
    draft_shape = None if opts.draft_shape == "none" else opts.draft_shape
    cfg = MeasureConfig(target_shape=opts.shape, draft_shape=draft_shape, dtype=opts.dtype,
                        prompt_len=opts.prompt_len, new_tokens=opts.new_tokens, batch_sizes=_ints(opts.batch),
                        gamma=opts.gamma if draft_shape else 0, repeats=opts.repeats, seed=opts.seed,
                        graphs=not opts.no_graphs, allreduce_tokens=_ints(opts.allreduce_tokens),
                        profile=not opts.no_calibrate and 1 in tps, replicate_draft=opts.replicate_draft)
    # on CPU one core per rank: a rank stands for one device (and spinning thread pools do not fight
    # over the shared cores)
    table, hw = measure_table(cfg, tps, device=opts.device, threads=opts.threads, notes=notes,
                              hardware=opts.hardware, interconnect=opts.interconnect,
                              log=lambda line: print(line, file=sys.stderr, flush=True))
    return _with_hardware_out(opts, hw, table)


def repredict(opts: argparse.Namespace) -> TPTable:
    """A report this script wrote, predicted again with --hardware and the interconnect refitted to the
    report's own all-reduces (no measuring: the measured fields are kept as they are)."""
    table, hw = repredict_table(load_tp_table(opts.repredict), str(opts.repredict), hardware=opts.hardware,
                                interconnect=opts.interconnect)
    return _with_hardware_out(opts, hw, table)


def table(report: TPTable) -> str:
    head = (f"{'tp':>3} {'batch':>5} {'base tok/s':>11} {'pred':>9} {'err%':>7} {'spec tok/s':>11} {'pred':>9} "
            f"{'err%':>7} {'tau':>5} {'x base meas/pred':>17} {'agree':>6}")
    lines = [head]
    for r in report.rows:
        scale = (f"{r.baseline_scaling_measured:.2f}/{r.baseline_scaling_predicted:.2f}"
                 if r.baseline_scaling_measured is not None and r.baseline_scaling_predicted is not None else "-")
        spec = (f"{r.spec_decode_tok_s:11.1f} {r.predicted_spec_decode_tok_s:9.1f} {r.spec_error_pct:7.1f} "
                f"{r.tau:5.2f}" if r.spec_decode_tok_s is not None and r.predicted_spec_decode_tok_s is not None
                and r.spec_error_pct is not None and r.tau is not None
                else f"{'-':>11} {'-':>9} {'-':>7} {'-':>5}")
        lines.append(f"{r.tp:>3} {r.batch:>5} {r.baseline_decode_tok_s:11.1f} "
                     f"{r.predicted_baseline_decode_tok_s:9.1f} {r.baseline_error_pct:7.1f} {spec} {scale:>17} "
                     f"{str(r.ranks_agree):>6}")
    fit = report.interconnect_fit
    if fit:
        lines.append(f"all-reduce fit ({fit.context or 'burst'}): launch {fit.launch_us:.2f} us + latency "
                     f"{fit.latency_us:.2f} us/hop, bandwidth {fit.bandwidth_gbps:.3f} GB/s, median |error| "
                     f"{fit.median_abs_error_pct:.1f}%")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Print (and with -o write) the table's JSON document and the text table; return the document."""
    opts = parse(argv)
    try:
        report = repredict(opts) if opts.repredict else run(opts)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    text = report.to_json()
    if opts.out:
        write_atomic(opts.out, text + "\n")
    print(text)
    print(table(report), file=sys.stderr)
    return report.document()


if __name__ == "__main__":
    main()
