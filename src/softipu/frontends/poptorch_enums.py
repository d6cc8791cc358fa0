"""PopTorch's enumerations (``poptorch.enums``), with PopTorch's member names and values.

Importable as PopTorch's code imports them: ``from poptorch.enums import OutputMode`` works as
``from softipu.poptorch.enums import OutputMode``, and every one is also ``poptorch.X``.
"""

from __future__ import annotations

import enum

from softipu.frontends.poptorch_data import DataLoaderMode, SharingStrategy

__all__ = ["AutoStage", "CommGroupType", "ConnectionType", "DataLoaderMode", "HalfFloatCastingBehavior",
           "Liveness", "MatMulSerializationMode", "MeanReductionStrategy", "MultiConvPlanType",
           "OutputMode", "OverlapMode", "ReductionType", "SharingStrategy", "SyncPattern",
           "VariableRetrievalMode"]


class OutputMode(enum.IntEnum):
    """PopTorch's ``OutputMode`` (which iterations' outputs come back to the host)."""

    Final = 0
    EveryN = 1
    All = 2
    Sum = 3
    Default = 4


class HalfFloatCastingBehavior(enum.IntEnum):
    FloatDowncastToHalf = 0
    HalfUpcastToFloat = 1
    Default = 2


class ReductionType(enum.IntEnum):
    Sum = 0
    Mean = 1
    NoReduction = 2


class MeanReductionStrategy(enum.IntEnum):
    """When a mean reduction of accumulated gradients divides (PopTorch's enum): ``Running`` keeps
    the accumulator the mean so far (never larger than the largest micro-batch gradient: no fp16
    overflow), ``Post`` adds them up and divides once before the update, ``PostAndLoss``
    (deprecated in PopTorch) divides by the replica count before the backward, the same as
    ``Post`` with one replica."""

    Running = 0
    Post = 1
    PostAndLoss = 2


class ConnectionType(enum.IntEnum):
    Always = 0
    OnDemand = 1
    Never = 2


class SyncPattern(enum.IntEnum):
    Full = 0
    SinglePipeline = 1
    ReplicaAndLadder = 2


class OverlapMode(enum.Enum):
    """How a host transfer overlaps compute (``set_overlap_for_input/output``); with I/O tiles
    (``TensorLocations.numIOTiles``). Accepted: softipu prices transfers without overlap."""

    NoOverlap = "no_overlap"
    OverlapAccumulationLoop = "overlap_accumulation_loop"
    OverlapDeviceIterationLoop = "overlap_device_iteration_loop"


class MatMulSerializationMode(enum.Enum):
    """Which dimension :func:`poptorch.serializedMatMul` splits: the lhs rows (``InputChannels``),
    the reduced dimension (``ReducingDim``), the rhs columns (``OutputChannels``), or none."""

    InputChannels = "input_channels"
    ReducingDim = "reducing_dim"
    OutputChannels = "output_channels"
    Disabled = "none"


class MultiConvPlanType(enum.IntEnum):
    Parallel = 0
    Serial = 1


class Liveness(enum.IntEnum):
    """Phased execution's tensor liveness (multi-IPU: issue 14, accepted)."""

    AlwaysLive = 0
    OffChipAfterFwd = 1
    OffChipAfterFwdNoOverlap = 2
    OffChipAfterEachPhase = 3


class AutoStage(enum.IntEnum):
    """How pipeline stages are numbered when not given (multi-IPU: issue 14, accepted)."""

    SameAsIpu = 0
    AutoIncrement = 1


class CommGroupType(enum.IntEnum):
    """Replica grouping of a weight's values (accepted; one group today)."""

    All = 0
    Consecutive = 1
    Orthogonal = 2
    NoGrouping = 3


class VariableRetrievalMode(enum.IntEnum):
    OnePerGroup = 0
    AllReplicas = 1
