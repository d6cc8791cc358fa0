"""Dense linear algebra (poplin-style): Cholesky, triangular solve, LU, QR, inverse,
determinant, solve, symmetric eigendecomposition and SVD of small matrices.

Each op puts one vertex (``codelets.linalg``) per matrix of the batch on the tile that holds
that matrix's result (outputs are mapped in whole matrices, spread over the tiles); the vertex
reads its inputs from wherever they live. Matrices are ``(..., m, n)``; leading dimensions are
the batch. :func:`matrix_function` is the general form the named ops and the PyTorch lowerings
use. An op on empty matrices has nothing to read: its results are computed when the graph is
built and become constants.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from softipu.codelets.linalg import host_function, linalg_codelet
from softipu.dtypes import DType, int32
from softipu.errors import TensorError
from softipu.graph.graph import Graph
from softipu.graph.tensor import Tensor
from softipu.ops.common import OpContext, parse_options

__all__ = ["matrix_function", "cholesky", "triangular_solve", "lu_factor", "qr", "inverse", "det",
           "slogdet", "solve", "eigh", "svd"]

Spec = tuple[DType, tuple[int, ...]]


def _batch_dims(inputs: Sequence[Tensor], cores: Sequence[int], out_shapes: Sequence[tuple[int, ...]]) -> int:
    """How many leading dims every input and output shares (the batch split over vertices)."""
    b = min([t.ndim - c for t, c in zip(inputs, cores, strict=True)] + [len(s) for s in out_shapes])
    b = max(b, 0)
    shapes = [t.shape for t in inputs] + list(out_shapes)
    while b and any(s[:b] != shapes[0][:b] for s in shapes):
        b -= 1
    return b


def _host_constants(ctx: OpContext, function: str, inputs: Sequence[Tensor], outs: Sequence[Spec],
                    params: dict[str, Any], positional: tuple[Any, ...]) -> list[Tensor]:
    """Results of an op whose inputs are empty: evaluated now, as constants."""
    import torch  # the vertices' host numerics; only reached for empty matrices

    arrays = [torch.zeros(t.shape, dtype=torch.float32 if t.dtype.is_float else torch.int32)
              for t in inputs]
    args = [arrays[p] if isinstance(p, int) else p[1] for p in positional] if positional else arrays
    named = {k: arrays[v[1]] if isinstance(v, tuple) and v[:1] == ("input",) else v
             for k, v in params.items()}
    result = host_function(function)(*args, **named)
    result = tuple(result) if isinstance(result, (tuple, list)) else (result,)
    consts = []
    for i, ((dtype, shape), r) in enumerate(zip(outs, result, strict=False)):
        value = np.asarray(r.numpy(), dtype=dtype.numpy).reshape(shape)
        consts.append(ctx.graph.add_constant(dtype, shape, value, name=f"{ctx.name}/out{i}"))
        ctx.graph.set_tile_mapping(consts[-1], 0)
    return consts


def matrix_function(graph: Graph, function: str, inputs: Sequence[Tensor], outputs: Sequence[Spec],
                    prog: Any, *, params: dict[str, Any] | None = None, positional: tuple[Any, ...] = (),
                    cores: Sequence[int] | None = None, cost: str | None = None, name: str = "",
                    options: dict | None = None) -> list[Tensor]:
    """``function`` (a name of ``codelets.linalg`` or ``"aten::op"``) of ``inputs``, giving
    tensors of the ``outputs`` (dtype, shape) specs; one vertex per batch element.

    ``cores`` is how many trailing dims of each input are one matrix (default 2); the leading
    dims every input and output share are split over vertices, the rest go to one vertex.

    >>> import softipu as sp
    >>> from softipu import program as P
    >>> from softipu.ops.linalg import matrix_function
    >>> g = sp.Graph(sp.targets.ipu_model(tiles=2)); prog = P.Sequence()
    >>> a = g.add_variable(sp.float32, (2, 2)); sp.ops.map_linearly(g, a)
    >>> (d,) = matrix_function(g, "det", [a], [(sp.float32, ())], prog)
    >>> eng = sp.Engine(g, [prog]); eng.write_tensor(a, [[2.0, 1.0], [1.0, 3.0]]); eng.run(0)
    >>> float(eng.read_tensor(d))
    5.0
    """
    ctx = OpContext.start(graph, prog, function.removeprefix("aten::"), name, *inputs)
    parse_options(ctx, options, {})
    params = dict(params or {})
    cores = list(cores) if cores is not None else [2] * len(inputs)
    outs = [(d, tuple(int(n) for n in s)) for d, s in outputs]
    if any(t.numel == 0 for t in inputs):
        return _host_constants(ctx, function, inputs, outs, params, positional)
    b = _batch_dims(inputs, cores, [s for _, s in outs])
    vertices = int(np.prod(inputs[0].shape[:b])) if b else 1
    in_flat = [t.reshape((vertices, -1)) if t.ndim else t.reshape((1, 1)) for t in inputs]
    in_specs = tuple((t.dtype, t.shape[b:]) for t in inputs)
    results, fields, out_specs, picks = [], {}, [], []
    for i, (dtype, shape) in enumerate(outs):
        size = int(np.prod(shape[b:]))
        t = ctx.output(dtype, (vertices, size), suffix=f"out{i}", grain_size=max(size, 1))
        results.append(t.reshape(shape))
        if size:
            fields[f"out{len(out_specs)}"] = t
            out_specs.append((dtype, shape[b:]))
            picks.append(i)
    fields.update({f"in{i}": t for i, t in enumerate(in_flat)})
    codelet = linalg_codelet(function, tuple(sorted(params.items())), cost or function.removeprefix("aten::"),
                             in_specs, tuple(out_specs), tuple(positional), tuple(picks), b > 0)
    tiles = graph.tile_of(fields["out0"][:, 0]).astype(np.int64)
    cs = ctx.compute_set()
    graph.add_vertices(cs, codelet, fields, tiles)
    ctx.execute(cs)
    return results


def _square(a: Tensor, what: str) -> int:
    if a.ndim < 2 or a.shape[-1] != a.shape[-2]:
        raise TensorError(f"{what} needs square matrices (..., n, n); {a.name} is {a.shape}")
    return a.shape[-1]


def cholesky(graph: Graph, a: Tensor, prog: Any, *, upper: bool = False, name: str = "") -> Tensor:
    """The Cholesky factor ``L`` (``a = L L^T``; ``upper``: ``U`` with ``a = U^T U``) of
    symmetric positive-definite ``a``."""
    _square(a, "cholesky")
    return matrix_function(graph, "cholesky", [a], [(a.dtype, a.shape), (int32, a.shape[:-2])], prog,
                           params={"upper": bool(upper)}, name=name)[0]


def triangular_solve(graph: Graph, a: Tensor, b: Tensor, prog: Any, *, upper: bool = False,
                     unitriangular: bool = False, name: str = "") -> Tensor:
    """``x`` with ``a x = b`` for triangular ``a`` (``(..., n, n)``, ``b`` ``(..., n, k)``)."""
    _square(a, "triangular_solve")
    return matrix_function(graph, "triangular_solve", [a, b], [(b.dtype, b.shape)], prog,
                           params={"upper": bool(upper), "unitriangular": bool(unitriangular)},
                           name=name)[0]


def lu_factor(graph: Graph, a: Tensor, prog: Any, *, name: str = "") -> tuple[Tensor, Tensor]:
    """(``LU`` packed, 1-based int32 ``pivots``) of partial-pivoting LU, as LAPACK's getrf."""
    n = _square(a, "lu_factor")
    lu, piv, _ = matrix_function(graph, "lu_factor", [a], [(a.dtype, a.shape), (int32, a.shape[:-2] + (n,)),
                                                           (int32, a.shape[:-2])], prog, name=name)
    return lu, piv


def qr(graph: Graph, a: Tensor, prog: Any, *, name: str = "") -> tuple[Tensor, Tensor]:
    """Reduced QR: (``Q`` ``(..., m, k)``, ``R`` ``(..., k, n)``), ``k = min(m, n)``."""
    m, n = a.shape[-2:]
    k = min(m, n)
    batch = a.shape[:-2]
    q, r = matrix_function(graph, "qr", [a], [(a.dtype, batch + (m, k)), (a.dtype, batch + (k, n))], prog,
                           name=name)
    return q, r


def inverse(graph: Graph, a: Tensor, prog: Any, *, name: str = "") -> Tensor:
    """The inverse of each square matrix of ``a``."""
    _square(a, "inverse")
    return matrix_function(graph, "inverse", [a], [(a.dtype, a.shape), (int32, a.shape[:-2])], prog,
                           name=name)[0]


def det(graph: Graph, a: Tensor, prog: Any, *, name: str = "") -> Tensor:
    """The determinant of each square matrix of ``a`` (LU with partial pivoting)."""
    _square(a, "det")
    return matrix_function(graph, "det", [a], [(a.dtype, a.shape[:-2])], prog, name=name)[0]


def slogdet(graph: Graph, a: Tensor, prog: Any, *, name: str = "") -> tuple[Tensor, Tensor]:
    """(sign, log |det|) of each square matrix of ``a``."""
    _square(a, "slogdet")
    s, ld = matrix_function(graph, "slogdet", [a], [(a.dtype, a.shape[:-2])] * 2, prog, name=name)
    return s, ld


def solve(graph: Graph, a: Tensor, b: Tensor, prog: Any, *, name: str = "") -> Tensor:
    """``x`` with ``a x = b`` (``a`` ``(..., n, n)``, ``b`` ``(..., n, k)``)."""
    _square(a, "solve")
    return matrix_function(graph, "solve", [a, b], [(b.dtype, b.shape)], prog, name=name)[0]


def eigh(graph: Graph, a: Tensor, prog: Any, *, name: str = "") -> tuple[Tensor, Tensor]:
    """(ascending eigenvalues, eigenvectors as columns) of symmetric ``a`` (lower triangle read)."""
    n = _square(a, "eigh")
    w, v = matrix_function(graph, "eigh", [a], [(a.dtype, a.shape[:-2] + (n,)), (a.dtype, a.shape)], prog,
                           name=name)
    return w, v


def svd(graph: Graph, a: Tensor, prog: Any, *, name: str = "") -> tuple[Tensor, Tensor, Tensor]:
    """Reduced SVD: (``U`` ``(..., m, k)``, descending ``S`` ``(..., k)``, ``Vh`` ``(..., k, n)``)."""
    m, n = a.shape[-2:]
    k = min(m, n)
    batch = a.shape[:-2]
    u, s, vh = matrix_function(graph, "svd", [a], [(a.dtype, batch + (m, k)), (a.dtype, batch + (k,)),
                                                   (a.dtype, batch + (k, n))], prog, name=name)
    return u, s, vh



