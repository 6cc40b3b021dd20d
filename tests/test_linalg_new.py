"""solve, inv, det, slogdet, cholesky and the extended norm: forward values against NumPy,
closed-form and finite-difference gradients, batched inputs, vmap, and the errors.

The registry-driven tests (test_registry.py, test_forward.py, test_batching_rules.py) cover
each primitive's gradients to second order in float32/float64, its JVP and its batching rule
from its ``examples``; this file checks what they do not: values against NumPy, the formulas
against independent references, edge cases and messages.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import gradtape as gt
from gradtape.testing import check_grads

RNG = np.random.default_rng(1234)


def well_conditioned(*shape: int, spd: bool = False, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = shape[-1]
    m = rng.standard_normal(shape)
    return m @ np.swapaxes(m, -1, -2) + n * np.eye(n) if spd else m + n * np.eye(n)


def grad(fn, x: np.ndarray) -> np.ndarray:
    """Gradient of sum(fn(x)) on the tape."""
    t = gt.tensor(x)
    with gt.GradientTape() as tape:
        tape.watch(t)
        y = gt.sum(fn(t))
    return tape.gradient(y, t).numpy()


def central_differences(fn, x: np.ndarray, h: float = 1e-6) -> np.ndarray:
    """d sum(fn(x)) / dx entry by entry, from NumPy alone."""
    out = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[i] += h
        xm[i] -= h
        out[i] = (np.sum(fn(xp)) - np.sum(fn(xm))) / (2 * h)
    return out


# --------------------------------------------------------------------------- forward values
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(3, 3), (2, 3, 3), (1, 1), (2, 2, 4, 4)])
def test_forward_matches_numpy(shape, dtype, backend):
    a = well_conditioned(*shape).astype(dtype)
    spd = well_conditioned(*shape, spd=True).astype(dtype)
    tol = {"rtol": 2e-5, "atol": 1e-5} if dtype == np.float32 else {"rtol": 1e-12, "atol": 1e-12}
    ta = gt.tensor(a)
    for got, want in [(gt.inv(ta), np.linalg.inv(a)), (gt.det(ta), np.linalg.det(a)),
                      (gt.cholesky(gt.tensor(spd)), np.linalg.cholesky(spd))]:
        assert got.dtype == dtype and got.shape == want.shape
        np.testing.assert_allclose(got.numpy(), want, **tol)
    sign, logabs = gt.slogdet(ta)
    want_sign, want_log = np.linalg.slogdet(a)
    assert sign.shape == want_sign.shape and logabs.dtype == dtype
    np.testing.assert_array_equal(sign.numpy(), want_sign)
    np.testing.assert_allclose(logabs.numpy(), want_log, **tol)


@pytest.mark.parametrize(("sa", "sb"), [((3, 3), (3,)), ((3, 3), (3, 2)), ((2, 3, 3), (2, 3, 4)),
                                        ((2, 3, 3), (3,)), ((3, 3), (2, 3, 1)),
                                        ((2, 1, 3, 3), (4, 3, 2)), ((2, 3, 3), (3, 1))])
def test_solve_matches_numpy(sa, sb):
    a, b = well_conditioned(*sa), RNG.standard_normal(sb)
    out = gt.solve(gt.tensor(a), gt.tensor(b))
    if len(sb) == 1:
        want = np.linalg.solve(a, b)
    else:  # batch axes broadcast (NumPy 2 semantics)
        batch = np.broadcast_shapes(sa[:-2], sb[:-2])
        want = np.linalg.solve(np.broadcast_to(a, batch + sa[-2:]), np.broadcast_to(b, batch + sb[-2:]))
    assert out.shape == want.shape and out.dtype == np.float64
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-12, atol=1e-12)
    residual = np.einsum("...ij,...j->...i", a, out.numpy()) if len(sb) == 1 else a @ out.numpy()
    np.testing.assert_allclose(residual, np.broadcast_to(b, out.shape), rtol=1e-10, atol=1e-10)


def test_mixed_and_integer_dtypes():
    a32 = gt.tensor(well_conditioned(3, 3).astype(np.float32))
    b64 = gt.tensor(RNG.standard_normal(3))
    assert gt.solve(a32, b64).dtype == np.float64  # promoted, as NumPy
    ints = gt.tensor(np.array([[2, 1], [1, 3]]))
    for fn in (gt.inv, gt.det, gt.cholesky):
        assert fn(ints).dtype == np.float32  # the package's rule: integers compute in float32
    assert float(gt.det(ints)) == pytest.approx(5.0)
    assert gt.norm(ints, ord="nuc").dtype == np.float32


def test_slogdet_keeps_what_det_loses():
    a = np.eye(60, dtype=np.float32) * 10.0  # det = 1e60: beyond float32
    a[0, 0] = -10.0
    sign, logabs = gt.slogdet(gt.tensor(a))
    assert float(sign) == -1.0
    assert float(logabs) == pytest.approx(60 * np.log(10.0), rel=1e-6)
    with np.errstate(over="ignore"):  # NumPy's det warns as it overflows
        assert np.isinf(gt.det(gt.tensor(a)).numpy())
    sign, logabs = gt.slogdet(gt.tensor(np.zeros((2, 2))))  # singular: sign 0, log 0 = -inf
    assert float(sign) == 0.0 and float(logabs) == -np.inf


# --------------------------------------------------------------------------- gradients
def test_det_gradient_matches_finite_differences_batched():
    a = well_conditioned(2, 3, 3, seed=3)
    a[1, 0] *= -1  # one negative determinant in the stack
    g = grad(gt.det, a)
    np.testing.assert_allclose(g, central_differences(np.linalg.det, a), rtol=1e-7, atol=1e-7)
    # Jacobi's formula, per matrix
    want = np.linalg.det(a)[:, None, None] * np.swapaxes(np.linalg.inv(a), -1, -2)
    np.testing.assert_allclose(g, want, rtol=1e-12)
    check_grads(gt.det, (a,), order=2)


def test_logabsdet_gradient_is_inverse_transpose():
    a = well_conditioned(2, 3, 3, seed=4)
    g = grad(lambda t: gt.slogdet(t)[1], a)
    np.testing.assert_allclose(g, np.swapaxes(np.linalg.inv(a), -1, -2), rtol=1e-12)
    np.testing.assert_allclose(g, central_differences(lambda x: np.linalg.slogdet(x)[1], a),
                               rtol=1e-7, atol=1e-7)
    x = gt.tensor(a)
    with gt.GradientTape() as tape:
        tape.watch(x)
        sign, _ = gt.slogdet(x)
    assert tape.gradient(gt.sum(sign), x) is None  # the sign carries no gradient


@pytest.mark.parametrize("shape", [(3, 3), (2, 3, 3)])
def test_inv_and_solve_gradients_match_finite_differences(shape):
    a = well_conditioned(*shape, seed=5)
    b = RNG.standard_normal(shape[:-1] + (2,))
    np.testing.assert_allclose(grad(gt.inv, a), central_differences(np.linalg.inv, a),
                               rtol=1e-7, atol=1e-8)
    np.testing.assert_allclose(grad(lambda t: gt.solve(t, gt.tensor(b)), a),
                               central_differences(lambda x: np.linalg.solve(x, b), a),
                               rtol=1e-7, atol=1e-8)
    np.testing.assert_allclose(grad(lambda t: gt.solve(gt.tensor(a), t), b),
                               central_differences(lambda y: np.linalg.solve(a, y), b),
                               rtol=1e-7, atol=1e-8)
    check_grads(gt.solve, (a, b), order=2)
    check_grads(gt.solve, (a, RNG.standard_normal(shape[-1])), order=2)  # a vector b


def test_solve_gradient_sums_over_broadcast_batch_axes():
    a = well_conditioned(3, 3, seed=6)
    b = RNG.standard_normal((4, 3, 2))
    ta, tb = gt.tensor(a), gt.tensor(b)
    with gt.GradientTape() as tape:
        tape.watch([ta, tb])
        y = gt.sum(gt.solve(ta, tb) ** 2)
    ga, gb = tape.gradient(y, [ta, tb])
    assert ga.shape == (3, 3) and gb.shape == (4, 3, 2)
    check_grads(lambda a, b: gt.solve(a, b) ** 2, (a, b), order=2)


def test_cholesky_gradient_is_symmetric_and_matches_the_symmetric_part():
    a = well_conditioned(2, 3, 3, spd=True, seed=7)
    w = RNG.standard_normal((2, 3, 3))

    def sym_chol(x):  # the function gt.cholesky computes: the factor of the symmetric part
        return np.linalg.cholesky((x + np.swapaxes(x, -1, -2)) / 2) * w

    g = grad(lambda t: gt.cholesky(t) * gt.tensor(w), a)
    np.testing.assert_allclose(g, np.swapaxes(g, -1, -2), rtol=1e-12)
    np.testing.assert_allclose(g, central_differences(sym_chol, a), rtol=1e-7, atol=1e-8)
    check_grads(gt.cholesky, (a,), order=2)
    # a non-symmetric input is read through its symmetric part
    skew = np.array([[0.0, 1.0], [-1.0, 0.0]])
    spd = well_conditioned(2, 2, spd=True)
    np.testing.assert_allclose(gt.cholesky(gt.tensor(spd + skew)).numpy(), np.linalg.cholesky(spd))


# --------------------------------------------------------------------------- vmap, jacobian, jvp
def test_vmap_and_per_example_gradients():
    a = well_conditioned(4, 3, 3, seed=8)
    np.testing.assert_allclose(gt.vmap(gt.det)(gt.tensor(a)).numpy(), np.linalg.det(a), rtol=1e-12)
    np.testing.assert_allclose(gt.vmap(gt.inv, in_axes=2, out_axes=0)(gt.tensor(np.moveaxis(a, 0, 2))).numpy(),
                               np.linalg.inv(a), rtol=1e-12)
    per = gt.vmap(gt.grad(lambda m: gt.slogdet(m)[1]))(gt.tensor(a))
    np.testing.assert_allclose(per.numpy(), np.swapaxes(np.linalg.inv(a), -1, -2), rtol=1e-10)
    b = RNG.standard_normal((4, 3))
    x = gt.vmap(gt.solve, in_axes=(None, 0))(gt.tensor(a[0]), gt.tensor(b))
    np.testing.assert_allclose(x.numpy(), np.linalg.solve(a[0], b.T).T, rtol=1e-12)


def test_jacobian_and_jvp_of_inv():
    a = well_conditioned(3, 3, seed=9)
    t = gt.tensor(a)
    with gt.GradientTape() as tape:
        tape.watch(t)
        y = gt.inv(t)
    jac = tape.jacobian(y, t).numpy()  # d inv(a)_ij / d a_kl = -inv_ik inv_lj
    inv = np.linalg.inv(a)
    np.testing.assert_allclose(jac, -np.einsum("ik,lj->ijkl", inv, inv), rtol=1e-10, atol=1e-12)
    v = RNG.standard_normal((3, 3))
    _, tangent = gt.jvp(gt.inv, (t,), (gt.tensor(v),))
    np.testing.assert_allclose(tangent.numpy(), -inv @ v @ inv, rtol=1e-10)


# --------------------------------------------------------------------------- norm
MATRIX_ORDS = [None, "fro", "nuc", 2, -2, 1, -1, np.inf, -np.inf]
VECTOR_ORDS = [None, 2, 1, np.inf, -np.inf, 3, 0.5, 1.5]


@pytest.mark.parametrize("order", MATRIX_ORDS, ids=str)
def test_matrix_norms_match_numpy(order):
    x = RNG.standard_normal((2, 3, 4))
    for axis in [(1, 2), (2, 1), (0, 2), (-1, 0)]:
        for keepdims in (False, True):
            out = gt.norm(gt.tensor(x), ord=order, axis=axis, keepdims=keepdims)
            want = np.linalg.norm(x, ord=order, axis=axis, keepdims=keepdims)
            assert out.shape == want.shape, (axis, keepdims)
            np.testing.assert_allclose(out.numpy(), want, rtol=1e-12, err_msg=f"{axis} {keepdims}")
    m = x[0]
    np.testing.assert_allclose(gt.norm(gt.tensor(m), ord=order).numpy(), np.linalg.norm(m, ord=order),
                               rtol=1e-12)
    check_grads(lambda t: gt.norm(t, ord=order, axis=(2, 1)), (x,), order=2)


@pytest.mark.parametrize("order", VECTOR_ORDS, ids=str)
def test_vector_norms_match_numpy(order):
    x = RNG.standard_normal((2, 3, 4))
    for axis in (0, 1, -1):
        for keepdims in (False, True):
            out = gt.norm(gt.tensor(x), ord=order, axis=axis, keepdims=keepdims)
            want = np.linalg.norm(x, ord=order, axis=axis, keepdims=keepdims)
            assert out.shape == want.shape
            np.testing.assert_allclose(out.numpy(), want, rtol=1e-12)
    np.testing.assert_allclose(gt.norm(gt.tensor(x[0, 0]), ord=order).numpy(),
                               np.linalg.norm(x[0, 0], ord=order), rtol=1e-12)
    check_grads(lambda t: gt.norm(t, ord=order, axis=1), (x,), order=2)


def test_svd_norm_gradients_closed_form():
    x = RNG.standard_normal((4, 3))
    u, s, vt = np.linalg.svd(x, full_matrices=False)
    np.testing.assert_allclose(grad(lambda t: gt.norm(t, "nuc"), x), u @ vt, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(grad(lambda t: gt.norm(t, 2), x), np.outer(u[:, 0], vt[0]),
                               rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(grad(lambda t: gt.norm(t, -2), x), np.outer(u[:, -1], vt[-1]),
                               rtol=1e-10, atol=1e-12)


def test_svd_norm_gradients_with_repeated_singular_values_are_finite():
    """At the identity every singular value is 1: the nuclear norm's gradient U V^T = I is
    still unique; the spectral norm's is shared evenly among the tied values (one valid
    subgradient)."""
    eye = np.eye(3)
    np.testing.assert_allclose(grad(lambda t: gt.norm(t, "nuc"), eye), eye, atol=1e-12)
    g2 = grad(lambda t: gt.norm(t, 2), eye)
    assert np.all(np.isfinite(g2))
    np.testing.assert_allclose(np.trace(g2), 1.0)
    rank1 = np.outer([1.0, 2.0, 0.0], [0.0, 1.0, 1.0])  # zero singular values
    g = grad(lambda t: gt.norm(t, 2), rank1)
    np.testing.assert_allclose(g, rank1 / np.linalg.norm(rank1), atol=1e-12)


def test_pnorm_gradient_at_zero_is_zero_not_nan():
    g = grad(lambda t: gt.norm(t, ord=3), np.zeros(4))
    np.testing.assert_array_equal(g, np.zeros(4))
    g = grad(lambda t: gt.norm(t, ord=0.5), np.array([0.0, 1.0, 4.0]))
    assert g[0] == 0.0 and np.all(np.isfinite(g))


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize("fn", [gt.inv, gt.det, gt.slogdet, gt.cholesky])
def test_non_square_is_a_value_error_naming_the_op(fn):
    name = fn.__name__
    for shape in [(2, 3), (3,), ()]:
        got = rf"got shape \({shape[0] if shape else ''}"
        with pytest.raises(ValueError, match=rf"{name}: a must be a square matrix .*{got}"):
            fn(gt.tensor(np.ones(shape)))


def test_singular_and_not_positive_definite_raise_linalg_errors():
    singular = np.array([[1.0, 2.0], [2.0, 4.0]])
    for fn, op in [(gt.inv, "inv"), (lambda a: gt.solve(a, gt.tensor(np.ones(2))), "solve")]:
        with pytest.raises(np.linalg.LinAlgError, match=rf"{op}: .*singular.*shape \(2, 2\)"):
            fn(gt.tensor(singular))
    assert issubclass(np.linalg.LinAlgError, ValueError)  # callers may catch ValueError
    with pytest.raises(ValueError, match=r"inv: .*singular \(in a stack .*shape \(2, 2, 2\)"):
        gt.inv(gt.tensor(np.stack([np.eye(2), singular])))
    with gt.use_backend("numpy"), pytest.raises(  # (a device: NaN, tests/test_device_semantics.py)
            np.linalg.LinAlgError, match=r"cholesky: the matrix is not positive definite"):
        gt.cholesky(gt.tensor(np.array([[1.0, 0.0], [0.0, -1.0]])))
    assert float(gt.det(gt.tensor(singular))) == 0.0
    t = gt.tensor(singular)
    with gt.GradientTape() as tape:  # det's gradient exists at a singular matrix (its cofactors)
        tape.watch(t)
        d = gt.det(t)
    np.testing.assert_allclose(tape.gradient(d, t).numpy(), [[4.0, -2.0], [-2.0, 1.0]], atol=1e-12)
    with pytest.raises(np.linalg.LinAlgError, match=r"det: the second derivative .* singular"):
        gt.hessian(gt.det)(t)


def test_solve_argument_errors():
    a = gt.tensor(well_conditioned(3, 3))
    with pytest.raises(ValueError, match=r"solve: b of shape \(4,\) does not match a"):
        gt.solve(a, gt.tensor(np.ones(4)))
    with pytest.raises(ValueError, match=r"solve: b must be a vector \[3\] or a stack"):
        gt.solve(a, gt.tensor(np.ones((2, 3))))
    with pytest.raises(ValueError, match="solve: batch dimensions do not broadcast"):
        gt.solve(gt.tensor(well_conditioned(2, 3, 3)), gt.tensor(np.ones((4, 3, 1))))
    with pytest.raises(ValueError, match="solve: a must be a square matrix"):
        gt.solve(gt.tensor(np.ones((3, 2))), gt.tensor(np.ones(3)))
    with pytest.raises(TypeError, match="solve: b must hold real numbers"):
        gt.solve(a, gt.tensor(np.ones(3, dtype=np.complex128)))


def test_norm_argument_errors():
    x = gt.tensor(RNG.standard_normal((2, 3, 4)))
    with pytest.raises(ValueError, match="norm: ord='nuc' is a matrix norm"):
        gt.norm(x, "nuc", axis=1)
    with pytest.raises(ValueError, match="norm: ord=3 is not a matrix norm"):
        gt.norm(x, 3, axis=(0, 1))
    with pytest.raises(ValueError, match=r"norm: ord=2 needs a 1-D or 2-D input"):
        gt.norm(x, 2)
    with pytest.raises(NotImplementedError, match="norm: vector ord=-1"):
        gt.norm(x, -1, axis=0)
    with pytest.raises(TypeError, match="norm: ord must be None, a number or a string"):
        gt.norm(x, [1], axis=0)
    with pytest.raises(ValueError, match="norm: ord=2 needs one axis .* or two"):
        gt.norm(x, 2, axis=(0, 1, 2))
    with pytest.raises(ValueError, match="norm: ord=-2 of an empty matrix"):  # (nuc and 2: 0)
        gt.norm(gt.tensor(np.ones((0, 3))), -2)


def _cofactors(a: np.ndarray) -> np.ndarray:
    """The cofactor matrix from its definition: signed minors (float64, any matrix)."""
    n = a.shape[-1]
    c = np.empty_like(a)
    for i in range(n):
        for j in range(n):
            minor = np.delete(np.delete(a, i, axis=-2), j, axis=-1)
            c[..., i, j] = (-1) ** (i + j) * (np.linalg.det(minor) if n > 1 else 1.0)
    return c


def _singular_matrices() -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    r = rng.standard_normal((5, 3))
    return [np.array([[1.0, 2.0], [2.0, 4.0]]),  # rank 1 of 2
            np.arange(1.0, 10.0).reshape(3, 3),  # rank 2 of 3 (not exactly singular in LU)
            np.array([[1.0, 2.0, 3.0], [2.0, 4.0, 6.0], [1.0, 1.0, 1.0]]),  # exactly: LU fails
            r @ r.T,  # rank 3 of 5
            np.outer([1.0, 2.0, 3.0], [4.0, 5.0, 6.0]),  # rank 1: every cofactor is zero
            np.zeros((3, 3)), np.zeros((1, 1)),
            np.stack([np.eye(3) * 2.0, np.array([[1.0, 2.0, 3.0], [2.0, 4.0, 6.0], [0, 1, 0]])])]


@pytest.mark.parametrize("a", _singular_matrices(), ids=lambda a: str(a.shape))
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_det_gradient_at_a_singular_matrix_is_the_cofactor_matrix(a, dtype):
    """d det(a) / da is the cofactor matrix, a polynomial in a that exists where a is singular
    (JAX gives it; a^-T does not exist there): reverse mode, forward mode, vmap and a replayed
    gt.function step all give it."""
    tol = 1e-10 if dtype == np.float64 else 2e-5 * max(1.0, float(np.abs(a).max()) ** (a.shape[-1] - 1))
    want = _cofactors(a)
    x = gt.Variable(a.astype(dtype))
    with gt.GradientTape() as tape:
        d = gt.sum(gt.det(x))
    g = tape.gradient(d, x)
    assert g.dtype == dtype
    np.testing.assert_allclose(g.numpy(), want, atol=tol)
    tangent = np.random.default_rng(0).standard_normal(a.shape).astype(dtype)
    _, dd = gt.jvp(gt.det, (gt.tensor(a.astype(dtype)),), (gt.tensor(tangent),))
    np.testing.assert_allclose(dd.numpy(), (want * tangent).sum(axis=(-2, -1)), atol=tol * a.size)
    if a.ndim == 2:
        stacked = np.stack([a, np.eye(a.shape[0]) + a])
        gv = gt.vmap(gt.grad(gt.det))(gt.tensor(stacked.astype(dtype)))
        np.testing.assert_allclose(gv.numpy(), _cofactors(stacked), atol=tol * 4)


def test_det_gradient_in_a_compiled_step_takes_each_calls_way():
    """The cofactor matrix comes from LU for an invertible matrix and from the SVD for a
    singular one: a replayed step decides per call (traced on invertible matrices)."""
    @gt.function
    def grad_det(a):
        with gt.GradientTape() as tape:
            tape.watch(a)
            d = gt.det(a)
        return tape.gradient(d, a)

    rng = np.random.default_rng(1)
    mats = [rng.standard_normal((3, 3)) for _ in range(3)] + _singular_matrices()[2:3] + [
        rng.standard_normal((3, 3))]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback to eager mode
        for a in mats:
            np.testing.assert_allclose(grad_det(gt.tensor(a)).numpy(), _cofactors(a), atol=1e-10)
    assert grad_det.trace_count == 2  # (the second call verifies the first trace)
