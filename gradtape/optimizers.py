"""Optimizers: ``SGD``, ``Adam``, ``AdamW`` with Keras's ``apply_gradients(zip(grads, vars))``.

Each optimizer's update is declared once, as a plain function of arrays for one variable
(``sgd_update``, ``adam_update``): ``update(xp, param, grad, *slots, **scalars)`` writes the
new parameter and state into their buffers in place (ufuncs with ``out=``), so a Variable's
``data`` is never replaced or copied. The same body is what a fused GPU kernel renders.

Example:
    >>> import gradtape as gt
    >>> w = gt.Variable([1.0, -2.0])
    >>> opt = gt.optimizers.SGD(0.1)
    >>> with gt.GradientTape() as tape:
    ...     loss = gt.sum(w * w)
    >>> opt.apply_gradients(zip([tape.gradient(loss, w)], [w]))
    >>> w.numpy()
    array([ 0.8, -1.6], dtype=float32)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from ._tensor import Tensor, Variable, _wrap

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "clip_by_global_norm", "global_norm",
           "sgd_update", "adam_update"]


# --------------------------------------------------------------------------- update bodies
def sgd_update(xp: Any, p: Any, g: Any, buf: Any, *, lr: float, momentum: float,
               nesterov: bool, weight_decay: float) -> None:
    """One SGD step in place (PyTorch's formulation, dampening 0).

    ``d = g + weight_decay * p``; with momentum ``buf = momentum * buf + d`` and
    ``d = buf`` (or ``d + momentum * buf`` with Nesterov); then ``p -= lr * d``.
    ``buf`` is None without momentum. Shapes: all arrays have the parameter's shape.
    """
    d = g
    if weight_decay:
        d = p * weight_decay
        d += g
    if momentum:
        buf *= momentum
        buf += d
        if nesterov:
            d = d + momentum * buf
        else:
            d = buf
    if lr == 1.0:
        p -= d
    else:
        xp.subtract(p, d * lr, out=p)


def adam_update(xp: Any, p: Any, g: Any, m: Any, v: Any, *, lr: float, beta1: float,
                beta2: float, eps: float, step: int, weight_decay: float, decoupled: bool) -> None:
    """One Adam/AdamW step in place (Kingma & Ba with bias correction; PyTorch's placement of
    ``eps``): ``m = b1 m + (1 - b1) g``, ``v = b2 v + (1 - b2) g^2``,
    ``p -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)``.

    ``weight_decay`` is decoupled (AdamW: ``p *= 1 - lr * wd`` first) or, for Adam, added to
    the gradient (L2). Shapes: all arrays have the parameter's shape.
    """
    if weight_decay:
        if decoupled:
            p *= 1.0 - lr * weight_decay
        else:
            g = g + weight_decay * p
    m *= beta1
    m += (1.0 - beta1) * g
    v *= beta2
    gg = g * g
    gg *= 1.0 - beta2
    v += gg
    bc1 = 1.0 - beta1 ** step
    bc2 = 1.0 - beta2 ** step
    denom = xp.sqrt(v, out=gg)  # reuse the scratch buffer
    denom *= 1.0 / math.sqrt(bc2)
    denom += eps
    xp.divide(m, denom, out=denom)
    denom *= lr / bc1
    p -= denom


# --------------------------------------------------------------------------- clipping
def global_norm(grads: Iterable[Any]) -> float:
    """The 2-norm of all gradients together (None entries skipped), as a float.

    Example:
        >>> import gradtape as gt
        >>> gt.optimizers.global_norm([gt.tensor([3.0]), None, gt.tensor([4.0])])
        5.0
    """
    total = 0.0
    for g in grads:
        if g is None:
            continue
        a = g.data if isinstance(g, Tensor) else g
        total += float((a * a).sum(dtype=np.float64) if a.dtype != np.float64 else (a * a).sum())
    return math.sqrt(total)


def clip_by_global_norm(grads: Iterable[Any], clip_norm: float) -> tuple[list, float]:
    """Scale all gradients by ``clip_norm / max(global_norm, clip_norm)`` (TF semantics).

    Returns ``(clipped, norm)``: a list with None entries kept, and the norm before clipping.
    Shapes: each gradient keeps its shape.

    Example:
        >>> import gradtape as gt
        >>> clipped, n = gt.optimizers.clip_by_global_norm([gt.tensor([3.0, 4.0])], 1.0)
        >>> n, clipped[0].numpy()
        (5.0, array([0.6, 0.8], dtype=float32))
    """
    grads = list(grads)
    clip_norm = float(clip_norm)
    if clip_norm <= 0:
        raise ValueError(f"clip_by_global_norm: clip_norm must be > 0, got {clip_norm}")
    norm = global_norm(grads)
    scale = clip_norm / max(norm, clip_norm)
    if scale == 1.0:
        return grads, norm
    out = []
    for g in grads:
        if g is None:
            out.append(None)
        elif isinstance(g, Tensor):
            out.append(_wrap(g.data * g.dtype.type(scale), g._backend))
        else:
            out.append(g * g.dtype.type(scale))
    return out, norm


# --------------------------------------------------------------------------- optimizers
class Optimizer:
    """Base class: per-variable state, None gradients skipped, optional global-norm clipping,
    a learning rate that is a float or a schedule ``f(step) -> float`` (step counts from 0).

    Subclasses set ``slot_names`` and ``update`` (a function of arrays, see module doc) and
    return their scalar hyper-parameters from ``_scalars``.
    """

    slot_names: tuple[str, ...] = ()
    update: Callable[..., None]

    def __init__(self, learning_rate: float | Callable[[int], float],
                 global_clipnorm: float | None = None) -> None:
        if not callable(learning_rate):
            learning_rate = float(learning_rate)
            if not learning_rate >= 0:
                raise ValueError(f"{type(self).__name__}: learning_rate must be >= 0, got {learning_rate}")
        if global_clipnorm is not None and not float(global_clipnorm) > 0:
            raise ValueError(f"{type(self).__name__}: global_clipnorm must be > 0, got {global_clipnorm}")
        self.learning_rate = learning_rate
        self.global_clipnorm = None if global_clipnorm is None else float(global_clipnorm)
        self.iterations = 0
        self._state: dict[int, tuple] = {}  # Variable._id -> slot arrays (fixed for life)

    def current_learning_rate(self) -> float:
        """The learning rate the next step uses."""
        lr = self.learning_rate
        return float(lr(self.iterations)) if callable(lr) else lr

    def _scalars(self) -> dict:
        raise NotImplementedError

    def _needs_slot(self, name: str) -> bool:
        return True

    def _slots(self, v: Variable) -> tuple:
        st = self._state.get(v._id)
        if st is None:
            xp = v._backend.xp
            st = tuple(xp.zeros_like(v.data) if self._needs_slot(n) else None
                       for n in self.slot_names)
            self._state[v._id] = st
        return st

    def apply_gradients(self, grads_and_vars: Iterable[tuple[Any, Variable]]) -> None:
        """Update each Variable in place from its gradient; a None gradient leaves that
        Variable (and its state) untouched.

        Args:
            grads_and_vars: pairs ``(gradient, variable)``, e.g. ``zip(grads, model.variables)``;
                each gradient a Tensor or backend array of the variable's shape.

        Raises:
            TypeError: an entry is not a Variable, or a gradient is on another backend.
            ValueError: a gradient's shape differs from its variable's, or every gradient is None.
        """
        pairs = []
        n_seen = 0
        for g, v in grads_and_vars:
            n_seen += 1
            if not isinstance(v, Variable):
                raise TypeError(f"{type(self).__name__}.apply_gradients: expected (gradient, "
                                f"Variable) pairs, got a {type(v).__name__} as variable")
            if g is None:
                continue
            if isinstance(g, Tensor):
                if g._backend is not v._backend:
                    raise TypeError(f"{type(self).__name__}.apply_gradients: gradient on backend "
                                    f"{g.backend!r} for variable {v.name or ''} on {v.backend!r}")
                g = g.data
            if g.shape != v.shape:
                raise ValueError(f"{type(self).__name__}.apply_gradients: gradient of shape "
                                 f"{g.shape} for variable {v.name or ''} of shape {v.shape}")
            if g.dtype != v.dtype:
                g = g.astype(v.dtype)
            pairs.append((g, v))
        if not pairs:
            if n_seen:
                return  # every gradient None: nothing to do (no step counted)
            raise ValueError(f"{type(self).__name__}.apply_gradients: no (gradient, variable) "
                             "pairs given")
        if self.global_clipnorm is not None:
            clipped, _ = clip_by_global_norm([g for g, _ in pairs], self.global_clipnorm)
            pairs = list(zip(clipped, (v for _, v in pairs)))
        scalars = self._scalars()
        self.iterations += 1
        update = type(self).update
        for g, v in pairs:
            update(v._backend.xp, v.data, g, *self._slots(v), **scalars)

    # --- checkpoints ------------------------------------------------------------------------
    def state_dict(self, named_variables: Iterable[tuple[str, Variable]]) -> dict[str, np.ndarray]:
        """Host arrays of the state: ``"<variable name>/<slot>"`` for each variable that has
        state, plus ``"iterations"``."""
        out = {"iterations": np.asarray(self.iterations, dtype=np.int64)}
        for name, v in named_variables:
            st = self._state.get(v._id)
            if st is None:
                continue
            for slot, arr in zip(self.slot_names, st):
                if arr is not None:
                    out[f"{name}/{slot}"] = v._backend.to_host(arr)
        return out

    def load_state_dict(self, state: dict, named_variables: Iterable[tuple[str, Variable]]) -> None:
        """Restore :meth:`state_dict` output for the given (name, variable) pairs."""
        if "iterations" not in state:
            raise ValueError(f"{type(self).__name__}.load_state_dict: no 'iterations' entry")
        new_state: dict[int, tuple] = {}
        for name, v in named_variables:
            present = [f"{name}/{s}" in state for s in self.slot_names]
            if not any(present):
                continue
            slots = []
            for slot in self.slot_names:
                key = f"{name}/{slot}"
                if key not in state:
                    slots.append(v._backend.xp.zeros_like(v.data) if self._needs_slot(slot) else None)
                    continue
                arr = state[key]
                if arr.shape != v.shape:
                    raise ValueError(f"{type(self).__name__}.load_state_dict: {key} has shape "
                                     f"{arr.shape}, the variable {v.shape}")
                slots.append(v._backend.xp.asarray(arr, dtype=v.dtype).copy())
            new_state[v._id] = tuple(slots)
        self._state.update(new_state)
        self.iterations = int(state["iterations"])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(learning_rate={self.learning_rate!r}, {self._scalars_repr()})"

    def _scalars_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self._scalars().items() if k not in ("lr", "step"))


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum, Nesterov momentum and L2 weight
    decay (PyTorch's formulation; equal to Keras's for a constant learning rate).

    Example:
        >>> import gradtape as gt
        >>> opt = gt.optimizers.SGD(0.1, momentum=0.9, nesterov=True)
    """

    slot_names = ("momentum",)
    update = staticmethod(sgd_update)

    def __init__(self, learning_rate: float | Callable[[int], float] = 0.01, momentum: float = 0.0,
                 nesterov: bool = False, weight_decay: float = 0.0,
                 global_clipnorm: float | None = None) -> None:
        super().__init__(learning_rate, global_clipnorm)
        if not 0.0 <= momentum < 1.0 + 1e-12:
            raise ValueError(f"SGD: momentum must be in [0, 1], got {momentum}")
        if nesterov and momentum == 0:
            raise ValueError("SGD: nesterov=True needs momentum > 0")
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)
        self.weight_decay = float(weight_decay)

    def _needs_slot(self, name: str) -> bool:
        return self.momentum != 0.0

    def _scalars(self) -> dict:
        return {"lr": self.current_learning_rate(), "momentum": self.momentum,
                "nesterov": self.nesterov, "weight_decay": self.weight_decay}


class Adam(Optimizer):
    """Adam (Kingma & Ba, 2015) with bias correction. ``weight_decay`` here is L2 added to the
    gradient; use :class:`AdamW` for decoupled decay.

    Example:
        >>> import gradtape as gt
        >>> opt = gt.optimizers.Adam(1e-3)
    """

    slot_names = ("m", "v")
    update = staticmethod(adam_update)
    _decoupled = False

    def __init__(self, learning_rate: float | Callable[[int], float] = 1e-3, beta1: float = 0.9,
                 beta2: float = 0.999, epsilon: float = 1e-8, weight_decay: float = 0.0,
                 global_clipnorm: float | None = None) -> None:
        super().__init__(learning_rate, global_clipnorm)
        for name, b in (("beta1", beta1), ("beta2", beta2)):
            if not 0.0 <= b < 1.0:
                raise ValueError(f"{type(self).__name__}: {name} must be in [0, 1), got {b}")
        self.beta1, self.beta2 = float(beta1), float(beta2)
        self.epsilon = float(epsilon)
        self.weight_decay = float(weight_decay)

    def _scalars(self) -> dict:
        return {"lr": self.current_learning_rate(), "beta1": self.beta1, "beta2": self.beta2,
                "eps": self.epsilon, "step": self.iterations + 1,
                "weight_decay": self.weight_decay, "decoupled": self._decoupled}


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter): ``p *= 1 - lr * weight_decay``
    before the Adam step. Default ``weight_decay=0.01`` (PyTorch).

    Example:
        >>> import gradtape as gt
        >>> opt = gt.optimizers.AdamW(1e-3, weight_decay=0.01)
    """

    _decoupled = True

    def __init__(self, learning_rate: float | Callable[[int], float] = 1e-3, beta1: float = 0.9,
                 beta2: float = 0.999, epsilon: float = 1e-8, weight_decay: float = 0.01,
                 global_clipnorm: float | None = None) -> None:
        super().__init__(learning_rate, beta1, beta2, epsilon, weight_decay, global_clipnorm)
