"""tape.jacobian and tape.batch_jacobian: shapes, structure, unconnected sources, misuse, and
values against central-difference Jacobians."""

from __future__ import annotations

import numpy as np
import pytest

import gradtape as gt
from gradtape.testing import numerical_jacobian


def f64(v):
    """A float64 tensor on the active backend."""
    return gt.tensor(np.asarray(v, dtype=np.float64).tolist(), dtype="float64")


def _fn(x, w):
    return gt.tanh(gt.matmul(x, w)) * gt.sin(x).sum()


@pytest.fixture
def xw(rng):
    return rng.normal(size=(2, 3)), rng.normal(size=(3, 4))


def test_jacobian_matches_numerical(backend, xw):
    x0, w0 = xw
    x, w = f64(x0), f64(w0)
    with gt.GradientTape() as tape:
        tape.watch([x, w])
        y = _fn(x, w)
    jx, jw = tape.jacobian(y, [x, w])
    assert jx.shape == (2, 4, 2, 3) and jw.shape == (2, 4, 3, 4)
    assert jx.dtype == np.float64
    nx, nw = numerical_jacobian(_fn, (x0, w0))
    np.testing.assert_allclose(jx.numpy(), nx, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(jw.numpy(), nw, rtol=1e-6, atol=1e-8)


def test_jacobian_nested_sources_keep_structure(xw):
    x0, w0 = xw
    x, w = f64(x0), f64(w0)
    with gt.GradientTape() as tape:
        tape.watch([x, w])
        y = _fn(x, w)
    j = tape.jacobian(y, {"x": x, "params": (w,)})
    assert set(j) == {"x", "params"} and isinstance(j["params"], tuple)
    assert j["x"].shape == (2, 4, 2, 3) and j["params"][0].shape == (2, 4, 3, 4)


def test_jacobian_scalar_target_and_scalar_source():
    x = f64(0.5)
    v = f64([1.0, 2.0])
    with gt.GradientTape(persistent=True) as tape:
        tape.watch([x, v])
        y = gt.sin(x) * 3.0
        s = (v * v).sum()
        yv = v * x
    assert tape.jacobian(y, x).shape == ()
    np.testing.assert_allclose(float(tape.jacobian(y, x)), 3 * np.cos(0.5))
    np.testing.assert_allclose(tape.jacobian(s, v).numpy(), [2.0, 4.0])
    np.testing.assert_allclose(tape.jacobian(yv, x).numpy(), [1.0, 2.0])


def test_jacobian_unconnected_none_and_zero():
    x = f64([1.0, 2.0])
    z = gt.tensor(np.ones((3, 1), np.float32))
    with gt.GradientTape(persistent=True) as tape:
        tape.watch([x, z])
        y = x * x
    jx, jz = tape.jacobian(y, [x, z])
    assert jz is None
    np.testing.assert_allclose(jx.numpy(), np.diag([2.0, 4.0]))
    jz = tape.jacobian(y, [x, z], unconnected_gradients="zero")[1]
    assert jz.shape == (2, 3, 1) and jz.dtype == np.float32 and not jz.numpy().any()


def test_jacobian_partially_connected_rows_are_zero():
    x = f64([1.0, 2.0])
    with gt.GradientTape() as tape:
        tape.watch(x)
        y = gt.stack([x[0] * 3.0, f64(7.0)])  # row 1 does not depend on x
    np.testing.assert_allclose(tape.jacobian(y, x).numpy(), [[3.0, 0.0], [0.0, 0.0]])


def test_jacobian_without_pfor_needs_persistent():
    x = f64([1.0, 2.0])
    with gt.GradientTape() as tape:
        tape.watch(x)
        y = x * x
    with pytest.raises(RuntimeError, match="persistent"):
        tape.jacobian(y, x, experimental_use_pfor=False)
    with gt.GradientTape(persistent=True) as tape:
        tape.watch(x)
        y = x * x
    np.testing.assert_allclose(tape.jacobian(y, x, experimental_use_pfor=False).numpy(),
                               np.diag([2.0, 4.0]))


def test_jacobian_target_not_tensor():
    x = f64([1.0])
    with gt.GradientTape() as tape:
        tape.watch(x)
    with pytest.raises(TypeError, match="target"):
        tape.jacobian([x], x)


def test_hessian_as_jacobian_of_gradient(rng):
    x0 = rng.normal(size=3)
    A = rng.normal(size=(3, 3))
    x, At = f64(x0), f64(A)
    with gt.GradientTape() as outer:
        outer.watch(x)
        with gt.GradientTape() as inner:
            inner.watch(x)
            f = (x * gt.matmul(At, x)).sum() + (x * x * x).sum()
        g = inner.gradient(f, x)
    H = outer.jacobian(g, x)
    np.testing.assert_allclose(H.numpy(), A + A.T + np.diag(6 * x0), rtol=1e-12)


def test_jacobian_inside_outer_tape_is_differentiable():
    x = f64([0.5, -0.3])
    with gt.GradientTape() as outer:
        outer.watch(x)
        with gt.GradientTape() as inner:
            inner.watch(x)
            y = gt.sin(x)
        J = inner.jacobian(y, x)  # diag(cos x)
        tr = (J * f64(np.eye(2))).sum()
    np.testing.assert_allclose(outer.gradient(tr, x).numpy(), -np.sin([0.5, -0.3]), rtol=1e-12)


# --------------------------------------------------------------------------- batch_jacobian
def _per_example(x, w):
    # examples are independent: row b of the output depends only on row b of x
    return gt.tanh(gt.matmul(x, w)) * x[:, :1]


def test_batch_jacobian_matches_numerical(backend, rng):
    x0, w0 = rng.normal(size=(4, 3)), rng.normal(size=(3, 2))
    x, w = f64(x0), f64(w0)
    with gt.GradientTape() as tape:
        tape.watch(x)
        y = _per_example(x, w)
    bj = tape.batch_jacobian(y, x)
    assert bj.shape == (4, 2, 3)
    full, = numerical_jacobian(lambda x: _per_example(x, f64(w0)), (x0,))  # (4, 2, 4, 3)
    want = np.stack([full[b, :, b, :] for b in range(4)])
    np.testing.assert_allclose(bj.numpy(), want, rtol=1e-6, atol=1e-8)


def test_batch_jacobian_higher_rank():
    x = f64(np.arange(12.0).reshape(2, 3, 2) / 10)
    with gt.GradientTape() as tape:
        tape.watch(x)
        y = gt.reshape(x * x, (2, 6))
    bj = tape.batch_jacobian(y, x)
    assert bj.shape == (2, 6, 3, 2)
    np.testing.assert_allclose(bj.numpy()[1].reshape(6, 6), np.diag(2 * x.numpy()[1].ravel()))


def test_batch_jacobian_unconnected_gives_zeros():
    x = f64(np.ones((2, 3)))
    z = f64(np.ones((2, 5)))
    with gt.GradientTape() as tape:
        tape.watch([x, z])
        y = x * 2.0
    bj = tape.batch_jacobian(y, z)
    assert bj.shape == (2, 3, 5) and not bj.numpy().any()


def test_batch_jacobian_errors():
    x = f64(np.ones((2, 3)))
    with gt.GradientTape(persistent=True) as tape:
        tape.watch(x)
        y = x * 2.0
        y3 = gt.reshape(gt.stack([y, y, y])[:, 0], (3, 3))
        v = x[0] * 1.0
    with pytest.raises(ValueError, match=r"batch sizes differ.*\(3, 3\).*\(2, 3\)"):
        tape.batch_jacobian(y3, x)
    with pytest.raises(ValueError, match="rank >= 2"):
        tape.batch_jacobian(v, x)
    with pytest.raises(ValueError, match="rank >= 2"):
        tape.batch_jacobian(y, x[0])
    with pytest.raises(TypeError, match="source"):
        tape.batch_jacobian(y, [x])


def test_batch_jacobian_non_persistent_single_call():
    x = f64(np.ones((2, 3)))
    with gt.GradientTape() as tape:
        tape.watch(x)
        y = x * 2.0
    tape.batch_jacobian(y, x)
    with pytest.raises(RuntimeError):
        tape.batch_jacobian(y, x)
    with gt.GradientTape() as tape:
        tape.watch(x)
        y = x * 2.0
    with pytest.raises(RuntimeError, match="persistent"):
        tape.batch_jacobian(y, x, experimental_use_pfor=False)


@pytest.mark.parametrize("pi", [1, 7, 64, 1000])
def test_parallel_iterations_bounds_the_rows_computed_together(pi):
    # TF's knob: the vectorized Jacobian in passes of at most parallel_iterations rows, the
    # same values as all at once and as the loop; a source whose gradient does not depend on
    # the cotangent's row (broadcast), an unconnected one, and batch_jacobian too
    rng = np.random.default_rng(4)
    W = gt.tensor(rng.normal(size=(64, 48)) / 8)
    x = gt.tensor(rng.normal(size=(48,)))
    b = gt.tensor(rng.normal(size=(64,)))
    X = gt.tensor(rng.normal(size=(5, 64)))
    free = gt.tensor(np.ones(3))
    with gt.GradientTape(persistent=True) as tape:
        tape.watch([x, W, b, X, free])
        y = gt.tanh(W @ x) + b
        yb = gt.tanh(X @ W)
    got = tape.jacobian(y, [x, W, b, free], parallel_iterations=pi, unconnected_gradients="zero")
    want = tape.jacobian(y, [x, W, b, free], experimental_use_pfor=False,
                         unconnected_gradients="zero")
    for g, w in zip(got, want):
        assert g.shape == w.shape
        np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-12, atol=1e-12)
    assert tape.jacobian(y, free, parallel_iterations=pi) is None
    gb = tape.batch_jacobian(yb, X, parallel_iterations=pi)
    wb = tape.batch_jacobian(yb, X, experimental_use_pfor=False)
    assert gb.shape == (5, 48, 64)
    np.testing.assert_allclose(gb.numpy(), wb.numpy(), rtol=1e-12, atol=1e-12)


def test_parallel_iterations_keeps_the_jacobian_differentiable_and_bounds_memory(peak_bytes):
    rng = np.random.default_rng(5)
    W = gt.tensor(rng.normal(size=(256, 256)) / 16)
    x = gt.tensor(rng.normal(size=(256,)))

    def jac(pi):
        with gt.GradientTape() as outer:
            outer.watch(x)
            with gt.GradientTape() as tape:
                tape.watch(x)
                y = gt.tanh(W @ x)
            J = tape.jacobian(y, x, parallel_iterations=pi)
            s = gt.sum(J * J)
        return J, outer.gradient(s, x)

    (J1, g1), (J2, g2) = jac(None), jac(16)
    np.testing.assert_allclose(J2.numpy(), J1.numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(g2.numpy(), g1.numpy(), rtol=1e-10, atol=1e-12)

    def plain(pi):
        with gt.GradientTape() as tape:
            tape.watch(x)
            y = gt.tanh(gt.tanh(W @ x) @ W)
        return tape.jacobian(y, x, parallel_iterations=pi)

    # the passes' intermediates are [16, 256] instead of [256, 256] (the result itself stays)
    assert peak_bytes(lambda: plain(16)) < 0.7 * peak_bytes(lambda: plain(None))

    # a long target over a small source: the seeds themselves are [rows, 3000], not the
    # identity of 3000 (72 MB), so 16 rows at a time take a fraction of the memory
    v = gt.tensor(rng.normal(size=(4,)))
    A = gt.tensor(rng.normal(size=(3000, 4)))

    def tall(pi):
        with gt.GradientTape() as tape:
            tape.watch(v)
            y = gt.tanh(A @ v)
        return tape.jacobian(y, v, parallel_iterations=pi)

    np.testing.assert_allclose(tall(16).numpy(), tall(None).numpy(), rtol=1e-12, atol=1e-15)
    assert peak_bytes(lambda: tall(16)) < 0.1 * peak_bytes(lambda: tall(None))


@pytest.mark.parametrize("bad, exc", [(0, ValueError), (-3, ValueError), (2.5, TypeError),
                                      ("4", TypeError), (True, TypeError)])
def test_parallel_iterations_must_be_a_positive_int(bad, exc):
    x = gt.tensor([1.0, 2.0])
    with gt.GradientTape(persistent=True) as tape:
        tape.watch(x)
        y = x * x
    with pytest.raises(exc, match="parallel_iterations must be a positive int"):
        tape.jacobian(y, x, parallel_iterations=bad)
    with pytest.raises(exc, match="parallel_iterations"):
        tape.batch_jacobian(gt.reshape(y, (1, 2)), gt.reshape(x, (1, 2)), parallel_iterations=bad)
