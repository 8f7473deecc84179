"""`dspark-sim plan`: the capacity search (bisection), replicas and cost arithmetic, the command."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest

from dspark_sim.cli.study_runs import print_plan
from dspark_sim.config.errors import InputError
from dspark_sim.config.schema import PlanSpec
from dspark_sim.studies import capacity
from dspark_sim.studies import plan as planmod

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "scenarios" / "quickstart.yaml"

TINY_PLAN = f"""
name: tiny
base: {QUICKSTART}
load: {{requests_per_s: 30, headroom: 0.1}}
slo: {{ttft_p99_s: 1.0, tpot_p99_ms: 15}}
gpu_price_usd_per_hour: {{h200-sxm: 2.0}}   # a test input, not a price
candidates:
  hardware: [h200-sxm]
  tensor_parallel: [1]
  speculation:
    - {{name: eagle g3, drafter: {{kind: eagle, num_layers: 1}}, policy: {{kind: fixed, gamma: 3}}}}
search: {{num_requests: 120, warmup_requests: 10, max_simulations: 7, tolerance: 0.08}}
"""


def _spec(**load) -> PlanSpec:
    return PlanSpec.model_validate({
        "name": "t", "base": "x.yaml", "load": load, "slo": {"ttft_p99_s": 1.0, "tpot_p99_ms": 20},
        "gpu_price_usd_per_hour": {"h200-sxm": 1.0},
        "candidates": {"hardware": ["h200-sxm"], "speculation": [{"name": "s"}]},
        "search": {"tolerance": 0.02, "max_simulations": 20},
    })


def _fake_probe(threshold: float, calls: list):
    def probe(raw, spec, load, source):
        calls.append(load)
        ok = load <= threshold
        return SimpleNamespace(
            slo_met=ok, ttft_s=SimpleNamespace(p99=0.1 if ok else 5.0), tpot_ms=SimpleNamespace(p99=10.0),
            tokens_per_s_per_user=100.0, throughput_tokens_per_s=load * 300.0, requests_per_s=load,
            mean_batch_size=load,
        )
    return probe


@pytest.mark.parametrize("guess", [1.0, 37.3, 500.0])
def test_capacity_search_brackets_then_bisects(monkeypatch, guess):
    calls: list = []
    monkeypatch.setattr(capacity, "probe", _fake_probe(37.3, calls))
    cap, s, probes = capacity.capacity_search({}, _spec(requests_per_s=10), "t", guess)
    assert cap <= 37.3 and (37.3 - cap) / 37.3 <= 0.02  # within the tolerance, on the safe side
    assert s.slo_met and len(probes) == len(calls) <= 20
    assert any(not p["slo_met"] for p in probes)  # the bracket's upper end was observed failing


def test_capacity_search_integer_users(monkeypatch):
    calls: list = []
    monkeypatch.setattr(capacity, "probe", _fake_probe(45, calls))
    cap, s, _ = capacity.capacity_search({}, _spec(concurrent_users=100), "t", 8)
    assert cap == 45 and all(float(c).is_integer() for c in calls)


def test_capacity_search_infeasible(monkeypatch):
    calls: list = []
    monkeypatch.setattr(capacity, "probe", _fake_probe(0.0, calls))
    cap, s, _ = capacity.capacity_search({}, _spec(concurrent_users=10), "t", 4)
    assert cap == 0 and s is None


def test_plan_spec_errors(tmp_path, write_yaml, run_cli):
    no_price = write_yaml(TINY_PLAN.replace("h200-sxm: 2.0", "h100-sxm: 2.0"), "p.yaml")
    r = run_cli("plan", str(no_price))
    assert r.returncode == 2 and "gpu_price_usd_per_hour" in r.stderr and r.stderr.count("\n") == 1
    no_ttft = write_yaml(TINY_PLAN.replace("ttft_p99_s: 1.0, ", ""), "q.yaml")
    with pytest.raises(InputError, match="TTFT"):
        planmod.load_plan(no_ttft)
    both = write_yaml(TINY_PLAN.replace("requests_per_s: 30", "requests_per_s: 30, concurrent_users: 4"), "r.yaml")
    r = run_cli("plan", str(both))
    assert r.returncode == 2 and "exactly one" in r.stderr


def test_tiny_plan_end_to_end(tmp_path, write_yaml):
    path = write_yaml(TINY_PLAN, "plan.yaml")
    res = planmod.run_plan(path, executor="local", workers=2)
    assert [c.speculation for c in res.candidates] == ["eagle g3", "no speculation"]
    assert res.best is not None and res.best_with_speculation is not None
    for c in res.candidates:
        assert c.feasible and c.replica_capacity > 0 and c.simulations >= 2
        assert c.at_capacity["slo_met"] is True
        assert c.replicas == math.ceil(30 * 1.1 / c.replica_capacity - 1e-9)
        assert c.gpus == c.replicas and c.usd_per_hour == pytest.approx(2.0 * c.gpus)
        # open loop: $/M tokens = price per hour / (target rate x mean output tokens x 3600) x 1e6
        mean_out = c.usd_per_hour / c.usd_per_million_output_tokens * 1e6 / 3600 / 30
        assert 250 < mean_out < 400  # quickstart: lognormal median 256, sigma 0.7 -> mean about 326
        assert c.capacity == pytest.approx(c.replica_capacity * c.replicas)
        assert c.at_capacity["tpot_p99_ms"] <= 15 and c.at_capacity["ttft_p99_s"] <= 1.0
        assert c.check["load"] == pytest.approx(30 / c.replicas)
    assert res.best.usd_per_million_output_tokens == min(c.usd_per_million_output_tokens for c in res.candidates)


def test_plan_cli_json_and_report(tmp_path, write_yaml, run_cli):
    path = write_yaml(TINY_PLAN.replace("num_requests: 120", "num_requests: 60"), "plan.yaml")
    out = tmp_path / "plan.json"
    r = run_cli("plan", str(path), "--json", "-o", str(out), "--report", str(tmp_path / "plan.html"),
                "--executor", "inline")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["kind"] == "plan" and doc == json.loads(out.read_text())
    assert doc["prices_usd_per_gpu_hour"] == {"h200-sxm": 2.0}
    assert "Capacity plan" in (tmp_path / "plan.html").read_text()
    from rich.console import Console

    from dspark_sim.config.results import PlanResult

    console = Console(record=True, width=200)
    print_plan(PlanResult.model_validate(doc), console)
    text = console.export_text()
    assert "cheapest" in text and "inputs from the plan file" in text


def test_worked_example_is_valid():
    spec, base, raw = planmod.load_plan(REPO / "scenarios" / "plans" / "llama8b_chat.yaml")
    tasks = planmod.candidate_tasks(spec, raw, "example")
    assert len(tasks) == 2 * 2 * 3 and base.name == "quickstart.yaml"  # hardware x TP x speculation
