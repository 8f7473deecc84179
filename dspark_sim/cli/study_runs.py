"""`sweep`, `plan` and `dashboard` run for the terminal: progress bars, the result tables, the pages written."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from dspark_sim.cli.common import console as make_console
from dspark_sim.cli.dashboard import write_dashboard, write_plan_dashboard, write_validation_report_page
from dspark_sim.config.errors import InputError
from dspark_sim.config.io import write_atomic
from dspark_sim.config.results import PlanCandidateResult, PlanResult, SweepResult
from dspark_sim.config.schema import Scenario
from dspark_sim.studies.labels import short
from dspark_sim.studies.plan import run_plan
from dspark_sim.studies.sweep import POINTS_FILE, SUMMARY_FILE, run_sweep


def _cell(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return "-" if v is None else ("yes" if v else "no")
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}"
    if isinstance(v, dict | list):
        text = short(v)
        return text if len(text) <= 28 else text[:27] + "…"
    return str(v)


_TABLE_METRICS = {
    "run": [("throughput_tokens_per_s_per_gpu", "tok/s/GPU"), ("tokens_per_s_per_user", "tok/s/user"),
            ("ttft_p99_s", "TTFT p99 s"), ("tpot_p99_ms", "TPOT p99 ms"), ("tau", "tau"),
            ("mean_verify_budget", "verify"), ("speedup_throughput", "x tput"), ("slo_met", "SLO")],
    "predict": [("speedup", "speed-up"), ("best_gamma", "gamma"), ("tau", "tau"),
                ("tokens_per_s_per_user", "tok/s/user"), ("speedup_max", "max speed-up"),
                ("best_gamma_at_max", "gamma@max")],
}


def print_sweep(result: SweepResult, console: Console, limit: int = 40) -> None:
    table = Table(show_header=True, header_style="bold", title=f"sweep {result.name} ({result.command})")
    for name in result.parameters:
        table.add_column(name.split(".")[-1], justify="right")
    metrics = _TABLE_METRICS[result.command]
    for _metric, head in metrics:
        table.add_column(head, justify="right")
    for p in result.points[:limit]:
        cells = [_cell(p.params.get(n)) for n in result.parameters]
        if p.status == "ok":
            cells += [_cell(p.metrics.get(k)) for k, _ in metrics]
        else:
            msg = p.error or "error"
            cells += ["[red]" + (msg if len(msg) < 90 else msg[:89] + "…") + "[/red]"] + [""] * (len(metrics) - 1)
        table.add_row(*cells)
    console.print(table)
    if len(result.points) > limit:
        console.print(f"[dim]... {len(result.points) - limit} more points in summary.json / points.jsonl[/dim]")
    resumed = f", {result.resumed} found finished" if result.resumed else ""
    console.print(f"[dim]{result.finished}/{result.total_points} points ({result.errors} errors{resumed}) on "
                  f"{result.executor} x{result.workers} in {result.wall_s:.1f} s wall[/dim]")


def sweep_command(sweep_file: Path, *, executor: str = "local", workers: int | None = None,
                  ray_address: str | None = None, out_dir: Path | None = None, overrides: list[str] | None = None,
                  retry_errors: bool = False, report: bool = True, json_out: bool = False,
                  progress: bool = True) -> SweepResult:
    """`dspark-sim sweep`: run with a progress bar, print a table (or the JSON), write the dashboard."""
    err = Console(stderr=True, highlight=False)
    show = progress and err.is_terminal
    name = Path(sweep_file).stem
    errors = 0
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), console=err, transient=False, disable=not show) as bar:
        task = bar.add_task(f"sweep {name} ({executor})", total=None)

        def on_start(total: int, done: int) -> None:
            bar.update(task, total=total, completed=done)

        def on_point(rec: dict) -> None:
            nonlocal errors
            errors += rec.get("status") == "error"
            desc = f"sweep {name} ({executor})" + (f" [red]{errors} errors[/red]" if errors else "")
            bar.update(task, advance=1, description=desc)

        result = run_sweep(sweep_file, out_dir, executor=executor, workers=workers, ray_address=ray_address,
                           retry_errors=retry_errors, extra_set=overrides, on_start=on_start, on_point=on_point)
    out = Path(out_dir) if out_dir is not None else Path("out") / "sweeps" / result.name
    if report:
        write_dashboard([out], out / "report.html")
    if json_out:
        sys.stdout.write(result.model_dump_json(indent=2) + "\n")
    else:
        console = make_console(160)
        print_sweep(result, console)
        console.print(f"[dim]results: {out / POINTS_FILE}, {out / SUMMARY_FILE}"
                      + (f", dashboard {out / 'report.html'}" if report else "") + "[/dim]")
    return result


def _f(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.{digits}g}"


def _key(c: PlanCandidateResult) -> tuple:
    return (c.hardware, c.tensor_parallel, c.speculation)


def print_plan(result: PlanResult, console: Console) -> None:
    unit = "req/s" if result.load_kind == "requests_per_s" else "users"
    slo = ", ".join(f"{k} {v:g}" for k, v in result.slo.items() if v is not None)
    console.print(f"[bold]{result.name}[/bold]: {result.model}, target {result.load:g} {unit}, SLO {slo}")
    prices = ", ".join(f"{k} ${v:g}" for k, v in result.prices_usd_per_gpu_hour.items())
    console.print(f"[dim]GPU prices per hour (inputs from the plan file, not defaults): {prices}[/dim]")
    console.print(_plan_table(result, unit))
    console.print("[dim]cap/replica: highest load one replica sustains under the SLOs (bisection on short "
                  "simulations); latencies are at that load. $/M out tok: at the target load.[/dim]")
    best = result.best
    for title, pick in (("cheapest", best), ("without speculation", result.best_without_speculation),
                        ("with speculation", result.best_with_speculation)):
        if pick is not None:
            console.print(f"{title}: {pick.hardware} TP{pick.tensor_parallel} x {pick.replicas} replicas "
                          f"({pick.gpus} GPUs), {pick.speculation}: ${pick.usd_per_hour:.2f}/hour, "
                          f"${pick.usd_per_million_output_tokens:.4f} per million output tokens; sustains up to "
                          f"{_f(pick.capacity)} {unit}")
    if result.saving_fraction is not None:
        console.print(f"speculation saves [bold]{result.saving_fraction:.0%}[/bold] of the cost per output token")
    if best is None:
        console.print("[red]no candidate meets the SLOs at the target load[/red]")
    console.print(f"[dim]{sum(c.simulations for c in result.candidates)} simulations in {result.wall_s:.1f} s[/dim]")


def _plan_table(result: PlanResult, unit: str) -> Table:
    """Every candidate, cheapest first; the cheapest in bold, those that cannot serve the load dimmed."""
    table = Table(show_header=True, header_style="bold")
    for col in ("hardware", "TP", "speculation", f"cap/replica {unit}", "replicas", "GPUs", f"capacity {unit}",
                "$/hour", "$/M out tok", "$/M at cap", "TTFT p99 s", "TPOT p99 ms", "tok/s/user", "sims", "note"):
        table.add_column(col, justify="left" if col in ("hardware", "speculation", "note") else "right",
                         no_wrap=col in ("hardware", "speculation"))
    best = result.best
    rows = sorted(result.candidates, key=lambda c: (c.usd_per_million_output_tokens is None,
                                                    c.usd_per_million_output_tokens or 0.0))
    for c in rows:
        at = c.at_capacity or {}
        is_best = best is not None and _key(c) == _key(best)
        note = "[green]cheapest[/green]" if is_best else (c.reason or "")
        style = "bold" if is_best else ("dim" if c.replicas is None else None)
        table.add_row(
            c.hardware, str(c.tensor_parallel), c.speculation, _f(c.replica_capacity), _f(c.replicas),
            _f(c.gpus), _f(c.capacity), _f(c.usd_per_hour), _f(c.usd_per_million_output_tokens, 4),
            _f(c.usd_per_million_output_tokens_at_capacity, 4), _f(at.get("ttft_p99_s")),
            _f(at.get("tpot_p99_ms")), _f(at.get("tokens_per_s_per_user")), str(c.simulations), note, style=style,
        )
    return table


def plan_command(plan_file: Path, *, executor: str = "local", workers: int | None = None,
                 ray_address: str | None = None, json_out: bool = False, out: Path | None = None,
                 report: Path | None = None, progress: bool = True) -> PlanResult:
    """`dspark-sim plan`: search with a progress bar; print the table (or JSON); write JSON / HTML."""
    err = Console(stderr=True, highlight=False)
    show = progress and err.is_terminal
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err, transient=True, disable=not show) as bar:
        task = bar.add_task(f"plan {Path(plan_file).stem}: candidates", total=None)
        result = run_plan(plan_file, executor=executor, workers=workers, ray_address=ray_address,
                          on_start=lambda n: bar.update(task, total=n),
                          on_candidate=lambda rec: bar.advance(task))
    doc = result.model_dump_json(indent=2)
    if out is not None:
        write_atomic(out, doc + "\n")
    if report is not None:
        write_plan_dashboard(result, str(plan_file), report)
    if json_out:
        sys.stdout.write(doc + "\n")
    else:
        print_plan(result, make_console(210))
    return result


def dashboard_command(results: list[Path], out: Path, scenario: Scenario | None, title: str | None) -> Path:
    """`dspark-sim dashboard`: one page from result documents; a validation report.json alone gets its own."""
    if len(results) == 1:
        page = write_validation_report_page(results[0], out)
        if page is not None:
            if scenario is not None or title is not None:
                raise InputError("--scenario" if scenario is not None else "--title", None,
                                 "a validation report's page has its own title and figures; leave this out")
            make_console().print(f"validation page ({page.stat().st_size / 1e6:.1f} MB, self-contained) -> {page}")
            return page
    path = write_dashboard(results, out, scenario=scenario, title=title)
    make_console().print(f"dashboard ({path.stat().st_size / 1e6:.1f} MB, self-contained) -> {path}")
    return path
