"""Batching rules (the ``batch`` slot vmap calls): every registry primitive's rule against a
loop over the examples, through the extension API.

A rule is ``rule(args, dims, **params) -> (out, out_dim)``: ``args`` hold the batch axis at
``dims[i]`` (None: not batched), ``params`` are one example's. Each case below builds B
per-example inputs, stacks the batched ones along the axis under test (0, a middle one, the
last, and None for some operands, in every combination), calls the rule, moves the output's
batch axis to the front and compares with ``bind(prim, *example_b, **params)`` for each ``b``.
Cases are written at the primitive level (the parameters exactly as the public ops bind them,
plus a few forms only a direct ``bind`` gives: negative axes, ``axis=None``, an int
``pad_width``). Chained cases feed one rule's output, batch axis wherever it landed, to the
next rule, as nested transforms do.
"""

from __future__ import annotations

import importlib
import itertools
import pkgutil
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import gradtape as gt
from gradtape.extend import REGISTRY, Primitive, bind

# Import every gradtape module so that every primitive is registered; the snapshot keeps
# primitives other test files declare for a while (or with no rule on purpose) out.
for _mod in pkgutil.walk_packages(gt.__path__, "gradtape."):
    if not (_mod.name.startswith("gradtape.examples") or _mod.name.endswith("__main__")):
        importlib.import_module(_mod.name)
PRIMS: dict[str, Primitive] = {n: p for n, p in REGISTRY.items()
                               if getattr(p.impl, "__module__", "").startswith("gradtape.")}

B = 3
FLOATS = (np.float32, np.float64)


# --------------------------------------------------------------------------- the check
def _place(d: Any, ndim: int) -> int | None:
    """A batch-axis choice ("0", "mid", "last" or None) for an operand of rank ``ndim``."""
    if d is None:
        return None
    return {"0": 0, "mid": ndim // 2, "last": ndim}[d]


def _tol(dtype: Any) -> dict:
    return {"rtol": 2e-5, "atol": 2e-5} if np.dtype(dtype) == np.float32 else {"rtol": 1e-12,
                                                                                 "atol": 1e-12}


def _stacked(examples: list[list[np.ndarray]], dims: tuple) -> tuple:
    """The rule's arguments: each batched operand stacked along its batch axis, each unbatched
    one example 0's value (the loop then uses it for every example)."""
    return tuple(gt.tensor(examples[0][i]) if d is None
                 else gt.tensor(np.stack([ex[i] for ex in examples], axis=d))
                 for i, d in enumerate(dims))


def _loop(prim: Primitive, examples: list[list[np.ndarray]], dims: tuple,
          params: dict) -> np.ndarray:
    outs = []
    for ex in examples:
        args = [ex[i] if d is not None else examples[0][i] for i, d in enumerate(dims)]
        outs.append(bind(prim, *(gt.tensor(a) for a in args), **params).numpy())
    return np.stack(outs)


def _front(out: Any, out_dim: int) -> np.ndarray:
    assert isinstance(out_dim, int) and 0 <= out_dim < out.ndim, (out_dim, out.shape)
    return np.moveaxis(out.numpy(), out_dim, 0)


def _on_backend(value: Any) -> Any:
    """Index arrays in parameters as arrays of the current backend (as getitem converts them)."""
    if isinstance(value, tuple):
        return tuple(_on_backend(v) for v in value)
    if isinstance(value, np.ndarray):
        return gt.tensor(value).data
    return value


def check_rule(name: str, examples: list[list[np.ndarray]], dims: tuple, params: dict,
               tol: dict) -> None:
    prim = PRIMS[name]
    params = {k: _on_backend(v) for k, v in params.items()}
    out, out_dim = prim.batch(_stacked(examples, dims), dims, **params)
    got = _front(out, out_dim)
    want = _loop(prim, examples, dims, params)
    assert got.dtype == want.dtype, (name, dims, params, got.dtype, want.dtype)
    assert got.shape == want.shape, (name, dims, params, got.shape, want.shape)
    if name == "svd":  # singular vectors are defined up to a sign per pair: cuSOLVER's batched
        rows = examples[0][0].shape[-2]  # and single-matrix SVDs choose different ones
        got, want = _svd_signs_fixed(got, rows), _svd_signs_fixed(want, rows)
    np.testing.assert_allclose(got, want, err_msg=f"{name} dims={dims} params={params}", **tol)


def _svd_signs_fixed(packed: np.ndarray, rows: int) -> np.ndarray:
    """A packed SVD (U over s over V, one singular triplet per column) with each pair of
    singular vectors signed so that the largest-magnitude entry of the U column is positive."""
    u = packed[..., :rows, :]
    top = np.take_along_axis(u, np.argmax(np.abs(u), axis=-2)[..., None, :], axis=-2)
    sign = np.where(top < 0, -1.0, 1.0).astype(packed.dtype)
    out = packed * sign
    out[..., rows, :] = packed[..., rows, :]  # the singular values keep theirs
    return out


def dims_combos(ranks: list[int]) -> list[tuple]:
    """Every choice of (None, 0, a middle axis, the last axis) per operand with at least one
    batched operand; positions that coincide are tried once."""
    seen = set()
    out = []
    for choice in itertools.product((None, "0", "mid", "last"), repeat=len(ranks)):
        if all(c is None for c in choice):
            continue
        dims = tuple(_place(c, r) for c, r in zip(choice, ranks))
        if dims not in seen:
            seen.add(dims)
            out.append(dims)
    return out


# --------------------------------------------------------------------------- cases
# A case: primitive name, make(rng, dtype) -> one example's arguments (numpy arrays), the
# parameters, and whether it runs once per float dtype (else once, dtype None). ``batched``
# restricts which operands may be batched (default: all).
class Case:
    def __init__(self, name: str, make: Callable, params: dict | None = None, *,
                 floats: bool = True, batched: tuple[int, ...] | None = None) -> None:
        self.name, self.make, self.params = name, make, params or {}
        self.floats, self.batched = floats, batched

    def __repr__(self) -> str:
        return f"{self.name}-{self.params}"


def _normal(*shapes: tuple) -> Callable:
    return lambda rng, dt: [rng.standard_normal(s).astype(dt) for s in shapes]


def _ints(*shapes: tuple) -> Callable:  # small integer values as floats: ties in comparisons
    return lambda rng, dt: [rng.integers(-1, 2, s).astype(dt) for s in shapes]


def _bools(*shapes: tuple) -> Callable:
    return lambda rng, dt: [rng.random(s) < 0.5 for s in shapes]


def _distinct(*shape: int) -> Callable:  # no ties (max, min, argmax)
    def make(rng: Any, dt: Any) -> list:
        n = int(np.prod(shape, dtype=np.int64))
        return [(rng.permutation(n).astype(dt) - n / 2).reshape(shape)]

    return make


MASK34 = np.array([[True, False, True, True], [False, False, True, False],
                   [True, True, False, False]])
MASK23 = np.array([[True, False, True], [False, True, True]])

CASES: list[Case] = []


def _add(name: str, make: Callable, params_list: list[dict] | dict | None = None,
         **kw: Any) -> None:
    for params in (params_list if isinstance(params_list, list) else [params_list or {}]):
        CASES.append(Case(name, make, params, **kw))


# comparisons and logic (broadcasting, as elementwise ops)
for _n in ("less", "less_equal", "greater", "greater_equal", "equal", "not_equal"):
    _add(_n, _ints((2, 3), (3,)))
    _add(_n, _ints((2, 3), (2, 3)))
    _add(_n, _ints((), (4,)))
for _n in ("logical_and", "logical_or"):
    _add(_n, _bools((2, 3), (3,)), floats=False)
    _add(_n, _bools((), (2, 2)), floats=False)
_add("logical_not", _bools((2, 3)), floats=False)
_add("logical_not", _bools(()), floats=False)


def _int_operands(*shapes: tuple) -> Callable:  # int64 values for the bitwise ops
    return lambda rng, dt: [rng.integers(-8, 8, s) for s in shapes]


for _n in ("bitwise_and", "bitwise_or", "bitwise_xor"):
    _add(_n, _int_operands((2, 3), (3,)), floats=False)
    _add(_n, _bools((), (2, 2)), floats=False)
_add("bitwise_not", _int_operands((2, 3)), floats=False)
_add("bitwise_not", _bools(()), floats=False)
def _specials(shape: tuple) -> Callable:  # normal values with inf, -inf and NaN among them
    def make(rng: Any, dt: Any) -> list:
        x = rng.standard_normal(shape).astype(dt)
        x.flat[rng.integers(0, x.size, max(1, x.size // 3))] = rng.choice([np.inf, -np.inf, np.nan])
        return [x]
    return make


for _n in ("isfinite", "isnan", "isinf"):
    _add(_n, _specials((4, 3)))
    _add(_n, _specials(()))

# indexing
_add("getitem", _normal((3, 4)), [
    {"index": (1, slice(None, None, -2)), "advanced": False},
    {"index": np.array([2, 0, 2, -1]), "advanced": True},
    {"index": (Ellipsis, None, np.array([1, 1, 3])), "advanced": True},
    {"index": MASK34, "advanced": True},
    {"index": (slice(None), np.array([[0, 3], [3, 3]])), "advanced": True},
    {"index": (None, Ellipsis, np.int64(-1)), "advanced": False},
    {"index": (slice(1, None), MASK34[0]), "advanced": True},
    {"index": (True,), "advanced": True},
    {"index": (np.array([0, 2]), np.array([[1], [3]])), "advanced": True},
])
_add("getitem", _normal(()), {"index": (), "advanced": False})
_add("getitem", _normal((2, 3, 4)), [
    # advanced indices separated by a slice: NumPy puts their dimensions first
    {"index": (np.array([0, 1, 1]), slice(None), np.array([1, 1, 3])), "advanced": True},
    {"index": (0, slice(None), np.array([0, 3])), "advanced": True},
    {"index": (slice(None), True, slice(None), np.array([0, 1])), "advanced": True},
    {"index": (np.array([[0], [1]]), 0, np.array([1, 2, 3])), "advanced": True},
    {"index": (Ellipsis, np.array([[0, 1]]), slice(None, 2), np.array([2])), "advanced": True},
    {"index": MASK23, "advanced": True},
    {"index": (slice(None), MASK34), "advanced": True},
])
_add("scatter_add", _normal((4,)), {"index": np.array([0, 2, 0, 1]), "shape": (3,),
                                    "advanced": True})
_add("scatter_add", _normal((2, 2)), {"index": (slice(None), slice(1, None, 2)), "shape": (2, 4),
                                      "advanced": False})
_add("scatter_add", _normal((2,)), {"index": (1, slice(None, None, -2)), "shape": (3, 4),
                                    "advanced": False})
_add("scatter_add", _normal((3, 3)), {"index": (np.array([0, 2, 2]), slice(None),
                                                np.array([1, 1, 0])),
                                      "shape": (3, 3, 4), "advanced": True})
_add("scatter_add", _normal((2, 3)), {"index": (0, slice(None), np.array([0, 3])),
                                      "shape": (2, 3, 4), "advanced": True})
_add("scatter_add", _normal((int(MASK34.sum()),)), {"index": MASK34, "shape": (3, 4),
                                                    "advanced": True})
_add("scatter_add", _normal((3, 1, 3)), {"index": (Ellipsis, None, np.array([1, 1, 3])),
                                         "shape": (3, 4), "advanced": True})
_add("scatter_add", _normal((3,)), {"index": (slice(None),), "shape": (2, 3),  # g broadcasts
                                    "advanced": False})

# shape
_add("reshape", _normal((2, 6)), [{"shape": (3, 4)}, {"shape": (12,)}, {"shape": (-1, 4)}])
_add("reshape", _normal(()), {"shape": (1, 1)})
_add("reshape", _normal((2, 3, 4)), {"shape": (6, 4)})
_add("transpose", _normal((2, 3)), {"axes": (1, 0)})
_add("transpose", _normal((2, 3, 4)), [{"axes": (1, 2, 0)}, {"axes": (2, 0, 1)},
                                       {"axes": (1, -1, 0)}])
_add("broadcast_to", _normal((3,)), {"shape": (2, 3)})
_add("broadcast_to", _normal((2, 1)), [{"shape": (4, 2, 3)}, {"shape": (2, 5)}])
_add("broadcast_to", _normal(()), {"shape": (2,)})
_add("stack", _normal((2, 3), (2, 3)), [{"axis": 0}, {"axis": 1}, {"axis": 2}, {"axis": -1}])
_add("stack", _normal((2,), (2,), (2,)), [{"axis": 1}, {"axis": 0}])
_add("stack", _normal((), ()), {"axis": 0})
_add("concat", _normal((2, 3), (4, 3)), {"axis": 0})
_add("concat", _normal((2, 1), (2, 3), (2, 2)), [{"axis": 1}, {"axis": -1}])
_add("concat", _normal((0, 2), (3, 2)), {"axis": 0})
_add("concat", _normal((2, 3, 1), (2, 3, 2)), {"axis": 2})
_add("pad", _normal((2, 3)), [{"pad_width": ((1, 1), (1, 1)), "constant_values": 0},
                              {"pad_width": ((0, 2), (1, 0)), "constant_values": 1.5},
                              {"pad_width": 1, "constant_values": -2.0}])
_add("pad", _normal((3,)), {"pad_width": ((2, 1),), "constant_values": 0})
_add("flip", _normal((2, 3)), [{"axis": (0, 1)}, {"axis": (1,)}, {"axis": None}])
_add("flip", _normal((2, 3, 4)), [{"axis": (2,)}, {"axis": (0, 2)}, {"axis": -1}])
_add("roll", _normal((2, 3, 4)), [{"shift": (1,), "axis": (0,)}, {"shift": (2, -1), "axis": (2, 1)},
                                  {"shift": (1,), "axis": (-1,)}])
_add("roll", _normal((5,)), {"shift": (3,), "axis": (0,)})
_add("tile", _normal((2, 3)), [{"reps": (2, 1)}, {"reps": (1, 3)}, {"reps": (2, 1, 2)},
                               {"reps": (3,)}])
_add("tile", _normal((3,)), {"reps": (2, 2)})
_add("tile", _normal(()), {"reps": (2,)})
_add("repeat", _normal((2, 3)), [{"repeats": 2, "axis": 1}, {"repeats": (1, 0, 3), "axis": 1},
                                 {"repeats": 2, "axis": 0}, {"repeats": (2, 1), "axis": -2},
                                 {"repeats": 2, "axis": None}])
_add("repeat", _normal((1,)), {"repeats": 3, "axis": 0})
_add("astype", _normal((2, 3)), [{"dtype": np.dtype(np.float64)},
                                 {"dtype": np.dtype(np.float32)},
                                 {"dtype": np.dtype(np.int32)}, {"dtype": np.dtype(np.bool_)}])
_add("astype", _normal(()), {"dtype": np.dtype(np.float16)})
_add("stop_gradient", _normal((2, 3)))
_add("stop_gradient", _normal(()))

# linear algebra
for _sa, _sb in [((2, 3), (3, 4)), ((3,), (3,)), ((3,), (2, 3, 4)), ((2, 1, 2, 3), (3, 4)),
                 ((5, 2, 3), (1, 3, 2)), ((2, 3), (3,)), ((4, 2, 3), (3,)), ((3,), (3, 4)),
                 ((2, 3), (2, 3, 4)), ((2, 2, 3), (3, 4)), ((1, 2, 3), (2, 1, 3, 2))]:
    _add("matmul", _normal(_sa, _sb))
_add("einsum", _normal((2, 3), (3, 4)), {"inputs": ("ij", "jk"), "output": "ik"})
_add("einsum", _normal((2, 2, 3), (2, 3, 2)), {"inputs": ("bij", "bjk"), "output": "bik"})
_add("einsum", _normal((2, 3)), [{"inputs": ("ij",), "output": ""},
                                 {"inputs": ("ij",), "output": "ji"}])
_add("einsum", _normal((3, 3)), {"inputs": ("ii",), "output": "i"})
_add("einsum", _normal((2,), (2, 3), (3,)), {"inputs": ("i", "ij", "j"), "output": ""})
_add("einsum", _normal((4, 2, 3), (4, 3)), {"inputs": ("...ij", "...j"), "output": "...i"})
_add("einsum", _normal((2, 3), (2, 3)), {"inputs": ("ab", "ab"), "output": "ba"})
for _sa, _sb in [((3,), (3,)), ((2, 3), (3, 4)), ((2, 3), (3,)), ((3,), (3, 2)),
                 ((2, 2, 3), (2, 3, 2)), ((2, 3), (4, 3, 2)), ((3,), (4, 3, 2))]:
    _sub_a = "abcdefgh"[:len(_sa)]
    _rest = iter("ABCDEFGH")
    _kb = 0 if len(_sb) == 1 else len(_sb) - 2
    _sub_b = "".join(_sub_a[-1] if j == _kb else next(_rest) for j in range(len(_sb)))
    _add("dot", _normal(_sa, _sb), {"inputs": (_sub_a, _sub_b),
                                    "output": _sub_a[:-1] + _sub_b[:_kb] + _sub_b[_kb + 1:]})
for _sa, _sb in [((3,), (4,)), ((2, 2), (3,)), ((), (2,))]:
    _add("outer", _normal(_sa, _sb))


def _matrices(*shapes: tuple, spd: bool = False) -> Callable:
    """Well-conditioned square matrices ``M + n I`` (``spd``: ``M M^T + n I``), then plain
    normal operands for the remaining shapes (right-hand sides)."""
    def make(rng: Any, dt: Any) -> list:
        n = shapes[0][-1]
        m = rng.standard_normal(shapes[0])
        a = m @ np.swapaxes(m, -1, -2) + n * np.eye(n) if spd else m + n * np.eye(n)
        return [a.astype(dt)] + [rng.standard_normal(s).astype(dt) for s in shapes[1:]]

    return make


# matrix functions (the packed SVD: singular values well apart, for stable singular vectors)
for _sa, _sb in [((3, 3), (3, 2)), ((3, 3), (2, 3, 1)), ((2, 3, 3), (3, 2)), ((2, 3, 3), (2, 3, 1))]:
    _add("solve", _matrices(_sa, _sb))
for _s in [(3, 3), (2, 3, 3)]:
    for _n in ("inv", "det", "slogdet", "det_cofactor"):
        _add(_n, _matrices(_s))
    _add("cholesky", _matrices(_s, spd=True))
for _s in [(3, 3), (3, 2), (2, 3), (2, 4, 3)]:
    _add("svd", _normal(_s))

# reductions
_REDUCE_PARAMS = [{"axis": None, "keepdims": False}, {"axis": (1,), "keepdims": False},
                  {"axis": (0,), "keepdims": True}, {"axis": (0, 2), "keepdims": True},
                  {"axis": (0, 2), "keepdims": False}, {"axis": None, "keepdims": True}]
# negative axes: only a direct bind gives them (the public ops normalize; logsumexp's impl
# assumes non-negative axes)
_NEGATIVE = [{"axis": (-1,), "keepdims": False}, {"axis": (-3, 1), "keepdims": False}]
for _n in ("sum", "mean", "prod", "logsumexp", "norm"):
    _add(_n, _normal((2, 3, 4)), _REDUCE_PARAMS + (_NEGATIVE if _n != "logsumexp" else []))
    _add(_n, _normal(()), [{"axis": (), "keepdims": False}, {"axis": None, "keepdims": False}])
_add("pnorm", _normal((2, 3, 4)), [dict(p, ord=3.0) for p in _REDUCE_PARAMS + _NEGATIVE])
_add("pnorm", _normal((3,)), {"axis": (0,), "keepdims": False, "ord": 0.5})
for _n in ("max", "min"):
    _add(_n, _distinct(2, 3, 4), _REDUCE_PARAMS + _NEGATIVE)
    _add(_n, _normal(()), {"axis": (), "keepdims": False})
for _n in ("var", "std"):
    _add(_n, _normal((2, 3, 4)), [dict(p, ddof=0) for p in _REDUCE_PARAMS + _NEGATIVE]
         + [{"axis": (1,), "keepdims": False, "ddof": 1}])
for _n in ("argmax", "argmin"):
    _add(_n, _distinct(2, 3, 4), [{"axis": None, "keepdims": False},
                                  {"axis": None, "keepdims": True},
                                  {"axis": 0, "keepdims": False}, {"axis": 1, "keepdims": True},
                                  {"axis": 2, "keepdims": False}, {"axis": -1, "keepdims": False}])
    _add(_n, _normal(()), {"axis": None, "keepdims": False})

# scans and sorting (argsort on small integers: ties keep their order, batched or not)
for _n in ("cumsum", "cumprod"):
    _add(_n, _normal((2, 3, 4)), [{"axis": 0}, {"axis": 1}, {"axis": 2}, {"axis": -1}])
    _add(_n, _normal((3,)), {"axis": 0})
_add("argsort", _ints((2, 3, 4)), [{"axis": a, "descending": d} for a in (0, 2, -1)
                                   for d in (False, True)])
_add("argsort", _ints((4,)), {"axis": 0, "descending": True})
_add("sort", _normal((2, 3, 4)), [{"axis": a, "descending": d} for a in (0, 2, -1)
                                  for d in (False, True)])
_add("sort", _normal((4,)), {"axis": 0, "descending": False})

# nn
for _n in ("softmax", "log_softmax"):
    _add(_n, _normal((3, 5)), [{"axis": 1}, {"axis": 0}, {"axis": -1}])
    _add(_n, _normal((2, 3, 4)), {"axis": 1})


def _sce(logit_shape: tuple) -> Callable:
    def make(rng: Any, dt: Any) -> list:
        return [rng.standard_normal(logit_shape).astype(dt),
                rng.integers(0, logit_shape[-1], logit_shape[:-1])]

    return make


_add("softmax_cross_entropy", _sce((4, 5)))
_add("softmax_cross_entropy", _sce((2, 3, 4)))
_add("softmax_cross_entropy", _sce((5,)))
_GEO1 = {"kernel": (3, 3), "stride": (1, 1), "padding": ((1, 1), (1, 1)), "dilation": (1, 1)}
_GEO2 = {"kernel": (2, 3), "stride": (2, 1), "padding": ((1, 0), (2, 1)), "dilation": (1, 2)}
_add("im2col", _normal((2, 3, 5, 6)), [dict(_GEO1, pad_value=0.0),
                                       dict(_GEO2, pad_value=-np.inf)])
_add("col2im", _normal((2, 3, 3, 3, 5, 6)), dict(_GEO1, in_shape=(2, 3, 5, 6)))
_add("col2im", _normal((2, 2, 2, 3, 3, 5)), dict(_GEO2, in_shape=(2, 2, 5, 6)))
_add("window_max", _distinct(2, 3, 4, 2, 2), [{"axis": 2}, {"axis": -3}])
# conv2d and its two adjoints (flat-grid layout: stride 1; exact grid: stride 2, groups 2),
# the images and the weights batched in every combination (batched weights fold into groups)
_CONV1 = {"stride": (1, 1), "padding": ((1, 1), (1, 1)), "dilation": (1, 1), "groups": 1}
_CONV2 = {"stride": (2, 1), "padding": ((1, 0), (2, 1)), "dilation": (1, 2), "groups": 2}
_add("conv2d", _normal((2, 4, 5, 6), (3, 4, 3, 3)), _CONV1)
_add("conv2d", _normal((2, 4, 5, 6), (4, 2, 2, 3)), _CONV2)
_add("conv_transpose2d", _normal((2, 3, 5, 6), (3, 4, 3, 3)), dict(_CONV1, size=(5, 6)))
_add("conv_transpose2d", _normal((2, 4, 3, 5), (4, 2, 2, 3)), dict(_CONV2, size=(5, 6)))
_add("conv2d_weight_grad", _normal((2, 4, 5, 6), (2, 3, 5, 6)), dict(_CONV1, kernel=(3, 3)))
_add("conv2d_weight_grad", _normal((2, 4, 5, 6), (2, 4, 3, 5)), dict(_CONV2, kernel=(2, 3)))
_POOL1 = {"kernel": (2, 2), "stride": (2, 2), "padding": ((0, 0), (0, 0))}
_POOL2 = {"kernel": (3, 3), "stride": (2, 2), "padding": ((1, 1), (1, 1))}
_add("max_pool2d", _distinct(2, 3, 5, 5), [_POOL1, _POOL2])


def _pool_keyed(pool: dict, routed: bool) -> Callable:
    """An image without ties, its pooled maxima and a third operand (route: of the pooled
    shape, select: of the image's)."""
    def make(rng: Any, dt: Any) -> list:
        x = _distinct(2, 3, 5, 5)(rng, dt)[0]
        top = REGISTRY["max_pool2d"].impl(np, x, **pool)
        return [x, top, rng.standard_normal(top.shape if routed else x.shape).astype(dt)]

    return make


for _pool in (_POOL1, _POOL2):
    _add("max_pool2d_route", _pool_keyed(_pool, True), _pool)
    _add("max_pool2d_select", _pool_keyed(_pool, False), _pool)
def _with_index(shape: tuple, n: int, idx_shape: tuple) -> Callable:
    """A float operand and an integer index operand (values in [-n, n), negatives included)."""
    return lambda rng, dt: [rng.standard_normal(shape).astype(dt),
                            rng.integers(-n, n, size=idx_shape)]


# the index operand differs per example (a batched index) or not, in every combination
_add("index_take", _with_index((3, 4), 3, (5,)), {"axis": 0})
_add("index_take", _with_index((3, 4), 4, (2, 2)), {"axis": 1})
_add("index_take", _with_index((2, 3, 4), 3, (2,)), {"axis": 1})
_add("index_put_add", _with_index((5, 4), 3, (5,)), {"axis": 0, "shape": (3, 4)})
_add("index_put_add", _with_index((3, 2, 2), 4, (2, 2)), {"axis": 1, "shape": (3, 4)})
_add("index_put_add", _with_index((2, 2, 4), 3, (2,)), {"axis": 1, "shape": (2, 3, 4)})
_add("first_max_mask", _ints((2, 4, 3)), [{"axis": 1, "dtype": np.dtype(np.float32)},
                                           {"axis": 2, "dtype": np.dtype(np.float64)}])


def _dividend_divisor(shape_a: tuple, shape_b: tuple) -> Callable:
    """remainder's operands: any dividend, a divisor of either sign away from 0."""
    return lambda rng, dt: [rng.uniform(-3, 3, shape_a).astype(dt),
                            (rng.uniform(0.5, 2, shape_b) * rng.choice([-1, 1], shape_b)).astype(dt)]


for _shapes in [((2, 3), (2, 3)), ((2, 3), (3,)), ((3,), (2, 3)), ((), ())]:
    _add("remainder", _dividend_divisor(*_shapes))


# elementwise primitives, from their declarations (arity, domains, parameters)
def _elementwise_make(prim: Primitive, shapes: tuple) -> Callable:
    def make(rng: Any, dt: Any) -> list:
        out = []
        for dom, shape in zip(prim.domains, shapes):
            if dom.kind == "bool":
                out.append(rng.random(shape) < 0.5)
            else:
                out.append(rng.uniform(dom.low, dom.high, shape).astype(dt))
        return out

    return make


_PARAM_VALUES = {"negative_slope": 0.1, "alpha": 0.7}
for _n, _p in sorted(PRIMS.items()):
    if not _p.is_elementwise:
        continue
    _params = {k: _PARAM_VALUES[k] for k in _p.param_names}
    _k = len(_p.arg_names)
    for _shapes in [((2, 3),) * _k, ((2, 3),) + ((3,),) * (_k - 1), ((),) * _k]:
        _add(_n, _elementwise_make(_p, _shapes), _params)


def _run(case: Case, dtype: Any, dims_filter: Callable[[tuple], bool] = lambda d: True) -> int:
    """Check every dims combination of ``case``; returns how many ran."""
    rng = np.random.default_rng(0)
    examples = [case.make(rng, dtype or np.float64) for _ in range(B)]
    ranks = [np.ndim(a) for a in examples[0]]
    tol = _tol(dtype or np.float64)
    n = 0
    for dims in dims_combos(ranks):
        if case.batched is not None and any(d is not None and i not in case.batched
                                            for i, d in enumerate(dims)):
            continue
        if not dims_filter(dims):
            continue
        check_rule(case.name, examples, dims, case.params, tol)
        n += 1
    return n


_RUNS = [(c, dt) for c in CASES for dt in (FLOATS if c.floats else (None,))]


@pytest.mark.parametrize("case,dtype", _RUNS,
                         ids=[f"{c.name}-{i}-{np.dtype(dt).name if dt else 'any'}"
                              for i, (c, dt) in enumerate(_RUNS)])
def test_batch_rule_matches_the_loop(case, dtype, backend):
    assert _run(case, dtype) > 0


# --------------------------------------------------------------------------- coverage
def test_every_primitive_has_a_batch_rule():
    missing = sorted(n for n, p in PRIMS.items() if p.batch is None)
    assert not missing, f"primitives without a batching rule: {missing}"


def test_every_primitive_has_a_batching_case():
    covered = {c.name for c in CASES}
    missing = sorted(set(PRIMS) - covered)
    assert not missing, f"add a batching case to tests/test_batching_rules.py for: {missing}"


def test_every_rule_sees_each_batch_position():
    """For each multi-operand case, combinations with one operand unbatched ran."""
    for case in CASES:
        rng = np.random.default_rng(0)
        ranks = [np.ndim(a) for a in case.make(rng, np.float64)]
        combos = dims_combos(ranks)
        if len(ranks) > 1:
            assert any(None in d for d in combos), case
        assert any(d[0] not in (None, 0) for d in combos) or ranks[0] == 0, case


# --------------------------------------------------------------------------- work done by a rule
@pytest.fixture
def calls(monkeypatch):
    """Counts the forward calls of every primitive (name -> list of the argument shapes)."""
    seen: dict[str, list] = {}
    for name, prim in PRIMS.items():
        def counting(xp: Any, *arrays: Any, _impl: Any = prim.impl, _name: str = name,
                     **params: Any) -> Any:
            seen.setdefault(_name, []).append(tuple(a.shape for a in arrays))
            return _impl(xp, *arrays, **params)

        monkeypatch.setattr(prim, "impl", counting)
    return seen


# Broadcasting an unbatched operand to the batch size is needed only where every operand must
# carry the batch axis (stack, concat).
_MAY_BROADCAST = {"stack", "concat"}


def test_rules_do_not_loop_over_the_batch(calls):
    """The primitives a rule applies do not depend on the batch size (2 or 5 examples), and
    an unbatched operand is never broadcast to the batch size unless the op needs it."""
    for case in CASES:
        rng = np.random.default_rng(8)
        examples = [case.make(rng, np.float64) for _ in range(5)]
        for dims in dims_combos([np.ndim(a) for a in examples[0]]):
            counts = []
            for size in (2, 5):
                calls.clear()
                out, _ = PRIMS[case.name].batch(_stacked(examples[:size], dims), dims,
                                                **case.params)
                counts.append(sorted((n, len(v)) for n, v in calls.items()))
                if None in dims and case.name not in _MAY_BROADCAST:
                    assert not {"broadcast_to", "tile"} & set(calls), (case, dims, calls)
            assert counts[0] == counts[1], (case, dims, counts)


def test_matmul_with_unbatched_right_operand_is_one_product(calls):
    """Batched a @ unbatched b: one matmul of a 2-D b as it is (the batch folded into a's
    rows); batched b: one matmul, the batch in b's columns."""
    rng = np.random.default_rng(1)
    a = rng.standard_normal((B, 2, 3))
    b = rng.standard_normal((3, 4))
    out, d = PRIMS["matmul"].batch((gt.tensor(a), gt.tensor(b)), (0, None))
    np.testing.assert_allclose(_front(out, d), a @ b)
    assert calls["matmul"] == [((B * 2, 3), (3, 4))]
    calls.clear()
    bs = rng.standard_normal((3, B, 4))
    out, d = PRIMS["matmul"].batch((gt.tensor(a[0]), gt.tensor(bs)), (None, 1))
    np.testing.assert_allclose(_front(out, d), a[0] @ np.moveaxis(bs, 1, 0))
    assert calls["matmul"] == [((2, 3), (3, B * 4))]


def test_rules_accept_negative_batch_axes():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 3, B))
    y = rng.standard_normal((2, 3))
    for name, params in [("sum", {"axis": (0,), "keepdims": False}), ("exp", {}),
                         ("transpose", {"axes": (1, 0)}), ("reshape", {"shape": (6,)}),
                         ("softmax", {"axis": 0}), ("astype", {"dtype": np.dtype(np.float32)})]:
        out, d = PRIMS[name].batch((gt.tensor(x),), (-1,), **params)
        want = np.stack([bind(PRIMS[name], gt.tensor(x[..., b]), **params).numpy()
                         for b in range(B)])
        np.testing.assert_allclose(_front(out, d), want, rtol=1e-12, err_msg=name)
    out, d = PRIMS["add"].batch((gt.tensor(x), gt.tensor(y)), (-1, None))
    np.testing.assert_allclose(_front(out, d), np.moveaxis(x, -1, 0) + y)


def test_einsum_rule_needs_a_free_label():
    letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
    x = gt.tensor(np.ones((1,) * 52 + (B,)))
    with pytest.raises(ValueError, match="none is left to batch it"):
        PRIMS["einsum"].batch((x,), (52,), inputs=(letters,), output=letters)


# --------------------------------------------------------------------------- chains (nested)
def _rule(name: str, args: tuple, dims: tuple, **params: Any) -> tuple:
    return PRIMS[name].batch(args, dims, **params)


def _per_example(name: str, *args: Any, **params: Any) -> Any:
    return bind(PRIMS[name], *(a if isinstance(a, gt.Tensor) else gt.tensor(a) for a in args),
                **params)


@pytest.mark.parametrize("dtype", FLOATS)
def test_chained_rules_match_the_loop(dtype):
    """Each rule takes the previous rule's output with its batch axis where that rule left it
    (not moved to the front first), as a transform stacked on another sees it."""
    rng = np.random.default_rng(3)
    xs = rng.standard_normal((B, 2, 3, 4)).astype(dtype)
    w = rng.standard_normal((4, 5)).astype(dtype)
    ws = rng.standard_normal((B, 5, 2)).astype(dtype)
    idx = (np.array([0, 1]), slice(None), np.array([3, 0]))  # separated: batch axis not 0
    x = gt.tensor(np.moveaxis(xs, 0, 2))  # batch axis 2
    t, d = _rule("getitem", (x,), (2,), index=idx, advanced=True)          # [2, B, 3]
    assert d != 0
    t, d = _rule("exp", (t,), (d,))
    t, d = _rule("broadcast_to", (t,), (d,), shape=(4, 2, 3))              # [4, 2, B, 3] or so
    t, d = _rule("transpose", (t,), (d,), axes=(1, 2, 0))                  # [2, 3, 4]
    t, d = _rule("matmul", (t, gt.tensor(w)), (d, None))                   # [2, 3, 5]
    t, d = _rule("sum", (t,), (d,), axis=(0,), keepdims=False)             # [3, 5]
    t, d = _rule("matmul", (t, gt.tensor(np.moveaxis(ws, 0, -1))), (d, 2))  # [3, 2]
    t, d = _rule("softmax", (t,), (d,), axis=0)
    t, d = _rule("concat", (t, gt.tensor(np.ones((3, 1), dtype))), (d, None), axis=1)
    t, d = _rule("max", (t,), (d,), axis=(1,), keepdims=True)              # [3, 1]
    t, d = _rule("pad", (t,), (d,), pad_width=((1, 0), (0, 2)), constant_values=0.5)
    t, d = _rule("argmax", (t,), (d,), axis=None, keepdims=False)
    got = _front(t, d)

    want = []
    for b in range(B):
        u = _per_example("getitem", xs[b], index=idx, advanced=True)
        u = _per_example("exp", u)
        u = _per_example("broadcast_to", u, shape=(4, 2, 3))
        u = _per_example("transpose", u, axes=(1, 2, 0))
        u = _per_example("matmul", u, w)
        u = _per_example("sum", u, axis=(0,), keepdims=False)
        u = _per_example("matmul", u, ws[b])
        u = _per_example("softmax", u, axis=0)
        u = _per_example("concat", u, np.ones((3, 1), dtype), axis=1)
        u = _per_example("max", u, axis=(1,), keepdims=True)
        u = _per_example("pad", u, pad_width=((1, 0), (0, 2)), constant_values=0.5)
        u = _per_example("argmax", u, axis=None, keepdims=False)
        want.append(u.numpy())
    np.testing.assert_array_equal(got, np.stack(want))


@pytest.mark.parametrize("dtype", FLOATS)
def test_chained_rules_gradient_pieces(dtype):
    """A rule's output fed to the rule of its VJP's primitive (getitem -> scatter_add,
    im2col -> col2im, stack -> getitem), batch axes wherever they land."""
    rng = np.random.default_rng(4)
    tol = _tol(dtype)
    xs = rng.standard_normal((B, 3, 4, 5)).astype(dtype)
    idx = (np.array([0, 2, 2]), slice(None), np.array([1, 1, 4]))
    t, d = _rule("getitem", (gt.tensor(np.moveaxis(xs, 0, -1)),), (3,), index=idx, advanced=True)
    t, d = _rule("scatter_add", (t,), (d,), index=idx, shape=(3, 4, 5), advanced=True)
    want = np.stack([_per_example("scatter_add", _per_example("getitem", xs[b], index=idx,
                                                              advanced=True),
                                  index=idx, shape=(3, 4, 5), advanced=True).numpy()
                     for b in range(B)])
    np.testing.assert_allclose(_front(t, d), want, **tol)

    imgs = rng.standard_normal((B, 2, 3, 5, 6)).astype(dtype)
    geo = {"kernel": (2, 3), "stride": (2, 1), "padding": ((1, 0), (2, 1)), "dilation": (1, 2)}
    t, d = _rule("im2col", (gt.tensor(np.moveaxis(imgs, 0, 2)),), (2,), pad_value=0.0, **geo)
    t, d = _rule("transpose", (t,), (d,), axes=(0, 1, 2, 3, 5, 4))
    t, d = _rule("transpose", (t,), (d,), axes=(0, 1, 2, 3, 5, 4))
    t, d = _rule("col2im", (t,), (d,), in_shape=(2, 3, 5, 6), **geo)
    want = np.stack([_per_example("col2im", _per_example("im2col", imgs[b], pad_value=0.0, **geo),
                                  in_shape=(2, 3, 5, 6), **geo).numpy() for b in range(B)])
    np.testing.assert_allclose(_front(t, d), want, **tol)

    a = rng.standard_normal((B, 2, 3)).astype(dtype)
    c = rng.standard_normal((2, 3)).astype(dtype)
    t, d = _rule("stack", (gt.tensor(np.moveaxis(a, 0, 1)), gt.tensor(c)), (1, None), axis=1)
    t, d = _rule("getitem", (t,), (d,), index=(slice(None), 0), advanced=False)
    t, d = _rule("outer", (t, gt.tensor(c[0])), (d, None))
    want = np.stack([np.outer(a[b], c[0]) for b in range(B)])
    np.testing.assert_allclose(_front(t, d), want, **tol)


# --------------------------------------------------------------------------- gt.vmap
# Index arrays of take/gather are parameters of getitem (constants), so they stay unbatched.
_CONSTANT_INTS = {"take", "gather"}


def _vmap_cases() -> list:
    if not hasattr(gt, "vmap"):
        return []
    cases = []
    for name, prim in sorted(PRIMS.items()):
        if prim.examples is None:
            continue
        for i, (fn, args, kwargs) in enumerate(prim.examples(np.random.default_rng(5))):
            for axis in (0, -1):
                cases.append(pytest.param(fn, args, kwargs, axis, id=f"{name}-{i}-axis{axis}"))
    return cases


def _batch_leaf(a: Any, axis: int, fn: Any, rng: Any) -> tuple[Any, Any]:
    """(the batched value, its in_axes entry) for one argument of a public-op example."""
    if isinstance(a, (list, tuple)) and any(isinstance(v, np.ndarray) for v in a):
        pairs = [_batch_leaf(v, axis, fn, rng) for v in a]
        return type(a)(p[0] for p in pairs), [p[1] for p in pairs]
    if isinstance(a, np.generic):  # a 0-d example given as a NumPy scalar
        a = np.asarray(a)
    if not isinstance(a, np.ndarray):
        return a, None
    if a.dtype.kind != "f":
        if getattr(fn, "__name__", "") in _CONSTANT_INTS:
            return gt.tensor(a), None
        return gt.tensor(np.stack([a] * B, axis=axis)), axis
    noisy = [a] + [a + rng.standard_normal(a.shape) * 0.01 for _ in range(B - 1)]
    return gt.tensor(np.stack(noisy, axis=axis)), axis


def _example_b(v: Any, ax: Any, b: int) -> Any:
    if isinstance(v, (list, tuple)):
        return type(v)(_example_b(u, x, b) for u, x in zip(v, ax))
    if ax is None:
        return v
    return gt.tensor(np.take(v.numpy(), b, axis=ax))


@pytest.mark.skipif(not hasattr(gt, "vmap"), reason="gradtape.vmap is not there yet")
@pytest.mark.parametrize("fn,args,kwargs,axis", _vmap_cases())
def test_vmap_of_public_op_matches_the_loop(fn, args, kwargs, axis):
    rng = np.random.default_rng(6)
    pairs = [_batch_leaf(a, axis, fn, rng) for a in args]
    batched = [p[0] for p in pairs]
    in_axes = tuple(p[1] for p in pairs)
    if all(ax is None or (isinstance(ax, list) and all(x is None for x in ax))
           for ax in in_axes):
        pytest.skip("no array argument to map over")

    def f(*xs: Any) -> Any:
        return fn(*xs, **kwargs)

    got = _outputs(gt.vmap(f, in_axes=in_axes)(*batched))
    loop = [_outputs(f(*(_example_b(v, ax, b) for v, ax in zip(batched, in_axes))))
            for b in range(B)]
    for k, out in enumerate(got):  # an op with several outputs (slogdet) maps each
        want = np.stack([outs[k].numpy() for outs in loop])
        assert out.shape == want.shape and out.dtype == want.dtype
        np.testing.assert_allclose(out.numpy(), want, rtol=1e-10, atol=1e-10)


def _outputs(out: Any) -> list:
    return list(out) if isinstance(out, (list, tuple)) else [out]


def _batch_leaf2(a: Any, fn: Any, rng: Any) -> tuple[Any, Any]:
    """Two batch axes (outer 2 examples at axis 0, inner B at axis 1 of each) for nested vmap."""
    if isinstance(a, (list, tuple)) and any(isinstance(v, np.ndarray) for v in a):
        pairs = [_batch_leaf2(v, fn, rng) for v in a]
        return type(a)(p[0] for p in pairs), [p[1] for p in pairs]
    if isinstance(a, np.generic):
        a = np.asarray(a)
    if not isinstance(a, np.ndarray):
        return a, None
    if a.dtype.kind != "f":
        if getattr(fn, "__name__", "") in _CONSTANT_INTS:
            return gt.tensor(a), None
        return gt.tensor(np.stack([np.stack([a] * B)] * 2)), 0
    return gt.tensor(a + rng.standard_normal((2, B) + a.shape) * 0.01), 0


def _example_ab(v: Any, ax: Any, i: int, b: int) -> Any:
    if isinstance(v, (list, tuple)):
        return type(v)(_example_ab(u, x, i, b) for u, x in zip(v, ax))
    if ax is None:
        return v
    return gt.tensor(v.numpy()[i, b])


@pytest.mark.skipif(not hasattr(gt, "vmap"), reason="gradtape.vmap is not there yet")
@pytest.mark.parametrize("fn,args,kwargs,axis", [c for c in _vmap_cases() if c.values[3] == 0])
def test_nested_vmap_of_public_op_matches_the_loop(fn, args, kwargs, axis):
    """vmap of vmap: the inner level's rules get the outer level's batched tensors (no values)."""
    rng = np.random.default_rng(7)
    pairs = [_batch_leaf2(a, fn, rng) for a in args]
    batched = [p[0] for p in pairs]
    in_axes = tuple(p[1] for p in pairs)
    if all(ax is None or (isinstance(ax, list) and all(x is None for x in ax))
           for ax in in_axes):
        pytest.skip("no array argument to map over")

    def f(*xs: Any) -> Any:
        return fn(*xs, **kwargs)

    got = _outputs(gt.vmap(gt.vmap(f, in_axes=in_axes), in_axes=in_axes)(*batched))
    loop = [[_outputs(f(*(_example_ab(v, ax, i, b) for v, ax in zip(batched, in_axes))))
             for b in range(B)] for i in range(2)]
    for k, out in enumerate(got):
        want = np.stack([np.stack([outs[k].numpy() for outs in row]) for row in loop])
        assert out.shape == want.shape and out.dtype == want.dtype
        np.testing.assert_allclose(out.numpy(), want, rtol=1e-10, atol=1e-10)


@pytest.mark.skipif(not hasattr(gt, "vmap"), reason="gradtape.vmap is not there yet")
def test_per_example_index_tensor_inside_vmap():
    """An index that differs per example (take, gather, x[i], embedding) runs as one batched
    take through the index-operand primitives, forward and backward; index forms they do not
    cover (a bool mask per example) are refused with a clear error."""
    x = gt.tensor(np.arange(12.0).reshape(3, 4))
    idx = gt.tensor(np.array([[0, 1], [2, -1]]))
    out = gt.vmap(lambda i: gt.take(x, i, axis=1))(idx)
    np.testing.assert_array_equal(out.numpy(), np.stack([x.numpy()[:, [0, 1]], x.numpy()[:, [2, -1]]]))
    rows = gt.vmap(lambda r, i: r[i])(x, gt.tensor(np.array([[3, 3], [0, 1], [2, 0]])))
    np.testing.assert_array_equal(rows.numpy(), [[3.0, 3.0], [4.0, 5.0], [10.0, 8.0]])
    table = gt.tensor(np.arange(10.0).reshape(5, 2))
    ids = gt.tensor(np.array([[1, 1, 4], [0, 2, 2]]))

    def loss(t: gt.Tensor, i: gt.Tensor) -> gt.Tensor:
        return gt.sum(gt.nn.embedding(i, t) ** 2)

    per = gt.vmap(gt.grad(loss), in_axes=(None, 0))(table, ids)
    for b in range(2):
        ref = gt.grad(loss)(table, ids[b])
        np.testing.assert_allclose(per[b].numpy(), ref.numpy())
    with pytest.raises(NotImplementedError, match="differs per example"):
        gt.vmap(lambda t: t[t > 0])(x)
    # an unbatched index is fine
    out = gt.vmap(lambda r: gt.take(r, idx[0]), in_axes=0)(x)
    np.testing.assert_array_equal(out.numpy(), x.numpy()[:, [0, 1]])
