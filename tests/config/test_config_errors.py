"""Bad input: one line naming the file, the field and what is allowed; exit code 2; no traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from dspark_sim.config.errors import InputError
from dspark_sim.config.loader import apply_overrides, load_scenario, parse_override

GOOD = """
name: t
deployment:
  hardware: h200-sxm
  model: llama-3.1-8b
  drafter: {kind: eagle}
acceptance: {kind: iid, alpha: 0.7}
policy: {kind: fixed, gamma: 3}
predict: {batch_sizes: [1], context_lengths: [1024], gammas: [1, 2, 3]}
"""


def _one_line_error(proc, *needles: str) -> str:
    assert proc.returncode == 2, proc.stderr + proc.stdout
    err = proc.stderr.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    return err


def test_good_scenario_loads(write_yaml):
    sc = load_scenario(write_yaml(GOOD))
    assert sc.deployment.hardware.name == "h200-sxm"
    assert sc.deployment.model.num_layers == 32


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ("name: t\ndeployment: [unclosed\n", ["malformed YAML", "line"]),
        (GOOD + "bogus_key: 1\n", ["bogus_key", "unknown key"]),
        (GOOD.replace("alpha: 0.7", "alpha: 1.5"), ["acceptance.alpha", "less than or equal to 1"]),
        (GOOD.replace("gamma: 3}", "gamma: -1}"), ["policy.gamma", "greater than or equal to 0"]),
        (GOOD.replace("gamma: 3}", "gamma: three}"), ["policy.gamma", "integer"]),
        (GOOD.replace("hardware: h200-sxm", "hardware: h900"), ["deployment.hardware", "unknown hardware profile", "h200-sxm"]),
        (GOOD.replace("model: llama-3.1-8b", "model: llama-9"), ["deployment.model", "unknown model preset"]),
        (
            GOOD.replace("hardware: h200-sxm", "hardware: {base: h200-sxm, memory_bandwidth_gbps: -5}"),
            ["deployment.hardware.memory_bandwidth_gbps", "greater than 0"],
        ),
        (GOOD.replace("kind: iid", "kind: magic"), ["acceptance", "magic", "allowed"]),
    ],
)
def test_bad_scenario_one_line(run_cli, write_yaml, text, needles):
    path = write_yaml(text)
    err = _one_line_error(run_cli("predict", str(path)), *needles)
    assert str(path) in err


def test_missing_file(run_cli, tmp_path):
    missing = tmp_path / "nope.yaml"
    _one_line_error(run_cli("predict", str(missing)), str(missing), "file not found")


def test_bad_override(run_cli, write_yaml):
    path = write_yaml(GOOD)
    _one_line_error(run_cli("predict", str(path), "--set", "acceptance.alpha=2"), "acceptance.alpha")
    _one_line_error(run_cli("predict", str(path), "--set", "noequals"), "--set", "path.to.field=value")


def test_unknown_profile_show(run_cli):
    _one_line_error(run_cli("profiles", "show", "no-such-gpu"), "unknown hardware profile")


def test_override_paths():
    path, value = parse_override("a.b[1].c=3.5")
    assert path == ["a", "b", 1, "c"] and value == 3.5
    out = apply_overrides({"a": {"b": [0, {"c": 1}]}}, ["a.b[1].c=2", "x.y=[1, 2]"])
    assert out == {"a": {"b": [0, {"c": 2}]}, "x": {"y": [1, 2]}}
    with pytest.raises(InputError):
        apply_overrides({"a": [1]}, ["a[3]=1"])


def test_override_reaches_named_profile(write_yaml):
    sc = load_scenario(write_yaml(GOOD), ["deployment.hardware.memory_bandwidth_gbps=1000"])
    assert sc.deployment.hardware.memory_bandwidth_gbps == 1000
    sc = load_scenario(write_yaml(GOOD), ["deployment.hardware=h100-sxm"])
    assert sc.deployment.hardware.name == "h100-sxm"


def test_missing_optional_package_is_one_line():
    """Without the engine extra, engine commands say which extra to install (no traceback)."""
    code = "import sys; sys.modules['torch'] = None; sys.argv = ['dspark-sim', 'profile']; " \
           "from dspark_sim.cli.main import main; main()"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "pip install 'dspark-sim[engine]'" in proc.stderr and "Traceback" not in proc.stderr
