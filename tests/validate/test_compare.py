"""How timed repeats become one figure (the estimators) and the measurements' own noise (torch-free)."""

from __future__ import annotations

import pytest

from dspark_sim.config.measurements import DeviceInfo, MeasuredCase, ValidationMeasurements
from dspark_sim.validate.compare import repeat_spread_pct, resolve_estimator, speedup_repeats, summarised


def test_best_estimator_takes_each_side_at_its_fastest():
    """'best': a point's fastest timed repeat, and as the baseline the median over the cases of one setting
    of their fastest plain repeats; 'median': the figures as measured. auto: best on a GPU, probed on a CPU."""
    def case(policy, reps, base_reps):
        return MeasuredCase(temperature=0.0, batch_size=4, prompt_tokens=64, new_tokens=32, policy=policy, rounds=1,
                            tokens_per_s=sorted(reps)[1], tau=2.0, batch_tokens_per_s=1.0, repeats_tokens_per_s=reps,
                            baseline_tokens_per_s=100.0, baseline_repeats_tokens_per_s=base_reps)

    cases = [case("fixed:1", [150.0, 180.0, 160.0], [90.0, 100.0, 95.0]),
             case("fixed:3", [200.0, 210.0, 150.0], [99.0, 110.0, 101.0]),
             case("dspark:5", [220.0, 190.0, 230.0], [120.0, 98.0, 105.0])]
    meas = ValidationMeasurements(device=DeviceInfo(kind="cpu", name="x", torch_version="t", threads=2, memory_gb=1.0,
                                                         onchip_mb=1.0), engine_version="v", preset="test",
                                  quick=True, command="c", acceptance_by_temperature={}, timings_s={},
                                  sps_table={1: 1.0}, profile_rounds=3, cases=cases)
    med = summarised(meas)
    assert [s.tokens_per_s for s, _ in med] == [160.0, 200.0, 220.0] and {b.tokens_per_s for _, b in med} == {100.0}
    best = summarised(meas.model_copy(update={"estimator": "best"}))
    assert [s.tokens_per_s for s, _ in best] == [180.0, 210.0, 230.0]
    assert {b.tokens_per_s for _, b in best} == {110.0}  # the median of 100, 110, 120
    assert [s.tau for s, _ in best] == [2.0, 2.0, 2.0]
    assert (resolve_estimator(None, "cuda"), resolve_estimator("auto", "cpu"), resolve_estimator("best", "cpu")) == (
        "best", "probed", "best")


def test_repeat_spread_is_the_measurements_own_noise():
    """The spread of a point's repeats (max - min over the median), and of their paired speed-ups."""
    assert repeat_spread_pct([90.0, 100.0, 120.0]) == pytest.approx(30.0)
    assert repeat_spread_pct([100.0]) is None and repeat_spread_pct(None) is None
    # a host twice as fast in one repeat moves both loops: the speed-up's spread stays 0
    ups = speedup_repeats([200.0, 400.0, 210.0], [100.0, 200.0, 105.0])
    assert ups == pytest.approx([2.0, 2.0, 2.0]) and repeat_spread_pct(ups) == pytest.approx(0.0)
    assert speedup_repeats([1.0, 2.0], [1.0]) is None
