"""Sweep files (`dspark-sim sweep`) and capacity plans (`dspark-sim plan`)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from dspark_sim.config.schema.base import NonNegFloat, NonNegInt, PositiveFloat, PositiveInt, Strict
from dspark_sim.config.schema.scenario import SLOSpec


class ParameterRange(Strict):
    """A numeric range for one swept field.

    Random mode draws from it (log-uniformly when `log`); grid mode takes `num` evenly spaced values
    (geometrically spaced when `log`). `integer` rounds every value to a whole number.
    """

    min: float
    max: float
    log: bool = Field(default=False, description="sample / space on a log scale (min must be > 0)")
    integer: bool = Field(default=False, description="round values to whole numbers (duplicates are dropped)")
    num: PositiveInt | None = Field(
        default=None, description="grid mode: how many values to take from the range"
    )

    @model_validator(mode="after")
    def _check(self) -> ParameterRange:
        if self.max < self.min:
            raise ValueError("max must be >= min")
        if self.log and self.min <= 0:
            raise ValueError("a log range needs min > 0")
        return self


SweepValues = Annotated[list[Any], Field(min_length=1)]


class SweepSpec(Strict):
    """A sweep file: many points, each the base scenario with some fields set, for `predict` or `run`.

    `parameters` maps a `--set` path (e.g. `workload.arrivals.concurrency`, `acceptance.alpha`,
    `deployment.hardware`) to a list of values or a range. `groups` are dimensions whose values set
    several fields together, e.g. a policy with its drafter: `{speculation: {mtp1: {policy: ...,
    deployment.drafter: ...}, dspark: {...}}}`. Grid mode takes every combination; random mode draws
    `samples` points (lists uniformly, ranges uniformly or log-uniformly).
    """

    name: str
    description: str = ""
    base: str = Field(description="the base scenario YAML, relative to the sweep file's folder (or absolute)")
    set: list[str] = Field(default_factory=list, description="`--set`-style overrides applied to every point")
    command: Literal["predict", "run"] = "predict"
    mode: Literal["grid", "random"] = "grid"
    samples: PositiveInt | None = Field(default=None, description="random mode: how many points to draw")
    seed: NonNegInt = Field(
        default=0, description="drives random sampling and, with each point's values, its seed"
    )
    parameters: dict[str, SweepValues | ParameterRange] = Field(
        default_factory=dict, description="{--set path: list of values | {min, max, log, integer, num}}"
    )
    groups: dict[str, dict[str, dict[str, Any]]] = Field(
        default_factory=dict, description="{dimension: {label: {--set path: value, ...}}}: fields set together"
    )
    seed_from: list[str] | None = Field(
        default=None,
        description="parameters/groups that feed each point's seed (None = all). [] gives every point the "
        "same seed: common random numbers across the sweep (e.g. policies compared on the same requests)",
    )

    @field_validator("parameters", mode="before")
    @classmethod
    def _values_or_range(cls, v: Any) -> Any:
        """One clear message per bad entry (a plain union would report both alternatives)."""
        if not isinstance(v, dict):
            return v
        out: dict[str, Any] = {}
        for path, spec in v.items():
            if isinstance(spec, list):
                if not spec:
                    raise ValueError(f"{path!r}: the list of values is empty")
                out[path] = spec
            elif isinstance(spec, dict):
                try:
                    out[path] = ParameterRange.model_validate(spec)
                except ValidationError as exc:
                    err = exc.errors()[0]
                    where = ".".join(str(x) for x in err.get("loc", ()))
                    msg = err.get("msg", "invalid").removeprefix("Value error, ")
                    raise ValueError(f"{path!r}: {where + ': ' if where else ''}{msg}") from None
            else:
                raise ValueError(f"{path!r}: expected a list of values or {{min, max, log, integer, num}}, "
                                 f"got {spec!r}")
        return out

    @model_validator(mode="after")
    def _check(self) -> SweepSpec:
        if not self.parameters and not self.groups:
            raise ValueError("a sweep needs at least one entry in 'parameters' or 'groups'")
        clash = set(self.parameters) & set(self.groups)
        if clash:
            raise ValueError(f"names used both as parameter and group: {sorted(clash)}")
        if self.mode == "random" and self.samples is None:
            raise ValueError("mode 'random' needs 'samples'")
        if self.mode == "grid":
            for path, spec in self.parameters.items():
                if isinstance(spec, ParameterRange) and spec.num is None:
                    raise ValueError(f"parameter {path!r}: a range in grid mode needs 'num' (how many values)")
        for name, labels in self.groups.items():
            if not labels:
                raise ValueError(f"group {name!r} has no labels")
        if self.seed_from is not None:
            unknown = set(self.seed_from) - set(self.parameters) - set(self.groups)
            if unknown:
                raise ValueError(f"seed_from names unknown parameters: {sorted(unknown)}")
        return self


class PlanLoad(Strict):
    """The target load: an open-loop request rate, or a number of closed-loop users."""

    requests_per_s: PositiveFloat | None = Field(default=None, description="Poisson arrivals at this rate")
    concurrent_users: PositiveInt | None = Field(default=None, description="closed-loop users (each waits for its answer)")
    think_time_s: NonNegFloat = Field(default=0.0, description="closed loop: pause between a user's requests")
    headroom: NonNegFloat = Field(
        default=0.0, description="plan replicas for (1 + headroom) x the load: bursts, and the noise of short simulations"
    )

    @model_validator(mode="after")
    def _one(self) -> PlanLoad:
        if (self.requests_per_s is None) == (self.concurrent_users is None):
            raise ValueError("give exactly one of requests_per_s and concurrent_users")
        return self


class PlanSpeculation(Strict):
    """One way to serve: a drafter and a policy (raw scenario fragments, preset names allowed)."""

    name: str
    drafter: dict[str, Any] = Field(default_factory=lambda: {"kind": "none"})
    policy: dict[str, Any] = Field(default_factory=lambda: {"kind": "none"})
    set: list[str] = Field(default_factory=list, description="extra `--set` overrides for this option")


class PlanCandidates(Strict):
    hardware: list[str] = Field(min_length=1, description="hardware profile names to consider")
    tensor_parallel: list[PositiveInt] = Field(default_factory=lambda: [1])
    max_replicas: PositiveInt = Field(
        default=64, description="do not consider deployments with more replicas"
    )
    speculation: list[PlanSpeculation] = Field(min_length=1)
    add_no_speculation: bool = Field(
        default=True, description="also plan each hardware x TP without speculation (the comparison baseline)"
    )


class PlanSearch(Strict):
    """How each candidate's capacity is found: short simulations, bisection on the load (Vidur-style)."""

    num_requests: PositiveInt = Field(default=200, description="requests per short simulation (at least)")
    warmup_requests: NonNegInt = Field(default=20, description="first finished requests left out of the latencies (at least)")
    steady_state_factor: PositiveFloat = Field(
        default=4.0,
        description="each probe runs this many request lifetimes (output tokens x the SLO's TPOT) of arrivals "
        "past a ramp-up of 1.5 lifetimes that is left out of the metrics, so the batch is measured at the "
        "steady state of its load (a short run at a high rate would end before the batch fills up)",
    )
    max_requests: PositiveInt = Field(default=5000, description="cap on the requests of one probe")
    max_simulated_s: PositiveFloat | None = Field(default=None, description="stop each short simulation here")
    tolerance: Annotated[float, Field(gt=0.0, lt=1.0)] = Field(
        default=0.05, description="stop bisecting when (high - low) / high is below this"
    )
    max_simulations: PositiveInt = Field(default=12, description="most simulations per candidate")


class PlanSpec(Strict):
    """A capacity plan: the cheapest deployment meeting the SLOs at the target load.

    `gpu_price_usd_per_hour` is an INPUT: dspark-sim carries no price data; state what you pay.
    """

    name: str
    description: str = ""
    base: str = Field(description="scenario YAML (model, acceptance, lengths), relative to the plan file")
    set: list[str] = Field(default_factory=list, description="`--set` overrides applied to the base first")
    load: PlanLoad
    slo: SLOSpec
    gpu_price_usd_per_hour: dict[str, PositiveFloat] = Field(
        description="your price of one GPU-hour for each candidate hardware name (an input, not a default)"
    )
    candidates: PlanCandidates
    search: PlanSearch = Field(default_factory=PlanSearch)
    seed: NonNegInt = 0

    @model_validator(mode="after")
    def _check(self) -> PlanSpec:
        missing = [h for h in self.candidates.hardware if h not in self.gpu_price_usd_per_hour]
        if missing:
            raise ValueError(f"gpu_price_usd_per_hour has no price for {missing} (prices are inputs)")
        if not any(v is not None for v in self.slo.model_dump().values()):
            raise ValueError("slo: give at least one of ttft_p99_s, tpot_p99_ms, min_tokens_per_s_per_user")
        return self
