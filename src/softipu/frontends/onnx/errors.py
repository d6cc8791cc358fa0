"""Errors of the ONNX frontend (all :class:`softipu.SoftIPUError`); the shared frontend errors
(``UnsupportedOpsError``, ``LoweringError``, ``InputError``) are used as they are."""

from __future__ import annotations

from softipu.frontends.errors import FrontendError, InputError, LoweringError, UnsupportedOpsError

__all__ = ["OnnxModelError", "InputError", "LoweringError", "PopartError", "UnsupportedOpsError"]


class OnnxModelError(FrontendError, ValueError):
    """The ONNX file itself is unusable: corrupt, unknown opset, external data outside its folder."""


class PopartError(FrontendError, RuntimeError):
    """``popart.popart_exception``: a PopART-API call in the wrong order or with bad arguments."""
