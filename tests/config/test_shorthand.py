"""The one short spelling of policies and drafter configurations: parse, print back, reject bad text."""

from __future__ import annotations

import pytest

from dspark_sim.config.errors import InputError
from dspark_sim.config.schema import ConfidenceThreshold, DSparkScheduler, FixedGamma, NoSpeculation
from dspark_sim.config.shorthand import (
    draft_length,
    drafter_config,
    parse_drafter_config,
    parse_policy,
    policy_shorthand,
)


@pytest.mark.parametrize("text", ["none", "fixed:3", "fixed:0", "confidence_threshold:4@0.6", "dspark:5",
                                  "goodput:8"])
def test_round_trip(text):
    assert policy_shorthand(parse_policy(text)) == text


def test_values_and_table():
    assert parse_policy("fixed:3") == FixedGamma(gamma=3)
    assert parse_policy("confidence_threshold:4") == ConfidenceThreshold(gamma_max=4)
    spec = parse_policy("dspark:5", sps_table={1: 100.0, 6: 80.0})
    assert isinstance(spec, DSparkScheduler) and spec.sps_source == "table" and spec.sps_table == {1: 100.0, 6: 80.0}
    assert [draft_length(parse_policy(t)) for t in ("none", "fixed:2", "dspark:5")] == [0, 2, 5]


@pytest.mark.parametrize("text", ["fixed", "fixed:x", "confidence:3", "fixed:3@0.5", "none:2",
                                  "confidence_threshold:3@2", "dspark:0", ""])
def test_bad_text_is_one_input_error(text):
    with pytest.raises(InputError) as err:
        parse_policy(text, source="grid", field="policies")
    line = str(err.value)
    assert line.startswith("grid: policies: ") and "\n" not in line


def test_drafter_configs():
    assert parse_drafter_config("baseline") == ("none", NoSpeculation())
    kind, spec = parse_drafter_config("parallel_block/fixed:3")
    assert kind == "parallel_block" and spec == FixedGamma(gamma=3)
    assert drafter_config(kind, spec) == "parallel_block/fixed:3"
    for bad in ("parallel/fixed:3", "dspark", "dspark/fast"):
        with pytest.raises(InputError):
            parse_drafter_config(bad)
