"""Primitives: one declaration per op holding every rule, and the dispatch that runs them.

A :class:`Primitive` holds the forward (on backend arrays), the VJP (written in gradtape ops so
that tapes can record it), a batching-rule slot, a JVP slot, and, for elementwise ops, the
local derivative expressions from which fused kernels are generated. Factories
(:func:`elementwise`, :func:`primitive`) derive the repetitive parts.

The engine (:mod:`gradtape._tape`) does the chores once: unbroadcasting, skipping inputs that
need no gradient, accumulating fan-out, dtype of the gradient.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _kernels, _parallel
from ._backend import Backend
from ._config import HOOKS
from ._parallel import MIN_SIZE as _PARALLEL_MIN
from ._rules import ON_NUMPY, ON_TENSORS, OnArrays, OnTensors, on_arrays
from ._tape import record_op
from ._tensor import Tensor, _to_array, _wrap

__all__ = ["Primitive", "Domain", "REGISTRY", "elementwise", "primitive", "bind", "as_tensor",
           "MissingRuleError", "OnTensors", "OnArrays", "ON_TENSORS", "ON_NUMPY", "on_arrays"]


class MissingRuleError(NotImplementedError):
    """A transform needs a rule that a primitive does not declare."""


@dataclass(frozen=True)
class Domain:
    """Where a primitive's input is valid and smooth, for generated tests: ``[low, high]``,
    excluding ``avoid`` points (e.g. kinks) by ``margin``."""

    low: float = -2.0
    high: float = 2.0
    avoid: tuple[float, ...] = ()
    margin: float = 0.05
    kind: str = "float"  # "float", or "bool" for masks such as where's condition


REGISTRY: dict[str, Primitive] = {}


class Primitive:
    """One differentiable operation and all its rules.

    Attributes:
        name: unique name (the registry key).
        impl: ``impl(xp, *arrays, **params) -> array``, the forward on backend arrays.
        vjp: ``vjp(record, g) -> tuple`` of one gradient (Tensor or None) per input, written in
            gradtape ops. ``record.inputs``/``record.output`` hold what was saved,
            ``record.in_shapes``/``record.params``/``record.needs`` the rest.
        rule: the VJP written once against a vocabulary ``m`` (``rule(m, record, g)``, see
            :class:`OnTensors`), or None. With :data:`ON_TENSORS` it binds primitives (recorded
            and differentiable): that is ``vjp``. With :func:`on_arrays` it calls their impls on
            backend arrays: the first-order pass takes that route (no tape recording, no
            transform) and skips per-op dispatch. One formula, two renderings.
        batch: the batching rule for vmap, or None.
        jvp: the forward-mode rule, or None.
        nondiff: outputs carry no gradient (comparisons, argmax); never recorded.
        saves_inputs / saves_output: what the VJP reads, so the tape keeps only that alive.
        derivatives: for elementwise ops, one parsed :class:`~gradtape._kernels.Expr` per input.
        safe: ``gy * d`` is 0 where ``gy`` is 0 even if ``d`` is infinite.
        domains: per-input :class:`Domain` for registry-driven tests.
    """

    __slots__ = ("name", "impl", "vjp", "rule", "batch", "jvp", "nondiff", "saves_inputs",
                 "saves_output", "derivatives", "arg_names", "param_names", "safe", "domains",
                 "_saves", "_array_vjps", "_tensor_vjps", "examples")

    def __init__(self, name: str, impl: Callable, vjp: Callable | None = None, *,
                 rule: Callable | None = None, batch: Callable | None = None, jvp: Callable | None = None,
                 nondiff: bool = False, saves_inputs: bool = True, saves_output: bool = False,
                 domains: tuple[Domain, ...] = (), examples: Callable | None = None) -> None:
        if name in REGISTRY:
            raise ValueError(f"primitive {name!r} is declared twice")
        self.name = name
        self.impl = impl
        if rule is not None:
            if vjp is not None:
                raise ValueError(f"primitive {name!r}: give vjp= or rule=, not both")
            vjp = _tensor_vjp_of(rule)
        self.vjp = vjp
        self.rule = rule
        self.batch = batch
        self.jvp = jvp
        self.nondiff = nondiff
        self.saves_inputs = saves_inputs
        self.saves_output = saves_output
        self.derivatives: tuple[_kernels.Expr, ...] | None = None
        self.arg_names: tuple[str, ...] = ()
        self.param_names: tuple[str, ...] = ()
        self.safe = False
        self.domains = domains
        self.examples = examples
        self._saves: dict = {}
        self._array_vjps: dict = {}
        self._tensor_vjps: dict = {}
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
            for need, expr in zip(needs, self.derivatives):
                if need:
                    used.update(expr.names)
            saves = tuple(n in used for n in self.arg_names + ("y",))
            self._saves[needs] = saves
        return saves

    def array_vjp(self, i: int, backend: Backend) -> Callable:
        """``f(gy, *inputs, y, *params) -> gy * d_i`` on backend arrays (cached)."""
        key = (i, backend.name)
        fn = self._array_vjps.get(key)
        if fn is None:
            fn = _kernels.array_vjp(self.derivatives[i], self.arg_names + ("y",) + self.param_names,
                                    backend, self.safe)
            self._array_vjps[key] = fn
        return fn

    def tensor_vjp(self, i: int) -> Callable:
        """``f(gy, *inputs, y, *params) -> gy * d_i`` in gradtape ops (cached)."""
        fn = self._tensor_vjps.get(i)
        if fn is None:
            fn = _kernels.tensor_vjp(self.derivatives[i], self.arg_names + ("y",) + self.param_names,
                                     self.safe)
            self._tensor_vjps[i] = fn
        return fn


# --------------------------------------------------------------------------- two-mode VJP rules
def _tensor_vjp_of(rule: Callable) -> Callable:
    def vjp(rec: Any, g: Tensor) -> tuple:
        return rule(ON_TENSORS, rec, g)

    vjp.__name__ = getattr(rule, "__name__", "rule")
    return vjp


def _elementwise_vjp(rec: Any, g: Tensor) -> tuple:
    prim = rec.prim
    inputs = rec.inputs
    args = (*inputs, rec.output, *rec.params.values())
    return tuple(prim.tensor_vjp(i)(g, *args) if need else None
                 for i, need in enumerate(rec.needs))


def _elementwise_batch(prim: Primitive) -> Callable:
    def rule(args: tuple, dims: tuple, **params: Any) -> tuple:
        # Elementwise ops commute with batching: move every batch axis to the front, align
        # ranks, apply the op once.
        from .ops import moveaxis, reshape

        nd = max(a.ndim - (d is not None) for a, d in zip(args, dims))
        moved = []
        for a, d in zip(args, dims):
            if d is None:
                moved.append(a)
            else:
                a = moveaxis(a, d, 0)
                extra = nd - (a.ndim - 1)
                if extra:
                    a = reshape(a, (a.shape[0],) + (1,) * extra + a.shape[1:])
                moved.append(a)
        return bind(prim, *moved, **params), 0

    return rule


def elementwise(name: str, impl: Callable, d: str | tuple[str, ...], *, safe: bool = False,
                domain: Domain | tuple[Domain, ...] | None = None,
                nondiff: bool = False) -> Primitive:
    """Declare an elementwise primitive in one line.

    Args:
        name: primitive name.
        impl: ``lambda xp, x: ...`` (or ``a, b`` ...); keyword-only arguments are scalar
            parameters (``lambda xp, x, *, negative_slope: ...``).
        d: the local derivative of the output with respect to each input, as an expression
            string reading the inputs, ``y`` (the output) and the parameters.
        safe: the derivative can be infinite: treat ``0 * inf`` as 0 (see API.md, ``where``).
        domain: input domain(s) for generated tests.

    Returns:
        The registered :class:`Primitive`.

    Example:
        >>> tanh = elementwise("my_tanh", lambda xp, x: xp.tanh(x), d="1 - y * y")  # doctest: +SKIP
    """
    sig = inspect.signature(impl)
    params = list(sig.parameters.values())[1:]
    arg_names = tuple(p.name for p in params if p.kind is p.POSITIONAL_OR_KEYWORD)
    param_names = tuple(p.name for p in params if p.kind is p.KEYWORD_ONLY)
    ds = (d,) if isinstance(d, str) else tuple(d)
    if len(ds) != len(arg_names):
        raise ValueError(f"elementwise {name!r}: {len(arg_names)} inputs {arg_names} but "
                         f"{len(ds)} derivative expression(s)")
    allowed = arg_names + ("y",) + param_names
    exprs = tuple(_kernels.parse(s, allowed) for s in ds)
    if domain is None:
        domains = tuple(Domain() for _ in arg_names)
    elif isinstance(domain, Domain):
        domains = (domain,) * len(arg_names)
    else:
        domains = tuple(domain)
    prim = Primitive(name, impl, _elementwise_vjp, nondiff=nondiff, domains=domains)
    prim.derivatives = exprs
    prim.arg_names = arg_names
    prim.param_names = param_names
    prim.safe = safe
    prim.batch = _elementwise_batch(prim)
    return prim


def primitive(name: str, impl: Callable, vjp: Callable | None = None, **kwargs: Any) -> Primitive:
    """Declare a general primitive (reductions, shape, linear algebra).

    ``impl(xp, *arrays, **params)`` computes the forward; ``vjp(record, g)`` returns one
    gradient per input in gradtape ops. See :class:`Primitive` for the keyword options.

    Example:
        >>> p = primitive("my_double", lambda xp, x: 2 * x,
        ...               lambda rec, g: (2 * g,), saves_inputs=False)  # doctest: +SKIP
    """
    return Primitive(name, impl, vjp, **kwargs)


# --------------------------------------------------------------------------- dispatch
def as_tensor(value: Any, like: Tensor | None = None) -> Tensor:
    """Convert an op argument to a Tensor. Python scalars take the dtype NumPy's promotion
    gives them next to ``like`` (weak scalars: ``float32_tensor * 2.0`` stays float32)."""
    if isinstance(value, Tensor):
        return value
    if like is not None and isinstance(value, (int, float, bool)):
        backend = like._backend
        dt = like.data.dtype
        if dt.kind not in "fc":  # a float array keeps its dtype next to a weak scalar
            dt = np.result_type(dt, value)
        return _wrap(backend.xp.asarray(value, dtype=dt), backend)
    arr, backend = _to_array(value)
    return _wrap(arr, backend)


def _backend_mismatch(prim: Primitive, args: tuple) -> None:
    names = ", ".join(f"argument {i} on {a.backend!r}" for i, a in enumerate(args))
    raise ValueError(f"{prim.name}: all tensors must be on one backend, got {names}; "
                     "move data with t.to('numpy') or t.to('cupy')")


def bind(prim: Primitive, *args: Tensor, **params: Any) -> Tensor:
    """Run ``prim`` on Tensors: forward on the arrays, then record on the active tapes.

    Every argument must already be a Tensor (ops convert scalars with :func:`as_tensor`).
    """
    backend = args[0]._backend
    var = None
    if len(args) == 2:  # unrolled for binary ops (comprehensions are calls on Python 3.11)
        a, b = args
        if b._backend is not backend:
            _backend_mismatch(prim, args)
        if a._is_variable or b._is_variable:
            var = a if a._is_variable else b
        da, db = a.data, b.data
        if da.size + db.size < _PARALLEL_MIN:
            out = _wrap(prim.impl(backend.xp, da, db, **params), backend)
        else:  # large: chunks on the thread pool (NumPy elementwise only; see _parallel.py)
            out = _wrap(_parallel.forward(prim, backend.xp, (da, db), params), backend)
    else:
        for a in args:
            if a._backend is not backend:
                _backend_mismatch(prim, args)
            if a._is_variable:
                var = a
        datas = [a.data for a in args]
        if datas[0].size + datas[-1].size < _PARALLEL_MIN:
            out = _wrap(prim.impl(backend.xp, *datas, **params), backend)
        else:
            out = _wrap(_parallel.forward(prim, backend.xp, tuple(datas), params), backend)
    if var is not None:  # lets an unconnected-gradient error spot `w = w - lr * g`
        out._origin = ("variable", var.name or "<unnamed>")
    if HOOKS.on:
        record_op(prim, args, out, params)
    return out
