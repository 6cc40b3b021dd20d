"""``@gt.custom_gradient``: a function whose gradient the user supplies (TF semantics).

The forward runs with every active tape of this thread paused, so the ops inside it are not
recorded; each tape that follows one of the inputs (or a Variable read inside) gets ONE record
whose VJP calls the user's ``grad``. When ``grad`` is written in gradtape ops, the backward pass
of an outer tape records it, so higher-order derivatives work through it.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar, cast

from ..autodiff.batched import BatchedTensor
from ..autodiff.record import Record, record
from ..autodiff.state import STATE, paused_recording
from ..config import HOOKS
from ..nest import flatten, unflatten
from ..primitive import Primitive, as_tensor
from ..tensor import Tensor, Variable, _wrap

_P = ParamSpec("_P")
_Y = TypeVar("_Y")

__all__ = ["custom_gradient"]


class _CustomCall:
    """A Primitive-like object for ONE call of a custom-gradient function (never registered).

    It carries the user's ``grad`` closure and what is needed to check its results; the
    engine treats it like any non-elementwise primitive whose VJP saves nothing itself.
    """

    __slots__ = ("name", "grad", "arg_names", "n_args", "variables", "out_shapes", "out_dtypes",
                 "backend", "multi", "__weakref__")

    derivatives = None
    rule = None
    folds = None
    saves_inputs = False
    saves_output = False
    nondiff = False
    record1 = False  # recording takes the general path
    batch = None
    jvp = None
    is_elementwise = False
    masks = False  # a user's grad is trusted as written

    def __init__(self, name: str, grad: Callable[..., Any], arg_names: list[str], n_args: int,
                 variables: list[Variable], outs: list[Tensor], multi: bool) -> None:
        self.name = name
        self.grad = grad
        self.arg_names = arg_names
        self.n_args = n_args
        self.variables = variables
        self.out_shapes = tuple(o.shape for o in outs)
        self.out_dtypes = tuple(o.dtype for o in outs)
        self.backend = outs[0]._backend
        self.multi = multi

    def __repr__(self) -> str:
        return f"<custom_gradient {self.name}>"

    def vjp(self, rec: Record, g: Tensor | tuple[Tensor | None, ...]) -> tuple[Tensor | None, ...]:
        """Call the user's ``grad`` with one upstream gradient per output, check its results."""
        if isinstance(g, tuple):
            dys = [self._zeros(i) if gi is None else gi for i, gi in enumerate(g)]
        else:
            dys = [g]
        dys = [d if isinstance(d, Tensor) else _wrap(d, self.backend) for d in dys]
        if self.variables:
            res = self.grad(*dys, variables=list(self.variables))
            if not isinstance(res, (tuple, list)) or len(res) != 2:
                raise ValueError(f"custom_gradient {self.name}: grad was called with variables= "
                                 "and must return (input_gradients, variable_gradients), got "
                                 f"{_describe(res)}")
            in_grads = self._as_list(res[0], self.n_args, "input gradient")
            var_grads = self._as_list(res[1], len(self.variables), "variable gradient")
        else:
            in_grads = self._as_list(self.grad(*dys), self.n_args, "gradient")
            var_grads = []
        names = list(self.arg_names) + [f"variable {v.name or '<unnamed>'!r}" for v in self.variables]
        out: list[Tensor | None] = []
        for i, gi in enumerate(in_grads + var_grads):
            if gi is None or not rec.needs[i]:
                out.append(None)
                continue
            if not isinstance(gi, Tensor):
                try:
                    gi = as_tensor(gi)
                except TypeError:
                    raise TypeError(f"custom_gradient {self.name}: the gradient for {names[i]} is "
                                    f"a {type(gi).__name__}, expected a Tensor (or array) of shape "
                                    f"{rec.in_shapes[i]}") from None
            shape = rec.in_shapes[i]
            if gi.shape != shape:
                raise ValueError(f"custom_gradient {self.name}: the gradient for {names[i]} has "
                                 f"shape {gi.shape}, expected that input's shape {shape}")
            if gi.dtype != rec.in_dtypes[i]:
                gi = gi.astype(rec.in_dtypes[i])
            out.append(gi)
        return tuple(out)

    def _zeros(self, i: int) -> Tensor:
        xp = self.backend.xp
        return _wrap(xp.zeros(self.out_shapes[i], self.out_dtypes[i]), self.backend)

    def _as_list(self, res: object, n: int, what: str) -> list[Any]:
        items = list(res) if isinstance(res, (tuple, list)) else [res]
        if len(items) != n:
            per = "variable read inside the function" if "variable" in what else "tensor argument"
            raise ValueError(f"custom_gradient {self.name}: grad returned {len(items)} {what}(s), "
                             f"expected {n} (one per {per})")
        return items


def _describe(value: object) -> str:
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)} item(s)"
    return type(value).__name__


def _accepts_variables(grad: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(grad).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "variables" or p.kind is p.VAR_KEYWORD for p in params)


def custom_gradient(f: Callable[_P, tuple[_Y, Callable[..., Any]]]) -> Callable[_P, _Y]:
    """Decorate ``f`` whose gradient you define yourself (TF's ``tf.custom_gradient``).

    ``f(*args, **kwargs)`` must return ``(y, grad)``: ``y`` a Tensor (or a list/tuple of
    Tensors), and ``grad(*dys)`` returning one gradient per Tensor positional argument (a single
    Tensor when there is one argument, else a list/tuple; ``None`` for no gradient), each of its
    argument's shape. ``dys`` has one upstream gradient per output (zeros for outputs the target
    does not use). Keyword arguments and non-Tensor arguments are passed through and get no
    gradient.

    The ops inside ``f`` are not recorded on any tape; one record whose VJP calls ``grad`` is.
    If ``f`` reads a trainable Variable that is not an argument, ``grad`` must accept a keyword
    ``variables``: it is called as ``grad(*dys, variables=[...])`` and returns
    ``(input_gradients, variable_gradients)``; otherwise ``TypeError``. Write ``grad`` in
    gradtape ops for higher-order derivatives to flow through it.

    Shapes: ``y`` any shape; each gradient has its argument's shape (``ValueError`` otherwise,
    and for a wrong number of gradients).

    Example:
        >>> import gradtape as gt
        >>> @gt.custom_gradient
        ... def clipped_identity(x):
        ...     def grad(dy):
        ...         return gt.clip(dy, -1.0, 1.0)
        ...     return x * 1.0, grad
        >>> x = gt.tensor(2.0)
        >>> with gt.GradientTape() as tape:
        ...     tape.watch(x)
        ...     y = clipped_identity(x) * 5.0
        >>> float(tape.gradient(y, x))
        1.0
    """
    if not callable(f):
        raise TypeError(f"custom_gradient: f must be callable (the decorated function), got "
                        f"{f!r} ({type(f).__name__})")
    try:
        sig_params = list(inspect.signature(f).parameters.values())
    except (TypeError, ValueError):
        sig_params = []
    fname = getattr(f, "__name__", "function")

    @functools.wraps(f)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _Y:
        levels = [a._level for a in args if isinstance(a, BatchedTensor)]
        if levels and any(t._vlevel < max(levels) for t in STATE.recording):
            # a tape outside the vmap follows the whole batch: the rule would have to be
            # batched for it, which a user's grad is not
            raise NotImplementedError(
                f"custom_gradient {fname}: called inside gt.vmap while a tape outside the vmap "
                "records (gt.grad of a function that vmaps it, say): its gradient rule cannot "
                "be applied to the whole batch. Differentiate inside the vmap instead "
                "(gt.vmap(gt.grad(f))), or call it on the batch without vmap")
        watcher: dict[int, Variable] = {}
        with paused_recording(watcher):  # f's own ops are not recorded
            result = f(*args, **kwargs)
        if not isinstance(result, (tuple, list)) or len(result) != 2 or not callable(result[1]):
            raise TypeError(f"custom_gradient {fname}: the function must return (y, grad) with "
                            f"grad callable, got {_describe(result)}")
        y, grad = result
        inputs = [a for a in args if isinstance(a, Tensor)]
        arg_names = []
        for i, a in enumerate(args):
            if isinstance(a, Tensor):
                name = sig_params[i].name if i < len(sig_params) and \
                    sig_params[i].kind in (sig_params[i].POSITIONAL_ONLY,
                                           sig_params[i].POSITIONAL_OR_KEYWORD) else None
                arg_names.append(f"argument {name!r}" if name else f"argument {i}")
        input_ids = {id(a) for a in inputs}
        variables = [v for k, v in sorted(watcher.items())
                     if v.trainable and id(v) not in input_ids]
        if variables and not _accepts_variables(grad):
            names = ", ".join(repr(v.name or "<unnamed>") for v in variables)
            raise TypeError(f"custom_gradient {fname}: the function reads trainable Variable(s) "
                            f"{names}, so its grad function must accept a keyword argument "
                            "'variables' (grad(*dys, variables=None)) and return (input_gradients, "
                            "variable_gradients)")

        leaves, spec = flatten(y)
        if not leaves:
            raise TypeError(f"custom_gradient {fname}: y holds no tensor")
        outs: list[Tensor] = []
        for i, leaf in enumerate(leaves):
            if not isinstance(leaf, Tensor):
                try:
                    leaf = as_tensor(leaf)
                except TypeError:
                    raise TypeError(f"custom_gradient {fname}: output {i} is "
                                    f"{type(leaf).__name__}, expected a Tensor") from None
            # a fresh Tensor: y may be an input itself, or a Variable; inside gt.vmap, a
            # fresh one of the same batch (its data is per-example metadata, not an array)
            if isinstance(leaf, BatchedTensor):
                outs.append(BatchedTensor(leaf._value, leaf._bdim, leaf._level))
            else:
                outs.append(_wrap(leaf.data, leaf._backend))
        all_in = tuple(inputs) + tuple(variables)
        if all_in and HOOKS.on:  # HOOKS.on: some tape, watcher or numerics check is active
            prim = _CustomCall(fname, grad, arg_names, len(inputs), variables, outs,
                               multi=len(outs) > 1)
            # duck-typed: to the engine, a non-elementwise primitive whose VJP saves nothing
            record(cast(Primitive, prim), all_in, outs[0], {}, tuple(outs[1:]))
        return unflatten(spec, outs)

    return wrapper
