"""Baseline decoding and speculative decoding (Leviathan et al. / Chen et al.) for batches.

Design: everything a step needs stays on the device (token buffer, per-sequence positions, the
accept/reject maths), and one small tensor crosses to the host per step: the positions after the
previous step plus this step's draft confidences. The host then asks the speculation policy
(`dspark_sim.core.policies`) how many of the drafted tokens each sequence verifies, and sends the answer
back without waiting. The draft always proposes `policy.gamma_max` tokens; the policy truncates, which
keeps decoding lossless because it only sees draft-side information.

Caches are static and indexed by each sequence's own positions, so a rejected draft token's K/V is
never removed: it is masked out (it lies past the sequence's position) and overwritten later.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from dspark_sim.config.traces import RequestRecord, StepRecord, TraceMeta
from dspark_sim.core.policies import StepView, make_policy
from dspark_sim.core.static_cache import cache_tokens
from dspark_sim.engine.model import KV_DTYPES, Transformer

Forward = Callable[..., Tensor]


# ------------------------------------------------------------------------------------------------
# Sampling
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sampling:
    """temperature 0 = greedy. top_k / top_p filter after temperature, identically for draft and target."""

    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError("top_k must be >= 1")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise ValueError("top_p must be in (0, 1]")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def logits_to_probs(logits: Tensor, sampling: Sampling) -> Tensor:
    """The distribution actually sampled from. Greedy gives a one-hot on the argmax, so the same
    rejection-sampling code is exact for greedy too (accept iff the draft token is the argmax)."""
    if logits.dtype in (torch.bfloat16, torch.float16):
        logits = logits.float()
    if sampling.greedy:
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).to(logits.dtype)
    logits = logits / sampling.temperature
    if sampling.top_k is not None and sampling.top_k < logits.shape[-1]:
        kth = torch.topk(logits, sampling.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if sampling.top_p is not None and sampling.top_p < 1.0:
        sorted_p, idx = torch.sort(probs, dim=-1, descending=True, stable=True)
        before = sorted_p.cumsum(-1) - sorted_p  # mass of the strictly more likely tokens
        sorted_p = sorted_p.masked_fill(before >= sampling.top_p, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, idx, sorted_p)
        probs = probs / probs.sum(-1, keepdim=True)
    return probs


def sample(weights: Tensor, greedy: bool, generator: torch.Generator | None = None,
           noise: Tensor | None = None) -> Tensor:
    """One draw per row from (unnormalised) non-negative weights, without a host sync.

    argmax(w / E) with E ~ Exp(1) picks index i with probability w_i / sum(w) (the exponential race).
    `noise`: the E's, drawn beforehand (shaped like `weights`); else drawn here from `generator`.
    """
    if greedy:
        return weights.argmax(-1)
    e = torch.empty_like(weights).exponential_(1.0, generator=generator) if noise is None else noise
    return (weights / e.clamp_min(torch.finfo(e.dtype).tiny)).argmax(-1)


def next_token(logits: Tensor, sampling: Sampling, generator: torch.Generator | None = None,
               noise: Tensor | None = None) -> Tensor:
    """Sample one token per row from logits [..., V] (argmax straight away when greedy: fewer kernels)."""
    if sampling.greedy:
        return logits.argmax(-1)
    return sample(logits_to_probs(logits, sampling), False, generator, noise)


def verify_drafts(p: Tensor, q: Tensor | None, drafts: Tensor, verify: Tensor, greedy: bool,
                  generator: torch.Generator | None = None, uniforms: Tensor | None = None,
                  noise: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Rejection sampling over a batch with ragged verify lengths, all on the device.

    p: target distributions [B, G+1, V] at the pending token and each draft token; q: draft
    distributions [B, G, V]; drafts [B, G]; verify [B] (<= G): how many leading drafts each sequence
    verifies. Draft k is accepted with probability min(1, p(x)/q(x)) while all before it were; at the
    first rejection the next token comes from norm(max(0, p - q)), and when every verified draft passed
    it is the bonus token drawn from p. Returns (accepted [B], next_token [B]).
    `uniforms` [B, G] (the accept tests) and `noise` [B, V] (the next token's Exp(1) draws) may come
    drawn beforehand (`verify_noise`); else they are drawn here from `generator`.
    """
    bsz, t, _ = p.shape
    g = t - 1
    rows = torch.arange(bsz, device=p.device)
    if g == 0 or q is None:
        return torch.zeros(bsz, dtype=torch.long, device=p.device), sample(p[:, 0], greedy, generator, noise)
    drafts, q = drafts[:, :g], q[:, :g]
    p_d = p[:, :g].gather(-1, drafts[..., None]).squeeze(-1)
    q_d = q.gather(-1, drafts[..., None]).squeeze(-1)
    u = torch.rand(p_d.shape, device=p.device, generator=generator) if uniforms is None else uniforms[:, :g]
    ok = (u * q_d < p_d) & (torch.arange(g, device=p.device)[None, :] < verify[:, None])
    accepted = ok.long().cumprod(-1).sum(-1)
    p_a = p[rows, accepted]
    q_a = torch.cat([q, torch.zeros_like(q[:, :1])], dim=1)[rows, accepted]
    residual = (p_a - q_a).clamp_min(0.0)
    use_residual = (accepted < verify)[:, None] & (residual.sum(-1, keepdim=True) > 0)
    return accepted, sample(torch.where(use_residual, residual, p_a), greedy, generator, noise)


def verify_greedy(logits: Tensor, drafts: Tensor, verify: Tensor) -> tuple[Tensor, Tensor]:
    """verify_drafts for greedy decoding, without building one-hot distributions (same result:
    a draft passes iff it is the target's argmax; the next token is the argmax after the last pass)."""
    best = logits.argmax(-1)  # [B, G+1]
    g = best.shape[1] - 1
    ok = (drafts[:, :g] == best[:, :g]) & (torch.arange(g, device=best.device)[None, :] < verify[:, None])
    accepted = ok.long().cumprod(-1).sum(-1)
    return accepted, best.gather(1, accepted[:, None])[:, 0]


# ------------------------------------------------------------------------------------------------
# Results
# ------------------------------------------------------------------------------------------------


@dataclass
class StepStats:
    """Host-side record of one speculative step (arrays are per sequence, batch order)."""

    step: int
    context_lens: np.ndarray
    active: np.ndarray
    drafted: np.ndarray
    verified: np.ndarray
    accepted: np.ndarray
    confidences: np.ndarray | None  # [B, gamma_max], NaN where not drafted
    draft_time_s: float = 0.0
    verify_time_s: float = 0.0


@dataclass
class GenerationResult:
    tokens: list[list[int]]  # generated tokens per sequence (exactly max_new_tokens each)
    prompt_lens: list[int]
    prefill_time_s: float
    decode_time_s: float
    target_passes: int  # forward passes of the target after prefill
    steps: list[StepStats] = field(default_factory=list)
    step_wall_s: list[float] = field(default_factory=list)  # speculative steps: start to next start

    def full_batch_tokens_per_s(self) -> float:
        """Decode tokens per second over the steps in which every sequence was still generating: the
        steady state of a server that refills its batch. A static batch's drain tail (a few slow
        sequences stepping the whole batch) is left out; plain decoding has none (all finish together)."""
        if not self.steps or len(self.step_wall_s) != len(self.steps):
            return self.decode_tokens_per_s
        gained = wall = 0.0
        for s, w in zip(self.steps, self.step_wall_s, strict=True):
            if s.active.all():
                gained += float((s.accepted + 1).sum())
                wall += w
        return gained / wall if wall > 0 else self.decode_tokens_per_s

    @property
    def new_tokens(self) -> int:
        return sum(len(t) for t in self.tokens)

    @property
    def total_time_s(self) -> float:
        return self.prefill_time_s + self.decode_time_s

    @property
    def tokens_per_s(self) -> float:
        """Generated tokens per second of wall time, prefill included."""
        return self.new_tokens / max(self.total_time_s, 1e-12)

    @property
    def decode_tokens_per_s(self) -> float:
        """Tokens after the first (which prefill produces) per second of decode time."""
        return (self.new_tokens - len(self.tokens)) / max(self.decode_time_s, 1e-12)

    @property
    def tau(self) -> float:
        """Mean tokens each sequence gained per target pass, bonus/correction token included."""
        if not self.steps:
            return 1.0
        gained = sum(int((s.accepted + 1)[s.active].sum()) for s in self.steps)
        return gained / max(sum(int(s.active.sum()) for s in self.steps), 1)

    def acceptance_by_position(self) -> list[float]:
        """P(draft k accepted | it was verified and drafts < k were accepted), k = 1, 2, ..."""
        if not self.steps:
            return []
        g = max(int(s.verified.max(initial=0)) for s in self.steps)
        out = []
        for k in range(1, g + 1):
            reached = sum(int(((s.verified >= k) & (s.accepted >= k - 1) & s.active).sum()) for s in self.steps)
            passed = sum(int(((s.accepted >= k) & s.active).sum()) for s in self.steps)
            out.append(passed / reached if reached else float("nan"))
        return out

    def trace_records(self, info: dict | None = None) -> list[TraceMeta | StepRecord | RequestRecord]:
        """Meta + one StepRecord per step + one RequestRecord per sequence (`dspark_sim.config.traces`)."""
        meta = {"tau": self.tau, "tokens_per_s": self.tokens_per_s,
                "acceptance_by_position": self.acceptance_by_position(), **(info or {})}
        records: list[TraceMeta | StepRecord | RequestRecord] = [TraceMeta(info=meta)]
        reqs = [RequestRecord(request_id=i, prompt_len=n, output_len=len(t))
                for i, (n, t) in enumerate(zip(self.prompt_lens, self.tokens, strict=True))]
        for s in self.steps:
            idx = np.nonzero(s.active)[0]
            confs = [_confs(s, i) for i in idx]
            records.append(StepRecord(
                step=s.step, batch_size=len(idx), draft_time_s=s.draft_time_s, verify_time_s=s.verify_time_s,
                seq_id=idx.tolist(), context_len=s.context_lens[idx].tolist(), drafted=s.drafted[idx].tolist(),
                verified=s.verified[idx].tolist(), accepted=s.accepted[idx].tolist(), confidences=confs,
            ))
            for i, c in zip(idx, confs, strict=True):
                r = reqs[i]
                r.step_start.append(int(s.context_lens[i]) + 1 - self.prompt_lens[i])
                r.verified.append(int(s.verified[i]))
                r.accepted.append(int(s.accepted[i]))
                r.confidences.append(c)
        return records + reqs


def _confs(s: StepStats, i: int) -> list[float]:
    if s.confidences is None:
        return []
    return [float(c) for c in s.confidences[i, : int(s.drafted[i])]]


# ------------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------------


class _Clock:
    """Wall-clock marks; on CUDA, events (read only after a sync, so timing adds no sync)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def mark(self) -> object:
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev
        return time.perf_counter()

    def seconds(self, a: object, b: object) -> float:
        if self.cuda:
            return a.elapsed_time(b) / 1000.0  # type: ignore[attr-defined]
        return float(b) - float(a)  # type: ignore[arg-type]

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()


def ensure_caches(model: Transformer, batch: int, length: int, kv_dtype: str | None) -> None:
    """Allocate caches unless the current ones already fit (keeps captured CUDA graphs valid)."""
    want = KV_DTYPES[kv_dtype] if kv_dtype else model.dtype
    layer0 = model.layers[0].attention.kv_cache
    if layer0 is not None and model.cache_batch >= batch and model.cache_len >= length and layer0.k.dtype == want:
        return
    model.setup_caches(batch, length, kv_dtype)


def _prompt_tensor(prompts: Sequence[Sequence[int]], width: int, device: torch.device) -> tuple[Tensor, Tensor]:
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    lens = torch.tensor([len(p) for p in prompts], dtype=torch.long)
    buf = torch.zeros(len(prompts), width, dtype=torch.long)
    for i, p in enumerate(prompts):
        buf[i, : len(p)] = torch.as_tensor(list(p), dtype=torch.long)
    return buf.to(device), lens.to(device)


def _prefill(model: Transformer | Forward, buf: Tensor, lens: Tensor, width: int) -> Tensor:
    """Run the (right-padded) prompts; padding K/V lands past each prompt and is overwritten later."""
    zeros = torch.zeros_like(lens)
    return model(buf[:, :width], zeros, logit_index=lens - 1)[:, 0]


#: inductor settings of the compiled step. triton.cudagraphs: the step replays as one CUDA graph
#: (what mode="reduce-overhead" sets). coordinate_descent_tuning: a one-row matmul (batch-1 decode)
#: becomes a tuned Triton reduction that streams its weight near HBM speed (gpt-fast's setting; cuBLAS
#: GEMVs reach less, benchmarks/engine_gpu_profile.py measures both).
DECODE_INDUCTOR_OPTIONS: dict[str, Any] = {"triton.cudagraphs": True, "coordinate_descent_tuning": True}


def compile_forward(model: Transformer, options: dict[str, Any] | None = None) -> Forward:
    """torch.compile the cached forward with inductor `options` (default DECODE_INDUCTOR_OPTIONS),
    one graph per shape. The options apply to this compilation only, not to the process.

    Each call marks a new cudagraph step and clones the logits, which the next replay overwrites.
    """
    import torch._dynamo

    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    opts = dict(DECODE_INDUCTOR_OPTIONS if options is None else options)
    compiled = torch.compile(model, fullgraph=True, dynamic=False, options=opts)

    def forward(tokens: Tensor, positions: Tensor, **kw: Tensor) -> Tensor:
        torch.compiler.cudagraph_mark_step_begin()
        return compiled(tokens, positions, **kw).clone()

    return forward


# ------------------------------------------------------------------------------------------------
# Baseline: prefill + one token per step
# ------------------------------------------------------------------------------------------------


@torch.no_grad()
def generate_baseline(model: Transformer, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                      sampling: Sampling = Sampling(), *, forward: Forward | None = None,
                      generator: torch.Generator | None = None, kv_dtype: str | None = None,
                      prefill_forward: Forward | None = None) -> GenerationResult:
    """Plain autoregressive decoding; no host sync until the end.

    prefill_forward: what runs the prompt pass (default: the model, eager). A compiled forward there
    compiles one more graph per prompt width; on an H200 a 128-token batch-1 prompt pass then takes
    2-7 ms instead of 26-29 ms eager (validation/engine/h200_decode_profile_options_*.json).
    """
    if max_new_tokens < 1:
        raise ValueError("max_new_tokens must be >= 1")
    dev, fwd = model.device, forward or model
    width = max(len(p) for p in prompts)
    ensure_caches(model, len(prompts), width + max_new_tokens + 1, kv_dtype)
    clock = _Clock(dev)
    t0 = clock.mark()
    buf, lens = _prompt_tensor(prompts, width, dev)
    tok = next_token(_prefill(prefill_forward or model, buf, lens, width), sampling, generator)
    t1 = clock.mark()
    out = torch.empty(len(prompts), max_new_tokens, dtype=torch.long, device=dev)
    out[:, 0] = tok
    pos = lens.clone()
    for i in range(1, max_new_tokens):
        logits = fwd(tok[:, None], pos[:, None])[:, 0]
        tok = next_token(logits, sampling, generator)
        out[:, i] = tok
        pos += 1
    t2 = clock.mark()
    tokens = out.tolist()
    clock.sync()
    return GenerationResult(tokens, [len(p) for p in prompts], clock.seconds(t0, t1), clock.seconds(t1, t2),
                            max_new_tokens - 1)


# ------------------------------------------------------------------------------------------------
# Speculative decoding
# ------------------------------------------------------------------------------------------------


def _draft(fwd: Forward, buf: Tensor, pend: Tensor, gamma: int, sampling: Sampling,
           generator: torch.Generator | None = None,
           noise: Tensor | None = None) -> tuple[Tensor, Tensor | None, Tensor]:
    """Propose `gamma` tokens per sequence; write them into buf after each pending token.
    Returns drafts [B, gamma], their distributions q [B, gamma, V] (None when greedy), confidences.
    `noise` [B, gamma, V]: the sampled drafts' Exp(1) draws (`draft_noise`), else drawn from `generator`.

    The first pass re-feeds the token before the pending one: the draft has no K/V for the last
    draft token of a step whose drafts were all accepted, so this one fixed-shape pass catches it up
    (recomputing an existing entry otherwise, which is harmless).
    """
    rows = torch.arange(buf.shape[0], device=buf.device)
    pos = torch.stack([pend - 1, pend], dim=1)
    logits = fwd(buf.gather(1, pos), pos, logit_index=torch.ones_like(pend))[:, -1]
    drafts, probs, confs = [], [], []
    for j in range(gamma):
        if sampling.greedy:  # q is one-hot: keep only the token; confidence from the raw softmax
            d = logits.argmax(-1)
            confs.append(torch.softmax(logits, -1).gather(-1, d[:, None])[:, 0])
        else:  # confidence = the drafter's probability of its own token under the sampled q
            q = logits_to_probs(logits, sampling)
            d = sample(q, False, generator, None if noise is None else noise[:, j])
            confs.append(q.gather(-1, d[:, None])[:, 0])
            probs.append(q)
        drafts.append(d)
        buf[rows, pend + 1 + j] = d
        if j + 1 < gamma:
            logits = fwd(d[:, None], (pend + 1 + j)[:, None])[:, -1]
    return torch.stack(drafts, 1), (torch.stack(probs, 1) if probs else None), torch.stack(confs, 1)


# A speculative step is two phases of device work around its one host sync: the draft phase (draft
# passes, sampling, the small tensor the host reads) and the verify phase (the target pass over the
# verified blocks, rejection sampling, the buffer update). Both are functions of tensors the step owns,
# with their random numbers drawn beforehand in one call each, so that `cudagraphs.StepGraphs` can
# replay each phase as one CUDA graph and still produce the very tokens of this eager loop.


def draft_noise(bsz: int, gamma: int, vocab: int, sampling: Sampling, generator: torch.Generator | None,
                device: torch.device, out: Tensor | None = None) -> Tensor | None:
    """The draft phase's random numbers: Exp(1) per row, drafted token and vocabulary entry (None when greedy)."""
    if sampling.greedy or gamma == 0:
        return None
    if out is None:
        out = torch.empty(bsz, gamma, vocab, dtype=torch.float32, device=device)
    return out.exponential_(1.0, generator=generator)


def verify_noise(bsz: int, gamma: int, vocab: int, sampling: Sampling, generator: torch.Generator | None,
                 device: torch.device, out: tuple[Tensor, Tensor] | None = None
                 ) -> tuple[Tensor | None, Tensor | None]:
    """The verify phase's: a uniform per draft (the accept tests; a step verifying g <= gamma uses the
    first g) and Exp(1) per vocabulary entry (the next token), per row (None, None when greedy)."""
    if sampling.greedy:
        return None, None
    u, e = out if out is not None else (torch.empty(bsz, gamma, dtype=torch.float32, device=device),
                                        torch.empty(bsz, vocab, dtype=torch.float32, device=device))
    return u.uniform_(0.0, 1.0, generator=generator), e.exponential_(1.0, generator=generator)


def draft_phase(fwd: Forward, buf: Tensor, pend: Tensor, gamma: int, sampling: Sampling,
                noise: Tensor | None) -> tuple[Tensor, Tensor | None, Tensor]:
    """Draft `gamma` tokens a row; returns drafts, q (None when greedy) and the step's one host read:
    [B, 1 + gamma] doubles, each row's pending position then its drafts' confidences."""
    drafts, q, conf = _draft(fwd, buf, pend, gamma, sampling, None, noise)
    return drafts, q, torch.cat([pend[:, None].double(), conf.double()], dim=1)


def verify_phase(fwd: Forward, buf: Tensor, pend: Tensor, drafts: Tensor | None, q: Tensor | None,
                 verify: Tensor, active: Tensor, g: int, sampling: Sampling, uniforms: Tensor | None,
                 noise: Tensor | None) -> None:
    """One target pass over each row's pending token and its first `g` drafts, rejection sampling of the
    `verify` [B] leading drafts each row verifies, then in place: the next token written into `buf` after
    the accepted drafts, `pend` advanced past them for the `active` [B] (0/1) rows."""
    rows = torch.arange(buf.shape[0], device=buf.device)
    positions = pend[:, None] + torch.arange(g + 1, device=buf.device)
    logits = fwd(buf.gather(1, positions), positions)
    if drafts is None or g == 0:
        acc = torch.zeros_like(pend)
        nxt = next_token(logits[:, 0], sampling, noise=noise)
    elif sampling.greedy:
        acc, nxt = verify_greedy(logits, drafts, verify)
    else:
        acc, nxt = verify_drafts(logits_to_probs(logits, sampling), q, drafts, verify, False,
                                 uniforms=uniforms, noise=noise)
    acc = acc * active
    buf[rows, pend + acc + 1] = nxt
    pend.add_((acc + 1) * active)


def token_buffer_len(prompt_len: int, max_new_tokens: int, gamma: int) -> int:
    """Width of a speculative run's token buffer: its cache plus room for the last step's drafts."""
    return cache_tokens(prompt_len, max_new_tokens, gamma) + gamma + 2


@torch.no_grad()
def speculative_generate(target: Transformer, draft: Transformer | None, prompts: Sequence[Sequence[int]],
                         max_new_tokens: int, policy: object, sampling: Sampling = Sampling(), *,
                         generator: torch.Generator | None = None, kv_dtype: str | None = None,
                         target_forward: Forward | None = None, draft_forward: Forward | None = None,
                         seq_ids: Sequence[int] | None = None, step_graphs: Any = None) -> GenerationResult:
    """Speculative decoding of a batch with a draft model, ragged acceptance, one host sync per step.

    `policy` is a `dspark_sim.core.policies` policy or a schema policy spec (FixedGamma, NoSpeculation,
    ConfidenceThreshold, ...). With gamma_max 0 (NoSpeculation) this is plain decoding, same loop.
    `step_graphs` (a `cudagraphs.StepGraphs` of these models, on a GPU): each step's draft and verify
    phases replay as CUDA graphs (the forwards given are then unused after prefill); same tokens.
    """
    if not hasattr(policy, "draft_lengths"):
        policy = make_policy(policy)
    if max_new_tokens < 1:
        raise ValueError("max_new_tokens must be >= 1")
    gamma = int(policy.gamma_max)  # type: ignore[attr-defined]
    if gamma > 0 and draft is None:
        raise ValueError("a policy that speculates needs a draft model")
    dev = target.device
    tfwd, dfwd = target_forward or target, draft_forward or draft
    bsz, width = len(prompts), max(len(p) for p in prompts)
    cap = cache_tokens(width, max_new_tokens, gamma)
    ensure_caches(target, bsz, cap, kv_dtype)
    if gamma > 0:
        ensure_caches(draft, bsz, cap, kv_dtype)  # type: ignore[arg-type]
    ids = np.asarray(seq_ids if seq_ids is not None else range(bsz), dtype=np.int64)
    clock = _Clock(dev)

    vocab = target.args.vocab_size

    t0 = clock.mark()
    prompt_buf, lens_t = _prompt_tensor(prompts, width, dev)
    length = token_buffer_len(width, max_new_tokens, gamma)
    if step_graphs is None:
        buf, pend = torch.zeros(bsz, length, dtype=torch.long, device=dev), torch.zeros_like(lens_t)
    else:  # the graphs' own buffers (a graph reads and writes fixed addresses)
        buf, pend = step_graphs.buffers(bsz, length)
        buf.zero_()
    buf[:, :width] = prompt_buf
    first = next_token(_prefill(target, buf, lens_t, width), sampling, generator)
    rows = torch.arange(bsz, device=dev)
    buf[rows, lens_t] = first
    if gamma > 0:
        _prefill(draft, buf, lens_t, width)  # type: ignore[arg-type]
    pend.copy_(lens_t)  # position of each sequence's newest token (not yet run through the target)
    t1 = clock.mark()

    lens = np.array([len(p) for p in prompts], dtype=np.int64)
    host_pend = lens.copy()
    steps: list[StepStats] = []
    marks: list[tuple[object, object, object, object]] = []
    passes, step = 0, 0
    while True:
        # host view, one step behind the device: each active row has gained >= 1 token since
        least = host_pend - lens + 1 + (1 if steps else 0)
        t_s = clock.mark()
        if gamma > 0 and bool((least + 1 < max_new_tokens).any()):  # someone may still use a draft
            if step_graphs is None:
                noise = draft_noise(bsz, gamma, vocab, sampling, generator, dev)
                drafts, q, payload = draft_phase(dfwd, buf, pend, gamma, sampling, noise)  # type: ignore[arg-type]
            else:
                drafts, q, payload = step_graphs.draft(buf, pend, gamma, sampling, generator)
        else:
            drafts = q = None
            payload = pend[:, None].double()
        # the verify phase's random numbers, before the sync (for up to gamma drafts: the verify width is
        # not known yet), so that after it the host only decides and launches while the GPU waits
        if step_graphs is None:
            u, e = verify_noise(bsz, gamma, vocab, sampling, generator, dev)
        else:
            step_graphs.draw_verify_noise(buf, gamma, sampling, generator)
        t_d = clock.mark()
        host = payload.cpu().numpy()  # the one host sync of the step
        new_pend = host[:, 0].astype(np.int64)
        if steps:  # finish the previous step's record now that its outcome is known
            prev = steps[-1]
            prev.accepted = np.where(prev.active, new_pend - prev.context_lens - 1, 0)
            policy.observe(StepView(prev.context_lens, prev.step, ids), verified=prev.verified,  # type: ignore[attr-defined]
                           accepted=prev.accepted, step_time_s=clock.seconds(marks[-1][0], marks[-1][3]))
        host_pend = new_pend
        generated = host_pend - lens + 1
        active = generated < max_new_tokens
        if not active.any():
            t_last = t_s
            break
        view = StepView(context_lens=host_pend.copy(), step=step, seq_ids=ids)
        drafted = np.zeros(bsz, dtype=np.int64)
        conf_np = None
        if drafts is not None:
            drafted = np.asarray(policy.draft_lengths(view), dtype=np.int64)  # type: ignore[attr-defined]
            drafted = np.clip(np.minimum(drafted, max_new_tokens - generated - 1), 0, gamma) * active
            conf_np = host[:, 1:].copy()
            conf_np[np.arange(gamma)[None, :] >= drafted[:, None]] = np.nan
        verified = np.asarray(policy.verify_lengths(view, drafted, conf_np), dtype=np.int64)  # type: ignore[attr-defined]
        verified = np.clip(verified, 0, drafted) * active
        t_v = clock.mark()
        g = int(verified.max(initial=0))
        act64 = active.astype(np.int64)
        if step_graphs is None:
            v_dev = torch.from_numpy(verified).to(dev, non_blocking=True)
            act_dev = torch.from_numpy(act64).to(dev, non_blocking=True)
            verify_phase(tfwd, buf, pend, drafts, q, v_dev, act_dev, g, sampling, u, e)
        else:
            step_graphs.verify(buf, pend, gamma, drafts is not None, verified, act64, g, sampling)
        passes += 1
        t_e = clock.mark()
        steps.append(StepStats(step, host_pend.copy(), active, drafted, verified, np.zeros(bsz, np.int64), conf_np))
        marks.append((t_s, t_d, t_v, t_e))
        step += 1
    t2 = clock.mark()
    out = buf.cpu()
    clock.sync()
    for s, (a, b, c, d) in zip(steps, marks, strict=True):  # read after the loop: off the step's host path
        s.draft_time_s, s.verify_time_s = clock.seconds(a, b), clock.seconds(c, d)
    tokens = [out[i, lens[i]: lens[i] + max_new_tokens].tolist() for i in range(bsz)]
    starts = [m[0] for m in marks] + [t_last]
    walls = [clock.seconds(a, b) for a, b in zip(starts[:-1], starts[1:], strict=True)]
    return GenerationResult(tokens, lens.tolist(), clock.seconds(t0, t1), clock.seconds(t1, t2), passes, steps, walls)


@torch.no_grad()
def profile_sps(model: Transformer, batch: int, max_tokens_per_seq: int, *, context: int = 64,
                repeats: int = 5, forward: Forward | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """Measure SPS(B), verify passes per second at B = batch x t tokens (t = 1..max), on this model.

    The DSpark scheduler prices extra verify tokens with this curve (`policies.table_sps`).
    """
    from dspark_sim.core.policies import table_sps

    fwd = forward or model
    ensure_caches(model, batch, context + max_tokens_per_seq + 1, None)
    dev = model.device
    table: dict[int, float] = {}
    for t in range(1, max_tokens_per_seq + 1):
        toks = torch.zeros(batch, t, dtype=torch.long, device=dev)
        pos = torch.full((batch,), context, dtype=torch.long, device=dev)
        fwd(toks, pos)  # warm-up
        times = []
        for _ in range(repeats):
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fwd(toks, pos)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        table[batch * t] = 1.0 / max(float(np.median(times)), 1e-9)
    return table_sps(table)
