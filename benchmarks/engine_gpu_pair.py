"""The bundled `gpu` model pair on a GPU: train it, then tau, tokens/s and speed-up against our own
baseline and against HF transformers (plain and assisted generation) on the very same weights.

    python benchmarks/engine_gpu_pair.py --out results.json          # on a CUDA machine
    python benchmarks/engine_gpu_pair.py --device cpu --preset test --new-tokens 16 --prompts 2   # smoke

Prompts are held-out corpus windows (files the pair never trained on). Results are written after
every measurement, so a run stopped early keeps what it measured.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from dspark_sim.config.schema import FixedGamma
from dspark_sim.engine.checkpoints import export_hf_llama
from dspark_sim.engine.data import load_corpus
from dspark_sim.engine.generate import generate_baseline, speculative_generate
from dspark_sim.engine.sampling import Sampling
from dspark_sim.engine.train import train_pair


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _prompts(n: int, length: int) -> list[list[int]]:
    data = load_corpus(4_000_000).eval.tolist()
    step = max((len(data) - length) // max(n, 1), 1)
    return [data[i * step: i * step + length] for i in range(n)]


def _ours(target, draft, prompts, new_tokens, gamma, sampling, device, forward_kind) -> dict[str, Any]:
    """Sequential batch-1 runs over the prompts: our baseline and speculative decoding."""
    if forward_kind == "graphs" and device.startswith("cuda"):
        from dspark_sim.engine.cudagraphs import GraphedForward

        cap = max(len(p) for p in prompts) + new_tokens + 2 * gamma + 2
        target.setup_caches(1, cap)
        draft.setup_caches(1, cap)
        tf, df = GraphedForward(target), GraphedForward(draft)
    else:
        tf = df = None
    base_t = spec_t = 0.0
    base_n = spec_n = 0
    taus = []
    identical = True
    for i, p in enumerate(prompts):
        gen = torch.Generator(device=device).manual_seed(i)
        b = generate_baseline(target, [p], new_tokens, sampling, forward=tf, generator=gen)
        gen = torch.Generator(device=device).manual_seed(i)
        s = speculative_generate(target, draft, [p], new_tokens, FixedGamma(gamma=gamma), sampling,
                                 generator=gen, target_forward=tf, draft_forward=df)
        if i == 0:  # warm-up (graph capture) excluded from timing
            continue
        base_t += b.total_time_s
        spec_t += s.total_time_s
        base_n += b.new_tokens
        spec_n += s.new_tokens
        taus.append(s.tau)
        identical &= (b.tokens == s.tokens) if sampling.greedy else True
    return {"baseline_tok_s": base_n / base_t, "spec_tok_s": spec_n / spec_t, "speedup": (spec_n / spec_t) / (base_n / base_t),
            "tau": statistics.mean(taus), "greedy_identical": identical}


def _hf(target, draft, prompts, new_tokens, gamma, device, dtype) -> dict[str, Any]:
    import transformers
    from transformers import AutoModelForCausalLM

    tmp = Path(tempfile.mkdtemp())
    export_hf_llama(target, tmp / "target", dtype)
    export_hf_llama(draft, tmp / "draft", dtype)
    t = AutoModelForCausalLM.from_pretrained(tmp / "target", dtype=dtype).to(device).eval()
    d = AutoModelForCausalLM.from_pretrained(tmp / "draft", dtype=dtype).to(device).eval()
    d.generation_config.num_assistant_tokens = gamma
    d.generation_config.num_assistant_tokens_schedule = "constant"
    d.generation_config.assistant_confidence_threshold = 0.0
    out: dict[str, Any] = {"transformers": transformers.__version__}
    kw = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    for name, extra in (("baseline_static", {"cache_implementation": "static"}), ("baseline_dynamic", {}),
                        ("assisted", {"assistant_model": d})):
        total_t, total_n = 0.0, 0
        try:
            with torch.no_grad():
                for i, p in enumerate(prompts):
                    ids = torch.tensor([p], device=device)
                    _sync(device)
                    t0 = time.perf_counter()
                    t.generate(ids, **kw, **extra)
                    _sync(device)
                    if i:
                        total_t += time.perf_counter() - t0
                        total_n += new_tokens
            out[f"{name}_tok_s"] = total_n / total_t
        except Exception as exc:  # report, keep the rest of the run
            out[f"{name}_error"] = f"{type(exc).__name__}: {exc}"[:300]
    del t, d
    gc.collect()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--preset", default="gpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--prompts", type=int, default=6)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--gammas", default="2,4,6")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    ap.add_argument("--no-hf", action="store_true")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    report: dict[str, Any] = {"device": torch.cuda.get_device_name(0) if a.device.startswith("cuda") else "cpu",
                              "torch": torch.__version__, "preset": a.preset, "new_tokens": a.new_tokens,
                              "prompt_len": a.prompt_len, "batch": 1, "rows": []}

    def save() -> None:
        text = json.dumps(report, indent=2)
        print(text, flush=True)
        if a.out:
            Path(a.out).write_text(text + "\n")

    t0 = time.perf_counter()
    pair = train_pair(a.preset, a.seed, a.cache_dir, device=a.device, log=lambda m: print(m, flush=True))
    report["train_wall_s"] = time.perf_counter() - t0
    report["train_metrics"] = pair.metrics
    save()
    dtype = torch.bfloat16 if a.dtype == "bf16" else torch.float32
    target = pair.target.to(device=a.device, dtype=dtype).eval()
    draft = pair.draft.to(device=a.device, dtype=dtype).eval()
    if a.device.startswith("cuda"):  # the GPU engine's inference layout, as `validate` runs it
        target.fuse_projections()
        draft.fuse_projections()
    prompts = _prompts(a.prompts + 1, a.prompt_len)
    for gamma in (int(g) for g in a.gammas.split(",")):
        for temp in (0.0, 1.0):
            row = {"gamma": gamma, "temperature": temp,
                   **_ours(target, draft, prompts, a.new_tokens, gamma, Sampling(temperature=temp), a.device, "graphs")}
            report["rows"].append(row)
            save()
    if not a.no_hf:
        try:
            g = int(a.gammas.split(",")[1] if "," in a.gammas else a.gammas)
            report["hf"] = {"gamma": g, **_hf(target, draft, prompts, a.new_tokens, g, a.device, dtype)}
        except ImportError:
            report["hf"] = None
        save()


if __name__ == "__main__":
    main()
