"""One-line input errors: every bad input ends as `file: field.path: what was wrong (what is allowed)`.

The CLI catches `InputError`, prints `error: <line>` and exits with code 2; nothing else in the
package prints tracebacks at users.
"""

from __future__ import annotations

from pydantic import ValidationError
from pydantic_core import ErrorDetails


class InputError(Exception):
    """Bad user input. `str(err)` is the single line shown to the user."""

    def __init__(self, source: str, field: str | None, message: str):
        self.source = source
        self.field = field
        self.message = message
        where = f"{source}: {field}" if field else source
        super().__init__(f"{where}: {message}")


def _loc_to_path(loc: tuple, data: object = None) -> str:
    """pydantic's loc has union-member tags (e.g. 'iid', 'function-after[...]') mixed in; drop them.

    With the input `data`, a loc element that is not a key of the current mapping but equals its
    'kind' (a discriminated union's tag) is dropped too.
    """
    parts: list[str] = []
    node = data
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
            node = node[item] if isinstance(node, list) and item < len(node) else None
            continue
        text = str(item)
        if text.startswith(("function-", "constrained-", "json-or-python", "lax-or-strict")):
            continue
        if isinstance(node, dict) and text not in node and node.get("kind") == text:
            continue
        parts.append(text)
        node = node.get(text) if isinstance(node, dict) else None
    path = ""
    for part in parts:
        path += part if part.startswith("[") or not path else "." + part
    return path


def _allowed(err: ErrorDetails) -> str:
    """Say what is allowed, from pydantic's error context."""
    ctx = err.get("ctx") or {}
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        return "unknown key (check the spelling; `dspark-sim schema` lists every field)"
    if kind == "literal_error" and "expected" in ctx:
        return f"got {err.get('input')!r}, allowed: {ctx['expected']}"
    if kind == "union_tag_invalid":
        return f"unknown kind {ctx.get('tag')!r}, allowed: {ctx.get('expected_tags')}"
    if kind == "union_tag_not_found":
        return f"missing 'kind', allowed kinds: {ctx.get('discriminator')}"
    if kind == "missing":
        return "required field is missing"
    msg = err.get("msg", "invalid value")
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    if "input" in err and kind not in ("model_type", "dict_type"):
        inp = err["input"]
        if not isinstance(inp, (dict, list)):
            return f"{msg} (got {inp!r})"
    return msg


def from_validation_error(source: str, err: ValidationError, prefix: str = "", data: object = None) -> InputError:
    """Turn pydantic's multi-line report into one line about the first problem (and a count)."""
    errors = err.errors()
    first = errors[0]
    path = _loc_to_path(tuple(first.get("loc", ())), data)
    if prefix:
        path = f"{prefix}.{path}" if path else prefix
    message = _allowed(first)
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return InputError(source, path or None, message)
