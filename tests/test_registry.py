"""Registry-driven tests: every primitive in ``gradtape.extend.REGISTRY`` is checked.

* elementwise primitives: inputs from their declared ``domains`` over several shapes
  (broadcasting pairs, 0-d, empty); forward against a NumPy float64 reference; gradients with
  ``check_grads`` (float64, second order); a float32 run whose output and gradient match the
  float64 ones and keep float32; each derivative expression against central differences of
  the forward itself.
* other differentiable primitives: ``check_grads`` on every case of their ``examples``, plus a
  float32 forward/dtype check.
* non-differentiable primitives: gradients through them are None (unconnected), and the
  "raise" explanation names them.
* completeness: the "Operations" section of docs/api.md lists exactly the public ops, each a
  ``gt.<name>`` function covered by one of the above; every registry primitive is covered by
  some test; every public name of ``gradtape``, ``gradtape.nn``, ``gradtape.optimizers``,
  ``gradtape.random``, ``gradtape.testing`` has its entry in docs/api.md (the creation
  functions ``gt.zeros`` ... in its "Creating tensors" section).
"""

from __future__ import annotations

import importlib
import inspect
import math
import pkgutil
import re
from pathlib import Path

import numpy as np
import pytest

import gradtape as gt
from gradtape.extend import REGISTRY, Domain, Primitive
from gradtape.testing import check_grads

ROOT = Path(__file__).resolve().parents[1]
API_DOC = ROOT / "docs" / "api.md"

with gt.use_backend("numpy") as NUMPY:  # the NumPy Backend object, for Primitive.array_vjp
    pass


def _leaves(tree) -> list:
    """The leaves of nested lists, tuples and dicts, in order."""
    if isinstance(tree, (list, tuple)):
        return [leaf for item in tree for leaf in _leaves(item)]
    if isinstance(tree, dict):
        return [leaf for key in tree for leaf in _leaves(tree[key])]
    return [tree]

# Import every gradtape module so that all primitives are registered (nn, transforms, ...);
# the runnable examples declare none and pull in heavy dependencies. A module that fails to
# import is reported by a test instead of breaking collection.
IMPORT_ERRORS: dict[str, str] = {}
for _mod in pkgutil.walk_packages(gt.__path__, "gradtape."):
    if _mod.name.startswith("gradtape.examples") or _mod.name.endswith("__main__"):
        continue
    try:
        importlib.import_module(_mod.name)
    except Exception as exc:  # noqa: BLE001 - reported by test_every_module_imports
        IMPORT_ERRORS[_mod.name] = f"{type(exc).__name__}: {exc}"

# Snapshot taken at import, so primitives that other test files declare temporarily do not
# leak in.
PRIMS: dict[str, Primitive] = dict(REGISTRY)
ELEMENTWISE = sorted(n for n, p in PRIMS.items() if p.is_elementwise)
NONDIFF = sorted(n for n, p in PRIMS.items() if p.nondiff and not p.is_elementwise)
WITH_EXAMPLES = sorted(n for n, p in PRIMS.items()
                       if p.examples is not None and not p.is_elementwise and not p.nondiff)
WITH_RULE = sorted(n for n, p in PRIMS.items() if p.rule is not None)


# --------------------------------------------------------------------------- references
def _erf(x: np.ndarray) -> np.ndarray:
    return np.vectorize(math.erf, otypes=[np.float64])(x)


def _gelu_tanh(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


# Elementwise primitive -> (NumPy float64 reference written independently of the impl,
# keyword parameters to test with). The references take the parameters as keywords too.
REFERENCES: dict[str, tuple] = {
    "add": (np.add, {}),
    "sub": (np.subtract, {}),
    "mul": (np.multiply, {}),
    "div": (np.divide, {}),
    "neg": (np.negative, {}),
    "pow": (np.power, {}),
    "exp": (np.exp, {}),
    "log": (np.log, {}),
    "log1p": (np.log1p, {}),
    "expm1": (np.expm1, {}),
    "sqrt": (np.sqrt, {}),
    "rsqrt": (lambda x: 1.0 / np.sqrt(x), {}),
    "square": (np.square, {}),
    "abs": (np.abs, {}),
    "sign": (np.sign, {}),
    "sin": (np.sin, {}),
    "cos": (np.cos, {}),
    "tan": (np.tan, {}),
    "tanh": (np.tanh, {}),
    "sinh": (np.sinh, {}),
    "cosh": (np.cosh, {}),
    "arcsin": (np.arcsin, {}),
    "arccos": (np.arccos, {}),
    "arctan": (np.arctan, {}),
    "sigmoid": (lambda x: 1.0 / (1.0 + np.exp(-x)), {}),
    "relu": (lambda x: np.where(x > 0, x, 0.0), {}),
    "leaky_relu": (lambda x, negative_slope: np.where(x > 0, x, negative_slope * x),
                   {"negative_slope": 0.1}),
    "elu": (lambda x, alpha: np.where(x > 0, x, alpha * (np.exp(x) - 1)), {"alpha": 1.3}),
    "gelu": (lambda x: 0.5 * x * (1 + _erf(x / math.sqrt(2))), {}),
    "gelu_tanh": (_gelu_tanh, {}),
    "softplus": (lambda x: np.log1p(np.exp(x)), {}),
    "silu": (lambda x: x / (1.0 + np.exp(-x)), {}),
    "erf": (_erf, {}),
    "maximum": (np.maximum, {}),
    "minimum": (np.minimum, {}),
    "clip": (lambda x, lo, hi: np.minimum(np.maximum(x, lo), hi), {}),
    "where": (np.where, {}),
    "safe_mul": (lambda a, b: a * b, {}),
    "erfc": (lambda x: np.vectorize(math.erfc, otypes=[np.float64])(x), {}),
    "floor": (np.floor, {}),
    "ceil": (np.ceil, {}),
    "round": (np.round, {}),
    "trunc": (np.trunc, {}),
    "arctan2": (np.arctan2, {}),
    "hypot": (lambda a, b: np.sqrt(a * a + b * b), {}),
    "floor_divide": (lambda a, b: np.floor(a / b), {}),
}

# Binary ops with a kink where the inputs are equal: their inputs are drawn from disjoint grids.
SEPARATED = {"maximum", "minimum"}


def _sample(dom: Domain, shape: tuple, rng: np.random.Generator, grid_offset: float | None
            ) -> np.ndarray:
    if dom.kind == "bool":
        return rng.random(shape) < 0.5
    if dom.low == dom.high:
        return np.full(shape, float(dom.low))
    x = rng.uniform(dom.low, dom.high, shape)
    if grid_offset is not None:  # x in 0.2 Z + offset: inputs with different offsets never tie
        x = np.round(x / 0.2) * 0.2 + grid_offset
    for p in dom.avoid:
        close = np.abs(x - p) < dom.margin
        side = np.where(x >= p, 1.0, -1.0)
        x = np.where(close, p + side * (dom.margin + np.abs(x - p)), x)
    return x


def _shape_sets(n: int) -> list[tuple[str, list[tuple]]]:
    if n == 1:
        return [("vector", [(3,)]), ("matrix", [(2, 3)]), ("0d", [()]), ("empty", [(0,)]),
                ("empty2d", [(2, 0)])]
    cyc = [(2, 1), (1, 3), (3,)]
    return [
        ("same", [(2, 3)] * n),
        ("0d", [()] * n),
        ("empty", [(0,)] * n),
        ("row", [(2, 3)] + [(3,)] * (n - 1)),
        ("outer", [cyc[i % 3] for i in range(n)]),
        ("scalar_first", [()] + [(2, 3)] * (n - 1)),
        ("scalar_last", [(2, 3)] * (n - 1) + [()]),
        ("empty_bcast", [(0, 3)] + [(1, 3)] * (n - 1)),
    ]


def _inputs(name: str, shapes: list[tuple], rng: np.random.Generator) -> list[np.ndarray]:
    prim = PRIMS[name]
    sep = name in SEPARATED
    return [_sample(dom, shp, rng, 0.1 * i if sep else None)
            for i, (dom, shp) in enumerate(zip(prim.domains, shapes))]


def _as_tensors(arrays: list, dtype: type | None = None) -> list[gt.Tensor]:
    out = []
    for a in arrays:
        if isinstance(a, gt.Tensor):
            out.append(a)
        elif dtype is not None and a.dtype.kind == "f":
            out.append(gt.tensor(a.astype(dtype)))
        else:
            out.append(gt.tensor(a))
    return out


def _elementwise_fn(name: str):
    prim = PRIMS[name]
    params = REFERENCES[name][1] if name in REFERENCES else {}

    def fn(*xs):
        return prim(*_as_tensors(list(xs)), **params)

    fn.__name__ = name
    return fn


ELEMENTWISE_CASES = [pytest.param(name, label, shapes, id=f"{name}-{label}")
                     for name in ELEMENTWISE
                     for label, shapes in _shape_sets(len(PRIMS[name].arg_names))]


def _seed(*parts: str) -> int:
    return sum(ord(c) * (i + 1) for i, c in enumerate("/".join(parts))) % (2 ** 31)


# --------------------------------------------------------------------------- elementwise
def test_every_module_imports():
    assert not IMPORT_ERRORS, f"gradtape modules failed to import: {IMPORT_ERRORS}"


@pytest.mark.parametrize("name", ELEMENTWISE)
def test_elementwise_has_reference_and_domains(name):
    prim = PRIMS[name]
    assert name in REFERENCES, (f"elementwise primitive {name!r} has no NumPy reference: add one "
                                "to REFERENCES in tests/test_registry.py")
    assert len(prim.domains) == len(prim.arg_names), f"{name}: one Domain per input expected"
    assert len(prim.derivatives) == len(prim.arg_names)
    assert set(REFERENCES[name][1]) == set(prim.param_names), (
        f"{name}: REFERENCES parameters {sorted(REFERENCES[name][1])} differ from the primitive's "
        f"{sorted(prim.param_names)}")


@pytest.mark.parametrize(("name", "label", "shapes"), ELEMENTWISE_CASES)
def test_elementwise_forward_matches_reference(name, label, shapes):
    if name not in REFERENCES:
        pytest.fail(f"no reference for {name!r}")
    rng = np.random.default_rng(_seed(name, label))
    xs = _inputs(name, shapes, rng)
    ref, params = REFERENCES[name]
    expected = np.asarray(ref(*xs, **params), dtype=np.float64)
    out = PRIMS[name](*_as_tensors(xs), **params)
    assert out.dtype == np.float64, f"{name}: float64 inputs gave {out.dtype}"
    assert out.shape == np.broadcast_shapes(*shapes)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-10, atol=1e-12,
                               err_msg=f"{name} forward ({label})")


@pytest.mark.parametrize(("name", "label", "shapes"), ELEMENTWISE_CASES)
def test_elementwise_gradients_float64(name, label, shapes):
    rng = np.random.default_rng(_seed(name, label))
    xs = _inputs(name, shapes, rng)
    check_grads(_elementwise_fn(name), xs, order=2, seed=_seed(name, label, "g"))


def _float_grads(fn, xs: list, u: np.ndarray, dtype: type) -> tuple[np.ndarray, list]:
    ts = _as_tensors(xs, dtype)
    srcs = [t for t in ts if t.dtype.kind == "f"]
    with gt.GradientTape() as tape:
        tape.watch(srcs)
        y = fn(*ts)
    grads = tape.gradient(y, srcs, output_gradients=gt.tensor(u.astype(y.dtype)))
    return y, list(zip(srcs, grads))


@pytest.mark.parametrize(("name", "label", "shapes"), ELEMENTWISE_CASES)
def test_elementwise_float32_matches_float64(name, label, shapes):
    rng = np.random.default_rng(_seed(name, label))
    xs = _inputs(name, shapes, rng)
    xs = [x.astype(np.float32).astype(np.float64) if x.dtype.kind == "f" else x for x in xs]
    fn = _elementwise_fn(name)
    u = rng.standard_normal(np.broadcast_shapes(*shapes))
    y64, g64 = _float_grads(fn, xs, u, np.float64)
    y32, g32 = _float_grads(fn, xs, u, np.float32)
    assert y32.dtype == np.float32, f"{name}: float32 inputs gave a {y32.dtype} output"
    scale = 1 + float(np.max(np.abs(y64.numpy()), initial=0))
    np.testing.assert_allclose(y32.numpy(), y64.numpy(), rtol=1e-5, atol=1e-6 * scale,
                               err_msg=f"{name} float32 forward ({label})")
    for (s32, a), (_, b) in zip(g32, g64):
        assert a is not None and b is not None, f"{name}: missing gradient ({label})"
        assert a.dtype == np.float32, f"{name}: gradient of a float32 input is {a.dtype}"
        assert a.shape == s32.shape
        scale = 1 + float(np.max(np.abs(b.numpy()), initial=0))
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-5 * scale,
                                   err_msg=f"{name} float32 gradient ({label})")


def _gradients(fn, xs: list, u: np.ndarray, fusion: bool) -> list:
    saved = gt.config.fusion
    gt.config.fusion = fusion
    try:
        ts = _as_tensors(xs)
        srcs = [t for t in ts if t.dtype.kind == "f"]
        with gt.GradientTape() as tape:
            tape.watch(srcs)
            y = fn(*ts)
        return [g.numpy() for g in tape.gradient(y, srcs, output_gradients=gt.tensor(u),
                                                 unconnected_gradients="zero")]
    finally:
        gt.config.fusion = saved


FUSION_CASES = [c for c in ELEMENTWISE_CASES if c.values[1] in ("same", "row", "outer", "0d")]


@pytest.mark.parametrize(("name", "label", "shapes"), FUSION_CASES)
def test_elementwise_fused_equals_unfused(name, label, shapes):
    """The primitive inside a chain of elementwise ops (a pre-op on each input, fan-out after),
    so that a fused backward has something to fuse: same gradients with fusion on and off."""
    prim = PRIMS[name]
    params = REFERENCES.get(name, (None, {}))[1]

    def chain(*ts):
        pre = [t * 1.0 if t.dtype.kind == "f" else t for t in ts]
        out = prim(*pre, **params)
        return out * out + gt.sin(out)

    rng = np.random.default_rng(_seed(name, label, "fusion"))
    xs = _inputs(name, shapes, rng)
    u = rng.standard_normal(np.broadcast_shapes(*shapes))
    fused = _gradients(chain, xs, u, True)
    plain = _gradients(chain, xs, u, False)
    for k, (a, b) in enumerate(zip(fused, plain)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14,
                                   err_msg=f"{name} ({label}): input {k}, fused vs unfused")


@pytest.mark.parametrize("case", ["standardize", "softplus_mix", "shared_input"])
def test_mixed_chains_fused_equals_unfused(case):
    """Elementwise runs interleaved with reductions and broadcasting."""
    chains = {
        "standardize": lambda x: (x - gt.mean(x, axis=-1, keepdims=True))
        / gt.sqrt(gt.var(x, axis=-1, keepdims=True) + 1e-5),
        "softplus_mix": lambda x: gt.softplus(x) * gt.sum(gt.tanh(x) ** 2.0, axis=0) - x / 3.0,
        "shared_input": lambda x: gt.exp(-x * x) + gt.sigmoid(x) * x + gt.relu(x - 0.1),
    }
    rng = np.random.default_rng(_seed(case))
    x = rng.standard_normal((3, 5))
    fn = chains[case]
    u = rng.standard_normal((3, 5))
    (a,) = _gradients(fn, [x], u, True)
    (b,) = _gradients(fn, [x], u, False)
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14, err_msg=f"{case}: fused vs unfused")
    check_grads(fn, (x,), order=1)


@pytest.mark.parametrize("name", ELEMENTWISE)
def test_derivative_expressions_match_forward_differences(name):
    """Each ``d=`` expression, rendered on NumPy arrays (``array_vjp`` with a unit upstream
    gradient), against central differences of ``impl``."""
    prim = PRIMS[name]
    if name not in REFERENCES:
        pytest.fail(f"no reference for {name!r}")
    params = REFERENCES[name][1]
    rng = np.random.default_rng(_seed(name, "expr"))
    xs = _inputs(name, [(7,)] * len(prim.arg_names), rng)
    y = prim.impl(np, *xs, **params)
    h = 1e-6
    for i, (arg, expr) in enumerate(zip(prim.arg_names, prim.derivatives)):
        if xs[i].dtype.kind != "f":
            continue
        plus = list(xs)
        minus = list(xs)
        plus[i] = xs[i] + h
        minus[i] = xs[i] - h
        numeric = (prim.impl(np, *plus, **params) - prim.impl(np, *minus, **params)) / (2 * h)
        d = prim.array_vjp(i, NUMPY)(np.ones(numeric.shape), *xs, y,
                                     *[params[k] for k in prim.param_names])
        d = np.broadcast_to(d, numeric.shape)
        np.testing.assert_allclose(d, numeric, rtol=1e-6, atol=1e-7,
                                   err_msg=f"{name}: d/d{arg} = {expr.source!r}")


@pytest.mark.parametrize("name", ELEMENTWISE)
def test_public_elementwise_function_binds_its_primitive(name):
    """``gt.<name>`` (when public) computes what the primitive computes, with its defaults."""
    fn = getattr(gt, name, None)
    if fn is None:
        api = {"gelu_tanh": "gelu(approximate='tanh')", "safe_mul": "internal"}
        assert name in api, f"elementwise primitive {name!r} has no public gt.{name}"
        return
    prim = PRIMS[name]
    sig = inspect.signature(fn)
    params = {k: sig.parameters[k].default for k in prim.param_names}
    rng = np.random.default_rng(_seed(name, "public"))
    xs = _as_tensors(_inputs(name, [(4,)] * len(prim.arg_names), rng))
    np.testing.assert_array_equal(fn(*xs).numpy(), prim(*xs, **params).numpy())


def test_gelu_tanh_is_public_through_approximate():
    x = gt.tensor(np.linspace(-3, 3, 7))
    np.testing.assert_array_equal(gt.gelu(x, approximate="tanh").numpy(),
                                  PRIMS["gelu_tanh"](x).numpy())


# --------------------------------------------------------------------------- examples
def _examples(name: str) -> list:
    rng = np.random.default_rng(_seed(name, "examples"))
    cases = PRIMS[name].examples(rng)
    assert cases, f"{name}: examples() returned no case"
    return cases


def _case_id(fn, i: int) -> str:
    return f"{getattr(fn, '__name__', 'fn')}#{i}"


@pytest.mark.parametrize("name", WITH_EXAMPLES)
def test_examples_gradients_float64(name):
    for i, (fn, args, kwargs) in enumerate(_examples(name)):
        try:
            check_grads(fn, args, kwargs, order=2, seed=i)
        except AssertionError as exc:
            raise AssertionError(f"primitive {name!r}, example {_case_id(fn, i)}: {exc}") from None


def test_rules_have_examples():
    assert WITH_RULE, "no primitive declares a two-rendering VJP rule"
    missing = [n for n in WITH_RULE if PRIMS[n].examples is None]
    assert not missing, f"primitives with a rule but no examples to test it on: {missing}"


@pytest.mark.parametrize("name", WITH_RULE)
def test_rule_on_arrays_matches_rule_on_tensors(name):
    """A VJP rule rendered on backend arrays (the first-order route) equals its gradtape-op
    rendering (the differentiable one) on every example, for every combination of which
    inputs need a gradient. One persistent tape is differentiated twice with the same upstream
    gradients: plainly (first order: the array rendering) and inside a recording tape (the
    backward is then recorded: the gradtape-op rendering)."""
    prim = PRIMS[name]
    rng = np.random.default_rng(_seed(name, "array_rule"))
    checked = 0
    cases = [(i, fn, args, kwargs, dt) for i, (fn, args, kwargs) in enumerate(_examples(name))
             for dt in (np.float64, np.float32)]  # float32 too: astype(float64) records there
    for i, fn, args, kwargs, dt in cases:
        a64 = _cast_args(args, dt)
        tol = 1e-12 if dt == np.float64 else 1e-5
        floats = [t for t in _leaves(list(a64)) if isinstance(t, gt.Tensor) and t.dtype == dt]
        for drop in [None, *range(len(floats))]:  # all watched, then one left out at a time
            watched = [t for k, t in enumerate(floats) if k != drop]
            if not watched:
                continue
            with gt.GradientTape(persistent=True) as tape:
                tape.watch(watched)
                outs = _float_outputs(fn(*a64, **(kwargs or {})))
            if prim.name not in tape.recorded_ops() or not outs:
                continue
            us = [gt.tensor(rng.standard_normal(o.shape).astype(o.dtype)) for o in outs]
            fast = tape.gradient(outs, watched, output_gradients=us)
            with gt.GradientTape():  # a recording tape: the backward runs in gradtape ops
                slow = tape.gradient(outs, watched, output_gradients=us)
            for k, (f, sl) in enumerate(zip(fast, slow)):
                where = (f"primitive {name!r}, example {_case_id(fn, i)}, {np.dtype(dt)}, "
                         f"watched source {k}")
                assert (f is None) == (sl is None), where
                if f is None:
                    continue
                assert f.dtype == sl.dtype and f.shape == sl.shape, where
                np.testing.assert_allclose(f.numpy(), sl.numpy(), rtol=tol, atol=tol, err_msg=where)
                checked += 1
    assert checked, f"{name}: no example exercised the array rule"


def _cast_args(args: tuple, dtype: type) -> tuple:
    def conv(a):
        if isinstance(a, (np.ndarray, np.floating)) and np.asarray(a).dtype.kind == "f":
            return gt.tensor(np.asarray(a, dtype=dtype))
        return a

    return tuple([conv(e) for e in a] if isinstance(a, list) else
                 tuple(conv(e) for e in a) if isinstance(a, tuple) else conv(a) for a in args)


def _float_outputs(out) -> list:
    leaves = _leaves(out)
    return [t for t in leaves if isinstance(t, gt.Tensor) and t.dtype.kind == "f"]


@pytest.mark.parametrize("name", WITH_EXAMPLES)
def test_examples_float32_forward_and_dtype(name):
    for i, (fn, args, kwargs) in enumerate(_examples(name)):
        where = f"primitive {name!r}, example {_case_id(fn, i)}"
        a64 = _cast_args(args, np.float64)
        a32 = _cast_args(args, np.float32)
        outs64 = _float_outputs(fn(*a64, **(kwargs or {})))
        srcs = [t for t in _leaves(list(a32))
                if isinstance(t, gt.Tensor) and t.dtype == np.float32]
        with gt.GradientTape() as tape:
            tape.watch(srcs)
            outs32 = _float_outputs(fn(*a32, **(kwargs or {})))
        assert len(outs32) == len(outs64)
        for o32, o64 in zip(outs32, outs64):
            if name != "astype":  # astype's output dtype is its parameter
                assert o32.dtype == np.float32, f"{where}: float32 inputs gave a {o32.dtype} output"
            scale = 1 + float(np.max(np.abs(o64.numpy()), initial=0))
            np.testing.assert_allclose(o32.numpy(), o64.numpy(), rtol=1e-4, atol=1e-5 * scale,
                                       err_msg=where)
        if srcs and outs32:
            grads = tape.gradient(outs32, srcs)
            for s, g in zip(srcs, grads):
                if g is not None:
                    assert g.dtype == np.float32, f"{where}: gradient dtype {g.dtype}"
                    assert g.shape == s.shape, f"{where}: gradient shape {g.shape} != {s.shape}"


# --------------------------------------------------------------------------- non-differentiable
def _arity(prim: Primitive) -> int:
    ps = list(inspect.signature(prim.impl).parameters.values())[1:]
    return sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in ps) or 1


@pytest.mark.parametrize("name", NONDIFF)
def test_nondiff_gives_no_gradient(name):
    prim = PRIMS[name]
    fn = getattr(gt, name, None) or prim
    x = gt.tensor(np.array([[0.5, -1.0, 2.0], [1.5, 0.25, -0.5]]))
    for mode in ("none", "raise"):
        with gt.GradientTape() as tape:
            tape.watch(x)
            # (the bitwise ops take integer or bool operands: a comparison of x leads there)
            arg = gt.greater(x, 0.3) if name.startswith("bitwise") else x
            out = fn(*[arg] * _arity(prim))
            target = gt.astype(out, np.float64) if out.dtype.kind != "f" else out
            target = gt.sum(target * target)
        if mode == "none":
            assert tape.gradient(target, x) is None, f"{name}: a gradient flowed through it"
        else:
            # (a bitwise op's input is cut by the comparison first, which the message names)
            with pytest.raises(gt.UnconnectedGradientError,
                               match="greater" if name.startswith("bitwise") else name):
                tape.gradient(target, x, unconnected_gradients="raise")


def test_nondiff_output_of_comparison_is_bool():
    x = gt.tensor(np.array([1.0, 2.0]))
    for name in ("less", "less_equal", "greater", "greater_equal", "equal", "not_equal"):
        assert getattr(gt, name)(x, 1.5).dtype == np.bool_


# --------------------------------------------------------------------------- internal primitives
def test_scatter_add_accumulates_and_is_differentiable():
    """scatter_add is getitem's VJP (internal): it accumulates repeated indices, and its own
    gradient (a gather) is checked to second order through getitem."""
    p = PRIMS["scatter_add"]
    idx = np.array([0, 2, 2, 1, 2])
    g = gt.tensor(np.arange(1.0, 6.0))
    out = p(g, index=idx, shape=(4,), advanced=True)
    np.testing.assert_array_equal(out.numpy(), [1.0, 4.0, 2.0 + 3.0 + 5.0, 0.0])
    check_grads(lambda g: p(g, index=idx, shape=(4,), advanced=True) ** 2, (np.arange(1.0, 6.0),))
    # basic (non-advanced) index: plain assignment into zeros
    out = p(gt.tensor(np.ones((2, 2))), index=(slice(1, 3), slice(None)), shape=(3, 2),
            advanced=False)
    np.testing.assert_array_equal(out.numpy(), [[0, 0], [1, 1], [1, 1]])
    # through the public indexing op: x[idx] with repeats, to second order
    check_grads(lambda x: gt.sin(x[idx]) * x[idx], (np.array([0.1, 0.5, -0.7]),))


def test_astype_gradient_is_cast_back():
    """astype: the gradient comes back in the source's dtype (float32 <-> float64)."""
    x32 = gt.tensor(np.array([1.0, 2.0], dtype=np.float32))
    with gt.GradientTape() as tape:
        tape.watch(x32)
        y = gt.astype(x32, np.float64) * gt.tensor(np.array([3.0, 4.0]))
    g = tape.gradient(y, x32)
    assert y.dtype == np.float64 and g.dtype == np.float32
    np.testing.assert_array_equal(g.numpy(), [3.0, 4.0])
    check_grads(lambda x: gt.astype(x, np.float64) * x, (np.array([0.5, 1.5]),))
    x = gt.tensor(np.array([1.0, 2.0]))
    with gt.GradientTape() as tape:
        tape.watch(x)
        y = gt.astype(x, np.float32) ** 2
    assert tape.gradient(y, x).dtype == np.float64


def test_safe_mul_zero_times_inf_is_zero():
    a = gt.tensor(np.array([0.0, 2.0, 0.0]))
    b = gt.tensor(np.array([np.inf, 3.0, np.nan]))
    with np.errstate(invalid="ignore"):
        np.testing.assert_array_equal(gt.safe_mul(a, b).numpy(), [0.0, 6.0, 0.0])


# --------------------------------------------------------------------------- completeness
# Public ops documented in docs/api.md outside its "Operations" section (name -> section).
DOCUMENTED_ELSEWHERE = {"stop_gradient": "Control over gradients",
                        # creation functions make constants: no primitive, no gradient
                        **dict.fromkeys(["zeros", "ones", "full", "zeros_like", "ones_like",
                                         "full_like", "arange", "linspace", "eye", "one_hot"],
                                        "Creating tensors")}

# Public ops of docs/api.md that are not primitives themselves but are built from others
# (API name -> the primitive it reduces to). Each gets its own check_grads cases and a NumPy
# forward reference in _wrapper_cases.
WRAPPERS = {"gather": "getitem", "take": "getitem", "split": "getitem",
            "swapaxes": "transpose", "moveaxis": "transpose", "expand_dims": "reshape",
            "squeeze": "reshape",
            # topk gathers with argsort's permutation (take_along_axis: index_take); its vmap
            # and jvp cases are among sort's examples
            "topk": "index_take", "triu": "where", "tril": "where",
            "diag": "getitem", "trace": "getitem", "meshgrid": "broadcast_to",
            "atan2": "arctan2"}


def _wrapper_cases(rng: np.random.Generator) -> dict[str, list]:
    """name -> [(fn, args, kwargs, numpy_reference)]."""
    x = rng.standard_normal((4, 3))
    y = rng.standard_normal((2, 1, 3))
    i1 = np.array([3, 0, 3])
    i2 = np.array([[2, 1], [0, 2]])
    d = rng.permutation(12).reshape(4, 3) * 0.5  # no ties: topk's finite differences stay put
    return {
        "atan2": [(gt.atan2, (x, y[0] + 2.0), {}, np.arctan2)],
        "gather": [(gt.gather, (x, i1), {"axis": 0}, lambda x, i: np.take(x, i, axis=0)),
                   (gt.gather, (x, i2), {"axis": 1}, lambda x, i: np.take(x, i, axis=1))],
        "take": [(gt.take, (x, i2), {}, lambda x, i: np.take(x, i)),
                 (gt.take, (x, i1), {"axis": 0}, lambda x, i: np.take(x, i, axis=0)),
                 (gt.take, (x, np.array([-1, 1])), {"axis": 1},
                  lambda x, i: np.take(x, i, axis=1))],
        "split": [(gt.split, (x, 2), {}, lambda x, n: np.split(x, n)),
                  (gt.split, (x, [1, 2]), {"axis": 1}, lambda x, n: np.split(x, n, axis=1))],
        "swapaxes": [(gt.swapaxes, (y, 0, 2), {}, np.swapaxes),
                     (gt.swapaxes, (y, -1, 1), {}, np.swapaxes)],
        "moveaxis": [(gt.moveaxis, (y, 0, -1), {}, np.moveaxis),
                     (gt.moveaxis, (y, [0, 2], [1, 0]), {}, np.moveaxis)],
        "expand_dims": [(gt.expand_dims, (x, 1), {}, np.expand_dims),
                        (gt.expand_dims, (x, (0, -1)), {}, np.expand_dims)],
        "squeeze": [(gt.squeeze, (y,), {}, np.squeeze),
                    (gt.squeeze, (y, 1), {}, np.squeeze)],
        "topk": [(gt.topk, (d, 2), {}, lambda x, k: (np.sort(x)[:, ::-1][:, :k],
                                                    np.argsort(-x, kind="stable")[:, :k])),
                 (gt.topk, (d, 4), {"axis": 0}, lambda x, k: (np.sort(x, 0)[::-1],
                                                             np.argsort(-x, 0, kind="stable")))],
        "triu": [(gt.triu, (x,), {}, np.triu), (gt.triu, (x, 1), {}, np.triu),
                 (gt.triu, (y,), {"k": -1}, lambda y: np.triu(y, -1))],
        "tril": [(gt.tril, (x,), {}, np.tril), (gt.tril, (x, -1), {}, np.tril),
                 (gt.tril, (x[0],), {}, np.tril)],  # 1-D: a square matrix, as NumPy
        "diag": [(gt.diag, (x,), {}, np.diag), (gt.diag, (x, -1), {}, np.diag),
                 (gt.diag, (x[:, 0], 1), {}, np.diag)],
        "trace": [(gt.trace, (x,), {}, np.trace),
                  (gt.trace, (y,), {"offset": 1, "axis1": 2, "axis2": 0},
                   lambda y: np.trace(y, 1, 2, 0))],
        "meshgrid": [(gt.meshgrid, (x[:, 0], x[0]), {}, lambda *a: list(np.meshgrid(*a))),
                     (gt.meshgrid, (x[:, 0], x[0], y[0, 0]), {"indexing": "ij"},
                      lambda *a: list(np.meshgrid(*a, indexing="ij")))],  # NumPy 2: a tuple
    }


# Registry primitives covered neither by elementwise/examples/nondiff machinery, with the reason
# and the test that checks them directly.
ALLOWED_WITHOUT_EXAMPLES = {
    "scatter_add": "internal: the VJP of getitem (test_scatter_add_accumulates_and_is_differentiable)",
    "astype": "dtype cast, identity on values (test_astype_gradient_is_cast_back)",
}


def _api_doc() -> str:
    assert API_DOC.is_file(), f"{API_DOC} is missing: the API reference lives in the repository"
    return API_DOC.read_text(encoding="utf-8")


def _section(text: str, title: str) -> str:
    """The body of docs/api.md's ``## <title>`` section (up to the next ``## `` heading)."""
    m = re.search(rf"^## {re.escape(title)}[ \t]*$(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert m, f"docs/api.md has no '## {title}' section"
    return m.group(1)


def _entries(text: str) -> set[str]:
    """Names that have their own entry: a heading ``### `name``` (``####`` for fields)."""
    return set(re.findall(r"^#{3,4} `([A-Za-z_]\w*)`[ \t]*$", text, re.M))


def _api_ops() -> dict[str, list[str]]:
    """The "Operations" section of docs/api.md: family heading (``### Reductions``) -> the
    names of the ``### `name``` entries under it."""
    families: dict[str, list[str]] = {}
    family = None
    for line in _section(_api_doc(), "Operations").splitlines():
        entry = re.match(r"^### `([A-Za-z_]\w*)`[ \t]*$", line)
        if entry:
            assert family is not None, f"docs/api.md: op {entry.group(1)} before any family heading"
            families[family].append(entry.group(1))
        elif line.startswith("### "):
            family = line[4:].strip()
            families[family] = []
    assert families, "docs/api.md's Operations section lists no family of ops"
    empty = [f for f, names in families.items() if not names]
    assert not empty, f"docs/api.md: Operations families with no op: {empty}"
    return families


# Functions of gradtape.nn also exported at the top level: documented with the ops (and in the
# gradtape.nn section), covered by the registry as their primitives are.
REEXPORTED_FROM_NN = {"softmax", "log_softmax"}


def _public_ops() -> set[str]:
    """The names of ``gt.__all__`` that are operations (functions of ``gradtape.ops``, and the
    gradtape.nn functions re-exported at the top level)."""
    for n in REEXPORTED_FROM_NN:
        assert getattr(gt, n) is getattr(gt.nn, n), f"gt.{n} is not gt.nn.{n}"
    return {n for n in gt.__all__
            if getattr(getattr(gt, n), "__module__", "").startswith("gradtape.ops")
            or n in REEXPORTED_FROM_NN}


def test_api_doc_operations_are_exactly_the_public_ops():
    documented = [op for names in _api_ops().values() for op in names]
    twice = sorted({op for op in documented if documented.count(op) > 1})
    assert not twice, f"docs/api.md lists these ops twice: {twice}"
    expected = _public_ops() - set(DOCUMENTED_ELSEWHERE)
    assert set(documented) == expected, (
        f"docs/api.md's Operations section differs from the public ops: not documented there "
        f"{sorted(expected - set(documented))}; documented but not public ops "
        f"{sorted(set(documented) - expected)}")
    for op, title in DOCUMENTED_ELSEWHERE.items():
        assert op in _public_ops(), f"{op} is no longer a public op"
        assert op in _entries(_section(_api_doc(), title)), f"docs/api.md: no entry for {op} in {title}"


def _reexported(module, name: str) -> bool:
    return getattr(gt, name, None) is getattr(module, name)


def test_every_public_name_has_an_entry_in_api_doc():
    """Each public name of gradtape (``__all__``), gradtape.nn (``__all__``; re-exported ``gt``
    functions may be named in the section's text instead), gradtape.optimizers (``__all__``
    and every public class), gradtape.testing and gradtape.extend has its entry in docs/api.md, in its
    module's section."""
    from gradtape import distributed, extend, nn, optimizers, random, testing

    text = _api_doc()
    top = text[:text.index("\n## gradtape.nn")] if "\n## gradtape.nn" in text else text
    classes = {n for n, o in vars(optimizers).items()
               if inspect.isclass(o) and not n.startswith("_") and o.__module__ == optimizers.__name__}
    missing = {}
    for label, names, body, mentioned_ok in (
            ("gradtape", gt.__all__, top, lambda n: False),
            ("gradtape.nn", nn.__all__, _section(text, "gradtape.nn"),
             lambda n: _reexported(nn, n)),
            ("gradtape.optimizers", sorted(set(optimizers.__all__) | classes),
             _section(text, "gradtape.optimizers"), lambda n: False),
            ("gradtape.testing", testing.__all__, _section(text, "gradtape.testing"),
             lambda n: False),
            ("gradtape.random", random.__all__, _section(text, "gradtape.random"),
             lambda n: False),
            ("gradtape.extend", extend.__all__, _section(text, "gradtape.extend"),
             lambda n: False),
            ("gradtape.distributed", distributed.__all__, _section(text, "gradtape.distributed"),
             lambda n: False)):
        entries = _entries(body)
        absent = [n for n in names if n not in entries
                  and not (mentioned_ok(n) and f"`{n}`" in body)]
        if absent:
            missing[label] = absent
    assert classes, "gradtape.optimizers defines no public class"
    assert not missing, f"public names without an entry in docs/api.md: {missing}"


def _covered_public_functions() -> set[int]:
    fns = set()
    for name in WITH_EXAMPLES:
        for fn, _, _ in _examples(name):
            fns.add(id(fn))
    return fns


def test_every_api_op_is_public_and_covered():
    ops = [op for names in _api_ops().values() for op in names]
    example_fns = _covered_public_functions()
    missing, uncovered = [], []
    for op in ops:
        fn = getattr(gt, op, None)
        if not callable(fn):
            missing.append(op)
            continue
        if op in ELEMENTWISE or op in NONDIFF or op in WITH_EXAMPLES or id(fn) in example_fns:
            continue
        if op in WRAPPERS:
            continue
        uncovered.append(op)
    assert not missing and not uncovered, (
        f"docs/api.md ops that are not public gt functions: {missing}; public but covered by no "
        f"registry test (no elementwise entry, no examples= case using gt.<name>, no wrapper "
        f"case): {uncovered}")


@pytest.mark.parametrize("op", sorted(WRAPPERS))
def test_wrapper_forward_and_gradients(op):
    assert WRAPPERS[op] in PRIMS, f"{op}: the primitive it is built on ({WRAPPERS[op]}) is gone"
    for i, (fn, args, kwargs, ref) in enumerate(_wrapper_cases(np.random.default_rng(1))[op]):
        out = fn(*_cast_args(args, np.float64), **kwargs)
        expected = ref(*args)
        if isinstance(expected, (list, tuple)):  # split, meshgrid: a list; topk: a tuple
            assert isinstance(out, type(expected)) and len(out) == len(expected)
        else:
            out, expected = [out], [expected]
        for o, e in zip(out, expected):
            assert o.dtype == e.dtype == (np.float64 if e.dtype.kind == "f" else np.int64)
            assert o.shape == e.shape
            np.testing.assert_array_equal(o.numpy(), e)
        check_grads(fn, args, kwargs, seed=i)


def test_every_primitive_is_covered():
    uncovered = [n for n in PRIMS
                 if n not in ELEMENTWISE and n not in NONDIFF and n not in WITH_EXAMPLES
                 and n not in ALLOWED_WITHOUT_EXAMPLES]
    assert not uncovered, (f"primitives with no registry test (give them examples=, or add them "
                           f"to ALLOWED_WITHOUT_EXAMPLES with a direct test): {uncovered}")
    stale = [n for n in ALLOWED_WITHOUT_EXAMPLES if n not in PRIMS]
    assert not stale, f"ALLOWED_WITHOUT_EXAMPLES names primitives that no longer exist: {stale}"
