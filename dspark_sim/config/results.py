"""Result documents: what `predict` (and later `run`, `validate`, `sweep`) write as JSON.

Part of the one schema: dashboards, sweeps and validation read these types back, so the JSON a
command prints is exactly `Model.model_dump_json()`. `schema_version` changes when a field's meaning
does; adding fields does not.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1


class Result(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CostBreakdown(Result):
    """Where one pass's (or step's) time goes. Times in milliseconds, traffic in GB (1e9 bytes)."""

    time_ms: float
    compute_ms: float
    hbm_ms: float
    onchip_ms: float
    communication_ms: float
    overhead_ms: float
    hbm_gb: float
    onchip_gb: float
    tflop: float
    bound: Literal["compute", "memory", "communication", "overhead"]


class SpeculativePoint(Result):
    gamma: int = Field(description="draft tokens proposed and verified per step")
    tau: float = Field(description="expected tokens per step incl. the bonus token")
    draft: CostBreakdown
    verify: CostBreakdown
    step_ms: float = Field(description="draft + verify + per-step overhead, ms")
    tokens_per_s_per_user: float
    throughput_tokens_per_s_per_gpu: float
    speedup: float = Field(description="speculative / baseline tokens per second at the same batch")


class PredictPoint(Result):
    batch_size: int
    context_tokens: int
    fits_in_memory: bool = Field(description="weights + this batch's KV fit in device memory")
    baseline: CostBreakdown
    baseline_step_ms: float
    baseline_tokens_per_s_per_user: float
    baseline_throughput_tokens_per_s_per_gpu: float
    best_gamma: int
    best: SpeculativePoint
    by_gamma: list[SpeculativePoint]


class PredictResult(Result):
    schema_version: int = SCHEMA_VERSION
    kind: Literal["predict"] = "predict"
    scenario: str
    hardware: str
    model: str
    drafter: str
    tensor_parallel: int
    acceptance: str
    survival: list[float] = Field(description="a_k, P(first k draft tokens accepted), k = 1..max gamma")
    weights_gb_per_gpu: float
    kv_gb_per_1k_tokens: float = Field(description="KV cache per sequence per 1000 tokens, per GPU")
    points: list[PredictPoint]
