"""The drafter table: the bundled engine's drafters measured on this device (`dspark-sim engine drafters
table`): tau, per-position acceptance, confidence calibration, speed, and DSpark against an MTP-1
baseline at matched throughput. `dspark-sim validate --drafters` predicts it.

Drafters (trained against the preset's target if the cache lacks them, `engine.train_drafters`): the
autoregressive draft model, the MTP-style chained head, the parallel block drafter and DSpark. For every
temperature x batch: plain decoding, each drafter with a fixed gamma and with DSpark's hardware-aware
prefix scheduler fed by the drafter's confidences (DSpark: its calibrated head; others: q of the drafted
token) over an SPS(B) table measured here (draft + verify step time), and MTP-1 (the MTP head, gamma 1).

Timing: the machine may be shared, so every configuration runs `repeats` times, interleaved (all
configurations once, then again), and the fastest decode time counts. Batches smaller than
`min_sequences` run several batches of distinct prompts (batch 1: 8 prompts), pooled, so that no
point rests on one prompt. Each drafter loop's step time is profiled on random-token prompts before and
after the table (`measure.drafter_loops`), for the prediction's per-step overheads.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from dspark_sim.config.drafter_table import (
    DrafterTable,
    DrafterTableRow,
    DraftModelTraining,
    HeadDrafterTraining,
    LiveCalibration,
    PartialDrafterTable,
)
from dspark_sim.config.schema import DSparkScheduler, FixedGamma
from dspark_sim.config.shorthand import ENGINE_DRAFTER_KINDS, drafter_config
from dspark_sim.engine.caches import cache_tokens
from dspark_sim.engine.data import held_out_prompts, load_corpus
from dspark_sim.engine.drafters import MODE_GREEDY, MODE_SAMPLED
from dspark_sim.engine.model import Transformer
from dspark_sim.engine.sps import measure_step_sps
from dspark_sim.engine.train import TrainedPair, get_preset, train_pair
from dspark_sim.engine.train_drafters import TrainedDrafter, train_drafters
from dspark_sim.measure.drafter_loops import profile_drafter_loops
from dspark_sim.measure.drafter_runs import (
    Config,
    comparison,
    describe,
    live_for_batch,
    measure_batch,
    rounded,
    table_row,
)

TIMING = ("best of `repeats` interleaved runs; decode only (prefill excluded); speculative runs over the steps in "
          "which every sequence was still generating (batch_completion_* include the static batch's straggler "
          "tail); the machine's 2 cores may be shared with other jobs (noisy)")
LOOP_NOTE = ("kind|temperature|gamma|batch: median full-batch step wall time of the drafter loop on random-token "
             "prompts, measured before and after the table")


@dataclass(frozen=True)
class TableGrid:
    """What the table measures: the pair, the lengths, the batches and temperatures, the drafters."""

    preset: str = "tiny"
    seed: int = 0
    cache_dir: str | None = None
    new_tokens: int = 128
    prompt_len: int = 64
    batches: tuple[int, ...] = (1, 4, 16, 64)  # every configuration
    frontier_batches: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)  # DSpark and MTP-1 only (the comparison)
    temperatures: tuple[float, ...] = (0.0, 1.0)
    gamma: int = 5
    repeats: int = 3
    kinds: tuple[str, ...] = ENGINE_DRAFTER_KINDS
    min_sequences: int = 8
    device: str = "cpu"

    @property
    def all_batches(self) -> list[int]:
        return sorted(set(self.batches) | set(self.frontier_batches))


def load_models(grid: TableGrid, log: Callable[[str], None]) -> tuple[TrainedPair, dict[str, TrainedDrafter],
                                                                       Transformer, dict[str, Any]]:
    """The pair, the trained drafters, and the target and drafters on the grid's device (fp32: the tiny
    models are host-bound on a GPU, and the trained weights are fp32)."""
    pair = train_pair(grid.preset, grid.seed, grid.cache_dir, log=lambda m: log(f"pair: {m}"))
    trained = train_drafters(grid.preset, grid.seed, grid.cache_dir, [k for k in grid.kinds if k != "draft_model"],
                             log=lambda m: log(f"drafters: {m}"))
    target = pair.target.to(grid.device).eval()
    drafters: dict[str, Any] = {"draft_model": pair.draft.to(grid.device).eval(),
                                **{k: v.drafter.to(grid.device).eval() for k, v in trained.items()}}
    drafters = {k: drafters[k] for k in grid.kinds}
    if grid.device.startswith("cuda"):  # the inference layout `profile` times on a GPU (fewer kernel launches)
        target.fuse_projections()
        if "draft_model" in drafters:
            drafters["draft_model"].fuse_projections()
    return pair, trained, target, drafters


def measure_sps_tables(target: Transformer, drafters: dict[str, Any], grid: TableGrid) -> dict[tuple[str, int],
                                                                                              dict[int, float]]:
    """SPS(B) tables (draft + verify step time) per drafter and batch, for the prefix scheduler."""
    sps: dict[tuple[str, int], dict[int, float]] = {}
    for b in grid.all_batches:
        for kind, d in drafters.items():
            if b in grid.batches or kind in ("mtp", "dspark"):
                sps[(kind, b)] = measure_step_sps(target, d, b, grid.gamma,
                                                  context=grid.prompt_len + grid.new_tokens // 2)
    return sps


def configs(drafters: dict[str, Any], grid: TableGrid, b: int,
            sps: dict[tuple[str, int], dict[int, float]]) -> list[Config]:
    """The configurations measured at batch `b`: plain decoding, MTP-1, and each drafter at fixed gamma and
    under DSpark's scheduler (the frontier batches: DSpark's drafter only)."""
    gamma = grid.gamma
    out = [Config("baseline", None, None)]
    if "mtp" in drafters:
        out.append(Config(drafter_config("mtp", FixedGamma(gamma=1)), "mtp", FixedGamma(gamma=1)))
    for kind in drafters:
        if b in grid.batches:
            out.append(Config(drafter_config(kind, FixedGamma(gamma=gamma)), kind, FixedGamma(gamma=gamma)))
        if b in grid.batches or kind == "dspark":
            spec = DSparkScheduler.model_validate({"gamma_max": gamma, "sps_source": "table",
                                                   "sps_table": sps[(kind, b)]})
            out.append(Config(drafter_config(kind, spec), kind, spec))
    return out


def _training(trained: dict[str, TrainedDrafter], pair: TrainedPair) -> dict[str, HeadDrafterTraining |
                                                                               DraftModelTraining]:
    out: dict[str, HeadDrafterTraining | DraftModelTraining] = {}
    for kind, t in trained.items():
        m = t.metrics
        out[kind] = HeadDrafterTraining.model_validate({
            "params": m.get("params"), "train_time_s": round(m.get("train_time_s", 0), 1),
            "shared_target_time_s": round(m.get("shared_target_time_s", 0), 1),
            "calibration_time_s": round(m.get("calibration_time_s", 0), 1),
            "steps": m.get("train", {}).get("steps"),
            "alpha_t1_by_position_teacher_forced": [round(a, 3) for a in m.get("alpha_t1_by_position", [])],
            "greedy_match_by_position_teacher_forced": [round(a, 3) for a in m.get("greedy_match_by_position", [])],
            "calibration_teacher_forced": {mode: rounded(rep) for mode, rep in m.get("calibration", {}).items()},
        })
    dm = pair.metrics
    out["draft_model"] = DraftModelTraining.model_validate({
        "params": dm.get("draft_params"), "train_time_s": round(dm.get("draft_train_time_s", 0), 1),
        "alpha_t1": dm.get("alpha_t1")})
    return out


def _prompt_batches(prompts: Sequence[list[int]], b: int, min_sequences: int) -> list[list[list[int]]]:
    """Small batches run several batches of distinct prompts, so that no point rests on one prompt."""
    rounds = max(1, min_sequences // b)
    return [list(prompts[r * b: (r + 1) * b]) for r in range(rounds)]


def measure_drafter_table(grid: TableGrid, command: str, log: Callable[[str], None] = lambda _m: None,
                          partial: Callable[[PartialDrafterTable], None] | None = None) -> DrafterTable:
    """The whole table; `partial(doc)`, when given, gets the rows measured so far after every batch size
    (so a run stopped by a time limit keeps them)."""
    t_start = time.perf_counter()
    pair, trained, target, drafters = load_models(grid, log)
    prompts_all = held_out_prompts(load_corpus(get_preset(grid.preset).max_corpus_bytes),
                                   max(*grid.batches, *grid.frontier_batches, grid.min_sequences), grid.prompt_len)
    log("measuring SPS(B) tables ...")
    sps = measure_sps_tables(target, drafters, grid)
    loop_gammas = {k: tuple(sorted({grid.gamma, 1})) if k == "mtp" else (grid.gamma,) for k in drafters}
    loop_batches = tuple(sorted({1, 4, 16} & set(grid.all_batches))) or (min(grid.all_batches),)
    loop_cache = cache_tokens(grid.prompt_len, grid.new_tokens, grid.gamma)

    def loop_profile() -> dict[tuple[str, float, int, int], float]:
        return profile_drafter_loops(target, drafters, loop_gammas, grid.temperatures, loop_batches,
                                     grid.prompt_len, loop_cache, seed=grid.seed)

    log("profiling the drafter loops (random-token prompts) ...")
    loops_before = loop_profile()
    rows: list[DrafterTableRow] = []
    live: dict[str, dict[str, LiveCalibration]] = {}
    for temp in grid.temperatures:
        for b in grid.all_batches:
            batches_of_prompts = _prompt_batches(prompts_all, b, grid.min_sequences)
            cfgs = configs(drafters, grid, b, sps)
            best = measure_batch(target, drafters, batches_of_prompts, temp, cfgs, grid.new_tokens, grid.repeats,
                                 grid.seed, grid.device)
            for cfg in cfgs:
                row = table_row(best[cfg.label], best["baseline"], temp, b, cfg.label, len(batches_of_prompts),
                                grid.new_tokens)
                rows.append(row)
                log(f"T={temp:g} B={b:3d} {cfg.label:22s} tau {row.tau:.2f} {row.per_user_tok_s:8.1f} tok/s/user "
                    f"{row.throughput_tok_s:9.1f} tok/s x{row.speedup:.2f}")
            if partial is not None:
                partial(PartialDrafterTable(partial=True, preset=grid.preset, seed=grid.seed,
                                            new_tokens=grid.new_tokens, prompt_len=grid.prompt_len, gamma=grid.gamma,
                                            repeats=grid.repeats, device=grid.device, rows=list(rows),
                                            wall_s=round(time.perf_counter() - t_start, 1)))
            if b == max(grid.batches):  # live calibration of the confidences each drafter fed its policy
                for kind, entries in live_for_batch(target, drafters, batches_of_prompts, temp, best, grid.gamma,
                                                    grid.new_tokens, grid.seed, grid.device).items():
                    live.setdefault(kind, {}).update(entries)
    loops_after = loop_profile()
    loop_step_s = {f"{k}|{t:g}|{g}|{b}": [round(loops_before[(k, t, g, b)], 7), round(loops_after[(k, t, g, b)], 7)]
                   for (k, t, g, b) in loops_before if (k, t, g, b) in loops_after}
    return DrafterTable(
        preset=grid.preset, seed=grid.seed, threads=torch.get_num_threads(), new_tokens=grid.new_tokens,
        prompt_len=grid.prompt_len, gamma=grid.gamma, repeats=grid.repeats, timing=TIMING,
        drafters={k: describe(v) for k, v in drafters.items()}, training=_training(trained, pair), rows=rows,
        live_calibration=live, comparison=comparison(rows, grid.temperatures, grid.gamma, drafters),
        sps_tables={f"{k}@{b}": {str(x): round(y, 1) for x, y in t.items()} for (k, b), t in sps.items()},
        loop_step_s=loop_step_s, loop_step_s_note=LOOP_NOTE, wall_s=round(time.perf_counter() - t_start, 1),
        temperatures_modes={"sampled": MODE_SAMPLED, "greedy": MODE_GREEDY}, command=command)
