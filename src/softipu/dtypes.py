"""Element types of IPU tensors.

Each dtype has its own address space in the engine's storage, so a tensor is a view into one
flat array per dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from softipu.errors import DTypeError

__all__ = [
    "DType",
    "float16",
    "float32",
    "int8",
    "uint8",
    "int16",
    "uint16",
    "int32",
    "uint32",
    "int64",
    "uint64",
    "bool_",
    "as_dtype",
    "narrow",
    "value_range",
    "ALL_DTYPES",
]


@dataclass(frozen=True, slots=True)
class DType:
    """An IPU element type: a name and the numpy type that stores it."""

    name: str
    numpy: np.dtype

    @property
    def itemsize(self) -> int:
        return self.numpy.itemsize

    @property
    def is_float(self) -> bool:
        return self.numpy.kind == "f"

    def __repr__(self) -> str:
        return f"sp.{self.name}"

    __str__ = __repr__


float16 = DType("float16", np.dtype(np.float16))
float32 = DType("float32", np.dtype(np.float32))
int8 = DType("int8", np.dtype(np.int8))
uint8 = DType("uint8", np.dtype(np.uint8))
int16 = DType("int16", np.dtype(np.int16))
uint16 = DType("uint16", np.dtype(np.uint16))
int32 = DType("int32", np.dtype(np.int32))
uint32 = DType("uint32", np.dtype(np.uint32))
int64 = DType("int64", np.dtype(np.int64))
uint64 = DType("uint64", np.dtype(np.uint64))
bool_ = DType("bool_", np.dtype(np.bool_))

ALL_DTYPES: tuple[DType, ...] = (
    float16, float32, int8, uint8, int16, uint16, int32, uint32, int64, uint64, bool_,
)
_BY_NUMPY = {d.numpy: d for d in ALL_DTYPES}
_BY_NAME = {d.name: d for d in ALL_DTYPES} | {"bool": bool_, "half": float16, "float": float32}


def as_dtype(value: object) -> DType:
    """A softipu dtype from a DType, a numpy dtype or type, or a name like ``"float16"``."""
    if isinstance(value, DType):
        return value
    if isinstance(value, str) and value in _BY_NAME:
        return _BY_NAME[value]
    try:
        found = _BY_NUMPY.get(np.dtype(value))  # type: ignore[call-overload]
    except (TypeError, ValueError):  # ValueError: an object whose .dtype is not a numpy dtype
        found = None
    if found is None:
        names = ", ".join(d.name for d in ALL_DTYPES)
        raise DTypeError(f"{value!r} is not a softipu dtype; use one of: {names}")
    return found


def value_range(dtype: DType) -> str:
    """The values ``dtype`` holds, for messages: ``-2147483648..2147483647`` or ``±3.4028235e+38``."""
    np_type = dtype.numpy
    if np_type.kind == "f":
        return f"±{float(np.finfo(np_type).max):.8g}"
    if np_type.kind == "b":
        return "0..1"
    info = np.iinfo(np_type)
    return f"{info.min}..{info.max}"


def narrow(values: np.ndarray, dtype: DType) -> tuple[np.ndarray, tuple[int, ...] | None]:
    """``values`` cast to ``dtype``, and the index of the first value the cast does not keep
    (None when every value fits).

    A value is not kept when it is an integer outside ``dtype``'s range (a plain ``astype`` would
    wrap it: ``2**40`` becomes 0 as int32), a float beyond an integer dtype's range or NaN, or a
    finite number that becomes inf in a float dtype; bool holds 0 and 1. Rounding to the nearest
    float is not a loss, nor is a float cast to an integer dropping its fraction.
    """
    want = dtype.numpy
    with np.errstate(over="ignore", invalid="ignore"):
        cast = values.astype(want, copy=False)
    src = values.dtype
    if values.size == 0 or src == want or np.can_cast(src, want, casting="safe"):
        return cast, None
    if want.kind == "f":
        if src.kind not in "iuf" or np.isfinite(cast).all():
            return cast, None
        bad = np.isfinite(values) & ~np.isfinite(cast)
    elif src.kind in "biu":
        if np.array_equal(values, cast):
            return cast, None
        bad = values != cast
    else:  # floats into an integer dtype: whole part within range
        lo, hi = (0, 1) if want.kind == "b" else (np.iinfo(want).min, np.iinfo(want).max)
        with np.errstate(invalid="ignore"):
            bad = ~((values >= lo) & (values < float(hi) + 1))
    if not bad.any():
        return cast, None
    return cast, tuple(int(i) for i in np.unravel_index(int(np.argmax(bad)), values.shape))
