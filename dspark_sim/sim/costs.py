"""Execution-time predictor of the simulator: a thin adapter over the shared cost model.

Every pass is priced by `dspark_sim.core.costmodel` (the same roofline the analytic predictor uses); this
module only (1) builds the ragged-batch aggregates straight from the engine's arrays, (2) caches the
model statistics the cost model would otherwise re-derive on every call, (3) turns the cost model into
the SPS(B) curve the DSpark and goodput policies price extra verify tokens with, and (4) sizes the
paged KV cache.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from dspark_sim.config.errors import InputError
from dspark_sim.config.schema import DTYPE_BYTES, Scenario
from dspark_sim.core.analytic import kv_bytes_per_token_per_gpu, memory_available_bytes
from dspark_sim.core.costmodel import MARKOV_STEP_LAYER_FRACTION, StepCoster, forward_cost, stats_of
from dspark_sim.core.passes import BatchShape, PassCost, uniform_batch


class Cost(NamedTuple):
    """What the engine needs of a pass: its time and the bytes it moves (per GPU)."""

    time_s: float
    hbm_bytes: float
    onchip_bytes: float


_ZERO = Cost(0.0, 0.0, 0.0)


def _cost(pc: PassCost) -> Cost:
    return Cost(float(pc.time_s), float(pc.hbm_bytes), float(pc.onchip_bytes))


class Costs:
    """Prices target passes, drafting and drafter prefill for one deployment.

    Two paths give the same numbers: the reference (`StepCoster` / `forward_cost`, numpy, about
    30-130 us a call) and `_FastPass`, a scalar transcription of `forward_cost` for one batch at a time
    (a few us). The fast path is used only when it reproduces the reference on probe shapes at
    construction (so a change to the shared cost model falls back to the reference, never drifts)
    and no engine-fidelity option it does not transcribe (padded verify, static KV cache) is on.
    """

    def __init__(self, sc: Scenario, fast: bool = True):
        dep = sc.deployment
        self.coster = StepCoster.for_deployment(dep) if hasattr(StepCoster, "for_deployment") else StepCoster(
            dep.model, dep.drafter, dep.hardware, dep.tensor_parallel)
        self.target_model = dep.model
        self.hw = dep.hardware
        self.tp = dep.tensor_parallel
        self.draft_tp = self.coster.draft_tp  # 1 for a replicated drafter
        self.drafter = dep.drafter
        self.target_stats = self.coster.target_stats
        self.draft_arch = self.coster.draft_arch
        self.draft_stats = stats_of(self.draft_arch) if self.draft_arch is not None else None
        self.window = dep.model.sliding_window_tokens
        speculative = sc.policy.kind != "none" and dep.drafter.kind != "none"
        base_over = getattr(self.coster, "baseline_step_overhead_s", None)
        self.step_overhead_s = (self.coster.step_overhead_s(dspark_scheduler=sc.policy.kind == "dspark")
                                if speculative or base_over is None else float(base_over()))
        # a plain loop's step also costs this much per decoding sequence (its next token taken); a speculative
        # step's per-sequence host time comes with its draft phase (draft / _draft_fast)
        self.sequence_overhead_s = 0.0 if speculative else self.hw.overheads.per_baseline_sequence_us * 1e-6
        self._first_pass = getattr(dep.drafter, "first_pass_tokens", None)
        self._t_fast = self._d_fast = None
        plain = not getattr(self.coster, "pad_verify", False) and getattr(self.coster, "static_kv_tokens", None) is None
        if fast and plain:
            t_fast = _FastPass(self.target_model, self.hw, self.tp, self.target_stats)
            d_fast = None
            if self.draft_arch is not None:
                d_fast = _FastPass(self.draft_arch, self.hw, self.draft_tp, self.draft_stats,
                                   weights_onchip=self.drafter.weights_onchip, kv_onchip=self.drafter.kv_onchip,
                                   include_embedding=self.drafter.kind == "draft_model")
            self._t_fast, self._d_fast = t_fast, d_fast
            if not self._fast_matches():
                self._t_fast = self._d_fast = None
        self.fast = self._t_fast is not None

    # ---------------------------------------------------------------- target
    def target(self, q: np.ndarray, c: np.ndarray) -> Cost:
        """One target pass over sequences with q new tokens each on c cached tokens (q > 0)."""
        if self._t_fast is None:
            return _cost(self.coster.target_ragged(q, c))
        kv = c + q
        pairs = q * (c + (q + 1.0) * 0.5)
        s_kv, s_pairs = float(kv.sum()), float(pairs.sum())
        if self.window:
            w = self.window
            s_kvw = float(np.minimum(kv, w).sum())
            s_pw = float((q * (np.minimum(c, w) + (q + 1.0) * 0.5)).sum())
        else:
            s_kvw, s_pw = s_kv, s_pairs
        return self._t_fast(float(q.sum()), s_kv, s_kvw, s_pairs, s_pw, float(len(q)))

    def target_shape(self, shape: BatchShape) -> PassCost:
        """Vectorised reference pricing (SPS curves)."""
        return forward_cost(self.target_model, self.hw, shape, self.tp, stats=self.target_stats)

    # ---------------------------------------------------------------- drafting
    def draft(self, num_seqs: int, gamma: int, context_len: float, catch_up: float) -> Cost:
        """StepCoster.draft for one batch (scalar)."""
        if self._t_fast is None or self.drafter.kind == "none":
            if self.drafter.kind == "none":
                return _ZERO
            return _cost(self.coster.draft(float(num_seqs), float(gamma), float(context_len),
                                           catch_up_tokens=float(catch_up)))
        return self._draft_fast(float(num_seqs), float(gamma), float(context_len), float(catch_up))

    def _draft_fast(self, b: float, g: float, ctx: float, catch: float) -> Cost:
        kind = self.drafter.kind
        if self._first_pass is not None:
            catch = float(self._first_pass)
        if kind == "ngram":
            return Cost(self.drafter.lookup_us * 1e-6 if g > 0 else 0.0, 0.0, 0.0)
        d = self._d_fast
        assert d is not None and self.draft_arch is not None
        w = self.draft_arch.sliding_window_tokens
        if self.drafter.is_autoregressive:
            first = d(*_uniform(b, catch, ctx, w), b)
            rest = d(*_uniform(b, 1.0, ctx + catch + (g - 1.0) / 2.0, w), b)
            k1, k2 = min(g, 1.0), max(g - 1.0, 0.0)
            o = self.hw.overheads
            host = (o.per_draft_pass_us * g + (o.per_step_sequence_us * b if g > 0 else 0.0)) * 1e-6
            return Cost(first[0] * k1 + rest[0] * k2 + host, first[1] * k1 + rest[1] * k2,
                        first[2] * k1 + rest[2] * k2)
        block = d(*_uniform(b, g + catch, ctx, w), b)
        k = min(g, 1.0)
        t, hbm, on = block[0] * k, block[1] * k, block[2] * k
        if kind == "dspark":
            mt, mh, mo = self._markov(b)
            t, hbm, on = t + mt * g, hbm + mh * g, on + mo * g
        return Cost(t, hbm, on)

    def _markov(self, b: float) -> tuple[float, float, float]:
        """One position of DSpark's Markov head (transcribed from StepCoster._markov_head)."""
        arch = self.draft_arch
        assert arch is not None  # a DSpark drafter has a draft architecture
        hw = self.hw
        r = self.drafter.markov_rank
        vocab = arch.vocab_size
        wb = DTYPE_BYTES[arch.weight_dtype]
        flops = 2.0 * b * r * vocab
        bytes_ = r * vocab * wb / self.draft_tp + b * vocab * 4.0 * 2 / self.draft_tp
        capacity = hw.onchip_capacity_mb * 1e6
        eff_bw = hw.memory_bandwidth_gbps * 1e9 * hw.efficiency.memory_bandwidth
        onchip_bw = max(hw.onchip_bandwidth_gbps * 1e9 * hw.efficiency.onchip_bandwidth, 1e-30)
        on = bytes_ if bytes_ <= capacity else 0.0
        off = bytes_ - on
        mem = off / eff_bw + on / onchip_bw
        comp = flops / (hw.matmul_tflops(arch.weight_dtype) * 1e12 * hw.efficiency.compute)
        ovh = MARKOV_STEP_LAYER_FRACTION * hw.overheads.per_layer_us * 1e-6
        return max(comp, mem) + ovh, off, on

    def draft_prefill(self, q: np.ndarray, c: np.ndarray) -> Cost | None:
        """The drafter digesting prompt chunks (head drafters and draft models keep their own KV)."""
        if self.draft_arch is None:
            return None
        w = self.draft_arch.sliding_window_tokens
        kv = c + q
        pairs = q * (c + (q + 1.0) * 0.5)
        kvw = np.minimum(kv, w) if w else kv
        pairs_w = q * (np.minimum(c, w) + (q + 1.0) * 0.5) if w else pairs
        agg = (float(q.sum()), float(kv.sum()), float(kvw.sum()), float(pairs.sum()), float(pairs_w.sum()))
        if self._d_fast is not None:
            return self._d_fast(*agg, float(len(q)))
        shape = BatchShape(float(len(q)), *agg)
        return _cost(forward_cost(
            self.draft_arch, self.hw, shape, self.draft_tp, stats=self.draft_stats,
            weights_onchip=self.drafter.weights_onchip, kv_onchip=self.drafter.kv_onchip,
            include_embedding=self.drafter.kind == "draft_model",
        ))

    # ---------------------------------------------------------------- self-check
    def _fast_matches(self) -> bool:
        """The fast path reproduces the reference on probe batches (else the reference is used)."""
        rng = np.random.default_rng(12345)
        for _ in range(6):
            n = int(rng.integers(1, 300))
            q = rng.integers(1, 9, n).astype(float)
            if rng.random() < 0.5:
                q[0] = float(rng.integers(100, 4000))
            c = rng.integers(0, 200_000, n).astype(float)
            ref = _cost(self.coster.target_ragged(q, c))
            if not _close(self.target(q, c), ref):
                return False
            if self.drafter.kind != "none":
                b, g = float(n), float(rng.integers(0, 9))
                ctx, catch = float(c.mean()), float(rng.uniform(1, 6))
                ref = _cost(self.coster.draft(b, g, ctx, catch_up_tokens=catch))
                if not _close(self._draft_fast(b, g, ctx, catch), ref):
                    return False
        return True


def _close(a: Cost, b: Cost) -> bool:
    return all(abs(x - y) <= 1e-9 * max(abs(x), abs(y), 1e-30) for x, y in zip(a, b))


def _uniform(b: float, q: float, c: float, window: int | None) -> tuple[float, float, float, float, float]:
    """Aggregates of passes.uniform_batch: (query tokens, kv, kv window, pairs, pairs window)."""
    kv = c + q
    pairs = q * (c + (q + 1.0) / 2.0)
    if window:
        kvw = min(kv, window)
        pw = q * (min(c, window) + (q + 1.0) / 2.0)
    else:
        kvw, pw = kv, pairs
    return b * q, b * kv, b * kvw, b * pairs, b * pw


class _FastPass:
    """`costmodel.forward_cost` for one batch, in Python floats (transcribed; checked by `Costs`)."""

    def __init__(self, model, hw, tp: int, stats, *, weights_onchip: bool = False, kv_onchip: bool = False,
                 include_embedding: bool = True):
        s = stats
        wb = DTYPE_BYTES[model.weight_dtype]
        ab = DTYPE_BYTES[model.activation_dtype]
        h = model.hidden_size
        self.h_wb = h * wb if include_embedding else 0.0
        dense_layer = s.attention_params_per_layer + s.dense_ffn_params_per_layer
        self.w_fixed = s.num_dense_layers * dense_layer + model.vocab_size * h
        self.moe = model.moe
        if model.moe is not None:
            e = model.moe
            self.w_fixed += s.num_moe_layers * (s.attention_params_per_layer + h * e.num_experts
                                                + e.num_shared_experts * s.expert_params)
            self.w_expert = s.num_moe_layers * s.expert_params
            self.n_exp = float(e.num_experts)
            self.miss = 1.0 - e.experts_per_token / e.num_experts
        self.wb_tp = wb / tp
        kv_shard = 1 if model.attention == "mla" else min(tp, model.num_kv_heads)
        full = model.num_layers - model.sliding_window_layers
        swl = model.sliding_window_layers
        kv_full = s.kv_bytes_per_token_per_layer
        kv_win = s.kv_bytes_per_token_per_layer * model.kv_compression_ratio
        self.kv_a = full * kv_full / kv_shard
        self.kv_b = swl * kv_win / kv_shard
        self.kv_write = (full * kv_full + swl * kv_win) / kv_shard
        ffn_eff = model.ffn_hidden_size if model.moe is None else model.moe.expert_ffn_hidden_size * (
            model.moe.experts_per_token + model.moe.num_shared_experts)
        self.act = model.num_layers * ab * (8.0 * h + 3.0 * ffn_eff / tp)
        self.logits = model.vocab_size * 4.0 / tp
        self.capacity = hw.onchip_capacity_mb * 1e6
        self.w_on = weights_onchip
        self.kv_on = kv_onchip
        peak_w = hw.matmul_tflops(model.weight_dtype) * 1e12 * hw.efficiency.compute
        peak_a = hw.matmul_tflops(model.activation_dtype) * 1e12 * hw.efficiency.compute
        self.mm = s.matmul_flops_per_token / tp
        head_shard = min(tp, model.num_heads)
        self.att = s.attention_flops_per_pair_per_layer / head_shard
        self.att_full = full / model.kv_compression_ratio
        self.att_win = swl
        self.inv_peak_w = 1.0 / peak_w
        self.inv_peak_a = 1.0 / peak_a
        self.eff_bw = hw.memory_bandwidth_gbps * 1e9 * hw.efficiency.memory_bandwidth
        onchip_bw = hw.onchip_bandwidth_gbps * 1e9 * hw.efficiency.onchip_bandwidth
        self.onchip_div = max(onchip_bw, 1e-30) if onchip_bw > 0 else self.eff_bw
        self.tp = tp
        if tp > 1:
            msg_per_tok = h * ab
            n_ar = 2 * model.num_layers
            link = max(hw.interconnect_bandwidth_gbps, 1e-9) * 1e9 * hw.efficiency.interconnect
            # per collective: a fixed launch/synchronisation cost + 2 (tp - 1) ring hops (as costmodel.forward_cost)
            self.comm_fixed = (n_ar * 2 * (tp - 1) * hw.interconnect_latency_us * 1e-6
                               + n_ar * hw.collective_launch_us * 1e-6)
            self.comm_per_tok = n_ar * 2 * (tp - 1) / tp * msg_per_tok / link
        self.overhead = (hw.overheads.per_pass_us + hw.overheads.per_layer_us * model.num_layers) * 1e-6
        self.multi_overhead = hw.overheads.per_layer_multi_token_us * model.num_layers * 1e-6
        self.multi_query_overhead = hw.overheads.per_layer_multi_query_us * model.num_layers * 1e-6
        self.serial = 1.0 - hw.compute_memory_overlap
        self.multi_reads = hw.multi_token_weight_reads
        self.multi_ramp = hw.multi_token_ramp_tokens

    def __call__(self, t: float, kv: float, kvw: float, pairs: float, pairs_w: float, n: float) -> Cost:
        """t new tokens over n sequences (kv, pairs: as BatchShape's sums)."""
        weight_params = self.w_fixed
        if self.moe is not None:
            weight_params += self.w_expert * self.n_exp * (1.0 - self.miss**t)
        share = (1.0 if t > 1.0 else 0.0) if self.multi_ramp <= 1.0 else min(max((t - 1.0) / self.multi_ramp, 0.0), 1.0)
        reads = self.multi_reads if share >= 1.0 else 1.0 + (self.multi_reads - 1.0) * share
        weight_bytes = weight_params * self.wb_tp * reads + t * self.h_wb
        kv_read = self.kv_a * kv + self.kv_b * kvw
        other = t * (self.kv_write + self.act + self.logits)
        everything = weight_bytes + kv_read
        if everything <= self.capacity:
            onchip = everything
            hbm = other
        else:
            cap = self.capacity
            w_on = min(weight_bytes, cap) if self.w_on else 0.0
            kv_on = min(kv_read, max(cap - w_on, 0.0)) if self.kv_on else 0.0
            onchip = w_on + kv_on
            hbm = (weight_bytes - w_on) + (kv_read - kv_on) + other
        compute = t * self.mm * self.inv_peak_w + self.att * (self.att_full * pairs + self.att_win * pairs_w) * self.inv_peak_a
        memory = hbm / self.eff_bw + onchip / self.onchip_div
        comm = self.comm_fixed + self.comm_per_tok * t if self.tp > 1 else 0.0
        longer, shorter = (compute, memory) if compute > memory else (memory, compute)
        overhead = (self.overhead + self.multi_overhead * share
                    + (self.multi_query_overhead if t > n else 0.0))
        return Cost(longer + self.serial * shorter + comm + overhead, hbm, onchip)


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
    return float(t) + float(d) + costs.step_overhead_s + costs.sequence_overhead_s * batch


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
        shard = 1 if arch.attention == "mla" else min(costs.draft_tp, arch.num_kv_heads)
        per_token += costs.draft_stats.kv_bytes_per_token / shard
    blocks = int(math.floor(room / per_token / dep.kv_block_tokens))
    if blocks <= 0:
        raise InputError(source, "deployment", "zero KV-cache capacity: no memory left for even one block")
    return blocks, per_token
