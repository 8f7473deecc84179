"""The repository's house rules, checked on every tracked file.

- No development-history text (a numbered development round, or "this"/"last" one) where users read
  it: say what was measured, when, on what machine, with which command.
- Nothing points at the shared folder beside the repository, which users do not have.
- Package modules import each other at the top of the file; only `cli/` imports lazily, and only
  optional heavy dependencies (torch, ray) and the layers that need them.
- A module stays under ~400 lines and a function under ~80, unless a `# long:` comment on the
  definition (or in the module's first lines) says why.

Run directly (`python tests/test_layout.py [files...]`) to list the violations in some files.
"""
from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "dspark_sim"
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 80
_S = "sess" + "ion"  # spelled apart so this file does not name what it forbids
HISTORY = re.compile(rf"\b{_S}s? ?[0-9]+|\({_S} [0-9]|\bthis {_S}\b|\blast {_S}\b|\b{_S}-?[0-9]+", re.IGNORECASE)
_SHARED = "sha" + "red"
SHARED = re.compile(rf"\.\./{_SHARED}\b")
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml", ".json", ".sh", ".txt", ".cfg", ".html", ""}


def tracked_files() -> list[Path]:
    out = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    return [REPO / line for line in out.splitlines() if line and (REPO / line).is_file()]


def history_violations(paths: list[Path]) -> list[str]:
    found = []
    for path in paths:
        rel = path.relative_to(REPO).as_posix()
        if HISTORY.search(rel) or SHARED.search(rel):
            found.append(f"{rel}: the file's name carries development history")
        if path.suffix not in TEXT_SUFFIXES:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for n, line in enumerate(text.splitlines(), 1):
            if HISTORY.search(line) or SHARED.search(line):
                found.append(f"{rel}:{n}: {line.strip()[:100]}")
    return found


def _internal(node: ast.Import | ast.ImportFrom) -> bool:
    if isinstance(node, ast.ImportFrom):
        return node.level > 0 or (node.module or "").split(".")[0] == PACKAGE
    return any(alias.name.split(".")[0] == PACKAGE for alias in node.names)


def _long_ok(lines: list[str], lineno: int) -> bool:
    """A `# long:` comment on the definition line or the line above it says why it is long."""
    window = lines[max(0, lineno - 2): lineno + 1]
    return any("# long:" in line for line in window)


def code_violations(paths: list[Path]) -> list[str]:
    found = []
    for path in paths:
        rel = path.relative_to(REPO).as_posix()
        if path.suffix != ".py" or not rel.startswith(f"{PACKAGE}/"):
            continue
        text = path.read_text(encoding="utf-8")
        lines = text.splitlines()
        tree = ast.parse(text)
        if len(lines) > MAX_FILE_LINES and not any("# long:" in line for line in lines[:40]):
            found.append(f"{rel}: {len(lines)} lines (over {MAX_FILE_LINES}; a `# long:` comment says why)")
        in_cli = rel.startswith(f"{PACKAGE}/cli/")
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                if length > MAX_FUNCTION_LINES and not _long_ok(lines, first):
                    found.append(f"{rel}:{node.lineno}: {node.name}() is {length} lines "
                                 f"(over {MAX_FUNCTION_LINES}; a `# long:` comment says why)")
                if in_cli:
                    continue
                for inner in ast.walk(node):
                    if isinstance(inner, ast.Import | ast.ImportFrom) and _internal(inner):
                        found.append(f"{rel}:{inner.lineno}: function-level import of a package module "
                                     f"in {node.name}() (only cli/ imports lazily)")
    return found


def test_no_development_history_or_shared_paths() -> None:
    found = history_violations(tracked_files())
    assert not found, "development history in tracked files:\n" + "\n".join(found[:50])


def test_module_and_function_sizes_and_top_level_imports() -> None:
    found = code_violations(tracked_files())
    assert not found, "house-rule violations:\n" + "\n".join(found[:80])


def test_the_checks_catch_what_they_forbid(tmp_path: Path) -> None:
    assert HISTORY.search(f"as measured in {_S} 14") and HISTORY.search(f"run folder cpu-{_S}17")
    assert HISTORY.search(f"({_S} 3 figures)") and HISTORY.search(f"unlike last {_S}")
    assert not HISTORY.search(f"a serving {_S} of 14 users")
    assert SHARED.search(f"see ../{_SHARED}/reference/FACTS.md")


if __name__ == "__main__":
    chosen = [Path(a).resolve() for a in sys.argv[1:]] or tracked_files()
    problems = history_violations(chosen) + code_violations(chosen)
    print("\n".join(problems) or "clean")
    sys.exit(1 if problems else 0)
