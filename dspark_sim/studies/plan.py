"""`dspark-sim plan`: the cheapest deployment that meets the SLOs at a target load.

For every candidate (hardware x tensor-parallel degree x speculation option, plus the same without
speculation) the planner finds the highest load one replica sustains under the SLOs (`capacity`).
Replicas = ceil(target / per-replica capacity), since requests are routed to the least-loaded
replica and replicas are identical. The cost per million output tokens is the deployment's price per
hour over its output tokens per hour at the target load, measured by one more short simulation of a
replica at its share of the load.

Prices are inputs: the plan file gives a price per GPU-hour for each candidate hardware.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dspark_sim.config.errors import InputError
from dspark_sim.config.loader import (
    apply_overrides,
    load_scenario_dict,
    override_resolver,
    read_yaml,
    scenario_from_dict,
    validate_as,
)
from dspark_sim.config.results import PlanCandidateResult, PlanResult, RunSummary
from dspark_sim.config.schema import PlanSpec
from dspark_sim.core.analytic import memory_available_bytes
from dspark_sim.studies.capacity import (
    biased_mean_len,
    capacity_search,
    first_guess,
    mean_len,
    probe,
    probe_record,
    with_load,
)
from dspark_sim.studies.executors import map_unordered


def _j(v: Any) -> str:
    return json.dumps(v)


def load_plan(path: str | Path) -> tuple[PlanSpec, Path, dict]:
    path = Path(path)
    spec = validate_as(PlanSpec, read_yaml(path), str(path))
    if spec.load.requests_per_s is not None and spec.slo.ttft_p99_s is None:
        raise InputError(str(path), "slo.ttft_p99_s", "a requests_per_s target needs a TTFT SLO: without one an "
                         "overloaded replica (whose queue grows without bound) would still meet TPOT")
    base = Path(spec.base)
    if not base.is_absolute():
        base = (path.resolve().parent / base).resolve()
    if not base.exists():
        raise InputError(str(path), "base", f"scenario file not found: {base}")
    raw = load_scenario_dict(base, list(spec.set))
    return spec, base, raw


def candidate_tasks(spec: PlanSpec, base_raw: dict, source: str) -> list[dict]:
    options = [(o.name, o.drafter, o.policy, list(o.set), True) for o in spec.candidates.speculation]
    if spec.candidates.add_no_speculation and not any(o[2].get("kind") == "none" for o in options):
        options.append(("no speculation", {"kind": "none"}, {"kind": "none"}, [], False))
    tasks = []
    for hw in spec.candidates.hardware:
        for tp in spec.candidates.tensor_parallel:
            for name, drafter, policy, sets, _spec in options:
                overrides = [
                    f"deployment.hardware={_j(hw)}",
                    f"deployment.tensor_parallel={tp}",
                    "deployment.replicas=1",
                    f"deployment.drafter={_j(drafter)}",
                    f"policy={_j(policy)}",
                    *sets,
                ]
                raw = apply_overrides(base_raw, overrides, override_resolver("plan"))
                raw["slo"] = spec.slo.model_dump()
                raw["seed"] = spec.seed
                raw["variants"] = []
                raw["sweep"] = None
                wl = raw.setdefault("workload", {})
                wl["num_requests"] = spec.search.num_requests
                wl["warmup_requests"] = spec.search.warmup_requests
                sim = raw.setdefault("simulation", {}) or {}
                sim.update(simulate_baseline=False, per_request_output="none")
                if spec.search.max_simulated_s is not None:
                    sim["max_simulated_s"] = spec.search.max_simulated_s
                raw["simulation"] = sim
                tasks.append({
                    "hardware": hw, "tensor_parallel": tp, "speculation": name,
                    "speculative": policy.get("kind", "none") != "none",
                    "raw": raw, "source": source, "plan": spec.model_dump(mode="json"),
                })
    return tasks



def target_load(spec: PlanSpec) -> float:
    """The plan's target: requests/s, or concurrent users (the schema requires exactly one of them)."""
    if spec.load.requests_per_s is not None:
        return spec.load.requests_per_s
    if spec.load.concurrent_users is None:
        raise InputError(spec.name, "load", "give requests_per_s or concurrent_users")
    return spec.load.concurrent_users


def plan_candidate(task: dict) -> dict:
    """Worker entry (picklable): one candidate's capacity, replicas and cost, as a PlanCandidateResult dict."""
    spec = PlanSpec.model_validate(task["plan"])
    label = f"{task['hardware']} TP{task['tensor_parallel']} {task['speculation']}"
    source = f"{task['source']} ({label})"
    rec: dict[str, Any] = {
        "hardware": task["hardware"], "tensor_parallel": task["tensor_parallel"],
        "speculation": task["speculation"], "speculative": task["speculative"],
        "feasible": False, "replica_capacity": 0.0, "replica_capacity_tokens_per_s": 0.0, "simulations": 0,
    }
    raw = dict(task["raw"])
    try:
        sc = scenario_from_dict(with_load(raw, spec, 1.0), source)
        raw["_plan_mean_output_tokens"] = mean_len(sc.workload.output_tokens)
        raw["_plan_inflight_output_tokens"] = biased_mean_len(sc.workload.output_tokens)
        if memory_available_bytes(sc) <= 0:
            raise InputError(source, "deployment", "the weights do not fit in this many GPUs' memory")
        guess = first_guess(sc, spec)
        cap, s, probes = capacity_search(raw, spec, source, guess)
    except InputError as exc:
        rec["reason"] = exc.message if exc.message else str(exc)
        return PlanCandidateResult.model_validate(rec).model_dump(mode="json")
    rec["simulations"] = len(probes)
    rec["search"] = probes
    if s is None or cap <= 0:
        rec["reason"] = "no load met the SLOs (the lowest probe failed)"
        return PlanCandidateResult.model_validate(rec).model_dump(mode="json")
    rec.update(feasible=True, replica_capacity=cap, replica_capacity_tokens_per_s=s.throughput_tokens_per_s,
               at_capacity=probe_record(cap, s))
    _deployment_cost(rec, task, spec, raw, raw["_plan_mean_output_tokens"], cap, s, source)
    return PlanCandidateResult.model_validate(rec).model_dump(mode="json")


def _deployment_cost(rec: dict[str, Any], task: dict, spec: PlanSpec, raw: dict, mean_output_tokens: float,
                     cap: float, s: RunSummary, source: str) -> None:
    """Replicas for the target load and the deployment's cost per million output tokens, into `rec`."""
    target = target_load(spec)
    replicas = max(1, math.ceil(target * (1 + spec.load.headroom) / cap - 1e-9))
    if replicas > spec.candidates.max_replicas:
        rec["reason"] = f"needs {replicas} replicas (> max_replicas {spec.candidates.max_replicas})"
        return
    gpus = replicas * task["tensor_parallel"]
    price = spec.gpu_price_usd_per_hour[task["hardware"]]
    usd_h = gpus * price
    # one more short simulation: a replica at its share of the target load (its latencies, and for
    # closed-loop users its throughput, which depends on how fast the deployment answers)
    share = target / replicas
    if spec.load.concurrent_users is not None:
        share = math.ceil(share)
    s_share = None
    try:
        s_share = probe(raw, spec, share, source)
        rec["simulations"] += 1
        rec["check"] = {"scope": "one replica at its share of the target load", **probe_record(share, s_share)}
    except InputError:
        pass
    if spec.load.requests_per_s is not None:  # open loop: every deployment meeting the SLOs carries the load
        tok_s = target * mean_output_tokens
    elif s_share is not None:
        tok_s = s_share.throughput_tokens_per_s * replicas
    else:
        tok_s = s.throughput_tokens_per_s * target / cap
    rec.update(
        replicas=replicas, gpus=gpus, capacity=cap * replicas, usd_per_hour=usd_h,
        usd_per_million_output_tokens=usd_h / max(tok_s * 3600, 1e-9) * 1e6,
        usd_per_million_output_tokens_at_capacity=task["tensor_parallel"] * price
        / max(s.throughput_tokens_per_s * 3600, 1e-9) * 1e6,
    )


def _cheapest(cands: list[PlanCandidateResult]) -> PlanCandidateResult | None:
    ok = [c for c in cands if c.usd_per_million_output_tokens is not None]
    return min(ok, key=lambda c: (c.usd_per_million_output_tokens or 0.0, c.usd_per_hour or 0.0,
                                  -(c.capacity or 0))) if ok else None


def _saving(best_no: PlanCandidateResult | None, best_yes: PlanCandidateResult | None) -> float | None:
    """The share of the cost per output token that speculation saves against the cheapest plan without it."""
    if best_no is None or best_yes is None or not best_no.usd_per_million_output_tokens:
        return None
    if best_yes.usd_per_million_output_tokens is None:
        return None
    return 1.0 - best_yes.usd_per_million_output_tokens / best_no.usd_per_million_output_tokens


def run_plan(path: str | Path, *, executor: str = "local", workers: int | None = None,
             ray_address: str | None = None, on_start: Callable[[int], None] | None = None,
             on_candidate: Callable[[dict], None] | None = None) -> PlanResult:
    """Every candidate's capacity and cost (in parallel), the cheapest with and without speculation."""
    t0 = time.perf_counter()
    spec, base, raw = load_plan(path)
    tasks = candidate_tasks(spec, raw, str(path))
    # fail fast on bad input shared by every candidate (an unknown field, a bad policy...)
    scenario_from_dict(with_load(tasks[0]["raw"], spec, 1.0), str(path))
    if on_start:
        on_start(len(tasks))
    results = []
    for rec in map_unordered(plan_candidate, tasks, executor, workers, ray_address):
        results.append(PlanCandidateResult.model_validate(rec))
        if on_candidate:
            on_candidate(rec)
    order = {(t["hardware"], t["tensor_parallel"], t["speculation"]): i for i, t in enumerate(tasks)}
    results.sort(key=lambda c: order[(c.hardware, c.tensor_parallel, c.speculation)])
    best = _cheapest(results)
    best_no = _cheapest([c for c in results if not c.speculative])
    best_yes = _cheapest([c for c in results if c.speculative])
    sc = scenario_from_dict(with_load(tasks[0]["raw"], spec, 1.0), str(path))
    return PlanResult(
        name=spec.name,
        model=sc.deployment.model.name,
        load_kind="requests_per_s" if spec.load.requests_per_s is not None else "concurrent_users",
        load=float(target_load(spec)),
        slo=spec.slo.model_dump(),
        prices_usd_per_gpu_hour=dict(spec.gpu_price_usd_per_hour),
        candidates=results,
        best=best,
        best_without_speculation=best_no,
        best_with_speculation=best_yes,
        saving_fraction=_saving(best_no, best_yes),
        wall_s=time.perf_counter() - t0,
    )
