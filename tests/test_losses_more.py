"""l1_loss, huber_loss, nll_loss and kl_div: values against NumPy references (the formulas
PyTorch documents), gradients by central differences, argument checks."""

from __future__ import annotations

import numpy as np
import pytest

import gradtape as gt
from gradtape.testing import check_grads

RNG = np.random.default_rng(0)


def _ref_reduce(v: np.ndarray, reduction: str) -> np.ndarray:
    return {"mean": v.mean(), "sum": v.sum(), "none": v}[reduction]


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_l1_and_huber_match_their_formulas(reduction):
    p, t = RNG.normal(size=(4, 3)) * 3, RNG.normal(size=(4, 3))
    d = p - t
    np.testing.assert_allclose(gt.nn.l1_loss(p, t, reduction=reduction).numpy(),
                               _ref_reduce(np.abs(d), reduction), rtol=1e-12)
    for delta in (0.5, 1.0, 2.5):
        ref = np.where(np.abs(d) <= delta, 0.5 * d * d, delta * (np.abs(d) - 0.5 * delta))
        np.testing.assert_allclose(gt.nn.huber_loss(p, t, delta=delta, reduction=reduction).numpy(),
                                   _ref_reduce(ref, reduction), rtol=1e-12)


def test_l1_and_huber_gradients():
    p, t = RNG.normal(size=(3, 4)) * 3, RNG.normal(size=(3, 4))
    check_grads(lambda a: gt.nn.l1_loss(a, t), (p,), order=1)
    check_grads(lambda a: gt.nn.huber_loss(a, t, delta=0.7), (p,), order=1)
    with gt.GradientTape() as tape:  # bounded by delta in the tails, d itself near 0
        a = gt.tensor(np.array([-10.0, -0.2, 0.0, 0.3, 10.0]))
        tape.watch(a)
        loss = gt.nn.huber_loss(a, 0.0, delta=1.0, reduction="sum")
    np.testing.assert_allclose(tape.gradient(loss, a).numpy(), [-1.0, -0.2, 0.0, 0.3, 1.0])


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_nll_loss_picks_the_labels_log_probability(reduction):
    z = RNG.normal(size=(5, 4))
    lp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    y = np.array([0, 3, 1, 1, 2])
    np.testing.assert_allclose(gt.nn.nll_loss(gt.tensor(lp), y, reduction=reduction).numpy(),
                               _ref_reduce(-lp[np.arange(5), y], reduction), rtol=1e-12)
    np.testing.assert_allclose(gt.nn.nll_loss(gt.nn.log_softmax(gt.tensor(z)), y).numpy(),
                               gt.nn.cross_entropy(gt.tensor(z), y).numpy(), rtol=1e-12)
    check_grads(lambda a: gt.nn.nll_loss(a, y, reduction=reduction), (lp,), order=1)


def test_nll_loss_checks_its_labels():
    lp = gt.tensor(np.log(np.full((2, 3), 1 / 3)))
    if gt.backend_name() == "numpy":
        with pytest.raises(ValueError, match=r"nll_loss: labels must be class indices in \[0, 3\), "
                                             r"got values in \[0, 3\]"):
            gt.nn.nll_loss(lp, [0, 3])
    else:  # a device: no host synchronisation for the check; the example's loss is NaN
        assert np.isnan(gt.nn.nll_loss(lp, [0, 3], reduction="none").numpy()).tolist() == [False, True]
    with pytest.raises(TypeError, match=r"nll_loss: labels must be integer class indices, got dtype "
                                        r"float"):
        gt.nn.nll_loss(lp, [0.0, 1.0])
    with pytest.raises(ValueError, match=r"nll_loss: labels must have shape log_probs.shape\[:-1\]"):
        gt.nn.nll_loss(lp, [0, 1, 2])


@pytest.mark.parametrize("reduction", ["batchmean", "mean", "sum", "none"])
def test_kl_div_matches_its_formula_with_zero_targets(reduction):
    q = RNG.random((3, 4)) + 0.1
    q /= q.sum(-1, keepdims=True)
    p = RNG.random((3, 4))
    p[0, 1] = 0.0
    p /= p.sum(-1, keepdims=True)
    terms = np.where(p > 0, p * (np.log(np.where(p > 0, p, 1.0)) - np.log(q)), 0.0)
    ref = terms.sum() / 3 if reduction == "batchmean" else _ref_reduce(terms, reduction)
    got = gt.nn.kl_div(np.log(q), p, reduction=reduction)
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-12)
    assert np.isfinite(got.numpy()).all()
    check_grads(lambda a: gt.nn.kl_div(a, p, reduction=reduction), (np.log(q),), order=1)


def test_loss_arguments_are_checked():
    with pytest.raises(ValueError, match=r"huber_loss: delta must be > 0, got 0"):
        gt.nn.huber_loss([1.0], [0.0], delta=0)
    with pytest.raises(ValueError, match=r"l1_loss: reduction must be one of"):
        gt.nn.l1_loss([1.0], [0.0], reduction="avg")
    with pytest.raises(ValueError, match=r"kl_div"):
        gt.nn.kl_div(gt.tensor([[0.0, 0.0]]), gt.tensor([[0.5, 0.5, 0.0]]))


def test_a_huber_delta_past_the_dtype_range_is_the_squared_loss():
    got = gt.nn.huber_loss(gt.tensor([0.5, 3.0]), 0.0, delta=1e39, reduction="none")
    np.testing.assert_array_equal(got.numpy(), np.array([0.125, 4.5], np.float32))


def test_kl_divs_reduction_error_names_its_own_default():
    with pytest.raises(ValueError, match=r"kl_div: reduction must be one of \('batchmean', 'mean', "
                                         r"'sum', 'none'\), got 'avg'"):
        gt.nn.kl_div(gt.tensor([[0.0]]), gt.tensor([[1.0]]), reduction="avg")


@pytest.mark.parametrize("dtype, tiny", [(np.float32, [3e-5, 1e-8, 1e-30]), (np.float64, [1e-8, 1e-30])])
def test_huber_gradient_is_d_to_the_last_digit(dtype, tiny):
    d = gt.tensor(np.array(tiny + [7e4], dtype))
    with gt.GradientTape() as tape:
        tape.watch(d)
        loss = gt.nn.huber_loss(d, 0.0, delta=1e10, reduction="sum")
    np.testing.assert_array_equal(tape.gradient(loss, d).numpy(), d.numpy())


def test_huber_second_derivative_is_one_inside_delta_and_zero_outside():
    x = gt.tensor(np.array([0.0, 0.3, -0.7, 2.0]))
    h = gt.hessian(lambda v: gt.nn.huber_loss(v, 0.0, delta=1.0, reduction="sum"))(x)
    np.testing.assert_array_equal(np.diag(h.numpy()), [1.0, 1.0, 1.0, 0.0])


def test_kl_div_gives_nan_for_a_nan_or_negative_target_and_averages_float16_in_float32():
    lq = gt.tensor(np.log(np.full((2, 2), 0.5)))
    for bad in (np.nan, -0.5):
        p = gt.tensor(np.array([[0.5, 0.5], [bad, 1.0]]))
        assert np.isnan(float(gt.nn.kl_div(lq, p)))
    lq16 = gt.tensor(np.log(np.full((70_000, 2), 0.25, np.float16)))
    p16 = gt.tensor(np.full((70_000, 2), 0.5, np.float16))
    assert float(gt.nn.kl_div(lq16, p16)) == pytest.approx(np.log(2.0), rel=2e-3)  # (2 x 0.5 log 2)


def test_nll_loss_is_refused_by_per_example_gradients_with_a_hint():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(5, 3)), np.array([0, 2, 1, 1, 0])
    W = gt.Variable(rng.normal(size=(3, 4)), name="W")
    with gt.GradientTape() as tape:
        losses = gt.nn.nll_loss(gt.nn.log_softmax(gt.tensor(x) @ W), y, reduction="none")
    with pytest.raises(ValueError, match=r"take_along_axis"):
        tape.per_example_gradients(losses, W, max_norm=1.0, reduce="sum")


def test_huber_gradient_is_clipped_at_delta_for_any_delta():
    for dtype, delta, r in ((np.float16, 400.0, 1000.0), (np.float32, 1e20, 1e25)):
        d = gt.tensor(np.array([r, 1.0, -r], dtype))
        with gt.GradientTape() as tape:
            tape.watch(d)
            loss = gt.nn.huber_loss(d, 0.0, delta=delta, reduction="sum")
        np.testing.assert_array_equal(tape.gradient(loss, d).numpy(), np.array([delta, 1.0, -delta], dtype))
