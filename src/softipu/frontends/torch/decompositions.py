"""Decompositions softipu adds to the export's table (torch's own mechanism: an op mapped to a
function of other ops, traced in its place), for ops torch leaves whole in Core ATen that are
plain compositions on an IPU.

``torch_nn::_linear_cross_entropy_batch_chunked`` (and its ``reduction='none'`` form) is the
chunked path of ``F.linear_cross_entropy`` with ``options``: the chunking only bounds a GPU's
peak memory and precomputes gradients, so an inference export computes it as its documented
reference, ``cross_entropy(linear(input, linear_weight, linear_bias), target, ...)``, which
decomposes further to ops softipu lowers. The gradient outputs are empty when no gradient is
asked for (always, under the inference export's ``no_grad``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812

__all__ = ["extra_decompositions"]


def _chunked(input: torch.Tensor, linear_weight: torch.Tensor, target: torch.Tensor, linear_bias: Any,  # noqa: A002
             weight: Any, reduction: str, ignore_index: int, label_smoothing: float, *rest: Any) -> tuple:
    *_, compute_input, compute_weight, compute_bias = rest
    if compute_input or compute_weight or compute_bias:
        raise NotImplementedError("linear_cross_entropy with options computes its gradients in the forward "
                                  "pass, which softipu does not; call it with options=None to train")
    loss = F.cross_entropy(F.linear(input, linear_weight, linear_bias), target, weight,
                           ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing)
    empty = input.new_zeros((0, 0))
    return loss, empty, empty, input.new_zeros((0,))


def _chunked_none(input: torch.Tensor, linear_weight: torch.Tensor, target: torch.Tensor,  # noqa: A002
                  linear_bias: Any, weight: Any, ignore_index: int, *rest: Any) -> torch.Tensor:
    return F.cross_entropy(F.linear(input, linear_weight, linear_bias), target, weight,
                           ignore_index=ignore_index, reduction="none")


def extra_decompositions() -> dict:
    """The table entries for the ops this torch has (importing the module that registers them:
    ``F.linear_cross_entropy`` imports it only when called with options)."""
    try:
        import torch.nn.modules.linear_cross_entropy  # noqa: F401 - registers the torch_nn ops
    except ImportError:  # another torch version
        return {}
    namespace = torch.ops.torch_nn
    return {namespace._linear_cross_entropy_batch_chunked.default: _chunked,
            namespace._linear_cross_entropy_batch_chunked_no_reduction.default: _chunked_none}
