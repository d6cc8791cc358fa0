"""Training on a simulated IPU: ``training_model(module, optimizer, options)``.

* :mod:`.losses` finds the loss as PopTorch does;
* :mod:`.joint` traces forward and backward with PyTorch's AOTAutograd (Core ATen);
* :mod:`.lowering` lowers the joint graph, gradient accumulation and the optimizer update;
* :mod:`.model` is the executor (weights in both places, ``set_optimizer``...);
* :mod:`.summary` splits memory and cycles by role and phase.
"""

from softipu.frontends.torch.training.losses import record_loss
from softipu.frontends.torch.training.model import TrainingModel, training_model

__all__ = ["TrainingModel", "record_loss", "training_model"]
