"""Architecture -> parameter counts, bytes and FLOPs per token. Nothing here is typed by hand.

Every preset in `presets/models/` is only an architecture; its parameter count, weight bytes, KV bytes
per token and FLOPs come from the formulas below, so a preset is checked against the published total
(a test) rather than trusted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dspark_sim.config.schema import DTYPE_BYTES, DrafterSpec, ModelSpec


@dataclass(frozen=True)
class ModelStats:
    """Derived sizes of one model. Parameter counts are elements; bytes use the spec's dtypes."""

    total_params: float
    active_params: float  # touched per token (shared experts + top-k routed experts)
    embedding_params: float  # input embedding table (a lookup, not a matmul)
    lm_head_params: float  # output projection (a matmul every token), 0 extra if tied
    attention_params_per_layer: float
    dense_ffn_params_per_layer: float
    expert_params: float  # one routed expert
    num_moe_layers: int
    num_dense_layers: int
    # bytes
    weight_bytes_total: float
    kv_bytes_per_token_per_layer: float  # full-attention layers, after any sequence compression
    kv_bytes_per_token: float  # over all layers, at full context (no window)
    # flops
    matmul_flops_per_token: float  # 2 x matmul parameters touched per token (incl. lm head)
    attention_flops_per_pair_per_layer: float  # QK^T + PV per (query token, cached token) pair

    @property
    def weight_bytes_active(self) -> float:
        return self.active_params * self._bytes_per_param

    @property
    def _bytes_per_param(self) -> float:
        return self.weight_bytes_total / self.total_params


def _attention_params(m: ModelSpec) -> float:
    h = m.hidden_size
    if m.attention == "mla":
        a = m.mla
        assert a is not None
        qk = a.qk_nope_head_dim + a.qk_rope_head_dim
        if a.q_lora_rank:
            q = h * a.q_lora_rank + a.q_lora_rank + a.q_lora_rank * m.num_heads * qk
        else:
            q = h * m.num_heads * qk
        kv_a = h * (a.kv_lora_rank + a.qk_rope_head_dim) + a.kv_lora_rank
        kv_b = a.kv_lora_rank * m.num_heads * (a.qk_nope_head_dim + a.v_head_dim)
        o = m.num_heads * a.v_head_dim * h
        return q + kv_a + kv_b + o
    q = h * m.num_heads * m.head_dim
    kv = 2 * h * m.num_kv_heads * m.head_dim
    o = m.num_heads * m.head_dim * h
    return q + kv + o


def kv_bytes_per_token_per_layer(m: ModelSpec, kv_dtype: str | None = None) -> float:
    """Bytes one token adds to one layer's KV cache (MLA caches the latent plus the RoPE key)."""
    b = DTYPE_BYTES[kv_dtype or m.kv_dtype]
    if m.attention == "mla":
        assert m.mla is not None
        return (m.mla.kv_lora_rank + m.mla.qk_rope_head_dim) * b
    return 2 * m.num_kv_heads * m.head_dim * b


def attention_flops_per_pair(m: ModelSpec) -> float:
    """FLOPs for one query token attending to one cached token in one layer (QK^T and PV)."""
    if m.attention == "mla":
        assert m.mla is not None
        # absorbed-MLA decode: scores over the latent (+rope part), values in the latent space
        return 2 * m.num_heads * (m.mla.kv_lora_rank + m.mla.qk_rope_head_dim) + 2 * m.num_heads * m.mla.kv_lora_rank
    return 4 * m.num_heads * m.head_dim


def model_stats(m: ModelSpec) -> ModelStats:
    h = m.hidden_size
    attn = _attention_params(m) + 2 * h  # + the two RMSNorm weights
    dense_ffn = 3 * h * m.ffn_hidden_size
    expert: float  # parameters of one expert, of all experts and router, of those a token activates
    moe_total: float
    moe_active: float
    if m.moe is not None:
        e = m.moe
        n_dense = e.first_dense_layers
        n_moe = m.num_layers - n_dense
        expert = 3 * h * e.expert_ffn_hidden_size
        router = h * e.num_experts
        moe_total = router + (e.num_experts + e.num_shared_experts) * expert
        moe_active = router + (e.experts_per_token + e.num_shared_experts) * expert
    else:
        n_dense, n_moe, expert, moe_total, moe_active = m.num_layers, 0, 0.0, 0.0, 0.0
    embedding = m.vocab_size * h
    lm_head = 0.0 if m.tie_embeddings else m.vocab_size * h
    body_total = m.num_layers * attn + n_dense * dense_ffn + n_moe * moe_total + h
    body_active = m.num_layers * attn + n_dense * dense_ffn + n_moe * moe_active + h
    total = body_total + embedding + lm_head
    active = body_active + embedding + lm_head
    # the lm head is a matmul every token even when tied to the embedding table
    matmul_params = body_active + m.vocab_size * h
    kv_layer = kv_bytes_per_token_per_layer(m) / m.kv_compression_ratio
    full_layers = m.num_layers - m.sliding_window_layers
    kv_bytes_layer_uncompressed = kv_bytes_per_token_per_layer(m)
    return ModelStats(
        total_params=total,
        active_params=active,
        embedding_params=embedding,
        lm_head_params=lm_head,
        attention_params_per_layer=attn,
        dense_ffn_params_per_layer=dense_ffn,
        expert_params=expert,
        num_moe_layers=n_moe,
        num_dense_layers=n_dense,
        weight_bytes_total=total * DTYPE_BYTES[m.weight_dtype],
        kv_bytes_per_token_per_layer=kv_layer,
        kv_bytes_per_token=full_layers * kv_layer + m.sliding_window_layers * kv_bytes_layer_uncompressed,
        matmul_flops_per_token=2.0 * matmul_params,
        attention_flops_per_pair_per_layer=attention_flops_per_pair(m),
    )


def drafter_model(target: ModelSpec, drafter: DrafterSpec) -> ModelSpec | None:
    """The architecture whose passes a drafter runs, derived from the target for head-style drafters.

    eagle/mtp/parallel_block/dspark heads are `num_layers` layers of the target's width (dense FFN
    unless `moe_layers`), with the target's (or a reduced) vocabulary; the embedding is shared with the
    target, so only the lm head counts as extra weight traffic.
    """
    if drafter.kind in ("none", "ngram"):
        return None
    if drafter.kind == "draft_model":
        base = drafter.model
        assert base is not None
        updates: dict = {}
    else:
        base = target
        updates = {
            "name": f"{target.name}-{drafter.kind}-head",
            "num_layers": drafter.num_layers,
            "sliding_window_layers": 0,
            "sliding_window_tokens": None,
            "kv_compression_ratio": 1.0,
        }
        if not drafter.moe_layers:
            updates["moe"] = None
        elif target.moe is not None:
            updates["moe"] = target.moe.model_copy(update={"first_dense_layers": 0})
        if drafter.draft_vocab_size:
            updates["vocab_size"] = drafter.draft_vocab_size
    if drafter.sliding_window_tokens:
        updates["sliding_window_tokens"] = drafter.sliding_window_tokens
        updates["sliding_window_layers"] = updates.get("num_layers", base.num_layers)
    if drafter.weight_dtype:
        updates["weight_dtype"] = drafter.weight_dtype
    if drafter.kv_dtype:
        updates["kv_dtype"] = drafter.kv_dtype
    return base.model_copy(update=updates)


def expected_distinct_experts(num_tokens, num_experts: int, experts_per_token: int):
    """Expected number of distinct routed experts a batch of tokens touches in one MoE layer.

    Assumes uniform independent routing: each token picks k of E experts, so an expert is missed by
    one token with probability 1 - k/E. Real routers are skewed, which touches fewer experts; this is
    the memory-traffic upper estimate. Works on numpy arrays.
    """
    t = np.asarray(num_tokens, dtype=float)
    return num_experts * (1.0 - (1.0 - experts_per_token / num_experts) ** t)
