"""Rendering of derivative expressions on backend arrays: ``gy * d`` as a Python function.

This is the unfused first-order route for one elementwise record (fusion, in
:mod:`.numpy_program` and :mod:`.cuda`, handles runs of them).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..backend import Array, Backend, erf_for, erfc_for
from ..cpu.select import where as select_where
from .expr import CONSTANTS, FUNCTIONS, GENERATED_BUILTINS, UFUNC_NAMES, Expr, vjp_function

__all__ = ["array_vjp"]


def _array_namespace(backend: Backend) -> dict[str, Any]:
    xp = backend.xp

    def sigmoid(v: Array) -> Array:
        # exp(-log(1 + exp(-v))): no overflow, and its relative precision holds in the
        # negative tail, where the tanh form (tanh(v / 2) + 1) / 2 cancels to 0 from v = -17
        # in float32 (the forward's formula, too)
        return xp.exp(-xp.logaddexp(0, -v))

    def rsqrt(v: Array) -> Array:
        return 1 / xp.sqrt(v)

    erf = backend.erf
    erfc = erfc_for(xp)
    where = select_where if xp is np else xp.where  # (a select against zero from bits)
    if xp is not np:
        def erf(v: Array) -> Array:  # a device's erf is no ufunc of its module: looked up per
            return erf_for(backend.xp)(v)  # call, as a gt.function trace swaps the module

        def erfc(v: Array) -> Array:  # (likewise)
            return erfc_for(backend.xp)(v)

        def where(c: Array, a: Any, b: Any) -> Array:  # (no ufunc either)
            return backend.xp.where(c, a, b)

    ns = {
        "exp": xp.exp, "log": xp.log, "log1p": xp.log1p, "expm1": xp.expm1, "sqrt": xp.sqrt,
        "rsqrt": rsqrt, "sin": xp.sin, "cos": xp.cos, "tan": xp.tan, "tanh": xp.tanh,
        "sinh": xp.sinh, "cosh": xp.cosh, "arcsin": xp.arcsin, "arccos": xp.arccos,
        "arctan": xp.arctan, "erf": erf, "erfc": erfc, "abs": xp.abs, "sign": xp.sign,
        "sigmoid": sigmoid, "square": xp.square, "where": where, "__builtins__": GENERATED_BUILTINS,
    }
    ns.update(CONSTANTS)
    assert set(FUNCTIONS) <= set(ns)
    return ns


_array_cache: dict[tuple, Callable] = {}


def array_vjp(expr: Expr, arg_names: tuple[str, ...], backend: Backend, safe: bool) -> Callable[..., Array]:
    """Render ``gy * (expr)`` as a function ``f(gy, *args)`` on backend arrays (cached).

    ``arg_names`` fixes the positional order (inputs, then ``y``, then parameters).

    Example:
        >>> from gradtape._src.backend import NUMPY
        >>> from gradtape._src.codegen.expr import parse
        >>> import numpy as np
        >>> f = array_vjp(parse("1 - y * y", ("x", "y")), ("x", "y"), NUMPY, False)
        >>> f(np.ones(2), None, np.zeros(2))
        array([1., 1.])
    """
    key = (expr.source, arg_names, backend.name, safe)
    fn = _array_cache.get(key)
    if fn is not None:
        return fn
    ns = _array_namespace(backend)
    if safe:
        # On NumPy the select is skipped when nothing is bad; on a device, ``if bad.any()``
        # would wait for the GPU (a host synchronisation), so the select always runs there.
        on_host = backend.name == "numpy"

        def _safe(gy: Array, d: Array) -> Array:
            xp = backend.xp  # (read per call: a gt.function trace swaps a device's module)
            prod = gy * d
            bad = (gy == 0) & ~xp.isfinite(prod)
            # (while gt.function traces, the select is always recorded: no data-dependent branch)
            if on_host:
                if not getattr(bad, "_gt_traced", False) and not bad.any():
                    return prod
                if prod.ndim:  # zeroed in place: the product's own memory layout either way
                    # (a later sum over it adds in layout order), traced or not
                    np.copyto(prod, 0, where=bad)
                    return prod
            return xp.where(bad, xp.zeros((), prod.dtype), prod)

        ns["_safe"] = _safe
    # On NumPy the operators become ufunc calls: ``a * tmp`` on a large temporary would be
    # computed into it (NumPy's temporary elision), taking its memory layout, where a
    # gt.function trace (whose arrays are all referenced) gets the ufunc's own: then a later
    # sum adds in another order, and the replay would not be bit-identical to eager mode
    ufuncs = backend.xp is np
    if ufuncs:
        ns.update({name: getattr(np, name[4:]) for name in UFUNC_NAMES})
    # (the names after "y" are the primitive's parameters: Python numbers)
    scalars = arg_names[arg_names.index("y") + 1:] if "y" in arg_names else ()
    fn = vjp_function(expr, arg_names, safe, ns, ufuncs, scalars)
    _array_cache[key] = fn
    return fn
