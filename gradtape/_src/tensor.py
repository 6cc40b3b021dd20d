"""Tensor and Variable: a backend array plus the few fields the tape needs.

This layer sits below the primitives and ops: the differentiable operators and methods
(``+``, ``@``, ``.sum()``, ...) are installed on :class:`Tensor` by ``gradtape/ops/_methods.py``
and declared here for type checkers only.
"""

from __future__ import annotations

import functools
import itertools
import weakref
from collections.abc import Iterator, Mapping, Sequence
from types import EllipsisType
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, Union, cast

import numpy as np

from .autodiff.state import STATE, flag_changed, note_cut
from .backend import NUMPY, Array, Backend, backend_by_name, backend_of, cast_lost, get_backend, is_extra_array
from .errors import as_flag

if TYPE_CHECKING:
    from numpy.typing import DTypeLike
    from typing_extensions import CapsuleType

__all__ = ["Tensor", "Variable", "tensor", "from_dlpack", "TensorLike", "TensorTree", "Axis",
           "IndexLike", "SupportsDLPack", "SupportsArray"]

_next_id = itertools.count(1).__next__


class SupportsDLPack(Protocol):
    """An object exporting its memory through DLPack (a NumPy/CuPy/PyTorch array)."""

    def __dlpack__(self, /, *, stream: None = None) -> CapsuleType: ...


class SupportsArray(Protocol):
    """An object NumPy converts through ``__array__`` (``np.asarray(obj)``), e.g. a PyTorch
    tensor or a pandas Series."""

    def __array__(self) -> np.ndarray: ...


#: What an op accepts where it takes a tensor: a Tensor (or Variable), a Python number, a
#: (nested) sequence of numbers, or a NumPy array or scalar. A CuPy array is accepted too (CuPy
#: is untyped, so its arrays type-check as ``Any``).
TensorLike = Union["Tensor", bool, int, float, complex, np.ndarray, np.generic, Sequence[Any]]
#: A Tensor, or a (nested) list, tuple or dict of them: what tapes watch and differentiate.
TensorTree: TypeAlias = Union["Tensor", Sequence["TensorTree"], Mapping[Any, "TensorTree"]]
#: An axis argument: one axis, several, or None (all axes).
Axis = int | Sequence[int] | None
#: What ``tensor[index]`` accepts: ints, slices, None, ``...``, integer or bool arrays/tensors,
#: or a tuple of those.
IndexLike = Union[int, np.integer, slice, None, EllipsisType, "Tensor", np.ndarray, Sequence[Any]]


def _is_float(dtype: np.dtype) -> bool:
    return dtype.kind in "fc"


class Tensor:
    """An immutable array on a backend that gradient tapes can follow.

    Create one with :func:`gradtape.tensor`. ``data`` is the backend array (``numpy.ndarray``
    or ``cupy.ndarray``); ``_id`` is 0 until a tape watches the tensor or records the op that
    made it.

    Being immutable, a Tensor has no in-place operators: ``t += 1`` rebinds the name ``t`` to
    a new Tensor ``t + 1`` (Python's fallback; other references keep the old value). Mutable
    state is a :class:`Variable`, whose ``+=``, ``-=``, ``*=``, ``/=`` write in place.

    Args:
        data: a Python number or (nested) list, a NumPy or CuPy array, another Tensor, or any
            object with ``__dlpack__`` or ``__array__`` (copied; see :func:`gradtape.tensor`).
        dtype: optional dtype; Python floats default to float32, arrays keep theirs.

    Example:
        >>> import gradtape as gt
        >>> t = gt.tensor([[1.0, 2.0], [3.0, 4.0]])   # shape (2, 2), float32
        >>> (t * 2).sum().numpy()
        array(20., dtype=float32)
    """

    __slots__ = ("data", "_backend", "_id", "_origin", "__weakref__")
    data: Array
    _backend: Backend
    _id: int
    # ("variable", name): computed from a Variable (diagnostics); ("gradient", line): made by
    # tape.gradient() at that user line
    _origin: tuple[str, str] | None
    _is_variable = False
    _level = 0  # the vmap level of a BatchedTensor; 0: an ordinary tensor
    # ``ndarray OP tensor`` gives a Tensor: NumPy (and CuPy) defer every binary operator to our
    # reflected method, and a NumPy ufunc called directly on a tensor (np.exp(t)) raises
    # TypeError instead of silently returning an ndarray that left the tape.
    __array_priority__ = 1000
    __array_ufunc__ = None

    def __init__(self, data: TensorLike | SupportsDLPack | SupportsArray, dtype: DTypeLike | None = None) -> None:
        # always a copy, of a Tensor too: one made by from_dlpack shares a buffer that its
        # producer may write (torch_x[0] = 1)
        if isinstance(data, Tensor) and data._level:
            raise TypeError("gt.tensor() of a batched tensor inside gt.vmap: its value differs "
                            "per example; use the tensor itself (tensors are immutable), or "
                            "gt.stop_gradient(t) for a copy that carries no gradient")
        if STATE.trace is not None and not STATE.trace.suspended and not isinstance(data, Tensor):
            # gt.tensor(v.data): a Variable's buffer, read like the Variable (below), not
            # copied once into a constant that a replay would keep after v changes (when it
            # is on the active backend, where the eager copy of its buffer lands too)
            owner = variable_of_buffer(data)
            if owner is not None and owner._backend is get_backend():
                data = owner
        if isinstance(data, Tensor) and data._is_variable and STATE.trace is not None \
                and not STATE.trace.suspended:  # gt.function: the copy reads the Variable at
            data = data.value()  # type: ignore[attr-defined]  # each call (a step of the
            # program), as Variable.value() does; that is the copy
            arr, backend = _to_array(data, dtype, copy=False, to_active=True)
        else:
            arr, backend = _to_array(data, dtype, copy=True, to_active=True)
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
        if getattr(self.data, "_gt_traced", False):  # gt.function: data-dependent
            self.data._host(".numpy()")
        return _host_view(self)

    def __array__(self, dtype: DTypeLike | None = None, copy: bool | None = None) -> np.ndarray:
        self._state_read("np.asarray()")
        if self._backend.name != "numpy":
            raise TypeError(
                "np.asarray() of a CuPy-backed gradtape tensor would copy from the GPU "
                "implicitly; call t.numpy() or t.to('numpy') instead")
        if self._id:
            _note_escape(self)
        data = self.data
        if getattr(data, "_gt_traced", False):  # gt.function: data-dependent (TracingError,
            data = data._host("np.asarray()")  # or with fallback="eager" the value now)
        if copy:
            return np.array(data, dtype=dtype, copy=True)
        arr = _host_view(self, data)
        if dtype is not None and np.dtype(dtype) != arr.dtype:
            if copy is False:
                raise ValueError(f"np.asarray(tensor, dtype={np.dtype(dtype)}, copy=False): the "
                                 f"tensor's dtype is {arr.dtype}, a cast needs a copy")
            return arr.astype(dtype)
        return arr

    def __dlpack__(self, *args: object, **kwargs: object) -> Any:
        data = self.data
        if isinstance(data, np.generic):
            data = np.asarray(data)
        elif any(st < 0 for st in data.strides):
            # a reversed view (a flip, t[::-1], a gradient through them) goes out as a
            # contiguous copy: PyTorch's importer cannot take negative strides and aborts the
            # process (a C++ error, no Python exception)
            data = data.copy()
        return data.__dlpack__(*args, **kwargs)

    def __dlpack_device__(self) -> tuple[int, int]:
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

    def _state_read(self, what: str) -> None:
        """A Variable's value read on the host while gt.function traces: its value at a later
        call is not known to the program (``TracingError``, as ``Variable.numpy()``)."""
        if self._is_variable:
            tr = STATE.trace
            if tr is not None and not tr.suspended:
                tr.host_sync(f"{what} of a Variable")

    def item(self) -> Any:
        """The single element as a Python scalar (carries no gradient: a tape following this
        tensor notes that the value left it). ValueError (as NumPy's) for a tensor of more or
        fewer than one element."""
        if self.size != 1:
            raise ValueError(f".item(): only a tensor with one element converts to a Python "
                             f"scalar, got shape {self.shape}")
        if self._id:
            note_cut(self, "its value left the tape as a Python number (.item())")
        self._state_read(".item()")
        return self.data.item()

    def __float__(self) -> float:
        if self.size != 1:
            raise TypeError(f"float(): only a tensor with one element converts to a Python "
                            f"float, got shape {self.shape}")
        if self._id:
            note_cut(self, "its value left the tape as a Python number (float())")
        if getattr(self.data, "_gt_traced", False):  # gt.function: data-dependent
            return float(self.data._host("float()"))
        self._state_read("float()")
        return float(self.data.item())

    def __int__(self) -> int:
        if self.size != 1:
            raise TypeError(f"int(): only a tensor with one element converts to a Python "
                            f"int, got shape {self.shape}")
        if self._id:
            note_cut(self, "its value left the tape as a Python number (int())")
        if getattr(self.data, "_gt_traced", False):  # gt.function: data-dependent
            return int(self.data._host("int()"))
        self._state_read("int()")
        return int(self.data.item())

    def __index__(self) -> int:
        # (not a bool: NumPy refuses np.True_ as an index, and an axis, k or size of True
        # would be taken as 1 silently)
        if self.dtype.kind not in "iu" or self.ndim != 0:
            raise TypeError(f"only 0-d integer tensors can be used as an index, got dtype "
                            f"{self.dtype} and shape {self.shape}")
        self._state_read("an index")
        return int(self.data.item())

    def __bool__(self) -> bool:
        if self.size != 1:
            raise ValueError(
                f"the truth value of a tensor with {self.size} elements is ambiguous; "
                "use .any() / .all() on the data or reduce first")
        self._state_read("bool()")
        return bool(self.data)

    def __len__(self) -> int:
        if self.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return self.shape[0]

    def __setitem__(self, index: Any, value: Any) -> None:
        if self._is_variable:
            raise TypeError("Variable does not support item assignment (v[i] = x); assign the "
                            "whole new value, e.g. v.assign(gt.where(mask, x, v)), or update "
                            "a copy: a = v.numpy(); a[i] = x; v.assign(a)")
        raise TypeError("Tensor does not support item assignment (tensors are immutable); "
                        "build a new one, e.g. gt.where(mask, x, t), or keep the state in a "
                        "gt.Variable and assign to it")

    def __iter__(self) -> Iterator[Tensor]:
        if self.ndim == 0:
            raise TypeError("iteration over a 0-d tensor")
        if getattr(self.data, "_gt_traced", False):  # gt.function: data-dependent
            self.data._host("iteration")
        return (self[i] for i in range(self.shape[0]))

    def __repr__(self) -> str:
        if getattr(self.data, "_gt_traced", False):  # inside a gt.function trace
            return f"tensor(<traced>, shape={self.shape}, dtype={self.dtype})"
        body = np.array2string(self._backend.to_host(self.data), separator=", ", prefix="tensor(")
        extra = "" if self.backend == "numpy" else f", backend={self.backend!r}"
        return f"tensor({body}, dtype={self.dtype}{extra})"

    def __format__(self, spec: str) -> str:
        """``f"{t:.4f}"``: a 0-d tensor formats as its number (as NumPy 0-d arrays and PyTorch
        tensors do); an empty spec gives ``str(t)``; another spec on a tensor with dimensions
        is a TypeError naming its shape."""
        if not spec:
            return str(self)
        if self.ndim != 0:
            raise TypeError(f"format spec {spec!r} applies to a 0-d tensor (one number); this "
                            f"tensor has shape {self.shape}: format an element (t[0]) or "
                            "t.numpy() instead")
        return format(self.item(), spec)

    __hash__ = object.__hash__

    def __reduce__(self) -> tuple:
        """Pickle the values (a host array, its dtype and the backend's name), never the
        tape: the copy is followed by no tape."""
        # the host array (with its dtype) and the backend's name: a Backend holds its array
        # module, which cannot be pickled; the copy is followed by no tape
        return (_rebuild_tensor, (type(self), self._backend.to_host(self.data), self._backend.name))

    def __copy__(self) -> Tensor:
        return _rebuild_tensor(type(self), self.data.copy(order="K"), self._backend.name)

    def __deepcopy__(self, memo: dict) -> Tensor:
        return self.__copy__()

    # --- operators and methods (differentiable) ------------------------------------------
    # Defined by the ops layer, which sits above this class (gradtape/ops/_methods.py installs
    # them when gradtape.ops is imported). Declared here for type checkers.
    if TYPE_CHECKING:
        @property
        def T(self) -> Tensor: ...  # noqa: N802 - NumPy's name
        def __add__(self, other: TensorLike) -> Tensor: ...
        def __radd__(self, other: TensorLike) -> Tensor: ...
        def __sub__(self, other: TensorLike) -> Tensor: ...
        def __rsub__(self, other: TensorLike) -> Tensor: ...
        def __mul__(self, other: TensorLike) -> Tensor: ...
        def __rmul__(self, other: TensorLike) -> Tensor: ...
        def __truediv__(self, other: TensorLike) -> Tensor: ...
        def __rtruediv__(self, other: TensorLike) -> Tensor: ...
        def __floordiv__(self, other: TensorLike) -> Tensor: ...
        def __rfloordiv__(self, other: TensorLike) -> Tensor: ...
        def __mod__(self, other: TensorLike) -> Tensor: ...
        def __rmod__(self, other: TensorLike) -> Tensor: ...
        def __pow__(self, other: TensorLike) -> Tensor: ...
        def __rpow__(self, other: TensorLike) -> Tensor: ...
        def __matmul__(self, other: TensorLike) -> Tensor: ...
        def __rmatmul__(self, other: TensorLike) -> Tensor: ...
        def __neg__(self) -> Tensor: ...
        def __pos__(self) -> Tensor: ...
        def __round__(self, ndigits: int | None = None) -> Tensor: ...
        def __abs__(self) -> Tensor: ...
        def __getitem__(self, index: IndexLike) -> Tensor: ...
        def __lt__(self, other: TensorLike) -> Tensor: ...
        def __le__(self, other: TensorLike) -> Tensor: ...
        def __gt__(self, other: TensorLike) -> Tensor: ...
        def __ge__(self, other: TensorLike) -> Tensor: ...
        # elementwise, as NumPy's: a Tensor, not object's bool (hence the override)
        def __eq__(self, other: TensorLike) -> Tensor: ...  # type: ignore[override]
        def __ne__(self, other: TensorLike) -> Tensor: ...  # type: ignore[override]
        def __and__(self, other: TensorLike) -> Tensor: ...
        def __or__(self, other: TensorLike) -> Tensor: ...
        def __rand__(self, other: TensorLike) -> Tensor: ...
        def __ror__(self, other: TensorLike) -> Tensor: ...
        def __xor__(self, other: TensorLike) -> Tensor: ...
        def __rxor__(self, other: TensorLike) -> Tensor: ...
        def __invert__(self) -> Tensor: ...
        def sum(self, axis: Axis = None, keepdims: bool = False, *, dtype: Any = None,
                out: Any = None) -> Tensor: ...
        def mean(self, axis: Axis = None, keepdims: bool = False, *, dtype: Any = None,
                 out: Any = None) -> Tensor: ...
        def max(self, axis: Axis = None, keepdims: bool = False, *, out: Any = None) -> Tensor: ...
        def min(self, axis: Axis = None, keepdims: bool = False, *, out: Any = None) -> Tensor: ...
        def reshape(self, *shape: int | Sequence[int]) -> Tensor: ...
        def transpose(self, *axes: int | Sequence[int] | None) -> Tensor: ...
        def astype(self, dtype: DTypeLike) -> Tensor: ...
        def flatten(self) -> Tensor: ...
        def tolist(self) -> Any: ...


#: A live Variable by the id of its buffer (``data``, written in place for the Variable's
#: life): a ``gt.function`` trace refuses a NumPy call that writes into one directly.
VARIABLE_BUFFERS: weakref.WeakValueDictionary[int, Variable] = weakref.WeakValueDictionary()


def variable_of_buffer(array: Any) -> Variable | None:
    """The live Variable whose buffer (``data``) ``array`` is, or None."""
    owner = VARIABLE_BUFFERS.get(id(array))
    return owner if owner is not None and owner.data is array else None


#: Variables that ``Module.trainable = False`` froze, by ``_id`` (this process): a module's
#: ``trainable = True`` trains again these only, unless set by hand since.
FROZEN_BY_MODULE: weakref.WeakValueDictionary[int, Variable] = weakref.WeakValueDictionary()


class Variable(Tensor):
    """Mutable, trainable state (TF's ``tf.Variable``).

    ``assign``, ``assign_add`` and ``assign_sub``, and the augmented assignments ``+=``,
    ``-=``, ``*=``, ``/=`` (PyTorch's habit: ``w -= lr * g`` keeps ``w`` the same Variable),
    write into ``data`` in place and are never recorded on a tape; a tape that already read
    the Variable keeps the value it read (copy-on-write). Trainable Variables used in an op
    inside a tape's context are watched automatically.

    Args:
        initial: the initial value: a Python number or (nested) list, a NumPy or CuPy array, a
            Tensor, or anything with ``__dlpack__`` or ``__array__`` (copied; complex values
            are refused).
        dtype: optional dtype; Python floats default to float32. Only float Variables get
            gradients: make a trainable one with ``dtype="float32"``, not with ``.astype``
            (that returns a plain Tensor, which no optimizer can update).
        name: optional name, shown in error messages, checkpoints and diagnostics.
        trainable: whether tapes watch it automatically (default True).

    Example:
        >>> import gradtape as gt
        >>> w = gt.Variable([1.0, 2.0], name="w")     # shape (2,), float32
        >>> w.assign_sub([0.5, 0.5]).numpy()
        array([0.5, 1.5], dtype=float32)
        >>> w -= 0.5                                   # in place: still the same Variable
        >>> w
        Variable([0., 1.], dtype=float32, name='w', trainable=True)
    """

    __slots__ = ("name", "_trainable", "_snapshots")
    name: str | None
    _trainable: bool
    _snapshots: list[weakref.ref[Tensor]] | None
    _is_variable = True

    def __init__(self, initial: TensorLike | SupportsDLPack | SupportsArray, dtype: DTypeLike | None = None,
                 name: str | None = None, trainable: bool = True) -> None:
        if isinstance(initial, Tensor) and initial._level:
            raise TypeError("gt.Variable() of a batched tensor inside gt.vmap: its value differs "
                            "per example; make Variables outside the vmapped function")
        arr, backend = _to_array(initial, dtype, copy=True, to_active=True)
        tr = STATE.trace
        if tr is not None:  # made while gt.function traces: the trace runs again to check
            tr.created_variables = True
            if getattr(arr, "_gt_traced", False):  # from a traced value: that call's value
                arr = arr.a
        if arr.dtype.kind == "c":
            raise TypeError(f"Variable: complex values are not supported (got dtype {arr.dtype}); "
                            "keep the real and imaginary parts in two float Variables")
        if isinstance(arr, backend.scalar_types) or not isinstance(arr, backend.ndarray):
            arr = backend.xp.array(arr)  # a writable 0-d buffer, never a NumPy scalar
        self.data = arr
        self._backend = backend
        self._id = _next_id()  # fixed for life: also the creation order
        self._origin = None
        self.name = name
        self._trainable = as_flag(trainable, "Variable", "trainable")
        self._snapshots = None
        VARIABLE_BUFFERS[id(arr)] = self

    @property
    def trainable(self) -> bool:
        """Whether tapes watch this Variable automatically (and ``trainable_variables`` lists
        it). Setting it after a ``gt.function`` step traced makes the step trace again, and so
        does a change of a flag the step read (``if aux.trainable: ...``)."""
        tr = STATE.trace
        if tr is not None and not tr.suspended:  # the program holds for this value
            tr.flag(self, "trainable", self._trainable)
        return self._trainable

    @trainable.setter
    def trainable(self, value: bool) -> None:
        value = as_flag(value, "Variable", "trainable")
        FROZEN_BY_MODULE.pop(self._id, None)  # (set by hand: a module's True leaves it)
        tr = STATE.trace
        if tr is not None and not tr.suspended and id(self) in tr.variables:
            # set inside a gt.function step after an op read it: the program depends on the
            # value the call found (a tape watched the Variable, or not, by it)
            tr.flag(self, "trainable", self._trainable)
        if value is not self._trainable:
            self._trainable = value
            flag_changed()
        if tr is not None and not tr.suspended:  # set inside a gt.function step (a GAN's
            tr.flag_set(self, "trainable", value)  # generator step freezing D): at each call

    def _snapshot(self) -> Tensor:
        """A Tensor sharing the current buffer, for a tape to save: the next ``assign*`` first
        copies the old values into every live snapshot (copy-on-write), so a VJP sees the value
        its op read. No copy at all when no saved snapshot is alive at the write."""
        snaps = self._snapshots
        tr = STATE.trace
        if snaps and (tr is None or tr.suspended):  # unchanged since the last snapshot: share
            t = snaps[-1]()  # it (a weight used n times in a forward then costs one, not n).
            if t is not None and t.data is self.data:  # (Not while tracing: a tape of the
                return t  # step saves a program variable, never an eager tape's buffer)
        if tr is not None and not tr.suspended:
            # gt.function: the value a tape saves is a program variable reading the buffer,
            # so every backward computation from it (a quotient, an unfold) is logged, never
            # frozen as a constant of the program
            tr.saw((self,))
            t = _wrap(tr.read(self.data), self._backend)
        else:
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
            old = outside = None
            tr = STATE.trace  # gt.function: the copy is a step of the program
            for ref in snaps:
                t = ref()
                if t is None:
                    continue
                d = t.data
                if tr is not None and not (getattr(d, "_gt_traced", False) and d.tr is tr):
                    # a tape outside this trace: an eager one (a persistent tape alive at the
                    # first call) or one of an earlier trace (a failed step's, kept by its
                    # exception). Its value is copied now, not as a step of this program:
                    # the next trace, with that tape gone, would log one copy less and differ
                    # from this one. (At a replay the write's own step copies for the tapes
                    # alive then.)
                    if outside is None:
                        outside = d.a.copy() if getattr(d, "_gt_traced", False) else d.copy()
                    t.data = outside
                    continue
                if old is None:
                    old = self.data.copy() if tr is None else tr.call(np.copy, (self.data,), {})
                t.data = old
            snaps.clear()

    def _write(self, fn: Any, arr: Array, what: str) -> Variable:
        """Run ``fn(self.data, arr)``, an in-place write, after copy-on-write; while a
        ``gt.function`` step is traced, as one step of its program (replayed at each call)."""
        tr = STATE.trace
        if tr is None or tr.suspended:
            self._before_write()
            fn(self.data, arr)
        else:  # copy-on-write for the tapes alive at that call, and the value's check, too
            # The step holds the Variable weakly and the trace watches it, so a Variable
            # replaced after tracing (a layer's new kernel) dies and the step traces again:
            # a strong reference would keep the program updating the old one.
            tr.saw((self,))
            tr.opaque(functools.partial(_write_weak, weakref.ref(self), fn, what), [arr],
                      key=(what, id(self), fn))
        return self

    def _write_now(self, fn: Any, arr: Array, what: str) -> None:
        """:meth:`_write`'s step of a ``gt.function`` program: ``arr`` is that call's value."""
        self._check_representable(arr, what, fn is not _copyto)
        self._before_write()
        fn(self.data, arr)

    def _check_representable(self, arr: Array, what: str, exact: bool) -> None:
        """``arr`` fits the variable's dtype: no NaN or inf for an integer variable, and (``exact``:
        an update, not ``assign``, which casts) no fraction to truncate; integers within the
        integer variable's range (300 into int8 would wrap to 44; PyTorch's ``fill_`` refuses)."""
        if self.dtype.kind in "iu" and arr.dtype.kind in "iu" and arr.size \
                and not np.can_cast(arr.dtype, self.dtype):
            if _outside_int_range(arr, self.dtype):
                info = np.iinfo(self.dtype)
                raise ValueError(f"{what}: value holds integers outside [{info.min}, {info.max}], "
                                 f"which the integer variable {self.name or '<unnamed>'} "
                                 f"({self.dtype}) cannot hold")
        if self.dtype.kind == "f" and not exact:
            # assign: a finite value past the variable's float range would be cast to inf (a
            # float32 checkpoint's 1e6 into a float16 model; PyTorch's copy_ gives inf), data
            # lost. (An update computes in the wider type: v /= 1e5 is v / 1e5 rounded.)
            lost = cast_lost(self._backend.xp, arr, self.dtype)
            if lost is not None:
                raise ValueError(f"{what}: value holds {lost:g}, past the largest {self.dtype} "
                                 f"({float(np.finfo(self.dtype).max):g}) the variable "
                                 f"{self.name or '<unnamed>'} holds; it would become inf (scale "
                                 "it, or create the variable in a wider dtype)")
        if self.dtype.kind in "iub" and arr.dtype.kind == "f":
            xp = self._backend.xp
            if not bool(xp.isfinite(arr).all()):
                raise ValueError(f"{what}: value holds NaN or inf, which the integer variable "
                                 f"{self.name or '<unnamed>'} ({self.dtype}) cannot represent")
            # a finite float past the range: the cast gives garbage (1e30 into int32: INT_MIN)
            if self.dtype.kind in "iu" and arr.size and _outside_int_range(arr, self.dtype):
                info = np.iinfo(self.dtype)
                raise ValueError(f"{what}: value holds numbers outside [{info.min}, {info.max}], "
                                 f"which the integer variable {self.name or '<unnamed>'} "
                                 f"({self.dtype}) cannot represent")
            # an update (+=, -=, *=) refuses to truncate, as /= does and PyTorch's in-place
            # arithmetic does; assign casts, as PyTorch's copy_ does (documented)
            if exact and not bool((xp.trunc(arr) == arr).all()):
                raise TypeError(f"{what}: value holds numbers with a fraction, which the integer "
                                f"variable {self.name or '<unnamed>'} ({self.dtype}) would "
                                "truncate; round them first (gt.round) or create a float Variable")

    def _value_for(self, value: TensorLike, what: str, exact: bool = True) -> Array:
        if isinstance(value, Tensor):
            if value._backend is not self._backend:
                raise ValueError(f"{what}: value is on backend {value.backend!r}, "
                                 f"variable {self.name or ''} on {self.backend!r}")
            value = value.data
        try:
            arr = self._backend.xp.asarray(value)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{what}: value must be numeric, array-like of the variable's shape "
                            f"{self.shape}, got {type(value).__name__} ({exc})") from None
        kind = arr.dtype.kind
        if kind == "O" and isinstance(value, int):  # a Python int past 64 bits
            raise ValueError(f"{what}: value {value} does not fit the variable "
                             f"{self.name or '<unnamed>'} ({self.dtype})")
        if kind not in "biuf":
            what_kind = "complex" if kind == "c" else f"non-numeric ({arr.dtype})"
            raise TypeError(f"{what}: value is {what_kind}; the variable {self.name or '<unnamed>'} "
                            f"holds {self.dtype}")
        if not getattr(arr, "_gt_traced", False):  # (inside gt.function: checked at each call)
            self._check_representable(arr, what, exact)
        if arr.shape != self.shape:
            if not broadcasts_to(arr.shape, self.shape):
                raise ValueError(f"{what}: value has shape {arr.shape}, expected the variable's "
                                 f"shape {self.shape}")
        return arr

    def assign(self, value: TensorLike) -> Variable:
        """Write ``value`` into the variable in place (same shape; cast to its dtype)."""
        arr = self._value_for(value, "Variable.assign", exact=False)
        return self._write(_copyto, arr, "Variable.assign")

    def assign_add(self, delta: TensorLike) -> Variable:
        """Add ``delta`` in place: ``v += delta``."""
        arr = self._value_for(delta, "Variable.assign_add")
        return self._write(_iadd, arr, "Variable.assign_add")

    def assign_sub(self, delta: TensorLike) -> Variable:
        """Subtract ``delta`` in place: ``v -= delta``."""
        arr = self._value_for(delta, "Variable.assign_sub")
        return self._write(_isub, arr, "Variable.assign_sub")

    # --- augmented assignment: in place, as PyTorch's ``w -= lr * g`` -----------------------
    # A Tensor has no __iadd__ (it is immutable: Python falls back to ``t = t + 1``); on a
    # Variable these write into ``data`` like ``assign_add``, never recorded, copy-on-write
    # (a live tape keeps the value its ops read), and return the Variable itself, so the name
    # stays bound to it (``w = w - lr * g`` instead would rebind ``w`` to a plain Tensor).
    def __iadd__(self, other: TensorLike) -> Variable:
        """``v += other``: :meth:`assign_add` (in place, never recorded; returns ``v``)."""
        return self.assign_add(other)

    def __isub__(self, other: TensorLike) -> Variable:
        """``v -= other``: :meth:`assign_sub` (in place, never recorded; returns ``v``)."""
        return self.assign_sub(other)

    def __imul__(self, other: TensorLike) -> Variable:
        """``v *= other``: multiply in place (cast to ``v``'s dtype, never recorded; returns
        ``v``)."""
        arr = self._value_for(other, "Variable *=")
        return self._write(_imul, arr, "Variable *=")

    def __itruediv__(self, other: TensorLike) -> Variable:
        """``v /= other``: divide in place (never recorded; returns ``v``). A float Variable
        only: true division of an integer Variable would be truncated (``TypeError``)."""
        if self.dtype.kind not in "f":
            raise TypeError(f"Variable /=: the variable {self.name or '<unnamed>'} has dtype "
                            f"{self.dtype}, and true division in place would truncate; create it "
                            "as a float Variable (gt.Variable(..., dtype=\"float32\"))")
        arr = self._value_for(other, "Variable /=")
        return self._write(_idiv, arr, "Variable /=")

    def value(self) -> Tensor:
        """A Tensor holding a snapshot copy of the current value (not tracked)."""
        tr = STATE.trace
        if tr is not None and not tr.suspended:  # gt.function: the copy is a program step
            tr.saw((self,))
            return _wrap(tr.call(np.copy, (self.data,), {}), self._backend)
        return _wrap(self.data.copy(), self._backend)

    def numpy(self) -> np.ndarray:
        """A host ``numpy.ndarray`` copy of the current value (later ``assign`` calls do not
        change it).

        Example:
            >>> import gradtape as gt
            >>> gt.Variable([1.0, 2.0]).numpy()
            array([1., 2.], dtype=float32)
        """
        tr = STATE.trace
        if tr is not None and not tr.suspended:  # gt.function: a host value of the state
            tr.host_sync("Variable.numpy()")
        _note_escape(self)
        if self._backend.name == "numpy":
            return np.array(self.data, copy=True)
        return self._backend.to_host(self.data)

    def __repr__(self) -> str:
        body = np.array2string(self._backend.to_host(self.data), separator=", ", prefix="Variable(")
        name = f", name={self.name!r}" if self.name else ""
        return f"Variable({body}, dtype={self.dtype}{name}, trainable={self.trainable})"

    def __reduce__(self) -> tuple:
        """Pickle as a NEW Variable (fresh identity, watched by no tape) with the same value,
        backend, name and trainable flag; ``copy.copy`` and ``copy.deepcopy`` do the same."""
        return (_rebuild_variable, (type(self), self._backend.to_host(self.data), self._backend.name,
                                    self.name, self.trainable))

    def __copy__(self) -> Variable:
        # (in the buffer's own layout, as pickle keeps it: a Fortran-ordered copy would sum
        # in another order and a copied model drift from the original in the last bits)
        return _rebuild_variable(type(self), self.data.copy(order="K"), self._backend.name, self.name,
                                 self.trainable)

    def __deepcopy__(self, memo: dict) -> Variable:
        return self.__copy__()


def _rebuild_tensor(cls: type[Tensor], array: Array, backend: str) -> Tensor:
    """Unpickle / copy a Tensor: ``array`` (host or already on ``backend``) on that backend."""
    b = backend_by_name(backend)
    t = cls.__new__(cls)
    t.data = array if b.owns(array) else b.xp.asarray(array)
    t._backend = b
    t._id = 0
    t._origin = None
    return t


def _rebuild_variable(cls: type[Variable], array: Array, backend: str, name: str | None,
                      trainable: bool) -> Variable:
    """Unpickle / copy a Variable: a new one (fresh id) holding ``array`` on ``backend``."""
    b = backend_by_name(backend)
    if not (isinstance(array, b.ndarray) and getattr(array.flags, "writeable", True)):
        array = b.xp.array(array)  # a writable buffer of its own, never a NumPy scalar
    v = cls.__new__(cls)
    v.data = array
    v._backend = b
    v._id = _next_id()
    v._origin = None
    v.name = name
    v._trainable = bool(trainable)
    v._snapshots = None
    VARIABLE_BUFFERS[id(array)] = v
    return v


def _write_weak(ref: weakref.ref[Variable], fn: Any, what: str, arr: Array) -> None:
    """A ``gt.function`` program's write into the Variable ``ref`` names (see
    ``Variable._write``); a Variable that died has no reader left, and its program is stale."""
    v = ref()
    if v is not None:
        v._write_now(fn, arr, what)


def _copyto(buf: Any, arr: Any) -> None:
    backend_of(buf).xp.copyto(buf, arr, casting="unsafe")


def _iadd(buf: Any, arr: Any) -> None:
    backend_of(buf).xp.add(buf, arr, out=buf, casting="unsafe")


def _isub(buf: Any, arr: Any) -> None:
    backend_of(buf).xp.subtract(buf, arr, out=buf, casting="unsafe")


def _imul(buf: Any, arr: Any) -> None:
    backend_of(buf).xp.multiply(buf, arr, out=buf, casting="unsafe")


def _idiv(buf: Any, arr: Any) -> None:
    backend_of(buf).xp.true_divide(buf, arr, out=buf, casting="unsafe")


def _wrap(array: Array, backend: Backend) -> Tensor:
    """Make a Tensor around a backend array without validation (the hot path)."""
    t = Tensor.__new__(Tensor)
    t.data = array
    t._backend = backend
    t._id = 0
    t._origin = None
    return t


_FLOAT_DEFAULT = np.dtype(np.float32)
_COMPLEX_DEFAULT = np.dtype(np.complex64)


def broadcasts_to(shape: tuple[int, ...], target: tuple[int, ...]) -> bool:
    """Whether an array of ``shape`` broadcasts to exactly ``target`` (NumPy's rules)."""
    try:
        return np.broadcast_shapes(tuple(shape), tuple(target)) == tuple(target)
    except ValueError:
        return False


def _host_view(t: Tensor, data: Any = None) -> np.ndarray:
    """``t``'s values (or its array ``data``) as a host array: a read-only view on NumPy, a
    copy from CuPy."""
    data = t.data if data is None else data
    if t._backend.name != "numpy":
        return t._backend.to_host(data)
    view = np.asarray(data).view()
    view.flags.writeable = False
    return view


_NUMERIC_KINDS = "biufc"


def _check_numeric(arr: Array, what: object) -> None:
    if arr.dtype.kind not in _NUMERIC_KINDS:
        raise TypeError(f"gt.tensor: data must be numeric (bool, int, float or complex), got "
                        f"{type(what).__name__} of dtype {arr.dtype}")


def _outside_int_range(src: Any, dtype: np.dtype) -> bool:
    """Whether a non-empty array of finite numbers ``src`` holds values integer ``dtype`` cannot
    (the cast and assign checks'). Compared as Python numbers, with no array library's promotion
    of a bound past the dtype's range: a float against ``max + 1``, a power of two, exact in
    float64 (``> max`` rounded 2**31 - 1 up to 2**31 in float32, and 2**31 passed)."""
    info = np.iinfo(dtype)
    lo, hi = src.min(), src.max()
    if src.dtype.kind == "f":
        return float(lo) < float(info.min) or float(hi) >= float(info.max + 1)
    return int(lo) < info.min or int(hi) > info.max


def _check_int_cast(src: Any, dtype: np.dtype, xp: Any) -> None:
    """``gt.tensor(array, dtype=<an integer dtype>)``: every value of ``src`` fits ``dtype``.
    The cast would wrap an integer (300 into int8 gives 44) and give an undefined value for NaN,
    inf or a float past the range (NumPy gives INT_MIN, CuPy may differ), as ``Variable.assign``
    refuses too; a fraction truncates, as NumPy's and PyTorch's casts do."""
    sd = src.dtype
    if dtype.kind not in "iu" or not src.size or sd.kind not in "fiu" or np.can_cast(sd, dtype):
        return
    if sd.kind == "f" and not bool(xp.isfinite(src).all()):
        raise ValueError(f"gt.tensor: data holds NaN or inf, which dtype {dtype} cannot represent")
    if _outside_int_range(src, dtype):
        info = np.iinfo(dtype)
        raise ValueError(f"gt.tensor: data holds numbers outside [{info.min}, {info.max}], which "
                         f"dtype {dtype} cannot hold (the cast would wrap or give an undefined "
                         "value); pass a wider dtype")


def _to_array(data: TensorLike | SupportsDLPack | SupportsArray, dtype: DTypeLike | None = None, copy: bool = False,
              to_active: bool = False) -> tuple[Array, Backend]:
    """Convert user data to a backend array, following the dtype rules of docs/api.md.

    ``copy``: the result never shares memory with ``data`` (constructors use it: tensors are
    immutable, a tape may keep them for the backward, and a Variable writes in place). ``to_active``:
    host (NumPy) arrays move to the active backend (constructors); op operands keep theirs, so
    an op never copies between host and device behind the user's back.
    """
    if dtype is not None:
        dtype = check_dtype(dtype, "dtype")
    if isinstance(data, Tensor):
        backend = data._backend
        arr = data.data
        if dtype is not None:
            _check_int_cast(arr, dtype, backend.xp)
            arr = arr.astype(dtype, copy=copy)
        elif copy:
            arr = arr.copy()
        return arr, backend
    if getattr(data, "_gt_traced", False):  # an array of a gt.function trace: its own backend
        backend = backend_of(data)
        traced: Any = data
        # (order "K" as np.array's copy of a host array: an F-ordered array stays F-ordered,
        # so later reductions add in the eager step's order)
        arr = traced.astype(dtype, copy=copy) if dtype is not None else (
            traced.copy(order="K") if copy else traced)
        return arr, backend
    if isinstance(data, (np.ndarray, np.generic)):
        backend = get_backend() if to_active else NUMPY
        if dtype is not None:
            _check_int_cast(data, dtype, np)
        if backend is NUMPY:
            arr = np.array(data, dtype=dtype, copy=True) if copy else np.asarray(data, dtype=dtype)
        else:  # host data for the device: one copy, made by the device library
            arr = backend.xp.asarray(np.asarray(data, dtype=dtype))
        _check_numeric(arr, data)
        return arr, backend
    mod = type(data).__module__
    if mod.startswith("cupy") or is_extra_array(data):  # a device array keeps its backend
        backend = backend_of(data)
        if dtype is not None:
            _check_int_cast(data, dtype, backend.xp)
        arr = backend.xp.array(data, dtype=dtype, copy=True) if copy else backend.xp.asarray(data, dtype=dtype)
        return arr, backend
    if isinstance(data, (str, bytes)) or data is None:
        raise TypeError(f"gt.tensor: data must be a number, a (nested) list, or an array, "
                        f"got {type(data).__name__}")
    backend = get_backend()
    if hasattr(data, "__dlpack__") and not isinstance(data, (list, tuple, int, float, bool, complex)):
        device = data.__dlpack_device__()[0] if hasattr(data, "__dlpack_device__") else 1
        shared = not (device in (1, 3) and backend is not NUMPY)
        producer = cast(SupportsDLPack, data)
        try:
            if shared:
                arr = backend.xp.from_dlpack(producer)
            else:  # host memory for the device: through NumPy, then one copy to the device
                arr = backend.xp.asarray(np.from_dlpack(producer))
        except (BufferError, RuntimeError) as exc:  # e.g. a PyTorch tensor that requires
            # grad (BufferError); a dtype NumPy lacks, bfloat16 (RuntimeError; another
            # RuntimeError, a device's, goes on as it is)
            if not isinstance(exc, BufferError) and "dtype" not in str(exc).lower():
                raise
            raise TypeError(f"gt.tensor: {type(data).__name__} cannot be read through DLPack "
                            f"({exc}){_DLPACK_HINT}") from None
        if dtype is not None:
            _check_int_cast(arr, dtype, backend.xp)
            arr = arr.astype(dtype, copy=copy and shared)
        elif copy and shared:  # the producer's memory: a constructor never keeps it
            arr = arr.copy()
        _check_numeric(arr, data)
        return arr, backend
    try:
        host = np.asarray(data, dtype=dtype)
    except (ValueError, TypeError) as exc:
        raise TypeError(f"gt.tensor: cannot convert {type(data).__name__} to an array: {exc}") from None
    except OverflowError as exc:  # a Python int past the dtype's range (300 as uint8)
        raise OverflowError(f"gt.tensor: a value in data does not fit dtype {dtype} ({exc}); "
                            "pass a wider dtype") from None
    python_data = isinstance(data, (list, tuple, int, float, bool, complex))
    if dtype is None and python_data and (host.dtype.kind in "uO" or (
            host.dtype.kind == "f" and host.size and not _has_float(data))):
        # Python ints give int64: one past its range made NumPy pick uint64 (2**63), float64
        # ([2**63, 1]) or objects (2**70)
        if _only_ints(data):
            raise OverflowError("gt.tensor: an integer in data does not fit in int64; pass floats "
                                "(e.g. 2.0 ** 70) or dtype='float64'")
        if host.dtype.kind == "O" and _only_reals(data):  # floats next to a huge int: floats
            host = np.asarray(data, dtype=np.float64)
    if host.dtype.kind == "O":
        raise TypeError("gt.tensor: data is ragged or holds non-numeric objects; expected a "
                        "number or a rectangular nested list of numbers")
    _check_numeric(host, data)
    if dtype is None and host.dtype.kind in "fc" and python_data:
        # Python floats become float32, Python complex numbers complex64; an array keeps its
        # dtype, also inside a list (float64 arrays or tensors in a list give float64, as in
        # PyTorch; a Python float next to them counts as the default float32, as there)
        arrays, numbers = _array_dtype(data)
        if arrays is None or arrays.kind not in "fc":
            target = _FLOAT_DEFAULT if host.dtype.kind == "f" else _COMPLEX_DEFAULT
        else:
            target = np.promote_types(arrays, _FLOAT_DEFAULT) if numbers else arrays
            if host.dtype.kind == "c":
                target = np.promote_types(target, _COMPLEX_DEFAULT)
        host = host.astype(target)
    elif copy and not python_data and backend.name == "numpy":  # an __array__ object may
        host = host.copy()                                       # hand out its own buffer
    arr = host if backend.name == "numpy" else backend.xp.asarray(host)
    return arr, backend


_DLPACK_HINT = ("; expected a numeric array of a dtype NumPy has (bool, int, uint, float16/32/64, "
                "complex): convert a bfloat16 one first, e.g. x.float()")


def _python_leaves(data: object) -> Iterator[object]:
    """The scalars of nested Python lists and tuples."""
    if isinstance(data, (list, tuple)):
        for d in data:
            yield from _python_leaves(d)
    else:
        yield data


_PY_NUMBERS = frozenset({float, int, bool, complex})


def _array_dtype(data: object) -> tuple[np.dtype | None, bool]:
    """The promoted dtype of the arrays, NumPy scalars and tensors (anything with a dtype) in
    nested lists and tuples (None when there are only Python numbers), and whether Python
    floats or complex numbers are among them. A list of Python numbers only is passed over by
    one C-level scan of its types (a list of a million floats: about 10 ms)."""
    dt = None
    numbers = False
    stack = [data]
    while stack:
        d = stack.pop()
        if not isinstance(d, (list, tuple)):
            t = getattr(d, "dtype", None)
            if t is not None:
                dt = np.dtype(t) if dt is None else np.promote_types(dt, t)
            elif isinstance(d, (float, complex)):
                numbers = True
            continue
        types = set(map(type, d))
        if types <= _PY_NUMBERS:
            numbers = numbers or float in types or complex in types
            continue
        stack.extend(d)
    return dt, numbers


def _only_ints(data: object) -> bool:
    """Python ints only (bools included), in nested lists and tuples."""
    return all(isinstance(d, int) for d in _python_leaves(data))


def _has_float(data: object) -> bool:
    """A Python float (or complex) anywhere in nested lists and tuples."""
    return any(isinstance(d, (float, complex)) for d in _python_leaves(data))


def _only_reals(data: object) -> bool:
    """Python ints, floats and bools only, in nested lists and tuples."""
    return all(isinstance(d, (int, float)) for d in _python_leaves(data))


def check_dtype(dtype: DTypeLike, what: str) -> np.dtype:
    """``dtype`` as a NumPy dtype of a kind gradtape computes with (bool, int, uint, float,
    complex); ``TypeError`` naming ``what`` otherwise.

    Example:
        >>> check_dtype("float32", "dtype")
        dtype('float32')
    """
    try:
        dt = np.dtype(dtype)
    except TypeError:
        hint = ("; an int here is usually a shape given as separate numbers: pass the shape as "
                "one tuple, zeros((2, 3)) rather than zeros(2, 3)"
                if isinstance(dtype, (int, np.integer)) and not isinstance(dtype, bool) else "")
        raise TypeError(f"{what} must be a NumPy dtype (e.g. 'float32'), got {dtype!r}{hint}") from None
    if dt.kind not in _NUMERIC_KINDS:
        raise TypeError(f"{what} must be a bool, integer, float or complex dtype, got {dt} "
                        f"(from {dtype!r})")
    return dt


def tensor(data: TensorLike | SupportsDLPack | SupportsArray, dtype: DTypeLike | None = None) -> Tensor:
    """Create a constant tensor.

    Args:
        data: a Python scalar or (nested) list, a NumPy or CuPy array, another Tensor, or any
            object with ``__dlpack__`` (a PyTorch or JAX array; read through DLPack when it has
            both) or ``__array__`` (read through ``np.asarray``).
        dtype: optional dtype. Python floats default to float32; an array (anything with
            ``__dlpack__`` or ``__array__``) keeps its dtype.

    Returns:
        A Tensor of the same shape as ``data``: a copy (tensors are immutable; use
        :func:`from_dlpack` to share memory), on the active backend (host data moves there;
        CuPy arrays and tensors keep their backend).

    Raises:
        TypeError: ``data`` is ragged, holds strings or other non-numbers, or cannot be
            exported through DLPack (a PyTorch tensor that requires grad: ``.detach()`` it).

    Example:
        >>> import numpy as np, gradtape as gt
        >>> gt.tensor([1.0, 2.0]).dtype
        dtype('float32')
        >>> class Wrapped:                      # anything NumPy can convert
        ...     def __array__(self, dtype=None, copy=None):
        ...         return np.arange(3.0)
        >>> gt.tensor(Wrapped())                # a copy, float64 kept
        tensor([0., 1., 2.], dtype=float64)
    """
    return Tensor(data, dtype)


def from_dlpack(obj: SupportsDLPack) -> Tensor:
    """Wrap any ``__dlpack__`` producer (a NumPy, CuPy, PyTorch or JAX array) without copying.

    The Tensor shares the producer's memory, so the producer's later writes show through it.
    Host memory goes to the NumPy backend, CUDA memory to CuPy. The other way,
    ``np.from_dlpack(t)``, ``torch.from_dlpack(t)`` and ``jnp.from_dlpack(t)`` read a
    gradtape tensor without copying too (JAX on the CPU shares only 64-byte-aligned buffers and
    copies others). A tape saves the arrays its backward reads, not copies: do not write to a
    shared buffer between an op and the ``gradient()`` call that differentiates it.

    Args:
        obj: an object with ``__dlpack__`` (and, for device memory, ``__dlpack_device__``).

    Returns:
        A Tensor with ``obj``'s shape and dtype, sharing its memory.

    Raises:
        TypeError: ``obj`` has no ``__dlpack__``, or cannot export through it (a non-numeric
            array; a PyTorch tensor that requires grad: ``.detach()`` it).

    Example:
        >>> import numpy as np, gradtape as gt
        >>> a = np.arange(3.0)
        >>> t = gt.from_dlpack(a)               # shape (3,), float64: a's memory
        >>> a[0] = 5.0
        >>> t
        tensor([5., 1., 2.], dtype=float64)
        >>> np.shares_memory(np.from_dlpack(t), a)   # and back, still no copy
        True
    """
    if not hasattr(obj, "__dlpack__"):
        raise TypeError(f"from_dlpack: expected an object with __dlpack__, got {type(obj).__name__}")
    device = obj.__dlpack_device__()[0] if hasattr(obj, "__dlpack_device__") else 1
    backend = NUMPY if device in (1, 3) else backend_by_name("cupy")  # 1: CPU, 3: pinned host
    tr = STATE.trace
    if tr is not None and not tr.suspended:  # gt.function: a Variable (or its buffer) shared
        owner = obj if isinstance(obj, Variable) else variable_of_buffer(obj)
        if owner is not None and owner._backend is backend:  # is its buffer as the program
            return _wrap(tr.read(owner.data), backend)  # reads it at each call
    try:
        arr = backend.xp.from_dlpack(obj)
    except (BufferError, RuntimeError) as exc:  # e.g. a string array: DLPack carries
        # numbers only; a dtype NumPy lacks, bfloat16 (RuntimeError; another goes on)
        if not isinstance(exc, BufferError) and "dtype" not in str(exc).lower():
            raise
        raise TypeError(f"from_dlpack: {type(obj).__name__} cannot be shared through DLPack "
                        f"({exc}){_DLPACK_HINT}") from None
    _check_numeric(arr, obj)
    return _wrap(arr, backend)


def _note_escape(t: Tensor) -> None:
    note_cut(t, "its value left the tape through a NumPy/CuPy array (.numpy() or np.asarray)")
