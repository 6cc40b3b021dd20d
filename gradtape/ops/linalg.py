"""Linear algebra: matmul, dot, einsum, outer."""

from __future__ import annotations

from typing import Any

from .._primitive import bind, primitive
from .._tensor import Tensor
from ._util import pair

__all__ = ["matmul"]


def _swap_last(t: Tensor) -> Tensor:
    from .shape import transpose

    axes = list(range(t.ndim))
    axes[-1], axes[-2] = axes[-2], axes[-1]
    return transpose(t, tuple(axes))


def _matmul_vjp(rec: Any, g: Tensor) -> tuple:
    from .shape import reshape

    a, b = rec.inputs
    if a.ndim == 1 and b.ndim == 1:
        return (g * b if rec.needs[0] else None, g * a if rec.needs[1] else None)
    A = reshape(a, (1, a.shape[0])) if a.ndim == 1 else a
    B = reshape(b, (b.shape[0], 1)) if b.ndim == 1 else b
    G = g
    if a.ndim == 1:
        G = reshape(G, G.shape[:-1] + (1,) + G.shape[-1:])
    if b.ndim == 1:
        G = reshape(G, G.shape + (1,))
    ga = gb = None
    if rec.needs[0]:
        ga = matmul(G, _swap_last(B))
        if a.ndim == 1:
            ga = reshape(ga, ga.shape[:-2] + ga.shape[-1:])
    if rec.needs[1]:
        gb = matmul(_swap_last(A), G)
        if b.ndim == 1:
            gb = reshape(gb, gb.shape[:-1])
    return ga, gb


P_MATMUL = primitive("matmul", lambda xp, a, b: xp.matmul(a, b), _matmul_vjp)


def matmul(a: Any, b: Any) -> Tensor:
    """Matrix product with NumPy's ``matmul`` rules (batch dims broadcast, 1-D promoted).

    Shapes: ``[..., n, k] @ [..., k, m] -> [..., n, m]``.

    Example:
        >>> import gradtape as gt
        >>> (gt.tensor([[1.0, 2.0]]) @ gt.tensor([[3.0], [4.0]])).numpy()
        array([[11.]], dtype=float32)
    """
    a, b = pair(a, b)
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError(f"matmul: operands must be at least 1-D, got shapes {a.shape} and {b.shape}")
    ka = a.shape[-1]
    kb = b.shape[-2] if b.ndim > 1 else b.shape[0]
    if ka != kb:
        raise ValueError(f"matmul: contracted dimensions differ: a has shape {a.shape}, b has "
                         f"shape {b.shape} ({ka} != {kb})")
    return bind(P_MATMUL, a, b)
