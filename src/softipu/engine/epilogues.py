"""A matmul chain's bias add run by the chain, right after its GEMM, as one call bound once.

A library matmul with a bias (``torch.addmm``, a ``Linear``) is a chain (engine/chains.py) and
then one elementwise compute set ``out = in0 + in1``: ``in0`` the chain's output, ``in1`` the
bias broadcast along rows or columns (popops::map's fused vertex, ``Map2D<add(in0,in1)[full,col]>``
or ``[full,row]``). Where it is taken, the chain makes the add itself after its products and
copies out, as one call of the codelet's own op over views bound when the chain is built, and the
add's step then does nothing. Nothing runs between the two, so it reads what the compute set
would read and writes what it would write; each element is the same ufunc's float32 sum of the
same two elements: the same bits (design principle 6). The chain still writes ``in0``.

Measured (the demo encoder, 2 layers, 2 host threads; a model with the fusion and one without
in one process, blocks of 20 calls alternating, 240 calls each, 4 runs at load 1.2-1.7): the
chains + bias adds 871 -> 814, 889 -> 864, 1155 -> 1105, 868 -> 828 us a call (sums of step
medians); a call's median 2.21 -> 2.16, 2.35 -> 2.31, 2.92 -> 2.84, 2.25 -> 2.21 ms. The add
run instead on each GEMM piece's rows by the core that wrote them cost more than the whole add
(tried: 3-4 calls of a few microseconds each; the product is still in cache when the add runs
right after it).

Taken only when every check holds, else the add runs as its own compute set: the add's
``Execute`` is the node right after the chain's last one in their ``Sequence``, its compute set
run nowhere else, its vertex groups joined (engine/joins.py) into one group of the float32
bias-add codelet (``in0`` full, ``in1`` a row or a column), every field a strided tensor whose
rows are consecutive. Not under stochastic rounding or replication (no chains there). :data:`FUSE_BIAS`
off runs every add as its own compute set.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache, partial
from typing import Any

import numpy as np

from softipu.codelets.elementwise import Operand, map_codelet
from softipu.codelets.elementwise.expr import Expr, ExprKind, typecheck
from softipu.codelets.elementwise.ops import BinaryOp
from softipu.compiler.executable import Executable, VertexGroup
from softipu.dtypes import float32
from softipu.engine.joins import join_groups
from softipu.graph import program as P

__all__ = ["FUSE_BIAS", "BiasAdd", "bias_add", "bound_add"]

# Off: a matmul's bias add runs as its own compute set, after the chain.
FUSE_BIAS = True


@cache
def _bias_codelets() -> dict[type, Operand]:
    """The float32 ``out = in0 + in1`` map codelets with ``in0`` full and ``in1`` a row or a column
    (ops' map builds them through the same cached factory, so a codelet is one of these by
    identity; called as ops/elementwise/_driver.py calls it, the cache's key being the call's form)."""
    add = Expr(ExprKind.BINARY, BinaryOp.ADD, (Expr(ExprKind.INPUT, index=0), Expr(ExprKind.INPUT, index=1)))
    typed, dtypes = typecheck(add, (float32, float32)), (float32, float32)
    kinds = [(Operand.FULL, kind) for kind in (Operand.ROW, Operand.COL)]
    return {**{map_codelet(typed, dtypes, k, False, worker=True): k[1] for k in kinds},
            **{map_codelet(typed, dtypes, k, False): k[1] for k in kinds}}


@dataclass(slots=True)
class BiasAdd:
    """The add's one (joined) group, where it runs, and its step."""

    group: VertexGroup
    where: str
    step: int
    kind: Operand  # how ``in1`` covers a vertex's block: a row, or an element a row


def bias_add(executable: Executable, node: P.Program | None, executions: dict[int, int]) -> BiasAdd | None:
    """``node`` as a chain's bias add (module doc, the static checks), or None."""
    if not FUSE_BIAS or node is None or node.kind is not P.ProgramKind.EXECUTE:
        return None
    step = executable.step_of.get(id(node))
    cs_id = node.compute_set.id
    if step is None or executions.get(cs_id) != 1:
        return None
    compiled = executable.compute_sets[cs_id]
    groups = join_groups(compiled.groups)
    if len(groups) != 1 or groups[0].codelet not in _bias_codelets():
        return None
    group = groups[0]
    for name in ("in0", "in1", "out"):
        t = group.fields[name]
        if isinstance(t, tuple) or not t.is_strided or t.numel == 0 \
                or not (t.shape[1] <= 1 or t.strides[1] == 1):
            return None
    return BiasAdd(group, f"compute set {compiled.compute_set.name!r}", step, _bias_codelets()[group.codelet])


def bound_add(add: BiasAdd, storage: Any) -> Callable[[], None] | None:
    """The add as one call between views bound once: the codelet's op (``BinaryOp.ADD.fn``, what
    its direct path calls) over the joined group's ``in0``, ``in1`` and ``out`` shaped as the
    codelet shapes them (codelets/elementwise ``_shaper``: a vertex's ``k C`` elements as ``k``
    rows of ``C``, a row bias as ``(1, C)``, a column bias as ``(k, 1)``); None where the fields
    do not split so."""
    view = storage.view
    in0 = view(add.group.fields["in0"], writeable=False, replica_axis=False)
    in1 = view(add.group.fields["in1"], writeable=False, replica_axis=False)
    out = view(add.group.fields["out"], writeable=True, replica_axis=False)
    if in0.ndim != 2 or out.shape != in0.shape or in1.ndim != 2 or in1.shape[0] != in0.shape[0] \
            or in1.shape[1] == 0 or in0.shape[1] % in1.shape[1]:
        return None
    v, length, short = in0.shape[0], in0.shape[1], in1.shape[1]
    block = (length // short, short) if add.kind is Operand.ROW else (short, length // short)
    try:  # views only: the fields' rows are consecutive
        x, o = (a.reshape((v,) + block, copy=False) for a in (in0, out))
    except ValueError:
        return None
    y = in1[:, None, :] if add.kind is Operand.ROW else in1[:, :, None]
    return partial(_add, BinaryOp.ADD.fn, x, y, o, add)


def _add(fn: Callable[..., Any], x: np.ndarray, y: np.ndarray, out: np.ndarray, add: BiasAdd) -> None:
    from softipu.engine.fast import _codelet_failure  # the fast engine's error wording

    try:
        fn(x, y, out=out)
    except Exception as exc:
        raise _codelet_failure(add.group, add.where, exc) from exc
