"""Primitives: one declaration per op holding every rule, and the dispatch that runs them.

A :class:`Primitive` holds the forward (on backend arrays), the VJP, a batching-rule slot, a
JVP slot, and, for elementwise ops, the local derivative expressions from which fused kernels
are generated. The VJP of an elementwise op is derived from its derivative expressions; every
other differentiable op declares it once as a rule written against a vocabulary
(:mod:`.rules`), rendered on backend arrays (first order) and on Tensors (recorded, so
differentiable). Factories (:func:`elementwise`, :func:`primitive`) derive the repetitive parts.

The engine (:mod:`gradtape._src.autodiff.engine`) does the chores once: unbroadcasting,
skipping inputs that need no gradient, accumulating fan-out, dtype of the gradient.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .autodiff.batched import BatchedTensor
from .autodiff.record import Record, record, record_general, record_one, record_two
from .autodiff.state import STATE
from .backend import _HALF, NUMPY, Backend, backend_of
from .codegen.arrays import array_vjp
from .codegen.expr import FUNCTIONS, Expr, parse, vjp_function
from .config import HOOKS
from .cpu import pool
from .cpu.parallel import forward as parallel_forward
from .errors import MissingRuleError
from .rules import ON_NUMPY, ON_TENSORS, OnArrays, OnTensors, on_arrays
from .tensor import Tensor, TensorLike, Variable, _to_array, _wrap

__all__ = ["Primitive", "Domain", "REGISTRY", "elementwise", "primitive", "bind", "as_tensor",
           "one", "pair", "MissingRuleError", "OnTensors", "OnArrays", "ON_TENSORS", "ON_NUMPY",
           "on_arrays", "bind_batched"]


@dataclass(frozen=True)
class Domain:
    """Where a primitive's input is valid and smooth, for generated tests: ``[low, high]``,
    excluding ``avoid`` points (e.g. kinks) by ``margin``.

    Args:
        low, high: the interval inputs are drawn from.
        avoid: points to keep away from (kinks, poles).
        margin: the distance kept from each ``avoid`` point.
        kind: ``"float"``, or ``"bool"`` for masks such as ``where``'s condition.

    Example:
        >>> Domain(0.2, 3.0).low
        0.2
    """

    low: float = -2.0
    high: float = 2.0
    avoid: tuple[float, ...] = ()
    margin: float = 0.05
    kind: str = "float"  # "float", or "bool" for masks such as where's condition


REGISTRY: dict[str, Primitive] = {}
#: The names of gradtape's own primitives (filled when ``import gradtape`` ends, by
#: :func:`seal_builtins`): an extension that reuses one is told so.
BUILTIN: set[str] = set()


def seal_builtins() -> None:
    """Record every primitive declared so far as built in (called once by ``gradtape``'s
    ``__init__``, after its modules have declared theirs)."""
    BUILTIN.update(REGISTRY)


# --------------------------------------------------------------------------- extensions' checks
# A primitive declared after gradtape's own (an extension: BUILTIN is sealed) gets its impl,
# VJP rule and batching rule wrapped in the checks below, so a wrong result is reported naming
# the primitive at once. Built-in primitives are declared before the seal and never wrapped:
# their per-op path is unchanged.
def _check_declaration(name: Any, impl: Any, what: str) -> None:
    """At registration: ``name`` a non-empty str (an int name broke ``extend.get``'s listing of
    the names), ``impl`` callable."""
    if not isinstance(name, str):
        raise TypeError(f"{what}: name must be a non-empty str, got {name!r} ({type(name).__name__})")
    if not name:
        raise ValueError(f"{what}: name must be a non-empty str, got ''")
    if not callable(impl):
        raise TypeError(f"{what} {name!r}: impl must be callable, impl(xp, *arrays, **params) -> "
                        f"array, got {impl!r} ({type(impl).__name__})")


def _checked_impl(name: str, impl: Callable) -> Callable:
    """An extension's ``impl``, checked to return an array of the backend (a list, a string or
    a Tensor made a Tensor that broke later, far from the primitive)."""
    @functools.wraps(impl)
    def checked(xp: Any, *arrays: Any, **params: Any) -> Any:
        out = impl(xp, *arrays, **params)
        if out.__class__ is not np.ndarray and (isinstance(out, Tensor) or not (
                hasattr(out, "shape") and hasattr(out, "dtype"))):
            raise TypeError(f"primitive {name!r}: impl returned {type(out).__name__}; it must "
                            f"return an array of the backend ({getattr(xp, '__name__', 'xp')}"
                            ".ndarray, computed with xp from the input arrays)")
        return out

    return checked


def _checked_rule(name: str, rule: Callable) -> Callable:
    """An extension's VJP ``rule``, checked to return a tuple or list (one gradient or None per
    input); the count and shapes are checked by the engine."""
    @functools.wraps(rule)
    def checked(m: Any, rec: Any, g: Any) -> Any:
        res = rule(m, rec, g)
        if not isinstance(res, (tuple, list)):
            raise TypeError(f"the VJP rule of primitive {name!r} returned {type(res).__name__}; "
                            "it must return a tuple with one gradient (or None) per input, "
                            "e.g. (g * 2,) for one input")
        return res

    return checked


def _checked_batch(name: str, batch: Callable) -> Callable:
    """An extension's batching rule, checked to return a batch axis within its result's rank
    and holding the batch's size (a wrong size gave a silently wrong vmap result); the pair's
    form is checked by :func:`bind_batched`."""
    @functools.wraps(batch)
    def checked(args: tuple, dims: tuple, **params: Any) -> Any:
        res = batch(args, dims, **params)
        if type(res) is tuple and len(res) == 2 and isinstance(res[0], Tensor) and \
                isinstance(res[1], (int, np.integer)) and not isinstance(res[1], bool):
            out, d = res
            if not -out.ndim <= d < out.ndim:
                raise ValueError(f"gt.vmap: the batching rule of primitive {name!r} returned "
                                 f"out_dim {d}, out of range for its result of shape {out.shape}; "
                                 "out_dim is the result's batch axis (None: not batched)")
            n = next((int(a.shape[k]) for a, k in zip(args, dims) if k is not None), None)
            if n is not None and out.shape[d] != n:
                raise ValueError(f"gt.vmap: the batching rule of primitive {name!r} returned a "
                                 f"result of shape {out.shape} whose batch axis {d} has size "
                                 f"{out.shape[d]}; the batch has {n} examples")
        return res

    return checked


class Primitive:
    """One differentiable operation and all its rules.

    Attributes:
        name: unique name (the registry key).
        impl: ``impl(xp, *arrays, **params) -> array``, the forward on backend arrays.
        rule: the VJP of a non-elementwise op, written once against a vocabulary ``m``
            (``rule(m, record, g) -> tuple`` of one gradient or None per input, see
            :class:`OnTensors`), or None. ``record.inputs``/``record.output`` hold what was
            saved, ``record.in_shapes``/``record.in_dtypes``/``record.params``/``record.needs``
            the rest. With :func:`on_arrays` it calls the impls of the primitives it applies on
            backend arrays: the first-order pass takes that route (no tape recording, no
            transform, no per-op dispatch). With :data:`ON_TENSORS` it binds them (recorded and
            differentiable): that is ``vjp``. One formula, two renderings.
        vjp: ``vjp(record, g) -> tuple`` of one gradient (Tensor or None) per input, in gradtape
            ops (the differentiable rendering, which the engine calls for higher order):
            ``rule`` rendered with :data:`ON_TENSORS`, or for elementwise ops the derivative
            expressions rendered in gradtape ops. A primitive with neither cannot be
            differentiated: its ``vjp`` (and the first-order pass) raise
            :class:`MissingRuleError` naming it.
        batch: the batching rule for vmap, or None.
        jvp: the forward-mode rule, ``jvp(m, primals, tangents, out, **params) -> Tensor``:
            the tangent of ``out = prim(*primals, **params)`` given one tangent per input
            (``None``: that input does not move, a zero tangent; at least one is not None),
            written against the vocabulary ``m`` as rules are and called with
            :data:`ON_TENSORS`, so the tangent is made of recorded, differentiable gradtape ops
            (tapes and outer forward accumulators see it). It returns the output's shape (the
            accumulator casts to its dtype). Elementwise ops derive it from their derivative
            expressions; None for an op with no forward mode (``nondiff`` ops need none).
        nondiff: outputs carry no gradient (comparisons, argmax); never recorded.
        saves_inputs / saves_output: what the VJP reads, so the tape keeps only that alive.
        derivatives: for elementwise ops, one parsed :class:`~gradtape.extend.Expr` per input.
        safe: ``gy * d`` is 0 where ``gy`` is 0 even if ``d`` is infinite.
        masks: the VJP selects (``where``, ``relu``, ``max``, indexing): it can send a zero
            gradient where the upstream one is not zero. Every record upstream of such a record
            then takes its elementwise VJP with "0 times anything is 0" (``safe``) semantics,
            so an unselected branch that overflowed to inf never turns the zero into NaN.
        out_form: for elementwise ops whose NumPy impl is one ufunc call, ``f(*arrays, out)``
            making that call into ``out`` (the threaded forward writes chunks in place).
        cheap: one memory-bound ufunc (``add``, ``mul``): threading pays only on larger arrays.
        domains: per-input :class:`Domain` for registry-driven tests.
        examples: ``examples(rng) -> [(fn, args, kwargs), ...]``, calls of the public function
            that the registry-driven tests check (gradients to second order, vmap, jvp).
        folds: ``{producer name: fold(record, producer record, g)}``: a first-order pass
            reaching a record of this primitive whose first input is the output of a record
            of that producer, read by nothing else and not asked for (not a source, not a
            target), no other input of either needing a gradient, may call ``fold`` instead
            of this VJP and then the producer's: it returns the cotangent array of the
            producer's first input (exactly what the two VJPs in turn give), which the pass
            adds when it reaches the producer, or None to take them in turn after all
            (``max_pool2d`` folds ``relu``: its mask taken on the pooled maxima, a quarter of
            the image for 2x2 windows).
    """

    __slots__ = ("name", "impl", "vjp", "rule", "batch", "jvp", "nondiff", "saves_inputs",
                 "saves_output", "derivatives", "arg_names", "param_names", "safe", "domains",
                 "out_form", "cheap", "masks", "half_in_float32", "call1", "call2", "record1",
                 "_saves", "_array_vjps",
                 "_tensor_vjps",
                 "examples", "folds")

    def __init__(self, name: str, impl: Callable, *, rule: Callable | None = None,
                 batch: Callable | None = None, jvp: Callable | None = None,
                 nondiff: bool = False, saves_inputs: bool = True, saves_output: bool = False,
                 masks: bool = False, domains: tuple[Domain, ...] = (),
                 examples: Callable | None = None,
                 folds: dict[str, Callable] | None = None) -> None:
        _check_declaration(name, impl, "primitive")
        if name in REGISTRY:
            if name in BUILTIN:
                raise ValueError(f"primitive {name!r}: the name is taken by one of gradtape's "
                                 "built-in primitives; choose another name")
            raise ValueError(f"primitive {name!r} is declared twice (a name stands for one "
                             "primitive for the life of the process; re-running a declaration, "
                             "as in a notebook, needs a new name or a restart)")
        if BUILTIN:  # an extension (see _checked_impl): its results are checked per call
            impl = _checked_impl(name, impl)
            rule = None if rule is None else _checked_rule(name, rule)
            batch = None if batch is None else _checked_batch(name, batch)
        self.name = name
        self.impl = impl
        self.vjp: Callable = _missing_rule if rule is None else _tensor_vjp_of(rule)
        self.rule = rule
        self.batch = batch
        self.jvp = jvp
        self.nondiff = nondiff
        self.saves_inputs = saves_inputs
        self.saves_output = saves_output
        self.derivatives: tuple[Expr, ...] | None = None
        self.arg_names: tuple[str, ...] = ()
        self.param_names: tuple[str, ...] = ()
        self.safe = False
        self.out_form: Callable | None = None
        self.cheap = False
        self.half_in_float32 = False
        self.masks = masks
        self.domains = domains
        self.examples = examples
        self.folds = folds
        self._saves: dict = {}
        self._array_vjps: dict = {}
        self._tensor_vjps: dict = {}
        self.call1 = _one_input_call(self)  # bind() of one input (see bind)
        self.call2 = _two_input_call(self)  # an op of two operands, converted (see pair)
        self.record1 = False  # recording takes the one-input fast path (elementwise, differentiable)
        REGISTRY[name] = self

    def __repr__(self) -> str:
        kind = "elementwise " if self.derivatives is not None else ""
        return f"<{kind}primitive {self.name}>"

    @property
    def is_elementwise(self) -> bool:
        """True for primitives declared with :func:`elementwise`."""
        return self.derivatives is not None

    def __call__(self, *args: Any, **params: Any) -> Tensor:
        return bind(self, *args, **params)

    # --- elementwise rules, rendered from the derivative expressions ----------------------
    def saved_names(self, needs: tuple[bool, ...]) -> tuple[bool, ...]:
        """For elementwise ops: which of (inputs..., y) the VJP reads, given which inputs need
        a gradient."""
        saves = self._saves.get(needs)
        if saves is None:
            used: set[str] = set()
            assert self.derivatives is not None  # elementwise only
            for need, expr in zip(needs, self.derivatives):
                if need:
                    used.update(expr.names)
            saves = tuple(n in used for n in self.arg_names + ("y",))
            self._saves[needs] = saves
        return saves

    def array_vjp(self, i: int, backend: Backend, safe: bool = False) -> Callable:
        """``f(gy, *inputs, y, *params) -> gy * d_i`` on backend arrays (cached); ``safe``: 0
        where ``gy`` is 0 even if the primitive is not declared ``safe``."""
        key = (i, backend.name, safe)
        fn = self._array_vjps.get(key)
        if fn is None:
            assert self.derivatives is not None  # elementwise only
            fn = array_vjp(self.derivatives[i], self.arg_names + ("y",) + self.param_names,
                           backend, self.safe or safe)
            if self.half_in_float32:
                fn = _half_in_float32(fn)
            self._array_vjps[key] = fn
        return fn

    def tensor_vjp(self, i: int, safe: bool = False) -> Callable:
        """``f(gy, *inputs, y, *params) -> gy * d_i`` in gradtape ops (cached)."""
        key = (i, safe)
        fn = self._tensor_vjps.get(key)
        if fn is None:
            assert self.derivatives is not None  # elementwise only
            fn = _tensor_vjp(self.derivatives[i], self.arg_names + ("y",) + self.param_names,
                             self.safe or safe)
            if self.half_in_float32:  # (also forward mode, vmap and higher order: they use it)
                fn = _half_in_float32_tensors(fn)
            self._tensor_vjps[key] = fn
        return fn


def _half_in_float32(fn: Callable) -> Callable:
    """An array VJP ``fn(gy, *args)`` that evaluates float16 operands in float32 and rounds
    its result once, as a fused run does (each step of a long derivative expression rounding
    to float16 put exact gelu's 5% off at -4, and its tanh form's 0 at -4)."""
    def wide(gy: Any, *args: Any) -> Any:
        if gy.dtype != _HALF:
            return fn(gy, *args)
        return fn(gy.astype(np.float32), *[a.astype(np.float32) if getattr(a, "dtype", None) == _HALF
                                           else a for a in args]).astype(_HALF)
    return wide


def _half_in_float32_tensors(fn: Callable) -> Callable:
    """:func:`_half_in_float32` for the rendering in gradtape ops (recorded casts, so an outer
    tape differentiates through them)."""
    def wide(gy: Any, *args: Any) -> Any:
        if getattr(gy, "dtype", None) != _HALF:
            return fn(gy, *args)
        astype = REGISTRY["astype"]

        def up(a: Any) -> Any:
            return bind(astype, a, dtype=np.dtype(np.float32)) \
                if isinstance(a, Tensor) and a.dtype == _HALF else a

        return bind(astype, fn(up(gy), *[up(a) for a in args]), dtype=_HALF)
    return wide



# --------------------------------------------------------------------------- differentiable rendering
_tensor_cache: dict[tuple, Callable] = {}


def _tensor_vjp(expr: Expr, arg_names: tuple[str, ...], safe: bool) -> Callable:
    """Render ``gy * (expr)`` by binding the registered primitive of each function name, so
    an outer tape can differentiate it (looked up at the first render, when every op is
    declared)."""
    key = (expr.source, arg_names, safe)
    fn = _tensor_cache.get(key)
    if fn is not None:
        return fn
    ns: dict[str, Any] = {name: _bound(REGISTRY[name]) for name in FUNCTIONS}
    if safe:
        ns["_safe"] = _bound(REGISTRY["safe_mul"])
    fn = vjp_function(expr, arg_names, safe, ns)
    _tensor_cache[key] = fn
    return fn



def _bound(prim: Primitive) -> Callable:
    """``prim`` as a function of Tensors or Python scalars (weak scalars, as the ops take them)."""
    if len(prim.arg_names) == 3:  # where(c, a, b): c is a comparison
        return lambda c, a, b: bind(prim, one(c), *pair(a, b))
    if len(prim.arg_names) == 2:
        return lambda a, b: bind(prim, *pair(a, b))
    return lambda x: bind(prim, one(x))


# --------------------------------------------------------------------------- two-mode VJP rules
def _tensor_vjp_of(rule: Callable) -> Callable:
    """``rule`` rendered in gradtape ops: the differentiable ``vjp(record, g)``."""
    def vjp(rec: Record, g: Tensor) -> tuple:
        return rule(ON_TENSORS, rec, g)

    vjp.__name__ = getattr(rule, "__name__", "rule")
    return vjp


def _missing_rule(rec: Record, g: Tensor) -> tuple:
    """The ``vjp`` of a primitive declared without a rule: differentiating it fails loudly."""
    raise MissingRuleError(f"primitive '{rec.prim.name}' has no VJP rule; it cannot be differentiated")


def _elementwise_vjp(rec: Record, g: Tensor, safe: bool = False) -> tuple:
    prim = rec.prim
    inputs = rec.inputs
    args = (*inputs, rec.output, *rec.params.values())
    return tuple(prim.tensor_vjp(i, safe)(g, *args) if need else None
                 for i, need in enumerate(rec.needs))


def _elementwise_jvp(prim: Primitive) -> Callable:
    """The forward-mode rule of an elementwise op, from its derivative expressions:
    ``y' = sum_i d_i * x_i'``. ``tensor_vjp(i)`` renders ``gy * d_i`` in gradtape ops (bound,
    so recorded and differentiable), so with ``gy := x_i'`` it gives ``d_i * x_i'``; the sum is
    broadcast to the output's shape. (It binds the rendered expression directly: ``m`` is
    always :data:`ON_TENSORS` here.) An op that selects (``masks``: ``where``, ``relu``,
    ``maximum`` ...) takes ``safe_mul(d_i, x_i')`` instead, 0 wherever ``d_i`` is 0: an
    unselected input whose tangent is inf or NaN (``sqrt'`` at 0) does not make the tangent
    NaN, as the reverse pass guarantees for gradients."""
    def jvp(m: OnTensors, primals: tuple, tangents: tuple, out: Tensor, **params: Any) -> Any:
        args = (*primals, out, *[params[n] for n in prim.param_names])
        total = None
        for i, t in enumerate(tangents):
            if t is not None:
                if prim.masks:
                    d = prim.tensor_vjp(i)(m.scalar(1, t), *args)  # d_i, in t's dtype
                    term = _bound(REGISTRY["safe_mul"])(d, t)
                else:
                    term = prim.tensor_vjp(i)(t, *args)
                total = term if total is None else total + term
        if total is not None and total.shape != out.shape:  # an input was broadcast
            total = m.apply(REGISTRY["broadcast_to"], total, shape=out.shape)
        return total

    jvp.__name__ = f"{prim.name}_jvp"
    return jvp


def _elementwise_batch(prim: Primitive | str) -> Callable:
    """The batching rule of an elementwise (broadcasting) op: ``prim``, or the name of a
    primitive declared with it (comparisons and logical ops, looked up when the rule runs)."""
    def rule(args: tuple, dims: tuple, **params: Any) -> tuple:
        # Elementwise ops commute with batching: move every batch axis to the front, align
        # ranks, apply the op once.
        p = REGISTRY[prim] if isinstance(prim, str) else prim
        nd = max(a.ndim - (d is not None) for a, d in zip(args, dims))
        moved = []
        for a, d in zip(args, dims):
            if d is None:
                moved.append(a)
            else:
                d %= a.ndim
                if d:
                    a = a.transpose((d, *[i for i in range(a.ndim) if i != d]))
                extra = nd - (a.ndim - 1)
                if extra:
                    a = a.reshape((a.shape[0],) + (1,) * extra + a.shape[1:])
                moved.append(a)
        return bind(p, *moved, **params), 0

    rule._gt_broadcasts = True  # type: ignore[attr-defined]  # (see _operand_error)
    return rule


def elementwise(name: str, impl: Callable, d: str | tuple[str, ...], *, safe: bool = False,
                domain: Domain | tuple[Domain, ...] | None = None,
                nondiff: bool = False, out_form: Callable | None = None,
                cheap: bool = False, masks: bool = False,
                half_in_float32: bool = False) -> Primitive:
    """Declare an elementwise primitive in one line.

    Args:
        name: primitive name.
        impl: ``lambda xp, x: ...`` (or ``a, b`` ...); keyword-only arguments are scalar
            parameters (``lambda xp, x, *, negative_slope: ...``).
        d: the local derivative of the output with respect to each input, as an expression
            string reading the inputs, ``y`` (the output) and the parameters. The VJP is
            ``gy * d``; a ``d`` written as ``where(c, a, b)`` selects instead (``gy`` goes into
            the branches: the one not taken gives exactly 0, also for a NaN ``gy``).
        safe: the derivative can be infinite: treat ``0 * inf`` as 0 (see ``where``).
        domain: input domain(s) for generated tests.
        out_form: ``f(*arrays, out)`` making impl's one NumPy ufunc call into ``out`` (speed:
            the threaded forward then writes each chunk in place); None otherwise.
        cheap: impl is one memory-bound ufunc, threaded only from a larger size.
        masks: a derivative can be 0 where the op still passes values (``relu``'s ``x > 0``,
            ``where``'s ``c``): records upstream then use safe products (see :class:`Primitive`).
        half_in_float32: with float16 operands ``d`` is evaluated in float32 and rounded once
            (reverse and forward mode, vmap, higher order; left out of host fused runs, which
            compute in their dtype): for a derivative of many steps.

    Returns:
        The registered :class:`Primitive`.

    Example:
        >>> tanh = elementwise("my_tanh", lambda xp, x: xp.tanh(x), d="1 - y * y")  # doctest: +SKIP
    """
    _check_declaration(name, impl, "elementwise")
    sig = inspect.signature(impl)
    params = list(sig.parameters.values())[1:]
    arg_names = tuple(p.name for p in params if p.kind is p.POSITIONAL_OR_KEYWORD)
    param_names = tuple(p.name for p in params if p.kind is p.KEYWORD_ONLY)
    if not (isinstance(d, str) or (isinstance(d, (tuple, list)) and all(isinstance(e, str) for e in d))):
        raise TypeError(f"elementwise {name!r}: d must be a derivative expression string, or a "
                        f"tuple of them (one per input), got {d!r} ({type(d).__name__})")
    ds = (d,) if isinstance(d, str) else tuple(d)
    if len(ds) != len(arg_names):
        raise ValueError(f"elementwise {name!r}: {len(arg_names)} inputs {arg_names} but "
                         f"{len(ds)} derivative expression(s)")
    allowed = arg_names + ("y",) + param_names
    exprs = tuple(parse(s, allowed) for s in ds)
    if domain is None:
        domains = tuple(Domain() for _ in arg_names)
    elif isinstance(domain, Domain):
        domains = (domain,) * len(arg_names)
    else:
        domains = tuple(domain)
    prim = Primitive(name, impl, nondiff=nondiff, masks=masks, domains=domains)
    prim.vjp = _elementwise_vjp  # the derivative expressions, rendered in gradtape ops
    prim.derivatives = exprs
    prim.arg_names = arg_names
    prim.param_names = param_names
    prim.safe = safe
    prim.out_form = out_form
    prim.cheap = cheap
    prim.half_in_float32 = half_in_float32
    prim.batch = _elementwise_batch(prim)
    prim.jvp = _elementwise_jvp(prim)
    prim.record1 = not nondiff
    return prim


def primitive(name: str, impl: Callable, *args: Any, **kwargs: Any) -> Primitive:
    """Declare a general primitive (reductions, shape, linear algebra).

    ``impl(xp, *arrays, **params)`` computes the forward; ``rule=rule(m, record, g)`` returns
    one gradient (or None) per input, written once against the vocabulary ``m``
    (:class:`OnTensors`: ``m.apply(primitive, ...)``, ``m.val``, ``m.data``, ``m.const``,
    ``m.scalar``, ``m.xp_of``, Python operators) and rendered both on backend arrays (first
    order) and on Tensors (differentiable). A primitive with no rule (and not ``nondiff=True``)
    raises :class:`MissingRuleError` when differentiated. ``jvp=jvp(m, primals, tangents, out,
    **params)`` is its forward-mode rule, in the same vocabulary (without one, forward mode
    derives the tangent from ``rule`` by transposing it, at the cost of a reverse pass). See
    :class:`Primitive` for the other keyword options.

    Example:
        >>> p = primitive("my_double", lambda xp, x: 2 * x,
        ...               rule=lambda m, rec, g: (2 * g,), saves_inputs=False)  # doctest: +SKIP
    """
    if args or "vjp" in kwargs:
        raise TypeError(f"primitive {name!r}: a VJP is declared as rule=rule(m, rec, g), written "
                        "against the vocabulary m (see gradtape.extend), not as vjp(rec, g)")
    return Primitive(name, impl, **kwargs)


# --------------------------------------------------------------------------- dispatch
def as_tensor(value: Any, like: Tensor | None = None) -> Tensor:
    """Convert an op argument to a Tensor. A Python scalar next to ``like`` is weakly typed
    (PyTorch's and JAX's rule): it takes ``like``'s dtype when that is a float or complex dtype
    (``float32_tensor * 2.0`` stays float32, a float16 or float64 tensor keeps its dtype); next
    to an integer or bool tensor a Python float becomes float32 (never float64) and a Python int
    takes NumPy's weak-scalar dtype (the tensor's own, int64 next to bool). :func:`pair` also
    casts such an integer tensor to float32, so the op computes in float32. A Python complex is
    weak the same way: the complex dtype of ``like``'s precision (complex64 next to float32,
    float16, integer and bool tensors; complex128 next to float64; a complex tensor's own)."""
    if isinstance(value, Tensor):
        return value
    if like is not None:
        if isinstance(value, (int, float, bool)):
            backend = like._backend
            dt = like.data.dtype
            try:
                if dt.kind not in "fc":  # the integer path: float32 for a float, NumPy's rule for an int
                    dt = _F32 if isinstance(value, float) else np.result_type(dt, value)
                return _wrap(backend.xp.asarray(value, dtype=dt), backend)
            except OverflowError:  # (NumPy 2, JAX: a weak int past the tensor's range raises)
                info = np.iinfo(like.data.dtype) if like.data.dtype.kind in "iu" else None
                span = f" (range {info.min} to {info.max})" if info is not None else ""
                wider = "float64" if like.data.dtype.itemsize >= 8 else "int64"
                raise OverflowError(f"the Python int {value} does not fit the dtype {like.data.dtype}"
                                    f"{span} of the tensor it meets; cast the tensor first, e.g. "
                                    f"gt.astype(t, {wider!r})") from None
        if isinstance(value, complex):
            backend = like._backend
            dt = like.data.dtype
            if dt.kind != "c":
                dt = np.result_type(dt, _C64) if dt.kind == "f" else _C64
            return _wrap(backend.xp.asarray(value, dtype=dt), backend)
        if isinstance(value, np.generic) and value.dtype.kind in "biufc":
            # a NumPy scalar (np.float32(0.5)): its own dtype, as NumPy 2 types it, made on
            # ``like``'s backend (a device's library takes host scalars as operands too)
            return _wrap(like._backend.xp.asarray(value), like._backend)
    # (nested lists become a new array anyway)
    arr, backend = _to_array(value, copy=not isinstance(value, (list, tuple)) and copies_operand(value))
    return _wrap(arr, backend)


def copies_operand(value: Any) -> bool:
    """Whether an op copies the array data ``value`` it is given (an operand, an index, a
    label array), as ``gt.tensor`` copies: a tape may keep it for the backward, and the caller
    may write into its array after the op (a reused batch buffer). Not while ``gt.function``
    traces: the program holds such an array by reference and reads it at each call (a copy
    would be a constant of the program, frozen at the trace); never a traced array."""
    tr = STATE.trace
    return (tr is None or tr.suspended) and not getattr(value, "_gt_traced", False)


_F32 = np.dtype(np.float32)
_C64 = np.dtype(np.complex64)
_SCALARS = (int, float, bool)


def _backend_mismatch(prim: Primitive, args: tuple) -> None:
    names = ", ".join(f"argument {i} on {a.backend!r}" for i, a in enumerate(args))
    raise ValueError(f"{prim.name}: all tensors must be on one backend, got {names}; "
                     "move data with t.to('numpy') or t.to('cupy')")


def one(x: Any) -> Tensor:
    """Convert a single op argument to a Tensor.

    Example:
        >>> one(2.0).dtype
        dtype('float32')
    """
    return x if isinstance(x, Tensor) else as_tensor(x)


def pair(a: Any, b: Any) -> tuple[Tensor, Tensor]:
    """Convert two operands; a Python scalar is weakly typed next to the other (see
    :func:`as_tensor`). An integer or bool tensor next to a Python float is cast to float32
    (unrecorded: it carries no gradient), so ``int_tensor * 0.5`` is float32, never float64.

    Example:
        >>> import numpy as np
        >>> a, b = pair(Tensor(np.ones(2, np.float16)), 2.0)
        >>> b.dtype
        dtype('float16')
        >>> [t.dtype for t in pair(Tensor(np.arange(2)), 0.5)]
        [dtype('float32'), dtype('float32')]
    """
    # per-op overhead is a product target: a float tensor next to a Python scalar (the common
    # case) is converted inline; every other case takes _pair_general
    if isinstance(a, Tensor):
        if not isinstance(b, Tensor):
            dt = a.data.dtype
            if dt.kind in "fc" and isinstance(b, _SCALARS):
                return a, _const(b, dt, a._backend)
            b, a = _pair_general(b, a)
        elif a.data.dtype is not b.data.dtype:
            a, b = _promote_mixed(a, b)
    elif isinstance(b, Tensor):
        dt = b.data.dtype
        if dt.kind in "fc" and isinstance(a, _SCALARS):
            return _const(a, dt, b._backend), b
        a, b = _pair_general(a, b)
    elif isinstance(a, _SCALARS) and isinstance(b, _SCALARS):
        # two Python numbers, both weak: in either order, a float with an int or bool gives
        # the float's default dtype, as one Python float does (gt.where(mask, 0, -inf) is
        # float32, as in PyTorch and JAX: float64 would then promote the scores it masks);
        # two ints, two floats or two bools as NumPy promotes them
        if (type(a) is float) is not (type(b) is float):
            f = as_tensor(a if type(a) is float else b)
            xp, dt = f._backend.xp, f.data.dtype
            return _wrap(xp.asarray(a, dtype=dt), f._backend), _wrap(xp.asarray(b, dtype=dt), f._backend)
        a = as_tensor(a)
        b = _wrap(a._backend.xp.asarray(b, dtype=np.result_type(a.data.dtype, b)), a._backend)
    elif isinstance(a, _SCALARS):  # a number next to data (a list, an array): weak
        a, b = _pair_general(a, as_tensor(b))
    else:
        b, a = _pair_general(b, as_tensor(a))
    return a, b


_CONSTS: dict[Any, Tensor] = {}  # Python number -> its last NumPy constant (see _const)
_MAX_CONSTS = 1024


def _const(value: Any, dt: np.dtype, backend: Backend) -> Tensor:
    """A Python number as a weakly typed constant of float or complex dtype ``dt`` (the inline
    case of :func:`pair`). On NumPy the converted constant is kept per number, read-only, and
    reused while the same number meets the same dtype (``x * 1.25`` in a loop converts once:
    per-op overhead is a product target). Zeros (``-0.0`` equals ``0.0``) and NaN (unequal to
    itself) are converted every time, so a cached constant always has the number's exact
    value; equal numbers (``1``, ``1.0``, ``True``) convert to the same value."""
    t = _CONSTS.get(value)
    if t is not None and t.data.dtype is dt and t._backend is backend:
        return t
    t = _wrap(backend.xp.asarray(value, dtype=dt), backend)
    if backend is NUMPY and value and value == value:
        t.data.flags.writeable = False  # shared by every op that reads the number
        if len(_CONSTS) >= _MAX_CONSTS:
            _CONSTS.clear()
        _CONSTS[value] = t
    return t


def _two_input_call(prim: Primitive) -> Callable[[Any, Any], Tensor]:
    """``bind(prim, *pair(a, b))`` with the common cases inline, made once per primitive: two
    tensors (or Variables) of one dtype and backend, or a tensor of float or complex dtype
    next to a Python number (``x * 2.0``, ``0.5 - x``). The binary ops (``+``, ``*`` ...) are
    these functions; every other case takes :func:`pair` and :func:`bind`, with the same
    result. Per-op overhead is a product target, and binary ops are the second most frequent
    kind."""

    def call2(a: Any, b: Any) -> Tensor:
        ca, cb = a.__class__, b.__class__
        if ca is Tensor or ca is Variable:
            da = a.data
            backend = a._backend
            if cb is Tensor or cb is Variable:
                db = b.data
                if db.dtype is not da.dtype or b._backend is not backend:
                    return bind(prim, *pair(a, b))
            elif (cb is float or cb is int) and da.dtype.kind in "fc":
                b = _const(b, da.dtype, backend)
                db = b.data
            else:
                return bind(prim, *pair(a, b))
        elif (cb is Tensor or cb is Variable) and (ca is float or ca is int):
            db = b.data
            backend = b._backend
            if db.dtype.kind not in "fc":
                return bind(prim, *pair(a, b))
            a = _const(a, db.dtype, backend)
            da = a.data
        else:
            return bind(prim, *pair(a, b))
        out = _new_tensor(Tensor)
        try:
            if da.size + db.size < pool.MIN_SIZE:
                out.data = prim.impl(backend.xp, da, db)
            else:
                out.data = parallel_forward(prim, backend.xp, (da, db), _NO_PARAMS)
        except (ValueError, TypeError) as exc:
            _operand_error(prim, (da, db), exc)
            raise
        out._backend = backend
        out._id = 0
        if a._is_variable or b._is_variable:  # lets an unconnected-gradient error spot
            out._origin = ("variable", (a if a._is_variable else b).name or "<unnamed>")  # w = w - lr * g
            if STATE.trace is not None:  # gt.function: the program reads this Variable
                STATE.trace.saw((a, b))
        else:
            out._origin = None
        if HOOKS.on:
            record_two(prim, a, b, out, _NO_PARAMS)
        return out

    return call2


def _promote_mixed(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Two tensors of different dtypes: an integer or bool tensor next to a float one takes the
    float one's dtype (PyTorch's and JAX's rule: ``int64 * float32`` is float32, never
    float64); other mixes keep NumPy's promotion."""
    ka, kb = a.data.dtype.kind, b.data.dtype.kind
    if ka in "biu" and kb in "fc":
        a = bind(REGISTRY["astype"], a, dtype=b.data.dtype)
    elif kb in "biu" and ka in "fc":
        b = bind(REGISTRY["astype"], b, dtype=a.data.dtype)
    elif ka == "f" and kb == "f":
        # two float dtypes: the narrower is cast to the result's dtype first (recorded under a
        # tape, accumulator or trace), so the op's derivatives are computed in that dtype (d/dx
        # x / c = 1 / c in float16 for a float16 c lost float64's digits: 0.33325 for 1/3), and
        # callers get one dtype either way (a loss reading the pair's dtype: its eps)
        dt = np.result_type(a.data.dtype, b.data.dtype)
        # (a batched tensor inside gt.vmap always takes the op: its data is not one array)
        if a.data.dtype != dt:
            a = bind(REGISTRY["astype"], a, dtype=dt) if HOOKS.on or type(a) is not Tensor \
                else _wrap(a.data.astype(dt), a._backend)
        if b.data.dtype != dt:
            b = bind(REGISTRY["astype"], b, dtype=dt) if HOOKS.on or type(b) is not Tensor \
                else _wrap(b.data.astype(dt), b._backend)
    return a, b


def _pair_general(value: Any, like: Tensor) -> tuple[Tensor, Tensor]:
    """``(value as a Tensor, like)`` for :func:`pair` off its inline path: ``value`` is a
    Python scalar next to an integer or bool tensor (a float or complex casts ``like`` to
    float32), a Python complex (weak, see :func:`as_tensor`), or data (a list, an array:
    converted as ``gt.tensor`` converts it, then the two-tensor rule of :func:`_promote_mixed`,
    so ``int_tensor + [0.5, 1.5]`` is float32)."""
    if isinstance(value, Tensor):
        return value, like
    if isinstance(value, (float, complex)) and like.data.dtype.kind in "biu":
        # P_ASTYPE is declared by the ops layer, above this one: looked up when first needed
        like = bind(REGISTRY["astype"], like, dtype=_F32)
    try:
        v = as_tensor(value, like)
    except TypeError as e:  # gt.tensor's message, without naming gt.tensor (not called here)
        why = str(e).removeprefix("gt.tensor: ")
        raise TypeError(f"an operand of an op with a tensor of shape {like.shape}: {why}") from None
    if v.data.dtype is not like.data.dtype and not isinstance(value, _SCALARS):
        return _promote_mixed(v, like)
    return v, like


_new_tensor = object.__new__


_NO_PARAMS: dict[str, Any] = {}


def own_copy(data: Any, buf: Any) -> Any:
    """``data``, or a copy of it when it is a view of Variable buffer ``buf`` (a reshape, a
    slice, ``stop_gradient``): a Tensor is immutable, and the Variable's buffer changes in
    place at its next ``assign``."""
    d = data.a if getattr(data, "_gt_traced", False) else data  # (gt.function: a traced
    if d is buf:  # result's array; its copy is logged)
        return data.copy()
    base = getattr(d, "base", None)
    if base is not None and (base is buf or base is getattr(buf, "base", 0) or (
            type(d) is not np.ndarray and backend_of(buf).xp.may_share_memory(d, buf))):
        return data.copy()  # (a device array type whose base is another wrapper object)
    return data


def _one_input_call(prim: Primitive) -> Callable[[TensorLike], Tensor]:
    """``bind(prim, x)`` for one input and no parameters, made once per primitive: the unary
    ops (``gt.tanh`` ...) are these functions, and :func:`bind` calls them. A closure, so the
    primitive is a local and no arguments are packed: per-op overhead is a product target, and
    unary ops are the most frequent."""

    def call1(x: TensorLike) -> Tensor:
        if x.__class__ is not Tensor:  # Variables, batched tensors, Python values
            return _call1_general(prim, x)
        backend = x._backend
        da = x.data
        out = _new_tensor(Tensor)
        if da.size < pool.MIN_SIZE:
            out.data = prim.impl(backend.xp, da)
        else:  # large: chunks on the thread pool (NumPy elementwise only)
            out.data = parallel_forward(prim, backend.xp, (da,), _NO_PARAMS)
        out._backend = backend
        out._id = 0
        out._origin = None
        if HOOKS.on:
            record_one(prim, x, out, _NO_PARAMS)
        return out

    return call1


def _call1_general(prim: Primitive, x: Any) -> Tensor:
    """``call1`` for anything but a plain Tensor: a Variable (the result remembers it, so an
    unconnected-gradient error can spot ``w = w - lr * g``), a batched tensor (inside
    ``gt.vmap``), or a value to convert."""
    if not isinstance(x, Tensor):
        return prim.call1(one(x))
    if x._level:
        return bind_batched(prim, (x,), _NO_PARAMS)
    backend = x._backend
    da = x.data
    out = _new_tensor(Tensor)
    if da.size < pool.MIN_SIZE:
        out.data = prim.impl(backend.xp, da)
    else:
        out.data = parallel_forward(prim, backend.xp, (da,), _NO_PARAMS)
    if x._is_variable:
        out.data = own_copy(out.data, da)
    out._backend = backend
    out._id = 0
    out._origin = ("variable", x.name or "<unnamed>") if x._is_variable else None  # type: ignore[attr-defined]
    if HOOKS.on:
        record_one(prim, x, out, _NO_PARAMS)
    return out


def bind(prim: Primitive, *args: Tensor, **params: Any) -> Tensor:
    """Run ``prim`` on Tensors: forward on the arrays, then record on the active tapes.

    Every argument must already be a Tensor (ops convert scalars with :func:`as_tensor`). The
    one place every primitive runs: arrays of at least ``pool.MIN_SIZE`` elements go to the
    threaded forward, and :func:`~gradtape._src.autodiff.record.record` runs when a tape,
    watcher or numerics check is active. One- and two-input calls are unrolled (per-op
    overhead is a product target).

    Example:
        >>> import gradtape as gt
        >>> from gradtape.extend import REGISTRY
        >>> bind(REGISTRY["mul"], gt.tensor([2.0]), gt.tensor([3.0])).numpy()
        array([6.], dtype=float32)
    """
    a = args[0]
    n = len(args)
    if n == 1 and not params:
        return prim.call1(a)
    backend = a._backend
    var: Any = None  # a Variable input (it has a name)
    if n == 2 and a.__class__ is Tensor and args[1].__class__ is Tensor:
        # two plain tensors (Variables and batched tensors take the loop below)
        b = args[1]
        if b._backend is not backend:
            _backend_mismatch(prim, args)
        da, db = a.data, b.data
        try:
            if da.size + db.size < pool.MIN_SIZE:
                data = prim.impl(backend.xp, da, db, **params)
            else:
                data = parallel_forward(prim, backend.xp, (da, db), params)
        except (ValueError, TypeError) as exc:
            _operand_error(prim, (da, db), exc)
            raise
    else:
        for t in args:
            if t._level:  # inside gt.vmap
                return bind_batched(prim, args, params)
            if t._backend is not backend:
                _backend_mismatch(prim, args)
            if t._is_variable and var is None:
                var = t
        datas = [t.data for t in args]
        inputs = datas
        if var is not None and STATE.trace is not None:
            STATE.trace.saw(args)
            inputs = _traced_reads(args, datas)
        try:
            if datas[0].size + (datas[-1].size if n > 1 else 0) < pool.MIN_SIZE:
                data = prim.impl(backend.xp, *inputs, **params)
            else:
                data = parallel_forward(prim, backend.xp, tuple(inputs), params)
        except (ValueError, TypeError) as exc:
            _operand_error(prim, datas, exc)
            raise
        if var is not None:
            for t, d in zip(args, datas):
                if t._is_variable:
                    data = own_copy(data, d)
    out = _new_tensor(Tensor)
    out.data = data
    out._backend = backend
    out._id = 0
    out._origin = None
    if var is not None:  # lets an unconnected-gradient error spot `w = w - lr * g`
        out._origin = ("variable", var.name or "<unnamed>")
    if HOOKS.on:
        if n == 1:
            record_one(prim, a, out, params)
        else:
            record_general(prim, args, out, params)
    return out


def _operand_error(prim: Primitive, arrays: Any, exc: ValueError | TypeError) -> None:
    """Raise a ValueError naming ``prim`` and the shapes when an elementwise primitive's
    inputs do not broadcast together, or a TypeError naming it and the dtypes when NumPy has
    no loop for them (``bool - bool``): NumPy's messages name neither the op nor gradtape.
    Return when ``exc`` was something else (the caller re-raises it)."""
    if not (prim.is_elementwise or getattr(prim.batch, "_gt_broadcasts", False)):
        return
    if isinstance(exc, TypeError):
        if "not supported" not in str(exc) and "ufunc" not in str(exc):
            return  # (not NumPy's refusal of the dtypes)
        dtypes = ", ".join(str(a.dtype) for a in arrays)
        raise TypeError(f"{prim.name}: not defined for operands of dtype {dtypes} (NumPy: "
                        f"{exc}); cast with gt.astype first") from exc
    shapes = [tuple(a.shape) for a in arrays]
    try:
        np.broadcast_shapes(*shapes)
    except ValueError:
        raise ValueError(f"{prim.name}: the operands' shapes {', '.join(map(str, shapes))} do not "
                         "broadcast together (NumPy's rules: trailing axes equal or 1)") from exc


def _traced_reads(args: tuple[Tensor, ...], datas: list[Any]) -> list[Any]:
    """gt.function: the arrays an op takes while a step is traced. Next to a traced array, a
    Variable is read as a program variable, so the impl's own calls on it (an unfold, a cast)
    are logged rather than frozen as constants; an op on untraced arrays only is logged whole
    after it ran (``_Trace.after_op``)."""
    if not any(getattr(d, "_gt_traced", False) for d in datas):
        return datas
    tr = STATE.trace
    return [tr.read(d) if t._is_variable else d for t, d in zip(args, datas)]


def _note_per_example(e: BaseException, prim: Primitive, args: tuple[Tensor, ...]) -> None:
    """Add to ``e`` (raised by ``prim``'s batching rule inside ``gt.vmap``) the operands'
    per-example shapes: the rule runs on whole batches, so its message may show them with the
    batch axis and count axes from it. Nested vmaps: the innermost level's note, which is
    added last, replaces the outer ones' (Python 3.11+ notes)."""
    if not hasattr(e, "add_note"):
        return
    shapes = ", ".join(str(tuple(a.shape)) for a in args)
    sizes = sorted({a.batch_size for a in args if isinstance(a, BatchedTensor)})
    notes = getattr(e, "__notes__", [])
    notes[:] = [n for n in notes if not n.startswith(_VMAP_NOTE)]
    e.add_note(f"{_VMAP_NOTE}{prim.name}'s operands have per-example shapes {shapes}, batch "
               f"size {', '.join(map(str, sizes))}; the message above may show them with the "
               "batch axis, and count axes from it)")


_VMAP_NOTE = "(inside gt.vmap: "


def bind_batched(prim: Primitive, args: tuple[Tensor, ...], params: dict[str, Any]) -> Tensor:
    """``bind`` when an argument is a :class:`BatchedTensor` (inside ``gt.vmap``): run the
    primitive's batching rule once on the physical tensors of the innermost level, wrap the
    result, and record the per-example op on the tapes entered inside that vmap.

    Tapes entered inside the vmap (``_vlevel >= level``) see only the per-example op; the ones
    outside see the physical ops the rule applies (so ``grad(vmap(f))`` and ``vmap(grad(f))``
    both differentiate the right program)."""
    level = max(a._level for a in args)
    rule = prim.batch
    if rule is None:
        raise MissingRuleError(f"gt.vmap: primitive '{prim.name}' has no batching rule, so it "
                               "cannot run inside vmap (declare one with batch= in "
                               "gradtape.extend.primitive)")
    values = []
    dims: list[int | None] = []
    for a in args:
        if a._level == level:
            values.append(a._value)  # type: ignore[attr-defined]  # _level: a BatchedTensor
            dims.append(a._bdim)  # type: ignore[attr-defined]
        else:
            values.append(a)
            dims.append(None)
    st = STATE
    recording = st.recording
    inner = [t for t in recording if t._vlevel >= level] if recording else None
    if inner:  # hide the physical ops from tapes entered inside this vmap
        st.recording = [t for t in recording if t._vlevel < level]
        st.sync()
    try:
        try:
            res = rule(tuple(values), tuple(dims), **params)
        except (ValueError, IndexError, TypeError) as e:
            _note_per_example(e, prim, args)
            raise
        if not (type(res) is tuple and len(res) == 2 and isinstance(res[0], Tensor)
                and (res[1] is None or isinstance(res[1], (int, np.integer)))):
            raise TypeError(f"gt.vmap: the batching rule of primitive '{prim.name}' returned "
                            f"{type(res).__name__}; a batching rule returns (out, out_dim): the "
                            "result Tensor and its batch axis (None: not batched)")
        out, out_dim = res
    finally:
        if inner:
            st.recording = recording
            st.sync()
    result: Tensor = out if out_dim is None else BatchedTensor(out, out_dim, level)
    if HOOKS.on:
        record(prim, args, result, params)
    return result
