"""Shared fixtures. GPU tests are the same tests: the ``backend`` fixture's CuPy case is
marked ``gpu`` and skips with the reason when no usable device is present."""

from __future__ import annotations

import contextlib
import os

import numpy as np
import pytest

import gradtape as gt

# GRADTAPE_TEST_BACKEND=strict: the suite runs on the device-strict CPU backend (CuPy's rules on
# host memory, fused kernels compiled from their CUDA text; gradtape/_src/strict.py), as the
# default backend and the ``backend`` fixture's host case. tests/strict_exclusions.txt lists
# the tests that run on NumPy only, each with the reason; they are skipped with it.
STRICT = os.environ.get("GRADTAPE_TEST_BACKEND", "").strip().lower() == "strict"
if STRICT:
    from gradtape._src import strict as _strict  # test support, selected by the variable

    _strict.install()
    gt.set_backend("strict")


def strict_exclusions() -> list[tuple[str, str]]:
    """``(node id prefix, reason)`` per entry of tests/strict_exclusions.txt."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "strict_exclusions.txt")
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#"):
                prefix, _, reason = line.partition(" | ")
                out.append((prefix.strip(), reason.strip()))
    return out


def pytest_collection_modifyitems(config, items):
    if not STRICT:
        return
    rules = strict_exclusions()
    for item in items:
        for prefix, reason in rules:  # a file, a test (all its parameters) or one case
            nodeid = item.nodeid
            if nodeid == prefix or nodeid.startswith((prefix + "::", prefix + "[")):
                item.add_marker(pytest.mark.skip(reason=f"left out of the strict run: {reason}"))
                break


@pytest.fixture(params=["numpy", pytest.param("cupy", marks=pytest.mark.gpu)])
def backend(request):
    """Run the test once per backend; yields the backend name (``"strict"`` for the host case
    under GRADTAPE_TEST_BACKEND=strict)."""
    name = "strict" if STRICT and request.param == "numpy" else request.param
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(gt.use_backend(name))
        except gt.BackendUnavailableError as exc:  # the message names the reason
            pytest.skip(str(exc))
        yield name


def in_backend(name):
    """A generator for a fixture: the named backend active (``"strict"`` installed first),
    or the test skipped with the reason it is unavailable."""
    if name == "strict":
        from gradtape._src import strict  # test support

        strict.install()
    try:
        with gt.use_backend(name):
            yield name
    except gt.BackendUnavailableError as exc:
        pytest.skip(str(exc))


@pytest.fixture(params=["numpy", "strict", pytest.param("cupy", marks=pytest.mark.gpu)])
def any_backend(request):
    """NumPy, the device-strict stand-in (CuPy's rules on the CPU) and CuPy where present."""
    yield from in_backend(request.param)


@pytest.fixture(params=["strict", pytest.param("cupy", marks=pytest.mark.gpu)])
def device(request):
    """A device backend: the strict stand-in, or CuPy (skipped with the reason without it)."""
    yield from in_backend(request.param)


@pytest.fixture
def rng():
    """A seeded NumPy generator."""
    return np.random.default_rng(0)


@pytest.fixture
def peak_bytes():
    """A function ``peak(fn)``: the peak bytes Python allocated while ``fn()`` ran, above what
    was allocated before (tracemalloc)."""
    import tracemalloc

    def peak(fn):
        tracemalloc.start()
        try:
            tracemalloc.reset_peak()
            base = tracemalloc.get_traced_memory()[0]
            fn()
            return tracemalloc.get_traced_memory()[1] - base
        finally:
            tracemalloc.stop()

    return peak
