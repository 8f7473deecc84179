"""`dspark-sim sweep`: many points of one scenario (a grid or a random sample) run in parallel.

A sweep file (`SweepSpec`) names a base scenario and the fields to vary (`--set` paths). Each point is
the base scenario with those fields set, evaluated by `predict` (the closed form) or `run` (the
simulator). Points are independent, so they run on local processes (concurrent.futures with the
'forkserver' or 'spawn' context) or on Ray, and come back in any order.

Results are made durable one point at a time: the parent process appends each finished point to
DIR/points.jsonl as one complete JSON line and fsyncs it. A killed sweep re-run with the same `-o DIR`
reads that file back (a torn last line is cut off), skips finished points, and runs only the rest.
Each point's seed is a hash of its own parameter values and the sweep seed, so a point's result is the
same whatever the order, executor or number of workers.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import multiprocessing
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dspark_sim.config.errors import InputError
from dspark_sim.config.io import append_line, write_atomic
from dspark_sim.config.loader import (
    absolutise_paths,
    apply_overrides,
    load_scenario_dict,
    override_resolver,
    read_yaml,
    scenario_from_dict,
    validate_as,
)
from dspark_sim.config.results import SweepPointRecord, SweepPointSummary, SweepResult
from dspark_sim.config.schema import ParameterRange, SweepSpec

POINTS_FILE = "points.jsonl"
MANIFEST_FILE = "sweep.json"
SUMMARY_FILE = "summary.json"
EXECUTORS = ("local", "ray", "inline")


# --------------------------------------------------------------------------------------------
# Loading and expanding
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SweepPoint:
    index: int
    key: str
    params: dict[str, Any]
    seed: int


@dataclass(frozen=True)
class LoadedSweep:
    spec: SweepSpec
    path: Path
    base_path: Path
    base_raw: dict
    points: list[SweepPoint]
    duplicates: int  # random draws that repeated an earlier point (dropped)

    @property
    def fingerprint(self) -> str:
        """Identifies what the points mean: the spec and the resolved base scenario."""
        return _digest({"spec": self.spec.model_dump(mode="json"), "base": self.base_raw})[:16]


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _digest(value: Any) -> str:
    return hashlib.sha256(canonical(value).encode()).hexdigest()


def point_key(params: dict[str, Any]) -> str:
    return _digest(params)[:16]


def point_seed(params: dict[str, Any], sweep_seed: int, seed_from: list[str] | None = None) -> int:
    """A 31-bit seed from the sorted parameter assignments (those in `seed_from`) and the sweep seed."""
    used = params if seed_from is None else {k: params[k] for k in seed_from if k in params}
    return int(_digest({"sweep_seed": sweep_seed, "params": used})[:8], 16) & 0x7FFFFFFF


def _tidy(x: float, integer: bool) -> float | int:
    if integer:
        return int(round(x))
    return float(f"{x:.6g}")


def _range_values(r: ParameterRange) -> list[Any]:
    n = r.num or 1
    if n == 1:
        raw = [r.min]
    elif r.log:
        raw = list(np.geomspace(r.min, r.max, n))
    else:
        raw = list(np.linspace(r.min, r.max, n))
    out: list[Any] = []
    for x in raw:
        v = _tidy(float(x), r.integer)
        if v not in out:
            out.append(v)
    return out


def _draw(r: ParameterRange, rng: np.random.Generator) -> float | int:
    if not r.integer:
        x = math.exp(rng.uniform(math.log(r.min), math.log(r.max))) if r.log else rng.uniform(r.min, r.max)
        return _tidy(x, False)
    # whole numbers min..max inclusive: widen by half a step so the end values are as likely as the rest
    lo, hi = math.ceil(r.min), math.floor(r.max)
    if hi < lo:
        return int(round(r.min))
    if r.log:
        x = math.exp(rng.uniform(math.log(max(lo - 0.5, lo / 2)), math.log(hi + 0.5)))
    else:
        x = rng.uniform(lo - 0.5, hi + 0.5)
    return int(min(hi, max(lo, round(x))))


def expand(spec: SweepSpec) -> tuple[list[dict[str, Any]], int]:
    """The points' parameter assignments in expansion order, and how many random duplicates were dropped."""
    names = list(spec.parameters) + list(spec.groups)
    if spec.mode == "grid":
        axes: list[list[Any]] = []
        for name in spec.parameters:
            p = spec.parameters[name]
            axes.append(_range_values(p) if isinstance(p, ParameterRange) else list(p))
        for name in spec.groups:
            axes.append(list(spec.groups[name]))
        combos = [dict(zip(names, vals)) for vals in itertools.product(*axes)]
    else:
        rng = np.random.default_rng(spec.seed)
        combos = []
        for _ in range(spec.samples or 0):
            point: dict[str, Any] = {}
            for name in sorted(names):
                if name in spec.groups:
                    labels = list(spec.groups[name])
                    point[name] = labels[int(rng.integers(len(labels)))]
                else:
                    p = spec.parameters[name]
                    if isinstance(p, ParameterRange):
                        point[name] = _draw(p, rng)
                    else:
                        point[name] = p[int(rng.integers(len(p)))]
            combos.append({n: point[n] for n in names})
    seen: set[str] = set()
    out = []
    for c in combos:
        k = point_key(c)
        if k not in seen:
            seen.add(k)
            out.append(c)
    return out, len(combos) - len(out)


def load_sweep(path: str | Path, extra_set: list[str] | None = None) -> LoadedSweep:
    path = Path(path)
    raw = read_yaml(path)
    spec = validate_as(SweepSpec, raw, str(path))
    base = Path(os.path.expandvars(os.path.expanduser(spec.base)))
    if not base.is_absolute():
        base = (path.resolve().parent / base).resolve()
    if not base.exists():
        raise InputError(str(path), "base", f"scenario file not found: {base}")
    base_raw = load_scenario_dict(base, list(spec.set) + list(extra_set or []))
    combos, dups = expand(spec)
    points = [
        SweepPoint(i, point_key(c), c, point_seed(c, spec.seed, spec.seed_from)) for i, c in enumerate(combos)
    ]
    loaded = LoadedSweep(spec, path, base, base_raw, points, dups)
    # fail fast on a bad path or value: build (and validate) the first point in this process
    if points:
        scenario_from_dict(point_dict(loaded, points[0]), f"{path} (point {points[0].params})")
    return loaded


# --------------------------------------------------------------------------------------------
# One point
# --------------------------------------------------------------------------------------------


def assignments(spec: SweepSpec, params: dict[str, Any]) -> list[str]:
    """The point's `--set` overrides: plain parameters, then each group's fields for its label."""
    out = []
    for name, value in params.items():
        if name in spec.groups:
            for path, v in spec.groups[name][value].items():
                out.append(f"{path}={canonical(v)}")
        else:
            out.append(f"{name}={canonical(value)}")
    return out


def scenario_dict_for(base_raw: dict, base_dir: Path, overrides: list[str], seed: int) -> dict:
    raw = dict(base_raw)
    raw["seed"] = seed  # a swept `seed` parameter (replications) overrides this
    raw = apply_overrides(raw, overrides, override_resolver("sweep"))
    return absolutise_paths(raw, base_dir)


def point_dict(loaded: LoadedSweep, point: SweepPoint) -> dict:
    return scenario_dict_for(
        loaded.base_raw, loaded.base_path.parent, assignments(loaded.spec, point.params), point.seed
    )


def predict_metrics(result) -> dict[str, Any]:
    """Headline figures of a predict document: its best point, and its first grid point."""
    fits = [p for p in result.points if p.fits_in_memory] or list(result.points)
    if not fits:
        return {}
    speedups = [p.best.speedup for p in fits]
    top = max(fits, key=lambda p: p.best.speedup)
    first = result.points[0]
    return {
        "speedup_max": top.best.speedup,
        "speedup_geomean": float(np.exp(np.mean(np.log(np.maximum(speedups, 1e-12))))),
        "best_gamma_at_max": top.best_gamma,
        "batch_at_max": top.batch_size,
        "context_at_max": top.context_tokens,
        "speedup": first.best.speedup,
        "best_gamma": first.best_gamma,
        "tau": first.best.tau,
        "tokens_per_s_per_user": first.best.tokens_per_s_per_user,
        "throughput_tokens_per_s_per_gpu": first.best.throughput_tokens_per_s_per_gpu,
        "baseline_tokens_per_s_per_user": first.baseline_tokens_per_s_per_user,
    }


_RUN_FIELDS = (
    "throughput_tokens_per_s_per_gpu", "tokens_per_s_per_user", "requests_per_s", "tau",
    "mean_verify_budget", "acceptance_rate", "mean_batch_size", "slo_met", "slo_attainment",
    "speedup_throughput", "speedup_tokens_per_s_per_user", "requests_finished",
)


def run_metrics(result) -> dict[str, Any]:
    """Headline figures of a run document: its first speculative summary (and its baseline)."""
    summaries = list(result.summaries)
    if not summaries:
        return {}
    main = next((s for s in summaries if s.variant != "baseline"), summaries[0])
    out: dict[str, Any] = {"variant": main.variant, "policy": main.policy}
    for f in _RUN_FIELDS:
        out[f] = getattr(main, f, None)
    out["ttft_p99_s"] = main.ttft_s.p99
    out["tpot_p99_ms"] = main.tpot_ms.p99
    base = next((s for s in summaries if s.variant == "baseline"), None)
    if base is not None:
        out["baseline_throughput_tokens_per_s_per_gpu"] = base.throughput_tokens_per_s_per_gpu
        out["baseline_tokens_per_s_per_user"] = base.tokens_per_s_per_user
    return out


def simulate_dict(raw: dict, source: str, base_dir: Path | None = None):
    """Run the simulator on a resolved scenario dict -> RunResult (the `run` command's document).

    The simulator's public entry, `dspark_sim.sim.run_scenario`, reads a scenario file, so the dict
    (names resolved, paths absolute) goes through a private temporary file; JSON is YAML.
    """
    import tempfile

    from dspark_sim.sim import run_scenario

    with tempfile.TemporaryDirectory(prefix="dspark-sweep-") as tmp:
        path = Path(tmp) / "scenario.yaml"
        path.write_text(json.dumps(raw), encoding="utf-8")
        try:
            run = run_scenario(path)
        except InputError as exc:  # name the user's files, not the temporary one
            raise InputError(source, exc.field, exc.message) from None
    return run.result


def evaluate(command: str, raw: dict, source: str) -> tuple[dict, dict[str, Any]]:
    """(result document, headline metrics) of one scenario dict."""
    if command == "predict":
        from dspark_sim.core.analytic import predict_scenario

        result = predict_scenario(scenario_from_dict(raw, source))
        return result.model_dump(mode="json"), predict_metrics(result)
    result = simulate_dict(raw, source)
    return result.model_dump(mode="json"), run_metrics(result)


def evaluate_point(task: dict) -> dict:
    """Worker entry (module level, picklable): one point -> a `SweepPointRecord` as a dict.

    Bad input for this point (a value that does not validate, a model that does not fit) is an
    'error' record, not a crash of the sweep.
    """
    t0 = time.perf_counter()
    source = f"{task['source']} (point {canonical(task['params'])})"
    rec: dict[str, Any] = {
        "key": task["key"], "index": task["index"], "params": task["params"], "seed": task["seed"],
    }
    try:
        raw = scenario_dict_for(task["base_raw"], Path(task["base_dir"]), task["overrides"], task["seed"])
        doc, metrics = evaluate(task["command"], raw, source)
        rec.update(status="ok", metrics=metrics, result=doc if task.get("keep_result", True) else None)
    except InputError as exc:
        rec.update(status="error", error=str(exc))
    except Exception as exc:  # a bug in one point must not lose the others
        rec.update(status="error", error=f"{type(exc).__name__}: {exc}")
    rec["elapsed_s"] = time.perf_counter() - t0
    return SweepPointRecord.model_validate(rec).model_dump(mode="json")


# --------------------------------------------------------------------------------------------
# Executors: map a picklable function over tasks, yielding results as they finish
# --------------------------------------------------------------------------------------------


def mp_context():
    """'forkserver' where the platform has it (no inherited threads or locks), else 'spawn'."""
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


def default_workers() -> int:
    return max(1, os.cpu_count() or 1)


def map_unordered(fn: Callable[[Any], Any], tasks: list[Any], executor: str = "local", workers: int | None = None,
                  ray_address: str | None = None) -> Iterator[Any]:
    """Yield fn(task) for every task, in completion order, on the chosen executor."""
    if executor not in EXECUTORS:
        raise InputError("--executor", None, f"got {executor!r}, allowed: {', '.join(EXECUTORS)}")
    if not tasks:
        return
    workers = workers or default_workers()
    if workers < 1:
        raise InputError("--workers", None, f"must be >= 1, got {workers}")
    if executor == "inline":
        for t in tasks:
            yield fn(t)
    elif executor == "local":
        yield from _map_local(fn, tasks, workers)
    else:
        yield from _map_ray(fn, tasks, workers, ray_address)


def _map_local(fn, tasks, workers) -> Iterator[Any]:
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    pool = ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=mp_context())
    try:
        pending = {pool.submit(fn, t) for t in tasks}
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                yield fut.result()
    finally:
        # on Ctrl-C / kill of the consumer: drop queued tasks, do not wait for running ones
        pool.shutdown(wait=False, cancel_futures=True)


def _map_ray(fn, tasks, workers, address) -> Iterator[Any]:
    try:
        import ray
    except ImportError:
        raise InputError("--executor", None, "ray is not installed (pip install 'dspark-sim[ray]')") from None
    started = False
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                  "logging_level": "ERROR", "configure_logging": True}
        try:
            if address:
                ray.init(address=address, **kwargs)
            else:
                ray.init(num_cpus=workers, **kwargs)
        except Exception as exc:  # connection refused, bad address...
            raise InputError("--ray-address", address, f"cannot start/connect to Ray: {exc}") from None
        started = True
    try:
        remote = ray.remote(num_cpus=1, max_retries=2)(fn)
        refs = [remote.remote(t) for t in tasks]
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                yield ray.get(ref)
    finally:
        if started:
            ray.shutdown()


# --------------------------------------------------------------------------------------------
# The durable record: DIR/points.jsonl
# --------------------------------------------------------------------------------------------


def _record(line: bytes) -> dict | None:
    try:
        rec = json.loads(line)
    except ValueError:
        return None
    return rec if isinstance(rec, dict) and "key" in rec and "status" in rec else None


def read_points(path: Path, repair: bool = True) -> list[dict]:
    """Complete records of a points file.

    A torn last line (the writer was killed mid-write) is ignored and, when `repair`, cut off in
    place; an unreadable line elsewhere (should not happen) is dropped by rewriting the file atomically.
    """
    if not path.exists():
        return []
    data = path.read_bytes()
    lines = data.split(b"\n")
    tail = lines.pop()  # b"" when the file ends with a newline, else a torn record
    records: list[dict] = []
    good_end = 0
    damaged_middle = False
    pos = 0
    for line in lines:
        pos += len(line) + 1
        if not line.strip():
            if not damaged_middle:
                good_end = pos
            continue
        rec = _record(line)
        if rec is None:
            damaged_middle = True
            continue
        records.append(rec)
        if not damaged_middle:
            good_end = pos
    if repair and damaged_middle:
        write_atomic(path, "".join(canonical(r) + "\n" for r in records))
    elif repair and (tail or good_end < len(data)):
        with open(path, "r+b") as fh:
            fh.truncate(good_end)
            fh.flush()
            os.fsync(fh.fileno())
    return records


def _manifest(loaded: LoadedSweep) -> dict:
    return {
        "kind": "sweep-manifest",
        "name": loaded.spec.name,
        "fingerprint": loaded.fingerprint,
        "sweep_file": str(loaded.path.resolve()),
        "base": str(loaded.base_path),
        "command": loaded.spec.command,
        "total_points": len(loaded.points),
        "spec": loaded.spec.model_dump(mode="json"),
        "base_scenario": loaded.base_raw,
    }


def _check_out_dir(out_dir: Path, loaded: LoadedSweep) -> None:
    mf = out_dir / MANIFEST_FILE
    if mf.exists():
        try:
            old = json.loads(mf.read_text())
        except ValueError:
            old = {}
        if old.get("fingerprint") != loaded.fingerprint:
            raise InputError(
                str(out_dir), None,
                "holds points of a different sweep (the sweep file or its base scenario changed); "
                "use another -o folder or delete this one",
            )
    elif (out_dir / POINTS_FILE).exists():
        raise InputError(str(out_dir / POINTS_FILE), None, f"found without {MANIFEST_FILE}; not resuming into it")


# --------------------------------------------------------------------------------------------
# The sweep
# --------------------------------------------------------------------------------------------


def _summaries(records: Iterable[dict]) -> list[SweepPointSummary]:
    out = [
        SweepPointSummary.model_validate({k: r.get(k) for k in SweepPointSummary.model_fields if k in r})
        for r in records
    ]
    return sorted(out, key=lambda s: s.index)


def run_sweep(
    sweep_path: str | Path,
    out_dir: str | Path | None = None,
    *,
    executor: str = "local",
    workers: int | None = None,
    ray_address: str | None = None,
    retry_errors: bool = False,
    extra_set: list[str] | None = None,
    keep_results: bool = True,
    on_start: Callable[[int, int], None] | None = None,
    on_point: Callable[[dict], None] | None = None,
    limit: int | None = None,
) -> SweepResult:
    """Run (or resume) a sweep into `out_dir`; return its summary (also written to DIR/summary.json).

    `on_start(total, already_done)` is called once, `on_point(record)` after each point is on disk.
    `limit` stops after that many new points (tests use it to simulate an interrupted sweep).
    """
    t0 = time.perf_counter()
    loaded = load_sweep(sweep_path, extra_set)
    spec = loaded.spec
    out = Path(out_dir) if out_dir is not None else Path("out") / "sweeps" / spec.name
    if out.exists() and not out.is_dir():
        raise InputError(str(out), None, "is a file, expected a folder for the sweep's results")
    _check_out_dir(out, loaded)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / MANIFEST_FILE, json.dumps(_manifest(loaded), indent=2) + "\n")
    points_path = out / POINTS_FILE
    known = {p.key for p in loaded.points}
    done: dict[str, dict] = {}
    for rec in read_points(points_path):
        if rec["key"] in known and not (retry_errors and rec["status"] == "error"):
            done[rec["key"]] = rec
    resumed = len(done)
    todo = [p for p in loaded.points if p.key not in done]
    if limit is not None:
        todo = todo[:limit]
    if on_start:
        on_start(len(loaded.points), resumed)
    tasks = [
        {
            "key": p.key, "index": p.index, "params": p.params, "seed": p.seed,
            "overrides": assignments(spec, p.params), "command": spec.command,
            "base_raw": loaded.base_raw, "base_dir": str(loaded.base_path.parent),
            "source": str(loaded.path), "keep_result": keep_results,
        }
        for p in todo
    ]
    n_workers = workers or default_workers()
    for rec in map_unordered(evaluate_point, tasks, executor, n_workers, ray_address):
        append_line(points_path, canonical(rec))
        done[rec["key"]] = rec
        if on_point:
            on_point(rec)
    summaries = _summaries(done.values())
    result = SweepResult(
        name=spec.name,
        command=spec.command,
        mode=spec.mode,
        base=str(loaded.base_path),
        seed=spec.seed,
        parameters=list(spec.parameters) + list(spec.groups),
        total_points=len(loaded.points),
        finished=len(summaries),
        errors=sum(1 for s in summaries if s.status == "error"),
        resumed=resumed,
        executor=executor,
        workers=n_workers if executor != "inline" else 1,
        wall_s=time.perf_counter() - t0,
        points=summaries,
    )
    write_atomic(out / SUMMARY_FILE, result.model_dump_json(indent=2) + "\n")
    return result


def load_sweep_folder(folder: str | Path) -> tuple[dict, list[dict]]:
    """(manifest, finished point records sorted by index) of a sweep output folder (read-only)."""
    folder = Path(folder)
    mf = folder / MANIFEST_FILE
    if not (folder / POINTS_FILE).exists():
        raise InputError(str(folder), None, f"no {POINTS_FILE}: not a sweep folder")
    manifest = json.loads(mf.read_text()) if mf.exists() else {}
    recs = read_points(folder / POINTS_FILE, repair=False)
    return manifest, sorted(recs, key=lambda r: r.get("index", 0))


# --------------------------------------------------------------------------------------------
# The command (rendering: progress bar and table)
# --------------------------------------------------------------------------------------------


def _cell(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return "-" if v is None else ("yes" if v else "no")
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}"
    if isinstance(v, dict | list):
        from dspark_sim.report.html import short

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


def print_sweep(result: SweepResult, console, limit: int = 40) -> None:
    from rich.table import Table

    table = Table(show_header=True, header_style="bold", title=f"sweep {result.name} ({result.command})")
    for name in result.parameters:
        table.add_column(name.split(".")[-1], justify="right")
    metrics = _TABLE_METRICS[result.command]
    for _key, head in metrics:
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
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

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
        from dspark_sim.report.html import write_dashboard

        write_dashboard([out], out / "report.html")
    if json_out:
        import sys

        sys.stdout.write(result.model_dump_json(indent=2) + "\n")
    else:
        console = Console(highlight=False)
        if not console.is_terminal:
            console = Console(highlight=False, width=160)
        print_sweep(result, console)
        console.print(f"[dim]results: {out / POINTS_FILE}, {out / SUMMARY_FILE}"
                      + (f", dashboard {out / 'report.html'}" if report else "") + "[/dim]")
    return result
