"""Batched tensors: the values a function sees inside ``gt.vmap``.

A :class:`BatchedTensor` stands for one example of a batch. It holds the whole batch as an
ordinary (physical) tensor ``_value`` whose axis ``_bdim`` is the batch axis, and presents the
per-example (logical) shape: ``x.shape``, ``x.dtype``, ``x.ndim`` describe one example, and
``x.data`` is an :class:`Abstract` (shape and dtype only). Every primitive applied to a batched
tensor runs its batching rule instead of its forward (see ``bind`` in
:mod:`gradtape._src.primitive`): the rule applies primitives once to the physical tensors, and
the result is wrapped again. Nothing loops over the batch.

``_level`` numbers nested vmaps (1 outermost): a rule at level L unwraps only the level-L
operands, and the physical values it works on may themselves be batched at a lower level.
Tapes and forward accumulators note the level at which they were entered: one entered inside
a vmap records the logical (per-example) ops, one entered outside records the physical ones.

Values inside vmap are not available (as in JAX and ``torch.func``): ``bool(x)``, ``float(x)``,
``x.numpy()`` raise, so Python control flow on a batched value fails loudly instead of taking
one example's branch for all.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import numpy as np

from ..tensor import Tensor
from .state import STATE

__all__ = ["BatchedTensor", "Abstract", "value_error", "physical_data", "batch_level"]


def value_error(what: str) -> NoReturn:
    label = STATE.batch_labels[-1] if STATE.batch_labels else None
    if label is not None:  # a vmap level the user did not write: say which call made it
        raise TypeError(
            f"{what} of a batched tensor inside {label}: its value differs per row, so it "
            "cannot be a single Python value or array (a custom gradient's grad function that "
            "calls .numpy(), say). Keep the computation in gradtape ops, or pass "
            "experimental_use_pfor=False (one backward pass per row, on a persistent tape)")
    raise TypeError(
        f"{what} of a batched tensor inside gt.vmap: its value differs per example, so it cannot "
        "be a single Python value or array. Keep the computation in gradtape ops (use gt.where "
        "instead of `if`), or move it outside the vmapped function")


class _NoValue:
    """What both a batched tensor and its ``.data`` refuse: becoming one Python value or array."""

    __slots__ = ()

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> NoReturn:
        value_error("np.asarray()")

    def __bool__(self) -> bool:
        value_error("the truth value (an `if` or `while` on it)")

    def __float__(self) -> float:
        value_error("float()")

    def __int__(self) -> int:
        value_error("int()")

    def __index__(self) -> int:
        value_error("using as an index")


class Abstract(_NoValue):
    """What ``.data`` of a batched tensor gives: the per-example shape and dtype, no values.

    Enough for code that inspects metadata (``x.data.shape``, ``x.data.dtype.kind``); reading
    values (``np.asarray``, ``.item()``, arithmetic) raises a clear error."""

    __slots__ = ("shape", "dtype")

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.shape = shape
        self.dtype = dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        value_error(f"reading .{name}")

    def __len__(self) -> int:
        if not self.shape:
            raise TypeError("len() of a 0-d tensor")
        return self.shape[0]


class BatchedTensor(_NoValue, Tensor):  # _NoValue first: its refusals win over Tensor
    """One example of a batch, inside ``gt.vmap`` (see the module docstring).

    Example:
        >>> import gradtape as gt, numpy as np
        >>> seen = []
        >>> _ = gt.vmap(lambda x: seen.append(x.shape) or x * 2)(gt.tensor(np.ones((5, 3))))
        >>> seen
        [(3,)]
    """

    __slots__ = ("_value", "_bdim", "_level", "_abstract")

    @property  # per-example metadata instead of the array
    def data(self) -> Abstract:
        return self._abstract

    def __init__(self, value: Tensor, bdim: int, level: int) -> None:
        self._value = value
        self._bdim = bdim
        self._level = level
        shape = value.shape
        self._abstract = Abstract(shape[:bdim] + shape[bdim + 1:], value.dtype)
        self._backend = value._backend
        self._id = 0
        self._origin = None

    @property
    def batch_size(self) -> int:
        """The number of examples in the batch."""
        return self._value.shape[self._bdim]

    def numpy(self) -> np.ndarray:
        value_error("numpy()")

    def item(self) -> Any:
        value_error(".item()")

    def to(self, backend: str) -> Tensor:
        value_error(".to()")

    def __repr__(self) -> str:
        return (f"BatchedTensor(shape={self.shape}, dtype={self.dtype}, one of "
                f"{self.batch_size} examples, vmap level {self._level})")

    def __reduce__(self) -> tuple:
        value_error("pickling")

    def __copy__(self) -> Tensor:
        return self

    def __deepcopy__(self, memo: dict) -> Tensor:
        return self


def physical_data(t: Tensor) -> Any:
    """The backend array holding every example of ``t`` (all vmap levels): for checks that
    hold for the whole batch at once, such as labels in range. Not for computing values."""
    while isinstance(t, BatchedTensor):
        t = t._value
    return t.data


RANDOMNESS = ("error", "different", "same")


class SharedDraws:
    """``gt.vmap(randomness="same", chunk_size=k)``: the draws of the batch's first piece, which
    the other pieces take again in the same order, so every example sees one draw."""

    __slots__ = ("values", "pos", "replay")

    def __init__(self) -> None:
        self.values: list[Any] = []
        self.pos = 0
        self.replay = False

    def piece(self, first: bool) -> None:
        """A piece starts: the first records its draws, the others replay them."""
        self.replay, self.pos = not first, 0


def shared_draw(make: Callable[[], Any]) -> Any:
    """``make()``, a random draw inside ``gt.vmap``, or the value the first piece of a chunked
    ``randomness="same"`` vmap drew at this point (:class:`SharedDraws`)."""
    recs = [e[3] for e in STATE.vmap_random if e[3] is not None]
    if not recs:
        return make()
    for r in recs:  # the outermost replaying piece gives the value
        if r.replay:
            if r.pos >= len(r.values):
                raise RuntimeError("gt.vmap(randomness='same', chunk_size=...): a piece of the "
                                   "batch drew more random values than the first piece did")
            value = r.values[r.pos]
            r.pos += 1
            break
    else:
        value = make()
    for r in recs:
        if not r.replay:
            r.values.append(value)
    return value


@contextmanager
def batch_level(size: int | None = None, randomness: str = "same",
                shared: SharedDraws | None = None, label: str | None = None) -> Iterator[int]:
    """Enter one more vmap level on this thread (yields its number): batched values made for it
    carry it, and backward passes inside run in recorded ops (``STATE.transforms``).
    ``randomness``: what a random draw inside does (:func:`random_levels`); ``size``: the
    batch size, needed for "different"; ``shared``: a chunked "same" vmap's draws;
    ``label``: the call that made the level, for messages (None: ``gt.vmap``)."""
    st = STATE
    level = st.vmap_level + 1
    st.vmap_level = level
    st.transforms += 1
    st.vmap_random.append((level, size, randomness, shared))
    st.batch_labels.append(label)
    try:
        yield level
    finally:
        st.vmap_level = level - 1
        st.transforms -= 1
        st.vmap_random.pop()
        st.batch_labels.pop()


def random_levels(who: str) -> list[tuple[int, int]]:
    """The ``(level, batch size)`` of the active vmap levels that draw per example
    (``randomness="different"``), outermost first; empty outside vmap. Raises where a level
    says "error" (gt.vmap's default: a draw would silently give every example the same
    numbers)."""
    out = []
    for level, size, mode, _ in STATE.vmap_random:
        if mode == "error":
            raise ValueError(
                f"{who}: a random draw inside gt.vmap would give every example the same numbers; "
                "pass randomness='different' to gt.vmap for independent draws per example, or "
                "randomness='same' for one draw shared by all")
        if mode == "different":
            assert size is not None
            out.append((level, size))
    return out


def batch_random(t: Tensor, levels: list[tuple[int, int]]) -> Tensor:
    """``t``, drawn with the sizes of ``levels`` (:func:`random_levels`) in front of its
    per-example shape, as one example of each of those levels."""
    for level, _ in levels:
        t = BatchedTensor(t, 0, level)
    return t
