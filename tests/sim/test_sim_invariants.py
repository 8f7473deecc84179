"""Invariants of every simulation, checked over random small configurations (hypothesis)."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dspark_sim.sim.metrics import step_log
from dspark_sim.sim.replica import STEP_COLUMNS
from dspark_sim.sim.run import Simulation

from .sim_helpers import base_dict, scenario, shrink_kv, with_sets

COL = {c: i for i, c in enumerate(STEP_COLUMNS)}

ARRIVALS = [
    "{kind: poisson, rate_per_s: 80}",
    "{kind: gamma, rate_per_s: 80, cv: 3.0}",
    "{kind: constant, rate_per_s: 40}",
    "{kind: closed_loop, concurrency: 12, think_time_s: 0.01}",
]
POLICIES = [
    "{kind: fixed, gamma: 3}",
    "{kind: none}",
    "{kind: dspark, gamma_max: 4, calibration_error: 0.5}",
    "{kind: dspark, gamma_max: 3, confidence_lag_steps: 2}",
    "{kind: goodput, gamma_max: 4}",
    "{kind: confidence_threshold, gamma_max: 4, threshold: 0.4}",
    "{kind: feedback, gamma_max: 4}",
    "{kind: batch_table, table: {4: 4, 16: 2}}",
]
ACCEPTANCE = [
    "{kind: iid, alpha: 0.8}",
    "{kind: per_position, conditional: [0.9, 0.7, 0.5]}",
    "{kind: histogram, probabilities: [0.3, 0.2, 0.2, 0.3]}",
    "{kind: per_request, mean_alpha: 0.7, concentration: 5}",
]


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    arrival=st.sampled_from(ARRIVALS),
    policy=st.sampled_from(POLICIES),
    acceptance=st.sampled_from(ACCEPTANCE),
    kv_tokens=st.sampled_from([None, 900, 2000]),
    disaggregated=st.booleans(),
    replicas=st.sampled_from([1, 2]),
    chunk=st.sampled_from([64, 2048]),
    seed=st.integers(0, 10_000),
)
def test_every_request_ends_exactly_and_resources_stay_in_bounds(
    arrival, policy, acceptance, kv_tokens, disaggregated, replicas, chunk, seed
):
    d = with_sets(
        base_dict(seed=seed),
        f"workload.arrivals={arrival}",
        f"policy={policy}",
        f"acceptance={acceptance}",
        f"simulation.disaggregated_prefill={str(disaggregated).lower()}",
        f"deployment.replicas={replicas}",
        f"deployment.prefill_chunk_tokens={chunk}",
        "workload.num_requests=40",
    )
    if policy == "{kind: none}":
        d["deployment"]["drafter"] = {"kind": "none"}
    if kv_tokens:
        d = shrink_kv(d, kv_tokens)
    sim = Simulation(scenario(d)).run()
    out, reqs = sim.out, sim.requests

    # every request finished with exactly its output length
    assert not np.isnan(out.finish).any()
    np.testing.assert_array_equal(out.gen, reqs.output)
    # lifecycle order
    assert (reqs.arrival <= out.first_token + 1e-12).all()
    assert (out.first_token <= out.finish + 1e-12).all()
    # speculation bookkeeping
    assert (out.accepted <= out.verified).all()
    assert (out.verified <= out.steps * max(sim.gamma_max, 0)).all()
    log = step_log(sim)
    assert int(log[:, COL["tokens"]].sum()) == int(reqs.output.sum())
    for rep in sim.replicas:
        r = np.asarray(rep.log, dtype=float).reshape(-1, len(STEP_COLUMNS))
        if not len(r):
            continue
        t, dt = r[:, COL["t_start"]], r[:, COL["dt"]]
        # simulated time never goes back; a step starts after the previous one ended
        assert (dt > 0).all()
        assert (np.diff(t) >= 0).all()
        assert (t[1:] >= t[:-1] + dt[:-1] - 1e-12).all()
        # KV use within [0, capacity], also at the peak (lookahead reserved)
        assert (r[:, COL["kv_blocks"]] >= 0).all()
        assert (r[:, COL["kv_blocks"]] <= sim.kv_blocks).all()
        assert (r[:, COL["kv_peak_blocks"]] <= sim.kv_blocks).all()
        assert rep.n == 0 and not rep.waiting
