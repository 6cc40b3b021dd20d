"""The exceptions gradtape defines, and :func:`as_flag`, the check of on/off arguments (the
bottom layer: every other module may use them)."""

from __future__ import annotations

from typing import Any

__all__ = ["BackendUnavailableError", "UnconnectedGradientError", "MissingRuleError", "ExpressionError",
           "TracingError", "as_flag", "missing_attribute"]


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


def missing_attribute(obj: object, name: str, hints: dict[str, str]) -> Any:
    """What a class's ``__getattr__`` (called only when ``name`` was not found) does to name
    PyTorch's spelling: for a property of the class whose getter raised ``AttributeError``
    (a schedule's or a user property's own bug), that error again; otherwise Python's
    ``AttributeError``, with ``hints[name]`` (what does it here) appended when there is one.

    Example:
        >>> try:
        ...     missing_attribute(object(), "zero_grad", {"zero_grad": "nothing to zero"})
        ... except AttributeError as e:
        ...     print(e)
        'object' object has no attribute 'zero_grad' (PyTorch's; here nothing to zero)
    """
    if any(name in klass.__dict__ for klass in type(obj).__mro__):
        return object.__getattribute__(obj, name)
    hint = hints.get(name)
    msg = f"{type(obj).__name__!r} object has no attribute {name!r}"
    raise AttributeError(msg + (f" (PyTorch's; here {hint})" if hint else ""), name=name, obj=obj)
