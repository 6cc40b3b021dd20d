"""Forward-mode automatic differentiation: :class:`ForwardAccumulator` (TF's
``tf.autodiff.ForwardAccumulator``) and :func:`jvp`.

An active accumulator sits on ``STATE.forward`` (per thread, outermost first). After every op,
:func:`gradtape._src.autodiff.record.record` calls its ``_accumulate``: when an input has a
tangent, the output's tangent is the primitive's JVP rule (``Primitive.jvp``) run on
:data:`~gradtape._src.rules.ON_TENSORS`, so it is made of recorded gradtape ops. While it runs,
the stack is cut to the accumulators outside this one: an accumulator never sees its own tangent
computations, outer ones do (nested accumulators give higher derivatives), and recording tapes
see them all (reverse-over-forward). An active accumulator also counts in ``STATE.transforms``,
so a ``tape.gradient`` inside it runs its backward in recorded ops, whose tangents are then
Hessian-vector products (forward-over-reverse).

Tangents are kept by tensor id, each only as long as its primal tensor is alive (TF's rule).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import numpy as np

from ... import ops
from ..autodiff.record import ForwardRecorder, RecordX
from ..autodiff.state import STATE, hooks_add
from ..errors import MissingRuleError
from ..nest import flatten, unflatten
from ..primitive import BUILTIN, Primitive, bind
from ..rules import ON_TENSORS
from ..tensor import Tensor, TensorTree, _next_id, _wrap, tensor
from .custom_gradient import _CustomCall
from .diagnostics import float_hint
from .tape import GradientTape, value_like

__all__ = ["ForwardAccumulator", "jvp"]

_UNCONNECTED = ("none", "zero")


class ForwardAccumulator(ForwardRecorder):
    """Computes Jacobian-vector products of the ops run in its context, by forward-mode
    automatic differentiation (TF's ``tf.autodiff.ForwardAccumulator``).

    ``primals`` (a Tensor/Variable or a nested list/tuple/dict of them, floating point) move in
    the direction ``tangents`` (same structure; each tangent has its primal's shape and dtype).
    Every op run inside ``with acc:`` that depends on a primal gets the tangent of its output,
    read with :meth:`jvp`: for ``y = f(x)`` that is ``J_f(x) @ tangent``, computed alongside
    the forward pass (one extra op or so per op, no reverse pass).

    It composes with :class:`~gradtape.GradientTape` in both orders: the tangent computations
    are recorded ops, so a tape watching ``x`` around the accumulator differentiates
    ``acc.jvp(y)`` (reverse-over-forward); and ``tape.gradient`` called inside the accumulator's
    context runs its backward in recorded ops, so ``acc.jvp(gradient)`` is a Hessian-vector
    product (forward-over-reverse). Nested accumulators give higher-order derivatives: an
    accumulator does not see its own tangent computations, an outer one does.

    Ops without a JVP rule: a ``custom_gradient`` function raises
    :class:`~gradtape.extend.MissingRuleError` naming it when a tangent must go through it (its
    gradient defines only the reverse pass); a primitive declared with ``rule=`` but no ``jvp=``
    gets its tangent by transposing its VJP.

    Shapes: ``acc.jvp(y)`` has ``y``'s shape and dtype.

    Args:
        primals: the tensors that move: a Tensor/Variable or a nested list/tuple/dict of them.
        tangents: their directions, with ``primals``' structure, shapes and dtypes.

    Example:
        >>> import gradtape as gt
        >>> x = gt.tensor([1.0, 2.0])
        >>> with gt.ForwardAccumulator(x, gt.tensor([1.0, 0.0])) as acc:
        ...     y = x * x * 3.0
        >>> acc.jvp(y).numpy()
        array([6., 0.], dtype=float32)

        Forward-over-reverse: a Hessian-vector product.

        >>> with gt.ForwardAccumulator(x, gt.tensor([1.0, 1.0])) as acc:
        ...     with gt.GradientTape() as tape:
        ...         tape.watch(x)
        ...         loss = gt.sum(x ** 3.0)
        ...     g = tape.gradient(loss, x)      # 3 x**2
        >>> acc.jvp(g).numpy()                  # 6 x * v
        array([ 6., 12.], dtype=float32)
    """

    __slots__ = ("_tangents", "_refs", "_forget", "_active", "_stack", "__weakref__")

    def __init__(self, primals: TensorTree, tangents: Any) -> None:
        self._setup(_checked_pairs(primals, tangents, "ForwardAccumulator"))

    def _setup(self, pairs: list[tuple[Tensor, Tensor]]) -> None:
        self._tangents: dict[int, Tensor] = {}  # tensor id -> its tangent
        self._refs: dict[int, weakref.KeyedRef] = {}  # tensor id -> a weak reference to it
        self._active = False
        self._stack: list[ForwardRecorder] = []  # STATE.forward of the thread that entered it
        selfref = weakref.ref(self)

        def forget(ref: weakref.KeyedRef, selfref: weakref.ref = selfref) -> None:
            acc = selfref()  # weak: the tensors' callbacks must not keep the accumulator alive
            if acc is not None:
                acc._tangents.pop(ref.key, None)
                acc._refs.pop(ref.key, None)

        self._forget = forget
        for p, t in pairs:
            if not p._id:
                p._id = _next_id()
            prev = self._tangents.get(p._id)
            # the same tensor twice: its tangents add up (as TF's accumulator does)
            self._store(p, t if prev is None else prev + t)

    def __enter__(self) -> ForwardAccumulator:
        """Start computing tangents of the ops run in the context; returns the accumulator.
        ``ValueError`` when it is already active."""
        if self._active:
            raise ValueError("this ForwardAccumulator is already active; an accumulator cannot be "
                             "entered twice at once (nest two accumulators instead)")
        st = STATE
        stack = self._stack = st.forward
        stack.append(self)
        st.transforms += 1  # a tape.gradient inside must run its backward in recorded ops
        self._active = True
        hooks_add(1)
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._active:
            return
        st = STATE
        if self in self._stack:  # the entering thread's stack, also when another thread exits
            self._stack.remove(self)
        st.transforms -= 1
        self._active = False
        hooks_add(-1)

    # --- results ----------------------------------------------------------------------------
    def jvp(self, primals: TensorTree, unconnected_gradients: str = "none") -> Any:
        """The tangent of each tensor of ``primals`` (a Tensor or a nested list/tuple/dict of
        them): the Jacobian-vector product of the computation from the accumulator's primals
        to it, in the direction of its tangents.

        Args:
            primals: Tensors computed inside the accumulator's context (or its primals).
            unconnected_gradients: ``"none"`` gives None for a tensor that does not depend
                on the accumulator's primals (or was computed outside its context), ``"zero"``
                gives zeros of its shape and dtype.

        Returns:
            The tangents, with the structure of ``primals``; each has its tensor's shape and
            dtype.

        Example:
            >>> import gradtape as gt
            >>> x = gt.tensor(2.0)
            >>> with gt.ForwardAccumulator(x, gt.tensor(1.0)) as acc:
            ...     y = x * x
            >>> float(acc.jvp(y)), acc.jvp(gt.tensor(5.0))
            (4.0, None)
        """
        if unconnected_gradients not in _UNCONNECTED:
            raise ValueError(f"ForwardAccumulator.jvp(): unconnected_gradients must be 'none' or "
                             f"'zero', got {unconnected_gradients!r}")
        leaves, spec = flatten(primals)
        out: list[Tensor | None] = []
        for i, t in enumerate(leaves):
            if not isinstance(t, Tensor):
                where = f"primals[{i}]" if isinstance(primals, (list, tuple, dict)) else "primals"
                raise TypeError(f"ForwardAccumulator.jvp(): {where} must be a gradtape Tensor, got "
                                f"{type(t).__name__}")
            tangent = self._tangents.get(t._id) if t._id else None
            if tangent is None and unconnected_gradients == "zero":
                tangent = _wrap(t._backend.xp.zeros(t.shape, t.dtype), t._backend)
            out.append(tangent)
        return unflatten(spec, out)

    # --- the recording hook -----------------------------------------------------------------
    def _store(self, t: Tensor, tangent: Tensor) -> None:
        tid = t._id
        self._tangents[tid] = tangent
        if tid not in self._refs:
            self._refs[tid] = weakref.KeyedRef(t, self._forget, tid)

    def _accumulate(self, prim: Primitive, args: tuple[Tensor, ...], out: Tensor,
                    params: dict[str, Any], extra_outs: tuple[Tensor, ...], level: int) -> None:
        """Called by ``record`` after ``out = prim(*args, **params)`` ran in this accumulator's
        context (``level``: its index on ``STATE.forward``): store the tangent of ``out``."""
        tangents = self._tangents
        ts: list[Tensor | None] | None = None
        for i, a in enumerate(args):
            t = tangents.get(a._id) if a._id else None
            if t is not None:
                if ts is None:
                    ts = [None] * len(args)
                ts[i] = t
        if ts is None or prim.nondiff or out.data.dtype.kind != "f":
            return  # nothing moves, or the output carries no tangent (integer, bool)
        rule: Callable[..., Any] | None = prim.jvp
        if rule is None or extra_outs:
            rule = _fallback(prim, ts, bool(extra_outs))
        st = STATE
        stack = st.forward
        st.forward = stack[:level]  # hide the tangent computation from this accumulator and
        st.sync()  # the ones inside it; outer ones and tapes see it
        try:
            # silent as the reverse pass: derivatives are infinite at the documented singular
            # points (sqrt' at 0), and the selections and safe products then clean them up
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                tangent = rule(ON_TENSORS, args, tuple(ts), out, **params)
            if tangent is not None:
                if not isinstance(tangent, Tensor):
                    raise TypeError(f"forward mode: the JVP rule of primitive '{prim.name}' "
                                    f"returned {type(tangent).__name__}, not a Tensor")
                if tangent.shape != out.shape:
                    raise ValueError(f"forward mode: the JVP rule of primitive '{prim.name}' "
                                     f"returned a tangent of shape {tangent.shape} for an output "
                                     f"of shape {out.shape}")
                if tangent.dtype != out.dtype:
                    tangent = ops.astype(tangent, out.dtype)
        finally:
            st.forward = stack
            st.sync()
        if tangent is None:
            if rule is prim.jvp and prim.name not in BUILTIN:  # an extension's own rule
                raise TypeError(f"forward mode: the JVP rule of primitive '{prim.name}' returned "
                                "None; it returns the output's tangent, a Tensor of the output's "
                                "shape (zeros where the output does not move)")
            return
        if not out._id:
            out._id = _next_id()
        self._store(out, tangent)


class CustomGradientJvpError(MissingRuleError):
    """Forward mode met a ``custom_gradient`` function (which defines only the reverse pass);
    ``gt.hvp`` then takes its product by nested tapes."""


def _fallback(prim: Primitive, ts: list[Tensor | None], multi: bool) -> Callable[..., Any]:
    """The JVP of an op with no ``jvp`` rule: its VJP rule transposed, or an error naming it."""
    moving = ", ".join(str(i) for i, t in enumerate(ts) if t is not None)
    if isinstance(prim, _CustomCall):
        raise CustomGradientJvpError(
            f"forward mode: the custom_gradient function '{prim.name}' has no JVP rule, so a "
            f"ForwardAccumulator cannot push the tangent of its input(s) {moving} through it (a "
            "custom gradient defines only the reverse pass, as in TF); compute it with gradtape "
            "ops inside the accumulator, or differentiate it with a GradientTape")
    if multi or prim.rule is None:
        raise MissingRuleError(
            f"forward mode: primitive '{prim.name}' has no JVP rule (declare jvp=) and no VJP "
            f"rule to derive one from, so the tangent of its input(s) {moving} cannot be pushed "
            "through it")
    return _transposed_vjp(prim)


def _transposed_vjp(prim: Primitive) -> Callable[..., Any]:
    """``J v`` from the VJP ``g -> J^T g`` (linear in ``g``): the gradient with respect to
    ``g`` of ``<J^T g, v>`` at ``g = 0``, one reverse pass over the rule (in recorded ops, so
    it stays differentiable)."""
    def jvp(m: Any, primals: tuple, tangents: tuple, out: Tensor, **params: Any) -> Any:
        needs = tuple(t is not None for t in tangents)
        rec = RecordX(prim, primals, out, params, needs)
        g = _wrap(out._backend.xp.zeros(out.shape, out.dtype), out._backend)
        with GradientTape() as tape:
            tape.watch(g)
            total = None
            for gi, t in zip(prim.vjp(rec, g), tangents):
                if gi is not None and t is not None:
                    term = ops.sum(gi * t)
                    total = term if total is None else total + term
        return None if total is None else tape.gradient(total, g)

    return jvp


# --------------------------------------------------------------------------- arguments
def _structure(spec: Any) -> Any:
    """A flatten spec with lists and tuples alike (they match each other)."""
    if spec is None:
        return None
    kind, _typ, keys, children = spec[:4]
    if type(children) is int:
        return (kind, keys, children)
    return (kind, keys, tuple(_structure(c) for c in children))


def _checked_pairs(primals: Any, tangents: Any, what: str) -> list[tuple[Tensor, Tensor]]:
    """The (primal, tangent) leaf pairs, validated; tangents given as arrays or numbers become
    Tensors on the primal's backend."""
    p_leaves, p_spec = flatten(primals)
    t_leaves, t_spec = flatten(tangents)
    if _structure(p_spec) != _structure(t_spec):
        raise ValueError(f"{what}: tangents must have the structure of primals (one tangent per "
                         f"primal tensor), got {len(t_leaves)} tangent(s) in "
                         f"{type(tangents).__name__} for {len(p_leaves)} primal(s) in "
                         f"{type(primals).__name__}")
    nested = isinstance(primals, (list, tuple, dict))
    pairs = []
    for i, (p, t) in enumerate(zip(p_leaves, t_leaves)):
        pname, tname = (f"primals[{i}]", f"tangents[{i}]") if nested else ("primals", "tangents")
        if not isinstance(p, Tensor):
            raise TypeError(f"{what}: {pname} must be a gradtape Tensor or Variable, got "
                            f"{type(p).__name__}; wrap arrays with gt.tensor(...)")
        if p.data.dtype.kind != "f":
            raise TypeError(f"{what}: {pname} has dtype {p.dtype}; forward-mode derivatives exist "
                            f"only for floating-point primals ({float_hint(p)})")
        t = value_like(t, p, what, tname, f"{pname}'s")
        pairs.append((p, t))
    return pairs


def fresh_input(t: Tensor) -> Tensor:
    """A new Tensor of ``t``'s value for a function transform to differentiate (JAX's rule:
    each argument is an input of its own): another reference to ``t`` inside the function (a
    closure, a second argument, another leaf of the same nest, the tangent) is a constant, not
    the input. Recorded as an identity on the tapes already active, so an outer transform
    still differentiates through it. A Variable is passed as itself (a model reads its own,
    so every read of a Variable counts, as on a tape), and so is an integer tensor (refused
    later, by a message that names it)."""
    if t._is_variable or t.dtype.kind not in "fc":
        return t
    return bind(ops.shape.P_RESHAPE, t, shape=t.shape)


def _as_primal(leaf: Any, i: int) -> Tensor:
    if isinstance(leaf, Tensor):
        return fresh_input(leaf)
    if isinstance(leaf, (bool, int, np.integer, str, bytes)) or leaf is None or (
            isinstance(leaf, np.ndarray) and leaf.dtype.kind != "f"):
        raise TypeError(f"jvp(): primals[{i}] holds {type(leaf).__name__} ({leaf!r:.60}); "
                        "primals must be floating-point Tensors (or float arrays)")
    try:
        return tensor(leaf)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"jvp(): primals[{i}] must hold Tensors or float arrays, got "
                        f"{type(leaf).__name__} ({exc})") from None


# --------------------------------------------------------------------------- jvp
def jvp(f: Callable[..., Any], primals: tuple[Any, ...] | list[Any],
        tangents: tuple[Any, ...] | list[Any]) -> tuple[Any, Any]:
    """Evaluate ``f(*primals)`` and its Jacobian-vector product in the direction ``tangents``,
    in one forward pass (JAX's ``jax.jvp``; forward mode, by a :class:`ForwardAccumulator`).

    Args:
        f: a function of Tensors (each positional argument a Tensor or a nested
            tuple/list/dict of them) returning a Tensor or a nested tuple/list/dict of them.
        primals: a tuple (or list) of ``f``'s positional arguments. Float NumPy arrays and
            Python floats are converted to Tensors.
        tangents: a tuple (or list) with the structure of ``primals``: one tangent per primal
            tensor, of its shape and dtype (arrays and numbers are converted).

    Returns:
        ``(out, tangent_out)``: ``out = f(*primals)`` and the tangent of each of its tensors
        (``J @ tangents``; same structure, shapes and dtypes; zeros for an output that does not
        depend on the primals).

    Shapes: ``tangent_out`` has the structure and shapes of ``out``.

    Example:
        >>> import gradtape as gt
        >>> x = gt.tensor([0.0, 1.0])
        >>> y, dy = gt.jvp(gt.sin, (x,), (gt.tensor([1.0, 1.0]),))
        >>> dy.numpy().round(4)                  # cos(x)
        array([1.    , 0.5403], dtype=float32)
    """
    if not callable(f):
        raise TypeError(f"jvp(): f must be callable, got {type(f).__name__}")
    for name, value in (("primals", primals), ("tangents", tangents)):
        if not isinstance(value, (tuple, list)):
            raise TypeError(f"jvp(): {name} must be a tuple (or list) of f's positional "
                            f"arguments, got {type(value).__name__}; write ({name[:-1]},) for "
                            "one argument")
    if len(primals) != len(tangents):
        raise ValueError(f"jvp(): {len(primals)} primal(s) but {len(tangents)} tangent(s); give "
                         "one tangent per positional argument of f")
    args = []
    for i, arg in enumerate(primals):
        leaves, spec = flatten(arg)
        args.append(unflatten(spec, [_as_primal(leaf, i) for leaf in leaves]))
    acc = ForwardAccumulator.__new__(ForwardAccumulator)
    acc._setup(_checked_pairs(args, list(tangents), "jvp()"))
    with acc:
        out = f(*args)
    leaves, _ = flatten(out)
    for i, leaf in enumerate(leaves):
        if not isinstance(leaf, Tensor):
            where = f" (output {i})" if len(leaves) > 1 else ""
            raise TypeError(f"jvp(): f must return Tensors (or nested tuples/lists/dicts of "
                            f"them), got {type(leaf).__name__}{where}")
    return out, acc.jvp(out, unconnected_gradients="zero")
