"""The host-speed yardstick (measure/host_speed.py) and the 'probed' estimator built on it."""

from __future__ import annotations

import itertools

import pytest

torch = pytest.importorskip("torch")

from dspark_sim.config.errors import InputError  # noqa: E402
from dspark_sim.config.measurements import DeviceInfo, MeasuredCase, ValidationMeasurements  # noqa: E402
from dspark_sim.measure.host_speed import HostProbe  # noqa: E402
from dspark_sim.measure.profile_merge import at_reference_speed, merge_profiles, scaled  # noqa: E402
from dspark_sim.validate.compare import resolve_estimator, summarised  # noqa: E402


def test_probe_timeline_interpolates_between_readings():
    readings = iter([{"step": 1.0, "target": 3.0}, {"step": 4.0, "target": 3.0}])
    host = HostProbe(lambda: next(readings), every_s=3600.0)
    host.tick()
    host.tick()  # within every_s: no second reading
    assert len(host.timeline) == 1
    host.tick(force=True)
    assert len(host.timeline) == 2 and host.timeline[0][0] <= host.timeline[1][0]
    # two ticks lie microseconds apart on a clock near the host's uptime, where a midpoint rounds; place the
    # readings at exact moments so the interpolation is checked, not float rounding
    host.timeline = [(100.0, host.timeline[0][1]), (200.0, host.timeline[1][1])]
    (t0, _), (t1, _) = host.timeline
    # log-linear: half-way between 1 and 4 is 2; outside the readings the nearest one holds
    assert host.at((t0 + t1) / 2, "step") == pytest.approx(2.0)
    assert host.at((t0 + t1) / 2, "target") == pytest.approx(3.0)
    assert host.at(t0 - 10, "step") == 1.0 and host.at(t1 + 10, "step") == 4.0
    assert host.reference() == pytest.approx({"step": 2.5, "target": 3.0})  # each kind's median reading
    rel = host.relative_timeline()["step"]
    assert rel == [(0.0, 1.0), (100.0, 4.0)]
    # a timing taken while the yardstick read twice the reference shrinks by half
    assert scaled(10.0, 5.0, 2.5) == pytest.approx(5.0) and scaled(10.0, None, 2.5) == 10.0
    with pytest.raises(ValueError):
        HostProbe(lambda: {"step": 1.0}).at(0.0, "step")


def test_profile_keeps_the_yardstick_beside_every_timing(tmp_path):
    """A CPU profile with a host probe: every pass repeat and step run carries its kind's yardstick at its
    moment (a pass its model's, a step the step yardstick's), and at_reference_speed scales each timing by
    reference / yardstick."""
    from dspark_sim.measure.profile import ProfileGrid, load_engine_models, run_profile

    target, draft, _ = load_engine_models("test", 0, tmp_path, torch.device("cpu"), torch.float32, True)
    grid = ProfileGrid(batch_sizes=(1, 2), query_tokens=(1, 3), contexts=(16,), step_batch_sizes=(1,),
                       step_gammas=(0, 2), step_prompt_tokens=(16,), step_temperatures=(0.0,), step_new_tokens=8,
                       repeats=2, step_repeats=1, warmup=1)
    values = itertools.cycle([{"step": 0.01, "target": 0.1, "draft": 1.0}, {"step": 0.02, "target": 0.2, "draft": 2.0},
                              {"step": 0.04, "target": 0.4, "draft": 4.0}])
    host = HostProbe(lambda: next(values), every_s=0.0)  # a reading before every shape and step run
    prof = run_profile(target, draft, grid, created_by="test", host=host)
    assert len(host.timeline) > len(prof.samples)
    for s in prof.samples:
        assert s.host_probe_s is not None and len(s.host_probe_s) == len(s.times_s)
        lo, hi = (0.1, 0.4) if s.role == "target" else (1.0, 4.0)  # the model's own pass yardstick
        assert all(lo - 1e-12 <= p <= hi + 1e-12 for p in s.host_probe_s)
    assert all(0.01 - 1e-12 <= st.host_probe_s <= 0.04 + 1e-12 for st in prof.steps)
    ref = {"step": 0.02, "target": 0.2, "draft": 2.0}
    at_ref = at_reference_speed(prof, ref)
    for raw, s in zip(prof.samples, at_ref.samples, strict=True):
        r = ref[s.role]
        assert s.times_s == pytest.approx([t * r / p for t, p in zip(raw.times_s, raw.host_probe_s, strict=True)])
        assert s.host_probe_s == [r] * len(s.times_s)
    for raw, st in zip(prof.steps, at_ref.steps, strict=True):
        assert st.step_s == pytest.approx(raw.step_s * 0.02 / raw.host_probe_s)
    # without a probe (a GPU, or the `profile` command) nothing is recorded and nothing is scaled
    plain = run_profile(target, draft, grid, created_by="test")
    assert all(s.host_probe_s is None for s in plain.samples) and all(st.host_probe_s is None for st in plain.steps)
    assert at_reference_speed(plain, ref) == plain


def _meas(cases, reference_s):
    return ValidationMeasurements(device=DeviceInfo(kind="cpu", name="x", torch_version="t", threads=2, memory_gb=1.0,
                                                    onchip_mb=1.0), engine_version="v", preset="test", quick=True,
                                  command="c", acceptance_by_temperature={}, timings_s={}, sps_table={1: 1.0},
                                  profile_rounds=3, estimator="probed", host_probe_reference_s=reference_s,
                                  cases=cases)


def test_probed_estimator_removes_the_hosts_spells():
    """Repeats taken in a slow and a fast spell agree once each is brought to the reference speed; the
    baseline is the case's own plain runs (timed beside the speculative ones), brought there likewise."""
    probes = [0.02, 0.03, 0.015]  # the yardstick beside each repeat; reference 0.02
    spec = [300.0 * 0.02 / p for p in probes]  # 300 tokens/s at the reference speed, slowed and sped up
    base = [200.0 * 0.02 / p for p in probes]
    case = MeasuredCase(temperature=0.0, batch_size=4, prompt_tokens=64, new_tokens=32, policy="fixed:3", rounds=1,
                        tokens_per_s=spec[0], tau=2.0, batch_tokens_per_s=1.0, repeats_tokens_per_s=spec,
                        baseline_tokens_per_s=999.0, baseline_repeats_tokens_per_s=base, host_probe_s=probes)
    (s, b), = summarised(_meas([case], {"step": 0.02, "target": 1.0, "draft": 1.0}))
    assert s.tokens_per_s == pytest.approx(300.0) and b.tokens_per_s == pytest.approx(200.0)
    assert s.host_probes == probes and s.repeats == spec and s.tau == 2.0
    # a case without the yardstick cannot be judged this way: one clear error
    with pytest.raises(InputError, match="probed"):
        summarised(_meas([case.model_copy(update={"host_probe_s": None})], {"step": 0.02}))
    with pytest.raises(InputError, match="probed"):
        summarised(_meas([case], None))
    assert (resolve_estimator(None, "cpu"), resolve_estimator("probed", "cpu")) == ("probed", "probed")
    with pytest.raises(InputError, match="allowed: auto, median, best, probed"):
        resolve_estimator("fastest", "cpu")


def test_merged_rounds_keep_the_yardstick_beside_every_timing(tmp_path):
    from dspark_sim.measure.profile import ProfileGrid, load_engine_models, run_profile

    target, draft, _ = load_engine_models("test", 0, tmp_path, torch.device("cpu"), torch.float32, True)
    grid = ProfileGrid(batch_sizes=(1,), query_tokens=(1, 2), contexts=(16,), step_batch_sizes=(1,),
                       step_gammas=(0,), step_prompt_tokens=(16,), step_temperatures=(0.0,), step_new_tokens=4,
                       repeats=2, step_repeats=1, warmup=1, step_dspark_gamma=0)
    values = itertools.cycle([{"step": 0.01, "target": 0.01, "draft": 0.01}, {"step": 0.03, "target": 0.03, "draft": 0.03}])
    rounds = [run_profile(target, draft, grid, created_by="test", host=HostProbe(lambda: next(values), every_s=0.0))
              for _ in range(2)]
    merged = merge_profiles(rounds)
    for k, s in enumerate(merged.samples):
        assert s.host_probe_s == rounds[0].samples[k].host_probe_s + rounds[1].samples[k].host_probe_s
        assert len(s.host_probe_s) == len(s.times_s)
