"""Train a target model on stdlib bytes, then distil a draft from it (so the draft matches the target).

The draft's loss is the KL divergence from the target's next-token distribution, not the data's
one-hot labels: speculative decoding accepts a draft token with probability min(1, p/q), so what
matters is closeness to the target (acceptance alpha = 1 - TV(p, q)), not the data likelihood.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from dspark_sim.config.errors import InputError
from dspark_sim.engine.checkpoints import load_checkpoint, save_checkpoint
from dspark_sim.engine.data import VOCAB_SIZE, Corpus, fixed_batches, load_corpus, random_batch
from dspark_sim.engine.model import ModelArgs, Transformer, build_model


@dataclass(frozen=True)
class TrainPreset:
    target: str  # model preset names (dspark_sim.engine.model.PRESETS)
    draft: str
    seq_len: int
    batch_size: int
    target_steps: int
    draft_steps: int
    lr: float = 3e-3
    draft_lr: float = 3e-3
    warmup_steps: int = 20
    max_corpus_bytes: int | None = None
    eval_batches: int = 4


TRAIN_PRESETS: dict[str, TrainPreset] = {
    "test": TrainPreset("test-target", "test-draft", seq_len=64, batch_size=8, target_steps=12, draft_steps=8,
                        warmup_steps=2, max_corpus_bytes=200_000, eval_batches=1),
    "tiny": TrainPreset("tiny-target", "tiny-draft", seq_len=256, batch_size=16, target_steps=350, draft_steps=250,
                        lr=2e-3, warmup_steps=30, max_corpus_bytes=6_000_000, eval_batches=4),
    "gpu": TrainPreset("gpu-target", "gpu-draft", seq_len=1024, batch_size=64, target_steps=1000, draft_steps=500,
                       lr=1e-3, draft_lr=2e-3, warmup_steps=100, eval_batches=8),
}

DEFAULT_CACHE_ROOT = Path("~/.cache/dspark-sim/engine")


def pair_dir(preset: str, seed: int, cache_dir: str | Path | None = None) -> Path:
    """Where a trained pair lives: <cache_dir or ~/.cache/dspark-sim/engine>/<preset>-seed<seed>/."""
    return Path(cache_dir or DEFAULT_CACHE_ROOT).expanduser() / f"{preset}-seed{seed}"


def get_preset(name: str) -> TrainPreset:
    if name not in TRAIN_PRESETS:
        raise InputError("--preset", None, f"unknown preset {name!r} (allowed: {', '.join(TRAIN_PRESETS)})")
    return TRAIN_PRESETS[name]


@contextlib.contextmanager
def deterministic(device: torch.device) -> Iterator[None]:
    """Deterministic kernels for the duration (restored after: no lasting global state)."""
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


def _lr(step: int, steps: int, base: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 10%."""
    if step < warmup:
        return base * (step + 1) / warmup
    frac = (step - warmup) / max(1, steps - warmup)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


def _optimizer(model: Transformer, lr: float) -> torch.optim.Optimizer:
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), eps=1e-8)


def _autocast(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """KL(p_teacher || q_student), mean over tokens: minimised when the draft reproduces the target."""
    logp = F.log_softmax(teacher_logits.float(), -1)
    logq = F.log_softmax(student_logits.float(), -1)
    return (logp.exp() * (logp - logq)).sum(-1).mean()


def train_model(model: Transformer, corpus: Corpus, steps: int, preset: TrainPreset, lr: float, seed: int,
                teacher: Transformer | None = None, log: Callable[[str], None] | None = None) -> list[float]:
    """AdamW on random windows; cross-entropy to the data, or KL to `teacher` when given."""
    dev = model.device
    gen = torch.Generator().manual_seed(seed)
    opt = _optimizer(model, lr)
    model.train()
    losses: list[float] = []
    every = max(1, steps // 10)
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = _lr(step, steps, lr, preset.warmup_steps)
        x, y = random_batch(corpus.train, preset.batch_size, preset.seq_len, gen)
        x, y = x.to(dev), y.to(dev)
        with _autocast(dev):
            logits = model(x)
            if teacher is None:
                loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
            else:
                with torch.no_grad():
                    t_logits = teacher(x)
                loss = distill_loss(logits, t_logits)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if log and (step % every == 0 or step == steps - 1):
            log(f"  step {step + 1}/{steps} loss {losses[-1]:.4f}")
    model.eval()
    return losses


@torch.no_grad()
def evaluate(target: Transformer, draft: Transformer | None, corpus: Corpus, preset: TrainPreset) -> dict[str, float]:
    """Held-out figures: cross-entropy (nats/byte) of each model, and alpha = E[sum_x min(p, q)]."""
    dev = target.device
    ce_t, ce_d, alpha, kl, n = 0.0, 0.0, 0.0, 0.0, 0
    for x, y in fixed_batches(corpus.eval, preset.eval_batches, preset.batch_size, preset.seq_len):
        x, y = x.to(dev), y.to(dev)
        with _autocast(dev):
            lt = target(x).float()
            ce_t += float(F.cross_entropy(lt.flatten(0, 1), y.flatten()))
            if draft is not None:
                ld = draft(x).float()
                ce_d += float(F.cross_entropy(ld.flatten(0, 1), y.flatten()))
                kl += float(distill_loss(ld, lt))
                alpha += float(torch.minimum(lt.softmax(-1), ld.softmax(-1)).sum(-1).mean())
        n += 1
    out = {"target_eval_loss": ce_t / n}
    if draft is not None:
        out.update(draft_eval_loss=ce_d / n, draft_eval_kl=kl / n, alpha_t1=alpha / n)
    return out


@dataclass
class TrainedPair:
    target: Transformer
    draft: Transformer
    folder: Path
    metrics: dict[str, Any]


def load_pair(folder: str | Path, *, device: torch.device | str = "cpu",
              dtype: torch.dtype = torch.float32) -> TrainedPair:
    folder = Path(folder)
    target = load_checkpoint(folder, "target", device=device, dtype=dtype)
    draft = load_checkpoint(folder, "draft", device=device, dtype=dtype)
    metrics_path = folder / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    return TrainedPair(target, draft, folder, metrics)


def train_pair(preset: str, seed: int = 0, cache_dir: str | Path | None = None, *, device: str = "cpu",
               force: bool = False, log: Callable[[str], None] | None = None,
               overrides: dict[str, Any] | None = None) -> TrainedPair:
    """Train (or load from the cache) a target and a draft distilled from it.

    `overrides` replaces TrainPreset fields (e.g. steps in a smoke test). Checkpoints land in
    `pair_dir(preset, seed, cache_dir)` as target/draft .safetensors + .json, with metrics.json.
    """
    spec = replace(get_preset(preset), **(overrides or {}))
    folder = pair_dir(preset, seed, cache_dir)
    if not force and not overrides and (folder / "metrics.json").is_file():
        return load_pair(folder, device=device)
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device", None, "cuda requested but torch sees no CUDA device")
    dev = torch.device(device)
    log = log or (lambda _msg: None)
    t_start = time.perf_counter()
    corpus = load_corpus(spec.max_corpus_bytes)
    log(f"corpus: {len(corpus.train):,} train / {len(corpus.eval):,} eval bytes "
        f"({corpus.train_files} / {corpus.eval_files} files)")
    torch.manual_seed(seed)
    with deterministic(dev):
        t_args = ModelArgs.from_preset(spec.target, vocab_size=VOCAB_SIZE)
        d_args = ModelArgs.from_preset(spec.draft, vocab_size=VOCAB_SIZE)
        target = build_model(t_args, device=dev, seed=seed)
        log(f"target {spec.target}: {t_args.num_params():,} params, {spec.target_steps} steps")
        t0 = time.perf_counter()
        t_losses = train_model(target, corpus, spec.target_steps, spec, spec.lr, seed, log=log)
        t_time = time.perf_counter() - t0
        draft = build_model(d_args, device=dev, seed=seed + 1)
        log(f"draft {spec.draft}: {d_args.num_params():,} params, {spec.draft_steps} steps (distilled)")
        t0 = time.perf_counter()
        target.requires_grad_(False)
        d_losses = train_model(draft, corpus, spec.draft_steps, spec, spec.draft_lr, seed + 1, teacher=target, log=log)
        target.requires_grad_(True)
        d_time = time.perf_counter() - t0
        metrics: dict[str, Any] = {
            "preset": preset, "seed": seed, "train": asdict(spec), "device": device,
            "target_params": t_args.num_params(), "draft_params": d_args.num_params(),
            "target_final_loss": _tail_mean(t_losses), "draft_final_kl": _tail_mean(d_losses),
            "target_train_time_s": t_time, "draft_train_time_s": d_time,
            "train_bytes": len(corpus.train), "eval_bytes": len(corpus.eval),
            **evaluate(target, draft, corpus, spec),
        }
    metrics["total_time_s"] = time.perf_counter() - t_start
    save_checkpoint(target, folder, "target", {"losses": t_losses})
    save_checkpoint(draft, folder, "draft", {"losses": d_losses, "teacher": "target"})
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2))
    log(f"saved to {folder}")
    return TrainedPair(target.eval(), draft.eval(), folder, metrics)


def _tail_mean(values: list[float], frac: float = 0.1) -> float:
    tail = values[-max(1, int(len(values) * frac)):]
    return sum(tail) / len(tail)
