"""Recorded drafter confidences are replayed: a confidence policy sees in the simulator what it saw
in the engine (validate relies on this)."""

from __future__ import annotations

import json

import pytest

from dspark_sim.config.errors import InputError
from dspark_sim.config.loader import scenario_from_dict
from dspark_sim.core.acceptance import load_acceptance_trace
from dspark_sim.sim.run import simulate_config

from .sim_helpers import base_dict


def _trace(path, confidence: float) -> None:
    with open(path, "w") as fh:
        for _ in range(4):
            n = 64
            fh.write(json.dumps({"prompt_len": 16, "output_len": n, "accept_len": [6] * n,
                                 "confidence": [confidence] * n}) + "\n")


def _run(tmp_path, confidence: float) -> float:
    path = tmp_path / f"t{confidence}.jsonl"
    _trace(path, confidence)
    raw = base_dict()
    raw["acceptance"] = {"kind": "trace", "path": str(path), "field": "accept_len", "confidence_field": "confidence"}
    raw["policy"] = {"kind": "confidence_threshold", "gamma_max": 5, "threshold": 0.5, "on": "conditional"}
    raw["workload"] = {"arrivals": {"kind": "closed_loop", "concurrency": 2}, "num_requests": 4,
                       "prompt_tokens": {"kind": "fixed", "tokens": 16}, "output_tokens": {"kind": "fixed", "tokens": 48}}
    raw["simulation"] = {"simulate_baseline": False, "per_request_output": "none"}
    run = simulate_config(scenario_from_dict(raw), "main", None, "test", with_records=False)
    return run.summary.tau


def test_low_recorded_confidence_stops_verification(tmp_path):
    # every step would accept 5 tokens, but the recorded confidence says "don't verify"
    assert _run(tmp_path, 0.1) == 1.0


def test_high_recorded_confidence_verifies(tmp_path):
    assert _run(tmp_path, 0.9) > 5.0


def _chain_run(tmp_path, conf_field: str, prob_field: str) -> float:
    """Per-position confidences say "verify" (0.9) where the chains recorded at each step's start say
    "stop after one" (0.9 then 0.1), and the chains' acceptance stops after two tokens."""
    path = tmp_path / "chains.jsonl"
    n = 64
    with open(path, "w") as fh:
        for _ in range(4):
            fh.write(json.dumps({"prompt_len": 16, "output_len": n, "accept_len": [6] * n,
                                 "confidence": [0.9] * n, "alpha": [1.0] * n,
                                 "chain_confidence": [[0.9, 0.1, 0.9, 0.9, 0.9]] * n,
                                 "chain_accept_prob": [[1.0, 1.0, 0.0, 1.0, 1.0]] * n}) + "\n")
    raw = base_dict()
    raw["acceptance"] = {"kind": "trace", "path": str(path), "field": "accept_len", "confidence_field": conf_field,
                         "probability_field": prob_field}
    raw["policy"] = {"kind": "confidence_threshold", "gamma_max": 5, "threshold": 0.5, "on": "conditional"}
    raw["workload"] = {"arrivals": {"kind": "closed_loop", "concurrency": 2}, "num_requests": 4,
                       "prompt_tokens": {"kind": "fixed", "tokens": 16}, "output_tokens": {"kind": "fixed", "tokens": 48}}
    raw["simulation"] = {"simulate_baseline": False, "per_request_output": "none"}
    return simulate_config(scenario_from_dict(raw), "main", None, "test", with_records=False).summary.tau


def test_chains_are_replayed_from_each_steps_start(tmp_path):
    assert _chain_run(tmp_path, "confidence", "alpha") > 5.0  # per position: 0.9 everywhere, all accepted
    # the chain's second token stops verification; five verified, the chain's third is rejected
    assert _chain_run(tmp_path, "chain_confidence", "alpha") == pytest.approx(2.0, abs=0.1)
    assert _chain_run(tmp_path, "confidence", "chain_accept_prob") == pytest.approx(3.0, abs=0.15)


def _step_run(tmp_path, chains_by: str) -> float:
    """Live steps recorded in turn: one whose chain is all accepted, one whose first token is rejected
    (two steps a record, repeated). Fixed gamma 3, 48 tokens, batch 2."""
    path = tmp_path / f"steps-{chains_by}.jsonl"
    n = 48
    with open(path, "w") as fh:
        for _ in range(2):
            fh.write(json.dumps({"prompt_len": 16, "output_len": n, "accept_len": [6] * n,
                                 "step_confidence": [[0.9] * 5, [0.9] * 5],
                                 "step_accept_prob": [[1.0] * 5, [0.0] * 5]}) + "\n")
    raw = base_dict()
    raw["acceptance"] = {"kind": "trace", "path": str(path), "field": "accept_len", "chains_by": chains_by,
                         "confidence_field": "step_confidence", "probability_field": "step_accept_prob"}
    raw["policy"] = {"kind": "fixed", "gamma": 3}
    raw["workload"] = {"arrivals": {"kind": "closed_loop", "concurrency": 2}, "num_requests": 2,
                       "prompt_tokens": {"kind": "fixed", "tokens": 16}, "output_tokens": {"kind": "fixed", "tokens": n}}
    raw["simulation"] = {"simulate_baseline": False, "per_request_output": "none"}
    return simulate_config(scenario_from_dict(raw), "main", None, "test", with_records=False).summary.tau


def test_live_step_chains_are_replayed_by_step_number(tmp_path):
    # by step: 4 tokens, 1, 4, 1, ... -> 2.5 a step (the last steps cut by the output's end)
    assert _step_run(tmp_path, "step") == pytest.approx(2.5, abs=0.1)
    # the same rows read by output position (zero-padded past the two recorded): the first step starts
    # at position 1 (the rejected chain), every later one past the rows recorded
    assert _step_run(tmp_path, "position") == 1.0


def test_step_chains_need_lists(tmp_path):
    path = tmp_path / "flat.jsonl"
    path.write_text(json.dumps({"prompt_len": 4, "output_len": 3, "accept_len": [1, 1, 1],
                                "step_confidence": [0.5, 0.5]}) + "\n")
    with pytest.raises(InputError, match="line 1.step_confidence"):
        load_acceptance_trace(str(path), "accept_len", None, "step_confidence", None, "step")
