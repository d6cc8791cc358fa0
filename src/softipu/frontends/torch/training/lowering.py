"""Lowering a training step: forward, backward, gradient accumulation and the optimizer update.

Program 1 (the step) is ``Repeat(device_iterations, [zero accumulators, Repeat(GA, micro-batch),
update])``; a micro-batch streams its inputs in, runs the joint graph (compute sets named
``fwd/...`` and ``bwd/...``), writes the running statistics back and adds its gradients to the
accumulators (GA > 1). The update (``upd/...``) is the optimizer's pure-torch update function,
traced with ``make_fx`` and lowered by the same registry, then copied into the weight and state
variables. Variables are named by role: ``weights/``, ``buffers/``, ``accum/``, ``optimizer/``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.fx.experimental.proxy_tensor import make_fx

from softipu.dtypes import float16, float32
from softipu.frontends.errors import LoweringError
from softipu.frontends.torch.export import check_supported, user_line
from softipu.frontends.torch.lower import (
    StreamSlot,
    _at_user_line,
    _Lowerer,
    _weight_variable,
    linear_rows,
    map_tensor,
    stream_out,
)
from softipu.frontends.torch.lowerings.reduce import dims_of, reduce_to
from softipu.frontends.torch.optim.als import LossScalingSettings, scale_from_counts, upper_bin_count
from softipu.frontends.torch.optim.spec import Kind
from softipu.frontends.torch.options import Options, OutputMode
from softipu.frontends.torch.training.fuse import (
    Pending,
    fuse_node,
    fusible,
    is_cast,
    materialize,
    materialize_into,
    stochastic_rounding,
)
from softipu.frontends.torch.training.joint import Joint
from softipu.frontends.torch.training.layouts import clone_layout, same_view, storage_view
from softipu.frontends.torch.training.locations import (
    accumulator_shape,
    add_accumulator_buffers,
    add_buffers,
    gather_weight,
    load_accumulator,
    load_state,
    plan_state,
    shard_accumulated,
    shard_update_inputs,
    state_shape,
    store_accumulator,
    store_state,
    sum_partials_across_replicas,
)
from softipu.frontends.torch.training.offload import Offload
from softipu.frontends.torch.training.replication import reduce_gradients
from softipu.frontends.torch.training.traces import canonical_shape, is_pointwise, with_shape
from softipu.graph import program as P
from softipu.graph.tensor import Tensor
from softipu.ops import elementwise as ew
from softipu.ops.indexing import create_slicable_like, zero
from softipu.ops.reduce import ReduceOp

__all__ = ["TrainLowered", "lower_training"]


@dataclass
class TrainLowered:
    """A lowered training step and where everything lives."""

    graph: Any
    programs: tuple[P.Program, P.Program]
    inputs: tuple[StreamSlot | None, ...]
    outputs: tuple[Any, ...]
    params: dict[str, Tensor]  # every parameter's variable
    buffers: dict[str, Tensor]
    state: dict[tuple[str, str], Tensor]
    hyper: dict[str, Tensor]
    step: Tensor
    seed_weights: list[tuple[str, np.ndarray]]
    nodes: int
    saved_bytes: int  # forward values the backward reads (activations kept for the backward)
    grad_bytes: int
    extra: dict[str, Any] = field(default_factory=dict)
    # Each graph node's result and each micro-batch's gradient by parameter (PopTorch's anchors read
    # them); empty for a step loaded from an export.
    views: dict[str, Tensor] = field(default_factory=dict)
    gradients: dict[str, Tensor] = field(default_factory=dict)


def _zeros(spec_dtype: torch.dtype, shape: Sequence[int]) -> torch.Tensor:
    # An example for make_fx's fake-tensor trace, whose values are never read: uninitialized (an
    # embedding table's update traced with zeros wrote hundreds of MB for nothing).
    return torch.empty(tuple(shape), dtype=spec_dtype) if len(shape) else torch.zeros((), dtype=spec_dtype)


class _TrainLowerer(_Lowerer):
    def __init__(self, joint: Joint, spec: Any, options: Options, input_names: Sequence[str],
                 named: dict[str, torch.Tensor]) -> None:
        super().__init__(None, options, input_names)
        self.joint = joint
        self.spec = spec
        self.named = named
        # Where the optimizer state lives (on chip, Streaming Memory, sharded): training/locations.py
        self.locations = plan_state(spec, options, named, "the training model")
        self.offload = Offload(options)  # weights and activations in Streaming Memory (training/offload.py)
        self._update_traces: dict[Any, torch.fx.GraphModule] = {}  # per-parameter update signature
        # Core ATen's table, materialized once: make_fx materializes a CustomDecompTable on every
        # trace (walking every op namespace for composite ops), a fixed cost per traced update
        self._decompositions: dict | None = None
        # The update's 0-d expressions (bias corrections...) by identity, lowered once (fuse.materialize)
        self._scalars: dict[tuple, Tensor] | None = None
        self.matmul_weights: set[str] = set()  # parameters laid out as their matmul's RHS

    def _var(self, name: str, torch_dtype: torch.dtype, shape: Sequence[int],
             like: Tensor | None = None, clone: bool = False) -> Tensor:
        shape = tuple(int(s) for s in shape)
        same = like is not None and like.shape == shape
        # An embedding table's accumulator and optimizer state: laid out as the table (on tile).
        t = create_slicable_like(self.graph, like, self.ctx.dtype(torch_dtype), name) if same else None
        if t is None and same and clone:  # a linear weight's optimizer state: as the weight
            t = clone_layout(self.graph, like, self.ctx.dtype(torch_dtype), name)
        if t is None:
            t = self.graph.add_variable(self.ctx.dtype(torch_dtype), shape, name=name)
            map_tensor(self.graph, t)
        return t

    def build(self) -> TrainLowered:
        j, opts = self.joint, self.options
        ga = opts.gradient_accumulation
        params, buffers = self._placeholders()
        micro = P.Sequence(name="micro_batch")
        self.ctx.prog = micro
        count = 0
        saved = 0
        saved_vars: set[int] = set()
        # Casts fused into the elementwise op next to them (not with offloading or placed blocks).
        fuse_casts = FUSE_JOINT_CASTS and not self.offload.active and self._one_placement
        # and the backward's elementwise chains, except when a floating-point trap must name its op
        self._chains = FUSE_BACKWARD_CHAINS and not opts.engine_options.get("debug.floatingPointExceptions")
        for node in j.gm.graph.nodes:
            if node.op != "call_function":
                continue
            forward = node in j.forward_nodes
            self.ctx.phase = "fwd/" if forward else "bwd/recompute/" if node.meta.get("softipu_recomputed") \
                else "bwd/"
            self.offload.before(self, node, forward)
            self.env[node] = self._joint_node(node, fuse_casts)
            count += 1
            offloaded = self.offload.after(self, node, forward)  # stored off chip for the backward
            if forward and not offloaded and any(u not in j.forward_nodes for u in node.users):
                saved += _nbytes(node.meta.get("val"), opts.precision)
                saved_vars |= variable_ids(self.graph, self.env[node])
        self.ctx.phase = ""
        output = next(n for n in reversed(j.gm.graph.nodes) if n.op == "output")
        outs = list(output.args[0])
        n_mut = len(j.mutated)
        for name, node in zip(j.mutated, outs[:n_mut], strict=True):
            micro.add(P.Copy(self.ctx.cast(self.env[node], buffers[name].dtype), buffers[name]))
        user = outs[n_mut:n_mut + j.num_user_outputs]
        grad_nodes = outs[n_mut + j.num_user_outputs:]
        grads = {name: self.env[node] for name, node in zip(j.trainable, grad_nodes, strict=True)}
        micro_grads = dict(grads)
        grad_bytes = sum(int(g.numel) * g.dtype.itemsize for g in grads.values())
        grad_vars = variable_ids(self.graph, list(grads.values()))
        slots, copies = self._outputs(user)
        body = P.Sequence([*self.in_copies, micro], name="micro_batch")
        final = opts.output_mode in (OutputMode.FINAL, OutputMode.DEFAULT)
        if not final:
            for c in copies:
                body.add(c)
        update = P.Sequence(name="update")
        if ga > 1:
            grads, iteration = self._accumulate(grads, body, update)
            grad_bytes = sum(int(a.numel) * a.dtype.itemsize for a in grads.values())
        else:
            iteration = P.Sequence([body, update], name="iteration")
        # across replicas (the sharded weights' gradients are reduce-scattered in the update)
        grads = {**grads, **reduce_gradients(self.graph, {n: g for n, g in grads.items()
                                                          if n not in self.locations.sharded},
                                             update, opts, in_place=ga > 1)}
        state, hyper, step = self._update(params, grads, update)
        self._load_seed()
        di = opts.device_iterations
        run: P.Program = P.Repeat(di, iteration) if di > 1 else iteration
        if final:
            run = P.Sequence([run, *copies], name="run")
        return TrainLowered(self.graph, (self.load, run), tuple(self.inputs), tuple(slots), params, buffers,
                            state, hyper, step, list(self.weights), count, saved, grad_bytes,
                            {"saved_variables": sorted(saved_vars), "gradient_variables": sorted(grad_vars)},
                            {n.name: v for n, v in self.env.items() if isinstance(v, Tensor)}, micro_grads)

    def _joint_node(self, node: torch.fx.Node, fuse_casts: bool) -> Any:
        """A joint-graph node lowered; with ``fuse_casts``, a float cast and the elementwise op
        beside it (its producer or its one user, :mod:`.fuse`) become one ``map``: mixed-precision
        graphs (an fp16 model's layer-norm backward, its fp32 sums) convert around nearly every op,
        each cast a compute set and a pass over the data of its own otherwise. Every node of the
        expression rounds to its dtype as the separate op would: the same values bit for bit."""
        env = self.env
        # (not when the device rounds float16 stochastically: the cast stays a Cast vertex, fuse.py)
        fold = fuse_casts and FOLD_REDUCE_CASTS and not stochastic_rounding(self.ctx)
        narrow = _sum_then_narrowing_cast(node, self.ctx.dtype) if fold else None
        if narrow is not None:
            x = env[node.args[0]] = self._materialize(env[node.args[0]], node.args[0])
            if isinstance(x, Tensor) and x.dtype is float32:
                return self._sum_as(node, narrow)
        if fuse_casts and fusible(node, self.ctx.dtype):
            joins = _joins_users(node, self.joint.forward_nodes, self._chains)
            if joins and len(node.users) > 1 and isinstance(env[node.args[0]], Pending):
                joins = False  # a cast of a chain read by several: the chain is computed once
            operands = [env[a] for a in node.all_input_nodes]
            mixed = len({v.dtype for v in operands if isinstance(v, (Pending, Tensor))}) > 1  # a promotion
            if joins or mixed or any(isinstance(v, Pending) for v in operands):
                pending = fuse_node(node, env, self.ctx)
                if pending is not None:
                    return pending if joins else self._materialize(pending, node)
        for a in node.all_input_nodes:
            env[a] = self._materialize(env[a], a)
        return self.lower_node(node, env)

    def _sum_as(self, node: torch.fx.Node, dtype: Any) -> Any:
        """A float32 ``sum`` whose one user narrows it (an fp16 model's layer-norm weight and bias
        gradients, summed in float32 and cast to float16) reduced straight to ``dtype``: popops
        ``reduce(graph, in, outType, dims, params)`` writes its last stage in the output type, so
        PopART's reductions have no cast compute set after them. The same bits as the sum and
        then the cast (each rounds the same float32 sum once to float16: ops/reduce.py's
        ``out_dtype``); the cast node is then a no-op (its input already has its dtype)."""
        x = self.env[node.args[0]]
        dim = node.args[1] if len(node.args) > 1 else None
        keepdim = bool(node.args[2]) if len(node.args) > 2 else bool(node.kwargs.get("keepdim", False))
        outer, self.ctx.node = self.ctx.node, node
        try:
            return _at_user_line(user_line(node), lambda: reduce_to(
                self.ctx, x, ReduceOp.ADD, dims_of(x, dim), keepdim, out_dtype=dtype))
        finally:
            self.ctx.node = outer

    def _materialize(self, value: Any, node: torch.fx.Node) -> Any:
        """A joint-graph expression lowered as one map, attributed to ``node``'s line of forward."""
        if not isinstance(value, Pending):
            return value
        return _at_user_line(user_line(node), lambda: materialize(value, self.ctx, node))

    @property
    def _one_placement(self) -> bool:
        """Whether every op is lowered into one program with one placement: the lowerers of
        placed blocks and pipelines override ``lower_node`` to place ops per IPU."""
        return type(self).lower_node is _TrainLowerer.lower_node

    def _placeholders(self) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Variables for the parameters and buffers, streams for the user inputs, and the loss
        scaling (a device variable when it is one, else a constant)."""
        j = self.joint
        placeholders = [n for n in j.gm.graph.nodes if n.op == "placeholder"]
        self.hyper = {h.name: self._var(f"optimizer/hyper/{h.name}", h.torch_dtype, ())
                      for h in self.spec.hyper}
        if j.scaled:
            scale = placeholders.pop()
            found = self.hyper.get("loss_scaling")
            self.env[scale] = found if found is not None else self.ctx.constant(
                float(self.spec.loss_scaling), float32, (), "loss_scaling")
        params: dict[str, Tensor] = {}
        buffers: dict[str, Tensor] = {}
        for i, node in enumerate(placeholders):
            self.place(node)  # a weight on its layer's IPU (model parallelism)
            val = node.meta.get("val")
            if i < len(j.params):
                name = j.params[i]
                # Laid out for what uses it (an embedding table in column blocks...), as for inference.
                shape = tuple(int(d) for d in val.shape)
                var = _weight_variable(self.ctx, node, self.ctx.dtype(val.dtype), shape,
                                       self.offload.variable_name(name, shape), training=True,
                                       read_back=LINEAR_WEIGHTS_READ_BACK_AS_RHS)
                if len(shape) == 2 and var.dtype.is_float and \
                        linear_rows(node, LINEAR_WEIGHTS_READ_BACK_AS_RHS) is not None:
                    self.matmul_weights.add(name)
                params[name] = self.env[node] = var
            elif i < len(j.params) + len(j.buffers):
                name = j.buffers[i - len(j.params)]
                buffers[name] = self.env[node] = self._var(f"buffers/{name}", val.dtype, val.shape)
            else:
                self.env[node] = self._user_input(node, val)
        self.place(None)
        self.offload.setup(self, params)
        return params, buffers

    def _accumulate(self, grads: dict[str, Tensor], body: P.Sequence,
                    update: P.Sequence) -> tuple[dict[str, Tensor], P.Program]:
        """Accumulators (``accum/<param>``, the optimizer's ``accum_type``) zeroed before the GA loop
        and fed by each micro-batch. With the mean reduction, ``post`` adds each gradient and
        divides by GA once before the update; ``running`` keeps the accumulator the mean so far,
        ``a = (f / (f + 1)) a + g / (f + 1)`` after ``f`` micro-batches (PopART's
        ``MeanReductionStrategy``: never larger than the largest gradient, so no fp16 overflow)."""
        ga = self.options.gradient_accumulation
        dtype = self.spec.accum_type
        plan = self.locations  # accumulators in Streaming Memory: loaded and stored around each use
        home = {n: "streaming/accum" if n in plan.accum_off_chip else "accum" for n in grads}
        accums = {n: self._var(f"{home[n]}/{n}", dtype, accumulator_shape(plan, n, g.shape), g)
                  for n, g in grads.items()}
        add_accumulator_buffers(self.graph, plan, accums)
        zeroing = P.Sequence(name="zero_accumulators")
        strategy = self.mean_strategy()
        grads = shard_accumulated(self.graph, plan, grads, body, self.options)  # sharded: reduce-scattered
        if strategy == "running":
            count = self.graph.add_variable(float32, (), name="accum/micro_batches")
            self.graph.set_tile_mapping(count, 0)
            zero(self.graph, count, zeroing, name="accum/micro_batches/zero")
            ew.add_(self.graph, count, 1.0, body, name="accum/micro_batches")
            e = ew.E
            f = e.input(2)  # micro-batches seen, this one included
            running = e.add(e.mul(e.input(0), e.div(e.sub(f, 1.0), f)), e.div(e.input(1), f))
            for n, g in grads.items():
                load_accumulator(plan, n, body)
                ew.map_(self.graph, running, [accums[n], g, count], body, name=f"accum/{n}/running_mean")
                store_accumulator(plan, n, body)
        else:
            for n, g in grads.items():
                load_accumulator(plan, n, body)
                ew.add_(self.graph, accums[n], self.ctx.cast(g, accums[n].dtype), body, name=f"accum/{n}")
                store_accumulator(plan, n, body)
        for n, a in accums.items():
            zero(self.graph, a, zeroing, name=f"accum/{n}/zero")
            store_accumulator(plan, n, zeroing)
            load_accumulator(plan, n, update)
        if strategy == "post":
            for n, a in accums.items():
                ew.mul_(self.graph, a, 1.0 / ga, update, name=f"upd/accum/{n}/mean")
        return accums, P.Sequence([zeroing, P.Repeat(ga, body), update], name="iteration")

    def mean_strategy(self) -> str:
        """``"sum"``, or the mean's strategy: the option, else PopTorch's rule (running for float16
        accumulators, except SGD's combined variant; post otherwise)."""
        o = self.options
        if o.accumulation_reduction == "sum":
            return "sum"
        if o.mean_reduction_strategy is not None:
            return o.mean_reduction_strategy
        combined = dict(self.spec.options).get("use_combined_accum", False)
        return "running" if self.spec.accum_type == torch.float16 and not combined else "post"

    def _outputs(self, user: list[Any]) -> tuple[list[Any], list[P.Program]]:
        slots: list[Any] = []
        copies: list[P.Program] = []
        for k, arg in enumerate(user):
            value = self.env[arg] if isinstance(arg, torch.fx.Node) else arg
            if not isinstance(value, Tensor):
                slots.append(value)
                continue
            slots.append(stream_out(self.graph, k, arg.name, value, arg.meta["val"].dtype, copies))
        return slots, copies

    # -- the optimizer update ----------------------------------------------------------------------
    def _update(self, params: dict[str, Tensor], grads: dict[str, Tensor],
                prog: P.Sequence) -> tuple[dict, dict, Tensor]:
        spec = self.spec
        plan = self.locations
        home = {k: "streaming/optimizer" if k in plan.off_chip else "optimizer" for k in plan.shapes}
        # A linear weight's state laid out as the weight (its matmul's RHS layout): the update's
        # elementwise work then reads the state where it writes the weight (see clone_layout).
        state = {(s.param_name, s.name): self._var(
            f"{home[(s.param_name, s.name)]}/{s.param_name}/{s.name}", s.torch_dtype,
            state_shape(plan, (s.param_name, s.name), s.shape), params.get(s.param_name),
            clone=self._one_placement and s.param_name in self.matmul_weights)
            for s in spec.state}
        add_buffers(self.graph, plan, state)
        hyper = self.hyper
        step = self.graph.add_variable(float32, (), name="optimizer/step")
        self.graph.set_tile_mapping(step, 0)
        ew.add_(self.graph, step, 1.0, prog, name="upd/step")
        self.ctx.phase = "upd/"
        outer, self.ctx.prog = self.ctx.prog, prog
        # one program, one placement: each bias correction computed once for every parameter
        self._scalars = {} if SHARE_UPDATE_SCALARS and self._one_placement else None
        try:
            for pnames in self._update_chunks(grads):
                skeys = [k for k in state if k[0] in pnames]
                # an off-chip weight: loaded into a variable of its own for the update (offload.py)
                full = {n: self._streamed(n, prog, params[n]) for n in pnames}
                pin, gin = dict(full), {n: grads[n] for n in pnames}
                for n in (n for n in pnames if n in plan.sharded):  # this replica's fragments
                    pin[n], gin[n] = shard_update_inputs(self.graph, n, full[n], grads[n], prog, self.options,
                                                         fragment=self.offload.holds_fragment(n),
                                                         reduced=n in plan.accum_sharded)
                load_state(plan, skeys, state, prog)
                stored = self._in_storage_order(pnames, skeys, pin, gin, state, prog)
                if stored is not None:  # a linear weight's pointwise update, on its blocks in order
                    pin, gin, st, gm = stored
                else:
                    st = state
                    gm = self._traced_update(pnames, skeys, gin, state)
                    # sums over fragments (LAMB's norms, a clip's, loss-scaling counts) all-reduced
                    gm = sum_partials_across_replicas(gm, plan, pnames, skeys, state)
                inputs = ([pin[n] for n in pnames] + [gin[n] for n in pnames] + [st[k] for k in skeys]
                          + list(hyper.values()) + [step])
                targets = [pin[n] for n in pnames] + [st[k] for k in skeys]
                if self.options.auto_loss_scaling:
                    targets.append(hyper["loss_scaling"])
                results = self._lower_fx(gm, inputs, targets)
                self._write_back(results, targets, prog)
                store_state(plan, skeys, state, prog)
                for n in (n for n in pnames if n in plan.sharded and not self.offload.holds_fragment(n)):
                    gather_weight(self.graph, plan, n, pin[n], full[n], prog)
                for n in pnames:
                    self.offload.store_after_update(n, full[n], prog)
        finally:
            self.ctx.prog, self.ctx.phase, self._scalars = outer, "", None
        return state, hyper, step

    def _in_storage_order(self, pnames: list[str], skeys: list[tuple[str, str]], pin: dict[str, Tensor],
                          gin: dict[str, Tensor], state: dict[tuple[str, str], Tensor],
                          prog: P.Sequence) -> tuple[dict, dict, dict, Any] | None:
        """A linear weight's pointwise update (SGD, Adam, AdamW, RMSprop) run over the weight's
        variable in memory order: its optimizer state is laid out as the weight (clone_layout),
        and the gradient is first copied into that layout too (one rearranging copy, PopART's
        exchange of the gradient into the weight's layout before its ``VarUpdate``), so every
        operand of the update is one contiguous run per tile, as a linearly mapped weight's are.
        The same arithmetic on each element: the same bits. None where that does not apply."""
        if len(pnames) != 1 or pnames[0] not in self.matmul_weights or not self._one_placement:
            return None
        name = pnames[0]
        w, g = pin[name], gin[name]
        if any(name in where for where in (self.locations.sharded, self.offload.weights)) \
                or w.shape != g.shape or any(state[k].shape != w.shape for k in skeys):
            return None
        var = self.graph.variable_of(w)
        if var is None or var.numel != w.numel:
            return None
        flat = {name: storage_view(self.graph, w)}
        if not all(same_view(self.graph, w, state[k]) for k in skeys):  # state not laid out as w
            return None
        st = {k: storage_view(self.graph, state[k]) for k in skeys}
        g_w = clone_layout(self.graph, w, g.dtype, f"upd/{name}/gradient")
        if g_w is None:
            return None
        grad = {name: storage_view(self.graph, g_w)}
        gm = self._shared_trace(name, self._signature(name, grad), skeys, grad, st)
        if gm is None:  # not pointwise (LAMB's norms...): on the logical views
            return None
        prog.add(P.Copy(g, g_w))
        return flat, grad, st, gm

    def _streamed(self, name: str, prog: P.Sequence, on_chip: Tensor) -> Tensor:
        streamed = self.offload.load_for_update(self, name, prog)
        return on_chip if streamed is None else streamed

    def _update_chunks(self, grads: dict[str, Tensor]) -> list[list[str]]:
        """The parameters traced together: all at once when the update couples them (a global
        norm clip, automatic loss scaling) or when few share a signature (one trace is cheaper than
        several, each with make_fx's fixed cost), else one by one, each signature traced once."""
        coupled = self.options.auto_loss_scaling or math.isfinite(self.spec.max_grad_norm)
        signatures = {self._signature(n, grads) for n in grads}
        placed = bool(self.locations.sharded or self.locations.off_chip or self.offload.weights)  # per weight
        if coupled or (2 * len(signatures) > len(grads) and not placed):
            return [list(grads)]
        return [[n] for n in grads]

    def _signature(self, name: str, grads: dict[str, Tensor]) -> tuple[Any, ...]:
        """What a parameter's traced update depends on: shapes, dtypes, group and state slots."""
        spec, p = self.spec, self.named[name]
        group = next((g.index for g in spec.groups if name in g.params), None)
        slots = tuple((sl.name, sl.torch_dtype, state_shape(self.locations, (name, sl.name), sl.shape))
                      for sl in spec.state if sl.param_name == name)
        return (p.dtype, tuple(grads[name].shape), grads[name].dtype, group, slots)  # a fragment's, sharded

    def _traced_update(self, pnames: list[str], skeys: list[tuple[str, str]], grads: dict[str, Tensor],
                       state: dict[tuple[str, str], Tensor]) -> torch.fx.GraphModule:
        """The optimizer's update of ``pnames`` traced with ``make_fx`` (fake tensors) to Core ATen;
        a single parameter's trace is reused for every parameter of the same shapes, dtypes, group
        and state slots, and a pointwise one for every shape of the same rank (:mod:`.traces`)."""
        key = None
        if len(pnames) == 1:
            key = self._signature(pnames[0], grads)
            found = self._update_traces.get(key)
            found = found if found is not None else self._shared_trace(pnames[0], key, skeys, grads, state)
            if found is not None:
                self._update_traces[key] = found
                return found
        gm = self._trace_update(pnames, skeys, {n: tuple(grads[n].shape) for n in pnames},
                                {n: _torch_dtype(grads[n]) for n in pnames},
                                {k: state[k].shape for k in skeys})
        if key is not None:
            self._update_traces[key] = gm
        return gm

    def _shared_trace(self, name: str, key: tuple[Any, ...], skeys: list[tuple[str, str]],
                      grads: dict[str, Tensor], state: dict[tuple[str, str], Tensor]) -> Any:
        """A pointwise update traced once per rank (:mod:`.traces`) as ``name``'s, or None."""
        shape = tuple(grads[name].shape)
        canonical = canonical_shape(len(shape))
        if canonical is None or self.spec.kind is Kind.LAMB or any(state[k].shape != shape for k in skeys):
            return None
        shared = (key[0], len(shape), *key[2:4], tuple(slot[:2] for slot in key[4]))
        gm = self._update_traces.get(shared)
        if gm is None:
            gm = self._trace_update([name], skeys, {name: canonical}, {name: _torch_dtype(grads[name])},
                                    {k: canonical for k in skeys})
            gm = gm if is_pointwise(gm, canonical) else False
            self._update_traces[shared] = gm
        return with_shape(gm, canonical, shape) if gm is not False else None

    def _trace_update(self, pnames: list[str], skeys: list[tuple[str, str]], shapes: dict[str, Any],
                      grad_dtypes: dict[str, torch.dtype], state_shapes: dict[Any, Any]) -> Any:
        spec, named = self.spec, self.named
        slot_of = {(sl.param_name, sl.name): sl for sl in spec.state}
        hyper_slots = list(spec.hyper)
        auto = self.options.auto_loss_scaling
        clip = any(named[n].dtype == torch.float16 for n in pnames)

        def flat_update(*flat: torch.Tensor) -> list[torch.Tensor]:
            it = iter(flat)
            p = {n: next(it) for n in pnames}
            g = {n: next(it) for n in pnames}
            s = {k: next(it) for k in skeys}
            h = {hs.name: next(it) for hs in hyper_slots}
            step_ = next(it)
            new_p, new_s = spec.update(p, g, s, h, step_)
            out = [new_p[n] for n in pnames if n in new_p] + [new_s[k] for k in skeys if k in new_s]
            if auto:  # PopART's automatic loss scaling, from this step's gradients (0-based step)
                # the whole gradients' elements counted (each may be a fragment: locations.py)
                out.append(scale_from_counts(h["loss_scaling"], upper_bin_count([g[n] for n in pnames]),
                                             sum(named[n].numel() for n in pnames), step_ - 1,
                                             LossScalingSettings(clip_output=clip)))
            return out

        examples = ([_zeros(named[n].dtype, shapes[n]) for n in pnames]  # the weight's or fragment's
                    + [_zeros(grad_dtypes[n], shapes[n]) for n in pnames]
                    + [_zeros(slot_of[k].torch_dtype, state_shapes[k]) for k in skeys]
                    + [_zeros(hs.torch_dtype, ()) for hs in hyper_slots]
                    + [torch.zeros((), dtype=torch.float32)])
        if self._decompositions is None:
            self._decompositions = torch.export.default_decompositions().materialize()
        with torch.no_grad():
            gm = make_fx(flat_update, decomposition_table=self._decompositions,
                         tracing_mode="fake")(*examples)
        check_supported(gm.graph)
        return gm

    def _write_back(self, results: list[Any], targets: list[Tensor], prog: P.Sequence) -> None:
        if len(results) != len(targets):
            raise LoweringError(f"the optimizer update returned {len(results)} tensors for {len(targets)} "
                                "weights and state tensors: it must return every parameter and state slot")
        for new, var in zip(results, targets, strict=True):
            if isinstance(new, Tensor) and new is not var:
                prog.add(P.Copy(self.ctx.cast(new, var.dtype), var))
            elif not isinstance(new, Tensor):
                ew.mul_(self.graph, var, 0.0, prog, name="upd/const")
                ew.add_(self.graph, var, float(new), prog, name="upd/const")

    def _lower_fx(self, gm: torch.fx.GraphModule, inputs: Sequence[Any],
                  targets: Sequence[Tensor] | None = None) -> list[Any]:
        """Lower ``gm`` on ``inputs``; with ``targets`` (the variables its outputs go to), an output
        is copied into its variable as soon as nothing later reads the variable's old value, so
        the new values do not all stay live until the end (PopART updates in place)."""
        env: dict[torch.fx.Node, Any] = {}
        it = iter(inputs)
        order = {n: i for i, n in enumerate(gm.graph.nodes)}
        outputs = list(next(n for n in reversed(gm.graph.nodes) if n.op == "output").args[0])
        for node in gm.graph.nodes:
            if node.op == "placeholder":
                env[node] = next(it)
            elif node.op == "get_attr":
                value = getattr(gm, str(node.target))
                self.ctx.node = node
                env[node] = self.ctx.constant(value.detach().cpu().numpy(), self.ctx.dtype(value.dtype))
                self.ctx.node = None
            elif node.op == "call_function":
                if node.target is torch.ops.aten.lift_fresh_copy.default:
                    env[node] = env[node.args[0]]
                    continue
                into = self._free_target(node, env, outputs, targets, order) \
                    if targets is not None and node in outputs else None
                env[node] = self._fused_or_lowered(node, env, into)
                if into is not None and env[node] is into:
                    outputs[outputs.index(node)] = _WRITTEN  # computed in place
                elif targets is not None and node in outputs:
                    self._write_early(node, env, outputs, targets, order)
            elif node.op == "output":
                return [targets[i] if a is _WRITTEN and targets is not None else
                        materialize(env[a], self.ctx, a, self._scalars) if isinstance(a, torch.fx.Node) else a
                        for i, a in enumerate(outputs)]
        return []

    def _free_target(self, node: torch.fx.Node, env: dict[torch.fx.Node, Any], outputs: list[Any],
                     targets: Sequence[Tensor], order: dict[torch.fx.Node, int]) -> Tensor | None:
        """The variable ``node``'s value (an output of the update, for one variable) may be computed
        into in place: no node after it reads the variable's old value (:meth:`_write_early`)."""
        slots = [i for i, a in enumerate(outputs) if a is node]
        if len(slots) != 1:
            return None
        var = targets[slots[0]]
        home = self.graph.variable_of(var)
        if home is None:
            return None
        for n, v in env.items():
            later = any(order[u] > order[node] for u in n.users)
            if not later:
                continue
            if isinstance(v, Tensor) and self.graph.variable_of(v) is home:
                return None
            if isinstance(v, Pending) and any(self.graph.variable_of(t) is home for t in v.leaves()):
                return None
        return var

    def _write_early(self, node: torch.fx.Node, env: dict[torch.fx.Node, Any], outputs: list[Any],
                     targets: Sequence[Tensor], order: dict[torch.fx.Node, int]) -> None:
        """Copy ``node``'s value into its target variables now when no node after it, and no
        expression still pending, reads their old values (through the variable or a view of it);
        later readers of ``node`` then read the variable."""
        value = env[node]
        if not isinstance(value, Tensor):
            return
        for i in (i for i, a in enumerate(outputs) if a is node):
            var = targets[i]
            home = self.graph.variable_of(var)
            if value is var or home is None:
                continue
            views = [n for n, v in env.items() if isinstance(v, Tensor) and v.dtype is var.dtype
                     and self.graph.variable_of(v) is home]
            late = any(order[u] > order[node] for n in views for u in n.users)
            pending = any(isinstance(v, Pending) and any(order[u] > order[node] for u in n.users)
                          and any(self.graph.variable_of(t) is home for t in v.leaves())
                          for n, v in env.items())
            if late or pending:
                continue
            self.ctx.prog.add(P.Copy(self.ctx.cast(value, var.dtype), var))
            if value.dtype is var.dtype:
                env[node] = var  # the same values: readers after this read the variable
            outputs[i] = _WRITTEN

    def _fused_or_lowered(self, node: torch.fx.Node, env: dict[torch.fx.Node, Any],
                          into: Tensor | None = None) -> Any:
        """An elementwise op joins its operands' pending expression (:mod:`.fuse`) while its value
        has one user that is not the output; else the expression so far is lowered as one map
        (in place into ``into``, a variable it reads that nothing later reads, when given)."""
        scalars = self._scalars
        pending = fuse_node(node, env, self.ctx, scalars) if fusible(node, self.ctx.dtype) else None
        if pending is not None:
            users = list(node.users)
            if len(users) == 1 and users[0].op != "output" or _cast_for_all(pending, users):
                return pending
            done = materialize_into(pending, self.ctx, node, into) if into is not None else None
            return done if done is not None else materialize(pending, self.ctx, node, scalars)
        for a in node.all_input_nodes:
            env[a] = materialize(env[a], self.ctx, a, scalars)
        return self.lower_node(node, env)


_WRITTEN = object()  # an output already copied into its variable
FUSE_JOINT_CASTS = True  # False: every joint-graph cast a compute set of its own (tests compare both)
FUSE_BACKWARD_CHAINS = True  # False: only casts join their neighbours (tests compare both)
SHARE_UPDATE_SCALARS = True  # False: each parameter's update computes its own bias corrections
# A linear weight that the backward reads again (the input gradient's matmul: every linear layer but
# one fed by data) laid out as its forward matmul's RHS (createMatMulInputRHS), its state as the
# weight and its gradient copied into that layout before the update (_in_storage_order). Off: the
# forward's rearrangement of the weight only moves to the gradient, and the slab layout costs more
# exchange regions in the backward matmul and the update (1-layer BERT-base-width step, fp32:
# cycles +2.3 %, compile CPU x2, exchange code on the fullest tile 395 -> 1,044 KB). poplin plans a
# fully connected layer's three passes together (fullyConnectedPass); softipu plans each alone.
LINEAR_WEIGHTS_READ_BACK_AS_RHS = False
FOLD_REDUCE_CASTS = True  # False: a float32 sum then its float16 cast, two compute sets (tests compare)
_aten = torch.ops.aten


def _sum_then_narrowing_cast(node: torch.fx.Node, dtype_of: Any) -> Any:
    """The float16 dtype when ``node`` is a float32 ``sum`` over float32 values (no dtype
    argument) whose only user casts it to float16, else None (:meth:`_TrainLowerer._sum_as`)."""
    if node.target not in (_aten.sum.dim_IntList, _aten.sum.default) or "dtype" in node.kwargs:
        return None
    users = list(node.users)
    if len(users) != 1 or not is_cast(users[0]) or not isinstance(node.args[0], torch.fx.Node):
        return None
    val, src, out = (n.meta.get("val") for n in (node, node.args[0], users[0]))
    if not all(isinstance(v, torch.Tensor) for v in (val, src, out)) or val.ndim == 0:
        return None
    if not (src.dtype == val.dtype == torch.float32 and out.dtype == torch.float16):
        return None
    return dtype_of(out.dtype) if dtype_of(val.dtype) is float32 else None


def _cast_for_all(pending: Pending, users: list[torch.fx.Node]) -> bool:
    """Whether ``pending`` converts a tensor read by several elementwise ops (an fp16 gradient's
    ``g.float()``, read by both of Adam's moments): each user's map converts it again (exact, and
    it reads the narrower operand), as PopART's optimizer expressions cast their inputs, instead
    of a compute set writing an fp32 copy laid out as the gradient."""
    return pending.op == "cast" and isinstance(pending.args[0], Tensor) and bool(users) and all(
        u.op == "call_function" and fusible(u, None) for u in users)


def _joins_users(node: torch.fx.Node, forward: set[torch.fx.Node], chains: bool) -> bool:
    """Whether ``node``'s value is left pending for its users to fuse: an elementwise op feeding a
    cast, or a cast whose every user is an elementwise op (each user's expression converts again:
    the same values, and it reads the narrower operand), all in ``node``'s phase (forward,
    backward, recomputed), so nothing the backward keeps or a phase's compute sets own moves.
    With ``chains``, in the backward (not recomputed) any elementwise op with one elementwise user
    joins it (``FUSE_BACKWARD_CHAINS``; not under floating-point exceptions): Core ATen spells
    PopART's one-op gradients (``GeluGradOp``, ``LayerNormGradOp``, ``SoftmaxGradOp``: one
    popnn/popops call each) as chains of ten or more elementwise ops, each a compute set and a
    pass over the data of its own otherwise."""
    users = list(node.users)
    if not users or (len(users) > 1 and not is_cast(node)):
        return False
    chains = chains and node not in forward and not node.meta.get("softipu_recomputed")
    for user in users:
        if user.op != "call_function" or not fusible(user, None):
            return False
        if not (chains or is_cast(node) or is_cast(user)):
            return False
        if (node in forward) != (user in forward):
            return False
        if bool(node.meta.get("softipu_recomputed")) != bool(user.meta.get("softipu_recomputed")):
            return False
    return True


def variable_ids(graph: Any, values: Any) -> set[int]:
    """The ids of the variables holding any element of the tensors in ``values`` (a tensor, or
    tuples and lists of them; anything else is skipped)."""
    out: set[int] = set()
    for t in values if isinstance(values, (tuple, list)) else (values,):
        if isinstance(t, (tuple, list)):
            out |= variable_ids(graph, t)
        elif isinstance(t, Tensor) and t.numel:
            space = graph.spaces[t.dtype]
            starts, lengths = t.runs()
            found = np.searchsorted(np.asarray(space.starts, np.int64),
                                    np.concatenate([starts, starts + lengths - 1]), side="right") - 1
            out |= {space.variables[i].id for i in np.unique(found).tolist() if i >= 0}
    return out


def _torch_dtype(t: Tensor) -> torch.dtype:
    return torch.float16 if t.dtype is float16 else torch.float32


def _nbytes(val: Any, precision: str) -> int:
    if isinstance(val, torch.Tensor):
        size = 2 if (val.dtype.is_floating_point and precision == "fp16") else min(val.element_size(), 4)
        return int(val.numel()) * size
    if isinstance(val, (tuple, list)):
        return sum(_nbytes(v, precision) for v in val)
    return 0


def lower_training(joint: Joint, spec: Any, options: Options, input_names: Sequence[str],
                   named: dict[str, torch.Tensor]) -> TrainLowered:
    """Lower a joint graph and an optimizer spec onto a new graph (see the module docstring)."""
    check_supported(joint.gm.graph)
    from softipu.frontends.torch.training.pipeline import lower_placed, placement_of  # noqa: PLC0415

    placement = placement_of(joint, options)  # PopTorch blocks: each node on its block's IPU
    if placement is not None:
        return lower_placed(joint, spec, options, input_names, named, placement)
    lowerer = _TrainLowerer(joint, spec, options, input_names, named)
    low = lowerer.build()
    low.locations = lowerer.locations  # where the optimizer state lives (training/locations.py)
    low.offload = lowerer.offload  # weights and activations in Streaming Memory (training/offload.py)
    return low

