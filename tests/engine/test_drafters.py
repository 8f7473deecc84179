"""Hidden-state drafters (MTP head, parallel block, DSpark): greedy speculative output identical to the
target's with every drafter and policy (batch 1-4, gamma 1-6); the inference path proposes exactly
what the teacher-forced training path computes; training is deterministic; checkpoints round-trip (and
one saved under the retired kind name "parallel" is refused with a clear message); calibration maths."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from dspark_sim.config.errors import InputError  # noqa: E402
from dspark_sim.config.schema import ConfidenceThreshold, DSparkScheduler, FixedGamma  # noqa: E402
from dspark_sim.core.policies import make_policy  # noqa: E402
from dspark_sim.engine.data import Corpus  # noqa: E402
from dspark_sim.engine.drafter_calibration import ece, fit_temperature  # noqa: E402
from dspark_sim.engine.drafter_checkpoints import build_drafter, load_drafter, save_drafter  # noqa: E402
from dspark_sim.engine.drafter_generate import drafter_generate  # noqa: E402
from dspark_sim.engine.drafter_training import DRAFTER_TRAIN_PRESETS, train_drafter_models  # noqa: E402
from dspark_sim.engine.drafters import KINDS, MODE_GREEDY, MODE_SAMPLED  # noqa: E402
from dspark_sim.engine.generate import generate_baseline  # noqa: E402
from dspark_sim.engine.sampling import Sampling, logits_to_probs  # noqa: E402

from .engine_helpers import prompts_for, random_model  # noqa: E402

VOCAB = 16
SPEC = replace(DRAFTER_TRAIN_PRESETS["test"], steps=30, batch_size=8, seq_len=40, anchors=12, lr=5e-3)


@pytest.fixture(scope="module")
def trained():
    """A small random target (fp64, so greedy comparisons are exact) and drafters trained briefly on its
    own samples: imperfect, so both acceptances and rejections happen."""
    target = random_model(VOCAB, seed=3, sharpness=6.0, dim=32, layers=2)
    target.requires_grad_(False)
    res = generate_baseline(target, prompts_for(24, VOCAB, seed=5, min_len=2, max_len=4), 40, Sampling(1.0),
                            generator=torch.Generator().manual_seed(0))
    data = torch.tensor([t for row in res.tokens for t in row])
    out = train_drafter_models(target, list(KINDS), Corpus(data, data, 1, 1), SPEC, seed=0)
    return target, {k: v["drafter"] for k, v in out.items()}, out


def _sps(b):
    return 1.0 / (1e-3 + 2e-4 * np.asarray(b, dtype=float))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("gamma", range(1, 7))
def test_greedy_identical_to_target(trained, kind, gamma):
    target, drafters, _ = trained
    batch = (gamma + KINDS.index(kind)) % 4 + 1  # batch sizes 1..4 across the cases
    accepted = rejected = 0
    for seed in range(2):
        prompts = prompts_for(batch, VOCAB, seed=100 * gamma + seed, max_len=10)
        base = generate_baseline(target, prompts, 24)
        spec = drafter_generate(target, drafters[kind], prompts, 24, FixedGamma(gamma=gamma))
        assert spec.tokens == base.tokens
        for s in spec.steps:
            accepted += int(s.accepted[s.active].sum())
            rejected += int((s.accepted < s.verified)[s.active].sum())
    assert accepted > 0 and rejected > 0, "the drafter must be imperfect for this test to mean anything"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("batch", [1, 2, 3, 4])
def test_policies_lossless(trained, kind, batch):
    """DSpark's prefix scheduler (fed by the drafter's confidences) and a confidence threshold."""
    target, drafters, _ = trained
    prompts = prompts_for(batch, VOCAB, seed=40 + batch, max_len=9)
    base = generate_baseline(target, prompts, 26)
    for spec in (make_policy(DSparkScheduler(gamma_max=5), sps=_sps),
                 make_policy(DSparkScheduler(gamma_max=6, confidence_lag_steps=2), sps=_sps),
                 ConfidenceThreshold(gamma_max=6, threshold=0.5)):
        res = drafter_generate(target, drafters[kind], prompts, 26, spec)
        assert res.tokens == base.tokens
        verified = np.concatenate([s.verified[s.active] for s in res.steps])
        drafted = np.concatenate([s.drafted[s.active] for s in res.steps])
        assert (verified <= drafted).all()
        conf = np.concatenate([s.confidences[s.active].ravel() for s in res.steps if s.confidences is not None])
        conf = conf[~np.isnan(conf)]
        assert conf.size and ((conf >= 0) & (conf <= 1)).all()


def test_ragged_batch_matches_single_sequences(trained):
    target, drafters, _ = trained
    prompts = prompts_for(4, VOCAB, seed=7, min_len=1, max_len=14)
    for kind in ("parallel_block", "dspark"):
        batched = drafter_generate(target, drafters[kind], prompts, 30, FixedGamma(gamma=4))
        for i, p in enumerate(prompts):
            alone = drafter_generate(target, drafters[kind], [p], 30, FixedGamma(gamma=4))
            assert alone.tokens[0] == batched.tokens[i]
        assert any(len(set(s.accepted[s.active].tolist())) > 1 for s in batched.steps), "acceptance never ragged"


def test_draft_model_goes_through_the_same_loop(pair):
    """The draft model behind the drafters' interface: the very steps of speculative_generate."""
    from dspark_sim.config.schema import NoSpeculation
    from dspark_sim.engine.generate import speculative_generate

    target, draft = pair
    prompts = prompts_for(3, seed=2)
    res = drafter_generate(target, draft, prompts, 20, FixedGamma(gamma=3))
    ref = speculative_generate(target, draft, prompts, 20, FixedGamma(gamma=3))
    assert res.tokens == ref.tokens == generate_baseline(target, prompts, 20).tokens
    assert [s.accepted.tolist() for s in res.steps] == [s.accepted.tolist() for s in ref.steps]
    plain = drafter_generate(target, None, prompts, 20, NoSpeculation())
    assert plain.tokens == ref.tokens and plain.tau == 1.0
    assert len(res.step_wall_s) == len(res.steps) and all(w > 0 for w in res.step_wall_s)
    assert res.full_batch_tokens_per_s() > 0


def test_trained_drafters_beat_untrained(trained):
    target, drafters, out = trained
    prompts = prompts_for(4, VOCAB, seed=9)
    for kind, d in drafters.items():
        fresh = build_drafter(target, kind, seed=1, **SPEC.arch[kind])
        tau = drafter_generate(target, d, prompts, 30, FixedGamma(gamma=4)).tau
        tau0 = drafter_generate(target, fresh, prompts, 30, FixedGamma(gamma=4)).tau
        assert tau > tau0 + 0.1 and tau > 1.15, (kind, tau, tau0)
        losses = out[kind]["losses"]
        assert np.mean(losses[-5:]) < np.mean(losses[:5])


@pytest.mark.parametrize("kind", KINDS)
def test_inference_path_equals_training_path(trained, kind):
    """What `propose` drafts from the cached engine state (context cache, window gather, chained or
    parallel block, sequential Markov bias) is what `train_forward` computes teacher-forced on the same
    tokens: same argmax, same distributions, same (calibrated) confidences."""
    target, drafters, _ = trained
    d = drafters[kind]
    if kind == "dspark":
        d.conf_temperature[MODE_GREEDY] = torch.linspace(0.5, 2.0, d.args.block_size, dtype=d.dtype)
        d.conf_temperature[MODE_SAMPLED] = torch.linspace(1.5, 0.7, d.args.block_size, dtype=d.dtype)
    g = d.args.block_size
    prompts = prompts_for(3, VOCAB, seed=31, min_len=3, max_len=13)
    width = max(map(len, prompts))
    for sampling in (Sampling(), Sampling(temperature=0.9)):
        bsz = len(prompts)
        buf = torch.zeros(bsz, width + g + 2, dtype=torch.long)
        for i, p in enumerate(prompts):
            buf[i, :len(p)] = torch.tensor(p)
        lens = torch.tensor([len(p) for p in prompts])
        target.setup_caches(bsz, width + g + 2)
        _, hidden = target(buf[:, :width], torch.zeros_like(lens), return_hidden=True)
        state = d.new_state(bsz, width + g + 2)
        state.update(hidden, buf, torch.arange(width).expand(bsz, width))
        pend = lens - 1  # the last prompt token is the pending one
        gen = torch.Generator().manual_seed(0)
        drafts, q, conf = d.propose(state, buf, pend, g, sampling, gen)
        for i, p in enumerate(prompts):
            seq = torch.tensor([list(p) + drafts[i].tolist()])
            _, h = target(seq, return_hidden=True)
            logits, z = d.train_forward(h, seq, torch.tensor([[len(p) - 2]]))
            logits, z = logits[0, 0], (z[0, 0] if z is not None else None)
            if sampling.greedy:
                assert logits.argmax(-1).tolist() == drafts[i].tolist()
            else:
                ref = logits_to_probs(logits, sampling)
                assert torch.allclose(ref, q[i], atol=1e-9)
            if kind == "dspark":
                mode = MODE_GREEDY if sampling.greedy else MODE_SAMPLED
                assert torch.allclose(torch.sigmoid(z / d.conf_temperature[mode]), conf[i], atol=1e-9)
            elif sampling.greedy:
                assert torch.allclose(logits.softmax(-1).max(-1).values, conf[i], atol=1e-9)
    if kind == "dspark":
        d.conf_temperature.fill_(1.0)


def test_markov_head_makes_q_depend_on_the_previous_draft(trained):
    target, drafters, _ = trained
    d = drafters["dspark"]
    prev = torch.arange(VOCAB)
    bias = d.markov_bias(prev)
    assert bias.abs().max() > 1e-3, "the trained Markov head learned nothing"
    assert not torch.allclose(bias[0], bias[1])


def test_training_is_deterministic_and_independent_of_companions(trained):
    target, _, _ = trained
    data = torch.randint(0, VOCAB, (2000,), generator=torch.Generator().manual_seed(1))
    corpus = Corpus(data, data, 1, 1)
    spec = replace(SPEC, steps=4)
    a = train_drafter_models(target, ["parallel_block"], corpus, spec, seed=5)["parallel_block"]["drafter"]
    b = train_drafter_models(target, ["mtp", "parallel_block"], corpus, spec, seed=5)["parallel_block"]["drafter"]
    c = train_drafter_models(target, ["parallel_block"], corpus, spec, seed=6)["parallel_block"]["drafter"]
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_checkpoint_round_trip(trained, tmp_path):
    target, drafters, _ = trained
    d = drafters["dspark"]
    d.conf_temperature[MODE_SAMPLED, 2] = 1.7
    save_drafter(d, tmp_path, extra={"note": "x"})
    loaded, meta = load_drafter(tmp_path, "dspark", dtype=torch.float64)
    assert meta["note"] == "x" and loaded.args == d.args
    assert [k for k, v in d.state_dict().items() if not torch.equal(v, loaded.state_dict()[k])] == []
    prompts = prompts_for(2, VOCAB, seed=3)
    a = drafter_generate(target, d, prompts, 16, FixedGamma(gamma=3))
    b = drafter_generate(target, loaded, prompts, 16, FixedGamma(gamma=3))
    assert a.tokens == b.tokens
    assert np.allclose(np.nan_to_num(a.steps[0].confidences), np.nan_to_num(b.steps[0].confidences))
    d.conf_temperature.fill_(1.0)


def test_checkpoint_of_a_retired_or_unknown_kind_is_refused(trained, tmp_path):
    """A checkpoint saved under the kind's former name "parallel" is one InputError saying to retrain it
    (its weights would load, but the cache looks it up under the new name, so none is renamed in place)."""
    import json

    _, drafters, _ = trained
    save_drafter(drafters["parallel_block"], tmp_path, "parallel")
    meta_path = tmp_path / "parallel.json"
    meta = json.loads(meta_path.read_text())
    meta["drafter_args"]["kind"] = "parallel"
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(InputError) as err:
        load_drafter(tmp_path, "parallel")
    assert err.value.field == "drafter_args.kind" and "'parallel_block'" in str(err.value)
    assert "engine drafters train --kind parallel_block" in str(err.value)
    meta["drafter_args"]["kind"] = "medusa"
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(InputError, match="unknown kind 'medusa'"):
        load_drafter(tmp_path, "parallel")


def test_bad_arguments(trained):
    target, drafters, _ = trained
    with pytest.raises(ValueError):
        drafter_generate(target, drafters["parallel_block"], [[1, 2]], 5, FixedGamma(gamma=7))  # beyond the block
    with pytest.raises(ValueError):
        build_drafter(target, "medusa")
    res = drafter_generate(target, drafters["mtp"], [[1, 2]], 5, FixedGamma(gamma=0))
    assert res.tokens == generate_baseline(target, [[1, 2]], 5).tokens


def test_ece_and_temperature_scaling():
    rng = np.random.default_rng(0)
    logit = rng.normal(0.0, 2.0, 20_000)
    p = 1 / (1 + np.exp(-logit))
    assert ece(p, p) < 1e-9
    outcomes = (rng.random(p.size) < p).astype(float)
    assert ece(p, outcomes) < 0.02  # calibrated: only sampling noise
    z = 3.0 * logit  # overconfident by a temperature of 3
    assert ece(1 / (1 + np.exp(-z)), p) > 0.05
    t = fit_temperature(z, p)
    assert abs(t - 3.0) < 0.05
    assert ece(1 / (1 + np.exp(-z / t)), p) < 0.005



def test_greedy_trace_predicts_engine_tau_exactly(trained, tmp_path):
    """Teacher-forced block acceptance at every output position is what a greedy speculative step there
    yields: walking the trace at gamma reproduces the engine's tau (batch 1), for every drafter."""
    import json

    from dspark_sim.core.acceptance import load_acceptance_trace, trace_tau
    from dspark_sim.measure.drafter_trace import drafter_acceptance_records

    target, drafters, _ = trained
    prompts = prompts_for(3, VOCAB, seed=61, min_len=1, max_len=10)
    for kind, d in drafters.items():
        recs = drafter_acceptance_records(target, d, prompts, 30, Sampling())
        path = tmp_path / f"{kind}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in recs))
        trace = load_acceptance_trace(str(path), "accept_len", None, "confidence")
        shifted = trace.__class__(trace.path, trace.prompt_lens, trace.output_lens,
                                  tuple(y[1:] for y in trace.yields), None)
        for gamma in (1, 3, 6):
            gained = steps = 0
            for p in prompts:
                res = drafter_generate(target, d, [p], 30, FixedGamma(gamma=gamma))
                gained += sum(int((s.accepted + 1)[s.active].sum()) for s in res.steps)
                steps += sum(int(s.active.sum()) for s in res.steps)
            assert trace_tau(shifted, gamma) == pytest.approx(gained / steps, rel=0.02), (kind, gamma)
        sampled = drafter_acceptance_records(target, d, prompts, 30, Sampling(temperature=1.0), seed=3)
        assert all(len(r["accept_len"]) == r["output_len"] == len(r["block_confidence"]) for r in sampled)
        assert all(1 <= a <= d.args.block_size + 1 for r in sampled for a in r["accept_len"])
