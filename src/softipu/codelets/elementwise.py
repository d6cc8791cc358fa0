"""popops-style elementwise codelets: BinaryOp1D and UnaryOp1D, with poplibs' cycle estimators.

Each (operation, dtype) pair is one codelet class, made on first use and cached, like the
``popops::BinaryOp1D<ADD, half>`` template instances. Compute and estimate sit side by side.
Estimator figures are poplibs sdk-release-3.4's (ipu-facts.md §5):

* BinaryOp1D (MultiVertex): ``W x ((float ? 29 : 26) + inner(ceil(n / W))) + supervisor``, with
  ``inner(m) = ceil(m / vw) x (c + 2)`` for float types and ``m x c`` for integers.
* UnaryOp1D (MultiVertex): ``W x ((EXP ? 33 : 17) + inner(ceil(n / W))) + 20``, with
  ``inner(m) = ceil(m / vw) x (c + 4)``.

Worked example (the calibration target): half ADD, n = 1200, W = 6, vw = 4:
6 x (26 + ceil(200 / 4) x 3) + 11 = 1067 cycles.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import numpy as np

from softipu.dtypes import DType, float16, float32
from softipu.graph.vertex import Input, MultiVertex, Output, Vertex
from softipu.target import Target

__all__ = ["BinaryOp", "UnaryOp", "binary_op_codelet", "unary_op_codelet"]


def _ceil_div(a, b):  # works on ints and int arrays
    return -(-a // b)


@dataclass(frozen=True, slots=True)
class _OpCost:
    """Cycles per inner loop and elements per loop (0 = the dtype's natural vector width)."""

    float_cycles: int
    float_width: int
    half_cycles: int
    half_width: int
    int_cycles: int = 7  # poplibs: int ADD 7 cycles per element [V] (ipu-facts §5)


class BinaryOp(enum.Enum):
    ADD = (np.add, _OpCost(1, 0, 1, 0))  # [V] ADD/MUL {1, natural}
    SUBTRACT = (np.subtract, _OpCost(1, 0, 1, 0))  # as ADD [U]
    MULTIPLY = (np.multiply, _OpCost(1, 0, 1, 0))  # [V]
    DIVIDE = (np.divide, _OpCost(10, 2, 21, 4, int_cycles=277))  # [V] float {10,2}, half {21,4}
    MAXIMUM = (np.maximum, _OpCost(3, 2, 4, 4))  # [V] float {3,2}, half {4,4}
    MINIMUM = (np.minimum, _OpCost(3, 2, 4, 4))  # [V]
    POWER = (np.power, _OpCost(40, 1, 40, 1, int_cycles=40))  # exp(b log a) [U]

    @property
    def fn(self) -> Callable[..., object]:
        return self.value[0]

    @property
    def cost(self) -> _OpCost:
        return self.value[1]


def _sigmoid(x, out):
    np.negative(x, out=out)
    np.exp(out, out=out)
    out += 1
    np.reciprocal(out, out=out)


def _rsqrt(x, out):
    np.sqrt(x, out=out)
    np.reciprocal(out, out=out)


def _relu(x, out):
    np.maximum(x, 0, out=out)


class UnaryOp(enum.Enum):
    EXPONENT = (np.exp, _OpCost(6, 2, 4, 4))  # [V] EXP f{6,2} h{4,4}
    LOGARITHM = (np.log, _OpCost(12, 2, 4, 4))  # [V]
    TANH = (np.tanh, _OpCost(12, 2, 4, 4))  # [V]
    SIGMOID = (_sigmoid, _OpCost(10, 2, 4, 4))  # [V]
    SQRT = (np.sqrt, _OpCost(10, 2, 23, 4))  # [V]
    RSQRT = (_rsqrt, _OpCost(8, 2, 19, 4))  # [V]
    RELU = (_relu, _OpCost(2, 0, 2, 0))  # [V] {2, vw}
    NEGATE = (np.negative, _OpCost(1, 0, 1, 0))  # [U]
    ABSOLUTE = (np.absolute, _OpCost(1, 0, 1, 0))  # [U]

    @property
    def fn(self) -> Callable[..., object]:
        return self.value[0]

    @property
    def cost(self) -> _OpCost:
        return self.value[1]


def _loop_cost(cost: _OpCost, dtype: DType, target: Target) -> tuple[int, int]:
    """(cycles per loop, elements per loop) of one worker for this dtype."""
    if dtype is float32:
        return cost.float_cycles, cost.float_width or target.vector_width(dtype.itemsize)
    if dtype is float16:
        return cost.half_cycles, cost.half_width or target.vector_width(dtype.itemsize)
    return cost.int_cycles, 1


def binary_op_cycles(op: BinaryOp, dtype: DType, n, target: Target):
    """poplibs' BinaryOp1D estimate for ``n`` elements (int or int array)."""
    workers = target.workers_per_tile
    per_worker = _ceil_div(n, workers)
    c, width = _loop_cost(op.cost, dtype, target)
    extra = 2 if dtype.is_float else 0
    inner = _ceil_div(per_worker, width) * (c + extra)
    fixed = 29 if dtype is float32 else 26  # [V] float ? 29 : 26
    return workers * (fixed + inner) + target.supervisor_overhead_cycles


def unary_op_cycles(op: UnaryOp, dtype: DType, n, target: Target):
    """poplibs' UnaryOp1D estimate for ``n`` elements (int or int array)."""
    workers = target.workers_per_tile
    c, width = _loop_cost(op.cost, dtype, target)
    inner = _ceil_div(_ceil_div(n, workers), width) * (c + 4)
    fixed = 33 if op is UnaryOp.EXPONENT else 17  # [V]
    return workers * (fixed + inner) + 20  # [V] UnaryOp1D's own supervisor cost


@cache
def binary_op_codelet(op: BinaryOp, dtype: DType) -> type[Vertex]:
    """``popops::BinaryOp1D<op, dtype>``: ``out = op(a, b)`` elementwise over one vector."""
    fn = op.fn

    class BinaryOp1D(MultiVertex):
        a = Input(dtype)
        b = Input(dtype)
        out = Output(dtype)

        @staticmethod
        def compute(a, b, out):
            fn(a, b, out=out)

        @staticmethod
        def cycles(a, b, out, target):
            return binary_op_cycles(op, dtype, out, target)

        @staticmethod
        def flops(a, b, out, target):
            return out if dtype.is_float else 0

    BinaryOp1D.__name__ = BinaryOp1D.__qualname__ = f"BinaryOp1D<{op.name},{dtype.name}>"
    return BinaryOp1D


@cache
def unary_op_codelet(op: UnaryOp, dtype: DType) -> type[Vertex]:
    """``popops::UnaryOp1D<op, dtype>``: ``out = op(x)`` elementwise over one vector."""
    fn = op.fn

    class UnaryOp1D(MultiVertex):
        x = Input(dtype)
        out = Output(dtype)

        @staticmethod
        def compute(x, out):
            fn(x, out=out)

        @staticmethod
        def cycles(x, out, target):
            return unary_op_cycles(op, dtype, out, target)

        @staticmethod
        def flops(x, out, target):
            return out if dtype.is_float else 0

    UnaryOp1D.__name__ = UnaryOp1D.__qualname__ = f"UnaryOp1D<{op.name},{dtype.name}>"
    return UnaryOp1D
