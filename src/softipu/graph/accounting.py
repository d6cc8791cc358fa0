"""Tile memory the SDK adds for a program: vertex state, exchange code, control code.

One rule per figure, read by both the compiler's memory plan (``compiler/memory.py``) and the
matmul planner (``ops/planner.py``), so the planner's estimate of a plan's memory is the memory
the compiled plan is charged; they cannot drift. The byte figures are :class:`Target` fields
(all [U]: no published source gives them).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from softipu.graph.vertex import Direction, FieldShape, Vertex
from softipu.target import Target

__all__ = ["vertex_state_bytes", "exchange_code_bytes", "control_code_bytes"]


def vertex_state_bytes(codelet: type[Vertex], target: Target,
                       list_lengths: Mapping[str, npt.ArrayLike] | None = None) -> Any:
    """Bytes of one vertex's state on its tile.

    A vector field is a pointer and a size (``target.vertex_state_bytes_per_field``); a scalar
    field a 32-bit pointer; a param its value rounded up to 32 bits; a vector list a 32-bit
    count plus a vector entry per list element (``list_lengths[name]`` of them, 0 if not given;
    an int, or an int array to price many list lengths at once, which returns an array).

    >>> import softipu as sp
    >>> class Axpy(sp.Vertex):
    ...     x = sp.Input(sp.float32)
    ...     y = sp.InOut(sp.float32)
    ...     a = sp.Param(sp.float32)
    ...     @staticmethod
    ...     def compute(x, y, a):
    ...         y += a * x
    >>> vertex_state_bytes(Axpy, sp.targets.GC200)  # 8 + 8 + 4
    20
    """
    per_field = target.vertex_state_bytes_per_field
    lengths = list_lengths or {}
    total = 0
    for name, f in codelet.fields.items():
        if f.direction is Direction.PARAM:
            total += -(-f.dtype.itemsize // 4) * 4
        elif f.shape is FieldShape.SCALAR:
            total += 4
        elif f.shape is FieldShape.VECTOR:
            total += per_field
        else:  # a vector list
            total = total + 4 + per_field * np.asarray(lengths.get(name, 0), np.int64)
    return total if isinstance(total, int) else (int(total) if total.ndim == 0 else total)


def exchange_code_bytes(regions: npt.ArrayLike, target: Target) -> np.ndarray:
    """Exchange code for ``regions`` contiguous regions sent or received (elementwise)."""
    return np.asarray(regions, np.int64) * target.exchange_code_bytes_per_region


def control_code_bytes(steps: npt.ArrayLike, target: Target) -> np.ndarray:
    """Control code for ``steps`` program steps, on every tile (elementwise)."""
    return np.asarray(steps, np.int64) * target.control_code_bytes_per_step


def host_available_bytes() -> int | None:
    """Bytes this host can still hand out without swapping: Linux's ``MemAvailable`` (free memory
    plus the page cache it can drop), else the free pages, else None (not known: no check)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
