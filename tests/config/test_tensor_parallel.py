"""The tensor-parallel documents: every committed TP table parses, and writes back the same fields with the
same values; a re-predicted table (whose field order is the writer's) comes back byte for byte."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dspark_sim.config.errors import InputError
from dspark_sim.config.tensor_parallel import AllReduceProfile, TPTable, load_tp_table

REPO = Path(__file__).resolve().parents[2]
TABLES = sorted((REPO / "validation" / "tp").rglob("*.json"))


def test_the_committed_tables_are_there():
    names = {p.name for p in TABLES}
    assert {"h200x4_replicated_draft_8b.json", "h200x4_replicated_draft_70b.json"} <= names, names


@pytest.mark.parametrize("path", TABLES, ids=lambda p: p.relative_to(REPO / "validation" / "tp").as_posix())
def test_committed_tables_parse_and_round_trip(path: Path):
    text = path.read_text()
    table = load_tp_table(path)
    assert table.rows and table.interconnect_used.latency_us > 0
    again = table.to_json()
    # the same fields with the same values (ints stay ints, NaN stays NaN), whatever their order
    assert json.dumps(json.loads(again), sort_keys=True) == json.dumps(json.loads(text), sort_keys=True)
    if table.repredicted is not None:
        assert again + "\n" == text
    assert TPTable.model_validate_json(again) == table


def test_old_tables_keep_what_they_lacked(tmp_path):
    """Tables written before the launch cost and the sample contexts existed: those fields stay absent
    when written back."""
    doc = json.loads((REPO / "validation" / "tp" / "collective-costs" / "h200x4_burst_8b.json").read_text())
    for part in ("interconnect_fit", "interconnect_used"):
        doc[part].pop("launch_us")
    for sample in doc["allreduce"]:
        sample.pop("context", None)
    doc.pop("draft_replicated", None)
    (tmp_path / "old.json").write_text(json.dumps(doc))
    old = load_tp_table(tmp_path / "old.json")
    assert old.interconnect_fit is not None and old.interconnect_fit.context is None
    assert old.allreduce and all(s.context == "burst" for s in old.allreduce)
    doc = old.document()
    assert "draft_replicated" not in doc and "launch_us" not in doc["interconnect_fit"]
    assert "context" not in doc["allreduce"][0] and "launch_us" not in doc["interconnect_used"]


def test_a_bad_table_is_one_input_error(tmp_path):
    doc = json.loads((REPO / "validation" / "tp" / "collective-costs" / "h200x2_between_matmuls_70b.json").read_text())
    del doc["rows"][0]["batch"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    with pytest.raises(InputError, match=r"rows\[0\]\.batch: required field is missing"):
        load_tp_table(bad)
    with pytest.raises(InputError, match="TP table not found"):
        load_tp_table(tmp_path / "missing.json")


def test_allreduce_profile_leaves_out_an_absent_fit():
    device = {"kind": "cpu", "name": "x", "torch_version": "t", "threads": 2, "memory_gb": 1.0, "onchip_mb": 1.0}
    sample = {"world_size": 2, "tokens": 1, "hidden": 8, "dtype": "fp32", "message_bytes": 32,
              "times_s": [1e-5], "median_s": 1e-5, "spread": 0.0}
    prof = AllReduceProfile.model_validate({"engine_version": "v", "backend": "gloo", "device": device,
                                            "world_size": 2, "mode": "eager", "samples": [sample]})
    doc = json.loads(prof.to_json())
    assert doc["kind"] == "allreduce-profile" and "fit" not in doc
    assert doc["samples"][0]["context"] == "burst"
