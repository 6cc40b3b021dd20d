"""Flatten and rebuild nested lists, tuples and dicts of tensors (TF's ``nest``, minimal)."""

from __future__ import annotations

from typing import Any

__all__ = ["flatten", "unflatten"]


def flatten(structure: Any) -> tuple[list[Any], Any]:
    """Return (leaves in order, a spec to rebuild the structure with :func:`unflatten`).

    Dicts are walked in sorted-key order, as TF does.

    Example:
        >>> flatten([1, {"b": 2, "a": 3}])[0]
        [1, 3, 2]
    """
    leaves: list[Any] = []

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            keys = sorted(node)
            return (dict, type(node), keys, [walk(node[k]) for k in keys])
        if isinstance(node, (list, tuple)):
            return (list, type(node), None, [walk(v) for v in node])
        leaves.append(node)
        return None

    spec = walk(structure)
    del walk  # break the walk <-> closure-cell cycle: the leaves are freed without the GC
    return leaves, spec


def unflatten(spec: Any, leaves: list[Any]) -> Any:
    """Rebuild a structure from :func:`flatten`'s spec and a list of new leaves."""
    it = iter(leaves)

    def build(node: Any) -> Any:
        if node is None:
            return next(it)
        kind, typ, keys, children = node
        if kind is dict:
            return typ((k, build(c)) for k, c in zip(keys, children))
        values = [build(c) for c in children]
        if typ is list:
            return values
        if hasattr(typ, "_fields"):  # namedtuple
            return typ(*values)
        return typ(values)

    result = build(spec)
    del build  # break the build <-> closure-cell cycle (it holds the leaves)
    return result
