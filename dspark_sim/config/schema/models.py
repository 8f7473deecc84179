"""Model architectures: a decoder-only transformer (GQA or MLA attention, dense or MoE FFN)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from dspark_sim.config.schema.base import DType, NonNegInt, PositiveInt, Strict


class MoESpec(Strict):
    """Mixture-of-experts FFN. Dense layers (if any) come first and use the model's `ffn_hidden_size`."""

    num_experts: PositiveInt = Field(description="routed experts per MoE layer")
    experts_per_token: PositiveInt = Field(description="routed experts each token activates (top-k)")
    num_shared_experts: NonNegInt = Field(default=0, description="always-active shared experts per MoE layer")
    expert_ffn_hidden_size: PositiveInt = Field(description="intermediate size of one expert")
    first_dense_layers: NonNegInt = Field(
        default=0, description="leading layers with a dense FFN instead of MoE"
    )

    @model_validator(mode="after")
    def _k_le_e(self) -> MoESpec:
        if self.experts_per_token > self.num_experts:
            raise ValueError("experts_per_token must be <= num_experts")
        return self


class MLASpec(Strict):
    """Multi-head latent attention (DeepSeek-V2/V3): KV cached as one compressed latent per token."""

    q_lora_rank: NonNegInt = Field(description="query down-projection rank (0 = plain query projection)")
    kv_lora_rank: PositiveInt = Field(description="latent KV width cached per token and layer")
    qk_nope_head_dim: PositiveInt
    qk_rope_head_dim: PositiveInt = Field(description="decoupled RoPE key width, also cached per token")
    v_head_dim: PositiveInt


class ModelSpec(Strict):
    """A decoder-only transformer described by its architecture; parameter counts are derived."""

    name: str
    num_layers: PositiveInt
    hidden_size: PositiveInt
    num_heads: PositiveInt = Field(description="query heads")
    num_kv_heads: PositiveInt = Field(description="key/value heads (GQA); ignored for MLA")
    head_dim: PositiveInt
    ffn_hidden_size: PositiveInt = Field(description="SwiGLU intermediate size of dense FFN layers")
    vocab_size: PositiveInt
    tie_embeddings: bool = False
    attention: Literal["gqa", "mla"] = "gqa"
    mla: MLASpec | None = None
    moe: MoESpec | None = None
    sliding_window_tokens: PositiveInt | None = Field(
        default=None, description="window of sliding-window attention layers, tokens (None = full attention)"
    )
    sliding_window_layers: NonNegInt = Field(
        default=0, description="how many layers use the sliding window (the rest attend to the full context)"
    )
    kv_compression_ratio: Annotated[float, Field(ge=1.0)] = Field(
        default=1.0,
        description="sequence-wise KV compression of full-attention layers (DeepSeek-V4-style), x"
    )
    weight_dtype: DType = "bf16"
    kv_dtype: DType = "bf16"
    activation_dtype: DType = "bf16"
    source: str = Field(default="", description="where the architecture figures come from")

    @model_validator(mode="after")
    def _check(self) -> ModelSpec:
        if self.attention == "mla" and self.mla is None:
            raise ValueError("attention 'mla' needs an 'mla' block")
        if self.num_heads % self.num_kv_heads != 0 and self.attention == "gqa":
            raise ValueError("num_heads must be a multiple of num_kv_heads")
        if self.sliding_window_layers > self.num_layers:
            raise ValueError("sliding_window_layers must be <= num_layers")
        if self.sliding_window_layers and self.sliding_window_tokens is None:
            raise ValueError("sliding_window_layers needs sliding_window_tokens")
        return self
