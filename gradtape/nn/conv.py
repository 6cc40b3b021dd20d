"""Convolution and pooling over NCHW images.

``conv2d`` is one primitive with its two adjoints, ``conv_transpose2d`` (its input gradient,
also the public transposed convolution) and ``conv2d_weight_grad``; the VJP and JVP of each is
made of the three, so gradients of any order, forward mode and vmap stay within them. Each
runs as one unfold (im2col) or fold (col2im) and one matrix product over the whole batch;
the weight gradient reuses the unfold its forward made (kept, bounded, for the same input
array) and per-example weight gradients are one batched product over views of it.
``max_pool2d`` is one primitive with ``max_pool2d_route`` (its VJP: each window's cotangent to
its first maximum) and ``max_pool2d_select`` (the adjoint of that); they work on strided views
of the image, one per kernel offset. ``avg_pool2d`` sums the windows that ``im2col`` gathers
(its adjoint is ``col2im``). ``conv1d`` is ``conv2d`` on images of height 1.

Only loops over kernel offsets (``kh * kw`` slice copies) run in Python; every copy is a
vectorized array operation.
"""

from __future__ import annotations

import functools
import threading
import weakref
from typing import Any

import numpy as np

from .. import ops
from .._src.autodiff.record import Record
from .._src.autodiff.state import opaque
from .._src.backend import NUMPY
from .._src.frontend.per_example import CONV_OUTPUT_SIZES, CONV_WEIGHT_GRADS, CONV_WEIGHT_SUMS
from .._src.primitive import bind, primitive
from .._src.rules import OnTensors
from .._src.tensor import Tensor
from ..ops._util import as_int, batch_size, is_int, move_axis, one, pair, phys_axis
from ..ops.elementwise import P_SAFE_MUL
from ..ops.linalg import matmul_impl
from ..ops.reductions import P_SUM
from ..ops.shape import P_RESHAPE

__all__ = ["conv2d", "conv1d", "conv_transpose2d", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d"]


# --------------------------------------------------------------------------- arguments
def _ints2(v: Any) -> tuple[int, int] | None:
    """``v`` as a pair of ints when it holds two integers (a tuple, list or 1-D integer
    array), else None: geometry arguments take nothing else (a float truncated to an int
    would give a silently different geometry)."""
    if isinstance(v, (str, bytes)) or not hasattr(v, "__iter__") or getattr(v, "ndim", 1) != 1:
        return None
    items = list(v)
    if len(items) != 2 or not all(is_int(t) for t in items):
        return None
    return as_int(items[0], "", ""), as_int(items[1], "", "")


def _pair(v: Any, what: str, name: str, minimum: int) -> tuple[int, int]:
    ab = (as_int(v, "", ""),) * 2 if is_int(v) else _ints2(v)
    if ab is None:
        raise ValueError(f"{what}: {name} must be an int or a pair of ints, got {v!r}")
    a, b = ab
    if a < minimum or b < minimum:
        raise ValueError(f"{what}: {name} must be >= {minimum}, got {v!r}")
    return a, b


def check_settings(layer: str, kernel: tuple, stride: Any, padding: Any, dilation: Any = 1,
                   output_padding: Any = None, pool: bool = False) -> None:
    """A layer's geometry checked when the layer is made, with the messages its op gives at
    the first call (a ``Conv2D(stride=0)`` fails at once, not inside a training step):
    ``kernel`` a 1- or 2-tuple; ``output_padding`` (transposed convolutions) below the
    stride; ``pool``: a None stride is the kernel, padding at most half the kernel."""
    if len(kernel) == 1:
        _single(stride, layer, "stride", 1)
        _padding1(padding, kernel[0], _single(dilation, layer, "dilation", 1), layer)
        return
    if pool:
        _pool_geometry(kernel, stride, padding, layer)
    elif output_padding is not None:
        _transpose_geometry(kernel, stride, padding, output_padding, dilation, layer)
    else:
        _padding(padding, kernel, _pair(dilation, layer, "dilation", 1), layer)
        _pair(stride, layer, "stride", 1)


def _pool_geometry(kernel: tuple, stride: Any, padding: Any, what: str, size: tuple = ()
                   ) -> tuple[tuple, tuple, tuple]:
    """A pooling window's ``(stride, padding)`` checked (a None stride is the kernel; padding
    at most half the kernel), for an input of spatial ``size`` (``()``: not known yet; a
    ``"same"`` padding is then taken at stride 1, its largest)."""
    stride = kernel if stride is None else _pair(stride, what, "stride", 1)
    pad = _padding(padding, kernel, (1, 1), what, size, stride)
    if any(p > k // 2 for p, k in zip((max(pad[0]), max(pad[1])), kernel)):
        raise ValueError(f"{what}: padding {padding!r} must be at most half the kernel size {kernel}")
    return kernel, stride, pad


def _transpose_geometry(kernel: tuple, stride: Any, padding: Any, output_padding: Any,
                        dilation: Any, what: str) -> tuple[tuple, tuple, tuple, tuple]:
    """A transposed convolution's ``(stride, dilation, padding, output_padding)`` checked: no
    padding string, ``output_padding`` below the stride."""
    stride = _pair(stride, what, "stride", 1)
    dilation = _pair(dilation, what, "dilation", 1)
    if isinstance(padding, str):
        raise ValueError(f"{what}: padding must be an int, a pair or ((top, bottom), "
                         f"(left, right)), got {padding!r}")
    pad = _padding(padding, kernel, dilation, what)
    op = _pair(output_padding, what, "output_padding", 0)
    if op[0] >= stride[0] or op[1] >= stride[1]:
        raise ValueError(f"{what}: output_padding {op} must be smaller than the stride "
                         f"{stride} in each dimension")
    return stride, dilation, pad, op


def _same(n: int, k: int, s: int, d: int) -> tuple[int, int]:
    """TensorFlow's ``"SAME"`` padding of one axis of size ``n``: ``ceil(n / s)`` outputs, the
    extra row or column (an odd total) after the input."""
    total = max((-(-n // s) - 1) * s + d * (k - 1) + 1 - n, 0)
    return (total // 2, total - total // 2)


def _padding(padding: Any, kernel: tuple, dilation: tuple, what: str,
             size: tuple = (), stride: tuple = (1, 1)) -> tuple:
    """Normalize to ``((top, bottom), (left, right))``; ``"same"`` as TensorFlow's for an input
    of spatial ``size`` and ``stride`` (with stride 1, ``d (k - 1)`` in all, whatever the
    size)."""
    if isinstance(padding, str):
        mode = padding.lower()  # TensorFlow spells them "SAME" and "VALID"
        if mode == "valid":
            return ((0, 0), (0, 0))
        if mode == "same":
            sizes = tuple(size) or (1,) * len(kernel)  # (stride 1: the size does not matter)
            return tuple(_same(n, k, s if size else 1, d)
                         for n, k, s, d in zip(sizes, kernel, stride, dilation))
        raise ValueError(f"{what}: padding must be an int, a pair, 'valid' or 'same', got {padding!r}")
    if isinstance(padding, (tuple, list)) and len(padding) == 2 and all(
            isinstance(p, (tuple, list)) for p in padding):
        rows, cols = _ints2(padding[0]), _ints2(padding[1])
        if rows is None or cols is None:
            raise ValueError(f"{what}: padding must be an int, a pair, a pair of (before, after) "
                             f"pairs of ints, 'valid' or 'same', got {padding!r}")
        (pt, pb), (pl, pr) = rows, cols
    else:
        ph, pw = _pair(padding, what, "padding", 0)
        pt, pb, pl, pr = ph, ph, pw, pw
    if min(pt, pb, pl, pr) < 0:
        raise ValueError(f"{what}: padding must be >= 0, got {padding!r}")
    return ((pt, pb), (pl, pr))


def _out_size(n: int, k: int, s: int, p: tuple, d: int) -> int:
    return (n + p[0] + p[1] - d * (k - 1) - 1) // s + 1


# --------------------------------------------------------------------------- im2col / col2im
def _offset_slices(i: int, j: int, geo: dict, oh: int, ow: int) -> tuple:
    (sh, sw), (dh, dw) = geo["stride"], geo["dilation"]
    h0, w0 = i * dh, j * dw
    return (slice(None), slice(None), slice(h0, h0 + sh * (oh - 1) + 1, sh),
            slice(w0, w0 + sw * (ow - 1) + 1, sw))


def _tiles(kernel: tuple, stride: tuple, dilation: tuple, oh: int, ow: int, shape: tuple) -> bool:
    """Non-overlapping windows (stride = kernel, no dilation) inside the (padded) image: the
    windows are a reshape of the image (max pooling's usual case)."""
    return tuple(kernel) == tuple(stride) and tuple(dilation) == (1, 1) and oh > 0 and ow > 0 \
        and oh * kernel[0] <= shape[2] and ow * kernel[1] <= shape[3]


def _im2col_impl(xp: Any, x: Any, *, kernel: tuple, stride: tuple, padding: tuple,
                 dilation: tuple, pad_value: float) -> Any:
    N, C, H, W = x.shape
    kh, kw = kernel
    (pt, pb), (pl, pr) = padding
    if pt or pb or pl or pr:
        x = xp.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)), constant_values=pad_value)
    oh = _out_size(H, kh, stride[0], padding[0], dilation[0])
    ow = _out_size(W, kw, stride[1], padding[1], dilation[1])
    if _tiles(kernel, stride, dilation, oh, ow, x.shape):  # windows tile the image: one copy
        tiles = x[:, :, :oh * kh, :ow * kw].reshape(N, C, oh, kh, ow, kw)
        return xp.ascontiguousarray(tiles.transpose(0, 1, 3, 5, 2, 4))
    geo = {"stride": stride, "dilation": dilation}
    cols = xp.empty_like(x, shape=(N, C, kh, kw, oh, ow))  # *_like: traced by gt.function
    for i in range(kh):
        for j in range(kw):
            cols[:, :, i, j] = x[_offset_slices(i, j, geo, oh, ow)]
    return cols


def _col2im_impl(xp: Any, cols: Any, *, in_shape: tuple, kernel: tuple, stride: tuple,
                 padding: tuple, dilation: tuple) -> Any:
    N, C, H, W = in_shape
    kh, kw = kernel
    (pt, pb), (pl, pr) = padding
    oh, ow = cols.shape[-2:]
    if not (pt or pb or pl or pr) and _tiles(kernel, stride, dilation, oh, ow, (N, C, H, W)) \
            and oh * kh == H and ow * kw == W:  # the windows tile the image: one copy back
        out = xp.empty_like(cols, shape=(N, C, oh, kh, ow, kw))  # each pixel written once
        for i in range(kh):
            for j in range(kw):
                out[:, :, :, i, :, j] = cols[:, :, i, j]
        return out.reshape(N, C, H, W)
    geo = {"stride": stride, "dilation": dilation}
    out = xp.zeros_like(cols, shape=(N, C, H + pt + pb, W + pl + pr))
    for i in range(kh):
        for j in range(kw):
            out[_offset_slices(i, j, geo, oh, ow)] += cols[:, :, i, j]
    if pt or pb or pl or pr:
        out = xp.ascontiguousarray(out[:, :, pt:pt + H, pl:pl + W])
    return out


def _geometry(params: dict) -> dict:
    return {k: params[k] for k in ("kernel", "stride", "padding", "dilation")}


def _im2col_jvp(m: OnTensors, primals: tuple, tangents: tuple, out: Tensor, **p: Any) -> Tensor:
    # linear in x, but the padding is a constant: the tangent is padded with zeros
    return m.apply(P_IM2COL, tangents[0], **{**p, "pad_value": 0.0})


def _col2im_jvp(m: OnTensors, primals: tuple, tangents: tuple, out: Tensor, **p: Any) -> Tensor:
    return m.apply(P_COL2IM, tangents[0], **p)


def _im2col_rule(m: OnTensors, rec: Record, g: Tensor) -> tuple:
    return (m.apply(P_COL2IM, g, in_shape=rec.in_shapes[0], **_geometry(rec.params)),)


def _col2im_rule(m: OnTensors, rec: Record, g: Tensor) -> tuple:
    return (m.apply(P_IM2COL, g, pad_value=0.0, **_geometry(rec.params)),)


def _conv_examples(rng: np.random.Generator) -> list:
    x = rng.normal(size=(2, 4, 5, 6))
    return [
        (conv2d, (x, rng.normal(size=(3, 4, 3, 3)), rng.normal(size=3)), {"padding": 1}),
        (conv2d, (x, rng.normal(size=(4, 2, 2, 3))),
         {"stride": (2, 1), "padding": ((1, 0), (2, 1)), "dilation": (1, 2), "groups": 2}),
    ]


def _im2col_examples(rng: np.random.Generator) -> list:
    # im2col bound directly (conv2d has its own primitive) and through avg_pool2d
    def im2col(x: Tensor, **p: Any) -> Tensor:
        return bind(P_IM2COL, one(x), **p)

    x = rng.normal(size=(2, 3, 5, 6))
    return [
        (im2col, (x,), {"kernel": (3, 3), "stride": (1, 1), "padding": ((1, 1), (1, 1)),
                        "dilation": (1, 1), "pad_value": 0.0}),
        (im2col, (x,), {"kernel": (2, 3), "stride": (2, 1), "padding": ((1, 0), (2, 1)),
                        "dilation": (1, 2), "pad_value": 0.0}),
        (avg_pool2d, (x,), {"kernel_size": 2, "padding": 1}),
    ]


def _col2im_examples(rng: np.random.Generator) -> list:
    # col2im bound directly (it only appears in im2col's backward: avg_pool2d's)
    def col2im(cols: Tensor, in_shape: tuple, kernel: tuple, stride: tuple, padding: tuple,
               dilation: tuple) -> Tensor:
        return bind(P_COL2IM, one(cols), in_shape=in_shape, kernel=kernel, stride=stride,
                    padding=padding, dilation=dilation)

    geos = [((2, 3, 5, 6), (3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1)),
            ((2, 2, 5, 6), (2, 3), (2, 1), ((1, 0), (2, 1)), (1, 2))]
    cases = []
    for shape, k, s, p, d in geos:
        oh = _out_size(shape[2], k[0], s[0], p[0], d[0])
        ow = _out_size(shape[3], k[1], s[1], p[1], d[1])
        cols = rng.normal(size=shape[:2] + k + (oh, ow))
        cases.append((col2im, (cols,), {"in_shape": shape, "kernel": k, "stride": s,
                                        "padding": p, "dilation": d}))
    return cases


def _window_max_examples(rng: np.random.Generator) -> list:
    # bound directly (max_pool2d has its own primitive); distinct values spaced apart so
    # finite differences never cross a tie
    def window_max(x: Tensor, axis: int) -> Tensor:
        return bind(P_WINDOW_MAX, one(x), axis=axis)

    x = rng.permutation(2 * 3 * 4 * 2 * 3).reshape(2, 3, 4, 2, 3) * 0.1
    return [(window_max, (x,), {"axis": 2}), (window_max, (x,), {"axis": -1})]


def _front(t: Tensor, d: int) -> Tensor:
    return t if d == 0 else ops.moveaxis(t, d, 0)


def _im2col_batch(args: tuple, dims: tuple, **params: Any) -> tuple:
    # vmap rule: fold the vmapped axis into the image batch axis N.
    x = _front(args[0], dims[0] % args[0].ndim)
    B, N = x.shape[:2]
    cols = bind(P_IM2COL, ops.reshape(x, (B * N,) + x.shape[2:]), **params)
    return ops.reshape(cols, (B, N) + cols.shape[1:]), 0


def _col2im_batch(args: tuple, dims: tuple, *, in_shape: tuple, **params: Any) -> tuple:
    # vmap rule: fold the vmapped axis into the image batch axis N (as im2col).
    cols = _front(args[0], dims[0] % args[0].ndim)
    B, N = cols.shape[:2]
    x = bind(P_COL2IM, ops.reshape(cols, (B * N,) + cols.shape[2:]),
             in_shape=(B * N,) + tuple(in_shape[1:]), **params)
    return ops.reshape(x, (B, N) + x.shape[1:]), 0


P_IM2COL = primitive("im2col", _im2col_impl, rule=_im2col_rule, jvp=_im2col_jvp, saves_inputs=False,
                     examples=_im2col_examples, batch=_im2col_batch)
P_COL2IM = primitive("col2im", _col2im_impl, rule=_col2im_rule, jvp=_col2im_jvp, saves_inputs=False,
                     examples=_col2im_examples, batch=_col2im_batch)


# window_max: the maximum along one axis, its gradient to the first maximum (a building block
# for extensions; max_pool2d has primitives of its own, below, that need no unfolded copy)
def _window_max_impl(xp: Any, x: Any, *, axis: int) -> Any:
    return x.max(axis=axis)


def _window_max_rule(m: OnTensors, rec: Record, g: Tensor) -> tuple:
    # The gradient goes to the first maximum of each window (as PyTorch's max_pool2d).
    axis = rec.params["axis"] % len(rec.in_shapes[0])
    mask = _first_max(m, m.val(rec.inputs[0]), axis, g.dtype)
    gk = m.apply(P_RESHAPE, g, shape=g.shape[:axis] + (1,) + g.shape[axis:])
    return (gk * mask,)


def _first_max(m: OnTensors, x: Tensor, axis: int, dtype: Any) -> Any:
    """1 at the first maximum of ``x`` along ``axis``, else 0, in ``dtype`` (a primitive, so
    the rule also runs on batched values inside gt.vmap)."""
    return m.apply(P_FIRST_MAX_MASK, x, axis=axis, dtype=np.dtype(dtype))


# A window axis up to this long is scanned one slice at a time (contiguous slices, two cheap
# ufuncs each); argmax along a middle axis of a small size walks strided memory and is several
# times slower. Longer axes take argmax.
_UNROLL_FIRST_MAX = 16


def _first_max_impl(xp: Any, x: Any, *, axis: int = 0, dtype: Any = np.float32) -> Any:
    n = x.shape[axis]
    if n > _UNROLL_FIRST_MAX or n == 0:
        first = xp.expand_dims(x.argmax(axis=axis), axis) if n else None
        shape = [1] * x.ndim
        shape[axis] = n
        if first is None:
            return xp.zeros(x.shape, dtype)
        return (xp.arange(n).reshape(shape) == first).astype(dtype)
    top = x.max(axis=axis)
    out = xp.empty_like(x, dtype=dtype)  # *_like: traced by gt.function
    taken = xp.zeros_like(top, dtype=bool)
    index: list = [slice(None)] * x.ndim
    for i in range(n):
        index[axis] = i
        hit = x[tuple(index)] == top
        hit &= ~taken
        taken |= hit
        out[tuple(index)] = hit
    return out


def _first_max_batch(args: tuple, dims: tuple, *, axis: int = 0, dtype: Any = np.float32) -> tuple:
    # vmap rule: the window axis shifted past the batch axis
    d = dims[0] % args[0].ndim
    return bind(P_FIRST_MAX_MASK, args[0], axis=phys_axis(axis, d), dtype=dtype), d


P_FIRST_MAX_MASK = primitive("first_max_mask", _first_max_impl, nondiff=True,
                             batch=_first_max_batch)


def _window_max_jvp(m: OnTensors, primals: tuple, tangents: tuple, out: Tensor, *, axis: int
                    ) -> Tensor:
    t = tangents[0]  # a safe product: an inf or NaN tangent elsewhere does not leak in
    mask = _first_max(m, primals[0], axis, t.dtype)
    return m.apply(P_SUM, m.apply(P_SAFE_MUL, mask, t), axis=(axis,), keepdims=False)


def _window_max_batch(args: tuple, dims: tuple, *, axis: int) -> tuple:
    # vmap rule: the batch axis to the front, the window axis shifted by one.
    x = _front(args[0], dims[0] % args[0].ndim)
    return bind(P_WINDOW_MAX, x, axis=axis % (x.ndim - 1) + 1), 0


P_WINDOW_MAX = primitive("window_max", _window_max_impl, rule=_window_max_rule, jvp=_window_max_jvp, masks=True,
                         examples=_window_max_examples, batch=_window_max_batch)


# --------------------------------------------------------------------------- conv primitives
# conv2d is one primitive, with its two adjoints: conv_transpose2d (the input gradient) and
# conv2d_weight_grad (the weight gradient). Each one's VJP and JVP is made of the three, so
# gradients of any order, forward mode and vmap stay in this closed set; each impl is one
# unfold (im2col) or fold (col2im) and one matrix product for all images at once.
#
# Layout: the unfolded input is ``cols[C, kh, kw, N, L]``: one row per (channel, kernel
# offset), one column per (image, output position), so ``w[O, C*kh*kw] @ cols`` is one GEMM
# over the whole batch (a batched product per group). With stride 1 the output positions are
# those of a "flat grid": rows of the padded width ``Wp`` (the last ``Wp - OW`` columns of
# each row are junk), so that every kernel offset is one contiguous slice of the flattened
# padded image, copied (unfold) or added (fold) with long rows instead of ``OW``-element
# rows. Cotangents enter the grid with zeros in the junk columns, so junk never reaches a
# gradient. Other strides use the exact grid (``L = OH * OW``, strided copies).

def _conv_layout(hw: tuple, kernel: tuple, stride: tuple, padding: tuple, dilation: tuple
                 ) -> tuple:
    """``(OH, OW, Hp, Wp, flat)`` of a convolution over images of spatial size ``hw``."""
    H, W = hw
    (pt, pb), (pl, pr) = padding
    Hp, Wp = H + pt + pb, W + pl + pr
    oh = _out_size(H, kernel[0], stride[0], padding[0], dilation[0])
    ow = _out_size(W, kernel[1], stride[1], padding[1], dilation[1])
    # the flat grid computes Wp columns per output row: worth it unless most are junk
    flat = tuple(stride) == (1, 1) and Wp <= 2 * ow
    return oh, ow, Hp, Wp, flat


def _padded(xp: Any, x: Any, lay: tuple, padding: tuple, rows: int) -> Any:
    """``x[N, C, H, W]`` as ``[C, N, Hp + rows, Wp]``, zero padded (a transposed view of
    ``x`` when nothing is added)."""
    N, C, H, W = x.shape
    (pt, _), (pl, _) = padding
    _, _, Hp, Wp, _ = lay
    xt = x.transpose(1, 0, 2, 3)
    if (Hp + rows, Wp) == (H, W):
        return xt
    out = xp.zeros_like(x, shape=(C, N, Hp + rows, Wp))
    out[:, :, pt:pt + H, pl:pl + W] = xt
    return out


# The weight gradient needs the forward's unfolded input again: the public conv2d keeps the
# columns its forward made (when a tape recorded it, and its input was a tensor: gradtape's
# own immutable array, or a Variable's buffer, which a live tape's snapshot protects from
# assign by copy-on-write), keyed by the input array's identity, layout and the geometry, for
# conv2d_weight_grad of that array to reuse instead of unfolding again (an unfold costs as much
# as the memory-bound half of a small conv). Convolutions run inside rules, on cotangents that
# the reverse pass may accumulate into in place, never enter it. An entry dies with its input
# array (a weak reference), and all together hold at most _MEMO_BYTES: the columns are kh*kw
# times the input, and past that bound recomputing costs less than the memory.
_MEMO_BYTES = 64 << 20
_memo: dict[tuple, tuple[Any, Any]] = {}  # key -> (weakref to x, cols), oldest first
_memo_bytes = [0]
_memo_lock = threading.Lock()
_last = threading.local()  # the columns of this thread's last conv2d forward: (x, geo, cols)


def _memo_key(x: Any, geo: tuple) -> tuple:
    return (id(x), x.shape, x.strides, x.dtype.str) + geo


def _memo_drop(key: tuple) -> None:
    with _memo_lock:
        hit = _memo.pop(key, None)
        if hit is not None:
            _memo_bytes[0] -= hit[1].nbytes


def _memo_put(x: Any, geo: tuple, cols: Any) -> None:
    key = _memo_key(x, geo)
    nbytes = cols.nbytes

    def dead(_ref: Any, key: tuple = key) -> None:
        _memo_drop(key)

    try:
        ref = weakref.ref(x, dead) if nbytes <= _MEMO_BYTES else None
    except TypeError:  # an array type without weak references: no memo
        ref = None
    with _memo_lock:
        old = _memo.pop(key, None)
        if old is not None:
            _memo_bytes[0] -= old[1].nbytes
        if ref is None:
            return
        while _memo and _memo_bytes[0] + nbytes > _MEMO_BYTES:
            old = _memo.pop(next(iter(_memo)))
            _memo_bytes[0] -= old[1].nbytes
        _memo[key] = (ref, cols)
        _memo_bytes[0] += nbytes


def _memo_forget(x: Any, geo: tuple) -> None:
    """A forward over ``x`` whose columns are not kept: an older entry for the array (its
    values may have changed in place since, a Variable's buffer after ``assign``) goes."""
    if not _memo:
        return
    try:
        key = _memo_key(x, geo)
    except (TypeError, AttributeError):  # a batched value (inside vmap) has no entry
        return
    _memo_drop(key)


def _forward_cols(xp: Any, x: Any, geo: tuple) -> Any:
    """``x`` unfolded for geometry ``geo`` (kernel, stride, padding, dilation): the columns its
    recorded conv2d forward kept, else unfolded now."""
    hit = _memo.get(_memo_key(x, geo))
    if hit is not None and hit[0]() is x:
        return hit[1]
    return _unfold(xp, x, *geo)


def _unfold(xp: Any, x: Any, kernel: tuple, stride: tuple, padding: tuple, dilation: tuple
            ) -> Any:
    """``x[N, C, H, W]`` -> ``cols[C, kh, kw, N, L]`` (see the layout note above)."""
    N, C = x.shape[:2]
    kh, kw = kernel
    (sh, sw), (dh, dw) = stride, dilation
    lay = oh, ow, Hp, Wp, flat = _conv_layout(x.shape[2:], kernel, stride, padding, dilation)
    if flat:
        L = oh * Wp
        # one spare row: the last offset's slice runs (kw - 1) * dw elements past Hp * Wp
        xf = xp.ascontiguousarray(_padded(xp, x, lay, padding, 1)).reshape(C, N, (Hp + 1) * Wp)
        cols = xp.empty_like(x, shape=(C, kh, kw, N, L))
        for i in range(kh):
            for j in range(kw):
                o = i * dh * Wp + j * dw
                cols[:, i, j] = xf[:, :, o:o + L]
        return cols
    xpad = _padded(xp, x, lay, padding, 0)
    cols = xp.empty_like(x, shape=(C, kh, kw, N, oh, ow))
    for i in range(kh):
        for j in range(kw):
            cols[:, i, j] = xpad[:, :, i * dh:i * dh + sh * (oh - 1) + 1:sh,
                                 j * dw:j * dw + sw * (ow - 1) + 1:sw]
    return cols.reshape(C, kh, kw, N, oh * ow)


def _fold(xp: Any, cols: Any, hw: tuple, kernel: tuple, stride: tuple, padding: tuple,
          dilation: tuple, flat: bool | None = None) -> Any:
    """The adjoint of :func:`_unfold`: ``cols[C, kh, kw, N, L]`` summed back into images
    ``[N, C, H, W]``; ``flat``: whether ``cols`` is on the flat grid (default: the layout's
    choice)."""
    C, kh, kw, N, L = cols.shape
    H, W = hw
    (sh, sw), (dh, dw) = stride, dilation
    (pt, _), (pl, _) = padding
    oh, ow, Hp, Wp, chosen = _conv_layout(hw, kernel, stride, padding, dilation)
    flat = chosen if flat is None else flat
    if flat:
        out = xp.zeros_like(cols, shape=(C, N, (Hp + 1) * Wp))
        for i in range(kh):
            for j in range(kw):
                o = i * dh * Wp + j * dw
                out[:, :, o:o + L] += cols[:, i, j]
        out = out.reshape(C, N, Hp + 1, Wp)
    else:
        out = xp.zeros_like(cols, shape=(C, N, Hp, Wp))
        c6 = cols.reshape(C, kh, kw, N, oh, ow)
        for i in range(kh):
            for j in range(kw):
                out[:, :, i * dh:i * dh + sh * (oh - 1) + 1:sh,
                    j * dw:j * dw + sw * (ow - 1) + 1:sw] += c6[:, i, j]
    return xp.ascontiguousarray(out[:, :, pt:pt + H, pl:pl + W].transpose(1, 0, 2, 3))


def _to_grid(xp: Any, g: Any, lay: tuple) -> Any:
    """An output-shaped ``g[N, O, OH, OW]`` as ``[O, N, L]`` on the grid, junk columns 0."""
    N, Co = g.shape[:2]
    oh, ow, _, Wp, flat = lay
    gt_ = g.transpose(1, 0, 2, 3)
    if not flat:
        return xp.ascontiguousarray(gt_).reshape(Co, N, oh * ow)
    # zeroed whole, then the image written: cheaper than zeroing the few junk columns of
    # each row, a strided fill of (Wp - ow)-element rows
    out = xp.zeros_like(g, shape=(Co, N, oh, Wp))
    out[..., :ow] = gt_
    return out.reshape(Co, N, oh * Wp)


def _from_grid(xp: Any, out: Any, N: int, lay: tuple) -> Any:
    """``out[O, N, L]`` on the grid as the output ``[N, O, OH, OW]`` (contiguous)."""
    oh, ow, _, Wp, flat = lay
    Co = out.shape[0]
    out = out.reshape(Co, N, oh, Wp)[..., :ow] if flat else out.reshape(Co, N, oh, ow)
    return xp.ascontiguousarray(out.transpose(1, 0, 2, 3))


def _conv_impl(xp: Any, x: Any, w: Any, *, stride: tuple, padding: tuple, dilation: tuple,
               groups: int) -> Any:
    N = x.shape[0]
    Co = w.shape[0]
    kernel = w.shape[2:]
    cols = _unfold(xp, x, kernel, stride, padding, dilation)
    if getattr(_last, "want", False):  # the public conv2d's forward (its first conv: a
        _last.cols = (x, (tuple(kernel), stride, padding, dilation), cols)  # tangent's comes
        _last.want = False  # after it): conv2d may keep them
    C, kh, kw, _, L = cols.shape
    Kg = C // groups * kh * kw
    if groups == 1:
        out = xp.matmul(w.reshape(Co, Kg), cols.reshape(Kg, N * L))
    else:
        out = xp.matmul(w.reshape(groups, Co // groups, Kg), cols.reshape(groups, Kg, N * L))
    lay = _conv_layout(x.shape[2:], kernel, stride, padding, dilation)
    return _from_grid(xp, out.reshape(Co, N, L), N, lay)


def _conv_t_impl(xp: Any, g: Any, w: Any, *, size: tuple, stride: tuple, padding: tuple,
                 dilation: tuple, groups: int) -> Any:
    lay = _conv_layout(size, w.shape[2:], stride, padding, dilation)
    if lay[4]:
        if xp is np:  # host arrays: the choice below reads the weights, so inside gt.function
            # it is one step of the program, made again at each call
            return opaque(functools.partial(_conv_t_host, size=size, lay=lay, padding=padding,
                                            dilation=dilation, groups=groups), g, w,
                          key=("conv_transpose2d", size, lay, padding, dilation, groups))
        # on a device the weights are not read back: the layout without junk positions (below)
        lay = lay[:4] + (False,)
    return _conv_t_grid(xp, g, w, size, lay, stride, padding, dilation, groups)


def _conv_t_host(g: Any, w: Any, *, size: tuple, lay: tuple, padding: tuple, dilation: tuple,
                 groups: int) -> Any:
    """The stride-1 transposed convolution of host arrays: all examples on one flat grid, or,
    with an inf or NaN weight (which times the grid's zero junk is NaN, added into real pixels
    by a flat layout), the layout without junk positions, exact."""
    if np.isfinite(w).all():
        return _conv_t_flat(np, g, w, size, lay, padding, dilation, groups)
    return _conv_t_grid(np, g, w, size, lay[:4] + (False,), (1, 1), padding, dilation, groups)


def _conv_t_grid(xp: Any, g: Any, w: Any, size: tuple, lay: tuple, stride: tuple, padding: tuple,
                 dilation: tuple, groups: int) -> Any:
    """The transposed convolution as one product onto the columns of layout ``lay``, then their
    fold."""
    N = g.shape[0]
    Co, Cg, kh, kw = w.shape
    gg = _to_grid(xp, g, lay)
    L = gg.shape[-1]
    cols = _weights_t_times(xp, w, gg.reshape(Co, N * L), groups).reshape(Cg * groups, kh, kw, N, L)
    return _fold(xp, cols, size, (kh, kw), stride, padding, dilation, lay[4])


def _weights_t_times(xp: Any, w: Any, gg: Any, groups: int) -> Any:
    """``W^T @ gg`` per group: the weights ``[O, C/G, kh, kw]`` transposed onto cotangent
    columns ``gg[O, n]``, giving ``[C * kh * kw, n]`` (each group's rows together)."""
    Co, Cg, kh, kw = w.shape
    Kg = Cg * kh * kw
    n = gg.shape[-1]
    if groups == 1:
        return xp.matmul(w.reshape(Co, Kg).T, gg)
    return xp.matmul(w.reshape(groups, Co // groups, Kg).transpose(0, 2, 1),
                     gg.reshape(groups, Co // groups, n)).reshape(groups * Kg, n)


def _conv_t_flat(xp: Any, g: Any, w: Any, size: tuple, lay: tuple, padding: tuple,
                 dilation: tuple, groups: int) -> Any:
    """:func:`_conv_t_impl` on the flat grid (stride 1), with each example's cotangent on a
    whole padded image ``[Hp, Wp]`` (zero outside ``[OH, OW]``): every kernel offset's product
    then lands in one contiguous slice of all examples' padded images together, so the fold is
    ``kh * kw`` adds over long rows (per example, short rows cost more than the extra columns
    the product computes). With finite weights no nonzero term crosses into the next example:
    offset ``(i, j)`` moves row ``r < OH`` to ``r + i dh < Hp`` and column ``c < OW`` to
    ``c + j dw < Wp``, and the zero junk contributes zeros (with an inf weight it would
    contribute NaN: :func:`_conv_t_host` checks)."""
    N, Co = g.shape[:2]
    _, Cg, kh, kw = w.shape
    oh, ow, Hp, Wp, _ = lay
    (dh, dw), ((pt, _), (pl, _)) = dilation, padding
    H, W = size
    S = N * Hp * Wp
    # each output position t gathers offset k's column t - o_k; the grid starts with P zero
    # columns (P: the largest offset), so every term is one slice and the sum starts from the
    # first two terms: no zeroed output and no pass adding onto zeros
    offsets = [i * dh * Wp + j * dw for i in range(kh) for j in range(kw)]
    P = offsets[-1]
    gg = xp.zeros_like(g, shape=(Co, P + S))
    gg[:, P:].reshape(Co, N, Hp, Wp)[:, :, :oh, :ow] = g.transpose(1, 0, 2, 3)
    cols = _weights_t_times(xp, w, gg, groups).reshape(Cg * groups, kh * kw, P + S)
    terms = [cols[:, k, P - o:P - o + S] for k, o in enumerate(offsets)]
    if len(terms) == 1:
        out = terms[0]
    else:
        out = xp.add(terms[0], terms[1])
        for t in terms[2:]:
            out += t
    out = out.reshape(Cg * groups, N, Hp, Wp)[:, :, pt:pt + H, pl:pl + W]
    return xp.ascontiguousarray(out.transpose(1, 0, 2, 3))


def _conv_w_impl(xp: Any, x: Any, g: Any, *, kernel: tuple, stride: tuple, padding: tuple,
                 dilation: tuple, groups: int) -> Any:
    N, C = x.shape[:2]
    Co = g.shape[1]
    kh, kw = kernel
    lay = _conv_layout(x.shape[2:], kernel, stride, padding, dilation)
    cols = _forward_cols(xp, x, (tuple(kernel), stride, padding, dilation))
    gg = _to_grid(xp, g, lay)
    L = gg.shape[-1]
    Kg = C // groups * kh * kw
    # cols @ gg.T (then the small transpose) is faster than gg @ cols.T with OpenBLAS
    if groups == 1:
        gw = matmul_impl(xp, cols.reshape(Kg, N * L), gg.reshape(Co, N * L).T).T
    else:
        gw = xp.matmul(cols.reshape(groups, Kg, N * L),
                       gg.reshape(groups, Co // groups, N * L).transpose(0, 2, 1))
        gw = gw.transpose(0, 2, 1)
    return xp.ascontiguousarray(gw).reshape(Co, C // groups, kh, kw)


def _per_example_conv_w(xp: Any, x: Any, g: Any, w_shape: tuple, p: dict) -> Any:
    """Per-example weight gradients ``[N, *w_shape]`` of ``conv2d(x[N, C, H, W], w)`` for the
    cotangent ``g[N, O, OH, OW]``: each example's ``g_n @ cols_n.T`` per group, one batched
    product over strided views of the forward's columns (kept by conv2d, else unfolded)."""
    N, C = x.shape[:2]
    Co = g.shape[1]
    G = p["groups"]
    kernel = tuple(w_shape[2:])
    geo = (kernel, p["stride"], p["padding"], p["dilation"])
    lay = _conv_layout(x.shape[2:], *geo)
    cols = _forward_cols(xp, x, geo)
    gg = _to_grid(xp, g, lay)
    L = gg.shape[-1]
    Kg = C // G * kernel[0] * kernel[1]
    a = gg.reshape(G, Co // G, N, L).transpose(2, 0, 1, 3)  # [N, G, O/G, L]
    b = cols.reshape(G, Kg, N, L).transpose(2, 0, 3, 1)  # [N, G, L, Kg]
    return xp.matmul(a, b).reshape((N,) + tuple(w_shape))


def _per_example_conv_t_w(xp: Any, y: Any, g: Any, w_shape: tuple, p: dict) -> Any:
    """Per-example weight gradients of ``conv_transpose2d(y, w)``: conv2d's, roles swapped."""
    return _per_example_conv_w(xp, g, y, w_shape, p)


def _conv_params(p: dict) -> dict:
    return {k: p[k] for k in ("stride", "padding", "dilation", "groups")}


def _conv_rule(m: OnTensors, rec: Record, g: Tensor) -> tuple:
    x, w = m.val(rec.inputs[0]), m.val(rec.inputs[1])
    p = _conv_params(rec.params)
    gx = m.apply(P_CONV_T, g, w, size=rec.in_shapes[0][2:], **p) if rec.needs[0] else None
    gw = m.apply(P_CONV_W, x, g, kernel=rec.in_shapes[1][2:], **p) if rec.needs[1] else None
    return gx, gw


def _conv_t_rule(m: OnTensors, rec: Record, g: Tensor) -> tuple:
    # <conv_t(y, w), u> = <y, conv(u, w)>: linear in y and in w
    y, w = m.val(rec.inputs[0]), m.val(rec.inputs[1])
    p = _conv_params(rec.params)
    gy = m.apply(P_CONV2D, g, w, **p) if rec.needs[0] else None
    gw = m.apply(P_CONV_W, g, y, kernel=rec.in_shapes[1][2:], **p) if rec.needs[1] else None
    return gy, gw


def _conv_w_rule(m: OnTensors, rec: Record, g: Tensor) -> tuple:
    # <conv_w(x, y), v> = <y, conv(x, v)>: linear in x and in y
    x, y = m.val(rec.inputs[0]), m.val(rec.inputs[1])
    p = _conv_params(rec.params)
    gx = m.apply(P_CONV_T, y, g, size=rec.in_shapes[0][2:], **p) if rec.needs[0] else None
    gy = m.apply(P_CONV2D, x, g, **p) if rec.needs[1] else None
    return gx, gy


def _bilinear_jvp(m: OnTensors, prim: Any, primals: tuple, tangents: tuple, p: dict) -> Tensor:
    """The tangent of an op linear in each of its two operands: ``op(a', b) + op(a, b')``."""
    (a, b), (ta, tb) = primals, tangents
    terms = [m.apply(prim, ta, b, **p)] if ta is not None else []
    if tb is not None:
        terms.append(m.apply(prim, a, tb, **p))
    return terms[0] if len(terms) == 1 else terms[0] + terms[1]


def _conv_jvp(m: OnTensors, primals: tuple, tangents: tuple, out: Tensor, **p: Any) -> Tensor:
    return _bilinear_jvp(m, P_CONV2D, primals, tangents, p)


def _conv_t_jvp(m: OnTensors, primals: tuple, tangents: tuple, out: Tensor, **p: Any) -> Tensor:
    return _bilinear_jvp(m, P_CONV_T, primals, tangents, p)


def _conv_w_jvp(m: OnTensors, primals: tuple, tangents: tuple, out: Tensor, **p: Any) -> Tensor:
    return _bilinear_jvp(m, P_CONV_W, primals, tangents, p)


# vmap rules. A batch of images alone joins the image axis N. Otherwise the batch becomes
# channels: both operands batched, B times the groups (each example convolved on its own);
# one operand batched, its examples stacked as extra channels inside each group, (group,
# example, channel) order, so the other operand is used as it is, never repeated.
def _both_into_groups(t: Tensor, d: int) -> Tensor:
    """Images ``[N, C, ...]`` batched at ``d`` as ``[N, B * C, ...]``, (example, channel)."""
    t = move_axis(t, d, 1)
    return ops.reshape(t, (t.shape[0], t.shape[1] * t.shape[2]) + t.shape[3:])


def _stack_channels(t: Tensor, d: int, groups: int) -> Tensor:
    """Images ``[N, C, H, W]`` batched at ``d`` as ``[N, B * C, H, W]``, channels in (group,
    example, channel within the group) order."""
    t = move_axis(t, d, 1)  # [N, B, C, H, W]
    N, B, C = t.shape[:3]
    if groups > 1:
        t = move_axis(ops.reshape(t, (N, B, groups, C // groups) + t.shape[3:]), 2, 1)
    return ops.reshape(t, (N, B * C) + t.shape[-2:])


def _unstack_channels(t: Tensor, B: int, groups: int) -> Tensor:
    """The inverse of :func:`_stack_channels`: ``[N, B * C, H, W]`` -> ``[N, B, C, H, W]``."""
    N, C = t.shape[0], t.shape[1] // B
    hw = t.shape[2:]
    if groups > 1:
        t = move_axis(ops.reshape(t, (N, groups, B, C // groups) + hw), 2, 1)
    return ops.reshape(t, (N, B, C) + hw)


def _stack_weights(w: Tensor, d: int, groups: int) -> Tensor:
    """Weights ``[O, Cg, kh, kw]`` batched at ``d`` as ``[B * O, Cg, kh, kw]``, (group,
    example, output channel within the group)."""
    w = _front(w, d)
    B, Co = w.shape[:2]
    if groups > 1:
        w = move_axis(ops.reshape(w, (B, groups, Co // groups) + w.shape[2:]), 1, 0)
    return ops.reshape(w, (B * Co,) + w.shape[-3:])


def _unstack_weights(w: Tensor, B: int, groups: int) -> Tensor:
    """The inverse of :func:`_stack_weights`: ``[B * O, ...]`` -> ``[B, O, ...]``."""
    Co = w.shape[0] // B
    if groups > 1:
        w = move_axis(ops.reshape(w, (groups, B, Co // groups) + w.shape[1:]), 1, 0)
    return ops.reshape(w, (B, Co) + w.shape[-3:])


def _empty_batch(prim: Any, args: tuple, dims: tuple, p: dict) -> tuple:
    """A batching rule's result for a batch of no examples: one example's result (from
    operands without their empty batch axis, sums over it: zeros of the right shape, on
    their backend) with an empty batch axis in front. The rules below fold the batch into
    channels or groups, which a batch of 0 cannot give."""
    one_ex = [a if d is None else ops.sum(a, axis=d % a.ndim) for a, d in zip(args, dims)]
    y = bind(prim, *one_ex, **p)
    return ops.broadcast_to(ops.expand_dims(y, 0), (0, *y.shape)), 0


def _conv_batch(args: tuple, dims: tuple, **p: Any) -> tuple:
    (x, w), (dx, dw) = args, dims
    G = p["groups"]
    if dw is not None and batch_size(args, dims) == 0:
        return _empty_batch(P_CONV2D, args, dims, p)
    if dw is None:
        x = _front(x, dx % x.ndim)
        B, N = x.shape[:2]
        y = bind(P_CONV2D, ops.reshape(x, (B * N,) + x.shape[2:]), w, **p)
        return ops.reshape(y, (B, N) + y.shape[1:]), 0
    B = batch_size(args, dims)
    if dx is None:  # the examples' weights stacked as output channels
        y = bind(P_CONV2D, x, _stack_weights(w, dw % w.ndim, G), **p)
        return _unstack_channels(y, B, G), 1
    y = bind(P_CONV2D, _both_into_groups(x, dx % x.ndim),
             _stack_weights(w, dw % w.ndim, 1), **{**p, "groups": B * G})
    return ops.reshape(y, (y.shape[0], B, y.shape[1] // B) + y.shape[2:]), 1


def _conv_t_batch(args: tuple, dims: tuple, **p: Any) -> tuple:
    (y, w), (dy, dw) = args, dims
    G = p["groups"]
    if dw is not None and batch_size(args, dims) == 0:
        return _empty_batch(P_CONV_T, args, dims, p)
    if dw is None:
        y = _front(y, dy % y.ndim)
        B, N = y.shape[:2]
        x = bind(P_CONV_T, ops.reshape(y, (B * N,) + y.shape[2:]), w, **p)
        return ops.reshape(x, (B, N) + x.shape[1:]), 0
    B = batch_size(args, dims)
    w = _front(w, dw % w.ndim)
    if dy is None:  # the examples' weights stacked as output channels of each group
        Co, Cg = w.shape[1:3]
        w = ops.reshape(move_axis(w, 0, 1), (Co, B * Cg) + w.shape[3:])
        return _unstack_channels(bind(P_CONV_T, y, w, **p), B, G), 1
    x = bind(P_CONV_T, _both_into_groups(y, dy % y.ndim),
             ops.reshape(w, (B * w.shape[1],) + w.shape[2:]), **{**p, "groups": B * G})
    return ops.reshape(x, (x.shape[0], B, x.shape[1] // B) + x.shape[2:]), 1


def _conv_w_batch(args: tuple, dims: tuple, **p: Any) -> tuple:
    # each example's weight gradient sums over its own images only: the batch never joins N
    (x, y), (dx, dy) = args, dims
    G = p["groups"]
    B = batch_size(args, dims)
    if B == 0:
        return _empty_batch(P_CONV_W, args, dims, p)
    if dx is None:  # the examples' cotangents stacked as output channels
        gw = bind(P_CONV_W, x, _stack_channels(y, dy % y.ndim, G), **p)
        return _unstack_weights(gw, B, G), 0
    if dy is None:  # the examples' images stacked as input channels
        gw = bind(P_CONV_W, _stack_channels(x, dx % x.ndim, G), y, **p)
        Co, BC = gw.shape[:2]
        return move_axis(ops.reshape(gw, (Co, B, BC // B) + gw.shape[2:]), 1, 0), 0
    gw = bind(P_CONV_W, _both_into_groups(x, dx % x.ndim), _both_into_groups(y, dy % y.ndim),
              **{**p, "groups": B * G})
    return ops.reshape(gw, (B, gw.shape[0] // B) + gw.shape[1:]), 0


def _conv_t_examples(rng: np.random.Generator) -> list:
    return [
        (conv_transpose2d, (rng.normal(size=(2, 3, 4, 3)), rng.normal(size=(3, 2, 3, 3)),
                            rng.normal(size=2)), {"stride": 2, "padding": 1, "output_padding": 1}),
        (conv_transpose2d, (rng.normal(size=(2, 4, 3, 4)), rng.normal(size=(4, 1, 2, 3))),
         {"stride": (1, 2), "padding": ((1, 0), (0, 1)), "dilation": (2, 1), "groups": 2}),
        (conv_transpose2d, (rng.normal(size=(1, 2, 3, 3)), rng.normal(size=(2, 2, 3, 3))),
         {"padding": 1}),
    ]


def _conv_w_examples(rng: np.random.Generator) -> list:
    # bound directly (conv2d's VJP binds it)
    def conv2d_weight_grad(x: Tensor, y: Tensor, **p: Any) -> Tensor:
        return bind(P_CONV_W, one(x), one(y), **p)

    geos: list[tuple[tuple, int, dict[str, Any]]] = [
        ((2, 3, 5, 4), 2, {"kernel": (3, 3), "stride": (1, 1), "padding": ((1, 1), (1, 1)),
                           "dilation": (1, 1), "groups": 1}),
        ((2, 4, 5, 6), 4, {"kernel": (2, 3), "stride": (2, 1), "padding": ((1, 0), (2, 1)),
                           "dilation": (1, 2), "groups": 2})]
    cases = []
    for shape, n_out, p in geos:
        oh, ow = _conv_layout(shape[2:], p["kernel"], p["stride"], p["padding"], p["dilation"])[:2]
        cases.append((conv2d_weight_grad, (rng.normal(size=shape),
                                           rng.normal(size=(shape[0], n_out, oh, ow))), p))
    return cases


P_CONV2D = primitive("conv2d", _conv_impl, rule=_conv_rule, jvp=_conv_jvp,
                     examples=_conv_examples, batch=_conv_batch)
P_CONV_T = primitive("conv_transpose2d", _conv_t_impl, rule=_conv_t_rule, jvp=_conv_t_jvp,
                     examples=_conv_t_examples, batch=_conv_t_batch)
P_CONV_W = primitive("conv2d_weight_grad", _conv_w_impl, rule=_conv_w_rule, jvp=_conv_w_jvp,
                     examples=_conv_w_examples, batch=_conv_w_batch)
CONV_WEIGHT_GRADS["conv2d"] = _per_example_conv_w
CONV_WEIGHT_GRADS["conv_transpose2d"] = _per_example_conv_t_w


def _conv_w_sum(xp: Any, x: Any, g: Any, w_shape: tuple, p: dict) -> Any:
    """The batch weight gradient of ``conv2d(x, w)`` for the cotangent ``g`` (the sum over
    examples of :func:`_per_example_conv_w`'s), as conv2d's VJP computes it."""
    return _conv_w_impl(xp, x, g, kernel=tuple(w_shape[2:]), **_conv_params(p))


def _conv_t_w_sum(xp: Any, y: Any, g: Any, w_shape: tuple, p: dict) -> Any:
    """The batch weight gradient of ``conv_transpose2d(y, w)``: conv2d's, roles swapped."""
    return _conv_w_impl(xp, g, y, kernel=tuple(w_shape[2:]), **_conv_params(p))


CONV_WEIGHT_SUMS["conv2d"] = _conv_w_sum
CONV_WEIGHT_SUMS["conv_transpose2d"] = _conv_t_w_sum


def _conv_out_size(x_shape: tuple, w_shape: tuple, p: dict) -> int:
    """Elements of one example's ``conv2d`` output: ``O * OH * OW``."""
    oh, ow = _conv_layout(tuple(x_shape[2:]), tuple(w_shape[2:]), p["stride"], p["padding"],
                          p["dilation"])[:2]
    return int(w_shape[0]) * oh * ow


def _conv_t_out_size(y_shape: tuple, w_shape: tuple, p: dict) -> int:
    """Elements of one example's ``conv_transpose2d`` output: ``C * H * W``."""
    H, W = p["size"]
    return int(w_shape[1]) * int(p["groups"]) * int(H) * int(W)


CONV_OUTPUT_SIZES["conv2d"] = _conv_out_size
CONV_OUTPUT_SIZES["conv_transpose2d"] = _conv_t_out_size


# --------------------------------------------------------------------------- max pooling
# max_pool2d is one primitive; its VJP routes the cotangent to each window's first maximum
# (max_pool2d_route(x, top, g), ``top`` the pooled output, saved by the forward) and the VJP
# of that gathers from the first maxima (max_pool2d_select(x, top, v)), whose VJP routes
# again: first order and beyond stay in these three. Each works on strided views of the
# (padded) image, one per kernel offset, without unfolding it. Images may have any leading
# axes before the two spatial ones (their vmap rules add one, in front), and route and select
# broadcast their operands' leading axes.

def _pool_views(xp: Any, x: Any, kernel: tuple, stride: tuple, padding: tuple, fill: float
                ) -> tuple:
    """``(padded x, [window view per kernel offset, row-major])``; each view is
    ``[..., OH, OW]``."""
    (pt, pb), (pl, pr) = padding
    if pt or pb or pl or pr:
        H, W = x.shape[-2:]
        xpad = xp.full_like(x, fill, shape=x.shape[:-2] + (H + pt + pb, W + pl + pr))
        xpad[..., pt:pt + H, pl:pl + W] = x
    else:
        xpad = x
    H, W = xpad.shape[-2:]
    (kh, kw), (sh, sw) = kernel, stride
    oh, ow = (H - kh) // sh + 1, (W - kw) // sw + 1
    views = [xpad[..., i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw]
             for i in range(kh) for j in range(kw)]
    return xpad, views


def _window_top(xp: Any, views: list) -> Any:
    if len(views) == 1:
        return views[0].copy()
    top = xp.maximum(views[0], views[1])
    for v in views[2:]:
        xp.maximum(top, v, out=top)
    return top


def _tiled(x: Any, kernel: tuple, stride: tuple, padding: tuple) -> bool:
    """The windows tile ``x`` exactly (stride = kernel, no padding, sizes divisible), and ``x``
    is C-contiguous: then ``x.reshape(M, kh, W)`` holds each row of windows as ``kh``
    contiguous image rows (``M``: leading axes times output rows)."""
    H, W = x.shape[-2:]
    return (tuple(stride) == tuple(kernel) and padding == ((0, 0), (0, 0))
            and H % kernel[0] == 0 and W % kernel[1] == 0 and x.flags.c_contiguous)


def _max_pool_impl(xp: Any, x: Any, *, kernel: tuple, stride: tuple, padding: tuple) -> Any:
    if _tiled(x, kernel, stride, padding) and x.size:
        # rows first (contiguous image rows, long inner loops), then the kw columns of each
        # window (strided): kh + kw - 2 passes, of which only kw - 1 strided, instead of
        # kh * kw - 1 strided ones
        (kh, kw), (H, W) = kernel, x.shape[-2:]
        rows = x.reshape(-1, kh, W)
        top = rows[:, 0] if kh == 1 else xp.maximum(rows[:, 0], rows[:, 1])
        for i in range(2, kh):
            xp.maximum(top, rows[:, i], out=top)
        cells = top.reshape(-1, W // kw, kw)
        if kw > 1:
            top = xp.maximum(cells[..., 0], cells[..., 1])
            for j in range(2, kw):
                xp.maximum(top, cells[..., j], out=top)
        else:
            top = cells[..., 0].copy() if kh == 1 else cells[..., 0]
        return top.reshape(x.shape[:-2] + (H // kh, W // kw))
    return _window_top(xp, _pool_views(xp, x, kernel, stride, padding, -np.inf)[1])


def _route_impl(xp: Any, x: Any, top: Any, g: Any, *, kernel: tuple, stride: tuple,
                padding: tuple) -> Any:
    """``g[N, C, OH, OW]`` sent to the first maximum ``top`` (``max_pool2d(x)``) of each window
    of ``x``, 0 elsewhere; a window without one (all NaN) sends it to its last element, where
    select reads it."""
    xpad, views = _pool_views(xp, x, kernel, stride, padding, -np.inf)
    (kh, kw), (sh, sw) = kernel, stride
    oh, ow = top.shape[-2:]
    tiled = (sh, sw) == (kh, kw) and (oh * kh, ow * kw) == xpad.shape[-2:]  # each pixel once
    shape = np.broadcast_shapes(x.shape[:-2], top.shape[:-2], g.shape[:-2]) + xpad.shape[-2:]
    # made like the image, which picks the routes (inside gt.function a step's cotangent may
    # be a constant, the ones of a non-scalar target, while the image is traced)
    out = (xp.empty_like if tiled else xp.zeros_like)(x, dtype=g.dtype, shape=shape)
    _, outs = _pool_views(xp, out, kernel, stride, ((0, 0), (0, 0)), 0.0)
    overlap = sh < kh or sw < kw
    taken = None
    last = len(views) - 1
    for k, (v, o) in enumerate(zip(views, outs)):
        if k == last:
            hit = xp.logical_not(taken) if taken is not None else None
        else:
            hit = v == top
            if taken is None:
                taken = hit
            else:
                xp.greater(hit, taken, out=hit)  # hit and not taken: the first maximum only
                taken |= hit
        if hit is None:
            o[...] = g
        elif overlap:
            o += g * hit
        else:
            xp.multiply(g, hit, out=o)
    (pt, pb), (pl, pr) = padding
    if pt or pb or pl or pr:
        H, W = x.shape[-2:]
        out = xp.ascontiguousarray(out[..., pt:pt + H, pl:pl + W])
    return out


def _select_impl(xp: Any, x: Any, top: Any, v: Any, *, kernel: tuple, stride: tuple,
                 padding: tuple) -> Any:
    """``v``'s value (``v`` shaped as ``x``) at the first maximum ``top`` of each window of
    ``x`` (the last element of a window without one)."""
    _, views = _pool_views(xp, x, kernel, stride, padding, -np.inf)
    _, vviews = _pool_views(xp, v, kernel, stride, padding, 0.0)
    out = vviews[-1]
    for k in range(len(views) - 2, -1, -1):  # backwards: the first maximum written last
        out = xp.where(views[k] == top, vviews[k], out)
    shape = np.broadcast_shapes(x.shape[:-2], top.shape[:-2], v.shape[:-2]) + top.shape[-2:]
    return out if len(views) > 1 and out.shape == shape else \
        xp.ascontiguousarray(xp.broadcast_to(out, shape))


def _route_masked(x: Any, top: Any, g: Any, *, d: Any, kernel: tuple, stride: tuple,
                  padding: tuple) -> Any:
    """``route(x, top, d(g, s, s))``: the cotangent ``g`` masked by relu's derivative ``d`` at
    each window's routed element ``s`` (the window's maximum; for a window holding NaN, which
    routes to its last element, that element), then routed."""
    sel = top
    if np.isnan(top).any():
        last = _pool_views(np, x, kernel, stride, padding, -np.inf)[1][-1]
        sel = np.where(top != top, last, top)
    return _route_impl(np, x, top, d(g, sel, sel), kernel=kernel, stride=stride, padding=padding)


def _max_pool_fold_relu(rec: Record, relu: Record, g: Any) -> Any:
    """The cotangent of ``z`` through ``max_pool2d(relu(z))`` in one route: relu's mask
    ``z > 0`` is needed only at each window's routed element, where ``relu(z)`` is the window's
    maximum, so it is taken on the pooled array (a quarter of the image for 2x2 windows) and
    the masked cotangent routed: per element the same products as the two VJPs in turn. Host
    arrays and windows that do not overlap only (an element two windows route to would add
    the two cotangents before the mask in the other order)."""
    x, top = rec.inputs[0], rec.output
    p = rec.params
    (kh, kw), (sh, sw) = p["kernel"], p["stride"]
    if x is None or top is None or x._backend is not NUMPY or sh < kh or sw < kw:
        return None
    d = relu.prim.array_vjp(0, NUMPY, True)
    return opaque(functools.partial(_route_masked, d=d, **p), x.data, top.data, g,
                  key=("max_pool2d through relu", p["kernel"], p["stride"], p["padding"]))


def _max_pool_rule(m: OnTensors, rec: Record, g: Tensor) -> tuple:
    x, top = m.val(rec.inputs[0]), m.val(rec.output)
    return (m.apply(P_POOL_ROUTE, x, top, g, **rec.params),)


def _route_rule(m: OnTensors, rec: Record, g: Tensor) -> tuple:
    # linear in the cotangent (the image and its maxima only pick the routes): the adjoint
    # of routing is selecting
    if not rec.needs[2]:
        return None, None, None
    x, top = m.val(rec.inputs[0]), m.val(rec.inputs[1])
    return None, None, m.apply(P_POOL_SELECT, x, top, g, **rec.params)


def _select_rule(m: OnTensors, rec: Record, g: Tensor) -> tuple:
    if not rec.needs[2]:
        return None, None, None
    x, top = m.val(rec.inputs[0]), m.val(rec.inputs[1])
    return None, None, m.apply(P_POOL_ROUTE, x, top, g, **rec.params)


def _max_pool_jvp(m: OnTensors, primals: tuple, tangents: tuple, out: Tensor, **p: Any) -> Tensor:
    return m.apply(P_POOL_SELECT, primals[0], out, tangents[0], **p)


def _keyed_jvp(prim: Any, m: OnTensors, primals: tuple, tangents: tuple, out: Tensor,
               p: dict) -> Tensor:
    # the image and its maxima (the keys) only pick positions: their tangents move nothing
    if tangents[2] is None:
        return m.const(m.xp_of(out).zeros(out.shape, out.dtype), out)
    return m.apply(prim, primals[0], primals[1], tangents[2], **p)


def _route_jvp(m: OnTensors, primals: tuple, tangents: tuple, out: Tensor, **p: Any) -> Tensor:
    return _keyed_jvp(P_POOL_ROUTE, m, primals, tangents, out, p)


def _select_jvp(m: OnTensors, primals: tuple, tangents: tuple, out: Tensor, **p: Any) -> Tensor:
    return _keyed_jvp(P_POOL_SELECT, m, primals, tangents, out, p)


def _max_pool_batch(args: tuple, dims: tuple, **p: Any) -> tuple:
    # vmap rule: one more leading axis, the batch in front
    return bind(P_MAX_POOL, _front(args[0], dims[0] % args[0].ndim), **p), 0


def _keyed_batch(prim: Any, args: tuple, dims: tuple, p: dict) -> tuple:
    """vmap rule of route/select: one more leading axis, the batch in front (of size 1 on an
    unbatched operand: the impls broadcast the leading axes)."""
    args = tuple(ops.reshape(a, (1,) + a.shape) if d is None else _front(a, d % a.ndim)
                 for a, d in zip(args, dims))
    return bind(prim, *args, **p), 0


def _route_batch(args: tuple, dims: tuple, **p: Any) -> tuple:
    return _keyed_batch(P_POOL_ROUTE, args, dims, p)


def _select_batch(args: tuple, dims: tuple, **p: Any) -> tuple:
    return _keyed_batch(P_POOL_SELECT, args, dims, p)


def _distinct_image(rng: np.random.Generator, shape: tuple) -> np.ndarray:
    # distinct values spaced apart: finite differences never cross a tie
    return rng.permutation(int(np.prod(shape))).reshape(shape) * 0.1


def _pool_examples(rng: np.random.Generator) -> list:
    x = _distinct_image(rng, (2, 3, 5, 5))
    return [(max_pool2d, (x,), {"kernel_size": 2}),
            (max_pool2d, (x,), {"kernel_size": 3, "stride": 2, "padding": 1}),
            (max_pool2d, (_distinct_image(rng, (2, 2, 4, 6)),), {"kernel_size": (2, 3),
                                                                 "stride": (1, 2)})]


_POOL_GEOS = [((2, 2), (2, 2), ((0, 0), (0, 0))), ((3, 3), (2, 2), ((1, 1), (1, 1))),
              ((2, 3), (1, 2), ((1, 0), (0, 1)))]


def _keyed_examples(prim: Any, rng: np.random.Generator, routed: bool) -> list:
    def keyed(x: Tensor, v: Tensor, **p: Any) -> Tensor:  # bound directly, top from x
        x = one(x)
        return bind(prim, x, bind(P_MAX_POOL, x, **p), one(v), **p)

    keyed.__name__ = prim.name
    cases = []
    for kernel, stride, padding in _POOL_GEOS:
        x = _distinct_image(rng, (2, 2, 5, 6))
        y = _max_pool_impl(np, x, kernel=kernel, stride=stride, padding=padding)
        v = rng.normal(size=y.shape if routed else x.shape)
        cases.append((keyed, (x, v), {"kernel": kernel, "stride": stride, "padding": padding}))
    return cases


def _route_examples(rng: np.random.Generator) -> list:
    return _keyed_examples(P_POOL_ROUTE, rng, True)


def _select_examples(rng: np.random.Generator) -> list:
    return _keyed_examples(P_POOL_SELECT, rng, False)


P_MAX_POOL = primitive("max_pool2d", _max_pool_impl, rule=_max_pool_rule, jvp=_max_pool_jvp,
                       saves_output=True, masks=True, examples=_pool_examples,
                       batch=_max_pool_batch, folds={"relu": _max_pool_fold_relu})
P_POOL_ROUTE = primitive("max_pool2d_route", _route_impl, rule=_route_rule, jvp=_route_jvp,
                         masks=True, examples=_route_examples, batch=_route_batch)
P_POOL_SELECT = primitive("max_pool2d_select", _select_impl, rule=_select_rule, jvp=_select_jvp,
                          masks=True, examples=_select_examples, batch=_select_batch)


def _check_output(x: Tensor, kernel: tuple, stride: tuple, padding: tuple, dilation: tuple,
                  what: str) -> None:
    H, W = x.shape[2:]
    oh = _out_size(H, kernel[0], stride[0], padding[0], dilation[0])
    ow = _out_size(W, kernel[1], stride[1], padding[1], dilation[1])
    if oh < 1 or ow < 1:
        dilated = any(d != 1 for d in dilation)  # (pooling takes no dilation)
        name = "window" if "pool" in what else "kernel"
        span = tuple(d * (k - 1) + 1 for k, d in zip(kernel, dilation))
        spans = f"dilated kernel {span} (kernel {kernel}, dilation {dilation}, " if dilated else \
            f"{name} {kernel} ("
        raise ValueError(f"{what}: the (padded) input of spatial size {(H, W)} is smaller than the "
                         f"{spans}padding {padding})")


def _im2col(x: Tensor, kernel: tuple, stride: tuple, padding: tuple, dilation: tuple,
            pad_value: float, what: str) -> Tensor:
    _check_output(x, kernel, stride, padding, dilation, what)
    return bind(P_IM2COL, x, kernel=kernel, stride=stride, padding=padding, dilation=dilation,
                pad_value=float(pad_value))


def _check_image(x: Tensor, what: str) -> None:
    if x.ndim != 4:
        raise ValueError(f"{what}: x must be a 4-D NCHW tensor [batch, channels, height, width], "
                         f"got shape {x.shape}")
    if x.dtype.kind != "f":
        raise TypeError(f"{what}: x must be a float tensor, got dtype {x.dtype}")


# --------------------------------------------------------------------------- public ops
def conv2d(x: Any, w: Any, b: Any = None, stride: Any = 1, padding: Any = 0, dilation: Any = 1,
           groups: int = 1) -> Tensor:
    """2-D convolution (cross-correlation, as PyTorch/TF) of NCHW images with OIHW weights.

    Args:
        x: input ``[N, C, H, W]``.
        w: weights ``[O, C // groups, kh, kw]``.
        b: optional bias ``[O]``.
        stride: int or ``(sh, sw)``.
        padding: int, ``(ph, pw)``, ``((top, bottom), (left, right))``, ``"valid"`` or
            ``"same"`` (zero padding as TensorFlow's ``"SAME"``: ``ceil(H / sh)`` output rows,
            an odd total's extra row at the bottom, column at the right).
        dilation: int or ``(dh, dw)``.
        groups: ``C`` and ``O`` split into this many groups, each convolved separately.

    Shapes: ``[N, C, H, W] -> [N, O, OH, OW]`` with
    ``OH = (H + pt + pb - dh * (kh - 1) - 1) // sh + 1`` (same for ``OW``).

    Example:
        >>> import gradtape as gt
        >>> x = gt.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])   # [1, 1, 2, 2]
        >>> gt.nn.conv2d(x, gt.tensor([[[[1.0]]]]) * 2).numpy().ravel()
        array([2., 4., 6., 8.], dtype=float32)
    """
    what = "conv2d"
    tensor_in = isinstance(x, Tensor)  # (a caller's NumPy array may change under the tape)
    x, w = pair(x, w)  # an integer operand takes the float one's dtype, as matmul
    _check_image(x, what)
    if w.ndim != 4:
        raise ValueError(f"conv2d: w must be 4-D [out_channels, in_channels // groups, kh, kw], "
                         f"got shape {w.shape}")
    if not is_int(groups):
        raise ValueError(f"conv2d: groups must be an int, got {groups!r}")
    groups = as_int(groups, "", "")
    N, C, H, W = x.shape
    n_out, Cg, kh, kw = w.shape
    if groups < 1 or C % groups or n_out % groups:
        raise ValueError(f"conv2d: groups={groups} must divide both the input channels ({C}) and "
                         f"the output channels ({n_out})")
    if Cg * groups != C:
        hint = (" (x must be NCHW, [batch, channels, height, width]; for NHWC input use "
                "gt.transpose(x, (0, 3, 1, 2)))" if x.shape[-1] == Cg * groups else "")
        raise ValueError(f"conv2d: w of shape {w.shape} expects {Cg * groups} input channels "
                         f"(groups={groups}), x of shape {x.shape} has {C}{hint}")
    stride = _pair(stride, what, "stride", 1)
    dilation = _pair(dilation, what, "dilation", 1)
    pad = _padding(padding, (kh, kw), dilation, what, (H, W), stride)
    _check_output(x, (kh, kw), stride, pad, dilation, what)
    _last.want, _last.cols = tensor_in, None
    try:
        out = bind(P_CONV2D, x, w, stride=stride, padding=pad, dilation=dilation, groups=groups)
    finally:
        last, _last.want, _last.cols = _last.cols, False, None
    if last is not None and out._id and last[0] is x.data:  # recorded: a backward will want them
        _memo_put(*last)
    else:
        _memo_forget(x.data, ((kh, kw), stride, pad, dilation))
    if b is not None:
        b = one(b)
        if b.shape != (n_out,):
            raise ValueError(f"conv2d: bias must have shape ({n_out},), got {b.shape}")
        out = out + ops.reshape(b, (1, n_out, 1, 1))
    return out


def _pool_args(x: Any, kernel_size: Any, stride: Any, padding: Any, what: str) -> tuple:
    x = one(x)
    _check_image(x, what)
    kernel = _pair(kernel_size, what, "kernel_size", 1)
    return (x, *_pool_geometry(kernel, stride, padding, what, tuple(x.shape[-2:])))


def max_pool2d(x: Any, kernel_size: Any, stride: Any = None, padding: Any = 0) -> Tensor:
    """Maximum over each ``kernel_size`` window of NCHW images. Padding counts as ``-inf``. The
    gradient goes to the first maximum of each window (PyTorch's choice).

    Shapes: ``[N, C, H, W] -> [N, C, OH, OW]``, ``OH = (H + 2 ph - kh) // sh + 1``;
    ``stride`` defaults to ``kernel_size``.

    Example:
        >>> import gradtape as gt
        >>> x = gt.reshape(gt.tensor([1.0, 5.0, 3.0, 2.0]), (1, 1, 2, 2))
        >>> gt.nn.max_pool2d(x, 2).numpy().ravel()
        array([5.], dtype=float32)
    """
    what = "max_pool2d"
    x, kernel, stride, pad = _pool_args(x, kernel_size, stride, padding, what)
    _check_output(x, kernel, stride, pad, (1, 1), what)
    return bind(P_MAX_POOL, x, kernel=kernel, stride=stride, padding=pad)


def avg_pool2d(x: Any, kernel_size: Any, stride: Any = None, padding: Any = 0) -> Tensor:
    """Mean over each ``kernel_size`` window of NCHW images. Padding counts as zeros in the
    mean (PyTorch's default ``count_include_pad=True``).

    Shapes: ``[N, C, H, W] -> [N, C, OH, OW]``; ``stride`` defaults to ``kernel_size``.

    Example:
        >>> import gradtape as gt
        >>> x = gt.reshape(gt.tensor([1.0, 5.0, 3.0, 3.0]), (1, 1, 2, 2))
        >>> gt.nn.avg_pool2d(x, 2).numpy().ravel()
        array([3.], dtype=float32)
    """
    what = "avg_pool2d"
    x, kernel, stride, pad = _pool_args(x, kernel_size, stride, padding, what)
    cols = _im2col(x, kernel, stride, pad, (1, 1), 0.0, what)
    if x.dtype == np.float16:  # (a float16 window sum overflows from 65504 where the mean fits)
        return ops.mean(cols, axis=(2, 3))
    return ops.sum(cols, axis=(2, 3)) * (1.0 / (kernel[0] * kernel[1]))


# --------------------------------------------------------------------------- 1-D convolution
def _single(v: Any, what: str, name: str, minimum: int) -> int:
    """An int argument of a 1-D op (a 1-tuple is accepted, as PyTorch does)."""
    if isinstance(v, (tuple, list)) and len(v) == 1:
        v = v[0]
    if not is_int(v):  # (a float or a bool: never truncated)
        raise ValueError(f"{what}: {name} must be an int, got {v!r}")
    n = as_int(v, "", "")
    if n < minimum:
        raise ValueError(f"{what}: {name} must be >= {minimum}, got {v!r}")
    return n


def _padding1(padding: Any, k: int, d: int, what: str, n: int = 0, s: int = 1) -> tuple[int, int]:
    """Normalize a 1-D padding to ``(left, right)`` (``"same"``: see :func:`_padding`)."""
    if isinstance(padding, str):
        mode = padding.lower()  # TensorFlow spells them "SAME" and "VALID"
        if mode == "valid":
            return (0, 0)
        if mode == "same":
            if s > 1:
                return _same(n, k, s, d)
            total = d * (k - 1)
            return (total // 2, total - total // 2)
        raise ValueError(f"{what}: padding must be an int, a pair (left, right), 'valid' or 'same', "
                         f"got {padding!r}")
    if isinstance(padding, (tuple, list)) and len(padding) == 2:
        lr = _ints2(padding)
        if lr is None:
            raise ValueError(f"{what}: padding must be an int, a pair (left, right) of ints, "
                             f"'valid' or 'same', got {padding!r}")
        left, right = lr
    else:
        if not (isinstance(padding, (tuple, list)) and len(padding) == 1) and not is_int(padding):
            raise ValueError(f"{what}: padding must be an int, a pair (left, right) of ints, "
                             f"'valid' or 'same', got {padding!r}")
        left = right = _single(padding, what, "padding", 0)
    if min(left, right) < 0:
        raise ValueError(f"{what}: padding must be >= 0, got {padding!r}")
    return (left, right)


def conv1d(x: Any, w: Any, b: Any = None, stride: Any = 1, padding: Any = 0, dilation: Any = 1,
           groups: int = 1) -> Tensor:
    """1-D convolution (cross-correlation) of NCL signals with OIK weights: :func:`conv2d` on
    images of height 1, so it shares conv2d's gradients (any order), forward mode and vmap.

    Args:
        x: input ``[N, C, L]``.
        w: weights ``[O, C // groups, k]``.
        b: optional bias ``[O]``.
        stride, dilation: ints.
        padding: an int, ``(left, right)``, ``"valid"`` or ``"same"`` (zero padding as
            TensorFlow's ``"SAME"``: ``ceil(L / stride)`` outputs).
        groups: ``C`` and ``O`` split into this many groups, each convolved separately.

    Shapes: ``[N, C, L] -> [N, O, OL]`` with ``OL = (L + left + right - d * (k - 1) - 1) // s + 1``.

    Example:
        >>> import gradtape as gt
        >>> x = gt.tensor([[[1.0, 2.0, 3.0, 4.0]]])          # [1, 1, 4]
        >>> gt.nn.conv1d(x, gt.tensor([[[1.0, -1.0]]])).numpy()
        array([[[-1., -1., -1.]]], dtype=float32)
    """
    what = "conv1d"
    x, w = one(x), one(w)
    if x.ndim != 3:
        raise ValueError(f"conv1d: x must be a 3-D NCL tensor [batch, channels, length], got shape "
                         f"{x.shape}")
    if x.dtype.kind != "f":
        raise TypeError(f"conv1d: x must be a float tensor, got dtype {x.dtype}")
    if w.ndim != 3:
        raise ValueError(f"conv1d: w must be 3-D [out_channels, in_channels // groups, k], got "
                         f"shape {w.shape}")
    N, C, L = x.shape
    n_out, Cg, k = w.shape
    groups = _single(groups, what, "groups", 1)
    if C % groups or n_out % groups:
        raise ValueError(f"conv1d: groups={groups} must divide both the input channels ({C}) and "
                         f"the output channels ({n_out})")
    if Cg * groups != C:
        hint = (" (x must be NCL, [batch, channels, length]; for NLC input use "
                "gt.transpose(x, (0, 2, 1)))" if x.shape[-1] == Cg * groups else "")
        raise ValueError(f"conv1d: w of shape {w.shape} expects {Cg * groups} input channels "
                         f"(groups={groups}), x of shape {x.shape} has {C}{hint}")
    if b is not None:
        b = one(b)
        if b.shape != (n_out,):
            raise ValueError(f"conv1d: bias must have shape ({n_out},), got {b.shape}")
    s = _single(stride, what, "stride", 1)
    d = _single(dilation, what, "dilation", 1)
    pad = _padding1(padding, k, d, what, L, s)
    if _out_size(L, k, s, pad, d) < 1:
        spans = f"dilated kernel {d * (k - 1) + 1} (kernel {k}, dilation {d}, " if d != 1 else \
            f"kernel {k} ("
        raise ValueError(f"conv1d: the (padded) input of length {L} is shorter than the "
                         f"{spans}padding {pad})")
    y = conv2d(ops.reshape(x, (N, C, 1, L)), ops.reshape(w, (n_out, Cg, 1, k)), b, stride=(1, s),
               padding=((0, 0), pad), dilation=(1, d), groups=groups)
    return ops.reshape(y, (N, n_out, y.shape[-1]))


# --------------------------------------------------------------------------- transposed conv
def conv_transpose2d(x: Any, w: Any, b: Any = None, stride: Any = 1, padding: Any = 0,
                     output_padding: Any = 0, groups: int = 1, dilation: Any = 1) -> Tensor:
    """2-D transposed convolution ("deconvolution", PyTorch's ``conv_transpose2d``) of NCHW
    images with weights ``[in_channels, out_channels // groups, kh, kw]``.

    It is the adjoint of :func:`conv2d` with the same weights, stride, padding and dilation:
    ``<conv2d(z, w), x> == <z, conv_transpose2d(x, w)>``: conv2d's input gradient, one
    primitive computed as one matrix product with the transposed weights followed by a fold
    (col2im, the scatter-add that is im2col's adjoint); its gradients of any order, forward
    mode and vmap come from conv2d, itself and conv2d's weight gradient.

    Args:
        x: input ``[N, C_in, H, W]``.
        w: weights ``[C_in, C_out // groups, kh, kw]``.
        b: optional bias ``[C_out]``.
        stride, dilation: int or ``(sh, sw)`` / ``(dh, dw)``.
        padding: int, ``(ph, pw)`` or ``((top, bottom), (left, right))``: rows and columns
            removed from each side of the full output (``"same"``/``"valid"`` are refused).
        output_padding: int or pair, added to the bottom/right of the output to pick one of the
            sizes that a strided conv2d maps to ``H``; must be smaller than ``stride``.
        groups: ``C_in`` and ``C_out`` split into this many groups.

    Shapes: ``[N, C_in, H, W] -> [N, C_out, OH, OW]`` with
    ``OH = (H - 1) * sh - pt - pb + dh * (kh - 1) + output_padding_h + 1`` (same for ``OW``).

    Example:
        >>> import gradtape as gt
        >>> x = gt.tensor([[[[1.0, 2.0]]]])                   # [1, 1, 1, 2]
        >>> gt.nn.conv_transpose2d(x, gt.tensor([[[[1.0, 1.0]]]]), stride=2).numpy()
        array([[[[1., 1., 2., 2.]]]], dtype=float32)
    """
    what = "conv_transpose2d"
    x, w = pair(x, w)
    _check_image(x, what)
    if w.ndim != 4:
        raise ValueError(f"conv_transpose2d: w must be 4-D [in_channels, out_channels // groups, kh, "
                         f"kw], got shape {w.shape}")
    N, C, H, W = x.shape
    Cw, Og, kh, kw = w.shape
    groups = _single(groups, what, "groups", 1)
    if Cw % groups:
        raise ValueError(f"conv_transpose2d: groups={groups} must divide the input channels ({Cw})")
    if Cw != C:
        hint = (" (x must be NCHW, [batch, channels, height, width]; for NHWC input use "
                "gt.transpose(x, (0, 3, 1, 2)))" if x.shape[-1] == Cw else "")
        raise ValueError(f"conv_transpose2d: w of shape {w.shape} expects {Cw} input channels, x of "
                         f"shape {x.shape} has {C}{hint}")
    n_out = Og * groups
    if b is not None:
        b = one(b)
        if b.shape != (n_out,):
            raise ValueError(f"conv_transpose2d: bias must have shape ({n_out},), got {b.shape}")
    stride, dilation, pad, op = _transpose_geometry((kh, kw), stride, padding, output_padding,
                                                    dilation, what)
    oh = (H - 1) * stride[0] - sum(pad[0]) + dilation[0] * (kh - 1) + op[0] + 1
    ow = (W - 1) * stride[1] - sum(pad[1]) + dilation[1] * (kw - 1) + op[1] + 1
    if oh < 1 or ow < 1:
        raise ValueError(f"conv_transpose2d: padding {padding!r} leaves an empty output "
                         f"({oh}, {ow}) for an input of spatial size {(H, W)} and kernel {(kh, kw)}")
    out = bind(P_CONV_T, x, w, size=(oh, ow), stride=stride, padding=pad, dilation=dilation,
               groups=groups)
    if b is not None:
        out = out + ops.reshape(b, (1, n_out, 1, 1))
    return out


# --------------------------------------------------------------------------- adaptive pooling
def adaptive_avg_pool2d(x: Any, output_size: Any) -> Tensor:
    """Average pooling to a fixed spatial size (PyTorch's ``adaptive_avg_pool2d``) for sizes
    that divide the input's: windows of ``(H // oh, W // ow)``, stride equal to the window.
    ``output_size=1`` is global average pooling (the mean over ``H`` and ``W``).

    Args:
        x: input ``[N, C, H, W]``.
        output_size: int or ``(oh, ow)``; ``oh`` must divide ``H`` and ``ow`` divide ``W``
            (``ValueError`` otherwise: windows of unequal size are not supported).

    Shapes: ``[N, C, H, W] -> [N, C, oh, ow]``.

    Example:
        >>> import gradtape as gt
        >>> x = gt.reshape(gt.tensor([float(i) for i in range(16)]), (1, 1, 4, 4))
        >>> gt.nn.adaptive_avg_pool2d(x, 2).numpy()
        array([[[[ 2.5,  4.5],
                 [10.5, 12.5]]]], dtype=float32)
    """
    what = "adaptive_avg_pool2d"
    x = one(x)
    _check_image(x, what)
    oh, ow = _pair(output_size, what, "output_size", 1)
    H, W = x.shape[2:]
    if H % oh or W % ow:
        raise ValueError(f"adaptive_avg_pool2d: output_size {(oh, ow)} must divide the input's "
                         f"spatial size {(H, W)} (x of shape {x.shape}); windows of unequal size "
                         "are not supported")
    if (oh, ow) == (1, 1):
        return ops.mean(x, axis=(2, 3), keepdims=True)
    if (oh, ow) == (H, W):
        return x
    return avg_pool2d(x, (H // oh, W // ow))
