"""PopTorch's model-parallel annotations and execution strategies.

Blocks mark which IPU runs which part of a model: ``BeginBlock(layer, user_id, ipu_id)`` (the layer
and every op after it, until the next block), ``with Block(...)`` and ``@BlockFunction(...)``. A
block is recorded with PyTorch's own node annotations (``torch.fx.traceback.annotate``): every
FX node traced inside it carries ``node.meta["custom"]["poptorch_block"]``, and AOTAutograd gives
each backward node the annotation of the forward op it differentiates. The torch frontend
(``frontends/torch/pipeline.py``) reads them to place each node on its IPU.

The strategies (``PipelinedExecution``, ``ShardedExecution``, ``SerialPhasedExecution``,
``ParallelPhasedExecution``) group blocks into ``Stage``\\ s and ``Phase``\\ s as PopTorch does: a
block's stage is the strategy's stage naming it, else (``AutoStage.SameAsIpu``, the default) its
IPU, or (``AutoStage.AutoIncrement``) the next number; a stage's IPU is the one given with
``Stage(...).ipu(n)``, else the block's ``ipu_id``, else the stage id.

>>> import torch, softipu.poptorch as poptorch
>>> layer = poptorch.BeginBlock(torch.nn.Linear(2, 2), "enc", ipu_id=1)
>>> poptorch.block_of(layer)
('enc', 1)
>>> s = poptorch.PipelinedExecution(poptorch.Stage("a", "b").ipu(0), "c")
>>> s.config()["blocks"]
{'a': (0, 0, 0), 'b': (0, 0, 0), 'c': (1, 0, None)}
"""

from __future__ import annotations

import contextlib
import functools
import itertools
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.fx import traceback as fx_traceback

from softipu.frontends.errors import FrontendError
from softipu.frontends.poptorch_enums import AutoStage, Liveness
from softipu.frontends.torch.custom_ops import NAME_SCOPES

__all__ = ["BeginBlock", "Block", "BlockFunction", "ParallelPhasedExecution", "Phase", "PipelinedExecution",
           "SerialPhasedExecution", "ShardedExecution", "Stage", "block_of", "removeBlocks"]

BLOCK_KEY = "poptorch_block"  # node.meta["custom"][BLOCK_KEY] = (token, user_id, ipu_id)

_TOKENS = itertools.count()  # one per annotation: two unnamed blocks stay apart


def _check(user_id: Any, ipu_id: Any, what: str) -> tuple[str | None, int | None]:
    if user_id is not None and not isinstance(user_id, str):
        user_id = str(user_id)
    if ipu_id is not None and (isinstance(ipu_id, bool) or not isinstance(ipu_id, int) or ipu_id < 0):
        raise FrontendError(f"{what}: ipu_id must be an int >= 0 (or None), got {ipu_id!r}")
    return user_id, ipu_id


@contextlib.contextmanager
def _annotated(user_id: str | None, ipu_id: int | None) -> Iterator[None]:
    NAME_SCOPES[0] += 1  # exports keep node annotations from now on (runtime._export)
    with fx_traceback.annotate({BLOCK_KEY: (next(_TOKENS), user_id, ipu_id)}):
        yield


def BeginBlock(layer_to_call: torch.nn.Module, user_id: Any = None,  # noqa: N802 - PopTorch's names
               ipu_id: int | None = None) -> torch.nn.Module:
    """Start a block at ``layer_to_call``: the layer, and every op after it until the next block,
    runs on ``ipu_id`` (PopTorch's semantics: later layers inherit). Returns the layer."""
    if not isinstance(layer_to_call, torch.nn.Module):
        raise FrontendError(f"BeginBlock: the first argument must be a torch.nn.Module, got "
                            f"{type(layer_to_call).__name__}")
    user_id, ipu_id = _check(user_id, ipu_id, "BeginBlock")
    removeBlocks(layer_to_call, recurse=False)
    open_blocks: list[Any] = []

    def enter(module: torch.nn.Module, args: Any) -> None:
        cm = _annotated(user_id, ipu_id)
        cm.__enter__()
        open_blocks.append(cm)

    def leave(module: torch.nn.Module, args: Any, output: Any) -> None:
        if open_blocks:
            open_blocks.pop().__exit__(None, None, None)

    enter.poptorch_block = leave.poptorch_block = (user_id, ipu_id)  # type: ignore[attr-defined]
    layer_to_call.register_forward_pre_hook(enter)
    layer_to_call.register_forward_hook(leave, always_call=True)
    return layer_to_call


def block_of(layer: torch.nn.Module) -> tuple[str | None, int | None] | None:
    """The ``(user_id, ipu_id)`` a layer was given with :func:`BeginBlock`, if any (a deep copy of
    the layer keeps it, as it keeps the hooks)."""
    for hook in layer._forward_pre_hooks.values():
        found = getattr(hook, "poptorch_block", None)
        if found is not None:
            return found
    return None


def removeBlocks(module: torch.nn.Module, recurse: bool = True) -> torch.nn.Module:  # noqa: N802
    """Remove the :func:`BeginBlock` marks of ``module`` (and its submodules)."""
    for layer in (module.modules() if recurse else [module]):
        for hooks in (layer._forward_pre_hooks, layer._forward_hooks):
            for key in [k for k, h in hooks.items() if hasattr(h, "poptorch_block")]:
                del hooks[key]
                layer._forward_hooks_always_called.pop(key, None)
    return module


@contextlib.contextmanager
def Block(user_id: Any = None, ipu_id: int | None = None) -> Iterator[None]:  # noqa: N802
    """``with poptorch.Block("enc", ipu_id=1):``: the ops inside run on that IPU (and, as in
    PopTorch, the ops after it until the next block)."""
    user_id, ipu_id = _check(user_id, ipu_id, "Block")
    with _annotated(user_id, ipu_id):
        yield


def BlockFunction(user_id: Any = None, ipu_id: int | None = None) -> Callable[[Callable], Callable]:  # noqa: N802
    """Decorator: the function's ops form a :func:`Block`."""
    user_id, ipu_id = _check(user_id, ipu_id, "BlockFunction")

    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with Block(user_id, ipu_id):
                return fn(*args, **kwargs)
        return wrapper
    return decorate


# -- stages, phases, strategies ------------------------------------------------------------------------
class Stage:
    """One or more blocks that run on one IPU: ``Stage("a", "b").ipu(1)``."""

    def __init__(self, *block_ids: str) -> None:
        if not all(isinstance(b, str) for b in block_ids):
            raise FrontendError(f"Stage: block ids are strings, got {block_ids!r}")
        self._blocks = tuple(block_ids)
        self._stage_id = -1
        self._phase_id = -1
        self._ipu: int | None = None

    @property
    def blocks(self) -> list[str]:
        return list(self._blocks)

    def ipu(self, ipu: int) -> Stage:
        """Run this stage on IPU ``ipu``."""
        self._ipu = _check(None, ipu, "Stage.ipu")[1]
        return self

    def __repr__(self) -> str:
        return f"Stage({', '.join(map(repr, self._blocks))}, ipu={self._ipu})"


class Phase:
    """Stages that run side by side in a phased execution: ``Phase(Stage("a"), Stage("b"))`` or
    ``Phase("a", "b")`` (one stage of two blocks)."""

    def __init__(self, *args: str | Stage) -> None:
        if args and all(isinstance(a, Stage) for a in args):
            self.stages = list(args)
        elif all(isinstance(a, str) for a in args):
            self.stages = [Stage(*args)]
        else:
            raise FrontendError(f"Phase: all arguments must be block ids (strings) or Stages, got "
                                f"{[type(a).__name__ for a in args]}")

    def stage(self, idx: int) -> Stage:
        return self.stages[idx]

    def ipus(self, *ipus: int) -> Phase:
        """One IPU for each stage of the phase."""
        if len(ipus) != len(self.stages):
            raise FrontendError(f"Phase contains {len(self.stages)} stages but you provided {len(ipus)} ipus")
        for stage, ipu in zip(self.stages, ipus, strict=True):
            stage.ipu(ipu)
        return self


class _Strategy:
    """An execution strategy: how the blocks' stages share the IPUs and time."""

    kind = ""

    def __init__(self) -> None:
        self._block_map: dict[str, Stage] = {}
        self._auto = AutoStage.SameAsIpu

    def _add(self, stage: Stage) -> None:
        for block in stage.blocks:
            if block in self._block_map:
                raise FrontendError(f"{block} associated with more than one stage")
            self._block_map[block] = stage

    def stage(self, block_id: str) -> Stage:
        """The stage a block belongs to."""
        if block_id not in self._block_map:
            raise FrontendError(f"Unknown block {block_id}")
        return self._block_map[block_id]

    def config(self) -> dict[str, Any]:
        """What the torch frontend reads: the strategy's kind and each named block's
        ``(stage, phase, ipu or None)``."""
        return {"strategy": self.kind, "auto_stage": "same_as_ipu" if self._auto is AutoStage.SameAsIpu
                else "auto_increment",
                "blocks": {b: (s._stage_id, max(s._phase_id, 0), s._ipu) for b, s in self._block_map.items()}}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({sorted(self._block_map)})"


class PipelinedExecution(_Strategy):
    """Pipeline the stages over the IPUs (PopART's schedule; ``target/pipeline.py``). Arguments:
    an :class:`AutoStage`, or stages in order (each a :class:`Stage`, a block id, or a list of
    block ids); none: each block is its own stage, numbered by its IPU."""

    kind = "pipelined"

    def __init__(self, *args: Any) -> None:
        super().__init__()
        if len(args) == 1 and isinstance(args[0], AutoStage):
            self._auto = args[0]
            return
        for stage_id, arg in enumerate(args):
            if isinstance(arg, Stage):
                stage = arg
            elif isinstance(arg, str):
                stage = Stage(arg)
            elif isinstance(arg, (list, tuple)) and all(isinstance(a, str) for a in arg):
                stage = Stage(*arg)
            else:
                raise FrontendError(f"{type(self).__name__}: stage {stage_id} must be a Stage, a block id or "
                                    f"a list of block ids, got {arg!r}")
            stage._stage_id = stage_id
            self._add(stage)


class ShardedExecution(PipelinedExecution):
    """One IPU runs at a time, stage after stage: the same values, the stages' cycles add up."""

    kind = "sharded"


class _Phased(_Strategy):
    def __init__(self, *phases: Any) -> None:
        super().__init__()
        if not phases:
            raise FrontendError("There is currently no AutoStage for PhasedExecution, please explicitly "
                                "specify the phases")
        self._phases: list[Phase] = []
        self._separate_backward = False
        self._liveness = Liveness.AlwaysLive
        stage_id = 0
        for phase_id, args in enumerate(phases):
            phase = args if isinstance(args, Phase) else Phase(*(args if isinstance(args, list) else [args]))
            self._phases.append(phase)
            for stage in phase.stages:
                stage._phase_id, stage._stage_id = phase_id, stage_id
                stage_id += 1
                self._add(stage)

    def phase(self, phase: int) -> Phase:
        return self._phases[phase]

    def useSeparateBackwardPhase(self, use: bool = True) -> _Phased:  # noqa: N802 - PopTorch's name
        self._separate_backward = bool(use)
        return self

    def config(self) -> dict[str, Any]:
        return {**super().config(), "separate_backward": self._separate_backward,
                "liveness": self._liveness.name}


class SerialPhasedExecution(_Phased):
    """The phases run one after another on one group of IPUs."""

    kind = "serial_phased"

    def setTensorsLiveness(self, liveness: Liveness) -> SerialPhasedExecution:  # noqa: N802
        self._liveness = Liveness(liveness)
        return self


class ParallelPhasedExecution(_Phased):
    """The phases alternate between two groups of IPUs (even and odd), one overlapping the next."""

    kind = "parallel_phased"

    def sendTensorsOffChipAfterFwd(self, off_chip: bool = True) -> ParallelPhasedExecution:  # noqa: N802
        self._liveness = Liveness.OffChipAfterFwd if off_chip else Liveness.AlwaysLive
        return self
