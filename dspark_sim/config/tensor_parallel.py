"""Tensor-parallel measurement documents: all-reduce profiles, TP runs and the TP speed table.

Part of the one schema, in the style of `measurements.py`. The all-reduce profile is what
`python -m dspark_sim.cli.tp allreduce` and `dspark-sim profile --allreduce-ranks` write; a `TPRun`
is what one TP degree measured (rank 0 hands it back to the launcher); the `TPTable` is what
`benchmarks/tp_engine.py` writes: the runs of every degree beside the cost model's prediction.

Each document says how it is written (`to_json`): the table keeps exactly the fields that were set,
so a table read back and written again (`--repredict`) keeps the fields its own version wrote.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, ValidationError

from dspark_sim.config.errors import from_validation_error
from dspark_sim.config.io import read_json
from dspark_sim.config.measurements import DeviceInfo, Doc, EngineProfile

AllReduceContext = Literal["burst", "between-matmuls"]


class AllReduceSample(Doc):
    """One message size: an all-reduce of tokens x hidden activations, as the engine sends per layer."""

    world_size: int
    tokens: int
    hidden: int
    dtype: str
    message_bytes: int
    mode: str = Field(default="eager", description="eager calls, or replays of a CUDA graph of them (cuda-graph)")
    context: AllReduceContext = Field(
        default="burst", description="burst: all-reduces back to back; between-matmuls: each reduces the output "
        "of a row-parallel matmul as in the model (the matmuls' own time, timed alone, subtracted)")
    times_s: list[float] = Field(description="per repeat: mean time of one all-reduce, slowest rank")
    median_s: float
    spread: float = Field(description="(p90 - p10) / median of the repeats")


class FitPoint(Doc):
    """One all-reduce sample against the fitted model."""

    world_size: int
    message_bytes: int
    measured_s: float
    predicted_s: float
    error_pct: float


class InterconnectFitDoc(Doc):
    """The interconnect fitted to all-reduce samples (`fit_interconnect`, fit/): effective
    figures, efficiency 1.0 implied."""

    context: AllReduceContext | None = Field(
        default=None, description="in a TP table: which of the run's samples were fitted")
    launch_us: float = Field(default=0.0, description="fixed cost per collective (absent in fits made before "
                             "the launch cost was fitted: none)")
    latency_us: float = Field(description="per ring hop")
    bandwidth_gbps: float
    launch_identified: bool = False
    latency_identified: bool
    bandwidth_identified: bool
    median_abs_error_pct: float
    max_abs_error_pct: float
    notes: list[str]
    points: list[FitPoint] = Field(
        default_factory=list, description="per sample; absent from a re-predicted table's record of its previous fit")


class AllReduceProfile(Doc):
    kind: Literal["allreduce-profile"] = "allreduce-profile"
    schema_version: int = 1
    engine_version: str
    backend: str = Field(description="gloo (CPU) or nccl (CUDA)")
    device: DeviceInfo
    world_size: int
    mode: str = Field(description="how the samples ran: eager, cuda-graph, or both")
    samples: list[AllReduceSample]
    created_by: str = ""
    fit: InterconnectFitDoc | None = Field(default=None, description="the interconnect fitted to the samples")

    def to_json(self) -> str:
        """Every field, those without a value (an unfitted profile's fit) left out."""
        return json.dumps(self.model_dump(exclude_none=True), indent=2)


class TPRunRow(Doc):
    """One batch size of a TP run: the plain loop and speculative decoding (FixedGamma), rank 0's clock,
    medians over the timed repeats."""

    tp: int
    batch: int
    forward: str = Field(description="cuda-graphs, eager, or eager after a failed CUDA-graph capture (why)")
    cache_len: int = Field(description="static KV-cache length every query attends over")
    baseline_decode_tok_s: float
    baseline_tok_s: float
    baseline_step_s: float
    spec_decode_tok_s: float | None = None
    spec_tok_s: float | None = None
    spec_step_s: float | None = None
    tau: float | None = None
    draft_s: float | None = Field(default=None, description="mean draft phase of a step")
    verify_s: float | None = Field(default=None, description="mean verify phase of a step")
    greedy_identical: bool | None = Field(
        default=None, description="greedy runs: speculative output equals the plain loop's (null when sampled)")
    ranks_agree: bool = Field(description="every rank generated the same tokens")


class TPRun(Doc):
    """What one TP degree measured (`measure.tp_table.measure_engine`)."""

    tp: int
    backend: str
    device: str = Field(description="CUDA device name, or cpu")
    rows: list[TPRunRow]
    forward: list[str]
    weight_bytes_per_rank: int
    draft_weight_bytes_per_rank: int
    draft_replicated: bool
    allreduce: list[AllReduceSample] = Field(default_factory=list, description="tp > 1: the engine's all-reduces")
    allreduce_act_bytes: int | None = Field(default=None, description="bytes of one activation element")
    profile: EngineProfile | None = Field(default=None, description="TP 1, when asked: passes and steps for "
                                          "calibration")


class MeasuredRow(TPRunRow):
    weight_gb_per_rank: float


class TPTableRow(MeasuredRow):
    """A measured row beside the cost model's prediction, and both sides' scaling against TP 1 at the same
    batch (where TP 1 was run)."""

    predicted_baseline_decode_tok_s: float
    baseline_error_pct: float
    predicted_baseline_comm_share: float
    predicted_spec_decode_tok_s: float | None = None
    spec_error_pct: float | None = None
    predicted_spec_comm_share: float | None = None
    baseline_scaling_measured: float | None = None
    baseline_scaling_predicted: float | None = None
    spec_scaling_measured: float | None = None
    spec_scaling_predicted: float | None = None


class CalibrationSummary(Doc):
    """A TP-1 calibration's fit error and fitted parameters."""

    median_abs_error_pct: float
    max_abs_error_pct: float
    parameters: dict[str, float]


class InterconnectUsed(Doc):
    """The interconnect figures the predictions used."""

    launch_us: float | None = Field(default=None, description="absent in tables made before the launch cost")
    latency_us: float
    bandwidth_gbps: float
    efficiency: float


class RowErrors(Doc):
    tp: int
    batch: int
    baseline_error_pct: float | None = None
    spec_error_pct: float | None = None


class Repredicted(Doc):
    """What a re-prediction replaced: the previous hardware, interconnect and errors."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    source: str = Field(alias="from", description="the table re-predicted")
    hardware: str
    interconnect: str
    previous_hardware: str | None
    previous_interconnect_fit: InterconnectFitDoc | None = Field(description="without its points")
    previous_interconnect_used: InterconnectUsed | None
    previous_errors: list[RowErrors]


class TPTable(Doc):
    """Measured tokens/s at each TP degree beside the cost model's (`benchmarks/tp_engine.py`)."""

    device: str
    torch: str = Field(description="torch version of the run")
    target_shape: str
    draft_shape: str | None
    dtype: str
    prompt_len: int
    new_tokens: int
    gamma: int
    tp: list[int]
    notes: list[str]
    draft_replicated: bool = Field(default=False, description="absent in tables made before the option")
    profile: EngineProfile | None = Field(default=None, description="the TP-1 profile the hardware was calibrated on")
    hardware: str = Field(description="what the predictions priced with")
    calibration: CalibrationSummary | None = None
    allreduce: list[AllReduceSample] | None = None
    interconnect_fit_other: InterconnectFitDoc | None = Field(
        default=None, description="the fit of the other context's samples, for comparison")
    hardware_out: str | None = None
    repredicted: Repredicted | None = None
    interconnect_fit: InterconnectFitDoc | None = None
    interconnect_used: InterconnectUsed
    rows: list[TPTableRow]

    def document(self) -> dict[str, Any]:
        """The fields that were set (measured, fitted or carried over from the table re-predicted)."""
        return self.model_dump(exclude_unset=True, by_alias=True)

    def to_json(self) -> str:
        return json.dumps(self.document(), indent=2)


def load_tp_table(path: str | Path) -> TPTable:
    """A TP table from `benchmarks/tp_engine.py`; a bad file is one InputError line."""
    data = read_json(path, "TP table", "TP table not found")
    try:
        return TPTable.model_validate(data)
    except ValidationError as err:
        raise from_validation_error(str(path), err, data=data) from None
