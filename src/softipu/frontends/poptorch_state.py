"""What a PopTorch executor reads from and writes to the device's state besides weights: tensor
names (``getTensorNames``), anchored tensors (``Options.anchorTensor`` / ``getAnchoredTensor``),
the random generator's state (``rng_state``) and PopTorch's buffer-broadcast check
(``Options.broadcastBuffers``).

An anchored tensor is streamed to the host as an output is (:class:`AnchorPlan` adds the copies
to the lowering before its engine is made): in every iteration for ``OutputMode.All`` / ``Sum`` /
``EveryN``, once after the run for ``Final``. The value comes back shaped as PopART's anchor
buffer: ``[batchesPerStep, accumulationFactor, replicationFactor, *shape]`` for All,
``[batchesPerStep / N, accumulationFactor, replicationFactor, *shape]`` for EveryN and
``[replicationFactor, *shape]`` for Final and Sum (Sum adds over steps and micro-batches), each
of the three leading dims dropped where it is 1. Names are the graph's node names (``relu``,
``p_fc_weight``...); a training model also has PopTorch's ``model.<param>`` (the weight the
micro-batch used), ``Gradient___model.<param>`` (each micro-batch's gradient, before any
accumulation or replica reduction) and ``UpdatedVar___model.<param>`` (the weight after the
optimizer step: no accumulation dim).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from softipu.dtypes import uint32
from softipu.frontends.errors import FrontendError, PoptorchError, as_poptorch_error
from softipu.frontends.torch.lower import StreamSlot
from softipu.frontends.torch.options import OutputMode
from softipu.graph import Graph, Variable
from softipu.graph import program as P
from softipu.graph.tensor import Tensor
from softipu.ops.random import clone_mapping

__all__ = ["BROADCAST_BUFFERS_ERROR", "AnchorPlan", "check_broadcast_buffers", "read_rng_state",
           "tensor_names", "write_rng_state"]

SEED_NAME = "seed"  # the torch frontend's device seed variable (frontends/torch/lower.py)

BROADCAST_BUFFERS_ERROR = (
    "PopTorch does not support broadcasting buffers. If your model is able to tolerate buffers "
    "becoming out of sync between replicas, you can disable buffer broadcasting using "
    "poptorch.Options.broadcastBuffers(False).")


def _error(message: str) -> PoptorchError:
    return as_poptorch_error(FrontendError(message), PoptorchError)


def _flat(graph: Graph, var: Variable) -> Tensor:
    return Tensor(graph, var.dtype, (var.numel,), var.start, (1,))


def tensor_names(lowered: Any) -> list[str]:
    """The names of the compiled graph's tensors: each exported graph node's result (``x``,
    ``p_fc_weight``, ``addmm``, ``relu``...), and a training step's PopTorch names of its weights,
    gradients and updated weights, each of which can be anchored; a model loaded from an
    executable lists its variables."""
    views = getattr(lowered, "views", None)
    if views and isinstance(getattr(lowered, "gradients", None), dict):
        return _training_names(lowered)
    return list(views) if views else [v.name for v in lowered.graph.variables]


_GRADIENT, _UPDATED, _MODEL = "Gradient___", "UpdatedVar___", "model."


def _training_names(lowered: Any) -> list[str]:
    names = [*lowered.views]
    for p in lowered.params:
        names += [f"{_MODEL}{p}", f"{_GRADIENT}{_MODEL}{p}", f"{_UPDATED}{_MODEL}{p}"]
    return names


def _resolve(lowered: Any, name: str, short: str) -> tuple[Tensor, bool]:
    """The anchored tensor, and whether it is made once per optimizer step (not per micro-batch)."""
    if isinstance(getattr(lowered, "gradients", None), dict):  # a training step
        bare = name.removeprefix(_GRADIENT).removeprefix(_UPDATED)
        param = bare.removeprefix(_MODEL) if bare.removeprefix(_MODEL) in lowered.params else bare
        if name.startswith(_GRADIENT) and param in lowered.gradients:
            return lowered.gradients[param], False
        if name.startswith(_UPDATED) and param in lowered.params:
            return lowered.params[param], True
        if name == bare and param in lowered.params:
            return lowered.params[param], False
        if name in lowered.views:
            return lowered.views[name], False
        return _missing(_training_names(lowered), name, short)
    views = getattr(lowered, "views", None) or {}
    if name in views:
        return views[name], False
    return _missing(list(views), name, short)


def _missing(names: list[str], name: str, short: str) -> Any:
    if not names:
        raise _error(f"anchorTensor({short!r}, {name!r}): this executable was loaded (from the "
                     "executable cache or loadExecutable) without its graph's tensor names; compile the "
                     "model to anchor tensors")
    import difflib  # noqa: PLC0415 - only on the error path

    near = difflib.get_close_matches(name, names, n=3)
    hint = f"; did you mean {' or '.join(map(repr, near))}?" if near else "; see getTensorNames()"
    raise _error(f"anchorTensor({short!r}, {name!r}): the compiled graph has no tensor {name!r}{hint}")


def _sequence(program: Any, name: str) -> P.Sequence:
    """The first (outermost) sequence called ``name`` in ``program``."""
    stack = [program]
    while stack:
        p = stack.pop()
        if isinstance(p, P.Sequence) and p.name == name:
            return p
        stack.extend(reversed(p.children()))
    raise FrontendError(f"internal: the lowered run has no {name!r} sequence to stream anchors from")


class AnchorPlan:
    """PopTorch's anchors of one executor: the lowering hook (``InferenceModel.lowered_hook``) that
    streams each anchored tensor out, and :meth:`values`, the last run's values by short name.

    ``anchors`` maps short name -> (tensor name, softipu output mode or None for the model's,
    return period); ``options`` are the model's softipu options."""

    def __init__(self, anchors: dict[str, tuple[str, Any, int]], options: Any, training: bool) -> None:
        self.anchors = dict(anchors)
        self.options = options
        self.training = training
        self.per_step: dict[str, bool] = {}  # made once per optimizer step (no accumulation dim)
        di = options.device_iterations
        for short, (name, mode, period) in self.anchors.items():
            if self._mode(mode) is OutputMode.EVERY_N and (period < 1 or di % period):
                raise _error(f"anchorTensor({short!r}, {name!r}) with OutputMode.EveryN({period}): the "
                             f"period must divide deviceIterations ({di})")

    def _mode(self, mode: Any) -> Any:
        mode = self.options.output_mode if mode is None else mode
        if mode is OutputMode.DEFAULT:
            return OutputMode.FINAL if self.training else OutputMode.ALL
        return mode

    def __call__(self, lowered: Any) -> tuple[Any, dict[str, tuple[StreamSlot, int]]]:
        load, run = lowered.programs
        o = self.options
        turns_per_micro = o.device_iterations * (o.gradient_accumulation if self.training else 1)
        after: list[P.Program] = []
        extra = {}
        for short, (name, mode, _) in self.anchors.items():
            tensor, per_step = _resolve(lowered, name, short)
            self.per_step[short] = per_step
            copies: list[P.Program] = []
            stream = f"anchors/{short}"
            lowered.graph.add_device_to_host_fifo(stream, tensor.dtype, tensor.numel)
            if tensor.numel:
                copies.append(P.Copy(tensor, lowered.graph.streams[stream]))
            torch_dtype = torch.from_numpy(np.zeros(0, tensor.dtype.numpy)).dtype
            slot = StreamSlot(short, stream, tensor.shape, torch_dtype, tensor.dtype)
            where = "update" if per_step else "micro_batch" if self.training else "step"
            body = _sequence(run, where)
            if self._mode(mode) is OutputMode.FINAL:
                if self.training and not per_step and any(tensor is p for p in lowered.params.values()):
                    # the weight the last micro-batch used, not the one the last update wrote
                    kept = lowered.graph.add_variable(tensor.dtype, tensor.shape, name=stream)
                    clone_mapping(lowered.graph, kept, tensor)
                    body.add(P.Copy(tensor, kept))
                    copies = [P.Copy(kept, c.dst) for c in copies]
                after += copies
                extra[short] = (slot, 1)
                continue
            for c in copies:
                body.add(c)
            extra[short] = (slot, o.device_iterations if per_step else turns_per_micro)
        if after:
            run = P.Sequence([run, *after], name="run_and_anchors")
        return dataclasses.replace(lowered, programs=(load, run)), extra

    def values(self, extra: dict[str, tuple[StreamSlot, int]],
               buffers: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """The anchored tensors of the last run, shaped as PopART's anchor buffers."""
        out = {}
        for short, (name, mode, period) in self.anchors.items():
            if short not in buffers:
                _missing([], name, short)
            slot, turns = extra[short]
            buf = buffers[short]  # (replicas, turns, elements)
            mode = self._mode(mode)
            rf, n = buf.shape[0], buf.shape[2]
            if mode is OutputMode.FINAL:
                lead, data = (rf,), buf[:, -1]
            elif mode is OutputMode.SUM:
                lead, data = (rf,), buf.sum(axis=1, dtype=buf.dtype)
            else:
                steps = self.options.device_iterations
                data = buf.reshape(rf, steps, turns // steps, n)
                if mode is OutputMode.EVERY_N:
                    data = data[:, period - 1::period]
                data = data.transpose(1, 2, 0, 3)  # (steps, micro-batches, replicas, elements)
                lead = data.shape[:3]
            keep = tuple(d for d in lead if d != 1)
            out[short] = torch.from_numpy(np.array(data.reshape(keep + slot.shape), order="C"))
        return out


def _seed_variable(graph: Graph) -> Variable | None:
    for var in graph.variables:
        if var.name == SEED_NAME and var.dtype is uint32 and var.shape == (2,):
            return var
    return None


def read_rng_state(graph: Graph, engine: Any, seed: int) -> list[int]:
    """PopTorch's ``rng_state``: ``[seed, *state]``; softipu's generator state is the device seed's
    two uint32 words (advanced after every run), replica 0's. A model without random ops has none
    to advance: its state is the seed's words."""
    var = _seed_variable(graph)
    if var is None:
        value = seed & ((1 << 64) - 1)
        return [seed, value & 0xFFFFFFFF, value >> 32]
    words = np.asarray(engine.read_tensor(_flat(graph, var))).reshape(-1, 2)[0]
    return [seed, int(words[0]), int(words[1])]


def write_rng_state(graph: Graph, engine: Any, state: list[int]) -> None:
    """Set the generator's state (every replica) from a list read by :func:`read_rng_state`."""
    words = list(state)
    if len(words) != 3 or not all(isinstance(w, (int, np.integer)) for w in words):
        raise _error(f"rng_state must be the list of 3 ints that rng_state gave ([seed, low, high]), got "
                     f"{state!r}")
    if not all(0 <= int(w) <= 0xFFFFFFFF for w in words[1:]):
        raise _error(f"rng_state: the state words must be uint32 values, got {words[1:]!r}")
    var = _seed_variable(graph)
    if var is not None:
        engine.write_tensor(_flat(graph, var), np.array(words[1:], np.uint32))


def check_broadcast_buffers(mutations: Any, replication_factor: int, broadcast: bool) -> None:
    """PopTorch refuses a replicated model that changes a buffer while buffers are broadcast (its
    default): the replicas' buffers would drift apart. ``broadcastBuffers(False)`` lets each
    replica keep its own buffers."""
    if replication_factor > 1 and broadcast:
        changed = sorted(target for kind, target, _ in mutations if kind == "buffer")
        if changed:
            raise _error(f"{BROADCAST_BUFFERS_ERROR} (the model changes the buffer(s) "
                         f"{', '.join(changed)} with replicationFactor({replication_factor}))")
