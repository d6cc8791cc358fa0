"""Dense linear-algebra codelets (poplin-style): one vertex factorises, inverts or solves one
small matrix (or one batch of them) held on its tile.

A vertex's fields are ``in0..`` and ``out0..``, each one matrix (or vector, or scalar) of the
batch flattened; ``compute`` sees them batched ``(vertices, n)`` and reshapes them to the
matrices' shapes. The numerics are LAPACK's, through PyTorch's kernels (imported when a vertex
first runs), so pivots, the signs of singular and eigenvectors, and the ``info`` codes follow
PyTorch's conventions exactly: a model lowered from PyTorch gets its own answers.

Estimates **[U]** (:data:`LINALG_CYCLES`): a fixed vertex cost plus ``factor x n^3`` cycles
for an ``n x n`` matrix (``n`` the largest matrix side), ``factor`` the op's multiply-add count
over ``n^3`` (Golub & Van Loan: Cholesky 1/3, LU 2/3, QR 4/3, inverse 2, solve 2/3 + 2 per
right-hand side, symmetric eigensolver ~9, SVD ~12) at one scalar f32 multiply-add per cycle
on one worker (the elimination's dependent chain leaves the other workers idle).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import cache
from typing import Any

import numpy as np

from softipu.codelets.indexing import FIXED_CYCLES, _named
from softipu.dtypes import DType
from softipu.errors import CodeletError
from softipu.graph.vertex import Input, Output, Vertex

__all__ = ["LINALG_CYCLES", "linalg_codelet", "host_function"]

# [U] multiply-adds per n^3 of each function (the cycle estimate's factor; see the docstring).
LINALG_CYCLES: dict[str, float] = {
    "cholesky": 1 / 3, "lu_factor": 2 / 3, "qr": 4 / 3, "inverse": 2.0, "solve": 2 / 3 + 2,
    "triangular_solve": 1.0, "det": 2 / 3, "slogdet": 2 / 3, "eigh": 9.0, "svd": 12.0,
    "pinv": 14.0, "matrix_exp": 12.0, "lu": 2 / 3, "lu_solve": 2.0, "cholesky_solve": 2.0,
    "cholesky_inverse": 2.0, "lu_unpack": 0.1, "householder_product": 4 / 3, "geqrf": 4 / 3,
    "ormqr": 2.0,
}


def _torch() -> Any:
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - torch comes with softipu[torch]
        raise CodeletError("the linalg vertices evaluate with PyTorch's LAPACK kernels on the "
                           "host; install softipu[torch]") from exc
    return torch


def _aten(name: str) -> Callable[..., Any]:
    """``torch.ops.aten.<op>.<overload>`` from ``"op"`` or ``"op.overload"``."""
    torch = _torch()
    packet, _, overload = name.partition(".")
    return getattr(getattr(torch.ops.aten, packet), overload or "default")


# The named functions of softipu.ops.linalg: the aten op each calls and how.
_NAMED: dict[str, Callable[..., Any]] = {
    "cholesky": lambda a, upper=False: _aten("linalg_cholesky_ex")(a, upper=upper),
    "lu_factor": lambda a: _aten("linalg_lu_factor_ex")(a),
    "qr": lambda a, mode="reduced": _aten("linalg_qr")(a, mode),
    "inverse": lambda a: _aten("linalg_inv_ex")(a),
    "solve": lambda a, b: _aten("_linalg_solve_ex")(a, b)[:1],
    "triangular_solve": lambda a, b, upper=False, unitriangular=False:
        (_aten("linalg_solve_triangular")(a, b, upper=upper, unitriangular=unitriangular),),
    "det": lambda a: _aten("_linalg_det")(a)[:1],
    "slogdet": lambda a: _aten("_linalg_slogdet")(a)[:2],
    "eigh": lambda a, uplo="L": _aten("_linalg_eigh")(a, uplo),
    "svd": lambda a, full_matrices=False: _aten("_linalg_svd")(a, full_matrices),
}


def host_function(name: str) -> Callable[..., Any]:
    """The function a linalg vertex evaluates: a named one (``"cholesky"``...) or an ATen op
    (``"aten::_linalg_svd"``)."""
    if name.startswith("aten::"):
        return _aten(name.removeprefix("aten::"))
    return _NAMED[name]


def _as_tuple(result: Any) -> tuple[Any, ...]:
    return tuple(result) if isinstance(result, (tuple, list)) else (result,)


@cache
def linalg_codelet(function: str, params: tuple[tuple[str, Any], ...], cost: str,
                   in_specs: tuple[tuple[DType, tuple[int, ...]], ...],
                   out_specs: tuple[tuple[DType, tuple[int, ...]], ...],
                   positional: tuple[Any, ...] = (), picks: tuple[int, ...] = (),
                   batched: bool = True) -> type[Vertex]:
    """A vertex evaluating ``function`` on one batch element (``in_specs``/``out_specs``: dtype
    and per-vertex shape of each input and output). ``positional`` places the inputs among
    constant arguments: an int ``i`` is input ``i``; ``("const", v)`` is ``v`` (and a keyword
    parameter ``("input", i)`` is input ``i``). ``picks`` are the
    function's results the outputs hold (default: the first ``len(out_specs)``). Not ``batched``:
    the one vertex holds the whole tensors, given to ``function`` in their own shapes."""
    torch = None
    ins = [f"in{i}" for i in range(len(in_specs))]
    outs = [f"out{i}" for i in range(len(out_specs))]
    n = max([max(s[-2:], default=1) for _, s in in_specs] + [1])
    work = int(FIXED_CYCLES + math.ceil(LINALG_CYCLES.get(cost, 2.0) * n ** 3))
    kwargs = dict(params)

    def compute(**fields: np.ndarray) -> None:
        nonlocal torch
        torch = torch or _torch()
        arrays = []
        for name, (_, shape) in zip(ins, in_specs, strict=True):
            a = fields[name]
            arrays.append(torch.from_numpy(np.array(a.reshape((-1, *shape) if batched else shape))))
        args = [arrays[p] if isinstance(p, int) else p[1] for p in positional] if positional else arrays
        named = {k: arrays[v[1]] if isinstance(v, tuple) and v[:1] == ("input",) else v
                 for k, v in kwargs.items()}
        results = _as_tuple(host_function(function)(*args, **named))
        for j, (name, (dtype, _)) in enumerate(zip(outs, out_specs, strict=True)):
            r = results[picks[j] if picks else j]
            value = np.asarray(r.detach().numpy() if hasattr(r, "detach") else r).astype(dtype.numpy)
            fields[name][...] = value.reshape(fields[name].shape)

    def cycles(**fields: Any) -> int:
        return work

    attrs: dict[str, Any] = {name: Input(dtype) for name, (dtype, _) in zip(ins, in_specs, strict=True)}
    attrs.update({name: Output(dtype) for name, (dtype, _) in zip(outs, out_specs, strict=True)})
    attrs["compute"] = staticmethod(compute)
    attrs["cycles"] = staticmethod(cycles)
    cls = type("Linalg", (Vertex,), attrs)
    return _named(cls, f"Linalg<{function}>")


def check_specs(specs: Sequence[tuple[DType, tuple[int, ...]]]) -> None:
    """Every field holds at least one element (a vertex field cannot be empty)."""
    for dtype, shape in specs:
        if not int(np.prod(shape)):
            raise CodeletError(f"a linalg vertex field of shape {shape} ({dtype}) is empty")
