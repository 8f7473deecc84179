"""Training: deterministic from the seed, cached, loadable; presets exist and the gpu one runs."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from dspark_sim.config.errors import InputError  # noqa: E402
from dspark_sim.engine.data import BOS, decode, encode, load_corpus, stdlib_files  # noqa: E402
from dspark_sim.engine.train import TRAIN_PRESETS, load_pair, pair_dir, train_pair  # noqa: E402


def test_corpus_is_stdlib_and_deterministic():
    files = stdlib_files()
    assert len(files) > 100 and files == sorted(files, key=lambda p: p.as_posix())
    a, b = load_corpus(100_000), load_corpus(100_000)
    assert torch.equal(a.train, b.train) and torch.equal(a.eval, b.eval)
    assert a.train[0] == BOS and a.eval_files >= 1 and int(a.train.max()) <= 256
    assert decode(encode("héllo")) == "héllo"


def test_test_preset_is_deterministic(tmp_path):
    one = train_pair("test", seed=3, cache_dir=tmp_path / "a")
    two = train_pair("test", seed=3, cache_dir=tmp_path / "b")
    for m1, m2 in ((one.target, two.target), (one.draft, two.draft)):
        s1, s2 = m1.state_dict(), m2.state_dict()
        assert s1.keys() == s2.keys() and all(torch.equal(s1[k], s2[k]) for k in s1)
    assert one.metrics["target_eval_loss"] == two.metrics["target_eval_loss"]
    assert one.folder == pair_dir("test", 3, tmp_path / "a") and (one.folder / "draft.safetensors").is_file()
    other = train_pair("test", seed=4, cache_dir=tmp_path / "c")
    assert not torch.equal(other.target.output.weight, one.target.output.weight)
    # the cache is used the second time, and the loaded pair is the trained one
    again = load_pair(one.folder)
    assert torch.equal(again.draft.output.weight, one.draft.output.weight)
    m = one.metrics
    assert m["target_final_loss"] < 5.6 and 0 < m["alpha_t1"] <= 1 and m["draft_final_kl"] >= 0


def test_unknown_preset():
    with pytest.raises(InputError, match="unknown preset"):
        train_pair("huge")


def test_gpu_preset_runs_two_steps_on_cpu(tmp_path):
    """The H200 preset's real shapes (~150M target, ~13M draft), two steps each on a short batch."""
    spec = TRAIN_PRESETS["gpu"]
    assert spec.target == "gpu-target" and spec.draft == "gpu-draft"
    pair = train_pair("gpu", seed=0, cache_dir=tmp_path, overrides=dict(
        target_steps=2, draft_steps=2, batch_size=1, seq_len=32, max_corpus_bytes=60_000, eval_batches=1))
    assert 100e6 <= pair.metrics["target_params"] <= 300e6 and 10e6 <= pair.metrics["draft_params"] <= 30e6
    assert all(map(torch.isfinite, [torch.tensor(pair.metrics["target_final_loss"])]))
