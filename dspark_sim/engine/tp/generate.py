"""One TP run (baseline + speculative decoding), optionally checked against the single-process engine."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from dspark_sim.config.schema import FixedGamma, NoSpeculation, PolicySpec
from dspark_sim.engine.caches import prompt_tensor
from dspark_sim.engine.generate import generate_baseline, speculative_generate
from dspark_sim.engine.model import WEIGHT_DTYPES, Transformer
from dspark_sim.engine.sampling import Sampling
from dspark_sim.engine.tp.group import TPGroup, broadcast_object, ranks_agree
from dspark_sim.engine.tp.layers import weight_bytes
from dspark_sim.engine.tp.loading import ModelSource
from dspark_sim.engine.tp.policy import LeaderPolicy, engine_policy
from dspark_sim.engine.tp.shard import check_tp


@dataclass(frozen=True)
class GenerateJob:
    target: ModelSource
    draft: ModelSource | None
    prompts: list[list[int]]
    max_new_tokens: int = 16
    # the speculation policy (a DSpark or goodput policy without a table profiles SPS(B) on the target)
    policy: PolicySpec = field(default_factory=lambda: FixedGamma(gamma=3))
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    dtype: str = "fp32"
    sample_seed: int = 0
    check: bool = False  # rank 0 also runs the single-process engine and compares
    logits_probe: bool = False  # also return the target's logits for the prompts (cached prefill + 1 step)
    baseline: bool = True


def _probe_logits(model: Transformer, prompts: list[list[int]]) -> Tensor:
    """Logits of a cached prefill of the (ragged, right-padded) prompts, then of one decode step."""
    width = max(map(len, prompts))
    model.setup_caches(len(prompts), width + 4)
    buf, lens = prompt_tensor(prompts, width, model.device)
    pre = model(buf, torch.zeros_like(lens))
    nxt = pre.gather(1, (lens - 1).view(-1, 1, 1).expand(-1, 1, pre.shape[-1])).argmax(-1)
    step = model(nxt, lens)
    return torch.cat([pre, step], dim=1).detach().cpu()


def run_job(target: Transformer, draft: Transformer | None, job: GenerateJob, tp: TPGroup | None) -> dict[str, Any]:
    """The job's runs on these models: sharded ones with their group `tp`, or full ones (tp None)."""
    sampling = Sampling(job.temperature, job.top_k, job.top_p)
    policy = engine_policy(job.policy, target, len(job.prompts)) if job.draft is not None else NoSpeculation()
    dev = target.device

    def gen() -> torch.Generator:
        return torch.Generator(device=dev).manual_seed(job.sample_seed)

    out: dict[str, Any] = {}
    if job.logits_probe:
        out["logits"] = _probe_logits(target, job.prompts)
    if job.baseline:
        base = generate_baseline(target, job.prompts, job.max_new_tokens, sampling, generator=gen())
        out["baseline"] = {"tokens": base.tokens, "tok_s": base.tokens_per_s,
                           "decode_tok_s": base.decode_tokens_per_s}
    pol = LeaderPolicy(policy, tp) if tp is not None else policy
    spec = speculative_generate(target, draft, job.prompts, job.max_new_tokens, pol, sampling, generator=gen())
    out["speculative"] = {"tokens": spec.tokens, "tok_s": spec.tokens_per_s, "decode_tok_s": spec.decode_tokens_per_s,
                          "tau": spec.tau, "acceptance_by_position": spec.acceptance_by_position(),
                          "target_passes": spec.target_passes}
    return out


def generate_job(tp: TPGroup, job: GenerateJob) -> dict[str, Any] | None:
    """Run `job` on this rank's shards (a worker function for run_workers or torchrun); rank 0 returns
    {"tp": ..., "baseline": ..., "speculative": ..., "ranks_agree": ..., ["logits"], ["reference"]}."""
    dtype = WEIGHT_DTYPES[job.dtype]
    job = replace(job, prompts=broadcast_object(job.prompts, tp))  # rank 0's prompts, whatever the launcher
    check_tp(job.target.args, tp.world, "target")
    if job.draft is not None:
        check_tp(job.draft.args, tp.world, "draft")
    t0 = time.perf_counter()
    target = job.target.build(tp, dtype)
    draft = job.draft.build(tp, dtype) if job.draft is not None else None
    load_s = time.perf_counter() - t0
    res = run_job(target, draft, job, tp)
    tokens = (res.get("baseline", {}).get("tokens"), res["speculative"]["tokens"])
    agree = ranks_agree(tokens, tp)
    res.update(tp=tp.world, backend=tp.backend, device=str(tp.device), ranks_agree=agree, load_s=load_s,
               weight_bytes_per_rank=weight_bytes(target) + (weight_bytes(draft) if draft is not None else 0))
    if job.check and tp.leader:
        del target, draft
        ref_t = job.target.build_full(tp.device, dtype)
        ref_d = job.draft.build_full(tp.device, dtype) if job.draft is not None else None
        ref = run_job(ref_t, ref_d, job, None)
        res["reference"] = ref
        res["check"] = compare(res, ref)
    if tp.world > 1:
        dist.barrier(group=tp.cpu_group)
    return res if tp.leader else None


def generate_jobs(tp: TPGroup, jobs: list[GenerateJob]) -> list[dict[str, Any] | None]:
    """Several jobs in one group (one process start)."""
    return [generate_job(tp, job) for job in jobs]


def _first_divergence(a: list[list[int]], b: list[list[int]]) -> int | None:
    for x, y in zip(a, b, strict=True):
        for i, (u, v) in enumerate(zip(x, y, strict=True)):
            if u != v:
                return i
    return None


def compare(res: dict[str, Any], ref: dict[str, Any]) -> dict[str, Any]:
    """A TP run against the single-process reference: identical tokens, first divergence, logits gap."""
    out: dict[str, Any] = {}
    for kind in ("baseline", "speculative"):
        if kind in res and kind in ref:
            out[f"{kind}_identical"] = res[kind]["tokens"] == ref[kind]["tokens"]
            out[f"{kind}_first_divergence"] = _first_divergence(res[kind]["tokens"], ref[kind]["tokens"])
    if "logits" in res and "logits" in ref:
        a, b = res["logits"].double(), ref["logits"].double()
        out["logits_max_abs_diff"] = float((a - b).abs().max())
        out["logits_max_abs"] = float(b.abs().max())
    return out
