"""``copy.deepcopy`` and ``pickle`` of Tensors, Variables, Modules and optimizers: the state
travels (values, dtype, backend, name, trainable, optimizer moments and step count), the tape
never does; a copied Variable is a new Variable."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest

import gradtape as gt


class Net(gt.nn.Module):
    def __init__(self, seed: int = 0) -> None:
        self.body = gt.nn.Sequential([gt.nn.Dense(3, 8, activation="linear", seed=seed), gt.relu,
                                      gt.nn.Dropout(0.25, seed=seed), gt.nn.LayerNorm(8)])
        self.head = {"out": gt.nn.Dense(8, 2, activation="tanh", seed=seed + 1)}
        self.steps = gt.Variable(np.array(0, np.int64), trainable=False, name="steps")

    def forward(self, x):
        return self.head["out"](self.body(x))


def values(model):
    return {n: v.numpy() for n, v in model.named_variables()}


def same(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def step(model, opt, seed):
    x = gt.tensor(np.random.default_rng(seed).normal(size=(4, 3)).astype(np.float32))
    with gt.GradientTape() as tape:
        loss = gt.sum(model(x) ** 2)
    grads = tape.gradient(loss, model.trainable_variables)
    opt.apply_gradients(zip(grads, model.trainable_variables))


OPTIMIZERS = {
    "adam": lambda: gt.optimizers.Adam(0.01),
    "adamw": lambda: gt.optimizers.AdamW(0.01),
    "sgd_momentum": lambda: gt.optimizers.SGD(0.05, momentum=0.9, nesterov=True),
    "sgd": lambda: gt.optimizers.SGD(0.05),
}


# --------------------------------------------------------------------------- tensors
def test_tensor_pickles_and_deepcopies_with_its_values_dtype_and_backend(backend):
    t = gt.tensor(np.arange(6.0).reshape(2, 3))  # float64 kept
    for c in (pickle.loads(pickle.dumps(t)), copy.deepcopy(t), copy.copy(t)):
        assert type(c) is gt.Tensor and c is not t
        assert c.dtype == np.float64 and c.shape == (2, 3) and c.backend == backend
        np.testing.assert_array_equal(c.numpy(), t.numpy())
    s = gt.sum(t)  # a 0-d result
    assert float(pickle.loads(pickle.dumps(s))) == 15.0


def test_a_copied_tensor_is_not_on_the_tape():
    x = gt.tensor([1.0, 2.0])
    with gt.GradientTape() as tape:
        tape.watch(x)
        y = x * 3.0
        c = copy.deepcopy(y)
        z = gt.sum(c * c) + gt.sum(y)
    np.testing.assert_array_equal(tape.gradient(z, x).numpy(), [3.0, 3.0])  # only through y


# --------------------------------------------------------------------------- variables
def test_variable_pickles_and_deepcopies_as_a_new_variable(backend):
    v = gt.Variable(np.array([1.0, 2.0]), name="w", trainable=False)
    for c in (pickle.loads(pickle.dumps(v)), copy.deepcopy(v), copy.copy(v)):
        assert type(c) is gt.Variable and c is not v
        assert c.name == "w" and c.trainable is False and c.dtype == np.float64
        assert c.backend == backend
        np.testing.assert_array_equal(c.numpy(), [1.0, 2.0])
        c.assign([5.0, 6.0])  # its own buffer
        np.testing.assert_array_equal(v.numpy(), [1.0, 2.0])


def test_a_deepcopied_variable_gets_gradients_under_a_tape(backend):
    v = gt.Variable([1.0, 2.0])
    c = copy.deepcopy(v)
    with gt.GradientTape(persistent=True) as tape:
        loss = gt.sum(c * c)
    assert [id(w) for w in tape.watched_variables()] == [id(c)]
    np.testing.assert_array_equal(tape.gradient(loss, c).numpy(), [2.0, 4.0])
    assert tape.gradient(loss, v, unconnected_gradients="none") is None


def test_a_variable_copied_while_a_tape_records_is_not_watched():
    v = gt.Variable([1.0, 2.0])
    with gt.GradientTape(persistent=True) as tape:
        y = gt.sum(v * v)
        c = copy.deepcopy(v)
    assert [id(w) for w in tape.watched_variables()] == [id(v)]
    assert tape.gradient(y, c, unconnected_gradients="none") is None


# --------------------------------------------------------------------------- modules
def test_deepcopy_of_a_model_trains_independently():
    model = Net(seed=1)
    before = values(model)
    twin = copy.deepcopy(model)
    assert same(values(twin), before)
    assert not set(map(id, twin.variables)) & set(map(id, model.variables))
    step(twin, gt.optimizers.SGD(0.1), seed=0)
    assert same(values(model), before)
    assert not same(values(twin), before)


def test_module_pickle_round_trip_keeps_variables_layers_and_mode():
    model = Net(seed=2).eval()
    back = pickle.loads(pickle.dumps(model))
    assert type(back) is Net and back.training is False
    assert [n for n, _ in back.named_variables()] == [n for n, _ in model.named_variables()]
    assert same(values(back), values(model))
    x = gt.tensor(np.ones((2, 3), np.float32))
    np.testing.assert_array_equal(back(x).numpy(), model(x).numpy())


def test_a_copied_dropout_layer_continues_its_random_stream():
    d = gt.nn.Dropout(0.5, seed=3)
    x = gt.tensor(np.ones(64, np.float32))
    d(x)
    twin, back = copy.deepcopy(d), pickle.loads(pickle.dumps(d))
    expected = d(x).numpy()
    np.testing.assert_array_equal(twin(x).numpy(), expected)
    np.testing.assert_array_equal(back(x).numpy(), expected)


# --------------------------------------------------------------------------- optimizers
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("order", ["model_first", "optimizer_first"])
def test_deepcopy_of_model_and_optimizer_together_continues_identically(name, order):
    model, opt = Net(seed=4), OPTIMIZERS[name]()
    for i in range(3):
        step(model, opt, seed=i)
    before = values(model)
    if order == "model_first":
        model2, opt2 = copy.deepcopy((model, opt))
    else:
        opt2, model2 = copy.deepcopy((opt, model))
    assert opt2.iterations == 3 and type(opt2) is type(opt)
    step(model2, opt2, seed=10)  # the copy's state is the copy's: the original is untouched
    assert same(values(model), before)
    assert opt.iterations == 3
    step(model, opt, seed=10)
    assert same(values(model2), values(model))  # same moments as the original had
    for i in range(11, 13):
        step(model, opt, seed=i)
        step(model2, opt2, seed=i)
    assert same(values(model2), values(model))


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_pickle_of_model_and_optimizer_together_continues_identically(name):
    model, opt = Net(seed=5), OPTIMIZERS[name]()
    for i in range(2):
        step(model, opt, seed=i)
    model2, opt2 = pickle.loads(pickle.dumps((model, opt)))
    assert opt2.iterations == 2
    named = model2.named_variables()
    for k, a in opt.state_dict(model.named_variables()).items():
        np.testing.assert_array_equal(opt2.state_dict(named)[k], a)
    for i in range(2, 5):
        step(model, opt, seed=i)
        step(model2, opt2, seed=i)
    assert same(values(model2), values(model))


def test_optimizer_pickle_round_trip_keeps_its_settings():
    opt = gt.optimizers.AdamW(0.003, beta1=0.8, weight_decay=0.1, global_clipnorm=1.5)
    back = pickle.loads(pickle.dumps(opt))
    assert repr(back) == repr(opt)
    assert (back.learning_rate, back.global_clipnorm, back.iterations) == (0.003, 1.5, 0)
