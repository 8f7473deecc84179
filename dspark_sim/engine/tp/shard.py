"""Which slice of each full parameter a rank keeps: pure functions of the weights, the rank and tp."""

from __future__ import annotations

import torch
from torch import Tensor

from dspark_sim.config.errors import InputError
from dspark_sim.engine.model import ModelArgs


def check_tp(args: ModelArgs, tp: int, source: str = "model") -> None:
    """Whether this architecture splits over `tp` ranks; one InputError line saying why not."""
    if tp < 1:
        raise InputError(source, "tp", f"must be >= 1 (got {tp})")
    if args.n_heads % tp:
        raise InputError(source, "n_heads", f"{args.n_heads} attention heads do not split over tensor parallel "
                                            f"degree {tp} (tp must divide the head count)")
    kv = args.n_kv_heads
    if kv % tp and tp % kv:
        raise InputError(source, "n_kv_heads", f"{kv} KV heads and tp {tp}: tp must divide the KV heads (sharded) "
                                               f"or be a multiple of them (each KV head replicated tp / kv times)")
    if args.ffn_hidden % tp:
        raise InputError(source, "ffn_hidden", f"FFN width {args.ffn_hidden} does not split over tp {tp}")


def kv_layout(args: ModelArgs, tp: int) -> tuple[int, int]:
    """(KV heads per rank, ranks holding each KV head)."""
    if args.n_kv_heads % tp == 0:
        return args.n_kv_heads // tp, 1
    return 1, tp // args.n_kv_heads


def vocab_shard(vocab_size: int, tp: int) -> int:
    """Rows of the lm head per rank (the last rank's are zero-padded when tp does not divide V)."""
    return -(-vocab_size // tp)


def shard_tensor(name: str, t: Tensor, args: ModelArgs, rank: int, tp: int) -> Tensor:
    """Rank `rank`'s part of the full parameter `name` (a new, contiguous tensor; replicated ones copied)."""
    hd = args.head_dim
    hq = args.n_heads // tp
    kv_local, reps = kv_layout(args, tp)
    ffn = args.ffn_hidden // tp
    if name.endswith("attention.wq.weight"):
        out = t[rank * hq * hd:(rank + 1) * hq * hd]
    elif name.endswith(("attention.wk.weight", "attention.wv.weight")):
        first = (rank // reps) * kv_local
        out = t[first * hd:(first + kv_local) * hd]
    elif name.endswith("attention.wo.weight"):
        out = t[:, rank * hq * hd:(rank + 1) * hq * hd]
    elif name.endswith(("feed_forward.w1.weight", "feed_forward.w3.weight")):
        out = t[rank * ffn:(rank + 1) * ffn]
    elif name.endswith("feed_forward.w2.weight"):
        out = t[:, rank * ffn:(rank + 1) * ffn]
    elif name == "output.weight":
        vs = vocab_shard(args.vocab_size, tp)
        out = t[rank * vs:(rank + 1) * vs]
        if out.shape[0] < vs:
            out = torch.cat([out, out.new_zeros(vs - out.shape[0], out.shape[1])])
    else:  # embedding, norms: replicated
        out = t
    return out.contiguous().clone()


def shard_state_dict(sd: dict[str, Tensor], args: ModelArgs, rank: int, tp: int) -> dict[str, Tensor]:
    """A rank's shard of a full state dict (ours or a converted HF Llama one); deterministic."""
    check_tp(args, tp)
    sd = dict(sd)
    if "output.weight" not in sd and args.tie_embeddings:
        sd["output.weight"] = sd["tok_embeddings.weight"]
    return {k: shard_tensor(k, v, args, rank, tp) for k, v in sd.items()}
