"""Process-wide switches (``gt.config``), each also set by an environment variable at import."""

from __future__ import annotations

import os
import warnings
from typing import Any

import numpy as np

from .cpu import hostmem

__all__ = ["config", "HOOKS", "QUIET_MODULES"]


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


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
_SPELLINGS = "1/true/yes/on or 0/false/no/off (case-insensitive)"


def _env_flag(name: str, default: bool) -> bool:
    """The switch set by environment variable ``name``: one of ``1/true/yes/on`` or
    ``0/false/no/off`` (case-insensitive, surrounding whitespace ignored); unset or empty gives
    ``default``. Anything else raises ValueError naming the variable (at ``import gradtape``)."""
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    key = value.strip().lower()
    if key in _TRUE:
        return True
    if key in _FALSE:
        return False
    raise ValueError(f"environment variable {name}={value!r}: expected {_SPELLINGS}, or empty "
                     f"for the default ({'on' if default else 'off'})")


def _setting(attr: str, value: object) -> bool:
    """``value`` assigned to ``gt.config.<attr>`` as a bool: a bool, the ints 0 and 1, or a
    string spelled as for the environment variables; anything else raises ValueError."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)) and int(value) in (0, 1):
        return bool(value)
    if isinstance(value, str):
        key = value.strip().lower()
        if key in _TRUE:
            return True
        if key in _FALSE:
            return False
    raise ValueError(f"gt.config.{attr}: expected a bool, 0 or 1, or a string {_SPELLINGS}; "
                     f"got {value!r}")


_SWITCHES = ("fusion", "check_numerics", "host_memory_cache")


class Config:
    """Process-wide switches.

    Attributes:
        fusion: use fused backward kernels for first-order gradients (``GRADTAPE_FUSION=0``
            turns them off, for debugging and for measuring what fusion buys).
        check_numerics: the first op whose forward or backward produces NaN or inf raises
            ``FloatingPointError`` naming the primitive, the shapes and the user line
            (``GRADTAPE_CHECK_NUMERICS=1``).
        host_memory_cache: let glibc keep freed host memory for reuse (applied at import when
            on, and whenever it is assigned), so large eager arrays skip page faults; the process keeps its peak
            resident size (``GRADTAPE_HOST_MEMORY_CACHE=0`` turns it off; setting it applies or
            reverts the allocator setting at once; see ``gradtape/_src/cpu/hostmem.py``).

    NumPy's floating-point RuntimeWarnings (``invalid value encountered in log``, ``divide by
    zero``, ``overflow``) are not shown for gradtape's own code: an op returns NaN or inf
    silently, as in PyTorch and JAX, and ``check_numerics`` finds the op and the line that
    made it. ``import gradtape`` adds one warnings filter for that, ignoring ``RuntimeWarning``
    attributed to gradtape's modules only (:data:`QUIET_MODULES`; your code's and other
    libraries' warnings are untouched, except inside a replayed ``gt.function`` step, whose
    program is gradtape's: there every NumPy call of the step is, the step's own NumPy code
    on traced values included). To see them again::

        warnings.filterwarnings("default", category=RuntimeWarning, module="gradtape")

    Code that restores the warning filters after ``import gradtape`` (``warnings.catch_warnings``
    around the import; pytest when the import happens while collecting tests) drops the filter
    too; pytest users add ``ignore::RuntimeWarning:gradtape`` to ``filterwarnings``.

    Spellings: an environment variable is ``1``, ``true``, ``yes``, ``on`` or ``0``, ``false``,
    ``no``, ``off`` (case-insensitive, surrounding whitespace ignored; unset or empty means the
    default); anything else makes ``import gradtape`` raise ``ValueError`` naming the variable.
    Assigning an attribute takes a bool, the ints 0 and 1, or one of those strings (stored as
    a bool); anything else raises ``ValueError`` naming ``gt.config.<name>``.

    Example:
        >>> import gradtape as gt
        >>> gt.config.fusion in (True, False)
        True
    """

    __slots__ = ("_fusion", "_host_memory_cache")  # a misspelt switch raises AttributeError

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in _SWITCHES and name not in Config.__slots__:
            raise AttributeError(f"gt.config has no setting {name!r}; its settings are "
                                 f"{', '.join(_SWITCHES)}")
        object.__setattr__(self, name, value)

    def __init__(self) -> None:
        self.fusion = _env_flag("GRADTAPE_FUSION", True)
        self.check_numerics = _env_flag("GRADTAPE_CHECK_NUMERICS", False)
        self.host_memory_cache = _env_flag("GRADTAPE_HOST_MEMORY_CACHE", True)

    @property
    def fusion(self) -> bool:
        return self._fusion

    @fusion.setter
    def fusion(self, value: bool) -> None:
        self._fusion = _setting("fusion", value)

    @property
    def host_memory_cache(self) -> bool:
        return self._host_memory_cache

    @host_memory_cache.setter
    def host_memory_cache(self, value: bool) -> None:
        # the one call site of the process-wide allocator setting
        self._host_memory_cache = _setting("host_memory_cache", value)
        if self._host_memory_cache or hostmem.applied:  # never touch glibc's defaults unasked
            hostmem.apply(self._host_memory_cache)

    @property
    def check_numerics(self) -> bool:
        return HOOKS.numerics

    @check_numerics.setter
    def check_numerics(self, value: bool) -> None:
        HOOKS.numerics = _setting("check_numerics", value)
        HOOKS.refresh()

    def __repr__(self) -> str:
        return (f"Config(fusion={self.fusion}, check_numerics={self.check_numerics}, "
                f"host_memory_cache={self.host_memory_cache})")


config = Config()

#: The modules whose RuntimeWarnings ``import gradtape`` ignores (a regular expression matched
#: against the module a warning is attributed to): gradtape and its submodules. A forward op
#: that computes NaN or inf is silent, as in PyTorch and JAX; ``gt.config.check_numerics``
#: finds it. A filter rather than ``np.errstate`` around each op: entering ``errstate`` costs
#: more than a small op's whole dispatch, and per-op overhead is a product target.
QUIET_MODULES = r"gradtape(\.|\Z)"
warnings.filterwarnings("ignore", category=RuntimeWarning, module=QUIET_MODULES)
