"""Where a model's full weights come from, and one rank's sharded model built from them."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor

from dspark_sim.config.errors import InputError
from dspark_sim.engine.checkpoints import _load_into
from dspark_sim.engine.model import ModelArgs, Transformer, build_model
from dspark_sim.engine.tp.group import TPGroup
from dspark_sim.engine.tp.layers import shard_model
from dspark_sim.engine.tp.shard import check_tp, shard_tensor


@torch.no_grad()
def random_shards(args: ModelArgs, tp: TPGroup, dtype: torch.dtype, seed: int) -> dict[str, Tensor]:
    """This rank's parts of `build_model(args, seed=seed)`'s random weights, one full tensor at a time.

    Why: a 70B-shaped model does not fit on one GPU, so no rank may build it whole. Each parameter is
    drawn in full, in build_model's order and with its generator, then cut and dropped, so the shards
    are exactly those of the whole model (tests check it) while a rank holds one full tensor at most.
    """
    torch.manual_seed(seed)
    with torch.device("meta"):
        meta = Transformer(args)
    resid_std = 0.02 / math.sqrt(2 * args.n_layers)
    shards: dict[str, Tensor] = {}
    for name, p in meta.named_parameters():  # init_weights' order (a tied lm head is not listed)
        full = torch.empty(p.shape, dtype=dtype, device=tp.device)
        if name.endswith("norm.weight"):
            full.fill_(1.0)
        elif name.endswith(("wo.weight", "w2.weight")):
            full.normal_(0.0, resid_std)
        else:
            full.normal_(0.0, 0.02)
        shards[name] = shard_tensor(name, full, args, tp.rank, tp.world)
        if name == "tok_embeddings.weight" and args.tie_embeddings:
            shards["output.weight"] = shard_tensor("output.weight", full, args, tp.rank, tp.world)
        del full
    return shards


def build_tp_model(args: ModelArgs, tp: TPGroup, *, dtype: torch.dtype = torch.float32, seed: int = 0,
                   state_dict: dict[str, Tensor] | None = None, source: str = "model") -> Transformer:
    """Every rank builds the same model (seeded random weights, or `state_dict`) and keeps its shard.

    Random weights with tp > 1 are drawn tensor by tensor (`random_shards`): no rank holds the whole model.
    """
    check_tp(args, tp.world, source)
    if state_dict is None and tp.world > 1:
        with torch.device("meta"):
            model = Transformer(args)
        model = model.to(dtype)
        return shard_model(model.eval(), tp, random_shards(args, tp, dtype, seed))
    model = build_model(args, device=tp.device, dtype=dtype, seed=seed)
    if state_dict is not None:
        _load_into(model, {k: v.to(dtype) for k, v in state_dict.items()}, source)
    return shard_model(model.eval(), tp)


@dataclass(frozen=True)
class ModelSource:
    """Where a model's full weights come from: a preset shape with seeded random weights, a trained
    pair folder (ours), or a saved full state dict (torch.save)."""

    args: ModelArgs
    seed: int = 0
    folder: str | None = None  # our checkpoint folder, with `name`.safetensors
    name: str | None = None
    state_dict_path: str | None = None

    def full_state(self) -> dict[str, Tensor] | None:
        if self.state_dict_path:
            state: dict[str, Tensor] = torch.load(self.state_dict_path, map_location="cpu", weights_only=True)
            return state
        if self.folder:
            path = Path(self.folder) / f"{self.name}.safetensors"
            if not path.is_file():
                raise InputError(str(path), None, "checkpoint weights not found")
            return load_file(str(path))
        return None

    def build(self, tp: TPGroup, dtype: torch.dtype) -> Transformer:
        return build_tp_model(self.args, tp, dtype=dtype, seed=self.seed, state_dict=self.full_state(),
                              source=self.name or "model")

    def build_full(self, device: torch.device, dtype: torch.dtype) -> Transformer:
        """The same model unsharded, for the single-process reference."""
        model = build_model(self.args, device=device, dtype=dtype, seed=self.seed)
        sd = self.full_state()
        if sd is not None:
            _load_into(model, {k: v.to(dtype) for k, v in sd.items()}, self.name or "model")
        return model.eval()
