"""docs/api.md "Conventions at non-differentiable points", dtype promotion and broadcasting.

Each test runs on every backend (the CuPy case skips cleanly without a device)."""

from __future__ import annotations

import numpy as np
import pytest

import gradtape as gt
from gradtape.testing import check_grads

F64 = np.float64


def t(values, dtype=F64):
    return gt.tensor(np.asarray(values, dtype=dtype))


def grad(f, *xs, unconnected="zero"):
    """First-order gradient of ``sum(f(*xs))`` with respect to each x (host arrays)."""
    xs = [t(x) if not isinstance(x, gt.Tensor) else x for x in xs]
    with gt.GradientTape() as tape:
        tape.watch(xs)
        y = f(*xs)
    gs = tape.gradient(y, xs, unconnected_gradients=unconnected)
    return [g.numpy() for g in gs] if len(gs) > 1 else gs[0].numpy()


def grad2(f, x):
    """(first, second) derivative of ``sum(f(x))`` elementwise, the second with nested tapes."""
    x = t(x)
    with gt.GradientTape() as outer:
        outer.watch(x)
        with gt.GradientTape() as inner:
            inner.watch(x)
            y = f(x)
        g = inner.gradient(y, x, unconnected_gradients="zero")
    h = outer.gradient(g, x, unconnected_gradients="zero")
    return g.numpy(), h.numpy()


# --------------------------------------------------------------------------- kinks
def test_abs_derivative_at_zero_is_zero(backend):
    np.testing.assert_array_equal(grad(gt.abs, [-2.0, 0.0, 3.0]), [-1.0, 0.0, 1.0])
    g, h = grad2(gt.abs, [-2.0, 0.0, 3.0])
    np.testing.assert_array_equal(g, [-1.0, 0.0, 1.0])
    np.testing.assert_array_equal(h, [0.0, 0.0, 0.0])


def test_sign_derivative_is_zero_everywhere(backend):
    g = grad(gt.sign, [-2.0, 0.0, 3.0])
    np.testing.assert_array_equal(g, [0.0, 0.0, 0.0])
    assert not np.any(np.isnan(g))


def test_relu_derivative_at_zero_is_zero(backend):
    np.testing.assert_array_equal(grad(gt.relu, [-1.0, 0.0, 2.0]), [0.0, 0.0, 1.0])
    g, h = grad2(gt.relu, [-1.0, 0.0, 2.0])
    np.testing.assert_array_equal(h, [0.0, 0.0, 0.0])


def test_sqrt_derivative_at_zero_is_plus_inf(backend):
    with np.errstate(divide="ignore"):  # 0.5 / sqrt(0)
        g = grad(gt.sqrt, [0.0, 4.0])
    assert g[0] == np.inf
    assert g[1] == 0.25


def test_square_power_derivative_at_zero_is_zero(backend):
    for f in (lambda x: x ** 2, lambda x: gt.pow(x, 2.0), lambda x: x ** 2.0):
        g, h = grad2(f, [0.0, 1.5])
        np.testing.assert_array_equal(g, [0.0, 3.0])
        np.testing.assert_array_equal(h, [2.0, 2.0])


# pow's derivative evaluates both branches of its where(): 0 ** -1 and log(0) warn on NumPy
# although the selected result is finite (reported; the values are what is tested here).
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_power_zero_derivative_is_zero(backend):
    for x in ([0.0, 2.0, -3.0], [0.0]):
        g = grad(lambda x: x ** 0, x)
        np.testing.assert_array_equal(g, np.zeros(len(x)))
        g = grad(lambda x: gt.pow(x, t(0.0)), x)
        np.testing.assert_array_equal(g, np.zeros(len(x)))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_power_exponent_gradient_at_zero_base_is_zero_not_nan(backend):
    ga, gb = grad(gt.pow, [0.0, 2.0], [2.0, 3.0])
    np.testing.assert_array_equal(ga, [0.0, 12.0])
    np.testing.assert_allclose(gb, [0.0, 8.0 * np.log(2.0)])


def test_maximum_minimum_ties_split_half_half(backend):
    for op in (gt.maximum, gt.minimum):
        def same(x, op=op):
            return op(x, x)

        def vs_scalar(x, op=op):
            return op(x, 0.0)

        ga, gb = grad(op, [1.0, 2.0, 3.0], [1.0, 0.0, 5.0])
        big = [0.5, 1.0, 0.0] if op is gt.maximum else [0.5, 0.0, 1.0]
        np.testing.assert_array_equal(ga, big)
        np.testing.assert_array_equal(gb, 1.0 - np.asarray(big))
        # the same tensor on both sides: the halves add back to 1
        np.testing.assert_array_equal(grad(same, [1.0, -2.0]), [1.0, 1.0])
        # against a Python scalar (relu written as maximum)
        np.testing.assert_array_equal(grad(vs_scalar, [0.0]), [0.5])


def _needs(*names):
    missing = [n for n in names if not callable(getattr(gt, n, None))]
    if missing:
        pytest.skip(f"reduction ops not implemented yet: {missing}")


def test_max_min_reductions_split_ties_evenly(backend):
    _needs("max", "min")
    np.testing.assert_allclose(grad(gt.max, [1.0, 3.0, 3.0, -1.0]), [0, 0.5, 0.5, 0])
    np.testing.assert_allclose(grad(gt.min, [2.0, -1.0, -1.0, -1.0]), [0, 1 / 3, 1 / 3, 1 / 3])
    x = [[1.0, 1.0, 0.0], [2.0, 0.0, 2.0]]
    np.testing.assert_allclose(grad(lambda x: gt.max(x, axis=1), x), [[0.5, 0.5, 0], [0.5, 0, 0.5]])
    x2 = [[1.0, 0.0, 3.0], [1.0, 2.0, 3.0]]
    np.testing.assert_allclose(grad(lambda x: gt.min(x, axis=0, keepdims=True), x2),
                               [[0.5, 1, 0.5], [0.5, 0, 0.5]])
    np.testing.assert_allclose(grad(lambda x: x.max(), x), [[0, 0, 0], [0.5, 0, 0.5]])
    # no tie: the whole gradient goes to the extreme element
    np.testing.assert_allclose(grad(gt.max, [1.0, 4.0, 3.0]), [0, 1, 0])


def test_where_sqrt_at_zero_gradient_is_zero_not_nan(backend):
    def f(x):
        return gt.where(x > 0, gt.sqrt(x), 0.0)

    with np.errstate(invalid="ignore", divide="ignore"):
        g = grad(f, [0.0, 4.0])
        np.testing.assert_array_equal(g, [0.0, 0.25])
        g, h = grad2(f, [0.0, 4.0])
    np.testing.assert_array_equal(g, [0.0, 0.25])
    assert not np.any(np.isnan(h)), f"second derivative has NaN: {h}"
    np.testing.assert_allclose(h, [0.0, -0.25 * 4.0 ** -1.5])  # d2/dx2 sqrt = -x^(-3/2)/4


def test_where_sends_gradient_to_selected_branch_only(backend):
    c = t([True, False, True], dtype=bool)
    ga, gb = grad(lambda a, b: gt.where(c, a, b), [1.0, 2.0, 3.0], [4.0, 5.0, 6.0])
    np.testing.assert_array_equal(ga, [1, 0, 1])
    np.testing.assert_array_equal(gb, [0, 1, 0])
    # the unselected branch's infinite local derivative does not leak (log at 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        g = grad(lambda x: gt.where(x > 0, gt.log(x), x), [0.0, 1.0])
    np.testing.assert_array_equal(g, [1.0, 1.0])


def test_clip_bounds_are_inclusive(backend):
    g = grad(lambda x: gt.clip(x, -1.0, 1.0), [-2.0, -1.0, 0.0, 1.0, 2.0])
    np.testing.assert_array_equal(g, [0, 1, 1, 1, 0])
    gx, glo, ghi = grad(gt.clip, [-2.0, -1.0, 0.5, 1.0, 2.0], [-1.0] * 5, [1.0] * 5)
    np.testing.assert_array_equal(gx, [0, 1, 1, 1, 0])
    np.testing.assert_array_equal(glo, [1, 0, 0, 0, 0])
    np.testing.assert_array_equal(ghi, [0, 0, 0, 0, 1])
    # one-sided
    np.testing.assert_array_equal(grad(lambda x: gt.clip(x, 0.0, None), [-1.0, 0.0, 1.0]), [0, 1, 1])
    np.testing.assert_array_equal(grad(lambda x: gt.clip(x, None, 0.0), [-1.0, 0.0, 1.0]), [1, 1, 0])


def test_clip_with_lo_above_hi_is_hi_and_so_is_its_gradient(backend):
    """NumPy's and PyTorch's rule: where ``lo > hi`` the result is ``hi``; the gradient went to
    both bounds there (twice the derivative in all), as it does to one (forward mode too)."""
    x, lo, hi = [0.0, 3.0, -3.0, 1.0], [1.0, 2.0, 2.0, 1.0], [-1.0, -2.0, -2.0, 1.0]
    np.testing.assert_array_equal(gt.clip(t(x), t(lo), t(hi)).numpy(), [-1, -2, -2, 1])
    gx, glo, ghi = grad(gt.clip, x, lo, hi)
    np.testing.assert_array_equal(gx, [0, 0, 0, 1])
    np.testing.assert_array_equal(glo, [0, 0, 0, 0])
    np.testing.assert_array_equal(ghi, [1, 1, 1, 0])
    _, tangent = gt.jvp(gt.clip, (t(x), t(lo), t(hi)),
                        (t([1.0] * 4), t([2.0] * 4), t([3.0] * 4)))
    np.testing.assert_array_equal(tangent.numpy(), [3, 3, 3, 1])


# --------------------------------------------------------------------------- dtypes
def test_python_scalars_are_weak(backend):
    x = t([1.0, 2.0], np.float32)
    for y in (x * 2.0, 2.0 * x, x + 1, x / 3.0, x ** 2.0, 1.0 - x, gt.maximum(x, 0.5)):
        assert y.dtype == np.float32


def test_float32_with_float64_promotes_to_float64(backend):
    a = t([1.0, 2.0], np.float32)
    b = t([3.0, 4.0], F64)
    for y in (a + b, b * a, gt.maximum(a, b), gt.where(a > 1, a, b)):
        assert y.dtype == np.float64


def test_concat_and_stack_promote_as_the_binary_ops(backend):
    """An integer tensor joined with a float32 one is float32, as ``int + float32`` is (it was
    float64, NumPy's promotion); float64 only where a float64 tensor takes part."""
    i64, i32 = t([1, 2], np.int64), t([1, 2], np.int32)
    f32, f16, f64 = t([0.5, 1.5], np.float32), t([0.5, 1.5], np.float16), t([0.5, 1.5], F64)
    for join in (gt.concat, gt.stack):
        assert join([i64, f32]).dtype == (i64 + f32).dtype == np.float32
        assert join([f32, i32, t([True, False], np.bool_)]).dtype == np.float32
        assert join([i32, f16]).dtype == (i32 + f16).dtype == np.float16
        assert join([i64, f32, f64]).dtype == np.float64
        assert join([i32, t([1, 2], np.int8)]).dtype == np.int32
    x = gt.Variable(np.array([0.5, 1.5], np.float32))
    with gt.GradientTape() as tape:
        y = gt.sum(gt.concat([x, i64]) ** 2)
    g = tape.gradient(y, x)
    assert g.dtype == np.float32
    np.testing.assert_array_equal(g.numpy(), [1.0, 3.0])


def test_numpy_scalars_keep_their_dtype_and_go_to_the_tensors_backend(backend):
    """``loss * np.float32(0.5)`` on a device: the scalar was made a host tensor, and the op
    refused two backends."""
    x = t([1.0, 2.0], np.float32)
    h = t([1.0, 2.0], np.float16)
    for y, dt, want in ((x * np.float32(2.0), np.float32, [2, 4]),
                        (np.float32(2.0) * x, np.float32, [2, 4]),
                        (h * np.float16(2.0), np.float16, [2, 4]),
                        (h * np.float32(2.0), np.float32, [2, 4]),
                        (x + np.int64(1), np.float32, [2, 3]),
                        (h * np.float64(2.0), np.float16, [2, 4])):
        assert y.backend == x.backend and y.dtype == dt
        np.testing.assert_array_equal(y.numpy(), want)


def test_gradient_has_the_source_dtype(backend):
    a = t([1.0, 2.0], np.float32)
    b = t([3.0, 4.0], F64)
    with gt.GradientTape() as tape:
        tape.watch([a, b])
        y = gt.sum(a * b)
    ga, gb = tape.gradient(y, [a, b])
    assert ga.dtype == np.float32 and gb.dtype == np.float64
    np.testing.assert_array_equal(ga.numpy(), [3.0, 4.0])
    # also when the backward pass is recorded (second order)
    with gt.GradientTape() as outer:
        outer.watch([a, b])
        with gt.GradientTape() as inner:
            inner.watch([a, b])
            y = gt.sum(a * a * b)
        ga, gb = inner.gradient(y, [a, b])
        assert ga.dtype == np.float32 and gb.dtype == np.float64
    h = outer.gradient(ga, a)
    assert h.dtype == np.float32
    np.testing.assert_array_equal(h.numpy(), [6.0, 8.0])


def test_output_gradients_dtype_must_match(backend):
    x = t([1.0, 2.0], np.float32)
    with gt.GradientTape() as tape:
        tape.watch(x)
        y = x * 2.0
    with pytest.raises(TypeError, match="dtype"):
        tape.gradient(y, x, output_gradients=t([1.0, 1.0], F64))


# --------------------------------------------------------------------------- broadcasting
@pytest.mark.parametrize(("sa", "sb"), [((2, 3), (3,)), ((2, 3), (2, 1)), ((2, 1), (1, 3)),
                                        ((2, 3), ()), ((), (4,)), ((1, 1, 3), (2, 1)),
                                        # large enough that the leading axes are summed first
                                        ((32, 4, 8, 8), (1, 4, 1, 1)), ((2, 16, 8, 20), (8, 1))])
def test_broadcast_gradients_are_summed_back(backend, sa, sb):
    rng = np.random.default_rng(0)
    a = rng.standard_normal(sa)
    b = rng.standard_normal(sb)
    out_shape = np.broadcast_shapes(sa, sb)
    u = rng.standard_normal(out_shape)
    ta, tb = t(a), t(b)
    with gt.GradientTape() as tape:
        tape.watch([ta, tb])
        y = ta * tb
    ga, gb = tape.gradient(y, [ta, tb], output_gradients=t(u))
    assert ga.shape == sa and gb.shape == sb

    def sum_to(g, shape):
        lead = g.ndim - len(shape)
        g = g.sum(axis=tuple(range(lead))) if lead else g
        axes = tuple(i for i, s in enumerate(shape) if s == 1)
        return g.sum(axis=axes, keepdims=True).reshape(shape) if axes else g.reshape(shape)

    np.testing.assert_allclose(ga.numpy(), sum_to(u * np.broadcast_to(b, out_shape), sa))
    np.testing.assert_allclose(gb.numpy(), sum_to(u * np.broadcast_to(a, out_shape), sb))


def test_broadcast_gradients_second_order():
    rng = np.random.default_rng(1)
    check_grads(lambda a, b: gt.tanh(a * b) + a / (1 + b * b),
                (rng.standard_normal((2, 3)), rng.standard_normal((2, 1))))
    check_grads(lambda a, b: gt.sin(a) * b, (rng.standard_normal(()), rng.standard_normal((4,))))


def test_backward_at_singular_points_emits_no_numpy_warnings():
    """Infinite derivatives at documented singular points (sqrt'(0), a where-guarded log)
    are internal: no RuntimeWarning leaks from the backward pass, on the per-record route,
    the fused route, and the fused route's worker threads."""
    import warnings

    small = gt.tensor(np.array([0.0, 1.0, 4.0]))
    big = gt.tensor(np.concatenate([np.arange(1.0, 2.0 ** 19 + 1), np.zeros(2 ** 19)]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for x in (small, big):
            with gt.GradientTape() as tape:
                tape.watch(x)
                y = gt.sum(gt.sqrt(gt.sqrt(gt.sqrt(x))))
            g = tape.gradient(y, x).numpy()
            assert np.isinf(g[x.numpy() == 0]).all()
        with gt.GradientTape() as tape:
            tape.watch(small)
            y = gt.sum(gt.where(small > 0, gt.log(gt.maximum(small, 1e-300)), 0.0) + small ** 0.5)
        assert np.isinf(tape.gradient(y, small).numpy()[0])


@pytest.mark.parametrize("dtype, x", [(np.float16, 1e-5), (np.float16, 6e-8), (np.float32, 1e-39),
                                      (np.float32, 1.4e-45), (np.float64, 5e-324)])
def test_power_zero_derivative_is_zero_at_tiny_bases(backend, dtype, x):
    """0 * x**-1 overflowed to 0 * inf: NaN at tiny and subnormal bases."""
    v = gt.tensor(np.array([x, 1.0], dtype))
    assert grad(lambda a: a ** 0, v).tolist() == [0.0, 0.0]
    assert grad(lambda a: gt.pow(a, 0), v).tolist() == [0.0, 0.0]
    h = gt.hessian(lambda a: gt.sum(a ** 1))(v).numpy()
    assert np.array_equal(h, np.zeros((2, 2)))
    h2 = gt.hessian(lambda a: gt.sum(a ** 2))(v).numpy()
    np.testing.assert_array_equal(h2, 2 * np.eye(2))


@pytest.mark.parametrize("alpha", [1.0, 2.0])
def test_elu_second_derivative_at_zero_is_alpha(backend, alpha):
    """elu'(0) takes the side x <= 0 (alpha); its second derivative there was -0."""
    h = gt.hessian(lambda a: gt.sum(gt.nn.elu(a, alpha)))(t([0.0, -1e-12, 1e-12])).numpy()
    np.testing.assert_allclose(np.diag(h), [alpha, alpha, 0.0])
