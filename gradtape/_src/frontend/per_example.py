"""Per-example gradients and DP-SGD clipping in one reverse pass: the engine of
:meth:`GradientTape.per_example_gradients <gradtape.GradientTape.per_example_gradients>`.

The method is the "book-keeping" of BackPACK and Opacus, on the tape's records and the
first-order array route of the engine (:func:`~gradtape._src.autodiff.engine._vjp_arrays`):

* **Classification.** Every tensor on a path from the sources to the target is
  *param-only* (a source, or the output of a record whose differentiated inputs are all
  param-only and whose other inputs are constants) or *per-example* (batch axis first, size
  ``B`` = ``target.shape[0]``). An input that is not differentiated (untracked, or tracked but
  not reached from the sources) counts as per-example data when its shape is ``[B, ...]`` and
  as a constant otherwise; a Variable that is not a source is always a constant (an
  unwatched one, ``trainable=False``, recognized by its saved buffer), and so is a tensor made
  from such Variables alone (``gt.astype(W0, W0.dtype)``, ``W0.T``). A ``getitem``
  of a param-only table with an integer index array ``[B, ...]`` (an embedding lookup) is
  per-example too.
* **One reverse pass** from the target, seeded with ones. A record whose output is
  per-example sends its ordinary VJP to its per-example inputs (rows stay per example because
  examples do not interact). A *boundary* record (a param-only input feeding a per-example
  output: ``x @ W``, ``h + b``, ``conv2d(x, W)``, ``table[ids]``) gives that input a
  per-example cotangent ``[B, *input.shape]`` (:func:`_boundary`). A param-only record reached
  by a per-example cotangent (``reshape(W)``, ``W.T``, ``astype``) applies its VJP with the
  batch axis kept (:func:`_param_vjp`). Fan-out is summed per example.
* **Ghost norms** (``reduce="sum"`` with ``max_norm`` or ``return_norms``): a source that
  reaches exactly one boundary matmul or embedding lookup through reshape/transpose/astype
  records alone never gets a per-example gradient. For ``a[B, T, d]`` and the output
  cotangent ``g[B, T, p]``, ``||a_b^T g_b||^2`` is ``||a_b||^2 ||g_b||^2`` when ``T = 1`` and
  ``<a_b a_b^T, g_b g_b^T>_F`` otherwise (the per-example gradient is materialized instead
  when ``T^2 > d p``); the clipped sum ``sum_b c_b a_b^T g_b`` is one contraction with the
  cotangents scaled per example, mapped back through the param-only records with their
  ordinary (linear) VJPs. A convolution's weights take the same route with their norms from
  per-example gradients formed a chunk of examples at a time (:func:`_conv_sq_norms`) and their
  clipped sum from one weight-gradient product (:data:`CONV_WEIGHT_SUMS`). Memory stays
  ``O(B + P)`` beyond the activations the tape keeps.

Primitives without a per-example rule where a parameter meets per-example data raise
:class:`NotImplementedError` from :func:`_unsupported`, the one place where a general
fallback (``gt.vmap`` of a gradient) can be plugged in.
"""

from __future__ import annotations

import contextlib
import functools
import math
import numbers
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...ops.linalg import acc_einsum, einsum_vjp_labels, row_outer
from ..autodiff.engine import Accumulator, _vjp_arrays, backward, fold, fold_pairs, forward_reach, marked
from ..autodiff.record import Record, Recorder, check_finite
from ..autodiff.state import STATE, opaque, user_line
from ..backend import Array, acc_add_at, acc_sum, backend_of
from ..config import HOOKS
from ..errors import UnconnectedGradientError
from ..tensor import Tensor, _wrap, variable_of_buffer
from .diagnostics import explain

__all__ = ["check_options", "per_example_gradients"]

WHAT = "per_example_gradients()"
#: What both refusals of data whose examples were mixed before the sources (batch statistics
#: on the tape, or noted by it) advise.
_MIXED_ADVICE = ("each example's gradient would take in the others' data and clipping would not "
                 "bound one example's influence. Use BatchNorm in eval mode (model.eval(), or "
                 "model(x, training=False) for one call), or a normalization within each "
                 "example (layer_norm, group norm)")

_CONST, _EXAMPLE, _PARAM = 0, 1, 2

# param-only records that map a per-example cotangent without changing its norm: a source
# reaching its boundary through these alone can take the ghost-norm route
_NORM_PRESERVING = frozenset({"reshape", "transpose", "astype"})
# convolutions whose weights get per-example gradients, op(x[B, ...], W): name ->
# fn(xp, x, g, w_shape, params) -> [B, *w_shape], the weight gradient of each example's image x
# for its cotangent g. Declared with the convolutions (gradtape.nn.conv, a layer above this one,
# fills it when it is imported).
CONV_WEIGHT_GRADS: dict[str, Callable[..., Array]] = {}
# the same convolutions' weight gradient summed over the batch, fn(xp, x, g, w_shape, params) ->
# w_shape (the batch weight gradient, one product): a clipped sum of per-example weight gradients
# is this of the cotangent scaled per example, so the ghost route never forms [B, *w_shape]
CONV_WEIGHT_SUMS: dict[str, Callable[..., Array]] = {}
# and the elements of one example's output, fn(in_shape, w_shape, params) -> int: the ghost route
# pays where a per-example weight gradient is larger than that (the activations the tape keeps)
CONV_OUTPUT_SIZES: dict[str, Callable[..., int]] = {}
# param-only records with a batched VJP rule here (besides every elementwise primitive)
_PARAM_RULES = frozenset({"reshape", "transpose", "astype", "broadcast_to", "sum", "mean", "getitem"})


@dataclass(frozen=True)
class Options:
    """The checked keyword arguments of one call."""

    max_norm: float | None
    reduce: str | None
    return_norms: bool
    unconnected: str


def check_options(target: Any, max_norm: Any, reduce: Any, return_norms: Any,
                  unconnected: str) -> Options:
    """Validate the arguments that need no tape: raise ``TypeError``/``ValueError`` naming the
    argument, what was expected and what came."""
    if target is None:
        raise TypeError(f"{WHAT}: target is None; pass the per-example loss, a Tensor of shape "
                        "[B] or [B, ...]")
    if not isinstance(target, Tensor):
        raise TypeError(f"{WHAT}: target must be one gradtape Tensor of shape [B] or [B, ...] "
                        f"(batch axis first), got {type(target).__name__}")
    if target.ndim == 0:
        raise ValueError(f"{WHAT}: target must have the batch axis first (shape [B] or [B, ...], "
                         f"one loss per example), got a scalar (shape {target.shape}); compute the "
                         "loss per example, e.g. gt.nn.cross_entropy(logits, labels, "
                         "reduction='none'), not its mean or sum")
    if max_norm is not None:
        if isinstance(max_norm, (bool, np.bool_)) or not isinstance(max_norm, numbers.Real):
            raise TypeError(f"{WHAT}: max_norm must be None or a positive number (the clipping "
                            f"bound C), got {type(max_norm).__name__} {max_norm!r}")
        if not float(max_norm) > 0:  # also NaN
            raise ValueError(f"{WHAT}: max_norm must be a positive number (the clipping bound C), "
                             f"got {max_norm!r}")
        max_norm = float(max_norm)
    if reduce is not None and not (isinstance(reduce, str) and reduce == "sum"):
        raise ValueError(f"{WHAT}: reduce must be None (per-example gradients, shape "
                         f"[B, *source.shape]) or 'sum' (their sum over the batch, shape "
                         f"source.shape), got {reduce!r}")
    if not isinstance(return_norms, (bool, np.bool_)):
        raise TypeError(f"{WHAT}: return_norms must be True or False, got "
                        f"{type(return_norms).__name__} {return_norms!r}")
    return Options(max_norm, reduce, bool(return_norms), unconnected)


# --------------------------------------------------------------------------- analysis
@dataclass
class _Ghost:
    """A source whose per-example gradient is never materialized: it reaches the boundary
    record ``idx`` (as input ``i``) through the param-only records ``chain`` alone."""

    source: int
    idx: int
    i: int
    chain: list[int]
    kind: str  # "matmul", "embedding" or "conv"


@dataclass
class _Plan:
    B: int
    target: Tensor
    records: list[Record]
    reach: set[int]
    source_ids: set[int]
    folding: bool = False  # the tape holds a record whose primitive folds (Recorder._folding)
    live: list[int] = field(default_factory=list)  # record indices on a path to the target
    kind: dict[int, int] = field(default_factory=dict)  # id -> _EXAMPLE / _PARAM (reached ids)
    ghosts: dict[tuple[int, int], _Ghost] = field(default_factory=dict)


def _unsupported(rec: Record, where: str) -> NotImplementedError:
    """The one place a record without a per-example rule ends up (a general fallback, e.g.
    ``gt.vmap`` of a gradient over the examples, would be called from here)."""
    return NotImplementedError(
        f"{WHAT}: no per-example rule for primitive '{rec.prim.name}' {where}. Per-example "
        "rules exist for elementwise ops, matmul, dot and einsum (dense layers), the weights of "
        "convolutions and "
        "embedding lookups (getitem of a table with per-example ids); for other layers compute "
        "the gradients per "
        "example with gt.vmap(gt.grad(...)) over the batch, or a loop of tape.gradient calls on "
        "one example each")


def _batch_index(rec: Record, B: int) -> Any:
    """The integer index array ``[B, ...]`` of an embedding-like ``getitem`` (None if not)."""
    if rec.prim.name != "getitem" or not rec.params.get("advanced"):
        return None
    idx: Any = rec.params.get("index")
    if isinstance(idx, tuple):  # table[ids], table[ids, :], table[ids, ...]: the same rows
        rest = idx[1:]
        if not idx or sum(r is Ellipsis for r in rest) > 1 or not all(
                r is Ellipsis or (isinstance(r, slice) and r == slice(None)) for r in rest):
            return None
        idx = idx[0]
    dt = getattr(idx, "dtype", None)
    if dt is None or dt.kind not in "iu" or idx.ndim < 1 or idx.shape[0] != B:
        return None
    return idx


def _matmul_boundary_ok(rec: Record, i: int) -> bool:
    ps, xs = rec.in_shapes[i], rec.in_shapes[1 - i]
    p2 = max(len(ps), 2)
    if len(xs) < 2:
        return False
    if len(xs) == 2:  # x[B, d] @ W: the batch axis is the row axis (W @ x[B, n] contracts it)
        return i == 1 and len(ps) <= 2
    return len(xs) >= p2  # the output's axis 0 is x's batch axis


def _ghost_kind(rec: Record, i: int, B: int) -> str | None:
    """Whether boundary input ``i`` of ``rec`` can take the ghost-norm route, and which."""
    name = rec.prim.name
    if name == "matmul":
        ps, xs = rec.in_shapes[i], rec.in_shapes[1 - i]
        if len(ps) != 2 or not _matmul_boundary_ok(rec, i):
            return None
        if i == 1:  # x[B, ..., d] @ W[d, p]
            T = math.prod(xs[1:-1])
        else:  # W[O, K] @ x[B, ..., K, T']
            T = math.prod(xs[1:-2]) * xs[-1]
        return "matmul" if T == 1 or T * T <= ps[0] * ps[1] else None
    if name == "getitem":
        idx = _batch_index(rec, B)
        if idx is None:
            return None
        L = math.prod(idx.shape[1:])
        return "embedding" if L == 1 or L * L <= math.prod(rec.in_shapes[0]) else None
    if i == 1 and name in CONV_WEIGHT_GRADS and name in CONV_WEIGHT_SUMS:
        # a convolution's weights (per-example images x, input 0): where one example's weight
        # gradient is no larger than its output, all B of them take no more memory than the
        # output the tape keeps, and forming them once beats forming them for the norms and
        # summing the scaled cotangent in a second product (B=256, 3 -> 64 channels on 32x32:
        # 55 against 84 ms)
        out = CONV_OUTPUT_SIZES[name](rec.in_shapes[0], rec.in_shapes[1], rec.params)
        return "conv" if math.prod(rec.in_shapes[1]) > out else None
    return None


def _variable_buffer(rec: Any, i: int) -> bool:
    """Whether input ``i`` of ``rec``, untracked by the tape, was a Variable's value: its
    saved array is a live Variable's buffer (an unwatched Variable, ``trainable=False``, read
    in the step; a Variable written since then is not recognized, and counts by its shape)."""
    inputs = rec.inputs
    t = inputs[i] if inputs is not None and i < len(inputs) else None
    return t is not None and variable_of_buffer(t.data) is not None


def _axes_of(axis: Any, ndim: int) -> tuple[int, ...]:
    """An op's ``axis`` parameter (None: every axis) as non-negative axes of a rank-``ndim``
    input."""
    if axis is None:
        return tuple(range(ndim))
    axes = axis if isinstance(axis, (tuple, list)) else (axis,)
    return tuple(int(a) % ndim if ndim else 0 for a in axes)


#: Primitives acting on the last two axes (matrices): a per-example input needs a batch axis
#: of its own in front of them.
_MATRIX_OPS = frozenset({"inv", "det", "det_cofactor", "slogdet", "solve", "cholesky", "svd"})


def _is_array_index(c: Any) -> bool:
    return hasattr(c, "shape") and hasattr(c, "dtype") and not isinstance(c, np.generic)


def _advanced_positions(comps: list) -> list[int]:
    """The positions of an index's advanced components: its arrays, and once there is one its
    integers too (NumPy indexes with them together)."""
    if not any(_is_array_index(c) for c in comps):
        return []
    return [j for j, c in enumerate(comps)
            if _is_array_index(c) or (isinstance(c, (int, np.integer)) and not isinstance(c, bool))]


def _advanced_apart(index: Any) -> bool:
    """Whether an index's advanced components are apart from each other (a slice, ``None`` or
    ``...`` between them): NumPy then puts their axes first."""
    adv = _advanced_positions(list(index) if isinstance(index, tuple) else [index])
    return bool(adv) and adv != list(range(adv[0], adv[-1] + 1))


def _index_along_batch(index: Any, shape: tuple[int, ...]) -> str | None:
    """How a ``getitem`` index mixes the examples of an input of ``shape`` (``[B, ...]``):
    it selects or reorders along axis 0 (a slice other than ``:``, a mask, an integer array
    other than ``arange(B)`` row for row, as ``logp[arange(B), y]`` has), or NumPy moves the
    batch axis (advanced indices apart from each other go first); else None."""
    comps = list(index) if isinstance(index, tuple) else [index]
    ndim, B = len(shape), shape[0]
    advanced = _advanced_positions(comps)
    used = sum(c.ndim if _is_array_index(c) and c.dtype == bool else 0 if c is None or c is Ellipsis
               else 1 for c in comps)
    for c in comps:  # the component that meets axis 0
        if c is None:
            continue
        if c is Ellipsis and ndim - used <= 0:
            continue  # (it covers no axis)
        if c is Ellipsis or (isinstance(c, slice) and c.indices(B) == (0, B, 1)):
            # axis 0 kept where it is, unless NumPy moves advanced indices apart in front
            if advanced and advanced != list(range(advanced[0], advanced[-1] + 1)):
                return "has advanced indices apart from each other, which NumPy moves in front"
            return None
        if isinstance(c, slice):
            return "selects or reorders examples"
        if _is_array_index(c) and c.dtype != bool:
            if getattr(c, "_gt_traced", False):  # read at each call: its rows cannot be checked once
                return ("indexes the batch axis with an index array the compiled step takes at "
                        "each call; make the row index inside the step (np.arange(B))")
            arrays = [comps[k] for k in advanced if _is_array_index(comps[k])]
            try:
                bshape = np.broadcast_shapes(*(a.shape for a in arrays))
            except ValueError:
                return None  # (NumPy refuses the index itself)
            # the advanced indices' broadcast shape goes first (also when NumPy moves them):
            # row b of it must read example b, negative indices counted from the end
            if bshape and bshape[0] == B:
                rows = np.arange(B).reshape((B,) + (1,) * (len(bshape) - 1))
                if bool(np.all(np.broadcast_to(backend_of(c).to_host(c) % B, bshape) == rows)):
                    return None  # logp[arange(B), y]
        return "indexes the batch axis (a permutation, a flip, a selection of examples)"
    return None


def _product_along_batch(name: str, i: int, nd0: int, nd1: int) -> str | None:
    """Whether ``matmul``/``dot`` of operands of ranks ``nd0``, ``nd1`` keeps operand ``i``'s
    axis 0 as the result's axis 0."""
    if name == "dot":  # NumPy's dot: a's axes but the last, then b's but the second to last
        ok = nd0 >= 2 if i == 0 else (nd0 == 1 and nd1 >= 3)
    else:  # matmul broadcasts the leading axes: a rank-2 operand's rows sit at axis -2
        out = max(nd0, nd1)
        nd = nd0 if i == 0 else nd1
        ok = (nd == 2 and out == 2 and i == 0) or (nd >= 3 and nd == out)
    return None if ok else "contracts the batch axis or puts it behind other axes"


def _along_batch(rec: Record, i: int) -> str | None:
    """How op ``rec`` mixes the examples of its per-example input ``i`` (shape ``[B, ...]``)
    while its result may keep the batch axis first (a scan, a softmax, a flip or a
    permutation along axis 0, a product contracting it), else None. Ops whose result loses
    the batch axis are caught by their shapes."""
    name, params, shape = rec.prim.name, rec.params or {}, rec.in_shapes[i]
    ndim = len(shape)
    if rec.prim.is_elementwise or name in ("reshape", "broadcast_to"):
        return None  # (lined up or checked by shape)
    if name == "getitem":
        return _index_along_batch(params.get("index"), shape)
    if name == "stack":
        return None if int(params["axis"]) % (ndim + 1) != 0 else "stacks along the batch axis"
    if name == "transpose":
        axes = params.get("axes")
        return None if axes is not None and axes[0] == 0 else "moves the batch axis"
    if name == "pad":
        return None if tuple(params["pad_width"][0]) == (0, 0) else "pads the batch axis"
    if name == "tile":
        reps = tuple(params["reps"])
        lead = len(reps) - ndim
        if lead > 0 and any(r != 1 for r in reps[:lead]):
            return "tiles in front of the batch axis"
        return None if lead < 0 or reps[lead] == 1 else "tiles the batch axis"
    if name == "einsum":
        out = params["output"]
        return None if out and params["inputs"][i][:1] == out[:1] else "contracts or moves the batch axis"
    if name in ("matmul", "dot"):
        return _product_along_batch(name, i, len(rec.in_shapes[0]), len(rec.in_shapes[1]))
    if name == "outer":
        return None if i == 0 else "puts the batch axis second"
    if name in ("conv2d", "conv_transpose2d"):
        return None if i == 0 else "takes per-example weights"
    if name in _MATRIX_OPS:
        return None if ndim >= 3 else "treats the batch axis as a matrix axis"
    if "axis" in params:
        if 0 in _axes_of(params["axis"], ndim):
            return "works along the batch axis (axis 0)"
    return None


#: Ops that combine the values along an axis (reductions, scans, normalizations, sorts): along
#: the batch axis of data they make the examples interact.
_COMBINING = frozenset({"sum", "mean", "max", "min", "prod", "cumsum", "cumprod", "logsumexp",
                        "var", "std", "norm", "pnorm", "softmax", "log_softmax", "sort", "argsort",
                        "argmax", "argmin"})


def _check_data_unmixed(records: list[Record], live: list[int], reach: set[int], fixed: set[int],
                        B: int) -> None:
    """Raise when per-example data entering the live records (a tensor ``[B, ...]`` that does
    not depend on the sources) was computed on the tape by an op that combines values along
    its batch axis (:data:`_COMBINING`): batch statistics of a frozen backbone's features
    (``BatchNorm`` in training), a mean over the batch. Each example's gradient would then take
    in the others' data (and DP-SGD's clipping would no longer bound one example's influence).
    A reduction over the batch after a reshape that merges the examples into another axis is
    not seen."""
    if B < 2:
        return
    producer = {rec.out_id: rec for rec in records if rec.out_id not in reach}
    seen: set[int] = set()
    # (values made from Variables that are not sources are constants, whatever their rows)
    todo = [iid for idx in live for i, (iid, shape) in enumerate(zip(records[idx].in_ids,
                                                                     records[idx].in_shapes))
            if iid and iid not in reach and iid not in fixed and shape and shape[0] == B
            and not _variable_buffer(records[idx], i)]
    while todo:
        oid = todo.pop()
        if oid in seen:
            continue
        seen.add(oid)
        rec = producer.get(oid)
        if rec is None:
            continue
        for i, (iid, shape) in enumerate(zip(rec.in_ids, rec.in_shapes)):
            if (iid and iid in fixed) or _variable_buffer(rec, i):
                continue
            if not (shape and shape[0] == B):
                if iid:  # (a value computed from the batch, e.g. its mean: look further back)
                    todo.append(iid)
                continue
            # only ops that combine values along the batch axis count: in a part of the model
            # that does not depend on the sources, layout ops may move the batch axis and put it
            # back (a time-major round trip, a stack of two views averaged per example)
            how = _along_batch(rec, i) if rec.prim.name in _COMBINING else None
            if how is not None:
                raise ValueError(
                    f"{WHAT}: per-example data reaching the sources' ops was computed by "
                    f"'{rec.prim.name}', which {how} (input {i}, shape {shape}, B = {B}): the "
                    "examples interact before the parameters are met (batch statistics, e.g. "
                    f"a BatchNorm in training on a frozen part of the model), so {_MIXED_ADVICE}")
            if iid:
                todo.append(iid)


def analyse(tape: Recorder, target: Tensor, sources: list[Tensor], rules: bool,
            ghost: bool) -> _Plan:
    """Classify the tensors between the sources and the target, check that every record on
    the way has a per-example rule (``rules``) and pick the ghost-norm sources (``ghost``).
    Raises before anything is computed, so a rejected call leaves the tape usable."""
    records = list(tape._records)
    tracked = tape._tracked
    B = int(target.shape[0])
    src = {s._id for s in sources if s._id and s._id in tracked}
    reach = forward_reach(records, src)
    plan = _Plan(B, target, records, reach, src, tape._folding)
    if not target._id or target._id not in reach:
        return plan
    # records on a path from a source to the target (the others get no cotangent)
    live_ids = {target._id}
    live: list[int] = []
    for idx in range(len(records) - 1, -1, -1):
        rec = records[idx]
        if rec.out_id not in reach:
            continue
        if rec.out_id in live_ids or (rec.extra_outs and any(o in live_ids for o in rec.extra_outs)):
            live.append(idx)
            live_ids.update(i for i in rec.in_ids if i and i in reach)
    live.reverse()
    plan.live = live
    kind = plan.kind
    for i in src:
        kind[i] = _PARAM
    variables = tape._variables
    # constants made from Variables that are not sources (gt.astype(W0, W0.dtype), W0.T,
    # W0 * 2.0): outputs of records outside the reach whose inputs are such Variables, such
    # constants, or untracked values that cannot be per-example data (no batch axis first)
    fixed = set(variables)
    for rec in records:
        if rec.out_id in reach or rec.extra_outs:
            continue
        ins = rec.in_ids
        if any(ins) and all((iid in fixed) if iid else not (shape and shape[0] == B)
                            or _variable_buffer(rec, i)
                            for i, (iid, shape) in enumerate(zip(ins, rec.in_shapes))):
            fixed.add(rec.out_id)
    for idx in live:
        rec = records[idx]
        ex = False
        # an elementwise op lines inputs up from their last axis: one that depends on the
        # sources and has a lower rank than the output has its axis 0 against another axis
        # than the batch axis (a constant, even one of B rows, is only read)
        wide = (max(map(len, rec.in_shapes)) if rec.prim.is_elementwise else
                len(rec.params["shape"]) if rec.prim.name == "broadcast_to" else 0)
        for i, iid in enumerate(rec.in_ids):
            shape = rec.in_shapes[i]
            if iid and iid in reach:
                k = kind[iid]
                if k == _EXAMPLE and not (shape and shape[0] == B):
                    raise ValueError(
                        f"{WHAT}: the op '{rec.prim.name}' (input {i}) receives a per-example "
                        f"tensor of shape {shape} without the batch axis first (B = {B}, from "
                        f"target.shape {target.shape}): somewhere on the way an op mixes the "
                        "examples (a batch mean or sum, batch statistics, a transpose of the "
                        "batch axis). Per-example gradients need examples that do not interact, "
                        "the batch axis first in every per-example tensor"
                        + (". (take_along_axis and topk index a flattened copy of their input: "
                           "pick with logp[gt.arange(B), idx] instead)"
                           if rec.prim.name == "index_take" and len(shape) == 1 else ""))
            elif iid and iid in fixed:
                k = _CONST  # a Variable that is not a source (or made from one): held fixed
            else:  # (an unwatched Variable, trainable=False, is a constant too)
                k = _EXAMPLE if shape and shape[0] == B and not _variable_buffer(rec, i) else _CONST
            if k == _EXAMPLE and len(shape) < wide and iid and iid in reach:
                raise ValueError(
                    f"{WHAT}: the op '{rec.prim.name}' (input {i}) broadcasts a tensor of shape "
                    f"{shape} against a rank-{wide} result, so its axis 0 does not line up with "
                    f"the batch axis; it was taken as per-example because its axis 0 has the "
                    f"batch size B = {B} (a table row per position, such as positional "
                    "embeddings P[arange(T)] with T == B, would mix the examples). Take the "
                    "rows with a slice (P[:T]) or with per-example ids of shape [B, T]")
            if k == _EXAMPLE:
                ex = True
                how = _along_batch(rec, i) if iid and iid in reach else None
                if how is not None and B > 1:
                    raise ValueError(
                        f"{WHAT}: the op '{rec.prim.name}' (input {i}, shape {shape}) {how}: it "
                        f"mixes the examples (B = {B}, from target.shape {target.shape}), and "
                        "each example's gradient would take in the others'. Per-example "
                        "gradients need examples that do not interact: apply such ops along "
                        "the other axes (batch statistics: a BatchNorm in training; use eval "
                        "mode, or layer_norm)")
        if not ex and _batch_index(rec, B) is not None:
            ex = True  # an embedding lookup: per-example rows of a param-only table
        k_out = _EXAMPLE if ex else _PARAM
        outs = (rec.out_id, *(rec.extra_outs or ()))
        for o in outs:
            if o in src:
                if k_out == _EXAMPLE:
                    raise ValueError(
                        f"{WHAT}: a source is computed (by '{rec.prim.name}') from per-example "
                        "data; per_example_gradients differentiates with respect to shared "
                        "parameters (tensors without a batch axis). For gradients with respect "
                        "to per-example inputs use tape.gradient: its rows are already per example")
                continue
            kind[o] = k_out
    if rules:  # (reduce="sum" without clipping or norms is the batch gradient: the examples
        # may interact there, it needs no gradient of one example alone)
        _check_data_unmixed(records, live, reach, fixed, B)
        what = tape._mixed.get(B) if B > 1 else None
        if what is not None:
            raise ValueError(
                f"{WHAT}: {what} computed batch statistics over {B} examples while the tape "
                "recorded, on values the tape did not record (its input came from outside the "
                "tape's records: the raw data, or a frozen part of the model whose Variables are "
                f"trainable=False), so the data reaching the sources may mix the examples: "
                f"{_MIXED_ADVICE}; a batch_norm that does not feed the target can run outside "
                "the tape or under tape.stop_recording()")
    if kind.get(target._id) != _EXAMPLE:
        # the data that did reach the target, by shape (B is read from the target's axis 0: a
        # target sliced, reshaped or given a new leading axis no longer has the inputs' B)
        data = sorted({tuple(shape) for idx in live
                       for i, (iid, shape) in enumerate(zip(records[idx].in_ids,
                                                            records[idx].in_shapes))
                       if len(shape) >= 1 and not (iid and (iid in reach or iid in fixed))
                       and not _variable_buffer(records[idx], i)})
        if data:
            raise ValueError(
                f"{WHAT}: no per-example input with the batch axis first reaches the target "
                f"(shape {target.shape}; B = {B} is read from its axis 0). Inputs that are not "
                f"parameters do reach it, of shapes {', '.join(map(str, data[:4]))}"
                f"{' ...' if len(data) > 4 else ''}: if one of them holds the examples, the "
                "target must keep its batch axis first (one loss per example, shape [B] or "
                "[B, ...]), not a slice, a reshape or a new leading axis of it; if not, the "
                "target is computed from the sources and constants alone. Pass the shared "
                "parameters as sources and a target of one loss per example")
        raise ValueError(
            f"{WHAT}: the target (shape {target.shape}) is computed from the sources alone: no "
            f"per-example input with the batch axis first (size B = {B}) was found on the way. "
            "Pass the shared parameters as sources (not the batch input) and a target of one "
            "loss per example computed from the batch")
    if rules:
        for idx in live:
            rec = records[idx]
            par = [i for i, iid in enumerate(rec.in_ids) if iid and iid in reach and kind[iid] == _PARAM]
            if not par:
                continue
            if kind[rec.out_id] == _EXAMPLE:
                if rec.extra_outs:
                    raise _unsupported(rec, "with several outputs, where a parameter meets "
                                       "per-example data")
                for i in par:
                    _check_boundary(rec, i, B)
            elif rec.extra_outs or (rec.prim.derivatives is None and rec.prim.name not in _PARAM_RULES):
                others = [s for i, s in enumerate(rec.in_shapes) if i not in par]
                hint = (f" (its other input, of shape {others[0]}, counts as a constant here: "
                        "per-example data is a Tensor, not a Variable, that reaches this op with "
                        f"the batch axis first, shape [{B}, ...]; examples flattened into the "
                        "rows, [B*T, D], a time-major [T, B, D] or a transposed batch are not "
                        "recognised)") if others else ""
                raise _unsupported(rec, "applied to a parameter before it meets per-example "
                                   f"data{hint}")
            elif rec.prim.name == "getitem" and _advanced_apart(rec.params["index"]):
                # (a batch axis put in front of such an index lands behind the advanced
                # indices' axes, which NumPy moves first: the pass would scatter each example's
                # cotangent along another axis, silently, when those axes happen to have B rows)
                raise _unsupported(rec, f"with index {rec.params['index']!r} applied to a "
                                   "parameter: its advanced indices are apart from each other "
                                   "(NumPy moves their axes in front, where the per-example "
                                   "form keeps the batch axis); index with the advanced indices "
                                   "side by side, or take the axes in two steps")
    if ghost:
        consumers: dict[int, list[tuple[int, int]]] = {}
        for idx in live:
            rec = records[idx]
            for i, iid in enumerate(rec.in_ids):
                if iid and iid in reach and kind[iid] == _PARAM:
                    consumers.setdefault(iid, []).append((idx, i))
        for sid in src:
            cur, chain = sid, []
            while True:
                cons = consumers.get(cur, ())
                if len(cons) != 1:
                    break
                idx, i = cons[0]
                rec = records[idx]
                if kind.get(rec.out_id) == _PARAM:
                    if rec.prim.name in _NORM_PRESERVING and rec.out_id not in src and not rec.extra_outs:
                        chain.append(idx)
                        cur = rec.out_id
                        continue
                    break
                gk = _ghost_kind(rec, i, B)
                if gk is not None:
                    plan.ghosts[(idx, i)] = _Ghost(sid, idx, i, chain, gk)
                break
    return plan


def _check_boundary(rec: Record, i: int, B: int) -> None:
    prim = rec.prim
    if prim.derivatives is not None:
        return
    if prim.name == "matmul":
        if not _matmul_boundary_ok(rec, i):
            raise _unsupported(rec, f"with a parameter of shape {rec.in_shapes[i]} and per-example "
                               f"data of shape {rec.in_shapes[1 - i]} (supported: x[B, ..., d] @ "
                               "W and W @ x[B, ..., k, n], where x keeps the batch axis first)")
        return
    if prim.name == "getitem" and _batch_index(rec, B) is not None:
        return
    if prim.name in ("einsum", "dot"):
        why = _contraction_boundary(rec, i)
        if why is not None:
            raise _unsupported(rec, f"with a parameter of shape {rec.in_shapes[i]}: {why} "
                               "(supported: the output's first label the batch axis of the "
                               "per-example operands, first in each, absent from the "
                               "parameter's labels)")
        return
    if prim.name in CONV_WEIGHT_GRADS:
        if i != 1:
            raise _unsupported(rec, f"with parameter images of shape {rec.in_shapes[0]} and "
                               f"per-example weights of shape {rec.in_shapes[1]} (supported: "
                               "per-example images x[B, C, H, W], parameter weights)")
        return
    raise _unsupported(rec, "where a parameter meets per-example data")


def _contraction_boundary(rec: Record, i: int) -> str | None:
    """Why parameter input ``i`` of an einsum (or dot, stored as one) has no per-example rule
    here, else None: the output's first label must be the batch label, first in the other
    operands that carry it (per-example data) and absent from the parameter's labels."""
    subs, out = rec.params["inputs"], rec.params["output"]
    if any("." in sub for sub in (*subs, out)):
        return "an ellipsis in the subscripts"
    if not out:
        return "a scalar output"
    b = out[0]
    if b in subs[i]:
        return f"the parameter carries the batch label {b!r}"
    for j, sub in enumerate(subs):
        if j != i and b in sub and (sub[0] != b or sub.count(b) != 1):
            return f"operand {j} ({sub!r}) does not carry the batch label {b!r} first, once"
    return None


def _contraction_examples(rec: Record, i: int, g: Array) -> Array:
    """Per-example gradient ``[B, *shape]`` of parameter ``i`` of an einsum (or dot): the
    einsum VJP (the cotangent contracted with the other operands onto the parameter's labels)
    with the batch label kept in front (checked by :func:`_contraction_boundary`)."""
    subs, out = rec.params["inputs"], rec.params["output"]
    shape = tuple(rec.in_shapes[i])
    others, target, kept = einsum_vjp_labels(subs, out, i, shape)
    xp = backend_of(g).xp
    B = g.shape[0]
    if len(others) == 1 and len(out) == 2 and target == subs[i]:
        # a dense layer, x[b, d] with W[d, p] or W[p, d] (d != p): one outer product per example
        xs = subs[others[0]]
        if len(xs) == 2 and xs[0] == out[0] and xs[1] != out[1]:
            x = rec.inputs[others[0]].data  # type: ignore[union-attr]
            if target == xs[1] + out[1]:
                return row_outer(xp, x, g)
            if target == out[1] + xs[1]:
                return row_outer(xp, g, x)
    spec = ",".join((out, *(subs[j] for j in others))) + "->" + out[0] + target
    gk = acc_einsum(xp, spec, g, *(rec.inputs[j].data for j in others))  # type: ignore[union-attr]
    gk = gk.reshape((B,) + kept)
    return gk if kept == shape else xp.broadcast_to(gk, (B,) + shape).copy()


# --------------------------------------------------------------------------- per-example rules
def _reduce_to(gd: Array, shape: tuple[int, ...], rec: Record) -> Array:
    """Sum ``gd[B, *rest]`` to ``[B, *shape]``, ``shape`` aligned with the trailing axes of
    ``rest`` (NumPy broadcasting, the batch axis kept)."""
    rest = gd.shape[1:]
    lead = len(rest) - len(shape)
    if lead < 0 or any(s != 1 and s != r for s, r in zip(shape, rest[lead:])):
        raise ValueError(f"internal error: {WHAT} got a per-example gradient of shape {gd.shape} "
                         f"for an input of shape {shape} of '{rec.prim.name}'")
    axes = tuple(range(1, 1 + lead)) + tuple(1 + lead + j for j, s in enumerate(shape)
                                             if s == 1 and rest[lead + j] != 1)
    if axes:
        gd = acc_sum(gd, axes, True)
    return gd.reshape((gd.shape[0],) + tuple(shape))


def _per_example_sum(gd: Array, shape: tuple[int, ...], rec: Record, batch_in_out: bool) -> Array:
    """``gd`` (a product ``g * d`` broadcast over a parameter of ``shape``) summed to the
    parameter's per-example gradient ``[B, *shape]``. ``batch_in_out``: axis 0 of ``gd`` is
    the batch axis of the op's output itself, so a parameter of ``gd``'s rank has its axis 0
    against the batch axis (of size 1, or B: then row b belongs to example b alone)."""
    B = gd.shape[0]
    if batch_in_out and len(shape) == gd.ndim:
        body = tuple(shape[1:])
        r = _reduce_to(gd, body, rec)
        if shape[0] == 1:
            return r.reshape((B, 1) + body)
        xp = backend_of(gd).xp
        z = xp.zeros_like(r, shape=(B, B) + body)  # like r: a gt.function trace sees it
        ar = xp.arange(B)
        z[ar, ar] = r
        return z
    return _reduce_to(gd, shape, rec)


def _elementwise_args(rec: Record) -> tuple:
    args = tuple(None if t is None else t.data for t in rec.inputs)
    args += (None if rec.output is None else rec.output.data,)
    if rec.params:
        args += tuple(rec.params.values())
    return args


def _exclusive(gd: Array, g: Array) -> bool:
    """``gd`` was allocated by the VJP (not ``g`` passed through, not a view)."""
    return gd is not g and getattr(gd, "base", None) is None


def _swap(a: Array) -> Array:
    return a.swapaxes(-1, -2)


def _boundary(rec: Record, i: int, g: Array, B: int, safe: bool) -> tuple[Array, bool]:
    """Per-example gradient ``[B, *in_shape]`` of param-only input ``i`` of ``rec``, whose
    output is per-example with cotangent ``g``; and whether it is exclusively ours."""
    prim = rec.prim
    shape = rec.in_shapes[i]
    if prim.derivatives is not None:
        gd = prim.array_vjp(i, backend_of(g), safe)(g, *_elementwise_args(rec))
        return _per_example_sum(gd, shape, rec, True), _exclusive(gd, g)
    xp = backend_of(g).xp
    if prim.name == "matmul":
        X = rec.inputs[1 - i].data  # type: ignore[union-attr]  # matmul saves its inputs
        if len(shape) == 1:  # a vector parameter: promoted to a matrix, as matmul does
            g2 = g[..., None] if i == 1 else g[..., None, :]
            pshape: tuple[int, ...] = (shape[0], 1) if i == 1 else (1, shape[0])
        else:
            g2, pshape = g, shape
        if X.ndim == 2:  # x[B, d] @ W[d, p]: one outer product per example
            gi = row_outer(xp, X, g2)
        elif i == 1:
            gi = _per_example_sum(xp.matmul(_swap(X), g2), pshape, rec, True)
        else:
            gi = _per_example_sum(xp.matmul(g2, _swap(X)), pshape, rec, True)
        return gi.reshape((B,) + shape), True
    if prim.name in ("einsum", "dot"):  # (checked by analyse)
        return _contraction_examples(rec, i, g), True
    conv_w = CONV_WEIGHT_GRADS.get(prim.name)
    if conv_w is not None:  # the weights (checked by analyse)
        X = rec.inputs[0].data  # type: ignore[union-attr]  # convolutions save their inputs
        return conv_w(xp, X, g, shape, rec.params), True
    idx = _batch_index(rec, B)  # the embedding lookup (checked by analyse)
    V = shape[0]
    # scattered into [B, V, ...] by (example, row) pairs, into a buffer made like g: inside
    # gt.function the trace follows it, and the views and ops later made of it
    if idx.dtype != np.intp:  # (idx + V in a narrow index dtype would wrap around)
        idx = idx.astype(np.intp)
    example = xp.arange(B, dtype=np.intp).reshape((B,) + (1,) * (idx.ndim - 1))
    return acc_add_at(xp, (B,) + shape, (example, xp.where(idx < 0, idx + V, idx)), g), True


def _param_vjp(rec: Record, g: Array, reach: set[int], safe: bool) -> list[tuple[Array, bool] | None]:
    """The VJP of a param-only record for a per-example cotangent ``g[B, *out_shape]``: the
    same linear map for every example, applied with the batch axis kept."""
    prim = rec.prim
    B = g.shape[0]
    xp = backend_of(g).xp
    n = len(rec.in_ids)
    res: list[tuple[Array, bool] | None] = [None] * n
    if prim.derivatives is not None:
        args = _elementwise_args(rec)
        backend = backend_of(g)
        for i, iid in enumerate(rec.in_ids):
            if iid and iid in reach:
                gd = prim.array_vjp(i, backend, safe)(g, *args)
                res[i] = (_per_example_sum(gd, rec.in_shapes[i], rec, False), _exclusive(gd, g))
        return res
    shape = rec.in_shapes[0]
    name = prim.name
    p = rec.params
    if name == "reshape":
        res[0] = (g.reshape((B,) + shape), False)
    elif name == "transpose":
        inverse = np.argsort(p["axes"])
        res[0] = (g.transpose((0, *(int(a) + 1 for a in inverse))), False)
    elif name == "astype":
        res[0] = (g.astype(rec.in_dtypes[0]), True)
    elif name == "broadcast_to":
        res[0] = (_per_example_sum(g, shape, rec, False), False)
    elif name in ("sum", "mean"):
        axes = p["axis"]
        kept = tuple(1 if (axes is None or j in axes) else s for j, s in enumerate(shape))
        gi = xp.broadcast_to(g.reshape((B,) + kept), (B,) + shape)
        count = math.prod(shape) if axes is None else math.prod(shape[j] for j in axes)
        if name == "mean" and count:
            res[0] = (gi * (1.0 / count), True)
        elif kept == shape:  # nothing broadcast: a (read-only) view of g, not this pass's own
            res[0] = (g.reshape((B,) + shape), False)
        else:
            res[0] = (xp.ascontiguousarray(gi), True)
    elif name == "getitem":
        index = p["index"]
        where = (slice(None),) + (index if isinstance(index, tuple) else (index,))
        # made like g, so that inside gt.function the trace sees the buffer g is written into
        z = xp.zeros_like(g, shape=(B,) + shape)
        if z[where].shape != g.shape:
            raise _unsupported(rec, f"with index {index!r} applied to a parameter (its per-example "
                               "form does not keep the batch axis first)")
        if p["advanced"]:
            z = acc_add_at(xp, (B,) + shape, where, g)
        else:
            z[where] = g
        res[0] = (z, True)
    else:  # analyse() let nothing else through
        raise _unsupported(rec, "applied to a parameter before it meets per-example data")
    return res


# --------------------------------------------------------------------------- the pass
def _reverse_pass(plan: _Plan, release: bool
                  ) -> tuple[dict[int, Array], dict[tuple[int, int], Array], set[int]]:
    """One reverse pass: per-example cotangents ``[B, *shape]`` of the param-only ids (the
    sources among them are returned), the output cotangent of every ghost boundary, and the
    source ids whose array the pass owns (it may be scaled in place)."""
    records, reach, kind, B = plan.records, plan.reach, plan.kind, plan.B
    src = plan.source_ids
    t = plan.target
    grads: dict[int, Array] = {t._id: t._backend.xp.ones(t.shape, t.dtype)}
    acc = Accumulator(grads)
    ghost_g: dict[tuple[int, int], Array] = {}
    masked: set[int] | None = None
    numerics = HOOKS.numerics
    folds = None if numerics or not plan.folding else fold_pairs(records, plan.live, reach,
                                                                 (src, (t._id,)))
    pending: dict[int, Array] = {}  # folded producer index -> its first input's cotangent
    for idx in reversed(plan.live):
        rec = records[idx]
        out_id = rec.out_id
        g: Any
        if pending and idx in pending:  # a folded producer: its input's cotangent, added now
            acc.add(rec.in_ids[0], pending.pop(idx), rec.in_shapes[0], rec.in_dtypes[0],
                    rec.prim, False)
            if (masked is not None and out_id in masked) or rec.prim.masks:
                masked = marked(masked, rec.in_ids)
            if release:
                rec.release()
            continue
        if rec.extra_outs is None:
            g = grads.get(out_id) if out_id in src else grads.pop(out_id, None)
            if g is None:
                continue
        else:
            gs = tuple(grads.get(o) if o in src else grads.pop(o, None) for o in (out_id, *rec.extra_outs))
            if all(x is None for x in gs):
                continue
            g = gs
        safe = masked is not None and out_id in masked
        if folds is not None and idx in folds and kind[out_id] == _EXAMPLE:
            prod = records[folds[idx]]  # (its output, read by this record only, is an example's)
            gz = fold(rec, prod, g) if kind[prod.in_ids[0]] == _EXAMPLE else None
            if gz is not None:  # this VJP and the producer's at once, added at the producer
                pending[folds[idx]] = gz
                if safe or rec.prim.masks:
                    masked = marked(masked, rec.in_ids)
                if release:
                    rec.release()
                continue
        n = len(rec.in_ids)
        contrib: list[tuple[Array, bool] | None] = [None] * n
        keep = False
        if kind[out_id] == _EXAMPLE:
            ex = tuple(bool(iid) and iid in reach and kind[iid] == _EXAMPLE for iid in rec.in_ids)
            if True in ex:
                r = rec if ex == rec.needs else rec.with_needs(ex)
                res = _vjp_arrays(r, g, safe)
                for i in range(n):
                    if ex[i] and res[i] is not None:
                        contrib[i] = (res[i], False)
            for i, iid in enumerate(rec.in_ids):
                if iid and iid in reach and kind[iid] == _PARAM:
                    if (idx, i) in plan.ghosts:
                        ghost_g[(idx, i)] = g
                        keep = True
                    else:
                        contrib[i] = _boundary(rec, i, g, B, safe)
        else:
            contrib = _param_vjp(rec, g, reach, safe)
        for i, item in enumerate(contrib):
            iid = rec.in_ids[i]
            if item is None or not iid or iid not in reach:
                continue
            gi, fresh = item
            if numerics:
                check_finite(rec.prim, (), gi, "backward", rec.where)
            shape = rec.in_shapes[i]
            if kind[iid] == _PARAM:
                shape = (B,) + shape
            acc.add(iid, gi, shape, rec.in_dtypes[i], rec.prim, fresh)
        if safe or rec.prim.masks:
            masked = marked(masked, rec.in_ids)
        if release and not keep:
            rec.release()
    return {i: grads[i] for i in src if i in grads}, ghost_g, acc.owned & src


# --------------------------------------------------------------------------- ghost norms
def _norms(plan: _Plan, per: dict[int, Array], ghosts: list, xp: Any) -> Array:
    """The per-example norms ``[B]`` (float64) over the materialized gradients ``per`` and the
    ghost boundaries: the square root of their squares' sum, formed in the gradients' dtype
    (float16 ones in float32: their squares underflow below 6e-8, entries below 2.4e-4 counted
    as 0). On NumPy, the rows whose sum a square may have spoilt are taken again
    (:func:`_norms_of`). Inside a ``gt.function`` step this is one logged call, so each replay
    takes its own branch."""
    arrays: list[Any] = list(per.values())
    spec = []
    for gh, g in ghosts:
        rec = plan.records[gh.idx]
        if gh.kind == "embedding":
            operand, V = _batch_index(rec, plan.B), rec.in_shapes[0][0]
        elif gh.kind == "conv":  # (convolutions save their inputs)
            operand, V = rec.inputs[0].data, _conv_spec(rec)
        else:
            operand, V = rec.inputs[1 - gh.i].data, 0  # matmul saves its inputs
        spec.append((gh.kind, gh.i, V))
        arrays += [g, operand]
    if not arrays:
        return xp.zeros(plan.B, dtype=np.float64)
    key = ("per_example_norms", plan.B, len(per), tuple(spec))
    if xp is not np:  # no retry on a device (it would read the sums back): a plain step
        return _norms_of(key, *arrays)
    return opaque(functools.partial(_norms_of, key), *arrays, key=key)


def _norms_of(key: tuple, *arrays: Array) -> Array:
    """:func:`_norms` on its arrays: the ``n`` materialized ``[B, ...]`` gradients, then a
    (cotangent, saved operand) pair per ghost boundary described by ``spec``. On the host,
    rows are taken again where the sum of squares may be spoilt: a float32 one past 3.4e38
    or below :data:`_TINY_SQ` (in float64, each ghost boundary's gradient formed), a Gram
    form that cancelled (see :func:`_ghost_sq_norms`; likewise), and where a float64 array
    takes part, a sum past float64's range, NaN (a ghost norm's ``inf * 0``) or below
    :data:`_TINY_SQ64`: those rows' norms are formed from gradients scaled by their largest
    entry (:func:`_scaled_norms`), so a norm of 2e160, whose square is not a float64 number,
    comes out as it is."""
    _, B, n, spec = key
    xp = backend_of(arrays[0]).xp  # (inside a traced device step: the tracing namespace)
    floats = [a for a in arrays if a.dtype.kind == "f"]  # (an embedding's ids are integers)
    half = any(a.dtype == np.float16 for a in floats)
    host = xp is np
    sq, rough = _sq_norms_in(B, arrays[:n], spec, arrays[n:], xp,
                             np.float32 if half else None, check=host)
    if not host:
        # a Gram form's sum of signed products may round below zero where the norm is ~0
        return xp.sqrt(xp.maximum(sq, 0.0))
    far = None
    if any(a.dtype.itemsize >= 8 for a in floats):
        far = ~(np.isfinite(sq) & (sq >= _TINY_SQ64))
    redo = rough
    if any(a.dtype.itemsize < 8 for a in floats):
        redo |= ~(np.isfinite(sq) & (sq >= _TINY_SQ))
    if far is not None:
        redo &= ~far
    if redo.any():  # those examples' rows only (every array here is [B, ...])
        rows = np.flatnonzero(redo)
        sq[rows], _ = _sq_norms_in(len(rows), [a[rows] for a in arrays[:n]], spec,
                                   [a[rows] for a in arrays[n:]], xp, np.float64,
                                   exact=True)
    norms = np.sqrt(np.maximum(sq, 0.0))  # (NaN stays NaN, quietly)
    if far is not None and far.any():
        rows = np.flatnonzero(far)
        norms[rows] = _scaled_norms(len(rows), [a[rows] for a in arrays[:n]], spec,
                                    [a[rows] for a in arrays[n:]])
    return norms


#: Per-example squared norms below this are taken again in float64: float32 squares of the
#: entries of a norm under 1e-15 may fall below float32's smallest normal number (1.2e-38),
#: where they lose digits or vanish. (An example whose gradient is exactly zero is taken
#: again too: its rows only.)
_TINY_SQ = 1e-30

#: Per-example squared norms below this, where a float64 array takes part, are formed again
#: from scaled gradients (:func:`_scaled_norms`): a square below float64's smallest normal
#: number (2.2e-308) keeps at most an absolute 5e-324, so a sum of at least 1e-290 over up to
#: 4e17 entries is still exact to float64's eps (2.2e-16), and a smaller one may not be.
_TINY_SQ64 = 1e-290


def _scaled_norms(B: int, per: Sequence[Array], spec: Sequence[tuple], pairs: Sequence[Array]
                  ) -> Array:
    """The per-example norms of :func:`_norms_of` without a square outside float64's range:
    each materialized gradient's and each ghost boundary's (formed, as
    :func:`_ghost_sq_norms_exact`) norm per row from the row divided by its largest entry,
    then the joint norm of those parts the same way (NumPy; the rows to take again)."""
    parts = [_row_norm(np, G.reshape(B, -1).astype(np.float64)) for G in per]
    for k, (kind, i, V) in enumerate(spec):
        parts.append(_ghost_sq_norms_exact(B, kind, i, V, pairs[2 * k], pairs[2 * k + 1],
                                           row=_row_norm))
    return _row_norm(np, np.stack(parts, axis=1))


def _row_norm(xp: Any, a: Array) -> Array:
    """``sqrt(sum_i a[b, i]^2)`` per row of the 2-D float64 ``a``, from the row divided by its
    largest magnitude: no square overflows or underflows where the norm itself is a float64
    number (an inf entry gives inf, a NaN one NaN)."""
    if a.shape[1] == 0:
        return np.zeros(a.shape[0])
    m = np.max(np.abs(a), axis=1)
    s = np.where((m > 0) & np.isfinite(m), m, 1.0)
    with np.errstate(over="ignore", invalid="ignore"):
        return s * np.sqrt(_row_sq(np, a / s[:, None]))


def _sq_norms_in(B: int, per: Sequence[Array], spec: Sequence[tuple], pairs: Sequence[Array],
                 xp: Any, dt: Any, check: bool = False, exact: bool = False
                 ) -> tuple[Array, Array]:
    """The squared norms of :func:`_norms_of`, with every product formed in dtype ``dt`` or the
    arrays' own where wider (None: the arrays' own), and the rows whose Gram-form sums
    cancelled past the rule of :func:`_ghost_sq_norms` (``check``; else all False).
    ``exact``: each ghost boundary's gradient formed, an example at a time (rows to take
    again)."""
    # (sums out of place: inside a traced step the zeros are a constant of the program and the
    # parts traced arrays, which a device array's in-place operator refuses)
    sq = xp.zeros(B, dtype=np.float64)
    rough = xp.zeros(B, dtype=bool)
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow is taken again in float64
        for G in per:
            sq = sq + _row_sq(xp, _at_least(G.reshape(B, -1), dt))
        for k, (kind, i, V) in enumerate(spec):
            g, X = pairs[2 * k], pairs[2 * k + 1]
            if exact:
                sq = sq + _ghost_sq_norms_exact(B, kind, i, V, g, X)
                continue
            part, flagged = _ghost_sq_norms(B, kind, i, V, g, X, dt, check)
            sq = sq + part
            if flagged is not None:
                rough = rough | flagged
    return sq, rough


def _gram_operands(B: int, kind: str, i: int, g: Array, X: Array) -> tuple[Array, Array]:
    """A matmul boundary's per-example gradient as ``A_b^T Gy_b``: ``A`` ``[B, R, K]`` rows of
    the saved operand, ``Gy`` ``[B, R, P]`` the matching rows of the cotangent."""
    if i == 1:  # x[B, ..., d] @ W[d, p]
        return X.reshape(B, -1, X.shape[-1]), g.reshape(B, -1, g.shape[-1])
    # W[O, K] @ x[B, ..., K, T']: rows of the Gram matrices are (inner batch, t) pairs
    K, Tp = X.shape[-2:]
    X4 = X.reshape(B, -1, K, Tp)
    G4 = g.reshape(B, -1, g.shape[-2], Tp)
    if X4.shape[1] == 1:
        return _swap(X4[:, 0]), _swap(G4[:, 0])
    return (X4.transpose(0, 1, 3, 2).reshape(B, -1, K),
            G4.transpose(0, 1, 3, 2).reshape(B, -1, G4.shape[2]))


def _ghost_sq_norms(B: int, kind: str, i: int, V: Any, g: Array, X: Array, dt: Any,
                    check: bool = False) -> tuple[Array, Array | None]:
    """``||G_b||^2`` of the per-example gradient at a ghost boundary, without forming ``G_b``
    (the products in dtype ``dt``; None: the arrays' own). ``kind`` "embedding": ``X`` the
    ``[B, ...]`` ids into a table of ``V`` rows; "conv": ``X`` a convolution's input images and
    ``V`` its :func:`_conv_spec` (the gradients formed a chunk at a time, exact); else a matmul
    whose input ``i`` is the parameter and ``X`` the other (saved) input.

    With ``check``, also the examples whose Gram form ``sum_ij (A A^T)_ij (G G^T)_ij`` lost
    digits to cancellation: its rounding error is about eps times the same sum over absolute
    values, so a result under sqrt(eps) of that sum may be off in its leading digits (a
    gradient that nearly cancels across a sequence's positions); those are taken again by
    forming the gradient (None: no Gram form here, nothing to cancel)."""
    xp = backend_of(g).xp
    g = _at_least(g, dt)
    if kind == "conv":  # formed a chunk of examples at a time: exact, nothing to cancel
        return _conv_sq_norms(B, V, g, _at_least(X, dt)), None
    if kind == "embedding":
        L = math.prod(X.shape[1:])
        G = g.reshape(B, L, -1)
        if L == 1:
            return xp.einsum("bli,bli->b", G, G), None
        ids = X.reshape(B, L)
        if ids.dtype != np.intp:  # (ids + V in a narrow index dtype would wrap around)
            ids = ids.astype(np.intp)
        ids = xp.where(ids < 0, ids + V, ids)
        same = (ids[:, :, None] == ids[:, None, :]).astype(G.dtype)
        P = xp.matmul(G, _swap(G))
        sq = xp.einsum("bij,bij->b", P, same)
        return sq, (_cancelled(xp, sq, xp.einsum("bij,bij->b", xp.abs(P), same), P.dtype)
                    if check else None)
    A, Gy = _gram_operands(B, kind, i, g, _at_least(X, dt))
    if A.shape[1] == 1:
        return _row_sq(xp, A[:, 0]) * _row_sq(xp, Gy[:, 0]), None
    PA, PG = xp.matmul(A, _swap(A)), xp.matmul(Gy, _swap(Gy))
    sq = xp.einsum("bij,bij->b", PA, PG)
    return sq, (_cancelled(xp, sq, xp.einsum("bij,bij->b", xp.abs(PA), xp.abs(PG)), PA.dtype)
                if check else None)


def _cancelled(xp: Any, sq: Array, bound: Array, dt: Any) -> Array:
    """Rows whose signed sum ``sq`` is under sqrt(eps) of its absolute ``bound`` (see
    :func:`_ghost_sq_norms`); an all-zero row (``bound`` 0) is exact."""
    return sq < bound * math.sqrt(float(np.finfo(dt).eps))


#: Elements of one chunk of per-example gradients formed by :func:`_ghost_sq_norms_exact`:
#: 4 Mi float64 entries (32 MiB) bound the memory of the rows taken again.
_EXACT_CHUNK = 1 << 22


def _ghost_sq_norms_exact(B: int, kind: str, i: int, V: Any, g: Array, X: Array,
                          row: Callable[[Any, Array], Array] | None = None) -> Array:
    """``||G_b||^2`` at a ghost boundary with ``G_b`` formed (float64, NumPy), for the rows
    whose Gram form cancelled: a chunk of examples at a time within :data:`_EXACT_CHUNK`.
    ``row``: what each row of ``G_b`` is reduced to (default :func:`_row_sq`, the squared
    norm; :func:`_row_norm` gives the norm)."""
    row = _row_sq if row is None else row
    g = g.astype(np.float64)
    if kind == "conv":
        return _conv_sq_norms(B, V, g, X.astype(np.float64), row)
    if kind == "embedding":
        L = math.prod(X.shape[1:])
        G = g.reshape(B, L, -1)
        ids = X.reshape(B, L).astype(np.intp)
        ids = np.where(ids < 0, ids + V, ids)
        out = np.empty(B)
        for b in range(B):  # a row of the table per distinct id of the example
            _, inv = np.unique(ids[b], return_inverse=True)
            Z = np.zeros((int(inv.max()) + 1 if L else 0, G.shape[2]))
            np.add.at(Z, inv, G[b])
            out[b] = row(np, Z.reshape(1, -1))[0]
        return out
    A, Gy = _gram_operands(B, kind, i, g, X.astype(np.float64))
    step = max(1, _EXACT_CHUNK // max(1, A.shape[2] * Gy.shape[2]))
    out = np.empty(B)
    for s in range(0, B, step):
        M = np.matmul(_swap(A[s:s + step]), Gy[s:s + step])
        out[s:s + step] = row(np, M.reshape(M.shape[0], -1))
    return out


#: Entries of one chunk of a convolution's per-example weight gradients formed for their norms
#: (:func:`_conv_sq_norms`): 1 MiB of float32, so a layer's norms take at most that beyond the
#: activations and weights, while a small network's layers (the CNN of ``benchmarks/``: 72 and
#: 1152 weights, batch 32) still go in one chunk of one batched product.
_CONV_CHUNK = 1 << 18


def _conv_spec(rec: Record) -> tuple:
    """What :func:`_conv_sq_norms` needs of a convolution record, hashable (it names a logged
    step inside ``gt.function``): the primitive's name, the weights' shape, its parameters."""
    return (rec.prim.name, tuple(rec.in_shapes[1]),
            tuple(sorted((k, v) for k, v in rec.params.items())))


def _conv_sq_norms(B: int, spec: tuple, g: Array, X: Array,
                   row: Callable[[Any, Array], Array] | None = None) -> Array:
    """``||W_b||^2`` of a convolution's per-example weight gradients ``W_b`` (``spec`` from
    :func:`_conv_spec`; ``X`` its input images, ``g`` its output cotangent), each formed with
    the layer's per-example rule a chunk of examples at a time within :data:`_CONV_CHUNK`
    entries (one example where its gradient alone is larger) and dropped: the memory of one
    chunk, never ``[B, *w_shape]`` (a convolution's
    per-example gradient costs ``L * Kg * O`` per example where the Gram form over its ``L``
    positions costs ``L^2 (Kg + O)``, more for every layer whose image is larger than its
    channels)."""
    row = _row_sq if row is None else row  # (or :func:`_row_norm`: the norms)
    name, w_shape, params = spec
    fn, p = CONV_WEIGHT_GRADS[name], dict(params)
    xp = backend_of(g).xp
    step = max(1, _CONV_CHUNK // max(1, math.prod(w_shape)))
    if step >= B:  # all at once, on the arrays themselves (a forward's kept columns are found)
        W = fn(xp, X, g, w_shape, p)
        return row(xp, W.reshape(B, -1))
    parts = []
    for s in range(0, B, step):
        W = fn(xp, X[s:s + step], g[s:s + step], w_shape, p)
        parts.append(row(xp, W.reshape(W.shape[0], -1)))
    return xp.concatenate(parts)


def _at_least(a: Array, dt: Any) -> Array:
    """``a`` in dtype ``dt`` where ``a``'s is narrower (None: ``a`` as it is)."""
    if dt is None or a.dtype.itemsize >= np.dtype(dt).itemsize:
        return a
    return a.astype(dt)


def _row_sq(xp: Any, a: Array) -> Array:
    """``sum_i a[b, i]^2`` per row of the 2-D ``a``: NumPy's ``vecdot`` (2.0 and later) where
    there is one, a third of ``einsum``'s cost at these sizes (a call per layer and step)."""
    if xp is np and _VECDOT is not None:
        return _VECDOT(a, a)
    return xp.einsum("bi,bi->b", a, a)


_VECDOT = getattr(np, "vecdot", None)


def _scaling_dtype(dt: np.dtype) -> np.dtype:
    """The dtype clipping scales a gradient of dtype ``dt`` in: float16 in float32 (a scale
    ``C / ||g||`` under float16's 6e-8 would round to 0, below 6e-5 lose digits, where the
    scaled entries may still be float16 numbers), the others in their own."""
    return np.dtype(np.float32) if dt == np.float16 else dt


def _ghost_sum(plan: _Plan, gh: _Ghost, g: Array, c: Array | None) -> Array:
    """``sum_b c_b G_b`` at the boundary input (``c`` None: all ones), one contraction."""
    rec = plan.records[gh.idx]
    B = plan.B
    xp = backend_of(g).xp
    if c is not None:
        wd = _scaling_dtype(g.dtype)
        g = (g if g.dtype == wd else g.astype(wd)) * c.astype(wd, copy=False).reshape(
            (B,) + (1,) * (g.ndim - 1))
    if gh.kind == "embedding":
        idx = _batch_index(rec, B)
        shape = rec.in_shapes[0]
        return acc_add_at(xp, shape, idx, g)  # (made like g: inside gt.function, traced)
    X = rec.inputs[1 - gh.i].data  # type: ignore[union-attr]
    if gh.kind == "conv":  # the batch weight gradient of the scaled cotangent
        return CONV_WEIGHT_SUMS[rec.prim.name](xp, X, g, tuple(rec.in_shapes[1]), rec.params)
    if gh.i == 1:  # x[B, ..., d] @ W[d, p]: x^T g over all rows (the batch product's form,
        # a transposed view handed to BLAS: no copy, unlike tensordot's)
        return xp.matmul(X.reshape(-1, X.shape[-1]).T, g.reshape(-1, g.shape[-1]))
    K, Tp = X.shape[-2:]
    return xp.tensordot(g.reshape(B, -1, g.shape[-2], Tp), X.reshape(B, -1, K, Tp),
                        axes=([0, 1, 3], [0, 1, 3]))


def _through_chain(plan: _Plan, gh: _Ghost, s: Array) -> Array:
    """Map a summed gradient back from the boundary input to the source with the chain's
    ordinary (linear) VJPs."""
    for idx in reversed(gh.chain):
        rec = plan.records[idx]
        (s,) = _vjp_arrays(rec, s)
        if s.dtype != rec.in_dtypes[0]:
            s = s.astype(rec.in_dtypes[0])
    return s


# --------------------------------------------------------------------------- entry point
def _compute(tape: Recorder, target: Tensor, sources: list[Tensor], plan: _Plan, opts: Options,
             release: bool) -> tuple[dict[int, Array], dict[int, Array], Array | None]:
    """The per-example gradients (``reduce=None``) or sums (``"sum"``) of the sources by id, and
    the unclipped norms when asked for."""
    B = plan.B
    xp = target._backend.xp
    need_norms = opts.max_norm is not None or opts.return_norms
    per: dict[int, Array] = {}  # source id -> [B, *shape] (materialized)
    summed: dict[int, Array] = {}  # source id -> shape (reduce="sum")
    norms = None
    if opts.reduce == "sum" and not need_norms:
        # the plain sum over examples is the batch gradient: the engine's own pass
        summed = backward(tape, [target], [None], sources, False, release)
    elif plan.live and B == 0:  # no examples: empty per-example gradients, zero sums
        used = {i for idx in plan.live for i in plan.records[idx].in_ids if i in plan.source_ids}
        for s in sources:
            if s._id in used:
                per[s._id] = xp.zeros((0,) + s.shape, s.dtype)
                summed[s._id] = xp.zeros(s.shape, s.dtype)
    elif plan.live:
        per, ghost_g, owned = _reverse_pass(plan, release)
        # in the sources' order (the pass returns them by id, in a set's order): the norms'
        # sums then do not depend on the tensors' ids
        per = {s._id: per[s._id] for s in sources if s._id in per}
        ghosts = [(plan.ghosts[k], g) for k, g in ghost_g.items()]
        c = None
        if need_norms:
            norms = _norms(plan, per, ghosts, xp)
            if opts.max_norm is not None:
                C = opts.max_norm
                with np.errstate(divide="ignore", invalid="ignore"):
                    c = xp.where(norms > C, C / norms, 1.0)
        if opts.reduce == "sum":
            for sid, G in per.items():
                if c is None:
                    summed[sid] = acc_sum(G, 0)
                    continue
                wd = _scaling_dtype(G.dtype)
                G2 = G.reshape(B, -1)
                sm = xp.matmul(c.astype(wd), G2 if G2.dtype == wd else G2.astype(wd))
                summed[sid] = sm.reshape(G.shape[1:])  # (cast to the source's dtype at the end)
            per = {}
            for gh, g in ghosts:
                s = _through_chain(plan, gh, _ghost_sum(plan, gh, g, c))
                prev = summed.get(gh.source)
                summed[gh.source] = s if prev is None else prev + s
        elif c is not None:
            for sid, G in per.items():
                wd = _scaling_dtype(G.dtype)
                cb = c.astype(wd).reshape((B,) + (1,) * (G.ndim - 1))
                if wd != G.dtype:  # scaled in the wider dtype, rounded once
                    per[sid] = (G.astype(wd) * cb).astype(G.dtype)
                elif sid in owned and type(G) is type(cb):  # allocated by the pass, referenced
                    G *= cb  # nowhere else (inside a traced step, an untraced G, made from a
                else:  # constant seed, cannot take a traced factor in place on a device)
                    per[sid] = G * cb
    if need_norms and norms is None:
        norms = xp.zeros(B, dtype=np.float64)
    return per, summed, norms


@contextlib.contextmanager
def _unrecorded() -> Iterator[None]:
    """No tape of this thread records inside the block: the pass computes on arrays, and a
    custom gradient's ``grad`` (gradtape ops) must not leave records on a recording tape."""
    st = STATE
    saved = st.recording
    st.recording = []
    st.sync()
    try:
        yield
    finally:
        st.recording = saved
        st.sync()


def per_example_gradients(tape: Recorder, target: Tensor, sources: list[Tensor], plan: _Plan,
                          opts: Options, release: bool) -> tuple[list[Tensor | None], Tensor | None]:
    """Run the pass for ``plan`` (from :func:`analyse`) and finish the results: one Tensor (or
    None) per source, and the norms ``[B]`` when ``opts.return_norms``."""
    B = plan.B
    xp = target._backend.xp
    with _unrecorded():
        per, summed, norms = _compute(tape, target, sources, plan, opts, release)
    results: list[Tensor | None] = []
    origin = ("gradient", user_line())
    for s in sources:
        arr = (summed if opts.reduce == "sum" else per).get(s._id) if s._id else None
        shape = s.shape if opts.reduce == "sum" else (B,) + s.shape
        if arr is None:
            if opts.unconnected == "raise":
                raise UnconnectedGradientError(explain(tape, s, [target]))
            if opts.unconnected == "zero":
                results.append(_wrap(s._backend.xp.zeros(shape, s.dtype), s._backend))
            else:
                results.append(None)
            continue
        # each conversion only where needed: a device library's astype(copy=False) and
        # ascontiguousarray give a new array object even when they copy nothing, which inside
        # gt.function is not the buffer the trace followed (the step then ran eagerly)
        if arr.dtype != s.dtype:
            arr = arr.astype(s.dtype)
        if not arr.ndim:  # (ascontiguousarray makes a 0-d array 1-d: a scalar source's sum
            arr = xp.asarray(arr)  # keeps shape (); a NumPy scalar becomes an array)
        elif not arr.flags.c_contiguous:
            arr = xp.ascontiguousarray(arr)
        t = _wrap(arr, s._backend)
        t._origin = origin
        results.append(t)
    norm_t = None
    if norms is not None:
        dts = [s.dtype for s in sources] or [target.dtype]
        norm_t = _wrap(norms.astype(np.result_type(*dts)), target._backend)
    return results, norm_t
