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

from typing import Any

from ._src.autodiff.fusion import STATS as _FUSION_STATS
from ._src.codegen.expr import FUNCTIONS as FUNCTIONS
from ._src.codegen.expr import Expr as Expr
from ._src.codegen.expr import parse as parse
from ._src.errors import ExpressionError as ExpressionError
from ._src.errors import MissingRuleError as MissingRuleError
from ._src.primitive import REGISTRY as REGISTRY
from ._src.primitive import Domain as Domain
from ._src.primitive import Primitive as Primitive
from ._src.primitive import as_tensor as as_tensor
from ._src.primitive import bind as bind
from ._src.primitive import elementwise as elementwise
from ._src.primitive import primitive as primitive
from ._src.rules import ON_NUMPY as ON_NUMPY
from ._src.rules import ON_TENSORS as ON_TENSORS
from ._src.rules import OnArrays as OnArrays
from ._src.rules import OnTensors as OnTensors
from ._src.rules import on_arrays as on_arrays

__all__ = [
    "REGISTRY", "Domain", "Expr", "ExpressionError", "FUNCTIONS", "MissingRuleError", "ON_NUMPY",
    "ON_TENSORS", "OnArrays", "OnTensors", "Primitive", "as_tensor", "bind", "elementwise",
    "fusion_stats", "get", "on_arrays", "parse", "primitive",
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
