"""All differentiable operations, grouped by family; re-exported at ``gradtape``."""

from .elementwise import *  # noqa: F403
from .elementwise import __all__ as _elementwise_all
from .indexing import *  # noqa: F403
from .indexing import __all__ as _indexing_all
from .linalg import *  # noqa: F403
from .linalg import __all__ as _linalg_all
from .reductions import *  # noqa: F403
from .reductions import __all__ as _reductions_all
from .shape import *  # noqa: F403
from .shape import __all__ as _shape_all

__all__ = [*_elementwise_all, *_indexing_all, *_linalg_all, *_reductions_all, *_shape_all]
