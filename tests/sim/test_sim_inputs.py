"""Bad input is one InputError (exit 2, one line, via the CLI), never a traceback."""

from __future__ import annotations

import json

import pytest

from dspark_sim.config.errors import InputError
from dspark_sim.sim.run import Simulation, run_scenario

from .sim_helpers import base_dict, scenario, shrink_kv, with_sets, write


def _sim(d, *sets):
    return Simulation(scenario(d, *sets))


@pytest.mark.parametrize("slo, field", [
    ("{tpot_p99_ms: 0.001}", "slo.tpot_p99_ms"),
    ("{min_tokens_per_s_per_user: 1000000}", "slo.min_tokens_per_s_per_user"),
    ("{ttft_p99_s: 0.0000001}", "slo.ttft_p99_s"),
])
def test_impossible_slos(slo, field):
    with pytest.raises(InputError, match="impossible") as err:
        _sim(base_dict(), f"slo={slo}")
    assert err.value.field == field


def test_model_that_does_not_fit():
    with pytest.raises(InputError, match="does not fit"):
        _sim(base_dict(), "deployment.hardware.memory_capacity_gb=1")


def test_zero_kv_capacity():
    d = shrink_kv(base_dict(), 0)
    with pytest.raises(InputError, match="(zero KV|does not fit)"):
        _sim(d)


def test_request_longer_than_the_kv_cache():
    d = shrink_kv(base_dict(), 200)
    with pytest.raises(InputError, match="KV slots"):
        _sim(d)


def test_speculating_without_a_drafter():
    with pytest.raises(InputError, match="drafter"):
        _sim(base_dict(), "deployment.drafter={kind: none}")


def test_table_policy_without_table():
    with pytest.raises(InputError, match="sps_table"):
        _sim(base_dict(), "policy={kind: dspark, sps_source: table}")


def test_acceptance_trace_with_a_missing_field(tmp_path):
    path = tmp_path / "acc.jsonl"
    path.write_text(json.dumps({"prompt_len": 5, "output_len": 5}) + "\n")
    with pytest.raises(InputError, match="missing field"):
        _sim(base_dict(), f"acceptance={{kind: trace, path: {path}}}")


def test_arrival_trace_with_a_missing_field(tmp_path):
    path = tmp_path / "arr.jsonl"
    path.write_text(json.dumps({"prompt_len": 5, "output_len": 5}) + "\n")
    with pytest.raises(InputError, match="arrival_s"):
        _sim(base_dict(), f"workload.arrivals={{kind: trace, path: {path}}}")


def test_nothing_to_measure_within_the_time_limit():
    with pytest.raises(InputError, match="no request finished"):
        run_scenario(None, ["simulation.max_simulated_s=0.0001", "simulation.simulate_baseline=false"])


def test_a_bad_variant_is_skipped_with_its_reason(tmp_path):
    d = with_sets(base_dict(), 'variants=[{name: broken, set: ["deployment.hardware.memory_capacity_gb=1"]}]')
    run = run_scenario(write(tmp_path, d), [])
    assert [s.variant for s in run.result.summaries] == ["baseline", "main"]
    broken = [sk for sk in run.result.skipped if sk.variant == "broken"]
    assert len(broken) == 1 and "does not fit" in broken[0].reason


def test_every_configuration_bad_raises(tmp_path):
    d = with_sets(base_dict(), "deployment.hardware.memory_capacity_gb=1")
    with pytest.raises(InputError, match="does not fit"):
        run_scenario(write(tmp_path, d), [])


def test_cli_reports_one_line_and_exit_2(tmp_path, run_cli):
    d = with_sets(base_dict(), "slo={tpot_p99_ms: 0.001}")
    proc = run_cli("run", str(write(tmp_path, d)), "--no-progress")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "impossible" in lines[0]
    assert "Traceback" not in proc.stderr
