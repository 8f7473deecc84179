"""Train (or load from beside the pair) the hidden-state drafters of a trained pair, calibrate them, and
save them as checkpoints with their metrics (`dspark-sim engine drafters train`).

The training is `engine.drafter_training`, the calibration `engine.drafter_calibration`; a checkpoint is
`<pair>/drafters/<kind>.safetensors` + `<kind>.json` (`engine.drafter_checkpoints`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dspark_sim.engine.data import load_corpus
from dspark_sim.engine.drafter_calibration import calibrate_drafter, fmt_values
from dspark_sim.engine.drafter_checkpoints import drafter_dir, load_drafter, save_drafter
from dspark_sim.engine.drafter_training import (
    check_kinds,
    evaluate_drafter,
    get_drafter_preset,
    train_drafter_models,
)
from dspark_sim.engine.drafters import KINDS, Drafter
from dspark_sim.engine.train import deterministic, get_preset, train_pair


@dataclass
class TrainedDrafter:
    drafter: Drafter
    path: Path
    metrics: dict[str, Any]


def load_drafters(pair_folder: str | Path, kinds: Sequence[str] = KINDS, *, device: str = "cpu",
                  dtype: torch.dtype = torch.float32) -> dict[str, TrainedDrafter]:
    folder = drafter_dir(pair_folder)
    out = {}
    for kind in check_kinds(kinds):
        d, meta = load_drafter(folder, kind, device=device, dtype=dtype)
        out[kind] = TrainedDrafter(d, folder / f"{kind}.safetensors", meta.get("metrics", {}))
    return out


def train_drafters(preset: str, seed: int = 0, cache_dir: str | Path | None = None, kinds: Sequence[str] = KINDS, *,
                   device: str = "cpu", force: bool = False, log: Callable[[str], None] | None = None,
                   overrides: dict[str, Any] | None = None) -> dict[str, TrainedDrafter]:
    """Train (or load from beside the pair) the drafters of `kinds` for the `preset` pair's target.

    Checkpoints: `<pair_dir>/drafters/<kind>.safetensors` + `<kind>.json` (args, metrics, calibration).
    `overrides` replaces DrafterTrainPreset fields (e.g. fewer steps); with overrides or `force` the
    cached drafters are not read, and the newly trained ones replace them.
    """
    kinds = check_kinds(kinds)
    get_preset(preset)
    spec = replace(get_drafter_preset(preset), **(overrides or {}))
    log = log or (lambda _m: None)
    pair = train_pair(preset, seed, cache_dir, device=device, log=log)
    folder = drafter_dir(pair.folder)
    out: dict[str, TrainedDrafter] = {}
    todo = []
    for kind in kinds:
        if not force and not overrides and (folder / f"{kind}.json").is_file():
            out[kind] = load_drafters(pair.folder, [kind], device=device)[kind]
        else:
            todo.append(kind)
    if not todo:
        return out
    dev = torch.device(device)
    corpus = load_corpus(pair.metrics.get("train", {}).get("max_corpus_bytes") or get_preset(preset).max_corpus_bytes)
    target = pair.target.eval()
    target.requires_grad_(False)
    with deterministic(dev):
        trained = train_drafter_models(target, todo, corpus, spec, seed, log)
        for kind in todo:
            t = trained[kind]
            d: Drafter = t["drafter"]
            t0 = time.perf_counter()
            calib = calibrate_drafter(target, d, corpus.eval, spec, seed, log)
            calib_s = time.perf_counter() - t0
            ev = evaluate_drafter(target, d, corpus.eval, spec)
            metrics = {
                "kind": kind, "preset": preset, "seed": seed, "train": {k: v for k, v in asdict(spec).items()
                                                                        if k != "arch"},
                "params": d.num_params(), "train_time_s": t["train_time_s"],
                "shared_target_time_s": t["shared_target_time_s"], "calibration_time_s": calib_s,
                "trained_with": todo, "final_loss": float(np.mean(t["losses"][-max(1, len(t["losses"]) // 10):])),
                **ev, "calibration": calib,
            }
            path = save_drafter(d, folder, kind, {"metrics": metrics, "losses": t["losses"],
                                                  "target": str(pair.folder)})
            log(f"{kind}: alpha(T=1) by position {fmt_values(ev['alpha_t1_by_position'])}, greedy match "
                f"{fmt_values(ev['greedy_match_by_position'])}; {t['train_time_s']:.1f} s own + "
                f"{t['shared_target_time_s']:.1f} s shared target passes -> {path}")
            out[kind] = TrainedDrafter(d, path, metrics)
    target.requires_grad_(True)
    return {k: out[k] for k in kinds}
