"""Tensor parallelism (dspark_sim.engine.tp) on CPU: gloo, 2 processes.

What is checked against the single-process engine, on the same full weights:
- logits: fp64 models within 1e-12 (relative to the largest logit), fp32 within 2e-5 relative (the
  all-reduce sums partial products in another order than one matmul does; nothing else differs);
- greedy generation, baseline and speculative (fixed gamma and a confidence policy, whose verify
  lengths rank 0 decides): token-identical; sampled generation (T = 1, fp64) too, since the same
  seeded generator draws against logits equal to ~1e-15;
- every rank generated the same tokens; a model with fewer KV heads than ranks (replicated KV) works;
- bad input (tp not dividing the heads, KV heads incompatible, world size mismatch): one InputError line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

from dspark_sim.config.errors import InputError  # noqa: E402
from dspark_sim.config.schema import ConfidenceThreshold, DSparkScheduler, FixedGamma  # noqa: E402
from dspark_sim.core.policies import StepView  # noqa: E402
from dspark_sim.engine.model import WEIGHT_DTYPES, ModelArgs, build_model  # noqa: E402
from dspark_sim.engine.tp import policy as tp_policy  # noqa: E402
from dspark_sim.engine.tp.generate import GenerateJob, generate_job, generate_jobs, run_job  # noqa: E402
from dspark_sim.engine.tp.group import TPGroup, check_world  # noqa: E402
from dspark_sim.engine.tp.loading import ModelSource, build_tp_model, random_shards  # noqa: E402
from dspark_sim.engine.tp.policy import LeaderPolicy  # noqa: E402
from dspark_sim.engine.tp.shard import check_tp, kv_layout, shard_state_dict, vocab_shard  # noqa: E402
from dspark_sim.engine.tp.workers import run_workers  # noqa: E402

from ..engine_helpers import perturbed, prompts_for, random_model  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


# ------------------------------------------------------------------------------------------------
# Sharding maths (no processes)
# ------------------------------------------------------------------------------------------------


def _full_sd(args: ModelArgs):
    return {k: v.clone() for k, v in build_model(args, seed=3).state_dict().items()}


@pytest.mark.parametrize("tp,kv", [(2, 2), (4, 2), (2, 1), (4, 4)])
def test_shards_reassemble_the_full_weights(tp, kv):
    args = ModelArgs(vocab_size=30, dim=32, n_layers=1, n_heads=4, n_kv_heads=kv, ffn_hidden=64, max_seq_len=16)
    sd = _full_sd(args)
    shards = [shard_state_dict(sd, args, r, tp) for r in range(tp)]
    hd = args.head_dim
    cat = torch.cat
    assert torch.equal(cat([s["layers.0.attention.wq.weight"] for s in shards]), sd["layers.0.attention.wq.weight"])
    assert torch.equal(cat([s["layers.0.attention.wo.weight"] for s in shards], 1), sd["layers.0.attention.wo.weight"])
    assert torch.equal(cat([s["layers.0.feed_forward.w1.weight"] for s in shards]), sd["layers.0.feed_forward.w1.weight"])
    assert torch.equal(cat([s["layers.0.feed_forward.w2.weight"] for s in shards], 1), sd["layers.0.feed_forward.w2.weight"])
    assert torch.equal(shards[-1]["tok_embeddings.weight"], sd["tok_embeddings.weight"])  # replicated
    local_kv, reps = kv_layout(args, tp)
    rep = args.n_heads // args.n_kv_heads
    for r, s in enumerate(shards):
        wk = s["layers.0.attention.wk.weight"]
        assert wk.shape[0] == local_kv * hd
        # this rank's query heads must find their own KV head at the same local index ratio as GQA
        q_heads = range(r * args.n_heads // tp, (r + 1) * args.n_heads // tp)
        want = sorted({h // rep for h in q_heads})
        got = [int(i) for i in range((r // reps) * local_kv, (r // reps) * local_kv + local_kv)]
        assert want == got
        assert torch.equal(wk, sd["layers.0.attention.wk.weight"][got[0] * hd:(got[-1] + 1) * hd])
    # vocab 30 over 4 ranks: 8 rows each, the last rank's 2 padding rows are zero
    head = cat([s["output.weight"] for s in shards])
    assert head.shape[0] == vocab_shard(30, tp) * tp
    assert torch.equal(head[:30], sd["output.weight"]) and not head[30:].any()


def test_tied_embeddings_shard_the_head_from_the_embedding():
    args = ModelArgs(vocab_size=20, dim=16, n_layers=1, n_heads=2, n_kv_heads=1, ffn_hidden=32, tie_embeddings=True)
    sd = _full_sd(args)
    sd.pop("output.weight", None)
    shard = shard_state_dict(sd, args, 1, 2)
    assert torch.equal(shard["output.weight"], sd["tok_embeddings.weight"][10:])


@pytest.mark.parametrize("tie", [False, True])
def test_random_shards_are_the_whole_models_shards(tie):
    """Ranks of a large random model draw it tensor by tensor; the shards must be build_model's exactly."""
    args = ModelArgs(vocab_size=30, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=64, max_seq_len=16,
                     tie_embeddings=tie)
    full = build_model(args, seed=4)
    sd = dict(full.state_dict())
    for rank in range(2):
        group = TPGroup(rank=rank, world=2, device=torch.device("cpu"), backend="gloo", group_name="none")
        want = shard_state_dict(sd, args, rank, 2)
        got = random_shards(args, group, torch.float32, seed=4)
        assert sorted(got) == sorted(want)
        for name in want:
            assert torch.equal(got[name], want[name]), name
        model = build_tp_model(args, group, dtype=torch.float32, seed=4)
        for name, param in model.named_parameters():
            assert not param.is_meta, name
        assert torch.equal(model.output.weight, want["output.weight"])
        assert torch.equal(model.rope_cos, full.rope_cos)


def test_bad_tp_is_one_input_error():
    args = ModelArgs.from_preset("test-target")  # 4 heads, 2 KV heads, FFN 128
    with pytest.raises(InputError, match="4 attention heads do not split over tensor parallel degree 3"):
        check_tp(args, 3, "test-target")
    odd = ModelArgs(n_heads=12, n_kv_heads=4, dim=96, ffn_hidden=192)
    with pytest.raises(InputError, match="4 KV heads and tp 6"):
        check_tp(odd, 6)
    with pytest.raises(InputError, match=r"--tp 2 but 3 processes were started"):
        check_world(2, 3)
    assert check_world(None, 3) == 3 and kv_layout(args, 4) == (1, 2)


def _cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    e = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "dspark_sim.cli.tp", *args], capture_output=True, text=True,
                          cwd=REPO, env=e, timeout=timeout)


def test_cli_bad_input_is_one_line():
    out = _cli("generate", "--tp", "3")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "error: test-target: n_heads: 4 attention heads do not split over tensor parallel degree 3 "
        "(tp must divide the head count)"]
    # under torchrun's environment with another world size: refused before any process group exists
    out = _cli("generate", "--tp", "2", env={"WORLD_SIZE": "3", "RANK": "0", "LOCAL_RANK": "0"})
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: torchrun: --tp: --tp 2 but 3 processes were started")
    out = _cli("generate", "--shape", "no-such-shape")
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1 and "unknown model preset" in out.stderr


# ------------------------------------------------------------------------------------------------
# Two gloo processes against the single-process engine
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory):
    """fp64 target + perturbed draft (the engine tests' pair), and an fp32 target with 1 KV head."""
    d = tmp_path_factory.mktemp("tp")
    target = random_model(seed=0, max_seq_len=96)
    draft = perturbed(target, noise=0.35)
    kv1 = ModelArgs(vocab_size=264, dim=32, n_layers=2, n_heads=4, n_kv_heads=1, ffn_hidden=64, max_seq_len=96)
    t32 = build_model(kv1, seed=5)
    with torch.no_grad():
        t32.output.weight.mul_(30.0)
    paths = {}
    for name, m in (("target", target), ("draft", draft), ("kv1", t32)):
        paths[name] = str(d / f"{name}.pt")
        torch.save({k: v.clone() for k, v in m.state_dict().items()}, paths[name])
    return {"target": ModelSource(target.args, state_dict_path=paths["target"], name="target"),
            "draft": ModelSource(draft.args, state_dict_path=paths["draft"], name="draft"),
            "kv1": ModelSource(kv1, state_dict_path=paths["kv1"], name="kv1")}


def _jobs(m) -> list[GenerateJob]:
    ragged = prompts_for(3, seed=7, max_len=10)
    return [
        # greedy, fixed gamma, ragged batch; logits probed
        GenerateJob(m["target"], m["draft"], ragged, 20, policy=FixedGamma(gamma=3), dtype="fp64", logits_probe=True),
        # greedy, confidence policy: verify lengths vary per row and step (rank 0 decides)
        GenerateJob(m["target"], m["draft"], ragged, 16, policy=ConfidenceThreshold(gamma_max=4, threshold=0.2),
                      dtype="fp64", baseline=False),
        # sampled, T = 1
        GenerateJob(m["target"], m["draft"], ragged, 16, policy=FixedGamma(gamma=2), temperature=1.0,
                      dtype="fp64", sample_seed=11),
        # greedy, DSpark's prefix scheduler (SPS(B) profiled on the sharded target by every rank; rank 0's rules)
        GenerateJob(m["target"], m["draft"], ragged[:2], 16, policy=DSparkScheduler(gamma_max=4), dtype="fp64"),
        # fp32 target with one KV head (replicated on both ranks), self-speculation as the draft
        GenerateJob(m["kv1"], m["kv1"], prompts_for(2, seed=3), 12, policy=FixedGamma(gamma=2), dtype="fp32",
                    logits_probe=True),
    ]


def _reference(job: GenerateJob) -> dict:
    """The single-process engine on the full weights (one thread: these models are tiny, and two
    OpenMP threads on two shared cores can be 100x slower when another process is busy)."""
    dt = WEIGHT_DTYPES[job.dtype]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        target = job.target.build_full(torch.device("cpu"), dt)
        draft = job.draft.build_full(torch.device("cpu"), dt) if job.draft is not None else None
        return run_job(target, draft, job, None)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tp_runs(saved_models):
    jobs = _jobs(saved_models)
    return jobs, run_workers(generate_jobs, 2, jobs)


def test_tp_logits_match_single_process(tp_runs):
    jobs, results = tp_runs
    for job, res, tol in ((jobs[0], results[0], 1e-12), (jobs[-1], results[-1], 2e-5)):
        ref = _reference(job)["logits"].double()
        got = res["logits"].double()
        assert got.shape == ref.shape
        scale = float(ref.abs().max())
        assert float((got - ref).abs().max()) <= tol * scale
        assert torch.equal(got.argmax(-1), ref.argmax(-1))


def test_tp_generation_token_identical(tp_runs):
    jobs, results = tp_runs
    for job, res in zip(jobs, results, strict=True):
        assert res["tp"] == 2 and res["backend"] == "gloo" and res["ranks_agree"]
        ref = _reference(job)
        assert res["speculative"]["tokens"] == ref["speculative"]["tokens"]
        if not isinstance(job.policy, DSparkScheduler):  # its budget depends on timings, which differ between runs
            assert res["speculative"]["target_passes"] == ref["speculative"]["target_passes"]
        if job.baseline:
            assert res["baseline"]["tokens"] == ref["baseline"]["tokens"]
        if job.temperature == 0 and job.baseline:
            assert res["speculative"]["tokens"] == res["baseline"]["tokens"]
    # the fixed-gamma greedy run did accept and reject drafts (so both paths ran under TP)
    assert 1.0 < results[0]["speculative"]["tau"] < 4.0


def test_functional_collectives_path(saved_models, monkeypatch):
    """The collectives CUDA graphs capture (torch.ops._c10d_functional), here on gloo."""
    monkeypatch.setenv("DSPARK_TP_COLLECTIVES", "functional")
    job = _jobs(saved_models)[0]
    res = run_workers(generate_job, 2, job)
    ref = _reference(job)
    assert res["speculative"]["tokens"] == ref["speculative"]["tokens"] and res["ranks_agree"]
    assert float((res["logits"] - ref["logits"]).abs().max()) <= 1e-12 * float(ref["logits"].abs().max())


def test_torchrun_entry_point(tmp_path):
    """The documented launch: torchrun --nproc-per-node 2 -m dspark_sim.cli.tp generate ... --check."""
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    if not os.path.exists(torchrun):
        pytest.skip("torchrun not installed beside this python")
    out_json = tmp_path / "run.json"
    out = subprocess.run(
        [torchrun, "--standalone", "--nproc-per-node", "2", "-m", "dspark_sim.cli.tp", "generate",
         "--check", "--dtype", "fp64", "--max-new-tokens", "12", "--json", "-o", str(out_json)],
        capture_output=True, text=True, cwd=REPO, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    # the head of stderr holds a failing rank's own message; the tail, torchrun's summary
    assert out.returncode == 0, out.stderr[:3000] + "\n...\n" + out.stderr[-1000:]
    doc = json.loads(out_json.read_text())
    assert doc["tp"] == 2 and doc["ranks_agree"]
    assert doc["check"]["baseline_identical"] and doc["check"]["speculative_identical"]
    assert doc["check"]["logits_max_abs_diff"] <= 1e-12 * doc["check"]["logits_max_abs"]
    assert json.loads(out.stdout)["tp"] == 2  # only rank 0 prints


def test_leader_policy_broadcasts_only_what_can_differ_between_ranks(monkeypatch):
    """Fixed gamma is the same on every rank (no host broadcast a step); a confidence policy's lengths
    come from rank 0."""
    import numpy as np

    calls = []

    def fake_broadcast(buf, src, group):
        calls.append(src)
        buf.copy_(torch.full_like(buf, 3))

    monkeypatch.setattr(tp_policy.dist, "broadcast", fake_broadcast)
    follower = TPGroup(rank=1, world=2, device=torch.device("cpu"), backend="gloo", group_name="x")
    view = StepView(context_lens=np.array([10, 20]))
    fixed = LeaderPolicy(FixedGamma(gamma=4), follower)
    assert fixed.draft_lengths(view).tolist() == [4, 4] and not calls
    threshold = LeaderPolicy(ConfidenceThreshold(gamma_max=4, threshold=0.5), follower)
    assert threshold.draft_lengths(view).tolist() == [3, 3] and calls == [0]  # rank 0's, as broadcast
