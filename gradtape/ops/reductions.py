"""Reductions: sum, mean, prod, max, min, logsumexp, var, std, norm, argmax, argmin.

Every reduction takes NumPy's ``axis`` (None, int or tuple, negative allowed) and ``keepdims``.
Each VJP is a rule (``rule(m, rec, g)``, see :mod:`gradtape._src.rules`): rendered on backend
arrays for first-order passes and in gradtape ops, so it can itself be differentiated (nested
tapes).
A 0-d tensor accepts ``axis=0``/``-1`` and is returned unreduced (as NumPy's ``sum`` does).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .._src.autodiff.record import Record
from .._src.backend import acc_sum, in_float32
from .._src.errors import as_flag
from .._src.primitive import REGISTRY, Domain, bind, primitive
from .._src.rules import OnTensors
from .._src.tensor import Tensor
from ._util import as_real, logical_axes, move_axis, normalize_axis, one, phys_axis
from .elementwise import P_ABS, P_EQUAL, P_EXP, P_LESS, P_SAFE_MUL, P_SIGN, P_WHERE
from .linalg import singular_values, with_singular_values
from .shape import P_ASTYPE, P_BROADCAST_TO, P_RESHAPE, P_STOP_GRADIENT, P_TRANSPOSE, moveaxis

__all__ = ["sum", "mean", "prod", "max", "min", "logsumexp", "var", "std", "norm", "argmax",
           "argmin"]


# --------------------------------------------------------------------------- helpers
def _axes(x: Tensor, axis: Any, what: str) -> tuple[int, ...] | None:
    axes = normalize_axis(axis, x.ndim, what)
    if x.ndim == 0 and axes is not None:
        return ()
    return axes


def _kept_shape(in_shape: tuple, axes: tuple | None) -> tuple:
    return tuple(1 if (axes is None or i in axes) else s for i, s in enumerate(in_shape))


def _count(in_shape: tuple, axes: tuple | None) -> int:
    if axes is None:
        return math.prod(in_shape)
    return math.prod(in_shape[i] for i in axes)


def _kept(m: OnTensors, g: Tensor, in_shape: tuple, axes: tuple | None, keepdims: bool
          ) -> Tensor:
    """The reduced gradient reshaped to the keepdims shape (broadcasts against the input), in
    rendering ``m``."""
    if keepdims:
        return g
    shape = _kept_shape(in_shape, axes)
    return g if g.shape == shape else m.apply(P_RESHAPE, g, shape=shape)


def _expand(m: OnTensors, g: Tensor, in_shape: tuple, axes: tuple | None, keepdims: bool
            ) -> Tensor:
    """Broadcast a reduced gradient back to the input's shape, in rendering ``m``."""
    if not keepdims:
        g = m.apply(P_RESHAPE, g, shape=_kept_shape(in_shape, axes))
    return m.apply(P_BROADCAST_TO, g, shape=in_shape)


def _squeeze_axes(xp: Any, a: Any, axes: tuple | None, keepdims: bool) -> Any:
    """Drop the reduced axes of a keepdims result unless ``keepdims``."""
    if keepdims:
        return a
    if axes is None:
        return a.reshape(())
    return a.reshape(tuple(s for i, s in enumerate(a.shape) if i not in axes))


def _rec_kept(m: OnTensors, rec: Record, g: Tensor) -> Tensor:
    p = rec.params
    return _kept(m, g, rec.in_shapes[0], p["axis"], p["keepdims"])


def _zero_mask(m: OnTensors, y: Tensor) -> Tensor:
    """Where ``y`` is 0, a bool operand next to ``y``. Masks in rules are computed with
    (non-differentiable) primitives rather than from ``m.data``: the rule then also runs on
    batched values inside ``gt.vmap`` (vmap of a VJP, batched Jacobians)."""
    return m.apply(P_EQUAL, y, m.scalar(0, y))


def _rec_count(rec: Record) -> int:
    return _count(rec.in_shapes[0], rec.params["axis"])


def _float_input(xp: Any, x: Any) -> Any:
    # integer and bool inputs compute in float32 (PyTorch's and JAX's rule), never float64
    return x if x.dtype.kind in "fc" else x.astype(np.float32)


# Integer and bool inputs of mean, var and std give float32 (PyTorch's and JAX's rule, not
# NumPy's float64), accumulated in float64 so a long sum of large integers keeps its digits:
# each impl re-enters itself on the float64 copy and casts the result (float inputs never take
# that branch).
def _no_dof(xp: Any, x: Any, axis: tuple | None, keepdims: bool) -> Any:
    """What mean, var and std give with no degree of freedom left (an empty reduction, or
    ``ddof`` >= the count): NaN, without NumPy's "empty slice" / "degrees of freedom"
    RuntimeWarning (the forward is silent; ``gt.config.check_numerics`` finds such a NaN)."""
    out = xp.full(_kept_shape(x.shape, axis), np.nan, dtype=x.dtype)
    return _squeeze_axes(xp, out, axis, keepdims)


def _rand(rng: Any, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape)


def _reduction_batch(name: str) -> Any:
    """The batching rule of the reduction ``name`` (``axis``, ``keepdims``, and ``ddof`` for
    var/std passed on)."""
    def rule(args: tuple, dims: tuple, *, axis: Any, keepdims: bool, **params: Any) -> tuple:
        # reductions: the reduced axes shifted past the batch axis (None: every axis but it);
        # the batch axis moves left by the reduced axes before it unless keepdims.
        x = args[0]
        d = dims[0] % x.ndim
        axes = logical_axes(axis, x.ndim - 1)
        out = bind(REGISTRY[name], x, axis=tuple(phys_axis(a, d) for a in axes),
                   keepdims=keepdims, **params)
        return out, (d if keepdims else d - len([a for a in axes if a < d]))

    return rule


def _distinct(rng: Any, *shape: int) -> np.ndarray:
    """Values without ties (for max/min finite differences)."""
    n = math.prod(shape)
    return (rng.permutation(n).astype(np.float64) * 0.3 + rng.uniform(0, 0.1, n)).reshape(shape) - 0.15 * n


# --------------------------------------------------------------------------- sum
def _sum_rule(m: OnTensors, rec: Record, g: Tensor) -> tuple:
    p = rec.params
    return (_expand(m, g, rec.in_shapes[0], p["axis"], p["keepdims"]),)


def _axis_examples(name: str, make: Any) -> Any:
    def examples(rng: Any) -> list:
        fn = globals()[name]
        return [
            (fn, (make(rng, 3, 4),), {}),
            (fn, (make(rng, 3, 4),), {"axis": -1}),
            (fn, (make(rng, 2, 3, 4),), {"axis": (0, 2), "keepdims": True}),
            (fn, (make(rng, 2, 3),), {"axis": 0}),
            (fn, (make(rng),), {}),
        ]

    return examples


def _sum_jvp(m: OnTensors, primals: tuple, tangents: tuple, out: Tensor, **p: Any) -> Tensor:
    return m.apply(P_SUM, tangents[0], **p)


P_SUM = primitive("sum", lambda xp, x, *, axis, keepdims: acc_sum(x, axis, keepdims),
                  rule=_sum_rule, jvp=_sum_jvp, saves_inputs=False, domains=(Domain(),),
                  examples=_axis_examples("sum", _rand), batch=_reduction_batch("sum"))


def sum(x: Any, axis: Any = None, keepdims: bool = False) -> Tensor:  # noqa: A001
    """Sum over ``axis`` (None: all axes; int or tuple; negative allowed).

    Shapes: ``x[...]`` -> ``x.shape`` without the reduced axes (kept as 1 with ``keepdims``).

    Example:
        >>> import gradtape as gt
        >>> gt.sum(gt.tensor([[1.0, 2.0], [3.0, 4.0]]), axis=0).numpy()
        array([4., 6.], dtype=float32)
    """
    x = one(x)
    return bind(P_SUM, x, axis=_axes(x, axis, "sum"), keepdims=bool(keepdims))


# --------------------------------------------------------------------------- mean
def _mean_rule(m: OnTensors, rec: Record, g: Tensor) -> tuple:
    n = _rec_count(rec)
    (gx,) = _sum_rule(m, rec, g)
    return (gx * (1.0 / n) if n else gx,)


def _mean_jvp(m: OnTensors, primals: tuple, tangents: tuple, out: Tensor, **p: Any) -> Tensor:
    return m.apply(P_MEAN, tangents[0], **p)


def _mean_impl(xp: Any, x: Any, *, axis: Any, keepdims: bool) -> Any:
    if x.dtype.kind not in "fc":  # integers and bools: float32 (see _no_dof)
        return _mean_impl(xp, x.astype(np.float64), axis=axis, keepdims=keepdims).astype(np.float32)
    if not x.size and not _count(x.shape, axis):
        return _no_dof(xp, x, axis, keepdims)
    if xp is np and x.dtype.kind == "f":  # np.mean's own steps as ufunc calls: a RuntimeWarning
        # (overflow) is then gradtape's, silenced as for every op (np.mean's came from NumPy's
        # Python-level _methods and reached the user)
        half = x.dtype == np.float16
        add: Any = np.add
        total = add.reduce(x, axis=axis, keepdims=keepdims, dtype=np.float32 if half else None)
        # by the count as np.mean divides (an intp: a float64 division rounded once; a count
        # past 2**24 would round in float32)
        out = np.true_divide(total, np.intp(_count(x.shape, axis))).astype(total.dtype)
        return out.astype(np.float16) if half else out
    return xp.mean(x, axis=axis, keepdims=keepdims)


P_MEAN = primitive("mean", _mean_impl,
                   rule=_mean_rule, jvp=_mean_jvp, saves_inputs=False,
                   examples=_axis_examples("mean", _rand), batch=_reduction_batch("mean"))


def mean(x: Any, axis: Any = None, keepdims: bool = False) -> Tensor:
    """Arithmetic mean over ``axis``. Integer and bool inputs give float32 (PyTorch's and
    JAX's rule, not NumPy's float64; a float64 input stays float64); an empty reduction gives
    NaN without a warning.

    Shapes: as :func:`sum`.

    Example:
        >>> import gradtape as gt
        >>> gt.mean(gt.tensor([[1.0, 2.0], [3.0, 4.0]]), axis=-1).numpy()
        array([1.5, 3.5], dtype=float32)
    """
    x = one(x)
    return bind(P_MEAN, x, axis=_axes(x, axis, "mean"), keepdims=bool(keepdims))


# --------------------------------------------------------------------------- prod
def _prod_rule(m: OnTensors, rec: Record, g: Tensor) -> tuple:
    # d prod / d x_i = the product of the others (see _prod_partials)
    x = m.val(rec.inputs[0])
    return (_rec_kept(m, rec, g) * _prod_partials(m, x, rec.params["axis"]),)


def _prod_partials(m: OnTensors, x: Tensor, axes: tuple | None) -> Tensor:
    """``d prod / d x_i``: the product of the other entries, as the product of those before
    ``i`` times those after (two exclusive running products along the reduced entries), never
    a quotient ``y / x_i``: exact with zeros, and where the whole product overflows,
    underflows or holds an inf or NaN factor that the others' product does not
    (``prod([1e30, 1e30, 0])`` in float32, ``prod([inf, 2, 3])``). Its own derivative (prod's
    second) goes through cumprod's rule, exact with any number of zeros."""
    nd = len(x.shape)
    red = tuple(range(nd)) if axes is None else tuple(sorted(axes))
    keep = tuple(a for a in range(nd) if a not in red)
    n = math.prod(x.shape[a] for a in red)
    if n <= 1:  # one entry (or none): the product of no others is 1
        return m.apply(P_BROADCAST_TO, m.scalar(1, x), shape=tuple(x.shape))
    perm = keep + red
    xt = x if perm == tuple(range(nd)) else m.apply(P_TRANSPOSE, x, axes=perm)
    kshape = tuple(x.shape[a] for a in keep)
    flat = m.apply(P_RESHAPE, xt, shape=kshape + (n,))
    k = len(kshape)
    head = (slice(None),) * k
    ones = ((0, 0),) * k + ((1, 0),)
    cumprod, flip, pad = REGISTRY["cumprod"], REGISTRY["flip"], REGISTRY["pad"]
    # before[i] = x_0 ... x_(i-1) (1 for i = 0); after[i] = x_(i+1) ... x_(n-1) (1 for the last)
    before = m.apply(cumprod, m.apply(pad, flat[head + (slice(0, n - 1),)], pad_width=ones,
                                      constant_values=1), axis=k)
    rev = m.apply(flip, flat, axis=(k,))
    after = m.apply(flip, m.apply(cumprod, m.apply(pad, rev[head + (slice(0, n - 1),)],
                                                   pad_width=ones, constant_values=1), axis=k),
                    axis=(k,))
    others = m.apply(P_RESHAPE, before * after, shape=tuple(xt.shape))
    if perm == tuple(range(nd)):
        return others
    return m.apply(P_TRANSPOSE, others, axes=tuple(int(i) for i in np.argsort(perm)))


def _prod_jvp(m: OnTensors, primals: tuple, tangents: tuple, out: Tensor, *, axis: Any,
              keepdims: bool) -> Tensor:
    x = primals[0]
    d = _prod_partials(m, x, axis)
    return m.apply(P_SUM, tangents[0] * d, axis=axis, keepdims=keepdims)


def _prod_examples(rng: Any) -> list:
    def make(*shape: int) -> np.ndarray:
        return rng.uniform(0.5, 1.5, shape) * rng.choice([-1.0, 1.0], shape)

    return [
        (prod, (make(3, 4),), {}),
        (prod, (make(3, 4),), {"axis": -1}),
        (prod, (make(2, 3, 4),), {"axis": (0, 2), "keepdims": True}),
        (prod, (np.array([0.0, 1.5, -2.0, 0.7]),), {}),
        (prod, (make(),), {}),
    ]


def _reduce_impl(uf: np.ufunc, name: str) -> Any:
    """prod / max / min: on the host the ufunc's reduce itself, which ``np.prod`` /
    ``np.max`` / ``np.min`` call after 1-2 us of NumPy's Python-level argument handling (the
    same result; and a RuntimeWarning, prod's overflow, is then gradtape's, which its warnings
    filter silences as for every op, where np.prod's reached the user); a device's own
    function."""
    def impl(xp: Any, x: Any, *, axis: Any, keepdims: bool) -> Any:
        if xp is np:
            return uf.reduce(x, axis=axis, keepdims=keepdims)
        return getattr(xp, name)(x, axis=axis, keepdims=keepdims)
    return impl


P_PROD = primitive("prod", _reduce_impl(np.multiply, "prod"),
                   rule=_prod_rule, jvp=_prod_jvp, examples=_prod_examples,
                   batch=_reduction_batch("prod"))


def prod(x: Any, axis: Any = None, keepdims: bool = False) -> Tensor:
    """Product over ``axis``. The gradient is the product of the other elements (those before
    times those after, never ``y / x_i``): exact with zeros, and where the whole product
    overflows or holds an inf while the running products before and after each element stay
    finite. The second derivative (the Hessian, an HVP) goes through ``cumprod``'s: exact with
    any number of zeros.

    Shapes: as :func:`sum`.

    Example:
        >>> import gradtape as gt
        >>> gt.prod(gt.tensor([[1.0, 2.0], [3.0, 4.0]]), axis=0).numpy()
        array([3., 8.], dtype=float32)
    """
    x = one(x)
    return bind(P_PROD, x, axis=_axes(x, axis, "prod"), keepdims=bool(keepdims))


# --------------------------------------------------------------------------- max / min
_F32 = np.dtype(np.float32)
_HALF = np.dtype(np.float16)


def _extreme_rule(m: OnTensors, rec: Record, g: Tensor) -> tuple:
    # The gradient is split evenly among the elements equal to the extreme value. float16:
    # the ties counted and the shares computed in float32, rounded once (a float16 count of
    # more than 65504 ties is inf, and every share was 0).
    axis = rec.params["axis"]
    half = g.dtype == _HALF
    if half:
        g = m.apply(P_ASTYPE, g, dtype=_F32)
    mask = _extreme_mask(m, m.val(rec.inputs[0]), m.val(rec.output), axis, g.dtype)
    count = m.apply(P_SUM, mask, axis=axis, keepdims=True)
    gx = _rec_kept(m, rec, g) * mask / count
    return (m.apply(P_ASTYPE, gx, dtype=_HALF) if half else gx,)


def _extreme_mask(m: OnTensors, x: Tensor, y: Tensor, axis: Any, dtype: Any) -> Tensor:
    """1 where ``x`` equals its extreme ``y`` (reduced over ``axis``), else 0, in ``dtype``."""
    yk = m.apply(P_RESHAPE, y, shape=_kept_shape(tuple(x.shape), axis))
    return m.apply(P_ASTYPE, m.apply(P_EQUAL, x, yk), dtype=dtype)


def _extreme_jvp(m: OnTensors, primals: tuple, tangents: tuple, out: Tensor, *, axis: Any,
                 keepdims: bool) -> Tensor:
    # the mean of the tangents at the elements equal to the extreme value (the VJP's split);
    # a safe product: an inf or NaN tangent elsewhere does not leak in
    # (float16: in float32, rounded once, as the VJP)
    t = tangents[0]
    half = t.dtype == _HALF
    if half:
        t = m.apply(P_ASTYPE, t, dtype=_F32)
    mask = _extreme_mask(m, primals[0], out, axis, t.dtype)
    weights = mask / m.apply(P_SUM, mask, axis=axis, keepdims=True)
    mean = m.apply(P_SUM, m.apply(P_SAFE_MUL, weights, t), axis=axis, keepdims=keepdims)
    return m.apply(P_ASTYPE, mean, dtype=_HALF) if half else mean


def _check_nonempty(x: Tensor, axes: tuple | None, what: str) -> None:
    if x.size == 0 and (axes is None or _count(x.shape, axes) == 0):
        raise ValueError(f"{what}: cannot reduce an empty tensor of shape {x.shape} over axis "
                         f"{axes} (the result has no identity)")


P_MAX = primitive("max", _reduce_impl(np.maximum, "max"),
                  rule=_extreme_rule, jvp=_extreme_jvp, saves_output=True, masks=True,
                  examples=_axis_examples("max", _distinct), batch=_reduction_batch("max"))
P_MIN = primitive("min", _reduce_impl(np.minimum, "min"),
                  rule=_extreme_rule, jvp=_extreme_jvp, saves_output=True, masks=True,
                  examples=_axis_examples("min", _distinct), batch=_reduction_batch("min"))


def max(x: Any, axis: Any = None, keepdims: bool = False) -> Tensor:  # noqa: A001
    """Maximum over ``axis``. Tied maxima share the gradient evenly.

    Shapes: as :func:`sum`. An empty reduction raises ``ValueError``.

    Example:
        >>> import gradtape as gt
        >>> gt.max(gt.tensor([[1.0, 5.0], [3.0, 4.0]]), axis=1).numpy()
        array([5., 4.], dtype=float32)
    """
    x = one(x)
    axes = _axes(x, axis, "max")
    _check_nonempty(x, axes, "max")
    return bind(P_MAX, x, axis=axes, keepdims=bool(keepdims))


def min(x: Any, axis: Any = None, keepdims: bool = False) -> Tensor:  # noqa: A001
    """Minimum over ``axis``. Tied minima share the gradient evenly.

    Shapes: as :func:`sum`. An empty reduction raises ``ValueError``.

    Example:
        >>> import gradtape as gt
        >>> gt.min(gt.tensor([[1.0, 5.0], [3.0, 4.0]]), axis=1).numpy()
        array([1., 3.], dtype=float32)
    """
    x = one(x)
    axes = _axes(x, axis, "min")
    _check_nonempty(x, axes, "min")
    return bind(P_MIN, x, axis=axes, keepdims=bool(keepdims))


# --------------------------------------------------------------------------- logsumexp
@in_float32
def _logsumexp_impl(xp: Any, x: Any, *, axis: Any, keepdims: bool) -> Any:
    x = _float_input(xp, x)
    if _count(x.shape, axis) == 0:
        shape = _kept_shape(x.shape, axis)
        return _squeeze_axes(xp, xp.full(shape, -np.inf, dtype=x.dtype), axis, keepdims)
    m = xp.max(x, axis=axis, keepdims=True)
    m = xp.where(xp.isfinite(m), m, xp.zeros((), dtype=m.dtype))
    with np.errstate(divide="ignore"):
        out = xp.log(xp.sum(xp.exp(x - m), axis=axis, keepdims=True)) + m
    return _squeeze_axes(xp, out, axis, keepdims)


def _logsumexp_rule(m: OnTensors, rec: Record, g: Tensor) -> tuple:
    # softmax(x) along the axes, shifted by the (constant) maximum: exp(x - y) would lose
    # digits to the rounding of a large y (float32 at 1000 keeps ~1e-4).
    return (_rec_kept(m, rec, g) * _softmax_over(m, m.val(rec.inputs[0]), rec.params["axis"]),)


def _softmax_over(m: OnTensors, x: Tensor, axes: tuple | None) -> Tensor:
    """``softmax(x)`` over ``axes``: the derivative of ``logsumexp``."""
    if not math.prod(x.shape):
        return x
    if x.dtype == np.float16:  # in float32, rounded once (a float16 sum past 65504 is inf)
        p = _softmax_over(m, m.apply(P_ASTYPE, x, dtype=np.dtype(np.float32)), axes)
        return m.apply(P_ASTYPE, p, dtype=np.dtype(np.float16))
    # the shift: the maximum where finite, else 0 (a constant: no gradient flows through it)
    mx = m.apply(P_STOP_GRADIENT, m.apply(REGISTRY["max"], x, axis=axes, keepdims=True))
    finite = m.apply(P_LESS, m.apply(P_ABS, mx), m.scalar(np.inf, mx))
    mx = m.apply(P_WHERE, finite, mx, m.scalar(0, mx))
    e = m.apply(P_EXP, x - mx)
    return e / m.apply(P_SUM, e, axis=axes, keepdims=True)


def _logsumexp_jvp(m: OnTensors, primals: tuple, tangents: tuple, out: Tensor, *, axis: Any,
                   keepdims: bool) -> Tensor:
    p = _softmax_over(m, primals[0], axis)
    return m.apply(P_SUM, tangents[0] * p, axis=axis, keepdims=keepdims)


P_LOGSUMEXP = primitive("logsumexp", _logsumexp_impl, rule=_logsumexp_rule, jvp=_logsumexp_jvp,
                        saves_output=True,
                        examples=_axis_examples("logsumexp", _rand),
                        batch=_reduction_batch("logsumexp"))


def logsumexp(x: Any, axis: Any = None, keepdims: bool = False) -> Tensor:
    """``log(sum(exp(x)))`` over ``axis``, computed stably (the maximum is subtracted first,
    so large inputs do not overflow). Its gradient is ``softmax(x)`` along ``axis``.

    Shapes: as :func:`sum`. An empty reduction gives ``-inf``.

    Example:
        >>> import gradtape as gt
        >>> round(float(gt.logsumexp(gt.tensor([1000.0, 1000.0]))), 3)
        1000.693
    """
    x = one(x)
    return bind(P_LOGSUMEXP, x, axis=_axes(x, axis, "logsumexp"), keepdims=bool(keepdims))


# --------------------------------------------------------------------------- var / std
def _var_rule(m: OnTensors, rec: Record, g: Tensor) -> tuple:
    x = m.val(rec.inputs[0])
    axes = rec.params["axis"]
    dof = _rec_count(rec) - rec.params["ddof"]
    scale = 2.0 / dof if dof > 0 else float("nan")
    centered = x - m.apply(P_MEAN, x, axis=axes, keepdims=True)
    return (_rec_kept(m, rec, g) * centered * scale,)


def _std_rule(m: OnTensors, rec: Record, g: Tensor) -> tuple:
    x = m.val(rec.inputs[0])
    y = _rec_kept(m, rec, m.val(rec.output))
    d = _std_partials(m, x, y, rec.params["axis"], _rec_count(rec) - rec.params["ddof"])
    return (_rec_kept(m, rec, g) * d,)


def _std_partials(m: OnTensors, x: Tensor, y: Tensor, axes: tuple | None, dof: float) -> Tensor:
    """``d std / d x = (x - mean) / ((n - ddof) * std)`` (``y``: std in the keepdims shape);
    0 where std == 0 (as norm at 0), not NaN."""
    scale = 1.0 / dof if dof > 0 else float("nan")
    is_zero = _zero_mask(m, y)
    centered = x - m.apply(P_MEAN, x, axis=axes, keepdims=True)
    q = centered / m.apply(P_WHERE, is_zero, m.scalar(1, y), y)
    return m.apply(P_WHERE, is_zero, m.scalar(0, q), q) * scale


def _var_jvp(m: OnTensors, primals: tuple, tangents: tuple, out: Tensor, *, axis: Any,
             keepdims: bool, ddof: float) -> Tensor:
    x = primals[0]
    dof = _count(x.shape, axis) - ddof
    centered = x - m.apply(P_MEAN, x, axis=axis, keepdims=True)
    dot = m.apply(P_SUM, tangents[0] * centered, axis=axis, keepdims=keepdims)
    return dot * (2.0 / dof if dof > 0 else float("nan"))


def _std_jvp(m: OnTensors, primals: tuple, tangents: tuple, out: Tensor, *, axis: Any,
             keepdims: bool, ddof: float) -> Tensor:
    x = primals[0]
    d = _std_partials(m, x, _kept(m, out, x.shape, axis, keepdims), axis,
                      _count(x.shape, axis) - ddof)
    return m.apply(P_SUM, tangents[0] * d, axis=axis, keepdims=keepdims)


def _var_examples(name: str) -> Any:
    def examples(rng: Any) -> list:
        fn = globals()[name]
        return [
            (fn, (rng.standard_normal((3, 4)),), {}),
            (fn, (rng.standard_normal((3, 4)),), {"axis": -1}),
            (fn, (rng.standard_normal((2, 3, 4)),), {"axis": (0, 2), "keepdims": True}),
            (fn, (rng.standard_normal((4, 5)),), {"axis": 0, "ddof": 1}),
        ]

    return examples


@in_float32  # (NumPy's var adds float16 in float16: see acc_sum)
def _var_impl(xp: Any, x: Any, *, axis: Any, keepdims: bool, ddof: float) -> Any:
    if x.dtype.kind not in "fc":  # integers and bools: float32 (see _no_dof)
        return _var_impl(xp, x.astype(np.float64), axis=axis, keepdims=keepdims, ddof=ddof).astype(np.float32)
    if _count(x.shape, axis) <= ddof:
        return _no_dof(xp, x, axis, keepdims)
    if xp is np and x.dtype.kind == "f":
        return _host_var(x, axis, keepdims, ddof)
    return xp.var(x, axis=axis, keepdims=keepdims, ddof=ddof)


def _host_var(x: Any, axis: Any, keepdims: bool, ddof: float) -> Any:
    """np.var's own steps as ufunc calls (the same values bit for bit): a RuntimeWarning
    (overflow in the square) is then gradtape's, which its warnings filter silences as for
    every op, also in a replayed step (np.var's came from NumPy's Python-level _methods and
    reached the user)."""
    add: Any = np.add
    n = np.intp(_count(x.shape, axis))
    mean = np.true_divide(add.reduce(x, axis=axis, keepdims=True), n).astype(x.dtype)
    d = np.subtract(x, mean)
    d = np.multiply(d, d)
    total = add.reduce(d, axis=axis, keepdims=keepdims)
    return np.true_divide(total, np.maximum(n - ddof, 0)).astype(x.dtype)


@in_float32
def _std_impl(xp: Any, x: Any, *, axis: Any, keepdims: bool, ddof: float) -> Any:
    if x.dtype.kind not in "fc":
        return _std_impl(xp, x.astype(np.float64), axis=axis, keepdims=keepdims, ddof=ddof).astype(np.float32)
    if _count(x.shape, axis) <= ddof:
        return _no_dof(xp, x, axis, keepdims)
    if xp is np and x.dtype.kind == "f":  # (as var)
        return np.sqrt(_host_var(x, axis, keepdims, ddof))
    return xp.std(x, axis=axis, keepdims=keepdims, ddof=ddof)


P_VAR = primitive("var", _var_impl, rule=_var_rule, jvp=_var_jvp, examples=_var_examples("var"),
                  batch=_reduction_batch("var"))
P_STD = primitive("std", _std_impl, rule=_std_rule, jvp=_std_jvp, saves_output=True,
                  examples=_var_examples("std"), batch=_reduction_batch("std"))


def var(x: Any, axis: Any = None, keepdims: bool = False, ddof: float = 0) -> Tensor:
    """Variance over ``axis``: ``sum((x - mean)**2) / (n - ddof)`` (``ddof=0``: population).

    Shapes: as :func:`sum`. Integer and bool inputs give float32; with no degree of freedom
    left (``n <= ddof``) the result is NaN, without a warning.

    Example:
        >>> import gradtape as gt
        >>> gt.var(gt.tensor([1.0, 2.0, 3.0, 4.0])).numpy()
        array(1.25, dtype=float32)
    """
    x = one(x)
    return bind(P_VAR, x, axis=_axes(x, axis, "var"), keepdims=bool(keepdims), ddof=_ddof(ddof, "var"))


def _ddof(ddof: Any, who: str) -> int | float:
    """``ddof`` as an int, or a float when it has a fractional part (NumPy takes 1.5; it was
    truncated to 1 before, silently); a finite real number, else TypeError/ValueError."""
    v = as_real(ddof, who, "ddof")
    return int(v) if float(v).is_integer() else v


def std(x: Any, axis: Any = None, keepdims: bool = False, ddof: float = 0) -> Tensor:
    """Standard deviation ``sqrt(var(x, axis, ddof=ddof))``. Its gradient is 0 (not NaN)
    where the standard deviation is 0.

    Shapes: as :func:`sum`. Integer and bool inputs give float32; NaN when ``n <= ddof``.

    Example:
        >>> import gradtape as gt
        >>> gt.std(gt.tensor([1.0, 3.0])).numpy()
        array(1., dtype=float32)
    """
    x = one(x)
    return bind(P_STD, x, axis=_axes(x, axis, "std"), keepdims=bool(keepdims), ddof=_ddof(ddof, "std"))


# --------------------------------------------------------------------------- norm
@in_float32
def _norm_impl(xp: Any, x: Any, *, axis: Any, keepdims: bool) -> Any:
    x = _float_input(xp, x)
    return xp.sqrt(xp.sum(x * x, axis=axis, keepdims=keepdims))


def _norm_rule(m: OnTensors, rec: Record, g: Tensor) -> tuple:
    y = _rec_kept(m, rec, m.val(rec.output))
    return (_rec_kept(m, rec, g) * _norm_partials(m, m.val(rec.inputs[0]), y),)


def _norm_partials(m: OnTensors, x: Tensor, y: Tensor) -> Tensor:
    """``d norm / d x = x / norm`` (``y``: the norm in the keepdims shape); 0 where it is 0."""
    is_zero = _zero_mask(m, y)
    q = x / m.apply(P_WHERE, is_zero, m.scalar(1, y), y)
    return m.apply(P_WHERE, is_zero, m.scalar(0, q), q)


def _norm_jvp(m: OnTensors, primals: tuple, tangents: tuple, out: Tensor, *, axis: Any,
              keepdims: bool) -> Tensor:
    x = primals[0]
    d = _norm_partials(m, x, _kept(m, out, x.shape, axis, keepdims))
    return m.apply(P_SUM, tangents[0] * d, axis=axis, keepdims=keepdims)


def _norm_examples(rng: Any) -> list:
    return [
        (norm, (rng.standard_normal((3, 4)),), {}),
        (norm, (rng.standard_normal((3, 4)),), {"axis": -1}),
        (norm, (rng.standard_normal((2, 3, 4)),), {"axis": (0, 2), "keepdims": True}),
        (norm, (rng.standard_normal(()),), {}),
        # the public norm's other matrix routes: the SVD (singular values well apart), and
        # sums and extremes of |x| (entries and column/row sums away from ties and 0)
        (norm, (with_singular_values(rng, 3, 3, (3.0, 2.0, 1.0)),), {"ord": "nuc"}),
        (norm, (with_singular_values(rng, 2, 3, (3.0, 2.0)),), {"ord": 2}),
        (norm, (np.stack([with_singular_values(rng, 3, 2, (2.0, 1.0)),
                          with_singular_values(rng, 3, 2, (1.5, 0.5))], axis=1),),
         {"ord": -2, "axis": (2, 0), "keepdims": True}),
        (norm, (np.array([[1.0, -2.5, 0.5], [-0.75, 0.25, 3.0]]),), {"ord": 1}),
        (norm, (np.array([[1.0, -2.5, 0.5], [-0.75, 0.25, 3.0]]),), {"ord": -np.inf, "axis": (1, 0)}),
    ]


P_NORM = primitive("norm", _norm_impl, rule=_norm_rule, jvp=_norm_jvp,
                   saves_output=True, examples=_norm_examples,
                   batch=_reduction_batch("norm"))


# --------------------------------------------------------------------------- pnorm
@in_float32
def _pnorm_impl(xp: Any, x: Any, *, axis: Any, keepdims: bool, ord: float) -> Any:  # noqa: A002
    x = _float_input(xp, x)
    # (ufuncs, not ``**``, which on a NumPy scalar sum differs from the replay's loop)
    return xp.power(xp.sum(xp.power(xp.abs(x), ord), axis=axis, keepdims=keepdims), 1.0 / ord)


def _pnorm_partials(m: OnTensors, x: Tensor, y: Tensor, p: float) -> Tensor:
    """``d/dx (sum |x|^p)^(1/p) = sign(x) (|x| / norm)^(p - 1)`` (``y``: the norm in the
    keepdims shape); 0 where ``x`` is 0 (for ``p < 1`` the derivative is infinite there), so 0
    where the norm is 0."""
    y1 = m.apply(P_WHERE, _zero_mask(m, y), m.scalar(1, y), y)
    d = m.apply(P_SIGN, x) * (m.apply(P_ABS, x) / y1) ** (p - 1)
    return m.apply(P_WHERE, _zero_mask(m, x), m.scalar(0, d), d)


def _pnorm_rule(m: OnTensors, rec: Record, g: Tensor) -> tuple:
    y = _rec_kept(m, rec, m.val(rec.output))
    d = _pnorm_partials(m, m.val(rec.inputs[0]), y, rec.params["ord"])
    return (_rec_kept(m, rec, g) * d,)


def _pnorm_jvp(m: OnTensors, primals: tuple, tangents: tuple, out: Tensor, *, axis: Any,
               keepdims: bool, ord: float) -> Tensor:  # noqa: A002
    x = primals[0]
    d = _pnorm_partials(m, x, _kept(m, out, x.shape, axis, keepdims), ord)
    return m.apply(P_SUM, tangents[0] * d, axis=axis, keepdims=keepdims)


def _pnorm_examples(rng: Any) -> list:
    def away(*shape: int) -> np.ndarray:  # entries away from 0, where |x|^p is not smooth
        return rng.choice([-1.0, 1.0], shape) * rng.uniform(0.3, 2.0, shape)

    return [
        (norm, (away(4),), {"ord": 3}),
        (norm, (away(3, 4),), {"ord": 1.5, "axis": -1}),
        (norm, (away(2, 3, 4),), {"ord": 0.5, "axis": 1, "keepdims": True}),
        (norm, (away(5),), {"ord": 4.0}),
    ]


# the vector p-norm (sum |x|^p)^(1/p) for a finite p > 0 other than 1 and 2 (those are sum(abs)
# and the 2-norm primitive)
P_PNORM = primitive("pnorm", _pnorm_impl, rule=_pnorm_rule, jvp=_pnorm_jvp, saves_output=True,
                    examples=_pnorm_examples, batch=_reduction_batch("pnorm"))


_VECTOR_ORDS = "None, 2, 1, inf, -inf or a finite p > 0"
_MATRIX_ORDS = "None, 'fro', 'nuc', 2, -2, 1, -1, inf or -inf"


def norm(x: Any, ord: Any = None, axis: Any = None, keepdims: bool = False) -> Tensor:  # noqa: A002
    """Vector and matrix norms, as ``np.linalg.norm``.

    ``ord=None`` is the 2-norm ``sqrt(sum(x**2))`` over ``axis`` (all elements by default, any
    rank: the Frobenius norm of a matrix); its gradient is ``x / norm``, 0 where the norm is 0.
    Otherwise ``axis`` (or a 1-D / 2-D input) selects:

    - a vector norm over one axis: ``2``, ``1`` (``sum |x|``), ``inf`` / ``-inf`` (largest /
      smallest ``|x|``; tied elements share the gradient), or a finite ``p > 0``
      (``(sum |x|^p)^(1/p)``; gradient ``sign(x) (|x| / norm)^(p-1)``, 0 at ``x = 0``);
    - a matrix norm over two axes ``(rows, cols)``: ``'fro'``, ``'nuc'`` (sum of the singular
      values; gradient ``U V^T``), ``2`` / ``-2`` (largest / smallest singular value; gradient
      ``u_1 v_1^T``), ``1`` / ``-1`` (largest / smallest column sum of ``|x|``), ``inf`` /
      ``-inf`` (row sums). The SVD-based gradients are unique only where the singular values
      involved are distinct (tied extreme values share the gradient evenly, one valid choice
      among many), and their second derivatives need distinct singular values.

    Shapes: ``x`` without the reduced axes (kept as 1 with ``keepdims``). Integer and bool
    inputs give float32.

    Raises:
        NotImplementedError: an ``ord`` with no gradient or not supported (vector ``0`` or
            ``p < 0``).
        ValueError: an ``ord`` that does not fit the number of axes, or a non-None ``ord``
            with ``axis=None`` on an input that is not 1-D or 2-D (as NumPy).

    Example:
        >>> import gradtape as gt
        >>> gt.norm(gt.tensor([[3.0, 4.0], [0.0, 0.0]]), axis=1).numpy()
        array([5., 0.], dtype=float32)
        >>> float(gt.norm(gt.tensor([3.0, -4.0]), ord=1))
        7.0
        >>> float(gt.norm(gt.tensor([[2.0, 0.0], [0.0, 1.0]]), ord="nuc"))
        3.0
    """
    x = one(x)
    keepdims = as_flag(keepdims, "norm", "keepdims")
    axes = _axes(x, axis, "norm")
    n_axes = x.ndim if axes is None else len(axes)
    is_str = isinstance(ord, str)
    if x.dtype.kind == "c":  # (x * x summed gave a complex "norm"; a cast dropped the
        # imaginary parts) every norm but the spectral ones is a norm of |x|, as NumPy's
        if n_axes == 2 and (ord == "nuc" or (not is_str and _is_number(ord) and abs(ord) == 2)):
            raise TypeError(f"norm: ord={ord!r} of a complex matrix (its singular values) is not "
                            f"supported, got dtype {x.dtype}")
        x = bind(P_ABS, x)
    if ord is None or (is_str and ord == "fro" and n_axes == 2) or (
            not is_str and n_axes == 1 and _is_number(ord) and ord == 2):
        return bind(P_NORM, x, axis=axes, keepdims=keepdims)
    if axis is None and x.ndim not in (1, 2):
        raise ValueError(f"norm: ord={ord!r} needs a 1-D or 2-D input or an explicit axis (as "
                         f"np.linalg.norm); got shape {x.shape}")
    if not is_str and not _is_number(ord):
        raise TypeError(f"norm: ord must be None, a number or a string, got {ord!r}")
    if x.dtype.kind not in "f":
        x = bind(P_ASTYPE, x, dtype=np.dtype(np.float32))
    if n_axes == 1:
        return _vector_norm(x, ord, 0 if axes is None else axes[0], keepdims)
    if n_axes == 2:
        rows, cols = (0, 1) if axis is None else (int(a) % x.ndim for a in axis)
        return _matrix_norm(x, ord, rows, cols, keepdims)
    raise ValueError(f"norm: ord={ord!r} needs one axis (a vector norm) or two (a matrix norm); "
                     f"got axis={axis!r} for a tensor of shape {x.shape}")


def _is_number(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float, np.integer, np.floating))


def _vector_norm(x: Tensor, ord: Any, ax: int, keepdims: bool) -> Tensor:  # noqa: A002
    if isinstance(ord, str):
        raise ValueError(f"norm: ord={ord!r} is a matrix norm; over one axis ord is "
                         f"{_VECTOR_ORDS}")
    p = float(ord)
    if p == math.inf:
        if x.shape[ax] == 0:  # the largest of nothing: 0, as NumPy's norm gives
            return sum(bind(P_ABS, x), axis=ax, keepdims=keepdims)
        return max(bind(P_ABS, x), axis=ax, keepdims=keepdims)
    if p == -math.inf:
        if x.shape[ax] == 0:
            raise ValueError(f"norm: ord=-inf (the smallest |x|) over an empty axis {ax} "
                             f"(shape {x.shape}) has no value")
        return min(bind(P_ABS, x), axis=ax, keepdims=keepdims)
    if p == 1:
        return sum(bind(P_ABS, x), axis=ax, keepdims=keepdims)
    if p > 0 and math.isfinite(p):
        return bind(P_PNORM, x, axis=(ax,), keepdims=keepdims, ord=p)
    why = "ord=0 counts nonzeros and has no gradient" if p == 0 else "negative and NaN orders are not supported"
    raise NotImplementedError(f"norm: vector ord={ord!r} is not supported ({why}); ord is "
                              f"{_VECTOR_ORDS}")


def _matrix_norm(x: Tensor, ord: Any, rows: int, cols: int, keepdims: bool) -> Tensor:  # noqa: A002
    kept = tuple(1 if i in (rows, cols) else n for i, n in enumerate(x.shape))
    if (isinstance(ord, str) and ord == "nuc") or (not isinstance(ord, str) and ord in (2, -2)):
        if not x.shape[rows] or not x.shape[cols]:
            if ord == -2:  # (the smallest of no singular value)
                raise ValueError(f"norm: ord=-2 of an empty matrix (shape {x.shape}) has no value")
            # no singular value: their sum and their largest are 0, as NumPy's
            return sum(bind(P_ABS, x), axis=(rows, cols), keepdims=keepdims)
        half = x.dtype == np.float16  # the SVD in float32, rounded once (as det, solve ...)
        s = singular_values(moveaxis(bind(P_ASTYPE, x, dtype=np.dtype(np.float32)) if half else x,
                                     (rows, cols), (-2, -1)))
        out = (sum(s, axis=-1) if ord == "nuc" else
               max(s, axis=-1) if ord == 2 else min(s, axis=-1))
        if half:
            out = bind(P_ASTYPE, out, dtype=x.dtype)
        return bind(P_RESHAPE, out, shape=kept) if keepdims else out
    if isinstance(ord, str) or ord not in (1, -1, math.inf, -math.inf):
        raise ValueError(f"norm: ord={ord!r} is not a matrix norm; over two axes ord is "
                         f"{_MATRIX_ORDS}")
    inner, outer = (rows, cols) if ord in (1, -1) else (cols, rows)  # 1: sums over the rows
    t = sum(bind(P_ABS, x), axis=inner, keepdims=True)
    if x.shape[outer] == 0:  # no column (row) sums: the largest of nothing is 0, as NumPy's
        if ord < 0:
            raise ValueError(f"norm: ord={ord!r} (the smallest sum) of a matrix with no "
                             f"{'columns' if ord == -1 else 'rows'} (shape {x.shape}) has no value")
        out = sum(t, axis=outer, keepdims=True)
    else:
        out = max(t, axis=outer, keepdims=True) if ord > 0 else min(t, axis=outer, keepdims=True)
    if keepdims:
        return out
    return bind(P_RESHAPE, out, shape=tuple(n for i, n in enumerate(kept) if i not in (rows, cols)))


# --------------------------------------------------------------------------- argmax / argmin
def _arg_axis(x: Tensor, axis: Any, what: str) -> int | None:
    if axis is None:
        if x.size == 0:
            raise ValueError(f"{what}: cannot take the {what} of an empty tensor of shape {x.shape}")
        return None
    if isinstance(axis, (tuple, list)):
        raise TypeError(f"{what}: axis must be None or an int (as NumPy), got {axis!r}")
    axes = normalize_axis(axis, x.ndim if x.ndim else 1, what)
    assert axes is not None  # axis is not None here
    ax = axes[0]
    if x.ndim == 0:
        return None
    if x.shape[ax] == 0:
        raise ValueError(f"{what}: axis {axis} of the tensor of shape {x.shape} is empty")
    return ax


def _arg_batch(name: str) -> Any:
    """The batching rule of ``argmax`` / ``argmin``."""
    def rule(args: tuple, dims: tuple, *, axis: int | None, keepdims: bool) -> tuple:
        # argmax/argmin: the axis shifted past the batch axis; axis None: each example
        # flattened behind the batch axis (the index is into the flattened example).
        x = args[0]
        d, nd = dims[0] % x.ndim, x.ndim - 1
        if axis is None:
            x = move_axis(x, d, 0)
            size = x.shape[0]
            flat = x.reshape((size, math.prod(x.shape[1:])))
            out = bind(REGISTRY[name], flat, axis=1, keepdims=False)
            return (out.reshape((size,) + (1,) * nd) if keepdims and nd else out), 0
        a = phys_axis(int(axis) % nd, d)
        out = bind(REGISTRY[name], x, axis=a, keepdims=keepdims)
        return out, (d if keepdims or a > d else d - 1)

    return rule


P_ARGMAX = primitive("argmax",
                     lambda xp, x, *, axis, keepdims: xp.argmax(x, axis=axis, keepdims=keepdims),
                     nondiff=True, batch=_arg_batch("argmax"))
P_ARGMIN = primitive("argmin",
                     lambda xp, x, *, axis, keepdims: xp.argmin(x, axis=axis, keepdims=keepdims),
                     nondiff=True, batch=_arg_batch("argmin"))


def argmax(x: Any, axis: int | None = None, keepdims: bool = False) -> Tensor:
    """Index of the (first) maximum along ``axis`` (None: of the flattened tensor). Returns an
    integer tensor; not differentiable.

    Shapes: ``x.shape`` without ``axis`` (kept as 1 with ``keepdims``); 0-d when ``axis`` is None.

    Example:
        >>> import gradtape as gt
        >>> gt.argmax(gt.tensor([[1.0, 5.0], [7.0, 4.0]]), axis=1).numpy()
        array([1, 0])
    """
    x = one(x)
    return bind(P_ARGMAX, x, axis=_arg_axis(x, axis, "argmax"), keepdims=bool(keepdims))


def argmin(x: Any, axis: int | None = None, keepdims: bool = False) -> Tensor:
    """Index of the (first) minimum along ``axis``; an integer tensor, not differentiable.

    Example:
        >>> import gradtape as gt
        >>> gt.argmin(gt.tensor([3.0, 1.0, 2.0])).numpy()
        array(1)
    """
    x = one(x)
    return bind(P_ARGMIN, x, axis=_arg_axis(x, axis, "argmin"), keepdims=bool(keepdims))

