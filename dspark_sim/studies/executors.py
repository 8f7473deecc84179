"""Map a picklable function over independent tasks, yielding results as they finish.

Three executors: `inline` (this process, in order), `local` (a process pool with the 'forkserver'
or 'spawn' context, so no threads or locks are inherited) and `ray` (a local or remote Ray cluster;
Ray is an optional extra, imported only when chosen). Sweeps, plans and validation all run their
points through `map_unordered`; results come back in completion order.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from multiprocessing.context import BaseContext
from typing import Any

from dspark_sim.config.errors import InputError

EXECUTORS = ("local", "ray", "inline")


def mp_context() -> BaseContext:
    """'forkserver' where the platform has it (no inherited threads or locks), else 'spawn'."""
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


def default_workers() -> int:
    return max(1, os.cpu_count() or 1)


def map_unordered(fn: Callable[[Any], Any], tasks: list[Any], executor: str = "local", workers: int | None = None,
                  ray_address: str | None = None) -> Iterator[Any]:
    """Yield fn(task) for every task, in completion order, on the chosen executor."""
    if executor not in EXECUTORS:
        raise InputError("--executor", None, f"got {executor!r}, allowed: {', '.join(EXECUTORS)}")
    if not tasks:
        return
    workers = workers or default_workers()
    if workers < 1:
        raise InputError("--workers", None, f"must be >= 1, got {workers}")
    if executor == "inline":
        for t in tasks:
            yield fn(t)
    elif executor == "local":
        yield from _map_local(fn, tasks, workers)
    else:
        yield from _map_ray(fn, tasks, workers, ray_address)


def _map_local(fn: Callable[[Any], Any], tasks: list[Any], workers: int) -> Iterator[Any]:
    pool = ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=mp_context())
    try:
        pending = {pool.submit(fn, t) for t in tasks}
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                yield fut.result()
    finally:
        # on Ctrl-C / kill of the consumer: drop queued tasks, do not wait for running ones
        pool.shutdown(wait=False, cancel_futures=True)


def _map_ray(fn: Callable[[Any], Any], tasks: list[Any], workers: int, address: str | None) -> Iterator[Any]:
    try:
        import ray  # an optional extra: imported only when chosen
    except ImportError:
        raise InputError("--executor", None, "ray is not installed (pip install 'dspark-sim[ray]')") from None
    started = False
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                  "logging_level": "ERROR", "configure_logging": True}
        try:
            if address:
                ray.init(address=address, **kwargs)
            else:
                ray.init(num_cpus=workers, **kwargs)
        except Exception as exc:  # connection refused, bad address...
            raise InputError("--ray-address", address, f"cannot start/connect to Ray: {exc}") from None
        started = True
    try:
        remote = ray.remote(num_cpus=1, max_retries=2)(fn)
        refs = [remote.remote(t) for t in tasks]
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                yield ray.get(ref)
    finally:
        if started:
            ray.shutdown()
