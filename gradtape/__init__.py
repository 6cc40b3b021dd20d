"""gradtape: tape-based automatic differentiation on NumPy and CuPy.

Example:
    >>> import gradtape as gt
    >>> w = gt.Variable([1.0, 2.0])
    >>> with gt.GradientTape() as tape:
    ...     loss = gt.sum(w * w)
    >>> tape.gradient(loss, w).numpy()
    array([2., 4.], dtype=float32)
"""

from . import nn as nn
from . import ops as ops
from . import optimizers as optimizers
from ._src.backend import backend_name as backend_name
from ._src.backend import set_backend as set_backend
from ._src.backend import use_backend as use_backend
from ._src.config import config as config
from ._src.errors import BackendUnavailableError as BackendUnavailableError
from ._src.errors import UnconnectedGradientError as UnconnectedGradientError
from ._src.frontend.custom_gradient import custom_gradient as custom_gradient
from ._src.frontend.tape import GradientTape as GradientTape
from ._src.tensor import Tensor as Tensor
from ._src.tensor import Variable as Variable
from ._src.tensor import from_dlpack as from_dlpack
from ._src.tensor import tensor as tensor
from .ops.elementwise import (
    abs as abs,
    add as add,
    arccos as arccos,
    arcsin as arcsin,
    arctan as arctan,
    clip as clip,
    cos as cos,
    cosh as cosh,
    div as div,
    elu as elu,
    equal as equal,
    erf as erf,
    exp as exp,
    expm1 as expm1,
    gelu as gelu,
    greater as greater,
    greater_equal as greater_equal,
    leaky_relu as leaky_relu,
    less as less,
    less_equal as less_equal,
    log as log,
    log1p as log1p,
    logical_and as logical_and,
    logical_not as logical_not,
    logical_or as logical_or,
    maximum as maximum,
    minimum as minimum,
    mul as mul,
    neg as neg,
    not_equal as not_equal,
    pow as pow,
    relu as relu,
    rsqrt as rsqrt,
    safe_mul as safe_mul,
    sigmoid as sigmoid,
    sign as sign,
    silu as silu,
    sin as sin,
    sinh as sinh,
    softplus as softplus,
    sqrt as sqrt,
    square as square,
    sub as sub,
    tan as tan,
    tanh as tanh,
    where as where,
)
from .ops.indexing import (
    gather as gather,
    getitem as getitem,
    take as take,
)
from .ops.linalg import (
    dot as dot,
    einsum as einsum,
    matmul as matmul,
    outer as outer,
)
from .ops.reductions import (
    argmax as argmax,
    argmin as argmin,
    logsumexp as logsumexp,
    max as max,
    mean as mean,
    min as min,
    norm as norm,
    prod as prod,
    std as std,
    sum as sum,
    var as var,
)
from .ops.shape import (
    astype as astype,
    broadcast_to as broadcast_to,
    concat as concat,
    expand_dims as expand_dims,
    flip as flip,
    moveaxis as moveaxis,
    pad as pad,
    repeat as repeat,
    reshape as reshape,
    split as split,
    squeeze as squeeze,
    stack as stack,
    stop_gradient as stop_gradient,
    swapaxes as swapaxes,
    tile as tile,
    transpose as transpose,
)

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailableError", "GradientTape", "Tensor", "UnconnectedGradientError", "Variable",
    "backend_name", "config", "custom_gradient", "from_dlpack", "nn", "optimizers", "set_backend",
    "tensor", "use_backend",
    "add", "sub", "mul", "div", "neg", "pow", "exp", "log", "log1p", "expm1", "sqrt", "rsqrt",
    "square", "abs", "sign", "sin", "cos", "tan", "tanh", "sinh", "cosh", "arcsin", "arccos",
    "arctan", "sigmoid", "relu", "leaky_relu", "elu", "gelu", "softplus", "silu", "erf", "maximum",
    "minimum", "clip", "where", "safe_mul", "less", "less_equal", "greater", "greater_equal",
    "equal", "not_equal", "logical_and", "logical_or", "logical_not", "getitem", "take", "gather",
    "matmul", "dot", "einsum", "outer", "sum", "mean", "prod", "max", "min", "logsumexp", "var",
    "std", "norm", "argmax", "argmin", "reshape", "transpose", "broadcast_to", "moveaxis",
    "swapaxes", "expand_dims", "squeeze", "stack", "concat", "split", "pad", "flip", "tile",
    "repeat", "astype", "stop_gradient",
]
