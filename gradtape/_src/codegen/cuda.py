"""CUDA rendering: a backward graph (or an optimizer update) as the body of a CuPy
``ElementwiseKernel``, and the kernel cache. The device helpers every generated kernel uses
are in ``kernels/preamble.cuh`` (shipped inside the wheel as ``gradtape/kernels``).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..backend import cupy_module, cupy_unavailable_reason
from ..errors import ExpressionError
from .graph import Graph, alias_outputs, schedule, used_operands

__all__ = ["CudaKernel", "render_cuda", "cupy_kernel", "kernels_dir", "cuda_preamble", "CUDA_TYPES"]


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
        >>> from gradtape._src.codegen.graph import backward_graph
        >>> from gradtape.ops.elementwise import P_TANH
        >>> g = backward_graph([(P_TANH, (None,), 1, (), (("o", 0),))], ("f", "f"), 0, 1)
        >>> k = render_cuda(g, ("float32", "float32"), "float32", (True,))
        >>> "o0 = (float)((float)o0 + " in k.body
        True
    """
    if dtype not in ("float16", "float32", "float64"):
        raise TypeError(f"render_cuda: dtype must be float16, float32 or float64, got {dtype!r}")
    store, ctype = CUDA_TYPES[dtype]
    order, _ = schedule(graph)
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
    digest = hashlib.sha1(repr((in_params, out_params, body)).encode()).hexdigest()[:16]
    return CudaKernel(f"gradtape_bwd_{digest}", in_params, out_params, body, alias,
                      tuple(leaves), tuple(params), outputs)


def kernels_dir() -> str:
    """The folder holding the CUDA sources: ``gradtape/kernels`` in an installed wheel,
    ``kernels/`` beside the package in a source tree."""
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # gradtape/
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


# Two levels, both for the life of the process: the signature key of a run or update rule ->
# (spec, kernel), and the rendered source (``CudaKernel.name`` is a digest of the parameters and
# body; the preamble is fixed) -> the one ``cupy.ElementwiseKernel`` object for it, so two
# signatures rendering the same text share one kernel and CuPy compiles it (per argument dtypes
# and dimensionality) once per process (later processes read CuPy's on-disk cache).
_cupy_kernels: dict[tuple, tuple[CudaKernel, Any]] = {}
_cupy_by_source: dict[tuple[str, Any], Any] = {}


def cupy_kernel(key: tuple, build: Callable[[], Graph], leaf_dtypes: tuple[str, ...], dtype: str,
                acc: tuple[bool, ...], inplace: tuple[int | None, ...] | None = None,
                xp: Any = None) -> tuple[CudaKernel, Any]:
    """The cached ``(CudaKernel, cupy.ElementwiseKernel)`` for ``key`` (needs CuPy);
    ``inplace`` as in :func:`render_cuda`. ``xp``: the array module of the arguments, whose
    ``ElementwiseKernel`` builds the kernel (None: CuPy; the device-strict test backend passes
    its own, which compiles the same text for the host). A cache hit is two dict lookups: no
    rendering, no compilation, no host synchronisation."""
    k = (key, leaf_dtypes, dtype, acc, inplace, xp)
    hit = _cupy_kernels.get(k)
    if hit is None:
        cp = xp if xp is not None else cupy_module()
        if cp is None:
            raise RuntimeError(f"CUDA kernels need CuPy: {cupy_unavailable_reason()}")
        spec = render_cuda(build(), leaf_dtypes, dtype, acc, inplace)
        kernel = _cupy_by_source.get((spec.name, cp))
        if kernel is None and spec.outputs:  # (no outputs: every one is a leaf as it is, no
            # kernel to build or launch; the caller checks spec.outputs)
            ins, outs = spec.signature()
            kernel = _cupy_by_source[(spec.name, cp)] = cp.ElementwiseKernel(
                ins, outs, spec.body, spec.name, preamble=cuda_preamble())
        hit = _cupy_kernels[k] = (spec, kernel)
    return hit
