"""The one schema: every config file and every result document dspark-sim reads or writes.

Why one module: the predictor, the simulator, the engine, sweeps and dashboards all speak these types,
so a field renamed here is renamed everywhere, and `dspark-sim schema` can hand editors a JSON Schema.
Units are in every field name (`_gbps` = GB/s with GB = 1e9 bytes, `_s`, `_ms`, `_us`, `_tokens`).
Unknown keys are rejected everywhere (`extra="forbid"`): a typo in a scenario is an error, not a default.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DType = Literal["fp32", "bf16", "fp16", "fp8", "int8", "int4", "fp4"]

#: Bytes per element of each storage dtype (int4/fp4 are packed two per byte).
DTYPE_BYTES: dict[str, float] = {
    "fp32": 4.0,
    "bf16": 2.0,
    "fp16": 2.0,
    "fp8": 1.0,
    "int8": 1.0,
    "int4": 0.5,
    "fp4": 0.5,
}

Probability = Annotated[float, Field(ge=0.0, le=1.0)]
PositiveFloat = Annotated[float, Field(gt=0.0)]
NonNegFloat = Annotated[float, Field(ge=0.0)]
PositiveInt = Annotated[int, Field(gt=0)]
NonNegInt = Annotated[int, Field(ge=0)]


class Strict(BaseModel):
    """Base for every schema type: unknown keys are errors, values are checked on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# --------------------------------------------------------------------------------------------
# Hardware
# --------------------------------------------------------------------------------------------


class Efficiency(Strict):
    """Achievable fraction of each datasheet peak. Defaults are measured where FACTS.md has data."""

    memory_bandwidth: Probability = Field(0.89, description="achieved / datasheet HBM (DRAM) bandwidth")
    compute: Probability = Field(0.80, description="achieved / datasheet dense FLOP/s on large matmuls")
    onchip_bandwidth: Probability = Field(0.70, description="achieved / datasheet on-chip (SRAM/L2) bandwidth")
    interconnect: Probability = Field(0.75, description="achieved / datasheet interconnect bandwidth")


class Overheads(Strict):
    """Fixed costs that do not scale with bytes or FLOPs (kernel launches, Python, scheduling)."""

    per_pass_us: NonNegFloat = Field(20.0, description="fixed cost of one forward pass, microseconds")
    per_layer_us: NonNegFloat = Field(2.0, description="extra cost per transformer layer per pass, microseconds")
    per_layer_multi_token_us: NonNegFloat = Field(
        0.0,
        description="further cost per layer of a pass carrying more than one token, microseconds: GPU matmul "
        "libraries switch from one-row (GEMV) kernels to tiled GEMM kernels with a fixed set-up per matmul "
        "(validation/README.md section 5); `calibrate` fits it on GPU profiles",
    )
    per_layer_multi_query_us: NonNegFloat = Field(
        0.0,
        description="further cost per layer of a pass in which sequences carry more than one new token "
        "(verify blocks, a draft's catch-up), microseconds: GPU attention leaves its one-query decode kernel "
        "for the masked multi-query one; a batch of one-token sequences does not pay it "
        "(validation/README.md section 3); `calibrate` fits it on GPU profiles",
    )
    per_step_us: NonNegFloat = Field(
        50.0, description="engine scheduling/sampling cost per decode step (outside the passes), microseconds"
    )
    per_draft_pass_us: NonNegFloat = Field(
        0.0,
        description="host time of each autoregressive draft pass beyond the pass itself (taking the drafted "
        "token and its probability, the next pass's input), microseconds; `calibrate` fits it from whole steps "
        "of several gammas",
    )
    per_step_sequence_us: NonNegFloat = Field(
        0.0,
        description="host time of a speculative step per sequence in the batch, microseconds (each sequence's "
        "drafted tokens taken, acceptance judged, next inputs built), charged with an autoregressive draft phase; "
        "`calibrate` fits it from whole steps at several batch sizes (validation/README.md, session 14)",
    )
    per_scheduler_step_us: NonNegFloat = Field(
        0.0,
        description="further cost per step under the DSpark prefix scheduler, microseconds: its search over "
        "the draft's confidences runs on the host between the draft and the verify pass; `calibrate` fits it "
        "from whole DSpark steps in the profile",
    )
    per_baseline_step_us: NonNegFloat | None = Field(
        None,
        description="the same for a plain (non-speculative) decoding loop, when the engine runs a leaner "
        "loop for it, microseconds; None = per_step_us",
    )
    per_baseline_sequence_us: NonNegFloat = Field(
        0.0,
        description="cost of a plain decoding step per sequence in the batch beyond the forward pass, "
        "microseconds (each row's next token taken: an argmax, or a softmax and a draw); `calibrate` fits it "
        "on a CPU from plain-loop steps at several batch sizes (validation/README.md, session 15)",
    )


class HardwareProfile(Strict):
    """One accelerator (or CPU socket). Figures are per device; cite each source in the YAML."""

    name: str
    description: str = ""
    kind: Literal["gpu", "cpu"] = "gpu"
    memory_capacity_gb: PositiveFloat = Field(description="HBM or DRAM capacity per device, GB (1e9 bytes)")
    memory_bandwidth_gbps: PositiveFloat = Field(description="datasheet HBM/DRAM bandwidth per device, GB/s")
    onchip_capacity_mb: NonNegFloat = Field(
        description="on-chip SRAM/L2/last-level cache usable for a resident working set, MB (1e6 bytes)"
    )
    onchip_bandwidth_gbps: NonNegFloat = Field(description="aggregate on-chip (SRAM/L2) read bandwidth, GB/s")
    peak_tflops: dict[DType, PositiveFloat] = Field(
        description="dense (no sparsity) peak TFLOP/s per matmul dtype the device supports natively"
    )
    interconnect_bandwidth_gbps: NonNegFloat = Field(
        0.0, description="device-to-device bandwidth per direction per device (NVLink/xGMI), GB/s"
    )
    interconnect_latency_us: NonNegFloat = Field(5.0, description="latency of one collective hop, microseconds")
    collective_launch_us: NonNegFloat = Field(
        0.0,
        description="fixed cost of one collective (all-reduce), microseconds, whatever the rank count: kernel "
        "launch and rank synchronisation, on top of interconnect_latency_us per ring hop (measured on 4 H200s "
        "over NCCL in CUDA graphs: a small all-reduce costs 12-14 us on 2 ranks, 17-20 us on 4); "
        "`calibrate.fit_interconnect` fits it from all-reduces at two or more world sizes",
    )
    multi_token_weight_reads: PositiveFloat = Field(
        1.0,
        description="times a pass carrying more than one token streams the matmul weights, relative to a "
        "one-token pass: 1 on GPUs; CPU GEMM libraries pack the weight panel first (measured on this "
        "project's EPYC: a Linear costs 1.7-2.1x more at 2 rows than at 1, then stays flat to 8); "
        "`calibrate` fits it",
    )
    multi_token_ramp_tokens: NonNegFloat = Field(
        0.0,
        description="extra tokens over which a multi-token pass's extra cost (the weight re-reads above, a GPU's "
        "per-layer GEMM set-up) grows to its full value: a pass of t tokens pays the fraction min(1, (t - 1) / "
        "ramp) of it; 0 = all of it from 2 tokens. Small GEMMs run kernels whose time grows with the rows up to "
        "a tile's height (this project's H200: a batch-1 target pass costs 479 us at 1 token, 560 at 2, 601 at "
        "3, 627 at 5, then flat); `calibrate` fits it",
    )
    compute_memory_overlap: Probability = Field(
        1.0,
        description="how far a pass's compute and memory traffic overlap: 1 = its time is the larger of the "
        "two (GPU kernels stream operands while they compute), 0 = their sum (small CPU kernels mostly do one "
        "then the other); `calibrate` fits it",
    )
    max_devices_per_node: PositiveInt = Field(8, description="devices one node holds (largest TP degree)")
    price_per_hour_usd: NonNegFloat | None = Field(None, description="rental price per device-hour, USD")
    efficiency: Efficiency = Field(default_factory=Efficiency)
    overheads: Overheads = Field(default_factory=Overheads)

    def matmul_tflops(self, dtype: str) -> float:
        """Peak for a matmul in `dtype`, falling back to the widest supported lower-precision path."""
        for candidate in _dtype_fallbacks(dtype):
            if candidate in self.peak_tflops:
                return self.peak_tflops[candidate]
        return min(self.peak_tflops.values())


def _dtype_fallbacks(dtype: str) -> list[str]:
    """Weights stored in a dtype the device cannot multiply natively are upcast: int4 -> fp8/int8 -> bf16."""
    order = {
        "fp4": ["fp4", "fp8", "int8", "bf16", "fp16", "fp32"],
        "int4": ["int4", "int8", "fp8", "bf16", "fp16", "fp32"],
        "fp8": ["fp8", "int8", "bf16", "fp16", "fp32"],
        "int8": ["int8", "fp8", "bf16", "fp16", "fp32"],
        "bf16": ["bf16", "fp16", "fp32"],
        "fp16": ["fp16", "bf16", "fp32"],
        "fp32": ["fp32", "bf16", "fp16"],
    }
    return order[dtype]


# --------------------------------------------------------------------------------------------
# Model architecture
# --------------------------------------------------------------------------------------------


class MoESpec(Strict):
    """Mixture-of-experts FFN. Dense layers (if any) come first and use the model's `ffn_hidden_size`."""

    num_experts: PositiveInt = Field(description="routed experts per MoE layer")
    experts_per_token: PositiveInt = Field(description="routed experts each token activates (top-k)")
    num_shared_experts: NonNegInt = Field(0, description="always-active shared experts per MoE layer")
    expert_ffn_hidden_size: PositiveInt = Field(description="intermediate size of one expert")
    first_dense_layers: NonNegInt = Field(0, description="leading layers with a dense FFN instead of MoE")

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
        None, description="window of sliding-window attention layers, tokens (None = full attention)"
    )
    sliding_window_layers: NonNegInt = Field(
        0, description="how many layers use the sliding window (the rest attend to the full context)"
    )
    kv_compression_ratio: Annotated[float, Field(ge=1.0)] = Field(
        1.0, description="sequence-wise KV compression of full-attention layers (DeepSeek-V4-style), x"
    )
    weight_dtype: DType = "bf16"
    kv_dtype: DType = "bf16"
    activation_dtype: DType = "bf16"
    source: str = Field("", description="where the architecture figures come from")

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


# --------------------------------------------------------------------------------------------
# Drafters
# --------------------------------------------------------------------------------------------

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
    model: ModelSpec | None = Field(None, description="the draft model (kind draft_model only)")
    num_layers: PositiveInt = Field(1, description="layers of a head-style drafter (eagle/mtp/parallel/dspark)")
    draft_vocab_size: PositiveInt | None = Field(
        None, description="reduced draft vocabulary (EAGLE-3 uses 32k); None = the target's"
    )
    moe_layers: bool = Field(
        False, description="head layers use the target's MoE FFN (DeepSeek MTP, DSpark on V4); else dense"
    )
    markov_rank: PositiveInt = Field(256, description="rank of DSpark's Markov head")
    sliding_window_tokens: PositiveInt | None = Field(
        None, description="drafter attends only to the last N tokens (DSpark on V4: 128)"
    )
    weight_dtype: DType | None = Field(None, description="drafter weights dtype; None = the target's")
    kv_dtype: DType | None = Field(None, description="drafter KV dtype (e.g. int4 for an SRAM-resident cache)")
    kv_onchip: bool = Field(
        False, description="keep the drafter KV cache in on-chip SRAM/L2 when it fits (the press claim)"
    )
    weights_onchip: bool = Field(False, description="keep drafter weights on chip when they fit")
    replicated: bool = Field(
        False, description="under tensor parallelism every GPU holds the whole drafter and drafts locally "
        "(no collectives; each GPU reads all its weights), as a deployment keeps a small draft; "
        "false: sharded over the target's GPUs"
    )
    lookup_us: NonNegFloat = Field(30.0, description="n-gram lookup cost per step, microseconds")
    first_pass_tokens: PositiveFloat | None = Field(
        None,
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


# --------------------------------------------------------------------------------------------
# Acceptance models
# --------------------------------------------------------------------------------------------


class IIDAcceptance(Strict):
    """Each draft token accepted independently with probability `alpha` (Leviathan et al.)."""

    kind: Literal["iid"] = "iid"
    alpha: Probability


class PerPositionAcceptance(Strict):
    """Conditional acceptance by draft position: conditional[k-1] = P(token k accepted | tokens < k were).

    Positions past the end of the list repeat its last value (DSpark paper Fig. 2 shapes).
    """

    kind: Literal["per_position"] = "per_position"
    conditional: list[Probability] = Field(min_length=1)


class HistogramAcceptance(Strict):
    """Empirical distribution of accepted draft tokens per step when drafting without limit.

    probabilities[j] = P(j draft tokens would be accepted); the last bin means "that many or more".
    """

    kind: Literal["histogram"] = "histogram"
    probabilities: list[NonNegFloat] = Field(min_length=2)

    @field_validator("probabilities")
    @classmethod
    def _sums_to_one(cls, v: list[float]) -> list[float]:
        total = sum(v)
        if not 0.999 <= total <= 1.001:
            raise ValueError(f"probabilities must sum to 1 (they sum to {total:.4f})")
        return v


class TraceAcceptance(Strict):
    """Recorded per-step acceptance (SpecDecode-Bench JSONL or the engine's trace format).

    `field` names the per-request list of yields (accepted + 1) indexed by output position.
    """

    kind: Literal["trace"] = "trace"
    path: str = Field(description="JSONL file, relative to the scenario file's folder or absolute")
    field: str = Field("accept_len_eagle", description="per-request list of step yields (accepted + 1)")
    confidence_field: str | None = Field(
        None,
        description="per-request list, by output position, of the drafter's confidence in its token there; "
        "replayed as the drafter's confidence c_k (else the request's empirical acceptance is used)",
    )
    probability_field: str | None = Field(
        None,
        description="per-request list, by output position, of the probability that the draft token there is "
        "accepted (the engine's traces: alpha = sum min(p, q)); each simulated step then draws acceptance from "
        "these instead of replaying `field`, one recorded draw (greedy traces: the same, alpha being 0 or 1)",
    )
    max_requests: PositiveInt | None = None
    records: Literal["random", "in_order"] = Field(
        "random",
        description="which record each request replays: one drawn at random (a sample of the traffic), or, "
        "in_order, record (first_record + i) mod n for request i, so that n requests replay every record "
        "once (no sampling noise where a run is compared with a mean over known prompts, as in validate)",
    )
    first_record: NonNegInt = Field(0, description="in_order: the record request 0 replays")
    chains_by: Literal["position", "step"] = Field(
        "position",
        description="how chains (a list of values per entry, one per draft token) in confidence_field and "
        "probability_field are indexed: by the output position a step starts at (the engine's chain_* fields, "
        "drafted along the target's own tokens), or by the request's step number (the engine's step_* fields, "
        "recorded step by step from a live speculative run, wrapping around when a request takes more steps)",
    )


class PerRequestAcceptance(Strict):
    """Each request draws its own i.i.d. alpha from Beta(mean, concentration): traffic is heterogeneous."""

    kind: Literal["per_request"] = "per_request"
    mean_alpha: Probability
    concentration: PositiveFloat = Field(20.0, description="Beta a + b; larger = less spread between requests")
    decay_per_position: Annotated[float, Field(ge=0.0, le=1.0)] = Field(
        0.0, description="conditional acceptance shrinks by this fraction per later draft position"
    )


AcceptanceModel = Annotated[
    IIDAcceptance | PerPositionAcceptance | HistogramAcceptance | TraceAcceptance | PerRequestAcceptance,
    Field(discriminator="kind"),
]


# --------------------------------------------------------------------------------------------
# Speculation policies (shared by the simulator and the engine; see dspark_sim/core/policies.py)
# --------------------------------------------------------------------------------------------


class NoSpeculation(Strict):
    kind: Literal["none"] = "none"


class FixedGamma(Strict):
    kind: Literal["fixed"] = "fixed"
    gamma: NonNegInt = Field(description="draft tokens proposed and verified every step")


class BatchTableGamma(Strict):
    """vLLM-style: gamma looked up from the current batch size. Keys are batch-size upper bounds."""

    kind: Literal["batch_table"] = "batch_table"
    table: dict[PositiveInt, NonNegInt] = Field(description="{max batch size: gamma}; larger batches use 0")


class GoodputPolicy(Strict):
    """SmartSpec-style: pick the gamma maximising batch goodput (expected tokens / step time)."""

    kind: Literal["goodput"] = "goodput"
    gamma_max: PositiveInt = 8


class ConfidenceThreshold(Strict):
    """Verify a sequence's draft tokens while the drafter's confidence of each stays above `threshold`."""

    kind: Literal["confidence_threshold"] = "confidence_threshold"
    gamma_max: PositiveInt = 8
    threshold: Probability = 0.5
    on: Literal["conditional", "survival"] = Field(
        "survival", description="compare the threshold with c_k or with the prefix survival a_k"
    )


class DSparkScheduler(Strict):
    """DSpark's hardware-aware prefix scheduler (paper Algorithm 1).

    Candidates (sequence, position k) are admitted in descending prefix survival a_k while the
    expected tokens per second tau(B) * SPS(B) improves; the search stops at the first drop.
    """

    kind: Literal["dspark"] = "dspark"
    gamma_max: PositiveInt = 5
    confidence_lag_steps: NonNegInt = Field(
        0, description="use confidences from this many steps earlier (production: 2, asynchronous search)"
    )
    sps_source: Literal["costmodel", "table"] = "costmodel"
    sps_table: dict[PositiveInt, PositiveFloat] | None = Field(
        None, description="profiled {tokens per verify pass: verify steps per second}; linear interpolation"
    )
    calibration_error: NonNegFloat = Field(
        0.0, description="std of the logit-space noise on simulated confidences (0 = perfectly calibrated)"
    )
    min_verify_tokens: NonNegInt = Field(0, description="always verify at least this many draft tokens")


class FeedbackController(Strict):
    """The seed's "dynamic threshold": scale draft aggressiveness with utilisation and latency."""

    kind: Literal["feedback"] = "feedback"
    gamma_max: PositiveInt = 6
    initial_threshold: Probability = 0.4
    target_utilisation: Probability = Field(0.8, description="batch tokens / max batched tokens to aim for")
    target_tpot_ms: PositiveFloat | None = None
    gain: PositiveFloat = Field(0.05, description="threshold change per step per unit of error")


PolicySpec = Annotated[
    NoSpeculation | FixedGamma | BatchTableGamma | GoodputPolicy | ConfidenceThreshold | DSparkScheduler
    | FeedbackController,
    Field(discriminator="kind"),
]


# --------------------------------------------------------------------------------------------
# Workloads
# --------------------------------------------------------------------------------------------


class FixedLength(Strict):
    kind: Literal["fixed"] = "fixed"
    tokens: PositiveInt


class UniformLength(Strict):
    kind: Literal["uniform"] = "uniform"
    min_tokens: PositiveInt
    max_tokens: PositiveInt

    @model_validator(mode="after")
    def _order(self) -> UniformLength:
        if self.max_tokens < self.min_tokens:
            raise ValueError("max_tokens must be >= min_tokens")
        return self


class LognormalLength(Strict):
    kind: Literal["lognormal"] = "lognormal"
    median_tokens: PositiveFloat
    sigma: PositiveFloat = Field(description="std of log(length)")
    min_tokens: PositiveInt = 1
    max_tokens: PositiveInt = 131072


class EmpiricalLength(Strict):
    kind: Literal["empirical"] = "empirical"
    values: list[PositiveInt] = Field(min_length=1, description="lengths sampled uniformly with replacement")


LengthDist = Annotated[
    FixedLength | UniformLength | LognormalLength | EmpiricalLength, Field(discriminator="kind")
]


class PoissonArrivals(Strict):
    kind: Literal["poisson"] = "poisson"
    rate_per_s: PositiveFloat


class GammaArrivals(Strict):
    kind: Literal["gamma"] = "gamma"
    rate_per_s: PositiveFloat
    cv: PositiveFloat = Field(description="coefficient of variation of inter-arrival times (1 = Poisson)")


class ConstantArrivals(Strict):
    kind: Literal["constant"] = "constant"
    rate_per_s: PositiveFloat


class ClosedLoopArrivals(Strict):
    """N users; each sends its next request `think_time_s` after its previous one ends."""

    kind: Literal["closed_loop"] = "closed_loop"
    concurrency: PositiveInt
    think_time_s: NonNegFloat = 0.0


class TraceArrivals(Strict):
    """Replay arrival times and lengths (and optionally per-step acceptance) from JSONL or CSV."""

    kind: Literal["trace"] = "trace"
    path: str
    time_scale: PositiveFloat = Field(1.0, description="multiply recorded inter-arrival times by this")


ArrivalSpec = Annotated[
    PoissonArrivals | GammaArrivals | ConstantArrivals | ClosedLoopArrivals | TraceArrivals,
    Field(discriminator="kind"),
]


class Domain(Strict):
    """One slice of traffic (math, code, chat) with its own lengths and acceptance."""

    name: str
    weight: PositiveFloat = 1.0
    prompt_tokens: LengthDist | None = None
    output_tokens: LengthDist | None = None
    acceptance: AcceptanceModel | None = None


class WorkloadSpec(Strict):
    arrivals: ArrivalSpec = Field(default_factory=lambda: PoissonArrivals(rate_per_s=1.0))
    num_requests: PositiveInt = 1000
    prompt_tokens: LengthDist = Field(default_factory=lambda: FixedLength(tokens=512))
    output_tokens: LengthDist = Field(default_factory=lambda: FixedLength(tokens=256))
    domains: list[Domain] = Field(default_factory=list, description="mixture of traffic slices (optional)")
    warmup_requests: NonNegInt = Field(0, description="first N finished requests left out of the metrics")
    lengths_from_trace: bool = Field(
        False,
        description="requests replaying an acceptance trace (acceptance kind trace) take that record's prompt "
        "and output lengths, record i for request i (in file order from the trace's first_record, wrapping)",
    )


# --------------------------------------------------------------------------------------------
# Deployment, SLOs, scenario
# --------------------------------------------------------------------------------------------


class DeploymentSpec(Strict):
    hardware: HardwareProfile
    model: ModelSpec
    drafter: DrafterSpec = Field(default_factory=DrafterSpec)
    tensor_parallel: PositiveInt = 1
    replicas: PositiveInt = 1
    max_batch_size: PositiveInt = Field(256, description="most sequences decoding at once per replica")
    max_batched_tokens: PositiveInt = Field(8192, description="most tokens (prefill + verify) in one pass")
    prefill_chunk_tokens: PositiveInt = Field(2048, description="chunked prefill: most prompt tokens per pass")
    kv_block_tokens: PositiveInt = Field(16, description="paged KV block size, tokens")
    memory_utilisation: Annotated[float, Field(gt=0.0, le=1.0)] = Field(
        0.9, description="fraction of device memory the engine may use (vLLM's gpu_memory_utilization)"
    )
    activation_reserve_gb: NonNegFloat = Field(2.0, description="memory kept for activations per device, GB")
    verify_padding: Literal["ragged", "pad_to_max"] = Field(
        "ragged",
        description="ragged: each sequence verifies its own length (vLLM); pad_to_max: every sequence "
        "is padded to the batch's longest verify block (the bundled engine, gpt-fast)",
    )
    batching: Literal["continuous", "static"] = Field(
        "continuous",
        description="continuous: finished sequences leave the batch at once and waiting ones join (vLLM, "
        "SGLang); static: a batch runs until its last sequence finishes, finished rows still ride along in "
        "every pass, and new requests wait for the next batch (the bundled engine, gpt-fast)",
    )
    static_kv_cache_tokens: PositiveInt | None = Field(
        None,
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
    max_simulated_s: PositiveFloat | None = Field(None, description="stop the simulated clock here, seconds")
    time_series_interval_s: PositiveFloat = Field(1.0, description="sampling interval of time series, s")
    per_request_output: Literal["jsonl", "csv", "none"] = "jsonl"
    simulate_baseline: bool = Field(True, description="also simulate no speculation on the same requests")
    warmup_s: NonNegFloat = Field(
        0.0, description="requests arriving before this simulated time are left out of the metrics, and "
        "throughput is measured from here (closed-loop ramp-up)"
    )
    disaggregated_prefill: bool = Field(
        False, description="prefill runs on other machines (prefill/decode disaggregation, as DeepSeek serves): "
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


# --------------------------------------------------------------------------------------------
# Sweeps (`dspark-sim sweep`) and capacity plans (`dspark-sim plan`)
# --------------------------------------------------------------------------------------------


class ParameterRange(Strict):
    """A numeric range for one swept field.

    Random mode draws from it (log-uniformly when `log`); grid mode takes `num` evenly spaced values
    (geometrically spaced when `log`). `integer` rounds every value to a whole number.
    """

    min: float
    max: float
    log: bool = Field(False, description="sample / space on a log scale (min must be > 0)")
    integer: bool = Field(False, description="round values to whole numbers (duplicates are dropped)")
    num: PositiveInt | None = Field(None, description="grid mode: how many values to take from the range")

    @model_validator(mode="after")
    def _check(self) -> ParameterRange:
        if self.max < self.min:
            raise ValueError("max must be >= min")
        if self.log and self.min <= 0:
            raise ValueError("a log range needs min > 0")
        return self


SweepValues = Annotated[list[Any], Field(min_length=1)]


class SweepSpec(Strict):
    """A sweep file: many points, each the base scenario with some fields set, for `predict` or `run`.

    `parameters` maps a `--set` path (e.g. `workload.arrivals.concurrency`, `acceptance.alpha`,
    `deployment.hardware`) to a list of values or a range. `groups` are dimensions whose values set
    several fields together, e.g. a policy with its drafter: `{speculation: {mtp1: {policy: ...,
    deployment.drafter: ...}, dspark: {...}}}`. Grid mode takes every combination; random mode draws
    `samples` points (lists uniformly, ranges uniformly or log-uniformly).
    """

    name: str
    description: str = ""
    base: str = Field(description="the base scenario YAML, relative to the sweep file's folder (or absolute)")
    set: list[str] = Field(default_factory=list, description="`--set`-style overrides applied to every point")
    command: Literal["predict", "run"] = "predict"
    mode: Literal["grid", "random"] = "grid"
    samples: PositiveInt | None = Field(None, description="random mode: how many points to draw")
    seed: NonNegInt = Field(0, description="drives random sampling and, with each point's values, its seed")
    parameters: dict[str, SweepValues | ParameterRange] = Field(
        default_factory=dict, description="{--set path: list of values | {min, max, log, integer, num}}"
    )
    groups: dict[str, dict[str, dict[str, Any]]] = Field(
        default_factory=dict, description="{dimension: {label: {--set path: value, ...}}}: fields set together"
    )
    seed_from: list[str] | None = Field(
        None,
        description="parameters/groups that feed each point's seed (None = all). [] gives every point the "
        "same seed: common random numbers across the sweep (e.g. policies compared on the same requests)",
    )

    @field_validator("parameters", mode="before")
    @classmethod
    def _values_or_range(cls, v: Any) -> Any:
        """One clear message per bad entry (a plain union would report both alternatives)."""
        from pydantic import ValidationError

        if not isinstance(v, dict):
            return v
        out: dict[str, Any] = {}
        for path, spec in v.items():
            if isinstance(spec, list):
                if not spec:
                    raise ValueError(f"{path!r}: the list of values is empty")
                out[path] = spec
            elif isinstance(spec, dict):
                try:
                    out[path] = ParameterRange.model_validate(spec)
                except ValidationError as exc:
                    err = exc.errors()[0]
                    where = ".".join(str(x) for x in err.get("loc", ()))
                    msg = err.get("msg", "invalid").removeprefix("Value error, ")
                    raise ValueError(f"{path!r}: {where + ': ' if where else ''}{msg}") from None
            else:
                raise ValueError(f"{path!r}: expected a list of values or {{min, max, log, integer, num}}, "
                                 f"got {spec!r}")
        return out

    @model_validator(mode="after")
    def _check(self) -> SweepSpec:
        if not self.parameters and not self.groups:
            raise ValueError("a sweep needs at least one entry in 'parameters' or 'groups'")
        clash = set(self.parameters) & set(self.groups)
        if clash:
            raise ValueError(f"names used both as parameter and group: {sorted(clash)}")
        if self.mode == "random" and self.samples is None:
            raise ValueError("mode 'random' needs 'samples'")
        if self.mode == "grid":
            for path, spec in self.parameters.items():
                if isinstance(spec, ParameterRange) and spec.num is None:
                    raise ValueError(f"parameter {path!r}: a range in grid mode needs 'num' (how many values)")
        for name, labels in self.groups.items():
            if not labels:
                raise ValueError(f"group {name!r} has no labels")
        if self.seed_from is not None:
            unknown = set(self.seed_from) - set(self.parameters) - set(self.groups)
            if unknown:
                raise ValueError(f"seed_from names unknown parameters: {sorted(unknown)}")
        return self


class PlanLoad(Strict):
    """The target load: an open-loop request rate, or a number of closed-loop users."""

    requests_per_s: PositiveFloat | None = Field(None, description="Poisson arrivals at this rate")
    concurrent_users: PositiveInt | None = Field(None, description="closed-loop users (each waits for its answer)")
    think_time_s: NonNegFloat = Field(0.0, description="closed loop: pause between a user's requests")
    headroom: NonNegFloat = Field(
        0.0, description="plan replicas for (1 + headroom) x the load: bursts, and the noise of short simulations"
    )

    @model_validator(mode="after")
    def _one(self) -> PlanLoad:
        if (self.requests_per_s is None) == (self.concurrent_users is None):
            raise ValueError("give exactly one of requests_per_s and concurrent_users")
        return self


class PlanSpeculation(Strict):
    """One way to serve: a drafter and a policy (raw scenario fragments, preset names allowed)."""

    name: str
    drafter: dict[str, Any] = Field(default_factory=lambda: {"kind": "none"})
    policy: dict[str, Any] = Field(default_factory=lambda: {"kind": "none"})
    set: list[str] = Field(default_factory=list, description="extra `--set` overrides for this option")


class PlanCandidates(Strict):
    hardware: list[str] = Field(min_length=1, description="hardware profile names to consider")
    tensor_parallel: list[PositiveInt] = Field(default_factory=lambda: [1])
    max_replicas: PositiveInt = Field(64, description="do not consider deployments with more replicas")
    speculation: list[PlanSpeculation] = Field(min_length=1)
    add_no_speculation: bool = Field(
        True, description="also plan each hardware x TP without speculation (the comparison baseline)"
    )


class PlanSearch(Strict):
    """How each candidate's capacity is found: short simulations, bisection on the load (Vidur-style)."""

    num_requests: PositiveInt = Field(200, description="requests per short simulation (at least)")
    warmup_requests: NonNegInt = Field(20, description="first finished requests left out of the latencies (at least)")
    steady_state_factor: PositiveFloat = Field(
        4.0,
        description="each probe runs this many request lifetimes (output tokens x the SLO's TPOT) of arrivals "
        "past a ramp-up of 1.5 lifetimes that is left out of the metrics, so the batch is measured at the "
        "steady state of its load (a short run at a high rate would end before the batch fills up)",
    )
    max_requests: PositiveInt = Field(5000, description="cap on the requests of one probe")
    max_simulated_s: PositiveFloat | None = Field(None, description="stop each short simulation here")
    tolerance: Annotated[float, Field(gt=0.0, lt=1.0)] = Field(
        0.05, description="stop bisecting when (high - low) / high is below this"
    )
    max_simulations: PositiveInt = Field(12, description="most simulations per candidate")


class PlanSpec(Strict):
    """A capacity plan: the cheapest deployment meeting the SLOs at the target load.

    `gpu_price_usd_per_hour` is an INPUT: dspark-sim carries no price data; state what you pay.
    """

    name: str
    description: str = ""
    base: str = Field(description="scenario YAML (model, acceptance, lengths), relative to the plan file")
    set: list[str] = Field(default_factory=list, description="`--set` overrides applied to the base first")
    load: PlanLoad
    slo: SLOSpec
    gpu_price_usd_per_hour: dict[str, PositiveFloat] = Field(
        description="your price of one GPU-hour for each candidate hardware name (an input, not a default)"
    )
    candidates: PlanCandidates
    search: PlanSearch = Field(default_factory=PlanSearch)
    seed: NonNegInt = 0

    @model_validator(mode="after")
    def _check(self) -> PlanSpec:
        missing = [h for h in self.candidates.hardware if h not in self.gpu_price_usd_per_hour]
        if missing:
            raise ValueError(f"gpu_price_usd_per_hour has no price for {missing} (prices are inputs)")
        if not any(v is not None for v in self.slo.model_dump().values()):
            raise ValueError("slo: give at least one of ttft_p99_s, tpot_p99_ms, min_tokens_per_s_per_user")
        return self
