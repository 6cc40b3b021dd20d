"""Reductions: sum, mean, prod, max, min, logsumexp, var, std, norm, argmax."""

from __future__ import annotations

from typing import Any

from .._primitive import Domain, bind, primitive
from .._tensor import Tensor
from ._util import normalize_axis, one

__all__ = ["sum"]


def _expand_back(g: Tensor, in_shape: tuple, axes: tuple | None, keepdims: bool) -> Tensor:
    """Broadcast a reduced gradient back to the input's shape (gradtape ops)."""
    from .shape import broadcast_to, reshape

    if not keepdims:
        kept = tuple(1 if (axes is None or i in axes) else s for i, s in enumerate(in_shape))
        g = reshape(g, kept)
    return broadcast_to(g, in_shape)


def _sum_vjp(rec: Any, g: Tensor) -> tuple:
    return (_expand_back(g, rec.in_shapes[0], rec.params["axis"], rec.params["keepdims"]),)


P_SUM = primitive("sum", lambda xp, x, *, axis, keepdims: xp.sum(x, axis=axis, keepdims=keepdims),
                  _sum_vjp, saves_inputs=False, domains=(Domain(),))


def sum(x: Any, axis: Any = None, keepdims: bool = False) -> Tensor:  # noqa: A001
    """Sum over ``axis`` (None: all axes; int or tuple; negative allowed).

    Shapes: ``x[...]`` -> ``x.shape`` without the reduced axes (kept as 1 with ``keepdims``).

    Example:
        >>> import gradtape as gt
        >>> gt.sum(gt.tensor([[1.0, 2.0], [3.0, 4.0]]), axis=0).numpy()
        array([4., 6.], dtype=float32)
    """
    x = one(x)
    return bind(P_SUM, x, axis=normalize_axis(axis, x.ndim, "sum"), keepdims=bool(keepdims))
