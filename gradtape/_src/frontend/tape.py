"""GradientTape: the public tape API (TF semantics), on top of the recording machinery.

Recording itself is :func:`gradtape._src.autodiff.record.record`; the reverse pass is
:func:`gradtape._src.autodiff.engine.backward`; why a gradient is missing is explained by
:mod:`.diagnostics`. This module adds the context protocol, watching, argument checks, and
the jacobians (which stack rows with gradtape ops, hence its place above the ops).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from ... import ops
from ..autodiff.batched import BatchedTensor, batch_level
from ..autodiff.engine import backward
from ..autodiff.record import Recorder
from ..autodiff.state import STATE, hooks_add, user_line
from ..backend import Array
from ..errors import UnconnectedGradientError, as_flag
from ..nest import flatten, unflatten
from ..tensor import Tensor, TensorLike, TensorTree, Variable, _wrap
from . import per_example
from .diagnostics import explain, float_hint

__all__ = ["GradientTape", "UnconnectedGradientError"]

_UNCONNECTED = ("none", "zero", "raise")


class GradientTape(Recorder):
    """Records operations on watched tensors so that gradients can be computed (TF's
    ``tf.GradientTape``): use it as a context manager, then call :meth:`gradient`.

    Args:
        persistent: allow several :meth:`gradient` (and ``jacobian``) calls; a non-persistent
            tape answers one call and then frees what it saved.
        watch_accessed_variables: watch trainable Variables automatically when an op inside
            the context reads them (default True); with False only :meth:`watch` decides.

    Example:
        >>> import gradtape as gt
        >>> x = gt.tensor(3.0)
        >>> with gt.GradientTape() as tape:
        ...     tape.watch(x)
        ...     y = x * x
        >>> float(tape.gradient(y, x))
        6.0
    """

    __slots__ = ("_persistent", "_recording", "_entered", "_used", "_stack", "_exited",
                 "__weakref__")

    def __init__(self, persistent: bool = False, watch_accessed_variables: bool = True) -> None:
        super().__init__(as_flag(watch_accessed_variables, "GradientTape", "watch_accessed_variables"))
        self._persistent = as_flag(persistent, "GradientTape", "persistent")
        self._recording = False
        self._stack: list[Recorder] | None = None  # the recording stack of the thread that entered it
        self._exited = False
        self._entered = False
        self._used = False

    def __enter__(self) -> GradientTape:
        """Start recording on this thread (``with gt.GradientTape() as tape:``); returns the
        tape. ``ValueError`` when it is already recording."""
        if self._recording:
            raise ValueError("this GradientTape is already recording; a tape cannot be entered "
                             "twice at once (use a new tape, or nest two tapes)")
        self._exited = False
        self._push()
        self._entered = True
        return self

    def __exit__(self, *exc: object) -> None:
        # inside its own stop_recording() the tape is paused, not recording: the block's end
        # must then not resume it (_exited), or it would record every later op of the thread
        self._exited = True
        if self._recording:
            self._pop()

    def _push(self) -> None:
        stack = self._stack = STATE.recording
        self._vlevel = STATE.vmap_level
        stack.append(self)
        self._recording = True
        hooks_add(1)

    def _pop(self) -> None:
        # the entering thread's stack, also when another thread exits the tape
        stack = self._stack if self._stack is not None else STATE.recording
        if self in stack:
            stack.remove(self)
        self._recording = False
        hooks_add(-1)

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
        hooks_add(1)
        try:
            yield
        finally:
            STATE.paused.remove(self)
            hooks_add(-1)
            if not self._exited:
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
        self._clear()
        self._variables = {}
        self._used = False

    # --- watching ---------------------------------------------------------------------------
    def watch(self, tensor: TensorTree) -> None:
        """Follow ``tensor`` (or a list/tuple/dict of tensors) so gradients can flow to it.

        Integer and boolean tensors cannot carry gradients and are not followed (asking for
        their gradient raises ``TypeError``).
        """
        leaves, _ = flatten(tensor)
        for i, t in enumerate(leaves):
            if not isinstance(t, Tensor):
                where = f" (item {i})" if len(leaves) > 1 else ""
                raise TypeError(f"tape.watch(): expected a gradtape Tensor or Variable{where}, got "
                                f"{type(t).__name__}; wrap arrays with gt.tensor(...)")
            if t.data.dtype.kind == "c":
                raise TypeError(f"tape.watch(): complex tensors are not differentiable in "
                                f"gradtape (got dtype {t.dtype}); differentiate the real and "
                                "imaginary parts as separate float tensors")
            if t.data.dtype.kind != "f":
                continue
            self._watch_tensor(t)

    def watched_variables(self) -> tuple[Variable, ...]:
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

    def recorded_ops(self) -> tuple[str, ...]:
        """Names of the primitives this tape holds records of, in recording order: what its
        backward pass would differentiate (only ops that touch a watched tensor are recorded;
        a non-persistent tape drops its records once a gradient has been computed).

        Example:
            >>> import gradtape as gt
            >>> x = gt.tensor([1.0, 2.0])
            >>> with gt.GradientTape() as tape:
            ...     tape.watch(x)
            ...     y = gt.sum(gt.sin(x) * 2.0)
            ...     z = gt.cos(gt.tensor(1.0))   # touches no watched tensor: not recorded
            >>> tape.recorded_ops()
            ('sin', 'mul', 'sum')
        """
        return tuple(rec.prim.name for rec in self._records)

    # --- gradients --------------------------------------------------------------------------
    def _check_usable(self, what: str) -> None:
        if not self._entered:  # (it recorded nothing: every gradient would be None)
            raise RuntimeError(f"{what}: this tape was never entered, so it recorded nothing; "
                               "compute the target inside `with gt.GradientTape() as tape:`")
        if self._used and not self._persistent:
            raise RuntimeError(f"{what}: a non-persistent GradientTape can compute gradients only "
                               "once; use GradientTape(persistent=True) to call it several times")

    def _start_call(self, what: str) -> None:
        """The arguments are valid: the backward starts and uses a non-persistent tape up
        (TF's rule: only a call that reaches the backward counts)."""
        self._check_usable(what)
        if self._recording and not self._persistent:
            self._pop()  # TF semantics: a non-persistent tape stops recording here
        self._used = True

    def gradient(self, target: TensorTree, sources: TensorTree,
                 output_gradients: TensorLike | Mapping[Any, TensorLike | None] | None = None,
                 unconnected_gradients: str = "none", *,
                 _ready: Callable[[int, Array], None] | None = None) -> Any:
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
        self._check_usable("gradient()")
        flat_sources, spec = self._flatten_sources(sources, "gradient()")
        targets, seeds = self._targets_and_seeds(target, output_gradients)
        self._start_call("gradient()")  # after validation: a rejected call leaves the tape usable
        diff = bool(STATE.recording) or STATE.transforms > 0
        # _ready (private, gt.distributed): called with (source id, gradient array) as soon as
        # a source's gradient is final during a first-order pass (engine.backward)
        grads = backward(self, targets, seeds, flat_sources, diff, release=not self._persistent,
                         ready=_ready)
        results = self._finish(flat_sources, grads, targets, unconnected_gradients, diff)
        if not self._persistent:
            self._drop()
        return unflatten(spec, results)

    def per_example_gradients(self, target: Tensor, sources: TensorTree, *,
                              max_norm: float | None = None, reduce: str | None = None,
                              return_norms: bool = False,
                              unconnected_gradients: str = "none") -> Any:
        """Gradient of each example's loss alone, in one reverse pass; optionally clipped per
        example (DP-SGD) and summed over the batch.

        Args:
            target: the per-example loss ``[B]``, or ``[B, ...]`` (summed within each example).
            sources: shared parameters (Variables or watched tensors without a batch axis), a
                Tensor or a nested list/tuple/dict of them.
            max_norm: clip each example's gradient to norm ``C``: scale it by
                ``min(1, C / ||g_b||)``, the norm taken over all sources jointly (a zero norm
                gives scale 1).
            reduce: None for per-example gradients ``[B, *source.shape]``; ``"sum"`` for their
                sum over the batch, ``source.shape``, formed without all of the per-example
                gradients where the layer allows (dense layers and embeddings: "ghost" norms;
                convolution weights: their per-example gradients a chunk of examples at a time,
                for the norms only).
            return_norms: also return the unclipped per-example norms ``[B]``.
            unconnected_gradients: ``"none"``, ``"zero"`` (zeros of the result's shape) or
                ``"raise"``, as :meth:`gradient`.

        Returns:
            Gradients with the structure of ``sources``, each of its source's dtype; with
            ``return_norms``, the pair ``(gradients, norms)``.

        It counts as a gradient call (a non-persistent tape allows one) and is first order:
        outer tapes do not record it. It assumes that the examples do not interact (no batch
        statistics) and that every per-example tensor has the batch axis first: an input that
        is not differentiated counts as per-example data when its shape is ``[B, ...]`` and as
        a constant otherwise (a Variable that is not a source is always a constant). Layers
        without a per-example rule where a parameter meets per-example data raise
        ``NotImplementedError``; use ``gt.vmap(gt.grad(...))`` over the examples there.

        Example:
            >>> import gradtape as gt
            >>> w = gt.Variable([1.0, -1.0])
            >>> x = gt.tensor([[1.0, 2.0], [3.0, 0.0]])        # B = 2 examples
            >>> with gt.GradientTape() as tape:
            ...     loss = gt.sum(x * w, axis=1) ** 2          # [B]
            >>> tape.per_example_gradients(loss, w).numpy()   # d loss_b / d w = 2 (x_b . w) x_b
            array([[-2., -4.],
                   [18.,  0.]], dtype=float32)
        """
        what = per_example.WHAT
        _check_unconnected(unconnected_gradients)
        opts = per_example.check_options(target, max_norm, reduce, return_norms, unconnected_gradients)
        self._check_usable(what)
        flat_sources, spec = self._flatten_sources(sources, what)
        needs_norms = opts.max_norm is not None or opts.return_norms
        plan = per_example.analyse(self, target, flat_sources, rules=opts.reduce is None or needs_norms,
                                   ghost=opts.reduce == "sum" and needs_norms)
        self._start_call(what)  # after validation: a rejected call leaves the tape usable
        results, norms = per_example.per_example_gradients(self, target, flat_sources, plan, opts,
                                                           release=not self._persistent)
        if not self._persistent:
            self._drop()
        grads = unflatten(spec, results)
        return (grads, norms) if opts.return_norms else grads

    def _drop(self) -> None:
        self._clear()

    def _flatten_sources(self, sources: TensorTree, what: str) -> tuple[list[Tensor], Any]:
        if sources is None:
            raise TypeError(f"{what}: sources is None; pass a Tensor, Variable, or a list/dict of them")
        leaves, spec = flatten(sources)
        for i, s in enumerate(leaves):
            if not isinstance(s, Tensor) or s.data.dtype.kind != "f":
                where = f"sources[{i}]" if len(leaves) > 1 or isinstance(sources, (list, tuple, dict)) \
                    else "sources"
                if not isinstance(s, Tensor):
                    hint = ""
                    if where == "sources" and hasattr(s, "__iter__") and not hasattr(s, "shape"):
                        # (dict.values(), a generator, a set: not a nest of tensors)
                        hint = "; pass list(...) of it"
                    raise TypeError(f"{what}: {where} must be a gradtape Tensor or Variable, or a "
                                    f"list, tuple or dict of them, got {type(s).__name__}{hint}")
                if s.data.dtype.kind == "c":
                    raise TypeError(f"{what}: {where} has dtype {s.dtype}; complex gradients are "
                                    "not supported (differentiate the real and imaginary parts as "
                                    "separate float tensors)")
                raise TypeError(f"{what}: {where} has dtype {s.dtype}; gradients exist only for "
                                f"floating-point sources ({float_hint(s)})")
        return leaves, spec

    def _targets_and_seeds(self, target: TensorTree,
                           output_gradients: TensorLike | Mapping[Any, TensorLike | None] | None
                           ) -> tuple[list[Tensor], list[Tensor | None]]:
        targets, tspec = flatten(target)
        for i, t in enumerate(targets):
            if not isinstance(t, Tensor):
                raise TypeError(f"gradient(): target{'' if len(targets) == 1 else f'[{i}]'} must be "
                                f"a gradtape Tensor, got {type(t).__name__}")
        if output_gradients is None:
            return targets, [None] * len(targets)
        if isinstance(target, Tensor) and isinstance(output_gradients, (list, tuple)) \
                and len(output_gradients) == 1:
            output_gradients = output_gradients[0]
        ograds, _ = flatten(output_gradients)
        if len(ograds) != len(targets):
            raise ValueError(f"gradient(): output_gradients has {len(ograds)} entries, expected "
                             f"one per target ({len(targets)})")
        seeds: list[Tensor | None] = []
        for i, (t, og) in enumerate(zip(targets, ograds)):
            if og is None:
                seeds.append(None)
                continue
            name = f"output_gradients[{i}]" if len(targets) > 1 else "output_gradients"
            og = value_like(og, t, "gradient()", name, "the target's")
            seeds.append(og)
        del tspec
        return targets, seeds

    def _finish(self, sources: list[Tensor], grads: dict[int, Tensor | Array], targets: list[Tensor],
                mode: str, diff: bool) -> list[Tensor | None]:
        out: list[Tensor | None] = []
        origin: tuple[str, str] | None = None
        for s in sources:
            g = grads.get(s._id) if s._id else None
            if g is None:
                if mode == "raise":
                    raise UnconnectedGradientError(explain(self, s, targets))
                if mode == "zero":
                    g = s._backend.xp.zeros(s.shape, s.dtype)
                    out.append(_wrap(g, s._backend))
                else:
                    out.append(None)
                continue
            if diff:
                if g.dtype != s.dtype:
                    g = g.astype(s.dtype)
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

    # --- jacobians --------------------------------------------------------------------------
    def jacobian(self, target: Tensor, sources: TensorTree, unconnected_gradients: str = "none",
                 parallel_iterations: int | None = None, experimental_use_pfor: bool = True) -> Any:
        """Jacobian of ``target`` with respect to each source: shape
        ``target.shape + source.shape``, from one vectorized reverse pass over the basis
        cotangents (``experimental_use_pfor=False``: one pass per entry of ``target``, which
        needs a persistent tape). ``parallel_iterations`` (a positive int, TensorFlow's memory
        knob): at most that many entries per vectorized pass, the passes' rows joined.

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
        _check_parallel(parallel_iterations, "jacobian()")
        if target is None:
            raise TypeError("jacobian(): target is None")
        if not isinstance(target, Tensor):
            raise TypeError(f"jacobian(): target must be a gradtape Tensor, got {type(target).__name__}")
        if not experimental_use_pfor and not self._persistent:
            raise RuntimeError("jacobian(experimental_use_pfor=False) loops over gradient calls "
                               "and needs GradientTape(persistent=True)")
        self._check_usable("jacobian()")
        flat_sources, spec = self._flatten_sources(sources, "jacobian()")
        self._start_call("jacobian()")
        diff = bool(STATE.recording) or STATE.transforms > 0
        if experimental_use_pfor and target.size and all(s.size for s in flat_sources):
            rows = _jacobian_vectorized(self, target, flat_sources, batch=False,
                                        chunk=parallel_iterations)
        else:
            rows = _jacobian_rows(self, target, flat_sources, diff, batch=False)
        results = []
        for k, s in enumerate(flat_sources):
            r = rows[k]
            if r is None and (target.size == 0 or s.size == 0):  # an empty Jacobian is all zeros
                r = _wrap(s._backend.xp.zeros(target.shape + s.shape, s.dtype), s._backend)
            if r is None:
                if unconnected_gradients == "raise":
                    raise UnconnectedGradientError(explain(self, s, [target]))
                if unconnected_gradients == "zero":
                    r = _wrap(s._backend.xp.zeros(target.shape + s.shape, s.dtype), s._backend)
                results.append(r)
                continue
            results.append(r)
        if not self._persistent:
            self._drop()
        return unflatten(spec, results)

    def batch_jacobian(self, target: Tensor, source: Tensor, unconnected_gradients: str = "none",
                       parallel_iterations: int | None = None, experimental_use_pfor: bool = True) -> Tensor:
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
        _check_parallel(parallel_iterations, "batch_jacobian()")
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
        self._check_usable("batch_jacobian()")
        flat, _ = self._flatten_sources(source, "batch_jacobian()")
        self._start_call("batch_jacobian()")
        diff = bool(STATE.recording) or STATE.transforms > 0
        if target.size == 0 or source.size == 0:  # an empty Jacobian is all zeros
            r = None
        elif experimental_use_pfor:
            r = _jacobian_vectorized(self, target, flat, batch=True, chunk=parallel_iterations)[0]
        else:
            r = _jacobian_rows(self, target, flat, diff, batch=True)[0]
        if r is None:
            if unconnected_gradients == "raise" and target.size and source.size:
                raise UnconnectedGradientError(explain(self, source, [target]))
            r = _wrap(source._backend.xp.zeros(target.shape + source.shape[1:], source.dtype),
                      source._backend)
        if not self._persistent:
            self._drop()
        return r


def value_like(value: Any, like: Tensor, what: str, name: str, owner: str) -> Tensor:
    """``value`` (an upstream gradient or a tangent: a Tensor, an array or a number) as a Tensor
    of ``like``'s shape, dtype and backend; anything else raises naming ``name`` (``owner``:
    whose shape it must have, e.g. ``"the target's"``)."""
    if not isinstance(value, Tensor):
        if isinstance(value, (str, bytes)) or value is None:
            raise TypeError(f"{what}: {name} must be a Tensor or array of {owner} shape "
                            f"{like.shape}, got {type(value).__name__}")
        try:
            arr = (like._backend.xp.asarray(value) if isinstance(value, np.ndarray)
                   else like._backend.xp.asarray(value, dtype=like.dtype))
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{what}: {name} must be a Tensor or array of {owner} shape "
                            f"{like.shape}, got {type(value).__name__} ({exc})") from None
        value = _wrap(arr, like._backend)
    if value.shape != like.shape:
        raise ValueError(f"{what}: {name} has shape {value.shape}, expected {owner} shape "
                         f"{like.shape}")
    if value.dtype != like.dtype:
        raise TypeError(f"{what}: {name} has dtype {value.dtype}, expected {owner} dtype "
                        f"{like.dtype}")
    if value._backend is not like._backend:
        raise ValueError(f"{what}: {name} is on backend {value.backend!r}, {owner[:-2]} on "
                         f"{like.backend!r}")
    return value


def _check_parallel(value: Any, who: str) -> None:
    """``parallel_iterations``: None or a positive int (TensorFlow's knob for the memory of the
    vectorized Jacobian: the rows computed together)."""
    if value is None:
        return
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
        raise TypeError(f"{who}: parallel_iterations must be a positive int (rows of the "
                        f"Jacobian computed together) or None (all at once), got "
                        f"{type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{who}: parallel_iterations must be a positive int (rows of the "
                         f"Jacobian computed together) or None (all at once), got {value!r}")


def _check_unconnected(value: str) -> None:
    if value not in _UNCONNECTED:
        raise ValueError(f"unconnected_gradients must be 'none', 'zero' or 'raise', got {value!r}")


def _jacobian_vectorized(tape: GradientTape, target: Tensor, sources: list[Tensor],
                         batch: bool, chunk: int | None = None) -> list[Tensor | None]:
    """One reverse pass over a batch of basis cotangents (TF's pfor path): the seed is a
    BatchedTensor holding ``eye(n)`` reshaped to ``[n, *target.shape]`` (per example when
    ``batch``), so every VJP on the way runs batched (vmap of the VJP; see batched.py).
    ``chunk`` (``parallel_iterations``): at most that many rows per pass, the passes' results
    joined (the memory of ``chunk`` rows, not of all)."""
    m = math.prod(target.shape[1:] if batch else target.shape)
    if chunk is not None and chunk < m:
        parts = [_jacobian_vectorized_rows(tape, target, sources, batch, (lo, min(lo + chunk, m)))
                 for lo in range(0, m, chunk)]
        axis = 1 if batch else 0
        out: list[Tensor | None] = []
        for k, s in enumerate(sources):
            pieces = [p[k] for p in parts]
            if all(p is None for p in pieces):
                out.append(None)
                continue
            tshape = target.shape
            flat = [ops.reshape(p, ((tshape[0], -1) if batch else (-1,)) + tuple(
                s.shape[1:] if batch else s.shape)) for p in pieces if p is not None]
            joined = ops.concat(flat, axis=axis)
            out.append(ops.reshape(joined, tshape + (s.shape[1:] if batch else s.shape)))
        return out
    return _jacobian_vectorized_rows(tape, target, sources, batch, None)


def _jacobian_vectorized_rows(tape: GradientTape, target: Tensor, sources: list[Tensor],
                              batch: bool, rows: tuple[int, int] | None) -> list[Tensor | None]:
    """:func:`_jacobian_vectorized` for the basis cotangents ``rows`` (start, stop; None: all);
    each result ``[rows, ...]`` flat over the target's (per-example) entries when ``rows`` is
    given, else shaped as the Jacobian."""
    xp = target._backend.xp
    tshape = target.shape
    if batch:
        m = math.prod(tshape[1:])
        lo, hi = rows if rows is not None else (0, m)
        eye = xp.eye(hi - lo, m, k=lo, dtype=target.dtype).reshape((hi - lo, 1) + tshape[1:])
        seed_arr = xp.ascontiguousarray(xp.broadcast_to(eye, (hi - lo,) + tshape))
    else:
        m = math.prod(tshape)
        lo, hi = rows if rows is not None else (0, m)
        seed_arr = xp.eye(hi - lo, m, k=lo, dtype=target.dtype).reshape((hi - lo,) + tshape)
    m = hi - lo
    label = ("tape.batch_jacobian" if batch else "tape.jacobian") + \
        "'s vectorized backward (experimental_use_pfor=True)"
    with batch_level(label=label) as level:
        seed = BatchedTensor(_wrap(seed_arr, target._backend), 0, level)
        grads = backward(tape, [target], [seed], sources, True, release=False)
    out: list[Tensor | None] = []
    for s in sources:
        g = grads.get(s._id) if s._id else None
        if g is None:
            out.append(None)
            continue
        if isinstance(g, BatchedTensor) and g._level == level:
            phys = ops.moveaxis(g._value, g._bdim, 0) if g._bdim else g._value
        else:  # the same for every cotangent (cannot depend on it): broadcast
            gt_ = g if isinstance(g, Tensor) else _wrap(g, s._backend)
            phys = ops.broadcast_to(ops.expand_dims(gt_, 0), (m,) + gt_.shape)
        if phys.dtype != s.dtype:
            phys = ops.astype(phys, s.dtype)
        if batch:  # [m, B, *s1] -> [B, m, *s1] -> [B, *t1, *s1]
            phys = ops.moveaxis(phys, 0, 1)
            out.append(phys if rows is not None else ops.reshape(phys, tshape + s.shape[1:]))
        else:
            out.append(phys if rows is not None else ops.reshape(phys, tshape + s.shape))
    return out


def _jacobian_rows(tape: GradientTape, target: Tensor, sources: list[Tensor], diff: bool,
                   batch: bool) -> list[Tensor | None]:
    """Loop over target elements (per example when ``batch``), one reverse pass each."""
    xp = target._backend.xp
    n_rows = math.prod(target.shape[1:] if batch else target.shape)
    per_source: list[list[Tensor | Array | None]] = [[] for _ in sources]
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
    out: list[Tensor | None] = []
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
