"""The layers of shared/DESIGN.md, enforced: every ``import`` in a layer's files (module level or inside a
function) names only modules that layer may use. A new upward import fails here, naming file, line and module."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

LOW = ("kdbench.config", "kdbench.spec", "kdbench.registry", "kdbench.store", "kdbench.distributed",
       "kdbench.batch")
"""Modules every layer may use: typed configs, the record/spec schema and files, process-group helpers."""

LAYERS: dict[str, tuple[str, ...]] = {
    # layer (files under this path) -> the kdbench / methods modules it may import (prefixes)
    "kdbench/distributed.py": (),
    "kdbench/batch.py": (),
    "kdbench/registry.py": (),
    "kdbench/config.py": ("kdbench.registry",),
    "kdbench/spec.py": ("kdbench.config",),
    "kdbench/store": ("kdbench.store", "kdbench.spec", "kdbench.config"),
    "kdbench/models": ("kdbench.models",),
    "kdbench/data": ("kdbench.data", "kdbench.registry", "kdbench.distributed", "kdbench.batch"),
    "kdbench/method.py": ("kdbench.models", "kdbench.registry", "kdbench.batch", "kdbench.methods"),
    "methods": ("kdbench.method", "kdbench.batch", "kdbench.models", "kdbench.distributed", "kdbench.methods"),
    "kdbench/engine": (*LOW, "kdbench.engine", "kdbench.data", "kdbench.method", "kdbench.models"),
    "kdbench/report": (*LOW, "kdbench.report", "kdbench.reference", "kdbench.method"),
}


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
            if node.module == "kdbench":  # ``from kdbench import store``
                found += [(node.lineno, f"kdbench.{alias.name}") for alias in node.names]
    return [(line, name) for line, name in found
            if (name.startswith(("kdbench.", "methods")) or name == "kdbench") and name != "kdbench"]


def _files(layer: str) -> list[Path]:
    path = ROOT / layer
    return [path] if path.suffix == ".py" else sorted(path.rglob("*.py"))


def _violations(layer: str) -> list[str]:
    allowed = LAYERS[layer]
    bad = []
    for file in _files(layer):
        for line, name in _imports(file):
            if not any(name == a or name.startswith(f"{a}.") for a in allowed):
                bad.append(f"{file.relative_to(ROOT)}:{line} imports {name}")
    return bad


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_each_layer_imports_only_what_it_may(layer: str) -> None:
    assert _files(layer), f"{layer}: no files (the layer table is out of date)"
    assert _violations(layer) == []


def test_the_layer_test_fails_for_an_upward_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "methods"
    fake.mkdir()
    (fake / "bad.py").write_text("from kdbench.engine import fit\n\ndef f():\n    import kdbench.runner\n")
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    assert _violations("methods") == ["methods/bad.py:1 imports kdbench.engine",
                                      "methods/bad.py:4 imports kdbench.runner"]


def test_report_names_no_method_and_engine_knows_none() -> None:
    """The engine knows no method by name and the report none either (methods declare their own columns)."""
    import re

    from kdbench.method import discover_methods

    names = sorted(discover_methods().names(), key=len, reverse=True)
    alternatives = "|".join(re.escape(n) for n in names)
    literal = re.compile(rf"""["']({alternatives})["']""")
    offenders = [f"{file.relative_to(ROOT)}:{i}: {line.strip()}"
                 for layer in ("kdbench/engine", "kdbench/report")
                 for file in _files(layer)
                 for i, line in enumerate(file.read_text().splitlines(), 1) if literal.search(line)]
    assert offenders == []
