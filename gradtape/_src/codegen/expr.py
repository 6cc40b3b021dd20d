"""Derivative expressions as data: the language, parsed once against a whitelist.

Each elementwise primitive declares its local derivatives as strings in a small language
shared by Python and CUDA C: numbers, the primitive's input names (``x`` or ``a, b``), its
output ``y``, its scalar parameters, ``+ - * / **``, comparisons, ``&``, ``|``, ``~``, and
the calls in :data:`FUNCTIONS` (``where(c, a, b)`` included). :func:`parse` validates a string
with :mod:`ast`; the renderings live beside this module:

* :mod:`.arrays` - ``gy * d`` as a Python function on backend arrays (the unfused route);
* :mod:`.graph` - the backward of one record or of a fused run as a DAG;
* :mod:`.numpy_program` - that DAG as straight-line NumPy ufunc calls run block by block;
* :mod:`.cuda` - that DAG as the body of a CuPy ``ElementwiseKernel``;
* the differentiable rendering in gradtape ops is made by the primitive layer
  (:meth:`gradtape._src.primitive.Primitive.tensor_vjp`).

"0 times anything is 0": when a primitive is declared ``safe``, the product ``gy * d`` is
taken as 0 wherever ``gy`` is 0 even if ``d`` is infinite, so a zero upstream gradient never
becomes NaN (see ``where`` in the API reference).
"""

from __future__ import annotations

import ast
import builtins
import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import ExpressionError

# The builtins that generated derivative code runs with: none of Python's names (the AST it
# comes from is whitelisted) but ``__import__``. A device library's ufunc is compiled code with
# no frame of its own and may import a module on a call (CuPy's do, for their kernel cache);
# CPython's ``PyImport_Import`` looks ``__import__`` up in the calling frame's builtins, so
# without it every such call from generated code raises ``KeyError: '__import__'``.
GENERATED_BUILTINS: dict[str, Any] = {"__import__": builtins.__import__}

__all__ = ["Expr", "parse", "FUNCTIONS", "CONSTANTS", "ExpressionError", "vjp_function", "is_select",
           "plain_number"]



# name -> number of arguments. Every renderer must define each of these.
FUNCTIONS: dict[str, int] = {
    "exp": 1, "log": 1, "log1p": 1, "expm1": 1, "sqrt": 1, "rsqrt": 1, "sin": 1, "cos": 1,
    "tan": 1, "tanh": 1, "sinh": 1, "cosh": 1, "arcsin": 1, "arccos": 1, "arctan": 1,
    "erf": 1, "erfc": 1, "abs": 1, "sign": 1, "sigmoid": 1, "square": 1, "where": 3,
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
    return Expr(source, tree, tuple(sorted(names)), plain_number(tree.body))


def is_select(node: ast.AST) -> bool:
    """Whether a derivative (sub)expression is a ``where(c, a, b)`` call: its VJP selects
    (``gy`` goes into the branches, see :func:`vjp_function`)."""
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "where"


def plain_number(node: ast.AST) -> float | None:
    """The value of a plain number (``1``, ``-1``), else None."""
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return float(node.value)
    if (isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub)
            and isinstance(node.operand, ast.Constant) and isinstance(node.operand.value, (int, float))):
        return -float(node.operand.value)
    return None


def _finite_everywhere(node: ast.AST) -> bool:
    """Whether derivative ``node`` is a comparison (or a boolean combination of them): 0 or 1
    for every input, so ``gy * d`` is never ``0 * inf``."""
    if isinstance(node, ast.BoolOp):
        return all(isinstance(v, ast.Compare) for v in node.values)
    return isinstance(node, ast.Compare)


#: Operator -> ufunc name, for renderings that call ufuncs instead of operators (see
#: :func:`vjp_function`).
_UFUNC_OF: dict[type, str] = {
    ast.Add: "add", ast.Sub: "subtract", ast.Mult: "multiply", ast.Div: "true_divide",
    ast.Pow: "power", ast.BitAnd: "bitwise_and", ast.BitOr: "bitwise_or",
    ast.USub: "negative", ast.UAdd: "positive", ast.Invert: "invert",
    ast.Lt: "less", ast.LtE: "less_equal", ast.Gt: "greater", ast.GtE: "greater_equal",
    ast.Eq: "equal", ast.NotEq: "not_equal",
}
UFUNC_NAMES = tuple(f"_uf_{n}" for n in sorted(set(_UFUNC_OF.values())))


class _ToUfuncs(ast.NodeTransformer):
    """Operators on array values become ufunc calls (``_uf_multiply(a, b)``); operators on
    Python numbers alone (literals, the ``scalars`` names: a primitive's parameters, ``pi``)
    stay Python arithmetic (a NumPy scalar would not be weakly typed), and ``**`` with such an
    exponent stays an operator (NumPy computes ``x ** 2`` as ``square(x)``, ``x ** 0.5`` as
    ``sqrt(x)``: other last bits than ``power``)."""

    def __init__(self, scalars: tuple[str, ...]) -> None:
        self.scalars = frozenset(scalars) | frozenset(CONSTANTS)

    def _constant(self, node: ast.AST) -> bool:
        return not any(isinstance(n, ast.Call) or isinstance(n, ast.Name) and n.id not in self.scalars
                       for n in ast.walk(node))

    def visit_BinOp(self, node: ast.BinOp) -> ast.AST:
        self.generic_visit(node)
        if self._constant(node.left) and self._constant(node.right) or (
                isinstance(node.op, ast.Pow) and self._constant(node.right)):
            return node
        return _call(_UFUNC_OF[type(node.op)], [node.left, node.right])

    def visit_UnaryOp(self, node: ast.UnaryOp) -> ast.AST:
        self.generic_visit(node)
        return node if self._constant(node.operand) else _call(_UFUNC_OF[type(node.op)], [node.operand])

    def visit_Compare(self, node: ast.Compare) -> ast.AST:
        self.generic_visit(node)
        if self._constant(node):
            return node
        return _call(_UFUNC_OF[type(node.ops[0])], [node.left, node.comparators[0]])


def _call(name: str, args: list[ast.expr]) -> ast.Call:
    return ast.Call(func=ast.Name(id=f"_uf_{name}", ctx=ast.Load()), args=args, keywords=[])


def vjp_function(expr: Expr, arg_names: tuple[str, ...], safe: bool, ns: dict[str, Any],
                 ufuncs: bool = False, scalars: tuple[str, ...] = ()) -> Callable:
    """``lambda gy, *arg_names: gy * (expr)`` evaluated in namespace ``ns`` (a rendering's
    functions; ``ns["_safe"]`` its safe product when ``safe``): the one place that turns a
    derivative into a VJP, for every rendering that runs Python (arrays, gradtape ops).

    Example:
        >>> f = vjp_function(parse("2 * x", ("x", "y")), ("x", "y"), False, {})
        >>> f(3.0, 5.0, None)
        30.0
    """
    tree = _ToUfuncs(scalars).visit(copy.deepcopy(expr.tree)) if ufuncs else expr.tree
    tree = ast.fix_missing_locations(tree)

    def product(node: ast.expr) -> str:
        """``gy`` times the derivative ``node``; a ``where`` selects: ``gy`` goes into its
        branches, so the branch not taken gives exactly 0 (also for an upstream gradient that
        is NaN or inf there: ``0 * nan`` would be NaN), as PyTorch's, TF's and JAX's selects."""
        if is_select(node):
            cond, a, b = node.args  # type: ignore[attr-defined]
            return f"where(({ast.unparse(cond)}), {product(a)}, {product(b)})"
        value = plain_number(node)
        if value == 0.0 and node is not tree.body:
            return "0"
        if value == 1.0:
            return "gy"
        if value == -1.0:
            return "-gy"
        body = ast.unparse(node)
        if safe and not _finite_everywhere(node):
            # (a derivative that is a comparison, 0 or 1, is finite: 0 * it is 0, nothing to guard)
            return f"_safe(gy, ({body}))"
        return f"_uf_multiply(gy, ({body}))" if ufuncs else f"gy * ({body})"

    code = product(tree.body)
    ns.setdefault("__builtins__", GENERATED_BUILTINS)
    ns.update(CONSTANTS)
    fn: Callable = eval(f"lambda gy, {', '.join(arg_names)}: {code}", ns)  # noqa: S307 - whitelisted AST
    return fn
