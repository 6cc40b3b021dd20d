"""Per-thread tape state: which tapes record, which are paused, who watches Variable reads.

The bottom of the autodiff layers: it imports nothing of gradtape's but the configuration, so
the Tensor class can tell the active tapes that a value left them (:func:`note_cut`). Tapes are
seen through the few methods :class:`gradtape._src.autodiff.record.Recorder` defines.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import TYPE_CHECKING, Any

from ..config import HOOKS

if TYPE_CHECKING:  # the layers above, named in annotations only
    from ..tensor import Tensor, Variable
    from .record import ForwardRecorder, Recorder

__all__ = ["STATE", "hooks_add", "note_cut", "user_line", "user_stacklevel", "paused_recording", "opaque",
           "Identity", "tracing", "read_for_trace", "watch_variables", "FLAGS", "flag_changed"]

_HOOK_LOCK = threading.Lock()
_PKG_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # gradtape/


class _State(threading.local):
    """Per-thread tape stacks: a tape records only the ops of the thread that entered it."""

    def __init__(self) -> None:
        self.recording: list[Recorder] = []  # innermost last
        self.paused: list[Recorder] = []  # tapes inside their stop_recording()
        self.watchers: list[dict[int, Variable]] = []  # custom_gradient: Variables read while it runs
        # active forward accumulators, outermost first (while one computes its tangents, the
        # stack is cut to the ones outside it: see ForwardAccumulator._accumulate)
        self.forward: list[ForwardRecorder] = []
        self.transforms = 0  # vmap / jvp levels active: backward passes must stay differentiable
        self.vmap_level = 0  # nested gt.vmap calls active (BatchedTensor._level of the innermost)
        # per active vmap level, outermost first: (level, batch size, randomness mode, the
        # chunked "same" vmap's SharedDraws or None)
        self.vmap_random: list[tuple[int, int | None, str, Any]] = []
        # per active vmap level, outermost first: what the user called (None: gt.vmap), for
        # messages (tape.jacobian's vectorized backward is a vmap level too)
        self.batch_labels: list[str | None] = []
        self.trace: Any = None  # the gt.function trace running in this thread, if any
        # a module call's training=True/False (Keras's call context): every Module.training
        # read in this thread while the call runs gives it; None: each module's own flag
        self.call_mode: bool | None = None
        self.fast: list[Recorder] | None = self.recording  # the recording tapes when nothing else is on
        # the recording tapes when a gt.function trace is the only other thing on: the fast
        # record paths serve ops whose result is traced and that read no Variable (the trace
        # logged their array calls; the others go to the general path, which logs them)
        self.trace_fast: list[Recorder] | None = None

    def sync(self) -> None:
        """Refresh ``fast`` after a change to the stacks (one attribute read per recorded op)."""
        plain = not (self.watchers or self.paused or self.forward)
        self.fast = self.recording if plain and self.trace is None else None
        self.trace_fast = self.recording if plain and self.trace is not None else None


STATE = _State()


def hooks_add(n: int) -> None:
    """Count ``n`` more (or fewer) active tapes/watchers, process-wide, and refresh the fast
    path flags of this thread."""
    with _HOOK_LOCK:
        HOOKS.count += n
        HOOKS.refresh()
    STATE.sync()


@contextmanager
def paused_recording(watcher: dict[int, Variable]) -> Iterator[list[Recorder]]:
    """Pause every recording tape and forward accumulator of this thread and collect the
    Variables read meanwhile into ``watcher`` (``{id: Variable}``); yields the paused tapes
    (custom_gradient's forward)."""
    st = STATE
    saved = st.recording
    saved_forward = st.forward
    st.recording = []
    st.forward = []
    st.watchers.append(watcher)
    hooks_add(1)
    try:
        yield saved
    finally:
        st.watchers.remove(watcher)
        st.recording = saved
        st.forward = saved_forward
        hooks_add(-1)


_INTERNAL_FILES: dict[str, bool] = {}


def _internal_frame(frame: FrameType) -> bool:
    name = frame.f_code.co_filename
    if name.startswith("<"):  # code gradtape generated with eval/exec: no module globals
        return "__name__" not in frame.f_globals
    inside = _INTERNAL_FILES.get(name)
    if inside is None:
        inside = _INTERNAL_FILES[name] = os.path.abspath(name).startswith(_PKG_DIR)
    return inside


def _library_frame(frame: FrameType) -> bool:
    """A frame of NumPy's or CuPy's own Python code (``np.clip`` calls the tensor's method
    from ``fromnumeric.py``): the user's line is the caller's."""
    name = frame.f_code.co_filename
    inside = _LIBRARY_FILES.get(name)
    if inside is None:
        dirs = [os.path.dirname(m.__file__) + os.sep for m in
                (sys.modules.get("numpy"), sys.modules.get("cupy")) if m is not None and m.__file__]
        inside = _LIBRARY_FILES[name] = os.path.abspath(name).startswith(tuple(dirs))
    return inside


_LIBRARY_FILES: dict[str, bool] = {}


def user_line() -> str:
    """``file:line`` of the innermost stack frame outside the gradtape package (and outside
    NumPy's and CuPy's Python code, through which a user's call may reach gradtape)."""
    frame: FrameType | None = sys._getframe(1)
    while frame is not None and (_internal_frame(frame) or _library_frame(frame)):
        frame = frame.f_back
    if frame is None:
        return "<unknown>"
    return f"{frame.f_code.co_filename}:{frame.f_lineno}"


def user_stacklevel() -> int:
    """The ``stacklevel`` for ``warnings.warn`` called in the caller of this function that
    points at the innermost frame outside the gradtape package (the user's line, however deep
    the library's own calls are)."""
    frame: FrameType | None = sys._getframe(1)
    level = 1
    while frame is not None and _internal_frame(frame):
        frame = frame.f_back
        level += 1
    return level


def note_cut(t: Tensor, reason: str) -> None:
    """Tell every active tape tracking tensor ``t`` that its value left the graph, and why."""
    for tape in (*STATE.recording, *STATE.paused):
        if t._id in tape._tracked or (t._is_variable and tape._watch_accessed
                                      and getattr(t, "trainable", False)):
            # (a trainable Variable is the tape's to follow once read, even by this read)
            tape._cut((t,), (True,), reason)


def tracing() -> bool:
    """Whether this thread is tracing a ``gt.function`` step (and not inside an opaque
    library call)."""
    tr = STATE.trace
    return tr is not None and not tr.suspended


def refuse_in_trace(what: str, why: str) -> None:
    """Inside a ``gt.function`` trace: a call that reads or writes host state outside the
    program (a checkpoint file, an optimizer's state as host arrays), which would run at the
    traces only; ``TracingError`` naming ``what`` and the user's line and saying ``why`` (with
    ``fallback="eager"``: the step runs eagerly). Outside a trace: nothing.

    Example:
        >>> refuse_in_trace("gt.nn.save()", "it would write at the traces only")  # not tracing
    """
    tr = STATE.trace
    if tr is not None and not tr.suspended:
        tr.refuse(what, why)


class Identity:
    """Part of an :func:`opaque` step's key naming an object by identity (the generator a draw
    advances): two traces that meet different objects say which kind, where a bare ``id``
    showed two numbers.

    Example:
        >>> g = object()
        >>> Identity(g, "a generator") == Identity(g, "a generator")
        True
    """

    __slots__ = ("id", "what")

    def __init__(self, obj: Any, what: str) -> None:
        self.id, self.what = id(obj), what

    def __eq__(self, other: object) -> bool:
        return type(other) is Identity and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def __repr__(self) -> str:
        return self.what


def opaque(fn: Callable[..., Any], *arrays: Any, key: Any = None) -> Any:
    """Run ``fn(*arrays)`` and, while a ``gt.function`` step is traced, log it as one step of
    the program (replayed as this call on that replay's arrays). For stateful library calls
    whose host state must advance at each replay: optimizer updates, random draws, Variable
    writes. ``fn`` receives and returns backend arrays (or None, or a tuple of arrays);
    ``key`` (hashable, comparable) identifies the call when two traces are compared (by
    default ``fn`` itself).

    Example:
        >>> import numpy as np
        >>> opaque(np.negative, np.ones(2))
        array([-1., -1.])
    """
    tr = STATE.trace
    if tr is None or tr.suspended:
        return fn(*arrays)
    return tr.opaque(fn, list(arrays), fn if key is None else key)


#: ``FLAGS[0]`` counts changes of the Python flags a ``gt.function`` program depends on
#: (``Variable.trainable``, ``Module.training``): a replay rechecks its program's flags only
#: when the count moved since it last did (one comparison per call otherwise).
FLAGS = [0]


def flag_changed() -> None:
    """A flag a ``gt.function`` program may depend on changed value (see :data:`FLAGS`).

    Example:
        >>> before = FLAGS[0]; flag_changed(); FLAGS[0] == before + 1
        True
    """
    FLAGS[0] += 1


def watch_variables(variables: Any) -> None:
    """While a ``gt.function`` step is traced: the program depends on these Variables (a
    library step writes them), so it is stale once one of them dies and the step traces
    again. Nothing otherwise.

    Example:
        >>> watch_variables([])  # not tracing: no effect
    """
    tr = STATE.trace
    if tr is not None and not tr.suspended:
        tr.saw(tuple(variables))


def read_for_trace(x: Any, *others: Any) -> Any:
    """``x`` as a value of the running ``gt.function`` trace when it is an untraced array (a
    Variable's buffer, a constant) and one of ``others`` (possibly inside tuples) is traced:
    NumPy's own indexing of ``x`` by a traced index would read the index on the host."""
    tr = STATE.trace
    if tr is None or tr.suspended or getattr(x, "_gt_traced", False):
        return x
    stack = list(others)
    while stack:
        o = stack.pop()
        if getattr(o, "_gt_traced", False):
            return tr.read(x)
        if type(o) is tuple or type(o) is list:
            stack.extend(o)
    return x
