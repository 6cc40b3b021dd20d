"""Optimizers: ``SGD``, ``Adam``, ``AdamW`` with Keras's ``apply_gradients(zip(grads, vars))``.

Each optimizer's update is declared once, as an :class:`UpdateRule`: ordered assignments in
the derivative-expression subset of :mod:`gradtape._src.codegen.expr` (``m = beta1 * m + ...``), where
a later statement reads the new value of a name assigned earlier. The rule is lowered to one
graph and run per variable as one fused program that updates the parameter and its state
buffers in place, so a Variable's ``data`` is never replaced or copied:

* NumPy: the blocked CPU program (:class:`gradtape._src.codegen.numpy_program.NumpyProgram`, straight-line
  ufuncs with ``out=``, blocks of 2^16 elements on the kernel thread pool);
* CuPy: one ``ElementwiseKernel`` per variable and step (:func:`gradtape._src.codegen.cuda.render_cuda`),
  reading and writing the parameter and state through its output references.

Scalars (learning rate, betas, bias-correction factors) are kernel parameters, so one compiled
program serves every step; programs are cached per rule and dtype.

Example:
    >>> import gradtape as gt
    >>> w = gt.Variable([1.0, -2.0])
    >>> opt = gt.optimizers.SGD(0.1)
    >>> with gt.GradientTape() as tape:
    ...     loss = gt.sum(w * w)
    >>> opt.apply_gradients(zip([tape.gradient(loss, w)], [w]))
    >>> w.numpy()
    array([ 0.8, -1.6], dtype=float32)
"""

from __future__ import annotations

import functools
import inspect
import math
import threading
import warnings
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from . import schedules as schedules
from ._src.autodiff.state import opaque, refuse_in_trace, tracing, user_stacklevel, watch_variables
from ._src.backend import Array, backend_of, cast_lost
from ._src.codegen.cuda import cupy_kernel
from ._src.codegen.expr import parse
from ._src.codegen.graph import Graph
from ._src.codegen.numpy_program import BLOCK, numpy_program, run_numpy
from ._src.errors import PeerName
from ._src.frontend.tape import GradientTape
from ._src.tensor import Tensor, Variable, _wrap
from .ops._util import as_real

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "clip_by_global_norm",
           "global_norm", "UpdateRule", "sgd_rule", "adam_rule", "rmsprop_rule", "adagrad_rule",
           "schedules"]


# --------------------------------------------------------------------------- update rules
class UpdateRule:
    """One optimizer update, declared once and run fused, in place, on either backend.

    Args:
        name: a label (part of the cache key and of error messages).
        arrays: the names of the per-variable arrays, in the order :meth:`apply` takes them
            (e.g. ``("p", "g", "m", "v")``); all have the parameter's shape (inputs such as the
            gradient may broadcast to it).
        scalars: the names of the per-step scalar parameters, in the order :meth:`apply` takes
            their values.
        statements: ``(target, expression)`` pairs run in order. An expression may read the
            arrays, the scalars and names assigned before it, and always sees a name's latest
            value. A target is an array (rebinding it) or a new local name.
        outputs: the arrays written back in place, each with its final value (e.g.
            ``("m", "v", "p")``); each must be assigned an expression, not a bare name.

    Raises:
        ValueError: a name is unknown, repeated, assigned to a scalar, or an output is never
            computed.

    Example:
        >>> import numpy as np
        >>> rule = UpdateRule("sgd", ("p", "g"), ("lr",), (("p", "p - lr * g"),), ("p",))
        >>> p = np.ones(3)
        >>> rule.apply([p, np.full(3, 2.0)], [0.25])
        >>> p
        array([0.5, 0.5, 0.5])
    """

    __slots__ = ("name", "arrays", "scalars", "statements", "outputs", "inplace", "key", "_parsed",
                 "_programs")

    def __init__(self, name: str, arrays: Sequence[str], scalars: Sequence[str],
                 statements: Sequence[tuple[str, str]], outputs: Sequence[str]) -> None:
        self.name = name
        self.arrays = tuple(arrays)
        self.scalars = tuple(scalars)
        self.statements = tuple((str(t), str(e)) for t, e in statements)
        self.outputs = tuple(outputs)
        names = self.arrays + self.scalars
        if len(set(names)) != len(names):
            raise ValueError(f"UpdateRule {name!r}: array and scalar names must be distinct, "
                             f"got arrays {self.arrays} and scalars {self.scalars}")
        for o in self.outputs:
            if o not in self.arrays:
                raise ValueError(f"UpdateRule {name!r}: output {o!r} is not one of the arrays "
                                 f"{self.arrays}")
        known = list(names)
        parsed = []
        for target, source in self.statements:
            if not target.isidentifier() or target in self.scalars:
                raise ValueError(f"UpdateRule {name!r}: cannot assign to {target!r} (scalars "
                                 "are read-only; targets are arrays or new local names)")
            parsed.append((target, parse(source, tuple(known))))
            if target not in known:
                known.append(target)
        self._parsed = tuple(parsed)
        self.inplace = tuple(self.arrays.index(o) for o in self.outputs)
        self.key = ("update", name, self.arrays, self.scalars, self.statements, self.outputs)
        self._programs: dict = {}  # dtype -> (NumpyProgram, whether it takes every operand)
        graph = self.graph()  # validate once: every output is a computed value
        for o, root in zip(self.outputs, graph.outputs):
            if graph.nodes[root][0] in ("leaf", "param", "const"):
                raise ValueError(f"UpdateRule {name!r}: output {o!r} must be assigned a "
                                 "computed expression, not a bare name or number")

    def graph(self) -> Graph:
        """The statements lowered to one :class:`gradtape._src.codegen.graph.Graph`: leaf ``i`` is
        ``arrays[i]``, parameter ``k`` is ``scalars[k]``, output ``k`` the final value of
        ``outputs[k]``."""
        g = Graph(("f",) * len(self.arrays), len(self.scalars))
        env = {n: g.add(("leaf", i)) for i, n in enumerate(self.arrays)}
        env.update({n: g.add(("param", k)) for k, n in enumerate(self.scalars)})
        for target, expr in self._parsed:
            env[target] = g.lower(expr, env)
        g.outputs = [env[o] for o in self.outputs]
        return g

    def apply(self, arrays: Sequence[Array], scalars: Sequence[float],
              cache: dict | None = None) -> None:
        """Run one update in place on backend arrays.

        Args:
            arrays: one array per name of ``arrays``; the outputs are full-shape arrays of
                one floating dtype, updated in place; the others (the gradient) have that
                dtype and broadcast to the shape (zero strides and non-contiguous are fine).
            scalars: one float per name of ``scalars``.
            cache: optional dict reused across calls of one step to keep the scalars
                converted to each dtype.

        Raises:
            TypeError: ``arrays`` or ``scalars`` is a dict (they are sequences, in the order
                of the names) or has the wrong length; an output is not a floating array of
                the outputs' one dtype and shape; an array does not hold real numbers.
            ValueError: an array does not broadcast to the outputs' shape.
        """
        if isinstance(arrays, dict) or isinstance(scalars, dict):
            raise TypeError(f"UpdateRule.apply: arrays and scalars are sequences in the order of "
                            f"the rule's names (arrays {list(self.arrays)}, scalars "
                            f"{list(self.scalars)}), not dicts")
        if len(arrays) != len(self.arrays) or len(scalars) != len(self.scalars):
            raise TypeError(f"UpdateRule {self.name!r}.apply: expected {len(self.arrays)} arrays "
                            f"{list(self.arrays)} and {len(self.scalars)} scalars "
                            f"{list(self.scalars)}, got {len(arrays)} and {len(scalars)}")
        self._check(arrays, [arrays[i] for i in self.inplace])
        self._run(arrays, scalars, cache)

    def _run(self, arrays: Sequence[Array], scalars: Sequence[float], cache: dict | None) -> None:
        """:meth:`apply` without the checks (the optimizers' own calls, made from checked
        gradients and their own state)."""
        outs = [arrays[i] for i in self.inplace]
        out0 = outs[0]
        dtype = out0.dtype
        is_numpy = isinstance(out0, np.ndarray)
        ckey = (is_numpy, dtype)
        params = None if cache is None else cache.get(ckey)
        if is_numpy:
            if params is None:
                params = [np.array(s, dtype) for s in scalars]
            hit = self._programs.get(dtype)
            if hit is None:
                prog = numpy_program((self.key, dtype.str), self.graph,
                                              (False,) * len(outs), dtype, self.inplace)
                whole = (prog.leaves == list(range(len(self.arrays))) and prog.n_bool == 0
                         and prog.params == list(range(len(self.scalars)))
                         and prog.outputs == list(range(len(outs))))
                hit = self._programs[dtype] = (prog, whole)
            prog, whole = hit
            shape = out0.shape
            if whole and out0.size <= BLOCK:  # one call: run_numpy's small path, inlined
                empty = np.empty
                prog.fn(*arrays, *params, *outs, *[empty(shape, dtype) for _ in range(prog.n_float)])
            else:
                run_numpy(prog, list(arrays), params, outs, shape, dtype)
        else:
            if params is None:
                ptype = np.float64 if dtype == np.float64 else np.float32
                params = [ptype(s) for s in scalars]
            leaf_dtypes = tuple(a.dtype.name for a in arrays)
            spec, kernel = cupy_kernel(self.key, self.graph, leaf_dtypes, dtype.name,
                                       (False,) * len(outs), self.inplace, backend_of(out0).xp)
            args = [arrays[i] for i in spec.leaves] + [params[i] for i in spec.params]
            kernel(*args, *(outs[k] for k in spec.outputs))
        if cache is not None:
            cache[ckey] = params

    def _check(self, arrays: Sequence[Array], outs: list[Array]) -> None:
        """The outputs: floating arrays of one dtype and shape; the other arrays: numeric,
        broadcasting to that shape; else an error naming the rule and the array."""
        out0 = outs[0]
        for name, a in zip(self.arrays, arrays):
            if not hasattr(a, "dtype") or not hasattr(a, "shape"):
                raise TypeError(f"UpdateRule {self.name!r}.apply: array {name!r} must be a "
                                f"backend array, got {type(a).__name__}")
        for k, o in zip(self.inplace, outs):
            if o.dtype.kind != "f" or o.dtype != out0.dtype or o.shape != out0.shape:
                raise TypeError(f"UpdateRule {self.name!r}.apply: the outputs "
                                f"{list(self.outputs)} must be floating arrays of one dtype and "
                                f"shape, got {self.arrays[k]!r} of dtype {o.dtype} and shape "
                                f"{o.shape}")
        for name, a in zip(self.arrays, arrays):
            if a.dtype.kind not in "biuf":
                raise TypeError(f"UpdateRule {self.name!r}.apply: array {name!r} must hold real "
                                f"numbers, got dtype {a.dtype}")
            try:
                ok = np.broadcast_shapes(a.shape, out0.shape) == out0.shape
            except ValueError:
                ok = False
            if not ok:
                raise ValueError(f"UpdateRule {self.name!r}.apply: array {name!r} of shape "
                                 f"{a.shape} does not broadcast to the outputs' shape "
                                 f"{out0.shape}")

    def __repr__(self) -> str:
        body = "; ".join(f"{t} = {e}" for t, e in self.statements)
        return f"UpdateRule({self.name!r}: {body})"


@functools.cache
def sgd_rule(momentum: bool, nesterov: bool, weight_decay: bool) -> UpdateRule:
    """The SGD update for one configuration (PyTorch's formulation, dampening 0), as run by
    :class:`SGD`: ``g = g + weight_decay * p``; with momentum ``buf = momentum * buf + g``
    and ``g = buf`` (or ``g + momentum * buf`` with Nesterov); ``p = p - lr * g``.

    Arrays ``(p, g[, buf])``, scalars ``(lr[, momentum][, weight_decay])``, all arrays of the
    parameter's shape.

    Example:
        >>> sgd_rule(True, True, False).outputs
        ('buf', 'p')
    """
    arrays, scalars, stmts = ["p", "g"], ["lr"], []
    if weight_decay:
        scalars.append("weight_decay")
        stmts.append(("g", "g + weight_decay * p"))
    if momentum:
        arrays.append("buf")
        scalars.append("momentum")
        stmts.append(("buf", "momentum * buf + g"))
        stmts.append(("g", "g + momentum * buf" if nesterov else "buf"))
    stmts.append(("p", "p - lr * g"))
    name = "sgd" + ("_momentum" if momentum else "") + ("_nesterov" if nesterov else "") \
        + ("_wd" if weight_decay else "")
    return UpdateRule(name, arrays, scalars, stmts, (["buf"] if momentum else []) + ["p"])


@functools.cache
def adam_rule(weight_decay: bool, decoupled: bool) -> UpdateRule:
    """The Adam / AdamW update (bias-corrected, PyTorch's placement of ``eps``), as run by
    :class:`Adam` and :class:`AdamW`. Per-step scalars come from Python: ``one_minus_beta1 =
    1 - beta1``, ``step_size = lr / (1 - beta1^t)``, ``inv_sqrt_bc2 = 1 / sqrt(1 - beta2^t)``,
    and ``decay = 1 - lr * weight_decay`` (AdamW)::

        g = g + weight_decay * p          # Adam with L2   (or p = p * decay: AdamW)
        m = beta1 * m + one_minus_beta1 * g
        v = beta2 * v + one_minus_beta2 * g * g
        p = p - m / (sqrt(v) * inv_sqrt_bc2 + eps) * step_size

    Arrays ``(p, g, m, v)`` of the parameter's shape.

    Example:
        >>> adam_rule(True, True).statements[0]
        ('p', 'p * decay')
    """
    scalars = ["beta1", "one_minus_beta1", "beta2", "one_minus_beta2", "step_size",
               "inv_sqrt_bc2", "eps"]
    stmts = []
    if weight_decay:
        if decoupled:
            scalars.append("decay")
            stmts.append(("p", "p * decay"))
        else:
            scalars.append("weight_decay")
            stmts.append(("g", "g + weight_decay * p"))
    stmts += [("m", "beta1 * m + one_minus_beta1 * g"),
              # (the factor first, as PyTorch's addcmul: g * g overflows float16 from 256)
              ("v", "beta2 * v + one_minus_beta2 * g * g"),
              ("p", "p - m / (sqrt(v) * inv_sqrt_bc2 + eps) * step_size")]
    name = "adam" + (("w" if decoupled else "_l2") if weight_decay else "")
    return UpdateRule(name, ("p", "g", "m", "v"), scalars, stmts, ("m", "v", "p"))


@functools.cache
def rmsprop_rule(centered: bool, momentum: bool, weight_decay: bool) -> UpdateRule:
    """The RMSprop update (PyTorch's formulation), as run by :class:`RMSprop`::

        g = g + weight_decay * p
        v = rho * v + one_minus_rho * g * g
        g_avg = rho * g_avg + one_minus_rho * g                  # centered
        avg = sqrt(v - g_avg * g_avg) + eps                      # (sqrt(v) + eps uncentered)
        buf = momentum * buf + g / avg;  p = p - lr * buf        # (p = p - lr * g / avg)

    The centered variance is taken as 0 where rounding makes it negative (PyTorch's gives NaN
    there); NaN (both terms overflowed) stays NaN. Arrays ``(p, g, v[, g_avg][, buf])`` of
    the parameter's shape.

    Example:
        >>> rmsprop_rule(True, False, False).arrays
        ('p', 'g', 'v', 'g_avg')
    """
    arrays, scalars, stmts = ["p", "g", "v"], ["lr", "rho", "one_minus_rho", "eps"], []
    if weight_decay:
        scalars.append("weight_decay")
        stmts.append(("g", "g + weight_decay * p"))
    stmts.append(("v", "rho * v + one_minus_rho * g * g"))
    if centered:
        arrays.append("g_avg")
        stmts += [("g_avg", "rho * g_avg + one_minus_rho * g"),
                  ("var", "v - g_avg * g_avg"),
                  # (negative only by rounding: 0; NaN, where v and g_avg^2 both overflowed,
                  # stays NaN: a clamp to 0 made that a step of lr * g / eps)
                  ("avg", "sqrt(where(var < 0, 0, var)) + eps")]
    else:
        stmts.append(("avg", "sqrt(v) + eps"))
    if momentum:
        arrays.append("buf")
        scalars.append("momentum")
        stmts += [("buf", "momentum * buf + g / avg"), ("p", "p - lr * buf")]
    else:
        stmts.append(("p", "p - lr * g / avg"))
    outputs = ["v"] + (["g_avg"] if centered else []) + (["buf"] if momentum else []) + ["p"]
    name = "rmsprop" + ("_centered" if centered else "") + ("_momentum" if momentum else "") \
        + ("_wd" if weight_decay else "")
    return UpdateRule(name, arrays, scalars, stmts, outputs)


@functools.cache
def adagrad_rule(weight_decay: bool) -> UpdateRule:
    """The Adagrad update (PyTorch's formulation), as run by :class:`Adagrad`::

        g = g + weight_decay * p
        sum = sum + g * g
        p = p - lr * g / (sqrt(sum) + eps)

    Example:
        >>> adagrad_rule(False).outputs
        ('sum', 'p')
    """
    scalars, stmts = ["lr", "eps"], []
    if weight_decay:
        scalars.append("weight_decay")
        stmts.append(("g", "g + weight_decay * p"))
    stmts += [("sum", "sum + g * g"), ("p", "p - lr * g / (sqrt(sum) + eps)")]
    return UpdateRule("adagrad" + ("_wd" if weight_decay else ""), ("p", "g", "sum"), scalars, stmts,
                      ("sum", "p"))


# --------------------------------------------------------------------------- clipping
def global_norm(grads: Iterable[Tensor | Array | None]) -> float | Tensor:
    """The 2-norm of all gradients together (None entries skipped), as a float; inside a
    ``gt.function`` step, where the values are not known while tracing, a 0-d float64 Tensor
    (the same value, computed at each call).

    Example:
        >>> import gradtape as gt
        >>> gt.optimizers.global_norm([gt.tensor([3.0]), None, gt.tensor([4.0])])
        5.0
    """
    arrays, backend = _present_arrays(grads)
    for i, a in enumerate(arrays):
        if a.dtype.kind not in "biuf":  # (a complex square would drop the imaginary part)
            raise TypeError(f"global_norm: gradients must hold real numbers; gradient #{i} "
                            f"(of those not None) has dtype {a.dtype}")
    if tracing():
        return _wrap(backend.xp.sqrt(_sum_squares(arrays)), backend) if arrays else 0.0
    return math.sqrt(sum(float(_square_sum(a)) for a in arrays))


def clip_by_global_norm(grads: Iterable[Tensor | Array | None],
                        clip_norm: float) -> tuple[list[Tensor | Array | None], float | Tensor]:
    """Scale all gradients by ``clip_norm / max(global_norm, clip_norm)`` (TF semantics: a
    norm of inf or NaN makes every entry NaN, rather than zeroing every finite gradient).
    Gradients must be floating point (``TypeError``).

    Returns ``(clipped, norm)``: a list with None entries kept, and the norm before clipping
    (a float; inside a ``gt.function`` step a 0-d float64 Tensor, as :func:`global_norm`).
    Shapes: each gradient keeps its shape. Inside a ``gt.function`` step every gradient is
    multiplied by the scale, which is exactly 1.0 when the norm is within ``clip_norm``, so
    the values equal the eager step's.

    Example:
        >>> import gradtape as gt
        >>> clipped, n = gt.optimizers.clip_by_global_norm([gt.tensor([3.0, 4.0])], 1.0)
        >>> n, clipped[0].numpy()
        (5.0, array([0.6, 0.8], dtype=float32))
    """
    grads = list(grads)
    clip_norm = float(clip_norm)
    if not clip_norm > 0 or not math.isfinite(clip_norm):
        raise ValueError(f"clip_by_global_norm: clip_norm must be a finite number > 0, got {clip_norm}")
    for i, g in enumerate(grads):
        dt = getattr(g, "dtype", None)
        if g is not None and (dt is None or np.dtype(dt).kind != "f"):
            raise TypeError(f"clip_by_global_norm: grads[{i}] must be a floating-point Tensor or "
                            f"array (a scaled integer gradient would round to zero), got "
                            f"{'dtype ' + str(dt) if dt is not None else type(g).__name__}")
    if tracing():  # the norm is a value of the program: no host read, no branch on it
        arrays, backend = _present_arrays(grads)
        if not arrays:
            return grads, 0.0
        clipped_arrays, norm = _clip_arrays(arrays, clip_norm, backend.xp)
        it = iter(clipped_arrays)
        traced: list[Tensor | Array | None] = [
            None if g is None else _wrap(next(it), g._backend) if isinstance(g, Tensor) else next(it)
            for g in grads]
        return traced, _wrap(norm, backend)
    norm = global_norm(grads)
    assert isinstance(norm, float)
    with np.errstate(invalid="ignore"):  # (the host route of _clip_scale: its NaN, bit for bit)
        scale = float(_clip_scale(np, np.float64(norm), clip_norm))
    if scale == 1.0:
        return grads, norm
    out: list[Tensor | Array | None] = []
    for g in grads:
        if g is None:
            out.append(None)
        elif isinstance(g, Tensor):
            out.append(_wrap(_scaled(g.data, scale), g._backend))
        else:
            out.append(_scaled(g, scale))
    return out, norm


def _scaled(g: Array, scale: Any) -> Array:
    """``g * scale`` (a Python float, or a 0-d float64 array on a device or in a trace) in
    ``g``'s dtype; a float16 gradient is scaled in float32 and rounded once: the scale itself
    rounded to float16 is subnormal below 6e-5 (1e-4 came out 1.19e-4) and 0 below 3e-8,
    which zeroed every clipped gradient whose clipped values float16 holds."""
    if g.dtype.itemsize < 4:
        s = np.float32(scale) if isinstance(scale, float) else scale.astype(np.float32)
        return (g.astype(np.float32) * s).astype(g.dtype)
    return g * (g.dtype.type(scale) if isinstance(scale, float) else scale.astype(g.dtype))


def _present_arrays(grads: Iterable[Tensor | Array | None]) -> tuple[list[Array], Any]:
    """The arrays of the gradients that are not None, and the backend of the first (None
    when there is none)."""
    present = [g for g in grads if g is not None]
    if not present:
        return [], None
    g = present[0]
    backend = g._backend if isinstance(g, Tensor) else backend_of(g if hasattr(g, "dtype") else np.asarray(g))
    return [g.data if isinstance(g, Tensor) else g if hasattr(g, "dtype") else np.asarray(g)
            for g in present], backend


def _sum_squares(arrays: Sequence[Array]) -> Any:
    """The sum of the squares of all elements of ``arrays``, as a 0-d float64 array, summed
    per array and then in order (the host route's order)."""
    total = None
    for a in arrays:
        # a host array: one logged call in a traced step, so a replay takes the same overflow
        # branch (a device array's sum has no branch: a plain step, inside a CUDA graph)
        sq = opaque(_square_sum, a) if _on_host(a) else _square_sum(a)
        total = sq if total is None else total + sq
    return total


def _on_host(a: Any) -> bool:
    """A NumPy array, or a traced step's value held in one."""
    return isinstance(getattr(a, "a", a) if getattr(a, "_gt_traced", False) else a,
                      (np.ndarray, np.generic))


def _square_sum(a: Array) -> Any:
    """``sum(a * a)`` as a 0-d float64 array (inf past float64's range, without a warning).
    On the host the squares of float16 values are formed in float32 (a float16 square
    overflows from 256 on, a float32 one from 1.9e19, which would make the norm inf and zero
    every clipped gradient), and a float32 sum that overflows, or that is below 1e-30 for
    entries that are not all zero (underflowed squares), is taken again in float64. On
    a device, where reading the sum back would synchronise, the squares are formed in
    float64 in one pass."""
    with np.errstate(over="ignore"):
        if a.dtype.kind != "f":  # (an integer square wraps in its own dtype: int8 16 -> 0)
            a = a.astype(np.float64)
        if a.dtype == np.float64:
            return (a * a).sum(dtype=np.float64)
        if not isinstance(a, (np.ndarray, np.generic)):
            return backend_of(a).xp.square(a, dtype=np.float64).sum()
        if a.dtype.itemsize < 4:
            a = a.astype(np.float32)
        with np.errstate(under="ignore"):
            sq = (a * a).sum(dtype=np.float64)
        # past float32's range, or so small that squares may have underflowed (entries below
        # 1e-19 square to float32 subnormals or 0: a norm of 3e-25 came out 0): in float64
        if not np.isfinite(sq) or (sq < 1e-30 and a.size and np.abs(a).max() > 0):
            a64 = a.astype(np.float64)
            sq = (a64 * a64).sum()
        return sq


def _clip_arrays(grads: Sequence[Array], clip_norm: float, xp: Any) -> tuple[list[Array], Any]:
    """:func:`clip_by_global_norm` for arrays of module ``xp`` without reading the norm on the
    host (a device, a traced step): the sum of squares (in float64), the norm and the scale
    stay 0-d arrays and every gradient is multiplied by the scale (by exactly 1.0 when no
    clipping is needed, so the values equal the host route's). Returns (clipped, norm)."""
    norm = xp.sqrt(_sum_squares(grads))
    scale = _clip_scale(xp, norm, clip_norm)
    return [_scaled(g, scale) for g in grads], norm


def _clip_scale(xp: Any, norm: Any, clip_norm: float) -> Any:
    """``clip_norm / max(norm, clip_norm)`` for a 0-d float64 ``norm``, plus ``norm - norm``:
    0 for a finite norm (the scale stays exact), NaN for inf or NaN, so every entry becomes
    NaN (TF's rule; a scale of clip / inf would zero every finite gradient, and an update
    would silently stall on one overflowing entry)."""
    return clip_norm / xp.maximum(norm, clip_norm) + (norm - norm)


# --------------------------------------------------------------------------- checkpoints
def _checkpoint_dtype_error(entry: str, expected: Any, found: Any) -> str | None:
    """Whether a checkpoint array of dtype ``found`` may be loaded into state of dtype
    ``expected``: ``None`` when it may, else the reason (naming ``entry`` and both dtypes).

    The rule (for Variables and optimizer state alike): the exact dtype (in either byte
    order), or, between floating-point dtypes (float16/32/64), a cast, rounding to the nearest
    value when narrowing as ``astype`` does. Everything else is refused: strings, bytes,
    objects, structured records, complex into real, integers or bools into floats, floats
    into integers, and any other change of kind or width.

    Example:
        >>> _checkpoint_dtype_error("var/w", np.float32, np.float64) is None
        True
        >>> _checkpoint_dtype_error("var/w", np.float32, np.complex64)
        'var/w: expected dtype float32 (or another float dtype, cast), the checkpoint holds complex64'
    """
    expected, found = np.dtype(expected), np.dtype(found)
    numeric = expected.kind in "biufc" and found.kind in "biufc" and not found.fields
    if numeric and (np.can_cast(found, expected, "equiv") or (found.kind == expected.kind == "f")):
        return None
    also = " (or another float dtype, cast)" if expected.kind == "f" else ""
    return f"{entry}: expected dtype {expected}{also}, the checkpoint holds {found}"


def _note_dead(dead: list[int], vid: int, _ref: Any) -> None:
    """A tracked Variable's weak-reference callback: note its id (see Optimizer._purge)."""
    dead.append(vid)


def _check_named(who: str, named_variables: Any) -> list[tuple[str, Variable]]:
    """``named_variables`` as a list of ``(name, Variable)`` pairs, else TypeError naming
    what came (a list of Variables, a module, the unbound ``model.named_variables``)."""
    hint = "(name, Variable) pairs, e.g. model.named_variables()"
    if callable(named_variables) or isinstance(named_variables, (str, bytes, Mapping, Variable)) \
            or not isinstance(named_variables, Iterable):
        extra = " (call it)" if callable(named_variables) else ""
        raise TypeError(f"{who}: named_variables must be {hint}, got "
                        f"{type(named_variables).__name__}{extra}")
    out = list(named_variables)
    for i, pair in enumerate(out):
        if not (type(pair) in (tuple, list) and len(pair) == 2 and isinstance(pair[0], str)
                and isinstance(pair[1], Variable)):
            raise TypeError(f"{who}: named_variables must be {hint}; item {i} is "
                            f"{_describe(pair)}")
    names: dict[str, int] = {}
    for i, (n, _) in enumerate(out):
        first = names.setdefault(n, i)
        if first != i:  # one entry would hold one of the two Variables' state
            raise ValueError(f"{who}: the name {n!r} is given twice in named_variables (items "
                             f"#{first} and #{i}); names must be unique")
    return [(n, v) for n, v in out]


def _describe(x: Any) -> str:
    if isinstance(x, Variable):
        return f"a Variable ({x.name or 'unnamed'})"
    if type(x) in (tuple, list):
        return f"a {type(x).__name__} of {len(x)} ({', '.join(type(e).__name__ for e in x)})"
    return f"a {type(x).__name__}"


def _check_iterations(who: str, value: Any) -> int:
    """``value`` as the step count: a non-negative integer scalar, else TypeError/ValueError."""
    if isinstance(value, Tensor):
        value = value.data
    if isinstance(value, bool) or not (hasattr(value, "dtype") and hasattr(value, "shape")):
        value = np.asarray(value, dtype=object if isinstance(value, bool) else None)
    if tuple(value.shape) != ():
        raise ValueError(f"{who}: 'iterations' must be a non-negative integer scalar, got an "
                         f"array of shape {tuple(value.shape)}")
    if value.dtype.kind not in "iu":
        raise TypeError(f"{who}: 'iterations' must be a non-negative integer scalar, got dtype "
                        f"{value.dtype}")
    n = int(value)
    if n < 0:
        raise ValueError(f"{who}: 'iterations' must be a non-negative integer scalar, got {n}")
    if n >= 2 ** 63:
        raise ValueError(f"{who}: 'iterations' must be below 2**63 (it is saved as int64), "
                         f"got {n}")
    return n


# --------------------------------------------------------------------------- optimizers
def _brief(x: Any) -> str:
    """How messages describe a bad entry: its type, and its length for a sequence."""
    n = len(x) if isinstance(x, (tuple, list)) else None
    return f"a {type(x).__name__} of {n} items" if n is not None else f"a {type(x).__name__}"


def _label(v: Variable, i: int) -> str:
    """How messages name the ``i``-th variable of a call: its name, or ``#i`` unnamed."""
    return v.name if v.name else f"#{i}"


def _hyper(who: str, name: str, value: Any, rule: str) -> float:
    """``value`` as a float, checked: a finite real number (:func:`~gradtape.ops._util.as_real`)
    within ``rule`` (">= 0", "> 0", "in [0, 1]" or "in [0, 1)"); else an error naming the
    optimizer ``who``, the argument and the value."""
    v = float(as_real(value, who, name))
    if not {">= 0": v >= 0, "> 0": v > 0, "in [0, 1]": 0 <= v <= 1, "in [0, 1)": 0 <= v < 1}[rule]:
        raise ValueError(f"{who}: {name} must be {rule}, got {value!r}")
    return v


#: The prefix of a hyper-parameter's entry in ``state_dict``: ``"hyper.<name>"`` with no ``/``
#: (a variable's entries have one: ``"hyper.kernel/m"`` is a submodule ``hyper``'s)
_HYPER = "hyper."


#: Adam's and AdamW's entry saying whether ``weight_decay`` is decoupled (AdamW) or L2 (Adam)
_DECOUPLED = _HYPER + "decoupled_weight_decay"


def is_hyper_key(key: Any) -> bool:
    """Whether a ``state_dict`` key is a hyper-parameter's entry (see :data:`_HYPER`)."""
    k = str(key)
    return k.startswith(_HYPER) and "/" not in k


#: Held while a step reads and advances an optimizer's step count (``self.iterations += 1``
#: is no atomic operation: threads sharing one optimizer lost steps, and Adam's bias
#: correction and schedules then ran at wrong steps). Module-wide: optimizers stay picklable.
_STEP_LOCK = threading.Lock()


def _cast_entry(who: str, key: str, arr: Array, dtype: Any) -> Array:
    """A checkpoint or state entry cast to its variable's ``dtype``; ValueError naming the
    entry where a finite value would become inf (a float32 1e6 into a float16 model)."""
    lost = cast_lost(backend_of(arr).xp, arr, dtype)
    if lost is not None:
        raise ValueError(f"{who}: {key} holds {lost:g}, past the largest {np.dtype(dtype)} "
                         f"({float(np.finfo(dtype).max):g}) of its variable: loaded, it would "
                         "be inf (load it into a model of the checkpoint's dtype)")
    return arr.astype(dtype, copy=False)


def _narrowed(g: Array, dtype: np.dtype, who: str, label: str, xp: Any) -> Array:
    """The real gradient array ``g`` cast to its variable's ``dtype``. Raises ValueError where
    ``g`` is wider (or integer) and finite but the cast makes some value inf (``1e6`` for a
    float16 variable): the learning rate would scale inf. On a device this reads back one
    flag, on this path of mismatched dtypes only."""
    if cast_lost(xp, g, dtype) is not None and bool(xp.isfinite(g).all()):
        raise ValueError(f"{who}: the {g.dtype} gradient for {dtype} variable {label} holds "
                         f"values up to {float(xp.abs(g).max()):g}, past {dtype}'s range "
                         "(they would become inf before the learning rate scales them); "
                         "pass a gradient of the variable's dtype, or scale it")
    with np.errstate(over="ignore"):
        return g.astype(dtype)


#: Hyper-parameter names of PyTorch and Keras -> gradtape's: setting one on an optimizer raises
#: (it would be a new attribute that no step reads)
_PEER_NAMES = {"lr": "learning_rate", "eps": "epsilon", "beta_1": "beta1", "beta_2": "beta2",
               "betas": "beta1", "clipnorm": "global_clipnorm"}


#: PyTorch's and Keras's constructor arguments that gradtape spells otherwise -> (its name, what
#: to write)
_PEER_ARGS = {"lr": ("learning_rate", "write learning_rate=... (PyTorch's lr)"),
              "alpha": ("rho", "write rho=... (PyTorch's alpha)"),
              "betas": ("beta1", "write beta1=..., beta2=... (PyTorch's betas=(beta1, beta2))"),
              "eps": ("epsilon", "write epsilon=... (PyTorch's eps)"),
              "beta_1": ("beta1", "write beta1=... (Keras's beta_1)"),
              "beta_2": ("beta2", "write beta2=... (Keras's beta_2)"),
              "params": ("", "the variables go to apply_gradients(zip(grads, variables)) or "
                             "minimize(loss_fn, var_list), not to the constructor"),
              "clipnorm": ("global_clipnorm", "write global_clipnorm=... (it clips all gradients "
                                              "of a step jointly; Keras's clipnorm clips each "
                                              "alone)")}


def _builtin(cls: type) -> bool:
    """Whether ``cls`` is one of gradtape's optimizer classes, or a DistributedOptimizer class
    made from one (which shares the wrapped optimizer's attributes): a subclass defined
    elsewhere, wrapped or not, may use the names below for attributes of its own."""
    base = next((c for c in cls.__mro__ if c.__module__ != "gradtape.distributed"), cls)
    return base.__module__ == __name__


#: Hyper-parameters of some optimizer (gradtape's, PyTorch's, Keras's): set on one that does
#: not have it (not in its ``_checked``), a plain attribute that no step reads, refused (see
#: Optimizer.__setattr__)
_OTHER_HYPERS = {"amsgrad", "maximize", "foreach", "fused", "capturable", "differentiable",
                 "dampening", "clipvalue", "use_ema", "ema_momentum", "ema_overwrite_frequency",
                 "loss_scale_factor", "gradient_accumulation_steps", "lr_decay", "decoupled_weight_decay",
                 "initial_accumulator_value", "rho", "momentum", "nesterov", "centered", "beta1",
                 "beta2", "epsilon", "weight_decay", "global_clipnorm"}


def _check_keywords(who: str, init: Callable[..., None], kwargs: dict,
                    peers: dict[str, tuple[str, str]] | None = None) -> None:
    """A clear TypeError for a keyword the constructor ``init`` does not take, naming
    gradtape's spelling of PyTorch's and Keras's names (``peers``: ``{their name: (ours,
    hint)}``, the optimizers' by default) and the arguments it takes."""
    peers = _PEER_ARGS if peers is None else peers
    params = inspect.signature(init).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    for key, value in kwargs.items():
        if key not in params:
            ours, hint = peers.get(key, ("", ""))
            if ours and ours not in params:
                hint = ""  # (a subclass of its own arguments: the list says what it takes)
            takes = ", ".join(n for n in params if n != "self")
            raise TypeError(f"{who}: unknown argument {key}={value!r}"
                            + (f"; {hint}" if hint else "") + f" (it takes {takes})")


class Optimizer:
    """Base class: per-variable state, None gradients skipped with a warning, optional
    global-norm clipping, a learning rate that is a float or a schedule ``f(step) -> float``
    (step counts from 0).

    Hyper-parameters are attributes of their argument's name; one set later
    (``opt.learning_rate = 1e-4``) is checked as at construction and used from the next step.

    Subclasses set ``slot_names``, return their hyper-parameters from ``_scalars``, their
    :class:`UpdateRule` from ``_rule`` and its per-step scalar values from ``_rule_scalars``.

    Args:
        learning_rate: a float >= 0, or a schedule: a callable ``f(step) -> float`` of the
            step count :attr:`iterations` (from 0).
        global_clipnorm: if given, scale all gradients of a step together so their joint
            2-norm is at most this value (:func:`clip_by_global_norm`).
    """

    slot_names: tuple[str, ...] = ()
    # hyper-parameter -> its rule (_hyper's), checked when set, also after construction
    # (``opt.learning_rate = 0.01``, Keras's habit): a value set later reaches the next step
    _checked: dict[str, str] = {"learning_rate": "rate", "global_clipnorm": "> 0 or None"}

    def __setattr__(self, name: str, value: Any) -> None:
        rule = self._checked.get(name)
        if rule is not None:
            value = self._check_hyper(name, value, rule)
        elif name in _PEER_NAMES and _builtin(type(self)):
            # opt.lr = 0.5 would be a new attribute no step reads (a subclass defined elsewhere
            # may use these names for its own attributes)
            ours = _PEER_NAMES[name]
            who = type(self).__name__
            hint = f"set {ours}" if ours in self._checked else f"{who} has no {ours}"
            raise AttributeError(f"{who}: {name!r} is not one of its hyper-parameters ({hint}; "
                                 f"they are {', '.join(self._checked)})")
        elif name in _OTHER_HYPERS and _builtin(type(self)):
            # a hyper-parameter of another optimizer, here or in PyTorch or Keras (amsgrad,
            # dampening, clipvalue, Adam's momentum): a new attribute no step reads
            who = type(self).__name__
            raise AttributeError(f"{who}: {name!r} is not one of its hyper-parameters (they are "
                                 f"{', '.join(self._checked)}); setting it would change nothing")
        object.__setattr__(self, name, value)

    # PyTorch's torch.optim names, each saying what does it here (see PeerName)
    zero_grad = PeerName("none is needed: tape.gradient returns fresh gradients, nothing accumulates")
    step = PeerName("opt.apply_gradients(zip(grads, variables)) or opt.minimize(loss_fn, var_list)")
    param_groups = PeerName("hyper-parameters are attributes: opt.learning_rate = 1e-4")

    def _check_hyper(self, name: str, value: Any, rule: str) -> Any:
        who = type(self).__name__
        if rule == "rate":
            if callable(value):
                return value
            if isinstance(value, (str, bytes, bool)) or not isinstance(
                    value, (int, float, np.integer, np.floating)):
                raise TypeError(f"{who}: {name} must be a number or a "
                                f"callable schedule(step) -> float, got {value!r}")
            return _hyper(who, name, value, ">= 0")
        if rule == "bool":
            if not isinstance(value, (bool, np.bool_)):  # bool("False") is True
                raise TypeError(f"{who}: {name} must be True or False, got {value!r}")
            return bool(value)
        if rule == "> 0 or None":
            return None if value is None else _hyper(who, name, value, "> 0")
        return _hyper(who, name, value, rule)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # PyTorch's and Keras's spellings (Adam(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8))
        # would fail in Python's words ("unexpected keyword argument 'lr'"): each subclass's
        # constructor names ours (wrapped: help() and inspect show its own signature)
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None or getattr(init, "_gt_names_keywords", False):
            return

        @functools.wraps(init)
        def checked(self: Any, *args: Any, **kw: Any) -> None:
            if kw:
                who = type(self).__name__
                if type(self) is not cls:  # reached through a subclass's constructor
                    who += f" (in {cls.__name__}.__init__)"
                _check_keywords(who, init, kw)
            init(self, *args, **kw)

        checked._gt_names_keywords = True  # type: ignore[attr-defined]
        cls.__init__ = checked  # type: ignore[method-assign]

    def __init__(self, learning_rate: float | Callable[[int], float],
                 global_clipnorm: float | None = None) -> None:
        who = type(self).__name__
        if (hasattr(type(learning_rate), "trainable_variables") or isinstance(learning_rate, Tensor)
                or isinstance(learning_rate, dict) or hasattr(learning_rate, "__next__")
                or isinstance(learning_rate, (list, tuple, set))
                and any(isinstance(v, (Tensor, dict)) for v in learning_rate)):
            # PyTorch's habit, Adam(model.parameters()): a model is callable, so it would pass
            # for a schedule and fail at the first step with the model's own error
            raise TypeError(f"{who}: the first argument is learning_rate (a number or a "
                            f"schedule), got a {type(learning_rate).__name__}; the variables go "
                            "to apply_gradients(zip(grads, variables)) or minimize(loss_fn, "
                            f"var_list) (Keras's convention): PyTorch's {who}(model.parameters(), "
                            f"lr=1e-3) is {who}(1e-3) here")
        self.learning_rate = learning_rate  # (checked by __setattr__, as every hyper-parameter)
        self.global_clipnorm = global_clipnorm
        self.iterations = 0
        self._state: dict[int, tuple] = {}  # Variable._id -> slot arrays (fixed for life)
        # Variable._id -> the key state_dict names it by, given when it first gains state
        # here and kept for its life (also while a load_state_dict has reset its state) and
        # by copies: names chosen again at each call would shift when another Variable of the
        # same name gains state. _key_owner: key -> (Variable._id, the Variable weakly: copying
        # and pickling re-key the state by the copied Variables, so ``copy.deepcopy((model,
        # opt))`` updates the copied model); the weak reference's callback notes the id in
        # _dead when the Variable dies, and _purge() then drops its state
        self._keys: dict[int, str] = {}
        self._key_owner: dict[str, tuple[int, weakref.ref]] = {}
        self._dead: list[int] = []
        self._next_serial = 0
        # a copied or unpickled optimizer until its first step (or state_dict): Variable._id
        # -> name of the Variables with state that came with it, and the names of those that
        # died since: see _settle_restored
        self._restored: dict[int, str | None] | None = None
        self._lost: list[str | None] = []

    @property
    def current_learning_rate(self) -> float:
        """The learning rate the next step uses (the schedule evaluated at :attr:`iterations`
        when ``learning_rate`` is callable).

        Example:
            >>> import gradtape as gt
            >>> gt.optimizers.SGD(lambda step: 0.1 / (1 + step)).current_learning_rate
            0.1
        """
        lr = self.learning_rate
        if not callable(lr):
            return lr
        value = lr(self.iterations)
        try:  # a Python or NumPy number, a 0-d array or Tensor
            v = float(value) if not isinstance(value, (str, bytes, bool)) else math.nan
        except (TypeError, ValueError):
            v = math.nan
        if not (v >= 0 and math.isfinite(v)):
            raise ValueError(f"{type(self).__name__}: the learning-rate schedule must return a "
                             f"finite number >= 0, got {value!r} at step {self.iterations}")
        return v

    def _scalars(self) -> dict:
        raise NotImplementedError

    def _rule(self) -> UpdateRule:
        raise NotImplementedError(f"{type(self).__name__} defines no update rule (_rule): use "
                                  "SGD, Adam or AdamW, or subclass Optimizer with _rule, "
                                  "_rule_scalars and slot_names")

    def _rule_scalars(self, scalars: dict) -> dict[str, float]:
        raise NotImplementedError(f"{type(self).__name__} defines no _rule_scalars")

    def _needs_slot(self, name: str) -> bool:
        return True

    def _new_slot(self, name: str, v: Variable, xp: Any) -> Array:
        """A fresh slot array of ``v``'s shape and dtype (zeros unless a subclass says)."""
        return xp.zeros_like(v.data)

    def _slots(self, v: Variable) -> tuple:
        st = self._state.get(v._id)
        if st is None:
            xp = v._backend.xp
            st = tuple(self._new_slot(n, v, xp) if self._needs_slot(n) else None
                       for n in self.slot_names)
            self._state[v._id] = st
            self._track(v)
        return st

    def _track(self, v: Variable, key: str | None = None) -> None:
        """Follow ``v`` (weakly), giving it its :meth:`state_dict` key unless it has one
        (``key``: the one a copy of the optimizer kept, when still free)."""
        if self._dead:
            self._purge()
        vid = v._id
        if vid in self._keys:
            return
        if key is None or not self._free(key):
            key = v.name if v.name and self._free(v.name) else None
        while key is None:  # "<name>#<n>", n counting the keys made so; past held ones
            key = f"{v.name or 'variable'}#{self._next_serial}"
            self._next_serial += 1
            if not self._free(key):
                key = None
        held = self._key_owner.get(key)
        if held is not None:  # a dead Variable's key, taken over
            self._keys.pop(held[0], None)
        self._keys[vid] = key
        # (the callback holds the list, not the optimizer)
        self._key_owner[key] = (vid, weakref.ref(v, functools.partial(_note_dead, self._dead, vid)))

    def _free(self, key: str) -> bool:
        """No living Variable that got state here holds ``key`` (a reset one still does)."""
        held = self._key_owner.get(key)
        return held is None or held[1]() is None

    def _purge(self) -> None:
        """Forget the Variables that died: their slot arrays and keys (a weak reference's
        callback only notes the id, so that no dict changes size while a method iterates it)."""
        dead = self._dead
        restored = self.__dict__.get("_restored")
        while dead:  # (a callback may append while this runs: pop until none is left)
            vid = dead.pop()
            self._state.pop(vid, None)
            if restored and vid in restored:  # (see _settle_restored)
                self._lost.append(restored.pop(vid))
            key = self._keys.pop(vid, None)
            held = self._key_owner.get(key) if key is not None else None
            if held is not None and held[0] == vid:
                del self._key_owner[key]  # type: ignore[arg-type]

    def __getstate__(self) -> dict:
        """The state to pickle or deep-copy: the hyper-parameters, the step count, and each
        living Variable's slot arrays, keyed by the Variable itself (the copy's memo maps
        them onto the copied model's Variables)."""
        # the per-variable state travels with its Variables (pickle's and deepcopy's memo then
        # map it onto the copies of the model's Variables); state of dead Variables is dropped
        # (ids are never reused, so it can never be used again)
        if self._dead:
            self._purge()
        state = self.__dict__.copy()
        for name in ("_keys", "_key_owner", "_dead", "_restored"):
            state.pop(name, None)  # (``_lost`` travels: copied again before its first step,
            # the Variables that died are lost to the new copy too)
        # each living Variable with its slot arrays, or None for one that holds a key without
        # state (reset by a load_state_dict: the key travels too, or the copy would let
        # another Variable of that name take it)
        pairs: list[tuple] = []
        for key, (vid, ref) in list(self._key_owner.items()):
            v = ref()
            if v is not None:
                pairs.append((v, self._state.get(vid), key))
        state["_state"] = pairs
        return state

    def __setstate__(self, state: dict) -> None:
        state = dict(state)
        pairs = state.pop("_state", [])
        self.__dict__.update(state)
        self._state = {}
        self._keys = {}
        self._key_owner = {}
        self._dead = []
        self.__dict__.setdefault("_next_serial", 0)
        # the Variables with state that came with it: every one dead before the first step
        # (the optimizer copied or unpickled apart from its model) is said (_settle_restored)
        self._lost = list(self.__dict__.get("_lost") or ())
        self._restored = {}
        for v, slots, *key in pairs:
            if slots is not None:
                self._state[v._id] = tuple(slots)
                self._restored[v._id] = v.name
            self._track(v, key[0] if key and isinstance(key[0], str) else None)

    def _settle_restored(self, what: str) -> None:
        """At the first step (or ``state_dict``) of a copied or unpickled optimizer: when every
        Variable it had state for came with it and died since (``pickle.dumps(opt)`` alone, the
        model saved apart), warn that their moments are lost, as ``what`` would otherwise
        start them from zero at a later step count without a word. (Some dying, as a layer
        replaced after loading, is model surgery: their state goes with them, as always.)
        Nothing is matched up: bare names (``kernel``) and the order of first updates cannot
        tell one layer's moments from another's."""
        if self._dead:
            self._purge()
        restored, lost = self._restored, self._lost
        self._restored, self._lost = None, []
        if lost and not restored:
            names = ", ".join(repr(name or "variable") for name in lost[:6]) + (
                ", ..." if len(lost) > 6 else "")
            warnings.warn(
                f"{type(self).__name__}: this optimizer was copied or unpickled apart from the "
                f"{len(lost)} Variable(s) it had state for ({names}): their moments are lost "
                f"(it keeps its step count, {self.iterations}), and {what}. Pickle or copy the "
                "model and the optimizer together (pickle.dumps((model, opt))), or save and load "
                "both with gt.nn.save(path, model, opt) and gt.nn.load", stacklevel=user_stacklevel())

    def apply_gradients(self, grads_and_vars: Iterable[tuple[Tensor | Array | None, Variable]]) -> None:
        """Update each Variable in place from its gradient (Keras's convention). A None
        gradient leaves that Variable (and its state) untouched and warns, once per call,
        naming every such variable (as TF does: usually a variable the loss does not use).

        Args:
            grads_and_vars: pairs ``(gradient, variable)``, e.g. ``zip(grads, model.variables)``;
                each gradient a Tensor or backend array of the variable's shape.

        Raises:
            TypeError: an entry is not a Variable, or a gradient is on another backend or of a
                dtype that is not real (complex, strings).
            ValueError: a gradient's shape differs from its variable's (naming the variable, or
                ``#i``, its position, when it has no name), a Variable is given twice (add its
                gradients first), no pair is given, or a gradient of a wider (or an integer)
                dtype holds finite values past the variable's range (``1e6`` for a float16
                variable: the cast would make them inf before the learning rate scales them; a
                ``gt.function`` replay checks at each call).

        Example:
            >>> import gradtape as gt
            >>> w = gt.Variable([1.0, 2.0], name="w")
            >>> gt.optimizers.SGD(0.5).apply_gradients([(gt.tensor([1.0, 1.0]), w)])
            >>> w.numpy()
            array([0.5, 1.5], dtype=float32)
        """
        self._apply(grads_and_vars, "apply_gradients")

    def _check_pairs(self, grads_and_vars: Any, who: str) -> tuple[list[tuple[Array, Variable, int]],
                                                             list[str], int]:
        """The checks of :meth:`apply_gradients`, changing nothing: the pairs with a gradient
        as ``(array, Variable, position)``, the labels of the Variables without one, and the
        number of pairs; TypeError / ValueError naming the pair that is wrong."""
        checked: list[tuple[Array, Variable, int]] = []
        n_seen = 0
        no_grad: list[str] = []
        seen: dict[int, int] = {}
        if grads_and_vars is None or isinstance(grads_and_vars, (str, bytes, Tensor)) \
                or not hasattr(grads_and_vars, "__iter__"):
            raise TypeError(f"{who}: expected (gradient, Variable) pairs, e.g. "
                            f"zip(grads, variables), got {type(grads_and_vars).__name__}")
        for i, pair in enumerate(grads_and_vars):
            try:
                g, v = pair
            except (TypeError, ValueError):
                raise TypeError(f"{who}: expected (gradient, Variable) pairs, got {_brief(pair)} "
                                f"as entry #{i}; pass "
                                "zip(grads, variables), gradients first") from None
            n_seen += 1
            if not isinstance(v, Variable):
                raise TypeError(f"{who}: expected (gradient, Variable) pairs, got a "
                                f"{type(v).__name__} as variable #{i}; pass "
                                "zip(grads, variables), gradients first")
            first = seen.setdefault(v._id, i)
            if first != i:  # two updates of one step (and of its moments) in one call
                named = f"variable {v.name}" if v.name else "an unnamed variable"
                raise ValueError(f"{who}: {named} is given twice (pairs #{first} and #{i}); add "
                                 "its gradients and pass it once")
            if v.dtype.kind != "f":
                raise TypeError(f"{who}: variable {_label(v, i)} has dtype {v.dtype}; only "
                                'floating-point variables can be trained (create it as '
                                'gt.Variable(..., dtype="float32"))')
            if g is None:
                no_grad.append(_label(v, i))
                continue
            if not isinstance(g, Tensor) and not (hasattr(g, "shape") and hasattr(g, "dtype")
                                                  and not isinstance(g, np.generic)):
                raise TypeError(f"{who}: the gradient for variable {_label(v, i)} must be a Tensor "
                                f"or a backend array, got {type(g).__name__}")
            if isinstance(g, Tensor):
                if g._backend is not v._backend:
                    raise TypeError(f"{who}: gradient on backend {g.backend!r} for variable "
                                    f"{_label(v, i)} on {v.backend!r}")
                g = g.data
            elif not v._backend.owns(g):  # e.g. a host array for a device variable
                raise TypeError(f"{who}: the gradient for variable {_label(v, i)} is a "
                                f"{type(g).__module__}.{type(g).__name__}, not an array of the "
                                f"variable's backend {v.backend!r}; pass a Tensor on it")
            if isinstance(g, np.ma.MaskedArray):  # (its mask would be ignored: the hidden
                # values applied)
                raise TypeError(f"{who}: the gradient for variable {_label(v, i)} is a masked "
                                "array, whose mask the update would ignore; pass g.filled(0)")
            if g.shape != v.shape:
                raise ValueError(f"{who}: gradient of shape {g.shape} for variable {_label(v, i)} "
                                 f"of shape {v.shape}")
            if g.dtype.kind == "b":  # (True would step as 1.0: a mask passed by mistake)
                raise TypeError(f"{who}: the gradient for variable {_label(v, i)} has dtype bool; "
                                "a real-valued gradient is needed")
            if g.dtype != v.dtype and g.dtype.kind not in "biuf":  # complex (its imaginary
                # part would be dropped), strings, objects
                raise TypeError(f"{who}: the gradient for variable {_label(v, i)} has dtype "
                                f"{g.dtype}; a real-valued gradient is needed for a "
                                f"{v.dtype} variable")
            checked.append((g, v, i))
        return checked, no_grad, n_seen

    def _apply(self, grads_and_vars: Iterable[tuple[Tensor | Array | None, Variable]], what: str,
               stacklevel: int = 3) -> None:
        """:meth:`apply_gradients`; ``what`` names the public method in messages and
        ``stacklevel`` points the None-gradient warning at the user's line."""
        who = f"{type(self).__name__}.{what}"
        checked, no_grad, n_seen = self._check_pairs(grads_and_vars, who)
        pairs = []
        for g, v, i in checked:
            if g.dtype != v.dtype:  # (a real dtype: _check_pairs refused the others)
                # (inside gt.function one step of the program: checked at each replay)
                g = opaque(functools.partial(_narrowed, dtype=v.dtype, who=who,
                                             label=_label(v, i), xp=v._backend.xp), g,
                           key=("narrow gradient", v.dtype.str, _label(v, i)))
            pairs.append((g, v))
        if no_grad:  # TF's and Keras's warning: usually a variable the loss does not use
            warnings.warn(f"{who}: no gradient for variable(s) {', '.join(no_grad)}; they are left "
                          "unchanged (does the loss use them?)", stacklevel=stacklevel)
        if not pairs:
            if n_seen:
                return  # every gradient None: nothing to do (no step counted)
            raise ValueError(f"{who}: no (gradient, variable) pairs given")
        if tracing():  # inside gt.function: the update is one step, replayed with its state
            variables = [v for _, v in pairs]
            # held weakly and watched by the trace: a Variable replaced after tracing (a
            # layer's new kernel) dies and the step traces again, where a strong reference
            # would keep the program training the old one
            watch_variables(variables)
            refs = [weakref.ref(v) for v in variables]

            def update(*gs: Array) -> None:
                live = [(g, v) for g, v in zip(gs, (r() for r in refs)) if v is not None]
                if live:
                    self._update(live)

            opaque(update, *[g for g, _ in pairs],
                   key=("apply_gradients", id(self), tuple(id(v) for v in variables)))
            return
        self._update(pairs)

    def _update(self, pairs: list[tuple[Array, Variable]]) -> None:
        """The update of checked ``(gradient array, Variable)`` pairs: clipping, the step
        count, the fused rule on each Variable."""
        if self._dead:
            self._purge()
        if self.__dict__.get("_restored") is not None:
            self._settle_restored("this step starts them from zero")
        if self.global_clipnorm is not None:
            gs = [g for g, _ in pairs]
            if isinstance(gs[0], np.ndarray):
                clipped, _ = clip_by_global_norm(gs, self.global_clipnorm)
            else:  # a device: the norm stays on it (no host synchronisation inside the step)
                clipped, _ = _clip_arrays(gs, self.global_clipnorm, pairs[0][1]._backend.xp)
            pairs = list(zip(clipped, (v for _, v in pairs)))
        rule = self._rule()
        with _STEP_LOCK:  # threads sharing an optimizer: each step reads its own count
            values = self._rule_scalars(self._scalars())
            values_list = [float(values[n]) for n in rule.scalars]
            self.iterations += 1
        cache: dict = {}
        # the slots this rule reads: a hyper-parameter set after the first step (SGD's
        # momentum from 0) can make a slot needed that was not, or one unneeded
        need = [self._needs_slot(n) for n in self.slot_names]
        for g, v in pairs:
            st = self._slots(v)
            slots = [s for s, k in zip(st, need) if k]
            if any(s is None for s in slots):
                st = self._state[v._id] = tuple(
                    self._new_slot(n, v, v._backend.xp) if s is None and k else s
                    for n, s, k in zip(self.slot_names, st, need))
                slots = [s for s, k in zip(st, need) if k]
            v._before_write()  # copy-on-write: a live tape keeps the values it read
            rule._run([v.data, g, *slots], values_list, cache)

    def minimize(self, loss_fn: Callable[[], Tensor],
                 var_list: Sequence[Variable] | Callable[[], Sequence[Variable]]) -> Tensor:
        """One step on ``loss_fn`` (Keras's ``minimize``): compute the loss on a
        :class:`~gradtape.GradientTape`, its gradient with respect to ``var_list``, and
        :meth:`apply_gradients`.

        Args:
            loss_fn: a callable of no arguments returning the loss (a Tensor; a non-scalar loss
                is summed, as ``tape.gradient`` does). It is called inside the tape, so it must
                compute the loss, not return one computed before.
            var_list: the Variables to update (e.g. ``model.trainable_variables``), or a callable
                of no arguments returning them, called after ``loss_fn`` (for Variables created
                lazily by it). Listed Variables are watched even when not trainable.

        Returns:
            The loss ``loss_fn`` returned (computed before the update).

        Raises:
            TypeError: ``loss_fn`` is not callable (e.g. a loss Tensor) or does not return a
                Tensor; an entry of ``var_list`` is not a Variable.

        Example:
            >>> import gradtape as gt
            >>> w = gt.Variable([3.0], name="w")
            >>> opt = gt.optimizers.SGD(0.25)
            >>> for _ in range(2):
            ...     loss = opt.minimize(lambda: gt.sum(w * w), [w])
            >>> w.numpy(), float(loss)
            (array([0.75], dtype=float32), 2.25)
        """
        who = f"{type(self).__name__}.minimize"
        if not callable(loss_fn):
            raise TypeError(f"{who}: loss_fn must be a callable of no arguments that computes the "
                            f"loss (e.g. lambda: gt.nn.mse(model(x), y)), got "
                            f"{type(loss_fn).__name__}; a loss computed before the call was not "
                            "recorded by minimize's tape")
        if hasattr(var_list, "trainable_variables"):  # a Module is callable too: not a var_list
            raise TypeError(f"{who}: var_list must be a list of Variables; pass "
                            "model.trainable_variables rather than the model")
        variables = None if callable(var_list) else self._var_list(var_list, who)
        with GradientTape() as tape:
            if variables is not None:
                tape.watch(variables)
            loss = loss_fn()
        if not isinstance(loss, Tensor):
            raise TypeError(f"{who}: loss_fn must return the loss as a Tensor, got "
                            f"{type(loss).__name__}")
        if variables is None:
            variables = self._var_list(var_list(), who)  # type: ignore[operator]
        grads = tape.gradient(loss, variables)
        self._apply(zip(grads, variables), "minimize")
        return loss

    @staticmethod
    def _var_list(var_list: Any, who: str) -> list[Variable]:
        if isinstance(var_list, Tensor) or not isinstance(var_list, Iterable):
            raise TypeError(f"{who}: var_list must be a list of Variables (e.g. "
                            f"model.trainable_variables), got {type(var_list).__name__}")
        out = list(var_list)
        for i, v in enumerate(out):
            if not isinstance(v, Variable):
                raise TypeError(f"{who}: var_list[{i}] must be a gt.Variable, got {type(v).__name__}")
        return out

    # --- checkpoints ------------------------------------------------------------------------
    def _named(self, named_variables: Iterable[tuple[str, Variable]] | None, who: str
               ) -> list[tuple[str, Variable]]:
        """``named_variables`` as a checked list of ``(str, Variable)`` pairs; None: the living
        Variables this optimizer has state for, in creation order, each under the key it got
        when it first gained state here (:meth:`_track`): its ``name`` when no living Variable
        with state had that key, else ``"<name or 'variable'>#<n>"``. Keys are kept for life
        and in copies of the optimizer and are unique: names worked out again at each call
        would change when another Variable of the same name gains state (a snapshot would
        then not restore), and a generated name could equal another Variable's own name (one
        entry would overwrite the other)."""
        if named_variables is not None:
            return _check_named(who, named_variables)
        if self._dead:
            self._purge()
        named: list[tuple[str, Variable]] = []
        for vid in sorted(self._state):
            key = self._keys.get(vid)  # (None: died since the purge, its key taken over)
            v = self._key_owner[key][1]() if key is not None else None
            if key is not None and v is not None:
                named.append((key, v))
        return named

    def state_dict(self, named_variables: Iterable[tuple[str, Variable]] | None = None
                   ) -> dict[str, np.ndarray]:
        """Host arrays of the state: ``"<variable name>/<slot>"`` for each variable that has
        state, plus ``"iterations"`` and a ``"hyper.<name>"`` 0-d array per hyper-parameter
        (``learning_rate`` unless it is a schedule; None as NaN), as PyTorch's carries ``lr``:
        a value set by hand survives a save and load.

        Args:
            named_variables: ``(name, variable)`` pairs naming the entries, e.g.
                ``model.named_variables()`` (what :meth:`gradtape.nn.Module.save` passes). None
                (the default): every Variable this optimizer has updated and that is still
                alive, in creation order, under the key it got when it first gained state
                here: its ``name``, or ``"<name or variable>#<n>"`` when it has none or a
                living Variable with state already had that key (``n`` counts the keys made
                so). Keys are unique and kept for life and by copies of the optimizer, so a
                snapshot restores to the same Variables after others gain state.

        Returns copies: later steps do not change them.

        Example:
            >>> import gradtape as gt
            >>> w = gt.Variable([1.0], name="w")
            >>> opt = gt.optimizers.Adam(0.1)
            >>> opt.apply_gradients([(gt.tensor([1.0]), w)])
            >>> sorted(k for k in opt.state_dict() if "/" in k)
            ['w/m', 'w/v']
            >>> float(opt.state_dict()["hyper.learning_rate"])
            0.1
        """
        refuse_in_trace(f"{type(self).__name__}.state_dict()", "host copies of the state taken "
                        "while tracing would keep the values of the traces, not of later calls")
        if self.__dict__.get("_restored") is not None:
            self._settle_restored("this state holds none of them")
        out = {"iterations": np.asarray(self.iterations, dtype=np.int64), **self._hyper_entries()}
        for name, v in self._named(named_variables, f"{type(self).__name__}.state_dict"):
            st = self._state.get(v._id)
            if st is None:
                continue
            for slot, arr in zip(self.slot_names, st):
                if arr is not None:
                    host = v._backend.to_host(arr)  # a copy: later steps update the state
                    # in place (a device's asnumpy copies already)
                    out[f"{name}/{slot}"] = host.copy() if host is arr else host
        return out

    def _hyper_entries(self) -> dict[str, np.ndarray]:
        """The hyper-parameters as ``"hyper.<name>"`` 0-d arrays (a schedule is code: not
        saved; None as NaN; a bool as a bool). As PyTorch's ``state_dict`` carries ``lr`` and
        Keras's checkpoints the optimizer's config: a value set by hand
        (``opt.learning_rate = 1e-4``) survives a save and load."""
        out = {}
        for name, rule in self._checked.items():
            value = self.__dict__.get(name)
            if callable(value):
                continue
            if rule == "bool":
                out[_HYPER + name] = np.asarray(bool(value))
            else:
                out[_HYPER + name] = np.asarray(np.nan if value is None else float(value))
        return out

    def _check_hypers(self, state: Mapping[str, Any], who: str) -> dict[str, Any]:
        """The ``"hyper.<name>"`` entries of ``state``, decoded and checked as at construction
        (a name this optimizer does not have raises). A learning-rate schedule of this
        optimizer is kept: a saved constant does not replace it."""
        out: dict[str, Any] = {}
        for key, arr in state.items():
            if not is_hyper_key(key):
                continue
            name = str(key)[len(_HYPER):]
            rule = self._checked.get(name)
            if rule is None:
                raise ValueError(f"{who}: {key!r} names no hyper-parameter of {type(self).__name__} "
                                 f"(they are {', '.join(self._checked)})")
            a = np.asarray(arr.data if isinstance(arr, Tensor) else arr)
            if a.shape != () or a.dtype.kind not in ("b" if rule == "bool" else "fiu"):
                raise TypeError(f"{who}: {key!r} must be a "
                                f"{'bool' if rule == 'bool' else 'real number'} scalar, got "
                                f"{a.dtype} of shape {a.shape}")
            if name == "learning_rate" and callable(self.learning_rate):
                continue
            value: Any = bool(a) if rule == "bool" else a.item()
            if rule == "> 0 or None" and value != value:  # NaN: saved None
                value = None
            try:
                out[name] = self._check_hyper(name, value, rule)
            except (TypeError, ValueError) as e:  # the entry named, as for the slots
                raise type(e)(f"{who}: entry {key!r}: {e}") from None
        return out

    def load_state_dict(self, state: Mapping[str, Any],
                        named_variables: Iterable[tuple[str, Variable]] | None = None) -> None:
        """Restore :meth:`state_dict` output for the given (name, variable) pairs (None: the
        Variables this optimizer has state for, named as :meth:`state_dict` names them; an
        optimizer that has not updated them yet needs the pairs, e.g.
        ``model.named_variables()``).

        Everything is checked before anything changes (on an error the optimizer is as it
        was): ``"iterations"`` is a non-negative integer scalar; a ``"hyper.<name>"`` key (no
        ``/``) is one of this optimizer's hyper-parameters, a scalar checked as when set (a
        learning-rate schedule of this optimizer is kept; a state without these keys leaves
        them as they are); every other key is ``"<name>/<slot>"`` for one of the names and
        one of the slots this optimizer keeps with the loaded hyper-parameters
        (``slot_names``; none for ``SGD`` without momentum); a variable has all of its slots or
        none (then its state is reset, as for a variable never updated); each slot array has
        the variable's shape and dtype (or another float dtype, cast, rounding when narrowing;
        strings, objects, records, complex into real, ints and bools are refused).

        Raises:
            ValueError: ``iterations`` missing, negative or not a scalar; an unexpected or a
                missing key; a shape mismatch.
            TypeError: ``state`` is not a mapping; an entry's dtype is refused.
        """
        refuse_in_trace(f"{type(self).__name__}.load_state_dict()", "the state loaded while "
                        "tracing would be constants of the program, not read again at later calls")
        self._commit_state(self._check_state(state, named_variables))

    def _check_state(self, state: Mapping[str, Any],
                     named_variables: Iterable[tuple[str, Variable]] | None) -> tuple:
        """Validate :meth:`load_state_dict`'s arguments; returns what :meth:`_commit_state`
        installs (the slot arrays already on the variables' backends). Changes nothing."""
        who = f"{type(self).__name__}.load_state_dict"
        if not isinstance(state, Mapping):
            raise TypeError(f"{who}: state must be a mapping of name -> array, got "
                            f"{type(state).__name__}")
        if "iterations" not in state:
            raise ValueError(f"{who}: no 'iterations' entry")
        iterations = _check_iterations(who, state["iterations"])
        hypers = self._check_hypers(state, who)
        named = self._named(named_variables, who)
        variables = dict(named)
        # the slots kept with the loaded hyper-parameters (SGD keeps momentum for momentum > 0),
        # asked of a probe: this optimizer changes only at the commit
        probe = object.__new__(type(self))
        probe.__dict__.update({**self.__dict__, **hypers})
        kept = [s for s in self.slot_names if probe._needs_slot(s)]
        # a slot not needed with the state's own hyper-parameters may still be in it: SGD keeps
        # its momentum buffer while momentum is set to 0, for when it returns, and state_dict
        # writes it with momentum 0; loaded as it is. A state without hyper-parameters gets the
        # slots this optimizer needs as it is set (an SGD without momentum refuses momentum).
        allowed = list(self.slot_names) if hypers else kept
        grouped: dict[str, dict[str, Any]] = {}
        unexpected = []
        for key, arr in state.items():
            if key == "iterations" or is_hyper_key(key):
                continue
            name, sep, slot = str(key).rpartition("/")
            if not sep or name not in variables or slot not in allowed:
                unexpected.append(str(key))
                continue
            grouped.setdefault(name, {})[slot] = arr
        if unexpected:
            hint = ("; without named_variables only the variables this optimizer has updated are "
                    "known: pass them, e.g. model.named_variables()" if named_variables is None else "")
            raise ValueError(f"{who}: unexpected entries {sorted(unexpected)}: expected "
                             f"'<variable name>/<slot>' with a slot of {allowed} (what this "
                             f"{self!r} keeps) for one of the variables {sorted(variables)}{hint}")
        new_state: dict[int, tuple] = {}
        for name, v in named:
            slots = grouped.get(name)
            if not slots:
                new_state[v._id] = (v, None)
                continue
            missing = [f"{name}/{s}" for s in kept if s not in slots]
            if missing:
                raise ValueError(f"{who}: missing entries {missing}: a variable's state is all of "
                                 f"{kept} or none")
            arrays: list[Any] = []
            for slot in self.slot_names:
                if slot not in slots:  # (a slot not needed now and not in the state)
                    arrays.append(None)
                    continue
                key = f"{name}/{slot}"
                arr = slots[slot]
                if isinstance(arr, Tensor):
                    arr = arr.data
                if not isinstance(arr, np.ndarray) and not v._backend.owns(arr):
                    try:  # (a list, a PyTorch tensor: through NumPy)
                        arr = np.asarray(arr)
                    except (TypeError, ValueError, RuntimeError) as exc:
                        raise TypeError(f"{who}: entry {key!r} cannot be read as an array "
                                        f"({type(arr).__name__}: {exc})") from None
                if tuple(arr.shape) != v.shape:
                    raise ValueError(f"{who}: {key} has shape {tuple(arr.shape)}, the variable "
                                     f"{v.shape}")
                problem = _checkpoint_dtype_error(key, v.dtype, arr.dtype)
                if problem:
                    raise TypeError(f"{who}: {problem}")
                arrays.append(_cast_entry(who, key, v._backend.xp.array(arr, copy=True), v.dtype))
            new_state[v._id] = (v, tuple(arrays))
        return iterations, new_state, hypers

    def _commit_state(self, checked: tuple) -> None:
        """Install what :meth:`_check_state` returned (cannot fail)."""
        iterations, new_state, hypers = checked
        self._restored, self._lost = None, []  # (state given explicitly: nothing to warn of)
        for k, value in hypers.items():
            object.__setattr__(self, k, value)  # (checked by _check_hypers)
        for key, (v, slots) in new_state.items():
            if slots is None:
                self._state.pop(key, None)  # (the Variable keeps its key)
            else:
                self._state[key] = slots
                self._track(v)
        self.iterations = iterations

    def __repr__(self) -> str:
        # the constructor's own arguments where each is an attribute of its name (a subclass
        # defined elsewhere may keep them otherwise: its scalars then)
        params = inspect.signature(type(self).__init__).parameters
        names = [n for n, p in params.items()
                 if n != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        passes_on = any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params.values())
        if names and not passes_on and all(n in self.__dict__ for n in names):
            args = ", ".join(f"{n}={self.__dict__[n]!r}" for n in names)
            return f"{type(self).__name__}({args})"
        args = ", ".join(f"{n}={self.__dict__[n]!r}" for n in self._checked if n in self.__dict__)
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum, Nesterov momentum and L2 weight
    decay (PyTorch's formulation; equal to Keras's for a constant learning rate).

    Args:
        learning_rate: a float >= 0 or a schedule ``f(step) -> float`` (default 0.01).
        momentum: in ``[0, 1]``; 0 (the default) keeps no state.
        nesterov: Nesterov momentum (needs ``momentum > 0``).
        weight_decay: L2 penalty added to the gradient (``g + weight_decay * p``).
        global_clipnorm: clip all gradients of a step to this joint 2-norm (None: no clipping).

    Example:
        >>> import gradtape as gt
        >>> opt = gt.optimizers.SGD(0.1, momentum=0.9, nesterov=True)
    """

    slot_names = ("momentum",)
    _checked = {**Optimizer._checked, "momentum": "in [0, 1]", "nesterov": "bool",
                "weight_decay": ">= 0"}

    def __init__(self, learning_rate: float | Callable[[int], float] = 0.01, momentum: float = 0.0,
                 nesterov: bool = False, weight_decay: float = 0.0,
                 global_clipnorm: float | None = None) -> None:
        super().__init__(learning_rate, global_clipnorm)
        self.momentum = momentum
        self.nesterov = nesterov
        if self.nesterov and self.momentum == 0:
            raise ValueError("SGD: nesterov=True needs momentum > 0")
        self.weight_decay = weight_decay

    def _needs_slot(self, name: str) -> bool:
        return self.momentum != 0.0

    def _scalars(self) -> dict:
        return {"lr": self.current_learning_rate, "momentum": self.momentum,
                "nesterov": self.nesterov, "weight_decay": self.weight_decay}

    def _rule(self) -> UpdateRule:
        return sgd_rule(self.momentum != 0.0, self.nesterov, self.weight_decay != 0.0)

    def _rule_scalars(self, scalars: dict) -> dict[str, float]:
        return scalars


class Adam(Optimizer):
    """Adam (Kingma & Ba, 2015) with bias correction. ``weight_decay`` here is L2 added to the
    gradient; use :class:`AdamW` for decoupled decay. The bias correction counts the
    optimizer's steps (``iterations``), as Keras does: a Variable first updated at a later
    step is corrected for that step's count (PyTorch counts each parameter's own updates).

    Args:
        learning_rate: a float >= 0 or a schedule ``f(step) -> float`` (default 1e-3).
        beta1, beta2: decay rates of the first and second moment estimates, in ``[0, 1)``.
        epsilon: added to the denominator ``sqrt(v_hat)`` (PyTorch's placement).
        weight_decay: L2 penalty added to the gradient (``g + weight_decay * p``).
        global_clipnorm: clip all gradients of a step to this joint 2-norm (None: no clipping).

    Example:
        >>> import gradtape as gt
        >>> opt = gt.optimizers.Adam(1e-3)
    """

    slot_names = ("m", "v")
    _checked = {**Optimizer._checked, "beta1": "in [0, 1)", "beta2": "in [0, 1)",
                "epsilon": ">= 0", "weight_decay": ">= 0"}
    _decoupled = False

    def __init__(self, learning_rate: float | Callable[[int], float] = 1e-3, beta1: float = 0.9,
                 beta2: float = 0.999, epsilon: float = 1e-8, weight_decay: float = 0.0,
                 global_clipnorm: float | None = None) -> None:
        super().__init__(learning_rate, global_clipnorm)
        self.beta1 = beta1
        self.beta2 = beta2
        self.epsilon = epsilon
        self.weight_decay = weight_decay

    def _scalars(self) -> dict:
        return {"lr": self.current_learning_rate, "beta1": self.beta1, "beta2": self.beta2,
                "eps": self.epsilon, "step": self.iterations + 1,
                "weight_decay": self.weight_decay, "decoupled": self._decoupled}

    def _rule(self) -> UpdateRule:
        return adam_rule(self.weight_decay != 0.0, self._decoupled)

    def _hyper_entries(self) -> dict[str, np.ndarray]:
        # what weight_decay means (PyTorch's Adam carries decoupled_weight_decay in its
        # state too): an AdamW state loaded into Adam would turn decoupled decay into L2
        return {**super()._hyper_entries(), _DECOUPLED: np.asarray(self._decoupled)}

    def _check_hypers(self, state: Mapping[str, Any], who: str) -> dict[str, Any]:
        out = super()._check_hypers({k: a for k, a in state.items() if k != _DECOUPLED}, who)
        if _DECOUPLED not in state:  # (a state written before it was recorded)
            return out
        arr = state[_DECOUPLED]
        a = np.asarray(arr.data if isinstance(arr, Tensor) else arr)
        if a.shape != () or a.dtype.kind != "b":
            raise TypeError(f"{who}: {_DECOUPLED!r} must be a bool scalar, got {a.dtype} of "
                            f"shape {a.shape}")
        decay = out.get("weight_decay", self.weight_decay)
        if bool(a) != self._decoupled and decay != 0:
            wrote, ours = ("AdamW", "Adam") if bool(a) else ("Adam", "AdamW")
            raise ValueError(
                f"{who}: this state was written by {wrote} (weight_decay={decay} as "
                f"{'decoupled decay' if bool(a) else 'L2 added to the gradient'}); {ours} would "
                f"read it as {'L2 added to the gradient' if bool(a) else 'decoupled decay'}: "
                f"load it into gt.optimizers.{wrote}")
        return out

    def _rule_scalars(self, scalars: dict) -> dict[str, float]:
        lr, b1, b2, t = scalars["lr"], scalars["beta1"], scalars["beta2"], scalars["step"]
        return {"beta1": b1, "one_minus_beta1": 1.0 - b1, "beta2": b2,
                "one_minus_beta2": 1.0 - b2, "step_size": lr / (1.0 - b1 ** t),
                "inv_sqrt_bc2": 1.0 / math.sqrt(1.0 - b2 ** t), "eps": scalars["eps"],
                "weight_decay": scalars["weight_decay"],
                "decay": 1.0 - lr * scalars["weight_decay"]}


class RMSprop(Optimizer):
    """RMSprop (Hinton), PyTorch's formulation and defaults: a running average of squared
    gradients ``v`` scales each step, ``p -= lr * g / (sqrt(v) + eps)``; ``centered``
    subtracts the squared running mean of the gradients from ``v``; ``momentum`` keeps a
    buffer of the scaled steps. (Keras's ``RMSprop`` defaults to ``learning_rate=1e-3``,
    ``rho=0.9``, ``epsilon=1e-7``, and adds ``epsilon`` inside the square root.)

    Args:
        learning_rate: a float >= 0 or a schedule ``f(step) -> float`` (default 0.01).
        rho: decay of the running averages, in ``[0, 1)`` (PyTorch's ``alpha``; default 0.99).
        momentum: in ``[0, 1]``; 0 (the default) keeps no buffer.
        epsilon: added to the denominator ``sqrt(v)`` (default 1e-8).
        centered: normalize by the variance estimate ``v - mean(g)^2``.
        weight_decay: L2 penalty added to the gradient (``g + weight_decay * p``).
        global_clipnorm: clip all gradients of a step to this joint 2-norm (None: no clipping).

    Example:
        >>> import gradtape as gt
        >>> opt = gt.optimizers.RMSprop(1e-3, momentum=0.9, centered=True)
    """

    slot_names = ("v", "g_avg", "momentum")
    _checked = {**Optimizer._checked, "rho": "in [0, 1)", "momentum": "in [0, 1]",
                "epsilon": ">= 0", "centered": "bool", "weight_decay": ">= 0"}

    def __init__(self, learning_rate: float | Callable[[int], float] = 0.01, rho: float = 0.99,
                 momentum: float = 0.0, epsilon: float = 1e-8, centered: bool = False,
                 weight_decay: float = 0.0, global_clipnorm: float | None = None) -> None:
        super().__init__(learning_rate, global_clipnorm)
        self.rho = rho
        self.momentum = momentum
        self.epsilon = epsilon
        self.centered = centered
        self.weight_decay = weight_decay

    def _needs_slot(self, name: str) -> bool:
        return name == "v" or (name == "g_avg" and self.centered) or (
            name == "momentum" and self.momentum != 0.0)

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        if name == "centered" and not self.centered and "_state" in self.__dict__:
            # the mean of the gradients is dropped (not kept, as SGD's momentum buffer is):
            # not updated while centered is off, it would be stale when it returns (its
            # square past v made the variance 0 and the step lr * g / eps)
            i = self.slot_names.index("g_avg")
            for vid, st in list(self._state.items()):
                if st[i] is not None:
                    self._state[vid] = (*st[:i], None, *st[i + 1:])

    def _scalars(self) -> dict:
        return {"lr": self.current_learning_rate, "rho": self.rho, "momentum": self.momentum,
                "eps": self.epsilon, "weight_decay": self.weight_decay}

    def _rule(self) -> UpdateRule:
        return rmsprop_rule(self.centered, self.momentum != 0.0, self.weight_decay != 0.0)

    def _rule_scalars(self, scalars: dict) -> dict[str, float]:
        return {**scalars, "one_minus_rho": 1.0 - scalars["rho"]}


class Adagrad(Optimizer):
    """Adagrad (Duchi et al.), PyTorch's formulation: the sum of squared gradients scales each
    step, ``p -= lr * g / (sqrt(sum) + eps)``. (Keras's ``Adagrad`` defaults to
    ``learning_rate=1e-3``, ``initial_accumulator_value=0.1``, ``epsilon=1e-7``.) PyTorch's
    ``lr_decay`` is a schedule here: ``learning_rate=lambda t: lr / (1 + t * lr_decay)``.

    Args:
        learning_rate: a float >= 0 or a schedule ``f(step) -> float`` (default 0.01).
        initial_accumulator_value: the sum's starting value, >= 0 (default 0).
        epsilon: added to the denominator ``sqrt(sum)`` (default 1e-10).
        weight_decay: L2 penalty added to the gradient (``g + weight_decay * p``).
        global_clipnorm: clip all gradients of a step to this joint 2-norm (None: no clipping).

    Example:
        >>> import gradtape as gt
        >>> opt = gt.optimizers.Adagrad(0.1, initial_accumulator_value=0.1)
    """

    slot_names = ("sum",)
    _checked = {**Optimizer._checked, "initial_accumulator_value": ">= 0", "epsilon": ">= 0",
                "weight_decay": ">= 0"}

    def __init__(self, learning_rate: float | Callable[[int], float] = 0.01,
                 initial_accumulator_value: float = 0.0, epsilon: float = 1e-10,
                 weight_decay: float = 0.0, global_clipnorm: float | None = None) -> None:
        super().__init__(learning_rate, global_clipnorm)
        self.initial_accumulator_value = initial_accumulator_value
        self.epsilon = epsilon
        self.weight_decay = weight_decay

    def _new_slot(self, name: str, v: Variable, xp: Any) -> Array:
        return xp.full_like(v.data, self.initial_accumulator_value)

    def _scalars(self) -> dict:
        return {"lr": self.current_learning_rate, "eps": self.epsilon,
                "weight_decay": self.weight_decay}

    def _rule(self) -> UpdateRule:
        return adagrad_rule(self.weight_decay != 0.0)

    def _rule_scalars(self, scalars: dict) -> dict[str, float]:
        return scalars


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter): ``p *= 1 - lr * weight_decay``
    before the Adam step. Default ``weight_decay=0.01`` (PyTorch).

    Args:
        learning_rate, beta1, beta2, epsilon, global_clipnorm: as :class:`Adam`.
        weight_decay: the decoupled decay rate (default 0.01).

    Example:
        >>> import gradtape as gt
        >>> opt = gt.optimizers.AdamW(1e-3, weight_decay=0.01)
    """

    _decoupled = True

    def __init__(self, learning_rate: float | Callable[[int], float] = 1e-3, beta1: float = 0.9,
                 beta2: float = 0.999, epsilon: float = 1e-8, weight_decay: float = 0.01,
                 global_clipnorm: float | None = None) -> None:
        super().__init__(learning_rate, beta1, beta2, epsilon, weight_decay, global_clipnorm)
