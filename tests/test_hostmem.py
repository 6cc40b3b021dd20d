"""The host memory cache (glibc tunables, gradtape/_hostmem.py): set once at the first large
NumPy op, never by small ops, and not at all when GRADTAPE_HOST_MEMORY_CACHE=0. Each case runs
in a fresh interpreter because the setting is process-wide and happens once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="the glibc tunables exist on Linux only")


def _run(code: str, **env: str) -> str:
    full = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    out = subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True,
                         timeout=120, check=True)
    return out.stdout.strip()


PROBE = (
    "import numpy as np, gradtape as gt\n"
    "from gradtape import _hostmem\n"
    "x = gt.tensor(np.zeros({n}, np.float32))\n"
    "with gt.GradientTape() as t:\n"
    "    t.watch(x)\n"
    "    y = gt.sum(gt.sin(x) * 2.0)\n"
    "g = t.gradient(y, x)\n"
    "assert float(g.numpy()[0]) == 2.0\n"
    "print(_hostmem.applied, _hostmem._tried)\n"
)


def _glibc() -> bool:
    import ctypes

    try:
        return hasattr(ctypes.CDLL(None), "gnu_get_libc_version")
    except OSError:
        return False


@pytest.mark.skipif(not _glibc(), reason="not glibc: mallopt may be missing or a no-op")
def test_first_large_op_applies_it():
    assert _run(PROBE.format(n=1 << 19)) == "True True"


def test_small_ops_never_touch_the_allocator():
    assert _run(PROBE.format(n=1000)) == "False False"


def test_switched_off_by_the_environment():
    assert _run(PROBE.format(n=1 << 19), GRADTAPE_HOST_MEMORY_CACHE="0") == "False False"
