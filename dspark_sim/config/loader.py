"""YAML -> validated schema objects: load, resolve names, apply `--set` overrides, validate.

Order matters and is the same for every command:
1. read the YAML (a malformed file is an `InputError` naming the line);
2. resolve names into dicts (`hardware: h200-sxm` -> that profile's fields; `{base: NAME, ...}` merges
   the named profile/preset with the fields given beside it);
3. apply `--set a.b.c=value` overrides on the resolved dict, so any field of a named profile can be
   overridden from the command line;
4. validate with pydantic (unknown keys and bad values become one-line `InputError`s).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from dspark_sim.config.errors import InputError, from_validation_error
from dspark_sim.config.schema import HardwareProfile, ModelSpec, Scenario

T = TypeVar("T", bound=BaseModel)

_PACKAGE_DIR = Path(__file__).resolve().parent.parent


def _data_dir(name: str) -> Path:
    """Bundled folders: inside the wheel (`_bundled/`) or beside the package in a source checkout."""
    env = os.environ.get(f"DSPARK_SIM_{name.upper()}")
    if env:
        return Path(env)
    bundled = _PACKAGE_DIR / "_bundled" / name
    if bundled.is_dir():
        return bundled
    return _PACKAGE_DIR.parent / name


def hardware_profiles_dir() -> Path:
    return _data_dir("hardware_profiles")


def scenarios_dir() -> Path:
    return _data_dir("scenarios")


def model_presets_dir() -> Path:
    return _PACKAGE_DIR / "presets" / "models"


def default_scenario_path() -> Path:
    return scenarios_dir() / "quickstart.yaml"


def _names_in(folder: Path) -> list[str]:
    return sorted(p.stem for p in folder.glob("*.yaml"))


def list_hardware_profiles() -> list[str]:
    return _names_in(hardware_profiles_dir())


def list_model_presets() -> list[str]:
    return _names_in(model_presets_dir())


def read_yaml(path: Path) -> Any:
    """Parse a YAML file; every failure is one line naming the file (and line, when YAML knows it)."""
    if not path.exists():
        raise InputError(str(path), None, "file not found")
    if path.is_dir():
        raise InputError(str(path), None, "is a folder, expected a YAML file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(str(path), None, f"cannot read: {exc}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1} column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise InputError(str(path), None, f"malformed YAML: {where}{problem}") from None


def _read_named(kind: str, name: str, folder: Path, available: list[str], source: str, field: str) -> dict:
    path = folder / f"{name}.yaml"
    if not path.exists():
        raise InputError(source, field, f"unknown {kind} {name!r}, available: {', '.join(available)}")
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise InputError(str(path), None, f"expected a mapping of {kind} fields")
    return data


def _resolve(value: Any, kind: str, folder: Path, available: list[str], source: str, field: str) -> Any:
    """A name, or `{base: name, ...overrides}`, becomes a full dict; anything else passes through."""
    if isinstance(value, str):
        return _read_named(kind, value, folder, available, source, field)
    if isinstance(value, dict) and "base" in value:
        rest = {k: v for k, v in value.items() if k != "base"}
        if not isinstance(value["base"], str):
            raise InputError(source, f"{field}.base", f"expected a {kind} name")
        merged = _read_named(kind, value["base"], folder, available, source, f"{field}.base")
        return _deep_merge(merged, rest)
    return value


def _deep_merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for key, val in extra.items():
        if isinstance(val, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], val)
        else:
            out[key] = val
    return out


def resolve_hardware(value: Any, source: str, field: str = "hardware") -> Any:
    return _resolve(value, "hardware profile", hardware_profiles_dir(), list_hardware_profiles(), source, field)


def resolve_model(value: Any, source: str, field: str = "model") -> Any:
    return _resolve(value, "model preset", model_presets_dir(), list_model_presets(), source, field)


def resolve_scenario_names(raw: dict, source: str) -> dict:
    """Replace profile and preset names in a raw scenario dict by their contents."""
    raw = copy.deepcopy(raw)
    dep = raw.get("deployment")
    if isinstance(dep, dict):
        if "hardware" in dep:
            dep["hardware"] = resolve_hardware(dep["hardware"], source, "deployment.hardware")
        if "model" in dep:
            dep["model"] = resolve_model(dep["model"], source, "deployment.model")
        drafter = dep.get("drafter")
        if isinstance(drafter, dict) and "model" in drafter and drafter["model"] is not None:
            drafter["model"] = resolve_model(drafter["model"], source, "deployment.drafter.model")
    return raw


# --------------------------------------------------------------------------------------------
# --set overrides
# --------------------------------------------------------------------------------------------


def parse_override(text: str) -> tuple[list[str | int], Any]:
    """`a.b[2].c=value` -> (['a', 'b', 2, 'c'], parsed value). Values are YAML scalars/lists."""
    if "=" not in text:
        raise InputError("--set", text, "expected path.to.field=value")
    path_text, value_text = text.split("=", 1)
    path: list[str | int] = []
    for part in path_text.strip().split("."):
        if not part:
            raise InputError("--set", path_text, "empty path segment")
        while "[" in part and part.endswith("]"):
            head, idx = part[: part.index("[")], part[part.index("[") + 1 : -1]
            if head:
                path.append(head)
            if not idx.isdigit():
                raise InputError("--set", path_text, f"list index must be a whole number, got {idx!r}")
            path.append(int(idx))
            part = ""
        if part:
            path.append(part)
    try:
        value = yaml.safe_load(value_text) if value_text.strip() else ""
    except yaml.YAMLError:
        value = value_text
    return path, value


def apply_overrides(raw: dict, overrides: list[str], resolver=None) -> dict:
    """Set each `path=value` in a copy of `raw`; intermediate mappings are created as needed.

    `resolver(path, value)` lets the caller resolve names that an override introduces (for example
    `--set deployment.hardware=h100-sxm`).
    """
    out = copy.deepcopy(raw)
    for text in overrides:
        path, value = parse_override(text)
        if resolver is not None:
            value = resolver(path, value)
        node: Any = out
        for i, key in enumerate(path[:-1]):
            nxt = path[i + 1]
            if isinstance(key, int):
                if not isinstance(node, list) or key >= len(node):
                    raise InputError("--set", _fmt(path[: i + 1]), "no such list element")
                node = node[key]
                continue
            if not isinstance(node, dict):
                raise InputError("--set", _fmt(path[: i + 1]), "parent is not a mapping")
            if key not in node or node[key] is None:
                node[key] = [] if isinstance(nxt, int) else {}
            node = node[key]
        last = path[-1]
        if isinstance(last, int):
            if not isinstance(node, list) or last >= len(node):
                raise InputError("--set", _fmt(path), "no such list element")
            node[last] = value
        else:
            if not isinstance(node, dict):
                raise InputError("--set", _fmt(path), "parent is not a mapping")
            node[last] = value
    return out


def _fmt(path: list[str | int]) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (("." if out else "") + p)
    return out


def override_resolver(source: str):
    """A resolver for `apply_overrides` that turns names introduced by overrides into their contents."""

    def resolve(path: list[str | int], value: Any) -> Any:
        key = ".".join(str(p) for p in path)
        if key == "deployment.hardware":
            return resolve_hardware(value, source, key)
        if key in ("deployment.model", "deployment.drafter.model"):
            return resolve_model(value, source, key)
        if key == "deployment.drafter" and isinstance(value, dict) and value.get("model") is not None:
            return {**value, "model": resolve_model(value["model"], source, key + ".model")}
        if key == "deployment" and isinstance(value, dict):
            return resolve_scenario_names({"deployment": value}, source)["deployment"]
        return value

    return resolve


def absolutise_paths(raw: Any, base_dir: Path, parent: str = "") -> Any:
    """File fields named `path` are relative to the scenario file's folder; `${VAR}` is expanded.
    (`sweep.path` names a field, not a file, and is left alone.)"""
    if isinstance(raw, dict):
        out = {}
        for k, v in raw.items():
            if k == "path" and isinstance(v, str) and parent != "sweep":
                expanded = os.path.expandvars(os.path.expanduser(v))
                p = Path(expanded)
                out[k] = str(p if p.is_absolute() else (base_dir / p).resolve())
            else:
                out[k] = absolutise_paths(v, base_dir, k)
        return out
    if isinstance(raw, list):
        return [absolutise_paths(v, base_dir, parent) for v in raw]
    return raw


# --------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------


def validate_as(model: type[T], data: Any, source: str, prefix: str = "") -> T:
    if not isinstance(data, dict):
        raise InputError(source, prefix or None, f"expected a mapping, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise from_validation_error(source, exc, prefix, data) from None


def load_scenario_dict(path: Path | str, overrides: list[str] | None = None) -> dict:
    """The resolved, overridden raw dict of a scenario (before validation): what sweeps vary."""
    path = Path(path)
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise InputError(str(path), None, "expected a mapping at the top level of a scenario")
    raw = resolve_scenario_names(raw, str(path))
    raw = apply_overrides(raw, overrides or [], override_resolver(str(path)))
    return absolutise_paths(raw, path.resolve().parent)


def load_scenario(path: Path | str | None = None, overrides: list[str] | None = None) -> Scenario:
    """Load and validate a scenario file (the bundled default when `path` is None)."""
    path = Path(path) if path is not None else default_scenario_path()
    raw = load_scenario_dict(path, overrides)
    return validate_as(Scenario, raw, str(path))


def scenario_from_dict(raw: dict, source: str = "<scenario>") -> Scenario:
    return validate_as(Scenario, raw, source)


def load_hardware_profile(name_or_path: str, overrides: list[str] | None = None) -> HardwareProfile:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        raw = read_yaml(p)
        source = str(p)
    else:
        raw = resolve_hardware(name_or_path, "profile", "name")
        source = str(hardware_profiles_dir() / f"{name_or_path}.yaml")
    raw = apply_overrides(raw, overrides or [])
    return validate_as(HardwareProfile, raw, source)


def load_model_preset(name: str) -> ModelSpec:
    raw = resolve_model(name, "model", "name")
    return validate_as(ModelSpec, raw, str(model_presets_dir() / f"{name}.yaml"))
