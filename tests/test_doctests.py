"""Every docstring example (``>>>``) in the gradtape package runs and prints what it shows.

One test per module of the package with examples (public and internal: ``gradtape/_src``
documents its contracts with examples too), found by walking the package, with the module's
namespace as the examples' globals, like ``pytest --doctest-modules``, less the names that
shadow a builtin. Each module runs on the NumPy backend (reprs differ on CuPy) with
``gt.config`` restored afterwards, so an example that switches a setting cannot leak into
other tests.
"""

from __future__ import annotations

import builtins
import doctest
import importlib
import pkgutil
import types

import pytest

import gradtape as gt

MODULES = ["gradtape"] + sorted(m.name for m in pkgutil.walk_packages(gt.__path__, "gradtape."))
_FINDER = doctest.DocTestFinder()
# the modules with examples (a module without any is no test case, so -ra lists no skips)
WITH_EXAMPLES = [n for n in MODULES if any(t.examples for t in _FINDER.find(importlib.import_module(n)))]
_SETTINGS = ("fusion", "check_numerics", "host_memory_cache")


def test_the_walk_finds_the_public_modules():
    for name in ("gradtape.nn", "gradtape.optimizers", "gradtape.testing", "gradtape.extend",
                 "gradtape._src.tensor", "gradtape.ops.elementwise"):
        assert name in MODULES
    for name in ("gradtape", "gradtape.testing", "gradtape._src.tensor", "gradtape.ops.elementwise"):
        assert name in WITH_EXAMPLES


def _globals(module: types.ModuleType) -> dict:
    """The module's namespace, less the names that shadow a builtin (the ops modules define
    ``sum``, ``abs``, ``round`` ...): an example reads ``round(x, 4)`` as its reader's code would."""
    return {k: v for k, v in vars(module).items()
            if k.startswith("__") or getattr(builtins, k, v) is v}


@pytest.mark.parametrize("name", WITH_EXAMPLES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    tests = [t for t in _FINDER.find(module, globs=_globals(module)) if t.examples]
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    report: list[str] = []
    saved = {s: getattr(gt.config, s) for s in _SETTINGS}
    try:
        with gt.use_backend("numpy"):
            for test in tests:
                runner.run(test, out=report.append)
    finally:
        for s, v in saved.items():
            setattr(gt.config, s, v)
    assert runner.tries > 0
    assert runner.failures == 0, "".join(report)
