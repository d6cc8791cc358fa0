"""Elementwise ops (popops): unary, binary and ternary maps, fused expressions, casts, in place.

Every op is one compute set of tile-local vertices over the output:

* **Broadcasting** follows numpy. **Dtypes** follow numpy's promotion restricted to softipu's
  dtypes: ``float16 + float32 -> float32``, ``int8 + float16 -> float16``, ``int32 + int64 ->
  int64``; a mix numpy would take to float64 (``int32 + float32``, ``int64 + uint64``) is an
  OpError: cast one side first. Python numbers are weakly typed (NEP 50): ``x_f16 * 2.0`` stays
  float16, ``x_i32 + 1`` stays int32, while ``x_i32 * 0.5`` is float32. Comparisons and predicates
  give ``bool_``. Ops refuse dtypes they are not defined for (``exp`` of an int tensor, bitwise
  ops on floats).
* **Semantics** where libraries differ: ``div`` of integers truncates toward zero (C, popops);
  ``rem`` is C's ``fmod`` (sign of the dividend, popops' REMAINDER) and ``remainder`` is Python's
  ``%`` (sign of the divisor, ``torch.remainder``); integer division or remainder by zero gives 0;
  ``round`` rounds half to even; ``maximum``/``minimum``/``clamp`` propagate NaN;
  ``shift_right_logical`` fills with zeros and ``shift_right_arithmetic`` with the sign; shift
  amounts outside ``[0, bits)`` give 0 (or -1 for an arithmetic shift of a negative value);
  float -> int casts truncate toward zero, saturate and send NaN to 0.
* **Planning**: the output is mapped like the first full-shape input (popops'
  ``createOutputForElementWiseOp``), or linearly when there is none. When every operand is the
  output's shape or a scalar, each contiguous tile region of the output is one vertex and
  regions of equal length and spacing go in one bulk call, so the engine runs a few batched calls
  over zero-copy strided views. A broadcast operand (a bias row, a per-row scale) splits the
  output into blocks of whole rows, each block one vertex on the tile holding most of it; the
  operand's row is then a plain view shared by the block (popops' BroadcastVectorInner), never a
  per-element gather.
* ``map`` fuses an expression tree (built with :class:`E`) into one codelet: one compute set, one
  pass, cycles the sum of its nodes' inner loops. ``*_`` variants work in place.

>>> import numpy as np, softipu as sp
>>> from softipu import program as P
>>> from softipu.ops import elementwise as ew
>>> g = sp.Graph(sp.targets.ipu_model(tiles=4)); prog = P.Sequence()
>>> x = g.add_variable(sp.float32, (2, 3), name="x"); b = g.add_variable(sp.float32, (3,), name="b")
>>> sp.ops.map_linearly(g, x); sp.ops.map_linearly(g, b)
>>> y = ew.map(g, ew.E.relu(ew.E.add(ew.E.input(0), ew.E.input(1))), [x, b], prog)
>>> eng = sp.Engine(g, [prog])
>>> eng.write_tensor(x, [[1, -2, 3], [-4, 5, -6]]); eng.write_tensor(b, [1, 1, 1]); eng.run(0)
>>> eng.read_tensor(y)
array([[2., 0., 4.],
       [0., 6., 0.]], dtype=float32)
"""

# The module-level names of the single-file module this package replaced stay importable here.
from softipu.codelets.elementwise import (  # noqa: F401
    BinaryOp,
    Expr,
    ExprKind,
    Kinds,
    Operand,
    Result,
    TernaryOp,
    UnaryOp,
)
from softipu.ops.elementwise import api as _api
from softipu.ops.elementwise._expr import BINARY_OPS, UNARY_OPS, Number  # noqa: F401
from softipu.ops.elementwise._planning import MAX_RUNS, MIN_BLOCK_ELEMENTS  # noqa: F401
from softipu.ops.elementwise.api import *  # noqa: F403

__all__ = [*_api.__all__]

