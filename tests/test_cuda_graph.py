"""``gt.function(..., cuda_graph=True)``: the replay's device work as CUDA graphs, checked on
the device-strict backend (its ``capture`` records every kernel and relaunches it with the
arguments it had, as a captured graph does) and, where a GPU is present, on CuPy."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import gradtape as gt
from gradtape._src import strict
from gradtape._src.backend import get_backend
from gradtape.examples import digits


def _train(build, cuda_graph, image, steps=6, dropout=False, outside=None):
    """Train ``build()`` with Adam under ``gt.function``; returns losses, the results of every
    call (kept: a later call must not change them), the final weights and the Function."""
    model = build()
    opt = gt.optimizers.Adam(lambda it: 1e-2 / (1 + it))  # a schedule: host state per call
    params = model.trainable_variables
    gen = gt.random.Generator(5)

    def step(x, y):
        with gt.GradientTape() as tape:
            logits = model(x)
            if dropout:
                logits = logits * gen.bernoulli(0.8, logits.shape) / 0.8
            loss = gt.nn.cross_entropy(logits, y)
        grads = tape.gradient(loss, params)
        opt.apply_gradients(zip(grads, params))
        return loss, grads[0]

    f = gt.function(step, cuda_graph=cuda_graph)
    rng = np.random.default_rng(1)
    results = []
    for i in range(steps):
        x = gt.tensor(rng.standard_normal((8, 1, 8, 8) if image else (8, 64)).astype(np.float32))
        y = gt.tensor(rng.integers(0, 10, 8))
        results.append(f(x, y))
        if outside is not None and i == 3:
            outside(params)
    kept = [(float(loss.numpy()), g.numpy()) for loss, g in results]
    return kept, [p.numpy() for p in params], f


@pytest.mark.parametrize("image", [False, True], ids=["mlp", "cnn"])
def test_training_steps_as_graphs_equal_the_plain_replay(device, image):
    """The digits MLP and CNN trained with Adam (a learning-rate schedule: host state) under
    cuda_graph=True: losses, gradients returned at every call (kept across calls: no result
    aliases a graph's buffer) and final weights equal the plain replay's bit for bit, and the
    forward and backward ran as graphs: the device runs between the matmuls (CuPy refuses
    cuBLAS calls in a capture: they run between the launches, as the update's host steps do;
    the strict stand-in refuses them too, so a matmul inside a graph would warn here)."""
    build = (lambda: digits.build_cnn(seed=2)) if image else (lambda: digits.build_mlp(seed=2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        want, w_want, _ = _train(build, False, image)
        got, w_got, f = _train(build, True, image)
    assert f.graph_count >= 1
    for (la, ga), (lb, gb) in zip(got, want):
        assert la == lb
        np.testing.assert_array_equal(ga, gb)
    for a, b in zip(w_got, w_want):
        np.testing.assert_array_equal(a, b)


def test_random_draws_and_outside_assignments_between_launches(device):
    """Random draws (dropout masks) are host steps: new numbers at every call, as eagerly; a
    Variable assigned outside the function between calls is read by the next launch."""
    def halve(params):
        params[0].assign(params[0] * 0.5)

    build = lambda: digits.build_mlp(seed=3)  # noqa: E731
    want, w_want, _ = _train(build, False, False, steps=7, dropout=True, outside=halve)
    got, w_got, f = _train(build, True, False, steps=7, dropout=True, outside=halve)
    assert f.graph_count >= 1
    assert [loss for loss, _ in got] == [loss for loss, _ in want]
    assert len({loss for loss, _ in got}) == len(got)  # masks and inputs change every call
    for a, b in zip(w_got, w_want):
        np.testing.assert_array_equal(a, b)


def test_a_graph_per_signature_and_none_on_numpy():
    """Each input signature captures its own graph (at its second replay: the first compiles
    the kernels); on NumPy the option changes nothing."""
    strict.install()
    w = {}
    results = {}
    for name in ("strict", "numpy"):
        with gt.use_backend(name):
            w[name] = gt.Variable(np.linspace(-1, 1, 4, dtype=np.float32))

            @gt.function(cuda_graph=True)
            def f(x, _w=w[name]):
                return gt.tanh(x * _w) * 2.0

            outs = [f(gt.ones((n, 4))).numpy() for n in (2, 2, 2, 2, 3, 3, 3, 3, 2)]
            results[name] = (outs, f.graph_count)
    assert results["strict"][1] == 2 and results["numpy"][1] == 0
    for a, b in zip(results["strict"][0], results["numpy"][0]):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_under_an_outer_tape_the_python_function_runs(device):
    """Called under an outer tape, a cuda_graph function runs as Python (the tape sees its
    ops) and captures nothing."""
    v = gt.Variable([1.0, 2.0])
    f = gt.function(lambda x: gt.sum(x * v), cuda_graph=True)
    with gt.GradientTape() as tape:
        y = f(gt.tensor([3.0, 4.0]))
    np.testing.assert_allclose(tape.gradient(y, v).numpy(), [3.0, 4.0])
    assert f.graph_count == 0


def _both(make, calls, inputs):
    """Run ``make()``'s step compiled without and with cuda_graph over ``inputs(i)``; returns
    both lists of host results and the graph Function."""
    out = {}
    for cg in (False, True):
        step = make()
        f = gt.function(step, cuda_graph=cg)
        out[cg] = ([[np.asarray(r.numpy()) for r in (f(*inputs(i)),)] for i in range(calls)], f)
    return out[False][0], out[True][0], out[True][1]


def _assert_same(a, b):
    for x, y in zip(a, b):
        for u, v in zip(x, y):
            np.testing.assert_array_equal(u, v)


def test_host_tensors_while_a_device_backend_is_active_are_not_captured(device):
    """A step on NumPy tensors and Variables called while a device backend is active has no
    device work: no graph (it would freeze the host results), the values of the plain replay."""
    with gt.use_backend("numpy"):
        w = gt.Variable(np.ones(3, np.float32))
        xs = [gt.tensor(np.full(3, float(i), np.float32)) for i in range(7)]
    a, b, f = _both(lambda: (lambda x: gt.sum(gt.exp(x) * w)), 7, lambda i: (xs[i],))
    _assert_same(a, b)
    assert f.graph_count == 0


def test_in_place_writes_across_host_steps_and_into_inputs_replay_without_graphs(device):
    """A step that writes in place an array made before a host step (a view of it made earlier
    must see the write), or an input's array (the caller's tensor changes, as eagerly): such a
    program replays without graphs, with the plain replay's values."""
    rng = np.random.default_rng(0)
    xs = [gt.tensor(rng.standard_normal((4, 3)).astype(np.float32)) for _ in range(7)]

    def make_view():
        v = gt.Variable(np.zeros(3, np.float32))

        def step(x):
            a = x.data * 2.0
            b = a.reshape(-1)        # a view made before the host step
            v.assign(x[0])           # a host step (a Variable write)
            a += 1.0                 # written in place after it
            return gt.tensor(b) + 0.0
        return step

    a, b, f = _both(make_view, 7, lambda i: (xs[i],))
    _assert_same(a, b)
    assert f.graph_count == 0
    seen = {}
    for cg in (False, True):
        f = gt.function(lambda x: gt.sum(x) + 0.0 * gt.tensor(x.data.__iadd__(1.0)).sum(),
                        cuda_graph=cg)
        ts = [gt.tensor(np.full(3, float(i), np.float32)) for i in range(6)]
        results = [float(f(t).numpy()) for t in ts]
        seen[cg] = (results, [float(t.numpy()[0]) for t in ts])
    assert seen[True] == seen[False]
    assert seen[True][1] == [float(i + 1) for i in range(6)]  # the caller's tensors changed


def test_strided_inputs_keep_their_layout_and_sorts_replay_without_a_graph(device):
    """A transposed input is copied into the graph's buffer with its strides (a reduction's
    rounding depends on them): bit-identical results. A sort cannot be captured on CuPy
    (Thrust synchronises the stream): that part replays without a graph, with one warning."""
    rng = np.random.default_rng(1)
    ts = [gt.transpose(gt.tensor(rng.standard_normal((33, 17)).astype(np.float32)))
          for _ in range(7)]
    a, b, f = _both(lambda: (lambda x: gt.sum(x * x, axis=1)), 7, lambda i: (ts[i],))
    _assert_same(a, b)
    assert f.graph_count == 1
    with pytest.warns(UserWarning, match="could not be captured"):
        a, b, f = _both(lambda: (lambda x: gt.sort(x * 2.0, axis=-1)[..., :3]), 7,
                        lambda i: (ts[i],))
    _assert_same(a, b)
    assert f.graph_count == 0


@pytest.mark.parametrize("how", ["view", "copyto", "putmask", "positional_out"])
def test_in_place_writes_through_views_and_device_writers(device, how):
    """In-place writes into a caller's tensor through a view made in the step, through the
    array library's writers (``xp.copyto``, ``xp.putmask``) or a ufunc's positional output
    (CuPy's convention, with fusion on), as library code makes them through the backend's
    namespace: the caller's tensor changes at every call as in the plain replay (such programs
    replay without graphs), and the values match."""
    def make():
        def step(x, y):
            xp = get_backend().xp  # (while tracing: the namespace that logs calls)
            d = x.data
            if how == "view":
                v = d.reshape(-1)
                v += 1.0
            elif how == "copyto":
                xp.copyto(d, y.data * 2.0)
            elif how == "putmask":
                xp.putmask(d, y.data > 1.0, y.data)
            else:
                xp.multiply(y.data * 1.0, 2.0, d)
            return gt.sum(y) * 1.0
        return step

    seen = {}
    for cg in (False, True):
        f = gt.function(make(), cuda_graph=cg)
        xs = [gt.tensor(np.zeros(4, np.float32)) for _ in range(7)]
        out = [float(f(xs[i], gt.tensor(np.full(4, float(i), np.float32))).numpy()) for i in range(7)]
        seen[cg] = (out, [x.numpy().tolist() for x in xs], f.graph_count)
    assert seen[True][:2] == seen[False][:2]
    assert seen[True][2] == 0


def test_layouts_sharing_a_signature_replay_as_the_plain_replay(device):
    """Two strided layouts of one shape with the same order of axes by stride share a
    signature; a graph captured with one layout's buffer runs the plain run for a call with
    the other, so results stay bit-identical."""
    rng = np.random.default_rng(2)
    base = [gt.tensor(rng.standard_normal((16, 16 if i < 5 else 20, 16)).astype(np.float32))
            for i in range(8)]
    ts = [gt.transpose(b[:, :16], (1, 0, 2)) for b in base]  # rows of 16 or of 20 apart
    assert ts[0].shape == ts[6].shape and ts[0].data.strides != ts[6].data.strides
    a, b, f = _both(lambda: (lambda x: gt.sum(x * x, axis=(0, 2))), 8, lambda i: (ts[i],))
    _assert_same(a, b)
    assert f.trace_count == 2 and f.graph_count == 1  # one signature, one graph


def test_results_keep_their_layout_and_broadcast_buffers_are_read_in_place(device):
    """A transposed result comes back transposed (a caller's reduction on it, or feeding it
    back as the next call's input, adds in the plain replay's order); a later graph reads an
    earlier graph's broadcast result (read-only on the strict backend) where it is, with no
    warning, across a host step (a random draw)."""
    rng = np.random.default_rng(3)
    xs = [gt.tensor(rng.standard_normal((300, 64)).astype(np.float32)) for _ in range(8)]
    sums = {}
    for cg in (False, True):
        f = gt.function(lambda x: gt.transpose(x * 2.0), cuda_graph=cg)
        sums[cg] = [[gt.sum(f(x), axis=0).numpy()] for x in xs]
    _assert_same(sums[True], sums[False])

    def make(gen):
        return lambda x: gt.broadcast_to(gt.sum(x, axis=1, keepdims=True), (300, 64)) * gen.normal((300, 64))

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        outs = {}
        for cg in (False, True):
            f = gt.function(make(gt.random.Generator(2)), cuda_graph=cg)
            outs[cg] = [[f(x).numpy()] for x in xs]
        _assert_same(outs[True], outs[False])
    assert f.graph_count == 2


def test_an_error_at_the_capturing_call_is_the_calls_and_capture_retries(device):
    """An out-of-range index at the call that would capture raises that call's IndexError, as
    the plain replay does, with no capture warning; the next call captures."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        f = gt.function(lambda x, i: x[i] * 2.0, cuda_graph=True)
        x = gt.tensor(np.arange(5, dtype=np.float32))
        seen = []
        for k in range(7):
            try:
                seen.append(f(x, gt.tensor(np.array([0, 9 if k == 3 else k % 5]))).numpy().tolist())
            except IndexError:
                seen.append("IndexError")
    assert seen[3] == "IndexError" and seen[4] == [0.0, 8.0] and seen[6] == [0.0, 2.0]
    assert f.graph_count == 1


@pytest.mark.parametrize("how", ["clip_by_global_norm", "global_clipnorm", "per_example_norms"])
def test_gradient_norms_stay_inside_one_graph(device, how):
    """The norms of clipping (and per-example norms) are device steps without a read-back:
    one graph for the forward, the backward and the norms, not one cut per gradient (the host
    route's float64 retry is a host step on NumPy only). (Elementwise layers: a matmul is a
    cuBLAS call, which runs between graphs.)"""
    ws = [gt.Variable(np.full(4, 0.1 * (i + 1), np.float32)) for i in range(6)]
    opt = gt.optimizers.SGD(0.1, global_clipnorm=0.5)

    def step(x):
        with gt.GradientTape() as tape:
            h = x
            for w in ws:
                h = gt.tanh(h * w)
            per = (h * h).sum(axis=1)
            loss = per.sum()
        if how == "per_example_norms":
            _, norms = tape.per_example_gradients(per, ws, max_norm=1.0, reduce="sum",
                                                  return_norms=True)
            return loss, norms
        grads = tape.gradient(loss, ws)
        if how == "global_clipnorm":
            opt.apply_gradients(zip(grads, ws))
            return loss, grads[0]
        clipped, norm = gt.optimizers.clip_by_global_norm(grads, 0.5)
        return loss, norm

    f = gt.function(step, cuda_graph=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a read-back inside would fail the capture: it warns
        for _ in range(4):
            f(gt.ones((2, 4)))
    # (per-example norms sum rows with einsum, a cuBLAS call on CuPy: graphs around it)
    assert f.graph_count == 1 if how != "per_example_norms" else f.graph_count >= 1


@pytest.mark.parametrize("op", ["matmul", "solve", "conv2d"])
def test_a_matrix_op_on_variables_alone_runs_between_graphs(device, op):
    """A cuBLAS op whose operands are all Variables is logged as one whole-op step: it runs
    between the graphs too (CuPy refuses cuBLAS in a capture), with no capture warning."""
    rng = np.random.default_rng(0)
    a = gt.Variable(rng.normal(size=(3, 3)).astype(np.float32) + 3 * np.eye(3, dtype=np.float32))
    b = gt.Variable(rng.normal(size=(3, 3)).astype(np.float32))
    k = gt.Variable(rng.normal(size=(2, 1, 2, 2)).astype(np.float32))
    img = gt.Variable(rng.normal(size=(1, 1, 4, 4)).astype(np.float32))
    param = {"matmul": lambda: a @ b, "solve": lambda: gt.solve(a, b),
             "conv2d": lambda: gt.nn.conv2d(img, k).reshape((2, 9))[:, :3]}[op]

    def step(x):
        return gt.sum(param() * gt.tanh(x) * 2.0) + 1.0

    x = gt.tensor(np.ones((3, 3) if op != "conv2d" else (2, 3), np.float32))
    want = float(step(x).numpy())
    f = gt.function(step, cuda_graph=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(4):
            np.testing.assert_allclose(float(f(x).numpy()), want, rtol=1e-6)
    assert f.graph_count >= 1
