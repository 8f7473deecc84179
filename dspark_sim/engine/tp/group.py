"""The tensor-parallel process group and its collectives.

One TP group per job: the whole world (torchrun's processes, or those `workers.run_workers` starts).
Device collectives go over NCCL on CUDA and gloo on CPU; host-side control messages (the policy's
lengths, agreement checks) always over a gloo group.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.distributed as dist
from torch import Tensor
from torch.distributed.distributed_c10d import _resolve_process_group

from dspark_sim.config.errors import InputError

if TYPE_CHECKING:
    from torch.distributed.distributed_c10d import GroupName

#: Keep NVLink multicast off in NCCL, PyTorch and NVSHMEM: on shared hosts it can take GPUs out of service.
SAFE_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


def apply_safe_env(env: MutableMapping[str, str] | None = None) -> MutableMapping[str, str]:
    """Set SAFE_ENV in `env` (default: this process's environment, inherited by its children)."""
    target: MutableMapping[str, str] = os.environ if env is None else env
    target.update(SAFE_ENV)
    return target


# Set on import as well as before every group is made (init_tp, run_workers): a caller that builds its
# own process group and then uses these layers still runs with multicast off.
apply_safe_env()


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


def env_int(name: str) -> int | None:
    """An integer environment variable (torchrun's RANK, WORLD_SIZE, LOCAL_RANK), None when unset."""
    v = os.environ.get(name)
    return int(v) if v not in (None, "") else None


def under_torchrun() -> bool:
    return env_int("WORLD_SIZE") is not None and env_int("RANK") is not None


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
    rank = env_int("RANK") if rank is None else rank
    world = env_int("WORLD_SIZE") if world is None else world
    if rank is None or world is None:
        raise InputError("tp", None, "no RANK / WORLD_SIZE: start under torchrun or through run_workers()")
    if device == "cuda":
        local = env_int("LOCAL_RANK")
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
    assert group is not None  # initialised just above
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


def all_reduce(x: Tensor, group_name: str, mode: str = "functional") -> Tensor:
    """Sum of x over the group (a new tensor)."""
    if mode == "inplace":
        y = x.contiguous().clone()
        dist.all_reduce(y, group=_resolve_process_group(cast("GroupName", group_name)))
        return y
    y = torch.ops._c10d_functional.all_reduce(x.contiguous(), "sum", group_name)
    return torch.ops._c10d_functional.wait_tensor(y)


def all_gather_last(x: Tensor, world: int, group_name: str, mode: str = "functional") -> Tensor:
    """Concatenate every rank's x along the last dimension (rank order)."""
    x = x.contiguous()
    if mode == "inplace":
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x, group=_resolve_process_group(cast("GroupName", group_name)))
        return torch.cat(parts, dim=-1)
    y = torch.ops._c10d_functional.all_gather_into_tensor(x, world, group_name)
    y = torch.ops._c10d_functional.wait_tensor(y)  # [world * B, ..., n]
    y = y.view(world, *x.shape).movedim(0, -2)  # [B, ..., world, n]
    return y.reshape(*x.shape[:-1], world * x.shape[-1])


# ------------------------------------------------------------------------------------------------
# Host-side agreement
# ------------------------------------------------------------------------------------------------


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


def any_rank(flag: bool, tp: TPGroup) -> bool:
    """Whether `flag` holds on any rank (e.g. a CUDA-graph capture failed somewhere): every rank gets
    the same answer, so all take the same fallback."""
    failed = torch.tensor([1 if flag else 0])
    if tp.world > 1:
        dist.all_reduce(failed, op=dist.ReduceOp.MAX, group=tp.cpu_group)
    return bool(int(failed))


def tp_generator(tp: TPGroup, seed: int) -> torch.Generator:
    """The sampling generator: the same seed on every rank, so device-side draws agree."""
    return torch.Generator(device=tp.device).manual_seed(seed)
