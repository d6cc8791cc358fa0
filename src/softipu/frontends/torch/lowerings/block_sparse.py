"""Block-sparse ``Linear`` weights from PyTorch, lowered to popsparse-style static ops.

:class:`BlockSparseLinear` is a ``torch.nn.Module`` holding only the non-zero blocks of its weight
(``values`` ``(nnz_blocks, b, b)``, a parameter) and the block pattern (fixed at construction: a
compile-time constant, as popsparse::static_'s ``CSRMatrix``). Make one from a dense ``Linear``
and a block mask, or from the weight's own non-zero blocks, with :func:`block_sparse_linear`, or
from a ``torch.sparse_bsr`` weight (``weight.to_sparse_bsr(b)``) with
:meth:`BlockSparseLinear.from_bsr`.

Its forward is the custom op ``softipu::block_sparse_linear(x, values, ...pattern)``: in eager
PyTorch the dense product with the weight rebuilt from its blocks; on softipu
:func:`softipu.ops.sparse.sparse_dense_matmul` of the weight ``S`` (out x in) with ``x^T``. For
training its autograd formula is two more custom ops, lowered to the static ops' gradients:
``grad_x = (S^T . grad_y^T)^T`` (:func:`~softipu.ops.sparse.sparse_dense_matmul_grad_rhs`) and the
values' gradient at the pattern's blocks only (:func:`~softipu.ops.sparse.sparse_values_grad`),
so the optimizer updates ``nnz_blocks x b x b`` values, never a dense weight.

>>> import torch, softipu as sp, softipu.torch as st
>>> from softipu.frontends.torch.lowerings.block_sparse import block_sparse_linear
>>> dense = torch.nn.Linear(8, 8)
>>> layer = block_sparse_linear(dense, 4, mask=[[1, 0], [1, 1]])
>>> x = torch.randn(3, 8)
>>> m = st.inference_model(layer, st.Options(target=sp.targets.ipu_model(tiles=4)))
>>> bool(torch.allclose(m(x), layer(x), atol=1e-5))
True
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from softipu.frontends.errors import FrontendError
from softipu.frontends.torch.registry import register_lowering
from softipu.graph.tensor import Tensor
from softipu.ops.sparse import (
    CSRMatrix,
    sparse_dense_matmul,
    sparse_dense_matmul_grad_rhs,
    sparse_values_grad,
)

__all__ = ["BlockSparseLinear", "block_sparse_linear", "block_sparse_linear_op"]


def _dense_weight(values: torch.Tensor, shape: list[int], block: int, rows: list[int],
                  cols: list[int]) -> torch.Tensor:
    """The dense ``shape`` weight with ``values`` at the pattern's blocks (eager PyTorch)."""
    out_b, in_b = shape[0] // block, shape[1] // block
    block_rows = torch.repeat_interleave(torch.arange(out_b), torch.tensor(np.diff(rows), dtype=torch.long))
    w = values.new_zeros((out_b, in_b, block, block))
    w = w.index_put((block_rows, torch.tensor(cols, dtype=torch.long)), values)
    return w.permute(0, 2, 1, 3).reshape(shape[0], shape[1])


@torch.library.custom_op("softipu::block_sparse_linear", mutates_args=())
def block_sparse_linear_op(x: torch.Tensor, values: torch.Tensor, shape: list[int], block: int,
                           rows: list[int], cols: list[int]) -> torch.Tensor:
    """``x . W^T`` for the block-sparse ``W`` (``shape`` = (out, in)) with ``values`` at its blocks
    (CSR by blocks: ``rows`` offsets, ``cols`` block-columns); ``x`` ``(N, in)``."""
    return x @ _dense_weight(values, shape, block, rows, cols).t()


@block_sparse_linear_op.register_fake
def _fake(x, values, shape, block, rows, cols):
    return x.new_empty((x.shape[0], shape[0]))


@torch.library.custom_op("softipu::block_sparse_linear_grad_input", mutates_args=())
def _grad_input_op(grad_y: torch.Tensor, values: torch.Tensor, shape: list[int], block: int,
                   rows: list[int], cols: list[int]) -> torch.Tensor:
    """``grad_y . W`` ``(N, in)``."""
    return grad_y @ _dense_weight(values, shape, block, rows, cols)


@_grad_input_op.register_fake
def _grad_input_fake(grad_y, values, shape, block, rows, cols):
    return grad_y.new_empty((grad_y.shape[0], shape[1]))


@torch.library.custom_op("softipu::block_sparse_linear_grad_values", mutates_args=())
def _grad_values_op(grad_y: torch.Tensor, x: torch.Tensor, shape: list[int], block: int,
                    rows: list[int], cols: list[int]) -> torch.Tensor:
    """``grad_y^T . x`` at the pattern's blocks: ``(nnz_blocks, b, b)``."""
    full = (grad_y.t() @ x).reshape(shape[0] // block, block, shape[1] // block, block)
    block_rows = torch.repeat_interleave(torch.arange(shape[0] // block),
                                         torch.tensor(np.diff(rows), dtype=torch.long))
    return full[block_rows, :, torch.tensor(cols, dtype=torch.long), :]


@_grad_values_op.register_fake
def _grad_values_fake(grad_y, x, shape, block, rows, cols):
    return x.new_empty((len(cols), block, block))


def _setup(ctx, inputs, output):
    x, values, shape, block, rows, cols = inputs
    ctx.save_for_backward(x, values)
    ctx.pattern = (shape, block, rows, cols)


def _backward(ctx, grad):
    x, values = ctx.saved_tensors
    grad_x = _grad_input_op(grad, values, *ctx.pattern) if ctx.needs_input_grad[0] else None
    grad_v = _grad_values_op(grad, x, *ctx.pattern) if ctx.needs_input_grad[1] else None
    return grad_x, grad_v, None, None, None, None


block_sparse_linear_op.register_autograd(_backward, setup_context=_setup)


# -- lowerings -------------------------------------------------------------------------------------
def _pattern(shape: list[int], block: int, rows: list[int], cols: list[int], name: str) -> CSRMatrix:
    return CSRMatrix((int(shape[0]), int(shape[1])), int(block), np.asarray(rows), np.asarray(cols),
                     name=name)


@register_lowering("softipu::block_sparse_linear")
def _lower_forward(ctx: Any, node: Any, x: Tensor, values: Tensor, shape, block, rows, cols) -> Tensor:
    pat = _pattern(shape, block, rows, cols, ctx.name)
    values = ctx.cast(values, x.dtype)
    y_t = sparse_dense_matmul(ctx.graph, values, x.transpose(), ctx.prog, pattern=pat, name=ctx.name)
    return y_t.transpose()


@register_lowering("softipu::block_sparse_linear_grad_input")
def _lower_grad_input(ctx: Any, node: Any, grad_y: Tensor, values: Tensor, shape, block, rows,
                      cols) -> Tensor:
    pat = _pattern(shape, block, rows, cols, ctx.name)
    values = ctx.cast(values, grad_y.dtype)
    dx_t = sparse_dense_matmul_grad_rhs(ctx.graph, values, grad_y.transpose(), ctx.prog, pattern=pat,
                                        name=ctx.name)
    return dx_t.transpose()


@register_lowering("softipu::block_sparse_linear_grad_values")
def _lower_grad_values(ctx: Any, node: Any, grad_y: Tensor, x: Tensor, shape, block, rows, cols) -> Tensor:
    pat = _pattern(shape, block, rows, cols, ctx.name)
    return sparse_values_grad(ctx.graph, grad_y.transpose(), ctx.cast(x, grad_y.dtype).transpose(), ctx.prog,
                              pattern=pat, mode="sd", name=ctx.name)


# -- the module ------------------------------------------------------------------------------------
class BlockSparseLinear(torch.nn.Module):
    """``y = x W^T + bias`` with ``W`` (``out_features x in_features``) block-sparse: the pattern
    (``block_size`` 1, 4, 8 or 16) fixed, the non-zero blocks' ``values`` trainable."""

    def __init__(self, pattern: CSRMatrix, values: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        b = pattern.block_size
        if tuple(values.shape) != (pattern.nnz_blocks, b, b):
            raise FrontendError(f"BlockSparseLinear: values have shape {tuple(values.shape)}; the pattern "
                                f"needs ({pattern.nnz_blocks}, {b}, {b})")
        self.out_features, self.in_features = pattern.shape
        self.block_size = b
        self._rows = [int(v) for v in pattern.row_indices]
        self._cols = [int(v) for v in pattern.column_indices]
        self.values = torch.nn.Parameter(values.detach().clone())
        self.bias = None if bias is None else torch.nn.Parameter(bias.detach().clone())

    @property
    def pattern(self) -> CSRMatrix:
        return CSRMatrix((self.out_features, self.in_features), self.block_size, np.asarray(self._rows),
                         np.asarray(self._cols), name="weight")

    @classmethod
    def from_bsr(cls, weight: torch.Tensor, bias: torch.Tensor | None = None) -> BlockSparseLinear:
        """From a ``torch.sparse_bsr`` weight with square blocks (``dense.to_sparse_bsr(b)``)."""
        if weight.layout != torch.sparse_bsr:
            raise FrontendError(f"BlockSparseLinear.from_bsr: the weight's layout is {weight.layout}; "
                                "make it with weight.to_sparse_bsr(block_size)")
        values = weight.values()
        if values.ndim != 3 or values.shape[1] != values.shape[2]:
            raise FrontendError(f"BlockSparseLinear.from_bsr: blocks of {tuple(values.shape[1:])}; "
                                "popsparse's static ops take square blocks of 1, 4, 8 or 16")
        pattern = CSRMatrix(tuple(weight.shape), int(values.shape[1]), weight.crow_indices().numpy(),
                            weight.col_indices().numpy(), name="weight")
        return cls(pattern, values, bias)

    def dense_weight(self) -> torch.Tensor:
        return _dense_weight(self.values, [self.out_features, self.in_features], self.block_size,
                             self._rows, self._cols)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        y = block_sparse_linear_op(flat, self.values, [self.out_features, self.in_features], self.block_size,
                                   self._rows, self._cols)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"block_size={self.block_size}, nnz_blocks={len(self._cols)}")


def block_sparse_linear(linear: torch.nn.Linear, block_size: int, mask: Any = None) -> BlockSparseLinear:
    """A :class:`BlockSparseLinear` keeping ``linear``'s weight at the blocks of ``mask``
    (``(out / b, in / b)`` booleans; default: the blocks of the weight that are not all zero)."""
    w = linear.weight.detach()
    out_f, in_f = w.shape
    b = int(block_size)
    if b <= 0 or out_f % b or in_f % b:
        raise FrontendError(f"block_sparse_linear: the weight's {out_f} x {in_f} is not a whole number of "
                            f"{b} x {b} blocks")
    blocks = w.reshape(out_f // b, b, in_f // b, b)
    if mask is None:
        mask = blocks.abs().amax(dim=(1, 3)) > 0
    mask = np.asarray(torch.as_tensor(mask), bool)
    if mask.shape != (out_f // b, in_f // b):
        raise FrontendError(f"block_sparse_linear: the mask has shape {mask.shape}; a {out_f} x {in_f} "
                            f"weight in blocks of {b} needs ({out_f // b}, {in_f // b})")
    pattern = CSRMatrix.from_mask(mask, b, name="weight")
    values = torch.as_tensor(pattern.blocks_of(w.numpy()))
    return BlockSparseLinear(pattern, values, linear.bias)
