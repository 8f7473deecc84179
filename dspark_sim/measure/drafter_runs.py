"""The drafter table's runs: one configuration's timed, interleaved repeats, its row, the live calibration
of the confidences each drafter fed its policy, and DSpark against MTP-1 at matched throughput."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from dspark_sim.config.drafter_table import (
    CalibrationSummary,
    DrafterDescription,
    DrafterTableRow,
    DraftModelDescription,
    HeadDrafterDescription,
    LiveCalibration,
    MatchedComparison,
)
from dspark_sim.config.schema import DSparkScheduler, FixedGamma
from dspark_sim.config.shorthand import drafter_config
from dspark_sim.core.matched_throughput import matched
from dspark_sim.core.policies import make_policy
from dspark_sim.engine.drafter_calibration import ece
from dspark_sim.engine.drafter_generate import drafter_generate
from dspark_sim.engine.drafters import Drafter
from dspark_sim.engine.generate import generate_baseline
from dspark_sim.engine.model import Transformer
from dspark_sim.engine.results import GenerationResult
from dspark_sim.engine.sampling import Sampling


@dataclass(frozen=True)
class Config:
    """One configuration of a batch: its row label, the drafter (None: plain decoding) and the policy."""

    label: str
    kind: str | None
    spec: FixedGamma | DSparkScheduler | None


def merge_results(results: list[GenerationResult]) -> GenerationResult:
    """Several runs of the same batch size as one: their steps, tokens and times side by side (tau,
    acceptance and tokens/s then pool all of them)."""
    if len(results) == 1:
        return results[0]
    return GenerationResult(
        tokens=[t for r in results for t in r.tokens], prompt_lens=[n for r in results for n in r.prompt_lens],
        prefill_time_s=sum(r.prefill_time_s for r in results), decode_time_s=sum(r.decode_time_s for r in results),
        target_passes=sum(r.target_passes for r in results), steps=[s for r in results for s in r.steps],
        step_wall_s=[w for r in results for w in r.step_wall_s])


def rate(res: GenerationResult) -> float:
    """Decode tokens per second of the whole batch: plain decoding's, or a speculative run's while every
    sequence was still generating (`GenerationResult.full_batch_tokens_per_s`: the static batch's tail,
    where the slowest sequences step alone, is left out as a serving engine refills it)."""
    return res.full_batch_tokens_per_s()


def run_config(target: Transformer, drafters: dict[str, Any], batches_of_prompts: Sequence[list[list[int]]],
               sampling: Sampling, cfg: Config, new_tokens: int, seed: int, device: str) -> GenerationResult:
    """One configuration over every batch of prompts, pooled (each batch its own seeded generator)."""
    out = []
    for r, p in enumerate(batches_of_prompts):
        gen = torch.Generator(device=device).manual_seed(seed + 17 + r)
        if cfg.kind is None:
            out.append(generate_baseline(target, p, new_tokens, sampling, generator=gen))
        elif cfg.spec is None:
            raise ValueError(f"drafter {cfg.kind!r} configured without a policy")
        else:
            out.append(drafter_generate(target, drafters[cfg.kind], p, new_tokens, make_policy(cfg.spec), sampling,
                                        generator=gen))
    return merge_results(out)


def measure_batch(target: Transformer, drafters: dict[str, Any], batches_of_prompts: Sequence[list[list[int]]],
                  temperature: float, cfgs: list[Config], new_tokens: int, repeats: int, seed: int,
                  device: str) -> dict[str, GenerationResult]:
    """Every configuration warmed up, then `repeats` interleaved rounds; the fastest run of each counts."""
    sampling = Sampling(temperature=temperature)
    for cfg in cfgs:  # warm-up
        run_config(target, drafters, batches_of_prompts, sampling, cfg, 8, seed, device)
    best: dict[str, GenerationResult] = {}
    for _ in range(repeats):
        for cfg in cfgs:
            res = run_config(target, drafters, batches_of_prompts, sampling, cfg, new_tokens, seed, device)
            if cfg.label not in best or rate(res) > rate(best[cfg.label]):
                best[cfg.label] = res
    return best


def table_row(res: GenerationResult, base: GenerationResult, temperature: float, b: int, label: str, rounds: int,
              new_tokens: int) -> DrafterTableRow:
    per_user = rate(res) / b
    steps = [s for s in res.steps if s.active.any()]
    full = [w for s, w in zip(res.steps, res.step_wall_s, strict=False) if s.active.all()]
    return DrafterTableRow(
        temperature=temperature, batch=b, config=label, tau=round(res.tau, 3),
        acceptance_by_position=[round(a, 3) for a in res.acceptance_by_position()],
        per_user_tok_s=round(per_user, 1), throughput_tok_s=round(per_user * b, 1),
        speedup=round(rate(res) / rate(base), 3),
        batch_completion_per_user_tok_s=round(rounds * (new_tokens - 1) / res.decode_time_s, 1),
        prompt_batches=rounds, step_ms=round(1e3 * float(np.mean(full)), 3) if full else None,
        verified_per_seq_step=round(float(np.mean([s.verified[s.active].mean() for s in steps])), 3) if steps else 0.0,
        draft_ms_per_step=round(1e3 * float(np.mean([s.draft_time_s for s in steps])), 3) if steps else 0.0,
        verify_ms_per_step=round(1e3 * float(np.mean([s.verify_time_s for s in steps])), 3) if steps else 0.0,
        greedy_identical=(res.tokens == base.tokens) if temperature == 0.0 else None)


def live_calibration(results: list[GenerationResult], gamma: int, bins: int = 10) -> LiveCalibration:
    """ECE of the confidences the engine fed its policy against what then happened: for every verified
    draft position k whose earlier drafts were all accepted, outcome = (draft k accepted)."""
    conf: list[list[float]] = [[] for _ in range(gamma)]
    out: list[list[float]] = [[] for _ in range(gamma)]
    for res in results:
        for s in res.steps:
            if s.confidences is None:
                continue
            for i in np.nonzero(s.active)[0]:
                for k in range(int(s.verified[i])):
                    if s.accepted[i] >= k:  # drafts < k accepted: position k was reached
                        conf[k].append(float(s.confidences[i, k]))
                        out[k].append(float(s.accepted[i] > k))
    return LiveCalibration(
        ece_by_position=[round(ece(np.array(c), np.array(o), bins), 4) if c else None
                         for c, o in zip(conf, out, strict=True)],
        ece_all=round(ece(np.concatenate([np.array(c) for c in conf]), np.concatenate([np.array(o) for o in out]),
                          bins), 4),
        mean_conf_by_position=[round(float(np.mean(c)), 4) if c else None for c in conf],
        accept_rate_by_position=[round(float(np.mean(o)), 4) if o else None for o in out],
        samples_by_position=[len(c) for c in conf])


def live_for_batch(target: Transformer, drafters: dict[str, Any], batches_of_prompts: Sequence[list[list[int]]],
                   temperature: float, best: dict[str, GenerationResult], gamma: int, new_tokens: int, seed: int,
                   device: str) -> dict[str, dict[str, LiveCalibration]]:
    """Each drafter's live calibration at fixed gamma; DSpark's also with its raw (uncalibrated) head, run
    again with every temperature 1 (restored after)."""
    key = f"T={temperature:g}"
    live: dict[str, dict[str, LiveCalibration]] = {}
    for kind in drafters:
        live[kind] = {key: live_calibration([best[drafter_config(kind, FixedGamma(gamma=gamma))]], gamma)}
        if kind == "dspark":
            d: Drafter = drafters["dspark"]
            saved = d.conf_temperature.clone()
            d.conf_temperature.fill_(1.0)
            raw = run_config(target, drafters, batches_of_prompts, Sampling(temperature=temperature),
                             Config("raw", "dspark", FixedGamma(gamma=gamma)), new_tokens, seed, device)
            d.conf_temperature.copy_(saved)
            live[kind][key + " uncalibrated"] = live_calibration([raw], gamma)
    return live


def comparison(rows: list[DrafterTableRow], temperatures: Sequence[float], gamma: int,
               drafters: dict[str, Any]) -> dict[str, MatchedComparison]:
    """DSpark (prefix scheduler) against MTP-1 at matched throughput, per temperature."""
    out: dict[str, MatchedComparison] = {}
    if "mtp" not in drafters or "dspark" not in drafters:
        return out
    dspark_label = drafter_config("dspark", DSparkScheduler.model_validate({"gamma_max": gamma}))
    mtp1_label = drafter_config("mtp", FixedGamma(gamma=1))
    for temp in temperatures:
        a = [r for r in rows if r.config == dspark_label and r.temperature == temp]
        b = [r for r in rows if r.config == mtp1_label and r.temperature == temp]
        out[f"T={temp:g}"] = MatchedComparison.model_validate({
            "dspark_vs_mtp1_at_matched_throughput": matched([r.model_dump() for r in a], [r.model_dump() for r in b]),
            "dspark": [r.model_dump(include={"batch", "tau", "per_user_tok_s", "throughput_tok_s",
                                             "verified_per_seq_step"}) for r in a],
            "mtp1": [r.model_dump(include={"batch", "tau", "per_user_tok_s", "throughput_tok_s"}) for r in b],
        })
    return out


def rounded(rep: dict[str, Any]) -> CalibrationSummary:
    """A calibration report with its figures to 4 decimals."""
    def r(obj: Any) -> Any:
        if isinstance(obj, float):
            return round(obj, 4)
        if isinstance(obj, list):
            return [r(v) for v in obj]
        return obj
    return CalibrationSummary.model_validate({k: r(v) for k, v in rep.items()})


def describe(d: Any) -> DrafterDescription:
    """The table's description of a drafter: its architecture and trainable parameters."""
    if isinstance(d, Drafter):
        a = d.args
        return HeadDrafterDescription.model_validate(dict(
            kind=a.kind, layers=a.n_layers, dim=a.dim, heads=a.n_heads, ffn=a.ffn_hidden,
            block=a.block_size, window=a.window, markov_rank=a.markov_rank if a.kind == "dspark" else None,
            params=d.num_params()))
    return DraftModelDescription(kind="draft_model", layers=d.args.n_layers, dim=d.args.dim,
                                 params=d.args.num_params())
