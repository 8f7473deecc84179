"""Bundled hardware profiles and model presets: they validate, they are named after their file, their
figures carry a source, and the parameter counts derived from each architecture match the published ones.
"""

from __future__ import annotations

import re

import pytest

from dspark_sim.config.loader import (
    hardware_profiles_dir,
    list_hardware_profiles,
    list_model_presets,
    load_hardware_profile,
    load_model_preset,
    model_presets_dir,
)
from dspark_sim.core.models import kv_bytes_per_token_per_layer, model_stats

EXPECTED_PROFILES = {"h200-sxm", "h100-sxm", "a100-80gb-sxm", "b200", "mi300x", "l40s", "cpu-generic"}

# Published total parameter counts (parameters, not bytes). Where the publisher rounds, so does this table.
PUBLISHED_TOTAL = {
    # meta-llama/Llama-3.2-1B model card: 1.23B (Hugging Face safetensors count 1,235,814,400)
    "llama-3.2-1b": 1.23e9,
    # meta-llama/Llama-3.1-8B model card: 8.03B (safetensors count 8,030,261,248)
    "llama-3.1-8b": 8.03e9,
    # meta-llama/Llama-3.1-70B: 70.6B (safetensors count 70,553,706,496; the card rounds to 70B)
    "llama-3.1-70b": 70.6e9,
    # Qwen3 model cards (Qwen/Qwen3-*): "Number of Parameters" 0.6B / 1.7B / 4.0B / 8.2B / 14.8B
    "qwen3-0.6b": 0.6e9,
    "qwen3-1.7b": 1.7e9,
    "qwen3-4b": 4.0e9,
    "qwen3-8b": 8.2e9,
    "qwen3-14b": 14.8e9,
    # Mistral AI, "Mixtral of experts" (Dec 2023) and arXiv 2401.04088: 46.7B total
    "mixtral-8x7b": 46.7e9,
    # DeepSeek-V3 technical report (arXiv 2412.19437): 671B total, excluding the 14B MTP module
    "deepseek-v3": 671e9,
    # deepseek-ai/DeepSeek-V4-Flash model card / DeepSeek-V4 report (arXiv 2606.19348): 284B total
    "deepseek-v4-flash": 284e9,
}

# Published activated parameters per token of the MoE presets.
PUBLISHED_ACTIVE = {
    "mixtral-8x7b": 12.9e9,  # Mistral AI, "Mixtral of experts": 12.9B active of 46.7B
    "deepseek-v3": 37e9,  # DeepSeek-V3 report: 37B activated of 671B
    "deepseek-v4-flash": 13e9,  # DeepSeek-V4-Flash model card: 13B activated of 284B
}

TOLERANCE = 0.02
# DeepSeek-V4-Flash's active count needs more room. Counting its real modules (attention 118.3M per layer
# on average incl. compressor and indexer, 7 experts x 25.2M, embedding and head 1.06B) gives ~13.8B with
# both embedding tables (~13.3B without the input lookup table), which DeepSeek states as "13B"; the
# preset's mapping onto MLA gives 13.75B (+5.7%). The total (284.3B) still passes at 2%.
ACTIVE_TOLERANCE = {"deepseek-v4-flash": 0.08}


# ------------------------------------------------------------------------------------------------
# Hardware profiles
# ------------------------------------------------------------------------------------------------


def test_expected_hardware_profiles_are_bundled():
    assert set(list_hardware_profiles()) >= EXPECTED_PROFILES


@pytest.mark.parametrize("name", list_hardware_profiles())
def test_hardware_profile_validates_and_is_named_after_its_file(name):
    profile = load_hardware_profile(name)
    assert profile.name == name
    assert profile.description
    assert profile.peak_tflops, "a profile needs at least one matmul dtype"
    if profile.kind == "gpu":
        assert "bf16" in profile.peak_tflops
        # on a GPU the on-chip tier is faster than HBM/GDDR, or it would not be worth modelling
        assert profile.onchip_bandwidth_gbps > profile.memory_bandwidth_gbps
    # dense peaks only: a lower-precision path is never slower than a wider one
    order = ["fp32", "bf16", "fp8", "fp4"]
    present = [profile.peak_tflops[d] for d in order if d in profile.peak_tflops]
    assert present == sorted(present)


_NUMBER_LINE = re.compile(r"^\s*([a-z_0-9]+):\s*(-?[0-9][0-9.eE+-]*)\s*(#.*)?$")


@pytest.mark.parametrize("name", list_hardware_profiles())
def test_every_hardware_figure_has_a_source_comment(name):
    """Every number in a profile has a comment beside it saying where it comes from (or that it is an
    assumption): the profiles are data that others will trust."""
    lines = (hardware_profiles_dir() / f"{name}.yaml").read_text().splitlines()
    bare = [line for line in lines if (m := _NUMBER_LINE.match(line)) and not m.group(3)]
    assert not bare, f"{name}: figures without a source comment: {bare}"


def test_h200_efficiency_comes_from_the_measurements():
    h200 = load_hardware_profile("h200-sxm")
    # measured on one H200 SXM: device-to-device copy 4.27-4.3 TB/s of 4.8; 8192^3 bf16 matmul 769-798 of 989 TFLOP/s
    assert 4.27 / 4.8 - 0.01 <= h200.efficiency.memory_bandwidth <= 4.3 / 4.8 + 0.01
    assert 769 / 989.4 - 0.01 <= h200.efficiency.compute <= 798 / 989.4 + 0.01
    assert h200.memory_bandwidth_gbps == 4800
    assert h200.interconnect_bandwidth_gbps == 450  # NVLink 4: 900 GB/s bidirectional


# ------------------------------------------------------------------------------------------------
# Model presets
# ------------------------------------------------------------------------------------------------


def test_every_preset_has_a_published_total():
    assert set(list_model_presets()) == set(PUBLISHED_TOTAL)


@pytest.mark.parametrize("name", list_model_presets())
def test_model_preset_validates_and_is_named_after_its_file(name):
    spec = load_model_preset(name)
    assert spec.name == name
    assert (model_presets_dir() / f"{name}.yaml").exists()
    assert spec.source


@pytest.mark.parametrize("name", sorted(PUBLISHED_TOTAL))
def test_total_params_match_published(name):
    stats = model_stats(load_model_preset(name))
    published = PUBLISHED_TOTAL[name]
    assert stats.total_params == pytest.approx(published, rel=TOLERANCE), (
        f"{name}: {stats.total_params / 1e9:.3f}B vs published {published / 1e9:.2f}B"
    )


@pytest.mark.parametrize("name", sorted(PUBLISHED_ACTIVE))
def test_active_params_match_published(name):
    stats = model_stats(load_model_preset(name))
    published = PUBLISHED_ACTIVE[name]
    tol = ACTIVE_TOLERANCE.get(name, TOLERANCE)
    assert stats.active_params == pytest.approx(published, rel=tol), (
        f"{name}: {stats.active_params / 1e9:.3f}B active vs published {published / 1e9:.2f}B"
    )


def test_dense_presets_are_fully_active():
    for name in list_model_presets():
        spec = load_model_preset(name)
        if spec.moe is None:
            stats = model_stats(spec)
            assert stats.active_params == stats.total_params


def test_exact_counts_where_the_checkpoint_count_is_public():
    # Hugging Face safetensors parameter counts of the Llama checkpoints: the formulas are exact there.
    assert model_stats(load_model_preset("llama-3.2-1b")).total_params == 1_235_814_400
    assert model_stats(load_model_preset("llama-3.1-8b")).total_params == 8_030_261_248
    assert model_stats(load_model_preset("llama-3.1-70b")).total_params == 70_553_706_496


def test_qwen3_non_embedding_params_match_the_model_cards():
    # Qwen3 model cards also state non-embedding parameters: 0.44B / 1.4B / 3.6B / 6.95B / 13.2B
    published = {
        "qwen3-0.6b": 0.44e9,
        "qwen3-1.7b": 1.4e9,
        "qwen3-4b": 3.6e9,
        "qwen3-8b": 6.95e9,
        "qwen3-14b": 13.2e9,
    }
    for name, non_embedding in published.items():
        s = model_stats(load_model_preset(name))
        body = s.total_params - s.embedding_params - s.lm_head_params
        assert body == pytest.approx(non_embedding, rel=TOLERANCE), name


# ------------------------------------------------------------------------------------------------
# KV cache bytes
# ------------------------------------------------------------------------------------------------


def test_llama_3_1_8b_kv_bytes_per_token():
    spec = load_model_preset("llama-3.1-8b")
    assert spec.kv_dtype == "bf16"
    # 32 layers x (K and V) x 8 KV heads x 128 dims x 2 bytes
    assert model_stats(spec).kv_bytes_per_token == 32 * 2 * 8 * 128 * 2 == 131072


def test_deepseek_v3_kv_bytes_per_token():
    spec = load_model_preset("deepseek-v3")
    bytes_per_element = {"bf16": 2, "fp8": 1}[spec.kv_dtype]
    # MLA caches the 512-wide latent plus the 64-wide decoupled RoPE key, per layer, 61 layers
    expected = (512 + 64) * 61 * bytes_per_element
    assert model_stats(spec).kv_bytes_per_token == expected
    assert expected == 70272  # the preset caches in bf16, as DeepSeek's reference inference code does
    assert model_stats(spec).kv_bytes_per_token == 61 * kv_bytes_per_token_per_layer(spec)


def test_deepseek_v4_flash_kv_bytes_per_token():
    spec = load_model_preset("deepseek-v4-flash")
    s = model_stats(spec)
    # stored per token: 2 sliding-window layers at 512 B (fp8, uncapped by the window here) plus the 41
    # compressed layers: 21 x (576 + 128) / 4 + 20 x 576 / 128 = 3786 B (see the preset's comments)
    assert s.kv_bytes_per_token == pytest.approx(2 * 512 + 3786, rel=0.01)
    # far below what the same attention would cache uncompressed
    assert s.kv_bytes_per_token < 43 * 512 / 4
