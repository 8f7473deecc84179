"""Engine test fixtures (helpers live in engine_helpers.py)."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from .engine_helpers import perturbed, random_model  # noqa: E402


@pytest.fixture(scope="session")
def pair():
    target = random_model(seed=0)
    return target, perturbed(target, noise=0.35)


