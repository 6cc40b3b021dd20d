"""The binary operators' fast path (``x * 2.0``, ``a + w``, ``0.5 - x``): converted constants
kept per Python number, and records filled in place. Same results, dtypes and gradients as the
general path (pair + bind + the general recording), which these tests compare against."""

import numpy as np
import pytest

import gradtape as gt


def _arr(dtype=np.float32):
    return np.linspace(-1.0, 1.5, 6).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, np.complex64])
def test_python_number_is_weakly_typed(backend, dtype):
    x = gt.tensor(_arr(dtype))
    for y in (x * 1.25, 1.25 * x, x + 2, 2 - x, x - 0.5, gt.mul(x, 3), gt.div(x, 4.0), x / 4.0):
        assert y.dtype == np.dtype(dtype)
    np.testing.assert_allclose((0.5 - x).numpy(), 0.5 - _arr(dtype), rtol=1e-3)
    np.testing.assert_allclose((x * 1.25).numpy(), _arr(dtype) * dtype(1.25), rtol=1e-3)


def test_one_number_meets_several_dtypes():
    # the same Python number next to tensors of different dtypes, alternating
    a16, a32, a64 = (gt.tensor(_arr(d)) for d in (np.float16, np.float32, np.float64))
    for _ in range(3):
        assert (a16 * 0.1).dtype == np.float16
        assert (a32 * 0.1).dtype == np.float32
        assert (a64 * 0.1).dtype == np.float64
    np.testing.assert_array_equal((a64 * 0.1).numpy(), _arr(np.float64) * 0.1)  # 0.1's float64 digits
    np.testing.assert_array_equal((a32 * 0.1).numpy(), _arr(np.float32) * np.float32(0.1))


def test_integer_tensors_keep_their_rules():
    i = gt.tensor(np.arange(1, 7))
    assert (i * 0.5).dtype == np.float32  # a float next to an integer tensor: float32
    assert (i + 1).dtype == i.dtype
    assert (gt.tensor([True, False]) + 1).dtype == np.int64
    assert gt.div(i, 2).dtype == np.float32
    assert (i / i).dtype == np.float32
    assert (gt.tensor(_arr()) * i).dtype == np.float32  # mixed tensors: the float one's dtype
    assert (gt.tensor(_arr()) + gt.tensor(_arr(np.float64))).dtype == np.float64


def test_signed_zero_nan_inf_and_equal_numbers_are_exact():
    x = gt.tensor([1.0, -2.0])
    assert not np.signbit((x * 0.0).numpy()[0])
    assert np.signbit((x * -0.0).numpy()[0])  # -0.0 == 0.0, yet its own constant
    assert not np.signbit((x * 0.0).numpy()[0])
    assert np.isnan((x * float("nan")).numpy()).all()
    assert np.isinf((x * float("inf")).numpy()).all()
    for v in (1, 1.0, True):  # equal numbers convert to the same value
        np.testing.assert_array_equal((x * v).numpy(), [1.0, -2.0])
    for _ in range(3):  # many different numbers (a schedule): bounded, every value right
        for k in range(2000):
            assert float((gt.tensor(1.0) * (k + 0.5)).numpy()) == k + 0.5


def test_results_do_not_share_writable_memory():
    x = gt.tensor([1.0, 2.0])
    a, b = x * 3.0, x * 3.0
    assert a.data is not b.data
    v = gt.Variable(x * 3.0)
    v.assign_add(gt.tensor([1.0, 1.0]))
    np.testing.assert_array_equal((x * 3.0).numpy(), [3.0, 6.0])


def test_gradients_through_constants_fanout_and_variable(backend):
    x0 = _arr()
    w0 = np.linspace(0.2, -0.2, 6).astype(np.float32)
    x, w = gt.tensor(x0), gt.Variable(w0, name="w")
    with gt.GradientTape() as tape:
        tape.watch(x)
        y = x
        for _ in range(4):
            a = gt.tanh(y) * 1.25
            b = a + w
            y = b * a - 0.5
        loss = gt.sum(2.0 - y)
    gx, gw = tape.gradient(loss, [x, w])
    # the same program, differentiated by hand in float64
    xs, ws = x0.astype(np.float64), w0.astype(np.float64)
    saved, y = [], xs
    for _ in range(4):
        t = np.tanh(y)
        a = t * 1.25
        b = a + ws
        saved.append((t, a, b))
        y = b * a - 0.5
    gy, gw_ref = -np.ones_like(y), np.zeros_like(ws)
    for t, a, b in reversed(saved):
        gw_ref += gy * a
        gy = (gy * b + gy * a) * 1.25 * (1 - t * t)
    np.testing.assert_allclose(gx.numpy(), gy, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(gw.numpy(), gw_ref, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("fusion", [True, False])
def test_same_gradients_with_and_without_fusion(fusion):
    x = gt.tensor(np.linspace(-1, 1, 16).astype(np.float32))
    w = gt.Variable(np.linspace(0.2, -0.2, 16).astype(np.float32))
    old = gt.config.fusion
    gt.config.fusion = fusion
    try:
        with gt.GradientTape() as tape:
            tape.watch(x)
            y = x
            for _ in range(20):
                a = gt.tanh(y) * 1.25
                y = (a + w) * a - 0.5
            loss = gt.sum(y)
        g = tape.gradient(loss, [x, w])
    finally:
        gt.config.fusion = old
    gt.config.fusion = not fusion
    try:
        with gt.GradientTape() as tape:
            tape.watch(x)
            y = x
            for _ in range(20):
                a = gt.tanh(y) * 1.25
                y = (a + w) * a - 0.5
            loss = gt.sum(y)
        h = tape.gradient(loss, [x, w])
    finally:
        gt.config.fusion = old
    for u, v in zip(g, h):
        np.testing.assert_allclose(u.numpy(), v.numpy(), rtol=2e-5, atol=1e-7)


def test_variable_read_is_watched_and_snapshotted():
    w = gt.Variable([1.0, 2.0])
    x = gt.tensor([3.0, 4.0])
    with gt.GradientTape() as tape:
        tape.watch(x)
        y = gt.sum(w * x)  # mul saves both inputs: w's value as read here
    w.assign([10.0, 20.0])
    g = tape.gradient(y, [w, x])
    np.testing.assert_array_equal(g[0].numpy(), [3.0, 4.0])
    np.testing.assert_array_equal(g[1].numpy(), [1.0, 2.0])
    with gt.GradientTape(watch_accessed_variables=False) as tape:
        y = w + 1.0
    assert tape.gradient(y, w) is None
    frozen = gt.Variable([1.0], trainable=False)
    with gt.GradientTape() as tape:
        y = frozen * 2.0
    assert tape.gradient(y, frozen) is None


def test_nested_persistent_and_paused_tapes():
    x = gt.tensor(1.5)
    with gt.GradientTape() as outer:
        outer.watch(x)
        with gt.GradientTape(persistent=True) as inner:
            inner.watch(x)
            y = x * x * 3.0 - x
            with inner.stop_recording():
                z = x * 2.0
        dy = inner.gradient(y, x)  # 6x - 1
    assert float(dy.numpy()) == pytest.approx(8.0)
    assert float(outer.gradient(dy, x).numpy()) == pytest.approx(6.0)
    assert inner.gradient(z, x) is None
    assert float(inner.gradient(y, x).numpy()) == pytest.approx(8.0)


def test_integer_output_is_not_differentiated():
    i = gt.tensor(np.arange(3))
    x = gt.tensor([1.0, 2.0, 3.0])
    with gt.GradientTape() as tape:
        tape.watch(x)
        j = i + 1
        k = (x > 1.5) + 1  # bool next to an int: int64, no gradient
        y = x * j + k
    assert j.dtype == i.dtype and k.dtype == np.int64
    np.testing.assert_array_equal(tape.gradient(y, x).numpy(), [1.0, 2.0, 3.0])
