"""Expressions, the vocabulary of ``map``: :class:`Expr` nodes over the op enums, their dtype
rules (:func:`typecheck`, :func:`promote`) and :func:`evaluate`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from softipu.codelets.elementwise._numerics import Kinds, Result, _store
from softipu.codelets.elementwise.casts import cast_values
from softipu.codelets.elementwise.ops import BinaryOp, TernaryOp, UnaryOp
from softipu.dtypes import ALL_DTYPES, DType, as_dtype, bool_, float32, int32
from softipu.errors import DTypeError


# -- expressions (the vocabulary of map) -----------------------------------------------------------
class ExprKind(enum.Enum):
    INPUT = "input"  # the index-th input tensor
    CONST = "const"  # a number (weakly typed until typecheck: it takes its partner's dtype)
    CAST = "cast"  # conversion to `dtype`
    UNARY = "unary"
    BINARY = "binary"
    TERNARY = "ternary"


_ARITY = {ExprKind.INPUT: 0, ExprKind.CONST: 0, ExprKind.CAST: 1, ExprKind.UNARY: 1,
          ExprKind.BINARY: 2, ExprKind.TERNARY: 3}
_OP_TYPE = {ExprKind.UNARY: UnaryOp, ExprKind.BINARY: BinaryOp, ExprKind.TERNARY: TernaryOp}


@dataclass(frozen=True, slots=True)
class Expr:
    """One node of an elementwise expression tree; build them with ``softipu.ops.E``."""

    kind: ExprKind
    op: UnaryOp | BinaryOp | TernaryOp | None = None
    args: tuple[Expr, ...] = ()
    index: int = 0
    value: bool | int | float = field(default=0, compare=False)
    dtype: DType | None = None  # CAST's target; after typecheck, every node's dtype
    value_key: str = field(default="", init=False)  # so 0.0 != -0.0 and 1 != True in caches

    def __post_init__(self) -> None:
        if len(self.args) != _ARITY[self.kind] or not all(isinstance(a, Expr) for a in self.args):
            raise DTypeError(f"a {self.kind.value} expression takes {_ARITY[self.kind]} expression "
                             f"argument(s), got {self.args!r}")
        want = _OP_TYPE.get(self.kind)
        if (want is None) != (self.op is None) or (want is not None and not isinstance(self.op, want)):
            raise DTypeError(f"a {self.kind.value} expression needs a {want.__name__ if want else 'no'} op, "
                             f"got {self.op!r}")
        if self.kind is ExprKind.INPUT and (not isinstance(self.index, int) or self.index < 0):
            raise DTypeError(f"input index must be an int >= 0, got {self.index!r}")
        if self.kind is ExprKind.CONST and not isinstance(self.value, (bool, int, float)):
            raise DTypeError(f"a constant must be a Python bool, int or float, got {self.value!r}")
        if self.kind is ExprKind.CAST and self.dtype is None:
            raise DTypeError("a cast needs a dtype")
        object.__setattr__(self, "value_key", f"{type(self.value).__name__}:{self.value!r}")

    def __str__(self) -> str:
        if self.kind is ExprKind.INPUT:
            return f"in{self.index}"
        if self.kind is ExprKind.CONST:
            return repr(self.value)
        if self.kind is ExprKind.CAST:
            return f"cast<{self.dtype.name}>({self.args[0]})"
        return f"{self.op.name.lower()}({','.join(map(str, self.args))})"


_DEFAULT = {bool: bool_, int: int32, float: float32}
_RANK = {bool: 0, int: 1, float: 2}


def promote(a: DType, b: DType) -> DType:
    """numpy's result type of two softipu dtypes; DTypeError where numpy leaves softipu's set."""
    r = np.result_type(a.numpy, b.numpy)
    if r not in {d.numpy for d in ALL_DTYPES}:
        raise DTypeError(f"{a} and {b} have no common softipu dtype (numpy promotes them to {r}); "
                         "cast one of them first")
    return as_dtype(r)


def _weak_with(strong: DType, weak: type, node: Expr) -> DType:
    """The dtype a Python number takes next to a tensor of ``strong`` (NEP 50, within softipu)."""
    kind = Kinds.of(strong)
    dtype = strong if (weak is bool or (weak is int and kind is not Kinds.BOOL)
                       or (weak is float and kind is Kinds.FLOAT)) else _DEFAULT[weak]
    if node.kind is ExprKind.CONST and isinstance(node.value, int) and Kinds.of(dtype) is Kinds.INT:
        info = np.iinfo(dtype.numpy)
        if not info.min <= node.value <= info.max:
            raise DTypeError(f"constant {node.value} does not fit {dtype} ({info.min}..{info.max})")
    return dtype


def _common(items: list[tuple[Expr, type | None]]) -> tuple[DType, type | None]:
    strong = [t.dtype for t, w in items if w is None]
    if not strong:  # only numbers: the highest Python kind's default dtype, still weak
        weak = max((w for _, w in items), key=_RANK.__getitem__)
        return _DEFAULT[weak], weak
    d = strong[0]
    for s in strong[1:]:
        d = promote(d, s)
    for t, w in items:
        if w is not None:
            d = _weak_with(d, w, t)
    return d, None


def _as(t: Expr, dtype: DType) -> Expr:
    if t.dtype is dtype:
        return t
    if t.kind is ExprKind.CONST:
        return Expr(ExprKind.CONST, value=t.value, dtype=dtype)
    return Expr(ExprKind.CAST, args=(t,), dtype=dtype)


def _check_domain(op: Any, dtype: DType) -> None:
    if not Kinds.of(dtype) & op.value.domain:
        accepted = " or ".join(k.name.lower() for k in (Kinds.FLOAT, Kinds.INT, Kinds.BOOL)
                               if k & op.value.domain)
        raise DTypeError(f"{op.name.lower()} is not defined for {dtype}: it takes {accepted} "
                         "tensors; cast first")


def _type(node: Expr, in_dtypes: tuple[DType, ...]) -> tuple[Expr, type | None]:
    """(typed node, Python type when the node is weakly typed: built from numbers only)."""
    kind = node.kind
    if kind is ExprKind.INPUT:
        if node.index >= len(in_dtypes):
            raise DTypeError(f"the expression uses input {node.index} but {len(in_dtypes)} "
                             "input(s) were given")
        return Expr(ExprKind.INPUT, index=node.index, dtype=in_dtypes[node.index]), None
    if kind is ExprKind.CONST:
        return Expr(ExprKind.CONST, value=node.value, dtype=_DEFAULT[type(node.value)]), type(node.value)
    args = [_type(a, in_dtypes) for a in node.args]
    if kind is ExprKind.CAST:
        return Expr(ExprKind.CAST, args=(args[0][0],), dtype=as_dtype(node.dtype)), None
    spec = node.op.value
    if node.op is TernaryOp.SELECT:
        cond, cw = args[0]
        if cond.dtype is not bool_:
            raise DTypeError(f"select's condition must be {bool_}, got {cond.dtype}")
        d, weak = _common(args[1:])
        typed = (cond, _as(args[1][0], d), _as(args[2][0], d))
    elif spec.promote:
        d, weak = _common(args)
        typed = tuple(_as(t, d) for t, _ in args)
    else:  # logical ops read truthiness of each operand as it is
        d, weak = bool_, None
        typed = tuple(t for t, _ in args)
    _check_domain(node.op, d)
    out = bool_ if spec.result is Result.BOOL else d
    return Expr(kind, node.op, typed, dtype=out), (None if spec.result is Result.BOOL else weak)


def typecheck(expr: Expr, in_dtypes: tuple[DType, ...]) -> Expr:
    """``expr`` with every node's dtype set and casts made explicit; DTypeError says what is wrong."""
    if not isinstance(expr, Expr):
        raise DTypeError(f"expected an expression (softipu.ops.E...), got {type(expr).__name__}")
    return _type(expr, tuple(in_dtypes))[0]


def evaluate(node: Expr, operands: list[np.ndarray], out: np.ndarray | None = None) -> np.ndarray:
    """A typed expression over numpy operands (any broadcastable shapes); the root writes ``out``."""
    kind = node.kind
    if kind is ExprKind.INPUT:
        return _store(operands[node.index], out)
    if kind is ExprKind.CONST:
        return _store(np.asarray(node.value).astype(node.dtype.numpy), out)
    args = [evaluate(a, operands) for a in node.args]
    if kind is ExprKind.CAST:
        return cast_values(args[0], node.dtype.numpy, out)
    return node.op.fn(*args, out=out)


@dataclass(frozen=True, slots=True)
class Steps:
    """A typed expression as the steps :func:`evaluate` takes, each subexpression once (AdamW's
    ``cast<float32>(g)`` squared, GELU's widened input: equal subtrees share a step), made once
    for a codelet by :func:`steps_of`. Step i is ``nodes[i]`` over the values of the steps
    ``args[i]``; after it the values of ``drop[i]`` are used no more. Compared by value: a codelet
    its factory makes again holds equal steps, which is how a saved executable names it."""

    nodes: tuple[Expr, ...]
    args: tuple[tuple[int, ...], ...]
    drop: tuple[tuple[int, ...], ...]


def steps_of(expr: Expr) -> Steps:
    """:class:`Steps` of a typed expression, in postorder (the root last)."""
    at: dict[Expr, int] = {}
    nodes: list[Expr] = []
    args: list[tuple[int, ...]] = []

    def visit(node: Expr) -> int:
        found = at.get(node)
        if found is None:
            pos = tuple(visit(a) for a in node.args)
            found = at[node] = len(nodes)
            nodes.append(node)
            args.append(pos)
        return found

    visit(expr)
    last = {p: i for i, pos in enumerate(args) for p in pos}
    drop = tuple(tuple(p for p in set(pos) if last[p] == i) for i, pos in enumerate(args))
    return Steps(tuple(nodes), tuple(args), drop)


def run_steps(steps: Steps, operands: list[np.ndarray], out: np.ndarray | None = None) -> np.ndarray:
    """:func:`evaluate` of the expression ``steps`` was made from: the same ops on the same values
    (no op writes its operands, so a value used twice is the same either way), the root writing
    ``out`` after every other step."""
    values: list[Any] = [None] * len(steps.nodes)
    root = len(values) - 1
    for i, node in enumerate(steps.nodes):
        into = out if i == root else None
        kind = node.kind
        if kind is ExprKind.INPUT:
            value = _store(operands[node.index], into)
        elif kind is ExprKind.CONST:
            value = _store(np.asarray(node.value).astype(node.dtype.numpy), into)
        elif kind is ExprKind.CAST:
            value = cast_values(values[steps.args[i][0]], node.dtype.numpy, into)
        else:
            value = node.op.fn(*[values[p] for p in steps.args[i]], out=into)
        for p in steps.drop[i]:
            values[p] = None
        values[i] = value
    return values[root]
