"""The one schema: every config file and every result document dspark-sim reads or writes.

Why one schema: the predictor, the simulator, the engine, sweeps and dashboards all speak these types,
so a field renamed here is renamed everywhere, and `dspark-sim schema` can hand editors a JSON Schema.
Units are in every field name (`_gbps` = GB/s with GB = 1e9 bytes, `_s`, `_ms`, `_us`, `_tokens`).
Unknown keys are rejected everywhere (`extra="forbid"`): a typo in a scenario is an error, not a default.

One module per section (hardware, models, drafters, acceptance, policies, workload, scenario, studies);
import every name from here: `from dspark_sim.config.schema import Scenario`.
"""

from dspark_sim.config.schema.acceptance import (
    AcceptanceModel,
    HistogramAcceptance,
    IIDAcceptance,
    PerPositionAcceptance,
    PerRequestAcceptance,
    TraceAcceptance,
)
from dspark_sim.config.schema.base import (
    DTYPE_BYTES,
    DType,
    NonNegFloat,
    NonNegInt,
    PositiveFloat,
    PositiveInt,
    Probability,
    Strict,
)
from dspark_sim.config.schema.drafters import DrafterKind, DrafterSpec
from dspark_sim.config.schema.hardware import Efficiency, HardwareProfile, Overheads
from dspark_sim.config.schema.models import MLASpec, ModelSpec, MoESpec
from dspark_sim.config.schema.policies import (
    BatchTableGamma,
    ConfidenceThreshold,
    DSparkScheduler,
    FeedbackController,
    FixedGamma,
    GoodputPolicy,
    NoSpeculation,
    PolicySpec,
)
from dspark_sim.config.schema.scenario import (
    DeploymentSpec,
    PredictGrid,
    Scenario,
    ScenarioSweep,
    SimulationSpec,
    SLOSpec,
    Variant,
)
from dspark_sim.config.schema.studies import (
    ParameterRange,
    PlanCandidates,
    PlanLoad,
    PlanSearch,
    PlanSpec,
    PlanSpeculation,
    SweepSpec,
    SweepValues,
)
from dspark_sim.config.schema.workload import (
    ArrivalSpec,
    ClosedLoopArrivals,
    ConstantArrivals,
    Domain,
    EmpiricalLength,
    FixedLength,
    GammaArrivals,
    LengthDist,
    LognormalLength,
    PoissonArrivals,
    TraceArrivals,
    UniformLength,
    WorkloadSpec,
)

__all__ = [
    "DTYPE_BYTES",
    "AcceptanceModel",
    "ArrivalSpec",
    "BatchTableGamma",
    "ClosedLoopArrivals",
    "ConfidenceThreshold",
    "ConstantArrivals",
    "DSparkScheduler",
    "DType",
    "DeploymentSpec",
    "Domain",
    "DrafterKind",
    "DrafterSpec",
    "Efficiency",
    "EmpiricalLength",
    "FeedbackController",
    "FixedGamma",
    "FixedLength",
    "GammaArrivals",
    "GoodputPolicy",
    "HardwareProfile",
    "HistogramAcceptance",
    "IIDAcceptance",
    "LengthDist",
    "LognormalLength",
    "MLASpec",
    "MoESpec",
    "ModelSpec",
    "NoSpeculation",
    "NonNegFloat",
    "NonNegInt",
    "Overheads",
    "ParameterRange",
    "PerPositionAcceptance",
    "PerRequestAcceptance",
    "PlanCandidates",
    "PlanLoad",
    "PlanSearch",
    "PlanSpec",
    "PlanSpeculation",
    "PoissonArrivals",
    "PolicySpec",
    "PositiveFloat",
    "PositiveInt",
    "PredictGrid",
    "Probability",
    "SLOSpec",
    "Scenario",
    "ScenarioSweep",
    "SimulationSpec",
    "Strict",
    "SweepSpec",
    "SweepValues",
    "TraceAcceptance",
    "TraceArrivals",
    "UniformLength",
    "Variant",
    "WorkloadSpec",
]
