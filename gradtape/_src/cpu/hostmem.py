"""Keep freed host memory for reuse (glibc's ``malloc``), so large eager arrays skip page faults.

Every eager op allocates its output. For a large array (a 2^22-element float32 is 16 MB) the
first write to fresh pages costs the kernel a page fault and a zeroing per page, a sizeable
part of an elementwise op's cost (benchmarks/RESULTS.md has the figures). glibc gives such
memory back to the OS when it is freed (``munmap``, or trimming the heap top above
``M_TRIM_THRESHOLD``), so each training step faults the same pages in again.

:func:`apply` sets two glibc tunables: blocks below 64 MiB come from the heap
(``M_MMAP_THRESHOLD``) and up to 512 MiB of free heap is kept (``M_TRIM_THRESHOLD``). Memory a
step freed is then reused by the next step without faults, as a framework's caching allocator
would; the price is that the process's resident size stays near its peak. This is
process-wide (glibc has one allocator), so it is a setting with one call site: assigning
``gt.config.host_memory_cache`` (done once at import from ``GRADTAPE_HOST_MEMORY_CACHE``,
default on) calls :func:`apply`; ``False`` restores glibc's defaults. Elsewhere than
glibc/Linux it does nothing.
"""

from __future__ import annotations

import ctypes
import sys

__all__ = ["apply", "MMAP_THRESHOLD", "TRIM_THRESHOLD"]

MMAP_THRESHOLD = 64 << 20
TRIM_THRESHOLD = 512 << 20
_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
_M_MMAP_THRESHOLD = -3

# glibc's own defaults (malloc(3)): what ``apply(False)`` restores
_DEFAULT_MMAP_THRESHOLD = 128 * 1024
_DEFAULT_TRIM_THRESHOLD = 128 * 1024

applied = False  # the tunables are in effect in this process


def apply(enabled: bool) -> bool:
    """Set (``enabled``) or restore glibc's defaults for the two tunables; returns whether the
    cache is in effect (False where glibc's ``mallopt`` is missing).

    Example:
        >>> apply(True) in (True, False)
        True
    """
    global applied
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    mmap, trim = (MMAP_THRESHOLD, TRIM_THRESHOLD) if enabled else (_DEFAULT_MMAP_THRESHOLD,
                                                                  _DEFAULT_TRIM_THRESHOLD)
    # musl and other libcs may lack mallopt or return 0 (not applied)
    ok = bool(mallopt(_M_MMAP_THRESHOLD, mmap)) and bool(mallopt(_M_TRIM_THRESHOLD, trim))
    applied = ok and enabled
    return applied
