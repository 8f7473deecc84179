"""What a decoding run returns: the tokens, its timings, and one record per speculative step, from
which tau, acceptance by position and the run's trace (`dspark_sim.config.traces`) are derived."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dspark_sim.config.traces import RequestRecord, StepRecord, TraceMeta


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
            confs = [_confs(s, int(i)) for i in idx]
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
