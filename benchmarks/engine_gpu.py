"""Decode speed of the engine vs HF transformers (static cache) on Llama-shaped random bf16 weights.

Batch 1, greedy, 128-token prompt, 256 new tokens (the setup of the HF transformers reference runs in docs/validation.md). Our side runs the
decode step as a captured CUDA graph (torch.compile mode="reduce-overhead", inductor's tuned one-row
matmuls) with fused q/k/v and gate/up projections, and, side by side, unfused, untuned (cuBLAS) and as
manual CUDA graphs of the eager kernels. Targets on one H200:
>= 215 tok/s for the Llama-3.1-8B shape and >= 900 tok/s for Llama-3.2-1B (weight streaming limits
at 4.8 TB/s are about 299 and 1602 tok/s). Prints one JSON document.

    python benchmarks/engine_gpu.py                       # on a CUDA machine
    python benchmarks/engine_gpu.py --device cpu --shapes test-target --prompt-len 16 --new-tokens 16
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch

from dspark_sim.engine.generate import DECODE_INDUCTOR_OPTIONS, compile_forward, generate_baseline
from dspark_sim.engine.model import WEIGHT_DTYPES, ModelArgs, build_model

TARGET_TOK_S = {"llama-3.1-8b": 215.0, "llama-3.2-1b": 900.0}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _weight_bytes(model: torch.nn.Module) -> int:
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel() * p.element_size()
    return total


def bench_ours(args: ModelArgs, device: str, dtype: torch.dtype, prompt_len: int, new_tokens: int,
               use_graphs: bool, repeats: int, manual_graphs: bool = False, fused: bool = True,
               tune_gemv: bool = True, compiled_prefill: bool = True, triton_kernels: bool = False) -> dict[str, Any]:
    """compile: torch.compile(mode="reduce-overhead"); manual_graphs: eager kernels captured per shape
    (dspark_sim.engine.cudagraphs.GraphedForward, what `profile` and `validate` use); fused: one q/k/v
    and one gate/up matmul per layer (`Transformer.fuse_projections`); tune_gemv: inductor's tuned
    one-row matmuls instead of cuBLAS (`compile_forward`); compiled_prefill: the prompt pass runs through
    the same compiled/graphed forward (one more graph) rather than eager; triton_kernels: the one-row
    matmuls through dspark_sim.engine.kernels.gemv (tiles tuned per weight shape first, timings kept)
    and one-token attention through its decode kernel."""
    model = build_model(args, device=device, dtype=dtype, seed=0).eval()
    if fused:
        model.fuse_projections()
    tuning = None
    if triton_kernels:
        from dspark_sim.engine import kernels

        t_tune = time.perf_counter()
        tuning = kernels.use_triton_decode(model)
        tuning["seconds"] = time.perf_counter() - t_tune
    prompt = torch.randint(0, args.vocab_size, (prompt_len,), generator=torch.Generator().manual_seed(0)).tolist()
    if manual_graphs:
        from dspark_sim.engine.cudagraphs import GraphedForward

        model.setup_caches(1, prompt_len + new_tokens + 1)
        fwd = GraphedForward(model)
    else:
        options = {**DECODE_INDUCTOR_OPTIONS, "coordinate_descent_tuning": tune_gemv}
        fwd = compile_forward(model, options) if use_graphs else None
    prefill = fwd if compiled_prefill and fwd is not None else None
    t0 = time.perf_counter()
    generate_baseline(model, [prompt], new_tokens, forward=fwd, prefill_forward=prefill)  # compile + capture
    generate_baseline(model, [prompt], new_tokens, forward=fwd, prefill_forward=prefill)
    warmup_s = time.perf_counter() - t0
    best = None
    for _ in range(repeats):
        _sync(device)
        res = generate_baseline(model, [prompt], new_tokens, forward=fwd, prefill_forward=prefill)
        if best is None or res.total_time_s < best.total_time_s:
            best = res
    assert best is not None
    wbytes = _weight_bytes(model)
    out = {
        "tok_s": best.tokens_per_s,  # new tokens / (prefill + decode), batch 1
        "decode_tok_s": best.decode_tokens_per_s,
        "prefill_s": best.prefill_time_s,
        "weight_gb": wbytes / 1e9,
        "weight_stream_gbps": wbytes * best.decode_tokens_per_s / 1e9,
        "cuda_graphs": use_graphs or manual_graphs,
        "fused_projections": fused,
        "tuned_gemv": tune_gemv and use_graphs and not manual_graphs,
        "prefill": "compiled" if prefill is not None else "eager",
        "forward": "manual CUDA graphs" if manual_graphs else ("torch.compile reduce-overhead" if use_graphs else "eager"),
        "warmup_s": warmup_s,
        "first_tokens": best.tokens[0][:8],
        "triton_kernels": triton_kernels,
    }
    if tuning is not None:
        out["gemv_tuning"] = tuning
    del model, fwd
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return out


def hf_config(args: ModelArgs) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=args.vocab_size, hidden_size=args.dim, intermediate_size=args.ffn_hidden,
        num_hidden_layers=args.n_layers, num_attention_heads=args.n_heads, num_key_value_heads=args.n_kv_heads,
        head_dim=args.head_dim, rms_norm_eps=args.norm_eps, rope_theta=args.rope_theta,
        rope_scaling=args.rope_scaling, tie_word_embeddings=args.tie_embeddings,
        max_position_embeddings=args.max_seq_len,
    )


def bench_hf(args: ModelArgs, device: str, dtype: torch.dtype, prompt_len: int, new_tokens: int,
             repeats: int) -> dict[str, Any]:
    """transformers' LlamaForCausalLM, random weights from the same config, static KV cache, greedy."""
    import transformers
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(hf_config(args)).to(dtype).eval()
    ids = torch.randint(0, args.vocab_size, (1, prompt_len), generator=torch.Generator().manual_seed(0)).to(device)
    kw = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
              cache_implementation="static", pad_token_id=0)
    with torch.no_grad():
        model.generate(ids, **kw)  # warm-up
        best = float("inf")
        for _ in range(repeats):
            _sync(device)
            t0 = time.perf_counter()
            model.generate(ids, **kw)
            _sync(device)
            best = min(best, time.perf_counter() - t0)
    del model
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return {"tok_s": new_tokens / best, "transformers": transformers.__version__, "cache": "static"}


def run(shapes: list[str], device: str, *, dtype: str = "bf16", prompt_len: int = 128, new_tokens: int = 256,
        graphs: bool | None = None, hf: bool = True, repeats: int = 3, manual_graphs: bool = True,
        triton_kernels: bool | None = None, side_rows: bool = True,
        progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Benchmark each shape on `device`; returns the JSON-able report. The headline rows (ours, HF) come
    first and `progress` gets the report after every measurement, so a run cut short keeps them.

    triton_kernels (default: on a CUDA device with triton): the headline row uses the Triton GEMV and
    decode attention; the same configuration without them follows as `ours_inductor`."""
    use_graphs = device.startswith("cuda") if graphs is None else graphs
    if triton_kernels is None:
        from dspark_sim.engine import kernels

        triton_kernels = device.startswith("cuda") and kernels.available(device)
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0) if device.startswith("cuda") else "cpu",
        "torch": torch.__version__, "dtype": dtype, "batch": 1, "prompt_len": prompt_len,
        "new_tokens": new_tokens, "results": {},
    }
    if device.startswith("cuda"):
        from dspark_sim.engine.kernels import copy_bandwidth_gbps

        report["copy_gbps"] = copy_bandwidth_gbps(device)

    def done() -> None:
        if progress:
            progress(report)

    for shape in shapes:
        args = replace(ModelArgs.from_preset(shape), max_seq_len=prompt_len + new_tokens + 64)
        row: dict[str, Any] = {"params": args.num_params()}
        report["results"][shape] = row
        try:
            row["ours"] = bench_ours(args, device, WEIGHT_DTYPES[dtype], prompt_len, new_tokens, use_graphs, repeats,
                                     triton_kernels=triton_kernels)
        except Exception as exc:  # a kernel that fails to compile on this machine: keep the other rows
            if not triton_kernels:
                raise
            row["triton_error"] = f"{type(exc).__name__}: {str(exc)[:2000]}"
            row["ours"] = bench_ours(args, device, WEIGHT_DTYPES[dtype], prompt_len, new_tokens, use_graphs, repeats)
            triton_kernels = False
        if device.startswith("cuda"):  # 80% of weight streaming at the measured copy bandwidth
            row["streaming_limit_tok_s"] = report["copy_gbps"] * 1e9 / (row["ours"]["weight_gb"] * 1e9)
        if shape in TARGET_TOK_S and device.startswith("cuda"):
            row["target_tok_s"] = TARGET_TOK_S[shape]
            row["meets_target"] = row["ours"]["tok_s"] >= TARGET_TOK_S[shape]
        done()
        if hf:
            try:
                row["hf"] = bench_hf(args, device, WEIGHT_DTYPES[dtype], prompt_len, new_tokens, repeats)
                row["speedup_vs_hf"] = row["ours"]["tok_s"] / row["hf"]["tok_s"]
            except ImportError:
                row["hf"] = None
            done()
        if triton_kernels:  # the same configuration with inductor's / cuBLAS's matmuls and SDPA
            row["ours_inductor"] = bench_ours(args, device, WEIGHT_DTYPES[dtype], prompt_len, new_tokens, use_graphs,
                                              repeats)
            done()
        if not side_rows:
            continue
        # the same run without the fused projections: what fusing gains, measured side by side
        row["ours_unfused"] = bench_ours(args, device, WEIGHT_DTYPES[dtype], prompt_len, new_tokens, use_graphs, repeats,
                                         fused=False)
        done()
        if use_graphs:  # and with cuBLAS's one-row matmuls (inductor's tuning off): what the tuning gains
            row["ours_untuned"] = bench_ours(args, device, WEIGHT_DTYPES[dtype], prompt_len, new_tokens, use_graphs, repeats,
                                             tune_gemv=False)
            done()
        if device.startswith("cuda") and manual_graphs:
            row["ours_manual_graphs"] = bench_ours(args, device, WEIGHT_DTYPES[dtype], prompt_len, new_tokens, False,
                                                   repeats, manual_graphs=True)
            done()
    return report


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--shapes", default="llama-3.1-8b,llama-3.2-1b", help="comma-separated model presets")
    ap.add_argument("--dtype", default="bf16", choices=sorted(WEIGHT_DTYPES))
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-hf", action="store_true", help="skip the transformers side")
    ap.add_argument("--no-graphs", action="store_true", help="eager decode (no torch.compile / CUDA graphs)")
    ap.add_argument("--kernels", choices=("auto", "triton", "inductor"), default="auto",
                    help="headline row's one-row matmuls and decode attention (auto: triton on a CUDA device)")
    ap.add_argument("--headline-only", action="store_true",
                    help="only ours (and ours_inductor with --kernels triton) and HF: no unfused/untuned/manual rows")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    a = ap.parse_args(argv)
    if a.kernels == "triton" and not (a.device.startswith("cuda") and torch.cuda.is_available()):
        ap.error("--kernels triton: the Triton kernels need a CUDA device (--device cuda on a GPU machine)")

    def save(report: dict[str, Any]) -> None:
        if a.out:  # atomically: a run stopped mid-write keeps the previous complete document
            tmp = f"{a.out}.tmp"
            with open(tmp, "w") as fh:
                fh.write(json.dumps(report, indent=2) + "\n")
            os.replace(tmp, a.out)

    report = run(a.shapes.split(","), a.device, dtype=a.dtype, prompt_len=a.prompt_len, new_tokens=a.new_tokens,
                 graphs=False if a.no_graphs else None, hf=not a.no_hf, repeats=a.repeats,
                 triton_kernels={"auto": None, "triton": True, "inductor": False}[a.kernels],
                 side_rows=not a.headline_only, progress=save)
    save(report)
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
