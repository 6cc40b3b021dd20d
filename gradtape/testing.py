"""Gradient checking shared by every test: central differences and the dot-product test.

:func:`check_grads` differentiates ``fn(*args, **kwargs)`` with respect to every float array in
``args`` and compares, for random directions, the tape's reverse-mode product with central
differences:

    <v, J^T u>  (tape.gradient with output_gradients=u)  ==  <J v, u>  (finite differences)

for a random cotangent ``u`` of the output and a random unit tangent ``v`` of each input. Second
order (the default) applies the same test to ``x -> J^T u``, computed with a nested tape so that
the outer tape records the inner gradient computation. All of it runs in float64 on NumPy.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from ._src.backend import use_backend
from ._src.frontend.tape import GradientTape
from ._src.nest import flatten
from ._src.tensor import Tensor, TensorTree, tensor
from .ops._util import as_int
from .random import _check_seed

__all__ = ["check_grads", "numerical_jacobian"]

_EPS_MACH = float(np.finfo(np.float64).eps)

# A function of the differentiated inputs (a list of float64 Tensors) returning a flat list of
# float Tensors; what each level of the check differentiates.
_Flat = Callable[[list[Tensor]], list[Tensor]]


def _check_call_args(what: str, fn: object, args: object, kwargs: object) -> None:
    if not callable(fn):
        raise TypeError(f"{what}: fn must be callable, got {type(fn).__name__}")
    if not isinstance(args, (tuple, list)):
        raise TypeError(f"{what}: args must be a tuple or list of the positional arguments (one "
                        f"array: (x,)), got {type(args).__name__}")
    if kwargs is not None and not isinstance(kwargs, Mapping):
        raise TypeError(f"{what}: kwargs must be a dict or None, got {type(kwargs).__name__}")


def _check_tol(what: str, name: str, value: float | None, default: float, positive: bool) -> float:
    """``value`` (None: ``default``) as a float, checked finite and > 0 (``positive``) or >= 0:
    a NaN step or tolerance gives a NaN bound, and every comparison fails."""
    if value is None:
        return default
    bound = "> 0" if positive else ">= 0"
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{what}: {name} must be a finite number {bound} (or None), got {value!r} "
                        f"({type(value).__name__})")
    v = float(value)
    if not math.isfinite(v) or v < 0 or (positive and v == 0):
        raise ValueError(f"{what}: {name} must be a finite number {bound} (or None), got {v}")
    return v


def _is_float_value(a: object) -> bool:
    if isinstance(a, Tensor):
        return a.dtype.kind == "f"
    if isinstance(a, (np.ndarray, np.floating)):
        return np.asarray(a).dtype.kind == "f"
    return False


def _host64(a: Tensor | npt.ArrayLike) -> np.ndarray:
    if isinstance(a, Tensor):
        a = a.numpy()
    return np.array(a, dtype=np.float64)


def _split_args(args: Sequence[Any]) -> tuple[list[np.ndarray], list[str],
                                               Callable[[list[Tensor]], tuple[Any, ...]]]:
    """Find the differentiated inputs. Returns (float64 arrays, labels, rebuild(xs) -> args).

    A float array (or float Tensor) in ``args`` is differentiated; so is every item of a
    list/tuple argument whose items are all float arrays (``concat``, ``stack``). Everything
    else is passed through unchanged.
    """
    values: list[np.ndarray] = []
    labels: list[str] = []
    layout: list[Any] = []  # per argument: None (pass through), int (slot) or (type, [slots])
    for i, a in enumerate(args):
        if _is_float_value(a):
            layout.append(len(values))
            values.append(_host64(a))
            labels.append(f"args[{i}]")
        elif isinstance(a, (list, tuple)) and a and all(_is_float_value(e) for e in a):
            slots = []
            for j, e in enumerate(a):
                slots.append(len(values))
                values.append(_host64(e))
                labels.append(f"args[{i}][{j}]")
            layout.append((type(a), slots))
        else:
            layout.append(None)

    def rebuild(xs: list[Tensor]) -> tuple[Any, ...]:
        out = []
        for a, lay in zip(args, layout):
            if lay is None:
                out.append(a)
            elif isinstance(lay, int):
                out.append(xs[lay])
            else:
                typ, slots = lay
                out.append(typ(xs[s] for s in slots))
        return tuple(out)

    return values, labels, rebuild


def _float_leaves(out: object, name: str) -> list[Tensor]:
    leaves, _ = flatten(out)
    for k, t in enumerate(leaves):
        if not isinstance(t, Tensor):
            raise TypeError(f"check_grads: {name} must return gradtape Tensors (or a list/tuple/"
                            f"dict of them), got {type(t).__name__} at output {k}")
    return [t for t in leaves if t.dtype.kind == "f"]


def _tensors(values: list[np.ndarray]) -> list[Tensor]:
    return [tensor(v) for v in values]


def _dot(a: npt.ArrayLike, b: np.ndarray) -> float:
    return float(np.sum(np.asarray(a, dtype=np.float64) * b))


def _gradient_function(f: _Flat, cotangents: list[np.ndarray]) -> _Flat:
    """``x -> J_f(x)^T u``, computed with a tape so that an enclosing tape can differentiate it."""

    def g(xs: list[Tensor]) -> list[Tensor]:
        with GradientTape() as tape:
            tape.watch(xs)
            outs = f(xs)
        grads = tape.gradient(outs, xs, output_gradients=_tensors(cotangents),
                              unconnected_gradients="zero")
        return list(grads)

    return g


def _check_level(f: _Flat, x0: list[np.ndarray], labels: list[str], order: int, name: str,
                 rng: np.random.Generator, eps: float, rtol: float, atol: float) -> list[np.ndarray]:
    """One dot-product test of ``f`` at ``x0`` for every input; returns the cotangents used."""
    what = name if order == 1 else f"the order-{order - 1} gradient of {name}"
    outs0 = [t.numpy() for t in f(_tensors(x0))]
    if not outs0:
        raise AssertionError(f"check_grads: {what} has no floating-point output to differentiate")
    for k, o in enumerate(outs0):
        if not np.all(np.isfinite(o)):
            raise AssertionError(f"check_grads: output {k} of {what} is not finite at the given "
                                 f"point (order {order}); choose inputs inside the domain")
    u = [rng.standard_normal(o.shape) for o in outs0]
    xs = _tensors(x0)
    with GradientTape() as tape:
        tape.watch(xs)
        outs = f(xs)
    grads = tape.gradient(outs, xs, output_gradients=_tensors(u))
    for i, (x, label) in enumerate(zip(x0, labels)):
        g = grads[i]
        if g is None:
            g_arr = np.zeros_like(x)
        else:
            if g.shape != x.shape or g.dtype != np.float64:
                raise AssertionError(
                    f"check_grads: order-{order} gradient of {name} with respect to {label} has "
                    f"shape {g.shape} and dtype {g.dtype}; expected the input's shape {x.shape} "
                    "and float64")
            g_arr = g.numpy()
            if not np.all(np.isfinite(g_arr)):
                raise AssertionError(f"check_grads: order-{order} gradient of {name} with respect "
                                     f"to {label} is not finite: {g_arr}")
        v = rng.standard_normal(x.shape)
        norm = float(np.sqrt(np.sum(v * v)))
        if norm > 0:
            v /= norm
        plus = list(x0)
        minus = list(x0)
        plus[i] = x + eps * v
        minus[i] = x - eps * v
        f_plus = [t.numpy() for t in f(_tensors(plus))]
        f_minus = [t.numpy() for t in f(_tensors(minus))]
        numeric = 0.0
        scale = 0.0  # |J v| |u|: the size a random dot product can cancel down from
        noise = 0.0  # rounding error of the central difference
        for fp, fm, uk, f0 in zip(f_plus, f_minus, u, outs0):
            jv = (fp - fm) / (2 * eps)
            numeric += _dot(jv, uk)
            scale += float(np.sqrt(np.sum(jv * jv) * np.sum(uk * uk)))
            noise += 10 * _EPS_MACH * float(np.sum(np.abs(f0) * np.abs(uk))) / eps
        analytic = _dot(g_arr, v)
        diff = abs(analytic - numeric)
        bound = atol + noise + rtol * max(abs(analytic), abs(numeric), scale)
        if not diff <= bound:
            rel = diff / max(abs(analytic), abs(numeric), 1e-300)
            unconnected = " (the tape gave no gradient: None)" if g is None else ""
            raise AssertionError(
                f"check_grads: order-{order} gradient of {name} with respect to {label} "
                f"(shape {x.shape}) disagrees with central differences{unconnected}:\n"
                f"  tape       <v, J^T u> = {analytic!r}\n"
                f"  numerical  <J v, u>   = {numeric!r}\n"
                f"  |difference| = {diff:.3e}, relative error = {rel:.3e} "
                f"(allowed {bound:.3e}: rtol={rtol}, atol={atol}, eps={eps})")
    return u


def check_grads(fn: Callable[..., TensorTree], args: Sequence[Any], kwargs: Mapping[str, Any] | None = None,
                order: int = 2, eps: float | None = None, rtol: float | None = None,
                atol: float | None = None, seed: int | None = 0) -> None:
    """Check the gradients of ``fn`` against central differences (float64, NumPy backend).

    ``fn(*args, **kwargs)`` takes and returns gradtape Tensors. It is differentiated with
    respect to every float array in ``args`` (a NumPy float array or float Tensor, converted to
    float64; also each item of a list/tuple argument made only of float arrays); other arguments
    (ints, index arrays, bool masks, Python scalars) are passed through unchanged. For each
    differentiated input and order ``k = 1 .. order`` the dot-product test

        ``<v, J^T u>`` (tape) ``== <J v, u>`` (central differences along ``v``)

    is made with a random cotangent ``u`` of the output and a random unit tangent ``v`` of the
    input. Order 2 checks ``x -> J^T u`` computed with a nested tape (the inner gradient
    recorded by an outer tape), and so on.

    Args:
        fn: the function under test; it may return a Tensor or a list/tuple/dict of Tensors
            (non-float outputs are ignored).
        args: the positional arguments, a tuple or list (one array: ``(x,)``); shapes are
            whatever ``fn`` accepts.
        kwargs: keyword arguments (a dict or None), passed through unchanged.
        order: highest derivative order checked, an int >= 1 (1 or 2 usually; each order
            adds a nested tape).
        eps: finite-difference step, finite and > 0 (default ``1e-6``; each element moves by at
            most ``eps``).
        rtol: relative tolerance, finite and >= 0 (default ``1e-5``), against the larger of the
            two numbers and ``|J v| |u|`` (the size a random dot product can cancel down from).
        atol: absolute tolerance, finite and >= 0 (default ``1e-10``), added to an estimate of
            the rounding error of the central difference.
        seed: seed of the random directions, an int >= 0 or None (fresh entropy).

    Raises:
        AssertionError: naming the argument, the order, both numbers and the relative error.
        TypeError, ValueError: for arguments outside the rules above (``fn`` not callable,
            ``args`` not a tuple or list, a NaN, zero or negative ``eps``, ...).

    Example:
        >>> import numpy as np, gradtape as gt
        >>> from gradtape.testing import check_grads
        >>> check_grads(lambda x, w: gt.tanh(x @ w), (np.ones((2, 3)), np.full((3, 4), 0.1)))
    """
    _check_call_args("check_grads", fn, args, kwargs)
    order = as_int(order, "check_grads", "order")
    if order < 1:
        raise ValueError(f"check_grads: order must be >= 1, got {order}")
    seed = _check_seed(seed, "check_grads")
    kwargs = {} if kwargs is None else dict(kwargs)
    eps = _check_tol("check_grads", "eps", eps, 1e-6, positive=True)
    rtol = _check_tol("check_grads", "rtol", rtol, 1e-5, positive=False)
    atol = _check_tol("check_grads", "atol", atol, 1e-10, positive=False)
    name = getattr(fn, "__name__", repr(fn))
    rng = np.random.default_rng(seed)
    with use_backend("numpy"):
        x0, labels, rebuild = _split_args(tuple(args))
        if not x0:
            raise ValueError(f"check_grads: no float array among the arguments of {name}; "
                             "nothing to differentiate")

        def f1(xs: list[Tensor]) -> list[Tensor]:
            return _float_leaves(fn(*rebuild(xs), **kwargs), name)

        f: _Flat = f1
        for k in range(1, order + 1):
            u = _check_level(f, x0, labels, k, name, rng, eps, rtol, atol)
            if k < order:
                f = _gradient_function(f, u)


def numerical_jacobian(fn: Callable[..., TensorTree], args: Sequence[Any],
                       kwargs: Mapping[str, Any] | None = None,
                       eps: float = 1e-6) -> list[np.ndarray]:
    """Central-difference Jacobian of ``fn(*args, **kwargs)`` (one Tensor output) in float64.

    Returns one array per differentiated argument (float arrays in ``args``, a tuple or list,
    as in :func:`check_grads`), of shape ``output.shape + arg.shape``. ``eps``, the step, must
    be finite and > 0 (TypeError / ValueError otherwise). Costs two calls per input element:
    for small tests only.

    Example:
        >>> import numpy as np, gradtape as gt
        >>> from gradtape.testing import numerical_jacobian
        >>> J, = numerical_jacobian(lambda x: x * x, (np.array([1.0, 2.0]),))
        >>> np.round(J, 6)
        array([[2., 0.],
               [0., 4.]])
    """
    _check_call_args("numerical_jacobian", fn, args, kwargs)
    eps = _check_tol("numerical_jacobian", "eps", eps, 1e-6, positive=True)
    kwargs = {} if kwargs is None else dict(kwargs)
    name = getattr(fn, "__name__", repr(fn))
    with use_backend("numpy"):
        x0, _, rebuild = _split_args(tuple(args))

        def f(xs: list[np.ndarray]) -> np.ndarray:
            outs = _float_leaves(fn(*rebuild(_tensors(xs)), **kwargs), name)
            if len(outs) != 1:
                raise ValueError(f"numerical_jacobian: {name} must return one float Tensor, got "
                                 f"{len(outs)}")
            return outs[0].numpy()

        out_shape = f(x0).shape
        jacs = []
        for i, x in enumerate(x0):
            J = np.zeros(out_shape + x.shape)
            flat = J.reshape(int(np.prod(out_shape, dtype=np.int64)), x.size)
            for j in range(x.size):
                d = np.zeros(x.size)
                d[j] = eps
                plus = list(x0)
                minus = list(x0)
                plus[i] = x + d.reshape(x.shape)
                minus[i] = x - d.reshape(x.shape)
                flat[:, j] = ((f(plus) - f(minus)) / (2 * eps)).reshape(-1)
            jacs.append(J)
        return jacs
