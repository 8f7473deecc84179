"""The Triton decode kernels against torch's own maths, run in Triton's CPU interpreter.

On a GPU machine the same kernels compile for real; benchmarks/engine_gpu.py measures them there.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton", minversion="3.6")  # 3.5's interpreter breaks on numpy >= 2.4
import torch.nn.functional as F  # noqa: E402

from dspark_sim.core.policies import FixedGamma  # noqa: E402
from dspark_sim.engine.generate import generate_baseline, speculative_generate  # noqa: E402
from dspark_sim.engine.model import ModelArgs, build_model  # noqa: E402
from dspark_sim.engine.sampling import Sampling  # noqa: E402

pytestmark = pytest.mark.engine


@pytest.fixture()
def kernels():
    """The kernels module, on a GPU or in Triton's interpreter (tests/conftest.py picks it)."""
    import dspark_sim.engine.kernels as mod

    if not mod.available("cuda" if torch.cuda.is_available() else "cpu"):
        pytest.skip("no GPU and TRITON_INTERPRET is not set")
    return mod


@pytest.mark.parametrize("rows,cols,block_n,block_k", [(40, 300, 8, 128), (7, 64, 16, 256), (33, 1000, 2, 512)])
def test_gemv_matches_linear(kernels, rows, cols, block_n, block_k):
    g = torch.Generator().manual_seed(rows)
    w, x = torch.randn(rows, cols, generator=g), torch.randn(1, 1, cols, generator=g)
    y = kernels.gemv(x, w, kernels.GemvConfig(block_n, block_k))
    assert y.shape == (1, 1, rows)
    torch.testing.assert_close(y, F.linear(x, w), rtol=1e-5, atol=1e-4)


def test_gemv_swiglu_fuses_the_activation(kernels):
    g = torch.Generator().manual_seed(1)
    w, x = torch.randn(2 * 24, 200, generator=g), torch.randn(1, 200, generator=g)
    gate, up = F.linear(x, w).chunk(2, dim=-1)
    y = kernels.gemv(x, w, kernels.GemvConfig(4, 64), swiglu=True)
    torch.testing.assert_close(y, F.silu(gate) * up, rtol=1e-5, atol=1e-4)


def test_gemv_rejects_more_than_one_row(kernels):
    with pytest.raises(ValueError, match="one row"):
        kernels.gemv(torch.randn(2, 16), torch.randn(8, 16))


@pytest.mark.parametrize("heads,kv_heads,block_s", [(6, 2, 16), (4, 4, 16), (8, 1, 32)])
def test_decode_attention_matches_masked_sdpa(kernels, heads, kv_heads, block_s):
    """Ragged lengths, a cache with more rows than the batch, a length that is not a block multiple."""
    g = torch.Generator().manual_seed(heads)
    b, s, d = 3, 50, 12  # head_dim not a power of two: padded and masked in the kernel
    q = torch.randn(b, heads, 1, d, generator=g)
    k, v = torch.randn(b + 1, kv_heads, s, d, generator=g), torch.randn(b + 1, kv_heads, s, d, generator=g)
    lengths = torch.tensor([5, 50, 17])
    out = kernels.decode_attention(q, k, v, lengths, block_s=block_s)
    rep = heads // kv_heads
    mask = (torch.arange(s)[None, :] < lengths[:, None])[:, None, None, :]
    ref = F.scaled_dot_product_attention(q, k[:b].repeat_interleave(rep, 1), v[:b].repeat_interleave(rep, 1),
                                         attn_mask=mask)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_model_with_kernels_decodes_as_without(kernels):
    """Greedy decoding through the GEMV (fused and unfused projections) and the decode attention gives
    the tokens of the plain model, and the logits agree to fp32 rounding."""
    args = replace(ModelArgs.from_preset("test-target"), max_seq_len=64)
    prompts = [[1, 5, 9, 2, 7], [3, 3, 8]]
    ref_model = build_model(args, seed=3).eval()
    ref = generate_baseline(ref_model, prompts[:1], 12)
    for fuse in (False, True):
        model = build_model(args, seed=3).eval()
        if fuse:
            model.fuse_projections()
        model.use_gemv({(s[0], s[1], s[2]): kernels.GemvConfig(4, 32) for s in model.gemv_shapes()})
        model.use_attention("triton")
        out = generate_baseline(model, prompts[:1], 12)
        assert out.tokens == ref.tokens
        # batch 2 leaves the GEMV (two rows) but keeps the decode attention, with ragged positions
        assert generate_baseline(model, prompts, 8).tokens == generate_baseline(ref_model, prompts, 8).tokens
        model.setup_caches(1, 32)
        ref_model.setup_caches(1, 32)
        tok, pos = torch.tensor([[4]]), torch.tensor([0])
        torch.testing.assert_close(model(tok, pos), ref_model(tok, pos), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("gamma", [1, 3])
def test_speculative_decoding_with_kernels_is_lossless(kernels, gamma):
    """Draft passes (one token) through the kernels, verify passes (gamma + 1 tokens) through torch: greedy
    output equals the plain target's, and a sampled run draws the same tokens as without the kernels."""
    t_args = replace(ModelArgs.from_preset("test-target"), max_seq_len=96)
    d_args = replace(ModelArgs.from_preset("test-draft"), max_seq_len=96)
    target, draft = build_model(t_args, seed=5).eval(), build_model(d_args, seed=6).eval()
    prompts = [[7, 1, 4, 4, 2]]
    ref = generate_baseline(target, prompts, 16)
    plain_sampled = speculative_generate(target, draft, prompts, 16, FixedGamma(gamma=gamma), Sampling(1.0),
                                         generator=torch.Generator().manual_seed(0))
    for model in (target, draft):
        model.fuse_projections()
        kernels.use_triton_decode(model, tune=False)
    assert speculative_generate(target, draft, prompts, 16, FixedGamma(gamma=gamma)).tokens == ref.tokens
    sampled = speculative_generate(target, draft, prompts, 16, FixedGamma(gamma=gamma), Sampling(1.0),
                                   generator=torch.Generator().manual_seed(0))
    assert sampled.tokens == plain_sampled.tokens


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU machine runs the kernels")
def test_use_gemv_refuses_without_a_gpu(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    model = build_model(ModelArgs.from_preset("test-target"), seed=0)
    with pytest.raises(RuntimeError, match="needs triton and a CUDA device"):
        model.use_gemv()
