"""The sampling and verification maths of decoding, batched and on the device.

`Sampling` names the distribution decoding draws from (temperature, top-k, top-p), identically for the
draft and the target; `logits_to_probs` builds it, `sample` draws from it without a host sync, and
`verify_drafts` is the rejection step of speculative decoding (Leviathan et al. / Chen et al.) over a
batch whose rows verify different numbers of drafts. Greedy decoding is the same maths on one-hot
distributions; `verify_greedy` computes it without building them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Sampling:
    """temperature 0 = greedy. top_k / top_p filter after temperature, identically for draft and target."""

    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError("top_k must be >= 1")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise ValueError("top_p must be in (0, 1]")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def logits_to_probs(logits: Tensor, sampling: Sampling) -> Tensor:
    """The distribution actually sampled from. Greedy gives a one-hot on the argmax, so the same
    rejection-sampling code is exact for greedy too (accept iff the draft token is the argmax)."""
    if logits.dtype in (torch.bfloat16, torch.float16):
        logits = logits.float()
    if sampling.greedy:
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).to(logits.dtype)
    logits = logits / sampling.temperature
    if sampling.top_k is not None and sampling.top_k < logits.shape[-1]:
        kth = torch.topk(logits, sampling.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if sampling.top_p is not None and sampling.top_p < 1.0:
        sorted_p, idx = torch.sort(probs, dim=-1, descending=True, stable=True)
        before = sorted_p.cumsum(-1) - sorted_p  # mass of the strictly more likely tokens
        sorted_p = sorted_p.masked_fill(before >= sampling.top_p, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, idx, sorted_p)
        probs = probs / probs.sum(-1, keepdim=True)
    return probs


def sample(weights: Tensor, greedy: bool, generator: torch.Generator | None = None,
           noise: Tensor | None = None) -> Tensor:
    """One draw per row from (unnormalised) non-negative weights, without a host sync.

    argmax(w / E) with E ~ Exp(1) picks index i with probability w_i / sum(w) (the exponential race).
    `noise`: the E's, drawn beforehand (shaped like `weights`); else drawn here from `generator`.
    """
    if greedy:
        return weights.argmax(-1)
    e = torch.empty_like(weights).exponential_(1.0, generator=generator) if noise is None else noise
    return (weights / e.clamp_min(torch.finfo(e.dtype).tiny)).argmax(-1)


def next_token(logits: Tensor, sampling: Sampling, generator: torch.Generator | None = None,
               noise: Tensor | None = None) -> Tensor:
    """Sample one token per row from logits [..., V] (argmax straight away when greedy: fewer kernels)."""
    if sampling.greedy:
        return logits.argmax(-1)
    return sample(logits_to_probs(logits, sampling), False, generator, noise)


def verify_drafts(p: Tensor, q: Tensor | None, drafts: Tensor, verify: Tensor, greedy: bool,
                  generator: torch.Generator | None = None, uniforms: Tensor | None = None,
                  noise: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Rejection sampling over a batch with ragged verify lengths, all on the device.

    p: target distributions [B, G+1, V] at the pending token and each draft token; q: draft
    distributions [B, G, V]; drafts [B, G]; verify [B] (<= G): how many leading drafts each sequence
    verifies. Draft k is accepted with probability min(1, p(x)/q(x)) while all before it were; at the
    first rejection the next token comes from norm(max(0, p - q)), and when every verified draft passed
    it is the bonus token drawn from p. Returns (accepted [B], next_token [B]).
    `uniforms` [B, G] (the accept tests) and `noise` [B, V] (the next token's Exp(1) draws) may come
    drawn beforehand (`verify_noise`); else they are drawn here from `generator`.
    """
    bsz, t, _ = p.shape
    g = t - 1
    rows = torch.arange(bsz, device=p.device)
    if g == 0 or q is None:
        return torch.zeros(bsz, dtype=torch.long, device=p.device), sample(p[:, 0], greedy, generator, noise)
    drafts, q = drafts[:, :g], q[:, :g]
    p_d = p[:, :g].gather(-1, drafts[..., None]).squeeze(-1)
    q_d = q.gather(-1, drafts[..., None]).squeeze(-1)
    u = torch.rand(p_d.shape, device=p.device, generator=generator) if uniforms is None else uniforms[:, :g]
    ok = (u * q_d < p_d) & (torch.arange(g, device=p.device)[None, :] < verify[:, None])
    accepted = ok.long().cumprod(-1).sum(-1)
    p_a = p[rows, accepted]
    q_a = torch.cat([q, torch.zeros_like(q[:, :1])], dim=1)[rows, accepted]
    residual = (p_a - q_a).clamp_min(0.0)
    use_residual = (accepted < verify)[:, None] & (residual.sum(-1, keepdim=True) > 0)
    return accepted, sample(torch.where(use_residual, residual, p_a), greedy, generator, noise)


def verify_greedy(logits: Tensor, drafts: Tensor, verify: Tensor) -> tuple[Tensor, Tensor]:
    """verify_drafts for greedy decoding, without building one-hot distributions (same result:
    a draft passes iff it is the target's argmax; the next token is the argmax after the last pass)."""
    best = logits.argmax(-1)  # [B, G+1]
    g = best.shape[1] - 1
    ok = (drafts[:, :g] == best[:, :g]) & (torch.arange(g, device=best.device)[None, :] < verify[:, None])
    accepted = ok.long().cumprod(-1).sum(-1)
    return accepted, best.gather(1, accepted[:, None])[:, 0]
