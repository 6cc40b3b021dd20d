"""The device-strict backend: a CPU stand-in for CuPy that fails where CuPy fails and NumPy
forgives (test support; select it with ``GRADTAPE_TEST_BACKEND=strict`` in the test suite,
or :func:`install` and ``gt.use_backend("strict")``).

Its arrays (:class:`StrictArray`) hold a NumPy array but behave as ``cupy.ndarray`` does:

* no implicit conversion to NumPy: ``np.asarray(a)`` and ``np.array(a)`` raise ``TypeError``;
  a NumPy function or ufunc called on one runs the same-named function of this namespace when
  CuPy has it (CuPy's ``__array_function__`` / ``__array_ufunc__``) and raises otherwise;
  operands that are host arrays (``numpy.ndarray``, lists) are refused by every function but
  the creation functions (``asarray``, ``array``...), as CuPy refuses them;
* host synchronisations are counted (and can be forbidden): ``.item()``, ``.tolist()``,
  ``.get()``, ``bool()``, ``float()``, ``int()``, ``repr()``, ``asnumpy`` (``Tensor.numpy()``),
  pickling, and the operations whose output shape depends on the values (boolean-mask
  indexing, ``nonzero``, ``unique``...); see :func:`count_syncs` and :func:`forbid_syncs`;
* no ``__index__``, no ``flags.writeable``, reductions return 0-d arrays, never NumPy scalars;
* ``ElementwiseKernel`` compiles the CUDA text with the host compiler
  (:mod:`gradtape._src.codegen.hostcuda`), so gradtape's fused backward and optimizer kernels run
  as written for the GPU.

The namespace (``XP``) offers only names CuPy's top-level namespace has (the list below was read
from CuPy's ``cupy/__init__.py``, ``cupy/linalg`` and ``cupy/lib/stride_tricks``), and only
those NumPy also has, plus ``asnumpy``, ``get_array_module``, ``ElementwiseKernel``,
``from_dlpack`` and ``random.default_rng``.

Example:
    >>> import gradtape as gt
    >>> from gradtape._src import strict
    >>> _ = strict.install()
    >>> with gt.use_backend("strict"), strict.count_syncs() as log:
    ...     x = gt.tensor([1.0, 2.0])
    ...     total = float(gt.sum(x * x))
    >>> total, log.kinds()             # float() reads the value back: one synchronisation
    (5.0, {'item': 1})
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import types
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from .backend import SCATTER_ADD_DTYPES, Backend, erf_for, erfc_for, register_backend
from .codegen.hostcuda import HostKernel

__all__ = ["StrictArray", "XP", "STRICT", "install", "count_syncs", "forbid_syncs", "SyncLog",
           "HostSyncError", "CUPY_NAMES", "TOTALS", "capture"]

# CuPy's top-level names (cupy/__init__.py of CuPy 15.0.0a1, with the module-level
# ``__getattr__`` aliases), the ones NumPy shares are offered here.
CUPY_NAMES = frozenset("""
abs absolute acos acosh add all allclose amax amin angle any append apply_along_axis
apply_over_axes arange arccos arccosh arcsin arcsinh arctan arctan2 arctanh argmax argmin
argpartition argsort argwhere around array array2string array_equal array_equiv array_repr
array_split array_str asanyarray asarray asarray_chkfinite ascontiguousarray asfortranarray
asin asinh astype atan atan2 atanh atleast_1d atleast_2d atleast_3d average bartlett
base_repr binary_repr bincount bitwise_and bitwise_count bitwise_invert bitwise_left_shift
bitwise_not bitwise_or bitwise_right_shift bitwise_xor blackman bool bool_ broadcast
broadcast_arrays broadcast_shapes broadcast_to byte c_ can_cast cbrt cdouble ceil choose
clip column_stack common_type complex128 complex64 complexfloating compress concat
concatenate conj conjugate convolve copy copysign copyto corrcoef correlate cos cosh
count_nonzero cov cross csingle cumprod cumsum cumulative_prod cumulative_sum deg2rad degrees
delete diag diag_indices diag_indices_from diagflat diagonal diff digitize divide divmod dot
double dsplit dstack dtype e ediff1d einsum empty empty_like equal euler_gamma exp exp2
expand_dims expm1 extract eye fabs fill_diagonal finfo fix flatnonzero flip fliplr flipud
float16 float32 float64 float_power floating floor floor_divide fmax fmin fmod
format_float_positional format_float_scientific frexp frombuffer fromfile fromfunction
fromiter fromstring full full_like gcd generic genfromtxt get_printoptions gradient greater greater_equal half
hamming hanning heaviside histogram histogram2d histogramdd hsplit hstack hypot i0 identity
iinfo imag in1d index_exp indices inexact inf inner int16 int32 int64 int8 int_ intc integer
interp intersect1d intp invert isclose iscomplex iscomplexobj isdtype isfinite isfortran isin
isinf isnan isneginf isposinf isreal isrealobj isscalar issubdtype iterable ix_ kaiser kron
lcm ldexp left_shift less less_equal lexsort linspace load loadtxt log log10 log1p log2
logaddexp logaddexp2 logical_and logical_not logical_or logical_xor logspace long longlong
mask_indices matmul matrix_transpose max maximum may_share_memory mean median meshgrid mgrid
min min_scalar_type minimum mod modf moveaxis multiply nan nan_to_num nanargmax nanargmin nancumprod
nancumsum nanmax nanmean nanmedian nanmin nanprod nanstd nansum nanvar ndim ndindex negative
newaxis nextafter nonzero not_equal number ogrid ones ones_like outer packbits pad partition
percentile permute_dims pi piecewise place poly poly1d polyadd polyfit polymul polysub polyval
positive pow power printoptions prod promote_types ptp put put_along_axis putmask quantile r_
rad2deg radians ravel ravel_multi_index real real_if_close reciprocal remainder repeat require
reshape resize result_type right_shift rint roll rollaxis roots rot90 round row_stack s_ save
savetxt savez savez_compressed searchsorted select set_printoptions setdiff1d setxor1d shape
shares_memory short sign signbit signedinteger sin sinc single sinh size sort sort_complex split
sqrt square squeeze stack std subtract sum swapaxes take take_along_axis tan tanh tensordot tile
trace transpose trapezoid tri tril tril_indices tril_indices_from trim_zeros triu triu_indices
triu_indices_from true_divide trunc typename ubyte ufunc uint uint16 uint32 uint64 uint8 uintc
uintp ulong ulonglong union1d unique unique_all unique_counts unique_inverse unique_values
unpackbits unravel_index unsignedinteger unwrap ushort vander var vdot vectorize vsplit vstack
where zeros zeros_like
""".split())
# cupy/linalg/__init__.py
CUPY_LINALG = frozenset("""cholesky cond det eig eigh eigvals eigvalsh inv lstsq matmul
matrix_power matrix_rank matrix_transpose norm pinv qr slogdet solve svd tensorinv
tensorsolve""".split())
# cupy/lib/stride_tricks.py
CUPY_STRIDE_TRICKS = frozenset(("as_strided", "sliding_window_view"))

# functions whose output shape depends on the values: CuPy reads a count back from the device
_DATA_DEPENDENT = frozenset(("nonzero", "argwhere", "flatnonzero", "unique", "unique_all",
                             "unique_counts", "unique_inverse", "unique_values", "compress",
                             "extract", "intersect1d", "setdiff1d", "setxor1d", "union1d",
                             "trim_zeros", "histogram", "histogram2d", "histogramdd"))
# creation functions: they take host data (a copy to the device, no synchronisation)
_CREATION = frozenset(("array", "asarray", "asanyarray", "ascontiguousarray", "asfortranarray",
                       "asarray_chkfinite", "require", "frombuffer", "fromfile", "fromfunction",
                       "fromiter", "fromstring", "load", "loadtxt", "genfromtxt"))
# CuPy returns a 0-d array where NumPy returns a Python bool
_BOOL_ARRAY_RESULT = frozenset(("allclose", "array_equal", "array_equiv"))


# --------------------------------------------------------------------------- synchronisations
class HostSyncError(RuntimeError):
    """A host synchronisation happened inside :func:`forbid_syncs`."""


class SyncLog:
    """The host synchronisations seen while a :func:`count_syncs` block was active.

    Attributes:
        events: ``(kind, where)`` per synchronisation, in order; ``where`` names the line that
            caused it (gradtape's, then the caller's outside gradtape).
    """

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    @property
    def count(self) -> int:
        """How many synchronisations."""
        return len(self.events)

    def kinds(self) -> dict[str, int]:
        """Synchronisations per kind."""
        return dict(Counter(k for k, _ in self.events))

    def __repr__(self) -> str:
        lines = "\n".join(f"  {k}: {w}" for k, w in self.events)
        return f"SyncLog({self.count} synchronisations)" + (f"\n{lines}" if lines else "")


#: Every synchronisation of the process, per kind.
TOTALS: Counter[str] = Counter()
_state = threading.local()
_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep  # gradtape/
_INTERNALS = (os.path.join(_PACKAGE, "_src") + os.sep, os.path.join(_PACKAGE, "ops") + os.sep)


def _logs() -> list[SyncLog]:
    logs = getattr(_state, "logs", None)
    if logs is None:
        logs = _state.logs = []
    return logs


def _where() -> str:
    """The lines that caused a synchronisation: the first frame outside this module, the first
    outside gradtape's internals (``_src``, ``ops``) and the first outside the package."""
    frames = []
    f: types.FrameType | None = sys._getframe(2)
    while f is not None:
        name = f.f_code.co_filename
        if name != __file__:
            frames.append((f"{_short(name)}:{f.f_lineno} ({f.f_code.co_name})",
                           name.startswith(_INTERNALS), not name.startswith(_PACKAGE)))
        f = f.f_back
    if not frames:
        return "?"
    picks = [frames[0][0], next((h for h, internal, _ in frames if not internal), None),
             next((h for h, _, outside in frames if outside), None)]
    return " <- ".join(dict.fromkeys(p for p in picks if p is not None))


def _short(path: str) -> str:
    p = path.replace("\\", "/")
    for marker in ("/gradtape/", "/tests/", "/benchmarks/"):
        i = p.rfind(marker)
        if i >= 0:
            return p[i + 1:]
    return p.rsplit("/", 1)[-1]


def _sync(kind: str) -> None:
    TOTALS[kind] += 1
    logs = _logs()
    forbid = getattr(_state, "forbid", 0)
    if logs or forbid:
        where = _where()
        for log in logs:
            log.events.append((kind, where))
        if forbid:
            raise HostSyncError(f"host synchronisation ({kind}) at {where}: the device would wait "
                                "here, inside a block that forbids it")


@contextlib.contextmanager
def count_syncs() -> Iterator[SyncLog]:
    """Record the host synchronisations of the block (this thread) in a :class:`SyncLog`.

    Example:
        >>> with count_syncs() as log:
        ...     _ = bool(XP.ones(1))
        >>> log.kinds()
        {'bool': 1}
    """
    log = SyncLog()
    logs = _logs()
    logs.append(log)
    try:
        yield log
    finally:
        logs.remove(log)


@contextlib.contextmanager
def forbid_syncs() -> Iterator[None]:
    """Raise :class:`HostSyncError` at the first host synchronisation of the block."""
    _state.forbid = getattr(_state, "forbid", 0) + 1
    try:
        yield
    finally:
        _state.forbid -= 1


# --------------------------------------------------------------------------- graph capture
def _capturing() -> list[tuple] | None:
    """The log of the capture this thread is recording (:func:`capture`), else None."""
    return _state.__dict__.get("capture")


def _log(call: Callable, args: tuple, kwargs: dict, result: Any) -> None:
    """While :func:`capture` records (this thread): ``call(*args, **kwargs)`` (NumPy arrays
    and values) is one launch of the graph. At each launch it runs again on the same arrays
    (their contents then, as a kernel reads its pointers) with the same Python values (as a
    captured kernel keeps its arguments), and each array of ``result`` (StrictArrays) that
    is new memory, not a view of an argument, receives the new values."""
    log = _capturing()
    if log is None:
        return
    items = result if isinstance(result, tuple) else (result,)
    bufs = [a for a in (*args, *kwargs.values()) if isinstance(a, np.ndarray)]
    targets = [(i, r._a) for i, r in enumerate(items) if isinstance(r, StrictArray)
               and r._a.flags.writeable  # (NumPy's read-only fresh results: imag of a real
               # array, a constant)
               and not any(np.may_share_memory(r._a, b) for b in bufs)]
    log.append((call, args, kwargs, targets))


#: CuPy runs these with Thrust's synchronous policy (``thrust::cuda::par``), which waits for the
#: stream at the end: not capturable.
_SYNCHRONOUS = frozenset(("sort", "argsort", "lexsort", "sort_complex", "msort"))


#: CuPy runs these through cuBLAS (cuSOLVER for linalg), and its cuBLAS wrapper refuses any
#: call while the stream is captured (NotImplementedError), up to CuPy 14 at least.
_CUBLAS = frozenset(("matmul", "dot", "vdot", "inner", "tensordot", "einsum"))


def _refuse_in_capture(name: str) -> None:
    if _capturing() is None:
        return
    if name in _SYNCHRONOUS:
        raise RuntimeError(f"{name} while a CUDA graph is captured: CuPy sorts with Thrust, "
                           "which synchronises the stream (device-strict backend)")
    if name in _CUBLAS or name.startswith("linalg."):
        raise NotImplementedError(f"calling cuBLAS API during stream capture is currently "
                                  f"unsupported ({name}; CuPy's refusal, device-strict backend)")


def capture(fn: Callable[..., Any], args: list[Any]) -> tuple[Callable[[], None], Any]:
    """The device-strict stand-in for CuPy's stream capture (``Stream.begin_capture`` /
    ``end_capture`` / ``Graph.launch``): run ``fn(*args)`` once while recording every
    operation on strict arrays; returns ``(launch, result)``, where ``launch()`` runs the
    recorded operations again, in order, on the same arrays. As in a captured CUDA graph: a
    host synchronisation inside raises (:class:`HostSyncError`), and so does a copy of host
    data to the device; Python values the operations took keep their values (a number read
    from a counter while capturing stays that number), random draws keep their numbers (the
    generator's state is host state), and a result's buffer is the same at every launch. A
    sort raises too (CuPy's Thrust sorts synchronise the stream).
    (Unlike CUDA, the operations also run while capturing; the arguments' contents are
    restored afterwards, so a write into them is not made twice, and
    :class:`gradtape.function` launches every captured graph before reading it.)

    Example:
        >>> x = XP.ones(2)
        >>> launch, y = capture(lambda a: a * 2.0, [x])
        >>> x[...] = 5.0
        >>> launch(); float(y.sum())
        20.0
    """
    if _capturing() is not None:
        raise RuntimeError("strict.capture: this thread is capturing already")
    log: list[tuple] = []
    # CUDA runs nothing while capturing: what the recording run writes into the arguments is
    # undone, so the first launch starts from the same contents as a real graph's
    held = [a._a for a in args if isinstance(a, StrictArray)]
    saved = [a.copy() for a in held]
    _state.capture = log
    try:
        with forbid_syncs():
            result = fn(*args)
    finally:
        _state.capture = None
        for a, before in zip(held, saved):
            if a.flags.writeable:  # (a broadcast view is read-only: nothing wrote it)
                a[...] = before

    def launch() -> None:
        for call, a, kw, targets in log:
            new = call(*a, **kw)
            if targets:
                items = new if isinstance(new, tuple) else (new,)
                for i, buf in targets:
                    buf[...] = items[i]
    return launch, result


# --------------------------------------------------------------------------- wrapping
def _refuse(what: str, value: object) -> TypeError:
    return TypeError(f"{what}: Unsupported type {type(value)} (a host array on the device-strict "
                     "backend: CuPy refuses it; move it with xp.asarray first)")


def _unwrap(x: Any, what: str) -> Any:
    """Arguments for NumPy: StrictArrays by their arrays; host arrays refused."""
    t = type(x)
    if t is StrictArray:
        return x._a
    if t is tuple or t is list:
        return t(_unwrap(v, what) for v in x)
    if t is dict:
        return {k: _unwrap(v, what) for k, v in x.items()}
    if isinstance(x, np.ndarray):
        raise _refuse(what, x)
    return x


def _unwrap_host(x: Any) -> Any:
    """Arguments of a creation function: host data allowed (copied to the device)."""
    t = type(x)
    if t is StrictArray:
        return x._a
    if t is tuple or t is list:
        return t(_unwrap_host(v) for v in x)
    if t is dict:
        return {k: _unwrap_host(v) for k, v in x.items()}
    return x


def _wrap(x: Any) -> Any:
    """Results: arrays and NumPy scalars become StrictArrays (CuPy returns 0-d arrays)."""
    if isinstance(x, np.ndarray):
        return StrictArray(x)
    if isinstance(x, np.generic):
        return StrictArray(np.asarray(x))
    t = type(x)
    if t is tuple or t is list:
        return t(_wrap(v) for v in x)
    if isinstance(x, tuple):  # NumPy's named results (slogdet, svd): a plain tuple, as CuPy's
        return tuple(_wrap(v) for v in x)
    return x


def _has_bool_array(key: Any) -> bool:
    if isinstance(key, tuple):
        return any(_has_bool_array(k) for k in key)
    if isinstance(key, StrictArray):
        return key._a.dtype == np.bool_ and key._a.ndim > 0
    if isinstance(key, np.ndarray):
        return key.dtype == np.bool_ and key.ndim > 0
    return isinstance(key, list) and len(key) > 0 and all(isinstance(v, (bool, np.bool_)) for v in key)


def _index(key: Any) -> Any:
    """An index for NumPy: StrictArrays unwrapped; host integer arrays and lists allowed (CuPy
    copies them to the device)."""
    t = type(key)
    if t is StrictArray:
        return key._a
    if t is tuple:
        return tuple(_index(k) for k in key)
    return key


def _wrapped(shape: tuple, idx: Any) -> Any:
    """``idx`` with each integer-array item taken modulo its axis's size: CuPy's integer-array
    indexing wraps an out-of-range index around where NumPy raises."""
    items = list(idx) if isinstance(idx, tuple) else [idx]
    if not any(isinstance(it, np.ndarray) and it.dtype.kind in "iu" for it in items):
        return idx
    spans = [0 if it is None or isinstance(it, (bool, np.bool_)) else (
        it.ndim if isinstance(it, np.ndarray) and it.dtype.kind == "b" else 1) for it in items]
    rest = len(shape) - sum(n for it, n in zip(items, spans) if it is not Ellipsis)
    out, axis = [], 0
    for it, n in zip(items, spans):
        if it is Ellipsis:
            axis += max(rest, 0)
        elif isinstance(it, np.ndarray) and it.dtype.kind in "iu" and axis < len(shape) \
                and shape[axis]:
            it = np.mod(it.astype(np.intp), shape[axis])  # (an int8 index of a longer axis)
        out.append(it)
        axis += 0 if it is Ellipsis else n
    return tuple(out) if isinstance(idx, tuple) else out[0]


def _get_wrapped(a: np.ndarray, idx: Any) -> Any:
    return a[_wrapped(a.shape, idx)]


def _set_wrapped(a: np.ndarray, idx: Any, value: Any) -> None:
    a[_wrapped(a.shape, idx)] = value


class _Flags:
    """CuPy's ``flags``: contiguity and ownership only (no ``writeable``)."""

    __slots__ = ("c_contiguous", "f_contiguous", "owndata")

    def __init__(self, a: np.ndarray) -> None:
        self.c_contiguous = bool(a.flags.c_contiguous)
        self.f_contiguous = bool(a.flags.f_contiguous)
        self.owndata = bool(a.flags.owndata)

    def __getitem__(self, name: str) -> bool:
        return {"C_CONTIGUOUS": self.c_contiguous, "F_CONTIGUOUS": self.f_contiguous,
                "OWNDATA": self.owndata}[name]


# ndarray methods CuPy has (cupy/_core/core.pyx), forwarded to NumPy's with wrapping; the ones
# that read values back to the host are defined on the class and count a synchronisation
_METHODS = frozenset("""astype byteswap copy view fill reshape transpose swapaxes flatten ravel
squeeze take put repeat choose sort argsort partition argpartition searchsorted compress
diagonal max argmax min argmin ptp clip round trace sum cumsum mean var std prod cumprod all
any conj conjugate dot""".split())


class StrictArray:
    """A device array of the strict backend: a NumPy array behind CuPy's ``ndarray`` rules (see
    the module docstring). Not a ``numpy.ndarray``; ``np.asarray`` refuses it.

    Example:
        >>> a = XP.arange(3.0)
        >>> (a * 2).sum().shape        # a 0-d array, never a NumPy scalar
        ()
    """

    __slots__ = ("_a", "__weakref__")
    __array_priority__ = 1000.0

    def __init__(self, a: np.ndarray) -> None:
        self._a = a

    # --- attributes ----------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        return self._a.shape

    @shape.setter
    def shape(self, value: tuple[int, ...]) -> None:
        self._a.shape = value

    @property
    def dtype(self) -> np.dtype:
        return self._a.dtype

    @property
    def ndim(self) -> int:
        return self._a.ndim

    @property
    def size(self) -> int:
        return self._a.size

    @property
    def strides(self) -> tuple[int, ...]:
        return self._a.strides

    @property
    def itemsize(self) -> int:
        return self._a.itemsize

    @property
    def nbytes(self) -> int:
        return self._a.nbytes

    @property
    def flags(self) -> _Flags:
        return _Flags(self._a)

    @property
    def base(self) -> StrictArray | None:
        return None if self._a.base is None else StrictArray(self._a.base)

    @property
    def T(self) -> StrictArray:  # noqa: N802 - NumPy's name
        return StrictArray(self._a.T)

    @property
    def mT(self) -> StrictArray:  # noqa: N802 - NumPy's name
        return StrictArray(self._a.mT)

    @property
    def real(self) -> StrictArray:
        return StrictArray(self._a.real)

    @property
    def imag(self) -> StrictArray:
        return StrictArray(self._a.imag)

    @property
    def device(self) -> str:
        return "strict:0"

    def __getattr__(self, name: str) -> Any:
        if name in _METHODS:
            method = getattr(self._a, name)

            def call(*args: Any, **kwargs: Any) -> Any:
                _refuse_in_capture(name)
                out = kwargs.get("out")
                uargs, ukwargs = _unwrap(args, f"ndarray.{name}"), _unwrap(kwargs, f"ndarray.{name}")
                res = method(*uargs, **ukwargs)
                if res is self._a:  # astype(..., copy=False) and the like: the array itself
                    result = self
                elif out is not None and res is out._a:
                    result = out
                else:
                    result = _wrap(res)
                _log(method, uargs, ukwargs, result)
                return result
            return call
        raise AttributeError(f"'{type(self).__name__}' object has no attribute {name!r} (CuPy's "
                             "ndarray has none either, or it reads the device: see strict.py)")

    # --- reads back to the host (synchronisations) ---------------------------------------
    def item(self, *args: Any) -> Any:
        _sync("item")
        return self._a.item(*args)

    def tolist(self) -> Any:
        _sync("tolist")
        return self._a.tolist()

    def tobytes(self, order: Any = "C") -> bytes:
        _sync("tobytes")
        return self._a.tobytes(order)

    def get(self, stream: Any = None, order: Any = "C", out: Any = None) -> np.ndarray:
        _sync("get")
        return np.array(self._a, order=order, copy=True)

    def set(self, arr: np.ndarray) -> None:
        if not isinstance(arr, np.ndarray):
            raise TypeError(f"set: expected a numpy.ndarray, got {type(arr).__name__}")
        if arr.shape != self._a.shape:
            raise ValueError("Shape mismatch")
        self._a[...] = arr

    def nonzero(self) -> tuple[StrictArray, ...]:
        _sync("data-dependent shape: nonzero")
        return _wrap(self._a.nonzero())

    def __bool__(self) -> bool:
        _sync("bool")
        return bool(self._a)

    def __float__(self) -> float:
        _sync("float")
        return float(self._a)

    def __int__(self) -> int:
        _sync("int")
        return int(self._a)

    def __complex__(self) -> complex:
        _sync("complex")
        return complex(self._a)

    def __repr__(self) -> str:
        _sync("repr")
        return repr(self._a).replace("array(", "strict_array(", 1)

    def __str__(self) -> str:
        _sync("repr")
        return str(self._a)

    def __format__(self, spec: str) -> str:
        _sync("repr")
        return format(self._a, spec)

    def __reduce__(self) -> tuple:
        _sync("pickle")
        return (_from_host, (np.array(self._a, copy=True),))

    def __copy__(self) -> StrictArray:
        return StrictArray(self._a.copy())

    def __deepcopy__(self, memo: dict) -> StrictArray:
        return StrictArray(self._a.copy())

    # --- NumPy interoperation, as CuPy's -------------------------------------------------
    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        raise TypeError("Implicit conversion to a NumPy array is not allowed. Please use `.get()` "
                        "to construct a NumPy array explicitly. (device-strict backend)")

    def __array_ufunc__(self, ufunc: np.ufunc, method: str, *inputs: Any, **kwargs: Any) -> Any:
        f = getattr(XP, ufunc.__name__, None)
        if not isinstance(f, _Ufunc) or method not in ("__call__", "reduce", "accumulate", "outer", "at"):
            return NotImplemented
        if "out" in kwargs:
            out = kwargs["out"]
            if isinstance(out, tuple):
                if len(out) != 1:
                    raise ValueError("The 'out' parameter must have exactly one array value")
                kwargs["out"] = out[0]
        return f(*inputs, **kwargs) if method == "__call__" else getattr(f, method)(*inputs, **kwargs)

    def __array_function__(self, func: Callable, types_: tuple, args: tuple, kwargs: dict) -> Any:
        module: Any = XP
        for part in func.__module__.split(".")[1:]:
            module = getattr(module, part, None)
            if module is None:
                return NotImplemented
        fn = getattr(module, func.__name__, None)
        if fn is None or fn is func:
            return NotImplemented
        for t in types_:
            if not issubclass(t, (StrictArray, np.ndarray)):
                return NotImplemented
        return fn(*args, **kwargs)

    def __dlpack_device__(self) -> tuple[int, int]:
        return (2, 0)  # kDLCUDA, device 0: NumPy refuses to import it, as CuPy's

    def __dlpack__(self, *args: Any, **kwargs: Any) -> Any:
        raise BufferError("device-strict arrays do not export DLPack capsules (device memory)")

    # --- containers -------------------------------------------------------------------------
    def __len__(self) -> int:
        if self._a.ndim == 0:
            raise TypeError("len() of unsized object")
        return len(self._a)

    def __iter__(self) -> Iterator[StrictArray]:
        if self._a.ndim == 0:
            raise TypeError("iteration over a 0-d array")
        return (self[i] for i in range(self._a.shape[0]))

    def __getitem__(self, key: Any) -> StrictArray:
        if _has_bool_array(key):
            _sync("data-dependent shape: boolean mask indexing")
        idx = _index(key)
        result = _wrap(_get_wrapped(self._a, idx))
        _log(_get_wrapped, (self._a, idx), {}, result)  # (a launch wraps that call's index)
        return result

    def __setitem__(self, key: Any, value: Any) -> None:
        if _has_bool_array(key):
            _sync("data-dependent shape: boolean mask assignment")
        if isinstance(value, StrictArray):
            value = value._a
        elif isinstance(value, (np.ndarray, list, tuple)):
            raise TypeError(f"assignment from a host {type(value).__name__} to a device array is "
                            "refused (CuPy gh-2079): move it with xp.asarray first")
        idx = _index(key)
        _set_wrapped(self._a, idx, value)
        _log(_set_wrapped, (self._a, idx, value), {}, None)

    def __divmod__(self, other: Any) -> Any:
        o = _operand(other, "divmod")
        if o is NotImplemented:
            return NotImplemented
        result = _wrap(np.divmod(self._a, o))
        _log(np.divmod, (self._a, o), {}, result)
        return result

    __hash__ = None  # type: ignore[assignment]


def _from_host(a: np.ndarray) -> StrictArray:
    return StrictArray(np.array(a, copy=True))


def _cupy_power(a: Any, b: Any, *args: Any, **kwargs: Any) -> Any:
    """CuPy's ``power`` of integers: a negative integer exponent gives ``1 // a**-b`` (0 but
    for a base of 1 or -1) where NumPy raises."""
    a_, b_ = np.asarray(a), np.asarray(b)
    if a_.dtype.kind in "iu" and b_.dtype.kind == "i" and (b_ < 0).any():
        ok = np.power(a_, np.abs(b_), *args, **kwargs)
        neg = np.broadcast_to(b_ < 0, np.shape(ok))
        inv = np.where(np.abs(ok) == 1, ok, 0).astype(ok.dtype)
        return np.where(neg, inv, ok)
    return np.power(a, b, *args, **kwargs)


def _cupy_floor_divide(a: Any, b: Any, *args: Any, **kwargs: Any) -> Any:
    """CuPy's float floor division, ``floor(a / b)`` (NumPy's goes through ``fmod``: the two
    differ where ``a / b`` rounds onto an integer, ``1.0 // 0.1``); integers as NumPy's."""
    if np.result_type(a, b).kind != "f":
        return np.floor_divide(a, b, *args, **kwargs)
    with np.errstate(all="ignore"):
        return np.floor(np.true_divide(a, b), *args, **kwargs)


def _cupy_remainder(a: Any, b: Any, *args: Any, **kwargs: Any) -> Any:
    """CuPy's float remainder, ``a - floor(a / b) * b``; integers as NumPy's."""
    if np.result_type(a, b).kind != "f":
        return np.remainder(a, b, *args, **kwargs)
    with np.errstate(all="ignore"):
        return np.subtract(a, np.floor(np.true_divide(a, b)) * b, *args, **kwargs)


#: The ufuncs whose CuPy results differ from NumPy's (see the functions).
_CUPY_UFUNCS: dict[str, Callable] = {"power": _cupy_power, "floor_divide": _cupy_floor_divide,
                                     "remainder": _cupy_remainder}


def _binary(name: str, reflected: bool = False) -> Callable[[StrictArray, Any], Any]:
    uf: Callable = _CUPY_UFUNCS.get(name, getattr(np, name))
    what = f"operator ({name})"

    def op(self: StrictArray, other: Any) -> Any:
        _caller_import(1)
        _refuse_in_capture(name)
        o = _operand(other, what)
        if o is NotImplemented:
            return NotImplemented
        args = (o, self._a) if reflected else (self._a, o)
        result = _wrap(uf(*args))
        _log(uf, args, {}, result)
        return result
    return op


def _inplace(name: str) -> Callable[[StrictArray, Any], StrictArray]:
    uf = getattr(np, name)
    what = f"operator ({name}, in place)"

    def op(self: StrictArray, other: Any) -> StrictArray:
        _caller_import(1)
        _refuse_in_capture(name)
        o = _operand(other, what)
        if o is NotImplemented:  # CuPy's in-place operators convert the operand themselves
            # (no reflected retry): another array type is refused, whatever its priority
            raise TypeError(f"Unsupported type {type(other)} (device-strict backend: "
                            f"{what} takes device arrays and scalars, as CuPy's)")
        uf(self._a, o, out=self._a)
        _log(uf, (self._a, o), {"out": self._a}, self)
        return self
    return op


def _caller_import(depth: int) -> None:
    """CuPy's ufuncs and operators are Cython (no frame of their own) and may import a module on
    a call (their kernel cache): CPython's ``PyImport_Import`` then looks ``__import__`` up in
    the builtins of the calling Python frame, ``depth`` frames above this one. Code run with
    builtins that lack it fails there with ``KeyError: '__import__'``, as it does on CuPy."""
    sys._getframe(depth + 1).f_builtins["__import__"]  # noqa: B018 - the lookup is the check


def _operand(x: Any, what: str) -> Any:
    if isinstance(x, StrictArray):
        return x._a
    if isinstance(x, (bool, int, float, complex, np.generic)):
        return x
    if isinstance(x, (np.ndarray, list, tuple)):
        raise _refuse(what, x)
    return NotImplemented


for _name, _uf in (("add", "add"), ("sub", "subtract"), ("mul", "multiply"), ("truediv", "true_divide"),
                   ("floordiv", "floor_divide"), ("mod", "remainder"), ("pow", "power"),
                   ("matmul", "matmul"), ("and", "bitwise_and"), ("or", "bitwise_or"),
                   ("xor", "bitwise_xor"), ("lshift", "left_shift"), ("rshift", "right_shift")):
    setattr(StrictArray, f"__{_name}__", _binary(_uf))
    setattr(StrictArray, f"__r{_name}__", _binary(_uf, reflected=True))
    setattr(StrictArray, f"__i{_name}__", _inplace(_uf))
for _name, _uf in (("lt", "less"), ("le", "less_equal"), ("gt", "greater"), ("ge", "greater_equal"),
                   ("eq", "equal"), ("ne", "not_equal")):
    setattr(StrictArray, f"__{_name}__", _binary(_uf))
def _unary(uf: np.ufunc) -> Callable[[StrictArray], StrictArray]:
    def op(self: StrictArray) -> StrictArray:
        _caller_import(1)
        result = StrictArray(np.asarray(uf(self._a)))
        _log(uf, (self._a,), {}, result)
        return result
    return op


for _name, _uf in (("neg", "negative"), ("pos", "positive"), ("abs", "absolute"), ("invert", "invert")):
    setattr(StrictArray, f"__{_name}__", _unary(getattr(np, _uf)))



# --------------------------------------------------------------------------- the namespace
class _Ufunc:
    """A CuPy ufunc: NumPy's, with host arrays and lists refused and results on the device."""

    __slots__ = ("_uf", "__name__", "nin", "nout", "nargs", "types")

    def __init__(self, uf: np.ufunc) -> None:
        self._uf = uf
        self.__name__ = uf.__name__
        self.nin, self.nout, self.nargs, self.types = uf.nin, uf.nout, uf.nargs, uf.types

    def _run(self, method: Callable, what: str, args: tuple, kwargs: dict) -> Any:
        for a in args:
            if isinstance(a, (np.ndarray, list, tuple)) and not isinstance(a, StrictArray):
                raise _refuse(what, a)
        out = kwargs.get("out")
        uargs, ukwargs = _unwrap(args, what), _unwrap(kwargs, what)
        with np.errstate(all="ignore"):  # (a device's ufuncs raise no floating-point warnings)
            res = method(*uargs, **ukwargs)
        result = out if isinstance(out, StrictArray) and res is out._a else _wrap(res)
        _log(method, uargs, ukwargs, result)
        return result

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        _caller_import(1)
        _refuse_in_capture(self.__name__)
        return self._run(_CUPY_UFUNCS.get(self.__name__, self._uf), self.__name__, args, kwargs)

    def reduce(self, *args: Any, **kwargs: Any) -> Any:
        return self._run(self._uf.reduce, f"{self.__name__}.reduce", args, kwargs)

    def accumulate(self, *args: Any, **kwargs: Any) -> Any:
        return self._run(self._uf.accumulate, f"{self.__name__}.accumulate", args, kwargs)

    def outer(self, *args: Any, **kwargs: Any) -> Any:
        return self._run(self._uf.outer, f"{self.__name__}.outer", args, kwargs)

    def at(self, a: Any, indices: Any, b: Any = None) -> None:
        if not isinstance(a, StrictArray):
            raise _refuse(f"{self.__name__}.at", a)
        if self.__name__ == "add" and a.dtype.name not in SCATTER_ADD_DTYPES:
            raise TypeError(f"cupy.add.at (scatter_add) does not support dtype {a.dtype} "
                            "(device-strict backend, as CuPy)")
        args = (a._a, _index(indices)) if b is None else (a._a, _index(indices),
                                                         _unwrap(b, f"{self.__name__}.at"))
        self._uf.at(*args)
        _log(self._uf.at, args, {}, None)

    def __repr__(self) -> str:
        return f"<strict ufunc '{self.__name__}'>"


def _function(name: str, fn: Callable) -> Callable:
    what = f"xp.{name}"
    if name in _CREATION:
        def create(*args: Any, **kwargs: Any) -> Any:
            if name == "asarray" and args and isinstance(args[0], StrictArray) and len(args) == 1 \
                    and kwargs.get("dtype") in (None, args[0].dtype):
                return args[0]
            if _capturing() is not None and not (args and isinstance(args[0], StrictArray)):
                raise RuntimeError(f"xp.{name} of host data while a CUDA graph is captured: a "
                                   "host-to-device copy cannot be captured (device-strict backend)")
            uargs, ukwargs = _unwrap_host(args), _unwrap_host(kwargs)
            res = fn(*uargs, **ukwargs)
            if isinstance(res, np.ndarray) and any(
                    isinstance(a, np.ndarray) and np.shares_memory(res, a) for a in args):
                res = res.copy()  # host memory never becomes device memory
            result = _wrap(res)
            _log(fn, uargs, ukwargs, result)
            return result
        create.__name__ = name
        return create
    sync = f"data-dependent shape: {name}" if name in _DATA_DEPENDENT else None
    to_bool_array = name in _BOOL_ARRAY_RESULT

    def call(*args: Any, **kwargs: Any) -> Any:
        _refuse_in_capture(name)
        if sync is not None:
            _sync(sync)
        elif name == "where" and len(args) == 1 and not kwargs:
            _sync("data-dependent shape: where(condition)")
        elif name == "bincount" and kwargs.get("minlength") is None and len(args) < 3:
            _sync("data-dependent shape: bincount without minlength")
        out = kwargs.get("out")
        uargs, ukwargs = _unwrap(args, what), _unwrap(kwargs, what)
        res = fn(*uargs, **ukwargs)
        if isinstance(out, StrictArray) and res is out._a:
            result = out
        elif to_bool_array and isinstance(res, bool):
            result = StrictArray(np.asarray(res))
        else:
            result = _wrap(res)
        _log(fn, uargs, ukwargs, result)
        return result
    call.__name__ = name
    call.__wrapped__ = fn  # type: ignore[attr-defined]  # its signature is NumPy's, as CuPy's
    return call


def asnumpy(a: Any, stream: Any = None, order: Any = "C", out: Any = None) -> np.ndarray:
    """Copy a device array to the host (a synchronisation); host data passes through."""
    if isinstance(a, StrictArray):
        _sync("asnumpy")
        res = np.array(a._a, order=order, copy=True)
    else:
        res = np.asarray(a, order=order)
    if out is not None:
        out[...] = res
        return out
    return res


def from_dlpack(x: Any, *args: Any, **kwargs: Any) -> StrictArray:
    """Share a device array (a strict one); host producers are refused, as CuPy refuses CPU
    capsules."""
    if isinstance(x, StrictArray):
        return x
    raise BufferError(f"from_dlpack: {type(x).__name__} lives on the host; the device-strict "
                      "backend shares only its own arrays")


def get_array_module(*args: Any) -> types.ModuleType:
    """``XP`` when an argument is a strict array, else NumPy (CuPy's rule)."""
    return XP if any(isinstance(a, StrictArray) for a in args) else np


class StrictKernel:
    """``cupy.ElementwiseKernel`` on the strict backend: the CUDA text compiled for the host
    (:class:`~gradtape._src.codegen.hostcuda.HostKernel`); device arrays and scalars only."""

    def __init__(self, in_params: str, out_params: str, operation: str, name: str = "kernel",
                 preamble: str = "", **kwargs: Any) -> None:
        self._kernel = HostKernel(in_params, out_params, operation, name, preamble, **kwargs)
        self.name = name
        self.nin = self._kernel.nin  # (as CuPy's kernels: inputs, then outputs, positionally)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        inner: list[Any] = []
        for a in args:
            if isinstance(a, StrictArray):
                inner.append(a._a)
            elif isinstance(a, (bool, int, float, complex, np.generic)):
                inner.append(a)
            else:
                raise TypeError(f"Unsupported type {type(a)}")
        outs = args[self._kernel.nin:]
        if outs and not all(isinstance(o, StrictArray) for o in outs):
            raise TypeError("Output arguments type must be cupy.ndarray")
        res = self._kernel(*inner, **kwargs)
        result = (outs[0] if len(outs) == 1 else tuple(outs)) if outs else _wrap(res)
        _log(self._kernel, tuple(inner), kwargs, result)
        return result


class _Generator:
    """``cupy.random.Generator`` on the strict backend: draws land on the device."""

    def __init__(self, seed: Any = None) -> None:
        self._g = np.random.default_rng(seed)
        self._lock = threading.Lock()  # as CuPy's bit generator: no copy, no pickle

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        method = getattr(self._g, name)
        if not callable(method):
            raise AttributeError(name)

        def draw(*args: Any, **kwargs: Any) -> Any:
            return _wrap(method(*_unwrap(args, f"random.{name}"), **_unwrap(kwargs, f"random.{name}")))
        return draw


def _erf(x: Any, out: Any = None) -> Any:
    return _special(erf_for(np), x, out)


def _erfc(x: Any, out: Any = None) -> Any:
    return _special(erfc_for(np), x, out)


def _special(fn: Callable, x: Any, out: Any) -> Any:
    if not isinstance(x, StrictArray):
        raise _refuse("erf", x)
    target = None if out is None else out._a
    res = _special_into(fn, x._a, target)
    result = out if out is not None else StrictArray(res)
    _log(_special_into, (fn, x._a, target), {}, result)
    return result


def _special_into(fn: Callable, x: np.ndarray, out: np.ndarray | None) -> np.ndarray:
    res = np.asarray(fn(x))
    if out is not None:
        out[...] = res
        return out
    return res


def _cupy_take(a: np.ndarray, indices: Any, axis: Any = None, out: Any = None) -> np.ndarray:
    """CuPy's ``take``: an index out of range wraps around (its kernel takes it modulo the
    axis's length), where NumPy's raises."""
    n = a.size if axis is None else a.shape[axis]
    idx = np.asarray(indices)
    if n and idx.dtype.kind in "iu":
        idx = np.mod(idx.astype(np.intp), n)
    return np.take(a, idx, axis=axis, out=out)


def _cupy_cholesky(a: np.ndarray) -> np.ndarray:
    """A Cholesky factor as a LAPACK-style ``potrf`` leaves it when the matrix is not positive
    definite (CuPy checks the solver's status only under ``cupyx.errstate(linalg='raise')``):
    the columns before the failing pivot factored, that pivot's non-positive value on the
    diagonal, the rest of the lower triangle as it was, no error."""
    out = np.array(a, dtype=np.result_type(a.dtype, np.float32), order="C", copy=True)
    for m in out.reshape((-1,) + a.shape[-2:]):
        n = m.shape[0]
        for j in range(n):
            ajj = m[j, j] - m[j, :j] @ m[j, :j]
            if not ajj > 0:  # (NaN too)
                m[j, j] = ajj
                break
            m[j, j] = np.sqrt(ajj)
            m[j + 1:, j] = (m[j + 1:, j] - m[j + 1:, :j] @ m[j, :j]) / m[j, j]
    return np.tril(out)


#: NumPy functions replaced by CuPy's behaviour where the two differ (see the functions).
_CUPY_BEHAVIOUR: dict[str, Callable] = {"take": _cupy_take, "linalg.cholesky": _cupy_cholesky}


def _namespace() -> types.ModuleType:
    xp = types.ModuleType("gradtape_strict", "CuPy's namespace on the device-strict backend")
    for name in sorted(CUPY_NAMES):
        obj = _CUPY_BEHAVIOUR.get(name, getattr(np, name, None))
        if obj is None:
            continue
        if isinstance(obj, np.ufunc):
            setattr(xp, name, _Ufunc(obj))
        elif isinstance(obj, type) or not callable(obj) or name in ("dtype", "finfo", "iinfo"):
            setattr(xp, name, obj)  # types, dtypes and constants: NumPy's, as CuPy borrows them
        else:
            setattr(xp, name, _function(name, obj))
    xp.ndarray = StrictArray  # type: ignore[attr-defined]
    linalg = types.ModuleType("gradtape_strict.linalg")
    for name in sorted(CUPY_LINALG):
        if hasattr(np.linalg, name):
            setattr(linalg, name, _function(f"linalg.{name}", _CUPY_BEHAVIOUR.get(
                f"linalg.{name}", getattr(np.linalg, name))))
    xp.linalg = linalg  # type: ignore[attr-defined]
    lib = types.ModuleType("gradtape_strict.lib")
    tricks = types.ModuleType("gradtape_strict.lib.stride_tricks")
    for name in sorted(CUPY_STRIDE_TRICKS):
        setattr(tricks, name, _function(f"lib.stride_tricks.{name}",
                                        getattr(np.lib.stride_tricks, name)))
    lib.stride_tricks = tricks  # type: ignore[attr-defined]
    xp.lib = lib  # type: ignore[attr-defined]
    random = types.ModuleType("gradtape_strict.random")
    random.default_rng = _Generator  # type: ignore[attr-defined]
    random.Generator = _Generator  # type: ignore[attr-defined]
    xp.random = random  # type: ignore[attr-defined]
    xp.asnumpy = asnumpy  # type: ignore[attr-defined]
    xp.from_dlpack = from_dlpack  # type: ignore[attr-defined]
    xp.get_array_module = get_array_module  # type: ignore[attr-defined]
    xp.ElementwiseKernel = StrictKernel  # type: ignore[attr-defined]
    return xp


#: The strict namespace (CuPy's names, the strict arrays' functions).
XP = _namespace()
#: The strict :class:`~gradtape._src.backend.Backend` (registered by :func:`install`).
STRICT = Backend("strict", XP, _erf, StrictArray, (np.generic,), capture=capture)


def install() -> Backend:
    """Register the strict backend (``set_backend("strict")``, ``use_backend("strict")``);
    idempotent. Returns it."""
    register_backend(STRICT, erfc=_erfc)
    return STRICT
