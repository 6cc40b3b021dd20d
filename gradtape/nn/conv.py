"""Convolution and pooling over NCHW images, built on two linear primitives that are each
other's adjoint: ``im2col`` (gather every kernel-offset view of the padded input) and
``col2im`` (scatter-add them back). ``conv2d`` is ``im2col`` followed by one batched matmul
with the weights, so its gradients, and their gradients, come from the ops it is made of;
``conv_transpose2d``, its adjoint, is the matmul with the transposed weights followed by
``col2im``; ``conv1d`` is ``conv2d`` on images of height 1.

Only loops over kernel offsets (``kh * kw`` slice copies) run in Python; every copy is a
vectorized array operation.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import ops
from .._src.autodiff.record import Record
from .._src.primitive import bind, primitive
from .._src.rules import OnTensors
from .._src.tensor import Tensor
from ..ops._util import one, phys_axis
from ..ops.elementwise import P_SAFE_MUL
from ..ops.reductions import P_SUM
from ..ops.shape import P_RESHAPE

__all__ = ["conv2d", "conv1d", "conv_transpose2d", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d"]


# --------------------------------------------------------------------------- arguments
def _pair(v: Any, what: str, name: str, minimum: int) -> tuple[int, int]:
    if isinstance(v, (int, np.integer)):
        v = (int(v), int(v))
    try:
        a, b = (int(t) for t in v)
    except (TypeError, ValueError):
        raise ValueError(f"{what}: {name} must be an int or a pair of ints, got {v!r}") from None
    if a < minimum or b < minimum:
        raise ValueError(f"{what}: {name} must be >= {minimum}, got {v!r}")
    return a, b


def _padding(padding: Any, kernel: tuple, dilation: tuple, what: str) -> tuple:
    """Normalize to ``((top, bottom), (left, right))``."""
    if isinstance(padding, str):
        if padding == "valid":
            return ((0, 0), (0, 0))
        if padding == "same":
            out = []
            for k, d in zip(kernel, dilation):
                total = d * (k - 1)
                out.append((total // 2, total - total // 2))
            return tuple(out)
        raise ValueError(f"{what}: padding must be an int, a pair, 'valid' or 'same', got {padding!r}")
    if isinstance(padding, (tuple, list)) and len(padding) == 2 and all(
            isinstance(p, (tuple, list)) for p in padding):
        (pt, pb), (pl, pr) = ((int(a), int(b)) for a, b in padding)
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
    cols = xp.empty((N, C, kh, kw, oh, ow), dtype=x.dtype)
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
        out = xp.empty((N, C, oh, kh, ow, kw), dtype=cols.dtype)  # each pixel written once
        for i in range(kh):
            for j in range(kw):
                out[:, :, :, i, :, j] = cols[:, :, i, j]
        return out.reshape(N, C, H, W)
    geo = {"stride": stride, "dilation": dilation}
    out = xp.zeros((N, C, H + pt + pb, W + pl + pr), dtype=cols.dtype)
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


def _col2im_examples(rng: np.random.Generator) -> list:
    # col2im bound directly (in conv2d it only appears in im2col's backward)
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


def _pool_examples(rng: np.random.Generator) -> list:
    # distinct values spaced apart so finite differences never cross a tie
    x = rng.permutation(2 * 3 * 5 * 5).reshape(2, 3, 5, 5) * 0.1
    return [(max_pool2d, (x,), {"kernel_size": 2}),
            (max_pool2d, (x,), {"kernel_size": 3, "stride": 2, "padding": 1}),
            (avg_pool2d, (rng.normal(size=(2, 3, 5, 5)),), {"kernel_size": 2, "padding": 1})]


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
                     examples=_conv_examples, batch=_im2col_batch)
P_COL2IM = primitive("col2im", _col2im_impl, rule=_col2im_rule, jvp=_col2im_jvp, saves_inputs=False,
                     examples=_col2im_examples, batch=_col2im_batch)


def _window_max_impl(xp: Any, x: Any, *, axis: int) -> Any:
    return x.max(axis=axis)


def _window_max_rule(m: OnTensors, rec: Record, g: Tensor) -> tuple:
    # The gradient goes to the first maximum of each window (as PyTorch's max_pool2d).
    axis = rec.params["axis"]
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
    out = xp.empty(x.shape, dtype)
    taken = xp.zeros(top.shape, bool)
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
                         examples=_pool_examples, batch=_window_max_batch)


def _im2col(x: Tensor, kernel: tuple, stride: tuple, padding: tuple, dilation: tuple,
            pad_value: float, what: str) -> Tensor:
    N, C, H, W = x.shape
    oh = _out_size(H, kernel[0], stride[0], padding[0], dilation[0])
    ow = _out_size(W, kernel[1], stride[1], padding[1], dilation[1])
    if oh < 1 or ow < 1:
        raise ValueError(f"{what}: the (padded) input of spatial size {(H, W)} is smaller than the "
                         f"dilated kernel {kernel} (dilation {dilation}, padding {padding})")
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
            ``"same"`` (zero padding).
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
    x, w = one(x), one(w)
    _check_image(x, what)
    if w.ndim != 4:
        raise ValueError(f"conv2d: w must be 4-D [out_channels, in_channels // groups, kh, kw], "
                         f"got shape {w.shape}")
    groups = int(groups)
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
    pad = _padding(padding, (kh, kw), dilation, what)
    cols = _im2col(x, (kh, kw), stride, pad, dilation, 0.0, what)  # [N, C, kh, kw, OH, OW]
    oh, ow = cols.shape[-2:]
    K = Cg * kh * kw
    if groups == 1:
        out = ops.matmul(ops.reshape(w, (n_out, K)), ops.reshape(cols, (N, K, oh * ow)))
    else:
        out = ops.matmul(ops.reshape(w, (groups, n_out // groups, K)),
                         ops.reshape(cols, (N, groups, K, oh * ow)))
    out = ops.reshape(out, (N, n_out, oh, ow))
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
    stride = kernel if stride is None else _pair(stride, what, "stride", 1)
    pad = _padding(padding, kernel, (1, 1), what)
    if any(p > k // 2 for p, k in zip((max(pad[0]), max(pad[1])), kernel)):
        raise ValueError(f"{what}: padding {padding!r} must be at most half the kernel size {kernel}")
    return x, kernel, stride, pad


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
    cols = _im2col(x, kernel, stride, pad, (1, 1), -np.inf, what)
    N, C, kh, kw, oh, ow = cols.shape
    return bind(P_WINDOW_MAX, ops.reshape(cols, (N, C, kh * kw, oh, ow)), axis=2)


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
    return ops.sum(cols, axis=(2, 3)) * (1.0 / (kernel[0] * kernel[1]))


# --------------------------------------------------------------------------- 1-D convolution
def _single(v: Any, what: str, name: str, minimum: int) -> int:
    """An int argument of a 1-D op (a 1-tuple is accepted, as PyTorch does)."""
    if isinstance(v, (tuple, list)) and len(v) == 1:
        v = v[0]
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise ValueError(f"{what}: {name} must be an int, got {v!r}")
    if int(v) < minimum:
        raise ValueError(f"{what}: {name} must be >= {minimum}, got {v!r}")
    return int(v)


def _padding1(padding: Any, k: int, d: int, what: str) -> tuple[int, int]:
    """Normalize a 1-D padding to ``(left, right)``."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0)
        if padding == "same":
            total = d * (k - 1)
            return (total // 2, total - total // 2)
        raise ValueError(f"{what}: padding must be an int, a pair (left, right), 'valid' or 'same', "
                         f"got {padding!r}")
    if isinstance(padding, (tuple, list)) and len(padding) == 2:
        try:
            left, right = (int(p) for p in padding)
        except (TypeError, ValueError):
            raise ValueError(f"{what}: padding must be an int, a pair (left, right), 'valid' or "
                             f"'same', got {padding!r}") from None
    else:
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
        padding: an int, ``(left, right)``, ``"valid"`` or ``"same"`` (zero padding).
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
    pad = _padding1(padding, k, d, what)
    if _out_size(L, k, s, pad, d) < 1:
        raise ValueError(f"conv1d: the (padded) input of length {L} is shorter than the dilated "
                         f"kernel {k} (dilation {d}, padding {pad})")
    y = conv2d(ops.reshape(x, (N, C, 1, L)), ops.reshape(w, (n_out, Cg, 1, k)), b, stride=(1, s),
               padding=((0, 0), pad), dilation=(1, d), groups=groups)
    return ops.reshape(y, (N, n_out, y.shape[-1]))


# --------------------------------------------------------------------------- transposed conv
def conv_transpose2d(x: Any, w: Any, b: Any = None, stride: Any = 1, padding: Any = 0,
                     output_padding: Any = 0, groups: int = 1, dilation: Any = 1) -> Tensor:
    """2-D transposed convolution ("deconvolution", PyTorch's ``conv_transpose2d``) of NCHW
    images with weights ``[in_channels, out_channels // groups, kh, kw]``.

    It is the adjoint of :func:`conv2d` with the same weights, stride, padding and dilation:
    ``<conv2d(z, w), x> == <z, conv_transpose2d(x, w)>``; computed as one matmul with the
    transposed weights followed by ``col2im`` (the scatter-add that is im2col's adjoint), so
    gradients of any order, forward mode and vmap come from those primitives.

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
    x, w = one(x), one(w)
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
    stride = _pair(stride, what, "stride", 1)
    dilation = _pair(dilation, what, "dilation", 1)
    if isinstance(padding, str):
        raise ValueError(f"conv_transpose2d: padding must be an int, a pair or ((top, bottom), "
                         f"(left, right)), got {padding!r}")
    pad = _padding(padding, (kh, kw), dilation, what)
    op = _pair(output_padding, what, "output_padding", 0)
    if op[0] >= stride[0] or op[1] >= stride[1]:
        raise ValueError(f"conv_transpose2d: output_padding {op} must be smaller than the stride "
                         f"{stride} in each dimension")
    oh = (H - 1) * stride[0] - sum(pad[0]) + dilation[0] * (kh - 1) + op[0] + 1
    ow = (W - 1) * stride[1] - sum(pad[1]) + dilation[1] * (kw - 1) + op[1] + 1
    if oh < 1 or ow < 1:
        raise ValueError(f"conv_transpose2d: padding {padding!r} leaves an empty output "
                         f"({oh}, {ow}) for an input of spatial size {(H, W)} and kernel {(kh, kw)}")
    K = Og * kh * kw
    if groups == 1:  # [K, C] @ [N, C, H*W]
        cols = ops.matmul(ops.swapaxes(ops.reshape(w, (C, K)), 0, 1), ops.reshape(x, (N, C, H * W)))
    else:  # per group: [g, K, C/g] @ [N, g, C/g, H*W]
        cols = ops.matmul(ops.swapaxes(ops.reshape(w, (groups, C // groups, K)), 1, 2),
                          ops.reshape(x, (N, groups, C // groups, H * W)))
    cols = ops.reshape(cols, (N, n_out, kh, kw, H, W))
    out = bind(P_COL2IM, cols, in_shape=(N, n_out, oh, ow), kernel=(kh, kw), stride=stride,
               padding=pad, dilation=dilation)
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
