"""Keep freed host memory for reuse (glibc's ``malloc``), so large eager arrays skip page faults.

Every eager op allocates its output. For a large array (a 2^22-element float32 is 16 MB) the
first write to fresh pages costs the kernel a page fault and a zeroing per page: on the
2-core machine about 2.5 ms per 16 MB array, which is ~30% of an 8-op chain's forward
(hand-written NumPy: 64 ms with fresh arrays vs 45 ms into reused ones). glibc gives such
memory back to the OS when it is freed (``munmap``, or trimming the heap top above
``M_TRIM_THRESHOLD``), so each training step faults the same pages in again.

:func:`ensure` raises two glibc tunables once, the first time gradtape makes a large array on
NumPy (:mod:`gradtape._parallel`): blocks below 64 MiB come from the heap
(``M_MMAP_THRESHOLD``) and up to 512 MiB of free heap is kept (``M_TRIM_THRESHOLD``). Memory a
step freed is then reused by the next step without faults, as a framework's caching allocator
would; the price is that the process's resident size stays near its peak. This is
process-wide (glibc has one allocator), so it is a setting: ``gt.config.host_memory_cache`` or
``GRADTAPE_HOST_MEMORY_CACHE=0`` turns it off before the first large op. Elsewhere than
glibc/Linux it does nothing.
"""

from __future__ import annotations

import ctypes
import sys

from ._config import config

__all__ = ["ensure", "MMAP_THRESHOLD", "TRIM_THRESHOLD"]

MMAP_THRESHOLD = 64 << 20
TRIM_THRESHOLD = 512 << 20
_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
_M_MMAP_THRESHOLD = -3

applied = False  # the tunables were set in this process
_tried = False


def ensure() -> bool:
    """Apply the tunables once if ``gt.config.host_memory_cache`` is on; returns whether they
    are in effect.

    Example:
        >>> from gradtape import _hostmem
        >>> _hostmem.ensure() in (True, False)
        True
    """
    global applied, _tried
    if _tried or not config.host_memory_cache:
        return applied
    _tried = True
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # musl and other libcs may lack mallopt or return 0 (not applied)
    applied = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return applied
