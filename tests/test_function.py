"""gt.function: a traced and replayed step gives the eager step's results, and TF's tracing
rules hold (retracing, side effects, data-dependent control flow, fallback)."""

from __future__ import annotations

import copy
import math
import pickle
import sys
import warnings
import weakref

import numpy as np
import pytest

import gradtape as gt
from gradtape import extend

pytest.importorskip("sklearn")
from gradtape.examples import digits  # noqa: E402

N_STEPS = 6


def _data(n_batches=N_STEPS, batch=32, seed=0):
    x_tr, y_tr, _, _ = digits.load_data(seed=0)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_batches):
        idx = rng.choice(len(x_tr), batch, replace=False)
        out.append((x_tr[idx], y_tr[idx]))
    return out


def _train(build, make_opt, compiled, batches, image=False, **fkw):
    model, opt = build(), make_opt()

    def step(x, y):
        with gt.GradientTape() as tape:
            loss = gt.nn.cross_entropy(model(x), y)
        params = model.trainable_variables
        opt.apply_gradients(zip(tape.gradient(loss, params), params))
        return loss

    f = gt.function(step, **fkw) if compiled else step
    losses = []
    for xb, yb in batches:
        x = xb.reshape(-1, 1, 8, 8) if image else xb
        losses.append(f(gt.tensor(x), gt.tensor(yb)).numpy().copy())
    return np.array(losses), [v.numpy() for v in model.variables], opt, f


@pytest.mark.parametrize("fusion", [False, True], ids=["fusion-off", "fusion-on"])
@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_replayed_training_matches_eager(model, fusion):
    """Many steps of the digits MLP and CNN with Adam: the compiled run (2 traces, then
    replays) gives the eager run's losses and weights bit for bit, with fusion on (the replay
    runs the fused backward's blocked programs) and off."""
    batches = _data()
    build = (lambda: digits.build_mlp(seed=1)) if model == "mlp" else (lambda: digits.build_cnn(seed=1))
    image = model == "cnn"
    with _fusion(fusion):
        le, we, oe, _ = _train(build, lambda: gt.optimizers.Adam(2e-3), False, batches, image)
        lc, wc, oc, f = _train(build, lambda: gt.optimizers.Adam(2e-3), True, batches, image)
    assert f.trace_count == 2
    assert oe.iterations == oc.iterations == N_STEPS
    np.testing.assert_array_equal(lc, le)
    for a, b in zip(wc, we):
        np.testing.assert_array_equal(a, b)


class _fusion:
    def __init__(self, on):
        self.on = on

    def __enter__(self):
        self.saved = gt.config.fusion
        gt.config.fusion = self.on

    def __exit__(self, *exc):
        gt.config.fusion = self.saved


def test_sgd_momentum_and_schedule_advance_as_in_eager():
    """A learning-rate schedule (a Python callable of the step count) and momentum state are
    host state of the optimizer: each replay advances them as an eager step does."""
    batches = _data(8)
    sched = lambda it: 0.1 / (1 + it)  # noqa: E731
    make = lambda: gt.optimizers.SGD(sched, momentum=0.9)  # noqa: E731
    with _fusion(False):
        le, we, _, _ = _train(lambda: digits.build_mlp(seed=2), make, False, batches)
        lc, wc, _, _ = _train(lambda: digits.build_mlp(seed=2), make, True, batches)
    np.testing.assert_array_equal(lc, le)
    for a, b in zip(wc, we):
        np.testing.assert_array_equal(a, b)


def test_norms_of_float32_gradients_past_the_square_range_inside_a_step_equal_eager():
    """A float32 square overflows from 1.9e19: the norm would be inf and every clipped
    gradient 0. The eager route takes such a sum again in float64; a replay must take the
    same branch at each call (here the first calls are small, the later ones overflow)."""
    scales = [1.0, 2.0, 1e20, 3.0, 4e19]

    def run(compiled):
        w = gt.Variable(np.ones(3, np.float32))
        opt = gt.optimizers.SGD(1.0, global_clipnorm=1.0)

        def step(s):
            with gt.GradientTape() as tape:
                loss = gt.sum(w * s)
            g = tape.gradient(loss, w)
            norm = gt.optimizers.global_norm([g])
            clipped, _ = gt.optimizers.clip_by_global_norm([g], 1.0)
            opt.apply_gradients([(g, w)])
            return norm, clipped[0]

        f = gt.function(step) if compiled else step
        out = [f(gt.tensor(np.float32(s))) for s in scales]
        return [(float(np.asarray(n.numpy() if isinstance(n, gt.Tensor) else n)), c.numpy())
                for n, c in out], w.numpy()

    want, we = run(False)
    got, wc = run(True)
    assert want[2][0] == pytest.approx(1e20 * np.sqrt(3.0), rel=1e-6)
    for (n1, c1), (n2, c2) in zip(want, got):
        assert n1 == n2
        np.testing.assert_array_equal(c1, c2)
    np.testing.assert_array_equal(we, wc)
    assert np.all(np.isfinite(wc)) and not np.allclose(wc, 1.0 - 2 / np.sqrt(3.0))


@pytest.mark.parametrize("clip", [0.05, 1e6])  # clipping every step / never
def test_clip_by_global_norm_inside_a_step_equals_eager(clip):
    """TF's ``grads, norm = clip_by_global_norm(grads, c)`` inside a compiled step: the norm
    is a value of the program (a 0-d float64 tensor), the scale is applied at each call (by
    exactly 1.0 when no clipping is needed), and losses, norms and weights equal eager mode's
    bit for bit."""
    rng = np.random.default_rng(3)
    batches = [gt.tensor(rng.standard_normal((8, 5)).astype(np.float32)) for _ in range(5)]

    def run(compiled):
        w = gt.Variable(np.linspace(-1, 1, 15, dtype=np.float32).reshape(5, 3))
        b = gt.Variable(np.zeros(3, np.float32))
        opt = gt.optimizers.SGD(0.1)

        def step(x):
            with gt.GradientTape() as tape:
                loss = gt.sum(gt.tanh(x @ w + b) ** 2)
            grads, norm = gt.optimizers.clip_by_global_norm(tape.gradient(loss, [w, b]) + [None], clip)
            assert grads[2] is None
            opt.apply_gradients(zip(grads[:2], [w, b]))
            return loss, norm, gt.optimizers.global_norm(grads)

        f = gt.function(step) if compiled else step
        out = [f(x) for x in batches]
        return [(float(np.asarray(loss.numpy())), float(np.asarray(n.numpy() if isinstance(n, gt.Tensor) else n)),
                 float(np.asarray(c.numpy() if isinstance(c, gt.Tensor) else c))) for loss, n, c in out], \
            [w.numpy(), b.numpy()], f

    with _fusion(False):
        want, we, _ = run(False)
        got, wc, f = run(True)
    assert f.trace_count == 2  # traced twice (the checking trace), then replayed
    np.testing.assert_array_equal(got, want)
    for a, b in zip(wc, we):
        np.testing.assert_array_equal(a, b)
    if clip < 1:
        assert all(c == pytest.approx(clip) for _, _, c in got)  # clipped to the norm asked for


def _compare(fn, args_list, **fkw):
    """Run ``fn`` eagerly and compiled on the same argument list; return both result lists."""
    f = gt.function(fn, **fkw)
    eager = [fn(*a) for a in args_list]
    comp = [f(*a) for a in args_list]
    return eager, comp, f


def _assert_replayed(got, want, terms=1):
    """A replayed value against the eager one: bit for bit on NumPy (and with fused kernels
    off); on a device backend a fused run is one CUDA kernel, whose values are within float
    rounding of the separate kernels' (the documented contract): a sum of ``terms`` such
    values within that many roundings."""
    if gt.backend_name() != "numpy" and gt.config.fusion:
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 + 1e-7 * terms)
    else:
        np.testing.assert_array_equal(got, want)


def _steps(src):
    """The number of steps of a program's source: its lines but the signature, the deletions
    of variables after their last use, and the return."""
    return sum(1 for line in src.splitlines()[1:]
               if not line.strip().startswith(("del ", "return ")))


def _np(x):
    if isinstance(x, (list, tuple)):
        return [None if t is None else t.numpy() for t in x]
    return x.numpy()


def test_persistent_nested_tapes_custom_gradient_and_stop_recording():
    w = gt.Variable([0.3, -0.2, 0.5], name="w")

    @gt.custom_gradient
    def clip_grad(x):
        def grad(g):
            return gt.clip(g, -0.1, 0.1)
        return x * 1.0, grad

    def fn(x):
        with gt.GradientTape() as outer:
            with gt.GradientTape(persistent=True) as inner:
                y = gt.sum(gt.tanh(x * w) ** 2) + gt.sum(clip_grad(w) * 3.0)
                with inner.stop_recording():
                    z = gt.sum(w * 10.0)  # not differentiated
                y2 = y + z
            g = inner.gradient(y2, w)
            g2 = inner.gradient(gt.sum(w * w), w)
            gnorm = gt.sum(g * g)
        hvp = outer.gradient(gnorm, w)
        return g, g2, hvp, y2

    rng = np.random.default_rng(0)
    args = [(gt.tensor(rng.normal(size=3).astype(np.float32)),) for _ in range(5)]
    eager, comp, f = _compare(fn, args)
    assert f.trace_count == 2
    for e, c in zip(eager, comp):
        assert [a is None for a in e] == [b is None for b in c]
        for a, b in zip(_np(e), _np(c)):
            if a is not None:
                _assert_replayed(a, b)


def test_per_example_gradients_and_vmap_inside_a_step():
    W = gt.Variable(np.random.default_rng(1).normal(size=(5, 3)).astype(np.float32), name="W")

    def loss1(w, x, y):
        return gt.nn.cross_entropy(gt.reshape(x, (1, 5)) @ w, gt.reshape(y, (1,)))

    def fn(x, y):
        with gt.GradientTape() as tape:
            loss = gt.nn.cross_entropy(x @ W, y, reduction="none")
        per_ex = tape.per_example_gradients(loss, [W])
        clipped = tape.per_example_gradients(loss, [W], max_norm=0.5, reduce="sum") \
            if False else None  # one call per tape: the clipped sum is checked below
        vm = gt.vmap(gt.grad(loss1), in_axes=(None, 0, 0))(W, x, y)
        return per_ex[0], vm, clipped

    def fn2(x, y):
        with gt.GradientTape() as tape:
            loss = gt.nn.cross_entropy(x @ W, y, reduction="none")
        return tape.per_example_gradients(loss, [W], max_norm=0.5, reduce="sum")[0]

    rng = np.random.default_rng(2)
    args = [(gt.tensor(rng.normal(size=(4, 5)).astype(np.float32)),
             gt.tensor(rng.integers(0, 3, 4))) for _ in range(4)]
    for func in (fn, fn2):
        eager, comp, f = _compare(func, args)
        assert f.trace_count == 2
        for e, c in zip(eager, comp):
            e = e if isinstance(e, tuple) else (e,)
            c = c if isinstance(c, tuple) else (c,)
            for a, b in zip(e, c):
                if a is None:
                    assert b is None
                else:
                    np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-6, atol=1e-7)


def test_random_draws_and_dropout_advance_the_generator_as_eager():
    def fn(x, g):
        noise = g.normal(x.shape, std=0.1)
        keep = gt.nn.dropout(x, 0.5, generator=g)
        return x + noise, keep

    x = gt.ones((3, 4))
    g1, g2 = gt.random.Generator(7), gt.random.Generator(7)
    eager = [fn(x, g1) for _ in range(5)]
    f = gt.function(fn)
    comp = [f(x, g2) for _ in range(5)]
    for e, c in zip(eager, comp):
        for a, b in zip(e, c):
            np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert not np.array_equal(comp[3][0].numpy(), comp[4][0].numpy())  # new numbers per call


def test_default_dropout_on_a_device_draws_the_eager_stream(device):
    # dropout with neither seed nor generator draws from the device's default generator: a
    # compiled step's masks are eager's, call for call (each trace used to start a generator
    # of its own, so the second call repeated the first mask and the stream lagged by one)
    def masks(compiled, n=5):
        gt.random.seed(5)
        steps = [lambda x: gt.nn.dropout(x, 0.5), lambda x: gt.nn.dropout(x * 1.0, 0.5)]
        if compiled:
            steps = [gt.function(f) for f in steps]
        x = gt.ones((4, 8))
        return [np.asarray(f(x).numpy()) for _ in range(n) for f in steps]  # interleaved

    eager, compiled = masks(False), masks(True)
    for e, c in zip(eager, compiled):
        np.testing.assert_array_equal(e, c)
    assert not np.array_equal(compiled[0], compiled[1])


def test_variable_assignments_inside_the_step():
    counter = gt.Variable(0.0, name="counter")
    acc = gt.Variable(np.zeros(3, np.float32), name="acc")

    def fn(x):
        counter.assign_add(1.0)
        acc.assign(acc * 0.5 + x)
        acc.assign_sub(0.25)
        return acc * counter

    xs = [gt.tensor(np.full(3, i, np.float32)) for i in range(6)]
    eager = [fn(x).numpy() for x in xs]
    state_e = (float(counter), acc.numpy())
    counter.assign(0.0)
    acc.assign(np.zeros(3, np.float32))
    f = gt.function(fn)
    comp = [f(x).numpy() for x in xs]
    np.testing.assert_array_equal(np.array(comp), np.array(eager))
    assert (float(counter), acc.numpy().tolist()) == (state_e[0], state_e[1].tolist())


def test_replay_runs_no_python_of_the_step_and_retraces_on_new_signatures():
    calls = []

    @gt.function
    def f(x, scale):
        calls.append(scale)  # a Python side effect: runs while tracing only
        return gt.tanh(x) * scale

    x = gt.ones((2, 3))
    for _ in range(4):
        f(x, 2.0)
    assert calls == [2.0, 2.0] and f.trace_count == 2  # trace, check trace, replays
    f(x, 3.0)  # a new Python value: a new signature
    f(gt.ones((4, 3)), 2.0)  # a new shape
    f(gt.ones((2, 3), dtype="float64"), 2.0)  # a new dtype
    assert f.trace_count == 5
    np.testing.assert_allclose(f(x, 3.0).numpy(), np.tanh(1.0) * 3.0, rtol=1e-6)



def test_flat_positional_calls_tell_signatures_apart():
    """A call with flat positional arguments finds its program without flattening them; it
    must tell the same signatures apart as the general path: a Python 1, 1.5 and True are
    different values, a NumPy array is a tensor argument read at each call."""
    @gt.function
    def f(x, s):
        return x * s

    x = gt.tensor([1.0, 2.0])
    for s, want in ((1, [1.0, 2.0]), (1.5, [1.5, 3.0]), (True, [1.0, 2.0]), (2, [2.0, 4.0])):
        for _ in range(3):
            np.testing.assert_array_equal(f(x, s).numpy(), want)
    assert f.trace_count == 8  # 4 values, each traced twice
    np.testing.assert_array_equal(f(x, 1.5).numpy(), [1.5, 3.0])
    assert f.trace_count == 8
    arr = np.array([3.0, 4.0], np.float32)
    for _ in range(4):
        np.testing.assert_array_equal(f(arr, 2).numpy(), arr * 2)
        arr = arr + 1  # a new array each call: its values, not a frozen constant
    np.testing.assert_array_equal(f(np.array([1.0, 1.0], np.float32), 2).numpy(), [2.0, 2.0])

def test_warns_after_five_signatures_and_reduce_retracing():
    f = gt.function(lambda x: x * 2.0)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        for n in range(1, 8):
            f(gt.ones((n,)))
    msgs = [str(m.message) for m in w if "traced" in str(m.message)]
    assert len(msgs) == 1 and "6 different input signatures" in msgs[0]
    assert f.trace_count == 7

    g = gt.function(lambda x: x * 2.0, reduce_retracing=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for n in range(1, 8):
            np.testing.assert_array_equal(g(gt.ones((n,))).numpy(), np.full(n, 2.0, np.float32))
    assert g.trace_count == 1  # the first signature only: the others ran once, eagerly


@pytest.mark.parametrize("what, body", [
    ("bool()", lambda x: x * 2.0 if gt.sum(x) > 0 else x),
    ("float()", lambda x: x * float(gt.sum(x))),
    (".numpy()", lambda x: x * x.numpy()[0]),
    (".item()", lambda x: x * gt.sum(x).item()),
    ("iteration", lambda x: gt.stack([r * 2.0 for r in x])),
])
def test_data_dependent_control_flow_raises_naming_the_line(what, body):
    f = gt.function(body)
    with pytest.raises(gt.TracingError) as info:
        f(gt.ones((2, 2)))
    msg = str(info.value)
    assert what in msg and "test_function.py:" in msg and "gt.where" in msg
    assert "fallback" in msg


def test_fallback_eager_runs_eagerly_with_one_warning():
    calls = []

    def body(x):
        calls.append(1)
        return x * 2.0 if float(gt.sum(x)) > 0 else x * -1.0

    f = gt.function(body, fallback="eager")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        outs = [f(gt.tensor([v, v])).numpy() for v in (1.0, -1.0, 2.0)]
    assert [m for m in w if "runs eagerly" in str(m.message)].__len__() == 1
    np.testing.assert_array_equal(np.array(outs), [[2, 2], [1, 1], [4, 4]])
    assert len(calls) == 3  # eager every time


def test_a_value_computed_outside_the_trace_is_never_replayed_stale():
    """A host counter turned into a tensor changes between calls: the two traces differ, so
    the step runs eagerly (warned) and gives eager results, never a frozen value."""
    state = {"n": 0}

    def fn(x):
        state["n"] += 1
        return x * gt.tensor(float(state["n"]))

    f = gt.function(fn)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        outs = [float(f(gt.tensor(1.0))) for _ in range(5)]
    assert outs == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert any("two traces of the step differ" in str(m.message) for m in w)


def test_a_value_that_changes_once_then_holds_is_not_frozen_by_a_third_trace():
    # traces 1 and 2 differed (5, then 6); a third trace repeating the second's value was
    # compiled with 6 frozen in, and later calls gave 6 where eager mode gives 9
    values = iter([5.0, 6.0, 6.0, 9.0, 9.0])
    f = gt.function(lambda x: x * gt.tensor(next(values)))
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        outs = [float(f(gt.tensor(1.0))) for _ in range(5)]
    assert outs == [5.0, 6.0, 6.0, 9.0, 9.0]
    assert sum("two traces of the step differ" in str(m.message) for m in w) == 1


def test_under_an_outer_tape_the_function_runs_as_python():
    f = gt.function(lambda x: gt.sum(gt.tanh(x) ** 2))
    x = gt.tensor([0.5, -1.0])
    for _ in range(3):
        f(x)
    with gt.GradientTape() as tape:
        tape.watch(x)
        y = f(x)
    g = tape.gradient(y, x).numpy()
    t = np.tanh(x.numpy())
    np.testing.assert_allclose(g, 2 * t * (1 - t * t), rtol=1e-6)


def test_methods_numpy_inputs_and_nested_outputs():
    class Model:
        def __init__(self):
            self.w = gt.Variable([1.0, 2.0], name="w")

        @gt.function
        def step(self, x):
            return {"y": x * self.w, "n": 3, "pair": (x, gt.sum(x))}

    m = Model()
    for v in range(4):
        out = m.step(np.array([v, v], np.float32))
        assert out["n"] == 3 and isinstance(out["y"], gt.Tensor)
        np.testing.assert_array_equal(out["y"].numpy(), [v, 2 * v])
        assert float(out["pair"][1]) == 2 * v
    assert Model.step.trace_count == 2


def test_program_source_is_straight_line_numpy():
    w = gt.Variable([1.0, 2.0])

    @gt.function
    def f(x):
        with gt.GradientTape() as tape:
            y = gt.sum(gt.exp(x * w))
        return tape.gradient(y, w)

    x = gt.tensor([0.1, 0.2])
    f(x)
    f(x)
    src = f.program_source(x)
    assert src.startswith("def replay(s0):") and "Tensor" not in src and "tape" not in src
    np.testing.assert_allclose(f(x).numpy(), x.numpy() * np.exp(x.numpy() * w.numpy()), rtol=1e-6)


def test_bad_arguments():
    with pytest.raises(TypeError, match="expected a callable"):
        gt.function(3)
    with pytest.raises(ValueError, match="fallback must be"):
        gt.function(lambda x: x, fallback="never")


def test_large_elementwise_steps_replay_on_the_thread_pool_with_eager_values():
    """Arrays above the threaded-forward size run chunked in the replay, as the eager forward
    runs them: the same values."""
    w = gt.Variable(np.linspace(-1, 1, 640 * 640, dtype=np.float32).reshape(640, 640))

    def fn(x):
        with gt.GradientTape() as tape:
            y = gt.sum(gt.tanh(x * w) + gt.exp(-x) * w)
        return y, tape.gradient(y, w)

    xs = [gt.tensor(np.full((640, 640), v, np.float32)) for v in (0.1, 0.2, 0.3, 0.4)]
    eager, comp, f = _compare(fn, xs and [(x,) for x in xs])
    for e, c in zip(eager, comp):
        _assert_replayed(c[0].numpy(), e[0].numpy(), terms=640 * 640)  # the sum
        _assert_replayed(c[1].numpy(), e[1].numpy())


def test_transforms_of_a_compiled_function_see_its_ops():
    f = gt.function(lambda x: gt.sum(gt.sin(x) * x))
    x = gt.tensor([[0.1, 0.2], [0.3, 0.4]])
    for _ in range(3):
        f(x[0])
    per_row = gt.vmap(f)(x)  # inside vmap: the Python function, batched
    np.testing.assert_allclose(per_row.numpy(), (np.sin(x.numpy()) * x.numpy()).sum(1), rtol=1e-6)
    g = gt.grad(f)(x[0])
    xv = x[0].numpy()
    np.testing.assert_allclose(g.numpy(), np.cos(xv) * xv + np.sin(xv), rtol=1e-6)
    jv = gt.jvp(f, (x[0],), (gt.ones((2,)),))[1]
    np.testing.assert_allclose(float(jv), float((np.cos(xv) * xv + np.sin(xv)).sum()), rtol=1e-6)


def test_forward_mode_chain_runs_fused_in_the_replay_with_eager_values():
    """gt.jvp of a chain of elementwise ops on large arrays: the compiled program runs the
    primal and tangent chain as one blocked run (fewer program steps than array calls), with
    the eager values bit for bit."""
    def chain(x):
        for _ in range(3):
            x = gt.tanh(x * 1.5 + 0.1) * gt.exp(-x * x)
        return x

    def jv(x, t):
        return gt.jvp(chain, (x,), (t,))

    rng = np.random.default_rng(3)
    args = [(gt.tensor(rng.normal(size=(300, 512)).astype(np.float32)),
             gt.tensor(rng.normal(size=(300, 512)).astype(np.float32))) for _ in range(4)]
    eager, comp, f = _compare(jv, args)
    for e, c in zip(eager, comp):
        for a, b in zip(e, c):
            _assert_replayed(a.numpy(), b.numpy())
    if gt.backend_name() == "numpy":  # (the blocked forward runs are NumPy programs)
        src = f.program_source(*args[0])
        assert _steps(src) < 8  # one fused run instead of ~60 array calls


@pytest.mark.parametrize("shape", [(16,), (300, 512)])  # one call, and blocks on the pool
def test_a_fused_backward_run_is_one_program_step_with_eager_values(shape):
    """The fused backward of an elementwise chain (binary ops with constants, fan-out, a
    Variable) is logged as one step, the blocked program eager mode runs, not one step per
    array call (which made tracing it cost 5x an eager step): the replay gives eager's values
    bit for bit, and the program stays short."""
    w = gt.Variable(np.linspace(0.2, -0.2, math.prod(shape), dtype=np.float32).reshape(shape))

    def fn(x):
        with gt.GradientTape() as tape:
            tape.watch(x)
            y = x
            for _ in range(30):
                a = gt.tanh(y) * 1.25
                y = (a + w) * a - 0.5
            loss = gt.sum(y)
        return loss, tape.gradient(loss, [x, w])

    rng = np.random.default_rng(0)
    args = [(gt.tensor(rng.uniform(-1, 1, shape).astype(np.float32)),) for _ in range(4)]
    with _fusion(True):
        eager, comp, f = _compare(fn, args)
        for (le, ge), (lc, gc) in zip(eager, comp):  # (a device fuses the forward's calls
            for a, b in zip((le, *ge), (lc, *gc)):  # into one kernel: within rounding there)
                _assert_replayed(b.numpy(), a.numpy(), terms=math.prod(shape))
        if gt.backend_name() == "numpy":
            src = f.program_source(*args[0])
            assert _steps(src) < 198  # the backward's ~250 array calls are one line


@pytest.mark.parametrize("n", [1000, 65537, 300000])
def test_a_gradient_of_constants_alone_then_a_fused_run_replays(n):
    """Two sums give an input a gradient made of constants alone (their broadcast ones, an
    array the trace did not make); a fused backward run over more than one block then adds
    into it. The run used to write into that array's blocks, which the replay cannot follow,
    and the step fell back to eager mode at every call with a warning; it now replays, bit for
    bit as eager mode."""
    def stepfn(x):
        with gt.GradientTape() as tape:
            tape.watch(x)
            r = x / (1.0 + x * x)
            loss = gt.sum(x) + gt.sum(x) + gt.sum(r)
        return loss, tape.gradient(loss, x)

    rng = np.random.default_rng(1)
    args = [(gt.tensor(rng.standard_normal(n)),) for _ in range(4)]
    with _fusion(True), warnings.catch_warnings():
        warnings.simplefilter("error")
        eager, comp, f = _compare(stepfn, args)
    assert f.trace_count == 2  # the first call traces, the second traces again to check it
    for (le, ge), (lc, gc) in zip(eager, comp):
        _assert_replayed(lc.numpy(), le.numpy(), terms=n)
        _assert_replayed(gc.numpy(), ge.numpy(), terms=n)


@pytest.mark.parametrize("fusion", [False, True])
def test_a_constant_gradient_added_into_a_column_major_one_keeps_its_layout(fusion):
    """A Fortran-ordered input: the gradient of v = x * s collects v * v's (column-major, made
    by the trace) and then sum(-v)'s constant ones (row-major). Eagerly the second is added in
    place into the first, keeping its layout, and the broadcast scalar's gradient sums over it
    in that order; the trace added them out of place into a row-major array, so the traced and
    replayed sums differed from eager mode in the last bits."""
    if gt.backend_name() != "numpy":
        pytest.skip("bit-identity is NumPy's contract (a device fuses the forward)")

    def stepfn(x, s):
        with gt.GradientTape() as tape:
            tape.watch([x, s])
            v = x * s
            loss = gt.sum(-v) + gt.sum(v * v)
        return tape.gradient(loss, s)

    rng = np.random.default_rng(0)
    args = [(gt.tensor(np.asfortranarray(rng.standard_normal((40, 30)).astype(np.float32))),
             gt.tensor(np.float32(0.4))) for _ in range(10)]
    with _fusion(fusion):
        eager, comp, _ = _compare(stepfn, args)
    for e, c in zip(eager, comp):  # (the old order differed in about half of these sums)
        np.testing.assert_array_equal(c.numpy(), e.numpy())


def test_inputs_of_another_layout_are_another_signature():
    """Traced on row-strided views, then called with a Fortran-ordered array (neither is C
    order): a new trace, and its values bit for bit eager mode's (a fused forward run writes
    the layout of the trace it was made in)."""
    if gt.backend_name() != "numpy":
        pytest.skip("bit-identity is NumPy's contract (a device fuses the forward)")

    def f(x):
        y = gt.tanh(x) * 1.5 + gt.sin(x)  # a fused run over more than two blocks
        return gt.sum(y * y, axis=0)

    step = gt.function(f)
    rng = np.random.default_rng(3)
    for _ in range(2):  # (gt.tensor would copy the view into C order; from_dlpack keeps it)
        view = gt.from_dlpack(rng.standard_normal((602, 517))[::2])
        assert not view.numpy().flags.c_contiguous
        step(view)
    traces = step.trace_count
    xf = np.asfortranarray(rng.standard_normal((301, 517)))
    for _ in range(3):
        np.testing.assert_array_equal(step(gt.tensor(xf)).numpy(), f(gt.tensor(xf)).numpy())
    assert step.trace_count == traces + 2
    # a NumPy argument is copied into the step keeping its layout (a C-ordered copy of a
    # Fortran array replayed another summation order than the eager step's)
    g = gt.function(lambda x: (gt.sum(x, axis=0), gt.sum(x), gt.exp(x)))
    for _ in range(4):
        xf = np.asfortranarray(rng.standard_normal((64, 300)).astype(np.float32))
        got, want = g(xf), (gt.sum(gt.tensor(xf), axis=0), gt.sum(gt.tensor(xf)), gt.exp(gt.tensor(xf)))
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a.numpy(), b.numpy())
        assert got[2].numpy().flags.f_contiguous == want[2].numpy().flags.f_contiguous


@pytest.mark.parametrize("fusion", [False, True])
def test_gradients_through_column_major_values_replay_bit_identically(fusion):
    """Two layouts the replay used to get wrong, each then summed back to a broadcast input
    in another order: an elementwise VJP of a large transposed value (eagerly NumPy computed
    ``gy * cos(x)`` into the temporary, taking its column-major layout; traced, the product
    was row-major), and a fused backward run seeded by ``sum``'s broadcast cotangent next to
    a transposed leaf (traced, its outputs took the leaf's layout, eagerly the seed's)."""
    if gt.backend_name() != "numpy":
        pytest.skip("bit-identity is NumPy's contract (a device fuses the forward)")
    R, C = 300, 512  # over NumPy's 256 KiB threshold for computing into a temporary
    rs = np.random.RandomState(0)

    def elementwise(x0, x1):
        with gt.GradientTape() as tape:
            tape.watch(x0)
            b = gt.transpose(gt.reshape(x1, (C, R)))
            loss = gt.sum(gt.sin(b + x0[:, 1:2]) * 3.0)
        return tape.gradient(loss, x0)

    def fused(x, a):
        with gt.GradientTape() as tape:
            tape.watch(a)
            xt = gt.transpose(gt.reshape(x, (C, R)))
            loss = gt.sum(gt.sin(gt.tanh(gt.exp(xt + a))))
        return tape.gradient(loss, a)

    cases = [(elementwise, [(gt.tensor(rs.uniform(-1, 1, (R, C))), gt.tensor(rs.uniform(-1, 1, (R, C))))
                            for _ in range(3)]),
             (fused, [(gt.tensor(rs.uniform(-1, 1, (R, C)).astype(np.float32)),
                       gt.tensor(rs.uniform(-1, 1, (R, 1)).astype(np.float32))) for _ in range(3)])]
    with _fusion(fusion):
        for fn, args in cases:
            eager, comp, f = _compare(fn, args)
            assert f.trace_count == 2
            for e, c in zip(eager, comp):
                np.testing.assert_array_equal(c.numpy(), e.numpy())


def test_two_non_finite_constants_in_one_program_keep_their_own_values():
    """The program names constants by object; a temporary constant (a non-finite Python
    number: erf's NaN, max-pool's -inf padding) freed while naming could hand its id, and so
    its name, to the next: the padding then replayed as NaN."""
    def fwd(x):
        return gt.erf(x), gt.nn.max_pool2d(x, 2, stride=2, padding=1)

    rng = np.random.default_rng(0)
    args = [(gt.tensor(rng.standard_normal((1, 1, 4, 4))),) for _ in range(4)]
    eager, comp, f = _compare(fwd, args)
    for (ea, eb), (ca, cb) in zip(eager, comp):
        _assert_replayed(ca.numpy(), ea.numpy())
        _assert_replayed(cb.numpy(), eb.numpy())
        assert not np.isnan(cb.numpy()).any()


def test_a_fused_backward_of_0d_float32_values_traces():
    """A fused run over 0-d values: a ufunc gives NumPy scalars for 0-d operands, which an
    in-place accumulate cannot write (it raised inside the traced run)."""
    def step(w1, w3):
        with gt.GradientTape() as tape:
            tape.watch([w1, w3])
            t6 = gt.mul(w3, gt.tanh(gt.pow(gt.abs(w1) + 0.5, 1.5)))
            loss = gt.mean(gt.minimum(t6, 0.3)) + gt.maximum(w3, -0.2).sum() + gt.mean(t6)
        return tape.gradient(loss, [w1, w3])

    args = [(gt.tensor(np.float32(v)), gt.tensor(np.float32(0.2))) for v in (-0.3, 0.4, -0.1)]
    with extend.fusion_thresholds(min_run=2, min_run_by_size=()):
        eager, comp, _ = _compare(step, args)
    for e, c in zip(eager, comp):
        for a, b in zip(e, c):
            _assert_replayed(b.numpy(), a.numpy())


def test_data_dependent_shapes_raise_or_run_eagerly():
    """Boolean-mask indexing (and nonzero/unique) make a result whose shape depends on the
    values: a replay could not follow it, so tracing raises (or falls back to eager)."""
    f = gt.function(lambda x: gt.sum(x[x > 0]))
    with pytest.raises(gt.TracingError, match="shape depends on the values"):
        f(gt.tensor([1.0, -2.0, 3.0]))
    g = gt.function(lambda x: gt.sum(x[x > 0]), fallback="eager")
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        outs = [float(g(gt.tensor(v))) for v in ([1.0, -2.0, 3.0], [-1.0, -2.0, 3.0], [5.0, 1.0, 1.0])]
    assert outs == [4.0, 3.0, 7.0]


def test_scatter_ops_slices_and_embeddings_replay_with_eager_values():
    """Ops that add into a fresh buffer (segment_sum, index_add, the gradients of gather,
    fancy indexing and embedding lookups) and gradients through basic slices replay with the
    new values, not the trace's (found in review)."""
    w = gt.Variable(np.random.default_rng(5).normal(size=(3, 4)).astype(np.float32), name="w")
    table = gt.Variable(np.random.default_rng(6).normal(size=(5, 3)).astype(np.float32))
    seg = np.array([0, 2, 2, 1])

    def fn(x, ids):
        out = gt.segment_sum(x, seg, 3)
        with gt.GradientTape() as tape:
            h = gt.matmul(out, w)
            gates = gt.tanh(h[:, :2]) * gt.sigmoid(h[:, 2:])
            emb = gt.nn.embedding(ids, table)
            loss = gt.sum(gates) + gt.sum(emb * emb) + gt.sum(w[[0, 2, 2]])
        return (out, *tape.gradient(loss, [w, table]))

    rng = np.random.default_rng(7)
    args = [(gt.tensor(rng.normal(size=(4, 3)).astype(np.float32)),
             gt.tensor(rng.integers(0, 5, size=(6,)))) for _ in range(5)]
    eager, comp, f = _compare(fn, args)
    assert f.trace_count == 2
    for e, c in zip(eager, comp):
        for a, b in zip(e, c):
            _assert_replayed(a.numpy(), b.numpy())


def test_outputs_made_outside_the_trace_are_checked_and_float_arguments_by_spelling():
    state = {"n": 0}

    def fn(x):
        state["n"] += 1
        return x * 2.0, gt.tensor(float(state["n"]))  # a host counter as an output

    f = gt.function(fn)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        counters = [float(f(gt.tensor(1.0))[1]) for _ in range(5)]
    assert counters == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert any("made where the trace cannot see it" in str(m.message) for m in w)

    g = gt.function(lambda x, s: x * float(s))  # (a Python number in the step: any backend)
    x = gt.tensor([1.0, -1.0])
    for s in (0.0, 0.0, -0.0, -0.0):  # -0.0 is a signature of its own: the zeros' signs differ
        np.testing.assert_array_equal(np.signbit(g(x, s).numpy()), np.signbit(x.numpy() * s))


def _in_place_twice(xp, x):
    """exp(x) doubled in place, read through a view made before the write."""
    t = xp.exp(x)
    v = t.reshape(-1)
    xp.multiply(t, 2.0, out=t)
    return (v + 1.0).reshape(x.shape)


def _dead_in_place(xp, x):
    """exp(x) doubled in place into a buffer nothing reads: the result is 3 x."""
    t = xp.exp(x)
    xp.multiply(t, 2.0, out=t)
    return x * 3.0


_P_IN_PLACE = extend.primitive("_test_fn_in_place_view", _in_place_twice, nondiff=True)
_P_DEAD_IN_PLACE = extend.primitive("_test_fn_dead_in_place", _dead_in_place, nondiff=True)


def test_in_place_writes_are_dropped_only_when_nothing_reads_them():
    """The replay drops an in-place ufunc write into a buffer nothing reads later (a library's
    scratch, such as a loss value no one returns), never one seen through a view made before
    the write."""
    rng = np.random.default_rng(5)
    xs = [gt.tensor(rng.normal(size=(3, 4)).astype(np.float32)) for _ in range(4)]
    f = gt.function(lambda x: extend.bind(_P_IN_PLACE, x))
    g = gt.function(lambda x: extend.bind(_P_DEAD_IN_PLACE, x))
    for x in xs:
        np.testing.assert_allclose(f(x).numpy(), 2 * np.exp(x.numpy()) + 1, rtol=1e-6)
        np.testing.assert_array_equal(g(x).numpy(), x.numpy() * np.float32(3.0))
    if gt.backend_name() == "numpy":  # the exp and the write into its buffer are gone
        src = g.program_source(xs[0])
        assert "out=" not in src and _steps(src) <= 1, src


def test_a_variable_an_op_reads_is_never_frozen_in_the_program():
    """A Variable read inside an op's own array calls (conv2d's unfold of a Variable image, in
    the weight gradient) is a program variable: assigning it after the traces changes the
    replay's results exactly as it changes the eager step's."""
    rng = np.random.default_rng(0)
    x0 = rng.normal(size=(2, 3, 6, 6)).astype(np.float32)
    img = gt.Variable(x0)
    w = gt.Variable(rng.normal(size=(4, 3, 3, 3)).astype(np.float32))

    def step():
        with gt.GradientTape() as tape:
            y = gt.sum(gt.nn.conv2d(img, w, padding=1) ** 2)
        return y, tape.gradient(y, [w, img])

    f = gt.function(step)
    for k in range(5):
        if k >= 3:  # after both traces: only a replay reading the Variable sees it
            img.assign(x0 * (k + 1))
        got, want = f(), step()
        _assert_replayed(got[0].numpy(), want[0].numpy(), terms=4 * 6 * 6)
        for a, b in zip(got[1], want[1]):
            _assert_replayed(a.numpy(), b.numpy())
    assert f.trace_count == 2


def test_values_a_tape_saves_from_variables_are_read_at_each_call():
    """What the backward computes from a Variable's saved value (``1 / v`` in ``x / v``'s
    gradient, for first and second order) is recomputed at each replay: assigning the
    Variable after the traces changes the compiled step's gradients as the eager step's."""
    v = gt.Variable(np.full(3, 2.0, np.float32), name="v")
    x = gt.tensor(np.array([1.0, 2.0, 3.0], np.float32))

    def step(x):
        with gt.GradientTape() as outer:
            outer.watch(x)
            with gt.GradientTape() as tape:
                tape.watch(x)
                y = gt.sum(gt.sin(x / v))
            gx, gv = tape.gradient(y, [x, v])
            z = gt.sum(gx * gx)
        return gx, gv, outer.gradient(z, x)

    f = gt.function(step)
    for k in range(5):
        if k >= 3:
            v.assign(np.full(3, 1.0 + k, np.float32))
        for a, b in zip(f(x), step(x)):
            _assert_replayed(a.numpy(), b.numpy())
    assert f.trace_count == 2


def test_constant_indices_and_views_of_variables_replay_as_eager():
    """A constant index array (labels made inside the step) feeds an indexed gradient in the
    replay; an op returning a view of a Variable gives a copy, as in eager mode, so a later
    assignment in the step does not reach it."""
    W = gt.Variable(np.random.default_rng(0).normal(size=(6, 3)).astype(np.float32), name="W")
    labels = np.array([[0], [2], [1], [0], [1], [2]])

    def nll():
        with gt.GradientTape() as tape:
            logp = gt.log_softmax(W, axis=1)
            y = -gt.mean(gt.take_along_axis(logp, gt.tensor(labels), axis=1))
        return tape.gradient(y, W)

    f = gt.function(nll)
    for _ in range(3):
        _assert_replayed(f().numpy(), nll().numpy())
    v = gt.Variable(np.arange(6, dtype=np.float32).reshape(3, 2), name="v", trainable=False)

    def rows(x):
        y = extend.bind(_P_ROWS_LIKE, v, x)
        v.assign(v * 0.0 + 100.0)
        return y * 1.0

    g = gt.function(rows)
    x = gt.tensor(np.zeros((2, 2), np.float32))
    for _ in range(3):
        v.assign(np.arange(6, dtype=np.float32).reshape(3, 2))
        np.testing.assert_array_equal(g(x).numpy(), [[0.0, 1.0], [2.0, 3.0]])


_P_ROWS_LIKE = extend.primitive("_test_fn_rows_like", lambda xp, a, b: a[: b.shape[0]],
                                nondiff=True)


def test_indices_passed_to_the_step_are_checked_at_each_replay():
    """Integer indices that are step arguments (labels of a hand-written NLL): the range check
    is a step of the program, run at each call, and negative indices count from the end as in
    eager mode."""
    W = gt.Variable(np.random.default_rng(0).normal(size=(6, 3)).astype(np.float32), name="W")

    def nll(labels):
        with gt.GradientTape() as tape:
            y = -gt.mean(gt.take_along_axis(gt.log_softmax(W, axis=1), labels, axis=1))
        return y, tape.gradient(y, W)

    f = gt.function(nll)
    for lab in ([[0], [2], [1], [0], [1], [2]], [[-1], [0], [2], [-3], [1], [1]]) * 2:
        labels = gt.tensor(np.array(lab))
        for a, b in zip(f(labels), nll(labels)):
            _assert_replayed(a.numpy(), b.numpy())
    assert f.trace_count == 2
    with pytest.raises(IndexError, match="out of range"):
        f(gt.tensor(np.array([[0], [3], [1], [0], [1], [2]])))
    table = gt.tensor(np.arange(18, dtype=np.float32).reshape(6, 3))  # a constant indexed

    def pick(labels, t):
        return gt.jvp(lambda a: gt.take_along_axis(a, labels, axis=1) ** 2, (table,), (t,))

    g = gt.function(pick)
    for lab in ([[0], [2], [1], [0], [1], [2]], [[1], [1], [0], [-1], [2], [0]]) * 2:
        labels, t = gt.tensor(np.array(lab)), gt.ones((6, 3))
        for a, b in zip(g(labels, t), pick(labels, t)):
            _assert_replayed(a.numpy(), b.numpy())
    values = gt.tensor(np.arange(8, dtype=np.float32).reshape(4, 2))
    h = gt.function(lambda ids: gt.segment_sum(values, ids, 3))
    for ids in ([0, 2, 0, 1], [2, -1, 1, 1], [0, 2, 0, 1]):  # a negative id is dropped
        _assert_replayed(h(gt.tensor(np.array(ids))).numpy(),
                         gt.segment_sum(values, gt.tensor(np.array(ids)), 3).numpy())
    with pytest.raises(ValueError, match="num_segments"):
        h(gt.tensor(np.array([0, 3, 0, 1])))


def _dot_into(xp, a, b):
    t = xp.exp(a)
    v = t.reshape(-1)  # a view made before the write
    xp.dot(a, xp.ones_like(a, shape=(a.shape[-1], a.shape[-1])), t)  # output given positionally
    return v.reshape(a.shape) + xp.clip(b, -0.5, 0.5, xp.empty_like(b))


_P_DOT_INTO = extend.primitive("_test_fn_dot_into", _dot_into, nondiff=True)


def test_outputs_given_positionally_are_writes_the_replay_makes():
    """A NumPy function's output passed positionally (``np.dot(a, b, out)``,
    ``np.clip(a, lo, hi, out)``) is a write of the step: the replay makes it as eager does."""
    rng = np.random.default_rng(1)
    f = gt.function(lambda x: extend.bind(_P_DOT_INTO, x, x))
    for _ in range(4):
        x = gt.tensor(rng.normal(size=(3, 3)).astype(np.float32))
        want = extend.bind(_P_DOT_INTO, x, x).numpy()
        _assert_replayed(f(x).numpy(), want)


@pytest.mark.parametrize("write", ["method", "function"])
def test_a_scratch_array_a_traced_call_writes_is_read_at_each_call(write):
    """A NumPy array made inside the step and written by a call on traced values (an array
    method's positional output, ``a.clip(lo, hi, buf)``, or ``np.clip(..., out=buf)``) holds
    that call's values at every call: converting it to a tensor reads the program's value,
    even when the two traces saw equal inputs (nothing then tells a frozen value apart)."""
    if gt.backend_name() != "numpy":
        pytest.skip("the scratch array is a host NumPy array: a NumPy-backend step's")

    def body(x):
        buf = np.zeros(x.shape, np.float32)
        y = (x * 2.0).data
        if write == "method":
            y.clip(0.0, 1.0, buf)
        else:
            np.clip(y, 0.0, 1.0, out=buf)
        return gt.tensor(buf) + x

    f = gt.function(body)
    first = np.array([0.2, 0.6, 3.0], np.float32)
    for v in (first, first, [0.1, 0.3, -1.0], [5.0, 0.25, 0.0]):
        x = np.array(v, np.float32)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # replayed, not run eagerly after a warning
            got = f(gt.tensor(x)).numpy()
        np.testing.assert_array_equal(got, np.clip(2 * x, 0, 1) + x)
    assert f.trace_count == 2


@pytest.mark.parametrize("write", ["clip", "multiply"])
def test_a_scratch_array_kept_between_calls_and_overwritten_replays(write):
    # a buffer made outside the step and filled by np.clip(..., out=buf): the program copied
    # its contents at each call as if the call wrote part of it, so the second trace saw the
    # first trace's values, the traces differed and the step ran eagerly (with a warning)
    if gt.backend_name() != "numpy":
        pytest.skip("the scratch array is a host NumPy array: a NumPy-backend step's")
    buf = np.empty((4, 3), np.float32)

    def body(x):
        y = gt.tanh(x).data
        if write == "clip":
            np.clip(y, -0.5, 0.5, out=buf)
        else:
            np.multiply(y, 0.5, out=buf)
        return gt.tensor(buf) * 2.0

    f = gt.function(body)
    for k in range(4):
        x = np.random.default_rng(k).standard_normal((4, 3)).astype(np.float32)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # replayed, not run eagerly after a warning
            got = f(gt.tensor(x)).numpy()
        want = np.clip(np.tanh(x), -0.5, 0.5) if write == "clip" else np.tanh(x) * np.float32(0.5)
        np.testing.assert_array_equal(got, want * np.float32(2.0))
    assert f.trace_count == 2


@pytest.mark.parametrize("by", ["position", "keyword"])
def test_a_clip_reading_a_kept_buffer_is_not_taken_for_an_overwrite(by):
    # np.clip(a=buf, ..., out=buf) reads the buffer's values of the last call (a running
    # maximum): with ``a`` by keyword the call was taken for a full overwrite, the program
    # started the buffer empty at each call and replayed garbage, silently
    if gt.backend_name() != "numpy":
        pytest.skip("the scratch array is a host NumPy array: a NumPy-backend step's")

    def make():
        buf = np.full((4, 3), -1.0, np.float32)

        def body(x):
            y = gt.tanh(x).data
            if by == "keyword":
                np.clip(a=buf, a_min=y, a_max=0.5, out=buf)
            else:
                np.clip(buf, y, 0.5, out=buf)
            return gt.tensor(buf) * 1.0
        return body

    f, eager = gt.function(make()), make()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (the step may run eagerly: its buffer carries state)
        for k in range(5):
            x = gt.tensor(np.random.default_rng(k).standard_normal((4, 3)).astype(np.float32))
            np.testing.assert_array_equal(f(x).numpy(), eager(x).numpy())


@pytest.mark.parametrize("kernel", [2, 3])
def test_pool_gradient_with_a_constant_cotangent_replays(kernel):
    """The gradient of a non-scalar target starts from constant ones: max-pool's routing then
    writes cotangents picked by the traced image into its output, which is made like the image
    so the replay follows it (it was made like the constant cotangent: the step ran eagerly,
    with a warning)."""
    rng = np.random.default_rng(5)

    def step(x):
        with gt.GradientTape() as tape:
            tape.watch(x)
            z = gt.nn.max_pool2d(x, kernel, stride=2)
        return tape.gradient(z, x, output_gradients=gt.ones_like(z))

    f = gt.function(step)
    for _ in range(4):
        x = gt.tensor(rng.normal(size=(2, 2, 6, 8)).astype(np.float32))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            got = f(x).numpy()
        np.testing.assert_array_equal(got, step(x).numpy())
    assert f.trace_count == 2


# --------------------------------------------------------------------------- found by review:
# each case below replayed a value that differs from the eager step's, with no warning, when the
# first two calls (the two traces) saw the same values.
def _replays(f, step, calls, check=None):
    """Call compiled ``f`` on each argument tuple of ``calls`` (no warning allowed: a replay,
    not an eager fallback) and compare with ``step`` run eagerly on the same arguments."""
    for args in calls:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            got = f(*args)
        want = step(*args)
        (check or _same)(got, want)


def _same(got, want):
    g, w = _np(got), _np(want)
    if isinstance(g, list):
        for a, b in zip(g, w):
            _assert_replayed(a, b)
    else:
        _assert_replayed(g, w)


def test_dicts_keep_their_key_order_in_and_out():
    def step(feats):
        return {"cols": gt.concat(list(feats.values()), axis=1), "first": list(feats)[0] == "price"}

    f = gt.function(step)
    for i in range(4):
        feats = {"price": gt.tensor([[10.0 * (i + 1)]]), "age": gt.tensor([[1.0 + i]])}
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            out = f(feats)
        assert list(out) == ["cols", "first"] and out["first"] is True
        np.testing.assert_array_equal(out["cols"].numpy(), [[10.0 * (i + 1), 1.0 + i]])
    g = gt.function(lambda **kw: gt.concat(list(kw.values()), axis=1))
    np.testing.assert_array_equal(g(price=gt.tensor([[10.0]]), age=gt.tensor([[1.0]])).numpy(),
                                  [[10.0, 1.0]])


def test_a_new_variable_that_takes_a_dead_ones_id_gets_its_own_program():
    import gc
    import weakref as wr

    f = gt.function(lambda w, x: w * x)
    x = gt.tensor([1.0, 2.0])
    buffers = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # (each Variable traces: a retrace warning)
        for trial in range(4):
            w = gt.Variable([float(trial + 1)] * 2)  # a fresh Variable (often at a dead one's id)
            for _ in range(3):
                np.testing.assert_array_equal(f(w, x).numpy(), (w * x).numpy())
            buffers.append(wr.ref(w.data))
            del w
            gc.collect()
    # the dead Variables' programs are dropped: no buffer but the last Variable's is held
    assert [b() is None for b in buffers] == [True, True, True, False]


def test_a_tensor_passed_for_two_arguments_is_one_input():
    def step(a, b):
        with gt.GradientTape() as tape:
            tape.watch([a, b])
            loss = gt.sum(a * b)
        return tape.gradient(loss, [a, b])

    f = gt.function(step)
    x, y = gt.tensor([1.0, 2.0]), gt.tensor([3.0, 4.0])
    _replays(f, step, [(x, y), (x, y), (x, x), (x, x), (x, x), (y, x)])
    np.testing.assert_array_equal(f(x, x)[0].numpy(), [2.0, 4.0])


def test_a_tensor_made_from_a_variable_reads_it_at_each_call():
    scale = gt.Variable(1.0)

    def step(x):
        return x * gt.tensor(scale) + gt.Tensor(scale)

    f = gt.function(step)
    x = gt.tensor([1.0, 2.0])
    f(x), f(x)
    scale.assign(10.0)
    _replays(f, step, [(x,)])
    with pytest.raises(gt.TracingError, match="np.asarray"):
        gt.function(lambda x: x * gt.tensor(np.asarray(scale)))(x)


def test_put_along_axis_into_a_scratch_array_is_a_write():
    if gt.backend_name() != "numpy":
        pytest.skip("the scratch array is a host NumPy array: a NumPy-backend step's")

    def step(x):
        buf = np.zeros((1, 6), np.float32)
        np.put_along_axis(buf, np.array([[0, 2, 4]]), x.data, axis=1)
        return gt.tensor(buf) * 2.0

    f = gt.function(step)
    v = np.float32([[1, 2, 3]])
    _replays(f, step, [(gt.tensor(v),), (gt.tensor(v),), (gt.tensor(v + 6),), (gt.tensor(-v),)])


@pytest.mark.parametrize("body", [lambda x: np.where(x.data > 0), lambda x: np.bincount(x.data),
                                  lambda x: np.repeat(x.data, x.data),
                                  lambda x: np.repeat(x.data, x.data[0]),
                                  lambda x: x.data.repeat(x.data[2])])
def test_more_results_whose_shape_depends_on_values_raise(body):
    f = gt.function(lambda x: gt.tensor(body(x)[0] if isinstance(body(x), tuple) else body(x)))
    with pytest.raises(gt.TracingError, match="shape depends on the values"):
        f(gt.tensor(np.array([1, 0, 2])))


def test_check_numerics_is_part_of_the_signature_and_checks_at_each_call():
    def step(x):
        return gt.log(x) * 2.0

    x, bad = gt.tensor([1.0, 2.0]), gt.tensor([-1.0, 2.0])
    f = gt.function(step)
    f(x), f(x)
    gt.config.check_numerics = True
    try:
        f(x), f(x)  # traced again, with the checks as steps of the program
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)  # (a replay, not eager after a warning)
            np.testing.assert_array_equal(f(x).numpy(), step(x).numpy())
            with pytest.raises(FloatingPointError, match="'log'"), np.errstate(invalid="ignore"):
                f(bad)
    finally:
        gt.config.check_numerics = False
    assert f.trace_count == 4
    with np.errstate(invalid="ignore"):
        assert np.isnan(f(bad).numpy()[0])  # off again: the first program


@pytest.mark.parametrize("make", [lambda x: gt.full((3,), x[0]),
                                  lambda x: gt.full_like(gt.zeros((3,)), x[0]) * 1.0])
def test_full_with_a_fill_value_computed_in_the_step(make):
    f = gt.function(make)
    v = np.float32([1, 2])
    _replays(f, make, [(gt.tensor(v),), (gt.tensor(v),), (gt.tensor(v + 4),), (gt.tensor(-v),)])


@pytest.mark.parametrize("verify", [True, False])
def test_batch_norm_running_statistics_advance_at_each_call(verify):
    models = [gt.nn.BatchNorm(1) for _ in range(2)]
    f = gt.function(lambda x: models[0](x), verify=verify)
    same = np.float32([[-1], [0], [1]])  # batch mean 0, unbiased variance 1: the initial stats
    for x in (same, same, np.float32([[1], [2], [6]]), np.float32([[5], [5], [8]])):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            got = f(gt.tensor(x)).numpy()
        _assert_replayed(got, models[1](gt.tensor(x)).numpy())
        for name in ("running_mean", "running_var"):
            _assert_replayed(getattr(models[0], name).numpy(), getattr(models[1], name).numpy())


def test_a_fortran_ordered_argument_gets_its_own_program():
    def step(x):
        return gt.sum(gt.exp(x * 0.1) * 2.0 + 1.0, axis=0)

    a = np.random.default_rng(0).normal(size=(512, 300)).astype(np.float32)
    f = gt.function(step)
    f(gt.tensor(a)), f(gt.tensor(a))
    t = gt.tensor(np.asfortranarray(a))
    if gt.backend_name() == "numpy":
        assert not t.data.flags.c_contiguous
    _replays(f, step, [(t,), (t,), (t,)])


def test_from_dlpack_of_a_scratch_array_a_traced_call_wrote():
    if gt.backend_name() != "numpy":
        pytest.skip("the scratch array is a host NumPy array: a NumPy-backend step's")

    def step(x):
        buf = np.zeros(3, np.float32)
        np.multiply(x.data, 3.0, out=buf)
        return gt.from_dlpack(buf) + x

    f = gt.function(step)
    v = np.float32([1, 2, 3])
    _replays(f, step, [(gt.tensor(v),), (gt.tensor(v),), (gt.tensor(v + 3),), (gt.tensor(-v),)])


def test_full_with_a_variable_fill_reads_it_at_each_call():
    v = gt.Variable(1.0)
    x = gt.tensor([0.0, 0.0])
    for make in (lambda x: gt.full((2,), v) + x, lambda x: gt.full_like(x, v) + x):
        f = gt.function(make)
        v.assign(1.0)
        f(x), f(x)
        v.assign(5.0)
        _replays(f, make, [(x,)])


def test_a_view_of_a_scratch_array_a_traced_call_wrote_runs_eagerly():
    """The replay cannot follow a reshape or slice made of such an array outside the trace:
    the step runs eagerly, with a warning, instead of replaying a frozen view."""
    if gt.backend_name() != "numpy":
        pytest.skip("the scratch array is a host NumPy array: a NumPy-backend step's")

    def step(x):
        buf = np.zeros(3, np.float32)
        np.multiply(x.data, 2.0, out=buf)
        return gt.tensor(buf[:2]) + 1.0

    f = gt.function(step)
    with pytest.warns(UserWarning, match="view of an array the step made"):
        for v in (0.5, 0.5, 0.25, 0.75):
            x = gt.tensor([v] * 3)
            np.testing.assert_array_equal(f(x).numpy(), step(x).numpy())


def test_byteswap_in_place_is_a_write():
    if gt.backend_name() != "numpy":
        pytest.skip("byte views are NumPy's")

    def step(x):
        y = (x * 2.0).data
        y.byteswap(True)  # in place: its result is not used, but the swap is
        return gt.tensor(y.view(np.int32) & 255)

    f = gt.function(step)
    v = np.float32([1.5, 2.25])
    _replays(f, step, [(gt.tensor(v),), (gt.tensor(v),), (gt.tensor(v * 3),), (gt.tensor(-v),)])


def test_dicts_keep_their_key_order_through_tapes_and_transforms():
    b, a = gt.tensor([2.0]), gt.tensor([3.0])
    with gt.GradientTape() as tape:
        tape.watch([a, b])
        y = gt.sum(a * b)
    assert list(tape.gradient(y, {"b": b, "a": a})) == ["b", "a"]
    out = gt.vmap(lambda d: {"z": d["y"] * 2.0, "a": d["x"]})({"y": gt.ones((2, 1)), "x": gt.zeros((2, 1))})
    assert list(out) == ["z", "a"]
    _, t = gt.jvp(lambda d: {"z": d["q"], "a": d["p"]}, ({"q": gt.tensor(1.0), "p": gt.tensor(2.0)},),
                  ({"p": gt.tensor(0.0), "q": gt.tensor(1.0)},))
    assert list(t) == ["z", "a"] and float(t["z"]) == 1.0 and float(t["a"]) == 0.0


# --------------------------------------------------------------------------- second hunt
def test_a_scalar_with_three_gradient_contributions():
    """0-d gradients are NumPy scalars (immutable): a third contribution added ``+=`` in
    place inside the trace was lost, from the first call on."""
    temp = gt.Variable(2.0)

    def step(x):
        with gt.GradientTape() as tape:
            s = gt.sum(x * x)
            loss = gt.sum(gt.exp(x / temp)) + 0.5 * temp * temp + s + 0.01 * s * s
        return loss, tape.gradient(loss, temp)

    f = gt.function(step)
    _replays(f, step, [(gt.tensor([1.0, 2.0, 3.0]),)] * 2 + [(gt.tensor([0.5, -1.0, 2.0]),)] * 2)


@pytest.mark.parametrize("read", [float, int, lambda v: v.item(), bool])
def test_a_python_number_from_a_variable_raises(read):
    v = gt.Variable(1.0)
    f = gt.function(lambda x: x * read(v))
    with pytest.raises(gt.TracingError, match="of a Variable"):
        f(gt.tensor([1.0]))


def test_a_replaced_variable_attribute_traces_again():
    class Scorer:
        def __init__(self):
            self.w = gt.Variable([1.0, 2.0, 3.0])

        @gt.function
        def score(self, x):
            return gt.sum(x * self.w)

    s = Scorer()
    x = gt.tensor([1.0, 1.0, 1.0])
    for _ in range(3):
        assert float(s.score(x)) == 6.0
    s.w = gt.Variable([10.0, 20.0, 30.0])  # the old Variable dies: its program goes
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        assert float(s.score(x)) == 60.0


@pytest.mark.parametrize("update", ["assign", "optimizer"])
def test_a_replaced_variable_the_step_writes_traces_again(update):
    # the program's write steps (assign, an optimizer's update) hold the Variable weakly: the
    # old one dies and the step traces again, training the new one as the eager step does
    def run(compile_):
        model = gt.nn.Sequential(gt.nn.Dense(3, 4, seed=0, dtype=np.float64, activation="tanh"),
                                 gt.nn.Dense(4, 2, seed=1, dtype=np.float64))
        opt = gt.optimizers.Adam(0.01)

        def step(x, y):
            with gt.GradientTape() as tape:
                loss = gt.nn.cross_entropy(model(x), y)
            grads = tape.gradient(loss, model.trainable_variables)
            if update == "assign":
                for v, g in zip(model.trainable_variables, grads):
                    v.assign_sub(0.1 * g)
            else:
                opt.apply_gradients(zip(grads, model.trainable_variables))
            return loss

        f = gt.function(step) if compile_ else step
        rng = np.random.default_rng(0)
        x, y = gt.tensor(rng.standard_normal((4, 3))), gt.tensor(rng.integers(0, 2, 4))
        for _ in range(3):
            f(x, y)
        old = weakref.ref(model.layers[1].kernel)
        model.layers[1] = gt.nn.Dense(4, 2, seed=7, dtype=np.float64)  # a new head
        import gc

        gc.collect()
        assert old() is None  # nothing, the compiled program included, keeps the old head
        losses = [float(f(x, y)) for _ in range(3)]
        return losses, [v.numpy() for v in model.variables]

    (le, ve), (lc, vc) = run(False), run(True)
    # (equal on NumPy; a device backend's fused forward kernels round differently)
    np.testing.assert_allclose(lc, le, rtol=1e-12)
    for a, b in zip(vc, ve):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)


def _bn_model_and_step(count):
    model = gt.nn.Sequential(gt.nn.Dense(3, 4, seed=0, dtype=np.float64),
                             gt.nn.BatchNorm(4, dtype=np.float64), gt.nn.Dropout(0.5, seed=3),
                             gt.nn.Dense(4, 2, seed=1, dtype=np.float64))
    opt = gt.optimizers.SGD(0.1)

    def step(x, y):
        count.append(1)  # a Python side effect: runs while tracing only
        with gt.GradientTape() as tape:
            loss = gt.nn.cross_entropy(model(x), y)
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    return model, step


@pytest.mark.parametrize("change", ["freeze", "eval", "freeze then unfreeze"])
def test_a_flag_changed_after_tracing_traces_again(change):
    # a Variable's trainable and a module's training are flags the program holds for: a frozen
    # layer is not trained, eval() uses the running statistics and no dropout, as eagerly
    rng = np.random.default_rng(0)
    x, y = gt.tensor(rng.standard_normal((6, 3))), gt.tensor(rng.integers(0, 2, 6))
    runs = {}
    for compiled in (False, True):
        count: list = []
        model, step = _bn_model_and_step(count)
        f = gt.function(step) if compiled else step
        for _ in range(3):
            f(x, y)
        traced = len(count)
        if change == "eval":
            model.eval()
        else:
            model.layers[0].kernel.trainable = False
        losses = [float(f(x, y)) for _ in range(2)]
        if change == "freeze then unfreeze":
            model.layers[0].kernel.trainable = True
            losses += [float(f(x, y)) for _ in range(2)]
        runs[compiled] = (losses, [v.numpy() for v in model.variables], len(count) - traced)
    assert runs[True][0] == runs[False][0]
    for a, b in zip(runs[True][1], runs[False][1]):
        np.testing.assert_array_equal(a, b)
    assert runs[True][2] >= 1  # it traced again


def test_a_step_per_mode_does_not_trace_again_when_the_mode_flips():
    # a compiled train step and a compiled predict step, with train()/eval() between them:
    # each program holds for the mode it read, so flipping back and forth traces nothing new
    count: list = []
    model, step = _bn_model_and_step(count)
    train_step = gt.function(step)
    predict = gt.function(lambda x: model(x))
    rng = np.random.default_rng(0)
    x, y = gt.tensor(rng.standard_normal((6, 3))), gt.tensor(rng.integers(0, 2, 6))
    for _ in range(2):
        model.train()
        train_step(x, y)
        model.eval()
        predict(x)
    traced = len(count)
    for _ in range(3):
        model.train()
        train_step(x, y)
        model.eval()
        out = predict(x)
    assert len(count) == traced
    np.testing.assert_array_equal(out.numpy(), model(x).numpy())


def test_steps_that_set_the_mode_themselves_and_modules_made_inside_do_not_retrace():
    # a step calling model.train() / model.eval() itself traced again at every alternation;
    # a module made inside a step left a dead guard that retraced it after any mode change
    count: list = []
    model, step = _bn_model_and_step(count)

    def train_step(x, y):
        model.train()
        return step(x, y)

    def eval_step(x):
        model.eval()
        count.append(1)
        return model(x) * gt.nn.Dropout(0.5)(x[:, :1])  # (made per trace, dead after it)

    t, e = gt.function(train_step), gt.function(eval_step)
    other = gt.nn.Dense(2, 2)
    rng = np.random.default_rng(0)
    x, y = gt.tensor(rng.standard_normal((6, 3))), gt.tensor(rng.integers(0, 2, 6))
    for _ in range(3):
        t(x, y)
        e(x)
    traced = len(count)
    for _ in range(4):
        t(x, y)
        e(x)
        other.eval()
        other.train()
    assert len(count) == traced


def test_a_step_that_sets_flags_sets_them_at_every_call():
    # a replay ran no Python, so a step calling model.train() left the model as the last
    # trace had (eval), and a GAN step freezing the other network traced at every call
    def run(compile_):
        count: list = []
        gen = gt.nn.Dense(2, 2, seed=0, dtype=np.float64)
        disc = gt.nn.Sequential(gt.nn.Dense(2, 1, seed=1, dtype=np.float64), gt.nn.Dropout(0.5, seed=2))
        opt = gt.optimizers.SGD(0.1)

        def g_step(z):
            count.append(1)
            disc.train()
            for v in disc.variables:
                v.trainable = False
            with gt.GradientTape() as tape:
                loss = gt.sum(disc(gen(z)))
            vs = gen.trainable_variables + disc.trainable_variables
            opt.apply_gradients(zip(tape.gradient(loss, vs), vs))
            return loss

        def d_step(x):
            count.append(1)
            disc.eval()
            for v in disc.variables:
                v.trainable = True
            with gt.GradientTape() as tape:
                loss = gt.sum(disc(x) ** 2)
            vs = disc.trainable_variables
            opt.apply_gradients(zip(tape.gradient(loss, vs), vs))
            return loss

        g, d = (gt.function(g_step), gt.function(d_step)) if compile_ else (g_step, d_step)
        z = gt.tensor(np.ones((3, 2)))
        out, modes = [], []
        for _ in range(6):
            out += [float(g(z)), float(d(z))]
            modes.append((disc.training, disc[1].training, disc.variables[0].trainable))
        return out, modes, [v.numpy() for v in gen.variables + disc.variables], len(count)

    eager, compiled = run(False), run(True)
    np.testing.assert_allclose(compiled[0], eager[0], rtol=1e-12)
    assert compiled[1] == eager[1]
    for a, b in zip(compiled[2], eager[2]):
        np.testing.assert_allclose(a, b, rtol=1e-12)
    assert compiled[3] <= 4  # each step traced twice (trace and check), then replayed


def test_replacing_a_module_without_variables_traces_again():
    # a Dropout replaced after eval() (the new one in training mode) kept the old program
    model = gt.nn.Sequential(gt.nn.Dense(4, 4, seed=0), gt.nn.Dropout(0.5, seed=1))
    f = gt.function(lambda x: model(x))
    x = gt.ones((8, 4))
    model.eval()
    for _ in range(3):
        f(x)
    model.layers[1] = gt.nn.Dropout(0.5, seed=2)  # in training mode
    out, dense = f(x).numpy(), model[0](x).numpy()
    kept = out != 0
    assert not kept.all()  # dropping, as the eager step does
    np.testing.assert_allclose(out[kept], 2 * dense[kept], rtol=1e-6)


def test_flags_a_step_reads_then_sets_and_modules_whose_mode_it_sets():
    # a Variable read, then frozen by the step, lost its guard (a caller unfreezing it saw no
    # update); a layer whose mode the step set was not watched for being replaced; a module
    # the step makes and sets traced at every call
    def run(compile_):
        v = gt.Variable(np.array([1.0, 2.0]))
        opt = gt.optimizers.SGD(0.1)

        def step(x):
            with gt.GradientTape() as tape:
                loss = gt.sum(v * x)
            vs = [u for u in [v] if u.trainable]
            if vs:
                opt.apply_gradients(zip(tape.gradient(loss, vs), vs))
            v.trainable = False
            return loss

        f = gt.function(step) if compile_ else step
        x = gt.tensor(np.array([1.0, 1.0]))
        for i in range(6):
            if i >= 3:
                v.trainable = True
            f(x)
        return v.numpy()

    np.testing.assert_array_equal(run(True), run(False))

    model = gt.nn.Sequential(gt.nn.Dense(4, 4, seed=0), gt.nn.Dropout(0.9, seed=1))

    def train_step(x):
        model.train()
        return model(x)

    f = gt.function(train_step)
    x = gt.ones((16, 4))
    for _ in range(3):
        f(x)
    model.layers[1] = gt.nn.Dropout(0.0)  # nothing dropped from now on
    np.testing.assert_array_equal(f(x).numpy(), model[0](x).numpy())

    count: list = []
    dense = gt.nn.Dense(4, 4, seed=0)

    def inside(x):
        count.append(1)
        d = gt.nn.Dropout(0.5, seed=3)
        d.eval()
        return d(dense(x))

    g = gt.function(inside)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        for _ in range(6):
            np.testing.assert_array_equal(g(x).numpy(), dense(x).numpy())
    assert len(count) == 2


def test_random_permutation_of_a_tensor_stays_differentiable_and_seed_replays():
    def make():
        g = gt.random.Generator(0)
        w = gt.Variable(np.ones((3, 2), np.float32))

        def step(x):
            with gt.GradientTape() as tape:
                h = g.permutation(x @ w)
                loss = gt.sum(h * gt.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]]))
            return loss, tape.gradient(loss, w)

        return step

    x = gt.tensor(np.arange(12, dtype=np.float32).reshape(4, 3))
    eager, f = make(), gt.function(make())
    for _ in range(4):
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)
            got = f(x)
        _same(got, eager(x))

    def seeded(x):
        gt.random.seed(7)
        return x + gt.random.normal((3,))

    g = gt.function(seeded)
    want = seeded(gt.tensor([1.0, 2.0, 3.0])).numpy()
    for _ in range(4):
        np.testing.assert_array_equal(g(gt.tensor([1.0, 2.0, 3.0])).numpy(), want)
    with pytest.raises(gt.TracingError, match="int"):  # a draw's shape from a tensor
        gt.function(lambda n: gt.random.normal((n, 2)))(gt.tensor(3))


def test_square_dense_layers_and_erf_family_replay():
    """matmul is a NumPy ufunc with core dimensions: never fused as elementwise (a square
    layer's weight was row-blocked); erf, erfc and gelu pick their ranges without masks."""
    n = 512
    model = gt.nn.Sequential([gt.nn.Dense(n, n, activation="tanh", seed=0),
                              gt.nn.Dense(n, 4, activation="gelu", seed=1)])
    x = gt.tensor(np.random.default_rng(0).normal(size=(n, n)).astype(np.float32))
    f = gt.function(lambda x: (model(x), gt.erf(x[:4] * 3.0), gt.erfc(x[:4] * 3.0)))
    _replays(f, lambda x: (model(x), gt.erf(x[:4] * 3.0), gt.erfc(x[:4] * 3.0)), [(x,)] * 4)


def test_a_0d_variable_next_to_a_0d_value_is_read_at_each_call():
    temp = gt.Variable(np.float32(1.0), trainable=False)
    b = gt.Variable(np.float32(0.0))

    def step(t):
        with gt.GradientTape() as tape:
            loss = (gt.sum(t) * temp + b) ** 2
        return loss, tape.gradient(loss, b)

    f = gt.function(step)
    x = gt.tensor(np.array([1.0, 2.0, 3.0], np.float32))
    for val in (1.0, 1.0, 1.0, 2.0, 0.5):
        temp.assign(np.float32(val))
        b.assign(np.float32(val - 1.0))
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)
            got = f(x)
        _same(got, step(x))


def test_a_random_shape_given_as_a_tensor_raises_and_gelu_gradients_replay():
    with pytest.raises(gt.TracingError, match="int"):
        gt.function(lambda k: gt.random.normal(k))(gt.tensor(3))
    w = gt.Variable(np.linspace(-5, 5, 7).astype(np.float32))

    def step(t):
        with gt.GradientTape() as tape:
            y = gt.sum(gt.nn.gelu(w * t) + gt.erfc(w * t))
        return tape.gradient(y, w)

    f = gt.function(step)
    calls = [(gt.tensor(np.float32(1.0)),)] * 2 + [(gt.tensor(np.float32(0.5)),)] * 2
    for (t,) in calls:
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)
            got = f(t).numpy()
        np.testing.assert_allclose(got, step(t).numpy(), rtol=1e-6, atol=1e-7)
        if gt.backend_name() == "numpy":
            np.testing.assert_array_equal(got, step(t).numpy())


# --------------------------------------------------------------------------- third hunt
def test_a_small_fused_backward_run_with_reused_values_replays():
    """The fused backward on arrays of one block ran its program on scratch made with
    np.empty: calls among scratch buffers only (summing a value's gradient contributions) were
    invisible to the trace, and the replay dropped them (wrong gradients from the first
    replay)."""
    w = gt.Variable(np.float32([1.0, 2.0, 3.0, 4.0]))

    def step(x):
        with gt.GradientTape() as tape:
            y = x
            for _ in range(28):
                y = y * w + gt.tanh(y) * 0.01
            loss = gt.sum(y * y)
        return tape.gradient(loss, w)

    f = gt.function(step)
    v = np.float32([0.1, -0.2, 0.3, 0.05])
    _replays(f, step, [(gt.tensor(v),), (gt.tensor(v),), (gt.tensor(v * 2),), (gt.tensor(-v),)])


@pytest.mark.parametrize("mode", ["assign", "optimizer"])
def test_a_replayed_write_copies_on_write_for_tapes_outside_the_step(mode):
    def run(compiled):
        w = gt.Variable(np.float32([1.0, 2.0]))
        opt = gt.optimizers.SGD(0.5)

        def step(d):
            if mode == "assign":
                w.assign_add(d)
            else:
                opt.apply_gradients([(d, w)])

        f = gt.function(step) if compiled else step
        out = []
        for _ in range(4):
            with gt.GradientTape() as tape:
                y = gt.sum(w * w)
            f(gt.tensor(np.float32([1.0, 1.0])))
            out.append(tape.gradient(y, w).numpy().tolist())
        return out

    assert run(True) == run(False)


def test_an_integer_variable_assigned_a_float_value_inside_a_step():
    c = gt.Variable(np.zeros(3, np.int64))

    def step(x):
        c.assign(x * 2.0)
        return c + 0

    f = gt.function(step)
    for v in ([1.5, 2.5, -3.7], [1.5, 2.5, -3.7], [0.2, 9.9, 4.0]):
        x = gt.tensor(np.float32(v))
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)
            got = f(x).numpy()
        np.testing.assert_array_equal(got, step(x).numpy())
    with pytest.raises(ValueError, match="NaN or inf"):
        f(gt.tensor(np.float32([np.nan, 1.0, 2.0])))


def test_an_object_output_runs_eagerly_and_numpy_scalars_key_by_value():
    import dataclasses

    @dataclasses.dataclass
    class Out:
        loss: gt.Tensor

    f = gt.function(lambda x: Out(gt.sum(x)))
    with pytest.warns(UserWarning, match="does not look into"):
        for k in (1.0, 1.0, 2.0):
            assert float(f(gt.tensor([k, k])).loss) == 2 * k
    g = gt.function(lambda x, s: x * float(s))  # (a Python number in the step: any backend)
    for _ in range(6):
        g(gt.tensor([1.0]), np.float32(0.5))
    assert g.trace_count == 2
    np.testing.assert_array_equal(g(gt.tensor([1.0]), np.float32(0.25)).numpy(), [0.25])


def test_decorated_methods_do_not_keep_instances_alive():
    import gc
    import weakref as wr

    class Model:
        def __init__(self, k):
            self.w = gt.Variable([float(k)])

        @gt.function
        def __call__(self, x):
            return x * self.w

    refs = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # (each instance traces: a retrace warning)
        for k in range(8):
            m = Model(k)
            for _ in range(3):
                assert float(m(gt.tensor([1.0]))) == k
            refs.append(wr.ref(m))
            del m
            gc.collect()
    assert all(r() is None for r in refs)


def test_traces_in_two_threads_restore_the_thread_pool():
    """A trace switches the CPU thread pool off while it runs; two traces in two threads
    that end in the order they started must leave the pool as it was."""
    import threading

    def settings():
        with extend.cpu_thresholds() as t:  # (the process-wide setting the traces switch off)
            return t["min_size"], t["threads"]

    before = settings()
    inside = [threading.Event(), threading.Event()]
    go = [threading.Event(), threading.Event()]

    def body(k, x):
        inside[k].set()
        go[k].wait(timeout=10)
        return x * 2.0

    fs = [gt.function(lambda x: body(0, x)), gt.function(lambda x: body(1, x))]
    ts = [threading.Thread(target=f, args=(gt.tensor([1.0]),)) for f in fs]
    ts[0].start()
    inside[0].wait(timeout=10)  # the first trace runs
    ts[1].start()
    inside[1].wait(timeout=10)  # both run
    go[0].set()
    ts[0].join()  # the first ends first
    go[1].set()
    ts[1].join()
    assert settings() == before


def test_bytes_arguments_key_by_value_and_plain_object_outputs_compile():
    f = gt.function(lambda x, b: x * float(b[0]))
    for k in (1, 1, 1, 2, 3, 4):
        assert float(f(gt.tensor(1.0), bytes([k]))) == k
    import enum
    import fractions

    class Mode(enum.Enum):
        TRAIN = 1

    g = gt.function(lambda x: (x * 2.0, x.dtype, slice(0, 1), Mode.TRAIN, fractions.Fraction(1, 3)))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        for _ in range(3):
            out = g(gt.tensor([1.0]))
    assert out[3] is Mode.TRAIN and g.trace_count == 2


def test_a_fused_backward_kernel_writes_its_outputs_in_the_replay():
    """On a device the fused backward is one elementwise kernel taking its outputs after its
    inputs (``kernel(x, y, out)``): the trace must see those as writes, or the replay drops
    the launch and returns the empty buffers (run on the device-strict backend by the suite's
    strict run; on NumPy the blocked program)."""
    rng = np.random.default_rng(0)
    w = gt.Variable(rng.normal(size=3).astype(np.float32))
    b = gt.Variable(rng.normal(size=3).astype(np.float32))

    def step(x):
        with gt.GradientTape() as tape:
            tape.watch(x)
            y = x
            for _ in range(3):
                y = gt.tanh(y * w + b) + gt.sigmoid(y) * 0.1 + gt.exp(-y * y) * w
            loss = gt.sum(y * y)
        return tape.gradient(loss, [w, b, x])

    f = gt.function(step)
    x = gt.tensor(rng.normal(size=3).astype(np.float32))
    for _ in range(4):
        got, want = f(x), step(x)
        for g, e in zip(got, want):
            _assert_replayed(g.numpy(), e.numpy(), terms=30)


# --------------------------------------------------------------------------- found by fuzzing
def test_a_fused_backward_run_on_0d_values_traces():
    # a 0-d run's traced leaves wrap NumPy scalars (what a ufunc returns for 0-d operands):
    # the run must still take the host path, not the device kernel's
    def step(w):
        with gt.GradientTape() as tape:
            tape.watch(w)
            loss = gt.mean(gt.sigmoid(w) * w)
        return tape.gradient(loss, w)

    w = gt.tensor(np.float32(0.3))
    with extend.fusion_thresholds(min_run=2, min_run_by_size=()):
        want = step(w).numpy()
        f = gt.function(step)
        for _ in range(3):
            np.testing.assert_array_equal(f(w).numpy(), want)


def test_replay_matches_eager_bits_when_the_upstream_gradient_is_transposed():
    # a fused run's outputs take the layout of its upstream gradient (a constant, transposed
    # cotangent here) eagerly; the trace must too, or the sum over the broadcast operand's
    # gradient adds in another order
    def step(x, w):
        with gt.GradientTape() as tape:
            tape.watch([w, x])
            t = gt.arctan2(w, gt.abs(gt.relu(gt.sin(gt.tanh(x) * 1.5))) + 0.5)
            t = gt.transpose(t, (0, 2, 1))
            loss = gt.sum(gt.sum(t, axis=(1, 2)) + gt.sum(t, axis=(1, 2)))
        return tape.gradient(loss, [w, x])

    if gt.backend_name() != "numpy":
        pytest.skip("bit-identical replays are promised on NumPy (a device's fused kernels "
                    "round as compiled)")
    rng = np.random.default_rng(0)
    f = gt.function(step)
    for _ in range(6):
        x = gt.tensor(rng.standard_normal((6, 64, 50)).astype(np.float32))
        w = gt.tensor(np.float32(rng.standard_normal()))
        for got, want in zip(f(x, w), step(x, w)):
            np.testing.assert_array_equal(got.numpy(), want.numpy())


# (the replay's 0 * inf is silent for users, by the filter import gradtape adds for its own
# modules; pytest's warning capture replaces that filter)
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_replay_matches_eager_bits_for_a_safe_product_of_a_non_c_ordered_operand(dtype):
    # safe_mul's VJP zeroes 0 * inf where the cotangent is 0: in place, so the product keeps
    # its operand's (here Fortran) layout traced or not, and the broadcast operand's gradient
    # sums in the same order; the cotangent is 0 at the inf entries (where), which takes the
    # zeroing path
    def step(x, w):
        with gt.GradientTape() as tape:
            tape.watch([w, x])
            xs = x[:, [0, 1, 1]]
            out = gt.sum(gt.where(gt.isfinite(xs), gt.safe_mul(w, xs), 0.0))
        return tape.gradient(out, w)

    rng = np.random.default_rng(1)
    f = gt.function(step)
    for k in range(5):
        xa = rng.standard_normal((6, 40)).astype(dtype)
        if k % 2:
            xa[2, 1] = np.inf
        x, w = gt.tensor(xa), gt.tensor(rng.standard_normal((1,)).astype(dtype))
        want = step(x, w).numpy()
        np.testing.assert_array_equal(f(x, w).numpy(), want)
        xs = xa[:, [0, 1, 1]]
        np.testing.assert_allclose(want, [np.sum(np.where(np.isfinite(xs), xs, 0))], rtol=1e-5)


def test_np_asarray_of_a_traced_tensor_is_a_tracing_error_or_runs_eagerly():
    if gt.backend_name() != "numpy":
        pytest.skip("np.asarray of a device tensor raises (no implicit copy)")

    def step(x):
        return gt.tensor(np.asarray(x) * 2)

    x = gt.tensor([1.0, -2.0, 3.0])
    with pytest.raises(gt.TracingError, match=r"np.asarray\(\) of a traced tensor"):
        gt.function(step)(x)
    f = gt.function(step, fallback="eager")
    with pytest.warns(UserWarning, match="runs eagerly"):
        got = f(x)
    np.testing.assert_array_equal(got.numpy(), [2.0, -4.0, 6.0])
    np.testing.assert_array_equal(f(gt.tensor([0.5, 1.0, 1.5])).numpy(), [1.0, 2.0, 3.0])


@pytest.mark.parametrize("take", ["tolist", "tobytes", "bytes"])
def test_host_values_of_a_traced_array_are_tracing_errors_or_run_eagerly(take):
    def step(x):
        data = x.data
        raw = {"tolist": lambda: data.tolist(), "tobytes": lambda: data.tobytes(),
               "bytes": lambda: bytes(data)}[take]()
        return x * float(len(raw))

    x = gt.tensor([1.0, -2.0, 3.0])
    if gt.backend_name() != "numpy":
        pytest.skip("a device array's host values are the backend's own")
    with pytest.raises(gt.TracingError, match="of a traced tensor"):
        gt.function(step)(x)
    with pytest.warns(UserWarning, match="runs eagerly"):
        got = gt.function(step, fallback="eager")(x)
    np.testing.assert_array_equal(got.numpy(), step(x).numpy())


@pytest.mark.skipif(sys.version_info < (3, 11), reason="exception notes are Python 3.11's")
def test_an_error_inside_a_replay_notes_the_step_that_raised_it():
    """A replayed step runs NumPy's call directly: its own error (``Singular matrix``) gets a
    note naming the function, the program's line and the call, instead of arriving bare."""
    f = gt.function(lambda a: gt.grad(lambda a: gt.sum(gt.inv(a)))(a))
    for _ in range(3):
        f(gt.tensor(np.eye(2)))
    with pytest.raises(np.linalg.LinAlgError) as info:
        f(gt.tensor(np.zeros((2, 2))))
    note = "\n".join(getattr(info.value, "__notes__", []))
    assert "gt.function '<lambda>' replayed its step" in note and "numpy.linalg.inv" in note


def test_overflowing_sums_are_silent_eagerly_traced_and_replayed():
    """NumPy's overflow warning from a sum came from its Python-level ``_methods`` (outside the
    filter for gradtape's modules), in eager mode, while tracing, and in a replayed backward
    (a conv bias's two-pass gradient sum), which the eager backward's errstate covers."""
    if gt.backend_name() != "numpy":
        pytest.skip("NumPy's floating-point warnings (a device library such as CuPy gives none)")
    b = gt.Variable(np.zeros(3, np.float32))

    @gt.function
    def step(x):
        with gt.GradientTape() as tape:
            loss = gt.sum((x + b) * 3e38)
        return tape.gradient(loss, b)

    c = gt.Variable(np.zeros((1, 8, 1, 1), np.float32))  # a conv bias: the two-pass sum

    @gt.function
    def conv_step(x):
        with gt.GradientTape() as tape:
            loss = gt.sum(gt.sin(x + c) * 3e38)
        return tape.gradient(loss, c)

    rng = np.random.default_rng(0)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        # the filter import gradtape adds (pytest's capture replaces it): gradtape's modules
        warnings.filterwarnings("ignore", category=RuntimeWarning, module=r"gradtape(\.|\Z)")
        for _ in range(4):
            g = step(gt.tensor(np.ones((4, 3), np.float32)))
            conv_step(gt.tensor(rng.standard_normal((64, 8, 16, 16)).astype(np.float32)))
        y = gt.sum(gt.tensor(np.full(4, 3e38, np.float32)))
    assert [str(w.message) for w in seen if issubclass(w.category, RuntimeWarning)] == []
    assert np.isinf(y.numpy()) and np.array_equal(g.numpy(), np.full(3, np.inf, np.float32))


def test_a_numpy_argument_returned_by_the_step_is_a_copy():
    """A NumPy argument becomes a tensor as ``gt.tensor`` makes one (a copy): the tensor the
    step returned shared the caller's array and changed when the caller wrote into it."""
    f = gt.function(lambda x: (x, x * 1.0))
    a = np.ones(3, np.float32)
    for _ in range(3):
        t, u = f(a)
        a[:] = 7.0
        np.testing.assert_array_equal(t.numpy(), [1.0, 1.0, 1.0])
        a[:] = 1.0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pow_and_norm_of_0d_values_replay_bit_for_bit(dtype):
    """On 0-d values eager mode took NumPy's scalar ``**`` for ``pow`` and ``norm(x, p)``, whose
    power differs in the last bit from the ufunc's loop that the replay runs."""
    if gt.backend_name() != "numpy":
        pytest.skip("bit-identity is NumPy's contract")
    rng = np.random.default_rng(0)

    def step(x, b):
        with gt.GradientTape() as tape:
            tape.watch([x, b])
            w = gt.pow(x, b) + gt.norm(gt.stack([x, x * 2.0]), 3)
        return (w, *tape.gradient(w, [x, b]))

    f = gt.function(step)
    for _ in range(60):
        x = gt.tensor(np.asarray(rng.uniform(0.1, 3.0), dtype))
        b = gt.tensor(np.asarray(rng.uniform(-3.0, 3.0), dtype))
        for got, want in zip(f(x, b), step(x, b)):
            assert got.numpy().tobytes() == want.numpy().tobytes()


def test_copying_and_pickling_a_compiled_function():
    # deepcopy of a module holding a compiled step raised TypeError (its lock could not be
    # copied); the copy compiles the copied module's method afresh
    class Net(gt.nn.Module):
        def __init__(self):
            self.layer = gt.nn.Dense(3, 2, seed=0)
            self.step = gt.function(self.forward)

        def forward(self, x):
            return self.layer(x)

    n = Net()
    x = gt.ones((2, 3))
    for _ in range(3):
        n.step(x)
    c = copy.deepcopy(n)
    c.layer.kernel.assign(c.layer.kernel.numpy() * 2)
    np.testing.assert_allclose(c.step(x).numpy(), c(x).numpy())
    np.testing.assert_allclose(n.step(x).numpy(), n(x).numpy())  # the original untouched
    assert not np.allclose(c.step(x).numpy(), n.step(x).numpy())
    f = pickle.loads(pickle.dumps(gt.function(math.factorial)))
    assert f(5) == 120 and copy.copy(f)(4) == 24


def test_a_step_that_creates_variables_at_every_call_is_told_it_never_replays():
    # it traced at every call, silently (TF raises at the second trace)
    f = gt.function(lambda x: gt.sum(gt.Variable([1.0, 2.0]) * x))
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        outs = [float(f(gt.ones(2))) for _ in range(5)]
    assert outs == [3.0] * 5 and f.trace_count == 5
    assert sum("created Variables in each of its last 3 traces" in str(m.message) for m in w) == 1


def test_a_step_that_sets_a_flag_on_its_first_call_still_compiles():
    # its first two traces differ (the first read the flag before setting it); the third
    # agrees with the second, and the step replays instead of running eagerly
    v = gt.Variable(np.array([1.0, 2.0]))
    opt = gt.optimizers.SGD(0.1)

    def step(x):
        with gt.GradientTape() as tape:
            loss = gt.sum(v * x)
        if v.trainable:
            opt.apply_gradients([(tape.gradient(loss, v), v)])
        v.trainable = False
        return loss

    f = gt.function(step)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(5):
            f(gt.tensor(np.array([1.0, 1.0])))
    assert f.trace_count == 3
    np.testing.assert_allclose(v.numpy(), [0.9, 1.9])


def test_a_step_setting_a_flag_at_every_call_still_never_replays_a_stale_value():
    # model.train() at every call excused any difference between two traces, so a Python
    # value that changed once then held (1, 2, 2, 2, 3) was compiled frozen at 2
    m = gt.nn.Dense(2, 1, seed=0)
    sched = iter([1.0, 2.0, 2.0, 2.0, 3.0, 3.0])

    def step(x):
        m.train()
        return gt.sum(m(x)) * next(sched)

    f = gt.function(step)
    x = gt.ones((3, 2))
    base = float(gt.sum(m(x)))
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        outs = [float(f(x)) / base for _ in range(6)]
    np.testing.assert_allclose(outs, [1.0, 2.0, 2.0, 2.0, 3.0, 3.0], rtol=1e-6)
    assert any("two traces of the step differ" in str(m_.message) for m_ in w)


def _assert_eager_sgd_steps(k0, batches, losses, k):
    """The compiled steps' ``losses`` and final kernel ``k`` equal eager SGD steps (lr 0.1) of
    ``cross_entropy(x @ k, y)`` from ``k0`` over ``batches``, bit for bit."""
    k2 = gt.Variable(k0)
    opt2 = gt.optimizers.SGD(0.1)
    eager = []
    for x, y in batches:
        with gt.GradientTape() as tape:
            loss = gt.nn.cross_entropy(gt.matmul(gt.tensor(x), k2), gt.tensor(y))
        opt2.apply_gradients(zip(tape.gradient(loss, [k2]), [k2]))
        eager.append(float(loss.numpy()))
    assert losses == eager
    np.testing.assert_array_equal(k.numpy(), k2.numpy())


def test_an_eager_tape_alive_at_the_first_call_does_not_stop_compiling():
    # a persistent tape recorded before training saved the kernel's buffer; the first call's
    # update copied it for that tape as a step of the program, the check trace (the tape gone
    # by then) did not, the traces differed and the step ran eagerly for good. The tape keeps
    # the value it read; later tapes alive at a replay do too
    k = gt.Variable(np.full((4, 3), 0.5, np.float32))
    k0 = k.numpy().copy()
    opt = gt.optimizers.SGD(0.1)

    def step(x, y):
        with gt.GradientTape() as tape:
            loss = gt.nn.cross_entropy(gt.matmul(x, k), y)
        opt.apply_gradients(zip(tape.gradient(loss, [k]), [k]))
        return loss

    f = gt.function(step)
    rng = np.random.default_rng(1)
    batches = [(rng.normal(size=(8, 4)).astype(np.float32), rng.integers(0, 3, 8)) for _ in range(5)]
    before = gt.GradientTape(persistent=True)
    with before:
        z = gt.sum(k * k)  # saves k's buffer
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "runs eagerly"
        losses = [float(f(gt.tensor(batches[0][0]), gt.tensor(batches[0][1])).numpy())]
        np.testing.assert_array_equal(before.gradient(z, k).numpy(), 2 * k0)
        del before, z
        losses += [float(f(gt.tensor(x), gt.tensor(y)).numpy()) for x, y in batches[1:3]]
        during = gt.GradientTape(persistent=True)
        with during:
            z = gt.sum(k * k)
        k_then = k.numpy().copy()
        losses += [float(f(gt.tensor(x), gt.tensor(y)).numpy()) for x, y in batches[3:]]
    assert f.trace_count == 2  # a trace and its check; then replays
    np.testing.assert_array_equal(during.gradient(z, k).numpy(), 2 * k_then)
    _assert_eager_sgd_steps(k0, batches, losses, k)


@pytest.mark.parametrize("verify", [True, False])
def test_a_step_tape_never_shares_an_eager_tape_snapshot(verify):
    # an eager tape had saved w and k; the step's own tape then reused that snapshot (the
    # Variables' raw buffers) instead of reading them as program variables: the step's
    # backward was frozen into constants of the program (k1's regularizer stale after one
    # step), the traces differed with the eager tape alive at one of them, and the step's
    # gradient of a Variable written before it took the gradient came out stale
    w = gt.Variable(np.ones(3, np.float32))
    k = gt.Variable(np.full(3, 0.5, np.float32))

    def step(x):
        with gt.GradientTape(persistent=True) as tape:
            loss = gt.sum(w * k * x) + 0.01 * gt.sum(k * k)
        w.assign_sub(0.5 * w)  # a write before the gradient: the tape keeps the value it read
        g = tape.gradient(loss, k)
        k.assign_sub(0.1 * g)
        return g

    f = gt.function(step, verify=verify)
    x0 = np.array([1.0, 2.0, 3.0], np.float32)
    x = gt.tensor(x0)
    before = gt.GradientTape(persistent=True)
    with before:
        z = gt.sum(w * w) + gt.sum(k * k)
    w_ref, k_ref = w.numpy().copy(), k.numpy().copy()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "runs eagerly"
        for i in range(5):
            got = f(x).numpy()
            want = w_ref * x0 + np.float32(0.02) * k_ref
            np.testing.assert_allclose(got, want, rtol=1e-6)
            w_ref = w_ref - np.float32(0.5) * w_ref
            k_ref = k_ref - np.float32(0.1) * want
            if i == 0:
                np.testing.assert_array_equal(before.gradient(z, [w])[0].numpy(), 2 * np.ones(3))
                del before, z
    np.testing.assert_allclose(w.numpy(), w_ref, rtol=1e-6)
    np.testing.assert_allclose(k.numpy(), k_ref, rtol=1e-6)
    assert f.trace_count == (2 if verify else 1)


def test_a_kept_exception_of_a_failed_trace_does_not_stop_compiling():
    # the first call raises inside the tape after the forward read the kernel; the caller keeps
    # the exception, whose traceback keeps the failed trace's tape (and the kernel's value it
    # saved) alive. The next trace copied that value before the update as a step of its
    # program, the one after did not, and the step ran eagerly for good
    k = gt.Variable(np.zeros((4, 3), np.float32))
    opt = gt.optimizers.SGD(0.1)
    fail = [True]

    def step(x, y):
        with gt.GradientTape() as tape:
            loss = gt.nn.cross_entropy(gt.matmul(x, k), y)
            if fail[0]:  # (a Python side effect: runs while tracing only)
                fail[0] = False
                raise ValueError("the first call fails after the forward")
        opt.apply_gradients(zip(tape.gradient(loss, [k]), [k]))
        return loss

    f = gt.function(step)
    rng = np.random.default_rng(0)
    batches = [(rng.normal(size=(8, 4)).astype(np.float32), rng.integers(0, 3, 8)) for _ in range(5)]
    kept = []
    try:
        f(gt.tensor(batches[0][0]), gt.tensor(batches[0][1]))
    except ValueError as e:
        kept.append(e)
    assert kept
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "runs eagerly"
        losses = [float(f(gt.tensor(x), gt.tensor(y)).numpy()) for x, y in batches[1:]]
    assert f.trace_count == 3  # the failed call, a trace, its check; then replays
    _assert_eager_sgd_steps(np.zeros((4, 3), np.float32), batches[1:], losses, k)


def test_a_numpy_scalar_result_that_is_an_operand_object_is_a_new_value():
    # np.True_ & np.False_ returns the np.False_ it was given: the trace took the result for
    # that operand's program variable, and the replay overwrote b with a & b (found by a
    # helper's fuzz; the library's own backward of a safe multiply meets such scalars)
    def step(x):
        buf = np.zeros(x.shape, x.dtype)
        np.multiply(x.data, 2.0, out=buf)  # a scratch buffer a traced call writes
        s = gt.sum(gt.tensor(buf))  # a 0-d result: NumPy scalars from here on
        a, b = s > 0.0, s < 1.0
        return a, b, a & b

    f = gt.function(step)
    for v in [2.0, 2.0, 2.0, -1.0, 0.25, 3.0]:  # traced with a True, b False; then replayed
        x = gt.tensor(np.array([v]))
        assert [bool(t.numpy()) for t in f(x)] == [bool(t.numpy()) for t in step(x)], v
    assert f.trace_count == 2  # (it compiled: the replays above were checked)


def test_a_nan_constant_in_the_program_still_compiles():
    # the two traces compared constants with ==, so a NaN constant (the backward of an
    # unbiased variance over one example holds float("nan")) made them "differ" and the step
    # ran eagerly for good, warning about the user's step
    W = gt.Variable(np.ones((3, 2)))

    def step(x):
        with gt.GradientTape() as tape:
            loss = gt.sum(gt.var(x @ W, axis=0, ddof=1)) + gt.sum(W * float("nan")) * 0.0
        return loss, tape.gradient(loss, W)

    f = gt.function(step)
    x = gt.tensor(np.array([[1.0, 2.0, 3.0]]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "two traces of the step differ"
        for _ in range(4):
            got, want = f(x), step(x)
            for a, b in zip(got, want):
                np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert f.trace_count == 2 and "def replay" in f.program_source(x)  # compiled


def test_a_tensor_of_a_traced_array_keeps_its_layout_as_eagerly():
    # gt.tensor(array made by NumPy code in the step) copied a traced array in C order where
    # the eager step keeps the layout (np.array's order "K"): an F-ordered array then summed
    # along its rows in another order, last-bit differences from the eager step
    rng = np.random.default_rng(0)
    x = gt.tensor(np.asfortranarray(rng.normal(size=(64, 33)).astype(np.float32)))

    def step(x):
        return gt.sum(gt.tensor(np.tanh(x.data)), axis=1)

    f = gt.function(step)
    want = step(x).numpy()
    for _ in range(3):
        np.testing.assert_array_equal(f(x).numpy(), want)


@pytest.mark.parametrize("read", ["tensor_of_data", "from_dlpack", "from_dlpack_of_data"])
def test_a_variable_read_through_its_buffer_is_read_at_each_call(read):
    # gt.tensor(W.data) and gt.from_dlpack(W) made a constant of W's value at the trace (the
    # two traces agreed, W changing only after them), and the replay kept it (a helper's fuzz)
    W = gt.Variable(np.array([1.0, 2.0]), name="W")
    x = gt.tensor(np.array([10.0, 10.0]))
    reads = {"tensor_of_data": lambda: gt.tensor(W.data),
             "from_dlpack": lambda: gt.from_dlpack(W),
             "from_dlpack_of_data": lambda: gt.from_dlpack(W.data)}

    def step(x):
        return reads[read]() * 2.0 + x

    f = gt.function(step)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (it compiles: no "two traces of the step differ")
        for call in range(5):
            np.testing.assert_array_equal(f(x).numpy(), step(x).numpy(), err_msg=f"call {call}")
            if call >= 1:  # W changes after the two traces, outside the step
                W.assign(W * 3.0)
    assert f.trace_count == 2 and "def replay" in f.program_source(x)


@pytest.mark.parametrize("verify", [False, True])
def test_a_flag_the_step_reads_then_sets_is_checked_at_the_next_call(verify):
    # the step reads b.trainable (its tape watches b by it), then sets it itself; the caller
    # freezes b before one call, which traces for False. The program's flag epoch was taken
    # after that trace, past the step's own sets, so the next call (b trainable again) skipped
    # the check and replayed the program traced for a frozen b: no gradient (a helper's fuzz)
    def make():
        W, b = gt.Variable(np.array([1.0, 2.0])), gt.Variable(np.array([0.5]))

        def step(x):
            with gt.GradientTape() as tape:
                loss = gt.sum(x @ W) + gt.sum(b * b)
            gb = tape.gradient(loss, [W, b])[1]
            b.trainable = False  # a sub-step with b frozen...
            b.trainable = True  # ... and b trainable again before returning
            return gb
        return step, b

    def run(fn, b):
        out = []
        for call in range(7):
            if call == 3:
                b.trainable = False  # the caller freezes b once
            g = fn(gt.tensor(np.ones((2, 2))))
            out.append(None if g is None else g.numpy().tolist())
        return out

    want = run(*make())
    step, b = make()
    assert run(gt.function(step, verify=verify), b) == want
    assert want[3] is None and want[4] == [1.0]


def test_a_constant_boolean_mask_is_refused_with_how_to_index_instead():
    # a plain mask got "its result's shape depends on the values ... use gt.where", which
    # fits a traced mask; the message now says what holds for a plain one (a helper's fuzz)
    mask = np.array([True, False, True])
    x = gt.tensor(np.arange(3.0))
    f = gt.function(lambda x: gt.sum(x[mask] * 2.0))
    with pytest.raises(gt.TracingError, match=r"boolean mask at .*a plain array \(not a traced "
                                              r"value\).*x\[np\.flatnonzero\(mask\)\]"):
        f(x)
    g = gt.function(lambda x: gt.sum(x[np.flatnonzero(mask)] * 2.0))  # the way the message gives
    for v in (np.arange(3.0), np.ones(3), np.arange(3.0) * 5):
        assert float(g(gt.tensor(v))) == float(np.sum(v[mask] * 2.0))
    assert "def replay" in g.program_source(x)
    with pytest.raises(gt.TracingError, match=r"getitem \(its result's shape depends on the "
                                              r"values\).*gt\.where"):
        gt.function(lambda x: gt.sum(x[x > 1.0]))(x)  # a traced mask: as before
    h = gt.function(lambda x: gt.sum(x[mask]), fallback="eager")
    with pytest.warns(UserWarning, match=r"plain boolean mask at .*test_function\.py:\d+"):
        assert float(h(x)) == 2.0


def test_a_step_retraced_at_every_mode_switch_warns_once():
    # a flag the program holds for (a module's training mode) changing at every call traces
    # the step again each time: TF warns on frequent retracing whatever its cause, so does this
    m = gt.nn.Sequential([gt.nn.Dense(4, 4, seed=0), gt.nn.Dropout(0.5, seed=1)])
    x = gt.tensor(np.ones((2, 4), np.float32))

    def alternate(train_f, eval_f):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(10):
                m.train()
                train_f(x)
                m.eval()
                eval_f(x)
        return [str(w.message) for w in caught if "traced" in str(w.message)]

    f = gt.function(lambda x: m(x))
    msgs = alternate(f, f)
    assert len(msgs) == 1 and "training mode" in msgs[0] and "one function per mode" in msgs[0]
    assert f.trace_count == 20
    # one function per mode keeps each program: no warning, the later calls replay
    train_f, eval_f = gt.function(lambda x: m(x)), gt.function(lambda x: m(x))
    assert not alternate(train_f, eval_f)
    assert train_f.trace_count == 2 and eval_f.trace_count == 2


def test_reductions_and_basic_indexing_replay_as_eager():
    # sums and maxima along axes (with keepdims and a dtype) and basic indices (ints, negative
    # ints, slices with steps, None, Ellipsis) of traced values: a replay on new inputs gives
    # the eager step's values, bit for bit
    def step(x):
        s = gt.sum(x, axis=1, keepdims=True)
        m = gt.max(x, axis=(0, 2))
        y = x[1:, ::2, -1] * s[..., 0][:, :1][1:]
        z = x[None, -1, :, 1:3][0] + m[::-1][:, None]
        w = gt.mean(x[..., 0]) + x[0, 0, 0]
        return y, z, w, gt.sum(gt.astype(x, "float64"), axis=-1)

    f = gt.function(step)
    rng = np.random.default_rng(3)
    for _ in range(4):
        x = gt.tensor(rng.normal(size=(3, 4, 5)).astype(np.float32))
        for got, want in zip(f(x), step(x)):
            np.testing.assert_array_equal(got.numpy(), want.numpy())
            assert got.dtype == want.dtype and got.shape == want.shape
    assert f.trace_count == 2


def test_arguments_are_bound_to_the_parameters_as_in_tf():
    # f(x), f(x, 2.0) with 2.0 the default, f(x=x), f(x, scale=2.0) and f(scale=2.0, x=x) are
    # one signature (TF binds the arguments and fills in defaults): traced twice, then replayed
    def step(x, scale=2.0, *, shift=0.5):
        return x * scale + shift

    f = gt.function(step)
    x = gt.tensor(np.arange(4, dtype=np.float32))
    want = step(x).numpy()
    for call in (lambda: f(x), lambda: f(x, 2.0), lambda: f(x=x), lambda: f(x, scale=2.0),
                 lambda: f(scale=2.0, x=x), lambda: f(x, shift=0.5), lambda: f(x)):
        np.testing.assert_array_equal(call().numpy(), want)
    assert f.trace_count == 2
    np.testing.assert_array_equal(f(x, 3.0).numpy(), step(x, 3.0).numpy())  # another value
    assert f.trace_count == 3  # (its first trace)
    # a tensor default is an input of the program: the replay reads the tensor passed, or
    # the default itself
    b0 = gt.tensor(np.ones(4, np.float32))

    def add(x, b=b0):
        return x + b

    g = gt.function(add)
    for _ in range(3):
        np.testing.assert_array_equal(g(x).numpy(), (x + b0).numpy())
    b1 = gt.tensor(np.full(4, 5.0, np.float32))
    np.testing.assert_array_equal(g(x, b1).numpy(), (x + b1).numpy())
    np.testing.assert_array_equal(g(x=x, b=b1).numpy(), (x + b1).numpy())
    assert g.trace_count == 2
    # a call that does not bind raises the function's own error
    with pytest.raises(TypeError):
        f(x, 1.0, 2.0)


def test_binding_leaves_array_container_defaults_and_wrappers_as_eagerly():
    # only plain, NumPy-scalar and tensor defaults are filled in: a NumPy array default stays
    # the host array a closure's would be, a dict default is the function's own object (its
    # side effects while tracing reach it), and a functools.wraps wrapper is called with its
    # own parameters, not the wrapped function's
    import functools

    x = gt.tensor(np.arange(4, dtype=np.float32))

    weights = np.array([1.0, 2.0, 3.0, 4.0], np.float32)

    def step(x, w=weights):
        return x * float(w.sum()), w

    f = gt.function(step)
    for _ in range(3):
        out, w = f(x)
        np.testing.assert_array_equal(out.numpy(), step(x)[0].numpy())
        assert type(w) is np.ndarray

    stats = {"traces": 0}

    def counted(x, stats=stats):
        stats["traces"] += 1
        return x * 2.0

    g = gt.function(counted)
    for _ in range(4):
        g(x)
    assert stats["traces"] == 2 == g.trace_count

    def inner(x, scale=1.0):
        return x * scale

    @functools.wraps(inner)
    def wrapper(x):
        return inner(x, scale=3.0)

    h = gt.function(wrapper)
    for _ in range(3):
        np.testing.assert_array_equal(h(x).numpy(), wrapper(x).numpy())
