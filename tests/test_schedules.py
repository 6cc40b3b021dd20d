"""gt.optimizers.schedules: Keras's formulas, argument checks, use as an optimizer's
learning rate (eager, compiled, pickled, in a checkpoint)."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest

import gradtape as gt

S = gt.optimizers.schedules


def test_exponential_decay():
    s = S.ExponentialDecay(0.5, decay_steps=4, decay_rate=0.1)
    for t in (0, 1, 3, 4, 9):
        assert s(t) == pytest.approx(0.5 * 0.1 ** (t / 4), rel=1e-15)
    st = S.ExponentialDecay(0.5, 4, 0.1, staircase=True)
    assert [st(t) for t in (0, 3, 4, 7, 8)] == pytest.approx([0.5, 0.5, 0.05, 0.05, 0.005])


def test_cosine_decay_with_and_without_warmup():
    s = S.CosineDecay(1.0, decay_steps=10, alpha=0.1)
    for t in (0, 3, 10, 50):
        frac = min(t, 10) / 10
        assert s(t) == pytest.approx(0.9 * 0.5 * (1 + math.cos(math.pi * frac)) + 0.1)
    w = S.CosineDecay(0.0, decay_steps=10, warmup_steps=4, warmup_target=2.0)
    assert [w(t) for t in (0, 2, 4, 9, 14, 100)] == pytest.approx([0.0, 1.0, 2.0, 1.0, 0.0, 0.0])


def test_piecewise_constant_decay():
    s = S.PiecewiseConstantDecay([10, 20], [1.0, 0.5, 0.25])
    assert [s(t) for t in (0, 10, 11, 20, 21, 10**6)] == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]


@pytest.mark.parametrize("make, err, match", [
    (lambda: S.ExponentialDecay(0.1, 0, 0.5), ValueError, r"ExponentialDecay: decay_steps must be > 0"),
    (lambda: S.ExponentialDecay(-1.0, 10, 0.5), ValueError, r"initial_learning_rate must be >= 0"),
    (lambda: S.ExponentialDecay(0.1, 10, 0.5, staircase=1), TypeError, r"staircase must be True or False"),
    (lambda: S.CosineDecay(0.1, 10, alpha=2.0), ValueError, r"CosineDecay: alpha must be in \[0, 1\]"),
    (lambda: S.CosineDecay(0.1, 10, warmup_steps=5), ValueError, r"needs warmup_target"),
    (lambda: S.CosineDecay("0.1", 10), TypeError, r"CosineDecay: initial_learning_rate must be a real number"),
    (lambda: S.PiecewiseConstantDecay([10, 5], [1, 2, 3]), ValueError, r"boundaries must increase"),
    (lambda: S.PiecewiseConstantDecay([10], [1.0]), ValueError, r"one more entry than boundaries"),
    (lambda: S.PiecewiseConstantDecay(10, [1.0]), TypeError, r"boundaries must be a sequence"),
])
def test_arguments_are_checked(make, err, match):
    with pytest.raises(err, match=match):
        make()


def test_a_schedule_drives_an_optimizer_eagerly_compiled_and_after_pickling():
    sched = S.PiecewiseConstantDecay([1], [0.5, 0.1])

    def run(compiled: bool, pickled: bool) -> np.ndarray:
        w = gt.Variable([1.0], name="w")
        opt = gt.optimizers.SGD(sched)
        if pickled:
            w, opt = pickle.loads(pickle.dumps((w, opt)))

        def step() -> None:
            with gt.GradientTape() as tape:
                loss = gt.sum(w * 2.0)
            opt.apply_gradients([(tape.gradient(loss, w), w)])

        f = gt.function(step) if compiled else step
        for _ in range(4):
            f()
        assert opt.current_learning_rate == 0.1 and "PiecewiseConstantDecay" in repr(opt)
        return w.numpy()

    expected = np.array([1.0 - 2 * (0.5 + 0.5 + 0.1 + 0.1)], np.float32)
    for compiled in (False, True):
        for pickled in (False, True):
            np.testing.assert_allclose(run(compiled, pickled), expected, rtol=1e-6)


def test_a_growing_exponential_schedule_past_float64_is_refused_by_the_optimizer():
    s = S.ExponentialDecay(1.0, decay_steps=1, decay_rate=2.0)
    assert s(2000) == math.inf
    opt = gt.optimizers.SGD(s)
    opt.iterations = 2000
    w = gt.Variable([1.0])
    with pytest.raises(ValueError, match=r"schedule must return a finite number >= 0, got inf at "
                                         r"step 2000"):
        opt.apply_gradients([(gt.tensor([1.0]), w)])


def test_multistep_milestones_are_boundaries_one_step_earlier():
    milestones, lr, gamma = [3, 7], 1.0, 0.1
    s = S.PiecewiseConstantDecay([m - 1 for m in milestones], [lr, lr * gamma, lr * gamma ** 2])
    torch_like = [lr * gamma ** sum(t >= m for m in milestones) for t in range(10)]
    assert [s(t) for t in range(10)] == pytest.approx(torch_like)
