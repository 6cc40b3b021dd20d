"""gradtape: tape-based automatic differentiation on NumPy and CuPy.

Example:
    >>> import gradtape as gt
    >>> w = gt.Variable([1.0, 2.0])
    >>> with gt.GradientTape() as tape:
    ...     loss = gt.sum(w * w)
    >>> tape.gradient(loss, w).numpy()
    array([2., 4.], dtype=float32)
"""

from . import _tensor
from . import ops as _ops_module
from ._backend import BackendUnavailableError, backend_name, set_backend, use_backend
from ._config import config
from ._custom import custom_gradient
from ._tape import GradientTape, UnconnectedGradientError
from ._tensor import Tensor, Variable, from_dlpack, tensor
from .ops import *  # noqa: F403
from .ops import __all__ as _ops_all

_tensor._ops = _ops_module

from . import nn, optimizers  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailableError", "GradientTape", "Tensor", "UnconnectedGradientError", "Variable",
    "backend_name", "config", "custom_gradient", "from_dlpack", "nn", "optimizers", "set_backend", "tensor",
    "use_backend",
    *_ops_all,
]
