"""Tensors, Variables, creation, random draws and DLPack: edge cases found by a fuzz against
NumPy and PyTorch (no-op ops returning a Variable, copies, fill values, float16 uniform bounds,
Python ints past int64, bfloat16, array shapes, integer Variables past their range)."""

from __future__ import annotations

import numpy as np
import pytest

import gradtape as gt


@pytest.mark.parametrize("op", [
    lambda v: gt.reshape(v, v.shape), lambda v: v.reshape(v.shape), lambda v: gt.astype(v, v.dtype),
    lambda v: gt.broadcast_to(v, v.shape), lambda v: gt.squeeze(v), lambda v: gt.transpose(v),
    lambda v: v.T, lambda v: gt.concat([v]), lambda v: gt.pad(v, 0), lambda v: gt.roll(v, 0),
    lambda v: gt.flip(v, ()), lambda v: gt.moveaxis(v, 0, 0), lambda v: gt.swapaxes(v, 0, 0),
    lambda v: +v,
], ids=["reshape", "method-reshape", "astype", "broadcast_to", "squeeze", "transpose", "T",
        "concat", "pad", "roll", "flip", "moveaxis", "swapaxes", "pos"])
def test_an_op_that_changes_nothing_gives_a_tensor_not_the_variable(op):
    w = gt.Variable([1.0, 2.0], name="w")
    with gt.GradientTape() as tape:
        h = op(w)
        loss = gt.sum(h * h)
    assert type(h) is gt.Tensor and h is not w
    h -= 1.0  # rebinds h (a Tensor is immutable): w is untouched
    w.assign([5.0, 6.0])  # and the result keeps the value it was made from
    np.testing.assert_array_equal(w.numpy(), [5.0, 6.0])
    np.testing.assert_array_equal(h.numpy(), [0.0, 1.0])
    np.testing.assert_array_equal(tape.gradient(loss, w).numpy(), [2.0, 4.0])


def test_sort_of_a_0d_variable_is_a_tensor():
    v = gt.Variable(3.0)
    assert type(gt.sort(v)) is gt.Tensor


def test_gt_tensor_of_a_shared_tensor_is_a_copy():
    with gt.use_backend("numpy"):
        src = np.arange(3.0)
        shared = gt.from_dlpack(src)
        copied = gt.tensor(shared)
    src[0] = 55.0
    assert float(shared[0]) == 55.0
    np.testing.assert_array_equal(copied.numpy(), [0.0, 1.0, 2.0])


def test_gt_tensor_of_a_torch_shared_tensor_is_a_copy():
    torch = pytest.importorskip("torch")
    src = torch.arange(3.0)
    shared = gt.from_dlpack(src)
    copied = gt.tensor(shared)
    src[0] = 55.0
    assert float(shared[0]) == 55.0  # from_dlpack shares
    np.testing.assert_array_equal(copied.numpy(), [0.0, 1.0, 2.0])  # gt.tensor always copies


def test_a_reversed_view_is_exported_through_dlpack_as_a_copy():
    """PyTorch's importer aborts the process on negative strides: such a tensor (a flip, or a
    gradient through one) goes out as a contiguous copy."""
    torch = pytest.importorskip("torch")
    with gt.use_backend("numpy"):
        x = gt.Variable([1.0, 2.0, 3.0])
        with gt.GradientTape() as tape:
            y = gt.sum(gt.flip(x, 0) * gt.tensor([1.0, 2.0, 3.0]))
        g = tape.gradient(y, x)
        r = gt.tensor([1.0, 2.0, 3.0])[::-1]
    assert g.data.strides[0] < 0 and r.data.strides[0] < 0  # (the views this is about)
    np.testing.assert_array_equal(torch.from_dlpack(g).numpy(), [3.0, 2.0, 1.0])
    np.testing.assert_array_equal(torch.from_dlpack(r).numpy(), [3.0, 2.0, 1.0])


def test_a_reversed_view_leaves_through_dlpack_with_positive_strides():
    with gt.use_backend("numpy"):
        r = gt.tensor([1.0, 2.0, 3.0])[::-1]
    out = np.from_dlpack(r)
    assert out.strides[0] > 0
    np.testing.assert_array_equal(out, [3.0, 2.0, 1.0])


@pytest.mark.parametrize("value, dtype", [
    (np.int64(300), "uint8"), (np.int16(300), "uint8"), (np.float32("nan"), "int32"),
    (np.float64("inf"), "int64"), (1e40, "float32"), (70000, "float16"), (300, "uint8"),
])
def test_full_refuses_a_value_the_dtype_cannot_hold(value, dtype):
    with pytest.raises(ValueError, match=rf"full: fill_value .* cannot be represented as {dtype}"):
        gt.full(2, value, dtype=dtype)


def test_full_of_a_0d_tensor_is_checked_too():
    with pytest.raises(ValueError, match=r"cannot be represented as uint8 \(outside \[0, 255\]\)"):
        gt.full(2, gt.tensor(300), dtype="uint8")
    with pytest.raises(ValueError, match=r"full_like: .* cannot be represented as uint8"):
        gt.full_like(gt.tensor(np.uint8([1, 2])), np.int16(300))
    assert gt.full(2, np.int64(255), dtype="uint8").numpy().tolist() == [255, 255]
    with pytest.raises(ValueError, match=r"full: fill_value 2.5 cannot be represented as int32 "
                                         r"\(not a whole number"):  # (TF refuses too; NumPy
        gt.full(2, 2.5, dtype="int32")  # and PyTorch truncate, silently)
    assert gt.full(2, 2.0, dtype="int32").numpy().tolist() == [2, 2]


@pytest.mark.parametrize("low, high", [(1.0, 2.0), (-1.0, 1.0), (0.0, 1000.0), (0.0, 2.0)])
def test_float16_uniform_stays_below_high(low, high):
    u = gt.random.Generator(0).uniform((100000,), low, high, dtype="float16").numpy()
    assert u.dtype == np.float16 and u.min() >= low and u.max() < high
    assert abs(float(u.astype(np.float64).mean()) - (low + high) / 2) < 0.01 * (high - low)


@pytest.mark.parametrize("data", [2**63, [2**63, 1], [[2**63], [1]], [True, 2**63], -2**63 - 1])
def test_python_ints_past_int64_raise(data):
    with pytest.raises(OverflowError, match=r"does not fit in int64"):
        gt.tensor(data)


def test_python_ints_near_the_int64_limits_and_floats_next_to_huge_ints():
    assert gt.tensor(2**63 - 1).dtype == np.int64 and gt.tensor(-2**63).dtype == np.int64
    t = gt.tensor([1.0, 2**70])
    assert t.dtype == np.float32 and float(t[1]) == pytest.approx(2.0**70)
    assert gt.tensor([]).dtype == np.float32 and gt.tensor([[], []]).shape == (2, 0)


def test_bfloat16_through_dlpack_raises_a_type_error():
    torch = pytest.importorskip("torch")
    b = torch.ones(2, dtype=torch.bfloat16)
    for f in (gt.tensor, gt.from_dlpack):
        with pytest.raises(TypeError, match=r"bfloat16 one first"):
            f(b)


def test_a_shape_given_as_an_integer_array_or_tensor():
    assert gt.zeros(np.array([2, 3])).shape == (2, 3)
    assert gt.ones(gt.tensor([2, 3])).shape == (2, 3)
    assert gt.random.normal(np.array([2, 3])).shape == (2, 3)
    with pytest.raises(TypeError, match=r"zeros: shape must hold ints, got an array of dtype float64"):
        gt.zeros(np.array([2.0]))
    with pytest.raises(TypeError, match=r"zeros: shape must be an int or a sequence of ints, got an "
                                        r"array of shape \(1, 2\)"):
        gt.zeros(np.array([[2, 3]]))


def test_an_integer_variable_refuses_integers_past_its_range():
    v = gt.Variable(np.zeros(1, np.int8), name="k")
    with pytest.raises(ValueError, match=r"assign: value holds integers outside \[-128, 127\], "
                                         r"which the integer variable k \(int8\)"):
        v.assign(300)
    with pytest.raises(ValueError, match=r"assign_add: value holds integers outside"):
        v.assign_add(1000)
    with pytest.raises(ValueError, match=r"outside \[0, 255\]"):
        gt.Variable(np.zeros(1, np.uint8)).assign(-1)
    with pytest.raises(ValueError, match=r"value 1180591620717411303424 does not fit the variable"):
        gt.Variable([1, 2]).assign_add(2**70)
    u = gt.Variable(np.zeros(1, np.uint8))
    u -= 1  # the arithmetic wraps, as NumPy's and PyTorch's
    assert u.numpy().tolist() == [255]
    assert v.assign(np.int64(127)).numpy().tolist() == [127]
