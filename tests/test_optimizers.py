"""Optimizers: five steps equal hand-written NumPy references; in-place updates; None
gradients skipped; clipping; state round trip; errors."""

from __future__ import annotations

import numpy as np
import pytest

import gradtape as gt


# --------------------------------------------------------------------------- references
def ref_sgd(p, grads, lr, momentum=0.0, nesterov=False, weight_decay=0.0):
    p = p.copy()
    buf = np.zeros_like(p)
    for g in grads:
        d = g + weight_decay * p
        if momentum:
            buf = momentum * buf + d
            d = d + momentum * buf if nesterov else buf
        p = p - lr * d
    return p


def ref_adam(p, grads, lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, decoupled=False):
    p = p.copy()
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        if decoupled:
            p = p * (1 - lr * weight_decay)
        else:
            g = g + weight_decay * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat = m / (1 - b1 ** t)
        v_hat = v / (1 - b2 ** t)
        p = p - lr * m_hat / (np.sqrt(v_hat) + eps)
    return p


CASES = [
    (lambda: gt.optimizers.SGD(0.1), lambda p, gs: ref_sgd(p, gs, 0.1)),
    (lambda: gt.optimizers.SGD(0.1, momentum=0.9),
     lambda p, gs: ref_sgd(p, gs, 0.1, momentum=0.9)),
    (lambda: gt.optimizers.SGD(0.05, momentum=0.8, nesterov=True, weight_decay=0.01),
     lambda p, gs: ref_sgd(p, gs, 0.05, momentum=0.8, nesterov=True, weight_decay=0.01)),
    (lambda: gt.optimizers.Adam(0.01), lambda p, gs: ref_adam(p, gs, 0.01)),
    (lambda: gt.optimizers.Adam(0.01, beta1=0.8, beta2=0.99, epsilon=1e-6, weight_decay=0.1),
     lambda p, gs: ref_adam(p, gs, 0.01, 0.8, 0.99, 1e-6, weight_decay=0.1)),
    (lambda: gt.optimizers.AdamW(0.01, weight_decay=0.1),
     lambda p, gs: ref_adam(p, gs, 0.01, weight_decay=0.1, decoupled=True)),
]


@pytest.mark.parametrize("make,ref", CASES, ids=["sgd", "momentum", "nesterov-wd", "adam",
                                                  "adam-l2", "adamw"])
def test_five_steps_equal_numpy_reference(make, ref):
    rng = np.random.default_rng(0)
    p0 = [rng.normal(size=(3, 4)), rng.normal(size=(4,))]
    grads = [[rng.normal(size=p.shape) for _ in range(5)] for p in p0]
    variables = [gt.Variable(p) for p in p0]  # float64
    opt = make()
    for step in range(5):
        opt.apply_gradients(zip([gt.tensor(gs[step]) for gs in grads], variables))
    assert opt.iterations == 5
    for v, p, gs in zip(variables, p0, grads):
        np.testing.assert_allclose(v.numpy(), ref(p, gs), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("make,ref", CASES[2:4], ids=["nesterov-wd", "adam"])
def test_float32_steps_close_to_reference(make, ref):
    rng = np.random.default_rng(1)
    p0 = rng.normal(size=(5,)).astype(np.float32)
    gs = [rng.normal(size=5).astype(np.float32) for _ in range(5)]
    v = gt.Variable(p0)
    opt = make()
    for g in gs:
        opt.apply_gradients([(g, v)])
    assert v.dtype == np.float32
    np.testing.assert_allclose(v.numpy(), ref(p0.astype(np.float64), gs), rtol=1e-5, atol=1e-6)


def test_updates_in_place_on_the_variable_buffer():
    v = gt.Variable(np.ones((3, 3), np.float32))
    buf = v.data
    ptr = buf.__array_interface__["data"][0]
    for opt in (gt.optimizers.SGD(0.1, momentum=0.9), gt.optimizers.Adam(), gt.optimizers.AdamW()):
        opt.apply_gradients([(gt.tensor(np.ones((3, 3), np.float32)), v)])
        assert v.data is buf and v.data.__array_interface__["data"][0] == ptr
    assert not np.allclose(v.numpy(), 1.0)


def test_none_gradients_are_skipped_with_a_warning_naming_the_variable():
    a, b = gt.Variable([1.0, 2.0], name="a"), gt.Variable([3.0], name="b")
    opt = gt.optimizers.Adam(0.1)
    with pytest.warns(UserWarning, match="no gradient for variable.*a"):
        opt.apply_gradients(zip([None, gt.tensor([1.0])], [a, b]))
    np.testing.assert_array_equal(a.numpy(), [1.0, 2.0])
    assert b.numpy()[0] != 3.0
    state = opt.state_dict([("a", a), ("b", b)])  # slots exist for b only
    assert {key.split("/")[0] for key in state if "/" in key} == {"b"}
    with pytest.warns(UserWarning, match="a, b"):
        opt.apply_gradients(zip([None, None], [a, b]))  # nothing to do: no step counted
    assert opt.iterations == 1


def test_gradients_from_a_tape_train_a_quadratic():
    w = gt.Variable([5.0, -3.0])
    opt = gt.optimizers.SGD(0.1, momentum=0.5)
    for _ in range(100):
        with gt.GradientTape() as tape:
            loss = gt.sum(gt.square(w - 1.0))
        opt.apply_gradients(zip([tape.gradient(loss, w)], [w]))
    np.testing.assert_allclose(w.numpy(), [1.0, 1.0], atol=1e-5)


def test_clip_by_global_norm_and_option():
    grads = [gt.tensor([3.0]), None, gt.tensor([[4.0]])]
    clipped, norm = gt.optimizers.clip_by_global_norm(grads, 2.5)
    assert norm == pytest.approx(5.0)
    assert clipped[1] is None
    np.testing.assert_allclose(clipped[0].numpy(), [1.5])
    np.testing.assert_allclose(clipped[2].numpy(), [[2.0]])
    same, _ = gt.optimizers.clip_by_global_norm(grads, 10.0)
    assert same[0] is grads[0]
    # the optimizer option clips before the update: plain SGD with lr 1 moves by the clipped step
    a, b = gt.Variable([0.0]), gt.Variable([[0.0]])
    gt.optimizers.SGD(1.0, global_clipnorm=1.0).apply_gradients(zip([grads[0], grads[2]], [a, b]))
    np.testing.assert_allclose([a.numpy()[0], b.numpy()[0, 0]], [-0.6, -0.8], rtol=1e-6)
    with pytest.raises(ValueError, match="clip_norm"):
        gt.optimizers.clip_by_global_norm(grads, 0.0)


def test_learning_rate_schedule():
    v = gt.Variable([0.0])
    seen = []
    opt = gt.optimizers.SGD(lambda step: seen.append(step) or 0.1 * (step + 1))
    for _ in range(3):
        opt.apply_gradients([(gt.tensor([1.0]), v)])
    assert seen == [0, 1, 2]
    np.testing.assert_allclose(v.numpy(), [-0.6], rtol=1e-6)


def test_state_dict_round_trip_continues_identically():
    rng = np.random.default_rng(3)
    p0 = rng.normal(size=4)
    gs = [rng.normal(size=4) for _ in range(6)]
    v1 = gt.Variable(p0)
    opt1 = gt.optimizers.Adam(0.05)
    for g in gs[:3]:
        opt1.apply_gradients([(g, v1)])
    state = opt1.state_dict([("w", v1)])
    assert {k for k in state if not k.startswith("hyper.")} == {"iterations", "w/m", "w/v"}
    v2 = gt.Variable(v1.numpy())
    opt2 = gt.optimizers.Adam(0.05)
    opt2.load_state_dict(state, [("w", v2)])
    for g in gs[3:]:
        opt1.apply_gradients([(g, v1)])
        opt2.apply_gradients([(g, v2)])
    np.testing.assert_array_equal(v1.numpy(), v2.numpy())


def test_errors():
    v = gt.Variable([1.0, 2.0])
    opt = gt.optimizers.SGD(0.1)
    with pytest.raises(ValueError, match=r"gradient of shape \(3,\).*shape \(2,\)"):
        opt.apply_gradients([(gt.tensor([1.0, 2.0, 3.0]), v)])
    with pytest.raises(TypeError, match="Variable"):
        opt.apply_gradients([(gt.tensor([1.0, 2.0]), gt.tensor([1.0, 2.0]))])
    with pytest.raises(ValueError, match="no \\(gradient, variable\\) pairs"):
        opt.apply_gradients([])
    with pytest.raises(ValueError, match="nesterov"):
        gt.optimizers.SGD(0.1, nesterov=True)
    with pytest.raises(ValueError, match="beta1"):
        gt.optimizers.Adam(beta1=1.0)
    with pytest.raises(ValueError, match="learning_rate"):
        gt.optimizers.Adam(-1.0)


def test_global_norm_and_clipping_of_float16_gradients_do_not_overflow():
    # a float16 square overflows from 256 on: the norm would be inf and every clipped
    # gradient 0 (the step silently skipped)
    g = gt.tensor(np.array([300.0, 400.0], np.float16))
    assert gt.optimizers.global_norm([g]) == 500.0
    clipped, norm = gt.optimizers.clip_by_global_norm([g], 1000.0)
    assert norm == 500.0 and clipped[0].numpy().tolist() == [300.0, 400.0]
    w = gt.Variable(np.ones(2, np.float16))
    gt.optimizers.SGD(0.001, global_clipnorm=1000.0).apply_gradients([(g, w)])
    np.testing.assert_allclose(w.numpy(), [0.7, 0.6], atol=1e-3)
    big = gt.tensor(np.array([3e19, 4e19], np.float32))  # float32 squares overflow too
    assert gt.optimizers.global_norm([big]) == pytest.approx(5e19, rel=1e-6)


def test_clipping_refuses_a_nan_bound_and_global_norm_takes_array_likes():
    with pytest.raises(ValueError, match="clip_norm must be a finite number > 0, got nan"):
        gt.optimizers.clip_by_global_norm([gt.tensor([1.0])], float("nan"))
    assert gt.optimizers.global_norm([[3.0, 4.0], None]) == 5.0


@pytest.mark.parametrize("make, match", [
    (lambda: gt.optimizers.Adam(0.1, beta1="0.9"), r"TypeError:Adam: beta1 must be a real number .*got '0.9'"),
    (lambda: gt.optimizers.Adam(0.1, epsilon=-1e-8), r"ValueError:Adam: epsilon must be >= 0, got -1e-08$"),
    (lambda: gt.optimizers.AdamW(0.1, weight_decay=float("nan")), r"ValueError:AdamW: weight_decay must be finite"),
    (lambda: gt.optimizers.SGD(0.1, momentum=1.5), r"ValueError:SGD: momentum must be in \[0, 1\], got 1.5$"),
    (lambda: gt.optimizers.SGD(0.1, momentum="0.9"), r"TypeError:SGD: momentum must be a real number"),
    (lambda: gt.optimizers.SGD(0.1, weight_decay=-0.1), r"ValueError:SGD: weight_decay must be >= 0"),
    (lambda: gt.optimizers.SGD(float("inf")), r"ValueError:SGD: learning_rate must be finite, got inf"),
    (lambda: gt.optimizers.SGD(0.1, global_clipnorm="1"), r"TypeError:SGD: global_clipnorm must be a real number"),
    (lambda: gt.optimizers.SGD(0.1, global_clipnorm=float("inf")), r"ValueError:SGD: global_clipnorm must be finite"),
    (lambda: gt.optimizers.SGD(0.1, global_clipnorm=0.0), r"ValueError:SGD: global_clipnorm must be > 0, got 0.0$"),
])
def test_hyperparameters_are_checked_and_named(make, match):
    # a string hyper-parameter failed deep inside with "'<=' not supported"; a negative
    # epsilon or weight decay, or an infinite rate, trained silently to NaN
    with pytest.raises((TypeError, ValueError)) as info:
        make()
    import re
    assert re.search(match, f"{type(info.value).__name__}:{info.value}")


def test_a_learning_rate_schedule_value_is_checked_at_the_step_it_is_used():
    w = gt.Variable([1.0])
    opt = gt.optimizers.SGD(lambda step: 0.1 if step < 2 else -0.1)
    for _ in range(2):
        opt.apply_gradients([(gt.tensor([1.0]), w)])
    np.testing.assert_allclose(w.numpy(), [0.8])
    with pytest.raises(ValueError, match="schedule must return a finite number >= 0, got -0.1 at step 2"):
        opt.apply_gradients([(gt.tensor([1.0]), w)])
    np.testing.assert_allclose(w.numpy(), [0.8])  # no update
    assert opt.iterations == 2
    ok = gt.optimizers.SGD(lambda step: np.array(0.5))  # a 0-d array or Tensor is a number
    assert ok.current_learning_rate == 0.5
    with pytest.raises(ValueError, match="got None at step 0"):
        _ = gt.optimizers.SGD(lambda step: None).current_learning_rate
