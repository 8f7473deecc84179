"""Building a hidden-state drafter for a target, and its checkpoints beside the trained pair.

A checkpoint is `<pair>/drafters/<kind>.safetensors` (weights, with DSpark's calibration temperatures)
and `<kind>.json` ({"drafter_args": ..., **extra}); it carries frozen copies of the target's embedding
and output head, so it loads without the target.

The parallel block drafter's kind was once spelled "parallel" (it is "parallel_block", the simulator's
name, now). A checkpoint saved under that name is refused with a message saying to retrain it, not
renamed on the fly: its file name is the old kind too (`parallel.safetensors`), so the training cache
never finds it under the new name and trains a fresh `parallel_block` beside it anyway.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save
from torch import nn

from dspark_sim.config.errors import InputError
from dspark_sim.config.io import write_atomic
from dspark_sim.engine.drafters import KINDS, Drafter, DrafterArgs
from dspark_sim.engine.model import Transformer

#: kind names that checkpoints saved by earlier versions may carry, and the kind each is now
RETIRED_KINDS = {"parallel": "parallel_block"}


def init_drafter(drafter: Drafter, target: Transformer, std: float = 0.02) -> Drafter:
    """N(0, std) weights (residual outputs scaled), zero Markov output (starts as the plain block),
    and the target's embedding and output head copied in, frozen."""
    resid = std / math.sqrt(2 * max(1, drafter.args.n_layers))
    for name, p in drafter.named_parameters():
        if name.endswith("norm.weight"):
            nn.init.ones_(p)
        elif name.endswith(("wo.weight", "w2.weight")):
            nn.init.normal_(p, 0.0, resid)
        elif name == "markov_v.weight" or name.startswith("conf.") and name.endswith("bias"):
            nn.init.zeros_(p)
        else:
            nn.init.normal_(p, 0.0, std)
    with torch.no_grad():
        drafter.tok_embeddings.weight.copy_(target.tok_embeddings.weight)
        drafter.output.weight.copy_(target.output.weight)
    drafter.tok_embeddings.weight.requires_grad_(False)
    drafter.output.weight.requires_grad_(False)
    return drafter


def build_drafter(target: Transformer, kind: str, *, seed: int | None = None, **overrides: Any) -> Drafter:
    """A randomly initialised drafter for `target` (same width, vocabulary, dtype and device)."""
    ta = target.args
    half = max(1, ta.n_heads // 2)
    defaults = {"n_heads": half if (ta.dim // half) % 2 == 0 else ta.n_heads,
                "ffn_hidden": ta.ffn_hidden, "max_seq_len": ta.max_seq_len}
    args = DrafterArgs(kind=kind, dim=ta.dim, vocab_size=ta.vocab_size, **{**defaults, **overrides})
    if seed is not None:
        torch.manual_seed(seed)
    drafter = Drafter(args)
    init_drafter(drafter, target)
    return drafter.to(device=target.device, dtype=target.dtype).eval()


def drafter_dir(pair_folder: str | Path) -> Path:
    return Path(pair_folder) / "drafters"


def save_drafter(drafter: Drafter, folder: str | Path, name: str | None = None,
                 extra: dict[str, Any] | None = None) -> Path:
    """`<folder>/<name>.safetensors` (weights + calibration temperatures) and `<name>.json`."""
    folder = Path(folder)
    name = name or drafter.kind
    sd = {k: v.detach().contiguous().cpu() for k, v in drafter.state_dict().items()}
    path = write_atomic(folder / f"{name}.safetensors", save(sd, metadata={"format": "pt"}))
    meta = {"drafter_args": drafter.args.to_dict(), **(extra or {})}
    write_atomic(folder / f"{name}.json", json.dumps(meta, indent=2))
    return path


def _checked_args(meta_path: Path, meta: Any) -> DrafterArgs:
    """The checkpoint's DrafterArgs; a retired or unknown kind is one InputError naming the file."""
    args = meta.get("drafter_args") if isinstance(meta, dict) else None
    if not isinstance(args, dict):
        raise InputError(str(meta_path), "drafter_args", "missing: not a drafter checkpoint")
    kind = args.get("kind")
    if kind in RETIRED_KINDS:
        raise InputError(str(meta_path), "drafter_args.kind",
                         f"saved under the retired kind name {kind!r}, now {RETIRED_KINDS[kind]!r}: retrain it "
                         f"(`dspark-sim engine drafters train --kind {RETIRED_KINDS[kind]}`)")
    if kind not in KINDS:
        raise InputError(str(meta_path), "drafter_args.kind", f"unknown kind {kind!r} (allowed: {', '.join(KINDS)})")
    return DrafterArgs.from_dict(args)


def load_drafter(folder: str | Path, name: str, *, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> tuple[Drafter, dict[str, Any]]:
    folder = Path(folder)
    meta_path, weights = folder / f"{name}.json", folder / f"{name}.safetensors"
    if not meta_path.is_file() or not weights.is_file():
        raise InputError(str(folder), name, "drafter checkpoint not found (train it with `dspark-sim engine drafters "
                                            "train`)")
    meta = json.loads(meta_path.read_text())
    drafter = Drafter(_checked_args(meta_path, meta)).to(device=device, dtype=dtype)
    sd = load_file(str(weights))
    missing, unexpected = drafter.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise InputError(str(weights), None, f"weights do not match the config (missing {missing[:3]}, "
                                             f"unexpected {unexpected[:3]})")
    drafter.tok_embeddings.weight.requires_grad_(False)
    drafter.output.weight.requires_grad_(False)
    drafter._build_rope(drafter.args.max_seq_len + 2 * drafter.args.block_size + 2, device)
    return drafter.eval(), meta
