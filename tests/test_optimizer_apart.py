"""An optimizer copied or unpickled apart from its model (its state was dropped with the
copied Variables, and the step count kept: Adam then ran from zero moments at a late step)
and an AdamW state loaded into Adam (decoupled decay read as L2)."""

from __future__ import annotations

import copy
import os
import pickle
import warnings

import numpy as np
import pytest

import gradtape as gt


def _model() -> gt.nn.Module:
    m = gt.nn.Sequential([gt.nn.Dense(5, 4, activation="tanh"), gt.nn.Dense(4, 2)])
    m(gt.ones((3, 5)))
    return m


def _step(m: gt.nn.Module, opt: gt.optimizers.Optimizer, x: gt.Tensor) -> None:
    with gt.GradientTape() as tape:
        loss = gt.sum(m(x) ** 2)
    opt.apply_gradients(zip(tape.gradient(loss, m.trainable_variables), m.trainable_variables))


def _x() -> gt.Tensor:
    return gt.tensor(np.random.default_rng(0).normal(size=(3, 5)).astype(np.float32))


def _pickled(obj):
    return pickle.loads(pickle.dumps(obj))


@pytest.mark.parametrize("make", [lambda: gt.optimizers.Adam(0.05),
                                  lambda: gt.optimizers.SGD(0.05, momentum=0.9)],
                         ids=["adam", "sgd-momentum"])
@pytest.mark.parametrize("copier", [_pickled, copy.deepcopy], ids=["pickle", "deepcopy"])
def test_an_optimizer_copied_apart_from_its_model_resumes_as_one_copied_with_it(make, copier):
    x, m, opt = _x(), _model(), make()
    for _ in range(3):
        _step(m, opt, x)
    m_ref, opt_ref = copier((m, opt))
    m_apart, opt_apart = copier(m), copier(opt)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(3):
            _step(m_ref, opt_ref, x)
            _step(m_apart, opt_apart, x)
    for a, b in zip(m_ref.variables, m_apart.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert opt_apart.iterations == opt_ref.iterations == 6


def test_an_optimizer_pickled_twice_before_its_first_step_keeps_the_state():
    x, m, opt = _x(), _model(), gt.optimizers.Adam(0.05)
    for _ in range(2):
        _step(m, opt, x)
    m_ref, opt_ref = _pickled((m, opt))
    m_apart, opt_apart = _pickled(m), _pickled(_pickled(opt))
    _step(m_ref, opt_ref, x)
    _step(m_apart, opt_apart, x)
    for a, b in zip(m_ref.variables, m_apart.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_state_that_matches_no_variable_of_the_first_step_is_dropped_with_a_warning():
    x, m, opt = _x(), _model(), gt.optimizers.Adam(0.05)
    _step(m, opt, x)
    other = gt.nn.Sequential([gt.nn.Dense(5, 3, activation="tanh"), gt.nn.Dense(3, 2)])
    other(x)
    opt_apart = _pickled(opt)
    with pytest.warns(UserWarning, match=r"Adam: this optimizer was copied or unpickled apart from "
                                         r"the 4 Variable\(s\) it had state for \('kernel', 'bias', "
                                         r"'kernel', 'bias'\).*start from zero at step 1\. Pickle"):
        _step(other, opt_apart, x)
    with warnings.catch_warnings():  # (only the first step settles it)
        warnings.simplefilter("error")
        _step(other, opt_apart, x)


def test_an_adamw_state_is_refused_by_adam(tmp_path):
    x, m = _x(), _model()
    opt = gt.optimizers.AdamW(0.05, weight_decay=0.1)
    _step(m, opt, x)
    state = opt.state_dict(m.named_variables())
    assert bool(state["hyper.decoupled_weight_decay"]) is True
    adam = gt.optimizers.Adam(0.05)
    with pytest.raises(ValueError, match=r"Adam.load_state_dict: this state was written by AdamW "
                                         r"\(weight_decay=0.1 as decoupled decay\); Adam would read "
                                         r"it as L2 added to the gradient: load it into "
                                         r"gt.optimizers.AdamW"):
        adam.load_state_dict(state, m.named_variables())
    assert adam.iterations == 0 and adam.weight_decay == 0.0
    path = gt.nn.save(os.fspath(tmp_path / "ckpt"), m, opt)
    with pytest.raises(ValueError, match="written by AdamW"):
        gt.nn.load(path, _model(), gt.optimizers.Adam(0.05))
    l2 = gt.optimizers.Adam(0.05, weight_decay=0.1)
    _step(m, l2, x)
    with pytest.raises(ValueError, match=r"written by Adam \(weight_decay=0.1 as L2 added to the "
                                         r"gradient\); AdamW would read it as decoupled decay"):
        gt.optimizers.AdamW(0.05).load_state_dict(l2.state_dict(m.named_variables()),
                                                  m.named_variables())


def test_adam_and_adamw_states_load_into_each_other_without_weight_decay():
    x, m = _x(), _model()
    opt = gt.optimizers.AdamW(0.05, weight_decay=0.0)
    _step(m, opt, x)
    adam = gt.optimizers.Adam(0.05)
    adam.load_state_dict(opt.state_dict(m.named_variables()), m.named_variables())
    assert adam.iterations == 1
    old = {k: a for k, a in opt.state_dict(m.named_variables()).items()
           if k != "hyper.decoupled_weight_decay"}  # (a state written before the entry)
    gt.optimizers.Adam(0.05).load_state_dict({**old, "hyper.weight_decay": np.asarray(0.1)},
                                             m.named_variables())
    with pytest.raises(TypeError, match=r"'hyper.decoupled_weight_decay' must be a bool scalar"):
        gt.optimizers.Adam(0.05).load_state_dict(
            {**old, "hyper.decoupled_weight_decay": np.asarray(1.0)}, m.named_variables())
