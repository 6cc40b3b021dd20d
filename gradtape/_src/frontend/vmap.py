"""``gt.vmap``: vectorize a function over a batch axis with batching rules, never a loop.

Inputs mapped over an axis are wrapped as :class:`~gradtape._src.autodiff.batched.BatchedTensor`
(one example each, logically); every primitive the function applies to them runs its
batching rule once on the whole batch (``bind_batched`` in :mod:`gradtape._src.primitive`).
Outputs are unwrapped with their batch axis moved to ``out_axes``. Nested vmaps number their
levels; tapes and ``gt.grad`` inside the function differentiate per example.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import numpy as np

from ... import ops
from ..autodiff.batched import RANDOMNESS, BatchedTensor, SharedDraws, batch_level
from ..nest import flatten, leaf_paths, unflatten
from ..tensor import Tensor, tensor

__all__ = ["vmap", "broadcast_prefix"]

_FORWARDING = inspect.Signature([inspect.Parameter("args", inspect.Parameter.VAR_POSITIONAL),
                                 inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD)])

AxisSpec = Any  # int | None | a tuple/list/dict of them matching the arguments' structure


def broadcast_prefix(spec: AxisSpec, tree: Any, what: str) -> list[int | None]:
    """One axis per leaf of ``tree`` (in :func:`~gradtape._src.nest.flatten`'s order) from
    ``spec``: an int or None for every leaf below it, or a list/tuple/dict matching ``tree``'s
    structure down to where it holds ints or Nones (JAX's tree prefix)."""
    out: list[int | None] = []
    _prefix(spec, tree, what, out)
    return out


def _prefix(spec: AxisSpec, tree: Any, what: str, out: list[int | None]) -> None:
    if spec is None or isinstance(spec, (int, np.integer)) and not isinstance(spec, bool):
        n = len(flatten(tree)[0]) if isinstance(tree, (list, tuple, dict)) else 1
        out.extend([None if spec is None else int(spec)] * n)
        return
    if isinstance(spec, dict):
        if not isinstance(tree, dict) or sorted(spec) != sorted(tree):
            raise ValueError(f"gt.vmap: {what} is a dict with keys {sorted(spec)} but the value it "
                             f"describes is {_describe(tree)}")
        for k in sorted(tree):
            _prefix(spec[k], tree[k], f"{what}[{k!r}]", out)
        return
    if isinstance(spec, (list, tuple)):
        if not isinstance(tree, (list, tuple)) or len(spec) != len(tree):
            raise ValueError(f"gt.vmap: {what} has {len(spec)} entries but the value it describes "
                             f"is {_describe(tree)}")
        for i, (s, t) in enumerate(zip(spec, tree)):
            _prefix(s, t, f"{what}[{i}]", out)
        return
    raise TypeError(f"gt.vmap: {what} must be an int, None, or a tuple/list/dict of them, got "
                    f"{type(spec).__name__}")


def _describe(tree: Any) -> str:
    if isinstance(tree, dict):
        return f"a dict with keys {sorted(tree)}"
    if isinstance(tree, (list, tuple)):
        return f"a {type(tree).__name__} of length {len(tree)}"
    return f"a {type(tree).__name__}"


def _argument(tree: Any, i: int) -> str:
    """Leaf ``i`` of the positional arguments (flattened as one list, ``tree`` its spec) as the
    user wrote it: ``argument 1``, ``argument 0['b']``."""
    path = leaf_paths(tree)[i]  # "[j]..." : the j-th positional argument, then inside it
    j, rest = path[1:].split("]", 1)
    return f"argument {j}{rest}"


def _output(spec: Any, j: int) -> str:
    """Leaf ``j`` of the function's output (``spec``: its :func:`flatten` spec) as indexing:
    ``the output``, ``the output[1]``, ``the output['loss']``."""
    return f"the output{leaf_paths(spec)[j]}"


def _as_leaf_tensor(x: Any, where: Callable[[], str]) -> Tensor:
    if isinstance(x, Tensor):
        return x
    if isinstance(x, (np.ndarray, np.generic, int, float, bool, list)) or hasattr(x, "__array__"):
        return tensor(x)
    raise TypeError(f"gt.vmap: {where()} is mapped over an axis, so it must be a Tensor or an "
                    f"array, got {type(x).__name__}")


def _move_axis(t: Tensor, src: int, dst: int) -> Tensor:
    if src == dst:
        return t
    return ops.moveaxis(t, src, dst)


def vmap(f: Callable[..., Any], in_axes: AxisSpec = 0, out_axes: AxisSpec = 0,
         axis_size: int | None = None, chunk_size: int | None = None,
         randomness: str = "error") -> Callable[..., Any]:
    """Vectorize ``f`` over a batch axis of its arguments: no Python loop, every op runs once on
    the whole batch through its batching rule.

    Args:
        f: a function of tensors (or nested tuples/lists/dicts of them) returning the same.
        in_axes: the batch axis of each positional argument: an int (any position, negative
            counts from the end) or None (not batched: the same value for every example), one
            for all arguments, or a tuple with one entry per argument (each entry may itself be
            a tuple/list/dict matching that argument's structure).
        out_axes: where the batch axis goes in each output (same forms); None for an output
            that does not depend on the batch.
        axis_size: the batch size when no argument is batched (every ``in_axes`` is None).
        chunk_size: run the batch in pieces of at most this many examples (bounds the memory
            of intermediate values) and concatenate the results.
        randomness: what a random draw inside ``f`` (``gt.random``, a ``Generator``,
            ``gt.nn.dropout``) does, as in ``torch.func.vmap``: "error" (raise: a draw would
            otherwise give every example the same numbers), "different" (independent numbers
            per example: dropout masks differ between examples), "same" (one draw shared by
            all examples).

    Returns:
        The vectorized function. For ``x[B, n]`` mapped over axis 0, ``f`` sees ``x`` with
        shape ``[n]``; an output of per-example shape ``s`` comes back as ``[B, *s]``.

    Raises:
        ValueError: batch sizes of the arguments differ, an axis is out of range, or ``f``
            draws random numbers under ``randomness="error"``.
        MissingRuleError: ``f`` applies a primitive that has no batching rule (named).
        TypeError: ``f`` reads a batched value as a Python value (``if x > 0:``, ``float(x)``).

    Example:
        >>> import gradtape as gt
        >>> import numpy as np
        >>> W = gt.tensor(np.ones((3, 2), np.float32))
        >>> X = gt.tensor(np.ones((5, 3), np.float32))
        >>> gt.vmap(lambda x, w: x @ w, in_axes=(0, None))(X, W).shape
        (5, 2)
        >>> def loss(w, x):
        ...     return gt.sum(gt.tanh(x @ w))
        >>> gt.vmap(gt.grad(loss), in_axes=(None, 0))(W, X).shape   # per-example gradients
        (5, 3, 2)
    """
    if not callable(f):
        raise TypeError(f"gt.vmap: f must be callable, got {type(f).__name__}")
    if axis_size is not None and (not isinstance(axis_size, (int, np.integer)) or axis_size < 0):
        raise ValueError(f"gt.vmap: axis_size must be a non-negative int, got {axis_size!r}")
    if chunk_size is not None and (not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1):
        raise ValueError(f"gt.vmap: chunk_size must be a positive int, got {chunk_size!r}")
    if randomness not in RANDOMNESS:
        raise ValueError(f"gt.vmap: randomness must be one of {', '.join(map(repr, RANDOMNESS))}, "
                         f"got {randomness!r}")

    @functools.wraps(f)
    def vectorized(*args: Any, **kwargs: Any) -> Any:
        if isinstance(in_axes, (list, tuple)) and len(in_axes) != len(args):
            raise ValueError(f"gt.vmap: in_axes has {len(in_axes)} entries but the function was "
                             f"called with {len(args)} positional arguments")
        spec_axes = tuple(in_axes) if isinstance(in_axes, (list, tuple)) else (in_axes,) * len(args)
        leaves, tree = flatten(list(args))
        axes = broadcast_prefix(list(spec_axes), list(args), "in_axes")
        size = None
        first = 0  # the leaf that set the batch size
        tensors: list[Any] = []
        for i, (leaf, ax) in enumerate(zip(leaves, axes)):
            if ax is None:
                tensors.append(leaf)
                continue
            t = _as_leaf_tensor(leaf, functools.partial(_argument, tree, i))
            if not -t.ndim <= ax < t.ndim:
                raise ValueError(f"gt.vmap: in_axes {ax} is out of range for "
                                 f"{_argument(tree, i)} of shape {t.shape}")
            ax = ax % t.ndim
            axes[i] = ax
            n = t.shape[ax]
            if size is None:
                size, first = n, i
            elif n != size:
                t0 = tensors[first]
                raise ValueError(f"gt.vmap: batch sizes differ: {_argument(tree, i)} has {n} "
                                 f"along axis {ax} (shape {t.shape}), but {_argument(tree, first)} "
                                 f"has {size} along axis {axes[first]} (shape {t0.shape}); every "
                                 "mapped argument needs the same number of examples (in_axes=None "
                                 "for an argument shared by all examples)")
            tensors.append(t)
        if size is None:
            if axis_size is None:
                raise ValueError("gt.vmap: no argument is batched (every in_axes is None); pass "
                                 "axis_size to say how many examples to produce")
            size = int(axis_size)
        elif axis_size is not None and axis_size != size:
            raise ValueError(f"gt.vmap: axis_size={axis_size} but the batched arguments have "
                             f"{size} examples")
        if chunk_size is not None and size > chunk_size:
            return _chunked(size, int(chunk_size), tensors, axes, tree, kwargs)
        return _run(size, tensors, axes, tree, kwargs)

    def _run(size: int, tensors: list[Any], axes: list[int | None], tree: Any, kwargs: dict,
             shared: SharedDraws | None = None) -> Any:
        with batch_level(size, randomness, shared) as level:
            wrapped = [t if ax is None else BatchedTensor(t, ax, level)
                       for t, ax in zip(tensors, axes)]
            out = f(*unflatten(tree, wrapped), **kwargs)  # keywords: passed as they are
        return _unwrap(out, level, size)

    def _chunked(size: int, chunk: int, tensors: list[Any], axes: list[int | None], tree: Any,
                 kwargs: dict) -> Any:
        pieces = []
        # "same": one draw for the whole batch, so the later pieces take the first one's
        shared = SharedDraws() if randomness == "same" else None
        for start in range(0, size, chunk):
            stop = min(start + chunk, size)
            part = [t if ax is None else _slice(t, ax, start, stop) for t, ax in zip(tensors, axes)]
            if shared is not None:
                shared.piece(start == 0)
            pieces.append(_run(stop - start, part, axes, tree, kwargs, shared))
        flats = [flatten(p) for p in pieces]
        spec = flats[0][1]
        oaxes = broadcast_prefix(out_axes, pieces[0], "out_axes")
        joined = []
        for j, ax in enumerate(oaxes):
            items = [fl[0][j] for fl in flats]
            if ax is None:
                joined.append(items[0])
            else:
                first = items[0]
                joined.append(ops.concat(items, axis=ax % first.ndim))
        return unflatten(spec, joined)

    def _unwrap(out: Any, level: int, size: int) -> Any:
        leaves, spec = flatten(out)
        oaxes = broadcast_prefix(out_axes, out, "out_axes")
        res = []
        for j, (leaf, ax) in enumerate(zip(leaves, oaxes)):
            batched = isinstance(leaf, BatchedTensor) and leaf._level == level
            if ax is None:
                if batched:
                    raise ValueError(f"gt.vmap: out_axes is None for {_output(spec, j)}, but it "
                                     "depends on the batched arguments (it differs per example)")
                res.append(leaf)
                continue
            if batched:
                phys = leaf._value
                nd = phys.ndim
                if not -nd <= ax < nd:
                    raise ValueError(f"gt.vmap: out_axes {ax} is out of range for "
                                     f"{_output(spec, j)} of per-example shape {leaf.shape}")
                res.append(_move_axis(phys, leaf._bdim, ax % nd))
                continue
            if leaf is None:
                raise TypeError(f"gt.vmap: {_output(spec, j)} is None; return tensors (or set "
                                "its out_axes to None)")
            t = leaf if isinstance(leaf, Tensor) else _as_leaf_tensor(
                leaf, functools.partial(_output, spec, j))
            nd = t.ndim + 1
            if not -nd <= ax < nd:
                raise ValueError(f"gt.vmap: out_axes {ax} is out of range for "
                                 f"{_output(spec, j)} of per-example shape {t.shape}")
            ax = ax % nd
            expanded = ops.expand_dims(t, ax)
            shape = list(expanded.shape)
            shape[ax] = size
            res.append(ops.broadcast_to(expanded, tuple(shape)))
        return unflatten(spec, res)

    # the vectorized function takes its arguments as passed, each positional one mapped by
    # in_axes: its signature is (*args, **kwargs), not f's (gt.function binds a wrapper by the
    # signature it reports, and would pass f's defaults positionally, mapping them too)
    vectorized.__signature__ = _FORWARDING  # type: ignore[attr-defined]
    return vectorized


def _slice(t: Tensor, axis: int, start: int, stop: int) -> Tensor:
    index = (slice(None),) * axis + (slice(start, stop),)
    return t[index]
