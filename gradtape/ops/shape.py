"""Shape primitives: reshape, transpose, broadcast_to, moveaxis, stack, concat, astype, ..."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._primitive import bind, primitive
from .._tensor import Tensor
from ._util import one

__all__ = ["reshape", "transpose", "broadcast_to", "moveaxis", "stack", "astype", "stop_gradient"]


P_RESHAPE = primitive("reshape", lambda xp, x, *, shape: xp.reshape(x, shape),
                      lambda rec, g: (reshape(g, rec.in_shapes[0]),), saves_inputs=False)


def reshape(x: Any, shape: Any) -> Tensor:
    """Reshape to ``shape`` (one entry may be -1), as ``np.reshape``.

    Example:
        >>> import gradtape as gt
        >>> gt.reshape(gt.tensor([1.0, 2.0, 3.0, 4.0]), (2, 2)).shape
        (2, 2)
    """
    x = one(x)
    shape = (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(int(s) for s in shape)
    try:
        target = np.empty(x.shape, dtype=np.bool_).reshape(shape).shape if -1 in shape else shape
    except ValueError:
        target = None
    if target is None or int(np.prod(target, dtype=np.int64)) != x.size:
        raise ValueError(f"reshape: cannot reshape a tensor of shape {x.shape} ({x.size} elements) "
                         f"into shape {shape}")
    if tuple(target) == x.shape:
        return x
    return bind(P_RESHAPE, x, shape=tuple(target))


def _transpose_vjp(rec: Any, g: Tensor) -> tuple:
    axes = rec.params["axes"]
    return (transpose(g, tuple(int(i) for i in np.argsort(axes))),)


P_TRANSPOSE = primitive("transpose", lambda xp, x, *, axes: xp.transpose(x, axes),
                        _transpose_vjp, saves_inputs=False)


def transpose(x: Any, axes: Any = None) -> Tensor:
    """Permute axes (reverse them when ``axes`` is None), as ``np.transpose``.

    Example:
        >>> import gradtape as gt
        >>> gt.transpose(gt.tensor([[1.0, 2.0, 3.0]])).shape
        (3, 1)
    """
    x = one(x)
    if axes is None:
        axes = tuple(range(x.ndim - 1, -1, -1))
    else:
        axes = tuple(int(a) % max(x.ndim, 1) for a in axes)
        if sorted(axes) != list(range(x.ndim)):
            raise ValueError(f"transpose: axes {axes} is not a permutation of the {x.ndim} axes "
                             f"of a tensor of shape {x.shape}")
    if axes == tuple(range(x.ndim)):
        return x
    return bind(P_TRANSPOSE, x, axes=axes)


P_BROADCAST_TO = primitive("broadcast_to", lambda xp, x, *, shape: xp.broadcast_to(x, shape),
                           lambda rec, g: (g,), saves_inputs=False)


def broadcast_to(x: Any, shape: Any) -> Tensor:
    """Broadcast to ``shape`` (NumPy rules); the gradient is summed back.

    Example:
        >>> import gradtape as gt
        >>> gt.broadcast_to(gt.tensor([1.0, 2.0]), (3, 2)).shape
        (3, 2)
    """
    x = one(x)
    shape = tuple(int(s) for s in shape)
    try:
        ok = np.broadcast_shapes(x.shape, shape) == shape
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"broadcast_to: cannot broadcast shape {x.shape} to {shape}")
    if shape == x.shape:
        return x
    return bind(P_BROADCAST_TO, x, shape=shape)


def moveaxis(x: Any, source: int, destination: int) -> Tensor:
    """Move one axis to a new position, as ``np.moveaxis``. Example: ``gt.moveaxis(x, 0, -1)``."""
    x = one(x)
    order = [i for i in range(x.ndim) if i != source % x.ndim]
    order.insert(destination % x.ndim, source % x.ndim)
    return transpose(x, tuple(order))


def _stack_impl(xp: Any, *xs: Any, axis: int) -> Any:
    return xp.stack(xs, axis=axis)


def _stack_vjp(rec: Any, g: Tensor) -> tuple:
    from .indexing import take

    axis = rec.params["axis"]
    return tuple(take(g, i, axis=axis) if need else None for i, need in enumerate(rec.needs))


P_STACK = primitive("stack", _stack_impl, _stack_vjp, saves_inputs=False)


def stack(tensors: Any, axis: int = 0) -> Tensor:
    """Stack tensors of equal shape along a new axis.

    Shapes: n tensors of shape ``s`` -> ``s`` with ``n`` inserted at ``axis``.

    Example:
        >>> import gradtape as gt
        >>> gt.stack([gt.tensor([1.0]), gt.tensor([2.0])], axis=0).shape
        (2, 1)
    """
    ts = [one(t) for t in tensors]
    if not ts:
        raise ValueError("stack: need at least one tensor")
    for i, t in enumerate(ts):
        if t.shape != ts[0].shape:
            raise ValueError(f"stack: tensors[{i}] has shape {t.shape}, tensors[0] has {ts[0].shape}")
    axis = int(axis) % (ts[0].ndim + 1)
    return bind(P_STACK, *ts, axis=axis)


def _astype_vjp(rec: Any, g: Tensor) -> tuple:
    return (astype(g, rec.in_dtypes[0]),)


P_ASTYPE = primitive("astype", lambda xp, x, *, dtype: x.astype(dtype), _astype_vjp,
                     saves_inputs=False)


def astype(x: Any, dtype: Any) -> Tensor:
    """Cast to ``dtype``. Differentiable between float dtypes; casting to an integer or bool
    dtype cuts the gradient.

    Example:
        >>> import gradtape as gt
        >>> gt.astype(gt.tensor([1.5]), "float64").dtype
        dtype('float64')
    """
    x = one(x)
    dtype = np.dtype(dtype)
    if dtype == x.dtype:
        return x
    return bind(P_ASTYPE, x, dtype=dtype)


P_STOP_GRADIENT = primitive("stop_gradient", lambda xp, x: x, nondiff=True)


def stop_gradient(x: Any) -> Tensor:
    """The value of ``x`` with no gradient flowing through it.

    Example:
        >>> import gradtape as gt
        >>> x = gt.tensor(2.0)
        >>> with gt.GradientTape() as tape:
        ...     tape.watch(x)
        ...     y = x * gt.stop_gradient(x)
        >>> float(tape.gradient(y, x))
        2.0
    """
    return bind(P_STOP_GRADIENT, one(x))
