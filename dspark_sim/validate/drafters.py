"""The simulator's prediction of a measured drafter table (`dspark-sim validate --drafters`), with its error.

The table comes from `dspark-sim engine drafters table` (the engine's drafters, measured); this module
loads the pair and drafters it measured, traces their acceptance on held-out windows BETWEEN the ones
the table measured (the draft model's with `measure.acceptance_trace`, the others' teacher-forced with
`measure.drafter_trace`), predicts every row (`validate.drafter_predict`) and writes the report
(`validate.drafter_report`). Each drafter loop's per-step overhead is fitted to the loop step times the
table carries, or to a profile taken here when it has none.

    dspark-sim validate --drafters validation/drafters/cpu.json \
        --profile validation/drafters/cpu-profile.json --out validation/drafters
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dspark_sim.config.drafter_table import DrafterTable, load_drafter_table
from dspark_sim.config.io import write_atomic
from dspark_sim.engine.data import load_corpus
from dspark_sim.engine.model import Transformer
from dspark_sim.engine.sampling import Sampling
from dspark_sim.engine.train import get_preset, train_pair
from dspark_sim.engine.train_drafters import train_drafters
from dspark_sim.fit.calibrate import load_profile
from dspark_sim.measure.acceptance_trace import acceptance_records
from dspark_sim.measure.drafter_loops import profile_drafter_loops
from dspark_sim.measure.drafter_trace import drafter_acceptance_records
from dspark_sim.validate.drafter_predict import (
    ONE_PASS_KINDS,
    Setup,
    calibrated,
    drafter_spec,
    fit_loop_overheads,
    predict_rows,
    row_policy,
    table_loop_steps,
)
from dspark_sim.validate.drafter_report import assemble, markdown


def unmeasured_prompts(eval_tokens: list[int], measured_count: int, length: int, count: int) -> list[list[int]]:
    """`count` windows midway between the table's `held_out_prompts` windows (same spacing rule),
    so no trace prompt overlaps a measured one."""
    span = len(eval_tokens) - length - 1
    starts = np.round(np.linspace(0, span, measured_count)).astype(np.int64)
    if measured_count < 2 or np.diff(starts).min() < 2 * length:
        raise ValueError("held-out corpus too short for disjoint trace prompts")
    mids = (starts[:-1] + starts[1:]) // 2
    pick = mids[np.unique(np.linspace(0, len(mids) - 1, min(count, len(mids))).round().astype(np.int64))]
    return [eval_tokens[int(s): int(s) + length] for s in pick]


def write_traces(target: Transformer, drafters: Mapping[str, Any], prompts: list[list[int]], new_tokens: int,
                 temperatures: tuple[float, ...], seed: int, out_dir: Path,
                 log: Callable[[str], None] = lambda _m: None) -> dict[tuple[str, float], Path]:
    """One JSONL trace per drafter and temperature (simulator trace format)."""
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


def loop_step_times(table: DrafterTable, target: Transformer, drafters: Mapping[str, Any], setup: Setup,
                    log: Callable[[str], None], profile_loops: bool) -> dict[tuple[str, float, int, int], float]:
    """Each drafter loop's full-batch step times: as profiled with the table (before and after it), or
    profiled now on random-token prompts when the table has none (and `profile_loops`)."""
    step_s = table_loop_steps(table.loop_step_s)
    if step_s:
        log("drafter loop steps: as profiled with the table (before and after it)")
        return step_s
    if not profile_loops:
        return {}
    log("profiling each drafter loop's steps now (random-token prompts; the table has none) ...")
    batches = {r.batch for r in table.rows}
    loop_batches = tuple(sorted({1, 4, 16} & batches)) or (min(batches),)
    gammas: dict[str, set[int]] = {}
    for r in table.rows:
        if r.config != "baseline":
            kind, _, g = row_policy(r, table.sps_tables)
            gammas.setdefault(kind, set()).add(g)
    temps = tuple(sorted({r.temperature for r in table.rows}))
    return profile_drafter_loops(target, drafters, {k: tuple(sorted(v)) for k, v in gammas.items()}, temps,
                                 loop_batches, setup.prompt_len, setup.cache_tokens, seed=table.seed)


def predict_table(table: DrafterTable, profile_path: Path, seeds: int = 3, trace_prompts: int = 24,
                  trace_dir: Path | None = None, cache_dir: str | None = None,
                  log: Callable[[str], None] = lambda _m: None, profile_loops: bool = True) -> dict[str, Any]:
    """Load the profile, the pair and the drafters; trace; predict; summarise."""
    torch.manual_seed(0)
    profile = load_profile(profile_path)
    kinds = tuple(table.drafters)
    temps = tuple(sorted({r.temperature for r in table.rows}))
    pair = train_pair(table.preset, table.seed, cache_dir)
    trained = train_drafters(table.preset, table.seed, cache_dir, [k for k in kinds if k != "draft_model"])
    drafters: dict[str, Any] = {"draft_model": pair.draft.eval(), **{k: v.drafter for k, v in trained.items()}}
    drafters = {k: drafters[k] for k in kinds}
    args = {k: (None if k == "draft_model" else d.args.to_dict()) for k, d in drafters.items()}
    corpus = load_corpus(get_preset(table.preset).max_corpus_bytes)
    max_batch = max(r.batch for r in table.rows)
    prompts = unmeasured_prompts(corpus.eval.tolist(), max_batch, table.prompt_len, trace_prompts)
    setup = Setup(profile, calibrated(profile, temps), table.prompt_len, table.new_tokens, table.cache_tokens,
                  tuple(table.seed + i for i in range(seeds)))
    step_s = loop_step_times(table, pair.target.eval(), drafters, setup, log, profile_loops)
    if step_s:
        setup = replace(setup, loop_step_us=fit_loop_overheads(setup, step_s, args))
        log("per-step overhead of each drafter loop (us): " + ", ".join(
            f"{k}@T={t:g},g={g} {v:.0f}" for (k, t, g), v in sorted(setup.loop_step_us.items())))
    with tempfile.TemporaryDirectory() as tmp:
        traces = write_traces(pair.target.eval(), drafters, prompts, table.new_tokens, temps, table.seed,
                              trace_dir or Path(tmp), log)
        rows = predict_rows(table.rows, table.sps_tables, setup, traces, args, log)
    gamma = table.gamma
    return assemble(rows, gamma, {
        "preset": table.preset, "seed": table.seed, "seeds": list(setup.seeds), "trace_prompts": len(prompts),
        "prompt_len": table.prompt_len, "new_tokens": table.new_tokens, "static_kv_cache_tokens": setup.cache_tokens,
        "drafter_loop_step_us": {f"{k}@T={t:g},gamma={g}": v for (k, t, g), v in sorted(setup.loop_step_us.items())},
        "drafter_specs": {k: drafter_spec(k, args[k], profile, gamma if k in ONE_PASS_KINDS else 1) for k in kinds}})


def validate_drafters(measured_path: Path, profile_path: Path, out_dir: Path, *, seeds: int = 3,
                      trace_prompts: int = 24, cache_dir: str | None = None, command: str = "",
                      log: Callable[[str], None] = lambda _m: None) -> dict[str, Any]:
    """Predict the measured table, write <out>/<name>_predicted.json and .md; returns the report."""
    table = load_drafter_table(measured_path)
    report = predict_table(table, profile_path, seeds, trace_prompts, None, cache_dir, log)
    report["command"] = command
    report["table"] = str(measured_path)
    report["profile_device"] = load_profile(profile_path).device.name
    stem = measured_path.stem
    write_atomic(out_dir / f"{stem}_predicted.json", json.dumps(report, indent=1) + "\n")
    write_atomic(out_dir / f"{stem}_predicted.md", markdown(report) + "\n")
    return report
