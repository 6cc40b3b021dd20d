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

__all__ = ["THREADS", "BLOCK", "CHUNK", "MIN_SIZE", "CHEAP_MIN_SIZE", "thread_pool", "in_worker"]


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


# Threads a large array's blocks are split over (the caller counts as one); capped at 8 because
# elementwise work is bound by memory bandwidth well before that.
THREADS = max(1, min(_usable_cpus(), 8))
# Elements per block of a fused backward program: its few scratch buffers stay in L2.
BLOCK = 1 << 16
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
