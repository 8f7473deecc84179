"""`dspark-sim run`: simulate a scenario, print a table or JSON, write result files atomically."""

from __future__ import annotations

import csv
import io
import json
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from dspark_sim.cli.common import console as make_console
from dspark_sim.cli.dashboard import write_run_dashboard
from dspark_sim.config.io import write_atomic
from dspark_sim.config.results import RunResult, RunTimeSeriesDoc
from dspark_sim.sim.run import ScenarioRun, run_scenario
from dspark_sim.studies.labels import file_label

_CSV_FIELDS = ("id", "domain", "replica", "arrival_s", "first_token_s", "finish_s", "prompt_tokens", "output_tokens",
               "ttft_s", "tpot_ms", "e2e_s", "steps", "verified", "accepted", "tau", "preemptions", "measured")


def run_command(scenario: Path | str | None, overrides: list[str], *, json_out: bool = False,
                out_dir: Path | str | None = None, progress: bool = True) -> ScenarioRun:
    """Run a scenario (None = the bundled default), then print and write what was asked for."""
    err = Console(stderr=True, highlight=False)
    show = progress and err.is_terminal
    started = time.perf_counter()
    with_records = out_dir is not None
    if show:
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=err, transient=True) as bar:
            configs = bar.add_task("configurations", total=None)
            reqs = bar.add_task("requests", total=None)

            def on_config(label: str, index: int, total: int) -> None:
                bar.update(configs, description=label, completed=index, total=total)
                bar.update(reqs, completed=0)

            def on_progress(done: int, total: int) -> None:
                if done % 64 == 0 or done == total:
                    bar.update(reqs, completed=done, total=total)

            run = run_scenario(scenario, overrides, with_records=with_records, on_config=on_config,
                               on_progress=on_progress)
    else:
        run = run_scenario(scenario, overrides, with_records=with_records)
    wall = time.perf_counter() - started
    if out_dir is not None:
        write_outputs(run, Path(out_dir))
    doc = run.result.model_dump_json(indent=2)
    if json_out:
        sys.stdout.write(doc + "\n")
    else:
        console = make_console(160)
        print_run(run.result, console)
        console.print(f"[dim]{len(run.runs)} simulations in {wall:.1f} s wall[/dim]")
        if out_dir is not None:
            console.print(f"[dim]results written to {out_dir}[/dim]")
    return run


def write_outputs(run: ScenarioRun, out_dir: Path) -> None:
    """summary.json, timeseries.json, report.html and one per-request file per configuration, each written
    atomically."""
    write_atomic(out_dir / "summary.json", run.result.model_dump_json(indent=2) + "\n")
    series = RunTimeSeriesDoc(scenario=run.result.scenario, series=[r.series for r in run.runs])
    write_atomic(out_dir / "timeseries.json", series.model_dump_json() + "\n")
    write_run_dashboard(run, out_dir / "report.html")
    fmt = run.scenario.simulation.per_request_output
    if fmt == "none":
        return
    for r in run.runs:
        if r.records is None:
            continue
        name = f"requests_{file_label(r.summary)}.{fmt}"
        if fmt == "jsonl":
            text = "".join(json.dumps(rec, separators=(",", ":")) + "\n" for rec in r.records)
        else:
            buf = io.StringIO()
            writer = csv.DictWriter(buf, fieldnames=list(_CSV_FIELDS), lineterminator="\n")
            writer.writeheader()
            for rec in r.records:
                writer.writerow({k: ("" if rec[k] is None else rec[k]) for k in _CSV_FIELDS})
            text = buf.getvalue()
        write_atomic(out_dir / name, text)


def _x(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def print_run(result: RunResult, console: Console) -> None:
    console.print(f"[bold]{result.scenario}[/bold]: {result.model} on {result.hardware}, seed {result.seed}")
    table = Table(show_header=True, header_style="bold")
    cols = ["variant", "sweep" if result.sweep_path else None, "policy", "tok/s/user", "tok/s/GPU", "TTFT p50 s",
            "TTFT p99 s", "TPOT p50 ms", "TPOT p99 ms", "tau", "verify", "batch", "preempt", "x user", "x tput"]
    for col in cols:
        if col is not None:
            table.add_column(col, justify="left" if col in ("variant", "policy") else "right")
    for s in result.summaries:
        row = [s.variant]
        if result.sweep_path:
            row.append(str(s.sweep_value))
        row += [
            s.policy,
            f"{s.tokens_per_s_per_user:.1f}",
            f"{s.throughput_tokens_per_s_per_gpu:.0f}",
            f"{s.ttft_s.p50:.3f}",
            f"{s.ttft_s.p99:.3f}",
            f"{s.tpot_ms.p50:.2f}",
            f"{s.tpot_ms.p99:.2f}",
            f"{s.tau:.2f}",
            f"{s.mean_verify_budget:.2f}",
            f"{s.mean_batch_size:.1f}",
            str(s.preemptions),
            _x(s.speedup_tokens_per_s_per_user),
            _x(s.speedup_throughput),
        ]
        table.add_row(*row)
    console.print(table)
    console.print("[dim]verify = draft tokens verified per sequence per step; x user / x tput = speed-up in "
                  "tokens/s per user / throughput per GPU over the no-speculation baseline (same requests)[/dim]")
    for c in result.curves:
        parts = []
        if c.throughput_at_slo_per_gpu is not None:
            edge = "" if c.slo_within_sweep else " (sweep edge, SLO speed not reached)"
            parts.append(f"{c.throughput_at_slo_per_gpu:.0f} tok/s/GPU at the SLO per-user speed{edge}")
        gains = [m for m in c.matched if m.main_gain is not None]
        if gains:
            text = ", ".join(f"{m.main_gain:.2f}x@{m.throughput_tokens_per_s_per_gpu:.0f}" for m in gains)
            parts.append(f"main's per-user speed at matched throughput: {text}")
        if parts:
            console.print(f"[bold]{c.variant}[/bold]: " + "; ".join(parts))
    for sk in result.skipped:
        where = sk.variant if sk.sweep_value is None else f"{sk.variant} @ {sk.sweep_value}"
        console.print(f"[yellow]skipped {where}:[/yellow] {sk.reason}", markup=True)
