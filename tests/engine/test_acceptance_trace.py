"""The teacher-forced acceptance traces validate predicts from: yields, chains and live steps."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from dspark_sim.config.schema import FixedGamma  # noqa: E402
from dspark_sim.core.acceptance import load_acceptance_trace, trace_tau  # noqa: E402
from dspark_sim.core.policies import DSparkPolicy, FixedPolicy, table_sps  # noqa: E402
from dspark_sim.engine.generate import speculative_generate  # noqa: E402
from dspark_sim.engine.sampling import Sampling  # noqa: E402
from dspark_sim.measure.acceptance_trace import (  # noqa: E402
    acceptance_records,
    conditional_acceptance,
    live_steps,
)


def test_greedy_trace_predicts_engine_tau_exactly(pair, tmp_path):
    """Teacher forcing gives, at every position, what a greedy speculative step would accept: walking
    the trace at gamma reproduces the engine's own tau (batch 1, so no padding effects)."""
    target, draft = pair
    gen = torch.Generator().manual_seed(0)
    prompts = torch.randint(0, 264, (3, 12), generator=gen).tolist()
    recs = acceptance_records(target, draft, prompts, 40, Sampling())
    path = tmp_path / "trace.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    trace = load_acceptance_trace(str(path), "accept_len", None, "confidence")
    assert trace.confidences is not None and len(trace.confidences[0]) == len(trace.yields[0])
    for gamma in (1, 3, 5):
        gained = steps = 0
        for p in prompts:
            res = speculative_generate(target, draft, [p], 40, FixedGamma(gamma=gamma))
            gained += sum(int((s.accepted + 1)[s.active].sum()) for s in res.steps)
            steps += sum(int(s.active.sum()) for s in res.steps)
        engine_tau = gained / steps
        # the engine starts stepping after the prefill's token (output position 1); so does this walk
        shifted = trace.__class__(trace.path, trace.prompt_lens, trace.output_lens,
                                  tuple(y[1:] for y in trace.yields), None)
        assert trace_tau(shifted, gamma) == pytest.approx(engine_tau, rel=0.02)
    cond = conditional_acceptance(recs, 4)
    assert all(0.0 <= c <= 1.0 for c in cond)


def test_sampled_trace_couples_acceptance_to_the_confidence(pair):
    """accept_prob = min(1, p(x)/q(x)) of the token x whose q(x) is the recorded confidence: its mean is
    alpha's (E over x ~ q); a draft that is the target is accepted for sure; greedy traces need none."""
    target, draft = pair
    gen = torch.Generator().manual_seed(1)
    prompts = torch.randint(0, 264, (16, 12), generator=gen).tolist()
    recs = acceptance_records(target, draft, prompts, 48, Sampling(1.0))
    alpha = np.concatenate([r["alpha"] for r in recs])
    prob = np.concatenate([r["accept_prob"] for r in recs])
    assert prob.min() >= 0.0 and prob.max() <= 1.0 and prob.std() > 0.1
    assert prob.mean() == pytest.approx(alpha.mean(), abs=0.03)  # 768 positions
    same = acceptance_records(target, target, prompts[:4], 16, Sampling(1.0))
    assert all(a == pytest.approx(1.0, abs=1e-5) for r in same for a in r["accept_prob"])
    assert "accept_prob" not in acceptance_records(target, draft, prompts[:2], 8, Sampling())[0]


def _leading_ones(rows) -> list[int]:
    out = []
    for row in rows:
        k = 0
        while k < len(row) and row[k] == 1.0:
            k += 1
        out.append(k)
    return out


def test_draft_chains_follow_the_drafts_own_tokens(pair):
    """A chain starts with the per-position fields' token (same confidence and acceptance), and while the
    target accepts it, it drafts the target's own tokens: greedy, its accepted run from position i is the
    trace's yield there (capped at its length). The per-position fields are those of a run without chains."""
    target, draft = pair
    gen = torch.Generator().manual_seed(3)
    prompts = torch.randint(0, 264, (3, 12), generator=gen).tolist()
    for sampling in (Sampling(), Sampling(1.0)):
        plain = acceptance_records(target, draft, prompts, 24, sampling)
        recs = acceptance_records(target, draft, prompts, 24, sampling, chain=4)
        for r, q in zip(recs, plain, strict=True):
            assert {k: v for k, v in r.items() if not k.startswith("chain_")} == q
            conf, acc = np.array(r["chain_confidence"]), np.array(r["chain_accept_prob"])
            assert conf.shape == acc.shape == (len(r["accept_len"]), 4)
            assert conf[:, 0] == pytest.approx(np.array(r["confidence"]), abs=2e-5)
            if sampling.greedy:
                assert set(np.unique(acc)) <= {0.0, 1.0}
                n = len(r["accept_len"])  # the trace's runs stop at the output's end, a chain does not
                assert [min(k, n - i) for i, k in enumerate(_leading_ones(acc))] == [min(y - 1, 4) for y in
                                                                                     r["accept_len"]]
            else:
                assert acc[:, 0] == pytest.approx(np.array(r["accept_prob"]), abs=2e-5)
                assert acc.min() >= 0.0 and acc.max() <= 1.0 and conf.min() >= 0.0 and conf.max() <= 1.0
    same = acceptance_records(target, target, prompts[:2], 16, Sampling(1.0), chain=3)
    assert all(a == pytest.approx(1.0, abs=1e-4) for r in same for row in r["chain_accept_prob"] for a in row)


def test_chain_confidences_are_the_live_drafts(pair):
    """Statistically: the confidences a chain records k tokens into a step are distributed as those the
    engine's draft reports at its k-th draft token (sampled, fixed gamma), where the per-position field
    at position i + k, given the target's tokens, is not what the live draft sees."""
    target, draft = pair
    gen = torch.Generator().manual_seed(5)
    prompts = torch.randint(0, 264, (24, 12), generator=gen).tolist()
    recs = acceptance_records(target, draft, prompts, 40, Sampling(1.0), chain=4)
    chain = np.concatenate([np.array(r["chain_confidence"])[1:-4] for r in recs])  # the engine steps from 1
    per_position = np.concatenate([np.array(r["confidence"]) for r in recs])
    live = []
    for i in range(0, len(prompts), 8):
        res = speculative_generate(target, draft, prompts[i: i + 8], 40, FixedGamma(gamma=4), Sampling(1.0),
                                   generator=torch.Generator().manual_seed(i))
        live += [s.confidences[s.active] for s in res.steps]
    live = np.concatenate(live)
    live = live[~np.isnan(live).any(axis=1)]  # steps near the end draft fewer
    for k in (1, 2, 3):
        se = np.sqrt(live[:, k].var() / len(live) + chain[:, k].var() / len(chain))
        assert abs(live[:, k].mean() - chain[:, k].mean()) < 4 * se, k
    print("live", live.mean(0), "chain", chain.mean(0), "per-position", per_position.mean())


def test_live_steps_are_the_engines_own_steps(pair):
    """`live_steps` runs the engine's draft and rejection sampling: with a draft that is the target every
    chain token is accepted and the run takes the engine's very steps; with the real pair, the confidences
    of its steps are distributed as those of the engine's own DSpark steps (4 s.e. a position), and each
    step's tested tokens keep their outcome (a run of ones, then at most one zero)."""
    target, draft = pair
    gen = torch.Generator().manual_seed(7)
    prompts = torch.randint(0, 264, (24, 12), generator=gen).tolist()
    same = live_steps(target, target, prompts[:3], 20, Sampling(1.0), FixedPolicy(3))
    for rec, p in zip(same, prompts[:3], strict=True):
        assert all(a == 1.0 for row in rec["step_accept_prob"] for a in row)
        engine = speculative_generate(target, target, [p], 20, FixedGamma(gamma=3), Sampling(1.0))
        assert len(rec["step_confidence"]) == sum(int(s.active[0]) for s in engine.steps)
    sps = {1: 1000.0, 2: 950.0, 4: 900.0, 8: 700.0}
    policy = DSparkPolicy(4, table_sps(sps))
    recs = live_steps(target, draft, prompts, 32, Sampling(1.0), policy, rows=8)
    rec_conf = np.concatenate([np.array(r["step_confidence"]) for r in recs])
    rows = np.concatenate([np.array(r["step_accept_prob"]) for r in recs])
    assert rows.min() >= 0.0 and rows.max() <= 1.0
    rejected = rows == 0.0  # only a tested token can hold 0 (softmax probabilities are positive)
    assert rejected.sum(axis=1).max() == 1 and rejected.any(axis=1).mean() > 0.1
    for row in rows[rejected.any(axis=1)]:
        assert (row[: int(np.argmax(row == 0.0))] == 1.0).all()  # the tokens before it were accepted
    live = []
    for i in range(0, len(prompts), 8):
        res = speculative_generate(target, draft, prompts[i: i + 8], 32, DSparkPolicy(4, table_sps(sps)),
                                   Sampling(1.0), generator=torch.Generator().manual_seed(i))
        live += [s.confidences[s.active] for s in res.steps if s.confidences is not None]
    live = np.concatenate(live)
    live = live[~np.isnan(live).any(axis=1)]
    for k in range(4):
        se = np.sqrt(live[:, k].var() / len(live) + rec_conf[:, k].var() / len(rec_conf))
        assert abs(live[:, k].mean() - rec_conf[:, k].mean()) < 4 * se, k
    with pytest.raises(ValueError, match="sampled"):
        live_steps(target, draft, prompts[:1], 8, Sampling(), policy)


def test_live_steps_decide_each_batch_jointly(pair):
    """With `batch`, the policy decides each group of rows as the engine decides a static batch of that size.
    An SPS table flat up to 8 tokens a pass and collapsing after makes DSpark verify all 4 drafts alone
    and none in a batch of 8: the batch-8 steps then gain one token each, every row taking as many steps as
    in the engine's batch-8 run, while the same prompts decided one by one take far fewer."""
    target, draft = pair
    prompts = torch.randint(0, 264, (8, 12), generator=torch.Generator().manual_seed(3)).tolist()
    sps = {1: 1000.0, 8: 1000.0, 9: 1.0, 64: 1.0}
    joint = live_steps(target, draft, prompts, 16, Sampling(1.0), DSparkPolicy(4, table_sps(sps)), batch=8)
    engine = speculative_generate(target, draft, prompts, 16, DSparkPolicy(4, table_sps(sps)), Sampling(1.0))
    for i, rec in enumerate(joint):
        assert len(rec["step_confidence"]) == sum(int(s.active[i]) for s in engine.steps) == 15
        assert min(min(row) for row in rec["step_accept_prob"]) > 0.0  # nothing tested, nothing rejected
    alone = live_steps(target, draft, prompts, 16, Sampling(1.0), DSparkPolicy(4, table_sps(sps)), batch=1)
    assert sum(len(r["step_confidence"]) for r in alone) < 0.7 * 8 * 15
    # groups of 4 never straddle the rows run at once: 6 rows a chunk becomes 4
    fours = live_steps(target, draft, prompts, 16, Sampling(1.0), DSparkPolicy(4, table_sps(sps)), batch=4, rows=6)
    assert len(fours) == 8
    with pytest.raises(ValueError, match="batch"):
        live_steps(target, draft, prompts, 16, Sampling(1.0), DSparkPolicy(4, table_sps(sps)), batch=0)
