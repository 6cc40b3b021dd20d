"""gradtape: tape-based automatic differentiation on NumPy and CuPy.

Example:
    >>> import gradtape as gt
    >>> w = gt.Variable([1.0, 2.0])
    >>> with gt.GradientTape() as tape:
    ...     loss = gt.sum(w * w)
    >>> tape.gradient(loss, w).numpy()
    array([2., 4.], dtype=float32)
"""

import numpy as _np

from . import distributed as distributed
from . import nn as nn
from . import ops as ops
from . import optimizers as optimizers
from . import random as random
from ._src.backend import backend_name as backend_name
from ._src.backend import set_backend as set_backend
from ._src.backend import use_backend as use_backend
from ._src.config import config as config
from ._src.errors import BackendUnavailableError as BackendUnavailableError
from ._src.errors import TracingError as TracingError
from ._src.errors import UnconnectedGradientError as UnconnectedGradientError
from ._src.frontend.custom_gradient import custom_gradient as custom_gradient
from ._src.frontend.forward import ForwardAccumulator as ForwardAccumulator
from ._src.frontend.forward import jvp as jvp
from ._src.frontend.function import Function as Function
from ._src.frontend.function import function as function
from ._src.frontend.tape import GradientTape as GradientTape
from ._src.frontend.transforms import grad as grad
from ._src.frontend.transforms import hessian as hessian
from ._src.frontend.transforms import hvp as hvp
from ._src.frontend.transforms import jacfwd as jacfwd
from ._src.frontend.transforms import jacrev as jacrev
from ._src.frontend.transforms import value_and_grad as value_and_grad
from ._src.frontend.transforms import vjp as vjp
from ._src.frontend.vmap import vmap as vmap
from ._src.primitive import seal_builtins as _seal_builtins
from ._src.tensor import Tensor as Tensor
from ._src.tensor import TensorLike as TensorLike  # for annotations (a type alias: not in __all__)
from ._src.tensor import Variable as Variable
from ._src.tensor import from_dlpack as from_dlpack
from ._src.tensor import tensor as tensor

# softmax and log_softmax: gradtape.nn's functions, also at the top level
from .nn.functional import log_softmax as log_softmax
from .nn.functional import softmax as softmax

# creating tensors (constants: not differentiable primitives)
from .ops.creation import (
    arange,
    eye,
    full,
    full_like,
    linspace,
    one_hot,
    ones,
    ones_like,
    zeros,
    zeros_like,
)

# the ops, exported by __all__ (NumPy's names: gt.sum, gt.max ... shadow builtins on purpose)
from .ops.elementwise import (
    abs,
    add,
    arccos,
    arcsin,
    arctan,
    arctan2,
    atan2,
    bitwise_and,
    bitwise_not,
    bitwise_or,
    bitwise_xor,
    ceil,
    clip,
    cos,
    cosh,
    div,
    elu,
    equal,
    erf,
    erfc,
    exp,
    expm1,
    floor,
    floor_divide,
    gelu,
    greater,
    greater_equal,
    hypot,
    isfinite,
    isinf,
    isnan,
    leaky_relu,
    less,
    less_equal,
    log,
    log1p,
    logical_and,
    logical_not,
    logical_or,
    maximum,
    minimum,
    mul,
    neg,
    not_equal,
    pow,
    relu,
    remainder,
    round,
    rsqrt,
    safe_mul,
    sigmoid,
    sign,
    silu,
    sin,
    sinh,
    softplus,
    sqrt,
    square,
    sub,
    tan,
    tanh,
    trunc,
    where,
)
from .ops.indexing import (
    gather,
    getitem,
    index_add,
    segment_sum,
    take,
    take_along_axis,
)
from .ops.linalg import (
    cholesky,
    det,
    diag,
    dot,
    einsum,
    inv,
    matmul,
    outer,
    slogdet,
    solve,
    trace,
    tril,
    triu,
)
from .ops.reductions import (
    argmax,
    argmin,
    logsumexp,
    max,
    mean,
    min,
    norm,
    prod,
    std,
    sum,
    var,
)
from .ops.scan import (
    argsort,
    cumprod,
    cumsum,
    sort,
    topk,
)
from .ops.shape import (
    astype,
    broadcast_to,
    concat,
    expand_dims,
    flip,
    meshgrid,
    moveaxis,
    pad,
    repeat,
    reshape,
    roll,
    split,
    squeeze,
    stack,
    stop_gradient,
    swapaxes,
    tile,
    transpose,
)

_seal_builtins()  # every primitive declared above is gradtape's own (extensions come later)

# dtype names, as TensorFlow's tf.float32 and PyTorch's torch.float32 (NumPy dtypes: every
# dtype= argument takes them, and a tensor's .dtype compares equal to them); not in __all__:
# ``from gradtape import *`` leaves NumPy's own names alone
float16 = _np.dtype("float16")
float32 = _np.dtype("float32")
float64 = _np.dtype("float64")
int8 = _np.dtype("int8")
int16 = _np.dtype("int16")
int32 = _np.dtype("int32")
int64 = _np.dtype("int64")
uint8 = _np.dtype("uint8")
bool_ = _np.dtype("bool")
complex64 = _np.dtype("complex64")
complex128 = _np.dtype("complex128")

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailableError", "ForwardAccumulator", "GradientTape", "Tensor",
    "UnconnectedGradientError", "Variable", "TracingError", "function", "Function",
    "backend_name", "config", "custom_gradient", "from_dlpack", "nn", "optimizers", "distributed", "set_backend",
    "tensor", "use_backend", "jvp",
    "random", "zeros", "ones", "full", "zeros_like", "ones_like", "full_like", "arange", "linspace",
    "eye", "one_hot",
    "vmap", "grad", "value_and_grad", "vjp", "jacrev", "jacfwd", "hessian", "hvp",
    "add", "sub", "mul", "div", "neg", "pow", "exp", "log", "log1p", "expm1", "sqrt", "rsqrt",
    "square", "abs", "sign", "sin", "cos", "tan", "tanh", "sinh", "cosh", "arcsin", "arccos",
    "arctan", "sigmoid", "relu", "leaky_relu", "elu", "gelu", "softplus", "silu", "erf", "maximum",
    "minimum", "clip", "where", "safe_mul", "less", "less_equal", "greater", "greater_equal",
    "equal", "not_equal", "logical_and", "logical_or", "logical_not",
    "bitwise_and", "bitwise_or", "bitwise_xor", "bitwise_not", "isfinite", "isnan", "isinf",
    "getitem", "take", "gather",
    "matmul", "dot", "einsum", "outer", "solve", "inv", "det", "slogdet", "cholesky",
    "sum", "mean", "prod", "max", "min", "logsumexp", "var",
    "std", "norm", "argmax", "argmin", "reshape", "transpose", "broadcast_to", "moveaxis",
    "swapaxes", "expand_dims", "squeeze", "stack", "concat", "split", "pad", "flip", "tile",
    "repeat", "astype", "stop_gradient",
    "erfc", "floor", "ceil", "round", "trunc", "arctan2", "atan2", "hypot", "floor_divide", "remainder",
    "take_along_axis", "index_add",
    "segment_sum", "roll", "meshgrid", "diag", "trace", "triu", "tril", "cumsum", "cumprod",
    "argsort", "sort", "topk", "softmax", "log_softmax",
]
