"""Derivative expressions as data: parse once, render several ways.

Each elementwise primitive declares its local derivatives as strings in a small language
shared by Python and CUDA C: numbers, the primitive's input names (``x`` or ``a, b``), its
output ``y``, its scalar parameters, ``+ - * / **``, comparisons, ``&``, ``|``, ``~``, and
the calls in :data:`FUNCTIONS` (``where(c, a, b)`` included). A string is parsed with
:mod:`ast` against that whitelist and then rendered:

* :func:`array_vjp` - a Python function on backend arrays computing ``gy * d``, the unfused
  first-order route;
* :func:`tensor_vjp` - the same expression evaluated with gradtape ops, used whenever the
  backward pass is itself recorded (higher order) so that it stays differentiable.

"0 times anything is 0": when a primitive is declared ``safe``, the product ``gy * d`` is
taken as 0 wherever ``gy`` is 0 even if ``d`` is infinite, so a zero upstream gradient never
becomes NaN (API.md, ``where``).
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Expr", "parse", "FUNCTIONS", "array_vjp", "tensor_vjp", "ExpressionError"]


class ExpressionError(ValueError):
    """A derivative expression uses something outside the shared subset."""


# name -> number of arguments. Every renderer must define each of these.
FUNCTIONS: dict[str, int] = {
    "exp": 1, "log": 1, "log1p": 1, "expm1": 1, "sqrt": 1, "rsqrt": 1, "sin": 1, "cos": 1,
    "tan": 1, "tanh": 1, "sinh": 1, "cosh": 1, "arcsin": 1, "arccos": 1, "arctan": 1,
    "erf": 1, "abs": 1, "sign": 1, "sigmoid": 1, "square": 1, "where": 3,
}
CONSTANTS = {"pi": math.pi}

_BINOPS = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Pow, ast.BitAnd, ast.BitOr)
_CMPOPS = (ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.Eq, ast.NotEq)
_UNARY = (ast.USub, ast.UAdd, ast.Invert)


@dataclass(frozen=True)
class Expr:
    """A parsed derivative expression.

    Attributes:
        source: the text as declared.
        tree: the validated :class:`ast.Expression`.
        names: the variable names it reads (inputs, ``y``, parameters), sorted.
        constant: the value when the expression is a plain number (``"1"``), else None.
    """

    source: str
    tree: ast.Expression
    names: tuple[str, ...]
    constant: float | None


def parse(source: str, allowed: tuple[str, ...]) -> Expr:
    """Parse ``source`` against the whitelist; ``allowed`` lists the variable names it may read.

    Example:
        >>> parse("1 - y * y", ("x", "y")).names
        ('y',)
    """
    try:
        tree = ast.parse(source.strip(), mode="eval")
    except SyntaxError as exc:
        raise ExpressionError(f"derivative expression {source!r} is not valid: {exc.msg}") from None
    names: set[str] = set()

    def check(node: ast.AST) -> None:
        if isinstance(node, ast.Expression):
            check(node.body)
        elif isinstance(node, ast.Constant):
            if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
                raise ExpressionError(f"{source!r}: only numeric constants are allowed, got {node.value!r}")
        elif isinstance(node, ast.Name):
            if node.id in CONSTANTS:
                return
            if node.id not in allowed:
                raise ExpressionError(f"{source!r}: unknown name {node.id!r}; allowed: {sorted(allowed)}")
            names.add(node.id)
        elif isinstance(node, ast.BinOp):
            if not isinstance(node.op, _BINOPS):
                raise ExpressionError(f"{source!r}: operator {type(node.op).__name__} is not allowed")
            check(node.left)
            check(node.right)
        elif isinstance(node, ast.UnaryOp):
            if not isinstance(node.op, _UNARY):
                raise ExpressionError(f"{source!r}: operator {type(node.op).__name__} is not allowed")
            check(node.operand)
        elif isinstance(node, ast.Compare):
            if len(node.ops) != 1 or not isinstance(node.ops[0], _CMPOPS):
                raise ExpressionError(f"{source!r}: use one comparison at a time, combined with & or |")
            check(node.left)
            check(node.comparators[0])
        elif isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
                raise ExpressionError(f"{source!r}: unknown function {ast.unparse(node.func)!r}; "
                                      f"allowed: {sorted(FUNCTIONS)}")
            if node.keywords or len(node.args) != FUNCTIONS[node.func.id]:
                raise ExpressionError(f"{source!r}: {node.func.id} takes {FUNCTIONS[node.func.id]} "
                                      "positional argument(s)")
            for arg in node.args:
                check(arg)
        else:
            raise ExpressionError(f"{source!r}: {type(node).__name__} is not allowed in a derivative expression")

    check(tree)
    constant = None
    if isinstance(tree.body, ast.Constant):
        constant = float(tree.body.value)
    elif (isinstance(tree.body, ast.UnaryOp) and isinstance(tree.body.op, ast.USub)
          and isinstance(tree.body.operand, ast.Constant)):
        constant = -float(tree.body.operand.value)
    return Expr(source, tree, tuple(sorted(names)), constant)


# --------------------------------------------------------------------------- array rendering
def _array_namespace(backend: Any) -> dict[str, Any]:
    xp = backend.xp

    def sigmoid(v: Any) -> Any:
        return 0.5 * (xp.tanh(0.5 * v) + 1)  # overflow-free logistic

    def rsqrt(v: Any) -> Any:
        return 1 / xp.sqrt(v)

    ns = {
        "exp": xp.exp, "log": xp.log, "log1p": xp.log1p, "expm1": xp.expm1, "sqrt": xp.sqrt,
        "rsqrt": rsqrt, "sin": xp.sin, "cos": xp.cos, "tan": xp.tan, "tanh": xp.tanh,
        "sinh": xp.sinh, "cosh": xp.cosh, "arcsin": xp.arcsin, "arccos": xp.arccos,
        "arctan": xp.arctan, "erf": backend.erf, "abs": xp.abs, "sign": xp.sign,
        "sigmoid": sigmoid, "square": xp.square, "where": xp.where, "__builtins__": {},
    }
    ns.update(CONSTANTS)
    assert set(FUNCTIONS) <= set(ns)
    return ns


_array_cache: dict[tuple, Callable] = {}


def array_vjp(expr: Expr, arg_names: tuple[str, ...], backend: Any, safe: bool) -> Callable:
    """Render ``gy * (expr)`` as a function ``f(gy, *args)`` on backend arrays (cached).

    ``arg_names`` fixes the positional order (inputs, then ``y``, then parameters).

    Example:
        >>> from gradtape._backend import NUMPY
        >>> import numpy as np
        >>> f = array_vjp(parse("1 - y * y", ("x", "y")), ("x", "y"), NUMPY, False)
        >>> f(np.ones(2), None, np.zeros(2))
        array([1., 1.])
    """
    key = (expr.source, arg_names, backend.name, safe)
    fn = _array_cache.get(key)
    if fn is not None:
        return fn
    ns = _array_namespace(backend)
    body = ast.unparse(expr.tree)
    if expr.constant == 1.0:
        code = "gy"
    elif expr.constant == -1.0:
        code = "-gy"
    elif safe:
        code = f"_safe(gy, ({body}))"
        xp = backend.xp

        def _safe(gy: Any, d: Any) -> Any:
            prod = gy * d
            bad = (gy == 0) & ~xp.isfinite(prod)
            return xp.where(bad, xp.zeros((), prod.dtype), prod) if bad.any() else prod

        ns["_safe"] = _safe
    else:
        code = f"gy * ({body})"
    fn = eval(f"lambda gy, {', '.join(arg_names)}: {code}", ns)  # noqa: S307 - whitelisted AST
    _array_cache[key] = fn
    return fn


# --------------------------------------------------------------------------- tensor rendering
_tensor_cache: dict[tuple, Callable] = {}


def tensor_vjp(expr: Expr, arg_names: tuple[str, ...], safe: bool) -> Callable:
    """Render ``gy * (expr)`` with gradtape ops, so an outer tape can differentiate it.

    Example:
        >>> import gradtape as gt
        >>> f = tensor_vjp(parse("1 - y * y", ("x", "y")), ("x", "y"), False)
        >>> f(gt.tensor([1.0]), None, gt.tensor([0.5])).numpy()
        array([0.75], dtype=float32)
    """
    key = (expr.source, arg_names, safe)
    fn = _tensor_cache.get(key)
    if fn is not None:
        return fn
    from . import ops

    ns: dict[str, Any] = {name: getattr(ops, name) for name in FUNCTIONS}
    ns.update(CONSTANTS)
    ns["__builtins__"] = {}
    body = ast.unparse(expr.tree)
    if expr.constant == 1.0:
        code = "gy"
    elif expr.constant == -1.0:
        code = "-gy"
    elif safe:
        ns["_safe"] = ops.safe_mul
        code = f"_safe(gy, ({body}))"
    else:
        code = f"gy * ({body})"
    fn = eval(f"lambda gy, {', '.join(arg_names)}: {code}", ns)  # noqa: S307 - whitelisted AST
    _tensor_cache[key] = fn
    return fn


def evaluate_numpy(expr: Expr, values: dict[str, Any]) -> Any:
    """Evaluate ``expr`` itself (not multiplied by ``gy``) on NumPy arrays; for tests."""
    from ._backend import NUMPY

    ns = _array_namespace(NUMPY)
    ns.update(values)
    return eval(compile(expr.tree, "<derivative>", "eval"), ns)  # noqa: S307


_ = np  # NumPy is used by renderers added for fused kernels
