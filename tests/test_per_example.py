"""tape.per_example_gradients: per-example gradients, DP-SGD clipping and their sum in one
reverse pass, against a loop of ordinary tape.gradient calls on one example each."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import gradtape as gt

# --------------------------------------------------------------------------- helpers


def loop_grads(fn, params, *batch):
    """The reference: one tape.gradient per example (its loss summed), stacked: [B, *shape]."""
    rows = []
    for b in range(len(batch[0])):
        with gt.GradientTape() as tape:
            loss = gt.sum(fn(*[a[b:b + 1] for a in batch]))
        rows.append([g.numpy() for g in tape.gradient(loss, params)])
    return [np.stack([r[k] for r in rows]) for k in range(len(params))]


def batch_grads(fn, params, *batch):
    with gt.GradientTape() as tape:
        loss = gt.sum(fn(*batch))
    return [g.numpy() for g in tape.gradient(loss, params)]


def per_example(fn, params, *batch, **kw):
    with gt.GradientTape() as tape:
        loss = fn(*batch)
    return tape.per_example_gradients(loss, params, **kw)


def clip_reference(ref, max_norm):
    """The DP-SGD formula on per-example gradients: (clipped per example, norms, factors)."""
    B = ref[0].shape[0]
    norms = np.sqrt(sum((r.reshape(B, -1).astype(np.float64) ** 2).sum(1) for r in ref))
    c = np.minimum(1.0, max_norm / norms)
    return [r * c.reshape((B,) + (1,) * (r.ndim - 1)) for r in ref], norms, c


def assert_close(got, want, tol):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        np.testing.assert_allclose(g.numpy(), w, rtol=tol, atol=tol)


# --------------------------------------------------------------------------- models


def mlp(dtype=np.float32):
    l1 = gt.nn.Dense(6, 9, activation="tanh", seed=0, dtype=dtype)
    l2 = gt.nn.Dense(9, 4, seed=1, dtype=dtype)

    def fn(x, y):
        return gt.nn.cross_entropy(l2(l1(gt.tensor(x))), y, reduction="none")

    return fn, [l1.kernel, l1.bias, l2.kernel, l2.bias]


def mlp_data(B=8, dtype=np.float32):
    rng = np.random.default_rng(1)
    return rng.normal(size=(B, 6)).astype(dtype), rng.integers(0, 4, size=B)


def cnn():
    # conv (padding 1) 1->3, relu, max pool 2, conv 3->4, relu, max pool 2, dense (float64)
    c1 = gt.nn.Conv2D(1, 3, 3, padding=1, activation="relu", seed=0, dtype=np.float64)
    c2 = gt.nn.Conv2D(3, 4, 3, activation="relu", seed=1, dtype=np.float64)
    d = gt.nn.Dense(4, 3, seed=2, dtype=np.float64)

    def fn(x, y):
        h = gt.nn.max_pool2d(c1(gt.tensor(x)), 2)                 # [B, 3, 5, 5]
        h = gt.nn.max_pool2d(c2(h), 2)                            # [B, 4, 1, 1]
        return gt.nn.cross_entropy(d(gt.reshape(h, (h.shape[0], -1))), y, reduction="none")

    return fn, [c1.kernel, c1.bias, c2.kernel, c2.bias, d.kernel, d.bias]


def cnn_data(B=5):
    rng = np.random.default_rng(2)
    return rng.normal(size=(B, 1, 10, 10)), rng.integers(0, 3, size=B)


def conv_variety():
    # grouped, strided, dilated and transposed convolutions whose weights get per-example
    # gradients (float64): each has its own per-example weight-gradient layout
    rng = np.random.default_rng(4)
    w1 = gt.Variable(rng.normal(size=(4, 1, 3, 3)))           # 2 -> 4 channels, groups 2
    w2 = gt.Variable(rng.normal(size=(4, 2, 2, 2)) * 0.5)     # stride 2, dilation 1, groups 2
    w3 = gt.Variable(rng.normal(size=(3, 4, 3, 3)) * 0.3)     # dilation 2, padding 2
    wt = gt.Variable(rng.normal(size=(3, 2, 3, 3)) * 0.3)     # conv_transpose2d 3 -> 2, stride 2

    def fn(x, y):
        h = gt.tanh(gt.nn.conv2d(gt.tensor(x), w1, padding=1, groups=2))      # [B, 4, 9, 9]
        h = gt.tanh(gt.nn.conv2d(h, w2, stride=2, groups=2))                  # [B, 4, 4, 4]
        h = gt.tanh(gt.nn.conv2d(h, w3, padding=2, dilation=2))               # [B, 3, 4, 4]
        h = gt.nn.conv_transpose2d(h, wt, stride=2)                           # [B, 2, 9, 9]
        return gt.sum(gt.reshape(h, (h.shape[0], -1)) ** 2, axis=1) * gt.tensor(y)

    return fn, [w1, w2, w3, wt]


def conv_variety_data(B=4):
    rng = np.random.default_rng(5)
    return rng.normal(size=(B, 2, 9, 9)), rng.uniform(0.5, 1.5, size=B)


def embed_model(V=11, D=4, H=8):
    emb = gt.nn.Embedding(V, D, seed=0)
    l1 = gt.nn.Dense(D, H, activation="tanh", seed=1)
    l2 = gt.nn.Dense(H, 3, seed=2)

    def fn(ids, y):
        h = l1(emb(ids))                                          # [B, L, H]: a sequence
        return gt.nn.cross_entropy(l2(gt.mean(h, axis=1)), y, reduction="none")

    return fn, [emb.table, l1.kernel, l1.bias, l2.kernel, l2.bias]


def embed_data(B=6, L=5, V=11):
    rng = np.random.default_rng(3)
    ids = rng.integers(0, V, size=(B, L))
    ids[:, 1] = ids[:, 0]  # repeated ids within an example accumulate
    return ids, rng.integers(0, 3, size=B)


MODELS = {
    "mlp": (mlp, mlp_data, 1e-5),
    "cnn": (cnn, cnn_data, 1e-10),
    "conv_variety": (conv_variety, conv_variety_data, 1e-10),
    "embedding": (embed_model, embed_data, 1e-5),
}


# --------------------------------------------------------------------------- per-example values


@pytest.mark.parametrize("name", sorted(MODELS))
def test_per_example_equals_single_example_gradients(backend, name):
    make, data, tol = MODELS[name]
    fn, params = make()
    batch = data()
    got = per_example(fn, params, *batch)
    ref = loop_grads(fn, params, *batch)
    assert_close(got, ref, tol)
    for g, p in zip(got, params):
        assert g.dtype == p.dtype
    # and they sum to the batch gradient
    for g, w in zip(got, batch_grads(fn, params, *batch)):
        np.testing.assert_allclose(g.numpy().sum(0), w, rtol=tol * 10, atol=tol * 10)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_clipped_sum_equals_the_loop_formula(backend, name):
    make, data, tol = MODELS[name]
    fn, params = make()
    batch = data()
    ref = loop_grads(fn, params, *batch)
    norms = clip_reference(ref, 1.0)[1]
    C = float(np.median(norms))
    clipped, norms, c = clip_reference(ref, C)
    assert (c < 1).any() and (c == 1).any()  # some examples clipped, some not
    got, got_norms = per_example(fn, params, *batch, max_norm=C, reduce="sum", return_norms=True)
    assert_close(got, [r.sum(0) for r in clipped], tol * 10)
    np.testing.assert_allclose(got_norms.numpy(), norms, rtol=tol * 10)
    assert got_norms.shape == (len(batch[0]),) and got_norms.dtype == params[0].dtype
    # per example (reduce=None) with clipping
    got = per_example(fn, params, *batch, max_norm=C)
    assert_close(got, clipped, tol)


def test_sum_without_clipping_is_the_batch_gradient():
    fn, params = mlp()
    batch = mlp_data()
    got = per_example(fn, params, *batch, reduce="sum")
    assert_close(got, batch_grads(fn, params, *batch), 1e-5)
    got, norms = per_example(fn, params, *batch, reduce="sum", return_norms=True)
    assert_close(got, batch_grads(fn, params, *batch), 1e-5)
    np.testing.assert_allclose(norms.numpy(), clip_reference(loop_grads(fn, params, *batch), 1.0)[1],
                               rtol=1e-5)


def test_return_norms_unclipped_per_example():
    fn, params = mlp()
    batch = mlp_data()
    ref = loop_grads(fn, params, *batch)
    want = clip_reference(ref, 1.0)[1]
    grads, norms = per_example(fn, params, *batch, return_norms=True)
    assert_close(grads, ref, 1e-5)
    np.testing.assert_allclose(norms.numpy(), want, rtol=1e-5)
    grads, norms = per_example(fn, params, *batch, max_norm=0.1, return_norms=True)
    np.testing.assert_allclose(norms.numpy(), want, rtol=1e-5)  # the norms before clipping
    got_norms = np.sqrt(sum((g.numpy().reshape(len(want), -1) ** 2).sum(1) for g in grads))
    np.testing.assert_allclose(got_norms, np.minimum(want, 0.1), rtol=1e-5)


def test_target_with_several_values_per_example():
    rng = np.random.default_rng(4)
    w = gt.Variable(rng.normal(size=(5, 3)))
    b = gt.Variable(rng.normal(size=3))
    x = rng.normal(size=(7, 5))

    def fn(xb):
        return gt.tanh(gt.tensor(xb) @ w + b)  # [B, 3]: summed within each example

    got = per_example(fn, [w, b], x)
    assert_close(got, loop_grads(fn, [w, b], x), 1e-12)
    clipped = clip_reference(loop_grads(fn, [w, b], x), 0.5)[0]
    assert_close(per_example(fn, [w, b], x, max_norm=0.5, reduce="sum"), [r.sum(0) for r in clipped],
                 1e-12)


def test_parameters_through_param_only_ops_and_sharing(backend):
    """W.T, reshape, astype, elementwise ops on parameters and a weight used twice."""
    rng = np.random.default_rng(5)
    w = gt.Variable(rng.normal(size=(4, 4)))
    v = gt.Variable(rng.normal(size=(2, 4)))
    s = gt.Variable(rng.normal(size=(4,)).astype(np.float32))
    x = rng.normal(size=(6, 4))

    def fn(xb):
        h = gt.tanh(gt.tensor(xb) @ w.T)                          # transpose of a parameter
        h = gt.tanh(h @ w)                                        # the same weight again
        h = h * gt.exp(s.astype("float64"))                       # astype, elementwise on a param
        h = h + gt.reshape(v, (8,))[:4]                           # reshape, getitem of a param
        return gt.sum(h * h, axis=1)

    params = [w, v, s]
    ref = loop_grads(fn, params, x)
    got = per_example(fn, params, x)
    assert got[2].dtype == np.float32
    assert_close(got, ref, 1e-5)
    clipped = clip_reference(ref, 1.0)[0]
    assert_close(per_example(fn, params, x, max_norm=1.0, reduce="sum"), [r.sum(0) for r in clipped], 1e-5)


def test_nested_sources_keep_their_structure():
    fn, params = mlp()
    batch = mlp_data()
    got = per_example(fn, {"w": params[0], "rest": (params[1], [params[2]])}, *batch)
    assert set(got) == {"w", "rest"} and isinstance(got["rest"], tuple)
    np.testing.assert_allclose(got["rest"][1][0].numpy(), loop_grads(fn, params, *batch)[2], atol=1e-5)


def test_embedding_materialized_when_positions_outnumber_the_table():
    # L * L > V * D: the embedding's per-example gradient is materialized instead of ghosted
    fn, params = embed_model(V=3, D=2, H=4)
    ids, y = embed_data(L=9, V=3)
    ref = loop_grads(fn, params, ids, y)
    C = float(np.median(clip_reference(ref, 1.0)[1]))
    clipped = clip_reference(ref, C)[0]
    assert_close(per_example(fn, params, ids, y, max_norm=C, reduce="sum"), [r.sum(0) for r in clipped], 1e-5)


# --------------------------------------------------------------------------- memory


def _ghost_saves_memory(peak, losses, w, data, y, ref, C, share):
    """The clipped sum of ``losses`` over ``w`` (max_norm ``C``, with norms) peaks lower than
    the materialized per-example gradients by at least ``share`` of their bytes, and equals
    the loop formula on ``ref`` (the per-example gradients of a loop)."""
    def run(reduce):
        with gt.GradientTape() as tape:
            loss = losses(data, y)
        return tape.per_example_gradients(loss, w, max_norm=C, reduce=reduce, return_norms=True)

    ghost = peak(lambda: run("sum"))
    materialized = peak(lambda: run(None))
    per_example_bytes = len(y) * w.numpy().size * 4
    assert materialized >= per_example_bytes
    assert ghost < materialized - share * per_example_bytes, (ghost, materialized)
    got, norms = run("sum")
    clipped, want_norms, factors = clip_reference(ref, C)
    np.testing.assert_allclose(norms.numpy(), want_norms, rtol=1e-4)
    np.testing.assert_allclose(got.numpy(), clipped[0].sum(0), rtol=1e-4, atol=1e-6)
    return run, factors


def test_ghost_clipping_keeps_memory_O_of_batch_plus_parameters(peak_bytes):
    """d * p >> B: per-example gradients [B, d, p] dominate the materialized path's memory;
    the ghost path keeps O(B + d * p) beyond the activations."""
    peak = peak_bytes
    B, d, p = 16, 384, 384
    rng = np.random.default_rng(6)
    w = gt.Variable((rng.normal(size=(d, p)) / np.sqrt(d)).astype(np.float32))
    x = rng.normal(size=(B, d)).astype(np.float32)
    y = rng.integers(0, p, size=B)

    def run(reduce):
        with gt.GradientTape() as tape:
            loss = gt.nn.cross_entropy(gt.tensor(x) @ w, y, reduction="none")
        out = tape.per_example_gradients(loss, w, max_norm=1.0, reduce=reduce)
        return out

    ghost = peak(lambda: run("sum"))
    materialized = peak(lambda: run(None))
    per_example_bytes = B * d * p * 4
    assert materialized >= per_example_bytes
    assert ghost < materialized / 6, (ghost, materialized)
    assert ghost < 4 * d * p * 4  # a few parameter-sized buffers, no [B, d, p]
    # same result as the loop formula
    got = run("sum").numpy()
    ref = loop_grads(lambda xb, yb: gt.nn.cross_entropy(gt.tensor(xb) @ w, yb, reduction="none"), [w], x, y)
    np.testing.assert_allclose(got, clip_reference(ref, 1.0)[0][0].sum(0), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("layer", ["conv2d", "conv_transpose2d"])
def test_ghost_clipping_of_convolution_weights_keeps_memory_O_of_batch_plus_parameters(layer, peak_bytes):
    """A convolution with many weights over small images: per-example weight gradients
    [B, O, C, 3, 3] dominate the materialized path's memory; the clipped sum forms them a
    chunk of examples at a time for the norms only (several chunks here) and sums the scaled
    cotangent with one weight-gradient product, in O(B + P) beyond the activations."""
    B, C, Co = 48, 64, 64
    rng = np.random.default_rng(11)
    shape = (Co, C, 3, 3) if layer == "conv2d" else (C, Co, 3, 3)
    w = gt.Variable((rng.normal(size=shape) / 24).astype(np.float32))
    x = rng.normal(size=(B, C, 3, 3)).astype(np.float32)
    y = rng.integers(0, 10, size=B)
    head = gt.tensor((rng.normal(size=(Co * (3 if layer == "conv2d" else 5) ** 2, 10)) / 30)
                     .astype(np.float32))

    def losses(xb, yb):
        if layer == "conv2d":
            h = gt.nn.conv2d(gt.tensor(xb), w, padding=1)
        else:
            h = gt.nn.conv_transpose2d(gt.tensor(xb), w)
        return gt.nn.cross_entropy(gt.tanh(gt.reshape(h, (h.shape[0], -1))) @ head, yb,
                                   reduction="none")

    ref = loop_grads(losses, [w], x, y)
    C = float(np.median(clip_reference(ref, 1.0)[1]))  # about half the examples clipped
    # (both routes keep the forward's unfolded images, 1.7 MB here: the activations)
    run, factors = _ghost_saves_memory(peak_bytes, losses, w, x, y, ref, C, 0.6)
    assert 0 < (factors < 1).sum() < B
    got, norms = run("sum")
    # and a compiled step gives the eager results
    step = gt.function(lambda: run("sum"))
    for _ in range(3):
        c_got, c_norms = step()
    np.testing.assert_array_equal(c_got.numpy(), got.numpy())
    np.testing.assert_array_equal(c_norms.numpy(), norms.numpy())


@pytest.mark.parametrize("kind", ["embedding", "sequence"])
def test_ghost_clipping_of_embeddings_and_sequences_keeps_memory_O_of_batch_plus_parameters(kind, peak_bytes):
    """An embedding table and a dense layer over a sequence (their Gram-matrix norms): the
    clipped sum never forms [B, *table.shape] or [B, d, p], unlike the materialized path."""
    rng = np.random.default_rng(12)
    B = 32
    if kind == "embedding":
        V, D, L = 2000, 32, 6  # L * L <= V * D: the ghost route
        w = gt.Variable((rng.normal(size=(V, D)) / 8).astype(np.float32))
        data = rng.integers(0, V, size=(B, L))
        head = gt.tensor((rng.normal(size=(D, 5)) / 8).astype(np.float32))

        def losses(ids, yb):
            h = gt.mean(gt.tanh(w[ids]), axis=1)                       # [B, D]
            return gt.nn.cross_entropy(h @ head, yb, reduction="none")
    else:
        d, p, T = 256, 256, 8  # T * T <= d * p: the Gram route
        w = gt.Variable((rng.normal(size=(d, p)) / 16).astype(np.float32))
        data = rng.normal(size=(B, T, d)).astype(np.float32)
        head = gt.tensor((rng.normal(size=(p, 5)) / 16).astype(np.float32))

        def losses(x, yb):
            h = gt.mean(gt.tanh(gt.tensor(x) @ w), axis=1)            # [B, p]
            return gt.nn.cross_entropy(h @ head, yb, reduction="none")
    y = rng.integers(0, 5, size=B)
    ref = loop_grads(losses, [w], data, y)
    C = float(np.median(clip_reference(ref, 1.0)[1]))
    _ghost_saves_memory(peak_bytes, losses, w, data, y, ref, C, 0.8)


# --------------------------------------------------------------------------- unconnected, tape use


@pytest.mark.parametrize("reduce", [None, "sum"])
def test_unconnected_sources(backend, reduce):
    fn, params = mlp()
    batch = mlp_data()
    unused = gt.Variable(np.ones((2, 3), np.float32))
    B = len(batch[0])
    got = per_example(fn, [params[0], unused], *batch, reduce=reduce, max_norm=1.0)
    assert got[1] is None
    got = per_example(fn, [params[0], unused], *batch, reduce=reduce, max_norm=1.0,
                      unconnected_gradients="zero")
    want_shape = (2, 3) if reduce else (B, 2, 3)
    assert got[1].shape == want_shape and not got[1].numpy().any() and got[1].dtype == np.float32
    with pytest.raises(gt.UnconnectedGradientError):
        per_example(fn, [params[0], unused], *batch, reduce=reduce, unconnected_gradients="raise")


def test_target_not_depending_on_the_sources():
    v = gt.Variable([1.0, 2.0])
    w = gt.Variable([3.0])
    with gt.GradientTape() as tape:
        loss = gt.tensor(np.ones((4, 2), np.float32)) @ v
    grads, norms = tape.per_example_gradients(loss, [w], return_norms=True, unconnected_gradients="zero")
    assert grads[0].shape == (4, 1) and not grads[0].numpy().any()
    assert norms.shape == (4,) and not norms.numpy().any()


def test_non_persistent_tape_allows_one_call():
    fn, params = mlp()
    x, y = mlp_data()
    with gt.GradientTape() as tape:
        loss = fn(x, y)
    tape.per_example_gradients(loss, params)
    with pytest.raises(RuntimeError, match="non-persistent"):
        tape.per_example_gradients(loss, params)
    with gt.GradientTape() as tape:
        loss = fn(x, y)
    tape.per_example_gradients(loss, params)
    with pytest.raises(RuntimeError, match="non-persistent"):
        tape.gradient(gt.sum(loss), params)
    with gt.GradientTape(persistent=True) as tape:
        loss = fn(x, y)
        total = gt.sum(loss)
    a = tape.per_example_gradients(loss, params, max_norm=1.0, reduce="sum")
    b = tape.per_example_gradients(loss, params, max_norm=1.0, reduce="sum")
    assert_close(a, [t.numpy() for t in b], 0)
    assert_close(tape.per_example_gradients(loss, params, reduce="sum"),
                 [t.numpy() for t in tape.gradient(total, params)], 1e-6)


# --------------------------------------------------------------------------- bad arguments


@pytest.mark.parametrize("kwargs, exc, words", [
    ({"max_norm": 0.0}, ValueError, ["max_norm", "positive", "0.0"]),
    ({"max_norm": -1}, ValueError, ["max_norm", "positive", "-1"]),
    ({"max_norm": float("nan")}, ValueError, ["max_norm"]),
    ({"max_norm": "1"}, TypeError, ["max_norm", "str"]),
    ({"max_norm": True}, TypeError, ["max_norm", "bool"]),
    ({"reduce": "mean"}, ValueError, ["reduce", "'sum'", "'mean'"]),
    ({"return_norms": "yes"}, TypeError, ["return_norms", "str"]),
    ({"unconnected_gradients": "zeros"}, ValueError, ["unconnected_gradients", "'zeros'"]),
])
def test_bad_arguments(kwargs, exc, words):
    fn, params = mlp()
    x, y = mlp_data()
    with gt.GradientTape() as tape:
        loss = fn(x, y)
    with pytest.raises(exc) as info:
        tape.per_example_gradients(loss, params, **kwargs)
    for w in words:
        assert w in str(info.value)
    assert len(tape.per_example_gradients(loss, params)) == 4  # a rejected call leaves the tape usable


def test_bad_targets_and_sources():
    fn, params = mlp()
    x, y = mlp_data()
    with gt.GradientTape(persistent=True) as tape:
        loss = fn(x, y)
        mean = gt.mean(loss)
        mixed = loss - gt.mean(loss)  # examples interact through the batch mean
        own = gt.sum(params[0] * params[0], axis=1)  # no per-example data
    with pytest.raises(ValueError, match=r"target must have the batch axis first.*reduction='none'"):
        tape.per_example_gradients(mean, params)
    with pytest.raises(TypeError, match="target must be one gradtape Tensor"):
        tape.per_example_gradients([loss], params)
    with pytest.raises(TypeError, match="target is None"):
        tape.per_example_gradients(None, params)
    with pytest.raises(ValueError, match="mixes the examples"):
        tape.per_example_gradients(mixed, params)
    with pytest.raises(ValueError, match="computed from the sources alone"):
        tape.per_example_gradients(own, params[0])
    with pytest.raises(TypeError, match="floating-point sources"):
        tape.per_example_gradients(loss, gt.tensor([1, 2]))
    with pytest.raises(TypeError, match=r"sources\[1\] must be a gradtape Tensor"):
        tape.per_example_gradients(loss, [params[0], np.ones(2)])


def test_unsupported_layer_raises_naming_the_primitive():
    rng = np.random.default_rng(7)
    w = gt.Variable(rng.normal(size=(3, 2)))
    x = gt.tensor(rng.normal(size=(4, 3)))
    with gt.GradientTape(persistent=True) as tape:
        loss = gt.sum(gt.outer(x[:, 0], w[:, 0]), axis=1)  # outer(x's column, w's column)
        total = gt.sum(loss)
    with pytest.raises(NotImplementedError, match=r"'outer'.*gt\.vmap\(gt\.grad"):
        tape.per_example_gradients(loss, w)
    # the plain sum needs no per-example rule: it is the batch gradient
    np.testing.assert_allclose(tape.per_example_gradients(loss, w, reduce="sum").numpy(),
                               tape.gradient(total, w).numpy())


def test_edge_cases_empty_batch_leading_axes_watched_input():
    rng = np.random.default_rng(8)
    x = gt.tensor(rng.normal(size=(4, 3)))
    b1 = gt.Variable(rng.normal(size=(1, 3)))  # a leading 1 against the batch axis
    bB = gt.Variable(rng.normal(size=(4, 3)))  # a leading B: row b is example b's alone
    with gt.GradientTape() as tape:
        tape.watch(x)  # a watched per-example input that is not a source is data
        loss = gt.sum(gt.tanh(x + b1 + bB), axis=1)
    g1, gB = tape.per_example_gradients(loss, [b1, bB])
    d = 1 - np.tanh(x.numpy() + b1.numpy() + bB.numpy()) ** 2
    np.testing.assert_allclose(g1.numpy(), d[:, None, :], rtol=1e-12)
    want = np.zeros((4, 4, 3))
    want[np.arange(4), np.arange(4)] = d
    np.testing.assert_allclose(gB.numpy(), want, rtol=1e-12)
    dense = gt.nn.Dense(3, 2, seed=0)
    for reduce, shapes in [(None, [(0, 3, 2), (0, 2)]), ("sum", [(3, 2), (2,)])]:
        with gt.GradientTape() as tape:
            loss = gt.sum(dense(gt.tensor(np.zeros((0, 3), np.float32))), axis=1)
        grads, norms = tape.per_example_gradients(loss, [dense.kernel, dense.bias], max_norm=1.0,
                                                  reduce=reduce, return_norms=True)
        assert [g.shape for g in grads] == shapes and norms.shape == (0,)
        assert not any(g.numpy().any() for g in grads)


def test_custom_gradients_between_layers_and_no_records_left_on_a_recording_tape():
    @gt.custom_gradient
    def softsign(x):
        def grad(dy):
            return dy / (1 + gt.abs(x)) ** 2
        return x / (1 + gt.abs(x)), grad

    @gt.custom_gradient
    def pair(x):  # two outputs
        def grad(da, db):
            return (0 if da is None else da) + (0 if db is None else 2 * db)
        return (x * 1.0, x * 2.0), grad

    dense = gt.nn.Dense(3, 4, seed=0, dtype=np.float64)
    x = np.random.default_rng(9).normal(size=(5, 3))

    def fn(xb):
        a, b = pair(softsign(dense(gt.tensor(xb))))
        return gt.sum(a * b, axis=1)

    params = [dense.kernel, dense.bias]
    ref = loop_grads(fn, params, x)
    with gt.GradientTape(persistent=True) as tape:
        loss = fn(x)
        n = len(tape.recorded_ops())
        got = tape.per_example_gradients(loss, params)
        summed = tape.per_example_gradients(loss, params, max_norm=0.5, reduce="sum")
        assert len(tape.recorded_ops()) == n  # first order: the pass itself is not recorded
    assert_close(got, ref, 1e-12)
    assert_close(summed, [r.sum(0) for r in clip_reference(ref, 0.5)[0]], 1e-12)


def test_per_example_gradients_equal_vmap_of_grad():
    """The one-pass per-example gradients and the general route give the same result:
    ``gt.vmap(gt.grad(loss1), in_axes=(None, 0, 0))(params, X, Y)``, for an MLP and a CNN."""
    rng = np.random.default_rng(5)
    X = gt.tensor(rng.standard_normal((6, 1, 6, 6)))
    Y = gt.tensor(rng.integers(0, 3, size=6))
    params = {"K": gt.tensor(rng.standard_normal((2, 1, 3, 3)) * 0.5),
              "b": gt.tensor(rng.standard_normal(2) * 0.1),
              "W": gt.tensor(rng.standard_normal((2 * 3 * 3, 3)) * 0.3),
              "c": gt.tensor(np.zeros(3))}

    def logits(p: dict, x: gt.Tensor) -> gt.Tensor:  # x: [N, 1, 6, 6]
        h = gt.tanh(gt.nn.conv2d(x, p["K"], padding=1) + gt.reshape(p["b"], (1, -1, 1, 1)))
        h = gt.nn.max_pool2d(h, 2)
        return gt.reshape(h, (x.shape[0], -1)) @ p["W"] + p["c"]

    def loss1(p: dict, x: gt.Tensor, y: gt.Tensor) -> gt.Tensor:  # one example
        return gt.nn.cross_entropy(logits(p, gt.reshape(x, (1,) + x.shape)),
                                   gt.reshape(y, (1,)))

    names = sorted(params)
    with gt.GradientTape() as tape:
        tape.watch([params[k] for k in names])
        losses = gt.nn.cross_entropy(logits(params, X), Y, reduction="none")
    one_pass = tape.per_example_gradients(losses, [params[k] for k in names])
    via_vmap = gt.vmap(gt.grad(loss1), in_axes=(None, 0, 0))(params, X, Y)
    for k, g in zip(names, one_pass):
        np.testing.assert_allclose(g.numpy(), via_vmap[k].numpy(), rtol=1e-9, atol=1e-12)


def test_norms_do_not_depend_on_the_tensors_ids():
    """The per-example norms sum each source's squares in the order the sources are given,
    not in an order of their ids: the same call gives the same bits (here NaN norms, whose
    sign is the first NaN term's) whatever tensors were made before it."""
    rng = np.random.default_rng(7)
    X = rng.standard_normal((4, 3, 8, 8)).astype(np.float32)
    flat = X.reshape(-1)
    at = np.random.default_rng(1).choice(flat.size, size=flat.size // 5, replace=False)
    flat[at] = np.random.default_rng(2).choice(
        np.array([np.nan, -np.nan, np.inf, -np.inf, -0.0, 0.0], np.float32), size=at.size)
    W0 = (rng.standard_normal((5, 3, 3, 3)) * 0.5).astype(np.float32)
    b0 = rng.standard_normal(5).astype(np.float32)
    D0 = (rng.standard_normal((80, 6)) * 0.3).astype(np.float32)

    def norms(shift):
        _ = [gt.Variable(np.zeros(1, np.float32)) for _ in range(shift)]
        W, b, D = gt.Variable(W0), gt.Variable(b0), gt.Variable(D0)
        with np.errstate(all="ignore"):
            with gt.GradientTape() as tape:
                h = gt.nn.conv2d(gt.tensor(X), W, padding=1) + gt.reshape(b, (1, 5, 1, 1))
                o = gt.reshape(gt.nn.max_pool2d(gt.relu(h), 2), (4, 80)) @ D
                losses = gt.sum(o * o, axis=1) + gt.sum(h * h, axis=(1, 2, 3)) * 0.01
            return tape.per_example_gradients(losses, [W, b, D], return_norms=True)[1].numpy()

    first = norms(0)
    assert np.isnan(first).any()
    for shift in range(1, 12):
        np.testing.assert_array_equal(norms(shift).view(np.uint32), first.view(np.uint32))


# --------------------------------------------------------------------------- found by fuzzing
def _loop(f, w, X):
    return np.stack([gt.grad(f)(w, X[b]).numpy() for b in range(X.shape[0])])


def test_a_parameter_term_broadcast_to_every_example_adds_to_its_data_term():
    # sum(w) reaches each example's loss unbroadcast: its cotangent is a view, not the pass's
    # own array, so the data term's contribution must not be added into it in place
    rng = np.random.default_rng(0)
    X = gt.tensor(rng.standard_normal((6, 4, 1)))
    w = gt.tensor(np.full((1, 1), 0.5))
    with gt.GradientTape() as tape:
        tape.watch(w)
        out = gt.sum(gt.matmul(X, w), axis=(1, 2)) + 0.1 * gt.sum(w)
    got = tape.per_example_gradients(out, w).numpy()
    np.testing.assert_allclose(got, _loop(lambda w, x: gt.sum(x @ w) + 0.1 * gt.sum(w), w, X))


def test_per_example_gradients_of_a_sliced_parameter_term_compile():
    # the per-example form of a parameter slice is written into a buffer made like the
    # cotangent, which the gt.function trace follows
    def step(x, w1, w2):
        with gt.GradientTape() as tape:
            tape.watch([w1, w2])
            pen = 0.1 * gt.sum(gt.relu((w2 - w1)[:-1]))
            out = gt.sum(gt.swapaxes(x @ w2, 2, 1), axis=(1, 2)) + pen
        return tape.per_example_gradients(out, [w1, w2], max_norm=1.0, reduce="sum",
                                          return_norms=True)

    rng = np.random.default_rng(0)
    x = gt.tensor(rng.standard_normal((6, 2, 5)))
    w1, w2 = gt.tensor(np.float64(0.3)), gt.tensor(rng.standard_normal((5, 4)))
    f = gt.function(step)
    for _ in range(3):
        (g1, g2), norms = f(x, w1, w2)
        (e1, e2), enorms = step(x, w1, w2)
        for a, b in ((g1, e1), (g2, e2), (norms, enorms)):
            np.testing.assert_array_equal(a.numpy(), b.numpy())


@pytest.mark.parametrize("max_norm", [None, 0.5])
def test_a_scalar_parameter_summed_over_examples_keeps_its_shape(max_norm):
    rng = np.random.default_rng(0)
    x = gt.tensor(rng.standard_normal((6, 2)))
    w = gt.tensor(np.float64(0.3))
    with gt.GradientTape(persistent=True) as tape:
        tape.watch(w)
        out = gt.sum(x * w, axis=1)
    per = tape.per_example_gradients(out, w).numpy()
    got = tape.per_example_gradients(out, w, max_norm=max_norm, reduce="sum")
    assert got.shape == ()
    scale = 1.0 if max_norm is None else np.minimum(1.0, max_norm / np.abs(per))
    np.testing.assert_allclose(got.numpy(), np.sum(per * scale))


def test_a_parameter_with_a_leading_axis_of_batch_size_compiles():
    w = gt.Variable(np.arange(6.0).reshape(3, 2) / 10)
    x = gt.tensor(np.ones((3, 2)))

    def step(x):
        with gt.GradientTape() as tape:
            loss = gt.sum(gt.sin(x * w), axis=1)
        return tape.per_example_gradients(loss, w)

    want = step(x).numpy()
    f = gt.function(step)
    for _ in range(3):
        np.testing.assert_array_equal(f(x).numpy(), want)


@pytest.mark.parametrize("spell", ["ids", "ids_colon", "ids_ellipsis"])
def test_embedding_lookups_spelled_with_trailing_slices(spell):
    rng = np.random.default_rng(0)
    T = gt.tensor(rng.standard_normal((7, 3)))
    ids = np.array([[1, 2], [2, 6], [0, 1]])

    def look(T, i):
        return {"ids": lambda: T[i], "ids_colon": lambda: T[i, :], "ids_ellipsis": lambda: T[i, ...]}[spell]()

    with gt.GradientTape() as tape:
        tape.watch(T)
        out = gt.sum(gt.tanh(look(T, ids)), axis=(1, 2))
    got = tape.per_example_gradients(out, T).numpy()
    want = np.stack([gt.grad(lambda T, b=b: gt.sum(gt.tanh(T[ids[b]])))(T).numpy() for b in range(3)])
    np.testing.assert_allclose(got, want)


def test_a_position_table_broadcast_against_the_batch_is_refused_not_mixed():
    # P[arange(T)] has T rows; with T == B it looks per-example, but it broadcasts against
    # x[B, T, D] from its last axis: its rows are positions, not examples
    rng = np.random.default_rng(0)
    B = T = 4
    x = gt.tensor(rng.standard_normal((B, T, 3)))
    P = gt.tensor(rng.standard_normal((T, 3)))
    with gt.GradientTape() as tape:
        tape.watch(P)
        out = gt.sum(gt.tanh(x + P[np.arange(T)]), axis=(1, 2))
    with pytest.raises(ValueError, match=r"broadcasts a tensor of shape \(4, 3\) against a rank-3"):
        tape.per_example_gradients(out, P)


def test_float32_norms_past_float32_squares_are_finite():
    if gt.backend_name() != "numpy":
        pytest.skip("formed again in float64 on NumPy only (a device would read the norms back)")
    x = gt.tensor(np.array([[1e20, 0.0], [1.0, 2.0]], np.float32))
    w = gt.tensor(np.ones(2, np.float32))
    with gt.GradientTape() as tape:
        tape.watch(w)
        out = gt.sum(x * w, axis=1)
    sums, norms = tape.per_example_gradients(out, w, max_norm=1.0, reduce="sum", return_norms=True)
    np.testing.assert_allclose(norms.numpy(), [1e20, np.sqrt(5.0)], rtol=1e-6)
    np.testing.assert_allclose(sums.numpy(), [1.0 + 1 / np.sqrt(5), 2 / np.sqrt(5)], rtol=1e-6)


def test_float32_norms_past_float32_squares_inside_a_step_equal_eager():
    """Inside a ``gt.function`` step the float64 retry is taken at each replay where that
    call's squares overflow (a dense layer's ghost norm, an embedding's, a materialized
    bias), with the same results as the eager step."""
    if gt.backend_name() != "numpy":
        pytest.skip("formed again in float64 on NumPy only (a device would read the norms back)")
    rng = np.random.default_rng(0)
    W = gt.Variable(rng.standard_normal((3, 2)).astype(np.float32))
    b = gt.Variable(np.zeros(2, np.float32))
    E = gt.Variable(rng.standard_normal((5, 2)).astype(np.float32))

    def step(x, ids, s):
        with gt.GradientTape() as tape:
            h = x @ W + b + gt.sum(E[ids], axis=1)
            out = gt.sum(h * s, axis=1)
        return tape.per_example_gradients(out, [W, b, E], max_norm=1.0, reduce="sum",
                                          return_norms=True)

    f = gt.function(step)
    for scale in (1.0, 1e20, 2.0, 3e19):
        x = gt.tensor(rng.standard_normal((4, 3)).astype(np.float32))
        ids = gt.tensor(rng.integers(0, 5, (4, 3)))
        s = gt.tensor(np.array([[scale, 1.0]] * 2 + [[1.0, 1.0]] * 2, np.float32))
        (want, wn), (got, gn) = step(x, ids, s), f(x, ids, s)
        assert np.all(np.isfinite(wn.numpy())) and wn.numpy()[0] > (1e19 if scale > 1e19 else 0)
        np.testing.assert_array_equal(gn.numpy(), wn.numpy())
        for a, c in zip(want, got):
            np.testing.assert_array_equal(c.numpy(), a.numpy())
    assert f.trace_count <= 2


def test_per_example_gradients_of_an_embedding_table_compile():
    """``reduce=None`` through an embedding lookup: the scatter wrote a flat buffer and the
    result was a reshape of it, which the replay could not follow, so the step ran eagerly
    at every call (with a warning)."""
    rng = np.random.default_rng(0)
    E = gt.Variable(rng.random((5, 3)))

    def step(ids, w):
        with gt.GradientTape() as tape:
            rows = gt.nn.embedding(ids, E) if ids.ndim == 1 else E[ids]
            out = gt.sum(rows ** 2 * w, axis=tuple(range(1, ids.ndim + 1)))
        return tape.per_example_gradients(out, E)

    f = gt.function(step)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for shape in [(4,), (4,), (4,), (4, 3), (4, 3), (4, 3)]:
            ids = gt.tensor(rng.integers(0, 5, shape))
            w = gt.tensor(rng.random(shape + (3,)))
            got, want = f(ids, w), step(ids, w)
            np.testing.assert_array_equal(got.numpy(), want.numpy())
            for b in range(4):
                with gt.GradientTape() as tape:
                    one = gt.sum(E[ids[b:b + 1]] ** 2 * w[b:b + 1])
                np.testing.assert_allclose(want.numpy()[b], tape.gradient(one, E).numpy(),
                                           rtol=1e-12)
    assert f.trace_count == 4  # two signatures, each traced and checked once


@pytest.mark.parametrize("opts", [{}, {"max_norm": 0.5}, {"max_norm": 0.5, "reduce": "sum"},
                                  {"reduce": "sum", "return_norms": True}])
def test_compiled_embedding_gradients_read_by_later_ops_are_not_frozen(opts):
    """The scatter's buffer was made outside the trace: an op reading the result (``g / 4``,
    a mean) took it for a constant, so two warm-up calls on one batch froze the values the
    replay then returned for every other batch (silently). Sequences of 8 ids into an
    11-row table take the materialized path, whose reshape of that buffer ran eagerly."""
    rng = np.random.default_rng(1)
    table = gt.Variable(rng.random((11, 5)).astype(np.float32))
    W = gt.Variable(rng.random((5, 2)).astype(np.float32))

    def step(ids, y):
        with gt.GradientTape() as tape:
            h = gt.sum(gt.nn.embedding(ids, table), axis=1) @ W
            out = gt.sum((h - y) ** 2, axis=1)
        res = tape.per_example_gradients(out, [table, W], **opts)
        grads = res[0] if opts.get("return_norms") else res
        extra = [res[1] * 3.0] if opts.get("return_norms") else []
        return [grads[0] / 4.0, gt.mean(grads[1], axis=0), *extra]

    f = gt.function(step)
    first = gt.tensor(rng.integers(0, 11, (4, 8))), gt.tensor(rng.random((4, 2)).astype(np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        f(*first)
        f(*first)  # the same batch twice: a ready program
        for _ in range(3):
            batch = gt.tensor(rng.integers(0, 11, (4, 8))), gt.tensor(rng.random((4, 2)).astype(np.float32))
            for got, want in zip(f(*batch), step(*batch)):
                np.testing.assert_array_equal(got.numpy(), want.numpy())
    assert f.trace_count == 2


def test_float16_norms_are_formed_in_float32():
    """float16 squares underflow below 6e-8: per-example gradient entries of 1e-4 (a dense
    layer's ghost norm) and 1e-5 (a materialized one) came out norms of 0, and clipping then
    left those examples unscaled."""
    x = gt.tensor(np.ones((2, 4), np.float16))
    W = gt.Variable(np.ones((4, 2), np.float16))
    with gt.GradientTape() as tape:
        out = gt.sum(x @ W, axis=1) * np.float16(1e-4)
    sums, norms = tape.per_example_gradients(out, W, max_norm=1e-5, reduce="sum",
                                             return_norms=True)
    g = np.float64(np.float16(1e-4))  # each example's gradient: 8 entries of float16(1e-4)
    np.testing.assert_allclose(norms.numpy(), [np.sqrt(8) * g] * 2, rtol=1e-3)
    np.testing.assert_allclose(np.linalg.norm(sums.numpy().astype(np.float64)), 2e-5, rtol=1e-2)
    x = gt.tensor(np.full((3, 100), 1e-5, np.float16))
    w = gt.Variable(np.ones(100, np.float16))
    with gt.GradientTape() as tape:
        out = gt.sum(x * w, axis=1)
    _, norms = tape.per_example_gradients(out, w, max_norm=1.0, reduce="sum", return_norms=True)
    np.testing.assert_allclose(norms.numpy(), [10 * np.float64(np.float16(1e-5))] * 3, rtol=1e-3)


def test_float32_norms_below_float32_squares_are_not_zero():
    if gt.backend_name() != "numpy":
        pytest.skip("formed again in float64 on NumPy only (a device would read the norms back)")
    x = gt.tensor(np.array([[1e-21] * 100, [0.0] * 100], np.float32))
    w = gt.Variable(np.ones(100, np.float32))
    with gt.GradientTape() as tape:
        out = gt.sum(x * w, axis=1)
    _, norms = tape.per_example_gradients(out, w, max_norm=1.0, reduce="sum", return_norms=True)
    np.testing.assert_allclose(norms.numpy(), [1e-20, 0.0], rtol=1e-6)


def _f64_dense(x, tanh=False, scale=None):
    W = gt.Variable(np.array([[0.5, -0.3], [0.2, 0.1]]))
    xt = gt.tensor(np.array(x))

    def run(**kw):
        with gt.GradientTape() as tape:
            h = xt @ W
            out = gt.sum(gt.tanh(h) if tanh else h, axis=1)
            if scale is not None:
                out = out * gt.tensor(np.array(scale))
        return tape.per_example_gradients(out, [W], **kw)
    return run


def _clipped_sum(per, norms, C):
    scale = np.where(norms > C, C / np.where(norms > 0, norms, 1.0), 1.0)
    return (per * scale.reshape((-1,) + (1,) * (per.ndim - 1))).sum(0)


@pytest.mark.parametrize("reduce", [None, "sum"])
def test_float64_norms_past_float64_squares_are_finite(reduce):
    """An example whose gradient entries are 1e160 has the norm 2e160, finite, where its
    square is not: the norm came back inf, and clipping scaled the example by 0 (dropped from
    the sum) instead of by ``C / ||g||``; both the materialized path and the ghost one."""
    if gt.backend_name() != "numpy":
        pytest.skip("taken again on NumPy only (a device would read the norms back)")
    run = _f64_dense([[1e160, 1e160], [1.0, 2.0]])
    per = np.array([[[1e160, 1e160], [1e160, 1e160]], [[1.0, 1.0], [2.0, 2.0]]])
    want = np.array([2e160, np.sqrt(10.0)])
    (got,), norms = run(max_norm=1.0, reduce=reduce, return_norms=True)
    np.testing.assert_allclose(norms.numpy(), want, rtol=1e-14)
    if reduce is None:
        np.testing.assert_allclose(got.numpy(), per / want[:, None, None], rtol=1e-14)
    else:
        np.testing.assert_allclose(got.numpy(), _clipped_sum(per, want, 1.0), rtol=1e-14)


def test_float64_ghost_norms_of_huge_inputs_times_tiny_cotangents():
    """A dense layer's ghost norm ``||x_b|| ||delta_b||`` was formed from the two squared
    norms: with ``x`` at 1e160 and ``delta`` at 1e-150 the first square overflowed and the
    norm of a gradient of 1e10 came back inf (and the example dropped from the clipped sum);
    with ``delta`` exactly 0 (a saturated tanh) it came back NaN, where the norm is 0."""
    if gt.backend_name() != "numpy":
        pytest.skip("taken again on NumPy only (a device would read the norms back)")
    run = _f64_dense([[1e160, 1e160], [1.0, 2.0]], scale=[1e-150, 1.0])
    (per,), pn = run(return_norms=True)  # materialized: the reference
    np.testing.assert_allclose(pn.numpy(), [2e10, np.sqrt(10.0)], rtol=1e-14)
    (got,), norms = run(max_norm=1.0, reduce="sum", return_norms=True)
    np.testing.assert_allclose(norms.numpy(), pn.numpy(), rtol=1e-14)
    np.testing.assert_allclose(got.numpy(), _clipped_sum(per.numpy(), pn.numpy(), 1.0), rtol=1e-14)
    run = _f64_dense([[1e160, 1e160], [1.0, 2.0]], tanh=True)
    (per,), pn = run(return_norms=True)
    assert pn.numpy()[0] == 0.0
    (got,), norms = run(max_norm=1.0, reduce="sum", return_norms=True)
    np.testing.assert_allclose(norms.numpy(), pn.numpy(), rtol=1e-14)
    np.testing.assert_allclose(got.numpy(), _clipped_sum(per.numpy(), pn.numpy(), 1.0), rtol=1e-14)


@pytest.mark.parametrize("reduce", [None, "sum"])
def test_float64_norms_below_float64_squares_are_not_zero(reduce):
    """Entries of 1e-160 square to 0 in float64: the norm came back 0 instead of 2e-160."""
    if gt.backend_name() != "numpy":
        pytest.skip("taken again on NumPy only (a device would read the norms back)")
    run = _f64_dense([[1e-160, 1e-160], [1.0, 2.0]])
    _, norms = run(max_norm=1.0, reduce=reduce, return_norms=True)
    np.testing.assert_allclose(norms.numpy(), [2e-160, np.sqrt(10.0)], rtol=1e-14)


def test_float64_norms_past_float64_squares_inside_a_step_equal_eager():
    """Each replay of a ``gt.function`` step takes the scaled norms where its own squares
    leave float64's range, with the eager step's results."""
    if gt.backend_name() != "numpy":
        pytest.skip("taken again on NumPy only (a device would read the norms back)")
    W = gt.Variable(np.array([[0.5, -0.3], [0.2, 0.1]]))

    def step(x):
        with gt.GradientTape() as tape:
            out = gt.sum(x @ W, axis=1)
        return tape.per_example_gradients(out, W, max_norm=1.0, reduce="sum", return_norms=True)

    f = gt.function(step)
    for big in (1.0, 1e160, 3.0, 1e-170, 1e200, 2.0):
        x = gt.tensor(np.array([[big, big], [1.0, 2.0]]))
        (want, wn), (got, gn) = step(x), f(x)
        np.testing.assert_allclose(wn.numpy(), [2 * abs(big), np.sqrt(10.0)], rtol=1e-14)
        np.testing.assert_array_equal(gn.numpy(), wn.numpy())
        np.testing.assert_array_equal(got.numpy(), want.numpy())
    assert f.trace_count <= 2


def test_float64_norms_past_float64_squares_over_several_sources_and_a_conv():
    """The joint norm over sources, each past float64's squares (a bias, a dense weight and a
    convolution's weight), formed without squaring the whole: the same as the norm of the
    per-example gradients scaled down first."""
    if gt.backend_name() != "numpy":
        pytest.skip("taken again on NumPy only (a device would read the norms back)")
    rng = np.random.default_rng(0)
    k = gt.Variable(rng.standard_normal((2, 1, 3, 3)))
    W = gt.Variable(rng.standard_normal((2 * 4 * 4, 3)))
    b = gt.Variable(np.zeros(3))
    x0 = rng.standard_normal((3, 1, 6, 6))
    x0[1] *= 1e220
    x = gt.tensor(x0)

    def run(**kw):
        with gt.GradientTape() as tape:
            h = gt.nn.conv2d(x, k)
            out = gt.sum((gt.reshape(h, (3, -1)) @ W + b) * 1e-60, axis=1)
        return tape.per_example_gradients(out, [k, W, b], **kw)

    per = [g.numpy() for g in run()]
    flat = np.concatenate([g.reshape(3, -1) for g in per], axis=1)
    m = np.abs(flat).max(axis=1)  # the reference: each example's gradient scaled first
    want = m * np.sqrt(((flat / m[:, None]) ** 2).sum(1))
    assert np.isfinite(want).all() and want[1] > 1e155
    for reduce in (None, "sum"):
        got, norms = run(max_norm=1.0, reduce=reduce, return_norms=True)
        np.testing.assert_allclose(norms.numpy(), want, rtol=1e-12)
        for g, p in zip(got, per):
            ref = p / np.maximum(want, 1.0).reshape((3,) + (1,) * (p.ndim - 1))
            np.testing.assert_allclose(g.numpy(), ref if reduce is None else ref.sum(0),
                                       rtol=1e-10, atol=1e-300)


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_clipped_sums_under_check_numerics_equal_the_unchecked_ones(name):
    # check_numerics makes records of the class with extra fields, which the pass copies
    # when it asks a VJP for some inputs only: the sums must equal the unchecked ones
    make, data, tol = MODELS[name]
    fn, params = make()
    batch = data()
    want = per_example(fn, params, *batch, max_norm=0.5, reduce="sum")
    gt.config.check_numerics = True
    try:
        got = per_example(fn, params, *batch, max_norm=0.5, reduce="sum")
        per = per_example(fn, params, *batch)
    finally:
        gt.config.check_numerics = False
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g.numpy(), w.numpy())
    assert_close(per, loop_grads(fn, params, *batch), tol)


def test_a_source_listed_twice_counts_once_in_the_joint_norm():
    x = gt.tensor(np.ones((2, 3)))
    W = gt.Variable(np.ones((3, 2)))
    with gt.GradientTape() as tape:
        out = gt.sum(x @ W, axis=1)
    sums, norms = tape.per_example_gradients(out, [W, W], max_norm=100.0, reduce="sum",
                                             return_norms=True)
    np.testing.assert_allclose(norms.numpy(), [np.sqrt(6.0)] * 2)  # one W: 6 ones
    np.testing.assert_array_equal(sums[0].numpy(), sums[1].numpy())
    np.testing.assert_array_equal(sums[0].numpy(), np.full((3, 2), 2.0))


@pytest.mark.parametrize("mix", ["cumsum", "softmax", "flip", "permutation", "step slice", "roll",
                                 "sort", "transpose", "pad", "tile", "einsum", "matmul right",
                                 "take", "matmul broadcast", "dot", "stack", "tile front",
                                 "advanced apart", "full mask"])
def test_an_op_along_the_batch_axis_that_keeps_its_shape_raises(mix):
    # such ops keep [B, ...] but mix the examples: each example's gradient would take in the
    # others' (cumsum over the batch gave per-example gradients off by 1.9 against a loop)
    rng = np.random.default_rng(0)
    X = gt.tensor(rng.standard_normal((4, 4)).astype(np.float32))
    W = gt.Variable(rng.standard_normal((4, 4)).astype(np.float32))
    C = gt.tensor(rng.standard_normal((4, 4)).astype(np.float32))
    ops = {"cumsum": lambda h: gt.cumsum(h, axis=0), "softmax": lambda h: gt.nn.softmax(h, axis=0),
           "flip": lambda h: gt.flip(h, 0) * h, "permutation": lambda h: h[gt.tensor([1, 0, 3, 2])] * h,
           "step slice": lambda h: h[::-1] * h, "roll": lambda h: gt.roll(h, 1, axis=0),
           "sort": lambda h: gt.sort(h, axis=0), "transpose": lambda h: gt.transpose(h) * h,
           "pad": lambda h: gt.pad(h, ((1, 0), (0, 0)))[1:], "tile": lambda h: gt.tile(h, (2, 1))[:4],
           "einsum": lambda h: gt.einsum("ij,ik->jk", h, C), "matmul right": lambda h: C @ h,
           "take": lambda h: gt.take(h, gt.tensor([3, 2, 1, 0]), axis=0),
           # the batch axis moved behind others with B rows in front (B = 4 here)
           "matmul broadcast": lambda h: gt.sum(h @ gt.reshape(C, (4, 4, 1)) * 1.0, axis=-1),
           "dot": lambda h: gt.dot(C, gt.reshape(h, (4, 4, 1)))[:, :, 0],
           "stack": lambda h: gt.stack([h, 2 * h, h, h], axis=0)[:, 0, :],
           "tile front": lambda h: gt.tile(h, (4, 1, 1))[:, 0, :],
           "advanced apart": lambda h: gt.reshape(h, (4, 2, 1, 2))[:, [0, 1, 1, 0], :, [1, 0, 0, 1]][:, 0],
           "full mask": lambda h: h[..., np.eye(4, dtype=bool)][:, None] * h}
    with gt.GradientTape() as tape:
        losses = gt.sum(ops[mix](X @ W) ** 2, axis=1)
    with pytest.raises(ValueError, match="mixes the examples"):
        tape.per_example_gradients(losses, W)


def test_ops_along_the_other_axes_keep_per_example_gradients():
    # the same ops along axis 1 (and row-preserving indexing) are per example: equal to a loop
    rng = np.random.default_rng(1)
    X = gt.tensor(rng.standard_normal((4, 3)).astype(np.float64))
    W = gt.Variable(rng.standard_normal((3, 3)).astype(np.float64))
    C = gt.tensor(rng.standard_normal((3, 3)).astype(np.float64))

    def f(h):
        h = gt.cumsum(h, axis=1) + gt.nn.softmax(h, axis=-1) + gt.flip(h, 1) + h[:, ::-1]
        h = gt.einsum("bi,ij->bj", h, C) + gt.roll(h, 1, axis=1) + h[:4] + h[..., [2, 0, 1]]
        return gt.sum(gt.pad(h, ((0, 0), (1, 1))) ** 2, axis=1)

    with gt.GradientTape() as tape:
        losses = f(X @ W)
    got = tape.per_example_gradients(losses, W).numpy()
    for b in range(4):
        with gt.GradientTape() as t:
            lb = f(X[b:b + 1] @ W)[0]
        np.testing.assert_allclose(got[b], t.gradient(lb, W).numpy(), rtol=1e-10)


def test_row_for_row_indexing_keeps_per_example_gradients():
    # logp[arange(B), y] (a negative log-likelihood), last-token pooling h[arange(B), t] and
    # h[arange(B)] read example b in row b: per example (they were refused as mixing)
    rng = np.random.default_rng(2)
    B = 5
    X = gt.tensor(rng.standard_normal((B, 3)))
    W = gt.Variable(rng.standard_normal((3, 4)))
    y = rng.integers(0, 4, B)

    def f(x, yy):
        logp = gt.nn.log_softmax(x @ W, axis=-1)
        n = x.shape[0]
        h3 = gt.reshape(x @ W, (n, 2, 2))
        return -logp[np.arange(n), yy] + gt.sum(logp[np.arange(n)] ** 2, axis=1) \
            + (x @ W)[np.arange(n)[:, None], np.array([[0, 2]])][:, 1] \
            + logp[np.arange(n) - n, yy] + h3[np.arange(n), :, 1][:, 0] + h3[np.arange(n), None, 0][:, 0, 1]

    with gt.GradientTape() as tape:
        losses = f(X, y)
    got = tape.per_example_gradients(losses, W).numpy()
    for b in range(B):
        with gt.GradientTape() as t:
            lb = f(X[b:b + 1], y[b:b + 1])[0]
        np.testing.assert_allclose(got[b], t.gradient(lb, W).numpy(), rtol=1e-10)


def test_take_along_axis_is_refused_with_the_row_pick_to_use_instead():
    rng = np.random.default_rng(3)
    X = gt.tensor(rng.standard_normal((3, 4)))
    W = gt.Variable(rng.standard_normal((4, 5)))
    y = rng.integers(0, 5, 3)
    with gt.GradientTape() as tape:
        logp = gt.nn.log_softmax(X @ W, axis=-1)
        losses = -gt.take_along_axis(logp, y[:, None], axis=1)[:, 0]
    with pytest.raises(ValueError, match=r"logp\[gt.arange\(B\), idx\]"):
        tape.per_example_gradients(losses, W)
    with gt.GradientTape() as tape:
        logp = gt.nn.log_softmax(X @ W, axis=-1)
        losses = -logp[gt.arange(3), y]
    g = tape.per_example_gradients(losses, W)
    assert g.shape == (3, 4, 5)


def test_a_row_index_a_compiled_step_takes_as_input_is_refused():
    # checked at the trace only, a permuted row index at a later call mixed the examples
    W = gt.Variable(np.ones((4, 3)))

    def step(x, rows):
        with gt.GradientTape() as tape:
            losses = gt.sum(x @ W, axis=1)[rows]
        return tape.per_example_gradients(losses, W)

    with pytest.raises(ValueError, match="make the row index inside the step"):
        gt.function(step)(gt.tensor(np.ones((3, 4))), gt.tensor(np.arange(3)))


def test_batch_statistics_of_a_frozen_backbone_are_refused():
    # BatchNorm in training on features that do not depend on the sources (only the head is
    # trained) was accepted: each example's gradient took in the others' data
    rng = np.random.default_rng(0)
    x = gt.tensor(rng.standard_normal((8, 3)))
    y = gt.tensor(rng.integers(0, 2, 8))
    backbone = gt.nn.Dense(3, 3, seed=0, dtype="float64")
    bn = gt.nn.BatchNorm(3, dtype="float64")
    head = gt.nn.Dense(3, 2, seed=1, dtype="float64")
    with gt.GradientTape() as tape:
        losses = gt.nn.cross_entropy(head(bn(backbone(x))), y, reduction="none")
    with pytest.raises(ValueError, match=r"computed by 'sum', which works along the batch axis .*"
                                         r"BatchNorm in training"):
        tape.per_example_gradients(losses, head.trainable_variables)
    bn.eval()  # running statistics: the examples do not interact
    with gt.GradientTape() as tape:
        losses = gt.nn.cross_entropy(head(bn(backbone(x))), y, reduction="none")
    grads = tape.per_example_gradients(losses, head.trainable_variables)
    assert [g.shape for g in grads] == [(8, 3, 2), (8, 2)]


def test_data_held_in_a_variable_is_named_as_the_reason():
    # the error named matmul only; the cause is the data's form (a Variable is a constant)
    rng = np.random.default_rng(0)
    x = gt.Variable(rng.standard_normal((4, 5)), trainable=False)
    w = gt.Variable(rng.standard_normal((5, 2)))
    y = gt.tensor(rng.standard_normal((4, 2)))  # (per-example targets)
    with gt.GradientTape() as tape:
        losses = gt.sum((x @ w - y) ** 2, axis=1)
    with pytest.raises(NotImplementedError, match=r"its other input, of shape \(4, 5\), counts as "
                                                  r"a constant here: per-example data is a Tensor, "
                                                  r"not a Variable, that reaches this op with the "
                                                  r"batch axis first, shape \[4, \.\.\.\]"):
        tape.per_example_gradients(losses, [w])


def _cancelling_sequence(dt, near):
    """x[B, T, d] and cotangent weights v[B, T, p] whose example 0's gradient x_0^T v_0 is
    exactly zero and example 1's a ``near`` fraction of its terms (positions that cancel)."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 3, 16)).astype(dt)
    v = rng.standard_normal((4, 3, 8)).astype(dt)
    for b, f in ((0, 0.0), (1, near)):
        x[b, 1] = x[b, 0]
        v[b, 1] = -v[b, 0] * (1 + f)
        v[b, 2] = 0
    ref = [np.linalg.norm(x[b].astype(np.float64).T @ v[b].astype(np.float64)) for b in range(4)]
    return x, v, np.array(ref)


@pytest.mark.parametrize("dt", [np.float32, np.float64])
@pytest.mark.parametrize("form", ["x@W", "W@x"])
def test_ghost_norms_of_a_sequence_whose_gradient_cancels(dt, form):
    """A sequence layer's ghost norm is a sum of signed Gram products: where an example's
    gradient cancels across positions it rounded below zero (a NaN norm, NaN clipped sums)
    or kept only rounding (float32: 3.5x the true norm)."""
    x, v, ref = _cancelling_sequence(dt, 1e-4)
    if form == "x@W":
        W = gt.Variable(np.random.default_rng(4).standard_normal((16, 8)).astype(dt))
        X, Vt = gt.tensor(x), gt.tensor(v)
    else:  # W[p, d] @ x[B, d, T]: the gradient is v^T x
        W = gt.Variable(np.random.default_rng(4).standard_normal((8, 16)).astype(dt))
        X, Vt = gt.tensor(x.transpose(0, 2, 1).copy()), gt.tensor(v.transpose(0, 2, 1).copy())
    with gt.GradientTape() as tape:
        y = X @ W if form == "x@W" else W @ X
        out = gt.sum(y * Vt, axis=(1, 2))
    sums, norms = tape.per_example_gradients(out, W, max_norm=1.0, reduce="sum",
                                             return_norms=True)
    n = norms.numpy()
    assert np.all(np.isfinite(n)) and np.all(n >= 0)
    assert np.all(np.isfinite(sums.numpy()))
    if gt.backend_name() != "numpy":
        return  # taken again on NumPy only (a device would read the norms back)
    np.testing.assert_allclose(n, ref, rtol=1e-5 if dt == np.float32 else 1e-10, atol=1e-12)
    want = sum(min(1.0, 1.0 / max(r, 1e-300)) * (x[b].astype(np.float64).T
                                                  @ v[b].astype(np.float64)) for b, r in
               enumerate(ref))
    got = sums.numpy().astype(np.float64)
    np.testing.assert_allclose(got if form == "x@W" else got.T, want, rtol=1e-4, atol=1e-6)


def test_ghost_norms_of_an_embedding_whose_gradient_cancels():
    """Repeated ids in one example add their rows' gradients: rows that cancel made the
    Gram form's sum round below zero."""
    rng = np.random.default_rng(5)
    table = gt.Variable(rng.standard_normal((50, 12)))
    ids = np.array([[3, 3, 7, 9], [1, 2, 4, 6], [8, 8, 8, 0]])
    w = rng.standard_normal((3, 4, 12))
    w[0, 1] = -w[0, 0] * (1 + 1e-9)  # id 3 twice: its gradient row is ~1e-9 of its terms
    w[0, 2:] = 0
    w[2, 1] = -w[2, 0] - w[2, 2] * (1 - 1e-9)  # id 8 three times
    w[2, 3] = 0
    with gt.GradientTape() as tape:
        out = gt.sum(gt.take(table, gt.tensor(ids), axis=0) * gt.tensor(w), axis=(1, 2))
    _, norms = tape.per_example_gradients(out, table, max_norm=1.0, reduce="sum",
                                          return_norms=True)
    ref = []
    for b in range(3):
        G = np.zeros((50, 12))
        np.add.at(G, ids[b], w[b])
        ref.append(np.linalg.norm(G))
    n = norms.numpy()
    assert np.all(np.isfinite(n)) and np.all(n >= 0)
    if gt.backend_name() == "numpy":
        np.testing.assert_allclose(n, ref, rtol=1e-6)


@pytest.mark.parametrize("opts", [{}, {"max_norm": 1.0, "reduce": "sum", "return_norms": True}])
def test_per_example_embedding_gradients_of_int8_ids_on_a_large_batch(opts):
    """The (example, row) pairs were formed in the ids' dtype: int8 ids on 200 examples wrapped
    around and 128 examples' gradients went to other examples."""
    B, V = 200, 6
    rng = np.random.default_rng(7)
    table = gt.Variable(rng.standard_normal((V, 3)))
    ids = rng.integers(-V, V, (B, 2)).astype(np.int8)
    w = rng.standard_normal((B, 2, 3))
    with gt.GradientTape() as tape:
        out = gt.sum(table[gt.tensor(ids)] * gt.tensor(w), axis=(1, 2))
    got = tape.per_example_gradients(out, table, **opts)
    want = np.zeros((B, V, 3))
    for b in range(B):
        np.add.at(want[b], ids[b].astype(np.intp), w[b])
    if not opts:
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-12)
        return
    sums, norms = got
    n = np.linalg.norm(want.reshape(B, -1), axis=1)
    np.testing.assert_allclose(norms.numpy(), n, rtol=1e-10)
    np.testing.assert_allclose(sums.numpy(), (want * np.minimum(1, 1 / n)[:, None, None]).sum(0),
                               rtol=1e-10)


@pytest.mark.parametrize("kw", [{}, {"max_norm": 1.0}, {"return_norms": True}])
def test_embedding_rows_compiled_with_a_constant_cotangent(kw):
    # a loss linear in the looked-up rows sends a constant cotangent to the lookup; the rows'
    # scatter into [B, V, ...] was made like that constant, so inside gt.function the traced
    # ids met a plain buffer: TracingError (".numpy() of a traced tensor"). Found by a fuzz
    rng = np.random.default_rng(0)
    table = gt.Variable(rng.normal(size=(8, 2)))

    def step(ids):
        with gt.GradientTape() as tape:
            losses = gt.sum(gt.nn.embedding(ids, table) * 2.0, axis=(1, 2))
        return tape.per_example_gradients(losses, [table], **kw)

    f = gt.function(step)
    for _ in range(4):  # new ids at every call: the replay scatters by them
        ids = gt.tensor(rng.integers(0, 8, size=(3, 4)))
        got, want = _leaves(f(ids)), _leaves(step(ids))
        assert len(got) == len(want) >= 1
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a.numpy(), b.numpy())


def _leaves(x):
    return [t for v in x for t in _leaves(v)] if isinstance(x, (list, tuple)) else [x]


@pytest.mark.parametrize("spec", ["x @ W (einsum bd,dp->bp)", "sequence (btd,dp->btp)",
                                  "parameter first (pd,bd->bp)", "three operands (bd,dp,p->bp)",
                                  "dot(x, W)", "dot(x, w) (a vector parameter)"])
def test_dense_layers_written_as_einsum_or_dot(spec):
    # per_example_gradients had no rule for einsum and dot where a parameter meets per-example
    # data ("no per-example rule for primitive 'einsum'"), though matmul had one (a fuzz)
    rng = np.random.default_rng(1)
    B, T, D, P = 5, 3, 4, 2
    W = gt.Variable(rng.normal(size=(D, P)))
    Wt = gt.Variable(rng.normal(size=(P, D)))
    s = gt.Variable(rng.normal(size=(P,)))
    w = gt.Variable(rng.normal(size=(D,)))
    seq = "sequence" in spec
    X = rng.normal(size=(B, T, D) if seq else (B, D))
    layer, params = {
        "x @ W (einsum bd,dp->bp)": (lambda x: gt.einsum("bd,dp->bp", x, W), [W]),
        "sequence (btd,dp->btp)": (lambda x: gt.einsum("btd,dp->btp", x, W), [W]),
        "parameter first (pd,bd->bp)": (lambda x: gt.einsum("pd,bd->bp", Wt, x), [Wt]),
        "three operands (bd,dp,p->bp)": (lambda x: gt.einsum("bd,dp,p->bp", x, W, s), [W, s]),
        "dot(x, W)": (lambda x: gt.dot(x, W), [W]),
        "dot(x, w) (a vector parameter)": (lambda x: gt.dot(x, w), [w]),
    }[spec]

    def losses(x):
        return gt.sum(gt.reshape(gt.tanh(layer(x)), (x.shape[0], -1)) ** 2, axis=1)

    with gt.GradientTape() as tape:
        out = losses(gt.tensor(X))
    per = tape.per_example_gradients(out, params)
    with gt.GradientTape() as tape:
        out = losses(gt.tensor(X))
    clipped, norms = tape.per_example_gradients(out, params, max_norm=0.5, reduce="sum",
                                                return_norms=True)
    loop = []
    for b in range(B):
        with gt.GradientTape() as tape:
            one = gt.sum(losses(gt.tensor(X[b:b + 1])))
        loop.append([g.numpy() for g in tape.gradient(one, params)])
    for k in range(len(params)):
        np.testing.assert_allclose(per[k].numpy(), np.stack([lp[k] for lp in loop]), atol=1e-12)
    want_norms = np.sqrt([sum(np.sum(g ** 2) for g in lp) for lp in loop])
    np.testing.assert_allclose(norms.numpy(), want_norms, rtol=1e-12)
    scale = np.minimum(1.0, 0.5 / want_norms)
    for k in range(len(params)):
        want = sum(scale[b] * loop[b][k] for b in range(B))
        np.testing.assert_allclose(clipped[k].numpy(), want, atol=1e-12)


def test_clipping_a_gradient_from_the_seed_alone_inside_a_device_compiled_step():
    """A per-example gradient made only from the constant seed (``b.sum()``'s) is clipped out
    of place inside a compiled step on a device backend (a device array's in-place operator
    refuses a traced factor), and equals the eager result."""
    from gradtape._src import strict

    strict.install()
    with gt.use_backend("strict"):
        w = gt.Variable(np.ones(3, np.float32))
        b = gt.Variable(np.ones(3, np.float32))

        def step(x):
            with gt.GradientTape() as tape:
                loss = (x * w).sum(axis=1) + b.sum()
            return tape.per_example_gradients(loss, [w, b], max_norm=1.0)

        x = gt.tensor(np.arange(6, dtype=np.float32).reshape(2, 3))
        want = [g.numpy() for g in step(x)]
        f = gt.function(step)
        for _ in range(3):
            for got, exp in zip(f(x), want):
                np.testing.assert_allclose(got.numpy(), exp, rtol=1e-6)


@pytest.mark.parametrize("index", ["idx_slice_idx", "int_slice_idx"])
def test_a_parameter_indexed_by_advanced_indices_apart_is_refused(index):
    """``W[idx, :, idx]`` (or ``W[0, :, idx]``) on a parameter: NumPy puts the advanced indices'
    axes first, so the pass's batch axis in front of the index landed behind them; with as
    many index positions as examples the shapes matched and each example's cotangent was
    scattered along the wrong axis, silently (error 1.2 against a loop of single-example
    gradients). It raises now, naming the index; side-by-side indices still work."""
    rng = np.random.default_rng(0)
    B = 2
    W = gt.Variable(rng.normal(size=(2, 3, 2)))
    X = gt.tensor(rng.normal(size=(B, 2, 3)))
    idx = np.array([0, 1])
    pick = {"idx_slice_idx": lambda w: w[idx, :, idx], "int_slice_idx": lambda w: w[0, :, idx]}
    with gt.GradientTape() as tape:
        S = pick[index](W)  # (2, 3): the advanced axis first, not where the pass expects B
        losses = gt.sum(gt.sin(X * S), axis=(1, 2))
    with pytest.raises(NotImplementedError, match=r"advanced indices are apart from each other"):
        tape.per_example_gradients(losses, [W])
    # the same values with the advanced indices side by side: per-example gradients right
    with gt.GradientTape() as tape:
        Wt = gt.transpose(W, (0, 2, 1))
        S = Wt[idx, idx] if index == "idx_slice_idx" else Wt[0, idx]  # the same (2, 3) values
        losses = gt.sum(gt.sin(X * S), axis=(1, 2))
    (got,) = tape.per_example_gradients(losses, [W])
    for b in range(B):
        with gt.GradientTape() as t:
            S = pick[index](W)
            loss = gt.sum(gt.sin(X[b] * S))
        np.testing.assert_allclose(got.numpy()[b], t.gradient(loss, W).numpy(), atol=1e-12)


@pytest.mark.parametrize("frozen", ["backbone", "backbone_and_batchnorm"])
def test_batch_statistics_of_a_backbone_frozen_with_trainable_false_are_refused(frozen):
    """A backbone frozen the Keras way (``trainable = False``) with a BatchNorm in training:
    its ops were not recorded, so the batch statistics went unseen and example 0's gradient
    changed when only the other examples changed. The tape now notes batch statistics
    computed on values it did not record, and per-example gradients refuse them."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 3))
    y = gt.tensor(rng.integers(0, 2, 8))
    backbone = gt.nn.Dense(3, 3, seed=0, dtype="float64")
    bn = gt.nn.BatchNorm(3, dtype="float64")
    head = gt.nn.Dense(3, 2, seed=1, dtype="float64")
    backbone.trainable = False
    if frozen == "backbone_and_batchnorm":
        bn.trainable = False

    def per_example(xb):
        with gt.GradientTape() as tape:
            losses = gt.nn.cross_entropy(head(bn(backbone(gt.tensor(xb)))), y, reduction="none")
        return tape.per_example_gradients(losses, head.trainable_variables)

    with pytest.raises(ValueError, match=r"batch_norm in training at .*test_per_example.py:\d+ "
                                         r"computed batch statistics over 8 examples"):
        per_example(x)
    with pytest.raises(ValueError, match="batch statistics over 8 examples"):
        gt.function(per_example)(x)
    bn.eval()  # running statistics: example 0's gradient is its own
    x2 = x.copy()
    x2[1:] *= 5.0
    g0, g1 = per_example(x)[0].numpy()[0], per_example(x2)[0].numpy()[0]
    np.testing.assert_array_equal(g0, g1)
    bn.train()  # outside any tape, or with the backbone's ops recorded, as before
    bn(backbone(gt.tensor(x)))
    with gt.GradientTape() as tape:  # the batch gradient (no clipping, no norms): accepted
        losses = gt.nn.cross_entropy(head(bn(backbone(gt.tensor(x)))), y, reduction="none")
    sums = tape.per_example_gradients(losses, head.trainable_variables, reduce="sum")
    assert [g.shape for g in sums] == [(3, 2), (2,)]
    other = gt.nn.BatchNorm(3, dtype="float64")  # a BatchNorm that does not feed the target
    other.trainable = False
    with gt.GradientTape() as tape:
        with tape.stop_recording():  # (not noted while the tape is paused)
            other(gt.tensor(x))
        losses = gt.nn.cross_entropy(head(gt.tensor(x)), y, reduction="none")
    assert tape.per_example_gradients(losses, head.trainable_variables)[0].shape == (8, 3, 2)
    with gt.GradientTape(persistent=True) as tape:  # the first of each batch size is kept
        for _ in range(20):
            other(gt.tensor(x[:5]))
        other(gt.tensor(x))
        losses = gt.nn.cross_entropy(head(gt.tensor(x)), y, reduction="none")
    with pytest.raises(ValueError, match="batch statistics over 8 examples"):
        tape.per_example_gradients(losses, head.trainable_variables)
    backbone.trainable = True
    with pytest.raises(ValueError, match=r"computed by 'sum', which works along the batch axis"):
        per_example(x)
    with gt.GradientTape(persistent=True) as tape:  # recorded: its sum is the batch gradient
        losses = gt.nn.cross_entropy(head(bn(backbone(gt.tensor(x)))), y, reduction="none")
        total = gt.sum(losses)
    sums = tape.per_example_gradients(losses, head.trainable_variables, reduce="sum")
    for got, want in zip(sums, tape.gradient(total, head.trainable_variables)):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-12)


@pytest.mark.parametrize("reduce", [None, "sum"])
@pytest.mark.parametrize("ghost", [True, False])
def test_float16_clipping_scales_in_float32(reduce, ghost):
    """The clipping scale ``C / ||g_b||`` was cast to float16 before it multiplied: a scale under
    6e-8 became 0 and the clipped gradients all zero, though the clipped entries (3.5e-5) are
    float16 numbers. The scale now multiplies in float32, the result rounded once."""
    W = gt.Variable(np.ones((4, 2), dtype=np.float16))
    x = gt.tensor(np.full((2, 4), 3000.0, dtype=np.float16))
    with gt.GradientTape() as tape:  # each example's gradient: 3000 everywhere, norm 8485
        losses = gt.sum(x @ W, axis=1) if ghost else gt.sum(gt.sum(x[:, :, None] * W, axis=1), axis=1)
    (g,), norms = tape.per_example_gradients(losses, [W], max_norm=1e-4, reduce=reduce,
                                             return_norms=True)
    np.testing.assert_allclose(norms.numpy(), [3000 * np.sqrt(8)] * 2, rtol=1e-3)
    assert g.dtype == np.float16
    each = np.float16(3000.0 * (1e-4 / (3000 * np.sqrt(8))))  # 3.5e-5
    want = np.full((2, 4, 2), each) if reduce is None else np.full((4, 2), 2 * np.float64(each))
    np.testing.assert_allclose(g.numpy().astype(np.float64), want, rtol=2e-3)


@pytest.mark.parametrize("make", ["slice", "reshape"])
def test_a_target_without_the_inputs_batch_axis_is_named_as_such(make):
    """A target sliced or reshaped so that its axis 0 is not the inputs' batch axis was said
    to be "computed from the sources alone"; the error now names B's origin and the data's
    shapes."""
    rng = np.random.default_rng(0)
    W = gt.Variable(rng.normal(size=(3, 2)))
    X = gt.tensor(rng.normal(size=(4, 3)))
    with gt.GradientTape() as tape:
        losses = gt.sum(X @ W, axis=1)
        target = losses[:2] if make == "slice" else gt.reshape(losses, (2, 2))
    with pytest.raises(ValueError, match=r"no per-example input with the batch axis first "
                                         r"reaches the target .*B = 2 is read from its axis 0.*"
                                         r"of shapes \(4, 3\)"):
        tape.per_example_gradients(target, [W])
    T = gt.tensor(rng.normal(size=2))  # no examples at all: a constant of the parameter's shape
    with gt.GradientTape() as tape:
        target = gt.sum((W - T) ** 2, axis=1)
    with pytest.raises(ValueError, match=r"of shapes \(2,\): if one of them holds the examples.*"
                                         r"if not, the target is computed from the sources and "
                                         r"constants alone"):
        tape.per_example_gradients(target, [W])


# --------------------------------------------------------------------------- large dense layers

LARGE_DENSE = {
    "x @ W": (lambda x, W: gt.matmul(x, W), False),
    "einsum bd,dp->bp": (lambda x, W: gt.einsum("bd,dp->bp", x, W), False),
    "einsum pd,bd->bp": (lambda x, W: gt.einsum("pd,bd->bp", W, x), True),
    "dot(x, W)": (lambda x, W: gt.dot(x, W), False),
}


@pytest.mark.parametrize("spell", sorted(LARGE_DENSE))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("B", [2, 33, 34])
def test_large_dense_layer_per_example_weights_are_the_outer_products(B, dtype, spell):
    # x @ W with a loss linear in the output: each example's cotangent is its row of y, so its
    # weight gradient is exactly the outer product x_b y_b^T; the layer is large enough
    # (B * d * p >= 16384 entries at B = 33) for the host's products of examples in pairs
    rng = np.random.default_rng(7)
    d, p = 40, 24 if B > 2 else 256
    x = rng.normal(size=(B, d)).astype(dtype)
    y = rng.normal(size=(B, p)).astype(dtype)
    layer, transposed = LARGE_DENSE[spell]
    W = gt.Variable(rng.normal(size=(p, d) if transposed else (d, p)).astype(dtype))

    def losses(x, y):
        return gt.sum(layer(x, W) * y, axis=1)

    def step(x, y):
        with gt.GradientTape() as tape:
            out = losses(x, y)
        return tape.per_example_gradients(out, [W])[0]

    spec = "bi,bj->bji" if transposed else "bi,bj->bij"
    want = np.einsum(spec, x, y)
    got = step(gt.tensor(x), gt.tensor(y))
    assert got.shape == (B,) + W.shape and got.dtype == dtype
    np.testing.assert_array_equal(got.numpy(), want)
    compiled = gt.function(step)
    for k in range(3):  # trace, checking trace, replay on new values
        xk, yk = x * (k + 1), y - k
        np.testing.assert_array_equal(compiled(gt.tensor(xk), gt.tensor(yk)).numpy(),
                                      np.einsum(spec, xk, yk))


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_a_non_finite_cotangent_stays_in_its_own_example(bad):
    # one example's infinite or nan cotangent makes its own weight gradient non-finite and
    # leaves every other example's (its neighbour's too) what it is alone, eagerly and in a
    # replayed step
    rng = np.random.default_rng(8)
    B, d, p = 34, 40, 24
    x = rng.normal(size=(B, d)).astype(np.float32)
    W = gt.Variable(rng.normal(size=(d, p)).astype(np.float32))

    def step(x, y):
        with gt.GradientTape() as tape:
            out = gt.sum(gt.matmul(x, W) * y, axis=1)
        return tape.per_example_gradients(out, [W])[0]

    compiled = gt.function(step)
    finite = rng.normal(size=(B, p)).astype(np.float32)
    for _ in range(2):
        compiled(gt.tensor(x), gt.tensor(finite))  # traced on finite values, then replayed
    for b in (0, 1, B - 1):
        y = finite.copy()
        y[b, 3] = bad
        with np.errstate(invalid="ignore"):
            want = np.einsum("bi,bj->bij", x, y)
        for got in (step(gt.tensor(x), gt.tensor(y)), compiled(gt.tensor(x), gt.tensor(y))):
            g = got.numpy()
            others = np.arange(B) != b
            np.testing.assert_array_equal(g[others], want[others])
            assert np.isfinite(g[others]).all()
            assert not np.isfinite(g[b][:, 3]).any()
