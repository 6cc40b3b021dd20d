"""Where a device library (CuPy) computes differently from NumPy, gradtape gives the NumPy
answer, or the documented device answer, never a silently different number. Each test runs on
NumPy, on the device-strict stand-in (which does what CuPy does in each case: wraps an index
of ``take`` out of range around, gives 0 for an integer to a negative power, leaves a partial
Cholesky factor, refuses ``add.at`` of narrow dtypes) and on CuPy where present."""

from __future__ import annotations

import numpy as np
import pytest

import gradtape as gt


def test_an_index_out_of_range_inside_vmap_raises(any_backend):
    table = gt.tensor(np.arange(6.0).reshape(3, 2))
    with pytest.raises(IndexError):
        gt.vmap(lambda i: table[i])(gt.tensor(np.array([0, 5])))
    with pytest.raises(IndexError):
        gt.vmap(lambda i: gt.take(table, i, axis=0))(gt.tensor(np.array([[1], [-4]])))
    got = gt.vmap(lambda i: table[i])(gt.tensor(np.array([0, 2, -1])))
    np.testing.assert_array_equal(got.numpy(), np.arange(6.0).reshape(3, 2)[[0, 2, -1]])


@pytest.mark.parametrize("make", [
    lambda: gt.tensor([2, 3]) ** -1,
    lambda: gt.pow(gt.tensor([2, 3]), gt.tensor([1, -2])),
    lambda: gt.function(lambda a, b: a ** b)(gt.tensor([2]), gt.tensor([-1])),
], ids=["scalar", "tensor", "compiled"])
def test_an_integer_to_a_negative_integer_power_raises(any_backend, make):
    with pytest.raises(ValueError, match="negative integer exponent"):
        make()


def test_a_compiled_integer_power_checks_each_call(any_backend):
    f = gt.function(lambda a, b: a ** b)
    for _ in range(3):
        np.testing.assert_array_equal(f(gt.tensor([2, 3]), gt.tensor([2, 0])).numpy(), [4, 1])
    with pytest.raises(ValueError, match="negative integer"):  # (NumPy's words in a replay)
        f(gt.tensor([2, 3]), gt.tensor([2, -1]))


def test_a_label_outside_the_classes_never_gives_a_finite_gradient(any_backend):
    """NumPy refuses the label; a device (which reads no label back) gives that example a NaN
    loss and NaN derivatives, and the other examples their own."""
    logits = gt.Variable(np.zeros((3, 4), np.float32))
    labels = gt.tensor(np.array([1, 7, -1]))
    if any_backend == "numpy":
        with pytest.raises(ValueError, match="labels"):
            gt.nn.cross_entropy(logits, labels)
        return
    with gt.GradientTape() as tape:
        loss = gt.nn.cross_entropy(logits, labels, reduction="none")
    g = tape.gradient(loss, logits).numpy()
    assert np.isfinite(loss.numpy()[0]) and np.isnan(loss.numpy()[1:]).all()
    np.testing.assert_allclose(g[0], [0.25, -0.75, 0.25, 0.25], rtol=1e-6)
    assert np.isnan(g[1:]).all()
    _, jvp = gt.jvp(lambda z: gt.nn.cross_entropy(z, labels, reduction="none"), (logits,),
                    (gt.ones((3, 4)),))
    assert np.isfinite(jvp.numpy()[0]) and np.isnan(jvp.numpy()[1:]).all()


def test_cholesky_of_a_matrix_not_positive_definite(any_backend):
    """NumPy raises; a device's solver raises nothing and gradtape returns NaN (no partial
    factor that looks like an answer)."""
    a = gt.tensor(np.array([[[1.0, 2.0], [2.0, 1.0]], [[4.0, 2.0], [2.0, 3.0]]]))
    if any_backend == "numpy":
        with pytest.raises(np.linalg.LinAlgError):
            gt.cholesky(a)
        return
    L = gt.cholesky(a).numpy()
    assert np.isnan(L[0]).all()
    np.testing.assert_allclose(L[1], np.linalg.cholesky(a.numpy()[1]), rtol=1e-12)


@pytest.mark.parametrize("dtype", ["int8", "uint16", "bool", "complex64", "int32"])
def test_index_add_and_segment_sum_of_every_dtype(any_backend, dtype):
    rng = np.random.default_rng(0)
    ids = np.array([0, 2, 0, 0, 1, 2])
    values = rng.integers(0, 90, 6).astype(dtype) if dtype != "complex64" else \
        (rng.normal(size=6) + 1j * rng.normal(size=6)).astype(dtype)
    base = np.zeros(3, dtype)
    want = base.copy()
    np.add.at(want, ids, values)
    got = gt.index_add(gt.tensor(base), 0, gt.tensor(ids), gt.tensor(values))
    assert got.dtype == want.dtype
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-6)
    seg = gt.segment_sum(gt.tensor(values), gt.tensor(ids), 3)
    np.testing.assert_allclose(seg.numpy(), want, rtol=1e-6)


@pytest.mark.parametrize("dtype", ["float64", "float32", "float16"])
def test_float_floor_division_and_remainder_are_numpys_bit_for_bit(any_backend, dtype):
    """A device's float ``//`` and ``%`` are ``floor(a / b)``; gradtape gives NumPy's (and
    Python's) answers there too: ``1.0 // 0.1`` is 9, ``5.0 % inf`` is 5, signed zeros kept."""
    special = np.array([0.0, -0.0, 1.0, -1.0, 0.1, -0.1, 3.0, 1e-30, np.inf, -np.inf, np.nan, 0.3])
    rng = np.random.default_rng(1)
    a = np.concatenate([np.repeat(special, 12), rng.normal(size=300) * 10,
                        rng.integers(-20, 20, 300) * 0.1]).astype(dtype)
    b = np.concatenate([np.tile(special, 12), rng.normal(size=300),
                        rng.choice([0.1, -0.1, 0.3, 2.0], 300)]).astype(dtype)
    with np.errstate(all="ignore"):
        want = np.floor_divide(a, b), np.remainder(a, b)
        got = (gt.tensor(a) // gt.tensor(b)).numpy(), (gt.tensor(a) % gt.tensor(b)).numpy()
    for g, w in zip(got, want):
        same = ((g == w) & (np.signbit(g) == np.signbit(w))) | (np.isnan(g) & np.isnan(w))
        assert same.all(), (a[~same][:4], b[~same][:4], g[~same][:4], w[~same][:4])


def test_a_seeded_dropout_that_has_drawn_copies_and_pickles_on_a_device(device):
    """A device library's generator cannot be copied (CuPy's holds a lock): the layer and its
    copy go on with the same new generator, so they still draw the same masks."""
    import copy
    import pickle

    d = gt.nn.Dropout(0.5, seed=3)
    x = gt.ones(256)
    first = d(x).numpy()
    twin = copy.deepcopy(d)
    back = pickle.loads(pickle.dumps(d))
    masks = [m(x).numpy() for m in (d, twin, back)]
    np.testing.assert_array_equal(masks[1], masks[0])
    np.testing.assert_array_equal(masks[2], masks[0])
    assert not np.array_equal(masks[0], first)  # (a new draw, not the first again)
    again = [m(x).numpy() for m in (d, twin)]
    np.testing.assert_array_equal(again[0], again[1])
