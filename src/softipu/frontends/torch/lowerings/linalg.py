"""Lowerings of ATen's dense linear algebra (``linalg_cholesky_ex``, ``_linalg_svd``,
``linalg_qr``, ``linalg_lu_factor_ex``, ``_linalg_solve_ex``, ``_linalg_eigh``...) onto
``softipu.ops.linalg.matrix_function``: one vertex per matrix of the batch, evaluating the op's
own LAPACK kernel (so pivots and the signs of vectors are PyTorch's). ``with_effects`` around
``_linalg_check_errors`` (the raising forms, ``torch.linalg.cholesky``...) checks nothing on
the device: ``info`` is computed, as the ``*_ex`` forms return it.
"""

from __future__ import annotations

from typing import Any

from softipu.dtypes import float32
from softipu.frontends.torch.registry import op_name, register_lowering
from softipu.graph.tensor import Tensor
from softipu.ops.linalg import matrix_function

__all__: list[str] = []

# ATen op -> (the cost row of codelets.linalg.LINALG_CYCLES, trailing dims of each tensor input
# that make one item: 2 for matrices, 1 for pivots and Householder scalars).
_OPS: dict[str, tuple[str, tuple[int, ...]]] = {
    "linalg_cholesky_ex": ("cholesky", (2,)), "cholesky": ("cholesky", (2,)),
    "cholesky_inverse": ("cholesky_inverse", (2,)), "cholesky_solve": ("cholesky_solve", (2, 2)),
    "linalg_inv_ex": ("inverse", (2,)), "_linalg_solve_ex": ("solve", (2, 2)),
    "_linalg_det": ("det", (2,)), "_linalg_slogdet": ("slogdet", (2,)), "_linalg_eigh": ("eigh", (2,)),
    "_linalg_svd": ("svd", (2,)), "linalg_qr": ("qr", (2,)), "linalg_lu_factor_ex": ("lu_factor", (2,)),
    "linalg_lu": ("lu", (2,)), "linalg_lu_solve": ("lu_solve", (2, 1, 2)),
    "lu_unpack": ("lu_unpack", (2, 1)), "linalg_solve_triangular": ("triangular_solve", (2, 2)),
    "triangular_solve": ("triangular_solve", (2, 2)), "linalg_matrix_exp": ("matrix_exp", (2,)),
    "linalg_pinv.atol_rtol_tensor": ("pinv", (2, 0, 0)),
    "linalg_householder_product": ("householder_product", (2, 1)),
    "geqrf": ("geqrf", (2,)), "ormqr": ("ormqr", (2, 1, 2)),
    "linalg_ldl_factor_ex": ("lu_factor", (2,)), "linalg_ldl_solve": ("lu_solve", (2, 1, 2)),
}


def _const(value: Any) -> Any:
    """A constant argument in a hashable form the ATen op still accepts."""
    return tuple(value) if isinstance(value, list) else value


def _lower(cost: str, cores: tuple[int, ...]) -> Any:
    def lower(ctx: Any, node: Any, *args: Any, **kwargs: Any) -> Any:
        tensors: list[Tensor] = []
        positional: list[Any] = []
        for a in args:
            if isinstance(a, Tensor):
                positional.append(len(tensors))
                tensors.append(ctx.cast(a, float32) if a.dtype.is_float else a)
            else:
                positional.append(("const", _const(a)))
        params = {}
        for k, v in kwargs.items():
            if isinstance(v, Tensor):
                params[k] = ("input", len(tensors))
                tensors.append(ctx.cast(v, float32) if v.dtype.is_float else v)
            else:
                params[k] = _const(v)
        meta = ctx.meta()
        many = isinstance(meta, (tuple, list))
        count = len(meta) if many else 1
        outs = [(ctx.out_dtype(i) if many else ctx.out_dtype(), ctx.out_shape(i) if many else ctx.out_shape())
                for i in range(count)]
        outs = [(float32 if d.is_float else d, s) for d, s in outs]
        results = matrix_function(ctx.graph, op_name(node.target), tensors, outs, ctx.prog,
                                  params=params,
                                  positional=tuple(positional),
                                  cores=[cores[min(i, len(cores) - 1)] for i in range(len(tensors))],
                                  cost=cost, name=ctx.name)
        results = [ctx.cast(r, ctx.out_dtype(i) if many else ctx.out_dtype()) for i, r in enumerate(results)]
        return tuple(results) if many else results[0]
    return lower


for _name, (_cost, _cores) in _OPS.items():
    register_lowering(f"aten::{_name}", _lower(_cost, _cores))


@register_lowering("higher_order::with_effects")
def _with_effects(ctx: Any, node: Any, token: Any, op: Any, *args: Any, **kwargs: Any) -> Any:
    """Only the error checks of the raising linalg forms are effects softipu meets; the device
    has no exceptions to raise, so they do nothing (``info`` stays available)."""
    name = getattr(op, "__name__", str(op))
    if "_linalg_check_errors" not in str(op) and "_linalg_check_errors" not in name:
        raise NotImplementedError(f"with_effects around {op} is not supported (only linalg's "
                                  "error checks are)")
    return (None, None)
