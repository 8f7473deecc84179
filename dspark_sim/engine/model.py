"""A compact Llama-style decoder (RMSNorm, RoPE, GQA, SwiGLU) with a static per-sequence KV cache.

Why this shape: it is the architecture of the models the simulator predicts (Llama 3.x), it loads
HF Llama checkpoints unchanged (rotate-half RoPE, same projections), and a static cache indexed by
each sequence's own positions makes speculative decoding simple: rejected tokens' K/V are not undone,
they are masked out (keys past a query's position are invisible) and overwritten by the next write.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, cast

import torch
from torch import Tensor, nn

from dspark_sim.engine import kernels
from dspark_sim.engine.layers import (
    ATTENTION_KERNELS,
    Attention,
    FeedForward,
    GemvConfigs,
    KVCache,
    RMSNorm,
    project,
)

#: anything called like `Transformer(tokens, positions, logit_index=...)`: the model itself, a compiled
#: forward (`generate.compile_forward`) or a graphed one (`cudagraphs.GraphedForward`)
Forward = Callable[..., Tensor]

#: Weight and activation dtypes by the names every command and document uses (fp64: exact TP checks).
WEIGHT_DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "fp64": torch.float64,
}

#: Storage dtypes the KV cache accepts by name; "int8" stores int8 values with per-(token, head) scales.
KV_DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "int8": torch.int8,
}


@dataclass
class ModelArgs:
    """Architecture of one decoder. `head_dim` defaults to dim // n_heads."""

    vocab_size: int = 264
    dim: int = 256
    n_layers: int = 4
    n_heads: int = 8
    n_kv_heads: int = 4
    ffn_hidden: int = 688
    head_dim: int = 0
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None  # HF "llama3" frequency scaling, as in config.json
    tie_embeddings: bool = False
    max_seq_len: int = 1024

    def __post_init__(self) -> None:
        if self.head_dim <= 0:
            self.head_dim = self.dim // self.n_heads
        if self.n_heads % self.n_kv_heads:
            raise ValueError("n_heads must be a multiple of n_kv_heads")
        if self.head_dim % 2:
            raise ValueError("head_dim must be even (RoPE rotates pairs)")

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> ModelArgs:
        if name not in PRESETS:
            raise KeyError(f"unknown model preset {name!r}; known: {sorted(PRESETS)}")
        return replace(PRESETS[name], **overrides)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelArgs:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def num_params(self) -> int:
        """Parameter count (tied embeddings counted once)."""
        attn = self.dim * self.head_dim * (2 * self.n_heads + 2 * self.n_kv_heads)
        layer = attn + 3 * self.dim * self.ffn_hidden + 2 * self.dim
        emb = self.vocab_size * self.dim * (1 if self.tie_embeddings else 2)
        return self.n_layers * layer + emb + self.dim


_LLAMA3_ROPE = {"rope_type": "llama3", "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192}

PRESETS: dict[str, ModelArgs] = {
    # byte-level pairs trained by engine.train (vocab 256 bytes + specials, padded to 264)
    "test-target": ModelArgs(dim=48, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=128, max_seq_len=256),
    "test-draft": ModelArgs(dim=32, n_layers=1, n_heads=2, n_kv_heads=1, ffn_hidden=64, max_seq_len=256),
    "tiny-target": ModelArgs(dim=192, n_layers=6, n_heads=6, n_kv_heads=2, ffn_hidden=512, max_seq_len=1024),
    "tiny-draft": ModelArgs(dim=128, n_layers=1, n_heads=4, n_kv_heads=2, ffn_hidden=384, max_seq_len=1024),
    "gpu-target": ModelArgs(dim=1024, n_layers=12, n_heads=16, n_kv_heads=4, ffn_hidden=2816, max_seq_len=2048),
    "gpu-draft": ModelArgs(dim=512, n_layers=4, n_heads=8, n_kv_heads=2, ffn_hidden=1408, max_seq_len=2048),
    # real shapes (random weights in benchmarks; real weights through checkpoints.load_hf_llama)
    "llama-3.2-1b": ModelArgs(
        vocab_size=128256, dim=2048, n_layers=16, n_heads=32, n_kv_heads=8, ffn_hidden=8192,
        rope_theta=500000.0, rope_scaling={**_LLAMA3_ROPE, "factor": 32.0}, tie_embeddings=True,
        max_seq_len=131072,
    ),
    "llama-3.1-8b": ModelArgs(
        vocab_size=128256, dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, ffn_hidden=14336,
        rope_theta=500000.0, rope_scaling={**_LLAMA3_ROPE, "factor": 8.0}, max_seq_len=131072,
    ),
    "llama-3.1-70b": ModelArgs(
        vocab_size=128256, dim=8192, n_layers=80, n_heads=64, n_kv_heads=8, ffn_hidden=28672,
        rope_theta=500000.0, rope_scaling={**_LLAMA3_ROPE, "factor": 8.0}, max_seq_len=131072,
    ),
}


def rope_inv_freq(args: ModelArgs) -> Tensor:
    """Inverse frequencies, with HF's "llama3" long-context scaling when the config asks for it."""
    d = args.head_dim
    inv = 1.0 / (args.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    sc = args.rope_scaling
    if not sc or sc.get("rope_type", sc.get("type")) in (None, "default"):
        return inv.float()
    if sc.get("rope_type", sc.get("type")) != "llama3":
        raise ValueError(f"unsupported rope_scaling {sc!r} (only 'llama3')")
    factor, lo, hi = sc["factor"], sc["low_freq_factor"], sc["high_freq_factor"]
    old = sc["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv
    scaled = torch.where(wavelen > old / lo, inv / factor, inv)
    smooth = (old / wavelen - lo) / (hi - lo)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old / hi) & (wavelen <= old / lo)
    return torch.where(medium, smoothed, scaled).float()


class Block(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.attention_norm = RMSNorm(args.dim, args.norm_eps)
        self.attention = Attention(args.dim, args.n_heads, args.n_kv_heads, args.head_dim)
        self.ffn_norm = RMSNorm(args.dim, args.norm_eps)
        self.feed_forward = FeedForward(args.dim, args.ffn_hidden)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, positions: Tensor | None,
                mask: Tensor | None) -> Tensor:
        x = x + self.attention(self.attention_norm(x), cos, sin, positions, mask)
        return x + self.feed_forward(self.ffn_norm(x))



class Transformer(nn.Module):
    """The decoder: token embedding, `n_layers` Blocks, final norm, output head."""

    rope_cos: Tensor
    rope_sin: Tensor

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList(Block(args) for _ in range(args.n_layers))
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.output = nn.Linear(args.dim, args.vocab_size, bias=False)
        if args.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        self.buffers_version = 0
        self._build_rope(args.max_seq_len)
        self.cache_batch = 0
        self.cache_len = 0
        self.gemv: GemvConfigs | None = None

    def _build_rope(self, length: int, device: torch.device | str | None = None) -> None:
        inv = rope_inv_freq(self.args).to(device)
        freqs = torch.outer(torch.arange(length, device=device, dtype=torch.float32), inv)
        emb = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("rope_cos", emb.cos(), persistent=False)
        self.register_buffer("rope_sin", emb.sin(), persistent=False)
        self.buffers_version = getattr(self, "buffers_version", 0) + 1

    @property
    def dtype(self) -> torch.dtype:
        return self.tok_embeddings.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.tok_embeddings.weight.device

    @property
    def blocks(self) -> list[Block]:
        """The layers, typed (`self.layers` is the ModuleList their parameter names come from)."""
        return cast("list[Block]", list(self.layers))

    @property
    def cache_dtype(self) -> torch.dtype | None:
        """The storage dtype of the KV caches (None before `setup_caches`)."""
        cache = self.blocks[0].attention.kv_cache if self.layers else None
        return cache.k.dtype if cache is not None else None

    def setup_caches(self, max_batch_size: int, max_seq_len: int, kv_dtype: str | torch.dtype | None = None) -> None:
        """(Re)allocate every layer's static KV cache. kv_dtype: fp32|bf16|fp16|int8 (default: weights')."""
        if isinstance(kv_dtype, str):
            if kv_dtype not in KV_DTYPES:
                raise ValueError(f"unknown kv dtype {kv_dtype!r}; allowed: {sorted(KV_DTYPES)}")
            kv_dtype = KV_DTYPES[kv_dtype]
        kv_dtype = kv_dtype or self.dtype
        if max_seq_len > self.rope_cos.shape[0]:
            self._build_rope(max_seq_len, self.device)
        a = self.args
        for layer in self.blocks:
            layer.attention.kv_cache = KVCache(max_batch_size, a.n_kv_heads, max_seq_len, a.head_dim,
                                               kv_dtype, self.dtype, self.device)
        self.cache_batch, self.cache_len = max_batch_size, max_seq_len
        self.buffers_version += 1  # captured CUDA graphs of older buffers must not run again

    def use_attention(self, kernel: str) -> Transformer:
        """Pick the attention kernel of cached passes (ATTENTION_KERNELS); training passes keep SDPA."""
        if kernel not in ATTENTION_KERNELS:
            raise ValueError(f"unknown attention kernel {kernel!r}; allowed: {list(ATTENTION_KERNELS)}")
        for layer in self.blocks:
            layer.attention.kernel = kernel
        self.buffers_version += 1  # graphs captured with the other kernel must not replay
        return self

    def gemv_shapes(self) -> list[tuple[int, int, bool]]:
        """(rows, cols, swiglu) of every weight a one-row pass multiplies, for kernels.tune_gemv."""
        shapes: set[tuple[int, int, bool]] = {(*self.output.weight.shape, False)}
        for layer in self.blocks:
            att, ffn = layer.attention, layer.feed_forward
            qkv = [att.wqkv] if att.wqkv is not None else [att.wq.weight, att.wk.weight, att.wv.weight]
            ffw = [(ffn.w13, True)] if ffn.w13 is not None else [(ffn.w1.weight, False), (ffn.w3.weight, False)]
            for w, swiglu in [(w, False) for w in qkv] + [(att.wo.weight, False), (ffn.w2.weight, False)] + ffw:
                shapes.add((w.shape[0], w.shape[1], swiglu))
        return sorted(shapes)

    def use_gemv(self, configs: GemvConfigs | None = None, enabled: bool = True) -> Transformer:
        """One-row passes (batch-1 decode) multiply through kernels.gemv, with the tile `configs` gives per
        weight shape (kernels.tune_gemv's choice; default tile otherwise). enabled=False: back to F.linear."""
        if enabled and not kernels.available(self.device):
            raise RuntimeError("the Triton GEMV needs triton and a CUDA device (or TRITON_INTERPRET=1)")
        self.gemv = dict(configs or {}) if enabled else None
        for layer in self.blocks:
            layer.attention.gemv = self.gemv
            layer.feed_forward.gemv = self.gemv
        self.buffers_version += 1  # graphs captured with the other matmuls must not replay
        return self

    def fuse_projections(self) -> Transformer:
        """Inference layout: fused q/k/v and gate/up matmuls (as gpt-fast fuses wqkv). Call after the
        model is on its device and dtype (moving it afterwards would un-share the views); training and
        loading are unaffected (the parameters keep their names and shapes)."""
        for layer in self.blocks:
            layer.attention.fuse()
            layer.feed_forward.fuse()
        self.buffers_version += 1  # graphs captured before must not replay
        return self

    def forward(self, tokens: Tensor, positions: Tensor | None = None, *, return_hidden: bool = False,
                logit_index: Tensor | None = None) -> Tensor | tuple[Tensor, Tensor]:
        """Logits [B, T, V] (at least fp32) for tokens [B, T]; optionally the final-norm hidden states too.

        positions=None: plain causal pass, no cache (training). positions [B]: start position of each
        sequence; positions [B, T]: explicit positions. With positions the K/V are written into the
        cache at those positions and each query at position p sees cached keys 0..p of its sequence.
        logit_index [B]: compute logits only at that index of T for each row (returns [B, 1, V]).
        """
        bsz, t = tokens.shape
        mask = None
        if positions is None:
            pos = torch.arange(t, device=tokens.device).expand(bsz, t)
        else:
            if self.cache_batch < bsz:
                raise RuntimeError("call setup_caches(batch, max_seq_len) before a cached forward")
            pos = positions[:, None] + torch.arange(t, device=tokens.device) if positions.dim() == 1 else positions
            keys = torch.arange(self.cache_len, device=tokens.device)
            mask = (keys[None, None, :] <= pos[:, :, None]).unsqueeze(1)  # [B, 1, T, S]
        cos = self.rope_cos[pos].to(self.dtype).unsqueeze(1)
        sin = self.rope_sin[pos].to(self.dtype).unsqueeze(1)
        x = self.tok_embeddings(tokens)
        for layer in self.layers:
            x = layer(x, cos, sin, pos if positions is not None else None, mask)
        h = self.norm(x)
        if logit_index is not None:
            h = h.gather(1, logit_index.view(bsz, 1, 1).expand(bsz, 1, h.shape[-1]))
        logits = project(h, self.output, self.gemv)
        if logits.dtype in (torch.bfloat16, torch.float16):
            logits = logits.float()  # sampling maths in fp32 (fp64 models keep fp64)
        return (logits, h) if return_hidden else logits


def init_weights(model: Transformer, std: float = 0.02) -> Transformer:
    """GPT-2 style init: N(0, std), residual output projections scaled by 1/sqrt(2 * n_layers)."""
    resid_std = std / math.sqrt(2 * model.args.n_layers)
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            nn.init.ones_(p)
        elif name.endswith(("wo.weight", "w2.weight")):
            nn.init.normal_(p, 0.0, resid_std)
        else:
            nn.init.normal_(p, 0.0, std)
    return model


def build_model(args: ModelArgs, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                seed: int | None = None) -> Transformer:
    """A randomly initialised model (seeded when `seed` is given), built directly in `dtype` on `device`.

    Built on the meta device first so an 8B-shaped model never exists in fp32 or on the wrong device.
    """
    if seed is not None:
        torch.manual_seed(seed)
    with torch.device("meta"):
        model = Transformer(args)
    model = model.to(dtype=dtype).to_empty(device=device)
    if args.tie_embeddings:
        model.output.weight = model.tok_embeddings.weight
    model._build_rope(args.max_seq_len, device)
    with torch.no_grad():
        init_weights(model)
    return model
