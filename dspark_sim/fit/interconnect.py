"""Interconnect latency, bandwidth and per-collective cost from measured all-reduces (tensor parallelism).

The all-reduce microbenchmark (`python -m dspark_sim.cli.tp allreduce`) times one collective per
message size and world size; `fit_interconnect` fits the ring all-reduce that `costmodel.forward_cost`
prices to those timings, and `apply_interconnect_fit` writes the fitted effective figures into a profile.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import yaml
from numpy.typing import ArrayLike
from scipy.optimize import lsq_linear

from dspark_sim.config.errors import InputError
from dspark_sim.config.schema import HardwareProfile
from dspark_sim.fit.params import IDENTIFY_THRESHOLD

#: GB/s given to a fit that measured nothing bandwidth-bound and has no base to fall back on.
_FREE_TRANSFERS_GBPS = 1e6


def allreduce_time_s(world_size: ArrayLike, message_bytes: ArrayLike, latency_us: float, bandwidth_gbps: float,
                     efficiency: float = 1.0, launch_us: float = 0.0) -> np.ndarray:
    """One ring all-reduce as `costmodel.forward_cost` prices it: 2 (w - 1) hops of latency
    + 2 (w - 1) / w x bytes over the link bandwidth + a fixed cost per collective (`launch_us`:
    kernel launch and rank synchronisation, whatever the rank count; nothing on one rank)."""
    w = np.asarray(world_size, dtype=float)
    b = np.asarray(message_bytes, dtype=float)
    link = max(bandwidth_gbps, 1e-9) * 1e9 * efficiency
    return (2.0 * (w - 1.0) * latency_us * 1e-6 + 2.0 * (w - 1.0) / w * b / link
            + np.where(w > 1.0, launch_us * 1e-6, 0.0))


@dataclass(frozen=True)
class InterconnectFit:
    """Effective interconnect figures fitted to all-reduce timings (efficiency 1.0 implied)."""

    latency_us: float
    bandwidth_gbps: float
    latency_identified: bool
    bandwidth_identified: bool
    median_abs_error_pct: float
    max_abs_error_pct: float
    points: list[dict[str, Any]]
    notes: list[str]
    launch_us: float = 0.0  # fixed cost per collective (HardwareProfile.collective_launch_us)
    launch_identified: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "launch_us": self.launch_us, "latency_us": self.latency_us, "bandwidth_gbps": self.bandwidth_gbps,
            "launch_identified": self.launch_identified,
            "latency_identified": self.latency_identified, "bandwidth_identified": self.bandwidth_identified,
            "median_abs_error_pct": self.median_abs_error_pct, "max_abs_error_pct": self.max_abs_error_pct,
            "points": self.points, "notes": self.notes,
        }


def _field(sample: Any, name: str) -> Any:
    return sample[name] if isinstance(sample, dict) else getattr(sample, name)


def _timings(samples: Sequence[Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(world sizes, message bytes, median seconds) of the samples, checked."""
    if not samples:
        raise InputError("allreduce profile", "samples", "no all-reduce samples")
    w = np.array([float(_field(s, "world_size")) for s in samples])
    b = np.array([float(_field(s, "message_bytes")) for s in samples])
    t = np.array([float(_field(s, "median_s")) for s in samples])
    if np.any(w < 2):
        raise InputError("allreduce profile", "samples.world_size", "all-reduce samples need >= 2 ranks")
    if np.any(t <= 0):
        raise InputError("allreduce profile", "samples.median_s", "non-positive timings")
    return w, b, t


def _solve(a: np.ndarray, t: np.ndarray, several_worlds: bool, base_launch: float) -> tuple[float, float, float]:
    """(launch us, latency us per hop, inverse bandwidth s per GB): bounded least squares on relative error."""
    if several_worlds:
        sol = lsq_linear(a / t[:, None], np.ones_like(t), bounds=(0.0, np.inf), method="bvls")
        launch_us, lat_us, inv_bw = (float(v) for v in sol.x)
        return launch_us, lat_us, inv_bw
    # launch and hop columns collinear: the launch stays at the base's, the rest is fitted over it
    rhs = 1.0 - a[:, 0] * base_launch / t
    sol = lsq_linear(a[:, 1:] / t[:, None], rhs, bounds=(0.0, np.inf), method="bvls")
    lat_us, inv_bw = (float(v) for v in sol.x)
    return base_launch, lat_us, inv_bw


def _sensitivities(a: np.ndarray, t: np.ndarray, launch_us: float, lat_us: float,
                   inv_bw: float) -> tuple[float, float, float]:
    """rms relative change of the predictions when launch, latency or bandwidth doubles."""
    pred = a @ np.array([launch_us, lat_us, inv_bw])
    pred_safe = np.where(pred > 0, pred, t)
    sens_launch = float(np.sqrt(np.mean((a[:, 0] * launch_us / pred_safe) ** 2)))
    sens_lat = float(np.sqrt(np.mean((a[:, 1] * lat_us / pred_safe) ** 2)))
    sens_bw = float(np.sqrt(np.mean((0.5 * a[:, 2] * inv_bw / pred_safe) ** 2)))
    return sens_launch, sens_lat, sens_bw


def fit_interconnect(samples: Sequence[Any], base: HardwareProfile | None = None) -> InterconnectFit:
    """Least squares on relative error of `allreduce_time_s` to measured all-reduces.

    `samples`: all-reduce samples (objects or dicts with world_size, message_bytes, median_s), from
    one or several world sizes. The model is linear in (launch, per-hop latency, 1 / bandwidth), so
    the fit is a bounded (non-negative) linear least-squares solve, weighted by 1 / measured (relative
    error, as `calibrate` fits passes). A parameter no sample is sensitive to (doubling it moves the
    predictions less than 2% rms) is not identified and keeps `base`'s value (or the fitted one,
    flagged, without a base). With samples of one world size the fixed cost per collective and the
    per-hop latency are collinear: only the latency is fitted (over `base`'s launch cost, or none),
    and the launch cost is not identified.
    """
    w, b, t = _timings(samples)
    base_launch = base.collective_launch_us if base is not None else 0.0
    # unknowns: launch in us, latency in us per hop, inverse bandwidth in s per GB
    a = np.stack([np.full_like(w, 1e-6), 2.0 * (w - 1.0) * 1e-6, 2.0 * (w - 1.0) / w * b * 1e-9], axis=1)
    several_worlds = len(np.unique(w)) >= 2
    launch_us, lat_us, inv_bw = _solve(a, t, several_worlds, base_launch)
    sens_launch, sens_lat, sens_bw = _sensitivities(a, t, launch_us, lat_us, inv_bw)
    launch_ok = several_worlds and launch_us > 0 and sens_launch >= IDENTIFY_THRESHOLD
    lat_ok = lat_us > 0 and sens_lat >= IDENTIFY_THRESHOLD
    bw_ok = inv_bw > 0 and sens_bw >= IDENTIFY_THRESHOLD
    bandwidth = 1.0 / inv_bw if inv_bw > 0 else float("inf")
    # a base without an interconnect (bandwidth 0, a CPU profile) has nothing to fall back on
    keep_lat = base is not None
    keep_bw = base is not None and base.interconnect_bandwidth_gbps > 0
    notes = []
    if not several_worlds:
        notes.append(f"collective launch not identified (one world size, {int(w[0])} ranks: a fixed cost per "
                     f"collective and the per-hop latency are collinear); kept {launch_us:.4g} us"
                     + (" (the base value)" if base is not None else "") + ", fitted the latency over it")
    elif not launch_ok:
        notes.append(f"collective launch not identified (sensitivity {100 * sens_launch:.2f}%)"
                     + ("; kept the base value" if keep_lat else "; fitted value kept"))
        if keep_lat:
            launch_us = base_launch
    if not lat_ok:
        notes.append(f"latency not identified (the messages are bandwidth-bound; sensitivity {100 * sens_lat:.2f}%)"
                     + ("; kept the base value" if keep_lat else "; fitted value kept"))
        if base is not None:
            lat_us = base.interconnect_latency_us
    if not bw_ok:
        notes.append(f"bandwidth not identified (the messages are latency-bound; sensitivity {100 * sens_bw:.2f}%)"
                     + ("; kept the base value" if keep_bw else "; fitted value kept"))
        if base is not None and keep_bw:
            bandwidth = base.interconnect_bandwidth_gbps * base.efficiency.interconnect
    if not np.isfinite(bandwidth):
        bandwidth = _FREE_TRANSFERS_GBPS  # nothing bandwidth-bound was measured and no base
    return _fit_result(w, b, t, launch_us, lat_us, bandwidth, (launch_ok, lat_ok, bw_ok), notes)


def _fit_result(w: np.ndarray, b: np.ndarray, t: np.ndarray, launch_us: float, lat_us: float, bandwidth: float,
                identified: tuple[bool, bool, bool], notes: list[str]) -> InterconnectFit:
    """The fit with its per-sample errors."""
    launch_ok, lat_ok, bw_ok = identified
    final = allreduce_time_s(w, b, lat_us, bandwidth, launch_us=launch_us)
    err = 100.0 * (final / t - 1.0)
    points = [{"world_size": int(wi), "message_bytes": int(bi), "measured_s": float(ti), "predicted_s": float(pi),
               "error_pct": float(ei)} for wi, bi, ti, pi, ei in zip(w, b, t, final, err, strict=True)]
    return InterconnectFit(latency_us=float(lat_us), bandwidth_gbps=float(bandwidth), latency_identified=bool(lat_ok),
                           bandwidth_identified=bool(bw_ok), median_abs_error_pct=float(np.median(np.abs(err))),
                           max_abs_error_pct=float(np.max(np.abs(err))), points=points, notes=notes,
                           launch_us=float(launch_us), launch_identified=bool(launch_ok))


def apply_interconnect_fit(hw: HardwareProfile, fit: InterconnectFit) -> HardwareProfile:
    """`hw` with the fitted effective interconnect figures (efficiency.interconnect = 1.0)."""
    return hw.model_copy(update={
        "interconnect_bandwidth_gbps": fit.bandwidth_gbps,
        "interconnect_latency_us": fit.latency_us,
        "collective_launch_us": fit.launch_us,
        "efficiency": hw.efficiency.model_copy(update={"interconnect": 1.0}),
    })


def interconnect_yaml(hw: HardwareProfile, fit: InterconnectFit, source: object) -> str:
    """The profile with a fitted interconnect, as YAML with the fit in comments."""
    ws = sorted({p["world_size"] for p in fit.points})
    header = [
        f"# Interconnect calibrated from measured all-reduces ({len(fit.points)} message sizes, world sizes {ws}),",
        f"# base profile: {source}. interconnect_* and collective_launch_us below are fitted *effective* figures",
        "# (efficiency 1.0); one all-reduce = launch + 2 (w - 1) x latency + 2 (w - 1) / w x bytes / bandwidth:",
        f"#   launch {fit.launch_us:.4g} us per collective ({'fitted' if fit.launch_identified else 'NOT IDENTIFIED'}),"
        f" latency {fit.latency_us:.4g} us per ring hop ({'fitted' if fit.latency_identified else 'NOT IDENTIFIED'}),",
        f"#   bandwidth {fit.bandwidth_gbps:.4g} GB/s ({'fitted' if fit.bandwidth_identified else 'NOT IDENTIFIED'});"
        f" median |error| {fit.median_abs_error_pct:.1f}%, worst {fit.max_abs_error_pct:.1f}%.",
    ] + [f"#   {n}" for n in fit.notes]
    body = yaml.safe_dump(hw.model_dump(mode="json", exclude_none=True), sort_keys=False)
    return "\n".join(header) + "\n" + body
