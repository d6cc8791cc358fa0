"""``softipu.poptorch``: PopTorch's API on a simulated IPU (defined in ``softipu.frontends.poptorch``).

An existing PopTorch script runs with only its import changed::

    import softipu.poptorch as poptorch
"""

from softipu.frontends.poptorch import (
    AsynchronousDataAccessor,
    BeginBlock,
    Block,
    ConnectionType,
    DataLoader,
    DataLoaderMode,
    HalfFloatCastingBehavior,
    MeanReductionStrategy,
    Options,
    OutputMode,
    ParallelPhasedExecution,
    PipelinedExecution,
    PoplarExecutor,
    ReductionType,
    SerialPhasedExecution,
    ShardedExecution,
    SharingStrategy,
    SyncPattern,
    __version__,
    block_of,
    identity_loss,
    inferenceModel,
    ipu_print_tensor,
    ipuHardwareIsAvailable,
    ipuHardwareVersion,
    load,
    recomputationCheckpoint,
    set_available_memory,
    setLogLevel,
    trainingModel,
)
from softipu.frontends.torch import optim  # noqa: F401 - poptorch.optim.SGD... (as softipu.poptorch.optim)

__all__ = [
    "AsynchronousDataAccessor", "DataLoaderMode", "SharingStrategy",
    "BeginBlock", "Block", "ConnectionType", "DataLoader", "HalfFloatCastingBehavior",
    "MeanReductionStrategy", "Options",
    "OutputMode", "ParallelPhasedExecution", "PipelinedExecution", "PoplarExecutor", "ReductionType",
    "SerialPhasedExecution", "ShardedExecution", "SyncPattern", "__version__", "block_of",
    "identity_loss", "inferenceModel", "ipuHardwareIsAvailable", "ipuHardwareVersion",
    "ipu_print_tensor", "load", "recomputationCheckpoint", "set_available_memory", "setLogLevel",
    "trainingModel",
]
