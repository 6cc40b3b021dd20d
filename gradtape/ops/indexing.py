"""Indexing: ``t[index]`` (basic and advanced), take, gather. Gradients scatter back and
accumulate repeated indices."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._src.autodiff.record import Record
from .._src.primitive import bind, primitive
from .._src.rules import OnTensors
from .._src.tensor import Tensor
from ._util import move_axis, one

__all__ = ["getitem", "take", "gather"]


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
                    "indexing with a batched index tensor (one index per example) inside gt.vmap "
                    "is not supported: getitem's index is a constant, not an operand; pass the "
                    "index unbatched (in_axes=None) or select with gt.where / a one-hot product")
            it = it.data
            advanced = True
        elif isinstance(it, (list, np.ndarray)) or type(it).__module__.startswith("cupy"):
            it = xp.asarray(it)
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
    z = xp.zeros(shape, dtype=g.dtype)
    if advanced:
        xp.add.at(z, index, g)
    else:
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


P_GETITEM = primitive("getitem", lambda xp, x, *, index, advanced: x[index], rule=_getitem_rule,
                      jvp=_getitem_jvp,
                      saves_inputs=False, masks=True, examples=_getitem_examples,
                      batch=_getitem_batch)


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
    idx, advanced = _convert_index(index, x._backend.xp)
    try:
        return bind(P_GETITEM, x, index=idx, advanced=advanced)
    except IndexError as exc:
        raise IndexError(f"indexing a tensor of shape {x.shape}: {exc}") from None


def take(x: Any, indices: Any, axis: int | None = None) -> Tensor:
    """Take elements along ``axis`` (flattened when None), as ``np.take``.

    Shapes: ``x.shape[:axis] + indices.shape + x.shape[axis+1:]``.

    Example:
        >>> import gradtape as gt
        >>> gt.take(gt.tensor([[1.0, 2.0], [3.0, 4.0]]), [1], axis=1).numpy()
        array([[2.],
               [4.]], dtype=float32)
    """
    x = one(x)
    if axis is None:
        return getitem(x.reshape((-1,)), indices if not isinstance(indices, list) else np.asarray(indices))
    if not -x.ndim <= int(axis) < x.ndim:
        raise ValueError(f"take: axis {axis} is out of range for a tensor of rank {x.ndim}")
    axis = int(axis) % x.ndim
    if isinstance(indices, list):
        indices = np.asarray(indices)
    return getitem(x, (slice(None),) * axis + (indices,))


def gather(x: Any, indices: Any, axis: int = 0) -> Tensor:
    """TF's name for :func:`take` along ``axis`` (default 0).

    Example:
        >>> import gradtape as gt
        >>> gt.gather(gt.tensor([1.0, 2.0, 3.0]), [2, 0]).numpy()
        array([3., 1.], dtype=float32)
    """
    return take(x, indices, axis=axis)
