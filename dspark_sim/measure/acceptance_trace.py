"""Per-position acceptance of a draft against a target, measured without running speculation.

Why teacher forcing works: while every draft token so far was accepted, the draft's prefix *is* the
target's output, so the draft's proposal at position j depends only on the target's tokens before j.
One forward pass of each model over the target's own output therefore gives, at every position j:
- greedy: match[j] = (draft argmax == target token), so a step starting at i yields
  1 + (length of the run of matches from i): exactly what a speculative step would yield;
- sampling: alpha[j] = sum_x min(p_j(x), q_j(x)), the probability the draft token is accepted there
  (Leviathan et al.); yields are then drawn from these with a fixed seed.
With `chain` > 0 each record also holds, for every output position i, the chain a live step starting
there drafts: the draft continues from the target's tokens before i along its *own* tokens (sampled or
greedy) for `chain` positions, and the trace keeps each chain token's confidence and the probability
that the target accepts it given the chain before it (`chain_confidence`, `chain_accept_prob`). A
policy that reads confidences past the first draft position sees there what the engine's scheduler
sees; the per-position fields hold the draft's confidence given the *target's* tokens, which after a
token the target would reject is not what the live draft is conditioned on.
`live_steps` records, for sampled decoding, what no walk along the target's own tokens can give: the
states live steps start in. A live step starts after the previous step's accepted drafts (tokens the
draft liked: distributed as min(p, q)) and its correction (one it did not: drawn from the residual), so
the draft's confidences there differ from those at a position of the target's own output (the bundled
tiny pair at batch 1, fixed gamma 5, 4 sampled paths x 48 prompts: a first-draft confidence of 0.49 after
a fully accepted step and 0.28 after a rejection, against 0.44 and 0.33 in a walk over the chains); a
policy that chooses its verify length from the confidences then picks a different mix of states than the walk.
It runs the engine's own draft and rejection-sampling code with the policy deciding `batch` consecutive
rows jointly, as the engine decides a static batch of that size (the states depend on it: a loaded
scheduler verifies less, so more of its steps start after a fully accepted draft), and keeps, step by
step, the chain's confidences and each chain token's acceptance probability (the target scores the
whole chain, whatever the policy verified), the tested ones' outcomes in its place.
The result is a SpecDecode-Bench-style trace (`accept_len[i]` for every output position i) that the
simulator's trace acceptance model replays (`TraceAcceptance(field="accept_len")`), plus the draft's
confidence at every position (`confidence_field="confidence"`) as the engine computes it, so that
confidence-driven policies see in the simulator what they see in the engine.
"""

from __future__ import annotations

import numpy as np
import torch

from dspark_sim.core.policies import StepView
from dspark_sim.engine.caches import cache_tokens, ensure_caches, prefill, prompt_tensor, token_buffer_len
from dspark_sim.engine.generate import generate_baseline
from dspark_sim.engine.model import KVCache, Transformer
from dspark_sim.engine.sampling import Sampling, logits_to_probs, next_token, verify_drafts
from dspark_sim.engine.step import draft_tokens


def _runs(ok: np.ndarray) -> np.ndarray:
    """run[i] = how many consecutive True values start at i."""
    run = np.zeros(len(ok) + 1, dtype=np.int64)
    for i in range(len(ok) - 1, -1, -1):
        run[i] = run[i + 1] + 1 if ok[i] else 0
    return run[:-1]


def _prefill_rows(model: Transformer, seq: torch.Tensor, rows: int, cache_len: int) -> None:
    """Every one of `rows` cache rows holding the KV of seq (one sequence): filled once, then copied."""
    if (model.cache_batch, model.cache_len) != (rows, cache_len):
        model.setup_caches(rows, cache_len)
    zero = torch.zeros(1, dtype=torch.long, device=seq.device)
    model(seq, zero, logit_index=zero)  # only the cache matters here
    for kv in (m for m in model.modules() if isinstance(m, KVCache)):
        for buf in kv.buffers():
            buf[1:rows] = buf[0]


@torch.no_grad()
def draft_chains(target: Transformer, draft: Transformer, seq: torch.Tensor, n: int, first: torch.Tensor,
                 p_first: torch.Tensor, q_first_logits: torch.Tensor, sampling: Sampling, length: int,
                 gen: torch.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(confidence, accept probability) [L, length] of the chain a step starting at each of the L output
    positions of seq [1, n + L] drafts, its first token `first` [L] (the draft's at that position).

    Row i of a batch holds the sequence up to output position i in its cache; the draft then writes its
    own tokens from position n + i on (later cached keys are masked, since a query at position p sees keys
    0..p), and one target pass over the chain gives p for every chain token after the first."""
    L = seq.shape[1] - n
    cache_len = n + L + length
    for model in (target, draft):
        _prefill_rows(model, seq[:, :-1], L, cache_len)
    start = n + torch.arange(L, device=seq.device)
    tokens, confs, q_tok = [first], [], []

    def pick(logits: torch.Tensor, token: torch.Tensor | None) -> torch.Tensor:
        q = logits_to_probs(logits, sampling)
        if token is None:
            if sampling.greedy:
                token = q.argmax(-1)
            else:
                u = torch.rand(q.shape[0], 1, generator=gen, device=q.device)
                token = torch.searchsorted(q.float().cumsum(-1), u)[:, 0].clamp_max(q.shape[-1] - 1)
        raw = torch.softmax(logits.float(), -1) if sampling.greedy else q.float()
        confs.append(raw.gather(-1, token[:, None])[:, 0])
        q_tok.append(q.float().gather(-1, token[:, None])[:, 0])
        return token

    pick(q_first_logits, first)
    for k in range(1, length):
        logits = draft(tokens[-1][:, None], start + k - 1)[:, 0]
        tokens.append(pick(logits, None))
    chain = torch.stack(tokens, 1)  # [L, length]
    p_rest = logits_to_probs(target(chain[:, :-1], start), sampling) if length > 1 else None
    p_all = [p_first] + ([p_rest[:, k] for k in range(length - 1)] if p_rest is not None else [])
    acc = []
    for k, p in enumerate(p_all):
        tok = chain[:, k]
        if sampling.greedy:
            acc.append((p.argmax(-1) == tok).float())
        else:
            acc.append((p.float().gather(-1, tok[:, None])[:, 0] / q_tok[k].clamp_min(1e-30)).clamp_max(1.0))
    return torch.stack(confs, 1).cpu().numpy(), torch.stack(acc, 1).cpu().numpy()


@torch.no_grad()
def acceptance_records(target: Transformer, draft: Transformer, prompts: list[list[int]], max_new_tokens: int,
                       sampling: Sampling, seed: int = 0, chain: int = 0) -> list[dict]:
    """One record per prompt: prompt_len, output_len, accept_len (yield per output position), alpha;
    with `chain`, every position's drafted chain (module docstring)."""
    gen = torch.Generator(device=target.device).manual_seed(seed)
    chain_gen = torch.Generator(device=target.device).manual_seed(seed + 1)  # leaves the fields above as without
    res = generate_baseline(target, prompts, max_new_tokens, sampling, generator=gen)
    rng = np.random.default_rng(seed)
    records = []
    for prompt, out in zip(prompts, res.tokens, strict=True):
        seq = torch.tensor([list(prompt) + list(out)], device=target.device)
        n = len(prompt)
        p_logits = target(seq[:, :-1])[0, n - 1:]  # distribution of output token j given everything before
        q_logits = draft(seq[:, :-1])[0, n - 1:]
        p = logits_to_probs(p_logits, sampling)
        q = logits_to_probs(q_logits, sampling)
        toks = seq[0, n:]
        pick = None
        if sampling.greedy:
            ok = (q.argmax(-1) == toks).cpu().numpy()
            alpha = ok.astype(float)
            # the engine's confidence when greedy: the raw softmax probability of the draft's argmax
            conf = torch.softmax(q_logits.float(), -1).amax(-1).cpu().numpy()
        else:
            alpha = torch.minimum(p, q).sum(-1).clamp(0, 1).cpu().numpy().astype(float)
            ok = rng.random(len(alpha)) < alpha
            # the engine's confidence when sampling: q of the token the draft samples
            u = torch.rand(q.shape[0], 1, generator=gen, device=q.device)
            pick = torch.searchsorted(q.float().cumsum(-1), u).clamp_max(q.shape[-1] - 1)
            q_x = q.gather(-1, pick)[:, 0].float()
            conf = q_x.cpu().numpy()
            # and the probability that this very token is accepted, min(1, p(x)/q(x)): its mean over x ~ q
            # is alpha, but beside the confidence q(x) it keeps the two coupled, as they are live (whether
            # a confident draft token is accepted more or less often depends on the pair), which is what
            # a policy reading confidences acts on
            accept_prob = (p.gather(-1, pick)[:, 0].float() / q_x.clamp_min(1e-30)).clamp_max(1.0).cpu().numpy()
        accept_len = (1 + _runs(ok)).tolist()
        record = {
            "prompt_len": n, "output_len": len(out), "accept_len": accept_len,
            "alpha": [round(float(a), 6) for a in alpha],
            "confidence": [round(float(c), 6) for c in conf],
        }
        if not sampling.greedy:
            record["accept_prob"] = [round(float(a), 6) for a in accept_prob]
        if chain and len(out):
            first = q.argmax(-1) if pick is None else pick[:, 0]
            c_conf, c_acc = draft_chains(target, draft, seq, n, first, p, q_logits, sampling, chain, chain_gen)
            record["chain_confidence"] = [[round(float(c), 5) for c in row] for row in c_conf]
            record["chain_accept_prob"] = [[round(float(a), 5) for a in row] for row in c_acc]
        records.append(record)
    return records


@torch.no_grad()
def live_steps(target: Transformer, draft: Transformer, prompts: list[list[int]], max_new_tokens: int,
               sampling: Sampling, policy, seed: int = 0, rows: int = 64, batch: int = 1) -> list[dict]:
    """Per prompt, every step of a live speculative run (module docstring): {"step_confidence": [steps, G],
    "step_accept_prob": [steps, G]}, G = policy.gamma_max: each chain token's acceptance probability
    given the chain before it, or, for the tokens the step tested, its outcome (1 accepted, 0 rejected).
    The policy decides each group of `batch` consecutive prompts jointly, as the engine decides a static
    batch (finished rows stay in its view with nothing drafted), so the states are the policy's at that
    batch size, and a replay of the same policy over the same groups is the run itself. `rows` prompts
    run through the models at once (rounded down to whole groups). Sampled decoding only: a greedy
    step's start is a position of the target's own output."""
    if sampling.greedy:
        raise ValueError("live_steps records sampled decoding (greedy chains are exact along the target's tokens)")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    g = int(policy.gamma_max)
    gen = torch.Generator(device=target.device).manual_seed(seed + 2)
    chunk = max(rows // batch, 1) * batch
    out: list[dict] = []
    for start in range(0, len(prompts), chunk):
        out += _live_steps_batch(target, draft, prompts[start:start + chunk], max_new_tokens, sampling, policy, g,
                                 gen, batch)
    return out


def _live_steps_batch(target: Transformer, draft: Transformer, prompts: list[list[int]], max_new_tokens: int,
                      sampling: Sampling, policy, g: int, gen: torch.Generator, batch: int = 1) -> list[dict]:
    dev = target.device
    bsz, width = len(prompts), max(len(p) for p in prompts)
    for model in (target, draft):
        ensure_caches(model, bsz, cache_tokens(width, max_new_tokens, g), None)
    prompt_buf, lens = prompt_tensor(prompts, width, dev)
    buf = torch.zeros(bsz, token_buffer_len(width, max_new_tokens, g), dtype=torch.long, device=dev)
    buf[:, :width] = prompt_buf
    rows = torch.arange(bsz, device=dev)
    buf[rows, lens] = next_token(prefill(target, buf, lens, width), sampling, gen)
    prefill(draft, buf, lens, width)
    pend = lens.clone()
    lens_np = lens.cpu().numpy()
    confs: list[list[list[float]]] = [[] for _ in prompts]
    probs: list[list[list[float]]] = [[] for _ in prompts]
    while True:
        ctx = pend.cpu().numpy()
        generated = ctx - lens_np + 1
        active = generated < max_new_tokens
        if not active.any():
            break
        drafts, q, conf = draft_tokens(draft, buf, pend, g, sampling, gen)
        if q is None:  # the draft returns its distributions whenever it samples
            raise ValueError("live_steps records sampled decoding: the draft returned no distributions")
        positions = pend[:, None] + torch.arange(g + 1, device=dev)
        p = logits_to_probs(target(buf.gather(1, positions), positions), sampling)
        q_d = q.gather(-1, drafts[..., None])[..., 0].float()
        p_d = p[:, :g].gather(-1, drafts[..., None])[..., 0].float()
        accept = (p_d / q_d.clamp_min(1e-30)).clamp_max(1.0).cpu().numpy()
        conf_np = conf.double().cpu().numpy()
        # as the engine: no drafts past the output's end, the policy sees NaN there
        drafted = np.clip(max_new_tokens - generated - 1, 0, g) * active
        seen = conf_np.copy()
        seen[np.arange(g)[None, :] >= drafted[:, None]] = np.nan
        verify = np.zeros(bsz, dtype=np.int64)
        for lo in range(0, bsz, batch):
            grp = slice(lo, min(lo + batch, bsz))
            if not active[grp].any():
                continue
            view = StepView(context_lens=ctx[grp].copy(), seq_ids=np.arange(grp.start, grp.stop))
            chosen = np.asarray(policy.verify_lengths(view, drafted[grp], seen[grp]), dtype=np.int64)
            verify[grp] = np.clip(chosen, 0, drafted[grp]) * active[grp]
        accepted, nxt = verify_drafts(p, q, drafts, torch.from_numpy(verify).to(dev), False, gen)
        act = torch.from_numpy(active.astype(np.int64)).to(dev)
        accepted = accepted * act
        buf[rows, pend + accepted + 1] = torch.where(act.bool(), nxt, buf[rows, pend + accepted + 1])
        pend.add_((accepted + 1) * act)
        acc_np = accepted.cpu().numpy()
        for i in np.flatnonzero(active):
            # the tokens this step tested keep their outcome (1 accepted, 0 the rejected one), the others
            # their probability: a replay that verifies what this step verified is this very step, one that
            # verifies fewer cuts it short, one that verifies more draws only the tokens never tested
            row = accept[i].astype(float)
            row[: acc_np[i]] = 1.0
            if acc_np[i] < verify[i]:
                row[acc_np[i]] = 0.0
            confs[i].append([round(float(c), 5) for c in conf_np[i]])
            probs[i].append([round(float(a), 5) for a in row])
    return [{"step_confidence": c, "step_accept_prob": a} for c, a in zip(confs, probs, strict=True)]


def conditional_acceptance(records: list[dict], gamma_max: int) -> list[float]:
    """Per-position conditional acceptance c_k pooled over every output position of every record."""
    acc = np.concatenate([np.asarray(r["accept_len"]) - 1 for r in records])
    out = []
    for k in range(1, gamma_max + 1):
        reached = (acc >= k - 1).sum()
        out.append(float((acc >= k).sum() / reached) if reached else 0.0)
    return out
