"""Helpers for the engine tests: small random models, so the whole folder runs in seconds."""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")

from dspark_sim.engine.model import ModelArgs, Transformer, build_model  # noqa: E402


def random_model(vocab: int = 264, *, seed: int = 0, dtype: torch.dtype = torch.float64, dim: int = 32,
                 layers: int = 2, sharpness: float = 30.0, max_seq_len: int = 128) -> Transformer:
    """A random model whose next-token distributions are peaked (output weights scaled up), so greedy
    ties are rare and sampled acceptance is far from uniform."""
    args = ModelArgs(vocab_size=vocab, dim=dim, n_layers=layers, n_heads=4, n_kv_heads=2, ffn_hidden=2 * dim,
                     max_seq_len=max_seq_len)
    model = build_model(args, seed=seed, dtype=dtype)
    with torch.no_grad():
        model.output.weight.mul_(sharpness)
    return model.eval()


def perturbed(model: Transformer, noise: float, seed: int = 1) -> Transformer:
    """A deliberately imperfect draft: the target with relative Gaussian noise on every weight."""
    draft = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in draft.parameters():
            p.add_(noise * p.std() * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return draft.eval()


def prompts_for(n: int, vocab: int = 264, seed: int = 0, min_len: int = 1, max_len: int = 12) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    lens = torch.randint(min_len, max_len + 1, (n,), generator=gen).tolist()
    return [torch.randint(0, vocab, (n_,), generator=gen).tolist() for n_ in lens]
