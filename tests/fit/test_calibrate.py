"""Calibration recovers the cost model's parameters from timings, says what it cannot identify, and
refuses profiles it must not use."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dspark_sim.config.errors import InputError
from dspark_sim.config.measurements import DeviceInfo, EngineProfile, PassSample, StepSample
from dspark_sim.config.schema import ModelSpec
from dspark_sim.core.costmodel import forward_cost, multi_token_share
from dspark_sim.core.passes import BatchShape
from dspark_sim.fit.calibrate import calibrate, check_profile_matches, load_profile
from dspark_sim.fit.params import base_profile_for, hardware_from_params
from dspark_sim.fit.pricing import (
    dspark_steps_without_scheduler,
    predict_samples,
    predict_steps,
    sample_shapes,
)

TARGET = ModelSpec(name="t", num_layers=6, hidden_size=512, num_heads=8, num_kv_heads=2, head_dim=64,
                   ffn_hidden_size=1408, vocab_size=264, weight_dtype="fp32", kv_dtype="fp32", activation_dtype="fp32")
DRAFT = TARGET.model_copy(update={"name": "d", "num_layers": 1, "hidden_size": 256, "ffn_hidden_size": 704,
                                  "num_heads": 4, "num_kv_heads": 2})
DEVICE = DeviceInfo(kind="cpu", name="synthetic", torch_version="x", threads=2, memory_gb=16, onchip_mb=8)
TRUE = np.array([25.0, 300.0, 0.15, 40.0, 30.0])  # GB/s, GB/s, TFLOP/s, us, us


def _profile(noise: float = 0.0, batches=(1, 2, 4, 8, 16, 32), contexts=(64, 512, 2048)) -> EngineProfile:
    rng = np.random.default_rng(0)
    samples = []
    for role in ("target", "draft"):
        for b in batches:
            for q in (1, 3, 6, 9):
                for c in contexts:
                    samples.append(PassSample(role=role, batch_size=b, query_tokens=q, context_tokens=c,
                                              attended_tokens=c + q, kv_dtype="fp32", times_s=[1.0],
                                              median_s=1.0, spread=0.0))
    prof = EngineProfile(engine_version="v", device=DEVICE, weight_dtype="fp32", target=TARGET, draft=DRAFT,
                         samples=samples)
    base = hardware_from_params(_base(prof), TRUE, "truth", "fp32", 0.0)
    times = predict_samples(sample_shapes(prof), base) * np.exp(noise * rng.standard_normal(len(samples)))
    for s, t in zip(prof.samples, times, strict=True):
        s.median_s = float(t)
        s.times_s = [float(t)]
    return prof


def _base(prof):
    return base_profile_for(prof)


def test_recovers_known_parameters():
    hw, rep = calibrate(_profile())
    assert rep.median_abs_error_pct < 0.5
    fitted = {p.name: p for p in rep.parameters}
    assert fitted["memory_bandwidth_gbps"].value == pytest.approx(TRUE[0], rel=0.05)
    assert fitted["tflops"].value == pytest.approx(TRUE[2], rel=0.05)
    assert fitted["per_layer_us"].value == pytest.approx(TRUE[4], rel=0.10)
    assert hw.efficiency.memory_bandwidth == 1.0  # effective figures, not datasheet ones


def test_noise_is_tolerated():
    _, rep = calibrate(_profile(noise=0.03))
    assert rep.median_abs_error_pct < 5


def test_unidentifiable_parameter_is_reported():
    """Weights and KV never fit on chip here (8 MB) except tiny shapes... make it impossible: no
    working set fits on chip, so the on-chip bandwidth cannot be identified."""
    prof = _profile()
    prof = prof.model_copy(update={"device": DEVICE.model_copy(update={"onchip_mb": 0.0})})
    _, rep = calibrate(prof)
    onchip = next(p for p in rep.parameters if p.name == "onchip_bandwidth_gbps")
    assert not onchip.identified and "not identified" in onchip.note


def test_step_overheads_are_fitted_from_whole_steps():
    prof = _profile()
    prof.steps = [StepSample(batch_size=1, gamma=0, step_s=0.01, draft_s=0.0, verify_s=0.0, context_tokens=64,
                             attended_tokens=80, baseline_loop=True)]
    hw, rep = calibrate(prof)
    assert hw.overheads.per_baseline_step_us is not None
    assert any(p.name == "per_baseline_step_us" and p.identified for p in rep.parameters)


def test_sps_table_is_decreasing():
    _, rep = calibrate(_profile())
    budgets = sorted(rep.sps_table)
    values = [rep.sps_table[b] for b in budgets]
    assert len(values) > 3 and all(a >= b for a, b in zip(values, values[1:], strict=False))


def test_bad_profiles(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_profile(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="not a JSON profile"):
        load_profile(bad)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"kind": "run"}))
    with pytest.raises(InputError, match="engine profile"):
        load_profile(other)
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"kind": "engine-profile", "schema_version": 0}))
    with pytest.raises(InputError, match="schema_version"):
        load_profile(old)
    prof = _profile()
    prof.samples = [s for s in prof.samples if s.role == "draft"]
    incomplete = tmp_path / "incomplete.json"
    incomplete.write_text(prof.model_dump_json())
    with pytest.raises(InputError, match="incomplete"):
        load_profile(incomplete)
    with pytest.raises(InputError, match="measured on 'cpu'"):
        check_profile_matches(_profile(), device_kind="cuda")
    with pytest.raises(InputError, match="re-run"):
        check_profile_matches(_profile(), engine_version="other")
    gpu = _profile().model_copy(update={"device": DEVICE.model_copy(update={"kind": "cuda"}), "cuda_graphs": True})
    check_profile_matches(gpu, device_kind="cuda", cuda_graphs=True)
    with pytest.raises(InputError, match="profile timed CUDA-graph replays; .*--no-cuda-graphs"):
        check_profile_matches(gpu, device_kind="cuda", cuda_graphs=False)
    with pytest.raises(InputError, match="unrecorded mode"):
        check_profile_matches(gpu.model_copy(update={"cuda_graphs": None}), cuda_graphs=True)
    check_profile_matches(_profile(), device_kind="cpu", cuda_graphs=False)  # a CPU profile has no mode to match


def test_gpu_profile_fits_the_per_layer_cost_of_multi_token_passes():
    """On a GPU a pass of several tokens pays a set-up per layer (tiled GEMM kernels) rather than
    re-reading its weights: calibration fits that cost (target and draft differ in bytes per layer,
    which tells it from bandwidth) and keeps the weight re-read factor at 1."""
    prof = _profile(contexts=(64, 512))
    gpu = DEVICE.model_copy(update={"kind": "cuda", "name": "synthetic gpu"})
    prof = prof.model_copy(update={"device": gpu})
    truth = hardware_from_params(_base(prof), TRUE, "truth", "fp32", 0.0)
    truth = truth.model_copy(update={"overheads": truth.overheads.model_copy(
        update={"per_layer_multi_token_us": 25.0})})
    times = predict_samples(sample_shapes(prof), truth)
    for s, t in zip(prof.samples, times, strict=True):
        s.median_s = float(t)
        s.times_s = [float(t)]
    hw, rep = calibrate(prof)
    fitted = {p.name: p for p in rep.parameters}
    assert rep.median_abs_error_pct < 1.0
    assert fitted["per_layer_multi_token_us"].identified
    assert fitted["per_layer_multi_token_us"].value == pytest.approx(25.0, rel=0.15)
    assert hw.multi_token_weight_reads == 1.0 and not fitted["multi_token_weight_reads"].identified
    # and on a CPU profile the opposite mechanism is the one fitted
    _, cpu_rep = calibrate(_profile())
    cpu = {p.name: p for p in cpu_rep.parameters}
    assert cpu["per_layer_multi_token_us"].value == 0.0 and not cpu["per_layer_multi_token_us"].identified


def _synthetic_gpu_profile(overheads: dict, **hardware):
    """A GPU profile timed exactly by the cost model with TRUE and these overheads / hardware fields, and
    that hardware."""
    prof = _profile(contexts=(64, 512))
    prof = prof.model_copy(update={"device": DEVICE.model_copy(update={"kind": "cuda", "name": "synthetic gpu"})})
    truth = hardware_from_params(_base(prof), TRUE, "truth", "fp32", 0.0)
    truth = truth.model_copy(update={**hardware, "overheads": truth.overheads.model_copy(update=overheads)})
    times = predict_samples(sample_shapes(prof), truth)
    for s, t in zip(prof.samples, times, strict=True):
        s.median_s = s.times_s[0] = float(t)
    return prof, truth


def test_gpu_profile_tells_multi_query_passes_from_multi_row_ones():
    """A GPU pass whose sequences carry several tokens each (a verify block) pays a further per-layer
    cost that a batch of one-token sequences does not (attention leaves its decode kernel): with both
    kinds of shapes in the profile, calibration fits the two costs apart."""
    prof, truth = _synthetic_gpu_profile({"per_layer_multi_token_us": 10.0, "per_layer_multi_query_us": 20.0})
    _, rep = calibrate(prof)
    fitted = {p.name: p for p in rep.parameters}
    assert rep.median_abs_error_pct < 1.0
    assert fitted["per_layer_multi_query_us"].identified
    assert fitted["per_layer_multi_query_us"].value == pytest.approx(20.0, rel=0.15)
    assert fitted["per_layer_multi_token_us"].value == pytest.approx(10.0, rel=0.25)
    # a one-token-a-sequence batch does not pay it
    wide = BatchShape(4.0, 4.0, 400.0, 400.0, 400.0, 400.0)  # 4 sequences x 1 token
    block = BatchShape(1.0, 4.0, 100.0, 100.0, 400.0, 400.0)  # 1 sequence x 4 tokens
    without = truth.model_copy(update={"overheads": truth.overheads.model_copy(
        update={"per_layer_multi_query_us": 0.0})})
    for shape, extra in ((wide, 0.0), (block, 20.0 * TARGET.num_layers * 1e-6)):
        gap = float(forward_cost(TARGET, truth, shape).time_s) - float(forward_cost(TARGET, without, shape).time_s)
        assert gap == pytest.approx(extra, abs=1e-12)


def test_scheduler_overhead_is_fitted_from_dspark_steps():
    """DSpark steps that take 150 us more than their fixed-gamma price (draft of gamma, verify at the
    recorded widths): calibration reports that as the scheduler's per-step time, and the simulator adds
    it to DSpark steps only."""
    prof = _profile()
    fixed = [StepSample(batch_size=b, gamma=g, step_s=0.01, draft_s=0.0, verify_s=0.0, context_tokens=64,
                        attended_tokens=80) for b in (1, 4) for g in (1, 3)]
    dspark = [StepSample(batch_size=b, gamma=5, step_s=1.0, draft_s=0.0, verify_s=0.0, context_tokens=64,
                         attended_tokens=80, policy="dspark", verify_counts={0: 3, 2: 5, 5: 2}) for b in (1, 4)]
    prof.steps = fixed + dspark
    hw0, _ = calibrate(prof)
    price = dspark_steps_without_scheduler(prof, hw0, dspark)
    for s, p in zip(dspark, price, strict=True):
        s.step_s = float(p) + 150e-6
    hw, rep = calibrate(prof)
    fit = next(p for p in rep.parameters if p.name == "per_scheduler_step_us")
    assert fit.identified and fit.value == pytest.approx(150.0, rel=0.02)
    assert hw.overheads.per_scheduler_step_us == pytest.approx(150.0, rel=0.02)
    assert [p["error_pct"] for p in rep.points if p["role"] == "step-dspark"] == pytest.approx([0.0, 0.0], abs=0.5)
    _, plain = calibrate(_profile())
    assert not next(p for p in plain.parameters if p.name == "per_scheduler_step_us").identified


def _profile_with_steps(per_step_us: float, gammas=(1, 3, 5), **overheads: float) -> EngineProfile:
    """The synthetic profile plus whole engine steps at batch 1/4/16 and `gammas` (0: the plain loop), timed
    as the cost model prices them with TRUE, `per_step_us` and the given further overheads."""
    prof = _profile()
    prof.steps = [StepSample(batch_size=b, gamma=g, step_s=1.0, draft_s=0.0, verify_s=0.0, context_tokens=64,
                             attended_tokens=80, baseline_loop=g == 0) for b in (1, 4, 16) for g in gammas]
    truth = hardware_from_params(_base(prof), TRUE, "truth", "fp32", per_step_us)
    truth = truth.model_copy(update={"overheads": truth.overheads.model_copy(update=overheads)})
    for s, t in zip(prof.steps, predict_steps(prof, truth, prof.steps), strict=True):
        s.step_s = float(t)
    return prof


def test_draft_pass_host_time_is_told_from_the_step_overhead():
    """Steps of several gammas: a host cost per draft pass grows with gamma, the per-step one does not;
    calibration fits both (whole steps generated with 80 us a draft pass and 300 us a step)."""
    prof = _profile_with_steps(300.0, per_draft_pass_us=80.0)
    hw, rep = calibrate(prof)
    fitted = {p.name: p for p in rep.parameters}
    assert fitted["per_draft_pass_us"].identified
    assert fitted["per_draft_pass_us"].value == pytest.approx(80.0, rel=0.1)
    assert fitted["per_step_us"].value == pytest.approx(300.0, rel=0.1)
    one_gamma = _profile()
    one_gamma.steps = prof.steps[:1]
    _, rep1 = calibrate(one_gamma)
    assert not next(p for p in rep1.parameters if p.name == "per_draft_pass_us").identified


def test_gpu_profile_fits_the_ramp_of_the_multi_token_cost():
    """Small GEMMs run kernels whose time grows with the rows up to a tile's height: a synthetic GPU whose
    multi-token set-up reaches its full value over 4 extra tokens is fitted so (a step from 2 tokens would
    miss the 2- and 3-token passes), and the cost model prices the ramp as documented."""
    assert list(multi_token_share([1, 2, 3, 5, 9], 4.0)) == [0.0, 0.25, 0.5, 1.0, 1.0]
    assert list(multi_token_share([1, 2, 9], 0.0)) == [0.0, 1.0, 1.0]  # 0: all of it from 2 tokens
    _, rep = calibrate(_synthetic_gpu_profile({"per_layer_multi_token_us": 40.0}, multi_token_ramp_tokens=4.0)[0])
    fitted = {p.name: p for p in rep.parameters}
    assert rep.median_abs_error_pct < 1.0
    assert fitted["multi_token_ramp_tokens"].identified
    assert fitted["multi_token_ramp_tokens"].value == pytest.approx(4.0, rel=0.2)
    # a GPU's steps run as captured graphs: no host cost per sequence is fitted there
    assert fitted["per_step_sequence_us"].value == 0.0 and "not fitted on a GPU" in fitted["per_step_sequence_us"].note
    # a CPU profile keeps the step (its weight re-reads start at 2 tokens)
    _, cpu_rep = calibrate(_profile())
    cpu = {p.name: p for p in cpu_rep.parameters}
    assert cpu["multi_token_ramp_tokens"].value == 0.0 and not cpu["multi_token_ramp_tokens"].identified


def test_per_sequence_step_host_time_is_told_from_the_step_overhead():
    """Steps of several batch sizes: a host cost per sequence grows with the batch, the per-step one does
    not; calibration fits both (whole steps generated with 40 us a sequence, 250 us a step and 80 us a
    draft pass), and says it cannot tell them apart from steps of one batch size."""
    prof = _profile_with_steps(250.0, per_draft_pass_us=80.0, per_step_sequence_us=40.0)
    hw, rep = calibrate(prof)
    fitted = {p.name: p for p in rep.parameters}
    assert fitted["per_step_sequence_us"].identified
    assert fitted["per_step_sequence_us"].value == pytest.approx(40.0, rel=0.1)
    assert fitted["per_step_us"].value == pytest.approx(250.0, rel=0.1)
    assert hw.overheads.per_step_sequence_us == pytest.approx(40.0, rel=0.1)
    one_batch = _profile()
    one_batch.steps = [s for s in prof.steps if s.batch_size == 4]
    _, rep1 = calibrate(one_batch)
    p1 = next(p for p in rep1.parameters if p.name == "per_step_sequence_us")
    assert not p1.identified and p1.value == 0.0 and "fewer than two batch sizes" in p1.note


def test_plain_loop_cost_per_sequence_is_told_from_its_step_overhead():
    """Plain-loop steps of several batch sizes: each row's next token costs time (a CPU's softmax and draw),
    the loop's fixed per-step cost does not grow with the batch; calibration fits both (steps generated with
    25 us a sequence and 60 us a step beside speculative ones), the cost model and the simulator charge it
    to plain steps only, and steps of one batch size cannot identify it."""
    prof = _profile_with_steps(250.0, gammas=(0, 1, 3, 5), per_draft_pass_us=80.0, per_step_sequence_us=40.0,
                               per_baseline_step_us=60.0, per_baseline_sequence_us=25.0)
    hw, rep = calibrate(prof)
    fitted = {p.name: p for p in rep.parameters}
    assert fitted["per_baseline_sequence_us"].identified
    assert fitted["per_baseline_sequence_us"].value == pytest.approx(25.0, rel=0.1)
    assert fitted["per_baseline_step_us"].value == pytest.approx(60.0, rel=0.15)
    assert fitted["per_step_sequence_us"].value == pytest.approx(40.0, rel=0.1)
    assert max(abs(p["error_pct"]) for p in rep.points if p["role"] == "step") < 1.0
    one_batch = _profile()
    one_batch.steps = [s for s in prof.steps if s.batch_size == 4]
    _, rep1 = calibrate(one_batch)
    p1 = next(p for p in rep1.parameters if p.name == "per_baseline_sequence_us")
    assert not p1.identified and p1.value == 0.0 and "plain-loop steps of fewer than two batch sizes" in p1.note
