"""Static batching (the bundled engine, gpt-fast) against continuous batching, and the compute/memory
overlap knob of the cost model."""

from __future__ import annotations

import numpy as np
import pytest

from dspark_sim.config.loader import load_hardware_profile, load_model_preset
from dspark_sim.core.costmodel import forward_cost
from dspark_sim.core.passes import BatchShape
from dspark_sim.sim.run import Simulation
from tests.sim.sim_helpers import base_dict, scenario


def _closed_batch(batching: str, requests: int, concurrency: int):
    d = base_dict()
    d["deployment"]["batching"] = batching
    d["workload"] = {
        "arrivals": {"kind": "closed_loop", "concurrency": concurrency},
        "num_requests": requests,
        "prompt_tokens": {"kind": "fixed", "tokens": 64},
        "output_tokens": {"kind": "uniform", "min_tokens": 8, "max_tokens": 200},
    }
    return Simulation(scenario(d), "test").run()


def test_static_batch_keeps_finished_rows_and_admits_only_when_drained():
    cont = _closed_batch("continuous", 24, 8)
    stat = _closed_batch("static", 24, 8)
    # the same requests and acceptance draws: the same tokens, but a static batch takes longer
    assert int(stat.out.gen.sum()) == int(cont.out.gen.sum())
    assert np.nanmax(stat.out.finish) > np.nanmax(cont.out.finish)
    log = np.array(stat.replicas[0].log, dtype=float)
    # new requests join only once the previous batch has drained: at every step where the batch grows,
    # nobody is decoding (continuous batching admits beside running decoders)
    for sim, static in ((stat, True), (cont, False)):
        log = np.array(sim.replicas[0].log, dtype=float)
        rises = np.flatnonzero(np.diff(log[:, 9]) > 0) + 1
        assert len(rises) >= 2
        assert (log[rises, 2] == 0).all() == static


def test_overlap_interpolates_between_max_and_sum():
    hw = load_hardware_profile("cpu-generic")
    model = load_model_preset("llama-3.2-1b")
    b = np.array([1.0, 8.0, 64.0])
    shape = BatchShape(b, b * 4, b * 512, b * 512, b * 4 * 512, b * 4 * 512)
    costs = {}
    for ov in (0.0, 0.5, 1.0):
        c = forward_cost(model, hw.model_copy(update={"compute_memory_overlap": ov}), shape)
        costs[ov] = c
    c1 = costs[1.0]
    fixed = np.asarray(c1.overhead_s) + np.asarray(c1.comm_s)
    mem = np.asarray(c1.hbm_s) + np.asarray(c1.onchip_s)
    comp = np.asarray(c1.compute_s)
    np.testing.assert_allclose(np.asarray(c1.time_s), np.maximum(comp, mem) + fixed, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(costs[0.0].time_s), comp + mem + fixed, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(costs[0.5].time_s), np.maximum(comp, mem) + 0.5 * np.minimum(comp, mem) + fixed,
                               rtol=1e-12)


def test_multi_token_passes_read_weights_multi_token_weight_reads_times():
    """A CPU GEMM packs the weights before a matrix-matrix pass: one-token passes are unchanged, passes of
    2+ tokens stream the matmul weights `multi_token_weight_reads` times (and the simulator's fast path
    agrees with forward_cost)."""
    hw = load_hardware_profile("cpu-generic")
    model = load_model_preset("llama-3.2-1b")
    b = np.array([1.0, 1.0, 4.0])
    q = np.array([1.0, 2.0, 1.0])  # tokens per pass: 1, 2, 4
    shape = BatchShape(b, b * q, b * 300, b * 300, b * q * 300, b * q * 300)
    one = forward_cost(model, hw, shape)
    two = forward_cost(model, hw.model_copy(update={"multi_token_weight_reads": 2.0}), shape)
    assert float(np.asarray(two.hbm_bytes)[0] + np.asarray(two.onchip_bytes)[0]) == pytest.approx(
        float(np.asarray(one.hbm_bytes)[0] + np.asarray(one.onchip_bytes)[0]))
    extra = (np.asarray(two.hbm_bytes) + np.asarray(two.onchip_bytes)) - (np.asarray(one.hbm_bytes)
                                                                           + np.asarray(one.onchip_bytes))
    assert extra[0] == 0 and extra[1] > 0.9e9 and extra[2] == pytest.approx(extra[1], rel=1e-3)


def test_batch_aware_policy_counts_a_static_batchs_finished_rows():
    """The engine's DSpark scheduler decides over every row of its static batch, finished rows included (each
    still rides in the pass as one token), and sees each row's drafts cut to the tokens it has left. The
    simulator asks the shared policy the same way: on a steep SPS curve, leaving the finished rows out would
    make the tail of a batch verify far more than the engine does."""
    d = base_dict()
    d["deployment"]["batching"] = "static"
    d["policy"] = {"kind": "dspark", "gamma_max": 5, "sps_source": "table",
                   "sps_table": {1: 1000.0, 8: 500.0, 16: 300.0, 64: 100.0}}
    d["workload"] = {
        "arrivals": {"kind": "closed_loop", "concurrency": 8},
        "num_requests": 16,
        "prompt_tokens": {"kind": "fixed", "tokens": 64},
        "output_tokens": {"kind": "uniform", "min_tokens": 8, "max_tokens": 120},
    }
    sim = Simulation(scenario(d), "test")
    replica = sim.replicas[0]
    inner = replica.policy
    seen: list[tuple[int, int, int, int]] = []  # (rows seen, the static batch's rows, rows still generating,
    #                                              most drafts a finished row had)

    class Recorder:
        def __getattr__(self, name):
            return getattr(inner, name)

        def verify_lengths(self, view, draft, confidences=None):
            live = int((np.asarray(view.seq_ids) >= 0).sum())
            seen.append((view.batch_size, replica.static_rows, live, int(np.asarray(draft)[live:].max(initial=0))))
            return inner.verify_lengths(view, draft, confidences)

    replica.policy = Recorder()
    sim.run()
    assert seen and all(rows == batch for rows, batch, _live, _ghost in seen)  # the whole static batch, every step
    assert any(live < batch for _rows, batch, live, _ghost in seen)  # rows did finish while others generated
    assert all(ghost_drafts == 0 for *_rest, ghost_drafts in seen)  # finished rows draft nothing
