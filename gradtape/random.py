"""Random numbers: seeded, reproducible generators (``gt.random``).

A :class:`Generator` wraps a NumPy ``numpy.random.Generator`` on the PCG64 bit generator. It
draws on the host and copies the result to the active backend, so **the same seed gives the
same numbers on NumPy and on CuPy**: a model initialized or a batch shuffled on the GPU matches
the CPU run value for value. The price on CuPy is one host-to-device copy per draw (as
``gt.tensor(numpy_array)`` makes); draw large amounts once rather than per step where that
matters. ``Generator(seed)`` draws the stream ``numpy.random.default_rng(seed)`` draws.

The module-level functions (``gt.random.normal(...)``, ...) use a process-wide default
generator, seeded from the operating system at import; ``gt.random.seed(s)`` reseeds it (as
``torch.manual_seed``). Initializers (``gt.nn.init``), ``gt.nn.dropout`` and the layers that
take ``seed=`` accept a :class:`Generator`, and draw from the default one when given no seed.

Inside ``gt.vmap`` a draw follows the vmap's ``randomness``: "error" (the default) refuses it,
"different" draws independent numbers per example (the batch sizes put in front of the
shape), "same" draws once for all examples.

Example:
    >>> import gradtape as gt
    >>> g = gt.random.Generator(0)
    >>> g.normal((2, 3)).shape
    (2, 3)
    >>> bool((gt.random.Generator(0).uniform(4) == gt.random.Generator(0).uniform(4)).numpy().all())
    True
"""

from __future__ import annotations

import functools
import inspect
import operator
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from ._src.autodiff.batched import batch_random, random_levels, shared_draw
from ._src.autodiff.state import STATE, Identity, opaque, tracing
from ._src.backend import get_backend
from ._src.tensor import Tensor, TensorLike, _to_array, _wrap, broadcasts_to, check_dtype
from .ops._util import as_int, as_real
from .ops.creation import ShapeLike, float_dtype, normalize_shape
from .ops.indexing import take
from .ops.shape import _check_size

if TYPE_CHECKING:
    from numpy.typing import DTypeLike

__all__ = ["Generator", "seed", "normal", "uniform", "integers", "permutation", "bernoulli"]


def _check_seed(seed: Any, what: str) -> int | None:
    if seed is None:
        return None
    if isinstance(seed, bool) or not hasattr(seed, "__index__") or len(getattr(seed, "shape", ())):
        # (an integer array has __index__ too: NumPy's error would not name the seed)
        raise TypeError(f"{what}: seed must be an int >= 0 or None, got {seed!r} "
                        f"({type(seed).__name__})")
    s = operator.index(seed)
    if s < 0:
        raise ValueError(f"{what}: seed must be >= 0, got {s}")
    return s


def _number(value: Any, what: str, arg: str) -> float:
    return float(as_real(value, what, arg))


def _to_active(host: np.ndarray) -> Tensor:
    """A host array as a Tensor on the active backend (one copy on CuPy, none on NumPy)."""
    backend = get_backend()
    return _wrap(host if backend.name == "numpy" else backend.xp.asarray(host), backend)


def _replayed(method: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """A draw that a ``gt.function`` program replays as one step (a new draw at each call,
    advancing the generator as in eager mode) instead of freezing the traced numbers."""

    sig = inspect.signature(method)

    @functools.wraps(method)
    def draw(self: Generator, *args: Any, **kwargs: Any) -> Tensor:
        if STATE.vmap_random:  # inside gt.vmap: per its randomness
            levels = random_levels(f"gt.random.Generator.{method.__name__}")
            if levels:
                return batch_random(shared_draw(lambda: per_example(self, levels, args, kwargs)),
                                    levels)
            return shared_draw(lambda: now(self, *args, **kwargs))
        return now(self, *args, **kwargs)

    def per_example(self: Generator, levels: list, args: tuple, kwargs: dict) -> Tensor:
        """The draw with the vmap levels' batch sizes in front of its shape."""
        try:
            bound = sig.bind(self, *args, **kwargs)
        except TypeError:  # a call the method itself rejects, with its own message
            return now(self, *args, **kwargs)
        bound.apply_defaults()
        if "shape" not in bound.arguments:  # permutation
            raise ValueError("gt.random.Generator.permutation: per-example permutations inside "
                             "gt.vmap(randomness='different') are not drawn; draw them before "
                             "the vmap and pass them in as a batched argument")
        shape = bound.arguments["shape"]
        if shape is None:  # bernoulli: p's shape (a batched p is refused by bernoulli)
            p = bound.arguments["p"]
            shape = tuple(p.shape) if isinstance(p, Tensor) else np.shape(p)
        bound.arguments["shape"] = tuple(n for _, n in levels) + normalize_shape(shape, method.__name__)
        return now(*bound.args, **bound.kwargs)

    def now(self: Generator, *args: Any, **kwargs: Any) -> Tensor:
        if not tracing():
            return method(self, *args, **kwargs)
        try:
            shape = sig.bind(self, *args, **kwargs).arguments.get("shape")
        except TypeError:  # a call the method itself rejects, with its own message
            shape = None
        for e in shape if isinstance(shape, (tuple, list)) else (shape,):  # a shape holding
            if isinstance(e, Tensor):  # tensors: read now, where a traced one raises (the
                int(e)  # draw's shape would depend on its value), not inside the draw unseen
        tens = [(i, a) for i, a in enumerate(args) if isinstance(a, Tensor)]
        ktens = [(k, a) for k, a in kwargs.items() if isinstance(a, Tensor)]
        if any(t._level for _, t in tens + ktens):  # a tensor batched by gt.vmap: the method
            # refuses it with its own message (rewrapped for the program it would be a plain
            # tensor of the batch's placeholder)
            return method(self, *args, **kwargs)
        backends = [t._backend for _, t in tens + ktens]

        def run(*arrays: Any) -> Any:
            a2 = list(args)
            k2 = dict(kwargs)
            for (i, t), arr in zip(tens, arrays):
                a2[i] = _wrap(arr, t._backend)
            for (k, t), arr in zip(ktens, arrays[len(tens):]):
                k2[k] = _wrap(arr, t._backend)
            return method(self, *a2, **k2).data

        static = (tuple(a for a in args if not isinstance(a, Tensor)),
                  tuple((k, v) for k, v in sorted(kwargs.items()) if not isinstance(v, Tensor)))
        out = opaque(run, *[t.data for _, t in tens + ktens],
                     key=(method.__name__, Identity(self, "the gt.random.Generator drawn from"),
                          static))
        return _wrap(out, backends[0] if backends else get_backend())

    return draw


#: Standard deviations from the mean that normal()'s samples must keep within the dtype: a
#: standard normal draw beyond 10 has probability 1.5e-23 (none in any run).
_TAIL = 10.0


def _check_normal_range(who: str, mean: float, std: float, dtype: np.dtype) -> None:
    """ValueError unless N(``mean``, ``std``) keeps its samples within ``dtype``'s range
    (``|mean| + 10 std``, see :data:`_TAIL`): past it they would be inf."""
    big = float(np.finfo(dtype).max)
    if not abs(mean) + _TAIL * std <= big:
        raise ValueError(f"{who}: mean and std must keep the samples within {np.dtype(dtype)} "
                         f"(|mean| + {_TAIL:g} std <= {big:.4g}), got mean={mean}, std={std}; "
                         "they would be inf")


class Generator:
    """A seeded random-number generator: NumPy's PCG64 drawn on the host, results on the
    active backend (the same numbers on NumPy and CuPy; see the module docstring).

    Args:
        seed: an int >= 0, or None for fresh entropy from the operating system.

    Each call advances the generator; two generators made with one seed give the same
    sequence of results. ``copy.deepcopy`` snapshots the state and pickling keeps it.

    Example:
        >>> import gradtape as gt
        >>> g = gt.random.Generator(42)
        >>> x = g.normal((3,), std=0.1)          # float32, N(0, 0.1^2)
        >>> k = g.integers(0, 10, shape=(4,))    # int64 in [0, 10)
        >>> x.dtype, k.dtype
        (dtype('float32'), dtype('int64'))
    """

    __slots__ = ("_seq", "_rng")
    _seq: np.random.SeedSequence
    _rng: np.random.Generator

    def __init__(self, seed: int | None = None) -> None:
        self._reseed(_check_seed(seed, "gt.random.Generator"))

    def _reseed(self, seed: int | None) -> None:
        self._seq = np.random.SeedSequence(seed)
        self._rng = np.random.Generator(np.random.PCG64(self._seq))

    @classmethod
    def _from_seq(cls, seq: np.random.SeedSequence) -> Generator:
        g = cls.__new__(cls)
        g._seq = seq
        g._rng = np.random.Generator(np.random.PCG64(seq))
        return g

    def __repr__(self) -> str:
        return f"gt.random.Generator(entropy={self._seq.entropy}, spawn_key={self._seq.spawn_key})"

    # --- draws ---------------------------------------------------------------------------
    @_replayed
    def normal(self, shape: ShapeLike, mean: float = 0.0, std: float = 1.0,
               dtype: DTypeLike | None = None) -> Tensor:
        """Samples of the normal distribution N(``mean``, ``std``²).

        Args:
            shape: an int or a sequence of ints.
            mean, std: finite numbers, ``std >= 0``, with ``|mean| + 10 std`` within the
                dtype's largest value (``ValueError`` otherwise: samples past it would be
                inf; a draw beyond 10 standard deviations has probability 1.5e-23).
            dtype: a float dtype, float32 by default (float32 and float64 are drawn directly
                in that precision; float16 is drawn as float32 and rounded).

        Shapes: ``shape``.

        Example:
            >>> import gradtape as gt
            >>> gt.random.Generator(0).normal((2, 2), mean=1.0).shape
            (2, 2)
        """
        shape = normalize_shape(shape, "normal")
        _check_size("normal", list(shape), 8)
        m = _number(mean, "normal", "mean")
        s = _number(std, "normal", "std")
        if s < 0:
            raise ValueError(f"normal: std must be >= 0, got {s}")
        dt = float_dtype(dtype, "normal")
        _check_normal_range("normal", m, s, dt)
        draw = dt if dt in (np.float32, np.float64) else np.dtype(np.float32)
        z = self._rng.standard_normal(shape, dtype=draw)
        if s != 1.0:
            z *= draw.type(s)
        if m != 0.0:
            z += draw.type(m)
        return _to_active(z.astype(dt, copy=False))

    @_replayed
    def uniform(self, shape: ShapeLike, low: float = 0.0, high: float = 1.0,
                dtype: DTypeLike | None = None) -> Tensor:
        """Samples of the uniform distribution on ``[low, high)``.

        Args:
            shape: an int or a sequence of ints.
            low, high: finite numbers, ``low <= high``.
            dtype: a float dtype, float32 by default. The values are in ``[low, high)``
                with ``low`` and ``high`` as the dtype holds them (float16's 0.1 is 0.09998):
                the draws are scaled in float32 or float64, a narrower float rounds them down,
                and one that rounding takes to ``high`` becomes the float just below it
                (``numpy.random.uniform`` can return ``high``). Bounds that the dtype holds as
                one value (``100`` and ``100.01`` in float16) give that value, as ``low ==
                high`` does.

        Shapes: ``shape``.

        Example:
            >>> import gradtape as gt
            >>> u = gt.random.Generator(0).uniform((1000,), -1.0, 1.0)
            >>> bool(((u >= -1) & (u < 1)).numpy().all())
            True
        """
        shape = normalize_shape(shape, "uniform")
        _check_size("uniform", list(shape), 8)
        lo = _number(low, "uniform", "low")
        hi = _number(high, "uniform", "high")
        if hi < lo:
            raise ValueError(f"uniform: low must be <= high, got low={lo}, high={hi}")
        dt = float_dtype(dtype, "uniform")
        big = float(np.finfo(dt).max)
        if not (-big <= lo and hi <= big):
            raise ValueError(f"uniform: low and high must fit {dt} (|x| <= {big:.4g}), got "
                             f"low={lo}, high={hi}")
        draw = dt if dt in (np.float32, np.float64) else np.dtype(np.float32)
        u = self._rng.random(shape, dtype=draw)
        if (lo, hi) != (0.0, 1.0):
            with np.errstate(over="ignore"):
                span = draw.type(hi - lo)
            if np.isfinite(span):
                u *= span
                u += draw.type(lo)
            else:  # high - low overflows the dtype: (1 - u) * low + u * high stays in range
                u = (1 - u) * draw.type(lo) + u * draw.type(hi)
            out = u.astype(dt, copy=False)
            if dt != draw:  # a narrower float: round down (as below)
                up = out > u
                out[up] = np.nextafter(out[up], dt.type(-np.inf))
            if lo < hi:  # rounding in the scaling can reach high itself: [low, high) holds
                top = out >= dt.type(hi)
                if top.any():
                    out[top] = np.nextafter(dt.type(hi), dt.type(-np.inf))
            # rounding down can pass below low as the dtype holds it (a low that rounds up),
            # and bounds the dtype holds as one value leave no float below high: low then
            np.maximum(out, dt.type(lo), out=out)
            return _to_active(out)
        out = u.astype(dt, copy=False)
        if dt != draw:  # a narrower float: round down, so [0, 1) stays [0, 1) (to nearest, a
            # draw above 1 - 2**-12 would give 1.0 in float16), each value keeping its share
            up = out > u
            out[up] = np.nextafter(out[up], dt.type(0))
        return _to_active(out)

    @_replayed
    def integers(self, low: int, high: int | None = None, shape: ShapeLike = (),
                 dtype: DTypeLike | None = None) -> Tensor:
        """Uniform random integers in ``[low, high)`` (``[0, low)`` when ``high`` is None), as
        ``numpy.random.Generator.integers``.

        Args:
            low, high: ints, ``low < high``, both within ``dtype``'s range.
            shape: an int or a sequence of ints; ``()`` (default) gives a 0-d tensor.
            dtype: an integer dtype, int64 by default.

        Shapes: ``shape``.

        Example:
            >>> import gradtape as gt
            >>> k = gt.random.Generator(0).integers(5, shape=(100,))
            >>> int(k.numpy().min()) >= 0 and int(k.numpy().max()) < 5
            True
        """
        shape = normalize_shape(shape, "integers")
        _check_size("integers", list(shape), 8)
        lo = as_int(low, "integers", "low")
        if high is None:
            lo, hi = 0, lo
        else:
            hi = as_int(high, "integers", "high")
        if lo >= hi:
            raise ValueError(f"integers: the range [low, high) is empty: low={lo}, high={hi}")
        dt = np.dtype(np.int64) if dtype is None else check_dtype(dtype, "integers: dtype")
        if dt.kind not in "iu":
            raise TypeError(f"integers: dtype must be an integer dtype, got {dt}")
        info = np.iinfo(dt)
        if lo < info.min or hi - 1 > info.max:
            raise ValueError(f"integers: [{lo}, {hi}) does not fit {dt} ([{info.min}, {info.max}])")
        return _to_active(self._rng.integers(lo, hi, size=shape, dtype=dt))

    @_replayed
    def _range_permutation(self, n: int) -> Tensor:
        """A random permutation of ``range(n)``, ``n >= 0`` checked (one replayed draw)."""
        return _to_active(self._rng.permutation(n))

    def permutation(self, n_or_tensor: int | TensorLike) -> Tensor:
        """A random permutation of ``range(n)`` (int64), or ``x`` with its first axis shuffled.

        Args:
            n_or_tensor: an int ``n >= 0``, or a tensor (or array-like) of rank >= 1.

        Shapes: ``[n]``; for a tensor, its own shape. Shuffling a tensor is ``gt.take(x, perm,
        axis=0)``, so it is differentiable and stays on ``x``'s backend.

        Example:
            >>> import gradtape as gt
            >>> sorted(gt.random.Generator(0).permutation(5).numpy().tolist())
            [0, 1, 2, 3, 4]
        """
        if isinstance(n_or_tensor, (int, np.integer)) and not isinstance(n_or_tensor, (bool, np.bool_)):
            n = int(n_or_tensor)
            if n < 0:
                raise ValueError(f"permutation: n must be >= 0, got {n}")
            _check_size("permutation", [n], 8)
            return self._range_permutation(n)
        if isinstance(n_or_tensor, (float, np.floating, bool, np.bool_)):  # a float or a bool
            # where the int n goes
            raise TypeError(f"permutation: n must be an int, got {n_or_tensor!r} "
                            f"({type(n_or_tensor).__name__}); pass int(n), or a tensor of rank "
                            ">= 1 to shuffle its first axis")
        if isinstance(n_or_tensor, Tensor):
            x = n_or_tensor
        else:
            try:
                arr, backend = _to_array(n_or_tensor, to_active=True)
            except TypeError as exc:
                raise TypeError(f"permutation: expected an int or a tensor, got "
                                f"{type(n_or_tensor).__name__} ({exc})") from None
            x = _wrap(arr, backend)
        if x.ndim == 0:
            raise ValueError("permutation: a tensor argument must have rank >= 1 (its first axis is "
                             "shuffled), got a 0-d tensor; pass an int n for a permutation of range(n)")
        perm = self._range_permutation(x.shape[0])  # (inside gt.function the draw alone is a
        backend = x._backend  # step of the program: the take stays differentiable)
        if perm._backend is not backend:
            perm = _wrap(backend.xp.asarray(perm._backend.to_host(perm.data)), backend)
        return take(x, perm, axis=0)

    @_replayed
    def bernoulli(self, p: TensorLike, shape: ShapeLike | None = None) -> Tensor:
        """Bool samples that are True with probability ``p``.

        Args:
            p: a probability in ``[0, 1]``, or a tensor (array-like) of them.
            shape: the result's shape; ``p`` must broadcast to it. By default ``p``'s shape.

        Shapes: ``shape`` (default ``p.shape``). A scalar ``p`` gives a tensor on the active
        backend; a tensor ``p`` one on its own backend.

        Example:
            >>> import gradtape as gt
            >>> m = gt.random.Generator(0).bernoulli(0.25, shape=(8,))
            >>> m.dtype, m.shape
            (dtype('bool'), (8,))
        """
        if isinstance(p, (int, float, np.integer, np.floating)) and not isinstance(p, (bool, np.bool_)):
            prob = float(p)
            if not 0.0 <= prob <= 1.0:
                raise ValueError(f"bernoulli: p must be in [0, 1], got {prob}")
            out_shape = () if shape is None else normalize_shape(shape, "bernoulli")
            _check_size("bernoulli", list(out_shape), 8)
            return _to_active(self._rng.random(out_shape) < prob)
        if isinstance(p, Tensor):
            pt = p
        else:
            try:
                arr, backend = _to_array(p, to_active=True)
            except TypeError as exc:
                raise TypeError(f"bernoulli: p must be a probability or a tensor of them, got "
                                f"{type(p).__name__} ({exc})") from None
            pt = _wrap(arr, backend)
        if pt.dtype.kind not in "iuf":
            raise TypeError(f"bernoulli: p must hold real probabilities, got dtype {pt.dtype}")
        if pt._level:  # a per-example p inside gt.vmap: one draw per example is not modelled
            raise ValueError("bernoulli: p is batched by gt.vmap; random draws inside vmap are "
                             "not batched per example (each would reuse the same numbers): draw "
                             "outside vmap with p of the whole batch, and pass the samples in")
        out_shape = tuple(pt.shape) if shape is None else normalize_shape(shape, "bernoulli")
        _check_size("bernoulli", list(out_shape), 8)
        if not broadcasts_to(tuple(pt.shape), out_shape):
            raise ValueError(f"bernoulli: p of shape {tuple(pt.shape)} does not broadcast to shape "
                             f"{out_shape}")
        xp = pt._backend.xp
        pd = pt.data
        if pt.size and bool(((pd < 0) | (pd > 1) | xp.isnan(pd)).any()):
            raise ValueError("bernoulli: p must hold probabilities in [0, 1] (found values outside, "
                             "or NaN)")
        u = self._rng.random(out_shape)
        u_b = u if pt._backend.name == "numpy" else xp.asarray(u)
        return _wrap(xp.asarray(u_b < pd), pt._backend)

    # --- independent streams ---------------------------------------------------------------
    def spawn(self, n: int) -> list[Generator]:
        """``n`` new generators, statistically independent of this one and of each other
        (NumPy's ``SeedSequence.spawn``; TensorFlow calls this ``split``). This generator's own
        stream does not move; the next ``spawn`` gives different children.

        Example:
            >>> import gradtape as gt
            >>> workers = gt.random.Generator(0).spawn(4)   # e.g. one per data-loader worker
            >>> len(workers)
            4
        """
        count = as_int(n, "spawn", "n")
        if count < 0:
            raise ValueError(f"spawn: n must be >= 0, got {count}")
        _check_size("spawn", [count], 1024)  # each child holds a seed sequence and a PCG64
        return [Generator._from_seq(s) for s in self._seq.spawn(count)]


# --------------------------------------------------------------------------- default generator
_DEFAULT = Generator()


def seed(s: int | None) -> None:
    """Reseed the default generator that the module-level functions, unseeded initializers
    and unseeded dropout on the NumPy backend draw from (``torch.manual_seed``), and the
    device-side generator unseeded dropout draws from on CuPy (from a seed derived from
    ``s``: reproducible masks, another stream than the host's); None reseeds from the
    operating system.

    Example:
        >>> import gradtape as gt
        >>> gt.random.seed(0); a = gt.random.normal((3,))
        >>> gt.random.seed(0); b = gt.random.normal((3,))
        >>> bool((a == b).numpy().all())
        True
    """
    s = _check_seed(s, "gt.random.seed")
    if tracing():  # inside gt.function: a step of the program, reseeding at each call
        opaque(functools.partial(_reseed_default, s), key=("gt.random.seed", s))
    else:
        _reseed_default(s)


#: [how many times gt.random.seed ran, the seed the device-side default generators take]
_DEVICE_SEED: list[Any] = [0, None]


def _reseed_default(s: int | None) -> None:
    _DEFAULT._reseed(s)
    _DEVICE_SEED[0] += 1
    _DEVICE_SEED[1] = None if s is None else int(
        np.random.SeedSequence([s, 0x64657669]).generate_state(1, np.uint32)[0])


def _device_seed() -> tuple[int, int | None]:
    """``(epoch, seed)`` for a device-side default generator (dropout's on CuPy): make one
    with ``seed`` (None: from the operating system) when ``epoch`` differs from the one its
    generator was made at (``gt.random.seed`` ran since)."""
    return _DEVICE_SEED[0], _DEVICE_SEED[1]


def normal(shape: ShapeLike, mean: float = 0.0, std: float = 1.0, dtype: DTypeLike | None = None) -> Tensor:
    """:meth:`Generator.normal` on the default generator.

    Example:
        >>> import gradtape as gt
        >>> gt.random.normal((2, 3)).dtype
        dtype('float32')
    """
    return _DEFAULT.normal(shape, mean, std, dtype)


def uniform(shape: ShapeLike, low: float = 0.0, high: float = 1.0, dtype: DTypeLike | None = None) -> Tensor:
    """:meth:`Generator.uniform` on the default generator.

    Example:
        >>> import gradtape as gt
        >>> gt.random.uniform(4).shape
        (4,)
    """
    return _DEFAULT.uniform(shape, low, high, dtype)


def integers(low: int, high: int | None = None, shape: ShapeLike = (), dtype: DTypeLike | None = None) -> Tensor:
    """:meth:`Generator.integers` on the default generator.

    Example:
        >>> import gradtape as gt
        >>> gt.random.integers(0, 3, shape=(5,)).shape
        (5,)
    """
    return _DEFAULT.integers(low, high, shape, dtype)


def permutation(n_or_tensor: int | TensorLike) -> Tensor:
    """:meth:`Generator.permutation` on the default generator.

    Example:
        >>> import gradtape as gt
        >>> gt.random.permutation(3).shape
        (3,)
    """
    return _DEFAULT.permutation(n_or_tensor)


def bernoulli(p: TensorLike, shape: ShapeLike | None = None) -> Tensor:
    """:meth:`Generator.bernoulli` on the default generator.

    Example:
        >>> import gradtape as gt
        >>> gt.random.bernoulli(0.5, shape=(2,)).dtype
        dtype('bool')
    """
    return _DEFAULT.bernoulli(p, shape)


# --------------------------------------------------------------------------- for gradtape.nn
def _numpy_generator(seed: Any, what: str) -> np.random.Generator:
    """The NumPy generator a ``seed=`` argument stands for: a :class:`Generator`'s own (shared,
    advancing), a ``numpy.random.Generator`` itself, a fresh ``default_rng(seed)`` for an int,
    and the default generator's for None."""
    if isinstance(seed, Generator):
        return seed._rng
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is None:
        return _DEFAULT._rng
    if isinstance(seed, bool) or not hasattr(seed, "__index__"):
        raise TypeError(f"{what}: seed must be an int, a gt.random.Generator, a "
                        f"numpy.random.Generator or None, got {type(seed).__name__}")
    return np.random.default_rng(_check_seed(seed, what))
