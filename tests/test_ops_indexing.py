"""Indexing: getitem (basic and advanced), take, gather; gradients scatter back and accumulate."""

from __future__ import annotations

import numpy as np
import pytest

import gradtape as gt
from gradtape.extend import REGISTRY
from gradtape.testing import check_grads


@pytest.mark.parametrize("name", ["getitem", "scatter_add"])
def test_registry_examples_gradients(name):
    prim = REGISTRY[name]
    assert prim.examples is not None
    for fn, args, kwargs in prim.examples(np.random.default_rng(4)):
        check_grads(fn, args, kwargs, order=2)


X = np.arange(24.0).reshape(2, 3, 4)
INDICES = [
    1, -1, (0, 2), (slice(None), -1), (slice(None, None, -1),), (Ellipsis, slice(1, None, 2)),
    (None, 0, Ellipsis, None), (1, slice(3, 0, -2), slice(None)), np.array([1, 1, 0]),
    (slice(None), np.array([2, -1, 2])), (np.array([0, 1, 1]), np.array([2, 2, 2])),
    (np.array([[0], [1]]), slice(None), np.array([3, 3, 0])), X > 10, (1, X[0] > 4),
    (0, np.array([True, False, True])), (Ellipsis, [3, 3, 3]), (), Ellipsis,
    (slice(0, 0),), np.array([], dtype=np.intp), (0, 1, 2),
]


def _expected_grad(index, shape):
    z = np.zeros(shape)
    idx = tuple(np.asarray(i) if isinstance(i, list) else i for i in index) \
        if isinstance(index, tuple) else index
    np.add.at(z, idx, 1.0)
    return z


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("index", INDICES, ids=[str(i)[:40] for i in range(len(INDICES))])
def test_getitem_forward_and_gradient(index, dtype):
    x = gt.tensor(X.astype(dtype))
    with gt.GradientTape() as tape:
        tape.watch(x)
        y = x[index]
    expected = X.astype(dtype)[index]
    assert y.dtype == dtype and y.shape == expected.shape
    np.testing.assert_array_equal(y.numpy(), expected)
    g = tape.gradient(y, x)
    assert g.dtype == dtype and g.shape == X.shape
    np.testing.assert_array_equal(g.numpy(), _expected_grad(index, X.shape))


def test_repeated_indices_accumulate():
    x = gt.tensor(np.array([1.0, 2.0, 3.0]))
    w = gt.tensor(np.array([1.0, 10.0, 100.0, 1000.0]))
    with gt.GradientTape() as tape:
        tape.watch(x)
        y = gt.sum(x[np.array([0, 2, 0, 0])] * w)
    np.testing.assert_array_equal(tape.gradient(y, x).numpy(), [1101.0, 0.0, 10.0])


def test_index_with_integer_tensor_and_list():
    x = gt.tensor(np.array([[1.0, 2.0], [3.0, 4.0]]))
    idx = gt.tensor(np.array([1, 1, 0]))
    np.testing.assert_array_equal(x[idx].numpy(), x.numpy()[[1, 1, 0]])
    np.testing.assert_array_equal(x[[0, 0]].numpy(), x.numpy()[[0, 0]])
    np.testing.assert_array_equal(x[x > 2].numpy(), [3.0, 4.0])


def test_getitem_second_order(rng):
    x = rng.standard_normal((3, 4))
    check_grads(lambda t: gt.square(t[np.array([0, 0, 2]), 1:]), (x,), order=2)
    check_grads(lambda t: t[::-1, None, ::2] * t[0, ::2], (x,), order=2)


@pytest.mark.parametrize("axis", [None, 0, 1, -1])
def test_take_matches_numpy(axis, rng):
    x = rng.standard_normal((3, 4))
    idx = np.array([[2, 0], [-1, 2]])
    out = gt.take(gt.tensor(x), idx, axis=axis)
    np.testing.assert_array_equal(out.numpy(), np.take(x, idx, axis=axis))
    check_grads(gt.take, (x, idx), {"axis": axis}, order=2)
    assert gt.take(gt.tensor(x.astype(np.float32)), [0], axis=axis).dtype == np.float32


def test_gather_is_take_along_axis_0(rng):
    x = rng.standard_normal((3, 4))
    np.testing.assert_array_equal(gt.gather(gt.tensor(x), [2, 2, 0]).numpy(), x[[2, 2, 0]])
    np.testing.assert_array_equal(gt.gather(gt.tensor(x), [3, 1], axis=-1).numpy(), x[:, [3, 1]])
    x_t = gt.tensor(x)
    with gt.GradientTape() as tape:
        tape.watch(x_t)
        y = gt.gather(x_t, [1, 1, 1])
    np.testing.assert_array_equal(tape.gradient(y, x_t).numpy()[1], np.full(4, 3.0))


def test_indexing_errors():
    x = gt.tensor(np.ones((2, 3)))
    with pytest.raises(IndexError, match=r"indexing a tensor of shape \(2, 3\)"):
        x[5]
    with pytest.raises(IndexError, match="index arrays must be integer or bool, got dtype float64"):
        x[np.array([0.5])]
    with pytest.raises(IndexError, match="index tensors must be integer or bool"):
        x[gt.tensor([0.0])]
    with pytest.raises(IndexError, match="unsupported index item of type str"):
        x["a"]
    with pytest.raises(ValueError, match="take: axis 2 is out of range for a tensor of rank 2"):
        gt.take(x, [0], axis=2)


# --------------------------------------------------------------------------- range on a device
@pytest.mark.parametrize("make", [
    lambda t: t[t.new([0, 3])],
    lambda t: t[t.new([-4])],
    lambda t: t[..., t.new([4])],
    lambda t: t[:, t.new([[0], [5]])],
    lambda t: t[t.new([1]), t.new([9])],
    lambda t: gt.take(t.x, t.new([0, 12])),
    lambda t: gt.gather(t.x, t.new([2, 3]), axis=0),
    lambda t: t[[0, 3]],
    lambda t: t[:, np.array([[0], [5]])],
    lambda t: t[True, t.new([-4])],
    lambda t: t[None, ..., np.array([-5])],
], ids=["rows", "negative", "ellipsis", "columns", "pair", "take", "gather", "host_list", "host_array",
        "bool_scalar", "new_axis"])
def test_an_index_array_out_of_range_raises_on_every_backend(any_backend, make):
    """A device library's integer-array indexing wraps an index out of range around (CuPy's
    does): gradtape checks the range, so every backend raises IndexError, never another
    element."""
    class On:
        x = gt.tensor(np.arange(12.0).reshape(3, 4))

        def __getitem__(self, index):
            return self.x[index]

        @staticmethod
        def new(values):
            return gt.tensor(np.array(values))

    with pytest.raises(IndexError):
        make(On())


def test_an_index_out_of_range_raises_inside_a_compiled_step_on_every_backend(any_backend):
    f = gt.function(lambda x, i: x[i] * 2.0)
    x = gt.tensor(np.arange(5, dtype=np.float32))
    for k in range(3):  # traced, then replayed
        np.testing.assert_array_equal(f(x, gt.tensor(np.array([0, k]))).numpy(), [0.0, 2.0 * k])
    with pytest.raises(IndexError, match="out of"):
        f(x, gt.tensor(np.array([0, 9])))
    np.testing.assert_array_equal(f(x, gt.tensor(np.array([4]))).numpy(), [8.0])


@pytest.mark.parametrize("index", [
    (True, [2]), (np.True_, np.array([2, -3])), (None, Ellipsis, [1, -1]), ([[0], [2]], [1, 3]),
    (np.array([[1], [5]]), np.array([], int)), (np.array([2, -1], np.int8),), (slice(1, None), [0]),
    (np.array([[True, False, True, False]] * 3),), (1, [3, -4]),
], ids=lambda i: repr(i)[:40])
def test_valid_index_arrays_select_as_numpy_on_every_backend(any_backend, index):
    """The range check reads each index array against its own axis (new axes from None and
    a scalar bool, an Ellipsis, masks spanning several axes), checks nothing where the result
    is empty, as NumPy, and takes a narrow index dtype."""
    a = np.arange(12.0).reshape(3, 4)
    as_t = tuple(gt.tensor(np.asarray(i)) if isinstance(i, np.ndarray) and i.dtype != bool else i
                 for i in index)
    np.testing.assert_array_equal(gt.tensor(a)[as_t].numpy(), a[index])


def test_a_narrow_index_dtype_reaches_past_its_range_on_every_backend(any_backend):
    a = np.arange(300.0)
    idx = np.array([1, -2], np.int8)  # -2 is the element 298
    np.testing.assert_array_equal(gt.tensor(a)[gt.tensor(idx)].numpy(), a[idx])
    np.testing.assert_array_equal(gt.take(gt.tensor(a), idx).numpy(), a[idx])
