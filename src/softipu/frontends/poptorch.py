"""PopTorch's names over softipu's torch frontend: a PopTorch script runs with only its import
changed (``import softipu.poptorch as poptorch``).

Options PopTorch has that softipu gives no meaning yet (pipelining, tensor locations,
distribution...) are accepted and stored; each is named in a one-time
:class:`~softipu.frontends.torch.options.UnusedOptionWarning`. None is silently ignored.

>>> import torch, softipu.poptorch as poptorch
>>> opts = poptorch.Options().deviceIterations(2).logCycleCount(True)
>>> model = poptorch.inferenceModel(torch.nn.Linear(4, 2), opts)
>>> model(torch.randn(6, 4)).shape
torch.Size([6, 2])
>>> model.cycleCount() > 0
True
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from softipu.frontends.errors import FrontendError, RecoverableError, UnrecoverableError
from softipu.frontends.errors import PoptorchError as Error
from softipu.frontends.poptorch_blocks import (
    BeginBlock,
    Block,
    BlockFunction,
    Phase,
    Stage,
    block_of,
    removeBlocks,
)
from softipu.frontends.poptorch_data import AsynchronousDataAccessor, DataLoaderMode, SharingStrategy
from softipu.frontends.poptorch_enums import (
    AutoStage,
    CommGroupType,
    ConnectionType,
    HalfFloatCastingBehavior,
    Liveness,
    MatMulSerializationMode,
    MeanReductionStrategy,
    MultiConvPlanType,
    OutputMode,
    OverlapMode,
    ReductionType,
    SyncPattern,
    VariableRetrievalMode,
)
from softipu.frontends.poptorch_executor import (
    PoplarExecutor,
    TrainingExecutor,
    inferenceModel,
    load,
    trainingModel,
)
from softipu.frontends.poptorch_ops import (
    CPU,
    ICustomArgParser,
    MultiConv,
    NameScope,
    cond,
    ctc_beam_search_decoder,
    custom_op,
    dynamic_slice,
    dynamic_update,
    for_loop,
    isRunningOnIpu,
    nop,
    register_custom_op,
    registerCustomArgParser,
    registerPostCompileHook,
    serializedMatMul,
    set_overlap_for_input,
    set_overlap_for_output,
)
from softipu.frontends.poptorch_options import (
    _STORED,
    Options,
    ParallelPhasedExecution,
    PipelinedExecution,
    SerialPhasedExecution,
    ShardedExecution,
    TensorLocationSettings,
)
from softipu.frontends.torch.custom_ops import ipu_print_op, print_format_key
from softipu.frontends.torch.options import warn_unused
from softipu.frontends.torch.runtime import logger
from softipu.frontends.torch.training import record_loss

__all__ = [
    "AsynchronousDataAccessor", "AutoStage", "BeginBlock", "Block", "BlockFunction", "CPU", "CommGroupType",
    "ConnectionType",
    "DataLoader", "DataLoaderMode", "Error", "HalfFloatCastingBehavior", "ICustomArgParser", "Liveness",
    "MatMulSerializationMode", "MeanReductionStrategy", "MultiConv", "MultiConvPlanType", "NameScope",
    "Options", "OutputMode", "OverlapMode", "ParallelPhasedExecution", "PipelinedExecution",
    "Phase", "PoplarExecutor", "RecoverableError", "ReductionType", "SerialPhasedExecution",
    "ShardedExecution", "SharingStrategy", "Stage", "SyncPattern", "TensorLocationSettings",
    "TrainingExecutor", "UnrecoverableError",
    "VariableRetrievalMode", "__version__", "block_of", "cond", "ctc_beam_search_decoder", "custom_op",
    "dynamic_slice", "dynamic_update", "for_loop", "identity_loss", "inferenceModel",
    "ipuHardwareIsAvailable", "ipuHardwareVersion", "ipu_print_tensor", "isRunningOnIpu", "load", "nop",
    "recomputationCheckpoint", "removeBlocks",
    "registerCustomArgParser", "registerPostCompileHook", "register_custom_op", "serializedMatMul",
    "set_available_memory", "set_overlap_for_input", "set_overlap_for_output", "setLogLevel",
    "trainingModel", "_STORED",
]

__version__ = "3.3.0+softipu"


# -- annotations ------------------------------------------------------------------------------------------
# BeginBlock, Block, BlockFunction, Stage, Phase and the strategies: frontends/poptorch_blocks.py


def recomputationCheckpoint(*tensors: torch.Tensor) -> Any:  # noqa: N802
    """Keep ``tensors`` from the forward to the backward when recomputation is on (PopART's
    ``autoRecomputation``): the ops between checkpoints are recomputed in the backward. An identity
    whose gradient passes through (``softipu::recomputation_checkpoint``)."""
    from softipu.frontends.torch.training.recompute import checkpoint_op  # noqa: PLC0415

    bad = [type(t).__name__ for t in tensors if not isinstance(t, torch.Tensor)]
    if bad or not tensors:
        raise FrontendError(f"recomputationCheckpoint takes tensors, got {bad or 'nothing'}")
    if not _tracing(tensors):  # eager PyTorch: the tensors themselves
        return tensors[0] if len(tensors) == 1 else tensors
    out = tuple(checkpoint_op(t) for t in tensors)
    return out[0] if len(out) == 1 else out


def _tracing(tensors: tuple[torch.Tensor, ...]) -> bool:
    """Whether ``tensors`` are being traced (export, AOTAutograd: fake or functional tensors, or a
    dispatch mode such as make_fx's), where an annotation must leave an op in the graph."""
    from torch._subclasses.fake_tensor import FakeTensor  # noqa: PLC0415 - torch internals
    from torch._subclasses.functional_tensor import FunctionalTensor  # noqa: PLC0415
    from torch.utils._python_dispatch import _get_current_dispatch_mode  # noqa: PLC0415

    return (_get_current_dispatch_mode() is not None or torch.compiler.is_compiling()
            or any(isinstance(t, (FakeTensor, FunctionalTensor)) for t in tensors))


def set_available_memory(tensor: torch.Tensor, available_memory_proportion: float) -> torch.Tensor:
    warn_unused(["set_available_memory (per op)"], "PopTorch annotation")
    return tensor


def ipu_print_tensor(tensor: torch.Tensor, title: str = "", print_gradient: bool = True,
                     summarise_threshold: int = 1000, edge_items: int = 3, max_line_width: int = 80,
                     digits: int = 4, float_format: str = "auto", separator: str = ", ",
                     open_bracket: str = "(", close_bracket: str = ")") -> torch.Tensor:
    """Print ``tensor`` on the host each time the IPU program computes it (PopTorch's signature).

    With PopTorch's default format it is a ``program.PrintTensor``; other format options print
    through a host call that formats as asked (more than ``summarise_threshold`` elements are
    summarised to ``edge_items`` at each edge; ``digits`` digits, ``float_format`` "auto",
    "fixed", "scientific" or "none"; ``separator`` and brackets). ``print_gradient`` is
    accepted (inference has no gradient to print)."""
    fmt = {"summarise_threshold": int(summarise_threshold), "edge_items": int(edge_items),
           "max_line_width": int(max_line_width), "digits": int(digits), "float_format": str(float_format),
           "separator": str(separator), "open_bracket": str(open_bracket),
           "close_bracket": str(close_bracket)}
    if float_format not in ("auto", "fixed", "scientific", "none"):
        raise FrontendError(f"ipu_print_tensor: float_format must be 'auto', 'fixed', 'scientific' or "
                            f"'none', got {float_format!r}")
    default = fmt == _DEFAULT_PRINT
    return ipu_print_op(tensor, title, "" if default else print_format_key(title or "tensor", fmt))


_DEFAULT_PRINT = {"summarise_threshold": 1000, "edge_items": 3, "max_line_width": 80, "digits": 4,
                  "float_format": "auto", "separator": ", ", "open_bracket": "(", "close_bracket": ")"}


def identity_loss(x: torch.Tensor, reduction: str = "none") -> torch.Tensor:
    """Mark ``x`` as the loss: its sum, mean or itself (``reduction`` "sum", "mean", "none"). A
    training model differentiates this loss (see :func:`trainingModel`)."""
    if reduction == "sum":
        out = x.sum()
    elif reduction == "mean":
        out = x.mean()
    elif reduction == "none":
        out = x
    else:
        raise FrontendError(f"identity_loss: reduction must be 'sum', 'mean' or 'none', got {reduction!r}")
    record_loss(out)
    return out


class DataLoader(torch.utils.data.DataLoader):
    """PopTorch's ``DataLoader(options, dataset, batch_size, ...)``: each batch holds what one call
    consumes, ``batch_size x deviceIterations x replicationFactor x gradientAccumulation``."""

    def __init__(self, options: Options, dataset: Any, batch_size: int = 1, shuffle: bool = False,
                 num_workers: int = 0, drop_last: bool = True, **kwargs: Any) -> None:
        accumulation = options._values.get("gradient_accumulation", 1)
        combined = batch_size * options.device_iterations * options.replication_factor * accumulation
        mode = DataLoaderMode(kwargs.pop("mode", DataLoaderMode.Sync))
        async_options = dict(kwargs.pop("async_options", None) or {})
        super().__init__(dataset, batch_size=combined, shuffle=shuffle, num_workers=num_workers,
                         drop_last=drop_last, **kwargs)
        self._async = None if mode is DataLoaderMode.Sync else async_options
        self._accessor: AsynchronousDataAccessor | None = None

    def __iter__(self) -> Any:
        """Batches in order; with ``mode=DataLoaderMode.Async`` prefetched by an
        :class:`AsynchronousDataAccessor` (made on the first iteration, with ``async_options``)."""
        if self._async is None:
            return super().__iter__()
        if self._accessor is None:
            self._accessor = AsynchronousDataAccessor(_SyncBatches(self), **self._async)
        return iter(self._accessor)

    def terminate(self) -> None:
        """Stop the asynchronous worker, if any (PopTorch's ``DataLoader.terminate``)."""
        if self._accessor is not None:
            self._accessor.terminate()
            self._accessor = None


class _SyncBatches:
    """A DataLoader's own synchronous batches, for its asynchronous worker."""

    def __init__(self, loader: DataLoader) -> None:
        self._loader = loader

    def __iter__(self) -> Any:
        return torch.utils.data.DataLoader.__iter__(self._loader)

    def __len__(self) -> int:
        return len(self._loader)


def ipuHardwareIsAvailable(num_ipus: int = 1) -> bool:  # noqa: N802
    """No IPU hardware: softipu simulates one."""
    return False


def ipuHardwareVersion() -> int:  # noqa: N802
    return 2


_LEVELS = {"TRACE": 5, "DEBUG": logging.DEBUG, "INFO": logging.INFO, "WARN": logging.WARNING,
           "ERR": logging.ERROR, "OFF": logging.CRITICAL + 10}


def setLogLevel(level: int | str) -> None:  # noqa: N802
    """Set how much softipu's torch frontend logs (PopTorch's levels): "TRACE" (everything),
    "DEBUG", "INFO", "WARN", "ERR" (errors only), "OFF" (nothing), or PopTorch's numbers 0-6 in
    that order (0 TRACE ... 4 ERR, 6 OFF). Python's level names ("WARNING", "ERROR") work too."""
    if isinstance(level, str):
        name = level.upper()
        value = _LEVELS.get(name, logging.getLevelName(name))
        if not isinstance(value, int):
            raise FrontendError(f"setLogLevel: unknown level {level!r}; use one of {', '.join(_LEVELS)}")
    elif isinstance(level, int) and 0 <= level <= 6:
        value = [5, logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL,
                 logging.CRITICAL + 10][level]
    else:
        raise FrontendError(f"setLogLevel: level must be a name ({', '.join(_LEVELS)}) or 0-6, got {level!r}")
    if value == 5:
        logging.addLevelName(5, "TRACE")
    logger.setLevel(value)
