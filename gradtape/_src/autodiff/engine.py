"""The reverse pass: walk a tape's records backwards, call each VJP, accumulate gradients.

Each tape's records are in execution order, so reverse order is a topological order. The
engine does the chores once for every rule: skipping inputs that need no gradient, summing a
broadcast operand's gradient back to its shape (:func:`unbroadcast`), casting to the input's
dtype, accumulating fan-out (:class:`Accumulator`). First-order passes run on backend arrays
(rendered derivative expressions, two-rendering rules, fused runs from :mod:`.fusion`); a pass
that an outer tape or a transform must see runs in recorded gradtape ops (``diff=True``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Container, Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from ..backend import NUMPY, Array, acc_sum, backend_of
from ..config import HOOKS, config
from ..errors import MissingRuleError
from ..primitive import Primitive
from ..rules import ON_NUMPY, on_arrays
from ..tensor import Tensor, _wrap
from . import fusion
from .record import Record, Recorder, check_finite

__all__ = ["backward", "forward_reach", "unbroadcast", "Accumulator"]

_NONE1 = (None,)


def forward_reach(records: list[Record], start: set[int]) -> set[int]:
    reach = set(start)
    for rec in records:
        for i in rec.in_ids:
            if i and i in reach:
                reach.add(rec.out_id)
                if rec.extra_outs:
                    reach.update(rec.extra_outs)
                break
    return reach


def fold_pairs(records: list[Record], indices: Sequence[int], reach: set[int],
               keep: tuple[Container[int], ...], fused: dict[int, Any] | None = None
               ) -> dict[int, int] | None:
    """``{consumer index: producer index}`` for the records among ``indices`` (those the pass
    visits) whose primitive folds its first input's producer (:attr:`Primitive.folds`): the
    producer visited too, its output read by this record only, in ``reach`` and in none of
    ``keep`` (sources, targets), its first input in ``reach`` and no other input of either
    record in ``reach`` (a fold gives one cotangent); neither record a member of a run of
    ``fused``. None when no record folds."""
    cands = [i for i in indices if records[i].prim.folds is not None]
    if not cands:
        return None
    visited = indices if isinstance(indices, range) else set(indices)
    skip = {m for run in fused.values() for m in run.members} if fused else ()
    made: dict[int, int] = {}
    readers: dict[int, int] = {}
    for idx, rec in enumerate(records):
        if rec.extra_outs is None:
            made[rec.out_id] = idx
        for iid in rec.in_ids:
            if iid:
                readers[iid] = readers.get(iid, 0) + 1
    pairs: dict[int, int] = {}
    for idx in cands:
        rec = records[idx]
        iid = rec.in_ids[0]
        p = made.get(iid)
        if p is None or p > idx or iid not in reach or readers.get(iid) != 1 \
                or any(iid in k for k in keep):
            continue
        prod = records[p]
        folds = rec.prim.folds
        assert folds is not None
        if not isinstance(prod.prim, Primitive) or prod.prim.name not in folds \
                or not prod.in_ids or not prod.in_ids[0] or prod.in_ids[0] not in reach \
                or p not in visited:
            continue
        if any(i and i in reach for i in (*rec.in_ids[1:], *prod.in_ids[1:])):
            continue
        if idx in skip or p in skip:
            continue
        pairs[idx] = p
    return pairs or None


def marked(masked: set[int] | None, ids: Iterable[int]) -> set[int]:
    """``masked`` (a new set when None) with ``ids`` added: the ids whose gradient may hold
    zeros a selecting VJP made (see :attr:`Primitive.masks`)."""
    if masked is None:
        masked = set()
    masked.update(ids)
    return masked


def fold(rec: Record, prod: Record, g: Array) -> Array | None:
    """The cotangent of ``prod``'s first input through ``prod`` and ``rec`` (see
    :func:`fold_pairs`), or None when the fold declines. The pass adds it to that input's
    gradient when it reaches ``prod``, as the two VJPs in turn would (other contributions to
    that gradient are summed in the same order)."""
    return rec.prim.folds[prod.prim.name](rec, prod, g)  # type: ignore[index]


def unbroadcast(g: Tensor | Array, shape: tuple[int, ...], prim: Primitive) -> Tensor | Array:
    """Sum gradient ``g`` back to an input's ``shape`` (the input was broadcast in the
    forward). Written once for both renderings: backend arrays and Tensors share ``.sum`` and
    ``.reshape`` (on Tensors they are recorded ops, so the result stays differentiable)."""
    gshape = g.shape
    if gshape == shape:
        return g
    tensor = isinstance(g, Tensor)  # (a Tensor's sum is the recorded op, float16 handled there)
    if len(gshape) == len(shape) + 1 and gshape[1:] == shape:  # a bias: sum the leading axis
        return g.sum(axis=0) if tensor else acc_sum(g, 0)
    lead = g.ndim - len(shape)
    if lead < 0 or any(s != 1 and s != gs for s, gs in zip(shape, gshape[lead:])):
        raise ValueError(f"the VJP rule of primitive '{prim.name}' returned a gradient of shape "
                         f"{gshape} for an input of shape {shape} (each gradient has its "
                         "input's shape, or one that sums back to it)")
    axes = tuple(range(lead)) + tuple(lead + i for i, s in enumerate(shape)
                                      if s == 1 and gshape[lead + i] != 1)
    if axes:
        run = 0  # the leading axes summed, a run from axis 0
        while run < len(axes) and axes[run] == run:
            run += 1
        if 0 < run < len(axes) and not tensor and backend_of(g) is NUMPY \
                and g.size >= _SPLIT_SUM_SIZE \
                and math.prod(gshape[:run]) >= _SPLIT_SUM_ROWS:
            # a conv bias's [N, C, H, W] -> [1, C, 1, 1]: the leading axes first (whole rows
            # added, vectorized), then the rest of a result N times smaller; NumPy's one pass
            # over (0, 2, 3) runs 2-3x slower from N = 16 (with fewer rows the partial sum is
            # nearly the input's size and the two passes cost more). Host arrays, traced ones
            # included (a compiled step replays the eager pass's calls); a device's reduction
            # is one kernel either way. float16 stays in float32 between the passes and is
            # rounded once, as the one pass rounds it
            part = acc_sum(g, tuple(range(run)), True, rounded=False)
            total = acc_sum(part, axes, True)
            return (total.astype(np.float16) if g.dtype == np.float16 else total).reshape(shape)
        g = g.sum(axis=axes, keepdims=True) if tensor else acc_sum(g, axes, True)
    return g.reshape(shape)


_SPLIT_SUM_SIZE = 1 << 12
_SPLIT_SUM_ROWS = 16


class Accumulator:
    """The gradients of one reverse pass, ``grads`` (id -> array), and the chore of adding a
    contribution: summed back to the input's shape, cast to its dtype, added in place where the
    pass owns the buffer. Fused runs (:mod:`.fusion`) add through the same object.

    ``owned`` holds the ids whose gradient array this pass allocated and nothing else
    references, so later contributions may be added into it in place (a VJP may pass its
    upstream gradient through, as ``add`` does: such arrays are never written).
    """

    __slots__ = ("grads", "owned")

    def __init__(self, grads: dict[int, Array]) -> None:
        self.grads = grads
        self.owned: set[int] = set()

    def add(self, iid: int, gi: Array, shape: tuple[int, ...], dt: np.dtype, prim: Primitive,
            fresh: bool) -> None:
        """Add array ``gi`` to the gradient of ``iid`` (an input of ``shape`` and dtype ``dt``);
        ``fresh``: ``gi`` was allocated for this contribution alone and may be written."""
        grads, owned = self.grads, self.owned
        if gi.shape != shape:
            size = gi.size
            gi = unbroadcast(gi, shape, prim)
            fresh = fresh or gi.size != size  # a sum made a new array; a reshape is a view
        if gi.dtype != dt:
            gi = gi.astype(dt)
            fresh = True
        if isinstance(gi, np.generic):
            fresh = False
        prev = grads.get(iid)
        if prev is None:
            grads[iid] = gi
            if fresh:
                owned.add(iid)
            else:
                owned.discard(iid)
        elif iid in owned and prev.shape == gi.shape and (
                type(prev) is type(gi) or _traced_into(prev, gi)):
            prev += gi  # owned: an array, allocated by this pass, referenced nowhere else
            grads[iid] = prev  # (the same array; a new object where ``+=`` cannot write in
            # place: a NumPy scalar inside gt.function's trace)
        elif fresh and prev.shape == gi.shape and (
                type(prev) is type(gi) or _traced_into(gi, prev)):
            gi += prev
            grads[iid] = gi
            owned.add(iid)
        else:
            gi = prev + gi
            grads[iid] = gi
            if isinstance(gi, np.generic):  # 0-d sums come back as immutable scalars
                owned.discard(iid)
            else:
                owned.add(iid)


def _traced_into(dst: Array, src: Array) -> bool:
    """Inside a ``gt.function`` trace: ``dst`` is the trace's array and ``src`` a constant host
    array, so ``dst += src`` is a step the replay follows (as eager mode's in-place add)."""
    return getattr(dst, "_gt_traced", False) and type(src) is np.ndarray


def _vjp_arrays(rec: Record, g: Any, safe: bool = False) -> tuple:
    """First-order VJP on backend arrays: rendered derivative expressions for elementwise
    primitives, the primitive's rule rendered on arrays for every other one. Only a
    custom-gradient call (whose ``grad`` is written in gradtape ops) or a multi-output record
    takes its gradtape-op ``vjp`` (no tape recording); a primitive with no rule raises
    :class:`MissingRuleError` naming it."""
    prim = rec.prim
    if prim.derivatives is not None:
        inputs = rec.inputs
        backend = None
        for t in inputs:
            if t is not None:
                backend = t._backend
                break
        out = rec.output
        if backend is None:
            backend = out._backend if out is not None else (
                NUMPY if type(g) is np.ndarray else backend_of(g))
        if len(inputs) == 1:
            t = inputs[0]
            args: tuple = (None if t is None else t.data, None if out is None else out.data)
        elif len(inputs) == 2:
            t, u = inputs
            args = (None if t is None else t.data, None if u is None else u.data,
                    None if out is None else out.data)
        else:
            args = (*[None if t is None else t.data for t in inputs],
                    None if out is None else out.data)
        if rec.params:
            args += tuple(rec.params.values())
        needs = rec.needs
        if len(needs) == 1:
            return (prim.array_vjp(0, backend, safe)(g, *args),)
        res = []
        for i, need in enumerate(needs):
            res.append(prim.array_vjp(i, backend, safe)(g, *args) if need else None)
        return tuple(res)
    rule = prim.rule
    if rule is not None and not isinstance(g, tuple):
        return rule(ON_NUMPY if type(g) is np.ndarray else on_arrays(backend_of(g).xp), rec, g)
    if prim.vjp is None:
        raise MissingRuleError(f"primitive '{prim.name}' has no VJP rule; it cannot be differentiated")
    if isinstance(g, tuple):  # a multi-output record (Record.extra_outs): None entries stay
        gw: Any = tuple(None if a is None else _wrap(a, backend_of(a)) for a in g)
    else:
        gw = _wrap(g, backend_of(g))
    res = prim.vjp(rec, gw)
    return tuple(None if r is None else (r.data if isinstance(r, Tensor) else r) for r in res)


def backward(tape: Recorder, targets: list[Tensor], seeds: list[Tensor | None],
             sources: list[Tensor], diff: bool, release: bool,
             ready: Callable[[int, Array], None] | None = None) -> dict[int, Tensor | Array]:
    """Reverse pass over ``tape``'s records. Returns ``{source id: gradient}`` (arrays, or
    Tensors when ``diff``: the pass is then made of recorded gradtape ops).

    ``ready`` (first-order passes only; ignored when ``diff``): called as ``ready(source id,
    gradient array)`` as soon as a source's gradient is final, i.e. once every record reading
    the source has been visited, while the rest of the pass still runs (``gt.distributed``
    starts the all-reduce of a full bucket then). The array is the one returned at the end
    and is not written again by the pass; sources without a gradient are never announced.

    NumPy's floating-point warnings are silenced for the pass: derivatives are infinite at
    the documented singular points (``sqrt'(0)``, ``log'(0)`` behind a ``where``) and
    ``gy * d`` is then cleaned up on purpose, so a warning would only be noise (PyTorch and
    TF are silent too); ``check_numerics`` is the tool that reports NaN and inf.
    """
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return _backward(tape, targets, seeds, sources, diff, release, ready)


def _backward(tape: Recorder, targets: list[Tensor], seeds: list[Tensor | None],
              sources: list[Tensor], diff: bool, release: bool,
              ready: Callable[[int, Array], None] | None = None) -> dict[int, Tensor | Array]:
    records = list(tape._records)  # a persistent tape may record the pass itself
    source_ids = set()
    tracked = tape._tracked
    start = set()
    for s in sources:
        if s._id:
            source_ids.add(s._id)
            if s._id in tracked:
                start.add(s._id)
    reach = forward_reach(records, start)
    grads: dict[int, Any] = {}
    for t, seed in zip(targets, seeds):
        if not t._id or t._id not in reach:
            continue
        if seed is None:
            g = t._backend.xp.ones(t.shape, t.dtype)
            g = _wrap(g, t._backend) if diff else g
        else:
            g = seed if diff else seed.data
        prev = grads.get(t._id)
        grads[t._id] = g if prev is None else prev + g
    if not grads:
        return {}
    numerics = HOOKS.numerics
    acc = Accumulator(grads)
    fused = None
    masked: set[int] | None = None
    order: Any = range(len(records) - 1, -1, -1)
    visited: Sequence[int] = range(len(records))
    if not diff and not numerics and config.fusion and len(records) > 1:
        fplan = fusion.plan(records, reach, source_ids | set(grads))
        if fplan is not None:
            fused, order = fplan.runs, fplan.visit
            visited = fplan.visit
    if ready is not None and not diff:  # the loop below is unchanged: the order announces
        order = _announcing(order, records, fused, source_ids, grads, ready)
    folds = None if diff or numerics or not tape._folding else fold_pairs(
        records, visited, reach, (source_ids, grads), fused)
    pending: dict[int, Any] = {}  # folded producer index -> its first input's cotangent
    for idx in order:
        rec = records[idx]
        out_id = rec.out_id
        if out_id not in reach:
            continue
        if pending and idx in pending:  # a folded producer: its input's cotangent, added now
            gz = pending.pop(idx)
            if (masked is not None and out_id in masked) or rec.prim.masks:
                masked = marked(masked, rec.in_ids)
            zid, shape, dt = rec.in_ids[0], rec.in_shapes[0], rec.in_dtypes[0]
            if zid not in grads and gz.shape == shape and gz.dtype == dt:
                grads[zid] = gz
            else:
                acc.add(zid, gz, shape, dt, rec.prim, False)
            if release:
                rec.release()
            continue
        if rec.extra_outs is None:
            g = grads.get(out_id) if out_id in source_ids else grads.pop(out_id, None)
            if g is None:
                continue
        else:
            g = _gather_outputs((out_id, *rec.extra_outs), grads, source_ids)
            if g is None:
                continue
        # "0 times anything is 0" upstream of a selecting VJP (Primitive.masks): ids whose
        # gradient may hold zeros that a where/relu/max/indexing made, so an unselected value
        # that overflowed to inf cannot turn them into NaN; set on the way down (every consumer
        # of an id comes later on the tape, so it is complete when its producer is reached)
        safe = masked is not None and out_id in masked
        if fused is not None:
            run = fused.get(idx)
            if run is not None:
                passed = run(g, acc, reach, safe)
                if passed:
                    if masked is None:
                        masked = set()
                    masked.update(passed)
                if release:  # the run's members are done too
                    for m in run.members:
                        r = records[m]
                        r.inputs = _NONE1 if len(r.inputs) == 1 else (None,) * len(r.inputs)
                        r.output = None
                continue
        prim = rec.prim
        if folds is not None and idx in folds:  # this VJP and its input's producer's at once
            gz = fold(rec, records[folds[idx]], g)
            if gz is not None:
                pending[folds[idx]] = gz
                if safe or prim.masks:
                    masked = marked(masked, rec.in_ids)
                if release:
                    rec.release()
                continue
        if diff:
            in_grads = prim.vjp(rec, g, True) if safe and prim.derivatives is not None else prim.vjp(rec, g)
        else:
            in_grads = _vjp_arrays(rec, g, safe)
        if safe or prim.masks:
            masked = marked(masked, rec.in_ids)
        if len(in_grads) != len(rec.in_ids):
            raise ValueError(f"the VJP rule of primitive '{rec.prim.name}' returned "
                             f"{len(in_grads)} gradients for {len(rec.in_ids)} inputs (one per "
                             "input, None for an input without one)")
        for i, gi in enumerate(in_grads):
            iid = rec.in_ids[i]
            if gi is None or not iid or iid not in reach:
                continue
            shape = rec.in_shapes[i]
            if diff:
                if not isinstance(gi, Tensor):
                    gi = _wrap(gi, backend_of(gi))
                if gi.shape != shape:
                    gi = unbroadcast(gi, shape, rec.prim)
                if gi.dtype != rec.in_dtypes[i]:
                    gi = gi.astype(rec.in_dtypes[i])
            else:
                if numerics:
                    check_finite(rec.prim, (), gi, "backward", rec.where)
                dt = rec.in_dtypes[i]
                if iid not in grads and gi.shape == shape and gi.dtype == dt:  # first, as is
                    grads[iid] = gi  # not owned: the VJP may have passed its input through
                    continue
                acc.add(iid, gi, shape, dt, rec.prim, False)
                continue
            prev = grads.get(iid)
            grads[iid] = gi if prev is None else prev + gi
        if release:
            rec.release()
    return {i: grads[i] for i in source_ids if i in grads}


def _announcing(order: Iterable[int], records: list[Record], fused: dict[int, Any] | None,
                source_ids: set[int], grads: dict[int, Any],
                ready: Callable[[int, Array], None]) -> Iterator[int]:
    """``order`` (record indices, descending), calling ``ready(sid, grads[sid])`` for each
    source before the first index that comes after the last visit that can add to its
    gradient: the smallest index of a record reading it, or, for a member of a fused run,
    its run's sink (the whole run executes when the sink is visited)."""
    visit_of: dict[int, int] = {}
    if fused:
        for sink, run in fused.items():
            for m in run.members:
                visit_of[m] = sink
    last: dict[int, int] = {}  # source id -> the smallest visit position of a reader
    for idx, rec in enumerate(records):
        pos = visit_of.get(idx, idx)
        for iid in rec.in_ids:
            if iid in source_ids and pos < last.get(iid, len(records)):
                last[iid] = pos
    pending = sorted(((last.get(sid, len(records)), sid) for sid in source_ids), reverse=True)
    k, n = 0, len(pending)
    for idx in order:
        while k < n and pending[k][0] > idx:
            g = grads.get(pending[k][1])
            if g is not None:
                ready(pending[k][1], g)
            k += 1
        yield idx
    for _, sid in pending[k:]:
        g = grads.get(sid)
        if g is not None:
            ready(sid, g)


def _gather_outputs(ids: tuple[int, ...], grads: dict[int, Tensor | Array],
                    source_ids: set[int]) -> tuple[Tensor | Array | None, ...] | None:
    """The upstream gradients of a multi-output record's outputs ``ids`` (None: none of them
    has one)."""
    gs = [grads.get(i) if i in source_ids else grads.pop(i, None) for i in ids]
    if all(g is None for g in gs):
        return None
    return tuple(gs)
