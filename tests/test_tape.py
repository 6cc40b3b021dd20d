"""GradientTape semantics (TF's tf.GradientTape, as docs/api.md 'The tape' states them)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import gradtape as gt


def f64(v):
    """A float64 tensor on the active backend."""
    return gt.tensor(np.asarray(v, dtype=np.float64).tolist(), dtype="float64")


# --------------------------------------------------------------------------- watching
def test_watch_tensor_and_gradient(backend):
    x = gt.tensor([1.0, 2.0, 3.0])
    with gt.GradientTape() as tape:
        tape.watch(x)
        y = (x * x).sum()
    g = tape.gradient(y, x)
    assert g.backend == backend
    assert g.dtype == x.dtype and g.shape == x.shape
    np.testing.assert_allclose(g.numpy(), [2.0, 4.0, 6.0])


@pytest.mark.parametrize("make", [
    lambda a, b: [a, b],
    lambda a, b: (a, b),
    lambda a, b: {"first": a, "second": [b]},
])
def test_watch_nested_structures(make):
    a, b = gt.tensor(2.0), gt.tensor(3.0)
    with gt.GradientTape() as tape:
        tape.watch(make(a, b))
        y = a * b
    ga, gb = tape.gradient(y, [a, b])
    assert float(ga) == 3.0 and float(gb) == 2.0


def test_unwatched_tensor_gives_none():
    x = gt.tensor(2.0)
    with gt.GradientTape() as tape:
        y = x * x
    assert tape.gradient(y, x) is None
    assert tape.recorded_ops() == ()


def test_trainable_variables_watched_automatically_in_creation_order():
    a = gt.Variable(1.0, name="a")
    b = gt.Variable(2.0, name="b")
    c = gt.Variable(3.0, name="c", trainable=False)
    with gt.GradientTape() as tape:
        y = b * 2.0 + a * c  # b is read first, a was created first
    watched = tape.watched_variables()
    assert isinstance(watched, tuple)
    assert watched == (a, b)  # creation order; the non-trainable c is not watched
    ga, gb, gc = tape.gradient(y, [a, b, c])
    assert float(ga) == 3.0 and float(gb) == 2.0 and gc is None


def test_non_trainable_variable_can_be_watched_explicitly():
    c = gt.Variable(3.0, trainable=False)
    with gt.GradientTape() as tape:
        tape.watch(c)
        y = c * c
    assert float(tape.gradient(y, c)) == 6.0
    assert tape.watched_variables() == (c,)


def test_variable_not_read_is_not_watched():
    a = gt.Variable(1.0)
    b = gt.Variable(2.0)
    with gt.GradientTape() as tape:
        y = a * 3.0
    assert tape.watched_variables() == (a,)
    assert tape.gradient(y, b) is None


def test_watch_accessed_variables_false():
    a = gt.Variable(1.0)
    b = gt.Variable(2.0)
    with gt.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch(b)
        y = a * b
    assert tape.watched_variables() == (b,)
    ga, gb = tape.gradient(y, [a, b])
    assert ga is None and float(gb) == 1.0


def test_watch_rejects_non_tensor():
    with gt.GradientTape() as tape:
        with pytest.raises(TypeError, match="Tensor"):
            tape.watch(np.ones(3))
        with pytest.raises(TypeError, match=r"item 1"):
            tape.watch([gt.tensor(1.0), 2.0])


def test_variable_assign_is_not_recorded_and_reads_live_value():
    w = gt.Variable([1.0, 2.0])
    with gt.GradientTape() as tape:
        w.assign([3.0, 4.0])
        y = (w * w).sum()
    np.testing.assert_allclose(tape.gradient(y, w).numpy(), [6.0, 8.0])
    assert tape.recorded_ops() == ()  # dropped after the single call


# --------------------------------------------------------------------------- persistence
def test_non_persistent_second_call_raises():
    x = gt.tensor(2.0)
    with gt.GradientTape() as tape:
        tape.watch(x)
        y = x * x
    tape.gradient(y, x)
    with pytest.raises(RuntimeError, match="persistent"):
        tape.gradient(y, x)
    with pytest.raises(RuntimeError, match="persistent"):
        tape.jacobian(y, x)


def test_non_persistent_first_jacobian_then_gradient_raises():
    x = gt.tensor([1.0, 2.0])
    with gt.GradientTape() as tape:
        tape.watch(x)
        y = x * x
    tape.jacobian(y, x)
    with pytest.raises(RuntimeError):
        tape.gradient(y, x)


def test_persistent_allows_many_calls():
    x = gt.tensor(3.0)
    with gt.GradientTape(persistent=True) as tape:
        tape.watch(x)
        y = x * x
        z = y * x
    assert float(tape.gradient(y, x)) == 6.0
    assert float(tape.gradient(z, x)) == 27.0
    assert float(tape.gradient(z, y)) == 3.0
    np.testing.assert_allclose(tape.jacobian(z, x).numpy(), 27.0)


def test_non_persistent_gradient_inside_context_stops_recording():
    x = gt.tensor(2.0)
    with gt.GradientTape() as tape:
        tape.watch(x)
        y = x * x
        g = tape.gradient(y, x)
        with pytest.raises(ValueError, match="not recording"):
            with tape.stop_recording():
                pass
        z = x * 5.0  # not recorded any more
        assert tape.recorded_ops() == ()
    assert float(g) == 4.0
    with pytest.raises(ValueError, match="not recording"):  # nor after the block
        with tape.stop_recording():
            pass
    del z


def test_persistent_gradient_inside_context_is_recorded():
    x = f64(0.7)
    with gt.GradientTape(persistent=True) as tape:
        tape.watch(x)
        y = gt.sin(x)
        g = tape.gradient(y, x)          # recorded: differentiable
    np.testing.assert_allclose(float(g), np.cos(0.7))
    np.testing.assert_allclose(float(tape.gradient(g, x)), -np.sin(0.7))


def test_tape_reusable_after_exit_for_new_context():
    x = gt.tensor(2.0)
    tape = gt.GradientTape(persistent=True)
    with tape:
        tape.watch(x)
        y = x * x
    with tape:  # re-entering after exit is allowed and keeps records
        z = y * x
    assert float(tape.gradient(z, x)) == 12.0


# --------------------------------------------------------------------------- context misuse
def test_reentering_active_tape_raises_value_error():
    tape = gt.GradientTape()
    with tape:
        with pytest.raises(ValueError, match="already recording"):
            with tape:
                pass


def test_stop_recording_never_entered_raises_runtime_error():
    tape = gt.GradientTape()
    with pytest.raises(RuntimeError, match="never"):
        with tape.stop_recording():
            pass


def test_stop_recording_not_recording_raises_value_error():
    tape = gt.GradientTape()
    with tape:
        pass
    with pytest.raises(ValueError, match="not recording"):
        with tape.stop_recording():
            pass
    with tape:
        with tape.stop_recording():
            with pytest.raises(ValueError, match="not recording"):
                with tape.stop_recording():
                    pass


def test_stop_recording_pauses_and_resumes():
    x = gt.tensor(2.0)
    with gt.GradientTape(persistent=True) as tape:
        tape.watch(x)
        with tape.stop_recording():
            z = x * 3.0
        n_paused = len(tape.recorded_ops())
        y = x * x
    assert n_paused == 0
    assert tape.recorded_ops() == ("mul",)  # recording resumed after the block
    assert tape.gradient(z, x) is None
    assert float(tape.gradient(y, x)) == 4.0


def test_stop_recording_affects_only_that_tape():
    x = gt.tensor(2.0)
    with gt.GradientTape() as outer:
        outer.watch(x)
        with gt.GradientTape() as inner:
            inner.watch(x)
            with inner.stop_recording():
                y = x * x
    assert inner.gradient(y, x) is None
    assert float(outer.gradient(y, x)) == 4.0


def test_reset_inside_context_clears_records():
    x = gt.tensor(2.0)
    w = gt.Variable(1.0)
    with gt.GradientTape() as tape:
        tape.watch(x)
        y = x * x * w
        assert tape.recorded_ops() == ("mul", "mul")
        tape.reset()
        assert tape.recorded_ops() == () and tape.saved_bytes() == 0
        assert tape.watched_variables() == ()
        assert tape.gradient(y, x) is None
    x2 = gt.tensor(3.0)
    with gt.GradientTape() as tape:
        tape.watch(x2)
        y = x2 * x2
        tape.reset()
        tape.watch(x2)
        z = x2 * 5.0
    assert float(tape.gradient(z, x2)) == 5.0


def test_reset_outside_context_raises():
    tape = gt.GradientTape()
    with pytest.raises(ValueError, match="not recording"):
        tape.reset()
    with tape:
        pass
    with pytest.raises(ValueError):
        tape.reset()


# --------------------------------------------------------------------------- structures
def test_nested_sources_keep_structure():
    a, b, c = gt.tensor(1.0), gt.tensor(2.0), gt.tensor(3.0)
    with gt.GradientTape() as tape:
        tape.watch([a, b, c])
        y = a * b * c
    g = tape.gradient(y, {"p": a, "q": [b, (c,)]})
    assert set(g) == {"p", "q"} and isinstance(g["q"], list) and isinstance(g["q"][1], tuple)
    assert float(g["p"]) == 6.0 and float(g["q"][0]) == 3.0 and float(g["q"][1][0]) == 2.0


def test_list_and_dict_targets_sum():
    x = gt.tensor(2.0)
    with gt.GradientTape(persistent=True) as tape:
        tape.watch(x)
        y1 = x * x
        y2 = x * 3.0
    assert float(tape.gradient([y1, y2], x)) == 7.0
    assert float(tape.gradient({"a": y1, "b": y2}, x)) == 7.0
    assert float(tape.gradient([y1, [y2, y1]], x)) == 11.0


def test_non_scalar_target_means_sum():
    x = gt.tensor([1.0, 2.0])
    with gt.GradientTape() as tape:
        tape.watch(x)
        y = x * x
    np.testing.assert_allclose(tape.gradient(y, x).numpy(), [2.0, 4.0])


def test_output_gradients():
    x = gt.tensor([1.0, 2.0])
    with gt.GradientTape(persistent=True) as tape:
        tape.watch(x)
        y = x * x
        z = x * 3.0
    og = gt.tensor([10.0, 100.0])
    np.testing.assert_allclose(tape.gradient(y, x, output_gradients=og).numpy(), [20.0, 400.0])
    np.testing.assert_allclose(tape.gradient(y, x, output_gradients=[og]).numpy(), [20.0, 400.0])
    g = tape.gradient([y, z], x, output_gradients=[og, None])
    np.testing.assert_allclose(g.numpy(), [23.0, 403.0])


def test_gradient_dtype_and_shape_follow_source():
    x = f64([[1.0, 2.0]])
    w = gt.tensor([3.0])  # float32, broadcast
    with gt.GradientTape() as tape:
        tape.watch([x, w])
        y = (x * w).sum()
    gx, gw = tape.gradient(y, [x, w])
    assert gx.dtype == np.float64 and gx.shape == (1, 2)
    assert gw.dtype == np.float32 and gw.shape == (1,)
    np.testing.assert_allclose(gw.numpy(), [3.0])


def test_unconnected_zero_and_none():
    x = gt.tensor([1.0, 2.0])
    z = f64([[1.0], [2.0]])
    with gt.GradientTape(persistent=True) as tape:
        tape.watch([x, z])
        y = (x * x).sum()
    assert tape.gradient(y, z) is None
    gz = tape.gradient(y, [x, z], unconnected_gradients="zero")[1]
    assert gz.shape == (2, 1) and gz.dtype == np.float64 and not gz.numpy().any()


def test_source_equal_to_target():
    x = gt.tensor(2.0)
    with gt.GradientTape() as tape:
        tape.watch(x)
    assert float(tape.gradient(x, x)) == 1.0


def test_fan_out_accumulates():
    x = gt.tensor(3.0)
    with gt.GradientTape() as tape:
        tape.watch(x)
        a = x * 2.0
        y = a * a + a * x
    # y = 4x^2 + 2x^2 = 6x^2 -> 12x
    assert float(tape.gradient(y, x)) == 36.0


# --------------------------------------------------------------------------- higher order
@pytest.mark.parametrize("name, fn, derivs", [
    ("tanh", gt.tanh, [lambda x: 1 - np.tanh(x) ** 2,
                       lambda x: -2 * np.tanh(x) * (1 - np.tanh(x) ** 2),
                       lambda x: -2 * (1 - np.tanh(x) ** 2) ** 2 + 4 * np.tanh(x) ** 2 * (1 - np.tanh(x) ** 2)]),
    ("sin", gt.sin, [np.cos, lambda x: -np.sin(x), lambda x: -np.cos(x)]),
    ("cube", lambda x: x ** 3, [lambda x: 3 * x ** 2, lambda x: 6 * x, lambda x: 6.0 + 0 * x]),
])
@pytest.mark.parametrize("order", [1, 2, 3])
def test_higher_order_derivatives(name, fn, derivs, order):
    x0 = 0.6
    x = f64(x0)
    got = _compose(fn, x, order)
    np.testing.assert_allclose(float(got), derivs[order - 1](x0), rtol=1e-10)


def _compose(fn, x, order):
    """d^order fn / dx^order with ``order`` nested tapes (inner gradients inside outer contexts)."""
    tapes = []
    for _ in range(order):
        t = gt.GradientTape()
        t.__enter__()
        t.watch(x)
        tapes.append(t)
    y = fn(x)
    for t in reversed(tapes):
        t.__exit__(None, None, None)
        y = t.gradient(y, x)
    return y


def test_mixed_partials():
    x, y = f64(0.3), f64(-1.2)
    with gt.GradientTape() as outer:
        outer.watch([x, y])
        with gt.GradientTape() as inner:
            inner.watch([x, y])
            f = gt.sin(x * y) + x * x * y
        gx, gy = inner.gradient(f, [x, y])
    dxy = outer.gradient(gx, y)
    want = np.cos(0.3 * -1.2) - 0.3 * -1.2 * np.sin(0.3 * -1.2) + 2 * 0.3
    np.testing.assert_allclose(float(dxy), want, rtol=1e-12)
    with gt.GradientTape() as outer:
        outer.watch([x, y])
        with gt.GradientTape() as inner:
            inner.watch([x, y])
            f = gt.sin(x * y) + x * x * y
        gy = inner.gradient(f, y)
    np.testing.assert_allclose(float(outer.gradient(gy, x)), want, rtol=1e-12)


def test_hessian_vector_product():
    rng = np.random.default_rng(1)
    A = rng.normal(size=(3, 3))
    A = A + A.T
    x0 = rng.normal(size=3)
    v0 = rng.normal(size=3)
    x, v, At = f64(x0), f64(v0), f64(A)
    with gt.GradientTape() as outer:
        outer.watch(x)
        with gt.GradientTape() as inner:
            inner.watch(x)
            f = 0.5 * (x * gt.matmul(At, x)).sum() + gt.sin(x).sum()
        g = inner.gradient(f, x)
        gv = (g * v).sum()
    hvp = outer.gradient(gv, x)
    H = A - np.diag(np.sin(x0))
    np.testing.assert_allclose(hvp.numpy(), H @ v0, rtol=1e-12)


def test_stop_gradient():
    x = gt.tensor(3.0)
    with gt.GradientTape() as tape:
        tape.watch(x)
        y = x * gt.stop_gradient(x * x)
    assert float(tape.gradient(y, x)) == 9.0


def test_stop_gradient_in_second_order():
    x = f64(2.0)
    with gt.GradientTape() as outer:
        outer.watch(x)
        with gt.GradientTape() as inner:
            inner.watch(x)
            y = x ** 3
        g = gt.stop_gradient(inner.gradient(y, x))
    assert outer.gradient(g, x) is None


# --------------------------------------------------------------------------- threads
def test_tape_records_only_its_own_thread():
    x = gt.tensor(2.0)
    out = {}
    with gt.GradientTape(persistent=True) as tape:
        tape.watch(x)

        def work():
            out["y"] = x * 3.0
            # no tape records this thread's ops: a tape entered here records, the main one not
            with gt.GradientTape() as own:
                own.watch(x)
                out["own"] = x * 5.0
            out["own_ops"] = own.recorded_ops()

        th = threading.Thread(target=work)
        th.start()
        th.join()
        z = x * 4.0
    assert out["own_ops"] == ("mul",)
    assert tape.gradient(out["y"], x) is None
    assert tape.gradient(out["own"], x) is None
    assert float(tape.gradient(z, x)) == 4.0
    assert tape.recorded_ops() == ("mul",)


def test_tape_in_other_thread_does_not_record_main_thread_ops():
    x = gt.tensor(2.0)
    entered = threading.Event()
    release = threading.Event()
    result = {}

    def work():
        with gt.GradientTape() as tape:
            tape.watch(x)
            entered.set()
            release.wait(5)
            y = x * x
        result["records"] = len(tape.recorded_ops())
        result["g"] = float(tape.gradient(y, x))

    th = threading.Thread(target=work)
    th.start()
    assert entered.wait(5)
    main_y = x * 10.0  # runs while the other thread's tape is recording
    release.set()
    th.join()
    assert result == {"records": 1, "g": 4.0}
    assert float(main_y) == 20.0
