"""The simulator's execution-time predictor reproduces the shared cost model exactly."""

from __future__ import annotations

import numpy as np
import pytest

import dspark_sim.sim.run as run_mod
from dspark_sim.sim.costs import CostModelSPS, Costs
from dspark_sim.sim.metrics import summarize
from dspark_sim.sim.run import Simulation

from .sim_helpers import base_dict, model, scenario, with_sets

DEPLOYMENTS = {
    "dense-eagle": [],
    "dense-tp2-draft-model": ["deployment.tensor_parallel=2", "deployment.drafter.kind=draft_model",
                              "deployment.drafter.num_layers=1"],
    "onchip-eagle": ["deployment.drafter={kind: eagle, kv_onchip: true, weights_onchip: true}"],
    "ngram": ["deployment.drafter={kind: ngram}"],
    "moe-mla-dspark": ["deployment.tensor_parallel=8", "deployment.hardware.memory_capacity_gb=200",
                       "deployment.drafter={kind: dspark, num_layers: 3, moe_layers: true, sliding_window_tokens: 128}"],
    "tp4-replicated-draft-model": ["deployment.tensor_parallel=4", "deployment.drafter.kind=draft_model",
                                   "deployment.drafter.replicated=true"],
    "tp4-replicated-dspark": ["deployment.tensor_parallel=4",
                              "deployment.drafter={kind: dspark, num_layers: 1, replicated: true}"],
    "tp4-collective-launch": ["deployment.tensor_parallel=4", "deployment.hardware.collective_launch_us=10"],
    "multi-token-layer-cost": ["deployment.drafter.kind=draft_model", "deployment.drafter.num_layers=1",
                               "deployment.hardware.overheads.per_layer_multi_token_us=30"],
    "multi-token-ramp": ["deployment.drafter.kind=draft_model", "deployment.drafter.num_layers=1",
                         "deployment.hardware.overheads.per_layer_multi_token_us=30",
                         "deployment.hardware.multi_token_weight_reads=1.8",
                         "deployment.hardware.multi_token_ramp_tokens=4.5"],
    "draft-pass-host-time": ["deployment.drafter.kind=draft_model", "deployment.drafter.num_layers=1",
                             "deployment.hardware.overheads.per_draft_pass_us=40"],
    "step-sequence-host-time": ["deployment.drafter.kind=draft_model", "deployment.drafter.num_layers=1",
                                "deployment.hardware.overheads.per_draft_pass_us=40",
                                "deployment.hardware.overheads.per_step_sequence_us=25"],
    "moe-mtp": ["deployment.tensor_parallel=8", "deployment.hardware.memory_capacity_gb=200",
                "deployment.drafter={kind: mtp, num_layers: 1, moe_layers: true}"],
}


def _scenario(sets):
    d = with_sets(base_dict(), *sets)
    if "moe" in " ".join(sets):
        d["deployment"]["model"] = model("deepseek-v4-flash")
    if "draft_model" in " ".join(sets):
        d["deployment"]["drafter"]["model"] = model("llama-3.2-1b")
        d["deployment"]["model"] = model("llama-3.1-8b")
    return scenario(d)


@pytest.mark.parametrize("name", sorted(DEPLOYMENTS))
def test_fast_path_equals_reference(name):
    sc = _scenario(DEPLOYMENTS[name])
    fast, ref = Costs(sc), Costs(sc, fast=False)
    assert fast.fast and not ref.fast
    rng = np.random.default_rng(3)
    for _ in range(20):
        n = int(rng.integers(1, 200))
        q = rng.integers(1, 7, n).astype(float)
        c = rng.integers(0, 50_000, n).astype(float)
        np.testing.assert_allclose(fast.target(q, c), ref.target(q, c), rtol=1e-9)
        g, ctx, catch = int(rng.integers(0, 8)), float(c.mean()), float(rng.uniform(1, 5))
        np.testing.assert_allclose(fast.draft(n, g, ctx, catch), ref.draft(n, g, ctx, catch), rtol=1e-9, atol=1e-15)
        if ref.draft_arch is not None:
            np.testing.assert_allclose(fast.draft_prefill(q * 100, c), ref.draft_prefill(q * 100, c), rtol=1e-9)


def test_whole_run_is_the_same_on_either_path(monkeypatch):
    sc = scenario(base_dict(), "policy={kind: dspark, gamma_max: 4}")
    a = summarize(Simulation(sc).run(), "main", None, None)[0]
    monkeypatch.setattr(run_mod, "Costs", lambda s: Costs(s, fast=False))
    b = summarize(Simulation(sc).run(), "main", None, None)[0]
    assert a.model_dump_json() == b.model_dump_json()


def test_sps_falls_as_the_pass_grows():
    sc = scenario(base_dict())
    sps = CostModelSPS(Costs(sc))
    sps.set_batch(np.full(64, 1000), 1e-3, (0.0,) * 6)
    values = sps(np.arange(64, 64 * 8, 16))
    assert (np.diff(values) <= 0).all() and (values > 0).all()


def test_scheduler_overhead_applies_to_dspark_steps_only():
    sets = ["deployment.hardware.overheads.per_scheduler_step_us=200"]
    fixed = Costs(_scenario(sets))
    dspark = Costs(_scenario(sets + ["policy={kind: dspark, gamma_max: 4}"]))
    assert dspark.step_overhead_s - fixed.step_overhead_s == pytest.approx(200e-6)
