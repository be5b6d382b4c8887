"""The dependency rules of docs/architecture.md, read from the source's import statements.

- ``datamodules`` (the synthetic generator included) import nothing of ``models``, ``objectives``,
  ``metrics`` or ``tasks``: data can be read without any model code;
- ``models`` import no Lightning and nothing of ``objectives``, ``tasks``, ``datamodules`` or ``metrics``:
  a model is usable from plain PyTorch;
- ``objectives`` import no Lightning and nothing of ``tasks`` or ``datamodules``;
- ``metrics`` import nothing of the synthetic generator (what a metric needs is passed to it);
- ``batch`` and ``tokenizers`` are leaves: they import nothing of vlp.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "vlp"

RULES: dict[str, tuple[str, ...]] = {
    "vlp.datamodules": ("vlp.models", "vlp.objectives", "vlp.metrics", "vlp.tasks", "vlp.cli", "vlp.runs"),
    "vlp.models": (
        "lightning",
        "pytorch_lightning",
        "vlp.objectives",
        "vlp.tasks",
        "vlp.datamodules",
        "vlp.metrics",
    ),
    "vlp.objectives": ("lightning", "pytorch_lightning", "vlp.tasks", "vlp.datamodules"),
    "vlp.metrics": ("vlp.datamodules.synth", "vlp.tasks"),
    "vlp.batch": ("vlp.",),
    "vlp.tokenizers": ("vlp.",),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[str]:
    """Every module an ``import`` or ``from ... import`` of the file names (at any depth: lazy imports
    inside functions count too)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


FILES = sorted(SRC.rglob("*.py"))


def test_the_rules_cover_real_packages() -> None:
    modules = {module_name(p) for p in FILES}
    for package in RULES:
        assert any(m == package or m.startswith(package + ".") for m in modules), package


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(SRC)))
def test_imports_follow_the_dependency_rules(path: Path) -> None:
    name = module_name(path)
    for package, forbidden in RULES.items():
        if name != package and not name.startswith(package + "."):
            continue
        for imported in imports(path):
            for prefix in forbidden:
                hit = (
                    imported.startswith(prefix)
                    if prefix.endswith(".")
                    else imported.split(".")[: len(prefix.split("."))] == prefix.split(".")
                )
                assert not hit, f"{name} imports {imported}: {package} may not import {prefix.rstrip('.')}"


def test_models_have_at_most_eight_top_level_entries() -> None:
    entries = [p.name for p in (SRC / "models").iterdir() if p.name != "__pycache__"]
    assert len(entries) <= 8, sorted(entries)
