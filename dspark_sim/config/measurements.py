"""Measurement documents: engine profiles (`profile`), their fits (`calibrate`) and validation reports.

Part of the one schema. A profile records where it was measured (device, engine version, torch) so
`calibrate` and `validate` can refuse a profile from another device or engine version.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from dspark_sim.config.schema import ModelSpec

PROFILE_SCHEMA_VERSION = 1


class Doc(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DeviceInfo(Doc):
    kind: Literal["cpu", "cuda"]
    name: str = Field(description="CPU model name or CUDA device name")
    torch_version: str
    threads: int = Field(description="torch intra-op threads (CPU) or SM count (CUDA)")
    memory_gb: float = Field(description="device memory (CUDA) or system RAM (CPU), GB")
    onchip_mb: float = Field(description="last-level cache (CPU L3) or L2 (CUDA), MB")


class PassSample(Doc):
    """Timings of one forward-pass shape, repeated."""

    role: Literal["target", "draft"]
    batch_size: int
    query_tokens: int = Field(description="new tokens per sequence in the pass")
    context_tokens: int = Field(description="tokens already cached per sequence")
    attended_tokens: int = Field(description="keys each query attends over in this engine (static-cache bucket)")
    kv_dtype: str
    times_s: list[float]
    median_s: float
    spread: float = Field(description="(p90 - p10) / median of the repeats")
    host_probe_s: list[float] | None = Field(
        default=None, description="the host-speed yardstick's time (this model's pass yardstick) at each repeat's moment, "
        "aligned with times_s (validate on a CPU; engine/host_speed.py); absent where the host was not probed")


class StepSample(Doc):
    """A whole speculative step measured inside the engine: what lies outside the two passes."""

    batch_size: int
    gamma: int = Field(description="draft tokens per step; 0 = the plain decoding loop (baseline)")
    step_s: float = Field(description="mean wall time of one engine step")
    draft_s: float = Field(description="mean time of the draft phase of a step")
    verify_s: float = Field(description="mean time of the verify phase (target pass, sampling, acceptance)")
    context_tokens: int = Field(description="mean cached tokens per sequence during the run")
    attended_tokens: int = Field(description="static cache length every query attends over")
    baseline_loop: bool = Field(default=False, description="measured with the engine's plain decoding loop")
    temperature: float = Field(default=0.0, description="sampling temperature of the run (0 = greedy)")
    policy: Literal["fixed", "dspark"] = Field(
        default="fixed", description="fixed gamma, or the DSpark prefix scheduler drafting `gamma` and verifying a prefix")
    verify_counts: dict[int, int] | None = Field(
        default=None, description="DSpark steps: how many steps verified k draft tokens in their widest sequence, by k "
        "(the padded verify pass is k + 1 tokens a sequence)")
    host_probe_s: float | None = Field(
        default=None, description="the step yardstick's time at the run's moment (as PassSample.host_probe_s)"
    )


class EngineProfile(Doc):
    schema_version: int = PROFILE_SCHEMA_VERSION
    kind: Literal["engine-profile"] = "engine-profile"
    engine_version: str
    device: DeviceInfo
    weight_dtype: str
    target: ModelSpec
    draft: ModelSpec | None = None
    samples: list[PassSample]
    steps: list[StepSample] = Field(default_factory=list)
    cuda_graphs: bool | None = Field(default=None, description="on CUDA: passes timed as CUDA-graph replays (true, as "
                                     "`validate` runs the engine) or eager calls (false, as the drafter table's "
                                     "loops run); null on a CPU and in profiles that predate the field")
    created_by: str = Field(default="", description="the command that made this profile")


class ParameterFit(Doc):
    name: str
    value: float
    unit: str
    identified: bool
    note: str = ""


class CalibrationReport(Doc):
    kind: Literal["calibration"] = "calibration"
    profile_device: str
    engine_version: str
    parameters: list[ParameterFit]
    median_abs_error_pct: float
    max_abs_error_pct: float
    points: list[dict] = Field(description="per sample: shape, measured_s, predicted_s, error_pct")
    sps_table: dict[int, float] = Field(description="verify steps per second by tokens per verify pass")


class ValidationPoint(Doc):
    """One engine configuration: predicted (simulator) vs measured (engine)."""

    label: str
    regime: str = Field(description="which group the point belongs to in the error table")
    temperature: float
    batch_size: int
    prompt_tokens: int
    new_tokens: int
    policy: str
    gamma_max: int
    rounds: int = Field(description="batches of fresh prompts measured (and simulated) per point")
    measured_tokens_per_s: float = Field(
        description="decode tokens per second of the whole batch while every sequence generates (the steady "
        "state of a server that refills its batch; plain decoding: all along), summarised over the timed "
        "repeats by the report's `estimator`")
    predicted_tokens_per_s: float
    measured_baseline_tokens_per_s: float
    predicted_baseline_tokens_per_s: float
    measured_speedup: float
    predicted_speedup: float
    measured_tau: float
    predicted_tau: float
    tokens_per_s_error_pct: float
    speedup_error_pct: float
    baseline_error_pct: float
    tau_error_pct: float | None = Field(
        default=None, description="predicted vs measured tau: the acceptance side of the tokens/s error (the held-apart "
        "prompts' traces against the measured prompts)")
    per_tau_error_pct: float | None = Field(
        default=None, description="error of tokens/s divided by tau: the timing side of the tokens/s error, acceptance "
        "factored out (1 + tok/s err = (1 + tau err)(1 + this), up to how the two tau are averaged)")
    cross_prediction: bool = Field(default=False, description="batch beyond what calibration saw")
    measured_batch_tokens_per_s: float | None = Field(
        default=None, description="speculative decode tokens per second of the whole static batch, first token to last "
        "finish: its drain tail (the unluckiest sequences stepping the full batch) included")
    predicted_batch_tokens_per_s: float | None = None
    measured_repeats_tokens_per_s: list[float] | None = Field(
        default=None,
        description="measured_tokens_per_s of each timed repeat, in time order (the figure above takes "
        "each prompt round's median over them; a wide spread says the machine changed speed)")
    measured_baseline_repeats_tokens_per_s: list[float] | None = Field(
        default=None, description="this case's own plain-decoding tokens per second in each timed repeat (the baseline "
        "above is the median over every case of its temperature, batch and prompt length)")
    measured_verified: float | None = Field(
        default=None,
        description="drafts verified per sequence-pass in the engine's run: the policy's decisions (a "
        "fixed gamma's, short of the end of a sequence; DSpark's, step by step), pooled as tau is")
    predicted_verified: float | None = Field(default=None, description="the same in the simulated run")
    measured_repeat_spread_pct: float | None = Field(
        default=None, description="(max - min) / median of the timed repeats' tokens/s: how far the machine's own speed "
        "moved between them: an error within it is within what the machine itself varied (None with fewer than two repeats)")
    measured_speedup_repeat_spread_pct: float | None = Field(
        default=None,
        description="the same for the speed-up, each repeat's speculative run over its own plain run")
    measured_median_tokens_per_s: float | None = Field(
        default=None, description="measured_tokens_per_s under the 'median' estimator (each prompt round's median over "
        "the repeats), kept whatever the report's estimator so that a re-prediction can take either")
    measured_median_baseline_tokens_per_s: float | None = Field(
        default=None, description="the same for the baseline")
    measured_host_probe_s: list[float] | None = Field(
        default=None,
        description="the host-speed yardstick at each timed repeat (as MeasuredCase.host_probe_s)")


#: How a point's timed repeats become one measured figure, and a profile's rounds one step time.
#: 'median': each prompt round's median over the repeats; the profile's median round.
#: 'best': the fastest repeat; the profile's fastest round (timeit's advice: on a machine whose
#: disturbances only ever add time, the fastest run is the machine's own speed).
#: 'probed': every timing scaled to the run's reference host speed by the yardstick timed beside it, then
#: the median (engine/host_speed.py: a shared CPU's own speed moves ~30% for minutes at a time).
Estimator = Literal["median", "best", "probed"]


class MeasuredCase(Doc):
    """One engine configuration as `validate` measured it, before any prediction."""

    temperature: float
    batch_size: int
    prompt_tokens: int
    new_tokens: int
    policy: str
    rounds: int
    cross_prediction: bool = False
    tokens_per_s: float = Field(description="as ValidationPoint.measured_tokens_per_s")
    tau: float
    batch_tokens_per_s: float
    repeats_tokens_per_s: list[float]
    baseline_tokens_per_s: float
    baseline_repeats_tokens_per_s: list[float]
    verified: float | None = Field(
        default=None, description="as ValidationPoint.measured_verified (absent from older measurement files)"
    )
    host_probe_s: list[float] | None = Field(
        default=None, description="the step yardstick's time at each timed repeat (aligned with repeats_tokens_per_s; "
        "validate on a CPU)")


class ValidationMeasurements(Doc):
    """What `validate` measured, written before it predicts: a run cut short while predicting (a slow host)
    is finished by `validate --repredict` on any machine, from this file and the profile beside it."""

    kind: Literal["validation-measurements"] = "validation-measurements"
    device: DeviceInfo
    engine_version: str
    preset: str
    quick: bool
    command: str
    acceptance_by_temperature: dict[str, list[float]]
    host_drift_pct: float | None = Field(default=None, description="as ValidationReport.host_drift_pct")
    timings_s: dict[str, float]
    sps_table: dict[int, float]
    profile_rounds: int
    estimator: Estimator = Field(default="median", description="as ValidationReport.estimator")
    host_probe_reference_s: dict[str, float] | None = Field(
        default=None, description="by yardstick kind (step, target, draft: engine/host_speed.py), the time every timing of "
        "that kind is scaled to under the 'probed' estimator: the median of the run's readings")
    host_probes: dict[str, list[tuple[float, float]]] | None = Field(
        default=None, description="the run's host-speed timeline by kind: (seconds since the first reading, yardstick s)")
    cases: list[MeasuredCase]


class ErrorSummary(Doc):
    group: str
    points: int
    median_abs_speedup_error_pct: float
    worst_abs_speedup_error_pct: float
    median_abs_tokens_per_s_error_pct: float
    worst_abs_tokens_per_s_error_pct: float
    median_abs_tau_error_pct: float | None = None
    median_abs_per_tau_error_pct: float | None = Field(default=None, description="timing side alone (see ValidationPoint)")
    median_repeat_spread_tokens_per_s_pct: float | None = Field(
        default=None, description="the measurement's own noise: per point, (max - min) / median of its timed repeats' "
        "tokens/s; the median over the group's points (None without repeats)")
    median_repeat_spread_speedup_pct: float | None = Field(
        default=None,
        description="the same for the speed-up, each repeat's speculative run over its own plain run")


class ValidationReport(Doc):
    kind: Literal["validation"] = "validation"
    device: DeviceInfo
    engine_version: str
    preset: str
    quick: bool
    tolerance_pct: float
    passed: bool
    command: str
    calibration_median_error_pct: float
    acceptance_by_temperature: dict[str, list[float]] = Field(
        description="per-position conditional acceptance measured on the held-apart prompts"
    )
    summary: list[ErrorSummary]
    points: list[ValidationPoint]
    host_drift_pct: float | None = Field(
        default=None,
        description="how much slower (+) or faster (-) a fixed reference run (plain decoding, batch 1) "
        "stepped after measuring than at the start of the run (before profiling, when it profiled): the machine's own drift, which a prediction made "
        "from the profile cannot know")
    timings_s: dict[str, float] = Field(description="wall time of each phase")
    sps_table: dict[int, float] | None = Field(
        default=None, description="the SPS(B) table the engine's DSpark policy ran with while measuring (from the first "
        "profile round), which the predictions use too; null in reports that predate the field")
    estimator: Estimator = Field(
        default="median", description="how the timed repeats and the profile rounds were summarised: 'best' (the fastest "
        "repeat and profile round; validate's default on a GPU, whose slow-downs are the host's and only add time) "
        "or 'median' (as measured), or 'probed' (the default on a CPU, whose own speed moves both ways with its "
        "neighbours: every profile and measured timing scaled to the run's reference host speed by a yardstick timed "
        "beside it, then the median)")
    host_probe_reference_s: dict[str, float] | None = Field(
        default=None, description="as ValidationMeasurements.host_probe_reference_s")
    host_probes: dict[str, list[tuple[float, float]]] | None = Field(
        default=None, description="as ValidationMeasurements.host_probes")
    profile_rounds: int = Field(default=1, description="profile rounds taken between the measurement rounds and merged "
                                "into profile.json (1: one profile before measuring, or a given one)")
