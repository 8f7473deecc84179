"""The `profile`, `calibrate` and `validate` commands: measure the engine, fit the cost model, check it.

The engine (torch), the fits (scipy) and the pages (plotly) are imported when a command runs, so
`dspark-sim --help` and the torch-free commands start without them.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import Progress

from dspark_sim.cli.common import JsonOpt, console
from dspark_sim.config.errors import InputError
from dspark_sim.config.io import write_atomic
from dspark_sim.config.measurements import ValidationReport

if TYPE_CHECKING:
    from dspark_sim.measure.profile import ProfileGrid


def _csv_ints(text: str, option: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise InputError(option, None, f"expected comma-separated whole numbers, got {text!r}") from None
    if not values or min(values) < 0:
        raise InputError(option, None, f"expected non-negative whole numbers, got {text!r}")
    return values


def profile(
    device: Annotated[str, typer.Option(help="cpu | cuda")] = "cpu",
    preset: Annotated[str, typer.Option(help="engine model pair (dspark-sim engine train --preset ...)")] = "tiny",
    seed: Annotated[int, typer.Option(help="seed of the trained pair")] = 0,
    cache_dir: Annotated[Path | None, typer.Option(help="where trained pairs live")] = None,
    random_weights: Annotated[bool, typer.Option(help="time randomly initialised models of the preset's shapes")] = False,
    dtype: Annotated[str, typer.Option(help="weights dtype: fp32 | bf16 | fp16")] = "fp32",
    batch_sizes: Annotated[str | None, typer.Option(help="batch sizes of the passes and whole steps, e.g. 1,2,4,8,16")] = None,
    query_tokens: Annotated[str | None, typer.Option(help="tokens per sequence per pass, e.g. 1,2,3,5,9")] = None,
    contexts: Annotated[str | None, typer.Option(help="cached tokens per sequence, e.g. 64,256,512")] = None,
    kv_dtypes: Annotated[str | None, typer.Option(help="KV-cache dtypes of the passes, e.g. bf16,int8 "
                                                  "(default: the weights' dtype)")] = None,
    repeats: Annotated[int | None, typer.Option(help="timed repeats per pass shape and per step configuration")] = None,
    quick: Annotated[bool, typer.Option(help="a small grid (about a minute on 2 CPU cores)")] = False,
    cuda_graphs: Annotated[bool, typer.Option(help="on CUDA: time CUDA-graph replays (as `validate` runs the engine); "
                                              "--no-cuda-graphs: eager calls (as the drafter table's loops)")] = True,
    out: Annotated[Path, typer.Option("--out", "-o", help="profile JSON to write")] = Path("profile.json"),
    allreduce_ranks: Annotated[int | None, typer.Option(
        help="instead: time all-reduces of the engine's message sizes on this many local ranks (gloo on cpu, "
             "NCCL on cuda, one GPU each) and fit the interconnect: a cost per ring hop and per byte")] = None,
    between_matmuls: Annotated[bool, typer.Option(
        help="with --allreduce-ranks: time each all-reduce right after the row-parallel matmul it reduces, "
             "as the model runs it (else back to back)")] = False,
    shape: Annotated[str, typer.Option(
        help="with --allreduce-ranks: the model preset whose hidden size (and FFN) sets the messages")] = "llama-3.1-8b",
    allreduce_tokens: Annotated[str | None, typer.Option(
        help="with --allreduce-ranks: tokens per message, e.g. 1,8,64,512 (default 1-512)")] = None,
    hardware: Annotated[str | None, typer.Option(
        help="with --allreduce-ranks: hardware profile (name or YAML) to write the fitted interconnect into")] = None,
    hardware_out: Annotated[Path | None, typer.Option(
        help="with --allreduce-ranks and --hardware: the calibrated hardware YAML to write")] = None,
) -> None:
    """Microbenchmark the engine's target and draft passes (and whole steps) over a grid -> profile JSON.

    With --allreduce-ranks: the all-reduce profile of the tensor-parallel engine instead, and its
    interconnect fit (the simulator's communication model)."""
    import torch

    from dspark_sim.engine.model import WEIGHT_DTYPES as dtypes
    from dspark_sim.measure.profile import load_engine_models, run_profile

    if device not in ("cpu", "cuda"):
        raise InputError("--device", None, f"got {device!r}, allowed: cpu, cuda")
    if allreduce_ranks is not None:
        raise typer.Exit(_profile_allreduce(device, dtype, allreduce_ranks, between_matmuls, shape,
                                            allreduce_tokens, repeats, hardware, hardware_out, out))
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device", None, "cuda requested but torch sees no CUDA device")
    if dtype not in dtypes:
        raise InputError("--dtype", None, f"got {dtype!r}, allowed: {', '.join(dtypes)}")
    grid = _profile_grid(quick, batch_sizes, query_tokens, contexts, kv_dtypes, repeats)
    dev = torch.device(device)
    target, draft, what = load_engine_models(preset, seed, cache_dir, dev, dtypes[dtype], random_weights)
    created_by = "dspark-sim " + " ".join(sys.argv[1:])
    out_console = console()
    with Progress(console=out_console, transient=True, disable=not out_console.is_terminal) as bar:
        task = bar.add_task(f"profiling {what}", total=_grid_size(grid))
        doc = run_profile(target, draft, grid, created_by=created_by, progress=lambda: bar.advance(task),
                          cuda_graphs=cuda_graphs)
    write_atomic(out, doc.model_dump_json(indent=2) + "\n")
    out_console.print(f"{len(doc.samples)} pass shapes and {len(doc.steps)} step shapes on {doc.device.name} "
                      f"({what}) -> {out}")


def _profile_grid(quick: bool, batch_sizes: str | None, query_tokens: str | None, contexts: str | None,
                  kv_dtypes: str | None, repeats: int | None) -> ProfileGrid:
    """The profile's grid: the full or quick one, with the shapes given on the command line."""
    import dataclasses

    from dspark_sim.engine.model import KV_DTYPES
    from dspark_sim.measure.profile import ProfileGrid

    grid = ProfileGrid.quick() if quick else ProfileGrid()
    updates: dict[str, Any] = {}
    if batch_sizes:  # passes and whole steps alike
        updates["batch_sizes"] = updates["step_batch_sizes"] = _csv_ints(batch_sizes, "--batch-sizes")
    if query_tokens:
        updates["query_tokens"] = _csv_ints(query_tokens, "--query-tokens")
    if contexts:
        updates["contexts"] = _csv_ints(contexts, "--contexts")
    if kv_dtypes:
        names = tuple(x.strip() for x in kv_dtypes.split(",") if x.strip())
        unknown = [x for x in names if x not in KV_DTYPES]
        if unknown or not names:
            raise InputError("--kv-dtypes", None, f"got {kv_dtypes!r}, allowed: {', '.join(KV_DTYPES)}")
        updates["kv_dtypes"] = names
    if repeats:
        updates["repeats"] = updates["step_repeats"] = repeats
    return dataclasses.replace(grid, **updates)


def _grid_size(grid: ProfileGrid) -> int:
    """Pass shapes and step configurations the profile times (the progress bar's total)."""
    return (len(grid.batch_sizes) * len(grid.contexts) * len(grid.kv_dtypes) * (len(grid.query_tokens) + 2)
            + len(grid.step_batch_sizes) * (len(grid.step_gammas) + bool(grid.step_dspark_gamma))
            * len(grid.step_prompt_tokens)
            * len(grid.step_temperatures))


def _profile_allreduce(device: str, dtype: str, ranks: int, between_matmuls: bool, shape: str,
                       tokens: str | None, repeats: int | None, hardware: str | None, hardware_out: Path | None,
                       out: Path) -> int:
    """`profile --allreduce-ranks`: the tensor-parallel module's all-reduce profile, started here."""
    from dspark_sim.cli import tp

    if ranks < 2:
        raise InputError("--allreduce-ranks", None, f"got {ranks}, an all-reduce needs at least 2 ranks")
    if hardware_out is not None and hardware is None:
        raise InputError("--hardware-out", None, "needs --hardware: the profile to write the fitted interconnect into")
    argv = ["allreduce", "--tp", str(ranks), "--device", device, "--dtype", dtype, "--shape", shape,
            "--out", str(out)]
    argv += ["--between-matmuls"] if between_matmuls else []
    argv += ["--tokens", tokens] if tokens else []
    argv += ["--repeats", str(repeats)] if repeats else []
    argv += ["--hardware", hardware] if hardware else []
    argv += ["--hardware-out", str(hardware_out)] if hardware_out else []
    return tp.main(argv)


def calibrate(
    profile_path: Annotated[Path, typer.Argument(metavar="PROFILE", help="profile JSON from `dspark-sim profile`")],
    out: Annotated[Path, typer.Option("--out", "-o", help="calibrated hardware profile YAML to write")],
    name: Annotated[str | None, typer.Option(help="profile name (default: the output file's stem)")] = None,
    report: Annotated[Path | None, typer.Option(help="also write the fit report (JSON) here")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Fit the cost model to a profile: effective bandwidths, FLOP/s, overheads; per-point errors; SPS(B)."""
    from dspark_sim.fit.calibrate import calibrate as fit
    from dspark_sim.fit.calibrate import load_profile, profile_yaml
    from dspark_sim.report.console import print_calibration

    doc = load_profile(profile_path)
    hw, rep = fit(doc, name or out.stem)
    write_atomic(out, profile_yaml(hw, rep, profile_path))
    if report is not None:
        write_atomic(report, rep.model_dump_json(indent=2) + "\n")
    if json_out:
        sys.stdout.write(rep.model_dump_json(indent=2) + "\n")
    else:
        print_calibration(rep, console())
        console().print(f"calibrated profile -> {out}")


def validate(
    device: Annotated[str, typer.Option(help="cpu | cuda")] = "cpu",
    quick: Annotated[bool, typer.Option(help="a small grid (minutes on 2 CPU cores); CI runs this")] = False,
    preset: Annotated[str | None, typer.Option(help="engine pair (default: test with --quick, else tiny)")] = None,
    seed: Annotated[int, typer.Option(help="seed of the trained pair")] = 0,
    cache_dir: Annotated[Path | None, typer.Option(help="where trained pairs live")] = None,
    profile_path: Annotated[Path | None, typer.Option("--profile", help="reuse a profile from `dspark-sim profile`")] = None,
    tolerance: Annotated[float | None, typer.Option(help="max median |error| in % (default 5, 15 with --quick)")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", "-o", help="report folder (default validation/reports/<device>)")] = None,
    dtype: Annotated[str | None, typer.Option(help="engine weights dtype: fp32 | bf16 (default: fp32 on cpu, bf16 on cuda)")] = None,
    drafters: Annotated[Path | None, typer.Option(
        "--drafters", help="instead: predict a measured drafter table (`dspark-sim engine drafters table`) with the "
                           "--profile of the same device; writes <out>/<table>_predicted.json and .md")] = None,
    repredict: Annotated[Path | None, typer.Option(
        "--repredict", help="instead: predict a report folder's measured points again with this code (its own "
                            "profile and traces; nothing measured) into --out")] = None,
    workers: Annotated[int | None, typer.Option(
        help="processes that simulate the measured cases (default: one a CPU core; same figures for any count)")] = None,
    estimator: Annotated[str | None, typer.Option(
        help="how timed repeats and profile rounds become one figure: auto (best on cuda, probed on cpu), "
             "median, best (the fastest), probed (every timing brought to one host speed by a yardstick read "
             "beside it, then the median; cpu only); with --repredict the default keeps the folder's own")] = None,
) -> None:
    """Predict tokens/s and speed-up with the simulator, measure them with the engine, report the error."""
    if workers is not None and workers < 1:
        raise InputError("--workers", None, f"must be >= 1, got {workers}")
    if drafters is not None:
        _validate_drafters(drafters, profile_path, out_dir, device, cache_dir, tolerance)
        return
    if repredict is not None:
        from dspark_sim.validate.repredict import repredict_report

        if out_dir is None or out_dir.resolve() == repredict.resolve():
            raise InputError("--out", None, "--repredict needs --out, another folder than the report's")
        log = console()
        report = repredict_report(repredict, out_dir, tolerance_pct=tolerance, seed=seed, log=log.print,
                                  workers=workers, estimator=estimator)
        _write_validation(report, out_dir, log)
        return

    import torch

    from dspark_sim.fit.calibrate import check_profile_matches, load_profile
    from dspark_sim.measure.profile import engine_version
    from dspark_sim.validate.compare import resolve_estimator
    from dspark_sim.validate.measure import run_validation

    if device not in ("cpu", "cuda"):
        raise InputError("--device", None, f"got {device!r}, allowed: cpu, cuda")
    chosen = resolve_estimator(estimator, device)
    if chosen == "probed" and device != "cpu":
        raise InputError("--estimator", None, "'probed' reads the host-speed yardstick on a CPU only; allowed on "
                         "cuda: auto, median, best")
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device", None, "cuda requested but torch sees no CUDA device")
    preset = preset or ("test" if quick else "tiny")
    tol = tolerance if tolerance is not None else (15.0 if quick else 5.0)
    prof = None
    if profile_path is not None:
        prof = load_profile(profile_path)
        check_profile_matches(prof, device_kind=device, engine_version=engine_version(), cuda_graphs=True,
                              source=str(profile_path))
    folder = out_dir or Path("validation/reports") / (device + ("-quick" if quick else ""))
    log = console()
    dtype = dtype or ("bf16" if device == "cuda" else "fp32")
    if dtype not in ("fp32", "bf16", "fp16"):
        raise InputError("--dtype", None, f"got {dtype!r}, allowed: fp32, bf16, fp16")
    report = run_validation(device=device, quick=quick, preset=preset, seed=seed, cache_dir=cache_dir, profile=prof,
                            out_dir=folder, tolerance_pct=tol, log=log.print, dtype=dtype, workers=workers,
                            estimator=chosen)
    _write_validation(report, folder, log)


_ESTIMATOR_WORDS = {"best": "fastest repeat", "median": "median repeat",
                    "probed": "median repeat at the run's reference host speed"}


def _write_validation(report: ValidationReport, folder: Path, console: Console) -> None:
    """report.json + report.html into `folder`, the error table on the console; exit 1 if not passed."""
    from dspark_sim.report.validation_page import validation_html

    write_atomic(folder / "report.json", report.model_dump_json(indent=2) + "\n")
    write_atomic(folder / "report.html", validation_html(report))
    tol = report.tolerance_pct
    for s in report.summary:
        console.print(f"{s.group:45s} n={s.points:3d}  speed-up err median {s.median_abs_speedup_error_pct:5.1f}% "
                      f"worst {s.worst_abs_speedup_error_pct:5.1f}%  tok/s err median "
                      f"{s.median_abs_tokens_per_s_error_pct:5.1f}% worst {s.worst_abs_tokens_per_s_error_pct:5.1f}%"
                      + (f"  (tau {s.median_abs_tau_error_pct:4.1f}%, per tau {s.median_abs_per_tau_error_pct:4.1f}%)"
                         if s.median_abs_tau_error_pct is not None and s.median_abs_per_tau_error_pct is not None
                         else "")
                      + (f"  (repeats spread {s.median_repeat_spread_speedup_pct:4.1f}% / "
                         f"{s.median_repeat_spread_tokens_per_s_pct:4.1f}%)"
                         if s.median_repeat_spread_speedup_pct is not None
                         and s.median_repeat_spread_tokens_per_s_pct is not None else ""))
    console.print(f"{'PASSED' if report.passed else 'FAILED'} (tolerance {tol:g}% median; measured figures: "
                  f"{_ESTIMATOR_WORDS[report.estimator]}) -> {folder}/report.html")
    if not report.passed:
        raise typer.Exit(1)


def _validate_drafters(table: Path, profile_path: Path | None, out_dir: Path | None, device: str,
                       cache_dir: Path | None, tolerance: float | None) -> None:
    """`validate --drafters`: the simulator's prediction of a measured drafter table, with its error."""
    from dspark_sim.fit.calibrate import check_profile_matches, load_profile
    from dspark_sim.validate.drafters import markdown, validate_drafters

    if profile_path is None:
        raise InputError("--drafters", None, "needs --profile: the engine profile of the device that measured the table")
    # the table's drafter loops call the models eagerly (on CUDA too), so their profile must time eager calls
    check_profile_matches(load_profile(profile_path), device_kind=device, cuda_graphs=False, source=str(profile_path))
    folder = out_dir or table.parent
    log = console()
    report = validate_drafters(table, profile_path, folder, cache_dir=str(cache_dir) if cache_dir else None,
                               command="dspark-sim " + " ".join(sys.argv[1:]), log=log.print)
    log.print(markdown(report).split("\n\nEvery row")[0])
    spec = [r for r in report["rows"] if r["config"] != "baseline"]
    med_tok = statistics.median(abs(r["tok_s_error_pct"]) for r in spec)
    med_speed = statistics.median(abs(r["speedup_error_pct"]) for r in spec)
    tol = 5.0 if tolerance is None else tolerance
    ok = max(med_tok, med_speed) <= tol
    log.print(f"speculative rows: tok/s error median {med_tok:.1f}%, speed-up {med_speed:.1f}% -> "
                  f"{'PASSED' if ok else 'FAILED'} (tolerance {tol:g}% median); {folder}/{table.stem}_predicted.md")
    if not ok:
        raise typer.Exit(1)

