"""Where the batch-1 decode step's time goes on a GPU, and the ceilings it is measured against.

For each model shape and attention kernel: tokens/s of `generate_baseline` on the compiled step (as
benchmarks/engine_gpu.py runs it), then a torch.profiler trace of decode steps grouped per kernel
(device microseconds and launches per step), the step's span and the idle time between its kernels.
Beside them, the bandwidth ceilings of this GPU measured in the same run: a device-to-device copy, a
read-only reduction, and one-row matmuls of the model's largest weight (cuBLAS eager, inductor-tuned).
Prints one JSON document; --out also writes it (atomically, after every measurement).

    python benchmarks/engine_gpu_profile.py --shapes llama-3.1-8b,llama-3.2-1b --kernels sdpa,grouped
    python benchmarks/engine_gpu_profile.py --variants default,realize,cublas
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F

from dspark_sim.engine.generate import DECODE_INDUCTOR_OPTIONS, compile_forward, generate_baseline
from dspark_sim.engine.model import ModelArgs, build_model

#: inductor option sets compared by --variants (each on top of DECODE_INDUCTOR_OPTIONS)
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    # each one-row matmul's input vector (RMSNorm output, silu(gate) * up) computed once into a buffer,
    # not recomputed inside every program of the matmul's reduction kernel
    "realize": {"realize_acc_reads_threshold": 1},
    "realize_opcount": {"realize_opcount_threshold": 0},
    "cublas": {"coordinate_descent_tuning": False},
    # default options, the one-row matmuls through dspark_sim.engine.kernels.gemv (tiles tuned first)
    "gemv": {},
}


def _timed(fn: Callable[[], Any], repeats: int) -> float:
    """Best seconds of one fn() call over `repeats`, timed with CUDA events."""
    fn()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        best = min(best, start.elapsed_time(end) / 1e3)
    return best


def _copy_and_read(device: str, n: int = 1 << 30) -> dict[str, float]:
    """GB/s of copying n bf16 values (bytes read + written) and of summing them (bytes read)."""
    from dspark_sim.engine.kernels import copy_bandwidth_gbps

    copy = copy_bandwidth_gbps(device, n)
    a = torch.empty(n, dtype=torch.bfloat16, device=device).normal_()
    return {"copy_gbps": copy, "read_sum_gbps": n * 2 / _timed(lambda: a.sum(dtype=torch.float32), 10) / 1e9}


def bandwidth_ceilings(args: ModelArgs, device: str) -> dict[str, float]:
    """GB/s of a 2 GiB copy (read + write counted), a 2 GiB bf16 sum (read), and x @ W.T for one row x
    and the model's gate/up weight [2 * ffn_hidden, dim] (the largest matmul of a decode step)."""
    out = _copy_and_read(device)
    w = torch.randn(2 * args.ffn_hidden, args.dim, dtype=torch.bfloat16, device=device)
    x = torch.randn(1, args.dim, dtype=torch.bfloat16, device=device)
    out["gemv_cublas_gbps"] = w.numel() * 2 / _timed(lambda: F.linear(x, w), 50) / 1e9
    from torch._inductor import config as inductor_config

    inductor_config.coordinate_descent_tuning = True
    tuned = torch.compile(lambda x_, w_: F.linear(x_, w_), dynamic=False)
    out["gemv_inductor_gbps"] = w.numel() * 2 / _timed(lambda: tuned(x, w), 50) / 1e9
    out["gemv_weight_mb"] = w.numel() * 2 / 1e6
    torch.cuda.empty_cache()
    return out


def kernel_breakdown(fwd: Callable[..., torch.Tensor], tok: torch.Tensor, pos: torch.Tensor, steps: int,
                     top: int) -> dict[str, Any]:
    """Profile `steps` decode steps (forward + argmax, as generate_baseline does them) and group the
    device kernels by name: microseconds and launches per step; the span per step and its idle part."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    def step(i: int) -> None:
        logits = fwd(tok, pos + i)[:, 0]
        tok.copy_(logits.argmax(-1, keepdim=True))

    for i in range(3):
        step(i)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for i in range(steps):
            step(i)
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == DeviceType.CUDA]
    if not kernels:
        return {"error": "the profiler recorded no device kernels"}
    per_name: dict[str, list[float]] = defaultdict(list)
    for e in kernels:
        per_name[e.name].append(e.time_range.end - e.time_range.start)
    busy = sum(sum(v) for v in per_name.values())
    span = max(e.time_range.end for e in kernels) - min(e.time_range.start for e in kernels)
    rows = sorted(per_name.items(), key=lambda kv: -sum(kv[1]))
    return {
        "steps": steps,
        "kernels_per_step": len(kernels) / steps,
        "span_us_per_step": span / steps,
        "busy_us_per_step": busy / steps,
        "idle_us_per_step": (span - busy) / steps,
        "top_kernels": [{"name": name[:160], "us_per_step": sum(t) / steps, "launches_per_step": len(t) / steps,
                         "mean_us": sum(t) / len(t)} for name, t in rows[:top]],
    }


def prefill_times(model: torch.nn.Module, fwd: Callable[..., torch.Tensor], prompt_len: int,
                  device: str) -> dict[str, float]:
    """Seconds of one batch-1 prompt pass: eager (as generate_baseline runs it) and compiled."""
    tokens = torch.randint(0, model.args.vocab_size, (1, prompt_len), device=device)
    zero, last = torch.zeros(1, dtype=torch.long, device=device), torch.tensor([prompt_len - 1], device=device)
    with torch.no_grad():
        eager = _timed(lambda: model(tokens, zero, logit_index=last), 5)
        compiled = _timed(lambda: fwd(tokens, zero, logit_index=last), 5)
    return {"prefill_eager_s": eager, "prefill_compiled_s": compiled}


def profile_shape(shape: str, kernel: str, variant: str, device: str, prompt_len: int, new_tokens: int, steps: int,
                  top: int) -> dict[str, Any]:
    args = replace(ModelArgs.from_preset(shape), max_seq_len=prompt_len + new_tokens + 64)
    model = build_model(args, device=device, dtype=torch.bfloat16, seed=0).eval().fuse_projections()
    model.use_attention(kernel)
    if variant == "gemv":
        from dspark_sim.engine import kernels

        kernels.use_triton_decode(model)
        model.use_attention(kernel)  # the --kernels choice stands
    fwd = compile_forward(model, {**DECODE_INDUCTOR_OPTIONS, **VARIANTS[variant]})
    prompt = torch.randint(0, args.vocab_size, (prompt_len,), generator=torch.Generator().manual_seed(0)).tolist()
    t0 = time.perf_counter()
    generate_baseline(model, [prompt], new_tokens, forward=fwd)
    generate_baseline(model, [prompt], new_tokens, forward=fwd)
    warmup_s = time.perf_counter() - t0
    runs = [generate_baseline(model, [prompt], new_tokens, forward=fwd) for _ in range(3)]
    best = min(runs, key=lambda r: r.total_time_s)
    with torch.no_grad():
        tok = torch.tensor([[prompt[-1]]], device=device)
        pos = torch.tensor([[prompt_len]], device=device)
        breakdown = kernel_breakdown(fwd, tok, pos, steps, top)
    prefill = prefill_times(model, fwd, prompt_len, device)
    out = {"shape": shape, "attention": kernel, "variant": variant, "inductor_options": VARIANTS[variant], **prefill,
           "tok_s": best.tokens_per_s, "decode_tok_s": best.decode_tokens_per_s,
           "prefill_s": best.prefill_time_s, "decode_us_per_step": 1e6 / best.decode_tokens_per_s,
           "warmup_s": warmup_s, "first_tokens": best.tokens[0][:8], "profile": breakdown}
    del model, fwd
    gc.collect()
    torch.cuda.empty_cache()
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--shapes", default="llama-3.1-8b,llama-3.2-1b")
    ap.add_argument("--kernels", default="sdpa", help="attention kernels to compare (model.ATTENTION_KERNELS)")
    ap.add_argument("--variants", default="default,realize", help=f"inductor option sets: {', '.join(VARIANTS)}")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--steps", type=int, default=16, help="decode steps in the profiled window")
    ap.add_argument("--top", type=int, default=25, help="kernels listed per profile")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    report: dict[str, Any] = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
                              "batch": 1, "dtype": "bf16", "prompt_len": a.prompt_len, "new_tokens": a.new_tokens,
                              "ceilings": {}, "runs": []}

    def save() -> None:
        if a.out:
            tmp = f"{a.out}.tmp"
            with open(tmp, "w") as fh:
                fh.write(json.dumps(report, indent=2) + "\n")
            os.replace(tmp, a.out)

    shapes = a.shapes.split(",")
    for shape in shapes:
        report["ceilings"][shape] = bandwidth_ceilings(ModelArgs.from_preset(shape), a.device)
        save()
    for shape in shapes:
        for kernel in a.kernels.split(","):
            for variant in a.variants.split(","):
                report["runs"].append(profile_shape(shape, kernel, variant, a.device, a.prompt_len, a.new_tokens,
                                                    a.steps, a.top))
                save()
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
