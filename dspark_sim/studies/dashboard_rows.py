"""Simulated configurations from every run and run sweep of a page, each with its series label and load.

A row is one `RunSummary` with what the figures need to place it: the label of its series (policy,
and the other swept values), the load it ran at (the swept rate or concurrency, when there is one)
and a hover text. Sweeps repeat the no-speculation baseline for every speculative setting; a page
keeps one per (label, load).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dspark_sim.config.results import RunResult, RunSummary
from dspark_sim.studies.dashboard_inputs import Inputs, RunBundle, SweepBundle
from dspark_sim.studies.labels import file_label, is_load_param, is_spec_param, short, summary_label


@dataclass
class Row:
    """One simulated configuration: its summary, a series label, its load and a hover text."""

    summary: RunSummary
    label: str
    load: float | None  # the swept concurrency / rate, when known
    load_name: str
    hover: str
    records: list[dict] | None = None


def run_rows(inputs: Inputs) -> list[Row]:
    """Rows of the page's runs, then of its run sweeps; one baseline per (label, load)."""
    multi = len(inputs.runs) + len(inputs.sweeps) > 1
    rows: list[Row] = []
    for b in inputs.runs:
        rows += _bundle_rows(b, multi)
    for sw in inputs.sweeps:
        if sw.manifest.get("command") == "run":
            rows += _sweep_rows(sw, multi)
    # one baseline per (label, load): sweeps repeat it for every speculative setting
    seen: set[tuple] = set()
    out = []
    for r in rows:
        if not r.summary.speculative:
            key = (r.label, r.load, round(r.summary.throughput_tokens_per_s_per_gpu, 6))
            if key in seen:
                continue
            seen.add(key)
        out.append(r)
    return out


def _bundle_rows(b: RunBundle, multi: bool) -> list[Row]:
    res = b.result
    prefix = f"{res.scenario} · " if multi else ""
    load_name = res.sweep_path.split(".")[-1] if res.sweep_path else "mean batch"
    rows = []
    for s in res.summaries:
        load = s.sweep_value if isinstance(s.sweep_value, int | float) and res.sweep_path else None
        hover = (f"{res.sweep_path.split('.')[-1]}={s.sweep_value}<br>" if res.sweep_path else "") + (
            f"TTFT p99 {s.ttft_s.p99:.3g} s, TPOT p99 {s.tpot_ms.p99:.3g} ms")
        rows.append(Row(s, prefix + summary_label(s), load, load_name, hover, b.records.get(file_label(s))))
    return rows


def _point_result(rec: dict) -> RunResult | None:
    """A finished point's run document, or None (an error record, or one without its result kept)."""
    if rec.get("status") != "ok" or not rec.get("result"):
        return None
    try:
        return RunResult.model_validate(rec["result"])
    except Exception:  # a record this version cannot read is left off the page, not fatal
        return None


def _sweep_rows(sw: SweepBundle, multi: bool) -> list[Row]:
    groups = (sw.manifest.get("spec") or {}).get("groups") or {}
    prefix = f"{sw.manifest.get('name', 'sweep')} · " if multi else ""
    rows = []
    for rec in sw.records:
        res = _point_result(rec)
        if res is None:
            continue
        params = rec.get("params", {})
        load_params = [k for k in params if is_load_param(k)]
        load_name = load_params[0].split(".")[-1] if load_params else "mean batch"
        load = params[load_params[0]] if load_params and isinstance(params[load_params[0]], int | float) else None
        spec_swept = any(is_spec_param(k, groups) for k in params)
        for s in res.summaries:
            rows.append(_sweep_row(s, res, params, groups, prefix, load, load_name, spec_swept))
    return rows


def _sweep_row(s: RunSummary, res: RunResult, params: dict[str, Any], groups: dict, prefix: str,
               load: float | None, load_name: str, spec_swept: bool) -> Row:
    """One configuration of a sweep point: labelled by the swept values (and its policy, unless they name it)."""
    if s.speculative:
        others = [short(v) for k, v in params.items() if not is_load_param(k)]
    else:
        others = [short(v) for k, v in params.items() if not is_load_param(k) and not is_spec_param(k, groups)]
    base = summary_label(s)
    sv = f"{res.sweep_path.split('.')[-1]}={s.sweep_value}, " if res.sweep_path else ""
    params_text = ", ".join(f"{k.split('.')[-1]}={short(v)}" for k, v in params.items())
    stats = f"TTFT p99 {s.ttft_s.p99:.3g} s, TPOT p99 {s.tpot_ms.p99:.3g} ms"
    lv = load if load is not None else (
        s.sweep_value if res.sweep_path and isinstance(s.sweep_value, int | float) else None)
    if s.speculative and spec_swept and others:  # the swept values already name the policy
        base = "" if s.variant == "main" else s.variant
        if not base:
            hover = f"{params_text}<br>{summary_label(s)}<br>{sv}{stats}"
            return Row(s, prefix + " · ".join(others), lv, load_name, hover)
    label = prefix + (" · ".join([*others, base]) if others and s.speculative else
                      (" · ".join([base, *others]) if others else base))
    ln = load_name if load is not None else (res.sweep_path.split(".")[-1] if res.sweep_path else load_name)
    return Row(s, label, lv, ln, f"{params_text}<br>{sv}{stats}")
