"""Tensor parallelism for the engine (Megatron-style), over torch.distributed.

What is sharded, and how (per rank r of `tp`):
- attention: wq, wk, wv are column-parallel (this rank's heads), wo is row-parallel (its input columns)
  and is followed by one all-reduce; each rank attends with its own query heads and its own slice of
  the KV cache. KV heads are split over the ranks when tp divides them; when kv_heads < tp each KV head
  is replicated on tp / kv_heads ranks (as vLLM does), so tp must be a multiple of kv_heads.
- FFN: w1, w3 column-parallel, w2 row-parallel + one all-reduce. Two all-reduces per layer of
  T x hidden activations: exactly what `costmodel.forward_cost(..., tp)` prices.
- embedding: replicated (a lookup reads T rows, nothing to gain). lm head: vocab-parallel (each rank
  holds ceil(V / tp) rows, zero-padded), then an all-gather of the logits, so every rank ends a pass
  with the same, bitwise-identical logits. The cost model divides the head's weights by tp as this
  does; the logits all-gather (T x V per pass) is not in it (it is one collective against 2 x layers).
  A tied embedding is stored twice under TP: whole for the lookup, sharded for the head.

Identical decisions on every rank, with the unchanged generate loop (`generate.py`): the logits every
rank samples from are the all-gathered ones (identical by construction), and every rank passes an
identically seeded torch generator, so device-side sampling and acceptance agree; the host-side
speculation policy runs on rank 0 and its draft/verify lengths are broadcast (`LeaderPolicy`), because
some policies read wall-clock step times, which differ between ranks.

Loading: every rank builds (random weights, seeded) or loads (checkpoint) the full model, then keeps
its own shard (`shard_state_dict`, a pure function of the full weights, the rank and tp).

Launch (`python -m dspark_sim.engine.tp --help`):
    torchrun --nproc-per-node 2 -m dspark_sim.engine.tp generate --device cuda --json
    python -m dspark_sim.engine.tp generate --tp 2            # starts its own 2 processes
    python -m dspark_sim.engine.tp allreduce --tp 2 -o allreduce.json [--hardware hw.yaml --hardware-out hw-tp.yaml]
NVLink multicast stays off (NCCL_NVLS_ENABLE=0 and friends, `SAFE_ENV`) in every process started here.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from dspark_sim.config.errors import InputError
from dspark_sim.engine.model import WEIGHT_DTYPES, ModelArgs, Transformer, build_model

#: Keep NVLink multicast off in NCCL, PyTorch and NVSHMEM: on shared hosts it can take GPUs out of service.
SAFE_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}



def apply_safe_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """Set SAFE_ENV in `env` (default: this process's environment, inherited by its children)."""
    target: Any = os.environ if env is None else env
    target.update(SAFE_ENV)
    return target


apply_safe_env()


# ------------------------------------------------------------------------------------------------
# The process group
# ------------------------------------------------------------------------------------------------


@dataclass
class TPGroup:
    """One rank's view of the tensor-parallel group (the whole world: one TP group per job)."""

    rank: int
    world: int
    device: torch.device
    backend: str
    group_name: str  # device collectives (NCCL on CUDA, gloo on CPU), by name for the functional ops
    group: Any = field(default=None, repr=False)
    cpu_group: Any = field(default=None, repr=False)  # gloo: host-side control messages

    @property
    def leader(self) -> bool:
        return self.rank == 0

    @property
    def mode(self) -> str:
        """How the engine's collectives are issued (`collective_mode`)."""
        return collective_mode(self.backend)


def _env_int(name: str) -> int | None:
    v = os.environ.get(name)
    return int(v) if v not in (None, "") else None


def under_torchrun() -> bool:
    return _env_int("WORLD_SIZE") is not None and _env_int("RANK") is not None


def check_world(tp: int | None, world: int, source: str = "torchrun") -> int:
    """The TP degree the user asked for against the processes that were started; returns the degree."""
    if tp is not None and tp != world:
        raise InputError(source, "--tp", f"--tp {tp} but {world} process{'es' if world != 1 else ''} were started "
                                         f"(WORLD_SIZE={world}); start --nproc-per-node {tp} or drop --tp")
    return world


def init_tp(device: str = "cpu", *, rank: int | None = None, world: int | None = None,
            init_method: str | None = None) -> TPGroup:
    """Join the process group (torchrun's env:// unless `init_method` is given): NCCL on CUDA, gloo on CPU."""
    apply_safe_env()
    rank = _env_int("RANK") if rank is None else rank
    world = _env_int("WORLD_SIZE") if world is None else world
    if rank is None or world is None:
        raise InputError("tp", None, "no RANK / WORLD_SIZE: start under torchrun or through run_workers()")
    if device == "cuda":
        local = _env_int("LOCAL_RANK")
        local = rank if local is None else local
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
        backend = "nccl"
    else:
        dev = torch.device("cpu")
        backend = "gloo"
    kw: dict[str, Any] = {"device_id": dev} if backend == "nccl" else {}
    if not dist.is_initialized():
        dist.init_process_group(backend, init_method=init_method or "env://", rank=rank, world_size=world, **kw)
    group = dist.group.WORLD
    cpu_group = group if backend == "gloo" else dist.new_group(backend="gloo")
    return TPGroup(rank, world, dev, backend, group.group_name, group, cpu_group)


def destroy_tp() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


# ------------------------------------------------------------------------------------------------
# Collectives (functional ops: traceable by torch.compile and capturable in CUDA graphs)
# ------------------------------------------------------------------------------------------------

def collective_mode(backend: str) -> str:
    """"functional" (torch.ops._c10d_functional: what torch.compile traces and CUDA graphs capture, as
    gpt-fast runs TP) on NCCL; "inplace" (torch.distributed.all_reduce) on gloo, where the functional
    ops left worker processes aborting at exit about half the time (torch 2.13 CPU). The environment
    variable DSPARK_TP_COLLECTIVES=functional|inplace overrides."""
    env = os.environ.get("DSPARK_TP_COLLECTIVES", "")
    if env in ("functional", "inplace"):
        return env
    return "functional" if backend == "nccl" else "inplace"


def _group(group_name: str) -> Any:
    from torch.distributed.distributed_c10d import _resolve_process_group

    return _resolve_process_group(group_name)


def all_reduce(x: Tensor, group_name: str, mode: str = "functional") -> Tensor:
    """Sum of x over the group (a new tensor)."""
    if mode == "inplace":
        y = x.contiguous().clone()
        dist.all_reduce(y, group=_group(group_name))
        return y
    y = torch.ops._c10d_functional.all_reduce(x.contiguous(), "sum", group_name)
    return torch.ops._c10d_functional.wait_tensor(y)


def all_gather_last(x: Tensor, world: int, group_name: str, mode: str = "functional") -> Tensor:
    """Concatenate every rank's x along the last dimension (rank order)."""
    x = x.contiguous()
    if mode == "inplace":
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x, group=_group(group_name))
        return torch.cat(parts, dim=-1)
    y = torch.ops._c10d_functional.all_gather_into_tensor(x, world, group_name)
    y = torch.ops._c10d_functional.wait_tensor(y)  # [world * B, ..., n]
    y = y.view(world, *x.shape).movedim(0, -2)  # [B, ..., world, n]
    return y.reshape(*x.shape[:-1], world * x.shape[-1])


# ------------------------------------------------------------------------------------------------
# Sharding
# ------------------------------------------------------------------------------------------------


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


def _linear(weight: Tensor, requires_grad: bool, cls: type[nn.Linear] = nn.Linear, **kw: Any) -> nn.Linear:
    with torch.device("meta"):
        lin = cls(weight.shape[1], weight.shape[0], bias=False, **kw) if cls is nn.Linear else cls(weight, **kw)
    lin.weight = nn.Parameter(weight, requires_grad=requires_grad)
    return lin


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
        att = self.layers[0].attention
        # Transformer.setup_caches sizes every layer's cache from self.args: hand it the per-rank head counts
        self.args = replace(full, n_heads=att.n_heads, n_kv_heads=att.n_kv_heads)
        try:
            super().setup_caches(max_batch_size, max_seq_len, kv_dtype)
        finally:
            self.args = full


@torch.no_grad()
def shard_model(model: Transformer, tp: TPGroup, shards: dict[str, Tensor] | None = None) -> Transformer:
    """Keep this rank's shard of a full model, in place (the full weights are released). tp 1: unchanged.

    shards: this rank's parts already cut (`random_shards`); the model's own weights are then unused
    (they may live on the meta device).
    """
    args = model.args
    check_tp(args, tp.world)
    model.tp_rank, model.tp_world = tp.rank, tp.world
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
        att, ffn = layer.attention, layer.feed_forward
        att.wq = _linear(part(p + "attention.wq.weight"), grad)
        att.wk = _linear(part(p + "attention.wk.weight"), grad)
        att.wv = _linear(part(p + "attention.wv.weight"), grad)
        att.wo = _linear(part(p + "attention.wo.weight"), grad, RowParallelLinear, group_name=tp.group_name,
                         mode=tp.mode)
        att.n_heads, att.n_kv_heads = args.n_heads // tp.world, kv_local
        att.kv_cache = None
        ffn.w1 = _linear(part(p + "feed_forward.w1.weight"), grad)
        ffn.w3 = _linear(part(p + "feed_forward.w3.weight"), grad)
        ffn.w2 = _linear(part(p + "feed_forward.w2.weight"), grad, RowParallelLinear, group_name=tp.group_name,
                         mode=tp.mode)
    model.output = _linear(part("output.weight"), grad, VocabParallelLinear, vocab_size=args.vocab_size,
                           world=tp.world, group_name=tp.group_name, mode=tp.mode)
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
    if state_dict is None:
        model = build_model(args, device=tp.device, dtype=dtype, seed=seed)
    else:
        from dspark_sim.engine.checkpoints import _load_into

        model = build_model(args, device=tp.device, dtype=dtype, seed=seed)
        _load_into(model, {k: v.to(dtype) for k, v in state_dict.items()}, source)
    return shard_model(model.eval(), tp)


def weight_bytes(model: nn.Module) -> int:
    """Bytes of this rank's parameters (shared tensors once)."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel() * p.element_size()
    return total


# ------------------------------------------------------------------------------------------------
# Identical decisions on every rank
# ------------------------------------------------------------------------------------------------


class LeaderPolicy:
    """A speculation policy whose draft / verify lengths rank 0 decides and broadcasts to the others.

    Every rank still calls `observe` (its own copy of the policy state is harmless: only rank 0's is
    read). With tp 1 it is the policy itself. A policy whose lengths follow from the batch's shape alone
    (`decides_from_shape`: no speculation, fixed gamma, a batch-size table) is decided by every rank for
    itself: each computes the same lengths, and the two host broadcasts a step would cost (about 0.8 ms
    together over gloo on the H200 machines, validation/README.md section 5) are saved.
    """

    def __init__(self, policy: Any, tp: TPGroup):
        from dspark_sim.core.policies import make_policy

        self.policy = policy if hasattr(policy, "draft_lengths") else make_policy(policy)
        self.tp = tp
        self.shape_only = bool(getattr(self.policy, "decides_from_shape", False))

    def __getattr__(self, name: str) -> Any:  # gamma_max and anything else the loop reads
        return getattr(self.__dict__["policy"], name)

    def _decide(self, fn: Callable[[], Any], n: int) -> np.ndarray:
        if self.tp.world == 1 or self.shape_only:
            return np.asarray(fn(), dtype=np.int64)
        buf = torch.zeros(n, dtype=torch.int64)
        if self.tp.leader:
            buf = torch.as_tensor(np.asarray(fn(), dtype=np.int64).reshape(n))
        dist.broadcast(buf, src=0, group=self.tp.cpu_group)
        return buf.numpy()

    def draft_lengths(self, view: Any) -> np.ndarray:
        return self._decide(lambda: self.policy.draft_lengths(view), len(view.context_lens))

    def verify_lengths(self, view: Any, draft: Any, confidences: Any = None) -> np.ndarray:
        return self._decide(lambda: self.policy.verify_lengths(view, draft, confidences), len(view.context_lens))

    def observe(self, view: Any, verified: Any, accepted: Any, step_time_s: float) -> None:
        self.policy.observe(view, verified=verified, accepted=accepted, step_time_s=step_time_s)


def broadcast_object(obj: Any, tp: TPGroup) -> Any:
    """Rank 0's `obj` on every rank (prompts, options)."""
    if tp.world == 1:
        return obj
    box = [obj if tp.leader else None]
    dist.broadcast_object_list(box, src=0, group=tp.cpu_group)
    return box[0]


def ranks_agree(obj: Any, tp: TPGroup) -> bool:
    """Whether every rank holds the same (picklable, comparable) object, e.g. the generated tokens."""
    if tp.world == 1:
        return True
    out: list[Any] = [None] * tp.world
    dist.all_gather_object(out, obj, group=tp.cpu_group)
    return all(o == out[0] for o in out)


def tp_generator(tp: TPGroup, seed: int) -> torch.Generator:
    """The sampling generator: the same seed on every rank, so device-side draws agree."""
    return torch.Generator(device=tp.device).manual_seed(seed)


# ------------------------------------------------------------------------------------------------
# Starting processes without torchrun
# ------------------------------------------------------------------------------------------------


def _worker_entry(rank: int, world: int, device: str, store: str, out: str, threads: int,
                  fn: Callable[[TPGroup, Any], Any], payload: Any) -> None:
    if device == "cpu":
        torch.set_num_threads(threads)
    os.environ["LOCAL_RANK"] = str(rank)
    tp = init_tp(device, rank=rank, world=world, init_method=f"file://{store}")
    try:
        result = fn(tp, payload)
        if tp.leader:
            torch.save({"ok": result}, out)
    except InputError as exc:  # bad input seen by every rank alike: hand the one line to the parent
        if tp.leader:
            torch.save({"input_error": (exc.source, exc.field, exc.message)}, out)
    finally:
        destroy_tp()
    # the work is done and saved: leave without the native teardown, which has aborted processes at
    # exit (functional collectives on gloo); an exception above still propagates with its traceback
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_workers(fn: Callable[[TPGroup, Any], Any], world: int, payload: Any = None, *,
                device: str = "cpu", threads: int | None = None) -> Any:
    """Start `world` local processes (spawn), each joins a fresh group and runs fn(tp, payload);
    returns rank 0's result. `fn` must be importable (a module-level function).

    CPU: gloo, `threads` torch threads per rank (default: the cores split over the ranks);
    CUDA: NCCL, one GPU per rank.
    """
    import torch.multiprocessing as mp

    apply_safe_env()
    if world < 1:
        raise InputError("tp", "--tp", f"must be >= 1 (got {world})")
    if device == "cuda":
        have = torch.cuda.device_count()
        if have < world:
            raise InputError("tp", "--tp", f"tp {world} needs {world} GPUs, this machine has {have}")
    threads = threads or max(1, (os.cpu_count() or 1) // world)
    with tempfile.TemporaryDirectory(prefix="dspark-tp-") as tmp:
        store, out = os.path.join(tmp, "store"), os.path.join(tmp, "result.pt")
        mp.start_processes(_worker_entry, args=(world, device, store, out, threads, fn, payload), nprocs=world,
                           join=True, start_method="spawn")
        res = torch.load(out, weights_only=False)
    if "input_error" in res:
        raise InputError(*res["input_error"])
    return res["ok"]


# ------------------------------------------------------------------------------------------------
# `generate`: one TP run (baseline + speculative), optionally checked against the single-process engine
# ------------------------------------------------------------------------------------------------


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
            return torch.load(self.state_dict_path, map_location="cpu", weights_only=True)
        if self.folder:
            from safetensors.torch import load_file

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
        from dspark_sim.engine.checkpoints import _load_into

        model = build_model(self.args, device=device, dtype=dtype, seed=self.seed)
        sd = self.full_state()
        if sd is not None:
            _load_into(model, {k: v.to(dtype) for k, v in sd.items()}, self.name or "model")
        return model.eval()


@dataclass(frozen=True)
class GenerateJob:
    target: ModelSource
    draft: ModelSource | None
    prompts: list[list[int]]
    max_new_tokens: int = 16
    policy: Any = None  # a schema policy spec; None = FixedGamma(gamma)
    policy_name: str | None = None  # or by `dspark-sim engine generate` name: fixed|none|confidence|dspark
    threshold: float = 0.5  # the confidence policy's survival threshold
    gamma: int = 3
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    dtype: str = "fp32"
    sample_seed: int = 0
    check: bool = False  # rank 0 also runs the single-process engine and compares
    logits_probe: bool = False  # also return the target's logits for the prompts (cached prefill + 1 step)
    baseline: bool = True


def _policy_of(job: GenerateJob, target: Transformer) -> Any:
    """The job's policy. 'dspark' profiles SPS(B) on `target` now: under TP every rank runs those
    passes together, and rank 0's curve is the one that decides (LeaderPolicy)."""
    from dspark_sim.config.schema import FixedGamma, NoSpeculation

    if job.policy is not None:
        return job.policy
    if job.policy_name is not None:
        from dspark_sim.engine.sps import engine_policy

        return engine_policy(_named_policy(job.policy_name, job.gamma, job.threshold), target, len(job.prompts))
    return FixedGamma(gamma=job.gamma) if job.gamma > 0 and job.draft is not None else NoSpeculation()


#: this command's `--policy` names (each with `--gamma`, and `--threshold` for confidence)
POLICIES = ("fixed", "none", "confidence", "dspark")


def _named_policy(name: str, gamma: int, threshold: float) -> Any:
    """The policy spec of a `--policy` name."""
    from dspark_sim.config.schema import ConfidenceThreshold, DSparkScheduler, FixedGamma, NoSpeculation

    if name == "none" or gamma == 0:
        return NoSpeculation()
    if name == "fixed":
        return FixedGamma(gamma=gamma)
    if name == "confidence":
        return ConfidenceThreshold(gamma_max=gamma, threshold=threshold)
    return DSparkScheduler(gamma_max=gamma)


def _probe_logits(model: Transformer, prompts: list[list[int]]) -> Tensor:
    """Logits of a cached prefill of the (ragged, right-padded) prompts, then of one decode step."""
    from dspark_sim.engine.caches import prompt_tensor

    width = max(map(len, prompts))
    model.setup_caches(len(prompts), width + 4)
    buf, lens = prompt_tensor(prompts, width, model.device)
    pre = model(buf, torch.zeros_like(lens))
    nxt = pre.gather(1, (lens - 1).view(-1, 1, 1).expand(-1, 1, pre.shape[-1])).argmax(-1)
    step = model(nxt, lens)
    return torch.cat([pre, step], dim=1).detach().cpu()


def _run_job(target: Transformer, draft: Transformer | None, job: GenerateJob, tp: TPGroup | None) -> dict[str, Any]:
    from dspark_sim.engine.generate import generate_baseline, speculative_generate
    from dspark_sim.engine.sampling import Sampling

    sampling = Sampling(job.temperature, job.top_k, job.top_p)
    policy = _policy_of(job, target)
    dev = target.device

    def gen() -> torch.Generator:
        return torch.Generator(device=dev).manual_seed(job.sample_seed)

    out: dict[str, Any] = {}
    if job.logits_probe:
        out["logits"] = _probe_logits(target, job.prompts)
    if job.baseline:
        base = generate_baseline(target, job.prompts, job.max_new_tokens, sampling, generator=gen())
        out["baseline"] = {"tokens": base.tokens, "tok_s": base.tokens_per_s,
                           "decode_tok_s": base.decode_tokens_per_s}
    pol = LeaderPolicy(policy, tp) if tp is not None else policy
    spec = speculative_generate(target, draft, job.prompts, job.max_new_tokens, pol, sampling, generator=gen())
    out["speculative"] = {"tokens": spec.tokens, "tok_s": spec.tokens_per_s, "decode_tok_s": spec.decode_tokens_per_s,
                          "tau": spec.tau, "acceptance_by_position": spec.acceptance_by_position(),
                          "target_passes": spec.target_passes}
    return out


def generate_job(tp: TPGroup, job: GenerateJob) -> dict[str, Any] | None:
    """Run `job` on this rank's shards (a worker function for run_workers or torchrun); rank 0 returns
    {"tp": ..., "baseline": ..., "speculative": ..., "ranks_agree": ..., ["logits"], ["reference"]}."""
    dtype = WEIGHT_DTYPES[job.dtype]
    job = replace(job, prompts=broadcast_object(job.prompts, tp))  # rank 0's prompts, whatever the launcher
    check_tp(job.target.args, tp.world, "target")
    if job.draft is not None:
        check_tp(job.draft.args, tp.world, "draft")
    t0 = time.perf_counter()
    target = job.target.build(tp, dtype)
    draft = job.draft.build(tp, dtype) if job.draft is not None else None
    load_s = time.perf_counter() - t0
    res = _run_job(target, draft, job, tp)
    tokens = (res.get("baseline", {}).get("tokens"), res["speculative"]["tokens"])
    agree = ranks_agree(tokens, tp)
    res.update(tp=tp.world, backend=tp.backend, device=str(tp.device), ranks_agree=agree, load_s=load_s,
               weight_bytes_per_rank=weight_bytes(target) + (weight_bytes(draft) if draft is not None else 0))
    if job.check and tp.leader:
        del target, draft
        ref_t = job.target.build_full(tp.device, dtype)
        ref_d = job.draft.build_full(tp.device, dtype) if job.draft is not None else None
        ref = _run_job(ref_t, ref_d, job, None)
        res["reference"] = ref
        res["check"] = _compare(res, ref)
    if tp.world > 1:
        dist.barrier(group=tp.cpu_group)
    return res if tp.leader else None


def generate_jobs(tp: TPGroup, jobs: list[GenerateJob]) -> list[dict[str, Any] | None]:
    """Several jobs in one group (one process start)."""
    return [generate_job(tp, job) for job in jobs]


def _first_divergence(a: list[list[int]], b: list[list[int]]) -> int | None:
    for x, y in zip(a, b, strict=True):
        for i, (u, v) in enumerate(zip(x, y, strict=True)):
            if u != v:
                return i
    return None


def _compare(res: dict[str, Any], ref: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind in ("baseline", "speculative"):
        if kind in res and kind in ref:
            out[f"{kind}_identical"] = res[kind]["tokens"] == ref[kind]["tokens"]
            out[f"{kind}_first_divergence"] = _first_divergence(res[kind]["tokens"], ref[kind]["tokens"])
    if "logits" in res and "logits" in ref:
        a, b = res["logits"].double(), ref["logits"].double()
        out["logits_max_abs_diff"] = float((a - b).abs().max())
        out["logits_max_abs"] = float(b.abs().max())
    return out


# ------------------------------------------------------------------------------------------------
# `measure`: timed baseline and speculative runs under TP (benchmarks/tp_engine.py)
# ------------------------------------------------------------------------------------------------


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
    from dspark_sim.engine.caches import cache_tokens

    cap = cache_tokens(cfg.prompt_len, cfg.new_tokens, cfg.gamma)
    over: dict[str, Any] = {"max_seq_len": cap + cfg.gamma + 8}
    target = ModelArgs.from_preset(cfg.target_shape, **over, **({"vocab_size": cfg.vocab_size} if cfg.vocab_size else {}))
    draft = (ModelArgs.from_preset(cfg.draft_shape, **over, vocab_size=target.vocab_size)
             if cfg.draft_shape else None)
    return target, draft, cap


def _graphed(target: Transformer, draft: Transformer | None, tp: TPGroup, batch: int, gamma: int,
             want: bool) -> tuple[Any, Any, str]:
    """CUDA-graph forwards with every shape of a run captured; eager (agreed by all ranks) if capture fails."""
    if not want or target.device.type != "cuda":
        return None, None, "eager"
    from dspark_sim.engine.cudagraphs import GraphedForward, precapture

    tf, df = GraphedForward(target), GraphedForward(draft) if draft is not None else None
    err = ""
    try:
        precapture(tf, df, batch, gamma)
    except Exception as exc:  # noqa: BLE001 - a capture failure falls back to eager, recorded in the report
        err = f"{type(exc).__name__}: {exc}"[:300]
    failed = torch.tensor([1 if err else 0])
    if tp.world > 1:
        dist.all_reduce(failed, op=dist.ReduceOp.MAX, group=tp.cpu_group)
    if int(failed):
        torch.cuda.synchronize()
        return None, None, f"eager (CUDA graph capture failed: {err or 'on another rank'})"
    return tf, df, "cuda-graphs"


def measure_engine(tp: TPGroup, cfg: MeasureConfig) -> dict[str, Any] | None:
    """Tokens/s of the plain loop and of speculative decoding (FixedGamma) per batch size on this TP group,
    an all-reduce profile (tp > 1) and optionally an engine profile for calibration. Rank 0 returns."""
    from dspark_sim.config.schema import FixedGamma
    from dspark_sim.engine.generate import generate_baseline, speculative_generate
    from dspark_sim.engine.sampling import Sampling

    targs, dargs, cap = measure_args(cfg)
    check_tp(targs, tp.world, cfg.target_shape)
    if dargs is not None and not cfg.replicate_draft:
        check_tp(dargs, tp.world, cfg.draft_shape or "draft")
    dtype = WEIGHT_DTYPES[cfg.dtype]
    target = build_tp_model(targs, tp, dtype=dtype, seed=cfg.seed)
    draft = None
    if dargs is not None and cfg.replicate_draft:  # the same seeded weights on every rank, unsharded
        draft = build_model(dargs, device=tp.device, dtype=dtype, seed=cfg.seed + 1).eval()
    elif dargs is not None:
        draft = build_tp_model(dargs, tp, dtype=dtype, seed=cfg.seed + 1)
    sampling = Sampling(cfg.temperature)
    rows = []
    modes = set()
    for b in cfg.batch_sizes:
        gen_p = torch.Generator().manual_seed(cfg.seed + b)
        prompts = torch.randint(0, targs.vocab_size, (b, cfg.prompt_len), generator=gen_p).tolist()
        target.setup_caches(b, cap)
        if draft is not None:
            draft.setup_caches(b, cap)
        tf, df, mode = _graphed(target, draft, tp, b, cfg.gamma if draft is not None else 0, cfg.graphs)
        modes.add(mode)

        def base_run(tf: Any = tf, prompts: list[list[int]] = prompts) -> Any:
            return generate_baseline(target, prompts, cfg.new_tokens, sampling, forward=tf,
                                     generator=tp_generator(tp, cfg.seed))

        def spec_run(tf: Any = tf, df: Any = df, prompts: list[list[int]] = prompts) -> Any:
            pol = LeaderPolicy(FixedGamma(gamma=cfg.gamma), tp)
            return speculative_generate(target, draft, prompts, cfg.new_tokens, pol, sampling,
                                        generator=tp_generator(tp, cfg.seed), target_forward=tf, draft_forward=df)

        row: dict[str, Any] = {"batch": b, "forward": mode, "cache_len": cap}
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
        rows.append(row)
    out: dict[str, Any] = {
        "tp": tp.world, "backend": tp.backend, "device": _device_name(tp.device), "rows": rows,
        "forward": sorted(modes), "weight_bytes_per_rank": weight_bytes(target),
        "draft_weight_bytes_per_rank": weight_bytes(draft) if draft is not None else 0,
        "draft_replicated": cfg.replicate_draft and draft is not None,
    }
    if tp.world > 1 and cfg.allreduce_tokens:
        from dspark_sim.measure.profile import profile_allreduce

        act_bytes = torch.tensor([], dtype=dtype).element_size()
        samples = profile_allreduce(tp, list(cfg.allreduce_tokens), targs.dim, dtype, repeats=cfg.allreduce_repeats)
        if cfg.allreduce_between_matmuls:  # as in the model: after the down projection's shard
            samples += profile_allreduce(tp, list(cfg.allreduce_tokens), targs.dim, dtype,
                                         repeats=cfg.allreduce_repeats, matmul_in=targs.ffn_hidden // tp.world)
        out["allreduce"] = [s.model_dump() for s in samples]
        out["allreduce_act_bytes"] = act_bytes
    if cfg.profile and tp.world == 1:
        out["profile"] = _profile_for_calibration(target, draft, cfg, cap)
    return out if tp.leader else None


def _device_name(dev: torch.device) -> str:
    return torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"


def _repeat(run: Callable[[], Any], repeats: int, tp: TPGroup) -> dict[str, Any]:
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
                             cap: int) -> dict[str, Any]:
    """Pass and step timings of this (TP 1) configuration, as `dspark-sim profile` records them."""
    from dspark_sim.measure.profile import build_profile, profile_passes, profile_steps

    dev = target.device
    tf = df = None
    if dev.type == "cuda" and cfg.graphs:
        from dspark_sim.engine.cudagraphs import GraphedForward

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
                        created_by="dspark_sim.engine.tp measure (TP 1)")
    return doc.model_dump(mode="json")


# ------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------


def _csv_ints(text: str, option: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise InputError("tp", option, f"expected comma-separated whole numbers, got {text!r}") from None
    if not vals or min(vals) < 1:
        raise InputError("tp", option, f"expected positive whole numbers, got {text!r}")
    return vals


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m dspark_sim.engine.tp",
        description="Tensor-parallel engine runs. Under torchrun every process is one rank "
                    "(torchrun --nproc-per-node N -m dspark_sim.engine.tp ...); started plainly, it starts "
                    "--tp local processes itself.")
    sub = p.add_subparsers(dest="cmd", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--tp", type=int, default=None, help="TP degree (default: WORLD_SIZE under torchrun, else 2)")
    common.add_argument("--device", default="cpu", help="cpu (gloo) | cuda (NCCL, one GPU per rank)")
    common.add_argument("--dtype", default="fp32", help="fp32 | bf16 | fp16 | fp64")
    common.add_argument("--shape", default="test-target", help="target shape (model preset) with random weights")
    common.add_argument("--json", action="store_true", help="print the JSON document")
    common.add_argument("--out", "-o", type=Path, default=None, help="also write the JSON document here")

    g = sub.add_parser("generate", parents=[common], help="baseline + speculative decoding under TP")
    g.add_argument("--draft-shape", default="test-draft", help="draft shape (random weights); 'none' = no draft")
    g.add_argument("--pair", type=Path, default=None, help="a trained pair folder (target.* + draft.*) instead")
    g.add_argument("--seed", type=int, default=0, help="weights seed (random shapes)")
    g.add_argument("--prompt", action="append", default=None, help="prompt text (byte-level vocabularies)")
    g.add_argument("--prompt-len", type=int, default=12, help="random-token prompt length (without --prompt)")
    g.add_argument("--batch-size", type=int, default=2)
    g.add_argument("--max-new-tokens", type=int, default=24)
    g.add_argument("--gamma", type=int, default=3, help="draft tokens per step (gamma_max for adaptive policies)")
    g.add_argument("--policy", default="fixed", help="fixed | none | confidence | dspark (rank 0 decides)")
    g.add_argument("--threshold", type=float, default=0.5, help="confidence policy: survival threshold")
    g.add_argument("--temperature", type=float, default=0.0)
    g.add_argument("--sample-seed", type=int, default=0)
    g.add_argument("--check", action="store_true",
                   help="rank 0 also runs the single-process engine on the full weights and compares")

    a = sub.add_parser("allreduce", parents=[common],
                       help="all-reduce microbenchmark (engine message sizes) + interconnect fit")
    a.add_argument("--hidden", type=int, default=None, help="hidden size (default: the --shape's)")
    a.add_argument("--tokens", default="1,2,4,8,16,32,64,128,256,512",
                   help="tokens per all-reduce: message = tokens x hidden x dtype bytes")
    a.add_argument("--repeats", type=int, default=10)
    a.add_argument("--between-matmuls", action="store_true",
                   help="time each all-reduce after the row-parallel matmul it reduces, as the model runs it "
                        "(the --shape's down projection shard), instead of back to back")
    a.add_argument("--hardware", default=None,
                   help="hardware profile (name or YAML) to write the fitted interconnect into")
    a.add_argument("--hardware-out", type=Path, default=None, help="calibrated hardware YAML to write")
    return p


def _model_args(shape: str, option: str, **over: Any) -> ModelArgs:
    try:
        return ModelArgs.from_preset(shape, **over)
    except KeyError as exc:
        raise InputError("tp", option, str(exc.args[0])) from None


def _generate_job(opts: argparse.Namespace, tp: int) -> GenerateJob:
    """Validate everything before any process group exists (so bad input is one line, no hang)."""
    from dspark_sim.engine.checkpoints import read_checkpoint_meta

    if opts.dtype not in WEIGHT_DTYPES:
        raise InputError("tp", "--dtype", f"unknown {opts.dtype!r} (allowed: {', '.join(WEIGHT_DTYPES)})")
    for name in ("batch_size", "max_new_tokens", "prompt_len"):
        if getattr(opts, name) < 1:
            raise InputError("tp", "--" + name.replace("_", "-"), f"must be >= 1 (got {getattr(opts, name)})")
    if opts.gamma < 0:
        raise InputError("tp", "--gamma", f"must be >= 0 (got {opts.gamma})")
    if opts.policy not in POLICIES:
        raise InputError("tp", "--policy", f"unknown policy {opts.policy!r} (allowed: {', '.join(POLICIES)})")
    if not 0.0 <= opts.threshold <= 1.0:
        raise InputError("tp", "--threshold", f"must be in [0, 1] (got {opts.threshold})")
    if opts.pair is not None:
        t_meta = read_checkpoint_meta(opts.pair, "target")
        d_meta = read_checkpoint_meta(opts.pair, "draft")
        target = ModelSource(ModelArgs.from_dict(t_meta["model_args"]), folder=str(opts.pair), name="target")
        draft: ModelSource | None = ModelSource(ModelArgs.from_dict(d_meta["model_args"]), folder=str(opts.pair),
                                                name="draft")
    else:
        targs = _model_args(opts.shape, "--shape")
        target = ModelSource(targs, seed=opts.seed, name=opts.shape)
        draft = None
        if opts.draft_shape != "none":
            dargs = _model_args(opts.draft_shape, "--draft-shape", vocab_size=targs.vocab_size)
            draft = ModelSource(dargs, seed=opts.seed + 1, name=opts.draft_shape)
    check_tp(target.args, tp, "target" if opts.pair else opts.shape)
    if draft is not None:
        check_tp(draft.args, tp, "draft" if opts.pair else opts.draft_shape)
    vocab = target.args.vocab_size
    if opts.prompt:
        from dspark_sim.engine.data import encode

        if vocab < 256:
            raise InputError("tp", "--prompt", f"text prompts need a byte-level vocabulary (this one has {vocab})")
        texts = list(opts.prompt)
        prompts = [encode(texts[i % len(texts)]) for i in range(opts.batch_size)]
        if any(not p for p in prompts):
            raise InputError("tp", "--prompt", "prompts must not be empty")
    else:
        g = torch.Generator().manual_seed(opts.seed)
        lens = torch.randint(max(1, opts.prompt_len // 2), opts.prompt_len + 1, (opts.batch_size,), generator=g)
        prompts = [torch.randint(0, vocab, (int(n),), generator=g).tolist() for n in lens]
    need = max(map(len, prompts)) + opts.max_new_tokens + 3 * opts.gamma + 4
    limit = min(target.args.max_seq_len, draft.args.max_seq_len if draft else target.args.max_seq_len)
    if need > limit:
        raise InputError("tp", "--max-new-tokens", f"prompt + new tokens exceed the models' {limit}-token context")
    return GenerateJob(target, draft, prompts, opts.max_new_tokens, gamma=opts.gamma if draft else 0,
                       policy_name=opts.policy if draft else "none", threshold=opts.threshold,
                       temperature=opts.temperature, dtype=opts.dtype, sample_seed=opts.sample_seed, check=opts.check,
                       logits_probe=opts.check)


@dataclass(frozen=True)
class AllReduceJob:
    tokens: tuple[int, ...]
    hidden: int
    dtype: str
    repeats: int
    matmul_in: int | None = None  # time each all-reduce after a [tokens, matmul_in] x [matmul_in, hidden] matmul


def allreduce_job(tp: TPGroup, job: AllReduceJob) -> dict[str, Any] | None:
    """Worker: the all-reduce profile of this group (rank 0 returns its JSON document)."""
    from dspark_sim.measure.profile import allreduce_profile

    doc = allreduce_profile(tp, list(job.tokens), job.hidden, WEIGHT_DTYPES[job.dtype], repeats=job.repeats,
                            created_by="python -m dspark_sim.engine.tp allreduce", matmul_in=job.matmul_in)
    return doc.model_dump(mode="json") if tp.leader else None


def _launch(fn: Callable[[TPGroup, Any], Any], job: Any, tp: int | None, device: str) -> tuple[Any, bool]:
    """Run fn on every rank: this process is one rank under torchrun, else start tp processes.
    Returns (rank 0's result or None on other ranks, whether this process is the leader)."""
    if under_torchrun():
        tpg = init_tp(device)
        try:
            return fn(tpg, job), tpg.leader
        finally:
            destroy_tp()
    return run_workers(fn, tp or 2, job, device=device), True


def _degree(opts: argparse.Namespace) -> int:
    if opts.device not in ("cpu", "cuda"):
        raise InputError("tp", "--device", f"got {opts.device!r}, allowed: cpu, cuda")
    if opts.device == "cuda" and not torch.cuda.is_available():
        raise InputError("tp", "--device", "cuda requested but torch sees no CUDA device")
    if under_torchrun():
        return check_world(opts.tp, int(os.environ["WORLD_SIZE"]))
    tp = 2 if opts.tp is None else opts.tp
    if tp < 1:
        raise InputError("tp", "--tp", f"must be >= 1 (got {tp})")
    if opts.device == "cuda" and torch.cuda.device_count() < tp:
        raise InputError("tp", "--tp", f"tp {tp} needs {tp} GPUs, this machine has {torch.cuda.device_count()}")
    return tp


def _emit(doc: dict[str, Any], opts: argparse.Namespace, summary: list[str]) -> None:
    text = json.dumps(doc, indent=2, default=_jsonable)
    if opts.out is not None:
        from dspark_sim.config.io import write_atomic

        write_atomic(opts.out, text + "\n")
    print(text if opts.json else "\n".join(summary))


def _jsonable(o: Any) -> Any:
    if isinstance(o, Tensor):
        return None  # logits stay out of the document
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(type(o).__name__)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except InputError as exc:
        rank = _env_int("RANK")
        if rank in (None, 0):
            print(f"error: {exc}", file=sys.stderr)
        return 2


def _main(argv: Sequence[str] | None) -> int:
    opts = _parser().parse_args(argv)
    tp = _degree(opts)
    if opts.cmd == "generate":
        job = _generate_job(opts, tp)
        res, lead = _launch(generate_job, job, tp, opts.device)
        if not lead:
            return 0
        res.pop("logits", None)
        if "reference" in res:
            res["reference"].pop("logits", None)
        spec = res["speculative"]
        lines = [f"tp {res['tp']} ({res['backend']}, {res['device']}): ranks agree {res['ranks_agree']}",
                 f"speculative: {spec['decode_tok_s']:.1f} decode tok/s, tau {spec['tau']:.2f}"]
        if "baseline" in res:
            lines.append(f"baseline:    {res['baseline']['decode_tok_s']:.1f} decode tok/s")
        if "check" in res:
            lines.append(f"single-process check: {res['check']}")
        _emit(res, opts, lines)
        return 0
    # allreduce
    if opts.dtype not in WEIGHT_DTYPES:
        raise InputError("tp", "--dtype", f"unknown {opts.dtype!r} (allowed: {', '.join(WEIGHT_DTYPES)})")
    shape_args = _model_args(opts.shape, "--shape")
    hidden = opts.hidden or shape_args.dim
    tokens = _csv_ints(opts.tokens, "--tokens")
    base = None
    if opts.hardware is not None:
        from dspark_sim.config.loader import load_hardware_profile

        base = load_hardware_profile(opts.hardware)
    if tp < 2:
        raise InputError("tp", "--tp", "an all-reduce profile needs at least 2 ranks")
    matmul_in = shape_args.ffn_hidden // tp if opts.between_matmuls else None
    doc, lead = _launch(allreduce_job, AllReduceJob(tokens, hidden, opts.dtype, opts.repeats, matmul_in), tp,
                        opts.device)
    if not lead:
        return 0
    from dspark_sim.fit.calibrate import apply_interconnect_fit, fit_interconnect, interconnect_yaml

    fit = fit_interconnect(doc["samples"], base)
    doc["fit"] = fit.to_dict()
    context = "between matmuls" if matmul_in else "back to back"
    lines = [f"all-reduce over {doc['world_size']} ranks ({doc['backend']}, {doc['mode']}, {context}):"]
    for s in doc["samples"]:
        lines.append(f"  {s['message_bytes']:>10d} B  {s['median_s'] * 1e6:10.1f} us")
    lines.append(f"fit: latency {fit.latency_us:.2f} us per hop, bandwidth {fit.bandwidth_gbps:.3f} GB/s "
                 f"(median |error| {fit.median_abs_error_pct:.1f}%)")
    if base is not None and opts.hardware_out is not None:
        from dspark_sim.config.io import write_atomic

        hw = apply_interconnect_fit(base, fit)
        write_atomic(opts.hardware_out, interconnect_yaml(hw, fit, opts.hardware))
        lines.append(f"-> {opts.hardware_out}")
    _emit(doc, opts, lines)
    return 0


if __name__ == "__main__":
    code = main()
    if under_torchrun():
        # Every rank's work is done and rank 0's document written: leave without the interpreter's
        # native teardown, which has aborted a gloo rank at exit (SIGABRT) on some machines and made
        # torchrun kill the other ranks. Errors before this point still raise with their traceback.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
