"""PopLibs-shaped operations: ``op(graph, *inputs, prog, *, name="", options=None) -> Tensor``."""

from softipu.ops.common import OpError
from softipu.ops.mapping import map_linearly

__all__ = ["OpError", "map_linearly"]
