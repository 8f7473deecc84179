"""`dspark-sim validate --drafters` (validate.drafters, drafter_predict, drafter_report) on a tiny synthetic
measured table: structure, sane values, and a prediction that follows the acceptance it is given; the
committed drafter tables parse as the typed document, labelled in the shorthand."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from dspark_sim.config.errors import InputError

torch = pytest.importorskip("torch")

from dspark_sim.config.drafter_table import DrafterTableRow, load_drafter_table  # noqa: E402
from dspark_sim.config.shorthand import parse_drafter_config  # noqa: E402
from dspark_sim.engine.caches import cache_tokens  # noqa: E402
from dspark_sim.engine.data import Corpus, held_out_prompts  # noqa: E402
from dspark_sim.engine.drafter_training import DRAFTER_TRAIN_PRESETS, train_drafter_models  # noqa: E402
from dspark_sim.engine.generate import generate_baseline  # noqa: E402
from dspark_sim.engine.sampling import Sampling  # noqa: E402
from dspark_sim.measure.drafter_loops import profile_drafter_loops  # noqa: E402
from dspark_sim.validate import drafter_report  # noqa: E402
from dspark_sim.validate import drafters as validate_drafters  # noqa: E402

from .engine_helpers import perturbed, prompts_for, random_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
VOCAB, PROMPT, NEW, GAMMA, BATCH = 16, 8, 24, 3, 2


@pytest.fixture(scope="module")
def dp() -> Any:
    from dspark_sim.validate import drafter_predict

    return drafter_predict


@pytest.fixture(scope="module")
def world(dp, tmp_path_factory):
    """Briefly trained test drafters, the committed CPU profile calibrated at T=0, traces at T=0."""
    from dspark_sim.fit.calibrate import load_profile

    target = random_model(VOCAB, seed=3, sharpness=6.0, dim=32, layers=2)
    target.requires_grad_(False)
    res = generate_baseline(target, prompts_for(16, VOCAB, seed=5, min_len=2, max_len=4), 32, Sampling(1.0),
                            generator=torch.Generator().manual_seed(0))
    data = torch.tensor([t for row in res.tokens for t in row])
    spec = replace(DRAFTER_TRAIN_PRESETS["test"], steps=20, batch_size=8, seq_len=32, anchors=8, lr=5e-3)
    out = train_drafter_models(target, ["mtp", "dspark"], Corpus(data, data, 1, 1), spec, seed=0)
    drafters = {"draft_model": perturbed(target, noise=0.35), **{k: v["drafter"] for k, v in out.items()}}
    profile = load_profile(ROOT / "validation" / "reports" / "cpu" / "profile.json")
    setup = dp.Setup(profile, dp.calibrated(profile, (0.0,)), PROMPT, NEW, cache_tokens(PROMPT, NEW, GAMMA), (0, 1))
    prompts = prompts_for(4, VOCAB, seed=7, min_len=PROMPT, max_len=PROMPT)
    tmp = tmp_path_factory.mktemp("traces")
    traces = validate_drafters.write_traces(target, drafters, prompts, NEW, (0.0,), 0, tmp)
    args = {k: (None if k == "draft_model" else d.args.to_dict()) for k, d in drafters.items()}
    return setup, traces, args, tmp


def _row(config: str, tok_s: float, speedup: float, tau: float) -> DrafterTableRow:
    return DrafterTableRow(temperature=0.0, batch=BATCH, config=config, tau=tau, acceptance_by_position=[],
                           per_user_tok_s=tok_s / BATCH, throughput_tok_s=tok_s, speedup=speedup,
                           batch_completion_per_user_tok_s=tok_s / BATCH, prompt_batches=1, step_ms=None,
                           verified_per_seq_step=0.0, draft_ms_per_step=0.0, verify_ms_per_step=0.0,
                           greedy_identical=None)


ROWS = [_row("baseline", 2000.0, 1.0, 1.0), _row("mtp/fixed:1", 1800.0, 0.9, 1.7),
        _row(f"dspark/fixed:{GAMMA}", 2400.0, 1.2, 2.5), _row(f"dspark/dspark:{GAMMA}", 2300.0, 1.15, 2.3),
        _row(f"draft_model/fixed:{GAMMA}", 2200.0, 1.1, 2.4)]
SPS = {f"dspark@{BATCH}": {str(BATCH * (g + 1)): 400.0 - 20.0 * g for g in range(GAMMA + 1)}}


def test_predicts_every_row(dp, world):
    setup, traces, args, _ = world
    rows = dp.predict_rows(ROWS, SPS, setup, traces, args)
    assert [r["config"] for r in rows] == [r.config for r in ROWS]
    for r in rows:
        for key in ("predicted_throughput_tok_s", "predicted_per_user_tok_s", "predicted_speedup", "predicted_tau"):
            assert math.isfinite(r[key]) and r[key] > 0, (r["config"], key)
        assert r["tok_s_error_pct"] == pytest.approx(100 * (r["predicted_throughput_tok_s"] /
                                                            r["measured_throughput_tok_s"] - 1), abs=0.1)
    assert rows[0]["predicted_speedup"] == 1.0 and rows[0]["predicted_tau"] == 1.0
    assert rows[1]["predicted_tau"] <= 2.0 + 1e-9  # gamma 1: at most 2 tokens a step
    report = drafter_report.assemble(rows, GAMMA, {})
    kinds = {e["drafter"] for e in report["errors"]}
    assert kinds == {"baseline", "mtp", "dspark", "draft_model"}
    side = report["comparison"]["T=0"]
    assert set(side) == {"measured", "predicted"} and side["predicted"][0]["batch"] == BATCH
    report["command"] = "test"
    text = drafter_report.markdown(report)
    assert "dspark/dspark:3" in text and "Command:" in text
    # deterministic: the same inputs give the same numbers
    assert dp.predict_rows(ROWS, SPS, setup, traces, args) == rows
    # a DSpark row needs the SPS(B) table the engine ran it with
    with pytest.raises(InputError, match="sps_tables.dspark@2"):
        dp.predict_rows(ROWS[3:4], {}, setup, traces, args)


def test_better_acceptance_predicts_a_larger_speedup(dp, world):
    setup, traces, args, tmp = world
    speedups = []
    for accept in (1, 2, GAMMA + 1):  # nothing accepted, one draft, the whole block
        path = tmp / f"synthetic-{accept}.jsonl"
        rec = {"prompt_len": PROMPT, "output_len": NEW, "accept_len": [accept] * NEW, "confidence": [0.5] * NEW}
        path.write_text("".join(json.dumps(rec) + "\n" for _ in range(4)))
        rows = dp.predict_rows(ROWS[2:3], SPS, setup, {("dspark", 0.0): path}, args)
        speedups.append(rows[0]["predicted_speedup"])
        assert rows[0]["predicted_tau"] == pytest.approx(min(accept, GAMMA + 1), rel=0.05)
    assert speedups[0] < speedups[1] < speedups[2]
    assert speedups[0] < 1.0 < speedups[2]


def test_drafter_specs_follow_the_engine(dp, world):
    setup, _, args, _ = world
    from dspark_sim.config.schema import DrafterSpec

    block = args["dspark"]["block_size"]
    d = DrafterSpec.model_validate(dp.drafter_spec("dspark", args["dspark"], setup.profile, GAMMA))
    assert (d.kind, d.first_pass_tokens, d.sliding_window_tokens) == ("dspark", block - GAMMA, args["dspark"]["window"])
    assert d.markov_rank == args["dspark"]["markov_rank"]
    m = DrafterSpec.model_validate(dp.drafter_spec("mtp", args["mtp"], setup.profile, 1))
    assert (m.kind, m.first_pass_tokens, m.num_layers) == ("mtp", 1.0, args["mtp"]["n_layers"])
    assert DrafterSpec.model_validate(dp.drafter_spec("draft_model", None, setup.profile, GAMMA)).first_pass_tokens == 2
    with pytest.raises(ValueError):
        dp.drafter_spec("parallel_block", args["dspark"], setup.profile, block)


def test_trace_prompts_avoid_the_measured_ones():
    data = torch.arange(5000)
    measured = held_out_prompts(Corpus(data, data, 1, 1), 8, 32)
    ours = validate_drafters.unmeasured_prompts(data.tolist(), 8, 32, 5)
    assert len(ours) == 5 and all(len(p) == 32 for p in ours)
    for p in ours:
        assert all(abs(p[0] - m[0]) >= 32 for m in measured)


def test_validate_drafters_bad_input_is_one_line(tmp_path):
    import subprocess
    import sys

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "dspark_sim.cli.main", "validate", *args], capture_output=True,
                              text=True, cwd=ROOT, timeout=120)

    profile = str(ROOT / "validation" / "reports" / "cpu" / "profile.json")
    out = cli("--drafters", str(tmp_path / "nope.json"), "--profile", profile)
    assert out.returncode == 2 and "not found" in out.stderr and "Traceback" not in out.stderr
    bad = tmp_path / "bad.json"
    bad.write_text('{"preset": "tiny"}')
    out = cli("--drafters", str(bad), "--profile", profile)
    assert out.returncode == 2 and "seed" in out.stderr and "Traceback" not in out.stderr
    out = cli("--drafters", str(bad))
    assert out.returncode == 2 and "--profile" in out.stderr and "Traceback" not in out.stderr


def test_drafter_loop_overhead_profile_and_fit(dp, world):
    """Each drafter loop's per-step overhead: profiled step times are positive, and the fit returns the
    measured step minus the priced draft + verify passes (1 ms more measured -> 1,000 us more overhead)."""
    setup, _traces, args, _ = world
    target = random_model(vocab=VOCAB, seed=11)
    draft = perturbed(target, noise=0.3)
    steps = profile_drafter_loops(target, {"draft_model": draft}, {"draft_model": (2,)}, (0.0,), (1, 2), PROMPT,
                                  setup.cache_tokens, new_tokens=8, repeats=1)
    assert set(steps) == {("draft_model", 0.0, 2, 1), ("draft_model", 0.0, 2, 2)}
    assert all(v > 0 for v in steps.values())
    base = dp.fit_loop_overheads(setup, {("draft_model", 0.0, 2, 1): 0.05}, args)
    more = dp.fit_loop_overheads(setup, {("draft_model", 0.0, 2, 1): 0.051}, args)
    assert base[("draft_model", 0.0, 2)] > 0
    assert abs(more[("draft_model", 0.0, 2)] - base[("draft_model", 0.0, 2)] - 1000.0) < 0.5
    assert dp.fit_loop_overheads(setup, {("draft_model", 0.0, 2, 1): 1e-9}, args)[("draft_model", 0.0, 2)] == 0.0
    # a table that carries its own loop profile (`engine drafters table`) is read, before/after averaged
    loop_step_s = {"mtp|0|1|4": [0.002, 0.004], "dspark|1|5|16": [0.01, 0.01]}
    assert dp.table_loop_steps(loop_step_s) == {("mtp", 0.0, 1, 4): 0.003, ("dspark", 1.0, 5, 16): 0.01}
    assert dp.table_loop_steps({}) == {}
    # the fitted overhead reaches the simulator's hardware for that drafter only
    tuned = replace(setup, loop_step_us={("draft_model", 0.0, 2): 1234.0})
    assert tuned.hardware(0.0, "draft_model", 2).overheads.per_step_us == 1234.0
    assert tuned.hardware(0.0, "mtp", 2).overheads.per_step_us == setup.hw[0.0].overheads.per_step_us


@pytest.mark.parametrize("name", ["cpu", "cuda", "cuda-x2"])
def test_committed_tables_parse_with_the_typed_document(name):
    """validation/drafters/<name>.json: every row labelled DRAFTER/POLICY in the shorthand, drafters named by
    the simulator's kinds, its SPS(B) tables and loop steps where the prediction looks them up."""
    table = load_drafter_table(ROOT / "validation" / "drafters" / f"{name}.json")
    assert set(table.drafters) == {"draft_model", "mtp", "parallel_block", "dspark"}
    assert table.cache_tokens == cache_tokens(table.prompt_len, table.new_tokens, table.gamma)
    for r in table.rows:
        if r.config != "baseline":
            kind, _ = parse_drafter_config(r.config)
            assert kind in table.drafters
            if r.config.endswith(f"/dspark:{table.gamma}"):
                assert table.sps_table(kind, r.batch)
    assert {k for (k, _t, _g, _b) in table.loop_steps()} == set(table.drafters)


def test_drafter_table_bad_rows_are_one_line(tmp_path):
    doc = json.loads((ROOT / "validation" / "drafters" / "cuda.json").read_text())
    doc["rows"][1]["config"] = "parallel/fixed-5"
    bad = tmp_path / "old.json"
    bad.write_text(json.dumps(doc))
    with pytest.raises(InputError) as err:
        load_drafter_table(bad)
    assert err.value.field == "rows[1].config" and "'parallel/fixed-5'" in str(err.value)
    bad.write_text(json.dumps({"partial": True, "rows": []}))
    with pytest.raises(InputError, match="partial"):
        load_drafter_table(bad)
