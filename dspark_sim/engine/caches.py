"""A decoding run's static sizes and its prompt pass.

Caches are static and indexed by each sequence's own positions, so a rejected draft token's K/V is
never removed: it is masked out (it lies past the sequence's position) and overwritten later. Prompts
of a batch are right-padded into one token buffer; the padding's K/V also lies past each prompt.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from dspark_sim.core.static_cache import cache_tokens
from dspark_sim.engine.model import KV_DTYPES, Forward, Transformer

__all__ = ["cache_tokens", "ensure_caches", "prefill", "prompt_tensor", "token_buffer_len"]


def token_buffer_len(prompt_len: int, max_new_tokens: int, gamma: int) -> int:
    """Width of a speculative run's token buffer: its cache plus room for the last step's drafts."""
    return cache_tokens(prompt_len, max_new_tokens, gamma) + gamma + 2


def ensure_caches(model: Transformer, batch: int, length: int, kv_dtype: str | None) -> None:
    """Allocate caches unless the current ones already fit (keeps captured CUDA graphs valid)."""
    want = KV_DTYPES[kv_dtype] if kv_dtype else model.dtype
    if model.cache_batch >= batch and model.cache_len >= length and model.cache_dtype == want:
        return
    model.setup_caches(batch, length, kv_dtype)


def prompt_tensor(prompts: Sequence[Sequence[int]], width: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """The prompts right-padded into [B, width] tokens, and their lengths [B]."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    lens = torch.tensor([len(p) for p in prompts], dtype=torch.long)
    buf = torch.zeros(len(prompts), width, dtype=torch.long)
    for i, p in enumerate(prompts):
        buf[i, : len(p)] = torch.as_tensor(list(p), dtype=torch.long)
    return buf.to(device), lens.to(device)


def prefill(model: Transformer | Forward, buf: Tensor, lens: Tensor, width: int) -> Tensor:
    """Run the (right-padded) prompts; returns the logits at each prompt's last token [B, V]."""
    zeros = torch.zeros_like(lens)
    return model(buf[:, :width], zeros, logit_index=lens - 1)[:, 0]
