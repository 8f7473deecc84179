"""What a dashboard page shows, computed: its documents, their rows, and the closed form around a scenario.

`dashboard_data` turns the page's inputs (`dashboard_inputs`) into plain data for `report.html`: the
simulated configurations (`dashboard_rows`), the scenario the page is about (given, in a run, or a
sweep's base scenario), the predictor's speed-up over acceptance x gamma and batch x context around
that scenario's deployment, and its acceptance model's conditional acceptance by position.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np

from dspark_sim.config.errors import InputError
from dspark_sim.config.loader import scenario_from_dict
from dspark_sim.config.schema import IIDAcceptance, Scenario
from dspark_sim.core.acceptance import conditional_curve, survival_curve
from dspark_sim.core.analytic import kv_bytes_per_token_per_gpu, memory_available_bytes, predict_grid
from dspark_sim.core.costmodel import StepCoster
from dspark_sim.studies.dashboard_inputs import Inputs
from dspark_sim.studies.dashboard_rows import Row, run_rows

#: the batch x context heatmap's axes
GRID_BATCHES = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
GRID_CONTEXTS = [512, 1024, 2048, 4096, 8192, 16384, 32768, 65536]


@dataclass
class SpeedupGrids:
    """The closed form's speed-up (tokens/s per user over no speculation) around a scenario's deployment."""

    model: str
    drafter: str
    hardware: str
    tensor_parallel: int
    batch: int  # the acceptance x gamma grid's batch and context: the scenario's first predict point
    context: int
    gammas: list[int]
    alphas: list[float]
    by_alpha_gamma: list[list[float]]  # [alpha][gamma], i.i.d. acceptance
    batches: list[int]
    contexts: list[int]
    best_speedup: list[list[float | None]]  # [context][batch] at the best gamma; None: the KV cache does not fit
    best_gamma: list[list[int | None]]
    acceptance_kind: str
    survival: list[float]  # a_1..a_3 of the scenario's acceptance model


@dataclass
class DashboardData:
    """Everything one page draws; `report.html.dashboard_html` renders it."""

    inputs: Inputs
    rows: list[Row]
    scenario: Scenario | None  # given, in a run, or a sweep's base scenario
    grids: SpeedupGrids | None  # None without a scenario, or when it has no drafter
    scenario_acceptance: list[float] | None  # the scenario's conditional acceptance c_1..c_8


def scenario_for(inputs: Inputs) -> Scenario | None:
    """The scenario the page is about: the one given, a run's, or the first sweep base scenario that loads."""
    if inputs.scenario is not None:
        return inputs.scenario
    for b in inputs.runs:
        if b.scenario is not None:
            return b.scenario
    for sw in inputs.sweeps:
        raw = sw.manifest.get("base_scenario")
        if isinstance(raw, dict):
            try:
                return scenario_from_dict(raw, sw.source)
            except InputError:
                continue
    return None


def speedup_grids(sc: Scenario) -> SpeedupGrids | None:
    """Speed-up over i.i.d. acceptance x gamma, and at the best gamma over batch x context (`predict_grid`)."""
    dep = sc.deployment
    if dep.drafter.kind == "none":
        return None
    coster = StepCoster.for_deployment(dep)
    gammas = list(range(1, 9))
    batch = sc.predict.batch_sizes[0]
    ctx = sc.predict.context_lengths[0]
    alphas = [round(a, 2) for a in np.arange(0.40, 0.96, 0.05)]
    by_alpha = []
    for a in alphas:
        g = predict_grid(coster, IIDAcceptance(alpha=a), [batch], [ctx], gammas)
        by_alpha.append([float(v) for v in g.speedup[0, 0, :]])
    g = predict_grid(coster, sc.acceptance, GRID_BATCHES, GRID_CONTEXTS, sorted(set(sc.predict.gammas)) or gammas)
    best = np.max(g.speedup, axis=2)
    best_g = np.asarray(g.gammas)[np.argmax(g.tokens_per_s_per_user, axis=2)]
    kv_tok = kv_bytes_per_token_per_gpu(coster)
    room = memory_available_bytes(sc)
    gmax = max(sc.predict.gammas or [8])
    speedups: list[list[float | None]] = []
    best_gammas: list[list[int | None]] = []
    for j, c in enumerate(GRID_CONTEXTS):
        fits = [b * (c + gmax + 1) * kv_tok <= room for b in GRID_BATCHES]
        speedups.append([float(best[i, j]) if ok else None for i, ok in enumerate(fits)])
        best_gammas.append([int(best_g[i, j]) if ok else None for i, ok in enumerate(fits)])
    return SpeedupGrids(
        model=dep.model.name, drafter=dep.drafter.kind, hardware=dep.hardware.name,
        tensor_parallel=dep.tensor_parallel, batch=batch, context=ctx, gammas=gammas, alphas=alphas,
        by_alpha_gamma=by_alpha, batches=list(GRID_BATCHES), contexts=list(GRID_CONTEXTS), best_speedup=speedups,
        best_gamma=best_gammas, acceptance_kind=sc.acceptance.kind,
        survival=[float(a) for a in survival_curve(sc.acceptance, 3)],
    )


def dashboard_data(inputs: Inputs) -> DashboardData:
    """The page's rows, its scenario, and the closed form's figures around that scenario."""
    sc = scenario_for(inputs)
    grids = speedup_grids(sc) if sc is not None else None
    curve = None
    if sc is not None and sc.deployment.drafter.kind != "none":
        with contextlib.suppress(InputError):  # e.g. a trace file that is not there any more
            curve = [float(x) for x in conditional_curve(sc.acceptance, 8)]
    return DashboardData(inputs, run_rows(inputs), sc, grids, curve)
