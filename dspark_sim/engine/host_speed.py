"""The machine's own speed, probed while `validate` profiles and measures on a CPU.

Why: on a shared 2-core CPU the same unchanging work runs ~30% faster in some minutes than in others
(benchmarks/cpu_host_states.py: the plain batch-16 loop read 7.1-7.5k tokens/s for three minutes, then
5.3-5.8k for four), so a profile and a measurement taken minutes apart disagree by whatever spell each
met. A short fixed yardstick (four tiny engine steps) timed every few seconds gives a timeline of the
host's speed; every profile and measured timing is then scaled to one reference speed (the median
yardstick of the run), and the prediction made at that speed is compared with measurements brought to
it. Right before a measured case, the yardstick tracked the case's own speed with correlation 0.7-0.9
(validation/README.md, session 13).

On a GPU the yardstick is not taken: its steps would drop the captured CUDA graphs, and the device's
speed is steady there (its estimator is the fastest repeat instead).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

#: the yardstick: plain and gamma-5 steps at batch 1 and 16, 64-token prompts, 8 new tokens each
YARDSTICK = dict(batch_sizes=[1, 16], gammas=[0, 5], prompt_lens=[64], new_tokens=8)


def yardstick_s(target, draft) -> float:
    """One reading of the yardstick: the geometric mean of its four configurations' step times (about
    0.3 s on the 2-core CPU, warm-up runs included)."""
    from dspark_sim.engine.profile import profile_steps

    steps = profile_steps(target, draft, YARDSTICK["batch_sizes"], YARDSTICK["gammas"], YARDSTICK["prompt_lens"],
                          YARDSTICK["new_tokens"], repeats=1)
    return math.exp(sum(math.log(s.step_s) for s in steps) / len(steps))


@dataclass
class HostProbe:
    """A timeline of yardstick readings, taken at most every `every_s` seconds when asked (`tick`)."""

    probe: Callable[[], float]
    every_s: float = 5.0
    timeline: list[tuple[float, float]] = field(default_factory=list)  # (perf_counter at the reading, seconds)

    def tick(self, force: bool = False) -> None:
        """Read the yardstick if the last reading is older than `every_s` (or `force`)."""
        if force or not self.timeline or time.perf_counter() - self.timeline[-1][0] >= self.every_s:
            start = time.perf_counter()
            value = self.probe()
            self.timeline.append(((start + time.perf_counter()) / 2.0, value))

    def at(self, t: float) -> float:
        """The yardstick at moment `t` (perf_counter): log-linear between the readings around it."""
        if not self.timeline:
            raise ValueError("no yardstick readings yet")
        ts = [p[0] for p in self.timeline]
        logs = [math.log(p[1]) for p in self.timeline]
        if t <= ts[0]:
            return self.timeline[0][1]
        if t >= ts[-1]:
            return self.timeline[-1][1]
        i = next(k for k in range(1, len(ts)) if ts[k] >= t)
        w = (t - ts[i - 1]) / max(ts[i] - ts[i - 1], 1e-12)
        return math.exp(logs[i - 1] + w * (logs[i] - logs[i - 1]))

    def reference(self) -> float:
        """The run's reference speed: the median reading."""
        return statistics.median(p[1] for p in self.timeline)

    def relative_timeline(self) -> list[tuple[float, float]]:
        """(seconds since the first reading, yardstick seconds), for the report."""
        t0 = self.timeline[0][0] if self.timeline else 0.0
        return [(round(t - t0, 3), round(v, 9)) for t, v in self.timeline]


def scaled(value: float, probe_s: float | None, reference_s: float) -> float:
    """A timing brought to the reference speed: taken while the yardstick read `probe_s` (slower than the
    reference: the timing shrinks)."""
    return value if probe_s is None else value * reference_s / probe_s
