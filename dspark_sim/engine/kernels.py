"""Triton kernels for one-token decode passes on a GPU: a one-row matmul (GEMV), the same with SwiGLU
fused into it, and a decode attention that reads only the live part of each sequence's cache.

Why: a batch-1 decode step is weight streaming. Profiled on an H200 (validation/engine/h200_engine_*.json), the
compiled step's matmuls ran at 3.15 TB/s (74% of the copy bandwidth; inductor's tuned variants of one
matmul ranged 2.6-4.3 TB/s) and attention over the static cache, with its K/V head copies, took 0.5 ms of
a 5.4 ms 8B step. Here a GEMV streams each weight row-block once per program, the gate/up GEMV emits
silu(gate) * up directly (the down projection then reads a materialised activation), and attention is
one kernel per (sequence, K/V head) that loops over keys 0..position only and handles GQA in-kernel.

The kernels are plain `@triton.jit` functions called from Python, which torch.compile traces and CUDA
graphs capture. Triton ships with CUDA builds of torch; on a CPU the tests run them in Triton's
interpreter (TRITON_INTERPRET=1). `available()` says whether they can run here.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

try:  # optional: CUDA torch ships triton; the CPU wheel does not
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised on machines without triton
    triton = None
    tl = None


def available(device: torch.device | str) -> bool:
    """True when the kernels can run on `device`: triton present and a CUDA device, or the interpreter."""
    if triton is None:
        return False
    if torch.device(device).type == "cuda":
        return True
    return os.environ.get("TRITON_INTERPRET") == "1"


@dataclass(frozen=True)
class GemvConfig:
    """Tile of one GEMV program: block_n weight rows, block_k columns per loop iteration."""

    block_n: int = 8
    block_k: int = 512
    num_warps: int = 4
    num_stages: int = 3

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


DEFAULT_GEMV = GemvConfig()

#: Candidates `tune_gemv` times per weight shape (block_n x block_k from 1k to 8k elements per iteration).
#: On an H200 the narrowest tiles won (block_n 1-2, block_k 1024-2048), as `tune_gemv` measured them there.
GEMV_CANDIDATES: tuple[GemvConfig, ...] = tuple(
    GemvConfig(bn, bk, w, s)
    for bn in (1, 2, 4, 8, 16)
    for bk in (256, 512, 1024, 2048)
    if 1024 <= bn * bk <= 8192
    for w in (4, 8)
    for s in (2, 4)
)


if triton is not None:

    @triton.jit
    def _gemv_kernel(w_ptr, x_ptr, y_ptr, N, K, stride_wn, HALF,
                     BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SWIGLU: tl.constexpr):
        """y[n] = sum_k w[n, k] * x[k] for BLOCK_N rows; SWIGLU: y[n] = silu(w[n] . x) * (w[HALF + n] . x)."""
        pid = tl.program_id(0)
        rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok = rows < N
        cols0 = tl.arange(0, BLOCK_K)
        acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
        acc_up = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            cols = k0 + cols0
            col_ok = cols < K
            x = tl.load(x_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
            m = row_ok[:, None] & col_ok[None, :]
            w = tl.load(w_ptr + rows[:, None] * stride_wn + cols[None, :], mask=m, other=0.0,
                        eviction_policy="evict_first")
            acc += w.to(tl.float32) * x[None, :]
            if SWIGLU:
                wu = tl.load(w_ptr + (rows[:, None] + HALF) * stride_wn + cols[None, :], mask=m, other=0.0,
                             eviction_policy="evict_first")
                acc_up += wu.to(tl.float32) * x[None, :]
        y = tl.sum(acc, axis=1)
        if SWIGLU:
            y = y / (1.0 + tl.exp(-y)) * tl.sum(acc_up, axis=1)
        tl.store(y_ptr + rows, y.to(y_ptr.dtype.element_ty), mask=row_ok)

    @triton.jit
    def _decode_attention_kernel(q_ptr, k_ptr, v_ptr, len_ptr, o_ptr, scale,
                                 sq_b, sq_h, sk_b, sk_h, sk_s, sv_b, sv_h, sv_s, so_b, so_h,
                                 REP: tl.constexpr, ROWS: tl.constexpr, D: tl.constexpr, D_P2: tl.constexpr,
                                 BLOCK_S: tl.constexpr, PRECISION: tl.constexpr):
        """One program per (sequence, K/V head): its REP query heads (padded to ROWS >= 16 rows, the
        smallest tensor-core tile) against keys 0..length-1, online softmax in fp32 over blocks of
        BLOCK_S keys (flash-attention's recurrence). PRECISION "ieee": exact dots for fp32 inputs (the
        default "tf32" rounds them; half-precision inputs are exact either way)."""
        b = tl.program_id(0)
        g = tl.program_id(1)
        r = tl.arange(0, ROWS)
        r_ok = r < REP
        d = tl.arange(0, D_P2)
        d_ok = d < D
        heads = g * REP + r
        q = tl.load(q_ptr + b * sq_b + heads[:, None] * sq_h + d[None, :], mask=r_ok[:, None] & d_ok[None, :],
                    other=0.0)
        length = tl.load(len_ptr + b)
        m_i = tl.full((ROWS,), float("-inf"), dtype=tl.float32)
        l_i = tl.zeros((ROWS,), dtype=tl.float32)
        acc = tl.zeros((ROWS, D_P2), dtype=tl.float32)
        s0 = tl.arange(0, BLOCK_S)
        for start in range(0, length, BLOCK_S):
            s = start + s0
            s_ok = s < length
            kv_ok = s_ok[:, None] & d_ok[None, :]
            k = tl.load(k_ptr + b * sk_b + g * sk_h + s[:, None] * sk_s + d[None, :], mask=kv_ok, other=0.0)
            scores = tl.dot(q, tl.trans(k), input_precision=PRECISION)
            scores = scores.to(tl.float32) * scale
            scores = tl.where(s_ok[None, :], scores, float("-inf")).to(tl.float32)
            m_new = tl.maximum(m_i, tl.max(scores, axis=1))
            alpha = tl.exp(m_i - m_new)
            p = tl.exp(scores - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, axis=1)
            v = tl.load(v_ptr + b * sv_b + g * sv_h + s[:, None] * sv_s + d[None, :], mask=kv_ok, other=0.0)
            pv = tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
            acc = acc * alpha[:, None] + pv
            m_i = m_new
        out = acc / l_i[:, None]
        tl.store(o_ptr + b * so_b + heads[:, None] * so_h + d[None, :], out.to(o_ptr.dtype.element_ty),
                 mask=r_ok[:, None] & d_ok[None, :])


def gemv(x: Tensor, weight: Tensor, config: GemvConfig = DEFAULT_GEMV, *, swiglu: bool = False) -> Tensor:
    """x @ weight.T for an x of one row ([..., K], leading dims of size 1); weight [N, K], row-major.

    swiglu: weight is the fused [gate; up] matrix [2H, K] and the result is silu(x @ gate.T) * (x @ up.T),
    [..., H]. Accumulates in fp32, returns x's dtype.
    """
    n_rows, k = weight.shape
    if x.shape[-1] != k or x.numel() != k:
        raise ValueError(f"gemv takes one row of {k} values, got shape {tuple(x.shape)}")
    if weight.stride(1) != 1:
        raise ValueError("gemv needs a weight with contiguous rows")
    n_out = n_rows // 2 if swiglu else n_rows
    xr = x.reshape(k)
    if xr.stride(0) != 1:
        xr = xr.contiguous()
    y = torch.empty(n_out, device=x.device, dtype=x.dtype)
    grid = (triton.cdiv(n_out, config.block_n),)
    _gemv_kernel[grid](weight, xr, y, n_out, k, weight.stride(0), n_out,
                       BLOCK_N=config.block_n, BLOCK_K=config.block_k, SWIGLU=swiglu,
                       num_warps=config.num_warps, num_stages=config.num_stages)
    return y.view(*x.shape[:-1], n_out)


def decode_attention(q: Tensor, k: Tensor, v: Tensor, lengths: Tensor, block_s: int = 64) -> Tensor:
    # block_s >= 16: the kernel's dots run on tensor cores, whose smallest tile is 16
    """Attention of one query per sequence over its first lengths[b] cached keys.

    q [B, H, 1, D]; k, v [B', Hkv, S, D] with B' >= B (the static cache; rows past B unused); lengths [B]
    (int) = query position + 1. Query head h reads K/V head h // (H / Hkv). Returns [B, H, 1, D].
    """
    b, h, t, d = q.shape
    hkv = k.shape[1]
    if t != 1:
        raise ValueError(f"decode_attention takes one query per sequence, got {t}")
    rep = h // hkv
    out = torch.empty_like(q)
    for tensor in (q, k, v):
        if tensor.stride(-1) != 1:
            raise ValueError("decode_attention needs contiguous head dims")
    _decode_attention_kernel[(b, hkv)](
        q, k, v, lengths, out, 1.0 / math.sqrt(d),
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2),
        out.stride(0), out.stride(1),
        REP=rep, ROWS=max(16, triton.next_power_of_2(rep)), D=d, D_P2=max(16, triton.next_power_of_2(d)),
        BLOCK_S=max(16, block_s), PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        num_warps=4,
    )
    return out


def _time_ms(fn: Any, reps: int) -> float:
    """Mean milliseconds of fn(i), i = 0..reps-1, replayed as one CUDA graph: a Python launch costs more
    than a small GEMV, so timing launches from Python would time the host, not the kernel."""
    for i in range(2):  # compile and warm up outside the capture
        fn(i)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(reps):
            fn(i)
    graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps


def copy_bandwidth_gbps(device: str, n: int = 1 << 29) -> float:
    """GB/s of a device-to-device copy of n bf16 values, bytes read + written, best of 10: the streaming
    ceiling a decode step (and the GEMV) is judged against."""
    a = torch.empty(n, dtype=torch.bfloat16, device=device).normal_()
    b = torch.empty_like(a)
    b.copy_(a)
    best = float("inf")
    for _ in range(10):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        b.copy_(a)
        end.record()
        end.synchronize()
        best = min(best, start.elapsed_time(end) / 1e3)
    del a, b
    torch.cuda.empty_cache()
    return 2 * n * 2 / best / 1e9


#: Bytes of distinct weights a tuning run cycles through: well above an H200's 60 MB L2, so a small
#: weight is timed streaming from memory, as in a decode step, not cached.
_STREAM_BYTES = 512 << 20


def _tune_one(n: int, k: int, swiglu: bool, device: str, dtype: torch.dtype, candidates: tuple[GemvConfig, ...],
              reps: int) -> dict[str, Any]:
    probe = torch.empty(0, dtype=dtype)
    nbytes = n * k * probe.element_size()
    copies = max(1, -(-_STREAM_BYTES // nbytes))
    ws = [torch.randn(n, k, device=device, dtype=dtype) for _ in range(copies)]
    x = torch.randn(1, k, device=device, dtype=dtype)
    timed = [(_time_ms(lambda i, c=cfg: gemv(x, ws[i % copies], c, swiglu=swiglu), reps), cfg) for cfg in candidates]
    ms, cfg = min(timed, key=lambda t: t[0])
    cublas_ms = _time_ms(lambda i: torch.nn.functional.linear(x, ws[i % copies]), reps)
    return {"config": cfg, "ms": ms, "tb_s": nbytes / ms / 1e9, "cublas_ms": cublas_ms,
            "cublas_tb_s": nbytes / cublas_ms / 1e9, "weights_cycled": copies}


def tune_gemv(shapes: Iterable[tuple[int, int, bool]], *, device: str = "cuda", dtype: torch.dtype = torch.bfloat16,
              candidates: Iterable[GemvConfig] = GEMV_CANDIDATES, reps: int = 50) -> dict[tuple[int, int, bool], dict]:
    """Time every candidate tile on each (N, K, swiglu) weight shape; return the fastest per shape with its
    time and bandwidth (weight bytes / time), and cuBLAS's (F.linear's) for the same product beside it.

    Runs once per model, before CUDA graph capture; each shape cycles through enough copies of its weight
    to stream from memory (a decode step reads every weight once).
    """
    cands = tuple(candidates)
    out = {(n, k, sw): _tune_one(n, k, sw, device, dtype, cands, reps) for n, k, sw in shapes}
    torch.cuda.empty_cache()
    return out


def use_triton_decode(model: Any, *, tune: bool = True) -> dict[str, Any]:
    """Switch a model's one-token passes to these kernels: the GEMV (tiles tuned per weight shape on this
    GPU when `tune`, else the default tile) and the decode attention. Returns the tuning report (JSON-able).
    Call after `fuse_projections()` and before compiling or capturing graphs."""
    shapes = model.gemv_shapes()
    tuned = tune_gemv(shapes, device=str(model.device), dtype=model.dtype) if tune else {}
    model.use_gemv({shape: r["config"] for shape, r in tuned.items()}).use_attention("triton")
    return {"tuned": tune, "shapes": [{"rows": n, "cols": k, "swiglu": sw, **{**r, "config": r["config"].to_dict()}}
                                      for (n, k, sw), r in tuned.items()]}
