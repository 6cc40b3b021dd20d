"""Layout rules that keep the architecture honest: one CuPy import, the CUDA sources ship inside
the package (never a top-level ``kernels`` module), documented and typed public API, py.typed."""

from __future__ import annotations

import ast
import inspect
import os
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

import gradtape as gt

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "gradtape"
CUPY_MODULES = {"cupy", "cupyx", "cupy_backends"}
KERNEL_SUFFIXES = {".cu", ".cuh", ".md"}


def package_sources():
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def cupy_imports(path: Path) -> list[int]:
    """Line numbers in ``path`` that import CuPy, statically or through importlib/__import__."""
    text = path.read_text(encoding="utf-8")
    found = []
    for node in ast.walk(ast.parse(text, filename=str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        if any(n.split(".")[0] in CUPY_MODULES for n in names):
            found.append(node.lineno)
    for m in re.finditer(r"(import_module|__import__)\(\s*['\"](cupy|cupyx|cupy_backends)\b", text):
        found.append(text.count("\n", 0, m.start()) + 1)
    return sorted(found)


def test_only_the_backend_module_imports_cupy():
    backend = PACKAGE / "_src" / "backend.py"
    offenders = [f"{p.relative_to(ROOT)}:{line}" for p in package_sources() if p != backend
                 for line in cupy_imports(p)]
    assert offenders == [], f"CuPy imported outside gradtape/_src/backend.py: {offenders}"
    assert cupy_imports(backend), "the check must see backend.py's own import"


def test_the_cupy_check_catches_every_spelling(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import cupy as cp\nfrom cupyx.scipy import special\nimport numpy\n"
                   "import importlib\nm = importlib.import_module('cupy')\n"
                   "def f():\n    import cupy_backends.cuda\n")
    assert cupy_imports(bad) == [1, 2, 5, 7]


def test_py_typed_marker_exists():
    assert (PACKAGE / "py.typed").is_file()


# --------------------------------------------------------------------------- installed layout
@pytest.fixture(scope="module")
def built_lib(tmp_path_factory):
    """What an install puts on sys.path: setuptools' build_py output for this checkout."""
    pytest.importorskip("setuptools")
    src = tmp_path_factory.mktemp("src")
    out = tmp_path_factory.mktemp("lib")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ("pyproject.toml", "setup.py", "setup.cfg", "MANIFEST.in", "README.md"):
        if (ROOT / name).is_file():
            shutil.copy2(ROOT / name, src / name)
    for name in ("gradtape", "kernels"):
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=ignore)
    res = subprocess.run(
        [sys.executable, "-c", "from setuptools import setup; setup()", "-q", "build_py",
         "--build-lib", str(out)],
        cwd=src, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    return out


def test_install_contains_only_the_gradtape_package(built_lib):
    top = sorted(p.name for p in built_lib.iterdir())
    assert top == ["gradtape"], f"top-level entries an install would add: {top}"
    assert (built_lib / "gradtape" / "py.typed").is_file()
    assert (built_lib / "gradtape" / "ops" / "__init__.py").is_file()


def test_kernels_is_not_importable_at_top_level_after_install(built_lib, tmp_path):
    code = ("import importlib.util, gradtape\n"
            "assert importlib.util.find_spec('kernels') is None, 'kernels is importable'\n"
            "print(gradtape.__file__)\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(built_lib)
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert Path(res.stdout.strip()).is_relative_to(built_lib)


def test_cuda_sources_ship_inside_the_package(built_lib):
    sources = [p for d in (ROOT / "kernels", PACKAGE / "kernels") if d.is_dir()
               for p in d.iterdir() if p.suffix in KERNEL_SUFFIXES]
    shipped = built_lib / "gradtape" / "kernels"
    missing = [p.name for p in sources if not (shipped / p.name).is_file()]
    assert missing == [], f"CUDA sources not shipped in gradtape/kernels/: {missing}"


# --------------------------------------------------------------------------- public API
def public_objects():
    """(qualified name, object) for gradtape.__all__, public submodules' __all__ included."""
    seen = []
    for name in gt.__all__:
        obj = getattr(gt, name)
        if isinstance(obj, types.ModuleType):
            seen.append((f"gt.{name}", obj))
            for sub in getattr(obj, "__all__", []):
                seen.append((f"gt.{name}.{sub}", getattr(obj, sub)))
        else:
            seen.append((f"gt.{name}", obj))
    return seen


def public_functions():
    """Functions and public methods (with ``__init__``) of the classes in the public API."""
    out = []
    for qual, obj in public_objects():
        if inspect.isclass(obj):
            for key, member in vars(obj).items():
                if (not key.startswith("_") or key == "__init__") and inspect.isfunction(member):
                    out.append((f"{qual}.{key}", member))
        elif callable(obj) and not isinstance(obj, types.ModuleType):
            out.append((qual, obj))
    return out


def test_every_public_name_exists_and_has_a_docstring():
    missing = [n for n in gt.__all__ if not hasattr(gt, n)]
    assert missing == []
    undocumented = [q for q, obj in public_objects() if not (inspect.getdoc(obj) or "").strip()]
    assert undocumented == [], f"public names without a docstring: {undocumented}"


def test_public_functions_are_fully_annotated():
    assert len(public_functions()) > 50
    bad = []
    for qual, fn in public_functions():
        try:
            sig = inspect.signature(fn)
        except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
            bad.append(f"{qual}: no signature")
            continue
        unannotated = [p.name for p in sig.parameters.values()
                       if p.annotation is inspect.Parameter.empty and p.name not in ("self", "cls")]
        if unannotated:
            bad.append(f"{qual}: parameters {unannotated}")
        if sig.return_annotation is inspect.Signature.empty:
            bad.append(f"{qual}: return")
    assert bad == [], "missing type hints:\n" + "\n".join(bad)
