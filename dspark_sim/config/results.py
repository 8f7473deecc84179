"""Result documents: what `predict` (and later `run`, `validate`, `sweep`) write as JSON.

Part of the one schema: dashboards, sweeps and validation read these types back, so the JSON a
command prints is exactly `Model.model_dump_json()`. `schema_version` changes when a field's meaning
does; adding fields does not.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1

#: What bounds a pass: the largest of its compute, memory, communication and fixed-overhead times.
Bound = Literal["compute", "memory", "communication", "overhead"]


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
    bound: Bound


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


# --------------------------------------------------------------------------------------------
# `run`: discrete-event simulation results (dspark_sim/sim)
# --------------------------------------------------------------------------------------------

from typing import Any as _Any  # noqa: E402  (appended section)


class LatencyStats(Result):
    """Distribution of one per-request latency (unit in the owning field's name)."""

    mean: float
    p50: float
    p90: float
    p99: float


class RunSummary(Result):
    """One simulated configuration: a (sweep value, variant) pair, or its no-speculation baseline."""

    variant: str = Field(description="'main', a variant's name, or 'baseline' (no speculation)")
    sweep_value: _Any = Field(default=None, description="the sweep field's value (None without a sweep)")
    speculative: bool
    baseline_of: list[str] = Field(default_factory=list, description="variants this baseline serves")
    drafter: str
    policy: str
    gamma_max: int
    replicas: int
    gpus: int
    # requests and time
    requests_total: int
    requests_finished: int
    requests_measured: int = Field(description="finished, past the warm-up, counted in latencies")
    simulated_s: float
    window_s: float = Field(description="measurement window of throughput, simulated seconds")
    output_tokens: int = Field(description="output tokens generated inside the window")
    # throughput and per-user speed
    throughput_tokens_per_s: float
    throughput_tokens_per_s_per_gpu: float
    requests_per_s: float
    tokens_per_s_per_user: float = Field(description="mean decode speed per request, (output - 1) / decode time")
    tokens_per_s_per_user_p50: float
    ttft_s: LatencyStats
    tpot_ms: LatencyStats
    e2e_s: LatencyStats
    # SLOs
    slo_attainment: float | None = Field(
        default=None, description="fraction of measured requests meeting every SLO"
    )
    goodput_tokens_per_s_per_gpu: float | None = Field(
        default=None, description="throughput of SLO-meeting requests"
    )
    slo_met: bool | None = Field(
        default=None, description="the p99 / mean SLO figures hold for the whole run"
    )
    # speculation (decode steps inside the measurement window)
    tau: float = Field(description="tokens per sequence per decode step, bonus token included")
    mean_verify_budget: float = Field(
        description="verified draft tokens per sequence per decode step (+1 = the DSpark paper's count)"
    )
    mean_draft_tokens: float = Field(description="drafted tokens per sequence per decode step")
    acceptance_rate: float = Field(description="accepted / verified draft tokens")
    acceptance_per_position: list[float] = Field(
        description="observed conditional acceptance c_k of draft position k (k = 1..), where verified"
    )
    wasted_verify_tokens: int = Field(description="verified draft tokens that were rejected")
    wasted_verify_fraction: float = Field(description="rejected / all tokens the verify passes carried")
    # where time and bytes go (steps inside the window; bytes per GPU)
    steps: int = Field(description="engine steps over the whole run, all replicas")
    mean_batch_size: float = Field(description="decoding sequences per step")
    draft_time_fraction: float
    verify_time_fraction: float = Field(description="target passes (verify + prefill chunks)")
    overhead_time_fraction: float
    busy_fraction: float = Field(description="fraction of replica-time spent in steps")
    hbm_gb_per_output_token: float = Field(description="HBM traffic per output token, GB (1e9 B), per GPU")
    onchip_gb_per_output_token: float
    onchip_byte_fraction: float = Field(description="on-chip / (on-chip + HBM) bytes")
    # memory and queueing
    kv_capacity_tokens: int = Field(description="KV slots per replica")
    kv_mean_fraction: float
    kv_peak_fraction: float
    mean_queue_length: float
    max_queue_length: int
    preemptions: int
    # comparison with the baseline of the same deployment and requests
    speedup_tokens_per_s_per_user: float | None = None
    speedup_throughput: float | None = None
    speedup_tpot_p50: float | None = Field(default=None, description="baseline TPOT p50 / this TPOT p50")


class SkippedRun(Result):
    variant: str
    sweep_value: _Any = Field(default=None, description="the sweep field's value (None without a sweep)")
    reason: str


class MatchedPoint(Result):
    """A variant's sweep point beside the main configuration's curve at the same throughput per GPU."""

    sweep_value: _Any = Field(default=None, description="the sweep field's value (None without a sweep)")
    throughput_tokens_per_s_per_gpu: float
    tokens_per_s_per_user: float
    main_tokens_per_s_per_user: float | None = Field(
        default=None,
        description="main's per-user speed at this throughput (interpolated; None outside main's range)"
    )
    main_gain: float | None = Field(default=None, description="main / this variant per-user speed at matched throughput")


class SweepCurve(Result):
    """One variant's per-user speed vs throughput curve across the sweep (baseline included)."""

    variant: str
    throughput_at_slo_per_gpu: float | None = Field(
        default=None, description="throughput per GPU where tokens/s per user falls to the SLO's minimum (interpolated)"
    )
    slo_within_sweep: bool = Field(
        default=False,
        description="the SLO speed is crossed inside the sweep (else the figure is the sweep's edge)"
    )
    matched: list[MatchedPoint] = Field(default_factory=list)


class RunResult(Result):
    """What `dspark-sim run` writes as summary.json (and prints with --json)."""

    schema_version: int = SCHEMA_VERSION
    kind: Literal["run"] = "run"
    scenario: str
    seed: int
    hardware: str
    model: str
    sweep_path: str | None = None
    summaries: list[RunSummary]
    curves: list[SweepCurve] = Field(default_factory=list, description="per variant, when the scenario sweeps")
    skipped: list[SkippedRun] = Field(default_factory=list)


class RunTimeSeries(Result):
    """Per-interval series of one configuration (bins of SimulationSpec.time_series_interval_s)."""

    variant: str
    sweep_value: _Any = Field(default=None, description="the sweep field's value (None without a sweep)")
    interval_s: float
    t_s: list[float] = Field(description="start of each bin")
    tokens_per_s: list[float]
    verify_budget: list[float | None] = Field(
        description="mean verified draft tokens per sequence per decode step (None: no decode step in bin)"
    )
    running: list[float] = Field(description="mean sequences in the batch over the bin's steps")
    queue_length: list[float]
    kv_fraction: list[float]
    preemptions: list[int]


class RunTimeSeriesDoc(Result):
    schema_version: int = SCHEMA_VERSION
    kind: Literal["run-timeseries"] = "run-timeseries"
    scenario: str
    series: list[RunTimeSeries]


# --------------------------------------------------------------------------------------------
# `sweep` and `plan` documents (dspark_sim/studies/sweep.py, dspark_sim/studies/plan.py)
# --------------------------------------------------------------------------------------------

from typing import Any  # noqa: E402  (appended section; the module header belongs to the schema owner)

Scalar = float | int | str | bool | None


class SweepPointRecord(Result):
    """One finished sweep point: one line of DIR/points.jsonl.

    `params` maps each swept path (or group name) to its value (or label); `seed` is derived from
    them and the sweep seed, so the record does not depend on order, executor or worker count.
    """

    kind: Literal["sweep-point"] = "sweep-point"
    key: str = Field(description="stable id of the point: a hash of its sorted parameter values")
    index: int = Field(description="position in the sweep's expansion order")
    params: dict[str, Any]
    seed: int
    status: Literal["ok", "error"]
    error: str | None = None
    metrics: dict[str, Scalar] = Field(default_factory=dict, description="headline figures of the point")
    result: dict[str, Any] | None = Field(default=None, description="the full predict / run result document")
    elapsed_s: float = Field(description="wall time of the point in its worker, seconds")


class SweepPointSummary(Result):
    key: str
    index: int
    params: dict[str, Any]
    seed: int
    status: Literal["ok", "error"]
    error: str | None = None
    metrics: dict[str, Scalar] = Field(default_factory=dict)


class SweepResult(Result):
    """DIR/summary.json of `dspark-sim sweep` (the full documents stay in DIR/points.jsonl)."""

    schema_version: int = SCHEMA_VERSION
    kind: Literal["sweep"] = "sweep"
    name: str
    command: Literal["predict", "run"]
    mode: Literal["grid", "random"]
    base: str = Field(description="the base scenario file")
    seed: int
    parameters: list[str]
    total_points: int
    finished: int
    errors: int
    resumed: int = Field(description="points found finished in points.jsonl before this invocation")
    executor: str
    workers: int
    wall_s: float = Field(description="wall time of this invocation, seconds")
    points: list[SweepPointSummary]


class PlanCandidateResult(Result):
    """One (hardware, tensor parallel, speculation) candidate of a plan."""

    hardware: str
    tensor_parallel: int
    speculation: str
    speculative: bool
    feasible: bool = Field(description="some load meets the SLOs on one replica")
    reason: str | None = Field(default=None, description="why the candidate is out, when it is")
    replica_capacity: float = Field(
        description="highest sustainable load of one replica under the SLOs (requests/s or users)"
    )
    replica_capacity_tokens_per_s: float = Field(description="output tokens/s of one replica at that load")
    simulations: int = Field(description="short simulations the capacity search ran")
    search: list[dict[str, Scalar]] = Field(
        default_factory=list, description="each probe: load, slo_met, ttft_p99_s, tpot_p99_ms, tokens/s/user"
    )
    replicas: int | None = Field(default=None, description="replicas needed for the target load")
    gpus: int | None = None
    capacity: float | None = Field(
        default=None, description="highest sustainable load of the whole deployment"
    )
    usd_per_hour: float | None = None
    usd_per_million_output_tokens: float | None = Field(
        default=None, description="at the target load: price per hour / output tokens per hour"
    )
    usd_per_million_output_tokens_at_capacity: float | None = Field(
        default=None, description="if the deployment ran at its capacity"
    )
    at_capacity: dict[str, Scalar] = Field(
        default_factory=dict, description="one replica's figures at its capacity (TTFT/TPOT p99, tokens/s/user...)"
    )
    check: dict[str, Scalar] | None = Field(
        default=None, description="a full-deployment simulation at the target load, when run (plan --check)"
    )


class PlanResult(Result):
    """What `dspark-sim plan` writes (--json / -o)."""

    schema_version: int = SCHEMA_VERSION
    kind: Literal["plan"] = "plan"
    name: str
    model: str
    load_kind: Literal["requests_per_s", "concurrent_users"]
    load: float
    slo: dict[str, float | None]
    prices_usd_per_gpu_hour: dict[str, float] = Field(description="the plan file's inputs, not defaults")
    candidates: list[PlanCandidateResult]
    best: PlanCandidateResult | None = Field(default=None, description="cheapest feasible candidate overall")
    best_without_speculation: PlanCandidateResult | None = None
    best_with_speculation: PlanCandidateResult | None = None
    saving_fraction: float | None = Field(
        default=None,
        description="1 - cost of the best speculative plan / cost of the best plan without speculation"
    )
    wall_s: float
