"""A sweep's points: the sweep file read, its grid or random sample expanded, each point's scenario.

A sweep file (`SweepSpec`) names a base scenario and the fields to vary (`--set` paths, or groups
of paths set together under one label). Each point is the base scenario with those fields set. Each
point's seed is a hash of its own parameter values and the sweep seed, so a point's result is the
same whatever the order, executor or number of workers.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dspark_sim.config.errors import InputError
from dspark_sim.config.loader import (
    absolutise_paths,
    apply_overrides,
    load_scenario_dict,
    override_resolver,
    read_yaml,
    scenario_from_dict,
    validate_as,
)
from dspark_sim.config.schema import ParameterRange, SweepSpec


@dataclass(frozen=True)
class SweepPoint:
    index: int
    key: str
    params: dict[str, Any]
    seed: int


@dataclass(frozen=True)
class LoadedSweep:
    spec: SweepSpec
    path: Path
    base_path: Path
    base_raw: dict
    points: list[SweepPoint]
    duplicates: int  # random draws that repeated an earlier point (dropped)

    @property
    def fingerprint(self) -> str:
        """Identifies what the points mean: the spec and the resolved base scenario."""
        return _digest({"spec": self.spec.model_dump(mode="json"), "base": self.base_raw})[:16]


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _digest(value: Any) -> str:
    return hashlib.sha256(canonical(value).encode()).hexdigest()


def point_key(params: dict[str, Any]) -> str:
    return _digest(params)[:16]


def point_seed(params: dict[str, Any], sweep_seed: int, seed_from: list[str] | None = None) -> int:
    """A 31-bit seed from the sorted parameter assignments (those in `seed_from`) and the sweep seed."""
    used = params if seed_from is None else {k: params[k] for k in seed_from if k in params}
    return int(_digest({"sweep_seed": sweep_seed, "params": used})[:8], 16) & 0x7FFFFFFF


def _tidy(x: float, integer: bool) -> float | int:
    if integer:
        return int(round(x))
    return float(f"{x:.6g}")


def _range_values(r: ParameterRange) -> list[Any]:
    n = r.num or 1
    if n == 1:
        raw = [r.min]
    elif r.log:
        raw = list(np.geomspace(r.min, r.max, n))
    else:
        raw = list(np.linspace(r.min, r.max, n))
    out: list[Any] = []
    for x in raw:
        v = _tidy(float(x), r.integer)
        if v not in out:
            out.append(v)
    return out


def _draw(r: ParameterRange, rng: np.random.Generator) -> float | int:
    if not r.integer:
        x = math.exp(rng.uniform(math.log(r.min), math.log(r.max))) if r.log else rng.uniform(r.min, r.max)
        return _tidy(x, False)
    # whole numbers min..max inclusive: widen by half a step so the end values are as likely as the rest
    lo, hi = math.ceil(r.min), math.floor(r.max)
    if hi < lo:
        return int(round(r.min))
    if r.log:
        x = math.exp(rng.uniform(math.log(max(lo - 0.5, lo / 2)), math.log(hi + 0.5)))
    else:
        x = rng.uniform(lo - 0.5, hi + 0.5)
    return int(min(hi, max(lo, round(x))))


def expand(spec: SweepSpec) -> tuple[list[dict[str, Any]], int]:
    """The points' parameter assignments in expansion order, and how many random duplicates were dropped."""
    names = list(spec.parameters) + list(spec.groups)
    if spec.mode == "grid":
        axes: list[list[Any]] = []
        for name in spec.parameters:
            p = spec.parameters[name]
            axes.append(_range_values(p) if isinstance(p, ParameterRange) else list(p))
        for name in spec.groups:
            axes.append(list(spec.groups[name]))
        combos = [dict(zip(names, vals)) for vals in itertools.product(*axes)]
    else:
        rng = np.random.default_rng(spec.seed)
        combos = []
        for _ in range(spec.samples or 0):
            point: dict[str, Any] = {}
            for name in sorted(names):
                if name in spec.groups:
                    labels = list(spec.groups[name])
                    point[name] = labels[int(rng.integers(len(labels)))]
                else:
                    p = spec.parameters[name]
                    if isinstance(p, ParameterRange):
                        point[name] = _draw(p, rng)
                    else:
                        point[name] = p[int(rng.integers(len(p)))]
            combos.append({n: point[n] for n in names})
    seen: set[str] = set()
    out = []
    for c in combos:
        k = point_key(c)
        if k not in seen:
            seen.add(k)
            out.append(c)
    return out, len(combos) - len(out)


def load_sweep(path: str | Path, extra_set: list[str] | None = None) -> LoadedSweep:
    path = Path(path)
    raw = read_yaml(path)
    spec = validate_as(SweepSpec, raw, str(path))
    base = Path(os.path.expandvars(os.path.expanduser(spec.base)))
    if not base.is_absolute():
        base = (path.resolve().parent / base).resolve()
    if not base.exists():
        raise InputError(str(path), "base", f"scenario file not found: {base}")
    base_raw = load_scenario_dict(base, list(spec.set) + list(extra_set or []))
    combos, dups = expand(spec)
    points = [
        SweepPoint(i, point_key(c), c, point_seed(c, spec.seed, spec.seed_from)) for i, c in enumerate(combos)
    ]
    loaded = LoadedSweep(spec, path, base, base_raw, points, dups)
    # fail fast on a bad path or value: build (and validate) the first point in this process
    if points:
        scenario_from_dict(point_dict(loaded, points[0]), f"{path} (point {points[0].params})")
    return loaded


def assignments(spec: SweepSpec, params: dict[str, Any]) -> list[str]:
    """The point's `--set` overrides: plain parameters, then each group's fields for its label."""
    out = []
    for name, value in params.items():
        if name in spec.groups:
            for path, v in spec.groups[name][value].items():
                out.append(f"{path}={canonical(v)}")
        else:
            out.append(f"{name}={canonical(value)}")
    return out


def scenario_dict_for(base_raw: dict, base_dir: Path, overrides: list[str], seed: int) -> dict:
    raw = dict(base_raw)
    raw["seed"] = seed  # a swept `seed` parameter (replications) overrides this
    raw = apply_overrides(raw, overrides, override_resolver("sweep"))
    return absolutise_paths(raw, base_dir)


def point_dict(loaded: LoadedSweep, point: SweepPoint) -> dict:
    return scenario_dict_for(
        loaded.base_raw, loaded.base_path.parent, assignments(loaded.spec, point.params), point.seed
    )

