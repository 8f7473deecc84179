"""Engine behaviour: preemption, chunked prefill, disaggregation, replicas, time limits, policies."""

from __future__ import annotations

import numpy as np
import pytest

from dspark_sim.sim.metrics import step_log, summarize
from dspark_sim.sim.replica import STEP_COLUMNS
from dspark_sim.sim.run import Simulation

from .sim_helpers import base_dict, scenario, shrink_kv, with_sets

COL = {c: i for i, c in enumerate(STEP_COLUMNS)}


def _run(d, *sets):
    sim = Simulation(scenario(d, *sets)).run()
    return sim, summarize(sim, "main", None, None)[0]


def test_preemption_when_kv_runs_out_and_everything_still_completes():
    d = shrink_kv(with_sets(base_dict(), "workload.arrivals={kind: poisson, rate_per_s: 500}",
                            "workload.num_requests=80"), 1500)
    sim, s = _run(d)
    assert s.preemptions > 0
    np.testing.assert_array_equal(sim.out.gen, sim.requests.output)
    assert s.kv_peak_fraction <= 1.0
    assert s.kv_capacity_tokens == sim.kv_blocks * 16


def test_lookahead_reservation_counts_gamma_plus_one_slots():
    # one sequence, block 1 token: the peak during a step is its context + gamma_max + 1 slots
    d = with_sets(base_dict(), "workload.arrivals={kind: closed_loop, concurrency: 1}", "workload.num_requests=1",
                  "workload.prompt_tokens={kind: fixed, tokens: 100}", "workload.output_tokens={kind: fixed, tokens: 20}",
                  "deployment.kv_block_tokens=1", "policy={kind: fixed, gamma: 4}")
    sim, _ = _run(d)
    log = step_log(sim)
    dec = log[log[:, COL["decoders"]] > 0]
    assert (dec[:, COL["kv_peak_blocks"]] >= 100 + 5).all()
    # after each step the rejected tokens' slots are free again (all kept only when all were accepted)
    assert (dec[:, COL["kv_blocks"]] <= dec[:, COL["kv_peak_blocks"]]).all()
    assert (dec[:, COL["kv_blocks"]] < dec[:, COL["kv_peak_blocks"]]).any()


def test_chunked_prefill_splits_long_prompts():
    d = with_sets(base_dict(), "workload.arrivals={kind: closed_loop, concurrency: 1}", "workload.num_requests=1",
                  "workload.prompt_tokens={kind: fixed, tokens: 5000}", "workload.output_tokens={kind: fixed, tokens: 5}",
                  "deployment.prefill_chunk_tokens=1024")
    sim, _ = _run(d)
    log = step_log(sim)
    prefill_steps = log[log[:, COL["prefill_tokens"]] > 0]
    assert len(prefill_steps) == 5
    assert prefill_steps[:, COL["prefill_tokens"]].max() == 1024


def test_disaggregated_prefill_skips_prompt_compute():
    d = with_sets(base_dict(), "workload.arrivals={kind: closed_loop, concurrency: 2}", "workload.num_requests=10",
                  "workload.prompt_tokens={kind: fixed, tokens: 4000}")
    _, colocated = _run(d)
    sim, disagg = _run(d, "simulation.disaggregated_prefill=true")
    assert disagg.ttft_s.p50 < colocated.ttft_s.p50
    assert step_log(sim)[:, COL["prefill_tokens"]].sum() == 0
    np.testing.assert_array_equal(sim.out.gen, sim.requests.output)


def test_two_replicas_share_the_load():
    sim, s = _run(base_dict(), "deployment.replicas=2", "deployment.tensor_parallel=2")
    counts = np.bincount(sim.out.replica, minlength=2)
    assert (counts > 10).all()
    assert s.gpus == 4
    assert s.throughput_tokens_per_s_per_gpu == pytest.approx(s.throughput_tokens_per_s / 4)


def test_time_limit_stops_the_clock():
    sim, s = _run(base_dict(), "simulation.max_simulated_s=0.5", "workload.num_requests=200")
    assert sim.env.now == pytest.approx(0.5)
    assert 0 < s.requests_finished < 200


def test_warmup_requests_are_left_out():
    _, s = _run(base_dict(), "workload.warmup_requests=10")
    assert s.requests_measured == s.requests_finished - 10


def test_dspark_scheduler_verifies_less_when_the_batch_is_compute_bound():
    d = with_sets(base_dict(), "policy={kind: dspark, gamma_max: 5}", "acceptance={kind: iid, alpha: 0.75}",
                  "deployment.max_batch_size=256", "workload.num_requests=300",
                  "workload.prompt_tokens={kind: fixed, tokens: 64}", "workload.output_tokens={kind: fixed, tokens: 64}",
                  "simulation.disaggregated_prefill=true")
    _, small = _run(d, "workload.arrivals={kind: closed_loop, concurrency: 1}", "workload.num_requests=20")
    _, large = _run(d, "workload.arrivals={kind: closed_loop, concurrency: 256}")
    assert small.mean_verify_budget > 3.0
    assert large.mean_verify_budget < small.mean_verify_budget - 1.0


def test_no_speculation_yields_one_token_per_step():
    d = with_sets(base_dict(), "policy={kind: none}")
    d["deployment"]["drafter"] = {"kind": "none"}
    _, s = _run(d)
    assert s.tau == 1.0 and s.mean_verify_budget == 0.0 and s.acceptance_per_position == []
