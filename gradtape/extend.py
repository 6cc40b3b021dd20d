"""The public extension API: declare your own primitives and read the registry.

A primitive is one declaration holding every rule of an op: its forward on backend arrays
(``impl(xp, *arrays, **params)``), its VJP and, for elementwise ops, the local derivative of
the output with respect to each input as an expression string. From that expression gradtape
derives the unfused backward on arrays, the fused CPU/CUDA kernels, the differentiable backward
(higher order) and the vmap batching rule; you write nothing else.

Add an elementwise op in two lines::

    >>> import gradtape as gt
    >>> from gradtape import extend
    >>> P_CUBE = extend.elementwise("my_cube", lambda xp, x: x * x * x, d="3 * x * x")
    >>> x = gt.tensor([2.0])
    >>> with gt.GradientTape() as tape:
    ...     tape.watch(x)
    ...     y = extend.bind(P_CUBE, x)
    >>> tape.gradient(y, x).numpy()
    array([12.], dtype=float32)

A non-elementwise op declares its VJP once as a *rule* ``rule(m, rec, g)`` written against the
vocabulary ``m`` (:class:`OnTensors`): ``m.apply(primitive, *operands, **params)``, ``m.val``
(a saved Tensor), ``m.data``, ``m.const`` and Python operators. gradtape renders the same rule
on backend arrays for first-order passes and on Tensors (recorded, differentiable) for higher
order::

    >>> def _double_rule(m, rec, g):
    ...     return (g * 2,)
    >>> P_DOUBLE = extend.primitive("my_double", lambda xp, x: 2 * x, rule=_double_rule,
    ...                             saves_inputs=False)
    >>> with gt.GradientTape() as tape:
    ...     tape.watch(x)
    ...     y = extend.bind(P_DOUBLE, x)
    >>> tape.gradient(y, x).numpy()
    array([2.], dtype=float32)

``rec`` (a record) exposes what the VJP may read: ``rec.inputs`` / ``rec.output`` (the saved
Tensors, None where not saved), ``rec.in_shapes``, ``rec.in_dtypes``, ``rec.params`` and
``rec.needs`` (which inputs need a gradient). Return one gradient (or None) per input; the
engine sums broadcast gradients back to each input's shape and casts to its dtype.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

from ._src.autodiff import fusion as _fusion
from ._src.autodiff.fusion import STATS as _FUSION_STATS
from ._src.codegen.expr import FUNCTIONS as FUNCTIONS
from ._src.codegen.expr import Expr as Expr
from ._src.codegen.expr import parse as parse
from ._src.cpu import pool as _pool
from ._src.errors import ExpressionError as ExpressionError
from ._src.errors import MissingRuleError as MissingRuleError
from ._src.primitive import REGISTRY as REGISTRY
from ._src.primitive import Domain as Domain
from ._src.primitive import Primitive as Primitive
from ._src.primitive import as_tensor as as_tensor
from ._src.primitive import bind as _bind
from ._src.primitive import elementwise as elementwise
from ._src.primitive import primitive as primitive
from ._src.rules import ON_NUMPY as ON_NUMPY
from ._src.rules import ON_TENSORS as ON_TENSORS
from ._src.rules import OnArrays as OnArrays
from ._src.rules import OnTensors as OnTensors
from ._src.rules import on_arrays as on_arrays
from ._src.tensor import Tensor as _Tensor

__all__ = [
    "REGISTRY", "Domain", "Expr", "ExpressionError", "FUNCTIONS", "MissingRuleError", "ON_NUMPY",
    "ON_TENSORS", "OnArrays", "OnTensors", "Primitive", "as_tensor", "bind", "cpu_thresholds",
    "elementwise", "fusion_stats", "fusion_thresholds", "get", "on_arrays", "parse", "primitive",
]


def get(name: str) -> Primitive:
    """The registered primitive called ``name`` (``KeyError`` naming the known ones otherwise).

    Example:
        >>> from gradtape import extend
        >>> extend.get("tanh").is_elementwise
        True
    """
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"no primitive named {name!r}; registered: {sorted(REGISTRY)}") from None


def bind(prim: Primitive | str, *args: Any, **params: Any) -> _Tensor:
    """Run primitive ``prim`` (a :class:`Primitive` or the name of a registered one) on
    ``args`` and record it on the active tapes. Pass Tensors; other array data is converted as
    ``gt.tensor`` converts it (:func:`as_tensor` converts an argument next to another with the
    weak-scalar rule).

    Example:
        >>> import gradtape as gt
        >>> from gradtape import extend
        >>> extend.bind("mul", gt.tensor([2.0]), gt.tensor([3.0])).numpy()
        array([6.], dtype=float32)
    """
    if not isinstance(prim, Primitive):
        if not isinstance(prim, str):
            raise TypeError(f"extend.bind: prim must be a Primitive or the name of a registered "
                            f"one, got {prim!r} ({type(prim).__name__})")
        prim = get(prim)
    if not args:
        raise TypeError(f"extend.bind: primitive {prim.name!r} needs at least one Tensor argument")
    if not all(isinstance(a, _Tensor) for a in args):
        args = tuple(a if isinstance(a, _Tensor) else as_tensor(a) for a in args)
    return _bind(prim, *args, **params)


def fusion_stats(reset: bool = False) -> dict[str, Any]:
    """Counters of the fused backward since the process started (or the last reset):
    ``{"runs": fused kernel launches, "records": records they covered}``.

    Example:
        >>> from gradtape import extend
        >>> sorted(extend.fusion_stats())
        ['records', 'runs']
    """
    out = dict(_FUSION_STATS)
    if reset:
        for k in _FUSION_STATS:
            _FUSION_STATS[k] = 0
    return out


# keyword of cpu_thresholds -> the attribute of the CPU pool module that holds it
_THRESHOLDS = {"threads": "THREADS", "chunk": "CHUNK", "min_size": "MIN_SIZE",
               "cheap_min_size": "CHEAP_MIN_SIZE", "cache_budget": "CACHE_BUDGET"}


@contextlib.contextmanager
def cpu_thresholds(*, threads: int | None = None, chunk: int | None = None,
                   min_size: int | None = None, cheap_min_size: int | None = None,
                   cache_budget: int | None = None) -> Iterator[dict[str, int]]:
    """Set the sizes that decide when NumPy work is split over the CPU thread pool, for the
    ``with`` block; the previous values come back on exit (also on an error).

    On the NumPy backend an elementwise primitive's forward whose output has at least
    ``min_size`` elements (``cheap_min_size`` for primitives declared ``cheap``, single
    memory-bound ufuncs such as ``add``) and more than one ``chunk`` is computed in chunks of
    ``chunk`` elements on up to ``threads`` threads (the calling thread is one of them), with
    a result bit-identical to the single call. ``threads`` also bounds the threads of a fused
    backward kernel. ``threads=1`` turns threading off. A fused kernel (the fused backward, a
    ``gt.function``'s fused elementwise runs) on one thread runs in blocks whose slices of all
    its buffers fit ``cache_budget`` bytes; by default that budget is measured once per process
    at first use (half the L2 cache, or 4 MiB where that runs a test chain faster), or read
    from ``GRADTAPE_CACHE_BUDGET``. A ``gt.function`` fixes its blocks when it traces. The
    values are the same for every setting; only the time changes. The defaults suit the machine (see
    ``benchmarks/RESULTS.md``); lower them to exercise the threaded path on small arrays (an
    extension's tests), raise ``min_size`` to keep a forward on one thread.

    The setting is process-wide (every thread sees it), not per thread: change it where no
    other thread is computing. The pool's size is fixed when it is first used (one worker fewer
    than ``threads`` was then, at least one); a larger ``threads`` later shares those workers.

    Args:
        threads: threads a large operation is split over, >= 1.
        chunk: elements per chunk of the threaded forward, >= 1.
        min_size: output elements from which an elementwise forward is threaded, >= 1.
        cheap_min_size: the same, for primitives declared ``cheap``, >= 1.
        cache_budget: bytes one block of a fused kernel on one thread may touch, >= 1.

    Yields:
        The values in effect inside the block: ``{"threads", "chunk", "min_size",
        "cheap_min_size", "cache_budget"}`` (arguments left at None keep their current
        value), and ``"block"``, the largest block of a fused kernel in elements (fixed: not
        set here; a kernel on one thread takes smaller blocks when its buffers' slices would
        not fit ``cache_budget``).

    Raises:
        TypeError: a value is not an int.
        ValueError: a value is below 1.

    Example:
        >>> import numpy as np
        >>> import gradtape as gt
        >>> from gradtape import extend
        >>> with extend.cpu_thresholds(threads=2, chunk=1000, min_size=4096) as t:
        ...     y = gt.sin(gt.tensor(np.zeros(5000)))   # computed in 5 chunks on 2 threads
        ...     t["min_size"]
        4096
    """
    given = {"threads": threads, "chunk": chunk, "min_size": min_size,
             "cheap_min_size": cheap_min_size, "cache_budget": cache_budget}
    for key, value in given.items():
        if value is not None:
            _check_count(f"cpu_thresholds: {key}", value, 1)
    _pool.cache_budget()  # (measured now if not yet: the value saved and yielded is the real one)
    saved = {key: getattr(_pool, attr) for key, attr in _THRESHOLDS.items()}
    try:
        for key, value in given.items():
            if value is not None:
                setattr(_pool, _THRESHOLDS[key], int(value))
        yield {**{key: getattr(_pool, attr) for key, attr in _THRESHOLDS.items()},
               "block": _pool.BLOCK}
    finally:
        for key, attr in _THRESHOLDS.items():
            setattr(_pool, attr, saved[key])


@contextlib.contextmanager
def fusion_thresholds(*, min_run: int | None = None,
                      min_run_by_size: Sequence[tuple[int, int]] | None = None
                      ) -> Iterator[dict[str, Any]]:
    """Set how many elementwise records a run must have before the first-order backward fuses
    it into one generated kernel, for the ``with`` block; the previous values come back on
    exit (also on an error).

    A fused kernel has a fixed cost (planning, gathering its operands, the call), so on small
    arrays only long runs pay for it. A run whose arrays have ``size`` elements is fused when
    it has at least ``n`` records, for the first ``(limit, n)`` of ``min_run_by_size`` with
    ``size <= limit``, else at least ``min_run`` records. ``min_run_by_size=()`` fuses every
    run of ``min_run`` or more records whatever its size: what a test of an extension's
    elementwise primitive inside fused kernels wants on small arrays. ``gt.config.fusion``
    still switches fusion off altogether; :func:`fusion_stats` counts the kernels that ran.

    The setting is process-wide (every thread sees it), not per thread.

    Args:
        min_run: fewest records of a fused run on arrays larger than every limit, >= 1.
        min_run_by_size: ``(limit, n)`` pairs with increasing limits (>= 0) and n >= 1.

    Yields:
        The values in effect inside the block: ``{"min_run": int, "min_run_by_size": tuple}``
        (arguments left at None keep their current value).

    Raises:
        TypeError: a value is not an int, or ``min_run_by_size`` is not a sequence of pairs.
        ValueError: a value is out of range, or the limits do not increase.

    Example:
        >>> import numpy as np
        >>> import gradtape as gt
        >>> from gradtape import extend
        >>> x = gt.tensor(np.linspace(-1.0, 1.0, 8))
        >>> with extend.fusion_thresholds(min_run=3, min_run_by_size=()) as t:
        ...     with gt.GradientTape() as tape:
        ...         tape.watch(x)
        ...         y = gt.sin(gt.tanh(gt.exp(x)))
        ...     before = extend.fusion_stats()["runs"]
        ...     g = tape.gradient(y, x)
        ...     extend.fusion_stats()["runs"] - before, t["min_run"]
        (1, 3)
    """
    if min_run is not None:
        _check_count("fusion_thresholds: min_run", min_run, 1)
    pairs: tuple[tuple[int, int], ...] | None = None
    if min_run_by_size is not None:
        if isinstance(min_run_by_size, (str, bytes)) or not isinstance(min_run_by_size, Sequence):
            raise TypeError("fusion_thresholds: min_run_by_size must be a sequence of "
                            f"(limit, n) pairs, got {type(min_run_by_size).__name__}")
        checked: list[tuple[int, int]] = []
        for i, pair in enumerate(min_run_by_size):
            if not isinstance(pair, Sequence) or isinstance(pair, (str, bytes)) or len(pair) != 2:
                raise TypeError(f"fusion_thresholds: min_run_by_size[{i}] must be a "
                                f"(limit, n) pair, got {pair!r}")
            limit = _check_count(f"fusion_thresholds: min_run_by_size[{i}] limit", pair[0], 0)
            n = _check_count(f"fusion_thresholds: min_run_by_size[{i}] n", pair[1], 1)
            if checked and limit <= checked[-1][0]:
                raise ValueError("fusion_thresholds: the limits of min_run_by_size must increase, "
                                 f"got {limit} after {checked[-1][0]}")
            checked.append((limit, n))
        pairs = tuple(checked)
    saved = (_fusion.MIN_SMALL_RUN, _fusion.MIN_RUN_BY_SIZE)
    try:
        if min_run is not None:
            _fusion.MIN_SMALL_RUN = int(min_run)
        if pairs is not None:
            fusion_module: Any = _fusion  # its constant is typed by its default's length
            fusion_module.MIN_RUN_BY_SIZE = pairs
        yield {"min_run": _fusion.MIN_SMALL_RUN, "min_run_by_size": _fusion.MIN_RUN_BY_SIZE}
    finally:
        _fusion.MIN_SMALL_RUN, _fusion.MIN_RUN_BY_SIZE = saved


def _check_count(what: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, got {type(value).__name__}")
    if value < low:
        raise ValueError(f"{what} must be >= {low}, got {value}")
    return int(value)
