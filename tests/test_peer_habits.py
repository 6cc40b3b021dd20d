"""Keras's and PyTorch's spellings met by a new user get gradtape's: layer keywords, PyTorch's
module and optimizer methods, sources given as a dict view, one-hot integer labels, an
unnamed variable given twice."""

from __future__ import annotations

import numpy as np
import pytest

import gradtape as gt


@pytest.mark.parametrize("make, match", [
    (lambda: gt.nn.Dense(units=3), r"Dense: unknown argument units=3; Keras's units is "
                                   r"out_features, after the input size: Dense\(in_features, "
                                   r"out_features\) \(it takes in_features, out_features,"),
    (lambda: gt.nn.Conv2D(1, filters=8, kernel_size=3), r"Conv2D: unknown argument filters=8; "
                                                        r"Keras's filters is out_channels"),
    (lambda: gt.nn.Dense(2, 3, bias=False), r"write use_bias=\.\.\. \(PyTorch's bias\)"),
    (lambda: gt.nn.Dropout(p=0.5), r"write rate=\.\.\. \(PyTorch's p\)"),
    (lambda: gt.nn.LayerNorm(4, epsilon=1e-3), r"write eps=\.\.\. \(Keras's epsilon\)"),
    (lambda: gt.nn.Embedding(10, embedding_dim=4), r"write dim=\.\.\. \(PyTorch's embedding_dim\)"),
    (lambda: gt.nn.MaxPool2D(pool_size=2), r"write kernel_size=\.\.\. \(Keras's pool_size\)"),
    (lambda: gt.nn.Dense(2, 3, input_dim=2), r"Dense: unknown argument input_dim=2 \(it takes"),
])
def test_a_layer_names_its_spelling_of_a_keras_or_pytorch_keyword(make, match):
    with pytest.raises(TypeError, match=match):
        make()


def test_a_users_own_module_keeps_its_constructor():
    class Mine(gt.nn.Module):
        def __init__(self, units: int) -> None:
            self.units = units

    assert Mine(units=3).units == 3
    with pytest.raises(TypeError, match="unexpected keyword argument 'filters'"):
        Mine(filters=3)  # type: ignore[call-arg]


@pytest.mark.parametrize("obj, name, hint", [
    (lambda: gt.nn.Dense(2, 3), "parameters", "m.trainable_variables"),
    (lambda: gt.nn.Dense(2, 3), "state_dict", "gt.nn.save"),
    (lambda: gt.nn.Dense(2, 3), "zero_grad", "nothing accumulates"),
    (lambda: gt.optimizers.Adam(1e-3), "zero_grad", "nothing accumulates"),
    (lambda: gt.optimizers.Adam(1e-3), "step", r"opt.apply_gradients\(zip\(grads, variables\)\)"),
])
def test_pytorchs_names_say_what_does_it_here(obj, name, hint):
    o = obj()
    with pytest.raises(AttributeError, match=rf"object has no attribute '{name}' \(PyTorch's; here "
                                             rf".*{hint}"):
        getattr(o, name)
    assert not hasattr(o, name)


def test_other_missing_attributes_keep_pythons_message():
    with pytest.raises(AttributeError, match=r"^'Dense' object has no attribute 'nope'$"):
        gt.nn.Dense(2, 3).nope  # noqa: B018
    m = gt.nn.Dense(2, 3)
    m.extra = 1
    assert m.extra == 1 and getattr(m, "missing", None) is None


def test_sources_given_as_a_dict_view_say_to_pass_a_list():
    d = {"a": gt.Variable([1.0]), "b": gt.Variable([2.0])}
    with gt.GradientTape() as tape:
        y = gt.sum(d["a"] * d["b"])
    with pytest.raises(TypeError, match=r"gradient\(\): sources must be a gradtape Tensor or "
                                        r"Variable, or a list, tuple or dict of them, got "
                                        r"dict_values; pass list\(\.\.\.\) of it"):
        tape.gradient(y, d.values())


def test_one_hot_integer_labels_get_a_hint():
    logits = gt.tensor(np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match=r"one-hot labels\? pass the class indices "
                                         r"\(gt.argmax\(labels, axis=-1\)\) or the one-hot rows as "
                                         r"floats"):
        gt.nn.cross_entropy(logits, np.eye(3, dtype=np.int64)[[0, 2]])


def test_an_unnamed_variable_given_twice_is_not_called_by_its_position():
    v = gt.Variable([1.0])
    with pytest.raises(ValueError, match=r"an unnamed variable is given twice \(pairs #0 and #1\)"):
        gt.optimizers.SGD(0.1).apply_gradients([(gt.tensor([1.0]), v), (gt.tensor([1.0]), v)])


def test_an_attribute_error_inside_a_property_is_not_hidden_by_the_hints():
    class Net(gt.nn.Module):
        def __init__(self) -> None:
            self.d = gt.nn.Dense(2, 2, seed=0)

        @property
        def width(self) -> int:
            return self.d.units_typo  # (a bug inside the property)

    with pytest.raises(AttributeError, match=r"'Dense' object has no attribute 'units_typo'"):
        Net().width  # noqa: B018

    class Sched:
        base = None

        def __call__(self, step: int) -> float:
            return self.base.base_lr  # (a bug inside the schedule)

    w = gt.Variable([1.0])
    with pytest.raises(AttributeError, match=r"'NoneType' object has no attribute 'base_lr'"):
        gt.optimizers.SGD(Sched()).apply_gradients([(gt.tensor([1.0]), w)])


def test_a_chain_of_properties_runs_each_getter_once():
    calls = []

    class Net(gt.nn.Module):
        @property
        def a(self):
            calls.append("a")
            return self.b

        @property
        def b(self):
            calls.append("b")
            return self._missing

    with pytest.raises(AttributeError, match=r"'Net' object has no attribute '_missing'"):
        Net().a  # noqa: B018
    assert calls == ["a", "b"]
