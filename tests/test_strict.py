"""The device-strict backend (``gradtape._src.strict``): a CPU stand-in for CuPy that fails where
CuPy fails and NumPy forgives, and counts host synchronisations.

* its arrays refuse implicit conversion to NumPy, mixing with host arrays, ``__index__``, and
  names CuPy's namespace lacks; NumPy functions dispatch to CuPy's names as CuPy's do;
* it counts the host synchronisations (``.item()``, ``bool()``, ``float()``, ``.numpy()``,
  boolean masks...) and can forbid them;
* fused backward runs and optimizer updates go through ``ElementwiseKernel`` compiled from the
  CUDA text on the host, and give the NumPy backend's results;
* a training step of the digits MLP makes no host synchronisation; the training loop makes
  only the ones its progress lines need, however many steps an epoch has;
* every ``xp.<name>`` gradtape's source uses is in CuPy's namespace.

The whole suite also runs on this backend (``GRADTAPE_TEST_BACKEND=strict``, see
tests/strict_exclusions.txt for what it leaves out and why).
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest

import gradtape as gt
from gradtape import extend

# the strict backend is test support, not public API
from gradtape._src import strict
from gradtape._src.codegen import hostcuda
from gradtape.examples import digits

needs_compiler = pytest.mark.skipif(hostcuda.compiler_unavailable_reason() is not None,
                                    reason=f"no host compiler: {hostcuda.compiler_unavailable_reason()}")
XP = strict.XP


@pytest.fixture(autouse=True)
def _strict_installed():
    strict.install()
    yield


# --------------------------------------------------------------------------- CuPy's refusals
def test_no_implicit_conversion_to_numpy():
    a = XP.arange(3.0)
    for convert in (np.asarray, np.array, lambda v: np.ascontiguousarray(v)):
        with pytest.raises(TypeError, match="Implicit conversion to a NumPy array is not allowed"):
            convert(a)
    with pytest.raises(TypeError):
        range(XP.asarray(3))  # CuPy arrays have no __index__
    assert not hasattr(a.flags, "writeable")
    with pytest.raises(AttributeError):
        a.tofile  # noqa: B018 - CuPy's ndarray has it, but it reads the device: not offered
    with pytest.raises(BufferError):
        np.from_dlpack(a)


def test_host_arrays_are_refused_as_cupy_refuses_them():
    a = XP.ones(3)
    host = np.ones(3)
    for bad in (lambda: a + host, lambda: host + a, lambda: XP.maximum(a, host), lambda: XP.stack([a, host]),
                lambda: a * [1.0, 2.0, 3.0], lambda: XP.add(a, 1.0, out=host)):
        with pytest.raises(TypeError, match="Unsupported type"):
            bad()
    with pytest.raises(TypeError, match="gh-2079"):
        a[...] = host
    b = XP.asarray(host)  # the creation functions take host data: a copy on the device
    host[0] = 5.0
    assert float(b[0]) == 1.0


def test_numpy_functions_dispatch_to_cupy_names_only():
    a = XP.arange(6.0).reshape(2, 3)
    s = np.sum(a, axis=0)  # __array_function__: CuPy has sum
    assert isinstance(s, strict.StrictArray)
    assert isinstance(np.exp(a), strict.StrictArray)  # __array_ufunc__
    e = np.linalg.norm(a)
    assert isinstance(e, strict.StrictArray) and e.shape == ()  # 0-d arrays, never NumPy scalars
    with pytest.raises(TypeError):
        np.busday_count(a, a)  # no CuPy counterpart
    for missing in ("errstate", "seterr", "asmatrix", "float128", "memmap"):
        assert not hasattr(XP, missing), missing
    assert XP.get_array_module(a) is XP and XP.get_array_module(np.ones(1)) is np


# --------------------------------------------------------------------------- synchronisations
def test_synchronisations_are_counted_where_they_happen():
    a = XP.arange(4.0)
    with strict.count_syncs() as log:
        float(a[0])
        bool(a[1] > 0)
        a.item(2)
        XP.asnumpy(a)
        a[a > 1.0]  # boolean mask: the output shape is read from the device
        XP.nonzero(a)
        repr(a)
        _ = a * 2 + 1  # device work: no synchronisation
        XP.where(a > 1, a, 0.0)
    assert log.kinds() == {"float": 1, "bool": 1, "item": 1, "asnumpy": 1,
                           "data-dependent shape: boolean mask indexing": 1,
                           "data-dependent shape: nonzero": 1, "repr": 1}
    assert all("test_strict.py" in where for _, where in log.events)
    with strict.forbid_syncs(), pytest.raises(strict.HostSyncError, match=r"\(item\) at .*test_strict.py"):
        a.sum().item()


def test_tensor_reads_synchronise_and_ops_do_not():
    with gt.use_backend("strict"), strict.count_syncs() as log:
        x = gt.tensor([1.0, -2.0, 3.0])
        y = gt.nn.relu(x) * 2.0 + gt.exp(x).sum()
        assert y.backend == "strict"
        with gt.GradientTape() as tape:
            tape.watch(x)
            z = gt.sum(gt.tanh(x) * x)
        g = tape.gradient(z, x)
    assert log.count == 0, log
    with strict.count_syncs() as log:
        g.numpy()
        float(z)
    assert log.kinds() == {"asnumpy": 1, "item": 1}


# --------------------------------------------------------------------------- kernels
@needs_compiler
def test_fused_backward_runs_the_cuda_text_and_matches_numpy():
    """Runs fused on the strict backend go through ElementwiseKernel, compiled from the CUDA
    text for the host; the gradients equal the NumPy backend's."""
    rng = np.random.default_rng(0)
    xv, bv = rng.uniform(0.2, 0.9, (40, 30)), rng.uniform(0.5, 1.5, (30,))

    def grads(backend):
        with gt.use_backend(backend), extend.fusion_thresholds(min_run_by_size=()):
            x, b = gt.tensor(xv), gt.tensor(bv)
            with gt.GradientTape() as tape:
                tape.watch([x, b])
                h = gt.cos(gt.sin(gt.exp(gt.tanh(x * b))))
                h = gt.where(x > 0.5, gt.nn.gelu(h), gt.nn.leaky_relu(h - b, 0.1)) * gt.sigmoid(x)
                y = gt.sum(gt.clip(h, -0.5, 0.8) + gt.maximum(h, b) * gt.pow(x, b))
            before = extend.fusion_stats()["runs"]
            gx, gb = tape.gradient(y, [x, b])
            return gx.numpy(), gb.numpy(), extend.fusion_stats()["runs"] - before

    gx, gb, runs = grads("strict")
    gx0, gb0, _ = grads("numpy")
    assert runs >= 1
    np.testing.assert_allclose(gx, gx0, rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(gb, gb0, rtol=1e-12, atol=1e-13)


@needs_compiler
@pytest.mark.parametrize("make", [lambda: gt.optimizers.Adam(0.01, global_clipnorm=0.5),
                                  lambda: gt.optimizers.SGD(0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
                                  lambda: gt.optimizers.AdamW(0.01, weight_decay=0.1)],
                         ids=["adam-clipnorm", "sgd-nesterov-wd", "adamw"])
def test_optimizer_kernels_match_numpy(make):
    rng = np.random.default_rng(1)
    p0 = rng.normal(size=(6, 5)).astype(np.float32)
    gs = [rng.normal(size=(6, 5)).astype(np.float32) for _ in range(4)]
    out = []
    for backend in ("strict", "numpy"):
        with gt.use_backend(backend):
            v, opt = gt.Variable(p0), make()
            with strict.forbid_syncs():
                for g in gs:
                    opt.apply_gradients([(gt.tensor(g), v)])
            out.append(v.numpy())
    np.testing.assert_allclose(out[0], out[1], rtol=2e-6, atol=1e-7)


def test_elementwise_kernel_refuses_host_arrays():
    k = XP.ElementwiseKernel("float64 x", "float64 y", "y = x + 1.0", "plus_one")
    with pytest.raises(TypeError, match="Unsupported type"):
        k(np.ones(2))
    with pytest.raises(TypeError, match="Unsupported type"):
        k(XP.ones(2), np.empty(2))  # a host output too (CuPy's message)
    with pytest.raises(TypeError, match="Output arguments type"):
        k(XP.ones(2), 1.0)


def test_cross_entropy_labels_out_of_range():
    """NumPy checks the labels on the host; a device does not wait for such a check: the
    example's loss is NaN instead."""
    logits = np.zeros((3, 4), np.float32)
    with gt.use_backend("numpy"), pytest.raises(ValueError, match=r"class indices in \[0, 4\)"):
        gt.nn.cross_entropy(gt.tensor(logits), gt.tensor([0, 4, 1]))
    with gt.use_backend("strict"), strict.count_syncs() as log:
        loss = gt.nn.cross_entropy(gt.tensor(logits), gt.tensor([0, 4, -1]), reduction="none")
    assert log.count == 0
    np.testing.assert_array_equal(np.isnan(loss.numpy()), [False, True, True])


# --------------------------------------------------------------------------- the digits MLP
def _batches(n: int, size: int):
    x_tr, y_tr, _, _ = digits.load_data(0)
    return [(gt.tensor(x_tr[i * size:(i + 1) * size]), gt.tensor(y_tr[i * size:(i + 1) * size]))
            for i in range(n)]


@needs_compiler
@pytest.mark.parametrize("build,make", [
    (digits.build_mlp, lambda: gt.optimizers.Adam(2e-3)),
    (digits.build_mlp, lambda: gt.optimizers.Adam(2e-3, global_clipnorm=1.0)),
    (digits.build_mlp, lambda: gt.optimizers.SGD(0.05, momentum=0.9)),
    (digits.build_cnn, lambda: gt.optimizers.Adam(1e-3))],
    ids=["mlp-adam", "mlp-adam-clipnorm", "mlp-sgd-momentum", "cnn-adam"])
def test_digits_training_step_never_synchronises(build, make):
    """Forward, loss, gradient and update of the digits MLP (and CNN): no host
    synchronisation (the device is never waited for inside a step); reading the loss to log
    it is the one."""
    with gt.use_backend("strict"), extend.fusion_thresholds(min_run_by_size=()):
        model, opt = build(0), make()
        params = model.trainable_variables
        for xb, yb in _batches(3, 64):
            with strict.forbid_syncs():
                with gt.GradientTape() as tape:
                    loss = gt.nn.cross_entropy(model(xb), yb)
                grads = tape.gradient(loss, params)
                opt.apply_gradients(zip(grads, params))
            with strict.count_syncs() as log:
                value = float(loss)
            assert log.count == 1 and np.isfinite(value)


def _batched_calls() -> dict:
    """The batched-gradient calls, each a thunk on strict-backend tensors (built inside the
    backend): Jacobians, forward mode, vmap, per-example gradients (plain, clipped with norms,
    a conv net's), and the fused chain backward the GPU suite times."""
    rng = np.random.default_rng(3)

    def a(*shape, scale=1.0):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    W = gt.Variable(a(16, 16))
    v = gt.tensor(a(16))
    P = [gt.Variable(a(8, 12, scale=0.3)), gt.Variable(a(12)), gt.Variable(a(12, 5, scale=0.3)),
         gt.Variable(a(5))]
    X, Y = gt.tensor(a(6, 8)), gt.tensor(rng.integers(0, 5, 6))
    K1, K2 = gt.Variable(a(4, 1, 3, 3, scale=0.3)), gt.Variable(a(6, 4, 3, 3, scale=0.2))
    WD, XI = gt.Variable(a(24, 5, scale=0.1)), gt.tensor(a(3, 1, 12, 12))
    YI = gt.tensor(rng.integers(0, 5, 3))

    def mlp(ps, x):
        return gt.tanh(x @ ps[0] + ps[1]) @ ps[2] + ps[3]

    def loss1(ps, x, y):
        return gt.nn.cross_entropy(mlp(ps, x), y)

    def f(w):
        return gt.sum(gt.tanh(w @ v) ** 2)

    def per_example(**kw):
        with gt.GradientTape() as tape:
            losses = gt.nn.cross_entropy(mlp(P, X), Y, reduction="none")
        return tape.per_example_gradients(losses, P, **kw)

    def cnn(**kw):
        with gt.GradientTape() as tape:
            h = gt.nn.max_pool2d(gt.nn.relu(gt.nn.conv2d(XI, K1, padding=1)), 2)
            h = gt.nn.max_pool2d(gt.nn.relu(gt.nn.conv2d(h, K2)), 2)
            losses = gt.nn.cross_entropy(gt.reshape(h, (3, 24)) @ WD, YI, reduction="none")
        return tape.per_example_gradients(losses, [K1, K2, WD], **kw)

    def jacobian():
        with gt.GradientTape() as tape:
            y = gt.tanh(W @ v)
        return tape.jacobian(y, W)

    def batch_jacobian():
        with gt.GradientTape() as tape:
            tape.watch(X)
            y = gt.tanh(X @ P[0])
        return tape.batch_jacobian(y, X)

    def chain():
        with gt.GradientTape() as tape:
            tape.watch(v)
            y = gt.sum(gt.square(gt.tanh(gt.cos(gt.exp(gt.sin(v) * 0.5) + 1.0) * 2.0)))
        return tape.gradient(y, v)

    return {"jacobian": jacobian, "batch_jacobian": batch_jacobian,
            "jacrev": lambda: gt.jacrev(lambda w: gt.tanh(w @ v))(W),
            "jacfwd": lambda: gt.jacfwd(lambda w: gt.tanh(w @ v))(W),
            "jvp": lambda: gt.jvp(f, (W,), (W,)), "hvp": lambda: gt.hvp(f, (W,), (W,)),
            "hessian": lambda: gt.hessian(lambda u: gt.sum(gt.tanh(W @ u) ** 2))(v),
            "vmap_grad": lambda: gt.vmap(gt.grad(loss1), in_axes=(None, 0, 0))(P, X, Y),
            "per_example": per_example,
            "per_example_clipped": lambda: per_example(max_norm=1.0, reduce="sum",
                                                       return_norms=True),
            "per_example_cnn_clipped": lambda: cnn(max_norm=0.5, reduce="sum", return_norms=True),
            "per_example_cnn": cnn, "chain_backward": chain}


@needs_compiler
@pytest.mark.parametrize("name", ["jacobian", "batch_jacobian", "jacrev", "jacfwd", "jvp", "hvp",
                                  "hessian", "vmap_grad", "per_example", "per_example_clipped",
                                  "per_example_cnn", "per_example_cnn_clipped", "chain_backward"])
@pytest.mark.parametrize("fusion", [True, False], ids=["fused", "unfused"])
def test_batched_gradients_never_synchronise(name, fusion, monkeypatch):
    """Jacobians, forward mode, vmap and per-example gradients (clipped, with norms, of a conv
    net) enqueue their device work without waiting for the device: no host synchronisation,
    as the GPU suite's device timing needs (it refuses a call that waits)."""
    monkeypatch.setattr(gt.config, "fusion", fusion)
    with gt.use_backend("strict"):
        call = _batched_calls()[name]
        call()  # the first call may build kernels
        with strict.forbid_syncs():
            out = call()
        assert out is not None


@needs_compiler
@pytest.mark.parametrize("build", [digits.build_mlp, digits.build_cnn], ids=["mlp", "cnn"])
def test_compiled_step_replays_without_synchronising_and_matches_eager(build):
    """gt.function on a device backend: traced through the device namespace, the replayed
    program makes no host synchronisation, and many steps give the eager run's losses and
    weights bit for bit."""
    with gt.use_backend("strict"):
        batches = _batches(5, 32)
        eager_model, compiled_model = build(1), build(1)
        eager = digits.train_step(eager_model, gt.optimizers.Adam(2e-3), compiled=False)
        compiled = digits.train_step(compiled_model, gt.optimizers.Adam(2e-3), compiled=True)
        le = [eager(xb, yb)[0] for xb, yb in batches]
        lc = [compiled(xb, yb)[0] for xb, yb in batches[:2]]  # the two traces
        with strict.forbid_syncs():
            lc += [compiled(xb, yb)[0] for xb, yb in batches[2:]]  # replays
        assert compiled.trace_count == 2
        for a, b in zip(le, lc):
            assert a.numpy().tobytes() == b.numpy().tobytes()
        for a, b in zip(eager_model.variables, compiled_model.variables):
            assert a.numpy().tobytes() == b.numpy().tobytes()


@needs_compiler
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_compiled_forward_runs_are_one_device_kernel(dtype):
    """gt.function on a device backend: a run of elementwise calls (operators with constants,
    fan-out, maximum/minimum, a Variable read by reference) becomes one CUDA kernel in the
    replay, with the eager values within float rounding (bit for bit with fused kernels off),
    NaN propagated by maximum/minimum as NumPy does, and no host synchronisation."""
    rng = np.random.default_rng(7)
    with gt.use_backend("strict"):
        w = gt.Variable(rng.normal(size=(6, 5)).astype(dtype))

        def step(x):
            h = gt.tanh(x * 1.5 + 0.25) * w          # constants, a Variable
            h = gt.maximum(h, -0.5) - gt.exp(-h * h)  # fan-out of h
            clipped = 2.0 - gt.maximum(gt.minimum(x, 1.0), -1.0)  # NaN passes both
            return gt.minimum(h, 0.75) / (1.0 + gt.abs(x)), gt.sum(h), clipped

        xs = [rng.normal(size=(6, 5)).astype(dtype) for _ in range(4)]
        xs[3][1, 2] = np.nan
        for fusion in (True, False):
            saved = gt.config.fusion
            gt.config.fusion = fusion
            try:
                f = gt.function(step)
                eager = [[t.numpy() for t in step(gt.tensor(x))] for x in xs]
                comp = [[t.numpy() for t in f(gt.tensor(x))] for x in xs[:2]]
                with strict.forbid_syncs():
                    outs = [f(gt.tensor(x)) for x in xs[2:]]
                comp += [[t.numpy() for t in o] for o in outs]
                w.assign(w * 2)  # read by reference: the next replay sees it
                eager.append([t.numpy() for t in step(gt.tensor(xs[0]))])
                comp.append([t.numpy() for t in f(gt.tensor(xs[0]))])
                src = f.program_source(gt.tensor(xs[0]))
            finally:
                gt.config.fusion = saved
                w.assign(w / 2)
            fused = fusion and dtype != np.float16  # float16 runs stay CuPy's own kernels
            assert ("device_fused_" in src) == fused, src
            if fused:  # the ~13 elementwise calls: one kernel, fewer program lines
                assert src.count("\n") < 12, src
            tol = {np.float16: 2e-3, np.float32: 1e-5, np.float64: 1e-12}[dtype]
            for e, c in zip(eager, comp):
                for a, b in zip(e, c):
                    assert a.dtype == b.dtype == dtype
                    if fused:
                        np.testing.assert_allclose(b, a, rtol=tol, atol=tol)
                    else:
                        np.testing.assert_array_equal(b, a)
            assert np.isnan(comp[3][0][1, 2]) and np.isnan(comp[3][1])
            assert np.isnan(comp[3][2][1, 2]) and np.isnan(comp[3][2]).sum() == 1


def _layout_impl(xp, x):
    y = x.T * 2.0 + 1.0  # eager: the transposed operand's order (F) is kept ('K')
    v = y.reshape(-1)  # so this is a copy in eager mode, and the write below misses y
    v += 100.0
    return y * 1.0


_P_LAYOUT = extend.primitive("_test_strict_layout", _layout_impl, nondiff=True)


def _consts_impl(xp, x):
    # Python numbers straight into the device calls (an impl's own constants)
    return (xp.multiply(x, 1 + 2 ** -24) - 0.5) * 3.0


_P_CONSTS = extend.primitive("_test_strict_consts", _consts_impl, nondiff=True)
_P_ZEROS = extend.primitive("_test_strict_zeros",
                            lambda xp, x: (x * 0.0 + 1.0) / (x * -0.0), nondiff=True)


@needs_compiler
def test_device_kernels_keep_what_the_separate_calls_compute():
    """What a fused device kernel must not change, bit for bit: a constant rounded to the
    run's dtype as CuPy's weak scalars are (1 + 2**-24 is 1 in float32), a negative zero kept
    apart from zero (1 / -0.0 is -inf), and a result in the memory order the eager call gave
    it (a view of a transposed input's result then aliases as in eager mode)."""
    rng = np.random.default_rng(3)
    with gt.use_backend("strict"), np.errstate(divide="ignore"):
        x = gt.tensor(rng.normal(size=(4, 6)).astype(np.float32))

        def consts(x):
            return extend.bind(_P_CONSTS, x), extend.bind(_P_ZEROS, x)

        def layout(x):
            return extend.bind(_P_LAYOUT, x)

        for fn in (consts, layout):
            f = gt.function(fn)
            if fn is consts:  # (the first run is one kernel, its constants rounded in it)
                f(x), f(x)
                assert "device_fused_" in f.program_source(x)
            eager = fn(x)
            eager = eager if isinstance(eager, tuple) else (eager,)
            for _ in range(3):
                got = f(x)
                got = got if isinstance(got, tuple) else (got,)
                for a, b in zip(eager, got):
                    np.testing.assert_array_equal(b.numpy(), a.numpy())
        assert np.isneginf(consts(x)[1].numpy()[x.numpy() > 0]).all()  # 1 / -0.0


@needs_compiler
def test_digits_training_loop_synchronises_only_to_log():
    """``digits.train`` reads values back only for its progress lines: the epoch's loss and
    accuracy, and the test set's (per evaluation batch); the count does not grow with the
    number of steps, and every read is on a logging line of the example."""
    x_tr, y_tr, x_te, y_te = digits.load_data(0)
    counts: dict[bool, list[int]] = {False: [], True: []}
    for compiled in (False, True):
        for n_train in (96, 288):  # 3 and 9 steps per epoch
            with gt.use_backend("strict"), strict.count_syncs() as log:
                digits.train(digits.build_mlp(0), gt.optimizers.Adam(2e-3),
                             (x_tr[:n_train], y_tr[:n_train], x_te[:100], y_te[:100]), 2, 32, 0,
                             "mlp", stream=io.StringIO(), compiled=compiled)
            counts[compiled].append(log.count)
            assert all("examples/digits.py" in where for _, where in log.events), log
    # per epoch: train loss + acc, test loss + acc
    assert counts[False][0] == counts[False][1] == 2 * (2 + 2), counts
    # compiled: the same, plus the traces' one-off reads (comparing the constants of the two
    # traces of a signature), the same whatever the number of steps
    assert counts[True][0] == counts[True][1] >= counts[False][0], counts


# --------------------------------------------------------------------------- the namespace
def test_every_xp_name_in_the_source_is_in_cupys_namespace():
    """Each ``xp.<name>`` in gradtape's source exists in CuPy (as read from CuPy's
    ``__init__``), so the strict namespace, which offers only those, sees every call."""
    root = Path(gt.__file__).parent
    used: set[str] = set()
    for path in root.rglob("*.py"):
        used.update(re.findall(r"\bxp\.([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)?)", path.read_text(encoding="utf-8")))
    missing = set()
    for name in used:
        head, _, tail = name.partition(".")
        if head == "cuda" or name == "__name__":  # CuPy's device API (streams, NCCL): not emulated
            continue
        if not hasattr(XP, head) or (tail and not hasattr(getattr(XP, head), tail)):
            missing.add(name)
    assert not missing, f"xp names CuPy does not have: {sorted(missing)}"


def _positional_out_impl(xp, x):
    t = xp.exp(x)
    v = t.reshape(-1)  # a view made before the write
    xp.multiply(t, 2.0, t)  # the output passed positionally, as CuPy accepts it
    return v.reshape(x.shape) + (t + 1.0)


_P_POSITIONAL_OUT = extend.primitive("_test_strict_positional_out", _positional_out_impl,
                                     nondiff=True)


@needs_compiler
def test_compiled_steps_see_positional_outputs_and_the_backend_of_array_arguments():
    """gt.function on a device backend: a ufunc's output passed positionally is a write the
    replay makes; a NumPy array argument becomes a tensor of the active backend, so its
    signature is not that of a NumPy-backend tensor of the same shape."""
    x = np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4)
    with gt.use_backend("strict"):
        f = gt.function(lambda t: extend.bind(_P_POSITIONAL_OUT, t))
        want = extend.bind(_P_POSITIONAL_OUT, gt.tensor(x)).numpy()
        for _ in range(3):
            np.testing.assert_allclose(f(gt.tensor(x)).numpy(), want, rtol=1e-6)
    g = gt.function(lambda t: gt.exp(t) * 2.0)
    with gt.use_backend("numpy"):
        on_numpy = gt.tensor(x)
    with gt.use_backend("strict"):
        for _ in range(3):
            assert g(on_numpy).backend == "numpy"
        for _ in range(3):
            r = g(x)
            assert r.backend == "strict"
            np.testing.assert_allclose(r.numpy(), np.exp(x) * 2.0, rtol=1e-6)
        assert g(on_numpy).backend == "numpy"


def test_capture_relaunches_kernels_with_the_arguments_they_had():
    """The stand-in for CUDA stream capture: a launch runs the recorded operations again on the
    same buffers (their contents then), keeps the Python values they took (a graph's kernel
    arguments), refills the results' buffers in place, and keeps views as views; a host
    synchronisation or a host-to-device copy while capturing raises, as under CUDA."""
    xp = strict.XP
    x = xp.arange(4.0)
    count = [2.0]

    def body(a):
        y = a * count[0]       # a Python number read while capturing: fixed in the graph
        z = xp.exp(y[1:])      # a view, then a kernel on it
        y += 1.0               # in place
        return y, z

    launch, (y, z) = strict.capture(body, [x])
    count[0] = 100.0
    x[...] = xp.asarray([1.0, 1.0, 1.0, 1.0])
    launch()
    np.testing.assert_array_equal(y.get(), [3.0, 3.0, 3.0, 3.0])
    np.testing.assert_allclose(z.get(), np.exp([2.0, 2.0, 2.0]))  # (before the += 1)
    with pytest.raises(strict.HostSyncError):
        strict.capture(lambda a: float(a.sum()), [x])
    with pytest.raises(RuntimeError, match="host-to-device"):
        strict.capture(lambda a: a + xp.asarray(np.ones(4)), [x])
