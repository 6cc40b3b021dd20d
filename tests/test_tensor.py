"""Tensor: creation and dtype rules, attributes, operators (reflected too, NumPy on the left),
comparisons, indexing, methods, Python protocols, NumPy/DLPack interop."""

from __future__ import annotations

import math

import numpy as np
import pytest

import gradtape as gt

A = np.array([[1.0, -2.0, 3.0], [4.0, 5.0, -6.0]])


@pytest.fixture
def t(backend):
    return gt.tensor(A)  # float64, kept


def host(x):
    return x.numpy() if isinstance(x, gt.Tensor) else np.asarray(x)


# --------------------------------------------------------------------------- creation
@pytest.mark.parametrize("data, dtype, shape", [
    (1.5, np.float32, ()),
    ([1.0, 2.0], np.float32, (2,)),
    ([[1, 2.5], [3, 4]], np.float32, (2, 2)),
    ([1, 2, 3], np.int64, (3,)),
    (7, np.int64, ()),
    ([True, False], np.bool_, (2,)),
    (True, np.bool_, ()),
    (np.array([1.0, 2.0]), np.float64, (2,)),
    (np.array([1.0, 2.0], dtype=np.float16), np.float16, (2,)),
    (np.array([1, 2], dtype=np.int32), np.int32, (2,)),
    (np.float64(2.5), np.float64, ()),
    ([], np.float32, (0,)),
])
def test_tensor_dtype_rules(backend, data, dtype, shape):
    x = gt.tensor(data)
    assert x.dtype == np.dtype(dtype)
    assert x.shape == shape
    assert x.backend == backend
    np.testing.assert_array_equal(x.numpy(), np.asarray(data, dtype=dtype))


def test_tensor_explicit_dtype(backend):
    assert gt.tensor([1.0, 2.0], dtype=np.float64).dtype == np.float64
    assert gt.tensor([1, 2], dtype="float32").dtype == np.float32
    assert gt.tensor(np.ones(2), dtype=np.float32).dtype == np.float32
    assert gt.tensor(gt.tensor([1.0]), dtype=np.float64).dtype == np.float64


@pytest.mark.parametrize("bad", [
    [[1.0, 2.0], [3.0]],          # ragged
    [1.0, [2.0, 3.0]],            # ragged
    "abc",
    b"abc",
    ["a", "b"],
    [1.0, "a"],
    np.array(["x", "y"]),
    None,
    [object()],
    {"a": 1},
])
def test_tensor_rejects_non_numeric_and_ragged(bad):
    with pytest.raises(TypeError, match="gt.tensor"):
        gt.tensor(bad)


def test_tensor_copies_host_data_so_later_writes_do_not_leak(backend):
    a = np.array([1.0, 2.0])
    x = gt.tensor(a)
    a[0] = 100.0
    np.testing.assert_array_equal(x.numpy(), [1.0, 2.0])


def test_tensor_of_variable_is_a_snapshot():
    v = gt.Variable([1.0, 2.0])
    x = gt.tensor(v)
    assert type(x) is gt.Tensor
    v.assign_add([1.0, 1.0])
    np.testing.assert_array_equal(x.numpy(), [1.0, 2.0])


def test_tensor_of_tensor_keeps_values_and_dtype(backend):
    x = gt.tensor([1.0, 2.0])
    y = gt.tensor(x)
    assert y.dtype == x.dtype and y.backend == x.backend
    np.testing.assert_array_equal(y.numpy(), x.numpy())


# --------------------------------------------------------------------------- attributes
def test_attributes(t, backend):
    assert t.shape == (2, 3) and t.ndim == 2 and t.size == 6
    assert t.dtype == np.float64
    assert t.backend == backend
    with gt.use_backend(t.backend) as tensor_backend:
        assert isinstance(t.data, tensor_backend.xp.ndarray)
    np.testing.assert_array_equal(t.T.numpy(), A.T)
    assert t.T.shape == (3, 2)


# --------------------------------------------------------------------------- operators
BINARY = [
    ("add", lambda a, b: a + b),
    ("sub", lambda a, b: a - b),
    ("mul", lambda a, b: a * b),
    ("div", lambda a, b: a / b),
]


@pytest.mark.parametrize("name, op", BINARY)
def test_binary_operators_with_tensors_scalars_and_arrays(t, name, op):
    b = np.array([0.5, 2.0, -4.0])
    for left, right, expect in [
        (t, gt.tensor(b), op(A, b)),
        (t, 3.0, op(A, 3.0)),
        (3.0, t, op(3.0, A)),
        (2, t, op(2, A)),
        (t, b, op(A, b)),
    ]:
        if isinstance(right, np.ndarray) and t.backend != "numpy":
            # a host array next to a device tensor: refused, never copied behind the user's back
            with pytest.raises(ValueError, match="one backend"):
                op(left, right)
            continue
        out = op(left, right)
        assert isinstance(out, gt.Tensor), (name, type(left), type(right))
        np.testing.assert_allclose(out.numpy(), expect)


def test_pow_and_matmul(t):
    np.testing.assert_allclose((t ** 2).numpy(), A ** 2)
    np.testing.assert_allclose((2.0 ** t).numpy(), 2.0 ** A)
    np.testing.assert_allclose((abs(t) ** gt.tensor(0.5)).numpy(), np.abs(A) ** 0.5)
    m = np.arange(6.0).reshape(3, 2)
    np.testing.assert_allclose((t @ gt.tensor(m)).numpy(), A @ m)
    if t.backend == "numpy":  # a host array operand (a device tensor refuses it, as above)
        np.testing.assert_allclose((t @ m).numpy(), A @ m)
    np.testing.assert_allclose((-t).numpy(), -A)
    np.testing.assert_allclose((+t).numpy(), A)
    np.testing.assert_allclose(abs(t).numpy(), np.abs(A))


def test_weak_python_scalars_keep_float32():
    x = gt.tensor([1.0, 2.0])
    for y in (x + 1, 2.0 * x, x / 3, x ** 2, 1 - x):
        assert y.dtype == np.float32


def test_numpy_array_on_the_left_gives_a_tensor():
    # __array_priority__ + __array_ufunc__ = None: NumPy defers every binary operator to us.
    x = gt.tensor(A)
    b = np.array([0.5, 2.0, -4.0])
    m = np.arange(4.0).reshape(2, 2)
    cases = [
        (b + x, b + A), (b - x, b - A), (b * x, b * A), (b / x, b / A), (b ** abs(x), b ** np.abs(A)),
        (m @ x, m @ A), (np.float64(2.0) * x, 2.0 * A), (np.float32(2.0) - x, 2.0 - A),
        (np.array(3.0) + x, 3.0 + A),
    ]
    for out, expect in cases:
        assert isinstance(out, gt.Tensor)
        np.testing.assert_allclose(out.numpy(), expect)
    for out, expect in [(b < x, b < A), (b == x, b == A), (b >= x, b >= A)]:
        assert isinstance(out, gt.Tensor) and out.dtype == np.bool_
        np.testing.assert_array_equal(out.numpy(), expect)


def test_numpy_ufunc_on_a_tensor_raises_instead_of_leaving_the_tape():
    x = gt.tensor([1.0, 2.0])
    with pytest.raises(TypeError, match="ufunc"):
        np.exp(x)
    a = np.ones(2, dtype=np.float32)
    with pytest.raises(TypeError):
        a += x  # in-place on the ndarray cannot produce a Tensor
    np.testing.assert_array_equal(a, [1.0, 1.0])
    np.testing.assert_allclose(x, [1.0, 2.0])  # np.testing still works through __array__


def test_reflected_operators_are_differentiable():
    x = gt.Variable([1.0, 2.0, 4.0], dtype=np.float64)
    b = np.array([3.0, -1.0, 0.5])
    with gt.GradientTape() as tape:
        y = gt.sum(b * x + 2.0 / x - (1.0 - x) + b @ x)
    g = tape.gradient(y, x)
    # b @ x is a scalar broadcast over 3 elements before the sum: it contributes 3 * b
    np.testing.assert_allclose(g.numpy(), b - 2.0 / x.numpy() ** 2 + 1.0 + 3 * b)


def test_comparisons_return_bool_tensors_and_are_not_differentiable(t):
    for out, expect in [(t < 1.0, A < 1.0), (t <= 1.0, A <= 1.0), (t > 1.0, A > 1.0),
                        (t >= 1.0, A >= 1.0), (t == 1.0, A == 1.0), (t != 1.0, A != 1.0),
                        (1.0 < t, 1.0 < A)]:
        assert isinstance(out, gt.Tensor) and out.dtype == np.bool_
        np.testing.assert_array_equal(out.numpy(), expect)
    m = t > 0
    np.testing.assert_array_equal((m & (t < 4)).numpy(), (A > 0) & (A < 4))
    np.testing.assert_array_equal((m | (t < -3)).numpy(), (A > 0) | (A < -3))
    np.testing.assert_array_equal((~m).numpy(), ~(A > 0))
    x = gt.Variable([1.0, 3.0])
    with gt.GradientTape() as tape:
        c = x < 2.0
        y = gt.sum(x * c.astype(np.float32))
    np.testing.assert_array_equal(tape.gradient(y, x).numpy(), [1.0, 0.0])


def test_tensors_stay_hashable_despite_elementwise_eq():
    x = gt.tensor([1.0])
    y = gt.tensor([1.0])
    d = {x: "x", y: "y"}
    assert d[x] == "x" and d[y] == "y"


# --------------------------------------------------------------------------- indexing
@pytest.mark.parametrize("index", [
    0, -1, (1, 2), slice(None, None, -1), (slice(None), 1), (Ellipsis, 0), (None, 0),
    [1, 0, 1], (np.array([0, 1]), np.array([2, 0])),
])
def test_indexing_matches_numpy(t, index):
    np.testing.assert_array_equal(t[index].numpy(), A[index])


def test_boolean_mask_and_tensor_index(t):
    np.testing.assert_array_equal(t[t > 0].numpy(), A[A > 0])
    np.testing.assert_array_equal(t[gt.tensor([1, 1, 0])].numpy(), A[[1, 1, 0]])


# --------------------------------------------------------------------------- methods
@pytest.mark.parametrize("method", ["sum", "mean", "max", "min"])
@pytest.mark.parametrize("axis", [None, 0, 1, -1, (0, 1)])
@pytest.mark.parametrize("keepdims", [False, True])
def test_reduction_methods(t, method, axis, keepdims):
    out = getattr(t, method)(axis=axis, keepdims=keepdims)
    expect = getattr(np, method)(A, axis=axis, keepdims=keepdims)
    assert out.shape == expect.shape
    np.testing.assert_allclose(out.numpy(), expect)


def test_reshape_transpose_astype(t):
    for shape in [(3, 2), (6,), (-1,), (1, 2, 3)]:
        np.testing.assert_array_equal(t.reshape(shape).numpy(), A.reshape(shape))
        np.testing.assert_array_equal(t.reshape(*shape).numpy(), A.reshape(shape))
    np.testing.assert_array_equal(t.transpose().numpy(), A.T)
    np.testing.assert_array_equal(t.transpose(1, 0).numpy(), A.T)
    np.testing.assert_array_equal(t.transpose((1, 0)).numpy(), A.T)
    np.testing.assert_array_equal(t.transpose(None).numpy(), A.T)
    x = gt.tensor(np.arange(24.0).reshape(2, 3, 4))
    np.testing.assert_array_equal(x.transpose(2, 0, 1).numpy(), np.arange(24.0).reshape(2, 3, 4).transpose(2, 0, 1))
    y = t.astype(np.float32)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y.numpy(), A.astype(np.float32))
    assert t.astype("int64").dtype == np.int64


# --------------------------------------------------------------------------- protocols
def test_bool():
    assert bool(gt.tensor(1.0)) is True
    assert bool(gt.tensor([0.0])) is False
    with pytest.raises(ValueError, match="ambiguous"):
        bool(gt.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="ambiguous"):
        if gt.tensor([1.0, 2.0]) > 0:
            pass  # pragma: no cover


def test_len_and_iter(t):
    assert len(t) == 2
    rows = list(t)
    assert len(rows) == 2 and all(isinstance(r, gt.Tensor) for r in rows)
    np.testing.assert_array_equal(rows[1].numpy(), A[1])
    with pytest.raises(TypeError, match="0-d"):
        len(gt.tensor(1.0))
    with pytest.raises(TypeError, match="0-d"):
        iter(gt.tensor(1.0))


def test_float_int_index_item():
    assert float(gt.tensor(2.5)) == 2.5 and isinstance(float(gt.tensor(2.5)), float)
    assert float(gt.tensor([2.5])) == 2.5
    assert int(gt.tensor(3.7)) == 3
    assert gt.tensor(4).item() == 4
    assert [10, 20, 30][gt.tensor(1)] == 20
    assert math.isclose(float(gt.tensor([[0.1]], dtype=np.float64)), 0.1)
    with pytest.raises(TypeError, match=r"shape \(2,\)"):
        float(gt.tensor([1.0, 2.0]))
    with pytest.raises(TypeError, match=r"shape \(2,\)"):
        int(gt.tensor([1, 2]))
    with pytest.raises(TypeError, match="integer"):
        [1, 2][gt.tensor(1.0)]
    with pytest.raises(ValueError, match=r"^\.item\(\): only a tensor with one element converts to a "
                                         r"Python scalar, got shape \(2,\)"):
        gt.ones(2).item()
    with pytest.raises(ValueError, match=r"\.item\(\): .*got shape \(0, 3\)"):
        gt.ones((0, 3)).item()


def test_repr():
    r = repr(gt.tensor([[1.0, 2.0], [3.0, 4.0]]))
    assert r.startswith("tensor([[1., 2.],") and r.endswith("dtype=float32)")
    assert repr(gt.tensor(3)) == "tensor(3, dtype=int64)"
    assert "backend" not in r  # only a non-default (CuPy) backend is named


# --------------------------------------------------------------------------- interop
def test_numpy_returns_read_only_host_view(backend):
    x = gt.tensor([1.0, 2.0])
    a = x.numpy()
    assert type(a) is np.ndarray
    np.testing.assert_array_equal(a, [1.0, 2.0])
    if backend == "numpy":  # a read-only view of the tensor's own buffer
        with pytest.raises(ValueError, match="read-only"):
            a[0] = 5.0
    else:  # from a device: a copy, which the caller may write
        a[0] = 5.0
    np.testing.assert_array_equal(x.numpy(), [1.0, 2.0])


def test_array_protocol():
    x = gt.tensor([1.0, 2.0])
    a = np.asarray(x)
    assert type(a) is np.ndarray and a.dtype == np.float32
    assert np.shares_memory(a, x.data)  # no copy
    assert np.asarray(x, dtype=np.float64).dtype == np.float64
    c = np.array(x)  # copy=True: a fresh, writable array
    c[0] = 9.0
    np.testing.assert_array_equal(x.numpy(), [1.0, 2.0])
    with pytest.raises(ValueError, match="copy"):
        np.asarray(x, dtype=np.float64, copy=False)
    assert np.asarray(x, copy=False).dtype == np.float32


def test_dlpack_round_trip_shares_memory():
    x = gt.tensor(np.arange(6.0).reshape(2, 3))
    assert x.__dlpack_device__()[0] == 1  # kDLCPU
    a = np.from_dlpack(x)
    assert np.shares_memory(a, x.data)
    np.testing.assert_array_equal(a, x.numpy())
    src = np.arange(4.0, dtype=np.float32)
    y = gt.from_dlpack(src)
    assert isinstance(y, gt.Tensor) and y.backend == "numpy" and y.dtype == np.float32
    assert np.shares_memory(y.data, src)
    src[0] = 42.0  # zero-copy: the producer's writes are visible
    assert y.numpy()[0] == 42.0
    z = gt.from_dlpack(gt.tensor(3.0))  # 0-d and Tensor producers
    assert z.shape == () and float(z) == 3.0
    with pytest.raises(TypeError, match="__dlpack__"):
        gt.from_dlpack([1.0, 2.0])


def test_tensor_accepts_any_dlpack_producer():
    class Producer:
        def __init__(self, a):
            self.a = a

        def __dlpack__(self, **kwargs):
            return self.a.__dlpack__(**kwargs)

        def __dlpack_device__(self):
            return self.a.__dlpack_device__()

    src = np.arange(3.0)
    x = gt.tensor(Producer(src))
    np.testing.assert_array_equal(x.numpy(), src)
    src[0] = 7.0  # gt.tensor copies (use gt.from_dlpack to share)
    assert x.numpy()[0] == 0.0


def test_format_and_round_as_numpy_and_pytorch_scalars():
    loss = gt.tensor(1.23456)
    assert f"{loss:.4f}" == "1.2346" and f"{loss:>8.2f}" == "    1.23"
    assert f"{gt.tensor([1.0])}" == str(gt.tensor([1.0]))
    with pytest.raises(TypeError, match=r"0-d tensor .* shape \(2,\)"):
        f"{gt.tensor([1.0, 2.0]):.2f}"
    r = round(gt.tensor([1.5, 2.5, 3.14159, -0.125]), 2)
    assert isinstance(r, gt.Tensor) and r.dtype == np.float32
    np.testing.assert_allclose(r.numpy(), np.round(np.float32([1.5, 2.5, 3.14159, -0.125]) * 100) / 100)
    np.testing.assert_array_equal(round(gt.tensor([0.5, 1.5, 2.5])).numpy(), [0.0, 2.0, 2.0])
    with pytest.raises(TypeError, match="ndigits must be an int"):
        round(gt.tensor(1.0), 1.5)
    ints = np.array([15, 25, 149, -35])
    r = round(gt.tensor(ints), -1)
    assert r.dtype == np.int64 and r.numpy().tolist() == np.round(ints, -1).tolist()
    assert round(gt.tensor(ints), 2).dtype == np.int64


def test_negating_a_bool_tensor_names_the_op_and_the_fix():
    with pytest.raises(TypeError, match=r"neg: a bool tensor .* use ~x"):
        -gt.tensor([True, False])
    np.testing.assert_array_equal((~gt.tensor([True, False])).numpy(), [False, True])


def test_numpy_reductions_call_the_tensor_methods_and_stay_on_the_tape():
    """``np.sum(t)`` calls ``t.sum(axis=None, out=None)``, which raised an internal
    ``unexpected keyword argument 'out'``."""
    x = gt.Variable([[1.0, 2.0], [3.0, 4.0]])
    with gt.GradientTape() as tape:
        y = np.sum(x * x) + np.mean(x, axis=0)[0] + np.max(x) + np.min(x, axis=1)[1]
    assert isinstance(y, gt.Tensor) and float(y) == 30.0 + 2.0 + 4.0 + 3.0
    np.testing.assert_array_equal(tape.gradient(y, x).numpy(), [[2.5, 4.0], [7.5, 9.0]])
    assert np.sum(x, dtype=np.float64).dtype == np.float64
    with pytest.raises(TypeError, match="out= is not supported"):
        np.sum(x, out=np.zeros((), np.float32))


def test_bitwise_operators_follow_numpy():
    # & | ^ ~ were logical on integer tensors (t & 1 all True, ~t all False): bitwise now, as
    # NumPy's and PyTorch's; logical on bool tensors; a float operand raises
    a = np.array([1, 2, 3, 6, -5], np.int64)
    t = gt.tensor(a)
    np.testing.assert_array_equal((t & 1).numpy(), a & 1)
    np.testing.assert_array_equal((t | 4).numpy(), a | 4)
    np.testing.assert_array_equal((t ^ 3).numpy(), a ^ 3)
    np.testing.assert_array_equal((~t).numpy(), ~a)
    np.testing.assert_array_equal((6 & t).numpy(), 6 & a)
    np.testing.assert_array_equal((np.int64(5) ^ t).numpy(), 5 ^ a)
    assert (gt.tensor(np.int8([1, 2])) & 1).dtype == np.int8
    b = gt.tensor([True, False, True])
    np.testing.assert_array_equal((~b).numpy(), [False, True, False])
    np.testing.assert_array_equal((b ^ True).numpy(), [False, True, False])
    assert (b & b).dtype == np.bool_
    x = gt.tensor([0.5, -1.0])
    np.testing.assert_array_equal(((x > 0) & (x < 1)).numpy(), [True, False])
    for bad in (lambda: x & x, lambda: ~x, lambda: x | 1, lambda: x ^ b):
        with pytest.raises(TypeError, match="bitwise"):
            bad()


def test_flatten_tolist_and_sequential_slices():
    t = gt.tensor(np.arange(6.0).reshape(2, 3))
    with gt.GradientTape() as tape:
        tape.watch(t)
        f = t.flatten()
        y = gt.sum(f * gt.tensor(np.arange(6.0)))
    assert f.shape == (6,) and t.tolist() == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
    np.testing.assert_array_equal(tape.gradient(y, t).numpy(), np.arange(6.0).reshape(2, 3))
    assert isinstance(gt.tensor(3).tolist(), int)
    m = gt.nn.Sequential(gt.nn.Dense(2, 3, seed=0), gt.relu, gt.nn.Dense(3, 1, seed=1))
    head = m[:2]
    assert isinstance(head, gt.nn.Sequential) and len(head) == 2 and head[0] is m[0]
    x = gt.tensor([[1.0, -2.0]])
    np.testing.assert_array_equal(m[2](head(x)).numpy(), m(x).numpy())


def test_sum_with_a_dtype_returns_that_dtype():
    # the integer sum came back int64 whatever dtype= asked for (NumPy and PyTorch keep it)
    assert gt.tensor([1.5, 2.5]).sum(dtype=np.int32).dtype == np.int32
    assert int(gt.tensor([1.5, 2.5]).sum(dtype=np.int32)) == 3
    assert gt.tensor([True, False]).sum(dtype=bool).dtype == np.bool_
    x = gt.Variable([1.0, 2.0], dtype="float32")
    with gt.GradientTape() as tape:
        y = x.sum(dtype="float64")
    assert y.dtype == np.float64 and tape.gradient(y, x).dtype == np.float32
