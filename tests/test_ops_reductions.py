"""Reductions: forward against NumPy, gradients against finite differences, the conventions
(tie splitting, prod with zeros, norm at 0), second derivatives, errors."""

from __future__ import annotations

import numpy as np
import pytest

import gradtape as gt
from gradtape.extend import REGISTRY
from gradtape.testing import check_grads

REDUCTIONS = ["sum", "mean", "prod", "max", "min", "logsumexp", "var", "std", "norm"]


def _grad(fn, x, **kw):
    x = gt.tensor(x)
    with gt.GradientTape() as tape:
        tape.watch(x)
        y = fn(x, **kw)
    return tape.gradient(y, x)


AXES = [None, 0, -1, (0, 2), (-1, 0), ()]


@pytest.mark.parametrize("name", REDUCTIONS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("axis", AXES)
@pytest.mark.parametrize("keepdims", [False, True])
def test_forward_matches_numpy(name, dtype, axis, keepdims, rng):
    x = rng.uniform(0.5, 1.5, (2, 3, 4)).astype(dtype)
    fn = getattr(gt, name)
    if name == "norm":
        expected = np.sqrt(np.sum(x * x, axis=axis, keepdims=keepdims))
    elif name == "logsumexp":
        expected = np.log(np.sum(np.exp(x), axis=axis, keepdims=keepdims))
    else:
        expected = getattr(np, name)(x, axis=axis, keepdims=keepdims)
    out = fn(gt.tensor(x), axis=axis, keepdims=keepdims)
    assert out.dtype == dtype
    assert out.shape == np.shape(expected)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5 if dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("name", REDUCTIONS)
def test_zero_d_input(name):
    x = np.array(1.5)
    out = getattr(gt, name)(gt.tensor(x))
    assert out.shape == ()
    expected = {"var": 0.0, "std": 0.0, "norm": 1.5}.get(name, 1.5)
    np.testing.assert_allclose(out.numpy(), expected)
    assert getattr(gt, name)(gt.tensor(x), axis=0).shape == ()


@pytest.mark.parametrize("name", REDUCTIONS)
def test_registry_examples_gradients(name):
    prim = REGISTRY[name]
    assert prim.examples is not None
    for fn, args, kwargs in prim.examples(np.random.default_rng(1)):
        check_grads(fn, args, kwargs, order=2)


@pytest.mark.parametrize("name", ["sum", "mean", "prod", "logsumexp", "var", "std", "norm"])
def test_gradients_negative_and_tuple_axes(name, rng):
    x = rng.uniform(0.5, 1.5, (2, 3, 4)) * rng.choice([-1.0, 1.0], (2, 3, 4))
    check_grads(getattr(gt, name), (x,), {"axis": (-1, 0), "keepdims": False}, order=2)
    check_grads(getattr(gt, name), (x,), {"axis": -2, "keepdims": True}, order=1)


def test_reductions_keep_gradient_dtype():
    x = np.arange(1.0, 7.0, dtype=np.float32).reshape(2, 3)
    for name in REDUCTIONS:
        g = _grad(getattr(gt, name), x, axis=1)
        assert g.dtype == np.float32 and g.shape == (2, 3), name


def test_empty_reductions():
    e = np.zeros((0, 3))
    assert gt.sum(gt.tensor(e), axis=0).shape == (3,)
    np.testing.assert_array_equal(gt.prod(gt.tensor(e), axis=0).numpy(), np.ones(3))
    np.testing.assert_array_equal(gt.logsumexp(gt.tensor(e), axis=0).numpy(), np.full(3, -np.inf))
    assert gt.max(gt.tensor(e), axis=1).shape == (0,)
    np.testing.assert_array_equal(gt.norm(gt.tensor(e), axis=0).numpy(), np.zeros(3))
    g = _grad(gt.sum, e, axis=0)
    assert g.shape == (0, 3)
    g = _grad(gt.mean, e, axis=1)
    assert g.shape == (0, 3)
    with pytest.raises(ValueError, match=r"max: cannot reduce an empty tensor of shape \(0, 3\)"):
        gt.max(gt.tensor(e), axis=0)
    with pytest.raises(ValueError, match="min: cannot reduce an empty"):
        gt.min(gt.tensor(e))


def test_mean_of_integers_is_float32():
    out = gt.mean(gt.tensor(np.array([1, 2, 4])))
    assert out.dtype == np.float32  # PyTorch's and JAX's rule (tests/test_habits.py: the table)
    np.testing.assert_allclose(out.numpy(), 7 / 3, rtol=1e-6)


# --------------------------------------------------------------------------- max / min ties
def test_max_ties_split_gradient_evenly():
    x = np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0]])
    g = _grad(gt.max, x, axis=1).numpy()
    np.testing.assert_allclose(g, [[0, 0.5, 0.5], [1 / 3, 1 / 3, 1 / 3]])
    g = _grad(gt.max, x).numpy()  # global max 3 is tied twice
    np.testing.assert_allclose(g, [[0, 0.5, 0.5], [0, 0, 0]])


def test_min_ties_split_gradient_evenly():
    x = np.array([[1.0, 1.0, 3.0], [0.0, 2.0, 5.0]])
    g = _grad(gt.min, x, axis=-1, keepdims=True).numpy()
    np.testing.assert_allclose(g, [[0.5, 0.5, 0], [1, 0, 0]])
    assert gt.min(gt.tensor(x), axis=-1, keepdims=True).shape == (2, 1)


def test_tensor_max_min_methods():
    x = gt.tensor(np.array([[1.0, 4.0], [3.0, 2.0]]))
    np.testing.assert_array_equal(x.max(axis=0).numpy(), [3.0, 4.0])
    np.testing.assert_array_equal(x.min(axis=1).numpy(), [1.0, 2.0])
    np.testing.assert_allclose(x.mean().numpy(), 2.5)


# --------------------------------------------------------------------------- prod with zeros
def test_prod_gradient_with_one_zero_is_exact():
    x = np.array([2.0, 0.0, 3.0, -1.5])
    g = _grad(gt.prod, x).numpy()
    np.testing.assert_allclose(g, [0.0, 2.0 * 3.0 * -1.5, 0.0, 0.0])
    assert np.all(np.isfinite(g))


def test_prod_gradient_with_two_zeros_is_zero():
    x = np.array([[0.0, 2.0, 0.0], [1.0, 2.0, 3.0]])
    g = _grad(gt.prod, x, axis=1).numpy()
    np.testing.assert_allclose(g, [[0, 0, 0], [6, 3, 2]])


def test_prod_one_zero_against_finite_differences():
    check_grads(gt.prod, (np.array([[0.0, 1.2, -0.7], [0.9, 1.1, 1.3]]),), {"axis": 1}, order=2)


def test_prod_second_derivative_at_a_zero():
    # d2/dx0 dx1 of x0*x1*x2 at x1 = 0 is x2; d2/dx1^2 is 0
    x = gt.tensor(np.array([2.0, 0.0, 3.0]))
    with gt.GradientTape() as outer:
        outer.watch(x)
        with gt.GradientTape() as inner:
            inner.watch(x)
            y = gt.prod(x)
        g = inner.gradient(y, x)
        g1 = g[1]
    h = outer.gradient(g1, x).numpy()
    np.testing.assert_allclose(h, [3.0, 0.0, 2.0])


# --------------------------------------------------------------------------- norm, std at 0
def test_norm_gradient_at_zero_is_zero_not_nan():
    g = _grad(gt.norm, np.zeros((2, 3))).numpy()
    np.testing.assert_array_equal(g, np.zeros((2, 3)))
    g = _grad(gt.norm, np.array([[0.0, 0.0], [3.0, 4.0]]), axis=1).numpy()
    np.testing.assert_allclose(g, [[0, 0], [0.6, 0.8]])


def test_norm_matches_numpy_linalg():
    x = np.arange(12.0).reshape(3, 4) - 5
    np.testing.assert_allclose(gt.norm(gt.tensor(x)).numpy(), np.linalg.norm(x))
    np.testing.assert_allclose(gt.norm(gt.tensor(x), axis=0).numpy(), np.linalg.norm(x, axis=0))
    np.testing.assert_allclose(gt.norm(gt.tensor(x), "fro").numpy(), np.linalg.norm(x, "fro"))
    assert gt.norm(gt.tensor(np.array([3, 4]))).dtype == np.float32
    with pytest.raises(NotImplementedError, match="norm: vector ord=0"):  # no gradient
        gt.norm(gt.tensor(x), 0, axis=1)


def test_std_gradient_of_constant_is_zero():
    g = _grad(gt.std, np.full((3,), 2.0)).numpy()
    np.testing.assert_array_equal(g, np.zeros(3))


def test_var_std_ddof():
    x = np.array([[1.0, 2.0, 4.0], [3.0, 3.5, 0.5]])
    for ddof in (0, 1):
        np.testing.assert_allclose(gt.var(gt.tensor(x), axis=1, ddof=ddof).numpy(),
                                   np.var(x, axis=1, ddof=ddof))
        np.testing.assert_allclose(gt.std(gt.tensor(x), ddof=ddof).numpy(), np.std(x, ddof=ddof))
        check_grads(gt.var, (x,), {"axis": 1, "ddof": ddof})
        check_grads(gt.std, (x,), {"axis": 0, "ddof": ddof})


# --------------------------------------------------------------------------- logsumexp
def test_logsumexp_is_stable():
    x = np.array([[1000.0, 1000.0], [-1000.0, -1000.0]], dtype=np.float32)
    out = gt.logsumexp(gt.tensor(x), axis=1).numpy()
    np.testing.assert_allclose(out, [1000 + np.log(2), -1000 + np.log(2)], rtol=1e-6)
    g = _grad(gt.logsumexp, x, axis=1).numpy()
    np.testing.assert_allclose(g, np.full((2, 2), 0.5))
    out = gt.logsumexp(gt.tensor(np.array([-np.inf, -np.inf]))).numpy()
    assert out == -np.inf


# --------------------------------------------------------------------------- second order
@pytest.mark.parametrize("name", ["sum", "mean", "logsumexp", "prod", "var", "std", "norm"])
def test_second_derivative_nested_tapes(name, rng):
    x = rng.uniform(0.5, 1.5, (3, 4))
    check_grads(lambda t: getattr(gt, name)(t * t * t, axis=1), (x,), order=2)
    check_grads(lambda t: getattr(gt, name)(gt.sin(t)), (x,), order=3)


def test_logsumexp_hessian_is_softmax_jacobian():
    x = gt.tensor(np.array([0.1, 0.5, -0.3]))
    with gt.GradientTape() as outer:
        outer.watch(x)
        with gt.GradientTape() as inner:
            inner.watch(x)
            y = gt.logsumexp(x)
        p = inner.gradient(y, x)
    h = outer.jacobian(p, x).numpy()
    s = np.exp(x.numpy()) / np.exp(x.numpy()).sum()
    np.testing.assert_allclose(h, np.diag(s) - np.outer(s, s), atol=1e-12)


# --------------------------------------------------------------------------- argmax / argmin
def test_argmax_argmin():
    x = np.array([[1.0, 5.0, 5.0], [7.0, -4.0, 0.0]])
    t = gt.tensor(x)
    np.testing.assert_array_equal(gt.argmax(t, axis=1).numpy(), np.argmax(x, axis=1))
    np.testing.assert_array_equal(gt.argmin(t, axis=-2).numpy(), np.argmin(x, axis=0))
    assert gt.argmax(t).numpy() == np.argmax(x)
    assert gt.argmax(t, axis=1, keepdims=True).shape == (2, 1)
    assert gt.argmax(t).dtype.kind == "i"
    with gt.GradientTape() as tape:
        tape.watch(t)
        i = gt.argmax(t, axis=1)
    assert i.dtype.kind == "i"
    assert tape.gradient(gt.sum(i.astype("float64")), t) is None
    with pytest.raises(ValueError, match="argmax: axis 2 is out of range"):
        gt.argmax(t, axis=2)
    with pytest.raises(TypeError, match="argmin: axis must be None or an int"):
        gt.argmin(t, axis=(0, 1))
    with pytest.raises(ValueError, match="argmax: cannot take the argmax of an empty"):
        gt.argmax(gt.tensor(np.zeros((0,))))


def test_axis_errors_name_the_op():
    x = gt.tensor(np.ones((2, 3)))
    with pytest.raises(ValueError, match="sum: axis 2 is out of range for a tensor of rank 2"):
        gt.sum(x, axis=2)
    with pytest.raises(ValueError, match="mean: axis -3 is out of range"):
        gt.mean(x, axis=-3)
    with pytest.raises(ValueError, match="var: repeated axis"):
        gt.var(x, axis=(1, -1))


def test_matrix_norms_of_float16_and_of_empty_matrices():
    # the SVD norms of float16 raised NumPy's "array type float16 is unsupported"; ord=1 / inf
    # of a matrix with no columns / rows raised from an internal max (NumPy gives 0)
    a = np.array([[1.0, 2.0], [3.0, 4.0]])
    x16 = gt.tensor(a.astype(np.float16))
    for o in ("nuc", 2, -2):
        with gt.GradientTape() as tape:
            tape.watch(x16)
            n = gt.norm(x16, ord=o)
        assert n.dtype == np.float16
        np.testing.assert_allclose(float(n), np.linalg.norm(a, o), rtol=1e-3)
        g = tape.gradient(n, x16)
        assert g.dtype == np.float16 and np.isfinite(g.numpy()).all()
    for o, shape in ((1, (3, 0)), (np.inf, (0, 3)), (1, (0, 3)), (np.inf, (3, 0))):
        z = gt.tensor(np.zeros(shape))
        with gt.GradientTape() as tape:
            tape.watch(z)
            n = gt.norm(z, ord=o)
        assert float(n) == np.linalg.norm(np.zeros(shape), o) == 0.0
        assert tape.gradient(n, z, unconnected_gradients="zero").shape == shape
    with pytest.raises(ValueError, match="smallest sum"):
        gt.norm(gt.tensor(np.zeros((3, 0))), ord=-1)


@pytest.mark.parametrize("method", ["sum", "mean"])
def test_a_reduction_method_names_its_own_dtype_argument(method):
    # (was "astype: dtype must be ...": an argument the caller never passed)
    with pytest.raises(TypeError, match=rf"^Tensor.{method}: dtype must be a NumPy dtype "
                                        r"\(e.g. 'float32'\), got 'foo'"):
        getattr(gt.ones(3), method)(dtype="foo")
    assert getattr(gt.ones(3), method)(dtype="float64").dtype == np.float64


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # (the forward overflows, by design)
@pytest.mark.parametrize("values, dtype, want", [
    ([np.inf, 2.0, 3.0], np.float64, [6.0, np.inf, np.inf]),
    ([np.inf, 0.0, 2.0], np.float64, [0.0, np.inf, np.nan]),
    ([np.nan, 0.0, 1.0], np.float64, [0.0, np.nan, np.nan]),
    ([1e30, 1e30, 0.0], np.float32, [0.0, 0.0, np.inf]),
    ([300.0, 300.0, 0.0], np.float16, [0.0, 0.0, np.inf]),
    ([1e-30, 1e-30, 1e30], np.float32, [1.0, 1.0, 0.0]),
])
def test_prod_partials_are_the_others_product_where_the_whole_overflows(values, dtype, want):
    """The partials were y / x_i: a product that overflowed or held inf/NaN made the other
    entries' partials NaN (prod([1e30, 1e30, 0]) in float32: [nan, nan, inf])."""
    x = gt.tensor(np.array(values, dtype))
    with gt.GradientTape() as tape:
        tape.watch(x)
        y = gt.prod(x)
    with np.errstate(all="ignore"):
        g = tape.gradient(y, x).numpy()
    np.testing.assert_array_equal(g, np.array(want, dtype))


def test_prod_partials_over_several_axes_and_hessian_with_zeros():
    rng = np.random.default_rng(3)
    x = rng.uniform(0.5, 1.5, (3, 2, 4))
    x[0, 1, 2] = 0.0
    x[2, 0, 1] = 0.0
    x[2, 1, 3] = 0.0
    for axis in [None, (0, 2), 1, (2, 0)]:
        with gt.GradientTape() as tape:
            xt = gt.tensor(x)
            tape.watch(xt)
            y = gt.sum(gt.prod(xt, axis=axis) * 1.5)
        g = tape.gradient(y, xt).numpy()
        ax = tuple(range(3)) if axis is None else (axis if isinstance(axis, tuple) else (axis,))
        want = np.zeros_like(x)
        for idx in np.ndindex(*x.shape):  # product of the others in idx's slice
            sl = tuple(slice(None) if d in ax else idx[d] for d in range(3))
            mask = np.ones(x.shape, bool)
            mask[idx] = False
            want[idx] = 1.5 * np.prod(x[sl][mask[sl]])
        np.testing.assert_allclose(g, want, rtol=1e-12, atol=0)
    v = np.array([0.0, 2.0, 0.0, 3.0])  # two zeros: d2/da db is the product of the rest
    h = gt.hessian(gt.prod)(gt.tensor(v)).numpy()
    want_h = np.zeros((4, 4))
    want_h[0, 2] = want_h[2, 0] = 6.0
    np.testing.assert_allclose(h, want_h)


def test_mean_var_std_equal_numpys_bit_for_bit():
    rng = np.random.default_rng(2)
    for dt in (np.float32, np.float64):
        for shape, axis in [((7,), None), ((3, 5), 0), ((2, 3, 4), (0, 2)), ((513, 3), 0)]:
            x = (rng.standard_normal(shape) * 10 + 3).astype(dt)
            t = gt.tensor(x)
            np.testing.assert_array_equal(gt.mean(t, axis=axis).numpy(), np.mean(x, axis=axis))
            for ddof in (0, 1):
                for f, ref in ((gt.var, np.var), (gt.std, np.std)):
                    got, want = f(t, axis=axis, ddof=ddof).numpy(), ref(x, axis=axis, ddof=ddof)
                    assert got.dtype == want.dtype
                    np.testing.assert_array_equal(got, want)
    x = np.full(2 ** 24 + 1, 1.7, np.float32)  # the count past float32's integers
    assert gt.mean(gt.tensor(x)).numpy() == np.mean(x)


def test_var_and_std_are_quiet_in_a_replayed_step():
    import warnings

    if gt.backend_name() != "numpy":
        pytest.skip("NumPy's RuntimeWarnings: a device backend raises none")

    step = gt.function(lambda x: gt.var(x) + gt.std(x) + gt.mean(x))
    x = gt.tensor(np.array([3e38, -3e38], np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        warnings.filterwarnings("ignore", category=RuntimeWarning, module=r"gradtape(\.|\Z)")
        for _ in range(3):  # traced, then replayed
            assert np.isinf(step(x).numpy())
