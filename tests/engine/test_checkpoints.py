"""Our checkpoints round-trip; HF Llama-format folders load and give the same logits as an
independent plain-torch Llama written here (and as transformers' LlamaForCausalLM when installed)."""

from __future__ import annotations

import json
import math

import pytest

torch = pytest.importorskip("torch")
from safetensors.torch import save_file  # noqa: E402

from dspark_sim.config.errors import InputError  # noqa: E402
from dspark_sim.engine.checkpoints import load_checkpoint, load_hf_llama, save_checkpoint  # noqa: E402

from .engine_helpers import random_model  # noqa: E402

HF_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 96, "hidden_size": 64,
    "intermediate_size": 112, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
    "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 128, "tie_word_embeddings": False,
    "hidden_act": "silu", "attention_bias": False, "mlp_bias": False, "torch_dtype": "float32",
}


def _hf_tensors(cfg: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    h, f, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    hd = h // cfg["num_attention_heads"]
    kv = cfg["num_key_value_heads"] * hd

    def w(*shape, scale=0.1):
        return torch.randn(*shape, generator=gen) * scale

    t = {"model.embed_tokens.weight": w(v, h, scale=1.0), "model.norm.weight": 1 + w(h)}
    if not cfg["tie_word_embeddings"]:
        t["lm_head.weight"] = w(v, h)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        t |= {p + "self_attn.q_proj.weight": w(h, h), p + "self_attn.k_proj.weight": w(kv, h),
              p + "self_attn.v_proj.weight": w(kv, h), p + "self_attn.o_proj.weight": w(h, h),
              p + "mlp.gate_proj.weight": w(f, h), p + "mlp.up_proj.weight": w(f, h),
              p + "mlp.down_proj.weight": w(h, f), p + "input_layernorm.weight": 1 + w(h),
              p + "post_attention_layernorm.weight": 1 + w(h)}
    return t


def _reference_llama(t: dict[str, torch.Tensor], cfg: dict, ids: torch.Tensor) -> torch.Tensor:
    """Llama forward from the HF tensor names, written independently of the engine (loops, float64)."""
    t = {k: v.double() for k, v in t.items()}
    nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg["hidden_size"] // nh
    n = ids.shape[1]

    def rms(x, wt):
        return wt * x / torch.sqrt((x * x).mean(-1, keepdim=True) + cfg["rms_norm_eps"])

    def rope(x):  # x [heads, n, hd], rotate-half pairs (i, i + hd/2)
        out = torch.empty_like(x)
        half = hd // 2
        for pos in range(n):
            for i in range(half):
                theta = pos * cfg["rope_theta"] ** (-2 * i / hd)
                c, s = math.cos(theta), math.sin(theta)
                a, b = x[:, pos, i], x[:, pos, i + half]
                out[:, pos, i], out[:, pos, i + half] = a * c - b * s, b * c + a * s
        return out

    x = t["model.embed_tokens.weight"][ids[0]]
    for layer in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        h = rms(x, t[p + "input_layernorm.weight"])
        q = (h @ t[p + "self_attn.q_proj.weight"].T).view(n, nh, hd).transpose(0, 1)
        k = (h @ t[p + "self_attn.k_proj.weight"].T).view(n, nkv, hd).transpose(0, 1)
        v = (h @ t[p + "self_attn.v_proj.weight"].T).view(n, nkv, hd).transpose(0, 1)
        q, k = rope(q), rope(k)
        heads = []
        for head in range(nh):
            kh, vh = k[head * nkv // nh], v[head * nkv // nh]
            scores = q[head] @ kh.T / math.sqrt(hd)
            scores = scores.masked_fill(torch.triu(torch.ones(n, n, dtype=torch.bool), 1), float("-inf"))
            heads.append(torch.softmax(scores, -1) @ vh)
        x = x + torch.cat(heads, -1) @ t[p + "self_attn.o_proj.weight"].T
        h = rms(x, t[p + "post_attention_layernorm.weight"])
        gate = h @ t[p + "mlp.gate_proj.weight"].T
        x = x + (gate * torch.sigmoid(gate) * (h @ t[p + "mlp.up_proj.weight"].T)) @ t[p + "mlp.down_proj.weight"].T
    head_w = t.get("lm_head.weight", t["model.embed_tokens.weight"])
    return rms(x, t["model.norm.weight"]) @ head_w.T


def _write_hf(folder, cfg, tensors, sharded=False):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(cfg))
    if not sharded:
        save_file(tensors, str(folder / "model.safetensors"))
        return
    names = sorted(tensors)
    halves = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for shard, keys in halves.items():
        save_file({k: tensors[k] for k in keys}, str(folder / shard))
    index = {"weight_map": {k: s for s, keys in halves.items() for k in keys}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))


@pytest.mark.parametrize("tied, sharded", [(False, False), (True, True)])
def test_hf_llama_folder_matches_reference(tmp_path, tied, sharded):
    cfg = {**HF_CONFIG, "tie_word_embeddings": tied}
    tensors = _hf_tensors(cfg)
    _write_hf(tmp_path / "hf", cfg, tensors, sharded)
    model = load_hf_llama(tmp_path / "hf", dtype=torch.float64)
    ids = torch.randint(0, cfg["vocab_size"], (1, 11), generator=torch.Generator().manual_seed(1))
    expected = _reference_llama(tensors, cfg, ids)
    torch.testing.assert_close(model(ids)[0], expected, rtol=1e-5, atol=1e-4)  # fp32 RoPE tables
    # and through the KV cache, token by token
    model.setup_caches(1, 32)
    steps = [model(ids[:, i:i + 1], torch.tensor([i]))[0, 0] for i in range(ids.shape[1])]
    torch.testing.assert_close(torch.stack(steps), expected, rtol=1e-5, atol=1e-4)


def test_hf_llama_matches_transformers(tmp_path):
    """Against transformers' own LlamaForCausalLM (skipped when transformers is not installed),
    with Llama-3 RoPE scaling on."""
    transformers = pytest.importorskip("transformers")
    cfg = {**HF_CONFIG, "rope_theta": 500000.0, "rope_scaling": {
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64}}
    tensors = _hf_tensors(cfg, seed=3)
    _write_hf(tmp_path / "hf", cfg, tensors)
    hf = transformers.LlamaForCausalLM.from_pretrained(str(tmp_path / "hf"), torch_dtype=torch.float64).eval()
    ours = load_hf_llama(tmp_path / "hf", dtype=torch.float64)
    ids = torch.randint(0, cfg["vocab_size"], (2, 100), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), hf(ids).logits, rtol=1e-6, atol=1e-6)


def test_hf_loader_errors(tmp_path):
    with pytest.raises(InputError, match="config.json"):
        load_hf_llama(tmp_path / "missing")
    cfg = dict(HF_CONFIG)
    _write_hf(tmp_path / "hf", cfg, {k: v for k, v in _hf_tensors(cfg).items() if "layers.1." not in k})
    with pytest.raises(InputError, match="missing"):
        load_hf_llama(tmp_path / "hf")
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**cfg, "model_type": "gpt2"}))
    with pytest.raises(InputError, match="model_type"):
        load_hf_llama(tmp_path / "hf")


def test_our_checkpoint_round_trip(tmp_path):
    m = random_model(dtype=torch.float32)
    save_checkpoint(m, tmp_path, "target", {"note": "x"})
    back = load_checkpoint(tmp_path, "target")
    ids = torch.randint(0, 264, (2, 9), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(back(ids), m(ids), rtol=0, atol=0)
    assert json.loads((tmp_path / "target.json").read_text())["note"] == "x"
    with pytest.raises(InputError):
        load_checkpoint(tmp_path, "draft")
