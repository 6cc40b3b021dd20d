"""Flatten and rebuild nested lists, tuples and dicts of tensors (TF's ``nest``, minimal)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

__all__ = ["flatten", "unflatten", "leaf_paths", "Spec"]

#: How :func:`flatten` took a structure apart, for :func:`unflatten`: None for a leaf, else
#: ``(kind, type, sorted dict keys or None, child specs or the length of a flat list)``, and
#: for a dict whose keys were not in sorted order a fifth item: its keys in their order.
Spec = Any


def flatten(structure: Any) -> tuple[list[Any], Spec]:
    """Return (leaves in order, a spec to rebuild the structure with :func:`unflatten`).

    Dicts are walked in sorted-key order, as TF does; :func:`unflatten` rebuilds them with
    their keys in the order they had (code iterating a rebuilt dict sees what it would have
    seen).

    Example:
        >>> flatten([1, {"b": 2, "a": 3}])[0]
        [1, 3, 2]
    """
    typ = type(structure)
    if typ is list or typ is tuple:  # the common flat list of tensors, without recursion
        if len(structure) > 8:  # (the leaves' types, collected in one C-level pass, then each
            # type checked once: cheaper than a check per leaf from about 8 leaves)
            if not any(issubclass(k, _CONTAINERS) for k in set(map(type, structure))):
                return list(structure), (list, typ, None, len(structure))
        else:
            for v in structure:
                if isinstance(v, _CONTAINERS):
                    break
            else:
                return list(structure), (list, typ, None, len(structure))
    leaves: list[Any] = []
    return leaves, _walk(structure, leaves)


_CONTAINERS = (dict, list, tuple)


def _walk(node: object, leaves: list[Any]) -> Spec:
    # module-level, not a recursive closure: a closure that calls itself is a reference cycle
    # that would keep the leaves (tensors) alive until the garbage collector runs
    if isinstance(node, dict):
        try:
            keys = sorted(node)
        except TypeError:
            kinds = sorted({type(k).__name__ for k in node})
            raise TypeError(f"a dict of tensors needs keys that sort together (all str, or all "
                            f"int), got keys of types {kinds}: {list(node)}") from None
        children = [_walk(node[k], leaves) for k in keys]
        order = list(node)
        if order != keys:
            return (dict, type(node), keys, children, order)
        return (dict, type(node), keys, children)
    if isinstance(node, (list, tuple)):
        return (list, type(node), None, [_walk(v, leaves) for v in node])
    leaves.append(node)
    return None


def unflatten(spec: Spec, leaves: list[Any]) -> Any:
    """Rebuild a structure from :func:`flatten`'s spec and a list of new leaves."""
    if spec is not None and type(spec[3]) is int:  # a flat list or tuple
        return list(leaves) if spec[1] is list else spec[1](leaves)
    return _build(spec, iter(leaves))


def _build(node: Spec, it: Iterator[Any]) -> Any:
    if node is None:
        return next(it)
    kind, typ, keys, children = node[:4]
    if type(children) is int:
        children = [None] * children
    if kind is dict:
        if len(node) == 4:
            return typ((k, _build(c, it)) for k, c in zip(keys, children))
        by_key = {k: _build(c, it) for k, c in zip(keys, children)}  # leaves in sorted order
        return typ((k, by_key[k]) for k in node[4])
    values = [_build(c, it) for c in children]
    if typ is list:
        return values
    if hasattr(typ, "_fields"):  # namedtuple
        return typ(*values)
    return typ(values)


def leaf_paths(spec: Spec) -> list[str]:
    """Where each leaf of :func:`flatten`'s ``spec`` sits, in the leaves' order, as Python
    indexing (``"[1]['b']"``; ``""`` for a structure that is a leaf itself): for messages
    that name one leaf of a user's arguments.

    Example:
        >>> leaf_paths(flatten([1, {"b": 2, "a": 3}])[1])
        ['[0]', "[1]['a']", "[1]['b']"]
    """
    out: list[str] = []
    _paths(spec, "", out)
    return out


def _paths(node: Spec, prefix: str, out: list[str]) -> None:
    if node is None:
        out.append(prefix)
        return
    kind, _typ, keys, children = node[:4]
    if type(children) is int:
        children = [None] * children
    for j, child in enumerate(children):
        _paths(child, f"{prefix}[{keys[j]!r}]" if kind is dict else f"{prefix}[{j}]", out)
