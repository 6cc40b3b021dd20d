"""Indexing: ``t[index]`` (basic and advanced), take, gather, take_along_axis, index_add,
segment_sum. Gradients scatter back and accumulate repeated indices."""

from __future__ import annotations

import functools
import math
import operator
from typing import Any

import numpy as np

from .._src.autodiff.batched import physical_data
from .._src.autodiff.record import Record
from .._src.autodiff.state import STATE, opaque, read_for_trace
from .._src.backend import acc_add_at, backend_of, is_extra_array
from .._src.primitive import REGISTRY, as_tensor, bind, primitive
from .._src.rules import ON_TENSORS, OnTensors
from .._src.tensor import Tensor, _wrap, broadcasts_to
from ._util import as_int, move_axis, normalize_axis, one, own_array, phys_axis
from .elementwise import P_LESS, P_WHERE

__all__ = ["getitem", "take", "gather", "take_along_axis", "index_add", "segment_sum"]


def _convert_index(index: Any, xp: Any) -> tuple[Any, bool]:
    """Replace Tensors/lists in an index by backend arrays; report whether it is advanced."""
    items = index if isinstance(index, tuple) else (index,)
    out = []
    advanced = False
    for it in items:
        if isinstance(it, Tensor):
            if it.dtype.kind not in "iub":
                raise IndexError(f"index tensors must be integer or bool, got dtype {it.dtype}")
            if it._level:  # a batched index inside gt.vmap: the index is a constant parameter
                raise NotImplementedError(
                    "inside gt.vmap, an index that differs per example is supported as integer "
                    "index tensors with ints, slices and an Ellipsis (x[idx], x[idx, :], "
                    "x[..., idx], x[idx, 0], x[i, j], gt.take, gt.gather, embedding lookups); "
                    "this index holds None (a new axis: add it after indexing) or a bool mask or "
                    "item: pass it unbatched (in_axes=None) or select with gt.where")
            it = it.data
            advanced = True
        elif isinstance(it, (list, np.ndarray)) or type(it).__module__.startswith("cupy") \
                or is_extra_array(it):
            it = own_array(xp, it)
            if it.dtype.kind not in "iub":
                if it.size == 0:
                    it = it.astype(np.intp)
                else:
                    raise IndexError(f"index arrays must be integer or bool, got dtype {it.dtype}")
            advanced = True
        elif isinstance(it, (bool, np.bool_)):
            advanced = True
        elif not (it is None or it is Ellipsis or isinstance(it, (slice, int, np.integer))):
            raise IndexError(f"unsupported index item of type {type(it).__name__}; use ints, "
                             "slices, None, Ellipsis, or integer/bool arrays")
        out.append(it)
    return (tuple(out) if isinstance(index, tuple) else out[0]), advanced


def _scatter_impl(xp: Any, g: Any, *, index: Any, shape: tuple, advanced: bool) -> Any:
    # gt.function: NumPy's add.at reads an index on the host unless an operand is traced (a
    # constant cotangent beside traced indices); *_like: the trace sees the buffer
    g = read_for_trace(g, index)
    if advanced:  # repeated positions accumulate (float16 in float32)
        return acc_add_at(xp, shape, index, g)
    z = xp.zeros_like(g, shape=shape)
    z[index] = g
    return z


def _scatter_examples(rng: Any) -> list:
    def scatter(g: Tensor, index: Any, shape: tuple) -> Tensor:
        idx, advanced = _convert_index(index, g._backend.xp)
        return bind(P_SCATTER, one(g), index=idx, shape=shape, advanced=advanced)

    return [(scatter, (rng.standard_normal(4),), {"index": np.array([0, 2, 0, 1]), "shape": (3,)}),
            (scatter, (rng.standard_normal((2, 2)),), {"index": (slice(None), slice(1, None, 2)),
                                                       "shape": (2, 4)})]


# --------------------------------------------------------------------------- batching
def _adv_ndim(it: Any) -> int | None:
    """The number of result dimensions an advanced index item spans (a bool mask: one, the
    count of its True entries), or None for a basic item (slice, None, Ellipsis, int)."""
    if it is None or it is Ellipsis or isinstance(it, slice):
        return None
    if isinstance(it, (bool, np.bool_)):
        return 1
    if isinstance(it, (int, np.integer)):
        return None
    arr = it if hasattr(it, "dtype") else np.asarray(it)
    return 1 if arr.dtype.kind == "b" else int(arr.ndim)


def _batch_index(index: Any, ndim: int) -> tuple[tuple, int, int]:
    """A per-example ``index`` made to index a batch in front (a full slice prepended), the
    position of the batch axis in the result, and the rank of one example's result (``ndim``:
    the rank of one indexed example). NumPy puts the dimensions of advanced indices that are
    separated by a slice, None or Ellipsis (ints count as advanced next to an array) first:
    the batch axis then follows them."""
    items = index if isinstance(index, tuple) else (index,)
    adv = [_adv_ndim(it) for it in items]
    if any(a is not None for a in adv):
        at = [i for i, (it, a) in enumerate(zip(items, adv))
              if a is not None or (isinstance(it, (int, np.integer)) and not isinstance(it, bool))]
        adv_ndim = max(a for a in adv if a is not None)
    else:
        at, adv_ndim = [], 0
    separated = bool(at) and at[-1] - at[0] + 1 != len(at)
    consumed = 0  # axes of the example the index reads
    kept = 0  # result axes from slices, None and the Ellipsis
    for it in items:
        if it is None:
            kept += 1
        elif isinstance(it, slice):
            consumed += 1
            kept += 1
        elif isinstance(it, (bool, np.bool_)) or it is Ellipsis:
            pass
        elif isinstance(it, (int, np.integer)):
            consumed += 1
        else:
            arr = it if hasattr(it, "dtype") else np.asarray(it)
            consumed += int(arr.ndim) if arr.dtype.kind == "b" else 1
    kept += ndim - consumed  # the Ellipsis, or the trailing axes
    return (slice(None), *items), (adv_ndim if separated else 0), kept + adv_ndim


def _scatter_batch(args: tuple, dims: tuple, *, index: Any, shape: tuple,
                   advanced: bool) -> tuple:
    # scatter_add (getitem's adjoint): the batch axis of g goes where batched getitem puts it,
    # a full slice before the index and the batch size before shape.
    g = args[0]
    idx, at, res_ndim = _batch_index(index, len(shape))
    g = move_axis(g, dims[0], 0)
    if g.ndim - 1 < res_ndim:  # g broadcasts against the indexed positions
        g = g.reshape((g.shape[0],) + (1,) * (res_ndim - g.ndim + 1) + g.shape[1:])
    g = move_axis(g, 0, at)
    return bind(P_SCATTER, g, index=idx, shape=(g.shape[at], *shape), advanced=advanced), 0


def _scatter_jvp(m: OnTensors, primals: tuple, tangents: tuple, out: Tensor, **p: Any) -> Tensor:
    return m.apply(P_SCATTER, tangents[0], **p)


def _scatter_rule(m: OnTensors, rec: Record, g: Tensor) -> tuple:
    p = rec.params
    return (m.apply(P_GETITEM, g, index=p["index"], advanced=p["advanced"]),)


P_SCATTER = primitive("scatter_add", _scatter_impl, rule=_scatter_rule, jvp=_scatter_jvp, saves_inputs=False,
                      examples=_scatter_examples, batch=_scatter_batch)


def _getitem_jvp(m: OnTensors, primals: tuple, tangents: tuple, out: Tensor, **p: Any) -> Tensor:
    return m.apply(P_GETITEM, tangents[0], **p)


def _getitem_rule(m: OnTensors, rec: Record, g: Tensor) -> tuple:
    p = rec.params
    return (m.apply(P_SCATTER, g, index=p["index"], shape=rec.in_shapes[0],
                    advanced=p["advanced"]),)


def _getitem_examples(rng: Any) -> list:
    x = rng.standard_normal((3, 4))
    return [
        (getitem, (x,), {"index": (1, slice(None, None, -2))}),
        (getitem, (x,), {"index": np.array([2, 0, 2, -1])}),
        (getitem, (x,), {"index": (Ellipsis, None, np.array([1, 1, 3]))}),
        (getitem, (x,), {"index": x > 0}),
        (getitem, (rng.standard_normal(()),), {"index": ()}),
        (take, (x, np.array([[0, 3], [3, 3]])), {"axis": -1}),
        (gather, (x, np.array([2, 2, 0])), {}),
    ]


def _getitem_batch(args: tuple, dims: tuple, *, index: Any, advanced: bool) -> tuple:
    # getitem: the batch axis to the front and a full slice before the index (the index is a
    # parameter: its arrays are constants, never batched).
    x = move_axis(args[0], dims[0], 0)
    idx, at, _ = _batch_index(index, x.ndim - 1)
    return bind(P_GETITEM, x, index=idx, advanced=advanced), at


def _getitem_impl(xp: Any, x: Any, *, index: Any, advanced: bool) -> Any:
    if STATE.trace is not None:  # gt.function: an untraced array indexed by a traced index
        x = read_for_trace(x, index)  # (NumPy would convert the index to the host)
    return x[index]


P_GETITEM = primitive("getitem", _getitem_impl, rule=_getitem_rule,
                      jvp=_getitem_jvp,
                      saves_inputs=False, masks=True, examples=_getitem_examples,
                      batch=_getitem_batch)


# --------------------------------------------------------------------------- an index per example
# Inside gt.vmap an index tensor can differ per example. getitem's index is a parameter (a
# constant), so such an index takes two primitives whose index is an operand: a take along one
# axis and its adjoint, an add-scatter along that axis. Their batching rules offset each
# example's indices into the flattened batch, so the batch still runs as one take / one add.at.
def _index_take_impl(xp: Any, x: Any, idx: Any, *, axis: int) -> Any:
    # gt.function: NumPy's take reads an index on the host unless the array is traced
    return xp.take(read_for_trace(x, idx), idx, axis=axis)


def _index_put_impl(xp: Any, g: Any, idx: Any, *, axis: int, shape: tuple) -> Any:
    # gt.function: NumPy's add.at reads an index on the host unless an operand is traced
    g = read_for_trace(g, idx)
    full = len(shape) - 1 + idx.ndim  # the indexed positions' rank
    if g.ndim < full:  # NumPy 2.4's add.at reads past values of a lower rank than a
        # multi-dimensional index (vmap(grad) of sort: one cotangent for every example);
        # leading 1s broadcast the same values correctly
        g = g.reshape((1,) * (full - g.ndim) + tuple(g.shape))
    # (float16 accumulated in float32; made like g: a gt.function trace sees the buffer)
    return acc_add_at(xp, shape, (slice(None),) * axis + (idx,), g)


def _index_take_rule(m: OnTensors, rec: Record, g: Tensor) -> tuple:
    idx = m.val(rec.inputs[1])
    return (m.apply(P_INDEX_PUT, g, idx, axis=rec.params["axis"], shape=rec.in_shapes[0]), None)


def _index_put_rule(m: OnTensors, rec: Record, g: Tensor) -> tuple:
    idx = m.val(rec.inputs[1])
    return (m.apply(P_INDEX_TAKE, g, idx, axis=rec.params["axis"]), None)


def _index_take_jvp(m: OnTensors, primals: tuple, tangents: tuple, out: Tensor, *,
                    axis: int) -> Tensor:
    return m.apply(P_INDEX_TAKE, tangents[0], primals[1], axis=axis)


def _index_put_jvp(m: OnTensors, primals: tuple, tangents: tuple, out: Tensor, *, axis: int,
                   shape: tuple) -> Tensor:
    return m.apply(P_INDEX_PUT, tangents[0], primals[1], axis=axis, shape=shape)


def _flat_batch_index(idx: Tensor, n: int) -> Tensor:
    """Per-example indices ``idx[B, ...]`` into axes of length ``n`` as indices into the batch
    flattened to ``B * n`` rows (negative indices count from each example's end). Each index
    is checked against ``n`` first: one out of range would land in another example's rows."""
    size = idx.shape[0]
    if idx.dtype != np.intp:  # (offsets of B * n in a narrow index dtype would wrap around)
        idx = idx.astype(np.intp)
    data = physical_data(idx)
    lo = 0 if not data.size else _smallest_checked(
        functools.partial(_check_index_range, n=n, what="indexing inside gt.vmap",
                          name="an example's index"), data, ("batch index range", n))
    if lo < 0:
        idx = bind(P_WHERE, bind(P_LESS, idx, _int_const(0, idx)), idx + n, idx)
    offsets = idx._backend.xp.arange(size, dtype=idx.dtype).reshape((size,) + (1,) * (idx.ndim - 1)) * n
    return idx + _int_const(offsets, idx)


def _int_const(value: Any, like: Tensor) -> Tensor:
    backend = like._backend
    return _wrap(backend.xp.asarray(value, dtype=like.dtype), backend)


def _index_take_batch(args: tuple, dims: tuple, *, axis: int) -> tuple:
    x, idx = args
    dx, di = dims
    if di is None:  # the same indices for every example: take along the shifted axis
        dx %= x.ndim
        ap = phys_axis(axis, dx)
        out = bind(P_INDEX_TAKE, x, idx, axis=ap)
        return out, (dx if dx < ap else dx + idx.ndim - 1)
    idx = move_axis(idx, di, 0)
    if dx is None:  # one table, indices per example: the batch lands where the indices go
        if x._backend.xp is not np:  # (a device's take wraps an index out of range around)
            _index_range(idx, x.shape[axis], "indexing inside gt.vmap", "index")
        return bind(P_INDEX_TAKE, x, idx, axis=axis), axis
    size = idx.shape[0]
    x = move_axis(move_axis(x, dx, 0), axis + 1, 1)  # [B, n, *pre, *post]
    n = x.shape[1]
    rest = x.shape[2:]
    flat = x.reshape((size * n,) + rest)
    out = bind(P_INDEX_TAKE, flat, _flat_batch_index(idx, n), axis=0)  # [B, *is, *pre, *post]
    ni = idx.ndim - 1
    order = (0, *range(1 + ni, 1 + ni + axis), *range(1, 1 + ni), *range(1 + ni + axis, out.ndim))
    return out.transpose(order), 0


def _index_put_batch(args: tuple, dims: tuple, *, axis: int, shape: tuple) -> tuple:
    g, idx = args
    dg, di = dims
    if di is None:  # the same indices for every example
        g = move_axis(g, dg, 0)
        return bind(P_INDEX_PUT, g, idx, axis=axis + 1, shape=(g.shape[0],) + tuple(shape)), 0
    idx = move_axis(idx, di, 0)
    size = idx.shape[0]
    ni = idx.ndim - 1
    # g may broadcast against the indexed shape [*pre, *is, *post] (add.at's rule: a 0-d g of
    # a sum, or the flat index of an inner vmap with this level's g): its full shape first
    full = tuple(shape[:axis]) + tuple(idx.shape[1:]) + tuple(shape[axis + 1:])
    if dg is None:  # the same g for every example: add.at broadcasts it over the batch
        if g.shape != full:
            g = bind(REGISTRY["broadcast_to"], g, shape=full)
        g = g.transpose((*range(axis, axis + ni), *range(axis), *range(axis + ni, g.ndim)))
    else:
        g = move_axis(g, dg, 0)
        if g.shape[1:] != full:
            g = bind(REGISTRY["broadcast_to"], g, shape=(g.shape[0],) + full)
        order = (0, *range(1 + axis, 1 + axis + ni), *range(1, 1 + axis),
                 *range(1 + axis + ni, g.ndim))
        g = g.transpose(order)  # [B, *is, *pre, *post]
    n = shape[axis]
    pre, post = tuple(shape[:axis]), tuple(shape[axis + 1:])
    out = bind(P_INDEX_PUT, g, _flat_batch_index(idx, n), axis=0, shape=(size * n,) + pre + post)
    out = out.reshape((size, n) + pre + post)
    return move_axis(out, 1, 1 + axis), 0


def _index_operand(idx: Any, like: Tensor) -> Tensor:
    return idx if isinstance(idx, Tensor) else _wrap(own_array(like._backend.xp, idx), like._backend)


def _index_examples(rng: Any) -> list:
    x = rng.standard_normal((3, 4))

    def take_op(x: Tensor, idx: Any, axis: int) -> Tensor:
        t = one(x)
        return bind(P_INDEX_TAKE, t, _index_operand(idx, t), axis=axis)

    return [(take_op, (x, np.array([2, 0, 2, -1])), {"axis": 0}),
            (take_op, (x, np.array([[1, 1], [3, 0]])), {"axis": 1}),
            (take_along_axis, (x, np.array([[2, 0, 2, 1], [0, 0, 1, 2]])), {"axis": 0}),
            (take_along_axis, (x, np.array([[3, -1], [0, 0], [1, 2]])), {"axis": 1}),
            (take_along_axis, (x, np.array([[3, 0, 0]])), {"axis": -1}),  # broadcasts over rows
            (take_along_axis, (x, np.array([11, 0, -12, 5])), {"axis": None})]


def _index_put_examples(rng: Any) -> list:
    def put_op(g: Tensor, idx: Any, axis: int, shape: tuple) -> Tensor:
        t = one(g)
        return bind(P_INDEX_PUT, t, _index_operand(idx, t), axis=axis, shape=shape)

    return [(put_op, (rng.standard_normal((4, 3)), np.array([0, 2, 0, 1])),
             {"axis": 0, "shape": (3, 3)}),
            (put_op, (rng.standard_normal((2, 2, 2)), np.array([[1, 1], [3, 0]])),
             {"axis": 1, "shape": (2, 4)}),
            (index_add, (rng.standard_normal((3, 4)), 1, np.array([0, 3, 0, -1, 2]),
                         rng.standard_normal((3, 5))), {}),
            (index_add, (rng.standard_normal((4, 2)), 0, np.array([[1, 1], [2, 0]]),
                         rng.standard_normal((2, 2, 2))), {}),
            (segment_sum, (rng.standard_normal((5, 3)), np.array([0, 2, 0, 3, 2])),
             {"num_segments": 4}),
            (segment_sum, (rng.standard_normal((2, 3, 2)), np.array([[1, -1, 0], [1, 1, -1]])),
             {"num_segments": 2})]  # negative ids are dropped


P_INDEX_TAKE = primitive("index_take", _index_take_impl, rule=_index_take_rule,
                         jvp=_index_take_jvp, masks=True, examples=_index_examples,
                         batch=_index_take_batch)
P_INDEX_PUT = primitive("index_put_add", _index_put_impl, rule=_index_put_rule,
                        jvp=_index_put_jvp, examples=_index_put_examples,
                        batch=_index_put_batch)


_ALL = slice(None)


def _holds_batched(item: Any) -> bool:
    """Whether an index item (a tensor, or a list of them) differs per example."""
    if isinstance(item, Tensor):
        return bool(item._level)
    return type(item) is list and any(_holds_batched(it) for it in item)


def _batched_index(x: Tensor, index: Any) -> Tensor | None:
    """``x[index]`` inside gt.vmap where ``index`` holds an integer index tensor that differs
    per example, alone or beside other items (``x[i]``, ``x[:, i]``, ``x[i, :]``, ``x[..., i]``,
    ``x[i, 0]``, ``x[i, j]``), with NumPy's meaning: after the slices, one
    :data:`P_INDEX_TAKE` along the indexed axis when it is the only one, else along the
    indexed axes (each integer index tensor, array or int) merged into one, their shape placed
    where the first was when they are adjacent, else first. None where the index holds no such
    tensor, or ``None`` (a new axis), a bool item or mask (:func:`_convert_index` then says
    what is supported)."""
    if type(index) is not tuple:  # (outside gt.vmap every index: a cheap exit)
        if type(index) is list and STATE.vmap_level and any(map(_holds_batched, index)):
            raise TypeError("indexing inside gt.vmap: a list holding per-example tensors "
                            "(x[[a, b]]) is not an index; stack them into one index tensor, "
                            "x[gt.stack([a, b])], which NumPy's x[[a, b]] means")
        if not (isinstance(index, Tensor) and index._level):
            return None
    else:
        for it in index:
            if isinstance(it, Tensor) and it._level:
                break
        else:
            return None
    items = list(index) if isinstance(index, tuple) else [index]
    if sum(it is Ellipsis for it in items) > 1:
        return None
    for it in items:
        if it is None or isinstance(it, (bool, np.bool_)):
            return None
        if not (it is Ellipsis or isinstance(it, (slice, int, np.integer, Tensor, list, np.ndarray))):
            return None
    consumed = sum(it is not Ellipsis for it in items)
    if consumed > x.ndim:
        raise IndexError(f"too many indices: the tensor has {x.ndim} axes (in each example), "
                         f"{consumed} were indexed")
    # adjacent as written: NumPy counts an Ellipsis between two advanced items as apart even
    # where it stands for no axis (x[0:1, 1, ..., i] of a rank-3 x puts their axes first)
    written = [k for k, it in enumerate(items) if not (isinstance(it, slice) or it is Ellipsis)]
    adjacent = written == list(range(written[0], written[-1] + 1))
    at = next((k for k, it in enumerate(items) if it is Ellipsis), len(items))
    items[at:at + 1] = [slice(None)] * (x.ndim - consumed)
    adv = [k for k, it in enumerate(items) if not isinstance(it, slice)]
    backend = x._backend
    what = "indexing inside gt.vmap"
    tensors: dict[int, Tensor] = {}
    for k in adv:
        it = items[k]
        if not isinstance(it, (int, np.integer)):
            t = it if isinstance(it, Tensor) else _wrap(own_array(backend.xp, np.asarray(it)), backend)
            if t.dtype.kind not in "iu":
                return None  # (a bool mask, or a float index: refused by _convert_index)
            tensors[k] = _int_operand(t, x, what, "index")  # (intp: strides cannot wrap)
    basic = tuple(it if isinstance(it, slice) else slice(None) for it in items)
    y = getitem(x, basic) if any(b != _ALL for b in basic) else x
    if len(adv) == 1:  # one index tensor: a take along its axis (the rule checks the range)
        return bind(P_INDEX_TAKE, y, tensors[adv[0]], axis=adv[0])
    ints: dict[int, Any] = {}
    for k in adv:
        n = x.shape[k]
        if k not in tensors:
            if not -n <= int(items[k]) < n:
                raise IndexError(f"index {int(items[k])} is out of bounds for axis {k} with "
                                 f"size {n}")
            ints[k] = int(items[k]) % n
            continue
        t = tensors[k]  # (merged, an index past its axis would read another's: checked here)
        ints[k] = bind(P_WHERE, bind(P_LESS, t, _int_const(0, t)), t + n, t) \
            if _index_range(t, n, what, "index") < 0 else t
    rest = [k for k in range(x.ndim) if k not in adv]
    if adv + rest != list(range(x.ndim)):
        y = y.transpose(adv + rest)
    sizes = [y.shape[j] for j in range(len(adv))]
    y = y.reshape((math.prod(sizes),) + tuple(y.shape[len(adv):]))
    flat: Any = 0
    stride = 1
    for k, n in reversed(list(zip(adv, sizes))):
        flat = ints[k] * stride + flat if stride != 1 else ints[k] + flat
        stride *= n
    if not isinstance(flat, Tensor):  # (only ints: not reached, a batched tensor is here)
        return None
    out = bind(P_INDEX_TAKE, y, flat, axis=0)  # [*index shape, *the other axes]
    if adjacent and adv[0] > 0:  # adjacent: where they were
        nb = flat.ndim
        out = out.transpose((*range(nb, nb + adv[0]), *range(nb), *range(nb + adv[0], out.ndim)))
    return out


def getitem(x: Any, index: Any) -> Tensor:
    """``x[index]`` with NumPy's basic and advanced indexing. The gradient scatters back into
    the indexed positions; repeated indices accumulate.

    Example:
        >>> import gradtape as gt
        >>> x = gt.tensor([1.0, 2.0, 3.0])
        >>> x[gt.tensor([0, 0, 2])].numpy()
        array([1., 1., 3.], dtype=float32)
    """
    x = one(x)
    per_example = _batched_index(x, index)
    if per_example is not None:
        return per_example
    idx, advanced = _convert_index(index, x._backend.xp)
    try:
        if advanced and x._backend.xp is not np:
            _check_device_index(x.shape, index)
        return bind(P_GETITEM, x, index=idx, advanced=advanced)
    except IndexError as exc:
        msg, notes = str(exc), getattr(exc, "__notes__", None)
        if x._level:  # inside gt.vmap: NumPy's words for one example (the batched index
            # counts axes from the batch axis), from a stride-0 host stand-in indexed by the
            # index as given (one holding device arrays or tensors keeps the batched message)
            try:
                np.broadcast_to(np.zeros((), np.int8), x.shape)[index]
            except IndexError as single:
                msg = str(single)
            except Exception:  # noqa: BLE001 - the batched message stays
                pass
        err = IndexError(f"indexing a tensor of shape {x.shape}: {msg}")
        if notes:  # (inside gt.vmap: the per-example shapes; Python 3.11+)
            err.__notes__ = list(notes)  # type: ignore[attr-defined]
        raise err from None


def _check_device_index(shape: tuple, index: Any) -> None:
    """Raise IndexError for an integer index array (of the index as the user gave it) holding
    an index out of range for its axis. A device library's integer-array indexing wraps such an
    index around (CuPy's does, where NumPy raises): without this check the result would hold
    another element, silently. A host array or list is checked on the host (no read-back); a
    device one costs one read-back (inside a ``gt.function`` step: a step of the program)."""
    items = list(index) if isinstance(index, tuple) else [index]
    arrays = [np.asarray(it) if isinstance(it, list) else (it.data if isinstance(it, Tensor) else it)
              for it in items]
    # axes each item spans: None and a scalar bool (a new axis) none, a bool mask its rank
    spans = [0 if it is None or isinstance(it, (bool, np.bool_)) else (
        int(a.ndim) if getattr(a, "dtype", None) is not None and a.dtype.kind == "b" else 1)
        for it, a in zip(items, arrays)]
    rest = len(shape) - sum(n for it, n in zip(items, spans) if it is not Ellipsis)
    ints = [a.shape for a in arrays if getattr(a, "dtype", None) is not None and a.dtype.kind in "iu"]
    try:
        if ints and 0 in np.broadcast_shapes(*ints):  # selects nothing: NumPy checks nothing
            return
    except ValueError:  # shapes that do not broadcast: the indexing itself says so
        return
    axis = 0
    for it, a, n in zip(items, arrays, spans):
        if it is Ellipsis:
            axis += max(rest, 0)
            continue
        if getattr(a, "dtype", None) is not None and a.dtype.kind in "iu" and a.size \
                and axis < len(shape):
            check = functools.partial(_check_index_range, n=shape[axis], what="", name="",
                                      axis=axis)
            if isinstance(a, np.ndarray):
                check(a)
            else:
                _smallest_checked(check, a, ("index range", shape[axis], "getitem", axis))
        axis += n


def take(x: Any, indices: Any, axis: int | None = None) -> Tensor:
    """Take elements along ``axis`` (flattened when None), as ``np.take``.

    Shapes: ``x.shape[:axis] + indices.shape + x.shape[axis+1:]``.

    Example:
        >>> import gradtape as gt
        >>> gt.take(gt.tensor([[1.0, 2.0], [3.0, 4.0]]), [1], axis=1).numpy()
        array([[2.],
               [4.]], dtype=float32)
    """
    return _take(x, indices, axis, "take")


def _take(x: Any, indices: Any, axis: int | None, who: str) -> Tensor:
    x = one(x)
    if isinstance(indices, (list, tuple, bool, np.bool_)):
        indices = np.asarray(indices)
    if getattr(indices, "dtype", None) == np.bool_:  # as np.take: bools are the indices 0 and 1
        indices = indices.astype(np.intp)  # (getitem would read a bool array as a mask)
    if axis is not None:
        if not -x.ndim <= as_int(axis, who, "axis") < x.ndim:
            raise ValueError(f"{who}: axis {axis} is out of range for a tensor of rank {x.ndim}")
        axis = int(axis) % x.ndim
    try:
        if axis is None:
            return getitem(x.reshape((-1,)), indices)
        return getitem(x, (slice(None),) * axis + (indices,))
    except (IndexError, TypeError) as e:  # getitem's message, named for this op
        if type(e) not in (IndexError, TypeError):
            raise  # a subclass may take other arguments: as it is
        raise type(e)(f"{who}: indices: {e}") from None


def gather(x: Any, indices: Any, axis: int = 0) -> Tensor:
    """TF's name for :func:`take` along ``axis`` (default 0).

    Example:
        >>> import gradtape as gt
        >>> gt.gather(gt.tensor([1.0, 2.0, 3.0]), [2, 0]).numpy()
        array([3., 1.], dtype=float32)
    """
    return _take(x, indices, axis, "gather")


# --------------------------------------------------------------------------- along an axis
# take_along_axis, index_add and segment_sum are compositions of the index-operand primitives
# above (index_take / index_put_add), so they batch with an index per example, differentiate to
# any order and have forward mode as those do.
def _int_operand(indices: Any, like: Tensor, what: str, name: str) -> Tensor:
    """An integer index operand on ``like``'s backend (a Tensor, list or array)."""
    if isinstance(indices, Tensor):
        t = indices
        if t._backend is not like._backend:
            raise ValueError(f"{what}: {name} is on {t.backend!r} but the tensor is on "
                             f"{like.backend!r}; move it with .to()")
    else:
        arr = own_array(like._backend.xp, indices)
        if arr.size == 0 and arr.dtype.kind not in "iu":  # [] is float64 to NumPy
            arr = arr.astype(np.intp)
        t = _wrap(arr, like._backend)
    if t.dtype.kind not in "iu":
        raise TypeError(f"{what}: {name} must hold integers, got dtype {t.dtype}")
    if t.dtype != np.intp:  # (a narrow dtype cannot hold the axis length added to a negative
        t = t.astype(np.intp)  # index, nor the offsets of a batch inside gt.vmap)
    return t


def _index_range(idx: Tensor, n: int, what: str, name: str) -> int:
    """Check that every index (of every example, inside gt.vmap) lies in ``[-n, n)`` and return
    the smallest one (0 when there is none). While a ``gt.function`` step is traced on indices
    the trace follows, the check is one step of the program (run at each replay) and -1 is
    returned: the caller then maps negative indices whatever the values, so the program does
    not depend on them."""
    data = physical_data(idx)
    if not data.size:
        return 0
    return _smallest_checked(functools.partial(_check_index_range, n=n, what=what, name=name),
                             data, ("index range", n, what, name))


def _smallest_checked(check: Any, data: Any, key: Any) -> int:
    """``check(data)``: the smallest index, after raising on a bad one. While a ``gt.function``
    step is traced on ``data``, the check is one step of the program (run at each replay, on
    that call's indices) and -1 is returned: the caller then maps negative indices whatever
    the values, so the program does not depend on them."""
    if getattr(data, "_gt_traced", False):
        def run(d: Any) -> None:
            check(d)

        opaque(run, data, key=key)
        return -1
    return int(check(data))


def _ends(data: Any) -> tuple[int, int]:
    """The smallest and the largest entry of an integer array (on a device: one read-back)."""
    if isinstance(data, np.ndarray):
        return int(data.min()), int(data.max())
    lo, hi = backend_of(data).xp.stack((data.min(), data.max())).tolist()
    return int(lo), int(hi)


def _check_index_range(data: Any, n: int, what: str, name: str, axis: int | None = None) -> int:
    """The smallest index of ``data``, after raising IndexError for one out of ``[-n, n)``
    (given ``axis``: in NumPy's words, so indexing says the same on every backend)."""
    lo, hi = _ends(data)
    if lo < -n or hi >= n:
        bad = lo if lo < -n else hi
        if axis is not None:
            raise IndexError(f"index {bad} is out of bounds for axis {axis} with size {n}")
        raise IndexError(f"{what}: {name} holds the index {bad}, out of range for an axis of size "
                         f"{n} (valid: {-n} to {n - 1})")
    return lo


def _one_axis(axis: Any, ndim: int, what: str) -> int:
    if axis is None or isinstance(axis, (tuple, list)):
        raise TypeError(f"{what}: axis must be an int, got {axis!r}")
    axes = normalize_axis(axis, ndim, what)
    assert axes is not None  # axis is an int here
    return axes[0]


def _flat_positions(m: OnTensors, idx: Any, shape: tuple, axis: int) -> Any:
    """Where the elements that ``idx`` picks along ``axis`` of an array of ``shape`` sit in
    its flattened form, written against ``m``: ``idx * stride`` plus a constant offset per
    position. ``idx`` holds valid non-negative indices and has the rank of ``shape``; its other
    axes broadcast against ``shape`` (a length-1 axis of the array gets offset 0)."""
    strides = [math.prod(shape[d + 1:]) for d in range(len(shape))]
    xp = m.xp_of(idx)
    offsets = None
    for d, (size, stride) in enumerate(zip(shape, strides)):
        if d == axis or size == 1:
            continue
        ar = xp.arange(size, dtype=np.int64).reshape((1,) * d + (size,) + (1,) * (len(shape) - d - 1))
        offsets = ar * stride if offsets is None else offsets + ar * stride
    flat = idx if idx.dtype == np.int64 else idx.astype(np.int64)
    if strides[axis] != 1:
        flat = flat * strides[axis]
    if offsets is not None:
        flat = flat + m.const(offsets, flat)
    return flat


def _take_along(x: Tensor, idx: Tensor, axis: int) -> Tensor:
    """``take_along_axis`` for valid non-negative indices of the rank of ``x``: one
    :data:`P_INDEX_TAKE` of the flattened ``x`` at the flat positions of the indices."""
    return bind(P_INDEX_TAKE, x.reshape((-1,)), _flat_positions(ON_TENSORS, idx, x.shape, axis),
                axis=0)


def take_along_axis(x: Any, indices: Any, axis: int | None) -> Tensor:
    """Pick values along ``axis`` at ``indices``, as ``np.take_along_axis``:
    ``out[..., j, ...] = x[..., indices[..., j, ...], ...]``. ``indices`` holds integers
    (negative ones count from the end) and has the rank of ``x``; its other axes broadcast
    against those of ``x``.
    ``axis=None`` works on the flattened ``x`` (then ``indices`` is 1-D). The gradient
    scatter-adds back into ``x``: repeated indices accumulate. An index out of range raises
    ``IndexError``.

    Shapes: ``x[..., n, ...]``, ``indices[..., k, ...]`` -> ``[..., k, ...]`` (the other axes
    broadcast).

    Example:
        >>> import gradtape as gt
        >>> x = gt.tensor([[10.0, 30.0, 20.0], [60.0, 40.0, 50.0]])
        >>> gt.take_along_axis(x, gt.argsort(x, axis=1)[:, :1], axis=1).numpy()
        array([[10.],
               [40.]], dtype=float32)
    """
    x = one(x)
    idx = _int_operand(indices, x, "take_along_axis", "indices")
    if axis is None:
        if idx.ndim != 1:
            raise ValueError(f"take_along_axis: with axis=None the indices index the flattened x "
                             f"and must be 1-D, got shape {idx.shape}")
        x = x.reshape((-1,))
        ax = 0
    else:
        if x.ndim == 0:
            raise ValueError("take_along_axis: x is 0-d; give it an axis to index along, or pass "
                             "axis=None")
        ax = _one_axis(axis, x.ndim, "take_along_axis")
    if idx.ndim != x.ndim:
        raise ValueError(f"take_along_axis: indices must have the rank of x ({x.ndim}), got indices "
                         f"of shape {idx.shape} for x of shape {x.shape}")
    for d, (s, i) in enumerate(zip(x.shape, idx.shape)):
        if d != ax and s != i and s != 1 and i != 1:
            raise ValueError(f"take_along_axis: indices of shape {idx.shape} do not broadcast "
                             f"against x of shape {x.shape} (axis {d}; axis {ax} is indexed)")
    if _index_range(idx, x.shape[ax], "take_along_axis", "indices") < 0:
        idx = bind(P_WHERE, bind(P_LESS, idx, _int_const(0, idx)), idx + x.shape[ax], idx)
    return _take_along(x, idx, ax)


def index_add(x: Any, axis: int, indices: Any, values: Any) -> Tensor:
    """``x`` with ``values`` added at ``indices`` along ``axis``, out of place (PyTorch's
    ``index_add(dim, index, source)`` with NumPy's names): for each position ``j`` of ``indices``,
    ``out[..., indices[j], ...] += values[..., j, ...]``, repeated indices accumulating (as
    ``np.add.at``). Negative indices count from the end; one out of range raises
    ``IndexError``. ``values`` broadcasts to its expected shape; the result has the promoted
    dtype of ``x`` and ``values``. Differentiable in ``x`` (gradient: the output's) and in
    ``values`` (the output's gradient gathered at ``indices``).

    Shapes: ``x[*pre, n, *post]``, ``indices[*k]``, ``values[*pre, *k, *post]`` ->
    ``[*pre, n, *post]``.

    Example:
        >>> import gradtape as gt
        >>> gt.index_add(gt.tensor([0.0, 0.0, 0.0]), 0, [0, 2, 0], gt.tensor([1.0, 2.0, 3.0])).numpy()
        array([4., 0., 2.], dtype=float32)
    """
    x = one(x)
    if x.ndim == 0:
        raise ValueError("index_add: x must have at least one axis, got a 0-d tensor")
    ax = _one_axis(axis, x.ndim, "index_add")
    idx = _int_operand(indices, x, "index_add", "indices")
    _index_range(idx, x.shape[ax], "index_add", "indices")
    want = x.shape[:ax] + idx.shape + x.shape[ax + 1:]
    v = as_tensor(values, x)
    if v.shape != want:
        if not broadcasts_to(v.shape, want):
            raise ValueError(f"index_add: values must have shape {want} (x's shape {x.shape} with "
                             f"the indices' shape {idx.shape} in place of axis {ax}), got "
                             f"{v.shape}")
        v = bind(REGISTRY["broadcast_to"], v, shape=want)
    return x + bind(P_INDEX_PUT, v, idx, axis=ax, shape=x.shape)


def _check_segments(phys: Any, n: int) -> int:
    """The smallest segment id (0 when there is none), after checking all are below ``n``."""
    lo = int(phys.min()) if phys.size else 0
    hi = int(phys.max()) if phys.size else -1
    if hi >= n:
        raise ValueError(f"segment_sum: segment_ids holds {hi}, not below num_segments={n}")
    return lo


def segment_sum(data: Any, segment_ids: Any, num_segments: int) -> Tensor:
    """Sum the entries of ``data`` that share a segment id, as TensorFlow's
    ``unsorted_segment_sum``: ``out[s] = sum of data[i...] over every position i... where
    segment_ids[i...] == s``. The ids need not be sorted; a segment without entries is 0; an
    entry with a negative id is dropped; an id ``>= num_segments`` raises ``ValueError``. The
    gradient of an entry is the output gradient of its segment (0 when dropped).

    Shapes: ``data[*ids_shape, *rest]``, ``segment_ids[*ids_shape]`` (a prefix of ``data``'s
    shape) -> ``[num_segments, *rest]``.

    Example:
        >>> import gradtape as gt
        >>> gt.segment_sum(gt.tensor([1.0, 2.0, 3.0, 4.0]), [0, 2, 0, -1], 3).numpy()
        array([4., 0., 2.], dtype=float32)
    """
    data = one(data)
    ids = _int_operand(segment_ids, data, "segment_sum", "segment_ids")
    if isinstance(num_segments, (bool, np.bool_)) or not hasattr(num_segments, "__index__"):
        raise TypeError(f"segment_sum: num_segments must be an int, got {num_segments!r}")
    n = operator.index(num_segments)
    if n < 0:
        raise ValueError(f"segment_sum: num_segments must be >= 0, got {n}")
    if data.shape[:ids.ndim] != ids.shape:
        raise ValueError(f"segment_sum: the shape of segment_ids {ids.shape} must be a prefix of "
                         f"data's shape {data.shape}")
    rest = data.shape[ids.ndim:]
    lo = _smallest_checked(functools.partial(_check_segments, n=n), physical_data(ids),
                           ("segment ids", n))
    if lo >= 0:
        return bind(P_INDEX_PUT, data, ids, axis=0, shape=(n, *rest))
    # negative ids: summed into an extra segment n, cut off again (TF drops them)
    ids = bind(P_WHERE, bind(P_LESS, ids, _int_const(0, ids)), _int_const(n, ids), ids)
    return bind(P_INDEX_PUT, data, ids, axis=0, shape=(n + 1, *rest))[:n]
