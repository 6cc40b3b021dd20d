"""Elementwise primitives: each one line, with its local derivative as an expression.

Names in a derivative: the inputs (``x``, or ``a``/``b``), ``y`` the output, and keyword-only
parameters. ``safe=True`` marks derivatives that can be infinite (``0 * inf`` is then 0).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from .._src.autodiff.state import opaque
from .._src.backend import erf_for, erfc_for
from .._src.cpu.select import ROW_MIN, host_relu
from .._src.cpu.select import where as select_where
from .._src.primitive import REGISTRY, Domain, Primitive, _elementwise_batch, bind, elementwise, one, pair, primitive
from .._src.tensor import Tensor, TensorLike, _wrap
from ._util import as_real

if TYPE_CHECKING:
    from .._src.autodiff.record import Record
    from .._src.rules import OnTensors

__all__ = [
    "add", "sub", "mul", "div", "neg", "pow", "exp", "log", "log1p", "expm1", "sqrt", "rsqrt",
    "square", "abs", "sign", "sin", "cos", "tan", "tanh", "sinh", "cosh", "arcsin", "arccos",
    "arctan", "sigmoid", "relu", "leaky_relu", "elu", "gelu", "softplus", "silu", "erf",
    "erfc", "floor", "ceil", "round", "trunc", "arctan2", "atan2", "hypot", "floor_divide", "remainder",
    "maximum", "minimum", "clip", "where", "safe_mul", "less", "less_equal", "greater",
    "greater_equal", "equal", "not_equal", "logical_and", "logical_or", "logical_not", "bitwise_and", "bitwise_or",
    "bitwise_xor", "bitwise_not",
    "isfinite", "isnan", "isinf",
]



# Speed facts declared with each op (read by the threaded forward, gradtape/_src/cpu/parallel.py):
# ``out_form(*arrays, out)`` makes exactly impl's NumPy call writing into ``out``; ``cheap``
# marks one memory-bound ufunc, which pays for a thread only on larger arrays.
def _square_out(x: Any, out: Any) -> Any:
    return np.multiply(x, x, out)


def _relu_out(x: Any, out: Any) -> Any:
    return host_relu(x, out)


def _relu_impl(xp: Any, x: Any) -> Any:
    # (the size test here: a small relu pays no second call, per-op cost being a target)
    return host_relu(x) if xp is np and x.size >= ROW_MIN else xp.maximum(x, 0)


def _maximum_out(a: Any, b: Any, out: Any) -> Any:
    return np.maximum(a, b, out=out)


def _minimum_out(a: Any, b: Any, out: Any) -> Any:
    return np.minimum(a, b, out=out)


def _softplus_out(x: Any, out: Any) -> Any:
    return np.logaddexp(0, x, out)


def _where_of(xp: Any) -> Callable[..., Any]:
    """The select of module ``xp``: on NumPy from bits where it can (``np.where`` branches per
    element, 11x a multiply's time on a mask from data; see gradtape/_src/cpu/select.py)."""
    return select_where if xp is np else xp.where


_F32 = np.dtype(np.float32)
_F64 = np.dtype(np.float64)


def _fp(x: Any) -> Any:
    """``x`` as the input of a float function (``exp``, ``sqrt``, ``tanh`` ...): float and
    complex arrays as they are, integer and bool arrays cast to float32, PyTorch's default
    dtype and JAX's weak float (NumPy would compute in float64, or float16 for bool and int8).
    The impls call it only for a dtype other than float32 and float64."""
    return x if x.dtype.kind in "fc" else x.astype(_F32)


def _guard(x: Any) -> Any:
    """The guard as a call, for impls that read ``x`` several times (``silu``, ``gelu``),
    where one call more is a small part of their cost."""
    return x if (d := x.dtype) is _F32 or d is _F64 else _fp(x)


def _fp2(a: Any, b: Any) -> tuple[Any, Any]:
    """:func:`_fp` of both operands of a binary float function (``arctan2``, ``hypot``)."""
    da, db = a.dtype, b.dtype
    if (da is _F32 or da is _F64) and (db is _F32 or db is _F64):
        return a, b
    return _fp(a), _fp(b)


_POS = Domain(0.2, 3.0)
_KINK = Domain(-2.0, 2.0, avoid=(0.0,))
_UNIT = Domain(-0.9, 0.9)

P_ADD = elementwise("add", lambda xp, a, b: a + b, d=("1", "1"), out_form=np.add, cheap=True)
P_SUB = elementwise("sub", lambda xp, a, b: a - b, d=("1", "-1"), out_form=np.subtract, cheap=True)
P_MUL = elementwise("mul", lambda xp, a, b: a * b, d=("b", "a"), out_form=np.multiply, cheap=True)
P_DIV = elementwise("div", lambda xp, a, b: a / b, d=("1 / b", "-y / b"), safe=True,
                    domain=(Domain(-2, 2), Domain(0.5, 3)), out_form=np.true_divide, cheap=True)
P_NEG = elementwise("neg", lambda xp, x: -x, d="-1", out_form=np.negative, cheap=True)
def _negative_int_exponent(b: Any) -> None:
    if bool((b < 0).any()):
        raise ValueError(_NEGATIVE_INT_POW.format("Integers to negative integer powers are not "
                                                  "allowed."))


_NEGATIVE_INT_POW = ("pow: an integer base to a negative integer exponent ({}); make the base a "
                     "float tensor first (x.astype('float32'))")


def _pow_impl(xp: Any, a: Any, b: Any) -> Any:
    if xp is not np and a.dtype.kind in "iu" and b.dtype.kind == "i":
        # a device's integer power gives 0 (1 // a**-b) where NumPy raises: checked here, one
        # read-back (inside gt.function a step of the program, run at each call)
        if getattr(b, "_gt_traced", False):
            opaque(_negative_int_exponent, b, key=("pow: negative integer exponent",))
        else:
            _negative_int_exponent(b)
    try:
        # the ufunc, not ``**``: on NumPy scalars (a 0-d result) ``**`` takes the scalar math,
        # whose power differs from the ufunc's loop in the last bit, and a compiled step's
        # replay runs the loop
        return xp.power(a, b)
    except ValueError as e:  # NumPy's "Integers to negative integer powers are not allowed."
        raise ValueError(_NEGATIVE_INT_POW.format(e)) from None


P_POW = elementwise("pow", _pow_impl,
                    # at b == 0 the factor a ** -1 (= 1 / a) only where finite (1 / a * 0 is
                    # 0): 0 * inf was NaN at a == 0 and at tiny a where it overflows; elsewhere
                    # it stays, so d2/(da db) at b == 0 is a ** -1 (0 where that overflows).
                    # One power per element: the test divides (by 1 at a == 0: no warning)
                    d=("b * where((b == 0) & ((a == 0) | (1 / where(a == 0, 1, a) * 0 != 0)), 0, "
                       "a ** (b - 1))",
                       "where(a == 0, 0, y * log(a))"),
                    safe=True, domain=(Domain(0.5, 2), Domain(-2, 2)))
# Float functions (exp ... erfc, the smooth activations) take their input through the guard
# ``x if (d := x.dtype) is _F32 or d is _F64 else _fp(x)``: integer and bool arrays compute in
# float32 (see _fp); a float32 or float64 array pays one attribute read and no call (per-op
# overhead is a product target).
P_EXP = elementwise("exp", lambda xp, x: xp.exp(x if (d := x.dtype) is _F32 or d is _F64 else _fp(x)),
                    d="y", out_form=np.exp)
P_LOG = elementwise("log", lambda xp, x: xp.log(x if (d := x.dtype) is _F32 or d is _F64 else _fp(x)),
                    d="1 / x", safe=True, domain=_POS, out_form=np.log)
P_LOG1P = elementwise("log1p", lambda xp, x: xp.log1p(x if (d := x.dtype) is _F32 or d is _F64 else _fp(x)),
                      d="1 / (1 + x)", safe=True, domain=Domain(-0.5, 2), out_form=np.log1p)
P_EXPM1 = elementwise("expm1", lambda xp, x: xp.expm1(x if (d := x.dtype) is _F32 or d is _F64 else _fp(x)),
                      d="y + 1", out_form=np.expm1)
P_SQRT = elementwise("sqrt", lambda xp, x: xp.sqrt(x if (d := x.dtype) is _F32 or d is _F64 else _fp(x)),
                     d="0.5 / y", safe=True, domain=_POS, out_form=np.sqrt)
P_RSQRT = elementwise("rsqrt", lambda xp, x: 1 / xp.sqrt(x if (d := x.dtype) is _F32 or d is _F64 else _fp(x)),
                      d="-0.5 * y / x", safe=True, domain=_POS)
P_SQUARE = elementwise("square", lambda xp, x: x * x, d="2 * x", out_form=_square_out, cheap=True)
P_ABS = elementwise("abs", lambda xp, x: xp.abs(x), d="sign(x)", domain=_KINK, out_form=np.absolute,
                    cheap=True, masks=True)
P_SIGN = elementwise("sign", lambda xp, x: x.copy() if x.dtype == np.bool_ else xp.sign(x),  # (torch's
                     d="0", domain=_KINK, out_form=np.sign, cheap=True, masks=True)  # bool sign)
P_SIN = elementwise("sin", lambda xp, x: xp.sin(x if (d := x.dtype) is _F32 or d is _F64 else _fp(x)),
                    d="cos(x)", out_form=np.sin)
P_COS = elementwise("cos", lambda xp, x: xp.cos(x if (d := x.dtype) is _F32 or d is _F64 else _fp(x)),
                    d="-sin(x)", out_form=np.cos)
P_TAN = elementwise("tan", lambda xp, x: xp.tan(x if (d := x.dtype) is _F32 or d is _F64 else _fp(x)),
                    d="1 + y * y", domain=Domain(-1.2, 1.2), out_form=np.tan)
P_TANH = elementwise("tanh", lambda xp, x: xp.tanh(x if (d := x.dtype) is _F32 or d is _F64 else _fp(x)),
                     d="1 - y * y", out_form=np.tanh)
P_SINH = elementwise("sinh", lambda xp, x: xp.sinh(x if (d := x.dtype) is _F32 or d is _F64 else _fp(x)),
                     d="cosh(x)", out_form=np.sinh)
P_COSH = elementwise("cosh", lambda xp, x: xp.cosh(x if (d := x.dtype) is _F32 or d is _F64 else _fp(x)),
                     d="sinh(x)", out_form=np.cosh)
P_ARCSIN = elementwise("arcsin", lambda xp, x: xp.arcsin(x if (d := x.dtype) is _F32 or d is _F64 else _fp(x)),
                       d="rsqrt(1 - x * x)", safe=True, domain=_UNIT, out_form=np.arcsin)
P_ARCCOS = elementwise("arccos", lambda xp, x: xp.arccos(x if (d := x.dtype) is _F32 or d is _F64 else _fp(x)),
                       d="-rsqrt(1 - x * x)", safe=True, domain=_UNIT, out_form=np.arccos)
P_ARCTAN = elementwise("arctan", lambda xp, x: xp.arctan(x if (d := x.dtype) is _F32 or d is _F64 else _fp(x)),
                       d="1 / (1 + x * x)", out_form=np.arctan)
P_SIGMOID = elementwise(
    "sigmoid", lambda xp, x: xp.exp(-xp.logaddexp(0, -(x if (d := x.dtype) is _F32 or d is _F64 else _fp(x)))),
    d="y * (1 - y)", domain=Domain(-4, 4))
P_RELU = elementwise("relu", _relu_impl, d="x > 0", domain=_KINK, out_form=_relu_out,
                     cheap=True, masks=True)
P_LEAKY_RELU = elementwise(
    "leaky_relu",
    lambda xp, x, *, negative_slope: _where_of(xp)((x := _guard(x)) > 0, x, x * negative_slope),
    d="where(x > 0, 1, negative_slope)", domain=_KINK)
P_ELU = elementwise(
    "elu", lambda xp, x, *, alpha: _where_of(xp)((x := _guard(x)) > 0, x, alpha * xp.expm1(xp.minimum(x, 0))),
    # (y + alpha cancels in the tail; exp(x) where it is selected, exp(0) where not: no
    # overflow; the inner where also gives the second derivative alpha at 0, the side whose
    # first derivative is taken there)
    d="where(x > 0, 1, alpha * exp(where(x > 0, 0, x)))", domain=_KINK)


def _rounded_once(f: Any) -> Any:
    """An impl of several NumPy calls that computes a float16 input in float32 and rounds the
    result once (each call rounding to float16 put exact gelu 5% off at -3.5)."""
    def impl(xp: Any, x: Any) -> Any:
        if x.dtype.kind == "f" and x.dtype.itemsize < 4:
            return f(xp, x.astype(_F32)).astype(x.dtype)
        return f(xp, _guard(x))

    return impl


# Phi(x) = 0.5 * erfc(-x / sqrt(2)): 1 + erf(x / sqrt(2)) cancels for x < 0 (gelu(-8) 1.8% off
# in float64 and -0.0 from -9, 4% off at -5 in float32 and -0.0 from -6); erfc keeps its
# relative precision there. For x > 0 both forms compute 2 - erfc(|x| / sqrt(2)).
P_GELU = elementwise(
    "gelu", _rounded_once(lambda xp, x: 0.5 * x * erfc_for(xp)(x * -0.7071067811865476)),
    d="0.5 * erfc(x * -0.7071067811865476) + x * exp(-0.5 * x * x) * 0.3989422804014327",
    half_in_float32=True)


def _gelu_tanh(xp: Any, x: Any) -> Any:
    # 0.5 * x * (1 + tanh(u)) is x * sigmoid(2u): in that form no 1 + tanh(u) cancels for x < 0
    # (float32 put gelu_tanh(-5) 30% off and gave 0 at -6). exp(-2u) reaches inf for x below
    # about -10.07 in float32 (-27 in float64), which gives the limit -0: NumPy's overflow
    # warning is expected there, so it is not raised (tanh never overflowed). u = inf (x**3
    # past the dtype's range) gives x.
    t = -1.5957691216057308 * (x + 0.044715 * x * x * x)
    if xp is np:
        with np.errstate(over="ignore"):
            e = np.exp(t)
    else:
        e = xp.exp(t)
    return x / (1 + e)


P_GELU_TANH = elementwise(
    "gelu_tanh", _rounded_once(_gelu_tanh),
    # d/dx x * s(2u) = s(2u) * (1 + x * s(-2u) * 2u'), s = sigmoid: no term cancels in either
    # tail (1 - s(2u) would for x > 0, in the second derivative). Where |x| >= 10 the
    # derivative is the step (x > 0) to every float's precision, and the cube and square of x
    # overflow float16 (inf times sigmoid's 0 would give NaN there); NaN stays NaN.
    d="where(abs(x) >= 10, x > 0, sigmoid(1.5957691216057308 * (x + 0.044715 * x * x * x)) * "
      "(1 + x * sigmoid(-1.5957691216057308 * (x + 0.044715 * x * x * x)) * 1.5957691216057308 "
      "* (1 + 0.134145 * x * x)))", half_in_float32=True)
P_SOFTPLUS = elementwise(
    "softplus", lambda xp, x: xp.logaddexp(0, x if (d := x.dtype) is _F32 or d is _F64 else _fp(x)),
    d="sigmoid(x)", out_form=_softplus_out)
P_SILU = elementwise("silu", lambda xp, x: (x := _guard(x)) * xp.exp(-xp.logaddexp(0, -x)),
                     d="sigmoid(x) * (1 + x * (1 - sigmoid(x)))", half_in_float32=True)
P_ERF = elementwise("erf", lambda xp, x: erf_for(xp)(x if (d := x.dtype) is _F32 or d is _F64 else _fp(x)),
                    d="1.1283791670955126 * exp(-x * x)", half_in_float32=True)
P_ERFC = elementwise("erfc", lambda xp, x: erfc_for(xp)(x if (d := x.dtype) is _F32 or d is _F64 else _fp(x)),
                     d="-1.1283791670955126 * exp(-x * x)", half_in_float32=True)
# Rounding: piecewise constant, so the derivative is 0 everywhere (PyTorch's choice, not "no
# gradient": a loss through floor(x) is connected to x, its gradient is zeros). Tests sample
# away from the jumps (integers; half-integers for round).
_STEPS = Domain(-1.9, 1.9, avoid=(-1.0, 0.0, 1.0))
P_FLOOR = elementwise("floor", lambda xp, x: xp.floor(x), d="0", domain=_STEPS, out_form=np.floor,
                      cheap=True, masks=True)
P_CEIL = elementwise("ceil", lambda xp, x: xp.ceil(x), d="0", domain=_STEPS, out_form=np.ceil,
                     cheap=True, masks=True)
def _round_impl(xp: Any, x: Any) -> Any:
    # integers are their own rounding: their dtype kept, as np.round and floor/ceil/trunc do
    # (rint would return floats)
    return xp.rint(x) if x.dtype.kind in "fc" else x.copy()


def _round_out(x: Any, out: Any) -> Any:
    return np.rint(x, out=out) if x.dtype.kind in "fc" else np.copyto(out, x)


P_ROUND = elementwise("round", _round_impl, d="0", out_form=_round_out, cheap=True,
                      masks=True, domain=Domain(-1.9, 1.9, avoid=(-1.5, -0.5, 0.5, 1.5)))
P_TRUNC = elementwise("trunc", lambda xp, x: xp.trunc(x), d="0", domain=_STEPS, out_form=np.trunc,
                      cheap=True, masks=True)
# arctan2(a, b) is the angle of the point (b, a); a jump across a == 0 for b < 0 (tests keep a
# away from 0). Both partials are 0 at the origin (as abs'(0) = 0), never 0/0.
P_ARCTAN2 = elementwise("arctan2", lambda xp, a, b: xp.arctan2(*_fp2(a, b)),
                        d=("where((a == 0) & (b == 0), 0, b / (a * a + b * b))",
                           "where((a == 0) & (b == 0), 0, -a / (a * a + b * b))"),
                        domain=(Domain(-2, 2, avoid=(0.0,), margin=0.3), Domain()),
                        out_form=np.arctan2, masks=True)
P_HYPOT = elementwise("hypot", lambda xp, a, b: xp.hypot(*_fp2(a, b)),
                      d=("where(y == 0, 0, a / y)", "where(y == 0, 0, b / y)"),
                      domain=(Domain(-2, 2, avoid=(0.0,)), Domain()),  # tests: off the origin
                      out_form=np.hypot, masks=True)
# Floor division and remainder, Python's // and % (NumPy's floor_divide and remainder: the
# remainder takes the divisor's sign). floor_divide is piecewise constant, so its gradient is 0
# (as floor's). remainder(a, b) = a - b * floor(a / b): d/da = 1 and d/db = -floor(a / b)
# (PyTorch's rule), exact (its rule binds floor_divide; no derivative expression has floor).
# Tests keep a / b away from the integers, where both jump: floor_divide's domain keeps a off
# the integers and b within 2% above 1; remainder's examples build a from b.
def _float_divmod(xp: Any, a: Any, b: Any) -> tuple[Any, Any]:
    """NumPy's float ``divmod`` (through ``fmod``, as Python's) from a device's ufuncs, whose
    own ``floor_divide`` and ``remainder`` are ``floor(a / b)``: the two differ where ``a / b``
    rounds onto an integer (``1.0 // 0.1`` is 9 with ``fmod``, 10 with ``floor``) and for an
    infinite ``b``. float16 is divided in float32 and rounded once, as NumPy does."""
    half = a.dtype == np.float16
    if half:
        a, b = a.astype(np.float32), b.astype(np.float32)
    zero = a.dtype.type(0)
    q = a / b
    mod = xp.fmod(a, b)
    div = (a - mod) / b
    adj = (mod != 0) & ((b < 0) != (mod < 0))  # the remainder takes the divisor's sign
    mod = xp.where(adj, mod + b, mod)
    div = xp.where(adj, div - 1, div)
    mod = xp.where(mod == 0, xp.copysign(zero, b), mod)
    fl = xp.floor(div)
    fl = xp.where(div - fl > 0.5, fl + 1, fl)
    fl = xp.where(div == 0, xp.copysign(zero, q), fl)
    fl = xp.where(b == 0, q, fl)  # (and the remainder is fmod's NaN)
    if half:
        return fl.astype(np.float16), mod.astype(np.float16)
    return fl, mod


def _floor_divide_impl(xp: Any, a: Any, b: Any) -> Any:
    if xp is np or a.dtype.kind != "f":
        return xp.floor_divide(a, b)
    with np.errstate(all="ignore"):
        return _float_divmod(xp, a, b)[0]


def _remainder_impl(xp: Any, a: Any, b: Any) -> Any:
    if xp is np or a.dtype.kind != "f":
        return xp.remainder(a, b)
    with np.errstate(all="ignore"):
        return _float_divmod(xp, a, b)[1]


P_FLOOR_DIVIDE = elementwise("floor_divide", _floor_divide_impl, d=("0", "0"),
                             domain=(_STEPS, Domain(1.0, 1.02)), out_form=np.floor_divide,
                             masks=True)


def _remainder_rule(m: OnTensors, rec: Record, g: Any) -> tuple:
    gb = None
    if rec.needs[1]:
        gb = -(g * m.apply(P_FLOOR_DIVIDE, m.val(rec.inputs[0]), m.val(rec.inputs[1])))
    return (g if rec.needs[0] else None), gb


def _remainder_jvp(m: OnTensors, primals: tuple, tangents: tuple, out: Tensor, **p: Any) -> Any:
    a, b = primals
    ta, tb = tangents
    t = ta
    if tb is not None:  # safe_mul: 0 where floor(a / b) is 0 even for an infinite tangent
        term = -m.apply(P_SAFE_MUL, m.apply(P_FLOOR_DIVIDE, a, b), tb)
        t = term if t is None else t + term
    if t.shape != out.shape:  # an operand was broadcast
        t = m.apply(REGISTRY["broadcast_to"], t, shape=out.shape)
    return t


def _remainder_examples(rng: Any) -> list:
    def operands(shape_a: tuple, shape_b: tuple) -> tuple:
        # a / b = q + f with an integer q and f in [0.15, 0.85]: away from the jumps
        b = rng.uniform(0.5, 2.0, shape_b) * rng.choice([-1.0, 1.0], shape_b)
        shape = np.broadcast_shapes(shape_a, shape_b)
        a = (rng.integers(-3, 3, shape) + rng.uniform(0.15, 0.85, shape)) * b
        return a, b

    return [(remainder, operands((3, 4), (3, 4)), {}),
            (remainder, operands((2, 3), (3,)), {}),
            (remainder, operands((2, 3), ()), {}),
            (remainder, operands((), ()), {}),
            # a broadcast: a / b in [2.27, 2.67] for every b
            (remainder, (rng.uniform(0.75, 0.8, (3,)), rng.uniform(0.3, 0.33, (2, 3))), {})]


P_REMAINDER = primitive("remainder", _remainder_impl, rule=_remainder_rule,
                        jvp=_remainder_jvp, masks=True, examples=_remainder_examples,
                        batch=_elementwise_batch("remainder"))
P_MAXIMUM = elementwise("maximum", lambda xp, a, b: xp.maximum(a, b),
                        d=("where(a > b, 1, where(a == b, 0.5, 0))",
                           "where(b > a, 1, where(a == b, 0.5, 0))"), out_form=_maximum_out, cheap=True, masks=True)
P_MINIMUM = elementwise("minimum", lambda xp, a, b: xp.minimum(a, b),
                        d=("where(a < b, 1, where(a == b, 0.5, 0))",
                           "where(b < a, 1, where(a == b, 0.5, 0))"), out_form=_minimum_out, cheap=True, masks=True)
P_CLIP = elementwise("clip", lambda xp, x, lo, hi: xp.minimum(xp.maximum(x, lo), hi),
                     d=("(x >= lo) & (x <= hi)", "(x < lo) & (lo <= hi)", "(x > hi) | (lo > hi)"),
                     domain=(Domain(-2, 2, avoid=(-1.0, 1.0)), Domain(-1, -1), Domain(1, 1)), masks=True)
P_WHERE = elementwise("where", lambda xp, c, a, b: select_where(c, a, b) if xp is np else xp.where(c, a, b),
                      d=("0", "where(c, 1, 0)", "where(c, 0, 1)"),
                      domain=(Domain(kind="bool"), Domain(), Domain()), masks=True)
def _safe_mul_impl(xp: Any, a: Any, b: Any) -> Any:
    # b is replaced by 1 where a is 0 before the product, so 0 * inf never runs (no NaN and no
    # RuntimeWarning); the where then puts the 0 there
    zero = a == 0
    return xp.where(zero, 0, a * xp.where(zero, b.dtype.type(1), b))  # (a typed 1: a bool b
    # stays bool, so the product keeps a * b's dtype)


P_SAFE_MUL = elementwise("safe_mul", _safe_mul_impl, d=("b", "a"),
                         safe=True, masks=True)

# comparisons and logic: no gradient, bool results; they batch as the elementwise ops do
P_LESS = primitive("less", lambda xp, a, b: a < b, nondiff=True,
                   batch=_elementwise_batch("less"))
P_LESS_EQUAL = primitive("less_equal", lambda xp, a, b: a <= b, nondiff=True,
                         batch=_elementwise_batch("less_equal"))
P_GREATER = primitive("greater", lambda xp, a, b: a > b, nondiff=True,
                      batch=_elementwise_batch("greater"))
P_GREATER_EQUAL = primitive("greater_equal", lambda xp, a, b: a >= b, nondiff=True,
                            batch=_elementwise_batch("greater_equal"))
P_EQUAL = primitive("equal", lambda xp, a, b: a == b, nondiff=True,
                    batch=_elementwise_batch("equal"))
P_NOT_EQUAL = primitive("not_equal", lambda xp, a, b: a != b, nondiff=True,
                        batch=_elementwise_batch("not_equal"))
P_LOGICAL_AND = primitive("logical_and", lambda xp, a, b: xp.logical_and(a, b), nondiff=True,
                          batch=_elementwise_batch("logical_and"))
P_LOGICAL_OR = primitive("logical_or", lambda xp, a, b: xp.logical_or(a, b), nondiff=True,
                         batch=_elementwise_batch("logical_or"))
P_LOGICAL_NOT = primitive("logical_not", lambda xp, x: xp.logical_not(x), nondiff=True,
                          batch=_elementwise_batch("logical_not"))
P_BITWISE_AND = primitive("bitwise_and", lambda xp, a, b: xp.bitwise_and(a, b), nondiff=True,
                          batch=_elementwise_batch("bitwise_and"))
P_BITWISE_OR = primitive("bitwise_or", lambda xp, a, b: xp.bitwise_or(a, b), nondiff=True,
                         batch=_elementwise_batch("bitwise_or"))
P_BITWISE_XOR = primitive("bitwise_xor", lambda xp, a, b: xp.bitwise_xor(a, b), nondiff=True,
                          batch=_elementwise_batch("bitwise_xor"))
P_BITWISE_NOT = primitive("bitwise_not", lambda xp, x: xp.invert(x), nondiff=True,
                          batch=_elementwise_batch("bitwise_not"))
P_ISFINITE = primitive("isfinite", lambda xp, x: xp.isfinite(x), nondiff=True,
                       batch=_elementwise_batch("isfinite"))
P_ISNAN = primitive("isnan", lambda xp, x: xp.isnan(x), nondiff=True,
                    batch=_elementwise_batch("isnan"))
P_ISINF = primitive("isinf", lambda xp, x: xp.isinf(x), nondiff=True,
                    batch=_elementwise_batch("isinf"))


def add(a: Any, b: Any) -> Tensor:
    """``a + b`` with NumPy broadcasting; each gradient is summed back to its operand's shape.

    Example:
        >>> import gradtape as gt
        >>> gt.add(gt.tensor([1.0, 2.0]), 1).numpy()
        array([2., 3.], dtype=float32)
    """
    return P_ADD.call2(a, b)


def sub(a: Any, b: Any) -> Tensor:
    """``a - b`` (broadcasting). Example: ``gt.sub(x, 1.0)``."""
    return P_SUB.call2(a, b)


def mul(a: Any, b: Any) -> Tensor:
    """``a * b`` (broadcasting). Example: ``gt.mul(x, w)``."""
    return P_MUL.call2(a, b)


def div(a: Any, b: Any) -> Tensor:
    """``a / b`` (broadcasting); true division, so integers give float32 (PyTorch and JAX),
    never float64. Example: ``gt.div(x, 2.0)``."""
    a, b = pair(a, b)
    if a.data.dtype.kind in "biu" and b.data.dtype.kind in "biu":
        a = bind(REGISTRY["astype"], a, dtype=np.dtype(np.float32))
        b = bind(REGISTRY["astype"], b, dtype=np.dtype(np.float32))
    return P_DIV.call2(a, b)


def neg(x: Any) -> Tensor:
    """``-x``; a bool tensor raises ``TypeError`` (``~x`` negates it). Example: ``gt.neg(x)``."""
    x = one(x)
    if x.dtype.kind == "b":
        raise TypeError("neg: a bool tensor cannot be negated with -x; use ~x or "
                        "gt.logical_not(x)")
    return bind(P_NEG, x)


def pow(a: Any, b: Any) -> Tensor:  # noqa: A001 - NumPy's name
    """``a ** b`` (broadcasting). ``d/da a**0 = 0``; ``d/db`` is 0 where ``a == 0``.

    Example:
        >>> import gradtape as gt
        >>> gt.pow(gt.tensor([2.0]), 3).numpy()
        array([8.], dtype=float32)
    """
    return bind(P_POW, *pair(a, b))


def _unary(prim: Primitive, doc: str) -> Callable[[TensorLike], Tensor]:
    op = prim.call1  # the primitive's one-input dispatch is the public function itself
    op.__module__ = __name__
    op.__name__ = op.__qualname__ = prim.name
    op.__doc__ = (f"{doc}, elementwise; same shape as ``x``.\n\n    Example:\n"
                  f"        >>> import gradtape as gt\n"
                  f"        >>> gt.{prim.name}(gt.tensor([0.5])).shape\n        (1,)\n")
    return op


exp = _unary(P_EXP, "e to the power ``x``")
log = _unary(P_LOG, "Natural logarithm")
log1p = _unary(P_LOG1P, "``log(1 + x)``, accurate near 0")
expm1 = _unary(P_EXPM1, "``exp(x) - 1``, accurate near 0")
sqrt = _unary(P_SQRT, "Square root (``sqrt'(0) = +inf``)")
rsqrt = _unary(P_RSQRT, "``1 / sqrt(x)``")
square = _unary(P_SQUARE, "``x * x``")
abs = _unary(P_ABS, "Absolute value (``abs'(0) = 0``)")  # noqa: A001 - NumPy's name
sign = _unary(P_SIGN, "Sign, -1/0/1; its gradient is 0")
sin = _unary(P_SIN, "Sine")
cos = _unary(P_COS, "Cosine")
tan = _unary(P_TAN, "Tangent")
tanh = _unary(P_TANH, "Hyperbolic tangent")
sinh = _unary(P_SINH, "Hyperbolic sine")
cosh = _unary(P_COSH, "Hyperbolic cosine")
arcsin = _unary(P_ARCSIN, "Inverse sine")
arccos = _unary(P_ARCCOS, "Inverse cosine")
arctan = _unary(P_ARCTAN, "Inverse tangent")
sigmoid = _unary(P_SIGMOID, "Logistic function ``1 / (1 + exp(-x))``, overflow-free")
relu = _unary(P_RELU, "``max(x, 0)`` (``relu'(0) = 0``)")
softplus = _unary(P_SOFTPLUS, "``log(1 + exp(x))``, overflow-free")
silu = _unary(P_SILU, "``x * sigmoid(x)`` (swish)")
erf = _unary(P_ERF, "Error function")
erfc = _unary(P_ERFC, "Complementary error function ``1 - erf(x)``, accurate where erf rounds to 1")
floor = _unary(P_FLOOR, "Largest integer <= ``x`` (as floats); its gradient is 0")
ceil = _unary(P_CEIL, "Smallest integer >= ``x`` (as floats); its gradient is 0")
round = _unary(P_ROUND, "Nearest integer, halves to even as NumPy (``round(2.5) = 2``); its gradient is 0")  # noqa: A001
trunc = _unary(P_TRUNC, "Integer part, rounded toward 0; its gradient is 0")


def leaky_relu(x: Any, negative_slope: float = 0.01) -> Tensor:
    """``x`` where ``x > 0``, else ``negative_slope * x``.

    Example:
        >>> import gradtape as gt
        >>> gt.leaky_relu(gt.tensor([-1.0, 2.0]), 0.1).numpy()
        array([-0.1,  2. ], dtype=float32)
    """
    return bind(P_LEAKY_RELU, one(x), negative_slope=float(as_real(negative_slope, "leaky_relu", "negative_slope")))


def elu(x: Any, alpha: float = 1.0) -> Tensor:
    """``x`` where ``x > 0``, else ``alpha * (exp(x) - 1)``.

    Example:
        >>> import gradtape as gt
        >>> gt.elu(gt.tensor([1.0])).numpy()
        array([1.], dtype=float32)
    """
    return bind(P_ELU, one(x), alpha=float(as_real(alpha, "elu", "alpha")))


def gelu(x: Any, approximate: str = "none") -> Tensor:
    """Gaussian error linear unit: exact (erf) by default, ``approximate="tanh"`` for the tanh
    approximation.

    Example:
        >>> import gradtape as gt
        >>> print(f"{float(gt.gelu(gt.tensor(1.0))):.4f}")  # (this module's round is gt.round)
        0.8413
    """
    if approximate == "none":
        return bind(P_GELU, one(x))
    if approximate == "tanh":
        return bind(P_GELU_TANH, one(x))
    raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")


def maximum(a: Any, b: Any) -> Tensor:
    """Elementwise maximum; ties split the gradient 0.5/0.5 (as PyTorch and JAX).

    Example:
        >>> import gradtape as gt
        >>> gt.maximum(gt.tensor([1.0, 3.0]), 2.0).numpy()
        array([2., 3.], dtype=float32)
    """
    return bind(P_MAXIMUM, *pair(a, b))


def arctan2(y: Any, x: Any) -> Tensor:
    """The angle of the point ``(x, y)`` in radians, in ``[-pi, pi]``, elementwise with
    broadcasting, as ``np.arctan2(y, x)``. The gradient is ``(x, -y) / (x**2 + y**2)`` for
    ``(y, x)``, and 0 at the origin.

    Shapes: ``y`` and ``x`` broadcast; the result has the broadcast shape.

    Example:
        >>> import gradtape as gt
        >>> gt.arctan2(gt.tensor([1.0, -1.0]), gt.tensor([0.0, -1.0])).numpy()
        array([ 1.5707964, -2.3561945], dtype=float32)
    """
    return bind(P_ARCTAN2, *pair(y, x))



def atan2(y: Any, x: Any) -> Tensor:
    """PyTorch's name for :func:`arctan2`: the angle of the point ``(x, y)`` in ``[-pi, pi]``.

    Example:
        >>> import gradtape as gt
        >>> round(float(gt.atan2(gt.tensor(1.0), gt.tensor(1.0))), 4)
        0.7854
    """
    return arctan2(y, x)

def hypot(a: Any, b: Any) -> Tensor:
    """``sqrt(a**2 + b**2)`` elementwise with broadcasting, without overflow or underflow in the
    squares, as ``np.hypot``. The gradient is ``(a, b) / hypot(a, b)``, and 0 at the origin.

    Shapes: ``a`` and ``b`` broadcast; the result has the broadcast shape.

    Example:
        >>> import gradtape as gt
        >>> gt.hypot(gt.tensor([3.0, 3e30]), gt.tensor([4.0, 4e30])).numpy()
        array([5.e+00, 5.e+30], dtype=float32)
    """
    return bind(P_HYPOT, *pair(a, b))


def floor_divide(a: Any, b: Any) -> Tensor:
    """``a // b``: ``floor(a / b)`` elementwise with broadcasting, as Python's ``//`` and
    ``np.floor_divide`` (integers stay integers; an integer divided by 0 gives 0, as NumPy).
    Piecewise constant: its gradient is 0, as ``floor``'s.

    Shapes: ``a`` and ``b`` broadcast; the result has the broadcast shape.

    Example:
        >>> import gradtape as gt
        >>> gt.floor_divide(gt.tensor([7.0, -7.0]), 2.0).numpy()
        array([ 3., -4.], dtype=float32)
        >>> (gt.tensor([7, -7]) // 2).numpy()
        array([ 3, -4])
    """
    return P_FLOOR_DIVIDE.call2(a, b)


def remainder(a: Any, b: Any) -> Tensor:
    """``a % b``: ``a - b * floor(a / b)`` elementwise with broadcasting, as Python's ``%`` and
    ``np.remainder``: the result has the sign of ``b`` (``torch.remainder``; ``fmod`` would take
    ``a``'s). Gradients: 1 for ``a``, ``-floor(a / b)`` for ``b`` (as PyTorch).

    Shapes: ``a`` and ``b`` broadcast; the result has the broadcast shape.

    Example:
        >>> import gradtape as gt
        >>> gt.remainder(gt.tensor([7.0, -7.0]), 3.0).numpy()
        array([1., 2.], dtype=float32)
        >>> (gt.tensor([7, -7]) % -3).numpy()
        array([-2, -1])
    """
    return P_REMAINDER.call2(a, b)


def minimum(a: Any, b: Any) -> Tensor:
    """Elementwise minimum; ties split the gradient 0.5/0.5. Example: ``gt.minimum(x, 0.0)``."""
    return bind(P_MINIMUM, *pair(a, b))


def clip(x: Any, lo: Any = None, hi: Any = None) -> Tensor:
    """Clamp ``x`` to ``[lo, hi]`` (None: unbounded). The gradient passes where
    ``lo <= x <= hi`` (bounds inclusive), else to the bound taken; where ``lo > hi`` the
    result is ``hi`` (NumPy's and PyTorch's rule), and so is the gradient's path.

    Example:
        >>> import gradtape as gt
        >>> gt.clip(gt.tensor([-2.0, 0.5, 2.0]), -1, 1).numpy()
        array([-1. ,  0.5,  1. ], dtype=float32)
    """
    x = one(x)
    if lo is None and hi is None:
        raise ValueError("clip: at least one of lo and hi must be given")
    # the given bound first (it may promote x, an int tensor by a float bound), then the
    # missing one in x's dtype: infinite, or for integers and bools the dtype's extremes; a
    # Python int past an integer dtype's range clips nothing on its side (or everything on
    # the other): held to the range, as NumPy 2 compares such ints by value
    if x.dtype.kind in "iu":
        info = np.iinfo(x.dtype)
        if (type(lo) is int and lo > info.max) or (type(hi) is int and hi < info.min):
            raise ValueError(f"clip: bounds lo={lo}, hi={hi} put every value outside x's dtype "
                             f"{x.dtype} (range [{info.min}, {info.max}])")
        lo = max(lo, int(info.min)) if type(lo) is int else lo
        hi = min(hi, int(info.max)) if type(hi) is int else hi
    if lo is not None and hi is not None:
        x, lo_t = pair(x, lo)
        x, hi_t = pair(x, hi)
        xd = x.data.dtype  # (dtypes compared by identity first: clip is a per-op cost)
        if (lo_t.data.dtype is not xd or hi_t.data.dtype is not xd) and not (
                xd == lo_t.data.dtype == hi_t.data.dtype):
            x, lo_t, hi_t = _float_joint(x, lo_t, hi_t)
        return bind(P_CLIP, x, lo_t, hi_t)
    x, b = pair(x, hi if lo is None else lo)
    dt = x.data.dtype
    if b.data.dtype is not dt and b.data.dtype != dt:
        x, b = _float_joint(x, b)
        # the missing bound in the result's dtype (an int8 x with an int16 bound of 300:
        # int16's extremes, not int8's, which would put hi under lo)
        dt = np.result_type(x.data.dtype, b.data.dtype)
    sign = 1 if hi is None else -1
    missing = pair(x, _unbounded(dt, sign))[1] if dt == x.data.dtype else \
        _wrap(x._backend.xp.asarray(_unbounded(dt, sign), dtype=dt), x._backend)
    lo_t, hi_t = (b, missing) if hi is None else (missing, b)
    return bind(P_CLIP, x, lo_t, hi_t)


def _float_joint(*ts: Tensor) -> list[Tensor]:
    """``clip``'s operands where an int or bool one meets a float one: all in the floats'
    dtype (as in every binary op), not NumPy's three-way promotion (int32 with float16 gave
    float64); unrecorded: integers carry no gradient."""
    kinds = {t.dtype.kind for t in ts}
    if not (kinds & set("fc") and kinds - set("fc")):
        return list(ts)
    dt = np.result_type(*[t.dtype for t in ts if t.dtype.kind in "fc"])
    return [t if t.dtype.kind in "fc" else _wrap(t.data.astype(dt), t._backend) for t in ts]


def _unbounded(dt: np.dtype, sign: int) -> Any:
    """The bound of ``dt`` that clips nothing on side ``sign`` (-1: below, 1: above)."""
    if dt.kind == "b":
        return sign > 0
    if dt.kind in "iu":  # (a Python int in range keeps the tensor's dtype)
        info = np.iinfo(dt)
        return int(info.max if sign > 0 else info.min)
    return sign * float("inf")  # (Python numbers are weak: x keeps its dtype)


def where(condition: Any, a: Any, b: Any) -> Tensor:
    """Select ``a`` where ``condition`` holds, else ``b`` (broadcasting). The gradient goes to
    the selected branch only; a zero gradient never turns into NaN through the other branch.

    Example:
        >>> import gradtape as gt
        >>> x = gt.tensor([-1.0, 4.0])
        >>> gt.where(x > 0, gt.sqrt(gt.maximum(x, 0.0)), 0.0).numpy()
        array([0., 2.], dtype=float32)
    """
    c = one(condition)
    if c.dtype.kind != "b":
        c = bind(P_NOT_EQUAL, c, pair(c, 0)[1])
    a, b = pair(a, b)
    return bind(P_WHERE, c, a, b)


def safe_mul(a: Any, b: Any) -> Tensor:
    """``a * b`` that is 0 wherever ``a`` is 0, even if ``b`` is infinite or NaN.

    Example:
        >>> import gradtape as gt
        >>> gt.safe_mul(gt.tensor([0.0]), gt.tensor([float("inf")])).numpy()
        array([0.], dtype=float32)
    """
    return bind(P_SAFE_MUL, *pair(a, b))


# The comparisons, as ``x op n`` with ``n`` above (True) or below (False) every value of x's
# dtype: the constant result.
_BEYOND = {"less": lambda above: above, "less_equal": lambda above: above,
           "greater": lambda above: not above, "greater_equal": lambda above: not above,
           "equal": lambda above: False, "not_equal": lambda above: True}
_FLIP = {"less": "greater", "less_equal": "greater_equal", "greater": "less",
         "greater_equal": "less_equal", "equal": "equal", "not_equal": "not_equal"}


def _beyond(prim: Any, a: Any, b: Any) -> Tensor | None:
    """``a op b`` where one side is a Python int outside the other, an integer tensor's, dtype
    range (NumPy 2 compares such ints by value; a cast would overflow): the constant result,
    else None."""
    name = prim.name
    if name not in _BEYOND:
        return None
    if isinstance(a, Tensor) and type(b) is int:
        t, n = a, b
    elif isinstance(b, Tensor) and type(a) is int:
        t, n, name = b, a, _FLIP[name]
    else:
        return None
    if t.dtype.kind not in "iu":
        return None
    info = np.iinfo(t.dtype)
    if info.min <= n <= info.max:
        return None
    none = bind(P_NOT_EQUAL, t, t)  # all False (integers), in t's shape and backend
    return bind(P_LOGICAL_NOT, none) if _BEYOND[name](n > info.max) else none


def _compare(prim: Any, symbol: str) -> Any:
    def op(a: Any, b: Any) -> Tensor:
        if type(a) is int or type(b) is int:  # (the common operands skip the range check)
            out = _beyond(prim, a, b)
            if out is not None:
                return out
        return bind(prim, *pair(a, b))

    op.__name__ = op.__qualname__ = prim.name
    op.__doc__ = (f"``a {symbol} b`` elementwise; a bool tensor, not differentiable.\n\n"
                  f"    Example:\n        >>> import gradtape as gt\n"
                  f"        >>> gt.{prim.name}(gt.tensor([1.0]), 1.0).dtype\n        dtype('bool')\n")
    return op


less = _compare(P_LESS, "<")
less_equal = _compare(P_LESS_EQUAL, "<=")
greater = _compare(P_GREATER, ">")
greater_equal = _compare(P_GREATER_EQUAL, ">=")
equal = _compare(P_EQUAL, "==")
not_equal = _compare(P_NOT_EQUAL, "!=")
logical_and = _compare(P_LOGICAL_AND, "&")
logical_or = _compare(P_LOGICAL_OR, "|")
for _f, _word in ((logical_and, "and"), (logical_or, "or")):
    _f.__doc__ = (f"Elementwise logical {_word} of any dtypes (nonzero is true), as NumPy's "
                  f"``logical_{_word}``; a bool tensor, not differentiable. (The operator "
                  f"``{'&' if _word == 'and' else '|'}`` is this for bool tensors and bitwise for "
                  f"integer ones.)\n\n    Example:\n        >>> import gradtape as gt\n"
                  f"        >>> gt.logical_{_word}(gt.tensor([0.0, 2.0]), 1.0).numpy()\n"
                  f"        array([{'False' if _word == 'and' else ' True'},  True])\n")


def _integer_operand(t: Tensor, fname: str, arg: str, symbol: str) -> None:
    if t.dtype.kind not in "biu":
        raise TypeError(f"gt.{fname}: {arg} must be an integer or bool tensor ({symbol} is bitwise, "
                        f"as NumPy's), got dtype {t.dtype}; for conditions on floats combine "
                        "comparisons, ((x > 0) & (y < 1)), or use gt.logical_and / logical_or")


def _bitwise(prim: Any, symbol: str) -> Any:
    def op(a: Any, b: Any) -> Tensor:
        a, b = pair(a, b)
        _integer_operand(a, prim.name, "a", symbol)
        _integer_operand(b, prim.name, "b", symbol)
        return bind(prim, a, b)

    op.__name__ = op.__qualname__ = prim.name
    op.__doc__ = (f"``a {symbol} b`` elementwise, bitwise on integer tensors and logical on bool "
                  "ones, as NumPy's; not differentiable. A float operand raises ``TypeError``.\n\n"
                  "    Shapes: broadcast, as NumPy's.\n\n"
                  f"    Example:\n        >>> import gradtape as gt\n"
                  f"        >>> gt.{prim.name}(gt.tensor([1, 2, 3, 6]), 1).numpy().tolist()\n"
                  f"        {[int(getattr(np, prim.name)(v, 1)) for v in (1, 2, 3, 6)]}\n")
    return op


bitwise_and = _bitwise(P_BITWISE_AND, "&")
bitwise_or = _bitwise(P_BITWISE_OR, "|")
bitwise_xor = _bitwise(P_BITWISE_XOR, "^")


def bitwise_not(x: Any) -> Tensor:
    """``~x``: bitwise not of an integer tensor (``~1 == -2``), logical not of a bool one, as
    NumPy's ``invert``; not differentiable. A float tensor raises ``TypeError``.

    Shapes: ``x``'s.

    Example:
        >>> import gradtape as gt
        >>> gt.bitwise_not(gt.tensor([1, 2])).numpy().tolist(), gt.bitwise_not(gt.tensor([True])).numpy().tolist()
        ([-2, -3], [False])
    """
    t = one(x)
    _integer_operand(t, "bitwise_not", "x", "~")
    return bind(P_BITWISE_NOT, t)


def logical_not(x: Any) -> Tensor:
    """``~x`` for bool tensors; not differentiable. Example: ``gt.logical_not(x > 0)``."""
    return bind(P_LOGICAL_NOT, one(x))


def isfinite(x: Any) -> Tensor:
    """Where ``x`` is finite (not inf, -inf or NaN): a bool tensor of ``x``'s shape, as
    ``np.isfinite`` (TF's ``tf.math.is_finite``); not differentiable. Integer and bool
    inputs are finite everywhere.

    Example:
        >>> import gradtape as gt
        >>> gt.isfinite(gt.tensor([1.0, float("inf"), float("nan")])).numpy()
        array([ True, False, False])
    """
    return bind(P_ISFINITE, one(x))


def isnan(x: Any) -> Tensor:
    """Where ``x`` is NaN: a bool tensor of ``x``'s shape, as ``np.isnan``; not
    differentiable.

    Example:
        >>> import gradtape as gt
        >>> gt.isnan(gt.tensor([1.0, float("nan")])).numpy()
        array([False,  True])
    """
    return bind(P_ISNAN, one(x))


def isinf(x: Any) -> Tensor:
    """Where ``x`` is inf or -inf: a bool tensor of ``x``'s shape, as ``np.isinf``; not
    differentiable.

    Example:
        >>> import gradtape as gt
        >>> gt.isinf(gt.tensor([-float("inf"), 0.0, float("nan")])).numpy()
        array([ True, False, False])
    """
    return bind(P_ISINF, one(x))
