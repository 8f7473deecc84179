"""Metrics: from the per-request outcome arrays and the replicas' step logs to result documents.

Definitions (all in simulated time):
- TTFT = first token - arrival; TPOT = (finish - first token) / (output - 1); e2e = finish - arrival;
  tokens/s per user = 1 / TPOT (the decode speed a user sees, as the DSpark paper reports it).
- Throughput: output tokens generated inside the measurement window / window length. The window
  starts at `simulation.warmup_s`; it ends when the run ends, or for closed-loop workloads at the last
  request's issue (after that the user population drains and the load is no longer the nominal one).
- tau: tokens per sequence per decode step (accepted draft tokens + 1); verification budget: draft
  tokens verified per sequence per decode step (add 1 for the DSpark paper's count, which includes
  the target's own token: "MTP-1 verifies 2").
- Bytes and pass times are per GPU (the cost model prices one tensor-parallel rank).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from dspark_sim.config.errors import InputError
from dspark_sim.config.results import LatencyStats, MatchedPoint, RunSummary, RunTimeSeries, SweepCurve
from dspark_sim.sim.replica import STEP_COLUMNS

_COL = {name: i for i, name in enumerate(STEP_COLUMNS)}


def _stats(x: np.ndarray) -> LatencyStats:
    if x.size == 0:
        return LatencyStats(mean=0.0, p50=0.0, p90=0.0, p99=0.0)
    p50, p90, p99 = np.percentile(x, [50, 90, 99])
    return LatencyStats(mean=float(x.mean()), p50=float(p50), p90=float(p90), p99=float(p99))


def step_log(sim) -> np.ndarray:
    """All replicas' steps, one row each (columns STEP_COLUMNS)."""
    rows = [np.asarray(rep.log, dtype=float).reshape(-1, len(STEP_COLUMNS)) for rep in sim.replicas]
    return np.concatenate(rows) if rows else np.zeros((0, len(STEP_COLUMNS)))


def measured_mask(sim) -> np.ndarray:
    """Finished requests that count: arrived after warmup_s, and not among the first warmup_requests."""
    out, reqs, sc = sim.out, sim.requests, sim.scenario
    m = ~np.isnan(out.finish)
    m &= reqs.arrival >= sc.simulation.warmup_s
    k = sc.workload.warmup_requests
    if k:
        done = np.flatnonzero(~np.isnan(out.finish))
        order = done[np.lexsort((done, out.finish[done]))]
        m[order[:k]] = False
    return m


def per_request(sim) -> dict[str, np.ndarray]:
    out, reqs = sim.out, sim.requests
    with np.errstate(invalid="ignore", divide="ignore"):
        ttft = out.first_token - reqs.arrival
        e2e = out.finish - reqs.arrival
        decode = out.finish - out.first_token
        multi = reqs.output > 1
        tpot = np.where(multi, decode / np.maximum(reqs.output - 1, 1), np.nan)
        speed = np.where(multi & (decode > 0), (reqs.output - 1) / decode, np.nan)
        tau = np.where(out.steps > 0, (out.accepted + out.steps) / np.maximum(out.steps, 1), np.nan)
    return {"ttft": ttft, "e2e": e2e, "tpot": tpot, "speed": speed, "tau": tau}


def _window(sim, log: np.ndarray, end: float) -> tuple[float, float, float, np.ndarray]:
    """(start, end, length, steps inside) of the throughput window: from warmup_s to the run's end, or for
    closed-loop workloads to the last request's issue; the whole run if that leaves no step."""
    sc, reqs = sim.scenario, sim.requests
    t0 = sc.simulation.warmup_s
    t1 = end
    if reqs.closed_loop:
        issued = reqs.arrival[~np.isnan(reqs.arrival)]
        if issued.size and issued.max() > t0:
            t1 = min(end, float(issued.max()))
    step_end = log[:, _COL["t_start"]] + log[:, _COL["dt"]]
    in_window = (step_end > t0) & (step_end <= t1)
    window = max(t1 - t0, 0.0)
    if window <= 0 or not in_window.any():
        t0, t1, window = 0.0, end, end
        in_window = np.ones(len(log), dtype=bool)
    return t0, t1, window, in_window


def _slo_fields(sim, m: np.ndarray, pr: dict[str, np.ndarray], tpot: np.ndarray, speed: np.ndarray,
                thr_per_gpu: float) -> dict[str, Any]:
    """SLO attainment, goodput and whether the p99 / mean figures hold (None without SLOs)."""
    slo, reqs = sim.scenario.slo, sim.requests
    if slo.ttft_p99_s is None and slo.tpot_p99_ms is None and slo.min_tokens_per_s_per_user is None:
        return {"slo_attainment": None, "goodput_tokens_per_s_per_gpu": None, "slo_met": None}
    ttft = pr["ttft"][m]
    ok = np.ones(int(m.sum()), dtype=bool)
    tp_all = pr["tpot"][m]
    sp_all = pr["speed"][m]
    if slo.ttft_p99_s is not None:
        ok &= ttft <= slo.ttft_p99_s
    if slo.tpot_p99_ms is not None:
        ok &= ~(tp_all * 1e3 > slo.tpot_p99_ms)
    if slo.min_tokens_per_s_per_user is not None:
        ok &= ~(sp_all < slo.min_tokens_per_s_per_user)
    out_tokens = reqs.output[m]
    checks = []
    if slo.ttft_p99_s is not None:
        checks.append(float(np.percentile(ttft, 99)) <= slo.ttft_p99_s)
    if slo.tpot_p99_ms is not None and tpot.size:
        checks.append(float(np.percentile(tpot, 99)) * 1e3 <= slo.tpot_p99_ms)
    if slo.min_tokens_per_s_per_user is not None and speed.size:
        checks.append(float(speed.mean()) >= slo.min_tokens_per_s_per_user)
    return {
        "slo_attainment": float(ok.mean()),
        "goodput_tokens_per_s_per_gpu": thr_per_gpu * float(out_tokens[ok].sum() / max(out_tokens.sum(), 1)),
        "slo_met": bool(all(checks)),
    }


def _speculation_fields(sim, wlog: np.ndarray) -> dict[str, Any]:
    """tau, verification budget and acceptance over the window's steps (the steady state, not the ramp-up
    or the drain); acceptance by draft position over the whole run."""
    steps_total = int(wlog[:, _COL["decoders"]].sum())
    verified = int(wlog[:, _COL["verify_sum"]].sum())
    accepted = int(wlog[:, _COL["accepted_sum"]].sum())
    dec_steps = float(steps_total)
    tried = sum(rep.tried for rep in sim.replicas)
    acc_hist = sum(rep.acc_hist for rep in sim.replicas)
    tried_ge = np.cumsum(tried[::-1])[::-1]
    acc_ge = np.cumsum(acc_hist[::-1])[::-1]
    per_pos = []
    for k in range(1, min(sim.gamma_max, len(tried) - 1) + 1):
        if tried_ge[k] <= 0:
            break
        per_pos.append(float(acc_ge[k] / tried_ge[k]))
    wasted = verified - accepted
    return {
        "tau": (accepted + steps_total) / steps_total if steps_total else 1.0,
        "mean_verify_budget": verified / steps_total if steps_total else 0.0,
        "mean_draft_tokens": float(wlog[:, _COL["draft_sum"]].sum() / dec_steps) if dec_steps else 0.0,
        "acceptance_rate": accepted / verified if verified else 0.0,
        "acceptance_per_position": per_pos,
        "wasted_verify_tokens": wasted,
        "wasted_verify_fraction": wasted / (verified + steps_total) if steps_total else 0.0,
    }


def _engine_fields(sim, log: np.ndarray, wlog: np.ndarray, window: float) -> dict[str, Any]:
    """Where the window's time and bytes went, the KV cache's fill and the queue."""
    dep = sim.scenario.deployment
    dt = wlog[:, _COL["dt"]]
    busy = float(dt.sum())
    all_tokens = float(wlog[:, _COL["tokens"]].sum())
    hbm = float(wlog[:, _COL["hbm_bytes"]].sum())
    onchip = float(wlog[:, _COL["onchip_bytes"]].sum())
    cap = sim.kv_blocks
    kv = wlog[:, _COL["kv_blocks"]] / cap
    queue = wlog[:, _COL["queue"]]

    def frac(col: str) -> float:
        return float(wlog[:, _COL[col]].sum() / busy) if busy > 0 else 0.0

    return {
        "steps": len(log),
        "mean_batch_size": float(wlog[:, _COL["decoders"]].mean()) if len(wlog) else 0.0,
        "draft_time_fraction": frac("draft_s"),
        "verify_time_fraction": frac("target_s"),
        "overhead_time_fraction": frac("overhead_s"),
        "busy_fraction": busy / (window * dep.replicas) if window > 0 else 0.0,
        "hbm_gb_per_output_token": hbm / all_tokens / 1e9 if all_tokens else 0.0,
        "onchip_gb_per_output_token": onchip / all_tokens / 1e9 if all_tokens else 0.0,
        "onchip_byte_fraction": onchip / (onchip + hbm) if onchip + hbm > 0 else 0.0,
        "kv_capacity_tokens": cap * dep.kv_block_tokens,
        "kv_mean_fraction": float(kv.mean()) if len(kv) else 0.0,
        "kv_peak_fraction": float(log[:, _COL["kv_peak_blocks"]].max() / cap) if len(log) else 0.0,
        "mean_queue_length": float(queue.mean()) if len(queue) else 0.0,
        "max_queue_length": int(queue.max()) if len(queue) else 0,
        "preemptions": int(sim.out.preemptions.sum()),
    }


def summarize(sim, variant: str, sweep_value, baseline: RunSummary | None) -> tuple[RunSummary, RunTimeSeries]:
    """One configuration's summary and time series, measured over the requests and steps that count."""
    sc = sim.scenario
    dep = sc.deployment
    out, reqs = sim.out, sim.requests
    end = float(sim.env.now)
    log = step_log(sim)
    m = measured_mask(sim)
    if not m.any():
        limit = sc.simulation.max_simulated_s
        why = f" within max_simulated_s {limit:g} s" if limit else ""
        raise InputError(sim.source, "simulation", f"no request finished past the warm-up{why}; "
                         "nothing to measure (raise max_simulated_s or num_requests, or lower warmup)")
    pr = per_request(sim)
    ttft, e2e = pr["ttft"][m], pr["e2e"][m]
    multi = m & (reqs.output > 1)
    tpot = pr["tpot"][multi]
    speed = pr["speed"][multi & np.isfinite(pr["speed"])]
    t0, t1, window, in_window = _window(sim, log, end)
    tokens = int(log[in_window, _COL["tokens"]].sum())
    gpus = dep.replicas * dep.tensor_parallel
    thr = tokens / window if window > 0 else 0.0
    finished_in = ((out.finish > t0) & (out.finish <= t1)).sum()
    wlog = log[in_window]
    tpot_stats = _stats(tpot * 1e3)
    mean_speed = float(speed.mean()) if speed.size else 0.0
    summary = RunSummary(
        variant=variant,
        sweep_value=sweep_value,
        speculative=sim.gamma_max > 0,
        drafter=dep.drafter.kind,
        policy=sc.policy.kind,
        gamma_max=sim.gamma_max,
        replicas=dep.replicas,
        gpus=gpus,
        requests_total=reqs.n,
        requests_finished=int((~np.isnan(out.finish)).sum()),
        requests_measured=int(m.sum()),
        simulated_s=end,
        window_s=window,
        output_tokens=tokens,
        throughput_tokens_per_s=thr,
        throughput_tokens_per_s_per_gpu=thr / gpus,
        requests_per_s=float(finished_in / window) if window > 0 else 0.0,
        tokens_per_s_per_user=mean_speed,
        tokens_per_s_per_user_p50=float(np.median(speed)) if speed.size else 0.0,
        ttft_s=_stats(ttft),
        tpot_ms=tpot_stats,
        e2e_s=_stats(e2e),
        **_slo_fields(sim, m, pr, tpot, speed, thr / gpus),
        **_speculation_fields(sim, wlog),
        **_engine_fields(sim, log, wlog, window),
    )
    if baseline is not None:
        summary.speedup_tokens_per_s_per_user = _ratio(mean_speed, baseline.tokens_per_s_per_user)
        summary.speedup_throughput = _ratio(thr / gpus, baseline.throughput_tokens_per_s_per_gpu)
        summary.speedup_tpot_p50 = _ratio(baseline.tpot_ms.p50, tpot_stats.p50)
    return summary, time_series(sim, log, variant, sweep_value)


def _ratio(a: float, b: float) -> float | None:
    return float(a / b) if b > 0 and math.isfinite(a / b) else None


def time_series(sim, log: np.ndarray, variant: str, sweep_value) -> RunTimeSeries:
    interval = sim.scenario.simulation.time_series_interval_s
    end = float(sim.env.now)
    nbins = max(int(math.ceil(end / interval)), 1) if end > 0 else 1
    idx = np.minimum((log[:, _COL["t_start"]] // interval).astype(np.int64), nbins - 1)

    def total(col: str) -> np.ndarray:
        return np.bincount(idx, weights=log[:, _COL[col]], minlength=nbins)

    count = np.bincount(idx, minlength=nbins).astype(float)
    dec = total("decoders")
    ver = total("verify_sum")
    safe = np.maximum(count, 1.0)
    cap = sim.kv_blocks * len(sim.replicas)
    return RunTimeSeries(
        variant=variant,
        sweep_value=sweep_value,
        interval_s=interval,
        t_s=[float(i * interval) for i in range(nbins)],
        tokens_per_s=[float(x) for x in total("tokens") / interval],
        verify_budget=[float(v / d) if d > 0 else None for v, d in zip(ver, dec)],
        running=[float(x) for x in total("running") / safe],
        queue_length=[float(x) for x in total("queue") / safe],
        kv_fraction=[float(x) for x in total("kv_blocks") / safe / (cap / len(sim.replicas))],
        preemptions=[int(x) for x in total("preemptions")],
    )


def request_records(sim) -> list[dict]:
    """One record per request (for requests.jsonl / requests.csv)."""
    out, reqs = sim.out, sim.requests
    pr = per_request(sim)
    m = measured_mask(sim)

    def num(x: float, digits: int = 9):
        return None if not math.isfinite(x) else round(float(x), digits)

    records = []
    for r in range(reqs.n):
        records.append({
            "id": r,
            "domain": reqs.domain_names[int(reqs.domain[r])],
            "replica": int(out.replica[r]),
            "arrival_s": num(reqs.arrival[r]),
            "first_token_s": num(out.first_token[r]),
            "finish_s": num(out.finish[r]),
            "prompt_tokens": int(reqs.prompt[r]),
            "output_tokens": int(reqs.output[r]),
            "ttft_s": num(pr["ttft"][r]),
            "tpot_ms": num(pr["tpot"][r] * 1e3, 6),
            "e2e_s": num(pr["e2e"][r]),
            "steps": int(out.steps[r]),
            "verified": int(out.verified[r]),
            "accepted": int(out.accepted[r]),
            "tau": num(pr["tau"][r], 6),
            "preemptions": int(out.preemptions[r]),
            "measured": bool(m[r]),
        })
    return records


def sweep_curves(summaries: list[RunSummary], min_speed: float | None) -> list[SweepCurve]:
    """Per variant: throughput at the SLO's per-user speed, and main's per-user gain at matched throughput.

    Points are taken in sweep order (e.g. rising concurrency: falling per-user speed, rising throughput).
    """
    by_variant: dict[str, list[RunSummary]] = {}
    for s in summaries:
        by_variant.setdefault(s.variant, []).append(s)
    main = by_variant.get("main", [])
    main_pts = sorted((s.throughput_tokens_per_s_per_gpu, s.tokens_per_s_per_user) for s in main)
    curves = []
    for name, pts in by_variant.items():
        if len(pts) < 2:
            continue
        at_slo, within = None, False
        if min_speed is not None:
            at_slo, within = _throughput_at_speed(pts, min_speed)
        matched = []
        if name != "main" and len(main_pts) >= 2:
            xs = np.array([p[0] for p in main_pts])
            ys = np.array([p[1] for p in main_pts])
            for s in pts:
                x = s.throughput_tokens_per_s_per_gpu
                inside = xs[0] <= x <= xs[-1]
                main_speed = float(np.interp(x, xs, ys)) if inside else None
                gain = main_speed / s.tokens_per_s_per_user if main_speed and s.tokens_per_s_per_user > 0 else None
                matched.append(MatchedPoint(sweep_value=s.sweep_value, throughput_tokens_per_s_per_gpu=x,
                                            tokens_per_s_per_user=s.tokens_per_s_per_user,
                                            main_tokens_per_s_per_user=main_speed, main_gain=gain))
        curves.append(SweepCurve(variant=name, throughput_at_slo_per_gpu=at_slo, slo_within_sweep=within,
                                 matched=matched))
    return curves


def _throughput_at_speed(pts: list[RunSummary], speed: float) -> tuple[float | None, bool]:
    ok = [i for i, s in enumerate(pts) if s.tokens_per_s_per_user >= speed]
    if not ok:
        return None, False
    i = ok[-1]
    a = pts[i]
    if i + 1 >= len(pts):
        return a.throughput_tokens_per_s_per_gpu, False
    b = pts[i + 1]
    drop = a.tokens_per_s_per_user - b.tokens_per_s_per_user
    f = (a.tokens_per_s_per_user - speed) / drop if drop > 0 else 0.0
    thr = a.throughput_tokens_per_s_per_gpu + f * (b.throughput_tokens_per_s_per_gpu - a.throughput_tokens_per_s_per_gpu)
    return float(thr), True
