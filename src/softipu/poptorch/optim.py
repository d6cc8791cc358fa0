"""``poptorch.optim``: PopTorch's optimizers (defined in ``softipu.frontends.torch.optim``)."""

from softipu.frontends.torch.optim import LAMB, SGD, Adam, AdamW, RMSprop, VariableAttributes

__all__ = ["LAMB", "SGD", "Adam", "AdamW", "RMSprop", "VariableAttributes"]
