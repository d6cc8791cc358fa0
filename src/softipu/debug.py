"""Where things came from: the user's source line for every variable, vertex and program.

Poplar's ``DebugContext`` in miniature. Locations are captured cheaply (one frame walk, no
``inspect``) and formatted only when an error or a profile needs them.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

__all__ = ["SourceLocation", "caller_location", "user_location"]

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


@dataclass(frozen=True, slots=True)
class SourceLocation:
    """A file and line in the user's code."""

    filename: str
    lineno: int

    def __str__(self) -> str:
        return f"{self.filename}:{self.lineno}"


UNKNOWN = SourceLocation("<unknown>", 0)


# Set by frontends while they lower one node of a user's model: that node's line in the user's
# source, which no frame on the stack shows (the user's code ran inside torch.export).
_USER_LOCATION: ContextVar[SourceLocation | None] = ContextVar("softipu_user_location", default=None)


@contextmanager
def user_location(location: SourceLocation | None) -> Iterator[None]:
    """Attribute everything created inside the block to ``location`` (when it is known)."""
    token = _USER_LOCATION.set(location)
    try:
        yield
    finally:
        _USER_LOCATION.reset(token)


def caller_location() -> SourceLocation:
    """The innermost frame on the stack that is not inside the softipu package.

    Library code (ops, frontends) calling the graph API is skipped, so the location is the line
    the user wrote. Inside :func:`user_location`, that location instead.
    """
    given = _USER_LOCATION.get()
    if given is not None:
        return given
    frame = sys._getframe(1)
    while frame is not None:
        filename = frame.f_code.co_filename
        # Functions compiled from "<string>" (the __init__ dataclasses generate) are not the user's;
        # a "<string>" module (python -c, exec) is.
        generated = filename == "<string>" and frame.f_code.co_name != "<module>"
        if not filename.startswith(_PACKAGE_DIR) and not generated:
            return SourceLocation(filename, frame.f_lineno)
        frame = frame.f_back
    return UNKNOWN


def at(location: SourceLocation | None) -> str:
    """' (at file:line)' for messages, or '' where the location is unknown."""
    if location is None or location is UNKNOWN:
        return ""
    return f" (at {location})"
