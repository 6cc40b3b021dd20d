"""matmul, dot, einsum, outer: forward against NumPy, gradients (first and second order), errors."""

from __future__ import annotations

import numpy as np
import pytest

import gradtape as gt
from gradtape.extend import REGISTRY
from gradtape.testing import check_grads


@pytest.mark.parametrize("name", ["matmul", "dot", "einsum", "outer"])
def test_registry_examples_gradients(name):
    prim = REGISTRY[name]
    assert prim.examples is not None
    for fn, args, kwargs in prim.examples(np.random.default_rng(3)):
        check_grads(fn, args, kwargs, order=2)


MATMUL_SHAPES = [((2, 3), (3, 4)), ((3,), (3,)), ((3,), (3, 4)), ((2, 3), (3,)),
                 ((3,), (5, 3, 2)), ((5, 2, 3), (3,)), ((5, 2, 3), (3, 4)),
                 ((2, 1, 2, 3), (4, 3, 2)), ((0, 3), (3, 2)), ((2, 0), (0, 3))]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("sa,sb", MATMUL_SHAPES)
def test_matmul_forward(sa, sb, dtype, rng):
    a = rng.standard_normal(sa).astype(dtype)
    b = rng.standard_normal(sb).astype(dtype)
    out = gt.matmul(gt.tensor(a), gt.tensor(b))
    assert out.dtype == dtype and out.shape == np.matmul(a, b).shape
    np.testing.assert_allclose(out.numpy(), a @ b, rtol=1e-5 if dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("sa,sb", MATMUL_SHAPES)
def test_matmul_gradients_second_order(sa, sb, rng):
    a, b = rng.standard_normal(sa), rng.standard_normal(sb)
    if a.size == 0 or b.size == 0:
        return
    check_grads(gt.matmul, (a, b), order=2)
    # a genuinely non-zero second derivative: (a @ b) squared
    check_grads(lambda x, y: gt.square(x @ y), (a, b), order=2)


def test_matmul_mixed_dtypes_gradient_dtype(rng):
    a = gt.tensor(rng.standard_normal((2, 3)).astype(np.float32))
    b = gt.tensor(rng.standard_normal((3, 2)))
    with gt.GradientTape() as tape:
        tape.watch([a, b])
        y = gt.sum(a @ b)
    assert y.dtype == np.float64
    ga, gb = tape.gradient(y, [a, b])
    assert ga.dtype == np.float32 and gb.dtype == np.float64


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matmul_with_few_entries_over_a_long_inner_axis(dtype, rng):
    """A product with few entries over a long inner axis (a dense layer's weight gradient with
    few features over a large batch) is summed from pieces of that axis on the host, the last
    one short: the same values as one product, forward and as a gradient, float32 as accurate."""
    x = rng.normal(size=(50001, 3)).astype(dtype)
    w = gt.Variable(rng.normal(size=(3, 8)).astype(dtype))
    g = rng.normal(size=(50001, 8)).astype(dtype)
    with gt.GradientTape() as tape:
        y = gt.matmul(gt.tensor(x), w)
    gw = tape.gradient(y, w, output_gradients=gt.tensor(g)).numpy()
    want = x.astype(np.float64).T @ g.astype(np.float64)
    tol = dict(rtol=1e-10, atol=1e-9) if dtype == np.float64 else dict(rtol=1e-4, atol=2e-2)
    assert gw.dtype == dtype
    np.testing.assert_allclose(gw, want, **tol)
    direct = gt.matmul(gt.tensor(x.T), gt.tensor(g)).numpy()  # the same product, forward
    np.testing.assert_allclose(direct, want, **tol)
    vec = gt.matmul(gt.tensor(x[:, 0]), gt.tensor(g)).numpy()  # a 1-D operand: one product
    np.testing.assert_allclose(vec, want[0], **tol)


def test_matmul_errors():
    with pytest.raises(ValueError, match=r"matmul: contracted dimensions differ: a has shape "
                                         r"\(2, 3\), b has shape \(4, 2\)"):
        gt.matmul(gt.tensor(np.ones((2, 3))), gt.tensor(np.ones((4, 2))))
    with pytest.raises(ValueError, match=r"matmul: batch dimensions do not broadcast: a has shape "
                                         r"\(2, 2, 3\), b has shape \(3, 3, 2\)"):
        gt.matmul(gt.tensor(np.ones((2, 2, 3))), gt.tensor(np.ones((3, 3, 2))))
    with pytest.raises(ValueError, match="matmul: operands must be at least 1-D"):
        gt.matmul(gt.tensor(2.0), gt.tensor(np.ones(2)))


DOT_SHAPES = [((3,), (3,)), ((2, 3), (3, 4)), ((2, 3), (3,)), ((3,), (3, 2)),
              ((2, 2, 3), (4, 3, 2)), ((2, 3), (2, 3, 4)), ((), (2, 3)), ((2,), ())]


@pytest.mark.parametrize("sa,sb", DOT_SHAPES)
def test_dot_matches_numpy_and_gradients(sa, sb, rng):
    a, b = rng.standard_normal(sa), rng.standard_normal(sb)
    out = gt.dot(gt.tensor(a), gt.tensor(b))
    np.testing.assert_allclose(out.numpy(), np.dot(a, b), rtol=1e-12)
    assert gt.dot(gt.tensor(a.astype(np.float32)), gt.tensor(b.astype(np.float32))).dtype == np.float32
    check_grads(gt.dot, (a, b), order=2)


def test_dot_errors():
    with pytest.raises(ValueError, match=r"dot: shapes \(2, 3\) and \(2, 4\) are not aligned"):
        gt.dot(gt.tensor(np.ones((2, 3))), gt.tensor(np.ones((2, 4))))


EINSUMS = [
    ("ij,jk->ik", [(2, 3), (3, 4)]),
    ("ij,jk", [(2, 3), (3, 4)]),
    ("ba", [(2, 3)]),
    ("Ab,bA", [(2, 3), (3, 2)]),
    ("ij->", [(2, 3)]),
    ("ij->j", [(2, 3)]),
    ("i,j->ij", [(2,), (3,)]),
    ("bij,bjk->bik", [(2, 2, 3), (2, 3, 2)]),
    ("i,ij,j->", [(2,), (2, 3), (3,)]),
    ("ii->i", [(3, 3)]),
    ("ii", [(3, 3)]),
    ("iij->j", [(2, 2, 3)]),
    ("ij,ij->i", [(2, 3), (1, 3)]),
    ("...ij,...jk->...ik", [(4, 2, 3), (3, 2)]),
    ("...i,...i", [(2, 3), (4, 1, 3)]),
    ("i...->...", [(2, 3, 4)]),
    ("...", [(2, 3)]),
    ("ij ,jk -> ki", [(2, 3), (3, 4)]),
    ("i,i", [(0,), (0,)]),
    ("i->", [(0,)]),
]


@pytest.mark.parametrize("spec,shapes", EINSUMS, ids=[e[0] for e in EINSUMS])
def test_einsum_matches_numpy_and_gradients(spec, shapes, rng):
    ops = [rng.standard_normal(s) for s in shapes]
    out = gt.einsum(spec, *[gt.tensor(o) for o in ops])
    expected = np.einsum(spec, *ops)
    assert out.shape == expected.shape
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-12, atol=1e-12)
    out32 = gt.einsum(spec, *[gt.tensor(o.astype(np.float32)) for o in ops])
    assert out32.dtype == np.float32
    if all(o.size for o in ops):
        check_grads(lambda *ts: gt.einsum(spec, *ts), tuple(ops), order=2)


def test_einsum_repeated_label_gradient_is_on_the_diagonal():
    a = gt.tensor(np.arange(9.0).reshape(3, 3))
    with gt.GradientTape() as tape:
        tape.watch(a)
        y = gt.einsum("ii", a)
    np.testing.assert_array_equal(tape.gradient(y, a).numpy(), np.eye(3))


def test_einsum_errors():
    a = gt.tensor(np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"einsum: label 'j' has size 3 in one operand but 4 in "
                                         r"operand 1 \(shape \(4, 2\)\)"):
        gt.einsum("ij,jk->ik", a, gt.tensor(np.ones((4, 2))))
    with pytest.raises(ValueError, match=r"einsum: operand 0 has shape \(2, 3\) \(rank 2\) but its "
                                         r"subscript 'ijk' names 3 axes"):
        gt.einsum("ijk", a)
    with pytest.raises(ValueError, match="einsum: subscripts 'ij,jk' name 2 operand"):
        gt.einsum("ij,jk", a)
    with pytest.raises(ValueError, match=r"einsum: output label\(s\) \['z'\] appear in no operand"):
        gt.einsum("ij->z", a)
    with pytest.raises(ValueError, match="einsum: output subscript 'ii' repeats a label"):
        gt.einsum("ij->ii", a)
    with pytest.raises(ValueError, match="einsum: invalid character"):
        gt.einsum("i1", a)
    with pytest.raises(TypeError, match="einsum: the first argument must be the subscripts"):
        gt.einsum(a, a)


def test_outer_matches_numpy(rng):
    a, b = rng.standard_normal((2, 2)), rng.standard_normal(3)
    np.testing.assert_allclose(gt.outer(gt.tensor(a), gt.tensor(b)).numpy(), np.outer(a, b))
    assert gt.outer(gt.tensor(b.astype(np.float32)), gt.tensor(b.astype(np.float32))).dtype == np.float32
    check_grads(gt.outer, (a, b), order=2)


def test_second_derivative_of_quadratic_form_is_matrix_sym():
    A = np.array([[2.0, 1.0], [0.5, 3.0]])
    x = gt.tensor(np.array([0.3, -0.7]))
    At = gt.tensor(A)
    with gt.GradientTape() as outer:
        outer.watch(x)
        with gt.GradientTape() as inner:
            inner.watch(x)
            y = gt.dot(x, At @ x)
        g = inner.gradient(y, x)
    h = outer.jacobian(g, x).numpy()
    np.testing.assert_allclose(h, A + A.T)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("B", [2, 33, 34])
def test_stacked_outer_products_equal_numpy_and_keep_non_finite_rows_apart(B, dtype, rng):
    # a[B, M, 1] @ b[B, 1, N]: one outer product per row (gt.vmap of a dense layer's weight
    # gradient), large enough for the host's products of rows in pairs; an inf or nan in one
    # row of b leaves the others as NumPy computes them, eagerly and in a replayed step
    M, N = 40, 24 if B > 2 else 256
    a = rng.standard_normal((B, M, 1)).astype(dtype)
    b = rng.standard_normal((B, 1, N)).astype(dtype)
    f = gt.function(lambda x, y: gt.matmul(x, y))
    for _ in range(3):
        np.testing.assert_array_equal(gt.matmul(gt.tensor(a), gt.tensor(b)).numpy(), a @ b)
        np.testing.assert_array_equal(f(gt.tensor(a), gt.tensor(b)).numpy(), a @ b)
        a = a * 2
    for bad in (np.inf, np.nan):
        bb = b.copy()
        bb[B // 2, 0, 5] = bad
        with np.errstate(invalid="ignore"):
            want = a @ bb
        others = np.arange(B) != B // 2
        for got in (gt.matmul(gt.tensor(a), gt.tensor(bb)), f(gt.tensor(a), gt.tensor(bb))):
            np.testing.assert_array_equal(got.numpy()[others], want[others])
            assert np.isfinite(got.numpy()[others]).all()
    # a zero product has NumPy's sign (+0: matmul sums from zero), in every row
    neg, zero = -np.abs(a), np.zeros_like(b)
    for got in (gt.matmul(gt.tensor(neg), gt.tensor(zero)), f(gt.tensor(neg), gt.tensor(zero))):
        np.testing.assert_array_equal(np.signbit(got.numpy()), np.signbit(neg @ zero))
    # forward mode through the pairs (a stacked product of tangents) is matmul's
    ta, tb = a[::-1].copy(), b * 0.5
    _, tangent = gt.jvp(gt.matmul, (gt.tensor(a), gt.tensor(b)), (gt.tensor(ta), gt.tensor(tb)))
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(tangent.numpy(), ta @ b + a @ tb, rtol=tol, atol=tol)
    # and its gradients (at a small size) are matmul's
    check_grads(gt.matmul, (a[:3, :9].astype(np.float64), b[:3, :, :8].astype(np.float64)), order=2)
