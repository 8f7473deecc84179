"""The `dspark-sim` command: the app, its sub-commands, and how errors reach the user.

Thin: parse arguments, call the package, print or write the result. The commands live by job in
`cli/` (`validate`: profile, calibrate, validate; `studies`: sweep, plan, dashboard; `run`); this
module assembles them in the order `--help` lists them. Heavy stacks (torch, scipy, plotly, the
simulator) are imported when a command runs, so `--help` and the light commands start quickly.

Every `InputError` (bad YAML, unknown key, out-of-range value, missing file...) becomes one line on
stderr and exit code 2; usage errors are click's, also exit 2.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from pydantic import BaseModel
from rich.console import Console

from dspark_sim.cli import studies
from dspark_sim.cli import validate as validate_commands
from dspark_sim.cli.common import JsonOpt, ProgressOpt, ScenarioArg, SetOpt, console, emit
from dspark_sim.config.errors import InputError
from dspark_sim.config.io import write_atomic
from dspark_sim.config.loader import (
    list_hardware_profiles,
    list_model_presets,
    load_hardware_profile,
    load_model_preset,
    load_scenario,
)
from dspark_sim.config.measurements import CalibrationReport, EngineProfile, ValidationReport
from dspark_sim.config.results import PlanResult, PredictResult, RunResult, SweepPointRecord, SweepResult
from dspark_sim.config.schema import HardwareProfile, ModelSpec, PlanSpec, Scenario, SweepSpec
from dspark_sim.core.models import model_stats
from dspark_sim.report.console import print_model, print_predict, print_profile

app = typer.Typer(
    help="Predict, simulate and measure speculative decoding on your hardware, model pair and traffic.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
profiles_app = typer.Typer(help="Hardware profiles (hardware_profiles/*.yaml).", no_args_is_help=True)
models_app = typer.Typer(help="Model presets, with parameters derived from the architecture.", no_args_is_help=True)
app.add_typer(profiles_app, name="profiles")
app.add_typer(models_app, name="models")

#: the documents `schema --kind` writes the JSON Schema of
SCHEMAS: dict[str, type[BaseModel]] = {
    "scenario": Scenario, "hardware": HardwareProfile, "model": ModelSpec, "sweep": SweepSpec, "plan": PlanSpec,
    "predict-result": PredictResult, "run-result": RunResult, "sweep-point": SweepPointRecord,
    "sweep-result": SweepResult, "plan-result": PlanResult, "engine-profile": EngineProfile,
    "calibration": CalibrationReport, "validation": ValidationReport,
}


def predict(
    scenario: ScenarioArg = None,
    set_: SetOpt = None,
    json_out: JsonOpt = False,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="also write the JSON here")] = None,
) -> None:
    """Closed-form prediction: baseline vs speculative step times, tau, tokens/s, best gamma."""
    from dspark_sim.core.analytic import predict_scenario  # scipy: when it runs

    sc = load_scenario(scenario, set_ or [])
    result = predict_scenario(sc)
    doc = result.model_dump_json(indent=2)
    emit(doc, out)
    if json_out:
        sys.stdout.write(doc + "\n")
    else:
        print_predict(result, console())


def run(
    scenario: ScenarioArg = None,
    set_: SetOpt = None,
    json_out: JsonOpt = False,
    out_dir: Annotated[
        Path | None, typer.Option("--out", "-o", help="folder for summary.json, per-request and time-series files")
    ] = None,
    progress: ProgressOpt = True,
) -> None:
    """Discrete-event simulation of the deployment (and the no-speculation baseline on the same requests)."""
    from dspark_sim.cli.run import run_command  # the simulator and the page: when it runs

    run_command(scenario, set_ or [], json_out=json_out, out_dir=out_dir, progress=progress)


def schema(
    out: Annotated[Path | None, typer.Option("--out", "-o", help="write the JSON Schema here")] = None,
    kind: Annotated[str, typer.Option(help="scenario | hardware | model | sweep | plan | predict-result | run-result "
                                            "| sweep-point | sweep-result | plan-result | engine-profile | calibration "
                                            "| validation")] = "scenario",
) -> None:
    """Write the JSON Schema of scenario files (or another document) for editors and validators."""
    if kind not in SCHEMAS:
        raise InputError("--kind", None, f"unknown schema {kind!r}, allowed: {', '.join(SCHEMAS)}")
    doc = json.dumps(SCHEMAS[kind].model_json_schema(), indent=2, sort_keys=True)
    if out is not None:
        write_atomic(out, doc + "\n")
    else:
        sys.stdout.write(doc + "\n")


for command in (predict, run, validate_commands.profile, validate_commands.calibrate, validate_commands.validate,
                schema, studies.sweep, studies.plan, studies.dashboard):
    app.command()(command)


@profiles_app.command("list")
def profiles_list() -> None:
    """List the bundled hardware profiles."""
    out = console()
    for name in list_hardware_profiles():
        p = load_hardware_profile(name)
        out.print(
            f"{name:16s} {p.memory_capacity_gb:7g} GB  {p.memory_bandwidth_gbps:7g} GB/s  "
            f"bf16 {p.peak_tflops.get('bf16', 0):6g} TFLOP/s  {p.description}"
        )


@profiles_app.command("show")
def profiles_show(name: str, json_out: JsonOpt = False) -> None:
    """Show one hardware profile (a bundled name or a YAML path)."""
    p = load_hardware_profile(name)
    if json_out:
        sys.stdout.write(p.model_dump_json(indent=2) + "\n")
    else:
        print_profile(p, console())


@models_app.command("list")
def models_list() -> None:
    """List the bundled model presets with derived parameter counts."""
    out = console()
    for name in list_model_presets():
        s = model_stats(load_model_preset(name))
        out.print(f"{name:20s} {s.total_params / 1e9:8.2f} B total {s.active_params / 1e9:8.2f} B active")


@models_app.command("show")
def models_show(name: str, json_out: JsonOpt = False) -> None:
    """Show one model preset and what its architecture implies."""
    m = load_model_preset(name)
    if json_out:
        sys.stdout.write(m.model_dump_json(indent=2) + "\n")
    else:
        print_model(m, model_stats(m), console())


def _mount_optional() -> None:
    """Sub-commands whose modules may be absent or need optional extras are mounted when importable."""
    try:
        from dspark_sim.cli.engine import engine_app
    except ImportError:
        return
    app.add_typer(engine_app, name="engine", help="The bundled PyTorch speculative engine.")


def main() -> None:
    # the engine pulls in torch (seconds to import): mount it only when it is asked for or listed
    if len(sys.argv) < 2 or sys.argv[1] in ("engine", "--help", "-h"):
        _mount_optional()
    try:
        app(standalone_mode=True)
    except InputError as exc:
        Console(stderr=True, highlight=False).print(f"error: {exc}", markup=False, soft_wrap=True)
        sys.exit(2)
    except ModuleNotFoundError as exc:
        extra = _EXTRAS.get((exc.name or "").split(".")[0])
        if extra is None:
            raise
        Console(stderr=True, highlight=False).print(
            f"error: this command needs the optional package {exc.name!r}: pip install 'dspark-sim[{extra}]'",
            markup=False, soft_wrap=True,
        )
        sys.exit(2)


#: optional packages and the extra that installs each
_EXTRAS = {"torch": "engine", "safetensors": "engine", "ray": "ray"}


if __name__ == "__main__":
    main()
