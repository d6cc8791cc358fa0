"""An ``onnx.backend`` Backend for softipu, so ONNX's own backend tests can run on a simulated IPU.

>>> import numpy as np
>>> from onnx import helper, TensorProto as T
>>> g = helper.make_graph([helper.make_node("Neg", ["x"], ["y"])], "g",
...                       [helper.make_tensor_value_info("x", T.FLOAT, [2])],
...                       [helper.make_tensor_value_info("y", T.FLOAT, [2])])
>>> m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
>>> SoftIPUBackend.run_model(m, [np.array([1, -2], np.float32)])[0]
array([-1.,  2.], dtype=float32)
"""

from __future__ import annotations

from collections import namedtuple
from typing import Any

import numpy as np
import onnx
from onnx.backend.base import Backend, BackendRep

from softipu.frontends.onnx.lower import DEVICE_DTYPES, OnnxOptions
from softipu.frontends.onnx.session import InferenceSession
from softipu.target import ipu_model

__all__ = ["SoftIPUBackend", "SoftIPURep", "TEST_OPTIONS"]

# A small chip keeps the conformance runs fast; the numbers are the same on any chip.
TEST_OPTIONS = OnnxOptions(target=ipu_model(tiles=16, bytes_per_tile=4 << 20))


class SoftIPURep(BackendRep):
    """A prepared model: an :class:`InferenceSession`; ``run(inputs)`` returns the outputs."""

    def __init__(self, session: InferenceSession) -> None:
        self.session = session

    def run(self, inputs: Any, **kwargs: Any) -> tuple[np.ndarray, ...]:
        names = [i.name for i in self.session.get_inputs()]
        if isinstance(inputs, dict):
            feeds = dict(inputs)
        else:
            inputs = [inputs] if isinstance(inputs, np.ndarray) else list(inputs)
            feeds = dict(zip(names, inputs, strict=False))
        outs = self.session.run(None, feeds)
        result = namedtuple("Outputs", [f"o{i}" for i in range(len(outs))])  # type: ignore[misc]
        return tuple(result(*outs))


class SoftIPUBackend(Backend):
    """``onnx.backend.base.Backend`` on a simulated IPU (the "IPU" device)."""

    options = TEST_OPTIONS

    @classmethod
    def is_compatible(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs: Any) -> bool:
        return all(vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type in DEVICE_DTYPES
                   for vi in [*model.graph.input, *model.graph.output])

    @classmethod
    def prepare(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs: Any) -> SoftIPURep:
        return SoftIPURep(InferenceSession(model, cls.options))

    @classmethod
    def run_model(cls, model: onnx.ModelProto, inputs: Any, device: str = "CPU", **kwargs: Any) -> Any:
        return cls.prepare(model, device).run(inputs)

    @classmethod
    def supports_device(cls, device: str) -> bool:
        return device in ("CPU", "IPU")
