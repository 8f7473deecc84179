"""`python -m dspark_sim.cli.tp`: tensor-parallel engine runs (dspark_sim.engine.tp).

    torchrun --nproc-per-node 2 -m dspark_sim.cli.tp generate --device cuda --json
    python -m dspark_sim.cli.tp generate --tp 2            # starts its own 2 processes
    python -m dspark_sim.cli.tp allreduce --tp 2 -o allreduce.json [--hardware hw.yaml --hardware-out hw-tp.yaml]

Under torchrun every process is one rank and only rank 0 prints; started plainly, it starts --tp local
processes itself. `dspark-sim profile --allreduce-ranks N` runs the allreduce command. Bad input is one
line on stderr and exit 2, seen before any process group exists.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from dspark_sim.config.errors import InputError
from dspark_sim.config.io import write_atomic
from dspark_sim.config.loader import load_hardware_profile
from dspark_sim.config.schema import NoSpeculation
from dspark_sim.config.shorthand import draft_length, parse_policy
from dspark_sim.config.tensor_parallel import AllReduceProfile
from dspark_sim.engine.checkpoints import read_checkpoint_meta
from dspark_sim.engine.data import encode
from dspark_sim.engine.model import WEIGHT_DTYPES, ModelArgs
from dspark_sim.engine.tp.generate import GenerateJob, generate_job
from dspark_sim.engine.tp.group import check_world, env_int, under_torchrun
from dspark_sim.engine.tp.loading import ModelSource
from dspark_sim.engine.tp.shard import check_tp
from dspark_sim.engine.tp.workers import launch
from dspark_sim.fit.interconnect import apply_interconnect_fit, fit_interconnect, interconnect_yaml
from dspark_sim.measure.allreduce import AllReduceJob, allreduce_job
from dspark_sim.validate.tp import fit_doc

PROG = "python -m dspark_sim.cli.tp"


def _csv_ints(text: str, option: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise InputError("tp", option, f"expected comma-separated whole numbers, got {text!r}") from None
    if not vals or min(vals) < 1:
        raise InputError("tp", option, f"expected positive whole numbers, got {text!r}")
    return vals


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Tensor-parallel engine runs. Under torchrun every process is one rank "
                    "(torchrun --nproc-per-node N -m dspark_sim.cli.tp ...); started plainly, it starts "
                    "--tp local processes itself.")
    sub = p.add_subparsers(dest="cmd", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--tp", type=int, default=None, help="TP degree (default: WORLD_SIZE under torchrun, else 2)")
    common.add_argument("--device", default="cpu", help="cpu (gloo) | cuda (NCCL, one GPU per rank)")
    common.add_argument("--dtype", default="fp32", help="fp32 | bf16 | fp16 | fp64")
    common.add_argument("--shape", default="test-target", help="target shape (model preset) with random weights")
    common.add_argument("--json", action="store_true", help="print the JSON document")
    common.add_argument("--out", "-o", type=Path, default=None, help="also write the JSON document here")

    g = sub.add_parser("generate", parents=[common], help="baseline + speculative decoding under TP")
    g.add_argument("--draft-shape", default="test-draft", help="draft shape (random weights); 'none' = no draft")
    g.add_argument("--pair", type=Path, default=None, help="a trained pair folder (target.* + draft.*) instead")
    g.add_argument("--seed", type=int, default=0, help="weights seed (random shapes)")
    g.add_argument("--prompt", action="append", default=None, help="prompt text (byte-level vocabularies)")
    g.add_argument("--prompt-len", type=int, default=12, help="random-token prompt length (without --prompt)")
    g.add_argument("--batch-size", type=int, default=2)
    g.add_argument("--max-new-tokens", type=int, default=24)
    g.add_argument("--policy", default="fixed:3",
                   help="KIND[:GAMMA][@THRESHOLD]: none | fixed:G | confidence_threshold:G[@T] | dspark:G | "
                        "goodput:G (dspark and goodput profile SPS(B) on the sharded target; rank 0 decides)")
    g.add_argument("--temperature", type=float, default=0.0)
    g.add_argument("--sample-seed", type=int, default=0)
    g.add_argument("--check", action="store_true",
                   help="rank 0 also runs the single-process engine on the full weights and compares")

    a = sub.add_parser("allreduce", parents=[common],
                       help="all-reduce microbenchmark (engine message sizes) + interconnect fit")
    a.add_argument("--hidden", type=int, default=None, help="hidden size (default: the --shape's)")
    a.add_argument("--tokens", default="1,2,4,8,16,32,64,128,256,512",
                   help="tokens per all-reduce: message = tokens x hidden x dtype bytes")
    a.add_argument("--repeats", type=int, default=10)
    a.add_argument("--between-matmuls", action="store_true",
                   help="time each all-reduce after the row-parallel matmul it reduces, as the model runs it "
                        "(the --shape's down projection shard), instead of back to back")
    a.add_argument("--hardware", default=None,
                   help="hardware profile (name or YAML) to write the fitted interconnect into")
    a.add_argument("--hardware-out", type=Path, default=None, help="calibrated hardware YAML to write")
    return p


def _model_args(shape: str, option: str, **over: Any) -> ModelArgs:
    try:
        return ModelArgs.from_preset(shape, **over)
    except KeyError as exc:
        raise InputError("tp", option, str(exc.args[0])) from None


def _check_dtype(dtype: str) -> None:
    if dtype not in WEIGHT_DTYPES:
        raise InputError("tp", "--dtype", f"unknown {dtype!r} (allowed: {', '.join(WEIGHT_DTYPES)})")


def _sources(opts: argparse.Namespace, tp: int) -> tuple[ModelSource, ModelSource | None]:
    """The target and draft the options name, checked against the TP degree."""
    if opts.pair is not None:
        t_meta = read_checkpoint_meta(opts.pair, "target")
        d_meta = read_checkpoint_meta(opts.pair, "draft")
        target = ModelSource(ModelArgs.from_dict(t_meta["model_args"]), folder=str(opts.pair), name="target")
        draft: ModelSource | None = ModelSource(ModelArgs.from_dict(d_meta["model_args"]), folder=str(opts.pair),
                                                name="draft")
    else:
        targs = _model_args(opts.shape, "--shape")
        target = ModelSource(targs, seed=opts.seed, name=opts.shape)
        draft = None
        if opts.draft_shape != "none":
            dargs = _model_args(opts.draft_shape, "--draft-shape", vocab_size=targs.vocab_size)
            draft = ModelSource(dargs, seed=opts.seed + 1, name=opts.draft_shape)
    check_tp(target.args, tp, "target" if opts.pair else opts.shape)
    if draft is not None:
        check_tp(draft.args, tp, "draft" if opts.pair else opts.draft_shape)
    return target, draft


def _prompts(opts: argparse.Namespace, vocab: int) -> list[list[int]]:
    if opts.prompt:
        if vocab < 256:
            raise InputError("tp", "--prompt", f"text prompts need a byte-level vocabulary (this one has {vocab})")
        texts = list(opts.prompt)
        prompts = [encode(texts[i % len(texts)]) for i in range(opts.batch_size)]
        if any(not p for p in prompts):
            raise InputError("tp", "--prompt", "prompts must not be empty")
        return prompts
    g = torch.Generator().manual_seed(opts.seed)
    lens = torch.randint(max(1, opts.prompt_len // 2), opts.prompt_len + 1, (opts.batch_size,), generator=g)
    return [torch.randint(0, vocab, (int(n),), generator=g).tolist() for n in lens]


def _generate_job(opts: argparse.Namespace, tp: int) -> GenerateJob:
    """Validate everything before any process group exists (so bad input is one line, no hang)."""
    _check_dtype(opts.dtype)
    for name in ("batch_size", "max_new_tokens", "prompt_len"):
        if getattr(opts, name) < 1:
            raise InputError("tp", "--" + name.replace("_", "-"), f"must be >= 1 (got {getattr(opts, name)})")
    policy = parse_policy(opts.policy, source="tp", field="--policy")
    target, draft = _sources(opts, tp)
    prompts = _prompts(opts, target.args.vocab_size)
    gamma = draft_length(policy) if draft is not None else 0
    need = max(map(len, prompts)) + opts.max_new_tokens + 3 * gamma + 4
    limit = min(target.args.max_seq_len, draft.args.max_seq_len if draft else target.args.max_seq_len)
    if need > limit:
        raise InputError("tp", "--max-new-tokens", f"prompt + new tokens exceed the models' {limit}-token context")
    return GenerateJob(target, draft, prompts, opts.max_new_tokens, policy=policy if draft else NoSpeculation(),
                       temperature=opts.temperature, dtype=opts.dtype, sample_seed=opts.sample_seed,
                       check=opts.check, logits_probe=opts.check)


def _degree(opts: argparse.Namespace) -> int:
    if opts.device not in ("cpu", "cuda"):
        raise InputError("tp", "--device", f"got {opts.device!r}, allowed: cpu, cuda")
    if opts.device == "cuda" and not torch.cuda.is_available():
        raise InputError("tp", "--device", "cuda requested but torch sees no CUDA device")
    if under_torchrun():
        return check_world(opts.tp, int(os.environ["WORLD_SIZE"]))
    tp = 2 if opts.tp is None else opts.tp
    if tp < 1:
        raise InputError("tp", "--tp", f"must be >= 1 (got {tp})")
    if opts.device == "cuda" and torch.cuda.device_count() < tp:
        raise InputError("tp", "--tp", f"tp {tp} needs {tp} GPUs, this machine has {torch.cuda.device_count()}")
    return tp


def _jsonable(o: Any) -> Any:
    if isinstance(o, Tensor):
        return None  # logits stay out of the document
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(type(o).__name__)


def _emit(text: str, opts: argparse.Namespace, summary: list[str]) -> None:
    if opts.out is not None:
        write_atomic(opts.out, text + "\n")
    print(text if opts.json else "\n".join(summary))


def _generate(opts: argparse.Namespace, tp: int) -> int:
    job = _generate_job(opts, tp)
    res, lead = launch(generate_job, job, tp, opts.device)
    if not lead:
        return 0
    res.pop("logits", None)
    if "reference" in res:
        res["reference"].pop("logits", None)
    spec = res["speculative"]
    lines = [f"tp {res['tp']} ({res['backend']}, {res['device']}): ranks agree {res['ranks_agree']}",
             f"speculative: {spec['decode_tok_s']:.1f} decode tok/s, tau {spec['tau']:.2f}"]
    if "baseline" in res:
        lines.append(f"baseline:    {res['baseline']['decode_tok_s']:.1f} decode tok/s")
    if "check" in res:
        lines.append(f"single-process check: {res['check']}")
    _emit(json.dumps(res, indent=2, default=_jsonable), opts, lines)
    return 0


def _allreduce(opts: argparse.Namespace, tp: int) -> int:
    _check_dtype(opts.dtype)
    shape_args = _model_args(opts.shape, "--shape")
    hidden = opts.hidden or shape_args.dim
    tokens = _csv_ints(opts.tokens, "--tokens")
    base = load_hardware_profile(opts.hardware) if opts.hardware is not None else None
    if tp < 2:
        raise InputError("tp", "--tp", "an all-reduce profile needs at least 2 ranks")
    matmul_in = shape_args.ffn_hidden // tp if opts.between_matmuls else None
    doc, lead = launch(allreduce_job, AllReduceJob(tokens, hidden, opts.dtype, opts.repeats, matmul_in), tp,
                       opts.device)
    if not lead:
        return 0
    assert isinstance(doc, AllReduceProfile)  # rank 0's result
    fit = fit_interconnect(doc.samples, base)
    doc = doc.model_copy(update={"fit": fit_doc(fit)})
    context = "between matmuls" if matmul_in else "back to back"
    lines = [f"all-reduce over {doc.world_size} ranks ({doc.backend}, {doc.mode}, {context}):"]
    for s in doc.samples:
        lines.append(f"  {s.message_bytes:>10d} B  {s.median_s * 1e6:10.1f} us")
    lines.append(f"fit: latency {fit.latency_us:.2f} us per hop, bandwidth {fit.bandwidth_gbps:.3f} GB/s "
                 f"(median |error| {fit.median_abs_error_pct:.1f}%)")
    if base is not None and opts.hardware_out is not None:
        hw = apply_interconnect_fit(base, fit)
        write_atomic(opts.hardware_out, interconnect_yaml(hw, fit, opts.hardware))
        lines.append(f"-> {opts.hardware_out}")
    _emit(doc.to_json(), opts, lines)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        opts = _parser().parse_args(argv)
        tp = _degree(opts)
        return _generate(opts, tp) if opts.cmd == "generate" else _allreduce(opts, tp)
    except InputError as exc:
        if env_int("RANK") in (None, 0):
            print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    code = main()
    if under_torchrun():
        # Every rank's work is done and rank 0's document written: leave without the interpreter's
        # native teardown, which has aborted a gloo rank at exit (SIGABRT) on some machines and made
        # torchrun kill the other ranks. Errors before this point still raise with their traceback.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
