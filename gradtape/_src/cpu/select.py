"""Selects against zero on NumPy computed from the operands' bits, without branches.

``np.where(c, x, 0)`` is what the VJP of a derivative written ``where(c, 1, 0)`` runs
(``gt.where``'s, the inner select of ``maximum``'s and ``minimum``'s, a masked loss's: the
branch not taken must get exactly 0, even where the incoming gradient is NaN or inf, so it
cannot be ``x * c``). NumPy computes it
with a branch per element: on a mask with no long runs (``x > 0`` on data, a random mask) the
branch mispredicts about every other element, and ``np.where`` or a masked ``np.copyto`` takes
4-20x the time of a multiply. Here the mask is widened to an integer of the float's width (all
ones where ``x`` is kept) and ANDed with ``x``'s bits: three branch-free passes, about a
multiply's cost whatever the mask, and bit for bit ``np.where``'s result (NaN payloads and
``-0.0`` kept where selected, ``+0.0`` elsewhere).

A select between two float values (``leaky_relu``'s ``where(x > 0, x, x * slope)``, the VJP of
a derivative ``where(c, 1, slope)``) takes the same route with a second operand: the result's
bits are ``b ^ ((a ^ b) * c)``, three branch-free passes where ``np.where`` took 11x a
multiply's time on a 200704-element mask from data (2-vCPU test VM).

Below :data:`MIN_SIZE` elements the fixed cost of three ufunc calls is more than the branches
cost, so NumPy's select runs there, after one size test (a few tenths of a microsecond).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["MIN_SIZE", "ROW_MIN", "host_relu", "select_into", "select2_into", "where"]

#: Elements from which the bit route runs: below it NumPy's select (one or two calls) is as
#: fast on any mask, above it the bit route's three calls win on masks without long runs.
MIN_SIZE = 1 << 12

_INT_OF_WIDTH: dict[int, np.dtype] = {2: np.dtype(np.int16), 4: np.dtype(np.int32), 8: np.dtype(np.int64)}
_BOOL = np.dtype(np.bool_)


def _is_zero(v: Any, dtype: np.dtype | None) -> bool:
    """Whether ``v`` is a plus zero that ``np.where`` would give ``dtype`` to: a Python 0 or
    0.0 (weak), or a host 0-d array of ``dtype`` holding +0.0."""
    t = type(v)
    if t is int:
        return v == 0
    if t is float:
        return v == 0.0 and math.copysign(1.0, v) > 0
    if t is np.ndarray and v.ndim == 0 and dtype is not None and v.dtype == dtype \
            and dtype.kind == "f" and dtype.itemsize in _INT_OF_WIDTH:
        return bool(v.view(_INT_OF_WIDTH[dtype.itemsize]) == 0)
    return False


def _bit_route(c: Any, x: Any) -> np.dtype | None:
    """The integer dtype for the bit route of a select between ``x`` and a zero under mask
    ``c``, or None where NumPy's select runs: a non-bool mask, a non-float ``x``, or arrays a
    ``gt.function`` trace is recording (its program cannot follow the integer views of the
    buffers it allocates, and would run the step eagerly)."""
    dt = getattr(x, "dtype", None)
    if dt is None or dt.kind != "f" or dt.itemsize not in _INT_OF_WIDTH or not dt.isnative \
            or getattr(c, "dtype", None) != _BOOL or getattr(x, "_gt_traced", False) \
            or getattr(c, "_gt_traced", False) or not _c_ordered(c, x):
        return None
    return _INT_OF_WIDTH[dt.itemsize]


def _c_ordered(*arrays: Any) -> bool:
    """Whether every operand of two or more axes is C-contiguous: then ``np.where`` gives a
    C-ordered result, as the bit routes do (a result in another layout would be summed in
    another order later, so the last bits of a sum would change)."""
    return all(getattr(a, "ndim", 0) < 2 or a.flags.c_contiguous for a in arrays)


def where(c: Any, a: Any, b: Any) -> Any:
    """``np.where(c, a, b)`` with the same result bit for bit (values, dtype, layout); computed
    from bits when ``c`` is a bool array, the result has at least :data:`MIN_SIZE` elements,
    every operand of two or more axes is C-contiguous, and either one branch is a plus zero (a
    Python ``0``/``0.0`` or a 0-d array of the other's dtype) and the other a float array, or
    both branches are float arrays of one native dtype or Python numbers next to one
    (:func:`_where_two`). Shapes broadcast as in ``np.where``. Arrays traced by
    ``gt.function`` take NumPy's select (see :func:`_bit_route`).

    Example:
        >>> import numpy as np
        >>> c = np.arange(8192) % 3 == 0
        >>> g = np.full(8192, np.nan, np.float32)
        >>> r = where(c, g, 0)
        >>> bool(np.isnan(r[0])), float(r[1]), r.dtype
        (True, 0.0, dtype('float32'))
    """
    if (getattr(c, "size", 0) < MIN_SIZE and getattr(a, "size", 0) < MIN_SIZE
            and getattr(b, "size", 0) < MIN_SIZE):  # few elements (a bound on the result's
        return np.where(c, a, b)  # size): NumPy's select, no further checks
    if _is_zero(b, getattr(a, "dtype", None)):
        x, keep = a, True
    elif _is_zero(a, getattr(b, "dtype", None)):
        x, keep = b, False
    else:
        return _where_two(c, a, b)
    it = _bit_route(c, x)
    if it is None:
        return np.where(c, a, b)
    shape = np.broadcast_shapes(c.shape, x.shape)
    if math.prod(shape) < MIN_SIZE:
        return np.where(c, a, b)
    m = np.empty(shape, it)
    _mask_bits(c, x, keep, m, it)
    return m.view(x.dtype)


def _mask_bits(c: Any, x: Any, keep: bool, out: Any, it: np.dtype) -> None:
    """``out`` (integers of ``x``'s width) = ``x``'s bits where ``c`` selects it (``c`` when
    ``keep``, else ``~c``), 0 elsewhere."""
    np.copyto(out, c)
    if keep:
        np.negative(out, out=out)  # True (1) -> all ones
    else:
        np.subtract(out, 1, out=out)  # False (0) -> all ones
    np.bitwise_and(out, x.view(it), out=out)


def select_into(c: Any, x: Any, keep: bool, out: Any) -> None:
    """``out[...] = where(c, x, 0)`` (``keep``) or ``where(c, 0, x)``: the fused programs'
    select against their zero constant, by :func:`where`'s bit route when ``out`` has at least
    :data:`MIN_SIZE` elements (``x`` and ``c`` broadcast to ``out``; ``x`` never is ``out``).
    """
    it = _bit_route(c, x)
    if it is None or out.size < MIN_SIZE or out.dtype != x.dtype or getattr(out, "_gt_traced", False):
        if keep:
            np.copyto(out, 0)
            np.copyto(out, x, where=c)
        else:
            np.copyto(out, x)
            np.copyto(out, 0, where=c)
        return
    _mask_bits(c, x, keep, out.view(it), it)


def _same_float(v: Any, dt: np.dtype) -> Any:
    """``v`` as the host array of float dtype ``dt`` whose bits ``np.where`` selects next to
    an array of ``dt``: such an array as it is, a Python number converted as NumPy converts a
    weak scalar (the same rounding, the same overflow warning); None for anything else
    (another dtype, a device or traced array)."""
    t = type(v)
    if t is np.ndarray:
        return v if v.dtype == dt else None
    if t is float or t is int or t is bool:
        return np.asarray(v, dtype=dt)
    return None


def _where_two(c: Any, a: Any, b: Any) -> Any:
    """``np.where(c, a, b)`` where neither branch is a zero: from bits when ``c`` is a host
    bool array, ``a`` and ``b`` are host float arrays of one native dtype (or Python numbers
    next to one, converted as NumPy converts a weak scalar), the result has at least
    :data:`MIN_SIZE` elements, every operand of two or more axes is C-contiguous and none is
    traced."""
    dt = getattr(a, "dtype", None) if type(a) is np.ndarray else getattr(b, "dtype", None)
    if type(c) is not np.ndarray or c.dtype != _BOOL or dt is None or dt.kind != "f" \
            or dt.itemsize not in _INT_OF_WIDTH or not dt.isnative:
        return np.where(c, a, b)
    av, bv = _same_float(a, dt), _same_float(b, dt)
    if av is None or bv is None or (av.ndim == 0 and bv.ndim == 0) or not _c_ordered(c, av, bv):
        return np.where(c, a, b)
    shape = np.broadcast_shapes(c.shape, av.shape, bv.shape)
    if math.prod(shape) < MIN_SIZE:
        return np.where(c, a, b)
    it = _INT_OF_WIDTH[dt.itemsize]
    out = np.empty(shape, it)
    _select_bits(c, av.view(it), bv.view(it), out)
    return out.view(dt)


def _select_bits(c: Any, a: Any, b: Any, out: Any) -> None:
    """``out`` (integers) = ``a`` where ``c`` else ``b``, from the operands' bits: ``b ^ ((a ^
    b) * c)`` (``c`` a bool array, ``a`` and ``b`` integer views of one width; ``out`` may be
    ``b``'s memory as the same view, or ``a``'s, but overlaps neither otherwise, nor
    ``c``)."""
    if np.may_share_memory(out, b):
        d = np.bitwise_xor(a, b)
        np.multiply(d, c, out=d)
        np.bitwise_xor(out, d, out=out)
        return
    np.bitwise_xor(a, b, out=out)
    np.multiply(out, c, out=out)
    np.bitwise_xor(out, b, out=out)


def select2_into(c: Any, a: Any, b: Any, out: Any) -> None:
    """``out[...] = where(c, a, b)``: the fused programs' select between two computed values,
    by :func:`_where_two`'s bit route when ``out`` has at least :data:`MIN_SIZE` elements (``a``,
    ``b`` and ``c`` broadcast to ``out``; ``out`` may be ``b`` itself or ``a``'s buffer, and
    overlaps ``b`` in no other way, nor ``c``); else NumPy's two copies, the second masked."""
    dt = out.dtype
    if out.size >= MIN_SIZE and type(out) is np.ndarray and type(c) is np.ndarray \
            and c.dtype == _BOOL and dt.kind == "f" and dt.itemsize in _INT_OF_WIDTH and dt.isnative:
        av, bv = _same_float(a, dt), _same_float(b, dt)
        if av is not None and bv is not None and (b is out or not np.may_share_memory(out, b)):
            it = _INT_OF_WIDTH[dt.itemsize]
            _select_bits(c, av.view(it), bv.view(it), out.view(it))
            return
    if b is not out:
        np.copyto(out, b)
    np.copyto(out, a, where=c)


#: Host ``maximum(x, 0)`` of at least this many elements runs against a row of zeros
#: (:func:`host_relu`): NumPy's maximum with a scalar operand takes its loop without SIMD,
#: 2.4x the time of two arrays' (200704 float32 of a conv layer's output: 60 against 25 us on
#: the 2-vCPU test VM); below this size the fixed cost of the rows is the larger part.
ROW_MIN = 1 << 13
_ROW = 1 << 10
_ZERO_ROWS = {np.dtype(t): np.zeros(_ROW, t) for t in (np.float16, np.float32, np.float64)}
for _z in _ZERO_ROWS.values():
    _z.flags.writeable = False


def _rows_agree(dt: np.dtype) -> bool:
    """Whether NumPy's maximum of two arrays gives, on this CPU, the bits its maximum with the
    scalar 0 gives (two loops, vectorized differently per instruction set): checked once per
    dtype on the values whose bits could differ (signed zeros, NaN payloads of both signs,
    infinities, subnormals), else :func:`host_relu` keeps NumPy's scalar call."""
    it = _INT_OF_WIDTH[dt.itemsize]
    info = np.finfo(dt)
    vals = np.array([-0.0, 0.0, np.inf, -np.inf, 1.0, -1.0, float(info.tiny) / 2,
                     -float(info.tiny) / 2], dt)
    nans = np.full(4, np.nan, dt)
    nans.view(it)[1] |= 5  # a payload
    nans.view(it)[2:] |= np.array(-1, it) << (8 * dt.itemsize - 1)  # negative NaNs
    probe = np.resize(np.concatenate([vals, nans]), 2 * _ROW)
    with np.errstate(all="ignore"):
        rows = np.maximum(probe.reshape(2, _ROW), _ZERO_ROWS[dt]).reshape(-1)
        ref = np.maximum(probe, 0)
    return bool(np.array_equal(rows.view(it), ref.view(it)))


_ROWS_OK = {dt: _rows_agree(dt) for dt in _ZERO_ROWS}


def host_relu(x: Any, out: Any = None) -> Any:
    """``np.maximum(x, 0)`` (into ``out`` when given), bit for bit: NaN payloads kept, -0.0 to
    +0.0 as NumPy's scalar loop gives. A C-contiguous host float array of at least
    :data:`ROW_MIN` elements (and a C-contiguous ``out``) is taken as rows of 1024 against a
    shared row of zeros, the tail shorter than a row against the scalar, where this CPU's two
    loops agree on the bits (checked once per dtype at import); anything else is NumPy's call
    as it is.

    Shapes: ``x[...]`` -> the same shape.

    Example:
        >>> import numpy as np
        >>> host_relu(np.array([-1.0, 0.5, np.nan])).tolist()
        [0.0, 0.5, nan]
    """
    if type(x) is np.ndarray and x.size >= ROW_MIN and _ROWS_OK.get(x.dtype, False) \
            and x.flags.c_contiguous and (out is None or type(out) is np.ndarray
                                          and out.flags.c_contiguous and out.dtype == x.dtype
                                          and out.shape == x.shape):
        if out is None:
            out = np.empty_like(x)
        flat, of = x.reshape(-1), out.reshape(-1)
        n = flat.size
        m = n - n % _ROW
        np.maximum(flat[:m].reshape(-1, _ROW), _ZERO_ROWS[x.dtype], out=of[:m].reshape(-1, _ROW))
        if m < n:
            np.maximum(flat[m:], 0, out=of[m:])
        return out
    return np.maximum(x, 0) if out is None else np.maximum(x, 0, out=out)
