"""Modules: objects that hold Variables and compute with them.

A :class:`Module` finds its Variables by walking its attributes, including lists, tuples,
dicts and nested modules, in a deterministic order (attribute definition order, list order,
dict insertion order); each Variable is reported once under its first path
(``"layers.0.kernel"``). Those paths name the arrays in ``.npz`` checkpoints.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import functools
import inspect
import io
import math
import operator
import os
import stat
import struct
import types
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from .. import ops
from .._src.autodiff.state import STATE, flag_changed, refuse_in_trace, tracing
from .._src.errors import PeerName, TracingError, as_flag
from .._src.tensor import FROZEN_BY_MODULE, Tensor, Variable
from ..ops._util import as_int, as_real, one
from ..ops.creation import float_dtype
from ..optimizers import Optimizer, _cast_entry, _check_keywords, _checkpoint_dtype_error, is_hyper_key
from ..random import Generator, _check_seed, _numpy_generator
from . import init as _init
from .conv import (
    _check_image,
    _pair,
    adaptive_avg_pool2d,
    avg_pool2d,
    check_settings,
    conv1d,
    conv2d,
    conv_transpose2d,
    max_pool2d,
)
from .functional import batch_norm, dropout, embedding, layer_norm, softmax

__all__ = ["Module", "Dense", "Linear", "Conv1D", "Conv2D", "Conv2DTranspose", "Sequential", "Flatten",
           "Dropout", "MaxPool2D", "AvgPool2D", "GlobalAveragePooling2D", "LayerNorm", "BatchNorm",
           "Embedding", "save", "load"]


def _identity(x: Any) -> Any:
    """The ``"linear"`` activation (a named function, so layers using it pickle)."""
    return x


_ACTIVATIONS: dict[str, Callable] = {
    "relu": ops.relu, "tanh": ops.tanh, "sigmoid": ops.sigmoid, "gelu": ops.gelu,
    "silu": ops.silu, "swish": ops.silu, "softplus": ops.softplus, "elu": ops.elu,
    "leaky_relu": ops.leaky_relu, "softmax": softmax, "linear": _identity,
}


def _activation(act: Any) -> Callable | None:
    if act is None or callable(act):
        return act
    try:
        return _ACTIVATIONS[act]
    except KeyError:
        raise ValueError(f"unknown activation {act!r}; expected one of {sorted(_ACTIVATIONS)}, "
                         "None, or a callable") from None


def _one_stream(seed: Any, layer: str, *inits: Any) -> Any:
    """A layer's ``seed`` as one stream for its built-in initializers ``inits``: an int stands
    for one fresh ``numpy.random.default_rng(seed)``, from which the kernel is drawn first (the
    values the int alone gives) and a random bias after it (two generators seeded alike made
    the bias repeat the kernel's first draws, scaled). Generators and None pass through, and
    so does an int given to a custom initializer (a callable may do arithmetic on it)."""
    if seed is None or isinstance(seed, (Generator, np.random.Generator)) or not all(
            isinstance(f, str) for f in inits):
        return seed
    return _numpy_generator(seed, layer)


def _training_param(forward: Any) -> tuple[int | None, Any]:
    """Where the callable ``forward`` (a module's bound ``forward``, or whatever replaced it:
    a ``gt.function`` of it, a partial) takes ``training`` (Keras's ``call(self, x,
    training=False)``) and its default: ``(position among the call's arguments, default)``,
    -1 for a keyword-only parameter (or one a partial binds by keyword, its value the
    default), ``(None, None)`` without one. Kept on plain functions
    (``_gt_training_param``, with the position among the function's own parameters)."""
    skip = 0
    bound: list[Any] = []  # a partial's training= keyword
    for _ in range(8):  # unwrap: partials (their arguments come first), gt.function (its
        # Python function), bound methods (self comes first)
        if isinstance(forward, functools.partial):
            skip += len(forward.args)
            if "training" in forward.keywords and not bound:
                bound.append(forward.keywords["training"])
            forward = forward.func
        elif getattr(forward, "__name__", "") == "__call__" and \
                hasattr(getattr(forward, "__self__", None), "python_function"):
            forward = forward.__self__.python_function
        elif hasattr(forward, "python_function"):
            forward = forward.python_function
        elif hasattr(forward, "__func__"):
            skip += 1
            forward = forward.__func__
        else:
            break
    plain = isinstance(forward, types.FunctionType)
    known = getattr(forward, "_gt_training_param", None) if plain else None
    if known is None:
        try:
            params = list(inspect.signature(forward).parameters.values())
        except (TypeError, ValueError):  # a builtin or an object without a signature
            params = []
        known = (None, None)
        for i, p in enumerate(params):
            if p.name == "training" and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                                   inspect.Parameter.KEYWORD_ONLY):
                known = (i if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD else -1,
                         _flag_default(p.default))
        if plain:
            forward._gt_training_param = known
    at, default = known
    if at is None:
        return None, None
    if bound:  # passed by keyword by the partial (a call's own keyword replaces it)
        return -1, _flag_default(bound[0])
    if at < 0:
        return at, default
    return (at - skip, default) if at >= skip else (None, None)  # (training bound already)


def _flag_default(value: Any) -> bool | None:
    """A ``training`` default as a mode: a bool, else None (no mode)."""
    return bool(value) if isinstance(value, (bool, np.bool_)) else None


def _refuse_positional_mode(module: Any, args: tuple, kwargs: dict) -> None:
    """Raise a TypeError naming ``training`` when ``module``'s forward, which has no
    ``training`` parameter, takes the call without its last positional argument, a bool, but
    not with it (``Dropout(0.5)(x, True)``: Keras's positional mode); else return (the
    forward's own bool argument, or another mismatch that Python's own error describes)."""
    try:
        sig = inspect.signature(module.forward)
    except (TypeError, ValueError):  # (no signature to bind to)
        return
    try:
        sig.bind(*args, **kwargs)
        return
    except TypeError:
        pass
    try:
        sig.bind(*args[:-1], **kwargs)
    except TypeError:
        return
    name = type(module).__name__
    raise TypeError(f"{name}.__call__: got {args[-1]!r} as positional argument {len(args)} "
                    f"(counting from 1), which {name}.forward does not take; pass the mode by "
                    f"keyword: training={args[-1]!r}")


#: Keras's and PyTorch's keywords for the built-in layers: (gradtape's argument, the hint);
#: the hint is dropped where the layer has no such argument
_LAYER_PEER_ARGS = {
    "units": ("out_features", "Keras's units is out_features, after the input size: "
                              "Dense(in_features, out_features)"),
    "filters": ("out_channels", "Keras's filters is out_channels, after the input channels: "
                                "Conv2D(in_channels, out_channels, kernel_size)"),
    "kernel_initializer": ("kernel_init", "write kernel_init=... (Keras's kernel_initializer)"),
    "bias_initializer": ("bias_init", "write bias_init=... (Keras's bias_initializer)"),
    "bias": ("use_bias", "write use_bias=... (PyTorch's bias)"),
    "epsilon": ("eps", "write eps=... (Keras's epsilon)"),
    "p": ("rate", "write rate=... (PyTorch's p)"),
    "strides": ("stride", "write stride=... (Keras's strides)"),
    "dilation_rate": ("dilation", "write dilation=... (Keras's dilation_rate)"),
    "pool_size": ("kernel_size", "write kernel_size=... (Keras's pool_size)"),
    "input_dim": ("num_embeddings", "write num_embeddings=... (Keras's input_dim)"),
    "output_dim": ("dim", "write dim=... (Keras's output_dim)"),
    "embedding_dim": ("dim", "write dim=... (PyTorch's embedding_dim)"),
}


class Module:
    """Base class for models and layers: subclasses set Variables and sub-modules as
    attributes (directly or inside lists/tuples/dicts) and define ``forward``.

    Attributes:
        training: True by default; :meth:`train`/:meth:`eval` set it on this module and every
            sub-module, however deeply nested (:class:`Dropout` drops only while training,
            :class:`BatchNorm` uses batch statistics while training and its running
            statistics in eval). It is not a Variable and is not saved in checkpoints.

    Example:
        >>> import gradtape as gt
        >>> class Affine(gt.nn.Module):
        ...     def __init__(self):
        ...         self.w = gt.Variable([2.0])
        ...         self.b = gt.Variable([1.0])
        ...     def forward(self, x):
        ...         return x * self.w + self.b
        >>> m = Affine()
        >>> m(gt.tensor([3.0])).numpy(), [n for n, _ in m.named_variables()]
        (array([7.], dtype=float32), ['w', 'b'])
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # the built-in layers' constructors name gradtape's spelling of a Keras or PyTorch
        # keyword (Dense(units=3), Conv2D(filters=8)), where Python would only say "unexpected
        # keyword argument"; a user's own module keeps its constructor as written
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if cls.__module__ != __name__ or init is None or getattr(init, "_gt_names_keywords", False):
            return

        @functools.wraps(init)
        def checked(self: Any, *args: Any, **kw: Any) -> None:
            if kw:
                _check_keywords(type(self).__name__, init, kw, _LAYER_PEER_ARGS)
            init(self, *args, **kw)

        checked._gt_names_keywords = True  # type: ignore[attr-defined]
        cls.__init__ = checked  # type: ignore[method-assign]

    # PyTorch's nn.Module names, each saying what does it here (see PeerName)
    parameters = PeerName("m.trainable_variables (m.variables also lists the non-trainable ones)")
    named_parameters = PeerName("m.named_variables()")
    state_dict = PeerName("gt.nn.save(path, m) or m.save(path) writes a checkpoint; "
                          "dict(m.named_variables()) maps names to Variables")
    load_state_dict = PeerName("gt.nn.load(path, m) or m.load(path)")
    zero_grad = PeerName("none is needed: tape.gradient returns fresh gradients, nothing accumulates")
    cuda = PeerName("build the model under gt.use_backend(\"cupy\") (a Variable lives on a backend)")

    @property
    def training(self) -> bool:
        """Whether the module is in training mode (:meth:`train`, :meth:`eval`); while a call
        ``module(x, training=...)`` runs, that argument (in the calling thread). A
        ``gt.function`` step that read the flag traces again when it changes."""
        mode = STATE.call_mode
        if mode is not None:  # (a value of the step's own code, or of its signature)
            return mode
        value = self.__dict__.get("_gt_training", True)
        tr = STATE.trace
        if tr is not None and not tr.suspended:
            tr.flag(self, "training", value)
        return value

    @training.setter
    def training(self, mode: bool) -> None:
        mode = as_flag(mode, type(self).__name__, "training")
        changed = mode is not self.__dict__.get("_gt_training", True)
        self.__dict__["_gt_training"] = mode
        if changed:
            flag_changed()
        tr = STATE.trace
        if tr is not None and not tr.suspended:  # a step that sets the mode itself
            tr.flag_set(self, "training", mode)  # (model.train() in train_step): set at each call

    @property
    def trainable(self) -> bool:
        """Whether any Variable of the module (and its sub-modules) is trainable (True for a
        module without Variables). Setting it False freezes every trainable one, as Keras's
        ``layer.trainable = False`` does; setting it True trains again the ones such a setting
        froze, on this module or any inside it, unless set by hand since (running statistics
        and other Variables made non-trainable stay so; in this process: not across pickling or
        copies). Set it after the Variables exist: made later, they are trainable. Unlike Keras it
        leaves a :class:`BatchNorm`'s mode as it is (use :meth:`eval` or ``training=False``
        for its running statistics).

        Example:
            >>> import gradtape as gt
            >>> m = gt.nn.Dense(2, 3, seed=0)
            >>> m.trainable = False
            >>> len(m.trainable_variables), m.trainable
            (0, False)
        """
        variables = self.variables
        return not variables or any(v.trainable for v in variables)

    @trainable.setter
    def trainable(self, value: bool) -> None:
        if value is None:  # (as_flag takes None for off: here it would freeze silently)
            raise TypeError(f"{type(self).__name__}: trainable must be True or False, got None")
        flag = as_flag(value, type(self).__name__, "trainable")
        tr = STATE.trace
        if tr is not None and not tr.suspended:
            # set inside a gt.function step: the program sets the module's flag again at each
            # call (its marks included, which a later trainable = True reads), not each
            # Variable's alone (a replay then left no mark, and D.trainable = True in a GAN's
            # other step trained nothing); each Variable still counts as set by the step
            variables = self.variables
            for v in variables:
                tr.set_by_step(v, "trainable", v._trainable)
            tr.suspended += 1
            try:
                self._set_trainable(flag, variables)
            finally:
                tr.suspended -= 1
            tr.flag_set(self, "trainable", flag)
            return
        self._set_trainable(flag, self.variables)

    def _set_trainable(self, flag: bool, variables: list[Variable]) -> None:
        for v in variables:
            if not flag and v.trainable:
                v.trainable = False
                FROZEN_BY_MODULE[v._id] = v
            elif flag and FROZEN_BY_MODULE.get(v._id) is v:
                v.trainable = True  # (which forgets the mark)

    def __setstate__(self, state: Any) -> None:
        # (a module pickled when ``training`` was a plain attribute keeps its mode)
        d, slots = state if isinstance(state, tuple) else (state, None)
        if d:
            d = dict(d)
            if "training" in d:
                d.setdefault("_gt_training", bool(d.pop("training")))
            self.__dict__.update(d)
        for key, value in (slots or {}).items():
            object.__setattr__(self, key, value)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Apply the module to its input(s): ``module(x)`` calls this. Each layer overrides
        it; its class docstring gives the shapes."""
        hint = " (Keras's call() is named forward() here)" if hasattr(self, "call") else ""
        raise NotImplementedError(f"{type(self).__name__} must define forward(){hint}")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """``forward(*args, **kwargs)``. Keras's ``training=True``/``False`` runs this call in
        that mode: every module's :attr:`training` reads it while the call runs (in this
        thread; sub-modules and any other module called from it, as in a Keras call
        context), and the modules' own flags are left as they are. ``training=None`` is as
        if it were not given. A ``forward`` with a ``training`` parameter (by keyword or by
        position) receives the mode, also from an enclosing call when not given; with neither,
        its own default (as in Keras), whatever the module's :attr:`training`.

        Raises:
            TypeError: ``training`` is not a flag (a string, a number other than 0 and 1, a
                list), or is given both by position and by keyword.

        Example:
            >>> import gradtape as gt
            >>> drop = gt.nn.Dropout(0.5, seed=0)
            >>> x = gt.ones((1, 4))
            >>> drop(x, training=False).numpy(), drop.training
            (array([[1., 1., 1., 1.]], dtype=float32), True)
        """
        if not kwargs and STATE.call_mode is None and len(args) < 2:  # (the common call)
            cls = type(self)
            forward = cls.forward
            if forward is not cls._gt_forward:  # (first call of this class, or a forward
                cls._gt_forward = forward  # assigned to it since)
                cls._gt_keras = _training_param(forward)[0] is not None
            if not cls._gt_keras and "forward" not in self.__dict__:
                return self.forward(*args)
        return self._call_in_mode(args, kwargs)

    #: The class's ``forward`` (as last seen by a call) and whether it takes ``training``.
    _gt_forward: Any = None
    _gt_keras = False

    def _call_in_mode(self, args: tuple, kwargs: dict) -> Any:
        at, default = _training_param(self.forward)
        pos = at if at is not None and 0 <= at < len(args) else -1  # training's position
        if "training" in kwargs:
            if pos >= 0:
                raise TypeError(f"{type(self).__name__}.__call__: training given both by "
                                f"position ({args[pos]!r}) and by keyword "
                                f"({kwargs['training']!r})")
            mode = kwargs.pop("training")
        else:
            mode = args[pos] if pos >= 0 else None
            if at is None and len(args) >= 2 and isinstance(args[-1], (bool, np.bool_)):
                _refuse_positional_mode(self, args, kwargs)
        if isinstance(mode, Tensor) and tracing():
            raise TracingError(f"{type(self).__name__}.__call__: training must be a Python bool "
                               "inside gt.function (a tensor's value is not known while the "
                               "step is traced), got a Tensor; pass True or False, or a Python "
                               "argument of the step")
        if mode is None:  # as if not given: the enclosing call's mode, else (Keras) the
            mode = STATE.call_mode  # forward's own default, which its sub-modules then see
            if mode is None:
                mode = default
        else:
            mode = as_flag(mode, f"{type(self).__name__}.__call__", "training")
        if mode is None:
            return self.forward(*args, **kwargs)
        if pos >= 0:
            args = args[:pos] + (mode,) + args[pos + 1:]
        elif at is not None:
            kwargs["training"] = mode
        outer = STATE.call_mode
        STATE.call_mode = mode
        try:
            return self.forward(*args, **kwargs)
        finally:
            STATE.call_mode = outer

    # --- traversal ------------------------------------------------------------------------
    def _walk(self, prefix: str, seen_modules: set) -> Iterator[tuple[str, Any]]:
        if id(self) in seen_modules:
            return
        seen_modules.add(id(self))
        yield prefix, self
        for key, value in _attributes(self):
            yield from _walk_value(value, f"{prefix}{key}", seen_modules)

    def named_variables(self) -> list[tuple[str, Variable]]:
        """``[(path, variable), ...]`` in deterministic order, each Variable once."""
        out: list[tuple[str, Variable]] = []
        seen: set[int] = set()
        for path, obj in self._walk("", set()):
            if isinstance(obj, Variable) and id(obj) not in seen:
                seen.add(id(obj))
                out.append((path, obj))
        return out

    @property
    def variables(self) -> list[Variable]:
        """Every Variable of this module and its sub-modules (trainable or not)."""
        return [v for _, v in self.named_variables()]

    @property
    def trainable_variables(self) -> list[Variable]:
        """The Variables with ``trainable=True``: what an optimizer updates."""
        return [v for _, v in self.named_variables() if v.trainable]

    @property
    def non_trainable_variables(self) -> list[Variable]:
        """The Variables with ``trainable=False``."""
        return [v for _, v in self.named_variables() if not v.trainable]

    def submodules(self) -> list[Module]:
        """Every nested Module (not including ``self``), in traversal order."""
        return [m for p, m in self._walk("", set()) if isinstance(m, Module) and m is not self]

    def train(self, mode: bool = True) -> Module:
        """Set ``training = mode`` on this module and every sub-module (recursively: through
        attributes, lists, tuples, dicts and nested modules); returns ``self``.

        Example:
            >>> import gradtape as gt
            >>> m = gt.nn.Sequential([gt.nn.Sequential([gt.nn.BatchNorm(2)]), gt.nn.Dropout(0.5)])
            >>> m.eval()[0][0].training, m.train()[0][0].training
            (False, True)
        """
        mode = as_flag(mode, f"{type(self).__name__}.train", "mode")
        for m in [self, *self.submodules()]:
            m.training = mode
        return self

    def eval(self) -> Module:
        """``train(False)``: dropout off, batch norm on its running statistics; returns ``self``."""
        return self.train(False)

    def num_parameters(self) -> int:
        """Total number of elements of the trainable Variables."""
        return int(sum(v.size for v in self.trainable_variables))

    # --- checkpoints ----------------------------------------------------------------------
    def save(self, path: str | os.PathLike, optimizer: Any = None) -> str:
        """Write every Variable (and, given ``optimizer``, its per-variable state and step
        count) to an ``.npz`` file. Returns the path written. See :func:`save`."""
        return save(path, self, optimizer)

    def load(self, path: str | os.PathLike, optimizer: Any = None) -> Module:
        """Restore what :meth:`save` wrote, in place. See :func:`load`."""
        load(path, self, optimizer)
        return self

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.num_parameters()} parameters)"


def _slot_names(cls: type) -> tuple[str, ...]:
    """The attribute names the ``__slots__`` of ``cls`` and its bases declare (private ones
    mangled), once per class."""
    names = _SLOT_NAMES.get(cls)
    if names is None:
        found = []
        for c in cls.__mro__:
            slots = c.__dict__.get("__slots__", ())
            for key in (slots,) if isinstance(slots, str) else slots:
                if key in ("__dict__", "__weakref__"):
                    continue
                if key.startswith("__") and not key.endswith("__"):  # a private name, mangled
                    key = f"_{c.__name__.lstrip('_')}{key}"
                found.append(key)
        names = _SLOT_NAMES[cls] = tuple(found)
    return names


_SLOT_NAMES: dict[type, tuple[str, ...]] = {}


def _attributes(module: Module) -> Iterable[tuple[str, Any]]:
    """A module's attributes as the traversals see them: its ``__dict__`` (the training flag
    among them, a bool the traversals pass over) and the ``__slots__`` its classes declare.
    (``train()`` walks the modules at every step: no copy where there are no slots.)"""
    slots = _slot_names(type(module))
    if not slots:
        return vars(module).items()
    return [*vars(module).items(), *((key, getattr(module, key)) for key in slots if hasattr(module, key))]


def _walk_value(value: Any, path: str, seen_modules: set) -> Iterator[tuple[str, Any]]:
    cls = value.__class__
    if cls is int or cls is float or cls is str or cls is bool or value is None:
        return  # (most attributes: sizes, rates, names)
    if isinstance(value, Variable):
        yield path, value
    elif isinstance(value, Module):
        yield from value._walk(path + ".", seen_modules)
    elif isinstance(value, (list, tuple, dict)):
        if id(value) in seen_modules:  # a container met again (one that holds itself)
            return
        seen_modules.add(id(value))
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for k, v in items:
            yield from _walk_value(v, f"{path}.{k}", seen_modules)


def _strip(path: str) -> str:
    return path[:-1] if path.endswith(".") else path


# --------------------------------------------------------------------------- layers
def _size(value: Any, layer: str, name: str) -> int:
    """A layer size: a positive int (a float such as 2.5 is refused, never truncated)."""
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise TypeError(f"{layer}: {name} must be a positive int, got {value!r}")
    n = int(value)
    if n < 1:
        raise ValueError(f"{layer}: {name} must be a positive int, got {n}")
    return n


def _autocast(x: Any, like: Variable | None) -> Tensor:
    """A layer's input as a Tensor; a floating one of another dtype than the layer's Variable
    ``like`` cast to its dtype, as Keras layers autocast their inputs: a float64 NumPy batch
    (NumPy's default) into a float32 model would otherwise run the whole step in float64, at
    several times the cost, with float64 activations. The cast is recorded, so a gradient with
    respect to the input comes back in the input's own dtype. Other inputs (integers, a layer
    without Variables) as they are."""
    if not isinstance(x, Tensor):
        if (like is not None and type(x) is np.ndarray and x.dtype.kind == "f"
                and x.dtype != like.dtype):
            x = x.astype(like.dtype)  # (a host batch: cast before it becomes a Tensor)
        x = one(x)
    if like is not None and x.dtype.kind == "f" and x.dtype != like.dtype:
        x = ops.astype(x, like.dtype)
    return x


class Dense(Module):
    """Fully connected layer ``activation(x @ kernel + bias)`` (Keras layout).

    Args:
        in_features: size of the input's last axis.
        out_features: size of the output's last axis.
        activation: None, a name (``"relu"``, ``"tanh"``, ...) or a callable.
        use_bias: add a bias.
        kernel_init / bias_init: initializer name or callable ``(shape, seed, dtype)``.
        seed: for the initializers: an int (one stream: the kernel, then the bias), a
            ``gt.random.Generator`` or a ``numpy.random.Generator`` (shared, advancing), or
            None (``gt.random``'s default generator).
        dtype: Variable dtype (float32 by default).

    Shapes: ``[..., in_features] -> [..., out_features]``; ``kernel[in, out]``, ``bias[out]``.

    Example:
        >>> import gradtape as gt
        >>> gt.nn.Dense(3, 2, seed=0)(gt.tensor([[1.0, 2.0, 3.0]])).shape
        (1, 2)
    """

    def __init__(self, in_features: int, out_features: int, activation: Any = None,
                 use_bias: bool = True, kernel_init: Any = "glorot_uniform",
                 bias_init: Any = "zeros", seed: Any = None, dtype: Any = np.float32) -> None:
        dtype = float_dtype(dtype, "Dense")
        self.in_features = _size(in_features, "Dense", "in_features")
        self.out_features = _size(out_features, "Dense", "out_features")
        self.activation = _activation(activation)
        seed = _one_stream(seed, type(self).__name__, kernel_init, bias_init)
        self.kernel = Variable(_init.get(kernel_init)((self.in_features, self.out_features),
                                                      seed=seed, dtype=dtype), name="kernel")
        self.bias = (Variable(_init.get(bias_init)((self.out_features,), seed=seed, dtype=dtype),
                              name="bias") if as_flag(use_bias, type(self).__name__, "use_bias") else None)

    def forward(self, x: Any) -> Tensor:
        x = _autocast(x, self.kernel)
        if x.ndim == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"Dense: expected input [..., {self.in_features}], got shape {x.shape}")
        y = ops.matmul(x, self.kernel)
        if self.bias is not None:
            y = y + self.bias
        return self.activation(y) if self.activation is not None else y

    def __repr__(self) -> str:
        return f"Dense({self.in_features}, {self.out_features})"


Linear = Dense


class Conv2D(Module):
    """2-D convolution layer over NCHW images (see :func:`gradtape.nn.conv2d`).

    Args:
        in_channels, out_channels: channel counts.
        kernel_size: int or ``(kh, kw)``.
        stride, padding, dilation, groups: as :func:`gradtape.nn.conv2d`.
        activation, use_bias, kernel_init, bias_init, seed, dtype: as :class:`Dense`.

    Shapes: ``[N, in_channels, H, W] -> [N, out_channels, OH, OW]``; ``kernel[O, I/groups, kh, kw]``.

    Example:
        >>> import gradtape as gt
        >>> conv = gt.nn.Conv2D(1, 4, 3, padding=1, seed=0)
        >>> conv(gt.tensor([[[[0.0] * 8] * 8]] * 2)).shape
        (2, 4, 8, 8)
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Any, stride: Any = 1,
                 padding: Any = 0, dilation: Any = 1, groups: int = 1, activation: Any = None,
                 use_bias: bool = True, kernel_init: Any = "glorot_uniform",
                 bias_init: Any = "zeros", seed: Any = None, dtype: Any = np.float32) -> None:
        dtype = float_dtype(dtype, "Conv2D")
        kh, kw = _kernel_pair(kernel_size, "Conv2D")
        n_in, n_out = _size(in_channels, "Conv2D", "in_channels"), _size(out_channels, "Conv2D", "out_channels")
        groups = _groups(groups, n_in, n_out, "Conv2D")
        check_settings("Conv2D", (kh, kw), stride, padding, dilation)
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        self.activation = _activation(activation)
        shape = (n_out, n_in // groups, kh, kw)
        seed = _one_stream(seed, type(self).__name__, kernel_init, bias_init)
        self.kernel = Variable(_init.get(kernel_init)(shape, seed=seed, dtype=dtype, kind="conv"),
                               name="kernel")
        self.bias = (Variable(_init.get(bias_init)((shape[0],), seed=seed, dtype=dtype),
                              name="bias") if as_flag(use_bias, type(self).__name__, "use_bias") else None)

    def forward(self, x: Any) -> Tensor:
        x = _autocast(x, self.kernel)
        y = conv2d(x, self.kernel, self.bias, stride=self.stride, padding=self.padding,
                   dilation=self.dilation, groups=self.groups)
        return self.activation(y) if self.activation is not None else y

    def __repr__(self) -> str:
        n_out, n_in, kh, kw = self.kernel.shape
        return f"Conv2D({n_in * self.groups}, {n_out}, ({kh}, {kw}))"


def _kernel_pair(kernel_size: Any, layer: str) -> tuple[int, int]:
    if isinstance(kernel_size, (tuple, list)):
        if len(kernel_size) != 2:
            raise ValueError(f"{layer}: kernel_size must be an int or a pair (kh, kw), got {kernel_size!r}")
        kh, kw = kernel_size
    else:
        kh = kw = kernel_size
    return _size(kh, layer, "kernel_size"), _size(kw, layer, "kernel_size")


def _groups(groups: Any, in_channels: int, out_channels: int, layer: str) -> int:
    g = _size(groups, layer, "groups")
    if in_channels % g or out_channels % g:
        raise ValueError(f"{layer}: groups={g} must divide in_channels={in_channels} and "
                         f"out_channels={out_channels}")
    return g


class Conv1D(Module):
    """1-D convolution layer over NCL signals (see :func:`gradtape.nn.conv1d`).

    Args:
        in_channels, out_channels: channel counts.
        kernel_size: int.
        stride, padding, dilation, groups: as :func:`gradtape.nn.conv1d` (``padding``: an int,
            ``(left, right)``, ``"valid"`` or ``"same"``).
        activation, use_bias, kernel_init, bias_init, seed, dtype: as :class:`Dense`
            (``kernel_init`` gets ``kind="conv"``: fans ``I * k`` / ``O * k``).

    Shapes: ``[N, in_channels, L] -> [N, out_channels, OL]``; ``kernel[O, I/groups, k]``,
    ``bias[O]``.

    Example:
        >>> import gradtape as gt
        >>> conv = gt.nn.Conv1D(2, 4, 3, padding="same", seed=0)
        >>> conv(gt.tensor([[[0.0] * 10] * 2] * 5)).shape
        (5, 4, 10)
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Any, stride: Any = 1,
                 padding: Any = 0, dilation: Any = 1, groups: int = 1, activation: Any = None,
                 use_bias: bool = True, kernel_init: Any = "glorot_uniform",
                 bias_init: Any = "zeros", seed: Any = None, dtype: Any = np.float32) -> None:
        dtype = float_dtype(dtype, "Conv1D")
        n_in = _size(in_channels, "Conv1D", "in_channels")
        n_out = _size(out_channels, "Conv1D", "out_channels")
        if isinstance(kernel_size, (tuple, list)) and len(kernel_size) == 1:
            kernel_size = kernel_size[0]
        k = _size(kernel_size, "Conv1D", "kernel_size")
        self.groups = _groups(groups, n_in, n_out, "Conv1D")
        check_settings("Conv1D", (k,), stride, padding, dilation)
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.activation = _activation(activation)
        shape = (n_out, n_in // self.groups, k)
        seed = _one_stream(seed, type(self).__name__, kernel_init, bias_init)
        self.kernel = Variable(_init.get(kernel_init)(shape, seed=seed, dtype=dtype, kind="conv"),
                               name="kernel")
        self.bias = (Variable(_init.get(bias_init)((n_out,), seed=seed, dtype=dtype), name="bias")
                     if as_flag(use_bias, type(self).__name__, "use_bias") else None)

    def forward(self, x: Any) -> Tensor:
        x = _autocast(x, self.kernel)
        y = conv1d(x, self.kernel, self.bias, stride=self.stride, padding=self.padding,
                   dilation=self.dilation, groups=self.groups)
        return self.activation(y) if self.activation is not None else y

    def __repr__(self) -> str:
        n_out, n_in, k = self.kernel.shape
        return f"Conv1D({n_in * self.groups}, {n_out}, {k})"


class Conv2DTranspose(Module):
    """2-D transposed convolution layer over NCHW images (see
    :func:`gradtape.nn.conv_transpose2d`): the adjoint of a :class:`Conv2D` with the same
    geometry, e.g. to upsample by ``stride`` in a decoder.

    Args:
        in_channels, out_channels: channel counts.
        kernel_size: int or ``(kh, kw)``.
        stride, padding, output_padding, dilation, groups: as
            :func:`gradtape.nn.conv_transpose2d` (``output_padding < stride``).
        activation, use_bias, kernel_init, bias_init, seed, dtype: as :class:`Dense`
            (``kernel_init`` gets ``kind="conv"``; for the ``[I, O/groups, kh, kw]`` layout
            that gives PyTorch's fans, ``fan_in = O/groups * kh * kw``).

    Shapes: ``[N, in_channels, H, W] -> [N, out_channels, OH, OW]``,
    ``OH = (H - 1) * sh - 2 * ph + dh * (kh - 1) + output_padding + 1``;
    ``kernel[I, O/groups, kh, kw]`` (PyTorch's layout), ``bias[O]``.

    Example:
        >>> import gradtape as gt
        >>> up = gt.nn.Conv2DTranspose(3, 2, 4, stride=2, padding=1, seed=0)
        >>> up(gt.tensor([[[[0.0] * 5] * 5] * 3])).shape
        (1, 2, 10, 10)
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Any, stride: Any = 1,
                 padding: Any = 0, output_padding: Any = 0, dilation: Any = 1, groups: int = 1,
                 activation: Any = None, use_bias: bool = True,
                 kernel_init: Any = "glorot_uniform", bias_init: Any = "zeros", seed: Any = None,
                 dtype: Any = np.float32) -> None:
        dtype = float_dtype(dtype, "Conv2DTranspose")
        n_in = _size(in_channels, "Conv2DTranspose", "in_channels")
        n_out = _size(out_channels, "Conv2DTranspose", "out_channels")
        kh, kw = _kernel_pair(kernel_size, "Conv2DTranspose")
        self.groups = _groups(groups, n_in, n_out, "Conv2DTranspose")
        check_settings("Conv2DTranspose", (kh, kw), stride, padding, dilation, output_padding)
        self.stride, self.padding, self.output_padding = stride, padding, output_padding
        self.dilation = dilation
        self.activation = _activation(activation)
        shape = (n_in, n_out // self.groups, kh, kw)
        seed = _one_stream(seed, type(self).__name__, kernel_init, bias_init)
        self.kernel = Variable(_init.get(kernel_init)(shape, seed=seed, dtype=dtype, kind="conv"),
                               name="kernel")
        self.bias = (Variable(_init.get(bias_init)((n_out,), seed=seed, dtype=dtype), name="bias")
                     if as_flag(use_bias, type(self).__name__, "use_bias") else None)

    def forward(self, x: Any) -> Tensor:
        x = _autocast(x, self.kernel)
        y = conv_transpose2d(x, self.kernel, self.bias, stride=self.stride, padding=self.padding,
                             output_padding=self.output_padding, groups=self.groups,
                             dilation=self.dilation)
        return self.activation(y) if self.activation is not None else y

    def __repr__(self) -> str:
        n_in, n_out, kh, kw = self.kernel.shape
        return f"Conv2DTranspose({n_in}, {n_out * self.groups}, ({kh}, {kw}))"


class Sequential(Module):
    """Apply layers in order. Layers are Modules or any callables (``gt.relu``).

    Example:
        >>> import gradtape as gt
        >>> m = gt.nn.Sequential([gt.nn.Dense(2, 3, seed=0), gt.relu, gt.nn.Dense(3, 1, seed=1)])
        >>> m(gt.tensor([[1.0, 2.0]])).shape, len(m.variables)
        ((1, 1), 4)
    """

    def __init__(self, *layers: Any) -> None:
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])
        for i, layer in enumerate(layers):
            if not callable(layer):
                raise TypeError(f"Sequential: layer {i} is a {type(layer).__name__}, not callable")
        self.layers = list(layers)

    def forward(self, x: Any) -> Any:
        for layer in self.layers:
            x = layer(x)
        return x

    def __getitem__(self, i: int | slice) -> Any:
        """A layer; a slice gives a ``Sequential`` of those layers (the same layer objects,
        sharing their Variables), as PyTorch's."""
        if isinstance(i, slice):
            return Sequential(self.layers[i])
        n = len(self.layers)
        if isinstance(i, (bool, np.bool_)) or not hasattr(i, "__index__"):
            raise TypeError(f"Sequential: index must be an int or a slice, got {i!r} "
                            f"({type(i).__name__})")
        if not -n <= operator.index(i) < n:  # (IndexError: iteration stops on it)
            raise IndexError(f"Sequential: index {i} is out of range for a Sequential of {n} "
                             f"layer{'s' if n != 1 else ''}")
        return self.layers[i]

    def __len__(self) -> int:
        return len(self.layers)

    def __repr__(self) -> str:
        inner = ", ".join(repr(layer) if isinstance(layer, Module) else getattr(layer, "__name__", "fn")
                          for layer in self.layers)
        return f"Sequential([{inner}])"


class Flatten(Module):
    """Flatten the axes ``start_axis .. end_axis`` (inclusive, negative allowed) into one; by
    default every axis after the first: ``[N, ...] -> [N, prod(...)]``.

    Args:
        start_axis: first axis flattened (1: keep the batch axis).
        end_axis: last axis flattened (-1: the last).

    Shapes: ``[d0, ..., dn] -> [d0, .., d(start-1), prod(d_start .. d_end), d(end+1), ..]``;
    ``ValueError`` when the axes are out of range for the input's rank or ``start`` comes after
    ``end``.

    Example:
        >>> import gradtape as gt
        >>> gt.nn.Flatten()(gt.tensor([[[1.0, 2.0]], [[3.0, 4.0]]])).shape
        (2, 2)
        >>> gt.nn.Flatten(0)(gt.tensor([[1.0, 2.0], [3.0, 4.0]])).shape
        (4,)
    """

    def __init__(self, start_axis: int = 1, end_axis: int = -1) -> None:
        for name, a in (("start_axis", start_axis), ("end_axis", end_axis)):
            if isinstance(a, bool) or not hasattr(a, "__index__"):
                raise TypeError(f"Flatten: {name} must be an int, got {a!r}")
        self.start_axis, self.end_axis = int(start_axis), int(end_axis)

    def forward(self, x: Any) -> Tensor:
        x = ops._util.one(x)
        nd = x.ndim
        start = self.start_axis + nd if self.start_axis < 0 else self.start_axis
        end = self.end_axis + nd if self.end_axis < 0 else self.end_axis
        if not (0 <= start < nd and 0 <= end < nd and start <= end):
            raise ValueError(f"Flatten: start_axis={self.start_axis}, end_axis={self.end_axis} do not "
                             f"select a run of axes of x of shape {x.shape} (rank {nd})")
        merged = math.prod(x.shape[start:end + 1])
        return ops.reshape(x, x.shape[:start] + (merged,) + x.shape[end + 1:])

    def __repr__(self) -> str:
        return f"Flatten({self.start_axis}, {self.end_axis})"


class Dropout(Module):
    """Inverted dropout while ``training`` (see :func:`gradtape.nn.dropout`); identity in eval.

    Args:
        rate: drop probability in ``[0, 1)``.
        seed: an int (the layer keeps its own generator, seeded with it, per array library), a
            ``gt.random.Generator`` (drawn from on every call: the same masks on NumPy and
            CuPy), a ``numpy.random.Generator``, or None (as ``gt.nn.dropout`` without a seed).

    Shapes: any; the output has the input's shape.

    Example:
        >>> import gradtape as gt
        >>> d = gt.nn.Dropout(0.5, seed=0).eval()
        >>> d(gt.tensor([1.0, 2.0])).numpy()
        array([1., 2.], dtype=float32)
    """

    def __init__(self, rate: float, seed: Any = None) -> None:
        self.rate = float(as_real(rate, "Dropout", "rate"))
        if not 0.0 <= self.rate < 1.0:  # (checked again by dropout(): the attribute may change)
            raise ValueError(f"Dropout: rate must be in [0, 1), got {rate}")
        if seed is not None and not isinstance(seed, Generator) and not callable(getattr(seed, "random", None)):
            seed = _check_seed(seed, "Dropout")  # an int (generators draw as they are)
        self.seed = seed
        self._generators: dict = {}

    def forward(self, x: Any) -> Tensor:
        x = ops._util.one(x)
        if self.seed is None or isinstance(self.seed, Generator):
            return dropout(x, self.rate, training=self.training, generator=self.seed)
        xp = x._backend.xp
        # keyed by the array module's name (not its id), so a copied or unpickled layer
        # continues its random stream
        gen = self._generators.get(xp.__name__)
        if gen is None:
            reseeds = getattr(self, "_reseeds", {}).get(xp.__name__, 0)
            seed = self.seed if not reseeds else int(
                np.random.SeedSequence([self.seed, reseeds]).generate_state(1)[0])
            gen = self._generators[xp.__name__] = xp.random.default_rng(seed)
        return dropout(x, self.rate, training=self.training, generator=gen)

    def __getstate__(self) -> dict:
        # (copy.deepcopy and pickle) a generator that cannot be copied, a device library's
        # (CuPy's holds a lock), is dropped here and in the copy alike: both draw on from a new
        # generator seeded with the seed and the count of such copies, so they stay equal (the
        # layer's stream after the copy is not the one it would have drawn without it)
        state = self.__dict__.copy()
        gens = state.get("_generators")
        if gens:
            reseeds = dict(getattr(self, "_reseeds", {}))
            for name, gen in list(gens.items()):
                try:
                    copy.deepcopy(gen)
                except TypeError:
                    del self._generators[name]
                    reseeds[name] = reseeds.get(name, 0) + 1
            self._reseeds = reseeds
            state["_generators"], state["_reseeds"] = dict(self._generators), dict(reseeds)
        return state


class MaxPool2D(Module):
    """Max pooling layer over NCHW images (see :func:`gradtape.nn.max_pool2d`).

    Args:
        kernel_size: int or ``(kh, kw)``.
        stride: int or pair; None (the default) is ``kernel_size`` (non-overlapping windows).
        padding: as :func:`gradtape.nn.max_pool2d` (padding counts as ``-inf``).

    Shapes: ``[N, C, H, W] -> [N, C, OH, OW]``.

    Example:
        >>> import gradtape as gt
        >>> gt.nn.MaxPool2D(2)(gt.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])).numpy()
        array([[[[4.]]]], dtype=float32)
    """

    def __init__(self, kernel_size: Any, stride: Any = None, padding: Any = 0) -> None:
        check_settings("MaxPool2D", _pair(kernel_size, "MaxPool2D", "kernel_size", 1), stride,
                       padding, pool=True)
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding

    def forward(self, x: Any) -> Tensor:
        return max_pool2d(x, self.kernel_size, self.stride, self.padding)


class AvgPool2D(Module):
    """Average pooling layer over NCHW images (see :func:`gradtape.nn.avg_pool2d`).

    Args:
        kernel_size: int or ``(kh, kw)``.
        stride: int or pair; None (the default) is ``kernel_size`` (non-overlapping windows).
        padding: as :func:`gradtape.nn.avg_pool2d` (padding counts as zeros in the mean).

    Shapes: ``[N, C, H, W] -> [N, C, OH, OW]``.

    Example:
        >>> import gradtape as gt
        >>> gt.nn.AvgPool2D(2)(gt.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])).numpy()
        array([[[[2.5]]]], dtype=float32)
    """

    def __init__(self, kernel_size: Any, stride: Any = None, padding: Any = 0) -> None:
        check_settings("AvgPool2D", _pair(kernel_size, "AvgPool2D", "kernel_size", 1), stride,
                       padding, pool=True)
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding

    def forward(self, x: Any) -> Tensor:
        return avg_pool2d(x, self.kernel_size, self.stride, self.padding)


class GlobalAveragePooling2D(Module):
    """Mean over the spatial axes of NCHW images (Keras's layer; PyTorch's
    ``AdaptiveAvgPool2d(1)`` followed by a flatten).

    Args:
        keepdims: keep the two spatial axes (size 1) instead of dropping them.

    Shapes: ``[N, C, H, W] -> [N, C]`` (``[N, C, 1, 1]`` with ``keepdims=True``).

    Example:
        >>> import gradtape as gt
        >>> gt.nn.GlobalAveragePooling2D()(gt.tensor([[[[1.0, 2.0], [3.0, 6.0]]]])).numpy()
        array([[3.]], dtype=float32)
    """

    def __init__(self, keepdims: bool = False) -> None:
        self.keepdims = as_flag(keepdims, type(self).__name__, "keepdims")

    def forward(self, x: Any) -> Tensor:
        x = one(x)
        _check_image(x, type(self).__name__)  # (its errors name this layer, not the function)
        y = adaptive_avg_pool2d(x, 1)
        return y if self.keepdims else ops.reshape(y, y.shape[:2])


def _positive(value: Any, layer: str, name: str) -> float:
    if isinstance(value, (str, bytes, bool)) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not float(value) > 0:
        raise ValueError(f"{layer}: {name} must be a positive number, got {value!r}")
    return float(value)


class LayerNorm(Module):
    """Layer normalization over the trailing axes given by ``normalized_shape``, with a learned
    elementwise scale ``gamma`` (ones) and shift ``beta`` (zeros), as PyTorch's ``LayerNorm``
    (see :func:`gradtape.nn.layer_norm`; biased variance).

    Args:
        normalized_shape: int or tuple: the shape of the trailing axes normalized together.
        eps: positive, added to the variance.
        elementwise_affine: learn ``gamma`` and ``beta`` of shape ``normalized_shape``
            (False: no Variables).
        dtype: Variable dtype.

    Shapes: ``[..., *normalized_shape] -> same``; ``ValueError`` naming both shapes when the
    input's trailing axes differ.

    Example:
        >>> import gradtape as gt
        >>> ln = gt.nn.LayerNorm(2)
        >>> [round(v, 3) for v in ln(gt.tensor([[1.0, 3.0]])).numpy().ravel().tolist()]
        [-1.0, 1.0]
        >>> gt.nn.LayerNorm((2, 3), elementwise_affine=False)(gt.tensor([[[0.0] * 3] * 2] * 4)).shape
        (4, 2, 3)
    """

    def __init__(self, normalized_shape: Any, eps: float = 1e-5, elementwise_affine: bool = True,
                 dtype: Any = np.float32) -> None:
        dtype = float_dtype(dtype, "LayerNorm")
        dims = tuple(normalized_shape) if isinstance(normalized_shape, (tuple, list)) else (normalized_shape,)
        if not dims:
            raise ValueError("LayerNorm: normalized_shape must name at least one axis, got ()")
        self.normalized_shape = tuple(_size(d, "LayerNorm", "normalized_shape") for d in dims)
        self.eps = _positive(eps, "LayerNorm", "eps")
        self.elementwise_affine = as_flag(elementwise_affine, type(self).__name__, "elementwise_affine")
        self.gamma = (Variable(_init.ones(self.normalized_shape, dtype=dtype), name="gamma")
                      if self.elementwise_affine else None)
        self.beta = (Variable(_init.zeros(self.normalized_shape, dtype=dtype), name="beta")
                     if self.elementwise_affine else None)

    def forward(self, x: Any) -> Tensor:
        x = _autocast(x, self.gamma)
        k = len(self.normalized_shape)
        if x.ndim < k or tuple(x.shape[x.ndim - k:]) != self.normalized_shape:
            raise ValueError(f"LayerNorm: expected input [..., {', '.join(map(str, self.normalized_shape))}] "
                             f"(trailing axes {self.normalized_shape}), got shape {x.shape}")
        return layer_norm(x, self.gamma, self.beta, axis=tuple(range(-k, 0)), eps=self.eps)

    def __repr__(self) -> str:
        return f"LayerNorm({self.normalized_shape})"


class BatchNorm(Module):
    """Batch normalization over every axis but the channel axis (PyTorch's ``BatchNorm1d`` and
    ``BatchNorm2d`` in one class, channels-first: ``[N, C]``, ``[N, C, L]``, ``[N, C, H, W]``;
    see :func:`gradtape.nn.batch_norm`).

    While ``training`` (the default; :meth:`Module.train`) it normalizes with the batch's mean
    and biased variance, the gradient flowing through them, and updates the running
    statistics in place, unrecorded: ``running = (1 - momentum) * running + momentum *
    batch_stat`` (the unbiased batch variance for ``running_var``, as PyTorch). In eval
    (:meth:`Module.eval`) it normalizes with the running statistics.

    Args:
        num_features: the number of channels ``C``.
        axis: the channel axis (1; ``-1`` for channels-last inputs).
        momentum: in ``[0, 1]``, the weight of each new batch in the running statistics
            (PyTorch's convention; Keras's ``momentum`` is ``1 -`` this).
        eps: positive, added to the variance.
        affine: learn a per-channel scale ``gamma`` (ones) and shift ``beta`` (zeros).
        dtype: Variable dtype.

    Variables: ``gamma[C]``, ``beta[C]`` (trainable, when ``affine``); ``running_mean[C]``
    (zeros) and ``running_var[C]`` (ones), non-trainable: not in ``trainable_variables`` (the
    optimizer leaves them alone), but in ``variables`` and saved and restored by
    :meth:`Module.save` / :meth:`Module.load`.

    Shapes: ``[N, C, ...] -> same``. ``ValueError`` for a rank below 2, another channel count,
    or one value per channel in training.

    Example:
        >>> import gradtape as gt
        >>> bn = gt.nn.BatchNorm(2)
        >>> y = bn(gt.tensor([[1.0, 10.0], [3.0, 30.0]]))       # training: batch statistics
        >>> [round(v, 3) for v in y.numpy().ravel().tolist()]
        [-1.0, -1.0, 1.0, 1.0]
        >>> bn.running_mean.numpy(), bn.running_var.numpy()
        (array([0.2, 2. ], dtype=float32), array([ 1.1, 20.9], dtype=float32))
        >>> bn.eval()(gt.tensor([[0.2, 2.0]])).numpy()                # eval: running statistics
        array([[0., 0.]], dtype=float32)
    """

    def __init__(self, num_features: int, axis: int = 1, momentum: float = 0.1, eps: float = 1e-5,
                 affine: bool = True, dtype: Any = np.float32) -> None:
        dtype = float_dtype(dtype, "BatchNorm")
        C = _size(num_features, "BatchNorm", "num_features")
        if isinstance(momentum, (str, bytes, bool)) or not isinstance(
                momentum, (int, float, np.integer, np.floating)) or not 0.0 <= float(momentum) <= 1.0:
            raise ValueError(f"BatchNorm: momentum must be a number in [0, 1], got {momentum!r}")
        self.num_features, self.axis, self.momentum = C, as_int(axis, "BatchNorm", "axis"), float(momentum)
        self.eps = _positive(eps, "BatchNorm", "eps")
        self.affine = as_flag(affine, type(self).__name__, "affine")
        self.gamma = Variable(_init.ones((C,), dtype=dtype), name="gamma") if self.affine else None
        self.beta = Variable(_init.zeros((C,), dtype=dtype), name="beta") if self.affine else None
        self.running_mean = Variable(_init.zeros((C,), dtype=dtype), name="running_mean",
                                     trainable=False)
        self.running_var = Variable(_init.ones((C,), dtype=dtype), name="running_var",
                                    trainable=False)

    def forward(self, x: Any) -> Tensor:
        x = _autocast(x, self.running_mean)
        C = self.num_features
        if x.ndim < 2:
            raise ValueError(f"BatchNorm: expected input [N, {C}, ...] (rank >= 2), got shape {x.shape}")
        if not -x.ndim <= self.axis < x.ndim:
            raise ValueError(f"BatchNorm: channel axis {self.axis} is out of range for x of shape "
                             f"{x.shape}")
        if x.shape[self.axis] != C:
            hint = (" (channels-first expected; for channels-last input use BatchNorm(C, axis=-1))"
                    if x.shape[-1] == C else "")
            raise ValueError(f"BatchNorm: expected {C} channels on axis {self.axis}, x of shape "
                             f"{x.shape} has {x.shape[self.axis]}{hint}")
        return batch_norm(x, self.running_mean, self.running_var, self.gamma, self.beta,
                          training=self.training, momentum=self.momentum, eps=self.eps, axis=self.axis)

    def __repr__(self) -> str:
        return f"BatchNorm({self.num_features}, axis={self.axis})"


class Embedding(Module):
    """Lookup table ``[num_embeddings, dim]`` (see :func:`gradtape.nn.embedding`), initialized
    N(0, 1) by default (PyTorch's default).

    Args:
        num_embeddings: the number of rows (ids ``0 .. num_embeddings - 1``).
        dim: the size of each row.
        seed, dtype: as :class:`Dense`.
        table_init: initializer name or callable ``(shape, seed, dtype)``; ``"normal"``.

    Shapes: integer ids ``[...]`` -> ``[..., dim]``; ``table[num_embeddings, dim]``.

    Example:
        >>> import gradtape as gt
        >>> gt.nn.Embedding(100, 16, seed=0)([[1, 2, 3]]).shape
        (1, 3, 16)
    """

    def __init__(self, num_embeddings: int, dim: int, seed: Any = None,
                 dtype: Any = np.float32, table_init: Any = "normal") -> None:
        dtype = float_dtype(dtype, "Embedding")
        shape = (_size(num_embeddings, "Embedding", "num_embeddings"), _size(dim, "Embedding", "dim"))
        self.table = Variable(_init.get(table_init)(shape, seed=seed, dtype=dtype), name="table")

    def forward(self, ids: Any) -> Tensor:
        return embedding(ids, self.table)


# --------------------------------------------------------------------------- checkpoints
# Format: an uncompressed ``.npz`` (a zip of ``.npy`` entries, what ``numpy.savez`` writes): NumPy
# stays the only dependency, the files open with ``numpy.load``, and the zip's central
# directory lets :func:`load` list the entries, read each ``.npy`` header and check every
# declared size before decompressing a byte (never unpickling).
_VAR = "var/"
_OPT = "opt/"
_NPY = ".npy"
_MAX_HEADER = 10000  # bytes: NumPy's own limit for an .npy header
_ITERATIONS_MAX_ITEMSIZE = 16
_READ_PIECE = 1 << 20  # bytes decompressed at a time
_TMP_FLAGS = (os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
              | getattr(os, "O_CLOEXEC", 0))


def _display_paths(module: Module) -> dict[int, str]:
    """id(Variable) -> where it lives, spelled so that dict keys keep their type
    (``d[1]`` vs ``d['1']``), following the traversal of :meth:`Module.named_variables`."""
    out: dict[int, str] = {}
    seen: set[int] = set()

    def visit(value: Any, where: str) -> None:
        if isinstance(value, Variable):
            out.setdefault(id(value), where)
        elif isinstance(value, (Module, list, tuple, dict)):
            if id(value) in seen:
                return
            seen.add(id(value))
            if isinstance(value, Module):
                for key, item in _attributes(value):
                    visit(item, f"{where}.{key}" if where else key)
            elif isinstance(value, dict):
                for k, item in value.items():
                    visit(item, f"{where}[{k!r}]")
            else:
                for i, item in enumerate(value):
                    visit(item, f"{where}[{i}]")

    visit(module, "")
    return out


def _check_optimizer(optimizer: Any, who: str) -> None:
    if optimizer is not None and not isinstance(optimizer, Optimizer):
        raise TypeError(f"{who}: optimizer must be a gradtape.optimizers.Optimizer or None, got "
                        f"{type(optimizer).__name__}")


def _checkpoint_names(module: Module, who: str) -> list[tuple[str, Variable]]:
    """``module``'s ``(checkpoint name, Variable)`` pairs. Distinct Variables whose paths
    coincide (dict keys ``1`` and ``"1"`` both give ``d.1``) raise ValueError naming both."""
    if not isinstance(module, Module):
        raise TypeError(f"{who}: module must be a gradtape.nn.Module, got {type(module).__name__}")
    named = [(_strip(n), v) for n, v in module.named_variables()]
    first: dict[str, Variable] = {}
    clashes = []
    for name, v in named:
        try:  # a zip entry's name: UTF-8, cut at a NUL (the entry could never be read back)
            bad = "\x00" in name or not name.encode("utf-8")
        except UnicodeEncodeError:
            bad = True
        if bad:
            raise ValueError(f"{who}: the Variable path {name!r} holds a NUL or a character "
                             "UTF-8 cannot encode, which a checkpoint entry's name cannot "
                             "keep; rename the attribute or dict key")
        if name in first:
            clashes.append((name, first[name], v))
        else:
            first[name] = v
    if clashes:
        where = _display_paths(module)
        desc = "; ".join(f"{where.get(id(a), name)} and {where.get(id(b), name)} would both be "
                         f"saved as {name!r}" for name, a, b in clashes)
        raise ValueError(f"{who}: {desc}; give every Variable its own path (rename the attribute "
                         "or dict key)")
    return named


def _new_file_mode(path: str) -> int:
    """Permissions for the checkpoint: the replaced file's, else what ``open()`` would give
    (0o666 less the umask; ``mkstemp``'s temporary is 0o600)."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        pass
    umask = 0o022
    try:
        with open("/proc/self/status") as f:  # reading the umask without changing it (Linux)
            for line in f:
                if line.startswith("Umask:"):
                    umask = int(line.split()[1], 8)
                    break
    except (OSError, ValueError, IndexError):
        pass
    return 0o666 & ~umask


def _special_file(path: str) -> bool:
    """Whether ``path`` exists and is neither a regular file nor a folder (a device such as
    ``/dev/null``, a named pipe), through symbolic links."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not stat.S_ISREG(mode) and not stat.S_ISDIR(mode)


def _write_npz(f: Any, arrays: dict[str, np.ndarray]) -> None:
    """``arrays`` as an uncompressed ``.npz`` (a zip of ``.npy`` entries) into open file ``f``."""
    with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for key, arr in arrays.items():
            with zf.open(key + _NPY, "w", force_zip64=True) as entry:
                np.lib.format.write_array(entry, np.asanyarray(arr), allow_pickle=False)


def _write_atomically(path: str, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` as an ``.npz`` at ``path``: a unique temporary in the same folder,
    flushed and fsynced, then ``os.replace``d over ``path``. Concurrent saves to one path (threads
    or processes) each write their own temporary, so ``path`` always holds one complete
    checkpoint; on any failure, KeyboardInterrupt included, the temporary is removed and the old
    file is left as it was (a process killed outright can leave its temporary,
    ``.<name>.<random>.tmp``, but never a partial ``path``).

    As ``open(path, "wb")`` would: a symbolic link is written through (its target replaced,
    the link kept), an existing file this process may not write raises ``PermissionError`` (a
    rename over it would succeed in a writable folder), and a path that is not a regular file
    (a device such as ``/dev/null``, a named pipe) is written to as it is, not replaced by a
    file (nothing to keep whole there). A file with other hard links gets a new inode: its
    other names keep the previous checkpoint."""
    path = os.path.realpath(path)
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise PermissionError(f"save: {path!r} exists and is not writable (read-only); the "
                              "checkpoint was not written")
    if _special_file(path):  # a device or a named pipe: written through, from memory (a zip
        # file seeks back to write its directory; /dev/null "seeks" but tells 0, and zipfile's
        # end record then fails to pack)
        buf = io.BytesIO()
        _write_npz(buf, arrays)
        with open(path, "wb") as f:
            f.write(buf.getbuffer())
        return
    folder = os.path.dirname(path)
    if not os.path.isdir(folder):  # (else the error would name the temporary file)
        raise FileNotFoundError(errno.ENOENT, f"save: the folder of {path!r} does not exist "
                                "(create it first); the checkpoint was not written", path)
    pending: str | None = None
    try:
        # what tempfile.mkstemp does (a new random name, O_EXCL, mode 0o600), but with the name
        # known before the file exists: a KeyboardInterrupt right after its creation still
        # finds it in ``pending`` and removes it
        base = os.path.basename(path)
        while True:
            tmp_name = f".{base}.{os.urandom(8).hex()}.tmp"
            if len(os.fsencode(tmp_name)) > 255:  # (a file name's limit, NAME_MAX)
                tmp_name = f".{os.urandom(8).hex()}.gradtape.tmp"
            pending = os.path.join(folder, tmp_name)
            try:
                fd = os.open(pending, _TMP_FLAGS, 0o600)
                break
            except FileExistsError:
                pending = None  # another writer's file: never ours to remove
            except OSError as e:  # (its message would name the hidden temporary file)
                pending = None
                raise type(e)(e.errno, f"save: cannot create a file in the folder {folder!r} "
                              f"({e.strerror}); the checkpoint was not written and {path!r} "
                              "is as it was", path) from None
        tmp = pending
        with os.fdopen(fd, "wb") as f:
            _write_npz(f, arrays)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _new_file_mode(path))
        os.replace(tmp, path)
        pending = None
    finally:
        if pending is not None:
            with contextlib.suppress(OSError):
                os.unlink(pending)
    with contextlib.suppress(OSError):  # make the rename itself durable (not on Windows)
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


class _Header:
    """One ``.npy`` entry as declared by its header: shape, dtype, order, data offset."""

    __slots__ = ("key", "info", "shape", "dtype", "fortran", "offset")

    def __init__(self, key: str, info: zipfile.ZipInfo, shape: tuple[int, ...], dtype: np.dtype,
                 fortran: bool, offset: int) -> None:
        self.key, self.info, self.shape, self.dtype = key, info, shape, dtype
        self.fortran, self.offset = fortran, offset


_READ_ERRORS = (ValueError, TypeError, EOFError, OSError, RuntimeError, NotImplementedError,
                OverflowError, struct.error, zlib.error, zipfile.BadZipFile)


class _CheckpointReader:
    """The entries of a checkpoint file, read lazily: names from the zip's directory, then one
    header at a time, then only the data asked for (never unpickling)."""

    def __init__(self, path: str) -> None:
        self.path = path
        with open(path, "rb") as f:  # FileNotFoundError / IsADirectoryError as they are
            magic = f.read(6)
        try:
            self.zf = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, OverflowError,
                struct.error, NotImplementedError) as exc:
            if magic[:4] == b"PK" + bytes([3, 4]):
                what = ("a truncated or damaged checkpoint: it starts as a zip archive but cannot "
                        f"be read as one ({exc})")
            else:
                what = "not a gradtape checkpoint: it is " + (
                    "a single .npy array" if magic == b"\x93NUMPY" else f"not a zip archive ({exc})")
            raise ValueError(f"load: {path!r} is {what}; a "
                             "checkpoint is the .npz file that gt.nn.save writes") from None
        try:
            self.entries: dict[str, zipfile.ZipInfo] = {}
            odd = []
            for info in self.zf.infolist():
                if not info.filename.endswith(_NPY) or info.is_dir():
                    odd.append(info.filename)
                    continue
                key = info.filename[:-len(_NPY)]
                if key in self.entries:
                    raise ValueError(f"load: {path!r} is not a gradtape checkpoint: entry "
                                     f"{info.filename!r} appears twice")
                self.entries[key] = info
            if odd:
                raise ValueError(f"load: {path!r} is not a gradtape checkpoint: unknown entries "
                                 f"{sorted(odd)} (a checkpoint holds only .npy arrays)")
        except BaseException:
            self.zf.close()
            raise

    def __enter__(self) -> _CheckpointReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.zf.close()

    def _bad(self, key: str, why: object) -> ValueError:
        return ValueError(f"load: checkpoint {self.path!r}: entry {key!r} is not a readable .npy "
                          f"array ({why})")

    def _read_header(self, f: Any, key: str) -> tuple[tuple[int, ...], bool, np.dtype]:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f, max_header_size=_MAX_HEADER)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f, max_header_size=_MAX_HEADER)
        else:
            raise ValueError(f".npy format version {version[0]}.{version[1]} is not supported")
        if any(int(d) < 0 for d in shape):
            raise ValueError(f"negative dimension in shape {shape}")
        return tuple(int(d) for d in shape), bool(fortran), np.dtype(dtype)

    def header(self, key: str) -> _Header:
        """Read ``key``'s header only (a few hundred bytes, whatever the entry's size)."""
        info = self.entries[key]
        try:
            with self.zf.open(info) as f:
                shape, fortran, dtype = self._read_header(f, key)
                offset = f.tell()
        except _READ_ERRORS as exc:
            raise self._bad(key, exc) from None
        return _Header(key, info, shape, dtype, fortran, offset)

    def read(self, h: _Header) -> np.ndarray:
        """Read the data of an entry whose header was checked (its shape and dtype against
        what it should be): first the declared sizes must agree, then exactly that many bytes
        are decompressed."""
        nbytes = math.prod(h.shape) * h.dtype.itemsize
        if h.dtype.hasobject or h.info.file_size != h.offset + nbytes:
            raise self._bad(h.key, f"its header declares {h.shape} {h.dtype} ({nbytes} bytes), the "
                                   f"zip entry holds {h.info.file_size - h.offset} bytes of data")
        buf = np.empty(nbytes, np.uint8)  # filled piece by piece: the entry's size, once
        try:
            with self.zf.open(h.info) as f:
                self._read_header(f, h.key)
                done = 0
                while done < nbytes:
                    piece = f.read(min(nbytes - done, _READ_PIECE))
                    if not piece:
                        break
                    buf[done:done + len(piece)] = np.frombuffer(piece, np.uint8)
                    done += len(piece)
                if done != nbytes or f.read(1):
                    raise ValueError(f"{done} bytes of data, expected {nbytes}")
        except _READ_ERRORS as exc:
            raise self._bad(h.key, exc) from None
        arr = buf.view(h.dtype)
        return arr.reshape(h.shape[::-1]).transpose() if h.fortran else arr.reshape(h.shape)


def _checkpoint_path(path: Any, who: str) -> str:
    """``path`` of :func:`save` / :func:`load` as a str, or a TypeError naming it."""
    if not isinstance(path, (str, bytes, os.PathLike)):
        swapped = " (the arguments look swapped)" if isinstance(path, Module) else ""
        raise TypeError(f"{who}: path must be a str or os.PathLike, got {type(path).__name__}"
                        f"{swapped}; call gt.nn.{who}(path, module, optimizer=None) or "
                        f"module.{who}(path, optimizer=None)")
    return os.fsdecode(os.fspath(path))


def save(path: str | os.PathLike, module: Module, optimizer: Any = None) -> str:
    """Save ``module``'s Variables (by path, e.g. ``var/layers.0.kernel``) and optionally
    ``optimizer``'s state for them (``opt/...``: moments, step count, hyper-parameters) to
    ``path`` (``.npz``).

    Loading both back with :func:`load` makes training resume exactly where it stopped,
    except for random streams: no generator state is saved (as in PyTorch's ``state_dict``),
    so a ``Dropout(rate, seed=int)`` layer's masks start again from its seed; to resume them
    bit for bit, give the layer a ``gt.random.Generator`` and pickle it with the checkpoint.
    Returns the path written (``.npz`` appended when missing, as ``numpy.savez`` does, except
    to a device or a named pipe that exists, such as ``/dev/null``: written to as given).

    The file is an uncompressed ``.npz`` (``numpy.load`` opens it; no pickled objects). It is
    written to a unique temporary file in the same folder, fsynced, then renamed over
    ``path``: concurrent saves to one path (threads or processes) leave one complete
    checkpoint, and an interrupted save leaves the previous file intact and no temporary.
    As ``open(path, "wb")`` would, a symbolic link is written through (its target replaced,
    the link kept), an existing file the process may not write is refused, and a device or a
    named pipe is written to, never replaced by a file.

    Raises:
        ValueError: two Variables would be saved under one name (dict keys ``1`` and ``"1"``
            both give ``d.1``; the message names both), or a Variable's path holds a NUL or
            a character UTF-8 cannot encode.
        PermissionError: ``path`` exists and this process may not write it (nothing written).
        FileNotFoundError: the folder of ``path`` does not exist (nothing written).
        IsADirectoryError: ``path`` is empty, ends with a separator, or (with ``.npz``
            appended) is an existing folder (nothing written).

    Example:
        >>> import gradtape as gt, tempfile, os
        >>> m = gt.nn.Dense(2, 2, seed=0)
        >>> p = m.save(os.path.join(tempfile.mkdtemp(), "ckpt.npz"))
        >>> gt.nn.Dense(2, 2, seed=1).load(p).kernel.numpy().tolist() == m.kernel.numpy().tolist()
        True
    """
    refuse_in_trace("gt.nn.save()", "the file would be written at the traces only, with their "
                    "values, and not at later calls")
    named = _checkpoint_names(module, "save")
    _check_optimizer(optimizer, "save")
    arrays: dict[str, np.ndarray] = {}
    for name, v in named:
        arrays[_VAR + name] = v._backend.to_host(v.data)
    if optimizer is not None:
        for key, arr in optimizer.state_dict(named).items():
            arrays[_OPT + key] = np.asarray(arr)
    path = _checkpoint_path(path, "save")
    if not os.path.basename(path):  # "" would write a hidden ".npz" here, "runs/" "runs/.npz"
        raise IsADirectoryError(f"save: path must name a file, got {path!r} (a folder); "
                                "pass e.g. os.path.join(folder, 'model.npz')")
    if not path.endswith(".npz") and not _special_file(path):  # (a device, a named pipe: as
        path += ".npz"  # given, written through)
    if os.path.isdir(path):
        raise IsADirectoryError(f"save: {path!r} is a folder; pass the path of a file in it")
    _write_atomically(path, arrays)
    return path


def load(path: str | os.PathLike, module: Module, optimizer: Any = None) -> None:
    """Restore what :func:`save` wrote into ``module``'s Variables in place (and into
    ``optimizer``'s state when given).

    ``path`` may be the name given to :func:`save`: where it does not exist or is a folder,
    ends without ``.npz``, and ``path + ".npz"`` is a file, that file is read (what ``save``
    wrote).

    Everything is checked before anything changes; on any error the module and the
    optimizer are left exactly as they were. Only the entries needed are read (optimizer
    state only when ``optimizer`` is given), and each entry's declared shape, dtype and size
    are checked before its data is decompressed, so memory stays near the model's size
    whatever the file claims. Nothing is ever unpickled.

    Dtypes: an entry must have its Variable's dtype, except that a float entry loads into a
    Variable of another float dtype (cast, rounding when narrowing: float64 -> float32 works;
    a finite value the cast would make inf raises ``ValueError`` naming the entry).
    Strings, bytes, objects, records, complex into real, ints and bools are refused.

    Raises:
        ValueError: ``path`` is not a gradtape checkpoint (a ``.npy``, a non-zip file, random
            bytes, entries that are not ``.npy`` arrays or not under ``var/``/``opt/``);
            variables missing or unexpected; a shape mismatch; a truncated or inconsistent
            entry; no optimizer state although ``optimizer`` was given, or optimizer entries
            that do not fit it (see :meth:`gradtape.optimizers.Optimizer.load_state_dict`);
            two Variables of ``module`` share one name.
        TypeError: an entry's dtype is refused (the message names the entry, the expected
            and the found dtype).

    Example:
        >>> import gradtape as gt, tempfile, os
        >>> m = gt.nn.Dense(2, 2, seed=0)
        >>> p = m.save(os.path.join(tempfile.mkdtemp(), "ckpt"))
        >>> gt.nn.load(p, m)
    """
    refuse_in_trace("gt.nn.load()", "the file would be read at the traces only, its values "
                    "constants of the program, not read again at later calls")
    path = _checkpoint_path(path, "load")
    if not path.endswith(".npz") and (not os.path.exists(path) or os.path.isdir(path)) \
            and os.path.isfile(path + ".npz"):
        path += ".npz"  # the name given to save, which appended .npz as numpy.savez does
    named = _checkpoint_names(module, "load")
    _check_optimizer(optimizer, "load")
    variables = dict(named)
    where = f"load: checkpoint {path!r}"
    with _CheckpointReader(path) as ckpt:
        # 1. names only (the zip's directory): unknown, missing and unexpected entries
        unknown = sorted(k + _NPY for k in ckpt.entries if not k.startswith((_VAR, _OPT)))
        if unknown:
            raise ValueError(f"load: {path!r} is not a gradtape checkpoint: unknown entries "
                             f"{unknown} (a checkpoint holds 'var/...' and 'opt/...' entries)")
        stored = {k[len(_VAR):] for k in ckpt.entries if k.startswith(_VAR)}
        if stored != set(variables):
            missing, extra = sorted(set(variables) - stored), sorted(stored - set(variables))
            raise ValueError(f"{where} does not match the module: missing {missing}, "
                             f"unexpected {extra}")
        opt_keys = [k for k in ckpt.entries if k.startswith(_OPT)]
        if optimizer is not None:
            if not opt_keys:
                raise ValueError(f"{where} holds no optimizer state (it was saved without "
                                 "optimizer=)")
            slot_names = getattr(optimizer, "slot_names", None)
            odd = []
            for k in opt_keys:
                key = k[len(_OPT):]
                name, sep, slot = key.rpartition("/")
                if key != "iterations" and not is_hyper_key(key) and (
                        not sep or name not in variables
                        or (slot_names is not None and slot not in slot_names)):
                    odd.append(key)
            if odd:
                raise ValueError(f"{where}: unexpected optimizer entries {sorted(odd)} for "
                                 f"{optimizer!r} (slots {list(slot_names or ())}) and the "
                                 "module's variables")
        # 2. headers: shapes and dtypes against the module, before reading any data
        headers: list[tuple[str, _Header]] = []
        for name, v in named:
            h = ckpt.header(_VAR + name)
            if h.shape != v.shape:
                raise ValueError(f"load: variable {name!r} has shape {v.shape}, the checkpoint "
                                 f"holds {h.shape}")
            problem = _checkpoint_dtype_error(_VAR + name, v.dtype, h.dtype)
            if problem:
                raise TypeError(f"{where}: {problem}")
            headers.append((name, h))
        opt_headers: list[tuple[str, _Header]] = []
        if optimizer is not None:
            for k in opt_keys:
                key = k[len(_OPT):]
                h = ckpt.header(k)
                if is_hyper_key(key):  # a scalar hyper-parameter (checked by the optimizer)
                    if h.shape != () or h.dtype.kind not in "biuf":
                        raise TypeError(f"{where}: {k} must be a real or bool scalar, got "
                                        f"{h.dtype} of shape {h.shape}")
                elif key == "iterations":  # the value itself is checked by the optimizer
                    if h.shape != ():
                        raise ValueError(f"{where}: 'iterations' must be a non-negative integer "
                                         f"scalar, got an array of shape {h.shape}")
                    if h.dtype.kind not in "iu" or h.dtype.itemsize > _ITERATIONS_MAX_ITEMSIZE:
                        raise TypeError(f"{where}: 'iterations' must be a non-negative integer "
                                        f"scalar, got dtype {h.dtype}")
                else:
                    v = variables[key.rpartition("/")[0]]
                    if h.shape != v.shape:
                        raise ValueError(f"{where}: {k} has shape {h.shape}, the variable "
                                         f"{v.shape}")
                    problem = _checkpoint_dtype_error(k, v.dtype, h.dtype)
                    if problem:
                        raise TypeError(f"{where}: {problem}")
                opt_headers.append((key, h))
        # 3. the data: declared sizes checked, then exactly those bytes read
        values = [(variables[name], ckpt.read(h)) for name, h in headers]
        opt_state = {key: ckpt.read(h) for key, h in opt_headers}
    # 4. on the variables' backends; the optimizer's state checked and staged
    staged = [(v, _cast_entry(where, _VAR + name, v._backend.xp.asarray(arr), v.dtype))
              for (name, _), (v, arr) in zip(headers, values)]
    check = getattr(optimizer, "_check_state", None)
    checked = None
    if optimizer is not None:
        if check is not None:
            checked = check(opt_state, named)
        else:  # another optimizer type: its own load_state_dict, before any variable changes
            optimizer.load_state_dict(opt_state, named)
    # 5. nothing can fail from here on
    for v, arr in staged:
        v.assign(arr)
    if checked is not None:
        optimizer._commit_state(checked)
