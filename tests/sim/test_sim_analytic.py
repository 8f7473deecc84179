"""One request at a time, no queueing: the simulator must agree with analytic.predict_grid."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dspark_sim.core.acceptance import expected_tokens
from dspark_sim.core.analytic import predict_grid
from dspark_sim.core.costmodel import StepCoster
from dspark_sim.sim.metrics import summarize
from dspark_sim.sim.run import Simulation

from .sim_helpers import base_dict, scenario
from .sim_helpers import model as preset


def _single_user(alpha: float, gamma: int, prompt: int, output: int, requests: int, model: str | None = None):
    d = base_dict()
    if model:
        d["deployment"]["model"] = preset(model)
    sc = scenario(
        d,
        "workload.arrivals={kind: closed_loop, concurrency: 1}",
        f"workload.num_requests={requests}",
        f"workload.prompt_tokens={{kind: fixed, tokens: {prompt}}}",
        f"workload.output_tokens={{kind: fixed, tokens: {output}}}",
        f"acceptance={{kind: iid, alpha: {alpha}}}",
        f"policy={{kind: fixed, gamma: {gamma}}}",
    )
    sim = Simulation(sc).run()
    summary, _ = summarize(sim, "main", None, None)
    return sc, summary


def _analytic(sc, context: float):
    dep = sc.deployment
    grid = predict_grid(StepCoster(dep.model, dep.drafter, dep.hardware, dep.tensor_parallel), sc.acceptance,
                        [1], [context], [sc.policy.gamma])
    return float(grid.tokens_per_s_per_user[0, 0, 0]), float(grid.tau[0, 0, 0])


@settings(max_examples=4, deadline=None)
@given(alpha=st.sampled_from([0.0, 1.0]), gamma=st.integers(1, 6), prompt=st.sampled_from([128, 3000]))
def test_deterministic_acceptance_matches_predict_grid(alpha, gamma, prompt):
    # alpha 0 or 1: no sampling noise; the output length makes every step full-size
    per_step = gamma + 1 if alpha == 1.0 else 1
    output = 1 + per_step * 60
    sc, s = _single_user(alpha, gamma, prompt, output, requests=2)
    # decode steps start at contexts prompt, prompt + per_step, ...: the cost is linear in context
    mean_context = prompt + per_step * (60 - 1) / 2
    speed, tau = _analytic(sc, mean_context)
    assert s.tau == pytest.approx(tau, rel=1e-9)
    assert s.tokens_per_s_per_user == pytest.approx(speed, rel=0.01)


def test_random_acceptance_matches_expected_tau_and_step_time():
    alpha, gamma, prompt, output = 0.8, 4, 512, 2001
    sc, s = _single_user(alpha, gamma, prompt, output, requests=6)
    tau = float(expected_tokens(sc.acceptance, [gamma])[0])
    assert s.tau == pytest.approx(tau, rel=0.03)  # ~3,500 steps of sampling
    speed, _ = _analytic(sc, prompt + (output - 1) / 2)
    # per-user speed / tau = 1 / step time: the cost side must agree to 1%
    assert s.tokens_per_s_per_user / s.tau == pytest.approx(speed / tau, rel=0.01)
    # and the observed per-position acceptance is the i.i.d. alpha
    assert np.allclose(s.acceptance_per_position, alpha, atol=0.03)


@pytest.mark.parametrize("per_sequence_us", [0.0, 300.0])
def test_plain_batch_pays_the_per_sequence_step_cost_as_predict_grid_does(per_sequence_us):
    """Four users decoding together without speculation: every step costs the pass, the plain loop's fixed
    overhead and per_baseline_sequence_us for each of the four rows, in the simulator as in predict_grid."""
    batch, prompt, output = 4, 512, 401
    sc = scenario(
        base_dict(),
        f"workload.arrivals={{kind: closed_loop, concurrency: {batch}}}",
        f"workload.num_requests={batch}",
        f"workload.prompt_tokens={{kind: fixed, tokens: {prompt}}}",
        f"workload.output_tokens={{kind: fixed, tokens: {output}}}",
        "policy={kind: none}",
        f"deployment.hardware.overheads.per_baseline_sequence_us={per_sequence_us}",
    )
    s, _ = summarize(Simulation(sc).run(), "main", None, None)
    dep = sc.deployment
    grid = predict_grid(StepCoster(dep.model, dep.drafter, dep.hardware, dep.tensor_parallel), sc.acceptance,
                        [batch], [prompt + (output - 1) / 2], [1])
    step_s = float(grid.baseline_step_s[0, 0, 0])
    assert s.tokens_per_s_per_user == pytest.approx(1.0 / step_s, rel=0.01)
    o = dep.hardware.overheads
    fixed_s = (o.per_baseline_step_us if o.per_baseline_step_us is not None else o.per_step_us) * 1e-6
    outside_pass_s = step_s - float(grid.baseline.time_s[0, 0, 0])
    assert outside_pass_s == pytest.approx(fixed_s + batch * per_sequence_us * 1e-6, rel=1e-9)
