"""gt.function and trainable flags: a step that sets Module.trainable leaves the marks a later
trainable = True reads (a GAN's alternating steps), and a step that reads a Variable's
trainable flag holds for its value (read then set, or read only)."""

from __future__ import annotations

import numpy as np

import gradtape as gt


def _gan(compile_g: bool) -> list[tuple[int, bool]]:
    G = gt.nn.Dense(2, 3, seed=0)
    D = gt.nn.Dense(3, 1, seed=1)
    og, od = gt.optimizers.SGD(0.1), gt.optimizers.SGD(0.1)

    def g_step(z):
        D.trainable = False
        G.trainable = True
        with gt.GradientTape() as tape:
            loss = gt.sum(D(G(z)))
        og.apply_gradients(zip(tape.gradient(loss, G.trainable_variables), G.trainable_variables))
        return loss

    def d_step(x):
        D.trainable = True
        G.trainable = False
        with gt.GradientTape() as tape:
            loss = gt.sum(D(x) ** 2)
        vs = D.trainable_variables
        if vs:
            od.apply_gradients(zip(tape.gradient(loss, vs), vs))
        return len(vs)

    gs = gt.function(g_step) if compile_g else g_step
    log = []
    for _ in range(5):
        before = D.kernel.numpy().copy()
        n = d_step(gt.ones((4, 3)))
        log.append((n, not np.array_equal(before, D.kernel.numpy())))
        gs(gt.ones((4, 2)))
    return log


def test_a_compiled_step_freezing_a_module_leaves_it_unfreezable():
    assert _gan(True) == _gan(False) == [(2, True)] * 5


def test_a_variable_frozen_by_hand_stays_frozen_through_a_compiled_module_setting():
    def run(compiled: bool) -> list[list[bool]]:
        c = gt.nn.Dense(3, 2, seed=0)

        def step(x):
            c.trainable = False
            y = c(x)  # a pass through the frozen layer
            c.trainable = True  # trains again what the setting froze, not a hand-frozen kernel
            return y

        f = gt.function(step) if compiled else step
        out = []
        for i in range(5):
            if i == 3:
                c.kernel.trainable = False  # by hand, between calls
            f(gt.ones((1, 3)))
            out.append([v.trainable for v in c.variables])
        return out

    assert run(True) == run(False) == [[True, True]] * 3 + [[False, True]] * 2


def test_a_flag_read_then_set_by_the_step_is_held_for():
    def run(compiled: bool) -> list[float]:
        v = gt.Variable([1.0], name="v")

        def step(x):
            y = x * 2.0
            if v.trainable:  # read, then set: the first call differs from the next
                y = y + 1.0
                v.trainable = False
            return gt.sum(y)

        f = gt.function(step) if compiled else step
        out = []
        for i in range(6):
            if i in (1, 4):
                v.trainable = True  # set back from outside
            out.append(float(f(gt.ones((1,)))))
        return out

    assert run(True) == run(False) == [3.0, 3.0, 2.0, 2.0, 3.0, 2.0]


def test_a_flag_only_read_by_the_step_traces_again_when_it_changes():
    def run(compiled: bool) -> list[float]:
        aux = gt.Variable([1.0], name="aux", trainable=False)

        def step(x):
            return gt.sum(x + aux) if aux.trainable else gt.sum(x)

        f = gt.function(step) if compiled else step
        out = []
        for i in range(5):
            if i == 3:
                aux.trainable = True
            out.append(float(f(gt.ones((2,)))))
        return out

    assert run(True) == run(False) == [2.0, 2.0, 2.0, 4.0, 4.0]
