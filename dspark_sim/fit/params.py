"""The cost model's free parameters as one vector: names and units, start values, which ones a device
kind lets the fit move, and the vector written back into a HardwareProfile."""

from __future__ import annotations

import numpy as np

from dspark_sim.config.measurements import EngineProfile
from dspark_sim.config.schema import Efficiency, HardwareProfile, Overheads

#: A parameter is identified when doubling it moves the predictions by at least this much (rms, log).
IDENTIFY_THRESHOLD = 0.02

PARAMS = (
    ("memory_bandwidth_gbps", "GB/s"),
    ("onchip_bandwidth_gbps", "GB/s"),
    ("tflops", "TFLOP/s"),
    ("per_pass_us", "us"),
    ("per_layer_us", "us"),
    ("per_step_us", "us"),
    ("per_baseline_step_us", "us"),
    ("compute_memory_overlap", "fraction"),
    ("multi_token_weight_reads", "x"),
    ("per_layer_multi_token_us", "us"),
    ("per_layer_multi_query_us", "us"),
    ("per_draft_pass_us", "us"),
    ("multi_token_ramp_tokens", "tokens"),
    ("per_step_sequence_us", "us"),
    ("per_baseline_sequence_us", "us"),
)
# indices into PARAMS
I_PASS, I_LAYER, I_STEP, I_BASE_STEP = 3, 4, 5, 6
I_OVERLAP = 7  # index of the one parameter fitted as a fraction (logistic) rather than in log space
I_MULTI_READS, I_MULTI_LAYER, I_MULTI_QUERY, I_DRAFT_PASS, I_RAMP, I_STEP_SEQ, I_BASE_SEQ = 8, 9, 10, 11, 12, 13, 14


def hardware_from_params(base: HardwareProfile, x: np.ndarray, name: str, weight_dtype: str,
                         per_step_us: float | None = None) -> HardwareProfile:
    """A profile whose datasheet fields hold the fitted effective values (efficiencies 1.0).

    x = (bandwidth GB/s, on-chip GB/s, TFLOP/s, per-pass us, per-layer us[, per-step us, per-baseline-step us
    [, compute/memory overlap[, multi-token weight reads[, per-layer multi-token us]]]]).
    """
    vals = [float(v) for v in x]
    bw, onchip_bw, tflops, per_pass, per_layer = vals[:5]
    step = vals[5] if len(vals) > 5 else (per_step_us if per_step_us is not None else base.overheads.per_step_us)
    base_step = vals[6] if len(vals) > 6 else None
    overlap = min(max(vals[7], 0.0), 1.0) if len(vals) > 7 else base.compute_memory_overlap
    multi_reads = vals[8] if len(vals) > 8 else base.multi_token_weight_reads
    multi_layer = vals[9] if len(vals) > 9 else base.overheads.per_layer_multi_token_us
    multi_query = vals[10] if len(vals) > 10 else base.overheads.per_layer_multi_query_us
    draft_pass = vals[11] if len(vals) > 11 else base.overheads.per_draft_pass_us
    ramp = vals[12] if len(vals) > 12 else base.multi_token_ramp_tokens
    step_seq = vals[13] if len(vals) > 13 else base.overheads.per_step_sequence_us
    base_seq = vals[14] if len(vals) > 14 else base.overheads.per_baseline_sequence_us
    return base.model_copy(
        update={
            "name": name,
            "memory_bandwidth_gbps": bw,
            "onchip_bandwidth_gbps": onchip_bw,
            "compute_memory_overlap": overlap,
            "multi_token_weight_reads": multi_reads,
            "multi_token_ramp_tokens": ramp,
            "peak_tflops": {**{k: v for k, v in base.peak_tflops.items()}, weight_dtype: tflops},
            "efficiency": Efficiency(memory_bandwidth=1.0, compute=1.0, onchip_bandwidth=1.0,
                                     interconnect=base.efficiency.interconnect),
            "overheads": Overheads(per_pass_us=per_pass, per_layer_us=per_layer, per_step_us=step,
                                   per_baseline_step_us=base_step, per_layer_multi_token_us=multi_layer,
                                   per_layer_multi_query_us=multi_query, per_draft_pass_us=draft_pass,
                                   per_step_sequence_us=step_seq, per_baseline_sequence_us=base_seq),
        }
    )


def base_profile_for(profile: EngineProfile) -> HardwareProfile:
    """Starting point: generic figures of the device kind, with its measured memory and cache sizes."""
    d = profile.device
    dtype = profile.weight_dtype
    if d.kind == "cuda":
        start = dict(bw=3000.0, onchip=10000.0, tflops=300.0)
    else:
        start = dict(bw=20.0, onchip=200.0, tflops=0.2)
    # validated as a document: the profile's weight dtype is a plain string there, checked against DType here
    return HardwareProfile.model_validate({
        "name": f"calibrated-{d.kind}",
        "description": f"calibrated on {d.name}",
        "kind": "gpu" if d.kind == "cuda" else "cpu",
        "memory_capacity_gb": max(d.memory_gb, 1e-3),
        "memory_bandwidth_gbps": start["bw"],
        "onchip_capacity_mb": d.onchip_mb,
        "onchip_bandwidth_gbps": start["onchip"],
        "peak_tflops": {dtype: start["tflops"]},
    })


def start_params(base: HardwareProfile, dtype: str) -> np.ndarray:
    """The base profile's values of PARAMS, the rates and overheads kept clear of 0 (they are fitted in logs)."""
    x0 = np.array([
        base.memory_bandwidth_gbps, base.onchip_bandwidth_gbps, base.matmul_tflops(dtype),
        base.overheads.per_pass_us, base.overheads.per_layer_us, base.overheads.per_step_us,
        base.overheads.per_step_us, base.compute_memory_overlap, base.multi_token_weight_reads,
        base.overheads.per_layer_multi_token_us, base.overheads.per_layer_multi_query_us,
        base.overheads.per_draft_pass_us, max(base.multi_token_ramp_tokens, 1.0), base.overheads.per_step_sequence_us,
        base.overheads.per_baseline_sequence_us,
    ])
    x0[:I_OVERLAP] = np.maximum(x0[:I_OVERLAP], [1e-3, 1e-3, 1e-6, 0.1, 0.01, 0.1, 0.1])
    return x0


def free_params(gpu: bool) -> tuple[np.ndarray, np.ndarray]:
    """Which PARAMS the fit moves on this device kind, and the values of the others."""
    free = np.ones(len(PARAMS), dtype=bool)
    # what a pass of several tokens costs beyond one: a CPU GEMM packs (re-reads) the weights; a GPU
    # switches to tiled GEMM kernels with a set-up per matmul (per layer), streaming the weights once.
    # The ramp of that set-up over the first few tokens belongs to a GPU's small-M GEMM kernels: fitted on
    # this project's CPU it moved three validation runs' speed-up medians by +1.0, -0.5 and +3.3 points
    free[[I_MULTI_READS] if gpu else [I_MULTI_LAYER, I_MULTI_QUERY, I_RAMP]] = False
    # a host cost per sequence of a speculative step: on a GPU the engine's step runs as captured CUDA graphs
    # (cudagraphs.StepGraphs), and fitted on its batch <= 4 steps it put the H200's batch-64 cross-prediction
    # 22-31% slow (docs/validation.md). Likewise a plain step's cost per sequence (its next token taken):
    # fitted on a CPU, where sampling a batch-16 step's rows took 0.3 ms more than one row's; a GPU's plain
    # loop is one graph
    free[[I_STEP_SEQ, I_BASE_SEQ]] = not gpu
    x_fixed = np.where(np.arange(len(PARAMS)) == I_MULTI_READS, 1.0, 0.0)
    return free, x_fixed


def to_params(z: np.ndarray) -> np.ndarray:
    """Fit coordinates -> parameters: logs for the rates and overheads, a logit for the overlap."""
    z = np.clip(z, -30.0, 30.0)
    x = np.exp(z)
    x[I_OVERLAP] = 1.0 / (1.0 + np.exp(-z[I_OVERLAP]))
    return x


def final_params(x: np.ndarray, x0: np.ndarray, identified: np.ndarray) -> np.ndarray:
    """The fitted values where identified, else the base's (or the neutral value of a cost term)."""
    fallback = x0.copy()
    fallback[I_BASE_STEP] = x[I_STEP] if identified[I_STEP] else x0[I_BASE_STEP]
    fallback[I_MULTI_READS], fallback[I_MULTI_LAYER] = 1.0, 0.0  # a multi-token pass costs what a 1-token one does
    fallback[[I_MULTI_QUERY, I_DRAFT_PASS, I_RAMP, I_STEP_SEQ, I_BASE_SEQ]] = 0.0
    return np.where(identified, x, fallback)


def unfitted_notes(gpu: bool) -> dict[int, str]:
    """Why each parameter that may go unfitted is not identified, or not fitted on this device kind."""
    notes = {I_STEP: "the profile has no speculative step samples",
             I_BASE_STEP: "no plain-loop step samples; per_step_us applies",
             I_MULTI_READS: "not fitted on a GPU (its GEMMs stream the weights once); kept 1",
             I_MULTI_LAYER: "not fitted on a CPU (its GEMMs re-read the weights: multi_token_weight_reads); kept 0",
             I_MULTI_QUERY: "not fitted on a CPU (one attention path for any query count); kept 0",
             I_DRAFT_PASS: "the profile has speculative steps of fewer than two gammas",
             I_STEP_SEQ: "the profile has speculative steps of fewer than two batch sizes",
             I_BASE_SEQ: "the profile has plain-loop steps of fewer than two batch sizes",
             I_RAMP: "the multi-token cost reaches its full value from 2 tokens"}
    if not gpu:
        notes[I_RAMP] = "not fitted on a CPU (its weight re-reads start at 2 tokens); kept 0"
    else:
        notes[I_STEP_SEQ] = "not fitted on a GPU (the engine's steps run as captured CUDA graphs); kept 0"
        notes[I_BASE_SEQ] = "not fitted on a GPU (the engine's plain loop runs as captured CUDA graphs); kept 0"
    return notes


