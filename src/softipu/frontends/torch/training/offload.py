"""Weights and activations in Streaming Memory during a training step.

PopTorch's ``opts.TensorLocations.setWeightLocation(TensorLocationSettings().useOnChipStorage(False))``
and ``setActivationLocation(...)`` (softipu: ``Options(tensor_locations={"weight": {"on_chip":
False}})``), with PopART's rule that a tensor of at least ``minElementsForOffChip`` elements goes
off chip (:class:`~softipu.frontends.torch.training.locations.Location`).

* **Weights.** Each off-chip parameter's home is a remote buffer (one row per replica). It is
  loaded with a ``RemoteCopy`` just before its first reader in each context of the step, as
  PopART's streaming-memory op inserter loads a weight once per context: the forward, the
  backward and the optimizer update; the update's copy is stored back right after. Each context
  loads into its own on-chip variable (``streaming/weights/<name>[/bwd|/update]``), so on chip a
  weight lives only from its load to its last reader in that context: between the forward and the
  backward its bytes are free for activations. Forward values computed from weights alone (a
  transpose, a view, a cast) are computed again in the backward from the backward's copy.
* **Sharded weights** (``useReplicatedTensorSharding(True)`` on the weight location, R > 1, at
  least ``minElementsForReplicatedTensorSharding`` elements): each replica keeps ``ceil(n / R)``
  elements of the flattened weight (``weights/<name>/fragment``, zero-padded as the optimizer
  state's fragments, in Streaming Memory too when also off chip). Each context's reader gets the
  whole weight by an all-gather of the fragments into a transient variable
  (``gathered/weights/<name>...``); the gradient is reduce-scattered and the update (with its state,
  sharded alike) runs on the fragment, which stays the weight's only home.
* **Activations.** A forward value the backward reads is stored to a remote buffer right after it
  is made and loaded into a new on-chip variable before its first backward reader, so it no
  longer lives on chip across the rest of the forward and the backward up to that reader.

Every copy is a ``RemoteCopy`` step priced on the Streaming Memory path; the values are those of
the on-chip step (the same ops on the same values). The host reads and writes an off-chip weight
in its remote buffer (:func:`write_weight`, :func:`read_weight`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from softipu.frontends.torch.training.locations import location_of
from softipu.graph import program as P
from softipu.graph.remote import RemoteBuffer
from softipu.graph.tensor import Tensor

__all__ = ["Offload", "read_weight", "write_weight"]

_aten = torch.ops.aten
_VIEWS = {_aten.alias.default, _aten.view.default, _aten.permute.default, _aten.t.default,
          _aten.transpose.int, _aten.unsqueeze.default, _aten.squeeze.dim, _aten.expand.default}


class Offload:
    """Which weights and activations of one lowering live in Streaming Memory, and the copies that
    move them (the lowerer calls :meth:`before` and :meth:`after` around each graph node)."""

    def __init__(self, options: Any) -> None:
        self.weight = location_of(options, "weight")
        self.activation = location_of(options, "activation")
        self.replicas = options.replication_factor
        self.weights: dict[str, RemoteBuffer] = {}  # parameter -> its home in Streaming Memory
        self.sharded: dict[str, tuple[int, int]] = {}  # parameter -> (elements, elements per replica)
        self.fragments: dict[str, Tensor] = {}  # sharded parameter -> its on-chip fragment (on chip)
        self.activations: dict[str, RemoteBuffer] = {}  # forward node -> its remote buffer
        self._param_of: dict[torch.fx.Node, str] = {}  # off-chip weights' placeholders
        self._derived: dict[torch.fx.Node, frozenset[torch.fx.Node]] = {}  # from off-chip weights alone
        self._constant: set[torch.fx.Node] = set()  # from parameters and buffers alone
        self._context = ""
        self._loaded: set[torch.fx.Node] = set()
        self._again: set[torch.fx.Node] = set()  # derived nodes lowered again in this context
        self._saved: dict[torch.fx.Node, RemoteBuffer] = {}
        self._restored: set[torch.fx.Node] = set()
        # backward views of stored activations (AOTAutograd aliases every saved value at the start of
        # the backward): made again from the loaded copy before their first reader that is not a view
        self._views: dict[torch.fx.Node, torch.fx.Node] = {}

    @property
    def active(self) -> bool:
        return not (self.weight.on_chip and self.activation.on_chip and not self.weight.sharded)

    def weight_off_chip(self, shape: Any) -> bool:
        return self.weight.off_chip_for(int(np.prod(shape, dtype=np.int64)))

    def weight_sharded(self, shape: Any) -> bool:
        return self.weight.sharded_for(int(np.prod(shape, dtype=np.int64)), self.replicas)

    def variable_name(self, name: str, shape: Any) -> str:
        """A parameter's (forward) variable name: ``weights/`` when it is its home, else that of a
        transient copy (``streaming/weights/`` loaded, ``gathered/weights/`` all-gathered)."""
        if self.weight_sharded(shape):
            return f"gathered/weights/{name}"
        return f"streaming/weights/{name}" if self.weight_off_chip(shape) else f"weights/{name}"

    def holds_fragment(self, name: str) -> bool:
        """The update of ``name`` runs on this replica's fragment, which is its home."""
        return name in self.sharded

    # -- set up once the parameters have variables -------------------------------------------------
    def setup(self, lowerer: Any, params: dict[str, Tensor]) -> None:
        """A remote buffer for each off-chip parameter; which forward nodes come from weights alone."""
        if not self.active:
            return
        j = lowerer.joint
        placeholders = [n for n in j.gm.graph.nodes if n.op == "placeholder"]
        node_of = dict(zip(j.params, placeholders, strict=False))
        for name, var in params.items():
            if self.weight_sharded(var.shape):
                self._add_fragment(lowerer, name, var, node_of[name])
            elif self.weight_off_chip(var.shape):
                self.weights[name] = lowerer.graph.add_remote_buffer(f"weights/{name}", var.dtype, var.shape)
            else:
                continue
            self._param_of[node_of[name]] = name
        stored = set(placeholders[:len(j.params) + len(j.buffers)])
        for node in j.gm.graph.nodes:
            if node.op != "call_function" or node not in j.forward_nodes or not node.all_input_nodes:
                continue
            inputs = node.all_input_nodes
            if all(a in stored or a in self._constant for a in inputs):
                self._constant.add(node)
            if all(a in self._param_of or a in self._derived for a in inputs):
                self._derived[node] = frozenset().union(*({a} if a in self._param_of else self._derived[a]
                                                          for a in inputs))

    def _add_fragment(self, lowerer: Any, name: str, var: Tensor, p: torch.fx.Node) -> None:
        """A sharded weight's home: its fragment on chip, or a fragment-sized remote buffer."""
        n = int(var.numel)
        m = -(-n // self.replicas)
        self.sharded[name] = (n, m)
        if self.weight_off_chip((m,)):
            self.weights[name] = lowerer.graph.add_remote_buffer(f"weights/{name}", var.dtype, (m,))
            return
        with _on_ipu(lowerer, p):
            self.fragments[name] = _fragment(lowerer, var.dtype, m, f"weights/{name}/fragment")

    # -- around each node of the joint graph -------------------------------------------------------
    def before(self, lowerer: Any, node: torch.fx.Node, forward: bool) -> None:
        """Loads ``node`` needs first: its weights (once per context) and, in the backward, the
        activations it reads and the weight-derived values it reads, made again."""
        if not self.active:
            return
        context = "fwd" if forward else "bwd"
        if context != self._context:
            self._context, self._loaded, self._again = context, set(), set()
        inputs = node.all_input_nodes
        if not forward and node.target in _VIEWS and len(inputs) == 1 and \
                (inputs[0] in self._saved or inputs[0] in self._views):
            self._views[node] = self._views.get(inputs[0], inputs[0])
            return  # a view of a stored activation: nothing read until a reader that is not a view
        for a in inputs:
            for p in ({a} if a in self._param_of else self._derived.get(a, ())):
                if p not in self._loaded:
                    self._load(lowerer, p, forward)
            if not forward and a in self._derived:
                self._lower_again(lowerer, a)
            root = self._views.get(a, a)
            if not forward and root in self._saved and root not in self._restored:
                self._restore(lowerer, root)
            if not forward and a in self._views:
                self._view_again(lowerer, a)

    def after(self, lowerer: Any, node: torch.fx.Node, forward: bool) -> bool:
        """After a forward node: its value stored to Streaming Memory when the backward reads it and
        activations live off chip. True when the backward does not read it on chip (stored, or made
        again from off-chip weights)."""
        if forward and node in self._derived:
            return True  # made again from the backward's copy of its weights
        if not forward or self.activation.on_chip or node in self._constant:
            return False
        inputs = node.all_input_nodes
        if node.target in _VIEWS and len(inputs) == 1 and inputs[0] in self._saved.keys() | self._views:
            self._views[node] = self._views.get(inputs[0], inputs[0])  # stored once, as its source
            return True
        value = lowerer.env[node]
        if not isinstance(value, Tensor) or not self.activation.off_chip_for(int(value.numel)):
            return False
        if all(u in lowerer.joint.forward_nodes or u.op == "output" for u in node.users):
            return False  # no backward reader (a user output is streamed to the host from chip)
        buffer = lowerer.graph.add_remote_buffer(f"activations/{node.name}", value.dtype, value.shape,
                                                 _stash_rows(lowerer, node))
        with _tagged(lowerer, node, "fwd"):
            lowerer.ctx.prog.add(P.RemoteCopy(value, buffer))
        self.activations[node.name] = self._saved[node] = buffer
        return True

    def stores(self, node: torch.fx.Node, value: Any) -> bool:
        """``node``'s value will be stored off chip for the backward (:meth:`after`): under
        pipelining its remote buffer is the stash, one row per micro-batch in flight."""
        if self.activation.on_chip or node in self._constant or node in self._derived:
            return False
        return isinstance(value, Tensor) and self.activation.off_chip_for(int(value.numel))

    def _load(self, lowerer: Any, p: torch.fx.Node, forward: bool) -> None:
        with _tagged(lowerer, p, "fwd" if forward else "bwd"):
            self._load_into(lowerer, p, forward)

    def _load_into(self, lowerer: Any, p: torch.fx.Node, forward: bool) -> None:
        name = self._param_of[p]
        self._loaded.add(p)
        if not forward:  # a variable of its own: the forward's is free from its last forward reader
            with _on_ipu(lowerer, p):
                home = "gathered" if name in self.sharded else "streaming"
                lowerer.env[p] = _like_weight(lowerer, p, f"{home}/weights/{name}/bwd")
        if name not in self.sharded:
            lowerer.ctx.prog.add(P.RemoteCopy(self.weights[name], lowerer.env[p]))
            return
        from softipu.collectives import all_gather  # noqa: PLC0415

        prog, dst = lowerer.ctx.prog, lowerer.env[p]
        with _on_ipu(lowerer, p):
            fragment = self._fragment_of(lowerer, name, p, prog)
            full = all_gather(lowerer.graph, fragment, prog,
                              name=f"{'fwd' if forward else 'bwd'}/all_gather/{name}")
        prog.add(P.Copy(full.flatten()[:self.sharded[name][0]].reshape(dst.shape), dst))

    def _fragment_of(self, lowerer: Any, name: str, p: torch.fx.Node, prog: P.Sequence) -> Tensor:
        """A sharded weight's fragment on chip: its home, or loaded from Streaming Memory."""
        if name in self.fragments:
            return self.fragments[name]
        buffer = self.weights[name]
        fragment = _fragment(lowerer, buffer.dtype, buffer.shape[0], f"streaming/weights/{name}/fragment")
        prog.add(P.RemoteCopy(buffer, fragment))
        return fragment

    def _lower_again(self, lowerer: Any, a: torch.fx.Node) -> None:
        """A forward value made from off-chip weights alone, made again from the backward's copies."""
        if a in self._again:
            return
        self._again.add(a)
        for b in a.all_input_nodes:
            if b in self._derived:
                self._lower_again(lowerer, b)
        lowerer.env[a] = lowerer.lower_node(a, lowerer.env)

    def _view_again(self, lowerer: Any, a: torch.fx.Node) -> None:
        """A backward view of a stored activation, made again on its loaded copy."""
        if a in self._again:
            return
        self._again.add(a)
        b = a.all_input_nodes[0]
        if b in self._views:
            self._view_again(lowerer, b)
        lowerer.env[a] = lowerer.lower_node(a, lowerer.env)

    def _restore(self, lowerer: Any, a: torch.fx.Node) -> None:
        from softipu.ops.random import clone_mapping  # noqa: PLC0415

        self._restored.add(a)
        value = lowerer.env[a]
        with _on_ipu(lowerer, a):
            var = lowerer.graph.add_variable(value.dtype, value.shape, name=f"streaming/activations/{a.name}")
            clone_mapping(lowerer.graph, var, value)
        with _tagged(lowerer, a, "bwd"):
            lowerer.ctx.prog.add(P.RemoteCopy(self._saved[a], var))
        lowerer.env[a] = var

    # -- the optimizer update ----------------------------------------------------------------------
    def load_for_update(self, lowerer: Any, name: str, prog: P.Sequence) -> Tensor | None:
        """An off-chip weight loaded into a variable of its own for its update (None: on chip)."""
        if name not in self.weights and name not in self.sharded:
            return None
        p = next(n for n, m in self._param_of.items() if m == name)
        with _on_ipu(lowerer, p):
            if name in self.sharded:  # the update runs on the fragment
                return self._fragment_of(lowerer, name, p, prog)
            var = _like_weight(lowerer, p, f"streaming/weights/{name}/update")
        prog.add(P.RemoteCopy(self.weights[name], var))
        return var

    def store_after_update(self, name: str, var: Tensor, prog: P.Sequence) -> None:
        if name in self.weights:
            prog.add(P.RemoteCopy(var, self.weights[name]))

    def streaming_bytes(self) -> dict[str, int]:
        """Bytes per replica in Streaming Memory: the weights and the activations."""
        return {"weights": sum(b.nbytes for b in self.weights.values()),
                "activations": sum(b.nbytes for b in self.activations.values())}


def _fragment(lowerer: Any, dtype: Any, m: int, name: str) -> Tensor:
    from softipu.frontends.placement import map_tensor  # noqa: PLC0415

    var = lowerer.ctx.graph.add_variable(dtype, (m,), name=name)
    map_tensor(lowerer.ctx.graph, var)
    return var


def _like_weight(lowerer: Any, p: torch.fx.Node, name: str) -> Tensor:
    """A new variable laid out as parameter ``p``'s forward variable (for what uses it)."""
    from softipu.frontends.torch.lower import _weight_variable  # noqa: PLC0415

    val = p.meta.get("val")
    shape = tuple(int(d) for d in val.shape)
    return _weight_variable(lowerer.ctx, p, lowerer.ctx.dtype(val.dtype), shape, name, training=True)


@contextlib.contextmanager
def _on_ipu(lowerer: Any, node: torch.fx.Node) -> Iterator[None]:
    """Under model parallelism: what is made here lives on ``node``'s IPU."""
    placement = getattr(lowerer, "placement", None)
    if placement is None:
        yield
        return
    with lowerer.on_ipu(placement.ipu_of.get(node)):
        yield


def _stash_rows(lowerer: Any, node: torch.fx.Node) -> int:
    """Rows of an activation's remote buffer: under pipelining the stash depth of its stage
    (PopART's ``2 x (IPUs to the end) + 1``; the copies use row 0: the values are those of the
    micro-batches run one after another), else one."""
    if not getattr(lowerer, "pipelined", False):
        return 1
    from softipu.target.pipeline import stash_depths  # noqa: PLC0415

    stages = lowerer.placement.stages
    return max(1, stash_depths(len(stages), True)[lowerer.placement.stage_of.get(node, 0)])


@contextlib.contextmanager
def _tagged(lowerer: Any, node: torch.fx.Node, context: str) -> Iterator[None]:
    """Under model parallelism: the steps added here are loads of ``node``'s stage in ``context``
    (``load_fwd`` / ``load_bwd``: what a phased strategy overlaps with the previous phase)."""
    prog = lowerer.ctx.prog
    start = len(prog.programs)
    yield
    placement = getattr(lowerer, "placement", None)
    stage = placement.stage_of.get(node) if placement is not None else None
    if stage is not None:
        lowerer.tags += [(q, stage, f"load_{context}") for q in prog.programs[start:]]


# -- the host's view ----------------------------------------------------------------------------
def write_weight(engine: Any, low: Any, name: str, values: np.ndarray) -> None:
    """A parameter's value written where it lives (its variable, its remote buffer, its fragments)."""
    var = low.params[name]
    offload = getattr(low, "offload", None)
    buffer = offload.weights.get(name) if offload is not None else None
    values = np.asarray(values, var.dtype.numpy)
    if offload is not None and name in offload.sharded:  # one fragment per replica
        n, m = offload.sharded[name]
        flat = np.zeros(offload.replicas * m, values.dtype)
        flat[:n] = values.reshape(-1)
        values = flat.reshape(offload.replicas, *((1, m) if buffer is not None else (m,)))
        if buffer is None:
            engine.write_tensor(offload.fragments[name], values)
            return
    if buffer is None:
        engine.write_tensor(var, values)
    else:
        engine.write_remote_buffer(buffer, values if values.ndim > len(buffer.shape) + 1 else
                                   values.reshape(1, *buffer.shape))


def read_weight(engine: Any, low: Any, name: str) -> np.ndarray:
    """A parameter's value where it lives (a leading replica axis when replicated)."""
    var = low.params[name]
    offload = getattr(low, "offload", None)
    buffer = offload.weights.get(name) if offload is not None else None
    if offload is not None and name in offload.sharded:  # the fragments put together
        raw = engine.read_remote_buffer(buffer) if buffer is not None else \
            engine.read_tensor(offload.fragments[name])
        n, _ = offload.sharded[name]
        whole = raw.reshape(-1)[:n].reshape(var.shape)  # as every replica holds it, gathered
        return np.array(np.broadcast_to(whole, (offload.replicas, *var.shape)))
    if buffer is None:
        return engine.read_tensor(var)
    raw = engine.read_remote_buffer(buffer)
    return raw.reshape((offload.replicas, *buffer.shape) if offload.replicas > 1 else buffer.shape)
