"""Wall-clock marks of a decoding run that add no host sync on a GPU."""

from __future__ import annotations

import time

import torch

#: a point in time: a recorded CUDA event, or perf_counter seconds on a CPU
Mark = torch.cuda.Event | float


class Clock:
    """Marks on CUDA are events, read only after the run's final sync, so timing a step costs no sync."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def mark(self) -> Mark:
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev
        return time.perf_counter()

    def seconds(self, a: Mark, b: Mark) -> float:
        """Seconds from mark a to mark b."""
        if isinstance(a, float) and isinstance(b, float):
            return b - a
        if isinstance(a, torch.cuda.Event) and isinstance(b, torch.cuda.Event):
            return a.elapsed_time(b) / 1000.0
        raise TypeError("both marks must come from one clock")

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()
