"""Two renderings of one VJP rule.

A primitive may declare its VJP once, as ``rule(m, record, g)`` written against a small
vocabulary ``m``: ``m.val`` (a saved Tensor as this rendering computes with it), ``m.data``,
``m.const``, ``m.scalar``, ``m.xp_of`` and ``m.apply(primitive, *operands, **params)``, plus
Python operators and the methods Tensors and backend arrays share (``.shape``, ``.ndim``,
``.dtype``, ``.sum(axis=, keepdims=)``, ``.reshape``, ``.astype``, ``.transpose``, basic
slicing). :data:`ON_TENSORS` renders it in gradtape ops (bound,
recorded when a tape records, so differentiable: this is the primitive's ``vjp``);
:func:`on_arrays` renders it on backend arrays by calling each primitive's ``impl`` (the
first-order pass, no dispatch). As with the derivative expressions of elementwise ops, the
formula exists once.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .tensor import _wrap

__all__ = ["OnTensors", "OnArrays", "ON_TENSORS", "ON_NUMPY", "on_arrays"]


class OnTensors:
    """The vocabulary a VJP ``rule(m, rec, g)`` is written against, rendered on Tensors: ``g``
    is a Tensor, primitives are bound (recorded when a tape records, so the rule stays
    differentiable). Python operators (``g * y``) work on both renderings.

    Example:
        >>> import gradtape as gt
        >>> from gradtape.extend import REGISTRY
        >>> ON_TENSORS.apply(REGISTRY["reshape"], gt.tensor([1.0, 2.0]), shape=(2, 1)).shape
        (2, 1)
    """

    __slots__ = ()

    def val(self, t: Any) -> Any:
        """A saved Tensor of the record, as this rendering computes with it."""
        return t

    def data(self, x: Any) -> Any:
        """The backend array behind ``x`` (for constants such as masks)."""
        return x.data

    def const(self, array: Any, like: Any) -> Any:
        """A backend array as a non-differentiable operand next to ``like``."""
        return _wrap(array, like._backend)

    def scalar(self, value: Any, like: Any) -> Any:
        """``value`` as a 0-d non-differentiable operand of ``like``'s dtype (as a weak Python
        scalar next to ``like`` in an op), e.g. a branch of ``where``."""
        backend = like._backend
        return _wrap(backend.xp.asarray(value, dtype=like.dtype), backend)

    def xp_of(self, x: Any) -> Any:
        """The array module (NumPy or CuPy) of ``x``, a value of this rendering: for building
        constants (masks, index arrays) on the right backend."""
        return x._backend.xp

    def apply(self, prim: Any, *args: Any, **params: Any) -> Any:
        """Run ``prim`` (its inputs are valid by construction: no op-level checks)."""
        return prim(*args, **params)  # Primitive.__call__ binds


class OnArrays(OnTensors):
    """The same vocabulary on backend arrays of module ``xp``: each primitive's ``impl`` is
    called directly (first-order passes only; nothing is recorded).

    Args:
        xp: the array module (``numpy`` or ``cupy``); :func:`on_arrays` caches one per module.
    """

    __slots__ = ("xp",)

    def __init__(self, xp: Any) -> None:
        self.xp = xp

    def val(self, t: Any) -> Any:
        return t.data

    def data(self, x: Any) -> Any:
        return x

    def const(self, array: Any, like: Any) -> Any:
        return array

    def scalar(self, value: Any, like: Any) -> Any:
        return self.xp.asarray(value, dtype=like.dtype)

    def xp_of(self, x: Any) -> Any:
        return self.xp

    def apply(self, prim: Any, *args: Any, **params: Any) -> Any:
        return prim.impl(self.xp, *args, **params)


ON_TENSORS = OnTensors()
ON_NUMPY = OnArrays(np)
_ON_ARRAYS: dict[Any, OnArrays] = {np: ON_NUMPY}


def on_arrays(xp: Any) -> OnArrays:
    """The array rendering for backend module ``xp`` (cached)."""
    m = _ON_ARRAYS.get(xp)
    if m is None:
        m = _ON_ARRAYS[xp] = OnArrays(xp)
    return m
