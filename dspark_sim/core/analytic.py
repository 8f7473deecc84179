"""Closed-form speculative-decoding predictor: tau, step times, speed-up and best gamma on a grid.

Steady state, one batch of identical sequences: a step drafts gamma tokens, verifies gamma + 1
positions in one target pass, and yields tau(gamma) tokens per sequence (acceptance.py). The baseline
step is one target pass per token. Everything is numpy-broadcast over (batch, context, gamma), so a
grid of 100,000 configurations costs one pass through the arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dspark_sim.config.results import CostBreakdown, PredictPoint, PredictResult, SpeculativePoint
from dspark_sim.config.schema import Scenario
from dspark_sim.core.acceptance import expected_tokens, survival_curve
from dspark_sim.core.costmodel import StepCoster, stats_of
from dspark_sim.core.passes import BOUNDS, PassCost


def speedup_from_times(tau, t_base, t_draft, t_verify, t_step_overhead=0.0):
    """Speed-up = (tau / speculative step time) / (1 / baseline step time).

    With t_draft = gamma * c * t_base and t_verify = t_base this is Leviathan's
    (1 - alpha^(gamma+1)) / ((1 - alpha)(gamma c + 1)) for i.i.d. acceptance.
    """
    tau = np.asarray(tau, dtype=float)
    base = np.asarray(t_base, dtype=float) + t_step_overhead
    step = np.asarray(t_draft, dtype=float) + np.asarray(t_verify, dtype=float) + t_step_overhead
    return tau * base / step


@dataclass(frozen=True)
class GridPrediction:
    """Arrays of shape (batch, context, gamma) (baseline: (batch, context, 1))."""

    batch_sizes: np.ndarray
    context_lens: np.ndarray
    gammas: np.ndarray
    tau: np.ndarray
    baseline: PassCost
    baseline_step_s: np.ndarray
    draft: PassCost
    verify: PassCost
    step_s: np.ndarray
    tokens_per_s_per_user: np.ndarray
    baseline_tokens_per_s_per_user: np.ndarray
    speedup: np.ndarray
    tp: int

    @property
    def throughput_per_gpu(self) -> np.ndarray:
        return self.batch_sizes[:, None, None] * self.tokens_per_s_per_user / self.tp

    @property
    def best_gamma_index(self) -> np.ndarray:
        """(batch, context) index of the gamma with the highest tokens/s (same batch, so same
        throughput ranking)."""
        return np.argmax(self.tokens_per_s_per_user, axis=2)


def predict_grid(coster: StepCoster, acceptance, batch_sizes, context_lens, gammas) -> GridPrediction:
    """Evaluate every (batch, context, gamma) combination at once."""
    b = np.asarray(batch_sizes, dtype=float)
    c = np.asarray(context_lens, dtype=float)
    g = np.asarray(gammas, dtype=float)
    if coster.drafter.kind == "none":
        g = np.zeros_like(g)
    tau = expected_tokens(acceptance, np.asarray(g, dtype=np.int64)).reshape(1, 1, -1)
    B, C, G = b[:, None, None], c[None, :, None], g[None, None, :]
    overhead = coster.step_overhead_s()
    baseline = coster.baseline(B, C)
    draft = coster.draft(B, G, C, catch_up_tokens=tau)
    verify = coster.verify(B, G, C)
    step_s = np.asarray(draft.time_s) + np.asarray(verify.time_s) + overhead
    base_step = np.asarray(baseline.time_s) + coster.baseline_step_overhead_s(B)
    per_user = tau / step_s
    base_per_user = 1.0 / base_step
    return GridPrediction(
        batch_sizes=b,
        context_lens=c,
        gammas=g,
        tau=np.broadcast_to(tau, step_s.shape),
        baseline=baseline,
        baseline_step_s=base_step,
        draft=draft,
        verify=verify,
        step_s=step_s,
        tokens_per_s_per_user=per_user,
        baseline_tokens_per_s_per_user=base_per_user,
        speedup=per_user / base_per_user,
        tp=coster.tp,
    )


def breakdown(cost: PassCost, index=None) -> CostBreakdown:
    """One element of a (possibly vectorised) PassCost as a result record."""
    one = cost.at(index) if index is not None else cost.at(())
    return CostBreakdown(
        time_ms=float(one.time_s) * 1e3,
        compute_ms=float(one.compute_s) * 1e3,
        hbm_ms=float(one.hbm_s) * 1e3,
        onchip_ms=float(one.onchip_s) * 1e3,
        communication_ms=float(one.comm_s) * 1e3,
        overhead_ms=float(one.overhead_s) * 1e3,
        hbm_gb=float(one.hbm_bytes) / 1e9,
        onchip_gb=float(one.onchip_bytes) / 1e9,
        tflop=float(one.flops) / 1e12,
        bound=BOUNDS[int(np.asarray(one.bound()))],
    )


def kv_bytes_per_token_per_gpu(coster: StepCoster) -> float:
    m = coster.target
    shard = 1 if m.attention == "mla" else min(coster.tp, m.num_kv_heads)
    return coster.target_stats.kv_bytes_per_token / shard


def memory_available_bytes(scenario: Scenario) -> float:
    """Device memory left for the KV cache (per GPU) after weights and the activation reserve."""
    dep = scenario.deployment
    coster = StepCoster(dep.model, dep.drafter, dep.hardware, dep.tensor_parallel)
    weights = coster.target_stats.weight_bytes_total / dep.tensor_parallel
    draft_arch = coster.draft_arch
    if draft_arch is not None:
        weights += stats_of(draft_arch).weight_bytes_total / coster.draft_tp
    usable = dep.hardware.memory_capacity_gb * 1e9 * dep.memory_utilisation
    return usable - weights - dep.activation_reserve_gb * 1e9


def predict_scenario(scenario: Scenario) -> PredictResult:
    """The `predict` command's document for a scenario's grid."""
    dep = scenario.deployment
    grid_spec = scenario.predict
    coster = StepCoster.for_deployment(dep)
    gammas = sorted(set(grid_spec.gammas))
    grid = predict_grid(coster, scenario.acceptance, grid_spec.batch_sizes, grid_spec.context_lengths, gammas)
    gmax = max(gammas) if gammas else 0
    kv_tok = kv_bytes_per_token_per_gpu(coster)
    kv_room = memory_available_bytes(scenario)
    best = grid.best_gamma_index
    points: list[PredictPoint] = []
    for i, bsz in enumerate(grid_spec.batch_sizes):
        for j, ctx in enumerate(grid_spec.context_lengths):
            by_gamma = [_spec_point(grid, i, j, k) for k in range(len(gammas))]
            need = bsz * (ctx + gmax + 1) * kv_tok
            points.append(
                PredictPoint(
                    batch_size=bsz,
                    context_tokens=ctx,
                    fits_in_memory=bool(need <= kv_room),
                    baseline=breakdown(grid.baseline, (i, j, 0)),
                    baseline_step_ms=float(grid.baseline_step_s[i, j, 0] * 1e3),
                    baseline_tokens_per_s_per_user=float(grid.baseline_tokens_per_s_per_user[i, j, 0]),
                    baseline_throughput_tokens_per_s_per_gpu=float(
                        bsz * grid.baseline_tokens_per_s_per_user[i, j, 0] / dep.tensor_parallel
                    ),
                    best_gamma=int(gammas[best[i, j]]),
                    best=by_gamma[best[i, j]],
                    by_gamma=by_gamma,
                )
            )
    return PredictResult(
        scenario=scenario.name,
        hardware=dep.hardware.name,
        model=dep.model.name,
        drafter=dep.drafter.kind,
        tensor_parallel=dep.tensor_parallel,
        acceptance=scenario.acceptance.kind,
        survival=[float(x) for x in survival_curve(scenario.acceptance, gmax)],
        weights_gb_per_gpu=coster.target_stats.weight_bytes_total / dep.tensor_parallel / 1e9,
        kv_gb_per_1k_tokens=kv_tok * 1000 / 1e9,
        points=points,
    )


def _spec_point(grid: GridPrediction, i: int, j: int, k: int) -> SpeculativePoint:
    return SpeculativePoint(
        gamma=int(grid.gammas[k]),
        tau=float(grid.tau[i, j, k]),
        draft=breakdown(grid.draft, (i, j, k)),
        verify=breakdown(grid.verify, (i, j, k)),
        step_ms=float(grid.step_s[i, j, k] * 1e3),
        tokens_per_s_per_user=float(grid.tokens_per_s_per_user[i, j, k]),
        throughput_tokens_per_s_per_gpu=float(grid.throughput_per_gpu[i, j, k]),
        speedup=float(grid.speedup[i, j, k]),
    )

