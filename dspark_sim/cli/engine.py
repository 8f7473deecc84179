"""`dspark-sim engine ...`: train a byte-level target/draft pair and measure speculative decoding.

The main CLI mounts `engine_app`; bad input raises InputError, which it prints as one line (exit 2).
torch is imported inside the commands so `dspark-sim --help` works without the engine extra.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.table import Table

from dspark_sim.cli.drafters import drafters_table
from dspark_sim.config.errors import InputError
from dspark_sim.config.shorthand import draft_length, parse_policy, policy_shorthand

if TYPE_CHECKING:
    from dspark_sim.engine.results import GenerationResult

engine_app = typer.Typer(help="Real PyTorch speculative decoding: train a pair, generate, measure.",
                         no_args_is_help=True)

DEFAULT_PROMPTS = ["def ", "import os\n", "class ", "    for i in range(", "    return self."]


def _console() -> Console:
    return Console(highlight=False)


def _check_device(device: str) -> str:
    if device not in ("cpu", "cuda"):
        raise InputError("engine", "--device", f"unknown device {device!r} (allowed: cpu, cuda)")
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise InputError("engine", "--device", "cuda requested but torch sees no CUDA device")
    return device


@engine_app.command()
def train(
    preset: str = typer.Option("tiny", help="test (seconds) | tiny (<= 5 min on 2 CPU cores) | gpu (H200)"),
    seed: int = typer.Option(0, help="seeds weights, batches and evaluation"),
    cache_dir: Path = typer.Option(None, help="root of the cache (default ~/.cache/dspark-sim/engine)"),
    device: str = typer.Option("cpu", help="cpu | cuda"),
    force: bool = typer.Option(False, help="retrain even when the cache already holds this pair"),
) -> None:
    """Train a target on stdlib bytes, then distil a draft from it; save both; report loss and tau."""
    from dspark_sim.engine.train import get_preset, train_pair

    get_preset(preset)
    _check_device(device)
    con = _console()
    t0 = time.perf_counter()
    pair = train_pair(preset, seed, cache_dir, device=device, force=force, log=con.print)
    m = pair.metrics
    con.print(f"pair: {pair.folder} (trained in {m.get('total_time_s', time.perf_counter() - t0):.1f} s)")
    con.print(f"target: {m['target_params']:,} params, final train loss {m['target_final_loss']:.3f}, "
              f"eval loss {m['target_eval_loss']:.3f} nats/byte")
    con.print(f"draft:  {m['draft_params']:,} params, final KL {m['draft_final_kl']:.3f}, eval loss "
              f"{m['draft_eval_loss']:.3f}, alpha (T=1, 1 - TV) {m['alpha_t1']:.3f}")
    for temperature in (0.0, 1.0):
        res = _measure(pair.target, pair.draft, get_preset(preset).max_corpus_bytes, temperature)
        con.print(f"tau (gamma 4, T={temperature:g}, {len(res.tokens)} held-out prompts x 64 tokens): "
                  f"{res.tau:.2f}; acceptance by position {_fmt(res.acceptance_by_position())}")


def _measure(target: Any, draft: Any, max_bytes: int | None, temperature: float) -> Any:
    import torch

    from dspark_sim.config.schema import FixedGamma
    from dspark_sim.engine.data import held_out_prompts, load_corpus
    from dspark_sim.engine.generate import speculative_generate
    from dspark_sim.engine.sampling import Sampling

    prompts = held_out_prompts(load_corpus(max_bytes), 4)
    gen = torch.Generator(device=target.device).manual_seed(0)
    return speculative_generate(target, draft, prompts, 64, FixedGamma(gamma=4), Sampling(temperature), generator=gen)


def _fmt(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.2f}" for v in values) + "]"


def _sampling(src: str, temperature: float, top_k: int | None, top_p: float | None) -> Any:
    from dspark_sim.engine.sampling import Sampling

    try:
        return Sampling(temperature, top_k, top_p)
    except ValueError as err:
        raise InputError(src, "--temperature/--top-k/--top-p", str(err)) from err


def _check_run_options(src: str, max_new_tokens: int, batch_size: int, kv_dtype: str | None, dtype: str) -> None:
    from dspark_sim.engine.model import KV_DTYPES, WEIGHT_DTYPES

    if max_new_tokens < 1:
        raise InputError(src, "--max-new-tokens", f"must be >= 1 (got {max_new_tokens})")
    if batch_size < 1:
        raise InputError(src, "--batch-size", f"must be >= 1 (got {batch_size})")
    if kv_dtype is not None and kv_dtype not in KV_DTYPES:
        raise InputError(src, "--kv-dtype", f"unknown {kv_dtype!r} (allowed: {', '.join(KV_DTYPES)})")
    if dtype not in WEIGHT_DTYPES:
        raise InputError(src, "--dtype", f"unknown {dtype!r} (allowed: {', '.join(WEIGHT_DTYPES)})")


def _baseline(target: Any, prompts: list[list[int]], max_new_tokens: int, sampling: Any, gen: Any,
              **kw: Any) -> GenerationResult:
    """Plain decoding's timed run (after a short warm-up), each from a fresh generator `gen()`."""
    from dspark_sim.engine.generate import generate_baseline

    generate_baseline(target, prompts, min(8, max_new_tokens), sampling, generator=gen(), **kw)
    return generate_baseline(target, prompts, max_new_tokens, sampling, generator=gen(), **kw)


def _prompts(src: str, prompt: list[str] | None, batch_size: int) -> list[list[int]]:
    """The prompt texts, cycled over the batch, as byte tokens."""
    from dspark_sim.engine.data import encode

    texts = list(prompt or DEFAULT_PROMPTS[:1])
    prompts = [encode(texts[i % len(texts)]) for i in range(batch_size)]
    if any(not p for p in prompts):
        raise InputError(src, "--prompt", "prompts must not be empty")
    return prompts


def _trained_pair(preset: str, seed: int, cache_dir: Path | None, checkpoint: Path | None = None) -> Path:
    """The folder of a trained pair: `checkpoint`, else the cache's pair of this preset and seed."""
    from dspark_sim.engine.train import get_preset, pair_dir

    if checkpoint is None:
        get_preset(preset)
    folder = pair_dir(preset, seed, cache_dir) if checkpoint is None else checkpoint
    if not (folder / "target.safetensors").is_file():
        raise InputError(str(folder), None, "no trained pair here (run `dspark-sim engine train` first)")
    return folder


def _forwards(src: str, target: Any, draft: Any, device: str, compile: bool, step_graphs: bool,
              kernels: str) -> tuple[Any, Any, Any]:
    """(target forward, draft forward, step graphs) of `engine generate`'s GPU options (None: eager)."""
    if kernels not in ("torch", "triton"):
        raise InputError(src, "--kernels", f"unknown {kernels!r} (allowed: torch, triton)")
    if kernels == "triton":
        from dspark_sim.engine import kernels as triton_kernels

        if device != "cuda" or not triton_kernels.available(device):
            raise InputError(src, "--kernels", "the Triton kernels need --device cuda and triton")
        for model in (target, draft):
            model.fuse_projections()
            triton_kernels.use_triton_decode(model)
    fwd_t = fwd_d = graphs = None
    if compile:
        from dspark_sim.engine.generate import compile_forward

        if device != "cuda":
            raise InputError(src, "--compile", "CUDA graphs need --device cuda")
        fwd_t, fwd_d = compile_forward(target), compile_forward(draft)
    if step_graphs:
        from dspark_sim.engine.cudagraphs import StepGraphs

        if device != "cuda":
            raise InputError(src, "--step-graphs", "CUDA graphs need --device cuda")
        if compile or kernels != "torch":
            raise InputError(src, "--step-graphs", "replays the model's own kernels: not with --compile or "
                             "--kernels triton")
        graphs = StepGraphs(target, draft)
    return fwd_t, fwd_d, graphs


def _report(title: str, prompts: list[list[int]], res: GenerationResult, base: GenerationResult | None,
            greedy: bool, row: tuple[str, str]) -> None:
    """Each sequence's text, then the run's table: `row` third, the baseline's speed when `base` is given."""
    from dspark_sim.engine.data import decode

    con = _console()
    for i, toks in enumerate(res.tokens):
        con.print(f"[bold]--- sequence {i}[/bold]")
        con.print(decode(prompts[i]) + decode(toks), markup=False)
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("tau (tokens / target pass)", f"{res.tau:.3f}")
    table.add_row("acceptance by position", _fmt(res.acceptance_by_position()))
    table.add_row(*row)
    table.add_row("speculative tok/s", f"{res.tokens_per_s:.1f}")
    if base is not None:
        table.add_row("baseline tok/s", f"{base.tokens_per_s:.1f}")
        table.add_row("speed-up", f"{res.tokens_per_s / base.tokens_per_s:.2f}x")
        if greedy:
            table.add_row("greedy output identical", str(base.tokens == res.tokens))
    con.print(table)


@engine_app.command()
def generate(
    preset: str = typer.Option("tiny", help="which trained pair (test | tiny | gpu)"),
    checkpoint: Path = typer.Option(None, help="a pair folder (target.* + draft.*); overrides --preset"),
    seed: int = typer.Option(0, help="the pair's training seed"),
    cache_dir: Path = typer.Option(None, help="root of the cache (default ~/.cache/dspark-sim/engine)"),
    prompt: list[str] = typer.Option(None, help="prompt text (repeat for several; cycled over the batch)"),
    max_new_tokens: int = typer.Option(128, help="tokens to generate per sequence"),
    policy: str = typer.Option("fixed:4", help="none | fixed:G | confidence_threshold:G[@T] | dspark:G | "
                               "goodput:G (G draft tokens a step; dspark and goodput price verify tokens with "
                               "an SPS(B) curve profiled on the target now)"),
    temperature: float = typer.Option(0.0, help="0 = greedy"),
    top_k: int = typer.Option(None, help="keep the k most likely tokens"),
    top_p: float = typer.Option(None, help="nucleus sampling mass"),
    batch_size: int = typer.Option(1, help="sequences decoded together"),
    device: str = typer.Option("cpu", help="cpu | cuda"),
    dtype: str = typer.Option("fp32", help="weights: fp32 | bf16 | fp16"),
    kv_dtype: str = typer.Option(None, help="fp32 | bf16 | fp16 | int8 (default: the weights' dtype)"),
    sample_seed: int = typer.Option(0, help="seed of the sampling random numbers"),
    compile: bool = typer.Option(False, "--compile", help="CUDA graphs via torch.compile (cuda only)"),
    step_graphs: bool = typer.Option(False, "--step-graphs", help="replay each speculative step's draft and "
                                     "verify phases as CUDA graphs, as `validate` runs the engine (cuda only)"),
    kernels: str = typer.Option("torch", help="torch | triton: one-token passes through the Triton GEMV "
                                "and decode attention, tuned on this GPU first (cuda only)"),
    trace: Path = typer.Option(None, help="write the speculative run's trace (JSONL) here"),
    baseline: bool = typer.Option(True, help="also time plain decoding in this run, for the speed-up"),
) -> None:
    """Generate with speculative decoding; print text, tau, acceptance, tokens/s and the speed-up."""
    import torch

    from dspark_sim.config.traces import write_trace
    from dspark_sim.engine.caches import cache_tokens, ensure_caches
    from dspark_sim.engine.generate import speculative_generate
    from dspark_sim.engine.model import WEIGHT_DTYPES
    from dspark_sim.engine.sps import engine_policy
    from dspark_sim.engine.train import load_pair

    src = "engine generate"
    spec = parse_policy(policy, source=src, field="--policy")
    gamma = draft_length(spec)
    _check_run_options(src, max_new_tokens, batch_size, kv_dtype, dtype)
    sampling = _sampling(src, temperature, top_k, top_p)
    _check_device(device)
    folder = _trained_pair(preset, seed, cache_dir, checkpoint)
    pair = load_pair(folder, device=device, dtype=WEIGHT_DTYPES[dtype])
    target, draft = pair.target, pair.draft
    prompts = _prompts(src, prompt, batch_size)
    limit = min(target.args.max_seq_len, draft.args.max_seq_len)
    if cache_tokens(max(map(len, prompts)), max_new_tokens, gamma) > limit:
        raise InputError(src, "--max-new-tokens", f"prompt + new tokens exceed the models' {limit}-token context")
    pol = engine_policy(spec, target, batch_size)
    fwd_t, fwd_d, graphs = _forwards(src, target, draft, device, compile, step_graphs, kernels)

    def gen() -> torch.Generator:
        return torch.Generator(device=device).manual_seed(sample_seed)

    # warm-up (allocation, graph capture) outside the timed runs
    speculative_generate(target, draft, prompts, min(8, max_new_tokens), pol, sampling, generator=gen(),
                         kv_dtype=kv_dtype, target_forward=fwd_t, draft_forward=fwd_d, step_graphs=graphs)
    if graphs is not None:  # the timed run's caches, then every phase shape it can meet
        width = max(map(len, prompts))
        for model in (target, draft):
            ensure_caches(model, batch_size, cache_tokens(width, max_new_tokens, gamma), kv_dtype)
        graphs.precapture(batch_size, width, max_new_tokens, gamma, sampling)
    pol = engine_policy(spec, target, batch_size)  # fresh state (and SPS(B) profiled warm) for the timed run
    res = speculative_generate(target, draft, prompts, max_new_tokens, pol, sampling, generator=gen(),
                               kv_dtype=kv_dtype, target_forward=fwd_t, draft_forward=fwd_d, step_graphs=graphs)
    base = _baseline(target, prompts, max_new_tokens, sampling, gen, forward=fwd_t, kv_dtype=kv_dtype) \
        if baseline else None
    label = policy_shorthand(spec)
    _report(f"{folder.name}: policy {label}, gamma {gamma}, batch {batch_size}, T={temperature}, {device}",
            prompts, res, base, sampling.greedy, ("target passes", str(res.target_passes)))
    if trace is not None:
        info = {"pair": str(folder), "policy": label, "gamma": gamma, "temperature": temperature,
                "top_k": top_k, "top_p": top_p, "batch_size": batch_size, "device": device}
        write_trace(trace, res.trace_records(info))
        _console().print(f"trace: {trace}")


# ------------------------------------------------------------------------------------------------
# `engine drafters ...`: drafters on the target's hidden states (MTP head, parallel block, DSpark)
# ------------------------------------------------------------------------------------------------

drafters_app = typer.Typer(help="Drafters on the target's hidden states: MTP head, parallel block, DSpark.",
                           no_args_is_help=True)
engine_app.add_typer(drafters_app, name="drafters")
drafters_app.command("table")(drafters_table)


@drafters_app.command("train")
def drafters_train(
    preset: str = typer.Option("tiny", help="the pair whose target the drafters serve (test | tiny | gpu)"),
    kind: list[str] = typer.Option(None, help="mtp | parallel_block | dspark (repeat; default all three)"),
    seed: int = typer.Option(0, help="the pair's seed; also seeds the drafters"),
    cache_dir: Path = typer.Option(None, help="root of the cache (default ~/.cache/dspark-sim/engine)"),
    device: str = typer.Option("cpu", help="cpu | cuda"),
    force: bool = typer.Option(False, help="retrain even when <pair>/drafters/ already holds them"),
) -> None:
    """Train drafters against the pair's target (the pair is trained first if missing), calibrate
    DSpark's confidence head, save them beside the pair; report acceptance and calibration."""
    from dspark_sim.engine.drafters import KINDS
    from dspark_sim.engine.train_drafters import get_drafter_preset, train_drafters

    get_drafter_preset(preset)
    _check_device(device)
    con = _console()
    out = train_drafters(preset, seed, cache_dir, list(kind or KINDS), device=device, force=force, log=con.print)
    table = Table(title=f"drafters of {preset}-seed{seed}")
    for col in ("kind", "params", "train s", "alpha T=1 by position (teacher-forced)", "greedy match by position",
                "ECE T=1 before -> after"):
        table.add_column(col)
    for k, t in out.items():
        m = t.metrics
        cal = m.get("calibration", {}).get("sampled", {})
        ece_txt = (f"{cal['ece_before_all']:.3f} -> {cal['ece_after_all']:.3f}" if "ece_before_all" in cal
                   else f"q(token): {cal.get('token_conf_ece_before_all', float('nan')):.3f}")
        table.add_row(k, f"{m.get('params', 0):,}", f"{m.get('train_time_s', 0):.1f}",
                      _fmt(m.get("alpha_t1_by_position", [])), _fmt(m.get("greedy_match_by_position", [])), ece_txt)
    con.print(table)


@drafters_app.command("generate")
def drafters_generate(
    preset: str = typer.Option("tiny", help="which trained pair (test | tiny | gpu)"),
    kind: str = typer.Option("dspark", help="draft_model | mtp | parallel_block | dspark"),
    seed: int = typer.Option(0, help="the pair's training seed"),
    cache_dir: Path = typer.Option(None, help="root of the cache (default ~/.cache/dspark-sim/engine)"),
    prompt: list[str] = typer.Option(None, help="prompt text (repeat for several; cycled over the batch)"),
    max_new_tokens: int = typer.Option(128, help="tokens to generate per sequence"),
    policy: str = typer.Option("dspark:5", help="dspark:G (prefix scheduler on the drafter loop's measured SPS "
                               "table) | fixed:G | confidence_threshold:G[@T] | goodput:G | none"),
    temperature: float = typer.Option(0.0, help="0 = greedy"),
    top_k: int = typer.Option(None, help="keep the k most likely tokens"),
    top_p: float = typer.Option(None, help="nucleus sampling mass"),
    batch_size: int = typer.Option(1, help="sequences decoded together"),
    sample_seed: int = typer.Option(0, help="seed of the sampling random numbers"),
    baseline: bool = typer.Option(True, help="also time plain decoding, for the speed-up"),
) -> None:
    """Speculative decoding with one drafter; print text, tau, acceptance, tokens/s and the speed-up."""
    import torch

    from dspark_sim.engine.caches import cache_tokens
    from dspark_sim.engine.drafter_checkpoints import drafter_dir
    from dspark_sim.engine.drafter_generate import drafter_generate
    from dspark_sim.engine.drafters import KINDS
    from dspark_sim.engine.sps import drafter_policy
    from dspark_sim.engine.train import get_preset, load_pair
    from dspark_sim.engine.train_drafters import load_drafters

    src = "engine drafters generate"
    get_preset(preset)
    if kind not in ("draft_model", *KINDS):
        raise InputError(src, "--kind", f"unknown {kind!r} (allowed: draft_model, {', '.join(KINDS)})")
    spec = parse_policy(policy, source=src, field="--policy")
    gamma = draft_length(spec)
    if max_new_tokens < 1 or batch_size < 1:
        raise InputError(src, "--max-new-tokens/--batch-size", "must be >= 1")
    sampling = _sampling(src, temperature, top_k, top_p)
    folder = _trained_pair(preset, seed, cache_dir)
    pair = load_pair(folder)
    target = pair.target
    drafter: Any = pair.draft
    if kind != "draft_model":
        if not (drafter_dir(folder) / f"{kind}.json").is_file():
            raise InputError(str(drafter_dir(folder)), kind, "no such drafter (run `dspark-sim engine drafters train`)")
        drafter = load_drafters(folder, [kind])[kind].drafter
        if drafter.max_gamma is not None and gamma > drafter.max_gamma:
            raise InputError(src, "--policy", f"the {kind} drafter drafts blocks of at most {drafter.max_gamma}")
    prompts = _prompts(src, prompt, batch_size)
    if cache_tokens(max(map(len, prompts)), max_new_tokens, gamma) > target.args.max_seq_len:
        raise InputError(src, "--max-new-tokens", f"prompt + new tokens exceed the target's {target.args.max_seq_len}")
    context = max(map(len, prompts)) + max_new_tokens // 2  # where the measured SPS table's steps attend

    def gen() -> torch.Generator:
        return torch.Generator().manual_seed(sample_seed)

    pol = drafter_policy(spec, target, drafter, batch_size, context)
    drafter_generate(target, drafter, prompts, min(8, max_new_tokens), pol, sampling, generator=gen())  # warm-up
    pol = drafter_policy(spec, target, drafter, batch_size, context)  # fresh state (and SPS table) for the timed run
    res = drafter_generate(target, drafter, prompts, max_new_tokens, pol, sampling, generator=gen())
    base = _baseline(target, prompts, max_new_tokens, sampling, gen) if baseline else None
    verified = [float(s.verified[s.active].mean()) for s in res.steps if s.active.any()]
    _report(f"{folder.name}: drafter {kind}, policy {policy_shorthand(spec)}, gamma {gamma}, batch {batch_size}, "
            f"T={temperature}", prompts, res, base, sampling.greedy,
            ("verified drafts per sequence-step", f"{sum(verified) / max(len(verified), 1):.2f}"))
