"""Creating tensors: zeros, ones, full, the ``*_like`` forms, ranges, identity, one-hot.

These are not differentiable primitives: each returns an ordinary constant Tensor (no tape
records it; a tape watching nothing is unaffected). Float results are float32 unless ``dtype``
says otherwise. ``zeros``, ``ones``, ``full``, ``arange``, ``linspace`` and ``eye`` create on the
active backend (:func:`gradtape.use_backend`); the ``*_like`` forms and ``one_hot`` follow their
tensor argument's backend (host data given instead goes to the active backend, as
:func:`gradtape.tensor` does).
"""

from __future__ import annotations

import functools
import math
import operator
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .._src.autodiff.batched import physical_data
from .._src.autodiff.state import opaque, tracing
from .._src.backend import Backend, get_backend
from .._src.tensor import Tensor, TensorLike, _to_array, _wrap, check_dtype
from ._util import as_real
from .elementwise import equal
from .shape import _check_size, astype, reshape

if TYPE_CHECKING:
    from numpy.typing import DTypeLike

__all__ = ["zeros", "ones", "full", "zeros_like", "ones_like", "full_like", "arange", "linspace",
           "eye", "one_hot", "normalize_shape", "float_dtype"]

#: What a shape argument accepts: one size or a sequence of sizes.
ShapeLike = int | Sequence[int]

_FLOAT32 = np.dtype(np.float32)
_INT64 = np.dtype(np.int64)


# --------------------------------------------------------------------------- argument checks
def _size(value: Any, what: str, arg: str) -> int:
    """A non-negative int (a Python or NumPy integer, or anything with ``__index__``)."""
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise TypeError(f"{what}: {arg} must be a non-negative int, got {value!r} "
                        f"({type(value).__name__})")
    n = operator.index(value)
    if n < 0:
        raise ValueError(f"{what}: {arg} must be >= 0, got {n}")
    return n


def normalize_shape(shape: ShapeLike, what: str) -> tuple[int, ...]:
    """``shape`` (an int or a sequence of ints, each >= 0) as a tuple of ints; ``TypeError`` or
    ``ValueError`` naming ``what`` and the bad entry otherwise.

    Example:
        >>> normalize_shape([2, 3], "zeros")
        (2, 3)
    """
    if isinstance(shape, (np.ndarray, Tensor)) and shape.ndim == 1:  # np.array([2, 3]): its ints
        host = shape.numpy() if isinstance(shape, Tensor) else shape
        if host.dtype.kind not in "iu":
            raise TypeError(f"{what}: shape must hold ints, got an array of dtype {host.dtype}")
        shape = [int(n) for n in host.tolist()]
    elif isinstance(shape, (np.ndarray, Tensor)) and shape.ndim > 1:
        raise TypeError(f"{what}: shape must be an int or a sequence of ints, got an array of "
                        f"shape {shape.shape}")
    if isinstance(shape, (str, bytes)) or not (hasattr(shape, "__index__") or isinstance(shape, Sequence)):
        raise TypeError(f"{what}: shape must be an int or a sequence of ints, got {shape!r} "
                        f"({type(shape).__name__})")
    if not isinstance(shape, Sequence):
        return (_size(shape, what, "shape"),)
    out = []
    for i, s in enumerate(shape):
        if isinstance(s, bool) or not hasattr(s, "__index__"):
            raise TypeError(f"{what}: shape must hold ints, got {s!r} ({type(s).__name__}) at "
                            f"position {i} of {tuple(shape)!r}")
        n = operator.index(s)
        if n < 0:
            raise ValueError(f"{what}: shape entries must be >= 0, got {n} at position {i} of "
                             f"{tuple(shape)!r}")
        out.append(n)
    return tuple(out)


def float_dtype(dtype: DTypeLike | None, what: str) -> np.dtype:
    """``dtype`` as float16, float32 or float64 in native byte order (float32 when None);
    ``TypeError`` otherwise (layers, random draws, creation ops take it).

    Example:
        >>> float_dtype(None, "normal")
        dtype('float32')
    """
    if dtype is None:
        return _FLOAT32
    dt = check_dtype(dtype, f"{what}: dtype")
    if dt.type not in (np.float16, np.float32, np.float64):  # (a long double has no kernels)
        raise TypeError(f"{what}: dtype must be a floating-point dtype (float16, float32, "
                        f"float64), got {dt}")
    return np.dtype(dt.type)  # (native byte order)


def _dtype(dtype: DTypeLike | None, what: str, default: np.dtype) -> np.dtype:
    return default if dtype is None else check_dtype(dtype, f"{what}: dtype")


def _fill(value: Any, dtype: np.dtype, what: str) -> Any:
    """``value`` (a scalar) converted to ``dtype`` on the host (a NumPy scalar), with a clear
    error."""
    v = value.item() if isinstance(value, np.generic) else value  # (NumPy casts its own
    # scalars unsafely: np.int64(300) as uint8 gave 44, NaN as int32 gave INT_MIN)
    problem = None
    if dtype.kind in "iu" and isinstance(v, (int, float)) and not isinstance(v, bool):
        if v != v or v in (math.inf, -math.inf):
            problem = "not a finite number"
        elif isinstance(v, float) and not v.is_integer():  # (NumPy and PyTorch truncate it)
            problem = f"not a whole number: it would be truncated to {int(v)}"
        else:
            info = np.iinfo(dtype)
            if not info.min <= int(v) <= info.max:
                problem = f"outside [{info.min}, {info.max}]"
    elif dtype.kind == "f" and isinstance(v, (int, float)) and not isinstance(v, bool):
        try:  # a finite number that rounds to inf (65510.0 rounds to float16's 65504: kept)
            finite = math.isfinite(v)
            with np.errstate(over="ignore"):
                rounds_to_inf = finite and not np.isfinite(np.array(float(v), dtype=dtype))
        except OverflowError:  # a Python int past float64 (10**400)
            rounds_to_inf = True
        if rounds_to_inf:
            problem = f"past the largest {dtype} ({np.finfo(dtype).max})"
    elif dtype.kind == "c" and isinstance(v, (int, float, complex)) and not isinstance(v, bool):
        try:
            parts = (complex(v).real, complex(v).imag)
            with np.errstate(over="ignore"):
                held = np.array(complex(v), dtype=dtype)
            if all(math.isfinite(p) for p in parts) and not np.isfinite(held):
                problem = f"past the largest {dtype}"
        except OverflowError:
            problem = f"past the largest {dtype}"
    if problem is not None:
        shown = repr(value) if len(repr(value)) <= 40 else f"{repr(value)[:20]}...({len(repr(value))} characters)"
        raise ValueError(f"{what}: fill_value {shown} cannot be represented as {dtype} "
                         f"({problem})")
    try:
        return np.array(v, dtype=dtype)[()]
    except (OverflowError, ValueError, TypeError) as exc:
        raise ValueError(f"{what}: fill_value {value!r} cannot be represented as {dtype} "
                         f"({exc})") from None


def _full(xp: Any, shape: tuple[int, ...], value: Any, dt: np.dtype) -> Any:
    """``xp.full``; a fill value computed inside ``gt.function`` (a traced 0-d array) is
    broadcast and copied, so the program makes the array from that call's value (``np.full``
    would fill a buffer of its own that the trace cannot hand on)."""
    if getattr(value, "_gt_traced", False):
        return xp.broadcast_to(value, shape).copy()
    return xp.full(shape, value, dtype=dt)


def _scalar(fill_value: Any, what: str) -> tuple[Any, np.dtype]:
    """A fill value and the dtype it gives by itself (the rules of :func:`gradtape.tensor`:
    a Python float is float32, a complex complex64, an int int64, a bool bool; a NumPy scalar or
    0-d tensor keeps its dtype)."""
    if isinstance(fill_value, Tensor) and fill_value._is_variable and tracing():
        fill_value = fill_value.value()  # type: ignore[attr-defined]  # gt.function: read at each call
    if isinstance(fill_value, (np.ndarray, np.generic, Tensor)):  # np.float64 is a float too
        host = (fill_value._backend.to_host(fill_value.data) if isinstance(fill_value, Tensor)
                else np.asarray(fill_value))
        if host.ndim != 0:
            raise ValueError(f"{what}: fill_value must be a scalar, got an array of shape {host.shape}")
        if host.dtype.kind not in "biufc":
            raise TypeError(f"{what}: fill_value must be numeric, got dtype {host.dtype}")
        return host[()], host.dtype
    if isinstance(fill_value, bool):
        return fill_value, np.dtype(np.bool_)
    if isinstance(fill_value, int):
        return fill_value, _INT64
    if isinstance(fill_value, float):
        return fill_value, _FLOAT32
    if isinstance(fill_value, complex):
        return fill_value, np.dtype(np.complex64)
    raise TypeError(f"{what}: fill_value must be a number (bool, int, float, complex), a NumPy "
                    f"scalar or a 0-d tensor, got {type(fill_value).__name__}")


def _meta(x: Any, what: str) -> tuple[tuple[int, ...], np.dtype, Backend]:
    """Shape, dtype and backend of a ``*_like`` argument (a Tensor's own; other data as
    :func:`gradtape.tensor` would make it). Per-example inside ``gt.vmap``."""
    if isinstance(x, Tensor):
        return tuple(x.shape), x.dtype, x._backend
    try:
        arr, backend = _to_array(x, to_active=True)
    except TypeError as exc:
        raise TypeError(f"{what}: x must be a tensor or array-like, got {type(x).__name__} "
                        f"({exc})") from None
    return tuple(arr.shape), arr.dtype, backend


# --------------------------------------------------------------------------- constants
def zeros(shape: ShapeLike, dtype: DTypeLike | None = None) -> Tensor:
    """A tensor of zeros on the active backend.

    Args:
        shape: an int or a sequence of ints (each >= 0).
        dtype: float32 by default.

    Shapes: ``shape``.

    Example:
        >>> import gradtape as gt
        >>> gt.zeros((2, 3)).numpy()
        array([[0., 0., 0.],
               [0., 0., 0.]], dtype=float32)
    """
    shape = normalize_shape(shape, "zeros")
    dt = _dtype(dtype, "zeros", _FLOAT32)
    _check_size("zeros", list(shape), dt.itemsize)
    backend = get_backend()
    return _wrap(backend.xp.zeros(shape, dtype=dt), backend)


def ones(shape: ShapeLike, dtype: DTypeLike | None = None) -> Tensor:
    """A tensor of ones on the active backend (``dtype`` float32 by default).

    Shapes: ``shape`` (an int or a sequence of ints, each >= 0).

    Example:
        >>> import gradtape as gt
        >>> gt.ones(3, dtype="int32").numpy()
        array([1, 1, 1], dtype=int32)
    """
    shape = normalize_shape(shape, "ones")
    dt = _dtype(dtype, "ones", _FLOAT32)
    _check_size("ones", list(shape), dt.itemsize)
    backend = get_backend()
    return _wrap(backend.xp.ones(shape, dtype=dt), backend)


def full(shape: ShapeLike, fill_value: Any, dtype: DTypeLike | None = None) -> Tensor:
    """A tensor of ``shape`` filled with ``fill_value``, on the active backend.

    Args:
        shape: an int or a sequence of ints (each >= 0).
        fill_value: a scalar: a Python number, a NumPy scalar or a 0-d tensor.
        dtype: by default the fill value's own, as :func:`gradtape.tensor` gives it: a Python
            float is float32, an int int64, a bool bool; a NumPy scalar keeps its dtype.

    Raises:
        ValueError: ``fill_value`` cannot be represented in ``dtype`` (300 as uint8, NaN or
            1.5 as an integer: NumPy and PyTorch would truncate the fraction silently).

    Example:
        >>> import gradtape as gt
        >>> gt.full((2,), 7.5).numpy()
        array([7.5, 7.5], dtype=float32)
    """
    shape = normalize_shape(shape, "full")
    value, own = _scalar(fill_value, "full")
    dt = _dtype(dtype, "full", own)
    _check_size("full", list(shape), dt.itemsize)
    backend = get_backend()
    return _wrap(_full(backend.xp, shape, _fill(value, dt, "full"), dt), backend)


def zeros_like(x: TensorLike, dtype: DTypeLike | None = None) -> Tensor:
    """Zeros with ``x``'s shape, on ``x``'s backend, in ``x``'s dtype unless ``dtype`` is given.

    Inside ``gt.vmap`` the shape is one example's (the result is the same for every example).

    Example:
        >>> import gradtape as gt
        >>> gt.zeros_like(gt.tensor([[1, 2]])).numpy()
        array([[0, 0]])
    """
    shape, own, backend = _meta(x, "zeros_like")
    return _wrap(backend.xp.zeros(shape, dtype=_dtype(dtype, "zeros_like", own)), backend)


def ones_like(x: TensorLike, dtype: DTypeLike | None = None) -> Tensor:
    """Ones with ``x``'s shape, on ``x``'s backend, in ``x``'s dtype unless ``dtype`` is given.

    Example:
        >>> import gradtape as gt
        >>> gt.ones_like(gt.tensor([1.0, 2.0])).numpy()
        array([1., 1.], dtype=float32)
    """
    shape, own, backend = _meta(x, "ones_like")
    return _wrap(backend.xp.ones(shape, dtype=_dtype(dtype, "ones_like", own)), backend)


def full_like(x: TensorLike, fill_value: Any, dtype: DTypeLike | None = None) -> Tensor:
    """``fill_value`` everywhere, with ``x``'s shape, on ``x``'s backend, in ``x``'s dtype unless
    ``dtype`` is given (a fill value that the dtype cannot represent raises ``ValueError``).

    Example:
        >>> import gradtape as gt
        >>> gt.full_like(gt.tensor([1, 2, 3]), 9).numpy()
        array([9, 9, 9])
    """
    shape, own, backend = _meta(x, "full_like")
    value, _ = _scalar(fill_value, "full_like")
    dt = _dtype(dtype, "full_like", own)
    return _wrap(_full(backend.xp, shape, _fill(value, dt, "full_like"), dt), backend)


# --------------------------------------------------------------------------- ranges
def arange(start: float, stop: float | None = None, step: float = 1,
           dtype: DTypeLike | None = None) -> Tensor:
    """Evenly spaced values in ``[start, stop)`` by ``step`` (``arange(n)``: ``0 .. n-1``), as
    ``numpy.arange``, on the active backend.

    Args:
        start, stop, step: finite real numbers; ``step`` is not 0.
        dtype: int64 when ``start``, ``stop`` and ``step`` are all ints (NumPy's and PyTorch's
            rule), float32 when any is a float. Float values are computed in float64 and then
            cast, so a float32 range is the float64 one rounded.

    Shapes: ``[ceil((stop - start) / step)]`` (empty when the range is).

    Example:
        >>> import gradtape as gt
        >>> gt.arange(4).numpy()
        array([0, 1, 2, 3])
        >>> gt.arange(0.0, 1.0, 0.25).numpy()
        array([0.  , 0.25, 0.5 , 0.75], dtype=float32)
    """
    if stop is None:
        start, stop = 0, start
    a = as_real(start, "arange", "start")
    b = as_real(stop, "arange", "stop")
    s = as_real(step, "arange", "step")
    if s == 0:
        raise ValueError("arange: step must not be 0")
    ints = all(isinstance(v, int) for v in (a, b, s))
    dt = _dtype(dtype, "arange", _INT64 if ints else _FLOAT32)
    if ints:
        n = max(0, -int((a - b) // s))  # ceil((b - a) / s), exact for ints of any size
    else:
        q = (b - a) / s  # may overflow to +-inf: a range too long, or an empty one
        # (the count itself in the error for a range too long: a Python int of any size;
        # an infinite quotient, past float64's range, as its largest float)
        n = 0 if not q > 0 else math.ceil(q) if math.isfinite(q) else math.ceil(sys.float_info.max)
    _check_size("arange", [n], max(dt.itemsize, 8))
    if ints and dt.kind in "iu" and n:
        info, last = np.iinfo(dt), a + (n - 1) * s
        if not (info.min <= min(a, last) and max(a, last) <= info.max):
            raise OverflowError(f"arange: the values from {a} to {last} do not fit {dt}")
    backend = get_backend()
    xp = backend.xp
    try:
        if n == 0:
            arr = xp.zeros((0,), dtype=dt)
        elif ints and dt.kind in "iu":
            arr = xp.arange(a, b, s, dtype=dt)
        else:
            arr = xp.arange(a, b, s, dtype=np.float64).astype(dt)
    except OverflowError:
        raise OverflowError(f"arange: start={a}, stop={b}, step={s} do not fit "
                            f"{dt if ints else 'float64'}") from None
    return _wrap(arr, backend)


def linspace(start: float, stop: float, num: int = 50, endpoint: bool = True,
             dtype: DTypeLike | None = None) -> Tensor:
    """``num`` evenly spaced values from ``start`` to ``stop`` (included when ``endpoint``), as
    ``numpy.linspace``, on the active backend.

    Args:
        start, stop: finite real numbers.
        num: how many values (an int >= 0).
        endpoint: include ``stop`` as the last value.
        dtype: float32 by default; computed in float64 and cast (an integer dtype takes the
            floor, bool is ``value != 0``, as NumPy's); values the dtype cannot hold raise
            ``ValueError``.

    Shapes: ``[num]``.

    Example:
        >>> import gradtape as gt
        >>> gt.linspace(0, 1, 5).numpy()
        array([0.  , 0.25, 0.5 , 0.75, 1.  ], dtype=float32)
    """
    a = as_real(start, "linspace", "start")
    b = as_real(stop, "linspace", "stop")
    n = _size(num, "linspace", "num")
    if not isinstance(endpoint, (bool, np.bool_)):
        raise TypeError(f"linspace: endpoint must be a bool, got {endpoint!r}")
    dt = _dtype(dtype, "linspace", _FLOAT32)
    _check_size("linspace", [n], 8)
    backend = get_backend()
    xp = backend.xp
    arr = xp.linspace(a, b, n, endpoint=bool(endpoint), dtype=np.float64)
    if dt.kind in "iu":
        arr = xp.floor(arr)
    # the values must fit the dtype: a cast would wrap integers and give inf for floats (a
    # value that rounds to the largest float, 65519 in float16, fits)
    if dt.kind in "iu" and n and (float(arr.min()) < np.iinfo(dt).min or float(arr.max()) > np.iinfo(dt).max):
        _linspace_range_error(a, b, dt)
    with np.errstate(over="ignore"):
        out = arr.astype(dt)  # (bool: nonzero is True, as NumPy's)
    if dt.kind == "f" and n and not bool(xp.isfinite(out).all()):
        _linspace_range_error(a, b, dt)
    return _wrap(out, backend)


def _linspace_range_error(a: float, b: float, dt: np.dtype) -> None:
    lim = np.iinfo(dt) if dt.kind in "iu" else np.finfo(dt)
    raise ValueError(f"linspace: values from {a} to {b} do not fit {dt} (its range is "
                     f"{lim.min} to {lim.max})")


def eye(n: int, m: int | None = None, k: int = 0, dtype: DTypeLike | None = None) -> Tensor:
    """A 2-D tensor with ones on diagonal ``k`` and zeros elsewhere, on the active backend.

    Args:
        n: number of rows (>= 0).
        m: number of columns (>= 0); ``n`` by default.
        k: the diagonal: 0 the main one, > 0 above it, < 0 below it.
        dtype: float32 by default.

    Shapes: ``[n, m]``.

    Example:
        >>> import gradtape as gt
        >>> gt.eye(2, 3, k=1).numpy()
        array([[0., 1., 0.],
               [0., 0., 1.]], dtype=float32)
    """
    rows = _size(n, "eye", "n")
    cols = rows if m is None else _size(m, "eye", "m")
    if isinstance(k, bool) or not hasattr(k, "__index__"):
        raise TypeError(f"eye: k must be an int, got {k!r} ({type(k).__name__})")
    dt = _dtype(dtype, "eye", _FLOAT32)
    _check_size("eye", [rows, cols], dt.itemsize)
    diag = max(-rows, min(cols, operator.index(k)))  # beyond the matrix: all zeros, as NumPy
    backend = get_backend()
    return _wrap(backend.xp.eye(rows, cols, diag, dtype=dt), backend)


def _check_ids(ids: Any, d: int) -> None:
    if bool(((ids < 0) | (ids >= d)).any()):
        raise ValueError(f"one_hot: indices must be in [0, {d}), got values in "
                         f"[{int(ids.min())}, {int(ids.max())}]")


def one_hot(indices: TensorLike, depth: int, dtype: DTypeLike | None = None) -> Tensor:
    """One-hot encoding: ``out[..., c] = 1`` where ``indices[...] == c``, else 0.

    Args:
        indices: integer tensor or array-like of class ids in ``[0, depth)``.
        depth: number of classes (an int >= 1).
        dtype: float32 by default.

    Shapes: ``indices[...]`` -> ``[..., depth]``.

    Raises:
        TypeError: ``indices`` are not integers.
        ValueError: an id is negative or ``>= depth`` (PyTorch's choice, not TensorFlow's
            all-zero row: a wrong label fails loudly; mask padding ids explicitly with
            ``gt.where``).

    Works inside ``gt.vmap`` (built from primitives); on CuPy the range check reads one bool
    back from the device.

    Example:
        >>> import gradtape as gt
        >>> gt.one_hot([2, 0], 3).numpy()
        array([[0., 0., 1.],
               [1., 0., 0.]], dtype=float32)
    """
    if isinstance(indices, Tensor):
        ind = indices
    else:
        try:
            arr, backend = _to_array(indices, to_active=True)
        except TypeError as exc:
            raise TypeError(f"one_hot: indices must be an integer tensor or array-like, got "
                            f"{type(indices).__name__} ({exc})") from None
        if arr.size == 0 and isinstance(indices, (list, tuple)):  # [] is float32 to gt.tensor
            arr = arr.astype(np.int64)
        ind = _wrap(arr, backend)
    if ind.dtype.kind not in "iu":
        raise TypeError(f"one_hot: indices must have an integer dtype, got {ind.dtype}")
    if isinstance(depth, bool) or not hasattr(depth, "__index__"):
        raise TypeError(f"one_hot: depth must be an int >= 1, got {depth!r} ({type(depth).__name__})")
    d = operator.index(depth)
    if d < 1:
        raise ValueError(f"one_hot: depth must be >= 1, got {d}")
    dt = _dtype(dtype, "one_hot", _FLOAT32)
    if d >= 2 ** 59:
        raise ValueError(f"one_hot: depth {d} is too large to allocate")
    _check_size("one_hot", [*ind.shape, d], dt.itemsize)
    if ind.size:  # every example's ids, also inside gt.vmap; a step of a gt.function program
        opaque(functools.partial(_check_ids, d=d), physical_data(ind), key=("one_hot", d))
    backend = ind._backend
    classes = _wrap(backend.xp.arange(d, dtype=np.int64), backend)
    hit = equal(reshape(ind, tuple(ind.shape) + (1,)), classes)
    return astype(hit, dt)
