"""Layers cast a floating input of another dtype to their Variables' dtype (Keras's autocast):
a float64 NumPy batch into a float32 model ran the whole step in float64, several times slower
and with float64 activations, without a word."""

from __future__ import annotations

import numpy as np
import pytest

import gradtape as gt

LAYERS = {
    "Dense": (lambda dt: gt.nn.Dense(4, 3, seed=0, dtype=dt), (2, 4)),
    "Conv2D": (lambda dt: gt.nn.Conv2D(2, 3, 3, seed=0, dtype=dt), (2, 2, 5, 5)),
    "Conv1D": (lambda dt: gt.nn.Conv1D(2, 3, 3, seed=0, dtype=dt), (2, 2, 7)),
    "Conv2DTranspose": (lambda dt: gt.nn.Conv2DTranspose(2, 3, 3, seed=0, dtype=dt), (2, 2, 4, 4)),
    "LayerNorm": (lambda dt: gt.nn.LayerNorm(4, dtype=dt), (3, 4)),
    "BatchNorm": (lambda dt: gt.nn.BatchNorm(2, dtype=dt), (4, 2, 3)),
}


@pytest.mark.parametrize("name", sorted(LAYERS))
@pytest.mark.parametrize("as_tensor", [False, True], ids=["numpy", "tensor"])
def test_a_float64_input_runs_a_float32_layer_in_float32(name, as_tensor):
    if not as_tensor and gt.backend_name() != "numpy":
        pytest.skip("a host array into a device layer is refused (move it with gt.tensor)")
    make, shape = LAYERS[name]
    x64 = np.random.default_rng(0).normal(size=shape)
    layer = make(np.float32)
    y = layer(gt.tensor(x64) if as_tensor else x64)
    assert y.dtype == np.float32
    ref = make(np.float32)(gt.tensor(x64.astype(np.float32)))
    np.testing.assert_array_equal(y.numpy(), ref.numpy())


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_the_gradient_to_a_cast_input_comes_back_in_its_dtype(name):
    make, shape = LAYERS[name]
    x64 = gt.tensor(np.random.default_rng(1).normal(size=shape))
    x32 = gt.tensor(x64.numpy().astype(np.float32))
    layer = make(np.float32)
    grads = []
    for x in (x64, x32):
        with gt.GradientTape() as tape:
            tape.watch(x)
            loss = gt.sum(layer(x) * gt.tensor(np.linspace(-1, 1, layer(x32).size,
                                                           dtype=np.float32).reshape(layer(x32).shape)))
        grads.append(tape.gradient(loss, [x, *layer.trainable_variables]))
    assert grads[0][0].dtype == np.float64 and grads[1][0].dtype == np.float32
    for a, b in zip(grads[0], grads[1]):
        np.testing.assert_array_equal(a.numpy().astype(np.float32), b.numpy())


def test_a_float16_layer_takes_a_float32_input_in_float16():
    y = gt.nn.Dense(4, 3, seed=0, dtype=np.float16)(gt.tensor(np.ones((2, 4), np.float32)))
    assert y.dtype == np.float16


def test_integer_inputs_run_in_the_layers_dtype():
    assert gt.nn.Conv2D(1, 1, 3, seed=0)(gt.tensor(np.ones((1, 1, 4, 4), np.int32))).dtype == np.float32
    assert gt.nn.Dense(4, 3, seed=0)(gt.tensor(np.ones((2, 4), np.int64))).dtype == np.float32
