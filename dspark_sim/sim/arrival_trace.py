"""Request traces to replay: each request's arrival time, prompt and output length, and optionally its
recorded acceptance (step yields by output position), from JSONL or CSV."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dspark_sim.config.errors import InputError
from dspark_sim.config.schema import TraceArrivals

_TIME_KEYS = ("arrival_s", "arrival_time_s", "arrival_time", "timestamp")
_PROMPT_KEYS = ("prompt_len", "prompt_tokens", "input_len")
_OUTPUT_KEYS = ("output_len", "output_tokens")
_ACCEPT_KEYS = ("accept_len",)


@dataclass(frozen=True)
class ArrivalTrace:
    times: np.ndarray
    prompts: np.ndarray
    outputs: np.ndarray
    yields: list[np.ndarray | None]


def _pick(rec: dict[str, Any], keys: tuple[str, ...], path: str, where: str, required: bool = True) -> Any:
    for k in keys:
        if k in rec and rec[k] not in (None, ""):
            return rec[k]
    if required:
        raise InputError(path, f"{where}.{keys[0]}", f"missing field (accepted names: {', '.join(keys)})")
    return None


def _number(value: Any, path: str, where: str, integer: bool) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise InputError(path, where, f"expected a number, got {value!r}") from None
    if not np.isfinite(x) or x < 0 or (integer and (x != int(x) or x < 1)):
        kind = "a whole number >= 1" if integer else "a finite number >= 0"
        raise InputError(path, where, f"expected {kind}, got {value!r}")
    return x


def _read_records(path: str) -> list[tuple[str, dict[str, Any]]]:
    """(where, record) of each request in the file: CSV rows, or JSONL objects (blank lines skipped)."""
    p = Path(path)
    if not p.exists():
        raise InputError(path, None, "arrival trace not found")
    records: list[tuple[str, dict[str, Any]]] = []
    try:
        if p.suffix.lower() == ".csv":
            with p.open(encoding="utf-8", newline="") as fh:
                for i, row in enumerate(csv.DictReader(fh), 2):
                    records.append((f"line {i}", dict(row)))
        else:
            with p.open(encoding="utf-8") as fh:
                for i, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise InputError(path, f"line {i}", f"not valid JSON ({exc.msg})") from None
                    if not isinstance(rec, dict):
                        raise InputError(path, f"line {i}", "expected a JSON object per line")
                    records.append((f"line {i}", rec))
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(path, None, f"cannot read: {exc}") from None
    if not records:
        raise InputError(path, None, "no requests in the arrival trace")
    return records


def load_arrival_trace(spec: TraceArrivals, accept_field: str | None = None) -> ArrivalTrace:
    """Read a JSONL or CSV request trace: arrival time, prompt and output length, optional yields.

    Optional per-step acceptance: `accept_len` (or the acceptance trace's `field`), a list of step
    yields by output position (SpecDecode-Bench convention); in CSV, numbers separated by spaces or `;`.
    """
    path = spec.path
    records = _read_records(path)
    keys = _ACCEPT_KEYS + ((accept_field,) if accept_field else ())
    times: list[float] = []
    prompts: list[float] = []
    outputs: list[float] = []
    yields: list[np.ndarray | None] = []
    for where, rec in records:
        times.append(_number(_pick(rec, _TIME_KEYS, path, where), path, where, integer=False))
        prompts.append(_number(_pick(rec, _PROMPT_KEYS, path, where), path, where, integer=True))
        outputs.append(_number(_pick(rec, _OUTPUT_KEYS, path, where), path, where, integer=True))
        acc = _pick(rec, keys, path, where, required=False)
        if acc is None:
            yields.append(None)
            continue
        if isinstance(acc, str):
            acc = [x for x in acc.replace(";", " ").split() if x]
        try:
            arr = np.asarray([int(x) for x in acc], dtype=np.int64)
        except (TypeError, ValueError):
            raise InputError(path, f"{where}.accept_len", "expected a list of whole-number step yields") from None
        if arr.size == 0 or arr.min() < 1:
            raise InputError(path, f"{where}.accept_len", "expected step yields >= 1")
        yields.append(arr)
    t = np.asarray(times, dtype=float)
    order = np.argsort(t, kind="stable")
    t = (t[order] - t[order[0]]) * spec.time_scale
    return ArrivalTrace(
        times=t,
        prompts=np.asarray(prompts, dtype=np.int64)[order],
        outputs=np.asarray(outputs, dtype=np.int64)[order],
        yields=[yields[i] for i in order],
    )
