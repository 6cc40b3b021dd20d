"""Optimizer updates declared once (UpdateRule) and run fused in place: equal to the unfused
reference (``sgd_update`` / ``adam_update``, plain array code kept here) bit for bit on NumPy, for every configuration,
float16/32/64, small arrays and arrays of several blocks (threads), zero-stride and
non-contiguous gradients; the in-place hazards of the block program; the rendered CUDA
kernels compile with nvcc and use no double precision in float16/float32.

The CuPy case of the ``backend`` fixture runs the same tests on the GPU (compared with the
NumPy reference within float tolerance); it skips without a device.
"""

from __future__ import annotations

import copy
import itertools
import math
import tracemalloc
import zlib
from typing import Any

import numpy as np
import pytest

import gradtape as gt

# The generated programs (NumPy block programs, CUDA kernel text) have no public face
from gradtape._src.codegen import cuda as _codegen_cuda
from gradtape._src.codegen import numpy_program as _codegen_numpy_program
from gradtape.optimizers import UpdateRule, adam_rule, sgd_rule

CONFIGS = {
    "sgd": lambda: gt.optimizers.SGD(0.1),
    "sgd-wd": lambda: gt.optimizers.SGD(0.1, weight_decay=0.05),
    "momentum": lambda: gt.optimizers.SGD(0.1, momentum=0.9),
    "nesterov": lambda: gt.optimizers.SGD(0.05, momentum=0.8, nesterov=True),
    "nesterov-wd": lambda: gt.optimizers.SGD(0.05, momentum=0.8, nesterov=True, weight_decay=0.01),
    "adam": lambda: gt.optimizers.Adam(0.01),
    "adam-l2": lambda: gt.optimizers.Adam(0.01, beta1=0.8, beta2=0.99, epsilon=1e-6,
                                          weight_decay=0.1),
    "adamw": lambda: gt.optimizers.AdamW(0.01, weight_decay=0.1),
    "adam-schedule": lambda: gt.optimizers.Adam(lambda t: 0.02 / (1 + t)),
}
LARGE = (400, 500)  # 200_000 elements: 4 blocks of 2^16, run on the thread pool


# --------------------------------------------------------------------------- references
# The same updates as plain array code (several ufunc passes, as the optimizers ran before the
# fused rules): the unfused reference the rules are tested against, bit for bit on NumPy.
def sgd_update(xp: Any, p: Any, g: Any, buf: Any, *, lr: float, momentum: float,
               nesterov: bool, weight_decay: float) -> None:
    """One SGD step in place (PyTorch's formulation, dampening 0).

    ``d = g + weight_decay * p``; with momentum ``buf = momentum * buf + d`` and
    ``d = buf`` (or ``d + momentum * buf`` with Nesterov); then ``p -= lr * d``.
    ``buf`` is None without momentum. Shapes: all arrays have the parameter's shape.
    """
    d = g
    if weight_decay:
        d = p * weight_decay
        d += g
    if momentum:
        buf *= momentum
        buf += d
        if nesterov:
            d = d + momentum * buf
        else:
            d = buf
    if lr == 1.0:
        p -= d
    else:
        xp.subtract(p, d * lr, out=p)


def adam_update(xp: Any, p: Any, g: Any, m: Any, v: Any, *, lr: float, beta1: float,
                beta2: float, eps: float, step: int, weight_decay: float, decoupled: bool) -> None:
    """One Adam/AdamW step in place (Kingma & Ba with bias correction; PyTorch's placement of
    ``eps``): ``m = b1 m + (1 - b1) g``, ``v = b2 v + (1 - b2) g^2``,
    ``p -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)``.

    ``weight_decay`` is decoupled (AdamW: ``p *= 1 - lr * wd`` first) or, for Adam, added to
    the gradient (L2). Shapes: all arrays have the parameter's shape.
    """
    if weight_decay:
        if decoupled:
            p *= 1.0 - lr * weight_decay
        else:
            g = g + weight_decay * p
    m *= beta1
    m += (1.0 - beta1) * g
    v *= beta2
    gg = (1.0 - beta2) * g  # the factor first, as PyTorch's addcmul
    gg *= g
    v += gg
    bc1 = 1.0 - beta1 ** step
    bc2 = 1.0 - beta2 ** step
    denom = xp.sqrt(v, out=gg)  # reuse the scratch buffer
    denom *= 1.0 / math.sqrt(bc2)
    denom += eps
    xp.divide(m, denom, out=denom)
    denom *= lr / bc1
    p -= denom


def reference(make, p0: np.ndarray, grads: list[np.ndarray]) -> np.ndarray:
    """The unfused reference: the optimizer's plain array update on NumPy copies, with its
    hyper-parameters (public attributes) and learning rate of each step."""
    opt = make()
    p = p0.copy()
    if isinstance(opt, gt.optimizers.SGD):
        slots = [np.zeros_like(p) if opt.momentum else None]
    else:
        slots = [np.zeros_like(p), np.zeros_like(p)]
    for g in grads:
        if isinstance(opt, gt.optimizers.SGD):
            sgd_update(np, p, np.ascontiguousarray(g), *slots, lr=opt.current_learning_rate,
                       momentum=opt.momentum, nesterov=opt.nesterov,
                       weight_decay=opt.weight_decay)
        else:
            adam_update(np, p, np.ascontiguousarray(g), *slots, lr=opt.current_learning_rate,
                        beta1=opt.beta1, beta2=opt.beta2, eps=opt.epsilon,
                        step=opt.iterations + 1, weight_decay=opt.weight_decay,
                        decoupled=isinstance(opt, gt.optimizers.AdamW))
        opt.iterations += 1
    return p


def array_module(backend: str) -> Any:
    """NumPy or CuPy: the array module of backend ``backend``."""
    with gt.use_backend(backend) as b:
        return b.xp


def run_fused(make, p0: np.ndarray, grads: list) -> tuple[np.ndarray, gt.Variable, object]:
    opt = make()
    v = gt.Variable(p0)
    buf = v.data
    for g in grads:
        opt.apply_gradients([(gt.tensor(g) if isinstance(g, np.ndarray) and g.flags.c_contiguous
                              else g, v)])
        assert v.data is buf  # updated in place, never replaced
    return v.numpy(), v, opt


def check(backend: str, got: np.ndarray, want: np.ndarray) -> None:
    assert got.dtype == want.dtype
    if backend == "numpy":
        np.testing.assert_array_equal(got, want)  # same operations, same order: bit for bit
    else:
        tol = {np.float16: 2e-3, np.float32: 2e-6, np.float64: 1e-13}[want.dtype.type]
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


@pytest.mark.parametrize("shape", [(3, 4), LARGE], ids=["small", "blocks"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_fused_equals_reference(backend, name, dtype, shape):
    rng = np.random.default_rng(zlib.crc32(f"{name}{shape}".encode()))
    p0 = rng.normal(size=shape).astype(dtype)
    grads = [rng.normal(size=shape).astype(dtype) for _ in range(5)]
    got, _, opt = run_fused(CONFIGS[name], p0, grads)
    assert opt.iterations == 5
    check(backend, got, reference(CONFIGS[name], p0, grads))


@pytest.mark.parametrize("name", ["nesterov-wd", "adam-l2", "adamw"])
def test_float16_variables(backend, name):
    rng = np.random.default_rng(5)
    p0 = rng.normal(size=(7, 5)).astype(np.float16)
    grads = [rng.normal(size=(7, 5)).astype(np.float16) for _ in range(5)]
    got, _, _ = run_fused(CONFIGS[name], p0, grads)
    want = reference(CONFIGS[name], p0, grads)
    if backend == "numpy":
        check(backend, got, want)
    else:  # CUDA computes in float and rounds the state once per step
        np.testing.assert_allclose(got, want, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("shape", [(3, 4), LARGE], ids=["small", "blocks"])
@pytest.mark.parametrize("name", ["nesterov-wd", "adam-l2", "adamw"])
def test_zero_stride_gradient(backend, name, shape):
    """A broadcast gradient (all strides 0, e.g. the gradient of a sum) is read as a scalar."""
    rng = np.random.default_rng(2)
    p0 = rng.normal(size=shape).astype(np.float32)
    grads = [np.broadcast_to(np.float32(c), shape) for c in (0.3, -0.2, 0.5, 0.1, -0.4)]
    xp = array_module(backend)
    got, _, _ = run_fused(CONFIGS[name], p0, [xp.broadcast_to(xp.asarray(g[(0,) * g.ndim]), shape)
                                              for g in grads])
    check(backend, got, reference(CONFIGS[name], p0, grads))


@pytest.mark.parametrize("shape", [(3, 4), LARGE, (2, 200_000), (200_000,)],
                         ids=["small", "blocks", "wide-rows", "1d"])
@pytest.mark.parametrize("name", ["momentum", "adam", "adamw"])
def test_non_contiguous_gradient(backend, name, shape):
    rng = np.random.default_rng(4)
    p0 = rng.normal(size=shape).astype(np.float32)
    bigs = [rng.normal(size=shape[:-1] + (2 * shape[-1],)).astype(np.float32) for _ in range(5)]
    grads = [b[..., ::2] for b in bigs]
    assert not grads[0].flags.c_contiguous
    xp = array_module(backend)
    got, _, _ = run_fused(CONFIGS[name], p0, [xp.asarray(b)[..., ::2] for b in bigs])
    check(backend, got, reference(CONFIGS[name], p0, grads))


def test_state_buffers_updated_in_place(backend):
    """A shallow copy of the optimizer shares its state buffers: it sees every later step of
    the original only because those steps write into the same buffers."""
    v = gt.Variable(np.ones(LARGE, np.float32))
    opt = gt.optimizers.Adam(0.1)
    opt.apply_gradients([(gt.tensor(np.ones(LARGE, np.float32)), v)])
    twin = copy.copy(opt)
    first = {k: np.array(a) for k, a in twin.state_dict([("v", v)]).items()}  # copies
    for _ in range(2):
        opt.apply_gradients([(gt.tensor(np.ones(LARGE, np.float32)), v)])
        seen, own = twin.state_dict([("v", v)]), opt.state_dict([("v", v)])
        for slot in ("v/m", "v/v"):
            np.testing.assert_array_equal(seen[slot], own[slot])
            assert not np.array_equal(seen[slot], first[slot])  # the step changed it
        first = {k: np.array(a) for k, a in seen.items()}
    assert twin.iterations == 1 and opt.iterations == 3  # the copy itself took no step
    assert float(seen["v/m"][0, 0]) == pytest.approx(1 - 0.9 ** 3, rel=1e-6)
    assert float(seen["v/v"][0, 0]) == pytest.approx(1 - 0.999 ** 3, rel=1e-5)


_fresh_rules = itertools.count()


def test_one_program_serves_every_step():
    """Scalars are parameters: changing learning rates and bias corrections reuse the program.
    A new program stays cached (several kilobytes, seen by tracemalloc); the later steps leave
    nothing behind."""
    v = gt.Variable(np.ones(10))
    opt = gt.optimizers.Adam(lambda t: 0.1 / (t + 1))
    opt.apply_gradients([(np.ones(10), v)])
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for _ in range(4):
            opt.apply_gradients([(np.ones(10), v)])
        steps = tracemalloc.get_traced_memory()[0] - base
        # what one new program costs: a rule never run before, compiled on first use
        fresh = UpdateRule(f"fresh{next(_fresh_rules)}", ("p", "g"), ("lr",),
                           [("p", "p - lr * g")], ("p",))
        base = tracemalloc.get_traced_memory()[0]
        fresh.apply([np.ones(10), np.ones(10)], [0.1])
        compiled = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert compiled > 2000, compiled
    assert steps < compiled // 2, (steps, compiled)


def test_rules_per_configuration():
    assert sgd_rule(False, False, False).outputs == ("p",)
    assert sgd_rule(True, False, False).arrays == ("p", "g", "buf")
    assert sgd_rule(True, True, True) is sgd_rule(True, True, True)  # cached
    assert adam_rule(True, False).statements[0] == ("g", "g + weight_decay * p")
    assert adam_rule(True, True).statements[0] == ("p", "p * decay")
    assert adam_rule(False, False).outputs == ("m", "v", "p")


# --------------------------------------------------------------------------- the rule itself
def test_rule_reads_new_values_and_locals():
    rule = UpdateRule("t", ("p", "g", "m"), ("a",),
                      [("m", "m + g"), ("d", "a * m"), ("p", "p - d")], ("m", "p"))
    p, g, m = np.full(4, 10.0), np.full(4, 2.0), np.full(4, 1.0)
    rule.apply([p, g, m], [0.5])
    np.testing.assert_array_equal(m, 3.0)
    np.testing.assert_array_equal(p, 10.0 - 0.5 * 3.0)


@pytest.mark.parametrize("n", [6, 200_000])
def test_block_program_never_reads_an_overwritten_leaf(n):
    """Old values read after their array was reassigned (``q`` is only needed by a later
    output), a ``where`` reading its own array: such outputs go to scratch and are copied at
    the end, so the in-place result equals the out-of-place formula."""
    rule = UpdateRule("hazard", ("p", "g", "m"), ("c",),
                      [("q", "p * c"), ("old_m", "m * 1"), ("p", "p - g"),
                       ("m", "where(g > 0, m, m * 3 + q)"), ("p", "p + old_m")], ("p", "m"))
    rng = np.random.default_rng(0)
    p, g, m = rng.normal(size=n), rng.normal(size=n), rng.normal(size=n)
    want_p, want_m = p - g + m, np.where(g > 0, m, m * 3 + p * 2.0)
    rule.apply([p, g, m], [2.0])
    np.testing.assert_array_equal(p, want_p)
    np.testing.assert_array_equal(m, want_m)


def test_inplace_direct_writes_only_when_safe():
    adam = adam_rule(False, False)
    prog = _codegen_numpy_program.NumpyProgram(adam.graph(), (False,) * 3, np.dtype(np.float32), adam.inplace)
    assert "_copyto" not in prog.source  # m, v, p computed straight into their buffers
    hazard = UpdateRule("h", ("p", "g"), (), [("q", "p * 2"), ("p", "p - g"), ("p", "p + q")],
                        ("p",))
    assert "_copyto" not in _codegen_numpy_program.NumpyProgram(hazard.graph(), (False,), None,
                                                  hazard.inplace).source
    late = UpdateRule("late", ("p", "g", "m"), (), [("q", "p * 2"), ("p", "p - g"), ("m", "m + q")],
                      ("p", "m"))
    src = _codegen_numpy_program.NumpyProgram(late.graph(), (False, False), None, late.inplace).source
    assert "_copyto(o0" in src  # p's new value waits in scratch until m has read the old p


def test_rule_errors():
    with pytest.raises(ValueError, match="unknown name 'x'"):
        UpdateRule("e", ("p", "g"), (), [("p", "p - x")], ("p",))
    with pytest.raises(ValueError, match="cannot assign to 'lr'"):
        UpdateRule("e", ("p", "g"), ("lr",), [("lr", "2 * lr"), ("p", "p - lr * g")], ("p",))
    with pytest.raises(ValueError, match="output 'm' is not one of the arrays"):
        UpdateRule("e", ("p", "g"), (), [("p", "p - g")], ("p", "m"))
    with pytest.raises(ValueError, match="output 'p' must be assigned a computed expression"):
        UpdateRule("e", ("p", "g"), (), [("p", "g")], ("p",))
    with pytest.raises(ValueError, match="distinct"):
        UpdateRule("e", ("p", "g"), ("g",), [("p", "p - g")], ("p",))


# --------------------------------------------------------------------------- CUDA rendering
ALL_RULES = [sgd_rule(m, n, w) for m in (False, True) for n in ((False, True) if m else (False,))
             for w in (False, True)] + [adam_rule(w, d) for w, d in ((False, False), (True, False),
                                                                    (True, True))]


def rendered(dtypes: tuple[str, ...]) -> list[_codegen_cuda.CudaKernel]:
    out = []
    for dtype in dtypes:
        for rule in ALL_RULES:
            out.append(_codegen_cuda.render_cuda(rule.graph(), (dtype,) * len(rule.arrays), dtype,
                                            (False,) * len(rule.outputs), rule.inplace))
    return out


def test_update_kernels_read_their_outputs():
    for k, rule in zip(rendered(("float32",)), ALL_RULES):
        inputs = [name for _, name in k.in_params if name.startswith("a")]
        assert inputs == ["a1"], f"{rule}: only the gradient is an input, got {k.in_params}"
        assert [n for _, n in k.out_params] == [f"o{i}" for i in range(len(rule.outputs))]
        assert "const float" in k.body and "double" not in k.body
        stores = [ln for ln in k.body.splitlines() if not ln.startswith("const ")]
        assert len(stores) == len(rule.outputs), "every store after every read"
    k16 = rendered(("float16",))[-1]
    assert "((float)o0)" in k16.body and "o2 = (float16)(" in k16.body
    with pytest.raises(ValueError, match="in place"):
        rule = ALL_RULES[-1]
        _codegen_cuda.render_cuda(rule.graph(), ("float32",) * 4, "float32", (True, False, False),
                             rule.inplace)


def test_update_kernels_compile_without_double(tmp_path):
    """Every configuration, float16/32/64, compiled for sm_80 and sm_90 with warnings as
    errors (the harness of test_cuda_compile.py); float16/float32 PTX has no .f64."""
    cc = pytest.importorskip("test_cuda_compile")
    if cc.NVCC is None:
        pytest.skip("nvcc is not installed (CUDA toolkit absent)")
    kdir = _codegen_cuda.kernels_dir()
    src = tmp_path / "updates.cu"
    src.write_text(cc.translation_unit(rendered(("float16", "float32", "float64"))))
    for arch in cc.ARCHS:
        res = cc.nvcc(["--fatbin", f"-gencode=arch=compute_{arch},code=sm_{arch}", "-Werror",
                       "all-warnings", "-I", kdir, "-o", f"updates_{arch}.fatbin", str(src)], tmp_path)
        assert res.returncode == 0, f"nvcc sm_{arch}:\n{cc.fail_text(res, src)}"
    single = tmp_path / "updates_single.cu"
    single.write_text(cc.translation_unit(rendered(("float16", "float32"))))
    res = cc.nvcc(["--ptx", "-arch=sm_80", "-Werror", "all-warnings", "-o", "single.ptx",
                   str(single)], tmp_path)
    assert res.returncode == 0, cc.fail_text(res, single)
    offenders = cc.double_offenders((tmp_path / "single.ptx").read_text(),
                                    cc.libdevice_baseline(tmp_path))
    assert not offenders, offenders
