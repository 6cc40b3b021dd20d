"""Chain fusion of elementwise backward records (see the fused-kernels issue).

``plan(records, reach)`` returns ``{record index: fn(record, g) -> input gradients}`` for the
records whose backward runs fused, or None when nothing is fused.
"""

from __future__ import annotations

from typing import Any

__all__ = ["plan"]


def plan(records: list, reach: set) -> dict[int, Any] | None:
    """No fusion planned yet: every record runs its own VJP."""
    return None
