"""The speculative step replayed as CUDA graphs (cudagraphs.StepGraphs) against the eager loop.

Greedy and sampled, a graphed run must give the very tokens of the eager run with the same generator
(both draw their random numbers by the same calls), so the eager loop's losslessness tests carry over.
Real graphs need a GPU (`bash tools/gpu_validation.sh step-graphs` runs these tests on a GPU); without
one the same tests run with `RerunStepGraphs`, whose "graphs" re-run the phase into its static outputs,
which checks everything around the capture: shapes and keys, static buffers, noise, restores.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from dspark_sim.config.schema import ConfidenceThreshold, DSparkScheduler, FixedGamma  # noqa: E402
from dspark_sim.engine.caches import token_buffer_len  # noqa: E402
from dspark_sim.engine.cudagraphs import GraphedForward, StepGraphs  # noqa: E402
from dspark_sim.engine.generate import generate_baseline, speculative_generate  # noqa: E402
from dspark_sim.engine.sampling import Sampling  # noqa: E402

from .engine_helpers import perturbed, prompts_for, random_model  # noqa: E402

pytestmark = pytest.mark.engine
ON_GPU = torch.cuda.is_available()
DEVICE = "cuda" if ON_GPU else "cpu"


class _Rerun:
    """Stands in for a captured graph: a replay re-runs the phase and copies into its static outputs."""

    def __init__(self, run, out):
        self.run, self.out = run, out

    def replay(self) -> None:
        new = self.run()
        for old, fresh in zip(self.out or (), new or (), strict=True):
            if old is not None:
                old.copy_(fresh)


class RerunStepGraphs(StepGraphs):
    def _capture(self, run, keep):
        self._warm(run, keep)
        saved = [t.clone() for t in keep]
        with torch.no_grad():
            out = run()
        for t, s in zip(keep, saved, strict=True):  # a capture runs nothing
            t.copy_(s)
        return _Rerun(run, out), out


GRAPHS = StepGraphs if ON_GPU else RerunStepGraphs


@pytest.fixture(scope="module")
def gpu_pair():
    target = random_model(dtype=torch.float32, layers=2, max_seq_len=256)
    draft = perturbed(target, 0.05)  # agrees often but not always: ragged acceptance
    return target.to(DEVICE), draft.to(DEVICE)


def _run(gpu_pair, prompts, policy, sampling, graphs, seed=7, new=24):
    target, draft = gpu_pair
    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    return speculative_generate(target, draft, prompts, new, policy, sampling, generator=gen, step_graphs=graphs)


POLICIES = [FixedGamma(gamma=1), FixedGamma(gamma=4), ConfidenceThreshold(gamma_max=4, threshold=0.5),
            DSparkScheduler(gamma_max=4, sps_source="table", sps_table={1: 1000.0, 8: 900.0, 32: 500.0})]


@pytest.mark.parametrize("temperature", [0.0, 1.0])
@pytest.mark.parametrize("policy", POLICIES, ids=["fixed1", "fixed4", "threshold", "dspark"])
@pytest.mark.parametrize("batch", [1, 5])
def test_graphed_steps_give_the_eager_tokens(gpu_pair, temperature, policy, batch):
    prompts = prompts_for(batch, seed=batch, max_len=20)
    sampling = Sampling(temperature)
    eager = _run(gpu_pair, prompts, policy, sampling, None)
    graphs = GRAPHS(*gpu_pair)
    graphed = _run(gpu_pair, prompts, policy, sampling, graphs)
    assert graphed.tokens == eager.tokens
    assert [s.accepted.tolist() for s in graphed.steps] == [s.accepted.tolist() for s in eager.steps]
    if temperature == 0.0:  # and greedy speculative decoding is the target's own greedy decoding
        assert graphed.tokens == generate_baseline(gpu_pair[0], prompts, 24).tokens
    again = _run(gpu_pair, prompts, policy, sampling, graphs)  # replays only, same seed: same tokens
    assert again.tokens == graphed.tokens


def test_precapture_leaves_no_capture_inside_a_run(gpu_pair):
    target, draft = gpu_pair
    prompts = [list(range(1, 17))] * 3
    sampling = Sampling(1.0)
    gamma, new = 3, 20
    graphs = GRAPHS(target, draft)
    graphs.precapture(3, 16, new, gamma, sampling)
    captured = len(graphs._phases)
    assert captured == (gamma + 1) + 1 + 1  # verify 0..gamma drafts, a draft-less verify, the draft phase
    _run(gpu_pair, prompts, FixedGamma(gamma=gamma), sampling, graphs, new=new)
    assert len(graphs._phases) == captured


def test_a_cpu_model_cannot_capture(gpu_pair):
    if ON_GPU:
        pytest.skip("the models are on the GPU")
    graphs = StepGraphs(*gpu_pair)
    with pytest.raises(ValueError, match="CUDA model"):
        graphs.precapture(1, 8, 8, 2, Sampling(0.0))


def test_new_caches_drop_the_graphs(gpu_pair):
    target, draft = gpu_pair
    graphs = GRAPHS(target, draft)
    prompts = prompts_for(2, seed=3)
    first = _run(gpu_pair, prompts, FixedGamma(gamma=2), Sampling(0.0), graphs)
    target.setup_caches(4, 200)  # a bigger cache: every graph of the old one is stale
    second = _run(gpu_pair, prompts, FixedGamma(gamma=2), Sampling(0.0), graphs)
    assert second.tokens == first.tokens


def test_step_graphs_need_their_own_buffers(gpu_pair):
    graphs = GRAPHS(*gpu_pair)
    length = token_buffer_len(8, 8, 2)
    buf = torch.zeros(2, length, dtype=torch.long, device=DEVICE)
    with pytest.raises(ValueError, match="own buffers"):
        graphs.draft(buf, torch.ones(2, dtype=torch.long, device=DEVICE), 2, Sampling(0.0), None)


@pytest.mark.skipif(not ON_GPU, reason="GraphedForward needs a GPU")
def test_graphed_forward_and_graphed_steps_agree(gpu_pair):
    """The eager loop on graphed forwards (forward passes graphed, the step's other kernels launched from the
    host) gives the same tokens too."""
    target, draft = gpu_pair
    prompts = prompts_for(4, seed=11, max_len=16)
    gen = torch.Generator(device=DEVICE).manual_seed(5)
    fwd = speculative_generate(target, draft, prompts, 24, FixedGamma(gamma=3), Sampling(1.0), generator=gen,
                               target_forward=GraphedForward(target), draft_forward=GraphedForward(draft))
    steps = _run(gpu_pair, prompts, FixedGamma(gamma=3), Sampling(1.0), GRAPHS(target, draft), seed=5)
    assert steps.tokens == fwd.tokens
