"""The backward of one elementwise record, or of a fused run of them, as a small DAG.

Shared by the renderers: the NumPy block program (:mod:`.numpy_program`) and the CUDA
``ElementwiseKernel`` body (:mod:`.cuda`).
"""

from __future__ import annotations

import ast
from collections.abc import Callable

from .expr import CONSTANTS, Expr, is_select, plain_number

__all__ = ["Graph", "backward_graph", "used_operands", "alias_outputs", "schedule"]


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
_FOLD: dict[str, Callable[..., float]] = {
    "add": lambda a, b: a + b, "sub": lambda a, b: a - b, "mul": lambda a, b: a * b,
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
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):  # parse() checked
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
        assert isinstance(node, ast.Call) and isinstance(node.func, ast.Name)  # parse() checked
        args = [self._lower(a, env) for a in node.args]
        if node.func.id == "where":
            return self.add(("where", args[0], self.num(args[1]), self.num(args[2])))
        return self.add((node.func.id, *(self.num(a) for a in args)))

    def contribution(self, gy: int, expr: Expr, env: dict[str, int], safe: bool) -> int:
        """The node for ``gy * d`` (0 where gy is 0 when ``safe``); a ``where`` in ``d``
        selects, ``gy`` going into its branches (:func:`~.expr.vjp_function`'s rule)."""
        return self._product(gy, expr.tree.body, env, safe, True)

    def _product(self, gy: int, node: ast.AST, env: dict[str, int], safe: bool, top: bool) -> int:
        if is_select(node):
            cond, a, b = node.args  # type: ignore[attr-defined]
            return self.add(("where", self._lower(cond, env), self._product(gy, a, env, safe, False),
                             self._product(gy, b, env, safe, False)))
        value = plain_number(node)
        if value == 0.0 and not top:
            return self.const(0.0)
        if value == 1.0:
            return gy
        if value == -1.0:
            return self.add(("neg", gy))
        prod = self.add(("mul", gy, self._lower(node, env)))
        if not safe:
            return prod
        zero = self.const(0.0)
        return self.add(("where", self.add(("eq", gy, zero)), zero, prod))


def backward_graph(members: list[tuple], leaf_kinds: tuple[str, ...], n_params: int,
                   n_outputs: int) -> Graph:
    """Build the backward of a run of elementwise records.

    ``members`` in execution order (the last one produces the run's output), each
    ``(prim, value_leaves, y_leaf, param_slots, targets[, safe])``: the leaf index of each
    input's saved value (or None), of the output's, the parameter slot of each of
    ``prim.param_names``, where each input's gradient goes: None, ``("m", j)`` (member ``j``'s
    output, inside the run) or ``("o", k)`` (output ``k``), and optionally whether this member
    takes the safe product ("0 times anything is 0") even if ``prim.safe`` is False.

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
        prim, values, y_leaf, param_slots, targets = members[j][:5]
        safe = prim.safe or (len(members[j]) > 5 and members[j][5])
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
            c = g.contribution(gy, prim.derivatives[i], env, safe)
            where, k = target
            acc = grad if where == "m" else outs
            acc[k] = c if acc[k] is None else g.add(("add", acc[k], c))
    g.outputs = [g.const(0.0) if o is None else o for o in outs]
    return g


def schedule(graph: Graph) -> tuple[list[int], dict[int, int]]:
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
    return _early_folds(graph, order, uses), uses


def _early_folds(graph: Graph, order: list[int], uses: dict[int, int]) -> list[int]:
    """``order`` with each instruction that ends the life of an operand moved up to just after
    its operands are computed. Values are unchanged (the same nodes, the same operations);
    what changes is how many are alive at once: a gradient accumulated over a run
    (``w``'s in ``tanh(y + w)`` repeated) is summed step by step into one buffer instead of
    every contribution waiting in a buffer of its own for one sum at the end (40 steps: 41
    scratch buffers, 3 after)."""
    nodes = graph.nodes
    computed = set(order)
    readers: dict[int, list[int]] = {}
    for n in order:
        for a in nodes[n][1:]:
            if a in computed:
                readers.setdefault(a, []).append(n)
    left = dict(uses)  # reads of each value still to come
    done: set[int] = set()
    out: list[int] = []

    def ready(n: int) -> bool:
        return all(a in done or a not in computed for a in nodes[n][1:])

    def frees(n: int) -> bool:
        args = nodes[n][1:]
        return any(a in computed and left[a] == args.count(a) for a in args)

    for first in order:
        if first in done:
            continue
        stack = [first]
        while stack:
            n = stack.pop()
            if n in done:
                continue
            done.add(n)
            out.append(n)
            for a in nodes[n][1:]:
                if a in left:
                    left[a] -= 1
            for r in reversed(readers.get(n, ())):
                if r not in done and ready(r) and frees(r):
                    stack.append(r)
    return out


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
