"""float16 reductions accumulate in float32 (PyTorch's and XLA's rule): NumPy adds float16 in
float16 along a non-contiguous axis, where a running sum stops growing once its spacing
exceeds the terms (70000 values of 0.01 summed over axis 0 gave 32). Every sum a float16
program meets, forward or in a gradient, is checked here against float64."""

from __future__ import annotations

import numpy as np
import pytest

import gradtape as gt

ROWS = 40000  # a float16 running sum of 40000 terms near 0.5 stalls at 4096 (spacing 4)


def close16(got: gt.Tensor, want: np.ndarray, rtol: float = 4e-3) -> None:
    """A float16 result within a few of its own spacings of the float64 value."""
    assert got.dtype == np.float16
    np.testing.assert_allclose(got.numpy().astype(np.float64), want, rtol=rtol, atol=1e-3)


def data(*shape: int, seed: int = 0, low: float = 0.0, high: float = 1.0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(low, high, shape).astype(np.float16)


def test_forward_reductions_over_a_long_leading_axis(backend):
    x = data(ROWS, 3)
    x64 = x.astype(np.float64)
    t = gt.tensor(x)
    close16(gt.sum(t, axis=0), x64.sum(0))
    close16(t.sum(axis=0, keepdims=True), x64.sum(0, keepdims=True))
    close16(gt.mean(t, axis=0), x64.mean(0))
    close16(gt.var(t, axis=0), x64.var(0))
    close16(gt.std(t, axis=0, ddof=1), x64.std(0, ddof=1))
    close16(gt.norm(t, axis=0), np.sqrt((x64 * x64).sum(0)))
    y = data(ROWS, 3, seed=1, low=-3, high=0)  # exp terms of at most 1, sums in the thousands
    y64 = y.astype(np.float64)
    close16(gt.logsumexp(gt.tensor(y), axis=0), np.log(np.exp(y64).sum(0)))
    z = data(4000, 2, seed=2, low=-1, high=1)
    z64 = z.astype(np.float64)
    soft = np.exp(z64) / np.exp(z64).sum(0)
    close16(gt.nn.softmax(gt.tensor(z), axis=0), soft, rtol=2e-2)  # (each output a float16 quotient)
    close16(gt.nn.log_softmax(gt.tensor(z), axis=0), np.log(soft), rtol=2e-3)


def test_broadcast_operand_gradients_sum_in_float32(backend):
    """A bias added to every row (and a scale multiplied into every row): their gradients are
    sums over the rows, fused and unfused, first order and through a tape over the tape."""
    x = gt.tensor(data(ROWS, 3, low=-1, high=1))
    x64 = x.numpy().astype(np.float64)
    b = gt.Variable(data(3, seed=3, low=0.5, high=1.0))
    s = gt.Variable(data(1, 3, seed=4, low=0.5, high=1.0))
    b64, s64 = b.numpy().astype(np.float64), s.numpy().astype(np.float64)
    # loss = sum(tanh(x * s + b)) * 0.25 (the loss itself overflows float16; its gradient does not)
    z = np.tanh(x64 * s64 + b64)
    dz = (1 - z * z) * 0.25
    want_b, want_s = dz.sum(0), (dz * x64).sum(0, keepdims=True)
    for fusion in (True, False):
        with _fusion(fusion):
            with gt.GradientTape() as tape:
                y = gt.tanh(x * s + b) * 0.25
            gb, gs = tape.gradient(y, [b, s])  # a non-scalar target: its sum's gradient
        close16(gb, want_b)
        close16(gs, want_s)


def test_conv_bias_and_per_example_gradients_in_float16(backend):
    """A float16 conv layer's bias gradient sums batch x pixels; per-example gradients sum each
    example's pixels, and reduce="sum" sums the examples."""
    rng = np.random.default_rng(5)
    n, hw = 4000, 4  # (a sum over many small images: each image's pixels add up pairwise)
    x = gt.tensor(rng.uniform(0, 1, (n, 1, hw, hw)).astype(np.float16))
    k = gt.Variable(rng.uniform(-0.3, 0.3, (4, 1, 3, 3)).astype(np.float16))
    bias = gt.Variable(np.zeros(4, np.float16))
    with gt.GradientTape() as tape:
        y = gt.nn.conv2d(x, k, bias, padding="same")
        losses = gt.sum(gt.reshape(y * 0.1, (n, -1)), axis=1)
    gb = tape.gradient(losses, bias)  # (a non-scalar target: its sum's gradient)
    close16(gb, np.full(4, 0.1 * n * hw * hw))
    with gt.GradientTape() as tape:
        y = gt.nn.conv2d(x, k, bias, padding="same")
        losses = gt.sum(gt.reshape(y * 0.1, (n, -1)), axis=1)
    per = tape.per_example_gradients(losses, [bias])
    close16(per[0], np.full((n, 4), 0.1 * hw * hw))
    with gt.GradientTape() as tape:
        y = gt.nn.conv2d(x, k, bias, padding="same")
        losses = gt.sum(gt.reshape(y * 0.1, (n, -1)), axis=1)
    (summed,) = tape.per_example_gradients(losses, [bias], reduce="sum")
    close16(summed, np.full(4, 0.1 * n * hw * hw))


class _fusion:
    def __init__(self, on: bool) -> None:
        self.on = on

    def __enter__(self) -> None:
        self.saved = gt.config.fusion
        gt.config.fusion = self.on

    def __exit__(self, *exc: object) -> None:
        gt.config.fusion = self.saved


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_other_dtypes_sum_as_before(dtype):
    """float32 and float64 sums are NumPy's own, bit for bit."""
    x = np.random.default_rng(6).uniform(0, 1, (5000, 3)).astype(dtype)
    np.testing.assert_array_equal(gt.sum(gt.tensor(x), axis=0).numpy(), x.sum(axis=0))


def test_a_sum_past_float16s_range_inside_a_log_root_or_quotient(backend):
    """The float32 sum is not rounded to float16 before the log, square root, root or division
    that follows it (it would be inf past 65504), only the result: these fit in float16."""
    zeros = gt.Variable(np.zeros(100000, np.float16))
    threes = gt.Variable(np.full(10000, 3.0, np.float16))
    close16(gt.logsumexp(zeros), np.log(100000.0))
    close16(gt.nn.log_softmax(zeros)[:3], np.full(3, -np.log(100000.0)))
    close16(gt.nn.softmax(zeros)[:3] * 1000.0, np.full(3, 0.01))
    close16(gt.norm(threes), 300.0)
    close16(gt.norm(threes, ord=3), 10000.0 ** (1 / 3) * 3.0)
    with gt.GradientTape() as tape:
        y = gt.logsumexp(zeros)
    close16(tape.gradient(y, zeros)[:3] * 1000.0, np.full(3, 0.01))
    with gt.GradientTape() as tape:
        y = gt.norm(threes) * 100.0
    close16(tape.gradient(y, threes)[:3], np.full(3, 1.0))


def test_cumsum_accumulates_in_float32(backend):
    """A float16 running sum stops growing once its spacing exceeds the terms (50000 halves
    summed to 1024): each running sum is accumulated in float32 and rounded once, and so is the
    gradient (a reversed cumulative sum)."""
    x = gt.Variable(np.full((50000, 1), 0.25, np.float16))
    with gt.GradientTape() as tape:
        c = gt.cumsum(x, axis=0)
        y = gt.sum(c * 1e-4)  # (31250: within float16's range)
    close16(c[-1], np.full(1, 12500.0))
    g = tape.gradient(y, x)  # element i: 1e-4 for each running sum it is in
    close16(g, np.arange(50000, 0, -1)[:, None] * np.float16(1e-4).astype(np.float64))


def test_a_bias_gradient_summed_in_two_passes_is_rounded_once(backend):
    """A conv-shaped bias's gradient ([N, C, H, W] summed to [1, C, 1, 1]) is summed over the
    batch first, then over the pixels: the partial sums stay in float32 between the passes,
    so the result is the exact sum rounded once (rounding the partial sums to float16 first
    was off by one spacing in 5 of these 128 channels)."""
    g = np.random.default_rng(0).uniform(0.5, 1.0, (20, 128, 5, 5)).astype(np.float16)
    # values in [0.5, 1) are multiples of 2^-11 and the sums stay below 2^13: float32 adds
    # them exactly, so the once-rounded result is float16 of the float64 sum, bit for bit
    want = g.astype(np.float64).sum(axis=(0, 2, 3), keepdims=True).astype(np.float16)
    x = gt.tensor(np.zeros(g.shape, np.float16))
    b = gt.Variable(np.zeros((1, 128, 1, 1), np.float16))
    for fusion in (True, False):
        with _fusion(fusion):
            with gt.GradientTape() as tape:
                y = gt.sum(gt.tensor(g) * (x + b))
            got = tape.gradient(y, b)
        assert got.dtype == np.float16
        np.testing.assert_array_equal(got.numpy(), want)


@pytest.mark.parametrize("spell", ["embedding", "take", "getitem", "gather"])
def test_a_row_gathered_many_times_sums_its_gradient_in_float32(backend, spell):
    """Repeated ids scatter-add their gradients: in float16 a row taken 5000 times stopped at
    2048, where the spacing (2) exceeds each term (1)."""
    table = gt.Variable(np.zeros((3, 2), np.float16))
    ids = gt.tensor(np.zeros(5000, np.int64))
    look = {"embedding": lambda: gt.nn.embedding(ids, table),
            "take": lambda: gt.take(table, ids, axis=0),
            "getitem": lambda: table[ids],
            "gather": lambda: gt.gather(table, ids)}[spell]
    with gt.GradientTape() as tape:
        loss = gt.sum(look())
    close16(tape.gradient(loss, table), np.array([[5000.0] * 2, [0.0] * 2, [0.0] * 2]))


def test_segment_sum_and_index_add_of_many_terms_in_float16(backend):
    d = gt.tensor(np.ones(5000, np.float16))
    ids = np.zeros(5000, np.int64)
    close16(gt.segment_sum(d, ids, 2), np.array([5000.0, 0.0]))
    close16(gt.index_add(gt.zeros(2, dtype="float16"), 0, ids, d), np.array([5000.0, 0.0]))


@pytest.mark.parametrize("opts", [{}, {"reduce": "sum", "max_norm": 1e9}])
def test_per_example_embedding_gradients_of_a_repeated_id_in_float16(backend, opts):
    table = gt.Variable(np.zeros((3, 2), np.float16))
    ids = gt.tensor(np.zeros((2, 3000), np.int64))
    with gt.GradientTape() as tape:
        loss = gt.sum(gt.nn.embedding(ids, table), axis=(1, 2))
    got = tape.per_example_gradients(loss, table, **opts)
    want = np.zeros((2, 3, 2))
    want[:, 0] = 3000.0
    close16(got, want.sum(0) if opts else want)


def test_a_compiled_step_gathering_a_row_many_times_in_float16():
    table = gt.Variable(np.zeros((3, 2), np.float16))

    @gt.function
    def step(ids):
        with gt.GradientTape() as tape:
            loss = gt.sum(gt.nn.embedding(ids, table))
        return tape.gradient(loss, table)

    for _ in range(3):  # trace, then replays
        got = step(gt.tensor(np.zeros(5000, np.int64)))
        close16(got, np.array([[5000.0] * 2, [0.0] * 2, [0.0] * 2]))


@pytest.mark.parametrize("name, f", [
    ("gelu", lambda x: gt.nn.gelu(x)), ("gelu_tanh", lambda x: gt.nn.gelu(x, approximate="tanh")),
    ("silu", lambda x: gt.nn.silu(x)), ("erf", lambda x: gt.erf(x))])
def test_float16_activation_gradients_are_evaluated_in_float32(backend, name, f):
    """Each step of the derivative rounded to float16: exact gelu 5-6% off at -4, its tanh
    form exactly 0 at -4 (39% off at -3.5)."""
    xs = np.array([-4.0, -3.5, -3.0, -1.0, 0.5, 2.0])
    with gt.GradientTape() as tape:
        x16 = gt.tensor(xs.astype(np.float16))
        tape.watch(x16)
        y = gt.sum(f(x16))
    g16 = tape.gradient(y, x16)
    with gt.GradientTape() as tape:
        x64 = gt.tensor(xs)
        tape.watch(x64)
        y = gt.sum(f(x64))
    g64 = tape.gradient(y, x64).numpy()
    assert g16.dtype == np.float16
    np.testing.assert_allclose(g16.numpy().astype(np.float64), g64, rtol=2e-3, atol=1e-7)


def test_float16_activation_derivatives_in_float32_on_every_path():
    """jvp, vmap(grad), jacrev and jacfwd rendered the derivative in gradtape ops, in float16:
    gelu_tanh'(-4) came out 0 there."""
    xs = np.array([-4.0, -3.5])
    f = lambda x: gt.nn.gelu(x, approximate="tanh")  # noqa: E731
    with gt.GradientTape() as tape:
        x64 = gt.tensor(xs)
        tape.watch(x64)
        y = gt.sum(f(x64))
    want = tape.gradient(y, x64).numpy()
    x16 = gt.tensor(xs.astype(np.float16))
    _, t = gt.jvp(f, (x16,), (gt.tensor(np.ones(2, np.float16)),))
    vg = gt.vmap(gt.grad(f))(x16)
    jr = np.diag(gt.jacrev(f)(x16).numpy())
    jf = np.diag(gt.jacfwd(f)(x16).numpy())
    for got in (t.numpy(), vg.numpy(), jr, jf):
        np.testing.assert_allclose(got.astype(np.float64), want, rtol=2e-3)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # (the float16 loss overflows: unused)
def test_a_large_float16_gelu_backward_is_not_fused_in_float16():
    """A fused host run computes in its dtype: 200k float16 gelu_tanh at -4 gave 0."""
    x = gt.tensor(np.full(200_000, -4.0, np.float16))
    with gt.GradientTape() as tape:
        tape.watch(x)
        y = gt.sum(gt.nn.gelu(x, approximate="tanh") * 2.0 + 1.0)
    g = tape.gradient(y, x).numpy()
    np.testing.assert_allclose(g.astype(np.float64), -6.702e-4, rtol=2e-3)


@pytest.mark.parametrize("spell", ["tile", "tile_inner", "repeat", "repeat_inner"])
def test_tile_and_repeat_gradients_sum_the_copies_in_float32(backend, spell):
    """The gradient of a tiled or repeated tensor sums its copies: in float16 a (1, 2) tensor
    tiled 40000 times stalled at a few thousand (spacing 4 past 4096)."""
    up = data(ROWS, 2, seed=7)
    up64 = up.astype(np.float64)
    f = {"tile": lambda s: gt.tile(s, (ROWS, 1)),
         "tile_inner": lambda s: gt.transpose(gt.tile(gt.transpose(s), (1, ROWS))),
         "repeat": lambda s: gt.repeat(s, ROWS, axis=0),
         "repeat_inner": lambda s: gt.transpose(gt.repeat(gt.transpose(s), ROWS, axis=1))}[spell]
    s = gt.Variable(np.ones((1, 2), np.float16))
    with gt.GradientTape() as tape:
        loss = gt.sum(f(s) * gt.tensor(up))
    close16(tape.gradient(loss, s), up64.sum(0, keepdims=True))


def test_einsum_and_dot_accumulate_in_float32(backend):
    """float16 einsum (forward, every subscript) and the gradients of einsum and dot are
    accumulated in float32 and rounded once, as matmul is: 'ji,jk->ik' over 40000 rows and a
    trace of 5000 entries stalled in float16."""
    x = data(ROWS, 2, seed=8)
    x64 = x.astype(np.float64)
    X = gt.tensor(x)
    ones = gt.tensor(np.ones((ROWS, 1), np.float16))
    close16(gt.transpose(X) @ ones, x64.sum(0)[:, None])  # (matmul: already so)
    close16(gt.einsum("ji,jk->ik", X, ones), x64.sum(0)[:, None])
    close16(gt.einsum("ij->j", X), x64.sum(0))
    d = np.diag(data(5000, seed=9)).astype(np.float16)
    close16(gt.einsum("ii", gt.tensor(d)), np.trace(d.astype(np.float64)))
    close16(gt.einsum("ii->i", gt.tensor(d)), np.diag(d.astype(np.float64)))
    W = gt.Variable(np.ones((2, 1), np.float16))
    for f in (lambda w: X @ w, lambda w: gt.einsum("ij,jk->ik", X, w), lambda w: gt.dot(X, w)):
        with gt.GradientTape() as tape:
            loss = gt.sum(f(W))
        close16(tape.gradient(loss, W), x64.sum(0)[:, None])


def test_per_example_einsum_gradients_over_a_long_axis_in_float16(backend):
    """A per-example weight gradient of einsum contracts each example's positions."""
    x = data(2, 20000, 3, seed=10)
    W = gt.Variable(np.ones((3, 2), np.float16))
    with gt.GradientTape() as tape:
        losses = gt.sum(gt.einsum("bld,dp->blp", gt.tensor(x), W), axis=(1, 2))
    got = tape.per_example_gradients(losses, [W])[0]
    close16(got, np.repeat(x.astype(np.float64).sum(1)[:, :, None], 2, axis=2))


@pytest.mark.parametrize("spell", ["max", "min", "norm_inf", "max_axis"])
def test_max_and_min_share_the_gradient_among_more_ties_than_float16_counts(backend, spell):
    """70000 tied maxima each get 1/70000 of the gradient: counted in float16, 70000 was inf
    and every share 0."""
    n = 70000
    f = {"max": gt.max, "min": gt.min, "norm_inf": lambda t: gt.norm(t + 1.0, ord=np.inf),
         "max_axis": lambda t: gt.max(gt.reshape(t, (n, 1)), axis=0)}[spell]
    x = gt.Variable(np.zeros(n, np.float16))
    with gt.GradientTape() as tape:
        y = gt.sum(f(x))
    g = tape.gradient(y, x)
    assert g.dtype == np.float16
    np.testing.assert_array_equal(g.numpy(), np.full(n, np.float16(1 / n)))
    _, t = gt.jvp(lambda v: gt.sum(f(v)), (x,), (gt.tensor(np.ones(n, np.float16)),))
    assert t.dtype == np.float16
    assert float(t) == 1.0
