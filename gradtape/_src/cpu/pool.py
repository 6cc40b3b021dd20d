"""The CPU thread pool and every size threshold that decides when work is split over it.

The fused backward (:mod:`gradtape._src.codegen.numpy_program`) and the threaded eager forward
(:mod:`.parallel`) share one pool; NumPy's ufuncs release the GIL, so blocks of one array run
in parallel. The thresholds below are read from here only; the measurements behind them are in
``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import contextvars
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

__all__ = ["THREADS", "BLOCK", "BLOCKS_PER_THREAD", "CHUNK", "MIN_SIZE", "CHEAP_MIN_SIZE", "CACHE_BUDGET",
           "L2_BUDGET", "LARGE_BUDGET", "cache_budget", "block_size", "thread_pool", "in_worker", "submit"]


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


# Bytes one block of a blocked program may touch (all its inputs', outputs' and scratch buffers'
# slices together), one of two: half the L2 cache (1 MB where its size is unknown), or
# LARGE_BUDGET. Which one runs faster is a property of the CPU, not of the program, so it is
# measured once per process (:func:`cache_budget`). A chain of 10 ufuncs over 14 float32
# buffers of 2^17 elements (a compiled HVP step's fused runs): on a Xeon with 2 MB L2 per core
# and a slow shared L3, blocks sized to half the L2 (16K elements) ran 1.4x faster than 64K;
# on an AMD EPYC with 1 MB L2 and a fast L3, 64K blocks ran 1.4x faster than 8K (its half-L2
# size: each of its 160 ufunc calls then costs more than its cache misses would).
L2_BUDGET = min(max((_l2_bytes() or 2 << 20) // 2, 256 << 10), 4 << 20)
LARGE_BUDGET = 4 << 20
# Fewest elements per block: below this a ufunc call's fixed cost (about 1.5 us) outweighs
# what the cache saves (blocks of 4K elements were slower than 16K for every program tried).
MIN_BLOCK = 1 << 13
# The larger budget is taken when its blocks run the calibration chain in at most this share
# of the time the L2-sized blocks take (a tie keeps the L2 rule).
_CALIBRATION_MARGIN = 0.92


def _env_budget() -> int:
    """``GRADTAPE_CACHE_BUDGET`` in bytes, 0 when unset or empty; anything but an int >= 1
    raises ValueError naming the variable (at ``import gradtape``)."""
    text = os.environ.get("GRADTAPE_CACHE_BUDGET", "").strip()
    if not text:
        return 0
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"environment variable GRADTAPE_CACHE_BUDGET={text!r}: expected a "
                         "number of bytes >= 1, or empty for the budget measured at first use")
    return value


# The budget in effect: 0 until :func:`cache_budget` measures it, or as set by
# ``GRADTAPE_CACHE_BUDGET`` (bytes) or ``extend.cpu_thresholds(cache_budget=...)``.
CACHE_BUDGET = _env_budget()


def _blocks_for(budget: int, n_buffers: int, itemsize: int) -> int:
    fit = budget // max(1, n_buffers * itemsize)
    size = BLOCK
    while size > MIN_BLOCK and size > fit:
        size >>= 1
    return size


def _calibrate() -> int:
    """The faster of :data:`L2_BUDGET` and :data:`LARGE_BUDGET` on this CPU: a 10-ufunc chain
    over 14 float32 buffers of 2^17 elements run in each budget's blocks, alternating, the best
    of 5 runs each (about 5 ms in all). Blocking never changes a value (each element goes
    through the same ufunc calls), only the time."""
    import numpy as np  # (pool is imported before the backends; NumPy is loaded by then)

    n, n_buffers = 1 << 17, 14
    small = _blocks_for(L2_BUDGET, n_buffers, 4)
    large = _blocks_for(LARGE_BUDGET, n_buffers, 4)
    if small >= large:
        return L2_BUDGET
    one = np.float32(1.0)
    ins = [np.linspace(-1.0, 1.0, n, dtype=np.float32) + np.float32(k) for k in range(4)]
    out = np.empty(n, np.float32)

    def run(step: int, t: list) -> None:
        for r in range(0, n, step):
            e = r + step
            a, b, c, d = (x[r:e] for x in ins)
            np.multiply(a, b, out=t[0])
            np.add(t[0], c, out=t[1])
            np.tanh(t[1], out=t[2])
            np.multiply(t[2], t[2], out=t[3])
            np.subtract(one, t[3], out=t[4])
            np.multiply(t[4], d, out=t[5])
            np.multiply(t[5], a, out=t[6])
            np.add(t[6], t[0], out=t[7])
            np.multiply(t[7], b, out=t[8])
            np.add(t[8], c, out=out[r:e])

    temps = {s: [np.empty(s, np.float32) for _ in range(9)] for s in (small, large)}
    best = {small: float("inf"), large: float("inf")}
    for _ in range(5):
        for s in (small, large):
            t0 = time.perf_counter()
            run(s, temps[s])
            best[s] = min(best[s], time.perf_counter() - t0)
    return LARGE_BUDGET if best[large] <= _CALIBRATION_MARGIN * best[small] else L2_BUDGET


def cache_budget() -> int:
    """The bytes one block of a blocked program may touch: ``GRADTAPE_CACHE_BUDGET`` when set,
    else measured at the first call (:func:`_calibrate`) and kept for the process.

    Example:
        >>> cache_budget() in (L2_BUDGET, LARGE_BUDGET) or bool(_env_budget())
        True
    """
    global CACHE_BUDGET
    if CACHE_BUDGET:
        return CACHE_BUDGET
    with _calibration_lock:
        if not CACHE_BUDGET:
            CACHE_BUDGET = _calibrate()
    return CACHE_BUDGET


def block_size(n_buffers: int, itemsize: int) -> int:
    """Elements per block for a blocked program whose blocks touch ``n_buffers`` buffers of
    ``itemsize`` bytes per element: the largest power of two from :data:`MIN_BLOCK` to
    :data:`BLOCK` whose slices of all buffers fit :func:`cache_budget`.

    Example:
        >>> block_size(4, 4) <= BLOCK and block_size(40, 8) >= MIN_BLOCK
        True
    """
    return _blocks_for(cache_budget(), n_buffers, itemsize)


_calibration_lock = threading.Lock()


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


class _Job:
    """``fn(*args)`` for the pool, dropping ``fn`` and ``args`` as it returns, or when its
    future is cancelled. The pool keeps its work item (this object) until a worker next runs:
    after the caller's ``result()`` has woken, or, for a job cancelled because the caller did
    all the work itself, in the queue. A closure over a program's arrays held there kept them
    alive past the caller's use of them for as long as a busy machine left the worker
    unscheduled (a chunked vmap's peak memory grew with the load)."""

    __slots__ = ("ctx", "fn", "args")

    def __init__(self, ctx: contextvars.Context | None, fn: Callable[..., Any], args: tuple) -> None:
        self.ctx, self.fn, self.args = ctx, fn, args

    def __call__(self) -> Any:
        ctx, fn, args = self.ctx, self.fn, self.args
        self.ctx = self.fn = self.args = None  # type: ignore[assignment]
        return fn(*args) if ctx is None else ctx.run(fn, *args)

    def drop(self, _future: Future) -> None:
        self.ctx = self.fn = self.args = None  # type: ignore[assignment]


def submit(fn: Callable[..., Any], *args: Any, in_context: bool = False) -> Future:
    """Run ``fn(*args)`` on the pool (in a copy of the caller's context with ``in_context``:
    ``np.errstate``, a context variable, then holds there too); the pool drops ``fn`` and
    ``args`` as the call returns, before the caller's ``result()`` wakes, or as the future is
    cancelled.

    Example:
        >>> submit(sum, (1, 2)).result()
        3
    """
    job = _Job(contextvars.copy_context() if in_context else None, fn, args)
    future = thread_pool().submit(job)
    future.add_done_callback(job.drop)  # (run at once by a cancel())
    return future


def in_worker() -> bool:
    """True on one of the pool's threads (work there is never split again)."""
    return threading.current_thread().name.startswith(_WORKER_PREFIX)
