"""Speculative decoding is lossless: greedy output identical to the target's, sampled output
distributed as the target's (chi-square tests), for ragged batches and every policy path."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
scipy_stats = pytest.importorskip("scipy.stats")

from dspark_sim.config.schema import ConfidenceThreshold, DSparkScheduler, FixedGamma, NoSpeculation  # noqa: E402
from dspark_sim.core.policies import FixedPolicy, make_policy  # noqa: E402
from dspark_sim.engine.generate import generate_baseline, speculative_generate  # noqa: E402
from dspark_sim.engine.sampling import Sampling, logits_to_probs, verify_drafts, verify_greedy  # noqa: E402

from .engine_helpers import prompts_for, random_model  # noqa: E402

ALPHA = 1e-3  # significance level of every chi-square test below (seeds fixed: results deterministic)


def chi_square_pvalue(counts: np.ndarray, probs: np.ndarray) -> float:
    """Pearson chi-square goodness of fit; cells expected < 5 pooled into one."""
    n = counts.sum()
    expected = probs * n
    small = expected < 5
    obs = np.append(counts[~small], counts[small].sum())
    exp = np.append(expected[~small], expected[small].sum())
    keep = exp > 0
    assert obs[~keep].sum() == 0, "a token the target gives probability 0 was produced"
    obs, exp = obs[keep], exp[keep]
    stat = float(((obs - exp) ** 2 / exp).sum())
    return float(scipy_stats.chi2.sf(stat, len(obs) - 1))


# ------------------------------------------------------------------------------------------------
# Greedy: identical tokens
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gamma", range(1, 9))
def test_greedy_identical_to_target(pair, gamma):
    target, draft = pair
    batch = (gamma * 5) % 8 + 1  # covers batch sizes 1..8 across the gammas
    accepted = rejected = 0
    for seed in range(3):
        prompts = prompts_for(batch, seed=100 * gamma + seed)
        base = generate_baseline(target, prompts, 28)
        spec = speculative_generate(target, draft, prompts, 28, FixedGamma(gamma=gamma))
        assert spec.tokens == base.tokens
        for s in spec.steps:
            accepted += int(s.accepted[s.active].sum())
            rejected += int((s.accepted < s.verified)[s.active].sum())
        assert spec.target_passes < 27 or gamma == 1 and spec.target_passes <= 27
    assert accepted > 0 and rejected > 0, "the draft must be imperfect for this test to mean anything"


def test_ragged_batch_matches_single_sequences(pair):
    """Each row keeps its own accepted count and position: batching changes nothing."""
    target, draft = pair
    prompts = prompts_for(6, seed=7, min_len=1, max_len=15)
    batched = speculative_generate(target, draft, prompts, 30, FixedGamma(gamma=4))
    for i, p in enumerate(prompts):
        alone = speculative_generate(target, draft, [p], 30, FixedGamma(gamma=4))
        assert alone.tokens[0] == batched.tokens[i]
    assert any(len(set(s.accepted[s.active].tolist())) > 1 for s in batched.steps), "acceptance never ragged"
    assert 1.0 < batched.tau < 5.0
    acc = batched.acceptance_by_position()
    assert len(acc) == 4 and all(0.0 <= a <= 1.0 for a in acc)


def test_self_draft_accepts_everything():
    m = random_model(seed=4)
    res = speculative_generate(m, m, prompts_for(3, seed=1), 25, FixedGamma(gamma=4))
    assert res.acceptance_by_position() == [1.0, 1.0, 1.0, 1.0]
    assert res.tau > 4.0


# ------------------------------------------------------------------------------------------------
# Policies
# ------------------------------------------------------------------------------------------------


def test_no_speculation_is_plain_decoding(pair):
    target, _ = pair
    prompts = prompts_for(4, seed=11)
    base = generate_baseline(target, prompts, 20)
    res = speculative_generate(target, None, prompts, 20, NoSpeculation())
    assert res.tokens == base.tokens
    assert res.target_passes == 19 and res.tau == 1.0
    assert all((s.drafted == 0).all() and s.confidences is None for s in res.steps)


def test_confidence_threshold_policy_is_lossless_and_truncates(pair):
    target, draft = pair
    prompts = prompts_for(5, seed=12)
    base = generate_baseline(target, prompts, 30)
    res = speculative_generate(target, draft, prompts, 30, ConfidenceThreshold(gamma_max=6, threshold=0.6))
    assert res.tokens == base.tokens
    verified = np.concatenate([s.verified[s.active] for s in res.steps])
    drafted = np.concatenate([s.drafted[s.active] for s in res.steps])
    assert (verified <= drafted).all() and (verified < drafted).any() and (verified > 0).any()
    conf = np.concatenate([s.confidences[s.active].ravel() for s in res.steps])
    conf = conf[~np.isnan(conf)]
    assert ((conf >= 0) & (conf <= 1)).all()


def test_dspark_scheduler_is_lossless(pair):
    target, draft = pair
    prompts = prompts_for(4, seed=13)
    policy = make_policy(DSparkScheduler(gamma_max=5), sps=lambda b: 1.0 / (1e-3 + 2e-4 * np.asarray(b)))
    res = speculative_generate(target, draft, prompts, 24, policy)
    assert res.tokens == generate_baseline(target, prompts, 24).tokens


def test_policy_observes_every_step(pair):
    target, draft = pair

    class Recording(FixedPolicy):
        def __init__(self):
            super().__init__(gamma=3)
            self.calls = []

        def observe(self, view, verified, accepted, step_time_s):
            self.calls.append((view.step, np.asarray(verified).copy(), np.asarray(accepted).copy(), step_time_s))

    policy = Recording()
    res = speculative_generate(target, draft, prompts_for(3, seed=14), 20, policy)
    assert len(policy.calls) == len(res.steps)
    for (step, ver, acc, t), s in zip(policy.calls, res.steps, strict=True):
        assert step == s.step and (ver == s.verified).all() and (acc == s.accepted).all() and t >= 0
        assert (acc <= ver).all()


# ------------------------------------------------------------------------------------------------
# Sampling: distributed as the target
# ------------------------------------------------------------------------------------------------


def _exact_first_tokens(model, prompt: list[int], sampling: Sampling, n: int = 3) -> np.ndarray:
    """P(first n generated tokens) under the target alone, by enumerating every prefix."""
    v = model.args.vocab_size
    joint = torch.ones(1, dtype=torch.float64)
    prefixes = torch.tensor([prompt])
    for _ in range(n):
        with torch.no_grad():
            probs = logits_to_probs(model(prefixes)[:, -1], sampling).double()  # [#prefixes, V]
        joint = (joint[:, None] * probs).reshape(-1)
        prefixes = torch.cat([prefixes.repeat_interleave(v, 0), torch.arange(v).repeat(len(prefixes))[:, None]], 1)
    return joint.numpy()


@pytest.mark.parametrize(
    "sampling, gamma",
    [
        (Sampling(temperature=1.0), 2),
        (Sampling(temperature=1.0), 1),
        (Sampling(temperature=0.7, top_k=5), 3),
        (Sampling(temperature=1.3, top_p=0.8), 2),
        (Sampling(temperature=0.9, top_k=6, top_p=0.9), 4),
    ],
)
def test_sampled_tokens_follow_target_distribution(sampling, gamma):
    """20,000 sequences, vocabulary 8: the first 3 generated tokens (512 outcomes) pass a chi-square
    test against the target's exact joint distribution at significance level ALPHA."""
    vocab, n = 8, 20_000
    target = random_model(vocab, seed=21, sharpness=4.0, dim=16, layers=1)
    draft = random_model(vocab, seed=22, sharpness=4.0, dim=16, layers=1)  # a different random model
    prompt = [1, 5, 2]
    gen = torch.Generator().manual_seed(1234)
    res = speculative_generate(target, draft, [prompt] * n, 3, FixedGamma(gamma=gamma), sampling, generator=gen)
    toks = np.array(res.tokens)
    index = toks[:, 0] * vocab * vocab + toks[:, 1] * vocab + toks[:, 2]
    counts = np.bincount(index, minlength=vocab**3)
    exact = _exact_first_tokens(target, prompt, sampling)
    assert abs(exact.sum() - 1) < 1e-9
    p_value = chi_square_pvalue(counts, exact)
    assert p_value > ALPHA, f"p = {p_value:.2e}"
    rate = res.acceptance_by_position()[0]
    assert 0.1 < rate < 0.95, f"draft acceptance {rate:.2f}: test would not exercise rejections"


def test_sampled_baseline_follows_target_distribution():
    vocab, n = 8, 20_000
    target = random_model(vocab, seed=21, sharpness=4.0, dim=16, layers=1)
    sampling = Sampling(temperature=1.0, top_k=7)
    res = generate_baseline(target, [[1, 5, 2]] * n, 2, sampling, generator=torch.Generator().manual_seed(5))
    toks = np.array(res.tokens)
    counts = np.bincount(toks[:, 0] * vocab + toks[:, 1], minlength=vocab**2)
    exact = _exact_first_tokens(target, [1, 5, 2], sampling, n=2)
    assert chi_square_pvalue(counts, exact) > ALPHA


def test_verify_drafts_single_step_exact():
    """The rejection step alone: emitted token ~ p whatever q is (200,000 draws, 6 tokens)."""
    gen = torch.Generator().manual_seed(0)
    b, v = 200_000, 6
    p = torch.tensor([0.05, 0.4, 0.1, 0.25, 0.2, 0.0])
    q = torch.tensor([0.3, 0.1, 0.3, 0.05, 0.05, 0.2])
    drafts = torch.multinomial(q, b, replacement=True, generator=gen)[:, None]
    p_all = p.expand(b, 2, v).clone()
    acc, nxt = verify_drafts(p_all, q.expand(b, 1, v), drafts, torch.ones(b, dtype=torch.long), False, gen)
    first = torch.where(acc == 1, drafts[:, 0], nxt).numpy()
    assert chi_square_pvalue(np.bincount(first, minlength=v), p.double().numpy()) > ALPHA
    alpha = torch.minimum(p, q).sum().item()
    assert abs(acc.float().mean().item() - alpha) < 0.01
    # verify length 0: the token comes straight from p at the pending position
    acc0, nxt0 = verify_drafts(p_all, q.expand(b, 1, v), drafts, torch.zeros(b, dtype=torch.long), False, gen)
    assert (acc0 == 0).all()
    assert chi_square_pvalue(np.bincount(nxt0.numpy(), minlength=v), p.double().numpy()) > ALPHA


def test_logits_to_probs_filters():
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0]])
    assert logits_to_probs(logits, Sampling()).tolist() == [[1.0, 0, 0, 0, 0]]
    topk = logits_to_probs(logits, Sampling(temperature=1.0, top_k=2))
    assert (topk[0, 2:] == 0).all() and abs(topk.sum().item() - 1) < 1e-6
    full = torch.softmax(logits, -1)[0]
    topp = logits_to_probs(logits, Sampling(temperature=1.0, top_p=0.7))[0]
    keep = int((topp > 0).sum())
    assert full[: keep - 1].sum() < 0.7 <= full[:keep].sum()
    with pytest.raises(ValueError):
        Sampling(temperature=-1)


def test_bad_arguments(pair):
    target, _ = pair
    with pytest.raises(ValueError):
        speculative_generate(target, None, [[1, 2]], 5, FixedGamma(gamma=2))
    with pytest.raises(ValueError):
        generate_baseline(target, [[]], 5)


def test_verify_greedy_matches_one_hot_rejection_sampling():
    """The greedy fast path is the general rejection step applied to one-hot distributions."""
    gen = torch.Generator().manual_seed(3)
    b, g, v = 64, 5, 7
    logits = torch.randn(b, g + 1, v, generator=gen, dtype=torch.float64)
    drafts = torch.where(torch.rand(b, g, generator=gen) < 0.7, logits[:, :g].argmax(-1),
                         torch.randint(0, v, (b, g), generator=gen))
    verify = torch.randint(0, g + 1, (b,), generator=gen)
    p = logits_to_probs(logits, Sampling())
    q = torch.nn.functional.one_hot(drafts, v).double()
    acc1, nxt1 = verify_drafts(p, q, drafts, verify, True, gen)
    acc2, nxt2 = verify_greedy(logits, drafts, verify)
    assert torch.equal(acc1, acc2) and torch.equal(nxt1, nxt2)
    assert len(set(acc1.tolist())) > 2


def test_greedy_identical_with_grouped_attention(pair):
    """Speculative greedy output with the grouped attention kernel equals the SDPA target's output."""
    target, draft = pair
    prompts = prompts_for(6, seed=5)
    ref = generate_baseline(target, prompts, 24).tokens
    target.use_attention("grouped")
    draft.use_attention("grouped")
    try:
        spec = speculative_generate(target, draft, prompts, 24, FixedGamma(gamma=5))
        assert spec.tokens == ref and generate_baseline(target, prompts, 24).tokens == ref
    finally:
        target.use_attention("sdpa")
        draft.use_attention("sdpa")


def test_prefill_forward_runs_the_prompt_pass(pair):
    """generate_baseline(prefill_forward=...) sends the prompt pass (only it) through that callable."""
    target, _ = pair
    prompts = prompts_for(3, seed=8)
    calls = []

    def prefill(tokens, positions, **kw):
        calls.append(tokens.shape)
        return target(tokens, positions, **kw)

    ref = generate_baseline(target, prompts, 10).tokens
    assert generate_baseline(target, prompts, 10, prefill_forward=prefill).tokens == ref
    assert calls == [(3, max(len(p) for p in prompts))]
