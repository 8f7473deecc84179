"""Trace files: engine results -> JSONL -> records, unchanged; atomic writes; clear errors."""

from __future__ import annotations

import pytest

from dspark_sim.config.traces import RequestRecord, StepRecord, TraceMeta, read_trace, write_trace


def test_records_round_trip(tmp_path):
    recs = [
        TraceMeta(info={"tau": 2.5}),
        StepRecord(step=0, batch_size=2, draft_time_s=0.01, verify_time_s=0.02, seq_id=[0, 1], context_len=[5, 9],
                   drafted=[3, 3], verified=[3, 1], accepted=[2, 1], confidences=[[0.9, 0.8, 0.3], [0.7, 0.2, 0.1]]),
        RequestRecord(request_id="r1", prompt_len=5, output_len=4, step_start=[1], verified=[3], accepted=[2],
                      confidences=[[0.9, 0.8, 0.3]]),
    ]
    path = write_trace(tmp_path / "sub" / "t.jsonl", recs)
    assert read_trace(path) == recs
    assert recs[2].yields == [3]
    assert [p.name for p in path.parent.iterdir()] == ["t.jsonl"]  # no temp file left behind


def test_validation_and_bad_lines(tmp_path):
    with pytest.raises(ValueError):
        StepRecord(step=0, batch_size=2, draft_time_s=0, verify_time_s=0, seq_id=[0], context_len=[1],
                   drafted=[1], verified=[1], accepted=[1])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"kind": "meta"}\n\n{"kind": "nope"}\n')
    with pytest.raises(ValueError, match=":3:"):
        read_trace(bad)


def test_engine_result_trace(tmp_path, pair):
    torch = pytest.importorskip("torch")
    from dspark_sim.config.schema import ConfidenceThreshold
    from dspark_sim.engine.generate import speculative_generate

    from .engine_helpers import prompts_for

    target, draft = pair
    prompts = prompts_for(3, seed=5)
    res = speculative_generate(target, draft, prompts, 20, ConfidenceThreshold(gamma_max=4, threshold=0.3))
    path = write_trace(tmp_path / "run.jsonl", res.trace_records({"who": "test"}))
    recs = read_trace(path)
    assert isinstance(recs[0], TraceMeta) and recs[0].info["who"] == "test"
    steps = [r for r in recs if isinstance(r, StepRecord)]
    reqs = [r for r in recs if isinstance(r, RequestRecord)]
    assert len(steps) == len(res.steps) and len(reqs) == 3
    for r, p in zip(reqs, prompts, strict=True):
        assert r.prompt_len == len(p) and r.output_len == 20
        assert r.step_start[0] == 1  # prefill produced the first token
        assert 1 + sum(r.yields) >= 20 and 1 + sum(r.yields[:-1]) < 20
        assert all(s2 - s1 == y for s1, s2, y in zip(r.step_start, r.step_start[1:], r.yields, strict=False))
        assert all(len(c) >= v for c, v in zip(r.confidences, r.verified, strict=True))
    assert torch is not None
