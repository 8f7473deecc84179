"""Engine profiles combined: rounds of one grid merged, timings brought to one host speed. Torch-free, so
that `validate --repredict` merges a folder's profile rounds on a machine without the engine."""

from __future__ import annotations

import statistics

import numpy as np

from dspark_sim.config.measurements import EngineProfile, PassSample, StepSample


def timing_summary(times: list[float]) -> tuple[float, float]:
    """(median, spread) of a shape's timings: the spread is (p90 - p10) / median, 0 below three timings."""
    med = statistics.median(times)
    if len(times) >= 3:
        p10, p90 = np.percentile(times, [10, 90])
        return med, float((p90 - p10) / med)
    return med, 0.0


def scaled(value: float, probe_s: float | None, reference_s: float) -> float:
    """A timing brought to the reference speed: taken while the yardstick read `probe_s` (slower than the
    reference: the timing shrinks)."""
    return value if probe_s is None else value * reference_s / probe_s


def at_reference_speed(profile: EngineProfile, reference_s: dict[str, float]) -> EngineProfile:
    """The profile with every timing brought to the host speed at which the yardsticks read `reference_s`
    (by kind: a pass by its model's, a step by the step yardstick; host_speed.py); timings taken without a
    yardstick reading stay as they are."""
    samples = []
    for s in profile.samples:
        if s.host_probe_s is None:
            samples.append(s)
            continue
        ref = reference_s[s.role]
        times = [scaled(t, p, ref) for t, p in zip(s.times_s, s.host_probe_s, strict=True)]
        med, spread = timing_summary(times)
        samples.append(s.model_copy(update={"times_s": times, "median_s": med, "spread": spread,
                                            "host_probe_s": [ref] * len(times)}))
    ref = reference_s["step"]
    steps = [st if st.host_probe_s is None else st.model_copy(update={
        "step_s": scaled(st.step_s, st.host_probe_s, ref), "draft_s": scaled(st.draft_s, st.host_probe_s, ref),
        "verify_s": scaled(st.verify_s, st.host_probe_s, ref), "host_probe_s": ref})
        for st in profile.steps]
    return profile.model_copy(update={"samples": samples, "steps": steps})


def merge_profiles(rounds: list[EngineProfile], fastest_steps: bool = False) -> EngineProfile:
    """Profiles of one grid taken at different times -> one profile: every pass shape's repeats pooled
    (median and spread recomputed), every step configuration's median run (lower middle), or with
    `fastest_steps` its fastest.

    Why: `validate` profiles in rounds between its measurement rounds, so that the calibration sees the
    same slow and fast spells of a shared host as the measurements it predicts. On a GPU a whole step is
    host-bound and a busy host only ever slows it (docs/validation.md): there the fastest
    round is the machine's own speed, as the fastest timed repeat is on the measuring side."""
    if len(rounds) == 1:
        return rounds[0]
    passes: dict[tuple, list[PassSample]] = {}
    for prof in rounds:
        for s in prof.samples:
            passes.setdefault((s.role, s.batch_size, s.query_tokens, s.context_tokens, s.attended_tokens,
                               s.kv_dtype), []).append(s)
    samples = []
    for group in passes.values():
        times = [t for s in group for t in s.times_s]
        med, spread = timing_summary(times)
        probes = (None if any(s.host_probe_s is None for s in group)
                  else [p for s in group for p in s.host_probe_s or []])
        samples.append(group[0].model_copy(update={"times_s": times, "median_s": med, "spread": spread,
                                                   "host_probe_s": probes}))
    steps_by: dict[tuple, list[StepSample]] = {}
    for prof in rounds:
        for st in prof.steps:
            steps_by.setdefault((st.batch_size, st.gamma, st.context_tokens, st.attended_tokens, st.temperature,
                                 st.baseline_loop, st.policy), []).append(st)
    steps = [sorted(g, key=lambda st: st.step_s)[0 if fastest_steps else (len(g) - 1) // 2] for g in steps_by.values()]
    return rounds[0].model_copy(update={"samples": samples, "steps": steps})
