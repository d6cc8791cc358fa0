"""softipu's exceptions.

Every error a user can provoke is a :class:`SoftIPUError`. Messages name the object (tensor,
tile, compute set, vertex, stream, program), the user's source line where known, and what to do.
Subclasses also derive from the matching builtin (``ValueError``, ``IndexError``...) so generic
``except`` clauses keep working.
"""

from __future__ import annotations

import sys
import sysconfig

from softipu.debug import UNKNOWN, caller_location

__all__ = [
    "SoftIPUError",
    "TargetError",
    "DTypeError",
    "TensorError",
    "MappingError",
    "FieldError",
    "CodeletError",
    "WriteConflictError",
    "ProgramError",
    "StreamError",
    "CompileError",
    "EngineError",
    "OutOfMemoryError",
    "HostMemoryError",
    "ReportError",
    "OptionError",
]


class SoftIPUError(Exception):
    """Base class of every error softipu raises on purpose.

    A message that names no source line gets the user's line it was raised from (the innermost
    frame outside softipu, as :func:`softipu.debug.caller_location` finds it) appended, so every
    error points at the user's code; none where that frame is Python's or a library's own (a
    thread pool, torch), which would mislead.
    """

    def __init__(self, *args: object) -> None:
        if len(args) == 1 and isinstance(args[0], str) and "(at " not in args[0]:
            args = (args[0] + _raised_at(),)
        super().__init__(*args)


def _raised_at() -> str:
    location = caller_location()
    if location is UNKNOWN or location.filename.startswith(_LIBRARIES):
        return ""
    return f" (at {location})"


# Where Python's own modules and installed packages live, and doctests' pseudo-files (their
# expected output shows the message alone): a frame there is not the user's line.
_LIBRARIES = tuple({sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
                   | {sys.base_prefix + "/lib/", sys.prefix + "/lib/", "<frozen", "<doctest"})


class TargetError(SoftIPUError, ValueError):
    """A chip or system description is inconsistent."""


class DTypeError(SoftIPUError, TypeError):
    """An unknown dtype, or a dtype that does not fit where it is used."""


class TensorError(SoftIPUError, ValueError):
    """A tensor view operation got shapes, indices or axes that do not fit."""


class MappingError(SoftIPUError, ValueError):
    """Elements mapped to no tile, to two tiles, or to a tile the target lacks."""


class FieldError(SoftIPUError, ValueError):
    """A vertex field is missing, unknown, or connected with the wrong dtype or shape."""


class CodeletError(SoftIPUError, RuntimeError):
    """A codelet class is malformed, or its compute raised while running."""


class WriteConflictError(SoftIPUError, ValueError):
    """Two vertices of one compute set write the same element, or one reads what another writes."""


class ProgramError(SoftIPUError, ValueError):
    """A program is malformed or an engine was asked to run a program it does not have."""


class StreamError(SoftIPUError, ValueError):
    """A host stream is unknown, unconnected, or connected with data of the wrong size or dtype."""


class CompileError(SoftIPUError, ValueError):
    """The graph and programs cannot be compiled; the message lists every problem found."""


class OutOfMemoryError(CompileError):
    """Some tile needs more bytes than it has; the message names the tiles, the largest
    contributors and what to change."""


class HostMemoryError(SoftIPUError, MemoryError):
    """The values of a program would not fit in this host's free memory; refused before allocating."""


class ReportError(SoftIPUError, ValueError):
    """A report read before anything ran, or a saved report that is corrupt or of another version."""


class EngineError(SoftIPUError, ValueError):
    """Reading or writing engine state with data that does not fit."""


class OptionError(SoftIPUError, KeyError):
    """An unknown option key or a bad option value."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""
