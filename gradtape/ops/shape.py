"""Shape primitives: reshape, transpose, broadcast_to, concat, stack, pad, flip, roll, tile,
repeat, astype, stop_gradient, and the views built from them (swapaxes, moveaxis, expand_dims,
squeeze, split, meshgrid)."""

from __future__ import annotations

import math
import operator
from typing import Any

import numpy as np

from .._src.autodiff.record import Record
from .._src.primitive import REGISTRY, bind, primitive
from .._src.rules import OnTensors
from .._src.tensor import Tensor, broadcasts_to, check_dtype
from ._util import as_int, batch_size, is_int, logical_axes, move_axis, normalize_axis, one, phys_axis
from .indexing import P_SCATTER, getitem

__all__ = ["reshape", "transpose", "broadcast_to", "moveaxis", "swapaxes", "expand_dims",
           "squeeze", "stack", "concat", "split", "pad", "flip", "tile", "repeat", "astype",
           "stop_gradient", "roll", "meshgrid"]


def _axis(axis: Any, ndim: int, what: str, name: str = "axis") -> int:
    """One axis in ``[-ndim, ndim)`` as a non-negative int, or a ValueError naming it."""
    a = as_int(axis, what, name)
    if not -ndim <= a < ndim:
        raise ValueError(f"{what}: {name} {a} is out of range for a tensor of rank {ndim}")
    return a % ndim


def _rand(rng: Any, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape)


# --------------------------------------------------------------------------- reshape
def _reshape_examples(rng: Any) -> list:
    return [(reshape, (_rand(rng, 2, 6),), {"shape": (3, 4)}),
            (reshape, (_rand(rng, 2, 3, 4),), {"shape": (-1, 4)}),
            (reshape, (_rand(rng),), {"shape": (1, 1)})]


def _reshape_jvp(m: OnTensors, primals: tuple, tangents: tuple, out: Tensor, **p: Any) -> Tensor:
    return m.apply(P_RESHAPE, tangents[0], **p)


def _reshape_rule(m: OnTensors, rec: Record, g: Tensor) -> tuple:
    return (m.apply(P_RESHAPE, g, shape=rec.in_shapes[0]),)


def _reshape_batch(args: tuple, dims: tuple, *, shape: tuple) -> tuple:
    # reshape: the batch axis to the front, the batch size before the shape.
    x = move_axis(args[0], dims[0], 0)
    return bind(P_RESHAPE, x, shape=(x.shape[0], *shape)), 0


P_RESHAPE = primitive("reshape", lambda xp, x, *, shape: x.reshape(shape),
                      rule=_reshape_rule, jvp=_reshape_jvp,
                      saves_inputs=False, examples=_reshape_examples, batch=_reshape_batch)


def _unchanged(x: Tensor) -> Tensor:
    """The result of an op that changes nothing (a reshape to the same shape, an ``astype`` to
    the same dtype): ``x`` itself, immutable; for a Variable, a Tensor of its current value,
    recorded (an identity reshape), never the Variable (``h = reshape(v, v.shape); h -= 1``
    would write into it, and it would change at the Variable's next ``assign``)."""
    return bind(P_RESHAPE, x, shape=x.shape) if x._is_variable else x


def _ints(value: Any, what: str, name: str) -> tuple[int, ...]:
    """An int or a sequence of ints (a tuple, list, 1-D integer array) as a tuple; floats
    and bools are refused with a TypeError naming ``what`` and ``name`` (NumPy refuses them
    too: truncating 1.5 to 1 would give a silently wrong shape)."""
    if type(value) is tuple:  # the common case, checked without a call per item
        for v in value:
            if type(v) is not int:
                break
        else:
            return value
    if is_int(value):
        return (operator.index(value),)
    try:
        items = tuple(value)
    except TypeError:
        items = None
    if items is None or not all(is_int(v) for v in items):
        raise TypeError(f"{what}: {name} must be an int or a sequence of ints, got {value!r}")
    return tuple(operator.index(v) for v in items)


def reshape(x: Any, shape: Any) -> Tensor:
    """Reshape to ``shape`` (one entry may be -1), as ``np.reshape``.

    Example:
        >>> import gradtape as gt
        >>> gt.reshape(gt.tensor([1.0, 2.0, 3.0, 4.0]), (2, 2)).shape
        (2, 2)
    """
    x = one(x)
    shape = _ints(shape, "reshape", "shape")
    try:
        target = np.empty(x.shape, dtype=np.bool_).reshape(shape).shape if -1 in shape else shape
    except ValueError:
        target = None
    if (target is None or any(s < 0 for s in target)
            or math.prod(target) != x.size):
        raise ValueError(f"reshape: cannot reshape a tensor of shape {x.shape} ({x.size} elements) "
                         f"into shape {shape}")
    if tuple(target) == x.shape:
        return _unchanged(x)
    return bind(P_RESHAPE, x, shape=tuple(target))


# --------------------------------------------------------------------------- transpose
def _transpose_jvp(m: OnTensors, primals: tuple, tangents: tuple, out: Tensor, **p: Any) -> Tensor:
    return m.apply(P_TRANSPOSE, tangents[0], **p)


def _transpose_rule(m: OnTensors, rec: Record, g: Tensor) -> tuple:
    inverse = tuple(int(i) for i in np.argsort(rec.params["axes"]))
    return (m.apply(P_TRANSPOSE, g, axes=inverse),)


def _transpose_examples(rng: Any) -> list:
    return [(transpose, (_rand(rng, 2, 3),), {}),
            (transpose, (_rand(rng, 2, 3, 4),), {"axes": (1, -1, 0)})]


def _transpose_batch(args: tuple, dims: tuple, *, axes: tuple) -> tuple:
    # transpose: the batch axis first, then the permuted axes, each shifted past it.
    x = args[0]
    d, nd = dims[0] % x.ndim, x.ndim - 1
    return transpose(x, (d, *(phys_axis(int(a) % nd, d) for a in axes))), 0


P_TRANSPOSE = primitive("transpose", lambda xp, x, *, axes: x.transpose(axes),
                        rule=_transpose_rule, jvp=_transpose_jvp,
                        saves_inputs=False, examples=_transpose_examples,
                        batch=_transpose_batch)


def transpose(x: Any, axes: Any = None) -> Tensor:
    """Permute axes (reverse them when ``axes`` is None), as ``np.transpose``.

    Example:
        >>> import gradtape as gt
        >>> gt.transpose(gt.tensor([[1.0, 2.0, 3.0]])).shape
        (3, 1)
    """
    x = one(x)
    if axes is None:
        axes = tuple(range(x.ndim - 1, -1, -1))
    else:
        given = _ints(axes, "transpose", "axes")
        nd = x.ndim
        # (an axis below -nd stays negative and one from nd on stays too large: neither
        # matches the range)
        axes = tuple([a + nd if a < 0 else a for a in given])
        if len(axes) != nd or sorted(axes) != list(range(nd)):
            raise ValueError(f"transpose: axes {given} is not a permutation of the {nd} axes "
                             f"of a tensor of shape {x.shape}")
    if axes == tuple(range(x.ndim)):
        return _unchanged(x)
    return bind(P_TRANSPOSE, x, axes=axes)


def swapaxes(x: Any, axis1: int, axis2: int) -> Tensor:
    """Swap two axes, as ``np.swapaxes``.

    Example:
        >>> import gradtape as gt
        >>> gt.swapaxes(gt.reshape(gt.tensor(list(range(6))), (1, 2, 3)), 0, -1).shape
        (3, 2, 1)
    """
    x = one(x)
    a = _axis(axis1, x.ndim, "swapaxes", "axis1")
    b = _axis(axis2, x.ndim, "swapaxes", "axis2")
    order = list(range(x.ndim))
    order[a], order[b] = order[b], order[a]
    return transpose(x, tuple(order))


def moveaxis(x: Any, source: Any, destination: Any) -> Tensor:
    """Move axes to new positions, as ``np.moveaxis`` (ints or sequences of ints).

    Example:
        >>> import gradtape as gt
        >>> gt.moveaxis(gt.reshape(gt.tensor(list(range(6))), (1, 2, 3)), 0, -1).shape
        (2, 3, 1)
    """
    x = one(x)
    # (one axis: an int, or a 0-d integer array or Tensor)
    src: list[Any] = [source] if isinstance(source, (int, np.integer)) or getattr(
        source, "ndim", None) == 0 else list(source)
    dst: list[Any] = [destination] if isinstance(destination, (int, np.integer)) or getattr(
        destination, "ndim", None) == 0 else list(destination)
    if len(src) != len(dst):
        raise ValueError(f"moveaxis: source {source} and destination {destination} must have "
                         "the same number of elements")
    src = [_axis(a, x.ndim, "moveaxis", "source") for a in src]
    dst = [_axis(a, x.ndim, "moveaxis", "destination") for a in dst]
    if len(set(src)) != len(src) or len(set(dst)) != len(dst):
        raise ValueError(f"moveaxis: repeated axis in source {source} or destination {destination}")
    order = [i for i in range(x.ndim) if i not in src]
    for d, s in sorted(zip(dst, src)):
        order.insert(d, s)
    return transpose(x, tuple(order))


def expand_dims(x: Any, axis: Any) -> Tensor:
    """Insert size-1 axes at ``axis`` (int or tuple, positions in the result), as
    ``np.expand_dims``.

    Example:
        >>> import gradtape as gt
        >>> gt.expand_dims(gt.tensor([1.0, 2.0]), -1).shape
        (2, 1)
    """
    x = one(x)
    axes = _ints(axis, "expand_dims", "axis")
    out_ndim = x.ndim + len(axes)
    pos = normalize_axis(axes, out_ndim, "expand_dims") or ()
    dims = iter(x.shape)
    shape = tuple(1 if i in pos else next(dims) for i in range(out_ndim))
    return reshape(x, shape)


def squeeze(x: Any, axis: Any = None) -> Tensor:
    """Remove size-1 axes (all of them when ``axis`` is None), as ``np.squeeze``. Asking to
    squeeze an axis whose size is not 1 raises ``ValueError`` naming it.

    Example:
        >>> import gradtape as gt
        >>> gt.squeeze(gt.tensor([[1.0], [2.0]]), axis=1).shape
        (2,)
    """
    x = one(x)
    if axis is None:
        axes = tuple(i for i, s in enumerate(x.shape) if s == 1)
    else:
        axes = normalize_axis(axis, x.ndim, "squeeze") or ()
        if x.ndim == 0:
            axes = ()
        for a in axes:
            if x.shape[a] != 1:
                raise ValueError(f"squeeze: cannot squeeze axis {a} of a tensor of shape "
                                 f"{x.shape}: its size is {x.shape[a]}, not 1")
    return reshape(x, tuple(s for i, s in enumerate(x.shape) if i not in axes))


# --------------------------------------------------------------------------- broadcast_to
def _broadcast_examples(rng: Any) -> list:
    return [(broadcast_to, (_rand(rng, 3),), {"shape": (2, 3)}),
            (broadcast_to, (_rand(rng, 2, 1),), {"shape": (4, 2, 3)}),
            (broadcast_to, (_rand(rng),), {"shape": (2,)})]


def _broadcast_jvp(m: OnTensors, primals: tuple, tangents: tuple, out: Tensor, **p: Any) -> Tensor:
    return m.apply(P_BROADCAST_TO, tangents[0], **p)


def _broadcast_rule(m: OnTensors, rec: Record, g: Tensor) -> tuple:
    return (g,)  # the engine sums the gradient back to the input's shape


def _broadcast_batch(args: tuple, dims: tuple, *, shape: tuple) -> tuple:
    # broadcast_to: axes align at the right, so the batch axis keeps its place among the
    # example's axes (the new leading axes go in front of it).
    x = args[0]
    d = dims[0] % x.ndim
    at = len(shape) - (x.ndim - 1) + d
    return bind(P_BROADCAST_TO, x, shape=(*shape[:at], x.shape[d], *shape[at:])), at


P_BROADCAST_TO = primitive("broadcast_to", lambda xp, x, *, shape: xp.broadcast_to(x, shape),
                           rule=_broadcast_rule, jvp=_broadcast_jvp, saves_inputs=False,
                           examples=_broadcast_examples, batch=_broadcast_batch)


def broadcast_to(x: Any, shape: Any) -> Tensor:
    """Broadcast to ``shape`` (NumPy rules); the gradient is summed back.

    Example:
        >>> import gradtape as gt
        >>> gt.broadcast_to(gt.tensor([1.0, 2.0]), (3, 2)).shape
        (3, 2)
    """
    x = one(x)
    shape = _ints(shape, "broadcast_to", "shape")
    if not broadcasts_to(x.shape, shape):
        raise ValueError(f"broadcast_to: cannot broadcast shape {x.shape} to {shape}")
    if shape == x.shape:
        return _unchanged(x)
    return bind(P_BROADCAST_TO, x, shape=shape)


def meshgrid(*xs: Any, indexing: str = "xy") -> list[Tensor]:
    """Coordinate grids from 1-D coordinate vectors, as ``np.meshgrid``: output ``i`` holds
    ``xs[i]`` (flattened) repeated along the other axes. ``indexing="xy"`` (Cartesian, the
    default) swaps the first two axes of the grids; ``"ij"`` (matrix) keeps the inputs' order.
    Each grid is a broadcast of its input, so its gradient sums back over the repeats.

    Shapes: inputs of sizes ``n1, n2, n3, ...`` -> grids ``[n2, n1, n3, ...]`` (``"xy"``) or
    ``[n1, n2, n3, ...]`` (``"ij"``); no input gives an empty list.

    Example:
        >>> import gradtape as gt
        >>> gx, gy = gt.meshgrid(gt.tensor([1.0, 2.0, 3.0]), gt.tensor([10.0, 20.0]))
        >>> gx.numpy()
        array([[1., 2., 3.],
               [1., 2., 3.]], dtype=float32)
        >>> gy.shape
        (2, 3)
    """
    if indexing not in ("xy", "ij"):
        raise ValueError(f"meshgrid: indexing must be 'xy' or 'ij', got {indexing!r}")
    ts = [reshape(one(x), (-1,)) for x in xs]
    sizes = [t.shape[0] for t in ts]
    at = list(range(len(ts)))
    if indexing == "xy" and len(ts) > 1:
        at[0], at[1] = 1, 0
        sizes[0], sizes[1] = sizes[1], sizes[0]
    grids = []
    for t, a in zip(ts, at):
        shape = [1] * len(ts)
        shape[a] = t.shape[0]
        grids.append(broadcast_to(reshape(t, tuple(shape)), tuple(sizes)))
    return grids


# --------------------------------------------------------------------------- stack / concat
def _promote(ts: list) -> list:
    """Cast tensors to their common dtype (concatenate/stack), by the binary ops' rule: integer
    and bool tensors next to float or complex ones take the floats' common dtype (``int64``
    with ``float32`` is float32, never float64); otherwise NumPy's promotion."""
    dts = [t.dtype for t in ts]
    floats = [d for d in dts if d.kind in "fc"]
    dt = np.result_type(*(floats or dts))
    return [astype(t, dt) for t in ts]


def _stack_impl(xp: Any, *xs: Any, axis: int) -> Any:
    return xp.stack(xs, axis=axis)


def _filled(m: OnTensors, primals: tuple, tangents: tuple) -> list:
    """The tangents, zeros for the inputs that do not move (ops joining several inputs)."""
    return [m.const(m.xp_of(x).zeros(x.shape, x.dtype), x) if t is None else t
            for x, t in zip(primals, tangents)]


def _stack_jvp(m: OnTensors, primals: tuple, tangents: tuple, out: Tensor, **p: Any) -> Tensor:
    return m.apply(P_STACK, *_filled(m, primals, tangents), **p)


def _stack_rule(m: OnTensors, rec: Record, g: Tensor) -> tuple:
    pre = (slice(None),) * rec.params["axis"]
    return tuple(g[pre + (i,)] if need else None for i, need in enumerate(rec.needs))


def _stack_examples(rng: Any) -> list:
    return [(stack, ([_rand(rng, 2, 3), _rand(rng, 2, 3)],), {}),
            (stack, ([_rand(rng, 2), _rand(rng, 2), _rand(rng, 2)],), {"axis": -1}),
            (stack, ([_rand(rng), _rand(rng)],), {})]


def _aligned(args: tuple, dims: tuple) -> tuple[list, int]:
    """Batching helper for stack and concat: every operand with its batch axis where the first
    batched one has it; an unbatched operand is broadcast along it (the op needs every
    operand to carry the batch)."""
    d0 = next(d % a.ndim for a, d in zip(args, dims) if d is not None)
    size = batch_size(args, dims)
    out = []
    for a, d in zip(args, dims):
        if d is None:
            a = reshape(a, a.shape[:d0] + (1,) + a.shape[d0:])
            a = broadcast_to(a, a.shape[:d0] + (size,) + a.shape[d0 + 1:])
        else:
            a = move_axis(a, d, d0)
        out.append(a)
    return out, d0


def _stack_batch(args: tuple, dims: tuple, *, axis: int) -> tuple:
    # stack: operands aligned on one batch axis; the new axis goes before or after it.
    xs, d = _aligned(args, dims)
    ax = axis % xs[0].ndim  # the example's result has the operands' physical rank
    if ax <= d:
        return bind(P_STACK, *xs, axis=ax), d + 1
    return bind(P_STACK, *xs, axis=ax + 1), d


P_STACK = primitive("stack", _stack_impl, rule=_stack_rule, jvp=_stack_jvp, saves_inputs=False,
                    examples=_stack_examples, batch=_stack_batch)


def stack(tensors: Any, axis: int = 0) -> Tensor:
    """Stack tensors of equal shape along a new axis (dtypes promote as the binary ops'
    do: an integer tensor with a float32 one gives float32).

    Shapes: n tensors of shape ``s`` -> ``s`` with ``n`` inserted at ``axis``.

    Example:
        >>> import gradtape as gt
        >>> gt.stack([gt.tensor([1.0]), gt.tensor([2.0])], axis=0).shape
        (2, 1)
    """
    if isinstance(tensors, Tensor):
        tensors = list(tensors)
    ts = [one(t) for t in tensors]
    if not ts:
        raise ValueError("stack: need at least one tensor")
    for i, t in enumerate(ts):
        if t.shape != ts[0].shape:
            raise ValueError(f"stack: all tensors must have the same shape; tensors[{i}] has "
                             f"shape {t.shape}, tensors[0] has {ts[0].shape}")
    axis = _axis(axis, ts[0].ndim + 1, "stack")
    return bind(P_STACK, *_promote(ts), axis=axis)


def _concat_impl(xp: Any, *xs: Any, axis: int) -> Any:
    return xp.concatenate(xs, axis=axis)


def _concat_jvp(m: OnTensors, primals: tuple, tangents: tuple, out: Tensor, **p: Any) -> Tensor:
    return m.apply(P_CONCAT, *_filled(m, primals, tangents), **p)


def _concat_rule(m: OnTensors, rec: Record, g: Tensor) -> tuple:
    axis = rec.params["axis"]
    pre = (slice(None),) * axis
    out = []
    start = 0
    for shape, need in zip(rec.in_shapes, rec.needs):
        stop = start + shape[axis]
        out.append(g[pre + (slice(start, stop),)] if need else None)
        start = stop
    return tuple(out)


def _concat_examples(rng: Any) -> list:
    return [(concat, ([_rand(rng, 2, 3), _rand(rng, 4, 3)],), {}),
            (concat, ([_rand(rng, 2, 1), _rand(rng, 2, 3), _rand(rng, 2, 2)],), {"axis": -1}),
            (concat, ([_rand(rng, 0, 2), _rand(rng, 3, 2)],), {})]


def _concat_batch(args: tuple, dims: tuple, *, axis: int) -> tuple:
    # concat: operands aligned on one batch axis, joined along the shifted axis.
    xs, d = _aligned(args, dims)
    return bind(P_CONCAT, *xs, axis=phys_axis(axis % (xs[0].ndim - 1), d)), d


P_CONCAT = primitive("concat", _concat_impl, rule=_concat_rule, jvp=_concat_jvp, saves_inputs=False,
                     examples=_concat_examples, batch=_concat_batch)


def concat(tensors: Any, axis: int = 0) -> Tensor:
    """Join tensors along an existing axis (TF's name for ``np.concatenate``); all other
    dimensions must agree. Dtypes promote as the binary ops' do (an integer tensor with a
    float32 one gives float32).

    Shapes: ``[..., n_i, ...]`` for each input -> ``[..., sum(n_i), ...]``.

    Example:
        >>> import gradtape as gt
        >>> gt.concat([gt.tensor([[1.0]]), gt.tensor([[2.0], [3.0]])], axis=0).shape
        (3, 1)
    """
    if isinstance(tensors, Tensor):
        tensors = list(tensors)
    ts = [one(t) for t in tensors]
    if not ts:
        raise ValueError("concat: need at least one tensor")
    nd = ts[0].ndim
    if nd == 0:
        raise ValueError("concat: zero-dimensional tensors cannot be concatenated (use stack)")
    ax = _axis(axis, nd, "concat")
    for i, t in enumerate(ts):
        if t.ndim != nd or any(s != s0 for j, (s, s0) in enumerate(zip(t.shape, ts[0].shape))
                               if j != ax):
            raise ValueError(f"concat: tensors[{i}] has shape {t.shape} and tensors[0] has shape "
                             f"{ts[0].shape}; they must agree except along axis {axis}")
    if len(ts) == 1:
        return _unchanged(ts[0])
    return bind(P_CONCAT, *_promote(ts), axis=ax)


def split(x: Any, indices_or_sections: Any, axis: int = 0) -> list[Tensor]:
    """Split into a list of tensors along ``axis``, as ``np.split``: an int ``n`` gives ``n``
    equal parts (``ValueError`` when the size does not divide), a sequence gives the split
    points. Each piece is a slice, so gradients flow back into place.

    Example:
        >>> import gradtape as gt
        >>> [p.shape for p in gt.split(gt.tensor([1.0, 2.0, 3.0, 4.0]), [1, 3])]
        [(1,), (2,), (1,)]
    """
    x = one(x)
    if x.ndim == 0:
        raise ValueError("split: cannot split a 0-d tensor")
    ax = _axis(axis, x.ndim, "split")
    n = x.shape[ax]
    if is_int(indices_or_sections):
        k = operator.index(indices_or_sections)
        if k <= 0:
            raise ValueError(f"split: the number of sections must be at least 1, got {k}")
        if n == 0 and k > 1 << 20:  # (each section is a tensor object: 2**62 would never end)
            raise ValueError(f"split: {k} sections of an empty axis (shape {x.shape}): too many "
                             "tensors to return")
        if n % k:
            raise ValueError(f"split: axis {axis} of size {n} (shape {x.shape}) does not divide "
                             f"into {k} equal sections")
        points = [i * (n // k) for i in range(1, k)]
    else:
        points = list(_ints(indices_or_sections, "split", "indices_or_sections"))
    bounds = [0, *points, n]
    pre = (slice(None),) * ax
    return [getitem(x, pre + (slice(a, b),)) for a, b in zip(bounds[:-1], bounds[1:])]


# --------------------------------------------------------------------------- pad
def _pad_impl(xp: Any, x: Any, *, pad_width: tuple, constant_values: Any) -> Any:
    return xp.pad(x, pad_width, mode="constant", constant_values=constant_values)


def _pad_jvp(m: OnTensors, primals: tuple, tangents: tuple, out: Tensor, *, pad_width: tuple,
             constant_values: Any) -> Tensor:
    return m.apply(P_PAD, tangents[0], pad_width=pad_width, constant_values=0)  # a constant


def _pad_rule(m: OnTensors, rec: Record, g: Tensor) -> tuple:
    index = tuple(slice(b, b + s) for (b, _), s in zip(rec.params["pad_width"], rec.in_shapes[0]))
    return (g[index],)


def _pad_examples(rng: Any) -> list:
    return [(pad, (_rand(rng, 2, 3),), {"pad_width": 1}),
            (pad, (_rand(rng, 2, 3),), {"pad_width": ((0, 2), (1, 0)), "constant_values": 1.5}),
            (pad, (_rand(rng, 3),), {"pad_width": (2, 1)})]


def _pad_batch(args: tuple, dims: tuple, *, pad_width: Any, constant_values: Any) -> tuple:
    # pad: no padding along the batch axis, which keeps its place.
    x = args[0]
    d = dims[0] % x.ndim
    pw = np.broadcast_to(np.asarray(pad_width, dtype=np.int64), (x.ndim - 1, 2))
    pairs = tuple((int(a), int(b)) for a, b in pw)
    return bind(P_PAD, x, pad_width=(*pairs[:d], (0, 0), *pairs[d:]),
                constant_values=constant_values), d


P_PAD = primitive("pad", _pad_impl, rule=_pad_rule, jvp=_pad_jvp,
                  saves_inputs=False, examples=_pad_examples,
                  batch=_pad_batch)


def pad(x: Any, pad_width: Any, constant_values: Any = 0) -> Tensor:
    """Pad with a constant, as ``np.pad(x, pad_width, mode="constant")``: ``pad_width`` is an
    int, a ``(before, after)`` pair, or one pair per axis. ``constant_values`` is a number
    (a Python or NumPy scalar, or a 0-d array or Tensor; not differentiated).

    Shapes: each axis grows by ``before + after``.

    Example:
        >>> import gradtape as gt
        >>> gt.pad(gt.tensor([[1.0, 2.0]]), ((0, 0), (1, 2))).numpy()
        array([[0., 1., 2., 0., 0.]], dtype=float32)
    """
    x = one(x)
    try:
        raw = np.asarray(pad_width)
        if raw.dtype.kind not in "iu" and not (raw.size == 0 and raw.dtype.kind == "f"):
            raise TypeError(f"pad: pad_width must be ints, got {pad_width!r}")
        pw = np.broadcast_to(raw.astype(np.int64), (x.ndim, 2))
    except ValueError:
        raise ValueError(f"pad: pad_width {pad_width!r} does not fit a tensor of shape {x.shape}: "
                         "give an int, a (before, after) pair, or one pair per axis") from None
    if (pw < 0).any():
        raise ValueError(f"pad: pad_width must be non-negative, got {pad_width!r}")
    if not np.isscalar(constant_values) and np.ndim(constant_values) != 0:
        raise ValueError(f"pad: constant_values must be a scalar, got {constant_values!r}")
    cv = constant_values.item() if hasattr(constant_values, "item") else constant_values
    if not isinstance(cv, (bool, int, float, complex)):
        raise TypeError(f"pad: constant_values must be a number, got {constant_values!r} "
                        f"({type(constant_values).__name__})")
    pw_t = tuple((int(a), int(b)) for a, b in pw)
    if not any(a or b for a, b in pw_t):
        return _unchanged(x)
    return bind(P_PAD, x, pad_width=pw_t, constant_values=cv)


# --------------------------------------------------------------------------- flip
def _flip_examples(rng: Any) -> list:
    return [(flip, (_rand(rng, 2, 3),), {}),
            (flip, (_rand(rng, 2, 3, 4),), {"axis": -1}),
            (flip, (_rand(rng, 2, 3, 4),), {"axis": (0, 2)})]


def _flip_jvp(m: OnTensors, primals: tuple, tangents: tuple, out: Tensor, **p: Any) -> Tensor:
    return m.apply(P_FLIP, tangents[0], **p)


def _flip_rule(m: OnTensors, rec: Record, g: Tensor) -> tuple:
    return (m.apply(P_FLIP, g, axis=rec.params["axis"]),)


def _flip_batch(args: tuple, dims: tuple, *, axis: Any) -> tuple:
    # flip: the flipped axes shifted past the batch axis, which keeps its place.
    x = args[0]
    d = dims[0] % x.ndim
    axes = tuple(phys_axis(a, d) for a in logical_axes(axis, x.ndim - 1))
    return bind(P_FLIP, x, axis=axes), d


P_FLIP = primitive("flip", lambda xp, x, *, axis: xp.flip(x, axis=axis),
                   rule=_flip_rule, jvp=_flip_jvp,
                   saves_inputs=False, examples=_flip_examples, batch=_flip_batch)


def flip(x: Any, axis: Any = None) -> Tensor:
    """Reverse the order of elements along ``axis`` (all axes when None), as ``np.flip``.

    Example:
        >>> import gradtape as gt
        >>> gt.flip(gt.tensor([1.0, 2.0, 3.0])).numpy()
        array([3., 2., 1.], dtype=float32)
    """
    x = one(x)
    axes = normalize_axis(axis, x.ndim, "flip")
    if axes is None:
        axes = tuple(range(x.ndim))
    if x.ndim == 0 or not axes:
        return _unchanged(x)
    return bind(P_FLIP, x, axis=axes)


# --------------------------------------------------------------------------- roll
def _roll_examples(rng: Any) -> list:
    return [(roll, (_rand(rng, 2, 3),), {"shift": 1}),
            (roll, (_rand(rng, 2, 3, 4),), {"shift": -1, "axis": -1}),
            (roll, (_rand(rng, 2, 3, 4),), {"shift": (1, 2), "axis": (0, 2)}),
            (roll, (_rand(rng, 5),), {"shift": 7, "axis": 0})]


def _roll_jvp(m: OnTensors, primals: tuple, tangents: tuple, out: Tensor, **p: Any) -> Tensor:
    return m.apply(P_ROLL, tangents[0], **p)


def _roll_rule(m: OnTensors, rec: Record, g: Tensor) -> tuple:
    p = rec.params
    return (m.apply(P_ROLL, g, shift=tuple(-s for s in p["shift"]), axis=p["axis"]),)


def _roll_batch(args: tuple, dims: tuple, *, shift: tuple, axis: tuple) -> tuple:
    # roll: the rolled axes shifted past the batch axis, which keeps its place.
    x = args[0]
    d, nd = dims[0] % x.ndim, x.ndim - 1
    return bind(P_ROLL, x, shift=shift, axis=tuple(phys_axis(a % nd, d) for a in axis)), d


P_ROLL = primitive("roll", lambda xp, x, *, shift, axis: xp.roll(x, shift, axis=axis),
                   rule=_roll_rule, jvp=_roll_jvp, saves_inputs=False, examples=_roll_examples,
                   batch=_roll_batch)




def roll(x: Any, shift: Any, axis: Any = None) -> Tensor:
    """Shift elements cyclically along ``axis``, as ``np.roll``: ``shift`` and ``axis`` are
    ints or sequences (one shift per axis, or one for all); ``axis=None`` rolls the flattened
    tensor and restores the shape. The gradient rolls back.

    Shapes: ``x`` -> ``x.shape``.

    Example:
        >>> import gradtape as gt
        >>> gt.roll(gt.tensor([1.0, 2.0, 3.0, 4.0]), 1).numpy()
        array([4., 1., 2., 3.], dtype=float32)
    """
    x = one(x)
    shifts = _ints(shift, "roll", "shift")
    if axis is None:
        if not x.size or sum(shifts) % x.size == 0:
            return _unchanged(x)
        flat = bind(P_ROLL, reshape(x, (-1,)), shift=(sum(shifts) % x.size,), axis=(0,))
        return reshape(flat, x.shape)
    axes = [_axis(a, max(x.ndim, 1), "roll") for a in _ints(axis, "roll", "axis")]
    if len(shifts) != len(axes) and 1 not in (len(shifts), len(axes)):
        raise ValueError(f"roll: {len(shifts)} shifts for {len(axes)} axes; give one shift per "
                         "axis, or one for all")
    if x.ndim == 0:  # a 0-d tensor (axis 0 or -1) has nothing to roll
        return _unchanged(x)
    total = dict.fromkeys(axes, 0)
    for s, a in zip(shifts * (len(axes) if len(shifts) == 1 else 1),
                    axes * (len(shifts) if len(axes) == 1 else 1)):
        total[a] += s
    moved = {a: s % x.shape[a] for a, s in total.items() if x.shape[a] and s % x.shape[a]}
    if not moved:
        return _unchanged(x)
    return bind(P_ROLL, x, shift=tuple(moved.values()), axis=tuple(moved))


# --------------------------------------------------------------------------- tile
_HALF = np.dtype(np.float16)


def _sum_copies(m: OnTensors, g: Tensor, axis: tuple) -> Tensor:
    """``g`` summed over the ``axis`` of its copies (tile's and repeat's VJP); float16 with the
    sum primitive on both renderings, accumulated in float32 (a backend array's own ``.sum``
    adds float16 in float16, where 70000 copies of 0.01 gave 32)."""
    if g.dtype != _HALF:
        return g.sum(axis=axis)
    return m.apply(REGISTRY["sum"], g, axis=axis, keepdims=False)  # (reductions imports this
    # module: the primitive by its name)


def _tile_jvp(m: OnTensors, primals: tuple, tangents: tuple, out: Tensor, **p: Any) -> Tensor:
    return m.apply(P_TILE, tangents[0], **p)


def _tile_rule(m: OnTensors, rec: Record, g: Tensor) -> tuple:
    shape = rec.in_shapes[0]
    reps = rec.params["reps"]
    d = len(reps)
    shape_d = (1,) * (d - len(shape)) + tuple(shape)
    interleaved = tuple(v for r, s in zip(reps, shape_d) for v in (r, s))
    gi = _sum_copies(m, m.apply(P_RESHAPE, g, shape=interleaved), tuple(range(0, 2 * d, 2)))
    return (gi if gi.shape == shape else m.apply(P_RESHAPE, gi, shape=shape),)


def _tile_examples(rng: Any) -> list:
    return [(tile, (_rand(rng, 2, 3),), {"reps": (2, 1)}),
            (tile, (_rand(rng, 3),), {"reps": (2, 2)}),
            (tile, (_rand(rng, 2, 3),), {"reps": 3})]


def _tile_batch(args: tuple, dims: tuple, *, reps: Any) -> tuple:
    # tile: each example promoted to the result's rank with leading 1s (as np.tile does), the
    # batch axis, in place behind them, tiled once.
    x = args[0]
    d = dims[0] % x.ndim
    r = (int(reps),) if isinstance(reps, (int, np.integer)) else tuple(int(v) for v in reps)
    rank = max(len(r), x.ndim - 1)
    r = (1,) * (rank - len(r)) + r
    lead = rank - (x.ndim - 1)
    if lead:
        x = reshape(x, (1,) * lead + x.shape)
    at = lead + d
    return bind(P_TILE, x, reps=(*r[:at], 1, *r[at:])), at


P_TILE = primitive("tile", lambda xp, x, *, reps: xp.tile(x, reps), rule=_tile_rule, jvp=_tile_jvp,
                   saves_inputs=False, examples=_tile_examples, batch=_tile_batch)


def _check_size(what: str, shape: list[int], itemsize: int) -> None:
    """Refuse a result too large to address before NumPy computes its size (which overflows
    and can crash the interpreter for counts near 2**63)."""
    n = 1
    for s in shape:
        n *= int(s)
    if n * itemsize >= 2 ** 62:
        raise ValueError(f"{what}: the result would have shape {tuple(shape)}, {n} elements: too "
                         "large to allocate")


def tile(x: Any, reps: Any) -> Tensor:
    """Repeat the whole tensor ``reps`` times along each axis, as ``np.tile`` (``reps`` shorter
    than the rank is padded with 1s in front; longer promotes ``x`` with leading axes).

    Example:
        >>> import gradtape as gt
        >>> gt.tile(gt.tensor([1.0, 2.0]), (2, 2)).shape
        (2, 4)
    """
    x = one(x)
    r = _ints(reps, "tile", "reps")
    if any(v < 0 for v in r):
        raise ValueError(f"tile: reps must be non-negative, got {reps!r}")
    d = max(len(r), x.ndim)
    r = (1,) * (d - len(r)) + r
    shape_d = (1,) * (d - x.ndim) + x.shape
    _check_size("tile", [s * v for s, v in zip(shape_d, r)], x.dtype.itemsize)
    return bind(P_TILE, x, reps=r)


# --------------------------------------------------------------------------- repeat
def _repeat_jvp(m: OnTensors, primals: tuple, tangents: tuple, out: Tensor, **p: Any) -> Tensor:
    return m.apply(P_REPEAT, tangents[0], **p)


def _repeat_rule(m: OnTensors, rec: Record, g: Tensor) -> tuple:
    shape = rec.in_shapes[0]
    reps = rec.params["repeats"]
    axis = rec.params["axis"]
    n = shape[axis]
    if isinstance(reps, int):
        parts = m.apply(P_RESHAPE, g, shape=shape[:axis] + (n, reps) + shape[axis + 1:])
        return (_sum_copies(m, parts, (axis + 1,)),)
    idx = m.xp_of(g).asarray(np.repeat(np.arange(n), np.asarray(reps, dtype=np.intp)))  # (() too)
    index = (slice(None),) * axis + (idx,)
    return (m.apply(P_SCATTER, g, index=index, shape=shape, advanced=True),)


def _repeat_impl(xp: Any, x: Any, *, repeats: Any, axis: int) -> Any:
    return xp.repeat(x, repeats if isinstance(repeats, int) else list(repeats), axis=axis)


def _repeat_examples(rng: Any) -> list:
    return [(repeat, (_rand(rng, 2, 3),), {"repeats": 2}),
            (repeat, (_rand(rng, 2, 3),), {"repeats": [1, 0, 3], "axis": -1}),
            (repeat, (_rand(rng, 2, 3),), {"repeats": 2, "axis": 0}),
            (repeat, (_rand(rng),), {"repeats": 3})]


def _repeat_batch(args: tuple, dims: tuple, *, repeats: Any, axis: int | None) -> tuple:
    # repeat: along the axis shifted past the batch axis, which keeps its place (axis None:
    # each example flattened first, behind the batch axis).
    x = args[0]
    d = dims[0] % x.ndim
    if axis is None:
        x = move_axis(x, d, 0)
        x = reshape(x, (x.shape[0], math.prod(x.shape[1:])))
        return bind(P_REPEAT, x, repeats=repeats, axis=1), 0
    return bind(P_REPEAT, x, repeats=repeats, axis=phys_axis(axis % (x.ndim - 1), d)), d


P_REPEAT = primitive("repeat", _repeat_impl, rule=_repeat_rule, jvp=_repeat_jvp, saves_inputs=False,
                     examples=_repeat_examples, batch=_repeat_batch)


def repeat(x: Any, repeats: Any, axis: int | None = None) -> Tensor:
    """Repeat each element, as ``np.repeat``: ``repeats`` is an int or one count per element
    along ``axis``; ``axis=None`` works on the flattened tensor.

    Example:
        >>> import gradtape as gt
        >>> gt.repeat(gt.tensor([1.0, 2.0]), [1, 2]).numpy()
        array([1., 2., 2.], dtype=float32)
    """
    x = one(x)
    if axis is None:
        x = reshape(x, (-1,))
        ax = 0
    else:
        ax = _axis(axis, x.ndim, "repeat")
    n = x.shape[ax]
    r = np.asarray(repeats.numpy() if isinstance(repeats, Tensor) else repeats)
    if r.ndim == 1 and r.size == 0:  # [] for an empty axis (a float array by NumPy's default)
        r = r.astype(np.int64)
    if r.dtype.kind not in "iu" or r.ndim > 1:
        raise ValueError(f"repeat: repeats must be an int or a 1-D sequence of ints, got {repeats!r}")
    if (r < 0).any():
        raise ValueError(f"repeat: repeats must be non-negative, got {repeats!r}")
    if r.ndim == 1 and r.size == 1:
        r = r.reshape(())
    if r.ndim == 0:
        reps: Any = int(r)
    else:
        if r.size != n:
            raise ValueError(f"repeat: {r.size} repeat counts given for axis {ax} of size {n} "
                             f"(tensor shape {x.shape})")
        reps = tuple(int(v) for v in r)
    total = n * reps if isinstance(reps, int) else sum(reps)
    _check_size("repeat", [*x.shape[:ax], total, *x.shape[ax + 1:]], x.dtype.itemsize)
    return bind(P_REPEAT, x, repeats=reps, axis=ax)


# --------------------------------------------------------------------------- dtype and gradient
def _astype_jvp(m: OnTensors, primals: tuple, tangents: tuple, out: Tensor, **p: Any) -> Tensor:
    return m.apply(P_ASTYPE, tangents[0], **p)


def _astype_rule(m: OnTensors, rec: Record, g: Tensor) -> tuple:
    return (m.apply(P_ASTYPE, g, dtype=rec.in_dtypes[0]),)


def _astype_examples(rng: Any) -> list:
    return [(astype, (_rand(rng, 2, 3),), {"dtype": "float64"})]


def _astype_batch(args: tuple, dims: tuple, *, dtype: Any) -> tuple:
    # astype: elementwise, the batch axis keeps its place.
    return bind(P_ASTYPE, args[0], dtype=dtype), dims[0] % args[0].ndim


P_ASTYPE = primitive("astype", lambda xp, x, *, dtype: x.astype(dtype),
                     rule=_astype_rule, jvp=_astype_jvp,
                     saves_inputs=False, examples=_astype_examples, batch=_astype_batch)


def astype(x: Any, dtype: Any) -> Tensor:
    """Cast to ``dtype``. Differentiable between float dtypes; casting to an integer or bool
    dtype cuts the gradient.

    Example:
        >>> import gradtape as gt
        >>> gt.astype(gt.tensor([1.5]), "float64").dtype
        dtype('float64')
    """
    x = one(x)
    dtype = check_dtype(dtype, "astype: dtype")
    if dtype == x.dtype:
        return _unchanged(x)
    return bind(P_ASTYPE, x, dtype=dtype)


def _stop_gradient_batch(args: tuple, dims: tuple) -> tuple:
    # stop_gradient: the identity on values, the batch axis keeps its place.
    return bind(P_STOP_GRADIENT, args[0]), dims[0] % args[0].ndim


P_STOP_GRADIENT = primitive("stop_gradient", lambda xp, x: x, nondiff=True,
                            batch=_stop_gradient_batch)


def stop_gradient(x: Any) -> Tensor:
    """The value of ``x`` with no gradient flowing through it.

    Example:
        >>> import gradtape as gt
        >>> x = gt.tensor(2.0)
        >>> with gt.GradientTape() as tape:
        ...     tape.watch(x)
        ...     y = x * gt.stop_gradient(x)
        >>> float(tape.gradient(y, x))
        2.0
    """
    return bind(P_STOP_GRADIENT, one(x))

