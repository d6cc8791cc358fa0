"""PopLibs-shaped operations: ``op(graph, *inputs, prog, *, name="", options=None) -> Tensor``.

Families, each documented in its module and re-exported here as ``sp.ops.<name>``:
``elementwise`` (popops unary/binary/ternary ops, ``map`` fusion, casts).
"""

from softipu.ops import elementwise
from softipu.ops.common import OpError
from softipu.ops.elementwise import *  # noqa: F403 - the family's __all__
from softipu.ops.mapping import map_linearly

__all__ = ["OpError", "elementwise", "map_linearly", *elementwise.__all__]
