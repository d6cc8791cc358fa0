"""Where a training step's tensors live: on chip, in Streaming Memory, sharded over replicas.

PopTorch's ``opts.TensorLocations.set{Weight,Optimizer,Accumulator,Activation}Location(
TensorLocationSettings()...)`` (softipu: ``Options(tensor_locations={"optimizer": {...}})``) with
PopART's rules (``docs/popart/tensor_locations.rst``):

* ``useOnChipStorage(False)`` (``on_chip``): a tensor of at least ``minElementsForOffChip``
  (``min_elements_off_chip``, default 2) elements lives in a remote buffer (Streaming Memory).
  It is loaded into an on-chip variable with a ``RemoteCopy`` just before the optimizer update
  that reads it and stored back right after: on chip it is a transient value of the update
  (live only there, sharing bytes with the step's other temporaries), and the copies are priced
  on the Streaming Memory path.
* ``useReplicatedTensorSharding(True)`` (``sharded``): with replicas, a tensor of at least
  ``minElementsForReplicatedTensorSharding`` (``min_elements_sharded``, default 8192) elements
  is split over the replicas: each holds ``ceil(n / R)`` elements (zero-padded: fragment ``q`` of
  the flattened tensor, GCL's reduce-scatter layout; PopART's balanced reorder spreads the padding
  over the replicas instead, the same bytes per replica). For the
  optimizer state, the gradient's all-reduce becomes a reduce-scatter (each replica gets its
  fragment reduced), the update runs on the fragment of the weight, the state and the gradient,
  and an all-gather rebuilds the weight on every replica (``softipu.collectives``). Only
  replica-identical tensors can be sharded (the weights' optimizer state here).

softipu implements the optimizer location (off chip, sharded, or both, as Graphcore's BERT
configurations use), gradient accumulators off chip and sharded, and weights and activations off
chip, weights sharded too (:mod:`.offload`). Off-chip tensors are kept per replica; sharded ones
per replica's fragment.

* **Updates that read whole tensors** on fragments (LAMB's trust ratio, a global-norm clip,
  automatic loss scaling): every sum over a sharded tensor in the traced update is a partial sum
  on each replica, so it is all-reduced (Add) across the replicas right after it
  (:func:`sum_partials_across_replicas`), as PopART appends a ``ReplicatedAllReduceInplace`` to
  ``LambSquareOp`` and ``ReduceSumSquareOp`` under RTS (``configureForReplicatedTensorSharding``
  in willow/src/op/lamb.cpp and reducesumsquare.cpp) and all-reduces the summed loss-scaling
  histograms across replicas (``AutomaticLossScale::apply``). The fragments' zero padding adds
  nothing to a sum of squares nor to an upper-bin count; the loss-scaling rule counts the whole
  tensors' elements. Sums over replica-identical (unsharded) tensors are not all-reduced. Any
  other op that mixes a fragment's elements is refused by name.
* **Sharded gradient accumulators** (``setAccumulatorLocation(...useReplicatedTensorSharding(
  True))``, with gradient accumulation): a weight whose update runs on fragments (its optimizer
  state or itself sharded) gets a fragment accumulator: each micro-batch's gradient is
  reduce-scattered (the step's Mean or Sum over replicas) before it is accumulated, and the
  update reads the accumulated fragment as it is (no reduction after the loop). PopART links a
  weight, its accumulator and its optimizer state in one sharding domain; an accumulator
  sharding without a sharded update is refused.
* **Sharded activations** are accepted and kept whole: each replica's activations are its own
  micro-batch's, and only tensors equal across replicas can be sharded (PopART's
  tensor_locations.rst; PopTorch documents the setting as "relevant for weights and optimiser
  states"); PopART's ``StreamingMemoryOpInserter::determineTensorLocation`` keeps them unsharded
  ("Activations are currently never sharded", tests/unittests/transforms/unittest_streamingmemory.cpp).
  softipu does the same and says so with a warning; ``useOnChipStorage(False)`` still applies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from softipu.frontends.errors import FrontendError
from softipu.frontends.torch.registry import register_lowering
from softipu.graph.remote import RemoteBuffer

__all__ = ["Location", "StatePlacement", "location_of", "plan_state", "read_state", "write_state",
           "state_locations", "poptorch_location", "sum_partials_across_replicas"]

_KINDS = ("weight", "optimizer", "accumulator", "activation")
_SETTINGS = {"on_chip": bool, "sharded": bool, "min_elements_off_chip": int, "min_elements_sharded": int,
             "io_tiles_load": bool, "io_tiles_store": bool}
# PopTorch's TensorLocationSettings methods -> softipu's setting names.
_POPTORCH = {"useOnChipStorage": "on_chip", "useReplicatedTensorSharding": "sharded",
             "minElementsForOffChip": "min_elements_off_chip",
             "minElementsForReplicatedTensorSharding": "min_elements_sharded",
             "useIOTilesToLoad": "io_tiles_load", "useIOTilesToStore": "io_tiles_store"}


@dataclass(frozen=True)
class Location:
    """One tensor class's settings (PopART's ``TensorLocationSettings``, with its defaults)."""

    on_chip: bool = True
    sharded: bool = False
    min_elements_off_chip: int = 2
    min_elements_sharded: int = 8192
    io_tiles_load: bool = False
    io_tiles_store: bool = False

    def off_chip_for(self, numel: int) -> bool:
        return not self.on_chip and numel >= self.min_elements_off_chip

    def sharded_for(self, numel: int, replicas: int) -> bool:
        return self.sharded and replicas > 1 and numel >= self.min_elements_sharded


def poptorch_location(kind: str, stored: dict[str, Any]) -> dict[str, Any]:
    """PopTorch's ``TensorLocationSettings`` values (by method name) as softipu's settings."""
    out = {}
    for name, value in stored.items():
        if name not in _POPTORCH:
            raise FrontendError(f"TensorLocations.set{kind.capitalize()}Location: unknown setting {name!r}")
        out[_POPTORCH[name]] = value
    return out


def location_of(options: Any, kind: str) -> Location:
    """The checked :class:`Location` of tensor class ``kind`` in ``options``."""
    settings = dict(options.tensor_locations.get(kind, {}))
    for name, value in settings.items():
        want = _SETTINGS.get(name)
        if want is None:
            raise FrontendError(f"tensor_locations[{kind!r}]: unknown setting {name!r}; the settings are "
                                f"{sorted(_SETTINGS)}")
        if not isinstance(value, want) or (want is int and (isinstance(value, bool) or value < 0)):
            raise FrontendError(f"tensor_locations[{kind!r}][{name!r}] must be a {want.__name__}"
                                f"{' >= 0' if want is int else ''}, got {value!r}")
    return Location(**settings)


@dataclass
class StatePlacement:
    """Where each optimizer state slot lives, and which weights' updates run sharded."""

    replicas: int
    location: Location
    # parameter -> (elements, elements per replica): its state and update are sharded
    sharded: dict[str, tuple[int, int]] = field(default_factory=dict)
    # (parameter, slot) -> the remote buffer holding it (per replica; a fragment when sharded)
    off_chip: set[tuple[str, str]] = field(default_factory=set)
    remote: dict[tuple[str, str], RemoteBuffer] = field(default_factory=dict)
    # gradient accumulators (with gradientAccumulation > 1) in Streaming Memory, by parameter
    accum_off_chip: set[str] = field(default_factory=set)
    accum_remote: dict[str, tuple[RemoteBuffer, Any]] = field(default_factory=dict)
    # gradient accumulators sharded with their update: each replica accumulates its fragment
    accum_sharded: set[str] = field(default_factory=set)
    trainable: int = 0  # parameters with a gradient (each has an accumulator under accumulation)
    shapes: dict[tuple[str, str], tuple[int, ...]] = field(default_factory=dict)  # the slot's own shape


def check_locations(options: Any, spec: Any, label: str) -> Location:
    """The optimizer's location; the combinations softipu refuses are named with what to do."""
    io = [f"TensorLocationSettings.useIOTilesTo{'Load' if n == 'io_tiles_load' else 'Store'} ({kind})"
          for kind in _KINDS for n in ("io_tiles_load", "io_tiles_store")
          if getattr(location_of(options, kind), n)]
    if io:  # overlapping I/O with compute is not modeled
        from softipu.frontends.torch.options import warn_unused  # noqa: PLC0415

        warn_unused(io, "PopTorch option")
    if location_of(options, "activation").sharded:
        _warn_sharded_activations()
    for kind in ("optimizer", "weight", "accumulator"):
        what = {"optimizer": "the optimizer state", "weight": "the weights",
                "accumulator": "the gradient accumulators"}[kind]
        if location_of(options, kind).sharded and options.replication_factor == 1:
            raise FrontendError(
                f"{label}: replicated tensor sharding of {what} needs replicas: TensorLocations.set"
                f"{kind.capitalize()}Location(useReplicatedTensorSharding(True)) with replicationFactor "
                "1 has no replicas to shard over; set replicationFactor(n > 1) or "
                "useReplicatedTensorSharding(False)")
    if location_of(options, "accumulator").sharded and not (location_of(options, "optimizer").sharded
                                                             or location_of(options, "weight").sharded):
        raise FrontendError(
            f"{label}: TensorLocations.setAccumulatorLocation(useReplicatedTensorSharding(True)) shards each "
            "gradient accumulator with the update it feeds, but neither the optimizer state nor the "
            "weights are sharded, so every update reads whole gradients (PopART links a weight, its "
            "accumulator and its optimizer state in one sharding domain); also set setOptimizerLocation("
            "TensorLocationSettings().useReplicatedTensorSharding(True)), or keep the accumulators unsharded")
    return location_of(options, "optimizer")


def _warn_sharded_activations() -> None:
    import warnings  # noqa: PLC0415

    from softipu.frontends.torch.options import UnusedOptionWarning  # noqa: PLC0415

    warnings.warn("TensorLocations.setActivationLocation(useReplicatedTensorSharding(True)): activations "
                  "are never sharded over replicas (each replica's are its own micro-batch's; only tensors "
                  "equal on every replica can be sharded, and PopTorch documents the setting as relevant for "
                  "weights and optimiser states); as PopART, softipu keeps them whole (useOnChipStorage "
                  "still applies): shard the optimizer state or the weights instead", UnusedOptionWarning,
                  stacklevel=4)


def plan_state(spec: Any, options: Any, named: dict[str, Any], label: str) -> StatePlacement:
    """Where the optimizer state of ``spec`` goes (:func:`add_buffers` adds the remote buffers)."""
    loc = check_locations(options, spec, label)
    replicas = options.replication_factor
    plan = StatePlacement(replicas, loc, trainable=len(named))
    accum, weight = location_of(options, "accumulator"), location_of(options, "weight")
    for name, p in named.items():
        n = int(p.numel())
        if loc.sharded_for(n, replicas) or weight.sharded_for(n, replicas):  # a sharded weight's update too
            plan.sharded[name] = (n, math.ceil(n / replicas))
        if options.gradient_accumulation > 1 and accum.off_chip_for(n):
            plan.accum_off_chip.add(name)
        if options.gradient_accumulation > 1 and name in plan.sharded and accum.sharded_for(n, replicas):
            plan.accum_sharded.add(name)
    for slot in spec.state:
        key = (slot.param_name, slot.name)
        shape = tuple(int(s) for s in slot.shape)
        plan.shapes[key] = shape
        numel = math.prod(shape)
        if slot.param_name in plan.sharded and numel == plan.sharded[slot.param_name][0]:
            shape = (plan.sharded[slot.param_name][1],)
        if loc.off_chip_for(numel):
            plan.off_chip.add(key)
    return plan


def add_buffers(graph: Any, plan: StatePlacement, state: dict[tuple[str, str], Any]) -> None:
    """A remote buffer for each off-chip state slot, of its on-chip variable's dtype and shape."""
    for key in sorted(plan.off_chip):
        var = state[key]
        plan.remote[key] = graph.add_remote_buffer(f"optimizer/{key[0]}/{key[1]}", var.dtype, var.shape)


def state_shape(plan: StatePlacement | None, key: tuple[str, str], shape: tuple[int, ...]) -> tuple[int, ...]:
    """The on-chip shape of state slot ``key``: its fragment's when its weight is sharded."""
    if plan is not None and key[0] in plan.sharded and math.prod(shape) == plan.sharded[key[0]][0]:
        return (plan.sharded[key[0]][1],)
    return tuple(shape)


# -- the host's view: whole tensors, whatever the placement -------------------------------------
def _shard(values: np.ndarray, n: int, m: int, replicas: int) -> np.ndarray:
    flat = np.zeros(replicas * m, values.dtype)
    flat[:n] = values.reshape(-1)
    return flat.reshape(replicas, m)


def write_state(engine: Any, low: Any, key: tuple[str, str], values: np.ndarray) -> None:
    """Write a state slot's whole value (its own shape) where it lives."""
    plan, var = getattr(low, "locations", None), low.state[key]
    values = np.asarray(values, var.dtype.numpy)
    if plan is not None and key[0] in plan.sharded and values.size == plan.sharded[key[0]][0]:
        n, m = plan.sharded[key[0]]
        values = _shard(values, n, m, plan.replicas)
    else:
        values = np.broadcast_to(values, var.shape)
    buffer = plan.remote.get(key) if plan is not None else None
    if buffer is None:
        engine.write_tensor(var, values)
    elif values.ndim > len(var.shape):  # one per replica (the fragments)
        engine.write_remote_buffer(buffer, values.reshape(values.shape[0], 1, *var.shape))
    else:
        engine.write_remote_buffer(buffer, values.reshape(1, *var.shape))


def read_state(engine: Any, low: Any, key: tuple[str, str]) -> np.ndarray:
    """A state slot's whole value (its own shape; replica 0's when every replica holds one)."""
    plan, var = getattr(low, "locations", None), low.state[key]
    buffer = plan.remote.get(key) if plan is not None else None
    replicas = plan.replicas if plan is not None else 1
    raw = engine.read_tensor(var) if buffer is None else engine.read_remote_buffer(buffer)
    if buffer is not None:
        raw = raw.reshape((replicas, *var.shape) if replicas > 1 else var.shape)
    if plan is not None and key[0] in plan.sharded and var.shape == (plan.sharded[key[0]][1],):
        n, _ = plan.sharded[key[0]]
        return np.ascontiguousarray(raw.reshape(-1)[:n]).reshape(plan.shapes[key])
    # replicated: a leading replica axis (also for a step loaded from an export, which has no plan)
    return np.array(raw[0] if raw.ndim > len(var.shape) else raw)


def state_locations(low: Any) -> dict[str, Any]:
    """Per optimizer state slot: where it lives and its bytes per replica there."""
    plan = getattr(low, "locations", None)
    out = {}
    for key, var in low.state.items():
        nbytes = int(var.numel) * var.dtype.itemsize
        remote = plan is not None and key in plan.remote
        sharded = plan is not None and key[0] in plan.sharded and var.shape == (plan.sharded[key[0]][1],)
        out["/".join(key)] = {"where": "streaming_memory" if remote else "on_chip", "sharded": sharded,
                              "bytes_per_replica": nbytes}
    return out


# -- the device's side: loads, stores, fragments ------------------------------------------------
def add_accumulator_buffers(graph: Any, plan: StatePlacement, accums: dict[str, Any]) -> None:
    """A remote buffer for each off-chip gradient accumulator, of its on-chip variable's shape."""
    for name in sorted(plan.accum_off_chip):
        var = accums[name]
        plan.accum_remote[name] = (graph.add_remote_buffer(f"accum/{name}", var.dtype, var.shape), var)


def load_accumulator(plan: StatePlacement, name: str, prog: Any) -> None:
    """An off-chip accumulator copied into its on-chip variable (before it is read)."""
    from softipu.graph import program as P  # noqa: PLC0415

    if name in plan.accum_remote:
        buffer, var = plan.accum_remote[name]
        prog.add(P.RemoteCopy(buffer, var))


def store_accumulator(plan: StatePlacement, name: str, prog: Any) -> None:
    """An off-chip accumulator's on-chip variable copied back to Streaming Memory (after it is written)."""
    from softipu.graph import program as P  # noqa: PLC0415

    if name in plan.accum_remote:
        buffer, var = plan.accum_remote[name]
        prog.add(P.RemoteCopy(var, buffer))


def load_state(plan: StatePlacement, keys: list[tuple[str, str]], state: dict[tuple[str, str], Any],
               prog: Any) -> None:
    """Off-chip state slots of ``keys`` copied from Streaming Memory into their on-chip variables."""
    from softipu.graph import program as P  # noqa: PLC0415

    for k in keys:
        if k in plan.remote:
            prog.add(P.RemoteCopy(plan.remote[k], state[k]))


def store_state(plan: StatePlacement, keys: list[tuple[str, str]], state: dict[tuple[str, str], Any],
                prog: Any) -> None:
    """The updated off-chip state slots of ``keys`` copied back to Streaming Memory."""
    from softipu.graph import program as P  # noqa: PLC0415

    for k in keys:
        if k in plan.remote:
            prog.add(P.RemoteCopy(state[k], plan.remote[k]))


def shard_update_inputs(graph: Any, name: str, weight: Any, grad: Any, prog: Any,
                        options: Any, fragment: bool = False, reduced: bool = False) -> tuple[Any, Any]:
    """(this replica's fragment of the weight, the gradient reduce-scattered over the replicas):
    the reduce-scatter replaces the gradient's all-reduce (PopART's RTS), with the same reduction
    (Mean or Sum over the replicas). With ``fragment`` the weight is its fragment already (a
    sharded weight, :mod:`.offload`); with ``reduced`` the gradient is (a sharded accumulator's,
    reduce-scattered micro-batch by micro-batch: :func:`shard_accumulated`)."""
    from softipu.collectives import CollectiveOperator, reduce_scatter  # noqa: PLC0415

    op = CollectiveOperator.MEAN if options.accumulation_reduction == "mean" else CollectiveOperator.ADD
    g = grad if reduced else reduce_scatter(graph, grad, prog, op=op, name=f"upd/reduce_scatter/{name}")
    if fragment:
        return weight, g
    w = reduce_scatter(graph, weight, prog, op=CollectiveOperator.LOCAL, name=f"upd/shard/{name}")
    return w, g


def accumulator_shape(plan: StatePlacement, name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The on-chip shape of ``name``'s gradient accumulator: its fragment's when sharded."""
    return (plan.sharded[name][1],) if name in plan.accum_sharded else tuple(int(s) for s in shape)


def shard_accumulated(graph: Any, plan: StatePlacement, grads: dict[str, Any], prog: Any,
                      options: Any) -> dict[str, Any]:
    """Each micro-batch's gradients, those of sharded accumulators reduce-scattered over the
    replicas (the step's Mean or Sum) before they are accumulated: each replica adds its fragment."""
    if not plan.accum_sharded:
        return grads
    from softipu.collectives import CollectiveOperator, reduce_scatter  # noqa: PLC0415

    op = CollectiveOperator.MEAN if options.accumulation_reduction == "mean" else CollectiveOperator.ADD
    return {n: reduce_scatter(graph, g, prog, op=op, name=f"bwd/reduce_scatter/{n}")
            if n in plan.accum_sharded else g for n, g in grads.items()}


def gather_weight(graph: Any, plan: StatePlacement, name: str, fragment: Any, weight: Any, prog: Any) -> None:
    """The updated fragments all-gathered into the whole weight on every replica."""
    from softipu.collectives import all_gather  # noqa: PLC0415
    from softipu.graph import program as P  # noqa: PLC0415

    full = all_gather(graph, fragment, prog, name=f"upd/all_gather/{name}")
    n = plan.sharded[name][0]
    prog.add(P.Copy(full.flatten()[:n].reshape(weight.shape), weight))


def check_exportable(low: Any, label: str) -> None:
    """Exports record on-chip variables only: a step with state off chip or sharded is refused."""
    plan = getattr(low, "locations", None)
    offload = getattr(low, "offload", None)
    if (plan is not None and (plan.remote or plan.sharded)) or (offload is not None and
                                                                (offload.weights or offload.sharded)):
        raise FrontendError(f"cannot export {label}: its optimizer state or weights live off chip or "
                            "sharded over replicas (TensorLocations), which softipu's export format does not "
                            "record yet; export it with the optimizer state and weights on chip")


def tensor_locations(model: Any, memory: dict[str, int]) -> dict[str, dict[str, Any]]:
    """Per tensor class (the summary's roles): where it lives and its bytes per replica and per
    IPU, on chip (``memory``: the summary's bytes by role) and in Streaming Memory; ``sharded_over``
    is the replicas a class's sharded tensors are split over (1: none). The optimizer state's
    slots are listed one by one under ``slots``."""
    low, options = model.lowered, model.options
    plan = getattr(low, "locations", None)
    ipus = max(1, options.target.num_ipus)
    streaming = sum(b.nbytes for b in plan.remote.values()) if plan is not None else 0
    out: dict[str, dict[str, Any]] = {}
    off = len(plan.off_chip) if plan is not None else 0
    accum_streaming = sum(b.nbytes for b, _ in plan.accum_remote.values()) if plan is not None else 0
    offload = getattr(low, "offload", None)  # weights and activations (training/offload.py)
    streamed = offload.streaming_bytes() if offload is not None else {}
    split = {"optimizer_state": plan is not None and bool(plan.sharded),  # roles with sharded tensors
             "gradients": plan is not None and bool(plan.accum_sharded),
             "weights": offload is not None and bool(offload.sharded)}
    for role, on_chip in memory.items():
        remote = streaming if role == "optimizer_state" else accum_streaming if role == "gradients" else \
            streamed.get(role, 0)
        sharded = split.get(role, False)
        # the optimizer's scalars (hyper-parameters, step) stay on chip whatever the location
        where = "on_chip" if not (role == "optimizer_state" and off) else \
            "streaming_memory" if off == len(low.state) else "on_chip+streaming_memory"
        if role == "gradients" and accum_streaming:
            every = len(plan.accum_remote) == plan.trainable
            where = "streaming_memory" if every else "on_chip+streaming_memory"
        if role in streamed and remote:
            where = "streaming_memory" if not on_chip else "on_chip+streaming_memory"
        out[role] = {"where": where, "sharded_over": options.replication_factor if sharded else 1,
                     "on_chip_bytes_per_replica": int(on_chip), "on_chip_bytes_per_ipu": int(on_chip) // ipus,
                     "streaming_bytes_per_replica": int(remote),
                     "streaming_bytes_per_ipu": int(remote) // ipus}
    out.setdefault("optimizer_state", {})["slots"] = state_locations(low)
    return out


# -- updates that read whole tensors, on fragments ----------------------------------------------
@torch.library.custom_op("softipu::replica_sum", mutates_args=())
def replica_sum_op(x: torch.Tensor) -> torch.Tensor:
    """``x`` summed over the replicas (a partial sum made whole); one replica, the host: ``x``."""
    return x.clone()


@replica_sum_op.register_fake
def _replica_sum_fake(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


@register_lowering("softipu::replica_sum")
def _lower_replica_sum(ctx: Any, node: Any, x: Any) -> Any:
    from softipu.collectives import CollectiveOperator, all_reduce  # noqa: PLC0415

    graph = ctx.graph.root  # under model parallelism ctx.graph is an IPU's view; collectives span replicas
    if graph.replication_factor == 1:
        return x
    label = node.meta.get("softipu_replica_sum", node.name)  # <parameter>/<k>: its k-th partial sum
    return all_reduce(graph, x, ctx.prog, op=CollectiveOperator.ADD, name=f"upd/replica_sum/{label}")


_aten = torch.ops.aten
_SUMS = {_aten.sum.default, _aten.sum.dim_IntList}
# elementwise on a fragment without the pointwise tag: casts, copies, views of the same shape
_ELEMENTWISE = {_aten._to_copy.default, _aten.clone.default, _aten.alias.default, _aten.where.self,
                _aten.lift_fresh_copy.default, _aten.copy.default}


def sum_partials_across_replicas(gm: torch.fx.GraphModule, plan: StatePlacement | None, pnames: list[str],
                                 skeys: list[tuple[str, str]], state: dict[tuple[str, str], Any]) -> Any:
    """The traced update of ``pnames`` (placeholders: weights, gradients, state slots of ``skeys``,
    then scalars) with each sum over a sharded fragment followed by a ``softipu::replica_sum``
    (an all-reduce, Add, across the replicas): a copy of ``gm``, or ``gm`` itself when nothing
    sums a fragment. An op that mixes a fragment's elements otherwise is refused by name."""
    if plan is None or not any(n in plan.sharded for n in pnames):
        return gm
    flags = [n in plan.sharded for n in pnames] * 2 + [
        k[0] in plan.sharded and tuple(state[k].shape) == (plan.sharded[k[0]][1],) for k in skeys]
    graph = torch.fx.Graph()
    graph.output(graph.graph_copy(gm.graph, {}))
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    owners = [*pnames, *pnames, *(k[0] for k in skeys)]
    # each fragment (and each value made from it alone, elementwise) -> its parameter
    fragments = {p: owner for p, f, owner in zip(placeholders, flags, owners, strict=False) if f}
    partial: list[tuple[torch.fx.Node, str]] = []
    for node in graph.nodes:
        read = [fragments[a] for a in node.all_input_nodes if a in fragments]
        if node.op != "call_function" or not read:
            continue
        val = node.meta.get("val")
        if node.target in _SUMS and isinstance(val, torch.Tensor) and val.numel() == 1:
            partial.append((node, read[0]))  # a partial sum: whole (replica-identical) once all-reduced
        elif node.target in _ELEMENTWISE or torch.Tag.pointwise in getattr(node.target, "tags", ()):
            fragments[node] = read[0]
        else:
            raise FrontendError(
                f"replicated tensor sharding: the optimizer update of {', '.join(pnames)} reads a "
                f"fragment of a sharded tensor through {node.target}, which softipu does not split over "
                "replicas (sums and elementwise ops only); turn useReplicatedTensorSharding off for this "
                "optimizer's state and weights")
    if not partial:
        return gm
    counts: dict[str, int] = {}
    for node, owner in partial:
        with graph.inserting_after(node):
            whole = graph.call_function(torch.ops.softipu.replica_sum.default, (node,))
        counts[owner] = counts.get(owner, -1) + 1
        whole.meta = {**node.meta, "softipu_replica_sum": f"{owner}/{counts[owner]}"}
        node.replace_all_uses_with(whole, delete_user_cb=lambda u, w=whole: u is not w)
    out = torch.fx.GraphModule(gm, graph)
    out.recompile()
    return out
