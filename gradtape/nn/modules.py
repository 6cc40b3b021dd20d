"""Modules: objects that hold Variables and compute with them.

A :class:`Module` finds its Variables by walking its attributes, including lists, tuples,
dicts and nested modules, in a deterministic order (attribute definition order, list order,
dict insertion order); each Variable is reported once under its first path
(``"layers.0.kernel"``). Those paths name the arrays in ``.npz`` checkpoints.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from .. import ops
from .._src.tensor import Tensor, Variable
from . import init as _init
from .conv import avg_pool2d, conv2d, max_pool2d
from .functional import dropout, embedding, layer_norm, softmax

__all__ = ["Module", "Dense", "Linear", "Conv2D", "Sequential", "Flatten", "Dropout", "MaxPool2D",
           "AvgPool2D", "LayerNorm", "Embedding", "save", "load"]

_ACTIVATIONS: dict[str, Callable] = {
    "relu": ops.relu, "tanh": ops.tanh, "sigmoid": ops.sigmoid, "gelu": ops.gelu,
    "silu": ops.silu, "swish": ops.silu, "softplus": ops.softplus, "elu": ops.elu,
    "leaky_relu": ops.leaky_relu, "softmax": softmax, "linear": lambda x: x,
}


def _activation(act: Any) -> Callable | None:
    if act is None or callable(act):
        return act
    try:
        return _ACTIVATIONS[act]
    except KeyError:
        raise ValueError(f"unknown activation {act!r}; expected one of {sorted(_ACTIVATIONS)}, "
                         "None, or a callable") from None


class Module:
    """Base class for models and layers: subclasses set Variables and sub-modules as
    attributes (directly or inside lists/tuples/dicts) and define ``forward``.

    Attributes:
        training: True by default; :meth:`train`/:meth:`eval` set it on every sub-module
            (used by :class:`Dropout`).

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

    training: bool = True

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The computation; subclasses override it."""
        raise NotImplementedError(f"{type(self).__name__} must define forward()")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.forward(*args, **kwargs)

    # --- traversal ------------------------------------------------------------------------
    def _walk(self, prefix: str, seen_modules: set) -> Iterator[tuple[str, Any]]:
        if id(self) in seen_modules:
            return
        seen_modules.add(id(self))
        yield prefix, self
        for key, value in vars(self).items():
            if key == "training":
                continue
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
        """Set ``training`` on this module and every sub-module; returns ``self``."""
        for m in [self, *self.submodules()]:
            m.training = bool(mode)
        return self

    def eval(self) -> Module:
        """``train(False)``: dropout off."""
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


def _walk_value(value: Any, path: str, seen_modules: set) -> Iterator[tuple[str, Any]]:
    if isinstance(value, Variable):
        yield path, value
    elif isinstance(value, Module):
        yield from value._walk(path + ".", seen_modules)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _walk_value(v, f"{path}.{i}", seen_modules)
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _walk_value(v, f"{path}.{k}", seen_modules)


def _strip(path: str) -> str:
    return path[:-1] if path.endswith(".") else path


# --------------------------------------------------------------------------- layers
class Dense(Module):
    """Fully connected layer ``activation(x @ kernel + bias)`` (Keras layout).

    Args:
        in_features: size of the input's last axis.
        out_features: size of the output's last axis.
        activation: None, a name (``"relu"``, ``"tanh"``, ...) or a callable.
        use_bias: add a bias.
        kernel_init / bias_init: initializer name or callable ``(shape, seed, dtype)``.
        seed: int or ``numpy.random.Generator`` for the initializer.
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
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.activation = _activation(activation)
        self.kernel = Variable(_init.get(kernel_init)((self.in_features, self.out_features),
                                                      seed=seed, dtype=dtype), name="kernel")
        self.bias = (Variable(_init.get(bias_init)((self.out_features,), seed=seed, dtype=dtype),
                              name="bias") if use_bias else None)

    def forward(self, x: Any) -> Tensor:
        if not isinstance(x, Tensor):
            x = ops._util.one(x)
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
        kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"Conv2D: groups={groups} must divide in_channels={in_channels} and "
                             f"out_channels={out_channels}")
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        self.activation = _activation(activation)
        shape = (int(out_channels), int(in_channels) // groups, int(kh), int(kw))
        self.kernel = Variable(_init.get(kernel_init)(shape, seed=seed, dtype=dtype, kind="conv"),
                               name="kernel")
        self.bias = (Variable(_init.get(bias_init)((shape[0],), seed=seed, dtype=dtype),
                              name="bias") if use_bias else None)

    def forward(self, x: Any) -> Tensor:
        y = conv2d(x, self.kernel, self.bias, stride=self.stride, padding=self.padding,
                   dilation=self.dilation, groups=self.groups)
        return self.activation(y) if self.activation is not None else y

    def __repr__(self) -> str:
        n_out, n_in, kh, kw = self.kernel.shape
        return f"Conv2D({n_in * self.groups}, {n_out}, ({kh}, {kw}))"


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

    def __getitem__(self, i: int) -> Any:
        return self.layers[i]

    def __len__(self) -> int:
        return len(self.layers)

    def __repr__(self) -> str:
        inner = ", ".join(repr(layer) if isinstance(layer, Module) else getattr(layer, "__name__", "fn")
                          for layer in self.layers)
        return f"Sequential([{inner}])"


class Flatten(Module):
    """Flatten all axes after the first: ``[N, ...] -> [N, prod(...)]``.

    Example:
        >>> import gradtape as gt
        >>> gt.nn.Flatten()(gt.tensor([[[1.0, 2.0]], [[3.0, 4.0]]])).shape
        (2, 2)
    """

    def forward(self, x: Any) -> Tensor:
        x = ops._util.one(x)
        return ops.reshape(x, (x.shape[0], -1))


class Dropout(Module):
    """Inverted dropout while ``training`` (see :func:`gradtape.nn.dropout`); identity in eval.

    Example:
        >>> import gradtape as gt
        >>> d = gt.nn.Dropout(0.5, seed=0).eval()
        >>> d(gt.tensor([1.0, 2.0])).numpy()
        array([1., 2.], dtype=float32)
    """

    def __init__(self, rate: float, seed: Any = None) -> None:
        self.rate = float(rate)
        self.seed = seed
        self._generators: dict = {}

    def forward(self, x: Any) -> Tensor:
        x = ops._util.one(x)
        xp = x._backend.xp
        gen = self._generators.get(id(xp))
        if gen is None:
            gen = self._generators[id(xp)] = xp.random.default_rng(self.seed)
        return dropout(x, self.rate, training=self.training, generator=gen)


class MaxPool2D(Module):
    """Max pooling layer (see :func:`gradtape.nn.max_pool2d`). Example: ``gt.nn.MaxPool2D(2)``."""

    def __init__(self, kernel_size: Any, stride: Any = None, padding: Any = 0) -> None:
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding

    def forward(self, x: Any) -> Tensor:
        return max_pool2d(x, self.kernel_size, self.stride, self.padding)


class AvgPool2D(Module):
    """Average pooling layer (see :func:`gradtape.nn.avg_pool2d`). Example: ``gt.nn.AvgPool2D(2)``."""

    def __init__(self, kernel_size: Any, stride: Any = None, padding: Any = 0) -> None:
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding

    def forward(self, x: Any) -> Tensor:
        return avg_pool2d(x, self.kernel_size, self.stride, self.padding)


class LayerNorm(Module):
    """Layer normalization over the last axis with learned ``gamma`` (ones) and ``beta``
    (zeros). Shapes: ``[..., dim] -> [..., dim]``. Example: ``gt.nn.LayerNorm(64)``."""

    def __init__(self, dim: int, eps: float = 1e-5, dtype: Any = np.float32) -> None:
        self.eps = float(eps)
        self.gamma = Variable(_init.ones((int(dim),), dtype=dtype), name="gamma")
        self.beta = Variable(_init.zeros((int(dim),), dtype=dtype), name="beta")

    def forward(self, x: Any) -> Tensor:
        return layer_norm(x, self.gamma, self.beta, axis=-1, eps=self.eps)


class Embedding(Module):
    """Lookup table ``[num_embeddings, dim]`` initialized N(0, 1) (PyTorch's default).

    Shapes: integer ids ``[...]`` -> ``[..., dim]``. Example: ``gt.nn.Embedding(100, 16, seed=0)``.
    """

    def __init__(self, num_embeddings: int, dim: int, seed: Any = None,
                 dtype: Any = np.float32) -> None:
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        self.table = Variable(_init._on_backend(rng.normal(size=(int(num_embeddings), int(dim))),
                                                dtype), name="table")

    def forward(self, ids: Any) -> Tensor:
        return embedding(ids, self.table)


# --------------------------------------------------------------------------- checkpoints
_VAR = "var/"
_OPT = "opt/"


def save(path: str | os.PathLike, module: Module, optimizer: Any = None) -> str:
    """Save ``module``'s Variables (by path, e.g. ``var/layers.0.kernel``) and optionally
    ``optimizer``'s state for them (``opt/...``: moments, step count) to ``path`` (``.npz``).

    Loading both back with :func:`load` makes training resume exactly where it stopped.
    Returns the path written (``.npz`` appended when missing, as ``numpy.savez`` does).

    Example:
        >>> import gradtape as gt, tempfile, os
        >>> m = gt.nn.Dense(2, 2, seed=0)
        >>> p = m.save(os.path.join(tempfile.mkdtemp(), "ckpt.npz"))
        >>> gt.nn.Dense(2, 2, seed=1).load(p).kernel.numpy().tolist() == m.kernel.numpy().tolist()
        True
    """
    named = [(_strip(n), v) for n, v in module.named_variables()]
    arrays: dict[str, np.ndarray] = {}
    for name, v in named:
        arrays[_VAR + name] = v._backend.to_host(v.data)
    if optimizer is not None:
        for key, arr in optimizer.state_dict(named).items():
            arrays[_OPT + key] = arr
    path = os.fspath(path)
    if not path.endswith(".npz"):
        path += ".npz"
    tmp = path + ".tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)  # a crash mid-write never leaves a truncated checkpoint
    return path


def load(path: str | os.PathLike, module: Module, optimizer: Any = None) -> None:
    """Restore what :func:`save` wrote into ``module``'s Variables in place (and into
    ``optimizer``'s state when given). Missing or unexpected entries and shape mismatches
    raise ``ValueError`` naming them.

    Example:
        >>> import gradtape as gt, tempfile, os
        >>> m = gt.nn.Dense(2, 2, seed=0)
        >>> p = m.save(os.path.join(tempfile.mkdtemp(), "ckpt"))
        >>> gt.nn.load(p, m)
    """
    named = [(_strip(n), v) for n, v in module.named_variables()]
    with np.load(os.fspath(path), allow_pickle=False) as f:
        data = {k: f[k] for k in f.files}
    stored = {k[len(_VAR):] for k in data if k.startswith(_VAR)}
    wanted = {n for n, _ in named}
    if stored != wanted:
        missing, extra = sorted(wanted - stored), sorted(stored - wanted)
        raise ValueError(f"load: checkpoint {os.fspath(path)!r} does not match the module: "
                         f"missing {missing}, unexpected {extra}")
    for name, v in named:
        arr = data[_VAR + name]
        if arr.shape != v.shape:
            raise ValueError(f"load: variable {name!r} has shape {v.shape}, the checkpoint holds "
                             f"{arr.shape}")
    for name, v in named:
        v.assign(data[_VAR + name])
    if optimizer is not None:
        opt_state = {k[len(_OPT):]: a for k, a in data.items() if k.startswith(_OPT)}
        if not opt_state:
            raise ValueError(f"load: checkpoint {os.fspath(path)!r} holds no optimizer state "
                             "(it was saved without optimizer=)")
        optimizer.load_state_dict(opt_state, named)
