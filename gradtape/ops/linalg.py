"""Linear algebra: matmul, dot, einsum, outer; solve, inv, det, slogdet, cholesky (and the
internal packed SVD behind the matrix norms).

``einsum`` is the general rule: its VJP for an operand is another einsum (the output gradient
contracted with the other operands), so every order of derivative is einsum again. ``dot``
reuses that rule with subscripts computed from the shapes.
"""

from __future__ import annotations

import math
import string
from collections.abc import Sequence
from typing import Any

import numpy as np

from .._src.autodiff.record import Record
from .._src.autodiff.state import opaque
from .._src.primitive import REGISTRY, bind, primitive
from .._src.rules import ON_TENSORS, OnTensors
from .._src.tensor import Tensor, _wrap
from ._util import as_int, move_axis, one, pair
from .elementwise import P_EQUAL, P_MUL, P_SAFE_MUL, P_WHERE, mul
from .indexing import P_SCATTER, getitem
from .shape import P_ASTYPE, P_BROADCAST_TO, P_CONCAT, P_RESHAPE, P_TRANSPOSE, reshape, stop_gradient

__all__ = ["matmul", "dot", "einsum", "outer", "solve", "inv", "det", "slogdet", "cholesky",
           "diag", "trace", "triu", "tril"]


def _cast(m: OnTensors, g: Tensor, dtype: Any) -> Tensor:
    return m.apply(P_ASTYPE, g, dtype=dtype) if g.dtype != dtype else g


def _rand(rng: Any, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape)


# --------------------------------------------------------------------------- matmul
def _swap_last(m: OnTensors, t: Tensor) -> Tensor:
    n = len(t.shape)
    return m.apply(P_TRANSPOSE, t, axes=_SWAP2 if n == 2 else (*range(n - 2), n - 1, n - 2))


_SWAP2 = (1, 0)


def _product_jvp(m: OnTensors, prim: Any, primals: tuple, tangents: tuple, params: dict
                 ) -> Tensor:
    """The JVP of an op linear in each operand (the product rule): the sum, over the operands
    that move, of the op with that operand replaced by its tangent (``a' @ b + a @ b'``)."""
    total = None
    for k, t in enumerate(tangents):
        if t is not None:
            term = m.apply(prim, *primals[:k], t, *primals[k + 1:], **params)
            total = term if total is None else total + term
    assert total is not None  # called when some operand moves
    return total


def _matmul_jvp(m: OnTensors, primals: tuple, tangents: tuple, out: Tensor, **p: Any) -> Tensor:
    return _product_jvp(m, P_MATMUL, primals, tangents, p)


def _matmul_rule(m: OnTensors, rec: Record, g: Tensor) -> tuple:
    """The matmul VJP, once for both renderings (see :mod:`gradtape._src.rules`); the engine casts
    each gradient to its input's dtype."""
    a, b = m.val(rec.inputs[0]), m.val(rec.inputs[1])
    na, nb = len(rec.in_shapes[0]), len(rec.in_shapes[1])
    needs = rec.needs
    if na == 1 and nb == 1:
        return (g * b if needs[0] else None, g * a if needs[1] else None)
    A = m.apply(P_RESHAPE, a, shape=(1,) + a.shape) if na == 1 else a
    B = m.apply(P_RESHAPE, b, shape=b.shape + (1,)) if nb == 1 else b
    G = g
    if na == 1:
        G = m.apply(P_RESHAPE, G, shape=G.shape[:-1] + (1,) + G.shape[-1:])
    if nb == 1:
        G = m.apply(P_RESHAPE, G, shape=G.shape + (1,))
    ga = gb = None
    if needs[0]:
        ga = m.apply(P_MATMUL, G, _swap_last(m, B))
        if na == 1:
            ga = m.apply(P_RESHAPE, ga, shape=ga.shape[:-2] + ga.shape[-1:])
    if needs[1]:
        gb = m.apply(P_MATMUL, _swap_last(m, A), G)
        if nb == 1:
            gb = m.apply(P_RESHAPE, gb, shape=gb.shape[:-1])
    return ga, gb


# OpenBLAS (NumPy's wheels) computes a product of M * N * K <= 100**3 with its small-matrix
# kernels and a larger one with its blocked kernels, which for a product with few entries over
# a long K (a dense layer's weight gradient with few features over a large batch, a first conv
# layer's over batch x pixels) run 1.4-4x slower than the same product cut along K into pieces
# under that bound and summed; from M * N = 288 entries on the pieces gain nothing.
_SMALL_PRODUCT = 100 ** 3
_FEW_ENTRIES = 256
_BLAS_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


#: Host outer products of rows of at least this many entries (``B * d * p``) go through
#: BLAS (:func:`_host_row_outer`); below it NumPy's loop costs no more than the BLAS calls'
#: overhead (16 x 64 x 10 floats: 6.2 against 5.8 us on the 2-vCPU test VM, both ways).
_OUTER_BLAS_MIN = 1 << 14


def row_outer(xp: Any, a: Any, b: Any) -> Any:
    """The outer product of each row of ``a`` with the same row of ``b``,
    ``einsum("bi,bj->bij", a, b)``: a dense layer's per-example weight gradients, a stacked
    ``matmul`` over an inner size of 1. On the host, float32 and float64 sets of at least
    :data:`_OUTER_BLAS_MIN` entries take :func:`_host_row_outer` (one logged call inside
    ``gt.function``, so each replay checks its own ``b``).

    Shapes: ``a[B, d]``, ``b[B, p]`` -> ``[B, d, p]``.

    Example:
        >>> import numpy as np
        >>> row_outer(np, np.ones((2, 3)), np.arange(4.0).reshape(2, 2))[1]
        array([[2., 3.],
               [2., 3.],
               [2., 3.]])
    """
    B, d = a.shape
    p = b.shape[1]
    if xp is np and B >= 2 and min(d, p) >= 8 and B * d * p >= _OUTER_BLAS_MIN \
            and a.dtype == b.dtype and a.dtype in _BLAS_FLOATS:
        return opaque(_host_row_outer, a, b, key="row_outer")
    return xp.einsum("bi,bj->bij", a, b)


def _host_row_outer(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``einsum("bi,bj->bij", a, b)`` as products of two rows at a time: pair ``k`` is
    ``[[a_2k, 0], [0, a_2k+1]] @ [b_2k; b_2k+1]``, a ``[2d, 2] @ [2, p]`` matrix product, all
    pairs in one batched ``matmul``. Each entry is its one product plus a product by zero,
    accumulated from zero as einsum's sum is, so the values are einsum's (with OpenBLAS, the
    sign of a zero too); einsum runs ``B * d`` inner loops of ``p``
    elements, and these products took 0.55-0.6 of its time on the 2-vCPU test VM (128 x 64 x
    128 float32: 115 against 192 us; 128 x 128 x 10: 42 against 72; a stacked matmul over an
    inner size of 1: 998). An inf or nan in ``b`` would reach the other row of its pair
    through ``0 * inf``: such a ``b`` (or one whose sum overflows) takes einsum's loop."""
    with np.errstate(over="ignore", invalid="ignore"):
        finite = bool(np.isfinite(b.sum()))
    if not finite:
        return np.einsum("bi,bj->bij", a, b)
    B, d = a.shape
    p = b.shape[1]
    K = B // 2
    blocks = np.zeros((K, 2, d, 2), a.dtype)
    pairs = a[:2 * K].reshape(K, 2, d)
    blocks[:, 0, :, 0] = pairs[:, 0]
    blocks[:, 1, :, 1] = pairs[:, 1]
    out = np.empty((B, d, p), a.dtype)
    np.matmul(blocks.reshape(K, 2 * d, 2), b[:2 * K].reshape(K, 2, p),
              out=out[:2 * K].reshape(K, 2 * d, p))
    if B % 2:  # the last row alone, plus zero: a zero product is +0 as in the sums above
        last = out[-1]
        np.multiply(a[-1, :, None], b[-1, None, :], out=last)
        np.add(last, a.dtype.type(0), out=last)
    return out


def matmul_impl(xp: Any, a: Any, b: Any) -> Any:
    """``xp.matmul(a, b)``; on the host, a product of two float matrices ``a[M, K]``,
    ``b[K, N]`` with at most 256 entries over a long ``K`` is summed from pieces of ``K``
    that OpenBLAS runs with its small-matrix kernels (see the rule above), and a stack of
    outer products ``a[B, M, 1] @ b[B, 1, N]`` (``gt.vmap`` of a dense layer's weight
    gradient) is :func:`row_outer`'s.

    Shapes: as ``matmul``'s: ``[..., n, k] @ [..., k, m] -> [..., n, m]``.

    Example:
        >>> import numpy as np
        >>> x, g = np.ones((40000, 3)), np.ones((40000, 8))   # 3 features, 8 units
        >>> matmul_impl(np, x.T, g)[0, :3]                      # the weight gradient, in pieces
        array([40000., 40000., 40000.])
    """
    if xp is np and a.ndim == 2 and b.ndim == 2:
        (M, K), N = a.shape, b.shape[1]
        if M * N <= _FEW_ENTRIES and M * N * K > _SMALL_PRODUCT and a.dtype == b.dtype \
                and a.dtype in _BLAS_FLOATS:
            step = _SMALL_PRODUCT // (M * N)
            out = np.matmul(a[:, :step], b[:step])
            for k in range(step, K, step):
                out += np.matmul(a[:, k:k + step], b[k:k + step])
            return out
    if xp is np and a.ndim == 3 and b.ndim == 3 and a.shape[2] == 1 and b.shape[1] == 1 \
            and a.shape[0] == b.shape[0] and a.dtype == b.dtype and a.dtype in _BLAS_FLOATS:
        return row_outer(xp, a[:, :, 0], b[:, 0, :])
    return xp.matmul(a, b)


def _matmul_examples(rng: Any) -> list:
    return [(matmul, (_rand(rng, 2, 3), _rand(rng, 3, 4)), {}),
            (matmul, (_rand(rng, 3), _rand(rng, 3)), {}),
            (matmul, (_rand(rng, 3), _rand(rng, 2, 3, 4)), {}),
            (matmul, (_rand(rng, 2, 1, 2, 3), _rand(rng, 3, 4)), {}),
            (matmul, (_rand(rng, 5, 2, 3), _rand(rng, 1, 3, 2)), {})]


def _matmul_batch(args: tuple, dims: tuple) -> tuple:
    # matmul: one matmul in every case. Batched a only: the batch joins a's rows (a vector, or
    # with a matrix b the leading axes folded into one matrix) or, with stacked b, a's
    # leading axes. Batched b only: the batch axis next to b's columns, one wider matrix.
    # Both: batch axes first, ranks aligned, one stacked matmul.
    a, b = args
    da, db = dims
    if db is None:
        return _matmul_batch_a(a, da % a.ndim, b)
    db %= b.ndim
    if da is None:
        if b.ndim == 2:  # b one vector per example: the columns of one matrix [k, B]
            out = bind(P_MATMUL, a, move_axis(b, db, 1))
            return out, out.ndim - 1
        b = move_axis(b, db, b.ndim - 2)  # [..., k, B, m] -> [..., k, B * m]
        size, m = b.shape[-2:]
        out = bind(P_MATMUL, a, reshape(b, b.shape[:-2] + (size * m,)))
        return reshape(out, out.shape[:-1] + (size, m)), out.ndim - 1
    a, b = move_axis(a, da % a.ndim, 0), move_axis(b, db, 0)
    size = a.shape[0]
    sa = a.shape[1:] if a.ndim > 2 else (1,) + a.shape[1:]
    sb = b.shape[1:] if b.ndim > 2 else b.shape[1:] + (1,)
    rank = max(len(sa), len(sb))
    a = reshape(a, (size,) + (1,) * (rank - len(sa)) + sa)
    b = reshape(b, (size,) + (1,) * (rank - len(sb)) + sb)
    out = bind(P_MATMUL, a, b)
    if args[0].ndim == 2 or args[1].ndim == 2:  # drop the axes of the promoted vectors
        out = reshape(out, out.shape[:-2] + (() if args[0].ndim == 2 else out.shape[-2:-1])
                      + (() if args[1].ndim == 2 else out.shape[-1:]))
    return out, 0


def _matmul_batch_a(a: Tensor, da: int, b: Tensor) -> tuple:
    """matmul with the left operand batched (at ``da``) and the right one not."""
    if a.ndim == 2:  # a one vector per example: the rows of one matrix [B, k]
        out = bind(P_MATMUL, move_axis(a, da, 0), b)
        return out, (0 if b.ndim == 1 else out.ndim - 2)
    if b.ndim <= 2:  # b one matrix (or vector): the batch rides along a's leading axes
        if da == a.ndim - 1:
            a, da = move_axis(a, da, 0), 0
        if b.ndim == 1:
            return bind(P_MATMUL, a, b), da
        lead, k = a.shape[:-1], a.shape[-1]
        out = bind(P_MATMUL, reshape(a, (math.prod(lead), k)), b)  # one matrix product
        return reshape(out, lead + out.shape[-1:]), da
    # b stacked: the batch axis first, in front of every broadcast axis
    a = move_axis(a, da, 0)
    a = reshape(a, a.shape[:1] + (1,) * max(b.ndim - a.ndim + 1, 0) + a.shape[1:])
    return bind(P_MATMUL, a, b), 0


P_MATMUL = primitive("matmul", matmul_impl, rule=_matmul_rule, jvp=_matmul_jvp,
                     examples=_matmul_examples, batch=_matmul_batch)


def matmul(a: Any, b: Any) -> Tensor:
    """Matrix product with NumPy's ``matmul`` rules (batch dims broadcast, a 1-D operand is
    promoted to a matrix and its axis removed again).

    Shapes: ``[..., n, k] @ [..., k, m] -> [..., n, m]``; ``[k] @ [..., k, m] -> [..., m]``;
    ``[..., n, k] @ [k] -> [..., n]``; ``[k] @ [k] -> []``.

    Example:
        >>> import gradtape as gt
        >>> (gt.tensor([[1.0, 2.0]]) @ gt.tensor([[3.0], [4.0]])).numpy()
        array([[11.]], dtype=float32)
    """
    a, b = pair(a, b)  # two tensors pass through (an integer one next to a float one is cast)
    sa, sb = a.data.shape, b.data.shape  # plain attribute reads: this is a hot path
    if not sa or not sb:
        raise ValueError(f"matmul: operands must be at least 1-D, got shapes {sa} and "
                         f"{sb} (use mul for scalars)")
    ka = sa[-1]
    kb = sb[-2] if len(sb) > 1 else sb[0]
    if ka != kb:
        raise ValueError(f"matmul: contracted dimensions differ: a has shape {sa}, b has "
                         f"shape {sb} ({ka} != {kb})")
    if (len(sa) > 2 or len(sb) > 2) and not _batch_ok(sa[:-2], sb[:-2]):
        raise ValueError(f"matmul: batch dimensions do not broadcast: a has shape {a.shape}, "
                         f"b has shape {b.shape}")
    return bind(P_MATMUL, a, b)


def _batch_ok(sa: tuple, sb: tuple) -> bool:
    try:
        np.broadcast_shapes(sa, sb)
    except ValueError:
        return False
    return True


# --------------------------------------------------------------------------- einsum
_HALF = np.dtype(np.float16)


def acc_einsum(xp: Any, spec: str, *arrays: Any, optimize: bool = False) -> Any:
    """``xp.einsum(spec, *arrays)``, float16 operands accumulated in float32 and the result
    rounded once, as ``matmul`` of float16 is: NumPy's einsum adds
    float16 in float16 for most subscripts (``"ji,jk->ik"`` over 70000 rows of 0.01 gave 32,
    a trace of 5000 entries was off by 7%). Products of two float16 values are exact in
    float32, so this is the sum of the exact products, rounded once.

    Example:
        >>> half, ones = np.full((5000, 2), 0.5, np.float16), np.ones((5000, 1), np.float16)
        >>> acc_einsum(np, "ji,jk->ik", half, ones).tolist()   # (NumPy's float16 einsum: 1024)
        [[2500.0], [2500.0]]
    """
    if arrays[0].dtype == _HALF:  # (another operand of a wider dtype: einsum promotes the
        # float16 ones to it, and accumulates in it)
        dtype = np.result_type(*(a.dtype for a in arrays))
        wide = [a.astype(np.float32) if a.dtype == _HALF else a for a in arrays]
        out = xp.einsum(spec, *wide, optimize=optimize)
        return out.astype(dtype) if out.dtype != dtype else out
    return xp.einsum(spec, *arrays, optimize=optimize)


def _einsum_impl(xp: Any, *arrays: Any, inputs: tuple, output: str) -> Any:
    spec = ",".join(inputs) + "->" + output
    return acc_einsum(xp, spec, *arrays, optimize=len(arrays) > 2)


def _einsum_jvp(m: OnTensors, primals: tuple, tangents: tuple, out: Tensor, **p: Any) -> Tensor:
    return _product_jvp(m, P_EINSUM, primals, tangents, p)


def _dot_jvp(m: OnTensors, primals: tuple, tangents: tuple, out: Tensor, **p: Any) -> Tensor:
    return _product_jvp(m, P_DOT, primals, tangents, p)


def einsum_vjp_labels(subs: Sequence[str], out: str, k: int, shape: tuple[int, ...]
                      ) -> tuple[list[int], str, tuple[int, ...]]:
    """For operand ``k`` (of ``shape``) of ``einsum(subs -> out)``: the other operands, the
    labels of ``k`` that contracting the cotangent with them yields, and ``shape`` with 1 for
    the labels only ``k`` has (summed away in the forward, broadcast back in the VJP).

    Example:
        >>> einsum_vjp_labels(("ij", "jk"), "ik", 0, (2, 3))
        ([1], 'ij', (2, 3))
    """
    others = [j for j in range(len(subs)) if j != k]
    avail = set(out).union(*(subs[j] for j in others))
    target = "".join(c for c in subs[k] if c in avail)
    return others, target, tuple(s if c in avail else 1 for c, s in zip(subs[k], shape))


def _einsum_rule(m: OnTensors, rec: Record, g: Tensor) -> tuple:
    """Gradient of operand k: the output gradient contracted with the other operands, onto
    the labels of k; labels only k has (summed away in the forward) are broadcast back."""
    subs = rec.params["inputs"]
    out = rec.params["output"]
    ops = rec.inputs
    grads: list = []
    for k, need in enumerate(rec.needs):
        if not need:
            grads.append(None)
            continue
        others, target, kept = einsum_vjp_labels(subs, out, k, rec.in_shapes[k])
        gk = m.apply(P_EINSUM, g, *(m.val(ops[j]) for j in others),
                     inputs=(out, *(subs[j] for j in others)), output=target)
        if target != subs[k]:
            shape = rec.in_shapes[k]
            if gk.shape != kept:
                gk = m.apply(P_RESHAPE, gk, shape=kept)
            if kept != shape:
                gk = m.apply(P_BROADCAST_TO, gk, shape=shape)
        grads.append(_cast(m, gk, rec.in_dtypes[k]))
    return tuple(grads)


def _einsum_examples(rng: Any) -> list:
    return [(einsum, ("ij,jk->ik", _rand(rng, 2, 3), _rand(rng, 3, 4)), {}),
            (einsum, ("bij,bjk", _rand(rng, 2, 2, 3), _rand(rng, 2, 3, 2)), {}),
            (einsum, ("ij->", _rand(rng, 2, 3)), {}),
            (einsum, ("ii->i", _rand(rng, 3, 3)), {}),
            (einsum, ("i,ij,j->", _rand(rng, 2), _rand(rng, 2, 3), _rand(rng, 3)), {}),
            (einsum, ("...ij,...j->...i", _rand(rng, 4, 2, 3), _rand(rng, 1, 3)), {})]


def _einsum_batch(args: tuple, dims: tuple, *, inputs: tuple, output: str) -> tuple:
    # einsum: a fresh label for the batch axis, at its place in each batched operand's
    # subscript and first in the output; unbatched operands are left as they are.
    inputs = tuple(inputs)
    if any("..." in sub for sub in (*inputs, output)):
        shapes = [a.shape[:d % a.ndim] + a.shape[d % a.ndim + 1:] if d is not None else a.shape
                  for a, d in zip(args, dims)]
        ins, output = _parse_einsum(",".join(inputs) + "->" + output, shapes)
        inputs = tuple(ins)
    free = [c for c in _LABELS if c not in "".join(inputs) + output]
    if not free:
        raise ValueError(f"einsum: every one of the {len(_LABELS)} labels is used by "
                         f"{','.join(inputs)}->{output}; none is left to batch it")
    z = free[0]
    subs = tuple(sub if d is None else sub[:d % a.ndim] + z + sub[d % a.ndim:]
                 for sub, a, d in zip(inputs, args, dims))
    return bind(P_EINSUM, *args, inputs=subs, output=z + output), 0


P_EINSUM = primitive("einsum", _einsum_impl, rule=_einsum_rule, jvp=_einsum_jvp, examples=_einsum_examples,
                     batch=_einsum_batch)

_LABELS = string.ascii_letters


def _parse_einsum(subscripts: str, shapes: list) -> tuple[list[str], str]:
    """Expand ``...`` into letters and fill in an implicit output (NumPy's rules)."""
    s = subscripts.replace(" ", "")
    bad = set(s) - set(_LABELS) - set(".,->")
    if bad:
        raise ValueError(f"einsum: invalid character(s) {sorted(bad)} in subscripts {subscripts!r}")
    if s.count("->") > 1 or (s.count("-") != s.count("->")) or s.count(">") != s.count("->"):
        raise ValueError(f"einsum: subscripts {subscripts!r} must contain at most one '->'")
    explicit = "->" in s
    lhs, out = s.split("->") if explicit else (s, None)
    ins = lhs.split(",")
    if len(ins) != len(shapes):
        raise ValueError(f"einsum: subscripts {subscripts!r} name {len(ins)} operand(s) but "
                         f"{len(shapes)} were given")
    free = [c for c in _LABELS if c not in s]
    ell_dims = []
    for i, (sub, shape) in enumerate(zip(ins, shapes)):
        if "." in sub.replace("...", "", 1) or sub.count("...") > 1:
            raise ValueError(f"einsum: operand {i} subscript {sub!r}: '.' may only appear as "
                             "one '...'")
        named = len(sub.replace("...", ""))
        if "..." in sub:
            if len(shape) < named:
                raise ValueError(f"einsum: operand {i} has shape {shape} (rank {len(shape)}) but "
                                 f"its subscript {sub!r} names {named} axes")
            ell_dims.append(len(shape) - named)
        else:
            if len(shape) != named:
                raise ValueError(f"einsum: operand {i} has shape {shape} (rank {len(shape)}) but "
                                 f"its subscript {sub!r} names {named} axes")
            ell_dims.append(0)
    n_ell = max(ell_dims, default=0)
    ell = "".join(free[:n_ell])
    ins = [sub.replace("...", ell[n_ell - k:]) for sub, k in zip(ins, ell_dims)]
    if out is None:
        counts: dict[str, int] = {}
        for sub in ins:
            for c in sub:
                counts[c] = counts.get(c, 0) + 1
        out = ell + "".join(sorted(c for c, n in counts.items() if n == 1 and c not in ell))
    else:
        if "." in out.replace("...", "", 1) or out.count("...") > 1:
            raise ValueError(f"einsum: output subscript {out!r}: '.' may only appear as one '...'")
        if "..." in out:
            out = out.replace("...", ell)
        elif n_ell:
            raise ValueError(f"einsum: the operands have {n_ell} axes matched by '...' but the "
                             f"output {out!r} has no '...' to hold them")
        if len(set(out)) != len(out):
            raise ValueError(f"einsum: output subscript {out!r} repeats a label")
        missing = set(out) - set("".join(ins))
        if missing:
            raise ValueError(f"einsum: output label(s) {sorted(missing)} appear in no operand "
                             f"of {subscripts!r}")
    return ins, out


def einsum(subscripts: str, *operands: Any) -> Tensor:
    """Einstein summation, as ``np.einsum``: explicit (``"ij,jk->ik"``) or implicit output
    (labels used once, in alphabetical order), ``...`` for broadcast axes, size-1 axes
    broadcast, and labels repeated within one operand (``"ii->i"`` is the diagonal,
    ``"ii"`` the trace). Differentiable in every operand, to any order.

    Shapes: each label has one size across operands (or 1, which broadcasts).

    Example:
        >>> import gradtape as gt
        >>> a = gt.tensor([[1.0, 2.0], [3.0, 4.0]])
        >>> gt.einsum("ij,j->i", a, gt.tensor([1.0, 1.0])).numpy()
        array([3., 7.], dtype=float32)
        >>> float(gt.einsum("ii", a))
        5.0
    """
    if not isinstance(subscripts, str):
        raise TypeError(f"einsum: the first argument must be the subscripts string, got "
                        f"{type(subscripts).__name__}")
    if not operands:
        raise ValueError("einsum: need at least one operand")
    ops = [one(o) for o in operands]
    floats = [o.dtype for o in ops if o.dtype.kind in "fc"]
    if floats and any(o.dtype.kind in "biu" for o in ops):  # integers take the float dtype
        ft = np.result_type(*floats)
        ops = [o.astype(ft) if o.dtype.kind in "biu" else o for o in ops]
    backend = ops[0]._backend
    ins, out = _parse_einsum(subscripts, [o.shape for o in ops])
    # every label has one size; a size-1 axis facing a larger size broadcasts (as NumPy)
    size: dict[str, int] = {}
    for i, (sub, o) in enumerate(zip(ins, ops)):
        for c, n in zip(sub, o.shape):
            if c in size and n != size[c] and 1 not in (n, size[c]):
                raise ValueError(f"einsum: label {c!r} has size {size[c]} in one operand but {n} "
                                 f"in operand {i} (shape {o.shape}), subscripts {subscripts!r}")
            size[c] = n if c not in size or size[c] == 1 else size[c]
    for i, (sub, o) in enumerate(zip(ins, ops)):
        dup = {c for c in sub if sub.count(c) > 1}
        for c in dup:
            if len({n for d, n in zip(sub, o.shape) if d == c}) > 1:
                raise ValueError(f"einsum: label {c!r} is repeated in operand {i} (subscript "
                                 f"{sub!r}) over axes of different sizes, shape {o.shape}")
        drop = [j for j, (c, n) in enumerate(zip(sub, o.shape)) if n == 1 and size[c] != 1]
        if drop:
            ops[i] = reshape(o, tuple(n for j, n in enumerate(o.shape) if j not in drop))
            ins[i] = "".join(c for j, c in enumerate(sub) if j not in drop)
    # a label repeated within one operand (a diagonal) becomes distinct labels tied by an
    # identity matrix, so the VJP of every operand is again a plain einsum
    spare = [c for c in _LABELS if c not in "".join(ins) + out]
    dtype = np.result_type(*[o.dtype for o in ops])
    extra_ops: list = []
    extra_subs: list = []
    for i, sub in enumerate(ins):
        if len(set(sub)) == len(sub):
            continue
        seen: set = set()
        new = []
        for c in sub:
            if c in seen:
                if not spare:
                    raise ValueError(f"einsum: too many labels in {subscripts!r} to handle a "
                                     "repeated label")
                f = spare.pop(0)
                eye = _wrap(backend.xp.eye(size[c], dtype=dtype), backend)
                extra_ops.append(eye)
                extra_subs.append(c + f)
                new.append(f)
            else:
                seen.add(c)
                new.append(c)
        ins[i] = "".join(new)
    return bind(P_EINSUM, *ops, *extra_ops, inputs=(*ins, *extra_subs), output=out)


# --------------------------------------------------------------------------- dot
def _dot_examples(rng: Any) -> list:
    return [(dot, (_rand(rng, 3), _rand(rng, 3)), {}),
            (dot, (_rand(rng, 2, 3), _rand(rng, 3, 4)), {}),
            (dot, (_rand(rng, 2, 3), _rand(rng, 3)), {}),
            (dot, (_rand(rng, 3), _rand(rng, 3, 2)), {}),
            (dot, (_rand(rng, 2, 2, 3), _rand(rng, 2, 3, 2)), {}),
            (dot, (_rand(rng), _rand(rng, 2)), {})]


def _dot_subscripts(na: int, nb: int) -> tuple[tuple[str, str], str]:
    """``np.dot`` of operands of ranks ``na``, ``nb`` (both >= 1) as einsum subscripts: the
    last axis of ``a`` against the second-to-last of ``b`` (its only one if 1-D)."""
    kb = 0 if nb == 1 else nb - 2
    sa = _LABELS[:na]
    rest = iter(_LABELS[na:])
    sb = "".join(sa[-1] if j == kb else next(rest) for j in range(nb))
    return (sa, sb), sa[:-1] + sb[:kb] + sb[kb + 1:]


def _dot_batch(args: tuple, dims: tuple, *, inputs: tuple, output: str) -> tuple:
    # dot: one batched operand stays one dot, its batch axis among the leading (uncontracted)
    # axes (a 1-D b: its columns); both batched: einsum with a batch label.
    a, b = args
    da, db = dims
    if db is None:
        da %= a.ndim
        if da == a.ndim - 1:
            a, da = move_axis(a, da, 0), 0
        at = da
    elif da is None:
        db %= b.ndim
        if b.ndim == 2:  # b one vector per example: the columns of one matrix [k, B]
            b, db = move_axis(b, db, 1), 0
        elif db >= b.ndim - 2:
            b, db = move_axis(b, db, 0), 0
        at = a.ndim - 1 + db
    else:
        return _einsum_batch(args, dims, inputs=inputs, output=output)
    ins, out = _dot_subscripts(a.ndim, b.ndim)
    return bind(P_DOT, a, b, inputs=ins, output=out), at


P_DOT = primitive("dot", lambda xp, a, b, *, inputs, output: xp.dot(a, b), rule=_einsum_rule,
                  jvp=_dot_jvp,
                  examples=_dot_examples, batch=_dot_batch)


def dot(a: Any, b: Any) -> Tensor:
    """Dot product with ``np.dot`` semantics: inner product of 1-D tensors, matrix product of
    2-D ones, ``a * b`` if either is 0-d, and for N-D a sum over the last axis of ``a`` and
    the second-to-last of ``b`` (the last if ``b`` is 1-D).

    Shapes: ``dot(a[..., k], b[..., k, m]) -> a.shape[:-1] + b.shape[:-2] + (m,)`` (no
    broadcasting of batch axes, unlike :func:`matmul`).

    Example:
        >>> import gradtape as gt
        >>> float(gt.dot(gt.tensor([1.0, 2.0]), gt.tensor([3.0, 4.0])))
        11.0
    """
    a, b = pair(a, b)
    if a.ndim == 0 or b.ndim == 0:
        return mul(a, b)
    kb = 0 if b.ndim == 1 else b.ndim - 2
    if a.shape[-1] != b.shape[kb]:
        raise ValueError(f"dot: shapes {a.shape} and {b.shape} are not aligned: the last axis of "
                         f"a ({a.shape[-1]}) must match axis {kb} of b ({b.shape[kb]})")
    inputs, out = _dot_subscripts(a.ndim, b.ndim)
    return bind(P_DOT, a, b, inputs=inputs, output=out)


# --------------------------------------------------------------------------- outer
def _reshaped(m: OnTensors, t: Tensor, shape: tuple) -> Tensor:
    return t if t.shape == shape else m.apply(P_RESHAPE, t, shape=shape)


def _outer_jvp(m: OnTensors, primals: tuple, tangents: tuple, out: Tensor, **p: Any) -> Tensor:
    return _product_jvp(m, P_OUTER, primals, tangents, p)


def _outer_rule(m: OnTensors, rec: Record, g: Tensor) -> tuple:
    a, b = m.val(rec.inputs[0]), m.val(rec.inputs[1])
    sa, sb = rec.in_shapes
    ga = gb = None
    if rec.needs[0]:
        gf = m.apply(P_MATMUL, g, _reshaped(m, b, (math.prod(sb),)))
        ga = _cast(m, _reshaped(m, gf, sa), rec.in_dtypes[0])
    if rec.needs[1]:
        gf = m.apply(P_MATMUL, _reshaped(m, a, (math.prod(sa),)), g)
        gb = _cast(m, _reshaped(m, gf, sb), rec.in_dtypes[1])
    return ga, gb


def _outer_examples(rng: Any) -> list:
    return [(outer, (_rand(rng, 3), _rand(rng, 4)), {}),
            (outer, (_rand(rng, 2, 2), _rand(rng, 3)), {}),
            (outer, (_rand(rng), _rand(rng, 2)), {})]


def _outer_batch(args: tuple, dims: tuple) -> tuple:
    # outer (of flattened inputs): one batched operand: one outer product with the batch
    # flattened in, reshaped; both: the broadcast product [B, n, 1] * [B, 1, m].
    a, b = args
    da, db = dims
    if da is not None:
        a = move_axis(a, da, 0)
    if db is not None:
        b = move_axis(b, db, 0)
    if db is None:
        out = bind(P_OUTER, a, b)
        return reshape(out, (a.shape[0], math.prod(a.shape[1:]), out.shape[1])), 0
    if da is None:
        out = bind(P_OUTER, a, b)
        return reshape(out, (out.shape[0], b.shape[0], math.prod(b.shape[1:]))), 1
    size = a.shape[0]
    return bind(P_MUL, reshape(a, (size, math.prod(a.shape[1:]), 1)),
                reshape(b, (size, 1, math.prod(b.shape[1:])))), 0


P_OUTER = primitive("outer", lambda xp, a, b: xp.outer(a, b), rule=_outer_rule, jvp=_outer_jvp,
                    examples=_outer_examples, batch=_outer_batch)


def outer(a: Any, b: Any) -> Tensor:
    """Outer product of the flattened inputs, as ``np.outer``: ``out[i, j] = a[i] * b[j]``.

    Shapes: ``(a.size, b.size)``.

    Example:
        >>> import gradtape as gt
        >>> gt.outer(gt.tensor([1.0, 2.0]), gt.tensor([1.0, 10.0, 100.0])).shape
        (2, 3)
    """
    a, b = pair(a, b)
    return bind(P_OUTER, a, b)


# --------------------------------------------------------------------------- matrix functions
# solve, inv, det, slogdet, cholesky and the (internal) packed SVD act on the trailing two axes;
# leading axes are a stack of matrices (native to np.linalg), so each batching rule moves the
# batch axis to the front and binds the primitive once. A LAPACK failure (a singular matrix,
# a matrix that is not positive definite, an SVD that does not converge) raises
# np.linalg.LinAlgError (a ValueError) naming the op and the shape, from the forward (CuPy's
# solvers return NaN instead of raising).
_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def _lapack(what: str, problem: str, fn: Any, a: Any, *rest: Any) -> Any:
    """``fn(a, *rest)``, a LinAlgError re-raised with the op, the problem and the shape."""
    try:
        return fn(a, *rest)
    except np.linalg.LinAlgError as exc:
        stack = " (in a stack of matrices, at least one)" if a.ndim > 2 else ""
        raise np.linalg.LinAlgError(f"{what}: {problem}{stack}: input of shape {tuple(a.shape)} "
                                    f"({exc})") from None


def _float_operand(t: Tensor, what: str, name: str) -> Tensor:
    """``t`` as float32 or float64: integers and bools become float32 (the PyTorch/JAX rule of
    the package), float16 too (LAPACK has no half precision)."""
    dt = t.dtype
    if dt in _FLOATS:
        return t
    if dt.kind in "biu" or dt == np.float16:
        return bind(P_ASTYPE, t, dtype=np.dtype(np.float32))
    raise TypeError(f"{what}: {name} must hold real numbers (float32 or float64; integers, bools "
                    f"and float16 are computed in float32), got dtype {dt}")


def _square(x: Any, what: str, name: str = "a") -> Tensor:
    """``x`` as a float Tensor of shape [..., n, n], or a ValueError naming ``what``."""
    t = _float_operand(one(x), what, name)
    if t.ndim < 2 or t.shape[-1] != t.shape[-2]:
        raise ValueError(f"{what}: {name} must be a square matrix or a stack of them, shape "
                         f"[..., n, n]; got shape {t.shape}")
    return t


def _to_front(t: Tensor, d: int) -> Tensor:
    return move_axis(t, d % t.ndim, 0)


def _front_batch(name: str) -> Any:
    """The batching rule of the one-operand matrix function ``name``: the batch axis in front."""
    def rule(args: tuple, dims: tuple) -> tuple:
        # a stack of matrices is native: the batch axis joins the leading axes, one call.
        return bind(REGISTRY[name], _to_front(args[0], dims[0])), 0

    return rule


def _col(m: OnTensors, v: Tensor) -> Tensor:
    """``v`` of shape [..., k] as [..., k, 1]."""
    return m.apply(P_RESHAPE, v, shape=v.shape + (1,))


def _row(m: OnTensors, v: Tensor) -> Tensor:
    """``v`` of shape [..., k] as [..., 1, k]."""
    return m.apply(P_RESHAPE, v, shape=v.shape[:-1] + (1,) + v.shape[-1:])


def _scalar_to_matrix(m: OnTensors, v: Tensor) -> Tensor:
    """``v`` of shape [...] as [..., 1, 1] (broadcasts against matrices)."""
    return m.apply(P_RESHAPE, v, shape=v.shape + (1, 1))


def _eye(m: OnTensors, n: int, like: Tensor) -> Tensor:
    return m.const(m.xp_of(like).eye(n, dtype=like.dtype), like)


def _mm(m: OnTensors, a: Tensor, b: Tensor) -> Tensor:
    return m.apply(P_MATMUL, a, b)


def _trace_of_product(m: OnTensors, inv_t: Tensor, t: Tensor) -> Tensor:
    """``tr(A^-1 T)`` per matrix, from ``inv_t = A^-T`` (an elementwise product summed)."""
    n = len(t.shape)
    return (inv_t * t).sum(axis=(n - 2, n - 1))


def _rand_matrix(rng: Any, *shape: int, spd: bool = False, flip: bool = False) -> np.ndarray:
    """A well-conditioned matrix (stack): ``M + n I`` (``spd``: ``M M^T + n I``); ``flip``:
    the first row negated (a negative determinant)."""
    n = shape[-1]
    a = rng.standard_normal(shape)
    a = a @ np.swapaxes(a, -1, -2) + n * np.eye(n) if spd else a + n * np.eye(n)
    if flip:
        a[..., 0, :] *= -1
    return a


# --------------------------------------------------------------------------- solve
def _solve_impl(xp: Any, a: Any, b: Any) -> Any:
    # b is always a stack of matrices [..., n, k] here (solve() makes a vector a column);
    # batch axes broadcast explicitly, so NumPy 1.x and 2.x read b alike
    batch = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    if a.shape[:-2] != batch:
        a = xp.broadcast_to(a, batch + a.shape[-2:])
    if b.shape[:-2] != batch:
        b = xp.broadcast_to(b, batch + b.shape[-2:])
    return _lapack("solve", "the matrix a is singular", xp.linalg.solve, a, b)


def _solve_rule(m: OnTensors, rec: Record, g: Tensor) -> tuple:
    """``x = a^-1 b``: ``gb = a^-T g``, ``ga = -gb x^T`` (the engine sums broadcast batch axes)."""
    a, x = m.val(rec.inputs[0]), m.val(rec.output)
    gb = m.apply(P_SOLVE, _swap_last(m, a), g)
    ga = -_mm(m, gb, _swap_last(m, x)) if rec.needs[0] else None
    return ga, (gb if rec.needs[1] else None)


def _solve_jvp(m: OnTensors, primals: tuple, tangents: tuple, out: Tensor) -> Tensor:
    """``dx = a^-1 (db - da x)``."""
    da, db = tangents
    rhs = db
    if da is not None:
        t = -_mm(m, da, out)
        rhs = t if rhs is None else rhs + t
    return m.apply(P_SOLVE, primals[0], rhs)


def _solve_examples(rng: Any) -> list:
    return [(solve, (_rand_matrix(rng, 3, 3), _rand(rng, 3)), {}),
            (solve, (_rand_matrix(rng, 3, 3, flip=True), _rand(rng, 3, 2)), {}),
            (solve, (_rand_matrix(rng, 2, 3, 3), _rand(rng, 2, 3, 2)), {}),
            (solve, (_rand_matrix(rng, 3, 3), _rand(rng, 2, 3, 1)), {}),
            (solve, (_rand_matrix(rng, 2, 3, 3), _rand(rng, 3)), {})]


def _solve_batch(args: tuple, dims: tuple) -> tuple:
    # solve: an unbatched matrix a: every example's right-hand sides become columns of one b
    # (one factorization); otherwise the batch axes in front, ranks aligned, one stacked solve.
    a, b = args
    da, db = dims
    if da is None and a.ndim == 2:
        b = move_axis(b, db % b.ndim, b.ndim - 1)  # [..., n, k, B]
        shape = b.shape
        out = bind(P_SOLVE, a, reshape(b, shape[:-2] + (shape[-2] * shape[-1],)))
        return reshape(out, out.shape[:-1] + shape[-2:]), out.ndim
    ra, rb = a.ndim - (da is not None), b.ndim - (db is not None)  # per-example ranks
    lead = max(ra, rb) - 2

    def front(t: Tensor, d: int | None, r: int) -> Tensor:
        if d is None:
            return t
        t = _to_front(t, d)
        return t if r - 2 == lead else reshape(t, t.shape[:1] + (1,) * (lead - r + 2) + t.shape[1:])

    return bind(P_SOLVE, front(a, da, ra), front(b, db, rb)), 0


P_SOLVE = primitive("solve", _solve_impl, rule=_solve_rule, jvp=_solve_jvp, saves_output=True,
                    examples=_solve_examples, batch=_solve_batch)


def solve(a: Any, b: Any) -> Tensor:
    """The solution ``x`` of ``a @ x = b``, as ``np.linalg.solve`` (NumPy 2 semantics): ``b`` is
    one vector when it is 1-D, otherwise a stack of matrices whose columns are right-hand
    sides; batch axes broadcast.

    Shapes: ``solve(a[..., n, n], b[n]) -> [..., n]``; ``solve(a[..., n, n], b[..., n, k]) ->
    [..., n, k]``. Gradients: ``gb = a^-T g``, ``ga = -gb x^T``.

    Raises:
        ValueError: ``a`` is not square, ``b`` does not match it, or batch axes do not
            broadcast; ``np.linalg.LinAlgError`` (a ValueError) if ``a`` is singular.

    Example:
        >>> import gradtape as gt
        >>> gt.solve(gt.tensor([[2.0, 0.0], [0.0, 4.0]]), gt.tensor([2.0, 2.0])).numpy()
        array([1. , 0.5], dtype=float32)
    """
    a, b = pair(a, b)
    a = _square(a, "solve")
    b = _float_operand(b, "solve", "b")
    if a.dtype != b.dtype:
        dt = np.promote_types(a.dtype, b.dtype)
        a, b = (t if t.dtype == dt else bind(P_ASTYPE, t, dtype=dt) for t in (a, b))
    n = a.shape[-1]
    if b.ndim == 1:
        if b.shape[0] != n:
            raise ValueError(f"solve: b of shape {b.shape} does not match a of shape {a.shape} "
                             f"(b needs {n} entries)")
        out = bind(P_SOLVE, a, reshape(b, (n, 1)))
        return reshape(out, out.shape[:-1])
    if b.ndim == 0 or b.shape[-2] != n:
        raise ValueError(f"solve: b must be a vector [{n}] or a stack of matrices [..., {n}, k] "
                         f"for a of shape {a.shape}; got shape {b.shape}")
    if not _batch_ok(a.shape[:-2], b.shape[:-2]):
        raise ValueError(f"solve: batch dimensions do not broadcast: a has shape {a.shape}, b has "
                         f"shape {b.shape}")
    return bind(P_SOLVE, a, b)


# --------------------------------------------------------------------------- inv
def _inv_rule(m: OnTensors, rec: Record, g: Tensor) -> tuple:
    """``y = a^-1``: ``ga = -y^T g y^T``."""
    yt = _swap_last(m, m.val(rec.output))
    return (-_mm(m, _mm(m, yt, g), yt),)


def _inv_jvp(m: OnTensors, primals: tuple, tangents: tuple, out: Tensor) -> Tensor:
    return -_mm(m, _mm(m, out, tangents[0]), out)


def _inv_examples(rng: Any) -> list:
    return [(inv, (_rand_matrix(rng, 3, 3),), {}),
            (inv, (_rand_matrix(rng, 2, 3, 3, flip=True),), {}),
            (inv, (_rand_matrix(rng, 1, 1),), {})]


P_INV = primitive("inv", lambda xp, a: _lapack("inv", "the matrix is singular", xp.linalg.inv, a),
                  rule=_inv_rule, jvp=_inv_jvp, saves_inputs=False, saves_output=True,
                  examples=_inv_examples, batch=_front_batch("inv"))


def inv(a: Any) -> Tensor:
    """The inverse of a square matrix (or of each matrix of a stack), as ``np.linalg.inv``.

    Shapes: ``[..., n, n] -> [..., n, n]``. Gradient: ``-a^-T g a^-T``.

    Raises:
        ValueError: ``a`` is not square; ``np.linalg.LinAlgError`` (a ValueError) if it is
            singular.

    Example:
        >>> import gradtape as gt
        >>> gt.inv(gt.tensor([[2.0, 0.0], [0.0, 4.0]])).numpy()
        array([[0.5 , 0.  ],
               [0.  , 0.25]], dtype=float32)
    """
    return bind(P_INV, _square(a, "inv"))


# --------------------------------------------------------------------------- det
# det's derivative is the cofactor matrix ``C = det(a) a^-T`` (the adjugate transposed), a
# polynomial in the entries of ``a`` that exists for a singular matrix too, as in PyTorch and
# JAX. It is an (internal) primitive of its own: LU (det times inverse) where ``a`` is
# invertible, the SVD ``a = U diag(s) V^T`` where it is not, giving
# ``C = det(U) det(V) U diag(prod_{j != i} s_j) V^T`` with no division by a zero singular value.
def _cofactor_impl(xp: Any, a: Any) -> Any:
    if a.size == 0:
        return xp.zeros_like(a)
    if xp is not np:  # no LU attempt on a device: checking it would read the result back;
        # a matrix holding NaN or inf gives NaN (masked on the device, no read-back)
        bad = ~xp.isfinite(a).all(axis=(-2, -1))[..., None, None]
        c = _cofactor_svd(xp, xp.where(bad, xp.eye(a.shape[-1], dtype=a.dtype), a))
        return xp.where(bad, xp.asarray(np.nan, dtype=a.dtype), c)
    # which way a matrix goes depends on its values: one logged call, so that each replay of a
    # gt.function step takes its own
    return opaque(_cofactor_numpy, a, key="det_cofactor")


def _cofactor_numpy(a: np.ndarray) -> np.ndarray:
    """LU where every matrix of ``a`` is invertible, else the SVD for the stack; NaN for a
    matrix holding NaN or inf (as the LU route gives, where the SVD would not converge)."""
    bad = ~np.isfinite(a).all(axis=(-2, -1))
    if bad.any():
        a = np.where(bad[..., None, None], np.eye(a.shape[-1], dtype=a.dtype), a)
    try:
        with np.errstate(all="ignore"):
            c = np.linalg.det(a)[..., None, None] * np.swapaxes(np.linalg.inv(a), -1, -2)
        if not np.isfinite(c).all():
            c = _cofactor_svd(np, a)
    except np.linalg.LinAlgError:
        c = _cofactor_svd(np, a)
    if bad.any():
        c = np.where(bad[..., None, None], np.asarray(np.nan, a.dtype), c)
    return c


def _cofactor_svd(xp: Any, a: Any) -> Any:
    """``det(U) det(V) U diag(prod_{j != i} s_j) V^T`` from ``a = U diag(s) V^T``."""
    u, s, vh = _lapack("det", "the SVD of its derivative did not converge", xp.linalg.svd, a,
                       False)
    ones = xp.ones_like(s[..., :1])
    before = xp.cumprod(xp.concatenate([ones, s[..., :-1]], axis=-1), axis=-1)
    after = xp.flip(xp.cumprod(xp.flip(xp.concatenate([s[..., 1:], ones], axis=-1), axis=-1),
                               axis=-1), axis=-1)
    sign = xp.linalg.det(u) * xp.linalg.det(vh)
    return (sign[..., None, None] * (u * (before * after)[..., None, :])) @ vh


def _inverse_for(m: OnTensors, a: Any, why: str) -> Any:
    """``a^-1`` inside a derivative, a singular ``a`` reported as ``why`` (the op and the
    derivative that needs the inverse) with LAPACK's reason, not as an ``inv`` the user never
    called."""
    try:
        return m.apply(P_INV, a)
    except np.linalg.LinAlgError as e:
        raise np.linalg.LinAlgError(why.format(e)) from None


def _cofactor_inv(m: OnTensors, a: Any) -> Any:
    """``a^-1`` for the cofactor's own derivative (det's second derivative)."""
    return _inverse_for(m, a, "det: the second derivative (of the cofactor matrix det(a) a^-T) "
                              "needs an invertible matrix, got a singular one ({}); the first "
                              "derivative works for any matrix")


def _cofactor_rule(m: OnTensors, rec: Record, g: Tensor) -> tuple:
    """``C = det(a) a^-T = d B``: ``dC = tr(a^-1 da) C - C da^T B``, so
    ``ga = <g, B> C - C g^T B`` (``<g, B>`` per matrix)."""
    a, c = m.val(rec.inputs[0]), m.val(rec.output)
    b = _swap_last(m, _cofactor_inv(m, a))
    n = len(g.shape)
    inner = (g * b).sum(axis=(n - 2, n - 1))
    return (_scalar_to_matrix(m, inner) * c - _mm(m, _mm(m, c, _swap_last(m, g)), b),)


def _cofactor_jvp(m: OnTensors, primals: tuple, tangents: tuple, out: Tensor) -> Tensor:
    """``dC = tr(a^-1 da) C - C da^T a^-T``."""
    b = _swap_last(m, _cofactor_inv(m, primals[0]))
    da = tangents[0]
    return (_scalar_to_matrix(m, _trace_of_product(m, b, da)) * out
            - _mm(m, _mm(m, out, _swap_last(m, da)), b))


def _cofactor_examples(rng: Any) -> list:
    return [(_cofactor, (_rand_matrix(rng, 3, 3),), {}),
            (_cofactor, (_rand_matrix(rng, 2, 3, 3, flip=True),), {}),
            (_cofactor, (_rand_matrix(rng, 1, 1),), {})]


P_COFACTOR = primitive("det_cofactor", _cofactor_impl, rule=_cofactor_rule, jvp=_cofactor_jvp,
                       saves_output=True, examples=_cofactor_examples,
                       batch=_front_batch("det_cofactor"))


def _cofactor(a: Any) -> Tensor:
    """The cofactor matrix ``det(a) a^-T`` of each matrix of ``a`` [..., n, n] (det's
    derivative), also for a singular matrix."""
    return bind(P_COFACTOR, _square(a, "det"))


def _det_rule(m: OnTensors, rec: Record, g: Tensor) -> tuple:
    """``d = det(a)``: ``ga = g C`` with ``C = det(a) a^-T``, the cofactor matrix (for any
    ``a``, singular included)."""
    return (_scalar_to_matrix(m, g) * m.apply(P_COFACTOR, m.val(rec.inputs[0])),)


def _det_jvp(m: OnTensors, primals: tuple, tangents: tuple, out: Tensor) -> Tensor:
    """``dd = <C, da>`` per matrix, ``C`` the cofactor matrix."""
    return _trace_of_product(m, m.apply(P_COFACTOR, primals[0]), tangents[0])


def _det_examples(rng: Any) -> list:
    return [(det, (_rand_matrix(rng, 3, 3),), {}),
            (det, (_rand_matrix(rng, 3, 3, flip=True),), {}),
            (det, (_rand_matrix(rng, 2, 3, 3),), {}),
            (det, (_rand_matrix(rng, 1, 1),), {})]


P_DET = primitive("det", lambda xp, a: xp.linalg.det(a), rule=_det_rule, jvp=_det_jvp,
                  saves_output=False, examples=_det_examples, batch=_front_batch("det"))


def det(a: Any) -> Tensor:
    """The determinant of a square matrix (or of each matrix of a stack), as
    ``np.linalg.det``.

    Shapes: ``[..., n, n] -> [...]``. Gradient: ``g C`` with ``C`` the cofactor matrix
    (``det(a) a^-T`` for an invertible ``a``), also at a singular matrix, as JAX gives it
    (``C`` comes from the SVD there); the second derivative needs ``a`` invertible. For large
    or badly scaled matrices prefer :func:`slogdet`.

    Example:
        >>> import gradtape as gt
        >>> float(gt.det(gt.tensor([[2.0, 1.0], [1.0, 3.0]])))
        5.0
    """
    return bind(P_DET, _square(a, "det"))


# --------------------------------------------------------------------------- slogdet
# One primitive with one output: sign and log|det| packed along a last axis of size 2 (one
# LAPACK call; a primitive has one output). The sign is piecewise constant: its part of the
# output gradient is ignored, and slogdet() returns it through stop_gradient.
def _slogdet_impl(xp: Any, a: Any) -> Any:
    sign, logabs = xp.linalg.slogdet(a)
    return xp.stack([sign, logabs], axis=-1)


def _slogdet_inv(m: OnTensors, a: Any) -> Any:
    """``a^-1`` for slogdet's derivative (a singular ``a``: ``log|det a|`` is ``-inf``)."""
    return _inverse_for(m, a, "slogdet: the derivative of log|det a| (a^-T) needs an invertible "
                              "matrix, got a singular one, where log|det a| is -inf ({})")


def _slogdet_rule(m: OnTensors, rec: Record, g: Tensor) -> tuple:
    """``log|det a|``: ``ga = g a^-T``."""
    a = m.val(rec.inputs[0])
    return (_scalar_to_matrix(m, g[..., 1]) * _swap_last(m, _slogdet_inv(m, a)),)


def _slogdet_jvp(m: OnTensors, primals: tuple, tangents: tuple, out: Tensor) -> Tensor:
    """``(0, tr(a^-1 da))``, packed as the output."""
    t = _trace_of_product(m, _swap_last(m, _slogdet_inv(m, primals[0])), tangents[0])
    unit = m.const(m.xp_of(out).asarray([0.0, 1.0], dtype=out.dtype), out)
    return m.apply(P_RESHAPE, t, shape=t.shape + (1,)) * unit


def _slogdet_examples(rng: Any) -> list:
    return [(slogdet, (_rand_matrix(rng, 3, 3),), {}),
            (slogdet, (_rand_matrix(rng, 3, 3, flip=True),), {}),
            (slogdet, (_rand_matrix(rng, 2, 3, 3),), {})]


P_SLOGDET = primitive("slogdet", _slogdet_impl, rule=_slogdet_rule, jvp=_slogdet_jvp,
                      examples=_slogdet_examples, batch=_front_batch("slogdet"))


def slogdet(a: Any) -> tuple[Tensor, Tensor]:
    """Sign and natural log of the absolute determinant, as ``np.linalg.slogdet``:
    ``det(a) = sign * exp(logabsdet)``, without overflow or underflow for large matrices.

    Shapes: ``[..., n, n] -> ([...], [...])``. ``sign`` (1, -1, or 0 for a singular matrix)
    carries no gradient (it is piecewise constant; ``stop_gradient``); the gradient of
    ``logabsdet`` is ``g a^-T`` and needs ``a`` invertible.

    Example:
        >>> import gradtape as gt
        >>> sign, logabsdet = gt.slogdet(gt.tensor([[-2.0, 0.0], [0.0, 3.0]]))
        >>> float(sign), round(float(logabsdet), 4)
        (-1.0, 1.7918)
    """
    packed = bind(P_SLOGDET, _square(a, "slogdet"))
    return stop_gradient(packed[..., 0]), packed[..., 1]


# --------------------------------------------------------------------------- cholesky
def _cholesky_impl(xp: Any, a: Any) -> Any:
    # the symmetric part (as JAX): the result and its derivative depend on (a + a^T) / 2 only
    sym = (a + xp.swapaxes(a, -1, -2)) * a.dtype.type(0.5)
    L = _lapack("cholesky", "the matrix is not positive definite", xp.linalg.cholesky, sym)
    if xp is not np:  # a device's solver raises nothing: a matrix that is not positive
        # definite leaves a partial factor with a pivot that is not positive (or NaN); it
        # becomes NaN, as the docs say, read back nowhere
        ok = xp.all(xp.diagonal(L, axis1=-2, axis2=-1) > 0, axis=-1)[..., None, None]
        L = xp.where(ok, L, L.dtype.type(np.nan))
    return L


def _phi(m: OnTensors, t: Tensor) -> Tensor:
    """The lower triangle of ``t`` with the diagonal halved."""
    n = t.shape[-1]
    xp = m.xp_of(t)
    mask = xp.tril(xp.ones((n, n), dtype=t.dtype)) - xp.eye(n, dtype=t.dtype) * 0.5
    return t * m.const(mask, t)


def _cholesky_rule(m: OnTensors, rec: Record, g: Tensor) -> tuple:
    """``a = L L^T`` (Murray 2016): ``P = Phi(L^T g)``, ``ga = L^-T sym(P) L^-1`` with
    ``sym(P) = (P + P^T) / 2``, by two solves with ``L^T``."""
    lower = m.val(rec.output)
    lt = _swap_last(m, lower)
    p = _phi(m, _mm(m, lt, g))
    w = (p + _swap_last(m, p)) * 0.5
    y = m.apply(P_SOLVE, lt, w)  # L^-T W
    return (m.apply(P_SOLVE, lt, _swap_last(m, y)),)  # L^-T W L^-1 (symmetric)


def _cholesky_jvp(m: OnTensors, primals: tuple, tangents: tuple, out: Tensor) -> Tensor:
    """``dL = L Phi(L^-1 sym(da) L^-T)``."""
    da = tangents[0]
    sym = (da + _swap_last(m, da)) * 0.5
    x = m.apply(P_SOLVE, out, _swap_last(m, m.apply(P_SOLVE, out, sym)))
    return _mm(m, out, _phi(m, x))


def _cholesky_examples(rng: Any) -> list:
    return [(cholesky, (_rand_matrix(rng, 3, 3, spd=True),), {}),
            (cholesky, (_rand_matrix(rng, 2, 3, 3, spd=True),), {}),
            (cholesky, (_rand_matrix(rng, 1, 1, spd=True),), {})]


P_CHOLESKY = primitive("cholesky", _cholesky_impl, rule=_cholesky_rule, jvp=_cholesky_jvp,
                       saves_inputs=False, saves_output=True, examples=_cholesky_examples,
                       batch=_front_batch("cholesky"))


def cholesky(a: Any) -> Tensor:
    """The lower Cholesky factor ``L`` of a symmetric positive definite matrix (or of each of a
    stack): ``a = L @ L^T``, as ``np.linalg.cholesky``.

    ``a`` is read through its symmetric part ``(a + a^T) / 2`` (for a symmetric ``a`` the same
    factor), so the gradient is symmetric and agrees with finite differences in any direction:
    ``ga = L^-T sym(Phi(L^T g)) L^-1``, ``Phi`` the lower triangle with a halved diagonal.

    Shapes: ``[..., n, n] -> [..., n, n]``.

    Raises:
        ValueError: ``a`` is not square; ``np.linalg.LinAlgError`` (a ValueError) if it is not
            positive definite.

    Example:
        >>> import gradtape as gt
        >>> gt.cholesky(gt.tensor([[4.0, 2.0], [2.0, 5.0]])).numpy()
        array([[2., 0.],
               [1., 2.]], dtype=float32)
    """
    return bind(P_CHOLESKY, _square(a, "cholesky"))


# --------------------------------------------------------------------------- svd (internal)
# The thin SVD a = U diag(s) V^T of a [..., m, n] matrix, k = min(m, n), packed into one output
# [..., m + 1 + n, k]: rows :m are U, row m is s (descending), rows m+1: are V (a primitive has
# one output). The matrix norms 'nuc', 2 and -2 reduce s. Its VJP and JVP are the standard
# ones (Townsend 2016; JAX's svd_jvp_rule): they hold where the singular values are distinct and
# nonzero. F[i, j] = 1 / (s_j^2 - s_i^2) is infinite for a repeated value; it multiplies with
# "0 times anything is 0" (safe_mul), so a cotangent that does not move U or V (a function of
# s alone, such as a norm) still gets its well-defined gradient, U diag(gs) V^T.
def _svd_impl(xp: Any, a: Any) -> Any:
    u, s, vh = _lapack("svd", "the SVD did not converge", xp.linalg.svd, a, False)
    return xp.concatenate([u, s[..., None, :], xp.swapaxes(vh, -1, -2)], axis=-2)


def _svd_parts(p: Tensor, rows: int) -> tuple:
    """``(U, s, V)`` from a packed SVD (or its cotangent/tangent) of a matrix with ``rows`` rows."""
    return p[..., :rows, :], p[..., rows, :], p[..., rows + 1:, :]


def _svd_f(m: OnTensors, s: Tensor, eye: Tensor) -> Tensor:
    """``F[i, j] = 1 / (s_j^2 - s_i^2)``, 0 on the diagonal."""
    sq = s * s
    return 1.0 / (_row(m, sq) - _col(m, sq) + eye) - eye


def _svd_inv(m: OnTensors, s: Tensor) -> Tensor:
    """``1 / s``, 0 where ``s`` is 0."""
    zero = m.apply(P_EQUAL, s, m.scalar(0, s))
    return m.apply(P_WHERE, zero, m.scalar(0, s), 1.0 / m.apply(P_WHERE, zero, m.scalar(1, s), s))


def _svd_rule(m: OnTensors, rec: Record, g: Tensor) -> tuple:
    """``ga = U (diag(gs) + (J + J^T) S + S (K + K^T)) V^T`` with ``J = F * (U^T gU)``,
    ``K = F * (V^T gV)``, plus for a tall matrix ``(I - U U^T) gU S^-1 V^T`` and for a wide one
    ``U S^-1 gV^T (I - V V^T)``."""
    rows, cols = rec.in_shapes[0][-2:]
    k = min(rows, cols)
    u, s, v = _svd_parts(m.val(rec.output), rows)
    gu, gs, gv = _svd_parts(g, rows)
    ut, vt = _swap_last(m, u), _swap_last(m, v)
    eye = _eye(m, k, s)
    f = _svd_f(m, s, eye)
    j = m.apply(P_SAFE_MUL, _mm(m, ut, gu), f)
    kk = m.apply(P_SAFE_MUL, _mm(m, vt, gv), f)
    core = (_row(m, gs) * eye + (j + _swap_last(m, j)) * _row(m, s)
            + _col(m, s) * (kk + _swap_last(m, kk)))
    ga = _mm(m, _mm(m, u, core), vt)
    if rows > k:
        rest = gu - _mm(m, u, _mm(m, ut, gu))
        ga = ga + _mm(m, rest * _row(m, _svd_inv(m, s)), vt)
    if cols > k:
        rest = gv - _mm(m, v, _mm(m, vt, gv))
        ga = ga + _mm(m, u * _row(m, _svd_inv(m, s)), _swap_last(m, rest))
    return (ga,)


def _svd_jvp(m: OnTensors, primals: tuple, tangents: tuple, out: Tensor) -> Tensor:
    """``dS = U^T da V``: ``ds = diag(dS)``, ``dU = U (F * (dS S + S dS^T))`` (+ for a tall
    matrix ``(I - U U^T) da V S^-1``), ``dV = V (F * (S dS + dS^T S))`` (+ for a wide one
    ``(I - V V^T) da^T U S^-1``)."""
    da = tangents[0]
    rows, cols = primals[0].shape[-2:]
    k = min(rows, cols)
    u, s, v = _svd_parts(out, rows)
    ut, vt = _swap_last(m, u), _swap_last(m, v)
    eye = _eye(m, k, s)
    f = _svd_f(m, s, eye)
    ds_mat = _mm(m, _mm(m, ut, da), v)
    srow, scol = _row(m, s), _col(m, s)
    ds = (ds_mat * eye).sum(axis=len(ds_mat.shape) - 1)
    du = _mm(m, u, m.apply(P_SAFE_MUL, ds_mat * srow + scol * _swap_last(m, ds_mat), f))
    dv = _mm(m, v, m.apply(P_SAFE_MUL, scol * ds_mat + _swap_last(m, ds_mat) * srow, f))
    if rows > k:
        dav = _mm(m, da, v)
        du = du + (dav - _mm(m, u, _mm(m, ut, dav))) * _row(m, _svd_inv(m, s))
    if cols > k:
        dau = _mm(m, _swap_last(m, da), u)
        dv = dv + (dau - _mm(m, v, _mm(m, vt, dau))) * _row(m, _svd_inv(m, s))
    axis = len(du.shape) - 2
    return m.apply(P_CONCAT, du, _row(m, ds), dv, axis=axis)


def orthogonal(rng: Any, n: int) -> np.ndarray:
    """A random orthogonal ``n x n`` matrix (for examples)."""
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))


def with_singular_values(rng: Any, rows: int, cols: int, s: tuple) -> np.ndarray:
    """A ``rows x cols`` matrix with the given singular values (for examples: distinct ones)."""
    k = min(rows, cols)
    return (orthogonal(rng, rows)[:, :k] * np.asarray(s[:k])) @ orthogonal(rng, cols)[:, :k].T


def _svd_invariants(a: Any) -> list[Tensor]:
    """Functions of the packed SVD that do not depend on the signs LAPACK picks for the
    singular vectors: ``U diag(s) V^T`` (``a`` again), ``U U^T``, ``V V^T`` and ``s``."""
    a = one(a)
    p = bind(P_SVD, a)
    u, s, v = _svd_parts(p, a.shape[-2])
    return [matmul(u * _row(ON_TENSORS, s), _swap_last(ON_TENSORS, v)),
            matmul(u, _swap_last(ON_TENSORS, u)), matmul(v, _swap_last(ON_TENSORS, v)), s]


def _svd_examples(rng: Any) -> list:
    sv = (3.0, 2.0, 1.0)
    return [(_svd_invariants, (with_singular_values(rng, 3, 3, sv),), {}),
            (_svd_invariants, (with_singular_values(rng, 3, 2, sv),), {}),
            (_svd_invariants, (with_singular_values(rng, 2, 3, sv),), {}),
            (_svd_invariants, (np.stack([with_singular_values(rng, 3, 2, sv),
                                         with_singular_values(rng, 3, 2, (1.5, 0.5))]),), {})]


P_SVD = primitive("svd", _svd_impl, rule=_svd_rule, jvp=_svd_jvp, saves_inputs=False,
                  saves_output=True, examples=_svd_examples, batch=_front_batch("svd"))


def singular_values(a: Tensor) -> Tensor:
    """The singular values of ``a`` [..., m, n] (a float Tensor, m, n >= 1), descending, shape
    [..., min(m, n)]; differentiable through the packed SVD (used by ``norm``)."""
    return bind(P_SVD, a)[..., a.shape[-2], :]


# --------------------------------------------------------------------------- diagonals and triangles
# Compositions of existing primitives: diag and trace index the diagonal (getitem, whose VJP
# scatters back; building a diagonal matrix is that scatter), triu and tril select with a
# constant mask (where). So they batch, differentiate to any order and have forward mode.
def _int_param(value: Any, what: str, name: str) -> int:
    # (as_int: a 0-d bool or float Tensor has __index__ too, and int() took True as 1)
    return as_int(value, what, name)


def _diagonal_index(xp: Any, rows: int, cols: int, k: int) -> tuple[Any, Any]:
    """Row and column indices of the ``k``-th diagonal of a ``rows x cols`` matrix."""
    n = max(0, min(rows + min(k, 0), cols - max(k, 0)))
    return xp.arange(n) + max(-k, 0), xp.arange(n) + max(k, 0)


def diag(x: Any, k: int = 0) -> Tensor:
    """The ``k``-th diagonal, as ``np.diag``: a 1-D ``x`` becomes the ``k``-th diagonal of an
    otherwise zero square matrix; a 2-D ``x`` gives its ``k``-th diagonal (``k > 0`` above the
    main one, ``k < 0`` below). Differentiable both ways (the gradient reads, or scatters into,
    the diagonal).

    Shapes: ``[n]`` -> ``[n + |k|, n + |k|]``; ``[r, c]`` -> ``[max(0, min(r + min(k, 0),
    c - max(k, 0)))]``.

    Example:
        >>> import gradtape as gt
        >>> gt.diag(gt.tensor([1.0, 2.0])).numpy()
        array([[1., 0.],
               [0., 2.]], dtype=float32)
        >>> gt.diag(gt.tensor([[1.0, 2.0], [3.0, 4.0]]), k=1).numpy()
        array([2.], dtype=float32)
    """
    x = one(x)
    k = _int_param(k, "diag", "k")
    xp = x._backend.xp
    if x.ndim == 1:
        size = x.shape[0] + abs(k)
        index = _diagonal_index(xp, size, size, k)
        return bind(P_SCATTER, x, index=index, shape=(size, size), advanced=True)
    if x.ndim == 2:
        return getitem(x, _diagonal_index(xp, x.shape[0], x.shape[1], k))
    raise ValueError(f"diag: x must be 1-D (a diagonal to place) or 2-D (a matrix to read), got "
                     f"shape {x.shape}")


def trace(x: Any, offset: int = 0, axis1: int = 0, axis2: int = 1) -> Tensor:
    """Sum along a diagonal, as ``np.trace``: of the matrices in axes ``axis1`` and ``axis2``,
    along the ``offset``-th diagonal (an empty diagonal sums to 0). The gradient is the output
    gradient on that diagonal, 0 elsewhere.

    Shapes: ``x`` (at least 2-D) -> ``x.shape`` without ``axis1`` and ``axis2`` (0-d for a
    matrix).

    Example:
        >>> import gradtape as gt
        >>> gt.trace(gt.tensor([[1.0, 2.0], [3.0, 4.0]])).numpy()
        array(5., dtype=float32)
    """
    x = one(x)
    offset = _int_param(offset, "trace", "offset")
    if x.ndim < 2:
        raise ValueError(f"trace: x must have at least 2 axes, got shape {x.shape}")
    a1 = _int_param(axis1, "trace", "axis1")
    a2 = _int_param(axis2, "trace", "axis2")
    for name, a in (("axis1", a1), ("axis2", a2)):
        if not -x.ndim <= a < x.ndim:
            raise ValueError(f"trace: {name} {a} is out of range for a tensor of rank {x.ndim}")
    a1, a2 = a1 % x.ndim, a2 % x.ndim
    if a1 == a2:
        raise ValueError(f"trace: axis1 and axis2 must differ, both are {a1}")
    order = tuple(i for i in range(x.ndim) if i not in (a1, a2)) + (a1, a2)
    x = x.transpose(order)
    rows, cols = _diagonal_index(x._backend.xp, x.shape[-2], x.shape[-1], offset)
    return getitem(x, (Ellipsis, rows, cols)).sum(axis=-1)


def _triangle(x: Any, k: Any, upper: bool, what: str) -> Tensor:
    x = one(x)
    k = _int_param(k, what, "k")
    if x.ndim == 0:
        raise ValueError(f"{what}: x must have at least one axis, got a 0-d tensor")
    xp = x._backend.xp
    # NumPy's masks, on the last two axes (a 1-D x is a row broadcast to a square matrix)
    lower = xp.tri(*x.shape[-2:], k=k - 1 if upper else k, dtype=bool)
    keep = _wrap(~lower if upper else lower, x._backend)
    return bind(P_WHERE, keep, x, _wrap(xp.zeros((), dtype=x.dtype), x._backend))


def triu(x: Any, k: int = 0) -> Tensor:
    """The upper triangle: the elements on and above the ``k``-th diagonal of the last two
    axes (``k > 0``: above the main one), zeros below, as ``np.triu``. The gradient passes
    where the values do.

    Shapes: ``x[..., r, c]`` -> ``[..., r, c]``; a 1-D ``x[n]`` gives ``[n, n]`` (NumPy).

    Example:
        >>> import gradtape as gt
        >>> gt.triu(gt.tensor([[1.0, 2.0], [3.0, 4.0]])).numpy()
        array([[1., 2.],
               [0., 4.]], dtype=float32)
    """
    return _triangle(x, k, True, "triu")


def tril(x: Any, k: int = 0) -> Tensor:
    """The lower triangle: the elements on and below the ``k``-th diagonal of the last two
    axes (``k < 0``: below the main one), zeros above, as ``np.tril``. The gradient passes
    where the values do.

    Shapes: ``x[..., r, c]`` -> ``[..., r, c]``; a 1-D ``x[n]`` gives ``[n, n]`` (NumPy).

    Example:
        >>> import gradtape as gt
        >>> gt.tril(gt.tensor([[1.0, 2.0], [3.0, 4.0]]), k=-1).numpy()
        array([[0., 0.],
               [3., 0.]], dtype=float32)
    """
    return _triangle(x, k, False, "tril")
