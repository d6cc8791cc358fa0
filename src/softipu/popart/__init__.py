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

__all__ = ["AnchorReturnType", "Builder", "DataFlow", "DeviceInfo", "DeviceManager", "InferenceSession",
           "PopartError", "PyStepIO", "ReductionType", "SessionOptions", "TensorInfo", "TrainingSession",
           "VirtualGraphMode", "popart_exception"]

popart_exception = PopartError
