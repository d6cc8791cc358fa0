"""PopLibs-shaped operations: ``op(graph, *inputs, prog, *, name="", options=None) -> Tensor``.

Families, each documented in its module and re-exported here as ``sp.ops.<name>``:
``elementwise`` (popops unary/binary/ternary ops, ``map`` fusion, casts), ``nn`` (popnn:
activations, softmax, norms, pooling, losses, each with its gradient).
"""

from softipu.ops import elementwise, nn
from softipu.ops.common import OpError
from softipu.ops.elementwise import *  # noqa: F403 - the family's __all__
from softipu.ops.mapping import map_linearly
from softipu.ops.nn import *  # noqa: F403

__all__ = ["OpError", "elementwise", "map_linearly", "nn", *elementwise.__all__, *nn.__all__]
