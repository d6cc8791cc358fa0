"""The PyTorch frontend: ``inference_model(module, Options(...))`` runs a torch module on a
simulated IPU and ``training_model(module, optimizer, Options(...))`` trains it there, through
``torch.export`` (AOTAutograd for training), Core ATen and a registry of lowerings onto
``softipu.ops``. Public as ``softipu.torch``; PopTorch's names are in ``softipu.poptorch``.
"""

from softipu.frontends.errors import (
    ExportError,
    FrontendError,
    InputError,
    LoweringError,
    RegistryError,
    UnsupportedOpsError,
)
from softipu.frontends.torch import custom_ops, lowerings  # noqa: F401 - register lowerings
from softipu.frontends.torch.lower import Lowered, LoweringContext
from softipu.frontends.torch.lowerings.block_sparse import BlockSparseLinear, block_sparse_linear
from softipu.frontends.torch.moe import SparseMoE
from softipu.frontends.torch.options import Options, OutputMode, UnusedOptionWarning
from softipu.frontends.torch.registry import LOWERINGS, Lowering, find_lowering, register_lowering
from softipu.frontends.torch.runtime import InferenceModel, inference_model, logger
from softipu.frontends.torch.training import TrainingModel, training_model

__all__ = [
    "ExportError", "FrontendError", "InferenceModel", "InputError", "LOWERINGS", "Lowered", "Lowering",
    "LoweringContext", "LoweringError", "Options", "OutputMode", "RegistryError", "TrainingModel",
    "UnsupportedOpsError", "UnusedOptionWarning", "find_lowering", "inference_model", "logger",
    "register_lowering", "training_model", "SparseMoE", "BlockSparseLinear", "block_sparse_linear",
]
