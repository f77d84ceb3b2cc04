"""The tree stays clean under the ruff configuration in pyproject.toml (lint and format)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TREES = ["fsdistill", "benchmarks", "examples", "tests"]


def _ruff() -> list[str]:
    beside = Path(sys.executable).with_name("ruff")
    if beside.is_file():
        return [str(beside)]
    found = shutil.which("ruff")
    if found is None:
        pytest.skip("ruff is not installed (it is in the dev extra)")
    return [found]


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]], ids=["lint", "format"])
def test_tree_is_clean_under_ruff(command) -> None:
    result = subprocess.run([*_ruff(), *command, *TREES], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def _imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside a function (relative imports resolved)."""
    import ast

    package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(part for part in (base, node.module or "") if part)
            found.add(module)
            found |= {f"{module}.{alias.name}" for alias in node.names}
    return found


# (files, forbidden module prefix): the layers' import rules.
LAYER_RULES = [
    ("fsdistill/models", "fsdistill.train"),
    ("fsdistill/infer", "fsdistill.train"),
    ("fsdistill/profiling", "fsdistill.train"),
    ("fsdistill/data", "fsdistill.models"),
    ("fsdistill/config.py", "fsdistill.models"),
]


@pytest.mark.parametrize(("where", "forbidden"), LAYER_RULES, ids=[f"{w}-{f}" for w, f in LAYER_RULES])
def test_layers_import_only_downwards(where, forbidden) -> None:
    """models/, infer/ and profiling/ never import training code; data/ and config.py never import models."""
    root = REPO / where
    files = [root] if root.is_file() else sorted(root.rglob("*.py"))
    assert files
    broken = {
        f"{path.relative_to(REPO)} imports {module}"
        for path in files
        for module in _imported_modules(path)
        if module == forbidden or module.startswith(forbidden + ".")
    }
    assert not broken, sorted(broken)
