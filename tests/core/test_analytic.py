"""The closed-form predictor: Leviathan's formula where its assumptions hold, sane shapes elsewhere."""

from __future__ import annotations

import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dspark_sim.config.loader import load_scenario
from dspark_sim.config.schema import (
    DrafterSpec,
    HistogramAcceptance,
    IIDAcceptance,
    PerPositionAcceptance,
    PerRequestAcceptance,
)
from dspark_sim.core.acceptance import expected_tokens, leviathan_expected_tokens, survival_curve
from dspark_sim.core.analytic import (
    memory_available_bytes,
    predict_grid,
    predict_scenario,
    speedup_from_times,
)
from dspark_sim.core.costmodel import StepCoster


@given(alpha=st.floats(0.0, 0.999), gamma=st.integers(0, 12))
@settings(max_examples=200, deadline=None)
def test_iid_tau_is_leviathan(alpha, gamma):
    tau = expected_tokens(IIDAcceptance(alpha=alpha), [gamma])[0]
    assert tau == pytest.approx(leviathan_expected_tokens(alpha, gamma), rel=1e-12)


@given(alpha=st.floats(0.0, 0.99), gamma=st.integers(1, 10), c=st.floats(0.0, 1.0))
@settings(max_examples=200, deadline=None)
def test_speedup_is_leviathan_walltime_formula(alpha, gamma, c):
    """Leviathan's assumptions: verify costs one target step, each draft token c target steps."""
    tau = expected_tokens(IIDAcceptance(alpha=alpha), [gamma])[0]
    got = speedup_from_times(tau, t_base=1.0, t_draft=gamma * c, t_verify=1.0)
    closed = (1 - alpha ** (gamma + 1)) / ((1 - alpha) * (gamma * c + 1))
    assert got == pytest.approx(closed, rel=1e-12)


def test_per_position_histogram_and_iid_agree():
    g = np.arange(0, 9)
    iid = expected_tokens(IIDAcceptance(alpha=0.6), g)
    pos = expected_tokens(PerPositionAcceptance(conditional=[0.6]), g)
    # histogram of accepted length for alpha=0.6 with unlimited proposals: geometric
    probs = [(0.6**j) * 0.4 for j in range(40)]
    probs[-1] = 1 - sum(probs[:-1])
    hist = expected_tokens(HistogramAcceptance(probabilities=probs), g)
    np.testing.assert_allclose(iid, pos, rtol=1e-12)
    np.testing.assert_allclose(iid, hist, rtol=1e-9)


def test_per_request_mixture_is_below_mean_alpha_iid_at_large_gamma():
    """Jensen: tau is convex in alpha at large gamma, so heterogeneity changes tau; check it's finite
    and that a very concentrated Beta matches the i.i.d. value."""
    tight = expected_tokens(PerRequestAcceptance(mean_alpha=0.7, concentration=1e6), [4])[0]
    assert tight == pytest.approx(leviathan_expected_tokens(0.7, 4), rel=1e-3)
    surv = survival_curve(PerRequestAcceptance(mean_alpha=0.7, concentration=5), 5)
    assert np.all(np.diff(surv) <= 0)


def test_costmodel_speedup_close_to_leviathan_when_weight_bound():
    """Batch 1, short context, memory-bound 8B target: verify ~ one decode step, so the cost model's
    speed-up matches Leviathan's with c = t_draft / t_target (within 2%)."""
    sc = load_scenario(None, ["acceptance={kind: iid, alpha: 0.8}"])
    dep = sc.deployment
    coster = StepCoster(dep.model, dep.drafter, dep.hardware, 1)
    grid = predict_grid(coster, sc.acceptance, [1], [128], [4])
    t_base = float(grid.baseline_step_s[0, 0, 0])
    c = float(grid.draft.time_s[0, 0, 0]) / 4 / t_base
    closed = (1 - 0.8**5) / ((1 - 0.8) * (4 * c + 1))
    assert float(grid.speedup[0, 0, 0]) == pytest.approx(closed, rel=0.02)


def test_predict_scenario_shapes():
    res = predict_scenario(load_scenario(None))
    assert len(res.points) == 18
    for p in res.points:
        assert p.best.speedup == max(s.speedup for s in p.by_gamma)
        assert p.best_gamma == p.best.gamma
    # speculation pays most at small batch and least at large batch with short context
    by = {(p.batch_size, p.context_tokens): p for p in res.points}
    assert by[(1, 1024)].best.speedup > by[(256, 1024)].best.speedup
    # large batch, short context: verify is compute-heavier, best gamma shrinks
    assert by[(256, 1024)].best_gamma <= by[(1, 1024)].best_gamma


def test_no_drafter_gives_no_speedup():
    sc = load_scenario(None, ["deployment.drafter={kind: none}"])
    res = predict_scenario(sc)
    for p in res.points:
        assert p.best.speedup == pytest.approx(1.0)


def test_draft_costs_rank_by_kind():
    """At gamma 5: parallel drafters cost less than autoregressive ones; n-gram is nearly free."""
    sc = load_scenario(None)
    dep = sc.deployment
    costs = {}
    for kind in ("eagle", "parallel_block", "dspark", "ngram"):
        coster = StepCoster(dep.model, DrafterSpec(kind=kind), dep.hardware, 1)
        costs[kind] = float(coster.draft(8, 5, 2048, 2.0).time_s)
    assert costs["ngram"] < costs["parallel_block"] <= costs["dspark"] < costs["eagle"]


def test_dspark_head_overhead_is_small_share_of_round():
    """DSpark paper: the sequential head adds 0.2-1.3% of round latency at batch 128 (contexts
    512-4096). Our cost model's share must be of that order (< 3%)."""
    sc = load_scenario(None)
    dep = sc.deployment
    block = StepCoster(dep.model, DrafterSpec(kind="parallel_block"), dep.hardware, 1)
    dspark = StepCoster(dep.model, DrafterSpec(kind="dspark"), dep.hardware, 1)
    for ctx in (512, 4096):
        head = float(dspark.draft(128, 5, ctx, 2.0).time_s - block.draft(128, 5, ctx, 2.0).time_s)
        round_s = float(dspark.draft(128, 5, ctx, 2.0).time_s + dspark.verify(128, 5, ctx).time_s)
        assert 0 < head / round_s < 0.03


def test_vectorised_rate():
    """Correctness of the vectorised path on a big grid (timing itself lives in benchmarks/)."""
    sc = load_scenario(None)
    dep = sc.deployment
    coster = StepCoster(dep.model, dep.drafter, dep.hardware, 1)
    b = np.arange(1, 501)
    c = np.linspace(128, 131072, 25).astype(int)
    g = np.arange(1, 9)
    t0 = time.perf_counter()
    grid = predict_grid(coster, sc.acceptance, b, c, g)
    assert grid.speedup.shape == (500, 25, 8)
    assert np.isfinite(grid.speedup).all() and (grid.speedup > 0).all()
    assert time.perf_counter() - t0 < 30  # generous: a hang guard, not a speed target


def test_replicated_draft_model_has_no_collectives_and_reads_all_its_weights():
    """drafter.replicated: at TP 4 a draft model's passes run on one GPU's worth of weights each (no
    all-reduce, 4x the bytes of a sharded pass), and each GPU stores the whole draft."""
    base = load_scenario(None, ["deployment.tensor_parallel=4",
                                "deployment.drafter={kind: draft_model, model: llama-3.2-1b}"])
    rep = load_scenario(None, ["deployment.tensor_parallel=4",
                               "deployment.drafter={kind: draft_model, model: llama-3.2-1b, replicated: true}"])
    costs = {}
    for name, sc in (("sharded", base), ("replicated", rep)):
        dep = sc.deployment
        coster = StepCoster(dep.model, dep.drafter, dep.hardware, 4)
        costs[name] = coster.draft(1, 4, 1024, 1.0)
    assert float(costs["sharded"].comm_s) > 0 and float(costs["replicated"].comm_s) == 0
    assert float(costs["replicated"].hbm_bytes) == pytest.approx(4 * float(costs["sharded"].hbm_bytes), rel=0.05)
    assert memory_available_bytes(rep) < memory_available_bytes(base)
