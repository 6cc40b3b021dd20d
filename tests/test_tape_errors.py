"""Misuse of the tape raises what TF raises, with messages that name the problem; an
unconnected source with ``unconnected_gradients="raise"`` says WHY it is unconnected."""

from __future__ import annotations

import numpy as np
import pytest

import gradtape as gt


def _raise(tape, target, source):
    with pytest.raises(gt.UnconnectedGradientError) as info:
        tape.gradient(target, source, unconnected_gradients="raise")
    return str(info.value)


# --------------------------------------------------------------------------- argument checks
def test_unconnected_gradients_bad_value():
    x = gt.tensor(1.0)
    with gt.GradientTape(persistent=True) as tape:
        tape.watch(x)
        y = x * 2.0
    with pytest.raises(ValueError, match="'none', 'zero' or 'raise'.*'zeros'"):
        tape.gradient(y, x, unconnected_gradients="zeros")
    with pytest.raises(ValueError, match="unconnected_gradients"):
        tape.jacobian(y, x, unconnected_gradients=None)
    assert float(tape.gradient(y, x)) == 2.0  # the bad calls did not use up anything


def test_unconnected_error_is_value_error():
    assert issubclass(gt.UnconnectedGradientError, ValueError)


def test_target_none():
    x = gt.tensor(1.0)
    with gt.GradientTape() as tape:
        tape.watch(x)
    with pytest.raises(TypeError, match="target is None"):
        tape.gradient(None, x)
    with pytest.raises(TypeError, match="target"):
        tape.jacobian(None, x)


def test_target_not_tensor():
    x = gt.tensor(1.0)
    with gt.GradientTape() as tape:
        tape.watch(x)
    with pytest.raises(TypeError, match="target.*ndarray"):
        tape.gradient(np.ones(2), x)


@pytest.mark.parametrize("bad, name", [(np.ones(2), "ndarray"), (3.0, "float"), ("w", "str")])
def test_non_tensor_source_named(bad, name):
    x = gt.tensor(1.0)
    with gt.GradientTape() as tape:
        tape.watch(x)
        y = x * 2.0
    with pytest.raises(TypeError, match=f"sources.*{name}"):
        tape.gradient(y, bad)


def test_non_tensor_source_in_list_names_position():
    x = gt.tensor(1.0)
    with gt.GradientTape() as tape:
        tape.watch(x)
        y = x * 2.0
    with pytest.raises(TypeError, match=r"sources\[1\].*float"):
        tape.gradient(y, [x, [1.0]])


def test_sources_none():
    x = gt.tensor(1.0)
    with gt.GradientTape() as tape:
        tape.watch(x)
        y = x * 2.0
    with pytest.raises(TypeError, match="sources is None"):
        tape.gradient(y, None)


@pytest.mark.parametrize("dtype", ["int32", "int64", "bool"])
def test_integer_or_bool_source(dtype):
    x = gt.tensor(np.ones(3, dtype=dtype))
    with gt.GradientTape() as tape:
        tape.watch(x)  # silently not followed, like TF
        y = x.astype("float32") * 2.0
    with pytest.raises(TypeError, match=f"dtype {dtype}.*floating"):
        tape.gradient(y, x)


def test_output_gradients_shape_mismatch_names_both_shapes():
    x = gt.tensor([1.0, 2.0, 3.0])
    with gt.GradientTape() as tape:
        tape.watch(x)
        y = x * x
    with pytest.raises(ValueError, match=r"output_gradients.*\(2,\).*\(3,\)"):
        tape.gradient(y, x, output_gradients=gt.tensor([1.0, 2.0]))


def test_output_gradients_not_broadcast():
    x = gt.tensor([1.0, 2.0, 3.0])
    with gt.GradientTape() as tape:
        tape.watch(x)
        y = x * x
    with pytest.raises(ValueError, match="shape"):
        tape.gradient(y, x, output_gradients=gt.tensor(1.0))


def test_output_gradients_dtype_mismatch():
    x = gt.tensor([1.0, 2.0])
    with gt.GradientTape() as tape:
        tape.watch(x)
        y = x * x
    with pytest.raises(TypeError, match="float64.*float32"):
        tape.gradient(y, x, output_gradients=gt.tensor(np.ones(2)))


def test_output_gradients_count_mismatch():
    x = gt.tensor(1.0)
    with gt.GradientTape() as tape:
        tape.watch(x)
        y, z = x * 2.0, x * 3.0
    with pytest.raises(ValueError, match="3 entries.*2"):
        tape.gradient([y, z], x, output_gradients=[gt.tensor(1.0)] * 3)


# --------------------------------------------------------------------------- why unconnected
def test_why_never_watched():
    x = gt.tensor([1.0, 2.0])
    with gt.GradientTape() as tape:
        y = (x * 2.0).sum()
    msg = _raise(tape, y, x)
    assert "never watched" in msg and "tape.watch" in msg and "(2,)" in msg


def test_why_integer_dtype_on_the_path():
    x = gt.tensor([1.5, 2.5])
    with gt.GradientTape() as tape:
        tape.watch(x)
        y = (x * 2.0).astype("int32").astype("float32").sum()
    msg = _raise(tape, y, x)
    assert "astype" in msg and "int32" in msg and "carries no gradient" in msg
    assert "test_tape_errors.py" in msg  # the user line where it happened


@pytest.mark.parametrize("escape", ["numpy", "asarray"])
def test_why_value_left_through_array(escape):
    x = gt.tensor([1.0, 2.0])
    with gt.GradientTape() as tape:
        tape.watch(x)
        h = x * 2.0
        arr = h.numpy() if escape == "numpy" else np.asarray(h)
        y = (gt.tensor(arr) * h.numpy().sum()).sum()
    msg = _raise(tape, y, x)
    assert "left the tape through a NumPy/CuPy array" in msg
    assert "test_tape_errors.py" in msg


def test_why_stop_recording():
    x = gt.tensor([1.0, 2.0])
    with gt.GradientTape() as tape:
        tape.watch(x)
        with tape.stop_recording():
            h = x * 2.0
        y = (h * h).sum()
    msg = _raise(tape, y, x)
    assert "stop_recording" in msg and "'mul'" in msg


def test_why_variable_replaced_by_tensor():
    w = gt.Variable([1.0, 2.0], name="w")
    with gt.GradientTape() as tape:
        loss = (w * w).sum()
    g = tape.gradient(loss, w)
    w = w - 0.1 * g  # the classic mistake: w is now a plain Tensor
    with gt.GradientTape() as tape:
        loss = (w * w).sum()
    msg = _raise(tape, loss, w)
    assert "computed from Variable 'w'" in msg and "replaced by a tensor" in msg
    assert "assign_sub" in msg


def test_why_gradient_taken_outside_outer_context():
    x = gt.tensor(2.0)
    with gt.GradientTape() as outer:
        outer.watch(x)
        with gt.GradientTape() as inner:
            inner.watch(x)
            y = x * x
    g = inner.gradient(y, x)  # after the outer `with` block: not recorded
    msg = _raise(outer, g, x)
    assert "tape.gradient()" in msg and "outer tape's `with` block" in msg
    assert "test_tape_errors.py" in msg


def test_why_non_trainable_variable():
    v = gt.Variable(1.0, trainable=False)
    with gt.GradientTape() as tape:
        y = v * 2.0
    msg = _raise(tape, y, v)
    assert "non-trainable" in msg and "tape.watch" in msg


def test_why_watch_accessed_variables_false():
    v = gt.Variable(1.0, name="v")
    with gt.GradientTape(watch_accessed_variables=False) as tape:
        y = v * 2.0
    msg = _raise(tape, y, v)
    assert "watch_accessed_variables=False" in msg and "'v'" in msg


def test_why_target_does_not_depend():
    x = gt.tensor(1.0)
    z = gt.tensor(2.0)
    with gt.GradientTape() as tape:
        tape.watch([x, z])
        y = x * 3.0
    msg = _raise(tape, y, z)
    assert "does not depend" in msg


def test_why_target_computed_outside_context():
    x = gt.tensor(1.0)
    with gt.GradientTape() as tape:
        tape.watch(x)
    y = x * 3.0
    msg = _raise(tape, y, x)
    assert "outside the tape's context" in msg


def test_raise_mode_does_not_raise_when_connected():
    x = gt.tensor(1.0)
    with gt.GradientTape() as tape:
        tape.watch(x)
        y = x * 3.0
    assert float(tape.gradient(y, x, unconnected_gradients="raise")) == 3.0


def test_raise_mode_for_jacobian():
    x = gt.tensor([1.0, 2.0])
    z = gt.tensor([1.0])
    with gt.GradientTape() as tape:
        tape.watch([x, z])
        y = x * 3.0
    with pytest.raises(gt.UnconnectedGradientError, match="does not depend"):
        tape.jacobian(y, [x, z], unconnected_gradients="raise")


@pytest.mark.parametrize("take", ["numpy", "asarray", "float"])
def test_a_variable_whose_value_left_the_tape_is_explained(take):
    if take == "asarray" and gt.backend_name() != "numpy":
        pytest.skip("np.asarray of a device tensor raises (no implicit copy)")
    w = gt.Variable([3.0], name="w")
    with gt.GradientTape() as tape:
        value = {"numpy": lambda: w.numpy(), "asarray": lambda: np.asarray(w),
                 "float": lambda: float(w)}[take]()
        y = gt.sum(gt.tensor(value) * 2.0)
    with pytest.raises(gt.UnconnectedGradientError, match="its value left the tape"):
        tape.gradient(y, w, unconnected_gradients="raise")


def test_a_tape_never_entered_raises_instead_of_giving_none():
    """``tape = gt.GradientTape()`` without ``with`` records nothing: its gradients would all
    be None (TF's result), which a new user meets as ``float * NoneType`` a line later."""
    x = gt.Variable([1.0, 2.0])
    tape = gt.GradientTape()
    y = gt.sum(x * x)
    for call in (lambda: tape.gradient(y, x), lambda: tape.jacobian(y, x),
                 lambda: tape.per_example_gradients(x * x, x)):
        with pytest.raises(RuntimeError, match="never entered"):
            call()


def test_a_value_that_left_through_a_numpy_function_names_the_users_line():
    # np.clip converts through the tensor's __array__ inside NumPy's fromnumeric.py, which the
    # message named instead of the caller
    with gt.use_backend("numpy"):  # (np.asarray of a device tensor refuses: no copy to leave)
        x = gt.tensor([0.5, 2.0])
    with gt.GradientTape() as tape:
        tape.watch(x)
        z = gt.sum(gt.tensor(np.clip(x, 0, 1)))  # the clipped values leave the tape
    with pytest.raises(gt.UnconnectedGradientError) as info:
        tape.gradient(z, x, unconnected_gradients="raise")
    assert "test_tape_errors.py" in str(info.value) and "fromnumeric" not in str(info.value)
