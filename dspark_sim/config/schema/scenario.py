"""Scenarios: a deployment (hardware x model x drafter x parallelism), its SLOs, and what to predict and simulate."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from dspark_sim.config.schema.acceptance import AcceptanceModel, IIDAcceptance
from dspark_sim.config.schema.base import NonNegFloat, NonNegInt, PositiveFloat, PositiveInt, Strict
from dspark_sim.config.schema.drafters import DrafterSpec
from dspark_sim.config.schema.hardware import HardwareProfile
from dspark_sim.config.schema.models import ModelSpec
from dspark_sim.config.schema.policies import FixedGamma, PolicySpec
from dspark_sim.config.schema.workload import WorkloadSpec


class DeploymentSpec(Strict):
    hardware: HardwareProfile
    model: ModelSpec
    drafter: DrafterSpec = Field(default_factory=DrafterSpec)
    tensor_parallel: PositiveInt = 1
    replicas: PositiveInt = 1
    max_batch_size: PositiveInt = Field(
        default=256, description="most sequences decoding at once per replica"
    )
    max_batched_tokens: PositiveInt = Field(
        default=8192, description="most tokens (prefill + verify) in one pass"
    )
    prefill_chunk_tokens: PositiveInt = Field(default=2048, description="chunked prefill: most prompt tokens per pass")
    kv_block_tokens: PositiveInt = Field(default=16, description="paged KV block size, tokens")
    memory_utilisation: Annotated[float, Field(gt=0.0, le=1.0)] = Field(
        default=0.9,
        description="fraction of device memory the engine may use (vLLM's gpu_memory_utilization)"
    )
    activation_reserve_gb: NonNegFloat = Field(
        default=2.0, description="memory kept for activations per device, GB"
    )
    verify_padding: Literal["ragged", "pad_to_max"] = Field(
        default="ragged",
        description="ragged: each sequence verifies its own length (vLLM); pad_to_max: every sequence "
        "is padded to the batch's longest verify block (the bundled engine, gpt-fast)",
    )
    batching: Literal["continuous", "static"] = Field(
        default="continuous",
        description="continuous: finished sequences leave the batch at once and waiting ones join (vLLM, "
        "SGLang); static: a batch runs until its last sequence finishes, finished rows still ride along in "
        "every pass, and new requests wait for the next batch (the bundled engine, gpt-fast)",
    )
    static_kv_cache_tokens: PositiveInt | None = Field(
        default=None,
        description="if set, every pass attends over this many cached keys per sequence (a static, "
        "masked cache as in gpt-fast and the bundled engine) instead of the live context",
    )

    @model_validator(mode="after")
    def _tp(self) -> DeploymentSpec:
        if self.tensor_parallel > self.hardware.max_devices_per_node:
            raise ValueError(
                f"tensor_parallel {self.tensor_parallel} exceeds the {self.hardware.max_devices_per_node} "
                f"devices of one {self.hardware.name} node"
            )
        return self


class SLOSpec(Strict):
    ttft_p99_s: PositiveFloat | None = None
    tpot_p99_ms: PositiveFloat | None = None
    min_tokens_per_s_per_user: PositiveFloat | None = None


class PredictGrid(Strict):
    """The grid `predict` evaluates: every batch size x context length x gamma."""

    batch_sizes: list[PositiveInt] = Field(default_factory=lambda: [1, 8, 32, 128])
    context_lengths: list[PositiveInt] = Field(default_factory=lambda: [1024, 8192])
    gammas: list[NonNegInt] = Field(default_factory=lambda: [1, 2, 3, 4, 5, 6, 7, 8])


class SimulationSpec(Strict):
    max_simulated_s: PositiveFloat | None = Field(
        default=None, description="stop the simulated clock here, seconds"
    )
    time_series_interval_s: PositiveFloat = Field(
        default=1.0, description="sampling interval of time series, s"
    )
    per_request_output: Literal["jsonl", "csv", "none"] = "jsonl"
    simulate_baseline: bool = Field(
        default=True, description="also simulate no speculation on the same requests"
    )
    warmup_s: NonNegFloat = Field(
        default=0.0,
        description="requests arriving before this simulated time are left out of the metrics, and "
        "throughput is measured from here (closed-loop ramp-up)"
    )
    disaggregated_prefill: bool = Field(
        default=False, description="prefill runs on other machines (prefill/decode disaggregation, as DeepSeek serves): "
        "requests reach a replica with their prompt's KV and first token; prefill compute and KV transfer are "
        "not simulated, and TTFT is the wait for a decode slot"
    )


class Variant(Strict):
    """Another configuration compared in the same run, e.g. MTP-1 beside DSpark (same arrivals)."""

    name: str
    set: list[str] = Field(default_factory=list, description="`--set`-style overrides, path=value")


class ScenarioSweep(Strict):
    """Run the scenario (and every variant) once per value of one field, e.g. closed-loop concurrency."""

    path: str = Field(description="a `--set` path, e.g. workload.arrivals.concurrency")
    values: list[Any] = Field(min_length=1)


class Scenario(Strict):
    name: str
    description: str = ""
    seed: NonNegInt = 0
    deployment: DeploymentSpec
    acceptance: AcceptanceModel = Field(default_factory=lambda: IIDAcceptance(alpha=0.7))
    policy: PolicySpec = Field(default_factory=lambda: FixedGamma(gamma=3))
    workload: WorkloadSpec = Field(default_factory=WorkloadSpec)
    slo: SLOSpec = Field(default_factory=SLOSpec)
    predict: PredictGrid = Field(default_factory=PredictGrid)
    simulation: SimulationSpec = Field(default_factory=SimulationSpec)
    variants: list[Variant] = Field(default_factory=list, description="configurations compared in `run`")
    sweep: ScenarioSweep | None = None
