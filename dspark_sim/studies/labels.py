"""Labels for result documents, shared by the terminal tables and the HTML pages.

A sweep's parameter values and a run's configurations are named the same way everywhere: the
console's sweep table, the dashboard's series and hover texts, and the per-request file names.
"""

from __future__ import annotations

import re
from typing import Any

from dspark_sim.config.results import RunSummary

#: words in a `--set` path that make it a load parameter (the x axis of load curves)
_LOAD_WORDS = ("arrivals", "concurrency", "rate_per_s", "think_time")
#: paths whose values change the speculation (drafter, policy, acceptance), not the deployment or load
_SPEC_PREFIXES = ("policy", "deployment.drafter", "acceptance", "workload.domains")


def short(value: Any) -> str:
    """A compact label for a parameter value: `{kind: iid, alpha: 0.7}` -> `iid(alpha=0.7)`."""
    if isinstance(value, dict):
        kind = value.get("kind")
        rest = ", ".join(f"{k}={short(v)}" for k, v in value.items() if k != "kind")
        return f"{kind}({rest})" if kind is not None else f"{{{rest}}}"
    if isinstance(value, list):
        inner = ", ".join(short(v) for v in value[:4])
        return f"[{inner}{', ...' if len(value) > 4 else ''}]"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _policy_text(s: RunSummary) -> str:
    if s.policy == "fixed":
        return f"fixed γ={s.gamma_max}"
    return f"{s.policy} γ≤{s.gamma_max}" if s.gamma_max else s.policy


def summary_label(s: RunSummary) -> str:
    """'no speculation', 'dspark, dspark γ≤5', 'mtp1: mtp, fixed γ=1'."""
    if not s.speculative:
        return "no speculation"
    text = f"{s.drafter}, {_policy_text(s)}"
    return text if s.variant == "main" else f"{s.variant}: {text}"


def is_load_param(name: str) -> bool:
    return any(w in name for w in _LOAD_WORDS)


def is_spec_param(name: str, groups: dict) -> bool:
    """Whether a swept parameter (a path, or a group whose labels set paths) changes only the speculation."""
    if name in groups:
        paths = {p for label in groups[name].values() for p in label}
        return bool(paths) and all(p.startswith(_SPEC_PREFIXES) for p in paths)
    return name.startswith(_SPEC_PREFIXES)


def file_label(s: RunSummary) -> str:
    """The stem of a configuration's per-request file (requests_<stem>.jsonl): variant and sweep value."""
    text = s.variant if s.sweep_value is None else f"{s.variant}_{s.sweep_value}"
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text)
