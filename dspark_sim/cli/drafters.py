"""`dspark-sim engine drafters table`: measure the drafter table on this device (or render a saved one).

    dspark-sim engine drafters table --out validation/drafters/cpu.json --markdown validation/drafters/cpu.md
        [--preset tiny] [--batches 1,4,16,64] [--new-tokens 128] [--repeats 3] [--device cpu|cuda]

The table is the input of `dspark-sim validate --drafters`. torch is imported inside the command, so
`dspark-sim --help` works without the engine extra.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from dspark_sim.config.drafter_table import (
    DrafterTable,
    PartialDrafterTable,
    load_drafter_table,
    table_json,
)
from dspark_sim.config.errors import InputError
from dspark_sim.config.io import write_atomic
from dspark_sim.config.shorthand import ENGINE_DRAFTER_KINDS
from dspark_sim.report.drafter_table import drafter_table_markdown


def _ints(option: str, text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(",") if x)
    except ValueError:
        raise InputError(option, None, f"expected comma-separated whole numbers, got {text!r}") from None
    if not values or min(values) < 1:
        raise InputError(option, None, f"expected positive whole numbers, got {text!r}")
    return values


def _floats(option: str, text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(x) for x in text.split(",") if x)
    except ValueError:
        raise InputError(option, None, f"expected comma-separated numbers, got {text!r}") from None
    if not values or min(values) < 0:
        raise InputError(option, None, f"expected temperatures >= 0, got {text!r}")
    return values


def _kinds(text: str) -> tuple[str, ...]:
    kinds = tuple(k for k in text.split(",") if k)
    bad = [k for k in kinds if k not in ENGINE_DRAFTER_KINDS]
    if bad or not kinds:
        raise InputError("--kinds", None, f"unknown drafter {bad[0] if bad else text!r} "
                         f"(allowed: {', '.join(ENGINE_DRAFTER_KINDS)})")
    return kinds


def _write_markdown(table: DrafterTable, markdown: Path | None, console: Console) -> None:
    text = drafter_table_markdown(table)
    if markdown is not None:
        write_atomic(markdown, text + "\n")
    console.print(text, markup=False)


def drafters_table(
    out: Annotated[Path | None, typer.Option("--out", "-o", help="write the table (JSON) here; needed to measure")] = None,
    markdown: Annotated[Path | None, typer.Option(help="also write the tables (markdown) here")] = None,
    from_json: Annotated[Path | None, typer.Option(
        "--from-json", help="measure nothing: render a saved table (its tables to --markdown and the console)")] = None,
    preset: Annotated[str, typer.Option(help="the pair whose target the drafters serve (test | tiny | gpu)")] = "tiny",
    seed: Annotated[int, typer.Option(help="the pair's seed; also seeds the drafters")] = 0,
    cache_dir: Annotated[Path | None, typer.Option(help="root of the cache (default ~/.cache/dspark-sim/engine)")] = None,
    new_tokens: Annotated[int, typer.Option(help="tokens generated per sequence")] = 128,
    prompt_len: Annotated[int, typer.Option(help="prompt tokens per sequence (held-out windows)")] = 64,
    batches: Annotated[str, typer.Option(help="batch sizes of every configuration")] = "1,4,16,64",
    frontier_batches: Annotated[str, typer.Option(help="batch sizes of DSpark and MTP-1 only")] = "1,2,4,8,16,32,64",
    temperatures: Annotated[str, typer.Option(help="sampling temperatures (0 = greedy)")] = "0,1",
    gamma: Annotated[int, typer.Option(help="draft tokens per step (fixed gamma; DSpark's gamma_max)")] = 5,
    repeats: Annotated[int, typer.Option(help="timed runs of every configuration (the fastest counts)")] = 3,
    kinds: Annotated[str, typer.Option(help="drafters, comma-separated")] = ",".join(ENGINE_DRAFTER_KINDS),
    threads: Annotated[int | None, typer.Option(help="torch threads (1 is steadier on a shared machine)")] = None,
    device: Annotated[str, typer.Option(help="cpu | cuda (drafters train on the CPU, carried in the cache)")] = "cpu",
) -> None:
    """Measure every drafter of the bundled engine (tau, acceptance, calibration, tokens/s, speed-up, DSpark
    against MTP-1 at matched throughput) into the drafter table that `validate --drafters` predicts."""
    console = Console(highlight=False, stderr=True)
    if from_json is not None:
        _write_markdown(load_drafter_table(from_json), markdown, Console(highlight=False))
        return
    if out is None:
        raise InputError("--out", None, "needed to measure: the JSON file the table is written to")
    if device not in ("cpu", "cuda"):
        raise InputError("--device", None, f"unknown device {device!r} (allowed: cpu, cuda)")
    if min(new_tokens, prompt_len, gamma, repeats) < 1:
        raise InputError("--new-tokens/--prompt-len/--gamma/--repeats", None, "must be >= 1")
    import torch

    from dspark_sim.engine.train import get_preset
    from dspark_sim.engine.train_drafters import get_drafter_preset
    from dspark_sim.measure.drafter_table import TableGrid, measure_drafter_table

    get_preset(preset)
    get_drafter_preset(preset)
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device", None, "cuda requested but torch sees no CUDA device")
    grid = TableGrid(preset=preset, seed=seed, cache_dir=str(cache_dir) if cache_dir else None, new_tokens=new_tokens,
                     prompt_len=prompt_len, batches=_ints("--batches", batches),
                     frontier_batches=_ints("--frontier-batches", frontier_batches),
                     temperatures=_floats("--temperatures", temperatures), gamma=gamma, repeats=repeats,
                     kinds=_kinds(kinds), device=device)
    if threads:
        torch.set_num_threads(threads)

    def partial(doc: PartialDrafterTable) -> None:
        write_atomic(out, table_json(doc))

    table = measure_drafter_table(grid, "dspark-sim " + " ".join(sys.argv[1:]),
                                  log=lambda m: console.print(m, markup=False), partial=partial)
    write_atomic(out, table_json(table))
    _write_markdown(table, markdown, Console(highlight=False))
    console.print(f"drafter table -> {out}")
