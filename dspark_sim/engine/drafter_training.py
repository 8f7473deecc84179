"""Training the hidden-state drafters (`engine.drafters`) against a trained target.

Losses, as the DSpark paper describes them, per block position k (weights decay with k, since a later
token only counts when every earlier one was accepted):
- KL(p_target || q_draft), the distillation loss (its optimum reproduces the target);
- total variation TV(p, q) = 1 - alpha, the quantity speculative acceptance actually depends on;
- DSpark only: binary cross-entropy of the confidence head against 1 - TV(p, q_k) (detached), i.e. a
  regression of P(token k accepted | tokens < k accepted) at temperature 1.
Training is teacher-forced on windows of the stdlib corpus: one target pass gives hidden states and
distributions at every position, and many anchors per window each train a whole block.

Several drafters train in one loop that shares each batch's target pass; each drafter has its own seeded
anchor stream, so a drafter's weights do not depend on which others trained beside it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from dspark_sim.config.errors import InputError
from dspark_sim.engine.data import Corpus, fixed_batches, random_batch
from dspark_sim.engine.drafter_checkpoints import build_drafter
from dspark_sim.engine.drafters import KINDS, Drafter
from dspark_sim.engine.model import Transformer
from dspark_sim.engine.train import _lr


@dataclass(frozen=True)
class DrafterTrainPreset:
    steps: int
    batch_size: int
    seq_len: int
    anchors: int  # anchor positions per window per step (each trains a whole block)
    lr: float = 2e-3
    warmup_steps: int = 20
    tv_weight: float = 1.0
    conf_weight: float = 1.0
    position_decay: float = 0.85
    eval_batches: int = 2
    calib_prompts: int = 48
    calib_prompt_len: int = 64
    calib_new_tokens: int = 96
    arch: dict[str, dict[str, Any]] = field(default_factory=dict)


DRAFTER_TRAIN_PRESETS: dict[str, DrafterTrainPreset] = {
    "test": DrafterTrainPreset(
        steps=6, batch_size=4, seq_len=64, anchors=8, warmup_steps=2, eval_batches=1, calib_prompts=6,
        calib_prompt_len=16, calib_new_tokens=24,
        arch={"mtp": {"n_layers": 1, "window": 8, "ffn_hidden": 64},
              "parallel_block": {"n_layers": 1, "window": 8, "ffn_hidden": 64},
              "dspark": {"n_layers": 1, "window": 8, "ffn_hidden": 64, "markov_rank": 8, "conf_hidden": 16}}),
    "tiny": DrafterTrainPreset(
        steps=400, batch_size=16, seq_len=256, anchors=48, warmup_steps=30,
        arch={"mtp": {"n_layers": 1, "window": 32},
              "parallel_block": {"n_layers": 2, "window": 32},
              "dspark": {"n_layers": 2, "window": 32, "markov_rank": 64}}),
    "gpu": DrafterTrainPreset(
        steps=1500, batch_size=32, seq_len=1024, anchors=128, lr=1e-3, warmup_steps=100, eval_batches=8,
        calib_prompts=128, calib_new_tokens=256,
        arch={"mtp": {"n_layers": 1, "window": 128},
              "parallel_block": {"n_layers": 3, "window": 128},
              "dspark": {"n_layers": 3, "window": 128, "markov_rank": 256}}),
}


def get_drafter_preset(name: str) -> DrafterTrainPreset:
    if name not in DRAFTER_TRAIN_PRESETS:
        raise InputError("--preset", None, f"unknown preset {name!r} (allowed: {', '.join(DRAFTER_TRAIN_PRESETS)})")
    return DRAFTER_TRAIN_PRESETS[name]


def check_kinds(kinds: Sequence[str]) -> list[str]:
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise InputError("--kind", None, f"unknown drafter kind {bad[0]!r} (allowed: {', '.join(KINDS)})")
    return list(dict.fromkeys(kinds))


# ------------------------------------------------------------------------------------------------
# Losses
# ------------------------------------------------------------------------------------------------


def block_targets(t_logits: torch.Tensor, tokens: torch.Tensor, anchors: torch.Tensor, g: int) -> torch.Tensor:
    """Target logits for block token k of anchor t: the target's distribution of x_{t+1+k} given
    x_<=t+k, i.e. its logits at position t+k. Shape [N, A, G, V]."""
    n, a = anchors.shape
    idx = (anchors[:, :, None] + torch.arange(1, g + 1, device=anchors.device)).flatten(1)
    return t_logits.gather(1, idx[..., None].expand(-1, -1, t_logits.shape[-1])).view(n, a, g, -1)


def drafter_loss(drafter: Drafter, h: torch.Tensor, tokens: torch.Tensor, t_logits: torch.Tensor,
                 anchors: torch.Tensor, spec: DrafterTrainPreset) -> tuple[torch.Tensor, dict[str, float]]:
    g = drafter.args.block_size
    logits, conf_logit = drafter.train_forward(h, tokens, anchors)
    logp = F.log_softmax(block_targets(t_logits, tokens, anchors, g).float(), -1)
    logq = F.log_softmax(logits.float(), -1)
    p, q = logp.exp(), logq.exp()
    kl = (p * (logp - logq)).sum(-1)  # [N, A, G]
    tv = 0.5 * (p - q).abs().sum(-1)
    w = spec.position_decay ** torch.arange(g, device=kl.device, dtype=kl.dtype)
    w = w / w.sum()
    loss = ((kl + spec.tv_weight * tv).mean((0, 1)) * w).sum()
    stats = {"kl": float(kl.detach().mean()), "alpha": float(1 - tv.detach().mean())}
    if conf_logit is not None:
        bce = F.binary_cross_entropy_with_logits(conf_logit.float(), (1.0 - tv).detach())
        loss = loss + spec.conf_weight * bce
        stats["conf_bce"] = float(bce.detach())
    return loss, stats


def _anchors(n: int, a: int, seq_len: int, g: int, gen: torch.Generator) -> torch.Tensor:
    """a distinct-ish random anchors per window, t in [0, L-1-G] (block targets stay inside it)."""
    return torch.randint(0, seq_len - g, (n, a), generator=gen)


# ------------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------------


def train_drafter_models(target: Transformer, kinds: Sequence[str], corpus: Corpus, spec: DrafterTrainPreset,
                         seed: int, log: Callable[[str], None] | None = None) -> dict[str, dict[str, Any]]:
    """Train fresh drafters of `kinds` on `corpus`, sharing each batch's target pass.

    Returns {kind: {"drafter", "losses", "train_time_s" (its own forward/backward/optimiser time),
    "shared_target_time_s"}}.
    """
    log = log or (lambda _m: None)
    dev = target.device
    target.eval()
    state: dict[str, dict[str, Any]] = {}
    for kind in kinds:
        k_seed = seed + 101 * (1 + KINDS.index(kind))
        d = build_drafter(target, kind, seed=k_seed, **spec.arch.get(kind, {})).train()
        params = d.trainable_parameters()
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                                lr=spec.lr, betas=(0.9, 0.95), eps=1e-8)
        state[kind] = {"drafter": d, "opt": opt, "gen": torch.Generator().manual_seed(k_seed), "losses": [],
                       "time": 0.0}
        log(f"{kind}: {d.num_params():,} trainable params ({d.args.n_layers} layer(s), block {d.args.block_size}, "
            f"window {d.args.window})")
    data_gen = torch.Generator().manual_seed(seed + 7)
    shared = 0.0
    every = max(1, spec.steps // 8)
    for step in range(spec.steps):
        t0 = time.perf_counter()
        x, _ = random_batch(corpus.train, spec.batch_size, spec.seq_len, data_gen)
        x = x.to(dev)
        with torch.no_grad():
            t_logits, h = target(x, return_hidden=True)
        shared += time.perf_counter() - t0
        for kind, st in state.items():
            t0 = time.perf_counter()
            d, opt = st["drafter"], st["opt"]
            for group in opt.param_groups:
                group["lr"] = _lr(step, spec.steps, spec.lr, spec.warmup_steps)
            anchors = _anchors(spec.batch_size, spec.anchors, spec.seq_len, d.args.block_size, st["gen"]).to(dev)
            loss, stats = drafter_loss(d, h, x, t_logits, anchors, spec)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(d.trainable_parameters(), 1.0)
            opt.step()
            st["losses"].append(float(loss.detach()))
            st["time"] += time.perf_counter() - t0
            if step % every == 0 or step == spec.steps - 1:
                log(f"  {kind} step {step + 1}/{spec.steps} loss {float(loss.detach()):.4f} "
                    + " ".join(f"{k} {v:.3f}" for k, v in stats.items()))
    return {kind: {"drafter": st["drafter"].eval(), "losses": st["losses"], "train_time_s": st["time"],
                   "shared_target_time_s": shared} for kind, st in state.items()}


@torch.no_grad()
def evaluate_drafter(target: Transformer, drafter: Drafter, corpus_eval: torch.Tensor, spec: DrafterTrainPreset,
                     stride: int = 3) -> dict[str, Any]:
    """Held-out teacher-forced figures per block position: alpha = 1 - TV at T=1 (expected acceptance
    of draft k when drafts < k were accepted), greedy argmax agreement, and KL."""
    dev = target.device
    g = drafter.args.block_size
    alpha, match, kl, n = torch.zeros(g), torch.zeros(g), torch.zeros(g), 0
    for x, _ in fixed_batches(corpus_eval, spec.eval_batches, spec.batch_size, spec.seq_len):
        x = x.to(dev)
        t_logits, h = target(x, return_hidden=True)
        anchors = torch.arange(0, spec.seq_len - g, stride, device=dev).expand(x.shape[0], -1)
        logits, _ = drafter.train_forward(h, x, anchors)
        tl = block_targets(t_logits, x, anchors, g).float()
        p, q = tl.softmax(-1), logits.float().softmax(-1)
        alpha += torch.minimum(p, q).sum(-1).mean((0, 1)).cpu()
        match += (tl.argmax(-1) == logits.argmax(-1)).double().mean((0, 1)).cpu().float()
        kl += (p * (p.clamp_min(1e-30).log() - q.clamp_min(1e-30).log())).sum(-1).mean((0, 1)).cpu()
        n += 1
    return {"alpha_t1_by_position": (alpha / n).tolist(), "greedy_match_by_position": (match / n).tolist(),
            "kl_by_position": (kl / n).tolist()}
