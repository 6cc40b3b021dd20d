"""Shared fixtures. GPU tests are the same tests: the ``backend`` fixture's CuPy case is
marked ``gpu`` and skips with the reason when no usable device is present."""

from __future__ import annotations

import numpy as np
import pytest

import gradtape as gt
from gradtape._src import backend as _backend


@pytest.fixture(params=["numpy", pytest.param("cupy", marks=pytest.mark.gpu)])
def backend(request):
    """Run the test once per backend; yields the backend name."""
    if request.param == "cupy":
        reason = _backend.cupy_unavailable_reason()
        if reason is not None:
            pytest.skip(f"CuPy backend unavailable: {reason}")
    with gt.use_backend(request.param):
        yield request.param


@pytest.fixture
def rng():
    """A seeded NumPy generator."""
    return np.random.default_rng(0)
