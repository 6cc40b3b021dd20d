"""The CPU thread pool and every size threshold that decides when work is split over it.

The fused backward (:mod:`gradtape._src.codegen.numpy_program`) and the threaded eager forward
(:mod:`.parallel`) share one pool; NumPy's ufuncs release the GIL, so blocks of one array run
in parallel. The thresholds below are read from here only; the measurements behind them are in
``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

__all__ = ["THREADS", "BLOCK", "BLOCKS_PER_THREAD", "CHUNK", "MIN_SIZE", "CHEAP_MIN_SIZE", "CACHE_BUDGET", "block_size",
           "thread_pool", "in_worker"]


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


# Threads a large array's blocks are split over (the caller counts as one); capped at 8 because
# elementwise work is bound by memory bandwidth well before that.
THREADS = max(1, min(_usable_cpus(), 8))
# Elements per block of a fused backward program at most: its few scratch buffers stay in L2.
# Programs with more buffers take smaller blocks (block_size below).
BLOCK = 1 << 16
# Blocks of BLOCK elements each thread must get before a blocked program is split over threads:
# waking a pool thread costs tens of microseconds, a block's work about as much. (Requiring 8
# or 32 moved the 784-512-512-10 step, the CNN step and the 2^22-element fused backward by
# less than this machine's noise, so the smallest split that pays stays.)
BLOCKS_PER_THREAD = 2
# Elements per chunk of the threaded forward: operands, result and the impl's temporaries of a
# float32 chunk stay in L2, as BLOCK does.
CHUNK = 1 << 16
# Output elements from which an elementwise forward is threaded. Waking a pool thread costs tens
# of microseconds, so an op must take well over that; and between matrix products OpenBLAS's
# spinning threads compete with a woken pool thread, which makes threading pay only from here.
MIN_SIZE = 1 << 18
# Primitives declared ``cheap`` (one memory-bound ufunc: add, mul, ...) are bound by memory and
# page faults and only pay for a thread from this size.
CHEAP_MIN_SIZE = 1 << 21


def _l2_bytes() -> int | None:
    """The first CPU's level-2 cache in bytes, from sysfs (Linux); None where it is not known."""
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for entry in sorted(os.listdir(base)):
            d = os.path.join(base, entry)
            with open(os.path.join(d, "level")) as f:
                if f.read().strip() != "2":
                    continue
            with open(os.path.join(d, "type")) as f:
                if f.read().strip() == "Instruction":
                    continue
            with open(os.path.join(d, "size")) as f:
                text = f.read().strip().upper()
            scale = {"K": 1 << 10, "M": 1 << 20}.get(text[-1:], 1)
            return int(text.rstrip("KM")) * scale
    except (OSError, ValueError):
        return None
    return None


# Bytes one block of a blocked program may touch (all its inputs', outputs' and scratch
# buffers' slices together): half the L2 cache, so a block's buffers stay in it from one ufunc
# call to the next (1 MB where the L2 size is unknown). A chain of 10 ufuncs over 14 float32
# buffers of 131K elements ran 1.5-1.8x faster in blocks of 16K elements (0.9 MB) than of 64K
# (3.6 MB, past a 2 MB L2); with 4 buffers 64K blocks (1 MB) stayed the fastest.
CACHE_BUDGET = min(max((_l2_bytes() or 2 << 20) // 2, 256 << 10), 4 << 20)
# Fewest elements per block: below this a ufunc call's fixed cost (about 1.5 us) outweighs
# what the cache saves (blocks of 4K elements were slower than 16K for every program tried).
MIN_BLOCK = 1 << 13


def block_size(n_buffers: int, itemsize: int) -> int:
    """Elements per block for a blocked program whose blocks touch ``n_buffers`` buffers of
    ``itemsize`` bytes per element: the largest power of two from :data:`MIN_BLOCK` to
    :data:`BLOCK` whose slices of all buffers fit :data:`CACHE_BUDGET`.

    Example:
        >>> block_size(4, 4) <= BLOCK and block_size(40, 8) >= MIN_BLOCK
        True
    """
    fit = CACHE_BUDGET // max(1, n_buffers * itemsize)
    size = BLOCK
    while size > MIN_BLOCK and size > fit:
        size >>= 1
    return size


_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()
_WORKER_PREFIX = "gradtape-blocks"


def thread_pool() -> ThreadPoolExecutor:
    """The process-wide pool of ``THREADS - 1`` workers (created at first use).

    Example:
        >>> thread_pool().submit(sum, (1, 2)).result()
        3
    """
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=max(1, THREADS - 1), thread_name_prefix=_WORKER_PREFIX)
        return _pool


def in_worker() -> bool:
    """True on one of the pool's threads (work there is never split again)."""
    return threading.current_thread().name.startswith(_WORKER_PREFIX)
