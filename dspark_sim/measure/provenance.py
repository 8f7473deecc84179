"""Where a measurement was taken: the engine's version, the device, and the engine's model in the
simulator's schema. Every profile records them, so `calibrate` and `validate` can refuse a profile
from another device or engine version."""

from __future__ import annotations

import hashlib
import os
import platform
from pathlib import Path

import torch

import dspark_sim
from dspark_sim.config.measurements import DeviceInfo
from dspark_sim.config.schema import DType, ModelSpec
from dspark_sim.engine.model import ModelArgs

_ENGINE_FILES = ("model.py", "layers.py", "generate.py", "loop.py", "step.py", "sampling.py", "caches.py", "clock.py",
                 "cudagraphs.py")
#: the weight dtypes a profile names (others are recorded as fp32, the schema's default)
DTYPE_NAMES: dict[torch.dtype, DType] = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def engine_version() -> str:
    """Package version plus a hash of the engine's source: a profile goes stale when either changes."""
    h = hashlib.sha256()
    here = Path(__file__).resolve().parent.parent / "engine"
    for name in _ENGINE_FILES:
        h.update((here / name).read_bytes())
    return f"{dspark_sim.__version__}+{h.hexdigest()[:10]}"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def _llc_mb() -> float:
    best = 0.0
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    for idx in base.glob("index*"):
        try:
            size = (idx / "size").read_text().strip()
        except OSError:
            continue
        mult = {"K": 1024, "M": 1024**2, "G": 1024**3}.get(size[-1], 1)
        num = float(size[:-1]) if size[-1] in "KMG" else float(size)
        best = max(best, num * mult / 1e6)
    return best


def device_info(device: torch.device) -> DeviceInfo:
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        return DeviceInfo(kind="cuda", name=p.name, torch_version=torch.__version__, threads=p.multi_processor_count,
                          memory_gb=p.total_memory / 1e9, onchip_mb=getattr(p, "L2_cache_size", 0) / 1e6)
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    return DeviceInfo(kind="cpu", name=_cpu_name(), torch_version=torch.__version__, threads=torch.get_num_threads(),
                      memory_gb=mem, onchip_mb=_llc_mb())


def dtype_name(dtype: torch.dtype) -> DType:
    return DTYPE_NAMES.get(dtype, "fp32")


def model_spec(args: ModelArgs, name: str, weight_dtype: torch.dtype, kv_dtype: DType | None = None) -> ModelSpec:
    """The engine's architecture in the simulator's schema (so the cost model prices the same model)."""
    wd = dtype_name(weight_dtype)
    return ModelSpec(
        name=name, num_layers=args.n_layers, hidden_size=args.dim, num_heads=args.n_heads,
        num_kv_heads=args.n_kv_heads, head_dim=args.head_dim, ffn_hidden_size=args.ffn_hidden,
        vocab_size=args.vocab_size, tie_embeddings=args.tie_embeddings, weight_dtype=wd,
        kv_dtype=kv_dtype or wd, activation_dtype=wd, source="dspark-sim engine",
    )
