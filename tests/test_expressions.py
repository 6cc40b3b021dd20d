"""Derivative expressions: the whitelist parser, agreement of the renderings, ``safe`` products.

The renderings are reached through the extension API: an expression is declared as the
derivative of a probe primitive (``extend.elementwise``), whose ``array_vjp`` (NumPy arrays)
and ``tensor_vjp`` (gradtape ops) are compared with an independent NumPy evaluation."""

from __future__ import annotations

import itertools
import math
from contextlib import contextmanager

import numpy as np
import pytest

import gradtape as gt
from gradtape import ops
from gradtape.extend import (
    FUNCTIONS,
    REGISTRY,
    Domain,
    ExpressionError,
    elementwise,
    parse,
)

ALLOWED = ("x", "y", "alpha")

with gt.use_backend("numpy") as NUMPY:  # the NumPy Backend object that array_vjp renders for
    pass

_erf = np.vectorize(math.erf, otypes=[np.float64])
_erfc = np.vectorize(math.erfc, otypes=[np.float64])

# An independent NumPy meaning of every function of the expression language.
REFERENCE = {
    "exp": np.exp, "log": np.log, "log1p": np.log1p, "expm1": np.expm1, "sqrt": np.sqrt,
    "rsqrt": lambda v: 1.0 / np.sqrt(v), "sin": np.sin, "cos": np.cos, "tan": np.tan,
    "tanh": np.tanh, "sinh": np.sinh, "cosh": np.cosh, "arcsin": np.arcsin,
    "arccos": np.arccos, "arctan": np.arctan, "erf": lambda v: _erf(np.asarray(v)),
    "erfc": lambda v: _erfc(np.asarray(v)), "abs": np.abs, "sign": np.sign,
    "sigmoid": lambda v: 1.0 / (1.0 + np.exp(-v)),
    "square": np.square, "where": np.where,
}


def evaluate(expr, values):
    """``expr`` (an :class:`~gradtape.extend.Expr`) evaluated with :data:`REFERENCE`."""
    ns = {**REFERENCE, "pi": math.pi, "__builtins__": {}, **values}
    return eval(compile(expr.tree, "<derivative>", "eval"), ns)  # noqa: S307 - parsed, whitelisted


_probe_ids = itertools.count()


@contextmanager
def probe(d, safe=False):
    """A one-input elementwise primitive (identity forward) with derivative ``d``, removed from
    the registry afterwards: its ``array_vjp``/``tensor_vjp`` are the renderings of ``d``."""
    name = f"_expr_probe_{next(_probe_ids)}"
    prim = elementwise(name, lambda xp, x: x, d=d, safe=safe)
    try:
        yield prim
    finally:
        del REGISTRY[name]


# --------------------------------------------------------------------------- the parser
@pytest.mark.parametrize(("source", "problem"), [
    ("z * 2", "unknown name 'z'"),
    ("np.exp(x)", "unknown function 'np.exp'"),
    ("foo(x)", "unknown function 'foo'"),
    ("__import__('os')", "unknown function '__import__'"),
    ("exp(x=1)", "exp takes 1 positional"),
    ("where(x > 0, 1)", "where takes 3 positional"),
    ("x // 2", "FloorDiv"),
    ("x % 2", "Mod"),
    ("x @ y", "MatMult"),
    ("x << 1", "LShift"),
    ("x ^ y", "BitXor"),
    ("not x", "Not"),
    ("x and y", "BoolOp"),
    ("0 < x < 1", "one comparison at a time"),
    ("x is y", "one comparison at a time"),
    ("'a'", "only numeric constants"),
    ("True", "only numeric constants"),
    ("1j * x", "only numeric constants"),
    ("x.real", "Attribute"),
    ("x[0]", "Subscript"),
    ("lambda: x", "Lambda"),
    ("x if y else 1", "IfExp"),
    ("(x, y)", "Tuple"),
    ("x +", "not valid"),
    ("x = 1", "not valid"),
])
def test_parser_rejects_outside_the_whitelist(source, problem):
    with pytest.raises(ExpressionError) as info:
        parse(source, ALLOWED)
    assert problem in str(info.value), str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("source", [
    "1 - y * y", "where(x > 0, 1, alpha)", "(x >= 0) & (x <= 1) | ~(y == 2)", "-x ** 2 / 3.5",
    "pi * rsqrt(x) + sigmoid(+y)", "erf(x) * exp(-x * x) - abs(sign(x))", "x != y",
])
def test_parser_accepts_the_shared_subset(source):
    expr = parse(source, ALLOWED)
    assert expr.source == source
    assert set(expr.names) <= set(ALLOWED)


def test_parse_records_names_and_constants():
    assert parse("1 - y * y", ALLOWED).names == ("y",)
    assert parse("where(x > 0, 1, alpha)", ALLOWED).names == ("alpha", "x")
    assert parse("pi * x", ALLOWED).names == ("x",)  # constants are not inputs
    assert parse("1", ALLOWED).constant == 1.0
    assert parse("-1", ALLOWED).constant == -1.0
    assert parse("0", ALLOWED).constant == 0.0
    assert parse("x", ALLOWED).constant is None


def test_names_are_checked_against_the_primitive():
    before = set(REGISTRY)
    with pytest.raises(ExpressionError, match="unknown name 'b'"):
        elementwise("_expr_bad_name", lambda xp, x: x, d="b")
    with pytest.raises(ExpressionError, match="unknown function 'cbrt'"):
        elementwise("_expr_bad_fn", lambda xp, x: x, d="cbrt(x)")
    with pytest.raises(ValueError, match="derivative expression"):
        elementwise("_expr_bad_count", lambda xp, a, b: a, d="1")
    assert set(REGISTRY) == before  # nothing half-declared was registered


def test_every_function_has_every_rendering():
    assert set(REFERENCE) == set(FUNCTIONS), "update REFERENCE in this file"
    x = np.array([0.25, 0.75])
    for name in FUNCTIONS:
        args = "x > 0.5, x, 1 - x" if name == "where" else "x"
        with probe(f"{name}({args})") as prim:
            a = prim.array_vjp(0, NUMPY)(np.ones(2), x, x)
            assert np.shape(a) == (2,), f"array rendering of {name}"
            t = prim.tensor_vjp(0)(gt.tensor(np.ones(2)), gt.tensor(x), gt.tensor(x))
            assert t.shape == (2,), f"tensor rendering of {name}"
        assert callable(getattr(ops, name, None)), f"tensor rendering lacks gradtape.ops.{name}"


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_each_function_renders_the_same_both_ways(name):
    rng = np.random.default_rng(0)
    x = rng.uniform(0.2, 0.9, 5)  # inside every function's domain
    args = "x > 0.5, x, 1 - x" if name == "where" else "x"
    expr = parse(f"{name}({args})", ("x", "y"))
    gy = rng.standard_normal(5)
    with probe(expr.source) as prim:
        a = prim.array_vjp(0, NUMPY)(gy, x, None)
        t = prim.tensor_vjp(0)(gt.tensor(gy), gt.tensor(x), None)
    e = gy * evaluate(expr, {"x": x})
    np.testing.assert_allclose(a, e, rtol=1e-13)
    np.testing.assert_allclose(t.numpy(), e, rtol=1e-13)


# --------------------------------------------------------------------------- primitives
ELEMENTWISE = sorted(n for n, p in REGISTRY.items() if p.is_elementwise)
PARAMS = {"leaky_relu": {"negative_slope": 0.1}, "elu": {"alpha": 1.3}}


def _sample(dom: Domain, n: int, rng: np.random.Generator) -> np.ndarray:
    if dom.kind == "bool":
        return rng.random(n) < 0.5
    x = rng.uniform(dom.low, dom.high, n)
    for p in dom.avoid:
        x = np.where(np.abs(x - p) < dom.margin, p + dom.margin + 0.01, x)
    return x


@pytest.mark.parametrize("name", ELEMENTWISE)
def test_array_and_tensor_renderings_agree(name):
    """For every elementwise primitive and input: the array VJP (unfused first order), the
    tensor VJP (recorded, higher order) and ``gy * d`` (``d`` evaluated with the NumPy
    reference) give the same numbers, including where the upstream gradient is 0."""
    prim = REGISTRY[name]
    params = PARAMS.get(name, {})
    assert set(params) == set(prim.param_names), f"{name}: update PARAMS in this file"
    rng = np.random.default_rng(0)
    n = 8
    xs = [_sample(d, n, rng) for d in prim.domains]
    y = prim.impl(np, *xs, **params)
    gy = rng.standard_normal(n)
    gy[::3] = 0.0
    args = (*xs, y, *params.values())
    targs = (*[gt.tensor(a) for a in xs], gt.tensor(y), *params.values())
    values = dict(zip(prim.arg_names, xs), y=y, **params)
    for i, expr in enumerate(prim.derivatives):
        if xs[i].dtype.kind != "f":
            continue
        a = np.broadcast_to(prim.array_vjp(i, NUMPY)(gy, *args), (n,))
        t = np.broadcast_to(prim.tensor_vjp(i)(gt.tensor(gy), *targs).numpy(), (n,))
        e = gy * np.broadcast_to(evaluate(expr, values), (n,))
        where = f"{name}: d/d{prim.arg_names[i]} = {expr.source!r}"
        np.testing.assert_allclose(a, e, rtol=1e-13, atol=1e-300, err_msg=where)
        np.testing.assert_allclose(t, e, rtol=1e-13, atol=1e-300, err_msg=where)


# --------------------------------------------------------------------------- safe products
def test_safe_product_zero_times_inf_is_zero():
    expr = parse("1 / x", ("x", "y"))
    x = np.array([0.0, 0.0, 2.0, 0.0])
    gy = np.array([0.0, 3.0, 4.0, -0.0])
    with np.errstate(divide="ignore", invalid="ignore"), probe(expr.source, safe=True) as ps, \
            probe(expr.source) as pu:
        safe = ps.array_vjp(0, NUMPY)(gy, x, None)
        unsafe = pu.array_vjp(0, NUMPY)(gy, x, None)
        tsafe = ps.tensor_vjp(0)(gt.tensor(gy), gt.tensor(x), None)
    np.testing.assert_array_equal(safe, [0.0, np.inf, 2.0, 0.0])  # a real inf stays inf
    np.testing.assert_array_equal(tsafe.numpy(), [0.0, np.inf, 2.0, 0.0])
    assert np.isnan(unsafe[0]) and np.isnan(unsafe[3])  # what "safe" exists to prevent


def test_safe_product_zero_times_nan_is_zero():
    expr = parse("log(x) * 0 + sqrt(x)", ("x", "y"))  # NaN for x < 0
    x = np.array([-1.0, 4.0])
    gy = np.array([0.0, 1.0])
    with np.errstate(invalid="ignore"), probe(expr.source, safe=True) as prim:
        a = prim.array_vjp(0, NUMPY)(gy, x, None)
        t = prim.tensor_vjp(0)(gt.tensor(gy), gt.tensor(x), None)
    np.testing.assert_array_equal(a, [0.0, 2.0])
    np.testing.assert_array_equal(t.numpy(), [0.0, 2.0])


def test_safe_primitives_keep_a_zero_upstream_gradient_finite():
    """Every primitive declared safe: a zero upstream gradient at a point where its local
    derivative is infinite gives 0 (sqrt, log, rsqrt at 0; arcsin at 1; div by 0)."""
    cases = {"sqrt": [0.0], "log": [0.0], "rsqrt": [0.0], "log1p": [-1.0], "arcsin": [1.0],
             "arccos": [-1.0]}
    for name, x in cases.items():
        prim = REGISTRY[name]
        assert prim.safe, f"{name} should be declared safe=True"
        xt = gt.tensor(np.array(x))
        with np.errstate(divide="ignore", invalid="ignore"):
            with gt.GradientTape() as tape:
                tape.watch(xt)
                y = gt.where(xt > 100, getattr(gt, name)(xt), 0.0)
            g = tape.gradient(y, xt)
        np.testing.assert_array_equal(g.numpy(), [0.0], err_msg=name)


def test_vjps_keep_float32_with_parameters_and_pi_in_the_derivative():
    # on NumPy the VJP calls ufuncs (no temporary elision); an operation on parameters or
    # pi alone must stay Python arithmetic: a NumPy float64 scalar would make it float64
    from gradtape._src.backend import NUMPY
    powp = elementwise("_expr_powp_f32", lambda xp, x, *, p: x ** p, d="p * x ** (p - 1)")
    twopi = elementwise("_expr_2pix_f32", lambda xp, x: xp.sin(2 * np.pi * x),
                        d="2 * pi * cos(2 * pi * x)")
    try:
        x = np.random.default_rng(0).uniform(0.5, 2, 1000).astype(np.float32)
        g = np.ones_like(x)
        got = powp.array_vjp(0, NUMPY)(g, x, None, 2.5)
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, g * (2.5 * x ** (2.5 - 1)))
        got = twopi.array_vjp(0, NUMPY)(g, x, None)
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, g * (2 * np.pi * np.cos(2 * np.pi * x)))
    finally:
        del REGISTRY["_expr_powp_f32"], REGISTRY["_expr_2pix_f32"]
