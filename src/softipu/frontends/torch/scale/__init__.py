"""Pricing training at Pod scale: distinct layers priced once, composed over a system's IPUs.

``price_layer`` (layers.py) prices one layer estimate-only; ``price_training`` (pod.py) composes a
configuration on a ``System``; ``propose_split`` / ``begin_block_lines`` / ``apply_placement``
(placement.py) place layers on a replica's IPUs; report.py writes the report at scale.
"""

from softipu.frontends.torch.scale.layers import LayerCost, fake_build, price_layer
from softipu.frontends.torch.scale.placement import (
           Placement,
           apply_placement,
           begin_block_lines,
           propose_split,
)
from softipu.frontends.torch.scale.pod import PodEstimate, TrainingConfig, price_training

__all__ = ["LayerCost", "fake_build", "price_layer", "Placement", "apply_placement", "begin_block_lines",
           "propose_split", "PodEstimate", "TrainingConfig", "price_training"]
