"""`engine drafters train|generate|table` end to end on the test preset (seconds), checkpoints beside the
pair, cached reloads, bad input -> InputError, and the drafter table's measurement on tiny sizes."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
from typer.testing import CliRunner  # noqa: E402

from dspark_sim.cli.engine import engine_app  # noqa: E402
from dspark_sim.config.drafter_table import DrafterTable, load_drafter_table, table_json  # noqa: E402
from dspark_sim.config.errors import InputError  # noqa: E402
from dspark_sim.engine.drafters import KINDS  # noqa: E402
from dspark_sim.engine.train import pair_dir  # noqa: E402
from dspark_sim.engine.train_drafters import train_drafters  # noqa: E402
from dspark_sim.measure.drafter_table import TableGrid, measure_drafter_table  # noqa: E402

runner = CliRunner()


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("dcache")
    res = runner.invoke(engine_app, ["drafters", "train", "--preset", "test", "--seed", "2", "--cache-dir", str(root)])
    assert res.exit_code == 0, res.output
    assert "ECE" in res.output and "dspark" in res.output
    return root


def test_checkpoints_beside_the_pair_and_cached(cache):
    folder = pair_dir("test", 2, cache) / "drafters"
    for kind in KINDS:
        assert (folder / f"{kind}.safetensors").is_file()
        meta = json.loads((folder / f"{kind}.json").read_text())
        m = meta["metrics"]
        assert m["kind"] == kind and m["train_time_s"] > 0 and len(m["alpha_t1_by_position"]) == 6
        for mode in ("sampled", "greedy"):
            cal = m["calibration"][mode]
            assert len(cal["token_conf_ece_before"]) == 6
            if kind == "dspark":
                assert len(cal["temperature"]) == 6 and cal["ece_after_all"] >= 0
    mtime = (folder / "dspark.safetensors").stat().st_mtime_ns
    loaded = train_drafters("test", 2, cache, ["dspark"])  # from the cache, not retrained
    assert (folder / "dspark.safetensors").stat().st_mtime_ns == mtime
    d = loaded["dspark"].drafter
    cal = loaded["dspark"].metrics["calibration"]
    assert torch.allclose(d.conf_temperature[0], torch.tensor(cal["sampled"]["temperature"], dtype=d.dtype))


@pytest.mark.parametrize("extra", [
    ["--kind", "dspark"],
    ["--kind", "parallel_block", "--policy", "fixed:3", "--batch-size", "2"],
    ["--kind", "mtp", "--policy", "confidence_threshold:5@0.3", "--batch-size", "3"],
    ["--kind", "draft_model", "--policy", "dspark:4"],
    ["--kind", "dspark", "--temperature", "0.8", "--top-k", "20", "--batch-size", "2"],
])
def test_generate(cache, extra):
    res = runner.invoke(engine_app, ["drafters", "generate", "--preset", "test", "--seed", "2", "--cache-dir",
                                     str(cache), "--prompt", "def f(x):", "--max-new-tokens", "20", *extra])
    assert res.exit_code == 0, res.output
    for word in ("tau", "acceptance by position", "speculative tok/s", "baseline tok/s", "speed-up"):
        assert word in res.output
    if "--temperature" not in extra:
        assert "True" in res.output  # greedy output identical to the baseline's


@pytest.mark.parametrize("args, field", [
    (["drafters", "train", "--preset", "huge"], "unknown preset"),
    (["drafters", "train", "--preset", "test", "--kind", "medusa"], "medusa"),
    (["drafters", "generate", "--preset", "test", "--seed", "2", "--kind", "medusa"], "--kind"),
    (["drafters", "generate", "--preset", "test", "--seed", "2", "--policy", "magic"], "--policy"),
    (["drafters", "generate", "--preset", "test", "--seed", "2", "--policy", "dspark:9"], "--policy"),
    (["drafters", "generate", "--preset", "test", "--seed", "2", "--temperature", "-1"], "temperature"),
    (["drafters", "generate", "--preset", "test", "--seed", "77"], "no trained pair"),
])
def test_bad_input_raises_input_error(cache, args, field):
    res = runner.invoke(engine_app, [*args, "--cache-dir", str(cache)])
    assert isinstance(res.exception, InputError), res.output
    assert field in str(res.exception)


def test_drafter_table_on_tiny_sizes(cache, tmp_path):
    partials: list[int] = []
    grid = TableGrid(preset="test", seed=2, cache_dir=str(cache), new_tokens=10, prompt_len=8, batches=(1, 2),
                     frontier_batches=(1, 2), temperatures=(0.0, 1.0), gamma=3, repeats=1, min_sequences=2)
    table = measure_drafter_table(grid, "test", log=lambda _m: None,
                                  partial=lambda doc: partials.append(len(doc.rows)))
    rows = table.rows
    # the rows so far are handed out after every (temperature, batch), growing, ending with the whole table
    assert len(partials) == 4 and partials == sorted(partials) and partials[-1] == len(rows)
    # batch 1 pools two batches of distinct prompts (no point rests on one prompt)
    assert {r.prompt_batches for r in rows if r.batch == 1} == {2}
    assert {r.prompt_batches for r in rows if r.batch == 2} == {1}
    # each drafter loop profiled before and after the table (for `validate --drafters`)
    loops = table.loop_step_s
    assert {"mtp|0|1|1", "mtp|0|3|1", "dspark|1|3|1", "draft_model|0|3|1"} <= set(loops)
    assert all(len(v) == 2 and min(v) > 0 for v in loops.values())
    names = {r.config for r in rows}
    assert {"baseline", "mtp/fixed:1", "dspark/dspark:3", "parallel_block/fixed:3", "draft_model/fixed:3"} <= names
    assert all(r.per_user_tok_s > 0 and r.tau >= 1 for r in rows)
    assert all(r.greedy_identical for r in rows if r.temperature == 0.0)
    assert table.comparison["T=1"].dspark_vs_mtp1_at_matched_throughput
    live = table.live_calibration["dspark"]
    assert "T=0 uncalibrated" in live and len(live["T=1"].ece_by_position) == 3
    assert set(table.training) == {"draft_model", *KINDS}
    assert set(table.drafters) == {"draft_model", *KINDS}
    assert table.sps_table("dspark", 1) and table.sps_table("parallel_block", 2) and table.sps_table("mtp", 7) is None
    # written and read back through the typed document; the saved table renders without measuring
    path = tmp_path / "table.json"
    path.write_text(table_json(table))
    again = load_drafter_table(path)
    assert isinstance(again, DrafterTable) and table_json(again) == path.read_text()  # (NaN != NaN: compare text)
    doc = json.loads(path.read_text())
    assert "temperature" in doc["training"]["dspark"]["calibration_teacher_forced"]["sampled"]
    assert "temperature" not in doc["training"]["mtp"]["calibration_teacher_forced"]["sampled"]
    md = tmp_path / "table.md"
    res = runner.invoke(engine_app, ["drafters", "table", "--from-json", str(path), "--markdown", str(md)])
    assert res.exit_code == 0, res.output
    text = md.read_text()
    assert "| dspark/dspark:3 |" in text and "DSpark (prefix scheduler, gamma_max 3) against MTP-1" in text
    assert "| parallel_block | sampled | q(token):" in text


@pytest.mark.parametrize("args, field", [
    (["drafters", "table"], "--out"),
    (["drafters", "table", "--out", "x.json", "--kinds", "medusa"], "medusa"),
    (["drafters", "table", "--out", "x.json", "--batches", "1,a"], "--batches"),
    (["drafters", "table", "--out", "x.json", "--device", "tpu"], "--device"),
    (["drafters", "table", "--out", "x.json", "--preset", "huge"], "unknown preset"),
])
def test_drafter_table_bad_input(tmp_path, args, field):
    res = runner.invoke(engine_app, args)
    assert isinstance(res.exception, InputError), res.output
    assert field in str(res.exception)
