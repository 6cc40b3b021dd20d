"""Chain fusion of elementwise backward records.

At ``gradient()`` time (first order only: no outer tape recording, no transform active, and
``gt.config.fusion`` on) :func:`plan` groups the elementwise records into *runs*: maximal sets
whose intermediates are read only inside the run, all of the run's output shape and dtype.
Each run has one *sink* (the record producing its output); when the reverse pass reaches the
sink, the whole run's backward executes as one kernel:

* NumPy: one straight-line ufunc program over the run
  (:class:`gradtape._src.codegen.numpy_program.NumpyProgram`), block by block with reused
  scratch buffers;
* CuPy: one generated ``ElementwiseKernel`` (:func:`gradtape._src.codegen.cuda.cupy_kernel`).

Each kernel writes the gradient of each input of the run that is not produced inside it:
into a fresh buffer on its first contribution (no zero fill), or accumulating in place into a
gradient buffer the engine allocated and owns. Interior gradients never reach memory. Kernels
are cached by signature (op sequence, which saved array feeds which slot, dtypes, gradient
targets, output modes); broadcast inputs are read broadcast and their gradients summed back
by the engine after the kernel. Fused kernels are never differentiated: higher-order passes
take the differentiable route in :mod:`.engine`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from ..backend import _HALF, Array, ArrayModule, backend_of
from ..codegen.cuda import cupy_kernel
from ..codegen.graph import Graph, backward_graph
from ..codegen.numpy_program import numpy_program, run_numpy
from ..primitive import Primitive
from .record import Record
from .state import STATE

if TYPE_CHECKING:  # the engine imports this module
    from .engine import Accumulator

__all__ = ["plan", "Plan", "Run", "Gathered", "STATS", "MAX_RUN", "MIN_SMALL_RUN", "MIN_RUN_BY_SIZE"]

MAX_RUN = 256  # members per run: bounds the generated program and its compile time
# Fewest members worth a kernel, by the run's element count: a kernel has a fixed Python cost
# (plan, gather, program call) of about the per-record cost of a few dozen small records, so
# small arrays need long runs before it pays, and large ones fuse from a few members. The
# break-even points (fusion on vs off for chains of tanh/sin/cos/mul/add) are recorded in
# benchmarks/RESULTS.md.
MIN_RUN_BY_SIZE = ((1024, 28), (8192, 16), (16384, 6))
MIN_SMALL_RUN = 3  # fewest members for larger runs
STATS = {"runs": 0, "records": 0}  # fused kernel launches and the records they covered


def _out_shape(rec: Record) -> tuple[int, ...]:
    shapes = rec.in_shapes
    s0 = shapes[0]
    if len(shapes) == 2:
        s1 = shapes[1]
        if s1 == s0 or not s1:
            return s0
        if not s0:
            return s1
        n0, n1 = len(s0), len(s1)
        if n0 > n1 and s0[n0 - n1:] == s1:  # x + bias
            return s0
        if n1 > n0 and s1[n1 - n0:] == s0:
            return s1
        return tuple(np.broadcast_shapes(*shapes))
    for s in shapes[1:]:
        if s != s0:
            return tuple(np.broadcast_shapes(*shapes))
    return s0


def _out_dtype(rec: Record) -> np.dtype:
    dts = rec.in_dtypes
    d0 = dts[0]
    for d in dts[1:]:
        if d != d0:
            return np.result_type(*dts)
    return d0


def plan(records: list[Record], reach: set[int], keep: set[int]) -> Plan | None:
    """Group the elementwise records of a reverse pass into runs.

    Args:
        records: the tape's records in execution order.
        reach: ids reachable from the requested sources.
        keep: ids whose gradient must be materialized (sources, targets with a seed).

    Returns:
        a :class:`Plan` (``runs``: ``{sink record index: Run}``; ``visit``: the record indices
        the reverse pass must still visit, in reverse order), or None when no run forms.
        Members other than the sink receive no gradient of their own, so the engine skips
        them.
    """
    if MIN_RUN_BY_SIZE and len(records) < MIN_RUN_BY_SIZE[0][1]:
        # too few records for a run of small arrays: unless some elementwise record is
        # larger, nothing can fuse (a cheap pre-check that keeps small graphs cheap)
        limit = MIN_RUN_BY_SIZE[0][0]
        prod = math.prod
        big = False
        for rec in records:
            if rec.prim.derivatives is not None:
                for s in rec.in_shapes:
                    if prod(s) > limit:
                        big = True
                        break
                if big:
                    break
        if not big:
            return None
    # One reverse sweep. tag[id] says who reads an id, as seen so far (all its readers come
    # later on the tape, so they are seen first): the sink of the one run all readers belong
    # to, with the run's shape and dtype at every read, or -1.
    tag: dict[int, int] = {}
    tag_get, tag_set = tag.get, tag.setdefault
    groups: dict[int, list[int]] = {}
    shape_of: dict[int, tuple[int, ...]] = {}
    dtype_of: dict[int, np.dtype] = {}
    visit: list[int] = []
    masking: set[int] = set()  # sinks of runs with a selecting member (Primitive.masks)
    for idx in range(len(records) - 1, -1, -1):
        rec = records[idx]
        o = rec.out_id
        if o not in reach:
            continue
        in_ids = rec.in_ids
        prim = rec.prim
        if prim.derivatives is None or rec.extra_outs is not None or (
                prim.half_in_float32 and rec.in_dtypes[0] == _HALF):
            # (a float16 member evaluated in float32 takes its own VJP: a host run computes in
            # the run's dtype)
            visit.append(idx)
            for iid in in_ids:
                if iid:
                    tag[iid] = -1
            continue
        sink = tag_get(o, -1)
        if sink >= 0 and o not in keep:
            group = groups[sink]
            if len(group) < MAX_RUN:
                group.append(idx)
                if prim.masks:
                    masking.add(sink)
                shape, dtype = shape_of[sink], dtype_of[sink]
                if len(in_ids) == 1:  # the common one-input member, kept flat
                    iid = in_ids[0]
                    if iid and (rec.in_shapes[0] != shape or rec.in_dtypes[0] != dtype
                                or tag_set(iid, sink) != sink):
                        tag[iid] = -1
                    continue
                if len(in_ids) == 2:  # binary members, unrolled as the above
                    in_shapes, in_dtypes = rec.in_shapes, rec.in_dtypes
                    iid = in_ids[0]
                    if iid and (in_shapes[0] != shape or in_dtypes[0] != dtype
                                or tag_set(iid, sink) != sink):
                        tag[iid] = -1
                    iid = in_ids[1]
                    if iid and (in_shapes[1] != shape or in_dtypes[1] != dtype
                                or tag_set(iid, sink) != sink):
                        tag[iid] = -1
                    continue
                _tag_inputs(rec, in_ids, sink, shape, dtype, tag, tag_set)
                continue
        visit.append(idx)
        dtype = _out_dtype(rec)
        if dtype.kind != "f":
            for iid in in_ids:
                if iid:
                    tag[iid] = -1
            continue
        groups[idx] = [idx]
        if prim.masks:
            masking.add(idx)
        shape = shape_of[idx] = _out_shape(rec)
        dtype_of[idx] = dtype
        _tag_inputs(rec, in_ids, idx, shape, dtype, tag, tag_set)
    runs = {}
    dropped = False
    for sink, members in groups.items():
        if len(members) >= _min_run(math.prod(shape_of[sink])):
            runs[sink] = Run(records, members[::-1], shape_of[sink], dtype_of[sink],
                             sink in masking)
        elif len(members) > 1:  # its members are visited one by one after all
            visit.extend(members[1:])
            dropped = True
    if not runs:
        return None
    if dropped:
        visit.sort(reverse=True)
    return Plan(runs, visit)


def _min_run(size: int) -> int:
    for limit, n in MIN_RUN_BY_SIZE:
        if size <= limit:
            return n
    return MIN_SMALL_RUN


def _tag_inputs(rec: Record, in_ids: tuple[int, ...], sink: int, shape: tuple[int, ...],
                dtype: np.dtype, tag: dict[int, int], tag_set: Callable[[int, int], int]) -> None:
    in_shapes, in_dtypes = rec.in_shapes, rec.in_dtypes
    for slot, iid in enumerate(in_ids):
        if iid:
            if in_shapes[slot] != shape or in_dtypes[slot] != dtype or tag_set(iid, sink) != sink:
                tag[iid] = -1


class Plan:
    """The runs of one reverse pass and the records it still visits one by one."""

    __slots__ = ("runs", "visit")

    def __init__(self, runs: dict[int, Run], visit: list[int]) -> None:
        self.runs = runs
        self.visit = visit


class Run:
    """The fused backward of one run of elementwise records (members in execution order)."""

    __slots__ = ("records", "members", "shape", "dtype", "masked_after", "masks")

    def __init__(self, records: list[Record], members: list[int], shape: tuple[int, ...],
                 dtype: np.dtype, masks: bool = False) -> None:
        self.records = records
        self.members = members
        self.shape = shape
        self.dtype = dtype
        self.masks = masks  # a member selects (Primitive.masks)
        # masked_after[j]: a member after j selects, so member j's incoming gradient may hold
        # zeros it made and j takes the safe product (None: no member selects)
        self.masked_after: list[bool] | None = None
        if masks:
            after = False
            flags = []
            for idx in reversed(members):
                flags.append(after)
                after = after or records[idx].prim.masks
            self.masked_after = flags[::-1]

    def gather(self, g: Array, reach: set[int], safe: bool = False) -> Gathered | None:
        """Collect what the kernel reads (saved arrays, parameters) and where each gradient
        goes, and the cache key of the kernel; None when no input needs one.

        A saved input that is the saved output of the member producing it reuses that leaf
        (the chain case); other saved arrays each take a leaf of their own. ``safe``: ``g`` may
        hold zeros a selecting VJP made downstream, so every member takes the safe product.
        """
        records = self.records
        shape, dtype = self.shape, self.dtype
        masked_after = self.masked_after
        if isinstance(g, np.generic):
            g = np.asarray(g)
        if g.dtype != dtype:
            g = g.astype(dtype)
        if g.shape != shape:
            g = _xp_of(g).broadcast_to(g, shape)
        leaves: list[Array] = [g]
        add_leaf = leaves.append
        params: list[Any] = []  # scalar parameters, as the primitives take them
        parts: list[tuple] = []
        add_part = parts.append
        interior: dict[int, int] = {}  # id produced inside the run -> member index
        y_leaves: list[int | None] = []  # member index -> leaf of its saved output (or None)
        out_ids: list[int] = []
        out_info: list[tuple[tuple[int, ...], np.dtype, Primitive]] = []
        out_index: dict[int, int] = {}
        for j, idx in enumerate(self.members):
            rec = records[idx]
            prim = rec.prim
            inputs = rec.inputs
            in_ids = rec.in_ids
            if len(inputs) == 1:  # the common one-input member, kept flat
                iid = in_ids[0]
                m = interior.get(iid)
                t = inputs[0]
                if t is None:
                    values_t: tuple = _NONE1
                elif m is not None and y_leaves[m] is not None:
                    values_t = (y_leaves[m],)
                else:
                    values_t = (len(leaves),)
                    add_leaf(t.data)
                if m is not None:
                    targets_t: tuple = (_INTERIOR[m],)
                elif not iid or iid not in reach:
                    targets_t = _NONE1
                else:
                    k = out_index.get(iid)
                    if k is None:
                        k = out_index[iid] = len(out_ids)
                        out_ids.append(iid)
                        out_info.append((rec.in_shapes[0], rec.in_dtypes[0], prim))
                    targets_t = (("o", k),)
            elif len(inputs) == 2:  # binary members (x * 2.0, a + w), unrolled as the above
                ia, ib = in_ids
                ta, tb = inputs
                ma = interior.get(ia)
                mb = interior.get(ib)
                va: int | None
                vb: int | None
                if ta is None:
                    va = None
                elif ma is not None and y_leaves[ma] is not None:
                    va = y_leaves[ma]
                else:
                    va = len(leaves)
                    add_leaf(ta.data)
                if tb is None:
                    vb = None
                elif mb is not None and y_leaves[mb] is not None:
                    vb = y_leaves[mb]
                else:
                    vb = len(leaves)
                    add_leaf(tb.data)
                tga: tuple[str, int] | None
                tgb: tuple[str, int] | None
                if ma is not None:
                    tga = _INTERIOR[ma]
                elif not ia or ia not in reach:
                    tga = None
                else:
                    k = out_index.get(ia)
                    if k is None:
                        k = out_index[ia] = len(out_ids)
                        out_ids.append(ia)
                        out_info.append((rec.in_shapes[0], rec.in_dtypes[0], prim))
                    tga = ("o", k)
                if mb is not None:
                    tgb = _INTERIOR[mb]
                elif not ib or ib not in reach:
                    tgb = None
                else:
                    k = out_index.get(ib)
                    if k is None:
                        k = out_index[ib] = len(out_ids)
                        out_ids.append(ib)
                        out_info.append((rec.in_shapes[1], rec.in_dtypes[1], prim))
                    tgb = ("o", k)
                values_t, targets_t = (va, vb), (tga, tgb)
            else:
                values: list[int | None] = []
                targets: list[tuple[str, int] | None] = []
                for i, iid in enumerate(in_ids):
                    m = interior.get(iid) if iid else None
                    t = inputs[i]
                    if t is None:
                        values.append(None)
                    elif m is not None and y_leaves[m] is not None:
                        values.append(y_leaves[m])
                    else:
                        values.append(len(leaves))
                        add_leaf(t.data)
                    if m is not None:
                        targets.append(_INTERIOR[m])
                    elif not iid or iid not in reach:
                        targets.append(None)
                    else:
                        k = out_index.get(iid)
                        if k is None:
                            k = out_index[iid] = len(out_ids)
                            out_ids.append(iid)
                            out_info.append((rec.in_shapes[i], rec.in_dtypes[i], prim))
                        targets.append(("o", k))
                values_t, targets_t = tuple(values), tuple(targets)
            y_leaf = None
            if rec.output is not None:
                y_leaf = len(leaves)
                add_leaf(rec.output.data)
            y_leaves.append(y_leaf)
            pslots: tuple[int, ...] = ()
            if prim.param_names:
                pslots = tuple(range(len(params), len(params) + len(prim.param_names)))
                params.extend(rec.params[n] for n in prim.param_names)
            interior[rec.out_id] = j
            add_part((prim, values_t, y_leaf, pslots, targets_t,
                      safe or (masked_after is not None and masked_after[j])))
        if not out_ids:
            return None
        leaf_dtypes = tuple([a.dtype for a in leaves])
        key = (dtype, tuple(parts), leaf_dtypes)
        return Gathered(key, parts, leaves, leaf_dtypes, params, out_ids, out_info)

    def __call__(self, g: Array, acc: Accumulator, reach: set[int],
                 safe: bool = False) -> list[int] | None:
        """Run the kernel for upstream gradient ``g`` and add each external input's gradient
        through the pass's :class:`~gradtape._src.autodiff.engine.Accumulator` ``acc``: in
        place into the buffers it owns, else into fresh buffers (first contribution).

        Returns the ids that received a gradient which may hold selection zeros (``safe``, or
        a member selects), for the engine to treat their producers as safe; else None."""
        ga = self.gather(g, reach, safe)
        if ga is None:
            return None
        grads, owned = acc.grads, acc.owned
        shape, dtype = self.shape, self.dtype
        leaves, out_ids = ga.leaves, ga.out_ids
        # a traced leaf, if any (gt.function): buffers made *_like it are seen by the trace;
        # the upstream gradient first, as eagerly, so the outputs take its memory layout
        # (a later sum over an output adds in layout order: another layout, other last bits)
        like = leaves[0]
        if not getattr(like, "_gt_traced", False) and not _PLAIN_TYPES.issuperset(map(type, leaves)):
            like = next((a for a in leaves if getattr(a, "_gt_traced", False)), like)
        # (a 0-d value may be a NumPy scalar, which a ufunc returns for 0-d operands)
        is_numpy = isinstance(like.a if getattr(like, "_gt_traced", False) else like,
                              (np.ndarray, np.generic))
        modes = []
        outs: list[Array] = []  # None until allocated, and where the output is an aliased leaf
        tr = STATE.trace
        tracing = tr is not None and not tr.suspended
        for iid in out_ids:
            prev = grads.get(iid)
            if prev is not None and iid in owned and prev.shape == shape and prev.dtype == dtype \
                    and prev.flags.c_contiguous and not isinstance(
                        prev.a if getattr(prev, "_gt_traced", False) else prev, np.generic) \
                    and (not tracing or getattr(prev, "_gt_traced", False)):
                # (a NumPy scalar, what a ufunc gives for 0-d operands, is no buffer to write;
                # inside gt.function's trace, neither is a gradient made of constants alone,
                # such as two sums' broadcast ones: the replay cannot follow writes into an
                # array made outside the trace, so this run writes a fresh traced buffer and
                # the accumulator adds the two)
                modes.append(True)
                outs.append(prev)
            else:
                modes.append(False)
                outs.append(None)
        acc_t = tuple(modes)
        if is_numpy:
            prog = numpy_program(ga.key, ga.graph, acc_t, dtype)
            alias = prog.alias
            xp: Any = np
        else:
            xp = _xp_of(leaves[0])
            # (in a gt.function trace xp is the trace's namespace: the kernel is the module's
            # own, cached as in eager mode, and the trace logs its call below)
            spec, kernel = cupy_kernel(ga.key, ga.graph, ga.dtype_names(), dtype.name,
                                       acc_t, xp=getattr(xp, "_gt_real", xp))
            alias = spec.alias
        for k in range(len(out_ids)):
            if outs[k] is None and alias[k] is None:
                outs[k] = _empty_as(xp, like, leaves[0], dtype, shape)
        if is_numpy:
            if tracing and all(
                    getattr(outs[k], "_gt_traced", False) and outs[k].tr is tr
                    for k in prog.outputs):
                # gt.function: the run is one step of the program (its statements are not
                # traced one by one), which the replay runs as eager mode does; its outputs are
                # this trace's arrays, which it writes in place
                tr.call(run_numpy, (prog, leaves, ga.params, outs, shape, dtype), {})
            else:
                run_numpy(prog, leaves, ga.params, outs, shape, dtype)
        elif spec.outputs:  # (none when every output is one of the run's leaves as it is)
            args = [leaves[i] for i in spec.leaves] + [ga.params[i] for i in spec.params]
            args += [outs[k] for k in spec.outputs]
            if tracing:  # gt.function on a device: a program step
                tr.call(kernel, tuple(args), {})
            else:
                kernel(*args)
        STATS["runs"] += 1
        STATS["records"] += len(self.members)
        for k, iid in enumerate(out_ids):
            if acc_t[k]:
                continue
            in_shape, in_dtype, prim = ga.out_info[k]
            leaf = alias[k]
            if leaf is not None:
                acc.add(iid, leaves[leaf], in_shape, in_dtype, prim, False)
            else:
                acc.add(iid, outs[k], in_shape, in_dtype, prim, True)
        return out_ids if (safe or self.masks) else None


def _empty_as(xp: Any, like: Any, layout: Any, dtype: np.dtype, shape: tuple[int, ...]) -> Any:
    """``xp.empty_like(like, dtype, shape=shape)`` in the memory layout that
    ``empty_like(layout, ...)`` would have: the same buffer as eagerly where ``like`` is a
    traced leaf standing in for an untraced upstream gradient ``layout`` (a constant
    cotangent, transposed or broadcast, say), so sums over it add in the same order."""
    if like is layout or getattr(layout, "_gt_traced", False):
        return xp.empty_like(like, dtype, shape=shape)
    real = np if isinstance(layout, np.generic) else _xp_of(layout)
    # the array module's order="K" choice for ``layout`` (trace time only): a permutation of
    # C order (C itself for a broadcast or a NumPy scalar), which ``like``'s own would not be
    strides = getattr(real, "_gt_real", real).empty_like(layout, dtype, shape=shape).strides
    perm = sorted(range(len(shape)), key=lambda i: -strides[i])
    buf = xp.empty_like(like, dtype, shape=tuple(shape[i] for i in perm), order="C")
    return buf if perm == list(range(len(shape))) else buf.transpose(np.argsort(perm).tolist())


class Gathered:
    """What one execution of a run reads and writes.

    Attributes:
        key: the kernel cache key (op sequence, saved-array wiring, dtypes, targets).
        leaves: arrays the kernel may read; ``leaves[0]`` is the upstream gradient.
        params: scalar parameters (leaky_relu's slope, ...).
        out_ids: tape ids of the run's inputs that receive a gradient, one per output.
        out_info: ``(input shape, input dtype, primitive)`` per output, for the engine.
    """

    __slots__ = ("key", "specs", "leaves", "leaf_dtypes", "params", "out_ids", "out_info")

    def __init__(self, key: tuple, specs: list[tuple], leaves: list[Array],
                 leaf_dtypes: tuple[np.dtype, ...], params: list[Any], out_ids: list[int],
                 out_info: list[tuple[tuple[int, ...], np.dtype, Primitive]]) -> None:
        self.key = key
        self.specs = specs
        self.leaves = leaves
        self.leaf_dtypes = leaf_dtypes
        self.params = params
        self.out_ids = out_ids
        self.out_info = out_info

    def graph(self) -> Graph:
        """The backward DAG (built only on a kernel-cache miss)."""
        kinds = tuple("b" if d.kind == "b" else "f" for d in self.leaf_dtypes)
        return backward_graph(self.specs, kinds, len(self.params), len(self.out_ids))

    def dtype_names(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.leaf_dtypes)


_NONE1 = (None,)
_PLAIN_TYPES = frozenset((np.ndarray,))  # leaf types that are never traced (a quick test first)
_INTERIOR = tuple(("m", j) for j in range(MAX_RUN))  # shared target tuples


def _xp_of(a: Array) -> ArrayModule:
    if isinstance(a, (np.ndarray, np.generic)):
        return np
    return backend_of(a).xp
