"""Execution-time predictor of the simulator: a thin adapter over the shared cost model.

Every pass is priced by `dspark_sim.costmodel` (the same roofline the analytic predictor uses); this
module only (1) builds the ragged-batch aggregates straight from the engine's arrays, (2) caches the
model statistics the cost model would otherwise re-derive on every call, (3) turns the cost model into
the SPS(B) curve the DSpark and goodput policies price extra verify tokens with, and (4) sizes the
paged KV cache.
"""

from __future__ import annotations

import math

import numpy as np

from dspark_sim.analytic import kv_bytes_per_token_per_gpu, memory_available_bytes
from dspark_sim.config.errors import InputError
from dspark_sim.config.schema import Scenario
from dspark_sim.costmodel import BatchShape, PassCost, StepCoster, forward_cost, stats_of, uniform_batch


class Costs:
    """Prices target passes, drafting and drafter prefill for one deployment."""

    def __init__(self, sc: Scenario):
        dep = sc.deployment
        self.coster = StepCoster(dep.model, dep.drafter, dep.hardware, dep.tensor_parallel)
        self.target_model = dep.model
        self.hw = dep.hardware
        self.tp = dep.tensor_parallel
        self.drafter = dep.drafter
        self.target_stats = self.coster.target_stats
        self.draft_arch = self.coster.draft_arch
        self.draft_stats = stats_of(self.draft_arch) if self.draft_arch is not None else None
        self.window = dep.model.sliding_window_tokens
        self.step_overhead_s = self.coster.step_overhead_s()

    def target(self, q: np.ndarray, c: np.ndarray) -> PassCost:
        """One target pass over sequences with q new tokens each on c cached tokens (q > 0)."""
        kv = c + q
        pairs = q * (c + (q + 1.0) * 0.5)
        if self.window:
            w = self.window
            kvw = np.minimum(kv, w)
            pairs_w = q * (np.minimum(c, w) + (q + 1.0) * 0.5)
            shape = BatchShape(float(len(q)), float(q.sum()), float(kv.sum()), float(kvw.sum()),
                               float(pairs.sum()), float(pairs_w.sum()))
        else:
            s_kv, s_pairs = float(kv.sum()), float(pairs.sum())
            shape = BatchShape(float(len(q)), float(q.sum()), s_kv, s_kv, s_pairs, s_pairs)
        return forward_cost(self.target_model, self.hw, shape, self.tp, stats=self.target_stats)

    def target_shape(self, shape: BatchShape) -> PassCost:
        return forward_cost(self.target_model, self.hw, shape, self.tp, stats=self.target_stats)

    def draft(self, num_seqs: int, gamma: int, context_len: float, catch_up: float) -> PassCost:
        return self.coster.draft(float(num_seqs), float(gamma), float(context_len), catch_up_tokens=float(catch_up))

    def draft_prefill(self, q: np.ndarray, c: np.ndarray) -> PassCost | None:
        """The drafter digesting prompt chunks (head drafters and draft models keep their own KV)."""
        if self.draft_arch is None:
            return None
        w = self.draft_arch.sliding_window_tokens
        kv = c + q
        pairs = q * (c + (q + 1.0) * 0.5)
        kvw = np.minimum(kv, w) if w else kv
        pairs_w = q * (np.minimum(c, w) + (q + 1.0) * 0.5) if w else pairs
        shape = BatchShape(float(len(q)), float(q.sum()), float(kv.sum()), float(kvw.sum()),
                           float(pairs.sum()), float(pairs_w.sum()))
        return forward_cost(
            self.draft_arch, self.hw, shape, self.tp, stats=self.draft_stats,
            weights_onchip=self.drafter.weights_onchip, kv_onchip=self.drafter.kv_onchip,
            include_embedding=self.drafter.kind == "draft_model",
        )


class CostModelSPS:
    """SPS(B): verify steps per second when a pass carries B decode tokens, for the current batch.

    1 / (draft time + target pass time + step overhead), where the pass holds the batch's decode
    sequences (B tokens spread evenly over them, at their real cached lengths) plus this step's
    prefill chunks. The engine calls `set_batch` before it asks the policy for verify lengths.
    """

    def __init__(self, costs: Costs):
        self.costs = costs
        self.n = 0.0
        self.ctx_sum = 0.0
        self.ctx_w_sum = 0.0
        self.extra = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0)  # prefill aggregates
        self.fixed_s = costs.step_overhead_s

    def set_batch(self, ctx: np.ndarray, draft_s: float, prefill: tuple) -> None:
        self.n = float(len(ctx))
        self.ctx_sum = float(ctx.sum())
        w = self.costs.window
        self.ctx_w_sum = float(np.minimum(ctx, w).sum()) if w else self.ctx_sum
        self.extra = prefill
        self.fixed_s = draft_s + self.costs.step_overhead_s

    def __call__(self, budget) -> np.ndarray:
        b = np.asarray(budget, dtype=float)
        n = max(self.n, 1.0)
        qps = b / n  # tokens per sequence
        pairs = self.ctx_sum * qps + n * qps * (qps + 1.0) * 0.5
        pairs_w = self.ctx_w_sum * qps + n * qps * (qps + 1.0) * 0.5
        e = self.extra
        w = self.costs.window
        kv_w = np.minimum(self.ctx_w_sum + b, n * w) if w else self.ctx_sum + b
        shape = BatchShape(n + e[0], b + e[1], self.ctx_sum + b + e[2], kv_w + e[3], pairs + e[4], pairs_w + e[5])
        t = np.asarray(self.costs.target_shape(shape).time_s, dtype=float)
        return 1.0 / (t + self.fixed_s)


def uniform_step_time(costs: Costs, batch: int, gamma: int, context: float, tau: float) -> float:
    """Step time of a uniform batch (used for SLO sanity checks)."""
    t = costs.target_shape(uniform_batch(batch, gamma + 1.0, context, costs.window)).time_s
    d = costs.draft(batch, gamma, context, tau).time_s if gamma > 0 else 0.0
    return float(t) + float(d) + costs.step_overhead_s


def kv_capacity(sc: Scenario, costs: Costs, source: str) -> tuple[int, float]:
    """(KV blocks per replica, bytes per token per GPU). Errors when the model cannot serve at all.

    Bytes per token are the target's (analytic.kv_bytes_per_token_per_gpu) plus the drafter's own
    cache when the drafter keeps a full-length one (a windowed drafter cache is bounded and ignored).
    """
    dep = sc.deployment
    room = memory_available_bytes(sc)
    if room <= 0:
        usable = dep.hardware.memory_capacity_gb * dep.memory_utilisation
        weights = usable - dep.activation_reserve_gb - room / 1e9
        raise InputError(
            source, "deployment",
            f"{dep.model.name} does not fit: weights need {weights:.1f} GB per GPU (tensor_parallel "
            f"{dep.tensor_parallel}) + {dep.activation_reserve_gb:g} GB activations, but only {usable:.1f} GB "
            f"of {dep.hardware.name} memory is usable; raise tensor_parallel or memory_utilisation",
        )
    per_token = kv_bytes_per_token_per_gpu(costs.coster)
    arch = costs.draft_arch
    if arch is not None and arch.sliding_window_tokens is None and costs.draft_stats is not None:
        shard = 1 if arch.attention == "mla" else min(costs.tp, arch.num_kv_heads)
        per_token += costs.draft_stats.kv_bytes_per_token / shard
    blocks = int(math.floor(room / per_token / dep.kv_block_tokens))
    if blocks <= 0:
        raise InputError(source, "deployment", "zero KV-cache capacity: no memory left for even one block")
    return blocks, per_token
