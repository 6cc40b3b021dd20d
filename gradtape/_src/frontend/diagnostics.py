"""Explanations of missing gradients: each cause of an unconnected source gets its own message
(``unconnected_gradients="raise"``). No other library explains a missing gradient."""

from __future__ import annotations

from ..autodiff.batched import BatchedTensor
from ..autodiff.engine import forward_reach
from ..autodiff.record import Recorder
from ..tensor import Tensor, Variable

__all__ = ["explain", "float_hint"]


def float_hint(t: Tensor) -> str:
    """How to get a float version of integer or bool ``t`` that can carry a gradient: for a
    Variable, create it as a float Variable (``.astype`` would return a plain Tensor, not
    trainable, whose gradient an optimizer never sees); for a Tensor, cast it before use."""
    if isinstance(t, Variable):
        return ('create the Variable as a float one: gt.Variable(..., dtype="float32"); '
                "v.astype('float32') returns a plain Tensor, not a trainable Variable")
    return "cast it first: x = x.astype('float32'), or create it with gt.tensor(..., dtype=\"float32\")"


def _mapped_variable(s: Tensor) -> Variable | None:
    """The Variable ``s`` is one example of inside ``gt.vmap`` (through nested vmaps), else
    None."""
    while isinstance(s, BatchedTensor):
        s = s._value
    return s if isinstance(s, Variable) else None


def explain(tape: Recorder, s: Tensor, targets: list[Tensor]) -> str:
    """Why source ``s`` got no gradient from ``targets`` on ``tape``: the message of
    :class:`UnconnectedGradientError`."""
    label = f"source {s.name!r}" if isinstance(s, Variable) and s.name else "the source"
    shape = f"(shape {s.shape}, dtype {s.dtype})"
    if not s._id or s._id not in tape._tracked:
        if s._origin and s._origin[0] == "variable":
            return (f"{label} {shape} is a plain Tensor computed from Variable "
                    f"{s._origin[1]!r} (e.g. `w = w - lr * g`): the Variable was replaced by "
                    "a tensor, which is never watched. Update variables in place with "
                    "w -= lr * g (or w.assign_sub(...)), or tape.watch() the tensor.")
        if isinstance(s, Variable) and not s.trainable:
            return (f"{label} {shape} is a non-trainable Variable, which is never watched "
                    "automatically; call tape.watch(v)")
        if s._is_variable and not tape._watch_accessed:
            return (f"{label} {shape} was never watched: the tape has "
                    "watch_accessed_variables=False, so call tape.watch(v)")
        if s._is_variable:
            if s._id in tape._cuts:  # e.g. read only inside stop_recording()
                return f"{label} {shape} is not connected to the target: {tape._cuts[s._id]}"
            return (f"{label} {shape} was never read by a gradtape op inside the tape's "
                    "context, so the target does not depend on it (a value taken out of it "
                    "with .data or a NumPy function carries no gradient)")
        mapped = _mapped_variable(s)
        if mapped is not None:
            name = f" {mapped.name!r}" if mapped.name else ""
            return (f"{label} {shape} is one example of Variable{name} (shape {mapped.shape}), "
                    "mapped by gt.vmap: inside the vmapped function it is a per-example slice, "
                    "not the Variable, so a tape does not watch it automatically (nor w[0] "
                    "eagerly). Call tape.watch(x) on it inside the tape's context (or, if every "
                    "example should use the whole Variable, map it with in_axes=None)")
        return (f"{label} {shape} was never watched: call tape.watch(x) inside the tape's "
                "context before using it, or make it a gt.Variable")
    reach = forward_reach(tape._records, {s._id})
    reasons = [r for i, r in tape._cuts.items() if i in reach]
    if reasons:
        return f"{label} {shape} is not connected to the target: " + "; ".join(dict.fromkeys(reasons))
    for t in targets:
        if t._origin and t._origin[0] == "gradient" and t._id not in tape._tracked:
            return (f"the target was computed by tape.gradient() at {t._origin[1]} while this "
                    "tape was not recording: for higher-order derivatives call the inner "
                    "tape's gradient() inside the outer tape's `with` block")
    if all(not t._id or t._id not in tape._tracked for t in targets):
        return (f"the target does not depend on any tensor this tape watched, so {label} "
                f"{shape} is unconnected: the target was computed outside the tape's "
                "context, or before tape.watch() was called on the tensors it uses (watch a "
                "tensor before computing with it), or from a raw backend array taken out of a "
                "watched tensor (`.data`), which carries no gradient")
    return f"the target does not depend on {label} {shape}"
