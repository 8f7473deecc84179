"""The bundled engine's runs as the simulator sees them, and the simulated figures read back the engine's way.

`validate` and `validate --drafters` both predict a run of the engine by simulating a scenario that says
how this engine works (padded verify blocks, attention over the whole static cache, a closed static
batch, acceptance replayed from a trace): those are facts about the engine, not fitted knobs. Torch-free.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dspark_sim.config.errors import InputError
from dspark_sim.config.loader import scenario_from_dict
from dspark_sim.config.measurements import EngineProfile
from dspark_sim.config.schema import HardwareProfile, ModelSpec, Scenario
from dspark_sim.sim.replica import STEP_COLUMNS
from dspark_sim.validate.cases import Case, policy_spec
from dspark_sim.validate.trace_fields import trace_confidence_field, trace_probability_field

_COL = {name: i for i, name in enumerate(STEP_COLUMNS)}


def _deployment(hw: HardwareProfile, target: ModelSpec, drafter: dict | None, batch: int,
                cache_tokens: int) -> dict[str, Any]:
    return {
        "hardware": hw.model_dump(),
        "model": target.model_dump(),
        "drafter": drafter if drafter is not None else {"kind": "none"},
        "max_batch_size": batch,
        "max_batched_tokens": 1 << 20,
        "prefill_chunk_tokens": 1 << 20,
        "verify_padding": "pad_to_max",
        "batching": "static",
        "static_kv_cache_tokens": cache_tokens,
        "memory_utilisation": 1.0,
        "activation_reserve_gb": 0.0,
    }


def engine_run_scenario(name: str, seed: int, hw: HardwareProfile, target: ModelSpec, drafter: dict | None,
                        policy: dict | None, batch: int, prompt_tokens: int, new_tokens: int, cache_tokens: int,
                        trace_path: Path, source: str = "validate", probability_field: str | None = None,
                        first_record: int | None = None, confidence_field: str = "confidence",
                        chains_by: str = "position") -> Scenario:
    """The simulator's description of one run of the bundled engine: a closed static batch of `batch`
    requests, verify blocks padded to the longest, attention over the whole static cache, acceptance
    (and the drafter's confidences) replayed from a trace, or drawn each step from its recorded
    `probability_field` (2-D fields: chains indexed `chains_by` position or step); records drawn at random,
    or from `first_record` on in order. drafter None: plain decoding."""
    speculative = drafter is not None
    raw = {
        "name": name,
        "seed": seed,
        "deployment": _deployment(hw, target, drafter, batch, cache_tokens),
        "acceptance": {"kind": "trace", "path": str(trace_path), "field": "accept_len",
                       "confidence_field": confidence_field, "probability_field": probability_field,
                       "chains_by": chains_by,
                       **({"records": "in_order", "first_record": first_record} if first_record is not None else {})},
        "policy": policy if speculative else {"kind": "none"},
        "workload": {
            "arrivals": {"kind": "closed_loop", "concurrency": batch},
            "num_requests": batch,
            "prompt_tokens": {"kind": "fixed", "tokens": prompt_tokens},
            "output_tokens": {"kind": "fixed", "tokens": new_tokens},
        },
        "simulation": {"simulate_baseline": False, "per_request_output": "none"},
    }
    return scenario_from_dict(raw, source)


def full_batch_window(sim: Any, batch: int) -> tuple[float, float]:
    """(tokens, seconds) of the simulated steps in which all `batch` requests were decoding: the
    counterpart of the engine's `GenerationResult.full_batch_tokens_per_s`."""
    log = np.array(sim.replicas[0].log, dtype=float)
    full = (log[:, _COL["decoders"]] == batch) & (log[:, _COL["prefill_tokens"]] == 0)
    return float(log[full, _COL["tokens"]].sum()), float(log[full, _COL["dt"]].sum())


def decode_tokens_and_passes(sim: Any) -> tuple[float, float, float]:
    """Tokens gained and sequence-passes over every decode step of a run: tau pooled as the engine's
    measurement pools it (gained / passes over all its rounds). A mean of per-run taus would weight a
    run of few long steps like one of many short ones: at batch 1, greedy DSpark, 4.15 against 3.32
    pooled on the same simulations (per-prompt tau varies by 40% there)."""
    log = np.asarray(sim.replicas[0].log, dtype=float).reshape(-1, len(STEP_COLUMNS))
    dec = log[:, _COL["decoders"]]
    return (float((log[:, _COL["accepted_sum"]] + dec).sum()), float(dec.sum()),
            float(log[:, _COL["verify_sum"]].sum()))


def case_scenario(case: Case, profile: EngineProfile, hw: HardwareProfile, trace_path: Path,
                  sps_table: dict[int, float], cache_tokens: int, seed: int, speculative: bool,
                  first_record: int | None = None) -> Scenario:
    """One validation case as the simulator sees it (the engine's draft model, a 2-token catch-up pass)."""
    if profile.draft is None:
        raise InputError("profile", "draft", "validate predicts the engine's draft-model runs: the profile needs "
                         "the draft's passes (a profile of the pair from `dspark-sim profile`)")
    drafter = {"kind": "draft_model", "model": profile.draft.model_dump(), "first_pass_tokens": 2.0}
    policy = policy_spec(case.policy, sps_table).model_dump()
    confidence_field = trace_confidence_field(case.policy, trace_path, case.batch_size)
    return engine_run_scenario(f"validate {case.label}", seed, hw, profile.target, drafter if speculative else None,
                               policy, case.batch_size, case.prompt_tokens, case.new_tokens, cache_tokens, trace_path,
                               probability_field=trace_probability_field(case.policy, trace_path, case.batch_size),
                               first_record=first_record, confidence_field=confidence_field,
                               chains_by="step" if confidence_field.startswith("step_") else "position")
