"""Microbenchmarks of the engine's forward passes and steps (`dspark-sim profile`).

What is timed is exactly what the engine runs: the same model code, the same static cache (whose
full length every query attends over, masked), the same compiled graphs on CUDA. The grid spans
batch size, query tokens per sequence (1 .. gamma + 1), context and KV dtype; each shape gets
warm-up runs and repeats, and the spread is kept so noisy points are visible.
"""

from __future__ import annotations

import hashlib
import os
import platform
import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

import dspark_sim
from dspark_sim.config.errors import InputError
from dspark_sim.config.measurements import DeviceInfo, EngineProfile, PassSample, StepSample
from dspark_sim.config.schema import ModelSpec
from dspark_sim.engine.cudagraphs import GraphedForward, StepGraphs
from dspark_sim.engine.model import ModelArgs, Transformer

_ENGINE_FILES = ("model.py", "layers.py", "generate.py", "loop.py", "step.py", "sampling.py", "caches.py", "clock.py",
                 "cudagraphs.py")


def engine_version() -> str:
    """Package version plus a hash of the engine's source: a profile goes stale when either changes."""
    h = hashlib.sha256()
    here = Path(__file__).resolve().parent.parent / "engine"
    for name in _ENGINE_FILES:
        h.update((here / name).read_bytes())
    return f"{dspark_sim.__version__}+{h.hexdigest()[:10]}"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def _llc_mb() -> float:
    best = 0.0
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    for idx in base.glob("index*"):
        try:
            size = (idx / "size").read_text().strip()
        except OSError:
            continue
        mult = {"K": 1024, "M": 1024**2, "G": 1024**3}.get(size[-1], 1)
        num = float(size[:-1]) if size[-1] in "KMG" else float(size)
        best = max(best, num * mult / 1e6)
    return best


def device_info(device: torch.device) -> DeviceInfo:
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        return DeviceInfo(kind="cuda", name=p.name, torch_version=torch.__version__, threads=p.multi_processor_count,
                          memory_gb=p.total_memory / 1e9, onchip_mb=getattr(p, "L2_cache_size", 0) / 1e6)
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    return DeviceInfo(kind="cpu", name=_cpu_name(), torch_version=torch.__version__, threads=torch.get_num_threads(),
                      memory_gb=mem, onchip_mb=_llc_mb())


_DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def model_spec(args: ModelArgs, name: str, weight_dtype: torch.dtype, kv_dtype: str | None = None) -> ModelSpec:
    """The engine's architecture in the simulator's schema (so the cost model prices the same model)."""
    wd = _DTYPE_NAMES.get(weight_dtype, "fp32")
    return ModelSpec(
        name=name, num_layers=args.n_layers, hidden_size=args.dim, num_heads=args.n_heads,
        num_kv_heads=args.n_kv_heads, head_dim=args.head_dim, ffn_hidden_size=args.ffn_hidden,
        vocab_size=args.vocab_size, tie_embeddings=args.tie_embeddings, weight_dtype=wd,
        kv_dtype=kv_dtype or wd, activation_dtype=wd, source="dspark-sim engine",
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn, device: torch.device, warmup: int, repeats: int) -> list[float]:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


def _summary(times: list[float]) -> tuple[float, float]:
    med = statistics.median(times)
    if len(times) >= 3:
        p10, p90 = np.percentile(times, [10, 90])
        return med, float((p90 - p10) / med)
    return med, 0.0


@torch.no_grad()
def profile_passes(model: Transformer, role: str, batch_sizes: list[int], query_tokens: list[int],
                   contexts: list[int], kv_dtypes: list[str | None], *, cache_len_for, forward=None,
                   warmup: int = 2, repeats: int = 5, progress=None, host=None) -> list[PassSample]:
    """Time model(tokens[B, q], positions) for every grid point; caches sized as the engine sizes them.

    `cache_len_for(context, q)` gives the static cache length the engine would allocate, which is what
    attention reads (the engine masks, it does not slice).

    On a CPU the repeats are taken in rounds over the whole grid (every shape once per round, after
    untimed calls that bring it back to its in-loop speed) rather than back to back: a shared machine's slow spells last tens of milliseconds,
    long enough to spoil every repeat of one shape, but not one repeat of every shape. On a GPU the
    repeats stay back to back (each new cache would mean a new CUDA-graph capture).

    `host` (host_speed.HostProbe, CPU only): the host's yardstick is read every few seconds and each
    timing keeps the yardstick at its moment (PassSample.host_probe_s).
    """
    dev = model.device
    fwd = forward or model
    vocab = model.args.vocab_size
    shapes = [(kv, ctx, b, q) for kv in kv_dtypes for ctx in contexts for b in batch_sizes for q in query_tokens]
    gen = torch.Generator(device="cpu").manual_seed(0)
    inputs = {}
    for kv, ctx, b, q in shapes:
        tokens = torch.randint(0, vocab, (b, q), generator=gen).to(dev)
        positions = torch.full((b, 1), ctx, dtype=torch.long, device=dev) + torch.arange(q, device=dev)
        inputs[(kv, ctx, b, q)] = (tokens, positions)
    times: dict[tuple, list[float]] = {k: [] for k in shapes}
    stamps: dict[tuple, list[float]] = {k: [] for k in shapes}
    if dev.type == "cuda":
        host = None

    def visit(key, n_warm: int, n_time: int, warm_s: float = 0.0) -> None:
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
    out: list[PassSample] = []
    for key in shapes:
        kv, ctx, b, q = key
        med, spread = _summary(times[key])
        out.append(PassSample(role=role, batch_size=b, query_tokens=q, context_tokens=ctx,
                              attended_tokens=cache_len_for(ctx, q),
                              kv_dtype=kv or _DTYPE_NAMES.get(model.dtype, "fp32"),
                              times_s=[round(t, 9) for t in times[key]], median_s=med, spread=spread,
                              host_probe_s=None if host is None else [round(host.at(t, role), 9) for t in stamps[key]]))
    return out


def step_samples(result, batch_size: int, gamma: int) -> StepSample | None:
    """Median whole-step, draft and verify times of a speculative run (from its StepStats)."""
    steps = [s for s in result.steps if s.draft_time_s > 0 or gamma == 0]
    if not steps:
        return None
    return StepSample(
        batch_size=batch_size,
        gamma=gamma,
        step_s=statistics.median(s.step_time_s for s in steps),
        draft_s=statistics.median(s.draft_time_s for s in steps),
        verify_s=statistics.median(s.verify_time_s for s in steps),
    )


def build_profile(*, device: torch.device, target: Transformer, draft: Transformer | None, samples: list[PassSample],
                  steps: list[StepSample], created_by: str, cuda_graphs: bool | None = None) -> EngineProfile:
    wd = target.dtype
    return EngineProfile(
        engine_version=engine_version(),
        device=device_info(device),
        weight_dtype=_DTYPE_NAMES.get(wd, "fp32"),
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
                  target_forward=None, draft_forward=None, seed: int = 0, progress=None,
                  repeats: int = 1, dspark_gamma: int = 0,
                  dspark_sps_table: dict[int, float] | None = None, step_graphs=None,
                  host=None) -> list[StepSample]:
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
    kinds = [(g, None) for g in gammas] + ([(dspark_gamma, dspark_sps_table or {1: 1.0})] if dspark_gamma else [])
    configs = [(t, p, b, k) for t in temperatures for p in prompt_lens for b in batch_sizes for k in range(len(kinds))]
    runs: dict[tuple, list[StepSample]] = {c: [] for c in configs}
    on_gpu = target.device.type == "cuda"
    order = ([c for c in configs for _ in range(repeats)] if on_gpu
             else [c for _ in range(repeats) for c in configs])
    if on_gpu:
        host = None
    stamps: dict[tuple, list[float]] = {c: [] for c in configs}
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
    out = []
    for c in configs:
        rs = runs[c]
        # the median run (lower middle); with probes, of the runs brought to one host speed
        pick = sorted(rs, key=lambda s: s.step_s / (s.host_probe_s or 1.0))[(len(rs) - 1) // 2]
        out.append(pick)
    return out


def _step_run(target, draft, prompts, gamma, new_tokens, temperature, target_forward, draft_forward,
              warm: bool, dspark_sps_table: dict[int, float] | None = None, step_graphs=None) -> StepSample:
    """One timed run of `new_tokens` decode steps; `warm`: an untimed run first (and, on a GPU, the
    configuration's graphs captured). With `dspark_sps_table`: the DSpark scheduler drafting `gamma`."""
    from dspark_sim.config.schema import DSparkScheduler, FixedGamma
    from dspark_sim.engine.caches import cache_tokens
    from dspark_sim.engine.generate import generate_baseline, speculative_generate
    from dspark_sim.engine.sampling import Sampling

    sampling = Sampling(temperature=temperature)
    prompt_len, b = len(prompts[0]), len(prompts)
    # Caches sized exactly as the engine's own run sizes them (prompt, new tokens, the last step's drafts),
    # and before the untimed run. Exactly: the loops attend over the whole static cache, and a cache kept
    # from a bigger earlier configuration had every CPU step sample attend over 529 tokens, where the
    # measured runs attend over 130-332: the fit then split a step between attention and fixed cost
    # wrongly (plain batch-16 steps predicted 10-20% fast; validation/README.md, session 8). Before: a
    # shorter warm-up run would size them for itself, and the timed run would then reallocate them and
    # re-capture its CUDA graphs inside the clock (on an H200 that doubled the plain loop's step time).
    cap = cache_tokens(prompt_len, new_tokens, gamma)
    for model in (target, draft) if gamma > 0 else (target,):
        layer0 = model.layers[0].attention.kv_cache
        if (layer0 is None or (model.cache_batch, model.cache_len) != (b, cap)
                or layer0.k.dtype != model.dtype):
            model.setup_caches(b, cap)

    def run(n=new_tokens):
        if gamma == 0:
            return generate_baseline(target, prompts, n, sampling, forward=target_forward)
        policy = (FixedGamma(gamma=gamma) if dspark_sps_table is None else
                  DSparkScheduler(gamma_max=gamma, sps_source="table", sps_table=dspark_sps_table))
        return speculative_generate(target, draft, prompts, n, policy, sampling,
                                    target_forward=target_forward, draft_forward=draft_forward,
                                    step_graphs=step_graphs)

    if warm:
        if target.device.type == "cuda" and gamma > 0:
            from dspark_sim.engine.cudagraphs import precapture

            precapture(target_forward, draft_forward, b, gamma)
            if step_graphs is not None:
                step_graphs.precapture(b, prompt_len, new_tokens, gamma, sampling)
            run()
        else:  # a CPU: a few untimed steps after other configurations' shapes (see profile_passes)
            run(min(new_tokens, 8))
    res = run()
    ctx = prompt_len + new_tokens // 2
    if gamma == 0:
        steps = max(res.target_passes, 1)
        return StepSample(batch_size=b, gamma=0, step_s=res.decode_time_s / steps, draft_s=0.0, verify_s=0.0,
                          context_tokens=ctx, attended_tokens=target.cache_len, baseline_loop=True,
                          temperature=temperature)
    n = max(len(res.steps), 1)
    counts = None
    if dspark_sps_table is not None:  # the padded verify width of each step: what the scheduler chose
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


def load_engine_models(preset: str, seed: int, cache_dir, device: torch.device, dtype: torch.dtype,
                       random_weights: bool) -> tuple[Transformer, Transformer, str]:
    """The trained pair from the cache, or random weights of the same shapes when asked for: a pass's time
    does not depend on its weights, but a profile that claims a pair must time that pair, so a missing
    pair is an error rather than a silent stand-in."""
    from dspark_sim.engine.data import VOCAB_SIZE
    from dspark_sim.engine.model import build_model
    from dspark_sim.engine.train import get_preset, load_pair, pair_dir

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
                progress=None, cuda_graphs: bool = True, host=None) -> EngineProfile:
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


def at_reference_speed(profile: EngineProfile, reference_s: dict[str, float]) -> EngineProfile:
    """The profile with every timing brought to the host speed at which the yardsticks read `reference_s`
    (by kind: a pass by its model's, a step by the step yardstick; host_speed.py); timings taken without a
    yardstick reading stay as they are."""
    from dspark_sim.measure.host_speed import scaled

    samples = []
    for s in profile.samples:
        if s.host_probe_s is None:
            samples.append(s)
            continue
        ref = reference_s[s.role]
        times = [scaled(t, p, ref) for t, p in zip(s.times_s, s.host_probe_s, strict=True)]
        med, spread = _summary(times)
        samples.append(s.model_copy(update={"times_s": times, "median_s": med, "spread": spread,
                                            "host_probe_s": [ref] * len(times)}))
    ref = reference_s["step"]
    steps = [st if st.host_probe_s is None else st.model_copy(update={
        "step_s": scaled(st.step_s, st.host_probe_s, ref), "draft_s": scaled(st.draft_s, st.host_probe_s, ref),
        "verify_s": scaled(st.verify_s, st.host_probe_s, ref), "host_probe_s": ref})
        for st in profile.steps]
    return profile.model_copy(update={"samples": samples, "steps": steps})


def merge_profiles(rounds: list[EngineProfile], fastest_steps: bool = False) -> EngineProfile:
    """Profiles of one grid taken at different times -> one profile: every pass shape's repeats pooled
    (median and spread recomputed), every step configuration's median run (lower middle), or with
    `fastest_steps` its fastest.

    Why: `validate` profiles in rounds between its measurement rounds, so that the calibration sees the
    same slow and fast spells of a shared host as the measurements it predicts. On a GPU a whole step is
    host-bound and a busy host only ever slows it (validation/README.md, session 12): there the fastest
    round is the machine's own speed, as the fastest timed repeat is on the measuring side."""
    if len(rounds) == 1:
        return rounds[0]
    passes: dict[tuple, list[PassSample]] = {}
    for prof in rounds:
        for s in prof.samples:
            passes.setdefault((s.role, s.batch_size, s.query_tokens, s.context_tokens, s.attended_tokens,
                               s.kv_dtype), []).append(s)
    samples = []
    for group in passes.values():
        times = [t for s in group for t in s.times_s]
        med, spread = _summary(times)
        probes = ([p for s in group for p in s.host_probe_s] if all(s.host_probe_s is not None for s in group)
                  else None)
        samples.append(group[0].model_copy(update={"times_s": times, "median_s": med, "spread": spread,
                                                   "host_probe_s": probes}))
    steps_by: dict[tuple, list[StepSample]] = {}
    for prof in rounds:
        for st in prof.steps:
            steps_by.setdefault((st.batch_size, st.gamma, st.context_tokens, st.attended_tokens, st.temperature,
                                 st.baseline_loop, st.policy), []).append(st)
    steps = [sorted(g, key=lambda st: st.step_s)[0 if fastest_steps else (len(g) - 1) // 2] for g in steps_by.values()]
    return rounds[0].model_copy(update={"samples": samples, "steps": steps})


# ------------------------------------------------------------------------------------------------
# All-reduce microbenchmark (tensor parallelism's communication; `python -m dspark_sim.engine.tp allreduce`)
# ------------------------------------------------------------------------------------------------
# The documents live here rather than in config/measurements.py for now (one owner per file); they
# are plain pydantic models like the others and `calibrate.fit_interconnect` reads their JSON.


class AllReduceSample(BaseModel):
    """One message size: an all-reduce of tokens x hidden activations, as the engine sends per layer."""

    model_config = ConfigDict(extra="forbid")
    world_size: int
    tokens: int
    hidden: int
    dtype: str
    message_bytes: int
    mode: str = Field("eager", description="eager calls, or replays of a CUDA graph of them (cuda-graph)")
    context: Literal["burst", "between-matmuls"] = Field(
        "burst", description="burst: all-reduces back to back; between-matmuls: each reduces the output of a "
        "row-parallel matmul as in the model (the matmuls' own time, timed alone, subtracted)")
    times_s: list[float] = Field(description="per repeat: mean time of one all-reduce, slowest rank")
    median_s: float
    spread: float = Field(description="(p90 - p10) / median of the repeats")


class AllReduceProfile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["allreduce-profile"] = "allreduce-profile"
    schema_version: int = 1
    engine_version: str
    backend: str = Field(description="gloo (CPU) or nccl (CUDA)")
    device: DeviceInfo
    world_size: int
    mode: str = Field(description="how the samples ran: eager, cuda-graph, or both")
    samples: list[AllReduceSample]
    created_by: str = ""


def _allreduce_inner(message_bytes: int, device: torch.device) -> int:
    """All-reduces per timed repeat: enough that timer and rank skew amortise on small messages."""
    if device.type == "cuda":
        return 50 if message_bytes < (1 << 20) else 10
    return 20 if message_bytes < (1 << 16) else 5 if message_bytes < (1 << 20) else 2


@torch.no_grad()
def profile_allreduce(tp, tokens: list[int], hidden: int, dtype: torch.dtype, *, warmup: int = 3,
                      repeats: int = 10, use_graphs: bool = True,
                      matmul_in: int | None = None) -> list[AllReduceSample]:
    """Time the engine's all-reduce (`tp.all_reduce`, the collective the row-parallel layers call) of
    [tokens, hidden] tensors in `dtype` on every rank of `tp` (a `TPGroup`; call it on every rank).

    Each repeat runs a burst of all-reduces between a host barrier plus one device all-reduce (which
    lines the ranks up) and a device sync; the burst's mean is taken on the slowest rank (max over
    ranks), so every rank returns the same samples. On CUDA the burst is a captured CUDA graph when
    `use_graphs` (as the engine replays its passes), eager calls otherwise or if capture fails.

    matmul_in: time each all-reduce as the model runs it instead, right after the row-parallel matmul
    [tokens, matmul_in] @ [matmul_in, hidden] whose output it reduces (context "between-matmuls"), minus
    a burst of the matmuls alone. Back-to-back all-reduces hide part of each other's fixed cost; in the
    model every collective waits for the matmul before it and the next matmul waits for it.
    """
    from dspark_sim.engine.tp import all_reduce

    dev = tp.device
    name = _DTYPE_NAMES.get(dtype, str(dtype).replace("torch.", ""))
    elem = torch.tensor([], dtype=dtype).element_size()
    out: list[AllReduceSample] = []
    gen = torch.Generator(device="cpu").manual_seed(0)
    weight = (torch.randn(matmul_in, hidden, generator=gen) * matmul_in ** -0.5).to(dev, dtype) if matmul_in else None
    for t in tokens:
        inner = _allreduce_inner(t * hidden * elem, dev)
        if weight is None:
            x = torch.randn(t, hidden, generator=gen).to(dev, dtype)

            def burst(x=x, inner=inner):
                y = x
                for _ in range(inner):
                    y = all_reduce(x, tp.group_name, tp.mode)
                return y

            times, mode = _time_burst(burst, tp, warmup, repeats, use_graphs)
        else:
            x = torch.randn(t, matmul_in, generator=gen).to(dev, dtype)

            def burst(x=x, inner=inner, reduce=True):
                y = x
                for _ in range(inner):
                    y = x @ weight
                    if reduce:
                        y = all_reduce(y, tp.group_name, tp.mode)
                return y

            both, mode = _time_burst(burst, tp, warmup, repeats, use_graphs)
            alone, _ = _time_burst(lambda b=burst: b(reduce=False), tp, warmup, repeats, use_graphs)
            floor = statistics.median(alone)
            times = [max(v - floor, 1e-9 * floor) for v in both]
        times = [v / inner for v in times]
        med, spread = _summary(times)
        out.append(AllReduceSample(world_size=tp.world, tokens=t, hidden=hidden, dtype=name,
                                   message_bytes=t * hidden * elem, mode=mode,
                                   context="between-matmuls" if weight is not None else "burst",
                                   times_s=[round(v, 10) for v in times], median_s=med, spread=spread))
    return out


def _time_burst(burst, tp, warmup: int, repeats: int, use_graphs: bool) -> tuple[list[float], str]:
    """Seconds of each of `repeats` runs of `burst` on the slowest rank (the same list on every rank),
    the ranks lined up before each run; a captured CUDA graph of it on CUDA when `use_graphs`."""
    import torch.distributed as dist

    from dspark_sim.engine.tp import all_reduce

    dev = tp.device
    line_up = torch.zeros(1, device=dev)
    for _ in range(warmup):
        burst()
    run, mode = burst, "eager"
    if dev.type == "cuda" and use_graphs:
        run, mode = _graph_or_eager(burst, tp)
    times = []
    for _ in range(repeats):
        dist.barrier(group=tp.cpu_group)
        all_reduce(line_up, tp.group_name, tp.mode)
        _sync(dev)
        t0 = time.perf_counter()
        run()
        _sync(dev)
        times.append(time.perf_counter() - t0)
    tt = torch.tensor(times, dtype=torch.float64)
    dist.all_reduce(tt, op=dist.ReduceOp.MAX, group=tp.cpu_group)
    return tt.tolist(), mode


def _graph_or_eager(burst, tp):
    """A CUDA graph of `burst` (replayed), or `burst` itself when capture fails on any rank."""
    import torch.distributed as dist

    graph = None
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            burst()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            burst()
    except Exception:  # noqa: BLE001 - fall back to eager calls (recorded as the profile's mode)
        graph = None
    failed = torch.tensor([0 if graph is not None else 1])
    dist.all_reduce(failed, op=dist.ReduceOp.MAX, group=tp.cpu_group)
    if int(failed):
        torch.cuda.synchronize()
        return burst, "eager"
    return graph.replay, "cuda-graph"


def allreduce_profile(tp, tokens: list[int], hidden: int, dtype: torch.dtype, *, repeats: int = 10,
                      created_by: str = "", matmul_in: int | None = None) -> AllReduceProfile:
    """`profile_allreduce` as a document (the same on every rank)."""
    samples = profile_allreduce(tp, tokens, hidden, dtype, repeats=repeats, matmul_in=matmul_in)
    mode = "+".join(sorted({s.mode for s in samples}))
    return AllReduceProfile(engine_version=engine_version(), backend=tp.backend, device=device_info(tp.device),
                            world_size=tp.world, mode=mode, samples=samples, created_by=created_by)
