"""Neural-network ops on tensors: activations with a class axis, losses, dropout, layer norm,
embedding.

Softmax, log-softmax and integer-label cross-entropy are primitives with their own VJP rules
(they read the saved output or the saved logits; each rule is rendered on arrays for first
order and in gradtape ops, so higher orders compose); the rest are compositions of core ops.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np

from .. import ops
from .. import random as _random
from .._src.autodiff.batched import batch_random, physical_data, random_levels, shared_draw
from .._src.autodiff.record import Record, note_batch_statistics
from .._src.autodiff.state import STATE, Identity, opaque, read_for_trace
from .._src.backend import in_float32
from .._src.errors import as_flag
from .._src.primitive import REGISTRY, bind, primitive
from .._src.rules import ON_NUMPY, OnTensors
from .._src.tensor import Tensor, Variable, _wrap, broadcasts_to
from ..ops._util import as_int, as_real, normalize_axis, one, own_array
from ..ops.elementwise import P_EQUAL, P_EXP, P_GREATER_EQUAL, P_LESS, P_LOGICAL_OR, P_WHERE
from ..ops.reductions import P_SUM
from ..ops.shape import P_ASTYPE, P_RESHAPE
from ..random import Generator, _numpy_generator

__all__ = ["softmax", "log_softmax", "cross_entropy", "mse", "l1_loss", "huber_loss", "nll_loss",
           "kl_div", "binary_cross_entropy", "binary_cross_entropy_with_logits", "dropout",
           "layer_norm", "batch_norm", "embedding"]

_REDUCTIONS = ("mean", "sum", "none")


def _axis1(axis: Any, ndim: int, what: str) -> int:
    if ndim == 0:
        raise ValueError(f"{what}: expected a tensor of rank >= 1, got a scalar")
    a = as_int(axis, what, "axis")
    if not -ndim <= a < ndim:
        raise ValueError(f"{what}: axis {axis} is out of range for a tensor of rank {ndim}")
    return a % ndim


def _float_input(x: Any, what: str, name: str = "x") -> Tensor:
    x = one(x)
    if x.dtype.kind != "f":
        raise TypeError(f"{what}: {name} must be a float tensor, got dtype {x.dtype}")
    return x


_F16 = np.dtype(np.float16)


def _reduce(loss: Tensor, reduction: str, what: str) -> Tensor:
    if reduction == "none":
        return loss
    if reduction == "sum":
        return ops.sum(loss)
    if reduction == "mean":
        n = loss.size
        if loss.data.dtype is _F16:  # the float16 sum overflows from 65504 where the mean fits
            return ops.mean(loss) if n else ops.sum(loss) * math.nan
        # (the mean of nothing is NaN, as PyTorch's losses and gt.mean give)
        return ops.sum(loss) * (1.0 / n if n else math.nan)
    raise ValueError(f"{what}: reduction must be one of {_REDUCTIONS}, got {reduction!r}")


# --------------------------------------------------------------------------- softmax family
#: Host rows of at most this many entries take their maximum from a transposed copy
#: (:func:`_max_along`): NumPy's maximum along a short last axis costs about 40 ns a row
#: (4096 x 10 float32: 155 us) where the copy and a maximum over the first axis take 13 us;
#: at 100 entries the two are even, at 1000 the copy costs 5x.
_SHORT_ROWS = 64


def _max_along(xp: Any, x: Any, axis: int) -> Any:
    """``x.max(axis=axis, keepdims=True)``, for the stable softmax family, bit for bit: a
    maximum is exact whatever the order, and the copy's route is taken only for C-contiguous
    ``x`` (its result then has the layout NumPy's has, so later sums add in the same order);
    where a row's maximum is NaN, NumPy's own reduction gives it (NumPy's loop does not always
    keep a NaN's payload; the copy's does)."""
    n = x.shape[axis] if x.ndim else 1
    if xp is np and type(x) is np.ndarray and x.ndim >= 2 and 1 < n <= _SHORT_ROWS \
            and x.size >= 32 * n and x.flags.c_contiguous:
        axis %= x.ndim  # the axis first, the others in order: their maximum is C-ordered
        perm = (axis, *range(axis), *range(axis + 1, x.ndim))
        shape = list(x.shape)
        shape[axis] = 1
        # (transpose and reshape are methods: moveaxis and expand_dims cost 3 us more)
        m = x.transpose(perm).copy().max(axis=0)
        if not np.isnan(m).any():
            return m.reshape(shape)
    return x.max(axis=axis, keepdims=True)


@in_float32
def _softmax_impl(xp: Any, x: Any, *, axis: int) -> Any:
    if x.shape[axis] == 0:  # an empty axis: an empty result (no maximum to subtract)
        return xp.empty_like(x)
    e = xp.exp(x - _max_along(xp, x, axis))
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


@in_float32
def _log_softmax_impl(xp: Any, x: Any, *, axis: int) -> Any:
    if x.shape[axis] == 0:  # an empty axis: an empty result (no maximum to subtract)
        return xp.empty_like(x)
    s = x - _max_along(xp, x, axis)
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
    if xp is np and lsm.ndim == 2 and labels.ndim == 1 and type(lsm) is np.ndarray \
            and type(labels) is np.ndarray:
        # (take_along_axis's index building costs 4 us of Python; the same entries. Traced
        # labels of a gt.function step next to constant logits take take_along_axis, which
        # the trace logs: indexing a plain array by them would read them on the host)
        return -lsm[np.arange(lsm.shape[0]), labels.astype(np.intp, copy=False)]
    idx = labels[..., None].astype(np.intp, copy=False)
    if xp is np:
        return -xp.take_along_axis(lsm, idx, axis=-1)[..., 0]
    # a device: cross_entropy checks no label on the host (the answer would wait for the
    # device), so an example whose label is outside [0, C) gets a NaN loss (as TF's)
    C = logits.shape[-1]
    out = -xp.take_along_axis(lsm, xp.clip(idx, 0, C - 1), axis=-1)[..., 0]
    return xp.where((labels < 0) | (labels >= C), out.dtype.type(np.nan), out)


def _sce_jvp(m: OnTensors, primals: tuple, tangents: tuple, out: Tensor, **p: Any) -> Tensor:
    # d loss / d logits = softmax(logits) - onehot(labels); integer labels have no tangent
    logits, labels = primals
    t = tangents[0]
    d = m.apply(P_SOFTMAX, logits, axis=logits.ndim - 1) - _onehot(m, labels, logits)
    return m.apply(P_SUM, _nan_where_bad_label(m, labels, logits, d * t),
                   axis=(logits.ndim - 1,), keepdims=False)


def _sce_rule(m: OnTensors, rec: Record, g: Tensor) -> tuple:
    logits, labels = m.val(rec.inputs[0]), m.val(rec.inputs[1])
    if m is ON_NUMPY and type(logits) is np.ndarray and logits.ndim == 2 \
            and logits.flags.c_contiguous and type(labels) is np.ndarray \
            and labels.dtype.kind in "iu" and type(g) is np.ndarray and g.dtype == logits.dtype:
        # the same operations on host arrays without the vocabulary's seven calls: the
        # softmax, 1 taken from each row's label entry (p - 0 is p exactly elsewhere), the
        # product with g, in place on the fresh softmax (a third of the rule's time for
        # 128 x 10 logits). C-ordered logits only: the rule's result is C-ordered (a
        # transposed softmax would keep its layout, and sums over the gradient their order)
        p = P_SOFTMAX.impl(np, logits, axis=1)
        p[np.arange(p.shape[0]), labels] -= 1
        p *= g.reshape(g.shape + (1,))
        return (p, None)
    onehot = _onehot(m, labels, logits)
    p = m.apply(P_SOFTMAX, logits, axis=len(logits.shape) - 1)
    grad = (p - onehot) * m.apply(P_RESHAPE, g, shape=g.shape + (1,))
    return (_nan_where_bad_label(m, labels, logits, grad), None)


def _nan_where_bad_label(m: OnTensors, labels: Any, logits: Any, d: Any) -> Any:
    """``d`` (``[..., C]``) with NaN rows where the label is outside ``[0, C)``: on a device,
    whose forward gives such an example a NaN loss instead of reading the labels back, so its
    derivatives are NaN too (a one-hot of no class would make them finite, silently). On NumPy
    the forward refused such a label, and ``d`` comes back as it is."""
    if m.xp_of(logits) is np:
        return d
    C = logits.shape[-1]
    bad = m.apply(P_LOGICAL_OR, m.apply(P_LESS, labels, m.scalar(0, labels)),
                  m.apply(P_GREATER_EQUAL, labels, m.scalar(C, labels)))
    bad = m.apply(P_RESHAPE, bad, shape=tuple(bad.shape) + (1,))
    return m.apply(P_WHERE, bad, m.scalar(np.nan, d), d)


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


def _as_labels(labels: Any, like: Tensor, who: str = "cross_entropy", of: str = "logits") -> Tensor:
    if isinstance(labels, Tensor):
        if labels._backend is not like._backend:
            raise ValueError(f"{who}: labels are on backend {labels.backend!r}, {of} on "
                             f"{like.backend!r}; move one with .to()")
        return labels
    return _wrap(own_array(like._backend.xp, labels), like._backend)


def _check_labels(lab: Any, C: int, who: str = "cross_entropy") -> None:
    """Class labels in ``[0, C)`` (a host check; one step of a ``gt.function`` program)."""
    if bool(((lab < 0) | (lab >= C)).any()):
        lo, hi = int(lab.min()), int(lab.max())
        raise ValueError(f"{who}: labels must be class indices in [0, {C}), got values "
                         f"in [{lo}, {hi}]")


def _check_probs(values: Any, targets: Any = None) -> None:
    """Probabilities in ``[0, 1]``, no NaN, and ``targets`` (when given) in ``[0, 1]`` (a host
    check; one step of a ``gt.function``)."""
    if not bool(((values >= 0) & (values <= 1)).all()):
        if bool((values != values).any()):
            raise ValueError("binary_cross_entropy: probs hold NaN (gt.config.check_numerics = "
                             "True finds the op that made it)")
        raise ValueError(f"binary_cross_entropy: probs must be probabilities in [0, 1], got values "
                         f"in [{float(values.min()):g}, {float(values.max()):g}]; for logits (raw "
                         "scores) use gt.nn.binary_cross_entropy_with_logits")
    if targets is not None and not bool(((targets >= 0) & (targets <= 1)).all()):
        # (-1/+1 labels give a finite loss that can be negative, and a wrong gradient)
        raise ValueError(f"binary_cross_entropy: targets must be in [0, 1], got values in "
                         f"[{float(targets.min()):g}, {float(targets.max()):g}] (for -1/+1 "
                         "labels pass (labels + 1) / 2)")


def _check_ids(idx: Any, V: int) -> None:
    """Embedding ids in ``[0, V)`` (a host check; one step of a ``gt.function`` program)."""
    if bool(((idx < 0) | (idx >= V)).any()):
        raise ValueError(f"embedding: ids must be in [0, {V}), got values in "
                         f"[{int(idx.min())}, {int(idx.max())}]")


def cross_entropy(logits: Any, labels: Any, reduction: str = "mean",
                  ignore_index: int | None = None) -> Tensor:
    """Softmax cross-entropy between ``logits`` and integer class labels or target
    probabilities, stable for logits of any magnitude.

    Shapes:
        ``logits[..., C]``; ``labels`` either integers ``[...]`` in ``[0, C)`` (class indices)
        or floats ``[..., C]`` (a distribution per example, e.g. one-hot or smoothed); the
        class axis is the last (PyTorch's ``[N, C, H, W]``: ``gt.moveaxis(logits, 1, -1)``). The
        per-example loss has shape ``[...]``; ``reduction="mean"`` averages it over the
        examples, ``"sum"`` adds it up, ``"none"`` returns it.

    The gradient with respect to the logits is ``softmax(logits) - onehot(labels)`` (times the
    upstream gradient); probability targets are differentiable too.

    Integer labels outside ``[0, C)`` raise ``ValueError`` on NumPy. On a GPU they are not
    checked (reading the check back would make the host wait for the device at every step):
    such an example's loss is NaN, as TensorFlow does on GPUs.

    ``ignore_index`` (integer labels only; PyTorch's, e.g. ``-100`` for padding): examples
    with that label get loss 0 and no gradient, and ``"mean"`` averages over the others only
    (NaN when every example is ignored, as PyTorch).

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
    if ignore_index is not None and (isinstance(ignore_index, (bool, np.bool_)) or not isinstance(
            ignore_index, (int, np.integer))):
        raise TypeError(f"cross_entropy: ignore_index must be an int or None, got {ignore_index!r}")
    if ignore_index is not None and labels.dtype.kind not in "iu":
        raise ValueError("cross_entropy: ignore_index applies to integer class labels; with "
                         f"probability targets (dtype {labels.dtype}) give ignored examples "
                         "all-zero rows, or weight the reduction='none' losses")
    keep = None
    if labels.dtype.kind in "iu":
        if labels.shape != logits.shape[:-1]:
            torch_layout = logits.ndim >= 3 and labels.shape == logits.shape[:1] + logits.shape[2:]
            hint = ("; the class axis is the last here, PyTorch's is 1: pass "
                    "gt.moveaxis(logits, 1, -1)" if torch_layout else "")
            if not hint and labels.shape == logits.shape:
                hint = ("; one-hot labels? pass the class indices (gt.argmax(labels, axis=-1)) or "
                        "the one-hot rows as floats (probability targets)")
            raise ValueError(f"cross_entropy: integer labels must have shape logits.shape[:-1] = "
                             f"{logits.shape[:-1]}, got {labels.shape} (logits {logits.shape})"
                             + hint)
        if ignore_index is not None:
            keep = ops.not_equal(labels, int(ignore_index))
            labels = ops.where(keep, labels, 0)  # (a class the check accepts; its loss is dropped)
        # every example's labels, also inside gt.vmap; a step of gt.function. On the host only:
        # on a device, reading the check's answer would wait for it (_sce_impl gives NaN there)
        if labels.size and labels._backend.name == "numpy":
            opaque(functools.partial(_check_labels, C=C), physical_data(labels),
                   key=("cross_entropy labels", C))
        loss = bind(P_SOFTMAX_CROSS_ENTROPY, logits, labels)
        if keep is not None:
            loss = ops.where(keep, loss, 0.0)
            if reduction == "mean":  # over the examples kept
                wide = np.float32 if loss.dtype == np.float16 else loss.dtype
                count = ops.sum(keep.astype(wide))
                # (none kept: NaN, as PyTorch, without NumPy's 0 / 0 warning)
                total = ops.where(count > 0, ops.sum(loss.astype(wide)) / ops.maximum(count, 1.0),
                                  math.nan)
                return total.astype(loss.dtype)
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
    elementwise squared error. ``predictions`` must be a float tensor (``TypeError``
    otherwise, as PyTorch's ``mse_loss``); integer targets take its dtype.

    Example:
        >>> import gradtape as gt
        >>> float(gt.nn.mse(gt.tensor([1.0, 3.0]), gt.tensor([0.0, 0.0])))
        5.0
    """
    # (integer predictions would square in their own dtype and wrap: 50000 ** 2 in int32)
    p, t = _regression_operands(predictions, targets, "mse")
    return _reduce(ops.square(p - t), reduction, "mse")


def _regression_operands(predictions: Any, targets: Any, what: str) -> tuple[Tensor, Tensor]:
    p, t = ops._util.pair(_float_input(predictions, what, "predictions"), targets)
    _same_shape(p, t, targets, what, "predictions")
    return p, t


def l1_loss(predictions: Any, targets: Any, reduction: str = "mean") -> Tensor:
    """Mean absolute error ``|predictions - targets|`` (PyTorch's ``l1_loss``, Keras's
    ``MeanAbsoluteError``), reduced over all elements; the gradient at a zero difference is 0.

    Shapes: as :func:`mse`: ``predictions`` and ``targets`` of one shape (a Python number as
    target is allowed); ``reduction="none"`` gives the elementwise loss.

    Example:
        >>> import gradtape as gt
        >>> float(gt.nn.l1_loss(gt.tensor([1.0, -3.0]), gt.tensor([0.0, 0.0])))
        2.0
    """
    p, t = _regression_operands(predictions, targets, "l1_loss")
    return _reduce(ops.abs(p - t), reduction, "l1_loss")


def huber_loss(predictions: Any, targets: Any, delta: float = 1.0, reduction: str = "mean") -> Tensor:
    """Huber loss (PyTorch's ``huber_loss``, Keras's ``Huber``), for the difference
    ``d = predictions - targets``: ``0.5 d**2`` where ``|d| <= delta``, else
    ``delta (|d| - 0.5 delta)``; squared near 0, linear in the tails (a gradient bounded by
    ``delta``). With ``delta=1`` it equals PyTorch's ``smooth_l1_loss``.

    Shapes: as :func:`mse`. ``delta`` must be a finite number > 0.

    Example:
        >>> import gradtape as gt
        >>> gt.nn.huber_loss(gt.tensor([0.5, 3.0]), 0.0, reduction="none").numpy()
        array([0.125, 2.5  ], dtype=float32)
    """
    d_ = ops._util.as_real(delta, "huber_loss", "delta")
    if not d_ > 0:
        raise ValueError(f"huber_loss: delta must be > 0, got {delta!r}")
    p, t = _regression_operands(predictions, targets, "huber_loss")
    # (a delta past the dtype's range: every finite |d| is under it; as a float32 inf it made
    # 0 * inf = NaN in the tail)
    d_ = min(d_, float(np.finfo(p.dtype).max))
    d = p - t
    a = ops.abs(d)
    # the two branches selected, each with its own exact gradient: d near 0 (and curvature 1
    # there), delta sign(d) in the tails. (A form through min(|d|, delta) gave the gradient
    # as delta + (min - delta), which lost every digit below delta's: 1e-8 came out 0.)
    return _reduce(ops.where(a <= d_, 0.5 * (d * d), (a - 0.5 * d_) * d_), reduction, "huber_loss")


def nll_loss(log_probs: Any, labels: Any, reduction: str = "mean") -> Tensor:
    """Negative log-likelihood of integer class labels given log-probabilities (PyTorch's
    ``nll_loss``): ``-log_probs[..., label]`` per example. ``nll_loss(log_softmax(z), y)`` is
    ``cross_entropy(z, y)``, which is the stabler and faster of the two.

    Shapes: ``log_probs[..., C]`` (the class axis last, as :func:`cross_entropy`'s; PyTorch's
    is 1), ``labels[...]`` integers in ``[0, C)`` (``ValueError`` otherwise) -> ``[...]``
    with ``reduction="none"``, else a scalar (mean or sum over the examples).

    Example:
        >>> import gradtape as gt
        >>> lp = gt.nn.log_softmax(gt.tensor([[2.0, 0.0], [0.0, 2.0]]))
        >>> round(float(gt.nn.nll_loss(lp, [0, 1])), 4)
        0.1269
    """
    lp = _float_input(log_probs, "nll_loss", "log_probs")
    if lp.ndim == 0:
        raise ValueError("nll_loss: log_probs must have a class axis (the last), got a 0-d tensor")
    y = _as_labels(labels, lp, "nll_loss", "log_probs")  # (host labels go to log_probs' backend)
    if y.dtype.kind not in "iu":
        raise TypeError(f"nll_loss: labels must be integer class indices, got dtype {y.dtype}")
    if y.shape != lp.shape[:-1]:
        raise ValueError(f"nll_loss: labels must have shape log_probs.shape[:-1] = "
                         f"{lp.shape[:-1]}, got {y.shape} (log_probs {lp.shape})")
    C = lp.shape[-1]
    valid = None
    if y.size and y._backend.name == "numpy":  # (as cross_entropy's: a step of gt.function)
        opaque(functools.partial(_check_labels, C=C, who="nll_loss"), physical_data(y),
               key=("nll_loss labels", C))
    elif y.size:  # a device: reading a check back would wait for it; an example whose label
        # is out of range gets a NaN loss instead, as cross_entropy's does there
        valid = ops.logical_and(y >= 0, y < C)
        y = ops.where(valid, y, 0)
    # (take_along_axis: O(N) work and memory; a one-hot select that per_example_gradients
    # could take cost O(N C), 1400 times as long for a language model's 4096 x 32000)
    picked = -ops.reshape(ops.take_along_axis(lp, ops.expand_dims(y, -1), axis=-1), y.shape)
    if valid is not None:
        picked = ops.where(valid, picked, math.nan)
    return _reduce(picked, reduction, "nll_loss")


def kl_div(log_q: Any, p: Any, reduction: str = "batchmean") -> Tensor:
    """Kullback-Leibler divergence ``KL(p || q) = sum p (log p - log q)`` of target
    probabilities ``p`` from predicted log-probabilities ``log_q`` (PyTorch's ``kl_div`` with
    its argument order; Keras's ``KLDivergence(p, q)``). Where ``p`` is 0 the term is 0.

    Args:
        log_q: predicted log-probabilities (e.g. ``log_softmax`` of logits).
        p: target probabilities, the same shape (a Python number allowed).
        reduction: ``"batchmean"`` (the default: the sum over all elements divided by the size
            of the first axis, the divergence per example, which PyTorch recommends; its own
            default ``"mean"`` divides by the number of elements), ``"sum"``, ``"mean"`` or
            ``"none"`` (elementwise terms).

    Example:
        >>> import gradtape as gt
        >>> p = gt.tensor([[0.5, 0.5]])
        >>> round(float(gt.nn.kl_div(gt.log(gt.tensor([[0.25, 0.75]])), p)), 4)
        0.1438
    """
    if reduction not in ("batchmean", *_REDUCTIONS):
        raise ValueError(f"kl_div: reduction must be one of {('batchmean', *_REDUCTIONS)}, got "
                         f"{reduction!r}")
    lq, t = _regression_operands(log_q, p, "kl_div")
    if t.dtype.kind != "f":
        t = ops.astype(t, lq.dtype)
    # a term with p exactly 0 is 0 (log 1 where p is 0: no NaN); a NaN or negative p gives
    # NaN, as PyTorch's (a select on p > 0 dropped them silently)
    zero = t == 0
    terms = ops.where(zero, 0.0, t * (ops.log(ops.where(zero, 1.0, t)) - lq))
    if reduction == "batchmean":
        n = terms.shape[0] if terms.ndim else 1
        if terms.data.dtype is _F16 and n:  # (the float16 sum overflows from 65504 where the
            return ops.mean(terms) * (terms.size / n)  # result fits; the mean is taken in float32)
        return ops.sum(terms) * (1.0 / n if n else math.nan)
    return _reduce(terms, reduction, "kl_div")


def _bce_operands(x: Any, targets: Any, what: str, name: str) -> tuple[Tensor, Tensor]:
    """The float predictions and targets of a binary cross-entropy, of one shape, the targets
    in the predictions' dtype."""
    x = _float_input(x, what, name)
    x, t = ops._util.pair(x, targets)
    if t.dtype.kind != "f":
        t = ops.astype(t, x.dtype)
    _same_shape(x, t, targets, what, name)
    return x, t


def binary_cross_entropy(probs: Any, targets: Any, reduction: str = "mean") -> Tensor:
    """Binary cross-entropy of probabilities: ``-(t log p + (1 - t) log(1 - p))``, as PyTorch's
    ``binary_cross_entropy`` and Keras's default (``from_logits=False``). For logits (a
    network's raw output) use :func:`binary_cross_entropy_with_logits`, which is stabler than
    ``binary_cross_entropy(sigmoid(x), t)``.

    ``p`` is clipped to ``[eps, 1 - eps]`` inside the logs (``eps`` the dtype's machine
    epsilon, 1.2e-7 for float32, as Keras's 1e-7), so ``p`` of exactly 0 or 1 gives a finite
    loss, at most about 16 per element in float32 (PyTorch clamps each log at -100 instead);
    the gradient there is 0.

    Shapes: ``probs`` and ``targets`` (in [0, 1]; integer 0/1 labels are cast) have the same
    shape (``ValueError`` naming both otherwise; a Python number as target is allowed);
    ``reduction="mean"`` averages over all elements, ``"sum"`` adds them, ``"none"`` returns
    the elementwise loss.

    Raises:
        ValueError: a probability lies outside [0, 1] or is NaN (logits passed by mistake), or
            a target outside [0, 1] (or NaN).
        TypeError: ``probs`` is not a float tensor.

    Example:
        >>> import gradtape as gt
        >>> round(float(gt.nn.binary_cross_entropy(gt.tensor([0.5, 0.9]), gt.tensor([1.0, 1.0]))), 4)
        0.3993
    """
    p, t = _bce_operands(probs, targets, "binary_cross_entropy", "probs")
    if p.size:  # every example's values, also inside gt.vmap; a step of gt.function
        opaque(_check_probs, physical_data(p), physical_data(t))
    eps = float(np.finfo(p.dtype).eps)
    pc = ops.clip(p, eps, 1.0 - eps)
    loss = -(t * ops.log(pc) + (1.0 - t) * ops.log1p(-pc))
    return _reduce(loss, reduction, "binary_cross_entropy")


def binary_cross_entropy_with_logits(logits: Any, targets: Any, reduction: str = "mean") -> Tensor:
    """Binary cross-entropy from logits: ``softplus(x) - x * t`` for ``x < 0`` and the equal
    ``softplus(-x) + (1 - t) x`` for ``x >= 0``, the stable forms of
    ``-(t log sigmoid(x) + (1 - t) log(1 - sigmoid(x)))`` (PyTorch's
    ``binary_cross_entropy_with_logits``, Keras's ``from_logits=True``): no overflow for logits
    of any magnitude, no cancellation for confident predictions (``x = 40, t = 1`` gives
    ``4.2e-18``), and the gradient is ``sigmoid(x) - t`` (also at ``x = 0``).

    Shapes: ``logits`` and ``targets`` (probabilities in [0, 1]; integer 0/1 labels are cast)
    have the same shape (``ValueError`` naming both otherwise; a Python number as target is
    allowed); ``reduction`` as in :func:`binary_cross_entropy`.

    Example:
        >>> import gradtape as gt
        >>> round(float(gt.nn.binary_cross_entropy_with_logits(gt.tensor([0.0]), gt.tensor([1.0]))), 4)
        0.6931
    """
    x, t = _bce_operands(logits, targets, "binary_cross_entropy_with_logits", "logits")
    # one form per sign: the other would subtract two nearly equal terms (softplus(x) ~ x t)
    loss = ops.where(x >= 0, ops.softplus(-x) + (1.0 - t) * x, ops.softplus(x) - x * t)
    return _reduce(loss, reduction, "binary_cross_entropy_with_logits")


# --------------------------------------------------------------------------- dropout
_default_generators: dict = {}


def _generator_for(xp: Any, seed: Any, generator: Any, on_host: bool, backend: str) -> Any:
    if generator is None and isinstance(seed, Generator):  # a gt.random.Generator as seed=
        generator = seed
    if isinstance(generator, Generator):  # drawn on the host: the same masks on every backend
        return _numpy_generator(generator, "dropout")
    if generator is not None:
        if not callable(getattr(generator, "random", None)):
            raise TypeError(f"dropout: generator must be a gt.random.Generator, a "
                            f"numpy.random.Generator or a cupy.random.Generator, got "
                            f"{type(generator).__name__}")
        return generator
    if seed is not None:
        return xp.random.default_rng(_random._check_seed(seed, "dropout"))
    if on_host:  # gt.random's default generator: gt.random.seed(s) makes the masks reproducible
        return _numpy_generator(None, "dropout")
    # on the device: no host draw and copy per call; gt.random.seed reseeds it. One per
    # backend, by name: inside gt.function ``xp`` is a trace's namespace (a new object per
    # trace), and a generator per namespace would start the stream again at each trace
    epoch, device_seed = _random._device_seed()
    held = _default_generators.get(backend)
    if held is None or held[0] != epoch:
        held = _default_generators[backend] = (epoch, xp.random.default_rng(device_seed))
    return held[1]


def dropout(x: Any, rate: float, training: bool = True, seed: int | Generator | None = None,
            generator: Any = None) -> Tensor:
    """Zero each element with probability ``rate`` and scale the rest by ``1 / (1 - rate)``
    (inverted dropout), only when ``training``; otherwise return ``x`` unchanged.

    Args:
        x: float tensor of any shape.
        rate: drop probability in ``[0, 1)``.
        training: apply dropout (True) or pass ``x`` through (False).
        seed: an int, seeding a fresh generator of ``x``'s array library (reproducible masks),
            or a ``gt.random.Generator`` (as ``generator=``).
        generator: a ``gt.random.Generator``, a ``numpy.random.Generator`` or a
            ``cupy.random.Generator`` to draw from (shared: each call advances it); takes
            precedence over ``seed``. A ``gt.random.Generator`` draws on the host, so it gives
            the same masks on NumPy and CuPy (at the cost of a host-to-device copy of the mask
            on CuPy). Without either: on NumPy, ``gt.random``'s default generator; on CuPy, a
            process-wide CuPy generator drawing on the device; ``gt.random.seed`` reseeds both
            (reproducible masks).

    Shapes: same as ``x``.

    Example:
        >>> import gradtape as gt
        >>> y = gt.nn.dropout(gt.tensor([1.0, 1.0, 1.0, 1.0]), 0.5, seed=0)
        >>> sorted(set(y.numpy().tolist())) in ([0.0, 2.0], [0.0], [2.0])
        True
    """
    x = _float_input(x, "dropout")
    if type(rate) is not float:  # (a float, the common case, costs one type test)
        rate = as_real(rate, "dropout", "rate")  # as the Dropout layer: no string, bool, None
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"dropout: rate must be in [0, 1), got {rate}")
    if not as_flag(training, "dropout", "training") or rate == 0.0:
        return x
    xp = x._backend.xp
    # inside gt.vmap: per its randomness (one mask per example, or one for all, or refused)
    levels = random_levels("gt.nn.dropout") if STATE.vmap_random else []
    shape = tuple(n for _, n in levels) + tuple(x.shape)
    backend = x._backend.name
    dtype, on_host = x.dtype, backend == "numpy"

    def make_mask() -> Any:
        u = _generator_for(xp, seed, generator, on_host, backend).random(shape)
        return xp.asarray(u >= rate).astype(dtype) * dtype.type(1.0 / (1.0 - rate))

    # inside gt.function the draw is one step of the program: a new mask at each call
    def draw() -> Tensor:
        return _wrap(opaque(make_mask, key=("dropout", shape, dtype.str, rate,
                                            seed if isinstance(seed, int) else
                                            Identity(seed, "the dropout's generator"),
                                            Identity(generator, "the dropout's generator"))),
                     x._backend)

    mask = shared_draw(draw) if STATE.vmap_random else draw()
    return x * batch_random(mask, levels)


# --------------------------------------------------------------------------- layer norm
def _check_eps(eps: Any, what: str) -> float:
    if isinstance(eps, (str, bytes, bool)) or not isinstance(eps, (int, float, np.integer, np.floating)) \
            or not float(eps) > 0:
        raise ValueError(f"{what}: eps must be a positive number (it keeps sqrt(var + eps) "
                         f"away from 0), got {eps!r}")
    return float(eps)


def layer_norm(x: Any, gamma: Any = None, beta: Any = None, axis: Any = -1,
               eps: float = 1e-5) -> Tensor:
    """Normalize over ``axis`` to zero mean and unit variance, then scale by ``gamma`` and
    shift by ``beta``: ``(x - mean) / sqrt(var + eps) * gamma + beta`` (biased variance).

    Shapes: ``x[..., D]``; ``gamma`` and ``beta`` broadcast against the normalized axes, in
    their order (``[D]`` for the default ``axis=-1``; ``[C]`` for ``axis=1`` of ``[N, C, L]``,
    else ``ValueError``), or have ``x``'s rank (then plain broadcasting); the result has
    ``x``'s shape.

    Example:
        >>> import gradtape as gt
        >>> y = gt.nn.layer_norm(gt.tensor([[1.0, 3.0]]))
        >>> [round(v, 3) for v in y.numpy()[0].tolist()]
        [-1.0, 1.0]
    """
    x = _float_input(x, "layer_norm")
    if x.ndim == 0:
        raise ValueError("layer_norm: x must have at least one axis to normalize over, got a "
                         "0-d tensor")
    eps = _check_eps(eps, "layer_norm")
    axes = normalize_axis(axis, x.ndim, "layer_norm")
    if axes is None:  # all axes, as the reductions
        axes = tuple(range(x.ndim))
    n = int(np.prod([x.shape[a] for a in axes]))
    if n == 0:
        raise ValueError(f"layer_norm: the normalized axes {axes} of shape {x.shape} hold no "
                         "element (mean and variance are undefined)")
    # float16 is normalized in float32 (as PyTorch does): its sums and squares overflow from
    # 65504 where the mean and variance fit
    xs = ops.astype(x, np.float32) if x.dtype == np.float16 else x
    mu = ops.sum(xs, axis=axes, keepdims=True) * (1.0 / n)
    xc = xs - mu
    var = ops.sum(xc * xc, axis=axes, keepdims=True) * (1.0 / n)
    y = xc * ops.rsqrt(var + float(eps))
    if gamma is not None:
        y = y * _over_axes(gamma, "gamma", x, axes)
    if beta is not None:
        y = y + _over_axes(beta, "beta", x, axes)
    return _from_float32(y, x, gamma, beta)


def _from_float32(y: Tensor, x: Tensor, *params: Any) -> Tensor:
    """A float16 ``x``'s normalization, computed in float32, rounded once to the dtype it
    would have had in float16: ``x``'s promoted with those of ``params`` (``gamma``, ``beta``:
    a float32 one gives float32)."""
    if x.dtype != np.float16:
        return y
    target = x.dtype
    for p in params:
        if p is not None:
            target = np.promote_types(target, one(p).dtype)
    return ops.astype(y, target) if y.dtype != target else y


def _over_axes(v: Any, name: str, x: Tensor, axes: tuple[int, ...]) -> Tensor:
    """``v`` lined up with ``x``: for trailing normalized axes, or ``v`` of ``x``'s rank (a
    keepdims form, or one value per element), plain broadcasting; otherwise ``v`` holds the
    normalized axes in order (``[C]`` for axis 1 of ``[N, C, L]``) and gets size-1 axes
    between them."""
    t = one(v)
    order = tuple(sorted(axes))
    if order == tuple(range(x.ndim - len(order), x.ndim)) or t.ndim == x.ndim:
        # trailing axes: v broadcasts against them (not against leading axes too: a [T, D]
        # gamma for x [B, T, D] and axis -1 is a mistake, as in PyTorch), or has x's rank
        within = x.shape if t.ndim == x.ndim else tuple(x.shape[a] for a in order)
        vs = t.shape
        while len(vs) > len(within) and vs[0] == 1:  # (leading size-1 axes: a keepdims form)
            vs = vs[1:]
        if not broadcasts_to(vs, within):
            raise ValueError(f"layer_norm: {name} of shape {t.shape} must broadcast against the "
                             f"normalized axes {order} of x of shape {x.shape}, sizes "
                             f"{tuple(x.shape[a] for a in order)} (or have x's rank)")
        return t  # plain broadcasting lines the axes up
    off = x.ndim - t.ndim
    if off >= 0 and all(n == 1 or (off + i in order and n == x.shape[off + i])
                        for i, n in enumerate(t.shape)):
        return t  # its sizes already sit on normalized axes: [C, 1] for axis 1 of [N, C, L]
    target = tuple(x.shape[a] for a in order)
    if not broadcasts_to(t.shape, target):
        raise ValueError(f"layer_norm: {name} of shape {t.shape} must broadcast against the "
                         f"normalized axes {order} of x, whose sizes are {target} (or have x's "
                         f"rank, shape {x.shape})")
    full = (1,) * (len(target) - t.ndim) + t.shape
    keep = [1] * x.ndim
    for a, n in zip(order, full):
        keep[a] = n
    return ops.reshape(t, tuple(keep))


# --------------------------------------------------------------------------- batch norm
def _channel_vector(v: Any, name: str, C: int, x: Tensor) -> Tensor:
    t = one(v)
    if t.shape != (C,):
        raise ValueError(f"batch_norm: {name} must have shape ({C},) (one value per channel of x "
                         f"of shape {x.shape}), got {t.shape}")
    return t


def _update_running(v: Variable, batch: Any, momentum: float) -> None:
    """``v = (1 - momentum) * v + momentum * batch`` in place, on arrays (``batch`` is one):
    never recorded."""
    new = batch.reshape(v.shape).astype(v.dtype, copy=False)
    # inside gt.function the statistic is read at each call, not frozen as a constant
    v.assign((1.0 - momentum) * read_for_trace(v.data, new) + momentum * new)


def batch_norm(x: Any, running_mean: Any = None, running_var: Any = None, gamma: Any = None,
               beta: Any = None, training: bool = False, momentum: float = 0.1, eps: float = 1e-5,
               axis: int = 1) -> Tensor:
    """Batch normalization over every axis but the channel ``axis`` (channels-first by
    default: ``[N, C]``, ``[N, C, L]``, ``[N, C, H, W]``): ``(x - mean) / sqrt(var + eps) *
    gamma + beta``.

    In training (``training=True``) ``mean`` and ``var`` are the batch's (biased variance),
    and the gradient flows through them; ``running_mean`` / ``running_var``, when given, must
    be Variables and are updated in place, unrecorded, as PyTorch does:
    ``running = (1 - momentum) * running + momentum * batch_stat``, with the *unbiased*
    batch variance for ``running_var``. In eval (``training=False``) the running statistics
    are used instead (and are required).

    Args:
        x: float tensor of rank >= 2.
        running_mean, running_var: ``[C]`` (Variables to update in training).
        gamma, beta: optional scale and shift ``[C]``.
        training: batch statistics (True) or running statistics (False).
        momentum: in ``[0, 1]``, the weight of the new batch statistic.
        eps: positive, added to the variance.
        axis: the channel axis (1; ``-1`` for channels-last).

    Shapes: ``x[N, C, ...]`` -> same shape; every vector ``[C]``.

    Raises:
        ValueError: a vector of another shape, eval without running statistics, a single
            value per channel in training (its variance is undefined).

    Example:
        >>> import gradtape as gt
        >>> rm, rv = gt.Variable([0.0], trainable=False), gt.Variable([1.0], trainable=False)
        >>> y = gt.nn.batch_norm(gt.tensor([[1.0], [3.0]]), rm, rv, training=True)
        >>> [round(v, 3) for v in y.numpy().ravel().tolist()], rm.numpy(), rv.numpy()
        ([-1.0, 1.0], array([0.2], dtype=float32), array([1.1], dtype=float32))
    """
    what = "batch_norm"
    x = _float_input(x, what)
    if x.ndim < 2:
        raise ValueError(f"batch_norm: x must have a batch axis and a channel axis (rank >= 2), got "
                         f"shape {x.shape}")
    a = _axis1(axis, x.ndim, what)
    eps = _check_eps(eps, what)
    if isinstance(momentum, (str, bytes, bool)) or not isinstance(
            momentum, (int, float, np.integer, np.floating)) or not 0.0 <= float(momentum) <= 1.0:
        raise ValueError(f"batch_norm: momentum must be a number in [0, 1], got {momentum!r}")
    momentum = float(momentum)
    C = x.shape[a]
    bshape = tuple(C if i == a else 1 for i in range(x.ndim))
    axes = tuple(i for i in range(x.ndim) if i != a)
    n = int(np.prod([x.shape[i] for i in axes]))
    training = as_flag(training, what, "training")
    vectors = {}
    for name, v in (("running_mean", running_mean), ("running_var", running_var),
                    ("gamma", gamma), ("beta", beta)):
        vectors[name] = None if v is None else _channel_vector(v, name, C, x)
    if training:
        if n < 2:
            raise ValueError(f"batch_norm: training needs more than one value per channel to "
                             f"estimate a variance, x of shape {x.shape} has {n} (channel axis {a})")
        # float16 is normalized in float32 (as PyTorch does): its sums and squares overflow
        # from 65504 where the batch mean and variance fit
        xs = ops.astype(x, np.float32) if x.dtype == np.float16 else x
        mu = ops.sum(xs, axis=axes, keepdims=True) * (1.0 / n)
        xc = xs - mu
        var = ops.sum(xc * xc, axis=axes, keepdims=True) * (1.0 / n)
        running = [(name, v) for name, v in (("running_mean", running_mean),
                                             ("running_var", running_var)) if v is not None]
        for name, v in running:  # both checked before either changes
            if not isinstance(v, Variable):
                raise TypeError(f"batch_norm: {name} must be a gt.Variable to be updated in "
                                f"training, got {type(v).__name__}")
            if v._backend is not x._backend:
                raise ValueError(f"batch_norm: {name} is on backend {v.backend!r}, x on "
                                 f"{x.backend!r}; move one with .to()")
            if v.dtype.kind != "f":  # the update would truncate to the integers: never moves
                raise TypeError(f"batch_norm: {name} must be a float Variable to be updated in "
                                f"training, got dtype {v.dtype}")
        if running and x._level:
            raise ValueError("batch_norm: running statistics cannot be updated inside gt.vmap "
                             "(each example would be its own batch); pass None for them")
        if STATE.recording and a != 0 and not x._level:  # (inside gt.vmap: one example each)
            note_batch_statistics(mu, x.shape[0], "batch_norm in training")
        for name, v in running:  # the running variance takes the unbiased one, as PyTorch
            _update_running(v, mu.data if name == "running_mean" else var.data * (n / (n - 1.0)),
                            momentum)
        inv = ops.rsqrt(var + eps)
    else:
        rm, rv = vectors["running_mean"], vectors["running_var"]
        if rm is None or rv is None:
            raise ValueError("batch_norm: eval (training=False) normalizes with running_mean and "
                             "running_var; pass both, or training=True for batch statistics")
        xc = x - ops.reshape(rm, bshape)
        inv = ops.rsqrt(ops.reshape(rv, bshape) + eps)
    g, b = vectors["gamma"], vectors["beta"]
    y = xc * (inv if g is None else inv * ops.reshape(g, bshape))
    if b is not None:
        y = y + ops.reshape(b, bshape)
    return _from_float32(y, x, g, b)


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
        if idx.size:
            opaque(functools.partial(_check_ids, V=table.shape[0]), idx,
                   key=("embedding ids", table.shape[0]))
        return ops.take(table, ids, axis=0)
    if isinstance(ids, Tensor):
        idx = ids.data
    else:
        idx = table._backend.xp.asarray(ids)
    if idx.dtype.kind not in "iu":
        raise TypeError(f"embedding: ids must be integers, got dtype {idx.dtype}")
    V = table.shape[0]
    if idx.size:
        opaque(functools.partial(_check_ids, V=V), idx, key=("embedding ids", V))
    return ops.getitem(table, _wrap(idx, table._backend))
