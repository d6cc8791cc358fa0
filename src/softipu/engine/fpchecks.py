"""Floating-point exceptions (engine option ``debug.floatingPointExceptions``, Poplar's
``debug.floatPointOpException``; PopTorch's ``Precision.enableFloatingPointExceptions``).

The IPU traps three IEEE exceptions when its worker's FP control register enables them:
invalid operation (a NaN made from numbers: ``0/0``, ``inf - inf``, ``sqrt(-1)``), division by
zero and overflow (a finite result too large for its type, fp16 casts included). Underflow is
never trapped: fp16 gradients underflow all the time. softipu does the same by running the
codelets under ``np.errstate(**TRAPS)`` when the option is on (helper threads inherit it, see
:mod:`softipu.codelets.host`): the numpy operation that signals raises at once, before the
compute set writes anything. A NaN or inf that only passes through (a masked ``-inf`` selected,
NaN in, NaN out) signals nothing, as on the hardware. When the option is off the engine runs
under :data:`IGNORE`: inf/NaN flow through as the hardware's default, at no cost.

:func:`reword` words the error: the kind, the compute set (named after the op), the codelet,
the tiles and the user's source line where the vertices were added, and what to do.
"""

from __future__ import annotations

from softipu.errors import CodeletError

__all__ = ["TRAPS", "IGNORE", "reword"]

# np.errstate settings: the IPU's three traps, and the default (the hardware's inf/nan).
TRAPS = {"over": "raise", "invalid": "raise", "divide": "raise", "under": "ignore"}
IGNORE = {"all": "ignore"}

_WHAT_TO_DO = ("the IPU traps overflow, invalid operations and division by zero under "
               "debug.floatingPointExceptions (Precision.enableFloatingPointExceptions): look at the "
               "values this op reads (a loss scale too large, an fp16 value past 65504, a log or a "
               "division of zero), or turn the option off to let inf/nan through as the hardware does")


def _kind(message: str) -> str:
    kinds = (("overflow", "overflow"), ("invalid", "invalid operation"), ("divide", "divide by zero"))
    for word, kind in kinds:
        if word in message:
            return kind
    return "floating-point exception"


def reword(exc: CodeletError) -> CodeletError:
    """The error for a trap raised inside a codelet's compute: the engine's codelet failure
    (compute set, codelet, tiles, the line that added the vertices), said as what it is."""
    cause = exc.__cause__
    return CodeletError(f"floating-point exception ({_kind(str(cause))}): {exc}; {_WHAT_TO_DO}")
