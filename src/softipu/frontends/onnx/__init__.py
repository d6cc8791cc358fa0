"""The ONNX frontend: an ONNX model (file, bytes or ``onnx.ModelProto``) loaded with the ``onnx``
package, lowered node by node onto ``softipu.ops`` through a registry of lowerings (the same
:class:`~softipu.frontends.registry.Registry` type as the ATen lowerings) and run on a simulated IPU.
Public as ``softipu.onnx`` (onnxruntime's session API) and ``softipu.popart`` (PopART's names).
"""

from softipu.frontends.onnx import lowerings  # noqa: F401 - registers the built-in lowerings
from softipu.frontends.onnx.errors import InputError, LoweringError, OnnxModelError, UnsupportedOpsError
from softipu.frontends.onnx.load import load_model
from softipu.frontends.onnx.lower import OnnxContext, OnnxLowered, OnnxOptions, check_supported, lower_model
from softipu.frontends.onnx.registry import ONNX_LOWERINGS, OnnxLowering, register_onnx_lowering
from softipu.frontends.onnx.session import InferenceSession, NodeArg

__all__ = [
    "InferenceSession", "InputError", "LoweringError", "NodeArg", "ONNX_LOWERINGS", "OnnxContext",
    "OnnxLowered", "OnnxLowering", "OnnxModelError", "OnnxOptions", "UnsupportedOpsError", "check_supported",
    "load_model", "lower_model", "register_onnx_lowering",
]
