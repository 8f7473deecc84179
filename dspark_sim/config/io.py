"""Atomic file output: a result file is either the old one or the complete new one, never half."""

from __future__ import annotations

import gzip
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from dspark_sim.config.errors import InputError


def read_json(path: str | Path, what: str, missing: str) -> Any:
    """The parsed JSON document at `path`; a missing file (message `missing`) or one that is not JSON
    ("not a JSON <what>") is one InputError naming the file."""
    p = Path(path)
    if not p.is_file():
        raise InputError(str(p), None, missing)
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(str(p), None, f"not a JSON {what} ({exc})") from None


def open_text(path: str | Path):
    """A text file for reading, gunzipped on the fly when its name ends in .gz (traces are stored so)."""
    if str(path).endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def write_atomic(path: str | os.PathLike[str], data: str | bytes) -> Path:
    """Write to a temporary file in the same folder, fsync, then rename over `path`; text to a name
    ending in .gz is gzipped (with no timestamp, so the same text gives the same bytes)."""
    path = Path(path)
    if isinstance(data, str) and path.name.endswith(".gz"):
        data = gzip.compress(data.encode("utf-8"), mtime=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        _write_synced(fd, data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a result file is as readable as any other
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _write_synced(fd: int, data: str | bytes) -> None:
    """Write `data` to the open descriptor `fd` (text as UTF-8), flush and fsync, close it."""
    if isinstance(data, bytes):
        with os.fdopen(fd, "wb") as fb:
            fb.write(data)
            fb.flush()
            os.fsync(fb.fileno())
    else:
        with os.fdopen(fd, "w", encoding="utf-8") as ft:
            ft.write(data)
            ft.flush()
            os.fsync(ft.fileno())


def append_line(path: str | Path, line: str) -> None:
    """Append one complete line and fsync (sweeps record finished points this way)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(line.rstrip("\n") + "\n")
        fh.flush()
        os.fsync(fh.fileno())
