"""The attention block of the hidden-state drafters (`engine.drafters`): block tokens attend to context
keys/values injected from the target's hidden states and to each other.

Its own RMSNorm (normalising in the input's dtype above half precision, in fp32 below), not the target's
fused kernel: a drafter's numbers then do not depend on which kernel the target's layers use.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dspark_sim.engine.drafter_args import DrafterArgs


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float() if x.dtype in (torch.bfloat16, torch.float16) else x
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class DraftLayer(nn.Module):
    """Pre-norm block whose queries (block tokens) attend to injected context K/V and to the block."""

    def __init__(self, a: DrafterArgs):
        super().__init__()
        self.n_heads, self.head_dim = a.n_heads, a.head_dim
        self.attn_norm = RMSNorm(a.dim, a.norm_eps)
        self.ctx_norm = RMSNorm(a.dim, a.norm_eps)
        self.wq = nn.Linear(a.dim, a.dim, bias=False)
        self.wk = nn.Linear(a.dim, a.dim, bias=False)
        self.wv = nn.Linear(a.dim, a.dim, bias=False)
        self.wo = nn.Linear(a.dim, a.dim, bias=False)
        self.ffn_norm = RMSNorm(a.dim, a.norm_eps)
        self.w1 = nn.Linear(a.dim, a.ffn_hidden, bias=False)
        self.w3 = nn.Linear(a.dim, a.ffn_hidden, bias=False)
        self.w2 = nn.Linear(a.ffn_hidden, a.dim, bias=False)

    def ctx_kv(self, ctx: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
        """ctx [N, L, D], cos/sin [N, L, hd] -> keys, values [N, L, H, hd]."""
        n, length, _ = ctx.shape
        c = self.ctx_norm(ctx)
        k = self.wk(c).view(n, length, self.n_heads, self.head_dim)
        v = self.wv(c).view(n, length, self.n_heads, self.head_dim)
        return _rotate(k, cos[:, :, None], sin[:, :, None]), v

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, ctx_k: Tensor, ctx_v: Tensor, ctx_mask: Tensor,
                past: tuple[Tensor, Tensor] | None = None, causal: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        """x [N, A, G, D] block tokens of A anchors; cos/sin [N, A, G, hd]; ctx_mask bool [N, A, L].

        past: block keys/values [N, A, P, H, hd] of earlier block tokens (chained drafting); causal:
        token i of this call sees block tokens <= P + i, else the whole block. Returns x and the block
        keys/values including this call's.
        """
        n, a, g, d = x.shape
        xn = self.attn_norm(x)
        shape = (n, a, g, self.n_heads, self.head_dim)
        cs, sn = cos[:, :, :, None], sin[:, :, :, None]
        q = _rotate(self.wq(xn).view(shape), cs, sn)
        k = _rotate(self.wk(xn).view(shape), cs, sn)
        v = self.wv(xn).view(shape)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        scale = 1.0 / math.sqrt(self.head_dim)
        s_ctx = torch.einsum("naghd,nlhd->nahgl", q, ctx_k) * scale
        s_ctx = s_ctx.masked_fill(~ctx_mask[:, :, None, None, :], float("-inf"))
        s_blk = torch.einsum("naghd,nabhd->nahgb", q, k) * scale
        if causal:
            p = k.shape[2] - g
            allowed = torch.arange(k.shape[2], device=x.device)[None, :] <= (p + torch.arange(g, device=x.device))[:, None]
            s_blk = s_blk.masked_fill(~allowed, float("-inf"))
        length = ctx_k.shape[1]
        att = torch.softmax(torch.cat([s_ctx, s_blk], dim=-1), dim=-1)
        out = torch.einsum("nahgl,nlhd->naghd", att[..., :length], ctx_v) + \
            torch.einsum("nahgb,nabhd->naghd", att[..., length:], v)
        x = x + self.wo(out.reshape(n, a, g, d))
        h = self.ffn_norm(x)
        return x + self.w2(F.silu(self.w1(h)) * self.w3(h)), k, v
