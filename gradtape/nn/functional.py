"""Neural-network ops on tensors: activations with a class axis, losses, dropout, layer norm,
embedding.

Softmax, log-softmax and integer-label cross-entropy are primitives with their own VJP rules
(they read the saved output or the saved logits; each rule is rendered on arrays for first
order and in gradtape ops, so higher orders compose); the rest are compositions of core ops.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import ops
from .._src.autodiff.batched import physical_data
from .._src.autodiff.record import Record
from .._src.primitive import REGISTRY, bind, primitive
from .._src.rules import OnTensors
from .._src.tensor import Tensor, _wrap
from ..ops._util import normalize_axis, one
from ..ops.elementwise import P_EQUAL, P_EXP
from ..ops.reductions import P_SUM
from ..ops.shape import P_ASTYPE, P_RESHAPE

__all__ = ["softmax", "log_softmax", "cross_entropy", "mse", "binary_cross_entropy", "dropout",
           "layer_norm", "embedding"]

_REDUCTIONS = ("mean", "sum", "none")


def _axis1(axis: Any, ndim: int, what: str) -> int:
    if ndim == 0:
        raise ValueError(f"{what}: expected a tensor of rank >= 1, got a scalar")
    a = int(axis)
    if not -ndim <= a < ndim:
        raise ValueError(f"{what}: axis {axis} is out of range for a tensor of rank {ndim}")
    return a % ndim


def _float_input(x: Any, what: str, name: str = "x") -> Tensor:
    x = one(x)
    if x.dtype.kind != "f":
        raise TypeError(f"{what}: {name} must be a float tensor, got dtype {x.dtype}")
    return x


def _reduce(loss: Tensor, reduction: str, what: str) -> Tensor:
    if reduction == "none":
        return loss
    total = ops.sum(loss)
    if reduction == "sum":
        return total
    if reduction == "mean":
        return total * (1.0 / max(loss.size, 1))
    raise ValueError(f"{what}: reduction must be one of {_REDUCTIONS}, got {reduction!r}")


# --------------------------------------------------------------------------- softmax family
def _softmax_impl(xp: Any, x: Any, *, axis: int) -> Any:
    e = xp.exp(x - x.max(axis=axis, keepdims=True))
    e /= e.sum(axis=axis, keepdims=True)
    return e


def _softmax_jvp(m: OnTensors, primals: tuple, tangents: tuple, out: Tensor, *, axis: int
                 ) -> Tensor:
    ty = tangents[0] * out  # y' = y * (x' - sum(y * x'))
    return ty - out * m.apply(P_SUM, ty, axis=(axis,), keepdims=True)


def _softmax_rule(m: OnTensors, rec: Record, g: Tensor) -> tuple:
    y = m.val(rec.output)
    gy = g * y
    return (gy - y * m.apply(P_SUM, gy, axis=(rec.params["axis"],), keepdims=True),)


def _log_softmax_impl(xp: Any, x: Any, *, axis: int) -> Any:
    s = x - x.max(axis=axis, keepdims=True)
    s -= xp.log(xp.exp(s).sum(axis=axis, keepdims=True))
    return s


def _log_softmax_jvp(m: OnTensors, primals: tuple, tangents: tuple, out: Tensor, *, axis: int
                     ) -> Tensor:
    t = tangents[0]  # y' = x' - sum(softmax(x) * x')
    return t - m.apply(P_SUM, m.apply(P_EXP, out) * t, axis=(axis,), keepdims=True)


def _log_softmax_rule(m: OnTensors, rec: Record, g: Tensor) -> tuple:
    y = m.val(rec.output)
    return (g - m.apply(P_EXP, y) * m.apply(P_SUM, g, axis=(rec.params["axis"],), keepdims=True),)


def _softmax_examples(rng: np.random.Generator) -> list:
    x = rng.normal(size=(3, 5))
    return [(softmax, (x,), {}), (softmax, (x,), {"axis": 0}),
            (softmax, (rng.normal(size=(2, 3, 4)),), {"axis": 1})]


def _log_softmax_examples(rng: np.random.Generator) -> list:
    x = rng.normal(size=(3, 5))
    return [(log_softmax, (x,), {}), (log_softmax, (x,), {"axis": 0}),
            (log_softmax, (rng.normal(size=(2, 3, 4)),), {"axis": 1})]


def _to_front(t: Tensor, d: int | None, size: int) -> Tensor:
    """Batching helper: the batch axis ``d`` of ``t`` moved to the front (broadcast there
    when ``t`` is unbatched)."""
    if d is None:
        return ops.broadcast_to(ops.reshape(t, (1,) + t.shape), (size,) + t.shape)
    return t if d == 0 else ops.moveaxis(t, d, 0)


def _axis_batch(prim_name: str) -> Any:
    # vmap rule for ops with one input and an ``axis`` parameter: shift the axis by one.
    def rule(args: tuple, dims: tuple, *, axis: int) -> tuple:
        x = _to_front(args[0], dims[0] % args[0].ndim, 0)
        return bind(REGISTRY[prim_name], x, axis=axis % (x.ndim - 1) + 1), 0

    return rule


P_SOFTMAX = primitive("softmax", _softmax_impl, rule=_softmax_rule, jvp=_softmax_jvp, saves_inputs=False,
                      saves_output=True, examples=_softmax_examples, batch=_axis_batch("softmax"))
P_LOG_SOFTMAX = primitive("log_softmax", _log_softmax_impl, rule=_log_softmax_rule,
                          jvp=_log_softmax_jvp,
                          saves_inputs=False, saves_output=True, examples=_log_softmax_examples,
                          batch=_axis_batch("log_softmax"))


def softmax(x: Any, axis: int = -1) -> Tensor:
    """Softmax along ``axis``: ``exp(x) / sum(exp(x))``, computed without overflow.

    Shapes: ``x[..., C]`` -> same shape; sums to 1 along ``axis``.

    Example:
        >>> import gradtape as gt
        >>> gt.nn.softmax(gt.tensor([0.0, 0.0])).numpy()
        array([0.5, 0.5], dtype=float32)
    """
    x = _float_input(x, "softmax")
    return bind(P_SOFTMAX, x, axis=_axis1(axis, x.ndim, "softmax"))


def log_softmax(x: Any, axis: int = -1) -> Tensor:
    """``log(softmax(x))`` along ``axis``, stable for large magnitudes (``x - logsumexp(x)``).

    Shapes: ``x[..., C]`` -> same shape.

    Example:
        >>> import gradtape as gt
        >>> gt.nn.log_softmax(gt.tensor([1e4, 0.0])).numpy()
        array([     0., -10000.], dtype=float32)
    """
    x = _float_input(x, "log_softmax")
    return bind(P_LOG_SOFTMAX, x, axis=_axis1(axis, x.ndim, "log_softmax"))


# --------------------------------------------------------------------------- cross-entropy
def _sce_impl(xp: Any, logits: Any, labels: Any) -> Any:
    lsm = _log_softmax_impl(xp, logits, axis=-1)
    return -xp.take_along_axis(lsm, labels[..., None].astype(np.intp, copy=False), axis=-1)[..., 0]


def _sce_jvp(m: OnTensors, primals: tuple, tangents: tuple, out: Tensor, **p: Any) -> Tensor:
    # d loss / d logits = softmax(logits) - onehot(labels); integer labels have no tangent
    logits, labels = primals
    t = tangents[0]
    d = m.apply(P_SOFTMAX, logits, axis=logits.ndim - 1) - _onehot(m, labels, logits)
    return m.apply(P_SUM, d * t, axis=(logits.ndim - 1,), keepdims=False)


def _sce_rule(m: OnTensors, rec: Record, g: Tensor) -> tuple:
    logits = m.val(rec.inputs[0])
    onehot = _onehot(m, m.val(rec.inputs[1]), logits)
    p = m.apply(P_SOFTMAX, logits, axis=len(logits.shape) - 1)
    return ((p - onehot) * m.apply(P_RESHAPE, g, shape=g.shape + (1,)), None)


def _onehot(m: OnTensors, labels: Any, like: Any) -> Any:
    # onehot(labels) in like's dtype, built with primitives (not from the label array), so the
    # rule also runs on batched labels inside gt.vmap
    classes = m.const(m.xp_of(like).arange(like.shape[-1]), like)
    hit = m.apply(P_EQUAL, classes, m.apply(P_RESHAPE, labels, shape=tuple(labels.shape) + (1,)))
    return m.apply(P_ASTYPE, hit, dtype=like.dtype)


def _sce_examples(rng: np.random.Generator) -> list:
    return [(cross_entropy, (rng.normal(size=(4, 5)), rng.integers(0, 5, size=4)), {}),
            (cross_entropy, (rng.normal(size=(2, 3, 4)), rng.integers(0, 4, size=(2, 3))),
             {"reduction": "none"}),
            (cross_entropy, (rng.normal(size=(3, 4)), rng.dirichlet(np.ones(4), size=3)),
             {"reduction": "sum"})]


def _sce_batch(args: tuple, dims: tuple) -> tuple:
    # softmax_cross_entropy: batch axes to the front; an unbatched operand gets a size-1 axis
    # there, which the label lookup broadcasts (it is not copied B times).
    logits, labels = (ops.reshape(a, (1,) + a.shape) if d is None else _to_front(a, d % a.ndim, 0)
                      for a, d in zip(args, dims))
    return bind(P_SOFTMAX_CROSS_ENTROPY, logits, labels), 0


P_SOFTMAX_CROSS_ENTROPY = primitive("softmax_cross_entropy", _sce_impl, rule=_sce_rule, jvp=_sce_jvp,
                                    examples=_sce_examples, batch=_sce_batch)


def _as_labels(labels: Any, like: Tensor) -> Tensor:
    if isinstance(labels, Tensor):
        if labels._backend is not like._backend:
            raise ValueError(f"cross_entropy: labels are on backend {labels.backend!r}, logits on "
                             f"{like.backend!r}; move one with .to()")
        return labels
    arr = like._backend.xp.asarray(labels)
    return _wrap(arr, like._backend)


def cross_entropy(logits: Any, labels: Any, reduction: str = "mean") -> Tensor:
    """Softmax cross-entropy between ``logits`` and integer class labels or target
    probabilities, stable for logits of any magnitude.

    Shapes:
        ``logits[..., C]``; ``labels`` either integers ``[...]`` in ``[0, C)`` (class indices)
        or floats ``[..., C]`` (a distribution per example, e.g. one-hot or smoothed). The
        per-example loss has shape ``[...]``; ``reduction="mean"`` averages it over the
        examples, ``"sum"`` adds it up, ``"none"`` returns it.

    The gradient with respect to the logits is ``softmax(logits) - onehot(labels)`` (times the
    upstream gradient); probability targets are differentiable too.

    Example:
        >>> import gradtape as gt
        >>> logits = gt.tensor([[2.0, 0.0], [0.0, 2.0]])
        >>> round(float(gt.nn.cross_entropy(logits, [0, 1])), 4)
        0.1269
    """
    logits = _float_input(logits, "cross_entropy", "logits")
    if logits.ndim == 0:
        raise ValueError("cross_entropy: logits must have a class axis (rank >= 1), got a scalar")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"cross_entropy: reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    labels = _as_labels(labels, logits)
    C = logits.shape[-1]
    if labels.dtype.kind in "iu":
        if labels.shape != logits.shape[:-1]:
            raise ValueError(f"cross_entropy: integer labels must have shape logits.shape[:-1] = "
                             f"{logits.shape[:-1]}, got {labels.shape} (logits {logits.shape})")
        lab = physical_data(labels)  # every example's labels, also inside gt.vmap
        if labels.size and bool(((lab < 0) | (lab >= C)).any()):
            lo, hi = int(lab.min()), int(lab.max())
            raise ValueError(f"cross_entropy: labels must be class indices in [0, {C}), got values "
                             f"in [{lo}, {hi}]")
        loss = bind(P_SOFTMAX_CROSS_ENTROPY, logits, labels)
    elif labels.dtype.kind == "f":
        if labels.shape != logits.shape:
            raise ValueError(f"cross_entropy: probability targets must have the logits' shape "
                             f"{logits.shape}, got {labels.shape}; integer class labels need an "
                             "integer dtype")
        loss = -ops.sum(labels * log_softmax(logits), axis=-1)
    else:
        raise TypeError(f"cross_entropy: labels must be integer class indices or float "
                        f"probabilities, got dtype {labels.dtype}")
    return _reduce(loss, reduction, "cross_entropy")


def _same_shape(p: Tensor, t: Tensor, raw_targets: Any, what: str, name: str) -> None:
    """A loss compares elements one to one: a target of another shape would broadcast into a
    silently wrong loss ((4, 1) against (4,) gives a (4, 4) table), so it is refused. A Python
    number as target is a constant for every element."""
    if p.shape != t.shape and not isinstance(raw_targets, (int, float)):
        raise ValueError(f"{what}: {name} of shape {p.shape} and targets of shape {t.shape} differ; "
                         "reshape one of them (e.g. targets.reshape(predictions.shape))")


def mse(predictions: Any, targets: Any, reduction: str = "mean") -> Tensor:
    """Mean squared error ``(predictions - targets) ** 2``, reduced over all elements.

    Shapes: ``predictions`` and ``targets`` have the same shape (``ValueError`` naming both
    otherwise; a Python number as target is allowed); ``reduction="none"`` returns the
    elementwise squared error.

    Example:
        >>> import gradtape as gt
        >>> float(gt.nn.mse(gt.tensor([1.0, 3.0]), gt.tensor([0.0, 0.0])))
        5.0
    """
    p, t = ops._util.pair(predictions, targets)
    _same_shape(p, t, targets, "mse", "predictions")
    return _reduce(ops.square(p - t), reduction, "mse")


def binary_cross_entropy(logits: Any, targets: Any, reduction: str = "mean") -> Tensor:
    """Binary cross-entropy from logits: ``softplus(x) - x * t``, the stable form of
    ``-(t log sigmoid(x) + (1 - t) log(1 - sigmoid(x)))``.

    Shapes: ``logits`` and ``targets`` (probabilities in [0, 1]) have the same shape
    (``ValueError`` naming both otherwise); the mean is over all elements.

    Example:
        >>> import gradtape as gt
        >>> round(float(gt.nn.binary_cross_entropy(gt.tensor([0.0]), gt.tensor([1.0]))), 4)
        0.6931
    """
    x = _float_input(logits, "binary_cross_entropy", "logits")
    x, t = ops._util.pair(x, targets)
    if t.dtype.kind != "f":
        t = ops.astype(t, x.dtype)
    _same_shape(x, t, targets, "binary_cross_entropy", "logits")
    return _reduce(ops.softplus(x) - x * t, reduction, "binary_cross_entropy")


# --------------------------------------------------------------------------- dropout
_default_generators: dict = {}


def _generator_for(xp: Any, seed: Any, generator: Any) -> Any:
    if generator is not None:
        if not callable(getattr(generator, "random", None)):
            raise TypeError(f"dropout: generator must be a numpy.random.Generator (or "
                            f"cupy.random.Generator), got {type(generator).__name__}")
        return generator
    if seed is not None:
        return xp.random.default_rng(seed)
    gen = _default_generators.get(id(xp))
    if gen is None:
        gen = _default_generators[id(xp)] = xp.random.default_rng()
    return gen


def dropout(x: Any, rate: float, training: bool = True, seed: int | None = None,
            generator: Any = None) -> Tensor:
    """Zero each element with probability ``rate`` and scale the rest by ``1 / (1 - rate)``
    (inverted dropout), only when ``training``; otherwise return ``x`` unchanged.

    Args:
        x: float tensor of any shape.
        rate: drop probability in ``[0, 1)``.
        training: apply dropout (True) or pass ``x`` through (False).
        seed: seed for a fresh generator (reproducible masks).
        generator: a ``numpy.random.Generator`` (or ``cupy.random.Generator``) to draw from;
            takes precedence over ``seed``. Without either, a process-wide generator is used.

    Shapes: same as ``x``.

    Example:
        >>> import gradtape as gt
        >>> y = gt.nn.dropout(gt.tensor([1.0, 1.0, 1.0, 1.0]), 0.5, seed=0)
        >>> sorted(set(y.numpy().tolist())) in ([0.0, 2.0], [0.0], [2.0])
        True
    """
    x = _float_input(x, "dropout")
    rate = float(rate)
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"dropout: rate must be in [0, 1), got {rate}")
    if not training or rate == 0.0:
        return x
    xp = x._backend.xp
    u = _generator_for(xp, seed, generator).random(x.shape)
    mask = xp.asarray(u >= rate).astype(x.dtype) * x.dtype.type(1.0 / (1.0 - rate))
    return x * _wrap(mask, x._backend)


# --------------------------------------------------------------------------- layer norm
def layer_norm(x: Any, gamma: Any = None, beta: Any = None, axis: Any = -1,
               eps: float = 1e-5) -> Tensor:
    """Normalize over ``axis`` to zero mean and unit variance, then scale by ``gamma`` and
    shift by ``beta``: ``(x - mean) / sqrt(var + eps) * gamma + beta`` (biased variance).

    Shapes: ``x[..., D]``; ``gamma`` and ``beta`` broadcast against the normalized axes
    (``[D]`` for the default ``axis=-1``); the result has ``x``'s shape.

    Example:
        >>> import gradtape as gt
        >>> y = gt.nn.layer_norm(gt.tensor([[1.0, 3.0]]))
        >>> [round(v, 3) for v in y.numpy()[0].tolist()]
        [-1.0, 1.0]
    """
    x = _float_input(x, "layer_norm")
    if isinstance(eps, (str, bytes, bool)) or not isinstance(eps, (int, float, np.integer, np.floating)) \
            or not float(eps) > 0:
        raise ValueError(f"layer_norm: eps must be a positive number (it keeps sqrt(var + eps) "
                         f"away from 0), got {eps!r}")
    axes = normalize_axis(axis, x.ndim, "layer_norm")
    if axes is None:  # all axes, as the reductions
        axes = tuple(range(x.ndim))
    n = int(np.prod([x.shape[a] for a in axes]))
    if n == 0:
        raise ValueError(f"layer_norm: the normalized axes {axes} of shape {x.shape} hold no "
                         "element (mean and variance are undefined)")
    mu = ops.sum(x, axis=axes, keepdims=True) * (1.0 / n)
    xc = x - mu
    var = ops.sum(xc * xc, axis=axes, keepdims=True) * (1.0 / n)
    y = xc * ops.rsqrt(var + float(eps))
    if gamma is not None:
        y = y * gamma
    if beta is not None:
        y = y + beta
    return y


# --------------------------------------------------------------------------- embedding
def embedding(ids: Any, table: Any) -> Tensor:
    """Look up rows of ``table``: ``table[ids]``. The gradient scatter-adds into the table, so
    an id that occurs several times accumulates all its gradients.

    Shapes: ``ids[...]`` integers in ``[0, V)``, ``table[V, D]`` -> ``[..., D]``.

    Example:
        >>> import gradtape as gt
        >>> table = gt.Variable([[0.0, 1.0], [2.0, 3.0]])
        >>> gt.nn.embedding([1, 1, 0], table).numpy()
        array([[2., 3.],
               [2., 3.],
               [0., 1.]], dtype=float32)
    """
    table = one(table)
    if table.ndim < 1:
        raise ValueError(f"embedding: table must have rank >= 1, got shape {table.shape}")
    if isinstance(ids, Tensor) and ids._level:  # ids that differ per example, inside gt.vmap
        idx = physical_data(ids)
        if idx.dtype.kind not in "iu":
            raise TypeError(f"embedding: ids must be integers, got dtype {idx.dtype}")
        if idx.size and bool(((idx < 0) | (idx >= table.shape[0])).any()):
            raise ValueError(f"embedding: ids must be in [0, {table.shape[0]}), got values in "
                             f"[{int(idx.min())}, {int(idx.max())}]")
        return ops.take(table, ids, axis=0)
    if isinstance(ids, Tensor):
        idx = ids.data
    else:
        idx = table._backend.xp.asarray(ids)
    if idx.dtype.kind not in "iu":
        raise TypeError(f"embedding: ids must be integers, got dtype {idx.dtype}")
    V = table.shape[0]
    if idx.size and bool(((idx < 0) | (idx >= V)).any()):
        raise ValueError(f"embedding: ids must be in [0, {V}), got values in "
                         f"[{int(idx.min())}, {int(idx.max())}]")
    return ops.getitem(table, _wrap(idx, table._backend))
