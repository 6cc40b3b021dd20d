"""Variable: in-place assign/assign_add/assign_sub on the same buffer, never recorded, shape
and backend checks, dtype casts, name/trainable, copies on creation, snapshots for tapes."""

from __future__ import annotations

import gc
import tracemalloc

import numpy as np
import pytest

import gradtape as gt
from gradtape import extend


def test_variable_basics(backend):
    v = gt.Variable([1.0, 2.0], name="w")
    assert isinstance(v, gt.Tensor)
    assert v.name == "w" and v.trainable is True
    assert v.dtype == np.float32 and v.shape == (2,) and v.backend == backend
    assert gt.Variable([1.0], trainable=False).trainable is False
    assert gt.Variable([1.0]).name is None
    assert gt.Variable(np.ones(3)).dtype == np.float64  # an array keeps its dtype
    assert gt.Variable(np.ones(3), dtype=np.float32).dtype == np.float32
    assert gt.Variable([1, 2]).dtype == np.int64


@pytest.mark.parametrize("method, value, expect", [
    ("assign", [5.0, 6.0], [5.0, 6.0]),
    ("assign_add", [5.0, 6.0], [6.0, 8.0]),
    ("assign_sub", [5.0, 6.0], [-4.0, -4.0]),
    ("assign", 0.0, [0.0, 0.0]),               # a scalar broadcasts to the variable's shape
    ("assign_add", np.array([1.0]), [2.0, 3.0]),
])
def test_assign_is_in_place(backend, method, value, expect):
    v = gt.Variable([1.0, 2.0])
    old = v.data
    out = getattr(v, method)(value)
    assert out is v  # chainable, like TF
    assert v.data is old  # the same buffer object
    np.testing.assert_allclose(v.numpy(), expect)
    assert v.dtype == np.float32


def test_assign_shares_memory_with_the_original_buffer():
    v = gt.Variable(np.zeros(4))
    old = v.data
    v.assign(gt.tensor(np.arange(4.0)))
    v.assign_add(gt.tensor(1.0))
    v.assign_sub(np.full(4, 0.5))
    assert np.shares_memory(v.data, old)
    np.testing.assert_array_equal(old, np.arange(4.0) + 0.5)


def test_zero_d_variable_is_a_writable_buffer():
    v = gt.Variable(1.0)
    assert isinstance(v.data, np.ndarray) and v.shape == ()
    old = v.data
    v.assign(3.0)
    v.assign_add(1.0)
    assert v.data is old and float(v) == 4.0


def test_integer_variable_updates_refuse_to_truncate():
    """``+=``, ``-=``, ``*=`` (and ``assign_add``/``assign_sub``) with a fraction into an
    integer Variable raise, as ``/=`` does and PyTorch's in-place arithmetic does (they
    truncated silently); whole-valued floats are fine, and ``assign`` casts (below)."""
    w = gt.Variable([4, 6])
    for update in (lambda: w.assign_add(0.5), lambda: w.assign_sub([1.0, 0.25]),
                   lambda: w.__iadd__(gt.tensor([0.5, 0.5])), lambda: w.__imul__(0.5)):
        with pytest.raises(TypeError, match="would truncate"):
            update()
    np.testing.assert_array_equal(w.numpy(), [4, 6])  # unchanged
    w += 2.0
    w *= np.float32(3.0)
    np.testing.assert_array_equal(w.numpy(), [18, 24])
    # a whole number past the dtype's range: the cast gave garbage (1e30 into int32: INT_MIN)
    small = gt.Variable(np.array([5, 7], np.int32))
    for update in (lambda: small.__iadd__(1e30), lambda: small.assign(-1e30),
                   lambda: gt.Variable(np.array([1], np.uint8)).assign_add(300.0)):
        with pytest.raises(ValueError, match="outside"):
            update()
    np.testing.assert_array_equal(small.numpy(), [5, 7])


def test_assign_casts_to_the_variable_dtype():
    v = gt.Variable(np.zeros(2, dtype=np.float32))
    v.assign(np.array([1.5, 2.5], dtype=np.float64))
    assert v.dtype == np.float32
    np.testing.assert_array_equal(v.numpy(), [1.5, 2.5])
    v.assign_add(gt.tensor(np.array([1.0, 1.0], dtype=np.float64)))
    assert v.dtype == np.float32
    w = gt.Variable([0, 0])
    w.assign([1.7, -2.2])
    assert w.dtype == np.int64
    np.testing.assert_array_equal(w.numpy(), [1, -2])


@pytest.mark.parametrize("method", ["assign", "assign_add", "assign_sub"])
def test_shape_mismatch_names_both_shapes(method):
    v = gt.Variable(np.zeros((2, 3)))
    before = v.numpy()
    for bad in (np.zeros((3, 2)), np.zeros((2, 3, 1)), gt.tensor(np.zeros(4)), np.zeros((4, 3))):
        with pytest.raises(ValueError) as info:
            getattr(v, method)(bad)
        msg = str(info.value)
        assert f"Variable.{method}" in msg
        assert str(tuple(bad.shape)) in msg and "(2, 3)" in msg
    np.testing.assert_array_equal(v.numpy(), before)  # nothing was written


def test_assign_is_never_recorded_on_a_tape():
    x = gt.tensor([1.0, 2.0])
    w = gt.Variable([0.0, 0.0])
    with gt.GradientTape(persistent=True) as tape:
        tape.watch(x)
        w.assign(x * 3.0)
        w.assign_add(x)
        w.assign_sub(gt.sum(x))
        ops = tape.recorded_ops()
    assert ops == ("mul", "sum")  # only x * 3 and sum(x), not the assigns
    assert tape.gradient(w, x) is None  # the variable's value is not a function of x
    np.testing.assert_allclose(w.numpy(), [1.0, 5.0])


def test_trainable_variables_are_watched_and_others_not():
    v = gt.Variable([2.0], name="v")
    u = gt.Variable([3.0], name="u", trainable=False)
    with gt.GradientTape(persistent=True) as tape:
        y = gt.sum(v * u)
    assert tape.watched_variables() == (v,)
    np.testing.assert_allclose(tape.gradient(y, v).numpy(), [3.0])
    assert tape.gradient(y, u) is None


def test_variable_from_tensor_or_array_copies():
    a = np.array([1.0, 2.0])
    v = gt.Variable(a)
    v.assign_add([1.0, 1.0])
    np.testing.assert_array_equal(a, [1.0, 2.0])
    a[0] = 100.0
    np.testing.assert_array_equal(v.numpy(), [2.0, 3.0])
    t = gt.tensor([1.0, 2.0])
    w = gt.Variable(t)
    assert not np.shares_memory(w.data, t.data)
    w.assign([9.0, 9.0])
    np.testing.assert_array_equal(t.numpy(), [1.0, 2.0])
    u = gt.Variable(w, name="copy")
    u.assign_add(1.0)
    np.testing.assert_array_equal(w.numpy(), [9.0, 9.0])
    assert u.dtype == w.dtype and u.name == "copy"
    assert gt.Variable(t, dtype=np.float64).dtype == np.float64


def test_numpy_and_value_are_snapshots():
    v = gt.Variable([1.0, 2.0])
    a = v.numpy()
    snap = v.value()
    assert type(snap) is gt.Tensor
    v.assign([5.0, 5.0])
    np.testing.assert_array_equal(a, [1.0, 2.0])
    np.testing.assert_array_equal(snap.numpy(), [1.0, 2.0])
    a[0] = -1.0  # a private copy, writable
    np.testing.assert_array_equal(v.numpy(), [5.0, 5.0])


# (An assign from another backend is refused: tests/test_backend.py, which can simulate one.)


@pytest.fixture
def seen_by_vjp():
    """``(prim, seen)``: ``extend.bind(prim, x)`` is ``x * x``; its VJP rule appends the array
    it computes with (the record's saved input) to ``seen``. Removed from the registry after."""
    seen = []

    def rule(m, rec, g):
        x = m.val(rec.inputs[0])
        seen.append(x)
        return (2 * g * x,)

    prim = extend.primitive("_variable_square_probe", lambda xp, x: x * x, rule=rule)
    yield prim, seen
    extend.REGISTRY.pop("_variable_square_probe", None)


def test_snapshot_is_copy_on_write(seen_by_vjp):
    prim, seen = seen_by_vjp
    v = gt.Variable([1.0, 2.0])
    with gt.GradientTape() as tape:
        y = extend.bind(prim, v)
    tape.gradient(y, v)
    assert seen.pop() is v.data  # no copy while nothing writes
    with gt.GradientTape() as tape:
        y = extend.bind(prim, v)
    old = v.data
    v.assign([7.0, 8.0])
    assert v.data is old  # the variable still writes in place
    np.testing.assert_array_equal(v.numpy(), [7.0, 8.0])
    v.assign_add(1.0)
    g = tape.gradient(y, v)
    kept = seen.pop()
    assert kept is not v.data
    np.testing.assert_array_equal(kept, [1.0, 2.0])  # the record kept what the op saw
    np.testing.assert_array_equal(g.numpy(), [2.0, 4.0])


def test_no_copy_when_snapshots_are_gone():
    v = gt.Variable(np.ones(1 << 15))  # float64: 256 KB
    with gt.GradientTape() as tape:
        y = v * v
    del tape, y
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        v.assign(np.zeros(1 << 15))  # nothing alive to protect: just the in-place write
        copied = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert copied < v.data.nbytes // 2
    # dead references are pruned: tests/test_variable_snapshot.py
    # (test_snapshots_of_released_records_do_not_accumulate)


def test_repr():
    r = repr(gt.Variable([1.0, 2.0], name="w"))
    assert r == "Variable([1., 2.], dtype=float32, name='w', trainable=True)"
    assert repr(gt.Variable(3.0, trainable=False)) == "Variable(3., dtype=float32, trainable=False)"


def test_item_assignment_explains_what_to_do_instead():
    v, t = gt.Variable([1.0, 2.0]), gt.tensor([1.0, 2.0])
    with pytest.raises(TypeError, match=r"v.assign\(gt.where"):
        v[0] = 5.0
    with pytest.raises(TypeError, match="tensors are immutable"):
        t[0] = 5.0


def test_a_wider_value_past_the_variables_float_range_is_refused(backend):
    """1e6 assigned to a float16 Variable was cast to inf (and a float64 1e300 to float32)."""
    for dtype, big in ((np.float16, 1e6), (np.float32, 1e300), (np.float16, 70000)):
        v = gt.Variable(np.ones(2, dtype))
        with pytest.raises(ValueError, match=f"past the largest {np.dtype(dtype)}"):
            v.assign(np.array([1, big]))
        assert v.numpy().tolist() == [1.0, 1.0]
    v = gt.Variable(np.array([1000.0, 2.0], np.float16))  # updates compute in the wider type
    v /= 1e5
    np.testing.assert_array_equal(v.numpy(), (np.array([1000.0, 2.0]) / 1e5).astype(np.float16))
    v = gt.Variable(np.array([-60000.0], np.float16))
    v += 100000
    v *= np.float64(1e-3)
    np.testing.assert_allclose(v.numpy(), [40.0], rtol=1e-3)
    v = gt.Variable(np.ones(2, np.float16))
    v.assign(np.array([65519.0, np.inf]))  # rounds to the largest float16; an inf is an inf
    assert v.numpy().tolist() == [65504.0, np.inf]


def test_a_compiled_assign_checks_the_range_at_each_call():
    v = gt.Variable(np.ones(2, np.float16))

    @gt.function
    def put(x):
        v.assign(x)

    for x in (1.0, 2.0, 3.0):  # traced, then replayed
        put(gt.tensor(np.array([x, x])))
    with pytest.raises(ValueError, match="past the largest float16"):
        put(gt.tensor(np.array([1e6, 1.0])))
    assert v.numpy().tolist() == [3.0, 3.0]
