"""Semantics of the rounding, scan, sorting, matrix-building and segment ops that the
registry-driven tests do not pin down: forward values against NumPy (and TensorFlow's
unsorted_segment_sum rule), edge cases (empty, 0-d, negative axes, ties, NaN), errors, and the
gradient conventions (zero gradients of rounding, ties in sort, zeros in cumprod, repeats in
take_along_axis). The ops built from other primitives (sort, topk, triu, tril, diag, trace,
meshgrid, take_along_axis, index_add, segment_sum) also get float32, vmap and jvp checks here."""

from __future__ import annotations

import math

import numpy as np
import pytest

import gradtape as gt
from gradtape.testing import check_grads


def _grad(fn, x, u=None):
    x = gt.tensor(np.asarray(x, dtype=np.float64))
    with gt.GradientTape() as tape:
        tape.watch(x)
        y = fn(x)
    return tape.gradient(y, x, output_gradients=None if u is None else gt.tensor(u),
                         unconnected_gradients="none")


# --------------------------------------------------------------------------- elementwise
def test_rounding_matches_numpy_and_has_zero_gradient():
    x = np.array([-2.5, -1.5, -0.5, -0.2, 0.0, 0.5, 1.5, 2.5, 2.7, -2.7])
    for name in ("floor", "ceil", "round", "trunc"):
        op = getattr(gt, name)
        out = op(gt.tensor(x))
        np.testing.assert_array_equal(out.numpy(), getattr(np, name)(x), err_msg=name)
        assert out.dtype == np.float64
        g = _grad(op, x)
        assert g is not None, f"{name}: the gradient is zeros, not unconnected"
        np.testing.assert_array_equal(g.numpy(), np.zeros_like(x))
        # product rule with a zero derivative: d(x * floor(x)) = floor(x)
        g = _grad(lambda t, op=op: gt.sum(t * op(t)), x)
        np.testing.assert_array_equal(g.numpy(), getattr(np, name)(x))
    np.testing.assert_array_equal(gt.round(gt.tensor([0.5, 1.5, 2.5, -0.5])).numpy(),
                                  [0.0, 2.0, 2.0, -0.0])  # halves to even
    assert np.signbit(gt.round(gt.tensor(-0.4)).numpy())
    assert gt.floor(gt.tensor([1.5], dtype="float32")).dtype == np.float32


def test_erfc_is_accurate_in_the_tail():
    x = np.array([-6.0, -3.0, -0.3, 0.0, 0.4, 1.0, 3.0, 6.0, 10.0, 26.0, 30.0, np.inf, -np.inf])
    ref = np.array([math.erfc(v) for v in x])
    np.testing.assert_allclose(gt.erfc(gt.tensor(x)).numpy(), ref, rtol=1e-13, atol=0)
    assert gt.erfc(gt.tensor([6.0])).numpy()[0] > 0  # 1 - erf would be 0 in float32
    assert np.isnan(gt.erfc(gt.tensor([np.nan])).numpy()[0])
    g = _grad(gt.erfc, [0.0, 1.0])
    np.testing.assert_allclose(g.numpy(), -2 / math.sqrt(math.pi) * np.exp(-np.array([0.0, 1.0])))


def test_arctan2_quadrants_and_hypot_range():
    y = np.array([1.0, 1.0, -1.0, -1.0, 0.0, 0.0, -0.0, 2.0])
    x = np.array([1.0, -1.0, 1.0, -1.0, -1.0, 1.0, -1.0, 0.0])
    np.testing.assert_array_equal(gt.arctan2(gt.tensor(y), gt.tensor(x)).numpy(), np.arctan2(y, x))
    big = np.array([1e200, 3e-200])
    np.testing.assert_allclose(gt.hypot(gt.tensor(big), gt.tensor(big)).numpy(),
                               big * math.sqrt(2), rtol=1e-15)
    out = gt.arctan2(gt.tensor([[1.0], [2.0]]), gt.tensor([1.0, 2.0, 3.0]))  # broadcasting
    assert out.shape == (2, 3)


def test_arctan2_and_hypot_gradients_are_zero_at_the_origin():
    for fn in (gt.arctan2, gt.hypot):
        a = gt.tensor(np.array([0.0, 3.0]))
        b = gt.tensor(np.array([0.0, 4.0]))
        with gt.GradientTape() as tape:
            tape.watch([a, b])
            y = fn(a, b)
        ga, gb = tape.gradient(y, [a, b])
        assert np.isfinite(ga.numpy()).all() and np.isfinite(gb.numpy()).all(), fn.__name__
        assert ga.numpy()[0] == 0.0 and gb.numpy()[0] == 0.0
    check_grads(gt.arctan2, (np.array([0.3, -1.2, 2.0]), np.array([-1.5, 0.4, 0.0])))
    check_grads(gt.hypot, (np.array([0.3, -1.2, 0.0]), np.array([-1.5, 0.4, 2.0])))


# --------------------------------------------------------------------------- scans
@pytest.mark.parametrize("name", ["cumsum", "cumprod"])
def test_scans_match_numpy(name):
    rng = np.random.default_rng(0)
    x = rng.uniform(0.5, 1.5, (2, 3, 4))
    fn, ref = getattr(gt, name), getattr(np, name)
    for axis in (None, 0, 1, 2, -1, -3):
        np.testing.assert_allclose(fn(gt.tensor(x), axis=axis).numpy(), ref(x, axis=axis),
                                   rtol=1e-14, err_msg=f"axis={axis}")
    assert fn(gt.tensor(np.zeros((0, 3))), axis=0).shape == (0, 3)
    assert fn(gt.tensor(np.zeros((0, 3)))).shape == (0,)
    # 0-d: axis=None flattens (NumPy), an int axis keeps it 0-d (PyTorch)
    assert fn(gt.tensor(2.0)).shape == (1,)
    assert fn(gt.tensor(2.0), axis=-1).shape == ()
    assert float(fn(gt.tensor(2.0), axis=0)) == 2.0
    ints = fn(gt.tensor(np.array([1, 2, 3], dtype=np.int32)))
    assert ints.dtype == ref(np.array([1, 2, 3], dtype=np.int32)).dtype
    with pytest.raises(ValueError, match="out of range"):
        fn(gt.tensor(x), axis=3)
    with pytest.raises(TypeError, match="axis"):
        fn(gt.tensor(x), axis=(0, 1))


def test_cumsum_gradient_is_the_reversed_cumsum():
    u = np.array([1.0, 2.0, 3.0, 4.0])
    g = _grad(lambda t: gt.cumsum(t), np.zeros(4), u)
    np.testing.assert_array_equal(g.numpy(), np.cumsum(u[::-1])[::-1])


def test_cumprod_gradient_with_zeros():
    """First order exact with any number of zeros; second order with one zero per slice."""
    rng = np.random.default_rng(1)
    x = np.array([[0.5, 0.0, 1.5, -2.0, 0.7],
                  [0.0, 0.7, 0.0, 1.3, 0.4],   # two zeros
                  [1.2, -0.8, 0.9, 0.0, 0.0],  # zeros at the end
                  [0.0, 0.0, 0.0, 0.0, 0.0]])
    check_grads(lambda t: gt.cumprod(t, axis=1), (x,), order=1)
    check_grads(lambda t: gt.cumprod(t, axis=1), (x[:1],), order=2)
    # against the explicit Jacobian: d y_j / d x_i = prod_{k <= j, k != i} x_k
    u = rng.standard_normal(x.shape)
    g = _grad(lambda t: gt.cumprod(t, axis=1), x, u).numpy()
    want = np.zeros_like(x)
    for r in range(x.shape[0]):
        for i in range(x.shape[1]):
            for j in range(i, x.shape[1]):
                want[r, i] += u[r, j] * np.prod(np.delete(x[r, :j + 1], i))
    np.testing.assert_allclose(g, want, rtol=1e-12, atol=1e-12)
    assert np.isfinite(g).all()
    # forward mode agrees with the reverse pass
    v = rng.standard_normal(x.shape)
    _, t = gt.jvp(lambda a: gt.cumprod(a, axis=1), (gt.tensor(x),), (gt.tensor(v),))
    jac = np.zeros(x.shape)
    for r in range(x.shape[0]):
        for j in range(x.shape[1]):
            jac[r, j] = sum(v[r, i] * np.prod(np.delete(x[r, :j + 1], i)) for i in range(j + 1))
    np.testing.assert_allclose(t.numpy(), jac, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- sorting
def _stable_descending(x: np.ndarray, axis: int) -> np.ndarray:
    """Indices sorting ``x`` descending with ties in their original order (a reference)."""
    x = np.moveaxis(x, axis, -1)
    pos = np.broadcast_to(np.arange(x.shape[-1]), x.shape)
    idx = np.empty(x.shape, dtype=np.intp)
    for k in np.ndindex(x.shape[:-1]):
        idx[k] = np.lexsort((pos[k], -x[k]))
    return np.moveaxis(idx, -1, axis)


def test_argsort_and_sort_match_numpy_with_ties():
    rng = np.random.default_rng(2)
    x = rng.integers(-2, 3, (3, 4, 5)).astype(np.float64)  # many ties
    for axis in (0, 1, 2, -1, -2):
        np.testing.assert_array_equal(gt.argsort(gt.tensor(x), axis=axis).numpy(),
                                      np.argsort(x, axis=axis, kind="stable"))
        np.testing.assert_array_equal(gt.argsort(gt.tensor(x), axis=axis, descending=True).numpy(),
                                      _stable_descending(x, axis))
        np.testing.assert_array_equal(gt.sort(gt.tensor(x), axis=axis).numpy(), np.sort(x, axis=axis))
        np.testing.assert_array_equal(gt.sort(gt.tensor(x), axis=axis, descending=True).numpy(),
                                      np.flip(np.sort(x, axis=axis), axis=axis))
    np.testing.assert_array_equal(gt.sort(gt.tensor(x), axis=None).numpy(), np.sort(x, axis=None))
    np.testing.assert_array_equal(gt.argsort(gt.tensor(x), axis=None).numpy(),
                                  np.argsort(x, axis=None, kind="stable"))
    assert gt.argsort(gt.tensor(x)).dtype == np.int64


def test_sort_edge_cases():
    nan = np.array([2.0, np.nan, -1.0, 5.0])
    np.testing.assert_array_equal(gt.sort(gt.tensor(nan)).numpy(), np.sort(nan))  # NaN last
    assert np.isnan(gt.sort(gt.tensor(nan), descending=True).numpy()[0])  # NaN first
    assert gt.argsort(gt.tensor(nan), descending=True).numpy().tolist() == [1, 3, 0, 2]
    assert gt.sort(gt.tensor(np.zeros((2, 0)))).shape == (2, 0)
    assert gt.argsort(gt.tensor(np.zeros((0,)))).shape == (0,)
    assert float(gt.sort(gt.tensor(3.0))) == 3.0 and gt.sort(gt.tensor(3.0)).shape == ()
    assert gt.argsort(gt.tensor(3.0)).shape == () and int(gt.argsort(gt.tensor(3.0))) == 0
    assert gt.sort(gt.tensor(3.0), axis=None).shape == (1,)
    ints = gt.sort(gt.tensor(np.array([3, 1, 2])))
    assert ints.dtype == np.int64 and ints.numpy().tolist() == [1, 2, 3]
    with pytest.raises(ValueError, match="out of range"):
        gt.sort(gt.tensor(np.ones((2, 3))), axis=2)
    with pytest.raises(TypeError, match="axis"):
        gt.argsort(gt.tensor(np.ones((2, 3))), axis=(0,))


def test_sort_gradient_follows_the_permutation_with_ties():
    x = np.array([3.0, 1.0, 3.0, 2.0, 1.0])
    u = np.array([10.0, 20.0, 30.0, 40.0, 50.0])
    # ascending: 1 (x1), 1 (x4), 2 (x3), 3 (x0), 3 (x2)
    np.testing.assert_array_equal(_grad(gt.sort, x, u).numpy(), [40.0, 10.0, 50.0, 30.0, 20.0])
    # descending, ties still in their order: 3 (x0), 3 (x2), 2 (x3), 1 (x1), 1 (x4)
    g = _grad(lambda t: gt.sort(t, descending=True), x, u)
    np.testing.assert_array_equal(g.numpy(), [10.0, 40.0, 20.0, 30.0, 50.0])


def test_topk():
    x = np.array([[1.0, 4.0, 2.0, 4.0, -1.0], [0.0, -2.0, 5.0, 5.0, 5.0]])
    values, indices = gt.topk(gt.tensor(x), 3)
    np.testing.assert_array_equal(values.numpy(), [[4.0, 4.0, 2.0], [5.0, 5.0, 5.0]])
    np.testing.assert_array_equal(indices.numpy(), [[1, 3, 2], [2, 3, 4]])  # ties: lower first
    assert indices.dtype == np.int64 and values.dtype == np.float64
    v0, i0 = gt.topk(gt.tensor(x), 2, axis=0)
    np.testing.assert_array_equal(v0.numpy(), np.sort(x, axis=0)[::-1])
    np.testing.assert_array_equal(i0.numpy(), [[0, 0, 1, 1, 1], [1, 1, 0, 0, 0]])
    empty_v, empty_i = gt.topk(gt.tensor(x), 0)
    assert empty_v.shape == empty_i.shape == (2, 0)
    assert gt.topk(gt.tensor(x), 5)[0].shape == (2, 5)
    v, i = gt.topk(gt.tensor(3.0), 1)
    assert v.shape == i.shape == () and int(i) == 0
    for bad in (6, -1):
        with pytest.raises(ValueError, match=f"k={bad} is out of range for an axis of size 5"):
            gt.topk(gt.tensor(x), bad)
    with pytest.raises(ValueError, match="k=2"):
        gt.topk(gt.tensor(3.0), 2)
    with pytest.raises(TypeError, match="k must be an int"):
        gt.topk(gt.tensor(x), True)
    # the gradient reaches the selected elements only
    u = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    g = _grad(lambda t: gt.topk(t, 3)[0], x, u)
    np.testing.assert_array_equal(g.numpy(), [[0.0, 1.0, 3.0, 2.0, 0.0], [0.0, 0.0, 4.0, 5.0, 6.0]])


# --------------------------------------------------------------------------- shape and matrices
def test_roll_matches_numpy():
    x = np.arange(24.0).reshape(2, 3, 4)
    for shift, axis in [(1, None), (25, None), (-1, -1), ((1, 2), (0, 2)), (2, (0, 1)),
                        ((1, 1), 0), (3, 1), (0, 1), (4, 2)]:
        np.testing.assert_array_equal(gt.roll(gt.tensor(x), shift, axis).numpy(),
                                      np.roll(x, shift, axis), err_msg=f"{shift} {axis}")
    assert float(gt.roll(gt.tensor(2.0), 3)) == 2.0
    assert gt.roll(gt.tensor(np.zeros((0, 2))), 1, 0).shape == (0, 2)
    u = np.arange(4.0)
    np.testing.assert_array_equal(_grad(lambda t: gt.roll(t, 1), np.zeros(4), u).numpy(),
                                  np.roll(u, -1))
    with pytest.raises(ValueError, match="2 shifts for 3 axes"):
        gt.roll(gt.tensor(x), (1, 2), (0, 1, 2))
    with pytest.raises(TypeError, match="shift"):
        gt.roll(gt.tensor(x), 1.5)


def test_triangles_diag_trace_match_numpy():
    rng = np.random.default_rng(3)
    m = rng.standard_normal((3, 4))
    s = rng.standard_normal((2, 3, 4))
    v = rng.standard_normal(3)
    for k in (-4, -1, 0, 1, 2, 6):
        for a in (m, s, v):
            np.testing.assert_array_equal(gt.triu(gt.tensor(a), k).numpy(), np.triu(a, k))
            np.testing.assert_array_equal(gt.tril(gt.tensor(a), k).numpy(), np.tril(a, k))
        np.testing.assert_array_equal(gt.diag(gt.tensor(m), k).numpy(), np.diag(m, k))
        np.testing.assert_array_equal(gt.diag(gt.tensor(v), k).numpy(), np.diag(v, k))
        np.testing.assert_allclose(gt.trace(gt.tensor(m), k).numpy(), np.trace(m, k), rtol=1e-15)
        for a1, a2 in [(0, 1), (2, 0), (-1, -2)]:
            np.testing.assert_allclose(gt.trace(gt.tensor(s), k, a1, a2).numpy(),
                                       np.trace(s, k, a1, a2), rtol=1e-14)
    assert gt.diag(gt.tensor(np.zeros(0))).shape == (0, 0)
    assert gt.triu(gt.tensor(np.ones((2, 3), dtype=np.int64))).dtype == np.int64
    assert gt.tril(gt.tensor(np.ones((2, 2), dtype=bool))).dtype == np.bool_
    with pytest.raises(ValueError, match="1-D .* or 2-D"):
        gt.diag(gt.tensor(s))
    with pytest.raises(ValueError, match="at least 2 axes"):
        gt.trace(gt.tensor(v))
    with pytest.raises(ValueError, match="must differ"):
        gt.trace(gt.tensor(m), axis1=1, axis2=-1)
    with pytest.raises(ValueError, match="0-d"):
        gt.triu(gt.tensor(1.0))
    with pytest.raises(TypeError, match="k must be an int"):
        gt.tril(gt.tensor(m), 0.5)


def test_diag_and_trace_gradients():
    u = np.arange(9.0).reshape(3, 3)
    np.testing.assert_array_equal(_grad(gt.diag, np.ones(3), u).numpy(), [0.0, 4.0, 8.0])
    np.testing.assert_array_equal(_grad(gt.trace, np.ones((2, 3))).numpy(),
                                  [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    np.testing.assert_array_equal(_grad(lambda t: gt.triu(t, 1), np.ones((2, 2))).numpy(),
                                  [[0.0, 1.0], [0.0, 0.0]])


def test_meshgrid_matches_numpy():
    a, b, c = np.arange(3.0), np.arange(2.0) + 10, np.array([[5.0, 6.0]])
    for indexing in ("xy", "ij"):
        for args in [(a,), (a, b), (a, b, c), (np.float64(7.0), a)]:
            got = gt.meshgrid(*[gt.tensor(x) for x in args], indexing=indexing)
            want = np.meshgrid(*args, indexing=indexing)
            assert isinstance(got, list) and len(got) == len(want)
            for g, w in zip(got, want):
                np.testing.assert_array_equal(g.numpy(), w)
    assert gt.meshgrid() == []
    with pytest.raises(ValueError, match="indexing"):
        gt.meshgrid(a, indexing="xyz")
    u = np.ones((2, 3))  # "xy": the first input repeats along axis 0
    np.testing.assert_array_equal(_grad(lambda t: gt.meshgrid(t, gt.tensor(b))[0], a, u).numpy(),
                                  [2.0, 2.0, 2.0])


# --------------------------------------------------------------------------- indexing
def test_take_along_axis_matches_numpy():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 4, 5))
    for axis, idx in [(0, rng.integers(-3, 3, (2, 4, 5))), (1, rng.integers(-4, 4, (3, 6, 5))),
                      (-1, rng.integers(0, 5, (3, 4, 2))), (2, rng.integers(0, 5, (1, 4, 3))),
                      (1, rng.integers(0, 4, (3, 2, 1)))]:
        np.testing.assert_array_equal(gt.take_along_axis(gt.tensor(x), idx, axis).numpy(),
                                      np.take_along_axis(x, idx, axis))
    flat = np.array([0, -1, 7, 7])
    np.testing.assert_array_equal(gt.take_along_axis(gt.tensor(x), flat, None).numpy(),
                                  np.take_along_axis(x, flat, None))
    # x broadcasts along a length-1 axis too
    x1 = rng.standard_normal((1, 4))
    idx = np.array([[0, 3], [1, 1], [2, 0]])
    np.testing.assert_array_equal(gt.take_along_axis(gt.tensor(x1), idx, 1).numpy(),
                                  np.take_along_axis(x1, idx, 1))
    assert gt.take_along_axis(gt.tensor(x), np.zeros((3, 0, 5), dtype=int), 1).shape == (3, 0, 5)


def test_take_along_axis_gradient_accumulates_and_errors():
    u = np.array([[1.0, 2.0, 3.0]])
    g = _grad(lambda t: gt.take_along_axis(t, np.array([[2, 0, 2]]), 1), np.zeros((1, 4)), u)
    np.testing.assert_array_equal(g.numpy(), [[2.0, 0.0, 4.0, 0.0]])
    x = gt.tensor(np.zeros((2, 3)))
    with pytest.raises(IndexError, match="holds the index 3, out of range for an axis of size 3"):
        gt.take_along_axis(x, np.array([[0], [3]]), 1)
    with pytest.raises(IndexError, match="-4"):
        gt.take_along_axis(x, np.array([[0], [-4]]), 1)
    with pytest.raises(TypeError, match="integers"):
        gt.take_along_axis(x, np.array([[0.0]]), 1)
    with pytest.raises(ValueError, match="rank of x"):
        gt.take_along_axis(x, np.array([0, 1]), 1)
    with pytest.raises(ValueError, match="do not broadcast"):
        gt.take_along_axis(x, np.zeros((3, 1), dtype=int), 1)
    with pytest.raises(ValueError, match="1-D"):
        gt.take_along_axis(x, np.zeros((1, 1), dtype=int), None)


def test_index_add_matches_add_at():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 4))
    idx = np.array([0, 3, 0, -1, 2])
    v = rng.standard_normal((3, 5))
    want = x.copy()
    np.add.at(want, (slice(None), idx), v)
    np.testing.assert_allclose(gt.index_add(gt.tensor(x), 1, idx, gt.tensor(v)).numpy(), want,
                               rtol=1e-15)
    np.testing.assert_allclose(gt.index_add(gt.tensor(x), -1, idx, 1.0).numpy(),  # broadcast
                               x + np.bincount(idx % 4, minlength=4), rtol=1e-15)
    assert gt.index_add(gt.tensor(x), 0, np.array([], dtype=int), np.zeros((0, 4))).shape == (3, 4)
    gx = _grad(lambda t: gt.index_add(t, 1, idx, gt.tensor(v)), x)
    np.testing.assert_array_equal(gx.numpy(), np.ones_like(x))
    u = rng.standard_normal((3, 4))
    gv = _grad(lambda t: gt.index_add(gt.tensor(x), 1, idx, t), v, u)
    np.testing.assert_array_equal(gv.numpy(), u[:, idx])
    with pytest.raises(ValueError, match=r"values must have shape \(3, 5\)"):
        gt.index_add(gt.tensor(x), 1, idx, np.ones((3, 4)))
    with pytest.raises(IndexError, match="out of range for an axis of size 3"):
        gt.index_add(gt.tensor(x), 0, [3], np.ones((1, 4)))
    with pytest.raises(ValueError, match="0-d"):
        gt.index_add(gt.tensor(1.0), 0, [0], 1.0)


def _segment_reference(data: np.ndarray, ids: np.ndarray, n: int) -> np.ndarray:
    rest = data.shape[ids.ndim:]
    out = np.zeros((n, *rest))
    for pos in np.ndindex(ids.shape):
        if ids[pos] >= 0:
            out[ids[pos]] += data[pos]
    return out


def test_segment_sum_follows_tensorflow():
    rng = np.random.default_rng(6)
    for shape, ids, n in [((5, 3), np.array([0, 2, 0, 3, 2]), 4),
                          ((5,), np.array([1, 1, -1, 0, 1]), 3),
                          ((2, 3, 2), np.array([[1, -1, 0], [1, 1, -2]]), 2),
                          ((4,), np.array([-1, -1, -1, -1]), 2),
                          ((0, 2), np.zeros(0, dtype=int), 3),
                          ((3,), np.array([0, 1, 1]), 5)]:
        data = rng.standard_normal(shape)
        got = gt.segment_sum(gt.tensor(data), ids, n)
        np.testing.assert_allclose(got.numpy(), _segment_reference(data, ids, n), rtol=1e-15)
        assert got.shape == (n, *shape[ids.ndim:])
    u = np.array([10.0, 20.0, 30.0])
    g = _grad(lambda t: gt.segment_sum(t, np.array([2, 0, -1, 2]), 3), np.zeros(4), u)
    np.testing.assert_array_equal(g.numpy(), [30.0, 10.0, 0.0, 30.0])  # dropped entry: 0
    data = gt.tensor(np.ones(3))
    with pytest.raises(ValueError, match="segment_ids holds 3, not below num_segments=3"):
        gt.segment_sum(data, [0, 3, 1], 3)
    with pytest.raises(ValueError, match="prefix"):
        gt.segment_sum(data, [0, 1], 2)
    with pytest.raises(ValueError, match=">= 0"):
        gt.segment_sum(data, [0, 0, 0], -1)
    with pytest.raises(TypeError, match="num_segments must be an int"):
        gt.segment_sum(data, [0, 0, 0], True)
    with pytest.raises(TypeError, match="integers"):
        gt.segment_sum(data, [0.0, 1.0, 0.0], 2)


def test_softmax_at_the_top_level():
    assert gt.softmax is gt.nn.softmax and gt.log_softmax is gt.nn.log_softmax
    assert "softmax" in gt.__all__ and "log_softmax" in gt.__all__


# --------------------------------------------------------------------------- wrappers, transformed
def _distinct(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.permutation(int(np.prod(shape))).reshape(shape) * 0.5 - 2.0


def _wrapper_cases() -> list:
    rng = np.random.default_rng(7)
    m = rng.standard_normal((3, 4))
    return [
        ("sort", lambda x: gt.sort(x, axis=0, descending=True), (_distinct(rng, 3, 4),)),
        ("topk", lambda x: gt.topk(x, 2)[0], (_distinct(rng, 3, 4),)),
        ("triu", lambda x: gt.triu(x, -1), (m,)),
        ("tril", lambda x: gt.tril(x, 1), (m,)),
        ("diag_read", lambda x: gt.diag(x, 1), (m,)),
        ("diag_build", lambda x: gt.diag(x, -1), (m[0],)),
        ("trace", lambda x: gt.trace(x, 1), (rng.standard_normal((3, 4, 2)),)),
        ("meshgrid", lambda a, b: gt.meshgrid(a, b)[0] * gt.meshgrid(a, b)[1], (m[0], m[1, :3])),
        ("take_along_axis", lambda x: gt.take_along_axis(x, np.array([[2, 0, -1, 2]]), 0), (m,)),
        ("index_add", lambda x, v: gt.index_add(x, 0, np.array([2, 0, 2]), v),
         (m, rng.standard_normal((3, 4)))),
        ("segment_sum", lambda x: gt.segment_sum(x, np.array([1, -1, 1]), 2), (m,)),
        ("roll", lambda x: gt.roll(x, (1, -2), (0, 1)), (m,)),
        ("cumprod", lambda x: gt.cumprod(x, axis=0), (m,)),
    ]


CASES = _wrapper_cases()


@pytest.mark.parametrize("name,fn,args", CASES, ids=[c[0] for c in CASES])
def test_wrapper_float32_keeps_dtype(name, fn, args):
    ts = [gt.tensor(a.astype(np.float32)) for a in args]
    with gt.GradientTape() as tape:
        tape.watch(ts)
        y = fn(*ts)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y.numpy(), fn(*[gt.tensor(a) for a in args]).numpy(), rtol=1e-5,
                               atol=1e-5)
    for t, g in zip(ts, tape.gradient(y, ts)):
        assert g is not None and g.dtype == np.float32 and g.shape == t.shape


@pytest.mark.parametrize("name,fn,args", CASES, ids=[c[0] for c in CASES])
def test_wrapper_vmap_matches_the_loop(name, fn, args):
    rng = np.random.default_rng(8)
    batch = [np.stack([a + 0.01 * rng.standard_normal(a.shape) * (b > 0) for b in range(3)], -1)
             for a in args]
    got = gt.vmap(fn, in_axes=-1)(*[gt.tensor(b) for b in batch])
    want = np.stack([fn(*[gt.tensor(b[..., i]) for b in batch]).numpy() for i in range(3)])
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-12)
    # per-example gradients: vmap of grad
    per = gt.vmap(gt.grad(lambda *xs: gt.sum(fn(*xs) ** 2)), in_axes=-1)(*[gt.tensor(b) for b in batch])
    for i in range(3):
        ref = gt.grad(lambda *xs: gt.sum(fn(*xs) ** 2))(*[gt.tensor(b[..., i]) for b in batch])
        np.testing.assert_allclose(per[i].numpy(), ref.numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name,fn,args", CASES, ids=[c[0] for c in CASES])
def test_wrapper_jvp_matches_central_differences(name, fn, args):
    rng = np.random.default_rng(9)
    dirs = [rng.standard_normal(a.shape) for a in args]
    _, t = gt.jvp(fn, tuple(gt.tensor(a) for a in args), tuple(gt.tensor(d) for d in dirs))
    h = 1e-6
    plus = fn(*[gt.tensor(a + h * d) for a, d in zip(args, dirs)]).numpy()
    minus = fn(*[gt.tensor(a - h * d) for a, d in zip(args, dirs)]).numpy()
    np.testing.assert_allclose(t.numpy(), (plus - minus) / (2 * h), rtol=1e-6, atol=1e-7)
    check_grads(fn, args, order=2)


def test_take_along_axis_with_an_index_per_example():
    x = gt.tensor(np.arange(12.0).reshape(3, 4))
    idx = gt.tensor(np.array([[[0, 3]], [[1, 1]], [[2, -1]]]))  # [B=3, 1, 2]
    out = gt.vmap(lambda i: gt.take_along_axis(x, i, 1))(idx)
    want = np.stack([np.take_along_axis(x.numpy(), idx.numpy()[b], 1) for b in range(3)])
    np.testing.assert_array_equal(out.numpy(), want)
    with pytest.raises(IndexError, match="out of range"):  # every example's indices are checked
        gt.vmap(lambda i: gt.take_along_axis(x, i, 1))(gt.tensor(np.array([[[0]], [[4]]])))
