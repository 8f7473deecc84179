"""Workloads: request lengths, arrival processes and traffic domains."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from dspark_sim.config.schema.acceptance import AcceptanceModel
from dspark_sim.config.schema.base import NonNegFloat, NonNegInt, PositiveFloat, PositiveInt, Strict


class FixedLength(Strict):
    kind: Literal["fixed"] = "fixed"
    tokens: PositiveInt


class UniformLength(Strict):
    kind: Literal["uniform"] = "uniform"
    min_tokens: PositiveInt
    max_tokens: PositiveInt

    @model_validator(mode="after")
    def _order(self) -> UniformLength:
        if self.max_tokens < self.min_tokens:
            raise ValueError("max_tokens must be >= min_tokens")
        return self


class LognormalLength(Strict):
    kind: Literal["lognormal"] = "lognormal"
    median_tokens: PositiveFloat
    sigma: PositiveFloat = Field(description="std of log(length)")
    min_tokens: PositiveInt = 1
    max_tokens: PositiveInt = 131072


class EmpiricalLength(Strict):
    kind: Literal["empirical"] = "empirical"
    values: list[PositiveInt] = Field(min_length=1, description="lengths sampled uniformly with replacement")


LengthDist = Annotated[
    FixedLength | UniformLength | LognormalLength | EmpiricalLength, Field(discriminator="kind")
]


class PoissonArrivals(Strict):
    kind: Literal["poisson"] = "poisson"
    rate_per_s: PositiveFloat


class GammaArrivals(Strict):
    kind: Literal["gamma"] = "gamma"
    rate_per_s: PositiveFloat
    cv: PositiveFloat = Field(description="coefficient of variation of inter-arrival times (1 = Poisson)")


class ConstantArrivals(Strict):
    kind: Literal["constant"] = "constant"
    rate_per_s: PositiveFloat


class ClosedLoopArrivals(Strict):
    """N users; each sends its next request `think_time_s` after its previous one ends."""

    kind: Literal["closed_loop"] = "closed_loop"
    concurrency: PositiveInt
    think_time_s: NonNegFloat = 0.0


class TraceArrivals(Strict):
    """Replay arrival times and lengths (and optionally per-step acceptance) from JSONL or CSV."""

    kind: Literal["trace"] = "trace"
    path: str
    time_scale: PositiveFloat = Field(
        default=1.0, description="multiply recorded inter-arrival times by this"
    )


ArrivalSpec = Annotated[
    PoissonArrivals | GammaArrivals | ConstantArrivals | ClosedLoopArrivals | TraceArrivals,
    Field(discriminator="kind"),
]


class Domain(Strict):
    """One slice of traffic (math, code, chat) with its own lengths and acceptance."""

    name: str
    weight: PositiveFloat = 1.0
    prompt_tokens: LengthDist | None = None
    output_tokens: LengthDist | None = None
    acceptance: AcceptanceModel | None = None


class WorkloadSpec(Strict):
    arrivals: ArrivalSpec = Field(default_factory=lambda: PoissonArrivals(rate_per_s=1.0))
    num_requests: PositiveInt = 1000
    prompt_tokens: LengthDist = Field(default_factory=lambda: FixedLength(tokens=512))
    output_tokens: LengthDist = Field(default_factory=lambda: FixedLength(tokens=256))
    domains: list[Domain] = Field(default_factory=list, description="mixture of traffic slices (optional)")
    warmup_requests: NonNegInt = Field(
        default=0, description="first N finished requests left out of the metrics"
    )
    lengths_from_trace: bool = Field(
        default=False,
        description="requests replaying an acceptance trace (acceptance kind trace) take that record's prompt "
        "and output lengths, record i for request i (in file order from the trace's first_record, wrapping)",
    )
