"""Frontends: models from other frameworks onto softipu's ops (``torch``; ``onnx`` later).

``Registry`` is the one name -> value registry type the frontends (and codelets) share.
Import ``softipu.torch`` / ``softipu.poptorch`` for the PyTorch frontend.
"""

from softipu.frontends.errors import FrontendError, RegistryError
from softipu.frontends.registry import Registry

__all__ = ["FrontendError", "Registry", "RegistryError"]
