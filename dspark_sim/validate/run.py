"""Predict, then measure (`dspark-sim validate`): the simulator's tokens/s and speed-up against the engine's.

The loop, on whichever device the engine runs:
1. profile the engine's passes and steps (or take a given profile); its first round gives the SPS(B)
   table the engine's DSpark policy runs with;
2. measure acceptance on prompts held apart from the measured ones (teacher-forced traces, exact for
   greedy decoding; see engine/acceptance_trace.py);
3. run the engine on every point of the grid (temperature x batch x prompt length x policy), in rounds
   over the grid with a profile round before each, so the profile sees the host's speed of the minutes
   it measures; calibrate the cost model on the merged profile, then simulate every point's run with
   it and the held-apart acceptance trace;
4. report the errors (median and worst, by regime) and fail when the median exceeds the tolerance.
A point's timed repeats and the profile's rounds become one figure by the run's estimator: the fastest on
a GPU; on a CPU the median, once every timing is brought to one host speed (resolve_estimator says why).
The simulator is told how this engine works (padded verify blocks, attention over the whole static
cache, a 2-token first draft pass, a leaner plain-decoding loop): those are facts about the engine,
not fitted knobs.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dspark_sim.config.io import open_text, write_atomic
from dspark_sim.config.measurements import (
    EngineProfile,
    ErrorSummary,
    Estimator,
    MeasuredCase,
    ValidationMeasurements,
    ValidationPoint,
    ValidationReport,
)
from dspark_sim.config.schema import DSparkScheduler, FixedGamma, HardwareProfile, Scenario
from dspark_sim.core.policies import make_policy
from dspark_sim.fit.calibrate import calibrate, engine_coster

#: prompts measured per grid point (rounds x batch); the acceptance traces use ACCEPTANCE_PROMPTS others.
#: A point's measured tau is a mean over its prompts, the prediction's a mean over the traces' prompts:
#: with 16 and 32 greedy prompts their sampling errors alone put tau 5-6% apart at the median. Greedy
#: tau at gamma 5 varies by 24-27% (c.v.) from prompt to prompt (the tiny target falls into loops its
#: draft copies); splitting 384 windows at random, 48 measured against 96 held-apart prompts differ by
#: 10.8% at the 95th percentile, 96 against 192 by 7.7% (validation/README.md, session 10). The pool
#: alternates acceptance and measurement windows, about 340 tokens apart, so neighbours pair up
#: (their taus correlate +0.2) and the two sets see the same files.
MEASURED_SEQUENCES = 16
ACCEPTANCE_PROMPTS = 192
#: timed repeats of every case, taken in rounds over the grid, each after a round of profiling
MEASURE_REPEATS = 3


@dataclass(frozen=True)
class Case:
    temperature: float
    batch_size: int
    prompt_tokens: int
    policy: str  # "fixed:G" or "dspark:G"
    rounds: int
    new_tokens: int
    cross: bool = False

    @property
    def gamma_max(self) -> int:
        return int(self.policy.split(":")[1])

    @property
    def label(self) -> str:
        return f"T={self.temperature:g} B={self.batch_size} P={self.prompt_tokens} {self.policy}"

    @property
    def regime(self) -> str:
        size = "batch 1" if self.batch_size == 1 else ("batch <= 8" if self.batch_size <= 8 else "batch >= 16")
        kind = self.policy.split(":")[0]
        return f"{kind}, {'greedy' if self.temperature == 0 else 'sampled'}, {size}"


@dataclass(frozen=True)
class Grid:
    temperatures: tuple[float, ...]
    batch_sizes: tuple[int, ...]
    prompt_tokens: tuple[int, ...]
    policies: tuple[str, ...]
    new_tokens: int
    cross_batch_sizes: tuple[int, ...] = ()
    calibrate_max_batch: int | None = None  # cross-prediction: fit only on batches up to this
    greedy_sequences: int = 16  # prompts measured per greedy or DSpark point
    sampled_sequences: int = MEASURED_SEQUENCES  # ... and per sampled fixed-gamma point (FULL: 48, session 15)
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
                        # tau 2.01 where 48 others gave 1.75: validation/README.md, session 10).
                        # At batch 16 a round is cheap next to batch 1's: six rounds narrow tau's sampling
                        # error there, where the verify pass is widest and the speed-up most sensitive to it.
                        wide = t == 0.0 or pol.startswith("dspark")
                        n = max(self.greedy_sequences if wide else self.sampled_sequences, self.min_rounds * b)
                        out.append(Case(t, b, p, pol, rounds=max(1, n // b), new_tokens=self.new_tokens))
        for b in self.cross_batch_sizes:
            out.append(Case(0.0, b, self.prompt_tokens[0], "fixed:3", rounds=1, new_tokens=self.new_tokens, cross=True))
        return out


QUICK = Grid(temperatures=(0.0, 1.0), batch_sizes=(1, 4), prompt_tokens=(64,), policies=("fixed:3", "dspark:5"),
             new_tokens=48)
FULL = Grid(temperatures=(0.0, 1.0), batch_sizes=(1, 4, 16), prompt_tokens=(64, 256),
            policies=("fixed:1", "fixed:3", "fixed:5", "dspark:5"), new_tokens=64,
            cross_batch_sizes=(16, 32, 64), calibrate_max_batch=4, greedy_sequences=48, sampled_sequences=48,
            min_rounds=6)


@dataclass
class Measured:
    tokens_per_s: float  # while every sequence of the batch is generating (plain decoding: all along)
    tau: float
    batch_tokens_per_s: float = 0.0  # the whole static batch, its drain tail included
    repeats: list[float] | None = None  # tokens_per_s of each timed repeat
    verified: float | None = None  # drafts verified per sequence-pass (the policy's decisions, pooled as tau)
    host_probes: list[float] | None = None  # the host-speed yardstick at each timed repeat (CPU)


def resolve_estimator(choice: str | None, device_kind: str) -> Estimator:
    """`auto` (or None): the fastest repeat on a GPU, the probed median on a CPU.

    Why the two differ (validation/README.md, session 12): on the H200 the device's own speed is steady
    (the plain loop within 0.3% across repeats, the SM clock at 1,980 MHz) and what moves is the host
    driving the tiny pair's launches, which only ever adds time: there one disturbed profile round or
    measured repeat decided a point (errors to 19%), and the fastest of each side agrees with the other.
    On this 2-core CPU the machine's own speed moves both ways with its neighbours (the plain batch-16
    loop reads 5.2-6.4k tokens/s in some minutes and 7.5-8.6k in others): the fastest profile round of
    many shapes then outruns the fastest of three measured repeats, and the median is the fairer figure.
    There the spells last minutes, so every timing is first brought to one host speed by a yardstick
    timed beside it ('probed', engine/host_speed.py; session 13)."""
    if choice in (None, "auto"):
        return "best" if device_kind == "cuda" else "probed"
    if choice not in ("median", "best", "probed"):
        from dspark_sim.config.errors import InputError

        raise InputError("--estimator", None, f"got {choice!r}, allowed: auto, median, best, probed")
    return choice  # type: ignore[return-value]


def summarised(meas: ValidationMeasurements) -> list[tuple[Measured, Measured]]:
    """Each measured case's (speculative, plain) figures under the measurements' estimator.

    'median' takes the figures as measured (each prompt round's median over the repeats; the baseline the
    median over the cases sharing its temperature, batch and prompt length). 'best' takes each case's
    fastest repeat, and as the baseline the median over those cases of their fastest plain repeats.
    'probed' brings each repeat to the run's reference host speed (the yardstick read beside it) and takes
    the median, of the speculative runs and of the case's own plain runs (timed beside them)."""
    if meas.estimator == "probed":
        return [_probed(m, meas.host_probe_reference_s) for m in meas.cases]
    best = meas.estimator == "best"
    groups: dict[tuple, list[float]] = {}
    for m in meas.cases:
        if best and m.baseline_repeats_tokens_per_s:
            groups.setdefault((m.temperature, m.batch_size, m.prompt_tokens), []).append(
                max(m.baseline_repeats_tokens_per_s))
    out = []
    for m in meas.cases:
        spec_rate, base_rate = m.tokens_per_s, m.baseline_tokens_per_s
        key = (m.temperature, m.batch_size, m.prompt_tokens)
        if best and m.repeats_tokens_per_s:
            spec_rate = max(m.repeats_tokens_per_s)
        if best and key in groups:
            base_rate = statistics.median(groups[key])
        out.append((Measured(spec_rate, m.tau, m.batch_tokens_per_s, m.repeats_tokens_per_s or None, m.verified),
                    Measured(base_rate, 1.0, base_rate, m.baseline_repeats_tokens_per_s or None)))
    return out


def _probed(m: MeasuredCase, reference: dict[str, float] | None) -> tuple[Measured, Measured]:
    from dspark_sim.config.errors import InputError

    probes = m.host_probe_s
    if reference is None or not probes or len(probes) != len(m.repeats_tokens_per_s):
        raise InputError("measurements", "host_probe_s", "the 'probed' estimator needs the host-speed yardstick "
                         "read beside every repeat (validate on a CPU since session 13); use --estimator median")
    # a rate scales inversely to a time: taken while the yardstick read slower than the reference, it grows
    ref = reference["step"]
    spec = [v * p / ref for v, p in zip(m.repeats_tokens_per_s, probes, strict=True)]
    base = [v * p / ref for v, p in zip(m.baseline_repeats_tokens_per_s, probes, strict=True)]
    spec_rate, base_rate = statistics.median(spec), statistics.median(base)
    return (Measured(spec_rate, m.tau, m.batch_tokens_per_s, m.repeats_tokens_per_s, m.verified, probes),
            Measured(base_rate, 1.0, base_rate, m.baseline_repeats_tokens_per_s))


@dataclass
class Engine:
    """The engine side: models, forwards (CUDA graphs on a GPU) and prompt sets."""

    target: object
    draft: object
    device: object
    prompts_acceptance: list[list[int]]
    prompts_measure: list[list[int]]
    target_forward: object = None
    draft_forward: object = None
    step_graphs: object = None  # cudagraphs.StepGraphs on a GPU: each step's phases as CUDA graphs
    _next: dict = field(default_factory=dict)

    def take(self, n: int, length: int) -> list[list[int]]:
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


def _prompt_sets(corpus_eval, max_len: int, count: int) -> tuple[list[list[int]], list[list[int]]]:
    """Evenly spaced windows of the held-out corpus; even windows measure acceptance, odd ones speed."""
    data = corpus_eval.tolist()
    span = max(len(data) - max_len - 1, 1)
    starts = np.linspace(0, span, 2 * count, dtype=np.int64).tolist()
    windows = [data[s: s + max_len] for s in starts]
    return windows[0::2], windows[1::2]


def _policy_spec(name: str, sps_table: dict[int, float]):
    kind, g = name.split(":")
    if kind == "fixed":
        return FixedGamma(gamma=int(g))
    return DSparkScheduler(gamma_max=int(g), sps_source="table", sps_table=sps_table)


def _sampling(t: float):
    from dspark_sim.engine.sampling import Sampling

    return Sampling(temperature=t)


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


def case_cache_tokens(case: Case) -> int:
    """The static cache the engine's run of this case attends over (the simulator is told the same)."""
    from dspark_sim.engine.caches import cache_tokens

    return cache_tokens(case.prompt_tokens, case.new_tokens, case.gamma_max)


def run_case_once(eng: Engine, case: Case, prompts: list[list[list[int]]], sps_table: dict[int, float],
                  seed: int, warm: bool, steps_out: list | None = None) -> CaseRun:
    """Run the engine once over the case's rounds: baseline and speculative decoding of the same prompts.

    Both loops share one static cache (sized for the speculative run) so that, on a GPU, the graphs
    captured in an untimed warm-up pass are the ones the timed runs replay. `steps_out` gets each
    round's speculative step walls (seconds), for diagnostics.
    """
    import torch

    from dspark_sim.engine.generate import generate_baseline, speculative_generate

    sampling = _sampling(case.temperature)
    policy = _policy_spec(case.policy, sps_table)
    cap = case_cache_tokens(case)
    reallocated = False
    for model in (eng.target, eng.draft):
        # reallocate only for a new shape: new caches drop every captured CUDA graph, which must then be
        # captured again before the timed runs
        if (model.cache_batch, model.cache_len) != (case.batch_size, cap):
            model.setup_caches(case.batch_size, cap)
            reallocated = True

    def runs(batch, r, new_tokens=case.new_tokens):
        gen = torch.Generator(device=eng.device).manual_seed(seed + r)
        base = generate_baseline(eng.target, batch, new_tokens, sampling, forward=eng.target_forward,
                                 generator=gen)
        gen = torch.Generator(device=eng.device).manual_seed(seed + 1000 + r)
        spec = speculative_generate(eng.target, eng.draft, batch, new_tokens, policy, sampling,
                                    generator=gen, target_forward=eng.target_forward,
                                    draft_forward=eng.draft_forward, step_graphs=eng.step_graphs)
        return base, spec

    if eng.device.type == "cuda" and (warm or reallocated):  # capture every shape outside the timed runs
        from dspark_sim.engine.cudagraphs import precapture

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
        out.base_s.append(base.decode_time_s)
        out.spec_s.append(spec.decode_time_s)
        full = [(s, w) for s, w in zip(spec.steps, spec.step_wall_s, strict=True) if s.active.all()]
        out.spec_full_s.append(sum(w for _, w in full))
        out.spec_full_tokens.append(sum(int((s.accepted + 1).sum()) for s, _ in full))
        out.base_tokens += base.new_tokens - len(batch)
        out.spec_tokens += spec.new_tokens - len(batch)
        out.gained += sum(int((s.accepted + 1)[s.active].sum()) for s in spec.steps)
        out.passes += sum(int(s.active.sum()) for s in spec.steps)
        out.verified += sum(int(s.verified[s.active].sum()) for s in spec.steps)
    return out


def case_prompts(eng: Engine, cases: list[Case]) -> list[list[list[list[int]]]]:
    """Each case's rounds x batch prompts, spread over the whole pool, then cut into rounds (in case order:
    the pool is dealt out in turn, so the same cases get the same prompts)."""
    out = []
    for c in cases:
        flat = eng.take(c.rounds * c.batch_size, c.prompt_tokens)
        out.append([flat[r * c.batch_size: (r + 1) * c.batch_size] for r in range(c.rounds)])
    return out


def measure_cases(eng: Engine, cases: list[Case], sps_table: dict[int, float], seed: int,
                  repeats: int = 3, between_rounds=None, host=None) -> list[tuple[Measured, Measured]]:
    """Every case `repeats` times; per round the median time counts (one disturbed run of a busy
    machine does not decide a point). The repeats go in rounds over all cases, so that a slow spell of
    the host touches one repeat of many cases rather than every repeat of one. On a GPU too: the tiny
    pair's speculative loop is host-bound, and a slow spell once hit every repeat of four neighbouring
    cases (validation/README.md, section 3); each visit re-captures its graphs outside the timed runs.
    `between_rounds(r)` runs before round r >= 1 (validate profiles there). `host` (host_speed.HostProbe,
    a CPU): the yardstick read before every case, and each repeat keeps its value at the repeat's middle."""
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
    spec_out, base_rates, base_repeats = [], [], []
    for rs in runs:
        rounds = len(rs[0].spec_s)
        spec_time = sum(statistics.median(r.spec_s[k] for r in rs) for k in range(rounds))
        full_time = sum(statistics.median(r.spec_full_s[k] for r in rs) for k in range(rounds))
        base_time = sum(statistics.median(r.base_s[k] for r in rs) for k in range(rounds))
        first = rs[0]
        base_rates.append(first.base_tokens / base_time)
        spec_out.append(Measured(sum(first.spec_full_tokens) / full_time, first.gained / max(first.passes, 1),
                                 first.spec_tokens / spec_time,
                                 [sum(first.spec_full_tokens) / sum(r.spec_full_s) for r in rs],
                                 first.verified / max(first.passes, 1)))
        base_repeats.append([first.base_tokens / sum(r.base_s) for r in rs])
    # Plain decoding does not depend on the policy: every case of one (temperature, batch, prompt
    # length) times the same baseline, next to each other in time. Their median is the setting's
    # baseline: one case's own baseline carried +-5% of a 2-core host's noise into its speed-up.
    groups: dict[tuple, list[float]] = {}
    for case, rate in zip(cases, base_rates, strict=True):
        groups.setdefault((case.temperature, case.batch_size, case.prompt_tokens), []).append(rate)
    out = []
    for i, (case, spec, own) in enumerate(zip(cases, spec_out, base_repeats, strict=True)):
        base = statistics.median(groups[(case.temperature, case.batch_size, case.prompt_tokens)])
        if host is not None:
            spec.host_probes = [round(host.at(t, "step"), 9) for t in stamps[i]]
        out.append((spec, Measured(base, 1.0, base, own)))
    return out


def engine_run_scenario(name: str, seed: int, hw: HardwareProfile, target, drafter: dict | None,
                        policy: dict | None, batch: int, prompt_tokens: int, new_tokens: int, cache_tokens: int,
                        trace_path: Path, source: str = "validate", probability_field: str | None = None,
                        first_record: int | None = None, confidence_field: str = "confidence",
                        chains_by: str = "position") -> Scenario:
    """The simulator's description of one run of the bundled engine: a closed static batch of `batch`
    requests, verify blocks padded to the longest, attention over the whole static cache, acceptance
    (and the drafter's confidences) replayed from a trace, or drawn each step from its recorded
    `probability_field` (2-D fields: chains indexed `chains_by` position or step); records drawn at random,
    or from `first_record` on in order. drafter None: plain decoding."""
    from dspark_sim.config.loader import scenario_from_dict

    speculative = drafter is not None
    raw = {
        "name": name,
        "seed": seed,
        "deployment": {
            "hardware": hw.model_dump(),
            "model": target.model_dump(),
            "drafter": drafter if speculative else {"kind": "none"},
            "max_batch_size": batch,
            "max_batched_tokens": 1 << 20,
            "prefill_chunk_tokens": 1 << 20,
            "verify_padding": "pad_to_max",
            "batching": "static",
            "static_kv_cache_tokens": cache_tokens,
            "memory_utilisation": 1.0,
            "activation_reserve_gb": 0.0,
        },
        "acceptance": {"kind": "trace", "path": str(trace_path), "field": "accept_len",
                       "confidence_field": confidence_field, "probability_field": probability_field,
                       "chains_by": chains_by,
                       **({"records": "in_order", "first_record": first_record} if first_record is not None else {})},
        "policy": policy if speculative else {"kind": "none"},
        "workload": {
            "arrivals": {"kind": "closed_loop", "concurrency": batch},
            "num_requests": batch,
            "prompt_tokens": {"kind": "fixed", "tokens": prompt_tokens},
            "output_tokens": {"kind": "fixed", "tokens": new_tokens},
        },
        "simulation": {"simulate_baseline": False, "per_request_output": "none"},
    }
    return scenario_from_dict(raw, source)


def _trace_has(path: Path, field: str) -> bool:
    """Whether a JSONL trace's records carry `field` (its first record says)."""
    with open_text(path) as fh:
        return field in json.loads(fh.readline() or "{}")


def live_step_fields(batch: int) -> tuple[str, str]:
    """The trace fields holding the live steps recorded with the policy deciding `batch` rows jointly
    (confidence, acceptance probability): batch 1's keep session 16's names, so stored traces still read."""
    if batch == 1:
        return "step_confidence", "step_accept_prob"
    return f"step_confidence_b{batch}", f"step_accept_prob_b{batch}"


def attach_live_steps(records: list[dict], steps: list[dict], batch: int, policy: str) -> None:
    """Store `live_steps` output (one entry per record, in order) in the records under the fields of `batch`."""
    conf_name, prob_name = live_step_fields(batch)
    for rec, live in zip(records, steps, strict=True):
        rec.update({conf_name: live["step_confidence"], prob_name: live["step_accept_prob"]}, step_policy=policy)


def _live_steps_of(policy: str, path: Path, batch: int = 1) -> str | None:
    """The confidence field of the live steps the trace holds under `policy` (validate records them for the
    grid's longest DSpark policy at each sampled temperature and batch size, `run_validation`): those
    recorded at `batch`, else batch 1's (a trace from before session 17); None without any."""
    with open_text(path) as fh:
        first = json.loads(fh.readline() or "{}")
    if first.get("step_policy") != policy:
        return None
    for name in (live_step_fields(batch)[0], live_step_fields(1)[0]):
        if name in first:
            return name
    return None


def full_batch_window(sim, batch: int) -> tuple[float, float]:
    """(tokens, seconds) of the simulated steps in which all `batch` requests were decoding: the
    counterpart of the engine's `GenerationResult.full_batch_tokens_per_s`."""
    from dspark_sim.sim.replica import STEP_COLUMNS

    col = {name: i for i, name in enumerate(STEP_COLUMNS)}
    log = np.array(sim.replicas[0].log, dtype=float)
    full = (log[:, col["decoders"]] == batch) & (log[:, col["prefill_tokens"]] == 0)
    return float(log[full, col["tokens"]].sum()), float(log[full, col["dt"]].sum())


def case_scenario(case: Case, profile: EngineProfile, hw: HardwareProfile, trace_path: Path, sps_table,
                  cache_tokens: int, seed: int, speculative: bool, first_record: int | None = None) -> Scenario:
    """One validation case as the simulator sees it (the engine's draft model, a 2-token catch-up pass)."""
    drafter = {"kind": "draft_model", "model": profile.draft.model_dump(), "first_pass_tokens": 2.0}
    policy = _policy_spec(case.policy, sps_table).model_dump()
    confidence_field = trace_confidence_field(case.policy, trace_path, case.batch_size)
    return engine_run_scenario(f"validate {case.label}", seed, hw, profile.target, drafter if speculative else None,
                               policy, case.batch_size, case.prompt_tokens, case.new_tokens, cache_tokens, trace_path,
                               probability_field=trace_probability_field(case.policy, trace_path, case.batch_size),
                               first_record=first_record, confidence_field=confidence_field,
                               chains_by="step" if confidence_field.startswith("step_") else "position")


def trace_records(path: Path) -> int:
    """How many request records a JSONL trace holds."""
    with open_text(path) as fh:
        return sum(1 for line in fh if line.strip())


def simulated_runs(case: Case, repeats: int, records: int) -> int:
    """How many simulated static batches predict a case: at least `repeats` x its rounds, and enough that
    the records, replayed in order, are each used equally often (whole passes over the trace).

    Why: drawn at random, 96 draws from 96 greedy records put the prediction's tau 2.7% (one s.d.) off
    the trace's own mean, on top of the trace's sampling error against the measured prompts."""
    want = max(repeats * case.rounds * case.batch_size, records)
    passes = -(-want // records)
    return -(-(passes * records) // case.batch_size)


def prompt_length_trace(trace_path: Path, prompt_tokens: int, out_dir: Path) -> Path:
    """The trace's records of prompts of this length, as their own file in `out_dir` (the whole trace when
    it has no such records, or no others).

    Why: the held-apart traces hold every grid prompt length, and acceptance depends on it: the same
    windows cut at 256 tokens gave greedy tau 3.61 at gamma 5 where cut at 64 they gave 3.98 (H200, session
    9), while a simulation drawing from both predicted 3.72-3.93 for each."""
    with open_text(trace_path) as fh:
        lines = fh.read().splitlines()
    keep = [ln for ln in lines if ln.strip() and json.loads(ln).get("prompt_len") == prompt_tokens]
    if not keep or len(keep) == len([ln for ln in lines if ln.strip()]):
        return trace_path
    stem, dot, ext = trace_path.name.partition(".")
    out = out_dir / f"{stem}-P{prompt_tokens}{dot}{ext}"
    write_atomic(out, "\n".join(keep) + "\n")
    return out


def trace_probability_field(policy: str, trace_path: Path, batch: int = 1) -> str | None:
    """Which per-position acceptance probability of an engine trace the simulator draws from.

    The draft model's traces record, per output position, the probability its token there is accepted
    given the target's tokens before it: exactly what each step's draw needs (block drafters' traces only
    hold their first block position's, so `validate --drafters` replays their yields instead). A policy
    that reads the confidences (DSpark) gets the one coupled to them (sampled traces' accept_prob:
    min(1, p(x)/q(x)) of the token x whose q(x) is the confidence), from the chains the draft drafts
    from each position where the trace has them (`trace_confidence_field`); the others the expectation
    over the draft's sample (alpha), which has the same mean and less noise."""
    if not _trace_has(trace_path, "alpha"):
        return None
    live = _live_steps_of(policy, trace_path, batch)
    if live is not None:
        return live.replace("step_confidence", "step_accept_prob")
    if policy.startswith("dspark"):
        for name in ("chain_accept_prob", "accept_prob"):
            if _trace_has(trace_path, name):
                return name
    return "alpha"


def trace_confidence_field(policy: str, trace_path: Path, batch: int = 1) -> str:
    """The draft's confidences a policy reads in the simulator: DSpark sampled, those of the live steps
    the trace recorded under this very policy at this batch size (`acceptance_trace.live_steps`: the
    states live steps start in); DSpark greedy, those of the chains the draft drafts from each position along its own tokens
    (where the trace has them: the engine's scheduler reads exactly these); else the confidence at each
    position given the target's tokens."""
    live = _live_steps_of(policy, trace_path, batch)
    if live is not None:
        return live
    if policy.startswith("dspark") and _trace_has(trace_path, "chain_confidence"):
        return "chain_confidence"
    return "confidence"


def decode_tokens_and_passes(sim) -> tuple[float, float, float]:
    """Tokens gained and sequence-passes over every decode step of a run: tau pooled as the engine's
    measurement pools it (gained / passes over all its rounds). A mean of per-run taus would weight a
    run of few long steps like one of many short ones: at batch 1, greedy DSpark, 4.15 against 3.32
    pooled on the same simulations (per-prompt tau varies by 40% there)."""
    from dspark_sim.sim.replica import STEP_COLUMNS

    col = {name: i for i, name in enumerate(STEP_COLUMNS)}
    log = np.asarray(sim.replicas[0].log, dtype=float).reshape(-1, len(STEP_COLUMNS))
    dec = log[:, col["decoders"]]
    return float((log[:, col["accepted_sum"]] + dec).sum()), float(dec.sum()), float(log[:, col["verify_sum"]].sum())


def predict_case(case: Case, profile: EngineProfile, hw: HardwareProfile, trace_path: Path, sps_table,
                 cap_spec: int, cap_base: int, seed: int, repeats: int) -> tuple[Measured, Measured]:
    """Simulated decode tokens/s of the engine's run (spec and baseline), over at least `repeats` x rounds
    seeds, every trace record replayed equally often: while the whole batch generates (the steps the
    simulator ran with every request decoding), and for the whole static batch (first token to last finish)."""
    from dspark_sim.sim.run import Simulation

    out = []
    runs = simulated_runs(case, repeats, trace_records(trace_path))
    for speculative, cap in ((True, cap_spec), (False, cap_base)):
        full_tokens = full_s = tokens = span = 0.0
        gained = passes = verified = 0.0
        for r in range(runs):
            sc = case_scenario(case, profile, hw, trace_path, sps_table, cap, seed + r, speculative,
                               first_record=r * case.batch_size)
            sim = Simulation(sc, "validate").run()
            window_tokens, window_s = full_batch_window(sim, case.batch_size)
            full_tokens += window_tokens
            full_s += window_s
            first = float(np.nanmin(sim.out.first_token))
            tokens += float((sim.out.gen - 1).sum())
            span += float(np.nanmax(sim.out.finish)) - first
            g, p, v = decode_tokens_and_passes(sim)
            gained += g
            passes += p
            verified += v
        out.append(Measured(full_tokens / full_s, gained / max(passes, 1.0), tokens / span,
                            verified=verified / max(passes, 1.0)))
    return out[0], out[1]


def _err(pred: float, meas: float) -> float:
    return 100.0 * (pred / meas - 1.0)


def repeat_spread_pct(values: list[float] | None) -> float | None:
    """(max - min) / median of a point's timed repeats, in percent: how far the machine's own speed moved
    between them, the scale an error is read against (None with fewer than two repeats)."""
    if not values or len(values) < 2:
        return None
    return 100.0 * (max(values) - min(values)) / statistics.median(values)


def speedup_repeats(spec: list[float] | None, base: list[float] | None) -> list[float] | None:
    """Each timed repeat's speed-up: its speculative run over the plain run measured beside it."""
    if not spec or not base or len(spec) != len(base):
        return None
    return [a / b for a, b in zip(spec, base, strict=True)]


def _median_or_none(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summarise(points: list[ValidationPoint]) -> list[ErrorSummary]:
    groups: dict[str, list[ValidationPoint]] = {"all (in calibrated range)": [p for p in points if not p.cross_prediction]}
    for p in points:
        groups.setdefault("cross-prediction: batch beyond calibration" if p.cross_prediction else p.regime, []).append(p)
    out = []
    for name, pts in groups.items():
        if not pts:
            continue
        s = [abs(p.speedup_error_pct) for p in pts]
        t = [abs(p.tokens_per_s_error_pct) for p in pts]
        out.append(ErrorSummary(group=name, points=len(pts), median_abs_speedup_error_pct=statistics.median(s),
                                worst_abs_speedup_error_pct=max(s), median_abs_tokens_per_s_error_pct=statistics.median(t),
                                worst_abs_tokens_per_s_error_pct=max(t),
                                median_abs_tau_error_pct=_median_or_none(
                                    [None if p.tau_error_pct is None else abs(p.tau_error_pct) for p in pts]),
                                median_abs_per_tau_error_pct=_median_or_none(
                                    [None if p.per_tau_error_pct is None else abs(p.per_tau_error_pct) for p in pts]),
                                median_repeat_spread_tokens_per_s_pct=_median_or_none(
                                    [p.measured_repeat_spread_pct for p in pts]),
                                median_repeat_spread_speedup_pct=_median_or_none(
                                    [p.measured_speedup_repeat_spread_pct for p in pts])))
    return out


def restrict_profile(profile: EngineProfile, max_batch: int) -> EngineProfile:
    """The profile as if only batches up to `max_batch` had been measured (for cross-prediction)."""
    return profile.model_copy(update={
        "samples": [s for s in profile.samples if s.batch_size <= max_batch],
        "steps": [s for s in profile.steps if s.batch_size <= max_batch],
    })


def reference_step_s(target, draft, device, repeats: int = 3) -> float:
    """Median step time of a fixed plain-decoding run (batch 1, 64 random prompt tokens, 32 new tokens):
    the yardstick of the machine's speed, timed before profiling and after measuring."""
    from dspark_sim.engine.cudagraphs import GraphedForward
    from dspark_sim.measure.profile import profile_steps

    fwd = GraphedForward(target) if device.type == "cuda" else None
    return profile_steps(target, draft, [1], [0], [64], 32, target_forward=fwd, repeats=repeats)[0].step_s


def _gpu_warm(device, seconds: float = 2.0) -> None:
    """Keep the GPU busy for a moment so its clocks are up before timing (an idle GPU down-clocks,
    and a tiny model's light load alone does not bring it back)."""
    import torch

    if device.type != "cuda":
        return
    a = torch.randn(4096, 4096, device=device, dtype=torch.bfloat16)
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(20):
            a = (a @ a).clamp_(-1, 1)
        torch.cuda.synchronize(device)


def _calibrate_task(task: tuple) -> tuple[tuple, object, object]:
    key, profile, name, temperature = task
    return key, *calibrate(profile, name, temperature=temperature)


def calibrations(profile: EngineProfile, grid: Grid, device: str, workers: int = 1) -> tuple[dict, dict, dict]:
    """One calibration per temperature (sampling costs more per step than greedy decoding), and the
    cross-prediction's calibration on small batches only: (hardware, report, small-batch hardware) by T.
    The fits are independent, so they run in `workers` processes (a fit of a CPU profile can take 15 s)."""
    from dspark_sim.studies.sweep import map_unordered

    measured_temps = {s.temperature for s in profile.steps}
    tasks = []
    for t in grid.temperatures:
        t_fit = t if t in measured_temps else None
        tasks.append((("all", t), profile, f"calibrated-{device}-T{t:g}", t_fit))
        if grid.calibrate_max_batch:
            tasks.append((("small", t), restrict_profile(profile, grid.calibrate_max_batch),
                          f"calibrated-{device}-T{t:g}-small-batch", t_fit))
    fits = {key: (hw, rep) for key, hw, rep in map_unordered(_calibrate_task, tasks, "local" if workers > 1 else
                                                             "inline", min(workers, len(tasks)))}
    hw_by_temp = {t: fits[("all", t)][0] for t in grid.temperatures}
    cal_by_temp = {t: fits[("all", t)][1] for t in grid.temperatures}
    cross_by_temp = {t: fits[("small", t)][0] for t in grid.temperatures if ("small", t) in fits}
    return hw_by_temp, cal_by_temp, cross_by_temp


def predict_point(case: Case, profile: EngineProfile, hw_by_temp: dict, cross_by_temp: dict, trace_path: Path,
                  sps_table, seed: int) -> tuple[Measured, Measured]:
    """The simulator's (speculative, plain) figures for one case, with the calibration it belongs to."""
    cap = case_cache_tokens(case)
    use_hw = (cross_by_temp.get(case.temperature) if case.cross else None) or hw_by_temp[case.temperature]
    return predict_case(case, profile, use_hw, trace_path, sps_table, cap, cap, seed,
                        repeats=4 if case.batch_size < 4 else 2)


def make_point(case: Case, new_tokens: int, spec_m: Measured, base_m: Measured, spec_p: Measured,
               base_p: Measured, median_m: tuple[float, float] | None = None) -> ValidationPoint:
    """Measured and predicted figures of one case, and their errors. `median_m`: the measured (speculative,
    plain) tokens/s under the 'median' estimator, kept beside whichever the figures use."""
    return ValidationPoint(
        label=case.label, regime=case.regime, temperature=case.temperature, batch_size=case.batch_size,
        prompt_tokens=case.prompt_tokens, new_tokens=new_tokens, policy=case.policy,
        gamma_max=case.gamma_max, rounds=case.rounds,
        measured_tokens_per_s=spec_m.tokens_per_s, predicted_tokens_per_s=spec_p.tokens_per_s,
        measured_baseline_tokens_per_s=base_m.tokens_per_s, predicted_baseline_tokens_per_s=base_p.tokens_per_s,
        measured_speedup=spec_m.tokens_per_s / base_m.tokens_per_s,
        predicted_speedup=spec_p.tokens_per_s / base_p.tokens_per_s,
        measured_tau=spec_m.tau, predicted_tau=spec_p.tau,
        tokens_per_s_error_pct=_err(spec_p.tokens_per_s, spec_m.tokens_per_s),
        speedup_error_pct=_err(spec_p.tokens_per_s / base_p.tokens_per_s, spec_m.tokens_per_s / base_m.tokens_per_s),
        baseline_error_pct=_err(base_p.tokens_per_s, base_m.tokens_per_s),
        tau_error_pct=_err(spec_p.tau, spec_m.tau),
        per_tau_error_pct=_err(spec_p.tokens_per_s / spec_p.tau, spec_m.tokens_per_s / spec_m.tau),
        cross_prediction=case.cross,
        measured_batch_tokens_per_s=spec_m.batch_tokens_per_s, predicted_batch_tokens_per_s=spec_p.batch_tokens_per_s,
        measured_repeats_tokens_per_s=spec_m.repeats, measured_baseline_repeats_tokens_per_s=base_m.repeats,
        measured_verified=spec_m.verified, predicted_verified=spec_p.verified,
        measured_repeat_spread_pct=repeat_spread_pct(spec_m.repeats),
        measured_speedup_repeat_spread_pct=repeat_spread_pct(speedup_repeats(spec_m.repeats, base_m.repeats)),
        measured_median_tokens_per_s=median_m[0] if median_m else None,
        measured_median_baseline_tokens_per_s=median_m[1] if median_m else None,
        measured_host_probe_s=spec_m.host_probes,
    )


def _log_point(log, pt: ValidationPoint) -> None:
    log(f"  {pt.label:34s} measured {pt.measured_tokens_per_s:9.1f} tok/s x{pt.measured_speedup:.2f} "
        f"(tau {pt.measured_tau:.2f}) | predicted {pt.predicted_tokens_per_s:9.1f} x{pt.predicted_speedup:.2f} "
        f"(tau {pt.predicted_tau:.2f}) | err {pt.tokens_per_s_error_pct:+.1f}% / {pt.speedup_error_pct:+.1f}%"
        + (f" | verified {pt.measured_verified:.2f} / {pt.predicted_verified:.2f}"
           if pt.measured_verified is not None and pt.predicted_verified is not None else ""))


def load_pair(preset: str, seed: int, cache_dir, device: str, dtype: str = "fp32", log=print):
    """The bundled pair (trained on first use), on the device in the engine's inference layout."""
    import torch

    from dspark_sim.engine.train import train_pair

    pair = train_pair(preset, seed, cache_dir, device=device, log=lambda m: log(f"  train: {m}"))
    dev = torch.device(device)
    from dspark_sim.engine.model import WEIGHT_DTYPES

    tdtype = WEIGHT_DTYPES[dtype]
    target = pair.target.to(device=dev, dtype=tdtype).eval()
    draft = pair.draft.to(device=dev, dtype=tdtype).eval()
    for m in (target, draft):  # RoPE tables stay fp32 whatever the weights
        m._build_rope(m.args.max_seq_len, dev)
        if dev.type == "cuda":  # the GPU engine's inference layout (fewer, larger matmuls)
            m.fuse_projections()
    return target, draft, dev


def run_validation(*, device: str, quick: bool, preset: str, seed: int, cache_dir, profile: EngineProfile | None,
                   out_dir: Path, tolerance_pct: float, log=print, progress=None, dtype: str = "fp32",
                   workers: int | None = None, estimator: Estimator | None = None) -> ValidationReport:
    """Profile, measure and predict (see the module's docstring); `estimator` as resolve_estimator's."""
    from dspark_sim.config.errors import InputError
    from dspark_sim.engine.cudagraphs import GraphedForward, StepGraphs
    from dspark_sim.engine.data import load_corpus
    from dspark_sim.measure.acceptance_trace import acceptance_records, conditional_acceptance, live_steps
    from dspark_sim.measure.host_speed import HostProbe, yardstick_s
    from dspark_sim.measure.profile import (
        ProfileGrid,
        at_reference_speed,
        engine_version,
        merge_profiles,
        run_profile,
    )

    grid = QUICK if quick else FULL
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    target, draft, dev = load_pair(preset, seed, cache_dir, device, dtype, log)
    timings["train_or_load_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    _gpu_warm(dev)
    ref_before = reference_step_s(target, draft, dev)
    estimator = estimator or resolve_estimator(None, dev.type)
    # on a CPU the host's own speed is probed throughout (host_speed.py); the 'probed' estimator uses it
    host = HostProbe(lambda: yardstick_s(target, draft)) if dev.type == "cpu" else None
    if host is not None:
        host.tick(force=True)
    elif estimator == "probed":
        raise InputError("--estimator", None, "'probed' needs the host-speed yardstick, which validate reads on a "
                         "CPU only; allowed here: auto, median, best")
    # Profile in rounds, one before each measurement round: a shared host's speed drifts by 14-55%
    # within one run (validation/README.md), and a calibration from a profile taken before all the
    # measuring predicted whatever speed the host had then. The engine's DSpark policy needs its SPS
    # table before measuring: it comes from the first round and is kept in the report.
    profile_rounds: list[EngineProfile] = []
    round_grid = None
    if profile is None:
        log(f"profiling the engine's passes and steps (round 1 of {MEASURE_REPEATS}) ...")
        # six whole-step repeats (two a round): one run of a step configuration carries +-8% of a
        # 2-core host's noise, and the plain and gamma-1 loops' overheads are fitted from them
        pgrid = ProfileGrid.quick() if quick else ProfileGrid(batch_sizes=(1, 2, 4, 8, 16, 32, 64), step_repeats=6)
        round_grid = pgrid.round_of(MEASURE_REPEATS)
        profile_rounds.append(run_profile(target, draft, round_grid, created_by="dspark-sim validate", host=host))
        first = profile_rounds[0]
    else:
        first = profile
    t_first = grid.temperatures[0]
    sps = calibrate(first, f"calibrated-{device}-T{t_first:g}",
                    temperature=t_first if t_first in {s.temperature for s in first.steps} else None)[1].sps_table
    timings["profile_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    corpus = load_corpus(2_000_000)
    max_p = max(grid.prompt_tokens)
    set_a, set_b = _prompt_sets(corpus.eval, max_p, ACCEPTANCE_PROMPTS)
    traces: dict[float, Path] = {}
    acceptance: dict[str, list[float]] = {}
    out_dir.mkdir(parents=True, exist_ok=True)
    # the chains the draft drafts from every position (for the DSpark cases' confidences): as long as the
    # longest draft a case proposes
    chain = max((int(pol.split(":")[1]) for pol in grid.policies if pol.startswith("dspark")), default=0)
    for t in grid.temperatures:
        recs = []
        for p in grid.prompt_tokens:
            prompts = [x[:p] for x in set_a[:ACCEPTANCE_PROMPTS]]
            part = acceptance_records(target, draft, prompts, grid.new_tokens, _sampling(t), seed, chain=chain)
            if chain and t > 0:  # sampled DSpark: the states its live steps start in (trace_confidence_field)
                name = f"dspark:{chain}"
                # all prompts at once on a GPU, where the tiny pair's steps cost the host's launches whatever
                # the rows (64 at a time: 9.5 s a batch size on the H200, session 17); on a CPU the rows' work
                # is the cost, and 64 at a time are as fast as 192
                rows = len(prompts) if dev.type == "cuda" else 64
                for b in grid.batch_sizes:  # at each batch size the grid measures: the states depend on it
                    steps = live_steps(target, draft, prompts, grid.new_tokens, _sampling(t),
                                       make_policy(_policy_spec(name, sps)), seed, rows=rows, batch=b)
                    attach_live_steps(part, steps, b, name)
            recs += part
        # gzipped: the chains make a temperature's trace about 4 MB of JSON (about 1 MB packed)
        path = out_dir / f"acceptance-T{t:g}.jsonl.gz"
        write_atomic(path, "".join(json.dumps(r) + "\n" for r in recs))
        traces[t] = path
        acceptance[f"{t:g}"] = conditional_acceptance(recs, 8)
        log(f"acceptance at T={t:g} (held-apart prompts): " + ", ".join(f"{c:.2f}" for c in acceptance[f'{t:g}'][:6]))
    timings["acceptance_s"] = time.perf_counter() - t0

    eng = Engine(target, draft, dev, set_a, set_b)
    if dev.type == "cuda":
        eng.target_forward, eng.draft_forward = GraphedForward(target), GraphedForward(draft)
        eng.step_graphs = StepGraphs(target, draft)

    def profile_round(r: int) -> None:
        if round_grid is None:  # a profile was given: nothing to profile
            return
        t = time.perf_counter()
        log(f"profiling round {r + 1} of {MEASURE_REPEATS} ...")
        profile_rounds.append(run_profile(target, draft, round_grid, created_by="dspark-sim validate", host=host))
        timings["profile_s"] += time.perf_counter() - t

    # measure everything first, then predict: the GPU stays busy (and its clocks up) while measuring
    t0 = time.perf_counter()
    t_profile_first = timings["profile_s"]
    _gpu_warm(dev)
    log(f"measuring {len(grid.cases())} cases, {MEASURE_REPEATS} rounds ...")
    measured = measure_cases(eng, grid.cases(), sps, seed, repeats=MEASURE_REPEATS, between_rounds=profile_round,
                             host=host)
    drift_pct = _err(reference_step_s(target, draft, dev), ref_before)
    log(f"host drift: a reference run stepped {drift_pct:+.1f}% slower after measuring than at the start")
    t_measure = time.perf_counter() - t0 - (timings["profile_s"] - t_profile_first)
    reference_s = host.reference() if host is not None else None
    if profile_rounds:
        profile = merge_profiles([at_reference_speed(r, reference_s) if estimator == "probed" else r
                                  for r in profile_rounds], fastest_steps=estimator == "best")
    timings["measure_s"] = t_measure
    # everything measured is on disk before predicting (minutes on a slow host): a run cut short there is
    # finished with `validate --repredict` on any machine
    write_atomic(out_dir / "profile.json", profile.model_dump_json(indent=1) + "\n")
    for r, prof in enumerate(profile_rounds if len(profile_rounds) > 1 else []):  # what was merged, for re-analysis
        write_atomic(out_dir / f"profile-round-{r + 1}.json", prof.model_dump_json() + "\n")
    meas = ValidationMeasurements(
        device=profile.device, engine_version=engine_version(), preset=preset, quick=quick,
        command="dspark-sim " + " ".join(sys.argv[1:]), acceptance_by_temperature=acceptance,
        host_drift_pct=drift_pct, timings_s=timings, sps_table=sps, profile_rounds=max(len(profile_rounds), 1),
        estimator=estimator, host_probe_reference_s=reference_s,
        host_probes=host.relative_timeline() if host is not None else None,
        cases=[measured_case(c, grid.new_tokens, spec_m, base_m)
               for c, (spec_m, base_m) in zip(grid.cases(), measured, strict=True)])
    write_atomic(out_dir / MEASUREMENTS_FILE, meas.model_dump_json(indent=1) + "\n")
    return predict_measurements(meas, profile, traces, out_dir, tolerance_pct, seed, log, progress, workers)


#: what `validate` writes after measuring, before predicting
MEASUREMENTS_FILE = "measurements.json"


def measured_case(case: Case, new_tokens: int, spec_m: Measured, base_m: Measured) -> MeasuredCase:
    return MeasuredCase(
        temperature=case.temperature, batch_size=case.batch_size, prompt_tokens=case.prompt_tokens,
        new_tokens=new_tokens, policy=case.policy, rounds=case.rounds, cross_prediction=case.cross,
        tokens_per_s=spec_m.tokens_per_s, tau=spec_m.tau, batch_tokens_per_s=spec_m.batch_tokens_per_s,
        repeats_tokens_per_s=spec_m.repeats or [], baseline_tokens_per_s=base_m.tokens_per_s,
        baseline_repeats_tokens_per_s=base_m.repeats or [], verified=spec_m.verified, host_probe_s=spec_m.host_probes)


def _predict_task(task: tuple) -> tuple[int, Measured, Measured]:
    i, *args = task
    return i, *predict_point(*args)


def predict_measurements(meas: ValidationMeasurements, profile: EngineProfile, traces: dict[float, Path],
                         out_dir: Path, tolerance_pct: float, seed: int, log=print, progress=None,
                         workers: int | None = None) -> ValidationReport:
    """The predict half of `validate` (and all of `--repredict`): calibrate on the profile, simulate every
    measured case, and compare. Writes the calibrations; the caller writes the report."""
    from dspark_sim.studies.sweep import default_workers, map_unordered

    grid = QUICK if meas.quick else FULL
    workers = min(workers or default_workers(), len(meas.cases))
    t0 = time.perf_counter()
    hw_by_temp, cal_by_temp, cross_by_temp = calibrations(profile, grid, meas.device.kind, workers)
    out_dir.mkdir(parents=True, exist_ok=True)
    for t, c in cal_by_temp.items():
        write_atomic(out_dir / f"calibration-T{t:g}.json", c.model_dump_json(indent=1) + "\n")
        log(f"calibration T={t:g}: median |error| {c.median_abs_error_pct:.1f}% over {len(c.points)} pass and step shapes")
    cases = [Case(m.temperature, m.batch_size, m.prompt_tokens, m.policy, m.rounds, m.new_tokens, m.cross_prediction)
             for m in meas.cases]
    # cases are simulated in parallel processes, each from its own seeds: the same figures for any worker
    # count (a slow host once spent more than 140 s here on one core)
    by_length = {(t, n): prompt_length_trace(traces[t], n, out_dir)
                 for t in {c.temperature for c in cases} for n in {c.prompt_tokens for c in cases}}
    tasks = [(i, case, profile, hw_by_temp, cross_by_temp, by_length[(case.temperature, case.prompt_tokens)],
              meas.sps_table, seed) for i, case in enumerate(cases)]
    predicted: dict[int, tuple[Measured, Measured]] = {}
    for i, spec_p, base_p in map_unordered(_predict_task, tasks, "local" if workers > 1 else "inline", workers):
        predicted[i] = (spec_p, base_p)
        if progress:
            progress()
    points = []
    for i, (case, m, (spec_m, base_m)) in enumerate(zip(cases, meas.cases, summarised(meas), strict=True)):
        pt = make_point(case, m.new_tokens, spec_m, base_m, *predicted[i], (m.tokens_per_s, m.baseline_tokens_per_s))
        points.append(pt)
        _log_point(log, pt)
    summary = summarise(points)
    main = summary[0]
    passed = max(main.median_abs_speedup_error_pct, main.median_abs_tokens_per_s_error_pct) <= tolerance_pct
    return ValidationReport(
        device=meas.device, engine_version=meas.engine_version, preset=meas.preset, quick=meas.quick,
        tolerance_pct=tolerance_pct, passed=passed, command=meas.command,
        calibration_median_error_pct=float(np.median([c.median_abs_error_pct for c in cal_by_temp.values()])),
        acceptance_by_temperature=meas.acceptance_by_temperature, summary=summary, points=points,
        host_drift_pct=meas.host_drift_pct, timings_s={**meas.timings_s, "predict_s": time.perf_counter() - t0},
        sps_table=meas.sps_table, profile_rounds=meas.profile_rounds, estimator=meas.estimator,
        host_probe_reference_s=meas.host_probe_reference_s, host_probes=meas.host_probes,
    )


__all__ = ["FULL", "QUICK", "Case", "Grid", "engine_coster", "run_validation"]


def repredict_report(folder: Path, out_dir: Path, *, tolerance_pct: float | None = None, seed: int = 0,
                     log=print, workers: int | None = None, estimator: str | None = None) -> ValidationReport:
    """A validation folder's measured points predicted again by this code (calibration included), from
    its own profile and acceptance traces: a change to the cost model or the simulator is judged on the
    same measurements, free of the machine's run-to-run drift. Measured fields are kept. The folder's
    report.json, or, where validate was cut short while predicting, its measurements.json.

    `estimator`: None keeps the folder's own; 'median', 'best' or 'auto' summarise its repeats and
    profile rounds that way instead (a folder without profile-round files keeps its profile.json)."""
    from pydantic import ValidationError

    from dspark_sim.config.errors import InputError, from_validation_error
    from dspark_sim.config.io import read_json
    from dspark_sim.fit.calibrate import load_profile
    from dspark_sim.measure.profile import at_reference_speed, merge_profiles

    report_path, meas_path = folder / "report.json", folder / MEASUREMENTS_FILE
    path, doc = (report_path, ValidationReport) if report_path.is_file() or not meas_path.is_file() else \
        (meas_path, ValidationMeasurements)
    raw = read_json(path, "validation report",
                    "validation report not found (a folder written by `dspark-sim validate`)")
    try:
        old = doc.model_validate(raw)
    except ValidationError as exc:
        raise from_validation_error(str(path), exc, data=raw) from None
    profile = load_profile(folder / "profile.json")
    grid = QUICK if old.quick else FULL
    # gzipped since session 10 (the chains), plain JSONL before
    traces = {t: next((p for p in (folder / f"acceptance-T{t:g}.jsonl.gz", folder / f"acceptance-T{t:g}.jsonl")
                       if p.is_file()), folder / f"acceptance-T{t:g}.jsonl.gz") for t in grid.temperatures}
    for trace in traces.values():
        if not trace.is_file():
            raise InputError(str(trace), None, "acceptance trace missing (validate writes one per temperature)")
    if isinstance(old, ValidationReport):
        # the table the engine's DSpark policy ran with (reports before it was kept: the calibration's)
        t_first = grid.temperatures[0]
        sps = old.sps_table or calibrate(profile, "sps", temperature=t_first if t_first in
                                         {st.temperature for st in profile.steps} else None)[1].sps_table
        meas = ValidationMeasurements(
            device=old.device, engine_version=old.engine_version, preset=old.preset, quick=old.quick,
            command=old.command, acceptance_by_temperature=old.acceptance_by_temperature,
            host_drift_pct=old.host_drift_pct, timings_s=old.timings_s, sps_table=sps,
            profile_rounds=old.profile_rounds, estimator=old.estimator,
            host_probe_reference_s=old.host_probe_reference_s, host_probes=old.host_probes,
            cases=[_measured_from_point(p) for p in old.points])
    else:
        meas = old
    if estimator is not None:
        meas = meas.model_copy(update={"estimator": resolve_estimator(estimator, meas.device.kind)})
    probed = meas.estimator == "probed"
    if probed and meas.host_probe_reference_s is None:
        raise InputError(str(path), "host_probe_reference_s", "the 'probed' estimator needs the host-speed yardstick "
                         "(validate on a CPU since session 13); allowed for this folder: median, best")
    rounds = sorted(folder.glob("profile-round-*.json"))
    if rounds:  # the merge that matches the estimator (profile.json holds the one the folder was made with)
        profile = merge_profiles([at_reference_speed(load_profile(r), meas.host_probe_reference_s) if probed
                                  else load_profile(r) for r in rounds], fastest_steps=meas.estimator == "best")
    t0 = time.perf_counter()
    tol = (old.tolerance_pct if isinstance(old, ValidationReport) else (15.0 if old.quick else 5.0)) \
        if tolerance_pct is None else tolerance_pct
    report = predict_measurements(meas, profile, traces, out_dir, tol, seed, log, workers=workers)
    extra = [meas_path] if meas_path.is_file() else []
    for src in (*rounds, *extra, *traces.values()):  # the new folder can be re-predicted
        write_atomic(out_dir / src.name, src.read_bytes())
    write_atomic(out_dir / "profile.json", profile.model_dump_json(indent=1) + "\n")  # what was calibrated on
    return report.model_copy(update={
        "command": "dspark-sim " + " ".join(sys.argv[1:]),
        "timings_s": {**meas.timings_s, "repredict_s": time.perf_counter() - t0},
    })


def _measured_from_point(p: ValidationPoint) -> MeasuredCase:
    return MeasuredCase(
        temperature=p.temperature, batch_size=p.batch_size, prompt_tokens=p.prompt_tokens, new_tokens=p.new_tokens,
        policy=p.policy, rounds=p.rounds, cross_prediction=p.cross_prediction,
        # the figures as measured (reports before session 12 hold no other estimator's)
        tokens_per_s=p.measured_median_tokens_per_s or p.measured_tokens_per_s,
        tau=p.measured_tau, batch_tokens_per_s=p.measured_batch_tokens_per_s or 0.0,
        repeats_tokens_per_s=p.measured_repeats_tokens_per_s or [],
        baseline_tokens_per_s=p.measured_median_baseline_tokens_per_s or p.measured_baseline_tokens_per_s,
        baseline_repeats_tokens_per_s=p.measured_baseline_repeats_tokens_per_s or [], verified=p.measured_verified,
        host_probe_s=p.measured_host_probe_s)
