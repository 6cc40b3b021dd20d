"""A Variable assigned between the forward and the backward pass: the VJP must see the value
the op read (TF semantics), without copying buffers in the normal training loop.

What a record saved is seen through the extension API: a primitive declared here (``v * x``)
whose VJP rule receives the record and notes the saved Tensors (``rec.inputs``). Copies are
seen with tracemalloc, which traces NumPy's buffers."""

import itertools
import tracemalloc

import numpy as np
import pytest

import gradtape as gt
from gradtape import extend

_names = itertools.count()


@pytest.fixture
def saving_mul():
    """``(prim, saved)``: ``extend.bind(prim, a, b)`` is ``a * b``; its VJP appends the
    record's saved inputs (the Tensors the tape kept, snapshots for a Variable) to ``saved``.
    Removed from the registry afterwards."""
    saved = []

    def rule(m, rec, g):
        saved.append(rec.inputs)
        a, b = m.val(rec.inputs[0]), m.val(rec.inputs[1])
        return g * b, g * a

    name = f"_snapshot_mul_{next(_names)}"
    prim = extend.primitive(name, lambda xp, a, b: a * b, rule=rule)
    yield prim, saved
    extend.REGISTRY.pop(name, None)


def allocated_by(fn) -> int:
    """Bytes ``fn()`` allocated that are still alive when it returns."""
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        fn()
        return tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()


def test_assign_after_forward_does_not_change_gradient(backend):
    v = gt.Variable([1.0, 2.0])
    with gt.GradientTape() as tape:
        y = gt.sum(v * v)
    v.assign([10.0, 20.0])
    np.testing.assert_allclose(tape.gradient(y, v).numpy(), [2.0, 4.0])


def test_assign_sub_after_forward_unary_op(backend):
    v = gt.Variable([0.5, -0.25], dtype="float64")
    with gt.GradientTape() as tape:
        y = gt.sum(gt.sin(v))
    v.assign_sub([1.0, 1.0])
    np.testing.assert_allclose(tape.gradient(y, v).numpy(), np.cos([0.5, -0.25]))


def test_no_copy_once_the_tape_released_its_records():
    v = gt.Variable(np.ones(1 << 15))  # float64: 256 KB
    nbytes = v.data.nbytes
    with gt.GradientTape() as kept:  # control: a live record needs the old values
        y_kept = gt.sum(v * v)
    assert allocated_by(lambda: v.assign_sub(0.1)) >= nbytes  # copied for that record
    with gt.GradientTape() as tape:
        y = gt.sum(v * v)
    tape.gradient(y, v)
    kept.gradient(y_kept, v)
    buffer = v.data
    assert allocated_by(lambda: v.assign_sub(0.1)) < nbytes // 2  # nothing alive needed them
    assert v.data is buffer


def test_second_order_through_a_variable_still_connects():
    v = gt.Variable(0.7, dtype="float64")
    with gt.GradientTape() as outer:
        with gt.GradientTape() as inner:
            y = gt.tanh(v) * v
        g = inner.gradient(y, v)
    h = outer.gradient(g, v)
    t = np.tanh(0.7)
    sech2 = 1 - t * t
    np.testing.assert_allclose(float(h), 2 * sech2 - 2 * 0.7 * t * sech2, rtol=1e-12)


def test_uses_between_assigns_share_one_snapshot_and_keep_their_values(backend, saving_mul):
    """A weight read several times shares one snapshot until it is assigned; reads before
    and after an assign inside one forward each keep the value they saw."""
    prim, saved = saving_mul
    v = gt.Variable([1.0, 2.0], dtype="float64")
    x = gt.tensor([3.0, 5.0], dtype="float64")
    with gt.GradientTape() as tape:
        tape.watch(x)
        y1 = extend.bind(prim, v, x)
        y2 = extend.bind(prim, v, x) * 2.0
        v.assign([10.0, 20.0])
        y3 = extend.bind(prim, v, x)
        total = gt.sum(y1 + y2 + y3)
    # d total / dx = v_old + 2 v_old + v_new
    np.testing.assert_allclose(tape.gradient(total, x).numpy(), [1 + 2 + 10, 2 + 4 + 20])
    snap3, snap2, snap1 = (inputs[0] for inputs in saved)  # the VJPs run in reverse order
    assert snap1 is snap2  # shared before the assign
    assert snap3 is not snap1
    np.testing.assert_array_equal(snap1.numpy(), [1.0, 2.0])
    np.testing.assert_array_equal(snap3.numpy(), [10.0, 20.0])


def test_many_reads_of_one_weight_keep_one_snapshot(saving_mul):
    prim, saved = saving_mul
    v = gt.Variable(np.ones(4))
    x = gt.tensor(np.ones(4))
    with gt.GradientTape() as tape:
        h = x
        for _ in range(500):
            h = extend.bind(prim, h, v)
        y = gt.sum(h)
    np.testing.assert_allclose(tape.gradient(y, v).numpy(), np.full(4, 500.0))
    assert len(saved) == 500
    assert len({id(inputs[1]) for inputs in saved}) == 1  # (all held in saved: ids distinct)


def test_snapshots_of_released_records_do_not_accumulate():
    """Each tape takes a snapshot of the weight; once its records are released the snapshot is
    dead, and dead references are pruned: a long loop leaves (almost) nothing behind."""
    v = gt.Variable(np.ones(4))
    x = gt.tensor(np.ones(4))
    og = gt.tensor(np.ones(4))

    def loop(n):
        for _ in range(n):
            with gt.GradientTape() as tape:
                y = v * x
            tape.gradient(y, v, output_gradients=og)

    loop(100)  # warm up
    assert allocated_by(lambda: loop(2000)) < 20_000  # not one reference per tape


def test_views_of_a_variable_do_not_change_when_it_is_assigned():
    """A slice, reshape or stop_gradient of a Variable is a Tensor: immutable, so a later
    assign (in place) must not show through it (found in review: they were views)."""
    v = gt.Variable([1.0, 2.0, 3.0, 4.0])
    a, b, c, d = v[1:3], gt.reshape(v, (2, 2)), gt.stop_gradient(v), gt.transpose(gt.reshape(v, (2, 2)))
    v.assign([9.0, 9.0, 9.0, 9.0])
    np.testing.assert_array_equal(a.numpy(), [2.0, 3.0])
    np.testing.assert_array_equal(b.numpy(), [[1.0, 2.0], [3.0, 4.0]])
    np.testing.assert_array_equal(c.numpy(), [1.0, 2.0, 3.0, 4.0])
    np.testing.assert_array_equal(d.numpy(), [[1.0, 3.0], [2.0, 4.0]])
    f = gt.function(lambda: (v[1:3], gt.stop_gradient(v)))
    outs = [f() for _ in range(3)]  # trace, trace, replay
    v.assign([5.0, 5.0, 5.0, 5.0])
    for o in outs:
        np.testing.assert_array_equal(o[0].numpy(), [9.0, 9.0])
        np.testing.assert_array_equal(o[1].numpy(), [9.0, 9.0, 9.0, 9.0])
