"""The generated CUDA text executed on the CPU: every kernel body gradtape hands to CuPy is
compiled as host C++ (``gradtape._src.codegen.hostcuda``: CuPy's ``ElementwiseKernel``
conventions reproduced, float16 as CuPy's storage class computed in float) and run on random
inputs, then compared with the NumPy program rendered from the same graph:

* the backward of every elementwise primitive, written and accumulated, with broadcast operands;
* fused runs planned on real tapes: the benchmark chain, a where/clip/maximum chain and seeded
  random chains over most primitives;
* every optimizer update kernel (SGD and its momentum/Nesterov/weight-decay variants, Adam with
  L2, AdamW), updating the parameter and its state in place;
* forward mode generates no kernel (its tangents are recorded gradtape ops), so there is none
  to run.

Tolerances: float64 within 4 ulp and float32 within 1e-6 relative, of the larger of each
element's magnitude and the array's largest (derivatives such as ``0.5 * (1 + erf(x / sqrt 2))`` cancel, so a
last-bit difference in a transcendental function shows as a larger relative one on a small
element); float16 exactly equal to the float32 NumPy program rounded once (the kernel computes
in float and narrows at the store) up to one float16 ulp, and within float16 precision of the
NumPy float16 program (which rounds after every operation). The host C library stands in for
CUDA's math library, and the host build makes no fused multiply-adds; both are within these
tolerances of the device.

The libraries are compiled once into a cache folder (``hostcuda.cache_dir()``), so a second
run costs no compiler call; the module skips, saying why, when no C++ compiler is present.
"""

from __future__ import annotations

import functools
import math
import zlib

import numpy as np
import pytest

import gradtape as gt
from gradtape import extend

# The generated CUDA text has no public face: kernels are rendered from the backward graphs of
# single records, of fused runs planned on real tapes (the engine's own steps) and from the
# optimizers' update rules, as tests/test_cuda_compile.py does.
from gradtape._src.autodiff import fusion as _fusion
from gradtape._src.autodiff.engine import forward_reach as _forward_reach
from gradtape._src.codegen import cuda as _cuda
from gradtape._src.codegen import graph as _graph
from gradtape._src.codegen import hostcuda
from gradtape._src.codegen import numpy_program as _numpy_program
from gradtape.extend import REGISTRY
from gradtape.optimizers import UpdateRule, adam_rule, sgd_rule

pytestmark = pytest.mark.skipif(hostcuda.compiler_unavailable_reason() is not None,
                                reason=f"host CUDA checks: {hostcuda.compiler_unavailable_reason()}")

DTYPES = ("float64", "float32", "float16")
ELEMENTWISE = sorted(name for name, p in REGISTRY.items() if p.is_elementwise)
PARAMS = {"negative_slope": 0.1, "alpha": 0.7}
SHAPE = (7, 33)


# --------------------------------------------------------------------------- comparisons
def assert_matches(got: np.ndarray, want: np.ndarray, dtype: str, what: str,
                   want16: np.ndarray | None = None, depth: int = 1) -> None:
    """``got`` (the host-compiled kernel) against ``want`` (the NumPy program in ``dtype``;
    for float16 the float32 program rounded once) and, for float16, ``want16`` (the NumPy
    program run in float16, ``depth`` operations deep)."""
    assert got.shape == want.shape and got.dtype == np.dtype(dtype), (got.shape, got.dtype, want.shape)
    g, w = got.astype(np.float64), want.astype(np.float64)
    nan_g, nan_w = np.isnan(g), np.isnan(w)
    assert np.array_equal(nan_g, nan_w), f"{what}: NaN at different places ({nan_g.sum()} vs {nan_w.sum()})"
    g, w = np.where(nan_g, 0.0, g), np.where(nan_w, 0.0, w)
    inf = np.isinf(w) | np.isinf(g)
    assert np.array_equal(g[inf], w[inf]), f"{what}: infinities differ"
    g, w = np.where(inf, 0.0, g), np.where(inf, 0.0, w)
    err = np.abs(g - w)
    if dtype == "float16":
        tiny = float(np.finfo(np.float16).smallest_subnormal)
        ulp = np.spacing(np.abs(w).astype(np.float16)).astype(np.float64)
        bad = err > ulp + tiny
        assert not bad.any(), (f"{what}: {bad.sum()} elements differ by more than one float16 ulp from "
                               f"the float32 program rounded once, e.g. {g[bad][:4]} vs {w[bad][:4]}")
        if want16 is not None:
            w16 = np.nan_to_num(want16.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
            scale = float(np.max(np.abs(w16), initial=0.0))
            tol = 4 * depth * float(np.finfo(np.float16).eps) * (np.abs(w16) + scale) + tiny
            bad = np.abs(g - w16) > tol
            assert not bad.any(), (f"{what}: {bad.sum()} elements outside float16 precision of the "
                                   f"float16 NumPy program, e.g. {g[bad][:4]} vs {w16[bad][:4]}")
        return
    rtol = 4 * float(np.finfo(np.float64).eps) if dtype == "float64" else 1e-6
    scale = float(np.max(np.abs(w), initial=0.0))
    bound = np.maximum(np.abs(w), scale)
    bad = err > rtol * bound
    if bad.any():
        worst = float(np.max(err / bound))
        pytest.fail(f"{what}: {bad.sum()} of {bad.size} elements beyond {rtol:.3g} relative "
                    f"(worst {worst:.3g}), e.g. {g[bad][:4]} vs {w[bad][:4]}")


def numpy_outputs(graph: _graph.Graph, leaves: list[np.ndarray], params: list, outs0: list[np.ndarray],
                  acc: tuple[bool, ...], dtype: str, shape: tuple[int, ...]) -> list[np.ndarray]:
    """The NumPy program of ``graph`` in ``dtype`` (outputs start from ``outs0`` where
    accumulated); an aliased output is its leaf, as the engine hands it over."""
    dt = np.dtype(dtype)
    prog = _numpy_program.NumpyProgram(graph, acc, dt)
    outs = [o.astype(dt) if a else np.empty(shape, dt) for o, a in zip(outs0, acc)]
    run_outs = [o if prog.alias[k] is None else None for k, o in enumerate(outs)]
    _numpy_program.run_numpy(prog, leaves, params, run_outs, shape, dt)
    return [np.broadcast_to(leaves[prog.alias[k]], shape) if prog.alias[k] is not None else o
            for k, o in enumerate(outs)]


def host_outputs(spec: _cuda.CudaKernel, leaves: list[np.ndarray], params: list,
                 outs0: list[np.ndarray], acc: tuple[bool, ...], shape: tuple[int, ...]) -> list[np.ndarray]:
    """Run ``spec`` as the engine calls the CuPy kernel: used leaves, then parameters (float32
    for a float16 kernel, as typed), then the outputs it writes."""
    kernel = hostcuda.gradtape_kernel(*spec.signature(), spec.body, spec.name)
    dt = np.dtype(spec.out_params[0][0]) if spec.out_params else None
    outs = [o.copy() if a else np.empty(shape, o.dtype) for o, a in zip(outs0, acc)]
    args = [leaves[i] for i in spec.leaves]
    args += [np.float64(params[i]) if dt == np.float64 else np.float32(params[i]) for i in spec.params]
    args += [outs[k] for k in spec.outputs]
    if spec.outputs:
        kernel(*args)
    return [np.broadcast_to(leaves[spec.alias[k]], shape) if spec.alias[k] is not None else o
            for k, o in enumerate(outs)]


def compare_run(graph: _graph.Graph, spec: _cuda.CudaKernel, leaves: list[np.ndarray], params: list,
                outs0: list[np.ndarray], acc: tuple[bool, ...], dtype: str, what: str, depth: int) -> None:
    shape = leaves[0].shape
    got = host_outputs(spec, leaves, params, outs0, acc, shape)
    if dtype == "float16":
        up = [a.astype(np.float32) if a.dtype == np.float16 else a for a in leaves]
        want = [w.astype(np.float16) for w in numpy_outputs(graph, up, params, outs0, acc, "float32", shape)]
        want16 = numpy_outputs(graph, leaves, params, outs0, acc, "float16", shape)
    else:
        want = numpy_outputs(graph, leaves, params, outs0, acc, dtype, shape)
        want16 = [None] * len(want)
    for k, (g, w, w16) in enumerate(zip(got, want, want16)):
        assert_matches(g, w, dtype, f"{what} output {k}", w16, depth)


# --------------------------------------------------------------------------- kernels
def draw(rng: np.random.Generator, domain, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    if domain.kind == "bool":
        return rng.random(shape) < 0.5
    x = rng.uniform(domain.low, domain.high, shape)
    for a in domain.avoid:
        near = np.abs(x - a) < domain.margin
        x[near] = a + np.where(x[near] >= a, domain.margin, -domain.margin)
    return x.astype(dtype)


def primitive_case(name: str, dtype: str, acc: bool):
    """The single-record backward of primitive ``name`` with every float input differentiated:
    ``(graph, spec, leaves, params, outs0, acc)``. Operands: ``gy`` full, the first input
    full, the others one broadcast row; the saved output ``y`` computed by the forward."""
    prim = REGISTRY[name]
    rng = np.random.default_rng(zlib.crc32(f"{name} {dtype} {acc}".encode()))
    n = len(prim.arg_names)
    kinds, dtypes = ["f"], [dtype]
    for d in prim.domains:
        kinds.append("b" if d.kind == "bool" else "f")
        dtypes.append("bool" if d.kind == "bool" else dtype)
    kinds.append("f")
    dtypes.append(dtype)
    targets, k = [], 0
    for i in range(n):
        if kinds[i + 1] == "b":
            targets.append(None)
        else:
            targets.append(("o", k))
            k += 1
    member = (prim, tuple(range(1, n + 1)), n + 1, tuple(range(len(prim.param_names))), tuple(targets))
    graph = _graph.backward_graph([member], tuple(kinds), len(prim.param_names), k)
    accs = (acc,) * k
    spec = _cuda.render_cuda(graph, tuple(dtypes), dtype, accs)
    xs = [draw(rng, d, SHAPE if i == 0 else SHAPE[1:], dtype) for i, d in enumerate(prim.domains)]
    params = [PARAMS[p] for p in prim.param_names]
    with np.errstate(all="ignore"):
        y = np.asarray(prim.impl(np, *xs, **dict(zip(prim.param_names, params)))).astype(dtype)
    gy = rng.uniform(-1.5, 1.5, SHAPE).astype(dtype)
    leaves = [gy, *(np.broadcast_to(x, SHAPE) for x in xs), np.broadcast_to(y, SHAPE)]
    outs0 = [rng.uniform(-1, 1, SHAPE).astype(dtype) for _ in range(k)]
    return graph, spec, leaves, params, outs0, accs


# Random chains: an op that may grow its input, then one that bounds it again, so values stay
# in every primitive's domain in every dtype. x: (n, m), b: (m,) broadcast, both watched.
GROW = {
    "exp": lambda h, x, b: gt.exp(h), "expm1": lambda h, x, b: gt.expm1(h),
    "square": lambda h, x, b: gt.square(h), "sinh": lambda h, x, b: gt.sinh(h),
    "cosh": lambda h, x, b: gt.cosh(h), "abs": lambda h, x, b: gt.abs(h),
    "relu": lambda h, x, b: gt.nn.relu(h), "leaky_relu": lambda h, x, b: gt.nn.leaky_relu(h, 0.1),
    "elu": lambda h, x, b: gt.nn.elu(h, 0.7), "silu": lambda h, x, b: gt.nn.silu(h),
    "gelu": lambda h, x, b: gt.nn.gelu(h), "gelu_tanh": lambda h, x, b: gt.nn.gelu(h, approximate="tanh"),
    "softplus": lambda h, x, b: gt.nn.softplus(h), "log1p": lambda h, x, b: gt.log1p(gt.square(h)),
    "log": lambda h, x, b: gt.log(1.0 + h * h), "sqrt": lambda h, x, b: gt.sqrt(1.0 + h * h),
    "rsqrt": lambda h, x, b: gt.rsqrt(1.0 + h * h), "mul": lambda h, x, b: h * b,
    "add": lambda h, x, b: h + b, "sub": lambda h, x, b: x - h, "div": lambda h, x, b: h / (1.0 + b * b),
    "maximum": lambda h, x, b: gt.maximum(h, b), "minimum": lambda h, x, b: gt.minimum(h, x),
    "where": lambda h, x, b: gt.where(x > 0.5, h, b * h), "clip": lambda h, x, b: gt.clip(h, -0.5, 0.8),
    "pow": lambda h, x, b: gt.pow(1.0 + h * h, b), "hypot": lambda h, x, b: gt.hypot(h, b),
    "arctan2": lambda h, x, b: gt.arctan2(h, b), "safe_mul": lambda h, x, b: h * x,
    "neg": lambda h, x, b: -h, "sign": lambda h, x, b: h * gt.sign(x - 0.5),
    "floor": lambda h, x, b: h + gt.floor(x), "erfc": lambda h, x, b: gt.erfc(h),
}
BOUND = {
    "tanh": gt.tanh, "sin": gt.sin, "cos": gt.cos, "sigmoid": gt.sigmoid, "arctan": gt.arctan,
    "erf": gt.erf, "tan": lambda h: gt.tan(0.5 * gt.tanh(h)), "arcsin": lambda h: gt.arcsin(0.9 * gt.tanh(h)),
    "arccos": lambda h: gt.arccos(0.9 * gt.tanh(h)),
}


def chain_functions() -> list[tuple[str, object]]:
    def bench(x, b):
        h = gt.cos(gt.sin(gt.exp(gt.tanh(x))))
        return ((h * x + 1.0) * (h * x + 1.0)) * 0.5

    def mixed(x, b):
        h = gt.where(x > 0.5, gt.sigmoid(x) / b, gt.nn.leaky_relu(x - b, 0.1))
        h = gt.clip(h, -0.5, 0.8) + gt.maximum(h, b) * gt.pow(x, b)
        return gt.nn.gelu(h, approximate="tanh") + gt.nn.elu(h, 0.7)

    def random_chain(seed: int):
        r = np.random.default_rng(seed)
        grow, bound = sorted(GROW), sorted(BOUND)
        steps = [(grow[r.integers(len(grow))], bound[r.integers(len(bound))]) for _ in range(5)]

        def f(x, b):
            h = x
            for g_name, b_name in steps:
                h = BOUND[b_name](GROW[g_name](h, x, b))
            return h
        return "random " + " ".join(f"{g}>{bd}" for g, bd in steps), f

    return [("bench", bench), ("mixed", mixed), *(random_chain(s) for s in range(16))]


def chain_cases(dtype: str) -> list[tuple]:
    """Every fused run of every chain, gathered on a real tape: ``(what, graph, spec, leaves,
    params, outs0, acc, depth)`` for the written and the accumulated variant."""
    rng = np.random.default_rng(7)
    x = gt.tensor(rng.uniform(0.2, 0.9, (6, 5)).astype(dtype))
    b = gt.tensor(rng.uniform(0.5, 1.5, (5,)).astype(dtype))
    cases = []
    with gt.use_backend("numpy"), extend.fusion_thresholds(min_run_by_size=()), np.errstate(all="ignore"):
        for label, fn in chain_functions():
            with gt.GradientTape() as tape:
                tape.watch([x, b])
                y = fn(x, b)
            # the engine's planning step on the tape's records and tensor ids (no public face)
            reach = _forward_reach(tape._records, {x._id, b._id})
            runs = _fusion.plan(tape._records, reach, {x._id, b._id, y._id}).runs
            for run in runs.values():
                g = rng.uniform(-1, 1, run.shape).astype(dtype)
                ga = run.gather(g, reach)
                if ga is None:
                    continue
                graph = ga.graph()
                n_out = len(ga.out_ids)
                for acc in ((False,) * n_out, (True,) * n_out):
                    spec = _cuda.render_cuda(graph, ga.dtype_names(), dtype, acc)
                    outs0 = [rng.uniform(-1, 1, run.shape).astype(dtype) for _ in range(n_out)]
                    leaves = [np.broadcast_to(a, run.shape) for a in ga.leaves]
                    cases.append((f"{label} (run of {len(run.members)})", graph, spec, leaves,
                                  list(ga.params), outs0, acc, len(run.members)))
    return cases


RULES = {
    **{f"sgd{'_m' if m else ''}{'_nesterov' if n else ''}{'_wd' if w else ''}": functools.partial(sgd_rule, m, n, w)
       for m in (False, True) for n in ((False, True) if m else (False,)) for w in (False, True)},
    "adam": functools.partial(adam_rule, False, False),
    "adam_l2": functools.partial(adam_rule, True, False),
    "adamw": functools.partial(adam_rule, True, True),
}
SCALARS = {"lr": 0.01, "momentum": 0.9, "weight_decay": 0.05, "beta1": 0.9, "one_minus_beta1": 0.1,
           "beta2": 0.999, "one_minus_beta2": 0.001, "step_size": 0.01 / (1 - 0.9 ** 3),
           "inv_sqrt_bc2": 1 / math.sqrt(1 - 0.999 ** 3), "eps": 1e-7, "decay": 1 - 0.01 * 0.1}


def rule_case(rule: UpdateRule, dtype: str, broadcast_grad: bool):
    """``(spec, arrays, scalars)``: the rule's CUDA kernel updating ``p`` and its state in
    place; the gradient a full array or one broadcast row."""
    rng = np.random.default_rng(len(rule.name) * 31 + len(dtype) + broadcast_grad)
    arrays = []
    for name in rule.arrays:
        if name == "g":
            a = rng.normal(size=SHAPE[1:] if broadcast_grad else SHAPE).astype(dtype)
            arrays.append(np.broadcast_to(a, SHAPE) if broadcast_grad else a)
        elif name == "v":
            arrays.append(rng.uniform(1e-3, 1e-1, SHAPE).astype(dtype))
        else:
            arrays.append(rng.normal(scale=0.3, size=SHAPE).astype(dtype))
    scalars = [SCALARS[s] for s in rule.scalars]
    leaf_dtypes = tuple(a.dtype.name for a in arrays)
    spec = _cuda.render_cuda(rule.graph(), leaf_dtypes, dtype, (False,) * len(rule.outputs), rule.inplace)
    return spec, arrays, scalars


@functools.cache
def compiled() -> bool:
    """Every kernel of this module, compiled together (a few compiler runs, cached on disk)."""
    specs = [primitive_case(n, d, a)[1] for d in DTYPES for n in ELEMENTWISE for a in (False, True)]
    specs += [c[2] for d in DTYPES for c in chain_cases(d)]
    specs += [rule_case(r(), d, False)[0] for r in RULES.values() for d in DTYPES]
    hostcuda.build([hostcuda.gradtape_kernel(*s.signature(), s.body, s.name) for s in specs if s.outputs])
    return True


# --------------------------------------------------------------------------- the harness itself
def test_float16_conversions_round_to_nearest_even():
    """The host float16 (CuPy's class over a host ``__half``): every one of the 65536 values
    widens exactly, and floats narrow as NumPy rounds them (ties to even, subnormals,
    overflow to inf, NaN kept)."""
    widen = hostcuda.HostKernel("uint16 h", "float32 f", "__half x; x.x = h; f = (float)float16(x)", "widen")
    bits = np.arange(65536, dtype=np.uint16)
    got = widen(bits)
    want = bits.view(np.float16).astype(np.float32)
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(got), nan)
    assert np.array_equal(got[~nan].view(np.uint32), want[~nan].view(np.uint32))  # -0.0 included
    narrow = hostcuda.HostKernel("float32 f", "float16 h", "h = f", "narrow")
    with np.errstate(all="ignore"):
        _narrowing_matches_numpy(narrow, want)


def _narrowing_matches_numpy(narrow: hostcuda.HostKernel, want: np.ndarray) -> None:
    rng = np.random.default_rng(1)
    mid = (want[:-1].astype(np.float64) + want[1:].astype(np.float64)) / 2  # the ties
    tests = np.concatenate([want, mid[np.isfinite(mid)].astype(np.float32),
                            np.nextafter(mid[np.isfinite(mid)].astype(np.float32), np.float32(0)),
                            rng.normal(scale=1e3, size=20000).astype(np.float32),
                            np.float32([65504, 65519.99, 65520, 1e6, -1e6, np.inf, -np.inf, 2.0 ** -25,
                                        2.0 ** -24 * 1.5, 2.0 ** -26, 0.0, -0.0])])
    got16 = narrow(tests)
    want16 = tests.astype(np.float16)
    nan = np.isnan(want16)
    assert np.array_equal(np.isnan(got16), nan)
    assert np.array_equal(got16[~nan].view(np.uint16), want16[~nan].view(np.uint16))


def test_elementwise_kernel_conventions():
    """CuPy's calling conventions: scalars converted to their parameter's type and broadcast,
    arrays broadcast together (zero and negative strides), outputs written by reference or
    allocated, typed parameters checked exactly, the loop index ``i``."""
    k = hostcuda.HostKernel("float32 x, float32 s", "float32 y", "y = x * s + (float)i", "axpi")
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(k(x, 2), x * 2 + np.arange(6).reshape(2, 3))
    np.testing.assert_array_equal(k(x[:, ::-1], np.float64(0.5)), x[:, ::-1] * 0.5 + np.arange(6).reshape(2, 3))
    out = np.full((2, 3), 7.0, np.float32)
    assert k(np.float32([1, 2, 3]), 1.0, out) is out  # a broadcast row, output passed in
    np.testing.assert_array_equal(out, np.float32([[1, 3, 5], [4, 6, 8]]))
    acc = hostcuda.HostKernel("float64 x", "float64 o", "o += x", "accumulate")
    o = np.ones((3, 2))
    acc(np.broadcast_to(np.float64(2.0), (3, 2)), o)
    np.testing.assert_array_equal(o, np.full((3, 2), 3.0))
    two = hostcuda.HostKernel("T x", "T a, T b", "a = x + x; b = x * x", "two")
    a, b = two(np.float64([1.0, 3.0]))
    np.testing.assert_array_equal(a, [2.0, 6.0])
    np.testing.assert_array_equal(b, [1.0, 9.0])
    with pytest.raises(TypeError, match="Type is mismatched"):
        k(x.astype(np.float64), 1.0)
    with pytest.raises(TypeError, match="Type is mismatched"):
        acc(np.ones(2), np.ones(2, np.float32))
    with pytest.raises(ValueError, match="Out shape is mismatched"):
        k(x, 1.0, np.empty((3,), np.float32))
    with pytest.raises(TypeError, match="Wrong number of arguments"):
        k(x)
    with pytest.raises(TypeError, match="Unsupported type"):
        k(x, [1.0])
    with pytest.raises(ValueError, match="Loop size is undecided"):
        k(1.0, 2.0)
    empty = k(np.empty((0, 3), np.float32), 1.0)
    assert empty.shape == (0, 3)


def test_compile_errors_quote_the_source():
    bad = hostcuda.HostKernel("float32 x", "float32 y", "y = undefined_function(x)", "bad")
    with pytest.raises(hostcuda.HostCompileError, match="undefined_function"):
        bad(np.ones(2, np.float32))


# --------------------------------------------------------------------------- generated kernels
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ELEMENTWISE)
def test_primitive_backward_kernels(name, dtype):
    """The fused backward of one record of each elementwise primitive, written and accumulated,
    equals the NumPy program."""
    assert compiled()
    for acc in (False, True):
        graph, spec, leaves, params, outs0, accs = primitive_case(name, dtype, acc)
        compare_run(graph, spec, leaves, params, outs0, accs, dtype, f"{name} {dtype} acc={acc}", 1)


@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_chain_kernels(dtype):
    """Fused runs of real tapes (the benchmark chain, a selecting chain and 16 seeded random
    chains) equal the NumPy program of the same run."""
    assert compiled()
    cases = chain_cases(dtype)
    assert len(cases) >= 2 * 18
    for what, graph, spec, leaves, params, outs0, acc, depth in cases:
        compare_run(graph, spec, leaves, params, outs0, acc, dtype, f"{what} acc={acc[0]}", depth)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rule_name", sorted(RULES))
def test_optimizer_update_kernels(rule_name, dtype):
    """Each optimizer's update kernel, run in place on the parameter and its state (gradient a
    full array, then a broadcast row), equals ``UpdateRule.apply`` on NumPy."""
    assert compiled()
    rule = RULES[rule_name]()
    for broadcast_grad in (False, True):
        spec, arrays, scalars = rule_case(rule, dtype, broadcast_grad)
        kernel = hostcuda.gradtape_kernel(*spec.signature(), spec.body, spec.name)
        host = [a.copy() if not broadcast_grad or name != "g" else a for name, a in zip(rule.arrays, arrays)]
        ptype = np.float64 if dtype == "float64" else np.float32
        outs = [host[i] for i in rule.inplace]
        kernel(*[host[i] for i in spec.leaves], *[ptype(scalars[i]) for i in spec.params],
               *[outs[k] for k in spec.outputs])
        if dtype == "float16":
            ref = [a.astype(np.float32) for a in arrays]
            rule.apply(ref, scalars)
            ref16 = [a.copy() if name != "g" else a for name, a in zip(rule.arrays, arrays)]
            rule.apply(ref16, scalars)
        else:
            ref = [a.copy() if name != "g" else a for name, a in zip(rule.arrays, arrays)]
            rule.apply(ref, scalars)
        for i in rule.inplace:
            want = ref[i].astype(dtype)
            want16 = ref16[i] if dtype == "float16" else None
            assert_matches(host[i], want, dtype, f"{rule_name} {dtype} {rule.arrays[i]}", want16,
                           len(rule.statements))


def test_kernels_are_cached_by_source(tmp_path, monkeypatch):
    """A kernel is compiled once: the library lands in the cache folder under its source's
    hash, and a fresh HostKernel with the same text reuses the loaded function."""
    monkeypatch.setenv("GRADTAPE_HOSTCUDA_CACHE", str(tmp_path))
    body = f"y = x * {np.random.default_rng().integers(1 << 30)}.0f"  # new text: not yet compiled
    k1 = hostcuda.HostKernel("float32 x", "float32 y", body, "cached")
    k1(np.ones(2, np.float32))
    libs = list(tmp_path.glob("*.so"))
    assert len(libs) == 1
    k2 = hostcuda.HostKernel("float32 x", "float32 y", body, "cached")
    k2(np.ones(2, np.float32))
    assert list(tmp_path.glob("*.so")) == libs
    assert k2._fns == k1._fns
