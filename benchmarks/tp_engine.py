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
KV, two all-reduces per layer). Prints one JSON document on stdout and a table on stderr.

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
import json
import os
import sys
from typing import Any

os.environ.update({"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"})

import numpy as np  # noqa: E402
import torch  # noqa: E402

from dspark_sim.config.errors import InputError  # noqa: E402
from dspark_sim.engine.model import WEIGHT_DTYPES  # noqa: E402
from dspark_sim.engine.tp import (  # noqa: E402
    MeasureConfig,
    check_tp,
    measure_args,
    measure_engine,
    run_workers,
)


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
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
    p.add_argument("--interconnect", default="measured", choices=["measured", "measured-burst", "profile"],
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


def predict(row: dict[str, Any], tp: int, hw, target_spec, draft_spec, cfg: MeasureConfig) -> dict[str, float]:
    """The cost model's tokens/s for one measured row (the engine's conventions, the measured tau)."""
    from dspark_sim.config.schema import DrafterSpec
    from dspark_sim.core.costmodel import StepCoster

    drafter = (DrafterSpec(kind="draft_model", model=draft_spec, first_pass_tokens=2.0,
                           replicated=cfg.replicate_draft) if draft_spec is not None else DrafterSpec(kind="none"))
    coster = StepCoster(target_spec, drafter, hw, tp, pad_verify=True, static_kv_tokens=row["cache_len"])
    b, g = row["batch"], cfg.gamma
    ctx = cfg.prompt_len + cfg.new_tokens / 2
    base_pass = coster.baseline(b, ctx)
    base_step = float(np.asarray(base_pass.time_s)) + coster.baseline_step_overhead_s()
    out = {"baseline_decode_tok_s": b / base_step, "baseline_step_s": base_step,
           "baseline_comm_share": float(np.asarray(base_pass.comm_s)) / base_step}
    if draft_spec is not None and "tau" in row:
        draft = coster.draft(b, g, ctx)
        verify = coster.verify(b, g, ctx)
        step = float(np.asarray(draft.time_s) + np.asarray(verify.time_s)) + coster.step_overhead_s()
        out.update(spec_decode_tok_s=b * row["tau"] / step, spec_step_s=step,
                   spec_comm_share=float(np.asarray(draft.comm_s) + np.asarray(verify.comm_s)) / step)
    return out


def _err(pred: float, meas: float) -> float:
    return 100.0 * (pred / meas - 1.0) if meas > 0 else float("nan")


# what `predicted_rows` adds to a measured row (dropped from a report's rows before predicting them again)
_DERIVED_PREFIXES = ("predicted_",)
_DERIVED_SUFFIXES = ("_error_pct", "_scaling_measured", "_scaling_predicted")


def _measured(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if not (k.startswith(_DERIVED_PREFIXES) or k.endswith(_DERIVED_SUFFIXES))}


def model_specs(cfg: MeasureConfig, targs, dargs) -> tuple[Any, Any]:
    """The simulator's ModelSpecs of the engine's target and draft shapes (draft None: baseline only)."""
    from dspark_sim.measure.profile import model_spec

    wd = WEIGHT_DTYPES[cfg.dtype]
    target_spec = model_spec(targs, cfg.target_shape, wd)
    draft_spec = model_spec(dargs, cfg.draft_shape, wd) if dargs is not None else None
    return target_spec, draft_spec


def predicted_rows(measured: list[dict[str, Any]], hw, target_spec, draft_spec,
                   cfg: MeasureConfig) -> list[dict[str, Any]]:
    """Each measured row ({"tp", the engine's row fields, "weight_gb_per_rank"}) with the cost model's
    prediction and error, and both sides' scaling against TP 1 at the same batch where TP 1 was run."""
    rows = []
    for row in measured:
        pred = predict(row, row["tp"], hw, target_spec, draft_spec, cfg)
        out = dict(row)
        out["predicted_baseline_decode_tok_s"] = pred["baseline_decode_tok_s"]
        out["baseline_error_pct"] = _err(pred["baseline_decode_tok_s"], row["baseline_decode_tok_s"])
        out["predicted_baseline_comm_share"] = pred["baseline_comm_share"]
        if "spec_decode_tok_s" in pred:
            out["predicted_spec_decode_tok_s"] = pred["spec_decode_tok_s"]
            out["spec_error_pct"] = _err(pred["spec_decode_tok_s"], row["spec_decode_tok_s"])
            out["predicted_spec_comm_share"] = pred["spec_comm_share"]
        rows.append(out)
    # scaling against TP 1 at the same batch: the TP model's claim, free of the absolute calibration
    ref = {r["batch"]: r for r in rows if r["tp"] == 1}
    for r in rows:
        base = ref.get(r["batch"])
        if base is None:
            continue
        for kind in ("baseline", "spec"):
            m, p = f"{kind}_decode_tok_s", f"predicted_{kind}_decode_tok_s"
            if m in r and p in r:
                r[f"{kind}_scaling_measured"] = r[m] / base[m]
                r[f"{kind}_scaling_predicted"] = r[p] / base[p]
    return rows


def _interconnect(report: dict[str, Any], samples: list, hw, mode: str):
    """Fit the interconnect to `samples` over `hw` (into `report`); `hw` with the fit unless mode is
    "profile". mode "measured" fits the all-reduces timed between matmuls as the model runs them when
    the run has them (else the bursts); "measured-burst" the back-to-back bursts; the other fit is
    reported beside it (`interconnect_fit_other`)."""
    from dspark_sim.fit.interconnect import apply_interconnect_fit, fit_interconnect

    if not samples:
        return hw
    report["allreduce"] = samples
    by_context: dict[str, list] = {}
    for s in samples:
        by_context.setdefault(s.get("context", "burst"), []).append(s)
    fits = {ctx: fit_interconnect(group, hw) for ctx, group in by_context.items()}
    use = "burst" if mode == "measured-burst" or "between-matmuls" not in fits else "between-matmuls"
    use = use if use in fits else next(iter(fits))

    def doc(fit) -> dict[str, Any]:
        return {**{k: v for k, v in fit.to_dict().items() if k != "points"}, "points": fit.points}

    report["interconnect_fit"] = {"context": use, **doc(fits[use])}
    others = [c for c in fits if c != use]
    if others:
        report["interconnect_fit_other"] = {"context": others[0], **doc(fits[others[0]])}
    if mode in ("measured", "measured-burst"):
        hw = apply_interconnect_fit(hw, fits[use])
    return hw


def _interconnect_used(hw) -> dict[str, float]:
    return {"launch_us": hw.collective_launch_us, "latency_us": hw.interconnect_latency_us,
            "bandwidth_gbps": hw.interconnect_bandwidth_gbps, "efficiency": hw.efficiency.interconnect}


def _write_hardware(opts: argparse.Namespace, hw, report: dict[str, Any]) -> None:
    if opts.hardware_out:  # what this run predicted with, for another shape's run (--no-calibrate --hardware)
        import yaml

        from dspark_sim.config.io import write_atomic

        write_atomic(opts.hardware_out, yaml.safe_dump(hw.model_dump(mode="json", exclude_none=True), sort_keys=False))
        report["hardware_out"] = str(opts.hardware_out)


def _calibration_summary(cal) -> dict[str, Any]:
    """The report's record of a TP-1 calibration: its fit error and the fitted parameters."""
    return {"median_abs_error_pct": cal.median_abs_error_pct, "max_abs_error_pct": cal.max_abs_error_pct,
            "parameters": {p.name: p.value for p in cal.parameters}}


def run(opts: argparse.Namespace) -> dict[str, Any]:
    from dspark_sim.config.loader import load_hardware_profile
    from dspark_sim.config.measurements import EngineProfile
    from dspark_sim.fit.calibrate import calibrate

    if opts.dtype not in WEIGHT_DTYPES:
        raise InputError("tp_engine", "--dtype", f"unknown {opts.dtype!r} (allowed: {', '.join(WEIGHT_DTYPES)})")
    tps, notes = degrees(opts)
    if not tps:
        raise InputError("tp_engine", "--tp", "no TP degree fits this machine")
    calibrate_here = not opts.no_calibrate and 1 in tps
    draft_shape = None if opts.draft_shape == "none" else opts.draft_shape
    cfg = MeasureConfig(target_shape=opts.shape, draft_shape=draft_shape, dtype=opts.dtype,
                        prompt_len=opts.prompt_len, new_tokens=opts.new_tokens, batch_sizes=_ints(opts.batch),
                        gamma=opts.gamma if draft_shape else 0, repeats=opts.repeats, seed=opts.seed,
                        graphs=not opts.no_graphs, allreduce_tokens=_ints(opts.allreduce_tokens),
                        profile=calibrate_here, replicate_draft=opts.replicate_draft)
    try:
        targs, dargs, _ = measure_args(cfg)
    except KeyError as exc:
        raise InputError("tp_engine", "--shape/--draft-shape", str(exc.args[0])) from None
    for tp in tps:  # refuse a degree a shape cannot split over before starting any process
        check_tp(targs, tp, opts.shape)
        if dargs is not None and not opts.replicate_draft:
            check_tp(dargs, tp, draft_shape)
    runs: dict[int, dict[str, Any]] = {}
    for tp in tps:
        print(f"TP {tp}: measuring ...", file=sys.stderr, flush=True)
        # on CPU one core per rank: a rank stands for one device (and spinning thread pools do not
        # fight over the shared cores)
        runs[tp] = run_workers(measure_engine, tp, cfg, device=opts.device, threads=opts.threads)

    report: dict[str, Any] = {
        "device": runs[tps[0]]["device"], "torch": torch.__version__, "target_shape": opts.shape,
        "draft_shape": draft_shape, "dtype": opts.dtype, "prompt_len": opts.prompt_len,
        "new_tokens": opts.new_tokens, "gamma": cfg.gamma, "tp": tps, "notes": notes,
        "draft_replicated": bool(draft_shape) and opts.replicate_draft,
    }
    # the cost model's hardware: calibrated on the TP-1 run, or a given profile
    if calibrate_here:
        profile_doc = runs[1].pop("profile")
        profile = EngineProfile.model_validate(profile_doc)
        hw, cal = calibrate(profile, name="calibrated-tp1", temperature=cfg.temperature)
        # kept whole, so that a changed cost model can be re-calibrated on it later without a GPU
        # (`dspark-sim calibrate` reads it once saved as its own file)
        report["profile"] = profile_doc
        report["hardware"] = "calibrated on the TP-1 run"
        report["calibration"] = _calibration_summary(cal)
    else:
        name = opts.hardware or ("h200-sxm" if opts.device == "cuda" else "cpu-generic")
        hw = load_hardware_profile(name)
        report["hardware"] = name
    samples = [s for tp in tps if tp > 1 for s in runs[tp].get("allreduce", [])]
    hw = _interconnect(report, samples, hw, opts.interconnect)
    _write_hardware(opts, hw, report)
    report["interconnect_used"] = _interconnect_used(hw)
    target_spec, draft_spec = model_specs(cfg, targs, dargs)
    measured = [{"tp": tp, **row, "weight_gb_per_rank": runs[tp]["weight_bytes_per_rank"] / 1e9}
                for tp in tps for row in runs[tp]["rows"]]
    report["rows"] = predicted_rows(measured, hw, target_spec, draft_spec, cfg)
    return report


def _errors(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [{k: r[k] for k in ("tp", "batch", "baseline_error_pct", "spec_error_pct") if k in r}
            for r in report.get("rows", [])]


def repredict(opts: argparse.Namespace) -> dict[str, Any]:
    """A report this script wrote, predicted again with --hardware and the interconnect refitted to the
    report's own all-reduces (no measuring: the measured fields are kept as they are)."""
    from dspark_sim.config.loader import load_hardware_profile

    try:
        with open(opts.repredict) as f:
            old = json.load(f)
    except (OSError, ValueError) as exc:
        raise InputError("tp_engine", "--repredict", f"cannot read {opts.repredict}: {exc}") from None
    missing = [k for k in ("rows", "target_shape", "draft_shape", "dtype", "gamma", "prompt_len", "new_tokens")
               if k not in old]
    if missing:
        raise InputError("tp_engine", "--repredict", f"{opts.repredict} is not a tp_engine report "
                                                      f"(missing {', '.join(missing)})")
    if not opts.hardware and "profile" not in old:
        raise InputError("tp_engine", "--hardware", "--repredict needs the hardware to predict with (a profile "
                                                    "name or YAML, e.g. the run's --hardware-out) when the report "
                                                    "keeps no TP-1 profile")
    if old["dtype"] not in WEIGHT_DTYPES:
        raise InputError("tp_engine", "dtype", f"unknown {old['dtype']!r} in {opts.repredict}")
    # the run's MeasureConfig, as far as the prediction reads it (shapes and their cache, gamma, lengths)
    cfg = MeasureConfig(target_shape=old["target_shape"], draft_shape=old["draft_shape"], dtype=old["dtype"],
                        prompt_len=int(old["prompt_len"]), new_tokens=int(old["new_tokens"]),
                        batch_sizes=tuple(sorted({int(r["batch"]) for r in old["rows"]})), gamma=int(old["gamma"]),
                        replicate_draft=bool(old.get("draft_replicated", False)))
    try:
        targs, dargs, _ = measure_args(cfg)
    except KeyError as exc:
        raise InputError("tp_engine", "target_shape/draft_shape", str(exc.args[0])) from None
    report = {k: v for k, v in old.items() if k not in ("interconnect_fit", "interconnect_used", "rows")}
    if opts.hardware:
        hw = load_hardware_profile(opts.hardware)
        hardware = str(opts.hardware)
    else:  # the report's own TP-1 profile, calibrated again by this code
        from dspark_sim.config.measurements import EngineProfile
        from dspark_sim.fit.calibrate import calibrate

        hw, cal = calibrate(EngineProfile.model_validate(old["profile"]), name="calibrated-tp1",
                            temperature=cfg.temperature)
        hardware = "calibrated again on the report's TP-1 profile"
        report["calibration"] = _calibration_summary(cal)
    report["repredicted"] = {
        "from": str(opts.repredict), "hardware": hardware, "interconnect": opts.interconnect,
        "previous_hardware": old.get("hardware"),
        "previous_interconnect_fit": {k: v for k, v in old.get("interconnect_fit", {}).items() if k != "points"},
        "previous_interconnect_used": old.get("interconnect_used"),
        "previous_errors": _errors(old),
    }
    report["hardware"] = hardware
    hw = _interconnect(report, old.get("allreduce") or [], hw, opts.interconnect)
    _write_hardware(opts, hw, report)
    report["interconnect_used"] = _interconnect_used(hw)
    target_spec, draft_spec = model_specs(cfg, targs, dargs)
    report["rows"] = predicted_rows([_measured(r) for r in old["rows"]], hw, target_spec, draft_spec, cfg)
    return report


def table(report: dict[str, Any]) -> str:
    head = (f"{'tp':>3} {'batch':>5} {'base tok/s':>11} {'pred':>9} {'err%':>7} {'spec tok/s':>11} {'pred':>9} "
            f"{'err%':>7} {'tau':>5} {'x base meas/pred':>17} {'agree':>6}")
    lines = [head]
    for r in report["rows"]:
        scale = (f"{r['baseline_scaling_measured']:.2f}/{r['baseline_scaling_predicted']:.2f}"
                 if "baseline_scaling_measured" in r else "-")
        spec = (f"{r['spec_decode_tok_s']:11.1f} {r['predicted_spec_decode_tok_s']:9.1f} {r['spec_error_pct']:7.1f} "
                f"{r['tau']:5.2f}" if "spec_decode_tok_s" in r else f"{'-':>11} {'-':>9} {'-':>7} {'-':>5}")
        lines.append(f"{r['tp']:>3} {r['batch']:>5} {r['baseline_decode_tok_s']:11.1f} "
                     f"{r['predicted_baseline_decode_tok_s']:9.1f} {r['baseline_error_pct']:7.1f} {spec} {scale:>17} "
                     f"{str(r['ranks_agree']):>6}")
    fit = report.get("interconnect_fit")
    if fit:
        lines.append(f"all-reduce fit ({fit.get('context', 'burst')}): launch {fit.get('launch_us', 0.0):.2f} us + latency {fit['latency_us']:.2f} "
                     f"us/hop, bandwidth {fit['bandwidth_gbps']:.3f} GB/s, median |error| "
                     f"{fit['median_abs_error_pct']:.1f}%")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    opts = parse(argv)
    try:
        report = repredict(opts) if opts.repredict else run(opts)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    text = json.dumps(report, indent=2)
    if opts.out:
        with open(opts.out, "w") as f:
            f.write(text + "\n")
    print(text)
    print(table(report), file=sys.stderr)
    return report


if __name__ == "__main__":
    main()
