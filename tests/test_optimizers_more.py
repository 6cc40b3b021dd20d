"""RMSprop and Adagrad: PyTorch's update formulas (written out in NumPy here), every option,
checkpoints that resume exactly, compiled steps equal to eager ones, checked arguments."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import gradtape as gt


def _ref_rmsprop(p, grads, lr, rho, momentum, eps, centered, wd):
    p = p.copy()
    v, ga, buf = np.zeros_like(p), np.zeros_like(p), np.zeros_like(p)
    for g in grads:
        g = g + wd * p
        v = rho * v + (1 - rho) * g * g
        if centered:
            ga = rho * ga + (1 - rho) * g
            avg = np.sqrt(np.maximum(v - ga * ga, 0)) + eps
        else:
            avg = np.sqrt(v) + eps
        if momentum:
            buf = momentum * buf + g / avg
            p = p - lr * buf
        else:
            p = p - lr * g / avg
    return p


def _ref_adagrad(p, grads, lr, init, eps, wd):
    p = p.copy()
    s = np.full_like(p, init)
    for g in grads:
        g = g + wd * p
        s = s + g * g
        p = p - lr * g / (np.sqrt(s) + eps)
    return p


def _run(opt, p0, grads):
    v = gt.Variable(p0.copy(), name="w")
    for g in grads:
        opt.apply_gradients([(gt.tensor(g), v)])
    return v.numpy()


@pytest.mark.parametrize("centered, momentum, wd", list(itertools.product([False, True], [0.0, 0.9],
                                                                          [0.0, 0.01])))
def test_rmsprop_is_pytorchs_formula(centered, momentum, wd):
    rng = np.random.default_rng(1)
    p0 = rng.normal(size=(3, 4))
    grads = [rng.normal(size=(3, 4)) for _ in range(12)]
    opt = gt.optimizers.RMSprop(0.05, rho=0.9, momentum=momentum, epsilon=1e-6, centered=centered,
                                weight_decay=wd)
    np.testing.assert_allclose(_run(opt, p0, grads),
                               _ref_rmsprop(p0, grads, 0.05, 0.9, momentum, 1e-6, centered, wd),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("init, wd", [(0.0, 0.0), (0.1, 0.0), (0.1, 0.02)])
def test_adagrad_is_pytorchs_formula(init, wd):
    rng = np.random.default_rng(2)
    p0 = rng.normal(size=(5,))
    grads = [rng.normal(size=(5,)) for _ in range(12)]
    opt = gt.optimizers.Adagrad(0.3, initial_accumulator_value=init, epsilon=1e-10, weight_decay=wd)
    np.testing.assert_allclose(_run(opt, p0, grads), _ref_adagrad(p0, grads, 0.3, init, 1e-10, wd),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("make", [
    lambda: gt.optimizers.RMSprop(0.01, momentum=0.9, centered=True),
    lambda: gt.optimizers.Adagrad(0.1, initial_accumulator_value=0.1),
], ids=["rmsprop", "adagrad"])
def test_a_checkpoint_resumes_exactly_and_a_compiled_step_equals_eager(make, tmp_path):
    rng = np.random.default_rng(3)
    X = gt.tensor(rng.normal(size=(16, 4)).astype(np.float32))

    def model_and_step(opt):
        m = gt.nn.Dense(4, 2, seed=0)

        def step(x):
            with gt.GradientTape() as tape:
                loss = gt.sum(m(x) ** 2)
            opt.apply_gradients(zip(tape.gradient(loss, m.trainable_variables), m.trainable_variables))
            return loss
        return m, step

    ref_m, ref_step = model_and_step(make())
    for _ in range(6):
        ref_step(X)
    m, step = model_and_step(opt := make())
    for _ in range(3):
        step(X)
    path = gt.nn.save(str(tmp_path / "ckpt"), m, opt)
    m2, step2 = model_and_step(opt2 := make())
    gt.nn.load(path, m2, opt2)
    compiled = gt.function(step2)
    for _ in range(3):
        compiled(X)
    for a, b in zip(ref_m.variables, m2.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


@pytest.mark.parametrize("make, err, match", [
    (lambda: gt.optimizers.RMSprop(0.1, rho=1.0), ValueError, r"RMSprop: rho must be in \[0, 1\)"),
    (lambda: gt.optimizers.RMSprop(0.1, alpha=0.9), TypeError, r"write rho=\.\.\. \(PyTorch's alpha\)"),
    (lambda: gt.optimizers.RMSprop(0.1, centered=1), TypeError, r"centered must be True or False"),
    (lambda: gt.optimizers.Adagrad(0.1, initial_accumulator_value=-1), ValueError,
     r"Adagrad: initial_accumulator_value must be >= 0"),
    (lambda: gt.optimizers.Adagrad(lr=0.1), TypeError, r"write learning_rate="),
])
def test_arguments_are_checked(make, err, match):
    with pytest.raises(err, match=match):
        make()


def test_rmsprop_slots_follow_its_settings():
    v = gt.Variable([1.0, 2.0], name="w")
    opt = gt.optimizers.RMSprop(0.1)
    opt.apply_gradients([(gt.tensor([1.0, 1.0]), v)])
    assert sorted(k for k in opt.state_dict() if "/" in k) == ["w/v"]
    opt = gt.optimizers.RMSprop(0.1, momentum=0.5, centered=True)
    opt.apply_gradients([(gt.tensor([1.0, 1.0]), v)])
    assert sorted(k for k in opt.state_dict() if "/" in k) == ["w/g_avg", "w/momentum", "w/v"]


def test_centered_rmsprop_turned_off_and_on_starts_its_mean_afresh():
    w = gt.Variable([1.0], name="w")
    opt = gt.optimizers.RMSprop(0.01, centered=True)
    for _ in range(5):
        opt.apply_gradients([(gt.tensor([10.0]), w)])
    opt.centered = False
    for _ in range(50):
        opt.apply_gradients([(gt.tensor([0.01]), w)])
    assert "w/g_avg" not in opt.state_dict()
    opt.centered = True
    before = w.numpy().copy()
    opt.apply_gradients([(gt.tensor([0.01]), w)])
    assert abs(float(w.numpy()[0] - before[0])) < 1e-3  # (a stale mean made it 1e4)


def test_centered_rmsprop_with_overflowing_moments_gives_nan_not_a_huge_step():
    w = gt.Variable(np.array([1.0], np.float32), name="w")
    gt.optimizers.RMSprop(0.01, centered=True).apply_gradients(
        [(gt.tensor(np.array([1e30], np.float32)), w)])
    assert np.isnan(w.numpy()[0])
