"""Learning-rate schedules, as Keras's ``keras.optimizers.schedules``: callables
``schedule(step) -> float`` of the optimizer's step count (``opt.iterations``, from 0), given
as ``learning_rate`` (``gt.optimizers.Adam(gt.optimizers.schedules.CosineDecay(1e-3, 1000))``).
Any callable of that form works as well; these check their arguments, pickle with the
optimizer, and show their settings in ``repr``.

PyTorch's ``StepLR(step_size, gamma)`` is ``ExponentialDecay(lr, step_size, gamma,
staircase=True)``; ``CosineAnnealingLR(T_max, eta_min)`` is ``CosineDecay(lr, T_max,
alpha=eta_min / lr)`` up to step ``T_max`` (stepped per optimizer step, not per epoch; after it
this one stays at its end, PyTorch's rises again); ``MultiStepLR(milestones, gamma)`` is
``PiecewiseConstantDecay([m - 1 for m in milestones], [lr, lr * gamma, ...])`` (a boundary is
the last step at the earlier rate).

Example:
    >>> import gradtape as gt
    >>> s = gt.optimizers.schedules.ExponentialDecay(0.1, decay_steps=10, decay_rate=0.5)
    >>> round(s(0), 6), round(s(10), 6), round(s(20), 6)
    (0.1, 0.05, 0.025)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from .ops._util import as_real

__all__ = ["ExponentialDecay", "CosineDecay", "PiecewiseConstantDecay"]


def _positive(who: str, name: str, value: Any) -> float:
    v = as_real(value, who, name)
    if not v > 0:
        raise ValueError(f"{who}: {name} must be > 0, got {value!r}")
    return float(v)


def _non_negative(who: str, name: str, value: Any) -> float:
    v = as_real(value, who, name)
    if not v >= 0:
        raise ValueError(f"{who}: {name} must be >= 0, got {value!r}")
    return float(v)


def _step(who: str, step: Any) -> float:
    s = as_real(step, who, "step")
    if s < 0:
        raise ValueError(f"{who}: step must be >= 0, got {step!r}")
    return float(s)


class ExponentialDecay:
    """``initial_learning_rate * decay_rate ** (step / decay_steps)`` (Keras's
    ``ExponentialDecay``); with ``staircase=True`` the exponent is ``floor(step /
    decay_steps)``: the rate drops by ``decay_rate`` every ``decay_steps`` steps (PyTorch's
    ``StepLR``).

    Args:
        initial_learning_rate: the rate at step 0, >= 0.
        decay_steps: > 0.
        decay_rate: > 0 (below 1 to decay).
        staircase: decay in whole steps of ``decay_steps``.

    Example:
        >>> s = ExponentialDecay(1.0, decay_steps=2, decay_rate=0.1, staircase=True)
        >>> [round(s(t), 6) for t in range(5)]
        [1.0, 1.0, 0.1, 0.1, 0.01]
    """

    def __init__(self, initial_learning_rate: float, decay_steps: int, decay_rate: float,
                 staircase: bool = False) -> None:
        who = "ExponentialDecay"
        self.initial_learning_rate = _non_negative(who, "initial_learning_rate", initial_learning_rate)
        self.decay_steps = _positive(who, "decay_steps", decay_steps)
        self.decay_rate = _positive(who, "decay_rate", decay_rate)
        if not isinstance(staircase, bool):
            raise TypeError(f"{who}: staircase must be True or False, got {staircase!r}")
        self.staircase = staircase

    def __call__(self, step: int) -> float:
        p = _step("ExponentialDecay", step) / self.decay_steps
        if self.staircase:
            p = math.floor(p)
        try:
            return self.initial_learning_rate * self.decay_rate ** p
        except OverflowError:  # (a decay_rate above 1 grows past float64: inf, as Keras's,
            # which the optimizer refuses, naming the step; a rate of 0 stays 0)
            return math.inf if self.initial_learning_rate else 0.0

    def __repr__(self) -> str:
        return (f"ExponentialDecay(initial_learning_rate={self.initial_learning_rate!r}, "
                f"decay_steps={self.decay_steps!r}, decay_rate={self.decay_rate!r}, "
                f"staircase={self.staircase!r})")


class CosineDecay:
    """Cosine decay from ``initial_learning_rate`` to ``alpha * initial_learning_rate`` over
    ``decay_steps`` steps, then constant (Keras's ``CosineDecay``; PyTorch's
    ``CosineAnnealingLR`` with ``eta_min = alpha * lr``), optionally after a linear warmup:
    with ``warmup_steps > 0`` the rate rises linearly from ``initial_learning_rate`` at step 0
    to ``warmup_target`` at step ``warmup_steps``, and the cosine then decays from
    ``warmup_target`` (Keras's rule).

    Args:
        initial_learning_rate: the rate at step 0, >= 0.
        decay_steps: steps of the cosine, > 0.
        alpha: the final rate as a fraction of the decay's starting rate, in ``[0, 1]``.
        warmup_steps: steps of the linear warmup, >= 0 (needs ``warmup_target``).
        warmup_target: the rate the warmup reaches, >= 0.

    Example:
        >>> s = CosineDecay(0.0, decay_steps=100, warmup_steps=10, warmup_target=1.0)
        >>> round(s(5), 6), round(s(10), 6), round(s(60), 6), round(s(500), 6)
        (0.5, 1.0, 0.5, 0.0)
    """

    def __init__(self, initial_learning_rate: float, decay_steps: int, alpha: float = 0.0,
                 warmup_steps: int = 0, warmup_target: float | None = None) -> None:
        who = "CosineDecay"
        self.initial_learning_rate = _non_negative(who, "initial_learning_rate", initial_learning_rate)
        self.decay_steps = _positive(who, "decay_steps", decay_steps)
        self.alpha = _non_negative(who, "alpha", alpha)
        if self.alpha > 1:
            raise ValueError(f"{who}: alpha must be in [0, 1], got {alpha!r}")
        self.warmup_steps = _non_negative(who, "warmup_steps", warmup_steps)
        self.warmup_target = (None if warmup_target is None
                              else _non_negative(who, "warmup_target", warmup_target))
        if self.warmup_steps and self.warmup_target is None:
            raise ValueError(f"{who}: warmup_steps={warmup_steps!r} needs warmup_target (the rate "
                             "the warmup reaches)")

    def __call__(self, step: int) -> float:
        s = _step("CosineDecay", step)
        start = self.initial_learning_rate
        if self.warmup_target is not None:
            if s < self.warmup_steps:
                return start + (self.warmup_target - start) * s / self.warmup_steps
            start, s = self.warmup_target, s - self.warmup_steps
        frac = min(s, self.decay_steps) / self.decay_steps
        return start * ((1.0 - self.alpha) * 0.5 * (1.0 + math.cos(math.pi * frac)) + self.alpha)

    def __repr__(self) -> str:
        return (f"CosineDecay(initial_learning_rate={self.initial_learning_rate!r}, "
                f"decay_steps={self.decay_steps!r}, alpha={self.alpha!r}, "
                f"warmup_steps={self.warmup_steps!r}, warmup_target={self.warmup_target!r})")


class PiecewiseConstantDecay:
    """``values[0]`` up to step ``boundaries[0]`` (inclusive), ``values[1]`` up to
    ``boundaries[1]``, ..., ``values[-1]`` after the last boundary (Keras's
    ``PiecewiseConstantDecay``; PyTorch's ``MultiStepLR`` as explicit rates).

    Args:
        boundaries: increasing step counts.
        values: one more rate than boundaries, each >= 0.

    Example:
        >>> s = PiecewiseConstantDecay([100, 200], [0.1, 0.01, 0.001])
        >>> s(0), s(100), s(101), s(1000)
        (0.1, 0.1, 0.01, 0.001)
    """

    def __init__(self, boundaries: Sequence[int], values: Sequence[float]) -> None:
        who = "PiecewiseConstantDecay"
        if isinstance(boundaries, (str, bytes)) or not hasattr(boundaries, "__len__"):
            raise TypeError(f"{who}: boundaries must be a sequence of step counts, got {boundaries!r}")
        if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
            raise TypeError(f"{who}: values must be a sequence of rates, got {values!r}")
        self.boundaries = [float(as_real(b, who, "boundaries")) for b in boundaries]
        self.values = [_non_negative(who, "values", v) for v in values]
        if len(self.values) != len(self.boundaries) + 1:
            raise ValueError(f"{who}: values must have one more entry than boundaries, got "
                             f"{len(self.values)} values for {len(self.boundaries)} boundaries")
        if any(b >= c for b, c in zip(self.boundaries, self.boundaries[1:])):
            raise ValueError(f"{who}: boundaries must increase, got {list(boundaries)!r}")

    def __call__(self, step: int) -> float:
        s = _step("PiecewiseConstantDecay", step)
        for b, v in zip(self.boundaries, self.values):
            if s <= b:
                return v
        return self.values[-1]

    def __repr__(self) -> str:
        return f"PiecewiseConstantDecay(boundaries={self.boundaries!r}, values={self.values!r})"
