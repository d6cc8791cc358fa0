"""A codelet whose whole body is one elementwise assignment, run without its temporaries.

A tutorial codelet writes ``y[...] = x + 1``: numpy builds ``x + 1`` in a fresh array and then
copies it into ``y``, one more pass over memory than ``np.add(x, 1, out=y)`` (the 8,832-vertex
AddOne benchmark ran 1.45x in-place numpy that way, against 1.03x for the same codelet written
with ``out=``). When the fast engine loads a vertex group, :func:`plan` reads the codelet's
``compute`` source; where its body (a docstring aside) is exactly

    ``out[...] = <expression>``   (or ``out[:] = ...``)

and the expression is built only from the codelet's own fields, number literals, the operators
``+ - * / // %`` and unary ``-``, and calls of numpy ufuncs (``np.exp(x)``, one output, no
keywords), it is evaluated as the same ufunc calls in the same order, each writing into ``out``
(an operand that is itself an operation, not the first such, gets its own array as before).

It is bitwise what the codelet computes, by construction: the same ufuncs on the same operands in
the same order; numpy picks a ufunc's loop from its operands alone, and :func:`plan` takes the
body only where every operation's result dtype (resolved from the fields' dtypes, literals as
numpy's weak Python scalars) is ``out``'s dtype, so storing an intermediate in ``out`` rounds
nothing that the original did not keep; ``out`` must not appear in the expression, and the engine
runs the original body wherever ``out`` may share memory with another field. ``**`` is left out
(numpy evaluates ``x ** 2`` as ``square``), as are names that are not fields (a closure's value
could change between calls).
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["InPlace", "plan"]

_BINARY = {ast.Add: np.add, ast.Sub: np.subtract, ast.Mult: np.multiply, ast.Div: np.true_divide,
           ast.FloorDiv: np.floor_divide, ast.Mod: np.remainder}
_UNARY = {ast.USub: np.negative}

# A node of the plan: ("field", name) | ("const", value) | ("op", ufunc, [operands]).
Node = tuple


class InPlace:
    """The codelet body ``out[...] = expression`` as ufunc calls writing into ``out``; call it
    with the codelet's field arguments."""

    __slots__ = ("out", "tree", "fields", "params")

    def __init__(self, out: str, tree: Node, fields: set[str], params: set[str]) -> None:
        self.out, self.tree, self.fields, self.params = out, tree, fields, params

    def __call__(self, **args: Any) -> None:
        _evaluate(self.tree, args, args[self.out])

    def fits(self, args: dict[str, Any]) -> bool:
        """Whether these arguments run bitwise as the original body: plain arrays, every
        operation's dtype ``out``'s, and ``out`` sharing no memory with an operand field."""
        if set(args) != self.params:
            return False  # the original call would fail on a field it does not take
        out = args.get(self.out)
        arrays = [args.get(n) for n in self.fields]
        if not isinstance(out, np.ndarray) or not all(isinstance(a, np.ndarray) for a in arrays):
            return False
        if any(np.may_share_memory(out, args[n]) for n in self.fields):
            return False
        try:  # every operand broadcasts to out's shape, so every intermediate fits in out
            if np.broadcast_shapes(out.shape, *(args[n].shape for n in self.fields)) != out.shape:
                return False
        except ValueError:
            return False
        try:
            return _dtype(self.tree, args, out.dtype) is not None
        except (TypeError, ValueError, np.exceptions.DTypePromotionError):
            return False


def plan(codelet: type, field_names: set[str]) -> InPlace | None:
    """The in-place form of ``codelet.compute`` (module doc), or None where its body is anything
    else (or its source cannot be read)."""
    fn = getattr(codelet, "compute", None)
    try:
        source = textwrap.dedent(inspect.getsource(fn))
        tree = ast.parse(source)
    except (OSError, TypeError, SyntaxError, IndentationError):
        return None
    if len(tree.body) != 1 or not isinstance(tree.body[0], ast.FunctionDef):
        return None
    func = tree.body[0]
    args = func.args
    if args.vararg or args.kwarg or args.posonlyargs or args.kwonlyargs or args.defaults:
        return None
    params = {a.arg for a in args.args}
    if not params <= field_names:
        return None
    body = func.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]  # a docstring
    if len(body) != 1 or not isinstance(body[0], ast.Assign) or len(body[0].targets) != 1:
        return None
    out = _whole(body[0].targets[0], params)
    if out is None:
        return None
    used: set[str] = set()
    expr = _node(body[0].value, params, getattr(fn, "__globals__", {}), used)
    if expr is None or expr[0] != "op" or out in used:
        return None
    return InPlace(out, expr, used, params)


def _whole(target: ast.expr, params: set[str]) -> str | None:
    """``name`` where the target is ``name[...]`` or ``name[:]`` of a field."""
    if not isinstance(target, ast.Subscript) or not isinstance(target.value, ast.Name):
        return None
    s = target.slice
    whole = (isinstance(s, ast.Constant) and s.value is Ellipsis) or \
        (isinstance(s, ast.Slice) and s.lower is None and s.upper is None and s.step is None)
    return target.value.id if whole and target.value.id in params else None


def _node(e: ast.expr, params: set[str], names: dict[str, Any], used: set[str]) -> Node | None:
    if isinstance(e, ast.Name):
        if e.id not in params:
            return None
        used.add(e.id)
        return ("field", e.id)
    if isinstance(e, ast.Constant):
        ok = type(e.value) in (int, float)
        return ("const", e.value) if ok else None
    if isinstance(e, ast.BinOp) and type(e.op) in _BINARY:
        operands = [_node(e.left, params, names, used), _node(e.right, params, names, used)]
        return None if None in operands else ("op", _BINARY[type(e.op)], operands)
    if isinstance(e, ast.UnaryOp) and type(e.op) in _UNARY:
        operand = _node(e.operand, params, names, used)
        return None if operand is None else ("op", _UNARY[type(e.op)], [operand])
    if isinstance(e, ast.Call) and not e.keywords:
        f = _ufunc(e.func, names)
        if f is None or f.nout != 1 or f.nin != len(e.args):
            return None
        operands = [_node(a, params, names, used) for a in e.args]
        return None if None in operands else ("op", f, operands)
    return None


def _ufunc(e: ast.expr, names: dict[str, Any]) -> np.ufunc | None:
    """``np.name`` (``np`` the codelet module's numpy) as the ufunc it names, else None."""
    if not (isinstance(e, ast.Attribute) and isinstance(e.value, ast.Name)):
        return None
    if names.get(e.value.id) is not np:
        return None
    f = getattr(np, e.attr, None)
    return f if isinstance(f, np.ufunc) else None


def _dtype(node: Node, args: dict[str, Any], want: np.dtype) -> Any:
    """The node's dtype (a Python scalar type for a literal); None where an operation's is not
    ``want``."""
    kind = node[0]
    if kind == "field":
        return args[node[1]].dtype
    if kind == "const":
        return type(node[1])
    inputs = [_dtype(n, args, want) for n in node[2]]
    if any(d is None for d in inputs):
        return None
    if not any(isinstance(d, np.dtype) for d in inputs):
        return None  # an operation of literals only
    result = node[1].resolve_dtypes(tuple(inputs) + (None,))[-1]
    return result if result == want else None


def _evaluate(node: Node, args: dict[str, Any], into: np.ndarray | None) -> Any:
    """The node's value; an operation writes into ``into`` where given, as does the first of its
    operands that is an operation (a later one would overwrite it, so it gets its own array)."""
    kind = node[0]
    if kind == "field":
        return args[node[1]]
    if kind == "const":
        return node[1]
    values, free = [], into
    for operand in node[2]:
        target = free if operand[0] == "op" else None
        if target is not None:
            free = None
        values.append(_evaluate(operand, args, target))
    f: Callable[..., Any] = node[1]
    return f(*values) if into is None else f(*values, out=into)
