"""The dependency rule (docs/architecture.md), read from every module's imports with `ast`.

Layers, lowest first; a module may import its own layer and the ones below it, never above:

    base      errors, taxonomy, provenance, fileio, npzfile, locks, options, distributed, torchrun_env
    cache     saga.cache                      (the contract)
    pipeline  saga.pipeline                   (phase 1: cache <- extract)
    model     saga.model                      (the transformer and the inference rules)
    runs      saga.runs                       (run folders: the only owner of their file names)
    train     saga.train                      (phase 2)
    explain   saga.explain                    (metrics, probe, T-Sigs, t-SNE, report)
    openworld saga.openworld                  (open set, few-shot enrollment, calibration: on finished runs)
    robustness saga.robustness                (re-encoded copies: extracted like phase 1, evaluated like explain)
    benchmark saga.benchmark                  (`saga synth`: test videos, not part of either phase)
    app       predict, demo, demo_reuse, ablate, commands, cli, __main__

Besides the order: the model layer and the cache never import phase 1 or 2, phase 1 never
imports the model, runs, train or explain, train never imports explain, and the benchmark
generator stands alone (base only), so the phases cannot lean on how the test videos were made.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "saga"

LAYERS = ["base", "cache", "pipeline", "model", "runs", "train", "explain", "openworld", "robustness", "benchmark",
          "app"]
BASE = {"errors", "taxonomy", "provenance", "progress", "fileio", "npzfile", "locks", "options", "distributed",
        "torchrun_env", "data",
        "__init__"}
APP = {"predict", "demo", "demo_reuse", "ablate", "commands", "cli", "__main__"}
# Pairs of layers that are ordered above but must not depend on each other at all.
FORBIDDEN = {("model", "pipeline"), ("runs", "pipeline"), ("train", "pipeline"), ("explain", "pipeline")} | {
    ("benchmark", other) for other in ("cache", "pipeline", "model", "runs", "train", "explain", "robustness")}


def layer(module: str) -> str:
    parts = module.split(".")
    assert parts[0] == "saga", module
    head = parts[1] if len(parts) > 1 else "__init__"
    if head in BASE:
        return "base"
    if head in APP:
        return "app"
    if head in ("cache", "pipeline", "model", "runs", "train", "explain", "openworld", "robustness", "benchmark"):
        return head
    raise AssertionError(f"saga.{head}: no layer; add it to tests/test_layers.py and docs/architecture.md")


def modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        name = ".".join(rel.parts)
        out.append((name.removesuffix(".__init__"), path))
    return out


def saga_imports(path: Path, module: str) -> set[str]:
    """Every saga module `path` imports, at any depth (late imports count too)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "saga")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            if name.split(".")[0] == "saga":
                found.add(name)
    return found


def test_every_module_has_a_layer() -> None:
    for name, _ in modules():
        layer(name)


@pytest.mark.parametrize("name,path", modules(), ids=[n for n, _ in modules()])
def test_imports_follow_the_dependency_rule(name: str, path: Path) -> None:
    mine = layer(name)
    for imported in sorted(saga_imports(path, name)):
        theirs = layer(imported)
        assert LAYERS.index(theirs) <= LAYERS.index(mine), f"{name} ({mine}) imports {imported} ({theirs})"
        assert (mine, theirs) not in FORBIDDEN, f"{name} ({mine}) must not import {imported} ({theirs})"


def test_the_rule_catches_a_violation(tmp_path: Path) -> None:
    bad = tmp_path / "x.py"
    bad.write_text("def f():\n    from saga.explain.metrics import evaluate\n")
    assert layer(next(iter(saga_imports(bad, "saga.train.x")))) == "explain"
