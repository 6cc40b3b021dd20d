"""Neural networks: ops (``gt.nn.softmax``, ``gt.nn.cross_entropy``, ``gt.nn.conv2d`` ...),
modules that track their Variables (``gt.nn.Module``, ``Dense``, ``Conv2D``, ``Sequential``),
initializers, and ``.npz`` checkpoints.

Example:
    >>> import gradtape as gt
    >>> model = gt.nn.Sequential([gt.nn.Dense(4, 8, activation="relu", seed=0), gt.nn.Dense(8, 3, seed=1)])
    >>> logits = model(gt.tensor([[1.0, 2.0, 3.0, 4.0]]))
    >>> logits.shape, len(model.trainable_variables)
    ((1, 3), 4)
"""

from ..ops.elementwise import elu, gelu, leaky_relu, relu, sigmoid, silu, softplus, tanh
from . import init
from .conv import *  # noqa: F403
from .conv import __all__ as _conv_all
from .functional import *  # noqa: F403
from .functional import __all__ as _functional_all
from .modules import *  # noqa: F403
from .modules import __all__ as _modules_all

__all__ = [*_functional_all, *_conv_all, *_modules_all, "init", "relu", "sigmoid", "tanh", "gelu",
           "silu", "softplus", "leaky_relu", "elu"]
