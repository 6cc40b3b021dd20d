"""More dtype rules a PyTorch or JAX user expects (issue 11, item 3, continued):

* float functions (``sqrt``, ``exp``, ``tanh`` ...) of integer and bool tensors give float32,
  computed in float32 (NumPy would give float64, or float16 for bool and int8);
* a Python complex is weak like a Python float (``float32_tensor * 1j`` is complex64), and
  ``gt.tensor`` of Python complex numbers is complex64;
* a list next to a tensor is converted as ``gt.tensor`` converts it, then the two-tensor rule
  applies (``int_tensor + [0.5, 1.5]`` is float32);
* ``//`` and ``%`` (``gt.floor_divide``, ``gt.remainder``) with PyTorch's gradients.
"""

from __future__ import annotations

import numpy as np
import pytest

import gradtape as gt
from gradtape.testing import check_grads

F32, F64 = np.dtype(np.float32), np.dtype(np.float64)
C64, C128 = np.dtype(np.complex64), np.dtype(np.complex128)


def _t(values, dtype):
    return gt.tensor(np.array(values, dtype=dtype))


# --------------------------------------------------------------------------- float functions
UNARY_FLOAT = {  # name -> function; inputs are integers in [-1, 1] (or [1, 3] for the logs)
    "exp": gt.exp, "expm1": gt.expm1, "sin": gt.sin, "cos": gt.cos, "tan": gt.tan,
    "tanh": gt.tanh, "sinh": gt.sinh, "cosh": gt.cosh, "arcsin": gt.arcsin, "arccos": gt.arccos,
    "arctan": gt.arctan, "sigmoid": gt.sigmoid, "softplus": gt.softplus, "silu": gt.silu,
    "gelu": gt.gelu, "gelu_tanh": lambda x: gt.gelu(x, approximate="tanh"), "elu": gt.elu,
    "leaky_relu": gt.leaky_relu, "erf": gt.erf, "erfc": gt.erfc,
}
POSITIVE_FLOAT = {"log": gt.log, "log1p": gt.log1p, "sqrt": gt.sqrt, "rsqrt": gt.rsqrt}
INT_DTYPES = [np.int64, np.int32, np.int16, np.int8, np.uint8, np.uint16]


def _values(name: str, dtype) -> np.ndarray:
    if name in POSITIVE_FLOAT:
        return np.array([1, 2, 3], dtype)
    if np.dtype(dtype).kind == "u":
        return np.array([0, 1, 1], dtype)
    return np.array([-1, 0, 1], dtype)


@pytest.mark.parametrize("dtype", INT_DTYPES)
@pytest.mark.parametrize("name", sorted({**UNARY_FLOAT, **POSITIVE_FLOAT}))
def test_float_function_of_an_integer_tensor_is_float32(name, dtype, backend):
    fn = {**UNARY_FLOAT, **POSITIVE_FLOAT}[name]
    x = _values(name, dtype)
    out = fn(gt.tensor(x))
    assert out.dtype == F32, (name, dtype, out.dtype)
    # computed in float32: the same values as the function of the float32 tensor
    np.testing.assert_array_equal(out.numpy(), fn(gt.tensor(x.astype(np.float32))).numpy())


@pytest.mark.parametrize("name", sorted(UNARY_FLOAT))
def test_float_function_of_a_bool_tensor_is_float32(name, backend):
    fn = UNARY_FLOAT[name]
    out = fn(gt.tensor([True, False]))
    assert out.dtype == F32, (name, out.dtype)
    np.testing.assert_array_equal(out.numpy(), fn(gt.tensor([1.0, 0.0])).numpy())


@pytest.mark.parametrize("fn", [gt.arctan2, gt.hypot], ids=["arctan2", "hypot"])
def test_binary_float_functions_of_integer_tensors_are_float32(fn, backend):
    a, b = np.array([3, -1, 0]), np.array([4, 2, 5])
    out = fn(gt.tensor(a), gt.tensor(b))
    assert out.dtype == F32
    np.testing.assert_array_equal(out.numpy(), fn(gt.tensor(a.astype(np.float32)),
                                                  gt.tensor(b.astype(np.float32))).numpy())
    assert fn(gt.tensor(a), 2.0).dtype == F32
    assert fn(gt.tensor(a), gt.tensor(b.astype(np.float64))).dtype == F64


def test_float_inputs_keep_their_dtype():
    for dtype in (np.float16, np.float32, np.float64):
        x = gt.tensor(np.array([0.5, 1.5], dtype))
        for fn in (gt.exp, gt.sqrt, gt.tanh, gt.sigmoid, gt.gelu, gt.erf):
            assert fn(x).dtype == dtype, (fn.__name__, dtype)
    z = gt.tensor(np.array([1 + 1j], np.complex64))
    assert gt.exp(z).dtype == C64 and gt.sqrt(z).dtype == C64


def test_integral_functions_keep_integers():
    i = gt.tensor([-3, 0, 2])
    for out in (gt.abs(i), -i, gt.square(i), gt.sign(i), gt.relu(i), gt.floor(i), gt.ceil(i),
                i // 2, i % 2, i ** 2):
        assert out.dtype == np.int64, out


def test_large_integer_input_takes_the_same_float32_path():
    """Arrays above the threading threshold: the threaded forward gives what the plain call
    gives (float32 computed in float32, not a float64 result rounded)."""
    x = (np.arange(300_000) % 2001 - 1000).astype(np.int64)
    small = x[:2001]
    for fn in (gt.exp, gt.sin, gt.tanh, gt.sqrt, gt.log1p):
        with np.errstate(all="ignore"):
            big = fn(gt.tensor(x)).numpy()
            ref = fn(gt.tensor(small)).numpy()
        assert big.dtype == np.float32
        np.testing.assert_array_equal(big[:2001], ref)


def test_integer_data_in_a_float32_model():
    w = gt.Variable([1.0, 2.0], name="w")
    counts = gt.tensor([4, 9])
    with gt.GradientTape() as tape:
        tape.watch(counts)  # integer tensors are skipped: they have no gradient
        loss = gt.sum(w * gt.sqrt(counts)) + gt.sum(gt.tanh(counts > 5))
    assert loss.dtype == F32
    gw = tape.gradient(loss, w)
    assert gw.dtype == F32
    np.testing.assert_array_equal(gw.numpy(), [2.0, 3.0])


def test_float_functions_of_integers_inside_vmap_jvp_and_function():
    i = gt.tensor([[1, 4], [9, 16]])
    out = gt.vmap(gt.sqrt)(i)
    assert out.dtype == F32
    np.testing.assert_array_equal(out.numpy(), [[1, 2], [3, 4]])
    x = gt.tensor([0.5, 1.0])
    y, t = gt.jvp(lambda x: x * gt.exp(i[0]), (x,), (gt.tensor([1.0, 1.0]),))
    assert y.dtype == t.dtype == F32
    np.testing.assert_allclose(t.numpy(), np.exp(np.float32([1, 4])))
    f = gt.function(lambda v: gt.sum(gt.exp(v)))
    for _ in range(2):  # the trace, then the replay
        r = f(gt.tensor([0, 1]))
        assert r.dtype == F32
        np.testing.assert_allclose(float(r), 1 + np.e, rtol=1e-6)


# --------------------------------------------------------------------------- complex scalars
COMPLEX = [  # (label, function, expected dtype)
    ("float32 * 1j", lambda: _t([1, 2], np.float32) * 1j, C64),
    ("1j * float32", lambda: 1j * _t([1, 2], np.float32), C64),
    ("float32 + (1+0j)", lambda: _t([1, 2], np.float32) + (1 + 0j), C64),
    ("float16 - 2j", lambda: _t([1, 2], np.float16) - 2j, C64),
    ("float64 * 1j", lambda: _t([1, 2], np.float64) * 1j, C128),
    ("int64 * 1j", lambda: _t([1, 2], np.int64) * 1j, C64),
    ("int8 + 1j", lambda: _t([1, 2], np.int8) + 1j, C64),
    ("bool * 1j", lambda: _t([True, False], np.bool_) * 1j, C64),
    ("complex64 * 2j", lambda: _t([1j], np.complex64) * 2j, C64),
    ("complex64 * 2.0", lambda: _t([1j], np.complex64) * 2.0, C64),
    ("complex128 * 2j", lambda: _t([1j], np.complex128) * 2j, C128),
    ("where(c, float32, 1j)", lambda: gt.where(gt.tensor([True]), _t([1], np.float32), 1j), C64),
    ("gt.tensor(1j)", lambda: gt.tensor(1j), C64),
    ("gt.tensor([1, 2j])", lambda: gt.tensor([1, 2j]), C64),
    ("gt.tensor(1j, complex128)", lambda: gt.tensor(1j, dtype="complex128"), C128),
    ("gt.full(1j)", lambda: gt.full((2,), 1j), C64),
]


@pytest.mark.parametrize("label, fn, dtype", COMPLEX, ids=[c[0] for c in COMPLEX])
def test_complex_python_scalars_are_weak(label, fn, dtype, backend):
    assert fn().dtype == dtype, label


def test_complex_scalar_values():
    np.testing.assert_array_equal((_t([1, 2], np.float32) * 1j).numpy(), np.complex64([1j, 2j]))
    np.testing.assert_array_equal((_t([1, 2], np.int64) - 1.5j).numpy(),
                                  np.complex64([1 - 1.5j, 2 - 1.5j]))
    x = _t([0.1], np.float64)
    assert (x * (1 + 1e-12j)).numpy()[0].imag == 0.1 * 1e-12  # complex128: no rounding to 64


# --------------------------------------------------------------------------- lists next to tensors
LISTS = [
    ("int64 + [0.5, 1.5]", lambda: _t([1, 2], np.int64) + [0.5, 1.5], F32),
    ("[0.5, 1.5] + int64", lambda: [0.5, 1.5] + _t([1, 2], np.int64), F32),
    ("int32 * [0.5, 1.5]", lambda: _t([1, 2], np.int32) * [0.5, 1.5], F32),
    ("bool * [0.5, 1.5]", lambda: _t([True, False], np.bool_) * [0.5, 1.5], F32),
    ("maximum(int64, [0.5, 3.0])", lambda: gt.maximum(_t([1, 2], np.int64), [0.5, 3.0]), F32),
    ("where(c, int64, [0.5, 0.5])",
     lambda: gt.where(_t([True, False], np.bool_), _t([1, 2], np.int64), [0.5, 0.5]), F32),
    ("float32 + [1, 2]", lambda: _t([1, 2], np.float32) + [1, 2], F32),
    ("float64 + [0.5, 1.5]", lambda: _t([1, 2], np.float64) + [0.5, 1.5], F64),
    ("float16 + [0.5, 1.5]", lambda: _t([1, 2], np.float16) + [0.5, 1.5], F32),
    ("int64 + [1, 2]", lambda: _t([1, 2], np.int64) + [1, 2], np.dtype(np.int64)),
]


@pytest.mark.parametrize("label, fn, dtype", LISTS, ids=[c[0] for c in LISTS])
def test_lists_next_to_tensors(label, fn, dtype, backend):
    assert fn().dtype == dtype, label


def test_numpy_array_operands():
    """A NumPy array is data as a list is (host arrays meet NumPy tensors only)."""
    with gt.use_backend("numpy"):
        assert (_t([1, 2], np.float32) * np.array([1, 2], np.int32)).dtype == F32
        assert (_t([1, 2], np.int64) + np.array([0.5, 1.5])).dtype == F64
        assert (_t([1, 2], np.int64) + np.float32([0.5, 1.5])).dtype == F32
        np.testing.assert_array_equal((np.array([7.0]) % gt.tensor([3.0])).numpy(), [1.0])
        out = np.array([7.0]) // gt.tensor([3.0])
        assert isinstance(out, gt.Tensor) and out.dtype == F64


def test_list_values_and_gradient():
    np.testing.assert_array_equal((_t([1, 2], np.int64) + [0.5, 1.5]).numpy(), np.float32([1.5, 3.5]))
    w = gt.Variable([1.0, 2.0])
    with gt.GradientTape() as tape:
        y = gt.sum(w * [3, 4])
    g = tape.gradient(y, w)
    assert y.dtype == g.dtype == F32
    np.testing.assert_array_equal(g.numpy(), [3.0, 4.0])


# --------------------------------------------------------------------------- // and %
def test_floor_divide_and_remainder_follow_python():
    a = np.array([7.0, -7.0, 7.5, -7.5, 0.0])
    for b in (2.0, -2.0, 3.0):
        np.testing.assert_array_equal((gt.tensor(a) // b).numpy(), np.float32(a // b))
        np.testing.assert_array_equal((gt.tensor(a) % b).numpy(), np.float32(a % b))
        np.testing.assert_array_equal(gt.floor_divide(a, b).numpy(), np.float32(a // b))
        np.testing.assert_array_equal(gt.remainder(a, b).numpy(), np.float32(a % b))
    ints = np.array([7, -7, 0, 5])
    for b in (2, -3):
        assert [int(v) for v in (gt.tensor(ints) // b).numpy()] == [int(v) // b for v in ints]
        assert [int(v) for v in (gt.tensor(ints) % b).numpy()] == [int(v) % b for v in ints]
    # reflected operators
    np.testing.assert_array_equal((7 // gt.tensor([2.0, -2.0])).numpy(), [3.0, -4.0])
    np.testing.assert_array_equal((7 % gt.tensor([3.0, -3.0])).numpy(), [1.0, -2.0])


def test_floor_divide_and_remainder_dtypes():
    i, f = gt.tensor([7, -7]), gt.tensor([7.0, -7.0])
    assert (i // 2).dtype == (i % 2).dtype == np.int64
    assert (i // 2.0).dtype == (i % 2.5).dtype == F32
    assert (f // 2).dtype == (f % 2).dtype == F32
    assert (gt.tensor(np.float64([7.0])) % 2.0).dtype == F64
    assert (gt.tensor(np.float16([7.0])) // 2).dtype == np.float16
    with np.errstate(divide="ignore"):
        np.testing.assert_array_equal((i // 0).numpy(), [0, 0])  # NumPy's integer rule
        np.testing.assert_array_equal((i % 0).numpy(), [0, 0])


def test_floor_divide_gradient_is_zero_and_connected():
    a = gt.Variable([7.3, -2.2])
    b = gt.Variable([2.0, 1.5])
    with gt.GradientTape() as tape:
        y = gt.sum(a // b)
    ga, gb = tape.gradient(y, [a, b])
    np.testing.assert_array_equal(ga.numpy(), [0.0, 0.0])
    np.testing.assert_array_equal(gb.numpy(), [0.0, 0.0])


def test_remainder_gradients_are_pytorchs():
    a_np = np.array([[7.3, -2.2, 0.4], [5.1, -6.7, 3.3]])
    b_np = np.array([2.0, 1.5, -0.7])
    a, b = gt.Variable(a_np, dtype="float64"), gt.Variable(b_np, dtype="float64")
    with gt.GradientTape() as tape:
        y = gt.sum(a % b)
    ga, gb = tape.gradient(y, [a, b])
    np.testing.assert_array_equal(ga.numpy(), np.ones_like(a_np))
    # b broadcast; the exact quotient's floor, as the forward uses it (7 / -0.7 rounds to
    # -10.0, but -0.7 is -0.69999... in binary: the quotient is below -10, its floor -11)
    np.testing.assert_array_equal(gb.numpy(), -np.floor_divide(a_np, b_np).sum(axis=0))
    with gt.GradientTape() as tape:  # reflected: 7 % b
        y = gt.sum(7.0 % b)
    np.testing.assert_array_equal(tape.gradient(y, b).numpy(), -np.floor_divide(7.0, b_np))
    assert np.floor_divide(7.0, -0.7) == -11.0
    np.testing.assert_allclose(np.remainder(7.0, b_np), 7.0 - b_np * np.floor_divide(7.0, b_np))


def test_remainder_and_floor_divide_check_grads_jvp_and_vmap():
    rng = np.random.default_rng(0)
    b = rng.uniform(0.5, 2.0, (2, 3)) * np.array([1.0, -1.0, 1.0])
    a = (rng.integers(-3, 3, (2, 3)) + rng.uniform(0.2, 0.8, (2, 3))) * b  # off the jumps
    check_grads(gt.remainder, (a, b))
    check_grads(gt.floor_divide, (a, b))
    check_grads(lambda x, y: x * (x % y), (a, b))
    ta, tb = rng.standard_normal((2, 3)), rng.standard_normal((2, 3))
    _, t = gt.jvp(gt.remainder, (gt.tensor(a), gt.tensor(b)), (gt.tensor(ta), gt.tensor(tb)))
    np.testing.assert_allclose(t.numpy(), ta - np.floor_divide(a, b) * tb, rtol=1e-12)
    out = gt.vmap(lambda x, y: x % y)(gt.tensor(a), gt.tensor(b))
    np.testing.assert_array_equal(out.numpy(), np.remainder(a, b))
    out = gt.vmap(lambda x: x // 0.75, in_axes=1)(gt.tensor(a))
    np.testing.assert_array_equal(out.numpy(), np.floor_divide(a, 0.75).T)


def test_integer_division_of_a_variable_reads_it():
    v = gt.Variable([7.0, 8.0], name="v")
    assert isinstance(v // 2, gt.Tensor) and isinstance(v % 3, gt.Tensor)
    np.testing.assert_array_equal((v // 2).numpy(), [3.0, 4.0])
    np.testing.assert_array_equal((v % 3).numpy(), [1.0, 2.0])


def test_integer_edge_cases_follow_numpy():
    # take reads bool indices as the integers 0 and 1 (as np.take), not as a mask
    np.testing.assert_array_equal(gt.take(gt.tensor([10.0, 20.0]), np.array([True, False])).numpy(),
                                  [20.0, 10.0])
    np.testing.assert_array_equal(gt.gather(gt.tensor([10.0, 20.0]), [True, True]).numpy(), [20.0, 20.0])
    # clip of integers with one bound: the other unbounded, the dtype kept or promoted by it
    x = gt.tensor(np.array([-2, 0, 3]))
    lo_only = gt.clip(x, 0, None)
    assert lo_only.dtype == np.int64 and lo_only.numpy().tolist() == [0, 0, 3]
    hi_float = gt.clip(x, None, 0.5)
    assert hi_float.dtype == (x + 0.5).dtype and hi_float.numpy().tolist() == [-2.0, 0.0, 0.5]
    u8 = gt.tensor(np.array([0, 7, 255], np.uint8))
    for lo, hi in ((-5, None), (None, 300), (-5, 300), (-5, 3)):
        got = gt.clip(u8, lo, hi)
        assert got.dtype == np.uint8, (lo, hi)
        assert got.numpy().tolist() == np.clip(u8.numpy(), lo, hi).tolist(), (lo, hi)
    with pytest.raises(ValueError, match=r"clip: bounds lo=300, hi=None put every value outside"):
        gt.clip(u8, 300, None)
    # round keeps an integer dtype (as np.round, floor, ceil, trunc)
    for dt in ("int64", "int32", "uint8"):
        r = gt.round(gt.tensor(np.array([1, 2, 3], dt)))
        assert r.dtype == np.dtype(dt) and r.numpy().tolist() == [1, 2, 3]
    # comparisons with Python ints outside the dtype's range compare by value (NumPy 2)
    u = gt.tensor(np.array([0, 255], np.uint8))
    assert (u < -1).numpy().tolist() == [False, False]
    assert gt.equal(u, 256).numpy().tolist() == [False, False]
    assert (gt.tensor(np.array([1], np.int32)) == 2**40).numpy().tolist() == [False]
    assert (u > -1).numpy().tolist() == [True, True]
    big = gt.tensor(np.array([0, 2**63 + 5, 2**64 - 1], np.uint64))
    assert (big > -1).numpy().tolist() == [True] * 3 and (big == -1).numpy().tolist() == [False] * 3
    assert (big < 2**64).numpy().tolist() == [True] * 3 and (-1 < big).numpy().tolist() == [True] * 3
    edge = gt.tensor(np.array([-2**63, 0, 2**63 - 1], np.int64))
    assert (edge > -2**63 - 1).numpy().tolist() == [True] * 3
    assert (edge < 2**63).numpy().tolist() == [True] * 3


def test_an_elementwise_op_numpy_has_no_loop_for_names_the_op_and_dtypes():
    # bool - bool raised NumPy's own TypeError, naming neither the op nor the operands
    a, b = gt.tensor([True, False]), gt.tensor([True, True])
    for f in (lambda: a - b, lambda: gt.sub(a, b)):
        with pytest.raises(TypeError, match=r"^sub: not defined for operands of dtype bool, bool"):
            f()
    with pytest.raises(TypeError, match=r"^mse: predictions must be a float tensor, got dtype bool"):
        gt.nn.mse(a, b)


@pytest.mark.parametrize("fusion", [False, True])
def test_a_mixed_float_op_differentiates_in_the_result_dtype(fusion):
    # d/dx (x / c) = 1 / c was computed in c's float16 (0.33325 for 1/3) and d/dx c ** x's
    # log(c) too; the narrower operand is now cast (recorded) to the result's dtype first
    old = gt.config.fusion
    gt.config.fusion = fusion
    try:
        x = gt.Variable(np.array([2.0]))
        c = gt.tensor(np.array([3.0], np.float16))
        with gt.GradientTape(persistent=True) as tape:
            tape.watch(c)
            y = x / c
            z = gt.arctan2(gt.astype(x, "float32"), gt.tensor(np.array([300.0], np.float16)))
        assert y.dtype == np.float64
        np.testing.assert_allclose(tape.gradient(y, x).numpy(), [1 / 3], rtol=1e-15)
        gc = tape.gradient(y, c)
        assert gc.dtype == np.float16  # a gradient has its source's dtype
        np.testing.assert_allclose(gc.numpy(), [-2 / 9], rtol=1e-3)
        np.testing.assert_allclose(tape.gradient(z, x).numpy(), [300 / 90004], rtol=1e-6)
        _, t = gt.jvp(lambda v: v / gt.tensor(np.array([3.0], np.float16)),
                      (gt.tensor(np.array([2.0])),), (gt.tensor(np.array([1.0])),))
        np.testing.assert_allclose(t.numpy(), [1 / 3], rtol=1e-15)
        e = gt.Variable(np.array([2.0], np.float32))
        with gt.GradientTape() as tape:
            p = gt.tensor(np.array([3.0], np.float16)) ** e
        np.testing.assert_allclose(tape.gradient(p, e).numpy(), [9 * np.log(3)], rtol=1e-6)
    finally:
        gt.config.fusion = old


def test_mse_refuses_integer_predictions_instead_of_wrapping():
    # 50000 ** 2 in int32 wrapped to a negative "mean squared error"
    with pytest.raises(TypeError, match="mse: predictions must be a float tensor, got dtype int32"):
        gt.nn.mse(gt.tensor(np.array([50000], np.int32)), gt.tensor(np.array([0], np.int32)))
    loss = gt.nn.mse(gt.tensor(np.array([50000.0])), gt.tensor(np.array([0], np.int32)))
    assert float(loss) == 2.5e9


def test_adam_on_float16_survives_a_gradient_whose_square_overflows():
    # v = beta2 * v + g * g * (1 - beta2): 300 * 300 overflowed float16 to inf and froze the
    # parameter for good; PyTorch applies the factor first (addcmul)
    v = gt.Variable(np.array([1.0], np.float16))
    opt = gt.optimizers.Adam(1e-2, epsilon=1e-4)
    for g in (300.0, 0.5, 0.5, 0.5):
        opt.apply_gradients([(gt.tensor(np.array([g], np.float16)), v)])
    assert np.isfinite(opt.state_dict()["variable#0/v"]).all()
    np.testing.assert_allclose(v.numpy(), [0.9736], atol=1e-3)  # PyTorch's


def test_a_list_of_float64_arrays_or_tensors_stays_float64():
    # the float32 default for Python floats was applied to any list: float64 data silently lost
    # its digits (PyTorch and JAX keep float64)
    with gt.use_backend("numpy"):  # (a list of device tensors is refused: an implicit copy)
        t = gt.tensor([gt.tensor(np.array(1.1)), gt.tensor(np.array(2.2))])
    assert t.dtype == np.float64 and t.numpy()[0] == 1.1
    assert gt.tensor([np.array([1.1]), np.array([2.2])]).dtype == np.float64
    assert gt.tensor([np.float16(1), np.float16(2)]).dtype == np.float16
    assert gt.tensor([np.float32(1.5), 2.5]).dtype == np.float32
    big = gt.tensor([np.float16(1), 1e5])  # a Python float counts as float32 (PyTorch's rule)
    assert big.dtype == np.float32 and big.numpy()[1] == 1e5
    assert gt.tensor([np.int64(1), 2.5]).dtype == np.float32  # as int_tensor * 2.5
    assert gt.tensor([1.5, 2.5]).dtype == np.float32


def test_mixed_dtype_losses_are_the_same_with_and_without_a_tape():
    # the operands of a mixed-dtype op were promoted only under a tape: binary_cross_entropy
    # (whose eps is its dtype's) gave 6.93 eagerly and 15.94 under a tape
    p = gt.tensor(np.array([1.0, 0.3], np.float16))
    t = gt.tensor(np.array([0.0, 1.0], np.float32))
    x = gt.tensor(np.array([2.0, -3.0], np.float16))
    plain = [gt.nn.binary_cross_entropy(p, t, reduction="none").numpy(),
             gt.nn.binary_cross_entropy_with_logits(x, t, reduction="none").numpy()]
    with gt.GradientTape() as tape:
        tape.watch([p, x])
        taped = [gt.nn.binary_cross_entropy(p, t, reduction="none").numpy(),
                 gt.nn.binary_cross_entropy_with_logits(x, t, reduction="none").numpy()]
    for u, v in zip(plain, taped):
        assert u.dtype == v.dtype == np.float32
        np.testing.assert_array_equal(u, v)
    np.testing.assert_allclose(plain[0][0], 15.942385, rtol=1e-6)  # PyTorch's, in float32
