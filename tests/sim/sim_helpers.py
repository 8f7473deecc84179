"""Small, fast scenarios for the simulator tests (no data outside the repository, no bundled profiles needed)."""

from __future__ import annotations

import copy
from typing import Any

import yaml

from dspark_sim.config.loader import apply_overrides, load_model_preset, scenario_from_dict
from dspark_sim.config.schema import Scenario
from dspark_sim.core.analytic import kv_bytes_per_token_per_gpu
from dspark_sim.core.costmodel import StepCoster, stats_of

#: an H200-like device, figures from the H200 SXM datasheet (inline so tests do not depend on profiles)
HARDWARE: dict[str, Any] = {
    "name": "test-gpu",
    "memory_capacity_gb": 141.0,
    "memory_bandwidth_gbps": 4800.0,
    "onchip_capacity_mb": 60.0,
    "onchip_bandwidth_gbps": 12000.0,
    "peak_tflops": {"bf16": 989.0, "fp8": 1979.0},
    "interconnect_bandwidth_gbps": 450.0,
}


def model(name: str = "llama-3.2-1b") -> dict:
    return load_model_preset(name).model_dump(mode="json")


def base_dict(**top: Any) -> dict:
    d: dict[str, Any] = {
        "name": "test",
        "seed": 1,
        "deployment": {
            "hardware": copy.deepcopy(HARDWARE),
            "model": model(),
            "drafter": {"kind": "eagle", "num_layers": 1},
            "max_batch_size": 64,
            "activation_reserve_gb": 0.0,
            "memory_utilisation": 1.0,
        },
        "acceptance": {"kind": "iid", "alpha": 0.7},
        "policy": {"kind": "fixed", "gamma": 3},
        "workload": {
            "arrivals": {"kind": "poisson", "rate_per_s": 50.0},
            "num_requests": 60,
            "prompt_tokens": {"kind": "uniform", "min_tokens": 16, "max_tokens": 400},
            "output_tokens": {"kind": "uniform", "min_tokens": 1, "max_tokens": 120},
        },
        "simulation": {"per_request_output": "jsonl"},
    }
    d.update(top)
    return d


def with_sets(d: dict, *sets: str) -> dict:
    return apply_overrides(d, list(sets))


def scenario(d: dict | None = None, *sets: str) -> Scenario:
    return scenario_from_dict(with_sets(d or base_dict(), *sets), "test")


def shrink_kv(d: dict, kv_tokens: int) -> dict:
    """Size device memory so that about `kv_tokens` KV slots remain after the weights."""
    d = copy.deepcopy(d)
    sc = scenario_from_dict(d, "test")
    dep = sc.deployment
    coster = StepCoster(dep.model, dep.drafter, dep.hardware, dep.tensor_parallel)
    weights = coster.target_stats.weight_bytes_total / dep.tensor_parallel
    if coster.draft_arch is not None:
        weights += stats_of(coster.draft_arch).weight_bytes_total / dep.tensor_parallel
    per_tok = kv_bytes_per_token_per_gpu(coster)
    if coster.draft_arch is not None and coster.draft_arch.sliding_window_tokens is None:
        per_tok += stats_of(coster.draft_arch).kv_bytes_per_token
    need = weights + per_tok * kv_tokens + dep.activation_reserve_gb * 1e9
    d["deployment"]["hardware"]["memory_capacity_gb"] = need / 1e9 / dep.memory_utilisation
    return d


def write(tmp_path, d: dict, name: str = "scenario.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(d, sort_keys=False))
    return p
