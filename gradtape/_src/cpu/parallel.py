"""Multi-threaded eager forward of large elementwise primitives (NumPy backend).

The eager forward runs one NumPy call per op, on one core. NumPy ufuncs release the GIL, so a
large elementwise op can be cut into contiguous flat chunks computed at the same time on the
thread pool the fused backward already uses (:mod:`.pool`), so the forward of a large array
runs on every core.

:func:`forward` applies when all of these hold, and otherwise makes the plain call
``prim.impl(xp, *arrays, **params)``:

- the backend is NumPy (CuPy arrays never come here: ``xp is numpy`` is the first test);
- the primitive is elementwise (``prim.derivatives is not None``);
- :data:`.pool.THREADS` > 1 and the output has at least :data:`.pool.MIN_SIZE` elements
  (:data:`.pool.CHEAP_MIN_SIZE` for primitives declared ``cheap``, single memory-bound ufuncs
  such as ``add``/``mul``) and more than one :data:`.pool.CHUNK`: below that, waking a thread
  costs more than it saves;
- every operand is an exact ``numpy.ndarray`` that either has the full output shape and is
  C-contiguous (so it has a flat view) or holds one element (a scalar); other broadcasting,
  strided or Fortran-ordered operands take the plain call;
- the calling thread is not itself one of the pool's workers (no nested waits).

The result is bit-identical to the plain call in values, dtype, shape and (C-order) strides:
the output dtype comes from running ``impl`` on one element of each operand (NumPy 2 promotion
depends on dtypes, never on values), the output is allocated once, and each chunk is written
with ``out[a:b] = impl(np, *chunks, **params)``, or, for primitives whose impl is one ufunc
call (declared with ``out_form``), by that call with ``out=`` (no temporary). Chunks are handed out dynamically: the
calling thread starts at once and takes whatever chunks a worker has not (a worker that wakes
late, its core busy with another process, costs at most the chunk it holds); a worker that
never started is cancelled rather than waited for. Workers run in a copy of the caller's
:mod:`contextvars` context, so ``np.errstate`` applies in them as in the caller; an exception
raised in any chunk propagates to the caller once every running chunk has finished.

``bind`` tests only ``data.size`` against :data:`.pool.MIN_SIZE` before calling here, so
small arrays pay one comparison per op.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from ..backend import Array, ArrayModule
from . import pool

if TYPE_CHECKING:  # the primitive layer, above this one
    from ..primitive import Primitive

__all__ = ["forward"]

_ndarray = np.ndarray


def forward(prim: Primitive, xp: ArrayModule, arrays: tuple[Array, ...], params: dict[str, Any]) -> Array:
    """``prim.impl(xp, *arrays, **params)``, computed over contiguous ranges on the thread
    pool when the conditions in the module docstring hold.

    Args:
        prim: the :class:`~gradtape.extend.Primitive` (elementwise ones are threaded).
        xp: the backend array module (only ``numpy`` is threaded).
        arrays: the operand arrays, as ``impl`` takes them.
        params: the keyword parameters of ``impl``.

    Returns:
        The same array the plain call returns (values, dtype, shape).

    Example:
        >>> import numpy as np
        >>> from gradtape.extend import REGISTRY
        >>> y = forward(REGISTRY["sin"], np, (np.zeros(4, np.float32),), {})
        >>> y.dtype, y.shape
        (dtype('float32'), (4,))
    """
    impl = prim.impl
    if xp is not np:
        return impl(xp, *arrays, **params)
    if prim.derivatives is None or pool.THREADS < 2:
        return impl(xp, *arrays, **params)
    shape: tuple[int, ...] | None = None
    for a in arrays:
        if type(a) is not _ndarray:  # subclasses, Python scalars: plain call
            return impl(xp, *arrays, **params)
        if a.size != 1:
            if shape is None:
                shape = a.shape
            elif a.shape != shape:
                return impl(xp, *arrays, **params)
            if not a.flags.c_contiguous:
                return impl(xp, *arrays, **params)
    if shape is None:  # every operand is a single element
        return impl(xp, *arrays, **params)
    n = math.prod(shape)
    if n < (pool.CHEAP_MIN_SIZE if prim.cheap else pool.MIN_SIZE) or n <= pool.CHUNK or pool.in_worker():
        return impl(xp, *arrays, **params)
    ndim = len(shape)
    for a in arrays:  # a (1, 1, 1) scalar next to a (n,) array would broadcast the output
        if a.ndim > ndim:
            return impl(xp, *arrays, **params)
    return _run(prim, arrays, params, shape, n)


def _run(prim: Primitive, arrays: tuple[np.ndarray, ...], params: dict[str, Any], shape: tuple[int, ...],
         n: int) -> np.ndarray:
    impl = prim.impl
    # (flat view, sliced) per operand: full-shape operands are sliced, scalars passed as 0-d
    ops = [(a.reshape(-1), True) if a.size != 1 else (a.reshape(()), False) for a in arrays]
    with np.errstate(all="ignore"):  # the probe must not repeat warnings the full run gives
        probe = impl(np, *[v[:1] if sliced else v for v, sliced in ops], **params)
    out = np.empty(shape, probe.dtype)
    out_flat = out.reshape(-1)
    chunk = pool.CHUNK
    # Chunks are handed out dynamically: ``next`` on a range iterator is one C call, atomic
    # under the GIL. A worker that wakes late (a busy core) takes fewer chunks, or none.
    starts = iter(range(0, n, chunk))

    form = prim.out_form
    # an operand of another dtype than the output (an integer input of a float function, which
    # impl casts to float32 first) takes impl on each chunk: the ufunc into ``out`` would
    # compute in NumPy's dtype for it (float64) and round, not bit-identical to impl
    if form is not None and not params and all(a.dtype == probe.dtype for a in arrays):

        def work() -> None:
            for a in starts:
                b = a + chunk
                form(*[v[a:b] if sliced else v for v, sliced in ops], out_flat[a:b])
    else:

        def work() -> None:
            for a in starts:
                b = a + chunk
                out_flat[a:b] = impl(np, *[v[a:b] if sliced else v for v, sliced in ops],
                                     **params)

    # np.errstate lives in a context variable: workers run in a copy of the caller's context
    futures = [pool.submit(work, in_context=True) for _ in range(min(pool.THREADS, -(-n // chunk)) - 1)]
    error: BaseException | None = None
    try:
        work()
    except BaseException as e:  # noqa: BLE001 - re-raised below, after the workers finish
        error = e
    for f in futures:
        if f.cancel():  # never started: every chunk is done, no need to wait for a wake-up
            continue
        exc = f.exception()  # waits for the chunk it holds
        if exc is not None and error is None:
            error = exc
    if error is not None:
        raise error
    return out
