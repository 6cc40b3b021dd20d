"""gt.nn ops: values against hand-written NumPy references, gradients with check_grads
(second order), stability, and errors."""

from __future__ import annotations

import numpy as np
import pytest

import gradtape as gt
from gradtape import extend
from gradtape.testing import check_grads


# --------------------------------------------------------------------------- references
def np_log_softmax(x, axis=-1):
    m = x.max(axis=axis, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=axis, keepdims=True))


def np_conv2d(x, w, b=None, stride=(1, 1), padding=((0, 0), (0, 0)), dilation=(1, 1), groups=1):
    """Naive loops over every output position: the definition of cross-correlation."""
    N, C, H, W = x.shape
    n_out, Cg, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), padding[0], padding[1]))
    sh, sw = stride
    dh, dw = dilation
    OH = (xp.shape[2] - dh * (kh - 1) - 1) // sh + 1
    OW = (xp.shape[3] - dw * (kw - 1) - 1) // sw + 1
    Og = n_out // groups
    out = np.zeros((N, n_out, OH, OW))
    for n in range(N):
        for o in range(n_out):
            g = o // Og
            for i in range(OH):
                for j in range(OW):
                    acc = 0.0
                    for c in range(Cg):
                        for a in range(kh):
                            for bb in range(kw):
                                acc += (xp[n, g * Cg + c, i * sh + a * dh, j * sw + bb * dw]
                                        * w[o, c, a, bb])
                    out[n, o, i, j] = acc + (0.0 if b is None else b[o])
    return out


def np_pool(x, k, s, p, op):
    N, C, H, W = x.shape
    fill = -np.inf if op == "max" else 0.0
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)), constant_values=fill)
    OH = (H + 2 * p - k) // s + 1
    OW = (W + 2 * p - k) // s + 1
    out = np.zeros((N, C, OH, OW))
    for i in range(OH):
        for j in range(OW):
            win = xp[:, :, i * s:i * s + k, j * s:j * s + k]
            out[:, :, i, j] = win.max(axis=(2, 3)) if op == "max" else win.mean(axis=(2, 3))
    return out


# --------------------------------------------------------------------------- softmax family
@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_softmax_and_log_softmax_values(rng, axis):
    x = rng.normal(size=(3, 4, 5))
    ref = np_log_softmax(x, axis)
    np.testing.assert_allclose(gt.nn.log_softmax(x, axis=axis).numpy(), ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(gt.nn.softmax(x, axis=axis).numpy(), np.exp(ref), rtol=1e-12)
    y32 = gt.nn.softmax(gt.tensor(x.astype(np.float32)), axis=axis)
    assert y32.dtype == np.float32
    np.testing.assert_allclose(y32.numpy(), np.exp(ref), rtol=1e-5)


@pytest.mark.parametrize("axis", [-1, 1])
def test_softmax_gradients(rng, axis):
    x = rng.normal(size=(3, 4, 2))
    check_grads(lambda t: gt.nn.softmax(t, axis=axis), (x,))
    check_grads(lambda t: gt.nn.log_softmax(t, axis=axis), (x,))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_family_over_short_axes_of_many_rows(rng, dtype):
    # rows of few entries over many rows (a classifier's logits) take their maximum another
    # way on the host; every axis, a transposed input and a NaN row must give NumPy's values
    x = rng.normal(size=(40, 6, 3)).astype(dtype) * 3
    x[5, 2, :] = np.nan
    for arr in (x, np.asfortranarray(x), x.transpose(1, 0, 2)):
        for axis in range(-3, 3):
            ref = np_log_softmax(arr, axis)
            np.testing.assert_allclose(gt.nn.log_softmax(arr, axis=axis).numpy(), ref,
                                       rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-6)
            np.testing.assert_allclose(gt.nn.softmax(arr, axis=axis).numpy(), np.exp(ref),
                                       rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-7)


def test_softmax_family_keeps_numpys_bits_on_transposed_and_nan_input(rng):
    # the short-axis maximum's copy is taken for C-ordered input only (a C-ordered maximum
    # next to a transposed x changed the layout of x - max, and the sums' last bits), and
    # rows whose maximum is NaN take NumPy's own reduction (which does not keep every NaN
    # payload); both must give the bits of NumPy's formula
    def ref(v, axis):
        m = v.max(axis=axis, keepdims=True)
        e = np.exp(v - m)
        return e / e.sum(axis=axis, keepdims=True), v - m - np.log(np.exp(v - m).sum(axis=axis, keepdims=True))

    x = rng.normal(size=(5, 7, 64)).astype(np.float32).transpose(0, 2, 1)  # (5, 64, 7)
    for axis in (1, 2, -1):
        sm, lsm = ref(x, axis)
        np.testing.assert_array_equal(gt.nn.softmax(x, axis=axis).numpy(), sm)
        np.testing.assert_array_equal(gt.nn.log_softmax(x, axis=axis).numpy(), lsm)
    y = rng.normal(size=(64, 10))
    y.view(np.int64)[:, 3] = np.array([np.nan]).view(np.int64)[0] | 5  # a NaN with a payload
    sm, lsm = ref(y, 1)
    np.testing.assert_array_equal(gt.nn.softmax(y).numpy().view(np.int64), sm.view(np.int64))
    np.testing.assert_array_equal(gt.nn.log_softmax(y).numpy().view(np.int64), lsm.view(np.int64))


def test_cross_entropy_gradient_of_transposed_logits_replays_bit_for_bit(rng):
    # the host route of cross_entropy's VJP kept a transposed softmax's layout where the rule
    # (what a gt.function replay runs) gives C order: a sum over the gradient inside the step
    # then added in another order than eagerly
    x = gt.Variable(rng.normal(size=(7, 4000)).astype(np.float32).T)  # F-ordered logits
    labels = rng.integers(0, 7, size=4000)

    def step():
        with gt.GradientTape() as tape:
            loss = gt.nn.cross_entropy(x, labels, reduction="sum")
        g = tape.gradient(loss, x)
        return g, gt.sum(g * g, axis=0)

    eager = [t.numpy() for t in step()]
    f = gt.function(step)
    for _ in range(3):
        for a, b in zip(f(), eager):
            np.testing.assert_array_equal(a.numpy(), b)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_cross_entropy_gradient_over_many_rows(rng, reduction):
    # 128 examples of 10 classes, float32 and float64, labels of several integer dtypes:
    # the gradient is (softmax - onehot) * g on every route
    for dtype in (np.float32, np.float64):
        logits = rng.normal(size=(128, 10)).astype(dtype) * 4
        for labels in (rng.integers(0, 10, size=128), rng.integers(0, 10, size=128).astype(np.uint8)):
            x = gt.tensor(logits)
            w = rng.uniform(0.5, 2.0, size=128).astype(dtype)
            with gt.GradientTape() as tape:
                tape.watch(x)
                loss = gt.nn.cross_entropy(x, labels, reduction=reduction)
                if reduction == "none":
                    loss = gt.sum(loss * gt.tensor(w))
            p = np.exp(np_log_softmax(logits.astype(np.float64)))
            g = w if reduction == "none" else np.full(128, 1 / 128)
            ref = (p - np.eye(10)[labels]) * g[:, None]
            got = tape.gradient(loss, x).numpy()
            assert got.dtype == dtype
            np.testing.assert_allclose(got, ref, rtol=1e-4 if dtype == np.float32 else 1e-10,
                                       atol=1e-6 if dtype == np.float32 else 1e-13)


def test_softmax_large_logits_are_stable():
    x = gt.tensor([[1e4, 0.0, -1e4], [-1e4, -1e4, -1e4]])
    y = gt.nn.softmax(x).numpy()
    assert np.all(np.isfinite(y))
    np.testing.assert_allclose(y, [[1, 0, 0], [1 / 3, 1 / 3, 1 / 3]], atol=1e-6)
    np.testing.assert_allclose(gt.nn.log_softmax(x).numpy()[0], [0, -1e4, -2e4], rtol=1e-6)


# --------------------------------------------------------------------------- cross-entropy
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_integer_labels_matches_numpy(rng, reduction):
    logits = rng.normal(size=(6, 5))
    labels = rng.integers(0, 5, size=6)
    per = -np_log_softmax(logits)[np.arange(6), labels]
    ref = {"mean": per.mean(), "sum": per.sum(), "none": per}[reduction]
    out = gt.nn.cross_entropy(logits, labels, reduction=reduction)
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-12)
    check_grads(lambda t: gt.nn.cross_entropy(t, labels, reduction=reduction), (logits,))


def test_cross_entropy_leading_batch_dims_and_label_types(rng):
    logits = rng.normal(size=(2, 3, 4))
    labels = rng.integers(0, 4, size=(2, 3))
    ref = -np.take_along_axis(np_log_softmax(logits), labels[..., None], -1)[..., 0]
    np.testing.assert_allclose(gt.nn.cross_entropy(logits, labels, reduction="none").numpy(), ref)
    for lab in (labels.tolist(), gt.tensor(labels), labels.astype(np.int32)):
        np.testing.assert_allclose(gt.nn.cross_entropy(logits, lab).numpy(), ref.mean())


def test_cross_entropy_probability_targets(rng):
    logits = rng.normal(size=(4, 3))
    targets = rng.dirichlet(np.ones(3), size=4)
    ref = -(targets * np_log_softmax(logits)).sum(-1)
    np.testing.assert_allclose(gt.nn.cross_entropy(logits, targets, reduction="none").numpy(), ref)
    np.testing.assert_allclose(gt.nn.cross_entropy(logits, targets).numpy(), ref.mean())
    # one-hot targets give the integer-label loss; targets are differentiable too
    labels = np.array([0, 2, 1, 1])
    onehot = np.eye(3)[labels]
    np.testing.assert_allclose(gt.nn.cross_entropy(logits, onehot).numpy(),
                               gt.nn.cross_entropy(logits, labels).numpy(), rtol=1e-12)
    check_grads(lambda a, t: gt.nn.cross_entropy(a, t), (logits, targets))


def test_cross_entropy_gradient_is_softmax_minus_onehot(rng):
    logits = rng.normal(size=(5, 4))
    labels = rng.integers(0, 4, size=5)
    x = gt.tensor(logits)
    with gt.GradientTape() as tape:
        tape.watch(x)
        loss = gt.nn.cross_entropy(x, labels)
    p = np.exp(np_log_softmax(logits))
    np.testing.assert_allclose(tape.gradient(loss, x).numpy(), (p - np.eye(4)[labels]) / 5, rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cross_entropy_stable_at_1e4(dtype):
    logits = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 5e3], [3e3, 3e3, -1e4]], dtype=dtype)
    labels = np.array([1, 1, 0])
    x = gt.tensor(logits)
    with gt.GradientTape() as tape:
        tape.watch(x)
        loss = gt.nn.cross_entropy(x, labels, reduction="none")
    g = tape.gradient(loss, x).numpy()
    np.testing.assert_allclose(loss.numpy(), [2e4, 0.0, np.log(2)], rtol=1e-6)
    assert np.all(np.isfinite(g))
    np.testing.assert_allclose(g, [[1, -1, 0], [0, 0, 0], [-0.5, 0.5, 0]], atol=1e-6)
    soft = gt.nn.cross_entropy(x, np.eye(3, dtype=dtype)[labels], reduction="none")
    np.testing.assert_allclose(soft.numpy(), loss.numpy(), rtol=1e-6)


def test_cross_entropy_errors():
    logits = gt.tensor(np.zeros((3, 4)))
    with pytest.raises(ValueError, match=r"labels must be class indices in \[0, 4\)"):
        gt.nn.cross_entropy(logits, [0, 4, 1])
    with pytest.raises(ValueError, match="shape"):
        gt.nn.cross_entropy(logits, [0, 1])
    with pytest.raises(ValueError, match="probability targets"):
        gt.nn.cross_entropy(logits, np.zeros((3, 3)))
    with pytest.raises(ValueError, match="reduction"):
        gt.nn.cross_entropy(logits, [0, 1, 2], reduction="avg")
    with pytest.raises(TypeError, match="logits must be a float"):
        gt.nn.cross_entropy(gt.tensor([[1, 2]]), [0])


# --------------------------------------------------------------------------- mse, bce
def test_mse_and_binary_cross_entropy(rng):
    p, t = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    np.testing.assert_allclose(gt.nn.mse(p, t).numpy(), ((p - t) ** 2).mean())
    np.testing.assert_allclose(gt.nn.mse(p, t, reduction="sum").numpy(), ((p - t) ** 2).sum())
    check_grads(gt.nn.mse, (p, t))
    x, y = rng.normal(size=(5,)) * 3, rng.uniform(size=5)
    sig = 1 / (1 + np.exp(-x))
    ref = -(y * np.log(sig) + (1 - y) * np.log(1 - sig))
    np.testing.assert_allclose(gt.nn.binary_cross_entropy_with_logits(x, y, reduction="none").numpy(),
                               ref, rtol=1e-10)
    check_grads(gt.nn.binary_cross_entropy_with_logits, (x, y))
    np.testing.assert_allclose(gt.nn.binary_cross_entropy(sig, y, reduction="none").numpy(), ref,
                               rtol=1e-10)
    check_grads(gt.nn.binary_cross_entropy, (sig, y))
    big = gt.tensor(np.array([1e4, -1e4, 1e4], np.float32))
    with gt.GradientTape() as tape:
        tape.watch(big)
        loss = gt.nn.binary_cross_entropy_with_logits(big, gt.tensor([1.0, 0.0, 0.0]), reduction="none")
    np.testing.assert_allclose(loss.numpy(), [0, 0, 1e4])
    np.testing.assert_allclose(tape.gradient(loss, big).numpy(), [0, 0, 1])
    with pytest.raises(ValueError, match=r"\(3,\).*\(4,\) differ"):
        gt.nn.mse(np.zeros(3), np.zeros(4))


@pytest.mark.parametrize("loss", [gt.nn.mse, gt.nn.binary_cross_entropy,
                                  gt.nn.binary_cross_entropy_with_logits])
def test_a_loss_refuses_targets_of_another_shape_instead_of_broadcasting(loss):
    p = gt.tensor(np.zeros((4, 1), np.float32))
    with pytest.raises(ValueError, match=r"\(4, 1\).*\(4,\)"):
        loss(p, gt.tensor(np.zeros(4, np.float32)))
    assert loss(p, 0.0).shape == ()  # a Python number is a constant target


# --------------------------------------------------------------------------- conv2d
CONV_CASES = [
    dict(),
    dict(stride=2, padding=1),
    dict(stride=(2, 1), padding=((1, 0), (2, 1)), dilation=(1, 2)),
    dict(padding=2, dilation=2),
    dict(groups=2, padding=1),
    dict(groups=4, stride=2),
]


@pytest.mark.parametrize("kw", CONV_CASES)
def test_conv2d_matches_naive_loops(rng, kw):
    groups = kw.get("groups", 1)
    x = rng.normal(size=(2, 4, 6, 7))
    w = rng.normal(size=(4, 4 // groups, 3, 2))
    b = rng.normal(size=4)
    out = gt.nn.conv2d(x, w, b, **kw).numpy()

    def norm2(v):
        return (v, v) if isinstance(v, int) else v

    pad = kw.get("padding", 0)
    pad = ((pad, pad), (pad, pad)) if isinstance(pad, int) else pad
    ref = np_conv2d(x, w, b, stride=norm2(kw.get("stride", 1)), padding=pad,
                    dilation=norm2(kw.get("dilation", 1)), groups=groups)
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kw", [CONV_CASES[0], CONV_CASES[2], CONV_CASES[3], CONV_CASES[4],
                                dict(padding=((2, 0), (0, 1)), dilation=(2, 1), groups=2)])
def test_conv2d_gradients(rng, kw):
    """Stride-1 cases take the flat grid (the input gradient folds every example's padded
    image at once), the strided one the general fold."""
    groups = kw.get("groups", 1)
    x = rng.normal(size=(2, 4, 5, 5))
    w = rng.normal(size=(2 * groups, 4 // groups, 3, 2))
    b = rng.normal(size=2 * groups)
    check_grads(lambda a, c, d: gt.nn.conv2d(a, c, d, **kw), (x, w, b))


def np_conv2d_input_grad(g, w, hw, padding, dilation=(1, 1)):
    """The input gradient of a stride-1 convolution by loops: each output's cotangent times
    each tap, added at the pixel the tap read (padding cropped)."""
    N, n_out, OH, OW = g.shape
    _, C, kh, kw = w.shape
    (pt, pb), (pl, pr) = padding
    dx = np.zeros((N, C, hw[0] + pt + pb, hw[1] + pl + pr))
    for n in range(N):
        for o in range(n_out):
            for i in range(OH):
                for j in range(OW):
                    for a in range(kh):
                        for bb in range(kw):
                            dx[n, :, i + a * dilation[0], j + bb * dilation[1]] += g[n, o, i, j] * w[o, :, a, bb]
    return dx[:, :, pt:pt + hw[0], pl:pl + hw[1]]


@pytest.mark.parametrize("kernel,padding", [((2, 1), ((0, 0), (0, 0))), ((3, 3), ((1, 1), (1, 1))),
                                            ((2, 3), ((1, 0), (2, 1)))])
def test_conv2d_input_gradient_with_an_infinite_weight_is_nan_only_where_the_sum_is(rng, kernel, padding):
    """A weight of inf reaches only the pixels its tap reads: the stride-1 input gradient (which
    computes on a grid with zero junk between and after the examples' images) must not turn
    inf * 0 into NaN on other pixels, in its own example or the next."""
    x = rng.normal(size=(2, 2, 5, 4))
    w = rng.uniform(0.5, 1.0, size=(3, 2) + kernel)
    w[1, 0, -1, 0] = np.inf
    xt = gt.tensor(x)
    with gt.GradientTape() as tape, np.errstate(invalid="ignore"):  # (the forward's padding
        tape.watch(xt)  # times inf is NaN, as in the definition)
        y = gt.nn.conv2d(xt, gt.tensor(w), padding=padding)
    g = rng.uniform(0.5, 1.0, size=y.shape)
    got = tape.gradient(y, xt, output_gradients=gt.tensor(g)).numpy()
    ref = np_conv2d_input_grad(g, w, x.shape[2:], padding)
    assert np.isnan(ref).sum() == 0 and np.isinf(ref).any()
    np.testing.assert_array_equal(np.isinf(got), np.isinf(ref))
    np.testing.assert_allclose(got, ref, rtol=1e-12)  # (no NaN anywhere)


def test_conv2d_weight_gradient_uses_the_values_the_forward_saw(rng):
    """The weight gradient reuses the forward's unfolded input: it must be that of the values
    the forward read, whatever happens to the input after (an assigned Variable, a second
    gradient of a persistent tape, another convolution of the same tensor, other weights)."""
    x0 = rng.normal(size=(2, 3, 6, 6)).astype(np.float32)
    img = gt.Variable(x0)
    w = gt.Variable(rng.normal(size=(4, 3, 3, 3)).astype(np.float32))

    def reference(x, weights, **kw):
        with gt.GradientTape() as t:
            y = gt.sum(gt.nn.conv2d(gt.tensor(x.copy()), weights, **kw) ** 2)
        return t.gradient(y, weights).numpy()

    with gt.GradientTape(persistent=True) as tape:
        y = gt.sum(gt.nn.conv2d(img, w, padding=1) ** 2)
    img.assign(x0 * 3)
    want = reference(x0, w, padding=1)
    np.testing.assert_array_equal(tape.gradient(y, w).numpy(), want)
    np.testing.assert_array_equal(tape.gradient(y, w).numpy(), want)
    # one input, two convolutions of other geometries and weights, gradients after both
    x = gt.tensor(x0)
    w2 = gt.Variable(rng.normal(size=(5, 3, 2, 2)).astype(np.float32))
    with gt.GradientTape() as tape:
        y = gt.sum(gt.nn.conv2d(x, w, padding=1) ** 2) + gt.sum(gt.nn.conv2d(x, w2, stride=2) ** 2)
    g, g2 = tape.gradient(y, [w, w2])
    np.testing.assert_allclose(g.numpy(), reference(x0, w, padding=1), rtol=1e-6)
    np.testing.assert_allclose(g2.numpy(), reference(x0, w2, stride=2), rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_conv2d_weight_gradient_of_a_first_layer_over_a_long_batch(rng, dtype):
    """A first layer's weight gradient (few input channels, so a product with few entries over
    batch x pixels) is summed from pieces of that long axis on the host, the last one short:
    the same sum as the windows' products, in float32 as accurate as one product."""
    x = rng.normal(size=(40, 1, 30, 30)).astype(dtype)
    w = gt.Variable(rng.normal(size=(8, 1, 3, 3)).astype(dtype))
    g = rng.normal(size=(40, 8, 30, 30)).astype(dtype)
    with gt.GradientTape() as tape:
        y = gt.nn.conv2d(gt.tensor(x), w, padding=1)
    got = tape.gradient(y, w, output_gradients=gt.tensor(g)).numpy()
    xpad = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    win = np.lib.stride_tricks.sliding_window_view(xpad, (3, 3), axis=(2, 3))  # n c y x i j
    ref = np.einsum("noyx,ncyxij->ocij", g.astype(np.float64), win)
    assert got.dtype == dtype
    np.testing.assert_allclose(got, ref, rtol=1e-10 if dtype == np.float64 else 2e-5,
                               atol=1e-10 if dtype == np.float64 else 1e-3)


def test_conv2d_same_padding_and_float32(rng):
    x = rng.normal(size=(1, 2, 5, 5)).astype(np.float32)
    w = rng.normal(size=(3, 2, 3, 3)).astype(np.float32)
    y = gt.nn.conv2d(x, w, padding="same")
    assert y.shape == (1, 3, 5, 5) and y.dtype == np.float32
    np.testing.assert_allclose(y.numpy(), np_conv2d(x.astype(float), w.astype(float),
                                                    padding=((1, 1), (1, 1))), rtol=1e-4, atol=1e-5)
    assert gt.nn.conv2d(x, w, padding="valid").shape == (1, 3, 3, 3)


def test_conv2d_errors(rng):
    x = np.zeros((1, 4, 5, 5))
    with pytest.raises(ValueError, match="4-D NCHW"):
        gt.nn.conv2d(np.zeros((4, 5, 5)), np.zeros((2, 4, 3, 3)))
    with pytest.raises(ValueError, match="expects 2 input channels"):
        gt.nn.conv2d(x, np.zeros((2, 2, 3, 3)))
    with pytest.raises(ValueError, match="groups=3"):
        gt.nn.conv2d(x, np.zeros((3, 1, 3, 3)), groups=3)
    with pytest.raises(ValueError, match="smaller than the dilated kernel"):
        gt.nn.conv2d(x, np.zeros((2, 4, 3, 3)), dilation=3)
    with pytest.raises(ValueError, match="bias must have shape"):
        gt.nn.conv2d(x, np.zeros((2, 4, 3, 3)), np.zeros(3))


# --------------------------------------------------------------------------- pooling
@pytest.mark.parametrize("k,s,p", [(2, 2, 0), (3, 2, 1), (2, 1, 0), (3, 3, 1)])
def test_pools_match_reference(rng, k, s, p):
    x = rng.normal(size=(2, 3, 7, 6))
    np.testing.assert_allclose(gt.nn.max_pool2d(x, k, s, p).numpy(), np_pool(x, k, s, p, "max"))
    np.testing.assert_allclose(gt.nn.avg_pool2d(x, k, s, p).numpy(), np_pool(x, k, s, p, "avg"),
                               rtol=1e-12)


def test_pool_gradients(rng):
    x = rng.permutation(2 * 2 * 6 * 6).reshape(2, 2, 6, 6) * 0.1  # no ties
    check_grads(lambda t: gt.nn.max_pool2d(t, 3, 2, 1), (x,))
    check_grads(lambda t: gt.nn.avg_pool2d(t, 2, 1, 1), (rng.normal(size=(1, 2, 4, 5)),))


@pytest.mark.parametrize("k", [(2, 2), (3, 2), (2, 3), (1, 2), (2, 1), (1, 1)])
def test_max_pool_tiling_windows_match_loops_with_ties_nan_and_inf(rng, k):
    """Windows that tile the image (stride = kernel, no padding) are pooled rows first, then
    columns: the same maxima as a loop (NaN propagates), and the gradient still goes to the
    first maximum of each window in row-major order (ties from a ReLU's zeros, signed zeros),
    a window holding NaN sending it to its last element."""
    kh, kw = k
    x = np.maximum(rng.integers(-2, 3, size=(3, 2, 4 * kh, 3 * kw)), 0).astype(np.float32)
    x[0, 0, 0, 0] = -0.0
    x[1, 1, :kh, :kw] = np.nan
    x[2, 0, -kh:, -kw:] = np.inf
    ref = np_pool(x.astype(np.float64), 1, 1, 0, "max") if k == (1, 1) else None
    y = gt.nn.max_pool2d(gt.tensor(x), k)
    win = x.reshape(3, 2, 4, kh, 3, kw).transpose(0, 1, 2, 4, 3, 5).reshape(3, 2, 4, 3, kh * kw)
    np.testing.assert_array_equal(y.numpy(), win.max(axis=-1))
    if ref is not None:
        np.testing.assert_array_equal(y.numpy(), ref)
    g = rng.normal(size=y.shape).astype(np.float32)
    xt = gt.tensor(x)
    with gt.GradientTape() as tape:
        tape.watch(xt)
        y = gt.nn.max_pool2d(xt, k)
    got = tape.gradient(y, xt, output_gradients=gt.tensor(g)).numpy()
    want = np.zeros_like(win)
    top = win.max(axis=-1, keepdims=True)
    hit = win == top
    first = np.where(hit.any(axis=-1), hit.argmax(axis=-1), kh * kw - 1)
    np.put_along_axis(want, first[..., None], g[..., None], axis=-1)
    want = want.reshape(3, 2, 4, 3, kh, kw).transpose(0, 1, 2, 4, 3, 5).reshape(x.shape)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("k,s,p", [(2, None, 0), (3, None, 0), (2, 3, 0), (2, 2, 1), (3, 2, 1)])
def test_relu_then_max_pool_gradient_is_the_two_vjps_in_turn(rng, dtype, k, s, p):
    """The gradient through relu then max_pool2d, asked for the relu's input only, is taken
    in one route (relu's mask on the pooled maxima): bit for bit what the two VJPs give in
    turn (asked for the relu's output too, which takes them in turn), with ties from the
    relu's zeros, signed zeros, windows holding NaN, negative, zero and infinite cotangents,
    in eager mode and replayed by gt.function; overlapping windows (3, stride 2) take the two
    VJPs in turn either way."""
    z0 = rng.integers(-2, 3, size=(2, 3, 9, 8)).astype(dtype)
    z0[0, 0, 0, 0] = -0.0
    z0[0, 1, 1:3, 1:3] = np.nan
    z0[1, 2, 4, 4] = np.inf
    with np.errstate(invalid="ignore"):
        shape = gt.nn.max_pool2d(gt.tensor(z0), k, s, p).shape
    g0 = rng.normal(size=shape).astype(dtype)
    g0[0, 0, 0, :2] = (0.0, -0.0)
    g0[1, 1, 1, 1] = -np.inf

    def grads(z, g, both):
        with gt.GradientTape() as tape:
            tape.watch(z)
            h = gt.relu(z)
            y = gt.nn.max_pool2d(h, k, s, p)
        return tape.gradient(y, [z, h] if both else z, output_gradients=g)

    z, g = gt.tensor(z0), gt.tensor(g0)
    with np.errstate(invalid="ignore"):
        want = grads(z, g, True)[0].numpy()
        got = grads(z, g, False).numpy()
        step = gt.function(lambda z, g: grads(z, g, False))
        replayed = [step(z, g).numpy() for _ in range(3)]
    for a in (got, *replayed):
        np.testing.assert_array_equal(a, want)
        np.testing.assert_array_equal(np.signbit(a), np.signbit(want))
    assert np.isnan(want).any() and (want == 0).any()


@pytest.fixture
def unfolded_pool():
    """A function running its argument with max_pool2d's folds switched off (through the
    extension API), so the two VJPs run in turn."""
    from gradtape.extend import REGISTRY
    prim = REGISTRY["max_pool2d"]
    folds = prim.folds
    assert folds and "relu" in folds

    def run(fn):
        prim.folds = None
        try:
            return fn()
        finally:
            prim.folds = folds
    return run


def test_relu_then_max_pool_takes_the_fold(rng):
    """The fold is taken where it applies (the equality tests above would pass without it):
    a gradient of the relu's input through a 2x2 pool, in tape.gradient, per_example_gradients
    and a gt.function replay; not when the relu's output is asked for too. On a device backend
    it is asked and declines (host arrays only)."""
    from gradtape.extend import REGISTRY
    prim = REGISTRY["max_pool2d"]
    folds = prim.folds
    taken: list[bool] = []

    def counting(rec, relu, g):
        res = folds["relu"](rec, relu, g)
        taken.append(res is not None)
        return res

    x = gt.tensor(rng.normal(size=(3, 2, 6, 6)).astype(np.float32))
    w = gt.Variable(rng.normal(size=(1, 2, 1, 1)).astype(np.float32))

    def grads(both=False):
        with gt.GradientTape(persistent=True) as tape:
            h = gt.relu(x * w)
            losses = gt.sum(gt.nn.max_pool2d(h, 2), axis=(1, 2, 3))
        if both:
            return tape.gradient(losses, [w, h])
        return tape.gradient(losses, w), tape.per_example_gradients(losses, w)

    prim.folds = {"relu": counting}
    try:
        host = gt.backend_name() == "numpy"
        grads()
        assert taken == [host, host]
        step = gt.function(grads)
        for _ in range(4):  # two traces take it; the replays run the program they logged
            step()
        assert taken == [host] * 6 if host else not any(taken)
        taken.clear()
        grads(both=True)
        assert taken == []
    finally:
        prim.folds = folds


def test_relu_fold_adds_its_cotangent_in_the_order_of_the_two_vjps(rng, unfolded_pool):
    """The relu's input read by other ops between the relu and the pool (three contributions
    to its gradient; two NaNs of opposite signs, whose sum's sign is the first operand's):
    the folded cotangent is added when the pass reaches the relu, so the sums run in the same
    order as unfolded, bit for bit, in tape.gradient and in per_example_gradients."""
    X = rng.normal(size=(4, 2, 8, 8)).astype(np.float32)
    W = gt.Variable((rng.normal(size=(4, 2, 3, 3)) * 0.5).astype(np.float32))
    c1 = gt.tensor((rng.normal(size=(4, 4, 8, 8)) * 0.37).astype(np.float32))
    c2 = gt.tensor((rng.normal(size=(4, 4, 8, 8)) * 3.1).astype(np.float32))

    def grads():
        with gt.GradientTape(persistent=True) as tape:
            h = gt.nn.conv2d(gt.tensor(X), W, padding=1)
            r = gt.relu(h)
            a, b = h * c1, h * c2
            ls = (gt.sum(gt.nn.max_pool2d(r, 2) * 0.77, axis=(1, 2, 3))
                  + gt.sum(a, axis=(1, 2, 3)) + gt.sum(b, axis=(1, 2, 3)))
            total = gt.sum(ls)
        return [tape.gradient(total, W).numpy(), tape.per_example_gradients(ls, W).numpy()]

    def nan_signs():
        z = gt.Variable(np.ones((1, 1, 2, 2), np.float32))
        with gt.GradientTape() as tape:
            r = gt.relu(z)
            q = z * gt.tensor(np.full((1, 1, 2, 2), -np.nan, np.float32))
            y = gt.nn.max_pool2d(r, 2)
        with np.errstate(invalid="ignore"):
            return [tape.gradient([y, q], z, output_gradients=[
                gt.tensor(np.full((1, 1, 1, 1), np.nan, np.float32)),
                gt.tensor(np.ones((1, 1, 2, 2), np.float32))]).numpy()]

    for got, want in zip(grads() + nan_signs(), unfolded_pool(grads) + unfolded_pool(nan_signs)):
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(np.signbit(got), np.signbit(want))


def test_max_pool_gradient_goes_to_first_maximum():
    x = gt.tensor(np.ones((1, 1, 2, 2)))
    with gt.GradientTape() as tape:
        tape.watch(x)
        y = gt.nn.max_pool2d(x, 2)
    np.testing.assert_array_equal(tape.gradient(y, x).numpy()[0, 0], [[1, 0], [0, 0]])
    with pytest.raises(ValueError, match="at most half"):
        gt.nn.max_pool2d(x, 2, padding=2)


# --------------------------------------------------------------------------- dropout
def test_dropout_masks_scales_and_is_reproducible():
    x = gt.tensor(np.ones((200, 50)))
    y1 = gt.nn.dropout(x, 0.3, seed=7).numpy()
    y2 = gt.nn.dropout(x, 0.3, seed=7).numpy()
    np.testing.assert_array_equal(y1, y2)
    assert set(np.unique(y1)) <= {0.0, 1 / 0.7}
    assert abs((y1 == 0).mean() - 0.3) < 0.02
    assert gt.nn.dropout(x, 0.3, training=False) is x
    assert gt.nn.dropout(x, 0.0) is x
    gen = np.random.default_rng(1)
    a, b = gt.nn.dropout(x, 0.5, generator=gen).numpy(), gt.nn.dropout(x, 0.5, generator=gen).numpy()
    assert not np.array_equal(a, b)
    with pytest.raises(ValueError, match="rate"):
        gt.nn.dropout(x, 1.0)


def test_dropout_gradient_uses_the_mask():
    x = gt.Variable(np.arange(1.0, 41.0))
    with gt.GradientTape() as tape:
        y = gt.nn.dropout(x, 0.5, seed=3)
    g = tape.gradient(y, x).numpy()
    np.testing.assert_array_equal(g, (y.numpy() != 0) * 2.0)


# --------------------------------------------------------------------------- layer norm
def test_layer_norm_matches_numpy(rng):
    x = rng.normal(size=(3, 4, 5))
    gamma, beta = rng.normal(size=5), rng.normal(size=5)
    mu = x.mean(-1, keepdims=True)
    var = x.var(-1, keepdims=True)
    ref = (x - mu) / np.sqrt(var + 1e-5) * gamma + beta
    np.testing.assert_allclose(gt.nn.layer_norm(x, gamma, beta).numpy(), ref, rtol=1e-10)
    ref2 = (x - x.mean((1, 2), keepdims=True)) / np.sqrt(x.var((1, 2), keepdims=True) + 1e-3)
    np.testing.assert_allclose(gt.nn.layer_norm(x, axis=(1, 2), eps=1e-3).numpy(), ref2, rtol=1e-10)
    check_grads(lambda a, g, b: gt.nn.layer_norm(a, g, b), (x, gamma, beta))


# --------------------------------------------------------------------------- embedding
def test_embedding_values_and_repeated_ids_accumulate(rng):
    table_np = rng.normal(size=(5, 3))
    ids = np.array([[1, 3, 1], [1, 0, 4]])
    table = gt.Variable(table_np)
    with gt.GradientTape() as tape:
        out = gt.nn.embedding(ids, table)
        loss = gt.sum(out * np.arange(1.0, 4.0))
    np.testing.assert_array_equal(out.numpy(), table_np[ids])
    g = tape.gradient(loss, table).numpy()
    counts = np.bincount(ids.ravel(), minlength=5)
    np.testing.assert_array_equal(g, counts[:, None] * np.arange(1.0, 4.0))
    assert counts[1] == 3 and g[2].sum() == 0
    check_grads(lambda t: gt.nn.embedding(ids, t), (table_np,))
    with pytest.raises(ValueError, match=r"ids must be in \[0, 5\)"):
        gt.nn.embedding([5], table)
    with pytest.raises(TypeError, match="integers"):
        gt.nn.embedding([0.5], table)


def test_new_primitives_declare_examples():
    from gradtape.extend import REGISTRY

    for name in ("softmax", "log_softmax", "softmax_cross_entropy", "im2col", "col2im", "window_max"):
        ex = REGISTRY[name].examples
        assert ex is not None and ex(np.random.default_rng(0)), name


def test_batching_rules_equal_a_loop_over_examples(rng):
    """The vmap rules of the nn primitives, called directly: batched result == stacked loop."""
    from gradtape.extend import REGISTRY

    B = 3
    xs = rng.normal(size=(4, B, 5))  # batch on axis 1
    for name in ("softmax", "log_softmax"):
        out, d = REGISTRY[name].batch((gt.tensor(xs),), (1,), axis=1)
        ref = np.stack([getattr(gt.nn, name)(xs[:, b], axis=1).numpy() for b in range(B)])
        assert d == 0
        np.testing.assert_allclose(out.numpy(), ref, rtol=1e-12)
    labels = rng.integers(0, 5, size=4)
    out, _ = REGISTRY["softmax_cross_entropy"].batch((gt.tensor(xs), gt.tensor(labels)), (1, None))
    ref = np.stack([gt.nn.cross_entropy(xs[:, b], labels, reduction="none").numpy() for b in range(B)])
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-12)
    imgs = rng.normal(size=(B, 2, 3, 5, 5))
    geo = dict(kernel=(2, 3), stride=(1, 2), padding=((1, 0), (0, 1)), dilation=(2, 1))
    cols, _ = REGISTRY["im2col"].batch((gt.tensor(imgs),), (0,), pad_value=0.0, **geo)
    ref = np.stack([REGISTRY["im2col"].impl(np, imgs[b], pad_value=0.0, **geo) for b in range(B)])
    np.testing.assert_array_equal(cols.numpy(), ref)
    back, _ = REGISTRY["col2im"].batch((cols,), (0,), in_shape=(2, 3, 5, 5), **geo)
    ref = np.stack([REGISTRY["col2im"].impl(np, ref[b], in_shape=(2, 3, 5, 5), **geo) for b in range(B)])
    np.testing.assert_allclose(back.numpy(), ref, rtol=1e-12)
    out, _ = REGISTRY["window_max"].batch((gt.tensor(xs),), (1,), axis=1)
    np.testing.assert_array_equal(out.numpy(), np.moveaxis(xs, 1, 0).max(axis=2))


def test_conv2d_weight_gradient_after_in_place_changes_of_its_input(rng):
    """conv2d keeps its forward's unfolded input for the weight gradient. After the input's
    values change in place (a Variable's assign, a caller's array shared with a tensor), the
    next recorded convolution's weight gradient is that of the new values, also when a
    forward-mode tangent runs its own convolution in between."""
    x0 = rng.normal(size=(2, 3, 6, 6)).astype(np.float32)
    img = gt.Variable(x0, name="img")
    w = gt.Variable(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), name="w")

    def wgrad(x):
        with gt.GradientTape() as tape:
            y = gt.sum(gt.nn.conv2d(x, w, padding=1) ** 2)
        return tape.gradient(y, w).numpy()

    wgrad(img)
    img.assign(x0 * 3.0)  # in place: no tape holds the old value
    with gt.ForwardAccumulator(img, gt.ones_like(img)):
        got = wgrad(img)
    np.testing.assert_allclose(got, wgrad(gt.tensor(x0 * 3.0)), rtol=1e-5)
    if gt.backend_name() != "numpy":  # (a caller's NumPy array is a NumPy-backend tensor)
        return
    arr = x0.copy()
    wgrad(extend.as_tensor(arr))  # a tensor sharing the caller's array
    arr *= 3.0  # the caller reuses its buffer
    np.testing.assert_allclose(wgrad(arr), wgrad(gt.tensor(arr.copy())), rtol=1e-5)


@pytest.mark.parametrize("n,k,s,d", [(8, 3, 2, 1), (7, 3, 2, 1), (9, 4, 3, 1), (10, 3, 2, 2),
                                     (5, 1, 2, 1), (6, 2, 1, 1)])
def test_same_padding_is_tensorflows_for_any_stride(n, k, s, d):
    # TF "SAME": ceil(n / s) outputs, pad_total = max((out - 1) s + d (k - 1) + 1 - n, 0), the
    # odd extra after; the output centred where TF's is
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 1, n, n))
    w = rng.standard_normal((1, 1, k, k))
    out = -(-n // s)
    total = max((out - 1) * s + d * (k - 1) + 1 - n, 0)
    lo = total // 2
    xp = np.pad(x, ((0, 0), (0, 0), (lo, total - lo), (lo, total - lo)))
    want = np.zeros((out, out))
    for i in range(out):
        for j in range(out):
            patch = xp[0, 0, i * s:i * s + d * (k - 1) + 1:d, j * s:j * s + d * (k - 1) + 1:d]
            want[i, j] = np.sum(patch * w[0, 0])
    got = gt.nn.conv2d(gt.tensor(x), gt.tensor(w), stride=s, padding="same", dilation=d).numpy()
    np.testing.assert_allclose(got[0, 0], want, rtol=1e-12)
    got1 = gt.nn.conv1d(gt.tensor(x[:, :, 0]), gt.tensor(w[:, :, 0]), stride=s, padding="same",
                        dilation=d).numpy()
    want1 = gt.nn.conv2d(gt.tensor(x[:, :, :1]), gt.tensor(w[:, :, :1]), stride=(1, s),
                         padding=((0, 0), (lo, total - lo)), dilation=(1, d)).numpy()[:, :, 0]
    np.testing.assert_allclose(got1, want1, rtol=1e-12)


def test_layer_norm_scales_and_shifts_along_the_normalized_axes():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 4))
    gamma, beta = rng.standard_normal(3), rng.standard_normal(3)
    y = gt.nn.layer_norm(gt.tensor(x), gt.tensor(gamma), gt.tensor(beta), axis=1).numpy()
    xn = (x - x.mean(1, keepdims=True)) / np.sqrt(x.var(1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(y, xn * gamma[:, None] + beta[:, None], rtol=1e-10)
    for g in (gamma[:, None], gamma.reshape(1, 3, 1)):  # keepdims forms broadcast as they are
        y2 = gt.nn.layer_norm(gt.tensor(x), gt.tensor(g), axis=1).numpy()
        np.testing.assert_allclose(y2, xn * gamma[:, None], rtol=1e-10)
    full = rng.standard_normal((2, 3, 4))  # one value per element (x's shape), trailing axis
    xl = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(gt.nn.layer_norm(gt.tensor(x), gt.tensor(full)).numpy(), xl * full,
                               rtol=1e-10)
    with pytest.raises(ValueError, match=r"gamma of shape \(4,\) must broadcast against the normalized axes \(1,\)"):
        gt.nn.layer_norm(gt.tensor(x), gt.tensor(rng.standard_normal(4)), axis=1)


def test_conv2d_layer_and_dropout_check_their_arguments():
    with pytest.raises(ValueError, match="Conv2D: groups must be a positive int, got 0"):
        gt.nn.Conv2D(3, 6, 3, groups=0)
    with pytest.raises(ValueError, match=r"Conv2D: kernel_size must be an int or a pair"):
        gt.nn.Conv2D(3, 6, (3, 3, 3))
    with pytest.raises(TypeError, match="Conv2D: kernel_size must be a positive int, got 2.5"):
        gt.nn.Conv2D(3, 6, 2.5)
    with pytest.raises(ValueError, match="Dropout: seed must be >= 0, got -1"):
        gt.nn.Dropout(0.5, seed=-1)
    with pytest.raises(TypeError, match="dropout: seed must be an int >= 0 or None"):
        gt.nn.dropout(gt.ones((4,)), 0.5, seed=1.5)


@pytest.mark.parametrize("rate", ["a", None, "0.5", True])
def test_dropout_rate_is_checked_as_the_layer_checks_it(rate):
    with pytest.raises(TypeError, match=r"dropout: rate must be a real number \(int or float\), got "):
        gt.nn.dropout(gt.ones((4,)), rate)
    with pytest.raises(TypeError, match=r"Dropout: rate must be a real number"):
        gt.nn.Dropout(rate)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_ignore_index_drops_those_examples(reduction):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 4))
    y = np.array([1, -100, 3, -100, 0, 2])
    keep = y != -100
    lsm = x - np.log(np.exp(x).sum(-1, keepdims=True))
    per = np.where(keep, -lsm[np.arange(6), np.where(keep, y, 0)], 0.0)
    want = {"mean": per.sum() / keep.sum(), "sum": per.sum(), "none": per}[reduction]
    xv = gt.Variable(x)
    with gt.GradientTape() as tape:
        loss = gt.nn.cross_entropy(xv, y, reduction=reduction, ignore_index=-100)
        total = gt.sum(loss)
    np.testing.assert_allclose(loss.numpy(), want, rtol=1e-12)
    soft = np.exp(lsm)
    g = (soft - np.eye(4)[np.where(keep, y, 0)]) * keep[:, None]
    if reduction == "mean":
        g = g / keep.sum()
    np.testing.assert_allclose(tape.gradient(total, xv).numpy(), g, rtol=1e-12, atol=1e-15)


def test_cross_entropy_ignore_index_edges():
    z = gt.tensor(np.zeros((2, 3)))
    assert np.isnan(float(gt.nn.cross_entropy(z, [-1, -1], ignore_index=-1)))  # as PyTorch
    with gt.use_backend("numpy"), pytest.raises(ValueError, match=r"class indices in \[0, 3\)"):
        # the other labels are still checked (on the host; a device gives their loss NaN)
        gt.nn.cross_entropy(gt.tensor(np.zeros((2, 3))), [5, -1], ignore_index=-1)
    with pytest.raises(ValueError, match="ignore_index applies to integer class labels"):
        gt.nn.cross_entropy(z, np.full((2, 3), 1 / 3), ignore_index=-1)
    with pytest.raises(TypeError, match="ignore_index must be an int or None, got 1.5"):
        gt.nn.cross_entropy(z, [0, 1], ignore_index=1.5)
    w = gt.Variable(np.ones((3, 3)))

    @gt.function
    def step(x, y):
        with gt.GradientTape() as tape:
            loss = gt.nn.cross_entropy(x @ w, y, ignore_index=-1)
        return loss, tape.gradient(loss, w)

    rng = np.random.default_rng(0)
    for _ in range(4):
        x, y = rng.standard_normal((5, 3)), rng.integers(-1, 3, 5)
        loss, g = step(gt.tensor(x), gt.tensor(y))
        with gt.GradientTape() as tape:
            eager = gt.nn.cross_entropy(gt.tensor(x) @ w, y, ignore_index=-1)
        assert float(loss) == float(eager) or np.isnan(float(eager))
        np.testing.assert_array_equal(g.numpy(), tape.gradient(eager, w).numpy())
