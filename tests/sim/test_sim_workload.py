"""Workload generation: arrival processes, length distributions, domains, traces, CRN uniforms."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dspark_sim.config.errors import InputError
from dspark_sim.config.schema import (
    ConstantArrivals,
    EmpiricalLength,
    FixedLength,
    GammaArrivals,
    LognormalLength,
    PoissonArrivals,
    TraceArrivals,
    UniformLength,
)
from dspark_sim.sim.arrival_trace import load_arrival_trace
from dspark_sim.sim.metrics import summarize
from dspark_sim.sim.run import Simulation
from dspark_sim.sim.workload import (
    build_requests,
    open_loop_arrivals,
    sample_lengths,
    uniforms,
)

from .sim_helpers import base_dict, scenario, with_sets


def test_arrival_processes_have_the_requested_rate_and_burstiness():
    rng = np.random.default_rng(0)
    n = 20_000
    t = open_loop_arrivals(PoissonArrivals(rate_per_s=5.0), rng, n)
    gaps = np.diff(t)
    assert gaps.mean() == pytest.approx(0.2, rel=0.03)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, rel=0.05)
    t = open_loop_arrivals(GammaArrivals(rate_per_s=5.0, cv=3.0), rng, n)
    gaps = np.diff(t)
    assert gaps.mean() == pytest.approx(0.2, rel=0.1)
    assert gaps.std() / gaps.mean() == pytest.approx(3.0, rel=0.1)
    t = open_loop_arrivals(ConstantArrivals(rate_per_s=4.0), rng, 5)
    np.testing.assert_allclose(t, [0.0, 0.25, 0.5, 0.75, 1.0])


def test_length_distributions():
    rng = np.random.default_rng(1)
    assert (sample_lengths(FixedLength(tokens=7), rng, 10) == 7).all()
    u = sample_lengths(UniformLength(min_tokens=3, max_tokens=9), rng, 5000)
    assert u.min() == 3 and u.max() == 9
    ln = sample_lengths(LognormalLength(median_tokens=300, sigma=0.5, min_tokens=10, max_tokens=2000), rng, 20_000)
    assert np.median(ln) == pytest.approx(300, rel=0.05)
    assert ln.min() >= 10 and ln.max() <= 2000
    e = sample_lengths(EmpiricalLength(values=[5, 50, 500]), rng, 3000)
    assert set(np.unique(e)) == {5, 50, 500}


def test_domains_mix_with_their_own_lengths_and_acceptance():
    sc = scenario(base_dict(), "workload.num_requests=3000", "policy={kind: fixed, gamma: 2}",
                  "workload.domains=[{name: math, weight: 3, output_tokens: {kind: fixed, tokens: 11}, "
                  "acceptance: {kind: iid, alpha: 0.9}}, {name: chat, weight: 1}]")
    reqs = build_requests(sc, 2)
    math = reqs.domain == 0
    assert math.mean() == pytest.approx(0.75, abs=0.03)
    assert (reqs.output[math] == 11).all()
    np.testing.assert_allclose(reqs.cond[math], 0.9)
    np.testing.assert_allclose(reqs.cond[~math], 0.7)  # the scenario's acceptance
    assert (reqs.output[~math] != 11).any()


def test_counter_uniforms_are_deterministic_and_width_independent():
    seeds = np.arange(1, 2001, dtype=np.uint64) * np.uint64(7919)
    pos = np.arange(2000, dtype=np.int64) % 97
    a = uniforms(seeds, pos, 5)
    b = uniforms(seeds, pos, 3)
    np.testing.assert_array_equal(a[:, :3], b)  # a policy verifying fewer tokens sees the same coins
    assert (a >= 0).all() and (a < 1).all()
    assert a.mean() == pytest.approx(0.5, abs=0.01)
    assert abs(np.corrcoef(a[:, 0], a[:, 1])[0, 1]) < 0.05
    np.testing.assert_array_equal(uniforms(seeds, pos + 1, 5)[:, 0] != a[:, 0], True)


def test_arrival_trace_jsonl_and_csv(tmp_path):
    jl = tmp_path / "t.jsonl"
    jl.write_text("\n".join(json.dumps(r) for r in [
        {"arrival_s": 2.0, "prompt_len": 10, "output_len": 5, "accept_len": [3, 1, 2]},
        {"arrival_s": 1.0, "prompt_tokens": 20, "output_tokens": 6},
    ]) + "\n")
    tr = load_arrival_trace(TraceArrivals(path=str(jl), time_scale=2.0))
    np.testing.assert_allclose(tr.times, [0.0, 2.0])  # sorted, relative, scaled
    assert list(tr.prompts) == [20, 10] and list(tr.outputs) == [6, 5]
    assert tr.yields[0] is None and list(tr.yields[1]) == [3, 1, 2]
    cs = tmp_path / "t.csv"
    cs.write_text("timestamp,input_len,output_len,accept_len\n0.5,30,4,2 2 1\n0.0,40,3,\n")
    tr = load_arrival_trace(TraceArrivals(path=str(cs)))
    assert list(tr.prompts) == [40, 30] and list(tr.yields[1]) == [2, 2, 1]


def test_trace_arrivals_drive_a_simulation(tmp_path):
    jl = tmp_path / "t.jsonl"
    jl.write_text("".join(json.dumps({"arrival_s": i * 0.05, "prompt_len": 50 + i, "output_len": 41,
                                      "accept_len": [4] * 41}) + "\n" for i in range(20)))
    sc = scenario(base_dict(), f"workload.arrivals={{kind: trace, path: {jl}}}", "policy={kind: fixed, gamma: 6}")
    sim = Simulation(sc).run()
    assert sim.requests.n == 20
    np.testing.assert_array_equal(sim.out.gen, 41)
    s, _ = summarize(sim, "main", None, None)
    assert s.tau == pytest.approx(4.0, abs=1e-9)  # 40 decode tokens in steps of the recorded 4 (gamma 6)


def test_lengths_and_acceptance_from_an_acceptance_trace(tmp_path):
    path = tmp_path / "acc.jsonl"
    path.write_text("".join(json.dumps({"prompt_len": 100 + i, "output_len": 30 + i,
                                        "accept_len_eagle": [3] * (30 + i)}) + "\n" for i in range(5)))
    sc = scenario(base_dict(), f"acceptance={{kind: trace, path: {path}}}", "workload.lengths_from_trace=true",
                  "workload.num_requests=12", "policy={kind: fixed, gamma: 1}")
    sim = Simulation(sc).run()
    reqs = sim.requests
    assert list(reqs.prompt[:7]) == [100, 101, 102, 103, 104, 100, 101]
    assert list(reqs.output[:6]) == [30, 31, 32, 33, 34, 30]
    s, _ = summarize(sim, "main", None, None)
    # yield 3 recorded, but gamma 1 verifies one draft (a last odd token per request yields 1)
    assert s.tau == pytest.approx(2.0, abs=0.05)


def test_in_order_trace_records_replay_each_record_once(tmp_path):
    """records: in_order gives request i record (first_record + i) mod n: a run of n requests replays
    every record once (validate relies on it); random draws a sample of them."""
    path = tmp_path / "acc.jsonl"
    recs = [{"prompt_len": 64, "output_len": 8, "accept_len": [k + 1] * 8} for k in range(12)]
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))

    def replayed(order: str, first: int, n: int) -> list[int]:
        sc = scenario(base_dict(), f"acceptance={{kind: trace, path: {path}, field: accept_len, records: {order}, "
                      f"first_record: {first}}}", f"workload.num_requests={n}")
        table = build_requests(sc, 4)
        return [int(table.trace_yields[o]) - 1 for o in table.trace_off]

    assert replayed("in_order", 10, 5) == [10, 11, 0, 1, 2]
    assert sorted(replayed("in_order", 3, 12)) == list(range(12))
    drawn = replayed("random", 0, 12)
    assert all(0 <= r < 12 for r in drawn) and len(set(drawn)) < 12  # with replacement


def test_arrival_trace_errors(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"arrival_s": 0.0, "prompt_len": 5}) + "\n")
    with pytest.raises(InputError, match="output_len"):
        load_arrival_trace(TraceArrivals(path=str(bad)))
    bad.write_text(json.dumps({"arrival_s": -1, "prompt_len": 5, "output_len": 3}) + "\n")
    with pytest.raises(InputError, match="finite number"):
        load_arrival_trace(TraceArrivals(path=str(bad)))
    bad.write_text("{not json\n")
    with pytest.raises(InputError, match="line 1"):
        load_arrival_trace(TraceArrivals(path=str(bad)))
    with pytest.raises(InputError, match="not found"):
        load_arrival_trace(TraceArrivals(path=str(tmp_path / "missing.jsonl")))


def test_closed_loop_users_keep_concurrency():
    sc = scenario(with_sets(base_dict(), "workload.arrivals={kind: closed_loop, concurrency: 5, think_time_s: 0.5}",
                            "workload.num_requests=30"))
    sim = Simulation(sc).run()
    arr, fin = sim.requests.arrival, sim.out.finish
    assert not np.isnan(arr).any()
    # at any arrival, at most 5 requests are outstanding
    for t in arr:
        assert ((arr <= t) & (fin > t)).sum() <= 5
    # each user's next request comes think_time after one of the finishes
    later = np.sort(arr)[5:]
    gaps = later[:, None] - np.sort(fin)[None, :]
    assert np.isclose(gaps, 0.5).any(axis=1).all()
