"""The generated HTML API reference (``python docs/build.py``, pdoc) builds without a warning and
lists every public name of the public modules; each public function and class with its
signature (every parameter) and the first line of its docstring.

Skipped, with the reason, when pdoc is not installed (it comes with the ``dev`` and ``docs``
extras). The build takes a few seconds, so it runs once for the module.
"""

from __future__ import annotations

import html
import importlib
import importlib.util
import inspect
import re
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_build():
    spec = importlib.util.spec_from_file_location("gradtape_docs_build", ROOT / "docs" / "build.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


BUILD = _load_build()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    pytest.importorskip("pdoc", reason="pdoc is not installed (pip install -e '.[docs]'): no HTML reference to check")
    out = tmp_path_factory.mktemp("reference")
    index = BUILD.build(out)  # raises RuntimeError listing pdoc's warnings, if any
    assert index.is_file()
    return out


def _page(out: Path, module: str) -> str:
    return (out / (module.replace(".", "/") + ".html")).read_text(encoding="utf-8")


def _squash(fragment: str) -> str:
    """Text without tags, entities decoded, and no whitespace at all: markup (``<code>x</code>.``)
    and line wrapping then cannot change what a comparison sees."""
    return "".join(html.unescape(re.sub(r"<[^>]+>", "", fragment)).split())


def _block(page: str, anchor: str, end: str) -> str | None:
    """The HTML from ``id="anchor"`` to the first ``end`` (a regex) after it, squashed."""
    m = re.search(rf'id="{re.escape(anchor)}"(.*?)(?:{end})', page, re.S)
    return None if m is None else _squash(m.group(1))


def _first_line(obj: object) -> str:
    """The docstring's first line as pdoc shows it (squashed): ``code`` loses its backquotes
    and a ``:func:`f``` reference reads ``f()``."""
    doc = (inspect.getdoc(obj) or "").strip()
    line = doc.splitlines()[0] if doc else ""
    line = re.sub(r":(?:func|meth):`~?([^`]*)`", r"\1()", line)
    line = re.sub(r":\w+:`~?([^`]*)`", r"\1", line)
    return "".join(line.replace("`", "").split())


def _params(obj: object) -> list[str]:
    try:
        return [p for p in inspect.signature(obj).parameters if p != "self"]
    except (TypeError, ValueError):  # no signature to show (a builtin)
        return []


def _public(module: str) -> list[tuple[str, object]]:
    mod = importlib.import_module(module)
    return [(n, getattr(mod, n)) for n in mod.__all__ if not isinstance(getattr(mod, n), types.ModuleType)]


def _problems(page: str, name: str, obj: object) -> list[str]:
    section = _block(page, name, "</section>")
    if section is None:
        return [f"{name}: no section"]
    if not (inspect.isclass(obj) or inspect.isroutine(obj)):
        return []  # an instance (gt.config), a constant: listed with its value, no signature
    if getattr(obj, "__name__", name) != name:  # an alias (nn.Linear = nn.Dense)
        ok = f"<class'{obj.__name__}'>" in section or f"{obj.__name__}" in section
        return [] if ok else [f"{name}: the alias does not name {obj.__name__}"]
    out = []
    if inspect.isclass(obj):
        head = section.split(_first_line(obj))[0] if _first_line(obj) else section
        if f"class{name}" not in head:  # after its decorators, if any
            out.append(f"{name}: no 'class {name}' heading")
        # the constructor's signature: its own entry, or (no __init__ of its own) none to show
        sig = _block(page, f"{name}.__init__", r'<div id=|</section>') or ""
    else:
        sig = section.split(_first_line(obj))[0] if _first_line(obj) else section
        if f"def{name}(" not in sig:
            out.append(f"{name}: no 'def {name}(' heading")
    missing = [p for p in _params(obj) if p not in sig]
    if missing:
        out.append(f"{name}: signature lacks {missing}")
    first = _first_line(obj)
    if not first:
        out.append(f"{name}: no docstring")
    elif first not in section:
        out.append(f"{name}: first docstring line {first!r} not in its section")
    return out


@pytest.mark.parametrize("module", BUILD.MODULES)
def test_every_public_name_is_listed_with_signature_and_first_line(reference, module):
    page = _page(reference, module)
    problems = [p for name, obj in _public(module) for p in _problems(page, name, obj)]
    assert not problems, f"{module}: " + "; ".join(problems)


@pytest.mark.parametrize("module", BUILD.MODULES)
def test_first_docstring_lines_hold_whole_code_spans(module):
    """A code span broken across a docstring's first line break (````out[..., j] =`` then
    ``x[...]```` on the next line) renders differently from one markdown2 release to the next
    (2.5.6 changed it), so the reference's summary line would depend on the docs tool's
    version: every public name's first line closes the spans it opens."""
    broken = []
    for name, obj in _public(module):
        doc = inspect.getdoc(obj) or ""
        first = doc.splitlines()[0] if doc else ""
        if first.count("``") % 2 or (first.count("`") - 2 * first.count("``")) % 2:
            broken.append(f"{name}: {first!r}")
    assert not broken, f"{module}: " + "; ".join(broken)


def test_every_module_has_a_page(reference):
    assert (reference / "index.html").is_file()
    for module in BUILD.MODULES:
        assert (reference / (module.replace(".", "/") + ".html")).is_file(), module


def test_build_reports_pdoc_warnings(tmp_path, monkeypatch):
    """A pdoc warning fails the build (warnings are errors); the message names it."""
    pdoc = pytest.importorskip("pdoc", reason="pdoc is not installed (pip install -e '.[docs]')")
    import warnings

    def warn_once(*modules, output_directory=None):
        warnings.warn("Error parsing type annotation for gradtape.x", UserWarning, stacklevel=1)

    monkeypatch.setattr(pdoc, "pdoc", warn_once)
    with pytest.raises(RuntimeError, match="(?s)warnings are errors.*Error parsing type annotation"):
        BUILD.build(tmp_path)
    assert BUILD.main([str(tmp_path)]) == 1
