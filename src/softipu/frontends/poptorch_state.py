"""What a PopTorch executor reads from and writes to the device's state besides weights: tensor
names (``getTensorNames``), anchored tensors (``Options.anchorTensor`` / ``getAnchoredTensor``),
the random generator's state (``rng_state``) and PopTorch's buffer-broadcast check
(``Options.broadcastBuffers``).

softipu's engine keeps every graph variable in its own storage, so a variable read after a run
holds its value at the end of the run (the last device iteration's). The names are the graph's
variable names (``relu/out``, ``fc.weight``...): PopART names its tensors differently, so an
anchor names a tensor listed by ``getTensorNames``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from softipu.dtypes import uint32
from softipu.frontends.errors import FrontendError, PoptorchError, as_poptorch_error
from softipu.frontends.torch.options import OutputMode
from softipu.graph import Graph, Variable
from softipu.graph.tensor import Tensor

__all__ = ["BROADCAST_BUFFERS_ERROR", "anchored_values", "check_broadcast_buffers", "read_rng_state",
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
    ``p_fc_weight``, ``addmm``, ``relu``...), which :func:`anchored_values` can read back; a model
    without them (a training step, or one loaded from an executable) lists its variables."""
    views = getattr(lowered, "views", None)
    return list(views) if views else [v.name for v in lowered.graph.variables]


def _view(lowered: Any, name: str, short_name: str) -> Tensor:
    views = getattr(lowered, "views", None) or {}
    if name in views:
        return views[name]
    if not views:
        raise _error(f"anchorTensor({short_name!r}, {name!r}): this executable was loaded (from the "
                     "executable cache or loadExecutable) without its graph's tensor names; compile the "
                     "model to anchor tensors")
    import difflib  # noqa: PLC0415 - only on the error path

    near = difflib.get_close_matches(name, list(views), n=3)
    hint = f"; did you mean {' or '.join(map(repr, near))}?" if near else "; see getTensorNames()"
    raise _error(f"anchorTensor({short_name!r}, {name!r}): the compiled graph has no tensor {name!r}{hint}")


def anchored_values(lowered: Any, engine: Any, anchors: dict[str, tuple[str, Any]],
                    options: Any) -> dict[str, torch.Tensor]:
    """The anchored tensors after a run, by short name: each node's value at the end of the run (the
    last device iteration's), replicas concatenated along dim 0 as outputs are. ``anchors`` maps
    short name -> (node name, softipu output mode or None for the model's); a mode that needs every
    iteration's value with ``device_iterations > 1`` is refused."""
    out = {}
    for short, (long_name, mode) in anchors.items():
        view = _view(lowered, long_name, short)
        mode = options.output_mode if mode is None else mode
        if options.device_iterations > 1 and mode is not OutputMode.FINAL:
            raise _error(f"anchorTensor({short!r}, {long_name!r}) with output mode {mode.name} and "
                         f"deviceIterations({options.device_iterations}): softipu keeps only the last "
                         "iteration's value of an anchored tensor; anchor it with OutputMode.Final, or "
                         "return the tensor from forward")
        data = np.asarray(engine.read_tensor(view))
        rf, shape = options.replication_factor, view.shape
        if rf > 1:
            data = data.reshape((rf * shape[0],) + shape[1:]) if shape else data.reshape(rf)
        out[short] = torch.from_numpy(np.array(data, order="C"))
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
