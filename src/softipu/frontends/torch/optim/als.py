"""Automatic loss scaling (PopTorch's ``Training.setAutomaticLossScaling``) as a pure torch rule.

PopART's algorithm (``AutomaticLossScale`` transform and ``LossScaleUpdateOpx``, SDK 2.x/3.x):

* each tracked gradient gets a histogram of its absolute values with one bin edge at
  ``binEdgeLocation`` (0.125) times the largest value of its type. For float16 PopART takes
  ``numeric_limits<uint16_t>::max()`` = 65535 as that largest value (not fp16's 65504), so the
  edge is 8191.875; for float32 it is ``FLT_MAX * 0.125``. An element is in the upper bin when
  ``|g| >= edge``;
* the counts are summed over all tracked tensors (and over the micro-batches of an accumulated
  step) and cast to float32; with ``u`` the upper and ``l`` the lower count and
  ``t = thresholdUpperCountProportion`` (1e-7), the loss scale is **halved** if ``u > f * l``
  with ``f = t / (1 - t)`` (the same as ``u / (u + l) > t``), else **doubled**;
* the update runs on the first optimizer step and then every ``updatePeriod`` (1) steps; the
  step that measured the gradients still unscales them by the scale it was computed with, the
  new scale applies from the next step;
* PopART tracks the outputs of matmuls and convolutions on the path from the loss (activation
  and weight gradients); which tensors to pass is the caller's choice.

Clipping (PopART's ``LossScaleUpdateOp::getClipOutput``, later SDKs): when the loss scale or the
weights are float16 the new scale is clipped at 2**15 = 32768, the largest power of two fp16
holds (:data:`FP16_CLIP`); ``clip_output=True`` asks for it (the executor sets it for fp16
weights), and a float16 ``scale`` always gets it. There is no lower clip. ``min_scale`` and
``max_scale`` are an extra opt-in guard (not PopART's), off by default.

The binEdgeLocation default differs between PopART releases (1.0, 0.0625, 0.125); softipu takes
0.125, the value in shared/ipu-facts-scale.md. The rule uses tensor ops only (no ``.item()``, no
Python branch on a value), so the training executor traces it with make_fx and lowers it after
the backward pass, as it does the optimizer rules (see :mod:`.rules`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from softipu.frontends.torch.optim.attrs import OptimizerError

__all__ = ["FP16_CLIP", "LossScalingSettings", "upper_bin_edge", "upper_bin_count", "update_loss_scale",
           "scale_from_counts"]

# PopART's clip of an fp16 loss scale: numeric_limits<short>::max() + 1.
FP16_CLIP = 32768.0
# PopART's getLevels: the "largest value" of each tracked type.
_TYPE_MAX = {torch.float16: 65535.0, torch.float32: float(torch.finfo(torch.float32).max)}


@dataclass(frozen=True, slots=True)
class LossScalingSettings:
    """PopART's ``automaticLossScalingSettings`` (defaults as PopART's)."""

    bin_edge_location: float = 0.125
    threshold_upper_count_proportion: float = 1e-7
    update_period: int = 1
    clip_output: bool = False
    min_scale: float | None = None
    max_scale: float | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.bin_edge_location <= 1:
            raise OptimizerError(f"automatic loss scaling: binEdgeLocation must be in [0, 1], got "
                                 f"{self.bin_edge_location} (PopART's default is 0.125)")
        if not 0 <= self.threshold_upper_count_proportion < 1:
            raise OptimizerError("automatic loss scaling: thresholdUpperCountProportion must be in [0, 1), "
                                 f"got {self.threshold_upper_count_proportion} (PopART's default is 1e-7)")
        if not isinstance(self.update_period, int) or self.update_period < 1:
            raise OptimizerError(f"automatic loss scaling: updatePeriod must be an int >= 1, got "
                                 f"{self.update_period!r}")


def upper_bin_edge(dtype: torch.dtype, bin_edge_location: float = 0.125) -> float:
    """The histogram's one bin edge for gradients of ``dtype`` (PopART's ``getLevels``)."""
    if dtype not in _TYPE_MAX:
        raise OptimizerError(f"automatic loss scaling tracks float16 or float32 gradients, not {dtype}")
    return _TYPE_MAX[dtype] * bin_edge_location


def upper_bin_count(grads: Iterable[torch.Tensor], bin_edge_location: float = 0.125) -> torch.Tensor:
    """How many elements of all ``grads`` have ``|g| >= edge`` (a 0-d float32 tensor)."""
    total: torch.Tensor | None = None
    for g in grads:
        edge = upper_bin_edge(g.dtype, bin_edge_location)
        count = (g.abs().to(torch.float32) >= edge).to(torch.float32).sum()
        total = count if total is None else total + count
    if total is None:
        raise OptimizerError("automatic loss scaling needs at least one gradient to track")
    return total


def update_loss_scale(scale: torch.Tensor, grads: Iterable[torch.Tensor], step: torch.Tensor,
                      settings: LossScalingSettings = LossScalingSettings()) -> torch.Tensor:
    """The loss scale for the next step: ``scale`` halved or doubled by PopART's rule on the
    optimizer step ``step`` (0-based, a 0-d tensor) when ``step % update_period == 0``, else
    ``scale`` unchanged. ``scale`` is a 0-d float tensor (its dtype is kept)."""
    grads = list(grads)
    upper = upper_bin_count(grads, settings.bin_edge_location)
    return scale_from_counts(scale, upper, sum(g.numel() for g in grads), step, settings)


def scale_from_counts(scale: torch.Tensor, upper: torch.Tensor, total: int, step: torch.Tensor,
                      settings: LossScalingSettings = LossScalingSettings()) -> torch.Tensor:
    """:func:`update_loss_scale` from counts: ``upper`` (a 0-d float32 tensor, e.g. the sum of
    :func:`upper_bin_count` over the micro-batches of an accumulated step, as PopART accumulates
    its histograms) of ``total`` elements (a static int: all elements counted)."""
    t = settings.threshold_upper_count_proportion
    f = t / (1 - t)
    lower = float(total) - upper
    down = upper > lower * f
    new = torch.where(down, scale * 0.5, scale * 2.0)
    if settings.clip_output or scale.dtype == torch.float16:
        new = torch.clamp(new, max=FP16_CLIP)
    if settings.min_scale is not None or settings.max_scale is not None:
        new = torch.clamp(new, settings.min_scale, settings.max_scale)
    if settings.update_period > 1:
        new = torch.where(torch.remainder(step, settings.update_period) == 0, new, scale)
    return new
