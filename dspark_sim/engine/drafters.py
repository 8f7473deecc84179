"""Drafters that read the target's hidden states: an MTP-style chained head, a parallel block drafter
(DFlash-like) and DSpark (the parallel block + a low-rank Markov head + a calibrated confidence head).

Notation: x_0..x_n are a sequence's tokens and h_t the target's final-norm hidden state after x_t (the
state that predicts x_{t+1}). At a decode step the newest token x_{t+1} (the "pending" token, the
bonus/correction token of the previous step) has not been through the target yet; h_t has. Every
drafter here proposes d_k for x_{t+1+k}, k = 1..gamma, from:

- the context window: fused features f_s = fuse(h_s, emb(x_{s+1})) for the last `window` positions
  s = t-window+1..t, which every layer projects to keys and values (KV injection, as DFlash does).
  In the engine they are cached by position (`DrafterState`, updated from each verify pass's hidden
  states), so a step computes the context of only the tokens it verified and needs no catch-up pass;
- block tokens that attend to the whole window and to each other:
  * mtp: token k is fuse(g_{k-1}, emb(x_{t+k})) with g_0 = h_t and g_k the head's own output hidden
    state (DeepSeek MTP chained; causal inside the block): one pass per draft token;
  * parallel_block: token k is f_t + mask + pos_k, bidirectional inside the block: ONE pass for the block;
  * dspark: parallel_block, then logits_k += U[prev_k] @ V (rank r), prev_1 = x_{t+1} and prev_k = d_{k-1},
    applied sequentially (cheap: one r x V product per position), and a confidence head estimating
    P(d_k accepted | d_<k accepted), calibrated per position by temperature scaling.

Positions use RoPE on absolute positions (so attention scores depend only on offsets) plus a learned
embedding of the block slot. The drafter shares the target's token embedding and output head (frozen
copies, saved with it so a checkpoint is self-contained).
"""

from __future__ import annotations

from typing import cast

import torch
from torch import Tensor, nn

from dspark_sim.engine.drafter_args import KINDS, ONE_PASS_KINDS, DrafterArgs
from dspark_sim.engine.drafter_layers import DraftLayer, RMSNorm
from dspark_sim.engine.sampling import Sampling, logits_to_probs, sample

__all__ = ["KINDS", "ONE_PASS_KINDS", "Drafter", "DrafterArgs", "DrafterState"]

#: confidence temperature rows: 0 = sampled decoding (acceptance 1 - TV), 1 = greedy (argmax match)
MODE_SAMPLED, MODE_GREEDY = 0, 1


class Drafter(nn.Module):
    """One of the three hidden-state drafters (`args.kind`); see the module docstring."""

    # buffers (registered in __init__ / _build_rope; typed here for nn.Module's attribute lookup)
    conf_temperature: Tensor
    rope_cos: Tensor
    rope_sin: Tensor

    def __init__(self, args: DrafterArgs):
        super().__init__()
        self.args = a = args
        self.tok_embeddings = nn.Embedding(a.vocab_size, a.dim)  # frozen copy of the target's
        self.output = nn.Linear(a.dim, a.vocab_size, bias=False)  # frozen copy of the target's
        self.h_norm = RMSNorm(a.dim, a.norm_eps)
        self.e_norm = RMSNorm(a.dim, a.norm_eps)
        self.fuse = nn.Linear(2 * a.dim, a.dim, bias=False)
        self.layers = nn.ModuleList(DraftLayer(a) for _ in range(a.n_layers))
        self.norm = RMSNorm(a.dim, a.norm_eps)
        self.block_pos = nn.Parameter(torch.zeros(a.block_size, a.dim))
        if a.one_pass:
            self.mask_emb = nn.Parameter(torch.zeros(a.dim))
        if a.kind == "dspark":
            self.markov_u = nn.Embedding(a.vocab_size, a.markov_rank)
            self.markov_v = nn.Linear(a.markov_rank, a.vocab_size, bias=False)
            self.conf = nn.Sequential(nn.Linear(a.dim + a.markov_rank + 2, a.conf_hidden), nn.SiLU(),
                                      nn.Linear(a.conf_hidden, 1))
            # per-position temperatures of the confidence logit (row MODE_SAMPLED / MODE_GREEDY)
            self.register_buffer("conf_temperature", torch.ones(2, a.block_size))
        self._build_rope(a.max_seq_len + 2 * a.block_size + 2)

    def _build_rope(self, length: int, device: torch.device | str | None = None) -> None:
        hd = self.args.head_dim
        inv = 1.0 / (self.args.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float64, device=device) / hd))
        freqs = torch.outer(torch.arange(length, dtype=torch.float64, device=device), inv)
        emb = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("rope_cos", emb.cos().float(), persistent=False)
        self.register_buffer("rope_sin", emb.sin().float(), persistent=False)

    @property
    def kind(self) -> str:
        return self.args.kind

    @property
    def max_gamma(self) -> int | None:
        """Parallel drafters draft at most their trained block; the MTP chain has no limit."""
        return self.args.block_size if self.args.one_pass else None

    @property
    def dtype(self) -> torch.dtype:
        return self.fuse.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.fuse.weight.device

    def trainable_parameters(self) -> list[nn.Parameter]:
        frozen = {id(self.tok_embeddings.weight), id(self.output.weight)}
        return [p for p in self.parameters() if id(p) not in frozen]

    def num_params(self) -> int:
        """Trainable parameters (the shared embedding and output head not counted)."""
        return sum(p.numel() for p in self.trainable_parameters())

    # ------------------------------------------------------------------ pieces shared by train and infer

    def rope(self, pos: Tensor) -> tuple[Tensor, Tensor]:
        return self.rope_cos[pos].to(self.dtype), self.rope_sin[pos].to(self.dtype)

    def features(self, h: Tensor, nxt: Tensor, emb: Tensor | None = None) -> Tensor:
        """fuse(h_s, emb(x_{s+1})): target (or own) hidden states [..., D] with the next tokens [...]."""
        e = self.tok_embeddings(nxt) if emb is None else emb
        return self.fuse(torch.cat([self.h_norm(h.to(self.dtype)), self.e_norm(e)], dim=-1))

    def context(self, ctx: Tensor, ctx_pos: Tensor) -> list[tuple[Tensor, Tensor]]:
        cos, sin = self.rope(ctx_pos)
        return [cast(DraftLayer, layer).ctx_kv(ctx, cos, sin) for layer in self.layers]

    def run_layers(self, x: Tensor, pos: Tensor, kvs: list[tuple[Tensor, Tensor]], ctx_mask: Tensor,
                   past: list[tuple[Tensor, Tensor]] | None = None, causal: bool = False
                   ) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
        cos, sin = self.rope(pos)
        new_past = []
        for i, layer in enumerate(self.layers):
            x, k, v = layer(x, cos, sin, kvs[i][0], kvs[i][1], ctx_mask, past[i] if past else None, causal)
            new_past.append((k, v))
        return x, new_past

    def logits(self, hidden: Tensor) -> Tensor:
        out = self.output(self.norm(hidden))
        return out.float() if out.dtype in (torch.bfloat16, torch.float16) else out

    def parallel_block(self, anchor: Tensor, anchor_pos: Tensor, kvs: list[tuple[Tensor, Tensor]],
                       ctx_mask: Tensor) -> Tensor:
        """Hidden states [N, A, G, D] of the whole block in one pass (anchor [N, A, D], pos [N, A])."""
        g = self.args.block_size
        x = anchor[:, :, None, :] + self.mask_emb + self.block_pos
        pos = anchor_pos[:, :, None] + torch.arange(1, g + 1, device=anchor.device)
        out, _ = self.run_layers(x, pos, kvs, ctx_mask)
        return out

    def mtp_depth(self, feat: Tensor, pos: Tensor, depth: int, kvs: list[tuple[Tensor, Tensor]], ctx_mask: Tensor,
                  past: list[tuple[Tensor, Tensor]] | None) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
        """One chained MTP step: feat [N, A, D] at depth `depth` (0-based) -> hidden [N, A, D]."""
        x = (feat + self.block_pos[min(depth, self.args.block_size - 1)])[:, :, None, :]
        out, past = self.run_layers(x, pos[:, :, None], kvs, ctx_mask, past, causal=True)
        return out[:, :, 0], past

    def markov_bias(self, prev: Tensor) -> Tensor:
        return self.markov_v(self.markov_u(prev))

    def confidence_logit(self, hidden: Tensor, prev: Tensor, logits: Tensor) -> Tensor:
        """Uncalibrated logit of P(token accepted | earlier ones were), from the position's hidden state,
        the Markov embedding of the previous token and the draft distribution's sharpness."""
        logq = torch.log_softmax(logits.float(), -1)
        stats = torch.stack([logq.max(-1).values, -(logq.exp() * logq).sum(-1)], dim=-1).to(self.dtype)
        feats = torch.cat([hidden.detach(), self.markov_u(prev).detach(), stats.detach()], dim=-1)
        return self.conf(feats)[..., 0]

    # ------------------------------------------------------------------ training forward (teacher forced)

    def train_forward(self, h: Tensor, tokens: Tensor, anchors: Tensor) -> tuple[Tensor, Tensor | None]:
        """Teacher-forced block logits for every anchor.

        h [N, L, D]: target hidden states of tokens [N, L]; anchors [N, A] (t <= L-1-G). Block token k
        of anchor t predicts x_{t+1+k}; its "previous token" (Markov head, MTP input) is x_{t+k}.
        Returns logits [N, A, G, V] and, for dspark, confidence logits [N, A, G].
        """
        a = self.args
        n, length = tokens.shape
        g, w = a.block_size, a.window
        dev = tokens.device
        ctx = self.features(h[:, :-1], tokens[:, 1:])  # s = 0..L-2
        ctx_pos = torch.arange(length - 1, device=dev).expand(n, -1)
        s = torch.arange(length - 1, device=dev)
        ctx_mask = (s[None, None, :] <= anchors[:, :, None]) & (s[None, None, :] > anchors[:, :, None] - w)
        kvs = self.context(ctx, ctx_pos)
        steps = torch.arange(1, g + 1, device=dev)
        prev = tokens.gather(1, (anchors[:, :, None] + steps).flatten(1)).view(n, -1, g)  # x_{t+k}
        anchor_feat = ctx.gather(1, anchors[:, :, None].expand(-1, -1, ctx.shape[-1]))
        if a.one_pass:
            hidden = self.parallel_block(anchor_feat, anchors, kvs, ctx_mask)
        else:
            outs, past, feat = [], None, anchor_feat
            for k in range(g):
                out, past = self.mtp_depth(feat, anchors + k + 1, k, kvs, ctx_mask, past)
                outs.append(out)
                if k + 1 < g:
                    feat = self.features(out, prev[:, :, k + 1])
            hidden = torch.stack(outs, dim=2)
        logits = self.logits(hidden)
        if a.kind != "dspark":
            return logits, None
        logits = logits + self.markov_bias(prev)
        return logits, self.confidence_logit(hidden, prev, logits)

    # ------------------------------------------------------------------ inference

    def new_state(self, batch: int, length: int) -> DrafterState:
        return DrafterState(self, batch, length)

    def window_context(self, state: DrafterState, pend: Tensor
                       ) -> tuple[Tensor, list[tuple[Tensor, Tensor]], Tensor]:
        """Each row's context: the cached features (anchor) and per-layer keys/values of positions
        pend-window..pend-1 (those >= 0)."""
        w = self.args.window
        b = pend.shape[0]
        s = pend[:, None] - w + torch.arange(w, device=pend.device)
        valid = s >= 0
        sc = s.clamp_min(0)
        anchor = state.feat.gather(1, (pend - 1)[:, None, None].expand(b, 1, state.feat.shape[-1]))
        idx = sc[:, :, None, None].expand(b, w, self.args.n_heads, self.args.head_dim)
        kvs = [(k.gather(1, idx), v.gather(1, idx)) for k, v in zip(state.k, state.v, strict=True)]
        return anchor, kvs, valid[:, None, :]

    @torch.no_grad()
    def propose(self, state: DrafterState, buf: Tensor, pend: Tensor, gamma: int, sampling: Sampling,
                generator: torch.Generator | None = None) -> tuple[Tensor, Tensor | None, Tensor]:
        """Draft `gamma` tokens after each row's pending token buf[pend] (context: `state`, which holds
        positions < pend).

        Returns drafts [B, gamma], the distributions they were drawn from q [B, gamma, V] (None when
        greedy; with the Markov head q_k is AFTER the bias for the drawn d_{k-1}) and confidences
        [B, gamma]: the calibrated head (dspark) or the drafter's probability of its token (others).
        No host sync.
        """
        a = self.args
        if a.one_pass and gamma > a.block_size:
            raise ValueError(f"a {a.kind} drafter trained on blocks of {a.block_size} cannot draft {gamma}")
        anchor, kvs, mask = self.window_context(state, pend)
        anchor_pos = (pend - 1)[:, None]
        greedy = sampling.greedy
        q = None
        if a.one_pass:  # one pass for the whole block (always the trained block size; keep gamma)
            hidden = self.parallel_block(anchor, anchor_pos, kvs, mask)[:, 0, :gamma]  # [B, gamma, D]
            logits = self.logits(hidden)
            if a.kind == "dspark":  # the Markov head: sequential over the block, one r x V product each
                prev = buf.gather(1, pend[:, None])[:, 0]  # x_{t+1}
                prevs, rows, picks = [], [], []
                probs: list[Tensor] = []
                for k in range(gamma):
                    lk = logits[:, k] + self.markov_bias(prev)
                    d = _pick(lk, greedy, sampling, generator, probs)
                    prevs.append(prev)
                    rows.append(lk)
                    picks.append(d)
                    prev = d
                drafts, logits = torch.stack(picks, 1), torch.stack(rows, 1)
                q = torch.stack(probs, 1) if probs else None
                mode = MODE_GREEDY if greedy else MODE_SAMPLED
                z = self.confidence_logit(hidden, torch.stack(prevs, 1), logits)
                return drafts, q, torch.sigmoid(z / self.conf_temperature[mode, :gamma]).to(self.dtype)
            if greedy:
                drafts = logits.argmax(-1)
            else:
                q = logits_to_probs(logits, sampling)
                drafts = sample(q, False, generator)
        else:  # MTP: chained, one pass per draft token, its own hidden state fed forward
            feat, past, picks, rows, probs = anchor, None, [], [], []
            for k in range(gamma):
                out, past = self.mtp_depth(feat, anchor_pos + k + 1, k, kvs, mask, past)
                lk = self.logits(out[:, 0])
                d = _pick(lk, greedy, sampling, generator, probs)
                picks.append(d)
                rows.append(lk)
                if k + 1 < gamma:
                    feat = self.features(out[:, 0], d)[:, None]
            drafts, logits = torch.stack(picks, 1), torch.stack(rows, 1)
            q = torch.stack(probs, 1) if probs else None
        # generic confidence: the drafter's probability of its token (raw softmax when greedy)
        dist = torch.softmax(logits.float(), -1) if q is None else q
        return drafts, q, dist.gather(-1, drafts[..., None])[..., 0].to(self.dtype)


def _pick(logits: Tensor, greedy: bool, sampling: Sampling, generator: torch.Generator | None,
          probs: list[Tensor]) -> Tensor:
    """One draft token per row: argmax, or a sample from the filtered distribution (kept in `probs`
    for the rejection step)."""
    if greedy:
        return logits.argmax(-1)
    q = logits_to_probs(logits, sampling)
    probs.append(q)
    return sample(q, False, generator)


class DrafterState:
    """A batch's drafter context, cached by absolute position like the target's KV cache: the fused
    feature f_s = fuse(h_s, emb(x_{s+1})) and every layer's context key/value of position s.

    `update` runs once per target pass over the positions it verified, after the token that follows
    the last of them (the bonus/correction token) is in `buf`; entries past a row's accepted tokens are
    wrong but lie past its position, are never read, and are overwritten by the next update. So a step
    computes the context of (verified + 1) tokens per row, never the whole window again.
    """

    def __init__(self, drafter: Drafter, batch: int, length: int):
        a = drafter.args
        dtype, dev = drafter.dtype, drafter.device
        self.feat = torch.zeros(batch, length, a.dim, dtype=dtype, device=dev)
        self.k = [torch.zeros(batch, length, a.n_heads, a.head_dim, dtype=dtype, device=dev) for _ in range(a.n_layers)]
        self.v = [torch.zeros(batch, length, a.n_heads, a.head_dim, dtype=dtype, device=dev) for _ in range(a.n_layers)]
        self.drafter = drafter

    def init(self, hidden: Tensor, buf: Tensor, lens: Tensor, width: int) -> None:
        """The prompts' context, from the prefill's hidden states [B, width, D]."""
        self.update(hidden, buf, torch.arange(width, device=buf.device).expand(buf.shape[0], width))

    @torch.no_grad()
    def update(self, hidden: Tensor, buf: Tensor, positions: Tensor) -> None:
        """hidden [B, T, D]: the target's hidden states at positions [B, T]; buf holds x_{s+1}."""
        d = self.drafter
        feat = d.features(hidden, buf.gather(1, positions + 1))
        rows = torch.arange(positions.shape[0], device=positions.device)[:, None]
        self.feat[rows, positions] = feat
        for i, (k, v) in enumerate(d.context(feat, positions)):
            self.k[i][rows, positions] = k
            self.v[i][rows, positions] = v
