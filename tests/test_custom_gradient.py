"""@gt.custom_gradient (TF semantics): one record whose VJP calls the user's grad, checked."""

from __future__ import annotations

import numpy as np
import pytest

import gradtape as gt


def f64(v):
    """A float64 tensor on the active backend."""
    return gt.tensor(np.asarray(v, dtype=np.float64).tolist(), dtype="float64")


@gt.custom_gradient
def log1pexp(x):
    e = gt.exp(x)

    def grad(dy):
        return dy * (1.0 - 1.0 / (1.0 + gt.exp(x)))

    return gt.log(1.0 + e), grad


@gt.custom_gradient
def clip_grad(x):
    def grad(dy):
        return gt.clip(dy, -1.0, 1.0)

    return x * 1.0, grad


def test_numerically_stable_gradient(backend):
    x = gt.tensor(100.0)
    with gt.GradientTape() as tape:
        tape.watch(x)
        with np.errstate(over="ignore"):
            y = log1pexp(x)
    with np.errstate(over="ignore"):
        assert float(tape.gradient(y, x)) == 1.0


def test_grad_replaces_the_true_gradient():
    x = gt.tensor([2.0, -3.0])
    with gt.GradientTape() as tape:
        tape.watch(x)
        y = clip_grad(x) * 5.0
    np.testing.assert_allclose(tape.gradient(y, x).numpy(), [1.0, 1.0])


def test_forward_ops_are_not_recorded_one_record_is():
    x = gt.tensor(0.5)
    with gt.GradientTape(persistent=True) as outer:
        outer.watch(x)
        with gt.GradientTape(persistent=True) as inner:
            inner.watch(x)
            y = log1pexp(x)
        # exp, add, log inside the function are not on either tape
        assert inner.recorded_ops() == ("log1pexp",) and outer.recorded_ops() == ("log1pexp",)
        x * 3.0  # restored after the forward: outer records again, inner (exited) does not
        assert outer.recorded_ops() == ("log1pexp", "mul") and inner.recorded_ops() == ("log1pexp",)
    assert float(inner.gradient(y, x)) == pytest.approx(1 / (1 + np.exp(-0.5)))


def test_tapes_restored_after_forward_even_on_error():
    @gt.custom_gradient
    def boom(x):
        raise RuntimeError("boom")

    x = gt.tensor(1.0)
    with gt.GradientTape() as tape:
        tape.watch(x)
        with pytest.raises(RuntimeError, match="boom"):
            boom(x)
        y = x * 2.0  # the tape records again, once (not paused, not pushed twice)
        assert tape.recorded_ops() == ("mul",)
    assert float(tape.gradient(y, x)) == 2.0


@pytest.mark.parametrize("f", [5, None, "f"])
def test_decorating_a_non_callable_is_refused_at_decoration(f):
    with pytest.raises(TypeError, match=r"custom_gradient: f must be callable \(the decorated "
                                        rf"function\), got {f!r}"):
        gt.custom_gradient(f)


def test_no_tape_just_runs_forward():
    y = log1pexp(gt.tensor(0.0))
    np.testing.assert_allclose(float(y), np.log(2.0), rtol=1e-6)


def test_unwatched_input_gives_none_and_no_record():
    x = gt.tensor(1.0)
    with gt.GradientTape() as tape:
        y = log1pexp(x)
    assert tape.recorded_ops() == ()
    assert tape.gradient(y, x) is None


def test_multiple_args_one_gradient_each():
    @gt.custom_gradient
    def mul(a, b):
        def grad(dy):
            return dy * b * 10.0, dy * a * 100.0

        return a * b, grad

    a, b = gt.tensor(2.0), gt.tensor(3.0)
    with gt.GradientTape() as tape:
        tape.watch([a, b])
        y = mul(a, b)
    ga, gb = tape.gradient(y, [a, b])
    assert float(ga) == 30.0 and float(gb) == 200.0


def test_only_needed_gradients_flow_and_non_tensor_args_pass_through():
    @gt.custom_gradient
    def scale(a, k, b, *, offset=0.0):
        def grad(dy):
            return [dy * k, None]

        return a * k + b * 0.0 + offset, grad

    a, b = gt.tensor(2.0), gt.tensor(3.0)
    with gt.GradientTape() as tape:
        tape.watch(a)
        y = scale(a, 4.0, b, offset=1.0)
    assert float(y) == 9.0
    assert float(tape.gradient(y, a)) == 4.0


def test_wrong_gradient_count_raises_value_error():
    @gt.custom_gradient
    def f(a, b):
        def grad(dy):
            return dy

        return a * b, grad

    a, b = gt.tensor(2.0), gt.tensor(3.0)
    with gt.GradientTape() as tape:
        tape.watch([a, b])
        y = f(a, b)
    with pytest.raises(ValueError, match=r"f: grad returned 1 gradient\(s\), expected 2"):
        tape.gradient(y, [a, b])


def test_wrong_gradient_count_single_arg():
    @gt.custom_gradient
    def f(a):
        def grad(dy):
            return dy, dy

        return a * 2.0, grad

    a = gt.tensor(2.0)
    with gt.GradientTape() as tape:
        tape.watch(a)
        y = f(a)
    with pytest.raises(ValueError, match="returned 2 gradient.*expected 1"):
        tape.gradient(y, a)


def test_wrong_gradient_shape_names_argument_and_shapes():
    @gt.custom_gradient
    def f(a, bias):
        def grad(dy):
            return dy, dy  # dy has a's shape (2, 3), bias is (3,)

        return a + bias, grad

    a = gt.tensor(np.ones((2, 3), np.float32))
    bias = gt.tensor(np.ones(3, np.float32))
    with gt.GradientTape() as tape:
        tape.watch([a, bias])
        y = f(a, bias)
    with pytest.raises(ValueError, match=r"'bias'.*\(2, 3\).*\(3,\)"):
        tape.gradient(y, [a, bias])


def test_function_must_return_pair():
    @gt.custom_gradient
    def f(a):
        return a * 2.0

    with pytest.raises(TypeError, match=r"\(y, grad\)"):
        f(gt.tensor(1.0))


def test_gradient_dtype_cast_to_input_dtype():
    @gt.custom_gradient
    def f(a):
        def grad(dy):
            return gt.tensor(np.ones(a.shape, np.float64))

        return a * 2.0, grad

    a = gt.tensor([1.0, 2.0])
    with gt.GradientTape() as tape:
        tape.watch(a)
        y = f(a)
    g = tape.gradient(y, a)
    assert g.dtype == np.float32


def test_input_returned_as_output():
    @gt.custom_gradient
    def ident(a):
        def grad(dy):
            return dy * 3.0

        return a, grad

    a = gt.tensor(2.0)
    with gt.GradientTape() as tape:
        tape.watch(a)
        y = ident(a)
        z = y * y
    # dz/dy = 2y = 4, grad multiplies by 3
    assert float(tape.gradient(z, a)) == 12.0


# --------------------------------------------------------------------------- variables
def test_variables_keyword():
    w = gt.Variable(2.0, name="w")

    @gt.custom_gradient
    def linear(x):
        def grad(dy, variables=None):
            assert variables == [w]
            return dy * w * 10.0, [dy * x * 100.0]

        return x * w, grad

    x = gt.tensor(3.0)
    with gt.GradientTape() as tape:
        tape.watch(x)
        y = linear(x)
    assert tape.watched_variables() == (w,)
    gx, gw = tape.gradient(y, [x, w])
    assert float(gx) == 20.0 and float(gw) == 300.0


def test_variables_with_var_kwargs():
    w = gt.Variable(2.0)

    @gt.custom_gradient
    def linear(x):
        def grad(dy, **kw):
            return dy * w, [dy * x]

        return x * w, grad

    x = gt.tensor(3.0)
    with gt.GradientTape() as tape:
        y = linear(x)
    assert float(tape.gradient(y, w)) == 3.0


def test_reading_variable_without_variables_keyword_is_type_error():
    w = gt.Variable(2.0, name="w")

    @gt.custom_gradient
    def linear(x):
        def grad(dy):
            return dy * w

        return x * w, grad

    with pytest.raises(TypeError, match="'w'.*variables"):
        linear(gt.tensor(1.0))
    with gt.GradientTape():
        with pytest.raises(TypeError, match="variables"):
            linear(gt.tensor(1.0))


def test_non_trainable_variable_or_variable_argument_needs_no_keyword():
    c = gt.Variable(2.0, trainable=False)
    w = gt.Variable(3.0)

    @gt.custom_gradient
    def f(x):
        def grad(dy):
            return dy * c * 7.0

        return x * c, grad

    with gt.GradientTape() as tape:
        y = f(w)  # a Variable passed as an argument is an input, not a captured variable
    assert float(tape.gradient(y, w)) == 14.0


def test_variable_grads_count_checked():
    w = gt.Variable(2.0)

    @gt.custom_gradient
    def linear(x):
        def grad(dy, variables=None):
            return dy * w, []

        return x * w, grad

    x = gt.tensor(3.0)
    with gt.GradientTape() as tape:
        y = linear(x)
    with pytest.raises(ValueError, match="0 variable gradient.*expected 1"):
        tape.gradient(y, w)


def test_variable_grads_must_be_pair():
    w = gt.Variable(2.0)

    @gt.custom_gradient
    def linear(x):
        def grad(dy, variables=None):
            return dy * w

        return x * w, grad

    with gt.GradientTape() as tape:
        y = linear(gt.tensor(3.0))
    with pytest.raises(ValueError, match="input_gradients, variable_gradients"):
        tape.gradient(y, w)


# --------------------------------------------------------------------------- multiple outputs
@gt.custom_gradient
def sum_and_prod(a, b):
    def grad(d_sum, d_prod):
        return d_sum + d_prod * b, d_sum + d_prod * a

    return (a + b, a * b), grad


def test_multiple_outputs():
    a, b = gt.tensor(2.0), gt.tensor(3.0)
    with gt.GradientTape(persistent=True) as tape:
        tape.watch([a, b])
        s, p = sum_and_prod(a, b)
        both = s * 10.0 + p
    assert [float(g) for g in tape.gradient(p, [a, b])] == [3.0, 2.0]
    assert [float(g) for g in tape.gradient(s, [a, b])] == [1.0, 1.0]  # d_prod = zeros
    assert [float(g) for g in tape.gradient(both, [a, b])] == [13.0, 12.0]
    assert [float(g) for g in tape.gradient([s, p], [a, b])] == [4.0, 3.0]


def test_multiple_outputs_structure_kept():
    @gt.custom_gradient
    def f(a):
        def grad(d1, d2):
            return d1 + d2

        return [a * 1.0, a * 2.0], grad

    out = f(gt.tensor(1.0))
    assert isinstance(out, list) and len(out) == 2


def test_multiple_outputs_in_nested_tapes():
    a, b = f64(2.0), f64(3.0)
    with gt.GradientTape() as outer:
        outer.watch(a)
        with gt.GradientTape() as inner:
            inner.watch([a, b])
            s, p = sum_and_prod(a, b)
            p2 = p * p
        ga = inner.gradient(p2, a)  # 2 p b = 2 a b^2
    assert float(ga) == 36.0
    assert float(outer.gradient(ga, a)) == 18.0  # 2 b^2


# --------------------------------------------------------------------------- higher order
def test_second_order_through_custom_gradient():
    x = f64(0.3)
    with gt.GradientTape() as outer:
        outer.watch(x)
        with gt.GradientTape() as inner:
            inner.watch(x)
            y = log1pexp(x)
        g = inner.gradient(y, x)
    s = 1.0 / (1.0 + np.exp(-0.3))
    np.testing.assert_allclose(float(g), s, rtol=1e-12)
    np.testing.assert_allclose(float(outer.gradient(g, x)), s * (1 - s), rtol=1e-12)


def test_persistent_tape_records_custom_backward():
    x = f64(0.3)
    with gt.GradientTape(persistent=True) as tape:
        tape.watch(x)
        y = log1pexp(x)
        g = tape.gradient(y, x)
    s = 1.0 / (1.0 + np.exp(-0.3))
    np.testing.assert_allclose(float(tape.gradient(g, x)), s * (1 - s), rtol=1e-12)


def test_custom_gradient_matches_check_grads():
    from gradtape.testing import check_grads

    check_grads(lambda x: log1pexp(x) * x, (np.array([0.3, -1.2, 2.0]),), order=2)


def test_nested_custom_functions():
    @gt.custom_gradient
    def outer_fn(x):
        def grad(dy):
            return dy * 2.0

        return clip_grad(x) * 2.0, grad  # clip_grad inside: not recorded

    x = gt.tensor(5.0)
    with gt.GradientTape() as tape:
        tape.watch(x)
        y = outer_fn(x) * 10.0
    assert float(tape.gradient(y, x)) == 20.0
