"""The host memory cache (glibc tunables): applied from its one call site, the
``gt.config.host_memory_cache`` setting (at import from GRADTAPE_HOST_MEMORY_CACHE, default on),
reverted by setting it False, never applied when the variable is 0. Each case runs in a fresh
interpreter because the setting is process-wide. Observed through glibc: with the cache on, a
freed 8 MB block is reused by the heap instead of being unmapped (``mallinfo2``'s free heap)."""

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
    "import ctypes, numpy as np, gradtape as gt\n"
    "{pre}"
    "class M(ctypes.Structure):\n"
    "    _fields_ = [(n, ctypes.c_size_t) for n in ('arena', 'ordblks', 'smblks', 'hblks', 'hblkhd',"
    " 'usmblks', 'fsmblks', 'uordblks', 'fordblks', 'keepcost')]\n"
    "libc = ctypes.CDLL(None)\n"
    "libc.mallinfo2.restype = M\n"
    "x = gt.tensor(np.zeros(1 << 21, np.float32))\n"
    "with gt.GradientTape() as t:\n"
    "    t.watch(x)\n"
    "    y = gt.sum(gt.sin(x) * 2.0)\n"
    "g = t.gradient(y, x)\n"
    "assert float(g.numpy()[0]) == 2.0\n"
    "del x, y, g, t\n"
    "print(gt.config.host_memory_cache, libc.mallinfo2().fordblks >= (8 << 20))\n"
)


def _glibc() -> bool:
    import ctypes

    try:
        lib = ctypes.CDLL(None)
        return hasattr(lib, "gnu_get_libc_version") and hasattr(lib, "mallinfo2")
    except OSError:
        return False


pytestmark = [pytestmark, pytest.mark.skipif(not _glibc(), reason="not glibc >= 2.33: no mallinfo2")]


def test_on_by_default_keeps_freed_large_blocks_for_reuse():
    assert _run(PROBE.format(pre="")) == "True True"


def test_switched_off_by_the_environment():
    assert _run(PROBE.format(pre=""), GRADTAPE_HOST_MEMORY_CACHE="0") == "False False"


def test_setting_it_false_reverts_glibc_defaults():
    assert _run(PROBE.format(pre="gt.config.host_memory_cache = False\n")) == "False False"
