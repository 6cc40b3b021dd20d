"""Weight initializers, seeded: each returns a float array of ``shape`` on the active backend.

``seed`` is an int (a fresh ``numpy.random.default_rng(seed)``), a :class:`gradtape.random.Generator`
or a ``numpy.random.Generator`` (shared: each call advances it), or None: the default generator
of :mod:`gradtape.random` (``gt.random.seed(s)`` makes unseeded initialization reproducible).
Values are drawn on the host and copied to the backend, so a seed gives the same weights on
NumPy and CuPy.

``fan_in``/``fan_out`` follow Keras/PyTorch: for a dense kernel ``[in, out]`` they are
``in``/``out``; for a conv kernel ``[O, I, kh, kw]`` they are ``I * kh * kw`` / ``O * kh * kw``.

Example:
    >>> from gradtape.nn import init
    >>> init.glorot_uniform((3, 4), seed=0).shape
    (3, 4)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from .._src.autodiff.batched import random_levels
from .._src.autodiff.state import STATE
from .._src.backend import Array, get_backend
from ..ops._util import as_real
from ..ops.creation import float_dtype, normalize_shape
from ..random import Generator, _check_normal_range, _numpy_generator

if TYPE_CHECKING:
    from numpy.typing import DTypeLike

__all__ = ["fans", "glorot_uniform", "glorot_normal", "he_uniform", "he_normal", "normal", "zeros", "ones",
           "get", "Initializer", "Seed"]

#: A seed for an initializer: an int, a ``gt.random.Generator`` or ``numpy.random.Generator``
#: (shared, advancing), or None (``gt.random``'s default generator).
Seed = int | Generator | np.random.Generator | None
#: An initializer: ``f(shape, seed=None, dtype=np.float32, kind="dense") -> backend array``.
Initializer = Callable[..., Array]


_KINDS = ("dense", "conv")


def _args(shape: tuple[int, ...], dtype: DTypeLike, kind: str, what: str) -> tuple[tuple[int, ...], np.dtype]:
    """An initializer's ``shape`` (non-negative ints), ``dtype`` (a float dtype) and ``kind``,
    checked (TypeError / ValueError naming ``init.<what>``); once per parameter, not per op."""
    _check_kind(kind, f"init.{what}")
    return normalize_shape(shape, f"init.{what}"), float_dtype(dtype, f"init.{what}")


def _check_kind(kind: str, what: str) -> None:
    if not isinstance(kind, str) or kind not in _KINDS:
        raise ValueError(f"{what}: kind must be one of {_KINDS}, got {kind!r}")


def fans(shape: tuple[int, ...], kind: str = "dense") -> tuple[int, int]:
    """``(fan_in, fan_out)`` of a kernel: ``kind="dense"`` for ``[in, out]`` (any leading
    dims), ``"conv"`` for OIHW ``[O, I, kh, kw]``; another ``kind`` raises ValueError."""
    _check_kind(kind, "init.fans")
    shape = normalize_shape(shape, "init.fans")
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    if kind == "conv":
        receptive = int(np.prod(shape[2:])) if len(shape) > 2 else 1
        return shape[1] * receptive, shape[0] * receptive
    return int(np.prod(shape[:-1])), shape[-1]


def _rng(seed: Seed) -> np.random.Generator:
    if STATE.vmap_random and random_levels("gt.nn.init"):  # inside gt.vmap: its randomness
        raise ValueError("gt.nn.init: an initializer draws one array, not one per example; "
                         "inside gt.vmap(randomness='different') create parameters outside "
                         "the vmap (or use randomness='same')")
    return _numpy_generator(seed, "initializer")


def _on_backend(arr: np.ndarray, dtype: DTypeLike) -> Array:
    xp = get_backend().xp
    return xp.asarray(arr.astype(dtype, copy=False))


def glorot_uniform(shape: tuple[int, ...], seed: Seed = None, dtype: DTypeLike = np.float32,
                   kind: str = "dense") -> Array:
    """Uniform in ``[-a, a]``, ``a = sqrt(6 / (fan_in + fan_out))`` (Glorot & Bengio; Keras's
    default). ``seed``: an int, a ``gt.random.Generator``, a ``numpy.random.Generator`` or None
    (see the module docstring).

    Example:
        >>> from gradtape.nn import init
        >>> float(abs(init.glorot_uniform((2, 2), seed=0)).max()) <= 6 ** 0.5 / 2
        True
    """
    shape, dtype = _args(shape, dtype, kind, "glorot_uniform")
    fi, fo = fans(shape, kind)
    a = math.sqrt(6.0 / max(fi + fo, 1))  # (a fan of 0: an empty array)
    return _on_backend(_rng(seed).uniform(-a, a, size=shape), dtype)


def glorot_normal(shape: tuple[int, ...], seed: Seed = None, dtype: DTypeLike = np.float32,
                  kind: str = "dense") -> Array:
    """Normal with std ``sqrt(2 / (fan_in + fan_out))``.

    Example:
        >>> from gradtape.nn import init
        >>> init.glorot_normal((4, 4), seed=0).dtype
        dtype('float32')
    """
    shape, dtype = _args(shape, dtype, kind, "glorot_normal")
    fi, fo = fans(shape, kind)
    return _on_backend(_rng(seed).normal(0.0, math.sqrt(2.0 / max(fi + fo, 1)), size=shape), dtype)


def he_uniform(shape: tuple[int, ...], seed: Seed = None, dtype: DTypeLike = np.float32,
               kind: str = "dense") -> Array:
    """Uniform in ``[-a, a]``, ``a = sqrt(6 / fan_in)`` (He et al., for ReLU layers).

    Example:
        >>> from gradtape.nn import init
        >>> init.he_uniform((3, 2), seed=1).shape
        (3, 2)
    """
    shape, dtype = _args(shape, dtype, kind, "he_uniform")
    fi, _ = fans(shape, kind)
    a = math.sqrt(6.0 / max(fi, 1))
    return _on_backend(_rng(seed).uniform(-a, a, size=shape), dtype)


def he_normal(shape: tuple[int, ...], seed: Seed = None, dtype: DTypeLike = np.float32,
              kind: str = "dense") -> Array:
    """Normal with std ``sqrt(2 / fan_in)`` (He et al., for ReLU layers).

    Example:
        >>> from gradtape.nn import init
        >>> init.he_normal((3, 2), seed=1).shape
        (3, 2)
    """
    shape, dtype = _args(shape, dtype, kind, "he_normal")
    fi, _ = fans(shape, kind)
    return _on_backend(_rng(seed).normal(0.0, math.sqrt(2.0 / max(fi, 1)), size=shape), dtype)


def normal(shape: tuple[int, ...], seed: Seed = None, dtype: DTypeLike = np.float32,
           kind: str = "dense", stddev: float = 1.0) -> Array:
    """Normal with mean 0 and std ``stddev`` (1 by default: PyTorch's ``Embedding`` init),
    finite and >= 0 (0 gives zeros, as ``gt.random.normal(std=0)``).

    Example:
        >>> from gradtape.nn import init
        >>> init.normal((2, 3), seed=0).shape
        (2, 3)
    """
    shape, dtype = _args(shape, dtype, kind, "normal")
    std = as_real(stddev, "init.normal", "stddev")
    if std < 0:
        raise ValueError(f"init.normal: stddev must be >= 0, got {std}")
    _check_normal_range("init.normal", 0.0, std, dtype)
    return _on_backend(_rng(seed).normal(0.0, std, size=shape), dtype)


def zeros(shape: tuple[int, ...], seed: Seed = None, dtype: DTypeLike = np.float32,
          kind: str = "dense") -> Array:
    """Zeros (``seed`` ignored). Example: ``init.zeros((3,))``."""
    shape, dtype = _args(shape, dtype, kind, "zeros")
    return get_backend().xp.zeros(shape, dtype=dtype)


def ones(shape: tuple[int, ...], seed: Seed = None, dtype: DTypeLike = np.float32,
         kind: str = "dense") -> Array:
    """Ones (``seed`` ignored). Example: ``init.ones((3,))``."""
    shape, dtype = _args(shape, dtype, kind, "ones")
    return get_backend().xp.ones(shape, dtype=dtype)


_BY_NAME = {"glorot_uniform": glorot_uniform, "glorot_normal": glorot_normal,
            "he_uniform": he_uniform, "he_normal": he_normal, "normal": normal, "zeros": zeros,
            "ones": ones,
            "xavier_uniform": glorot_uniform, "xavier_normal": glorot_normal,
            "kaiming_uniform": he_uniform, "kaiming_normal": he_normal}


def get(initializer: str | Initializer) -> Initializer:
    """An initializer by name (``"glorot_uniform"``, ``"he_normal"`` ...) or the callable itself.

    Example:
        >>> from gradtape.nn import init
        >>> init.get("he_normal") is init.he_normal
        True
    """
    if callable(initializer):
        return initializer
    try:
        return _BY_NAME[initializer]
    except KeyError:
        raise ValueError(f"unknown initializer {initializer!r}; expected one of "
                         f"{sorted(_BY_NAME)} or a callable(shape, seed, dtype)") from None
