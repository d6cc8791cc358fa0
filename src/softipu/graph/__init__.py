"""The Poplar-style graph layer: tensors, mappings, compute sets, vertices, programs, streams."""

from softipu.graph.graph import ComputeSet, Function, Graph, Variable, VertexRef
from softipu.graph.streams import DataStream, StreamDirection
from softipu.graph.tensor import Tensor, concat
from softipu.graph.vertex import (
    Direction,
    Field,
    FieldShape,
    InOut,
    Input,
    MultiVertex,
    Output,
    Param,
    SupervisorVertex,
    Vertex,
    VertexKind,
)

__all__ = [
    "ComputeSet", "DataStream", "Direction", "Field", "FieldShape", "Function", "Graph", "InOut",
    "Input", "MultiVertex", "Output", "Param", "StreamDirection", "SupervisorVertex", "Tensor",
    "Variable", "Vertex", "VertexKind", "VertexRef", "concat",
]
