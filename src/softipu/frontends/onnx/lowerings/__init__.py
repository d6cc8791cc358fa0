"""The built-in ONNX lowerings; importing this package registers them all."""

from softipu.frontends.onnx.lowerings import elementwise, nn, resize, shape  # noqa: F401 - registers lowerings
