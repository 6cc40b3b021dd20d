"""CPU rendering: a backward graph lowered to straight-line NumPy ufunc calls with ``out=``
into a few reused scratch buffers, run block by block (the blocks of a large array are spread
over :mod:`gradtape._src.cpu.pool`'s threads).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from ..backend import NUMPY, erfc_for
from ..cpu import pool
from ..cpu.pool import BLOCK
from ..cpu.select import select2_into, select_into
from .graph import Graph, alias_outputs, schedule, used_operands

__all__ = ["NumpyProgram", "numpy_program", "run_numpy", "BLOCK"]


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

    def __init__(self, graph: Graph, acc: tuple[bool, ...], dtype: np.dtype | None = None,
                 inplace: tuple[int | None, ...] | None = None) -> None:
        order, uses = schedule(graph)
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
            zero_branch = _zero_branch(graph, node) if op == "where" else None
            if n in direct:
                dest = f"o{direct[n]}"
            elif op == "where":  # only b's buffer may be reused: a and c are read last
                b = args[2]
                if b in dying and graph.kinds[b] == kind:
                    # (zeroed in place by a masked copy, one pass: the safe product's
                    # where(gy == 0, 0, prod), whose mask is rarely true)
                    dest, zero_branch = where[b], None
                else:
                    dest = alloc(kind)
            else:
                reuse = [a for a in dying if graph.kinds[a] == kind]
                dest = where[reuse[0]] if reuse else alloc(kind)
            for a in dying:
                if where[a] != dest:
                    free[graph.kinds[a]].append(where[a])
            where[n] = dest
            if zero_branch is not None:  # where(c, x, 0) or where(c, 0, x): from bits
                c, a, b = ins
                keep = zero_branch == 2
                lines.append(f"_select_into({c}, {a if keep else b}, {keep}, {dest})")
            elif op == "where" and kind == "f" and _zero_branch(graph, node) is None:
                # two computed branches (a zero one taken in place above: one masked copy)
                c, a, b = ins
                lines.append(f"_select2_into({c}, {a}, {b}, {dest})")
            else:
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
        # __name__: NumPy's RuntimeWarnings from the program are attributed to this module, so
        # the warnings filter for gradtape's modules (config.QUIET_MODULES) applies to them
        ns: dict[str, Any] = {f"_{v}": getattr(np, v) for v in set(_NP_UFUNC.values())}
        ns["__name__"] = __name__
        ns.update(_copyto=np.copyto, _select_into=select_into, _select2_into=select2_into,
                  _erf=NUMPY.erf, _erfc=erfc_for(np), _add=np.add, _sqrt=np.sqrt, _true_divide=np.true_divide,
                  _logaddexp=np.logaddexp)
        ns.update({name: np.array(v, dtype) for v, name in consts.items()})
        ns.update(_one=np.array(1.0, dtype) if dtype is not None else 1.0,
                  _zero=np.array(0.0, dtype) if dtype is not None else 0.0)
        exec(compile(self.source, "<gradtape fused program>", "exec"), ns)  # noqa: S102 - generated
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
        if last_read.get(leaf, -1) > pos[root] or (reads_leaf and node[0] in ("where", "erf", "erfc")):
            continue  # the leaf is still needed after the write: scratch, copied at the end
        direct[root] = k
    return direct


def _zero_branch(graph: Graph, node: tuple) -> int | None:
    """For a ``where`` node: 2 when its b branch is the constant +0 (``where(c, gy, 0)``: the
    VJP of a derivative ``where(c, 1, 0)``), 1 when its a branch is (``where(c, 0, gy)``, and
    the safe product's ``where(gy == 0, 0, prod)``, which keeps its one masked copy in place
    when ``prod``'s buffer is free), else None. Such selects run by the bits of the other branch
    (:func:`~gradtape._src.cpu.select.select_into`: no branch per element)."""
    for branch in (2, 1):  # (node = ("where", c, a, b))
        n = graph.nodes[node[branch + 1]]
        if n[0] == "const" and n[1] == 0 and math.copysign(1.0, n[1]) > 0:
            return branch
    return None


def _numpy_lines(op: str, ins: list[str], dest: str) -> list[str]:
    if op == "where":
        c, a, b = ins
        pre = [] if b == dest else [f"_copyto({dest}, {b})"]
        return [*pre, f"_copyto({dest}, {a}, where={c})"]
    if op == "float":
        return [f"_copyto({dest}, {ins[0]})"]
    # ufuncs take ``out`` positionally: the keyword form costs more per call on small blocks
    if op == "rsqrt":
        return [f"_sqrt({ins[0]}, {dest})", f"_true_divide(_one, {dest}, {dest})"]
    if op == "sigmoid":  # exp(-log(1 + exp(-v))): no overflow, precise in the tail (arrays.py)
        return [f"_negative({ins[0]}, {dest})", f"_logaddexp(_zero, {dest}, {dest})",
                f"_negative({dest}, {dest})", f"_exp({dest}, {dest})"]
    if op in ("erf", "erfc"):  # Python functions on NumPy (Cody's rational approximations)
        return [f"_{op}({ins[0]}, out={dest})"]
    return [f"_{_NP_UFUNC[op]}({', '.join(ins)}, {dest})"]


_numpy_programs: dict[tuple, NumpyProgram] = {}


def numpy_program(key: tuple, build: Callable[[], Graph], acc: tuple[bool, ...],
                  dtype: np.dtype | None = None, inplace: tuple[int | None, ...] | None = None
                  ) -> NumpyProgram:
    """The cached :class:`NumpyProgram` for ``key`` (``build()`` makes its graph on a miss);
    ``dtype`` types its constants (part of ``key``). ``inplace[k]``: the leaf whose buffer
    output ``k`` also is (updates in place), or None."""
    k = (key, acc) if inplace is None else (key, acc, inplace)
    prog = _numpy_programs.get(k)
    if prog is None:
        prog = _numpy_programs[k] = NumpyProgram(build(), acc, dtype, inplace)
    return prog


def _flat_view(a: np.ndarray) -> np.ndarray | None:
    """``a`` as a 1-D view, or None when that would need a copy."""
    if a.ndim == 1:
        return a
    try:
        return np.reshape(a, -1, copy=False)
    except (ValueError, TypeError):
        return None


def _scratch_like(outs: list[Any], leaves: list[Any]) -> Any:
    """The operand scratch buffers are made like (``*_like``): inside gt.function's trace a
    traced one, so the trace sees the program's calls on its scratch too (a call on plain
    arrays only would be invisible to it); else the first output or leaf."""
    return next((a for a in (*outs, *leaves) if type(a) is not np.ndarray),
                outs[0] if outs else leaves[0])


def run_numpy(prog: NumpyProgram, leaves: list[np.ndarray], params: list[Any],
              outs: list[np.ndarray], shape: tuple[int, ...], dtype: np.dtype) -> None:
    """Run ``prog`` over arrays of the full ``shape`` (``leaves`` may broadcast to it;
    ``outs`` have exactly that shape), block by block when large.

    Blocks are flat when every full-shape operand has a 1-D view and the others are single
    elements, else slices of the leading axis. Contiguous ranges of blocks run on up to
    :data:`~gradtape._src.cpu.pool.THREADS` threads, each with its own scratch buffers.
    """
    fn = prog.fn
    ls = [leaves[i] for i in prog.leaves]
    os_ = [outs[k] for k in prog.outputs]
    ps = [params[i] for i in prog.params] if prog.params else []
    if not shape or math.prod(shape) <= BLOCK:  # one call, minimal overhead
        like = _scratch_like(os_, ls)
        for _ in range(prog.n_float):
            os_.append(np.empty_like(like, dtype, shape=shape))
        for _ in range(prog.n_bool):
            os_.append(np.empty_like(like, np.bool_, shape=shape))
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
    if not flat:
        nd = len(shape)
        fl = []
        for a in (*ls, *os_):
            a = a.reshape((1,) * (nd - a.ndim) + a.shape) if a.ndim < nd else a
            fl.append((a, a.shape[0] == shape[0] and shape[0] != 1))
    inner = 1 if flat else math.prod(shape[1:])  # elements per unit of a block
    length = n if flat else shape[0]
    step = max(1, BLOCK // max(inner, 1))  # elements (flat) or leading-axis rows per block
    threads = min(pool.THREADS, -(-length // step) // pool.BLOCKS_PER_THREAD)
    if threads < 2:  # one thread: blocks whose buffers' slices all stay in cache (pool.block_size)
        itemsize = dtype.itemsize
        n_buffers = sum(sliced for _, sliced in fl) + prog.n_float + -(-prog.n_bool // itemsize)
        step = max(1, pool.block_size(n_buffers, itemsize) // max(inner, 1))
    block_shape: tuple = (step,) if flat else (step, *shape[1:])
    if not flat:
        if step >= length:
            like = _scratch_like(os_, ls)
            scratch = [np.empty_like(like, dtype, shape=shape) for _ in range(prog.n_float)]
            scratch += [np.empty_like(like, np.bool_, shape=shape) for _ in range(prog.n_bool)]
            fn(*ls, *ps, *os_, *scratch)
            return
    n_ls = len(ls)

    like = _scratch_like(os_, ls)

    def work(starts: range) -> None:
        scratch = [np.empty_like(like, dtype, shape=block_shape) for _ in range(prog.n_float)]
        scratch += [np.empty_like(like, np.bool_, shape=block_shape) for _ in range(prog.n_bool)]
        for s in starts:
            e = min(s + step, length)
            sc = scratch if e - s == step else [b[:e - s] for b in scratch]
            arrays = [a[s:e] if sliced else a for a, sliced in fl]
            fn(*arrays[:n_ls], *ps, *arrays[n_ls:], *sc)

    n_blocks = -(-length // step)
    if threads < 2:
        work(range(0, length, step))
        return
    per = -(-n_blocks // threads) * step
    # each worker runs in a copy of the caller's context: np.errstate (a context variable)
    # set around the backward pass holds in the pool's threads too
    futures = [pool.submit(work, range(lo, min(lo + per, length), step), in_context=True)
               for lo in range(per, length, per)]
    try:
        work(range(0, min(per, length), step))
    finally:
        for f in futures:
            f.result()
