"""Threaded eager forward (gradtape/_parallel.py): bit-identical to the plain impl for every
elementwise primitive (float32/float64, full, scalar, broadcast and strided operands), taken
only when it should be, hooked into ``bind`` and the unary ops, gradients unchanged, worker
exceptions and ``np.errstate`` carried over. Thresholds are lowered so arrays stay small."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import numpy as np
import pytest

import gradtape as gt
from gradtape._src.cpu import parallel as _parallel
from gradtape._src import primitive as primitive_mod
from gradtape._src.primitive import REGISTRY
from gradtape.ops import elementwise as elementwise_mod

ELEMENTWISE = sorted(name for name, p in REGISTRY.items() if p.is_elementwise)
LOW = 256  # threshold used by these tests
CHUNK = 40  # not a multiple of any SIMD width: chunk tails land mid-vector


@pytest.fixture(autouse=True)
def threaded(monkeypatch):
    """Low threshold in the module and in both hooks, small chunks, two threads; counts how
    often the threaded path runs."""
    monkeypatch.setattr(_parallel, "MIN_SIZE", LOW)
    monkeypatch.setattr(_parallel, "CHEAP_MIN_SIZE", LOW)
    monkeypatch.setattr(primitive_mod, "_PARALLEL_MIN", LOW)
    monkeypatch.setattr(elementwise_mod, "_PARALLEL_MIN", LOW)
    monkeypatch.setattr(_parallel, "CHUNK", CHUNK)
    monkeypatch.setattr(_kernels, "THREADS", 2)
    calls = []
    run = _parallel._run

    def counting_run(*args, **kwargs):
        calls.append(args[0].name)
        return run(*args, **kwargs)

    monkeypatch.setattr(_parallel, "_run", counting_run)
    return calls


def sample(domain, rng, shape, dtype):
    if domain.kind == "bool":
        return np.asarray(rng.random(shape) > 0.5)
    v = rng.uniform(domain.low, domain.high, shape)
    for p in domain.avoid:  # push points off kinks
        near = np.abs(v - p) < domain.margin
        v = np.where(near, p + np.where(v >= p, 1, -1) * 2 * domain.margin, v)
    return v.astype(dtype)


def operands(prim, rng, dtype, layout, shape=(13, 37)):
    arrays = []
    for i, d in enumerate(prim.domains):
        s = shape
        if layout == "scalar" and i > 0:
            s = ()
        elif layout == "scalar-first" and i == 0 and len(prim.domains) > 1:
            s = ()
        elif layout == "broadcast" and i == len(prim.domains) - 1:
            s = (1, shape[1])
        a = sample(d, rng, s, dtype)
        if layout == "strided":
            base = np.empty((s[0], 2 * s[1]), a.dtype)
            base[:, ::2] = a
            a = base[:, ::2]
        elif layout == "fortran":
            a = np.asfortranarray(a)
        arrays.append(a)
    params = {n: 0.3 for n in prim.param_names}
    return arrays, params


def assert_identical(got, want):
    assert type(got) is type(want) is np.ndarray
    assert got.dtype == want.dtype
    assert got.shape == want.shape
    assert got.strides == want.strides
    assert got.tobytes() == want.tobytes()  # bit for bit (NaN payloads, signed zeros)


THREADED = {"full", "scalar", "scalar-first"}


@pytest.mark.parametrize("layout", ["full", "scalar", "scalar-first", "broadcast", "strided",
                                    "fortran"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", ELEMENTWISE)
def test_every_primitive_matches_plain_impl(name, dtype, layout, rng, threaded):
    prim = REGISTRY[name]
    arrays, params = operands(prim, rng, dtype, layout)
    with np.errstate(all="ignore"):
        want = prim.impl(np, *arrays, **params)
        got = _parallel.forward(prim, np, tuple(arrays), params)
    assert_identical(got, want)
    assert threaded == ([name] if layout in THREADED else [])


@pytest.mark.parametrize("name", ["sin", "mul", "where", "gelu"])
def test_sizes_around_threshold(name, rng, threaded):
    prim = REGISTRY[name]
    for n, expect in ((LOW - 1, False), (LOW, True), (LOW + 1, True), (LOW + 3 * CHUNK + 7, True)):
        arrays, params = operands(prim, rng, "float32", "full", shape=(n,))
        want = prim.impl(np, *arrays, **params)
        threaded.clear()
        got = _parallel.forward(prim, np, tuple(arrays), params)
        assert_identical(got, want)
        assert threaded == ([name] if expect else []), n


def test_falls_back_when_it_should(rng, threaded):
    x = rng.standard_normal(1000).astype(np.float32)
    add, sin = REGISTRY["add"], REGISTRY["sin"]
    # a Python scalar operand (ops never pass one, but forward must not mis-handle it)
    assert_identical(_parallel.forward(add, np, (x, 2.5), {}), x + 2.5)
    # a single-element operand of higher rank broadcasts the output: plain call
    one = np.ones((1, 1), np.float32)
    assert_identical(_parallel.forward(add, np, (x, one), {}), x + one)
    # an ndarray subclass
    m = x.view(np.recarray)
    assert _parallel.forward(sin, np, (m,), {}).shape == x.shape
    # another array module (CuPy arrays never take the threaded path)
    fake_xp = SimpleNamespace(sin=np.sin)
    assert_identical(_parallel.forward(sin, fake_xp, (x,), {}), np.sin(x))
    # not elementwise
    s = REGISTRY["sum"]
    assert float(_parallel.forward(s, np, (x,), {"axis": None, "keepdims": False})) == \
        float(x.sum())
    assert threaded == []


def test_single_thread_configuration(monkeypatch, rng, threaded):
    monkeypatch.setattr(_kernels, "THREADS", 1)
    x = rng.standard_normal(1000)
    assert_identical(_parallel.forward(REGISTRY["exp"], np, (x,), {}), np.exp(x))
    assert threaded == []


def fake_prim(impl, name="fake"):
    """An elementwise-looking primitive that is not registered (keeps REGISTRY clean)."""
    return SimpleNamespace(name=name, impl=impl, derivatives=())


def slow_on_main(x):
    if threading.current_thread() is threading.main_thread() and x.size > 1:
        threading.Event().wait(0.01)  # leave chunks for the worker


def test_workers_run_chunks_and_see_errstate(rng):
    seen = []

    def impl(xp, x):
        seen.append((threading.current_thread().name, np.geterr()["divide"]))
        slow_on_main(x)
        return x * 2

    x = rng.standard_normal(20 * CHUNK)
    with np.errstate(divide="raise"):
        got = _parallel.forward(fake_prim(impl), np, (x,), {})
    np.testing.assert_array_equal(got, x * 2)
    workers = [e for name, e in seen if name.startswith("gradtape-blocks")]
    assert workers, "no chunk ran on a pool thread"
    assert set(workers) == {"raise"}


def test_exception_in_worker_propagates(rng):
    def impl(xp, x):
        if threading.current_thread().name.startswith("gradtape-blocks"):
            raise ValueError("boom in a worker")
        slow_on_main(x)
        return x + 1

    x = rng.standard_normal(20 * CHUNK)
    with pytest.raises(ValueError, match="boom in a worker"):
        _parallel.forward(fake_prim(impl), np, (x,), {})
    # the pool still works afterwards
    y = _parallel.forward(REGISTRY["cos"], np, (x,), {})
    assert_identical(y, np.cos(x))


def test_exception_on_main_thread_propagates(rng):
    def impl(xp, x):
        if x.size > 1 and threading.current_thread() is threading.main_thread():
            raise KeyError("boom on main")
        return x + 1

    with pytest.raises(KeyError, match="boom on main"):
        _parallel.forward(fake_prim(impl), np, (rng.standard_normal(20 * CHUNK),), {})


def test_errstate_raise_still_raises(rng):
    x = np.zeros(10 * CHUNK)
    with np.errstate(divide="raise"), pytest.raises(FloatingPointError):
        _parallel.forward(REGISTRY["log"], np, (x,), {})


def chain(m, x):
    return m.square(m.tanh(m.cos(m.exp(m.sin(x) * 0.5) + 1.0) * 2.0))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_ops_use_it_and_gradients_are_unchanged(monkeypatch, dtype, rng, threaded):
    x_np = rng.standard_normal((31, 29)).astype(dtype)

    def run():
        x = gt.Variable(x_np)
        with gt.GradientTape() as tape:
            y = gt.sum(chain(gt, x) + gt.where(x > 0, x, 2.0 * x) + gt.leaky_relu(x, 0.2))
        return y.numpy(), tape.gradient(y, x).numpy()

    y, g = run()
    assert {"sin", "mul", "exp", "add", "cos", "tanh", "square", "where",
            "leaky_relu"} <= set(threaded)
    for mod, name in ((_parallel, "MIN_SIZE"), (primitive_mod, "_PARALLEL_MIN"),
                      (elementwise_mod, "_PARALLEL_MIN")):
        monkeypatch.setattr(mod, name, 1 << 62)
    threaded.clear()
    y0, g0 = run()
    assert threaded == []
    assert_identical(y, y0)
    assert_identical(g, g0)
    expect = chain(np, x_np)
    np.testing.assert_allclose(chain(gt, gt.tensor(x_np)).numpy(), expect,
                               rtol=1e-5 if dtype == "float32" else 1e-12)


def test_small_ops_stay_plain(threaded):
    x = gt.tensor(np.linspace(-1, 1, 16, dtype=np.float32))
    gt.tanh(x)
    x * 2.0
    gt.clip(x, -0.5, 0.5)
    assert threaded == []


def test_cheap_ops_have_their_own_threshold(monkeypatch, rng, threaded):
    monkeypatch.setattr(_parallel, "CHEAP_MIN_SIZE", 4 * LOW)
    x, s = rng.standard_normal(2 * LOW), np.asarray(0.5)
    assert_identical(_parallel.forward(REGISTRY["mul"], np, (x, s), {}), x * s)
    assert_identical(_parallel.forward(REGISTRY["exp"], np, (x,), {}), np.exp(x))
    assert threaded == ["exp"]
    x = rng.standard_normal(4 * LOW)
    assert_identical(_parallel.forward(REGISTRY["mul"], np, (x, s), {}), x * s)
    assert threaded == ["exp", "mul"]


def test_one_chunk_stays_plain(monkeypatch, rng, threaded):
    monkeypatch.setattr(_parallel, "CHUNK", 4 * LOW)
    x = rng.standard_normal(2 * LOW)
    assert_identical(_parallel.forward(REGISTRY["sin"], np, (x,), {}), np.sin(x))
    assert threaded == []
