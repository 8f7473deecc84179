"""The TP speed table's measurement: timed plain and speculative runs on one TP group.

`measure_engine` is the worker `benchmarks/tp_engine.py` starts at each TP degree: seeded random
weights of preset shapes, sharded over the group, the plain loop and speculative decoding (FixedGamma)
timed per batch size, the group's all-reduces profiled (tp > 1) and, at TP 1 when asked, the passes
and steps of the same configuration profiled for calibration. Rank 0 returns a `TPRun`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from dspark_sim.config.measurements import EngineProfile
from dspark_sim.config.schema import FixedGamma
from dspark_sim.config.tensor_parallel import AllReduceSample, TPRun, TPRunRow
from dspark_sim.engine.caches import cache_tokens
from dspark_sim.engine.cudagraphs import GraphedForward, precapture
from dspark_sim.engine.generate import generate_baseline, speculative_generate
from dspark_sim.engine.model import WEIGHT_DTYPES, ModelArgs, Transformer, build_model
from dspark_sim.engine.results import GenerationResult
from dspark_sim.engine.sampling import Sampling
from dspark_sim.engine.tp.group import TPGroup, any_rank, ranks_agree, tp_generator
from dspark_sim.engine.tp.layers import weight_bytes
from dspark_sim.engine.tp.loading import build_tp_model
from dspark_sim.engine.tp.policy import LeaderPolicy
from dspark_sim.engine.tp.shard import check_tp
from dspark_sim.measure.allreduce import profile_allreduce
from dspark_sim.measure.profile import build_profile, profile_passes, profile_steps


@dataclass(frozen=True)
class MeasureConfig:
    """Random-weight target/draft of preset shapes (dspark_sim.engine.model.PRESETS), timed under TP."""

    target_shape: str = "test-target"
    draft_shape: str | None = "test-draft"
    vocab_size: int | None = None
    dtype: str = "fp32"
    prompt_len: int = 32
    new_tokens: int = 32
    batch_sizes: tuple[int, ...] = (1,)
    gamma: int = 3
    temperature: float = 0.0
    repeats: int = 3
    seed: int = 0
    graphs: bool = True  # CUDA graphs (manual capture, as profile/validate run) on CUDA
    allreduce_tokens: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
    allreduce_repeats: int = 10
    allreduce_between_matmuls: bool = True  # also time each all-reduce after its row-parallel matmul
    profile: bool = False  # profile passes and steps (for calibration) in this run
    replicate_draft: bool = False  # every rank holds the whole draft and drafts locally (no collectives)


def measure_args(cfg: MeasureConfig) -> tuple[ModelArgs, ModelArgs | None, int]:
    """Model shapes of a MeasureConfig, their static cache length."""
    cap = cache_tokens(cfg.prompt_len, cfg.new_tokens, cfg.gamma)
    over: dict[str, Any] = {"max_seq_len": cap + cfg.gamma + 8}
    target = ModelArgs.from_preset(cfg.target_shape, **over, **({"vocab_size": cfg.vocab_size} if cfg.vocab_size else {}))
    draft = (ModelArgs.from_preset(cfg.draft_shape, **over, vocab_size=target.vocab_size)
             if cfg.draft_shape else None)
    return target, draft, cap


def _graphed(target: Transformer, draft: Transformer | None, tp: TPGroup, batch: int, gamma: int,
             want: bool) -> tuple[GraphedForward | None, GraphedForward | None, str]:
    """CUDA-graph forwards with every shape of a run captured; eager (agreed by all ranks) if capture fails."""
    if not want or target.device.type != "cuda":
        return None, None, "eager"
    tf, df = GraphedForward(target), GraphedForward(draft) if draft is not None else None
    err = ""
    try:
        precapture(tf, df, batch, gamma)
    except Exception as exc:  # noqa: BLE001 - a capture failure falls back to eager, recorded in the report
        err = f"{type(exc).__name__}: {exc}"[:300]
    if any_rank(bool(err), tp):
        torch.cuda.synchronize()
        return None, None, f"eager (CUDA graph capture failed: {err or 'on another rank'})"
    return tf, df, "cuda-graphs"


def _models(cfg: MeasureConfig, tp: TPGroup, targs: ModelArgs,
            dargs: ModelArgs | None) -> tuple[Transformer, Transformer | None]:
    dtype = WEIGHT_DTYPES[cfg.dtype]
    target = build_tp_model(targs, tp, dtype=dtype, seed=cfg.seed)
    if dargs is not None and cfg.replicate_draft:  # the same seeded weights on every rank, unsharded
        return target, build_model(dargs, device=tp.device, dtype=dtype, seed=cfg.seed + 1).eval()
    if dargs is not None:
        return target, build_tp_model(dargs, tp, dtype=dtype, seed=cfg.seed + 1)
    return target, None


def _measure_batch(target: Transformer, draft: Transformer | None, tp: TPGroup, cfg: MeasureConfig, b: int,
                   cap: int) -> TPRunRow:
    """The plain loop and (with a draft) speculative decoding at batch b, timed."""
    gen_p = torch.Generator().manual_seed(cfg.seed + b)
    prompts = torch.randint(0, target.args.vocab_size, (b, cfg.prompt_len), generator=gen_p).tolist()
    target.setup_caches(b, cap)
    if draft is not None:
        draft.setup_caches(b, cap)
    tf, df, mode = _graphed(target, draft, tp, b, cfg.gamma if draft is not None else 0, cfg.graphs)
    sampling = Sampling(cfg.temperature)

    def base_run() -> GenerationResult:
        return generate_baseline(target, prompts, cfg.new_tokens, sampling, forward=tf,
                                 generator=tp_generator(tp, cfg.seed))

    def spec_run() -> GenerationResult:
        pol = LeaderPolicy(FixedGamma(gamma=cfg.gamma), tp)
        return speculative_generate(target, draft, prompts, cfg.new_tokens, pol, sampling,
                                    generator=tp_generator(tp, cfg.seed), target_forward=tf, draft_forward=df)

    row: dict[str, Any] = {"tp": tp.world, "batch": b, "forward": mode, "cache_len": cap}
    base = _repeat(base_run, cfg.repeats, tp)
    row.update(baseline_decode_tok_s=base["decode_tok_s"], baseline_tok_s=base["tok_s"],
               baseline_step_s=base["step_s"])
    if draft is not None and cfg.gamma > 0:
        spec = _repeat(spec_run, cfg.repeats, tp)
        row.update(spec_decode_tok_s=spec["decode_tok_s"], spec_tok_s=spec["tok_s"], spec_step_s=spec["step_s"],
                   tau=spec["tau"], draft_s=spec["draft_s"], verify_s=spec["verify_s"],
                   greedy_identical=(spec["tokens"] == base["tokens"]) if cfg.temperature == 0 else None)
        row["ranks_agree"] = ranks_agree((base["tokens"], spec["tokens"]), tp)
    else:
        row["ranks_agree"] = ranks_agree(base["tokens"], tp)
    return TPRunRow(**row)


def _allreduce_samples(tp: TPGroup, cfg: MeasureConfig, targs: ModelArgs) -> list[AllReduceSample]:
    dtype = WEIGHT_DTYPES[cfg.dtype]
    samples = profile_allreduce(tp, list(cfg.allreduce_tokens), targs.dim, dtype, repeats=cfg.allreduce_repeats)
    if cfg.allreduce_between_matmuls:  # as in the model: after the down projection's shard
        samples += profile_allreduce(tp, list(cfg.allreduce_tokens), targs.dim, dtype,
                                     repeats=cfg.allreduce_repeats, matmul_in=targs.ffn_hidden // tp.world)
    return samples


def measure_engine(tp: TPGroup, cfg: MeasureConfig) -> TPRun | None:
    """Tokens/s of the plain loop and of speculative decoding (FixedGamma) per batch size on this TP group,
    an all-reduce profile (tp > 1) and optionally an engine profile for calibration. Rank 0 returns."""
    targs, dargs, cap = measure_args(cfg)
    check_tp(targs, tp.world, cfg.target_shape)
    if dargs is not None and not cfg.replicate_draft:
        check_tp(dargs, tp.world, cfg.draft_shape or "draft")
    target, draft = _models(cfg, tp, targs, dargs)
    rows = [_measure_batch(target, draft, tp, cfg, b, cap) for b in cfg.batch_sizes]
    run: dict[str, Any] = {
        "tp": tp.world, "backend": tp.backend, "device": _device_name(tp.device), "rows": rows,
        "forward": sorted({r.forward for r in rows}), "weight_bytes_per_rank": weight_bytes(target),
        "draft_weight_bytes_per_rank": weight_bytes(draft) if draft is not None else 0,
        "draft_replicated": cfg.replicate_draft and draft is not None,
    }
    if tp.world > 1 and cfg.allreduce_tokens:
        run["allreduce"] = _allreduce_samples(tp, cfg, targs)
        run["allreduce_act_bytes"] = torch.tensor([], dtype=WEIGHT_DTYPES[cfg.dtype]).element_size()
    if cfg.profile and tp.world == 1:
        run["profile"] = _profile_for_calibration(target, draft, cfg, cap)
    return TPRun(**run) if tp.leader else None


def _device_name(dev: torch.device) -> str:
    return torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"


def _repeat(run: Callable[[], GenerationResult], repeats: int, tp: TPGroup) -> dict[str, Any]:
    """One untimed warm-up, then `repeats` timed runs; medians (rank 0's clock; ranks run in lockstep)."""
    run()
    results = []
    for _ in range(max(repeats, 1)):
        if tp.world > 1:
            dist.barrier(group=tp.cpu_group)
        results.append(run())
    steps = [max(len(r.steps), 1) if r.steps else max(r.target_passes, 1) for r in results]
    med = float(np.median([r.decode_tokens_per_s for r in results]))
    last = results[-1]
    n_steps = [len(r.steps) for r in results]
    return {
        "decode_tok_s": med,
        "tok_s": float(np.median([r.tokens_per_s for r in results])),
        "step_s": float(np.median([r.decode_time_s / s for r, s in zip(results, steps, strict=True)])),
        "tau": last.tau,
        "draft_s": float(np.median([sum(s.draft_time_s for s in r.steps) / max(n, 1)
                                    for r, n in zip(results, n_steps, strict=True)])),
        "verify_s": float(np.median([sum(s.verify_time_s for s in r.steps) / max(n, 1)
                                     for r, n in zip(results, n_steps, strict=True)])),
        "tokens": last.tokens,
    }


def _profile_for_calibration(target: Transformer, draft: Transformer | None, cfg: MeasureConfig,
                             cap: int) -> EngineProfile:
    """Pass and step timings of this (TP 1) configuration, as `dspark-sim profile` records them."""
    dev = target.device
    tf = df = None
    if dev.type == "cuda" and cfg.graphs:
        tf, df = GraphedForward(target), GraphedForward(draft) if draft is not None else None
    ctx = cfg.prompt_len + cfg.new_tokens // 2
    batches = sorted(set(cfg.batch_sizes) | {1})
    qs = list(range(1, cfg.gamma + 2))
    samples = profile_passes(target, "target", batches, qs, [ctx], [None], cache_len_for=lambda c, q: cap,
                             forward=tf, warmup=2, repeats=max(cfg.repeats, 3))
    steps = []
    if draft is not None:
        samples += profile_passes(draft, "draft", batches, [1, 2], [ctx], [None], cache_len_for=lambda c, q: cap,
                                  forward=df, warmup=2, repeats=max(cfg.repeats, 3))
        for f in (tf, df):
            if f is not None:
                f.reset()
        steps = profile_steps(target, draft, batches, [0, cfg.gamma], [cfg.prompt_len], cfg.new_tokens,
                              temperatures=(cfg.temperature,), target_forward=tf, draft_forward=df)
    doc = build_profile(device=dev, target=target, draft=draft, samples=samples, steps=steps,
                        created_by="benchmarks/tp_engine.py (TP 1)")
    # validated from its whole dump, so every field counts as set: the TP table keeps the profile entire,
    # as `dspark-sim profile` writes one
    return EngineProfile.model_validate(doc.model_dump())
