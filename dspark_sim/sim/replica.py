"""One replica's engine: continuous batching, chunked prefill, paged KV, draft / verify iterations.

The running batch is a struct of numpy arrays (`rid`, `ctx`, `gen`, ... sliced to `n`), kept in
admission order, so one iteration is a handful of vectorised operations over the batch. Python loops
touch only rare events: admitting a request, preempting one, finishing prefill chunks.

One iteration (`plan`), vLLM-v1 / Sarathi style:
1. memory: every decoding sequence reserves KV slots for gamma_max + 1 tokens (the lookahead for the
   verify block); if the blocks do not fit, the most recently admitted sequence is preempted
   (recompute: it goes back to the head of the queue and re-prefills prompt + generated tokens);
2. speculation: the policy picks draft lengths, the drafter runs (`StepCoster.draft` at the batch's
   mean context), the policy picks verify lengths from simulated confidences;
3. the token budget (max_batched_tokens) is filled with decode blocks first, then prefill chunks of
   running sequences, then newly admitted requests (FCFS, while slots, tokens and blocks last);
4. one target pass over the ragged batch (`Costs.target`) + drafter prefill + per-step overhead;
5. acceptance is sampled per sequence; rejected tokens' slots are freed (the lookahead rolls back).
The state is advanced at once; completion times are stamped when the simpy timeout of the step ends.
"""
# long: one replica's engine is one job (its batch state and the iteration over it share every array);
# the per-sequence draws are in draws.py, the pricing in costs.py

from __future__ import annotations

from collections import deque
from typing import NamedTuple

import numpy as np

from dspark_sim.config.schema import DSparkScheduler
from dspark_sim.core.policies import (
    DSparkPolicy,
    FeedbackPolicy,
    NoSpecPolicy,
    StepView,
    ThresholdPolicy,
)
from dspark_sim.sim.costs import Cost
from dspark_sim.sim.draws import TraceRows, accepted_counts, drafter_confidences
from dspark_sim.sim.workload import uniforms

#: columns of a replica's step log (one row per iteration)
STEP_COLUMNS = (
    "t_start", "dt", "decoders", "verify_sum", "accepted_sum", "draft_sum", "tokens", "prefill_tokens", "queue", "running",
    "kv_blocks", "kv_peak_blocks", "draft_s", "target_s", "overhead_s", "hbm_bytes", "onchip_bytes",
    "preemptions",
)



class _StepCost(NamedTuple):
    """One iteration's time and where it went."""

    dt: float
    draft_s: float
    target_s: float
    overhead_s: float
    hbm: float
    onchip: float


class Replica:
    """The engine of one model replica (tensor_parallel GPUs)."""

    def __init__(self, index: int, sim, policy, sps) -> None:
        self.index = index
        self.sim = sim
        self.env = sim.env
        self.reqs = sim.requests
        self.out = sim.out
        self.costs = sim.costs
        self.policy = policy
        self.sps = sps  # CostModelSPS or None
        dep = sim.scenario.deployment
        self.block = dep.kv_block_tokens
        self.cap_blocks = sim.kv_blocks
        self.max_seqs = min(dep.max_batch_size, dep.max_batched_tokens)
        self.max_tokens = dep.max_batched_tokens
        self.chunk_tokens = dep.prefill_chunk_tokens
        self.static = dep.batching == "static"
        self.static_rows = 0  # static batching: the rows of the running batch, finished ones included
        self.disaggregated = sim.scenario.simulation.disaggregated_prefill
        self.gamma = sim.gamma_max
        self.speculative = not isinstance(policy, NoSpecPolicy) and sim.gamma_max > 0
        self.lookahead = (self.gamma + 1) if self.speculative else 1
        self.width = self.reqs.cond.shape[1]
        self.wants_conf = isinstance(policy, DSparkPolicy | ThresholdPolicy | FeedbackPolicy)
        spec = sim.scenario.policy
        self.calibration_error = spec.calibration_error if isinstance(spec, DSparkScheduler) else 0.0
        self.conf_rng = sim.conf_rng
        self.has_trace = self.reqs.has_trace
        self.yflat = self.reqs.trace_yields
        self.cflat = self.reqs.trace_conf
        self.pflat = self.reqs.trace_prob
        self.chains_by_step = self.reqs.chains_by_step

        cap = self.max_seqs
        self.n = 0
        self.rid = np.zeros(cap, dtype=np.int64)
        self.ctx = np.zeros(cap, dtype=np.int64)
        self.gen = np.zeros(cap, dtype=np.int64)
        self.pre_target = np.zeros(cap, dtype=np.int64)
        self.out_len = np.zeros(cap, dtype=np.int64)
        self.decoding = np.zeros(cap, dtype=bool)
        self.last_yield = np.ones(cap, dtype=np.int64)
        self.seed = np.zeros(cap, dtype=np.uint64)
        self.toff = np.zeros(cap, dtype=np.int64)
        self.tlen = np.zeros(cap, dtype=np.int64)
        self.cond = np.zeros((cap, self.width), dtype=float)

        self.waiting: deque[int] = deque()
        self.wake = None
        self.step_no = 0
        self.log: list[tuple] = []
        self.tried = np.zeros(self.width + 2, dtype=np.int64)
        self.acc_hist = np.zeros(self.width + 2, dtype=np.int64)
        self._pending_first: np.ndarray | None = None
        self._pending_done: np.ndarray | None = None
        self._preempted_this_step = 0

    # ---------------------------------------------------------------------------- queue side
    @property
    def load(self) -> int:
        return self.n + len(self.waiting)

    def submit(self, r: int) -> None:
        self.waiting.append(r)
        if self.wake is not None and not self.wake.triggered:
            self.wake.succeed()

    def process(self):
        """The engine loop (a simpy process): step while there is work, sleep when there is none."""
        env = self.env
        while True:
            if self.n == 0 and not self.waiting:
                self.wake = env.event()
                yield self.wake
                self.wake = None
            dt = self.plan(env.now)
            yield env.timeout(dt)
            self.finish(env.now)

    # ---------------------------------------------------------------------------- rare events
    def _admit(self, r: int, decoding: bool = False) -> int:
        """Put request r in slot n. Colocated: it starts prefilling. Disaggregated: it arrives with its
        prompt's KV and first token (made by a prefill machine) and decodes from this step on."""
        i = self.n
        reqs = self.reqs
        g = int(self.out.gen[r])
        if decoding:
            g = max(g, 1)
        self.rid[i] = r
        self.ctx[i] = reqs.prompt[r] + g - 1 if decoding else 0
        self.gen[i] = g
        self.pre_target[i] = reqs.prompt[r] + g
        self.out_len[i] = reqs.output[r]
        self.decoding[i] = decoding
        self.last_yield[i] = 1
        self.seed[i] = reqs.step_seed[r]
        self.toff[i] = reqs.trace_off[r]
        self.tlen[i] = reqs.trace_len[r]
        self.cond[i] = reqs.cond[r]
        self.n = i + 1
        if np.isnan(self.out.admitted[r]):
            self.out.admitted[r] = self.env.now
        return i

    def _preempt_last(self) -> None:
        i = self.n - 1
        r = int(self.rid[i])
        self.out.gen[r] = self.gen[i]
        self.out.preemptions[r] += 1
        self.waiting.appendleft(r)
        self.n = i
        self._preempted_this_step += 1

    # ---------------------------------------------------------------------------- one iteration
    def plan(self, now: float) -> float:
        """Schedule and execute one iteration; return its duration (state advanced, times pending)."""
        self._preempted_this_step = 0
        while True:
            dt = self._try_plan(now)
            if dt is not None:
                return dt
            if self.n == 0:
                raise RuntimeError("replica cannot schedule anything with an empty batch (capacity check missed)")
            self._preempt_last()  # nothing could run: free memory for the others

    def _admit_decoders(self, now: float) -> int:
        """Disaggregated prefill: admit queued requests straight into decoding while slots and KV last."""
        bs = self.block
        n = self.n
        ctx = self.ctx[:n]
        used = int(((ctx + (self.lookahead + bs - 1)) // bs).sum())
        free = self.cap_blocks - used
        reqs, out = self.reqs, self.out
        new_first = 0
        while self.waiting and self.n < self.max_seqs:
            r = self.waiting[0]
            g = max(int(out.gen[r]), 1)
            blocks = (int(reqs.prompt[r]) + g - 1 + self.lookahead + bs - 1) // bs
            if blocks > free:
                break
            self.waiting.popleft()
            if np.isnan(out.first_token[r]):
                out.first_token[r] = now
                new_first += 1
            self._admit(r, decoding=True)  # (a one-token answer is complete: it leaves after this step)
            free -= blocks
        return new_first

    def _try_plan(self, now: float) -> float | None:
        first_tokens = self._admit_decoders(now) if self.disaggregated and self.waiting else 0
        n, total = self._reserve_lookahead()
        dec = self.decoding[:n]
        all_dec = bool(dec.all())
        di = slice(0, n) if all_dec else np.flatnonzero(dec)
        c_d = self.ctx[:n][di]
        nd = len(c_d)
        view, draft_cost, verify, draft_sum = self._speculate(di, c_d, dec)
        budget = min(self.chunk_tokens, self.max_tokens - nd - int(verify.sum()))
        chunk_idx, chunk_len, free = self._fill_budget(budget, self.cap_blocks - total, all_dec, dec)
        if nd == 0 and not chunk_idx:
            return None
        if self.static and self.static_rows == 0:  # the static batch formed in this step
            self.static_rows = self.n
        ci = np.asarray(chunk_idx, dtype=np.int64)
        cq = np.asarray(chunk_len, dtype=np.int64)
        cost = self._price(nd, verify, c_d, ci, cq, draft_cost)
        tokens = first_tokens
        acc_sum = 0
        if nd:
            acc = self._accept(di, nd, verify)
            acc_sum, yielded = self._advance_decoders(di, verify, acc)
            tokens += yielded
            if self.speculative:
                assert view is not None  # set whenever there are decoders to speculate for
                self.policy.observe(view, verify, acc, cost.dt)
        first = None
        if chunk_idx:
            self.ctx[ci] += cq
            fin = ci[self.ctx[ci] >= self.pre_target[ci]]
            if len(fin):
                self.decoding[fin] = True
                self.gen[fin] += 1
                self.last_yield[fin] = 1
                tokens += len(fin)
                first = self.rid[fin]
        n = self.n
        done = self.gen[:n] >= self.out_len[:n]  # only decoding sequences can have reached it
        self._pending_first = first
        self._pending_done = done if done.any() else None
        kv_blocks = int(((self.ctx[:n] + (self.block - 1)) // self.block).sum())
        self.log.append((
            now, cost.dt, nd, int(verify.sum()), acc_sum, draft_sum, tokens, int(sum(chunk_len)), len(self.waiting), n,
            kv_blocks, self.cap_blocks - free, cost.draft_s, cost.target_s, cost.overhead_s, cost.hbm, cost.onchip,
            self._preempted_this_step,
        ))
        self.step_no += 1
        return cost.dt

    def _reserve_lookahead(self) -> tuple[int, int]:
        """Memory: every decoding sequence reserves KV blocks for its lookahead; the most recently admitted
        sequence is preempted while they do not fit. Returns (sequences, blocks needed)."""
        bs = self.block
        while True:
            n = self.n
            ctx = self.ctx[:n]
            held = (ctx + (bs - 1)) // bs
            need = np.where(self.decoding[:n], (ctx + (self.lookahead + bs - 1)) // bs, held)
            total = int(need.sum())
            if total <= self.cap_blocks or n <= 1:
                return n, total
            self._preempt_last()

    def _speculate(self, di: slice | np.ndarray, c_d: np.ndarray, dec: np.ndarray
                   ) -> tuple[StepView | None, Cost | None, np.ndarray, int]:
        """Speculation for the decoding sequences: the policy's draft lengths, the drafter's cost, the verify
        lengths. Returns (view, draft cost or None, verify lengths, draft tokens)."""
        nd = len(c_d)
        verify = np.zeros(nd, dtype=np.int64)
        if not (nd and self.speculative):
            return None, None, verify, 0
        g_d = self.gen[di]
        view = StepView(c_d, self.step_no, self.rid[di], self.max_tokens)
        draft = np.asarray(self.policy.draft_lengths(view), dtype=np.int64)
        gd = int(draft.max())
        draft_sum = int(draft.sum())
        if gd <= 0:
            return view, None, verify, draft_sum
        draft_cost = self.costs.draft(nd + self._ghost_rows(), gd, float(c_d.mean()), float(self.last_yield[di].mean()))
        if self.sps is not None:
            self.sps.set_batch(c_d, float(draft_cost.time_s), self._prefill_estimate(dec))
        conf = self._confidences(di) if self.wants_conf else None
        verify = self._decide_verify(view, draft, conf, np.maximum(self.out_len[di] - g_d - 1, 0))
        if nd + int(verify.sum()) > self.max_tokens:
            verify = _trim(verify, self.max_tokens - nd)
        return view, draft_cost, verify, draft_sum

    def _fill_budget(self, budget: int, free: int, all_dec: bool, dec: np.ndarray) -> tuple[list[int], list[int], int]:
        """The token budget left after the decode blocks: prefill chunks of running sequences, then newly
        admitted requests (FCFS, while slots, tokens and KV blocks last). Returns (slots, chunk lengths,
        free blocks)."""
        bs = self.block
        chunk_idx: list[int] = []
        chunk_len: list[int] = []
        if not all_dec and budget > 0:
            for i in np.flatnonzero(~dec).tolist():
                if budget <= 0 or free <= 0:
                    break
                c = int(self.ctx[i])
                cur = (c + bs - 1) // bs
                chunk = min(int(self.pre_target[i]) - c, budget, (cur + free) * bs - c)
                if chunk <= 0:
                    break
                free -= (c + chunk + bs - 1) // bs - cur
                budget -= chunk
                chunk_idx.append(i)
                chunk_len.append(chunk)
        reqs = self.reqs
        forming = not self.static or self.static_rows == 0  # a static batch admits only while it forms
        while forming and self.waiting and budget > 0 and self.n < self.max_seqs and not self.disaggregated:
            r = self.waiting[0]
            chunk = min(int(reqs.prompt[r] + self.out.gen[r]), budget)
            blocks = (chunk + bs - 1) // bs
            if blocks > free:
                break
            self.waiting.popleft()
            chunk_idx.append(self._admit(r))
            chunk_len.append(chunk)
            budget -= chunk
            free -= blocks
        return chunk_idx, chunk_len, free

    def _price(self, nd: int, verify: np.ndarray, c_d: np.ndarray, ci: np.ndarray, cq: np.ndarray,
               draft_cost: Cost | None) -> _StepCost:
        """The iteration's time: one target pass over the ragged batch (decode blocks, prefill chunks, a
        static batch's finished rows), the drafter's passes and prefill, the per-step overhead."""
        if len(ci):
            cc = self.ctx[ci]
            q = np.concatenate([verify + 1, cq]).astype(float)
            c = np.concatenate([c_d, cc]).astype(float)
            dprefill = self.costs.draft_prefill(cq.astype(float), cc.astype(float)) if self.speculative else None
        else:
            q = (verify + 1).astype(float)
            c = c_d.astype(float)
            dprefill = None
        ghosts = self._ghost_rows()
        if ghosts and nd:  # finished rows of a static batch: one padded token each, at a typical context
            q = np.concatenate([q, np.ones(ghosts)])
            c = np.concatenate([c, np.full(ghosts, float(c_d.mean()))])
        target = self.costs.target(q, c)
        target_s = float(target.time_s)
        hbm = float(target.hbm_bytes)
        onchip = float(target.onchip_bytes)
        draft_s = 0.0
        for extra in (draft_cost, dprefill):
            if extra is not None:
                draft_s += float(extra.time_s)
                hbm += float(extra.hbm_bytes)
                onchip += float(extra.onchip_bytes)
        overhead_s = self.costs.step_overhead_s + self.costs.sequence_overhead_s * (nd + ghosts if nd else 0)
        return _StepCost(draft_s + target_s + overhead_s, draft_s, target_s, overhead_s, hbm, onchip)

    def _accept(self, di: slice | np.ndarray, nd: int, verify: np.ndarray) -> np.ndarray:
        """Accepted draft tokens per decoding sequence (none without speculation)."""
        if not (self.speculative and verify.any()):
            return np.zeros(nd, dtype=np.int64)
        w = self.width
        u = uniforms(self.seed[di], self.gen[di], w)
        rows = self._trace_rows(di) if self.has_trace else None
        acc = accepted_counts(self.cond[di], verify, u, rows, self.yflat, self.pflat)
        self.tried += np.bincount(np.minimum(verify, acc + 1), minlength=w + 2)[: w + 2]
        self.acc_hist += np.bincount(acc, minlength=w + 2)[: w + 2]
        return acc

    def _advance_decoders(self, di: slice | np.ndarray, verify: np.ndarray, acc: np.ndarray) -> tuple[int, int]:
        """Each decoding sequence takes its accepted tokens and one more (the KV of rejected tokens rolls
        back). Returns (accepted tokens, tokens produced)."""
        y = acc + 1
        if self.disaggregated:  # arrivals whose first token (from prefill) was the whole answer
            live = self.gen[di] < self.out_len[di]
            if not live.all():
                y = y * live
                acc = acc * live
        rid_d = self.rid[di]
        self.ctx[di] += y
        self.gen[di] += y
        self.last_yield[di] = y
        out = self.out
        out.steps[rid_d] += 1
        out.verified[rid_d] += verify
        out.accepted[rid_d] += acc
        return int(acc.sum()), int(y.sum())

    def _decide_verify(self, view: StepView, draft: np.ndarray, conf, left: np.ndarray) -> np.ndarray:
        """The policy's verify lengths as the engine asks for them: each row's drafts cut to the tokens it has
        left before the policy decides, and a static batch's finished rows, which still ride in every pass (a
        token each, nothing drafted), in the batch it decides over. A batch-aware policy (DSpark's budget
        search over the SPS curve) counts them: leaving them out had it verify 3-34% more drafts a step than
        the engine at batch 16 on this project's CPU, where the curve is steep (docs/validation.md)."""
        draft = np.minimum(draft, left)
        ghosts = self._ghost_rows()
        nd = len(draft)
        if ghosts:
            ids = view.seq_ids if view.seq_ids is not None else np.arange(nd)
            view = StepView(np.concatenate([view.context_lens, np.full(ghosts, view.context_lens.mean())]),
                            view.step, np.concatenate([ids, -1 - np.arange(ghosts)]), view.max_batched_tokens)
            draft = np.concatenate([draft, np.zeros(ghosts, dtype=np.int64)])
            if conf is not None:
                conf = np.concatenate([conf, np.zeros((ghosts, conf.shape[1]))])
        verify = np.asarray(self.policy.verify_lengths(view, draft, conf), dtype=np.int64)[:nd]
        return np.clip(verify, 0, draft[:nd])

    def _ghost_rows(self) -> int:
        """Static batching: rows of finished sequences that the passes still compute."""
        return max(self.static_rows - self.n, 0) if self.static else 0

    def _prefill_estimate(self, dec: np.ndarray) -> tuple:
        """Aggregates of the prefill chunks this pass will likely carry (for SPS): running prefills."""
        if dec.all():
            return (0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
        idx = np.flatnonzero(~dec)
        c = self.ctx[idx].astype(float)
        rem = (self.pre_target[idx] - self.ctx[idx]).astype(float)
        q = np.minimum(rem, np.maximum(self.chunk_tokens - np.concatenate([[0.0], np.cumsum(rem)[:-1]]), 0.0))
        keep = q > 0
        q, c = q[keep], c[keep]
        if not len(q):
            return (0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
        kv = c + q
        pairs = q * (c + (q + 1.0) * 0.5)
        w = self.costs.window
        kvw = np.minimum(kv, w) if w else kv
        pw = q * (np.minimum(c, w) + (q + 1.0) * 0.5) if w else pairs
        return (float(len(q)), float(q.sum()), float(kv.sum()), float(kvw.sum()), float(pairs.sum()), float(pw.sum()))

    def _trace_rows(self, di: slice | np.ndarray) -> TraceRows:
        """Where the decoding sequences stand in their recorded traces."""
        step = self.out.steps[self.rid[di]] if self.chains_by_step else None
        return TraceRows(self.toff[di], self.tlen[di], self.gen[di], step)

    def _confidences(self, di: slice | np.ndarray) -> np.ndarray:
        """The drafter's confidence c_k: recorded confidences when the trace has them, else the true
        conditional, perturbed in logit space if miscalibrated."""
        rows = self._trace_rows(di) if self.cflat is not None else None
        return drafter_confidences(self.cond[di][:, : self.gamma], self.gamma, rows, self.cflat,
                                   self.calibration_error, self.conf_rng)

    def finish(self, now: float) -> None:
        """The step's simulated time has passed: stamp first tokens and completions, free finished slots."""
        out = self.out
        if self._pending_first is not None:
            r = self._pending_first
            unset = np.isnan(out.first_token[r])
            out.first_token[r[unset]] = now
            self._pending_first = None
        done = self._pending_done
        if done is None:
            return
        self._pending_done = None
        n = self.n
        rids = self.rid[:n][done]
        out.finish[rids] = now
        out.gen[rids] = self.gen[:n][done]
        keep = ~done
        k = int(keep.sum())
        for arr in (self.rid, self.ctx, self.gen, self.pre_target, self.out_len, self.decoding, self.last_yield,
                    self.seed, self.toff, self.tlen, self.cond):
            arr[:k] = arr[:n][keep]
        self.n = k
        if k == 0:
            self.static_rows = 0  # the static batch has drained: the next one may form
        if isinstance(self.policy, DSparkPolicy) and self.policy.lag:
            for r in rids.tolist():
                self.policy.forget(r)
        self.sim.on_complete(rids, now)


def _trim(verify: np.ndarray, room: int) -> np.ndarray:
    """Cap per-sequence verify lengths at the largest common cap that fits `room` draft tokens."""
    if room <= 0:
        return np.zeros_like(verify)
    top = int(verify.max())
    for cap in range(top, -1, -1):
        v = np.minimum(verify, cap)
        if int(v.sum()) <= room:
            return v
    return np.zeros_like(verify)
