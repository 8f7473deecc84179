"""Microbenchmarks of the engine's forward passes and steps (`dspark-sim profile`).

What is timed is exactly what the engine runs: the same model code, the same static cache (whose
full length every query attends over, masked), the same compiled graphs on CUDA. The grid spans
batch size, query tokens per sequence (1 .. gamma + 1), context and KV dtype; each shape gets
warm-up runs and repeats, and the spread is kept so noisy points are visible.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, cast

import torch

from dspark_sim.config.errors import InputError
from dspark_sim.config.measurements import EngineProfile, PassSample, StepSample
from dspark_sim.config.schema import DSparkScheduler, FixedGamma
from dspark_sim.engine.caches import cache_tokens
from dspark_sim.engine.cudagraphs import GraphedForward, StepGraphs, precapture
from dspark_sim.engine.data import VOCAB_SIZE
from dspark_sim.engine.generate import generate_baseline, speculative_generate
from dspark_sim.engine.model import Attention, Forward, ModelArgs, Transformer, build_model
from dspark_sim.engine.results import GenerationResult
from dspark_sim.engine.sampling import Sampling
from dspark_sim.engine.train import get_preset, load_pair, pair_dir
from dspark_sim.measure.profile_merge import timing_summary
from dspark_sim.measure.provenance import device_info, dtype_name, engine_version, model_spec
from dspark_sim.measure.timing import HostClock, time_call

Role = Literal["target", "draft"]
Progress = Callable[[], object]
#: a pass shape: (KV dtype or None for the weights', context, batch, query tokens)
_Shape = tuple[str | None, int, int, int]


@torch.no_grad()
def profile_passes(model: Transformer, role: Role, batch_sizes: list[int], query_tokens: list[int],
                   contexts: list[int], kv_dtypes: list[str | None], *, cache_len_for: Callable[[int, int], int],
                   forward: Forward | None = None, warmup: int = 2, repeats: int = 5,
                   progress: Progress | None = None, host: HostClock | None = None) -> list[PassSample]:
    """Time model(tokens[B, q], positions) for every grid point; caches sized as the engine sizes them.

    `cache_len_for(context, q)` gives the static cache length the engine would allocate, which is what
    attention reads (the engine masks, it does not slice).

    On a CPU the repeats are taken in rounds over the whole grid (every shape once per round, after
    untimed calls that bring it back to its in-loop speed) rather than back to back: a shared machine's
    slow spells last tens of milliseconds, long enough to spoil every repeat of one shape, but not one
    repeat of every shape. On a GPU the repeats stay back to back (each new cache would mean a new
    CUDA-graph capture).

    `host` (host_speed.HostProbe, CPU only): the host's yardstick is read every few seconds and each
    timing keeps the yardstick at its moment (PassSample.host_probe_s).
    """
    dev = model.device
    fwd = forward or model
    vocab = model.args.vocab_size
    shapes: list[_Shape] = [(kv, ctx, b, q) for kv in kv_dtypes for ctx in contexts for b in batch_sizes
                            for q in query_tokens]
    gen = torch.Generator(device="cpu").manual_seed(0)
    inputs = {}
    for kv, ctx, b, q in shapes:
        tokens = torch.randint(0, vocab, (b, q), generator=gen).to(dev)
        positions = torch.full((b, 1), ctx, dtype=torch.long, device=dev) + torch.arange(q, device=dev)
        inputs[(kv, ctx, b, q)] = (tokens, positions)
    times: dict[_Shape, list[float]] = {k: [] for k in shapes}
    stamps: dict[_Shape, list[float]] = {k: [] for k in shapes}
    if dev.type == "cuda":
        host = None

    def visit(key: _Shape, n_warm: int, n_time: int, warm_s: float = 0.0) -> None:
        kv, ctx, b, q = key
        if host is not None:
            host.tick()
        model.setup_caches(b, cache_len_for(ctx, q), kv)
        tokens, positions = inputs[key]
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < warm_s:  # untimed calls until this shape runs as in a loop
            fwd(tokens, positions)
        timed = time_call(lambda: fwd(tokens, positions), dev, n_warm, n_time)
        times[key].extend(timed)
        stamps[key].extend([time.perf_counter() - sum(timed) / 2.0] * len(timed))

    if dev.type == "cuda":
        for key in shapes:
            visit(key, warmup, repeats)
            if progress is not None:
                progress()
    else:
        for r in range(repeats):
            for key in shapes:
                # untimed calls first, for at least 20 ms: after a larger shape, a small one needs
                # several calls (about 5 for a 1 ms pass) before it runs as fast as in the engine's loop
                visit(key, max(warmup, 2), 1, warm_s=0.02)
                if progress is not None and r == repeats - 1:  # a shape is done with its last round
                    progress()
        if host is not None:
            host.tick(force=True)  # the last shapes' timings lie between two readings
    return [_pass_sample(model, role, key, times[key], stamps[key], cache_len_for, host) for key in shapes]


def _pass_sample(model: Transformer, role: Role, key: _Shape, times: list[float], stamps: list[float],
                 cache_len_for: Callable[[int, int], int], host: HostClock | None) -> PassSample:
    kv, ctx, b, q = key
    med, spread = timing_summary(times)
    return PassSample(role=role, batch_size=b, query_tokens=q, context_tokens=ctx,
                      attended_tokens=cache_len_for(ctx, q), kv_dtype=kv or dtype_name(model.dtype),
                      times_s=[round(t, 9) for t in times], median_s=med, spread=spread,
                      host_probe_s=None if host is None else [round(host.at(t, role), 9) for t in stamps])


def build_profile(*, device: torch.device, target: Transformer, draft: Transformer | None, samples: list[PassSample],
                  steps: list[StepSample], created_by: str, cuda_graphs: bool | None = None) -> EngineProfile:
    wd = target.dtype
    return EngineProfile(
        engine_version=engine_version(),
        device=device_info(device),
        weight_dtype=dtype_name(wd),
        target=model_spec(target.args, "engine-target", wd),
        draft=model_spec(draft.args, "engine-draft", wd) if draft is not None else None,
        samples=samples,
        steps=steps,
        cuda_graphs=cuda_graphs if device.type == "cuda" else None,
        created_by=created_by,
    )


@torch.no_grad()
def profile_steps(target: Transformer, draft: Transformer, batch_sizes: list[int], gammas: list[int],
                  prompt_lens: list[int], new_tokens: int, *, temperatures: tuple[float, ...] = (0.0,),
                  target_forward: GraphedForward | None = None, draft_forward: GraphedForward | None = None,
                  seed: int = 0, progress: Progress | None = None, repeats: int = 1, dspark_gamma: int = 0,
                  dspark_sps_table: dict[int, float] | None = None, step_graphs: StepGraphs | None = None,
                  host: HostClock | None = None) -> list[StepSample]:
    """Whole engine steps at fixed gamma (gamma 0 = the plain decoding loop): what the passes leave out;
    with `dspark_gamma`, also steps of the DSpark prefix scheduler drafting that many tokens (its
    decision's host time, which fixed-gamma steps do not have), priced with `dspark_sps_table`.

    Each configuration runs `repeats` times and keeps the median; on a CPU in rounds over all
    configurations (see profile_passes for why), on a GPU back to back after capturing its graphs.
    `step_graphs` (cudagraphs.StepGraphs): the speculative steps' phases replay as CUDA graphs.
    `host` (CPU only): as profile_passes's; the median run is then the median of the runs brought to one
    host speed.
    """
    gen = torch.Generator(device="cpu").manual_seed(seed)
    prompts = {(p, b): torch.randint(0, target.args.vocab_size, (b, p), generator=gen).tolist()
               for p in prompt_lens for b in batch_sizes}
    kinds: list[tuple[int, dict[int, float] | None]] = [(g, None) for g in gammas]
    if dspark_gamma:
        kinds.append((dspark_gamma, dspark_sps_table or {1: 1.0}))
    configs = [(t, p, b, k) for t in temperatures for p in prompt_lens for b in batch_sizes for k in range(len(kinds))]
    runs: dict[tuple[float, int, int, int], list[StepSample]] = {c: [] for c in configs}
    on_gpu = target.device.type == "cuda"
    order = ([c for c in configs for _ in range(repeats)] if on_gpu
             else [c for _ in range(repeats) for c in configs])
    if on_gpu:
        host = None
    stamps: dict[tuple[float, int, int, int], list[float]] = {c: [] for c in configs}
    for c in order:
        t, p, b, k = c
        g, table = kinds[k]
        first = not runs[c]
        if host is not None:
            host.tick()
        run = _step_run(target, draft, prompts[(p, b)], g, new_tokens, t, target_forward, draft_forward,
                        warm=first or not on_gpu, dspark_sps_table=table, step_graphs=step_graphs)
        runs[c].append(run)
        stamps[c].append(time.perf_counter() - run.step_s * new_tokens / 2.0)
        if progress is not None and len(runs[c]) == repeats:
            progress()
    if host is not None:
        host.tick(force=True)
        for c in configs:
            runs[c] = [r.model_copy(update={"host_probe_s": round(host.at(ts, "step"), 9)})
                       for r, ts in zip(runs[c], stamps[c], strict=True)]
    # each configuration's median run (lower middle); with probes, of the runs brought to one host speed
    return [sorted(runs[c], key=lambda s: s.step_s / (s.host_probe_s or 1.0))[(len(runs[c]) - 1) // 2]
            for c in configs]


def _size_caches(target: Transformer, draft: Transformer, batch: int, cap: int, gamma: int) -> None:
    """Caches sized exactly as the engine's own run sizes them (prompt, new tokens, the last step's drafts),
    and before the untimed run. Exactly: the loops attend over the whole static cache, and a cache kept
    from a bigger earlier configuration had every CPU step sample attend over 529 tokens where the measured
    runs attend over 130-332; the fit then split a step between attention and fixed cost wrongly (plain
    batch-16 steps predicted 10-20% fast; docs/validation.md). Before the untimed run: a shorter warm-up
    run would size them for itself, and the timed run would then reallocate them and re-capture its CUDA
    graphs inside the clock (on an H200 that doubled the plain loop's step time)."""
    for model in (target, draft) if gamma > 0 else (target,):
        layer0 = cast(Attention, model.layers[0].attention).kv_cache
        if (layer0 is None or (model.cache_batch, model.cache_len) != (batch, cap)
                or layer0.k.dtype != model.dtype):
            model.setup_caches(batch, cap)


def _step_run(target: Transformer, draft: Transformer, prompts: list[list[int]], gamma: int, new_tokens: int,
              temperature: float, target_forward: GraphedForward | None, draft_forward: GraphedForward | None,
              warm: bool, dspark_sps_table: dict[int, float] | None = None,
              step_graphs: StepGraphs | None = None) -> StepSample:
    """One timed run of `new_tokens` decode steps; `warm`: an untimed run first (and, on a GPU, the
    configuration's graphs captured). With `dspark_sps_table`: the DSpark scheduler drafting `gamma`."""
    sampling = Sampling(temperature=temperature)
    prompt_len, b = len(prompts[0]), len(prompts)
    _size_caches(target, draft, b, cache_tokens(prompt_len, new_tokens, gamma), gamma)

    def run(n: int = new_tokens) -> GenerationResult:
        if gamma == 0:
            return generate_baseline(target, prompts, n, sampling, forward=target_forward)
        policy = (FixedGamma(gamma=gamma) if dspark_sps_table is None else
                  DSparkScheduler(gamma_max=gamma, sps_source="table", sps_table=dspark_sps_table))
        return speculative_generate(target, draft, prompts, n, policy, sampling,
                                    target_forward=target_forward, draft_forward=draft_forward,
                                    step_graphs=step_graphs)

    if warm:
        if target.device.type == "cuda" and gamma > 0:
            precapture(target_forward, draft_forward, b, gamma)
            if step_graphs is not None:
                step_graphs.precapture(b, prompt_len, new_tokens, gamma, sampling)
            run()
        else:  # a CPU: a few untimed steps after other configurations' shapes (see profile_passes)
            run(min(new_tokens, 8))
    return _step_sample(run(), target, b, gamma, prompt_len + new_tokens // 2, temperature,
                        dspark=dspark_sps_table is not None)


def _step_sample(res: GenerationResult, target: Transformer, b: int, gamma: int, ctx: int, temperature: float,
                 dspark: bool) -> StepSample:
    if gamma == 0:
        steps = max(res.target_passes, 1)
        return StepSample(batch_size=b, gamma=0, step_s=res.decode_time_s / steps, draft_s=0.0, verify_s=0.0,
                          context_tokens=ctx, attended_tokens=target.cache_len, baseline_loop=True,
                          temperature=temperature)
    n = max(len(res.steps), 1)
    counts = None
    if dspark:  # the padded verify width of each step: what the scheduler chose
        widths = [int(s.verified.max(initial=0)) for s in res.steps]
        counts = {k: widths.count(k) for k in sorted(set(widths))}
    return StepSample(batch_size=b, gamma=gamma, step_s=res.decode_time_s / n,
                      draft_s=sum(s.draft_time_s for s in res.steps) / n,
                      verify_s=sum(s.verify_time_s for s in res.steps) / n,
                      context_tokens=ctx, attended_tokens=target.cache_len, temperature=temperature,
                      policy="fixed" if counts is None else "dspark", verify_counts=counts)


@dataclass(frozen=True)
class ProfileGrid:
    batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16)
    query_tokens: tuple[int, ...] = (1, 2, 3, 5, 7, 9)
    contexts: tuple[int, ...] = (64, 256, 512)
    kv_dtypes: tuple[str | None, ...] = (None,)
    step_batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16)
    step_gammas: tuple[int, ...] = (0, 1, 3, 5)
    step_prompt_tokens: tuple[int, ...] = (64, 256)
    step_temperatures: tuple[float, ...] = (0.0, 1.0)
    step_new_tokens: int = 48
    step_dspark_gamma: int = 5  # DSpark scheduler steps drafting this many tokens (0: none)
    repeats: int = 5
    warmup: int = 2
    step_repeats: int = 3

    @classmethod
    def quick(cls) -> ProfileGrid:
        return cls(batch_sizes=(1, 4, 16), query_tokens=(1, 3, 5), contexts=(64, 384), step_batch_sizes=(1, 4),
                   step_gammas=(0, 3, 5), step_prompt_tokens=(64,), step_new_tokens=32, repeats=3, warmup=1,
                   step_repeats=2)

    def round_of(self, rounds: int) -> ProfileGrid:
        """The grid one of `rounds` profile rounds runs: the repeats shared out (rounded up), so the
        rounds' merged profile (merge_profiles) has at least the whole grid's repeats."""
        return replace(self, repeats=-(-self.repeats // rounds), step_repeats=-(-self.step_repeats // rounds))


def load_engine_models(preset: str, seed: int, cache_dir: str | Path | None, device: torch.device,
                       dtype: torch.dtype, random_weights: bool) -> tuple[Transformer, Transformer, str]:
    """The trained pair from the cache, or random weights of the same shapes when asked for: a pass's time
    does not depend on its weights, but a profile that claims a pair must time that pair, so a missing
    pair is an error rather than a silent stand-in."""
    spec = get_preset(preset)
    folder = pair_dir(preset, seed, cache_dir)
    if not random_weights:
        if not (folder / "metrics.json").is_file():
            raise InputError("--preset", None, f"no trained {preset!r} pair (seed {seed}) in {folder}: run "
                             f"`dspark-sim engine train --preset {preset} --seed {seed}` first (with the same "
                             "--cache-dir), or pass --random-weights to time untrained models of its shapes")
        pair = load_pair(folder, device=device, dtype=dtype)
        t, d, what = pair.target.eval(), pair.draft.eval(), f"trained pair {folder}"
    else:
        t = build_model(ModelArgs.from_preset(spec.target, vocab_size=VOCAB_SIZE), device=device, dtype=dtype,
                        seed=seed).eval()
        d = build_model(ModelArgs.from_preset(spec.draft, vocab_size=VOCAB_SIZE), device=device, dtype=dtype,
                        seed=seed + 1).eval()
        what = f"random weights of preset {preset!r}"
    if device.type == "cuda":  # as `validate` runs them on a GPU
        t.fuse_projections()
        d.fuse_projections()
    return t, d, what


def _pass_sps_table(samples: list[PassSample]) -> dict[int, float]:
    """Verify passes a second by tokens a pass, from the target's timed passes at the shortest context:
    the table the DSpark steps of a profile schedule with (the steps record the verify widths chosen,
    so any sensible table serves)."""
    target = [s for s in samples if s.role == "target"]
    if not target:
        return {1: 1.0}
    ctx = min(s.context_tokens for s in target)
    table: dict[int, float] = {}
    for s in target:
        if s.context_tokens == ctx:
            k = s.batch_size * s.query_tokens
            table[k] = max(table.get(k, 0.0), 1.0 / s.median_s)
    return dict(sorted(table.items()))


def run_profile(target: Transformer, draft: Transformer, grid: ProfileGrid, *, created_by: str,
                progress: Progress | None = None, cuda_graphs: bool = True,
                host: HostClock | None = None) -> EngineProfile:
    """Pass timings for both models over the grid, then whole steps; forward passes as the engine runs
    them: on a GPU as CUDA-graph replays, the speculative steps' draft and verify phases too (`validate`'s
    engine), or, with cuda_graphs=False, as eager calls (the drafter table's loops); eager on a CPU."""
    dev = target.device
    graphs = dev.type == "cuda" and cuda_graphs
    tf = GraphedForward(target) if graphs else None
    df = GraphedForward(draft) if graphs else None
    slack = max(grid.query_tokens) + 8
    samples = profile_passes(target, "target", list(grid.batch_sizes), list(grid.query_tokens), list(grid.contexts),
                             list(grid.kv_dtypes), cache_len_for=lambda c, q: c + slack, forward=tf,
                             warmup=grid.warmup, repeats=grid.repeats, progress=progress, host=host)
    draft_q = sorted({1, 2})  # the engine's draft passes: a 2-token catch-up, then single tokens
    samples += profile_passes(draft, "draft", list(grid.batch_sizes), draft_q, list(grid.contexts),
                              list(grid.kv_dtypes), cache_len_for=lambda c, q: c + slack, forward=df,
                              warmup=grid.warmup, repeats=grid.repeats, progress=progress, host=host)
    for f in (tf, df):
        if f is not None:
            f.reset()
    tf = GraphedForward(target) if graphs else None
    df = GraphedForward(draft) if graphs else None
    steps = profile_steps(target, draft, list(grid.step_batch_sizes), list(grid.step_gammas),
                          list(grid.step_prompt_tokens), grid.step_new_tokens, temperatures=grid.step_temperatures,
                          target_forward=tf, draft_forward=df, progress=progress, repeats=grid.step_repeats,
                          dspark_gamma=grid.step_dspark_gamma, dspark_sps_table=_pass_sps_table(samples),
                          step_graphs=StepGraphs(target, draft) if graphs else None, host=host)
    return build_profile(device=dev, target=target, draft=draft, samples=samples, steps=steps, created_by=created_by,
                         cuda_graphs=graphs)
