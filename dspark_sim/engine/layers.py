"""The building blocks of the engine's decoder (`model.Transformer`): RMSNorm, rotary embeddings,
grouped-query attention over a static KV cache, SwiGLU, and the Triton GEMV path of one-row passes.

The cache is written at each sequence's own positions and read through a mask (a query at position p
sees keys 0..p), so a speculative step never undoes the K/V of a rejected token: it lies past the
sequence's position and is overwritten by the next write.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dspark_sim.engine import kernels

#: SDPA takes grouped K/V heads itself from torch 2.5 on
_SDPA_GQA = tuple(int(v) for v in torch.__version__.split(".")[:2]) >= (2, 5)

#: How a cached (masked) pass computes attention. "sdpa" (default): torch's fused kernel (on CUDA after
#: repeating the K/V heads, gpt-fast's pattern); "grouped": two matmuls with the query heads of one K/V
#: head stacked as rows, so the cache is read once and never copied. Compiled on an H200, "grouped" was
#: the slower (inductor picks small cutlass matmuls; validation/engine/h200_decode_profile_attention.json).
#: "triton": one-token passes run kernels.decode_attention (live keys only, GQA in-kernel); wider
#: passes and int8 caches use SDPA.
ATTENTION_KERNELS = ("sdpa", "grouped", "triton")

GemvConfigs = dict[tuple[int, int, bool], Any]  # (rows, cols, swiglu) -> kernels.GemvConfig


def _one_row(x: Tensor) -> bool:
    """x is a single row: what the Triton GEMV (`Transformer.use_gemv`) multiplies."""
    return x.numel() == x.shape[-1]


def _gemv(x: Tensor, weight: Tensor, gemv: GemvConfigs, swiglu: bool = False) -> Tensor:
    """kernels.gemv with the tile tuned for this weight shape (the default tile when untuned)."""
    cfg = gemv.get((weight.shape[0], weight.shape[1], swiglu), kernels.DEFAULT_GEMV)
    return kernels.gemv(x, weight, cfg, swiglu=swiglu)


def _linear(x: Tensor, weight: Tensor, gemv: GemvConfigs | None) -> Tensor:
    """F.linear, or the Triton GEMV when it applies."""
    if gemv is not None and _one_row(x):
        return _gemv(x, weight, gemv)
    return F.linear(x, weight)


def project(x: Tensor, module: nn.Module, gemv: GemvConfigs | None) -> Tensor:
    """module(x), through the GEMV when it is a plain Linear (tensor parallelism swaps in modules that
    all-reduce or all-gather their output: those keep their own forward)."""
    if gemv is not None and type(module) is nn.Linear:
        return _linear(x, module.weight, gemv)
    return module(x)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype in (torch.float32, torch.float64) and hasattr(F, "rms_norm"):
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)  # one kernel, same maths
        # half types: normalise in fp32 then cast back, as HF Llama does (bf16 rsqrt is too coarse)
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)



def grouped_query_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
    """Masked attention for q [B, H, T, D] over cached k, v [B, Hkv, S, D], mask [B, 1, T, S] (True = visible).

    Query head h reads K/V head h // (H / Hkv), as repeat_interleave would arrange them; the rep query
    heads of a K/V head become rep * T rows of one matmul instead of rep copies of the cache.
    """
    b, h, t, d = q.shape
    hkv, s = k.shape[1], k.shape[2]
    rep = h // hkv
    scores = torch.matmul(q.reshape(b, hkv, rep * t, d), k.transpose(-1, -2)).view(b, hkv, rep, t, s)
    scores = scores.to(torch.promote_types(scores.dtype, torch.float32))  # softmax in >= fp32
    scores = scores.mul_(1.0 / math.sqrt(d)).masked_fill_(~mask.unsqueeze(2), float("-inf"))
    probs = scores.softmax(dim=-1).to(v.dtype).view(b, hkv, rep * t, s)
    return torch.matmul(probs, v).view(b, h, t, d)


def rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x: [B, H, T, D]; cos/sin: [B, 1, T, D] (rotate-half convention, as HF Llama)."""
    return x * cos + rotate_half(x) * sin


class KVCache(nn.Module):
    """Static cache [batch, kv_heads, max_seq_len, head_dim], written at each sequence's own positions.

    int8 mode stores round(x / s) with one scale s = max|x| / 127 per (sequence, head, token), so a
    token's scale never changes when later tokens arrive, and dequantises on read.
    """

    k: Tensor
    v: Tensor
    k_scale: Tensor
    v_scale: Tensor

    def __init__(self, batch: int, n_kv_heads: int, max_seq_len: int, head_dim: int,
                 kv_dtype: torch.dtype, compute_dtype: torch.dtype, device: torch.device | str | None = None):
        super().__init__()
        shape = (batch, n_kv_heads, max_seq_len, head_dim)
        self.quantized = kv_dtype == torch.int8
        self.compute_dtype = compute_dtype
        self.register_buffer("k", torch.zeros(shape, dtype=kv_dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=kv_dtype, device=device), persistent=False)
        if self.quantized:
            sshape = (batch, n_kv_heads, max_seq_len, 1)
            self.register_buffer("k_scale", torch.ones(sshape, dtype=compute_dtype, device=device), persistent=False)
            self.register_buffer("v_scale", torch.ones(sshape, dtype=compute_dtype, device=device), persistent=False)
        # fixed addresses: torch.compile / CUDA graphs may then mutate the cache in place (as HF's StaticCache)
        for buf in self.buffers():
            torch._dynamo.mark_static_address(buf)

    @staticmethod
    def quantize(x: Tensor) -> tuple[Tensor, Tensor]:
        scale = x.abs().amax(dim=-1, keepdim=True).float().clamp_min(1e-8) / 127.0
        q = torch.round(x.float() / scale).clamp_(-127, 127).to(torch.int8)
        return q, scale.to(x.dtype)

    def update(self, positions: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write k, v [B, H, T, D] at positions [B, T]; return the whole (dequantised) cache rows."""
        b = k.shape[0]
        rows = torch.arange(b, device=positions.device)[:, None]
        # advanced indices (rows, positions) around a slice put their dims first: [B, T, H, D]
        if self.quantized:
            kq, ks = self.quantize(k)
            vq, vs = self.quantize(v)
            self.k[rows, :, positions] = kq.transpose(1, 2)
            self.v[rows, :, positions] = vq.transpose(1, 2)
            self.k_scale[rows, :, positions] = ks.transpose(1, 2)
            self.v_scale[rows, :, positions] = vs.transpose(1, 2)
            kk = self.k[:b].to(self.compute_dtype) * self.k_scale[:b]
            vv = self.v[:b].to(self.compute_dtype) * self.v_scale[:b]
            return kk, vv
        self.k[rows, :, positions] = k.transpose(1, 2).to(self.k.dtype)
        self.v[rows, :, positions] = v.transpose(1, 2).to(self.v.dtype)
        return self.k[:b].to(self.compute_dtype), self.v[:b].to(self.compute_dtype)


class Attention(nn.Module):
    """Grouped-query attention with RoPE, over the static cache when one is set up."""

    def __init__(self, dim: int, n_heads: int, n_kv_heads: int, head_dim: int):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, head_dim
        self.wq = nn.Linear(dim, n_heads * head_dim, bias=False)
        self.wk = nn.Linear(dim, n_kv_heads * head_dim, bias=False)
        self.wv = nn.Linear(dim, n_kv_heads * head_dim, bias=False)
        self.wo = nn.Linear(n_heads * head_dim, dim, bias=False)
        self.kv_cache: KVCache | None = None
        self.kernel = "sdpa"  # one of ATTENTION_KERNELS, for cached passes; set by Transformer.use_attention
        self.wqkv: Tensor | None = None  # fused q/k/v weight after fuse(): one matmul instead of three
        self.gemv: GemvConfigs | None = None  # Triton GEMV tiles for one-row passes (Transformer.use_gemv)

    def fuse(self) -> None:
        """One [q; k; v] weight; wq/wk/wv become views of it (same memory, same state dict)."""
        self.wqkv = _fuse_linears(self.wq, self.wk, self.wv)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, positions: Tensor | None,
                mask: Tensor | None) -> Tensor:
        bsz, t, _ = x.shape
        if self.wqkv is not None:
            nq, nkv = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
            q, k, v = _linear(x, self.wqkv, self.gemv).split((nq, nkv, nkv), dim=-1)
        else:
            q, k, v = (project(x, lin, self.gemv) for lin in (self.wq, self.wk, self.wv))
        q = q.view(bsz, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = k.view(bsz, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(bsz, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if self.kv_cache is not None and positions is not None:
            k, v = self.kv_cache.update(positions, k, v)
        rep = self.n_heads // self.n_kv_heads
        if (self.kernel == "triton" and t == 1 and positions is not None and self.kv_cache is not None
                and not self.kv_cache.quantized):
            y = kernels.decode_attention(q, k, v, positions[:, 0] + 1)
        elif mask is not None and self.kernel == "grouped":
            y = grouped_query_attention(q, k, v, mask)
        elif rep > 1 and x.device.type == "cpu" and _SDPA_GQA:
            # CPU: grouped heads inside SDPA, no K/V copies (CUDA keeps the gpt-fast pattern below,
            # whose masked kernels are known to capture well in CUDA graphs)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None, enable_gqa=True)
        else:
            if rep > 1:
                k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None)
        return project(y.transpose(1, 2).reshape(bsz, t, -1), self.wo, self.gemv)


class FeedForward(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)  # gate
        self.w3 = nn.Linear(dim, hidden, bias=False)  # up
        self.w2 = nn.Linear(hidden, dim, bias=False)  # down
        self.w13: Tensor | None = None  # fused [gate; up] weight after fuse()
        self.gemv: GemvConfigs | None = None  # Triton GEMV tiles for one-row passes (Transformer.use_gemv)

    def fuse(self) -> None:
        self.w13 = _fuse_linears(self.w1, self.w3)

    def forward(self, x: Tensor) -> Tensor:
        g = self.gemv
        if self.w13 is not None:
            if g is not None and _one_row(x):  # one row: silu(gate) * up inside the GEMV
                return project(_gemv(x, self.w13, g, swiglu=True), self.w2, g)
            gate, up = F.linear(x, self.w13).chunk(2, dim=-1)
            return project(F.silu(gate) * up, self.w2, g)
        return project(F.silu(project(x, self.w1, g)) * project(x, self.w3, g), self.w2, g)


def _fuse_linears(*linears: nn.Linear) -> Tensor:
    """Concatenate bias-free Linear weights along the output dim and make each weight a view of the
    result: the fused matmul streams one larger weight (small GEMVs reach a fraction of a GPU's
    bandwidth), and the modules, their state dict and their memory stay as they were."""
    fused = torch.cat([lin.weight.detach() for lin in linears], dim=0)
    start = 0
    for lin in linears:
        rows = lin.weight.shape[0]
        lin.weight = nn.Parameter(fused[start: start + rows], requires_grad=False)
        start += rows
    return fused
