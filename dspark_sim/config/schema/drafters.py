"""Drafters: how draft tokens are produced, and so what drafting costs."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from dspark_sim.config.schema.base import DType, NonNegFloat, PositiveFloat, PositiveInt, Strict
from dspark_sim.config.schema.models import ModelSpec

DrafterKind = Literal["none", "draft_model", "eagle", "mtp", "parallel_block", "dspark", "ngram"]


class DrafterSpec(Strict):
    """How draft tokens are produced, and so what drafting costs.

    - draft_model: a small autoregressive model (`model`), one pass per draft token.
    - eagle: an EAGLE-style head of `num_layers` target-width layers on the target's hidden states,
      one pass per draft token (autoregressive).
    - mtp: DeepSeek MTP modules (target-width layers), chained one pass per draft token.
    - parallel_block: DFlash-like, one pass of `num_layers` layers proposes the whole block.
    - dspark: parallel_block plus a light sequential low-rank Markov head (`markov_rank`), whose
      per-token cost is small but sequential.
    - ngram: prompt-lookup, near-zero cost (`lookup_us` per step).
    """

    kind: DrafterKind = "eagle"
    model: ModelSpec | None = Field(default=None, description="the draft model (kind draft_model only)")
    num_layers: PositiveInt = Field(default=1, description="layers of a head-style drafter (eagle/mtp/parallel/dspark)")
    draft_vocab_size: PositiveInt | None = Field(
        default=None, description="reduced draft vocabulary (EAGLE-3 uses 32k); None = the target's"
    )
    moe_layers: bool = Field(
        default=False,
        description="head layers use the target's MoE FFN (DeepSeek MTP, DSpark on V4); else dense"
    )
    markov_rank: PositiveInt = Field(default=256, description="rank of DSpark's Markov head")
    sliding_window_tokens: PositiveInt | None = Field(
        default=None, description="drafter attends only to the last N tokens (DSpark on V4: 128)"
    )
    weight_dtype: DType | None = Field(default=None, description="drafter weights dtype; None = the target's")
    kv_dtype: DType | None = Field(default=None, description="drafter KV dtype (e.g. int4 for an SRAM-resident cache)")
    kv_onchip: bool = Field(
        default=False,
        description="keep the drafter KV cache in on-chip SRAM/L2 when it fits (the press claim)"
    )
    weights_onchip: bool = Field(default=False, description="keep drafter weights on chip when they fit")
    replicated: bool = Field(
        default=False,
        description="under tensor parallelism every GPU holds the whole drafter and drafts locally "
        "(no collectives; each GPU reads all its weights), as a deployment keeps a small draft; "
        "false: sharded over the target's GPUs"
    )
    lookup_us: NonNegFloat = Field(default=30.0, description="n-gram lookup cost per step, microseconds")
    first_pass_tokens: PositiveFloat | None = Field(
        default=None,
        description="tokens the first draft pass digests per sequence (catch-up of the last step's "
        "accepted tokens); None = the expected tokens per step (tau); the bundled engine uses 2",
    )

    @model_validator(mode="after")
    def _check(self) -> DrafterSpec:
        if self.kind == "draft_model" and self.model is None:
            raise ValueError("drafter kind 'draft_model' needs 'model' (a preset name or an inline spec)")
        return self

    @property
    def is_autoregressive(self) -> bool:
        return self.kind in ("draft_model", "eagle", "mtp")
