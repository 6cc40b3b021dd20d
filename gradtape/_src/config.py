"""Process-wide switches (``gt.config``), each also set by an environment variable at import."""

from __future__ import annotations

import os

from .cpu import hostmem

__all__ = ["config", "HOOKS"]


class _Hooks:
    """Whether ``bind`` must leave its fast path: any tape or watcher active in any thread,
    or numerics checking on. One attribute read per op when nothing is active."""

    on = False
    count = 0  # recording + paused tapes + variable watchers, all threads
    numerics = False

    @classmethod
    def refresh(cls) -> None:
        cls.on = cls.count > 0 or cls.numerics


HOOKS = _Hooks


def _flag(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    return value.strip().lower() not in ("0", "false", "no", "off")


class Config:
    """Process-wide switches.

    Attributes:
        fusion: use fused backward kernels for first-order gradients (``GRADTAPE_FUSION=0``
            turns them off, for debugging and for measuring what fusion buys).
        check_numerics: the first op whose forward or backward produces NaN or inf raises
            ``FloatingPointError`` naming the primitive, the shapes and the user line
            (``GRADTAPE_CHECK_NUMERICS=1``).
        host_memory_cache: let glibc keep freed host memory for reuse (set once, at the first
            large NumPy op), so large eager arrays skip page faults; the process keeps its peak
            resident size (``GRADTAPE_HOST_MEMORY_CACHE=0`` turns it off; setting it applies or
            reverts the allocator setting at once; see ``gradtape/_src/cpu/hostmem.py``).

    Example:
        >>> import gradtape as gt
        >>> gt.config.fusion in (True, False)
        True
    """

    def __init__(self) -> None:
        self.fusion = _flag("GRADTAPE_FUSION", True)
        self.check_numerics = _flag("GRADTAPE_CHECK_NUMERICS", False)
        self.host_memory_cache = _flag("GRADTAPE_HOST_MEMORY_CACHE", True)

    @property
    def host_memory_cache(self) -> bool:
        return self._host_memory_cache

    @host_memory_cache.setter
    def host_memory_cache(self, value: bool) -> None:
        # the one call site of the process-wide allocator setting
        self._host_memory_cache = bool(value)
        if self._host_memory_cache or hostmem.applied:  # never touch glibc's defaults unasked
            hostmem.apply(self._host_memory_cache)

    @property
    def check_numerics(self) -> bool:
        return HOOKS.numerics

    @check_numerics.setter
    def check_numerics(self, value: bool) -> None:
        HOOKS.numerics = bool(value)
        HOOKS.refresh()

    def __repr__(self) -> str:
        return (f"Config(fusion={self.fusion}, check_numerics={self.check_numerics}, "
                f"host_memory_cache={self.host_memory_cache})")


config = Config()
