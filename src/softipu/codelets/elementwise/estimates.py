"""poplibs cycle estimators of the elementwise vertices (see the package docstring)."""

from __future__ import annotations

from dataclasses import dataclass

from softipu.codelets._common import ceil_div as _ceil_div
from softipu.codelets.elementwise._numerics import Result, _OpCost
from softipu.codelets.elementwise.expr import Expr, ExprKind
from softipu.codelets.elementwise.ops import _CAST_COST, BinaryOp, UnaryOp
from softipu.dtypes import DType, float16, float32
from softipu.target import Target

__all__ = ["ElementwiseEstimates", "ESTIMATES", "binary_op_cycles", "unary_op_cycles", "map_cycles"]


@dataclass(frozen=True, slots=True)
class ElementwiseEstimates:
    """The fixed figures of the elementwise estimators, each with its tag (ipu-facts.md §5; the
    per-op loop costs are the ``_OpCost`` of each op in ``ops.py``)."""

    binary_fixed_float: int = 29  # [V] BinaryOp1D: W x ((float ? 29 : 26) + inner) + 11
    binary_fixed_other: int = 26  # [V]
    binary_load_store: int = 2  # [V] inner per loop: op cycles + 2 (ADD {1} -> 3 per vector)
    in_place_fixed: int = 58  # [V] BinaryOp1DInPlace: W x (58 + inner) + 11
    unary_fixed: int = 17  # [V] UnaryOp1D: W x ((EXP ? 33 : 17) + inner) + 20
    unary_fixed_exp: int = 33  # [V]
    unary_loop_extra: int = 4  # [V] inner per loop: c + 4
    unary_supervisor: int = 20  # [V]
    worker_fixed: int = 5  # [V] BinaryOp2D: 5 + sum of inner(n_i)
    map_per_extra_operand: int = 4  # [U] a fused map's pointer set-up per operand beyond two

    def binary_fixed(self, dtype: DType) -> int:
        return self.binary_fixed_float if dtype is float32 else self.binary_fixed_other


ESTIMATES = ElementwiseEstimates()


# -- estimators ------------------------------------------------------------------------------------
def _loop_cost(cost: _OpCost, dtype: DType, target: Target) -> tuple[int, int]:
    """(cycles per loop, elements per loop) of one worker for this dtype."""
    if dtype is float32:
        return cost.float_cycles, cost.float_width or target.vector_width(dtype.itemsize)
    if dtype is float16:
        return cost.half_cycles, cost.half_width or target.vector_width(dtype.itemsize)
    return cost.int_cycles, 1


def _binary_inner(cost: _OpCost, dtype: DType, per_worker, target: Target):
    c, width = _loop_cost(cost, dtype, target)
    extra = ESTIMATES.binary_load_store if dtype.is_float else 0
    return _ceil_div(per_worker, width) * (c + extra)


def binary_op_cycles(op: BinaryOp, dtype: DType, n, target: Target, fixed: int | None = None):
    """poplibs' BinaryOp1D estimate for ``n`` elements (int or int array)."""
    workers = target.workers_per_tile
    inner = _binary_inner(op.cost, dtype, _ceil_div(n, workers), target)
    if fixed is None:
        fixed = ESTIMATES.binary_fixed(dtype)
    return workers * (fixed + inner) + target.supervisor_overhead_cycles


def unary_op_cycles(op: UnaryOp, dtype: DType, n, target: Target):
    """poplibs' UnaryOp1D estimate for ``n`` elements (int or int array)."""
    workers = target.workers_per_tile
    c, width = _loop_cost(op.cost, dtype, target)
    inner = _ceil_div(_ceil_div(n, workers), width) * (c + ESTIMATES.unary_loop_extra)
    fixed = ESTIMATES.unary_fixed_exp if op is UnaryOp.EXPONENT else ESTIMATES.unary_fixed
    return workers * (fixed + inner) + ESTIMATES.unary_supervisor


def _node_costs(node: Expr) -> list[tuple[_OpCost, DType]]:
    if node.kind in (ExprKind.INPUT, ExprKind.CONST):
        return []
    own = _CAST_COST if node.kind is ExprKind.CAST else node.op.cost
    dtype = node.args[0].dtype if node.kind is ExprKind.CAST else node.dtype
    if node.kind is not ExprKind.CAST and node.op.value.result is Result.BOOL and node.args:
        dtype = node.args[-1].dtype  # a comparison works at its operands' width
    return [(own, dtype)] + [c for a in node.args for c in _node_costs(a)]


def map_cycles(expr: Expr, num_operands: int, n, target: Target, worker: bool = False):
    """A fused map vertex: every node's inner loop per element, summed.

    poplibs has no single estimator for popops::map's generated codelets [U]. The MultiVertex
    form has BinaryOp1D's shape (fixed 29 float / 26 other); the one-worker form (``worker``)
    has BinaryOp2D's ``5 + inner(n)`` [V]; both add 4 per operand beyond two [U].
    """
    extra = ESTIMATES.map_per_extra_operand * max(0, num_operands - 2)
    if worker:
        return ESTIMATES.worker_fixed + extra + _inner_sum(expr, n, target)
    workers = target.workers_per_tile
    fixed = ESTIMATES.binary_fixed(expr.dtype) + extra
    return workers * (fixed + _inner_sum(expr, _ceil_div(n, workers), target)) \
        + target.supervisor_overhead_cycles


def _inner_sum(expr: Expr, n, target: Target):
    return sum((_binary_inner(cost, dtype, n, target) for cost, dtype in _node_costs(expr)), 0)


def _flops(expr: Expr, n):
    return n * sum(1 for _, d in _node_costs(expr) if d.is_float)
