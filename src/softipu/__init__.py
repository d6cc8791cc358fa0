"""softipu: the Graphcore IPU platform rebuilt as open software.

>>> import softipu as sp
>>> sp.targets.GC200.num_tiles
1472
"""

from softipu import collectives, compiler, ops, program
from softipu import target as targets
from softipu.dtypes import (
    DType,
    bool_,
    float16,
    float32,
    int8,
    int16,
    int32,
    int64,
    uint8,
    uint16,
    uint32,
    uint64,
)
from softipu.engine import Engine, EngineOptions
from softipu.errors import (
    CodeletError,
    CompileError,
    DTypeError,
    EngineError,
    FieldError,
    HostMemoryError,
    MappingError,
    OptionError,
    OutOfMemoryError,
    ProgramError,
    ReportError,
    SoftIPUError,
    StreamError,
    TargetError,
    TensorError,
    WriteConflictError,
)
from softipu.graph import (
    ComputeSet,
    DataStream,
    FieldShape,
    Function,
    Graph,
    InOut,
    Input,
    MultiVertex,
    Output,
    Param,
    SupervisorVertex,
    Tensor,
    Vertex,
    VertexRef,
    concat,
)
from softipu.graph.cycles import cycle_count, cycle_stamp
from softipu.log import configure_from_env as _configure_logging
from softipu.profile import Report
from softipu.target import Target, systems

SCALAR = FieldShape.SCALAR
VECTOR = FieldShape.VECTOR
VECTOR_LIST = FieldShape.VECTOR_LIST

_configure_logging()  # SOFTIPU_LOG_LEVEL / SOFTIPU_LOG_DEST (softipu.log)

__version__ = "0.1.0"

__all__ = [
    "CodeletError", "CompileError", "ComputeSet", "DType", "DTypeError", "DataStream", "Engine",
    "EngineError", "EngineOptions", "FieldError", "FieldShape", "Function", "Graph", "HostMemoryError",
    "InOut", "Input", "MappingError", "MultiVertex", "OptionError", "OutOfMemoryError", "Output", "Param",
    "ProgramError", "Report", "ReportError", "SCALAR", "SoftIPUError", "StreamError",
    "SupervisorVertex", "Target", "TargetError", "Tensor", "TensorError", "VECTOR", "VECTOR_LIST",
    "Vertex", "VertexRef", "WriteConflictError", "bool_", "collectives", "compiler", "concat", "cycle_count",
    "cycle_stamp", "float16", "float32", "int8", "int16", "int32", "int64", "ops", "program",
    "systems", "targets", "uint8", "uint16", "uint32", "uint64",
]
