"""What every `dspark-sim` command shares: the scenario argument, `--set` and `--json` options, the console."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from dspark_sim.config.io import write_atomic

ScenarioArg = Annotated[
    Path | None, typer.Argument(help="scenario YAML (default: the bundled quickstart scenario)")
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="override a field: path.to.field=value (repeatable)"),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="print the machine-readable JSON document")]
ExecutorOpt = Annotated[str, typer.Option(help="local (processes) | ray | inline (this process)")]
WorkersOpt = Annotated[int | None, typer.Option(help="parallel workers (default: CPU count)")]
RayAddressOpt = Annotated[str | None, typer.Option(help="Ray cluster address (default: start a local Ray)")]
ProgressOpt = Annotated[bool, typer.Option(help="show a progress bar")]


def console(width: int = 140) -> Console:
    """Wide enough for the tables when output goes to a file or pipe (rich assumes 80 columns there)."""
    out = Console(highlight=False)
    if not out.is_terminal:
        out = Console(highlight=False, width=width)
    return out


def emit(doc_json: str, out: Path | None) -> None:
    """Also write a command's JSON document to `out`, when given."""
    if out is not None:
        write_atomic(out, doc_json + "\n")
