"""Roofline cost of one forward pass, and of drafting, on a hardware profile. Numpy-vectorised.

Why a roofline with an on-chip tier: decode is memory-bound, so the answer to "is speculation worth
it" is mostly "how many bytes does a verify pass move compared with a decode pass". We count bytes by
where they come from (HBM vs on-chip SRAM/L2), FLOPs by kind (matmul vs attention), tensor-parallel
all-reduces, and fixed overheads, and report which one bounds each pass.

A batch enters only through a few aggregates (`passes.BatchShape`), so a ragged batch from the simulator and a
grid of 100,000 uniform batches from `predict` go through the same arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from dspark_sim.config.schema import DTYPE_BYTES, DrafterSpec, HardwareProfile, ModelSpec
from dspark_sim.core.models import ModelStats, drafter_model, expected_distinct_experts, model_stats
from dspark_sim.core.passes import ZERO_COST, BatchShape, PassCost, ragged_batch, uniform_batch

#: Fixed cost of one position of DSpark's Markov head as a fraction of a decode layer's (per_layer_us):
#: measured with torch.profiler on the bundled engine, a decode layer runs 48 top-level aten ops and a
#: Markov position 4 (greedy: gather, matmul, add, argmax) to 10 (sampled: + softmax and a draw). In
#: the fused GPU runtimes the bundled profiles describe (about 10 kernels per layer) a position's 3-4
#: kernels would be 0.3-0.4 of a layer: at DeepSeek-V4 scale either is well under 1% of a step.
MARKOV_STEP_LAYER_FRACTION = 10.0 / 48.0

#: Activation traffic per token per layer, in units of hidden-size elements (residual read/write,
#: two norms, attention in/out) plus FFN intermediates; small at decode, visible at prefill.
_ACT_HIDDEN_TOUCHES = 8.0
_ACT_FFN_TOUCHES = 3.0


def multi_token_share(tokens, ramp_tokens: float):
    """The share of a multi-token pass's extra cost (weight re-reads, GEMM set-up) a pass of `tokens`
    tokens pays: 0 for one token, then min(1, (tokens - 1) / ramp) (all of it from 2 tokens when ramp <= 1)."""
    t = np.asarray(tokens, dtype=float)
    if ramp_tokens <= 1.0:
        return np.where(t > 1.0, 1.0, 0.0)
    return np.clip((t - 1.0) / ramp_tokens, 0.0, 1.0)


def _onchip_split(resident_bytes, other_bytes, capacity_bytes: float):
    """Bytes served on chip vs from HBM for a set that wants to live on chip.

    Whatever of `resident_bytes` fits in what `other_bytes` leaves of the capacity is served on chip.
    """
    room = np.maximum(capacity_bytes - np.asarray(other_bytes, dtype=float), 0.0)
    onchip = np.minimum(np.asarray(resident_bytes, dtype=float), room)
    return onchip, np.asarray(resident_bytes, dtype=float) - onchip


def _weight_bytes(model: ModelSpec, hw: HardwareProfile, s: ModelStats, t: np.ndarray, tp: int,
                  include_embedding: bool) -> tuple[np.ndarray, np.ndarray]:
    """Weight bytes a pass reads per device (only the experts the batch's tokens touch), and the share
    of the multi-token extra cost it pays."""
    wb = DTYPE_BYTES[model.weight_dtype]
    h = model.hidden_size
    dense_layer_params = s.attention_params_per_layer + s.dense_ffn_params_per_layer
    weight_params = s.num_dense_layers * dense_layer_params + model.vocab_size * h  # + lm head matmul
    if model.moe is not None:
        e = model.moe
        touched = expected_distinct_experts(t, e.num_experts, e.experts_per_token)
        moe_layer = (
            s.attention_params_per_layer
            + h * e.num_experts
            + (touched + e.num_shared_experts) * s.expert_params
        )
        weight_params = weight_params + s.num_moe_layers * moe_layer
    weight_bytes = np.asarray(weight_params, dtype=float) * wb / tp
    # matrix-matrix passes may stream the weights more than once (a CPU GEMM packs them first)
    multi_share = multi_token_share(t, hw.multi_token_ramp_tokens)
    reads = hw.multi_token_weight_reads
    weight_bytes = weight_bytes * np.where(multi_share >= 1.0, reads, 1.0 + (reads - 1.0) * multi_share)
    if include_embedding:
        weight_bytes = weight_bytes + t * h * wb  # embedding rows looked up
    return weight_bytes, multi_share


def _kv_bytes(model: ModelSpec, s: ModelStats, batch: BatchShape, t: np.ndarray,
              tp: int) -> tuple[np.ndarray, np.ndarray]:
    """KV-cache bytes read and written per device (GQA heads shard over tp; an MLA latent is read whole
    by every rank)."""
    kv_shard = 1 if model.attention == "mla" else min(tp, model.num_kv_heads)
    full_layers = model.num_layers - model.sliding_window_layers
    kv_tok_full = s.kv_bytes_per_token_per_layer
    kv_tok_window = s.kv_bytes_per_token_per_layer * model.kv_compression_ratio  # windows are uncompressed
    kv_read = (
        full_layers * kv_tok_full * np.asarray(batch.kv_tokens, dtype=float)
        + model.sliding_window_layers * kv_tok_window * np.asarray(batch.kv_tokens_window, dtype=float)
    ) / kv_shard
    kv_write = t * (full_layers * kv_tok_full + model.sliding_window_layers * kv_tok_window) / kv_shard
    return kv_read, kv_write


def _placement(hw: HardwareProfile, weight_bytes: np.ndarray, kv_read: np.ndarray, weights_onchip: bool,
               kv_onchip: bool) -> tuple[np.ndarray, np.ndarray]:
    """(on-chip bytes, HBM bytes) of the weights and KV read: all on chip when the whole working set
    fits (it is reused pass after pass), else the flagged parts as far as they fit."""
    capacity = hw.onchip_capacity_mb * 1e6
    everything = weight_bytes + kv_read
    fits_whole = everything <= capacity
    w_on, w_off = _onchip_split(weight_bytes, 0.0, capacity) if weights_onchip else (0.0, weight_bytes)
    if kv_onchip:
        kv_on, kv_off = _onchip_split(kv_read, np.asarray(w_on), capacity)
    else:
        kv_on, kv_off = 0.0, kv_read
    onchip_bytes = np.where(fits_whole, everything, np.asarray(w_on) + np.asarray(kv_on))
    hbm_bytes = np.where(fits_whole, 0.0, np.asarray(w_off) + np.asarray(kv_off))
    return onchip_bytes, hbm_bytes


def _flops(model: ModelSpec, s: ModelStats, batch: BatchShape, t: np.ndarray, tp: int) -> tuple[np.ndarray, np.ndarray]:
    """(matmul FLOPs, attention FLOPs) per device."""
    full_layers = model.num_layers - model.sliding_window_layers
    matmul_flops = t * s.matmul_flops_per_token / tp
    head_shard = min(tp, model.num_heads)
    attn_flops = s.attention_flops_per_pair_per_layer * (
        full_layers * np.asarray(batch.attn_pairs, dtype=float) / model.kv_compression_ratio
        + model.sliding_window_layers * np.asarray(batch.attn_pairs_window, dtype=float)
    ) / head_shard
    return matmul_flops, attn_flops


def _allreduces(model: ModelSpec, hw: HardwareProfile, t: np.ndarray, tp: int) -> tuple[np.ndarray, np.ndarray]:
    """(seconds, bytes) of the tensor-parallel all-reduces: two per layer (after attention, after the
    FFN), ring algorithm: a fixed cost per collective (launch, rank synchronisation) + 2 (tp - 1) hops
    + the ring's bytes."""
    if tp <= 1:
        return np.zeros_like(t), np.zeros_like(t)
    msg = t * model.hidden_size * DTYPE_BYTES[model.activation_dtype]
    n_ar = 2 * model.num_layers
    link = max(hw.interconnect_bandwidth_gbps, 1e-9) * 1e9 * hw.efficiency.interconnect
    # (x + 0.0 == x exactly: a profile without a launch cost prices exactly as one without the term)
    per_ar = (2 * (tp - 1) * hw.interconnect_latency_us * 1e-6 + 2 * (tp - 1) / tp * msg / link
              + hw.collective_launch_us * 1e-6)
    return n_ar * per_ar, n_ar * 2 * (tp - 1) / tp * msg


def forward_cost(
    model: ModelSpec,
    hw: HardwareProfile,
    batch: BatchShape,
    tp: int = 1,
    *,
    stats: ModelStats | None = None,
    weights_onchip: bool = False,
    kv_onchip: bool = False,
    include_embedding: bool = True,
) -> PassCost:
    """Time of one forward pass of `model` over `batch` on `tp` devices of `hw` (per device).

    Bytes: weights once per pass (matmul weights / tp; only the experts the batch's tokens touch),
    KV read per sequence and layer, KV written for the new tokens, activations and logits. If the whole
    working set fits on chip it is served from there (it is reused pass after pass); otherwise only the
    parts flagged `weights_onchip` / `kv_onchip` are, as far as they fit.
    """
    s = stats or model_stats(model)
    ab = DTYPE_BYTES[model.activation_dtype]
    t = np.asarray(batch.query_tokens, dtype=float)
    h = model.hidden_size
    weight_bytes, multi_share = _weight_bytes(model, hw, s, t, tp, include_embedding)
    kv_read, kv_write = _kv_bytes(model, s, batch, t, tp)
    # activations and logits
    ffn_eff = model.ffn_hidden_size if model.moe is None else model.moe.expert_ffn_hidden_size * (
        model.moe.experts_per_token + model.moe.num_shared_experts
    )
    act = t * model.num_layers * ab * (_ACT_HIDDEN_TOUCHES * h + _ACT_FFN_TOUCHES * ffn_eff / tp)
    logits = t * model.vocab_size * 4.0 / tp
    onchip_bytes, hbm_resident = _placement(hw, weight_bytes, kv_read, weights_onchip, kv_onchip)
    hbm_bytes = hbm_resident + kv_write + act + logits

    matmul_flops, attn_flops = _flops(model, s, batch, t, tp)
    compute_s = matmul_flops / (hw.matmul_tflops(model.weight_dtype) * 1e12 * hw.efficiency.compute) + (
        attn_flops / (hw.matmul_tflops(model.activation_dtype) * 1e12 * hw.efficiency.compute)
    )
    eff_bw = hw.memory_bandwidth_gbps * 1e9 * hw.efficiency.memory_bandwidth
    hbm_s = hbm_bytes / eff_bw
    onchip_bw = hw.onchip_bandwidth_gbps * 1e9 * hw.efficiency.onchip_bandwidth
    onchip_s = np.where(onchip_bw > 0, onchip_bytes / max(onchip_bw, 1e-30), onchip_bytes / eff_bw)
    comm_s, comm_bytes = _allreduces(model, hw, t, tp)

    multi = hw.overheads.per_layer_multi_token_us * model.num_layers
    multi_query = hw.overheads.per_layer_multi_query_us * model.num_layers
    overhead_s = (hw.overheads.per_pass_us + hw.overheads.per_layer_us * model.num_layers
                  + multi * multi_share
                  + np.where(t > np.asarray(batch.num_seqs, dtype=float), multi_query, 0.0)) * 1e-6
    memory_s = hbm_s + onchip_s
    # the larger of compute and memory time, plus the part of the smaller one that does not overlap
    serial = 1.0 - hw.compute_memory_overlap
    time_s = np.maximum(compute_s, memory_s) + serial * np.minimum(compute_s, memory_s) + comm_s + overhead_s
    return PassCost(
        time_s=time_s,
        compute_s=compute_s,
        hbm_s=hbm_s,
        onchip_s=onchip_s,
        comm_s=comm_s,
        overhead_s=np.broadcast_to(overhead_s, np.shape(time_s)).astype(float),
        flops=matmul_flops + attn_flops,
        hbm_bytes=hbm_bytes,
        onchip_bytes=onchip_bytes,
        comm_bytes=comm_bytes,
    )


# --------------------------------------------------------------------------------------------
# Drafting and whole steps
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StepCoster:
    """Prices the passes of one deployment: baseline decode, drafting, verification.

    Built once per deployment (model stats cached); every method is vectorised over numpy inputs.
    """

    target: ModelSpec
    drafter: DrafterSpec
    hw: HardwareProfile
    tp: int = 1
    pad_verify: bool = False  # every sequence verifies the batch's longest block (gpt-fast style)
    static_kv_tokens: int | None = None  # passes attend over a fixed, masked cache of this length
    # derived in __post_init__, once per coster: specs are re-serialised to look them up (~10 us a call)
    _target_stats: ModelStats = field(init=False, repr=False, compare=False)
    _draft_arch: ModelSpec | None = field(init=False, repr=False, compare=False)
    _draft_stats: ModelStats | None = field(init=False, repr=False, compare=False)

    @classmethod
    def for_deployment(cls, dep) -> StepCoster:
        """The coster of a `DeploymentSpec` (engine-fidelity options included)."""
        return cls(dep.model, dep.drafter, dep.hardware, dep.tensor_parallel,
                   pad_verify=dep.verify_padding == "pad_to_max", static_kv_tokens=dep.static_kv_cache_tokens)

    def _ctx(self, context, query):
        """Keys a pass attends over, minus its own new tokens: the live context or the static cache."""
        if self.static_kv_tokens is None:
            return context
        return np.maximum(self.static_kv_tokens - np.asarray(query, dtype=float), 0.0)

    def __post_init__(self) -> None:
        arch = _cached_draft_arch(self.target, self.drafter)
        object.__setattr__(self, "_target_stats", stats_of(self.target))
        object.__setattr__(self, "_draft_arch", arch)
        object.__setattr__(self, "_draft_stats", stats_of(arch) if arch is not None else None)

    @property
    def target_stats(self) -> ModelStats:
        return self._target_stats

    @property
    def draft_arch(self) -> ModelSpec | None:
        return self._draft_arch

    def target_pass(self, batch: BatchShape) -> PassCost:
        return forward_cost(self.target, self.hw, batch, self.tp, stats=self.target_stats)

    def target_ragged(self, query_lens, context_lens) -> PassCost:
        """One target pass over a real (ragged) batch: prefill chunks and verify blocks mixed."""
        q = np.asarray(query_lens, dtype=float)
        if self.pad_verify and q.size:
            q = np.full_like(q, q.max())
        c = self._ctx(np.asarray(context_lens, dtype=float), q)
        return self.target_pass(ragged_batch(q, c, self.target.sliding_window_tokens))

    def step_overhead_s(self, dspark_scheduler: bool = False) -> float:
        """Host time of a speculative step outside its passes; under the DSpark prefix scheduler also
        its search over the draft's confidences."""
        o = self.hw.overheads
        return (o.per_step_us + (o.per_scheduler_step_us if dspark_scheduler else 0.0)) * 1e-6

    def baseline_step_overhead_s(self, num_seqs: float | np.ndarray = 0.0) -> float | np.ndarray:
        """Time of a plain decoding step outside its pass: a fixed part and a part per sequence."""
        o = self.hw.overheads
        fixed = o.per_baseline_step_us if o.per_baseline_step_us is not None else o.per_step_us
        return (fixed + o.per_baseline_sequence_us * np.asarray(num_seqs, dtype=float)) * 1e-6

    @property
    def draft_tp(self) -> int:
        """GPUs one draft pass is split over: 1 for a replicated drafter, else the target's degree."""
        return 1 if self.drafter.replicated else self.tp

    def _draft_pass(self, batch: BatchShape) -> PassCost:
        arch = self.draft_arch
        assert arch is not None
        return forward_cost(
            arch,
            self.hw,
            batch,
            self.draft_tp,
            stats=self._draft_stats,
            weights_onchip=self.drafter.weights_onchip,
            kv_onchip=self.drafter.kv_onchip,
            include_embedding=self.drafter.kind == "draft_model",
        )

    def draft(self, num_seqs, gamma, context_len, catch_up_tokens=1.0) -> PassCost:
        """Cost of drafting `gamma` tokens for `num_seqs` sequences with `context_len` cached tokens.

        Autoregressive drafters run `gamma` passes: the first also digests the tokens the last step
        accepted (`catch_up_tokens`, about tau), the rest one token each. Parallel drafters run one
        pass over the block; DSpark adds `gamma` small sequential Markov-head steps.
        """
        kind = self.drafter.kind
        g = np.asarray(gamma, dtype=float)
        b = np.asarray(num_seqs, dtype=float)
        ctx = np.asarray(context_len, dtype=float)
        if self.drafter.first_pass_tokens is not None:
            catch_up_tokens = self.drafter.first_pass_tokens
        if kind == "none":
            return ZERO_COST.scaled(np.zeros(np.broadcast(b, g, ctx).shape))
        if kind == "ngram":
            t = np.where(g > 0, self.drafter.lookup_us * 1e-6, 0.0) * np.ones_like(b * ctx)
            z = np.zeros_like(t)
            return PassCost(t, z, z, z, z, t, z, z, z, z)
        window = self.draft_arch.sliding_window_tokens if self.draft_arch else None
        if self.drafter.is_autoregressive:
            first = self._draft_pass(uniform_batch(b, catch_up_tokens, self._ctx(ctx, catch_up_tokens), window))
            # passes 2..gamma see one more cached token each; price them at the mean extra context
            rest_ctx = self._ctx(ctx + catch_up_tokens + (g - 1.0) / 2.0, 1.0)
            rest = self._draft_pass(uniform_batch(b, 1.0, rest_ctx, window))
            total = first.scaled(np.minimum(g, 1.0)) + rest.scaled(np.maximum(g - 1.0, 0.0))
            o = self.hw.overheads
            host = (o.per_draft_pass_us * g + o.per_step_sequence_us * b * (g > 0)) * 1e-6 * np.ones_like(b * ctx)
            z = np.zeros_like(host)
            return total + PassCost(host, z, z, z, z, host, z, z, z, z)
        # parallel drafters: one pass over the block (+ the anchor token)
        q_block = g + catch_up_tokens
        block = self._draft_pass(uniform_batch(b, q_block, self._ctx(ctx, q_block), window))
        block = block.scaled(np.minimum(g, 1.0))
        if kind == "dspark":
            block = block + self._markov_head(b, g)
        return block

    def _markov_head(self, num_seqs, gamma) -> PassCost:
        """DSpark's low-rank Markov head: per draft position, bias = U[prev token] @ V (rank r x vocab).

        Sequential but small: reads V (r x vocab) and the block's logits once per position.
        """
        arch = self.draft_arch
        assert arch is not None
        r = self.drafter.markov_rank
        vocab = arch.vocab_size
        wb = DTYPE_BYTES[arch.weight_dtype]
        flops = 2.0 * num_seqs * r * vocab
        bytes_ = r * vocab * wb / self.draft_tp + num_seqs * vocab * 4.0 * 2 / self.draft_tp
        capacity = self.hw.onchip_capacity_mb * 1e6
        eff_bw = self.hw.memory_bandwidth_gbps * 1e9 * self.hw.efficiency.memory_bandwidth
        onchip_bw = max(self.hw.onchip_bandwidth_gbps * 1e9 * self.hw.efficiency.onchip_bandwidth, 1e-30)
        on = np.where(bytes_ <= capacity, bytes_, 0.0)
        off = bytes_ - on
        mem = off / eff_bw + on / onchip_bw
        comp = flops / (self.hw.matmul_tflops(arch.weight_dtype) * 1e12 * self.hw.efficiency.compute)
        ovh = MARKOV_STEP_LAYER_FRACTION * self.hw.overheads.per_layer_us * 1e-6 * np.ones_like(
            np.asarray(flops, dtype=float))
        step = PassCost(np.maximum(comp, mem) + ovh, comp, off / eff_bw, on / onchip_bw, 0.0 * ovh, ovh,
                        flops, off, on, 0.0 * ovh)
        return step.scaled(np.asarray(gamma, dtype=float))

    def verify(self, num_seqs, gamma, context_len) -> PassCost:
        """One target pass over gamma + 1 query tokens per sequence."""
        q = np.asarray(gamma, dtype=float) + 1.0
        return self.target_pass(uniform_batch(num_seqs, q, self._ctx(context_len, q), self.target.sliding_window_tokens))

    def baseline(self, num_seqs, context_len) -> PassCost:
        """One plain decode pass: one new token per sequence."""
        return self.target_pass(uniform_batch(num_seqs, 1.0, self._ctx(context_len, 1.0), self.target.sliding_window_tokens))


def stats_of(m: ModelSpec) -> ModelStats:
    return _stats_of_json(m.model_dump_json())


@lru_cache(maxsize=256)
def _stats_of_json(model_json: str) -> ModelStats:
    """Memoised on the spec's content (specs are mutable pydantic objects, so not hashable)."""
    return model_stats(ModelSpec.model_validate_json(model_json))


def _cached_draft_arch(target: ModelSpec, drafter: DrafterSpec) -> ModelSpec | None:
    return _draft_of_json(target.model_dump_json(), drafter.model_dump_json())


@lru_cache(maxsize=256)
def _draft_of_json(target_json: str, drafter_json: str) -> ModelSpec | None:
    return drafter_model(ModelSpec.model_validate_json(target_json), DrafterSpec.model_validate_json(drafter_json))
