"""Discrete-event serving simulator (simpy): workload -> replicas (batching, KV, draft/verify) -> metrics.

Entry points: `run_scenario` (a scenario file: every sweep value x variant, plus baselines) and
`Simulation` (one validated configuration). `dspark-sim run` calls `dspark_sim.cli.run.run_command`.
"""

from dspark_sim.sim.run import ScenarioRun, Simulation, run_scenario, simulate_config

__all__ = ["ScenarioRun", "Simulation", "run_scenario", "simulate_config"]
