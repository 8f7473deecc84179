"""Running a function on every rank: under torchrun (this process is one rank) or by starting the
ranks as local processes (spawn) and handing rank 0's result back to the caller."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable
from typing import Any

import torch
import torch.multiprocessing as mp

from dspark_sim.config.errors import InputError
from dspark_sim.engine.tp.group import TPGroup, apply_safe_env, destroy_tp, init_tp, under_torchrun

#: a worker: runs on every rank with the rank's group and the job; rank 0's return value is the result
Worker = Callable[[TPGroup, Any], Any]


def _worker_entry(rank: int, world: int, device: str, store: str, out: str, threads: int,
                  fn: Worker, payload: Any) -> None:
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


def run_workers(fn: Worker, world: int, payload: Any = None, *, device: str = "cpu",
                threads: int | None = None) -> Any:
    """Start `world` local processes (spawn), each joins a fresh group and runs fn(tp, payload);
    returns rank 0's result. `fn` must be importable (a module-level function).

    CPU: gloo, `threads` torch threads per rank (default: the cores split over the ranks);
    CUDA: NCCL, one GPU per rank.
    """
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


def launch(fn: Worker, job: Any, tp: int | None, device: str) -> tuple[Any, bool]:
    """Run fn on every rank: this process is one rank under torchrun, else start tp (default 2) processes.
    Returns (rank 0's result, or None on other ranks; whether this process is the leader)."""
    if under_torchrun():
        tpg = init_tp(device)
        try:
            return fn(tpg, job), tpg.leader
        finally:
            destroy_tp()
    return run_workers(fn, tp or 2, job, device=device), True
