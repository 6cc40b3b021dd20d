"""Multi-threaded eager forward of large elementwise primitives (NumPy backend).

The eager forward runs one NumPy call per op, on one core. NumPy ufuncs release the GIL, so a
large elementwise op can be cut into contiguous flat chunks computed at the same time on the
thread pool the fused backward already uses (:func:`gradtape._kernels._thread_pool`, sized by
:data:`gradtape._kernels.THREADS`); on the 2-core machine this nearly halves the forward of
large arrays (the 2^22-element ``fused`` benchmark chain, forward under a tape: ~52-67 ms
to ~37-43 ms in interleaved runs on a loaded host).

:func:`forward` applies when all of these hold, and otherwise makes the plain call
``prim.impl(xp, *arrays, **params)``:

- the backend is NumPy (CuPy arrays never come here: ``xp is numpy`` is the first test);
- the primitive is elementwise (``prim.derivatives is not None``);
- :data:`~gradtape._kernels.THREADS` > 1 and the output has at least :data:`MIN_SIZE`
  elements (:data:`CHEAP_MIN_SIZE` for single cheap ufuncs such as ``add``/``mul``, which are
  bound by memory) and more than one :data:`CHUNK`: below that, waking a thread costs more than
  it saves (measurements next to the constants);
- every operand is an exact ``numpy.ndarray`` that either has the full output shape and is
  C-contiguous (so it has a flat view) or holds one element (a scalar); other broadcasting,
  strided or Fortran-ordered operands take the plain call;
- the calling thread is not itself one of the pool's workers (no nested waits).

The result is bit-identical to the plain call in values, dtype, shape and (C-order) strides:
the output dtype comes from running ``impl`` on one element of each operand (NumPy 2 promotion
depends on dtypes, never on values), the output is allocated once, and each chunk is written
with ``out[a:b] = impl(np, *chunks, **params)``, or, for primitives whose impl is one ufunc
call, by that ufunc with ``out=`` (no temporary). Chunks are handed out dynamically: the
calling thread starts at once and takes whatever chunks a worker has not (a worker that wakes
late, its core busy with another process, costs at most the chunk it holds); a worker that
never started is cancelled rather than waited for. Workers run in a copy of the caller's
:mod:`contextvars` context, so ``np.errstate`` applies in them as in the caller; an exception
raised in any chunk propagates to the caller once every running chunk has finished.

The hooks (``bind`` and the one-tensor unary ops) test only ``data.size`` against
:data:`MIN_SIZE` (imported there as ``_PARALLEL_MIN``) so small arrays pay ~30-50 ns per op.
"""

from __future__ import annotations

import contextvars
import math
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from . import _hostmem, _kernels

__all__ = ["forward", "MIN_SIZE", "CHEAP_MIN_SIZE", "CHUNK"]

# Output elements from which the threaded path runs. Measured on the 2-vCPU machine (numpy 2.4,
# float32, median of 9 timed blocks, other processes partly busy): sin at 2^16 elements 124 us
# plain vs 158 us threaded, at 2^17 230 vs 172 us, at 2^18 482 vs 298 us; tanh at 2^16 174 vs
# 185 us, at 2^17 346 vs 221 us; exp at 2^17 212 vs 157 us. Waking a pool thread costs ~25 us
# here, so the op must take well over that. Between matrix products the picture changes:
# OpenBLAS's threads spin for a while after each GEMM, and a pool thread woken then competes
# with them. In the MLP 784-512-512-10 benchmark (batch 256: tanh on 2^17 elements between
# matmuls) threading that tanh made the whole step ~5% slower (ratio to hand-written NumPy 1.10
# to 1.12 threaded vs 1.05 to 1.08 not, three interleaved runs of 25). So the threshold is 2^18:
# the isolated gain at 2^17 (~60 us) is smaller than that loss, at 2^18 it is ~180 us per op.
MIN_SIZE = 1 << 18
# Single cheap ufuncs (add, mul, ...) are bound by memory and page faults: mul at 2^20 154 us
# plain vs 263 us threaded, at 2^21 802 vs 562 us, at 2^22 2041 vs 1471 us; add and div break
# even at 2^21. They thread from this size.
CHEAP_MIN_SIZE = 1 << 21
_CHEAP = frozenset({"add", "sub", "mul", "div", "neg", "square", "relu", "abs", "sign",
                    "maximum", "minimum"})
# Elements per chunk: operands, result and impl's temporaries of a 2^16-element float32 chunk
# stay in L2 (the fused backward's BLOCK).
CHUNK = 1 << 16
_ndarray = np.ndarray

# Primitives whose impl is one ufunc call: chunks are written in place with the ufunc's ``out``
# argument (no temporary, no copy). ``form(chunks, out)`` makes exactly the call impl makes.
# The registry-wide test in tests/test_parallel_forward.py checks each against impl, bit for bit.
_OUT_FORMS: dict[str, Callable[[list, Any], Any]] = {
    "add": lambda c, o: np.add(c[0], c[1], o),
    "sub": lambda c, o: np.subtract(c[0], c[1], o),
    "mul": lambda c, o: np.multiply(c[0], c[1], o),
    "div": lambda c, o: np.true_divide(c[0], c[1], o),
    "neg": lambda c, o: np.negative(c[0], o),
    "square": lambda c, o: np.multiply(c[0], c[0], o),
    "relu": lambda c, o: np.maximum(c[0], 0, out=o),
    "softplus": lambda c, o: np.logaddexp(0, c[0], o),
    "maximum": lambda c, o: np.maximum(c[0], c[1], out=o),
    "minimum": lambda c, o: np.minimum(c[0], c[1], out=o),
}
for _name in ("exp", "log", "log1p", "expm1", "sqrt", "abs", "sign", "sin", "cos", "tan", "tanh",
              "sinh", "cosh", "arcsin", "arccos", "arctan"):
    _OUT_FORMS[_name] = (lambda uf: lambda c, o: uf(c[0], o))(getattr(np, _name))


def _worker_thread() -> bool:
    return threading.current_thread().name.startswith("gradtape-blocks")


def forward(prim: Any, xp: Any, arrays: tuple, params: dict) -> Any:
    """``prim.impl(xp, *arrays, **params)``, computed over contiguous ranges on the thread
    pool when the conditions in the module docstring hold.

    Args:
        prim: the :class:`~gradtape._primitive.Primitive` (elementwise ones are threaded).
        xp: the backend array module (only ``numpy`` is threaded).
        arrays: the operand arrays, as ``impl`` takes them.
        params: the keyword parameters of ``impl``.

    Returns:
        The same array the plain call returns (values, dtype, shape).

    Example:
        >>> import numpy as np
        >>> from gradtape._primitive import REGISTRY
        >>> y = forward(REGISTRY["sin"], np, (np.zeros(4, np.float32),), {})
        >>> y.dtype, y.shape
        (dtype('float32'), (4,))
    """
    impl = prim.impl
    if xp is not np:
        return impl(xp, *arrays, **params)
    if not _hostmem.applied:
        _hostmem.ensure()  # once: large outputs reuse freed memory instead of faulting pages in
    if prim.derivatives is None or _kernels.THREADS < 2:
        return impl(xp, *arrays, **params)
    shape: tuple | None = None
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
    if (n < (CHEAP_MIN_SIZE if prim.name in _CHEAP else MIN_SIZE) or n <= CHUNK
            or _worker_thread()):
        return impl(xp, *arrays, **params)
    ndim = len(shape)
    for a in arrays:  # a (1, 1, 1) scalar next to a (n,) array would broadcast the output
        if a.ndim > ndim:
            return impl(xp, *arrays, **params)
    return _run(prim, arrays, params, shape, n)


def _run(prim: Any, arrays: tuple, params: dict, shape: tuple, n: int) -> Any:
    impl = prim.impl
    # (flat view, sliced) per operand: full-shape operands are sliced, scalars passed as 0-d
    ops = [(a.reshape(-1), True) if a.size != 1 else (a.reshape(()), False) for a in arrays]
    with np.errstate(all="ignore"):  # the probe must not repeat warnings the full run gives
        probe = impl(np, *[v[:1] if sliced else v for v, sliced in ops], **params)
    out = np.empty(shape, probe.dtype)
    out_flat = out.reshape(-1)
    chunk = CHUNK
    # Chunks are handed out dynamically: ``next`` on a range iterator is one C call, atomic
    # under the GIL. A worker that wakes late (a busy core) takes fewer chunks, or none.
    starts = iter(range(0, n, chunk))

    form = _OUT_FORMS.get(prim.name)
    if form is not None and not params:

        def work() -> None:
            for a in starts:
                b = a + chunk
                form([v[a:b] if sliced else v for v, sliced in ops], out_flat[a:b])
    else:

        def work() -> None:
            for a in starts:
                b = a + chunk
                out_flat[a:b] = impl(np, *[v[a:b] if sliced else v for v, sliced in ops],
                                     **params)

    pool = _kernels._thread_pool()
    # np.errstate lives in a context variable: workers run in a copy of the caller's context
    futures = [pool.submit(contextvars.copy_context().run, work)
               for _ in range(min(_kernels.THREADS, -(-n // chunk)) - 1)]
    error: BaseException | None = None
    try:
        work()
    except BaseException as e:  # noqa: BLE001 - re-raised below, after the workers finish
        error = e
    for f in futures:
        if f.cancel():  # never started: every chunk is done, no need to wait for a wake-up
            continue
        e = f.exception()  # waits for the chunk it holds
        if e is not None and error is None:
            error = e
    if error is not None:
        raise error
    return out
