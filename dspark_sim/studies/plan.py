"""`dspark-sim plan`: the cheapest deployment that meets the SLOs at a target load.

For every candidate (hardware x tensor-parallel degree x speculation option, plus the same without
speculation) the planner finds the highest load one replica sustains under the SLOs with short
simulations: a first guess from the closed-form predictor, doubling or halving until the SLOs flip,
then bisection on the arrival rate (or the number of closed-loop users) until the bracket is within the
tolerance (Vidur's capacity search does the same on QPS). Replicas = ceil(target / per-replica capacity),
since requests are routed to the least-loaded replica and replicas are identical. The cost per million
output tokens is the deployment's price per hour over its output tokens per hour at the target load,
measured by one more short simulation of a replica at its share of the load.

Prices are inputs: the plan file gives a price per GPU-hour for each candidate hardware.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from dspark_sim.config.errors import InputError
from dspark_sim.config.loader import (
    apply_overrides,
    load_scenario_dict,
    override_resolver,
    read_yaml,
    scenario_from_dict,
    validate_as,
)
from dspark_sim.config.results import PlanCandidateResult, PlanResult
from dspark_sim.config.schema import PlanSpec, Scenario

# --------------------------------------------------------------------------------------------
# Candidates
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# One candidate: capacity search
# --------------------------------------------------------------------------------------------


def _with_load(raw: dict, spec: PlanSpec, load: float) -> dict:
    out = dict(raw)
    wl = dict(out.get("workload") or {})
    if spec.load.requests_per_s is not None:
        wl["arrivals"] = {"kind": "poisson", "rate_per_s": float(load)}
    else:
        wl["arrivals"] = {"kind": "closed_loop", "concurrency": int(load), "think_time_s": spec.load.think_time_s}
    out["workload"] = wl
    return out


def _lengths(dist) -> np.ndarray:
    """A fixed-seed sample of a length distribution (lognormal clipped to its bounds, as the simulator does)."""
    if dist.kind == "fixed":
        return np.array([float(dist.tokens)])
    if dist.kind == "empirical":
        return np.asarray(dist.values, dtype=float)
    rng = np.random.default_rng(0)
    if dist.kind == "uniform":
        return rng.integers(dist.min_tokens, dist.max_tokens + 1, 200_000).astype(float)
    x = np.round(dist.median_tokens * np.exp(dist.sigma * rng.standard_normal(200_000)))
    return np.clip(x, dist.min_tokens, dist.max_tokens)


def _mean_len(dist) -> float:
    return float(_lengths(dist).mean())


def _biased_mean_len(dist) -> float:
    """E[X^2] / E[X]: the mean length of the requests one finds in flight (long ones stay longer)."""
    x = _lengths(dist)
    return float((x * x).mean() / x.mean())


def first_guess(sc: Scenario, spec: PlanSpec) -> float:
    """The closed form's estimate of one replica's capacity: the largest batch whose per-user speed
    meets the TPOT / tokens-per-user SLO (with a margin), turned into a rate or a user count."""
    from dspark_sim.core.analytic import predict_grid
    from dspark_sim.core.costmodel import StepCoster

    dep = sc.deployment
    coster = StepCoster.for_deployment(dep)
    gmax = int(getattr(sc.policy, "gamma", None) or getattr(sc.policy, "gamma_max", 0) or 0)
    gammas = [gmax] if sc.policy.kind == "fixed" else list(range(0, gmax + 1)) or [0]
    batches = sorted({int(b) for b in np.geomspace(1, dep.max_batch_size, 24).round()} | {dep.max_batch_size})
    ctx = _mean_len(sc.workload.prompt_tokens) + _mean_len(sc.workload.output_tokens) / 2
    g = predict_grid(coster, sc.acceptance, batches, [ctx], gammas if dep.drafter.kind != "none" else [0])
    per_user = np.max(g.tokens_per_s_per_user[:, 0, :], axis=1)
    need = 0.0
    if spec.slo.tpot_p99_ms is not None:
        need = max(need, 1e3 / (0.8 * spec.slo.tpot_p99_ms))
    if spec.slo.min_tokens_per_s_per_user is not None:
        need = max(need, spec.slo.min_tokens_per_s_per_user / 0.9)
    ok = [i for i in range(len(batches)) if per_user[i] >= need]
    i = ok[-1] if ok else 0
    batch = batches[i]
    if spec.load.concurrent_users is not None:
        return float(max(1, batch))
    # a replica serving `batch` sequences at `per_user` tokens/s each finishes this many requests/s
    # (prefill time ignored: the search corrects the guess)
    return max(1e-3, 0.7 * batch * float(per_user[i]) / max(_mean_len(sc.workload.output_tokens), 1.0))


def lifetime_s(spec: PlanSpec, mean_output_tokens: float) -> float:
    """A request's decode time if it runs at the SLO's speed: the time scale of the batch's ramp-up."""
    if spec.slo.tpot_p99_ms is not None:
        tpot_s = spec.slo.tpot_p99_ms / 1e3
    elif spec.slo.min_tokens_per_s_per_user is not None:
        tpot_s = 1.0 / spec.slo.min_tokens_per_s_per_user
    else:
        tpot_s = 0.05
    return mean_output_tokens * tpot_s


#: the first this-many in-flight lifetimes are the batch's ramp-up: left out of throughput and latencies
RAMP_LIFETIMES = 2.0


def _sized(raw: dict, spec: PlanSpec, load: float) -> dict:
    """Size a probe so its batch reaches the steady state of this load, and measure only that.

    A short simulation at a high rate would otherwise end before the batch fills up (its transient
    looks better than the steady state). The time scale is the lifetime of the requests found in
    flight (length-biased: E[X^2]/E[X] output tokens at the SLO's TPOT): the probe leaves a ramp of
    RAMP_LIFETIMES out (`simulation.warmup_s`) and measures `steady_state_factor` lifetimes after it.
    """
    mean_out = raw.get("_plan_mean_output_tokens")
    out = {k: v for k, v in raw.items() if not k.startswith("_plan")}
    if mean_out is None:
        return out
    s = spec.search
    life = lifetime_s(spec, raw.get("_plan_inflight_output_tokens", mean_out))
    if spec.load.concurrent_users is not None:  # each user sends one request per (its own) lifetime
        rate = load / max(lifetime_s(spec, mean_out) + spec.load.think_time_s, 1e-9)
    else:
        rate = load
    need = rate * (RAMP_LIFETIMES + s.steady_state_factor) * life
    wl = dict(out.get("workload") or {})
    wl["num_requests"] = int(min(s.max_requests, max(s.num_requests, math.ceil(need))))
    out["workload"] = wl
    sim = dict(out.get("simulation") or {})
    sim["warmup_s"] = RAMP_LIFETIMES * life
    out["simulation"] = sim
    return out


def _probe(raw: dict, spec: PlanSpec, load: float, source: str):
    from dspark_sim.studies.sweep import simulate_dict

    result = simulate_dict(_with_load(_sized(raw, spec, load), spec, load), source)
    s = next(x for x in result.summaries if x.variant != "baseline" or len(result.summaries) == 1)
    return s


def _probe_record(load: float, s) -> dict:
    return {
        "load": load, "slo_met": bool(s.slo_met), "ttft_p99_s": s.ttft_s.p99, "tpot_p99_ms": s.tpot_ms.p99,
        "tokens_per_s_per_user": s.tokens_per_s_per_user, "throughput_tokens_per_s": s.throughput_tokens_per_s,
        "requests_per_s": s.requests_per_s, "mean_batch_size": s.mean_batch_size,
    }


def capacity_search(raw: dict, spec: PlanSpec, source: str, guess: float) -> tuple[float, Any, list[dict]]:
    """Highest load meeting the SLOs on one replica -> (load, its summary or None, probes)."""
    integer = spec.load.concurrent_users is not None
    tol = spec.search.tolerance
    budget = spec.search.max_simulations
    probes: list[dict] = []
    cache: dict[float, Any] = {}

    def run(x: float):
        x = float(max(1, round(x))) if integer else float(f"{x:.4g}")
        if x not in cache:
            s = _probe(raw, spec, x, source)
            cache[x] = s
            probes.append(_probe_record(x, s))
        return x, cache[x]

    lo, lo_s, hi = 0.0, None, math.inf
    x = guess
    # bracket: double while the SLOs hold, halve while they do not
    while len(cache) < budget:
        x, s = run(x)
        if s.slo_met:
            lo, lo_s = x, s
            if hi < math.inf:
                break
            x *= 2
        else:
            hi = x
            if lo > 0 or (integer and x <= 1):
                break
            x /= 2
            if not integer and x < guess / 1024:
                break
        if hi < math.inf and lo > 0:
            break
    # bisect
    while lo > 0 and hi < math.inf and len(cache) < budget:
        if integer and hi - lo <= 1:
            break
        if not integer and (hi - lo) / hi <= tol:
            break
        mid = (lo + hi) / 2
        if integer:
            mid = math.floor(mid)
        x, s = run(mid)
        if x in (lo, hi):
            break
        if s.slo_met:
            lo, lo_s = x, s
        else:
            hi = x
    return lo, lo_s, probes


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
        sc = scenario_from_dict(_with_load(raw, spec, 1.0), source)
        raw["_plan_mean_output_tokens"] = _mean_len(sc.workload.output_tokens)
        raw["_plan_inflight_output_tokens"] = _biased_mean_len(sc.workload.output_tokens)
        from dspark_sim.core.analytic import memory_available_bytes

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
               at_capacity=_probe_record(cap, s))
    target = spec.load.requests_per_s if spec.load.requests_per_s is not None else spec.load.concurrent_users
    replicas = max(1, math.ceil(target * (1 + spec.load.headroom) / cap - 1e-9))
    if replicas > spec.candidates.max_replicas:
        rec["reason"] = f"needs {replicas} replicas (> max_replicas {spec.candidates.max_replicas})"
        return PlanCandidateResult.model_validate(rec).model_dump(mode="json")
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
        s_share = _probe(raw, spec, share, source)
        rec["simulations"] += 1
        rec["check"] = {"scope": "one replica at its share of the target load", **_probe_record(share, s_share)}
    except InputError:
        pass
    if spec.load.requests_per_s is not None:  # open loop: every deployment meeting the SLOs carries the load
        tok_s = target * _mean_len(sc.workload.output_tokens)
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
    return PlanCandidateResult.model_validate(rec).model_dump(mode="json")


# --------------------------------------------------------------------------------------------
# The plan
# --------------------------------------------------------------------------------------------


def _cheapest(cands: list[PlanCandidateResult]) -> PlanCandidateResult | None:
    ok = [c for c in cands if c.usd_per_million_output_tokens is not None]
    return min(ok, key=lambda c: (c.usd_per_million_output_tokens, c.usd_per_hour, -(c.capacity or 0))) if ok else None


def run_plan(path: str | Path, *, executor: str = "local", workers: int | None = None,
             ray_address: str | None = None, on_start: Callable[[int], None] | None = None,
             on_candidate: Callable[[dict], None] | None = None) -> PlanResult:
    from dspark_sim.studies.sweep import map_unordered

    t0 = time.perf_counter()
    spec, base, raw = load_plan(path)
    tasks = candidate_tasks(spec, raw, str(path))
    # fail fast on bad input shared by every candidate (an unknown field, a bad policy...)
    scenario_from_dict(_with_load(tasks[0]["raw"], spec, 1.0), str(path))
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
    saving = None
    if best_no is not None and best_yes is not None and best_no.usd_per_million_output_tokens:
        saving = 1.0 - best_yes.usd_per_million_output_tokens / best_no.usd_per_million_output_tokens
    sc = scenario_from_dict(_with_load(tasks[0]["raw"], spec, 1.0), str(path))
    return PlanResult(
        name=spec.name,
        model=sc.deployment.model.name,
        load_kind="requests_per_s" if spec.load.requests_per_s is not None else "concurrent_users",
        load=float(spec.load.requests_per_s if spec.load.requests_per_s is not None else spec.load.concurrent_users),
        slo=spec.slo.model_dump(),
        prices_usd_per_gpu_hour=dict(spec.gpu_price_usd_per_hour),
        candidates=results,
        best=best,
        best_without_speculation=best_no,
        best_with_speculation=best_yes,
        saving_fraction=saving,
        wall_s=time.perf_counter() - t0,
    )


def _f(v: float | None, digits: int = 3) -> str:
    if v is None:
        return "-"
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.{digits}g}"


def _key(c: PlanCandidateResult) -> tuple:
    return (c.hardware, c.tensor_parallel, c.speculation)


def print_plan(result: PlanResult, console) -> None:
    from rich.table import Table

    unit = "req/s" if result.load_kind == "requests_per_s" else "users"
    slo = ", ".join(f"{k} {v:g}" for k, v in result.slo.items() if v is not None)
    console.print(f"[bold]{result.name}[/bold]: {result.model}, target {result.load:g} {unit}, SLO {slo}")
    prices = ", ".join(f"{k} ${v:g}" for k, v in result.prices_usd_per_gpu_hour.items())
    console.print(f"[dim]GPU prices per hour (inputs from the plan file, not defaults): {prices}[/dim]")
    table = Table(show_header=True, header_style="bold")
    for col in ("hardware", "TP", "speculation", f"cap/replica {unit}", "replicas", "GPUs", f"capacity {unit}",
                "$/hour", "$/M out tok", "$/M at cap", "TTFT p99 s", "TPOT p99 ms", "tok/s/user", "sims", "note"):
        table.add_column(col, justify="left" if col in ("hardware", "speculation", "note") else "right",
                         no_wrap=col in ("hardware", "speculation"))
    best = result.best
    rows = sorted(result.candidates, key=lambda c: (c.usd_per_million_output_tokens is None,
                                                    c.usd_per_million_output_tokens or 0.0))
    for c in rows:
        at = c.at_capacity or {}
        is_best = best is not None and _key(c) == _key(best)
        note = "[green]cheapest[/green]" if is_best else (c.reason or "")
        style = "bold" if is_best else ("dim" if c.replicas is None else None)
        table.add_row(
            c.hardware, str(c.tensor_parallel), c.speculation, _f(c.replica_capacity), _f(c.replicas),
            _f(c.gpus), _f(c.capacity), _f(c.usd_per_hour), _f(c.usd_per_million_output_tokens, 4),
            _f(c.usd_per_million_output_tokens_at_capacity, 4), _f(at.get("ttft_p99_s")),
            _f(at.get("tpot_p99_ms")), _f(at.get("tokens_per_s_per_user")), str(c.simulations), note, style=style,
        )
    console.print(table)
    console.print("[dim]cap/replica: highest load one replica sustains under the SLOs (bisection on short "
                  "simulations); latencies are at that load. $/M out tok: at the target load.[/dim]")
    for title, c in (("cheapest", best), ("without speculation", result.best_without_speculation),
                     ("with speculation", result.best_with_speculation)):
        if c is not None:
            console.print(f"{title}: {c.hardware} TP{c.tensor_parallel} x {c.replicas} replicas ({c.gpus} GPUs), "
                          f"{c.speculation}: ${c.usd_per_hour:.2f}/hour, ${c.usd_per_million_output_tokens:.4f} per "
                          f"million output tokens; sustains up to {_f(c.capacity)} {unit}")
    if result.saving_fraction is not None:
        console.print(f"speculation saves [bold]{result.saving_fraction:.0%}[/bold] of the cost per output token")
    if best is None:
        console.print("[red]no candidate meets the SLOs at the target load[/red]")
    console.print(f"[dim]{sum(c.simulations for c in result.candidates)} simulations in {result.wall_s:.1f} s[/dim]")


def plan_command(plan_file: Path, *, executor: str = "local", workers: int | None = None,
                 ray_address: str | None = None, json_out: bool = False, out: Path | None = None,
                 report: Path | None = None, progress: bool = True) -> PlanResult:
    """`dspark-sim plan`: search with a progress bar; print the table (or JSON); write JSON / HTML."""
    import sys

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from dspark_sim.config.io import write_atomic

    err = Console(stderr=True, highlight=False)
    show = progress and err.is_terminal
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err, transient=True, disable=not show) as bar:
        task = bar.add_task(f"plan {Path(plan_file).stem}: candidates", total=None)
        result = run_plan(plan_file, executor=executor, workers=workers, ray_address=ray_address,
                          on_start=lambda n: bar.update(task, total=n),
                          on_candidate=lambda rec: bar.advance(task))
    doc = result.model_dump_json(indent=2)
    if out is not None:
        write_atomic(out, doc + "\n")
    if report is not None:
        from dspark_sim.report.html import Inputs, build_page

        write_atomic(report, build_page(Inputs(plans=[(result, str(plan_file))]), f"dspark-sim plan: {result.name}",
                                        [str(plan_file)]))
    if json_out:
        sys.stdout.write(doc + "\n")
    else:
        console = Console(highlight=False)
        if not console.is_terminal:
            console = Console(highlight=False, width=210)
        print_plan(result, console)
    return result
