"""GradientTape: a flat list of records per tape, and the reverse pass over it.

Each tape keeps its records in execution order, so reverse order is a valid topological order.
Only ops that read a tensor the tape tracks are recorded. Tensors get an integer ``_id`` the
first time a tape tracks them; a tape's ``_tracked`` set holds the ids it follows.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np

from . import _fusion, _nest
from ._backend import NUMPY as _NUMPY
from ._config import HOOKS, config
from ._rules import ON_NUMPY, on_arrays
from ._tensor import Tensor, _next_id, _wrap

__all__ = ["GradientTape", "UnconnectedGradientError", "STATE", "record_op", "note_cut",
           "Record", "user_line"]

_HOOK_LOCK = threading.Lock()
_PKG_DIR = os.path.dirname(os.path.abspath(__file__))
_UNCONNECTED = ("none", "zero", "raise")


class UnconnectedGradientError(ValueError):
    """A source is not connected to the target and ``unconnected_gradients="raise"``.

    The message says why: never watched, integer dtype on the path, the value left the tape
    through a NumPy/CuPy array, it was computed inside ``stop_recording``, a Variable was
    replaced by a tensor, or a gradient was taken outside the outer tape's context.
    """


class _State(threading.local):
    """Per-thread tape stacks: a tape records only the ops of the thread that entered it."""

    def __init__(self) -> None:
        self.recording: list[GradientTape] = []
        self.paused: list[GradientTape] = []
        self.watchers: list[dict] = []
        self.transforms = 0  # vmap / jvp levels active: backward passes must stay differentiable
        self.fast: list | None = self.recording  # the recording tapes when nothing else is on

    def sync(self) -> None:
        """Refresh ``fast`` after a change to the stacks (one attribute read per recorded op)."""
        self.fast = None if (self.watchers or self.paused) else self.recording


STATE = _State()


def _hooks_add(n: int) -> None:
    with _HOOK_LOCK:
        HOOKS.count += n
        HOOKS.refresh()
    STATE.sync()


_INTERNAL_FILES: dict[str, bool] = {}


def _internal_frame(frame: Any) -> bool:
    name = frame.f_code.co_filename
    if name.startswith("<"):  # code gradtape generated with eval/exec: no module globals
        return "__name__" not in frame.f_globals
    inside = _INTERNAL_FILES.get(name)
    if inside is None:
        inside = _INTERNAL_FILES[name] = os.path.abspath(name).startswith(_PKG_DIR)
    return inside


def user_line() -> str:
    """``file:line`` of the innermost stack frame outside the gradtape package."""
    frame = sys._getframe(1)
    while frame is not None and _internal_frame(frame):
        frame = frame.f_back
    if frame is None:
        return "<unknown>"
    return f"{frame.f_code.co_filename}:{frame.f_lineno}"


class Record:
    """One recorded op: what its VJP needs, and the ids that link it into the graph."""

    __slots__ = ("prim", "inputs", "output", "in_ids", "in_shapes", "in_dtypes", "params",
                 "needs", "out_id")
    extra_outs: tuple | None = None  # ids of outputs 2.. of a multi-output op (RecordX)
    where: str | None = None  # the user line, kept when check_numerics is on (RecordX)

    def __init__(self, prim: Any, args: tuple, out: Tensor, params: dict,
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
                self.inputs = (a._snapshot(),)
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
            self.inputs = (None if not saves[0] else (a._snapshot() if a._is_variable else a),
                           None if not saves[1] else (b._snapshot() if b._is_variable else b))
            return
        self.in_ids = tuple([a._id if need else 0 for a, need in zip(args, needs)])
        self.in_shapes = tuple([a.data.shape for a in args])
        self.in_dtypes = tuple([a.data.dtype for a in args])
        if prim.derivatives is None:
            saves = (prim.saves_inputs,) * len(args)
        self.inputs = tuple([None if not keep else (a._snapshot() if a._is_variable else a)
                             for a, keep in zip(args, saves)])

    def release(self) -> None:
        """Drop the saved arrays (a non-persistent tape, once the VJP has run)."""
        self.inputs = (None,) * len(self.inputs)
        self.output = None

    def saved_arrays(self) -> Iterator[Any]:
        for t in (*self.inputs, self.output):
            if t is not None:
                yield t.data


class RecordX(Record):
    """A record with the rarely used fields set: multi-output ops and numerics checking."""

    __slots__ = ("extra_outs", "where")

    def __init__(self, prim: Any, args: tuple, out: Tensor, params: dict,
                 needs: tuple[bool, ...]) -> None:
        super().__init__(prim, args, out, params, needs)
        self.extra_outs = None
        self.where = user_line() if HOOKS.numerics else None


def record_op(prim: Any, args: tuple, out: Tensor, params: dict) -> None:
    """Called by ``bind`` when hooks are on: numerics check, variable watchers, recording."""
    tapes = STATE.fast
    if tapes is None or HOOKS.numerics:
        _record_op_general(prim, args, out, params)
        return
    for tape in tapes:
        tracked = tape._tracked
        if len(args) == 1:  # fast path: one input
            a = args[0]
            if a._id not in tracked:
                if not (a._is_variable and tape._watch_accessed and a.trainable):
                    continue
                tape._watch_variable(a)
            needs = _TRUE1
        elif len(args) == 2:  # binary ops, unrolled
            a, b = args
            if a._is_variable and a._id not in tracked and tape._watch_accessed and a.trainable:
                tape._watch_variable(a)
            if b._is_variable and b._id not in tracked and tape._watch_accessed and b.trainable:
                tape._watch_variable(b)
            needs = (a._id in tracked, b._id in tracked)
            if needs == _FF:
                continue
        else:
            if tape._watch_accessed:
                for a in args:
                    if a._is_variable and a.trainable and a._id not in tracked:
                        tape._watch_variable(a)
            needs = tuple([a._id in tracked for a in args])
            if True not in needs:
                continue
        if prim.nondiff or out.data.dtype.kind not in "fc":
            _cut_no_gradient(tape, prim, args, needs, out)
            continue
        if not out._id:
            out._id = _next_id()
        tape._records.append(Record(prim, args, out, params, needs))
        tracked.add(out._id)


def record_unary(prim: Any, a: Tensor, out: Tensor, params: dict) -> None:
    """:func:`record_op` for a one-input elementwise op and a fresh ``out`` (the unary ops'
    fast path): one recording tape, no watchers, the record built without the general
    branches. It fills the same fields as ``Record.__init__``'s one-input branch, inlined on
    purpose: calling the constructor costs ~0.2 us per op (measured on the overhead chain,
    2.20 vs 2.02 us/op forward), and per-op overhead is a product target."""
    tapes = STATE.fast
    if tapes is None or len(tapes) != 1 or HOOKS.numerics:
        record_op(prim, (a,), out, params)
        return
    tape = tapes[0]
    tracked = tape._tracked
    aid = a._id
    if aid not in tracked:
        if not (a._is_variable and tape._watch_accessed and a.trainable):
            return
        tape._watch_variable(a)
    if prim.nondiff or out.data.dtype.kind not in "fc":
        record_op(prim, (a,), out, params)  # the general path explains the cut
        return
    oid = out._id = _next_id()
    rec = _new_record(Record)
    rec.prim = prim
    rec.params = params
    rec.needs = _TRUE1
    rec.out_id = oid
    data = a.data
    rec.in_ids = (aid,)
    rec.in_shapes = (data.shape,)
    rec.in_dtypes = (data.dtype,)
    saves = prim._saves.get(_TRUE1) or prim.saved_names(_TRUE1)
    rec.output = out if saves[1] else None
    if not saves[0]:
        rec.inputs = _NONE1
    else:
        rec.inputs = (a._snapshot(),) if a._is_variable else (a,)
    tape._records.append(rec)
    tracked.add(oid)


_new_record = object.__new__
_TRUE1 = (True,)
_FF = (False, False)
_NONE1 = (None,)
_ALL_SAVED = (True,) * 8  # general primitives save all inputs or none (indexed per input)
_NONE_SAVED = (False,) * 8


def _cut_no_gradient(tape: GradientTape, prim: Any, args: tuple, needs: tuple, out: Tensor) -> None:
    tape._cut(args, needs, f"on the way to the target it went through '{prim.name}', whose "
              f"output ({out.data.dtype}) carries no gradient")


def _record_op_general(prim: Any, args: tuple, out: Tensor, params: dict) -> None:
    if HOOKS.numerics:
        _check_finite(prim, args, out.data, "forward")
    st = STATE
    if st.watchers:
        for a in args:
            if a._is_variable:
                for w in st.watchers:
                    w.setdefault(a._id, a)
    if st.recording:
        float_out = out.data.dtype.kind in "fc"
        for tape in st.recording:
            tracked = tape._tracked
            if tape._watch_accessed:
                for a in args:
                    if a._is_variable and a.trainable and a._id not in tracked:
                        tape._watch_variable(a)
            needs = tuple(a._id in tracked for a in args)
            if True not in needs:
                continue
            if prim.nondiff or not float_out:
                _cut_no_gradient(tape, prim, args, needs, out)
                continue
            if not out._id:
                out._id = _next_id()
            tape._records.append(RecordX(prim, args, out, params, needs))
            tracked.add(out._id)
    for tape in st.paused:
        needs = tuple(a._id in tape._tracked for a in args)
        if True in needs:
            tape._cut(args, needs, "it was used inside tape.stop_recording(), so the op "
                      f"'{prim.name}' was not recorded")


def note_cut(t: Tensor, reason: str) -> None:
    """Tell every active tape tracking ``t`` that its value left the graph, and why."""
    for tape in (*STATE.recording, *STATE.paused):
        if t._id in tape._tracked:
            tape._cut((t,), (True,), reason)


def _check_finite(prim: Any, args: tuple, array: Any, phase: str, where: str | None = None) -> None:
    xp = args[0]._backend.xp if args and isinstance(args[0], Tensor) else np
    if array.dtype.kind in "fc" and not bool(xp.isfinite(array).all()):
        if args:
            shapes = ", ".join(str(getattr(a, "shape", ())) for a in args)
            what = f"input shapes {shapes}; output shape {array.shape}"
        else:  # the backward passes one input gradient
            what = f"an input gradient of shape {array.shape}"
        raise FloatingPointError(
            f"check_numerics: the {phase} of '{prim.name}' produced NaN or inf "
            f"({what}), recorded at {where or user_line()}")


# --------------------------------------------------------------------------- the tape
class GradientTape:
    """Records operations on watched tensors so that gradients can be computed.

    Example:
        >>> import gradtape as gt
        >>> x = gt.tensor(3.0)
        >>> with gt.GradientTape() as tape:
        ...     tape.watch(x)
        ...     y = x * x
        >>> float(tape.gradient(y, x))
        6.0
    """

    def __init__(self, persistent: bool = False, watch_accessed_variables: bool = True) -> None:
        self._persistent = bool(persistent)
        self._watch_accessed = bool(watch_accessed_variables)
        self._records: list[Record] = []
        self._tracked: set[int] = set()
        self._variables: dict[int, Any] = {}
        self._cuts: dict[int, str] = {}
        self._recording = False
        self._entered = False
        self._used = False

    # --- context ----------------------------------------------------------------------------
    def __enter__(self) -> GradientTape:
        if self._recording:
            raise ValueError("this GradientTape is already recording; a tape cannot be entered "
                             "twice at once (use a new tape, or nest two tapes)")
        self._push()
        self._entered = True
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._recording:
            self._pop()

    def _push(self) -> None:
        STATE.recording.append(self)
        self._recording = True
        _hooks_add(1)

    def _pop(self) -> None:
        STATE.recording.remove(self)
        self._recording = False
        _hooks_add(-1)

    @contextlib.contextmanager
    def stop_recording(self) -> Iterator[None]:
        """Pause recording inside the block; ops there are not recorded on this tape.

        Example:
            >>> import gradtape as gt
            >>> x = gt.tensor(2.0)
            >>> with gt.GradientTape() as tape:
            ...     tape.watch(x)
            ...     with tape.stop_recording():
            ...         z = x * 3          # not recorded
            >>> tape.gradient(z, x) is None
            True
        """
        if not self._entered:
            raise RuntimeError("stop_recording() needs a tape that was entered with `with "
                               "GradientTape() as tape:`; this tape never was")
        if not self._recording:
            raise ValueError("stop_recording(): the tape is not recording (call it inside the "
                             "tape's `with` block, not nested in another stop_recording)")
        self._pop()
        STATE.paused.append(self)
        _hooks_add(1)
        try:
            yield
        finally:
            STATE.paused.remove(self)
            _hooks_add(-1)
            self._push()

    def reset(self) -> None:
        """Forget everything recorded and watched; the tape keeps recording.

        Example:
            >>> import gradtape as gt
            >>> with gt.GradientTape() as tape:
            ...     tape.reset()
        """
        if not self._recording:
            raise ValueError("reset(): the tape is not recording; reset() is only valid inside "
                             "the tape's `with` block")
        self._records = []
        self._tracked = set()
        self._variables = {}
        self._cuts = {}
        self._used = False

    # --- watching ---------------------------------------------------------------------------
    def watch(self, tensor: Any) -> None:
        """Follow ``tensor`` (or a list/tuple/dict of tensors) so gradients can flow to it.

        Integer and boolean tensors cannot carry gradients and are not followed (asking for
        their gradient raises ``TypeError``).
        """
        leaves, _ = _nest.flatten(tensor)
        for i, t in enumerate(leaves):
            if not isinstance(t, Tensor):
                where = f" (item {i})" if len(leaves) > 1 else ""
                raise TypeError(f"tape.watch(): expected a gradtape Tensor or Variable{where}, got "
                                f"{type(t).__name__}; wrap arrays with gt.tensor(...)")
            if t.data.dtype.kind not in "fc":
                continue
            if t._is_variable:
                self._watch_variable(t)
            else:
                if not t._id:
                    t._id = _next_id()
                self._tracked.add(t._id)

    def _watch_variable(self, v: Any) -> None:
        self._tracked.add(v._id)
        self._variables[v._id] = v

    def watched_variables(self) -> tuple:
        """The Variables this tape watches, in creation order.

        Example:
            >>> import gradtape as gt
            >>> w = gt.Variable(1.0)
            >>> with gt.GradientTape() as tape:
            ...     y = w * 2
            >>> tape.watched_variables() == (w,)
            True
        """
        return tuple(self._variables[k] for k in sorted(self._variables))

    def saved_bytes(self) -> int:
        """Bytes of the arrays this tape keeps alive for its backward pass (each counted once).

        Example:
            >>> import gradtape as gt
            >>> gt.GradientTape().saved_bytes()
            0
        """
        seen: dict[int, int] = {}
        for rec in self._records:
            for arr in rec.saved_arrays():
                seen[id(arr)] = arr.nbytes
        return sum(seen.values())

    def _cut(self, args: tuple, needs: tuple, reason: str) -> None:
        line = user_line()
        for a, need in zip(args, needs):
            if need and a._id not in self._cuts:
                self._cuts[a._id] = f"{reason} (at {line})"

    # --- gradients --------------------------------------------------------------------------
    def _start_call(self, what: str) -> None:
        if self._used and not self._persistent:
            raise RuntimeError(f"{what}: a non-persistent GradientTape can compute gradients only "
                               "once; use GradientTape(persistent=True) to call it several times")
        if self._recording and not self._persistent:
            self._pop()  # TF semantics: a non-persistent tape stops recording here
        self._used = True

    def gradient(self, target: Any, sources: Any, output_gradients: Any = None,
                 unconnected_gradients: str = "none") -> Any:
        """Gradient of ``target`` with respect to ``sources``.

        Args:
            target: a Tensor or a nested list/dict of Tensors (their gradients are summed). A
                non-scalar target means the gradient of its sum.
            sources: a Tensor/Variable or a nested list/tuple/dict of them.
            output_gradients: upstream gradients, one per target (same shape and dtype), or None.
            unconnected_gradients: ``"none"`` (None for unconnected sources), ``"zero"``, or
                ``"raise"`` (:class:`UnconnectedGradientError` explaining why).

        Returns:
            Gradients with the structure of ``sources``; each has its source's shape and dtype.

        Example:
            >>> import gradtape as gt
            >>> w = gt.Variable([1.0, 2.0])
            >>> with gt.GradientTape() as tape:
            ...     loss = (w * w).sum()
            >>> tape.gradient(loss, w).numpy()
            array([2., 4.], dtype=float32)
        """
        _check_unconnected(unconnected_gradients)
        if target is None:
            raise TypeError("gradient(): target is None; pass the Tensor to differentiate")
        self._start_call("gradient()")
        flat_sources, spec = self._flatten_sources(sources, "gradient()")
        targets, seeds = self._targets_and_seeds(target, output_gradients)
        diff = bool(STATE.recording) or STATE.transforms > 0
        grads = backward(self, targets, seeds, flat_sources, diff, release=not self._persistent)
        results = self._finish(flat_sources, grads, targets, unconnected_gradients, diff)
        if not self._persistent:
            self._drop()
        return _nest.unflatten(spec, results)

    def _drop(self) -> None:
        self._records = []
        self._tracked = set()
        self._cuts = {}

    def _flatten_sources(self, sources: Any, what: str) -> tuple[list, Any]:
        if sources is None:
            raise TypeError(f"{what}: sources is None; pass a Tensor, Variable, or a list/dict of them")
        leaves, spec = _nest.flatten(sources)
        for i, s in enumerate(leaves):
            if not isinstance(s, Tensor) or s.data.dtype.kind not in "fc":
                where = f"sources[{i}]" if len(leaves) > 1 or isinstance(sources, (list, tuple, dict)) \
                    else "sources"
                if not isinstance(s, Tensor):
                    raise TypeError(f"{what}: {where} must be a gradtape Tensor or Variable, got "
                                    f"{type(s).__name__}")
                raise TypeError(f"{what}: {where} has dtype {s.dtype}; gradients exist only for "
                                "floating-point sources (cast with .astype('float32'))")
        return leaves, spec

    def _targets_and_seeds(self, target: Any, output_gradients: Any) -> tuple[list, list]:
        targets, tspec = _nest.flatten(target)
        for i, t in enumerate(targets):
            if not isinstance(t, Tensor):
                raise TypeError(f"gradient(): target{'' if len(targets) == 1 else f'[{i}]'} must be "
                                f"a gradtape Tensor, got {type(t).__name__}")
        if output_gradients is None:
            return targets, [None] * len(targets)
        if isinstance(target, Tensor) and isinstance(output_gradients, (list, tuple)) \
                and len(output_gradients) == 1:
            output_gradients = output_gradients[0]
        ograds, _ = _nest.flatten(output_gradients)
        if len(ograds) != len(targets):
            raise ValueError(f"gradient(): output_gradients has {len(ograds)} entries, expected "
                             f"one per target ({len(targets)})")
        seeds = []
        for i, (t, og) in enumerate(zip(targets, ograds)):
            if og is None:
                seeds.append(None)
                continue
            if not isinstance(og, Tensor):
                og = Tensor(t._backend.xp.asarray(og, dtype=t.dtype) if not isinstance(og, np.ndarray)
                            else og)
            name = f"output_gradients[{i}]" if len(targets) > 1 else "output_gradients"
            if og.shape != t.shape:
                raise ValueError(f"gradient(): {name} has shape {og.shape}, expected the target's "
                                 f"shape {t.shape}")
            if og.dtype != t.dtype:
                raise TypeError(f"gradient(): {name} has dtype {og.dtype}, expected the target's "
                                f"dtype {t.dtype}")
            if og._backend is not t._backend:
                raise ValueError(f"gradient(): {name} is on backend {og.backend!r}, the target on "
                                 f"{t.backend!r}")
            seeds.append(og)
        del tspec
        return targets, seeds

    def _finish(self, sources: list, grads: dict, targets: list, mode: str, diff: bool) -> list:
        out = []
        origin = None
        for s in sources:
            g = grads.get(s._id) if s._id else None
            if g is None:
                if mode == "raise":
                    raise UnconnectedGradientError(self._explain(s, targets))
                if mode == "zero":
                    g = s._backend.xp.zeros(s.shape, s.dtype)
                    out.append(_wrap(g, s._backend))
                else:
                    out.append(None)
                continue
            if diff:
                if g.dtype != s.dtype:
                    from . import ops
                    g = ops.astype(g, s.dtype)
                out.append(g)
            else:
                if g.dtype != s.dtype:
                    g = g.astype(s.dtype)
                t = _wrap(g, s._backend)
                if origin is None:
                    origin = ("gradient", user_line())
                t._origin = origin
                out.append(t)
        return out

    def _explain(self, s: Tensor, targets: list) -> str:
        label = f"source {s.name!r}" if s._is_variable and s.name else "the source"
        shape = f"(shape {s.shape}, dtype {s.dtype})"
        if not s._id or s._id not in self._tracked:
            if s._origin and s._origin[0] == "variable":
                return (f"{label} {shape} is a plain Tensor computed from Variable "
                        f"{s._origin[1]!r} (e.g. `w = w - lr * g`): the Variable was replaced by "
                        "a tensor, which is never watched. Update variables in place with "
                        "w.assign_sub(...), or tape.watch() the tensor.")
            if s._is_variable and not s.trainable:
                return (f"{label} {shape} is a non-trainable Variable, which is never watched "
                        "automatically; call tape.watch(v)")
            if s._is_variable and not self._watch_accessed:
                return (f"{label} {shape} was never watched: the tape has "
                        "watch_accessed_variables=False, so call tape.watch(v)")
            if s._is_variable:
                return (f"{label} {shape} was never read inside the tape's context, so the "
                        "target does not depend on it")
            return (f"{label} {shape} was never watched: call tape.watch(x) inside the tape's "
                    "context before using it, or make it a gt.Variable")
        reach = _forward_reach(self._records, {s._id})
        reasons = [r for i, r in self._cuts.items() if i in reach]
        if reasons:
            return f"{label} {shape} is not connected to the target: " + "; ".join(dict.fromkeys(reasons))
        for t in targets:
            if t._origin and t._origin[0] == "gradient" and t._id not in self._tracked:
                return (f"the target was computed by tape.gradient() at {t._origin[1]} while this "
                        "tape was not recording: for higher-order derivatives call the inner "
                        "tape's gradient() inside the outer tape's `with` block")
        if all(not t._id or t._id not in self._tracked for t in targets):
            return (f"the target does not depend on any tensor this tape watched, so {label} "
                    f"{shape} is unconnected (was the target computed outside the tape's context?)")
        return f"the target does not depend on {label} {shape}"

    # --- jacobians --------------------------------------------------------------------------
    def jacobian(self, target: Tensor, sources: Any, unconnected_gradients: str = "none",
                 parallel_iterations: Any = None, experimental_use_pfor: bool = True) -> Any:
        """Jacobian of ``target`` with respect to each source: shape
        ``target.shape + source.shape``.

        Example:
            >>> import gradtape as gt
            >>> x = gt.tensor([1.0, 2.0])
            >>> with gt.GradientTape() as tape:
            ...     tape.watch(x)
            ...     y = x * x
            >>> tape.jacobian(y, x).numpy()
            array([[2., 0.],
                   [0., 4.]], dtype=float32)
        """
        _check_unconnected(unconnected_gradients)
        if target is None:
            raise TypeError("jacobian(): target is None")
        if not isinstance(target, Tensor):
            raise TypeError(f"jacobian(): target must be a gradtape Tensor, got {type(target).__name__}")
        if not experimental_use_pfor and not self._persistent:
            raise RuntimeError("jacobian(experimental_use_pfor=False) loops over gradient calls "
                               "and needs GradientTape(persistent=True)")
        self._start_call("jacobian()")
        flat_sources, spec = self._flatten_sources(sources, "jacobian()")
        diff = bool(STATE.recording) or STATE.transforms > 0
        rows = _jacobian_rows(self, target, flat_sources, diff, batch=False)
        results = []
        for k, s in enumerate(flat_sources):
            r = rows[k]
            if r is None:
                if unconnected_gradients == "raise":
                    raise UnconnectedGradientError(self._explain(s, [target]))
                if unconnected_gradients == "zero":
                    r = _wrap(s._backend.xp.zeros(target.shape + s.shape, s.dtype), s._backend)
                results.append(r)
                continue
            results.append(r)
        if not self._persistent:
            self._drop()
        return _nest.unflatten(spec, results)

    def batch_jacobian(self, target: Tensor, source: Tensor, unconnected_gradients: str = "none",
                       parallel_iterations: Any = None, experimental_use_pfor: bool = True) -> Tensor:
        """Per-example Jacobian for ``target[B, ...]`` and ``source[B, ...]`` whose examples
        are independent: shape ``[B, *target.shape[1:], *source.shape[1:]]``.

        An unconnected source gives zeros (TF semantics).

        Example:
            >>> import gradtape as gt
            >>> x = gt.tensor([[1.0, 2.0], [3.0, 4.0]])
            >>> with gt.GradientTape() as tape:
            ...     tape.watch(x)
            ...     y = x * x
            >>> tape.batch_jacobian(y, x).shape
            (2, 2, 2)
        """
        _check_unconnected(unconnected_gradients)
        if not isinstance(target, Tensor):
            raise TypeError(f"batch_jacobian(): target must be a gradtape Tensor, got {type(target).__name__}")
        if not isinstance(source, Tensor):
            raise TypeError(f"batch_jacobian(): source must be a gradtape Tensor, got {type(source).__name__}")
        if target.ndim < 2 or source.ndim < 2:
            raise ValueError(f"batch_jacobian(): target and source need rank >= 2 ([batch, ...]); "
                             f"got target shape {target.shape}, source shape {source.shape}")
        if target.shape[0] != source.shape[0]:
            raise ValueError(f"batch_jacobian(): batch sizes differ: target {target.shape[0]} "
                             f"(shape {target.shape}), source {source.shape[0]} (shape {source.shape})")
        if not experimental_use_pfor and not self._persistent:
            raise RuntimeError("batch_jacobian(experimental_use_pfor=False) needs "
                               "GradientTape(persistent=True)")
        self._start_call("batch_jacobian()")
        flat, _ = self._flatten_sources(source, "batch_jacobian()")
        diff = bool(STATE.recording) or STATE.transforms > 0
        r = _jacobian_rows(self, target, flat, diff, batch=True)[0]
        if r is None:
            if unconnected_gradients == "raise":
                raise UnconnectedGradientError(self._explain(source, [target]))
            r = _wrap(source._backend.xp.zeros(target.shape + source.shape[1:], source.dtype),
                      source._backend)
        if not self._persistent:
            self._drop()
        return r


def _check_unconnected(value: Any) -> None:
    if value not in _UNCONNECTED:
        raise ValueError(f"unconnected_gradients must be 'none', 'zero' or 'raise', got {value!r}")


def _jacobian_rows(tape: GradientTape, target: Tensor, sources: list, diff: bool,
                   batch: bool) -> list:
    """Loop over target elements (per example when ``batch``), one reverse pass each."""
    xp = target._backend.xp
    n_rows = int(np.prod(target.shape[1:] if batch else target.shape, dtype=np.int64))
    per_source: list[list] = [[] for _ in sources]
    connected = [False] * len(sources)
    for j in range(n_rows):
        seed = xp.zeros(target.shape, target.dtype)
        if batch:
            seed.reshape(target.shape[0], -1)[:, j] = 1
        else:
            seed.reshape(-1)[j] = 1
        grads = backward(tape, [target], [_wrap(seed, target._backend)], sources, diff, release=False)
        for k, s in enumerate(sources):
            g = grads.get(s._id) if s._id else None
            if g is not None:
                connected[k] = True
            per_source[k].append(g)
    from . import ops

    out: list = []
    for k, s in enumerate(sources):
        if not connected[k]:
            out.append(None)
            continue
        shape_each = s.shape if not batch else s.shape  # each row has the source's shape
        rows = []
        for g in per_source[k]:
            if g is None:
                g = xp.zeros(shape_each, s.dtype)
            if diff and not isinstance(g, Tensor):
                g = _wrap(g, s._backend)
            if not diff and g.dtype != s.dtype:
                g = g.astype(s.dtype)
            rows.append(g)
        if diff:
            rows = [ops.astype(r, s.dtype) if r.dtype != s.dtype else r for r in rows]
            if batch:
                stacked = ops.stack(rows, axis=1) if rows else None
                res = ops.reshape(stacked, target.shape + s.shape[1:])
            else:
                stacked = ops.stack(rows, axis=0)
                res = ops.reshape(stacked, target.shape + s.shape)
        else:
            if batch:
                arr = xp.stack(rows, axis=1) if rows else xp.zeros((s.shape[0], 0) + s.shape[1:], s.dtype)
                res = _wrap(arr.reshape(target.shape + s.shape[1:]), s._backend)
            else:
                arr = xp.stack(rows, axis=0) if rows else xp.zeros((0,) + s.shape, s.dtype)
                res = _wrap(arr.reshape(target.shape + s.shape), s._backend)
        out.append(res)
    return out


# --------------------------------------------------------------------------- the reverse pass
def _forward_reach(records: list, start: set) -> set:
    reach = set(start)
    for rec in records:
        for i in rec.in_ids:
            if i and i in reach:
                reach.add(rec.out_id)
                if rec.extra_outs:
                    reach.update(rec.extra_outs)
                break
    return reach


def _unbroadcast_array(g: Any, shape: tuple, prim: Any) -> Any:
    gshape = g.shape
    if gshape == shape:
        return g
    if len(gshape) == len(shape) + 1 and gshape[1:] == shape:  # a bias: sum the leading axis
        return g.sum(axis=0)
    lead = g.ndim - len(shape)
    if lead < 0 or any(s != 1 and s != gs for s, gs in zip(shape, g.shape[lead:])):
        raise ValueError(f"internal error: the VJP of '{prim.name}' returned a gradient of shape "
                         f"{g.shape} for an input of shape {shape}")
    axes = tuple(range(lead)) + tuple(lead + i for i, s in enumerate(shape)
                                      if s == 1 and g.shape[lead + i] != 1)
    if axes:
        g = g.sum(axis=axes, keepdims=True)
    return g.reshape(shape)


def _unbroadcast_tensor(g: Tensor, shape: tuple, prim: Any) -> Tensor:
    if g.shape == shape:
        return g
    from . import ops

    lead = g.ndim - len(shape)
    if lead < 0 or any(s != 1 and s != gs for s, gs in zip(shape, g.shape[lead:])):
        raise ValueError(f"internal error: the VJP of '{prim.name}' returned a gradient of shape "
                         f"{g.shape} for an input of shape {shape}")
    axes = tuple(range(lead)) + tuple(lead + i for i, s in enumerate(shape)
                                      if s == 1 and g.shape[lead + i] != 1)
    if axes:
        g = ops.sum(g, axis=axes, keepdims=True)
    return ops.reshape(g, shape)


def _vjp_arrays(rec: Record, g: Any) -> tuple:
    """First-order VJP on backend arrays: rendered derivative expressions for elementwise
    primitives, the primitive's array rule where it has one, else the gradtape-op VJP (no tape
    recording)."""
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
                _NUMPY if type(g) is np.ndarray else _backend_of_array(g))
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
            return (prim.array_vjp(0, backend)(g, *args),)
        res = []
        for i, need in enumerate(needs):
            res.append(prim.array_vjp(i, backend)(g, *args) if need else None)
        return tuple(res)
    rule = prim.rule
    if rule is not None and not isinstance(g, tuple):
        return rule(ON_NUMPY if type(g) is np.ndarray else on_arrays(_backend_of_array(g).xp), rec, g)
    if prim.vjp is None:
        from ._primitive import MissingRuleError

        raise MissingRuleError(f"primitive '{prim.name}' has no VJP rule; it cannot be differentiated")
    if isinstance(g, tuple):  # a multi-output record (Record.extra_outs): None entries stay
        gw: Any = tuple(None if a is None else _wrap(a, _backend_of_array(a)) for a in g)
    else:
        gw = _wrap(g, _backend_of_array(g))
    res = prim.vjp(rec, gw)
    return tuple(None if r is None else (r.data if isinstance(r, Tensor) else r) for r in res)


def _backend_of_array(a: Any) -> Any:
    from ._backend import backend_of

    return backend_of(a)


def backward(tape: GradientTape, targets: list, seeds: list, sources: list, diff: bool,
             release: bool) -> dict:
    """Reverse pass over ``tape``'s records. Returns ``{source id: gradient}`` (arrays, or
    Tensors when ``diff``: the pass is then made of recorded gradtape ops).

    NumPy's floating-point warnings are silenced for the pass: derivatives are infinite at
    the documented singular points (``sqrt'(0)``, ``log'(0)`` behind a ``where``) and
    ``gy * d`` is then cleaned up on purpose, so a warning would only be noise (PyTorch and
    TF are silent too); ``check_numerics`` is the tool that reports NaN and inf.
    """
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return _backward(tape, targets, seeds, sources, diff, release)


def _backward(tape: GradientTape, targets: list, seeds: list, sources: list, diff: bool,
              release: bool) -> dict:
    records = list(tape._records)  # a persistent tape may record the pass itself
    source_ids = set()
    tracked = tape._tracked
    start = set()
    for s in sources:
        if s._id:
            source_ids.add(s._id)
            if s._id in tracked:
                start.add(s._id)
    reach = _forward_reach(records, start)
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
    # ids whose gradient array was allocated by this pass and is referenced nowhere else, so
    # later contributions may be added into it in place (a VJP may pass its upstream
    # gradient through, as add does: such arrays are never written)
    owned: set[int] = set()

    def accumulate(iid: int, gi: Any, shape: tuple, dt: Any, prim: Any, fresh: bool) -> None:
        # fresh: gi was allocated for this contribution alone and may be written
        if gi.shape != shape:
            size = gi.size
            gi = _unbroadcast_array(gi, shape, prim)
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
        elif iid in owned and type(prev) is type(gi) and prev.shape == gi.shape:
            prev += gi  # owned: an array, allocated by this pass, referenced nowhere else
        elif fresh and type(prev) is type(gi) and prev.shape == gi.shape:
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

    fused = None
    order: Any = range(len(records) - 1, -1, -1)
    if not diff and not numerics and config.fusion and len(records) > 1:
        fplan = _fusion.plan(records, reach, source_ids | set(grads))
        if fplan is not None:
            fused, order = fplan.runs, fplan.visit
    for idx in order:
        rec = records[idx]
        out_id = rec.out_id
        if out_id not in reach:
            continue
        if rec.extra_outs is None:
            g = grads.get(out_id) if out_id in source_ids else grads.pop(out_id, None)
            if g is None:
                continue
        else:
            g = _gather_outputs(rec, grads, source_ids, diff)
            if g is None:
                continue
        if fused is not None:
            run = fused.get(idx)
            if run is not None:
                run(g, grads, owned, reach, accumulate)
                if release:  # the run's members are done too
                    for m in run.members:
                        r = records[m]
                        r.inputs = _NONE1 if len(r.inputs) == 1 else (None,) * len(r.inputs)
                        r.output = None
                continue
        if diff:
            in_grads = rec.prim.vjp(rec, g)
        else:
            in_grads = _vjp_arrays(rec, g)
        if len(in_grads) != len(rec.in_ids):
            raise ValueError(f"internal error: the VJP of '{rec.prim.name}' returned "
                             f"{len(in_grads)} gradients for {len(rec.in_ids)} inputs")
        for i, gi in enumerate(in_grads):
            iid = rec.in_ids[i]
            if gi is None or not iid or iid not in reach:
                continue
            shape = rec.in_shapes[i]
            if diff:
                if not isinstance(gi, Tensor):
                    gi = _wrap(gi, _backend_of_array(gi))
                if gi.shape != shape:
                    gi = _unbroadcast_tensor(gi, shape, rec.prim)
                if gi.dtype != rec.in_dtypes[i]:
                    from . import ops

                    gi = ops.astype(gi, rec.in_dtypes[i])
            else:
                if numerics:
                    _check_finite(rec.prim, (), gi, "backward", rec.where)
                dt = rec.in_dtypes[i]
                if iid not in grads and gi.shape == shape and gi.dtype == dt:  # first, as is
                    grads[iid] = gi  # not owned: the VJP may have passed its input through
                    continue
                accumulate(iid, gi, shape, dt, rec.prim, False)
                continue
            prev = grads.get(iid)
            grads[iid] = gi if prev is None else prev + gi
        if release:
            rec.release()
    return {i: grads[i] for i in source_ids if i in grads}


def _gather_outputs(rec: Record, grads: dict, source_ids: set, diff: bool) -> Any:
    ids = (rec.out_id, *rec.extra_outs)
    gs = [grads.get(i) if i in source_ids else grads.pop(i, None) for i in ids]
    if all(g is None for g in gs):
        return None
    return tuple(gs)
