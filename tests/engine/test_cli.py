"""The `engine` typer app: train + generate end to end on the test preset; bad input -> InputError."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
from typer.testing import CliRunner  # noqa: E402

from dspark_sim.cli.engine import engine_app  # noqa: E402
from dspark_sim.config.errors import InputError  # noqa: E402
from dspark_sim.config.traces import RequestRecord, read_trace  # noqa: E402

runner = CliRunner()


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    res = runner.invoke(engine_app, ["train", "--preset", "test", "--seed", "1", "--cache-dir", str(root)])
    assert res.exit_code == 0, res.output
    assert "tau" in res.output and "alpha" in res.output
    return root


@pytest.mark.parametrize("extra", [
    ["--policy", "fixed:3"],
    ["--policy", "confidence_threshold:5@0.3", "--batch-size", "3"],
    ["--policy", "dspark:4", "--batch-size", "2", "--temperature", "0.8", "--top-k", "20"],
    ["--policy", "goodput:3", "--batch-size", "2"],
    ["--policy", "none", "--kv-dtype", "int8"],
    ["--dtype", "bf16", "--policy", "fixed:2"],
])
def test_generate(cache, tmp_path, extra):
    trace = tmp_path / "t.jsonl"
    res = runner.invoke(engine_app, ["generate", "--preset", "test", "--seed", "1", "--cache-dir", str(cache),
                                     "--prompt", "def f(x):", "--max-new-tokens", "24", "--trace", str(trace),
                                     *extra])
    assert res.exit_code == 0, res.output
    for word in ("tau", "acceptance by position", "speculative tok/s", "baseline tok/s", "speed-up"):
        assert word in res.output
    if "--temperature" not in extra and "bf16" not in extra:
        assert "True" in res.output  # greedy output identical to the baseline's
    reqs = [r for r in read_trace(trace) if isinstance(r, RequestRecord)]
    assert reqs and all(r.output_len == 24 for r in reqs)


@pytest.mark.parametrize("args, field", [
    (["train", "--preset", "huge"], "unknown preset"),
    (["generate", "--preset", "nope"], "unknown preset"),
    (["generate", "--preset", "test", "--seed", "99"], "no trained pair"),
    (["generate", "--preset", "test", "--seed", "1", "--temperature", "-1"], "temperature"),
    (["generate", "--preset", "test", "--seed", "1", "--policy", "magic"], "--policy"),
    (["generate", "--preset", "test", "--seed", "1", "--policy", "fixed"], "--policy"),  # no draft length
    (["generate", "--preset", "test", "--seed", "1", "--policy", "fixed:3@0.5"], "--policy"),
    (["generate", "--preset", "test", "--seed", "1", "--policy", "confidence_threshold:4@2"], "--policy"),
    (["generate", "--preset", "test", "--seed", "1", "--kv-dtype", "int3"], "--kv-dtype"),
    (["generate", "--preset", "test", "--seed", "1", "--device", "tpu"], "--device"),
    (["generate", "--preset", "test", "--seed", "1", "--max-new-tokens", "0"], "--max-new-tokens"),
    (["generate", "--preset", "test", "--seed", "1", "--max-new-tokens", "5000"], "context"),
    (["generate", "--preset", "test", "--seed", "1", "--dtype", "fp8"], "--dtype"),
    (["generate", "--preset", "test", "--seed", "1", "--kernels", "fast"], "--kernels"),
    (["generate", "--preset", "test", "--seed", "1", "--kernels", "triton"], "--kernels"),  # cpu
    (["generate", "--preset", "test", "--seed", "1", "--step-graphs"], "--step-graphs"),  # cpu
])
def test_bad_input_raises_input_error(cache, args, field):
    res = runner.invoke(engine_app, [*args, "--cache-dir", str(cache)])
    assert isinstance(res.exception, InputError), res.output
    assert field in str(res.exception)


def test_bad_policy_is_one_line_exit_2(cache, run_cli):
    """Through the main CLI: a bad shorthand is one `error:` line and exit code 2, no traceback."""
    res = run_cli("engine", "generate", "--preset", "test", "--seed", "1", "--cache-dir", str(cache),
                  "--policy", "fixed:x")
    assert res.returncode == 2, res.stderr
    lines = (res.stdout + res.stderr).strip().splitlines()
    assert len(lines) == 1 and "--policy" in lines[0] and "fixed:x" in lines[0], lines
