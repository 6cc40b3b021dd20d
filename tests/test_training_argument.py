"""Keras's ``model(x, training=...)``: a call run in a mode without changing the modules'
flags, passed on to the modules it calls and to a ``forward`` that takes ``training``."""

from __future__ import annotations

import functools
import threading

import numpy as np
import pytest

import gradtape as gt


def _net():
    return gt.nn.Sequential([gt.nn.Dense(4, 6, seed=0), gt.nn.BatchNorm(6),
                             gt.nn.Dropout(0.5, seed=1), gt.nn.Dense(6, 3, seed=2)])


def _x(seed=0):
    return gt.tensor(np.random.default_rng(seed).standard_normal((8, 4)).astype(np.float32))


def test_training_false_runs_one_call_in_eval_mode_and_leaves_the_flags():
    net, ref = _net(), _net()
    x = _x()
    got = net(x, training=False)
    np.testing.assert_array_equal(got.numpy(), ref.eval()(x).numpy())
    assert all(m.training for m in [net, *net.submodules()])  # still in training mode
    bn = net[1]  # eval mode: the running statistics were read, not updated
    np.testing.assert_array_equal(bn.running_mean.numpy(), np.zeros(6, np.float32))
    np.testing.assert_array_equal(bn.running_var.numpy(), np.ones(6, np.float32))


def test_training_true_runs_one_call_in_training_mode():
    net, ref = _net().eval(), _net()
    x = _x()
    np.testing.assert_array_equal(net(x, training=True).numpy(), ref(x).numpy())
    assert not any(m.training for m in [net, *net.submodules()])
    np.testing.assert_array_equal(net[1].running_mean.numpy(), ref[1].running_mean.numpy())
    assert np.abs(net[1].running_mean.numpy()).max() > 0  # updated from the batch
    # the next call without the argument is back in the module's own mode
    np.testing.assert_array_equal(net(x).numpy(), ref.eval()(x).numpy())


def test_training_none_keeps_the_modes():
    net, ref = _net().eval(), _net().eval()
    x = _x()
    np.testing.assert_array_equal(net(x, training=None).numpy(), ref(x).numpy())


class _KerasStyle(gt.nn.Module):
    def __init__(self):
        self.dense = gt.nn.Dense(4, 2, seed=0)
        self.seen = []

    def forward(self, x, training=False):
        self.seen.append(training)
        return self.dense(x)


def test_a_forward_taking_training_receives_it_also_from_an_enclosing_call():
    inner = _KerasStyle()
    outer = gt.nn.Sequential([inner])
    x = _x()
    inner(x)  # its own default
    inner(x, training=True)
    outer(x, training=True)  # Sequential passes nothing: the enclosing call's mode
    outer(x, training=False)
    outer(x)
    assert inner.seen == [False, True, True, False, False]


def test_an_inner_call_with_its_own_argument_wins():
    class Outer(gt.nn.Module):
        def __init__(self):
            self.drop = gt.nn.Dropout(0.5, seed=0)

        def forward(self, x):
            return self.drop(x, training=False), self.drop.training

    m = Outer()
    y, inner_mode = m(gt.ones((2, 8)), training=True)
    np.testing.assert_array_equal(y.numpy(), np.ones((2, 8), np.float32))
    assert inner_mode is True  # read after the inner call: the outer call's mode again


def test_the_mode_of_a_call_is_the_calling_threads_only():
    drop = gt.nn.Dropout(0.5, seed=0)
    inside, release = threading.Event(), threading.Event()
    seen = []

    class Wait(gt.nn.Module):
        def forward(self, x):
            inside.set()
            release.wait(10)
            return x

    def other():
        inside.wait(10)
        seen.append(drop.training)  # the flag itself, not the other thread's call mode
        release.set()

    t = threading.Thread(target=other)
    t.start()
    gt.nn.Sequential([Wait(), drop])(gt.ones((1, 2)), training=False)
    t.join()
    assert seen == [True]


def test_a_bad_training_argument_is_refused():
    net = _net()
    with pytest.raises(TypeError, match=r"Sequential.__call__: training must be True or False, "
                                        r"got 'yes'"):
        net(_x(), training="yes")


def test_compiled_steps_follow_the_training_argument():
    rng = np.random.default_rng(0)
    net, ref = _net(), _net()
    opt, ref_opt = gt.optimizers.SGD(0.1), gt.optimizers.SGD(0.1)
    ys = [gt.tensor(rng.integers(0, 3, 8)) for _ in range(5)]
    xs = [_x(i) for i in range(5)]

    def step(model, opt, x, y):
        with gt.GradientTape() as tape:
            loss = gt.nn.cross_entropy(model(x, training=True), y)
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables))
        return loss, model(x, training=False)

    compiled = gt.function(lambda x, y: step(net, opt, x, y))
    for i, (x, y) in enumerate(zip(xs, ys)):
        if i == 3:  # the modules' own mode changes: the step names its modes itself
            net.eval()
            ref.eval()
        got, want = compiled(x, y), step(ref, ref_opt, x, y)
        for a, b in zip(got, want):
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)
    assert compiled.trace_count == 2  # replayed from the third call, also after eval()
    # a compiled model called with either mode: one signature per mode
    f = gt.function(net)
    for training in (True, False, True, False):
        np.testing.assert_allclose(f(xs[0], training=training).numpy(),
                                   ref(xs[0], training=training).numpy(), rtol=1e-5, atol=1e-6)
    assert f.trace_count == 4  # two traces per mode, then replays


def test_a_compiled_function_called_inside_a_call_with_a_mode_reads_that_mode():
    drop = gt.nn.Dropout(0.5, seed=0)
    f = gt.function(lambda x: drop(x))

    class Outer(gt.nn.Module):
        def forward(self, x):
            return f(x)

    x = gt.ones((4, 8))
    outer = Outer()
    for _ in range(3):
        f(x)  # traced and replayed in training mode
        np.testing.assert_array_equal(outer(x, training=False).numpy(), x.numpy())


class _Block(gt.nn.Module):
    def __init__(self):
        self.drop = gt.nn.Dropout(0.5, seed=0)
        self.seen = []

    def forward(self, x, training=False):
        self.seen.append(training)
        return self.drop(x)


class _Passes(gt.nn.Module):
    def __init__(self):
        self.block = _Block()

    def forward(self, x, training=False):
        return self.block(x, training)  # Keras code passes it on by position


def test_a_training_argument_passed_by_position_is_that_calls_mode():
    # the enclosing call's mode was added by keyword next to the positional one: "got
    # multiple values for argument 'training'"
    m = _Passes()
    x = gt.ones((2, 8))
    np.testing.assert_array_equal(m(x, training=False).numpy(), x.numpy())
    assert float(gt.sum(m(x, training=True)).numpy()) != 16.0  # dropped and scaled
    np.testing.assert_array_equal(m.block(x, False).numpy(), x.numpy())  # by position, alone
    assert m.block.seen == [False, True, False]
    with pytest.raises(TypeError, match=r"_Block.__call__: training given both by position "
                                        r"\(True\) and by keyword \(False\)"):
        m.block(x, True, training=False)


def test_training_none_is_as_if_not_given():
    k = _KerasStyle()
    x = _x()
    k(x)
    k(x, training=None)  # the forward's own default, as when left out
    gt.nn.Sequential([k])(x, training=True)
    k(x, None)  # by position too
    assert k.seen == [False, False, True, False]


class _DefaultsOff(gt.nn.Module):
    def __init__(self):
        self.drop = gt.nn.Dropout(0.5, seed=0)

    def forward(self, x, training=False):
        return self.drop(x)


def test_a_forwards_default_is_the_mode_of_the_modules_it_calls():
    # as in Keras, the default of call's training becomes the call's mode: model(x) of a
    # forward(self, x, training=False) ran its Dropout in the module's own training mode
    m = _DefaultsOff()
    x = gt.ones((2, 16))
    np.testing.assert_array_equal(m(x).numpy(), x.numpy())
    assert m.drop.training  # the flag itself is untouched
    assert float(gt.sum(gt.nn.Sequential([m])(x, training=True)).numpy()) != 32.0


def test_a_compiled_forward_receives_training_by_keyword():
    # a forward decorated with gt.function looks like (*args, **kwargs) to a signature: its
    # training parameter was not found, so training=True never reached it
    class M(gt.nn.Module):
        @gt.function
        def forward(self, x, training=False):
            return x + (100.0 if training else 0.0)

    m = M()
    x = gt.ones((2, 2))
    for _ in range(3):
        np.testing.assert_array_equal(m(x, training=True).numpy(), np.full((2, 2), 101.0))
        np.testing.assert_array_equal(m(x, True).numpy(), np.full((2, 2), 101.0))
        np.testing.assert_array_equal(m(x).numpy(), x.numpy())


@pytest.mark.parametrize("bad, shown", [([], "list"), (object(), "object"), (2, "2"),
                                        (np.ones(3), r"ndarray of shape \(3,\)")])
def test_a_training_argument_that_is_not_a_flag_is_refused(bad, shown):
    with pytest.raises(TypeError, match=rf"Sequential.__call__: training must be True or False, "
                                        rf"got {shown}"):
        _net()(_x(), training=bad)


def test_the_forward_that_runs_says_where_training_is():
    # the position was read from the class's forward: a forward replaced on the instance had
    # its second argument taken for training (0.5 refused, 1 made True), and a staticmethod's
    # position was one off (it has no self)
    class Keras(gt.nn.Module):
        def forward(self, x, training=False):
            return x

    m = Keras()
    m.forward = lambda x, scale: x * scale
    x = gt.ones((2, 3))
    np.testing.assert_array_equal(m(x, 0.5).numpy(), np.full((2, 3), 0.5, np.float32))
    np.testing.assert_array_equal(m(x, 3).numpy(), np.full((2, 3), 3.0, np.float32))

    class Static(gt.nn.Module):
        @staticmethod
        def forward(x, training=False):
            return x * (2.0 if training else 1.0)

    s = Static()
    for call in (lambda: s(x, training=True), lambda: s(x, True), lambda: gt.nn.Sequential([s])(
            x, training=True)):
        np.testing.assert_array_equal(call().numpy(), np.full((2, 3), 2.0, np.float32))
    np.testing.assert_array_equal(s(x).numpy(), x.numpy())


def test_program_source_names_a_program_traced_inside_a_call_with_a_mode():
    drop = gt.nn.Dropout(0.5, seed=0)
    f = gt.function(lambda x: drop(x) * 2.0)

    class Outer(gt.nn.Module):
        def forward(self, x):
            return f(x)

    x = gt.ones((4, 8))
    for _ in range(3):
        Outer()(x, training=False)
    with pytest.raises(ValueError, match=r"no program for this signature yet .*; it has one "
                                         r"traced inside a module call with training=False"):
        f.program_source(x)


def test_module_trainable_freezes_and_unfreezes_its_variables():
    # Keras's layer.trainable = False was stored as a plain attribute: nothing froze
    net = _net()
    n_train = len(net.trainable_variables)
    net[0].trainable = False
    assert not net[0].trainable and net.trainable
    assert len(net.trainable_variables) == n_train - 2
    net.trainable = False
    assert net.trainable_variables == [] and not net.trainable
    net.trainable = True  # the running statistics stay non-trainable
    assert len(net.trainable_variables) == n_train
    assert not net[1].running_mean.trainable
    with pytest.raises(TypeError, match=r"Sequential: trainable must be True or False, got 'no'"):
        net.trainable = "no"


def test_keras_habits_get_errors_that_name_them():
    x = gt.ones((2, 4))
    with pytest.raises(TypeError, match=r"Dropout.__call__: got True as positional argument 2 "
                                        r"\(counting from 1\), which Dropout.forward does not "
                                        r"take; pass the mode by keyword: training=True"):
        gt.nn.Dropout(0.5)(x, True)

    class K(gt.nn.Module):
        def call(self, x):
            return x

    with pytest.raises(NotImplementedError, match=r"K must define forward\(\) \(Keras's call\(\) "
                                                  r"is named forward\(\) here\)"):
        K()(x)
    with pytest.raises(TypeError, match=r"training must be True or False, got a Tensor holding "
                                        r"0.69"):
        _net()(_x(), training=gt.tensor(0.7))
    f = gt.function(lambda x, t: _net()(x, training=t))
    with pytest.raises(gt.TracingError, match=r"training must be a Python bool inside "
                                              r"gt.function"):
        f(_x(), gt.tensor(True))


def test_forwards_from_elsewhere_get_the_keras_rules_too():
    # the rules were fixed when the class was made: a forward assigned to the class later or
    # to the instance skipped its default's mode; a module used as another's forward had its
    # training flag overwritten by the signature cache; a partial's training= was ignored
    class Block(gt.nn.Module):
        def __init__(self):
            self.drop = gt.nn.Dropout(0.5, seed=0)

    def forward(self, x, training=False):
        return self.drop(x)

    x = gt.ones((4, 64))
    later = Block()
    Block.forward = forward
    np.testing.assert_array_equal(later(x).numpy(), x.numpy())
    inst = Block()
    inst.forward = functools.partial(forward, inst)
    np.testing.assert_array_equal(inst(x).numpy(), x.numpy())
    bound = Block()
    bound.forward = functools.partial(forward, bound, training=True)
    assert float(gt.sum(bound(x)).numpy()) != 256.0  # the partial's mode: dropped
    inner = gt.nn.Dropout(0.5, seed=0)
    outer = gt.nn.Sequential([])
    outer.forward = inner
    np.testing.assert_array_equal(outer(x, training=False).numpy(), x.numpy())
    assert inner.training is True


def test_a_bool_argument_of_a_forwards_own_is_not_taken_for_a_mode():
    class Gate(gt.nn.Module):
        def forward(self, x, use_mask, *, scale):
            return x * scale if use_mask else x

    np.testing.assert_array_equal(Gate()(gt.ones(2), True, scale=2.0).numpy(), [2.0, 2.0])


def test_module_trainable_refuses_none_and_leaves_a_hand_freeze():
    net = _net()
    with pytest.raises(TypeError, match=r"Sequential: trainable must be True or False, got None"):
        net.trainable = None
    net.trainable = False
    kernel = net[0].kernel
    kernel.trainable = True  # by hand: no longer the module's freeze
    kernel.trainable = False
    net.trainable = True
    assert not kernel.trainable and net[3].kernel.trainable
