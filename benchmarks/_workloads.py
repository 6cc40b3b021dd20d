"""Benchmark workloads, written once per framework.

Shared by the pytest-benchmark files (``bench_*.py``) and by ``compare.py``. Each workload
builder returns a :class:`Cell`: a zero-argument ``run`` (or ``prepare`` + ``run(state)`` when
only part of a step is timed), optional ``enter``/``exit`` hooks around a timed block (e.g. to
switch ``gt.config.fusion``), a ``sync`` for asynchronous devices, and ``grads`` that turns one
``run`` result into NumPy arrays so frameworks can be checked against each other.

Frameworks: ``gradtape``, ``numpy`` (hand-written forward + manual backward), ``torch``
(PyTorch eager), ``tf`` (TensorFlow eager ``GradientTape``), ``jax`` (``jax.jit`` of the whole
gradient/step function), ``autograd`` (HIPS autograd); the batched-gradient rows add
``opacus`` (per-sample hooks on PyTorch) and variants named ``fw[variant]`` (``gradtape[vmap]``,
``torch[batch]``, ...; see :func:`build_per_example_mlp`). Peers are imported lazily; a missing
one raises :class:`Unavailable` with the reason, and the caller skips it.

Everything is float32.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

FRAMEWORKS = ("gradtape", "numpy", "torch", "tf", "jax", "autograd")

OVERHEAD_OPS = 200
OVERHEAD_SHAPE = (16,)
MIXED_STEPS = 40
MIXED_OPS = 5 * MIXED_STEPS + 1  # +w, tanh, exp, *c, + per step (200), then the final sum
MIXED_SCALE = 0.05  # keeps the chain bounded and its gradients off float32's denormals (below)
FUSED_N = 4_194_304
MLP_LARGE = dict(sizes=(784, 512, 512, 10), batch=256)
MLP_SMALL = dict(sizes=(32, 64, 64, 10), batch=16)
CONV = dict(batch=32, hw=28, c1=8, c2=16, classes=10)
ADAM = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-7)


class Unavailable(Exception):
    """A framework, device or op that this workload needs is not usable here."""


@dataclass
class Cell:
    """One (workload, framework) pair, ready to time."""

    run: Callable[..., Any]
    prepare: Callable[[], Any] | None = None
    enter: Callable[[], None] = field(default=lambda: None)
    exit: Callable[[], None] = field(default=lambda: None)
    sync: Callable[[], None] = field(default=lambda: None)
    grads: Callable[[Any], list[np.ndarray]] | None = None

    def once(self) -> Any:
        """Run one untimed step (with enter/exit) and return its result."""
        self.enter()
        try:
            state = self.prepare() if self.prepare is not None else None
            out = self.run(state) if self.prepare is not None else self.run()
            self.sync()
            return out
        finally:
            self.exit()


# --------------------------------------------------------------------------- framework loading
_MODULES: dict[str, Any] = {}


def load(fw: str) -> Any:
    """Import a framework's main module, or raise :class:`Unavailable` with the reason."""
    if fw in _MODULES:
        return _MODULES[fw]
    name = {"gradtape": "gradtape", "numpy": "numpy", "torch": "torch", "tf": "tensorflow",
            "jax": "jax", "autograd": "autograd", "cupy": "cupy", "opacus": "opacus"}[fw]
    if fw == "jax":
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    try:
        mod = importlib.import_module(name)
    except Exception as exc:  # ImportError, or a broken install raising anything
        raise Unavailable(f"{name} not importable: {type(exc).__name__}: {exc}") from None
    if fw == "jax":
        importlib.import_module("jax.numpy")
    _MODULES[fw] = mod
    return mod


def version(fw: str) -> str | None:
    """The framework's version string, or None when it does not import."""
    try:
        mod = load(fw)
    except Unavailable:
        return None
    if hasattr(mod, "__version__"):
        return str(mod.__version__)
    try:
        return importlib.metadata.version(mod.__name__)
    except Exception:
        return "?"


def _tfm() -> Any:
    """TensorFlow's math functions under the NumPy names the workloads use."""
    tf = load("tf")
    names = ("tanh", "sin", "cos", "exp", "square")
    return SimpleNamespace(**{n: getattr(tf.math, n) for n in names}, sum=tf.reduce_sum)


def _np(a: Any) -> np.ndarray:
    """Any framework's array as a host NumPy array."""
    if hasattr(a, "numpy") and not isinstance(a, np.ndarray):
        if type(a).__module__.startswith("torch"):
            return a.detach().cpu().numpy()
        return np.asarray(a.numpy())
    if hasattr(a, "get") and not isinstance(a, np.ndarray):  # CuPy
        return a.get()
    return np.asarray(a)


class _GT:
    """gradtape set up for one cell: its backend ("numpy" for device "cpu", else "cupy") and
    ``gt.config.fusion`` are switched on around every timed block (``enter``/``exit``) and
    while the cell's tensors are created (``with g:``), so cells on different backends and
    fusion settings can be interleaved in one process."""

    def __init__(self, fusion: bool | None, device: str) -> None:
        self.gt = gt = load("gradtape")
        self.backend = "numpy" if device == "cpu" else "cupy"
        self.fusion = fusion
        self.sync: Callable[[], None] = _cupy_sync if self.backend == "cupy" else (lambda: None)
        self._stack: list[tuple[Any, bool]] = []
        if self.backend == "cupy":
            _cupy()
        try:
            with gt.use_backend(self.backend):
                pass
        except gt.BackendUnavailableError as exc:
            raise Unavailable(f"gradtape backend {self.backend!r}: {exc}") from None

    def enter(self) -> None:
        cm = self.gt.use_backend(self.backend)
        cm.__enter__()
        self._stack.append((cm, self.gt.config.fusion))
        if self.fusion is not None:
            self.gt.config.fusion = self.fusion

    def exit(self) -> None:
        cm, fusion = self._stack.pop()
        self.gt.config.fusion = fusion
        cm.__exit__(None, None, None)

    def __enter__(self) -> Any:
        self.enter()
        return self.gt

    def __exit__(self, *exc: object) -> None:
        self.exit()

    def cell(self, run: Callable[..., Any], **kw: Any) -> Cell:
        return Cell(run, enter=self.enter, exit=self.exit, sync=self.sync, **kw)


def _torch_device(device: str) -> Any:
    torch = load("torch")
    if device == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise Unavailable(f"torch {torch.__version__} has no usable CUDA device")
    return torch.device("cuda")


def _torch_sync(device: str) -> Callable[[], None]:
    if device == "cpu":
        return lambda: None
    torch = load("torch")
    return torch.cuda.synchronize


def _cupy() -> Any:
    cp = load("cupy")
    try:
        if cp.cuda.runtime.getDeviceCount() < 1:
            raise Unavailable("CuPy sees no CUDA device")
    except Unavailable:
        raise
    except Exception as exc:
        raise Unavailable(f"CuPy has no usable device: {type(exc).__name__}: {exc}") from None
    return cp


def _cupy_sync() -> None:
    _cupy().cuda.Device().synchronize()


def _only_cpu(fw: str, device: str) -> None:
    if device != "cpu":
        raise Unavailable(f"{fw} is measured on the CPU only here")


# --------------------------------------------------------------------------- elementwise chains
def _overhead_fns(m: Any) -> list[Callable[[Any], Any]]:
    """The 200-op chain: tanh, sin, exp, cos cycling (values stay in about [-1, 2.7])."""
    cyc = [m.tanh, m.sin, m.exp, m.cos]
    return [cyc[i % 4] for i in range(OVERHEAD_OPS)]


def _fused_chain(m: Any, x: Any) -> Any:
    """The 8-op chain: square(tanh(2 * cos(exp(0.5 * sin(x)) + 1)))."""
    return m.square(m.tanh(m.cos(m.exp(m.sin(x) * 0.5) + 1.0) * 2.0))


def overhead_input() -> np.ndarray:
    return np.linspace(-1.0, 1.0, int(np.prod(OVERHEAD_SHAPE)), dtype=np.float32).reshape(
        OVERHEAD_SHAPE)


def fused_input(n: int = FUSED_N) -> np.ndarray:
    return np.random.default_rng(0).standard_normal(n, dtype=np.float32)


# hand-written NumPy for the chains: forward keeping what the backward needs, manual backward
_NP_D = {
    "tanh": lambda x, y: 1.0 - y * y,
    "sin": lambda x, y: np.cos(x),
    "exp": lambda x, y: y,
    "cos": lambda x, y: -np.sin(x),
}


def _np_chain_overhead(x: np.ndarray) -> np.ndarray:
    fns = [np.tanh, np.sin, np.exp, np.cos]
    names = ["tanh", "sin", "exp", "cos"]
    saved = []
    v = x
    for i in range(OVERHEAD_OPS):
        y = fns[i % 4](v)
        saved.append((names[i % 4], v, y))
        v = y
    g = np.ones_like(v)
    for name, xin, y in reversed(saved):
        g = g * _NP_D[name](xin, y)
    return g


def _np_fused_forward(xp: Any, x: Any) -> tuple:
    a = xp.sin(x)
    b = a * np.float32(0.5)
    c = xp.exp(b)
    d = c + np.float32(1.0)
    e = xp.cos(d)
    f = e * np.float32(2.0)
    h = xp.tanh(f)
    y = xp.square(h)
    s = y.sum()
    return (x, c, d, h), s


def _np_fused_backward(xp: Any, saved: tuple) -> Any:
    x, c, d, h = saved
    dh = np.float32(2.0) * h  # d sum(h^2) / dh
    df = dh * (np.float32(1.0) - h * h)
    de = df * np.float32(2.0)
    dd = de * -xp.sin(d)
    db = dd * c
    da = db * np.float32(0.5)
    return da * xp.cos(x)


def build_overhead(fw: str, fusion: bool | None = None, device: str = "cpu") -> Cell:
    """200 elementwise ops on shape (16,) float32, forward under the tape + backward to x."""
    x0 = overhead_input()
    if fw == "gradtape":
        G = _GT(fusion, device)
        with G as gt:
            x = gt.tensor(x0)
        fns = _overhead_fns(gt)

        def run() -> Any:
            with gt.GradientTape() as tape:
                tape.watch(x)
                v = x
                for f in fns:
                    v = f(v)
                y = gt.sum(v)
            return tape.gradient(y, x)

        return G.cell(run, grads=lambda g: [_np(g.numpy())])
    if fw == "torch":
        torch = load("torch")
        x = torch.tensor(x0, device=_torch_device(device), requires_grad=True)
        fns = _overhead_fns(torch)

        def run() -> Any:
            v = x
            for f in fns:
                v = f(v)
            return torch.autograd.grad(v.sum(), x)[0]

        return Cell(run, sync=_torch_sync(device), grads=lambda g: [_np(g)])
    _only_cpu(fw, device)
    if fw == "numpy":
        return Cell(lambda: _np_chain_overhead(x0), grads=lambda g: [g])
    if fw == "tf":
        tf = load("tf")
        x = tf.constant(x0)
        fns = _overhead_fns(_tfm())

        def run() -> Any:
            with tf.GradientTape() as tape:
                tape.watch(x)
                v = x
                for f in fns:
                    v = f(v)
                y = tf.reduce_sum(v)
            return tape.gradient(y, x)

        return Cell(run, grads=lambda g: [_np(g)])
    if fw == "jax":
        jax = load("jax")
        jnp = jax.numpy
        fns = _overhead_fns(jnp)

        def loss(v: Any) -> Any:
            for f in fns:
                v = f(v)
            return jnp.sum(v)

        g = jax.jit(jax.grad(loss))
        x = jnp.asarray(x0)
        return Cell(lambda: g(x).block_until_ready(), grads=lambda r: [_np(r)])
    if fw == "autograd":
        ag = load("autograd")
        anp = importlib.import_module("autograd.numpy")
        fns = _overhead_fns(anp)

        def loss(v: Any) -> Any:
            for f in fns:
                v = f(v)
            return anp.sum(v)

        g = ag.grad(loss)
        return Cell(lambda: g(x0), grads=lambda r: [_np(r)])
    raise Unavailable(f"unknown framework {fw!r}")


# --------------------------------------------------------------------------- mixed per-op chain
def _mixed_chain(m: Any, x: Any, w: Any) -> Any:
    """``MIXED_STEPS`` steps of ``t = tanh(y + w); e = exp(t) * 0.05; y = t + e`` from
    ``y = x``, then ``sum(y)``: the chain of the issue "Compiled steps" (tanh, exp, a multiply
    by a constant, an add with fan-out: ``t`` is used twice), 200 ops, with a second trainable
    input ``w`` added at each step, as real programs have. ``MIXED_OPS`` = 201 ops.

    The constant matters: each step scales the gradient by ``(1 + e) (1 - t^2)``, and with
    ``* 0.5`` the chain settles where ``tanh`` saturates, so the gradient to ``x`` fell to
    1e-45 (float32 denormals, whose slow arithmetic would be timed instead of overhead). With
    0.05, ``y`` stays in (-0.69, 0.92) and the gradient to ``x`` in about [9e-15, 3] per
    element."""
    y = x
    for _ in range(MIXED_STEPS):
        t = m.tanh(y + w)
        e = m.exp(t) * MIXED_SCALE
        y = t + e
    return m.sum(y)


def mixed_inputs() -> tuple[np.ndarray, np.ndarray]:
    """x (the watched input) and w (the trainable parameter), both float32 of OVERHEAD_SHAPE."""
    n = int(np.prod(OVERHEAD_SHAPE))
    w = np.linspace(0.2, -0.2, n, dtype=np.float32).reshape(OVERHEAD_SHAPE)
    return overhead_input(), w


def _np_mixed(x: np.ndarray, w: np.ndarray) -> list[np.ndarray]:
    """Hand-written forward (keeping t and e per step) and manual backward of
    :func:`_mixed_chain`; returns [dx, dw]."""
    c, one = np.float32(MIXED_SCALE), np.float32(1.0)
    saved = []
    y = x
    for _ in range(MIXED_STEPS):
        t = np.tanh(y + w)
        e = np.exp(t) * c
        y = t + e
        saved.append((t, e))
    y.sum()  # the loss value, as every other framework computes it
    gy = np.ones_like(y)
    gw = np.zeros_like(w)
    for t, e in reversed(saved):
        gt_ = gy * (one + e)  # y = t + e, e = exp(t) * c: de/dt = e
        gs = gt_ * (one - t * t)  # t = tanh(s), s = y + w
        gw += gs
        gy = gs
    return [gy, gw]


def build_overhead_mixed(fw: str, fusion: bool | None = None, device: str = "cpu") -> Cell:
    """:func:`_mixed_chain` on float32 (16,), forward under the tape + backward to x (watched)
    and w (a trainable variable / parameter). ``MIXED_OPS`` ops per call."""
    x0, w0 = mixed_inputs()
    if fw in ("gradtape", "gradtape[compiled]", "gradtape[graph]"):
        G = _GT(fusion, device)
        with G as gt:
            x = gt.tensor(x0)
            w = gt.Variable(w0)

        def body(x: Any) -> Any:
            with gt.GradientTape() as tape:
                tape.watch(x)
                y = _mixed_chain(gt, x, w)
            return tape.gradient(y, [x, w])

        step = _maybe_compiled(gt, fw, body)
        return G.cell(lambda: step(x), grads=lambda gs: [_np(g.numpy()) for g in gs])
    if fw == "torch":
        torch = load("torch")
        dev = _torch_device(device)
        x = torch.tensor(x0, device=dev, requires_grad=True)
        w = torch.tensor(w0, device=dev, requires_grad=True)

        def run_t() -> Any:
            return torch.autograd.grad(_mixed_chain(torch, x, w), (x, w))

        return Cell(run_t, sync=_torch_sync(device), grads=lambda gs: [_np(g) for g in gs])
    _only_cpu(fw, device)
    if fw == "numpy":
        return Cell(lambda: _np_mixed(x0, w0), grads=lambda gs: list(gs))
    if fw == "tf":
        tf = load("tf")
        x = tf.constant(x0)
        w = tf.Variable(w0)
        m = _tfm()

        def run_tf() -> Any:
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = _mixed_chain(m, x, w)
            return tape.gradient(y, [x, w])

        return Cell(run_tf, grads=lambda gs: [_np(g) for g in gs])
    if fw == "jax":
        jax = load("jax")
        jnp = jax.numpy
        g = jax.jit(jax.grad(lambda a, b: _mixed_chain(jnp, a, b), argnums=(0, 1)))
        x, w = jnp.asarray(x0), jnp.asarray(w0)
        return Cell(lambda: jax.block_until_ready(g(x, w)), grads=lambda gs: [_np(a) for a in gs])
    if fw == "autograd":
        ag = load("autograd")
        anp = importlib.import_module("autograd.numpy")
        g = ag.grad(lambda xw: _mixed_chain(anp, xw[0], xw[1]))
        return Cell(lambda: g([x0, w0]), grads=lambda gs: [_np(a) for a in gs])
    raise Unavailable(f"unknown framework {fw!r}")


def build_fused(fw: str, part: str = "fwd+bwd", fusion: bool | None = None, device: str = "cpu",
                n: int = FUSED_N) -> Cell:
    """y = sum(f(x)), f the 8-op chain, on ``n`` float32; ``part`` "fwd+bwd" or "bwd" (the
    backward alone, the forward done untimed in ``prepare``)."""
    if part not in ("fwd+bwd", "bwd"):
        raise ValueError(f"part must be 'fwd+bwd' or 'bwd', got {part!r}")
    x0 = fused_input(n)
    if fw == "gradtape":
        G = _GT(fusion, device)
        with G as gt:
            x = gt.tensor(x0)

        def forward() -> Any:
            tape = gt.GradientTape()
            with tape:
                tape.watch(x)
                y = gt.sum(_fused_chain(gt, x))
            return tape, y

        grads = lambda g: [_np(g.numpy())]  # noqa: E731
        if part == "bwd":
            return G.cell(lambda s: s[0].gradient(s[1], x), prepare=forward, grads=grads)

        def run() -> Any:
            tape, y = forward()
            return tape.gradient(y, x)

        return G.cell(run, grads=grads)
    if fw in ("numpy", "cupy"):
        if fw == "cupy" or device != "cpu":
            xp = _cupy()
            x, sync = xp.asarray(x0), _cupy_sync
        else:
            xp, x, sync = np, x0, (lambda: None)
        if part == "bwd":
            return Cell(lambda s: _np_fused_backward(xp, s), sync=sync,
                        prepare=lambda: _np_fused_forward(xp, x)[0], grads=lambda g: [_np(g)])
        return Cell(lambda: _np_fused_backward(xp, _np_fused_forward(xp, x)[0]), sync=sync,
                    grads=lambda g: [_np(g)])
    if fw == "torch":
        torch = load("torch")
        dev = _torch_device(device)
        x = torch.tensor(x0, device=dev, requires_grad=True)
        sync = _torch_sync(device)

        def fwd() -> Any:
            return _fused_chain(torch, x).sum()

        if part == "bwd":
            return Cell(lambda y: torch.autograd.grad(y, x)[0], prepare=fwd, sync=sync,
                        grads=lambda g: [_np(g)])
        return Cell(lambda: torch.autograd.grad(fwd(), x)[0], sync=sync, grads=lambda g: [_np(g)])
    _only_cpu(fw, device)
    if fw == "tf":
        tf = load("tf")
        x = tf.constant(x0)

        def fwd_tf() -> Any:
            tape = tf.GradientTape()
            with tape:
                tape.watch(x)
                y = tf.reduce_sum(_fused_chain(_tfm(), x))
            return tape, y

        if part == "bwd":
            return Cell(lambda s: s[0].gradient(s[1], x), prepare=fwd_tf, grads=lambda g: [_np(g)])

        def run_tf() -> Any:
            tape, y = fwd_tf()
            return tape.gradient(y, x)

        return Cell(run_tf, grads=lambda g: [_np(g)])
    if part == "bwd":
        raise Unavailable(f"{fw}: backward-only timing not separable")
    if fw == "jax":
        jax = load("jax")
        jnp = jax.numpy
        g = jax.jit(jax.grad(lambda v: jnp.sum(_fused_chain(jnp, v))))
        x = jnp.asarray(x0)
        return Cell(lambda: g(x).block_until_ready(), grads=lambda r: [_np(r)])
    if fw == "autograd":
        ag = load("autograd")
        anp = importlib.import_module("autograd.numpy")
        g = ag.grad(lambda v: anp.sum(_fused_chain(anp, v)))
        return Cell(lambda: g(x0), grads=lambda r: [_np(r)])
    raise Unavailable(f"unknown framework {fw!r}")


def build_copy(device: str = "cpu", n: int = FUSED_N, fw: str = "cupy") -> Cell:
    """A copy of the fused workload's array into a preallocated buffer (bandwidth reference):
    ``np.copyto`` on the CPU, ``cupy.copyto`` on a device; ``fw="torch"``: ``Tensor.copy_`` on
    ``device``."""
    x0 = fused_input(n)
    if fw == "torch":
        torch = load("torch")
        xt = torch.tensor(x0, device=_torch_device(device))
        outt = torch.empty_like(xt)
        return Cell(lambda: outt.copy_(xt), sync=_torch_sync(device))
    if device == "cpu":
        out = np.empty_like(x0)
        return Cell(lambda: np.copyto(out, x0))
    cp = _cupy()
    x = cp.asarray(x0)
    out = cp.empty_like(x)
    return Cell(lambda: cp.copyto(out, x), sync=_cupy_sync)


# --------------------------------------------------------------------------- MLPs
def mlp_data(sizes: tuple[int, ...], batch: int) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Inputs X (batch, in), targets T (batch, out) and params [W1, b1, W2, b2, ...]."""
    rng = np.random.default_rng(1)
    X = rng.standard_normal((batch, sizes[0]), dtype=np.float32)
    T = rng.standard_normal((batch, sizes[-1]), dtype=np.float32)
    params = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        lim = np.sqrt(6.0 / (fan_in + fan_out))
        params.append(rng.uniform(-lim, lim, (fan_in, fan_out)).astype(np.float32))
        params.append(np.zeros(fan_out, np.float32))
    return X, T, params


def mlp_labels(sizes: tuple[int, ...], batch: int) -> np.ndarray:
    """Integer class labels (batch,) in [0, sizes[-1]) for the cross-entropy MLP rows (int64)."""
    return np.random.default_rng(3).integers(0, sizes[-1], batch)


def _mlp_logits(m: Any, matmul: Callable, params: list, X: Any) -> Any:
    """The tanh MLP's output layer (no activation on the last layer)."""
    h = X
    nl = len(params) // 2
    for i in range(nl):
        h = matmul(h, params[2 * i]) + params[2 * i + 1]
        if i < nl - 1:
            h = m.tanh(h)
    return h


def _anp_cross_entropy(anp: Any, logits: Any, labels: np.ndarray) -> Any:
    """Mean softmax cross-entropy on integer labels for HIPS autograd (stable log-softmax)."""
    z = logits - anp.max(logits, axis=1, keepdims=True)
    lp = z - anp.log(anp.sum(anp.exp(z), axis=1, keepdims=True))
    return -anp.mean(lp[np.arange(labels.shape[0]), labels])


def _mlp_loss(m: Any, matmul: Callable, params: list, X: Any, T: Any, batch: int) -> Any:
    """tanh MLP, loss = 0.5 * sum((out - T)^2) / batch (the same in every framework)."""
    h = X
    nl = len(params) // 2
    for i in range(nl):
        h = matmul(h, params[2 * i]) + params[2 * i + 1]
        if i < nl - 1:
            h = m.tanh(h)
    d = h - T
    return m.sum(d * d) * (0.5 / batch)


def _np_mlp_grads(params: list[np.ndarray], X: np.ndarray, T: np.ndarray,
                  batch: int, loss: str = "mse") -> list[np.ndarray]:
    """Hand-written forward and backward of :func:`_mlp_loss` (``loss="mse"``), or of the mean
    softmax cross-entropy on integer labels ``T`` (``loss="ce"``; the loss value is computed
    too, as every other framework computes it)."""
    nl = len(params) // 2
    acts = [X]
    h = X
    for i in range(nl):
        h = h @ params[2 * i] + params[2 * i + 1]
        if i < nl - 1:
            h = np.tanh(h)
        acts.append(h)
    if loss == "ce":
        rows = np.arange(batch)
        z = h - h.max(axis=1, keepdims=True)
        e = np.exp(z)
        s = e.sum(axis=1, keepdims=True)
        np.mean(np.log(s[:, 0]) - z[rows, T])  # the loss value
        g = e / s
        g[rows, T] -= np.float32(1.0)
        g *= np.float32(1.0 / batch)
    else:
        g = (h - T) * np.float32(1.0 / batch)
    grads: list[np.ndarray] = [None] * len(params)  # type: ignore[list-item]
    for i in reversed(range(nl)):
        if i < nl - 1:
            a = acts[i + 1]
            g = g * (np.float32(1.0) - a * a)
        grads[2 * i] = acts[i].T @ g
        grads[2 * i + 1] = g.sum(axis=0)
        if i > 0:
            g = g @ params[2 * i].T
    return grads


class _NpAdam:
    """Hand-written Adam (Keras formulation, in place) used by numpy and autograd cells."""

    def __init__(self, params: list[np.ndarray], lr: float = ADAM["lr"], beta1: float = ADAM["beta1"],
                 beta2: float = ADAM["beta2"], eps: float = ADAM["eps"]) -> None:
        self.lr, self.b1, self.b2, self.eps = lr, beta1, beta2, eps
        self.m = [np.zeros_like(p) for p in params]
        self.v = [np.zeros_like(p) for p in params]
        self.t = 0

    def step(self, params: list[np.ndarray], grads: list[np.ndarray]) -> None:
        self.t += 1
        b1, b2 = self.b1, self.b2
        alpha = np.float32(self.lr * np.sqrt(1 - b2 ** self.t) / (1 - b1 ** self.t))
        for p, g, m, v in zip(params, grads, self.m, self.v):
            m *= np.float32(b1)
            m += np.float32(1 - b1) * g
            v *= np.float32(b2)
            v += np.float32(1 - b2) * (g * g)
            p -= alpha * m / (np.sqrt(v) + np.float32(self.eps))


def _jax_adam_cell(jax: Any, jnp: Any, loss_j: Callable, P0: list) -> Cell:
    """A jitted training step (gradients of ``loss_j`` + the Keras-formulation Adam update)."""
    b1, b2, eps, lr = ADAM["beta1"], ADAM["beta2"], ADAM["eps"], ADAM["lr"]

    @jax.jit
    def step(ps: list, ms: list, vs: list, t: Any) -> tuple:
        grads = jax.grad(loss_j)(ps)
        t = t + 1
        alpha = lr * jnp.sqrt(1 - b2 ** t) / (1 - b1 ** t)
        ms = [b1 * m + (1 - b1) * g for m, g in zip(ms, grads)]
        vs = [b2 * v + (1 - b2) * g * g for v, g in zip(vs, grads)]
        ps = [p - alpha * m / (jnp.sqrt(v) + eps) for p, m, v in zip(ps, ms, vs)]
        return ps, ms, vs, t, grads

    state = {"ps": [jnp.asarray(p) for p in P0], "ms": [jnp.zeros_like(p) for p in P0],
             "vs": [jnp.zeros_like(p) for p in P0], "t": jnp.float32(0)}

    def run_j() -> Any:
        ps, ms, vs, t, grads = step(state["ps"], state["ms"], state["vs"], state["t"])
        state.update(ps=ps, ms=ms, vs=vs, t=t)
        return jax.block_until_ready(grads)

    return Cell(run_j, grads=lambda gs: [_np(a) for a in gs])


def build_mlp(fw: str, sizes: tuple[int, ...], batch: int, train: bool = False,
              fusion: bool | None = None, device: str = "cpu", loss: str = "mse") -> Cell:
    """Forward + backward of a tanh MLP (gradients w.r.t. all parameters); with ``train`` a
    whole training step including an Adam update. ``loss`` is "mse" (``0.5 * sum((out -
    T)^2) / batch``, :func:`_mlp_loss`) or "ce" (softmax cross-entropy on integer labels
    :func:`mlp_labels`, mean over the batch, each framework's own op for it)."""
    if loss not in ("mse", "ce"):
        raise ValueError(f"loss must be 'mse' or 'ce', got {loss!r}")
    ce = loss == "ce"
    X0, T0, P0 = mlp_data(sizes, batch)
    if ce:
        T0 = mlp_labels(sizes, batch)
    if fw in ("gradtape", "gradtape[compiled]", "gradtape[graph]"):
        G = _GT(fusion, device)
        gt = G.gt
        if train and not hasattr(getattr(gt, "optimizers", None), "Adam"):
            raise Unavailable("gradtape.optimizers.Adam not available yet")
        nn = getattr(gt, "nn", None)
        if ce and not hasattr(nn, "cross_entropy"):
            raise Unavailable("gradtape lacks nn.cross_entropy")
        with G:
            params = [gt.Variable(p) for p in P0]
            X = gt.tensor(X0)
            # integer labels go in as the NumPy array a program would have (as in build_conv)
            T = (T0 if device == "cpu" else gt.tensor(T0)) if ce else gt.tensor(T0)
            opt = gt.optimizers.Adam(ADAM["lr"], epsilon=ADAM["eps"]) if train else None

        if ce:
            def body(X: Any, T: Any) -> Any:
                with gt.GradientTape() as tape:
                    loss = nn.cross_entropy(_mlp_logits(gt, gt.matmul, params, X), T)
                grads = tape.gradient(loss, params)
                if opt is not None:
                    opt.apply_gradients(zip(grads, params))
                return grads
        else:
            def body(X: Any, T: Any) -> Any:
                with gt.GradientTape() as tape:
                    loss = _mlp_loss(gt, gt.matmul, params, X, T, batch)
                grads = tape.gradient(loss, params)
                if opt is not None:
                    opt.apply_gradients(zip(grads, params))
                return grads

        step = _maybe_compiled(gt, fw, body)
        return G.cell(lambda: step(X, T), grads=lambda gs: [_np(g.numpy()) for g in gs])
    if fw == "torch":
        torch = load("torch")
        F = importlib.import_module("torch.nn.functional")
        dev = _torch_device(device)
        params = [torch.tensor(p, device=dev, requires_grad=True) for p in P0]
        X, T = torch.tensor(X0, device=dev), torch.tensor(T0, device=dev)
        opt = torch.optim.Adam(params, lr=ADAM["lr"], eps=ADAM["eps"]) if train else None
        sync = _torch_sync(device)

        def run_t() -> Any:
            if ce:
                loss = F.cross_entropy(_mlp_logits(torch, torch.matmul, params, X), T)
            else:
                loss = _mlp_loss(torch, torch.matmul, params, X, T, batch)
            if opt is None:
                return torch.autograd.grad(loss, params)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return [p.grad for p in params]

        return Cell(run_t, sync=sync, grads=lambda gs: [_np(g) for g in gs])
    _only_cpu(fw, device)
    if fw == "numpy":
        params = [p.copy() for p in P0]
        opt = _NpAdam(params) if train else None

        def run_np() -> Any:
            grads = _np_mlp_grads(params, X0, T0, batch, loss)
            if opt is not None:
                opt.step(params, grads)
            return grads

        return Cell(run_np, grads=lambda gs: list(gs))
    if fw == "tf":
        tf = load("tf")
        params = [tf.Variable(p) for p in P0]
        X, T = tf.constant(X0), tf.constant(T0)
        opt = None
        if train:
            opt = tf.keras.optimizers.Adam(learning_rate=ADAM["lr"], epsilon=ADAM["eps"])
        tfm = _tfm()

        def run_tf() -> Any:
            with tf.GradientTape() as tape:
                if ce:
                    logits = _mlp_logits(tfm, tf.matmul, params, X)
                    loss = tf.reduce_mean(
                        tf.nn.sparse_softmax_cross_entropy_with_logits(labels=T, logits=logits))
                else:
                    loss = _mlp_loss(_tfm(), tf.matmul, params, X, T, batch)
            grads = tape.gradient(loss, params)
            if opt is not None:
                opt.apply_gradients(zip(grads, params))
            return grads

        return Cell(run_tf, grads=lambda gs: [_np(g) for g in gs])
    if fw == "jax":
        jax = load("jax")
        jnp = jax.numpy
        X, T = jnp.asarray(X0), jnp.asarray(T0)

        def loss_j(ps: list) -> Any:
            if ce:
                lp = jax.nn.log_softmax(_mlp_logits(jnp, jnp.matmul, ps, X))
                return -jnp.mean(jnp.take_along_axis(lp, T[:, None], axis=1))
            return _mlp_loss(jnp, jnp.matmul, ps, X, T, batch)

        if not train:
            g = jax.jit(jax.grad(loss_j))
            ps = [jnp.asarray(p) for p in P0]
            return Cell(lambda: jax.block_until_ready(g(ps)), grads=lambda gs: [_np(a) for a in gs])
        return _jax_adam_cell(jax, jnp, loss_j, P0)
    if fw == "autograd":
        ag = load("autograd")
        anp = importlib.import_module("autograd.numpy")
        params = [p.copy() for p in P0]
        if ce:
            g = ag.grad(lambda ps: _anp_cross_entropy(anp, _mlp_logits(anp, anp.matmul, ps, X0),
                                                      T0))
        else:
            g = ag.grad(lambda ps: _mlp_loss(anp, anp.matmul, ps, X0, T0, batch))
        opt = _NpAdam(params) if train else None

        def run_a() -> Any:
            grads = g(params)
            if opt is not None:
                opt.step(params, grads)
            return grads

        return Cell(run_a, grads=lambda gs: [_np(a) for a in gs])
    raise Unavailable(f"unknown framework {fw!r}")


# --------------------------------------------------------------------------- small conv net
def conv_data() -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """X (B, 1, H, W), integer labels (B,), params [K1 (c1,1,3,3), b1, K2 (c2,c1,3,3), b2,
    W (c2*(H/4)*(W/4), classes), b]."""
    B, hw, c1, c2, k = CONV["batch"], CONV["hw"], CONV["c1"], CONV["c2"], CONV["classes"]
    rng = np.random.default_rng(2)
    X = rng.standard_normal((B, 1, hw, hw), dtype=np.float32)
    y = rng.integers(0, k, B)
    flat = c2 * (hw // 4) * (hw // 4)

    def he(shape: tuple, fan_in: int) -> np.ndarray:
        return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)

    params = [he((c1, 1, 3, 3), 9), np.zeros(c1, np.float32),
              he((c2, c1, 3, 3), 9 * c1), np.zeros(c2, np.float32),
              he((flat, k), flat), np.zeros(k, np.float32)]
    return X, y, params


def _gt_conv_check(gt: Any, adam: bool = False) -> None:
    """Raise :class:`Unavailable` naming what the conv net needs and gradtape lacks."""
    nn = getattr(gt, "nn", None)
    missing = [name for name in ("conv2d", "max_pool2d", "cross_entropy") if not hasattr(nn, name)]
    if not hasattr(gt, "relu"):
        missing.append("relu")
    if adam and not hasattr(getattr(gt, "optimizers", None), "Adam"):
        missing.append("optimizers.Adam")
    if missing:
        raise Unavailable("gradtape lacks " + ", ".join(missing))


def _gt_conv_logits(gt: Any, ps: list, X: Any) -> Any:
    """The conv net's logits in gradtape (X: (B, 1, H, W))."""
    nn = gt.nn
    K1, b1, K2, b2, W, b = ps
    h = gt.relu(nn.conv2d(X, K1, padding=1) + gt.reshape(b1, (1, -1, 1, 1)))
    h = nn.max_pool2d(h, 2)
    h = gt.relu(nn.conv2d(h, K2, padding=1) + gt.reshape(b2, (1, -1, 1, 1)))
    h = nn.max_pool2d(h, 2)
    return gt.matmul(gt.reshape(h, (X.shape[0], -1)), W) + b


def _torch_conv_logits(F: Any, ps: list, X: Any) -> Any:
    """The conv net's logits in PyTorch (``F`` is ``torch.nn.functional``)."""
    K1, b1, K2, b2, W, b = ps
    h = F.max_pool2d(F.relu(F.conv2d(X, K1, b1, padding=1)), 2)
    h = F.max_pool2d(F.relu(F.conv2d(h, K2, b2, padding=1)), 2)
    return h.reshape(X.shape[0], -1) @ W + b


def _jax_conv_logits(jax: Any, ps: list, X: Any) -> Any:
    """The conv net's logits in JAX (NCHW / OIHW, as the other frameworks)."""
    jnp, lax = jax.numpy, jax.lax
    dn = ("NCHW", "OIHW", "NCHW")

    def pool(h: Any) -> Any:
        return lax.reduce_window(h, -jnp.inf, lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")

    K1, b1, K2, b2, W, b = ps
    h = lax.conv_general_dilated(X, K1, (1, 1), ((1, 1), (1, 1)), dimension_numbers=dn)
    h = pool(jax.nn.relu(h + b1[None, :, None, None]))
    h = lax.conv_general_dilated(h, K2, (1, 1), ((1, 1), (1, 1)), dimension_numbers=dn)
    h = pool(jax.nn.relu(h + b2[None, :, None, None]))
    return h.reshape(X.shape[0], -1) @ W + b


def build_conv(fw: str, device: str = "cpu") -> Cell:
    """One training step (forward, backward, Adam) of conv3x3(1->8)-relu-maxpool2-conv3x3(8->16)-
    relu-maxpool2-dense(784->10), cross-entropy on integer labels, batch 32 of 1x28x28."""
    X0, y0, P0 = conv_data()
    B = CONV["batch"]
    if fw in ("gradtape", "gradtape[compiled]", "gradtape[graph]"):
        G = _GT(None, device)
        gt = G.gt
        _gt_conv_check(gt, adam=True)
        with G:
            params = [gt.Variable(p) for p in P0]
            X = gt.tensor(X0)
            y = y0 if device == "cpu" else gt.tensor(y0)
            opt = gt.optimizers.Adam(ADAM["lr"], epsilon=ADAM["eps"])

        def body(X: Any, y: Any) -> Any:
            with gt.GradientTape() as tape:
                loss = gt.nn.cross_entropy(_gt_conv_logits(gt, params, X), y)
            grads = tape.gradient(loss, params)
            opt.apply_gradients(zip(grads, params))
            return grads

        step = _maybe_compiled(gt, fw, body)
        return G.cell(lambda: step(X, y), grads=lambda gs: [_np(g.numpy()) for g in gs])
    if fw == "torch":
        torch = load("torch")
        F = importlib.import_module("torch.nn.functional")
        dev = _torch_device(device)
        params = [torch.tensor(p, device=dev, requires_grad=True) for p in P0]
        X, y = torch.tensor(X0, device=dev), torch.tensor(y0, device=dev)
        opt = torch.optim.Adam(params, lr=ADAM["lr"], eps=ADAM["eps"])

        def run_t() -> Any:
            loss = F.cross_entropy(_torch_conv_logits(F, params, X), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return [p.grad for p in params]

        return Cell(run_t, sync=_torch_sync(device), grads=lambda gs: [_np(g) for g in gs])
    _only_cpu(fw, device)
    if fw == "tf":
        tf = load("tf")
        # TF's CPU conv needs NHWC / HWIO: same maths, its native layout.
        X = tf.constant(X0.transpose(0, 2, 3, 1))
        y = tf.constant(y0)
        K1, b1, K2, b2, W, b = P0
        # flatten order differs (NHWC), so permute W's rows to match the NCHW flatten
        c2, s = CONV["c2"], CONV["hw"] // 4
        Wn = W.reshape(c2, s, s, -1).transpose(1, 2, 0, 3).reshape(c2 * s * s, -1)
        params = [tf.Variable(v) for v in (K1.transpose(2, 3, 1, 0), b1, K2.transpose(2, 3, 1, 0),
                                           b2, Wn, b)]
        opt = tf.keras.optimizers.Adam(learning_rate=ADAM["lr"], epsilon=ADAM["eps"])

        def run_tf() -> Any:
            k1, c1b, k2, c2b, w, bb = params
            with tf.GradientTape() as tape:
                h = tf.nn.relu(tf.nn.conv2d(X, k1, 1, "SAME") + c1b)
                h = tf.nn.max_pool2d(h, 2, 2, "VALID")
                h = tf.nn.relu(tf.nn.conv2d(h, k2, 1, "SAME") + c2b)
                h = tf.nn.max_pool2d(h, 2, 2, "VALID")
                logits = tf.reshape(h, (B, -1)) @ w + bb
                loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))
            grads = tape.gradient(loss, params)
            opt.apply_gradients(zip(grads, params))
            return grads

        def back_to_nchw(gs: list) -> list[np.ndarray]:
            g = [_np(a) for a in gs]
            gw = g[4].reshape(s, s, c2, -1).transpose(2, 0, 1, 3).reshape(c2 * s * s, -1)
            return [g[0].transpose(3, 2, 0, 1), g[1], g[2].transpose(3, 2, 0, 1), g[3], gw, g[5]]

        return Cell(run_tf, grads=back_to_nchw)
    if fw == "jax":
        jax = load("jax")
        jnp = jax.numpy
        X, y = jnp.asarray(X0), jnp.asarray(y0)

        def loss_j(ps: list) -> Any:
            lp = jax.nn.log_softmax(_jax_conv_logits(jax, ps, X))
            return -jnp.mean(jnp.take_along_axis(lp, y[:, None], axis=1))

        return _jax_adam_cell(jax, jnp, loss_j, P0)
    if fw == "numpy":
        return _np_conv_cell(X0, y0, P0)
    raise Unavailable(f"{fw}: no conv net written for it")


def _im2col(x: np.ndarray) -> np.ndarray:
    """3x3, stride 1, padding 1: (B, C, H, W) -> (B*H*W, C*9)."""
    B, C, H, W = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    s = np.lib.stride_tricks.sliding_window_view(xp, (3, 3), axis=(2, 3))  # B,C,H,W,3,3
    return s.transpose(0, 2, 3, 1, 4, 5).reshape(B * H * W, C * 9)


def _col2im(cols: np.ndarray, shape: tuple) -> np.ndarray:
    B, C, H, W = shape
    c = cols.reshape(B, H, W, C, 3, 3)
    out = np.zeros((B, C, H + 2, W + 2), cols.dtype)
    for i in range(3):
        for j in range(3):
            out[:, :, i:i + H, j:j + W] += c[:, :, :, :, i, j].transpose(0, 3, 1, 2)
    return out[:, :, 1:-1, 1:-1]


def _np_conv_fwd(x: np.ndarray, K: np.ndarray, b: np.ndarray) -> tuple:
    """3x3 conv, padding 1, by im2col + matmul: (output NCHW, the unfolded input)."""
    Bn, C, H, W = x.shape
    cols = _im2col(x)
    out = cols @ K.reshape(K.shape[0], -1).T + b  # (B*H*W, O)
    return out.reshape(Bn, H, W, -1).transpose(0, 3, 1, 2), cols


def _np_conv_bwd(g: np.ndarray, cols: np.ndarray, K: np.ndarray, xshape: tuple, need_dx: bool,
                 per_example: bool = False) -> tuple:
    """(dx or None, dK, db); with ``per_example`` dK and db get a leading batch axis (example
    b's kernel gradient is its own output cotangents times its own unfolded patches)."""
    n_out = K.shape[0]
    g2 = g.transpose(0, 2, 3, 1).reshape(-1, n_out)
    if per_example:
        Bn = g.shape[0]
        g3 = g2.reshape(Bn, -1, n_out)  # (B, H*W, O)
        dK = np.matmul(g3.transpose(0, 2, 1), cols.reshape(Bn, -1, cols.shape[1]))
        dK = dK.reshape((Bn, *K.shape))
        db = g3.sum(axis=1)
    else:
        dK = (g2.T @ cols).reshape(K.shape)
        db = g2.sum(axis=0)
    dx = _col2im(g2 @ K.reshape(n_out, -1), xshape) if need_dx else None
    return dx, dK, db


def _np_pool_fwd(h: np.ndarray) -> tuple:
    """2x2 max pool: (output, the mask routing the gradient; ties split evenly)."""
    Bn, C, H, W = h.shape
    r = h.reshape(Bn, C, H // 2, 2, W // 2, 2)
    m = r.max(axis=(3, 5))
    mask = r == m[:, :, :, None, :, None]
    mask = mask / mask.sum(axis=(3, 5), keepdims=True)  # ties split evenly
    return m, mask.astype(h.dtype)


def _np_pool_bwd(g: np.ndarray, mask: np.ndarray) -> np.ndarray:
    Bn, C, H2, _, W2, _ = mask.shape
    return (mask * g[:, :, :, None, :, None]).reshape(Bn, C, H2 * 2, W2 * 2)


def _np_conv_grads(params: list[np.ndarray], X: np.ndarray, y: np.ndarray,
                   per_example: bool = False) -> list[np.ndarray]:
    """Hand-written forward and backward of the conv net with softmax cross-entropy: the
    gradients of the mean loss, or with ``per_example`` those of each example's own loss
    (every gradient with a leading batch axis)."""
    K1, b1, K2, b2, W, b = params
    B = X.shape[0]
    rows = np.arange(B)
    z1, cols1 = _np_conv_fwd(X, K1, b1)
    a1 = np.maximum(z1, 0)
    p1, m1 = _np_pool_fwd(a1)
    z2, cols2 = _np_conv_fwd(p1, K2, b2)
    a2 = np.maximum(z2, 0)
    p2, m2 = _np_pool_fwd(a2)
    flat = p2.reshape(B, -1)
    logits = flat @ W + b
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    s = e.sum(axis=1, keepdims=True)
    np.log(s[:, 0]) - z[rows, y]  # the per-example losses, as every framework computes them
    gl = e / s
    gl[rows, y] -= 1
    if per_example:
        dW = flat[:, :, None] * gl[:, None, :]
        dbb = gl
    else:
        gl *= np.float32(1.0 / B)
        dW = flat.T @ gl
        dbb = gl.sum(axis=0)
    g = (gl @ W.T).reshape(p2.shape)
    g = _np_pool_bwd(g, m2) * (z2 > 0)
    g, dK2, db2 = _np_conv_bwd(g, cols2, K2, p1.shape, True, per_example)
    g = _np_pool_bwd(g, m1) * (z1 > 0)
    _, dK1, db1 = _np_conv_bwd(g, cols1, K1, X.shape, False, per_example)
    return [dK1, db1, dK2, db2, dW, dbb]


def _np_conv_cell(X0: np.ndarray, y0: np.ndarray, P0: list[np.ndarray]) -> Cell:
    """Hand-written NumPy conv net (im2col + matmul) with manual backward and Adam."""
    params = [p.copy() for p in P0]
    opt = _NpAdam(params)

    def run() -> list[np.ndarray]:
        grads = _np_conv_grads(params, X0, y0)
        opt.step(params, grads)
        return grads

    return Cell(run, grads=lambda gs: list(gs))


# --------------------------------------------------------------------------- batched gradients
JACOBIAN_N = 256
PEX_MLP = dict(sizes=(64, 128, 10), batch=128)
DP_CLIP = 1.0  # DP-SGD clip norm C

_PEX_MISSING = ("gradtape.GradientTape.per_example_gradients does not exist yet (being written in "
                "gradtape/_src/frontend/per_example.py)")


def _split(fw: str) -> tuple[str, str]:
    """``"torch[batch]"`` -> ``("torch", "batch")``; ``"jax"`` -> ``("jax", "")``."""
    base, _, rest = fw.partition("[")
    return base, rest.rstrip("]")


def _gt_per_example_api(gt: Any) -> None:
    if not hasattr(gt.GradientTape, "per_example_gradients"):
        raise Unavailable(_PEX_MISSING)


def _gt_transforms(gt: Any, *names: str) -> None:
    missing = [n for n in names if not hasattr(gt, n)]
    if missing:
        raise Unavailable("gradtape lacks " + ", ".join(f"gt.{n}" for n in missing))


def _gt_clipped_sum(gt: Any, gs: list, B: int) -> list:
    """DP-SGD clipped sum of materialized per-example gradients ``gs`` ([B, ...] each) in
    gradtape ops: joint norm over all of them, ``c_b = min(1, C / n_b)``, then ``Σ_b c_b g_b``."""
    n2 = None
    for g in gs:
        s = gt.sum(gt.reshape(g * g, (B, -1)), axis=1)
        n2 = s if n2 is None else n2 + s
    c = gt.reshape(gt.minimum(DP_CLIP / gt.sqrt(n2), 1.0), (1, B))
    return [gt.reshape(gt.matmul(c, gt.reshape(g, (B, -1))), tuple(g.shape[1:])) for g in gs]


def _torch_clipped_sum(torch: Any, gs: list) -> list:
    n = torch.sqrt(sum((g.reshape(g.shape[0], -1) ** 2).sum(1) for g in gs))
    c = torch.clamp(DP_CLIP / n, max=1.0)
    return [torch.tensordot(c, g, dims=1) for g in gs]


def _jax_clipped_sum(jnp: Any, gs: list) -> list:
    n = jnp.sqrt(sum((g.reshape(g.shape[0], -1) ** 2).sum(1) for g in gs))
    c = jnp.minimum(1.0, DP_CLIP / n)
    return [jnp.tensordot(c, g, axes=1) for g in gs]


# ---- Jacobian
def jacobian_data(n: int = JACOBIAN_N) -> tuple[np.ndarray, np.ndarray]:
    """W (n, n) with entries N(0, 1/n) (so W @ x stays O(1) and tanh does not saturate), x (n,)."""
    rng = np.random.default_rng(4)
    W = (rng.standard_normal((n, n)) / np.sqrt(n)).astype(np.float32)
    return W, rng.standard_normal(n, dtype=np.float32)


def build_jacobian(fw: str, device: str = "cpu") -> Cell:
    """Jacobian of ``tanh(W @ x)`` with respect to x (shape (n, n)); each framework's
    vectorized Jacobian (one batched backward / pfor / vmap of the VJP). ``device`` "cuda":
    gradtape on CuPy and PyTorch on CUDA (the others are CPU only)."""
    W0, x0 = jacobian_data()
    if fw == "gradtape":
        G = _GT(None, device)
        with G as gt:
            W, x = gt.tensor(W0), gt.tensor(x0)

        def run() -> Any:
            with gt.GradientTape() as tape:
                tape.watch(x)
                y = gt.tanh(gt.matmul(W, x))
            return tape.jacobian(y, x)

        return G.cell(run, grads=lambda J: [_np(J.numpy())])
    if fw == "torch":
        torch = load("torch")
        func = importlib.import_module("torch.func")
        dev = _torch_device(device)
        W, x = torch.tensor(W0, device=dev), torch.tensor(x0, device=dev)
        jac = func.jacrev(lambda v: torch.tanh(W @ v))
        return Cell(lambda: jac(x), sync=_torch_sync(device), grads=lambda J: [_np(J)])
    _only_cpu(fw, device)
    if fw == "numpy":
        def run_np() -> np.ndarray:
            y = np.tanh(W0 @ x0)
            return (np.float32(1.0) - y * y)[:, None] * W0

        return Cell(run_np, grads=lambda J: [J])
    if fw == "jax":
        jax = load("jax")
        jnp = jax.numpy
        jac_j = jax.jit(jax.jacrev(lambda w, v: jnp.tanh(w @ v), argnums=1))
        W, x = jnp.asarray(W0), jnp.asarray(x0)
        return Cell(lambda: jac_j(W, x).block_until_ready(), grads=lambda J: [_np(J)])
    if fw == "tf":
        tf = load("tf")

        @tf.function
        def jac_tf(w: Any, v: Any) -> Any:
            with tf.GradientTape() as tape:
                tape.watch(v)
                y = tf.tanh(tf.linalg.matvec(w, v))
            return tape.jacobian(y, v)  # experimental_use_pfor=True (the default)

        W, x = tf.constant(W0), tf.constant(x0)
        return Cell(lambda: jac_tf(W, x), grads=lambda J: [_np(J)])
    raise Unavailable(f"{fw}: no Jacobian written for it")


# ---- per-example gradients and DP-SGD of a small cross-entropy MLP
def _np_mlp_per_example(params: list[np.ndarray], X: np.ndarray, y: np.ndarray,
                        mode: str = "per_example") -> list[np.ndarray]:
    """Hand-written per-example gradients of the tanh MLP with softmax cross-entropy on integer
    labels (example b's own loss ``logsumexp(z_b) - z_b[y_b]``). ``mode``:

    - ``"per_example"``: every gradient with a leading batch axis, ``a_b g_bᵀ`` per dense layer;
    - ``"clip"``: the DP-SGD clipped sum ``Σ_b c_b G_b``, ``c_b = min(1, C / n_b)`` with the joint
      norm ``n_b`` over all parameters, from the materialized per-example gradients;
    - ``"ghost"``: the same sum without materializing them: ``‖a_b g_bᵀ‖² = ‖a_b‖²‖g_b‖²``, bias
      ``‖g_b‖²``, then one matmul per layer with the cotangents scaled by ``c``.
    """
    nl = len(params) // 2
    B = X.shape[0]
    rows = np.arange(B)
    acts = [X]
    h = X
    for i in range(nl):
        h = h @ params[2 * i] + params[2 * i + 1]
        if i < nl - 1:
            h = np.tanh(h)
        acts.append(h)
    z = h - h.max(axis=1, keepdims=True)
    e = np.exp(z)
    s = e.sum(axis=1, keepdims=True)
    np.log(s[:, 0]) - z[rows, y]  # the per-example losses, as every framework computes them
    g = e / s
    g[rows, y] -= np.float32(1.0)
    cots: list[np.ndarray] = [g] * nl  # output cotangent of each dense layer, per example
    for i in reversed(range(nl)):
        if i < nl - 1:
            a = acts[i + 1]
            g = g * (np.float32(1.0) - a * a)
        cots[i] = g
        if i > 0:
            g = g @ params[2 * i].T
    if mode == "ghost":
        n2 = np.zeros(B, np.float32)
        for i in range(nl):
            g2 = np.einsum("bp,bp->b", cots[i], cots[i])
            n2 += np.einsum("bd,bd->b", acts[i], acts[i]) * g2 + g2
        c = np.minimum(np.float32(1.0), np.float32(DP_CLIP) / np.sqrt(n2))
        out = []
        for i in range(nl):
            gc = cots[i] * c[:, None]
            out += [acts[i].T @ gc, gc.sum(axis=0)]
        return out
    pex = []
    for i in range(nl):
        pex += [acts[i][:, :, None] * cots[i][:, None, :], cots[i]]
    if mode == "per_example":
        return pex
    n2 = sum(np.einsum("bk,bk->b", p.reshape(B, -1), p.reshape(B, -1)) for p in pex)
    c = np.minimum(np.float32(1.0), np.float32(DP_CLIP) / np.sqrt(n2))
    return [np.tensordot(c, p, axes=1) for p in pex]


def _torch_mlp_module(torch: Any, P0: list[np.ndarray]) -> Any:
    """The MLP as ``nn.Sequential`` of ``nn.Linear`` / ``nn.Tanh`` (what Opacus hooks), with the
    parameters of ``P0`` (``nn.Linear`` keeps its weight transposed)."""
    nn = torch.nn
    layers: list[Any] = []
    nl = len(P0) // 2
    for i in range(nl):
        W, b = P0[2 * i], P0[2 * i + 1]
        lin = nn.Linear(*W.shape)
        with torch.no_grad():
            lin.weight.copy_(torch.tensor(W.T))
            lin.bias.copy_(torch.tensor(b))
        layers.append(lin)
        if i < nl - 1:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers)


def _opacus_cell(module: Any, X: Any, y: Any, B: int, mode: str, to_ours: Callable) -> Cell:
    """Opacus on ``module`` with the summed per-example cross-entropy: ``mode`` "per_example"
    (``GradSampleModule``: ``p.grad_sample`` after one backward), "clip" (the same, then
    ``DPOptimizer.clip_and_accumulate``: the clipped sum in ``p.summed_grad``) or "ghost"
    (``GradSampleModuleFastGradientClipping`` with ghost clipping: norms from activations and
    backprops, a second backward with the losses scaled by the clip factors; no noise).
    ``to_ours`` maps Opacus's parameter layout to ours (untimed, in ``grads``)."""
    torch = load("torch")
    opacus = load("opacus")
    # Opacus's hooks on a model whose input needs no gradient: expected, and said on every run
    warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)
    F = importlib.import_module("torch.nn.functional")
    sgd = lambda ps: torch.optim.SGD(ps, lr=0.0)  # noqa: E731 (never stepped)
    if mode == "ghost":
        gsc = importlib.import_module("opacus.grad_sample")
        fgc = importlib.import_module("opacus.utils.fast_gradient_clipping_utils")
        opt_mod = importlib.import_module("opacus.optimizers")
        if not hasattr(gsc, "GradSampleModuleFastGradientClipping"):
            raise Unavailable(f"opacus {opacus.__version__} has no ghost clipping")
        gsm = gsc.GradSampleModuleFastGradientClipping(
            module, max_grad_norm=DP_CLIP, use_ghost_clipping=True, loss_reduction="sum")
        ps = list(gsm.parameters())
        opt = opt_mod.DPOptimizerFastGradientClipping(
            sgd(ps), noise_multiplier=0.0, max_grad_norm=DP_CLIP, expected_batch_size=B,
            loss_reduction="sum")
        crit = fgc.DPLossFastGradientClipping(
            gsm, opt, torch.nn.CrossEntropyLoss(reduction="sum"), loss_reduction="sum")

        def run_ghost() -> Any:
            opt.zero_grad(set_to_none=True)
            crit(gsm(X), y).backward()  # both backward passes
            return [p.grad for p in ps]

        return Cell(run_ghost, grads=lambda gs: to_ours([_np(g) for g in gs], False))
    gsm = opacus.GradSampleModule(module, loss_reduction="sum")
    ps = list(gsm.parameters())
    opt = None
    if mode == "clip":
        opt = opacus.optimizers.DPOptimizer(sgd(ps), noise_multiplier=0.0, max_grad_norm=DP_CLIP,
                                            expected_batch_size=B, loss_reduction="sum")

    def run_o() -> Any:
        if opt is None:
            gsm.zero_grad(set_to_none=True)
            F.cross_entropy(gsm(X), y, reduction="sum").backward()
            return [p.grad_sample for p in ps]
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(gsm(X), y, reduction="sum").backward()
        opt.clip_and_accumulate()
        return [p.summed_grad for p in ps]

    return Cell(run_o, grads=lambda gs: to_ours([_np(g) for g in gs], mode == "per_example"))


def _linear_to_ours(gs: list[np.ndarray], batched: bool) -> list[np.ndarray]:
    """``nn.Linear`` weight gradients (out, in) back to our (in, out) layout."""
    return [np.swapaxes(g, -1, -2) if g.ndim == 2 + batched else g for g in gs]


def build_per_example_mlp(fw: str, clip: bool = False, device: str = "cpu") -> Cell:
    """Per-example gradients (``clip=False``) or the DP-SGD clipped sum (``clip=True``, C =
    ``DP_CLIP``, joint norm over all parameters) of the 64-128-10 tanh MLP with softmax
    cross-entropy on integer labels, batch 128, with respect to all parameters.

    Variants: ``gradtape`` (``tape.per_example_gradients``), ``gradtape[vmap]``
    (``gt.vmap(gt.grad(loss1))``, then clip and sum in gradtape ops), ``torch`` (``torch.func``
    vmap of grad), ``opacus`` (per-sample hooks), ``opacus[ghost]`` (ghost clipping, ``clip``
    only), ``jax`` (``jax.jit`` of vmap of grad), ``numpy`` (materialized), ``numpy[ghost]``
    (ghost norms, ``clip`` only); ``*[batch]`` is each framework's plain gradient of the mean
    loss of the same net and batch (the cost of one ordinary backward, for the ratio).
    ``device`` "cuda": the gradtape and PyTorch (``torch.func``) columns on the GPU; the others
    are CPU only."""
    sizes, B = PEX_MLP["sizes"], PEX_MLP["batch"]
    X0, _, P0 = mlp_data(sizes, B)
    y0 = mlp_labels(sizes, B)
    base, var = _split(fw)
    if var == "ghost" and not clip:
        raise Unavailable("ghost norms apply to the clipped sum only (dp_sgd)")
    if base == "gradtape":
        G = _GT(None, device)
        gt = G.gt
        nn = gt.nn
        with G:
            params = [gt.Variable(p) for p in P0]
            X = gt.tensor(X0)
            labels = y0 if device == "cpu" else gt.tensor(y0)  # on the device: no copy per step
        if var == "batch":
            def run_b() -> Any:
                with gt.GradientTape() as tape:
                    loss = nn.cross_entropy(_mlp_logits(gt, gt.matmul, params, X), labels)
                return tape.gradient(loss, params)

            return G.cell(run_b, grads=lambda gs: [_np(g.numpy()) for g in gs])
        if var == "vmap":
            _gt_transforms(gt, "vmap", "grad")
            with G:
                Y = gt.tensor(y0)

            def loss1(ps: list, x: Any, yb: Any) -> Any:
                return nn.cross_entropy(_mlp_logits(gt, gt.matmul, ps, x), yb)

            pex = gt.vmap(gt.grad(loss1), in_axes=(None, 0, 0))

            def run_v() -> Any:
                gs = pex(params, X, Y)
                return _gt_clipped_sum(gt, gs, B) if clip else gs

            return G.cell(run_v, grads=lambda gs: [_np(g.numpy()) for g in gs])
        _gt_per_example_api(gt)
        kw: dict[str, Any] = dict(max_norm=DP_CLIP, reduce="sum") if clip else {}

        def run(X: Any, labels: Any) -> Any:
            with gt.GradientTape() as tape:
                losses = nn.cross_entropy(_mlp_logits(gt, gt.matmul, params, X), labels,
                                          reduction="none")
            return tape.per_example_gradients(losses, params, **kw)

        # gradtape[compiled]: the same step under gt.function (inputs passed as arguments)
        step = _maybe_compiled(gt, fw, run)
        return G.cell(lambda: step(X, labels), grads=lambda gs: [_np(g.numpy()) for g in gs])
    if base in ("torch", "opacus"):
        torch = load("torch")
        F = importlib.import_module("torch.nn.functional")
        dev = _torch_device(device)
        sync = _torch_sync(device)
        X, y = torch.tensor(X0, device=dev), torch.tensor(y0, device=dev)
        if base == "opacus":
            _only_cpu(fw, device)
            mode = "ghost" if var == "ghost" else ("clip" if clip else "per_example")
            return _opacus_cell(_torch_mlp_module(torch, P0), X, y, B, mode, _linear_to_ours)
        if var == "batch":
            params = [torch.tensor(p, device=dev, requires_grad=True) for p in P0]

            def run_tb() -> Any:
                loss = F.cross_entropy(_mlp_logits(torch, torch.matmul, params, X), y)
                return torch.autograd.grad(loss, params)

            return Cell(run_tb, sync=sync, grads=lambda gs: [_np(g) for g in gs])
        func = importlib.import_module("torch.func")
        params = [torch.tensor(p, device=dev) for p in P0]

        def loss1_t(ps: list, x: Any, yb: Any) -> Any:
            return F.cross_entropy(_mlp_logits(torch, torch.matmul, ps, x[None]), yb[None])

        pex_t = func.vmap(func.grad(loss1_t), in_dims=(None, 0, 0))

        def run_t() -> Any:
            gs = pex_t(params, X, y)
            return _torch_clipped_sum(torch, gs) if clip else gs

        return Cell(run_t, sync=sync, grads=lambda gs: [_np(g) for g in gs])
    _only_cpu(fw, device)
    if base == "numpy":
        if var == "batch":
            return Cell(lambda: _np_mlp_grads(P0, X0, y0, B, "ce"), grads=lambda gs: list(gs))
        mode = "ghost" if var == "ghost" else ("clip" if clip else "per_example")
        return Cell(lambda: _np_mlp_per_example(P0, X0, y0, mode), grads=lambda gs: list(gs))
    if base == "jax":
        jax = load("jax")
        jnp = jax.numpy
        X, y = jnp.asarray(X0), jnp.asarray(y0)
        params = [jnp.asarray(p) for p in P0]
        if var == "batch":
            def loss_b(ps: list, xs: Any, ys: Any) -> Any:
                lp = jax.nn.log_softmax(_mlp_logits(jnp, jnp.matmul, ps, xs))
                return -jnp.mean(jnp.take_along_axis(lp, ys[:, None], axis=1))

            f = jax.jit(jax.grad(loss_b))
        else:
            def loss1_j(ps: list, x: Any, yb: Any) -> Any:
                return -jax.nn.log_softmax(_mlp_logits(jnp, jnp.matmul, ps, x))[yb]

            pex_j = jax.vmap(jax.grad(loss1_j), in_axes=(None, 0, 0))
            f = jax.jit(lambda ps, xs, ys: _jax_clipped_sum(jnp, pex_j(ps, xs, ys)) if clip
                        else pex_j(ps, xs, ys))
        return Cell(lambda: jax.block_until_ready(f(params, X, y)),
                    grads=lambda gs: [_np(g) for g in gs])
    raise Unavailable(f"{fw}: no per-example MLP written for it")


# ---- per-example gradients of the small conv net
def _torch_conv_module(torch: Any, P0: list[np.ndarray]) -> Any:
    """The conv net as ``nn.Sequential`` (what Opacus hooks), parameters from ``P0``."""
    nn = torch.nn
    K1, b1, K2, b2, W, b = P0
    m = nn.Sequential(nn.Conv2d(1, K1.shape[0], 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                      nn.Conv2d(K1.shape[0], K2.shape[0], 3, padding=1), nn.ReLU(),
                      nn.MaxPool2d(2), nn.Flatten(), nn.Linear(*W.shape))
    with torch.no_grad():
        for layer, (w, bias) in zip((m[0], m[3], m[7]), ((K1, b1), (K2, b2), (W.T, b))):
            layer.weight.copy_(torch.tensor(np.ascontiguousarray(w)))
            layer.bias.copy_(torch.tensor(bias))
    return m


def _conv_to_ours(gs: list[np.ndarray], batched: bool) -> list[np.ndarray]:
    """Only the dense layer's weight (last but one) is stored transposed by ``nn.Linear``."""
    gs = list(gs)
    gs[4] = np.swapaxes(gs[4], -1, -2)
    return gs


def build_per_example_cnn(fw: str) -> Cell:
    """Per-example gradients of the conv net of :func:`build_conv` (conv3x3 1->8, relu, max pool
    2, conv3x3 8->16, relu, max pool 2, dense 784->10; softmax cross-entropy on integer labels;
    batch 32 of 1x28x28) with respect to all parameters; ``*[batch]`` is the plain gradient of
    the mean loss of the same net and batch. Variants as :func:`build_per_example_mlp`."""
    X0, y0, P0 = conv_data()
    B = CONV["batch"]
    base, var = _split(fw)
    if base == "gradtape":
        G = _GT(None, "cpu")
        gt = G.gt
        _gt_conv_check(gt)
        nn = gt.nn
        with G:
            params = [gt.Variable(p) for p in P0]
            X = gt.tensor(X0)
        if var == "batch":
            def run_b() -> Any:
                with gt.GradientTape() as tape:
                    loss = nn.cross_entropy(_gt_conv_logits(gt, params, X), y0)
                return tape.gradient(loss, params)

            return G.cell(run_b, grads=lambda gs: [_np(g.numpy()) for g in gs])
        if var == "vmap":
            _gt_transforms(gt, "vmap", "grad")
            with G:
                Y = gt.tensor(y0)
            hw = CONV["hw"]

            def loss1(ps: list, x: Any, yb: Any) -> Any:
                logits = _gt_conv_logits(gt, ps, gt.reshape(x, (1, 1, hw, hw)))
                return nn.cross_entropy(gt.reshape(logits, (-1,)), yb)

            pex = gt.vmap(gt.grad(loss1), in_axes=(None, 0, 0))
            return G.cell(lambda: pex(params, X, Y), grads=lambda gs: [_np(g.numpy()) for g in gs])
        _gt_per_example_api(gt)

        def run(X: Any, y: Any) -> Any:
            with gt.GradientTape() as tape:
                losses = nn.cross_entropy(_gt_conv_logits(gt, params, X), y, reduction="none")
            return tape.per_example_gradients(losses, params)

        # gradtape[compiled]: the same step under gt.function (the images passed as arguments)
        step = _maybe_compiled(gt, fw, run)
        return G.cell(lambda: step(X, y0), grads=lambda gs: [_np(g.numpy()) for g in gs])
    if base == "numpy":
        return Cell(lambda: _np_conv_grads(P0, X0, y0, per_example=var != "batch"),
                    grads=lambda gs: list(gs))
    if base in ("torch", "opacus"):
        torch = load("torch")
        F = importlib.import_module("torch.nn.functional")
        X, y = torch.tensor(X0), torch.tensor(y0)
        if base == "opacus":
            return _opacus_cell(_torch_conv_module(torch, P0), X, y, B, "per_example",
                                _conv_to_ours)
        if var == "batch":
            params = [torch.tensor(p, requires_grad=True) for p in P0]

            def run_tb() -> Any:
                loss = F.cross_entropy(_torch_conv_logits(F, params, X), y)
                return torch.autograd.grad(loss, params)

            return Cell(run_tb, grads=lambda gs: [_np(g) for g in gs])
        func = importlib.import_module("torch.func")
        params = [torch.tensor(p) for p in P0]

        def loss1_t(ps: list, x: Any, yb: Any) -> Any:
            return F.cross_entropy(_torch_conv_logits(F, ps, x[None]), yb[None])

        pex_t = func.vmap(func.grad(loss1_t), in_dims=(None, 0, 0))
        return Cell(lambda: pex_t(params, X, y), grads=lambda gs: [_np(g) for g in gs])
    if base == "jax":
        jax = load("jax")
        jnp = jax.numpy
        X, y = jnp.asarray(X0), jnp.asarray(y0)
        params = [jnp.asarray(p) for p in P0]
        if var == "batch":
            def loss_b(ps: list, xs: Any, ys: Any) -> Any:
                lp = jax.nn.log_softmax(_jax_conv_logits(jax, ps, xs))
                return -jnp.mean(jnp.take_along_axis(lp, ys[:, None], axis=1))

            f = jax.jit(jax.grad(loss_b))
        else:
            def loss1_j(ps: list, x: Any, yb: Any) -> Any:
                return -jax.nn.log_softmax(_jax_conv_logits(jax, ps, x[None])[0])[yb]

            f = jax.jit(jax.vmap(jax.grad(loss1_j), in_axes=(None, 0, 0)))
        return Cell(lambda: jax.block_until_ready(f(params, X, y)),
                    grads=lambda gs: [_np(g) for g in gs])
    raise Unavailable(f"{fw}: no per-example conv net written for it")


# ---- Hessian-vector product
def hvp_direction() -> np.ndarray:
    """The direction v (shape of W1 of ``MLP_LARGE``), N(0, 1)."""
    sizes = MLP_LARGE["sizes"]
    return np.random.default_rng(5).standard_normal((sizes[0], sizes[1]), dtype=np.float32)


def _np_mlp_hvp_w1(params: list[np.ndarray], X: np.ndarray, T: np.ndarray,
                   V: np.ndarray) -> np.ndarray:
    """Hand-written Hessian-vector product ``H v`` of :func:`_mlp_loss` (two tanh hidden layers)
    with respect to W1: the forward, the tangents of the forward along ``W1 + t V`` (R-op), and the
    backward differentiated along the same direction (Pearlmutter)."""
    W1, b1, W2, b2, W3, b3 = params
    one, two = np.float32(1.0), np.float32(2.0)
    inv = np.float32(1.0 / X.shape[0])
    h1 = np.tanh(X @ W1 + b1)
    h2 = np.tanh(h1 @ W2 + b2)
    d = h2 @ W3 + b3 - T
    np.sum(d * d) * np.float32(0.5) * inv  # the loss value
    d1, d2 = one - h1 * h1, one - h2 * h2
    t1 = d1 * (X @ V)  # tangent of h1
    t2 = d2 * (t1 @ W2)  # tangent of h2
    g_h2, tg_h2 = (d * inv) @ W3.T, ((t2 @ W3) * inv) @ W3.T  # cotangent of h2 and its tangent
    g_z2 = g_h2 * d2
    tg_z2 = tg_h2 * d2 - two * g_h2 * h2 * t2
    g_h1, tg_h1 = g_z2 @ W2.T, tg_z2 @ W2.T
    tg_z1 = tg_h1 * d1 - two * g_h1 * h1 * t1
    return X.T @ tg_z1


def build_hvp(fw: str) -> Cell:
    """Hessian-vector product of the ``MLP_LARGE`` loss (784-512-512-10 tanh, batch 256,
    ``0.5 * sum((out - T)^2) / batch``) with respect to W1 (the other parameters constants),
    direction :func:`hvp_direction`. ``gradtape``: nested tapes (reverse over reverse);
    ``gradtape[jvp]``: ``gt.jvp(gt.grad(loss_of_W1), (W1,), (v,))`` (forward over reverse);
    ``gradtape[hvp]``: ``gt.hvp`` (reverse over forward); ``gradtape[compiled]``: ``gt.hvp``
    under ``gt.function``; ``torch``: double backward;
    ``jax``: ``jax.jit`` of ``jvp(grad)``."""
    sizes, batch = MLP_LARGE["sizes"], MLP_LARGE["batch"]
    X0, T0, P0 = mlp_data(sizes, batch)
    V0 = hvp_direction()
    base, var = _split(fw)
    if base == "gradtape":
        G = _GT(None, "cpu")
        gt = G.gt
        with G:
            W1 = gt.Variable(P0[0])
            rest = [gt.tensor(p) for p in P0[1:]]
            X, T, V = gt.tensor(X0), gt.tensor(T0), gt.tensor(V0)
        grads = lambda hv: [_np(hv.numpy())]  # noqa: E731
        if var in ("jvp", "hvp", "compiled"):
            _gt_transforms(gt, "jvp", "grad")
            with G:
                w1 = gt.tensor(P0[0])

            def loss_of_w1(w: Any) -> Any:
                return _mlp_loss(gt, gt.matmul, [w, *rest], X, T, batch)

            g_fn = gt.grad(loss_of_w1)
            if var == "jvp":
                return G.cell(lambda: gt.jvp(g_fn, (w1,), (V,))[1], grads=grads)
            if var == "hvp":
                return G.cell(lambda: gt.hvp(loss_of_w1, (w1,), (V,))[0], grads=grads)
            # gradtape[compiled]: gt.hvp (reverse over forward) under gt.function
            step = _maybe_compiled(gt, fw, lambda w, v: gt.hvp(loss_of_w1, (w,), (v,))[0])
            return G.cell(lambda: step(w1, V), grads=grads)

        def run() -> Any:
            with gt.GradientTape() as outer:
                with gt.GradientTape() as inner:
                    loss = _mlp_loss(gt, gt.matmul, [W1, *rest], X, T, batch)
                g = inner.gradient(loss, W1)
                gv = gt.sum(g * V)
            return outer.gradient(gv, W1)

        return G.cell(run, grads=grads)
    if fw == "numpy":
        return Cell(lambda: _np_mlp_hvp_w1(P0, X0, T0, V0), grads=lambda hv: [hv])
    if fw == "torch":
        torch = load("torch")
        W1 = torch.tensor(P0[0], requires_grad=True)
        rest = [torch.tensor(p) for p in P0[1:]]
        X, T, V = torch.tensor(X0), torch.tensor(T0), torch.tensor(V0)

        def run_t() -> Any:
            loss = _mlp_loss(torch, torch.matmul, [W1, *rest], X, T, batch)
            (g,) = torch.autograd.grad(loss, W1, create_graph=True)
            return torch.autograd.grad((g * V).sum(), W1)[0]

        return Cell(run_t, grads=lambda hv: [_np(hv)])
    if fw == "jax":
        jax = load("jax")
        jnp = jax.numpy

        def loss_j(w: Any, rest: list, xs: Any, ts: Any) -> Any:
            return _mlp_loss(jnp, jnp.matmul, [w, *rest], xs, ts, batch)

        @jax.jit
        def hvp_j(w: Any, v: Any, rest: list, xs: Any, ts: Any) -> Any:
            return jax.jvp(lambda u: jax.grad(loss_j)(u, rest, xs, ts), (w,), (v,))[1]

        args = [jnp.asarray(P0[0]), jnp.asarray(V0), [jnp.asarray(p) for p in P0[1:]],
                jnp.asarray(X0), jnp.asarray(T0)]
        return Cell(lambda: hvp_j(*args).block_until_ready(), grads=lambda hv: [_np(hv)])
    raise Unavailable(f"{fw}: no Hessian-vector product written for it")


# --------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class Spec:
    """A row of the comparison: a workload, what part of it is timed, and how to report it."""

    key: str
    title: str
    build: Callable[..., Cell]
    frameworks: tuple[str, ...]
    per: int = 1  # report time / per (ops in the overhead chain)
    unit: str = "ms"


def specs(device: str = "cpu") -> list[Spec]:
    """Every row of the comparison for ``device`` ("cpu" or "cuda")."""
    all_fw = FRAMEWORKS
    if device != "cpu":
        return [
            Spec("gpu_copy", "device-to-device copy of 2^22 float32", lambda fw: build_copy("cuda"),
                 ("cupy",)),
            Spec("gpu_fused", "fused chain fwd+bwd, 2^22 float32",
                 lambda fw: _fw_variant(fw, lambda f, fu: build_fused(f, "fwd+bwd", fu, "cuda")),
                 ("gradtape", "gradtape[nofusion]", "cupy", "torch")),
            Spec("gpu_fused_bwd", "fused chain backward only, 2^22 float32",
                 lambda fw: _fw_variant(fw, lambda f, fu: build_fused(f, "bwd", fu, "cuda")),
                 ("gradtape", "gradtape[nofusion]", "cupy", "torch")),
            Spec("gpu_mlp_large", "MLP 784-512-512-10 tanh, batch 256, fwd+bwd",
                 lambda fw: build_mlp(fw, device="cuda", **MLP_LARGE), ("gradtape", "torch")),
        ]
    return [
        Spec("overhead", f"{OVERHEAD_OPS} elementwise ops on (16,), fwd+bwd",
             lambda fw: _fw_variant(fw, lambda f, fu: build_overhead(f, fu)),
             ("gradtape", "gradtape[nofusion]") + all_fw[1:], per=OVERHEAD_OPS, unit="us/op"),
        Spec("overhead_mixed",
             f"{MIXED_STEPS} x (t=tanh(y+w), e=exp(t)*{MIXED_SCALE}, y=t+e) + sum on (16,), "
             f"fwd+bwd to x, w",
             lambda fw: _fw_variant(fw, lambda f, fu: build_overhead_mixed(f, fu)),
             ("gradtape", "gradtape[nofusion]", "gradtape[compiled]") + all_fw[1:], per=MIXED_OPS,
             unit="us/op"),
        Spec("fused", "8-op chain on 2^22 float32, fwd+bwd",
             lambda fw: _fw_variant(fw, lambda f, fu: build_fused(f, "fwd+bwd", fu)),
             ("gradtape", "gradtape[nofusion]") + all_fw[1:] + ("torch[1t]",)),
        Spec("fused_bwd", "8-op chain on 2^22 float32, backward only",
             lambda fw: _fw_variant(fw, lambda f, fu: build_fused(f, "bwd", fu)),
             ("gradtape", "gradtape[nofusion]", "numpy", "torch", "tf", "torch[1t]")),
        Spec("copy", "NumPy copy of 2^22 float32 (bandwidth reference)", lambda fw: build_copy(),
             ("numpy",)),
        Spec("mlp_large", "MLP 784-512-512-10 tanh, batch 256, fwd+bwd",
             lambda fw: _fw_variant(fw, lambda f, fu: build_mlp(f, fusion=fu, **MLP_LARGE)),
             all_fw + ("torch[1t]", "gradtape[compiled]")),
        Spec("mlp_small", "MLP 32-64-64-10 tanh, batch 16, fwd+bwd",
             lambda fw: build_mlp(fw, **MLP_SMALL), all_fw + ("gradtape[compiled]",)),
        Spec("adam_small", "train step MLP 32-64-64-10, batch 16, Adam",
             lambda fw: build_mlp(fw, train=True, **MLP_SMALL), all_fw + ("gradtape[compiled]",)),
        Spec("adam_large", "train step MLP 784-512-512-10, batch 256, Adam",
             lambda fw: build_mlp(fw, train=True, **MLP_LARGE), all_fw + ("gradtape[compiled]",)),
        Spec("mlp_large_ce", "MLP 784-512-512-10 tanh, batch 256, softmax CE, fwd+bwd",
             lambda fw: _fw_variant(fw, lambda f, fu: build_mlp(f, fusion=fu, loss="ce",
                                                                **MLP_LARGE)),
             all_fw + ("torch[1t]", "gradtape[compiled]")),
        Spec("mlp_small_ce", "MLP 32-64-64-10 tanh, batch 16, softmax CE, fwd+bwd",
             lambda fw: build_mlp(fw, loss="ce", **MLP_SMALL), all_fw + ("gradtape[compiled]",)),
        Spec("adam_small_ce", "train step MLP 32-64-64-10, batch 16, softmax CE, Adam",
             lambda fw: build_mlp(fw, train=True, loss="ce", **MLP_SMALL),
             all_fw + ("gradtape[compiled]",)),
        Spec("conv", "conv net train step (2 conv3x3, 2 maxpool, dense), batch 32 1x28x28, Adam",
             build_conv, ("gradtape", "gradtape[compiled]", "numpy", "torch", "tf", "jax")),
        Spec("jacobian", f"Jacobian of tanh(W @ x) w.r.t. x, W {JACOBIAN_N}x{JACOBIAN_N}",
             lambda fw: _fw_variant(fw, lambda f, _: build_jacobian(f)),
             ("gradtape", "numpy", "torch", "jax", "tf", "torch[1t]")),
        Spec("per_example_mlp", "per-example grads, MLP 64-128-10 tanh, softmax CE, batch 128",
             lambda fw: _fw_variant(fw, lambda f, _: build_per_example_mlp(f)),
             ("gradtape", "gradtape[vmap]", "gradtape[batch]", "gradtape[compiled]", "numpy",
              "numpy[batch]", "torch", "torch[batch]", "opacus", "jax", "jax[batch]",
              "torch[1t]")),
        Spec("dp_sgd", f"DP-SGD clipped sum (C={DP_CLIP:g}, joint norm), same MLP and batch",
             lambda fw: _fw_variant(fw, lambda f, _: build_per_example_mlp(f, clip=True)),
             ("gradtape", "gradtape[vmap]", "gradtape[batch]", "gradtape[compiled]", "numpy",
              "numpy[ghost]", "numpy[batch]", "torch", "opacus", "opacus[ghost]", "jax",
              "torch[1t]")),
        Spec("per_example_cnn", "per-example grads, conv net of `conv`, batch 32 1x28x28",
             lambda fw: _fw_variant(fw, lambda f, _: build_per_example_cnn(f)),
             ("gradtape", "gradtape[vmap]", "gradtape[batch]", "gradtape[compiled]", "numpy",
              "numpy[batch]", "torch", "torch[batch]", "opacus", "jax", "jax[batch]", "torch[1t]")),
        Spec("hvp", "Hessian-vector product w.r.t. W1, MLP 784-512-512-10, batch 256",
             lambda fw: _fw_variant(fw, lambda f, _: build_hvp(f)),
             ("gradtape", "gradtape[jvp]", "gradtape[hvp]", "gradtape[compiled]", "numpy",
              "torch", "jax", "torch[1t]")),
    ]


def _maybe_compiled(gt: Any, fw: str, body: Callable[..., Any]) -> Callable[..., Any]:
    """``body`` itself, or for ``gradtape[compiled]`` under ``gt.function`` (the inputs are
    arguments, so the replay computes every op; calibration's warm-up calls trace it), and for
    ``gradtape[graph]`` under ``gt.function(..., cuda_graph=True)`` (on a GPU the device work
    between host steps relaunches as CUDA graphs; on NumPy it is the compiled step)."""
    if fw not in ("gradtape[compiled]", "gradtape[graph]"):
        return body
    if not hasattr(gt, "function"):
        raise Unavailable("gradtape.function does not exist in this version")
    return gt.function(body, cuda_graph=fw == "gradtape[graph]")


def _fw_variant(fw: str, build: Callable[[str, bool | None], Cell]) -> Cell:
    """``gradtape[nofusion]`` is gradtape with ``gt.config.fusion = False``; ``gradtape`` forces
    fusion on; other names pass through."""
    if fw == "gradtape":
        return build("gradtape", True)
    if fw == "gradtape[nofusion]":
        return build("gradtape", False)
    if fw in ("gradtape[compiled]", "gradtape[graph]"):
        return build(fw, True)
    if fw == "torch[1t]":
        return torch_one_thread(build("torch", None))
    return build(fw, None)


def torch_one_thread(cell: Cell) -> Cell:
    """The same PyTorch cell run with ``torch.set_num_threads(1)`` (restored after each block):
    on 2 shared cores PyTorch's 2-thread OpenMP ops stall whenever the other core is busy."""
    torch = load("torch")
    saved: list[int] = []
    enter0, exit0 = cell.enter, cell.exit

    def enter() -> None:
        saved.append(torch.get_num_threads())
        torch.set_num_threads(1)
        enter0()

    def exit_() -> None:
        exit0()
        torch.set_num_threads(saved.pop())

    cell.enter, cell.exit = enter, exit_
    return cell
