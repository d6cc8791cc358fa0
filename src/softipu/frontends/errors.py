"""Errors of the frontends; every one is a :class:`softipu.SoftIPUError`."""

from __future__ import annotations

from softipu.errors import SoftIPUError

__all__ = ["FrontendError", "RegistryError", "UnsupportedOpsError", "ExportError", "LoweringError",
           "InputError", "PoptorchError", "RecoverableError", "UnrecoverableError", "as_poptorch_error"]


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


# -- PopTorch's exception classes (poptorch.Error, RecoverableError, UnrecoverableError) -------------
class PoptorchError(RuntimeError):
    """PopTorch's ``poptorch.Error``: what its API raises when compiling or running fails.

    softipu's own exceptions raised through ``softipu.poptorch`` are made instances of this class
    too (:func:`as_poptorch_error`), so they are both ``poptorch.Error`` and ``sp.SoftIPUError``.
    ``message`` is the text, ``type`` the component ("softipu"), ``location`` where it happened.
    """

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""

    @property
    def type(self) -> str:
        return "softipu"

    @property
    def location(self) -> str:
        return ""


class RecoverableError(PoptorchError):
    """PopTorch's ``poptorch.RecoverableError``: the run failed on the device and the device can
    be used again after ``recovery_action`` ("IPU_RESET": the simulated IPU needs nothing: call
    the model again). softipu raises it for failures while running (a floating-point trap)."""

    @property
    def recovery_action(self) -> str:
        return "IPU_RESET"


class UnrecoverableError(PoptorchError):
    """PopTorch's ``poptorch.UnrecoverableError`` (the machine must be taken offline). A simulated
    IPU never fails this way; the class exists so scripts that catch it run unchanged."""


_MIXED: dict[tuple[type, type], type] = {}


def as_poptorch_error(exc: BaseException, base: type = PoptorchError) -> BaseException:
    """``exc`` made an instance of ``base`` as well (a class deriving from both, kept per pair of
    classes), so ``except poptorch.Error`` and ``except sp.SoftIPUError`` both catch it."""
    if isinstance(exc, base):
        return exc
    key = (type(exc), base)
    mixed = _MIXED.get(key)
    if mixed is None:
        mixed = type(type(exc).__name__, key, {"__module__": type(exc).__module__,
                                               "__qualname__": type(exc).__qualname__})
        _MIXED[key] = mixed
    try:
        exc.__class__ = mixed
    except TypeError:  # a layout that cannot change class (an OSError): left as it is
        pass
    return exc
