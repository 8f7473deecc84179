"""What the cost model predicts for the passes and whole steps an engine profile measured.

`calibrate` fits the cost model by comparing these predictions with the measurements; `validate` prices
the engine's steps the same way (`engine_coster`), so a fit and a prediction never disagree on what a
step is made of.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dspark_sim.config.errors import InputError
from dspark_sim.config.measurements import EngineProfile, StepSample
from dspark_sim.config.schema import DrafterSpec, HardwareProfile, ModelSpec
from dspark_sim.core.costmodel import StepCoster, forward_cost
from dspark_sim.core.passes import BatchShape

#: KV-cache dtypes the engine stores as such; a profile sample of another dtype is priced as the model's own.
_ENGINE_KV_DTYPES = ("fp32", "bf16", "fp16", "int8")


@dataclass(frozen=True)
class Samples:
    """Profile samples grouped by role, as arrays for one vectorised cost evaluation per role."""

    roles: dict[tuple[str, str], tuple[ModelSpec, BatchShape, np.ndarray]]  # (role, kv dtype) -> (arch, shapes, index)
    measured: np.ndarray


def sample_shapes(profile: EngineProfile) -> Samples:
    """The profile's pass samples as batch shapes, one group per (role, KV dtype)."""
    groups: dict[tuple[str, str], list[int]] = {}
    for i, s in enumerate(profile.samples):  # a profile may time several KV-cache dtypes: each priced as itself
        groups.setdefault((s.role, s.kv_dtype), []).append(i)
    roles = {}
    for (role, kv_dtype), idx in groups.items():
        arch = profile.target if role == "target" else profile.draft
        if arch is None:
            raise InputError("profile", "draft", "samples for role 'draft' but no draft architecture")
        ss = [profile.samples[i] for i in idx]
        b = np.array([s.batch_size for s in ss], dtype=float)
        q = np.array([s.query_tokens for s in ss], dtype=float)
        att = np.array([s.attended_tokens for s in ss], dtype=float)
        arch = arch.model_copy(update={"kv_dtype": kv_dtype if kv_dtype in _ENGINE_KV_DTYPES else arch.kv_dtype})
        # the engine attends over a static cache bucket: every query sees `attended` keys
        shape = BatchShape(b, b * q, b * att, b * att, b * q * att, b * q * att)
        roles[(role, kv_dtype)] = (arch, shape, np.array(idx))
    measured = np.array([s.median_s for s in profile.samples], dtype=float)
    return Samples(roles, measured)


def predict_samples(samples: Samples, hw: HardwareProfile) -> np.ndarray:
    """Each profiled pass's predicted time, seconds, in the profile's sample order."""
    out = np.zeros_like(samples.measured)
    for arch, shape, idx in samples.roles.values():
        out[idx] = np.asarray(forward_cost(arch, hw, shape, 1, include_embedding=True).time_s)
    return out


def drafter_for_engine(draft: ModelSpec | None) -> DrafterSpec:
    """The engine's autoregressive draft model as a DrafterSpec for the simulator."""
    if draft is None:
        return DrafterSpec(kind="none")
    return DrafterSpec(kind="draft_model", model=draft)


def engine_coster(profile: EngineProfile, hw: HardwareProfile, attended_tokens: int | None) -> StepCoster:
    """How the bundled engine runs: a draft model whose first pass digests 2 tokens, verify blocks
    padded to the batch's longest, attention over the whole static cache."""
    drafter = drafter_for_engine(profile.draft)
    if drafter.kind == "draft_model":
        drafter = drafter.model_copy(update={"first_pass_tokens": 2.0})
    return StepCoster(profile.target, drafter, hw, 1, pad_verify=True, static_kv_tokens=attended_tokens)


def steps_of(profile: EngineProfile, temperature: float | None, policy: str = "fixed") -> list[StepSample]:
    """The profile's whole-step samples of one policy, at one temperature (None: every temperature)."""
    return [s for s in profile.steps
            if (temperature is None or s.temperature == temperature) and s.policy == policy]


def predict_steps(profile: EngineProfile, hw: HardwareProfile, steps: list[StepSample]) -> np.ndarray:
    """Whole engine steps as the simulator prices them: draft + verify + per-step overhead, or a plain
    decode pass + the plain loop's overhead; vectorised per static-cache length."""
    out = np.zeros(len(steps))
    groups: dict[int, list[int]] = {}
    for i, s in enumerate(steps):
        groups.setdefault(s.attended_tokens, []).append(i)
    for attended, idx in groups.items():
        coster = engine_coster(profile, hw, attended)
        b = np.array([steps[i].batch_size for i in idx], dtype=float)
        g = np.array([steps[i].gamma for i in idx], dtype=float)
        c = np.array([steps[i].context_tokens for i in idx], dtype=float)
        spec = (np.asarray(coster.draft(b, g, c).time_s) + np.asarray(coster.verify(b, g, c).time_s)
                + coster.step_overhead_s())
        plain = np.asarray(coster.baseline(b, c).time_s) + coster.baseline_step_overhead_s(b)
        out[idx] = np.where(g == 0, plain, spec)
    return out


def dspark_steps_without_scheduler(profile: EngineProfile, hw: HardwareProfile,
                                   steps: list[StepSample]) -> np.ndarray:
    """DSpark steps priced as fixed-gamma steps would be: the draft of `gamma` tokens, the verify pass
    at each step's chosen width (averaged over the recorded widths), the per-step overhead. What the
    measured step takes beyond this is the scheduler's own decision time."""
    out = np.zeros(len(steps))
    for i, s in enumerate(steps):
        coster = engine_coster(profile, hw, s.attended_tokens)
        counts = s.verify_counts or {s.gamma: 1}
        k = np.array(sorted(counts), dtype=float)
        w = np.array([counts[int(j)] for j in k], dtype=float)
        b, c = float(s.batch_size), float(s.context_tokens)
        draft = float(np.asarray(coster.draft(b, float(s.gamma), c).time_s))
        verify = np.asarray(coster.verify(np.full_like(k, b), k, np.full_like(k, c)).time_s, dtype=float)
        out[i] = draft + float((verify * w).sum() / w.sum()) + coster.step_overhead_s()
    return out


def sps_table(profile: EngineProfile, hw: HardwareProfile) -> dict[int, float]:
    """Verify steps per second at B tokens per verify pass, from the calibrated model.

    Each budget B is priced as the profiled target pass with B sequences of one token (at the median
    profiled context), plus the per-step overhead: the curve DSpark's prefix scheduler searches over.
    """
    target = [s for s in profile.samples if s.role == "target"]
    if not target:
        return {}
    attended = float(np.median([s.attended_tokens for s in target]))
    max_tokens = max(s.batch_size * s.query_tokens for s in target)
    budgets = np.unique(np.round(np.geomspace(1, max_tokens, num=min(max_tokens, 24))).astype(int))
    b = budgets.astype(float)
    shape = BatchShape(b, b, b * attended, b * attended, b * attended, b * attended)
    t = np.asarray(forward_cost(profile.target, hw, shape, 1).time_s) + hw.overheads.per_step_us * 1e-6
    return {int(k): float(1.0 / v) for k, v in zip(budgets, t, strict=True)}
