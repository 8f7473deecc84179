"""Timing primitives shared by every engine measurement: a synchronised wall clock, the median and
spread of repeats, and a timing brought to a reference host speed."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
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


def median_spread(times: Sequence[float]) -> tuple[float, float]:
    """(median, (p90 - p10) / median) of repeated timings; the spread is 0 with fewer than 3."""
    med = statistics.median(times)
    if len(times) >= 3:
        p10, p90 = np.percentile(times, [10, 90])
        return med, float((p90 - p10) / med)
    return med, 0.0


def scaled(value: float, probe_s: float | None, reference_s: float) -> float:
    """A timing brought to the reference speed: taken while the yardstick read `probe_s` (slower than the
    reference: the timing shrinks)."""
    return value if probe_s is None else value * reference_s / probe_s
