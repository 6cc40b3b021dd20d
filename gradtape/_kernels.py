"""Derivative expressions as data: parse once, render several ways.

Each elementwise primitive declares its local derivatives as strings in a small language
shared by Python and CUDA C: numbers, the primitive's input names (``x`` or ``a, b``), its
output ``y``, its scalar parameters, ``+ - * / **``, comparisons, ``&``, ``|``, ``~``, and
the calls in :data:`FUNCTIONS` (``where(c, a, b)`` included). A string is parsed with
:mod:`ast` against that whitelist and then rendered:

* :func:`array_vjp` - a Python function on backend arrays computing ``gy * d``, the unfused
  first-order route;
* :func:`tensor_vjp` - the same expression evaluated with gradtape ops, used whenever the
  backward pass is itself recorded (higher order) so that it stays differentiable;
* :func:`backward_graph` - the backward of one record or of a fused run of them as a DAG,
  rendered by :class:`NumpyProgram` (straight-line ufunc calls with ``out=`` into reused
  scratch buffers, run block by block by :func:`run_numpy`) and by :func:`render_cuda` (the
  body of a CuPy ``ElementwiseKernel`` doing ``gx += gy * d`` in place, built and cached by
  :func:`cupy_kernel`). :mod:`gradtape._fusion` decides what runs fused.

"0 times anything is 0": when a primitive is declared ``safe``, the product ``gy * d`` is
taken as 0 wherever ``gy`` is 0 even if ``d`` is infinite, so a zero upstream gradient never
becomes NaN (API.md, ``where``).
"""

from __future__ import annotations

import ast
import contextvars
import math
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Expr", "parse", "FUNCTIONS", "array_vjp", "tensor_vjp", "ExpressionError", "Graph",
           "backward_graph", "NumpyProgram", "numpy_program", "run_numpy", "CudaKernel",
           "render_cuda", "cupy_kernel", "kernels_dir", "cuda_preamble"]


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


# --------------------------------------------------------------------------- backward graphs
# The backward of one elementwise record, or of a fused run of them, as a small DAG shared by
# the renderers below: the NumPy block program (CPU) and the CUDA ElementwiseKernel body.
# Nodes are hash-consed tuples, so repeated subexpressions (gelu_tanh's tanh) are computed
# once. Operands: ("leaf", k) an array (leaf 0 is the upstream gradient gy), ("param", k) a
# scalar parameter, ("const", v) a number; the rest are (op, *node ids).
_BIN = {ast.Add: "add", ast.Sub: "sub", ast.Mult: "mul", ast.Div: "div", ast.Pow: "pow",
        ast.BitAnd: "and", ast.BitOr: "or"}
_CMP = {ast.Lt: "lt", ast.LtE: "le", ast.Gt: "gt", ast.GtE: "ge", ast.Eq: "eq", ast.NotEq: "ne"}
_SIGN_OPS = frozenset(("neg", "mul", "add", "sub"))
_BOOL_OPS = frozenset(("lt", "le", "gt", "ge", "eq", "ne", "and", "or", "not"))
_FOLD = {"add": lambda a, b: a + b, "sub": lambda a, b: a - b, "mul": lambda a, b: a * b,
         "neg": lambda a: -a}


class Graph:
    """A backward DAG: ``outputs[k]`` is the node holding the gradient of output ``k``.

    Attributes:
        nodes: the node tuples; a node's id is its index.
        kinds: ``"f"`` (floating) or ``"b"`` (bool) per node.
        leaf_kinds: kind of each array leaf (leaf 0 is ``gy``).
        n_params: number of scalar parameters.
        outputs: root node per output gradient.
    """

    __slots__ = ("nodes", "kinds", "index", "leaf_kinds", "n_params", "outputs")

    def __init__(self, leaf_kinds: tuple[str, ...], n_params: int) -> None:
        self.nodes: list[tuple] = []
        self.kinds: list[str] = []
        self.index: dict[tuple, int] = {}
        self.leaf_kinds = leaf_kinds
        self.n_params = n_params
        self.outputs: list[int] = []

    def add(self, node: tuple) -> int:
        i = self.index.get(node)
        if i is not None:
            return i
        op = node[0]
        if op in _SIGN_OPS:  # move negations outward, into a subtraction: one pass fewer
            rewritten = self._sign_rewrite(op, node[1:])
            if rewritten is not None:
                return rewritten
        if op == "leaf":
            kind = self.leaf_kinds[node[1]]
        elif op in _BOOL_OPS:
            kind = "b"
        else:
            kind = "f"
        if op in _FOLD and all(self.nodes[a][0] == "const" for a in node[1:]):
            return self.const(_FOLD[op](*(self.nodes[a][1] for a in node[1:])))
        i = len(self.nodes)
        self.nodes.append(node)
        self.kinds.append(kind)
        self.index[node] = i
        return i

    def const(self, v: float) -> int:
        return self.add(("const", float(v)))

    def _neg_arg(self, i: int) -> int | None:
        node = self.nodes[i]
        return node[1] if node[0] == "neg" else None

    def _sign_rewrite(self, op: str, args: tuple) -> int | None:
        """Exact IEEE identities: a*(-b) = -(a*b), a+(-b) = a-b, a-(-b) = a+b, -(-a) = a."""
        if op == "neg":
            inner = self._neg_arg(args[0])
            return inner
        a, b = args
        na, nb = self._neg_arg(a), self._neg_arg(b)
        if na is None and nb is None:
            return None
        if op == "mul":
            if na is not None and nb is not None:
                return self.add(("mul", na, nb))
            prod = self.add(("mul", a if na is None else na, b if nb is None else nb))
            return self.add(("neg", prod))
        if op == "add":
            if nb is not None:
                return self.add(("sub", a, nb))
            return self.add(("sub", b, na))
        if nb is not None:  # sub
            return self.add(("add", a, nb))
        return None

    def num(self, i: int) -> int:
        """``i`` as a floating operand (bools cast), for arithmetic other than ``*``."""
        return self.add(("float", i)) if self.kinds[i] == "b" else i

    def lower(self, expr: Expr, env: dict[str, int]) -> int:
        """Add the nodes of ``expr``; ``env`` maps its names to node ids."""
        return self._lower(expr.tree.body, env)

    def _lower(self, node: ast.AST, env: dict[str, int]) -> int:
        if isinstance(node, ast.Constant):
            return self.const(node.value)
        if isinstance(node, ast.Name):
            return self.const(CONSTANTS[node.id]) if node.id in CONSTANTS else env[node.id]
        if isinstance(node, ast.BinOp):
            a, b = self._lower(node.left, env), self._lower(node.right, env)
            op = _BIN[type(node.op)]
            if op == "pow" and self.nodes[b] == ("const", 2.0):
                return self.add(("square", self.num(a)))
            if op in ("and", "or"):
                return self.add((op, a, b))
            if op == "mul":
                return self.add(("mul", a, b))
            return self.add((op, self.num(a), self.num(b)))
        if isinstance(node, ast.UnaryOp):
            a = self._lower(node.operand, env)
            if isinstance(node.op, ast.UAdd):
                return a
            if isinstance(node.op, ast.USub):
                return self.add(("neg", self.num(a)))
            return self.add(("not", a))
        if isinstance(node, ast.Compare):
            a, b = self._lower(node.left, env), self._lower(node.comparators[0], env)
            return self.add((_CMP[type(node.ops[0])], self.num(a), self.num(b)))
        assert isinstance(node, ast.Call)
        args = [self._lower(a, env) for a in node.args]
        if node.func.id == "where":
            return self.add(("where", args[0], self.num(args[1]), self.num(args[2])))
        return self.add((node.func.id, *(self.num(a) for a in args)))

    def contribution(self, gy: int, expr: Expr, env: dict[str, int], safe: bool) -> int:
        """The node for ``gy * d`` (0 where gy is 0 when ``safe``)."""
        if expr.constant == 1.0:
            return gy
        if expr.constant == -1.0:
            return self.add(("neg", gy))
        prod = self.add(("mul", gy, self.lower(expr, env)))
        if not safe:
            return prod
        zero = self.const(0.0)
        return self.add(("where", self.add(("eq", gy, zero)), zero, prod))


def backward_graph(members: list[tuple], leaf_kinds: tuple[str, ...], n_params: int,
                   n_outputs: int) -> Graph:
    """Build the backward of a run of elementwise records.

    ``members`` in execution order (the last one produces the run's output), each
    ``(prim, value_leaves, y_leaf, param_slots, targets)``: the leaf index of each input's
    saved value (or None), of the output's, the parameter slot of each of ``prim.param_names``,
    and where each input's gradient goes: None, ``("m", j)`` (member ``j``'s output, inside the
    run) or ``("o", k)`` (output ``k``).

    Example:
        >>> from gradtape.ops.elementwise import P_TANH
        >>> g = backward_graph([(P_TANH, (None,), 1, (), (("o", 0),))], ("f", "f"), 0, 1)
        >>> len(g.outputs)
        1
    """
    g = Graph(leaf_kinds, n_params)
    grad: list[int | None] = [None] * len(members)
    grad[-1] = g.add(("leaf", 0))
    outs: list[int | None] = [None] * n_outputs
    for j in range(len(members) - 1, -1, -1):
        prim, values, y_leaf, param_slots, targets = members[j]
        gy = grad[j]
        if gy is None:
            continue
        env: dict[str, int] = {}
        for name, leaf in zip(prim.arg_names, values):
            if leaf is not None:
                env[name] = g.add(("leaf", leaf))
        if y_leaf is not None:
            env["y"] = g.add(("leaf", y_leaf))
        for name, slot in zip(prim.param_names, param_slots):
            env[name] = g.add(("param", slot))
        for i, target in enumerate(targets):
            if target is None:
                continue
            c = g.contribution(gy, prim.derivatives[i], env, prim.safe)
            where, k = target
            acc = grad if where == "m" else outs
            acc[k] = c if acc[k] is None else g.add(("add", acc[k], c))
    g.outputs = [g.const(0.0) if o is None else o for o in outs]
    return g


def _schedule(graph: Graph) -> tuple[list[int], dict[int, int]]:
    """Post-order of the computed (non-operand) nodes the outputs need, and how many
    instructions read each node."""
    order: list[int] = []
    seen: set[int] = set()
    uses: dict[int, int] = {}
    for root in graph.outputs:
        stack = [(root, False)]
        while stack:
            n, done = stack.pop()
            if done:
                order.append(n)
                continue
            if n in seen:
                continue
            seen.add(n)
            node = graph.nodes[n]
            if node[0] in ("leaf", "param", "const"):
                continue
            stack.append((n, True))
            for a in reversed(node[1:]):
                uses[a] = uses.get(a, 0) + 1
                stack.append((a, False))
    return order, uses


def used_operands(graph: Graph) -> tuple[list[int], list[int]]:
    """The leaf and parameter indices the outputs actually read, sorted."""
    leaves: set[int] = set()
    params: set[int] = set()
    stack = list(graph.outputs)
    seen: set[int] = set()
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        node = graph.nodes[n]
        if node[0] == "leaf":
            leaves.add(node[1])
        elif node[0] == "param":
            params.add(node[1])
        elif node[0] != "const":
            stack.extend(node[1:])
    return sorted(leaves), sorted(params)


def alias_outputs(graph: Graph, acc: tuple[bool, ...]) -> tuple[int | None, ...]:
    """Per output: the leaf it equals when it is written (not accumulated) and is a plain
    leaf, so the caller can hand that array over instead of copying it; else None."""
    res = []
    for root, a in zip(graph.outputs, acc):
        node = graph.nodes[root]
        res.append(node[1] if (node[0] == "leaf" and not a) else None)
    return tuple(res)


# --------------------------------------------------------------------------- CPU rendering
BLOCK = 1 << 16  # elements per block: a few scratch buffers stay in L2
_NP_UFUNC = {
    "add": "add", "sub": "subtract", "mul": "multiply", "div": "true_divide", "pow": "power",
    "neg": "negative", "lt": "less", "le": "less_equal", "gt": "greater", "ge": "greater_equal",
    "eq": "equal", "ne": "not_equal", "and": "logical_and", "or": "logical_or",
    "not": "logical_not", "exp": "exp", "log": "log", "log1p": "log1p", "expm1": "expm1",
    "sqrt": "sqrt", "sin": "sin", "cos": "cos", "tan": "tan", "tanh": "tanh", "sinh": "sinh",
    "cosh": "cosh", "arcsin": "arcsin", "arccos": "arccos", "arctan": "arctan",
    "abs": "absolute", "sign": "sign", "square": "square",
}


class NumpyProgram:
    """A backward graph lowered to straight-line NumPy ufunc calls with ``out=``.

    ``fn(*leaves, *params, *outputs, *float_scratch, *bool_scratch)`` runs one block; the
    scratch buffers are reused between instructions (and blocks). Outputs marked in ``acc``
    are accumulated into (``o += ...``), the others written. ``inplace[k]``, when given, is
    the leaf whose array output ``k`` also is (an update in place, e.g. an optimizer step):
    the program never overwrites such a leaf before its last read.

    Attributes:
        source: the generated Python text (for debugging).
        n_float / n_bool: scratch buffers needed.
        leaves / params: the leaf and parameter indices ``fn`` takes, in order.
        outputs: indices of the outputs ``fn`` writes (aliased outputs are left out).
    """

    __slots__ = ("fn", "source", "n_float", "n_bool", "leaves", "params", "outputs", "alias")

    def __init__(self, graph: Graph, acc: tuple[bool, ...], dtype: Any = None,
                 inplace: tuple[int | None, ...] | None = None) -> None:
        from ._backend import NUMPY

        order, uses = _schedule(graph)
        self.alias = alias_outputs(graph, acc)
        self.leaves, self.params = used_operands(graph)
        self.outputs = [k for k, a in enumerate(self.alias) if a is None]
        remaining = dict(uses)
        # an output root read by nothing else is computed straight into its output buffer
        direct: dict[int, int] = {}
        if inplace is None:
            for k in self.outputs:
                root = graph.outputs[k]
                if not acc[k] and uses.get(root, 0) == 0 and root not in direct \
                        and graph.nodes[root][0] not in ("leaf", "param", "const"):
                    direct[root] = k
        else:
            direct = _inplace_direct(graph, order, uses, acc, self.outputs, inplace)
        for k in self.outputs:  # a root copied or added at the end must stay live until then
            root = graph.outputs[k]
            if direct.get(root) != k:
                remaining[root] = remaining.get(root, 0) + 1
        where: dict[int, str] = {}  # node -> the name holding its value
        consts: dict[float, str] = {}  # typed 0-d arrays: a ufunc converts a Python float slower
        free: dict[str, list[str]] = {"f": [], "b": []}
        count = {"f": 0, "b": 0}
        lines: list[str] = []

        def operand(n: int) -> str:
            node = graph.nodes[n]
            if node[0] == "leaf":
                return f"a{node[1]}"
            if node[0] == "param":
                return f"p{node[1]}"
            if node[0] == "const":
                if dtype is None:
                    return repr(node[1])
                name = consts.get(node[1])
                if name is None:
                    name = consts[node[1]] = f"_k{len(consts)}"
                return name
            return where[n]

        def alloc(kind: str) -> str:
            if free[kind]:
                return free[kind].pop()
            count[kind] += 1
            return f"{'r' if kind == 'f' else 'b'}{count[kind] - 1}"

        for n in order:
            node = graph.nodes[n]
            op, args = node[0], node[1:]
            ins = [operand(a) for a in args]
            dying = []
            for a in args:
                remaining[a] -= 1
                if remaining[a] == 0 and a in where and where[a][0] in "rb":
                    dying.append(a)
            kind = graph.kinds[n]
            if n in direct:
                dest = f"o{direct[n]}"
            elif op == "where":  # only b's buffer may be reused: a and c are read last
                b = args[2]
                dest = where[b] if (b in dying and graph.kinds[b] == kind) else alloc(kind)
            else:
                reuse = [a for a in dying if graph.kinds[a] == kind]
                dest = where[reuse[0]] if reuse else alloc(kind)
            for a in dying:
                if where[a] != dest:
                    free[graph.kinds[a]].append(where[a])
            where[n] = dest
            lines.extend(_numpy_lines(op, ins, dest))
        for k in self.outputs:
            root = graph.outputs[k]
            if root in direct and direct[root] == k:
                continue
            src = operand(root)
            lines.append(f"_add(o{k}, {src}, o{k})" if acc[k] else f"_copyto(o{k}, {src})")
        self.n_float, self.n_bool = count["f"], count["b"]
        names = ([f"a{i}" for i in self.leaves] + [f"p{i}" for i in self.params]
                 + [f"o{k}" for k in self.outputs] + [f"r{i}" for i in range(self.n_float)]
                 + [f"b{i}" for i in range(self.n_bool)])
        body = "\n".join(f"    {ln}" for ln in lines) or "    pass"
        self.source = f"def _block({', '.join(names)}):\n{body}\n"
        ns: dict[str, Any] = {f"_{v}": getattr(np, v) for v in set(_NP_UFUNC.values())}
        ns.update(_copyto=np.copyto, _erf=NUMPY.erf, _add=np.add, _sqrt=np.sqrt,
                  _true_divide=np.true_divide, _tanh=np.tanh, _multiply=np.multiply)
        ns.update({name: np.array(v, dtype) for v, name in consts.items()})
        ns.update(_one=np.array(1.0, dtype) if dtype is not None else 1.0,
                  _half=np.array(0.5, dtype) if dtype is not None else 0.5)
        exec(compile(self.source, "<gradtape backward>", "exec"), ns)  # noqa: S102 - generated
        self.fn = ns["_block"]


def _inplace_direct(graph: Graph, order: list[int], uses: dict[int, int], acc: tuple[bool, ...],
                    outputs: list[int], inplace: tuple[int | None, ...]) -> dict[int, int]:
    """Which output roots :class:`NumpyProgram` computes straight into their output buffer
    when output ``k``'s buffer is also leaf ``inplace[k]`` (an update in place).

    Such a root is written early (later instructions then read the output buffer) only when
    no instruction after it reads that leaf and its own multi-line rendering cannot read the
    leaf after writing; otherwise it goes to scratch and is copied at the end. Outputs with no
    leaf of their own keep the usual rule (written directly when nothing else reads them).
    """
    pos = {n: i for i, n in enumerate(order)}
    last_read: dict[int, int] = {}  # leaf index -> position of the last instruction reading it
    for n in order:
        for a in graph.nodes[n][1:]:
            if graph.nodes[a][0] == "leaf":
                last_read[graph.nodes[a][1]] = pos[n]
    for k in outputs:  # an output copied from a leaf at the end reads it after everything
        node = graph.nodes[graph.outputs[k]]
        if node[0] == "leaf":
            last_read[node[1]] = len(order)
    direct: dict[int, int] = {}
    for k in outputs:
        root = graph.outputs[k]
        node = graph.nodes[root]
        if acc[k] or root in direct or node[0] in ("leaf", "param", "const"):
            continue
        leaf = inplace[k]
        if leaf is None:
            if uses.get(root, 0) == 0:
                direct[root] = k
            continue
        reads_leaf = any(graph.nodes[a] == ("leaf", leaf) for a in node[1:])
        if last_read.get(leaf, -1) > pos[root] or (reads_leaf and node[0] in ("where", "erf")):
            continue  # the leaf is still needed after the write: scratch, copied at the end
        direct[root] = k
    return direct


def _numpy_lines(op: str, ins: list[str], dest: str) -> list[str]:
    if op == "where":
        c, a, b = ins
        pre = [] if b == dest else [f"_copyto({dest}, {b})"]
        return [*pre, f"_copyto({dest}, {a}, where={c})"]
    if op == "float":
        return [f"_copyto({dest}, {ins[0]})"]
    # ufuncs take ``out`` positionally: ~10% cheaper per call than the keyword on small blocks
    if op == "rsqrt":
        return [f"_sqrt({ins[0]}, {dest})", f"_true_divide(_one, {dest}, {dest})"]
    if op == "sigmoid":  # overflow-free logistic: (tanh(v / 2) + 1) / 2
        return [f"_multiply({ins[0]}, _half, {dest})", f"_tanh({dest}, {dest})",
                f"_multiply({dest}, _half, {dest})", f"_add({dest}, _half, {dest})"]
    if op == "erf":  # a Python function on NumPy (Cody's rational approximations)
        return [f"_erf({ins[0]}, out={dest})"]
    return [f"_{_NP_UFUNC[op]}({', '.join(ins)}, {dest})"]


_numpy_programs: dict[tuple, NumpyProgram] = {}


def numpy_program(key: tuple, build: Callable[[], Graph], acc: tuple[bool, ...],
                  dtype: Any = None, inplace: tuple[int | None, ...] | None = None) -> NumpyProgram:
    """The cached :class:`NumpyProgram` for ``key`` (``build()`` makes its graph on a miss);
    ``dtype`` types its constants (part of ``key``). ``inplace[k]``: the leaf whose buffer
    output ``k`` also is (updates in place), or None."""
    k = (key, acc) if inplace is None else (key, acc, inplace)
    prog = _numpy_programs.get(k)
    if prog is None:
        prog = _numpy_programs[k] = NumpyProgram(build(), acc, dtype, inplace)
    return prog


def _flat_view(a: Any) -> Any:
    """``a`` as a 1-D view, or None when that would need a copy."""
    if a.ndim == 1:
        return a
    try:
        return np.reshape(a, -1, copy=False)
    except (ValueError, TypeError):
        return None


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


# Blocks of one large run are split over this many threads (ufuncs release the GIL). On the
# 2-vCPU machine this was tuned on: sin*x over 2^22 float32 in 2^16 blocks, 8.5 ms on one
# thread, 4.6 ms on two with the machine idle, 8.7 ms when another process held a core.
THREADS = max(1, min(_usable_cpus(), 8))
_pool: Any = None
_pool_lock = threading.Lock()


def _thread_pool() -> Any:
    global _pool
    with _pool_lock:
        if _pool is None:
            from concurrent.futures import ThreadPoolExecutor

            _pool = ThreadPoolExecutor(max_workers=max(1, THREADS - 1),
                                       thread_name_prefix="gradtape-blocks")
        return _pool


def run_numpy(prog: NumpyProgram, leaves: list, params: list, outs: list, shape: tuple,
              dtype: Any) -> None:
    """Run ``prog`` over arrays of the full ``shape`` (``leaves`` may broadcast to it;
    ``outs`` have exactly that shape), block by block when large.

    Blocks are flat when every full-shape operand has a 1-D view and the others are single
    elements, else slices of the leading axis. Contiguous ranges of blocks run on up to
    :data:`THREADS` threads, each with its own scratch buffers.
    """
    fn = prog.fn
    ls = [leaves[i] for i in prog.leaves]
    os_ = [outs[k] for k in prog.outputs]
    ps = [params[i] for i in prog.params] if prog.params else []
    if not shape or math.prod(shape) <= BLOCK:  # one call, minimal overhead
        empty = np.empty
        for _ in range(prog.n_float):
            os_.append(empty(shape, dtype))
        for _ in range(prog.n_bool):
            os_.append(empty(shape, np.bool_))
        fn(*ls, *ps, *os_)
        return
    n = math.prod(shape)
    flat = True
    fl: list = []
    for a in (*ls, *os_):
        if a.shape == shape and not any(a.strides):  # a broadcast scalar (sum's gradient)
            fl.append((np.asarray(a[(0,) * a.ndim]), False))  # read as a scalar: SIMD loops
        elif a.shape == shape:
            v = _flat_view(a)
            if v is None:
                flat = False
                break
            fl.append((v, True))
        elif a.size == 1:
            fl.append((a.reshape(()), False))
        else:
            flat = False
            break
    if flat:
        block_shape: tuple = (BLOCK,)
        length, step = n, BLOCK
    else:
        nd = len(shape)
        fl = []
        for a in (*ls, *os_):
            a = a.reshape((1,) * (nd - a.ndim) + a.shape) if a.ndim < nd else a
            fl.append((a, a.shape[0] == shape[0] and shape[0] != 1))
        inner = math.prod(shape[1:])
        step = max(1, BLOCK // max(inner, 1))
        length = shape[0]
        block_shape = (step, *shape[1:])
        if step >= length:
            scratch = [np.empty(shape, dtype) for _ in range(prog.n_float)]
            scratch += [np.empty(shape, np.bool_) for _ in range(prog.n_bool)]
            fn(*ls, *ps, *os_, *scratch)
            return
    n_ls = len(ls)

    def work(starts: range) -> None:
        scratch = [np.empty(block_shape, dtype) for _ in range(prog.n_float)]
        scratch += [np.empty(block_shape, np.bool_) for _ in range(prog.n_bool)]
        for s in starts:
            e = min(s + step, length)
            sc = scratch if e - s == step else [b[:e - s] for b in scratch]
            arrays = [a[s:e] if sliced else a for a, sliced in fl]
            fn(*arrays[:n_ls], *ps, *arrays[n_ls:], *sc)

    n_blocks = -(-length // step)
    threads = min(THREADS, n_blocks // 2)
    if threads < 2:
        work(range(0, length, step))
        return
    pool = _thread_pool()
    per = -(-n_blocks // threads) * step
    # each worker runs in a copy of the caller's context: np.errstate (a context variable)
    # set around the backward pass holds in the pool's threads too
    futures = [pool.submit(contextvars.copy_context().run, work, range(lo, min(lo + per, length), step))
               for lo in range(per, length, per)]
    try:
        work(range(0, min(per, length), step))
    finally:
        for f in futures:
            f.result()


# --------------------------------------------------------------------------- CUDA rendering
# Storage type (CuPy's C name) and compute type per floating dtype: float16 computes in float.
CUDA_TYPES = {"float16": ("float16", "float"), "float32": ("float", "float"),
              "float64": ("double", "double"), "bool": ("bool", "bool")}
_C_BINARY = {"add": "+", "sub": "-", "mul": "*", "div": "/", "lt": "<", "le": "<=", "gt": ">",
             "ge": ">=", "eq": "==", "ne": "!=", "and": "&&", "or": "||"}


@dataclass(frozen=True)
class CudaKernel:
    """The parts of a CuPy ``ElementwiseKernel``: ``in_params``/``out_params`` as
    ``(dtype name, parameter name)`` pairs, the loop ``body``, and a unique ``name``.

    Outputs are bound by reference, so ``o0 = ...`` writes the buffer passed in and
    ``o0 = (float)o0 + ...`` accumulates into it in one pass.
    """

    name: str
    in_params: tuple[tuple[str, str], ...]
    out_params: tuple[tuple[str, str], ...]
    body: str
    alias: tuple[int | None, ...]
    leaves: tuple[int, ...]
    params: tuple[int, ...]
    outputs: tuple[int, ...]

    def signature(self) -> tuple[str, str]:
        """``(in_params, out_params)`` strings in CuPy's syntax."""
        return (", ".join(f"{t} {n}" for t, n in self.in_params),
                ", ".join(f"{t} {n}" for t, n in self.out_params))


def _c_literal(v: float, ctype: str) -> str:
    if v != v or v in (float("inf"), float("-inf")):
        raise ExpressionError(f"constant {v} cannot be rendered for CUDA")
    text = repr(float(v))
    return f"{text}f" if ctype == "float" else text


def render_cuda(graph: Graph, leaf_dtypes: tuple[str, ...], dtype: str,
                acc: tuple[bool, ...], inplace: tuple[int | None, ...] | None = None) -> CudaKernel:
    """Render ``graph`` as the body of an ElementwiseKernel whose outputs have ``dtype``
    (``"float16"``, ``"float32"``, ``"float64"``); ``leaf_dtypes`` names each leaf's dtype.
    Outputs marked in ``acc`` accumulate (``o += gy * d``), the others are written (no
    zero-fill pass). Every float literal is typed, so float16/float32 kernels use no double
    precision; float16 loads are widened to float and the result narrowed once at the store.

    ``inplace[k]`` (optional): the leaf that output ``k`` updates in place (an optimizer
    step). That leaf is then no input parameter: the body reads ``o{k}`` (a reference, read
    before the store at the end), so one array is never passed as both input and output.
    Such outputs must be written (not accumulated) and computed (not a plain leaf).

    Example:
        >>> from gradtape.ops.elementwise import P_TANH
        >>> g = backward_graph([(P_TANH, (None,), 1, (), (("o", 0),))], ("f", "f"), 0, 1)
        >>> k = render_cuda(g, ("float32", "float32"), "float32", (True,))
        >>> "o0 = (float)((float)o0 + " in k.body
        True
    """
    if dtype not in ("float16", "float32", "float64"):
        raise TypeError(f"render_cuda: dtype must be float16, float32 or float64, got {dtype!r}")
    store, ctype = CUDA_TYPES[dtype]
    order, _ = _schedule(graph)
    alias = alias_outputs(graph, acc)
    leaves, params = used_operands(graph)
    outputs = tuple(k for k, a in enumerate(alias) if a is None)
    lines: list[str] = []
    names: dict[int, str] = {}
    read_from: dict[int, int] = {}  # leaf -> the output whose reference it is read from
    if inplace is not None:
        for k, i in enumerate(inplace):
            if i is None:
                continue
            if acc[k] or k not in outputs or leaf_dtypes[i] != dtype:
                raise ValueError(f"render_cuda: output {k} updates leaf {i} in place, so it must "
                                 f"be written, computed and of the leaf's dtype {leaf_dtypes[i]}")
            read_from[i] = k
        leaves = [i for i in leaves if i not in read_from]

    def operand(n: int) -> str:
        node = graph.nodes[n]
        if node[0] == "leaf":
            i = node[1]
            if i in read_from:
                return f"o{read_from[i]}" if dtype != "float16" else f"(({ctype})o{read_from[i]})"
            if leaf_dtypes[i] == "bool":
                return f"a{i}"
            return f"a{i}" if CUDA_TYPES[leaf_dtypes[i]][1] == ctype and leaf_dtypes[i] != "float16" \
                else f"(({ctype})a{i})"
        if node[0] == "param":
            return f"p{node[1]}"
        if node[0] == "const":
            return _c_literal(node[1], ctype)
        return names[n]

    for n in order:
        node = graph.nodes[n]
        op, ins = node[0], [operand(a) for a in node[1:]]
        if op in _C_BINARY:
            expr = f"({ins[0]} {_C_BINARY[op]} {ins[1]})"
        elif op == "neg":
            expr = f"(-{ins[0]})"
        elif op == "not":
            expr = f"(!{ins[0]})"
        elif op == "where":
            expr = f"({ins[0]} ? {ins[1]} : {ins[2]})"
        elif op == "float":
            expr = f"(({ctype}){ins[0]})"
        else:  # pow and the FUNCTIONS vocabulary: device helpers from kernels/preamble.cuh
            expr = f"gt_{op}({', '.join(ins)})"
        t = "bool" if graph.kinds[n] == "b" else ctype
        names[n] = f"t{n}"
        lines.append(f"const {t} t{n} = {expr};")
    for k in outputs:
        v = operand(graph.outputs[k])
        if graph.kinds[graph.outputs[k]] == "b":
            v = f"(({ctype}){v})"
        if acc[k]:
            lines.append(f"o{k} = ({store})(({ctype})o{k} + {v});")
        else:
            lines.append(f"o{k} = ({store})({v});")
    body = "\n".join(lines)
    in_params = tuple((leaf_dtypes[i], f"a{i}") for i in leaves)
    in_params += tuple((dtype if dtype != "float16" else "float32", f"p{i}") for i in params)
    out_params = tuple((dtype, f"o{k}") for k in outputs)
    import hashlib

    digest = hashlib.sha1(repr((in_params, out_params, body)).encode()).hexdigest()[:16]
    return CudaKernel(f"gradtape_bwd_{digest}", in_params, out_params, body, alias,
                      tuple(leaves), tuple(params), outputs)


def kernels_dir() -> str:
    """The folder holding the CUDA sources: ``gradtape/kernels`` in an installed wheel,
    ``kernels/`` beside the package in a source tree."""
    here = os.path.dirname(os.path.abspath(__file__))
    for cand in (os.path.join(here, "kernels"), os.path.join(os.path.dirname(here), "kernels")):
        if os.path.isfile(os.path.join(cand, "preamble.cuh")):
            return cand
    raise FileNotFoundError("gradtape's CUDA sources (preamble.cuh) were not found next to the "
                            f"package ({here}); the installation is incomplete")


_preamble: str | None = None


def cuda_preamble() -> str:
    """The text of ``kernels/preamble.cuh`` (device helpers every generated kernel uses)."""
    global _preamble
    if _preamble is None:
        with open(os.path.join(kernels_dir(), "preamble.cuh"), encoding="utf-8") as f:
            _preamble = f.read()
    return _preamble


_cupy_kernels: dict[tuple, tuple[CudaKernel, Any]] = {}


def cupy_kernel(key: tuple, build: Callable[[], Graph], leaf_dtypes: tuple[str, ...], dtype: str,
                acc: tuple[bool, ...], inplace: tuple[int | None, ...] | None = None
                ) -> tuple[CudaKernel, Any]:
    """The cached ``(CudaKernel, cupy.ElementwiseKernel)`` for ``key`` (needs CuPy);
    ``inplace`` as in :func:`render_cuda`."""
    k = (key, leaf_dtypes, dtype, acc) if inplace is None else (key, leaf_dtypes, dtype, acc, inplace)
    hit = _cupy_kernels.get(k)
    if hit is None:
        from ._backend import cupy_module

        cp = cupy_module()
        if cp is None:
            from ._backend import cupy_unavailable_reason

            raise RuntimeError(f"CUDA kernels need CuPy: {cupy_unavailable_reason()}")
        spec = render_cuda(build(), leaf_dtypes, dtype, acc, inplace)
        ins, outs = spec.signature()
        kernel = cp.ElementwiseKernel(ins, outs, spec.body, spec.name, preamble=cuda_preamble())
        hit = _cupy_kernels[k] = (spec, kernel)
    return hit
