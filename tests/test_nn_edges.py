"""gt.nn edge cases found by fuzzing against PyTorch float64: float16 statistics and means
that overflowed where the result fits, binary cross-entropy from logits losing confident
predictions to cancellation, the mean of an empty batch, argument shapes and layer settings
checked early, and op operands copied as gt.tensor copies them."""

from __future__ import annotations

import numpy as np
import pytest

import gradtape as gt


def _f16_image(rng, shape, mean, std):
    return (mean + std * rng.standard_normal(shape)).astype(np.float16)


def _ref_norm(x64, axes, eps=1e-5):
    mu = x64.mean(axis=axes, keepdims=True)
    return (x64 - mu) / np.sqrt(x64.var(axis=axes, keepdims=True) + eps)


@pytest.mark.parametrize("mean, std", [(20.0, 1.0), (0.0, 200.0)], ids=["large-sum", "large-squares"])
def test_float16_layer_norm_and_batch_norm_match_a_float64_reference(mean, std):
    """A float16 sum of 4096 values near 20, or squares of deviations near 200 (variance 40000), pass 65504
    while the mean and variance fit: the statistics are taken in float32."""
    rng = np.random.default_rng(0)
    x = _f16_image(rng, (4, 1, 32, 32), mean, std)
    x64 = x.astype(np.float64)
    y = gt.nn.layer_norm(gt.tensor(x), axis=(1, 2, 3))
    assert y.dtype == np.float16
    np.testing.assert_allclose(y.numpy(), _ref_norm(x64, (1, 2, 3)), atol=4e-3, rtol=4e-3)
    rm = gt.Variable(np.zeros(1, np.float16), trainable=False)
    rv = gt.Variable(np.ones(1, np.float16), trainable=False)
    xv = gt.Variable(x)
    with gt.GradientTape() as tape:
        yb = gt.nn.batch_norm(xv, rm, rv, training=True)
        loss = gt.sum(yb * yb)
    assert yb.dtype == np.float16
    np.testing.assert_allclose(yb.numpy(), _ref_norm(x64, (0, 2, 3)), atol=4e-3, rtol=4e-3)
    assert np.isfinite(rm.numpy()).all() and np.isfinite(rv.numpy()).all()
    np.testing.assert_allclose(rm.numpy(), 0.1 * x64.mean(), rtol=2e-3)
    np.testing.assert_allclose(rv.numpy(), 0.9 + 0.1 * x64.var(ddof=1), rtol=2e-3)
    g = tape.gradient(loss, xv)
    assert g.dtype == np.float16 and np.isfinite(g.numpy()).all()


def test_float16_mean_reductions_do_not_overflow_where_the_mean_fits():
    rng = np.random.default_rng(1)
    big = (20.0 + rng.standard_normal(4096)).astype(np.float16)  # sum ~ 82000 > 65504
    pred = gt.tensor(big)
    np.testing.assert_allclose(float(gt.nn.mse(pred, gt.zeros(4096, dtype=np.float16))),
                               (big.astype(np.float64) ** 2).mean(), rtol=2e-3)
    logits = gt.tensor(np.stack([np.zeros(4096), big.astype(np.float64)], 1).astype(np.float16))
    ce = float(gt.nn.cross_entropy(logits, gt.tensor(np.zeros(4096, np.int64))))
    np.testing.assert_allclose(ce, big.astype(np.float64).mean(), rtol=2e-3)
    bce = float(gt.nn.binary_cross_entropy_with_logits(pred, gt.zeros(4096, dtype=np.float16)))
    np.testing.assert_allclose(bce, big.astype(np.float64).mean(), rtol=2e-3)
    img = gt.tensor(big.reshape(1, 1, 64, 64))
    np.testing.assert_allclose(gt.nn.avg_pool2d(img, 64).numpy().ravel(),
                               [big.astype(np.float64).mean()], rtol=2e-3)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bce_with_logits_keeps_confident_predictions(dtype):
    """softplus(x) - x t cancels for x >> 0, t = 1; the loss is log1p(exp(-x)) there."""
    x = np.array([10.0, 15.0, 20.0, 40.0, -10.0, -40.0, 0.0], dtype)
    t = np.array([1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 1.0], dtype)
    loss = gt.nn.binary_cross_entropy_with_logits(gt.tensor(x), gt.tensor(t), reduction="none")
    x64 = x.astype(np.float64)
    want = np.log1p(np.exp(-np.abs(x64)))  # each case's exact loss: the prediction is right
    want[-1] = np.log(2.0)
    np.testing.assert_allclose(loss.numpy(), want, rtol=1e-6 if dtype == np.float32 else 1e-14)
    xv = gt.Variable(x)
    tt = np.array([0.3, 1.0, 0.0, 0.5, 1.0, 0.25, 0.5], dtype)  # soft targets; x = 0 included
    with gt.GradientTape() as tape:
        s = gt.nn.binary_cross_entropy_with_logits(xv, gt.tensor(tt), reduction="sum")
    sig = 1.0 / (1.0 + np.exp(-x64))
    np.testing.assert_allclose(tape.gradient(s, xv).numpy(), sig - tt, rtol=1e-6, atol=1e-7)


def test_the_mean_loss_of_an_empty_batch_is_nan():
    assert np.isnan(float(gt.nn.cross_entropy(gt.zeros((0, 3)), gt.tensor(np.zeros(0, np.int64)))))
    assert np.isnan(float(gt.nn.mse(gt.zeros((0, 2)), gt.zeros((0, 2)))))
    assert float(gt.nn.mse(gt.zeros((0, 2)), gt.zeros((0, 2)), reduction="sum")) == 0.0


def test_layer_norm_argument_errors():
    with pytest.raises(ValueError, match=r"layer_norm: x must have at least one axis"):
        gt.nn.layer_norm(gt.tensor(1.0))
    with pytest.raises(ValueError, match=r"layer_norm: gamma of shape \(3, 4\) must broadcast "
                                         r"against the normalized axes \(2,\)"):
        gt.nn.layer_norm(gt.ones((2, 3, 4)), gamma=gt.ones((3, 4)))
    assert gt.nn.layer_norm(gt.ones((2, 3, 4)), gamma=gt.ones((3, 4)), axis=(1, 2)).shape == (2, 3, 4)
    assert gt.nn.layer_norm(gt.ones((2, 3, 4)), gamma=gt.ones((1, 1, 4))).shape == (2, 3, 4)


def test_dilation_errors_give_the_dilated_extent():
    with pytest.raises(ValueError, match=r"smaller than the dilated kernel \(7, 7\) \(kernel "
                                         r"\(3, 3\), dilation \(3, 3\)"):
        gt.nn.conv2d(gt.zeros((1, 1, 5, 5)), gt.zeros((1, 1, 3, 3)), dilation=3)
    with pytest.raises(ValueError, match=r"shorter than the dilated kernel 7 \(kernel 3, "
                                         r"dilation 3"):
        gt.nn.conv1d(gt.zeros((1, 1, 5)), gt.zeros((1, 1, 3)), dilation=3)


@pytest.mark.parametrize("make, message", [
    (lambda: gt.nn.Conv2D(1, 1, 3, stride=0), r"Conv2D: stride must be >= 1"),
    (lambda: gt.nn.Conv2D(1, 1, 3, padding="full"), r"Conv2D: padding must be .* got 'full'"),
    (lambda: gt.nn.Conv2D(1, 1, 3, dilation=0), r"Conv2D: dilation must be >= 1"),
    (lambda: gt.nn.Conv1D(1, 1, 3, stride=0), r"Conv1D: stride must be >= 1"),
    (lambda: gt.nn.Conv1D(1, 1, 3, padding="full"), r"Conv1D: padding must be"),
    (lambda: gt.nn.Conv2DTranspose(1, 1, 3, stride=2, output_padding=2),
     r"Conv2DTranspose: output_padding \(2, 2\) must be smaller than the stride \(2, 2\)"),
    (lambda: gt.nn.Conv2DTranspose(1, 1, 3, padding="same"), r"Conv2DTranspose: padding must be"),
    (lambda: gt.nn.MaxPool2D(0), r"MaxPool2D: kernel_size must be >= 1"),
    (lambda: gt.nn.MaxPool2D(2, padding=2), r"MaxPool2D: padding 2 must be at most half"),
    (lambda: gt.nn.AvgPool2D(3, stride=0), r"AvgPool2D: stride must be >= 1"),
    (lambda: gt.nn.Dropout(1.5), r"Dropout: rate must be in \[0, 1\), got 1.5"),
])
def test_layers_check_their_settings_when_made(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_layers_with_valid_settings_are_made():
    gt.nn.Conv2D(1, 1, 3, padding="same", stride=2)
    gt.nn.Conv1D(1, 1, 3, padding="same", stride=2)
    gt.nn.MaxPool2D(2, padding="same")
    gt.nn.MaxPool2D(3, stride=1, padding=1)
    gt.nn.Conv2DTranspose(1, 1, 3, stride=2, output_padding=1)
    gt.nn.Dropout(0.0)


def test_an_array_operand_is_copied_as_gt_tensor_copies():
    """The tape keeps an op's operands for the backward: a NumPy array the caller writes into
    after the op (a reused batch buffer) must not change the gradient."""
    with gt.use_backend("numpy"):
        x = np.array([[1.0, 2.0], [3.0, 4.0]])
        w = gt.Variable(np.ones((2, 1)))
        with gt.GradientTape() as tape:
            loss = gt.sum(gt.matmul(x, w)) + gt.sum(gt.tensor([1.0, 1.0]) * x[0])
        x[...] = 0.0
        np.testing.assert_array_equal(tape.gradient(loss, w).numpy().ravel(), [4.0, 6.0])


def test_batch_norm_refuses_integer_running_statistics_in_training():
    # int64 running statistics were updated by truncation: they never moved
    x = gt.tensor(np.arange(12.0).reshape(4, 3))
    rm = gt.Variable(np.zeros(3, np.int64))
    rv = gt.Variable(np.ones(3, np.int64))
    with pytest.raises(TypeError, match="batch_norm: running_mean must be a float Variable to be "
                                        "updated in training, got dtype int64"):
        gt.nn.batch_norm(x, rm, rv, training=True)
    np.testing.assert_array_equal(rm.numpy(), [0, 0, 0])


def test_binary_cross_entropy_refuses_targets_outside_zero_one():
    # -1/+1 labels gave a finite (here positive, possibly negative) loss and a wrong gradient
    p = gt.Variable([0.9, 0.2])
    with pytest.raises(ValueError, match=r"binary_cross_entropy: targets must be in \[0, 1\], got "
                                         r"values in \[-1, 1\]"):
        gt.nn.binary_cross_entropy(p, gt.tensor([-1.0, 1.0]))
    for t in ([0.0, 1.0], [0.25, 1.0], [0, 1]):
        gt.nn.binary_cross_entropy(p, gt.tensor(t) if isinstance(t[0], float) else t)


_IMG = np.random.default_rng(0).random((1, 4, 6, 6))
_K = np.random.default_rng(1).random((4, 4, 3, 3))
_KG = np.random.default_rng(2).random((4, 2, 3, 3))
_SIG = np.random.default_rng(3).random((1, 4, 6))
_K1 = np.random.default_rng(4).random((4, 4, 3))


@pytest.mark.parametrize("call, message", [
    (lambda: gt.nn.conv2d(_IMG, _K, stride=(1.5, 2)), "conv2d: stride"),
    (lambda: gt.nn.conv2d(_IMG, _K, padding=(1.7, 0)), "conv2d: padding"),
    (lambda: gt.nn.conv2d(_IMG, _K, padding=((0.9, 1), (0, 0))), "conv2d: padding"),
    (lambda: gt.nn.conv2d(_IMG, _K, dilation=(2.5, 1)), "conv2d: dilation"),
    (lambda: gt.nn.conv2d(_IMG, _KG, groups=2.9), "conv2d: groups"),
    (lambda: gt.nn.conv2d(_IMG, _K, stride=(True, 1)), "conv2d: stride"),
    (lambda: gt.nn.conv1d(_SIG, _K1, padding=(1.5, 0)), "conv1d: padding"),
    (lambda: gt.nn.conv1d(_SIG, _K1, padding=1.5), "conv1d: padding"),
    (lambda: gt.nn.max_pool2d(_IMG, (2.5, 2)), "max_pool2d: kernel_size"),
    (lambda: gt.nn.avg_pool2d(_IMG, 2, stride=(1.0, 2)), "avg_pool2d: stride"),
    (lambda: gt.nn.adaptive_avg_pool2d(_IMG, (1.9, 1)), "adaptive_avg_pool2d: output_size"),
    (lambda: gt.nn.conv_transpose2d(_IMG, _K, stride=(2.0, 1)), "conv_transpose2d: stride"),
])
def test_geometry_arguments_refuse_floats_and_bools_inside_pairs(call, message):
    # a float inside a pair used to be truncated (stride (1.5, 2) ran as (1, 2), groups 2.9 as
    # 2) while a scalar float was refused: the geometry changed silently
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        call()


def test_geometry_arguments_take_numpy_integers_and_lists():
    x, k, kg = gt.tensor(_IMG), gt.tensor(_K), gt.tensor(_KG)
    out = gt.nn.conv2d(x, k, stride=(np.int64(1), 2), padding=((0, 1), (np.int32(1), 0)))
    assert out.shape == (1, 4, 5, 3)
    assert gt.nn.conv1d(gt.tensor(_SIG), gt.tensor(_K1), padding=[1, 0]).shape == (1, 4, 5)
    assert gt.nn.conv2d(x, kg, groups=np.int64(2)).shape == (1, 4, 4, 4)
    assert gt.nn.max_pool2d(x, [2, 2]).shape == (1, 4, 3, 3)
    # integer arrays and 0-d integer tensors, as before (only floats and bools are refused)
    assert gt.nn.conv2d(x, k, stride=np.array([1, 2])).shape == (1, 4, 4, 2)
    assert gt.nn.conv2d(x, k, stride=(np.array(1), gt.tensor(2))).shape == (1, 4, 4, 2)
    assert gt.nn.conv2d(x, kg, groups=gt.tensor(2)).shape == (1, 4, 4, 4)
    assert gt.nn.adaptive_avg_pool2d(x, np.array([2, 3])).shape == (1, 4, 2, 3)
    with pytest.raises(ValueError, match="stride"):
        gt.nn.conv2d(x, k, stride=np.array([1.5, 2.0]))


def test_conv1d_padding_of_three_entries_names_every_accepted_form():
    with pytest.raises(ValueError, match=r"a pair \(left, right\) of ints, 'valid' or 'same'"):
        gt.nn.conv1d(gt.tensor(_SIG), gt.tensor(_K1), padding=(1, 2, 3))
