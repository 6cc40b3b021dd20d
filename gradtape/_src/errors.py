"""The exceptions gradtape defines (the bottom layer: every other module may raise them)."""

from __future__ import annotations

__all__ = ["BackendUnavailableError", "UnconnectedGradientError", "MissingRuleError", "ExpressionError",
           "TracingError"]


class BackendUnavailableError(RuntimeError):
    """Raised when a backend that was asked for cannot work on this machine.

    The message names why: CuPy not installed, no CUDA driver, no device, or a driver error.
    """


class UnconnectedGradientError(ValueError):
    """A source is not connected to the target and ``unconnected_gradients="raise"``.

    The message says why: never watched, integer dtype on the path, the value left the tape
    through a NumPy/CuPy array, it was computed inside ``stop_recording``, a Variable was
    replaced by a tensor, or a gradient was taken outside the outer tape's context.
    """


class MissingRuleError(NotImplementedError):
    """A transform needs a rule that a primitive does not declare (the message names it)."""


class ExpressionError(ValueError):
    """A derivative expression uses something outside the shared subset."""


class TracingError(RuntimeError):
    """A step traced by ``gt.function`` made Python depend on a tensor's value (``bool(t)``,
    ``float(t)``, ``.numpy()``, ``.item()``, iterating a tensor): the replayed program could not
    follow it. The message names the line and the ways out (``gt.where``, a Python argument,
    ``fallback="eager"``)."""
