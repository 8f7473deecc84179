"""Sampled speculative decoding with the hidden-state drafters is distributed as the target: chi-square
tests of the first 3 of 5 generated tokens (vocabulary 8: 512 outcomes, 20,000 sequences) against the
target's exact joint distribution, for the parallel block, DSpark (with a strong Markov head, so q at each
position depends on the previously drawn draft token) and MTP drafters, fixed gamma and the prefix
scheduler."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("scipy.stats")

from dspark_sim.config.schema import DSparkScheduler  # noqa: E402
from dspark_sim.config.shorthand import parse_policy  # noqa: E402
from dspark_sim.core.policies import make_policy  # noqa: E402
from dspark_sim.engine.drafter_checkpoints import build_drafter  # noqa: E402
from dspark_sim.engine.drafter_generate import drafter_generate  # noqa: E402
from dspark_sim.engine.sampling import Sampling  # noqa: E402

from .engine_helpers import random_model  # noqa: E402
from .test_generate import ALPHA, _exact_first_tokens, chi_square_pvalue  # noqa: E402

VOCAB, N, PROMPT = 8, 20_000, [1, 5, 2]


def _drafter(target, kind: str, seed: int):
    d = build_drafter(target, kind, seed=seed, window=4, block_size=4)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # untrained weights are near zero: make every part of the drafter matter
        d.block_pos.normal_(0.0, 1.0, generator=gen)
        if kind == "dspark":
            d.markov_u.weight.normal_(0.0, 1.0, generator=gen)
            d.markov_v.weight.normal_(0.0, 0.4, generator=gen)
            d.conf[0].weight.normal_(0.0, 1.0, generator=gen)  # confidences that differ between rows
            d.conf[2].weight.normal_(0.0, 1.0, generator=gen)
    return d


def _policy(name: str):
    if name.startswith("fixed"):
        return parse_policy(name)
    # verify passes slow down with the tokens in them (scaled to the test's batch), so the scheduler
    # admits some candidates and not others
    return make_policy(DSparkScheduler(gamma_max=3), sps=lambda b: 1.0 / (1.0 + 0.3 * np.asarray(b, dtype=float) / N))


@pytest.mark.parametrize("kind, policy, sampling", [
    ("parallel_block", "fixed:3", Sampling(temperature=1.0)),
    ("parallel_block", "fixed:2", Sampling(temperature=0.8, top_k=5)),
    ("dspark", "fixed:3", Sampling(temperature=1.0)),
    ("dspark", "fixed:4", Sampling(temperature=1.2, top_p=0.85)),
    ("dspark", "dspark", Sampling(temperature=1.0)),
    ("mtp", "fixed:3", Sampling(temperature=1.0)),
])
def test_sampled_tokens_follow_target_distribution(kind, policy, sampling):
    target = random_model(VOCAB, seed=21, sharpness=4.0, dim=16, layers=1)
    drafter = _drafter(target, kind, seed=23)
    gen = torch.Generator().manual_seed(1234)
    # 5 tokens, so that the first step (after the prefill's token) drafts and verifies up to 3: tokens
    # 2 and 3 are then often the first and second draft of one block
    res = drafter_generate(target, drafter, [PROMPT] * N, 5, _policy(policy), sampling, generator=gen)
    toks = np.array(res.tokens)
    counts = np.bincount(toks[:, 0] * VOCAB * VOCAB + toks[:, 1] * VOCAB + toks[:, 2], minlength=VOCAB**3)
    exact = _exact_first_tokens(target, PROMPT, sampling)
    p_value = chi_square_pvalue(counts, exact)
    assert p_value > ALPHA, f"p = {p_value:.2e}"
    acc = res.acceptance_by_position()
    assert 0.05 < acc[0] < 0.95, f"draft acceptance {acc[0]:.2f}: test would not exercise rejections"
    assert len(acc) >= 2 and acc[1] > 0.05, "second drafts must be accepted sometimes (tests q after the first)"
    if policy == "dspark":  # the scheduler truncated some blocks and not others
        verified = np.concatenate([s.verified[s.active] for s in res.steps])
        assert len(set(verified.tolist())) > 1


def test_markov_q_is_conditional_on_the_drawn_token():
    """The drafter's q at position 2 differs between rows whose first draft differs (same context):
    the distribution handed to the rejection step is the one after the Markov bias of that token."""
    target = random_model(VOCAB, seed=21, sharpness=4.0, dim=16, layers=1)
    d = _drafter(target, "dspark", seed=23)
    b = 256
    target.setup_caches(b, 16)
    buf = torch.tensor([PROMPT + [0] * 9] * b)
    _, hidden = target(buf[:, :3], torch.zeros(b, dtype=torch.long), return_hidden=True)
    state = d.new_state(b, 12)
    state.update(hidden, buf, torch.arange(3).expand(b, 3))
    drafts, q, _ = d.propose(state, buf, torch.full((b,), 2), 2, Sampling(1.0), torch.Generator().manual_seed(0))
    first = drafts[:, 0]
    groups = [q[first == v, 1] for v in first.unique()]
    assert len(groups) > 1
    assert all(torch.allclose(g, g[:1].expand_as(g)) for g in groups)  # same previous token: same q_2
    assert not torch.allclose(groups[0][0], groups[1][0], atol=1e-3)
    assert torch.allclose(q[:, 0], q[:1, 0].expand_as(q[:, 0]))  # q_1 depends on the context only
