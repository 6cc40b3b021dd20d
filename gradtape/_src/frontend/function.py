"""``gt.function``: record a step once, replay it as a straight-line array program.

Tracing runs the step eagerly, once, with every Tensor built from the call's arguments holding
a :class:`TracedArray` instead of a NumPy array. A TracedArray computes on its real array and
logs every operation done with it: NumPy ufuncs and functions reach it through NumPy's
dispatch protocols (``__array_ufunc__``, ``__array_function__``), operators, methods and
indexing through its own methods. Whatever the step runs (the forward primitives, the tape's
reverse pass, custom gradients, per-example gradients, ``gt.vmap``) is thereby captured at the
level of array calls, the level NumPy would run anyway. Stateful library calls are logged as
one opaque step each (an optimizer update, a random draw, a Variable assignment), so that their
host state (iteration counters, learning-rate schedules, generator state) advances at replay
exactly as in eager mode.

Arrays a step reads without computing them (Variables' buffers, constants made from Python
values) are held by reference, so a replay reads a Variable's current values. Converting a
traced value to the host (``float(t)``, ``bool(t)``, ``.numpy()``, ``.item()``, iterating a
tensor) is data-dependent control flow and raises :class:`~gradtape.TracingError`, or with
``fallback="eager"`` the step is marked eager and runs eagerly from then on.

The captured calls become the body of one generated Python function (no Tensor objects, no
tape, no dispatch), after dead steps are dropped and steps that depend on no input are kept
once. A second trace with the next call's values must give the same program (TF also traces
twice when the first call creates variables): a difference means a value was computed where
the trace cannot see it, and the signature then runs eagerly, with a warning, rather than
replaying a stale value.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import inspect
import math
import operator
import re
import threading
import warnings
import weakref
from collections.abc import Callable
from typing import Any, Generic, TypeVar, overload

import numpy as np

from ..autodiff.state import FLAGS, STATE, Identity, hooks_add, opaque, tracing, user_line
from ..backend import NUMPY, backend_of, get_backend
from ..codegen.cuda import cupy_kernel
from ..codegen.expr import FUNCTIONS
from ..codegen.graph import Graph
from ..config import HOOKS, config
from ..cpu import pool
from ..cpu.select import ROW_MIN, host_relu
from ..errors import TracingError, as_flag
from ..nest import flatten, unflatten
from ..primitive import own_copy
from ..tensor import Tensor, _to_array, _wrap, variable_of_buffer

__all__ = ["function", "Function", "TracedArray", "opaque", "tracing"]

R = TypeVar("R")

_RETRACE_WARN = 5  # TF warns when one function retraces this often
# A step that creates Variables at every call (TF raises at its second trace) is told so at
# this many traces in a row that created some: a lazily built model creates them once.
_CREATING_WARN = 3


# --------------------------------------------------------------------------- traced arrays


class _Slot:
    """A program variable in an argument template (the n-th array of the program)."""

    __slots__ = ("n",)

    def __init__(self, n: int) -> None:
        self.n = n

    def __repr__(self) -> str:
        return f"s{self.n}"


#: ndarray methods that return the array's values to Python (see TracedArray.__getattr__).
_HOST_METHODS = frozenset(("tolist", "tobytes", "tofile", "dump", "dumps"))


class TracedArray:
    """A backend array being traced by :func:`function`: computes on its real array and logs
    each operation to the trace. Tensors built during a trace hold these as ``data``.

    After its trace ends, a TracedArray that escaped (kept in a Python list by the step, say)
    forwards every operation to its real array, the value it had when the step ran.

    Shapes: those of the real array.

    Example:
        >>> import gradtape as gt
        >>> seen = []
        >>> @gt.function
        ... def f(x):
        ...     seen.append(type(x.data).__name__)
        ...     return x * 2.0
        >>> f(gt.tensor([1.0])).numpy(), seen
        (array([2.], dtype=float32), ['TracedArray'])
    """

    __slots__ = ("a", "slot", "tr", "__weakref__")
    _gt_traced = True
    __array_priority__ = 1e6

    def __init__(self, tr: _Trace | None, a: Any, slot: int) -> None:
        self.a = a
        self.slot = slot
        self.tr = tr

    # static metadata: shapes and dtypes are part of the signature
    @property
    def shape(self) -> tuple[int, ...]:
        return self.a.shape

    @property
    def dtype(self) -> np.dtype:
        return self.a.dtype

    @property
    def ndim(self) -> int:
        return self.a.ndim

    @property
    def size(self) -> int:
        return self.a.size

    @property
    def itemsize(self) -> int:
        return self.a.itemsize

    @property
    def nbytes(self) -> int:
        return self.a.nbytes

    @property
    def strides(self) -> tuple[int, ...]:
        return self.a.strides

    @property
    def flags(self) -> Any:
        return self.a.flags

    def __len__(self) -> int:
        return len(self.a)

    def __repr__(self) -> str:
        return f"TracedArray(shape={self.a.shape}, dtype={self.a.dtype})"

    def _live(self) -> _Trace | None:
        tr = self.tr
        if tr is None or tr.done or tr.thread != threading.get_ident() or tr.suspended:
            return None
        return tr

    def __array_ufunc__(self, ufunc: np.ufunc, method: str, *inputs: Any, **kwargs: Any) -> Any:
        if method == "__call__" and type(self.a) is np.ndarray and (
                not kwargs or len(kwargs) == 1 and "out" in kwargs):
            # the most frequent calls: straight to the live trace when every traced operand
            # (and output) is this trace's (else _dispatch finds the trace, or raises for
            # another thread's)
            tr = self._live()
            if tr is not None:
                for x in (*inputs, *kwargs["out"]) if kwargs else inputs:
                    if type(x) is TracedArray and x.tr is not tr:
                        break
                else:
                    return tr.call(ufunc, inputs, kwargs)
        if method == "reduce" and "out" not in kwargs and len(inputs) == 1 and inputs[0] is self \
                and type(self.a) is np.ndarray and all([_plain_value(v) for v in kwargs.values()]):
            # a reduction (a sum, a max along an axis) of this array alone into a new array:
            # nothing is written, no operand but the array itself; logged as the general path
            # would, without its checks (a trace's sums are many)
            tr = self._live()
            if tr is not None and not tr.promoted:
                return tr.pure(ufunc.reduce, self, (), kwargs)
        fn = ufunc if method == "__call__" else getattr(ufunc, method)
        if not isinstance(self.a, (np.ndarray, np.generic)):  # a device array: NumPy handed
            # a Python or NumPy scalar operand over as a 0-d host array, which a device library
            # refuses (a host one, a Variable's 0-d buffer, is left as it is: read by reference)
            inputs = tuple(x[()] if type(x) is np.ndarray and x.ndim == 0 else x for x in inputs)
        return _dispatch(fn, inputs, kwargs)

    def __array_function__(self, func: Any, types: Any, args: Any, kwargs: Any) -> Any:
        return _dispatch(func, args, kwargs)

    # --- host conversions: data-dependent control flow while tracing
    def _host(self, what: str) -> Any:
        tr = self._live()
        if tr is not None:
            tr.host_sync(what)
        return self.a

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        a = np.asarray(self._host(".numpy() / np.asarray()"))
        return a if dtype is None else a.astype(dtype)

    def __float__(self) -> float:
        return float(self._host("float()"))

    def __int__(self) -> int:
        return int(self._host("int()"))

    def __index__(self) -> int:
        return operator.index(self._host("use as an index"))

    def __bytes__(self) -> bytes:
        return bytes(np.asarray(self._host("bytes()")))

    def __getattr__(self, name: str) -> Any:
        # the ndarray methods that hand its values to Python (tolist, tobytes, ...): a host
        # value, which the program that replays the step would not know
        if name not in _HOST_METHODS:
            raise AttributeError(f"'TracedArray' object has no attribute {name!r}")
        return getattr(self._host(f".{name}()"), name)

    def __complex__(self) -> complex:
        return complex(self._host("complex()"))

    def __bool__(self) -> bool:
        return bool(self._host("bool() (an if/while on a tensor)"))

    def item(self, *args: Any) -> Any:
        return self._host(".item()").item(*args)

    def tolist(self) -> Any:
        return self._host(".tolist()").tolist()

    def __iter__(self) -> Any:
        a = self._host("iteration")
        return iter(a)

    def get(self) -> Any:  # CuPy's device-to-host copy
        return self._host(".get()").get()

    def __getitem__(self, idx: Any) -> Any:
        if type(self.a) is np.ndarray and _basic_index(idx):
            # ints, slices, None and Ellipsis: a view whose shape follows from the shapes alone,
            # logged as the general path would, without its checks (masks, index arrays)
            tr = self._live()
            if tr is not None and not tr.promoted:
                return tr.pure(operator.getitem, self, (idx,), {})
        return _dispatch(operator.getitem, (self, idx), {})

    def __setitem__(self, idx: Any, value: Any) -> None:
        _dispatch(operator.setitem, (self, idx, value), {})

    @property
    def T(self) -> Any:
        m = _METHODS["transpose"]
        w = _pure_method(m, self, (), {})
        return w if w is not None else _dispatch(m, (self,), {})

    @property
    def real(self) -> Any:
        return _dispatch(_ATTRS["real"], (self,), {})

    @property
    def imag(self) -> Any:
        return _dispatch(_ATTRS["imag"], (self,), {})


class _Method:
    """An array method called on a traced array: rendered ``obj.name(...)`` in the program.
    ``out_pos``: where its ``out`` argument sits when given positionally, counting the array
    itself as 0 (``a.clip(lo, hi, out)``: 3), else -1."""

    __slots__ = ("name", "__name__", "out_pos")

    def __init__(self, name: str) -> None:
        self.name = name
        self.__name__ = f"ndarray.{name}"
        self.out_pos = _method_out_position(name)

    def __call__(self, obj: Any, *args: Any, **kwargs: Any) -> Any:
        return getattr(obj, self.name)(*args, **kwargs)


def _method_out_position(name: str) -> int:
    """``out``'s positional index in NumPy's ``ndarray.name`` (the array counting as 0), read
    from the first line of its docstring (``a.sum(axis=None, dtype=None, out=None, *, ...)``:
    3; C methods have no signature to inspect); -1 where it takes no ``out``."""
    doc = getattr(getattr(np.ndarray, name, None), "__doc__", None) or ""
    m = re.match(r"\s*a\.\w+\((.*)\)", doc)
    params = [p.strip().split("=")[0].strip() for p in m.group(1).split(",")] if m else []
    for i, p in enumerate([p for p in params if p != "/"]):  # (after "/": still positional)
        if p.startswith("*"):
            break
        if p == "out":
            return i + 1
    return -1


class _Attr:
    """An array attribute that computes (``.real``, ``.imag``): rendered ``obj.name``."""

    __slots__ = ("name", "__name__")

    def __init__(self, name: str) -> None:
        self.name = name
        self.__name__ = f"ndarray.{name}"

    def __call__(self, obj: Any) -> Any:
        return getattr(obj, self.name)


_METHOD_NAMES = (
    "reshape", "transpose", "swapaxes", "sum", "mean", "max", "min", "prod", "any", "all",
    "argmax", "argmin", "astype", "copy", "ravel", "flatten", "squeeze", "clip", "dot",
    "cumsum", "cumprod", "fill", "view", "take", "repeat", "round", "conj", "conjugate",
    "nonzero", "sort", "argsort", "var", "std", "trace", "diagonal", "put", "partition",
    "argpartition", "searchsorted", "compress", "choose", "ptp", "byteswap", "setflags",
)
_METHODS = {n: _Method(n) for n in _METHOD_NAMES}
_ATTRS = {n: _Attr(n) for n in ("real", "imag")}


#: Methods that write nothing and whose result's shape follows from shapes alone: with
#: arguments that are Python ints, bools, None or tuples of ints (no ``out``), a call on a
#: NumPy array of the live trace is logged by :func:`_pure_method` without the general path's
#: checks (these are most of a trace's non-ufunc calls: reshapes, transposes, sums).
_PURE_METHODS = frozenset({"reshape", "transpose", "swapaxes", "sum", "mean", "max", "min", "prod",
                           "any", "all", "argmax", "argmin", "copy", "ravel", "flatten",
                           "squeeze", "cumsum", "cumprod", "var", "std", "diagonal", "astype"})


def _basic_index(idx: Any) -> bool:
    """Whether ``idx`` is a basic index: an int, a slice of ints, None or Ellipsis, or a tuple
    of them (no array, no bool, nothing traced)."""
    if type(idx) is tuple:
        return all([_basic_index_part(c) for c in idx])
    return _basic_index_part(idx)


def _basic_index_part(c: Any) -> bool:
    t = type(c)
    if t is int or c is None or c is Ellipsis:
        return True
    return t is slice and all([v is None or type(v) is int for v in (c.start, c.stop, c.step)])


def _plain_arg(v: Any) -> bool:
    t = type(v)
    return t is int or t is bool or v is None or (t is tuple and all([type(e) is int for e in v]))


def _plain_value(v: Any) -> bool:
    """An argument a pure step takes as it is: :func:`_plain_arg`'s, or a dtype (an astype's, a
    sum's; rendered as a constant of the program)."""
    return _plain_arg(v) or isinstance(v, np.dtype)


def _pure_method(m: _Method, self: TracedArray, args: tuple, kwargs: dict) -> Any:
    """Log ``self.name(*args, **kwargs)`` (``m`` of :data:`_PURE_METHODS`) as the general path
    of :meth:`_Trace.call` would, when that is all it would do; else None (take the general
    path)."""
    tr = self._live()
    if tr is None or tr.promoted or type(self.a) is not np.ndarray:
        return None
    for v in args:
        if not _plain_value(v):
            return None
    if kwargs:
        if "out" in kwargs:
            return None
        for v in kwargs.values():
            if not _plain_value(v):
                return None
    res = getattr(self.a, m.name)(*args, **kwargs)
    if type(res) is not np.ndarray and not isinstance(res, np.generic):
        return None  # (the general path calls it again: these methods write nothing)
    return tr.log_pure(m, self, args, kwargs, res)


def _add_method(name: str) -> None:
    m = _METHODS[name]

    if name in _PURE_METHODS:
        def method(self: TracedArray, *args: Any, **kwargs: Any) -> Any:
            w = _pure_method(m, self, args, kwargs)
            return w if w is not None else _dispatch(m, (self, *args), kwargs)
    else:
        def method(self: TracedArray, *args: Any, **kwargs: Any) -> Any:
            return _dispatch(m, (self, *args), kwargs)

    method.__name__ = name
    setattr(TracedArray, name, method)


for _n in _METHOD_NAMES:
    _add_method(_n)

_BINARY = {
    "add": np.add, "sub": np.subtract, "mul": np.multiply, "truediv": np.true_divide,
    "floordiv": np.floor_divide, "mod": np.remainder, "pow": np.power, "matmul": np.matmul,
    "and": np.bitwise_and, "or": np.bitwise_or, "xor": np.bitwise_xor,
    "lshift": np.left_shift, "rshift": np.right_shift, "divmod": np.divmod,
}
_COMPARE = {"lt": np.less, "le": np.less_equal, "gt": np.greater, "ge": np.greater_equal,
            "eq": np.equal, "ne": np.not_equal}
_UNARY = {"neg": np.negative, "pos": np.positive, "abs": np.absolute, "invert": np.invert}


def _reflected(pyop: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    def rop(a: Any, b: Any) -> Any:
        return pyop(b, a)

    rop.__name__ = f"r{getattr(pyop, '__name__', 'op')}"
    rop._gt_reflects = pyop  # type: ignore[attr-defined]  # (the device fusion reads it)
    return rop


_OPNAMES = {"and": "and_", "or": "or_"}  # the operator module's spellings
_PYOPS: dict[str, Any] = {name: getattr(operator, _OPNAMES.get(name, name)) for name in _BINARY
                          if name != "divmod"}
_PYOPS["divmod"] = divmod
_PYOPS.update({name: getattr(operator, name) for name in _COMPARE})
_PYOPS.update({name: getattr(operator, name) for name in _UNARY})
_RPYOPS = {name: _reflected(fn) for name, fn in _PYOPS.items()}
_IPYOPS = {name: getattr(operator, f"i{name}") for name in _BINARY if name != "divmod"}


def _add_operators() -> None:
    # On NumPy arrays an operator is its ufunc; on a device array (CuPy's), the array's own
    # operator (NumPy would turn a Python number operand into a host array first)
    def binary(name: str, uf: np.ufunc) -> tuple[Callable, Callable, Callable]:
        pyop, rpyop, ipyop = _PYOPS[name], _RPYOPS[name], _IPYOPS.get(name)

        def op(self: Any, other: Any) -> Any:
            if type(self.a) is np.ndarray or isinstance(self.a, np.generic):
                return uf(self, other)
            return _dispatch(pyop, (self, other), {})

        def rop(self: Any, other: Any) -> Any:
            if type(self.a) is np.ndarray or isinstance(self.a, np.generic):
                return uf(other, self)
            return _dispatch(rpyop, (self, other), {})

        def iop(self: Any, other: Any) -> Any:
            if type(self.a) is np.ndarray:
                uf(self, other, out=(self,))
                return self
            # a device array is written in place (the result is this program variable); a
            # NumPy scalar is immutable: ``x += y`` binds x to the new value, as Python does
            return _dispatch(ipyop, (self, other), {})

        return op, rop, iop

    for name, uf in _BINARY.items():
        op, rop, iop = binary(name, uf)
        setattr(TracedArray, f"__{name}__", op)
        setattr(TracedArray, f"__r{name}__", rop)
        if name != "divmod":
            setattr(TracedArray, f"__i{name}__", iop)
    for name, uf in _COMPARE.items():
        setattr(TracedArray, f"__{name}__", binary(name, uf)[0])
    for name, uf in _UNARY.items():
        def unary(self: Any, _u: np.ufunc = uf, _p: Any = _PYOPS[name]) -> Any:
            if type(self.a) is np.ndarray or isinstance(self.a, np.generic):
                return _u(self)
            return _dispatch(_p, (self,), {})
        setattr(TracedArray, f"__{name}__", unary)


_add_operators()
TracedArray.__hash__ = object.__hash__  # type: ignore[method-assign]  # __eq__ is elementwise


# Functions of arrays whose (non-array) result depends on shapes and dtypes only.
_METADATA = {np.shape, np.ndim, np.size, np.result_type, np.can_cast, np.iscomplexobj,
             np.isrealobj, np.isscalar, np.min_scalar_type, np.may_share_memory,
             np.shares_memory, np.broadcast_shapes, np.broadcast_arrays}


def _dispatch(fn: Any, args: Any, kwargs: Any) -> Any:
    """Run ``fn`` on the real arrays behind any TracedArray in ``args``/``kwargs`` and log it
    to the live trace (or just run it, for arrays whose trace has ended)."""
    tr = _live_trace(args, kwargs)
    if tr is None:
        return fn(*_unwrap(args), **_unwrap(kwargs))
    return tr.call(fn, args, kwargs)


def _live_trace(args: Any, kwargs: Any) -> _Trace | None:
    for x in args:  # flat positional arguments first, without a generator (once per op)
        t = type(x)
        if t is TracedArray:
            tr = _trace_of(x)
            if tr is not None:
                return tr
        elif t is tuple or t is list:
            return _live_trace_nested(args, kwargs)
    return _live_trace_nested((), kwargs) if kwargs else None


def _live_trace_nested(args: Any, kwargs: Any) -> _Trace | None:
    for x in _leaves(args, kwargs):
        if type(x) is TracedArray:
            tr = _trace_of(x)
            if tr is not None:
                return tr
    return None


def _trace_of(x: TracedArray) -> _Trace | None:
    tr = x._live()
    if tr is None and x.tr is not None and not x.tr.done and x.tr.thread != threading.get_ident():
        raise TracingError("gt.function: a traced array was used from another thread while "
                           "its step was being traced")
    return tr


def _leaves(args: Any, kwargs: Any) -> Any:
    for a in args:
        t = type(a)
        if t is tuple or t is list:
            yield from _leaves(a, {})
        else:
            yield a
    for v in kwargs.values():
        t = type(v)
        if t is tuple or t is list:
            yield from _leaves(v, {})
        else:
            yield v


def _unwrap(x: Any) -> Any:
    t = type(x)
    if t is TracedArray:
        return x.a
    if t is tuple or t is list:
        return t(_unwrap(v) for v in x)
    if t is dict:
        return {k: _unwrap(v) for k, v in x.items()}
    return x


def _unwrap_flat(args: tuple) -> list[Any]:
    out = []
    for x in args:
        t = type(x)
        if t is TracedArray:
            out.append(x.a)
        elif t is tuple or t is list or t is dict:
            out.append(_unwrap(x))
        else:
            out.append(x)
    return out


def _is_array(x: Any) -> bool:
    """A NumPy array or scalar, or a device array (CuPy's, the strict test backend's)."""
    if isinstance(x, (np.ndarray, np.generic)):
        return True
    return hasattr(x, "__cuda_array_interface__") or (
        hasattr(x, "shape") and hasattr(x, "dtype") and hasattr(x, "__array_ufunc__")
        and not isinstance(x, (Tensor, TracedArray)))


# NumPy's conversion functions do not dispatch on their argument (they call ``__array__``);
# while any trace runs they are wrapped so that converting a traced array is a logged call.
_CONVERTERS = ("asarray", "asanyarray", "ascontiguousarray", "asfortranarray", "array", "from_dlpack")
_ORIGINAL = {name: getattr(np, name) for name in _CONVERTERS}
_patch_lock = threading.Lock()
_patch_count = 0


def _converter(name: str) -> Callable[..., Any]:
    orig = _ORIGINAL[name]

    def convert(a: Any, *args: Any, **kwargs: Any) -> Any:
        if type(a) is TracedArray:
            return _dispatch(orig, (a, *args), kwargs)
        tr = STATE.trace
        if tr is not None and tr.promoted and not tr.suspended:
            # a buffer made outside the trace that a traced call wrote (a step's own scratch
            # array, filled by np.clip(..., out=o)): converting it reads that program
            # variable, not the value it had while tracing
            w = tr.promoted_of(a)
            if w is not None:
                return _dispatch(orig, (w, *args), kwargs)
            if type(a) is np.ndarray:
                tr._check_view(a)
        return orig(a, *args, **kwargs)

    convert.__name__ = name
    convert.__doc__ = orig.__doc__
    return convert


_WRAPPED = {name: _converter(name) for name in _CONVERTERS}


def _holds_tensors(x: Any) -> bool:
    """An output object that the nest does not look into but that holds tensors in its
    attributes (a dataclass of results): its contents cannot be replayed."""
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        values: Any = (getattr(x, f.name, None) for f in dataclasses.fields(x))
    else:
        try:
            values = vars(x).values()
        except TypeError:  # no __dict__: a dtype, a slice, a number type
            return False
    return any(isinstance(v, (Tensor, TracedArray)) or type(v) in (list, tuple, dict)
               and any(isinstance(u, (Tensor, TracedArray)) for u in flatten(v)[0]) for v in values)


_serial_lock = threading.Lock()
_serial_state: list[Any] = [0, None]  # traces running (any thread), the settings they replaced


def _serial(on: bool) -> None:
    """While any trace runs (in any thread), the CPU thread pool takes no work: the first to
    start saves the pool's settings, the last to end restores them (traces in two threads
    may end in any order)."""
    with _serial_lock:
        if on:
            if _serial_state[0] == 0:
                _serial_state[1] = (pool.MIN_SIZE, pool.THREADS)
                pool.MIN_SIZE, pool.THREADS = 1 << 62, 1
            _serial_state[0] += 1
        else:
            _serial_state[0] -= 1
            if _serial_state[0] == 0:
                pool.MIN_SIZE, pool.THREADS = _serial_state[1]


def _patch_converters(on: bool) -> None:
    global _patch_count
    with _patch_lock:
        _patch_count += 1 if on else -1
        if on and _patch_count == 1:
            for name, fn in _WRAPPED.items():
                setattr(np, name, fn)
        elif not on and _patch_count == 0:
            for name, fn in _ORIGINAL.items():
                setattr(np, name, fn)


class _TracingNamespace:
    """A device backend's array module while a step is traced on it: its functions log calls
    that involve traced arrays (CuPy's functions do not dispatch on foreign types the way
    NumPy's do); kernels it builds (``ElementwiseKernel``) come back wrapped the same way.
    Everything else (dtypes, classes, constants) is the module's own."""

    def __init__(self, real: Any) -> None:
        self._gt_real = real

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._gt_real, name)
        if isinstance(attr, type) or not callable(attr):
            if hasattr(attr, "__dict__") and type(attr).__name__ == "module":
                attr = _TracingNamespace(attr)
            self.__dict__[name] = attr
            return attr
        wrapped: Any = _TracedUfunc(attr) if hasattr(attr, "at") and hasattr(attr, "reduce") \
            else _traced_callable(attr)
        self.__dict__[name] = wrapped
        return wrapped

    def __repr__(self) -> str:
        return f"<traced {self._gt_real!r}>"

    @staticmethod
    def _gt_wrap(fn: Any) -> Callable[..., Any]:
        return _traced_callable(fn)


class _TracedUfunc:
    """A device ufunc in a tracing namespace: calls and its methods (``add.at``,
    ``maximum.reduce``) log calls on traced arrays."""

    def __init__(self, uf: Any) -> None:
        self._call = _traced_callable(uf)
        self._uf = uf

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._call(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._uf, name)
        return _traced_callable(attr) if callable(attr) else attr


def _traced_callable(fn: Any) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        if _live_trace(args, kwargs) is not None:
            return _dispatch(fn, args, kwargs)
        res = fn(*args, **kwargs)
        if callable(res) and not _is_array(res) and not isinstance(res, type):
            return _traced_callable(res)  # a kernel object: its calls are logged too
        return res

    call.__name__ = getattr(fn, "__name__", "call")
    call.__wrapped__ = fn  # type: ignore[attr-defined]
    return call


def _real(module: Any) -> Any:
    """The array module behind a tracing namespace (or ``module`` itself)."""
    return module._gt_real if type(module) is _TracingNamespace else module


# --------------------------------------------------------------------------- the trace


class _Const:
    """A value the program reads as is: by reference (arrays: a Variable's buffer is read at
    replay time), rendered as a name in the generated function's namespace."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


class _Step:
    """One logged call: ``fn`` on argument templates, defining program variables ``outs``."""

    __slots__ = ("fn", "args", "kwargs", "outs", "out_kind", "pure", "key", "host")

    def __init__(self, fn: Any, args: Any, kwargs: Any, outs: list[int], out_kind: Any,
                 pure: bool, key: Any = None, host: bool = False) -> None:
        self.key = fn if key is None else key  # what two traces compare
        self.host = host  # an opaque step: Python run at each call (not a device graph's)
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.outs = outs  # slots defined by this step
        self.out_kind = out_kind  # None: statement; "one": a single array; else a template
        self.pure = pure


_BYTESWAP = _METHODS["byteswap"]  # writes its array with inplace=True
_MUTATING = {operator.setitem, *_IPYOPS.values(), _METHODS["fill"], _METHODS["put"], _METHODS["sort"],
             _METHODS["partition"], _METHODS["setflags"], np.copyto, np.put, np.place,
             np.putmask, np.fill_diagonal, np.put_along_axis}
#: The same writers in a device array library (CuPy's, the strict backend's: other objects than
#: NumPy's), by name, and cupyx's scatters: each writes its first argument.
_MUTATING_NAMES = frozenset(("copyto", "put", "place", "putmask", "fill_diagonal", "put_along_axis",
                             "scatter_add", "scatter_max", "scatter_min"))


def _device_mutator(fn: Any) -> bool:
    return getattr(fn, "__name__", None) in _MUTATING_NAMES and str(
        getattr(fn, "__module__", "")).startswith(("cupy", "cupyx", "gradtape._src.strict"))


class _Shadow:
    """What a trace keeps of a host array it made (of at least ``_SHADOW_MIN`` elements):
    shape, dtype and layout (all the program's compilation reads), not the array, so the
    step's temporaries are freed while it traces as they are eagerly. The array itself stays
    with its :class:`TracedArray` for as long as the step uses it."""

    __slots__ = ("shape", "dtype", "ndim", "size", "c_contiguous")

    def __init__(self, a: np.ndarray) -> None:
        self.shape, self.dtype, self.ndim, self.size = a.shape, a.dtype, a.ndim, a.size
        self.c_contiguous = a.flags.c_contiguous


#: Host arrays of at least this many elements are kept by a trace as a :class:`_Shadow`;
#: smaller ones as they are (a few KiB each, and a shadow costs as much as a small op's
#: logging).
_SHADOW_MIN = 1 << 12


class _Trace:
    """One tracing run: the steps logged, the program's arrays (slots), the constants."""

    def __init__(self, fallback: bool) -> None:
        self.thread = threading.get_ident()
        self.steps: list[_Step] = []
        # slot -> its array's _Shadow (host arrays), else the value itself (device arrays,
        # which the cut into CUDA graphs inspects, and NumPy scalars)
        self.arrays: list[Any] = []
        self.consts: dict[int, _Const] = {}
        self.fallback = fallback
        self.poisoned: str | None = None
        self.done = False
        self.suspended = 0
        self.created_variables = False
        self.promoted: dict[int, TracedArray] = {}  # scratch buffers the program allocates
        self.reads: dict[int, TracedArray] = {}  # Variable buffers read by traced ops
        self.variables: dict[int, Any] = {}  # weak references to the Variables ops read
        # Python flags the program depends on: (id, name) -> (weak ref, name, value read)
        self.flags: dict[tuple[int, str], tuple[Any, str, Any]] = {}
        self.flags_set: set[tuple[int, str]] = set()  # flags the step itself set
        self.owners: dict[int, Any] = {}  # weak references to the objects whose flags it set
        self.unsafe: str | None = None  # why this trace cannot be replayed
        self.out_consts: list[Any] = []  # outputs that are not program values, to compare
        # the flags' epoch when the step began: a flag the step read, then set itself (a
        # Variable's trainable a tape watched it by), makes the next call check the values
        # read against the flags then
        self.epoch = FLAGS[0]

    def pure(self, fn: Any, x: TracedArray, rest: tuple, kwargs: dict) -> TracedArray:
        """Run and log ``fn(x, *rest, **kwargs)``, which writes nothing and makes its result
        from ``x`` alone (``rest`` and ``kwargs`` plain values: see :meth:`log_pure`)."""
        return self.log_pure(fn, x, rest, kwargs, fn(x.a, *rest, **kwargs))

    def log_pure(self, fn: Any, x: TracedArray, rest: tuple, kwargs: dict, res: Any) -> TracedArray:
        """Log the pure step ``res = fn(x, *rest, **kwargs)`` as :meth:`call` would, its
        arguments as they are (plain values: ints, bools, None, tuples of ints, slices, dtypes;
        the program renders a dtype as a constant). The result is ``x`` itself where ``res`` is
        its array (``astype(copy=False)`` of its own dtype), else a new program variable."""
        w = x if res is x.a else self.new(res)
        self.steps.append(_Step(fn, (_Slot(x.slot), *rest), dict(kwargs), [w.slot], "one", True))
        return w

    # slots
    def new(self, a: Any) -> TracedArray:
        n = len(self.arrays)
        self.arrays.append(_Shadow(a) if type(a) is np.ndarray and a.size >= _SHADOW_MIN else a)
        return TracedArray(self, a, n)

    def _constant_mask(self) -> None:
        """A traced tensor indexed by a boolean mask that is a plain array, not a traced
        value: the result's length is the mask's count of True, which the program's fixed
        shapes cannot follow if the array changes; the message says how to index instead."""
        line = user_line()
        why = (f"gt.function: a traced tensor indexed by a boolean mask at {line}, a plain "
               "array (not a traced value): the replayed program has fixed shapes, and the "
               "result's length is the mask's count of True. Index with the mask's positions "
               "instead (x[np.flatnonzero(mask)] for a 1-d mask, x[np.nonzero(mask)] in "
               "general: fixed integer indices), select with gt.where, or use "
               "gt.function(f, fallback=\"eager\") to run this step eagerly")
        if not self._falls_back(f"indexing a traced tensor by a plain boolean mask at {line}"):
            raise TracingError(why)

    def _falls_back(self, reason: str) -> bool:
        """With ``fallback="eager"``: note ``reason`` (the first one met) as why the step runs
        eagerly, and say True; else False (the caller raises ``TracingError``)."""
        if not self.fallback:
            return False
        if self.poisoned is None:
            self.poisoned = reason
        return True

    def refuse(self, what: str, why: str) -> None:
        """A library call that reads or writes host state outside the program (a checkpoint
        file, an optimizer's state as host arrays) met while tracing: it would run at the
        traces only, not at the replays; ``TracingError`` saying ``why``, or with
        ``fallback="eager"`` the step runs eagerly."""
        line = user_line()
        if self._falls_back(f"{what} at {line}"):
            return
        raise TracingError(
            f"gt.function: {what} at {line}: {why}. Call it outside the compiled step (before "
            "or after the call), or use gt.function(f, fallback=\"eager\") to run this step "
            "eagerly")

    def host_sync(self, what: str) -> None:
        line = user_line()
        if self._falls_back(f"{what} at {line}"):
            return
        if "Variable" in what:  # a host value of the state: the program reads it at each call
            raise TracingError(
                f"gt.function: {what} at {line}: the program that replays this step reads a "
                "Variable at each call, but a Python number or host array taken from it "
                "while tracing would stay the value it had then. Use the Variable in gradtape "
                "ops (read at each call), pass the value as a Python argument (a new value "
                "traces again), or use gt.function(f, fallback=\"eager\") to run this step "
                "eagerly")
        raise TracingError(
            f"gt.function: {what} of a traced tensor at {line}: while a step is traced its "
            "values are not known to the program that replays it, so Python control flow "
            "cannot depend on them. Use gt.where(cond, a, b) for a data-dependent choice, "
            "pass the value as a Python argument (a new value traces again), return the "
            "tensor and convert it outside the function, or use "
            "gt.function(f, fallback=\"eager\") to run this step eagerly")

    def _template(self, x: Any) -> Any:
        t = type(x)
        if self.promoted:
            w = self.promoted_of(x)
            if w is not None:
                return _Slot(w.slot)
        if t is TracedArray:
            if x.tr is not self:  # an escaped array of an earlier trace: its value then
                return self._const(x.a)
            return _Slot(x.slot)
        if t is tuple or t is list:
            return t(self._template(v) for v in x)
        if t is dict:
            return {k: self._template(v) for k, v in x.items()}
        if t is slice or x is None or x is Ellipsis or t in (int, float, bool, str):
            return x
        if self.promoted and t is np.ndarray:
            self._check_view(x)
        return self._const(x)

    def promoted_of(self, buf: Any) -> TracedArray | None:
        """The program variable of ``buf`` when it is a buffer made outside the trace that a
        traced call wrote (see :meth:`_promote`), else None."""
        w = self.promoted.get(id(buf))
        return w if w is not None and w.a is buf else None

    def _check_view(self, x: Any) -> None:
        """``x`` (a plain array) is a view of a scratch buffer a traced call wrote: its values
        come from that call, but the view was made where the trace cannot see it; the step
        then runs eagerly (a constant would be stale)."""
        b = x.base
        while isinstance(b, np.ndarray):
            if self.promoted_of(b) is not None:
                if self.unsafe is None:
                    self.unsafe = ("a view of an array the step made and a traced call wrote "
                                   "(a reshape or slice of a scratch buffer) was read")
                return
            b = b.base

    def _template_flat(self, args: tuple) -> tuple:
        out = []
        promoted = self.promoted
        for x in args:
            if type(x) is TracedArray and x.tr is self and not promoted:
                out.append(_Slot(x.slot))
            else:
                out.append(self._template(x))
        return tuple(out)

    def _const(self, v: Any) -> _Const:
        c = self.consts.get(id(v))
        if c is None or c.value is not v:
            c = self.consts[id(v)] = _Const(v)
        return c

    def call(self, fn: Any, args: tuple, kwargs: dict) -> Any:
        if type(fn) is np.ufunc and not self.promoted and (
                not kwargs or len(kwargs) == 1 and fn.nout == 1
                and type(o := kwargs.get("out")) is tuple and len(o) == 1
                and type(o[0]) is TracedArray and o[0].tr is self):
            # the most frequent calls: a ufunc on this trace's arrays, numbers and constant
            # host arrays, with no out (nothing is written, the result is a new array) or
            # with one of this trace's arrays as out (a fused run's statements: the result is
            # that array, redefined); the general path's templates in one pass
            fast_a: list[Any] = []
            fast_t: list[Any] = []
            for x in args:
                t = type(x)
                if t is TracedArray and x.tr is self:
                    fast_a.append(x.a)
                    fast_t.append(_Slot(x.slot))
                elif t is float or t is int or t is bool:
                    fast_a.append(x)
                    fast_t.append(x)
                elif t is np.ndarray:
                    fast_a.append(x)
                    fast_t.append(self._const(x))
                else:
                    break
            else:
                if kwargs:
                    out = kwargs["out"][0]
                    res = fn(*fast_a, out=(out.a,))  # (NumPy returns the out array itself)
                    self.steps.append(_Step(fn, tuple(fast_t), {"out": (_Slot(out.slot),)},
                                            [out.slot], "one", False))
                    return out
                res = fn(*fast_a)
                if type(res) is np.ndarray or isinstance(res, np.generic):
                    w = self.new(res)
                    self.steps.append(_Step(fn, tuple(fast_t), {}, [w.slot], "one", True))
                    return w
                # (anything else: the general path below, which calls the pure ufunc again)
        ua = _unwrap_flat(args)
        uk = _unwrap(kwargs) if kwargs else kwargs
        try:
            mutating = fn in _MUTATING or _device_mutator(fn)
        except TypeError:  # an unhashable callable
            mutating = False
        ufunc = type(fn) is np.ufunc  # (NumPy hands a ufunc its outputs as out=)
        wr = _written(fn, args, kwargs) if (kwargs or mutating or getattr(fn, "__name__", "") == "at"
                                            or not ufunc and (0 <= _out_position(fn) < len(args)
                                                              or fn is _BYTESWAP
                                                              or _kernel_outputs(fn, args))) else ()
        for buf in wr:
            if type(buf) is not TracedArray and _is_array(buf) and not isinstance(buf, np.generic) \
                    and id(buf) not in self.promoted:
                refused = _variable_write(fn, buf)
                if refused is not None:
                    if not self.fallback:
                        raise TracingError(refused)
                    if self.poisoned is None:  # fallback="eager": the step runs eagerly
                        self.poisoned = refused
                if buf.base is not None and self.unsafe is None:  # a view: its base is read
                    self.unsafe = (f"{getattr(fn, '__name__', fn)} wrote into a view of an array "
                                   "made outside the trace")
                self._promote(buf, _overwrites(fn, tuple(ua), uk, buf))
        if not ufunc and _data_shaped(fn, args, kwargs):
            if fn is operator.getitem and not _bool_index(args[1], traced_only=True):
                self._constant_mask()
            self.host_sync(f"{getattr(fn, '__name__', fn)} (its result's shape depends on the values)")
        res = fn(*ua, **uk)
        targs = self._template_flat(args)
        tkw = self._template(kwargs) if kwargs else {}
        written = bool(wr)
        if res is None:
            self.steps.append(_Step(fn, targs, tkw, [], None, False))
            return None
        if _is_array(res):
            wrapped = self._result(res, args, kwargs)
            self.steps.append(_Step(fn, targs, tkw, [wrapped.slot], "one",
                                    not written and not mutating))
            return wrapped
        if isinstance(res, (tuple, list)) and any(_is_array(r) for r in res):
            outs = []
            items = []
            for r in res:
                if _is_array(r):
                    w = self.new(r)
                    outs.append(w.slot)
                    items.append(w)
                else:
                    outs.append(-1)
                    items.append(r)
            self.steps.append(_Step(fn, targs, tkw, outs, type(res), not written))
            if hasattr(res, "_fields"):
                return type(res)(*items)
            return type(res)(items)
        if fn in _METADATA:
            return res
        name = getattr(fn, "__name__", repr(fn))
        self.host_sync(f"{name}() returning a Python value")
        return res

    def after_op(self, prim: Any, args: tuple, out: Any, params: dict) -> None:
        """A primitive ran on arrays none of which is traced (a Variable's buffer, constants):
        its impl call was not seen, so log it here, reading Variables as program variables,
        and make its result traced."""
        if self.suspended or out.__class__ is not Tensor or type(out.data) is TracedArray:
            return  # (a batched result: the rule's physical ops came here one by one)
        w = self.promoted_of(out.data)
        if w is not None:  # a buffer a traced call wrote:
            out.data = w  # the program's value (``zeros`` then ``add.at`` of a traced value)
            return
        if not any(a._is_variable for a in args):
            return
        datas = [self.read(a.data) if a._is_variable else a.data for a in args]
        # (as in eager mode, a result that is a view of a Variable's buffer is copied: own_copy)
        fn = functools.partial(_owned, prim.impl, out._backend.xp,
                               tuple(i for i, a in enumerate(args) if a._is_variable))
        w = self.new(out.data)
        self.steps.append(_Step(fn, self._template(tuple(datas)), self._template(dict(params)),
                                [w.slot], "one", True, key=("op", prim.name)))
        out.data = w

    def saw(self, args: tuple) -> None:
        """An op read the Variables among ``args``: the program holds their buffers, so it
        is stale once one of them dies (a layer's ``self.w`` replaced by a new Variable)."""
        seen = self.variables
        for t in args:
            if t._is_variable and id(t) not in seen:
                seen[id(t)] = weakref.ref(t)

    def flag(self, obj: Any, name: str, value: Any) -> None:
        """The step read Python flag ``obj.name`` (``Module.training``): the program holds
        for this value only, and a call that finds another traces again (unless the step set
        the flag itself before reading it)."""
        key = (id(obj), name)
        if key not in self.flags and key not in self.flags_set:
            self.flags[key] = (weakref.ref(obj), name, value)

    def set_by_step(self, obj: Any, name: str, old: Any) -> None:
        """Python flag ``obj.name`` (now ``old``) is set by a step of the program that sets
        another object's flag (a module's ``trainable``, each of its Variables'): read before
        by an op, the program holds for ``old``; from now on it does not depend on the value
        the call found."""
        if name == "trainable" and id(obj) in self.variables:
            self.flag(obj, name, old)
        self.flags_set.add((id(obj), name))
        self.owners[id(obj)] = weakref.ref(obj)

    def flag_set(self, obj: Any, name: str, value: Any) -> None:
        """The step set Python flag ``obj.name`` to ``value`` itself (``model.train()`` in a
        train step, ``d.trainable = False`` in a GAN's generator step): a step of the program
        sets it again at each call, as the eager step would, and what the step reads from then
        on does not depend on the value the call found."""
        self.flags_set.add((id(obj), name))
        self.owners[id(obj)] = weakref.ref(obj)  # (replaced later: the step traces again)
        # the key names the object's type, not its identity: a module the step makes itself
        # is another object at every trace (and dead at a replay, when the step does nothing)
        self.opaque(functools.partial(_set_flag, weakref.ref(obj), name, value), [],
                    key=("set flag", type(obj).__qualname__, name, value))

    def read(self, buf: Any) -> Any:
        """A Variable's buffer as a program variable: the program holds the buffer itself
        (assignments write into it in place), so a replay reads its current values."""
        if type(buf) is TracedArray:
            return buf
        w = self.promoted_of(buf)  # a buffer the program allocates
        if w is not None:
            return w
        w = self.reads.get(id(buf))
        if w is None or w.a is not buf:
            w = self.reads[id(buf)] = self.new(buf)
            self.steps.append(_Step(_same, (self._const(buf),), {}, [w.slot], "one", True))
        return w

    def _promote(self, buf: Any, whole: bool) -> None:
        """A buffer the library allocated outside the trace (``xp.zeros(shape)``) and a
        traced call now writes into: the program allocates a fresh copy of its current
        contents at each replay (``whole``: the call overwrites all of it, so a fresh empty
        buffer), so no values carry over from one call to the next."""
        w = self.new(buf)
        self.promoted[id(buf)] = w
        if whole:
            xp = np if isinstance(buf, np.ndarray) else _real(backend_of(buf).xp)
            self.steps.append(_Step(_fresh_empty, (buf.shape, self._const(buf.dtype), self._const(xp)),
                                    {}, [w.slot], "one", True))
        else:
            init = self._const(buf.copy())
            self.steps.append(_Step(_fresh_copy, (init,), {}, [w.slot], "one", True))

    def _result(self, res: Any, args: tuple, kwargs: dict) -> TracedArray:
        # a result that is one of the traced inputs (in-place ufunc, asarray of an array)
        # stays that program variable; anything else is a new one. A NumPy scalar is
        # immutable and may be a shared object (np.True_ & np.False_ returns the np.False_ it
        # was given): being the same object says nothing of where its value came from
        if isinstance(res, np.generic):
            return self.new(res)
        if not kwargs:
            nested = False
            for x in args:
                t = type(x)
                if t is TracedArray:
                    if x.a is res and x.tr is self:
                        return x
                elif t is tuple or t is list:
                    nested = True
            if not nested:
                return self.new(res)
        for x in _leaves(args, kwargs):
            if type(x) is TracedArray and x.a is res and x.tr is self:
                return x
        return self.new(res)

    # opaque steps: stateful library calls replayed as one call
    def opaque(self, fn: Callable[..., Any], arrays: list[Any], key: Any) -> Any:
        ua = [_unwrap(a) for a in arrays]
        self.suspended += 1
        try:
            res = fn(*ua)
        finally:
            self.suspended -= 1
        targs = tuple(self._template(a) for a in arrays)
        if res is None:
            self.steps.append(_Step(fn, targs, {}, [], None, False, key, host=True))
            return None
        if _is_array(res):
            w = self.new(res)
            self.steps.append(_Step(fn, targs, {}, [w.slot], "one", False, key, host=True))
            return w
        items = []
        outs = []
        for r in res:
            w = self.new(r)
            outs.append(w.slot)
            items.append(w)
        self.steps.append(_Step(fn, targs, {}, outs, type(res), False, key, host=True))
        return type(res)(items)


def _variable_write(fn: Any, buf: Any) -> str | None:
    """Why a traced call that writes into ``buf`` is refused, or None: ``buf`` is a Variable's
    buffer, or a view of one (``np.copyto(v.data, x)``, ``out=v.data``), and the program
    would write a fresh buffer of its own at each replay, so the Variable would stop
    changing (``v.assign`` is a step of the program, replayed at each call)."""
    for b in (buf, getattr(buf, "base", None)):
        owner = variable_of_buffer(b) if b is not None else None
        if owner is not None:
            return (f"gt.function: {getattr(fn, '__name__', fn)} at {user_line()} writes into "
                    f"the buffer of Variable {owner.name or '<unnamed>'} (its .data) directly; "
                    "the program that replays this step would write a buffer of its own "
                    "instead, and the Variable would stop changing. Use v.assign(value) (or "
                    "assign_add, assign_sub), which the program replays at each call")
    return None


def _owned(impl: Any, xp: Any, variables: tuple[int, ...], *arrays: Any, **params: Any) -> Any:
    out = impl(xp, *arrays, **params)
    for i in variables:
        out = own_copy(out, arrays[i])
    return out


def _same(a: Any) -> Any:
    return a


# Calls whose result's shape depends on the values: a replay could not keep its shapes.
_DATA_SHAPED = {np.nonzero, np.flatnonzero, np.argwhere, np.unique, np.extract,
                _METHODS["nonzero"], _METHODS["compress"], np.compress, np.bincount,
                np.trim_zeros, np.setdiff1d, np.intersect1d, np.union1d, np.setxor1d,
                *[getattr(np, n) for n in ("unique_values", "unique_counts", "unique_inverse",
                                           "unique_all") if hasattr(np, n)]}


def _data_shaped(fn: Any, args: tuple, kwargs: dict) -> bool:
    """Whether the result's shape depends on the values of traced operands: a function of
    :data:`_DATA_SHAPED`, a boolean-mask index, ``np.where(cond)`` with one argument (the
    indices), ``repeat`` with traced counts."""
    try:
        if fn in _DATA_SHAPED:
            return True
    except TypeError:  # an unhashable callable
        return False
    if fn is operator.getitem:
        return _bool_index(args[1])
    if fn is np.where:
        return len(args) + len(kwargs) == 1
    if fn is np.repeat or fn is _METHODS["repeat"]:
        reps = args[1] if len(args) > 1 else kwargs.get("repeats")
        return type(reps) is TracedArray  # (a 0-d count too: it sets the result's length)
    return False


def _bool_index(idx: Any, traced_only: bool = False) -> bool:
    """Whether an index holds a boolean array (a mask: the result's shape depends on it);
    ``traced_only``: a mask that is a traced value."""
    items = idx if type(idx) is tuple else (idx,)
    for it in items:
        if traced_only and type(it) is not TracedArray:
            continue
        a = it.a if type(it) is TracedArray else it
        if getattr(a, "dtype", None) is not None and a.dtype == np.bool_ and getattr(a, "ndim", 0) > 0:
            return True
    return False


def _fresh_empty(shape: tuple[int, ...], dtype: Any, xp: Any = np) -> Any:
    return xp.empty(shape, dtype)


def _overwrites(fn: Any, args: tuple, kwargs: dict, buf: Any) -> bool:
    """Whether ufunc call ``fn(*args, out=buf)`` (or ``np.copyto(buf, src)``, ``np.clip(a, lo,
    hi, out=buf)``) writes every element of ``buf``."""
    if fn is np.copyto:  # (the source broadcasts to the destination, so all of it, unless
        src = args[1] if len(args) > 1 else kwargs.get("src")  # a where= mask picks)
        return args[0] is buf and "where" not in kwargs and len(args) <= 3 and not (
            isinstance(src, np.ndarray) and np.may_share_memory(src, buf))
    if fn is np.clip and "where" not in kwargs:  # elementwise over its three operands
        operands = [*args[:3], *(kwargs[k] for k in ("a", "a_min", "a_max", "min", "max")
                                 if k in kwargs)]
    elif type(fn) is not np.ufunc or fn.signature is not None or "where" in kwargs:
        return False  # (a generalized ufunc, matmul: its core dimensions do not broadcast)
    else:
        operands = list(args[:fn.nin])
    for a in operands:  # an operand that is the buffer or a view of it is read
        if a is buf or (isinstance(a, np.ndarray) and np.may_share_memory(a, buf)):
            return False
    try:
        shape = np.broadcast_shapes(*(getattr(a, "shape", ()) for a in operands))
    except ValueError:
        return False
    return shape == buf.shape


def _fresh_copy(a: Any) -> Any:
    return a.copy()


def _written(fn: Any, targs: Any, tkw: dict) -> list[Any]:
    """The argument templates a call writes into: ``out=`` (also given positionally, as
    ``np.dot(a, b, out)``), the target of an in-place method or ``setitem``, the first
    operand of ``ufunc.at``."""
    out: list[Any] = []
    o = tkw.get("out") if tkw else None
    if o is None:
        pos = _out_position(fn)
        if 0 <= pos < len(targs):
            o = targs[pos]
        else:
            outs = _kernel_outputs(fn, targs)
            if outs:
                o = tuple(outs)
    if o is not None:
        out.extend(o if isinstance(o, tuple) else (o,))
    if fn in _MUTATING or _device_mutator(fn) or getattr(fn, "__name__", "") == "at" or (
            fn is _BYTESWAP and (tkw.get("inplace") if tkw else len(targs) > 1 and targs[1])):
        if targs:
            out.append(targs[0])
    return out


_OUT_POSITION: dict[Any, int] = {}


def _kernel_outputs(fn: Any, args: Any) -> Any:
    """The output arguments of a device ufunc's or elementwise kernel's call given
    positionally after its ``nin`` inputs (``cupy.multiply(a, 2.0, a)``, CuPy's
    ``ElementwiseKernel``: ``kernel(x, y, out)``), else (). (NumPy's own ufuncs receive their
    outputs as ``out=``.)"""
    nin = getattr(fn, "nin", None)
    if type(nin) is not int or isinstance(fn, np.ufunc) or len(args) <= nin:
        return ()
    return args[nin:]


def _out_position(fn: Any) -> int:
    """Where a function (not a ufunc: NumPy hands those their outputs as ``out=``) takes its
    ``out`` argument when it is given positionally, else -1; from its signature, once."""
    try:
        return _OUT_POSITION[fn]
    except KeyError:
        pass
    except TypeError:  # an unhashable callable
        return -1
    pos = -1
    if type(fn) is _Method:
        pos = fn.out_pos
    elif not isinstance(fn, np.ufunc):
        try:
            for i, p in enumerate(inspect.signature(fn).parameters.values()):
                if p.kind not in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
                    break
                if p.name == "out":
                    pos = i
                    break
        except (TypeError, ValueError):  # no signature to read
            pass
    if len(_OUT_POSITION) >= 4096:  # callables made per call (partials) must not pile up
        _OUT_POSITION.clear()
    _OUT_POSITION[fn] = pos
    return pos


# --------------------------------------------------------------------------- programs


class _Program:
    """The replayable straight-line program of one trace."""

    def __init__(self, tr: _Trace, n_in: int, out_slots: list[int | None], name: str,
                 graphs: bool = False) -> None:
        steps = _dead_code(tr.steps, out_slots)
        steps = _fuse_elementwise(steps, tr.arrays, out_slots, device=config.fusion)
        steps = _host_rewrites(steps, tr.arrays)
        # (a module name of gradtape's: NumPy's RuntimeWarnings from the program are ignored
        # as the eager ops' are, by the filter of gradtape._src.config)
        ns: dict[str, Any] = {"__name__": __name__}
        names: dict[int, str] = {}

        def const_name(c: _Const) -> str:
            nm = names.get(id(c))
            if nm is None:
                nm = names[id(c)] = f"c{len(names)}"
                ns[nm] = c.value
            return nm

        fn_names: dict[int, str] = {}

        def fn_name(f: Any) -> str:
            nm = fn_names.get(id(f))
            if nm is None:  # fused runs by their kind, for a reader of program_source
                kind = f"{f.__name__}_" if isinstance(f, (_FusedRun, _DeviceRun)) else ""
                nm = fn_names[id(f)] = f"{kind}f{len(fn_names)}"
                ns[nm] = f
            return nm

        held: list[_Const] = []

        def r(x: Any) -> str:
            t = type(x)
            if t is _Slot:
                return f"s{x.n}"
            if t is _Const:
                return const_name(x)
            if t is tuple:
                inner = ", ".join(r(v) for v in x)
                return f"({inner},)" if len(x) == 1 else f"({inner})"
            if t is list:
                return "[" + ", ".join(r(v) for v in x) + "]"
            if t is dict:
                return "{" + ", ".join(f"{k!r}: {r(v)}" for k, v in x.items()) + "}"
            if t is slice:
                return f"slice({r(x.start)}, {r(x.stop)}, {r(x.step)})"
            if x is None or t is bool or t is int or t is str:
                return repr(x)
            if x is Ellipsis:
                return "..."
            if t is float and np.isfinite(x):
                return repr(x)
            c = _Const(x)
            held.append(c)  # (names are cached by id: a freed constant's id could come back for
            return const_name(c)  # another value, which would then read this one's name)

        def render(st: _Step) -> list[str]:
            """The step's lines of the generated function."""
            fn = _threaded(st, tr.arrays)
            if fn is operator.setitem:
                return [f"{r(st.args[0])}[{r(st.args[1])}] = {r(st.args[2])}"]
            args = ", ".join(r(a) for a in st.args)
            kw = ", ".join(f"{k}={r(v)}" for k, v in st.kwargs.items())
            if type(fn) is _Method:
                rargs = ", ".join(r(a) for a in st.args[1:])
                expr = f"{r(st.args[0])}.{fn.name}({rargs}{', ' if rargs and kw else ''}{kw})"
            elif type(fn) is _Attr:
                expr = f"{r(st.args[0])}.{fn.name}"
            elif fn is operator.getitem:
                expr = f"{r(st.args[0])}[{r(st.args[1])}]"
            else:
                expr = f"{fn_name(fn)}({args}{', ' if args and kw else ''}{kw})"
            if st.out_kind is None:
                return [expr]
            if st.out_kind == "one":
                return [f"s{st.outs[0]} = {expr}"]
            return [f"_r = {expr}"] + [f"s{o} = _r[{i}]" for i, o in enumerate(st.outs) if o >= 0]

        step_lines = [(st, render(st)) for st in steps]
        # each program variable is deleted after its last use (as eagerly, where a temporary
        # dies with its last reference): the step's arrays do not all stay alive until it
        # returns, and a buffer freed is the next one allocated, still in cache
        last: dict[int, int] = {}
        for i, st in enumerate(steps):
            for n in (*_slots_of((st.args, st.kwargs)), *st.outs):
                if n >= 0:
                    last[n] = i
        returned = {slot for slot in out_slots if slot is not None}
        dead_after: dict[int, list[int]] = {}
        for n, i in last.items():
            if n not in returned:
                dead_after.setdefault(i, []).append(n)
        lines = []
        for i, (st, mine) in enumerate(step_lines):
            lines.extend(mine)
            dead = [f"s{n}" for n in sorted(dead_after.get(i, ()))]
            if st.out_kind not in (None, "one"):
                dead.append("_r")
            if dead:
                lines.append(f"del {', '.join(dead)}")
        outs = [f"s{slot}" if slot is not None else "None" for slot in out_slots]
        params = ", ".join(f"s{i}" for i in range(n_in))
        body = "\n    ".join(lines) if lines else "pass"
        src = (f"def replay({params}):\n    {body}\n    return ({', '.join(outs)}"
               f"{',' if len(outs) == 1 else ''})\n")
        self.source = src
        code = compile(src, f"<gt.function {name}>", "exec")
        exec(code, ns)
        self.run: Callable[..., tuple] = ns["replay"]
        self.signature_steps = steps
        self.ns, self.out_slots, self.name = ns, list(out_slots), name
        # cuda_graph=True: cut now, while the trace's arrays (which the cut inspects) exist
        self.segment_list: list[_Segment] | None = None
        self.writes_across = False
        if graphs:
            self.segment_list, self.writes_across = self._segments(step_lines, tr.arrays)

    def _segments(self, step_lines: list[tuple[_Step, list[str]]], arrays: list[Any]
                  ) -> tuple[list[_Segment], bool]:
        """The program cut into runs of device steps (a CUDA graph each, see
        :class:`_GraphRunner`) and single host steps (opaque steps: optimizer updates, random
        draws, value checks; and steps that write a constant, such as a Variable's buffer),
        each a generated function of the program variables it reads from earlier segments,
        returning the ones it defines or writes that later segments or the outputs read; and
        whether a device step writes in place memory its run did not make (a program
        variable from outside the run, or a view of one or of a constant; checked on
        ``arrays``, the trace's arrays by slot): a graph would write its copy instead."""
        groups: list[tuple[bool, list[tuple[_Step, list[str], list[Any]]]]] = []
        for st, lines in step_lines:
            written = _written(st.fn, st.args, st.kwargs) if not st.pure else []
            device = not st.host and not any(type(w) is _Const for w in written) \
                and not _blas_step(st)
            if device and groups and groups[-1][0]:
                groups[-1][1].append((st, lines, written))
            else:
                groups.append((device, [(st, lines, written)]))
        reads: list[list[int]] = []  # per group: slots read (or written) that it did not define
        defs: list[list[int]] = []  # per group: slots defined or written
        across = False
        for device, members in groups:
            mine: set[int] = set()
            ins: list[int] = []
            out: list[int] = []
            outside: list[Any] = []  # arrays the run did not make: its inputs, constants
            for st, _, templates in members:
                written = [w.n for w in templates if type(w) is _Slot]
                if device:
                    outside.extend(arrays[n] for n in _slots_of((st.args, st.kwargs))
                                   if n not in mine and n < len(arrays))
                    outside.extend(c.value for c in _parts_of((st.args, st.kwargs), _Const)
                                   if _is_array(c.value))
                    for n in written:
                        if n not in mine or _shares_with(arrays[n], outside):
                            across = True
                for n in [*_slots_of((st.args, st.kwargs)), *written]:
                    if n not in mine and n not in ins:
                        ins.append(n)
                for n in [o for o in st.outs if o >= 0] + written:
                    mine.add(n)
                    if n not in out:
                        out.append(n)
            reads.append(ins)
            defs.append(out)
        needed = {n for n in self.out_slots if n is not None}
        segments: list[_Segment] = []
        for k in range(len(groups) - 1, -1, -1):
            device, members = groups[k]
            outs = [n for n in defs[k] if n in needed]
            needed |= set(reads[k])
            body = [line for _, lines, _ in members for line in lines] or ["pass"]
            params = ", ".join(f"s{n}" for n in reads[k])
            ret = ", ".join(f"s{n}" for n in outs)
            src = (f"def segment({params}):\n    " + "\n    ".join(body)
                   + f"\n    return ({ret}{',' if len(outs) == 1 else ''})\n")
            ns = dict(self.ns)
            exec(compile(src, f"<gt.function {self.name} segment {k}>", "exec"), ns)
            segments.append(_Segment(ns["segment"], reads[k], outs, device))
        segments.reverse()
        return segments, across


#: Device functions that run on cuBLAS (or cuSOLVER: every ``linalg`` one). CuPy refuses
#: cuBLAS calls while a stream is captured, so these steps run between the graphs, as host
#: steps do (their launches are not relaunched from a graph).
_BLAS_NAMES = frozenset(("matmul", "imatmul", "dot", "vdot", "inner", "tensordot", "einsum"))
#: Products in CuPy's ``linalg`` modules that are elementwise kernels (no cuBLAS call).
_NOT_BLAS = frozenset(("outer", "kron", "cross"))


#: Primitives whose impl calls cuBLAS or cuSOLVER on a device: logged as one step when no
#: operand is traced (Variables and constants alone, ``W1 @ W2``).
_BLAS_PRIMITIVES = frozenset(("matmul", "dot", "einsum", "inv", "solve", "det", "det_cofactor",
                              "slogdet", "cholesky", "svd", "norm", "conv2d",
                              "conv2d_weight_grad", "conv_transpose2d"))


def _blas_step(st: _Step) -> bool:
    """Whether a logged step runs cuBLAS (see :data:`_BLAS_NAMES`): a device function, or a
    whole primitive logged for untraced operands (its key ``("op", name)``)."""
    key = st.key
    if type(key) is tuple and len(key) == 2 and key[0] == "op":
        return key[1] in _BLAS_PRIMITIVES
    return _calls_blas(st.fn)


def _calls_blas(fn: Any) -> bool:
    """Whether a logged step's function is one of :data:`_BLAS_NAMES` (an operator, its
    reflected form, or a device module's function) or a ``linalg`` function."""
    fn = getattr(fn, "_gt_reflects", fn)
    name = getattr(fn, "__name__", None)
    if not isinstance(name, str):
        name = getattr(fn, "name", None)
    if not isinstance(name, str) or name in _NOT_BLAS:
        return False
    return name in _BLAS_NAMES or name.startswith("linalg.") or ".linalg" in str(
        getattr(fn, "__module__", "") or "")


def _shares_with(a: Any, others: list[Any]) -> bool:
    """Whether device array ``a`` may share memory with one of ``others``."""
    if not _is_array(a) or isinstance(a, (np.ndarray, np.generic)):
        return False
    may = backend_of(a).xp.may_share_memory
    return any(o is a or (_is_array(o) and not isinstance(o, (np.ndarray, np.generic))
                          and may(a, o)) for o in others)


class _Segment:
    """A piece of a program (:meth:`_Program._segments`): ``fn(*arrays of ins)`` returns the
    arrays of ``outs``; ``device``: only device work (a CUDA graph can hold it)."""

    __slots__ = ("fn", "ins", "outs", "device")

    def __init__(self, fn: Callable[..., tuple], ins: list[int], outs: list[int], device: bool) -> None:
        self.fn, self.ins, self.outs, self.device = fn, ins, outs, device


class _GraphRunner:
    """A device program replayed with its device segments as CUDA graphs
    (``gt.function(..., cuda_graph=True)``): each run of device steps between two host steps
    is captured once (the backend's ``capture``: CuPy's stream capture; on the device-strict
    backend an emulation that records the kernels and relaunches them with the arguments they
    had), then relaunched at each call. A graph reads fixed buffers: an input that an earlier
    graph made is read where it is (its buffer is fixed already); any other (the call's
    arrays, a host step's results) is copied into a buffer of the graph's own, of the same
    layout, before each launch. Every array the step returns is copied out, so a result never
    changes under the caller. Host steps run as Python between the launches.

    Not captured (plain replay instead, for the reason given): a program in which a device
    step writes in place an array made outside its own run (the graph would write a copy, and
    a view made elsewhere would not see it); a segment whose input cannot be copied with its
    layout (a strided view: a different layout changes a reduction's rounding); a segment
    whose capture fails (a host synchronisation inside: a sort on CuPy), with one warning; a
    call on another stream than the one the graphs were first launched on (CuPy)."""

    def __init__(self, program: _Program, capture: Callable[..., Any]) -> None:
        self.capture = capture
        self.program = program
        assert program.segment_list is not None
        self.segments = program.segment_list
        self.out_slots = program.out_slots
        self.usable = not program.writes_across
        self.graphs: list[Any] = [None] * len(self.segments)  # None: not yet; False: plain
        self.fixed: set[int] = set()  # ids of the graphs' own buffers
        self.guards: list[Callable[[], bool]] = []  # per graph: may it launch now?
        self.captured = 0
        self.failure = ""  # why the last capture failed
        self.name = program.name

    def run(self, *inputs: Any) -> tuple:
        if not self.usable or not all([ok() for ok in self.guards]):
            return self.program.run(*inputs)
        env: dict[int, Any] = dict(enumerate(inputs))
        graphs = self.graphs
        for k, seg in enumerate(self.segments):
            args = [env[n] for n in seg.ins]
            g = graphs[k]
            if seg.device and g is None:
                g = graphs[k] = self._capture(seg, args)
                if g is None:  # the capture failed: see whether the run itself does
                    res = seg.fn(*args)  # (a value error raises here and is the call's: the
                    # next call captures again); it does not: it replays without a graph
                    graphs[k] = False
                    warnings.warn(f"gt.function {self.name!r}: a part of the step could not be "
                                  f"captured as a CUDA graph ({self.failure}); it replays "
                                  "without one", stacklevel=3)
                    for n, a in zip(seg.outs, res):
                        env[n] = a
                    continue
            res = g(args) if g else seg.fn(*args)
            for n, a in zip(seg.outs, res):
                env[n] = a
        return tuple(None if n is None else _copy_out(env[n]) for n in self.out_slots)

    def _capture(self, seg: _Segment, args: list[Any]) -> Any:
        fixed = self.fixed
        shared = [id(a) in fixed for a in args]  # an earlier graph's buffer, read where it is
        fixed_in = [a if s else _same_layout_copy(a) for a, s in zip(args, shared)]
        if any(b is None for b in fixed_in):
            return False
        try:
            launch, outs = self.capture(seg.fn, fixed_in)
        except Exception as exc:
            self.failure = f"{type(exc).__name__}: {exc}"
            return None
        fixed_out = list(outs)
        fixed.update(id(a) for a in fixed_in + fixed_out)
        self.guards.append(getattr(launch, "usable", _always))
        self.captured += 1

        def launch_with(arrays: list[Any]) -> list[Any]:
            for buf, a, s in zip(fixed_in, arrays, shared):
                if a is not buf and (s or a.strides != buf.strides):
                    # another layout of the same signature (the graph's reductions would add
                    # in another order than the plain replay), or the earlier graph whose
                    # buffer this one reads ran plainly this call: this run runs plainly too
                    return list(seg.fn(*arrays))
            for buf, a in zip(fixed_in, arrays):
                if a is not buf:
                    buf[...] = a
            launch()
            return fixed_out
        return launch_with


def _always() -> bool:
    return True


def _same_layout_copy(a: Any) -> Any:
    """A copy of device array ``a`` with its strides (None where a copy cannot have them: a
    view with gaps)."""
    b = a.copy(order="K")
    return b if b.strides == a.strides else None


def _copy_out(a: Any) -> Any:
    """A result of a graph-replayed step: arrays are copied (they may be, or view, a graph's
    buffer, which the next launch overwrites), keeping their layout (a transposed result stays
    transposed, as the plain replay returns it: a caller's reduction on it adds in the same
    order)."""
    return a.copy(order="K") if _is_array(a) else a


class _Chunked:
    """A large elementwise ufunc call on equal-shape contiguous arrays, run in chunks on the
    CPU thread pool as the eager forward runs it (``gradtape._src.cpu.parallel``)."""

    __slots__ = ("uf", "__name__")

    def __init__(self, uf: np.ufunc) -> None:
        self.uf = uf
        self.__name__ = uf.__name__

    def __call__(self, *arrays: Any) -> Any:
        uf = self.uf
        shape = arrays[0].shape
        for a in arrays:
            if type(a) is not np.ndarray or a.shape != shape or not a.flags.c_contiguous:
                return uf(*arrays)
        flat = [a.reshape(-1) for a in arrays]
        n = flat[0].size
        probe = uf(*[f[:1] for f in flat])
        out = np.empty(shape, probe.dtype)
        out_flat = out.reshape(-1)
        chunk = pool.CHUNK
        starts = iter(range(0, n, chunk))

        def work() -> None:
            for a in starts:
                uf(*[f[a:a + chunk] for f in flat], out=out_flat[a:a + chunk])

        futures = [pool.submit(work) for _ in range(min(pool.THREADS, -(-n // chunk)) - 1)]
        work()
        for f in futures:
            if not f.cancel():
                f.result()
        return out


def _threaded(st: _Step, arrays: list[Any]) -> Any:
    """``st.fn``, or its chunked form for a large elementwise ufunc step (the size at which
    the eager forward uses the thread pool: ``pool.MIN_SIZE``)."""
    fn = st.fn
    if type(fn) is not np.ufunc or fn.nout != 1 or fn.signature is not None or st.kwargs \
            or st.out_kind != "one" or pool.THREADS < 2 or not st.args \
            or not all(type(a) is _Slot for a in st.args):
        return fn  # (elementwise ufuncs only: matmul is one with core dimensions)
    out = arrays[st.outs[0]]
    if not (type(out) is _Shadow or isinstance(out, np.ndarray)) or out.size < pool.MIN_SIZE \
            or out.size <= pool.CHUNK:
        return fn
    if any(arrays[a.n].shape != out.shape for a in st.args):
        return fn
    return _Chunked(fn)


class _FusedRun:
    """Consecutive elementwise ufunc steps of one output shape, run as one blocked program:
    row blocks of about ``pool.BLOCK`` elements go through the whole chain while they are in
    cache, intermediates live in block-sized scratch buffers, and only the values used after
    the run are written to full arrays (the blocked NumPy programs of the fused backward do
    the same). Each element goes through the same ufunc calls as unfused, so the values are
    the same."""

    def __init__(self, members: list[_Step], inputs: list[int], outputs: list[int],
                 shape: tuple[int, ...], dtypes: dict[int, Any], full: set[int]) -> None:
        self.__name__ = f"fused_{len(members)}"
        rows = shape[0]
        inner = math.prod(shape[1:])
        outs = {n: f"o{k}" for k, n in enumerate(outputs)}
        temps = [st.outs[0] for st in members if st.outs[0] not in outs]
        # intermediates share scratch buffers as registers do: a buffer whose value was read
        # for the last time takes the next intermediate of its dtype (a 120-step chain needs
        # two or three, not 120 block-sized buffers per thread)
        temp_set = set(temps)
        last: dict[int, int] = {}
        for k, st in enumerate(members):
            for a in st.args:
                if type(a) is _Slot and a.n in temp_set:
                    last[a.n] = k
        reg: dict[int, int] = {}  # intermediate -> its scratch buffer
        reg_dtypes: list[Any] = []
        free: dict[Any, list[int]] = {}
        for k, st in enumerate(members):
            o = st.outs[0]
            if o in temp_set:
                dt = np.dtype(dtypes[o])
                spare = free.get(dt)
                reg[o] = spare.pop() if spare else len(reg_dtypes)
                if reg[o] == len(reg_dtypes):
                    reg_dtypes.append(dt)
            done = {a.n for a in st.args if type(a) is _Slot and a.n in temp_set and last[a.n] == k}
            if o in temp_set and o not in last:  # (never read: free at once)
                done.add(o)
            for n in sorted(done):
                free.setdefault(np.dtype(dtypes[n]), []).append(reg[n])
        # as the fused backward runs its programs: blocks of pool.BLOCK elements split over the
        # pool's threads when there are at least two per thread, else on one thread blocks
        # whose buffers' slices all stay in cache (pool.block_size)
        step = max(1, pool.BLOCK // max(inner, 1))
        self.split_blocks = -(-rows // step)
        if min(pool.THREADS, self.split_blocks // pool.BLOCKS_PER_THREAD) < 2:
            itemsize = max((np.dtype(dtypes[n]).itemsize for n in (*outputs, *temps)), default=4)
            block = pool.block_size(len(full) + len(outputs) + len(reg_dtypes), itemsize)
            step = max(1, block // max(inner, 1))
        ns: dict[str, Any] = {"np": np, "__name__": __name__}
        src = []
        names: dict[int, str] = {n: f"i{k}" for k, n in enumerate(inputs)}
        params = ", ".join([names[n] for n in inputs] + list(outs.values()))
        src.append(f"def blocks(lo, hi, {params}):")
        for b, dt in enumerate(reg_dtypes):  # per call of blocks (per thread): its own scratch
            ns[f"dt_t{b}"] = dt
            src.append(f"    t{b} = np.empty({(step,) + tuple(shape[1:])!r}, dt_t{b})")
        src.append(f"    for r in range(lo, hi, {step}):")
        src.append(f"        e = r + {step}")
        src.append(f"        m = {step} if e <= {rows} else {rows} - r")
        for n in inputs:  # full-shape inputs are sliced; broadcast ones are passed whole
            if n in full:
                src.append(f"        b{n} = {names[n]}[r:e]")
        consts = 0
        for k, st in enumerate(members):
            args = []
            for a in st.args:
                if type(a) is _Slot:
                    if a.n in names:
                        args.append(f"b{a.n}" if a.n in full else names[a.n])
                    else:  # made by an earlier member
                        args.append(f"{outs[a.n]}[r:e]" if a.n in outs else f"t{reg[a.n]}[:m]")
                else:
                    value = a.value if type(a) is _Const else a
                    ns[f"k{consts}"] = value
                    full_const = np.shape(value) == tuple(shape)  # sliced like a full input
                    args.append(f"k{consts}[r:e]" if full_const else f"k{consts}")
                    consts += 1
            ns[f"u{k}"] = st.fn
            o = st.outs[0]
            target = f"{outs[o]}[r:e]" if o in outs else f"t{reg[o]}[:m]"
            src.append(f"        u{k}({', '.join(args)}, out={target})")
        exec(compile("\n".join(src), f"<gt.function fused run of {len(members)}>", "exec"), ns)
        self.blocks = ns["blocks"]
        self.source = "\n".join(src)
        self.shape = shape
        self.rows = rows
        self.step = step
        self.out_dtypes = [dtypes[n] for n in outputs]

    def __call__(self, *arrays: Any) -> Any:
        outs = [np.empty(self.shape, dt) for dt in self.out_dtypes]
        rows, step = self.rows, self.step
        n_blocks = -(-rows // step)
        threads = min(pool.THREADS, self.split_blocks // pool.BLOCKS_PER_THREAD)
        if threads < 2:
            self.blocks(0, rows, *arrays, *outs)
            return tuple(outs)
        # row ranges of whole blocks on the thread pool, as the fused backward runs them
        per = -(-n_blocks // threads) * step
        futures = [pool.submit(self.blocks, lo, min(lo + per, rows), *arrays, *outs)
                   for lo in range(per, rows, per)]
        try:
            self.blocks(0, min(per, rows), *arrays, *outs)
        finally:
            for f in futures:
                f.result()
        return tuple(outs)


class _DeviceRun:
    """Consecutive elementwise ufunc steps on a device backend, run as one CUDA kernel: the
    run's calls become the nodes of a :class:`~gradtape._src.codegen.graph.Graph` (leaves: the
    arrays the run reads; Python numbers: constants), rendered by the renderer of the fused
    backward (:func:`~gradtape._src.codegen.cuda.cupy_kernel`) and launched once, writing only
    the values used after the run. The kernel computes each value as the separate ufunc
    kernels would, in one thread per element, so results agree within float rounding (float32
    and float64 runs only: CuPy rounds each float16 result to half, a kernel would not)."""

    def __init__(self, graph: Graph, leaves: list[Any], params: list[Any],
                 leaf_dtypes: tuple[str, ...], dtype: str, shape: tuple[int, ...], n_out: int,
                 xp: Any) -> None:
        key = ("gt.function", tuple(graph.nodes), tuple(graph.outputs))
        self.spec, self.kernel = cupy_kernel(key, lambda: graph, leaf_dtypes, dtype,
                                             (False,) * n_out, xp=xp)
        self.__name__ = f"device_fused_{len(graph.nodes)}"
        self.leaves = leaves  # per graph leaf: ("arg", k) an argument, ("const", value) read as is
        self.params = [params[i] for i in self.spec.params]  # scalar parameters (a -0.0)
        self.shape, self.dtype, self.xp, self.n_out = shape, dtype, xp, n_out

    def __call__(self, *arrays: Any) -> Any:
        xp = self.xp
        outs = [xp.empty(self.shape, self.dtype) for _ in range(self.n_out)]
        ins = [arrays[v] if kind == "arg" else v
               for kind, v in (self.leaves[i] for i in self.spec.leaves)]
        self.kernel(*ins, *self.params, *outs)
        return tuple(outs)


# device ufunc name (CuPy's without its "cupy_" prefix) -> how its call is a graph node
_DEVICE_BINARY = {"add": "add", "subtract": "sub", "multiply": "mul", "divide": "div",
                  "true_divide": "div", "power": "pow"}
# one-argument functions of the renderer's vocabulary that are NumPy (and CuPy) ufuncs, by name
# (not sign: CuPy's float sign gives 0 for NaN, the renderer's NumPy's NaN)
_DEVICE_UNARY = {"negative": "neg", "absolute": "abs", "fabs": "abs", **{
    n: n for n, arity in FUNCTIONS.items()
    if arity == 1 and n != "sign" and isinstance(getattr(np, n, None), np.ufunc)}}


# Python operators on device arrays (``a + b`` is logged as operator.add): their ufunc's name
_DEVICE_OPERATORS = {operator.add: "add", operator.sub: "subtract", operator.mul: "multiply",
                     operator.truediv: "divide", operator.pow: "power", operator.neg: "negative",
                     operator.abs: "absolute"}


def _device_op(fn: Any) -> str | None:
    """The graph operation of a device ufunc (or operator) the forward fusion renders, else
    None."""
    try:
        op = _DEVICE_OPERATORS.get(getattr(fn, "_gt_reflects", fn))
    except TypeError:  # an unhashable callable (an opaque step's)
        return None
    if op is not None:
        return op
    if isinstance(fn, np.ufunc) or getattr(fn, "nout", None) != 1:
        return None
    name = getattr(fn, "__name__", "")
    name = name[5:] if name.startswith("cupy_") else name
    if name in _DEVICE_BINARY or name in _DEVICE_UNARY or name in ("maximum", "minimum"):
        return name
    return None


def _device_node(g: Graph, name: str, ins: list[int]) -> int:
    """Add the node(s) of device ufunc ``name`` on graph nodes ``ins``."""
    if name in _DEVICE_BINARY:
        return g.add((_DEVICE_BINARY[name], *ins))
    if name in _DEVICE_UNARY:
        return g.add((_DEVICE_UNARY[name], *ins))
    a, b = ins  # maximum / minimum: NaN propagates from either side, as NumPy's and CuPy's
    first = g.add(("or", g.add(("ne", a, a)), g.add(("gt" if name == "maximum" else "lt", a, b))))
    return g.add(("where", first, a, b))


def _device_run(members: list[_Step], inputs: list[int], outputs: list[int],
                arrays: list[Any]) -> _DeviceRun | None:
    """The one-kernel form of a run of device ufunc steps, or None where it cannot be one
    (operands of several dtypes, an output that would be a plain input)."""
    dtypes = {arrays[st.outs[0]].dtype for st in members}
    if len(dtypes) != 1:
        return None
    dt = dtypes.pop()
    if dt.name not in ("float32", "float64"):  # float16: CuPy rounds each op's result to half,
        return None  # a kernel computing in float would not (overflow, constants)
    leaves: list[Any] = []
    leaf_dtypes: list[str] = []
    params: list[Any] = []
    env: dict[int, int] = {}
    g = Graph((), 0)
    leaf_of: dict[Any, int] = {}

    def leaf(kind: str, v: Any, a: Any) -> int | None:
        ident = (kind, v if kind == "arg" else id(v))
        k = leaf_of.get(ident)
        if k is None:
            if getattr(a, "dtype", None) != dt:  # one dtype in, as CuPy would not promote
                return None
            k = leaf_of[ident] = len(leaves)
            leaves.append((kind, v))
            leaf_dtypes.append(dt.name)
            g.leaf_kinds = tuple(g.leaf_kinds) + ("f",)
        return g.add(("leaf", k))

    position = {n: k for k, n in enumerate(inputs)}
    for st in members:
        ins: list[int] = []
        for a in st.args:
            t = type(a)
            if t is _Slot:
                node = env[a.n] if a.n in env else leaf("arg", position[a.n], arrays[a.n])
            elif t is _Const and not isinstance(a.value, (int, float, np.generic)):
                node = leaf("const", a.value, a.value)
            else:  # a number (_fusible let nothing else through), rounded to the run's dtype
                # as CuPy's weak scalars are; CUDA text has no inf/nan, and the graph's
                # constants know one zero: -0.0 is passed as a scalar parameter
                v = float(dt.type(a.value if t is _Const else a))
                if not math.isfinite(v):
                    node = None
                elif v == 0.0 and math.copysign(1.0, v) < 0:
                    node = g.add(("param", len(params)))
                    params.append(dt.type(v))
                    g.n_params = len(params)
                else:
                    node = g.const(v)
            if node is None:
                return None
            ins.append(node)
        name = _device_op(st.fn)
        assert name is not None  # _fusible checked
        if hasattr(st.fn, "_gt_reflects"):  # ``1.0 + x`` is logged as radd(x, 1.0)
            ins.reverse()
        env[st.outs[0]] = _device_node(g, name, ins)
    g.outputs = [env[n] for n in outputs]
    if any(g.nodes[n][0] in ("leaf", "const") for n in g.outputs):
        return None
    out = arrays[members[-1].outs[0]]
    xp = _real(backend_of(out).xp)
    return _DeviceRun(g, leaves, params, tuple(leaf_dtypes), dt.name, tuple(out.shape),
                      len(outputs), xp)


def _fusible(st: _Step, arrays: list[Any], device: bool = False) -> Any:
    """The key of an elementwise ufunc step the forward fusion may take, else None: its output
    shape for a NumPy step (large, floating, operands full-shape, broadcast along leading axes,
    or scalars), ``("device", shape)`` for a device ufunc the CUDA renderer knows (any size:
    each launch saved pays) when ``device`` (fused kernels are on, ``gt.config.fusion``)."""
    fn = st.fn
    if st.kwargs or st.out_kind != "one":
        return None
    out = arrays[st.outs[0]]
    shadow = type(out) is _Shadow
    host = shadow or type(out) is np.ndarray
    # a fused run writes C-ordered results; a call whose result had another layout (an
    # operand's order kept, 'K') stays as it is, so views of it alias as in eager mode
    if not (shadow or _is_array(out)) or getattr(out, "dtype", np.dtype(object)).kind != "f" \
            or out.ndim == 0 or not (out.c_contiguous if shadow else out.flags.c_contiguous):
        return None
    if type(fn) is not np.ufunc:
        if not device or shadow or isinstance(out, np.ndarray) or _device_op(fn) is None \
                or len(st.args) > getattr(fn, "nin", 2):  # (an output given positionally)
            return None
        key: Any = ("device", tuple(out.shape))
    else:  # (elementwise ufuncs: matmul is a ufunc whose core dimensions are not)
        if fn.nout != 1 or fn.signature is not None or not host or out.size < 2 * pool.BLOCK:
            return None
        key = out.shape
    for a in st.args:
        if type(a) is _Slot:
            v = arrays[a.n]
            shp = np.shape(v)
            if shp != out.shape and (len(shp) >= out.ndim or shp != out.shape[out.ndim - len(shp):]):
                return None
        elif type(a) is _Const:  # a Variable's buffer (read at each call) or a constant
            shp = np.shape(a.value)
            if shp != out.shape and (len(shp) >= out.ndim or shp != out.shape[out.ndim - len(shp):]):
                return None
        elif type(a) not in (float, int, bool):
            return None
    return key


def _host_rewrites(steps: list[_Step], arrays: list[Any]) -> list[_Step]:
    """``steps`` with each ``np.maximum(x, 0)`` of a host float array ``x`` of at least
    :data:`~gradtape._src.cpu.select.ROW_MIN` elements (a relu the trace logged as NumPy's
    call) replaced by :func:`~gradtape._src.cpu.select.host_relu`, which gives the same bits
    in less time (NumPy's maximum with a scalar runs without SIMD); the eager relu takes it
    too, so a replay stays bit for bit the eager step."""
    out = steps
    for i, st in enumerate(steps):
        if st.fn is np.maximum and not st.kwargs and len(st.args) == 2 \
                and type(st.args[0]) is _Slot and type(st.args[1]) in (int, float) \
                and st.args[1] == 0 and math.copysign(1.0, st.args[1]) > 0:
            a = arrays[st.args[0].n]
            if type(a) in (np.ndarray, _Shadow) and a.dtype.kind == "f" \
                    and a.dtype.itemsize in (2, 4, 8) and a.size >= ROW_MIN:
                if out is steps:
                    out = list(steps)
                out[i] = _Step(host_relu, (st.args[0],), {}, st.outs, st.out_kind, st.pure,
                               st.key, st.host)
    return out


def _fuse_elementwise(steps: list[_Step], arrays: list[Any], out_slots: list[int | None],
                      device: bool = False) -> list[_Step]:
    """Replace each run of 2 or more consecutive fusible steps of one shape whose results
    are partly used only inside the run by one :class:`_FusedRun` step (NumPy), or by one
    :class:`_DeviceRun` kernel (a device backend, when ``device``)."""
    uses: dict[int, list[int]] = {}
    for i, st in enumerate(steps):
        for n in _slots_of((st.args, st.kwargs)):
            uses.setdefault(n, []).append(i)
    final = {n for n in out_slots if n is not None}
    result: list[_Step] = []
    i = 0
    while i < len(steps):
        shape = _fusible(steps[i], arrays, device)
        j = i + 1
        if shape is not None:
            while j < len(steps) and _fusible(steps[j], arrays, device) == shape:
                j += 1
        if j - i < 2:
            result.append(steps[i])
            i += 1
            continue
        members = steps[i:j]
        made = {st.outs[0] for st in members}
        if len(made) != len(members):  # a member rewrites a slot: keep them as they are
            result.extend(members)
            i = j
            continue
        outputs = [n for n in (st.outs[0] for st in members)
                   if n in final or any(u >= j for u in uses.get(n, ()))]
        inputs: list[int] = []
        for st in members:
            for a in st.args:
                if type(a) is _Slot and a.n not in made and a.n not in inputs:
                    inputs.append(a.n)
        if len(outputs) == len(members) and shape[0] != "device":  # nothing stays in cache:
            # no gain on the CPU (a device kernel still saves launches and reads)
            result.extend(members)
            i = j
            continue
        assert shape is not None  # (a run has members)
        run: Any
        if shape[0] == "device":
            run = _device_run(members, inputs, outputs, arrays)
            if run is None:
                result.extend(members)
                i = j
                continue
        else:
            full = {n for n in inputs if np.shape(arrays[n]) == shape}
            dtypes = {st.outs[0]: arrays[st.outs[0]].dtype for st in members}
            run = _FusedRun(members, inputs, outputs, shape, dtypes, full)
        result.append(_Step(run, tuple(_Slot(n) for n in inputs), {}, outputs, tuple, False))
        i = j
    return result


def _parts_of(x: Any, kind: type) -> Any:
    """The parts of argument template ``x`` of type ``kind`` (``_Slot``, ``_Const``), in order."""
    t = type(x)
    if t is kind:
        yield x
    elif t is tuple or t is list:
        for v in x:
            yield from _parts_of(v, kind)
    elif t is dict:
        for v in x.values():
            yield from _parts_of(v, kind)


def _slots_of(x: Any) -> Any:
    """The program variables argument template ``x`` names, in order."""
    return (s.n for s in _parts_of(x, _Slot))


def _ufunc_into(st: _Step) -> int | None:
    """The slot a NumPy ufunc step writes in place (``out=`` one program array), else None."""
    kw = st.kwargs
    if type(st.fn) is not np.ufunc or len(kw) != 1 or st.out_kind != "one":
        return None
    out = kw.get("out")
    if type(out) is tuple and len(out) == 1 and type(out[0]) is _Slot and out[0].n == st.outs[0]:
        return out[0].n
    return None


def _dead_code(steps: list[_Step], out_slots: list[int | None]) -> list[_Step]:
    """Drop pure steps whose results nothing uses (forward values only the tape needed...),
    and in-place ufunc writes (``out=``) into a buffer nothing reads afterwards when that
    buffer is private: a fresh ufunc result that only ufunc calls ever touch (no view, method
    or other call sees it, so no other array shares its memory)."""
    kept = _live_steps(steps, out_slots, set())
    fresh: set[int] = set()
    shared: set[int] = set()  # slots some other call than a ufunc takes (among the kept steps:
    for st in kept:  # a view made and used later is kept, so its base counts as shared)
        if type(st.fn) is np.ufunc and (not st.kwargs or _ufunc_into(st) is not None):
            if not st.kwargs and st.out_kind == "one":
                fresh.add(st.outs[0])
            continue
        _mark(st.args, shared)
        _mark(st.kwargs, shared)
    return _live_steps(kept, out_slots, fresh - shared)


def _live_steps(steps: list[_Step], out_slots: list[int | None], private: set[int]) -> list[_Step]:
    """The steps the outputs need: pure steps whose results are used, every impure one but
    in-place ufunc writes into a ``private`` buffer that nothing reads afterwards."""
    live = {s for s in out_slots if s is not None}
    keep = []
    for st in reversed(steps):
        if st.pure and not any(o in live for o in st.outs):
            continue
        if private:
            into = _ufunc_into(st)
            if into is not None and into in private and into not in live:
                continue
        keep.append(st)
        _mark(st.args, live)
        _mark(st.kwargs, live)
    keep.reverse()
    return keep


def _mark(x: Any, live: set[int]) -> None:
    t = type(x)
    if t is _Slot:
        live.add(x.n)
    elif t is tuple or t is list:
        for v in x:
            _mark(v, live)
    elif t is dict:
        for v in x.values():
            _mark(v, live)
    elif t is slice:
        _mark(x.start, live)
        _mark(x.stop, live)
        _mark(x.step, live)


def _flags_set_after_reading(tr: _Trace) -> dict:
    """The values a trace read of the flags its step then set (``v.trainable`` read True,
    then set False): two traces of a step that sets a flag on its first call differ in them,
    which excuses their programs' difference; a step setting a flag at every call reads the
    same value each time (``model.train()``), which excuses nothing."""
    return {k: v[2] for k, v in tr.flags.items() if k in tr.flags_set}


def _same_program(a: _Trace, b: _Trace) -> str | None:
    """None when traces ``a`` and ``b`` logged the same program: the same calls on the same
    program variables, with constants that are the same object, or (for a constant not
    written by the program) equal values. Else a description of the first difference."""
    if len(a.steps) != len(b.steps):
        return f"the two traces ran {len(a.steps)} and {len(b.steps)} array operations"
    for k, (u, v) in enumerate(zip(a.out_consts, b.out_consts)):
        if (u is None) != (v is None):
            return f"output #{k} is computed in one trace only"
        if u is not None:
            why = _same_template((_Const(u[1]),), (_Const(v[1]),)) if _is_array(u[1]) \
                else _same_template((u[1],), (v[1],))
            if why is not None:
                return f"output #{k}, made where the trace cannot see it: {why}"
    for i, (x, y) in enumerate(zip(a.steps, b.steps)):
        why = _same_template((x.key,), (y.key,))
        if why is None and x.outs != y.outs:
            why = "different results"
        if why is None:
            why = _same_template(x.args, y.args) or _same_template(x.kwargs, y.kwargs)
        if why is not None:
            name = getattr(x.fn, "__name__", repr(x.fn))
            return f"operation #{i} ({name}): {why}"
    return None


def _host(a: Any) -> np.ndarray:
    """A constant's values on the host (a device array is copied: trace time only)."""
    if isinstance(a, (np.ndarray, np.generic)):
        return np.asarray(a)
    return backend_of(a).to_host(a)


def _same_template(x: Any, y: Any) -> str | None:
    tx, ty = type(x), type(y)
    if tx is not ty:
        return f"{tx.__name__} vs {ty.__name__}"
    if tx is _Slot:
        return None if x.n == y.n else "reads a different value"
    if tx is _Const:
        u, v = x.value, y.value
        if u is v:
            return None
        if _is_array(u) and _is_array(v):
            if u.shape != v.shape or u.dtype != v.dtype:
                return "a constant of another shape or dtype"
            hu, hv = _host(u), _host(v)
            try:
                same = bool(np.array_equal(hu, hv, equal_nan=hu.dtype.kind in "fc"))
            except TypeError:
                same = bool(np.array_equal(hu, hv))
            return None if same else ("a constant array whose values changed between calls: "
                                      "it was computed from the inputs where the trace "
                                      "cannot see it")
        same = type(u) is type(v) and _equal_values(u, v)
        return None if same else f"the constant {u!r} became {v!r}"
    if tx is tuple or tx is list:
        if len(x) != len(y):
            return "a different number of arguments"
        for u, v in zip(x, y):
            why = _same_template(u, v)
            if why:
                return why
        return None
    if tx is dict:
        if x.keys() != y.keys():
            return "different keyword arguments"
        for k in x:
            why = _same_template(x[k], y[k])
            if why:
                return why
        return None
    if tx is slice:
        return _same_template((x.start, x.stop, x.step), (y.start, y.stop, y.step))
    if x is y:
        return None
    if tx is Identity and x != y:
        return (f"{x!r} is another object in each trace (one made inside the step?): make it "
                "once, outside the step")
    return None if _equal_values(x, y) else f"{x!r} became {y!r}"


def _equal_values(x: Any, y: Any) -> bool:
    """``x == y`` for two traces' constants, a float NaN equal to a float NaN (a NaN constant,
    such as the one the backward of an unbiased variance over one example holds, is the same
    constant at every trace; with ``==`` alone such a step never compiled)."""
    try:
        if bool(x == y):
            return True
    except Exception:
        return False
    floats = (float, complex, np.floating, np.complexfloating)
    return isinstance(x, floats) and isinstance(y, floats) and bool(x != x) and bool(y != y)


# --------------------------------------------------------------------------- gt.function


class _Entry:
    """What one input signature has: its traces so far, then a program or eager mode."""

    __slots__ = ("state", "last", "program", "out_spec", "out_meta", "keep", "creating", "refs",
                 "aliased", "read_vars", "stale", "device", "graphs", "replays", "flags", "epoch",
                 "__weakref__")

    def __init__(self, leaves: list[Any]) -> None:
        self.state = "new"  # "new" -> "verify" -> "ready" | "eager"
        self.last: _Trace | None = None
        self.program: _Program | None = None
        self.device: Any = None  # the device backend the program runs on (None: the host)
        self.graphs: _GraphRunner | None = None  # cuda_graph=True: the program as graphs
        self.replays = 0
        self.out_spec: Any = None
        self.out_meta: list[Any] = []
        # objects the key names by identity (an argument that is no tensor, a decorated
        # method's self, a Variable), weakly where they allow it (a cache must not keep a
        # model alive): an entry whose object died is stale, as a new object may have its
        # id (the callback runs when it dies, before any new object can take the id); the
        # others kept alive, so that no other object takes their id
        self.keep: list[Any] = []
        # set when a Variable or object below, or one the program reads, dies (a weak
        # reference's callback): the program would read a buffer nothing else can reach
        self.stale = False
        self.refs: list[Any] = []  # (alive for their callbacks)
        for x in leaves:
            if not _by_identity(x):
                continue
            try:  # weakly where it can be (a decorated method's self must not be kept alive)
                self.refs.append(weakref.ref(x, self._on_death()))
            except TypeError:
                self.keep.append(x)
        tensors = [id(x) for x in leaves if isinstance(x, Tensor) and not x._is_variable]
        self.aliased = len(set(tensors)) < len(tensors)  # a tensor passed more than once
        self.read_vars: list[Any] = []  # weak references to the Variables the program reads
        # the Python flags the program holds for, (weak ref, name, value), checked again when
        # state.FLAGS moved since ``epoch``
        self.flags: list[tuple[Any, str, Any]] = []
        self.epoch = FLAGS[0]
        self.creating = 0  # consecutive traces that created Variables

    def _on_death(self) -> Any:
        """A weak-reference callback that marks this entry stale (it holds the entry weakly:
        a dropped entry goes with its references)."""
        me = weakref.ref(self)

        def died(_ref: Any) -> None:
            entry = me()
            if entry is not None:
                entry.stale = True

        return died

    def watch(self, variables: Any, flags: Any, set_by_step: set, set_owners: Any,
              epoch: int) -> None:
        """The Variables (weak references) the program reads: one dying makes it stale; and
        the Python flags it holds for, each Variable's ``trainable`` among them (a tape
        watches trainable Variables by itself), but those the step sets itself (its program
        sets them again at each call). A flag's owner that outlived the trace and dies later
        (a layer replaced) makes the program stale too; one made inside the step, dead by
        now, is nothing to check."""
        live = [v for v in (r() for r in variables) if v is not None]
        self.read_vars = [weakref.ref(v, self._on_death()) for v in live]
        owners = [(o, name, value) for o, name, value in ((r(), n, val) for r, n, val in flags)
                  if o is not None]
        owners += [(v, "trainable", v._trainable) for v in live
                   if (id(v), "trainable") not in set_by_step]
        self.flags = [(weakref.ref(o, self._on_death()), name, value) for o, name, value in owners]
        # the objects whose flags the step sets, alive after the trace: one dying (a layer
        # replaced) makes the program stale
        self.refs += [weakref.ref(o, self._on_death()) for o in (r() for r in set_owners)
                      if o is not None]
        # (the epoch the trace began at, not now: after a flag the step read and then set
        # itself, now would hold for the value it set, and the next call would skip the check)
        self.epoch = epoch

    def current(self) -> bool:
        """Whether the flags the program holds for still have their values (a frozen layer, a
        module switched to ``eval()`` since the trace make it out of date)."""
        if self.epoch == FLAGS[0]:
            return True
        for ref, name, value in self.flags:
            obj = ref()
            if obj is None or getattr(obj, name) != value:
                return False
        self.epoch = FLAGS[0]
        return True


def _rebuild_function(fn: Callable[..., Any], settings: dict[str, Any]) -> Function[Any]:
    """Unpickle a :class:`Function` (see ``Function.__reduce__``)."""
    return Function(fn, **settings)


def _set_flag(ref: Any, name: str, value: Any) -> None:
    """A program step: set Python flag ``name`` of the object ``ref`` names (through its
    property, which counts the change), if it still exists."""
    obj = ref()
    if obj is not None:
        setattr(obj, name, value)


def _by_identity(x: Any) -> bool:
    """Whether a signature names argument ``x`` by identity: a Variable or an object that is
    no tensor, array or plain value (a decorated method's self)."""
    if isinstance(x, Tensor):
        return x._is_variable
    return not (x is None or isinstance(x, (bool, int, float, complex, str, bytes, np.generic,
                                            np.ndarray)))


def _weak_objects(leaves: list[Any]) -> list[Any]:
    """Weak references to the arguments a signature names by identity (where they allow it)."""
    refs = []
    for x in leaves:
        if _by_identity(x):
            try:
                refs.append(weakref.ref(x))
            except TypeError:
                pass
    return refs


def _note_replay_failure(e: BaseException, program: _Program) -> None:
    """Add to ``e`` (an error a replayed step raised: NumPy's or CuPy's own, such as
    ``LinAlgError: Singular matrix``) the step that raised it, as a note in its traceback."""
    if not hasattr(e, "add_note"):  # (Python 3.10)
        return
    lines = program.source.splitlines()
    tb, line = e.__traceback__, None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename.startswith("<gt.function"):
            src = getattr(tb.tb_frame.f_code, "co_name", "") == "replay" and lines
            if src and 0 < tb.tb_lineno <= len(src):
                line = src[tb.tb_lineno - 1].strip()
        tb = tb.tb_next
    if line is None:
        e.add_note(f"(raised while gt.function {program.name!r} replayed its program)")
        return
    called = line.split("=", 1)[-1].strip().split("(", 1)[0]
    fn: Any = program.ns.get(called)
    while isinstance(fn, functools.partial) or str(getattr(fn, "__module__", "")).startswith(
            "gradtape") and hasattr(fn, "__wrapped__"):
        # (a library step bound to its settings; a backend's wrapper of the library's function)
        fn = fn.func if isinstance(fn, functools.partial) else fn.__wrapped__
    what = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or called
    module = getattr(fn, "__module__", None)
    if module and not module.startswith("gradtape"):
        what = f"{module}.{what}"
    e.add_note(f"(raised while gt.function {program.name!r} replayed its step `{line}`, a call "
               f"of {what}; called without gt.function, the step names the op that made it)")


def _layout(a: Any) -> Any:
    """The signature's layout entry of an array that is not C-contiguous: "F" for Fortran
    order, else the order of its axes by stride (a row-strided view keeps C's order, a
    transposed one does not). Eager results take their operands' layout (NumPy's order "K"),
    and sums over them add in layout order, so a replay is bit-identical to eager mode only on
    inputs laid out as the trace's were."""
    if a.flags.f_contiguous:
        return "F"
    st = a.strides
    return tuple(sorted(range(a.ndim), key=lambda i: -abs(st[i])))


def _plain_key(x: Any, backend: str) -> Any:
    """The signature entry of one argument that is a tensor (not batched), a NumPy array (made
    a tensor on the active ``backend``, gt.tensor's rule) or a plain Python value; else None."""
    if isinstance(x, Tensor):
        if x._is_variable:
            return ("V", id(x))
        if x._level:
            return None
        d = x.data  # (its layout too: a fused run's results follow the trace's layout)
        return ("T", d.shape, d.dtype.str, x._backend.name,
                True if d.flags.c_contiguous else _layout(d))
    if type(x) is np.ndarray:
        return ("N", x.shape, x.dtype.str, backend,
                True if x.flags.c_contiguous else _layout(x))
    if isinstance(x, (float, complex, np.generic)):  # by spelling: -0.0 is not 0.0, nan is
        return ("P", type(x), repr(x))  # nan; a NumPy scalar by its type and value too
    if x is None or isinstance(x, (bool, int, str, bytes)):
        return ("P", type(x), x)
    return None


def _by_value(v: Any) -> bool:
    """Whether the signature keys ``v`` by its value (:func:`_plain_key`'s Python and NumPy
    scalars, strings, None, and tuples of them): part of the key, not an input of the program."""
    if type(v) is tuple:
        return all([_by_value(e) for e in v])
    k = _plain_key(v, "")
    return k is not None and k[0] == "P"


def _freeze(spec: Any) -> Any:
    if isinstance(spec, (list, tuple)):
        return tuple(_freeze(v) for v in spec)
    return spec


class Function(Generic[R]):
    """A step compiled by :func:`function`: call it like the Python function it wraps.

    Args:
        fn: the step (see :func:`function`).
        reduce_retracing: trace a signature only when it comes a second time.
        fallback: ``"error"`` or ``"eager"`` on data-dependent control flow while tracing.
        verify: trace twice and compare before replaying.
        cuda_graph: on a device backend, replay the device work as CUDA graphs.

    Attributes:
        python_function: the wrapped Python function.
        trace_count: how many times it was traced (all signatures).
        graph_count: how many CUDA graphs were captured (all signatures; ``cuda_graph=True``).

    Shapes: as ``fn``'s.

    Example:
        >>> import gradtape as gt
        >>> f = gt.Function(lambda x: x * 2.0)
        >>> f(gt.tensor([1.0])).numpy(), f.trace_count
        (array([2.], dtype=float32), 1)
    """

    def __init__(self, fn: Callable[..., R], reduce_retracing: bool = False,
                 fallback: str = "error", verify: bool = True, cuda_graph: bool = False) -> None:
        if not callable(fn):
            raise TypeError(f"gt.function: expected a callable, got {type(fn).__name__}")
        if fallback not in ("error", "eager"):
            raise ValueError(f"gt.function: fallback must be 'error' or 'eager', got {fallback!r}")
        self.python_function = fn
        self.reduce_retracing = as_flag(reduce_retracing, "gt.function", "reduce_retracing")
        self.fallback = fallback
        self.verify = as_flag(verify, "gt.function", "verify")
        self.cuda_graph = as_flag(cuda_graph, "gt.function", "cuda_graph")
        self.trace_count = 0
        self._cache: dict[Any, _Entry] = {}
        self._seen: dict[Any, list[Any]] = {}  # signatures seen once: weak references to
        # the objects their keys name by id (a dead one's id may come back for a new object)
        self._flat: dict[Any, _Entry] = {}  # the entries of calls with flat positional arguments
        self._signatures = 0
        self._flag_retraces = 0  # programs replaced because a flag they hold for changed
        self._warned_retrace = False
        self._warned_flags = False
        self._lock = threading.RLock()
        self._name = getattr(fn, "__name__", type(fn).__name__)
        try:  # arguments are bound to the parameters (and defaults filled in), as TF binds them
            self._params: inspect.Signature | None = inspect.signature(fn)
            own = inspect.signature(fn, follow_wrapped=False) if getattr(
                fn, "__wrapped__", None) is not None else None
            if own is not None and any(p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
                                           for p in own.parameters.values()):
                self._params = own  # a wrapper that does not just forward: its own parameters
        except (TypeError, ValueError):  # a callable without a signature: keyed as passed
            self._params = None
        self._trivial = self._params is not None and all(
            p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
            for p in self._params.parameters.values())
        functools.update_wrapper(self, fn)

    def __repr__(self) -> str:
        return f"<gt.function {getattr(self.python_function, '__qualname__', self.python_function)!r}>"

    def _settings(self) -> dict[str, Any]:
        return {"reduce_retracing": self.reduce_retracing, "fallback": self.fallback,
                "verify": self.verify, "cuda_graph": self.cuda_graph}

    def __copy__(self) -> Function[R]:
        """The same Python function, compiled afresh (no traces: a program holds the arrays
        of the objects it was traced on)."""
        return Function(self.python_function, **self._settings())

    def __deepcopy__(self, memo: dict) -> Function[R]:
        """A compiled copy of a deep copy of the Python function (a bound method of a module
        being copied is bound to the copy), with no traces yet."""
        return Function(copy.deepcopy(self.python_function, memo), **self._settings())

    def __reduce__(self) -> tuple:
        """Pickled as its Python function and settings; the traces are made again."""
        return (_rebuild_function, (self.python_function, self._settings()))

    def __get__(self, obj: Any, objtype: Any = None) -> Any:
        if obj is None:
            return self
        return functools.partial(self.__call__, obj)

    def _bound(self, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        """``args`` and ``kwargs`` bound to the function's parameters, defaults filled in: the
        arguments by position where the parameters allow, so ``f(x)``, ``f(x=x)`` and
        ``f(x, 2.0)`` (2.0 the default) are one signature, as in TF. As passed where they do
        not bind (the call itself then raises the function's own error)."""
        params = self._params
        if params is None or self._trivial and not kwargs:
            return args, kwargs
        try:
            bound = params.bind(*args, **kwargs)
        except TypeError:
            return args, kwargs
        given = bound.arguments
        filled = {}  # in the parameters' order (a keyword's place is part of the key)
        for name, p in params.parameters.items():  # plain, NumPy-scalar and tensor defaults
            # only: others (arrays, containers, objects) stay the function's own, as a closure's
            d = p.default
            if name in given:
                filled[name] = given[name]
            elif d is not p.empty and (_by_value(d) or isinstance(d, Tensor) and not d._is_variable):
                filled[name] = d
        bound.arguments = filled
        return bound.args, bound.kwargs

    def program_source(self, *args: Any, **kwargs: Any) -> str:
        """The generated replay function for this call's signature (after two traces), as
        Python source, for inspection."""
        args, kwargs = self._bound(args, kwargs)
        key, _, _ = self._signature(args, kwargs)
        entry = self._cache.get(key)
        if entry is None or entry.program is None:
            where = ""
            here = STATE.call_mode
            try:  # the same arguments traced inside a module call with training=... (or not)
                for mode in {True, False, None} - {here}:
                    STATE.call_mode = mode
                    other = self._cache.get(self._signature(args, kwargs)[0])  # (bound above)
                    if other is not None and other.program is not None:
                        where = (f"; it has one traced inside a module call with training={mode}"
                                 ", shown by program_source called inside such a call"
                                 if mode is not None else "; it has one traced outside any "
                                 "module call with training=")
            finally:
                STATE.call_mode = here
            raise ValueError("gt.function.program_source: no program for this signature yet "
                             f"(call the function with these arguments first, twice){where}")
        return entry.program.source

    def _signature(self, args: tuple, kwargs: dict) -> tuple[Any, list[Any], Any]:
        leaves, spec = flatten((args, kwargs))
        backend = get_backend()
        # (a module call's training=... around this call: the modes the step reads)
        key: list[Any] = [_freeze(spec), backend.name, config._fusion, HOOKS.numerics,
                          STATE.call_mode]
        first: dict[int, int] = {}  # a tensor passed more than once is one input of the step
        for i, x in enumerate(leaves):
            if isinstance(x, Tensor) and not x._is_variable:
                j = first.setdefault(id(x), i)
                if j != i:
                    key.append(("A", j))
                    continue
            k = _plain_key(x, backend.name)
            if k is not None:
                key.append(k)
            elif isinstance(x, Tensor):  # (_plain_key names every other tensor)
                raise _Eager("a batched tensor (called inside gt.vmap)")
            else:
                try:
                    hash(x)
                    key.append(("H", type(x), x) if isinstance(x, (tuple, frozenset)) else ("O", id(x)))
                except TypeError:
                    key.append(("O", id(x)))
        return tuple(key), leaves, spec

    def _flat_key(self, args: tuple) -> Any:
        """The signature of positional arguments that are all tensors or plain Python values
        (the common call: ``step(x, y)``) without flattening them, else None. It names a
        signature as :meth:`_signature` does, in a key space of its own."""
        name = get_backend().name
        key: list[Any] = [name, config._fusion, HOOKS.numerics, STATE.call_mode]  # (the
        # settings' fields: a call's key is on the hot path)
        tensors: list[int] = []
        for x in args:
            k = _plain_key(x, name)
            if k is None:
                return None
            if k[0] == "T":
                tensors.append(id(x))
            key.append(k)
        if len(tensors) > 1 and len(set(tensors)) < len(tensors):
            return None  # a tensor passed twice: the general signature says which
        return tuple(key)

    def __call__(self, *args: Any, **kwargs: Any) -> R:
        st = STATE
        if st.trace is not None or st.recording or st.forward or st.vmap_level or st.watchers:
            # inside another trace (it captures this call), or a tape / transform is active
            # (it must see the ops): the Python function itself
            return self.python_function(*args, **kwargs)
        flat = None if kwargs else self._flat_key(args)
        if flat is not None:  # a replay needs no flattening of its arguments
            entry = self._flat.get(flat)
            if entry is not None and entry.state == "ready" and not entry.stale \
                    and (entry.epoch == FLAGS[0] or entry.current()):
                leaves = [_as_input(x) if type(x) is np.ndarray else x for x in args]
                with self._lock:
                    return self._replay(entry, leaves)
        n_given = len(args)
        args, kwargs = self._bound(args, kwargs)
        if flat is not None and not all([_by_value(v) for v in (*args[n_given:], *kwargs.values())]):
            # defaults filled in that the flat replay would not see (a tensor, an array, an
            # object keyed by identity): such calls take this path at each call
            flat = None
        try:
            key, leaves, spec = self._signature(args, kwargs)
        except _Eager:
            return self.python_function(*args, **kwargs)
        if any(type(x) is np.ndarray for x in leaves):  # NumPy arrays are passed as tensors
            leaves = [_as_input(x) if type(x) is np.ndarray else x for x in leaves]  # (gt.tensor's
            args, kwargs = unflatten(spec, leaves)  # rule: on the active backend)
        with self._lock:
            entry = self._cache.get(key)
            if entry is not None and not entry.current():
                # a flag its program holds for changed (a Variable's trainable, a module's
                # training): trace again, in place of that program (not a new signature)
                del self._cache[key]
                self._flat = {k: e for k, e in self._flat.items() if e is not entry}
                entry = self._cache[key] = _Entry(leaves)
                self._flag_retraces += 1
                if self._flag_retraces > _RETRACE_WARN and not self._warned_flags:
                    # (TF warns on frequent retracing whatever its cause: a step switched
                    # between modes at every call would otherwise trace forever, silently)
                    self._warned_flags = True
                    warnings.warn(
                        f"gt.function {self._name!r} was traced again {self._flag_retraces} "
                        "times because a Python flag its program holds for changed (a module's "
                        "training mode, a Variable's trainable): each switch traces the step "
                        "again and none replays. Compile one function per mode (one for "
                        "training, one for evaluation), or pass the mode as an argument "
                        "(model(x, training=...)) so each mode keeps its program", stacklevel=2)
            if entry is not None and entry.stale:
                # an object its key names by id died (a new one may have that id), or a
                # Variable its program reads died: trace again (_drop_dead forgets it)
                entry = None
            if entry is None:
                seen = self._seen.get(key) if self.reduce_retracing else None
                if self.reduce_retracing and self._signatures >= 1 and (
                        seen is None or any(r() is None for r in seen)):
                    self._seen[key] = _weak_objects(leaves)  # a signature seen once runs
                    # eagerly: no trace
                    return self.python_function(*args, **kwargs)
                self._drop_dead()
                entry = self._cache[key] = _Entry(leaves)
                self._signatures += 1
                if self._signatures > _RETRACE_WARN and not self._warned_retrace and not self.reduce_retracing:
                    self._warned_retrace = True
                    warnings.warn(
                        f"gt.function {self._name!r} was traced for {self._signatures} "
                        "different input signatures (shapes, dtypes, Python argument values, "
                        "Variables passed): each one traces the step again. Pass tensors of "
                        "fixed shapes, pass changing numbers as tensors rather than Python "
                        "values, or use gt.function(f, reduce_retracing=True)", stacklevel=2)
            if flat is not None:
                self._flat[flat] = entry
            state = entry.state
            if state == "ready":
                return self._replay(entry, leaves)
            if state == "eager":
                return self.python_function(*args, **kwargs)
            return self._trace(entry, args, kwargs, leaves, spec)

    def _drop_dead(self) -> None:
        """Forget the stale signatures: their programs may hold dead Variables' buffers, and
        nothing can call them again."""
        dead = [k for k, e in self._cache.items() if e.stale]
        if dead:
            gone = {id(self._cache.pop(k)) for k in dead}
            for k in [k for k, e in self._flat.items() if id(e) in gone]:
                del self._flat[k]

    @property
    def graph_count(self) -> int:
        """How many CUDA graphs the replays captured (``cuda_graph=True`` on a device backend:
        one per run of device work between two host steps, per signature)."""
        return sum(e.graphs.captured for e in self._cache.values() if e.graphs is not None)

    def _replay(self, entry: _Entry, leaves: list[Any]) -> Any:
        arrays = [x.data for x in leaves if isinstance(x, Tensor) and not x._is_variable]
        if entry.aliased:  # (its key says which leaves repeat an earlier one)
            firsts = {id(x): x for x in reversed(leaves) if isinstance(x, Tensor)}
            arrays = [x.data for x in leaves if isinstance(x, Tensor) and not x._is_variable
                      and firsts.pop(id(x), None) is not None]
        program = entry.program
        assert program is not None
        graphs = entry.graphs
        if graphs is None and entry.replays and program.segment_list is not None:
            # from the second replay on: the first compiled and loaded every kernel
            graphs = entry.graphs = _GraphRunner(program, entry.device.capture)
        entry.replays += 1
        try:
            outs = graphs.run(*arrays) if graphs is not None else program.run(*arrays)
        except Exception as e:
            _note_replay_failure(e, program)
            raise
        res: list[Any] = []
        for arr, meta in zip(outs, entry.out_meta):
            if meta is None:
                res.append(arr)
            elif type(meta) is tuple and meta[0] == "T":
                res.append(_wrap(arr, meta[1]))
            else:
                res.append(meta[1])
        return unflatten(entry.out_spec, res)

    def _trace(self, entry: _Entry, args: tuple, kwargs: dict, leaves: list[Any],
               spec: Any) -> Any:
        tr = _Trace(self.fallback == "eager")
        new_leaves = []
        n_in = 0
        inputs: dict[int, Tensor] = {}  # a tensor passed twice is one input (as eagerly)
        for x in leaves:
            if isinstance(x, Tensor) and not x._is_variable:
                t = inputs.get(id(x))
                if t is None:
                    t = inputs[id(x)] = _wrap(tr.new(x.data), x._backend)
                    n_in += 1
                new_leaves.append(t)
            else:
                new_leaves.append(x)
        targs, tkwargs = unflatten(spec, new_leaves)
        st = STATE
        st.trace = tr
        hooks_add(1)  # every op reaches record_general, which logs ops on untraced arrays
        _serial(True)  # no threaded forward or fused run while tracing: the trace follows its
        # own thread (the replay threads large steps again)
        _patch_converters(True)
        devices = {x._backend for x in leaves if isinstance(x, Tensor) and x._backend is not NUMPY}
        devices.add(get_backend())
        devices.discard(NUMPY)
        for d in devices:  # device namespaces log calls on traced arrays (see _TracingNamespace)
            d.xp = _TracingNamespace(d.xp)  # type: ignore[assignment]
        self.trace_count += 1
        try:
            result = self.python_function(*targs, **tkwargs)
        finally:
            for d in devices:
                d.xp = _real(d.xp)
            _patch_converters(False)
            st.trace = None
            hooks_add(-1)
            _serial(False)
            tr.done = True
        out_leaves, out_spec = flatten(result)
        out_slots: list[int | None] = []
        out_meta: list[Any] = []  # per output: ("T", backend), None (an array) or ("C", value)
        final = []
        for x in out_leaves:
            p = tr.promoted_of(x.data if isinstance(x, Tensor) else x) if tr.promoted else None
            if p is not None:
                # a buffer made outside the trace that a traced call filled (np.full's with a
                # traced fill value): the program's variable
                out_slots.append(p.slot)
                out_meta.append(("T", x._backend) if isinstance(x, Tensor) else None)
                final.append(x)
            elif isinstance(x, Tensor) and type(x.data) is TracedArray and x.data.tr is tr:
                out_slots.append(x.data.slot)
                out_meta.append(("T", x._backend))
                final.append(_wrap(x.data.a, x._backend))
            elif type(x) is TracedArray and x.tr is tr:
                out_slots.append(x.slot)
                out_meta.append(None)
                final.append(x.a)
            else:
                if tr.unsafe is None and _holds_tensors(x):
                    # an object the nest does not look into (a dataclass holding tensors): its
                    # contents cannot be replayed, and == cannot tell a stale one apart
                    tr.unsafe = (f"the step returned a {type(x).__name__}, which gt.function "
                                 "does not look into (it returns tensors, arrays, Python values "
                                 "and lists, tuples, dicts and namedtuples of them)")
                out_slots.append(None)
                out_meta.append(("C", x))
                final.append(x)
        tr.out_consts = [(type(m[1]), _host(m[1].data) if isinstance(m[1], Tensor) else m[1])
                         if type(m) is tuple and m[0] == "C" else None for m in out_meta]
        if tr.unsafe is not None:
            entry.state = "eager"
            warnings.warn(f"gt.function {self._name!r}: {tr.unsafe}, which the replay could not "
                          "follow; this step runs eagerly", stacklevel=3)
            return unflatten(out_spec, final)
        if tr.poisoned is not None:
            entry.state = "eager"
            warnings.warn(f"gt.function {self._name!r}: {tr.poisoned} depends on a traced "
                          "value, so this step runs eagerly (fallback='eager')", stacklevel=3)
            return unflatten(out_spec, final)
        entry.watch(tr.variables.values(), tr.flags.values(), tr.flags_set, tr.owners.values(),
                    tr.epoch)
        prev = entry.last
        entry.last = tr
        entry.creating = entry.creating + 1 if tr.created_variables else 0
        if entry.creating == _CREATING_WARN:
            warnings.warn(
                f"gt.function {self._name!r}: the step created Variables in each of its last "
                f"{_CREATING_WARN} traces, so it traces at every call and never replays (an "
                "optimizer, a layer or a Variable made inside the step starts afresh each "
                "time); create them outside the step, or once (on its first call)",
                stacklevel=3)
        if prev is None and self.verify or tr.created_variables:
            entry.state = "verify"
            tr.arrays = []  # (a trace kept to compare with the next needs its steps only)
        else:
            why = _same_program(prev, tr) if prev is not None else None
            if prev is not None:
                prev.arrays = []
            if why is not None:
                tr.arrays = []
                # a trace that created Variables (a first step's layers and optimizer slots)
                # or set flags the program reads (a step freezing a Variable, setting a
                # module's mode) may differ from the next; any other difference is a value
                # read from Python that changes between calls, even if a later trace happens
                # to repeat it
                if prev is not None and not prev.created_variables and \
                        _flags_set_after_reading(prev) == _flags_set_after_reading(tr):
                    entry.state = "eager"
                    warnings.warn(
                        f"gt.function {self._name!r}: two traces of the step differ ({why}); "
                        "it runs eagerly for this signature so no stale value is replayed",
                        stacklevel=3)
                    entry.last = None
                return unflatten(out_spec, final)
            entry.device = _device_of(leaves, tr)
            entry.program = _Program(tr, n_in, out_slots, self._name, graphs=self.cuda_graph and (
                entry.device is not None and entry.device.capture is not None))
            entry.out_spec = out_spec
            entry.out_meta = out_meta
            entry.state = "ready"
            entry.last = None
            tr.arrays = []
        return unflatten(out_spec, final)


def _device_of(leaves: list[Any], tr: _Trace) -> Any:
    """The device backend all of a program's arrays live on, its input tensors and the
    Variables it reads (a CUDA graph can hold its work), else None (host arrays, a mix, or no
    array at all)."""
    backends = {x._backend for x in leaves if isinstance(x, Tensor)}
    backends.update(v._backend for v in (r() for r in tr.variables.values()) if v is not None)
    if len(backends) != 1:
        return None
    (backend,) = backends
    return None if backend is NUMPY else backend


def _as_input(x: np.ndarray) -> Tensor:
    """A NumPy argument as a tensor, as ``gt.tensor`` makes it: a copy (a tensor is immutable;
    one sharing the caller's array, returned by the step, would change when the caller
    writes into that array)."""
    arr, backend = _to_array(x, to_active=True)
    # (order="K": the copy keeps the caller's layout, which the signature keys and eager ops
    # on the array follow)
    return _wrap(arr.copy(order="K") if arr is x else arr, backend)


class _Eager(Exception):
    pass


@overload
def function(fn: Callable[..., R], *, reduce_retracing: bool = False, fallback: str = "error",
             verify: bool = True, cuda_graph: bool = False) -> Function[R]: ...


@overload
def function(fn: None = None, *, reduce_retracing: bool = False, fallback: str = "error",
             verify: bool = True, cuda_graph: bool = False) -> Callable[[Callable[..., R]], Function[R]]: ...


def function(fn: Callable[..., R] | None = None, *, reduce_retracing: bool = False,
             fallback: str = "error", verify: bool = True, cuda_graph: bool = False) -> Any:
    """Compile a step: trace it once per input signature, then replay the recorded array
    program (TensorFlow's ``@tf.function``).

    The first call with a signature (shapes, dtypes and backends of tensor and NumPy array
    arguments; values of Python arguments; identities of Variables and other objects passed)
    runs the step eagerly while recording every array operation it makes: the forward, the
    tape's ``gradient()``, optimizer updates, Variable assignments, random draws. The second
    call traces again and checks that it logged the same program; later calls replay it: one
    generated Python function of NumPy calls, no Tensor objects, no tape, no per-op dispatch.

    Tracing rules (as in TF): a new signature traces again (a warning after 5 signatures of one
    function); Python side effects (``print``, appending to a list, a Python counter) run only
    while tracing; Python control flow on a tensor's value (``bool(t)``, ``float(t)``,
    ``.numpy()``, ``.item()``, iterating a tensor) raises :class:`~gradtape.TracingError`
    naming the line. Variables, optimizer state and random generators advance at each call
    as in eager mode. Called while a tape records or inside a transform, the Python function
    runs as is (the tape sees its ops).

    Args:
        fn: the step; returns a nest (tuple, list, dict) of Tensors and Python values.
        reduce_retracing: when True, the first signature traces at once and any later
            signature seen for the first time runs eagerly, traced only when it comes again
            (one-off shapes, such as a last partial batch, cost no trace; no retrace
            warning).
        fallback: ``"error"`` (default) raises on data-dependent control flow while
            tracing; ``"eager"`` then runs that signature eagerly every time, warning once.
        verify: trace a second time before replaying and compare the two programs (default
            True); False replays after the first trace, unless it created Variables.
        cuda_graph: on a device backend (CuPy), capture the replay's device work as CUDA
            graphs (from the second replay of a signature on) and relaunch them at each call:
            one launch per run of kernels between two host steps (optimizer updates, random
            draws, value checks run as Python between them). Inputs are copied into the
            graphs' buffers and results out of them. No effect on NumPy. Default False.

    Returns:
        A :class:`Function`: call it as ``fn``; ``.trace_count`` counts traces.

    Shapes: as ``fn``'s.

    Example:
        >>> import gradtape as gt
        >>> w = gt.Variable([[0.5], [-0.5]], name="w")           # (2, 1)
        >>> opt = gt.optimizers.SGD(0.1)
        >>> @gt.function
        ... def step(x, y):                                       # x: (4, 2), y: (4, 1)
        ...     with gt.GradientTape() as tape:
        ...         loss = gt.mean((x @ w - y) ** 2)
        ...     opt.apply_gradients(zip(tape.gradient(loss, [w]), [w]))
        ...     return loss
        >>> x, y = gt.ones((4, 2)), gt.zeros((4, 1))
        >>> losses = [float(step(x, y)) for _ in range(3)]       # trace, trace, replay
        >>> step.trace_count, [round(v, 4) for v in losses]
        (2, [0.0, 0.0, 0.0])
    """
    if fn is None:
        return lambda f: Function(f, reduce_retracing=reduce_retracing, fallback=fallback,
                                  verify=verify, cuda_graph=cuda_graph)
    return Function(fn, reduce_retracing=reduce_retracing, fallback=fallback, verify=verify,
                    cuda_graph=cuda_graph)
