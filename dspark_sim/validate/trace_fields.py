"""Which fields of the held-apart acceptance traces a validation case replays in the simulator.

`validate` records one trace per temperature (`measure.acceptance_trace`): per output position the yield
and acceptance probability given the target's tokens, the chains the draft drafts from each position, and,
for sampled DSpark, the live steps its policy took at each batch size of the grid. A case replays the
fields that match how its policy decides. Torch-free: `validate --repredict` reads traces without the engine.
"""

from __future__ import annotations

import json
from pathlib import Path

from dspark_sim.config.io import open_text, write_atomic
from dspark_sim.validate.cases import Case, policy_spec


def _first_record(path: Path) -> dict:
    with open_text(path) as fh:
        first: dict = json.loads(fh.readline() or "{}")
    return first


def _trace_has(path: Path, field: str) -> bool:
    """Whether a JSONL trace's records carry `field` (its first record says)."""
    return field in _first_record(path)


def _is_dspark(policy: str) -> bool:
    return policy_spec(policy).kind == "dspark"


def live_step_fields(batch: int) -> tuple[str, str]:
    """The trace fields holding the live steps recorded with the policy deciding `batch` rows jointly
    (confidence, acceptance probability): batch 1's have no suffix, the names traces recorded before
    other batch sizes were added use, so those traces still read."""
    if batch == 1:
        return "step_confidence", "step_accept_prob"
    return f"step_confidence_b{batch}", f"step_accept_prob_b{batch}"


def attach_live_steps(records: list[dict], steps: list[dict], batch: int, policy: str) -> None:
    """Store `live_steps` output (one entry per record, in order) in the records under the fields of `batch`."""
    conf_name, prob_name = live_step_fields(batch)
    for rec, live in zip(records, steps, strict=True):
        rec.update({conf_name: live["step_confidence"], prob_name: live["step_accept_prob"]}, step_policy=policy)


def _live_steps_of(policy: str, path: Path, batch: int = 1) -> str | None:
    """The confidence field of the live steps the trace holds under `policy` (validate records them for the
    grid's longest DSpark policy at each sampled temperature and batch size): those recorded at `batch`,
    else batch 1's (a trace recorded at batch 1 only); None without any."""
    first = _first_record(path)
    if first.get("step_policy") != policy:
        return None
    for name in (live_step_fields(batch)[0], live_step_fields(1)[0]):
        if name in first:
            return name
    return None


def trace_probability_field(policy: str, trace_path: Path, batch: int = 1) -> str | None:
    """Which per-position acceptance probability of an engine trace the simulator draws from.

    The draft model's traces record, per output position, the probability its token there is accepted
    given the target's tokens before it: exactly what each step's draw needs (block drafters' traces only
    hold their first block position's, so `validate --drafters` replays their yields instead). A policy
    that reads the confidences (DSpark) gets the one coupled to them (sampled traces' accept_prob:
    min(1, p(x)/q(x)) of the token x whose q(x) is the confidence), from the chains the draft drafts
    from each position where the trace has them (`trace_confidence_field`); the others the expectation
    over the draft's sample (alpha), which has the same mean and less noise."""
    if not _trace_has(trace_path, "alpha"):
        return None
    live = _live_steps_of(policy, trace_path, batch)
    if live is not None:
        return live.replace("step_confidence", "step_accept_prob")
    if _is_dspark(policy):
        for name in ("chain_accept_prob", "accept_prob"):
            if _trace_has(trace_path, name):
                return name
    return "alpha"


def trace_confidence_field(policy: str, trace_path: Path, batch: int = 1) -> str:
    """The draft's confidences a policy reads in the simulator: DSpark sampled, those of the live steps
    the trace recorded under this very policy at this batch size (`acceptance_trace.live_steps`: the
    states live steps start in); DSpark greedy, those of the chains the draft drafts from each position
    along its own tokens (where the trace has them: the engine's scheduler reads exactly these); else the
    confidence at each position given the target's tokens."""
    live = _live_steps_of(policy, trace_path, batch)
    if live is not None:
        return live
    if _is_dspark(policy) and _trace_has(trace_path, "chain_confidence"):
        return "chain_confidence"
    return "confidence"


def trace_records(path: Path) -> int:
    """How many request records a JSONL trace holds."""
    with open_text(path) as fh:
        return sum(1 for line in fh if line.strip())


def simulated_runs(case: Case, repeats: int, records: int) -> int:
    """How many simulated static batches predict a case: at least `repeats` x its rounds, and enough that
    the records, replayed in order, are each used equally often (whole passes over the trace).

    Why: drawn at random, 96 draws from 96 greedy records put the prediction's tau 2.7% (one s.d.) off
    the trace's own mean, on top of the trace's sampling error against the measured prompts."""
    want = max(repeats * case.rounds * case.batch_size, records)
    passes = -(-want // records)
    return -(-(passes * records) // case.batch_size)


def prompt_length_trace(trace_path: Path, prompt_tokens: int, out_dir: Path) -> Path:
    """The trace's records of prompts of this length, as their own file in `out_dir` (the whole trace when
    it has no such records, or no others).

    Why: the held-apart traces hold every grid prompt length, and acceptance depends on it: the same
    windows cut at 256 tokens gave greedy tau 3.61 at gamma 5 where cut at 64 they gave 3.98 (H200), while
    a simulation drawing from both predicted 3.72-3.93 for each."""
    with open_text(trace_path) as fh:
        lines = fh.read().splitlines()
    keep = [ln for ln in lines if ln.strip() and json.loads(ln).get("prompt_len") == prompt_tokens]
    if not keep or len(keep) == len([ln for ln in lines if ln.strip()]):
        return trace_path
    stem, dot, ext = trace_path.name.partition(".")
    out = out_dir / f"{stem}-P{prompt_tokens}{dot}{ext}"
    write_atomic(out, "\n".join(keep) + "\n")
    return out
