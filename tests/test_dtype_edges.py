"""Dtype edges found by fuzzing: casts by gt.tensor(..., dtype=) of values the integer dtype
cannot hold, clip's result dtype and its missing bound, two Python numbers in either order,
a 0-d bool Tensor as an axis or count, integer arrays of axes."""

from __future__ import annotations

import numpy as np
import pytest

import gradtape as gt


@pytest.mark.parametrize("data, dtype", [
    (np.array([300.0]), "int8"), (np.array([np.nan]), "int32"), (np.array([np.inf]), "int64"),
    (np.array([1e20]), "int32"), (np.array([300]), "int8"), (np.array([2**40]), "int32"),
    (np.array([-1]), "uint8"),
])
@pytest.mark.parametrize("wrap", [lambda a: a, gt.tensor], ids=["array", "tensor"])
def test_a_cast_to_an_integer_dtype_refuses_values_it_cannot_hold(data, dtype, wrap):
    src = wrap(data)
    with pytest.raises(ValueError, match=rf"gt.tensor: data holds (NaN or inf|numbers outside).*{dtype}"):
        gt.tensor(src, dtype=dtype)
    with pytest.raises(ValueError, match=rf"{dtype}"):
        gt.Variable(src, dtype=dtype)


def test_casts_that_fit_still_work():
    np.testing.assert_array_equal(gt.tensor(np.array([1.7, -2.5, 127.0]), dtype="int8").numpy(),
                                  [1, -2, 127])  # (a fraction truncates, as NumPy and PyTorch cast)
    assert gt.tensor(np.array([300]), dtype="int32").numpy().tolist() == [300]
    assert gt.tensor(np.array([], np.float64), dtype="int8").shape == (0,)
    assert gt.tensor(np.array([2.0, 0.0]), dtype=bool).numpy().tolist() == [True, False]


def test_clip_with_a_wider_integer_bound_and_no_other():
    x = gt.tensor(np.array([100, -100, 5], np.int8))
    y = gt.clip(x, np.int16(300), None)
    assert y.dtype == np.int16 and y.numpy().tolist() == [300, 300, 300]
    y = gt.clip(x, gt.tensor(np.array([300, -300, 1], np.int16)), None)
    assert y.numpy().tolist() == [300, -100, 5]
    y = gt.clip(x, None, np.int16(-300))
    assert y.dtype == np.int16 and y.numpy().tolist() == [-300, -300, -300]


@pytest.mark.parametrize("fdt", [np.float16, np.float32])
def test_clip_of_an_integer_tensor_by_a_float_bound_takes_the_floats_dtype(fdt):
    x = gt.tensor(np.array([1, 5, 9], np.int32))
    lo = gt.tensor(np.array(2, np.int32))
    hi = gt.tensor(np.array(7.5, fdt))
    y = gt.clip(x, lo, hi)
    assert y.dtype == fdt
    np.testing.assert_array_equal(y.numpy(), np.array([2, 5, 7.5], fdt))
    with gt.GradientTape() as tape:
        tape.watch(hi)
        z = gt.sum(gt.clip(x, lo, hi))
    assert tape.gradient(z, hi).dtype == fdt


@pytest.mark.parametrize("a, b", [(3, 2.5), (2.5, 3), (True, 2.5), (2.5, True)])
def test_two_python_numbers_give_the_same_dtype_in_either_order(a, b):
    for op in (gt.add, gt.mul, gt.maximum, gt.pow):
        assert op(a, b).dtype == np.float32
    mask = gt.tensor([True, False])
    assert gt.where(mask, 0, -np.inf).dtype == np.float32
    scores = gt.tensor(np.zeros(2, np.float32))
    assert (scores + gt.where(mask, 0, -np.inf)).dtype == np.float32


def test_two_python_ints_or_floats_keep_numpys_rule():
    assert gt.add(2, 3).dtype == np.int64
    assert gt.add(2.0, 3.5).dtype == np.float32


@pytest.mark.parametrize("call", [
    lambda x, t: gt.sum(x, axis=t), lambda x, t: gt.cumsum(x, axis=t),
    lambda x, t: gt.triu(x, t), lambda x, t: gt.topk(x, t), lambda x, t: gt.zeros((t, 2)),
    lambda x, t: gt.one_hot(np.array([0]), t),
])
@pytest.mark.parametrize("value", [True, 1.0], ids=["bool", "float"])
def test_a_0d_bool_or_float_tensor_is_no_axis_or_count(call, value):
    x = gt.tensor(np.arange(6, dtype=np.float32).reshape(2, 3))
    with pytest.raises(TypeError):
        call(x, gt.tensor(value))


def test_integer_arrays_and_0d_tensors_name_axes():
    x = gt.tensor(np.arange(6, dtype=np.float32).reshape(2, 3))
    assert gt.sum(x, axis=np.array([0, 1])).shape == ()
    assert gt.sum(x, axis=gt.tensor(np.array([1]))).shape == (2,)
    assert gt.moveaxis(x, gt.tensor(0), gt.tensor(1)).shape == (3, 2)
    assert gt.triu(x, gt.tensor(np.int64(1))).numpy().tolist() == [[0, 1, 2], [0, 0, 5]]


def test_dtype_names_are_numpys_dtypes():
    assert gt.ones(2).dtype == gt.float32 and gt.zeros(2, dtype=gt.float64).dtype == np.float64
    assert gt.tensor([1, 2], dtype=gt.int8).dtype == np.int8
    assert gt.tensor([True]).dtype == gt.bool_
    for name in ("float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8",
                 "complex64", "complex128"):
        assert getattr(gt, name) == np.dtype(name)


@pytest.mark.parametrize("value, src, dtype", [(2.0**31, np.float32, "int32"), (2.0**63, np.float64, "int64"),
                                               (2.0**63, np.float32, "int64"), (2.0**64, np.float64, "uint64")])
def test_a_float_at_the_integer_dtypes_bound_is_refused(value, src, dtype):
    # (the dtype's largest integer rounds up to exactly this power of two in the float dtype)
    with pytest.raises(ValueError, match=r"numbers outside"):
        gt.tensor(np.array([value], src), dtype=dtype)
    below = np.nextafter(src(value), src(0))
    assert gt.tensor(np.array([below], src), dtype=dtype).numpy()[0] == int(below)


def test_assign_refuses_a_float_at_the_integer_dtypes_bound_as_the_cast_does():
    v = gt.Variable(np.zeros(1, np.int32), name="n")
    with pytest.raises(ValueError, match=r"value holds numbers outside \[-2147483648, 2147483647\]"):
        v.assign(gt.tensor(np.array([2.0**31], np.float32)))
    v.assign(gt.tensor(np.array([2147483520.0], np.float32)))  # (the float32 just below)
    assert v.numpy().tolist() == [2147483520]
