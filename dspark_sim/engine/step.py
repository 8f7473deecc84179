"""A speculative step's device work with a draft model: the draft phase and the verify phase.

A step is two phases of device work around its one host sync: the draft phase (draft passes, sampling,
the small tensor the host reads) and the verify phase (the target pass over the verified blocks,
rejection sampling, the buffer update). Both are functions of tensors the step owns, with their random
numbers drawn beforehand in one call each, so that `cudagraphs.StepGraphs` can replay each phase as
one CUDA graph and still produce the very tokens of the eager loop.

`accept` (the rejection step and the buffer update) is shared with the hidden-state drafters' verify
phase (`drafter_generate`), which draws its random numbers inline instead.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dspark_sim.engine.model import Forward
from dspark_sim.engine.sampling import (
    Sampling,
    logits_to_probs,
    next_token,
    sample,
    verify_drafts,
    verify_greedy,
)


def draft_tokens(fwd: Forward, buf: Tensor, pend: Tensor, gamma: int, sampling: Sampling,
                 generator: torch.Generator | None = None,
                 noise: Tensor | None = None) -> tuple[Tensor, Tensor | None, Tensor]:
    """Propose `gamma` tokens per sequence with a draft model; write them into buf after each pending token.
    Returns drafts [B, gamma], their distributions q [B, gamma, V] (None when greedy), confidences.
    `noise` [B, gamma, V]: the sampled drafts' Exp(1) draws (`draft_noise`), else drawn from `generator`.

    The first pass re-feeds the token before the pending one: the draft has no K/V for the last
    draft token of a step whose drafts were all accepted, so this one fixed-shape pass catches it up
    (recomputing an existing entry otherwise, which is harmless).
    """
    rows = torch.arange(buf.shape[0], device=buf.device)
    pos = torch.stack([pend - 1, pend], dim=1)
    logits = fwd(buf.gather(1, pos), pos, logit_index=torch.ones_like(pend))[:, -1]
    drafts, probs, confs = [], [], []
    for j in range(gamma):
        if sampling.greedy:  # q is one-hot: keep only the token; confidence from the raw softmax
            d = logits.argmax(-1)
            confs.append(torch.softmax(logits, -1).gather(-1, d[:, None])[:, 0])
        else:  # confidence = the drafter's probability of its own token under the sampled q
            q = logits_to_probs(logits, sampling)
            d = sample(q, False, generator, None if noise is None else noise[:, j])
            confs.append(q.gather(-1, d[:, None])[:, 0])
            probs.append(q)
        drafts.append(d)
        buf[rows, pend + 1 + j] = d
        if j + 1 < gamma:
            logits = fwd(d[:, None], (pend + 1 + j)[:, None])[:, -1]
    return torch.stack(drafts, 1), (torch.stack(probs, 1) if probs else None), torch.stack(confs, 1)


def draft_noise(bsz: int, gamma: int, vocab: int, sampling: Sampling, generator: torch.Generator | None,
                device: torch.device, out: Tensor | None = None) -> Tensor | None:
    """The draft phase's random numbers: Exp(1) per row, drafted token and vocabulary entry (None when greedy)."""
    if sampling.greedy or gamma == 0:
        return None
    if out is None:
        out = torch.empty(bsz, gamma, vocab, dtype=torch.float32, device=device)
    return out.exponential_(1.0, generator=generator)


def verify_noise(bsz: int, gamma: int, vocab: int, sampling: Sampling, generator: torch.Generator | None,
                 device: torch.device, out: tuple[Tensor, Tensor] | None = None
                 ) -> tuple[Tensor | None, Tensor | None]:
    """The verify phase's: a uniform per draft (the accept tests; a step verifying g <= gamma uses the
    first g) and Exp(1) per vocabulary entry (the next token), per row (None, None when greedy)."""
    if sampling.greedy:
        return None, None
    u, e = out if out is not None else (torch.empty(bsz, gamma, dtype=torch.float32, device=device),
                                        torch.empty(bsz, vocab, dtype=torch.float32, device=device))
    return u.uniform_(0.0, 1.0, generator=generator), e.exponential_(1.0, generator=generator)


def draft_phase(fwd: Forward, buf: Tensor, pend: Tensor, gamma: int, sampling: Sampling,
                noise: Tensor | None) -> tuple[Tensor, Tensor | None, Tensor]:
    """Draft `gamma` tokens a row; returns drafts, q (None when greedy) and the step's one host read:
    [B, 1 + gamma] doubles, each row's pending position then its drafts' confidences."""
    drafts, q, conf = draft_tokens(fwd, buf, pend, gamma, sampling, None, noise)
    return drafts, q, torch.cat([pend[:, None].double(), conf.double()], dim=1)


def verify_positions(pend: Tensor, g: int) -> Tensor:
    """[B, g + 1]: each row's pending token and its first g drafts, the block one target pass verifies."""
    return pend[:, None] + torch.arange(g + 1, device=pend.device)


def accept(logits: Tensor, buf: Tensor, pend: Tensor, drafts: Tensor | None, q: Tensor | None, verify: Tensor,
           active: Tensor, g: int, sampling: Sampling, uniforms: Tensor | None = None, noise: Tensor | None = None,
           generator: torch.Generator | None = None) -> None:
    """Rejection sampling of the `verify` [B] leading drafts each row verifies, from the target's logits
    [B, g + 1, V] over the verified block, then in place: the next token written into `buf` after the
    accepted drafts, `pend` advanced past them for the `active` [B] (0/1) rows. Random numbers: `uniforms`
    and `noise` drawn beforehand (`verify_noise`), else drawn here from `generator`."""
    rows = torch.arange(buf.shape[0], device=buf.device)
    if drafts is None or g == 0:
        acc = torch.zeros_like(pend)
        nxt = next_token(logits[:, 0], sampling, generator, noise)
    elif sampling.greedy:
        acc, nxt = verify_greedy(logits, drafts, verify)
    else:
        acc, nxt = verify_drafts(logits_to_probs(logits, sampling), q, drafts, verify, False, generator,
                                 uniforms, noise)
    acc = acc * active
    buf[rows, pend + acc + 1] = nxt
    pend.add_((acc + 1) * active)


def verify_phase(fwd: Forward, buf: Tensor, pend: Tensor, drafts: Tensor | None, q: Tensor | None,
                 verify: Tensor, active: Tensor, g: int, sampling: Sampling, uniforms: Tensor | None,
                 noise: Tensor | None) -> None:
    """One target pass over each row's pending token and its first `g` drafts, then `accept`."""
    positions = verify_positions(pend, g)
    accept(fwd(buf.gather(1, positions), positions), buf, pend, drafts, q, verify, active, g, sampling,
           uniforms, noise)
