"""The simulator's prediction of the measured drafter table (`dspark-sim validate --drafters`), with its error.

The table comes from benchmarks/drafters_cpu.py (the engine's drafters, measured); this module
predicts every row of it and reports the error.

For every measured row (temperature x batch x drafter config, and plain decoding):
1. hardware: the committed CPU engine profile (target + draft model timings), calibrated per
   temperature; the hidden-state drafters were never timed there, so their cost is the calibrated cost
   model extrapolated to their architectures (head layers of the target's width);
2. acceptance: teacher-forced traces of each drafter (engine/drafter_trace.py; the draft model's from
   engine/acceptance_trace.py) on held-out windows BETWEEN the ones the benchmark measured;
3. a closed static batch of B requests as the engine ran it (padded verify, attention over the static
   cache, the benchmark's prompt and output lengths), the drafter mapped to the simulator's
   DrafterSpec, the same policy (FixedGamma, or DSpark's prefix scheduler over the very SPS(B) table
   the engine used), full-batch decode tokens/s exactly as `validate.predict_case` takes it;
4. each drafter loop's own per-step overhead (what lies outside the priced passes: the context update
   after verify, the confidence head, sampling), from step times of the loop on random-token prompts
   at the table's gammas (profiled by the benchmark before and after the table, or here if the table
   has none), fitted as `calibrate` fits the draft-model loop's; the table's runs are never used.

    dspark-sim validate --drafters validation/drafters/cpu.json \
        --profile validation/drafters/cpu-profile.json --out validation/drafters
"""

from __future__ import annotations

import json
import statistics
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from dspark_sim.config.io import write_atomic
from dspark_sim.config.measurements import EngineProfile
from dspark_sim.config.schema import DSparkScheduler, FixedGamma, HardwareProfile, Scenario

# ------------------------------------------------------------------------------------------------
# What the simulator is told about each engine drafter
# ------------------------------------------------------------------------------------------------


def drafter_spec(kind: str, args: Mapping[str, Any] | None, profile: EngineProfile, gamma: int) -> dict[str, Any]:
    """The simulator's DrafterSpec (as a dict) of an engine drafter, drafting `gamma` tokens a step.

    Facts about the engine (drafters.py / drafter_generate.py), not fitted knobs:
    - draft_model: its own KV cache and a 2-token catch-up first pass (as `validate` prices it);
    - mtp: `gamma` chained passes of ONE query token each (the context comes from a cache the verify
      pass updates, so no catch-up pass: first_pass_tokens 1), attending to the last `window` positions;
    - parallel / dspark: one pass over the trained block, always `block_size` query tokens whatever
      gamma (the cost model prices gamma + first_pass_tokens, so first_pass_tokens = block - gamma),
      attending to `window` positions; dspark adds its rank-r Markov head per drafted position.
    Head layers are priced as target-width layers (the engine's drafters have the target's width).
    Not priced: the context update after verify (a fuse + K/V projection of the verified tokens) and
    DSpark's confidence MLP.
    """
    if kind == "draft_model":
        return {"kind": "draft_model", "model": profile.draft.model_dump(), "first_pass_tokens": 2.0}
    if args is None:
        raise ValueError(f"drafter {kind!r} needs its engine args")
    common = {"num_layers": int(args["n_layers"]), "sliding_window_tokens": int(args["window"])}
    if kind == "mtp":
        return {"kind": "mtp", **common, "first_pass_tokens": 1.0}
    block = int(args["block_size"])
    if not 0 < gamma < block:
        raise ValueError(f"a {kind} block of {block} priced at gamma {gamma}: need 0 < gamma < block")
    spec = {"kind": "parallel_block" if kind == "parallel" else "dspark", **common,
            "first_pass_tokens": float(block - gamma)}
    if kind == "dspark":
        spec["markov_rank"] = int(args["markov_rank"])
    return spec


def policy_spec(config: str, sps_table: Mapping[str, float] | None) -> dict[str, Any]:
    """'kind/fixed-g' -> FixedGamma(g); 'kind/dspark-g' -> the prefix scheduler over the measured table."""
    name = config.split("/")[1]
    g = int(name.rsplit("-", 1)[1])
    if name.startswith("fixed-"):
        return FixedGamma(gamma=g).model_dump()
    if sps_table is None:
        raise ValueError(f"{config}: the DSpark scheduler needs the measured SPS(B) table")
    table = {int(k): float(v) for k, v in sps_table.items()}
    return DSparkScheduler(gamma_max=g, sps_source="table", sps_table=table).model_dump()


def config_gamma(config: str) -> int:
    return int(config.split("/")[1].rsplit("-", 1)[1])


def cache_tokens(prompt_len: int, new_tokens: int, gamma: int) -> int:
    """The static cache every run of the benchmark attends over: sized by the drafter loop for its
    largest gamma (`drafter_generate`), and kept by `ensure_caches` for the smaller configs after."""
    return prompt_len + new_tokens + 2 * gamma + 2


# ------------------------------------------------------------------------------------------------
# Acceptance traces on prompts the benchmark did not measure
# ------------------------------------------------------------------------------------------------


def unmeasured_prompts(eval_tokens: list[int], measured_count: int, length: int, count: int) -> list[list[int]]:
    """`count` windows midway between the benchmark's `held_out_prompts` windows (same spacing rule),
    so no trace prompt overlaps a measured one."""
    span = len(eval_tokens) - length - 1
    starts = np.round(np.linspace(0, span, measured_count)).astype(np.int64)
    if measured_count < 2 or np.diff(starts).min() < 2 * length:
        raise ValueError("held-out corpus too short for disjoint trace prompts")
    mids = (starts[:-1] + starts[1:]) // 2
    pick = mids[np.unique(np.linspace(0, len(mids) - 1, min(count, len(mids))).round().astype(np.int64))]
    return [eval_tokens[int(s): int(s) + length] for s in pick]


def write_traces(target: Any, drafters: Mapping[str, Any], prompts: list[list[int]], new_tokens: int,
                 temperatures: tuple[float, ...], seed: int, out_dir: Path,
                 log: Callable[[str], None] = lambda _m: None) -> dict[tuple[str, float], Path]:
    """One JSONL trace per drafter and temperature (simulator trace format)."""
    from dspark_sim.engine.sampling import Sampling
    from dspark_sim.measure.acceptance_trace import acceptance_records
    from dspark_sim.measure.drafter_trace import drafter_acceptance_records

    out: dict[tuple[str, float], Path] = {}
    for kind, d in drafters.items():
        for t in temperatures:
            fn = acceptance_records if kind == "draft_model" else drafter_acceptance_records
            recs = fn(target, d, prompts, new_tokens, Sampling(temperature=t), seed)
            path = out_dir / f"{kind}-T{t:g}.jsonl"
            write_atomic(path, "".join(json.dumps(r) + "\n" for r in recs))
            out[(kind, t)] = path
            log(f"trace {kind} T={t:g}: mean yield {np.mean([np.mean(r['accept_len']) for r in recs]):.2f}")
    return out


# ------------------------------------------------------------------------------------------------
# Simulating one row
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setup:
    """Everything shared by the rows: calibrated hardware per temperature and the run's shape."""

    profile: EngineProfile
    hw: Mapping[float, HardwareProfile]
    prompt_len: int
    new_tokens: int
    cache_tokens: int
    seeds: tuple[int, ...]
    #: per (drafter kind, temperature, gamma): the drafter loop's own per-step overhead, us (profiled)
    loop_step_us: Mapping[tuple[str, float, int], float] = field(default_factory=dict)

    def hardware(self, temperature: float, kind: str | None, gamma: int = 0) -> HardwareProfile:
        """The calibrated profile, with this drafter loop's profiled per-step overhead when there is one."""
        hw = self.hw[temperature]
        us = self.loop_step_us.get((kind, temperature, gamma)) if kind else None
        if us is None:
            return hw
        return hw.model_copy(update={"overheads": hw.overheads.model_copy(update={"per_step_us": us})})


def scenario(setup: Setup, temperature: float, batch: int, drafter: dict[str, Any] | None,
             policy: dict[str, Any] | None, trace: Path, seed: int, kind: str | None = None,
             gamma: int = 0) -> Scenario:
    """A closed static batch of `batch` requests, as `validate` describes an engine run."""
    from dspark_sim.validate.run import engine_run_scenario

    hw = setup.hardware(temperature, kind if drafter is not None else None, gamma)
    return engine_run_scenario(f"drafters T={temperature:g} B={batch}", seed, hw, setup.profile.target, drafter,
                               policy, batch, setup.prompt_len, setup.new_tokens, setup.cache_tokens, trace,
                               "drafters")


def simulate(setup: Setup, temperature: float, batch: int, drafter: dict[str, Any] | None,
             policy: dict[str, Any] | None, trace: Path, kind: str | None = None,
             gamma: int = 0) -> tuple[float, float]:
    """(full-batch decode tokens/s, tau) over the seeds: the steps with every request decoding, as
    `validate.predict_case` and the benchmark's `full_batch_tokens_per_s` take them."""
    from dspark_sim.sim.run import Simulation
    from dspark_sim.validate.run import decode_tokens_and_passes, full_batch_window

    tokens = seconds = gained = passes = 0.0
    for seed in setup.seeds:
        sc = scenario(setup, temperature, batch, drafter, policy, trace, seed, kind, gamma)
        sim = Simulation(sc, "drafters").run()
        window_tokens, window_s = full_batch_window(sim, batch)
        tokens += window_tokens
        seconds += window_s
        g, p, _ = decode_tokens_and_passes(sim)  # tau pooled over the seeds, as the benchmark pools it
        gained += g
        passes += p
    return tokens / seconds, gained / max(passes, 1.0)


def _err(pred: float, meas: float) -> float:
    return round(100.0 * (pred / meas - 1.0), 2)


def predict_rows(measured: Mapping[str, Any], setup: Setup, traces: Mapping[tuple[str, float], Path],
                 drafter_args: Mapping[str, Mapping[str, Any] | None],
                 log: Callable[[str], None] = lambda _m: None) -> list[dict[str, Any]]:
    """Every measured row with its prediction and errors (baseline rows: tok/s only)."""
    base_cache: dict[tuple[float, int], float] = {}
    out = []
    for r in measured["rows"]:
        t, b, config = float(r["temperature"]), int(r["batch"]), r["config"]
        any_trace = next(p for (_k, tt), p in traces.items() if tt == t)
        if (t, b) not in base_cache:
            base_cache[(t, b)] = simulate(setup, t, b, None, None, any_trace)[0]
        base = base_cache[(t, b)]
        if config == "baseline":
            rate, tau = base, 1.0
        else:
            kind = config.split("/")[0]
            g = config_gamma(config)
            spec = drafter_spec(kind, drafter_args.get(kind), setup.profile, g)
            policy = policy_spec(config, measured.get("sps_tables", {}).get(f"{kind}@{b}"))
            rate, tau = simulate(setup, t, b, spec, policy, traces[(kind, t)], kind, g)
        row = {
            "temperature": t, "batch": b, "config": config,
            "measured_throughput_tok_s": r["throughput_tok_s"], "predicted_throughput_tok_s": round(rate, 1),
            "measured_per_user_tok_s": r["per_user_tok_s"], "predicted_per_user_tok_s": round(rate / b, 1),
            "measured_speedup": r["speedup"], "predicted_speedup": round(rate / base, 3),
            "measured_tau": r["tau"], "predicted_tau": round(tau, 3),
            "tok_s_error_pct": _err(rate, r["throughput_tok_s"]),
            "speedup_error_pct": _err(rate / base, r["speedup"]),
            "tau_error_pct": _err(tau, r["tau"]),
        }
        out.append(row)
        log(f"T={t:g} B={b:3d} {config:20s} measured {r['throughput_tok_s']:8.1f} tok/s x{r['speedup']:.2f} | "
            f"predicted {rate:8.1f} x{rate / base:.2f} | err {row['tok_s_error_pct']:+.1f}% / "
            f"{row['speedup_error_pct']:+.1f}%")
    return out


# ------------------------------------------------------------------------------------------------
# Each drafter loop's own per-step overhead (profiled, as `calibrate` fits the draft-model loop's)
# ------------------------------------------------------------------------------------------------


def profile_drafter_loops(target: Any, drafters: Mapping[str, Any], gammas: Mapping[str, tuple[int, ...]],
                          temperatures: tuple[float, ...], batches: tuple[int, ...], prompt_len: int, cache: int, *,
                          new_tokens: int = 32, repeats: int = 3,
                          seed: int = 0) -> dict[tuple[str, float, int, int], float]:
    """Median wall time of a full-batch step of each drafter's loop at fixed gamma, on random-token
    prompts (not the table's prompts or runs), in rounds over the configurations (a shared machine's
    slow spells then touch one repeat of many, not every repeat of one), after a few untimed steps."""
    import torch

    from dspark_sim.engine.drafter_generate import drafter_generate
    from dspark_sim.engine.sampling import Sampling

    gen = torch.Generator().manual_seed(seed)
    vocab = target.args.vocab_size
    prompts = {b: torch.randint(0, vocab, (b, prompt_len), generator=gen).tolist() for b in batches}
    configs = [(k, t, g, b) for k in drafters for t in temperatures for g in gammas[k] for b in batches]
    times: dict[tuple[str, float, int, int], list[float]] = {c: [] for c in configs}
    for _ in range(repeats):
        for kind, t, gamma, b in configs:
            target.setup_caches(b, cache)  # the table's static cache length (the loop keeps a larger one)

            def run(n: int, kind: str = kind, t: float = t, gamma: int = gamma, b: int = b):
                g = torch.Generator(device=target.device).manual_seed(seed + 1)
                return drafter_generate(target, drafters[kind], prompts[b], n, FixedGamma(gamma=gamma),
                                        Sampling(temperature=t), generator=g)

            run(8)
            res = run(new_tokens)
            full = [w for s, w in zip(res.steps, res.step_wall_s, strict=True) if s.active.all()]
            if full:
                times[(kind, t, gamma, b)].append(statistics.median(full))
    return {c: statistics.median(v) for c, v in times.items() if v}


def table_loop_steps(measured: Mapping[str, Any]) -> dict[tuple[str, float, int, int], float]:
    """The loop step times a drafter table carries ("kind|T|gamma|batch": [before, after] seconds), averaged."""
    out = {}
    for key, v in (measured.get("loop_step_s") or {}).items():
        k, t, g, b = key.split("|")
        out[(k, float(t), int(g), int(b))] = statistics.mean(v)
    return out


def fit_loop_overheads(setup: Setup, step_s: Mapping[tuple[str, float, int, int], float],
                       drafter_args: Mapping[str, Mapping[str, Any] | None]) -> dict[tuple[str, float, int], float]:
    """Per drafter, temperature and gamma: the per-step overhead (us) that makes the cost model's
    draft + verify time of the profiled steps match them (median over batch sizes, at least 0)."""
    from dspark_sim.config.schema import DrafterSpec
    from dspark_sim.core.costmodel import StepCoster

    ctx = float(setup.prompt_len + 16)
    residual: dict[tuple[str, float, int], list[float]] = {}
    for (kind, t, gamma, b), measured in step_s.items():
        spec = DrafterSpec(**drafter_spec(kind, drafter_args.get(kind), setup.profile, gamma))
        coster = StepCoster(setup.profile.target, spec, setup.hw[t], 1, pad_verify=True,
                            static_kv_tokens=setup.cache_tokens)
        passes = float(np.asarray(coster.draft(float(b), float(gamma), ctx).time_s)
                       + np.asarray(coster.verify(float(b), float(gamma), ctx).time_s))
        residual.setdefault((kind, t, gamma), []).append(measured - passes)
    return {key: round(max(statistics.median(v), 0.0) * 1e6, 1) for key, v in residual.items()}


# ------------------------------------------------------------------------------------------------
# Summaries
# ------------------------------------------------------------------------------------------------


def error_table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Median and worst |error| of tok/s and speed-up, per drafter and temperature (and all temperatures)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        kind = r["config"].split("/")[0]
        for temp in (f"T={r['temperature']:g}", "all"):
            groups.setdefault((kind, temp), []).append(r)
    out = []
    for (kind, temp), rs in sorted(groups.items()):
        tok = [abs(r["tok_s_error_pct"]) for r in rs]
        spd = [abs(r["speedup_error_pct"]) for r in rs] if kind != "baseline" else []
        worst = max(rs, key=lambda r: abs(r["tok_s_error_pct"]))
        out.append({
            "drafter": kind, "temperature": temp, "rows": len(rs),
            "median_abs_tok_s_error_pct": round(statistics.median(tok), 1),
            "worst_abs_tok_s_error_pct": round(max(tok), 1),
            "median_abs_speedup_error_pct": round(statistics.median(spd), 1) if spd else None,
            "worst_abs_speedup_error_pct": round(max(spd), 1) if spd else None,
            "worst_tok_s_row": f"T={worst['temperature']:g} B={worst['batch']} {worst['config']}",
        })
    return out


def matched(curve_a: list[dict], curve_b: list[dict]) -> list[dict]:
    """For each point of curve A (throughput, per-user tok/s), B's per-user tok/s at the same throughput
    (linear interpolation in log throughput over B's points; None outside B's range)."""
    b = sorted(curve_b, key=lambda r: r["throughput_tok_s"])
    bx = np.log([r["throughput_tok_s"] for r in b])
    by = np.array([r["per_user_tok_s"] for r in b])
    out = []
    for r in sorted(curve_a, key=lambda r: r["throughput_tok_s"]):
        x = np.log(r["throughput_tok_s"])
        inside = bx.min() <= x <= bx.max()
        other = float(np.interp(x, bx, by)) if inside else None
        out.append({"batch": r["batch"], "throughput_tok_s": r["throughput_tok_s"], "per_user_tok_s": r["per_user_tok_s"],
                    "baseline_per_user_at_same_throughput": None if other is None else round(other, 1),
                    "per_user_gain_pct": None if other is None else round(100 * (r["per_user_tok_s"] / other - 1), 1)})
    return out


def comparison(rows: list[dict[str, Any]], gamma: int) -> dict[str, Any]:
    """DSpark (prefix scheduler) against MTP-1 at matched throughput, measured and predicted."""
    out: dict[str, Any] = {}
    for temp in sorted({r["temperature"] for r in rows}):
        side: dict[str, Any] = {}
        for which in ("measured", "predicted"):
            def curve(name: str, w: str = which, t: float = temp) -> list[dict[str, Any]]:
                return [{"batch": r["batch"], "throughput_tok_s": r[f"{w}_throughput_tok_s"],
                         "per_user_tok_s": r[f"{w}_per_user_tok_s"]}
                        for r in rows if r["config"] == name and r["temperature"] == t]
            a, b = curve(f"dspark/dspark-{gamma}"), curve("mtp/fixed-1")
            if a and b:
                side[which] = matched(a, b)
        if side:
            out[f"T={temp:g}"] = side
    return out


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:+.0f}%"


def markdown(report: dict[str, Any]) -> str:
    """The error table, the DSpark-vs-MTP-1 comparison (measured vs predicted) and the command."""
    where = f" ({report['table']}, profiled on {report.get('profile_device', '?')})" if "table" in report else ""
    out = [f"Simulator prediction of the measured drafter table{where}: full-batch decode "
           "tokens/s and speed-up over plain decoding, |error| = |predicted / measured - 1|.", "",
           "| drafter | temperature | rows | tok/s median / worst abs error | speed-up median / worst abs error "
           "| worst tok/s row |", "|---|---|---|---|---|---|"]
    for e in report["errors"]:
        spd = "-" if e["median_abs_speedup_error_pct"] is None else \
            f"{e['median_abs_speedup_error_pct']:.1f}% / {e['worst_abs_speedup_error_pct']:.1f}%"
        out.append(f"| {e['drafter']} | {e['temperature']} | {e['rows']} | {e['median_abs_tok_s_error_pct']:.1f}% / "
                   f"{e['worst_abs_tok_s_error_pct']:.1f}% | {spd} | {e['worst_tok_s_row']} |")
    out += ["", "Every row: measured / predicted throughput tok/s, speed-up, tau", "",
            "| T | B | config | tok/s | speed-up | tau | tok/s error | speed-up error |", "|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        out.append(f"| {r['temperature']:g} | {r['batch']} | {r['config']} | {r['measured_throughput_tok_s']:.0f} / "
                   f"{r['predicted_throughput_tok_s']:.0f} | {r['measured_speedup']:.2f} / {r['predicted_speedup']:.2f} | "
                   f"{r['measured_tau']:.2f} / {r['predicted_tau']:.2f} | {r['tok_s_error_pct']:+.1f}% | "
                   f"{r['speedup_error_pct']:+.1f}% |")
    for key, side in report["comparison"].items():
        out += ["", f"{key}: DSpark (prefix scheduler, gamma_max {report['gamma']}) against MTP-1 at matched "
                "throughput, measured vs predicted (MTP-1 tok/s/user interpolated at DSpark's throughput)", "",
                "| batch | DSpark tok/s meas / pred | DSpark tok/s/user meas / pred | MTP-1 tok/s/user there meas / pred "
                "| gain meas / pred |", "|---|---|---|---|---|"]
        pred = {r["batch"]: r for r in side.get("predicted", [])}
        for m in side.get("measured", []):
            p = pred.get(m["batch"], {})
            mo, po = m["baseline_per_user_at_same_throughput"], p.get("baseline_per_user_at_same_throughput")
            out.append(f"| {m['batch']} | {m['throughput_tok_s']:.0f} / {p.get('throughput_tok_s', float('nan')):.0f} | "
                       f"{m['per_user_tok_s']:.0f} / {p.get('per_user_tok_s', float('nan')):.0f} | "
                       f"{'-' if mo is None else f'{mo:.0f}'} / {'-' if po is None else f'{po:.0f}'} | "
                       f"{_pct(m['per_user_gain_pct'])} / {_pct(p.get('per_user_gain_pct'))} |")
    out += ["", "Command:", "", f"    {report['command']}"]
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------
# The real run
# ------------------------------------------------------------------------------------------------


def calibrated(profile: EngineProfile, temperatures: tuple[float, ...]) -> dict[float, HardwareProfile]:
    """One calibration per temperature (sampling costs more per step than greedy decoding)."""
    from dspark_sim.fit.calibrate import calibrate

    measured = {s.temperature for s in profile.steps}
    return {t: calibrate(profile, f"calibrated-{profile.device.kind}-T{t:g}",
                         temperature=t if t in measured else None)[0]
            for t in temperatures}


def run(measured_path: Path, profile_path: Path, seeds: int = 3, trace_prompts: int = 24,
        trace_dir: Path | None = None, cache_dir: str | None = None,
        log: Callable[[str], None] = lambda _m: None, profile_loops: bool = True) -> dict[str, Any]:
    """Load the measured table, the profile, the pair and the drafters; trace; predict; summarise."""
    import torch

    from dspark_sim.engine.data import load_corpus
    from dspark_sim.engine.train import get_preset, train_pair
    from dspark_sim.engine.train_drafters import train_drafters
    from dspark_sim.fit.calibrate import load_profile

    torch.manual_seed(0)
    measured = json.loads(measured_path.read_text())
    profile = load_profile(profile_path)
    preset, seed = measured["preset"], int(measured["seed"])
    kinds = tuple(measured["drafters"])
    temps = tuple(sorted({float(r["temperature"]) for r in measured["rows"]}))
    pair = train_pair(preset, seed, cache_dir)
    trained = train_drafters(preset, seed, cache_dir, [k for k in kinds if k != "draft_model"])
    drafters: dict[str, Any] = {"draft_model": pair.draft.eval(), **{k: v.drafter for k, v in trained.items()}}
    drafters = {k: drafters[k] for k in kinds}
    args = {k: (None if k == "draft_model" else d.args.to_dict()) for k, d in drafters.items()}
    corpus = load_corpus(get_preset(preset).max_corpus_bytes)
    batches = sorted({int(r["batch"]) for r in measured["rows"]})
    prompt_len, new_tokens, gamma = int(measured["prompt_len"]), int(measured["new_tokens"]), int(measured["gamma"])
    prompts = unmeasured_prompts(corpus.eval.tolist(), max(batches), prompt_len, trace_prompts)
    setup = Setup(profile, calibrated(profile, temps), prompt_len, new_tokens,
                  cache_tokens(prompt_len, new_tokens, gamma), tuple(seed + i for i in range(seeds)))
    step_s = table_loop_steps(measured)
    if step_s:  # profiled by the benchmark in the table's own session
        log("drafter loop steps: as profiled with the table (before and after it)")
    elif profile_loops:
        log("profiling each drafter loop's steps now (random-token prompts; the table has none) ...")
        loop_batches = tuple(sorted({1, 4, 16} & set(batches))) or (min(batches),)
        gammas: dict[str, set[int]] = {}
        for r in measured["rows"]:
            if r["config"] != "baseline":
                gammas.setdefault(r["config"].split("/")[0], set()).add(config_gamma(r["config"]))
        step_s = profile_drafter_loops(pair.target.eval(), drafters, {k: tuple(sorted(v)) for k, v in gammas.items()},
                                       temps, loop_batches, prompt_len, setup.cache_tokens, seed=seed)
    if step_s:
        setup = replace(setup, loop_step_us=fit_loop_overheads(setup, step_s, args))
        log("per-step overhead of each drafter loop (us): " + ", ".join(
            f"{k}@T={t:g},g={g} {v:.0f}" for (k, t, g), v in sorted(setup.loop_step_us.items())))
    with tempfile.TemporaryDirectory() as tmp:
        traces = write_traces(pair.target.eval(), drafters, prompts, new_tokens, temps, seed,
                              trace_dir or Path(tmp), log)
        rows = predict_rows(measured, setup, traces, args, log)
    return assemble(rows, gamma, {"preset": preset, "seed": seed, "seeds": list(setup.seeds),
                                  "trace_prompts": len(prompts), "prompt_len": prompt_len,
                                  "new_tokens": new_tokens, "static_kv_cache_tokens": setup.cache_tokens,
                                  "drafter_loop_step_us": {f"{k}@T={t:g},gamma={g}": v
                                                           for (k, t, g), v in sorted(setup.loop_step_us.items())},
                                  "drafter_specs": {k: drafter_spec(k, args[k], profile, gamma if k in
                                                                    ("parallel", "dspark") else 1)
                                                    for k in kinds}})


def assemble(rows: list[dict[str, Any]], gamma: int, meta: dict[str, Any]) -> dict[str, Any]:
    """The report: rows, error table, DSpark-vs-MTP-1 comparison at matched throughput."""
    return {**meta, "gamma": gamma, "errors": error_table(rows), "comparison": comparison(rows, gamma),
            "rows": rows}


def load_measured(path: Path) -> dict[str, Any]:
    """The measured drafter table (benchmarks/drafters_cpu.py --out); anything else is one InputError."""
    from dspark_sim.config.errors import InputError
    from dspark_sim.config.io import read_json

    doc = read_json(path, "drafter table",
                    "measured drafter table not found (make one with benchmarks/drafters_cpu.py --out)")
    need = ("preset", "seed", "drafters", "rows", "prompt_len", "new_tokens", "gamma", "sps_tables")
    missing = [k for k in need if not isinstance(doc, dict) or k not in doc]
    if missing:
        raise InputError(str(path), missing[0], f"missing; a drafter table from benchmarks/drafters_cpu.py has {', '.join(need)}")
    return doc


def validate_drafters(measured_path: Path, profile_path: Path, out_dir: Path, *, seeds: int = 3,
                      trace_prompts: int = 24, cache_dir: str | None = None, command: str = "",
                      log: Callable[[str], None] = lambda _m: None) -> dict[str, Any]:
    """Predict the measured table, write <out>/<name>_predicted.json and .md; returns the report."""
    from dspark_sim.fit.calibrate import load_profile

    load_measured(measured_path)
    report = run(measured_path, profile_path, seeds, trace_prompts, None, cache_dir, log)
    report["command"] = command
    report["table"] = str(measured_path)
    report["profile_device"] = load_profile(profile_path).device.name
    stem = measured_path.stem
    write_atomic(out_dir / f"{stem}_predicted.json", json.dumps(report, indent=1) + "\n")
    write_atomic(out_dir / f"{stem}_predicted.md", markdown(report) + "\n")
    return report
