"""Argument handling shared by the op families."""

from __future__ import annotations

import math
import operator
from typing import Any

import numpy as np

from .._src.primitive import copies_operand, one, pair
from .._src.tensor import Tensor

__all__ = ["pair", "one", "as_int", "as_real", "normalize_axis", "batch_size", "move_axis", "phys_axis",
           "logical_axes"]


def own_array(xp: Any, value: Any) -> Any:
    """``value`` (an index or label array, a list) as an array of module ``xp`` that later
    writes into the caller's array do not reach: a copy, as op operands are copied (a tape may
    keep it for the backward, and a reused index buffer would change the gradient); while a
    ``gt.function`` step traces, the array itself, which the program reads at each call.

    Example:
        >>> a = np.array([0, 1]); b = own_array(np, a); a[0] = 5; int(b[0])
        0
    """
    if copies_operand(value) and (isinstance(value, np.ndarray) or hasattr(value, "__array_namespace__")):
        return xp.array(value, copy=True)
    return xp.asarray(value)


def as_int(value: Any, what: str, name: str) -> int:
    """``value`` as a Python int when it is an integer (a Python or NumPy int, a 0-d integer
    array or Tensor), else TypeError naming ``what`` and ``name``: floats and bools are
    refused, as NumPy refuses them (``int(1.7)`` would pick axis 1 silently)."""
    if type(value) is int:  # (not a bool: its type is bool)
        return value
    if isinstance(value, (bool, np.bool_)) or not hasattr(value, "__index__") or \
            getattr(value, "ndim", 0) != 0 or getattr(value, "dtype", np.dtype(int)).kind not in "iu":
        raise TypeError(f"{what}: {name} must be an int, got {value!r}")
    return operator.index(value)


def is_int(value: Any) -> bool:
    """Whether :func:`as_int` takes ``value`` (an integer, not a bool or a float)."""
    try:
        as_int(value, "", "")
    except TypeError:
        return False
    return True


def as_real(value: Any, what: str, name: str) -> int | float:
    """A finite real number (a Python or NumPy int or float, or a 0-d Tensor of one; not a
    bool or string) as a Python int or float, else TypeError / ValueError naming ``what`` and
    ``name`` (a string or NaN parameter would give silent NaNs)."""
    if isinstance(value, Tensor) and value.ndim == 0 and value.dtype.kind in "iuf":
        value = value.item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{what}: {name} must be a real number (int or float), got {value!r} "
                        f"({type(value).__name__})")
    if isinstance(value, (int, np.integer)):
        return int(value)
    if not math.isfinite(value):
        raise ValueError(f"{what}: {name} must be finite, got {value}")
    return float(value)


def normalize_axis(axis: Any, ndim: int, what: str) -> tuple[int, ...] | None:
    """Return ``axis`` as a sorted tuple of non-negative ints (None stays None)."""
    if axis is None:
        return None
    if type(axis) is int and -ndim <= axis < ndim:  # the common case: one axis in range
        return (axis % ndim,)
    if isinstance(axis, (tuple, list)):
        axes = tuple(axis)
    elif getattr(axis, "ndim", 0) == 1 and getattr(axis, "dtype", None) is not None \
            and axis.dtype.kind in "iu":  # a 1-d integer array or Tensor of axes
        axes = tuple(int(a) for a in (axis.numpy() if isinstance(axis, Tensor) else axis).tolist())
    else:
        axes = (axis,)
    out = []
    for a in axes:
        if type(a) is not int and (isinstance(a, bool) or not hasattr(a, "__index__") or getattr(
                getattr(a, "dtype", None), "kind", "i") not in "iu"):  # (a 0-d bool Tensor)
            raise TypeError(f"{what}: axis must be None, an int or a tuple of ints, got {axis!r}")
        a = operator.index(a)
        if not -max(ndim, 1) <= a < max(ndim, 1):  # a 0-d tensor takes axis 0 or -1
            raise ValueError(f"{what}: axis {a} is out of range for a tensor of rank {ndim}")
        out.append(a % ndim if ndim else 0)
    if len(set(out)) != len(out):
        raise ValueError(f"{what}: repeated axis in {axis}")
    return tuple(sorted(out))


# --------------------------------------------------------------------------- batching helpers
# Shared by the vmap batching rules (``rule(args, dims, **params) -> (out, out_dim)``): they
# read shapes only and move axes with gradtape ops (Tensor.transpose / Tensor.reshape, the
# runtime link to the shape ops), never array values.
def batch_size(args: tuple, dims: tuple) -> int:
    """The size of the vmapped axis: that of the first batched argument."""
    return next(int(a.shape[d]) for a, d in zip(args, dims) if d is not None)


def move_axis(t: Tensor, src: int, dst: int) -> Tensor:
    """``t`` with axis ``src`` moved to position ``dst`` (negative counts from the end): one
    transpose, none when it is already there."""
    nd = t.ndim
    src, dst = src % nd, dst % nd
    if src == dst:
        return t
    order = [i for i in range(nd) if i != src]
    order.insert(dst, src)
    return t.transpose(tuple(order))


def phys_axis(axis: int, d: int) -> int:
    """The physical position of a logical (non-negative) axis next to a batch axis at ``d``."""
    return axis if axis < d else axis + 1


def logical_axes(axis: Any, nd: int) -> tuple[int, ...]:
    """A reduction's ``axis`` parameter (None, an int or a tuple, negative allowed) as the
    sorted non-negative logical axes of a rank-``nd`` example (None: all of them)."""
    if axis is None:
        return tuple(range(nd))
    if not nd:  # a 0-d example is returned unreduced (as the reductions do)
        return ()
    axes = (axis,) if hasattr(axis, "__index__") else tuple(axis)
    return tuple(sorted({operator.index(a) % nd for a in axes}))
