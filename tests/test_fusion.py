"""Fused backward kernels: fused equals unfused (``gt.config.fusion = False``) for every
elementwise primitive and for seeded random chains and DAGs of them, in float16/32/64, with
broadcasting, non-contiguous inputs and arrays large enough to be processed block by block;
higher-order gradients never go through fused kernels; ``GRADTAPE_FUSION=0`` is honored.

Kernels that ran are counted with ``extend.fusion_stats()``; ``extend.fusion_thresholds`` lets
runs of small arrays fuse."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import gradtape as gt
from gradtape import extend

# vmap/jvp transforms are not public yet: their counter lives in the autodiff state
from gradtape._src.autodiff.state import STATE

# kernel rendering (the backward graph, NumPy programs, CUDA text) has no public face
from gradtape._src.codegen import cuda as _codegen_cuda
from gradtape._src.codegen import graph as _codegen_graph
from gradtape._src.codegen import numpy_program as _codegen_numpy_program
from gradtape.extend import REGISTRY, bind

ROOT = Path(__file__).resolve().parents[1]
ELEMENTWISE = sorted(name for name, p in REGISTRY.items() if p.is_elementwise)
DTYPES = ("float16", "float32", "float64")
TOL = {"float16": dict(rtol=2e-2, atol=2e-2), "float32": dict(rtol=2e-5, atol=1e-5),
       "float64": dict(rtol=1e-12, atol=1e-12)}
UNARY = ["tanh", "exp", "sin", "cos", "sigmoid", "softplus", "arctan", "square", "abs", "relu",
         "silu", "gelu", "erf", "expm1", "sinh", "cosh", "neg", "sign"]


@pytest.fixture(autouse=True)
def default_thresholds():
    """These tests use small arrays; fuse runs of 3 or more members whatever their size (the
    default size thresholds, yielded, are tested in test_small_runs_stay_unfused_by_default)."""
    with extend.fusion_thresholds() as defaults, extend.fusion_thresholds(min_run_by_size=()):
        yield defaults


def fused_runs() -> int:
    return extend.fusion_stats()["runs"]


@contextlib.contextmanager
def fusion(on: bool):
    old = gt.config.fusion
    gt.config.fusion = on
    try:
        yield
    finally:
        gt.config.fusion = old


def gradients(fn, arrays, watch, on: bool, seed_shape_rng=None):
    """Gradients of ``sum(fn(*tensors) * w)`` (w fixed) for the watched positions."""
    with fusion(on):
        ts = [gt.tensor(a) for a in arrays]
        with gt.GradientTape() as tape:
            tape.watch([ts[i] for i in watch])
            out = fn(*ts)
            w = gt.tensor(np.linspace(-1.5, 1.0, out.size).reshape(out.shape).astype(out.dtype))
            loss = gt.sum(out * w)
        gs = tape.gradient(loss, [ts[i] for i in watch])
    return [None if g is None else g.numpy() for g in gs]


def assert_fused_matches(fn, arrays, watch, dtype, expect_fused=True):
    before = fused_runs()
    fused = gradients(fn, arrays, watch, True)
    used = fused_runs() - before
    plain = gradients(fn, arrays, watch, False)
    assert fused_runs() - before == used, "fusion ran although gt.config.fusion is False"
    if expect_fused:
        assert used > 0, "no fused kernel ran"
    for k, (a, b) in enumerate(zip(fused, plain)):
        assert (a is None) == (b is None), f"gradient {k}: fused {a is None}, unfused {b is None}"
        if a is None:
            continue
        assert a.shape == b.shape and a.dtype == b.dtype, (k, a.shape, b.shape, a.dtype, b.dtype)
        np.testing.assert_allclose(a.astype(np.float64), b.astype(np.float64),
                                   err_msg=f"gradient {k}", **TOL[dtype])


def sample(domain, rng, shape, dtype):
    if domain.kind == "bool":
        return rng.random(shape) > 0.5
    v = rng.uniform(domain.low, domain.high, shape)
    for p in domain.avoid:  # push points off kinks
        near = np.abs(v - p) < domain.margin
        v = np.where(near, p + np.where(v >= p, 1, -1) * 2 * domain.margin, v)
    return v.astype(dtype)


def primitive_case(name, rng, dtype, layout):
    """Arrays for ``name`` and a function chaining it between other elementwise ops."""
    prim = REGISTRY[name]
    shape = (5, 6)
    arrays = []
    for i, d in enumerate(prim.domains):
        s = shape
        if layout == "broadcast" and i == len(prim.domains) - 1 and len(prim.domains) > 1:
            s = (1, 6)
        a = sample(d, rng, s, dtype)
        if layout == "strided" and a.dtype != bool:
            base = np.empty((s[0], 2 * s[1]), a.dtype)
            base[:, ::2] = a
            a = base[:, ::2]
            assert not a.flags.c_contiguous
        arrays.append(a)
    params = {n: 0.3 for n in prim.param_names}
    watch = [i for i, a in enumerate(arrays) if a.dtype != bool]
    bias = (rng.uniform(0.5, 1.0, (6,)) if layout == "broadcast" else rng.uniform(0.5, 1.0, shape))

    def fn(*ts):
        ins = [t if t.dtype == bool else t * 1.0 for t in ts]  # an elementwise op before
        h = bind(prim, *ins, **params)
        return h * gt.tensor(bias.astype(h.dtype)) + h  # and fan-out after
    return fn, arrays, watch


@pytest.mark.parametrize("layout", ["plain", "broadcast", "strided"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ELEMENTWISE)
def test_every_primitive_fused_equals_unfused(name, dtype, layout, rng):
    fn, arrays, watch = primitive_case(name, rng, dtype, layout)
    assert_fused_matches(fn, arrays, watch, dtype)


def random_dag(seed, n_ops=10):
    """A seeded random DAG of elementwise ops over x (m, n) and b (n,): operands are picked
    among all earlier values, so intermediates fan out inside the run."""
    def fn(x, b):
        r = np.random.default_rng(seed)
        vals = [x, gt.tanh(x)]
        for _ in range(n_ops):
            kind = r.random()
            a = vals[r.integers(len(vals))]
            if kind < 0.45:
                v = getattr(gt, str(r.choice(UNARY)))(a)
            elif kind < 0.6:
                v = a * b
            elif kind < 0.7:
                v = gt.where(a > 0, a, b * 0.5)
            elif kind < 0.8:
                v = gt.maximum(a, vals[r.integers(len(vals))])
            elif kind < 0.9:
                v = a - vals[r.integers(len(vals))]
            else:
                v = gt.clip(a, -0.7, 0.7) + gt.leaky_relu(a, 0.2)
            vals.append(gt.tanh(v))  # keeps values bounded for exp/sinh/cosh
        return vals[-1] * vals[-2] + vals[-3]
    return fn


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", range(12))
def test_random_dags_fused_equals_unfused(backend, seed, dtype):
    rng = np.random.default_rng(100 + seed)
    x = rng.uniform(-1, 1, (4, 7)).astype(dtype)
    b = rng.uniform(0.5, 1.5, (7,)).astype(dtype)
    assert_fused_matches(random_dag(seed), [x, b], [0, 1], dtype)


@pytest.mark.parametrize("seed", range(6))
def test_random_dags_on_scalars(backend, seed):
    """0-d gradients come back from NumPy as immutable scalars: accumulation must not try to
    add into them in place (a regression: contributions were lost)."""
    rng = np.random.default_rng(200 + seed)
    x, b = rng.uniform(-1, 1), rng.uniform(0.5, 1.5)
    assert_fused_matches(random_dag(seed, n_ops=14), [np.float64(x), np.float64(b)], [0, 1],
                         "float64", expect_fused=False)


def test_mixed_partials_on_scalars():
    want = np.cos(0.3 * -1.2) - 0.3 * -1.2 * np.sin(0.3 * -1.2) + 2 * 0.3
    for on in (True, False):
        with fusion(on):
            x, y = gt.tensor(np.float64(0.3)), gt.tensor(np.float64(-1.2))
            with gt.GradientTape() as outer:
                outer.watch([x, y])
                with gt.GradientTape() as inner:
                    inner.watch([x, y])
                    f = gt.sin(x * y) + x * x * y
                gy = inner.gradient(f, y)
            np.testing.assert_allclose(float(outer.gradient(gy, x)), want, rtol=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_random_dags_with_non_contiguous_inputs(backend, seed):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (7, 4)).astype("float32").T  # transposed: F-ordered
    b = rng.uniform(0.5, 1.5, (14,)).astype("float32")[::2]
    assert_fused_matches(random_dag(seed), [x, b], [0, 1], "float32")


@pytest.mark.parametrize("case", ["flat", "transposed", "broadcast-rows", "bool-and-params"])
def test_large_arrays_run_block_by_block(backend, case):
    """More elements than one block: flat blocks, leading-axis blocks for strided and
    broadcast operands, bool scratch and scalar parameters."""
    rng = np.random.default_rng(7)
    with extend.cpu_thresholds() as cpu:
        n = cpu["block"] * 3 + 123
    if case == "flat":
        arrays = [rng.uniform(-1, 1, n).astype("float32"), rng.uniform(0.5, 1, 1).astype("float32")]
    elif case == "transposed":
        arrays = [rng.uniform(-1, 1, (700, 300)).astype("float32").T,
                  rng.uniform(0.5, 1, (300, 700)).astype("float32")]
    elif case == "broadcast-rows":
        arrays = [rng.uniform(-1, 1, (300, 700)).astype("float32"),
                  rng.uniform(0.5, 1, (700,)).astype("float32")]
    else:
        arrays = [rng.uniform(-1, 1, (70, 3000)).astype("float64"),
                  rng.uniform(0.5, 1, (70, 1)).astype("float64")]

    def fn(x, b):
        h = gt.cos(gt.sin(gt.exp(gt.tanh(x))))
        h = gt.where(x > 0, h * b, gt.leaky_relu(h - b, 0.05))
        return gt.elu(h * x + 1.0, 0.5) * 0.5
    assert_fused_matches(fn, arrays, [0, 1], arrays[0].dtype.name)


@pytest.mark.parametrize("shape", [(301, 517), (3 * 65536 + 77,)])
def test_programs_with_many_buffers_run_in_smaller_blocks(backend, shape):
    """A fused backward whose program keeps many values alive at once (the blocks of every
    buffer must stay in cache, so it runs in blocks smaller than the largest; the last block
    partial): the same gradients as unfused, rows and flat."""
    rng = np.random.default_rng(11)
    arrays = [rng.uniform(-1, 1, shape).astype("float32") for _ in range(4)]

    def fn(a, b, c, d):
        terms = [gt.tanh(a * b), gt.sin(b * c), gt.exp(c * d * 0.25), gt.cos(d * a), a * c,
                 b * d, gt.tanh(a + d), gt.sin(b - c)]
        out = terms[0]
        for t in terms[1:]:
            out = out * t + t * 0.5
        return out * (a + b + c + d)
    assert_fused_matches(fn, arrays, [0, 1, 2, 3], "float32")


def test_fused_run_is_one_kernel_for_the_benchmark_chain():
    x = gt.tensor(np.linspace(-1, 1, 50, dtype=np.float32))
    with gt.GradientTape() as tape:
        tape.watch(x)
        h = gt.cos(gt.sin(gt.exp(gt.tanh(x))))
        h = (h * x + 1.0)
        y = gt.sum(h * h * 0.5)
    before = extend.fusion_stats()
    tape.gradient(y, x)
    after = extend.fusion_stats()
    assert after["runs"] - before["runs"] == 1
    assert after["records"] - before["records"] == 8


def test_intermediate_targets_and_sources_are_materialized():
    """An intermediate that is a source or a target is a run boundary, never fused away."""
    rng = np.random.default_rng(0)
    xs = rng.uniform(-1, 1, (3, 4))
    results = []
    for on in (True, False):
        with fusion(on):
            x = gt.tensor(xs)
            with gt.GradientTape(persistent=True) as tape:
                tape.watch(x)
                a = gt.tanh(x)
                b = gt.exp(a) * a
                c = gt.sin(b)
                d = gt.sum(c * c)
            r1 = tape.gradient(d, [x, a, b])
            r2 = tape.gradient([d, b], x)          # b is both a target and inside the chain
            r3 = tape.gradient(c, x, output_gradients=gt.tensor(np.ones((3, 4))))
            r4 = tape.gradient(d, [x, a, b])       # a persistent tape gives the same again
        results.append([r.numpy() for r in (*r1, r2, r3, *r4)])
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    for a, b in zip(results[0][:3], results[0][-3:]):
        np.testing.assert_array_equal(a, b)


def test_in_place_accumulation_never_writes_shared_arrays():
    """add passes its upstream gradient through; later contributions must not be added into
    that shared array (nor into a user's output_gradients)."""
    rng = np.random.default_rng(1)
    xs = rng.uniform(-1, 1, (4, 5))
    seed = rng.uniform(-1, 1, (4, 5))
    seed_copy = seed.copy()
    out = []
    for on in (True, False):
        with fusion(on):
            x, y = gt.tensor(xs), gt.tensor(xs[::-1].copy())
            with gt.GradientTape() as tape:
                tape.watch([x, y])
                s = x + y                      # gy flows to x and y unchanged
                t = s + x                      # fan-out on x
                u = gt.tanh(t) + gt.sin(x) * y + gt.transpose(gt.transpose(x))
            g = tape.gradient(u, [x, y, s], output_gradients=gt.tensor(seed))
            out.append([a.numpy() for a in g if a is not None])
    np.testing.assert_array_equal(seed, seed_copy)
    for a, b in zip(*out):
        np.testing.assert_allclose(a, b, rtol=1e-12)


def test_mixed_dtypes_and_non_elementwise_ops_between_runs():
    rng = np.random.default_rng(2)
    x16 = rng.uniform(-1, 1, (6, 4)).astype("float16")
    w32 = rng.uniform(-1, 1, (4, 3)).astype("float32")

    def fn(x, w):
        h = gt.tanh(x) * x                         # float16 run
        z = gt.matmul(h.astype("float32"), w)      # breaks the run
        return gt.sigmoid(z) * gt.exp(z * 0.1)     # float32 run
    assert_fused_matches(fn, [x16, w32], [0, 1], "float16")


def test_second_derivatives_with_an_outer_tape_are_exact():
    xs = np.linspace(-1.5, 1.5, 11)
    for on in (True, False):
        with fusion(on):
            x = gt.tensor(xs)
            with gt.GradientTape() as outer:
                outer.watch(x)
                with gt.GradientTape() as inner:
                    inner.watch(x)
                    y = gt.sum(gt.tanh(x) * x)
                before = fused_runs()
                g = inner.gradient(y, x)          # recorded by outer: differentiable route
                assert fused_runs() == before, "a recorded backward went through a kernel"
            h = outer.gradient(g, x)              # first order over the recorded backward
            t = np.tanh(xs)
            np.testing.assert_allclose(g.numpy(), t + xs * (1 - t * t), rtol=1e-14)
            np.testing.assert_allclose(h.numpy(), 2 * (1 - t * t) - 2 * xs * t * (1 - t * t),
                                       rtol=1e-13, atol=1e-15)


def test_no_fusion_under_vmap_or_jvp_transforms():
    x = gt.tensor(np.linspace(-1, 1, 5))
    STATE.transforms += 1
    try:
        with gt.GradientTape() as tape:
            tape.watch(x)
            y = gt.sum(gt.sin(gt.tanh(x)))
        before = fused_runs()
        g = tape.gradient(y, x)
        assert fused_runs() == before
        assert isinstance(g, gt.Tensor)
    finally:
        STATE.transforms -= 1


@pytest.mark.filterwarnings("ignore:divide by zero", "ignore:invalid value")
def test_safe_zero_upstream_gradient_stays_zero():
    """sqrt'(0) is infinite: a zero upstream gradient must still give 0, fused or not."""
    for on in (True, False):
        with fusion(on):
            x = gt.tensor(np.array([0.0, 1.0, 4.0]))
            with gt.GradientTape() as tape:
                tape.watch(x)
                y = gt.sum(gt.sqrt(x) * gt.tensor(np.array([0.0, 1.0, 1.0])))
            g = tape.gradient(y, x).numpy()
        np.testing.assert_array_equal(g, [0.0, 0.5, 0.25])


def test_numpy_program_reuses_scratch_and_keeps_output_roots_alive():
    """Register allocation: an output whose root is read by another output's computation
    (sub: o_a = gy, o_b = -gy) must survive until it is stored."""
    rng = np.random.default_rng(5)
    a, c = rng.uniform(-1, 1, (2, 3, 4))

    def fn(a, c):
        s = (a * a * a - c) * 0.7
        return s * a + s * (a * a)
    assert_fused_matches(fn, [a, c], [0, 1], "float64")
    # The run's program, built from its members: leaves 0 gy, 1 a, 2 a*a, 3 the 0.7, 4 s,
    # 5 a*a (the second), 6 w (the loss weights); outputs 0 (a's gradient), 1 (c's).
    mul, sub, add = extend.get("mul"), extend.get("sub"), extend.get("add")
    members = [(mul, (1, 1), None, (), (("o", 0), ("o", 0))),     # t1 = a * a
               (mul, (2, 1), None, (), (("m", 0), ("o", 0))),     # t2 = t1 * a
               (sub, (None, None), None, (), (("m", 1), ("o", 1))),  # t3 = t2 - c
               (mul, (None, 3), None, (), (("m", 2), None)),      # s = t3 * 0.7
               (mul, (4, 1), None, (), (("m", 3), ("o", 0))),     # t4 = s * a
               (mul, (1, 1), None, (), (("o", 0), ("o", 0))),     # t5 = a * a
               (mul, (4, 5), None, (), (("m", 3), ("m", 5))),     # t6 = s * t5
               (add, (None, None), None, (), (("m", 4), ("m", 6))),  # out = t4 + t6
               (mul, (None, 6), None, (), (("m", 7), None))]      # out * w
    graph = _codegen_graph.backward_graph(members, ("f",) * 7, 0, 2)
    prog = _codegen_numpy_program.NumpyProgram(graph, (False, False), np.dtype(np.float64))
    assert 0 < prog.n_float <= 8
    w = np.linspace(-1.5, 1.0, a.size).reshape(a.shape)
    s = (a * a * a - c) * 0.7
    leaves = [np.ones_like(a), a, a * a, np.asarray(0.7), s, a * a, w]
    outs = [np.empty_like(a), np.empty_like(a)]
    _codegen_numpy_program.run_numpy(prog, leaves, [], outs, a.shape, np.dtype(np.float64))
    ds = 2.1 * a * a
    np.testing.assert_allclose(outs[0], w * (s + a * ds + 2 * a * s + a * a * ds), rtol=1e-12)
    np.testing.assert_allclose(outs[1], w * -0.7 * (a + a * a), rtol=1e-12)


def test_env_var_turns_fusion_off():
    code = ("import numpy as np, gradtape as gt\n"
            "from gradtape import extend\n"
            "assert gt.config.fusion is False, gt.config\n"
            "x = gt.tensor(np.ones(4))\n"
            "with gt.GradientTape() as t:\n"
            "    t.watch(x)\n"
            "    y = gt.sum(gt.tanh(gt.exp(x)))\n"
            "t.gradient(y, x)\n"
            "assert extend.fusion_stats()['runs'] == 0, extend.fusion_stats()\n"
            "print('ok')\n")
    env = dict(os.environ, GRADTAPE_FUSION="0", PYTHONPATH=str(ROOT))
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


def test_cuda_kernel_sources_for_the_cupy_route():
    """What the CuPy route would build, checked without a device: write and accumulate
    variants, typed float literals, float16 widened and narrowed, safe products."""
    member = (extend.get("div"), (1, 2), 3, (), (("o", 0), ("o", 1)))
    g = _codegen_graph.backward_graph([member], ("f", "f", "f", "f"), 0, 2)
    k = _codegen_cuda.render_cuda(g, ("float16",) * 4, "float16", (False, True))
    ins, outs = k.signature()
    assert outs == "float16 o0, float16 o1"
    assert "o0 = (float16)(" in k.body and "o1 = (float16)(((float)o1) + " in k.body \
        or "o1 = (float16)((float)o1 + " in k.body
    assert "0.0f" in k.body and "?" in k.body          # safe: gy == 0 ? 0 : gy * d
    assert "double" not in k.body
    k64 = _codegen_cuda.render_cuda(g, ("float64",) * 4, "float64", (False, False))
    assert "0.0f" not in k64.body and "double" in k64.body
    assert k.name != k64.name


def test_small_runs_stay_unfused_by_default(default_thresholds):
    """On small arrays a kernel costs more than the per-record route until the run is long:
    short chains are not fused, long ones are, and large arrays fuse from 3 members."""

    def runs_for(n: int, size: int) -> int:
        x = gt.tensor(np.linspace(-1, 1, size, dtype=np.float32))
        with gt.GradientTape() as tape:
            tape.watch(x)
            h = x
            for i in range(n):
                h = gt.tanh(h) if i % 2 else gt.sin(h)
        before = fused_runs()
        tape.gradient(h, x)
        return fused_runs() - before

    min_run, by_size = default_thresholds["min_run"], default_thresholds["min_run_by_size"]
    assert by_size, "no size thresholds by default"
    with extend.fusion_thresholds(**default_thresholds):
        small = by_size[0][1]
        assert runs_for(small - 1, 16) == 0
        assert runs_for(small, 16) == 1
        assert runs_for(min_run, 1 << 15) == 1
        assert runs_for(min_run - 1, 1 << 15) == 0


# --------------------------------------------------------------------------- fusion_thresholds
def test_fusion_thresholds_set_and_restore(default_thresholds):
    with extend.fusion_thresholds() as now:  # the autouse fixture's setting
        assert now == {"min_run": default_thresholds["min_run"], "min_run_by_size": ()}
    with extend.fusion_thresholds(min_run=5, min_run_by_size=[(10, 7), (100, 6)]) as inner:
        assert inner == {"min_run": 5, "min_run_by_size": ((10, 7), (100, 6))}
    with pytest.raises(RuntimeError, match="inside"), extend.fusion_thresholds(min_run=9):
        raise RuntimeError("inside")
    with extend.fusion_thresholds() as after:  # restored on exit, also after an error
        assert after == now


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"min_run": 0}, ValueError, "min_run must be >= 1"),
    ({"min_run": 2.0}, TypeError, "min_run must be an int"),
    ({"min_run_by_size": 5}, TypeError, "sequence of"),
    ({"min_run_by_size": [(10,)]}, TypeError, r"min_run_by_size\[0\] must be a \(limit, n\)"),
    ({"min_run_by_size": [(10, 0)]}, ValueError, r"min_run_by_size\[0\] n must be >= 1"),
    ({"min_run_by_size": [(-1, 3)]}, ValueError, r"limit must be >= 0"),
    ({"min_run_by_size": [(10, 5), (10, 3)]}, ValueError, "must increase"),
])
def test_fusion_thresholds_reject_bad_values(kwargs, error, match):
    with extend.fusion_thresholds() as before:
        pass
    with pytest.raises(error, match=match), extend.fusion_thresholds(**kwargs):
        pytest.fail("the block must not run")  # pragma: no cover
    with extend.fusion_thresholds() as now:
        assert now == before  # nothing was changed


def test_cache_budget_sizes_blocks_and_never_changes_values(backend):
    """``extend.cpu_thresholds(cache_budget=...)``: a fused kernel on one thread runs in blocks
    whose slices fit the budget (from 8192 elements up to ``block``); the smallest and the
    largest budget give bit-identical gradients, eagerly and from a ``gt.function``'s fused
    runs, and the previous budget comes back on exit."""
    rng = np.random.default_rng(11)
    x0 = rng.uniform(-1, 1, (300, 700)).astype("float32")
    b0 = rng.uniform(0.5, 1, (700,)).astype("float32")

    def step(x, b):
        with gt.GradientTape() as tape:
            tape.watch([x, b])
            h = gt.tanh(x * b + 1.0)
            y = gt.sum(h * h * x - gt.exp(-h) * b)
        return tape.gradient(y, [x, b])

    with extend.cpu_thresholds() as before:
        pass
    results = {}
    for budget in (1, 1 << 30):
        with extend.cpu_thresholds(threads=1, cache_budget=budget) as t:
            assert t["cache_budget"] == budget and t["block"] >= 8192
            x, b = gt.tensor(x0), gt.tensor(b0)
            eager = [g.numpy() for g in step(x, b)]
            f = gt.function(step)
            f(x, b)
            compiled = [g.numpy() for g in f(x, b)]
        results[budget] = eager + compiled
    with extend.cpu_thresholds() as after:
        assert after["cache_budget"] == before["cache_budget"]
    for small, large in zip(results[1], results[1 << 30]):
        assert small.dtype == large.dtype and np.array_equal(small, large)
    ref = step(gt.tensor(x0.astype("float64")), gt.tensor(b0.astype("float64")))
    for got, want in zip(results[1][:2], ref):
        np.testing.assert_allclose(got, want.numpy(), rtol=2e-4, atol=1e-3)


@pytest.mark.parametrize("value, error", [(0, ValueError), (-1, ValueError), (1.5, TypeError),
                                          ("4096", TypeError)])
def test_cache_budget_rejects_non_positive_and_non_int_values(value, error):
    with extend.cpu_thresholds() as before:
        pass
    with pytest.raises(error, match="cache_budget"):
        with extend.cpu_thresholds(cache_budget=value):
            pass
    with extend.cpu_thresholds() as after:
        assert after["cache_budget"] == before["cache_budget"]
