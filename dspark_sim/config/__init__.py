"""Configuration: the schema (single source of truth), YAML loading, names, overrides, errors."""

from dspark_sim.config.errors import InputError
from dspark_sim.config.loader import (
    load_hardware_profile,
    load_model_preset,
    load_scenario,
    load_scenario_dict,
    scenario_from_dict,
)
from dspark_sim.config.schema import DTYPE_BYTES, Scenario

__all__ = [
    "DTYPE_BYTES",
    "InputError",
    "Scenario",
    "load_hardware_profile",
    "load_model_preset",
    "load_scenario",
    "load_scenario_dict",
    "scenario_from_dict",
]
