"""Regression tests for silent wrong results, tape state and error messages found by hostile
use. Each test is named after the behaviour it protects; all go through the public API."""

from __future__ import annotations

import threading
import warnings

import numpy as np
import pytest

import gradtape as gt


# --------------------------------------------------------------------------- silent wrong results
def test_optimizer_step_keeps_the_values_a_persistent_tape_read():
    w = gt.Variable([1.0, 2.0])
    with gt.GradientTape(persistent=True) as tape:
        loss1 = gt.sum(w * w)
        loss2 = gt.sum(gt.exp(w) * w)
    gt.optimizers.SGD(0.5).apply_gradients([(tape.gradient(loss1, w), w)])
    np.testing.assert_allclose(w.numpy(), [0.0, 0.0])  # the step happened
    # d/dw exp(w) * w = exp(w) * (1 + w) at the values the tape read, [1, 2]
    np.testing.assert_allclose(tape.gradient(loss2, w).numpy(), [2 * np.e, 3 * np.e ** 2], rtol=1e-5)


@pytest.mark.parametrize("make", [lambda: gt.optimizers.Adam(0.1), lambda: gt.optimizers.SGD(0.1, momentum=0.9),
                                  lambda: gt.optimizers.AdamW(0.1)])
def test_every_fused_update_keeps_the_values_an_outer_tape_read(make):
    w = gt.Variable([0.5, -1.0])
    opt = make()
    with gt.GradientTape() as outer:
        with gt.GradientTape() as inner:
            y = gt.sum(w * w * w)
        g = inner.gradient(y, w)  # 3 w^2, recorded by the outer tape
        opt.apply_gradients([(g, w)])
        z = gt.sum(g)
    np.testing.assert_allclose(outer.gradient(z, w).numpy(), [3.0, -6.0], rtol=1e-6)  # 6 w at 0.5, -1


def test_complex_sources_are_refused_with_a_reason():
    z = gt.tensor(np.array([1 + 1j], np.complex64))
    with gt.GradientTape() as tape:
        with pytest.raises(TypeError, match="complex"):
            tape.watch(z)
    with gt.GradientTape() as tape:
        y = z * 2
    with pytest.raises(TypeError, match="complex"):
        tape.gradient(y, z)


def test_complex_variables_and_assignments_are_refused():
    with pytest.raises(TypeError, match="complex"):
        gt.Variable(np.array([1 + 2j]))
    v = gt.Variable([1.0])
    with pytest.raises(TypeError, match="complex"):
        v.assign(np.array([1 + 2j]))
    np.testing.assert_array_equal(v.numpy(), [1.0])


def test_a_complex_intermediate_cuts_the_gradient_and_says_why():
    x = gt.tensor([1.0])
    with gt.GradientTape() as tape:
        tape.watch(x)
        y = gt.abs(x * gt.tensor(np.array([1 + 1j], np.complex64)))
    with pytest.raises(gt.UnconnectedGradientError, match="complex64"):
        tape.gradient(y, x, unconnected_gradients="raise")


def test_jacobian_of_an_empty_target_is_zeros_not_none():
    x = gt.tensor(np.ones((0, 7), np.float32))
    s = gt.tensor(np.ones(3, np.float32))
    with gt.GradientTape(persistent=True) as tape:
        tape.watch([x, s])
        y = x * 2.0
        z = gt.sum(s) * x
    j = tape.jacobian(y, x)
    assert j.shape == (0, 7, 0, 7)
    j2 = tape.jacobian(z, s, unconnected_gradients="raise")
    assert j2.shape == (0, 7, 3)
    e = gt.tensor(np.ones((2, 0), np.float32))
    with gt.GradientTape() as tape:
        tape.watch(e)
        w = gt.sum(e) + 1.0
    assert tape.jacobian(w, e, unconnected_gradients="raise").shape == (2, 0)


def test_batch_jacobian_with_batch_size_zero_is_zeros():
    x = gt.tensor(np.ones((0, 3), np.float32))
    with gt.GradientTape() as tape:
        tape.watch(x)
        y = x * 3.0
    j = tape.batch_jacobian(y, x)
    assert j.shape == (0, 3, 3)


# --------------------------------------------------------------------------- tape state
def test_exiting_a_tape_inside_its_own_stop_recording_stops_it_for_good():
    x = gt.tensor(1.0)
    tape = gt.GradientTape(persistent=True)
    tape.__enter__()
    tape.watch(x)
    with tape.stop_recording():
        tape.__exit__(None, None, None)
    y = x * 2  # after the exit: must not be recorded
    assert tape.gradient(y, x) is None
    assert tape.saved_bytes() == 0
    b = gt.tensor(2.0)
    with gt.GradientTape() as other:  # a later, unrelated tape works normally
        other.watch(b)
        z = b * 3
    assert float(other.gradient(z, b)) == 3.0


def test_a_tape_exited_from_another_thread_leaves_cleanly():
    tape = gt.GradientTape()
    tape.__enter__()
    errors = []

    def leave():
        try:
            tape.__exit__(None, None, None)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    t = threading.Thread(target=leave)
    t.start()
    t.join()
    assert errors == []
    x = gt.tensor(1.0)
    y = x * 2  # not recorded by the exited tape
    with gt.GradientTape() as other:
        other.watch(x)
        z = x * 5
    assert float(other.gradient(z, x)) == 5.0
    assert tape.gradient(y, x) is None


def test_a_rejected_gradient_call_leaves_a_non_persistent_tape_usable():
    w = gt.Variable([1.0])
    with gt.GradientTape() as tape:
        loss = gt.sum(w * w)
    with pytest.raises(TypeError, match="sources"):
        tape.gradient(loss, "w")
    with pytest.raises(TypeError, match="output_gradients"):
        tape.gradient(loss, w, output_gradients="a")
    assert tape.gradient(loss, w).numpy().tolist() == [2.0]
    with pytest.raises(RuntimeError, match="only\\s+once"):
        tape.gradient(loss, w)


# --------------------------------------------------------------------------- clear errors
@pytest.mark.parametrize("axis", [0.5, "0", True])
def test_a_non_integer_axis_is_refused(axis):
    with pytest.raises(TypeError, match="axis"):
        gt.sum(gt.tensor([[1.0, 2.0]]), axis=axis)


def test_an_integer_too_large_for_int64_says_so():
    with pytest.raises(OverflowError, match="int64"):
        gt.tensor(2 ** 70)
    with pytest.raises(OverflowError, match="int64"):
        gt.tensor([1, 2 ** 70])


@pytest.mark.parametrize("dtype", [str, "U3", object, "S2"])
def test_a_non_numeric_dtype_is_refused(dtype):
    with pytest.raises(TypeError, match="dtype"):
        gt.tensor([1.0], dtype=dtype)
    with pytest.raises(TypeError, match="dtype"):
        gt.Variable([1.0], dtype=dtype)


def test_dict_sources_with_mixed_key_types_say_what_is_wrong():
    x = gt.tensor([1.0])
    with gt.GradientTape() as tape:
        tape.watch(x)
        y = x * 2
    with pytest.raises(TypeError, match="keys"):
        tape.gradient(y, {1: x, "a": x})


@pytest.mark.parametrize("bad", ["fast", None, True, [0.1]])
def test_an_optimizer_refuses_a_non_numeric_learning_rate(bad):
    with pytest.raises(TypeError, match="learning_rate"):
        gt.optimizers.SGD(bad)


@pytest.mark.parametrize("grad", [[1.0, 2.0], "g", 3.0])
def test_apply_gradients_refuses_a_gradient_that_is_not_an_array(grad):
    v = gt.Variable([1.0, 2.0], name="v")
    with pytest.raises(TypeError, match="gradient for variable v"):
        gt.optimizers.SGD(0.1).apply_gradients([(grad, v)])


def test_apply_gradients_refuses_an_integer_variable_instead_of_skipping_it():
    v = gt.Variable([1, 2], name="counts")
    with pytest.raises(TypeError, match="counts.*int64"):
        gt.optimizers.SGD(0.1).apply_gradients([(gt.tensor([1, 1]), v)])


def test_nan_assigned_into_an_integer_variable_is_refused():
    v = gt.Variable([1, 2])
    with pytest.raises(ValueError, match="NaN"):
        v.assign([float("nan"), 1.0])
    assert v.numpy().tolist() == [1, 2]


@pytest.mark.parametrize("args, exc", [((-1, 3), ValueError), ((2.5, 3), TypeError), ((2, 0), ValueError),
                                       (("2", 3), TypeError)])
def test_dense_refuses_sizes_that_are_not_positive_ints(args, exc):
    with pytest.raises(exc, match="Dense"):
        gt.nn.Dense(*args)


def test_a_custom_gradient_returning_a_string_names_the_function():
    @gt.custom_gradient
    def f(v):
        return v * 1.0, lambda dy: "a"

    x = gt.tensor([1.0])
    with gt.GradientTape() as tape:
        tape.watch(x)
        y = f(x)
    with pytest.raises(TypeError, match="custom_gradient f.*str"):
        tape.gradient(y, x)


# --------------------------------------------------------------------------- true explanations
def test_a_variable_read_only_inside_stop_recording_is_explained_as_such():
    v = gt.Variable([1.0], name="v")
    with gt.GradientTape() as tape:
        with tape.stop_recording():
            y = v * 2
    with pytest.raises(gt.UnconnectedGradientError, match="stop_recording"):
        tape.gradient(y, v, unconnected_gradients="raise")


@pytest.mark.parametrize("how, phrase", [("float", "float()"), ("item", ".item()"),
                                         ("numpy", "NumPy"), ("data", ".data")])
def test_a_value_taken_out_of_the_source_is_explained_as_such(how, phrase):
    x = gt.tensor([1.0, 2.0])
    with gt.GradientTape() as tape:
        tape.watch(x)
        s = gt.sum(x)
        taken = {"float": lambda: float(s), "item": lambda: s.item(), "numpy": lambda: x.numpy(),
                 "data": lambda: x.data}[how]()
        y = gt.tensor(taken) * 2
    with pytest.raises(gt.UnconnectedGradientError) as info:
        tape.gradient(y, x, unconnected_gradients="raise")
    assert phrase in str(info.value)
    assert "was the target computed outside" not in str(info.value)


# --------------------------------------------------------------------------- selection and overflow
def _grad(f, x):
    with gt.GradientTape() as tape:
        tape.watch(x)
        y = f(x)
    return tape.gradient(y, x).numpy()


SELECTIONS = {
    "where": lambda x: gt.where(x < 15, x, gt.exp(gt.exp(x))),
    "where, a chain in the unselected branch": lambda x: gt.where(
        x < 15, x * 2, gt.sin(gt.exp(x) * gt.exp(x)) * 3 + gt.tanh(x)),
    "relu": lambda x: gt.relu(-gt.exp(gt.exp(x))) + x,
    "indexing": lambda x: gt.stack([x, gt.exp(gt.exp(x))])[0],
    "max": lambda x: gt.max(gt.stack([x + 1e30, -gt.exp(gt.exp(x))]), axis=0),
}


@pytest.mark.parametrize("fusion", [True, False], ids=["fused", "unfused"])
@pytest.mark.parametrize("n", [1, 40, 70000])
@pytest.mark.parametrize("name", sorted(SELECTIONS))
def test_an_unselected_branch_that_overflows_gives_no_nan(name, n, fusion):
    old = gt.config.fusion
    gt.config.fusion = fusion
    try:
        x = gt.tensor(np.full(n, 10.0, np.float32))
        with np.errstate(over="ignore", invalid="ignore"):
            g = _grad(SELECTIONS[name], x)
    finally:
        gt.config.fusion = old
    want = {"where": 1.0, "where, a chain in the unselected branch": 2.0, "relu": 1.0,
            "indexing": 1.0, "max": 1.0}[name]
    np.testing.assert_array_equal(g, np.full(n, want, np.float32))


def test_an_overflowing_unselected_branch_gives_no_nan_at_second_order():
    x = gt.tensor(np.array([10.0, 3.0], np.float64))
    with gt.GradientTape() as outer:
        outer.watch(x)
        with gt.GradientTape() as inner:
            inner.watch(x)
            with np.errstate(over="ignore"):
                y = gt.where(x < 15, x * x, gt.exp(gt.exp(x)))
        g = inner.gradient(y, x)
    np.testing.assert_array_equal(g.numpy(), [20.0, 6.0])
    np.testing.assert_array_equal(outer.gradient(g, x).numpy(), [2.0, 2.0])


def test_a_selected_infinite_derivative_is_still_reported():
    x = gt.tensor(np.array([0.0], np.float32))
    np.testing.assert_array_equal(_grad(lambda v: gt.where(v > -1, gt.sqrt(v), 0.0), x), [np.inf])


def test_reflected_and_or_with_an_array_or_bool_on_the_left():
    t = gt.tensor([True, False])
    assert (True & t).numpy().tolist() == [True, False]
    assert ([True, True] & t).numpy().tolist() == [True, False]
    assert ([False, False] | t).numpy().tolist() == [True, False]
    if gt.backend_name() == "numpy":  # (a host array next to a device tensor is refused)
        assert (np.array([True, True]) & t).numpy().tolist() == [True, False]
        assert (np.array([False, True]) | t).numpy().tolist() == [True, True]


@pytest.mark.parametrize("fn", ["var", "std"])
def test_var_and_std_take_a_fractional_ddof_as_numpy(fn):
    # int(ddof) truncated 1.5 to 1: a silently wrong value
    x = np.array([-2.0, 0.5, 3.0, 1.0])
    for ddof in (0.5, 1.5, 2, np.float64(1.0)):
        got = getattr(gt, fn)(gt.tensor(x), ddof=ddof)
        np.testing.assert_allclose(got.numpy(), getattr(np, fn)(x, ddof=ddof), rtol=1e-12)
    xt = gt.tensor(x)
    with gt.GradientTape() as tape:
        tape.watch(xt)
        y = getattr(gt, fn)(xt, ddof=1.5)
    eps = 1e-6
    fd = [(getattr(np, fn)(x + eps * e, ddof=1.5) - getattr(np, fn)(x - eps * e, ddof=1.5)) / (2 * eps)
          for e in np.eye(4)]
    np.testing.assert_allclose(tape.gradient(y, xt).numpy(), fd, rtol=1e-6)
    for bad in ("1", True, None):
        with pytest.raises(TypeError, match=f"{fn}: ddof must be a real number"):
            getattr(gt, fn)(xt, ddof=bad)
    with pytest.raises(ValueError, match=f"{fn}: ddof must be finite"):
        getattr(gt, fn)(xt, ddof=float("inf"))


@pytest.mark.parametrize("call, match", [
    (lambda x: gt.pad(x, 1.7), r"pad: pad_width must be ints, got 1.7"),
    (lambda x: gt.pad(x, ((0.5, 1), (0, 0))), r"pad: pad_width must be ints"),
    (lambda x: gt.tile(x, (1.5, 2)), r"tile: reps must be an int or a sequence of ints, got \(1.5, 2\)"),
    (lambda x: gt.tile(x, 2.0), r"tile: reps must be an int or a sequence of ints, got 2.0"),
    (lambda x: gt.reshape(x, (2.9, 3)), r"reshape: shape must be an int or a sequence of ints"),
    (lambda x: gt.reshape(x, (True, 6)), r"reshape: shape must be an int or a sequence of ints"),
    (lambda x: gt.broadcast_to(x, (2.0, 3)), r"broadcast_to: shape must be an int or a sequence"),
    (lambda x: gt.split(x, [1.5], axis=1), r"split: indices_or_sections must be an int or a sequence"),
    (lambda x: gt.split(x, 1.5, axis=1), r"split: indices_or_sections must be an int or a sequence"),
    (lambda x: gt.expand_dims(x, 1.0), r"expand_dims: axis must be an int or a sequence of ints"),
])
def test_shape_arguments_refuse_floats_instead_of_truncating(call, match):
    # each of these truncated a float silently (a wrongly shaped result); NumPy refuses them
    with pytest.raises(TypeError, match=match):
        call(gt.tensor(np.arange(6.0).reshape(2, 3)))


@pytest.mark.parametrize("value", ["a", None])
def test_pad_constant_values_must_be_a_number(value):
    with pytest.raises(TypeError, match=rf"pad: constant_values must be a number, got {value!r}"):
        gt.pad(gt.ones(2), 1, constant_values=value)
    assert gt.pad(gt.ones(2), 1, constant_values=np.float32(2)).numpy().tolist() == [2, 1, 1, 2]


def test_shape_arguments_still_take_int_arrays_and_numpy_ints():
    x = gt.ones((2, 3))
    assert gt.reshape(x, np.array([3, 2])).shape == (3, 2)
    assert gt.reshape(x, (np.int64(6),)).shape == (6,)
    assert gt.tile(x, np.array([2, 1])).shape == (4, 3)
    assert gt.expand_dims(x, (0, 3)).shape == (1, 2, 3, 1)
    assert [p.shape for p in gt.split(x, np.array([1]), axis=1)] == [(2, 1), (2, 2)]
    assert gt.pad(x, np.array([[0, 1], [1, 0]])).shape == (3, 4)


def test_split_and_repeat_of_an_empty_axis_as_numpy():
    e = gt.zeros((0,))
    assert [p.shape for p in gt.split(e, 2)] == [(0,), (0,)]
    assert gt.repeat(e, []).shape == (0,)
    for x, axis in ((gt.zeros((0,)), None), (gt.zeros((3, 0, 2)), 1)):
        with gt.GradientTape() as tape:  # the gradient too (an empty count list cast as floats)
            tape.watch(x)
            loss = gt.sum(gt.repeat(x, [], axis=axis))
        assert tape.gradient(loss, x).shape == x.shape
    with pytest.raises(ValueError, match="does not divide into 4 equal sections"):
        gt.split(gt.zeros((3,)), 4)


def test_norm_refuses_fro_over_one_axis_and_handles_empty_inf():
    v = gt.tensor([3.0, 4.0])
    with pytest.raises(ValueError, match="ord='fro' is a matrix norm"):
        gt.norm(v, "fro")
    with pytest.raises(ValueError, match="ord='fro' is a matrix norm"):
        gt.norm(gt.ones((2, 3)), "fro", axis=1)
    assert float(gt.norm(gt.ones((2, 2)), "fro")) == 2.0
    assert float(gt.norm(gt.zeros((0,)), np.inf)) == 0.0  # as NumPy
    assert gt.norm(gt.zeros((2, 0)), np.inf, axis=1).numpy().tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match=r"norm: ord=-inf .* over an empty axis"):
        gt.norm(gt.zeros((0,)), -np.inf)
    with pytest.raises(NotImplementedError, match="negative and NaN orders are not supported"):
        gt.norm(v, -2)


def test_uniform_over_a_range_wider_than_the_dtype_stays_finite():
    for dt, lo, hi in ((np.float32, -3e38, 3e38), (np.float64, -1e308, 1e308)):
        u = gt.random.Generator(0).uniform((2000,), lo, hi, dtype=dt).numpy()
        assert u.dtype == dt and np.isfinite(u).all() and (u >= lo).all() and (u <= hi).all()
        assert u.min() < lo / 2 and u.max() > hi / 2
    with pytest.raises(ValueError, match=r"uniform: low and high must fit float32"):
        gt.random.Generator(0).uniform((2,), 0.0, 1e39)
    with pytest.raises(ValueError, match=r"must fit float16"):
        gt.random.Generator(0).uniform((2,), 0.0, 1e5, dtype=np.float16)


def test_broadcast_errors_name_the_op_and_the_shapes():
    x = gt.ones((2, 3))
    with pytest.raises(ValueError, match=r"add: the operands' shapes \(2, 3\), \(4,\) do not broadcast"):
        x + gt.ones((4,))
    with pytest.raises(ValueError, match=r"where: the operands' shapes \(4,\), \(2, 3\), \(\) do not"):
        gt.where(gt.tensor([True] * 4), x, 0.0)
    with pytest.raises(ValueError, match=r"less: the operands' shapes"):
        _ = x < gt.ones((4,))
    with pytest.raises(ValueError, match=r"matmul: contracted dimensions differ"):
        x @ gt.ones((4, 2))


def test_safe_mul_keeps_the_product_dtype_and_sign_takes_bools():
    a = gt.tensor(np.array([1, 0, 2], np.int32))
    b = gt.tensor(np.array([True, True, False]))
    assert gt.safe_mul(a, b).dtype == np.int32 == gt.mul(a, b).dtype
    assert gt.safe_mul(a, b).numpy().tolist() == [1, 0, 0]
    s = gt.sign(gt.tensor([True, False]))
    assert s.dtype == np.bool_ and s.numpy().tolist() == [True, False]


@pytest.mark.parametrize("call", [
    lambda x: gt.split(x, 3, axis=1.7),
    lambda x: gt.transpose(x, (1.7, 0)),
    lambda x: gt.stack([x, x], axis=1.7),
    lambda x: gt.concat([x, x], axis=1.0),
    lambda x: gt.take(x, gt.tensor([0]), axis=1.7),
    lambda x: gt.repeat(x, 2, axis=1.7),
    lambda x: gt.nn.softmax(x, axis=1.0),
    lambda x: gt.nn.BatchNorm(3, axis=True),
])
def test_axis_arguments_refuse_floats_and_bools(call):
    # int(1.7) picked axis 1 silently
    with pytest.raises(TypeError, match="must be an int"):
        call(gt.ones((2, 3)))


def test_axis_arguments_take_numpy_ints_and_0d_int_tensors():
    x = gt.ones((2, 3))
    assert [p.shape for p in gt.split(x, 3, axis=np.int64(1))] == [(2, 1)] * 3
    assert gt.nn.softmax(x, axis=gt.tensor(1)).shape == (2, 3)
    assert gt.transpose(x, (np.int32(1), 0)).shape == (3, 2)


def test_global_norm_of_a_float64_overflow_is_inf_without_a_warning():
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert gt.optimizers.global_norm([gt.tensor(np.array([1e200]))]) == np.inf


def test_layers_refuse_long_double_and_take_a_byte_swapped_float32_as_native():
    with pytest.raises(TypeError, match=r"Dense: dtype must be a floating-point dtype \(float16, float32, float64\)"):
        gt.nn.Dense(2, 2, dtype=np.longdouble)
    k = gt.nn.Dense(2, 2, dtype=">f4").kernel
    assert k.dtype == np.float32 and k.dtype.isnative


def test_check_numerics_under_a_tape_inside_vmap():
    # reading the batched result's value for the check raised TypeError
    w = gt.Variable(np.array([0.5, -1.0, 2.0], np.float32))
    gt.config.check_numerics = True
    try:
        with gt.GradientTape() as tape:
            y = gt.vmap(lambda r: r * w + 1.0)(gt.ones((2, 3)))
            s = y.sum()
        np.testing.assert_allclose(tape.gradient(s, w).numpy(), [2.0, 2.0, 2.0])
        with pytest.raises(FloatingPointError, match="forward of 'log'"), \
                np.errstate(invalid="ignore"):  # (pytest shows what gradtape's filter hides)
            gt.vmap(lambda r: gt.log(r * w))(gt.ones((2, 3)))
    finally:
        gt.config.check_numerics = False


def test_errors_name_the_op_a_new_user_called():
    with pytest.raises(ValueError, match=r"pow: an integer base to a negative integer exponent"):
        gt.tensor([1, 2]) ** -1
    with pytest.raises(ValueError, match=r"pow: an integer base"):
        gt.pow(gt.tensor([2]), gt.tensor([-1]))
    a = gt.tensor([[1.0, 2.0], [2.0, 4.0]])  # singular: det's second derivative needs a^-1
    with pytest.raises(np.linalg.LinAlgError, match=r"^det: the second derivative .* singular"):
        gt.hessian(gt.det)(a)
    with pytest.raises(ValueError, match=r"layer_norm: gamma of shape \(4,\) must broadcast "
                                         r"against the normalized axes \(1,\) of x of shape "
                                         r"\(2, 3\)"):
        gt.nn.layer_norm(gt.ones((2, 3)), gamma=gt.ones(4))
    with pytest.raises(ValueError, match=r"layer_norm: beta of shape \(2, 2\)"):
        gt.nn.layer_norm(gt.ones((2, 3)), beta=gt.ones((2, 2)))
    with pytest.raises(TypeError, match=r"^an operand of an op with a tensor of shape \(2,\): "
                                        r"data must be a number.* got str"):
        gt.ones(2) * "a"
    with pytest.raises(TypeError, match=r"^an operand .*inhomogeneous"):  # the reason is kept
        gt.ones(2) * [[1, 2], [3]]
    with pytest.raises(IndexError, match=r"^take: indices: index arrays must be integer"):
        gt.take(gt.ones((2, 3)), [1.5])
    with pytest.raises(IndexError, match=r"^gather: indices: .*index 7 is out of bounds"):
        gt.gather(gt.ones((3, 2)), [7], axis=0)
    with pytest.raises(ValueError, match=r"max_pool2d: .* smaller than the window \(5, 5\) "
                                         r"\(padding"):
        gt.nn.max_pool2d(gt.ones((1, 1, 3, 3)), 5)
    rule = gt.optimizers.UpdateRule("sgd2", ("p", "g"), ("lr",), (("p", "p - lr * g"),), ("p",))
    with pytest.raises(TypeError, match=r"UpdateRule.apply: arrays and scalars are sequences"):
        rule.apply({"p": np.ones(2), "g": np.ones(2)}, [0.5])
    p = np.ones(2)
    rule.apply([p, np.ones(2)], [0.5])
    np.testing.assert_array_equal(p, [0.5, 0.5])


def test_tensorflow_padding_spellings_are_taken():
    x, k = gt.ones((1, 1, 5, 5)), gt.ones((1, 1, 3, 3))
    for a, b in (("SAME", "same"), ("VALID", "valid"), ("Same", "same")):
        np.testing.assert_array_equal(gt.nn.conv2d(x, k, padding=a).numpy(),
                                      gt.nn.conv2d(x, k, padding=b).numpy())
    assert gt.nn.max_pool2d(x, 2, padding="SAME").shape == (1, 1, 3, 3)
    assert gt.nn.Conv1D(1, 2, 3, padding="SAME")(gt.ones((1, 1, 7))).shape == (1, 2, 7)
    with pytest.raises(ValueError, match="padding must be"):
        gt.nn.conv2d(x, k, padding="full")


# --------------------------------------------------------------------------- selecting VJPs
_SELECTS = [
    ("where", lambda x: gt.where(gt.tensor([True, False, True]), x, 0.0), [1.0, 0.0, 1.0]),
    ("where_b", lambda x: gt.where(gt.tensor([True, False, True]), 0.0, x), [0.0, 1.0, 0.0]),
    ("maximum", lambda x: gt.maximum(x, gt.tensor([0.0, 5.0, 1.0])), [1.0, 0.0, 0.5]),
    ("minimum", lambda x: gt.minimum(x, gt.tensor([5.0, 0.0, 1.0])), [1.0, 0.0, 0.5]),
]


@pytest.mark.parametrize("fusion", [False, True])
@pytest.mark.parametrize("name, fn, d", _SELECTS, ids=[s[0] for s in _SELECTS])
def test_a_nan_upstream_gradient_stays_out_of_the_branch_not_selected(name, fn, d, fusion):
    # the VJP multiplied by the 0/1 mask: 0 * nan = nan reached the unselected input, where
    # PyTorch, TF and JAX select (0 there)
    x = gt.Variable([1.0, 2.0, 1.0], dtype=np.float64)
    up = gt.tensor([np.nan, np.nan, 3.0], dtype=np.float64)
    want = np.where(np.array(d) == 0, 0.0, np.array(d) * up.numpy())
    old = gt.config.fusion
    gt.config.fusion = fusion
    try:
        with gt.GradientTape() as tape:
            y = fn(x)
            loss = gt.sum(gt.exp(y * 0.0) * y * up)  # a fusable run around the select
        got = tape.gradient(loss, x).numpy()
        with gt.GradientTape() as tape:
            y = fn(x)
        got2 = tape.gradient(y, x, output_gradients=up).numpy()
    finally:
        gt.config.fusion = old
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got[~np.isnan(want)], want[~np.isnan(want)])
    np.testing.assert_allclose(got2[~np.isnan(want)], want[~np.isnan(want)])
    assert not np.isnan(got2[np.array(d) == 0]).any()


def _bits(a):
    a = np.asarray(a)
    return a.view({2: np.int16, 4: np.int32, 8: np.int64}[a.dtype.itemsize])


@pytest.mark.parametrize("fusion", [False, True])
@pytest.mark.parametrize("n", [6000, 200_000])  # above the size where selects run from bits;
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])  # several blocks
def test_large_selects_pass_the_exact_upstream_gradient_to_the_branch_taken(dtype, n, fusion):
    # large selects against zero run from the operands' bits: the result must be np.where's
    # (NaN, inf and -0.0 where selected, +0.0 elsewhere), single op and in a fused run, and a
    # gt.function replay's bit for bit, on a random mask and on one of long runs
    rng = np.random.default_rng(n)
    up = rng.standard_normal(n).astype(dtype)
    up[::7], up[1::11], up[2::13] = np.nan, np.inf, -0.0
    xv, yv = rng.standard_normal(n).astype(dtype), rng.standard_normal(n).astype(dtype)
    yv[::5] = xv[::5]  # ties for maximum
    x, y, u = gt.Variable(xv), gt.Variable(yv), gt.tensor(up)

    def grads(c):
        with gt.GradientTape(persistent=True) as tape:
            s = gt.where(c, x, y)
            f = gt.where(c, x * 2.0, y * 3.0)  # a fusable run around the select
            m = gt.maximum(x, y)
            z = gt.where(c, x, 0.0)
        out = [*tape.gradient(s, [x, y], output_gradients=u),
               *tape.gradient(f, [x, y], output_gradients=u),
               *tape.gradient(m, [x, y], output_gradients=u), z]
        del tape
        return out

    old = gt.config.fusion
    gt.config.fusion = fusion
    try:
        for c in (rng.random(n) < 0.5, np.arange(n) < n // 3):
            ct = gt.tensor(c)
            step = gt.function(grads)
            with np.errstate(invalid="ignore"), warnings.catch_warnings():
                warnings.simplefilter("error")  # (a step that falls back to eager warns)
                got = grads(ct)
                for _ in range(3):
                    replayed = step(ct)
                half = np.where(xv == yv, up * dtype(0.5), 0).astype(dtype)
            assert step.trace_count == 2
            want = [np.where(c, up, 0), np.where(c, 0, up),
                    np.where(c, up, 0) * dtype(2), np.where(c, 0, up) * dtype(3),
                    np.where(xv > yv, up, half), np.where(yv > xv, up, half),
                    np.where(c, xv, 0)]
            for i, (g, r, w) in enumerate(zip(got, replayed, want)):
                assert g.dtype == r.dtype == dtype
                np.testing.assert_array_equal(g.numpy(), w.astype(dtype))  # (NaN where NaN)
                np.testing.assert_array_equal(_bits(r.numpy()), _bits(g.numpy()))
                if i in (0, 1, 6):  # a select alone: bit for bit (a fused run adding its
                    # blocks' results into zeros may turn a -0.0 into +0.0)
                    np.testing.assert_array_equal(_bits(g.numpy()), _bits(w.astype(dtype)))
    finally:
        gt.config.fusion = old


@pytest.mark.parametrize("fusion", [False, True])
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_large_selects_between_two_values_are_numpys_bit_for_bit(dtype, fusion):
    # a select between two nonzero values runs from bits above a size: gt.where's forward
    # with arrays, numbers and a broadcast mask, leaky_relu's and elu's forward, and their
    # VJPs (a derivative where(x > 0, 1, slope): alone and in a fused run), eager and replayed
    n = 9000
    rng = np.random.default_rng(7)
    av = rng.standard_normal(n).astype(dtype)
    bv = rng.standard_normal(n).astype(dtype)
    av[::7], av[1::11], av[2::13] = np.nan, -np.inf, -0.0
    bv[::5], bv[3::17] = -0.0, -np.nan
    c = rng.random(n) < 0.5
    row = rng.random((3, 3000)) < 0.5
    a, b, ct = gt.tensor(av), gt.tensor(bv), gt.tensor(c)
    for got, want in ((gt.where(ct, a, b), np.where(c, av, bv)),
                      (gt.where(ct, a, 0.3), np.where(c, av, 0.3)),
                      (gt.where(ct, -2, b), np.where(c, -2, bv)),
                      (gt.where(gt.tensor(row), gt.reshape(a[:3000], (1, 3000)), 1.5),
                       np.where(row, av[:3000], 1.5)),
                      (gt.leaky_relu(a, 0.2), np.where(av > 0, av, av * dtype(0.2)))):
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(_bits(got.numpy()), _bits(want))
    x = gt.Variable(rng.standard_normal(n).astype(dtype))
    up = gt.tensor(bv)

    def grads():
        with gt.GradientTape(persistent=True) as tape:
            y1 = gt.leaky_relu(x, 0.2)
            y2 = gt.tanh(gt.leaky_relu(x * 1.5 + 0.25, 0.2) * 2.0)  # a fusable run
            y3 = gt.nn.elu(x) if hasattr(gt.nn, "elu") else gt.elu(x)
        out = [tape.gradient(y, x, output_gradients=up) for y in (y1, y2, y3)]
        del tape
        return out

    old = gt.config.fusion
    gt.config.fusion = fusion
    try:
        with np.errstate(invalid="ignore", over="ignore"):
            got = grads()
            step = gt.function(grads)
            for _ in range(3):
                replayed = step()
    finally:
        gt.config.fusion = old
    xv = x.numpy()
    want = np.where(xv > 0, bv, bv * dtype(0.2))
    np.testing.assert_array_equal(_bits(got[0].numpy()), _bits(want))
    for g, r in zip(got, replayed):
        if gt.backend_name() == "numpy":
            np.testing.assert_array_equal(_bits(r.numpy()), _bits(g.numpy()))
        else:  # (a device's fused runs: within float rounding, see gt.function's docs;
            # 1 - tanh^2 near tanh = 1 turns an ulp of the forward into more)
            tol = 1e-2 if dtype == np.float16 else 1e-4
            np.testing.assert_allclose(r.numpy(), g.numpy(), rtol=tol, atol=tol)
    z = xv.astype(np.float64) * 1.5 + 0.25
    t = np.tanh(np.where(z > 0, z, 0.2 * z) * 2.0)
    ref2 = bv * (1 - t * t) * 2.0 * np.where(z > 0, 1.0, 0.2) * 1.5
    ok = np.isfinite(bv)
    tol = 2e-2 if dtype == np.float16 else 1e-5
    np.testing.assert_allclose(got[1].numpy()[ok], ref2[ok], rtol=tol, atol=tol)
    ref3 = bv * np.where(xv > 0, 1.0, np.exp(np.minimum(xv, 0).astype(np.float64)))
    np.testing.assert_allclose(got[2].numpy()[ok], ref3[ok], rtol=tol, atol=tol)


def test_large_selects_keep_numpys_memory_layout():
    # np.where gives a transposed (F-ordered) operand's layout to its result, and a later sum
    # adds in memory order: a select from bits must not hand back C order there (the sum's
    # last bits, and a compiled step's against the eager one, would differ)
    if gt.backend_name() != "numpy":
        pytest.skip("host arrays' layout (a device array comes back to the host C-ordered)")
    rng = np.random.default_rng(1)
    x = rng.standard_normal((256, 64)).astype(np.float32)
    xt = gt.transpose(gt.tensor(x))
    ref = np.where(x.T > 0, x.T, x.T * np.float32(0.01))
    zref = np.where(x.T > 0, x.T, 0)
    for y, want in ((gt.leaky_relu(xt, 0.01), ref), (gt.where(xt > 0, xt, xt * 0.01), ref),
                    (gt.where(xt > 0, xt, 0.0), zref)):
        got = y.numpy()
        assert got.flags.f_contiguous == want.flags.f_contiguous
        np.testing.assert_array_equal(_bits(got), _bits(want))
        np.testing.assert_array_equal(_bits(gt.sum(y).numpy()), _bits(want.sum()))
    step = gt.function(lambda t: gt.sum(gt.leaky_relu(gt.transpose(t), 0.01)))
    eager = gt.sum(gt.leaky_relu(xt, 0.01)).numpy()
    for _ in range(3):
        np.testing.assert_array_equal(_bits(step(gt.tensor(x)).numpy()), _bits(eager))


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_relu_of_large_arrays_is_numpys_maximum_bit_for_bit(dtype):
    rng = np.random.default_rng(3)
    for n in (8192, 8193 + 1024, 200_704, (1 << 21) + 7):  # rows, a tail, threaded chunks
        xv = rng.standard_normal(n).astype(dtype)
        xv[::7], xv[1::11], xv[2::13], xv[3::17] = -0.0, np.nan, -np.nan, -np.inf
        for v in (xv, xv[::2], xv[: n // 2 * 2].reshape(2, -1)):
            np.testing.assert_array_equal(_bits(gt.relu(gt.tensor(v)).numpy()),
                                          _bits(np.maximum(v, 0)))


def test_a_large_select_against_zero_broadcasts_as_numpy_does():
    rng = np.random.default_rng(1)
    c = rng.random((1, 3000)) < 0.5
    x = gt.Variable(rng.standard_normal((4, 3000)).astype(np.float32))
    with gt.GradientTape() as tape:
        z = gt.where(gt.tensor(c), x, 0.0)
        w = gt.where(gt.tensor(c), 0.0, x)
        loss = gt.sum(z * 2.0) + gt.sum(w * 3.0)
    np.testing.assert_array_equal(z.numpy(), np.where(c, x.numpy(), 0))
    np.testing.assert_array_equal(w.numpy(), np.where(c, 0, x.numpy()))
    np.testing.assert_array_equal(tape.gradient(loss, x).numpy(),
                                  np.broadcast_to(np.where(c, 2.0, 3.0), (4, 3000)))


def test_masking_rows_a_softmax_made_nan_keeps_the_gradients_finite():
    # attention over a fully padded sequence: every score of its rows is -inf, the softmax is
    # NaN there and a where zeroes those rows (the PyTorch idiom); the gradients were NaN
    rng = np.random.default_rng(0)
    x = gt.tensor(rng.standard_normal((2, 3, 4)))
    wq = gt.Variable(rng.standard_normal((4, 4)))
    wk = gt.Variable(rng.standard_normal((4, 4)))
    keep = np.ones((2, 1, 3), bool)
    keep[1] = False  # the second sequence is all padding

    def loss_fn():
        s = (x @ wq) @ gt.transpose(x @ wk, (0, 2, 1))
        s = gt.where(gt.tensor(keep), s, -np.inf)
        p = gt.nn.softmax(s, axis=-1)
        p = gt.where(gt.tensor(keep.any(-1, keepdims=True)), p, 0.0)
        return gt.sum(p @ x)

    with np.errstate(invalid="ignore"):
        with gt.GradientTape() as tape:
            loss = loss_fn()
        grads = tape.gradient(loss, [wq, wk])

        @gt.function
        def step():
            with gt.GradientTape() as t:
                v = loss_fn()
            return t.gradient(v, [wq, wk])

        for _ in range(3):
            cg = step()
    assert np.isfinite(float(loss))
    for g, c in zip(grads, cg):
        assert np.isfinite(g.numpy()).all()
        np.testing.assert_array_equal(c.numpy(), g.numpy())


def test_sqrt_of_a_select_has_gradient_zero_where_it_is_flat():
    x = gt.Variable([-1.0, 4.0], dtype=np.float64)
    for f in (lambda v: gt.where(v > 0, v, 0.0), lambda v: gt.maximum(v, 0.0)):
        with gt.GradientTape() as tape:
            y = gt.sum(gt.sqrt(f(x)))
        np.testing.assert_array_equal(tape.gradient(y, x).numpy(), [0.0, 0.25])
        _, tangent = gt.jvp(lambda v, f=f: gt.sqrt(f(v)), (x.value(),),
                            (gt.tensor([1.0, 1.0], dtype=np.float64),))
        np.testing.assert_array_equal(tangent.numpy(), [0.0, 0.25])


@pytest.mark.parametrize("call, what", [
    (lambda: gt.GradientTape(persistent="no"), "GradientTape: persistent"),
    (lambda: gt.GradientTape(watch_accessed_variables="False"), "GradientTape: watch_accessed_variables"),
    (lambda: gt.nn.Dense(2, 3, use_bias="False"), "Dense: use_bias"),
    (lambda: gt.nn.Conv2D(1, 2, 3, use_bias="False"), "Conv2D: use_bias"),
    (lambda: gt.sort(gt.tensor([2.0, 1.0]), descending="False"), "sort: descending"),
    (lambda: gt.argsort(gt.tensor([2.0, 1.0]), descending="no"), "argsort: descending"),
    (lambda: gt.Variable([1.0], trainable="no"), "Variable: trainable"),
    (lambda: gt.nn.batch_norm(gt.ones((4, 2)), training="no"), "batch_norm: training"),
    (lambda: gt.nn.dropout(gt.ones(4), 0.5, training="False"), "dropout: training"),
    (lambda: gt.nn.Dense(2, 3).train("False"), "Dense.train: mode"),
    (lambda: gt.function(lambda x: x, verify="no"), "gt.function: verify"),
    (lambda: gt.function(lambda x: x, reduce_retracing="x"), "gt.function: reduce_retracing"),
    (lambda: gt.norm(gt.ones(2), keepdims="False"), "norm: keepdims"),
])
def test_an_on_off_argument_given_as_a_string_is_refused(call, what):
    # bool("False") is True: a flag read from a config file or the command line was silently on
    with pytest.raises(TypeError, match=f"^{what} must be True or False, got '"):
        call()


def test_on_off_arguments_still_take_bools_and_zero_or_one():
    assert gt.nn.Dense(2, 3, use_bias=0, seed=0).bias is None
    assert gt.nn.Dense(2, 3, use_bias=np.bool_(True), seed=0).bias is not None
    assert gt.sort(gt.tensor([1.0, 2.0]), descending=1).numpy().tolist() == [2.0, 1.0]
    with gt.GradientTape(persistent=1) as tape:
        x = gt.Variable([1.0])
        y = x * x
    tape.gradient(y, x)
    tape.gradient(y, x)  # persistent
