"""Which trace fields a validation case replays, and how many simulated runs predict it (torch-free)."""

from __future__ import annotations

import json

from dspark_sim.validate.cases import Case
from dspark_sim.validate.trace_fields import (
    prompt_length_trace,
    simulated_runs,
    trace_confidence_field,
    trace_probability_field,
)


def test_dspark_cases_replay_the_coupled_acceptance(tmp_path):
    sampled, greedy, yields = tmp_path / "s.jsonl", tmp_path / "g.jsonl", tmp_path / "y.jsonl"
    sampled.write_text(json.dumps({"accept_len": [1], "alpha": [0.5], "accept_prob": [0.4], "confidence": [0.3]}) + "\n")
    greedy.write_text(json.dumps({"accept_len": [1], "alpha": [1.0], "confidence": [0.3]}) + "\n")
    yields.write_text(json.dumps({"accept_len": [1], "confidence": [0.3]}) + "\n")
    assert trace_probability_field("dspark:5", sampled) == "accept_prob"
    assert trace_probability_field("fixed:3", sampled) == "alpha"
    assert trace_probability_field("dspark:5", greedy) == "alpha"
    assert trace_probability_field("dspark:5", yields) is None


def test_cases_replay_the_traces_of_their_prompt_length(tmp_path):
    trace = tmp_path / "acceptance-T0.jsonl"
    recs = [{"prompt_len": n, "accept_len": [k]} for k, n in enumerate((64, 256, 64, 256, 64))]
    trace.write_text("".join(json.dumps(r) + "\n" for r in recs))
    short = prompt_length_trace(trace, 64, tmp_path / "out")
    assert short.name == "acceptance-T0-P64.jsonl"
    assert [json.loads(ln)["accept_len"] for ln in short.read_text().splitlines()] == [[0], [2], [4]]
    assert prompt_length_trace(trace, 128, tmp_path / "out") == trace  # no records of that length: all of them
    one = tmp_path / "one.jsonl"
    one.write_text(json.dumps(recs[0]) + "\n")
    assert prompt_length_trace(one, 64, tmp_path / "out") == one  # nothing to filter


def test_predictions_replay_every_trace_record_equally(tmp_path):
    """Drawn at random, a prediction's records are a sample of the trace's; in order, each is used
    equally often, so the simulated tau is the trace's own (greedy: exactly the walked mean)."""
    assert simulated_runs(Case(0.0, 16, 64, "fixed:3", rounds=6, new_tokens=64), 2, 192) == 12  # 2 x 6 x 16 = 192
    assert simulated_runs(Case(0.0, 16, 64, "fixed:3", rounds=1, new_tokens=64), 2, 192) == 12  # one pass: 192
    assert simulated_runs(Case(1.0, 1, 64, "fixed:3", rounds=16, new_tokens=64), 4, 96) == 96  # 64 -> a pass
    assert simulated_runs(Case(0.0, 4, 64, "fixed:3", rounds=12, new_tokens=64), 4, 96) == 48  # 192 = 2 passes


def test_sampled_dspark_cases_replay_the_live_steps_of_their_policy(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text(json.dumps({"accept_len": [1], "alpha": [0.5], "accept_prob": [0.4], "confidence": [0.3],
                                "chain_confidence": [[0.3]], "chain_accept_prob": [[0.4]], "step_policy": "dspark:5",
                                "step_confidence": [[0.3]], "step_accept_prob": [[1.0]]}) + "\n")
    assert trace_confidence_field("dspark:5", path) == "step_confidence"
    assert trace_probability_field("dspark:5", path) == "step_accept_prob"
    # no steps recorded at batch 16 (a trace recorded at batch 1 only): batch 1's
    assert trace_confidence_field("dspark:5", path, 16) == "step_confidence"
    both = tmp_path / "b.jsonl"
    both.write_text(json.dumps({"accept_len": [1], "alpha": [0.5], "step_policy": "dspark:5",
                                "step_confidence": [[0.3]], "step_accept_prob": [[1.0]],
                                "step_confidence_b16": [[0.4]], "step_accept_prob_b16": [[0.0]]}) + "\n")
    assert trace_confidence_field("dspark:5", both, 16) == "step_confidence_b16"
    assert trace_probability_field("dspark:5", both, 16) == "step_accept_prob_b16"
    assert trace_confidence_field("dspark:5", both, 4) == "step_confidence"
    # recorded under another policy: the chains along the target's tokens
    assert trace_confidence_field("dspark:3", path) == "chain_confidence"
    assert trace_probability_field("dspark:3", path) == "chain_accept_prob"
    assert trace_probability_field("fixed:5", path) == "alpha"
