"""PopART's Python API names on a simulated IPU (``import softipu.popart as popart``).

>>> import softipu.popart as popart
>>> popart.AnchorReturnType("EVERYN", 2).rp()
2
"""

from softipu.frontends.onnx.popart import (
    AnchorReturnType,
    Builder,
    DataFlow,
    DeviceInfo,
    DeviceManager,
    InferenceSession,
    PopartError,
    PyStepIO,
    ReductionType,
    SessionOptions,
    TensorInfo,
    TrainingSession,
    VirtualGraphMode,
)
from softipu.frontends.torch.training.recompute import RecomputationType

__all__ = ["AnchorReturnType", "Builder", "DataFlow", "DeviceInfo", "DeviceManager", "InferenceSession",
           "PopartError", "PyStepIO", "RecomputationType", "ReductionType", "SessionOptions", "TensorInfo",
           "TrainingSession",
           "VirtualGraphMode", "popart_exception"]

popart_exception = PopartError
