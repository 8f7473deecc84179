"""Recorded acceptance probabilities (`probability_field`): each simulated step draws acceptance from
them, so a sampled trace's single recorded draw does not decide the prediction; 0/1 probabilities
(greedy traces) replay the recorded yields exactly."""

from __future__ import annotations

import json

import numpy as np

from dspark_sim.config.loader import scenario_from_dict
from dspark_sim.sim.run import simulate_config

from .sim_helpers import base_dict


def _runs_of(ok: np.ndarray) -> list[int]:
    run = np.zeros(len(ok) + 1, dtype=int)
    for i in range(len(ok) - 1, -1, -1):
        run[i] = run[i + 1] + 1 if ok[i] else 0
    return (1 + run[:-1]).tolist()


def _tau(tmp_path, alpha: np.ndarray, ok: np.ndarray, use_probabilities: bool, seed: int = 0) -> float:
    path = tmp_path / "t.jsonl"
    with open(path, "w") as fh:
        for r in range(len(alpha)):
            fh.write(json.dumps({"prompt_len": 16, "output_len": alpha.shape[1], "accept_len": _runs_of(ok[r]),
                                 "alpha": alpha[r].tolist()}) + "\n")
    raw = base_dict()
    raw["seed"] = seed
    raw["acceptance"] = {"kind": "trace", "path": str(path), "field": "accept_len",
                         **({"probability_field": "alpha"} if use_probabilities else {})}
    raw["policy"] = {"kind": "fixed", "gamma": 4}
    raw["workload"] = {"arrivals": {"kind": "closed_loop", "concurrency": 8}, "num_requests": 64,
                       "prompt_tokens": {"kind": "fixed", "tokens": 16}, "output_tokens": {"kind": "fixed", "tokens": 200}}
    raw["simulation"] = {"simulate_baseline": False, "per_request_output": "none"}
    return simulate_config(scenario_from_dict(raw), "main", None, "test", with_records=False).summary.tau


def test_zero_one_probabilities_replay_the_recorded_yields(tmp_path):
    ok = np.random.default_rng(0).random((8, 256)) < 0.7
    alpha = ok.astype(float)
    assert _tau(tmp_path, alpha, ok, True) == _tau(tmp_path, alpha, ok, False)


def test_probabilities_are_drawn_afresh(tmp_path):
    """alpha 0.6 everywhere, but the recorded draw accepted everything: replaying the draw gives the
    maximum tau (5, less the requests' last steps), drawing from alpha gives the i.i.d. value (1 - 0.6^5) / 0.4 = 2.31 (+- noise)."""
    alpha = np.full((8, 256), 0.6)
    ok = np.ones((8, 256), dtype=bool)
    assert _tau(tmp_path, alpha, ok, False) > 4.9  # 5 but for the last steps of each request
    drawn = _tau(tmp_path, alpha, ok, True)
    assert abs(drawn - (1 - 0.6 ** 5) / 0.4) < 0.15
