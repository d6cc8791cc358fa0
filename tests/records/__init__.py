"""One table of op records, tested against independent numpy oracles (style.md rule 10).

Each op family adds a module here exposing ``RECORDS: list[OpRecord]``; ``tests/test_ops.py``
runs every record on small targets (and each once on a full GC200). A record says how to call
the op, how numpy computes the same thing, on which shapes and dtypes, and with what inputs.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import softipu as sp

__all__ = ["OpRecord", "all_records", "default_input", "TOLERANCE"]

# (rtol, atol) per dtype when a record does not say otherwise.
TOLERANCE = {sp.float32: (1e-5, 1e-6), sp.float16: (1e-2, 1e-3)}


def default_input(rng: np.random.Generator, shape: tuple[int, ...], dtype: sp.DType,
                  index: int) -> np.ndarray:
    """Standard normals for floats, small ints for integers, coin flips for bools."""
    if dtype.is_float:
        return rng.standard_normal(shape).astype(dtype.numpy)
    if dtype is sp.bool_:
        return rng.random(shape) < 0.5
    info = np.iinfo(dtype.numpy)
    return rng.integers(max(info.min, -50), min(info.max, 50), size=shape).astype(dtype.numpy)


@dataclass(frozen=True)
class OpRecord:
    """How to test one op.

    ``op(graph, *tensors, prog)`` builds the op (bind options with a lambda) and returns a
    tensor or a tuple of tensors; ``oracle(*arrays)`` computes the same with numpy from the same
    input arrays. ``shapes`` lists input-shape tuples, one per case. ``make_input(rng, shape,
    dtype, i)`` draws input ``i`` (default :func:`default_input`); ``input_dtypes`` overrides the
    dtype per input (e.g. int32 indices). ``tolerance`` maps dtype to (rtol, atol);
    ``exact=True`` demands bitwise equality.
    """

    name: str
    op: Callable[..., Any]
    oracle: Callable[..., Any]
    shapes: tuple[tuple[tuple[int, ...], ...], ...]
    dtypes: tuple[sp.DType, ...] = (sp.float32,)
    make_input: Callable[..., np.ndarray] = default_input
    input_dtypes: tuple[sp.DType | None, ...] = ()
    tolerance: dict[sp.DType, tuple[float, float]] = field(default_factory=dict)
    exact: bool = False

    def dtype_of_input(self, i: int, dtype: sp.DType) -> sp.DType:
        given = self.input_dtypes[i] if i < len(self.input_dtypes) else None
        return given or dtype

    def tol(self, dtype: sp.DType) -> tuple[float, float]:
        return self.tolerance.get(dtype) or TOLERANCE.get(dtype, (0.0, 0.0))


def all_records() -> list[OpRecord]:
    """Every record of every family module in this package."""
    records: list[OpRecord] = []
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        records.extend(getattr(module, "RECORDS", []))
    return records
