"""The simulator's prediction of each row of a measured drafter table (torch-free).

For every measured row (temperature x batch x drafter configuration, and plain decoding):
1. hardware: the engine profile of the table's device (target + draft model timings), calibrated per
   temperature; the hidden-state drafters were never timed there, so their cost is the calibrated cost
   model extrapolated to their architectures (head layers of the target's width);
2. acceptance: teacher-forced traces of each drafter (`validate.drafters.write_traces`);
3. a closed static batch of B requests as the engine ran it (padded verify, attention over the static
   cache, the table's prompt and output lengths), the drafter mapped to the simulator's DrafterSpec,
   the row's policy (FixedGamma, or DSpark's prefix scheduler over the very SPS(B) table the engine
   used), full-batch decode tokens/s exactly as `validate.predict_case` takes it;
4. each drafter loop's own per-step overhead (what lies outside the priced passes: the context update
   after verify, the confidence head, sampling), fitted to the loop's profiled step times as
   `calibrate` fits the draft-model loop's; the table's runs are never used.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dspark_sim.config.drafter_table import DrafterTableRow, loop_steps_of, sps_table_of
from dspark_sim.config.errors import InputError
from dspark_sim.config.measurements import EngineProfile
from dspark_sim.config.schema import DrafterSpec, DSparkScheduler, HardwareProfile, Scenario
from dspark_sim.config.shorthand import BASELINE, draft_length
from dspark_sim.core.costmodel import StepCoster
from dspark_sim.fit.calibrate import calibrate
from dspark_sim.sim.run import Simulation
from dspark_sim.validate.engine_scenario import (
    decode_tokens_and_passes,
    engine_run_scenario,
    full_batch_window,
)

#: the engine's drafters that draft their whole block in one pass (engine.drafters.ONE_PASS_KINDS)
ONE_PASS_KINDS = ("parallel_block", "dspark")


def drafter_spec(kind: str, args: Mapping[str, Any] | None, profile: EngineProfile, gamma: int) -> dict[str, Any]:
    """The simulator's DrafterSpec (as a dict) of an engine drafter, drafting `gamma` tokens a step.

    Facts about the engine (drafters.py / drafter_generate.py), not fitted knobs:
    - draft_model: its own KV cache and a 2-token catch-up first pass (as `validate` prices it);
    - mtp: `gamma` chained passes of ONE query token each (the context comes from a cache the verify
      pass updates, so no catch-up pass: first_pass_tokens 1), attending to the last `window` positions;
    - parallel_block / dspark: one pass over the trained block, always `block_size` query tokens whatever
      gamma (the cost model prices gamma + first_pass_tokens, so first_pass_tokens = block - gamma),
      attending to `window` positions; dspark adds its rank-r Markov head per drafted position.
    Head layers are priced as target-width layers (the engine's drafters have the target's width).
    Not priced: the context update after verify (a fuse + K/V projection of the verified tokens) and
    DSpark's confidence MLP.
    """
    if kind == "draft_model":
        if profile.draft is None:
            raise ValueError("the profile has no draft model timings to price the draft model with")
        return {"kind": "draft_model", "model": profile.draft.model_dump(), "first_pass_tokens": 2.0}
    if args is None:
        raise ValueError(f"drafter {kind!r} needs its engine args")
    common = {"num_layers": int(args["n_layers"]), "sliding_window_tokens": int(args["window"])}
    if kind == "mtp":
        return {"kind": "mtp", **common, "first_pass_tokens": 1.0}
    block = int(args["block_size"])
    if not 0 < gamma < block:
        raise ValueError(f"a {kind} block of {block} priced at gamma {gamma}: need 0 < gamma < block")
    spec = {"kind": kind, **common, "first_pass_tokens": float(block - gamma)}
    if kind == "dspark":
        spec["markov_rank"] = int(args["markov_rank"])
    return spec


def row_policy(row: DrafterTableRow, sps_tables: Mapping[str, Mapping[str, float]]) -> tuple[str, dict[str, Any], int]:
    """(drafter kind, policy spec as a dict, draft length) of a speculative row: its label read by
    `config.shorthand`, a DSpark scheduler running over the SPS(B) table the engine measured for it."""
    kind, _ = row.drafter_and_policy()
    table = sps_table_of(sps_tables, kind, row.batch)
    _, spec = row.drafter_and_policy(sps_table=table)
    if isinstance(spec, DSparkScheduler) and table is None:
        raise InputError("drafter table", f"sps_tables.{kind}@{row.batch}",
                         f"missing: row {row.config!r} ran DSpark's scheduler over a measured SPS(B) table")
    return kind, spec.model_dump(), draft_length(spec)


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
    hw = setup.hardware(temperature, kind if drafter is not None else None, gamma)
    return engine_run_scenario(f"drafters T={temperature:g} B={batch}", seed, hw, setup.profile.target, drafter,
                               policy, batch, setup.prompt_len, setup.new_tokens, setup.cache_tokens, trace,
                               "drafters")


def simulate(setup: Setup, temperature: float, batch: int, drafter: dict[str, Any] | None,
             policy: dict[str, Any] | None, trace: Path, kind: str | None = None,
             gamma: int = 0) -> tuple[float, float]:
    """(full-batch decode tokens/s, tau) over the seeds: the steps with every request decoding, as
    `validate.predict_case` and the table's `full_batch_tokens_per_s` take them."""
    tokens = seconds = gained = passes = 0.0
    for seed in setup.seeds:
        sc = scenario(setup, temperature, batch, drafter, policy, trace, seed, kind, gamma)
        sim = Simulation(sc, "drafters").run()
        window_tokens, window_s = full_batch_window(sim, batch)
        tokens += window_tokens
        seconds += window_s
        g, p, _ = decode_tokens_and_passes(sim)  # tau pooled over the seeds, as the table pools it
        gained += g
        passes += p
    return tokens / seconds, gained / max(passes, 1.0)


def _err(pred: float, meas: float) -> float:
    return round(100.0 * (pred / meas - 1.0), 2)


def predict_rows(rows: Sequence[DrafterTableRow], sps_tables: Mapping[str, Mapping[str, float]], setup: Setup,
                 traces: Mapping[tuple[str, float], Path], drafter_args: Mapping[str, Mapping[str, Any] | None],
                 log: Callable[[str], None] = lambda _m: None) -> list[dict[str, Any]]:
    """Every measured row with its prediction and errors (baseline rows: tok/s only)."""
    base_cache: dict[tuple[float, int], float] = {}
    out = []
    for r in rows:
        t, b = r.temperature, r.batch
        any_trace = next(p for (_k, tt), p in traces.items() if tt == t)
        if (t, b) not in base_cache:
            base_cache[(t, b)] = simulate(setup, t, b, None, None, any_trace)[0]
        base = base_cache[(t, b)]
        if r.config == BASELINE:
            rate, tau = base, 1.0
        else:
            kind, policy, g = row_policy(r, sps_tables)
            spec = drafter_spec(kind, drafter_args.get(kind), setup.profile, g)
            rate, tau = simulate(setup, t, b, spec, policy, traces[(kind, t)], kind, g)
        row = {
            "temperature": t, "batch": b, "config": r.config,
            "measured_throughput_tok_s": r.throughput_tok_s, "predicted_throughput_tok_s": round(rate, 1),
            "measured_per_user_tok_s": r.per_user_tok_s, "predicted_per_user_tok_s": round(rate / b, 1),
            "measured_speedup": r.speedup, "predicted_speedup": round(rate / base, 3),
            "measured_tau": r.tau, "predicted_tau": round(tau, 3),
            "tok_s_error_pct": _err(rate, r.throughput_tok_s),
            "speedup_error_pct": _err(rate / base, r.speedup),
            "tau_error_pct": _err(tau, r.tau),
        }
        out.append(row)
        log(f"T={t:g} B={b:3d} {r.config:20s} measured {r.throughput_tok_s:8.1f} tok/s x{r.speedup:.2f} | "
            f"predicted {rate:8.1f} x{rate / base:.2f} | err {row['tok_s_error_pct']:+.1f}% / "
            f"{row['speedup_error_pct']:+.1f}%")
    return out


def table_loop_steps(loop_step_s: Mapping[str, Sequence[float]]) -> dict[tuple[str, float, int, int], float]:
    """The loop step times a drafter table carries (`DrafterTable.loop_step_s`), before and after it
    averaged (seconds)."""
    return {key: statistics.mean(v) for key, v in loop_steps_of(loop_step_s).items()}


def fit_loop_overheads(setup: Setup, step_s: Mapping[tuple[str, float, int, int], float],
                       drafter_args: Mapping[str, Mapping[str, Any] | None]) -> dict[tuple[str, float, int], float]:
    """Per drafter, temperature and gamma: the per-step overhead (us) that makes the cost model's
    draft + verify time of the profiled steps match them (median over batch sizes, at least 0)."""
    ctx = float(setup.prompt_len + 16)
    residual: dict[tuple[str, float, int], list[float]] = {}
    for (kind, t, gamma, b), measured in step_s.items():
        spec = DrafterSpec.model_validate(drafter_spec(kind, drafter_args.get(kind), setup.profile, gamma))
        coster = StepCoster(setup.profile.target, spec, setup.hw[t], 1, pad_verify=True,
                            static_kv_tokens=setup.cache_tokens)
        passes = float(np.asarray(coster.draft(float(b), float(gamma), ctx).time_s)
                       + np.asarray(coster.verify(float(b), float(gamma), ctx).time_s))
        residual.setdefault((kind, t, gamma), []).append(measured - passes)
    return {key: round(max(statistics.median(v), 0.0) * 1e6, 1) for key, v in residual.items()}


def calibrated(profile: EngineProfile, temperatures: tuple[float, ...]) -> dict[float, HardwareProfile]:
    """One calibration per temperature (sampling costs more per step than greedy decoding)."""
    measured = {s.temperature for s in profile.steps}
    return {t: calibrate(profile, f"calibrated-{profile.device.kind}-T{t:g}",
                         temperature=t if t in measured else None)[0]
            for t in temperatures}
