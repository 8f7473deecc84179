"""Checkpoints: ours (safetensors + JSON config) and HF Llama-format folders (config.json + safetensors).

Our parameter names are gpt-fast's (wq, w1, ...); HF names map onto them one to one because the
model uses HF's rotate-half RoPE, so no weight permutation is needed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save

from dspark_sim.config.errors import InputError
from dspark_sim.config.io import write_atomic
from dspark_sim.engine.model import ModelArgs, Transformer, build_model

# ------------------------------------------------------------------------------------------------
# Our format
# ------------------------------------------------------------------------------------------------


def _state_dict(model: Transformer) -> dict[str, torch.Tensor]:
    sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if model.args.tie_embeddings:
        sd.pop("output.weight", None)  # stored once, as the embedding
    return sd


def save_checkpoint(model: Transformer, folder: str | Path, name: str, extra: dict[str, Any] | None = None) -> Path:
    """Write `<name>.safetensors` and `<name>.json` ({"model_args": ..., **extra}) into `folder`."""
    folder = Path(folder)
    weights = write_atomic(folder / f"{name}.safetensors", save(_state_dict(model), metadata={"format": "pt"}))
    meta = {"model_args": model.args.to_dict(), **(extra or {})}
    write_atomic(folder / f"{name}.json", json.dumps(meta, indent=2))
    return weights


def read_checkpoint_meta(folder: str | Path, name: str) -> dict[str, Any]:
    path = Path(folder) / f"{name}.json"
    if not path.is_file():
        raise InputError(str(path), None, "checkpoint config not found (train one with `dspark-sim engine train`)")
    return json.loads(path.read_text())


def load_checkpoint(folder: str | Path, name: str, *, device: torch.device | str = "cpu",
                    dtype: torch.dtype = torch.float32) -> Transformer:
    """Load `<name>.safetensors` + `<name>.json` written by `save_checkpoint`."""
    meta = read_checkpoint_meta(folder, name)
    weights = Path(folder) / f"{name}.safetensors"
    if not weights.is_file():
        raise InputError(str(weights), None, "checkpoint weights not found")
    model = build_model(ModelArgs.from_dict(meta["model_args"]), device=device, dtype=dtype)
    _load_into(model, load_file(str(weights)), str(weights))
    return model.eval()


def _load_into(model: Transformer, sd: dict[str, torch.Tensor], source: str) -> None:
    if model.args.tie_embeddings:
        sd.pop("output.weight", None)
    own = {k: v for k, v in model.state_dict().items() if not (model.args.tie_embeddings and k == "output.weight")}
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    if missing or unexpected:
        raise InputError(source, None, f"weights do not match the config (missing {missing[:3]}, "
                                       f"unexpected {unexpected[:3]})")
    with torch.no_grad():
        for k, v in sd.items():
            if own[k].shape != v.shape:
                raise InputError(source, k, f"shape {tuple(v.shape)} does not match the config's {tuple(own[k].shape)}")
            own[k].copy_(v)


# ------------------------------------------------------------------------------------------------
# HF Llama format
# ------------------------------------------------------------------------------------------------

_HF_LAYER = {
    "self_attn.q_proj.weight": "attention.wq.weight",
    "self_attn.k_proj.weight": "attention.wk.weight",
    "self_attn.v_proj.weight": "attention.wv.weight",
    "self_attn.o_proj.weight": "attention.wo.weight",
    "mlp.gate_proj.weight": "feed_forward.w1.weight",
    "mlp.up_proj.weight": "feed_forward.w3.weight",
    "mlp.down_proj.weight": "feed_forward.w2.weight",
    "input_layernorm.weight": "attention_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
}
_HF_TOP = {"model.embed_tokens.weight": "tok_embeddings.weight", "model.norm.weight": "norm.weight",
           "lm_head.weight": "output.weight"}
_LAYER_RE = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


def hf_name_to_ours(name: str) -> str | None:
    """Our parameter name for an HF Llama tensor name; None for tensors we do not use (rotary caches)."""
    if name in _HF_TOP:
        return _HF_TOP[name]
    m = _LAYER_RE.match(name)
    if m and m.group(2) in _HF_LAYER:
        return f"layers.{m.group(1)}.{_HF_LAYER[m.group(2)]}"
    return None


def hf_config_to_args(cfg: dict[str, Any], source: str = "config.json") -> ModelArgs:
    """ModelArgs from an HF LlamaConfig dict."""
    if cfg.get("model_type", "llama") != "llama":
        raise InputError(source, "model_type", f"only Llama-format checkpoints load (got {cfg.get('model_type')!r})")
    for flag in ("attention_bias", "mlp_bias"):
        if cfg.get(flag):
            raise InputError(source, flag, "biases are not supported")
    try:
        heads = int(cfg["num_attention_heads"])
        return ModelArgs(
            vocab_size=int(cfg["vocab_size"]),
            dim=int(cfg["hidden_size"]),
            n_layers=int(cfg["num_hidden_layers"]),
            n_heads=heads,
            n_kv_heads=int(cfg.get("num_key_value_heads") or heads),
            ffn_hidden=int(cfg["intermediate_size"]),
            head_dim=int(cfg.get("head_dim") or 0),
            norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            rope_theta=float(cfg.get("rope_theta", 10000.0)),
            rope_scaling=cfg.get("rope_scaling"),
            tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            max_seq_len=int(cfg.get("max_position_embeddings", 2048)),
        )
    except KeyError as err:
        raise InputError(source, str(err.args[0]), "required field is missing") from err
    except ValueError as err:
        raise InputError(source, None, str(err)) from err


def load_hf_llama(folder: str | Path, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                  max_seq_len: int | None = None) -> Transformer:
    """Load an HF Llama folder: config.json + model.safetensors (or a sharded index)."""
    folder = Path(folder)
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise InputError(str(cfg_path), None, "not found (expected an HF Llama folder with config.json)")
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as err:
        raise InputError(str(cfg_path), None, f"not valid JSON ({err})") from err
    args = hf_config_to_args(cfg, str(cfg_path))
    if max_seq_len:
        args.max_seq_len = max_seq_len
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (folder / "model.safetensors").is_file():
        shards = ["model.safetensors"]
    else:
        raise InputError(str(folder), None, "no model.safetensors (or model.safetensors.index.json) found")
    sd: dict[str, torch.Tensor] = {}
    for shard in shards:
        for name, tensor in load_file(str(folder / shard)).items():
            ours = hf_name_to_ours(name)
            if ours is not None:
                sd[ours] = tensor
    model = build_model(args, device=device, dtype=dtype)
    _load_into(model, sd, str(folder))
    return model.eval()


def export_hf_llama(model: Transformer, folder: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Write `model` as an HF Llama folder (config.json + model.safetensors), the inverse of load_hf_llama,
    so HF transformers can run the very same weights (e.g. for assisted generation side by side)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    a = model.args
    ours_to_hf = {v: k for k, v in _HF_TOP.items()}
    sd: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        if name in ours_to_hf:
            hf = ours_to_hf[name]
        else:
            m = re.match(r"^layers\.(\d+)\.(.+)$", name)
            inv = {v: k for k, v in _HF_LAYER.items()}
            if not m or m.group(2) not in inv:
                continue  # rope caches, KV caches
            hf = f"model.layers.{m.group(1)}.{inv[m.group(2)]}"
        t = tensor.detach().contiguous().cpu()
        sd[hf] = t.to(dtype) if dtype is not None else t
    if a.tie_embeddings:
        sd.pop("lm_head.weight", None)
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": a.vocab_size,
        "hidden_size": a.dim, "intermediate_size": a.ffn_hidden, "num_hidden_layers": a.n_layers,
        "num_attention_heads": a.n_heads, "num_key_value_heads": a.n_kv_heads, "head_dim": a.head_dim,
        "rms_norm_eps": a.norm_eps, "rope_theta": a.rope_theta, "rope_scaling": a.rope_scaling,
        "tie_word_embeddings": a.tie_embeddings, "max_position_embeddings": a.max_seq_len,
        "attention_bias": False, "mlp_bias": False, "hidden_act": "silu",
        "torch_dtype": str(dtype or model.dtype).replace("torch.", ""),
        "bos_token_id": 256, "eos_token_id": 257,
    }
    write_atomic(folder / "model.safetensors", save(sd))
    write_atomic(folder / "config.json", json.dumps(config, indent=2))
    return folder
