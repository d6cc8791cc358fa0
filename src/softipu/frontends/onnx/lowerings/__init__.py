"""The built-in ONNX lowerings; importing this package registers them all."""

from softipu.frontends.onnx.lowerings import (  # noqa: F401 - registers the lowerings
    control,
    einsum,
    elementwise,
    graphcore,
    linalg,
    nn,
    quant,
    recurrent,
    resize,
    roialign,
    sampling,
    shape,
)
