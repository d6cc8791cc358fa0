"""popops-style elementwise codelets, their numerics and their poplibs cycle estimators.

Each (operation, dtype) pair is one codelet class, made on first use and cached, like the
``popops::BinaryOp1D<ADD, half>`` template instances. Compute and estimate sit side by side.
Estimator figures are poplibs sdk-release-3.4's (ipu-facts.md §5):

* BinaryOp1D (MultiVertex): ``W x ((float ? 29 : 26) + inner(ceil(n / W))) + supervisor``, with
  ``inner(m) = ceil(m / vw) x (c + 2)`` for float types and ``m x c`` for integers.
  BinaryOp1DInPlace: ``W x (58 + inner) + supervisor``.
* UnaryOp1D (MultiVertex): ``W x ((EXP ? 33 : 17) + inner(ceil(n / W))) + 20``, with
  ``inner(m) = ceil(m / vw) x (c + 4)``.

Worked example (the calibration target): half ADD, n = 1200, W = 6, vw = 4:
6 x (26 + ceil(200 / 4) x 3) + 11 = 1067 cycles.

Besides the popops vertices this module holds the **expression** vocabulary of ``map``
(:class:`Expr`, a small closed set of node kinds over the op enums), its dtype rules
(:func:`typecheck`: numpy's promotion restricted to softipu dtypes, Python numbers weakly typed)
and the fused :func:`map_codelet` that evaluates a whole tree per vertex. Operands of a fused
vertex may be broadcast inside it (:class:`Operand`): a bias row shared by ``k`` rows of data, a
per-row scalar, or one scalar.

Semantics that differ between libraries are fixed here and documented on the op enums: integer
DIVIDE truncates toward zero (C, popops); REMAINDER is C's ``fmod`` (sign of the dividend, popops'
REMAINDER) and MODULO is Python's ``%`` (sign of the divisor, ``torch.remainder``); integer division
or remainder by zero gives 0; ROUND rounds half to even (numpy, torch); MAXIMUM/MINIMUM propagate
NaN (torch); float -> int casts truncate toward zero, saturate, and send NaN to 0.

The package, by section: :mod:`._numerics` (the op table's types and numpy implementations),
:mod:`.ops` (the op enums), :mod:`.casts` (cast semantics, stochastic rounding), :mod:`.expr`
(``map`` expressions and dtype rules), :mod:`.estimates` (cycle estimators); the codelet factories
are here in the package module, so codelets keep ``softipu.codelets.elementwise`` as their home
(the executable cache names them by it). Every name of the former single module imports from here.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from functools import cache
from typing import Any

import numpy as np

from softipu.codelets._common import ceil_div as _ceil_div
from softipu.codelets.elementwise._numerics import (  # noqa: F401 - every name of the former module
    _ERF_P,
    _ERF_Q,
    Kinds,
    Result,
    _clamp,
    _count_leading_zeros,
    _divide,
    _erf,
    _erf_values,
    _f32,
    _float_only,
    _gelu,
    _gelu_erf,
    _horner,
    _OpCost,
    _OpSpec,
    _popcount,
    _power,
    _relu,
    _rsqrt,
    _select,
    _shift_right_logical,
    _sigmoid,
    _store,
    _ufunc,
    _unsigned,
)
from softipu.codelets.elementwise.casts import (  # noqa: F401 - every name of the former module
    _GOLDEN,
    _MASK64,
    _float_to_int,
    _uniform24,
    cast_values,
    stochastic_round_to_half,
)
from softipu.codelets.elementwise.estimates import (  # noqa: F401 - every name of the former module
    ESTIMATES,
    ElementwiseEstimates,
    _binary_inner,
    _flops,
    _inner_sum,
    _loop_cost,
    _node_costs,
    binary_op_cycles,
    map_cycles,
    unary_op_cycles,
)
from softipu.codelets.elementwise.expr import (  # noqa: F401 - every name of the former module
    _ARITY,
    _DEFAULT,
    _OP_TYPE,
    _RANK,
    Expr,
    ExprKind,
    _as,
    _check_domain,
    _common,
    _type,
    _weak_with,
    evaluate,
    promote,
    run_steps,
    steps_of,
    typecheck,
)
from softipu.codelets.elementwise.ops import (  # noqa: F401 - every name of the former module
    _CAST_COST,
    BinaryOp,
    TernaryOp,
    UnaryOp,
)
from softipu.dtypes import DType, bool_, float16, float32, int64
from softipu.errors import DTypeError
from softipu.graph.vertex import InOut, Input, MultiVertex, Output, Param, Vertex
from softipu.target import Target

__all__ = [
    "BinaryOp", "UnaryOp", "TernaryOp", "Kinds", "Result", "Operand", "ExprKind", "Expr", "typecheck",
    "promote", "evaluate", "cast_values", "stochastic_round_to_half", "binary_op_codelet",
    "unary_op_codelet", "binary_op_inplace_codelet", "unary_op_inplace_codelet", "map_codelet",
    "cast_codelet", "binary_op_cycles", "unary_op_cycles", "map_cycles", "cast_cycles",
]


# -- codelets --------------------------------------------------------------------------------------
@cache
def binary_op_codelet(op: BinaryOp, dtype: DType) -> type[Vertex]:
    """``popops::BinaryOp1D<op, dtype>``: ``out = op(a, b)`` elementwise over one vector.

    ``a`` or ``b`` may have length 1 (a scalar operand, numpy-broadcast over the vector).
    """
    fn = op.fn
    out_dtype = bool_ if op.value.result is Result.BOOL else dtype

    class BinaryOp1D(MultiVertex):
        a = Input(dtype)
        b = Input(dtype)
        out = Output(out_dtype)
        join_fields, join_same_length = ("a", "b", "out"), True  # pieces joined (engine/joins.py)

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
def binary_op_inplace_codelet(op: BinaryOp, dtype: DType) -> type[Vertex]:
    """``popops::BinaryOp1DInPlace<op, dtype>``: ``a = op(a, b)``."""
    fn = op.fn
    if op.value.result is Result.BOOL and dtype is not bool_:
        raise DTypeError(f"{op.name} gives bool_; it cannot update a {dtype} tensor in place")

    class BinaryOp1DInPlace(MultiVertex):
        a = InOut(dtype)
        b = Input(dtype)

        @staticmethod
        def compute(a, b):
            fn(a, b, out=a)

        @staticmethod
        def cycles(a, b, target):
            return binary_op_cycles(op, dtype, a, target, fixed=ESTIMATES.in_place_fixed)

        @staticmethod
        def flops(a, b, target):
            return a if dtype.is_float else 0

    BinaryOp1DInPlace.__name__ = BinaryOp1DInPlace.__qualname__ = f"BinaryOp1DInPlace<{op.name},{dtype.name}>"
    return BinaryOp1DInPlace


@cache
def unary_op_codelet(op: UnaryOp, dtype: DType) -> type[Vertex]:
    """``popops::UnaryOp1D<op, dtype>``: ``out = op(x)`` elementwise over one vector."""
    fn = op.fn
    out_dtype = bool_ if op.value.result is Result.BOOL else dtype

    class UnaryOp1D(MultiVertex):
        x = Input(dtype)
        out = Output(out_dtype)
        join_fields, join_same_length = ("x", "out"), True  # pieces joined (engine/joins.py)

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


@cache
def unary_op_inplace_codelet(op: UnaryOp, dtype: DType) -> type[Vertex]:
    """``popops::UnaryOp1DInPlace<op, dtype>``: ``x = op(x)`` (cycles as UnaryOp1D [U])."""
    fn = op.fn
    if op.value.result is Result.BOOL and dtype is not bool_:
        raise DTypeError(f"{op.name} gives bool_; it cannot update a {dtype} tensor in place")

    class UnaryOp1DInPlace(MultiVertex):
        x = InOut(dtype)

        @staticmethod
        def compute(x):
            fn(x, out=x)

        @staticmethod
        def cycles(x, target):
            return unary_op_cycles(op, dtype, x, target)

        @staticmethod
        def flops(x, target):
            return x if dtype.is_float else 0

    UnaryOp1DInPlace.__name__ = UnaryOp1DInPlace.__qualname__ = f"UnaryOp1DInPlace<{op.name},{dtype.name}>"
    return UnaryOp1DInPlace


class Operand(enum.Enum):
    """How one operand of a fused vertex covers the vertex's ``k x C`` block of the output."""

    FULL = "full"  # one element per output element (length k*C)
    ROW = "row"  # one row of C shared by the block's k rows (a bias)
    COL = "col"  # one scalar per row (length k)
    SCALAR = "scalar"  # one element for the whole block (length 1)


def _shaper(kinds: tuple[Operand, ...]) -> Callable[[np.ndarray, list[np.ndarray]], tuple]:
    """``shaped(out, operands)``: ``out`` and the operands as broadcastable ``(..., k, C)`` arrays
    (views, no copies). ``C`` is the first row operand's length, else the output's over the first
    per-row operand's. What depends on ``kinds`` alone is worked out here, once a codelet (a bias
    add's views cost ~1.2 us a run, not ~2.5-3)."""
    row_at = next((i for i, k in enumerate(kinds) if k is Operand.ROW), None)
    col_at = next(i for i, k in enumerate(kinds) if k is Operand.COL) if row_at is None else None
    plan = tuple(0 if k is Operand.FULL else 1 if k is Operand.COL else 2 for k in kinds)

    def shaped(out: np.ndarray, operands: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        s = out.shape
        row = operands[row_at].shape[-1] if row_at is not None else \
            s[-1] // max(operands[col_at].shape[-1], 1)
        block = (s[-1] // row, row)
        # FULL: (..., k * C) -> (..., k, C); COL (k,) -> (k, 1); ROW (C,) and SCALAR (1,) -> (1, .)
        views = [a.reshape(a.shape[:-1] + block) if p == 0 else a[..., None] if p == 1 else a[..., None, :]
                 for a, p in zip(operands, plan, strict=True)]
        return out.reshape(s[:-1] + block), views

    return shaped


@cache
def map_codelet(expr: Expr, in_dtypes: tuple[DType, ...], kinds: tuple[Operand, ...],
                inplace: bool = False, worker: bool = False) -> type[Vertex]:
    """A fused vertex evaluating the typed ``expr`` per element (popops::map's generated codelet).

    Fields ``in0``..``in{n-1}`` (``kinds[i]`` says how each covers the block) and ``out``. In
    place, input 0 is the ``out`` field itself (InOut) and has no ``in0``. A ``worker`` codelet
    is a plain one-worker Vertex (popops' 2D vertices: several per tile share the six workers);
    otherwise a MultiVertex covering a whole tile region.
    """
    if expr.dtype is None:
        raise DTypeError("map_codelet needs a typed expression (see typecheck)")
    names = [f"in{i}" for i in range(len(in_dtypes))]
    namespace: dict[str, Any] = {
        name: Input(d) for i, (name, d) in enumerate(zip(names, in_dtypes, strict=True))
        if not (inplace and i == 0)}
    namespace["out"] = (InOut if inplace else Output)(expr.dtype)
    reshape = any(k in (Operand.ROW, Operand.COL) for k in kinds)
    shaped = _shaper(kinds) if reshape else None
    # One op over the inputs themselves (a bias add, a relu): its function called straight, as
    # evaluate would call it (the same ufunc call, without walking the tree on every run).
    direct = expr.kind in (ExprKind.UNARY, ExprKind.BINARY, ExprKind.TERNARY) \
        and all(a.kind is ExprKind.INPUT for a in expr.args)
    fn, picks = (expr.op.fn, tuple(a.index for a in expr.args)) if direct else (None, ())
    steps = steps_of(expr)  # each subexpression once (expr.py)

    def compute(**fields):
        out = fields["out"]
        operands = [out if inplace and i == 0 else fields[n] for i, n in enumerate(names)]
        if reshape:
            out, operands = shaped(out, operands)
        if direct:
            fn(*[operands[i] for i in picks], out=out)
        else:
            run_steps(steps, operands, out)

    def cycles(target, **fields):
        return map_cycles(expr, len(names), fields["out"], target, worker)

    def flops(target, **fields):
        return _flops(expr, fields["out"])

    namespace |= {"compute": staticmethod(compute), "cycles": staticmethod(cycles),
                  "flops": staticmethod(flops), "__module__": __name__}
    # Pieces over abutting rows run joined (engine/joins.py): every full or row operand and the
    # output, entry for entry; scalar and per-row operands must then be the same in every piece.
    joined = (n for i, (n, k) in enumerate(zip(names, kinds, strict=True))
              if k in (Operand.FULL, Operand.ROW) and not (inplace and i == 0))
    namespace["join_fields"] = (*joined, "out")
    namespace["join_same_length"] = True
    shape = "" if not reshape else "[" + ",".join(k.value for k in kinds) + "]"
    name = f"Map{'2D' if worker else ''}{'InPlace' if inplace else ''}<{expr}{shape},{expr.dtype.name}>"
    return type(name, (Vertex if worker else MultiVertex,), namespace)


@cache
def cast_codelet(src: DType, dst: DType, seed: int | None = None,
                 kind: Operand = Operand.FULL, worker: bool = False) -> type[Vertex]:
    """``popops::Cast1D<src, dst>``: ``out = cast(x)`` (see :func:`cast_values`).

    With a ``seed`` (float32 -> float16 only) each element rounds stochastically
    (:func:`stochastic_round_to_half`) keyed by the seed and its index ``base + i`` in the
    output, ``base`` being a per-vertex param: results never depend on how the work is split.
    ``kind`` says how ``x`` covers the output block (a broadcast input) and ``worker`` picks the
    one-worker form (Cast2D), as for :func:`map_codelet`.
    """
    to = dst.numpy
    namespace: dict[str, Any] = {"x": Input(src), "out": Output(dst), "__module__": __name__}
    reshape = kind in (Operand.ROW, Operand.COL)
    shaped = _shaper((kind,)) if reshape else None
    if seed is not None:
        if (src, dst) != (float32, float16):
            raise DTypeError(f"stochastic rounding casts float32 to float16, not {src} to {dst}")
        namespace["base"] = Param(int64)

        def compute(x, out, base):
            index = base.astype(np.int64) + np.arange(out.shape[-1], dtype=np.int64)
            if reshape:
                out, (x,) = shaped(out, [x])
                index = index.reshape(index.shape[:-1] + out.shape[-2:])
            out[...] = stochastic_round_to_half(x, seed, index)

        def cycles(x, out, base, target):  # hardware SR costs nothing extra
            return cast_cycles(src, out, target, worker)
    else:
        def compute(x, out):
            if reshape:
                out, (x,) = shaped(out, [x])
            cast_values(x, to, out)

        def cycles(x, out, target):
            return cast_cycles(src, out, target, worker)
    namespace |= {"compute": staticmethod(compute), "cycles": staticmethod(cycles)}
    shape = f"[{kind.value}]" if kind is not Operand.FULL else ""
    sr = ",SR" if seed is not None else ""
    return type(f"Cast{'2D' if worker else '1D'}<{src.name},{dst.name}{sr}{shape}>",
                (Vertex if worker else MultiVertex,), namespace)


def cast_cycles(src: DType, n, target: Target, worker: bool = False):
    """Cast1D/Cast2D: BinaryOp1D's / BinaryOp2D's shape with a conversion loop of one vector per
    2 cycles [U]."""
    if worker:
        return ESTIMATES.worker_fixed + _binary_inner(_CAST_COST, src, n, target)
    workers = target.workers_per_tile
    inner = _binary_inner(_CAST_COST, src, _ceil_div(n, workers), target)
    return workers * (ESTIMATES.binary_fixed(src) + inner) + target.supervisor_overhead_cycles
