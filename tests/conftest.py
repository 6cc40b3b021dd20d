"""Shared fixtures. GPU tests are the same tests: the ``backend`` fixture's CuPy case is
marked ``gpu`` and skips with the reason when no usable device is present."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

import gradtape as gt


@pytest.fixture(params=["numpy", pytest.param("cupy", marks=pytest.mark.gpu)])
def backend(request):
    """Run the test once per backend; yields the backend name."""
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(gt.use_backend(request.param))
        except gt.BackendUnavailableError as exc:  # the message names the reason
            pytest.skip(str(exc))
        yield request.param


@pytest.fixture
def rng():
    """A seeded NumPy generator."""
    return np.random.default_rng(0)
