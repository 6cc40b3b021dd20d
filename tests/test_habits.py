"""The habits a PyTorch or TensorFlow user brings, and what gradtape does with each:

* ``w -= lr * g`` on a Variable updates it in place (it stays the Variable);
* ``binary_cross_entropy`` takes probabilities, ``binary_cross_entropy_with_logits`` logits;
* Python scalars are weakly typed: integer tensors meet a Python float in float32, never float64;
* the hint for an integer Variable says how to make a float one;
* forward ops are silent about NumPy's RuntimeWarnings (``check_numerics`` finds the NaN);
* optimizers warn about None gradients, name variables, ``minimize``, ``state_dict()``;
* ``help()`` shows docstrings (with the constructor's arguments), never source comments;
* the digits demo's flags are documented and validated.
"""

from __future__ import annotations

import inspect
import math
import os
import pydoc
import re
import subprocess
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pytest

import gradtape as gt
import gradtape.extend
import gradtape.nn.init
import gradtape.testing
from gradtape.examples import digits
from gradtape.testing import check_grads

ROOT = Path(__file__).resolve().parents[1]
F32, F64 = np.dtype(np.float32), np.dtype(np.float64)


# --------------------------------------------------------------------------- 1. in-place Variable updates
def test_minus_equals_updates_the_variable_in_place(backend):
    w = gt.Variable([1.0, 2.0], name="w")
    same, buf = w, w.data
    w -= 0.5 * gt.tensor([2.0, 2.0])
    assert w is same and type(w) is gt.Variable and w.data is buf
    np.testing.assert_allclose(w.numpy(), [0.0, 1.0])
    w += 1
    w *= gt.tensor([2.0, 3.0])
    w /= 2
    assert w is same and w.data is buf
    np.testing.assert_allclose(w.numpy(), [1.0, 3.0])
    w += [[1.0, 1.0]][0]  # any array-like broadcasting to the variable's shape
    np.testing.assert_allclose(w.numpy(), [2.0, 4.0])


def test_in_place_updates_are_never_recorded_and_keep_what_a_tape_read():
    w = gt.Variable([3.0], name="w")
    with gt.GradientTape(persistent=True) as tape:
        y = w * w
        w -= 1.0  # inside the tape: not an op of the tape
    assert tape.watched_variables() == (w,)
    np.testing.assert_allclose(w.numpy(), [2.0])
    np.testing.assert_allclose(tape.gradient(y, w).numpy(), [6.0])  # the value y read: 3
    w *= 10.0  # after the forward: copy-on-write keeps the saved 3
    np.testing.assert_allclose(tape.gradient(y, w).numpy(), [6.0])
    with gt.GradientTape() as tape2:
        w += 1.0  # only an update: the tape follows nothing
    assert tape2.watched_variables() == ()


def test_a_training_loop_with_minus_equals_trains():
    w = gt.Variable([4.0, -2.0], name="w")
    for _ in range(50):
        with gt.GradientTape() as tape:
            loss = gt.sum(w * w)
        w -= 0.1 * tape.gradient(loss, w)
    assert isinstance(w, gt.Variable) and float(gt.sum(w * w)) < 1e-8


def test_integer_variables_in_place():
    v = gt.Variable([1, 2], name="count")
    v += 2
    v *= 3
    np.testing.assert_array_equal(v.numpy(), [9, 12])
    assert v.dtype == np.int64
    with pytest.raises(TypeError, match=r'count has dtype int64.*truncate.*dtype="float32"'):
        v /= 2


def test_a_tensor_is_immutable_so_plus_equals_rebinds():
    t = gt.tensor([1.0, 2.0])
    before = t
    t += 1
    assert t is not before and type(t) is gt.Tensor
    np.testing.assert_array_equal(before.numpy(), [1.0, 2.0])
    np.testing.assert_array_equal(t.numpy(), [2.0, 3.0])


def test_in_place_value_errors_name_the_operation():
    w = gt.Variable([1.0, 2.0], name="w")
    with pytest.raises(ValueError, match=r"Variable \*=: value has shape \(3,\), expected .*\(2,\)"):
        w *= np.ones(3)
    with pytest.raises(TypeError, match="Variable /=: value is non-numeric"):
        w /= "x"
    np.testing.assert_array_equal(w.numpy(), [1.0, 2.0])


# --------------------------------------------------------------------------- 2. binary cross-entropy
def _bce_ref(p, t):
    return -(t * np.log(p) + (1 - t) * np.log1p(-p))


def test_binary_cross_entropy_takes_probabilities(backend, rng):
    p, t = rng.uniform(0.05, 0.95, size=(4, 3)), rng.uniform(size=(4, 3))
    got = gt.nn.binary_cross_entropy(gt.tensor(p), gt.tensor(t), reduction="none")
    np.testing.assert_allclose(got.numpy(), _bce_ref(p, t), rtol=1e-12)
    np.testing.assert_allclose(gt.nn.binary_cross_entropy(gt.tensor(p), gt.tensor(t)).numpy(),
                               _bce_ref(p, t).mean(), rtol=1e-12)
    np.testing.assert_allclose(gt.nn.binary_cross_entropy(gt.tensor(p), gt.tensor(t), "sum").numpy(),
                               _bce_ref(p, t).sum(), rtol=1e-12)
    x = gt.tensor(p)
    with gt.GradientTape() as tape:
        tape.watch(x)
        loss = gt.nn.binary_cross_entropy(x, gt.tensor(t), reduction="sum")
    np.testing.assert_allclose(tape.gradient(loss, x).numpy(), (p - t) / (p * (1 - p)), rtol=1e-10)


def test_binary_cross_entropy_gradients_second_order(rng):
    check_grads(gt.nn.binary_cross_entropy, (rng.uniform(0.1, 0.9, 5), rng.uniform(size=5)))
    check_grads(gt.nn.binary_cross_entropy_with_logits, (rng.normal(size=5) * 3, rng.uniform(size=5)))


def test_binary_cross_entropy_is_finite_at_zero_and_one():
    p = gt.tensor([0.0, 1.0, 0.0, 1.0])
    t = gt.tensor([1.0, 0.0, 0.0, 1.0])
    with gt.GradientTape() as tape:
        tape.watch(p)
        loss = gt.nn.binary_cross_entropy(p, t, reduction="none")
    eps = np.finfo(np.float32).eps
    np.testing.assert_allclose(loss.numpy(), [-np.log(eps), -np.log(eps), 0.0, 0.0], atol=2e-7, rtol=1e-6)
    assert np.isfinite(loss.numpy()).all() and float(loss.numpy().max()) < 17  # float32: ~15.9
    np.testing.assert_array_equal(tape.gradient(loss, p).numpy(), 0.0)  # clipped: gradient 0
    assert gt.nn.binary_cross_entropy(gt.tensor(np.array([0.0])), [1.0]).dtype == F64


def test_binary_cross_entropy_refuses_logits_and_nan():
    with pytest.raises(ValueError, match=r"probs must be probabilities in \[0, 1\], got values in "
                                         r"\[-1, 2\].*binary_cross_entropy_with_logits"):
        gt.nn.binary_cross_entropy(gt.tensor([2.0, -1.0, 0.5]), gt.tensor([1.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match="probs hold NaN.*check_numerics"):
        gt.nn.binary_cross_entropy(gt.tensor([0.5, np.nan]), gt.tensor([1.0, 0.0]))
    with pytest.raises(TypeError, match="probs must be a float tensor"):
        gt.nn.binary_cross_entropy(gt.tensor([0, 1]), gt.tensor([1.0, 0.0]))


def test_binary_cross_entropy_with_logits_is_the_stable_form(rng):
    x = rng.normal(size=6) * 4
    t = rng.integers(0, 2, size=6)  # integer labels are cast
    sig = 1 / (1 + np.exp(-x))
    np.testing.assert_allclose(gt.nn.binary_cross_entropy_with_logits(x, t, "none").numpy(),
                               _bce_ref(sig, t), rtol=1e-10)
    np.testing.assert_allclose(gt.nn.binary_cross_entropy(sig, t, "none").numpy(), _bce_ref(sig, t),
                               rtol=1e-10)
    big = gt.tensor([1e4, -1e4, 1e4])
    with gt.GradientTape() as tape:
        tape.watch(big)
        loss = gt.nn.binary_cross_entropy_with_logits(big, gt.tensor([1.0, 0.0, 0.0]), "none")
    np.testing.assert_allclose(loss.numpy(), [0, 0, 1e4])
    np.testing.assert_allclose(tape.gradient(loss, big).numpy(), [0, 0, 1])


def test_binary_cross_entropy_inside_vmap():
    p = gt.tensor([[0.2, 0.7], [0.9, 0.4]])
    per_row = gt.vmap(lambda q: gt.nn.binary_cross_entropy(q, gt.tensor([1.0, 0.0])))(p)
    expect = _bce_ref(p.numpy().astype(np.float64), np.array([1.0, 0.0])).mean(axis=1)
    np.testing.assert_allclose(per_row.numpy(), expect, rtol=1e-6)
    with pytest.raises(ValueError, match="probabilities"):
        gt.vmap(lambda q: gt.nn.binary_cross_entropy(q, 1.0))(gt.tensor([[0.5], [3.0]]))


# --------------------------------------------------------------------------- 3. weak Python scalars
def _t(values, dtype):
    return gt.tensor(np.array(values, dtype=dtype))


PROMOTION = [  # (label, function, expected dtype)
    ("int64 * 0.5", lambda: _t([1, 2], np.int64) * 0.5, F32),
    ("0.5 * int64", lambda: 0.5 * _t([1, 2], np.int64), F32),
    ("int32 + 1.5", lambda: _t([1, 2], np.int32) + 1.5, F32),
    ("1.5 - int32", lambda: 1.5 - _t([1, 2], np.int32), F32),
    ("int64 / 2.0", lambda: _t([1, 2], np.int64) / 2.0, F32),
    ("int64 ** 0.5", lambda: _t([1, 4], np.int64) ** 0.5, F32),
    ("uint8 * 0.5", lambda: _t([1, 2], np.uint8) * 0.5, F32),
    ("bool * 0.5", lambda: _t([True, False], np.bool_) * 0.5, F32),
    ("maximum(int64, 0.5)", lambda: gt.maximum(_t([0, 2], np.int64), 0.5), F32),
    ("where(c, int64, 0.5)", lambda: gt.where(_t([True, False], np.bool_), _t([1, 2], np.int64), 0.5), F32),
    ("clip(int64, 0.5, 1.5)", lambda: gt.clip(_t([0, 2], np.int64), 0.5, 1.5), F32),
    ("mul([1, 2], 0.5)", lambda: gt.mul([1, 2], 0.5), F32),
    ("mul(0.5, [1, 2])", lambda: gt.mul(0.5, [1, 2]), F32),
    ("int64 + 1", lambda: _t([1, 2], np.int64) + 1, np.dtype(np.int64)),
    ("int32 * 3", lambda: _t([1, 2], np.int32) * 3, np.dtype(np.int32)),
    ("int8 + 1", lambda: _t([1, 2], np.int8) + 1, np.dtype(np.int8)),
    ("bool + 1", lambda: _t([True, False], np.bool_) + 1, np.dtype(np.int64)),
    ("float16 * 2.5", lambda: _t([1, 2], np.float16) * 2.5, np.dtype(np.float16)),
    ("float16 + 1", lambda: _t([1, 2], np.float16) + 1, np.dtype(np.float16)),
    ("float32 * 2.5", lambda: _t([1, 2], np.float32) * 2.5, F32),
    ("float64 * 2.5", lambda: _t([1, 2], np.float64) * 2.5, F64),
    ("2.5 / float64", lambda: 2.5 / _t([1, 2], np.float64), F64),
    ("mean(int64)", lambda: gt.mean(_t([1, 2, 4], np.int64)), F32),
    ("mean(int32, axis=0)", lambda: gt.mean(_t([[1, 2], [3, 4]], np.int32), axis=0), F32),
    ("mean(bool)", lambda: gt.mean(_t([True, False], np.bool_)), F32),
    ("var(int64)", lambda: gt.var(_t([1, 2, 4], np.int64)), F32),
    ("std(int64, ddof=1)", lambda: gt.std(_t([1, 2, 4], np.int64), ddof=1), F32),
    ("t.mean() of int64", lambda: _t([1, 2], np.int64).mean(), F32),
    ("norm(int64)", lambda: gt.norm(_t([3, 4], np.int64)), F32),
    ("mean(float16)", lambda: gt.mean(_t([1, 2], np.float16)), np.dtype(np.float16)),
    ("mean(float64)", lambda: gt.mean(_t([1, 2], np.float64)), F64),
    ("vmap(x * 0.5) of int64", lambda: gt.vmap(lambda x: x * 0.5)(_t([[1, 2], [3, 4]], np.int64)), F32),
    ("vmap(mean) of int64", lambda: gt.vmap(gt.mean)(_t([[1, 2], [3, 4]], np.int64)), F32),
]


@pytest.mark.parametrize("label, fn, dtype", PROMOTION, ids=[c[0] for c in PROMOTION])
def test_promotion_table(label, fn, dtype, backend):
    assert fn().dtype == dtype, label


def test_weak_scalar_values_are_right():
    np.testing.assert_array_equal((_t([1, 2, 3], np.int64) * 0.5).numpy(), np.float32([0.5, 1.0, 1.5]))
    np.testing.assert_allclose(gt.mean(_t([1, 2, 4], np.int64)).numpy(), 7 / 3, rtol=1e-7)
    np.testing.assert_allclose(gt.var(_t([1, 2, 4], np.int64)).numpy(), np.var([1, 2, 4]), rtol=1e-6)
    # accumulated in float64, rounded once: a sum that float32 could not hold exactly
    big = _t([2 ** 40 + 1, 2 ** 40 + 3], np.int64)
    assert gt.mean(big).numpy() == np.float32(2 ** 40 + 2)


def test_integer_data_in_a_float32_model_keeps_float32_gradients():
    w = gt.Variable([1.0, 2.0], name="w")
    counts = gt.tensor([3, 4])
    with gt.GradientTape() as tape:
        loss = gt.sum(w * (counts * 0.5)) + gt.mean(counts)
    assert loss.dtype == F32
    g = tape.gradient(loss, w)
    assert g.dtype == F32
    np.testing.assert_array_equal(g.numpy(), [1.5, 2.0])


def test_empty_and_no_degrees_of_freedom_give_nan_silently():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isnan(float(gt.mean(gt.tensor(np.zeros(0, np.float32)))))
        assert gt.mean(gt.tensor(np.zeros((0, 3), np.float32)), axis=1).shape == (0,)
        np.testing.assert_array_equal(gt.mean(gt.tensor(np.zeros((0, 3))), axis=0).numpy(), np.nan)
        assert math.isnan(float(gt.var(gt.tensor([1.0]), ddof=1)))
        assert math.isnan(float(gt.std(gt.tensor([1.0, 2.0]), ddof=2)))
        assert gt.mean(gt.tensor(np.zeros(0, np.int64))).dtype == F32


# --------------------------------------------------------------------------- 4. the integer-Variable hint
def test_integer_variable_hint_says_how_to_make_a_float_variable():
    v = gt.Variable([1, 2], name="v")
    with gt.GradientTape() as tape:
        y = gt.sum(v * 2.0)
    with pytest.raises(TypeError, match=r'gt\.Variable\(\.\.\., dtype="float32"\).*astype.*plain '
                                        r"Tensor"):
        tape.gradient(y, v)
    t = gt.tensor([1, 2])
    with gt.GradientTape() as tape:
        y = gt.sum(t * 2.0)
    with pytest.raises(TypeError, match=r"astype\('float32'\)") as info:
        tape.gradient(y, t)
    assert "gt.Variable" not in str(info.value)
    with pytest.raises(TypeError, match=r'gt\.Variable\(\.\.\., dtype="float32"\)'):
        gt.jvp(lambda x: x * 2.0, (v,), (gt.tensor([1, 1]),))
    opt = gt.optimizers.SGD(0.1)
    with pytest.raises(TypeError, match=r'v has dtype int64.*gt\.Variable\(\.\.\., dtype="float32"\)'):
        opt.apply_gradients([(gt.tensor([1, 1]), v)])


# --------------------------------------------------------------------------- 5. silent forward ops
_SILENT = """
import warnings
import numpy as np
import gradtape as gt
gt.log(gt.tensor([-1.0, 0.0]))
gt.sqrt(gt.tensor([-1.0]))
gt.tensor([1.0]) / 0.0
gt.exp(gt.tensor([1e4]))
gt.log(gt.tensor(-np.ones(1 << 19, np.float32)))   # the threaded forward, too
gt.mean(gt.tensor(np.zeros(0, np.float32)))
gt.var(gt.tensor([1.0]), ddof=1)
big = gt.tensor(np.array([3e38, -3e38], np.float32))   # overflowing reductions and scans
for f in (gt.mean, gt.cumsum, gt.cumprod, gt.prod, gt.var, gt.std, gt.sum):
    f(big)
gt.mean(gt.tensor(np.array([[3e38, 3e38]], np.float32)), axis=1)
with gt.GradientTape() as tape:
    x = gt.tensor([0.0, -1.0])
    tape.watch(x)
    y = gt.sum(gt.log(x))
tape.gradient(y, x)
print("silent")
np.log(np.array([-1.0]))   # the user's own NumPy call still warns (here: raises)
"""


def test_forward_ops_are_silent_but_user_code_still_warns():
    # a fresh interpreter: pytest restores the warning filters an import inside it adds
    proc = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-c", _SILENT],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.stdout.strip() == "silent", proc.stderr
    assert proc.returncode != 0 and "RuntimeWarning: invalid value encountered in log" in proc.stderr
    assert "gradtape" not in proc.stderr.split("Traceback")[-1].split("RuntimeWarning")[0].replace(
        "<string>", "")


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # pytest resets the import-time filter
def test_check_numerics_still_finds_the_nan():
    gt.config.check_numerics = True
    try:
        with pytest.raises(FloatingPointError, match="log"):
            gt.log(gt.tensor([-1.0]))
    finally:
        gt.config.check_numerics = False


# --------------------------------------------------------------------------- 6. optimizers
def test_none_gradients_warn_once_per_call_naming_the_variables():
    a, b, c = gt.Variable([1.0], name="a"), gt.Variable([2.0]), gt.Variable([3.0], name="c")
    opt = gt.optimizers.SGD(0.1)
    with pytest.warns(UserWarning) as record:
        opt.apply_gradients(zip([None, None, gt.tensor([1.0])], [a, b, c]))
    assert len(record) == 1
    assert "no gradient for variable(s) a, #1" in str(record[0].message)
    assert record[0].filename == __file__  # points at the caller's line
    np.testing.assert_array_equal(a.numpy(), [1.0])
    np.testing.assert_allclose(c.numpy(), [2.9])


def test_wrong_shape_names_the_variable_or_its_position():
    w, u = gt.Variable([1.0, 2.0], name="w"), gt.Variable([1.0])
    opt = gt.optimizers.Adam(0.1)
    with pytest.raises(ValueError, match=r"gradient of shape \(3,\) for variable w of shape \(2,\)"):
        opt.apply_gradients([(gt.tensor([1.0, 1.0, 1.0]), w)])
    with pytest.raises(ValueError, match=r"gradient of shape \(2,\) for variable #1 of shape \(1,\)"):
        opt.apply_gradients([(gt.tensor([1.0, 1.0]), w), (gt.tensor([1.0, 1.0]), u)])


def test_current_learning_rate_is_a_property():
    opt = gt.optimizers.SGD(lambda step: 1.0 / (step + 1))
    assert isinstance(type(opt).current_learning_rate, property)
    assert opt.current_learning_rate == 1.0
    opt.apply_gradients([(gt.tensor([1.0]), gt.Variable([0.0]))])
    assert opt.current_learning_rate == 0.5
    assert gt.optimizers.Adam(0.01).current_learning_rate == 0.01


def test_state_dict_without_named_variables():
    w, b = gt.Variable([1.0, 2.0], name="w"), gt.Variable([0.5], name="b")
    opt = gt.optimizers.Adam(0.1)
    opt.apply_gradients([(gt.tensor([1.0, 1.0]), w), (gt.tensor([1.0]), b)])
    state = opt.state_dict()
    assert sorted(k for k in state if not k.startswith("hyper.")) == ["b/m", "b/v", "iterations", "w/m", "w/v"]
    assert state.keys() == opt.state_dict([("w", w), ("b", b)]).keys()
    # round trip on the same optimizer, and into a fresh one given the names
    opt.apply_gradients([(gt.tensor([1.0, 1.0]), w), (gt.tensor([1.0]), b)])
    opt.load_state_dict(state)
    assert opt.iterations == 1
    fresh = gt.optimizers.Adam(0.1)
    with pytest.raises(ValueError, match="pass them, e.g. model.named_variables()"):
        fresh.load_state_dict(state)
    fresh.load_state_dict(state, [("w", w), ("b", b)])
    np.testing.assert_array_equal(fresh.state_dict()["w/m"], state["w/m"])


def test_state_dict_names_unnamed_and_shared_names_by_a_number_they_keep():
    u, v, w = gt.Variable([1.0]), gt.Variable([2.0], name="k"), gt.Variable([3.0], name="k")
    opt = gt.optimizers.SGD(0.1, momentum=0.9)
    opt.apply_gradients([(gt.tensor([1.0]), x) for x in (w, u, v)])
    state = opt.state_dict()
    names = sorted(k for k in state if not k.startswith("hyper."))
    assert names[0] == "iterations" and len(names) == 4
    # w gained state first and keeps its own name; v shares it and u has none: numbered
    assert [re.fullmatch(r"(k|variable)(#\d+)?/momentum", n).group(1) for n in names[1:]] == ["k", "k", "variable"]
    assert state["k/momentum"].tolist() == [1.0]  # w's
    opt.load_state_dict(opt.state_dict())  # the same names come back


def test_minimize_takes_a_step_and_returns_the_loss():
    w = gt.Variable([3.0, -1.0], name="w")
    opt = gt.optimizers.SGD(0.25)
    loss = opt.minimize(lambda: gt.sum(w * w), [w])
    assert float(loss) == 10.0  # computed before the step
    np.testing.assert_allclose(w.numpy(), [1.5, -0.5])
    for _ in range(40):
        loss = opt.minimize(lambda: gt.sum(w * w), lambda: [w])  # var_list may be a callable
    assert float(loss) < 1e-10 and opt.iterations == 41


def test_minimize_equals_tape_and_apply_gradients(rng):
    x, y = gt.tensor(rng.normal(size=(8, 3))), gt.tensor(rng.normal(size=(8, 1)))
    models = [gt.nn.Dense(3, 1, seed=0, dtype=np.float64) for _ in range(2)]
    opts = [gt.optimizers.Adam(0.1) for _ in range(2)]
    for _ in range(3):
        opts[0].minimize(lambda: gt.nn.mse(models[0](x), y), models[0].trainable_variables)
        params = models[1].trainable_variables
        with gt.GradientTape() as tape:
            loss = gt.nn.mse(models[1](x), y)
        opts[1].apply_gradients(zip(tape.gradient(loss, params), params))
    for a, b in zip(models[0].trainable_variables, models[1].trainable_variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_minimize_watches_listed_non_trainable_variables_and_warns_for_unused():
    frozen = gt.Variable([2.0], name="frozen", trainable=False)
    unused = gt.Variable([1.0], name="unused")
    opt = gt.optimizers.SGD(0.5)
    with pytest.warns(UserWarning, match=r"minimize: no gradient for variable\(s\) unused") as record:
        opt.minimize(lambda: gt.sum(frozen * frozen), [frozen, unused])
    assert record[0].filename == __file__
    np.testing.assert_allclose(frozen.numpy(), [0.0])


def test_minimize_misuse():
    w = gt.Variable([1.0], name="w")
    opt = gt.optimizers.SGD(0.1)
    with pytest.raises(TypeError, match="loss_fn must be a callable of no arguments"):
        opt.minimize(gt.sum(w * w), [w])  # a loss computed before: not recorded by minimize
    with pytest.raises(TypeError, match="must return the loss as a Tensor"):
        opt.minimize(lambda: 1.0, [w])
    with pytest.raises(TypeError, match=r"var_list\[1\] must be a gt.Variable"):
        opt.minimize(lambda: gt.sum(w * w), [w, gt.tensor([1.0])])
    with pytest.raises(TypeError, match="var_list must be a list of Variables"):
        opt.minimize(lambda: gt.sum(w * w), w)
    with pytest.raises(TypeError, match="pass model.trainable_variables rather than the model"):
        opt.minimize(lambda: gt.sum(w * w), gt.nn.Dense(1, 1, seed=0))
    assert opt.iterations == 0 and w.numpy()[0] == 1.0


# --------------------------------------------------------------------------- 7. help() and docstrings
def _public_modules() -> list[types.ModuleType]:
    mods = [gt, gt.nn, gt.nn.init, gt.optimizers, gradtape.testing, gradtape.extend]
    mods += [m for name in gt.__all__ if isinstance(m := getattr(gt, name), types.ModuleType)]
    return list(dict.fromkeys(mods))


def _public_objects() -> list[tuple[str, object]]:
    out, seen = [], set()
    for mod in _public_modules():
        for name in getattr(mod, "__all__", ()):
            obj = getattr(mod, name)
            if isinstance(obj, types.ModuleType) or id(obj) in seen:
                continue
            if not (inspect.isclass(obj) or inspect.isroutine(obj)):
                continue  # constants and type aliases (Initializer, TensorLike)
            seen.add(id(obj))
            out.append((f"{mod.__name__}.{name}", obj))
    return out


def _ours(obj: object) -> bool:
    return (getattr(obj, "__module__", None) or "").startswith("gradtape")


def _functions_of(cls: type) -> list[tuple[str, types.FunctionType]]:
    """Every function a class and its gradtape bases define (dunders included), as help()
    lists them."""
    out = []
    for klass in cls.__mro__:
        if not _ours(klass):
            continue
        for name, member in vars(klass).items():
            if name.startswith("_") and not name.endswith("__"):
                continue  # private: help() does not list it
            f = member.__func__ if isinstance(member, (staticmethod, classmethod)) else member
            f = f.fget if isinstance(f, property) else f
            if inspect.isfunction(f):
                out.append((name, f))
    return out


def test_every_public_callable_has_a_docstring():
    missing = []
    for qual, obj in _public_objects():
        if not inspect.getdoc(obj):
            missing.append(qual)
        if inspect.isclass(obj):
            for name, _ in _functions_of(obj):
                if not name.startswith("_") and not inspect.getdoc(getattr(obj, name)):
                    missing.append(f"{qual}.{name}")
    assert not missing, f"public callables without a docstring: {sorted(set(missing))}"


def test_no_source_comment_shows_up_as_help():
    """pydoc shows the comment block right above a def that has no docstring."""
    shown = []
    for qual, obj in _public_objects():
        functions = _functions_of(obj) if inspect.isclass(obj) else [("", obj)]
        for name, f in functions:
            if inspect.isfunction(f) and not f.__doc__ and inspect.getcomments(f):
                shown.append(f"{qual}.{name}".rstrip(".") + ": " + inspect.getcomments(f).splitlines()[0])
    assert not shown, "help() would show these comments:\n" + "\n".join(sorted(set(shown)))
    for cls in (gt.GradientTape, gt.Variable, gt.Tensor, gt.ForwardAccumulator, gt.optimizers.Adam):
        text = pydoc.render_doc(cls, renderer=pydoc.plaintext)
        assert "# ---" not in text, cls


def test_class_docstrings_list_their_constructor_arguments():
    missing = []
    for qual, cls in _public_objects():
        if not inspect.isclass(cls) or not _ours(cls) or "__init__" not in {n for n, _ in _functions_of(cls)}:
            continue
        try:
            params = [p.name for p in inspect.signature(cls).parameters.values()
                      if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        except (TypeError, ValueError):
            continue
        if not params:
            continue
        doc = cls.__doc__ or ""
        section = re.split(r"\n\s*(?:Args|Attributes):\s*\n", doc, maxsplit=1)
        if len(section) < 2:
            missing.append(f"{qual}: no Args section for {params}")
            continue
        absent = [p for p in params if not re.search(rf"\b{p}\b", section[1])]
        if absent:
            missing.append(f"{qual}: Args section misses {absent}")
    assert not missing, "\n".join(missing)


# --------------------------------------------------------------------------- 8. the digits demo's flags
@pytest.mark.parametrize("argv, flag", [
    (["--lr", "-1"], "--lr"), (["--lr", "nan"], "--lr"), (["--lr", "inf"], "--lr"),
    (["--lr", "fast"], "--lr"), (["--epochs", "0"], "--epochs"), (["--batch-size", "0"], "--batch-size"),
    (["--blas-threads", "-1"], "--blas-threads"), (["--model", "rnn"], "--model"),
    (["--seed", "-1"], "--seed"), (["--seed", str(2**32)], "--seed"), (["--seed", "x"], "--seed"),
])
def test_demo_rejects_bad_values_with_a_one_line_error(argv, flag, capsys):
    with pytest.raises(SystemExit) as info:
        digits.main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"gradtape-demo: error: argument {flag}")
    assert not any("Traceback" in line for line in err)


def test_demo_rejects_an_output_directory_it_cannot_write(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    for out in (blocker, blocker / "sub"):
        with pytest.raises(SystemExit) as info:
            digits.main(["--out", str(out), "--no-plot"])
        assert info.value.code == 2
        assert capsys.readouterr().err.strip().splitlines()[-1].startswith(
            "gradtape-demo: error: argument --out:")


def test_every_demo_flag_has_help_and_is_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    flags = [(opt, action) for action in digits._parser()._actions for opt in action.option_strings
             if opt.startswith("--") and opt != "--help"]
    assert len(flags) >= 9
    for opt, action in flags:
        assert action.help and len(action.help) > 10, opt
        assert f"`{opt}" in readme, f"README.md does not list {opt}"


def test_demo_plot_shows_every_accuracy():
    low = {"m": {"train_acc": [0.31, 0.9], "test_acc": [0.42, 0.95]}}
    lo, hi = digits._accuracy_ylim(low)
    assert lo <= 0.31 and hi >= 1.0
    assert digits._accuracy_ylim({"m": {"train_acc": [0.97, 1.0], "test_acc": [0.96, 0.99]}})[0] <= 0.8
    assert digits._accuracy_ylim({"m": {"train_acc": [0.0], "test_acc": [0.01]}})[0] == 0.0


def test_demo_says_one_epoch(tmp_path, capsys, monkeypatch):
    rng = np.random.default_rng(0)
    tiny = (rng.uniform(size=(40, 64)).astype(np.float32), rng.integers(0, 10, 40),
            rng.uniform(size=(10, 64)).astype(np.float32), rng.integers(0, 10, 10))
    monkeypatch.setattr(digits, "load_data", lambda seed=0: tiny)  # the flags, not the data set
    rc = digits.main(["--epochs", "1", "--model", "mlp", "--no-plot", "--backend", "numpy",
                      "--out", str(tmp_path / "new" / "dir")])
    assert rc == 0
    out = capsys.readouterr().out
    assert "1 epoch\n" in out and "1 epochs" not in out
    assert os.path.exists(tmp_path / "new" / "dir" / "digits_mlp.npz")


def test_integer_tensor_next_to_a_float_tensor_and_true_division_stay_float32():
    i = gt.tensor(np.array([1, 2, 3]))
    f32 = gt.tensor(np.array([0.5, 1.5, 2.5], np.float32))
    f64 = gt.tensor(np.array([0.5, 1.5, 2.5]))
    assert (i * f32).dtype == np.float32 and (f32 - i).dtype == np.float32
    assert (i + f64).dtype == np.float64
    assert (i / 2).dtype == np.float32 and (i / i).dtype == np.float32
    np.testing.assert_allclose((i / 2).numpy(), [0.5, 1.0, 1.5])
    assert (i + 1).dtype == np.int64  # integers with integers stay integers
    with gt.GradientTape() as tape:  # the float operand still gets its gradient
        tape.watch(f32)
        y = gt.sum(f32 * i)
    np.testing.assert_allclose(tape.gradient(y, f32).numpy(), [1.0, 2.0, 3.0])


def test_integer_tensor_in_products_takes_the_float_dtype():
    i = gt.tensor(np.arange(4).reshape(2, 2))
    f = gt.tensor(np.ones((2, 2), np.float32))
    for out in (i @ f, f @ i, gt.dot(i[0], f[0]), gt.outer(i[0], f[0]),
                gt.einsum("ij,jk->ik", i, f)):
        assert out.dtype == np.float32
    assert gt.einsum("ij,jk->ik", i, i).dtype == np.int64
    np.testing.assert_allclose((i @ f).numpy(), np.arange(4).reshape(2, 2) @ np.ones((2, 2)))


def test_messages_for_values_that_do_not_fit_and_swapped_arguments(tmp_path):
    # NumPy's and Python's own messages came through, naming neither gradtape's call nor the
    # argument
    with pytest.raises(OverflowError, match=r"Python int 1000 does not fit the dtype int8 \(range -128 to 127\)"):
        gt.tensor(np.int8([1, 2])) + 1000
    with pytest.raises(OverflowError, match="does not fit the dtype uint8"):
        gt.minimum(gt.tensor(np.uint8([1])), -1)
    with pytest.raises(OverflowError, match="'float64'"):
        gt.tensor(np.int64([1])) + 2 ** 63
    with pytest.raises(OverflowError, match="gt.tensor: a value in data does not fit dtype uint8"):
        gt.tensor([300], dtype="uint8")
    m = gt.nn.Dense(2, 2)
    with pytest.raises(TypeError, match="arguments look swapped"):
        gt.nn.load(m, str(tmp_path / "x.npz"))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"permutation: n must be an int, got 5.0 \(float\)"):
        gt.random.Generator(0).permutation(5.0)
    # a bool where n goes (found by a fuzzing helper: the message spoke of a 0-d tensor)
    with pytest.raises(TypeError, match=r"permutation: n must be an int, got True \(bool\)"):
        gt.random.Generator(0).permutation(True)


def test_cross_entropy_with_pytorchs_class_axis_says_where_the_class_axis_is():
    rng = np.random.default_rng(0)
    logits = gt.tensor(rng.standard_normal((2, 3, 5, 6)))  # PyTorch's [N, C, H, W]
    labels = rng.integers(0, 3, (2, 5, 6))
    with pytest.raises(ValueError, match=r"class axis is the last here, PyTorch's is 1: pass "
                                         r"gt.moveaxis\(logits, 1, -1\)"):
        gt.nn.cross_entropy(logits, labels)
    loss = gt.nn.cross_entropy(gt.moveaxis(logits, 1, -1), labels)
    lg = np.moveaxis(logits.numpy(), 1, -1)
    lse = np.log(np.exp(lg).sum(-1))
    want = np.mean(lse - np.take_along_axis(lg, labels[..., None], -1)[..., 0])
    np.testing.assert_allclose(float(loss), want, rtol=1e-12)
    with pytest.raises(ValueError) as e:  # another mismatch: no hint
        gt.nn.cross_entropy(logits, labels[:, :4])
    assert "PyTorch" not in str(e.value)


@pytest.mark.parametrize("argv, flag", [
    (["--seed", "-1"], "--seed"), (["--epochs", "0"], "--epochs"), (["--batch-size", "-3"], "--batch-size"),
    (["--max-norm", "0"], "--max-norm"), (["--noise", "-1"], "--noise"), (["--lr", "nan"], "--lr"),
])
def test_the_dp_sgd_example_rejects_bad_values_with_a_one_line_error(argv, flag, capsys):
    from gradtape.examples import dp_sgd
    with pytest.raises(SystemExit) as info:
        dp_sgd.main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert f"error: argument {flag}" in err[-1]
    assert not any("Traceback" in line for line in err)
