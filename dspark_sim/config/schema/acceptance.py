"""Acceptance models: how likely each draft token is to be accepted (i.i.d., by position, traces)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator

from dspark_sim.config.schema.base import (
    NonNegFloat,
    NonNegInt,
    PositiveFloat,
    PositiveInt,
    Probability,
    Strict,
)


class IIDAcceptance(Strict):
    """Each draft token accepted independently with probability `alpha` (Leviathan et al.)."""

    kind: Literal["iid"] = "iid"
    alpha: Probability


class PerPositionAcceptance(Strict):
    """Conditional acceptance by draft position: conditional[k-1] = P(token k accepted | tokens < k were).

    Positions past the end of the list repeat its last value (DSpark paper Fig. 2 shapes).
    """

    kind: Literal["per_position"] = "per_position"
    conditional: list[Probability] = Field(min_length=1)


class HistogramAcceptance(Strict):
    """Empirical distribution of accepted draft tokens per step when drafting without limit.

    probabilities[j] = P(j draft tokens would be accepted); the last bin means "that many or more".
    """

    kind: Literal["histogram"] = "histogram"
    probabilities: list[NonNegFloat] = Field(min_length=2)

    @field_validator("probabilities")
    @classmethod
    def _sums_to_one(cls, v: list[float]) -> list[float]:
        total = sum(v)
        if not 0.999 <= total <= 1.001:
            raise ValueError(f"probabilities must sum to 1 (they sum to {total:.4f})")
        return v


class TraceAcceptance(Strict):
    """Recorded per-step acceptance (SpecDecode-Bench JSONL or the engine's trace format).

    `field` names the per-request list of yields (accepted + 1) indexed by output position.
    """

    kind: Literal["trace"] = "trace"
    path: str = Field(description="JSONL file, relative to the scenario file's folder or absolute")
    field: str = Field(
        default="accept_len_eagle", description="per-request list of step yields (accepted + 1)"
    )
    confidence_field: str | None = Field(
        default=None,
        description="per-request list, by output position, of the drafter's confidence in its token there; "
        "replayed as the drafter's confidence c_k (else the request's empirical acceptance is used)",
    )
    probability_field: str | None = Field(
        default=None,
        description="per-request list, by output position, of the probability that the draft token there is "
        "accepted (the engine's traces: alpha = sum min(p, q)); each simulated step then draws acceptance from "
        "these instead of replaying `field`, one recorded draw (greedy traces: the same, alpha being 0 or 1)",
    )
    max_requests: PositiveInt | None = None
    records: Literal["random", "in_order"] = Field(
        default="random",
        description="which record each request replays: one drawn at random (a sample of the traffic), or, "
        "in_order, record (first_record + i) mod n for request i, so that n requests replay every record "
        "once (no sampling noise where a run is compared with a mean over known prompts, as in validate)",
    )
    first_record: NonNegInt = Field(default=0, description="in_order: the record request 0 replays")
    chains_by: Literal["position", "step"] = Field(
        default="position",
        description="how chains (a list of values per entry, one per draft token) in confidence_field and "
        "probability_field are indexed: by the output position a step starts at (the engine's chain_* fields, "
        "drafted along the target's own tokens), or by the request's step number (the engine's step_* fields, "
        "recorded step by step from a live speculative run, wrapping around when a request takes more steps)",
    )


class PerRequestAcceptance(Strict):
    """Each request draws its own i.i.d. alpha from Beta(mean, concentration): traffic is heterogeneous."""

    kind: Literal["per_request"] = "per_request"
    mean_alpha: Probability
    concentration: PositiveFloat = Field(default=20.0, description="Beta a + b; larger = less spread between requests")
    decay_per_position: Annotated[float, Field(ge=0.0, le=1.0)] = Field(
        default=0.0, description="conditional acceptance shrinks by this fraction per later draft position"
    )


AcceptanceModel = Annotated[
    IIDAcceptance | PerPositionAcceptance | HistogramAcceptance | TraceAcceptance | PerRequestAcceptance,
    Field(discriminator="kind"),
]
