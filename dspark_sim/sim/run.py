"""Simulate one configuration (simpy), and a whole scenario: variants x sweep values + baselines.

`Simulation` wires the parts together, Vidur-style: the workload (request table and arrival
processes), the replicas (engine loops with their scheduler and KV cache), the execution-time
predictor (`Costs`) and the metrics (`metrics.summarize`). Processes are plain generators:
- `_open_loop_arrivals`: issues requests at their pre-drawn arrival times;
- `_user`: one closed-loop user, sending its next request `think_time_s` after the previous ends;
- `Replica.process`: one engine loop per replica.
Requests are routed to the replica with the fewest outstanding requests (ties: lowest index).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import simpy

from dspark_sim.config.errors import InputError
from dspark_sim.config.loader import (
    absolutise_paths,
    apply_overrides,
    default_scenario_path,
    load_scenario_dict,
    override_resolver,
    scenario_from_dict,
)
from dspark_sim.config.results import RunResult, RunSummary, RunTimeSeries, SkippedRun
from dspark_sim.config.schema import DSparkScheduler, GoodputPolicy, Scenario
from dspark_sim.core.policies import make_policy
from dspark_sim.sim.costs import CostModelSPS, Costs, kv_capacity, uniform_step_time
from dspark_sim.sim.metrics import request_records, summarize, sweep_curves
from dspark_sim.sim.replica import Replica
from dspark_sim.sim.workload import RequestTable, build_requests, stream


class Outcome:
    """What happened to each request (indexed by request id), filled in as the simulation runs."""

    def __init__(self, n: int):
        self.admitted = np.full(n, np.nan)
        self.first_token = np.full(n, np.nan)
        self.finish = np.full(n, np.nan)
        self.gen = np.zeros(n, dtype=np.int64)
        self.steps = np.zeros(n, dtype=np.int64)
        self.verified = np.zeros(n, dtype=np.int64)
        self.accepted = np.zeros(n, dtype=np.int64)
        self.preemptions = np.zeros(n, dtype=np.int64)
        self.replica = np.full(n, -1, dtype=np.int64)


def policy_gamma_max(policy) -> int:
    return int(getattr(policy, "gamma_max", 0) or 0)


class Simulation:
    """One configuration on one request table."""

    def __init__(self, sc: Scenario, source: str = "scenario", progress=None):
        self.scenario = sc
        self.source = source
        self.progress = progress
        dep = sc.deployment
        probe = _make_policy(sc, None, source)
        self.gamma_max = policy_gamma_max(probe)
        if self.gamma_max > 0 and dep.drafter.kind == "none":
            raise InputError(source, "policy", f"policy {sc.policy.kind!r} speculates but deployment.drafter.kind is "
                             "'none'; set a drafter or use policy kind none")
        self.costs = Costs(sc)
        self.kv_blocks, self.kv_bytes_per_token = kv_capacity(sc, self.costs, source)
        self.requests: RequestTable = build_requests(sc, self.gamma_max, source)
        self._check_fits()
        check_slos(sc, self.costs, self.requests, self.gamma_max, source)
        self.out = Outcome(self.requests.n)
        self.env = simpy.Environment()
        self.conf_rng = stream(sc.seed, "confidence")
        self.replicas = []
        for i in range(dep.replicas):
            sps = CostModelSPS(self.costs) if isinstance(sc.policy, DSparkScheduler | GoodputPolicy) else None
            policy = _make_policy(sc, sps, source)
            use_sps = sps if (sps is not None and not (isinstance(sc.policy, DSparkScheduler)
                                                        and sc.policy.sps_source == "table")) else None
            self.replicas.append(Replica(i, self, policy, use_sps))
        self.finished = 0
        self.next_request = 0
        self.done_events: dict[int, simpy.Event] = {}

    def _check_fits(self) -> None:
        reqs = self.requests
        bs = self.scenario.deployment.kv_block_tokens
        lookahead = self.gamma_max + 1
        need = reqs.prompt + reqs.output + lookahead
        worst = int(np.argmax(need))
        blocks = -(-int(need[worst]) // bs)
        if blocks > self.kv_blocks:
            raise InputError(
                self.source, "workload",
                f"request {worst} ({int(reqs.prompt[worst])} prompt + {int(reqs.output[worst])} output tokens, "
                f"+{lookahead} lookahead) needs {blocks * bs} KV slots but one replica holds only "
                f"{self.kv_blocks * bs}; shorten the lengths or add memory (tensor_parallel, memory_utilisation)",
            )

    # ------------------------------------------------------------------------- processes
    def route(self, r: int) -> None:
        best = min(self.replicas, key=lambda rep: rep.load)
        self.out.replica[r] = best.index
        best.submit(r)

    def _open_loop_arrivals(self):
        env = self.env
        arrival = self.requests.arrival
        for r in range(self.requests.n):
            t = float(arrival[r])
            if t > env.now:
                yield env.timeout(t - env.now)
            self.route(r)

    def _user(self):
        env = self.env
        reqs = self.requests
        think = reqs.think_time_s
        while self.next_request < reqs.n:
            r = self.next_request
            self.next_request += 1
            reqs.arrival[r] = env.now
            done = env.event()
            self.done_events[r] = done
            self.route(r)
            yield done
            if think > 0:
                yield env.timeout(think)

    def on_complete(self, rids: np.ndarray, now: float) -> None:
        self.finished += len(rids)
        if self.done_events:
            for r in rids.tolist():
                ev = self.done_events.pop(r, None)
                if ev is not None:
                    ev.succeed()
        if self.progress is not None:
            self.progress(self.finished, self.requests.n)

    def run(self) -> Simulation:
        env = self.env
        for rep in self.replicas:
            env.process(rep.process())
        if self.requests.closed_loop:
            for _ in range(min(self.requests.concurrency, self.requests.n)):
                env.process(self._user())
        else:
            env.process(self._open_loop_arrivals())
        until = self.scenario.simulation.max_simulated_s
        env.run(until=until)
        return self


def _make_policy(sc: Scenario, sps, source: str):
    try:
        table = isinstance(sc.policy, DSparkScheduler) and sc.policy.sps_source == "table"
        if sps is None and isinstance(sc.policy, DSparkScheduler | GoodputPolicy) and not table:
            sps = _flat_sps  # a probe policy (only its gamma_max is read)
        return make_policy(sc.policy, sps)
    except ValueError as exc:
        raise InputError(source, "policy", str(exc)) from None


def _flat_sps(budget):
    return np.ones_like(np.asarray(budget, dtype=float))


def check_slos(sc: Scenario, costs: Costs, reqs: RequestTable, gamma: int, source: str) -> None:
    """Reject SLOs no request could meet even alone on an idle replica with perfect acceptance."""
    slo = sc.slo
    if slo.tpot_p99_ms is None and slo.min_tokens_per_s_per_user is None and slo.ttft_p99_s is None:
        return
    ctx = float(reqs.prompt.min())
    best_tpot = uniform_step_time(costs, 1, 0, ctx, 1.0)
    if gamma > 0:
        best_tpot = min(best_tpot, uniform_step_time(costs, 1, gamma, ctx, gamma + 1.0) / (gamma + 1))
    if slo.tpot_p99_ms is not None and slo.tpot_p99_ms / 1e3 < best_tpot:
        raise InputError(source, "slo.tpot_p99_ms",
                         f"impossible: {slo.tpot_p99_ms:g} ms is below the best possible TPOT of "
                         f"{best_tpot * 1e3:.3f} ms (one request alone, every draft token accepted)")
    if slo.min_tokens_per_s_per_user is not None and slo.min_tokens_per_s_per_user > 1.0 / best_tpot:
        raise InputError(source, "slo.min_tokens_per_s_per_user",
                         f"impossible: {slo.min_tokens_per_s_per_user:g} tokens/s exceeds the best possible "
                         f"{1.0 / best_tpot:.1f} tokens/s (one request alone, every draft token accepted)")
    if slo.ttft_p99_s is not None:
        q = np.array([float(reqs.prompt.min())])
        t = float(costs.target(q, np.zeros(1)).time_s) + costs.step_overhead_s
        if slo.ttft_p99_s < t:
            raise InputError(source, "slo.ttft_p99_s",
                             f"impossible: {slo.ttft_p99_s:g} s is below the {t:.4f} s prefill of the "
                             "shortest prompt alone")


# ------------------------------------------------------------------------------------------
# Whole scenario: sweep values x (main + variants), each with its no-speculation baseline
# ------------------------------------------------------------------------------------------


@dataclass
class ConfigRun:
    """One simulated configuration, with what the output files need."""

    summary: RunSummary
    series: RunTimeSeries
    records: list[dict] | None


def baseline_dict(raw: dict) -> dict:
    """The same deployment and requests without speculation (no drafter, policy none)."""
    out = json.loads(json.dumps(raw))
    out["policy"] = {"kind": "none"}
    out.setdefault("deployment", {})["drafter"] = {"kind": "none"}
    out["variants"] = []
    out["sweep"] = None
    return out


def _baseline_key(raw: dict) -> str:
    """What a baseline depends on: not the acceptance, except the trace file that supplies lengths."""
    keep = {k: v for k, v in raw.items() if k not in ("name", "description", "predict", "variants", "sweep")}
    workload = keep.get("workload") or {}
    lengths = bool(workload.get("lengths_from_trace"))

    def lengths_part(acc):
        if lengths and isinstance(acc, dict) and acc.get("kind") == "trace":
            return {"path": acc.get("path"), "max_requests": acc.get("max_requests")}
        return None

    keep["acceptance"] = lengths_part(keep.get("acceptance"))
    if isinstance(workload.get("domains"), list):
        keep["workload"] = {**workload, "domains": [
            {**{k: v for k, v in d.items() if k != "acceptance"}, "acceptance": lengths_part(d.get("acceptance"))}
            for d in workload["domains"] if isinstance(d, dict)]}
    return json.dumps(keep, sort_keys=True, default=str)


def simulate_config(sc: Scenario, variant: str, sweep_value, source: str, with_records: bool,
                    progress=None, baseline: RunSummary | None = None) -> ConfigRun:
    sim = Simulation(sc, source, progress).run()
    summary, series = summarize(sim, variant, sweep_value, baseline)
    records = request_records(sim) if with_records else None
    return ConfigRun(summary, series, records)


#: sweeps along these fields trace a load curve (per-user speed falls as throughput rises)
_LOAD_FIELDS = ("concurrency", "rate_per_s", "max_batch_size", "replicas")


@dataclass
class ScenarioRun:
    scenario: Scenario  # as loaded (before sweep values and variants)
    result: RunResult
    runs: list[ConfigRun]


@dataclass
class _Progress:
    """What simulating a scenario's configurations has produced so far."""

    total: int
    done: int = 0
    runs: list[ConfigRun] = field(default_factory=list)
    skipped: list[SkippedRun] = field(default_factory=list)
    errors: list[InputError] = field(default_factory=list)
    baselines: dict[tuple[str, str], ConfigRun] = field(default_factory=dict)  # per (sweep value, deployment)


def _configurations(raw: dict, base_sc: Scenario, base_dir: Path, source: str) -> list[tuple[Any, str, dict]]:
    """(sweep value, variant name, raw scenario) of every configuration: each sweep value x (main + variants)."""
    sweep = base_sc.sweep
    values = list(sweep.values) if sweep else [None]
    variants: list[tuple[str, list[str]]] = [("main", [])] + [(v.name, list(v.set)) for v in base_sc.variants]
    names = [v[0] for v in variants]
    if len(set(names)) != len(names) or "baseline" in names:
        raise InputError(source, "variants", "variant names must be unique and not 'main' or 'baseline'")
    plan: list[tuple[Any, str, dict]] = []
    for value in values:
        for name, sets in variants:
            ov = ([f"{sweep.path}={json.dumps(value)}"] if sweep else []) + sets
            cfg = absolutise_paths(apply_overrides(raw, ov, override_resolver("scenario")), base_dir)
            plan.append((value, name, cfg))
    return plan


def _shared_baseline(prog: _Progress, cfg: dict, name: str, value: Any, label: str, source: str,
                     with_records: bool, on_config, on_progress) -> ConfigRun | None:
    """The no-speculation run of `cfg`'s deployment and requests, simulated once per sweep value and
    deployment and shared by every variant that has them; None where it cannot run."""
    bcfg = baseline_dict(cfg)
    key = (json.dumps(value, default=str), _baseline_key(bcfg))
    base_run = prog.baselines.get(key)
    if base_run is None:
        if on_config:
            prog.total = max(prog.total, prog.done + 1)
            on_config(f"baseline for {label}", prog.done, prog.total)
        try:
            base_run = simulate_config(scenario_from_dict(bcfg, source), "baseline", value, source,
                                       with_records, on_progress)
        except InputError as exc:
            prog.skipped.append(SkippedRun(variant="baseline", sweep_value=value,
                                           reason=f"baseline of {name}: {exc}"))
            base_run = None
        else:
            prog.baselines[key] = base_run
            prog.runs.append(base_run)
        prog.done += 1
    if base_run is not None:
        base_run.summary.baseline_of.append(name)
    return base_run


def run_scenario(path: str | Path | None, overrides: list[str] | None = None, *, with_records: bool = False,
                 on_config=None, on_progress=None) -> ScenarioRun:
    """Simulate every (sweep value, variant) of a scenario and its baselines, on common random numbers.

    `on_config(label, index, total)` is called before each simulation, `on_progress(done, total)`
    as requests finish. A configuration that cannot run (an `InputError`) is skipped and reported;
    if none can run, the first error is raised.
    """
    scenario_path = Path(path) if path is not None else default_scenario_path()
    source = str(scenario_path)
    raw = load_scenario_dict(scenario_path, overrides or [])
    base_sc = scenario_from_dict(raw, source)
    sweep = base_sc.sweep
    plan = _configurations(raw, base_sc, scenario_path.resolve().parent, source)
    want_baseline = base_sc.simulation.simulate_baseline
    n_values = len(sweep.values) if sweep else 1
    prog = _Progress(total=len(plan) + (n_values if want_baseline else 0))  # baselines are shared where they can be
    for value, name, cfg in plan:
        label = name if sweep is None or value is None else f"{name} @ {sweep.path.split('.')[-1]}={value}"
        try:
            sc = scenario_from_dict(cfg, source)
        except InputError as exc:
            prog.errors.append(exc)
            prog.skipped.append(SkippedRun(variant=name, sweep_value=value, reason=str(exc)))
            continue
        base_run = None
        if want_baseline and sc.policy.kind != "none":
            base_run = _shared_baseline(prog, cfg, name, value, label, source, with_records, on_config, on_progress)
        if on_config:
            prog.total = max(prog.total, prog.done + 1)
            on_config(label, prog.done, prog.total)
        try:
            run = simulate_config(sc, name, value, source, with_records, on_progress,
                                  base_run.summary if base_run else None)
        except InputError as exc:
            prog.errors.append(exc)
            prog.skipped.append(SkippedRun(variant=name, sweep_value=value, reason=str(exc)))
            prog.done += 1
            continue
        prog.runs.append(run)
        prog.done += 1
    runs = prog.runs
    if not any(r.summary.variant != "baseline" for r in runs) and prog.errors:
        raise prog.errors[0]
    result = RunResult(
        scenario=base_sc.name,
        seed=base_sc.seed,
        hardware=base_sc.deployment.hardware.name,
        model=base_sc.deployment.model.name,
        sweep_path=sweep.path if sweep else None,
        summaries=[r.summary for r in runs],
        curves=sweep_curves([r.summary for r in runs], base_sc.slo.min_tokens_per_s_per_user)
        if sweep and sweep.path.endswith(_LOAD_FIELDS) else [],
        skipped=prog.skipped,
    )
    return ScenarioRun(base_sc, result, runs)
