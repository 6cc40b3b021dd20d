"""Tensor and Variable: a backend array plus the few fields the tape needs.

This layer sits below the primitives and ops: the differentiable operators and methods
(``+``, ``@``, ``.sum()``, ...) are installed on :class:`Tensor` by ``gradtape/ops/_methods.py``
and declared here for type checkers only.
"""

from __future__ import annotations

import itertools
import weakref
from typing import TYPE_CHECKING, Any

import numpy as np

from .autodiff.state import note_cut
from .backend import NUMPY, Backend, backend_by_name, backend_of, get_backend

__all__ = ["Tensor", "Variable", "tensor", "from_dlpack"]

_next_id = itertools.count(1).__next__


def _is_float(dtype: Any) -> bool:
    return dtype.kind in "fc"


class Tensor:
    """An immutable array on a backend that gradient tapes can follow.

    Create one with :func:`gradtape.tensor`. ``data`` is the backend array (``numpy.ndarray``
    or ``cupy.ndarray``); ``_id`` is 0 until a tape watches the tensor or records the op that
    made it.

    Example:
        >>> import gradtape as gt
        >>> t = gt.tensor([[1.0, 2.0], [3.0, 4.0]])   # shape (2, 2), float32
        >>> (t * 2).sum().numpy()
        array(20., dtype=float32)
    """

    __slots__ = ("data", "_backend", "_id", "_origin", "__weakref__")
    _is_variable = False
    # ``ndarray OP tensor`` gives a Tensor: NumPy (and CuPy) defer every binary operator to our
    # reflected method, and a NumPy ufunc called directly on a tensor (np.exp(t)) raises
    # TypeError instead of silently returning an ndarray that left the tape.
    __array_priority__ = 1000
    __array_ufunc__ = None

    def __init__(self, data: Any, dtype: Any = None) -> None:
        # a copy of user arrays and Variables; another Tensor's buffer is immutable, shared
        copy = not isinstance(data, Tensor) or data._is_variable
        arr, backend = _to_array(data, dtype, copy=copy, to_active=True)
        self.data = arr
        self._backend = backend
        self._id = 0
        self._origin = None

    # --- attributes -----------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        """The shape, a tuple of ints."""
        return self.data.shape

    @property
    def dtype(self) -> np.dtype:
        """The NumPy dtype of the elements."""
        return self.data.dtype

    @property
    def ndim(self) -> int:
        """Number of dimensions."""
        return self.data.ndim

    @property
    def size(self) -> int:
        """Number of elements."""
        return self.data.size

    @property
    def backend(self) -> str:
        """Name of the backend holding the data: ``"numpy"`` or ``"cupy"``."""
        return self._backend.name

    def numpy(self) -> np.ndarray:
        """Return the values as a host ``numpy.ndarray``.

        On NumPy it is a read-only view (no copy; tensors are immutable, and a tape may hold
        the same buffer for the backward); on CuPy a copy. The result carries no gradient: a
        tape that was following this tensor notes that the value left it, so a later missing
        gradient can be explained.

        Example:
            >>> import gradtape as gt
            >>> gt.tensor([1.0, 2.0]).numpy()
            array([1., 2.], dtype=float32)
        """
        if self._id:
            _note_escape(self)
        return _host_view(self)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        if self._backend.name != "numpy":
            raise TypeError(
                "np.asarray() of a CuPy-backed gradtape tensor would copy from the GPU "
                "implicitly; call t.numpy() or t.to('numpy') instead")
        if self._id:
            _note_escape(self)
        if copy:
            return np.array(self.data, dtype=dtype, copy=True)
        arr = _host_view(self)
        if dtype is not None and np.dtype(dtype) != arr.dtype:
            if copy is False:
                raise ValueError(f"np.asarray(tensor, dtype={np.dtype(dtype)}, copy=False): the "
                                 f"tensor's dtype is {arr.dtype}, a cast needs a copy")
            return arr.astype(dtype)
        return arr

    def __dlpack__(self, *args: Any, **kwargs: Any) -> Any:
        data = self.data
        if isinstance(data, np.generic):
            data = np.asarray(data)
        return data.__dlpack__(*args, **kwargs)

    def __dlpack_device__(self) -> Any:
        data = self.data
        if isinstance(data, np.generic):
            data = np.asarray(data)
        return data.__dlpack_device__()

    def to(self, backend: str) -> Tensor:
        """Return a tensor with the same values on ``backend`` (``"numpy"`` or ``"cupy"``).

        The move is not differentiable (like ``numpy()``); it is a no-op when already there.

        Example:
            >>> import gradtape as gt
            >>> gt.tensor([1.0]).to("numpy").backend
            'numpy'
        """
        target = backend_by_name(backend)
        if target is self._backend:
            return self
        host = self.numpy()
        return _wrap(target.xp.asarray(host), target)

    def item(self) -> Any:
        """The single element as a Python scalar."""
        return self.data.item()

    def __float__(self) -> float:
        if self.size != 1:
            raise TypeError(f"float(): only a tensor with one element converts to a Python "
                            f"float, got shape {self.shape}")
        return float(self.data.item())

    def __int__(self) -> int:
        if self.size != 1:
            raise TypeError(f"int(): only a tensor with one element converts to a Python "
                            f"int, got shape {self.shape}")
        return int(self.data.item())

    def __index__(self) -> int:
        if self.dtype.kind not in "iub" or self.ndim != 0:
            raise TypeError(f"only 0-d integer tensors can be used as an index, got dtype "
                            f"{self.dtype} and shape {self.shape}")
        return int(self.data.item())

    def __bool__(self) -> bool:
        if self.size != 1:
            raise ValueError(
                f"the truth value of a tensor with {self.size} elements is ambiguous; "
                "use .any() / .all() on the data or reduce first")
        return bool(self.data)

    def __len__(self) -> int:
        if self.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return self.shape[0]

    def __iter__(self) -> Any:
        if self.ndim == 0:
            raise TypeError("iteration over a 0-d tensor")
        return (self[i] for i in range(self.shape[0]))

    def __repr__(self) -> str:
        body = np.array2string(self._backend.to_host(self.data), separator=", ", prefix="tensor(")
        extra = "" if self.backend == "numpy" else ", backend='cupy'"
        return f"tensor({body}, dtype={self.dtype}{extra})"

    __hash__ = object.__hash__

    # --- operators and methods (differentiable) ------------------------------------------
    # Defined by the ops layer, which sits above this class (gradtape/ops/_methods.py installs
    # them when gradtape.ops is imported). Declared here for type checkers.
    if TYPE_CHECKING:
        @property
        def T(self) -> Tensor: ...  # noqa: N802 - NumPy's name
        def __add__(self, other: Any) -> Tensor: ...
        def __radd__(self, other: Any) -> Tensor: ...
        def __sub__(self, other: Any) -> Tensor: ...
        def __rsub__(self, other: Any) -> Tensor: ...
        def __mul__(self, other: Any) -> Tensor: ...
        def __rmul__(self, other: Any) -> Tensor: ...
        def __truediv__(self, other: Any) -> Tensor: ...
        def __rtruediv__(self, other: Any) -> Tensor: ...
        def __pow__(self, other: Any) -> Tensor: ...
        def __rpow__(self, other: Any) -> Tensor: ...
        def __matmul__(self, other: Any) -> Tensor: ...
        def __rmatmul__(self, other: Any) -> Tensor: ...
        def __neg__(self) -> Tensor: ...
        def __pos__(self) -> Tensor: ...
        def __abs__(self) -> Tensor: ...
        def __getitem__(self, index: Any) -> Tensor: ...
        def __lt__(self, other: Any) -> Tensor: ...
        def __le__(self, other: Any) -> Tensor: ...
        def __gt__(self, other: Any) -> Tensor: ...
        def __ge__(self, other: Any) -> Tensor: ...
        def __eq__(self, other: Any) -> Tensor: ...  # type: ignore[override]
        def __ne__(self, other: Any) -> Tensor: ...  # type: ignore[override]
        def __and__(self, other: Any) -> Tensor: ...
        def __or__(self, other: Any) -> Tensor: ...
        def __invert__(self) -> Tensor: ...
        def sum(self, axis: Any = None, keepdims: bool = False) -> Tensor: ...
        def mean(self, axis: Any = None, keepdims: bool = False) -> Tensor: ...
        def max(self, axis: Any = None, keepdims: bool = False) -> Tensor: ...
        def min(self, axis: Any = None, keepdims: bool = False) -> Tensor: ...
        def reshape(self, *shape: Any) -> Tensor: ...
        def transpose(self, *axes: Any) -> Tensor: ...
        def astype(self, dtype: Any) -> Tensor: ...


class Variable(Tensor):
    """Mutable, trainable state (TF's ``tf.Variable``).

    ``assign``, ``assign_add`` and ``assign_sub`` write into ``data`` in place and are never
    recorded on a tape. Trainable Variables used in an op inside a tape's context are watched
    automatically.

    Example:
        >>> import gradtape as gt
        >>> w = gt.Variable([1.0, 2.0], name="w")     # shape (2,), float32
        >>> w.assign_sub([0.5, 0.5]).numpy()
        array([0.5, 1.5], dtype=float32)
    """

    __slots__ = ("name", "trainable", "_snapshots")
    _is_variable = True

    def __init__(self, initial: Any, dtype: Any = None, name: str | None = None,
                 trainable: bool = True) -> None:
        arr, backend = _to_array(initial, dtype, copy=True, to_active=True)
        if isinstance(arr, backend.scalar_types) or not isinstance(arr, backend.ndarray):
            arr = backend.xp.array(arr)  # a writable 0-d buffer, never a NumPy scalar
        self.data = arr
        self._backend = backend
        self._id = _next_id()  # fixed for life: also the creation order
        self._origin = None
        self.name = name
        self.trainable = bool(trainable)
        self._snapshots: list | None = None

    def _snapshot(self) -> Tensor:
        """A Tensor sharing the current buffer, for a tape to save: the next ``assign*`` first
        copies the old values into every live snapshot (copy-on-write), so a VJP sees the value
        its op read. No copy at all when no saved snapshot is alive at the write."""
        snaps = self._snapshots
        if snaps:  # unchanged since the last snapshot: share it (a weight used n times in a
            t = snaps[-1]()  # forward then costs one snapshot, not n)
            if t is not None and t.data is self.data:
                return t
        t = _wrap(self.data, self._backend)
        t._id = self._id  # the same node for every tape: higher order still reaches the Variable
        if snaps is None:
            snaps = self._snapshots = []
        elif len(snaps) >= 64:
            snaps[:] = [r for r in snaps if r() is not None]
        snaps.append(weakref.ref(t))
        return t

    def _before_write(self) -> None:
        snaps = self._snapshots
        if snaps:
            old = None
            for ref in snaps:
                t = ref()
                if t is not None:
                    if old is None:
                        old = self.data.copy()
                    t.data = old
            snaps.clear()

    def _value_for(self, value: Any, what: str) -> Any:
        if isinstance(value, Tensor):
            if value._backend is not self._backend:
                raise ValueError(f"{what}: value is on backend {value.backend!r}, "
                                 f"variable {self.name or ''} on {self.backend!r}")
            value = value.data
        arr = self._backend.xp.asarray(value)
        if arr.shape != self.shape:
            try:
                np.broadcast_shapes(arr.shape, self.shape)
                ok = np.broadcast_shapes(arr.shape, self.shape) == self.shape
            except ValueError:
                ok = False
            if not ok:
                raise ValueError(f"{what}: value has shape {arr.shape}, expected the variable's "
                                 f"shape {self.shape}")
        return arr

    def assign(self, value: Any) -> Variable:
        """Write ``value`` into the variable in place (same shape; cast to its dtype)."""
        arr = self._value_for(value, "Variable.assign")
        self._before_write()
        self._backend.xp.copyto(self.data, arr, casting="unsafe")
        return self

    def assign_add(self, delta: Any) -> Variable:
        """Add ``delta`` in place: ``v += delta``."""
        arr = self._value_for(delta, "Variable.assign_add")
        self._before_write()
        self._backend.xp.add(self.data, arr, out=self.data, casting="unsafe")
        return self

    def assign_sub(self, delta: Any) -> Variable:
        """Subtract ``delta`` in place: ``v -= delta``."""
        arr = self._value_for(delta, "Variable.assign_sub")
        self._before_write()
        self._backend.xp.subtract(self.data, arr, out=self.data, casting="unsafe")
        return self

    def value(self) -> Tensor:
        """A Tensor holding a snapshot copy of the current value (not tracked)."""
        return _wrap(self.data.copy(), self._backend)

    def numpy(self) -> np.ndarray:
        """A host ``numpy.ndarray`` copy of the current value (later ``assign`` calls do not
        change it).

        Example:
            >>> import gradtape as gt
            >>> gt.Variable([1.0, 2.0]).numpy()
            array([1., 2.], dtype=float32)
        """
        if self._backend.name == "numpy":
            return np.array(self.data, copy=True)
        return self._backend.to_host(self.data)

    def __repr__(self) -> str:
        body = np.array2string(self._backend.to_host(self.data), separator=", ", prefix="Variable(")
        name = f", name={self.name!r}" if self.name else ""
        return f"Variable({body}, dtype={self.dtype}{name}, trainable={self.trainable})"


def _wrap(array: Any, backend: Backend) -> Tensor:
    """Make a Tensor around a backend array without validation (the hot path)."""
    t = Tensor.__new__(Tensor)
    t.data = array
    t._backend = backend
    t._id = 0
    t._origin = None
    return t


_FLOAT_DEFAULT = np.dtype(np.float32)


def _host_view(t: Tensor) -> np.ndarray:
    """``t``'s values as a host array: a read-only view on NumPy, a copy from CuPy."""
    if t._backend.name != "numpy":
        return t._backend.to_host(t.data)
    view = np.asarray(t.data).view()
    view.flags.writeable = False
    return view


_NUMERIC_KINDS = "biufc"


def _check_numeric(arr: Any, what: Any) -> None:
    if arr.dtype.kind not in _NUMERIC_KINDS:
        raise TypeError(f"gt.tensor: data must be numeric (bool, int, float or complex), got "
                        f"{type(what).__name__} of dtype {arr.dtype}")


def _to_array(data: Any, dtype: Any = None, copy: bool = False,
              to_active: bool = False) -> tuple[Any, Backend]:
    """Convert user data to a backend array, following API.md's dtype rules.

    ``copy``: the result never shares memory with ``data`` (constructors use it: tensors are
    immutable, a tape may keep them for the backward, and a Variable writes in place). ``to_active``:
    host (NumPy) arrays move to the active backend (constructors); op operands keep theirs, so
    an op never copies between host and device behind the user's back.
    """
    if isinstance(data, Tensor):
        backend = data._backend
        arr = data.data
        if dtype is not None:
            arr = arr.astype(dtype, copy=copy)
        elif copy:
            arr = arr.copy()
        return arr, backend
    if isinstance(data, (np.ndarray, np.generic)):
        backend = get_backend() if to_active else NUMPY
        if backend is NUMPY:
            arr = np.array(data, dtype=dtype, copy=True) if copy else np.asarray(data, dtype=dtype)
        else:  # host data for the device: one copy, made by the device library
            arr = backend.xp.asarray(np.asarray(data, dtype=dtype))
        _check_numeric(arr, data)
        return arr, backend
    mod = type(data).__module__
    if mod.startswith("cupy"):
        backend = backend_of(data)
        arr = backend.xp.array(data, dtype=dtype, copy=True) if copy else backend.xp.asarray(data, dtype=dtype)
        return arr, backend
    if isinstance(data, (str, bytes)) or data is None:
        raise TypeError(f"gt.tensor: data must be a number, a (nested) list, or an array, "
                        f"got {type(data).__name__}")
    backend = get_backend()
    if hasattr(data, "__dlpack__") and not isinstance(data, (list, tuple, int, float, bool, complex)):
        device = data.__dlpack_device__()[0] if hasattr(data, "__dlpack_device__") else 1
        if device in (1, 3) and backend is not NUMPY:  # host memory: through NumPy, then copy
            arr = backend.xp.asarray(np.from_dlpack(data))
        else:
            arr = backend.xp.from_dlpack(data)
            arr = arr.copy() if copy and dtype is None else arr
        if dtype is not None:
            arr = arr.astype(dtype, copy=False)
        _check_numeric(arr, data)
        return arr, backend
    try:
        host = np.asarray(data, dtype=dtype)
    except (ValueError, TypeError) as exc:
        raise TypeError(f"gt.tensor: cannot convert {type(data).__name__} to an array: {exc}") from None
    if host.dtype.kind == "O":
        raise TypeError("gt.tensor: data is ragged or holds non-numeric objects; expected a "
                        "number or a rectangular nested list of numbers")
    _check_numeric(host, data)
    if dtype is None and host.dtype.kind == "f":
        host = host.astype(_FLOAT_DEFAULT)  # Python floats become float32
    arr = host if backend.name == "numpy" else backend.xp.asarray(host)
    return arr, backend


def tensor(data: Any, dtype: Any = None) -> Tensor:
    """Create a constant tensor.

    Args:
        data: a Python scalar or (nested) list, a NumPy or CuPy array, another Tensor, or any
            object with ``__dlpack__``.
        dtype: optional dtype. Python floats default to float32; an array keeps its dtype.

    Returns:
        A Tensor of the same shape as ``data``: a copy (tensors are immutable; use
        :func:`from_dlpack` to share memory), on the active backend (host data moves there;
        CuPy arrays and tensors keep their backend).

    Raises:
        TypeError: ``data`` is ragged, holds strings or other non-numbers.

    Example:
        >>> import gradtape as gt
        >>> gt.tensor([1.0, 2.0]).dtype
        dtype('float32')
    """
    return Tensor(data, dtype)


def from_dlpack(obj: Any) -> Tensor:
    """Wrap any ``__dlpack__`` producer (a NumPy/CuPy/PyTorch array) without copying.

    Example:
        >>> import numpy as np, gradtape as gt
        >>> gt.from_dlpack(np.arange(3.0)).shape
        (3,)
    """
    if not hasattr(obj, "__dlpack__"):
        raise TypeError(f"from_dlpack: expected an object with __dlpack__, got {type(obj).__name__}")
    device = obj.__dlpack_device__()[0] if hasattr(obj, "__dlpack_device__") else 1
    backend = NUMPY if device in (1, 3) else backend_by_name("cupy")  # 1: CPU, 3: pinned host
    return _wrap(backend.xp.from_dlpack(obj), backend)


def _note_escape(t: Tensor) -> None:
    note_cut(t, "its value left the tape through a NumPy/CuPy array (.numpy() or np.asarray)")
