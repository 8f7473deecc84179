"""The one short spelling of a speculation policy and of an engine drafter configuration.

A policy is a `PolicySpec` everywhere it is stored; on a command line, in a validation grid or as a
row label of a drafter table it is written `KIND[:GAMMA][@THRESHOLD]`, with the schema's own kind
names, and this module is the only place that reads or writes that text:

    none                      NoSpeculation()
    fixed:3                   FixedGamma(gamma=3)
    confidence_threshold:4@0.6   ConfidenceThreshold(gamma_max=4, threshold=0.6)
    dspark:5                  DSparkScheduler(gamma_max=5)   (SPS(B) from the cost model or a table)
    goodput:8                 GoodputPolicy(gamma_max=8)

A drafter configuration (a row of the drafter table) is `DRAFTER/POLICY`, the drafter named by the
simulator's `DrafterSpec.kind` ("draft_model", "mtp", "parallel_block", "dspark"), for example
`dspark/dspark:5`; the plain-decoding row is `baseline`.
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import ValidationError

from dspark_sim.config.errors import InputError
from dspark_sim.config.schema import (
    ConfidenceThreshold,
    DSparkScheduler,
    FixedGamma,
    GoodputPolicy,
    NoSpeculation,
)

#: policy kinds that have a short spelling (batch_table and feedback need their full spec)
POLICY_KINDS = ("none", "fixed", "confidence_threshold", "dspark", "goodput")
#: the engine's drafters, by the simulator's drafter kind
ENGINE_DRAFTER_KINDS = ("draft_model", "mtp", "parallel_block", "dspark")
BASELINE = "baseline"

ShortPolicy = NoSpeculation | FixedGamma | ConfidenceThreshold | DSparkScheduler | GoodputPolicy


def parse_policy(text: str, *, source: str = "policy", field: str | None = None,
                 sps_table: Mapping[int, float] | None = None) -> ShortPolicy:
    """`KIND[:GAMMA][@THRESHOLD]` -> the policy spec; `sps_table` makes a DSpark scheduler read SPS(B)
    from that measured table instead of the cost model. Bad text is one InputError line."""
    allowed = "allowed: none, fixed:G, confidence_threshold:G[@T], dspark:G, goodput:G"
    head, _, threshold = text.strip().partition("@")
    kind, _, gamma_text = head.partition(":")
    if kind not in POLICY_KINDS:
        raise InputError(source, field, f"unknown policy {text!r} ({allowed})")
    if kind == "none":
        if gamma_text or threshold:
            raise InputError(source, field, f"'none' takes no draft length (got {text!r})")
        return NoSpeculation()
    if not gamma_text.isdigit():
        raise InputError(source, field, f"{text!r} needs a whole draft length after ':' ({allowed})")
    gamma = int(gamma_text)
    if threshold and kind != "confidence_threshold":
        raise InputError(source, field, f"only confidence_threshold takes '@THRESHOLD' (got {text!r})")
    try:
        if kind == "fixed":
            return FixedGamma(gamma=gamma)
        if kind == "goodput":
            return GoodputPolicy(gamma_max=gamma)
        if kind == "confidence_threshold":
            if threshold:
                return ConfidenceThreshold(gamma_max=gamma, threshold=float(threshold))
            return ConfidenceThreshold(gamma_max=gamma)
        if sps_table is not None:
            return DSparkScheduler(gamma_max=gamma, sps_source="table",
                                   sps_table={int(k): float(v) for k, v in sps_table.items()})
        return DSparkScheduler(gamma_max=gamma)
    except (ValidationError, ValueError) as err:
        raise InputError(source, field, f"bad policy {text!r}: {_first_problem(err)}") from None


def policy_shorthand(spec: ShortPolicy) -> str:
    """The inverse of `parse_policy` (an SPS table is not part of the text)."""
    if isinstance(spec, NoSpeculation):
        return "none"
    if isinstance(spec, FixedGamma):
        return f"fixed:{spec.gamma}"
    if isinstance(spec, ConfidenceThreshold):
        return f"confidence_threshold:{spec.gamma_max}@{spec.threshold:g}"
    return f"{spec.kind}:{spec.gamma_max}"


def draft_length(spec: ShortPolicy) -> int:
    """The most draft tokens a step of this policy proposes."""
    if isinstance(spec, NoSpeculation):
        return 0
    return spec.gamma if isinstance(spec, FixedGamma) else spec.gamma_max


def parse_drafter_config(text: str, *, source: str = "drafter table", field: str | None = None,
                         sps_table: Mapping[int, float] | None = None) -> tuple[str, ShortPolicy]:
    """`DRAFTER/POLICY` -> (drafter kind, policy spec); `baseline` -> ("none", NoSpeculation())."""
    if text == BASELINE:
        return "none", NoSpeculation()
    drafter, sep, policy = text.partition("/")
    if not sep or drafter not in ENGINE_DRAFTER_KINDS:
        raise InputError(source, field, f"unknown drafter configuration {text!r} (allowed: {BASELINE} or "
                         f"DRAFTER/POLICY with DRAFTER one of {', '.join(ENGINE_DRAFTER_KINDS)})")
    return drafter, parse_policy(policy, source=source, field=field, sps_table=sps_table)


def drafter_config(drafter: str, spec: ShortPolicy) -> str:
    """The inverse of `parse_drafter_config`."""
    return BASELINE if drafter == "none" else f"{drafter}/{policy_shorthand(spec)}"


def _first_problem(err: Exception) -> str:
    if isinstance(err, ValidationError):
        first = err.errors()[0]
        return f"{'.'.join(str(x) for x in first.get('loc', ()))}: {first.get('msg', 'invalid')}"
    return str(err)
