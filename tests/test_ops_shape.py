"""Shape ops: forward against NumPy (dtype kept), gradients against finite differences, errors."""

from __future__ import annotations

import numpy as np
import pytest

import gradtape as gt
from gradtape.extend import REGISTRY
from gradtape.testing import check_grads

DTYPES = [np.float32, np.float64]


def _grad(fn, *xs):
    ts = [gt.tensor(x) for x in xs]
    with gt.GradientTape() as tape:
        tape.watch(ts)
        y = fn(*ts)
    return tape.gradient(y, ts)


@pytest.mark.parametrize("name", ["reshape", "transpose", "broadcast_to", "stack", "concat", "pad",
                                  "flip", "tile", "repeat", "astype"])
def test_registry_examples_gradients(name):
    prim = REGISTRY[name]
    assert prim.examples is not None
    for fn, args, kwargs in prim.examples(np.random.default_rng(2)):
        check_grads(fn, args, kwargs, order=2)


CASES = [
    ("reshape", lambda m, x: m.reshape(x, (3, -1)), (2, 3, 2)),
    ("transpose", lambda m, x: m.transpose(x), (2, 3, 4)),
    ("transpose_axes", lambda m, x: m.transpose(x, (2, 0, 1)), (2, 3, 4)),
    ("swapaxes", lambda m, x: m.swapaxes(x, 0, -1), (2, 3, 4)),
    ("moveaxis", lambda m, x: m.moveaxis(x, -1, 0), (2, 3, 4)),
    ("moveaxis_seq", lambda m, x: m.moveaxis(x, (0, 1), (-1, 0)), (2, 3, 4)),
    ("expand_dims", lambda m, x: m.expand_dims(x, -1), (2, 3)),
    ("expand_dims_tuple", lambda m, x: m.expand_dims(x, (0, 3)), (2, 3)),
    ("squeeze", lambda m, x: m.squeeze(x), (1, 3, 1)),
    ("squeeze_axis", lambda m, x: m.squeeze(x, axis=-1), (1, 3, 1)),
    ("squeeze_tuple", lambda m, x: m.squeeze(x, axis=(0, 2)), (1, 3, 1)),
    ("broadcast_to", lambda m, x: m.broadcast_to(x, (4, 2, 3)), (2, 1)),
    ("flip", lambda m, x: m.flip(x), (2, 3)),
    ("flip_axis", lambda m, x: m.flip(x, -1), (2, 3)),
    ("flip_tuple", lambda m, x: m.flip(x, (0, 2)), (2, 3, 2)),
    ("tile", lambda m, x: m.tile(x, (2, 1, 3)), (2, 3)),
    ("tile_short", lambda m, x: m.tile(x, 2), (2, 3)),
    ("repeat", lambda m, x: m.repeat(x, 2), (2, 3)),
    ("repeat_axis", lambda m, x: m.repeat(x, 3, axis=-2), (2, 3)),
    ("repeat_each", lambda m, x: m.repeat(x, [2, 0, 1], axis=1), (2, 3)),
    ("pad_int", lambda m, x: m.pad(x, 1), (2, 3)),
    ("pad_pairs", lambda m, x: m.pad(x, ((1, 0), (0, 2))), (2, 3)),
    ("pad_value", lambda m, x: m.pad(x, (2, 1), constant_values=-1.5), (2, 3)),
    ("zero_d_reshape", lambda m, x: m.reshape(x, (1, 1)), ()),
    ("zero_d_expand", lambda m, x: m.expand_dims(x, 0), ()),
    ("zero_d_tile", lambda m, x: m.tile(x, 3), ()),
    ("zero_d_repeat", lambda m, x: m.repeat(x, 2), ()),
    ("empty_flip", lambda m, x: m.flip(x, 0), (0, 3)),
    ("empty_pad", lambda m, x: m.pad(x, 1), (0, 2)),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_forward_matches_numpy_and_keeps_dtype(case, dtype, rng):
    _, f, shape = case
    x = rng.standard_normal(shape).astype(dtype)
    out = f(gt, gt.tensor(x))
    expected = f(np, x)
    assert out.dtype == dtype
    assert out.shape == expected.shape
    np.testing.assert_array_equal(out.numpy(), expected)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_gradients(case, rng):
    _, f, shape = case
    x = rng.standard_normal(shape)
    if x.size == 0:
        (g,) = _grad(lambda t: gt.sum(f(gt, t)), x)
        assert g.shape == shape
        return
    check_grads(lambda t: f(gt, t), (x,), order=2)


def test_tensor_methods_call_the_ops():
    x = gt.tensor(np.arange(6.0))
    assert x.reshape(2, 3).shape == (2, 3)
    assert x.reshape((3, 2)).transpose().shape == (2, 3)
    assert x.reshape(1, 2, 3).transpose(2, 0, 1).shape == (3, 1, 2)
    assert x.reshape(2, 3).T.shape == (3, 2)


# --------------------------------------------------------------------------- concat / stack / split
@pytest.mark.parametrize("dtype", DTYPES)
def test_concat_forward(dtype, rng):
    a = rng.standard_normal((2, 3)).astype(dtype)
    b = rng.standard_normal((2, 1)).astype(dtype)
    out = gt.concat([gt.tensor(a), gt.tensor(b)], axis=-1)
    assert out.dtype == dtype
    np.testing.assert_array_equal(out.numpy(), np.concatenate([a, b], axis=-1))


def test_concat_gradients_and_promotion(rng):
    a, b, c = rng.standard_normal((2, 3)), rng.standard_normal((1, 3)), rng.standard_normal((4, 3))
    check_grads(lambda *ts: gt.concat(ts, axis=0), (a, b, c), order=2)
    out = gt.concat([gt.tensor(a.astype(np.float32)), gt.tensor(b)])
    assert out.dtype == np.float64
    ga, gb = _grad(lambda x, y: gt.sum(gt.concat([x, y]) * 2.0), a.astype(np.float32), b)
    assert ga.dtype == np.float32 and gb.dtype == np.float64
    np.testing.assert_array_equal(ga.numpy(), np.full((2, 3), 2.0))


def test_stack_forward_and_gradients(rng):
    xs = [rng.standard_normal((2, 3)) for _ in range(3)]
    for axis in (0, 1, -1):
        np.testing.assert_array_equal(gt.stack([gt.tensor(x) for x in xs], axis=axis).numpy(),
                                      np.stack(xs, axis=axis))
        check_grads(lambda *ts, axis=axis: gt.stack(ts, axis=axis), tuple(xs), order=2)


def test_split(rng):
    x = rng.standard_normal((6, 4))
    for ios, axis in [(3, 0), ([1, 3], 0), (2, -1), ([0, 2, 2], 1), ([5], 0)]:
        parts = gt.split(gt.tensor(x), ios, axis=axis)
        expected = np.split(x, ios, axis=axis)
        assert isinstance(parts, list) and len(parts) == len(expected)
        for p, e in zip(parts, expected):
            np.testing.assert_array_equal(p.numpy(), e)
    weights = [1.0, 2.0, 3.0]
    g = _grad(lambda t: sum(w * gt.sum(p) for w, p in zip(weights, gt.split(t, [1, 4]))), x)[0]
    np.testing.assert_array_equal(g.numpy()[0], np.ones(4))
    np.testing.assert_array_equal(g.numpy()[1:4], np.full((3, 4), 2.0))
    np.testing.assert_array_equal(g.numpy()[4:], np.full((2, 4), 3.0))
    check_grads(lambda t: gt.split(t, 2, axis=1), (x,), order=2)
    with pytest.raises(ValueError, match=r"split: axis 0 of size 6 \(shape \(6, 4\)\) does not "
                                         r"divide into 4 equal sections"):
        gt.split(gt.tensor(x), 4)


# --------------------------------------------------------------------------- repeat / tile details
def test_repeat_per_element_gradient_accumulates():
    x = np.array([[1.0, 2.0, 3.0]])
    g = _grad(lambda t: gt.sum(gt.repeat(t, [3, 0, 2], axis=1) * gt.tensor(np.arange(5.0))), x)[0]
    np.testing.assert_array_equal(g.numpy(), [[0 + 1 + 2, 0, 3 + 4]])


def test_tile_gradient_sums_copies():
    g = _grad(lambda t: gt.sum(gt.tile(t, (2, 3))), np.ones((2, 2)))[0]
    np.testing.assert_array_equal(g.numpy(), np.full((2, 2), 6.0))


# --------------------------------------------------------------------------- errors
def test_shape_errors_are_clear():
    x = gt.tensor(np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"squeeze: cannot squeeze axis 1 of a tensor of shape "
                                         r"\(2, 3\): its size is 3, not 1"):
        gt.squeeze(x, axis=1)
    with pytest.raises(ValueError, match=r"reshape: cannot reshape a tensor of shape \(2, 3\) "
                                         r"\(6 elements\) into shape \(4, 2\)"):
        gt.reshape(x, (4, 2))
    with pytest.raises(ValueError, match=r"concat: tensors\[1\] has shape \(2, 2\) and tensors\[0\] "
                                         r"has shape \(2, 3\)"):
        gt.concat([x, gt.tensor(np.ones((2, 2)))], axis=0)
    with pytest.raises(ValueError, match="concat: axis 2 is out of range for a tensor of rank 2"):
        gt.concat([x, x], axis=2)
    with pytest.raises(ValueError, match=r"stack: all tensors must have the same shape; tensors\[1\]"):
        gt.stack([x, gt.tensor(np.ones(3))])
    with pytest.raises(ValueError, match="stack: axis 3 is out of range"):
        gt.stack([x, x], axis=3)
    with pytest.raises(ValueError, match=r"broadcast_to: cannot broadcast shape \(2, 3\) to \(3, 3\)"):
        gt.broadcast_to(x, (3, 3))
    with pytest.raises(ValueError, match=r"transpose: axes \(0, 2\) is not a permutation"):
        gt.transpose(x, (0, 2))
    with pytest.raises(ValueError, match="swapaxes: axis2 5 is out of range"):
        gt.swapaxes(x, 0, 5)
    with pytest.raises(ValueError, match="moveaxis: source 2 is out of range"):
        gt.moveaxis(x, 2, 0)
    with pytest.raises(ValueError, match="expand_dims: axis 4 is out of range"):
        gt.expand_dims(x, 4)
    with pytest.raises(ValueError, match="pad: pad_width must be non-negative"):
        gt.pad(x, -1)
    with pytest.raises(ValueError, match=r"pad: pad_width .* does not fit a tensor of shape \(2, 3\)"):
        gt.pad(x, ((1, 1), (1, 1), (1, 1)))
    with pytest.raises(ValueError, match=r"repeat: 2 repeat counts given for axis 1 of size 3"):
        gt.repeat(x, [1, 2], axis=1)
    with pytest.raises(ValueError, match="tile: reps must be non-negative"):
        gt.tile(x, -1)


def test_astype_and_stop_gradient():
    x = gt.tensor(np.array([1.5, -2.0], dtype=np.float32))
    with gt.GradientTape() as tape:
        tape.watch(x)
        y = gt.sum(gt.astype(x, "float64") * 3.0 + gt.stop_gradient(x) * 5.0)
    assert y.dtype == np.float64
    g = tape.gradient(y, x)
    assert g.dtype == np.float32
    np.testing.assert_array_equal(g.numpy(), [3.0, 3.0])
    assert gt.astype(x, "int32").dtype == np.int32
