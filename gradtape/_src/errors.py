"""The exceptions gradtape defines, and :func:`as_flag`, the check of on/off arguments (the
bottom layer: every other module may use them)."""

from __future__ import annotations

from typing import Any

__all__ = ["BackendUnavailableError", "UnconnectedGradientError", "MissingRuleError", "ExpressionError",
           "TracingError", "as_flag", "PeerName"]


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


def as_flag(value: object, what: str, name: str) -> bool:
    """``value`` as a bool for an on/off argument: a bool, a NumPy bool, the ints 0 and 1 or
    None (off); a string raises ``TypeError`` naming ``what`` and ``name`` (``bool("False")`` is
    True: a flag read from a config file or the command line would silently be on), and so
    does any other number, and any other object (a list, an array of several elements).

    Example:
        >>> as_flag(1, "Dense", "use_bias"), as_flag(None, "dropout", "training")
        (True, False)
    """
    if value is None or value is False or value is True:
        return bool(value)
    if isinstance(value, (str, bytes)):
        raise TypeError(f"{what}: {name} must be True or False, got {value!r}")
    given = value
    kind = getattr(getattr(value, "dtype", None), "kind", None)
    if getattr(value, "ndim", None) == 0 and kind is not None and kind in "biufc":
        value = value.item()  # type: ignore[attr-defined]  # a NumPy scalar or 0-d array
    if isinstance(value, (int, float, complex)) and (isinstance(value, bool) or value in (0, 1)):
        return bool(value)
    kind = type(given).__name__
    if not isinstance(value, (int, float, complex)):  # a list, an object, an array
        shape = getattr(value, "shape", None)
        shown = kind + (f" of shape {shape}" if shape else "")
    elif given is value:
        shown = repr(value)
    else:  # a NumPy scalar or a 0-d array or tensor holding another number
        shown = f"{'an' if kind[:1].lower() in 'aeiou' else 'a'} {kind} holding {value!r}"
    raise TypeError(f"{what}: {name} must be True or False, got {shown}")


class PeerName:
    """A name a class does not have but a peer library's users reach for (PyTorch's
    ``model.parameters()``): reading it raises ``AttributeError`` saying what does it here, so
    ``hasattr`` is False, as for any missing name. A descriptor, not a ``__getattr__``: that
    would also run when a property's own getter raised ``AttributeError`` (and to show that
    error, run the getter again, once more for each property in a chain). A subclass or an
    instance attribute of that name takes precedence.

    Example:
        >>> class M:
        ...     zero_grad = PeerName("nothing to zero")
        >>> hasattr(M(), "zero_grad")
        False
    """

    __slots__ = ("hint", "name")

    def __init__(self, hint: str) -> None:
        self.hint, self.name = hint, ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: object, owner: type | None = None) -> Any:
        who = type(obj).__name__ if obj is not None else getattr(owner, "__name__", "?")
        raise AttributeError(f"{who!r} object has no attribute {self.name!r} (PyTorch's; here "
                             f"{self.hint})", name=self.name, obj=obj)
