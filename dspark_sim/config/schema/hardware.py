"""Hardware profiles: one accelerator's datasheet figures, achievable efficiencies and fixed overheads."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from dspark_sim.config.schema.base import DType, NonNegFloat, PositiveFloat, PositiveInt, Probability, Strict


class Efficiency(Strict):
    """Achievable fraction of each datasheet peak. The HBM and compute defaults were measured on one H200
    SXM (Nov 2026): a device-to-device copy at 4.27-4.3 TB/s (89% of 4.8) and an 8192^3 bf16 matmul at
    769-798 TFLOP/s (80% of 989); the on-chip and interconnect defaults are estimates that `calibrate`
    and `fit.interconnect` replace with fitted values."""

    memory_bandwidth: Probability = Field(
        default=0.89, description="achieved / datasheet HBM (DRAM) bandwidth"
    )
    compute: Probability = Field(
        default=0.80, description="achieved / datasheet dense FLOP/s on large matmuls"
    )
    onchip_bandwidth: Probability = Field(default=0.70, description="achieved / datasheet on-chip (SRAM/L2) bandwidth")
    interconnect: Probability = Field(default=0.75, description="achieved / datasheet interconnect bandwidth")


class Overheads(Strict):
    """Fixed costs that do not scale with bytes or FLOPs (kernel launches, Python, scheduling)."""

    per_pass_us: NonNegFloat = Field(default=20.0, description="fixed cost of one forward pass, microseconds")
    per_layer_us: NonNegFloat = Field(default=2.0, description="extra cost per transformer layer per pass, microseconds")
    per_layer_multi_token_us: NonNegFloat = Field(
        default=0.0,
        description="further cost per layer of a pass carrying more than one token, microseconds: GPU matmul "
        "libraries switch from one-row (GEMV) kernels to tiled GEMM kernels with a fixed set-up per matmul "
        "(docs/validation.md); `calibrate` fits it on GPU profiles",
    )
    per_layer_multi_query_us: NonNegFloat = Field(
        default=0.0,
        description="further cost per layer of a pass in which sequences carry more than one new token "
        "(verify blocks, a draft's catch-up), microseconds: GPU attention leaves its one-query decode kernel "
        "for the masked multi-query one; a batch of one-token sequences does not pay it "
        "(docs/validation.md); `calibrate` fits it on GPU profiles",
    )
    per_step_us: NonNegFloat = Field(
        default=50.0,
        description="engine scheduling/sampling cost per decode step (outside the passes), microseconds"
    )
    per_draft_pass_us: NonNegFloat = Field(
        default=0.0,
        description="host time of each autoregressive draft pass beyond the pass itself (taking the drafted "
        "token and its probability, the next pass's input), microseconds; `calibrate` fits it from whole steps "
        "of several gammas",
    )
    per_step_sequence_us: NonNegFloat = Field(
        default=0.0,
        description="host time of a speculative step per sequence in the batch, microseconds (each sequence's "
        "drafted tokens taken, acceptance judged, next inputs built), charged with an autoregressive draft phase; "
        "`calibrate` fits it from whole steps at several batch sizes (on this project's EPYC, 18-55 us a "
        "sequence; docs/validation.md)",
    )
    per_scheduler_step_us: NonNegFloat = Field(
        default=0.0,
        description="further cost per step under the DSpark prefix scheduler, microseconds: its search over "
        "the draft's confidences runs on the host between the draft and the verify pass; `calibrate` fits it "
        "from whole DSpark steps in the profile",
    )
    per_baseline_step_us: NonNegFloat | None = Field(
        default=None,
        description="the same for a plain (non-speculative) decoding loop, when the engine runs a leaner "
        "loop for it, microseconds; None = per_step_us",
    )
    per_baseline_sequence_us: NonNegFloat = Field(
        default=0.0,
        description="cost of a plain decoding step per sequence in the batch beyond the forward pass, "
        "microseconds (each row's next token taken: an argmax, or a softmax and a draw); `calibrate` fits it "
        "on a CPU from plain-loop steps at several batch sizes (on this project's EPYC, sampling at temperature 1 "
        "cost about 20 us a row; docs/validation.md)",
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
        default=0.0, description="device-to-device bandwidth per direction per device (NVLink/xGMI), GB/s"
    )
    interconnect_latency_us: NonNegFloat = Field(default=5.0, description="latency of one collective hop, microseconds")
    collective_launch_us: NonNegFloat = Field(
        default=0.0,
        description="fixed cost of one collective (all-reduce), microseconds, whatever the rank count: kernel "
        "launch and rank synchronisation, on top of interconnect_latency_us per ring hop (measured on 4 H200s "
        "over NCCL in CUDA graphs: a small all-reduce costs 12-14 us on 2 ranks, 17-20 us on 4); "
        "`fit.interconnect.fit_interconnect` fits it from all-reduces at two or more world sizes",
    )
    multi_token_weight_reads: PositiveFloat = Field(
        default=1.0,
        description="times a pass carrying more than one token streams the matmul weights, relative to a "
        "one-token pass: 1 on GPUs; CPU GEMM libraries pack the weight panel first (measured on this "
        "project's EPYC: a Linear costs 1.7-2.1x more at 2 rows than at 1, then stays flat to 8); "
        "`calibrate` fits it",
    )
    multi_token_ramp_tokens: NonNegFloat = Field(
        default=0.0,
        description="extra tokens over which a multi-token pass's extra cost (the weight re-reads above, a GPU's "
        "per-layer GEMM set-up) grows to its full value: a pass of t tokens pays the fraction min(1, (t - 1) / "
        "ramp) of it; 0 = all of it from 2 tokens. Small GEMMs run kernels whose time grows with the rows up to "
        "a tile's height (this project's H200: a batch-1 target pass costs 479 us at 1 token, 560 at 2, 601 at "
        "3, 627 at 5, then flat); `calibrate` fits it",
    )
    compute_memory_overlap: Probability = Field(
        default=1.0,
        description="how far a pass's compute and memory traffic overlap: 1 = its time is the larger of the "
        "two (GPU kernels stream operands while they compute), 0 = their sum (small CPU kernels mostly do one "
        "then the other); `calibrate` fits it",
    )
    max_devices_per_node: PositiveInt = Field(
        default=8, description="devices one node holds (largest TP degree)"
    )
    price_per_hour_usd: NonNegFloat | None = Field(
        default=None, description="rental price per device-hour, USD"
    )
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
