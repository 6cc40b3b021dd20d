"""Tensor's differentiable operators and methods, installed by the ops layer.

:class:`~gradtape._src.tensor.Tensor` sits below the primitives and ops, so it cannot import
them; this module (imported by ``gradtape.ops``) gives it ``+ - * / ** @``, comparisons,
indexing, ``.sum()``, ``.reshape()`` and the rest, as JAX's array methods are set on its array
class. The class declares their signatures for type checkers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .._src.tensor import Axis, IndexLike, Tensor, TensorLike, check_dtype
from . import elementwise as _e
from . import indexing as _i
from . import linalg as _l
from . import reductions as _r
from . import shape as _s

if TYPE_CHECKING:
    from numpy.typing import DTypeLike

__all__: list[str] = []

# the binary operators call their primitive's two-operand dispatch directly (what gt.add,
# gt.sub and gt.mul are; one call less per op: per-op overhead is a product target)
_ADD, _SUB, _MUL = _e.P_ADD.call2, _e.P_SUB.call2, _e.P_MUL.call2


def _T(self: Tensor) -> Tensor:
    """The transpose (all axes reversed)."""
    return _s.transpose(self)


def _m_add(self: Tensor, other: TensorLike) -> Tensor:
    """``self + other`` (see :func:`gradtape.add`)."""
    return _ADD(self, other)


def _m_radd(self: Tensor, other: TensorLike) -> Tensor:
    """``other + self`` (see :func:`gradtape.add`)."""
    return _ADD(other, self)


def _m_sub(self: Tensor, other: TensorLike) -> Tensor:
    """``self - other`` (see :func:`gradtape.sub`)."""
    return _SUB(self, other)


def _m_rsub(self: Tensor, other: TensorLike) -> Tensor:
    """``other - self`` (see :func:`gradtape.sub`)."""
    return _SUB(other, self)


def _m_mul(self: Tensor, other: TensorLike) -> Tensor:
    """``self * other`` (see :func:`gradtape.mul`)."""
    return _MUL(self, other)


def _m_rmul(self: Tensor, other: TensorLike) -> Tensor:
    """``other * self`` (see :func:`gradtape.mul`)."""
    return _MUL(other, self)


def _m_truediv(self: Tensor, other: TensorLike) -> Tensor:
    """``self / other`` (see :func:`gradtape.div`)."""
    return _e.div(self, other)


def _m_rtruediv(self: Tensor, other: TensorLike) -> Tensor:
    """``other / self`` (see :func:`gradtape.div`)."""
    return _e.div(other, self)


def _m_floordiv(self: Tensor, other: TensorLike) -> Tensor:
    """``self // other`` (see :func:`gradtape.floor_divide`)."""
    return _e.P_FLOOR_DIVIDE.call2(self, other)


def _m_rfloordiv(self: Tensor, other: TensorLike) -> Tensor:
    """``other // self`` (see :func:`gradtape.floor_divide`)."""
    return _e.P_FLOOR_DIVIDE.call2(other, self)


def _m_mod(self: Tensor, other: TensorLike) -> Tensor:
    """``self % other`` (see :func:`gradtape.remainder`)."""
    return _e.P_REMAINDER.call2(self, other)


def _m_rmod(self: Tensor, other: TensorLike) -> Tensor:
    """``other % self`` (see :func:`gradtape.remainder`)."""
    return _e.P_REMAINDER.call2(other, self)


def _m_pow(self: Tensor, other: TensorLike) -> Tensor:
    """``self ** other`` (see :func:`gradtape.pow`)."""
    return _e.pow(self, other)


def _m_rpow(self: Tensor, other: TensorLike) -> Tensor:
    """``other ** self`` (see :func:`gradtape.pow`)."""
    return _e.pow(other, self)


def _m_matmul(self: Tensor, other: TensorLike) -> Tensor:
    """``self @ other`` (see :func:`gradtape.matmul`)."""
    return _l.matmul(self, other)


def _m_rmatmul(self: Tensor, other: TensorLike) -> Tensor:
    """``other @ self`` (see :func:`gradtape.matmul`)."""
    return _l.matmul(other, self)


def _m_neg(self: Tensor) -> Tensor:
    """``-self`` (see :func:`gradtape.neg`)."""
    return _e.neg(self)


def _m_round(self: Tensor, ndigits: int | None = None) -> Tensor:
    """``round(self, ndigits)``: each element rounded to ``ndigits`` decimals (halves to even,
    as NumPy's ``round``), a tensor of the same shape and dtype, as ``round`` of a NumPy array
    or a PyTorch tensor gives (see :func:`gradtape.round`; its gradient is 0)."""
    if ndigits is None or ndigits == 0:
        return _e.round(self)
    if not isinstance(ndigits, (int, np.integer)) or isinstance(ndigits, bool):
        raise TypeError(f"round(tensor, ndigits): ndigits must be an int, got "
                        f"{type(ndigits).__name__}")
    if self.dtype.kind in "iub":  # integers keep their dtype (as np.round): whole already
        if ndigits > 0:  # for ndigits >= 0, to tens (halves to even) or coarser below it
            return _e.round(self)
        f = 10.0 ** -int(ndigits)
        return (_e.round(self.astype(np.float64) / f) * f).astype(self.dtype)
    scale = 10.0 ** int(ndigits)
    return _e.round(self * scale) / scale


def _m_pos(self: Tensor) -> Tensor:
    """``+self``: the tensor itself (for a Variable, a Tensor of its current value)."""
    return _s.reshape(self, self.shape) if self._is_variable else self


def _m_abs(self: Tensor) -> Tensor:
    """``abs(self)`` (see :func:`gradtape.abs`)."""
    return _e.abs(self)


def _m_getitem(self: Tensor, index: IndexLike) -> Tensor:
    """``self[index]``: basic and advanced indexing (see :func:`gradtape.getitem`)."""
    return _i.getitem(self, index)


def _m_lt(self: Tensor, other: TensorLike) -> Tensor:
    """``self < other``, elementwise (a bool tensor, no gradient)."""
    return _e.less(self, other)


def _m_le(self: Tensor, other: TensorLike) -> Tensor:
    """``self <= other``, elementwise (a bool tensor, no gradient)."""
    return _e.less_equal(self, other)


def _m_gt(self: Tensor, other: TensorLike) -> Tensor:
    """``self > other``, elementwise (a bool tensor, no gradient)."""
    return _e.greater(self, other)


def _m_ge(self: Tensor, other: TensorLike) -> Tensor:
    """``self >= other``, elementwise (a bool tensor, no gradient)."""
    return _e.greater_equal(self, other)


def _m_eq(self: Tensor, other: TensorLike) -> Tensor:
    """``self == other``, elementwise as NumPy's (a bool tensor, no gradient)."""
    return _e.equal(self, other)


def _m_ne(self: Tensor, other: TensorLike) -> Tensor:
    """``self != other``, elementwise as NumPy's (a bool tensor, no gradient)."""
    return _e.not_equal(self, other)


def _m_and(self: Tensor, other: TensorLike) -> Tensor:
    """``self & other``: bitwise and of integer tensors, logical and of bool ones (see
    :func:`gradtape.bitwise_and`)."""
    return _e.bitwise_and(self, other)


def _m_or(self: Tensor, other: TensorLike) -> Tensor:
    """``self | other`` (see :func:`gradtape.bitwise_or`)."""
    return _e.bitwise_or(self, other)


def _m_xor(self: Tensor, other: TensorLike) -> Tensor:
    """``self ^ other`` (see :func:`gradtape.bitwise_xor`)."""
    return _e.bitwise_xor(self, other)


def _m_rand(self: Tensor, other: TensorLike) -> Tensor:
    """``other & self`` (a NumPy array, list or Python bool on the left)."""
    return _e.bitwise_and(other, self)


def _m_ror(self: Tensor, other: TensorLike) -> Tensor:
    """``other | self`` (a NumPy array, list or Python bool on the left)."""
    return _e.bitwise_or(other, self)


def _m_rxor(self: Tensor, other: TensorLike) -> Tensor:
    """``other ^ self`` (a NumPy array, list or Python bool on the left)."""
    return _e.bitwise_xor(other, self)


def _m_invert(self: Tensor) -> Tensor:
    """``~self``: bitwise not of an integer tensor, logical not of a bool one (see
    :func:`gradtape.bitwise_not`)."""
    return _e.bitwise_not(self)


def _no_out(out: Any, what: str) -> None:
    """NumPy's ``np.sum(t)`` calls ``t.sum(axis=None, out=None)``: ``out=None`` is accepted
    (so ``np.sum``, ``np.mean``, ``np.max``, ``np.min`` of a tensor give a recorded tensor),
    an output buffer is not (tensors are immutable)."""
    if out is not None:
        raise TypeError(f"Tensor.{what}: out= is not supported (a tensor is immutable); use "
                        f"the result of gt.{what}(t)")


def _m_sum(self: Tensor, axis: Axis = None, keepdims: bool = False, *, dtype: Any = None,
           out: Any = None) -> Tensor:
    """Sum over ``axis`` (None: all); ``dtype`` casts first, and is the result's (as NumPy's and
    PyTorch's: an integer or bool sum is otherwise int64). See :func:`gradtape.sum`."""
    _no_out(out, "sum")
    if dtype is None:
        return _r.sum(self, axis=axis, keepdims=keepdims)
    dt = check_dtype(dtype, "Tensor.sum: dtype")  # (named as sum's argument, not astype's)
    total = _r.sum(self.astype(dt), axis=axis, keepdims=keepdims)
    return total if total.dtype == dt else total.astype(dt)


def _m_mean(self: Tensor, axis: Axis = None, keepdims: bool = False, *, dtype: Any = None,
            out: Any = None) -> Tensor:
    """Mean over ``axis`` (None: all); ``dtype`` casts first. See :func:`gradtape.mean`."""
    _no_out(out, "mean")
    if dtype is not None:  # (named as sum's argument, not astype's)
        self = self.astype(check_dtype(dtype, "Tensor.mean: dtype"))
    return _r.mean(self, axis=axis, keepdims=keepdims)


def _m_max(self: Tensor, axis: Axis = None, keepdims: bool = False, *, out: Any = None) -> Tensor:
    """Maximum over ``axis``; ties share the gradient. See :func:`gradtape.max`."""
    _no_out(out, "max")
    return _r.max(self, axis=axis, keepdims=keepdims)


def _m_min(self: Tensor, axis: Axis = None, keepdims: bool = False, *, out: Any = None) -> Tensor:
    """Minimum over ``axis``; ties share the gradient. See :func:`gradtape.min`."""
    _no_out(out, "min")
    return _r.min(self, axis=axis, keepdims=keepdims)


def _m_reshape(self: Tensor, *shape: int | Sequence[int]) -> Tensor:
    """Reshape (``t.reshape(2, 3)`` or ``t.reshape((2, 3))``). See :func:`gradtape.reshape`."""
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    return _s.reshape(self, shape)


def _m_transpose(self: Tensor, *axes: int | Sequence[int] | None) -> Tensor:
    """Permute axes (reversed when none are given). See :func:`gradtape.transpose`."""
    if len(axes) == 1 and (axes[0] is None or isinstance(axes[0], (tuple, list))):
        return _s.transpose(self, axes[0] or None)
    return _s.transpose(self, axes or None)


def _m_astype(self: Tensor, dtype: DTypeLike) -> Tensor:
    """Cast to ``dtype``; differentiable between float dtypes. See :func:`gradtape.astype`."""
    return _s.astype(self, dtype)


def _m_flatten(self: Tensor) -> Tensor:
    """The values as one axis, ``[size]`` (NumPy's ``flatten``; for some axes only, use
    :func:`gradtape.reshape` or ``gt.nn.Flatten``); recorded, as ``reshape(-1)``."""
    return _s.reshape(self, (-1,))


def _m_tolist(self: Tensor) -> Any:
    """The values as nested Python lists of Python numbers (``t.numpy().tolist()``), as
    NumPy's and PyTorch's ``tolist``; a host value: not inside a ``gt.function`` trace."""
    return self.numpy().tolist()


def install() -> None:
    """Set the operators and methods on Tensor (Variable inherits them).

    Tensor declares each of them for type checkers (its ``if TYPE_CHECKING:`` block); assigning
    a method to a class is what mypy's ``method-assign`` code flags, deliberately done here.
    """
    Tensor.T = property(_T)  # type: ignore[method-assign,assignment]
    Tensor.flatten = _m_flatten  # type: ignore[method-assign]
    Tensor.tolist = _m_tolist  # type: ignore[method-assign]
    Tensor.__add__ = _m_add  # type: ignore[method-assign]
    Tensor.__radd__ = _m_radd  # type: ignore[method-assign]
    Tensor.__sub__ = _m_sub  # type: ignore[method-assign]
    Tensor.__rsub__ = _m_rsub  # type: ignore[method-assign]
    Tensor.__mul__ = _m_mul  # type: ignore[method-assign]
    Tensor.__rmul__ = _m_rmul  # type: ignore[method-assign]
    Tensor.__truediv__ = _m_truediv  # type: ignore[method-assign]
    Tensor.__rtruediv__ = _m_rtruediv  # type: ignore[method-assign]
    Tensor.__floordiv__ = _m_floordiv  # type: ignore[method-assign]
    Tensor.__rfloordiv__ = _m_rfloordiv  # type: ignore[method-assign]
    Tensor.__mod__ = _m_mod  # type: ignore[method-assign]
    Tensor.__rmod__ = _m_rmod  # type: ignore[method-assign]
    Tensor.__pow__ = _m_pow  # type: ignore[method-assign]
    Tensor.__rpow__ = _m_rpow  # type: ignore[method-assign]
    Tensor.__matmul__ = _m_matmul  # type: ignore[method-assign]
    Tensor.__rmatmul__ = _m_rmatmul  # type: ignore[method-assign]
    Tensor.__neg__ = _m_neg  # type: ignore[method-assign]
    Tensor.__pos__ = _m_pos  # type: ignore[method-assign]
    Tensor.__round__ = _m_round  # type: ignore[method-assign]
    Tensor.__abs__ = _m_abs  # type: ignore[method-assign]
    Tensor.__getitem__ = _m_getitem  # type: ignore[method-assign]
    Tensor.__lt__ = _m_lt  # type: ignore[method-assign]
    Tensor.__le__ = _m_le  # type: ignore[method-assign]
    Tensor.__gt__ = _m_gt  # type: ignore[method-assign]
    Tensor.__ge__ = _m_ge  # type: ignore[method-assign]
    Tensor.__eq__ = _m_eq  # type: ignore[method-assign]
    Tensor.__ne__ = _m_ne  # type: ignore[method-assign]
    Tensor.__and__ = _m_and  # type: ignore[method-assign]
    Tensor.__or__ = _m_or  # type: ignore[method-assign]
    Tensor.__rand__ = _m_rand  # type: ignore[method-assign]
    Tensor.__ror__ = _m_ror  # type: ignore[method-assign]
    Tensor.__xor__ = _m_xor  # type: ignore[method-assign]
    Tensor.__rxor__ = _m_rxor  # type: ignore[method-assign]
    Tensor.__invert__ = _m_invert  # type: ignore[method-assign]
    Tensor.sum = _m_sum  # type: ignore[method-assign]
    Tensor.mean = _m_mean  # type: ignore[method-assign]
    Tensor.max = _m_max  # type: ignore[method-assign]
    Tensor.min = _m_min  # type: ignore[method-assign]
    Tensor.reshape = _m_reshape  # type: ignore[method-assign]
    Tensor.transpose = _m_transpose  # type: ignore[method-assign]
    Tensor.astype = _m_astype  # type: ignore[method-assign]


install()
