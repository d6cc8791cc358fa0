"""PopTorch's optimizers as pure update rules the training executor runs on the device.

``classes`` holds ``poptorch.optim`` (SGD, Adam, AdamW, RMSprop, LAMB); ``attrs`` PopTorch's rules for
constant and variable attributes; ``spec`` reads an optimizer (``poptorch.optim`` or an accepted
``torch.optim`` one) into an :class:`OptimizerSpec`: state slots, device variables and the pure
``update`` function; ``rules`` the update rules themselves; ``als`` automatic loss scaling (PopART's rule).
"""

from softipu.frontends.torch.optim.als import LossScalingSettings, update_loss_scale
from softipu.frontends.torch.optim.attrs import OptimizerError, VariableAttributes
from softipu.frontends.torch.optim.classes import LAMB, SGD, Adam, AdamW, RMSprop
from softipu.frontends.torch.optim.spec import (
    GroupSpec,
    HyperSlot,
    Kind,
    OptimizerSpec,
    StateSlot,
    kind_of,
    optimizer_spec,
)

__all__ = ["LAMB", "SGD", "Adam", "AdamW", "GroupSpec", "HyperSlot", "Kind", "LossScalingSettings",
           "OptimizerError", "OptimizerSpec", "RMSprop", "StateSlot", "VariableAttributes", "kind_of",
           "optimizer_spec", "update_loss_scale"]
