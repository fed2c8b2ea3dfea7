"""Stateless CNN operations written once against the Python array API.

Every op ``NAME`` comes as ``NAME_forward(...) -> (out, cache)``,
``NAME_backward(dout, cache) -> gradients`` (in the order of the forward's array
arguments) and a plain ``NAME(...) -> out``. No array library is imported here:
each op takes its namespace from its inputs, so NumPy, CuPy, PyTorch and
array-api-strict arrays all work, and the result stays in the input's namespace,
dtype and device.
"""

from .activation import *  # noqa: F401,F403
from .activation import __all__ as _activation
from .conv import *  # noqa: F401,F403
from .conv import __all__ as _conv
from .linear import *  # noqa: F401,F403
from .linear import __all__ as _linear
from . import layout  # noqa: F401  (axis helpers: xpcnn.functional.layout)
from .loss import *  # noqa: F401,F403
from .loss import __all__ as _loss
from .normalization import *  # noqa: F401,F403
from .normalization import __all__ as _normalization
from .pool import *  # noqa: F401,F403
from .pool import __all__ as _pool
from .random import DropoutCache, dropout, dropout_backward, dropout_forward  # noqa: F401
from . import random  # noqa: F401  (counter-based random numbers: xpcnn.functional.random)

__all__ = sorted([*_activation, *_conv, *_linear, *_loss, *_normalization, *_pool,
                  "DropoutCache", "dropout", "dropout_backward", "dropout_forward"])
