"""The grid `dspark-sim validate` measures and predicts: its cases, and the figures each side gets.

A case is one engine configuration (temperature x batch x prompt length x policy); its policy is written
in the one policy shorthand (`dspark_sim.config.shorthand`: "fixed:3", "dspark:5"), the spelling the
reports store. Torch-free: the predict half (`validate --repredict`) reads the grid without the engine.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from dspark_sim.config.shorthand import ShortPolicy, draft_length, parse_policy
from dspark_sim.core.static_cache import cache_tokens

#: prompts measured per grid point (rounds x batch); the acceptance traces use ACCEPTANCE_PROMPTS others.
#: A point's measured tau is a mean over its prompts, the prediction's a mean over the traces' prompts:
#: with 16 and 32 greedy prompts their sampling errors alone put tau 5-6% apart at the median. Greedy
#: tau at gamma 5 varies by 24-27% (c.v.) from prompt to prompt (the tiny target falls into loops its
#: draft copies); splitting 384 windows at random, 48 measured against 96 held-apart prompts differ by
#: 10.8% at the 95th percentile, 96 against 192 by 7.7% (docs/validation.md, prompt counts). The pool
#: alternates acceptance and measurement windows, about 340 tokens apart, so neighbours pair up
#: (their taus correlate +0.2) and the two sets see the same files.
MEASURED_SEQUENCES = 16
ACCEPTANCE_PROMPTS = 192
#: timed repeats of every case, taken in rounds over the grid, each after a round of profiling
MEASURE_REPEATS = 3


def policy_spec(policy: str, sps_table: Mapping[int, float] | None = None) -> ShortPolicy:
    """A grid policy's spec; a DSpark scheduler reads SPS(B) from `sps_table` (the engine's measured one)."""
    return parse_policy(policy, source="validation grid", field="policy", sps_table=sps_table)


@dataclass(frozen=True)
class Case:
    temperature: float
    batch_size: int
    prompt_tokens: int
    policy: str  # the policy shorthand: "fixed:G" or "dspark:G"
    rounds: int
    new_tokens: int
    cross: bool = False

    @property
    def gamma_max(self) -> int:
        return draft_length(policy_spec(self.policy))

    @property
    def label(self) -> str:
        return f"T={self.temperature:g} B={self.batch_size} P={self.prompt_tokens} {self.policy}"

    @property
    def regime(self) -> str:
        size = "batch 1" if self.batch_size == 1 else ("batch <= 8" if self.batch_size <= 8 else "batch >= 16")
        kind = policy_spec(self.policy).kind
        return f"{kind}, {'greedy' if self.temperature == 0 else 'sampled'}, {size}"


def case_cache_tokens(case: Case) -> int:
    """The static cache the engine's run of this case attends over (the simulator is told the same)."""
    return cache_tokens(case.prompt_tokens, case.new_tokens, case.gamma_max)


@dataclass(frozen=True)
class Grid:
    temperatures: tuple[float, ...]
    batch_sizes: tuple[int, ...]
    prompt_tokens: tuple[int, ...]
    policies: tuple[str, ...]  # policy shorthands
    new_tokens: int
    cross_batch_sizes: tuple[int, ...] = ()
    calibrate_max_batch: int | None = None  # cross-prediction: fit only on batches up to this
    greedy_sequences: int = 16  # prompts measured per greedy or DSpark point
    sampled_sequences: int = MEASURED_SEQUENCES  # ... and per sampled fixed-gamma point (FULL: 48)
    min_rounds: int = 1  # ... and at least this many batches of them: large batches measure more prompts

    def cases(self) -> list[Case]:
        out = []
        for t in self.temperatures:
            for b in self.batch_sizes:
                for p in self.prompt_tokens:
                    for pol in self.policies:
                        # at least MEASURED_SEQUENCES prompts a point: tau varies a lot from prompt to
                        # prompt, and 4 prompts left batch-1 points' measured tau 20-25% off the trace's;
                        # greedy tau varies most (per-prompt alpha CV 13-18% against 4% sampled), and
                        # so does DSpark's, whose verify widths follow each prompt's confidences (per-prompt
                        # tau CV 21% sampled against 11-14% at fixed gamma; 16 sampled prompts measured
                        # tau 2.01 where 48 others gave 1.75: docs/validation.md, prompt counts).
                        # At batch 16 a round is cheap next to batch 1's: six rounds narrow tau's sampling
                        # error there, where the verify pass is widest and the speed-up most sensitive to it.
                        wide = t == 0.0 or policy_spec(pol).kind == "dspark"
                        n = max(self.greedy_sequences if wide else self.sampled_sequences, self.min_rounds * b)
                        out.append(Case(t, b, p, pol, rounds=max(1, n // b), new_tokens=self.new_tokens))
        for b in self.cross_batch_sizes:
            out.append(Case(0.0, b, self.prompt_tokens[0], "fixed:3", rounds=1, new_tokens=self.new_tokens, cross=True))
        return out

    def longest_dspark_draft(self) -> int:
        """The longest draft a DSpark policy of the grid proposes (0 without one): the chains and live steps
        the acceptance traces record are this long."""
        return max((draft_length(policy_spec(p)) for p in self.policies if policy_spec(p).kind == "dspark"),
                   default=0)


QUICK = Grid(temperatures=(0.0, 1.0), batch_sizes=(1, 4), prompt_tokens=(64,), policies=("fixed:3", "dspark:5"),
             new_tokens=48)
FULL = Grid(temperatures=(0.0, 1.0), batch_sizes=(1, 4, 16), prompt_tokens=(64, 256),
            policies=("fixed:1", "fixed:3", "fixed:5", "dspark:5"), new_tokens=64,
            cross_batch_sizes=(16, 32, 64), calibrate_max_batch=4, greedy_sequences=48, sampled_sequences=48,
            min_rounds=6)


def grid_of(quick: bool) -> Grid:
    return QUICK if quick else FULL


@dataclass
class Measured:
    """One side's figures for a case (measured by the engine or predicted by the simulator)."""

    tokens_per_s: float  # while every sequence of the batch is generating (plain decoding: all along)
    tau: float
    batch_tokens_per_s: float = 0.0  # the whole static batch, its drain tail included
    repeats: list[float] | None = None  # tokens_per_s of each timed repeat
    verified: float | None = None  # drafts verified per sequence-pass (the policy's decisions, pooled as tau)
    host_probes: list[float] | None = None  # the host-speed yardstick at each timed repeat (CPU)
