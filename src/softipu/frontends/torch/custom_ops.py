"""Custom torch ops that carry IPU intent through ``torch.export`` (``softipu::*``).

Each is an identity (or close to it) in eager PyTorch and has a lowering that does the IPU
thing, e.g. ``softipu::ipu_print_tensor`` becomes a ``program.PrintTensor``.
"""

from __future__ import annotations

from typing import Any

import torch

from softipu.frontends.torch.registry import register_lowering
from softipu.graph import program as P

__all__ = ["ipu_print_op"]


@torch.library.custom_op("softipu::ipu_print_tensor", mutates_args=())
def ipu_print_op(x: torch.Tensor, title: str) -> torch.Tensor:
    """``x`` unchanged; on the IPU, printed on the host each time it is computed."""
    return x.clone()


@ipu_print_op.register_fake
def _ipu_print_fake(x: torch.Tensor, title: str) -> torch.Tensor:
    return torch.empty_like(x)


@register_lowering("softipu::ipu_print_tensor")
def _lower_print(ctx: Any, node: Any, x: Any, title: str) -> Any:
    ctx.prog.add(P.PrintTensor(x, title or node.args[0].name))
    return x
