"""Argument handling shared by the op families."""

from __future__ import annotations

import operator
from typing import Any

from .._src.primitive import one, pair

__all__ = ["pair", "one", "normalize_axis"]


def normalize_axis(axis: Any, ndim: int, what: str) -> tuple[int, ...] | None:
    """Return ``axis`` as a sorted tuple of non-negative ints (None stays None)."""
    if axis is None:
        return None
    axes = tuple(axis) if isinstance(axis, (tuple, list)) else (axis,)
    out = []
    for a in axes:
        if isinstance(a, bool) or not hasattr(a, "__index__"):
            raise TypeError(f"{what}: axis must be None, an int or a tuple of ints, got {axis!r}")
        a = operator.index(a)
        if not -max(ndim, 1) <= a < max(ndim, 1):  # a 0-d tensor takes axis 0 or -1
            raise ValueError(f"{what}: axis {a} is out of range for a tensor of rank {ndim}")
        out.append(a % ndim if ndim else 0)
    if len(set(out)) != len(out):
        raise ValueError(f"{what}: repeated axis in {axis}")
    return tuple(sorted(out))
