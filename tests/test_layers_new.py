"""Layers added to gt.nn: conv1d / Conv1D, conv_transpose2d / Conv2DTranspose,
adaptive_avg_pool2d / GlobalAveragePooling2D, batch_norm / BatchNorm, LayerNorm over several
trailing axes, Flatten(start_axis, end_axis), Embedding's initializer, and the recursive
train()/eval() modes. Forward values against NumPy loop references, gradients with
``check_grads``, running statistics, checkpoints, shapes and errors."""

from __future__ import annotations

import os

import numpy as np
import pytest

import gradtape as gt
from gradtape.testing import check_grads


# --------------------------------------------------------------------------- references
def ref_conv1d(x, w, b=None, stride=1, pad=(0, 0), dilation=1, groups=1):
    N, C, L = x.shape
    n_out, Cg, k = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), pad))
    OL = (xp.shape[2] - dilation * (k - 1) - 1) // stride + 1
    out = np.zeros((N, n_out, OL))
    Og = n_out // groups
    for o in range(n_out):
        g = o // Og
        for t in range(OL):
            for c in range(Cg):
                for j in range(k):
                    out[:, o, t] += w[o, c, j] * xp[:, g * Cg + c, t * stride + j * dilation]
    return out if b is None else out + b[None, :, None]


def ref_conv_transpose2d(x, w, b=None, stride=(1, 1), pad=(0, 0), output_padding=(0, 0),
                         groups=1, dilation=(1, 1)):
    """Scatter every input pixel times the kernel into the full output, then crop."""
    N, C, H, W = x.shape
    _, Og, kh, kw = w.shape
    OH = (H - 1) * stride[0] - 2 * pad[0] + dilation[0] * (kh - 1) + output_padding[0] + 1
    OW = (W - 1) * stride[1] - 2 * pad[1] + dilation[1] * (kw - 1) + output_padding[1] + 1
    full = np.zeros((N, Og * groups, OH + 2 * pad[0] + kh * dilation[0], OW + 2 * pad[1] + kw * dilation[1]))
    Cg = C // groups
    for c in range(C):
        g = c // Cg
        for h in range(H):
            for v in range(W):
                for i in range(kh):
                    for j in range(kw):
                        full[:, g * Og:(g + 1) * Og, h * stride[0] + i * dilation[0],
                             v * stride[1] + j * dilation[1]] += x[:, c, h, v, None] * w[c, :, i, j]
    out = full[:, :, pad[0]:pad[0] + OH, pad[1]:pad[1] + OW]
    return out if b is None else out + b[None, :, None, None]


def ref_batch_norm(x, axis, eps, gamma=None, beta=None, mean=None, var=None):
    axes = tuple(i for i in range(x.ndim) if i != axis % x.ndim)
    shape = [1] * x.ndim
    shape[axis] = x.shape[axis]
    if mean is None:
        mean, var = x.mean(axis=axes), x.var(axis=axes)
    y = (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps)
    if gamma is not None:
        y = y * gamma.reshape(shape)
    if beta is not None:
        y = y + beta.reshape(shape)
    return y


# --------------------------------------------------------------------------- conv1d
@pytest.mark.parametrize("stride, padding, pad, dilation, groups", [
    (1, 0, (0, 0), 1, 1),
    (2, 1, (1, 1), 1, 1),
    (1, "same", (2, 2), 2, 2),
    (3, (2, 0), (2, 0), 1, 2),
    (1, "valid", (0, 0), 1, 4),
])
def test_conv1d_matches_loop_reference(stride, padding, pad, dilation, groups, rng):
    x = rng.normal(size=(2, 4, 9))
    w = rng.normal(size=(4, 4 // groups, 3))
    b = rng.normal(size=4)
    y = gt.nn.conv1d(x, w, b, stride=stride, padding=padding, dilation=dilation, groups=groups)
    expected = ref_conv1d(x, w, b, stride, pad, dilation, groups)
    assert y.shape == expected.shape and y.dtype == np.float64
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-12, atol=1e-12)


def test_conv1d_gradients(rng):
    check_grads(gt.nn.conv1d, (rng.normal(size=(2, 4, 7)), rng.normal(size=(4, 2, 3)),
                               rng.normal(size=4)),
                {"stride": 2, "padding": 1, "dilation": 1, "groups": 2})


def test_conv1d_errors():
    x = gt.tensor(np.zeros((2, 3, 8), np.float32))
    with pytest.raises(ValueError, match=r"conv1d: x must be a 3-D NCL"):
        gt.nn.conv1d(gt.tensor(np.zeros((3, 8), np.float32)), np.zeros((2, 3, 3), np.float32))
    with pytest.raises(ValueError, match=r"conv1d: w must be 3-D"):
        gt.nn.conv1d(x, np.zeros((2, 3, 3, 1), np.float32))
    with pytest.raises(ValueError, match=r"expects 4 input channels.*has 3"):
        gt.nn.conv1d(x, np.zeros((2, 4, 3), np.float32))
    with pytest.raises(ValueError, match=r"NLC input"):  # channels-last mix-up: a hint
        gt.nn.conv1d(gt.tensor(np.zeros((2, 8, 3), np.float32)), np.zeros((2, 3, 3), np.float32))
    with pytest.raises(ValueError, match=r"shorter than the dilated kernel"):
        gt.nn.conv1d(x, np.zeros((2, 3, 5), np.float32), dilation=2)
    with pytest.raises(ValueError, match=r"bias must have shape \(2,\)"):
        gt.nn.conv1d(x, np.zeros((2, 3, 3), np.float32), np.zeros(3, np.float32))
    with pytest.raises(ValueError, match=r"stride must be >= 1"):
        gt.nn.conv1d(x, np.zeros((2, 3, 3), np.float32), stride=0)
    with pytest.raises(ValueError, match=r"padding must be"):
        gt.nn.conv1d(x, np.zeros((2, 3, 3), np.float32), padding="full")
    with pytest.raises(TypeError, match=r"float tensor"):
        gt.nn.conv1d(np.zeros((2, 3, 8), np.int64), np.zeros((2, 3, 3), np.float32))


def test_conv1d_layer():
    conv = gt.nn.Conv1D(4, 6, 3, padding="same", groups=2, activation="relu", seed=0)
    assert conv.kernel.shape == (6, 2, 3) and conv.bias.shape == (6,)
    x = gt.tensor(np.random.default_rng(1).normal(size=(2, 4, 10)).astype(np.float32))
    y = conv(x)
    assert y.shape == (2, 6, 10) and y.dtype == np.float32 and float(gt.min(y)) >= 0.0
    expected = np.maximum(ref_conv1d(x.numpy().astype(np.float64), conv.kernel.numpy().astype(np.float64),
                                     conv.bias.numpy(), 1, (1, 1), 1, 2), 0)
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(gt.nn.Conv1D(4, 6, 3, groups=2, seed=0).kernel.numpy(), conv.kernel.numpy())
    assert gt.nn.Conv1D(4, 6, 3, use_bias=False).bias is None
    assert repr(conv) == "Conv1D(4, 6, 3)"
    with pytest.raises(ValueError, match=r"Conv1D: groups=4 must divide"):
        gt.nn.Conv1D(6, 6, 3, groups=4)
    with pytest.raises(ValueError, match=r"Conv1D: kernel_size must be a positive int"):
        gt.nn.Conv1D(4, 6, 0)


# --------------------------------------------------------------------------- conv_transpose2d
GEOMETRIES = [  # stride, padding, output_padding, groups, dilation
    ((1, 1), (0, 0), (0, 0), 1, (1, 1)),
    ((2, 2), (1, 1), (1, 1), 1, (1, 1)),
    ((2, 3), (1, 0), (1, 2), 2, (2, 1)),
    ((2, 2), (0, 0), (0, 0), 1, (1, 1)),   # kernel 2 = stride 2: the tiling fast path
    ((3, 1), (2, 1), (0, 0), 4, (1, 2)),
]


@pytest.mark.parametrize("stride, pad, op, groups, dilation", GEOMETRIES)
def test_conv_transpose2d_matches_loop_reference_and_is_conv2d_adjoint(stride, pad, op, groups,
                                                                         dilation, rng):
    kh, kw = (2, 2) if stride == (2, 2) and pad == (0, 0) else (3, 2)
    x = rng.normal(size=(2, 4, 3, 4))
    w = rng.normal(size=(4, 8 // groups, kh, kw))
    b = rng.normal(size=8)
    y = gt.nn.conv_transpose2d(x, w, b, stride=stride, padding=pad, output_padding=op,
                               groups=groups, dilation=dilation)
    expected = ref_conv_transpose2d(x, w, b, stride, pad, op, groups, dilation)
    assert y.shape == expected.shape and y.dtype == np.float64
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-12, atol=1e-12)
    # <conv2d(z, w), x> == <z, conv_transpose2d(x, w)>: conv2d reads w as OIHW, O = C_in
    z = rng.normal(size=expected.shape)
    cz = gt.nn.conv2d(z, w, stride=stride, padding=pad, dilation=dilation, groups=groups)
    assert cz.shape == x.shape
    nobias = gt.nn.conv_transpose2d(x, w, stride=stride, padding=pad, output_padding=op,
                                    groups=groups, dilation=dilation)
    assert np.isclose(np.sum(cz.numpy() * x), np.sum(z * nobias.numpy()), rtol=1e-12)


@pytest.mark.parametrize("stride, pad, op, groups, dilation", GEOMETRIES[1:3])
def test_conv_transpose2d_gradients(stride, pad, op, groups, dilation, rng):
    check_grads(gt.nn.conv_transpose2d,
                (rng.normal(size=(2, 4, 3, 3)), rng.normal(size=(4, 6 // groups, 3, 2)),
                 rng.normal(size=6)),
                {"stride": stride, "padding": pad, "output_padding": op, "groups": groups,
                 "dilation": dilation})


def test_conv_transpose2d_vmap_and_jvp(rng):
    x = rng.normal(size=(3, 2, 4, 4))
    w = rng.normal(size=(2, 3, 3, 3))

    def f(xi):
        return gt.nn.conv_transpose2d(gt.expand_dims(xi, 0), w, stride=2, padding=1)[0]

    batched = gt.vmap(f)(x)
    looped = np.stack([f(gt.tensor(xi)).numpy() for xi in x])
    np.testing.assert_allclose(batched.numpy(), looped, rtol=1e-12, atol=1e-12)
    t = rng.normal(size=x.shape)
    _, tangent = gt.jvp(lambda a: gt.nn.conv_transpose2d(a, w, stride=2, padding=1), (x,), (t,))
    # linear in x: the tangent is the map applied to t
    np.testing.assert_allclose(tangent.numpy(), gt.nn.conv_transpose2d(t, w, stride=2, padding=1).numpy(),
                               rtol=1e-12, atol=1e-12)


def test_conv_transpose2d_errors():
    x = gt.tensor(np.zeros((1, 3, 4, 4), np.float32))
    w = np.zeros((3, 2, 3, 3), np.float32)
    with pytest.raises(ValueError, match=r"conv_transpose2d: x must be a 4-D NCHW"):
        gt.nn.conv_transpose2d(np.zeros((3, 4, 4), np.float32), w)
    with pytest.raises(ValueError, match=r"conv_transpose2d: w must be 4-D"):
        gt.nn.conv_transpose2d(x, np.zeros((3, 2, 3), np.float32))
    with pytest.raises(ValueError, match=r"expects 5 input channels.*has 3"):
        gt.nn.conv_transpose2d(x, np.zeros((5, 2, 3, 3), np.float32))
    with pytest.raises(ValueError, match=r"output_padding \(2, 2\) must be smaller than the stride"):
        gt.nn.conv_transpose2d(x, w, stride=2, output_padding=2)
    with pytest.raises(ValueError, match=r"padding must be an int, a pair"):
        gt.nn.conv_transpose2d(x, w, padding="same")
    with pytest.raises(ValueError, match=r"leaves an empty output"):
        gt.nn.conv_transpose2d(gt.tensor(np.zeros((1, 3, 1, 1), np.float32)), w, padding=2)
    with pytest.raises(ValueError, match=r"groups=2 must divide the input channels \(3\)"):
        gt.nn.conv_transpose2d(x, w, groups=2)
    with pytest.raises(ValueError, match=r"bias must have shape \(2,\)"):
        gt.nn.conv_transpose2d(x, w, np.zeros(3, np.float32))


def test_conv2d_transpose_layer_upsamples(backend):
    up = gt.nn.Conv2DTranspose(3, 4, 4, stride=2, padding=1, seed=0)
    assert up.kernel.shape == (3, 4, 4, 4) and up.bias.shape == (4,)
    x = np.random.default_rng(2).normal(size=(2, 3, 5, 6)).astype(np.float32)
    y = up(gt.tensor(x))
    assert y.shape == (2, 4, 10, 12) and y.dtype == np.float32 and y.backend == backend
    expected = ref_conv_transpose2d(x.astype(np.float64), up.kernel.numpy().astype(np.float64),
                                    up.bias.numpy(), (2, 2), (1, 1))
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-5, atol=1e-5)
    grouped = gt.nn.Conv2DTranspose(4, 6, (3, 2), groups=2, output_padding=1, stride=2, seed=0)
    assert grouped.kernel.shape == (4, 3, 3, 2)
    assert grouped(gt.tensor(np.zeros((1, 4, 3, 3), np.float32))).shape == (1, 6, 8, 7)
    assert repr(grouped) == "Conv2DTranspose(4, 6, (3, 2))"
    with pytest.raises(ValueError, match=r"Conv2DTranspose: groups=4 must divide"):
        gt.nn.Conv2DTranspose(4, 6, 3, groups=4)


def test_conv2d_transpose_layer_trains():
    rng = np.random.default_rng(0)
    model = gt.nn.Sequential([gt.nn.Conv2D(1, 4, 3, stride=2, padding=1, activation="tanh", seed=0),
                              gt.nn.Conv2DTranspose(4, 1, 3, stride=2, padding=1, output_padding=1,
                                                    seed=1)])
    x = gt.tensor(rng.normal(size=(8, 1, 6, 6)).astype(np.float32))
    opt = gt.optimizers.Adam(0.02)
    losses = []
    for _ in range(15):
        with gt.GradientTape() as tape:
            loss = gt.nn.mse(model(x), x)
        grads = tape.gradient(loss, model.trainable_variables)
        assert all(g is not None for g in grads)
        opt.apply_gradients(zip(grads, model.trainable_variables))
        losses.append(float(loss))
    assert losses[-1] < 0.8 * losses[0]


# --------------------------------------------------------------------------- pooling
@pytest.mark.parametrize("size, window", [(1, (4, 6)), ((2, 3), (2, 2)), (2, (2, 3)), ((4, 6), (1, 1))])
def test_adaptive_avg_pool2d(size, window, rng):
    x = rng.normal(size=(2, 3, 4, 6))
    y = gt.nn.adaptive_avg_pool2d(x, size)
    kh, kw = window
    expected = x.reshape(2, 3, 4 // kh, kh, 6 // kw, kw).mean(axis=(3, 5))
    assert y.shape == expected.shape
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-12)
    check_grads(gt.nn.adaptive_avg_pool2d, (x,), {"output_size": size})


def test_adaptive_avg_pool2d_errors():
    x = gt.tensor(np.zeros((1, 2, 4, 6), np.float32))
    with pytest.raises(ValueError, match=r"output_size \(3, 3\) must divide the input's spatial size \(4, 6\)"):
        gt.nn.adaptive_avg_pool2d(x, 3)
    with pytest.raises(ValueError, match=r"output_size \(8, 6\) must divide"):
        gt.nn.adaptive_avg_pool2d(x, (8, 6))
    with pytest.raises(ValueError, match=r"output_size must be >= 1"):
        gt.nn.adaptive_avg_pool2d(x, 0)
    with pytest.raises(ValueError, match=r"adaptive_avg_pool2d: x must be a 4-D NCHW"):
        gt.nn.adaptive_avg_pool2d(gt.tensor(np.zeros((2, 4, 6), np.float32)), 1)


def test_global_average_pooling(rng):
    x = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
    y = gt.nn.GlobalAveragePooling2D()(x)
    assert y.shape == (2, 3) and y.dtype == np.float32
    np.testing.assert_allclose(y.numpy(), x.mean(axis=(2, 3)), rtol=1e-5)
    assert gt.nn.GlobalAveragePooling2D(keepdims=True)(x).shape == (2, 3, 1, 1)
    with pytest.raises(ValueError, match=r"^GlobalAveragePooling2D: x must be a 4-D NCHW"):
        gt.nn.GlobalAveragePooling2D()(np.zeros((2, 3, 4), np.float32))
    with pytest.raises(TypeError, match=r"^GlobalAveragePooling2D: x must be a float tensor, got "
                                        r"dtype int32"):
        gt.nn.GlobalAveragePooling2D()(np.zeros((2, 3, 4, 4), np.int32))


# --------------------------------------------------------------------------- flatten
def test_flatten_axes():
    x = gt.tensor(np.arange(120.0).reshape(2, 3, 4, 5))
    assert gt.nn.Flatten()(x).shape == (2, 60)
    assert gt.nn.Flatten(0)(x).shape == (120,)
    assert gt.nn.Flatten(2)(x).shape == (2, 3, 20)
    assert gt.nn.Flatten(1, 2)(x).shape == (2, 12, 5)
    assert gt.nn.Flatten(-2, -1)(x).shape == (2, 3, 20)
    np.testing.assert_array_equal(gt.nn.Flatten(1, 2)(x).numpy(), x.numpy().reshape(2, 12, 5))
    assert gt.nn.Flatten()(np.zeros((0, 3, 4))).shape == (0, 12)  # an empty batch is fine
    with pytest.raises(ValueError, match=r"Flatten: start_axis=1, end_axis=-1 do not select.*rank 1"):
        gt.nn.Flatten()(np.zeros(3))
    with pytest.raises(ValueError, match=r"start_axis=3, end_axis=1"):
        gt.nn.Flatten(3, 1)(x)
    with pytest.raises(TypeError, match=r"Flatten: start_axis must be an int"):
        gt.nn.Flatten(1.5)


# --------------------------------------------------------------------------- layer norm
def test_layer_norm_module_over_trailing_axes(rng):
    x = rng.normal(size=(3, 2, 4, 5)).astype(np.float32)
    ln = gt.nn.LayerNorm((4, 5), eps=1e-3)
    assert ln.gamma.shape == (4, 5) and ln.beta.shape == (4, 5)
    ln.gamma.assign(rng.normal(size=(4, 5)))
    ln.beta.assign(rng.normal(size=(4, 5)))
    mu = x.mean(axis=(2, 3), keepdims=True)
    var = x.var(axis=(2, 3), keepdims=True)
    expected = (x - mu) / np.sqrt(var + 1e-3) * ln.gamma.numpy() + ln.beta.numpy()
    np.testing.assert_allclose(ln(x).numpy(), expected, rtol=1e-4, atol=1e-5)
    plain = gt.nn.LayerNorm(5, elementwise_affine=False)
    assert plain.variables == [] and plain.gamma is None
    np.testing.assert_allclose(plain(x).numpy(), gt.nn.layer_norm(x).numpy(), rtol=1e-6)
    assert [n for n, _ in gt.nn.LayerNorm(5).named_variables()] == ["gamma", "beta"]
    with gt.GradientTape() as tape:
        loss = gt.sum(ln(x) ** 3)
    assert all(g is not None and g.shape == (4, 5) for g in tape.gradient(loss, [ln.gamma, ln.beta]))
    with pytest.raises(ValueError, match=r"LayerNorm: expected input \[\.\.\., 4, 5\].*got shape \(3, 2, 5, 4\)"):
        ln(np.zeros((3, 2, 5, 4), np.float32))
    with pytest.raises(ValueError, match=r"LayerNorm: eps must be a positive number"):
        gt.nn.LayerNorm(4, eps=0)
    with pytest.raises(ValueError, match=r"LayerNorm: normalized_shape must be a positive int"):
        gt.nn.LayerNorm((4, 0))


# --------------------------------------------------------------------------- batch norm
@pytest.mark.parametrize("shape, axis", [((6, 3), 1), ((4, 3, 5), 1), ((2, 3, 4, 5), 1),
                                         ((2, 4, 5, 3), -1)])
def test_batch_norm_train_forward_and_running_stats(shape, axis, backend):
    rng = np.random.default_rng(3)
    bn = gt.nn.BatchNorm(3, axis=axis, momentum=0.25, eps=1e-3, dtype=np.float64)
    bn.gamma.assign(rng.normal(size=3))
    bn.beta.assign(rng.normal(size=3))
    axes = tuple(i for i in range(len(shape)) if i != axis % len(shape))
    n = int(np.prod([shape[i] for i in axes]))
    mean, var = np.zeros(3), np.ones(3)
    for step in range(3):
        x = rng.normal(loc=step, scale=2.0, size=shape)
        y = bn(gt.tensor(x))
        assert y.backend == backend and y.dtype == np.float64
        np.testing.assert_allclose(y.numpy(), ref_batch_norm(x, axis, 1e-3, bn.gamma.numpy(), bn.beta.numpy()),
                                   rtol=1e-10, atol=1e-12)
        mean = 0.75 * mean + 0.25 * x.mean(axis=axes)
        var = 0.75 * var + 0.25 * x.var(axis=axes) * n / (n - 1)  # unbiased, as PyTorch
        np.testing.assert_allclose(bn.running_mean.numpy(), mean, rtol=1e-12)
        np.testing.assert_allclose(bn.running_var.numpy(), var, rtol=1e-12)
    bn.eval()
    before = bn.running_mean.numpy()
    x = rng.normal(size=shape)
    want = ref_batch_norm(x, axis, 1e-3, bn.gamma.numpy(), bn.beta.numpy(), mean, var)
    np.testing.assert_allclose(bn(gt.tensor(x)).numpy(), want, rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(bn.running_mean.numpy(), before)  # eval leaves them alone


def test_batch_norm_running_stats_are_unrecorded_non_trainable_state():
    bn = gt.nn.BatchNorm(2)
    assert [n for n, _ in bn.named_variables()] == ["gamma", "beta", "running_mean", "running_var"]
    assert bn.trainable_variables == [bn.gamma, bn.beta]
    assert bn.non_trainable_variables == [bn.running_mean, bn.running_var]
    assert bn.num_parameters() == 4
    x = gt.tensor(np.random.default_rng(0).normal(size=(5, 2)).astype(np.float32))
    with gt.GradientTape(persistent=True) as tape:
        loss = gt.sum(bn(x) * gt.tensor([1.0, 2.0]))
    assert set(map(id, tape.watched_variables())) == {id(bn.gamma), id(bn.beta)}
    g_mean, g_var, g_gamma = tape.gradient(loss, [bn.running_mean, bn.running_var, bn.gamma])
    assert g_mean is None and g_var is None and g_gamma is not None
    # momentum 0 keeps the running statistics, 1 replaces them by the batch's
    frozen = gt.nn.BatchNorm(2, momentum=0.0)
    frozen(x)
    np.testing.assert_array_equal(frozen.running_mean.numpy(), [0, 0])
    full = gt.nn.BatchNorm(2, momentum=1)
    full(x)
    np.testing.assert_allclose(full.running_mean.numpy(), x.numpy().mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(full.running_var.numpy(), x.numpy().var(axis=0, ddof=1), rtol=1e-5)


def test_batch_norm_gradients(rng):
    x = rng.normal(size=(3, 2, 2, 3))
    gamma, beta = rng.normal(size=2), rng.normal(size=2)

    def train_mode(x, gamma, beta):
        return gt.nn.batch_norm(x, None, None, gamma, beta, training=True, eps=1e-3)

    def eval_mode(x, gamma, beta, mean, var):
        return gt.nn.batch_norm(x, mean, var, gamma, beta, training=False, eps=1e-3)

    check_grads(train_mode, (x, gamma, beta))
    check_grads(eval_mode, (x, gamma, beta, rng.normal(size=2), rng.uniform(0.5, 2.0, size=2)))
    check_grads(lambda x: gt.nn.batch_norm(x, training=True, axis=-1), (rng.normal(size=(4, 3)),))


def test_batch_norm_errors():
    bn = gt.nn.BatchNorm(3)
    with pytest.raises(ValueError, match=r"BatchNorm: expected input \[N, 3, \.\.\.\] \(rank >= 2\)"):
        bn(np.zeros(3, np.float32))
    with pytest.raises(ValueError, match=r"BatchNorm: expected 3 channels on axis 1, x of shape \(2, 4\) has 4"):
        bn(np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match=r"axis=-1"):  # channels-last input: a hint
        bn(np.zeros((2, 5, 5, 3), np.float32))
    with pytest.raises(ValueError, match=r"more than one value per channel"):
        bn(np.zeros((1, 3), np.float32))
    bn.eval()(np.zeros((1, 3), np.float32))  # fine in eval
    with pytest.raises(ValueError, match=r"BatchNorm: momentum must be a number in \[0, 1\]"):
        gt.nn.BatchNorm(3, momentum=1.5)
    with pytest.raises(ValueError, match=r"BatchNorm: eps must be a positive number"):
        gt.nn.BatchNorm(3, eps=-1.0)
    with pytest.raises(ValueError, match=r"BatchNorm: num_features must be a positive int"):
        gt.nn.BatchNorm(0)
    x = np.ones((4, 3), np.float32)
    with pytest.raises(ValueError, match=r"batch_norm: eval \(training=False\) normalizes with running_mean"):
        gt.nn.batch_norm(x)
    with pytest.raises(ValueError, match=r"batch_norm: gamma must have shape \(3,\).*got \(2,\)"):
        gt.nn.batch_norm(x, gamma=np.ones(2, np.float32), training=True)
    rv = gt.Variable(np.ones(3, np.float32), trainable=False)
    with pytest.raises(TypeError, match=r"batch_norm: running_mean must be a gt.Variable"):
        gt.nn.batch_norm(x, np.zeros(3, np.float32), rv, training=True)
    np.testing.assert_array_equal(rv.numpy(), np.ones(3))  # checked before anything changed
    with pytest.raises(ValueError, match=r"batch_norm: x must have a batch axis and a channel axis"):
        gt.nn.batch_norm(np.ones(3, np.float32), training=True)


# --------------------------------------------------------------------------- train / eval
class Net(gt.nn.Module):
    def __init__(self):
        self.blocks = {"a": gt.nn.Sequential([gt.nn.Conv2D(1, 4, 3, padding=1, seed=0),
                                              gt.nn.BatchNorm(4), gt.relu, gt.nn.Dropout(0.5, seed=0)])}
        self.pool = [gt.nn.GlobalAveragePooling2D()]
        self.head = gt.nn.Dense(4, 2, seed=1)

    def forward(self, x):
        return self.head(self.pool[0](self.blocks["a"](x)))


def test_train_eval_reach_every_nested_module():
    net = Net()
    mods = [net, *net.submodules()]
    assert len(mods) == 7 and all(m.training for m in mods)
    assert net.eval() is net and not any(m.training for m in mods)
    x = np.random.default_rng(0).normal(size=(2, 1, 5, 5)).astype(np.float32)
    np.testing.assert_array_equal(net(x).numpy(), net(x).numpy())  # eval: deterministic
    assert net.train() is net and all(m.training for m in mods)
    net.train(False)
    assert not any(m.training for m in mods)
    assert "training" not in [n for n, _ in net.named_variables()]


def test_checkpoint_restores_batch_norm_running_statistics(tmp_path):
    rng = np.random.default_rng(0)
    net = Net()
    opt = gt.optimizers.SGD(0.1)
    for _ in range(3):
        x = gt.tensor(rng.normal(loc=1.0, size=(4, 1, 5, 5)).astype(np.float32))
        with gt.GradientTape() as tape:
            loss = gt.nn.cross_entropy(net(x), [0, 1, 0, 1])
        grads = tape.gradient(loss, net.trainable_variables)
        opt.apply_gradients(zip(grads, net.trainable_variables))
    bn = net.blocks["a"][1]
    assert not np.allclose(bn.running_mean.numpy(), 0)
    names = [n for n, _ in net.named_variables()]
    assert "blocks.a.layers.1.running_mean" in names and "blocks.a.layers.1.running_var" in names
    path = net.save(os.fspath(tmp_path / "bn.npz"), opt)
    with np.load(path) as stored:
        assert "var/blocks.a.layers.1.running_var" in stored.files

    other = Net()
    other.head = gt.nn.Dense(4, 2, seed=5)
    other.load(path, gt.optimizers.SGD(0.1))
    obn = other.blocks["a"][1]
    np.testing.assert_array_equal(obn.running_mean.numpy(), bn.running_mean.numpy())
    np.testing.assert_array_equal(obn.running_var.numpy(), bn.running_var.numpy())
    assert not obn.running_var.trainable
    x = rng.normal(size=(3, 1, 5, 5)).astype(np.float32)
    np.testing.assert_array_equal(other.eval()(x).numpy(), net.eval()(x).numpy())

    # running statistics are validated like any Variable: wrong shape, missing entries
    plain = gt.nn.Sequential([gt.nn.BatchNorm(4, affine=False)])
    assert [n for n, _ in plain.named_variables()] == ["layers.0.running_mean", "layers.0.running_var"]
    plain(rng.normal(size=(3, 4)).astype(np.float32))
    p1 = plain.save(os.fspath(tmp_path / "plain.npz"))
    wide = gt.nn.Sequential([gt.nn.BatchNorm(5, affine=False)])
    with pytest.raises(ValueError, match=r"'layers.0.running_mean' has shape \(5,\), the checkpoint holds \(4,\)"):
        wide.load(p1)
    np.testing.assert_array_equal(wide[0].running_var.numpy(), np.ones(5))  # nothing changed
    fresh = gt.nn.Sequential([gt.nn.BatchNorm(4, affine=False)]).load(p1)
    np.testing.assert_array_equal(fresh[0].running_var.numpy(), plain[0].running_var.numpy())
    p2 = gt.nn.Sequential([gt.nn.LayerNorm(4)]).save(os.fspath(tmp_path / "ln.npz"))
    with pytest.raises(ValueError, match=r"missing \['layers.0.running_mean', 'layers.0.running_var'\]"):
        plain.load(p2)


# --------------------------------------------------------------------------- embedding
def test_embedding_initializer():
    emb = gt.nn.Embedding(10, 4, seed=0)
    expected = np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32)
    np.testing.assert_array_equal(emb.table.numpy(), expected)  # N(0, 1), seeded
    np.testing.assert_array_equal(gt.nn.Embedding(10, 4, table_init="zeros").table.numpy(), 0)
    np.testing.assert_array_equal(gt.nn.init.normal((10, 4), seed=0, stddev=2.0),
                                  2 * expected)
    y = emb(np.array([[1, 2], [9, 1]]))
    assert y.shape == (2, 2, 4)
    np.testing.assert_array_equal(y.numpy()[1, 1], expected[1])
    with pytest.raises(ValueError, match=r"ids must be in \[0, 10\)"):
        emb([10])


@pytest.mark.parametrize("make, shape", [
    (lambda: gt.nn.Conv2DTranspose(2, 3, 3, stride=2, padding=1, seed=0), (4, 2, 3, 3)),
    (lambda: gt.nn.Conv1D(2, 3, 3, padding=1, seed=0), (4, 2, 6)),
])
def test_per_example_gradients_of_new_conv_layers_match_a_loop(make, shape):
    layer = make()
    x = gt.tensor(np.random.default_rng(0).normal(size=shape))
    params = layer.trainable_variables
    with gt.GradientTape() as tape:
        y = layer(x)
        loss = gt.sum(y * y, axis=tuple(range(1, y.ndim)))
    per_example = tape.per_example_gradients(loss, params)
    for i in range(shape[0]):
        with gt.GradientTape() as tape:
            loss_i = gt.sum(layer(x[i:i + 1]) ** 2)
        for got, want in zip(per_example, tape.gradient(loss_i, params)):
            np.testing.assert_allclose(got.numpy()[i], want.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("make", [
    lambda d: gt.nn.Dense(3, 2, dtype=d),
    lambda d: gt.nn.Conv2D(1, 2, 3, dtype=d),
    lambda d: gt.nn.Conv1D(1, 2, 3, dtype=d),
    lambda d: gt.nn.Conv2DTranspose(1, 2, 3, dtype=d),
    lambda d: gt.nn.LayerNorm(4, dtype=d),
    lambda d: gt.nn.BatchNorm(4, dtype=d),
    lambda d: gt.nn.Embedding(5, 2, dtype=d),
])
def test_layers_take_floating_parameter_dtypes_only(make):
    # an int32 Dense kernel came out of glorot_uniform as all zeros and never trained
    for bad in (np.int32, bool, "uint8", "nope"):
        with pytest.raises(TypeError, match=r"dtype must be a (floating-point dtype \(float16, "
                                            r"float32, float64\)|NumPy dtype)"):
            make(bad)
    for good, want in ((np.float16, np.float16), ("float64", np.float64), (None, np.float32)):
        assert all(v.dtype == want for v in make(good).variables)


@pytest.mark.parametrize("make", [lambda **k: gt.nn.Dense(5, 4, **k), lambda **k: gt.nn.Conv2D(2, 3, 3, **k)])
def test_an_int_seed_draws_a_random_bias_after_the_kernel(make):
    # an int seed is one stream for the layer: the kernel as before, then the bias (two
    # generators seeded alike made the bias a scaled copy of the kernel's first values)
    a = make(seed=4, bias_init="glorot_uniform", dtype=np.float64)
    plain = make(seed=4, dtype=np.float64)
    shared = make(seed=np.random.default_rng(4), bias_init="glorot_uniform", dtype=np.float64)
    np.testing.assert_array_equal(a.kernel.numpy(), plain.kernel.numpy())
    np.testing.assert_array_equal(a.bias.numpy(), shared.bias.numpy())
    k = a.kernel.numpy().ravel()[:a.bias.shape[0]]
    ratio = a.bias.numpy() / k
    assert np.ptp(ratio) > 1e-3  # not one scale factor


def test_a_custom_initializer_gets_the_int_seed_as_given():
    seen = []

    def init(shape, seed=None, dtype=np.float32, kind="dense"):
        seen.append(seed)
        return np.full(shape, float(seed + 1), dtype)  # arithmetic on the seed

    d = gt.nn.Dense(2, 3, kernel_init=init, bias_init=init, seed=4)
    assert seen == [4, 4] and float(d.kernel.numpy()[0, 0]) == 5.0
