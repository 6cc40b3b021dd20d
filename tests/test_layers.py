"""The layer order of ARCHITECTURE.md, enforced: a module imports only from its own layer or
the layers below, gradtape's modules form no import cycle, and an import of gradtape's own
modules inside a function carries a comment saying why (imports in functions count as edges)."""

from __future__ import annotations

import ast
import fnmatch
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "gradtape"

# Bottom to top, as ARCHITECTURE.md lists them. Patterns match dotted module names.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("gradtape._src", "gradtape._src.errors", "gradtape._src.nest", "gradtape._src.cpu",
              "gradtape._src.cpu.hostmem", "gradtape._src.autodiff", "gradtape._src.codegen",
              "gradtape._src.frontend")),
    ("config", ("gradtape._src.config",)),
    ("backend", ("gradtape._src.backend",)),
    ("cpu", ("gradtape._src.cpu.pool", "gradtape._src.cpu.parallel", "gradtape._src.cpu.select")),
    ("codegen", ("gradtape._src.codegen.*",)),
    ("strict", ("gradtape._src.strict",)),
    ("tape state", ("gradtape._src.autodiff.state",)),
    ("tensor", ("gradtape._src.tensor",)),
    ("batched", ("gradtape._src.autodiff.batched",)),
    ("recording", ("gradtape._src.autodiff.record",)),
    ("rules", ("gradtape._src.rules",)),
    ("primitive", ("gradtape._src.primitive",)),
    ("engine", ("gradtape._src.autodiff.fusion", "gradtape._src.autodiff.engine")),
    ("ops", ("gradtape.ops", "gradtape.ops.*")),
    ("frontend", ("gradtape._src.frontend.*",)),
    ("library", ("gradtape.nn", "gradtape.nn.*", "gradtape.optimizers", "gradtape.schedules",
                 "gradtape.testing", "gradtape.extend", "gradtape.random", "gradtape.distributed")),
    ("top", ("gradtape", "gradtape.examples", "gradtape.examples.*")),
]


def module_names() -> dict[str, Path]:
    mods = {}
    for f in PACKAGE.rglob("*.py"):
        if "__pycache__" in f.parts:
            continue
        parts = list(f.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = f
    return mods


MODULES = module_names()


def layer_of(mod: str) -> int:
    hits = [i for i, (_, pats) in enumerate(LAYERS) if any(fnmatch.fnmatchcase(mod, p) for p in pats)]
    assert len(hits) == 1, f"module {mod} matches layers {[LAYERS[i][0] for i in hits]}; list it once"
    return hits[0]


def imports_of(mod: str, path: Path) -> list[tuple[str, int, bool, str]]:
    """(imported gradtape module, line, inside a function, source line) for each import."""
    is_pkg = path.name == "__init__.py"
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    out = []

    def resolve(node: ast.ImportFrom) -> list[str]:
        base = mod.split(".") if is_pkg else mod.split(".")[:-1]
        if node.level:
            base = base[: len(base) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
        else:
            target = node.module or ""
        subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in MODULES]
        rest = [a for a in node.names if f"{target}.{a.name}" not in MODULES]
        return subs + ([target] if rest else [])

    def walk(node: ast.AST, in_func: bool) -> None:
        for ch in ast.iter_child_nodes(node):
            if _type_checking_block(ch):  # imports for annotations only: no runtime edge
                for other in ch.orelse:
                    walk(ast.Module(body=[other], type_ignores=[]), in_func)
                continue
            inner = in_func or isinstance(ch, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            targets: list[str] = []
            if isinstance(ch, ast.ImportFrom):
                targets = resolve(ch)
            elif isinstance(ch, ast.Import):
                targets = [a.name for a in ch.names]
            for t in targets:
                # importing a submodule runs its parent packages first: not an edge
                if t in MODULES and t != mod and not mod.startswith(t + "."):
                    out.append((t, ch.lineno, in_func, lines[ch.lineno - 1]))
            walk(ch, inner)

    walk(ast.parse(text), False)
    return out


def _type_checking_block(node: ast.AST) -> bool:
    """``if TYPE_CHECKING:`` (or ``typing.TYPE_CHECKING``): its imports never run."""
    if not isinstance(node, ast.If):
        return False
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


EDGES = {m: imports_of(m, p) for m, p in MODULES.items()}


def test_every_module_has_a_layer():
    for mod in MODULES:
        layer_of(mod)


def test_no_module_imports_from_a_layer_above():
    bad = []
    for mod, edges in EDGES.items():
        mine = layer_of(mod)
        for target, line, _, _ in edges:
            theirs = layer_of(target)
            if theirs > mine:
                bad.append(f"{mod} (layer {LAYERS[mine][0]}) imports {target} (layer "
                           f"{LAYERS[theirs][0]}) at line {line}")
    assert bad == [], "imports from a higher layer:\n" + "\n".join(bad)


def test_no_import_cycle():
    graph = {m: {t for t, *_ in e} for m, e in EDGES.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            strong(v)
    assert cycles == [], f"import cycles among gradtape's modules: {cycles}"


def test_imports_inside_functions_say_why():
    bad = [f"{mod}:{line}" for mod, edges in EDGES.items() for _, line, inner, src in edges
           if inner and "#" not in src]
    assert bad == [], f"imports of gradtape modules inside functions without a comment: {bad}"


def test_the_checks_see_a_violation(tmp_path, monkeypatch):
    """The layer rule is not vacuous: a low module importing the ops is reported."""
    fake = tmp_path / "gradtape" / "_src"
    fake.mkdir(parents=True)
    (fake / "errors.py").write_text("from ..ops import add\n\ndef f():\n    from .. import nn\n")
    edges = imports_of("gradtape._src.errors", fake / "errors.py")
    assert [(t, inner) for t, _, inner, _ in edges] == [("gradtape.ops", False), ("gradtape.nn", True)]
    assert layer_of("gradtape.ops") > layer_of("gradtape._src.errors")


def test_imports_for_type_checking_only_are_no_edges(tmp_path):
    """``if TYPE_CHECKING:`` imports never run, so they may name a higher layer (annotations)."""
    fake = tmp_path / "gradtape" / "_src"
    fake.mkdir(parents=True)
    (fake / "errors.py").write_text("from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n"
                                    "    from ..ops import add\nelse:\n    from .. import nn\n")
    edges = imports_of("gradtape._src.errors", fake / "errors.py")
    assert [t for t, *_ in edges] == ["gradtape.nn"]


@pytest.mark.parametrize("name", ["ARCHITECTURE.md"])
def test_the_architecture_note_lists_every_layer(name):
    text = (ROOT / name).read_text(encoding="utf-8")
    missing = [layer for layer, _ in LAYERS if f"**{layer}**" not in text]
    assert missing == [], f"{name} does not describe layers {missing}"
