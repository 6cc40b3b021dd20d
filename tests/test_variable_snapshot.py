"""A Variable assigned between the forward and the backward pass: the VJP must see the value
the op read (TF semantics), without copying buffers in the normal training loop."""

import numpy as np

import gradtape as gt


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
    v = gt.Variable([1.0, 2.0])
    with gt.GradientTape() as tape:
        y = gt.sum(v * v)
    tape.gradient(y, v)
    buffer = v.data
    v.assign_sub([0.1, 0.1])
    assert v.data is buffer
    assert not v._snapshots  # nothing alive needed the old values


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


def test_uses_between_assigns_share_one_snapshot_and_keep_their_values(backend):
    """A weight read several times shares one snapshot until it is assigned; reads before
    and after an assign inside one forward each keep the value they saw."""
    v = gt.Variable([1.0, 2.0], dtype="float64")
    x = gt.tensor([3.0, 5.0], dtype="float64")
    with gt.GradientTape() as tape:
        tape.watch(x)
        y1 = v * x
        y2 = v * x * 2.0
        v.assign([10.0, 20.0])
        y3 = v * x
        total = gt.sum(y1 + y2 + y3)
    recs = [r for r in tape._records if r.prim.name == "mul" and r.inputs[0] is not None
            and r.inputs[0]._id == v._id]
    assert recs[0].inputs[0] is recs[1].inputs[0]  # shared before the assign
    assert recs[2].inputs[0] is not recs[0].inputs[0]
    # d total / dx = v_old + 2 v_old + v_new
    np.testing.assert_allclose(tape.gradient(total, x).numpy(), [1 + 2 + 10, 2 + 4 + 20])


def test_many_reads_of_one_weight_keep_one_snapshot():
    v = gt.Variable(np.ones(4))
    x = gt.tensor(np.ones(4))
    with gt.GradientTape() as tape:
        h = x
        for _ in range(500):
            h = h * v
        y = gt.sum(h)
    assert len(v._snapshots) == 1
    np.testing.assert_allclose(tape.gradient(y, v).numpy(), np.full(4, 500.0))
