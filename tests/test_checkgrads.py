"""The shared gradient checker must accept right gradients and reject wrong ones (first and
second order) with a message naming the argument, the order and both numbers."""

from __future__ import annotations

import numpy as np
import pytest

import gradtape as gt
from gradtape.extend import REGISTRY, bind, primitive
from gradtape.testing import check_grads, numerical_jacobian


@pytest.fixture
def make_primitive():
    """Declare throw-away primitives (``rule(m, rec, g)`` VJPs, see gradtape.extend), removed
    from the registry afterwards (so the registry completeness tests only see the library's
    own primitives)."""
    made = []

    def make(name, impl, rule, **kw):
        p = primitive(name, impl, rule=rule, **kw)
        made.append(name)
        return p

    yield make
    for name in made:
        REGISTRY.pop(name, None)


def test_accepts_correct_gradients(rng):
    x = rng.standard_normal((2, 3))
    w = rng.standard_normal((3, 4))
    check_grads(lambda x, w: gt.tanh(x @ w) * gt.exp(x[:, :1]), (x, w))
    check_grads(lambda x: gt.sin(x) * x, (np.array(0.7),))  # 0-d
    check_grads(lambda x: gt.exp(x), (np.zeros((0, 3)),))  # empty


def test_first_order_error_names_argument_order_and_numbers(make_primitive):
    p = make_primitive("_cg_bad_square", lambda xp, x: x * x,
                       lambda m, rec, g: (g * m.val(rec.inputs[0]),))
    with pytest.raises(AssertionError) as info:
        check_grads(lambda a, b: bind(p, a) + b, (np.ones(3), np.array([1.0, 2.0, 3.0])))
    msg = str(info.value)
    assert "args[0]" in msg and "order-1" in msg
    assert "<v, J^T u>" in msg and "<J v, u>" in msg and "relative error" in msg


def test_wrong_argument_is_the_one_named(make_primitive):
    p = make_primitive("_cg_bad_mul", lambda xp, a, b: a * b,
                       lambda m, rec, g: (g * m.val(rec.inputs[1]), g * 2 * m.val(rec.inputs[0])))
    with pytest.raises(AssertionError, match=r"respect to args\[1\]"):
        check_grads(lambda a, b: bind(p, a, b), (np.array([0.5, 1.5]), np.array([1.0, -2.0])))


def test_second_order_error_is_caught(make_primitive):
    # Right first derivative, but the VJP is not differentiable (x * x enters as a constant).
    def rule(m, rec, g):
        x = m.data(m.val(rec.inputs[0]))
        return (g * 3 * m.const(x * x, g),)

    p = make_primitive("_cg_cube", lambda xp, x: x * x * x, rule)
    x = np.array([1.0, -2.0, 0.5])
    check_grads(lambda x: bind(p, x), (x,), order=1)
    with pytest.raises(AssertionError, match="order-2") as info:
        check_grads(lambda x: bind(p, x), (x,))
    assert "None" in str(info.value)  # the outer tape saw no gradient at all


def test_unconnected_input_with_nonzero_derivative_fails():
    def leaky(x):  # the gradient is lost through a host round trip
        return gt.tensor(np.asarray(x) * 2.0)

    with pytest.raises(AssertionError, match="no gradient"):
        check_grads(leaky, (np.array([1.0, 2.0]),), order=1)


def test_unconnected_input_with_zero_derivative_passes():
    check_grads(lambda a, b: a * 2.0, (np.ones(2), np.ones(3)))


def test_non_float_args_are_passed_through():
    seen = {}

    def f(x, idx, k, mask):
        seen["types"] = (type(idx), type(k), mask.dtype)
        return gt.where(gt.tensor(mask), x[idx] * k, 0.0)

    check_grads(f, (np.array([1.0, 2.0, 3.0]), np.array([2, 0, 0]), 3, np.array([True, False, True])))
    assert seen["types"] == (np.ndarray, int, np.dtype(bool))


def test_list_argument_items_are_differentiated():
    def f(xs):
        assert isinstance(xs, list) and all(isinstance(t, gt.Tensor) for t in xs)
        return xs[0] * xs[1] + gt.sin(xs[2])

    check_grads(f, ([np.ones(2), np.array([2.0, 3.0]), np.array([0.1, 0.2])],))


def test_multiple_outputs_are_all_checked(make_primitive):
    p = make_primitive("_cg_bad_exp", lambda xp, x: np.exp(x), lambda m, rec, g: (g,))
    check_grads(lambda x: (gt.sin(x), gt.cos(x)), (np.array([0.3, 0.4]),))
    with pytest.raises(AssertionError):
        check_grads(lambda x: (gt.sin(x), bind(p, x)), (np.array([0.3, 0.4]),), order=1)


def test_inputs_are_checked_in_float64():
    dtypes = []

    def f(x):
        dtypes.append(x.dtype)
        return x * x

    check_grads(f, (np.ones(3, dtype=np.float32),), order=1)
    assert set(dtypes) == {np.dtype(np.float64)}


def test_kwargs_are_passed():
    check_grads(gt.leaky_relu, (np.array([-1.0, 2.0]),), {"negative_slope": 0.2})


def test_errors_for_bad_use():
    with pytest.raises(ValueError, match="no float array"):
        check_grads(lambda k: gt.tensor(1.0), (3,))
    with pytest.raises(ValueError, match="order"):
        check_grads(gt.exp, (np.ones(2),), order=0)
    with pytest.raises(TypeError, match="Tensors"):
        check_grads(lambda x: np.asarray(x), (np.ones(2),))


@pytest.mark.parametrize("kw, exc, msg", [
    ({"eps": 0}, ValueError, r"check_grads: eps must be a finite number > 0 \(or None\), got 0.0"),
    ({"eps": float("nan")}, ValueError, r"eps must be a finite number > 0 .*got nan"),
    ({"eps": -1e-3}, ValueError, r"eps must be a finite number > 0 .*got -0.001"),
    ({"rtol": float("nan")}, ValueError, r"rtol must be a finite number >= 0 .*got nan"),
    ({"atol": -1.0}, ValueError, r"atol must be a finite number >= 0 .*got -1.0"),
    ({"order": "2"}, TypeError, r"check_grads: order must be an int, got '2'"),
    ({"kwargs": [1]}, TypeError, r"check_grads: kwargs must be a dict or None, got list"),
    ({"seed": "a"}, TypeError, r"check_grads: seed must be an int >= 0 or None, got 'a'"),
])
def test_bad_settings_are_named(kw, exc, msg):
    with pytest.raises(exc, match=msg):
        check_grads(lambda a: gt.sum(a * a), (np.ones(2),), **kw)


@pytest.mark.parametrize("args", [np.ones(2), gt.ones(2)])
def test_args_must_be_a_tuple_or_list(args):
    with pytest.raises(TypeError, match=r"check_grads: args must be a tuple or list .*got "
                                        rf"{type(args).__name__}"):
        check_grads(lambda a: gt.sum(a), args)
    with pytest.raises(TypeError, match=r"numerical_jacobian: args must be a tuple or list"):
        numerical_jacobian(lambda a: a * 2, args)


def test_numerical_jacobian_step_is_checked():
    with pytest.raises(ValueError, match=r"numerical_jacobian: eps must be a finite number > 0 "
                                         r".*got 0.0"):
        numerical_jacobian(lambda a: a * 2, (np.ones(2),), eps=0)


def test_non_finite_output_is_reported():
    with np.errstate(invalid="ignore"), pytest.raises(AssertionError, match="not finite"):
        check_grads(gt.log, (np.array([-1.0, 1.0]),))


def test_numerical_jacobian_matches_tape_jacobian(rng):
    x = rng.standard_normal((2, 3))
    w = rng.standard_normal((3,))
    jx, jw = numerical_jacobian(lambda x, w: gt.tanh(x @ w), (x, w))
    assert jx.shape == (2, 2, 3) and jw.shape == (2, 3)
    xt, wt = gt.tensor(x), gt.tensor(w)
    with gt.GradientTape(persistent=True) as tape:
        tape.watch([xt, wt])
        y = gt.tanh(xt @ wt)
    np.testing.assert_allclose(jx, tape.jacobian(y, xt).numpy(), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(jw, tape.jacobian(y, wt).numpy(), rtol=1e-6, atol=1e-9)
