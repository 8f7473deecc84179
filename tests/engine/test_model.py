"""The model and its static per-sequence KV cache."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from dspark_sim.engine.model import PRESETS, ModelArgs, build_model  # noqa: E402

from .engine_helpers import random_model  # noqa: E402


def test_cached_chunks_match_full_forward():
    """Prefill + chunks + single tokens through the cache give the no-cache causal logits."""
    m = random_model(dtype=torch.float64)
    x = torch.randint(0, 264, (3, 20), generator=torch.Generator().manual_seed(0))
    full = m(x)
    m.setup_caches(3, 64)
    parts, start = [], 0
    for size in (7, 5, 1, 1, 6):
        parts.append(m(x[:, start:start + size], torch.full((3,), start)))
        start += size
    torch.testing.assert_close(torch.cat(parts, 1), full, rtol=1e-9, atol=1e-9)


def test_per_sequence_positions_and_overwrite():
    """Each row writes at its own positions; stale K/V past a row's position is invisible and gets
    overwritten (what rejected draft tokens leave behind)."""
    m = random_model(dtype=torch.float64)
    gen = torch.Generator().manual_seed(1)
    a, b = torch.randint(0, 264, (1, 9), generator=gen), torch.randint(0, 264, (1, 4), generator=gen)
    ref_a, ref_b = m(a)[0, -1], m(b)[0, -1]
    m.setup_caches(2, 32)
    # prompts of different lengths, right-padded; then junk tokens written past row b's prompt
    batch = torch.zeros(2, 9, dtype=torch.long)
    batch[0], batch[1, :4] = a[0], b[0]
    m(batch, torch.zeros(2, dtype=torch.long))
    m(torch.randint(0, 264, (2, 3), generator=gen), torch.tensor([9, 4]))  # rejected drafts
    # re-run the last real token of each row at its own position
    out = m(torch.tensor([[a[0, -1]], [b[0, -1]]]), torch.tensor([[8], [3]]))[:, 0]
    torch.testing.assert_close(out[0], ref_a, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(out[1], ref_b, rtol=1e-9, atol=1e-9)


def test_hidden_states_and_logit_index():
    m = random_model(dtype=torch.float64)
    x = torch.randint(0, 264, (2, 6), generator=torch.Generator().manual_seed(2))
    logits, hidden = m(x, return_hidden=True)
    assert hidden.shape == (2, 6, m.args.dim) and logits.shape == (2, 6, 264)
    m.setup_caches(2, 16)
    picked = m(x, torch.zeros(2, dtype=torch.long), logit_index=torch.tensor([5, 2]))
    torch.testing.assert_close(picked[:, 0], torch.stack([logits[0, 5], logits[1, 2]]))


@pytest.mark.parametrize("kv_dtype, tol", [("int8", 0.03), ("bf16", 0.03), ("fp16", 0.005)])
def test_low_precision_kv_cache_close_to_fp32(kv_dtype, tol):
    """Stated tolerance: max |logit error| <= tol x max |logit| over a 48-token decode (int8: one
    scale per token and head), and the greedy argmax agrees on >= 95% of positions."""
    m = random_model(dtype=torch.float32, sharpness=5.0)
    x = torch.randint(0, 264, (2, 48), generator=torch.Generator().manual_seed(3))

    def run(kv):
        m.setup_caches(2, 64, kv)
        head = m(x[:, :16], torch.zeros(2, dtype=torch.long))
        steps = [m(x[:, i:i + 1], torch.full((2,), i)) for i in range(16, 48)]
        return torch.cat([head, *steps], 1)

    ref, low = run("fp32"), run(kv_dtype)
    err = (ref - low).abs().max() / ref.abs().max()
    assert err <= tol, f"{kv_dtype}: relative logit error {err:.4f}"
    assert (ref.argmax(-1) == low.argmax(-1)).float().mean() >= 0.95


def test_tied_embeddings_and_presets():
    args = ModelArgs(vocab_size=64, dim=32, n_layers=1, n_heads=4, n_kv_heads=1, ffn_hidden=64, tie_embeddings=True)
    m = build_model(args, seed=0)
    assert m.output.weight is m.tok_embeddings.weight
    assert sum(p.numel() for p in m.parameters()) == args.num_params()
    for name in ("test-target", "tiny-target", "gpu-target", "llama-3.1-8b"):
        assert PRESETS[name].num_params() > 0
    assert 100e6 <= PRESETS["gpu-target"].num_params() <= 300e6
    assert 10e6 <= PRESETS["gpu-draft"].num_params() <= 30e6
    assert 7.9e9 <= PRESETS["llama-3.1-8b"].num_params() <= 8.1e9
    assert 1.2e9 <= PRESETS["llama-3.2-1b"].num_params() <= 1.3e9
    with pytest.raises(KeyError):
        ModelArgs.from_preset("nope")


def test_fused_projections_same_outputs_state_and_memory():
    """fuse_projections: one q/k/v and one gate/up matmul, the same logits (fp64), the same state dict,
    and wq/wk/wv/w1/w3 become views of the fused weights (no second copy)."""
    m = build_model(ModelArgs(vocab_size=64, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=96),
                    dtype=torch.float64, seed=3)
    tokens = torch.randint(0, 64, (3, 7), generator=torch.Generator().manual_seed(0))
    pos = torch.tensor([0, 5, 11])
    ref_plain = m(tokens)
    m.setup_caches(3, 40)
    ref_cached = m(tokens, pos)
    state = {k: v.clone() for k, v in m.state_dict().items()}
    version = m.buffers_version
    m.fuse_projections()
    assert m.buffers_version > version  # graphs captured before fusing must not replay
    m.setup_caches(3, 40)
    torch.testing.assert_close(m(tokens), ref_plain, rtol=0, atol=1e-12)
    torch.testing.assert_close(m(tokens, pos), ref_cached, rtol=0, atol=1e-12)
    after = m.state_dict()
    assert sorted(after) == sorted(state) and all(torch.equal(after[k], state[k]) for k in state)
    att, ffn = m.layers[0].attention, m.layers[0].feed_forward
    assert att.wqkv is not None and ffn.w13 is not None
    assert att.wq.weight.data_ptr() == att.wqkv.data_ptr()
    assert ffn.w3.weight.data_ptr() == ffn.w13[ffn.w1.weight.shape[0]:].data_ptr()


@pytest.mark.parametrize("heads, kv_heads", [(4, 2), (4, 4), (8, 1)])
def test_grouped_attention_kernel_matches_sdpa(heads, kv_heads):
    """use_attention("grouped"): the cached pass's logits equal SDPA's (fp64) for ragged positions,
    multi-token chunks and every grouping (MHA, GQA, MQA); uncached (training) passes are untouched."""
    args = ModelArgs(vocab_size=64, dim=64, n_layers=2, n_heads=heads, n_kv_heads=kv_heads, ffn_hidden=96)
    m = build_model(args, dtype=torch.float64, seed=4)
    tokens = torch.randint(0, 64, (3, 5), generator=torch.Generator().manual_seed(0))
    pos = torch.tensor([0, 7, 2])
    m.setup_caches(3, 24)
    m(torch.randint(0, 64, (3, 9), generator=torch.Generator().manual_seed(1)), torch.zeros(3, dtype=torch.long))
    ref, ref_plain = m(tokens, pos), m(tokens)
    version = m.buffers_version
    m.use_attention("grouped")
    assert m.buffers_version > version and m.layers[1].attention.kernel == "grouped"
    torch.testing.assert_close(m(tokens, pos), ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(m(tokens), ref_plain, rtol=0, atol=0)
    with pytest.raises(ValueError, match="allowed"):
        m.use_attention("flash")
