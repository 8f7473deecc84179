"""The tensor-parallel layers, and a full model turned into one rank's shard of it, in place."""

from __future__ import annotations

from dataclasses import replace
from typing import TypeVar, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dspark_sim.engine.model import Attention, FeedForward, Transformer
from dspark_sim.engine.tp.group import TPGroup, all_gather_last, all_reduce
from dspark_sim.engine.tp.shard import check_tp, kv_layout, shard_tensor


class RowParallelLinear(nn.Linear):
    """y = all_reduce(x_shard @ W_shard^T): the input's last dimension is this rank's slice."""

    def __init__(self, weight: Tensor, group_name: str, mode: str = "functional"):
        super().__init__(weight.shape[1], weight.shape[0], bias=False)
        self.group_name, self.mode = group_name, mode

    def forward(self, x: Tensor) -> Tensor:
        return all_reduce(F.linear(x, self.weight), self.group_name, self.mode)


class VocabParallelLinear(nn.Linear):
    """The lm head split by vocabulary rows; the logits are all-gathered (identical on every rank)."""

    def __init__(self, weight: Tensor, vocab_size: int, world: int, group_name: str, mode: str = "functional"):
        super().__init__(weight.shape[1], weight.shape[0], bias=False)
        self.vocab_size, self.world, self.group_name, self.mode = vocab_size, world, group_name, mode

    def forward(self, x: Tensor) -> Tensor:
        full = all_gather_last(F.linear(x, self.weight), self.world, self.group_name, self.mode)
        return full if full.shape[-1] == self.vocab_size else full[..., : self.vocab_size]


class TPTransformer(Transformer):
    """A Transformer whose layers hold one rank's shard (`shard_model` turns a full model into one).

    The forward pass is Transformer's, unchanged: the sharded modules carry the collectives. Only the
    KV cache differs: each layer caches this rank's KV heads. (model.py is left untouched, so the
    single-process engine and its `engine_version` hash, which profiles are checked against, stay as
    they are.)
    """

    def setup_caches(self, max_batch_size: int, max_seq_len: int, kv_dtype: str | torch.dtype | None = None) -> None:
        full = self.args
        att = cast(Attention, self.layers[0].attention)
        # Transformer.setup_caches sizes every layer's cache from self.args: hand it the per-rank head counts
        self.args = replace(full, n_heads=att.n_heads, n_kv_heads=att.n_kv_heads)
        try:
            super().setup_caches(max_batch_size, max_seq_len, kv_dtype)
        finally:
            self.args = full


M = TypeVar("M", bound=nn.Linear)


def _holding(module: M, weight: Tensor, requires_grad: bool) -> M:
    module.weight = nn.Parameter(weight, requires_grad=requires_grad)
    return module


def _column(weight: Tensor, requires_grad: bool) -> nn.Linear:
    """A plain linear layer holding this rank's rows of a column-parallel weight."""
    with torch.device("meta"):
        lin = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    return _holding(lin, weight, requires_grad)


def _row(weight: Tensor, requires_grad: bool, tp: TPGroup) -> RowParallelLinear:
    with torch.device("meta"):
        lin = RowParallelLinear(weight, group_name=tp.group_name, mode=tp.mode)
    return _holding(lin, weight, requires_grad)


def _vocab(weight: Tensor, requires_grad: bool, vocab_size: int, tp: TPGroup) -> VocabParallelLinear:
    with torch.device("meta"):
        lin = VocabParallelLinear(weight, vocab_size=vocab_size, world=tp.world, group_name=tp.group_name,
                                  mode=tp.mode)
    return _holding(lin, weight, requires_grad)


@torch.no_grad()
def shard_model(model: Transformer, tp: TPGroup, shards: dict[str, Tensor] | None = None) -> Transformer:
    """Keep this rank's shard of a full model, in place (the full weights are released). tp 1: unchanged.

    shards: this rank's parts already cut (`loading.random_shards`); the model's own weights are then
    unused (they may live on the meta device).
    """
    args = model.args
    check_tp(args, tp.world)
    if tp.world == 1:
        return model
    sd = dict(model.state_dict())
    if args.tie_embeddings:
        sd["output.weight"] = model.tok_embeddings.weight
    grad = model.tok_embeddings.weight.requires_grad

    def part(name: str) -> Tensor:
        if shards is not None:
            return shards[name]
        return shard_tensor(name, sd[name], args, tp.rank, tp.world)

    kv_local, _ = kv_layout(args, tp.world)
    for i, layer in enumerate(model.layers):
        p = f"layers.{i}."
        att, ffn = cast(Attention, layer.attention), cast(FeedForward, layer.feed_forward)
        att.wq = _column(part(p + "attention.wq.weight"), grad)
        att.wk = _column(part(p + "attention.wk.weight"), grad)
        att.wv = _column(part(p + "attention.wv.weight"), grad)
        att.wo = _row(part(p + "attention.wo.weight"), grad, tp)
        att.n_heads, att.n_kv_heads = args.n_heads // tp.world, kv_local
        att.kv_cache = None
        ffn.w1 = _column(part(p + "feed_forward.w1.weight"), grad)
        ffn.w3 = _column(part(p + "feed_forward.w3.weight"), grad)
        ffn.w2 = _row(part(p + "feed_forward.w2.weight"), grad, tp)
    model.output = _vocab(part("output.weight"), grad, args.vocab_size, tp)
    if shards is not None:  # the replicated parameters (embedding, norms) and RoPE tables, on the device
        for name, param in list(model.named_parameters()):
            if param.is_meta:
                owner, attr = model.get_submodule(name.rpartition(".")[0]), name.rpartition(".")[2]
                setattr(owner, attr, nn.Parameter(shards[name], requires_grad=grad))
        model._build_rope(args.max_seq_len, shards["tok_embeddings.weight"].device)
    sd.clear()  # drop the references to the full weights
    model.__class__ = TPTransformer
    model.cache_batch = model.cache_len = 0
    model.buffers_version += 1  # graphs captured on the full model must not replay
    if model.device.type == "cuda":
        torch.cuda.empty_cache()
    return model


def weight_bytes(model: nn.Module) -> int:
    """Bytes of this rank's parameters (shared tensors once)."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel() * p.element_size()
    return total
