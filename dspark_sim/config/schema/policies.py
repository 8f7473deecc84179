"""Speculation policies: how many draft tokens each step verifies (shared by the simulator and the engine;
the policies themselves are in dspark_sim/core/policies.py)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from dspark_sim.config.schema.base import (
    NonNegFloat,
    NonNegInt,
    PositiveFloat,
    PositiveInt,
    Probability,
    Strict,
)


class NoSpeculation(Strict):
    kind: Literal["none"] = "none"


class FixedGamma(Strict):
    kind: Literal["fixed"] = "fixed"
    gamma: NonNegInt = Field(description="draft tokens proposed and verified every step")


class BatchTableGamma(Strict):
    """vLLM-style: gamma looked up from the current batch size. Keys are batch-size upper bounds."""

    kind: Literal["batch_table"] = "batch_table"
    table: dict[PositiveInt, NonNegInt] = Field(description="{max batch size: gamma}; larger batches use 0")


class GoodputPolicy(Strict):
    """SmartSpec-style: pick the gamma maximising batch goodput (expected tokens / step time)."""

    kind: Literal["goodput"] = "goodput"
    gamma_max: PositiveInt = 8


class ConfidenceThreshold(Strict):
    """Verify a sequence's draft tokens while the drafter's confidence of each stays above `threshold`."""

    kind: Literal["confidence_threshold"] = "confidence_threshold"
    gamma_max: PositiveInt = 8
    threshold: Probability = 0.5
    on: Literal["conditional", "survival"] = Field(
        default="survival", description="compare the threshold with c_k or with the prefix survival a_k"
    )


class DSparkScheduler(Strict):
    """DSpark's hardware-aware prefix scheduler (paper Algorithm 1).

    Candidates (sequence, position k) are admitted in descending prefix survival a_k while the
    expected tokens per second tau(B) * SPS(B) improves; the search stops at the first drop.
    """

    kind: Literal["dspark"] = "dspark"
    gamma_max: PositiveInt = 5
    confidence_lag_steps: NonNegInt = Field(
        default=0,
        description="use confidences from this many steps earlier (production: 2, asynchronous search)"
    )
    sps_source: Literal["costmodel", "table"] = "costmodel"
    sps_table: dict[PositiveInt, PositiveFloat] | None = Field(
        default=None,
        description="profiled {tokens per verify pass: verify steps per second}; linear interpolation"
    )
    calibration_error: NonNegFloat = Field(
        default=0.0,
        description="std of the logit-space noise on simulated confidences (0 = perfectly calibrated)"
    )
    min_verify_tokens: NonNegInt = Field(
        default=0, description="always verify at least this many draft tokens"
    )


class FeedbackController(Strict):
    """The seed's "dynamic threshold": scale draft aggressiveness with utilisation and latency."""

    kind: Literal["feedback"] = "feedback"
    gamma_max: PositiveInt = 6
    initial_threshold: Probability = 0.4
    target_utilisation: Probability = Field(
        default=0.8, description="batch tokens / max batched tokens to aim for"
    )
    target_tpot_ms: PositiveFloat | None = None
    gain: PositiveFloat = Field(default=0.05, description="threshold change per step per unit of error")


PolicySpec = Annotated[
    NoSpeculation | FixedGamma | BatchTableGamma | GoodputPolicy | ConfidenceThreshold | DSparkScheduler
    | FeedbackController,
    Field(discriminator="kind"),
]
