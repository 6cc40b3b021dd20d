"""Threaded eager forward (gradtape/_src/cpu/parallel.py): bit-identical to the plain impl for
every elementwise primitive (float32/float64, full, scalar, broadcast and strided operands),
taken only when it should be, used by every op (``bind``), gradients unchanged, worker
exceptions and ``np.errstate`` carried over.

Through the public and extension APIs: ``extend.cpu_thresholds`` lowers the thresholds so
arrays stay small; operands keep their layout in ``gt.from_dlpack`` views and go through
``extend.bind``; whether a forward ran threaded is seen in how the primitive's own ``impl`` and
``out_form`` (public attributes) are called: the threaded path computes a one-element probe and
then chunks of at most ``chunk`` elements, the plain path the whole output in one call."""

from __future__ import annotations

import itertools
import threading
from types import SimpleNamespace

import numpy as np
import pytest

import gradtape as gt
from gradtape import extend

# parallel.forward itself, only for operands no Tensor can hold (Python scalars, ndarray
# subclasses, another array module): its guards for them have no public path
from gradtape._src.cpu import parallel

REGISTRY = extend.REGISTRY
ELEMENTWISE = sorted(name for name, p in REGISTRY.items() if p.is_elementwise)
LOW = 256  # threshold used by these tests
CHUNK = 40  # not a multiple of any SIMD width: chunk tails land mid-vector


@pytest.fixture(autouse=True)
def thresholds():
    """Low thresholds (plain and cheap ops), small chunks, two threads."""
    with extend.cpu_thresholds(threads=2, chunk=CHUNK, min_size=LOW, cheap_min_size=LOW) as t:
        yield t


@pytest.fixture
def calls(monkeypatch):
    """``(primitive name, elements computed)`` for every call of an elementwise primitive's
    ``impl`` or ``out_form`` (each wrapped for the test)."""
    log: list[tuple[str, int]] = []
    for name in ELEMENTWISE:
        prim = REGISTRY[name]

        def spy_impl(xp, *args, _impl=prim.impl, _name=name, **params):
            out = _impl(xp, *args, **params)
            log.append((_name, int(np.size(out))))
            return out

        monkeypatch.setattr(prim, "impl", spy_impl)
        if prim.out_form is not None:
            def spy_form(*args, _form=prim.out_form, _name=name):
                _form(*args)
                log.append((_name, int(args[-1].size)))  # the output slice written

            monkeypatch.setattr(prim, "out_form", spy_form)
    return log


def in_pieces(log, n):
    """Names of the primitives that computed an ``n``-element output in pieces."""
    return sorted({name for name, size in log if size < n})


def assert_ran(log, name, n, threaded):
    """One forward of ``name`` with ``n`` output elements: threaded (a one-element probe, then
    chunks covering the output once) or one plain call."""
    if threaded:
        sizes = [size for _, size in log]
        assert {nm for nm, _ in log} == {name}, log
        assert sizes and max(sizes) <= CHUNK and sum(sizes) == n + 1, sizes
    else:
        assert log == [(name, n)]


_declared = itertools.count()


@pytest.fixture
def declare():
    """Declare throw-away elementwise primitives (``d="1"``), removed from the registry after."""
    made = []

    def make(impl):
        name = f"_pf_probe_{next(_declared)}"
        made.append(name)
        return extend.elementwise(name, impl, d="1")

    yield make
    for name in made:
        REGISTRY.pop(name, None)


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


def run(prim, arrays, params=None):
    """``prim`` bound on views of ``arrays`` (their layout kept); the result array."""
    tensors = [gt.from_dlpack(a) for a in arrays]
    for t, a in zip(tensors, arrays):
        assert t.data.strides == a.strides and np.shares_memory(t.data, a) or a.size <= 1
    return extend.bind(prim, *tensors, **(params or {})).data


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
def test_every_primitive_matches_plain_impl(name, dtype, layout, rng, calls):
    prim = REGISTRY[name]
    arrays, params = operands(prim, rng, dtype, layout)
    with np.errstate(all="ignore"):
        want = prim.impl(np, *arrays, **params)
        calls.clear()
        got = run(prim, arrays, params)
    assert_identical(got, want)
    assert_ran(calls, name, want.size, layout in THREADED)


@pytest.mark.parametrize("name", ["sin", "mul", "where", "gelu"])
def test_sizes_around_threshold(name, rng, calls):
    prim = REGISTRY[name]
    for n, expect in ((LOW - 1, False), (LOW, True), (LOW + 1, True), (LOW + 3 * CHUNK + 7, True)):
        arrays, params = operands(prim, rng, "float32", "full", shape=(n,))
        want = prim.impl(np, *arrays, **params)
        calls.clear()
        got = run(prim, arrays, params)
        assert_identical(got, want)
        assert_ran(calls, name, n, expect)


def test_falls_back_when_it_should(rng, calls):
    x = rng.standard_normal(1000).astype(np.float32)
    add, sin = REGISTRY["add"], REGISTRY["sin"]
    # a single-element operand of higher rank broadcasts the output: plain call
    one = np.ones((1, 1), np.float32)
    assert_identical(run(add, [x, one]), x + one)
    # not elementwise
    s = REGISTRY["sum"]
    assert float(run(s, [x], {"axis": None, "keepdims": False})) == float(x.sum())
    # operands no Tensor holds, straight to the threaded forward:
    # a Python scalar operand (ops never pass one, but forward must not mis-handle it)
    assert_identical(parallel.forward(add, np, (x, 2.5), {}), x + 2.5)
    # an ndarray subclass
    m = x.view(np.recarray)
    assert parallel.forward(sin, np, (m,), {}).shape == x.shape
    # another array module (CuPy arrays never take the threaded path)
    fake_xp = SimpleNamespace(sin=np.sin)
    assert_identical(parallel.forward(sin, fake_xp, (x,), {}), np.sin(x))
    assert calls == [("add", 1000), ("add", 1000), ("sin", 1000), ("sin", 1000)]


def test_single_thread_configuration(rng, calls):
    x = rng.standard_normal(1000)
    with extend.cpu_thresholds(threads=1):
        assert_identical(run(REGISTRY["exp"], [x]), np.exp(x))
    assert_ran(calls, "exp", x.size, False)


def slow_on_main(x):
    if threading.current_thread() is threading.main_thread() and x.size > 1:
        threading.Event().wait(0.01)  # leave chunks for the worker


def test_workers_run_chunks_and_see_errstate(rng, declare):
    seen = []

    def impl(xp, x):
        seen.append((threading.current_thread() is threading.main_thread(),
                     np.geterr()["divide"]))
        slow_on_main(x)
        return x * 2

    x = rng.standard_normal(20 * CHUNK)
    with np.errstate(divide="raise"):
        got = run(declare(impl), [x])
    np.testing.assert_array_equal(got, x * 2)
    workers = [e for on_main, e in seen if not on_main]
    assert workers, "no chunk ran on a pool thread"
    assert set(workers) == {"raise"}


def test_exception_in_worker_propagates(rng, declare):
    def impl(xp, x):
        if threading.current_thread() is not threading.main_thread():
            raise ValueError("boom in a worker")
        slow_on_main(x)
        return x + 1

    x = rng.standard_normal(20 * CHUNK)
    with pytest.raises(ValueError, match="boom in a worker"):
        run(declare(impl), [x])
    # the pool still works afterwards
    assert_identical(run(REGISTRY["cos"], [x]), np.cos(x))


def test_exception_on_main_thread_propagates(rng, declare):
    def impl(xp, x):
        if x.size > 1 and threading.current_thread() is threading.main_thread():
            raise KeyError("boom on main")
        return x + 1

    with pytest.raises(KeyError, match="boom on main"):
        run(declare(impl), [rng.standard_normal(20 * CHUNK)])


def test_errstate_raise_still_raises(calls):
    x = np.zeros(10 * CHUNK)
    with np.errstate(divide="raise"), pytest.raises(FloatingPointError):
        run(REGISTRY["log"], [x])
    assert ("log", 1) in calls  # the threaded path's probe ran before a chunk raised


def chain(m, x):
    return m.square(m.tanh(m.cos(m.exp(m.sin(x) * 0.5) + 1.0) * 2.0))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_ops_use_it_and_gradients_are_unchanged(dtype, rng, calls):
    x_np = rng.standard_normal((31, 29)).astype(dtype)

    def run_ops():
        x = gt.Variable(x_np)
        with gt.GradientTape() as tape:
            y = gt.sum(chain(gt, x) + gt.where(x > 0, x, 2.0 * x) + gt.leaky_relu(x, 0.2))
        return y.numpy(), tape.gradient(y, x).numpy()

    y, g = run_ops()
    assert {"sin", "mul", "exp", "add", "cos", "tanh", "square", "where",
            "leaky_relu"} <= set(in_pieces(calls, x_np.size))
    calls.clear()
    with extend.cpu_thresholds(min_size=1 << 62):
        y0, g0 = run_ops()
    assert calls and in_pieces(calls, x_np.size) == []
    assert_identical(y, y0)
    assert_identical(g, g0)
    expect = chain(np, x_np)
    np.testing.assert_allclose(chain(gt, gt.tensor(x_np)).numpy(), expect,
                               rtol=1e-5 if dtype == "float32" else 1e-12)


def test_small_ops_stay_plain(calls):
    x = gt.tensor(np.linspace(-1, 1, 16, dtype=np.float32))
    gt.tanh(x)
    x * 2.0
    gt.clip(x, -0.5, 0.5)
    assert calls and in_pieces(calls, 16) == []


def test_cheap_ops_have_their_own_threshold(rng, calls):
    with extend.cpu_thresholds(cheap_min_size=4 * LOW):
        x, s = rng.standard_normal(2 * LOW), np.asarray(0.5)
        assert_identical(run(REGISTRY["mul"], [x, s]), x * s)
        assert_ran(calls, "mul", x.size, False)
        calls.clear()
        assert_identical(run(REGISTRY["exp"], [x]), np.exp(x))
        assert_ran(calls, "exp", x.size, True)
        calls.clear()
        x = rng.standard_normal(4 * LOW)
        assert_identical(run(REGISTRY["mul"], [x, s]), x * s)
        assert_ran(calls, "mul", x.size, True)


def test_one_chunk_stays_plain(rng, calls):
    with extend.cpu_thresholds(chunk=4 * LOW):
        x = rng.standard_normal(2 * LOW)
        assert_identical(run(REGISTRY["sin"], [x]), np.sin(x))
    assert_ran(calls, "sin", x.size, False)


# --------------------------------------------------------------------------- cpu_thresholds
def test_cpu_thresholds_set_and_restore(thresholds):
    block = thresholds["block"]  # read-only: the block of a fused backward kernel
    assert isinstance(block, int) and block >= 1
    budget = thresholds["cache_budget"]  # measured once per process unless set
    assert isinstance(budget, int) and budget >= 1
    assert thresholds == {"threads": 2, "chunk": CHUNK, "min_size": LOW, "cheap_min_size": LOW,
                          "cache_budget": budget, "block": block}
    with extend.cpu_thresholds(min_size=1000) as inner:
        assert inner == {**thresholds, "min_size": 1000}
        with extend.cpu_thresholds() as same:
            assert same == inner
    with pytest.raises(RuntimeError, match="inside"), extend.cpu_thresholds(threads=1, chunk=7):
        raise RuntimeError("inside")
    with extend.cpu_thresholds() as after:  # restored on exit, also after an error
        assert after == thresholds


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"threads": 0}, ValueError, "threads must be >= 1"),
    ({"chunk": -5}, ValueError, "chunk must be >= 1"),
    ({"min_size": 2.5}, TypeError, "min_size must be an int"),
    ({"cheap_min_size": True}, TypeError, "cheap_min_size must be an int"),
    ({"cache_budget": 0}, ValueError, "cache_budget must be >= 1"),
])
def test_cpu_thresholds_reject_bad_values(thresholds, kwargs, error, match):
    with pytest.raises(error, match=match), extend.cpu_thresholds(**kwargs):
        pytest.fail("the block must not run")  # pragma: no cover
    with extend.cpu_thresholds() as now:
        assert now == thresholds  # nothing was changed
