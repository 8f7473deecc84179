"""Timing primitives shared by every engine measurement: a wall clock synchronised with the device,
and the host-speed yardstick a CPU measurement reads beside it."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

import torch


class HostClock(Protocol):
    """The host-speed yardstick a CPU measurement reads beside its timings (`host_speed.HostProbe`)."""

    def tick(self, force: bool = False) -> None: ...

    def at(self, t: float, kind: str) -> float: ...


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> list[float]:
    """Seconds of each of `repeats` calls of fn after `warmup` untimed ones, the device synchronised
    around every call."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return times
