"""Speculation policies under TP: built once per run, decided by rank 0 for every rank."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from dspark_sim.config.schema import DSparkScheduler, GoodputPolicy
from dspark_sim.core.policies import Policy, make_policy
from dspark_sim.engine.model import Transformer
from dspark_sim.engine.sps import profile_sps
from dspark_sim.engine.tp.group import TPGroup


def engine_policy(spec: Any, target: Transformer, batch: int) -> Any:
    """The runtime policy of a policy spec on this engine. A DSpark or goodput policy without a measured
    SPS(B) table gets one profiled on `target` now (the engine has no cost model to read it from):
    under TP every rank runs those passes together, and rank 0's curve is the one that decides
    (LeaderPolicy). Other specs are returned as they are (the loops build them)."""
    needs_curve = isinstance(spec, GoodputPolicy) or (isinstance(spec, DSparkScheduler)
                                                       and spec.sps_source != "table")
    if needs_curve:
        return make_policy(spec, sps=profile_sps(target, batch, spec.gamma_max + 1))
    return spec


class LeaderPolicy:
    """A speculation policy whose draft / verify lengths rank 0 decides and broadcasts to the others.

    Every rank still calls `observe` (its own copy of the policy state is harmless: only rank 0's is
    read). With tp 1 it is the policy itself. A policy whose lengths follow from the batch's shape alone
    (`decides_from_shape`: no speculation, fixed gamma, a batch-size table) is decided by every rank for
    itself: each computes the same lengths, and the two host broadcasts a step would cost (about 0.8 ms
    together over gloo on the H200 machines, docs/validation.md) are saved.
    """

    def __init__(self, policy: Any, tp: TPGroup):
        self.policy: Policy = policy if hasattr(policy, "draft_lengths") else make_policy(policy)
        self.tp = tp
        self.shape_only = bool(getattr(self.policy, "decides_from_shape", False))

    def __getattr__(self, name: str) -> Any:  # gamma_max and anything else the loop reads
        return getattr(self.__dict__["policy"], name)

    def _decide(self, fn: Callable[[], Any], n: int) -> np.ndarray:
        if self.tp.world == 1 or self.shape_only:
            return np.asarray(fn(), dtype=np.int64)
        buf = torch.zeros(n, dtype=torch.int64)
        if self.tp.leader:
            buf = torch.as_tensor(np.asarray(fn(), dtype=np.int64).reshape(n))
        dist.broadcast(buf, src=0, group=self.tp.cpu_group)
        return buf.numpy()

    def draft_lengths(self, view: Any) -> np.ndarray:
        return self._decide(lambda: self.policy.draft_lengths(view), len(view.context_lens))

    def verify_lengths(self, view: Any, draft: Any, confidences: Any = None) -> np.ndarray:
        return self._decide(lambda: self.policy.verify_lengths(view, draft, confidences), len(view.context_lens))

    def observe(self, view: Any, verified: Any, accepted: Any, step_time_s: float) -> None:
        self.policy.observe(view, verified=verified, accepted=accepted, step_time_s=step_time_s)
