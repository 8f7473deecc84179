"""Teacher-forced acceptance traces of the hidden-state drafters, in the simulator's trace format.

The counterpart of `acceptance_trace.acceptance_records` for block drafters. A draft model's proposal
at an output position depends only on the tokens before it, so one run of matches per position gives
every step's yield; a block drafter's proposal for a position depends on where its block started (the
anchor), so here every output position j gets its own block: the one a speculative step would draft
with output j-1 pending. Teacher forcing over the target's own output gives, for that block:
- greedy: accept_len[j] = 1 + the leading run of drafts equal to the target's tokens (exactly what the
  engine's greedy step at that position yields, see the tests);
- sampling: per-draft acceptance probabilities 1 - TV(p_k, q_k) (q after the Markov bias of the true
  previous token), yields drawn from them with a fixed seed.
Records carry `accept_len` (TraceAcceptance field), `confidence` (c_1 of each block, the per-position
list the simulator's loader takes) and `block_confidence` (c_1..c_G of each block: what DSpark's
scheduler sees; the simulator cannot read it yet).
"""

from __future__ import annotations

import numpy as np
import torch

from dspark_sim.engine.drafter_training import block_targets
from dspark_sim.engine.drafters import MODE_GREEDY, MODE_SAMPLED, Drafter
from dspark_sim.engine.generate import generate_baseline
from dspark_sim.engine.model import Transformer
from dspark_sim.engine.sampling import Sampling, logits_to_probs


@torch.no_grad()
def drafter_acceptance_records(target: Transformer, drafter: Drafter, prompts: list[list[int]], max_new_tokens: int,
                               sampling: Sampling, seed: int = 0) -> list[dict]:
    """One record per prompt (prompt_len, output_len, accept_len, alpha, confidence, block_confidence)."""
    dev = target.device
    g = drafter.args.block_size
    gen = torch.Generator(device=dev).manual_seed(seed)
    res = generate_baseline(target, prompts, max_new_tokens, sampling, generator=gen)
    rng = np.random.default_rng(seed)
    records = []
    for prompt, out in zip(prompts, res.tokens, strict=True):
        n, length = len(prompt), len(out)
        seq = torch.tensor([list(prompt) + list(out) + [0] * (g + 1)], device=dev)  # room for the last blocks
        t_logits, h = target(seq, return_hidden=True)
        # block of output j: output j-1 pending, anchor t = n + j - 2 (output 0 comes from the prefill)
        first = 1
        anchors = torch.arange(n + first - 2, n + length - 2, device=dev)[None, :]
        logits, z = drafter.train_forward(h, seq, anchors)
        logits, tl = logits[0], block_targets(t_logits, seq, anchors, g)[0]
        truth = seq[0, anchors[0, :, None] + 1 + torch.arange(1, g + 1, device=dev)]
        mode = MODE_GREEDY if sampling.greedy else MODE_SAMPLED
        if sampling.greedy:
            ok = (logits.argmax(-1) == truth).cpu().numpy()
            alpha = ok.astype(float)
            conf = torch.softmax(logits.float(), -1).amax(-1)
        else:
            p, q = logits_to_probs(tl, sampling), logits_to_probs(logits, sampling)
            alpha = torch.minimum(p, q).sum(-1).clamp(0, 1).cpu().numpy().astype(float)
            ok = rng.random(alpha.shape) < alpha
            e = torch.empty_like(q).exponential_(1.0, generator=gen)
            conf = q.gather(-1, (q / e).argmax(-1, keepdim=True))[..., 0]
        if z is not None:
            conf = torch.sigmoid(z[0] / drafter.conf_temperature[mode])
        conf_np = conf.float().cpu().numpy()
        run = np.where(ok.all(1), g, np.argmin(ok, axis=1))
        pad = [1] * first
        records.append({
            "prompt_len": n, "output_len": length,
            "accept_len": pad + (1 + run).astype(int).tolist(),
            "alpha": [0.0] * first + [round(float(a), 6) for a in alpha[:, 0]],
            "confidence": [0.0] * first + [round(float(c), 6) for c in conf_np[:, 0]],
            "block_confidence": [[]] * first + [[round(float(c), 6) for c in row] for row in conf_np],
        })
    return records
