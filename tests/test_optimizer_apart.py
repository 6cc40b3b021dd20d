"""An optimizer copied or unpickled apart from its model (its state died with the copied
Variables and the step count stayed: Adam then ran from zero moments at a late step, without a
word) and an AdamW state loaded into Adam (decoupled decay read as L2)."""

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
def test_an_optimizer_copied_apart_from_its_model_says_its_moments_are_lost(make, copier):
    x, m, opt = _x(), _model(), make()
    for _ in range(3):
        _step(m, opt, x)
    m_apart, opt_apart = copier(m), copier(opt)
    with pytest.warns(UserWarning, match=rf"{type(opt).__name__}: this optimizer was copied or "
                                         r"unpickled apart from the 4 Variable\(s\) it had state "
                                         r"for \('(kernel|bias)'(, '(kernel|bias)'){3}\): their moments "
                                         r"are lost \(it keeps its step count, 3\), and this step "
                                         r"starts them from zero"):
        _step(m_apart, opt_apart, x)
    with warnings.catch_warnings():  # (said once)
        warnings.simplefilter("error")
        _step(m_apart, opt_apart, x)


def test_its_state_dict_before_a_step_says_so_too():
    x, m, opt = _x(), _model(), gt.optimizers.Adam(0.05)
    _step(m, opt, x)
    opt_apart = _pickled(_pickled(opt))  # (copied twice before a step: still said)
    with pytest.warns(UserWarning, match=r"their moments are lost \(it keeps its step count, 1\), "
                                         r"and this state holds none of them"):
        state = opt_apart.state_dict(_pickled(m).named_variables())
    assert not [k for k in state if "/" in k]


def test_copied_with_its_model_or_loaded_explicitly_nothing_is_said():
    x, m, opt = _x(), _model(), gt.optimizers.Adam(0.05)
    for _ in range(2):
        _step(m, opt, x)
    m_ref, opt_ref = _pickled((m, opt))
    m2, opt2 = _pickled((m, opt))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _step(m_ref, opt_ref, x)
        _step(m2, opt2, x)
        # an optimizer unpickled alone, then given its state explicitly
        m3, opt3 = _pickled(m), _pickled(opt)
        opt3.load_state_dict(opt.state_dict(m.named_variables()), m3.named_variables())
        _step(m3, opt3, x)
    for a, b in zip(m_ref.variables, m2.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_a_layer_replaced_after_loading_starts_fresh_without_a_word():
    x = _x()
    m, opt = _model(), gt.optimizers.Adam(0.05)
    for _ in range(3):
        _step(m, opt, x)
    (m_ref, opt_ref), (m2, opt2) = _pickled((m, opt)), _pickled((m, opt))
    for mm in (m_ref, m2):
        mm.layers[1] = gt.nn.Dense(4, 2, seed=5)  # model surgery: a new head
        mm(gt.ones((3, 5)))
    fresh = gt.optimizers.Adam(0.05)
    fresh.load_state_dict(opt_ref.state_dict(m_ref.named_variables()), m_ref.named_variables())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _step(m2, opt2, x)
        _step(m_ref, fresh, x)
    for a, b in zip(m_ref.variables, m2.variables):  # the new head got no old moments
        np.testing.assert_array_equal(a.numpy(), b.numpy())


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


def test_the_warning_points_at_the_users_line():
    x, m, opt = _x(), _model(), gt.optimizers.Adam(0.05)
    _step(m, opt, x)
    opt_apart = _pickled(opt)
    with pytest.warns(UserWarning, match="their moments are lost") as record:
        opt_apart.state_dict()
    assert record[0].filename == __file__
