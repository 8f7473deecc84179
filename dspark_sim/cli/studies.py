"""The `sweep`, `plan` and `dashboard` commands: their arguments; `study_runs` runs them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dspark_sim.cli.common import (
    ExecutorOpt,
    JsonOpt,
    ProgressOpt,
    RayAddressOpt,
    SetOpt,
    WorkersOpt,
)
from dspark_sim.config.loader import load_scenario


def sweep(
    sweep_file: Annotated[Path, typer.Argument(metavar="SWEEP", help="sweep YAML (base scenario + fields to vary)")],
    executor: ExecutorOpt = "local",
    workers: WorkersOpt = None,
    ray_address: RayAddressOpt = None,
    out_dir: Annotated[
        Path | None, typer.Option("--out", "-o", help="results folder (default out/sweeps/NAME); re-run to resume")
    ] = None,
    set_: SetOpt = None,
    retry_errors: Annotated[bool, typer.Option(help="re-run points recorded as errors")] = False,
    report: Annotated[bool, typer.Option(help="also write DIR/report.html")] = True,
    json_out: JsonOpt = False,
    progress: ProgressOpt = True,
) -> None:
    """Run a grid or random sample of scenario variations (predict or run) in parallel; resumable."""
    from dspark_sim.cli.study_runs import sweep_command  # plotly, numpy and the simulator: when it runs

    sweep_command(sweep_file, executor=executor, workers=workers, ray_address=ray_address, out_dir=out_dir,
                  overrides=set_ or [], retry_errors=retry_errors, report=report, json_out=json_out,
                  progress=progress)


def plan(
    plan_file: Annotated[Path, typer.Argument(metavar="PLAN", help="plan YAML (load, SLOs, candidates, prices)")],
    executor: ExecutorOpt = "local",
    workers: WorkersOpt = None,
    ray_address: RayAddressOpt = None,
    json_out: JsonOpt = False,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="also write the JSON here")] = None,
    report: Annotated[Path | None, typer.Option(help="also write an HTML page here")] = None,
    progress: ProgressOpt = True,
) -> None:
    """Cheapest deployment meeting the SLOs at a target load, with and without speculation; capacities."""
    from dspark_sim.cli.study_runs import plan_command

    plan_command(plan_file, executor=executor, workers=workers, ray_address=ray_address, json_out=json_out,
                 out=out, report=report, progress=progress)


def dashboard(
    results: Annotated[
        list[Path], typer.Argument(metavar="RESULTS...", help="sweep folders, run folders or JSON result documents; "
                                   "or one validation report.json (`validate`'s page)")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="HTML file to write")] = Path("report.html"),
    scenario: Annotated[
        Path | None, typer.Option(help="scenario YAML for the speed-up heatmaps (default: found in the results)")
    ] = None,
    set_: SetOpt = None,
    title: Annotated[str | None, typer.Option(help="page title")] = None,
) -> None:
    """One self-contained HTML page (plotly inline, works offline) from result documents.

    Given one validation report.json alone (`validate`'s report), it writes that report's own page,
    as `validate` does (report.html beside it: `-o FOLDER/report.html`)."""
    from dspark_sim.cli.study_runs import dashboard_command

    sc = load_scenario(scenario, set_ or []) if scenario is not None else None
    dashboard_command(results, out, sc, title)
