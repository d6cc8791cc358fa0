"""Errors of the frontends; every one is a :class:`softipu.SoftIPUError`."""

from __future__ import annotations

from softipu.errors import SoftIPUError

__all__ = ["FrontendError", "RegistryError", "UnsupportedOpsError", "ExportError", "LoweringError",
           "InputError"]


class FrontendError(SoftIPUError):
    """Base of the errors a frontend raises about the user's model or call."""


class RegistryError(FrontendError, KeyError):
    """A name registered twice, or looked up and not found (the message lists near names)."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class UnsupportedOpsError(FrontendError, NotImplementedError):
    """The model uses ops that have no lowering; ``ops`` maps each op name to the user's lines.

    Raised once, before anything is built, with every missing op listed.
    """

    def __init__(self, message: str, ops: dict[str, list[str]] | None = None) -> None:
        super().__init__(message)
        self.ops = dict(ops or {})


class ExportError(FrontendError, RuntimeError):
    """``torch.export`` could not capture the model (data-dependent control flow, ``.item()``...)."""


class LoweringError(FrontendError, RuntimeError):
    """A lowering failed on a node; the message names the op, the node and the user's line."""


class InputError(FrontendError, ValueError):
    """A call's inputs do not fit the compiled model (count, structure, dtype or batch size)."""
