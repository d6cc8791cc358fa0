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
    VirtualGraphMode,
)
from softipu.frontends.onnx.popart_training import (
    SGD,
    Adam,
    AdamMode,
    ConstSGD,
    PyWeightsIO,
    TrainingSession,
    WeightDecayMode,
)
from softipu.frontends.torch.training.recompute import RecomputationType

__all__ = ["SGD", "Adam", "AdamMode", "AnchorReturnType", "Builder", "ConstSGD", "DataFlow", "DeviceInfo",
           "DeviceManager", "InferenceSession", "PopartError", "PyStepIO", "PyWeightsIO", "RecomputationType",
           "ReductionType", "SessionOptions", "TensorInfo", "TrainingSession", "VirtualGraphMode",
           "WeightDecayMode", "popart_exception"]

popart_exception = PopartError
