"""Found by fuzzing gt.function with the transforms: cross_entropy of constant logits with
labels passed to the step, a vmap-batched bernoulli p inside a trace, and the warning for a
generator made inside the step."""

from __future__ import annotations

import numpy as np
import pytest

import gradtape as gt


def test_cross_entropy_of_constant_logits_and_traced_labels_compiles():
    logits = gt.ones((4, 3))

    def step(labels):
        return gt.nn.cross_entropy(logits, labels, reduction="none")

    f = gt.function(step)
    for labels in ([0, 1, 2, 0], [2, 2, 1, 0], [1, 0, 0, 2]):
        y = gt.tensor(np.array(labels))
        np.testing.assert_array_equal(f(y).numpy(), step(y).numpy())
    assert f.trace_count <= 2


def test_a_vmap_batched_bernoulli_p_is_refused_inside_a_trace_as_eagerly():
    gen = gt.random.Generator(0)

    def step(x):
        return gt.vmap(lambda r: gen.bernoulli(gt.sigmoid(r)), randomness="different")(x)

    x = gt.tensor(np.zeros((4, 3), np.float32))
    for f in (step, gt.function(step), gt.function(step, fallback="eager")):
        with pytest.raises(ValueError, match=r"bernoulli: p is batched by gt.vmap"):
            f(x)


def test_a_generator_made_inside_the_step_is_named_in_the_warning():
    def step(x):
        return x + gt.random.Generator(0).normal(x.shape)

    f = gt.function(step)
    with pytest.warns(UserWarning, match=r"the gt.random.Generator drawn from is another object in "
                                         r"each trace \(one made inside the step\?\): make it once, "
                                         r"outside the step"):
        for _ in range(3):
            f(gt.ones((2,)))


def test_broadcast_variables_inside_a_compiled_step_is_refused_before_any_collective():
    gt.distributed.init()
    w = gt.Variable([1.0, 2.0], name="w")
    opt = gt.optimizers.Adam(0.1)

    def step(x):
        gt.distributed.broadcast_variables([w], optimizer=opt)
        return x * 2.0

    with pytest.raises(gt.TracingError, match=r"gt.distributed.broadcast_variables\(\) at .*: a "
                                              r"broadcast recorded in the program would run at "
                                              r"the traces only"):
        gt.function(step)(gt.tensor(1.0))
    with pytest.warns(UserWarning, match=r"runs eagerly"):
        assert float(gt.function(step, fallback="eager")(gt.tensor(1.0))) == 2.0
