"""Linear algebra: matmul, dot, einsum, outer.

``einsum`` is the general rule: its VJP for an operand is another einsum (the output gradient
contracted with the other operands), so every order of derivative is einsum again. ``dot``
reuses that rule with subscripts computed from the shapes.
"""

from __future__ import annotations

import math
import string
from typing import Any

import numpy as np

from .._src.autodiff.record import Record
from .._src.primitive import bind, primitive
from .._src.rules import OnTensors
from .._src.tensor import Tensor, _wrap
from ._util import move_axis, one, pair
from .elementwise import P_MUL, mul
from .shape import P_ASTYPE, P_BROADCAST_TO, P_RESHAPE, P_TRANSPOSE, reshape

__all__ = ["matmul", "dot", "einsum", "outer"]


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


P_MATMUL = primitive("matmul", lambda xp, a, b: xp.matmul(a, b), rule=_matmul_rule, jvp=_matmul_jvp,
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
    if not (isinstance(a, Tensor) and isinstance(b, Tensor)):
        a, b = pair(a, b)
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
def _einsum_impl(xp: Any, *arrays: Any, inputs: tuple, output: str) -> Any:
    spec = ",".join(inputs) + "->" + output
    return xp.einsum(spec, *arrays, optimize=len(arrays) > 2)


def _einsum_jvp(m: OnTensors, primals: tuple, tangents: tuple, out: Tensor, **p: Any) -> Tensor:
    return _product_jvp(m, P_EINSUM, primals, tangents, p)


def _dot_jvp(m: OnTensors, primals: tuple, tangents: tuple, out: Tensor, **p: Any) -> Tensor:
    return _product_jvp(m, P_DOT, primals, tangents, p)


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
        others = [j for j in range(len(subs)) if j != k]
        avail = set(out).union(*(subs[j] for j in others))
        target = "".join(c for c in subs[k] if c in avail)
        gk = m.apply(P_EINSUM, g, *(m.val(ops[j]) for j in others),
                     inputs=(out, *(subs[j] for j in others)), output=target)
        if target != subs[k]:
            shape = rec.in_shapes[k]
            kept = tuple(s if c in avail else 1 for c, s in zip(subs[k], shape))
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
