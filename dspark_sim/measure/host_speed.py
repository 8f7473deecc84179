"""The machine's own speed, probed while `validate` profiles and measures on a CPU.

Why: on a shared 2-core CPU the same unchanging work runs ~30% faster in some minutes than in others
(benchmarks/cpu_host_states.py: the plain batch-16 loop read 7.1-7.5k tokens/s for three minutes, then
5.3-5.8k for four), so a profile and a measurement taken minutes apart disagree by whatever spell each
met. Short fixed yardsticks (a few tiny engine steps; a few passes of each model) timed every few
seconds give a timeline of the host's speed; every profile and measured timing is then scaled to one
reference speed (the run's median reading: steps and measured runs by the step yardstick, each model's
passes by its own), and the prediction made at that speed is compared with measurements brought to it.
Read right before a measured case, the step yardstick tracked the case's own speed with correlation
0.70-0.81 (tools/host_yardstick_tracking.py; docs/validation.md).

On a GPU the yardstick is not taken: its steps would drop the captured CUDA graphs, and the device's
speed is steady there (its estimator is the fastest repeat instead).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial

import torch

from dspark_sim.engine.model import Transformer
from dspark_sim.measure.profile import profile_steps
from dspark_sim.measure.timing import time_call

#: what each kind of timing is brought to one speed by: whole engine steps (the profile's steps and the
#: measured runs) by a few steps, each model's isolated passes by a few passes of that model. One yardstick
#: for all was tried first: in a slow spell it read 33% slow while the target's passes were 18% slower and
#: the draft's 3% (docs/validation.md).
KINDS = ("step", "target", "draft")


@dataclass(frozen=True)
class StepYardstick:
    """The step yardstick: plain and gamma-5 steps at batch 1 and 16, 64-token prompts, 8 new tokens each."""

    batch_sizes: tuple[int, ...] = (1, 16)
    gammas: tuple[int, ...] = (0, 5)
    prompt_lens: tuple[int, ...] = (64,)
    new_tokens: int = 8


STEP_YARDSTICK = StepYardstick()
#: the pass yardsticks: (batch, query tokens) at 64 cached tokens, each timed after warm-up calls
PASS_YARDSTICK = ((1, 1), (16, 1), (16, 6))


def _geomean(values: Iterable[float]) -> float:
    values = list(values)
    return math.exp(sum(math.log(v) for v in values) / len(values))


def yardstick_s(target: Transformer, draft: Transformer) -> dict[str, float]:
    """One reading of the yardsticks, seconds by kind (KINDS): the geometric mean of the step yardstick's
    four step times and of each model's pass shapes (about 0.35 s on the 2-core CPU, warm-ups included)."""
    y = STEP_YARDSTICK
    steps = profile_steps(target, draft, list(y.batch_sizes), list(y.gammas), list(y.prompt_lens), y.new_tokens,
                          repeats=1)
    out = {"step": _geomean(s.step_s for s in steps)}
    gen = torch.Generator(device="cpu").manual_seed(0)
    for kind, model in (("target", target), ("draft", draft)):
        times = []
        for b, q in PASS_YARDSTICK:
            model.setup_caches(b, 64 + q + 8)
            tokens = torch.randint(0, model.args.vocab_size, (b, q), generator=gen).to(model.device)
            positions = torch.full((b, 1), 64, dtype=torch.long, device=model.device) + torch.arange(
                q, device=model.device)
            with torch.no_grad():
                times.append(sorted(time_call(partial(model, tokens, positions), model.device, 3, 5))[2])
        out[kind] = _geomean(times)
    return out


@dataclass
class HostProbe:
    """A timeline of yardstick readings (seconds by kind), taken at most every `every_s` seconds when
    asked (`tick`)."""

    probe: Callable[[], dict[str, float]]
    every_s: float = 5.0
    timeline: list[tuple[float, dict[str, float]]] = field(default_factory=list)  # (perf_counter, readings)

    def tick(self, force: bool = False) -> None:
        """Read the yardsticks if the last reading is older than `every_s` (or `force`)."""
        if force or not self.timeline or time.perf_counter() - self.timeline[-1][0] >= self.every_s:
            start = time.perf_counter()
            value = self.probe()
            self.timeline.append(((start + time.perf_counter()) / 2.0, value))

    def at(self, t: float, kind: str) -> float:
        """The `kind` yardstick at moment `t` (perf_counter): log-linear between the readings around it."""
        if not self.timeline:
            raise ValueError("no yardstick readings yet")
        ts = [p[0] for p in self.timeline]
        vals = [p[1][kind] for p in self.timeline]
        if t <= ts[0]:
            return vals[0]
        if t >= ts[-1]:
            return vals[-1]
        i = next(k for k in range(1, len(ts)) if ts[k] >= t)
        w = (t - ts[i - 1]) / max(ts[i] - ts[i - 1], 1e-12)
        return math.exp(math.log(vals[i - 1]) + w * (math.log(vals[i]) - math.log(vals[i - 1])))

    def reference(self) -> dict[str, float]:
        """The run's reference speed: each kind's median reading."""
        return {k: statistics.median(p[1][k] for p in self.timeline) for k in self.timeline[0][1]}

    def relative_timeline(self) -> dict[str, list[tuple[float, float]]]:
        """Each kind's (seconds since the first reading, yardstick seconds), for the report."""
        t0 = self.timeline[0][0] if self.timeline else 0.0
        kinds = self.timeline[0][1] if self.timeline else {}
        return {k: [(round(t - t0, 3), round(v[k], 9)) for t, v in self.timeline] for k in kinds}
