"""Helpers shared by the Engine tests (test_engine.py, test_engine_streams.py,
test_engine_errors.py): both interpreters as a parameter, engines, variables, source lines."""

from __future__ import annotations

import sys

import pytest

import softipu as sp
from codelets_for_tests import Increment
from softipu import program as P

ENGINES = pytest.mark.parametrize("reference", [False, True], ids=["fast", "reference"])


def engine(g: sp.Graph, programs, reference: bool = False, **options) -> sp.Engine:
    return sp.Engine(g, programs, {"engine.reference": reference, **options})


def variable(g: sp.Graph, dtype, shape, name: str, tile: int | None = None) -> sp.Tensor:
    """A variable mapped linearly over the tiles, or all on ``tile``."""
    t = g.add_variable(dtype, shape, name=name)
    if tile is None:
        sp.ops.map_linearly(g, t)
    else:
        g.set_tile_mapping(t, tile)
    return t


def next_line() -> int:
    """The line after the caller's: where the next statement's source location should point."""
    return sys._getframe(1).f_lineno + 1


def counter_step(g: sp.Graph, count: sp.Tensor, step: int, name: str) -> P.Program:
    """A program adding ``step`` to the int32 scalar ``count``."""
    cs = g.add_compute_set(name)
    g.add_vertex(cs, Increment, {"count": count, "step": step}, tile=0)
    return P.Execute(cs)
