"""The bundled engine's static KV cache length: one rule for the engine, its profile and the simulator's
description of its runs (which must stay torch-free, so the rule cannot live in the engine alone)."""

from __future__ import annotations


def cache_tokens(prompt_len: int, max_new_tokens: int, gamma: int) -> int:
    """Static KV-cache length a speculative run needs: prompt + outputs + the drafts of the last step, and
    room for finished rows that keep stepping with the batch. One rule for the engine, its profile and
    validate, because the loops attend over the whole static cache (its length is part of the cost)."""
    return prompt_len + max_new_tokens + 2 * gamma + 2
