"""ONNX models on a simulated IPU with onnxruntime's session API (``softipu.onnx.InferenceSession``).

>>> import softipu.onnx as so
>>> callable(so.InferenceSession)
True

``Options`` picks the chip; ``register_lowering("OpType", fn)`` adds or replaces an op's lowering.
"""

from softipu.frontends.onnx import (
    ONNX_LOWERINGS,
    InferenceSession,
    InputError,
    LoweringError,
    NodeArg,
    OnnxLowering,
    OnnxModelError,
    UnsupportedOpsError,
    load_model,
)
from softipu.frontends.onnx import OnnxOptions as Options
from softipu.frontends.onnx import register_onnx_lowering as register_lowering

__all__ = ["InferenceSession", "InputError", "LOWERINGS", "LoweringError", "NodeArg", "OnnxLowering",
           "OnnxModelError", "Options", "UnsupportedOpsError", "load_model", "register_lowering"]

LOWERINGS = ONNX_LOWERINGS
