"""The engine's side of `validate`: the bundled pair, its prompt sets, and timed runs of the grid's cases.

Every case is run `repeats` times, in rounds over the whole grid, each run timing plain and speculative
decoding of the same prompts (the same static cache, so a GPU replays the graphs captured in an untimed
warm-up). Needs torch.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from dspark_sim.engine.cudagraphs import GraphedForward, StepGraphs, precapture
from dspark_sim.engine.generate import generate_baseline, speculative_generate
from dspark_sim.engine.model import WEIGHT_DTYPES, Transformer
from dspark_sim.engine.results import GenerationResult
from dspark_sim.engine.sampling import Sampling
from dspark_sim.engine.train import train_pair
from dspark_sim.measure.host_speed import HostProbe
from dspark_sim.measure.profile import profile_steps
from dspark_sim.validate.cases import Case, Measured, case_cache_tokens, policy_spec

Prompts = list[list[int]]


@dataclass
class Engine:
    """The engine side: models, forwards (CUDA graphs on a GPU) and prompt sets."""

    target: Transformer
    draft: Transformer
    device: torch.device
    prompts_acceptance: Prompts
    prompts_measure: Prompts
    target_forward: GraphedForward | None = None
    draft_forward: GraphedForward | None = None
    step_graphs: StepGraphs | None = None  # on a GPU: each step's phases as CUDA graphs
    _next: dict[int, int] = field(default_factory=dict)

    def take(self, n: int, length: int) -> Prompts:
        """n measurement prompts cut to `length` tokens, spread evenly over the whole pool (deterministic).

        The pool's windows run through the held-out corpus file by file, and acceptance differs a lot
        between files: n consecutive windows would measure a few files while the acceptance traces cover
        them all (DSpark at T=0 measured tau 2.55 on the pool's first half and 3.09 on its second). Each
        call starts one window further on, so successive cases do not measure the very same prompts.
        """
        i = self._next.get(length, 0)
        pool = len(self.prompts_measure)
        out = [self.prompts_measure[(i + (k * pool) // n) % pool][:length] for k in range(n)]
        self._next[length] = i + 1
        return out


def prompt_sets(corpus_eval: torch.Tensor, max_len: int, count: int) -> tuple[Prompts, Prompts]:
    """Evenly spaced windows of the held-out corpus; even windows measure acceptance, odd ones speed."""
    data = corpus_eval.tolist()
    span = max(len(data) - max_len - 1, 1)
    starts = np.linspace(0, span, 2 * count, dtype=np.int64).tolist()
    windows = [data[s: s + max_len] for s in starts]
    return windows[0::2], windows[1::2]


def load_pair(preset: str, seed: int, cache_dir: str | Path | None, device: str, dtype: str = "fp32",
              log: Callable[[str], object] = print) -> tuple[Transformer, Transformer, torch.device]:
    """The bundled pair (trained on first use), on the device in the engine's inference layout."""
    def train_log(message: str) -> None:
        log(f"  train: {message}")

    pair = train_pair(preset, seed, cache_dir, device=device, log=train_log)
    dev = torch.device(device)
    tdtype = WEIGHT_DTYPES[dtype]
    target = pair.target.to(device=dev, dtype=tdtype).eval()
    draft = pair.draft.to(device=dev, dtype=tdtype).eval()
    for m in (target, draft):  # RoPE tables stay fp32 whatever the weights
        m._build_rope(m.args.max_seq_len, dev)
        if dev.type == "cuda":  # the GPU engine's inference layout (fewer, larger matmuls)
            m.fuse_projections()
    return target, draft, dev


@dataclass
class CaseRun:
    """One repetition of a case: per round, the baseline's and the speculative run's decode times."""

    base_s: list[float]
    spec_s: list[float]
    spec_full_s: list[float]  # wall time of the steps with every sequence generating
    spec_full_tokens: list[int]
    spec_tokens: int
    base_tokens: int
    gained: int
    passes: int
    verified: int = 0  # drafts verified, summed over sequence-passes

    def add(self, batch: Prompts, base: GenerationResult, spec: GenerationResult) -> None:
        """Count one round: its plain and speculative runs of `batch`."""
        self.base_s.append(base.decode_time_s)
        self.spec_s.append(spec.decode_time_s)
        full = [(s, w) for s, w in zip(spec.steps, spec.step_wall_s, strict=True) if s.active.all()]
        self.spec_full_s.append(sum(w for _, w in full))
        self.spec_full_tokens.append(sum(int((s.accepted + 1).sum()) for s, _ in full))
        self.base_tokens += base.new_tokens - len(batch)
        self.spec_tokens += spec.new_tokens - len(batch)
        self.gained += sum(int((s.accepted + 1)[s.active].sum()) for s in spec.steps)
        self.passes += sum(int(s.active.sum()) for s in spec.steps)
        self.verified += sum(int(s.verified[s.active].sum()) for s in spec.steps)


def _fit_caches(eng: Engine, batch: int, cap: int) -> bool:
    """Caches of the case's shape on both models; whether any were reallocated (new caches drop every
    captured CUDA graph, which must then be captured again before the timed runs)."""
    reallocated = False
    for model in (eng.target, eng.draft):
        if (model.cache_batch, model.cache_len) != (batch, cap):
            model.setup_caches(batch, cap)
            reallocated = True
    return reallocated


def run_case_once(eng: Engine, case: Case, prompts: list[Prompts], sps_table: dict[int, float],
                  seed: int, warm: bool, steps_out: list | None = None) -> CaseRun:
    """Run the engine once over the case's rounds: baseline and speculative decoding of the same prompts.

    Both loops share one static cache (sized for the speculative run) so that, on a GPU, the graphs
    captured in an untimed warm-up pass are the ones the timed runs replay. `steps_out` gets each
    round's speculative step walls (seconds), for diagnostics.
    """
    sampling = Sampling(temperature=case.temperature)
    policy = policy_spec(case.policy, sps_table)
    reallocated = _fit_caches(eng, case.batch_size, case_cache_tokens(case))

    def runs(batch: Prompts, r: int, new_tokens: int = case.new_tokens) -> tuple[GenerationResult, GenerationResult]:
        gen = torch.Generator(device=eng.device).manual_seed(seed + r)
        base = generate_baseline(eng.target, batch, new_tokens, sampling, forward=eng.target_forward,
                                 generator=gen)
        gen = torch.Generator(device=eng.device).manual_seed(seed + 1000 + r)
        spec = speculative_generate(eng.target, eng.draft, batch, new_tokens, policy, sampling,
                                    generator=gen, target_forward=eng.target_forward,
                                    draft_forward=eng.draft_forward, step_graphs=eng.step_graphs)
        return base, spec

    if eng.device.type == "cuda" and (warm or reallocated):  # capture every shape outside the timed runs
        precapture(eng.target_forward, eng.draft_forward, case.batch_size, case.gamma_max)
        if eng.step_graphs is not None:
            eng.step_graphs.precapture(case.batch_size, case.prompt_tokens, case.new_tokens, case.gamma_max, sampling)
    if warm:
        runs(prompts[0], -1)
    else:  # after other cases' shapes a device needs a few passes (and steps of the host loop) to run as in a loop
        runs(prompts[0], -1, min(case.new_tokens, 8))
    out = CaseRun([], [], [], [], 0, 0, 0, 0)
    for r, batch in enumerate(prompts):
        base, spec = runs(batch, r)
        if steps_out is not None:
            steps_out.append(list(spec.step_wall_s))
        out.add(batch, base, spec)
    return out


def case_prompts(eng: Engine, cases: list[Case]) -> list[list[Prompts]]:
    """Each case's rounds x batch prompts, spread over the whole pool, then cut into rounds (in case order:
    the pool is dealt out in turn, so the same cases get the same prompts)."""
    out = []
    for c in cases:
        flat = eng.take(c.rounds * c.batch_size, c.prompt_tokens)
        out.append([flat[r * c.batch_size: (r + 1) * c.batch_size] for r in range(c.rounds)])
    return out


def _speculative_figures(rs: list[CaseRun]) -> tuple[Measured, float, list[float]]:
    """A case's speculative figures over its repeats (per round the median time counts), its own plain
    tokens/s, and each repeat's plain tokens/s."""
    rounds = len(rs[0].spec_s)
    spec_time = sum(statistics.median(r.spec_s[k] for r in rs) for k in range(rounds))
    full_time = sum(statistics.median(r.spec_full_s[k] for r in rs) for k in range(rounds))
    base_time = sum(statistics.median(r.base_s[k] for r in rs) for k in range(rounds))
    first = rs[0]
    spec = Measured(sum(first.spec_full_tokens) / full_time, first.gained / max(first.passes, 1),
                    first.spec_tokens / spec_time, [sum(first.spec_full_tokens) / sum(r.spec_full_s) for r in rs],
                    first.verified / max(first.passes, 1))
    return spec, first.base_tokens / base_time, [first.base_tokens / sum(r.base_s) for r in rs]


def measure_cases(eng: Engine, cases: list[Case], sps_table: dict[int, float], seed: int,
                  repeats: int = 3, between_rounds: Callable[[int], None] | None = None,
                  host: HostProbe | None = None) -> list[tuple[Measured, Measured]]:
    """Every case `repeats` times; per round the median time counts (one disturbed run of a busy
    machine does not decide a point). The repeats go in rounds over all cases, so that a slow spell of
    the host touches one repeat of many cases rather than every repeat of one. On a GPU too: the tiny
    pair's speculative loop is host-bound, and a slow spell once hit every repeat of four neighbouring
    cases (docs/validation.md); each visit re-captures its graphs outside the timed runs.
    `between_rounds(r)` runs before round r >= 1 (validate profiles there). `host` (a CPU): the
    yardstick read before every case, and each repeat keeps its value at the repeat's middle."""
    prompts = case_prompts(eng, cases)
    runs: list[list[CaseRun]] = [[] for _ in cases]
    stamps: list[list[float]] = [[] for _ in cases]
    for r in range(repeats):
        if r and between_rounds is not None:
            between_rounds(r)
        for i, case in enumerate(cases):
            if host is not None:
                host.tick()
            t_start = time.perf_counter()
            runs[i].append(run_case_once(eng, case, prompts[i], sps_table, seed, warm=not runs[i]))
            stamps[i].append((t_start + time.perf_counter()) / 2.0)
    if host is not None:
        host.tick(force=True)
    figures = [_speculative_figures(rs) for rs in runs]
    # Plain decoding does not depend on the policy: every case of one (temperature, batch, prompt
    # length) times the same baseline, next to each other in time. Their median is the setting's
    # baseline: one case's own baseline carried +-5% of a 2-core host's noise into its speed-up.
    groups: dict[tuple, list[float]] = {}
    for case, (_, rate, _) in zip(cases, figures, strict=True):
        groups.setdefault((case.temperature, case.batch_size, case.prompt_tokens), []).append(rate)
    out = []
    for i, (case, (spec, _, own)) in enumerate(zip(cases, figures, strict=True)):
        base = statistics.median(groups[(case.temperature, case.batch_size, case.prompt_tokens)])
        if host is not None:
            spec.host_probes = [round(host.at(t, "step"), 9) for t in stamps[i]]
        out.append((spec, Measured(base, 1.0, base, own)))
    return out


def reference_step_s(target: Transformer, draft: Transformer, device: torch.device, repeats: int = 3) -> float:
    """Median step time of a fixed plain-decoding run (batch 1, 64 random prompt tokens, 32 new tokens):
    the yardstick of the machine's speed, timed before profiling and after measuring."""
    fwd = GraphedForward(target) if device.type == "cuda" else None
    return profile_steps(target, draft, [1], [0], [64], 32, target_forward=fwd, repeats=repeats)[0].step_s


def gpu_warm(device: torch.device, seconds: float = 2.0) -> None:
    """Keep the GPU busy for a moment so its clocks are up before timing (an idle GPU down-clocks,
    and a tiny model's light load alone does not bring it back)."""
    if device.type != "cuda":
        return
    a = torch.randn(4096, 4096, device=device, dtype=torch.bfloat16)
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(20):
            a = (a @ a).clamp_(-1, 1)
        torch.cuda.synchronize(device)
