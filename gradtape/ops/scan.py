"""Scans and sorting: cumsum, cumprod, sort, argsort, topk.

``cumsum``, ``cumprod``, ``sort`` and ``argsort`` are primitives; ``topk`` gathers with the
permutation ``argsort`` gives (``take_along_axis``). The gradient of ``sort`` and ``topk``
scatters back through the (stable) sorting permutation: each element gets the gradient of the
place it moved to, tied values keeping their order. ``axis=None`` works on the flattened tensor
(NumPy); an int axis of a 0-d tensor (0 or -1) treats it as one element and keeps it 0-d
(PyTorch).
"""

from __future__ import annotations

import math
import operator
from typing import Any

import numpy as np

from .._src.autodiff.record import Record
from .._src.backend import in_float32
from .._src.errors import as_flag
from .._src.primitive import REGISTRY, bind, primitive
from .._src.rules import OnTensors
from .._src.tensor import Tensor
from ._util import normalize_axis, one, phys_axis
from .elementwise import P_EQUAL, P_LOGICAL_AND, P_WHERE
from .indexing import P_INDEX_PUT, P_INDEX_TAKE, _flat_positions, _take_along, getitem
from .shape import P_ASTYPE, P_FLIP, P_RESHAPE, _unchanged, reshape

__all__ = ["cumsum", "cumprod", "argsort", "sort", "topk"]


def _one_axis(x: Tensor, axis: Any, what: str) -> int | None:
    """``axis`` (an int) as a non-negative axis of ``x``; None for a 0-d ``x`` (axis 0 or -1)."""
    if isinstance(axis, (tuple, list)):
        raise TypeError(f"{what}: axis must be None or an int, got {axis!r}")
    axes = normalize_axis(axis, x.ndim, what)
    assert axes is not None  # axis is not None here
    return axes[0] if x.ndim else None


def _scan_axis(x: Tensor, axis: Any, what: str) -> tuple[Tensor, int, tuple | None]:
    """(the tensor to scan, its axis, the shape to restore or None): ``axis=None`` flattens,
    a 0-d tensor is scanned as a 1-element vector and reshaped back."""
    if axis is None:
        return reshape(x, (-1,)), 0, None
    ax = _one_axis(x, axis, what)
    if ax is None:
        return reshape(x, (1,)), 0, ()
    return x, ax, None


def _axis_batch(name: str) -> Any:
    """The batching rule of a primitive along one ``axis`` (its other parameters passed on):
    the axis shifted past the batch axis, which keeps its place."""
    def rule(args: tuple, dims: tuple, *, axis: int, **params: Any) -> tuple:
        x = args[0]
        d = dims[0] % x.ndim
        return bind(REGISTRY[name], x, axis=phys_axis(axis % (x.ndim - 1), d), **params), d

    return rule


def _rand(rng: Any, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape)


# --------------------------------------------------------------------------- cumsum
def _reverse_cumsum(m: OnTensors, g: Tensor, axis: int) -> Tensor:
    """``out[i] = sum of g[j] for j >= i`` along ``axis``: the adjoint of a cumulative sum."""
    flipped = m.apply(P_CUMSUM, m.apply(P_FLIP, g, axis=(axis,)), axis=axis)
    return m.apply(P_FLIP, flipped, axis=(axis,))


def _cumsum_rule(m: OnTensors, rec: Record, g: Tensor) -> tuple:
    return (_reverse_cumsum(m, g, rec.params["axis"]),)


def _cumsum_jvp(m: OnTensors, primals: tuple, tangents: tuple, out: Tensor, *, axis: int) -> Tensor:
    return m.apply(P_CUMSUM, tangents[0], axis=axis)


def _cumsum_examples(rng: Any) -> list:
    return [(cumsum, (_rand(rng, 3, 4),), {}),
            (cumsum, (_rand(rng, 3, 4),), {"axis": -1}),
            (cumsum, (_rand(rng, 2, 3, 4),), {"axis": 1}),
            (cumsum, (_rand(rng),), {"axis": 0})]


@in_float32  # (a float16 running sum stops growing once its spacing exceeds the terms: 50000
# halves summed to 1024; in float32, each running sum is rounded once)
def _cumsum_impl(xp: Any, x: Any, *, axis: Any) -> Any:
    if xp is np and x.dtype.kind == "f" and axis is not None:
        # the ufunc's accumulate itself: a RuntimeWarning (overflow) is then gradtape's, which
        # its warnings filter silences as for every op (np.cumsum's reached the user)
        add: Any = np.add
        return add.accumulate(x, axis=axis)
    return xp.cumsum(x, axis=axis)


P_CUMSUM = primitive("cumsum", _cumsum_impl, rule=_cumsum_rule,
                     jvp=_cumsum_jvp, saves_inputs=False, examples=_cumsum_examples,
                     batch=_axis_batch("cumsum"))


def cumsum(x: Any, axis: int | None = None) -> Tensor:
    """Cumulative sum along ``axis`` (None: of the flattened tensor), as ``np.cumsum``; bool
    and small integer inputs accumulate in the platform integer. The gradient is the reversed
    cumulative sum of the output gradient.

    Shapes: ``x`` -> ``x.shape`` (``[x.size]`` when ``axis`` is None).

    Example:
        >>> import gradtape as gt
        >>> gt.cumsum(gt.tensor([[1.0, 2.0], [3.0, 4.0]]), axis=1).numpy()
        array([[1., 3.],
               [3., 7.]], dtype=float32)
    """
    t, ax, back = _scan_axis(one(x), axis, "cumsum")
    out = bind(P_CUMSUM, t, axis=ax)
    return out if back is None else reshape(out, back)


# --------------------------------------------------------------------------- cumprod
def _zero_parts(m: OnTensors, x: Tensor, axis: int) -> tuple[Tensor, ...]:
    """(``x == 0``, ``x`` with its zeros replaced by 1, whether exactly one zero and whether
    exactly two zeros occurred up to each position along ``axis``, and the sum of the zero
    entries up to each position, 0 in value but not in derivative): the parts of cumprod's
    derivative, made with primitives."""
    is_zero = m.apply(P_EQUAL, x, m.scalar(0, x))
    safe = m.apply(P_WHERE, is_zero, m.scalar(1, x), x)
    count = m.apply(P_CUMSUM, m.apply(P_ASTYPE, is_zero, dtype=np.dtype(np.int64)), axis=axis)
    zeros_sum = m.apply(P_CUMSUM, m.apply(P_WHERE, is_zero, x, m.scalar(0, x)), axis=axis)
    return (is_zero, safe, m.apply(P_EQUAL, count, m.scalar(1, count)),
            m.apply(P_EQUAL, count, m.scalar(2, count)), zeros_sum)


def _cumprod_rule(m: OnTensors, rec: Record, g: Tensor) -> tuple:
    # d y_j / d x_i = product of x_k for k <= j, k != i (j >= i), without dividing by zero:
    #   x_i != 0:              sum_{j >= i} g_j y_j / x_i (y_j holds x_i once; the zeros after
    #                          i make y_j, and the true derivative, 0)
    #   x_i the first zero:    sum_{j >= i} g_j * (product of the non-zeros up to j) while no
    #                          second zero has come
    #   a later zero:          0 (every product holds the first zero)
    # Exact with any zeros, and written so that its own derivative (cumprod's second) is exact
    # too: where exactly two zeros a, b have come up to j, d y_j / d x_a is the product of the
    # non-zeros times x_b (0 in value; its derivative with respect to x_b is that product), so
    # each zero i adds sum_j g_j * partial_j * (z_j - x_i) over those j, z_j the sum of the
    # zero entries up to j (0 in value, and the term's derivative with respect to x_i is 0).
    axis = rec.params["axis"]
    x, y = m.val(rec.inputs[0]), m.val(rec.output)
    is_zero, safe, one_zero, two_zeros, zeros_sum = _zero_parts(m, x, axis)
    nonzero_part = _reverse_cumsum(m, g * y, axis) / safe
    partial = m.apply(P_CUMPROD, safe, axis=axis)  # the product of the non-zeros so far
    zero = m.scalar(0, partial)
    at_zero = _reverse_cumsum(m, g * m.apply(P_WHERE, one_zero, partial, zero), axis)
    first_zero = m.apply(P_LOGICAL_AND, is_zero, one_zero)
    gp2 = g * m.apply(P_WHERE, two_zeros, partial, zero)
    second = _reverse_cumsum(m, gp2 * zeros_sum, axis) - x * _reverse_cumsum(m, gp2, axis)
    zero_part = m.apply(P_WHERE, first_zero, at_zero, zero) + second
    return (m.apply(P_WHERE, is_zero, zero_part, nonzero_part),)


def _cumprod_jvp(m: OnTensors, primals: tuple, tangents: tuple, out: Tensor, *, axis: int) -> Tensor:
    # y'_j = y_j * sum_{i <= j, x_i != 0} x'_i / x_i  +  [one zero so far] * (product of the
    # non-zeros up to j) * x'_(that zero): the same cases as the rule
    # With exactly two zeros a, b up to j, d y_j / d x_a = partial_j * x_b (0 in value): the
    # term partial_j * (z_j * T_j - S_j), T_j the sum of the zeros' tangents up to j, S_j that
    # of x_i t_i over them, z_j the sum of the zero entries (so that the tangent's own
    # derivative, cumprod's second, is exact there, as the rule's)
    x, t = primals[0], tangents[0]
    is_zero, safe, one_zero, two_zeros, zeros_sum = _zero_parts(m, x, axis)
    zero = m.scalar(0, t)
    ratio = m.apply(P_WHERE, is_zero, zero, t / safe)
    total = out * m.apply(P_CUMSUM, ratio, axis=axis)
    at_zero = m.apply(P_CUMSUM, m.apply(P_WHERE, is_zero, t, zero), axis=axis)
    partial = m.apply(P_CUMPROD, safe, axis=axis)
    zero_term = m.apply(P_WHERE, one_zero, partial * at_zero, m.scalar(0, total))
    xt = m.apply(P_CUMSUM, m.apply(P_WHERE, is_zero, x * t, zero), axis=axis)
    second = m.apply(P_WHERE, two_zeros, partial * (zeros_sum * at_zero - xt),
                     m.scalar(0, total))
    return total + zero_term + second


def _cumprod_examples(rng: Any) -> list:
    def make(*shape: int) -> np.ndarray:
        return rng.uniform(0.5, 1.5, shape) * rng.choice([-1.0, 1.0], shape)

    with_zero = make(3, 4)
    with_zero[0, 1] = with_zero[2, 3] = 0.0  # one zero in two of the rows
    return [(cumprod, (make(3, 4),), {"axis": 1}),
            (cumprod, (make(2, 3, 4),), {"axis": 0}),
            (cumprod, (with_zero,), {"axis": -1}),
            (cumprod, (np.array([0.5, 0.0, 1.5, -2.0, 0.7]),), {}),
            (cumprod, (make(),), {"axis": -1})]


def _cumprod_impl(xp: Any, x: Any, *, axis: Any) -> Any:
    if xp is np and x.dtype.kind == "f" and axis is not None:  # (as cumsum's)
        mul: Any = np.multiply
        return mul.accumulate(x, axis=axis)
    return xp.cumprod(x, axis=axis)


P_CUMPROD = primitive("cumprod", _cumprod_impl,
                      rule=_cumprod_rule, jvp=_cumprod_jvp, saves_output=True,
                      examples=_cumprod_examples, batch=_axis_batch("cumprod"))


def cumprod(x: Any, axis: int | None = None) -> Tensor:
    """Cumulative product along ``axis`` (None: of the flattened tensor), as ``np.cumprod``.
    The gradient is exact when ``x`` holds zeros (products of the other factors, never a
    division by zero), and so is the second derivative, with any number of zeros (as
    :func:`prod`).

    Shapes: ``x`` -> ``x.shape`` (``[x.size]`` when ``axis`` is None).

    Example:
        >>> import gradtape as gt
        >>> gt.cumprod(gt.tensor([1.0, 2.0, 3.0, 4.0])).numpy()
        array([ 1.,  2.,  6., 24.], dtype=float32)
    """
    t, ax, back = _scan_axis(one(x), axis, "cumprod")
    out = bind(P_CUMPROD, t, axis=ax)
    return out if back is None else reshape(out, back)


# --------------------------------------------------------------------------- sorting
def _argsort_impl(xp: Any, x: Any, *, axis: int, descending: bool) -> Any:
    if not descending:
        return xp.argsort(x, axis=axis, kind="stable")
    # stable and descending: sort the reversed axis, reverse the result, count from the end
    # (ties keep their order; NaN, last ascending, comes first)
    n = x.shape[axis]
    order = xp.argsort(xp.flip(x, axis=axis), axis=axis, kind="stable")
    return (n - 1) - xp.flip(order, axis=axis)


def _argsort_examples(rng: Any) -> list:
    x = rng.permutation(12).reshape(3, 4) * 0.25
    return [(argsort, (x,), {}), (argsort, (x,), {"axis": 0, "descending": True})]


P_ARGSORT = primitive("argsort", _argsort_impl, nondiff=True, examples=_argsort_examples,
                      batch=_axis_batch("argsort"))


def _sort_impl(xp: Any, x: Any, *, axis: int, descending: bool) -> Any:
    out = xp.sort(x, axis=axis)  # NaN last; the values do not depend on the order of ties
    return xp.flip(out, axis=axis) if descending else out


def _permutation(m: OnTensors, x: Tensor, shape: tuple, axis: int, descending: bool) -> Any:
    """Where each sorted element came from, as positions in the flattened ``x``."""
    order = m.apply(P_ARGSORT, x, axis=axis, descending=descending)
    return _flat_positions(m, order, shape, axis)


def _sort_rule(m: OnTensors, rec: Record, g: Tensor) -> tuple:
    # scatter the output gradient back to where each value came from (a permutation: no repeats)
    p = rec.params
    shape = rec.in_shapes[0]
    where = _permutation(m, m.val(rec.inputs[0]), shape, p["axis"], p["descending"])
    flat = m.apply(P_INDEX_PUT, g, where, axis=0, shape=(math.prod(shape),))
    return (m.apply(P_RESHAPE, flat, shape=shape),)


def _sort_jvp(m: OnTensors, primals: tuple, tangents: tuple, out: Tensor, *, axis: int,
              descending: bool) -> Tensor:
    x, t = primals[0], tangents[0]
    where = _permutation(m, x, x.shape, axis, descending)
    return m.apply(P_INDEX_TAKE, m.apply(P_RESHAPE, t, shape=(math.prod(x.shape),)), where, axis=0)


def _sort_examples(rng: Any) -> list:
    x = rng.permutation(12).reshape(3, 4) * 0.25  # no ties: finite differences keep the order
    return [(sort, (x,), {}), (sort, (x,), {"axis": 0, "descending": True}),
            (sort, (x,), {"axis": None}), (sort, (rng.permutation(5) * 0.5,), {"descending": True}),
            (_topk_values, (x, 2), {}), (_topk_values, (x, 3), {"axis": 0})]


def _topk_values(x: Any, k: int, axis: int = -1) -> Tensor:
    """The values of :func:`topk` (one output, for the generated vmap tests)."""
    return topk(x, k, axis)[0]


P_SORT = primitive("sort", _sort_impl, rule=_sort_rule, jvp=_sort_jvp, examples=_sort_examples,
                   batch=_axis_batch("sort"))


def _sort_axis(x: Tensor, axis: Any, what: str) -> tuple[Tensor, int | None]:
    """(the tensor, its axis), flattened for ``axis=None``; axis None for a 0-d tensor."""
    if axis is None:
        return reshape(x, (-1,)), 0
    return x, _one_axis(x, axis, what)


def argsort(x: Any, axis: int | None = -1, descending: bool = False) -> Tensor:
    """The indices that sort ``x`` along ``axis`` (None: the flattened tensor), ascending or
    ``descending``; stable: tied values keep their order. NaN sorts as the largest value
    (last ascending, first descending). An integer tensor; not differentiable.

    Shapes: ``x`` -> ``x.shape`` (``[x.size]`` when ``axis`` is None).

    Example:
        >>> import gradtape as gt
        >>> gt.argsort(gt.tensor([3.0, 1.0, 2.0, 1.0])).numpy()
        array([1, 3, 2, 0])
        >>> gt.argsort(gt.tensor([3.0, 1.0, 2.0, 1.0]), descending=True).numpy()
        array([0, 2, 1, 3])
    """
    down = as_flag(descending, "argsort", "descending")
    t, ax = _sort_axis(one(x), axis, "argsort")
    if ax is None:  # 0-d: one element, index 0
        return reshape(bind(P_ARGSORT, reshape(t, (1,)), axis=0, descending=down), ())
    return bind(P_ARGSORT, t, axis=ax, descending=down)


def sort(x: Any, axis: int | None = -1, descending: bool = False) -> Tensor:
    """``x`` sorted along ``axis`` (None: the flattened tensor), ascending or ``descending``.
    The gradient flows back through the sorting permutation: each element gets the gradient of
    the place it moved to (tied values keep their order, as :func:`argsort`).

    Shapes: ``x`` -> ``x.shape`` (``[x.size]`` when ``axis`` is None).

    Example:
        >>> import gradtape as gt
        >>> gt.sort(gt.tensor([[3.0, 1.0, 2.0]]), descending=True).numpy()
        array([[3., 2., 1.]], dtype=float32)
    """
    down = as_flag(descending, "sort", "descending")
    t, ax = _sort_axis(one(x), axis, "sort")
    if ax is None:  # 0-d: already sorted
        return _unchanged(t)
    return bind(P_SORT, t, axis=ax, descending=down)


def topk(x: Any, k: int, axis: int = -1) -> tuple[Tensor, Tensor]:
    """The ``k`` largest values along ``axis``, largest first, and their indices; among tied
    values the lower index comes first. The values are differentiable (the gradient goes to
    the selected elements), the indices are an integer tensor. ``k`` larger than the axis
    raises ``ValueError``.

    Shapes: ``x[..., n, ...]`` -> values and indices ``[..., k, ...]``. A 0-d ``x`` is one
    element: ``k`` must be 1 and both results are 0-d.

    Example:
        >>> import gradtape as gt
        >>> values, indices = gt.topk(gt.tensor([1.0, 4.0, 2.0, 4.0]), 3)
        >>> values.numpy(), indices.numpy()
        (array([4., 4., 2.], dtype=float32), array([1, 3, 2]))
    """
    x = one(x)
    if isinstance(k, (bool, np.bool_)) or not hasattr(k, "__index__"):
        raise TypeError(f"topk: k must be an int, got {k!r}")
    k = operator.index(k)
    t, ax = _sort_axis(x, axis, "topk")
    n = 1 if ax is None else t.shape[ax]
    if not 0 <= k <= n or (ax is None and k != 1):
        raise ValueError(f"topk: k={k} is out of range for an axis of size {n} (x of shape "
                         f"{x.shape}); k must be between {1 if ax is None else 0} and {n}")
    if ax is None:  # 0-d
        return t, argsort(t)
    idx = bind(P_ARGSORT, t, axis=ax, descending=True)
    if k < n:
        idx = getitem(idx, (slice(None),) * ax + (slice(0, k),))
    return _take_along(t, idx, ax), idx
