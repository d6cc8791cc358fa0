"""The built-in ONNX lowerings; importing this package registers them all."""

from softipu.frontends.onnx.lowerings import elementwise, nn, recurrent, resize, shape  # noqa: F401 - registers
