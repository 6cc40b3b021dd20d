"""Array backends: NumPy (CPU) and CuPy (CUDA).

This is the only module that imports CuPy. Detection is lazy (first use of the ``cupy`` or
``auto`` backend), cached together with the reason CuPy is unusable, and silent.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import threading
import warnings
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import numpy as np

from .errors import BackendUnavailableError

__all__ = [
    "Array",
    "ArrayModule",
    "Backend",
    "BackendUnavailableError",
    "backend_name",
    "get_backend",
    "set_backend",
    "use_backend",
]

#: A backend array: a ``numpy.ndarray`` (or NumPy scalar) or a ``cupy.ndarray``. CuPy is optional
#: and untyped, so the two cannot be named in one static type; ``Any`` it is, under this name.
Array = Any
#: The array module of a backend: ``numpy`` or ``cupy``.
ArrayModule = ModuleType


# --------------------------------------------------------------------------- erf for NumPy
# NumPy has no erf. W. J. Cody's rational Chebyshev approximations (Math. Comp. 1969) give
# float64 accuracy on three ranges; written here over arrays so gelu stays vectorized.
_ERF_A = (3.16112374387056560e00, 1.13864154151050156e02, 3.77485237685302021e02,
          3.20937758913846947e03, 1.85777706184603153e-1)
_ERF_B = (2.36012909523441209e01, 2.44024637934444173e02, 1.28261652607737228e03,
          2.84423683343917062e03)
_ERF_C = (5.64188496988670089e-1, 8.88314979438837594e00, 6.61191906371416295e01,
          2.98635138197400131e02, 8.81952221241769090e02, 1.71204761263407058e03,
          2.05107837782607147e03, 1.23033935479799725e03, 2.15311535474403846e-8)
_ERF_D = (1.57449261107098347e01, 1.17693950891312499e02, 5.37181101862009858e02,
          1.62138957456669019e03, 3.29079923573345963e03, 4.36261909014324716e03,
          3.43936767414372164e03, 1.23033935480374942e03)
_ERF_P = (3.05326634961232344e-1, 3.60344899949804439e-1, 1.25781726111229246e-1,
          1.60837851487422766e-2, 6.58749161529837803e-4, 1.63153871373020978e-2)
_ERF_Q = (2.56852019228982242e00, 1.87295284992346725e00, 5.27905102951428412e-1,
          6.05183413124413191e-2, 2.33520497626869185e-3)


def _numpy_erf(x: Array, out: Array | None = None) -> Array:
    return _cody(x, out, complement=False)


def _numpy_erfc(x: Array, out: Array | None = None) -> Array:
    return _cody(x, out, complement=True)


def _cody(x: Array, out: Array | None, complement: bool) -> Array:
    """erf, or with ``complement`` erfc = 1 - erf computed without the cancellation (Cody
    evaluates erfc directly for |x| > 0.5, so erfc keeps full relative accuracy in the tail)."""
    x = np.asarray(x)
    dtype = x.dtype if x.dtype.kind == "f" else np.dtype(np.float64)
    v = x.astype(np.float64)
    a = np.abs(v)
    if getattr(v, "_gt_traced", False):
        # inside gt.function: every range's formula on every element, picked by np.where
        # (masks would give value-dependent shapes); each range sees its own elements' values
        # (others a harmless stand-in, no 1/0), so the same values as the masked path below
        small, big = a <= 0.5, a > 4.0
        with np.errstate(all="ignore"):
            res = np.where(small, _erf_small(np.where(small, v, 0.0), complement),
                           np.where(big, _erf_big(v, np.where(big, a, 5.0), complement),
                                    _erf_mid(v, np.where(small | big, 1.0, a), complement)))
        res = np.where(np.isnan(v), np.nan, res)
    else:
        res = np.empty_like(v)
        small = a <= 0.5
        mid = (a > 0.5) & (a <= 4.0)
        big = a > 4.0
        if small.any():
            res[small] = _erf_small(v[small], complement)
        if mid.any():
            res[mid] = _erf_mid(v[mid], a[mid], complement)
        if big.any():
            res[big] = _erf_big(v[big], a[big], complement)
        res[np.isnan(v)] = np.nan
    res = res.astype(dtype, copy=False)
    if out is not None:
        out[...] = res
        return out
    return res if res.ndim else res[()]


def _rational(t: Array, num_c: Any, den_c: Any, n: int) -> tuple[Array, Array]:
    """Cody's rational function of ``t`` as (numerator, denominator): Horner's rule over the
    first ``n`` coefficients, then the last terms (``num_c[n]``, ``den_c[n]``; the numerator
    starts from ``num_c[n + 1] * t``, the denominator from ``t``). The caller divides, in the
    order its formula rounds."""
    num = num_c[n + 1] * t
    den = t
    for i in range(n):
        num = (num + num_c[i]) * t
        den = (den + den_c[i]) * t
    return num + num_c[n], den + den_c[n]


def _times_exp_neg_square(z: Array, r: Array) -> Array:
    """``exp(-z^2) * r`` with z^2 split at a multiple of 1/16 (Cody: no cancellation)."""
    zz = np.trunc(z * 16.0) / 16.0
    return np.exp(-zz * zz) * np.exp(-(z - zz) * (z + zz)) * r


def _erfc_signed(v: Array, erfc: Array, complement: bool) -> Array:
    """From erfc(|x|) to erfc(x) (``complement``) or erf(x)."""
    return np.where(v > 0, erfc, 2.0 - erfc) if complement else np.copysign(1.0 - erfc, v)


def _erf_small(v: Array, complement: bool) -> Array:
    """|x| <= 0.5: erf by a rational function of x^2."""
    num, den = _rational(v * v, _ERF_A, _ERF_B, 3)
    e = v * num / den
    return 1.0 - e if complement else e


def _erf_mid(v: Array, z: Array, complement: bool) -> Array:
    """0.5 < |x| <= 4: erfc(|x|) by a rational function times exp(-x^2) (``z = |x|``)."""
    num, den = _rational(z, _ERF_C, _ERF_D, 7)
    return _erfc_signed(v, _times_exp_neg_square(z, num / den), complement)


def _erf_big(v: Array, z: Array, complement: bool) -> Array:
    """|x| > 4: the asymptotic rational form in 1/x^2 (``z = |x|``)."""
    zi = 1.0 / (z * z)
    num, den = _rational(zi, _ERF_P, _ERF_Q, 4)
    erfc = (1.0 / math.sqrt(math.pi) - zi * num / den) / z
    with np.errstate(invalid="ignore"):  # |x| = inf: inf - inf, then nan_to_num gives 0
        erfc = np.nan_to_num(_times_exp_neg_square(z, erfc))
    return _erfc_signed(v, erfc, complement)


# --------------------------------------------------------------------------- backends
class Backend:
    """One array library: its module ``xp`` and the few functions it spells differently.

    Attributes:
        name: ``"numpy"`` or ``"cupy"``.
        xp: the array module.
        erf: elementwise error function on ``xp`` arrays.
        ndarray: the array type of this backend.
        capture: for a device backend that can record work as a CUDA graph,
            ``capture(fn, arrays) -> (launch, result)``: ``fn(*arrays)``'s device work recorded
            (not run), ``launch()`` runs it on the current stream and fills ``result``'s
            buffers; None where there is none (NumPy).
    """

    __slots__ = ("name", "xp", "erf", "ndarray", "scalar_types", "capture")

    def __init__(self, name: str, xp: ArrayModule, erf: Callable[..., Array], ndarray: type[Any],
                 scalar_types: tuple[type, ...],
                 capture: Callable[..., tuple[Callable[[], None], Any]] | None = None) -> None:
        self.name = name
        self.xp = xp
        self.erf = erf
        self.ndarray = ndarray
        self.scalar_types = scalar_types
        self.capture = capture

    def owns(self, array: object) -> bool:
        """True when ``array`` is an array (or NumPy scalar) of this backend."""
        return isinstance(array, self.ndarray) or isinstance(array, self.scalar_types)

    def to_host(self, array: Array) -> np.ndarray:
        """Return ``array`` as a host ``numpy.ndarray``."""
        if self.name == "numpy":
            return np.asarray(array)
        return self.xp.asnumpy(array)

    def __repr__(self) -> str:
        return f"<gradtape backend {self.name}>"

    def __reduce__(self) -> tuple:
        # by name: a Backend holds its array module, which cannot be pickled; copy.copy and
        # copy.deepcopy give the same (singleton) Backend back
        return (backend_by_name, (self.name,))


NUMPY = Backend("numpy", np, _numpy_erf, np.ndarray, (np.generic,))

_cupy_lock = threading.Lock()
_cupy_backend: Backend | None = None
_cupy_reason: str | None = None


# CUDA runtime status codes that name the reason better than "driver error".
_NO_DRIVER_STATUS = {34: "the CUDA driver library is a stub", 35: "the CUDA driver is missing or "
                     "older than this CuPy's CUDA runtime"}
_NO_DEVICE_STATUS = 100  # cudaErrorNoDevice


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _probe_cupy() -> tuple[Backend | None, str | None]:
    """Import CuPy and check a device is usable; cached. Returns (backend, reason).

    Silent: warnings raised while importing CuPy are kept out of the user's output (and quoted
    in the reason when CuPy turns out unusable).
    """
    global _cupy_backend, _cupy_reason
    if _cupy_backend is not None or _cupy_reason is not None:  # fast path, no lock
        return _cupy_backend, _cupy_reason
    with _cupy_lock:
        if _cupy_backend is not None or _cupy_reason is not None:
            return _cupy_backend, _cupy_reason
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            backend, reason = _probe_cupy_uncached()
        if backend is None:
            if caught:
                reason += f" (CuPy warned: {str(caught[0].message).strip()[:300]})"
            _cupy_reason = reason
        else:
            for w in caught:  # a working CuPy that warns (e.g. two CuPy packages) should say so
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
            _cupy_backend = backend
        return _cupy_backend, _cupy_reason


def _probe_cupy_uncached() -> tuple[Backend | None, str]:
    try:
        import cupy  # the only CuPy import in gradtape
    except ModuleNotFoundError as exc:
        if exc.name == "cupy":
            return None, "CuPy is not installed (pip install 'gradtape[cuda12]' or 'gradtape[cuda13]')"
        return None, f"CuPy is installed but failed to import ({_describe(exc)})"
    except Exception as exc:  # ImportError from a broken install, missing CUDA libraries, ...
        return None, f"CuPy is installed but failed to import ({_describe(exc)})"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        status = getattr(exc, "status", None)
        if status == _NO_DEVICE_STATUS or "NoDevice" in str(exc):
            return None, f"CuPy is installed but no CUDA device is present ({_describe(exc)})"
        why = _NO_DRIVER_STATUS.get(status, "no CUDA driver is usable") if isinstance(status, int) \
            else "no CUDA driver is usable"
        return None, f"CuPy is installed but {why} ({_describe(exc)})"
    if count < 1:
        return None, "CuPy is installed but no CUDA device is present (device count is 0)"
    try:
        cupy.zeros(1).sum().item()
    except Exception as exc:
        return None, f"CUDA driver error: the device failed a first operation ({_describe(exc)})"
    try:
        from cupyx.scipy.special import erf as cupy_erf
    except Exception:  # older CuPy: fall back to an elementwise kernel
        cupy_erf = cupy.ElementwiseKernel("T x", "T y", "y = erf(x)", "gradtape_erf")
    return Backend("cupy", cupy, cupy_erf, cupy.ndarray, (np.generic,), capture=_cupy_capture), ""


def _cupy_capture(fn: Callable[..., Any], arrays: list[Array]) -> tuple[Callable[[], None], Any]:
    """Record ``fn(*arrays)``'s kernels as a CUDA graph with CuPy's stream capture (relaxed
    mode, CuPy's default, so its memory pool may grow while capturing); returns ``(launch,
    result)``. The capture runs on a stream of its own, ordered after the current stream's
    work so far, and every allocation made while capturing comes from a memory pool of the
    graph's own: the graph's buffers (its intermediates, ``result``) are never handed to
    other arrays, so each launch may write them. ``launch()`` runs the graph on the current
    stream, with no host synchronisation; ``launch.usable()`` says whether the current stream
    is the one of its first launch (the caller replays without the graph otherwise). The
    graph, its pool and stream live as long as ``launch``."""
    import cupy

    pool = cupy.cuda.MemoryPool()
    stream = cupy.cuda.Stream(non_blocking=True)
    stream.wait_event(cupy.cuda.get_current_stream().record())  # after the inputs' copies
    with stream, cupy.cuda.using_allocator(pool.malloc):
        stream.begin_capture()
        try:
            result = fn(*arrays)
        finally:
            graph = stream.end_capture()
    held = (pool, stream, graph, arrays)
    origin: list[int | None] = [None]  # the stream of the first launch

    def launch() -> None:
        current = cupy.cuda.get_current_stream()
        if origin[0] is None:
            origin[0] = current.ptr
        held[2].launch(stream=current)

    def usable() -> bool:
        """Whether the graph may launch now: on the stream its buffers were last used on
        (another stream could overwrite them while that one still reads them)."""
        return origin[0] is None or cupy.cuda.get_current_stream().ptr == origin[0]

    launch.usable = usable  # type: ignore[attr-defined]
    return launch, result


def _reset_cupy_probe() -> None:
    """Forget the cached CuPy probe (tests only); the active selection is re-resolved too."""
    global _cupy_backend, _cupy_reason
    with _cupy_lock:
        _cupy_backend = None
        _cupy_reason = None
    _Selection.resolved = None


def cupy_module() -> ArrayModule | None:
    """The ``cupy`` module when the CuPy backend is usable, else ``None`` (no import attempted
    twice)."""
    backend, _ = _probe_cupy()
    return None if backend is None else backend.xp


def cupy_unavailable_reason() -> str | None:
    """Why the CuPy backend cannot be used here, or ``None`` when it can."""
    return _probe_cupy()[1]


def nccl_module() -> tuple[Any | None, str]:
    """``(cupy.cuda.nccl, "")`` when the CuPy backend works and CuPy was built with NCCL, else
    ``(None, why not)``; for ``gt.distributed``'s NCCL transport (CuPy is imported only here)."""
    backend, reason = _probe_cupy()
    if backend is None:
        return None, f"CuPy is unavailable: {reason}"
    try:
        from cupy.cuda import nccl  # CuPy's NCCL binding (optional part of CuPy)
    except ImportError as exc:
        return None, f"cupy.cuda.nccl cannot be imported: {_describe(exc)}"
    if not getattr(nccl, "available", True):
        return None, "this CuPy has no NCCL (install NCCL, e.g. pip install nvidia-nccl-cu12)"
    return nccl, ""


def _resolve(name: str) -> Backend:
    if not isinstance(name, str):
        raise TypeError(f"backend name must be a str ('numpy', 'cupy' or 'auto'), got {type(name).__name__}")
    key = name.strip().lower()
    if key == "numpy":
        return NUMPY
    if key == "cupy":
        backend, reason = _probe_cupy()
        if backend is None:
            raise BackendUnavailableError(f"backend 'cupy' is unavailable: {reason}")
        return backend
    if key == "auto":
        backend, _ = _probe_cupy()
        return backend if backend is not None else NUMPY
    if key in _extras:
        return _extras[key]
    raise ValueError(f"backend must be 'numpy', 'cupy' or 'auto', got {name!r}")


class _Selection:
    """The process-wide backend choice, resolved lazily at first use.

    ``from_env`` is True while the choice still comes from ``GRADTAPE_BACKEND`` (read once, at
    import), so an error at first use can name the variable.
    """

    requested: str = os.environ.get("GRADTAPE_BACKEND", "").strip() or "auto"
    from_env: bool = bool(os.environ.get("GRADTAPE_BACKEND", "").strip())
    resolved: Backend | None = None


def get_backend() -> Backend:
    """Return the active :class:`Backend`, resolving ``auto`` on first call.

    Example:
        >>> get_backend().name in ("numpy", "cupy")
        True
    """
    backend = _Selection.resolved
    if backend is None:
        try:
            backend = _resolve(_Selection.requested)
        except (ValueError, TypeError, BackendUnavailableError) as exc:
            if not _Selection.from_env:
                raise
            raise type(exc)(f"environment variable GRADTAPE_BACKEND={_Selection.requested!r}: "
                            f"{exc}") from None
        _Selection.resolved = backend
    return backend


def backend_by_name(name: str) -> Backend:
    """Return the :class:`Backend` called ``name`` (``"numpy"``, ``"cupy"`` or ``"auto"``)."""
    return _resolve(name)


def backend_of(array: object) -> Backend:
    """The backend an array belongs to (NumPy for host arrays and Python scalars)."""
    if isinstance(array, (np.ndarray, np.generic)):
        return NUMPY
    if _cupy_backend is not None and isinstance(array, _cupy_backend.ndarray):
        return _cupy_backend
    mod = type(array).__module__
    if mod.startswith("cupy"):
        backend, reason = _probe_cupy()
        if backend is None:
            raise BackendUnavailableError(f"got a CuPy array but the CuPy backend is unusable: {reason}")
        return backend
    for extra in _extra_backends:
        if isinstance(array, extra.ndarray):
            return extra
    if getattr(array, "_gt_traced", False):  # a gt.function trace's wrapper: its array's
        return backend_of(array.a)  # type: ignore[attr-defined]
    return NUMPY


# Backends registered at run time by name (test support: the device-strict backend of
# gradtape/_src/strict.py, which sits above this layer); with their erfc functions.
_extras: dict[str, Backend] = {}
_extra_backends: tuple[Backend, ...] = ()
_extra_erfc: dict[str, Callable[..., Array]] = {}


def register_backend(backend: Backend, erfc: Callable[..., Array]) -> None:
    """Make ``backend`` selectable by its name (:func:`set_backend`, :func:`use_backend`) and
    recognized by :func:`backend_of` (its arrays) and :func:`erf_for` / :func:`erfc_for` (its
    array module). Idempotent; ``numpy``, ``cupy`` and ``auto`` cannot be replaced."""
    global _extra_backends
    if backend.name in ("numpy", "cupy", "auto"):
        raise ValueError(f"register_backend: the name {backend.name!r} is taken")
    _extras[backend.name] = backend
    _extra_erfc[backend.name] = erfc
    _extra_backends = tuple(_extras.values())


def is_extra_array(array: object) -> bool:
    """True when ``array`` belongs to a backend registered with :func:`register_backend`."""
    return any(isinstance(array, b.ndarray) for b in _extra_backends)


def set_backend(name: str) -> None:
    """Select the default backend for new tensors: ``"numpy"``, ``"cupy"`` or ``"auto"``.

    ``"cupy"`` raises :class:`BackendUnavailableError` naming why when CuPy cannot work here.

    Example:
        >>> import gradtape as gt
        >>> gt.set_backend("numpy"); gt.backend_name()
        'numpy'
    """
    backend = _resolve(name)
    _Selection.requested = name
    _Selection.from_env = False
    _Selection.resolved = backend


def backend_name() -> str:
    """Name of the active backend: ``"numpy"`` or ``"cupy"``.

    Example:
        >>> import gradtape as gt
        >>> gt.backend_name() in ("numpy", "cupy")
        True
    """
    return get_backend().name


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[Backend]:
    """Context manager form of :func:`set_backend`; restores the previous choice on exit.

    Example:
        >>> import gradtape as gt
        >>> with gt.use_backend("numpy"):
        ...     gt.tensor([1.0, 2.0]).backend
        'numpy'
    """
    previous = (_Selection.requested, _Selection.from_env, _Selection.resolved)
    set_backend(name)
    try:
        yield get_backend()
    finally:
        _Selection.requested, _Selection.from_env, _Selection.resolved = previous


def _special_for(xp: ArrayModule, fn_for: Callable[[ArrayModule], Callable[..., Array]]
                 ) -> tuple[Callable[..., Array] | None, Backend | None]:
    """What :func:`erf_for` and :func:`erfc_for` share: for a ``gt.function`` trace's namespace
    (which logs calls on traced arrays) the function of the module behind it, wrapped by the
    namespace; else the registered extra backend whose module ``xp`` is (or None)."""
    real = getattr(xp, "_gt_real", None)
    if real is not None:
        traced: Any = xp
        return traced._gt_wrap(fn_for(real)), None
    for extra in _extra_backends:  # (during a trace extra.xp is the namespace)
        if xp is extra.xp or xp is getattr(extra.xp, "_gt_real", None):
            return None, extra
    return None, None


def erf_for(xp: ArrayModule) -> Callable[..., Array]:
    """The erf function matching array module ``xp`` (NumPy has none of its own)."""
    if xp is np:
        return _numpy_erf
    traced, extra = _special_for(xp, erf_for)
    if traced is not None:
        return traced
    if extra is not None:
        return extra.erf
    backend, reason = _probe_cupy()
    if backend is None:
        raise BackendUnavailableError(f"erf on {getattr(xp, '__name__', xp)!r}: {reason}")
    return backend.erf


_cupy_erfc: Callable[..., Array] | None = None


def erfc_for(xp: ArrayModule) -> Callable[..., Array]:
    """The erfc function matching array module ``xp``: ``1 - erf`` evaluated directly, so it
    keeps its relative accuracy where erf rounds to 1 (``erfc(6)`` is about 2e-17)."""
    global _cupy_erfc
    if xp is np:
        return _numpy_erfc
    traced, extra = _special_for(xp, erfc_for)
    if traced is not None:
        return traced
    if extra is not None:
        return _extra_erfc[extra.name]
    backend, reason = _probe_cupy()
    if backend is None:
        raise BackendUnavailableError(f"erfc on {getattr(xp, '__name__', xp)!r}: {reason}")
    if _cupy_erfc is None:
        try:
            from cupyx.scipy.special import erfc as cupy_erfc
        except Exception:  # older CuPy: an elementwise kernel of CUDA's erfc
            cupy_erfc = backend.xp.ElementwiseKernel("T x", "T y", "y = erfc(x)", "gradtape_erfc")
        _cupy_erfc = cupy_erfc
    return _cupy_erfc


# --------------------------------------------------------------------------- float16 reductions
_HALF = np.dtype(np.float16)


def acc_sum(x: Array, axis: Any = None, keepdims: bool = False, rounded: bool = True) -> Array:
    """``x.sum(axis, keepdims=keepdims)`` in ``x``'s dtype, a float16 array accumulated in float32
    (as PyTorch and XLA do). NumPy adds float16 in float16 along a non-contiguous axis, where a
    running sum stops growing once its spacing exceeds the terms: 70000 values of 0.01 summed over
    axis 0 gave 32, and a float16 conv bias's gradient over batch x pixels was off by that much.
    ``rounded=False``: a float16 sum is left in float32 (a partial sum that is summed again,
    then rounded once).

    Example:
        >>> acc_sum(np.full((70000, 2), 0.01, np.float16), axis=0)   # float16(0.01) = 0.010002
        array([700.5, 700.5], dtype=float16)
    """
    if backend_of(x) is NUMPY:  # (host arrays, and a gt.function trace's wrappers of them)
        # the ufunc's reduce itself, which ndarray.sum calls through NumPy's Python-level
        # _methods: the same sum, and a RuntimeWarning (overflow) is then attributed to
        # gradtape, whose warnings filter silences it as for every op (config.QUIET_MODULES)
        add: Any = np.add  # (NumPy's stubs type reduce's keepdims as a literal)
        if x.dtype == _HALF:
            s = add.reduce(x, axis=axis, keepdims=keepdims, dtype=np.float32)
            return s.astype(_HALF) if rounded else s
        return add.reduce(x, axis=axis, keepdims=keepdims)
    if x.dtype == _HALF:
        s = x.sum(axis=axis, keepdims=keepdims, dtype=np.float32)
        return s.astype(_HALF) if rounded else s
    return x.sum(axis=axis, keepdims=keepdims)


def cast_lost(xp: Any, arr: Array, dtype: Any) -> float | None:
    """The largest magnitude among ``arr``'s finite values that a cast to the float ``dtype``
    makes inf (None: none does; only a wider float or an integer ``arr`` can lose one, and only
    then is the cast tried). Loading, assigning and applying a gradient refuse such a cast:
    the value would be lost (PyTorch's ``copy_`` gives inf).

    Example:
        >>> cast_lost(np, np.array([1e6, 1.0]), np.float16)
        1000000.0
    """
    dtype = np.dtype(dtype)
    k = arr.dtype.kind
    if dtype.kind != "f" or not arr.size or not (
            k == "f" and arr.dtype.itemsize > dtype.itemsize
            or k in "iu" and float(np.iinfo(arr.dtype).max) > float(np.finfo(dtype).max)):
        return None
    with np.errstate(over="ignore", invalid="ignore"):
        past = ~xp.isfinite(arr.astype(dtype)) & xp.isfinite(arr)
    if not bool(past.any()):
        return None
    return float(xp.abs(arr[past].astype(np.float64)).max())


def acc_add_at(xp: Any, shape: tuple, index: Any, g: Array) -> Array:
    """Zeros of ``shape`` made like ``g`` with ``g`` added at ``index`` (``np.add.at``: repeated
    positions accumulate), a float16 ``g`` accumulated in float32 and rounded once: in float16
    a row gathered 5000 times stopped at 2048, where the spacing (2) exceeds each term (1).
    Made like ``g``: inside ``gt.function`` the trace follows the buffer.

    Example:
        >>> acc_add_at(np, (2,), np.zeros(5000, np.intp), np.ones(5000, np.float16)).tolist()
        [5000.0, 0.0]
    """
    like = g  # inside gt.function: a traced g, else a traced index (a constant cotangent
    if not getattr(g, "_gt_traced", False):  # scattered by traced ids), so the trace follows
        for part in index if isinstance(index, tuple) else (index,):  # the buffer either way
            if getattr(part, "_gt_traced", False):
                like = part
                break
    if g.dtype == _HALF:
        z = xp.zeros_like(like, shape=shape, dtype=np.float32)
        xp.add.at(z, index, g)
        return z.astype(_HALF)
    if xp is not np and g.dtype.name not in SCATTER_ADD_DTYPES:
        # a device's add.at takes 32- and 64-bit integers and floats only: narrower integers
        # and bools add in 32 bits and come back (the same wrap-around; a bool's sum is its
        # OR), complex numbers add their real and imaginary parts
        if g.dtype.kind == "c":
            real = acc_add_at(xp, shape, index, xp.real(g))
            imag = acc_add_at(xp, shape, index, xp.imag(g))
            return (real + imag * g.dtype.type(1j)).astype(g.dtype)
        wide = np.uint32 if g.dtype.kind == "u" else np.int32
        z = acc_add_at(xp, shape, index, g.astype(wide))
        return (z != 0) if g.dtype.kind == "b" else z.astype(g.dtype)
    z = xp.zeros_like(like, shape=shape, dtype=g.dtype)
    xp.add.at(z, index, g)
    return z


#: The dtypes CuPy's ``add.at`` (``cupyx.scatter_add``) takes (others raise TypeError there).
SCATTER_ADD_DTYPES = frozenset(("int32", "int64", "uint32", "uint64", "float16", "float32",
                                 "float64"))


def in_float32(impl: Callable[..., Array]) -> Callable[..., Array]:
    """An impl ``impl(xp, x, **params)`` that computes a float16 ``x`` wholly in float32 and
    rounds its result once (other dtypes as they are): for a reduction followed by a log, root
    or division, where a float16 sum rounded first overflows past 65504 although the result
    fits (the log-sum-exp of 100000 zeros, 11.5, came out inf).

    Example:
        >>> f = in_float32(lambda xp, x: xp.log(x.sum()))
        >>> f(np, np.ones(100000, np.float16))
        np.float16(11.516)
    """
    @functools.wraps(impl)
    def wrapped(xp: ArrayModule, x: Array, **params: Any) -> Array:
        if x.dtype == _HALF:
            return impl(xp, x.astype(np.float32), **params).astype(_HALF)
        return impl(xp, x, **params)
    return wrapped
