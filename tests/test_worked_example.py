"""The worked example: a one-layer net ``a = w*x + b``, loss ``J = 1/2 (a - y)^2`` at
``x = -2, y = 2, w = 2, b = 8``.

Forward: c = w*x = -4, a = c + b = 4, d = a - y = 2, J = d^2 / 2 = 2.
Backward: dJ/dd = d = 2, dJ/da = dJ/dd = 2, dJ/dc = dJ/db = dJ/da = 2, dJ/dw = dJ/dc * x = -4,
dJ/dx = dJ/dc * w = 4.
"""

from __future__ import annotations

import numpy as np
import pytest

import gradtape as gt


def _forward(w, x, b, y):
    c = w * x
    a = c + b
    d = a - y
    J = 0.5 * d * d
    return c, a, d, J


def test_forward_values(backend):
    x, y = gt.tensor(-2.0), gt.tensor(2.0)
    w, b = gt.Variable(2.0, name="w"), gt.Variable(8.0, name="b")
    with gt.GradientTape(persistent=True):
        c, a, d, J = _forward(w, x, b, y)
    assert [float(t) for t in (c, a, d, J)] == [-4.0, 4.0, 2.0, 2.0]


def test_backward_intermediates_as_sources(backend):
    x, y = gt.tensor(-2.0), gt.tensor(2.0)
    w, b = gt.Variable(2.0, name="w"), gt.Variable(8.0, name="b")
    with gt.GradientTape(persistent=True) as tape:
        tape.watch(x)
        c, a, d, J = _forward(w, x, b, y)
    grads = tape.gradient(J, {"d": d, "a": a, "c": c, "b": b, "w": w, "x": x, "y": y})
    assert {k: float(v) for k, v in grads.items() if v is not None} == {
        "d": 2.0, "a": 2.0, "c": 2.0, "b": 2.0, "w": -4.0, "x": 4.0}
    assert grads["y"] is None  # y was never watched
    assert tape.watched_variables() == (w, b)
    # chain rule piece by piece, on the same persistent tape
    assert float(tape.gradient(d, a)) == 1.0
    assert float(tape.gradient(a, c)) == 1.0
    assert float(tape.gradient(c, w)) == -2.0   # x
    assert float(tape.gradient(J, a)) == float(tape.gradient(J, d)) * float(tape.gradient(d, a))


def test_one_gradient_descent_step_reduces_loss():
    x, y = gt.tensor(-2.0), gt.tensor(2.0)
    w, b = gt.Variable(2.0), gt.Variable(8.0)
    with gt.GradientTape() as tape:
        J = _forward(w, x, b, y)[3]
    gw, gb = tape.gradient(J, [w, b])
    w.assign_sub(0.1 * gw)
    b.assign_sub(0.1 * gb)
    assert float(w) == pytest.approx(2.4) and float(b) == pytest.approx(7.8)
    with gt.GradientTape() as tape:
        J2 = _forward(w, x, b, y)[3]
    # a = 2.4 * -2 + 7.8 = 3.0, d = 1, J = 0.5
    assert float(J2) == pytest.approx(0.5)
    np.testing.assert_allclose([float(g) for g in tape.gradient(J2, [w, b])], [-2.0, 1.0], rtol=1e-6)


def test_second_derivatives_of_loss():
    x, y = gt.tensor(-2.0), gt.tensor(2.0)
    w, b = gt.Variable(2.0), gt.Variable(8.0)
    with gt.GradientTape(persistent=True) as outer:
        with gt.GradientTape() as inner:
            J = _forward(w, x, b, y)[3]
        gw, gb = inner.gradient(J, [w, b])
    # J = 1/2 (w x + b - y)^2: d2J/dw2 = x^2 = 4, d2J/dwdb = x = -2, d2J/db2 = 1
    assert [float(g) for g in outer.gradient(gw, [w, b])] == [4.0, -2.0]
    assert float(outer.gradient(gb, b)) == 1.0
