"""`dspark-sim sweep`: many points of one scenario (a grid or a random sample) run in parallel.

The points (`sweep_points`) are independent: `evaluate_point` runs each one (`predict` or `run`)
on local processes or on Ray (`executors`), and they come back in any order.

Results are made durable one point at a time: the parent process appends each finished point to
DIR/points.jsonl as one complete JSON line and fsyncs it. A killed sweep re-run with the same `-o DIR`
reads that file back (a torn last line is cut off), skips finished points, and runs only the rest.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from dspark_sim.config.errors import InputError
from dspark_sim.config.io import append_line, write_atomic
from dspark_sim.config.results import SweepPointSummary, SweepResult
from dspark_sim.studies.evaluate import evaluate_point
from dspark_sim.studies.executors import default_workers, map_unordered
from dspark_sim.studies.sweep_points import LoadedSweep, assignments, canonical, load_sweep

POINTS_FILE = "points.jsonl"
MANIFEST_FILE = "sweep.json"
SUMMARY_FILE = "summary.json"


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

