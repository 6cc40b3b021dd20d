"""Recording: the one path by which an op, a custom gradient or a Variable read enters a tape.

:func:`record` is called by ``bind`` (every primitive) and by ``custom_gradient`` after the
forward has run, whenever some tape or watcher is active (``HOOKS.on``). For each recording
tape of this thread that follows one of the inputs it appends one :class:`Record`: what the
VJP needs (saved inputs/output, shapes, dtypes, params) and the ids linking it into the graph.
Trainable Variables read inside a tape's context are watched on the way. Then each active
forward accumulator (``STATE.forward``) computes the output's tangent (:class:`ForwardRecorder`).

:class:`Recorder` is the part of a tape this layer owns: its records, the ids it tracks, the
Variables it watches and why a tracked value left it (for the unconnected-gradient message).
``GradientTape`` (in :mod:`.tape`, above the ops) adds the public API.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from ..backend import Array
from ..config import HOOKS
from ..tensor import Tensor, Variable, _next_id
from .state import STATE, opaque, user_line

if TYPE_CHECKING:  # the layer above, named in annotations only
    from ..primitive import Primitive

# On the recording path ``t._is_variable`` stands for ``isinstance(t, Variable)`` (one attribute
# read per operand). A type checker cannot narrow on it, so the lines that then use a Variable's
# fields (``_trainable``, ``_snapshot``) carry ``# type: ignore[attr-defined]`` / ``[arg-type]``.

__all__ = ["Recorder", "ForwardRecorder", "Record", "RecordX", "record", "record_one", "record_two",
           "record_general", "check_finite", "note_batch_statistics"]

_F32, _F64 = np.dtype(np.float32), np.dtype(np.float64)  # identity checks first (per-op cost)


class Recorder:
    """What a tape records: ``_records`` in execution order, ``_tracked`` ids, the watched
    ``_variables`` (id -> Variable), ``_cuts`` (id -> why its value left the tape) and
    ``_folding``: whether a record's primitive may fold its input's producer's VJP
    (:attr:`Primitive.folds`; set as such a record is made, so a pass over a tape without one
    looks for none), and ``_mixed``: batch statistics computed while it recorded on values it
    did not record (:func:`note_batch_statistics`), the first one's op and line per batch
    size."""

    __slots__ = ("_records", "_tracked", "_variables", "_cuts", "_watch_accessed", "_vlevel",
                 "_folding", "_mixed")

    def __init__(self, watch_accessed_variables: bool) -> None:
        self._watch_accessed = bool(watch_accessed_variables)
        self._vlevel = 0  # the vmap level it was entered at (STATE.vmap_level): see batched.py
        self._records: list[Record] = []
        self._tracked: set[int] = set()
        self._variables: dict[int, Variable] = {}
        self._cuts: dict[int, str] = {}
        self._folding = False
        self._mixed: dict[int, str] = {}

    def _watch_variable(self, v: Variable) -> None:
        self._tracked.add(v._id)
        self._variables[v._id] = v

    def _watch_tensor(self, t: Tensor) -> None:
        if t._is_variable:
            self._watch_variable(t)  # type: ignore[arg-type]  # _is_variable: a Variable
        else:
            if not t._id:
                t._id = _next_id()
            self._tracked.add(t._id)

    def _cut(self, args: tuple[Tensor, ...], needs: tuple[bool, ...], reason: str) -> None:
        line = user_line()
        for a, need in zip(args, needs):
            if need and a._id not in self._cuts:
                self._cuts[a._id] = f"{reason} (at {line})"

    def _clear(self) -> None:
        self._records = []
        self._tracked = set()
        self._cuts = {}
        self._mixed = {}


#: Batch sizes whose untracked batch statistics a tape keeps at most (the first of each: one
#: is enough to refuse per-example gradients over that many examples).
_MIXED_KEPT = 16


def note_batch_statistics(stat: Tensor, batch: int, what: str) -> None:
    """``stat`` (a statistic over the batch axis of ``batch`` examples, e.g. a BatchNorm's
    batch mean in training) was just computed: every recording tape that did not record it
    (its input untracked: a frozen backbone, ``trainable=False``) notes it, so that
    per-example gradients on that tape can refuse data whose examples were mixed before the
    tape saw them."""
    where = None
    for tape in STATE.recording:
        if stat._id and stat._id in tape._tracked:
            continue
        mixed = tape._mixed
        if batch not in mixed and len(mixed) < _MIXED_KEPT:
            where = where or f"{what} at {user_line()}"
            mixed[batch] = where


class ForwardRecorder:
    """What a forward accumulator is to the recording path: while it is on ``STATE.forward``,
    :func:`record` calls its ``_accumulate`` after every op (``level``: its index on the
    stack, outermost first), which computes and stores the output's tangent. The rules it needs
    live above this layer (``gradtape/_src/frontend/forward.py``)."""

    __slots__ = ()

    def _accumulate(self, prim: Primitive, args: tuple[Tensor, ...], out: Tensor,
                    params: dict[str, Any], extra_outs: tuple[Tensor, ...], level: int) -> None:
        raise NotImplementedError


class Record:
    """One recorded op: what its VJP needs, and the ids that link it into the graph."""

    __slots__ = ("prim", "inputs", "output", "in_ids", "in_shapes", "in_dtypes", "params",
                 "needs", "out_id")
    prim: Primitive
    inputs: tuple[Tensor | None, ...]  # saved inputs (None: not saved)
    output: Tensor | None  # the saved output
    in_ids: tuple[int, ...]  # 0: the input needs no gradient
    in_shapes: tuple[tuple[int, ...], ...]
    in_dtypes: tuple[np.dtype, ...]
    params: dict[str, Any]
    needs: tuple[bool, ...]
    out_id: int
    extra_outs: tuple[int, ...] | None = None  # ids of outputs 2.. of a multi-output op (RecordX)
    where: str | None = None  # the user line, kept when check_numerics is on (RecordX)

    def __init__(self, prim: Primitive, args: tuple[Tensor, ...], out: Tensor, params: dict[str, Any],
                 needs: tuple[bool, ...]) -> None:
        # The hot path of recording: kept flat, with a branch for the common one-input op.
        self.prim = prim
        self.params = params
        self.needs = needs
        self.out_id = out._id
        if len(args) == 1:
            a = args[0]
            data = a.data
            self.in_ids = (a._id,)
            self.in_shapes = (data.shape,)
            self.in_dtypes = (data.dtype,)
            if prim.derivatives is not None:  # elementwise: keep only what d reads
                saves = prim._saves.get(needs) or prim.saved_names(needs)
                keep = saves[0]
                self.output = out if saves[1] else None
            else:
                keep = prim.saves_inputs
                self.output = out if prim.saves_output else None
            if not keep:
                self.inputs = _NONE1
            elif a._is_variable:  # copy-on-write view: a later assign() must not change the VJP
                self.inputs = (a._snapshot(),)  # type: ignore[attr-defined]  # _is_variable: a Variable
            else:
                self.inputs = args
            return
        if prim.derivatives is not None:
            saves = prim._saves.get(needs) or prim.saved_names(needs)
            self.output = out if saves[-1] else None
        else:
            saves = _ALL_SAVED if prim.saves_inputs else _NONE_SAVED
            self.output = out if prim.saves_output else None
        if len(args) == 2:  # binary ops, unrolled (comprehensions are calls on Python 3.11)
            a, b = args
            da, db = a.data, b.data
            self.in_ids = (a._id if needs[0] else 0, b._id if needs[1] else 0)
            self.in_shapes = (da.shape, db.shape)
            self.in_dtypes = (da.dtype, db.dtype)
            # (_is_variable: a Variable, with _snapshot)
            self.inputs = (None if not saves[0] else (a._snapshot() if a._is_variable else a),  # type: ignore[attr-defined]
                           None if not saves[1] else (b._snapshot() if b._is_variable else b))  # type: ignore[attr-defined]
            return
        self.in_ids = tuple([a._id if need else 0 for a, need in zip(args, needs)])
        self.in_shapes = tuple([a.data.shape for a in args])
        self.in_dtypes = tuple([a.data.dtype for a in args])
        if prim.derivatives is None:
            saves = (prim.saves_inputs,) * len(args)
        self.inputs = tuple([None if not keep else (a._snapshot() if a._is_variable else a)  # type: ignore[attr-defined]
                             for a, keep in zip(args, saves)])

    def with_needs(self, needs: tuple[bool, ...]) -> Record:
        """A shallow copy asking the VJP for the inputs ``needs`` only (field by field: a
        ``copy.copy`` of a slotted object goes through ``__reduce_ex__``, several times the
        cost)."""
        r = _new_record(type(self))
        r.prim, r.inputs, r.output, r.params = self.prim, self.inputs, self.output, self.params
        r.in_ids, r.in_shapes, r.in_dtypes = self.in_ids, self.in_shapes, self.in_dtypes
        r.out_id, r.needs = self.out_id, needs
        if isinstance(self, RecordX):
            rx = cast(RecordX, r)
            rx.extra_outs, rx.where = self.extra_outs, self.where
        return r

    def release(self) -> None:
        """Drop the saved arrays (a non-persistent tape, once the VJP has run)."""
        self.inputs = (None,) * len(self.inputs)
        self.output = None

    def saved_arrays(self) -> Iterator[Array]:
        for t in (*self.inputs, self.output):
            if t is not None:
                yield t.data


class RecordX(Record):
    """A record with the rarely used fields set: multi-output ops and numerics checking."""

    __slots__ = ("extra_outs", "where")

    def __init__(self, prim: Primitive, args: tuple[Tensor, ...], out: Tensor, params: dict[str, Any],
                 needs: tuple[bool, ...]) -> None:
        super().__init__(prim, args, out, params, needs)
        self.extra_outs = None
        self.where = user_line() if HOOKS.numerics else None


_new_record = object.__new__
_TRUE1 = (True,)
_FF = (False, False)
_TT, _TF, _FT = (True, True), (True, False), (False, True)
_NONE1 = (None,)
_ALL_SAVED = (True,) * 8  # general primitives save all inputs or none (indexed per input)
_NONE_SAVED = (False,) * 8


def record(prim: Primitive, args: tuple[Tensor, ...], out: Tensor, params: dict[str, Any],
           extra_outs: tuple[Tensor, ...] = ()) -> None:
    """Record ``out = prim(*args, **params)`` on every recording tape of this thread that
    follows one of ``args`` (``extra_outs``: outputs 2.. of a multi-output call), then give
    every active forward accumulator the op.

    The common case (only recording tapes active, no numerics check, no forward accumulator)
    skips the general chores: the numerics check, collecting Variable reads for
    ``custom_gradient``, explaining cuts to paused tapes, forward mode; the one- and two-input
    ``needs`` are unrolled because this runs once per op under a tape and per-op overhead is a
    product target. A one-output, one-input op goes through :func:`record_one`.
    """
    if len(args) == 1 and not extra_outs:
        record_one(prim, args[0], out, params)
        return
    record_general(prim, args, out, params, extra_outs)


def record_one(prim: Primitive, a: Tensor, out: Tensor, params: dict[str, Any]) -> None:
    """:func:`record` of ``out = prim(a, **params)``: what every unary op calls (one input,
    one output, so no argument tuple is packed).

    The one fast path: a one-input elementwise op (``prim.record1``, the most frequent kind)
    followed by the only recording tape, nothing else active. Its record is filled in place,
    the fields of Record.__init__'s one-input branch, without the constructor call and the
    general loop: about a tenth of such an op's recorded cost (per-op overhead is a product
    target). Anything else falls through to the general path.
    """
    tapes = STATE.fast
    if tapes is None and a._is_variable is False:
        tapes = _traced_fast(out)
    if tapes is not None and len(tapes) == 1 and prim.record1 and not HOOKS.numerics:
        tape = tapes[0]
        tracked = tape._tracked
        if a._id in tracked and ((d := out.data.dtype) is _F32 or d is _F64 or d.kind == "f"):
            oid = out._id = _next_id()
            rec: Record = _new_record(Record)
            rec.prim = prim
            rec.params = params
            rec.needs = _TRUE1
            rec.out_id = oid
            data = a.data
            rec.in_ids = (a._id,)
            rec.in_shapes = (data.shape,)
            rec.in_dtypes = (data.dtype,)
            saves = prim._saves.get(_TRUE1) or prim.saved_names(_TRUE1)
            rec.output = out if saves[1] else None
            if not saves[0]:
                rec.inputs = _NONE1
            else:
                rec.inputs = ((a._snapshot(),) if a._is_variable  # type: ignore[attr-defined]
                              else (a,))
            tape._records.append(rec)
            tracked.add(oid)
            return
    record_general(prim, (a,), out, params)


def _traced_fast(out: Tensor) -> list[Recorder] | None:
    """While a ``gt.function`` step is traced: the tapes for a fast record path when ``out``'s
    array is traced (its calls were logged, so the trace has nothing to add), else None (the
    general path logs the op: see ``_Trace.after_op``). Callers check that no input is a
    Variable (the trace notes the Variables an op reads)."""
    tapes = STATE.trace_fast
    if tapes is None or out.__class__ is not Tensor:  # (a batched result: the general path)
        return None
    return tapes if getattr(out.data, "_gt_traced", False) else None


def record_two(prim: Primitive, a: Tensor, b: Tensor, out: Tensor, params: dict[str, Any]) -> None:
    """:func:`record` of ``out = prim(a, b, **params)``, what the binary ops call: the fast path
    of :func:`record_one` for a two-input elementwise op (``x * 2.0``, ``a + w``) followed by
    the only recording tape, nothing else active. A trainable Variable read in the tape's
    context is watched, the record's fields are filled in place as Record.__init__'s
    two-input branch fills them. Anything else falls through to the general path."""
    tapes = STATE.fast
    if tapes is None:  # (a Variable input: call2 told the trace, which reads it at each call)
        tapes = _traced_fast(out)
    if tapes is not None and len(tapes) == 1 and prim.record1 and not HOOKS.numerics \
            and ((d := out.data.dtype) is _F32 or d is _F64 or d.kind == "f"):
        tape = tapes[0]
        tracked = tape._tracked
        if tape._watch_accessed:
            if a._is_variable and a._trainable and a._id not in tracked:  # type: ignore[attr-defined]
                tape._watch_variable(a)  # type: ignore[arg-type]  # _is_variable: a Variable
            if b._is_variable and b._trainable and b._id not in tracked:  # type: ignore[attr-defined]
                tape._watch_variable(b)  # type: ignore[arg-type]
        ia, ib = a._id, b._id
        if ia in tracked:
            needs = _TT if ib in tracked else _TF
        elif ib in tracked:
            needs = _FT
        else:  # neither input is followed
            return
        oid = out._id = _next_id()
        rec: Record = _new_record(Record)
        rec.prim = prim
        rec.params = params
        rec.needs = needs
        rec.out_id = oid
        da, db = a.data, b.data
        rec.in_ids = (ia if needs[0] else 0, ib if needs[1] else 0)
        rec.in_shapes = (da.shape, db.shape)
        rec.in_dtypes = (da.dtype, db.dtype)
        saves = prim._saves.get(needs) or prim.saved_names(needs)
        rec.output = out if saves[2] else None
        # (_is_variable: a Variable, with _snapshot)
        rec.inputs = (None if not saves[0] else (a._snapshot() if a._is_variable else a),  # type: ignore[attr-defined]
                      None if not saves[1] else (b._snapshot() if b._is_variable else b))  # type: ignore[attr-defined]
        tape._records.append(rec)
        tracked.add(oid)
        return
    record_general(prim, (a, b), out, params)


def record_general(prim: Primitive, args: tuple[Tensor, ...], out: Tensor,
                   params: dict[str, Any], extra_outs: tuple[Tensor, ...] = ()) -> None:
    """:func:`record` for everything but :func:`record_one`'s fast path; ``bind`` calls it
    directly for ops of several inputs (one call less per op)."""
    st = STATE
    if st.trace is not None:  # gt.function: an op on untraced arrays (a Variable's) is logged
        st.trace.saw(args)
        st.trace.after_op(prim, args, out, params)
    tapes = st.fast
    if tapes is None:  # (while tracing, the plain case's tapes: no watcher, paused tape or
        tapes = st.trace_fast  # forward accumulator, so the general steps below have nothing to do)
    if tapes is None or HOOKS.numerics:
        general = True
        if HOOKS.numerics:
            for o in (out, *extra_outs):
                if not o._level:  # (a batched result has no value of its own: the physical
                    check_finite(prim, args, o.data, "forward")  # ops of its rule were checked)
        for w in st.watchers:
            for a in args:
                if a._is_variable:
                    w.setdefault(a._id, a)  # type: ignore[arg-type]  # _is_variable: a Variable
        tapes = st.recording
    else:
        general = False
    n_args = len(args)
    needs: tuple[bool, ...]
    for tape in tapes:
        tracked = tape._tracked
        watch = tape._watch_accessed
        if n_args == 1:
            a = args[0]
            if a._id not in tracked:
                if not (a._is_variable and watch and a._trainable):  # type: ignore[attr-defined]
                    continue
                tape._watch_variable(a)  # type: ignore[arg-type]  # _is_variable: a Variable
            needs = _TRUE1
        elif n_args == 2:
            a, b = args
            if watch:
                if a._is_variable and a._trainable and a._id not in tracked:  # type: ignore[attr-defined]
                    tape._watch_variable(a)  # type: ignore[arg-type]  # _is_variable: a Variable
                if b._is_variable and b._trainable and b._id not in tracked:  # type: ignore[attr-defined]
                    tape._watch_variable(b)  # type: ignore[arg-type]
            needs = (a._id in tracked, b._id in tracked)
            if needs == _FF:
                continue
        else:
            if watch:
                for a in args:
                    if a._is_variable and a._trainable and a._id not in tracked:  # type: ignore[attr-defined]
                        tape._watch_variable(a)  # type: ignore[arg-type]  # _is_variable: a Variable
            needs = tuple([a._id in tracked for a in args])
            if True not in needs:
                continue
        if prim.nondiff or out.data.dtype.kind != "f":  # integer, bool, complex: no gradient
            tape._cut(args, needs, f"on the way to the target it went through '{prim.name}', "
                      f"whose output ({out.data.dtype}) carries no gradient")
            continue
        if not out._id:
            out._id = _next_id()
            for o in extra_outs:
                o._id = _next_id()
        rec: Record
        if general or extra_outs:
            rec = RecordX(prim, args, out, params, needs)
            if extra_outs:
                rec.extra_outs = tuple(o._id for o in extra_outs)
                tracked.update(o._id for o in extra_outs if o.data.dtype.kind == "f")
        else:
            rec = Record(prim, args, out, params, needs)
        tape._records.append(rec)
        tracked.add(out._id)
        if prim.folds is not None:  # (only general primitives fold: the fast paths above
            tape._folding = True  # take elementwise ones)
    if general:
        for tape in st.paused:
            tracked = tape._tracked
            needs = tuple(a._id in tracked or (a._is_variable and a._trainable and tape._watch_accessed  # type: ignore[attr-defined]
                                               and a._id not in tape._variables) for a in args)
            if True in needs:
                tape._cut(args, needs, "it was used inside tape.stop_recording(), so the op "
                          f"'{prim.name}' was not recorded")
        forward = st.forward  # (accumulators make `fast` None: only on the general path)
        if forward:  # forward accumulators, outermost first: an outer one's tangent of `out`
            # is then known when an inner one computes its own with ops the outer one sees
            for level, acc in enumerate(forward):
                acc._accumulate(prim, args, out, params, extra_outs, level)


def check_finite(prim: Primitive, args: tuple[Tensor, ...], array: Array, phase: str,
                 where: str | None = None) -> None:
    if array.dtype.kind not in "fc":
        return
    if getattr(array, "_gt_traced", False):  # gt.function: the check is a step of the program,
        # made at each call (its values are not known while tracing)
        message = _numerics_message(prim, args, array, phase, where)
        opaque(functools.partial(_raise_unless_finite, message=message), array,
               key=("check_numerics", message))
        return
    xp = args[0]._backend.xp if args and isinstance(args[0], Tensor) else np
    if not bool(xp.isfinite(array).all()):
        raise FloatingPointError(_numerics_message(prim, args, array, phase, where))


def _numerics_message(prim: Primitive, args: tuple[Tensor, ...], array: Array, phase: str,
                      where: str | None) -> str:
    if args:
        shapes = ", ".join(str(getattr(a, "shape", ())) for a in args)
        what = f"input shapes {shapes}; output shape {array.shape}"
    else:  # the backward passes one input gradient
        what = f"an input gradient of shape {array.shape}"
    return (f"check_numerics: the {phase} of '{prim.name}' produced NaN or inf ({what}), "
            f"recorded at {where or user_line()}")


def _raise_unless_finite(array: Array, message: str) -> None:
    if not bool(np.isfinite(array).all()):
        raise FloatingPointError(message)
