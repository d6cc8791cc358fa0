"""Codelets shared by the engine tests: small, exact, and independent of memory layout.

Every compute here gives the same bits however many vertices a call batches, so the fast engine
and the reference engine must agree bitwise. ``RowSum`` adds in a fixed order along the vector
(``sequential_sum``), which a numpy oracle reproduces exactly; the random family's ``Reduce`` calls
``np.sum`` on purpose: its pairwise order depends on the memory layout numpy is given, so it checks
that the fast engine hands codelets rows laid out as the reference engine does.
"""

from __future__ import annotations

import functools

import numpy as np

import softipu as sp


def sequential_sum(x: np.ndarray) -> np.ndarray:
    """The sum over the last axis, element by element from the first: ``(..., 1)``."""
    acc = np.zeros(x.shape[:-1] + (1,), x.dtype)
    for k in range(x.shape[-1]):
        acc += x[..., k : k + 1]
    return acc


class AddOne(sp.Vertex):
    """The README's example."""

    x = sp.Input(sp.float32)
    y = sp.Output(sp.float32)

    @staticmethod
    def compute(x, y):
        y[...] = x + 1

    @staticmethod
    def cycles(x, y):
        return 20 + x


class Scale(sp.Vertex):
    """y = x * factor, with a per-vertex Param."""

    x = sp.Input(sp.float32)
    factor = sp.Param(sp.float32)
    y = sp.Output(sp.float32)

    @staticmethod
    def compute(x, factor, y):
        y[...] = x * factor


class Accumulate(sp.Vertex):
    """acc += x in place (an InOut)."""

    acc = sp.InOut(sp.float32)
    x = sp.Input(sp.float32)

    @staticmethod
    def compute(acc, x):
        acc += x


class RowSum(sp.Vertex):
    """A reduction to a scalar Output, in a fixed order."""

    x = sp.Input(sp.float32)
    total = sp.Output(sp.float32, sp.SCALAR)

    @staticmethod
    def compute(x, total):
        total[...] = sequential_sum(x)


class ListScale(sp.Vertex):
    """ys[k] = xs[k] * (k + 1) over two vector lists of equal lengths."""

    xs = sp.Input(sp.float32, sp.VECTOR_LIST)
    ys = sp.Output(sp.float32, sp.VECTOR_LIST)

    @staticmethod
    def compute(xs, ys):
        for k, (x, y) in enumerate(zip(xs, ys, strict=True)):
            y[...] = x * (k + 1)


class Increment(sp.Vertex):
    """count += step on an int32 scalar: the loop counter of the control-flow tests."""

    count = sp.InOut(sp.int32, sp.SCALAR)
    step = sp.Param(sp.int32)

    @staticmethod
    def compute(count, step):
        count += step


class Less(sp.Vertex):
    """flag = count < limit."""

    count = sp.Input(sp.int32, sp.SCALAR)
    limit = sp.Param(sp.int32)
    flag = sp.Output(sp.int32, sp.SCALAR)

    @staticmethod
    def compute(count, limit, flag):
        flag[...] = count < limit


class Divide(sp.Vertex):
    """q = x / d (division by zero gives inf unless floating-point exceptions are on)."""

    x = sp.Input(sp.float32)
    d = sp.Input(sp.float32)
    q = sp.Output(sp.float32)

    @staticmethod
    def compute(x, d, q):
        q[...] = x / d


class WritesItsInput(sp.Vertex):
    """A broken codelet: it writes an Input field."""

    x = sp.Input(sp.float32)
    y = sp.Output(sp.float32)

    @staticmethod
    def compute(x, y):
        x[...] = 0
        y[...] = 1


class WritesItsParam(sp.Vertex):
    """A broken codelet: it writes its Param."""

    y = sp.Output(sp.float32)
    p = sp.Param(sp.float32)

    @staticmethod
    def compute(y, p):
        p[...] = 0
        y[...] = 1


class Move(sp.Vertex):
    """y = x, costing a flat 7 cycles, so an exchange around it is the interesting part."""

    x = sp.Input(sp.float32)
    y = sp.Output(sp.float32)

    @staticmethod
    def compute(x, y):
        y[...] = x

    @staticmethod
    def cycles(x, y):
        return 7


class Boom(sp.Vertex):
    """A codelet whose compute raises."""

    x = sp.Input(sp.float32)
    y = sp.Output(sp.float32)

    @staticmethod
    def compute(x, y):
        raise ValueError("boom from the codelet")


# -- one family per dtype, for the random graphs ---------------------------------------------
@functools.cache
def family(dtype: sp.DType) -> dict[str, type[sp.Vertex]]:
    """Elementwise, in-place, reduction, scalar-input, vector-list and param codelets of ``dtype``.

    Constants stay small and integer so float16 stays finite for a few repeats and int32 wraps the
    same way in both engines.
    """

    def axpb(x, y):
        y[...] = x * 3 + 1

    def inplace(acc, x):
        acc *= 2
        acc -= x

    def reduce(x, total):  # np.sum's pairwise order: the engine must not depend on the layout
        total[...] = x.sum(axis=-1, keepdims=True)

    def add_scalar(x, c, y):
        y[...] = x + c

    def lists(xs, ys):
        for k, (x, y) in enumerate(zip(xs, ys, strict=True)):
            y[...] = x - k

    def scale(x, factor, y):
        y[...] = x * factor

    specs = {
        "Axpb": ({"x": sp.Input(dtype), "y": sp.Output(dtype)}, axpb),
        "InPlace": ({"acc": sp.InOut(dtype), "x": sp.Input(dtype)}, inplace),
        "Reduce": ({"x": sp.Input(dtype), "total": sp.Output(dtype, sp.SCALAR)}, reduce),
        "AddScalar": ({"x": sp.Input(dtype), "c": sp.Input(dtype, sp.SCALAR), "y": sp.Output(dtype)},
                      add_scalar),
        "Lists": ({"xs": sp.Input(dtype, sp.VECTOR_LIST), "ys": sp.Output(dtype, sp.VECTOR_LIST)},
                  lists),
        "ScaleParam": ({"x": sp.Input(dtype), "factor": sp.Param(dtype), "y": sp.Output(dtype)}, scale),
    }
    return {
        name: type(f"{name}_{dtype.name}", (sp.Vertex,), {**fields, "compute": staticmethod(fn)})
        for name, (fields, fn) in specs.items()
    }


class Gather(sp.Vertex):
    """out = sum of the parts (a vector list) scaled by ``k``."""

    parts = sp.Input(sp.float32, sp.VECTOR_LIST)
    out = sp.Output(sp.float32)
    k = sp.Param(sp.int32)

    @staticmethod
    def compute(parts, out, k):
        out[...] = sum(parts) * k
