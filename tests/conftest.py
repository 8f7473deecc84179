"""Shared fixtures. Tests need no data from outside the repository: what they use is made here or bundled."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# Without a GPU, Triton kernels (dspark_sim.engine.kernels) run in Triton's interpreter, which must be
# chosen before triton is first imported: here, ahead of every test module.
if not Path("/dev/nvidia0").exists():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def run_cli():
    """Run `dspark-sim ARGS` in a fresh process (as a user would) -> CompletedProcess."""

    def _run(*args: str, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "dspark_sim.cli.main", *args],
            capture_output=True,
            text=True,
            cwd=cwd or REPO,
            timeout=timeout,
        )

    return _run


@pytest.fixture
def write_yaml(tmp_path):
    def _write(text: str, name: str = "scenario.yaml") -> Path:
        p = tmp_path / name
        p.write_text(text)
        return p

    return _write
