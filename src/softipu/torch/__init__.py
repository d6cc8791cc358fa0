"""``softipu.torch``: run PyTorch modules on a simulated IPU (defined in ``softipu.frontends.torch``).

>>> import torch, softipu as sp, softipu.torch as st
>>> model = st.inference_model(torch.nn.ReLU(), st.Options(target=sp.targets.ipu_model(tiles=2)))
>>> model(torch.tensor([-1.0, 2.0])).tolist()
[0.0, 2.0]
"""

from softipu.frontends.torch import (
    LOWERINGS,
    BlockSparseLinear,
    ExportError,
    FrontendError,
    InferenceModel,
    InputError,
    Lowered,
    Lowering,
    LoweringContext,
    LoweringError,
    Options,
    OutputMode,
    RegistryError,
    SparseMoE,
    TrainingModel,
    UnsupportedOpsError,
    UnusedOptionWarning,
    block_sparse_linear,
    find_lowering,
    inference_model,
    logger,
    register_lowering,
    training_model,
)

__all__ = [
    "ExportError", "FrontendError", "InferenceModel", "InputError", "LOWERINGS", "Lowered", "Lowering",
    "LoweringContext", "LoweringError", "Options", "OutputMode", "RegistryError", "TrainingModel",
    "UnsupportedOpsError", "UnusedOptionWarning", "find_lowering", "inference_model", "logger",
    "register_lowering", "training_model", "SparseMoE", "BlockSparseLinear", "block_sparse_linear",
]
