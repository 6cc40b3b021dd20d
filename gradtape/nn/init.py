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
from ..random import Generator, _numpy_generator

if TYPE_CHECKING:
    from numpy.typing import DTypeLike

__all__ = ["fans", "glorot_uniform", "glorot_normal", "he_uniform", "he_normal", "normal", "zeros", "ones",
           "get", "Initializer", "Seed"]

#: A seed for an initializer: an int, a ``gt.random.Generator`` or ``numpy.random.Generator``
#: (shared, advancing), or None (``gt.random``'s default generator).
Seed = int | Generator | np.random.Generator | None
#: An initializer: ``f(shape, seed=None, dtype=np.float32, kind="dense") -> backend array``.
Initializer = Callable[..., Array]


def fans(shape: tuple[int, ...], kind: str = "dense") -> tuple[int, int]:
    """``(fan_in, fan_out)`` of a kernel: ``kind="dense"`` for ``[in, out]`` (any leading
    dims), ``"conv"`` for OIHW ``[O, I, kh, kw]``."""
    shape = tuple(int(s) for s in shape)
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
    fi, fo = fans(shape, kind)
    a = math.sqrt(6.0 / (fi + fo))
    return _on_backend(_rng(seed).uniform(-a, a, size=shape), dtype)


def glorot_normal(shape: tuple[int, ...], seed: Seed = None, dtype: DTypeLike = np.float32,
                  kind: str = "dense") -> Array:
    """Normal with std ``sqrt(2 / (fan_in + fan_out))``.

    Example:
        >>> from gradtape.nn import init
        >>> init.glorot_normal((4, 4), seed=0).dtype
        dtype('float32')
    """
    fi, fo = fans(shape, kind)
    return _on_backend(_rng(seed).normal(0.0, math.sqrt(2.0 / (fi + fo)), size=shape), dtype)


def he_uniform(shape: tuple[int, ...], seed: Seed = None, dtype: DTypeLike = np.float32,
               kind: str = "dense") -> Array:
    """Uniform in ``[-a, a]``, ``a = sqrt(6 / fan_in)`` (He et al., for ReLU layers).

    Example:
        >>> from gradtape.nn import init
        >>> init.he_uniform((3, 2), seed=1).shape
        (3, 2)
    """
    fi, _ = fans(shape, kind)
    a = math.sqrt(6.0 / fi)
    return _on_backend(_rng(seed).uniform(-a, a, size=shape), dtype)


def he_normal(shape: tuple[int, ...], seed: Seed = None, dtype: DTypeLike = np.float32,
              kind: str = "dense") -> Array:
    """Normal with std ``sqrt(2 / fan_in)`` (He et al., for ReLU layers).

    Example:
        >>> from gradtape.nn import init
        >>> init.he_normal((3, 2), seed=1).shape
        (3, 2)
    """
    fi, _ = fans(shape, kind)
    return _on_backend(_rng(seed).normal(0.0, math.sqrt(2.0 / fi), size=shape), dtype)


def normal(shape: tuple[int, ...], seed: Seed = None, dtype: DTypeLike = np.float32,
           kind: str = "dense", stddev: float = 1.0) -> Array:
    """Normal with mean 0 and std ``stddev`` (1 by default: PyTorch's ``Embedding`` init).

    Example:
        >>> from gradtape.nn import init
        >>> init.normal((2, 3), seed=0).shape
        (2, 3)
    """
    return _on_backend(_rng(seed).normal(0.0, float(stddev), size=shape), dtype)


def zeros(shape: tuple[int, ...], seed: Seed = None, dtype: DTypeLike = np.float32,
          kind: str = "dense") -> Array:
    """Zeros (``seed`` ignored). Example: ``init.zeros((3,))``."""
    return get_backend().xp.zeros(shape, dtype=dtype)


def ones(shape: tuple[int, ...], seed: Seed = None, dtype: DTypeLike = np.float32,
         kind: str = "dense") -> Array:
    """Ones (``seed`` ignored). Example: ``init.ones((3,))``."""
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
