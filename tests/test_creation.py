"""Creation functions (docs/api.md "Creating tensors"): values, dtypes, shapes, backends,
argument errors, and that they are constants no tape records."""

from __future__ import annotations

import numpy as np
import pytest

import gradtape as gt

F32 = np.dtype(np.float32)
I64 = np.dtype(np.int64)


# --------------------------------------------------------------------------- values and dtypes
@pytest.mark.parametrize("fn,value", [(gt.zeros, 0), (gt.ones, 1)])
def test_zeros_ones(backend, fn, value):
    t = fn((2, 3))
    assert t.backend == backend and t.shape == (2, 3) and t.dtype == F32
    np.testing.assert_array_equal(t.numpy(), np.full((2, 3), value, F32))
    assert fn(4).shape == (4,)
    assert fn(()).shape == ()
    assert fn([0, 3]).shape == (0, 3)
    assert fn(np.int64(2)).shape == (2,)
    assert fn((2,), dtype="int32").dtype == np.int32
    assert fn((2,), dtype=bool).dtype == np.bool_


def test_full_dtype_follows_the_fill_value(backend):
    assert gt.full((2,), 1.5).dtype == F32
    assert gt.full((2,), 3).dtype == I64
    assert gt.full((2,), True).dtype == np.bool_
    assert gt.full((2,), np.float64(0.1)).dtype == np.float64
    assert gt.full((2,), gt.tensor(np.float16(2.0))).dtype == np.float16
    t = gt.full((2, 2), 7, dtype="float64")
    assert t.backend == backend and t.dtype == np.float64
    np.testing.assert_array_equal(t.numpy(), np.full((2, 2), 7.0))


def test_like_functions_follow_x(backend):
    x = gt.tensor(np.arange(6, dtype=np.int32).reshape(2, 3))
    for t, value in ((gt.zeros_like(x), 0), (gt.ones_like(x), 1), (gt.full_like(x, 5), 5)):
        assert t.shape == (2, 3) and t.dtype == np.int32 and t.backend == backend
        np.testing.assert_array_equal(t.numpy(), np.full((2, 3), value, np.int32))
    assert gt.zeros_like(x, dtype="float64").dtype == np.float64
    assert gt.full_like(x, 2.5, dtype="float32").numpy().tolist() == [[2.5] * 3] * 2
    # host data is taken as gt.tensor takes it: Python floats are float32
    assert gt.ones_like([[1.0, 2.0]]).dtype == F32
    assert gt.zeros_like(np.zeros(3, np.float64)).dtype == np.float64
    v = gt.Variable([1.0, 2.0])
    z = gt.zeros_like(v)
    assert type(z) is gt.Tensor and z.dtype == F32


def test_like_functions_inside_vmap_use_one_example():
    seen = []

    def f(x):
        z = gt.ones_like(x)
        seen.append(z.shape)
        return x + z

    out = gt.vmap(f)(gt.tensor(np.zeros((4, 3))))
    assert seen == [(3,)] and out.shape == (4, 3)
    np.testing.assert_array_equal(out.numpy(), np.ones((4, 3)))


def test_arange(backend):
    t = gt.arange(5)
    assert t.dtype == I64 and t.backend == backend
    assert t.numpy().tolist() == [0, 1, 2, 3, 4]
    assert gt.arange(2, 10, 3).numpy().tolist() == [2, 5, 8]
    assert gt.arange(5, 0, -2).numpy().tolist() == [5, 3, 1]
    assert gt.arange(3, 3).shape == (0,)
    f = gt.arange(0.0, 1.0, 0.25)
    assert f.dtype == F32
    np.testing.assert_array_equal(f.numpy(), np.arange(0.0, 1.0, 0.25, dtype=np.float64).astype(F32))
    assert gt.arange(0, 1, 0.5).dtype == F32  # any float argument: float32
    assert gt.arange(np.int32(3)).dtype == I64
    assert gt.arange(4, dtype="float64").dtype == np.float64
    assert gt.arange(4, dtype="int16").numpy().tolist() == [0, 1, 2, 3]


def test_linspace(backend):
    t = gt.linspace(0, 1, 5)
    assert t.dtype == F32 and t.backend == backend and t.shape == (5,)
    np.testing.assert_array_equal(t.numpy(), np.linspace(0, 1, 5).astype(F32))
    np.testing.assert_array_equal(gt.linspace(0, 1, 4, endpoint=False).numpy(),
                                  np.array([0, 0.25, 0.5, 0.75], F32))
    assert gt.linspace(0, 1).shape == (50,)
    assert gt.linspace(0, 1, 0).shape == (0,)
    assert gt.linspace(0, 1, 1).numpy().tolist() == [0.0]
    assert gt.linspace(-1, 1, 3, dtype="float64").dtype == np.float64
    assert gt.linspace(0, 10, 4, dtype="int64").numpy().tolist() == [0, 3, 6, 10]


def test_eye(backend):
    t = gt.eye(3)
    assert t.dtype == F32 and t.backend == backend
    np.testing.assert_array_equal(t.numpy(), np.eye(3, dtype=F32))
    np.testing.assert_array_equal(gt.eye(2, 4, k=1).numpy(), np.eye(2, 4, 1, dtype=F32))
    np.testing.assert_array_equal(gt.eye(3, k=-1, dtype="int64").numpy(), np.eye(3, k=-1, dtype=np.int64))
    assert gt.eye(0).shape == (0, 0)


def test_one_hot(backend):
    t = gt.one_hot(gt.tensor([[0, 2], [1, 1]]), 3)
    assert t.shape == (2, 2, 3) and t.dtype == F32 and t.backend == backend
    np.testing.assert_array_equal(t.numpy(), np.eye(3, dtype=F32)[[[0, 2], [1, 1]]])
    assert gt.one_hot(np.array([1], np.uint8), 2, dtype="int32").numpy().tolist() == [[0, 1]]
    assert gt.one_hot(2, 4).numpy().tolist() == [0, 0, 1, 0]
    assert gt.one_hot(np.zeros((0,), np.int64), 5).shape == (0, 5)


def test_one_hot_inside_vmap():
    ids = gt.tensor(np.array([[0, 1], [2, 0]]))
    out = gt.vmap(lambda i: gt.one_hot(i, 3))(ids)
    np.testing.assert_array_equal(out.numpy(), np.eye(3, dtype=F32)[ids.numpy()])
    with pytest.raises(ValueError, match=r"one_hot: indices must be in \[0, 3\), got values in \[0, 5\]"):
        gt.vmap(lambda i: gt.one_hot(i, 3))(gt.tensor(np.array([[0, 5]])))


# --------------------------------------------------------------------------- constants
def test_results_are_constants_no_tape_records():
    x = gt.Variable([1.0, 2.0])
    with gt.GradientTape(persistent=True) as tape:
        made = [gt.zeros((2,)), gt.ones_like(x), gt.full_like(x, 3.0), gt.arange(2.0),
                gt.linspace(0, 1, 2), gt.eye(2)[0], gt.one_hot([0, 1], 2)[0]]
        loss = gt.sum(x * made[1])
    assert tape.recorded_ops() == ("mul", "sum")  # the loss only: nothing from creation
    for t in made:
        assert tape.gradient(gt.sum(t), x) is None
    np.testing.assert_array_equal(tape.gradient(loss, x).numpy(), [1.0, 1.0])
    with gt.GradientTape() as empty:
        gt.zeros(3), gt.one_hot([1], 2), gt.arange(4)
    assert empty.recorded_ops() == ()


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize("shape,exc,msg", [
    ((2, -1), ValueError, r"zeros: shape entries must be >= 0, got -1 at position 1"),
    (-3, ValueError, r"zeros: shape must be >= 0, got -3"),
    ((2, 1.5), TypeError, r"zeros: shape must hold ints, got 1.5 \(float\) at position 1"),
    ((True,), TypeError, r"shape must hold ints"),
    (2.0, TypeError, r"zeros: shape must be an int or a sequence of ints"),
    ("23", TypeError, r"zeros: shape must be an int or a sequence of ints"),
    (None, TypeError, r"zeros: shape must be an int or a sequence of ints"),
])
def test_bad_shapes(shape, exc, msg):
    with pytest.raises(exc, match=msg):
        gt.zeros(shape)


def test_argument_errors():
    with pytest.raises(ValueError, match="ones: shape"):
        gt.ones((-1,))
    with pytest.raises(TypeError, match="zeros: dtype must be a NumPy dtype"):
        gt.zeros(2, dtype="nonsense")
    with pytest.raises(TypeError, match="zeros: dtype must be a bool, integer, float or complex"):
        gt.zeros(2, dtype=str)
    with pytest.raises(ValueError, match="full: fill_value 300 cannot be represented as uint8"):
        gt.full(2, 300, dtype="uint8")
    with pytest.raises(ValueError, match="full_like: fill_value nan cannot be represented as int64"):
        gt.full_like(gt.tensor([1, 2]), float("nan"))
    with pytest.raises(ValueError, match=r"full: fill_value 1.5 cannot be represented as int64 "
                                         r"\(not a whole number: it would be truncated to 1\)"):
        gt.full(2, 1.5, dtype="int64")  # (was [1, 1], as NumPy and PyTorch give)
    with pytest.raises(ValueError, match="full_like: fill_value 0.5 cannot be represented as int64"):
        gt.full_like(gt.tensor([1, 2]), 0.5)
    assert gt.full(2, 2.0, dtype="int32").numpy().tolist() == [2, 2]  # a whole float is taken
    with pytest.raises(ValueError, match="full: fill_value must be a scalar"):
        gt.full(2, np.ones(2))
    with pytest.raises(TypeError, match="full: fill_value must be a number"):
        gt.full(2, "a")
    with pytest.raises(TypeError, match="zeros_like: x must be a tensor or array-like"):
        gt.zeros_like("abc")
    with pytest.raises(ValueError, match="arange: step must not be 0"):
        gt.arange(0, 5, 0)
    with pytest.raises(ValueError, match="arange: stop must be finite"):
        gt.arange(0, float("inf"))
    with pytest.raises(TypeError, match="arange: stop must be a real number"):
        gt.arange("3")  # one argument is the stop, as in NumPy
    with pytest.raises(TypeError, match="arange: start must be a real number"):
        gt.arange(True, 3)
    with pytest.raises(ValueError, match="linspace: num must be >= 0, got -1"):
        gt.linspace(0, 1, -1)
    with pytest.raises(TypeError, match="linspace: num must be a non-negative int, got 2.5"):
        gt.linspace(0, 1, 2.5)
    with pytest.raises(ValueError, match="eye: n must be >= 0"):
        gt.eye(-2)
    with pytest.raises(ValueError, match="eye: m must be >= 0"):
        gt.eye(2, -1)
    with pytest.raises(TypeError, match="eye: k must be an int"):
        gt.eye(2, k=0.5)


def test_sizes_too_large_are_refused_before_numpy_sees_them():
    for fn, args in ((gt.zeros, ((2**40, 2**40),)), (gt.full, (2**62, 1.0)), (gt.arange, (2**64,)),
                     (gt.arange, (0.0, 1.0, 1e-300)), (gt.linspace, (0, 1, 2**62)), (gt.eye, (2**31,))):
        with pytest.raises(ValueError, match=f"{fn.__name__}: .*too large to allocate"):
            fn(*args)
    with pytest.raises(ValueError, match="one_hot: depth 1152921504606846976 is too large"):
        gt.one_hot([0], 2**60)
    with pytest.raises(OverflowError, match="arange: the values from 9223372036854775807 to "
                                            "9223372036854775808 do not fit int64"):
        gt.arange(2**63 - 1, 2**63 + 1)
    assert gt.arange(0.0, -1e300).shape == (0,) and gt.arange(-(2**64)).shape == (0,)
    assert gt.eye(2, 2, k=2**70).numpy().tolist() == [[0.0, 0.0], [0.0, 0.0]]
    assert gt.one_hot([], 3).shape == (0, 3)


def test_one_hot_errors():
    with pytest.raises(ValueError, match=r"one_hot: indices must be in \[0, 3\), got values in \[-1, 2\]"):
        gt.one_hot([2, -1], 3)
    with pytest.raises(ValueError, match=r"one_hot: indices must be in \[0, 3\), got values in \[0, 3\]"):
        gt.one_hot([0, 3], 3)
    with pytest.raises(ValueError, match="one_hot: depth must be >= 1, got 0"):
        gt.one_hot([0], 0)
    with pytest.raises(TypeError, match="one_hot: depth must be an int"):
        gt.one_hot([0], 2.0)
    with pytest.raises(TypeError, match="one_hot: indices must have an integer dtype, got float32"):
        gt.one_hot([0.0, 1.0], 2)
    with pytest.raises(TypeError, match="one_hot: indices must have an integer dtype, got bool"):
        gt.one_hot([True], 2)


# --------------------------------------------------------------------------- backends
def test_created_on_the_active_backend_like_on_x(backend):
    with gt.use_backend("numpy"):
        host = gt.tensor([1.0, 2.0])
    assert gt.zeros_like(host).backend == "numpy"  # x's backend, whatever is active
    assert gt.one_hot(gt.tensor(np.array([1])).to(backend), 2).backend == backend
    for t in (gt.zeros(1), gt.ones(1), gt.full(1, 2.0), gt.arange(2), gt.linspace(0, 1, 2),
              gt.eye(2), gt.one_hot([1], 2)):
        assert t.backend == backend


def test_linspace_bool_and_values_the_dtype_cannot_hold():
    # bool took the floor (0.5 -> False; NumPy: True); float16 overflowed to inf and integers
    # wrapped silently, where gt.full refuses the same values
    np.testing.assert_array_equal(gt.linspace(0, 1, 3, dtype=bool).numpy(), [False, True, True])
    np.testing.assert_array_equal(gt.linspace(-2.5, 2.5, 5, dtype="int8").numpy(),
                                  np.linspace(-2.5, 2.5, 5, dtype=np.int8))
    for args in ((0, 70000, 3, "float16"), (0, 1000, 3, "int8"), (-1, 3, 3, "uint8")):
        with pytest.raises(ValueError, match="do not fit"):
            gt.linspace(*args[:3], dtype=args[3])
    assert gt.linspace(0, 98256, 2, endpoint=False, dtype="float16").numpy()[1] == 49128
    # a bound that rounds to the largest float16 fits (65519 -> 65504, as NumPy)
    np.testing.assert_array_equal(gt.linspace(0, 65519, 3, dtype="float16").numpy(),
                                  np.linspace(0, 65519, 3, dtype=np.float16))
