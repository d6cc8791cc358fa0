"""Lowering an exported program onto a softipu graph.

The exported program's placeholders become device variables: parameters, buffers and constants
are written once when the model loads (program 0 streams them in), user inputs arrive through
host-to-device streams and outputs leave through device-to-host streams (program 1, the step, in
a ``Repeat`` of ``device_iterations``). Every other node is lowered by its registered
:class:`~softipu.frontends.torch.registry.Lowering`, in graph order, appending to the step.

While a node is lowered, softipu sees the user's source line of that node as its caller, so
every variable, compute set and op error made for the node names the user's line (design.md §2.7).
"""

from __future__ import annotations

import operator
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.export.graph_signature import InputKind, OutputKind

from softipu.debug import SourceLocation, user_location
from softipu.dtypes import DType, float16, float32, narrow, uint32, value_range
from softipu.frontends.errors import FrontendError, LoweringError
from softipu.frontends.placement import compute_graph, io_graph, map_tensor  # shared with ONNX
from softipu.frontends.torch.export import IPU_DTYPES, UserLine, dtype_problem, user_line
from softipu.frontends.torch.lowerings.pointwise import ordered
from softipu.frontends.torch.options import Options, OutputMode
from softipu.frontends.torch.passes import conv_weight_use, inference_passes
from softipu.frontends.torch.registry import find_lowering
from softipu.graph import program as P
from softipu.graph.graph import Graph
from softipu.graph.tensor import Tensor
from softipu.ops import elementwise as ew
from softipu.ops.conv import create_conv_weights
from softipu.ops.indexing import create_slicable_table
from softipu.ops.matmul import create_matmul_input_rhs

__all__ = ["HostWeight", "LoweringContext", "Lowered", "StreamSlot", "device_dtype", "host_values",
           "lower_program", "stream_out", "to_host_array"]

def device_dtype(torch_dtype: torch.dtype, precision: str = "fp32") -> DType:
    """The IPU dtype that holds a torch dtype: int64 -> int32 and float64 -> float32 (as in
    PopTorch); with precision "fp16" every float is float16.

    NOTE: :func:`~softipu.frontends.torch.export.check_supported` lists the graph's unheld dtypes
    before lowering starts; this error is for dtypes a lowering asks about itself.
    """
    found = IPU_DTYPES.get(torch_dtype)
    if found is None:
        raise LoweringError(f"{torch_dtype} has no IPU dtype: {dtype_problem(torch_dtype)}")
    if precision == "fp16" and found.is_float:
        return float16
    return found


def to_host_array(value: torch.Tensor, dtype: DType, what: str = "a tensor",
                  error: type[FrontendError] = LoweringError) -> np.ndarray:
    """A C-contiguous numpy copy of ``value`` in the device dtype.

    A value the device dtype cannot hold (an int64 beyond int32, a float64 beyond float32's range)
    raises ``error`` naming ``what`` and the value: ``astype`` would wrap it silently. Float
    rounding is fine, as in PopTorch. NOTE: float16 (the "fp16" precision the user chose) is cast
    as ``.half()`` casts, large values becoming inf.
    """
    if dtype is float16 and value.dtype == torch.float32:
        # torch's float -> half rounds as numpy's astype (nearest even, overflow to inf), ~4x faster
        return value.detach().cpu().to(torch.float16).contiguous().numpy()
    host = value.detach().cpu().numpy()
    if dtype is float16:
        with np.errstate(over="ignore"):
            return np.ascontiguousarray(host.astype(dtype.numpy, copy=False))
    cast, bad = narrow(host, dtype)
    if bad is not None:
        raise error(f"{what} holds {host[bad].item()!r} at index {bad}, beyond {dtype} "
                    f"({value_range(dtype)}), the dtype the IPU holds {value.dtype} in: keep its "
                    "values within that range (a plain cast would wrap or overflow them)")
    return np.ascontiguousarray(cast)


@dataclass(frozen=True, slots=True)
class HostWeight:
    """A weight as lowered: its torch value, converted to the device dtype only when the weights
    are written to an engine (:meth:`array`), so an estimate-only compile never holds the model's
    data twice. The range check of :func:`to_host_array` (its error naming ``what``) runs then."""

    value: torch.Tensor
    dtype: DType
    what: str

    @property
    def size(self) -> int:
        return int(self.value.numel())

    def array(self) -> np.ndarray:
        """The flat host values in the device dtype (a new conversion on every call)."""
        return to_host_array(self.value, self.dtype, self.what).reshape(-1)


def host_values(values: np.ndarray | HostWeight) -> np.ndarray:
    """The host array of one of :attr:`Lowered.weights`' values, converting a :class:`HostWeight`."""
    return values.array() if isinstance(values, HostWeight) else values


@dataclass(frozen=True, slots=True)
class StreamSlot:
    """One streamed tensor: a user input or an output, per micro-batch."""

    name: str
    stream: str
    shape: tuple[int, ...]
    torch_dtype: torch.dtype
    dtype: DType


@dataclass(frozen=True, slots=True)
class Lowered:
    """A lowered model: its graph, its two programs (0 loads weights, 1 runs a step), its streams."""

    graph: Graph
    programs: tuple[P.Program, P.Program]
    inputs: tuple[StreamSlot | None, ...]  # one per flat user input; None where not a tensor
    outputs: tuple[Any, ...]  # one per flat output: a StreamSlot, or the constant it always is
    weights: tuple[tuple[str, np.ndarray | HostWeight], ...]  # (stream, host values) in load order
    nodes: int  # call_function nodes lowered
    rewrites: tuple[str, ...] = ()  # what the frontend graph passes rewrote (frontends/torch/passes.py)
    # In-place changes of user inputs and buffers: ("input", flat input index, slot) or ("buffer",
    # buffer name, slot); streamed out every iteration (a buffer is also updated on the device).
    mutations: tuple[tuple[str, str, StreamSlot], ...] = ()
    # Each graph node's result on the device by node name (PopTorch's anchorTensor reads these after
    # a run); empty for a model loaded from an executable cache or export.
    views: dict[str, Tensor] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # model parallelism's plan (pipeline.py)


class LoweringContext:
    """What a lowering gets: the graph, the program to append to, the options and helpers."""

    def __init__(self, graph: Graph, prog: P.Sequence, options: Options) -> None:
        self.graph = graph
        self.prog = prog
        self.options = options
        self.node: torch.fx.Node | None = None
        self.phase = ""  # a training step's phase ("fwd/", "bwd/", "upd/"): prefixes every op's name
        self.seed_variable: Tensor | None = None
        self._constants: dict[int, tuple[Tensor, np.ndarray]] = {}
        self._modifiers = 0
        # Set by the lowerer: lower a torch.fx.GraphModule's graph into a program (torch.cond).
        self.lower_subgraph: Callable[[Any, Sequence[Any], P.Sequence], list[Any]] | None = None

    # -- the node being lowered -------------------------------------------------------------------
    @property
    def name(self) -> str:
        """A name for the ops of this node (shows in reports): the FX node's name, under its
        ``poptorch.NameScope`` if any."""
        if self.node is None:
            return f"{self.phase}torch"
        scope = (self.node.meta.get("custom") or {}).get("poptorch_scope")
        return f"{self.phase}{scope}/{self.node.name}" if scope else f"{self.phase}{self.node.name}"

    def meta(self, node: Any = None) -> Any:
        """The example value torch.export recorded (a FakeTensor, or a tuple of them)."""
        node = self.node if node is None else node
        return node.meta.get("val") if isinstance(node, torch.fx.Node) else node

    def out_meta(self, index: int | None = None) -> torch.Tensor:
        val = self.meta()
        return val[index] if index is not None else val

    def out_dtype(self, index: int | None = None) -> DType:
        """The device dtype of the node's (``index``-th) result."""
        return self.dtype(self.out_meta(index).dtype)

    def out_shape(self, index: int | None = None) -> tuple[int, ...]:
        return tuple(int(d) for d in self.out_meta(index).shape)

    def dtype(self, torch_dtype: torch.dtype) -> DType:
        return device_dtype(torch_dtype, self.options.precision)

    def arg_meta(self, i: int) -> Any:
        """The example value of the node's ``i``-th positional argument."""
        return self.meta(self.node.args[i])

    # -- making tensors ---------------------------------------------------------------------------
    def variable(self, dtype: DType, shape: Sequence[int], suffix: str = "out") -> Tensor:
        """A new variable mapped linearly in vector-sized grains (as library outputs are)."""
        t = self.graph.add_variable(dtype, tuple(shape), name=f"{self.name}/{suffix}")
        map_tensor(self.graph, t)
        return t

    def constant(self, values: Any, dtype: DType, shape: Sequence[int] | None = None,
                 suffix: str = "const") -> Tensor:
        """A constant tensor (loaded with the executable), mapped linearly."""
        values = np.asarray(values)
        shape = tuple(values.shape if shape is None else shape)
        t = self.graph.add_constant(dtype, shape, values, name=f"{self.name}/{suffix}")
        map_tensor(self.graph, t)
        self._constants[id(t)] = (t, np.broadcast_to(values, shape))
        return t

    def constant_value(self, t: Any) -> np.ndarray | None:
        """The values of ``t`` when it is a constant made by :meth:`constant` (known at compile
        time, e.g. ``torch.arange`` positions), else None."""
        found = self._constants.get(id(t))
        return found[1] if found is not None and found[0] is t else None

    def copy(self, t: Tensor, suffix: str = "copy") -> Tensor:
        """A fresh, contiguous, linearly mapped copy of ``t`` (a ``Copy`` program)."""
        out = self.variable(t.dtype, t.shape, suffix)
        if t.numel:
            self.prog.add(P.Copy(t, out))
        return out

    def cast(self, t: Any, dtype: DType) -> Any:
        """``t`` as ``dtype`` (``t`` itself when it already is; numbers pass through), computed in
        ``t``'s memory order (:func:`.lowerings.pointwise.ordered`): popops' ``cast`` makes its
        result with ``graph.clone(dstType, src)``, laid out like its input. A cast of a transposed
        view (an fp16 model's logits gradient, stored as its matmul's output; an embedding
        table's gradient, stored as the table) then reads and writes each tile's own elements,
        not one exchange piece per element into a row-major result."""
        if not isinstance(t, Tensor) or t.dtype is dtype:
            return t
        return ordered(lambda x: ew.cast(self.graph, x, dtype, self.prog, name=f"{self.name}/cast"), t)

    def matmul_options(self, dtype: DType = float32) -> dict[str, Any]:
        return self.options.matmul_options(half=dtype is float16)

    def seed(self) -> Tensor:
        """The device's random seed: a (2,) uint32 variable written at load (``Options.seed``)
        and advanced after every step, so each run draws new numbers."""
        if self.seed_variable is None:
            self.seed_variable = self.graph.add_variable(uint32, (2,), name="seed")
            self.graph.set_tile_mapping(self.seed_variable, 0)
        return self.seed_variable

    def seed_modifier(self) -> int:
        """A distinct modifier for each random op, so no two draw the same numbers."""
        self._modifiers += 1
        return self._modifiers


def _weight_variable(ctx: LoweringContext, node: torch.fx.Node, dtype: DType, shape: tuple[int, ...],
                     name: str, training: bool = False, read_back: bool = False) -> Tensor:
    """A parameter's variable, laid out for what uses it: an embedding table in whole column
    blocks (every lookup stays on the tiles holding the columns; in training also row blocks, which
    its gradient and optimizer state share: ``create_slicable_table``), a linear layer's weight in the
    blocks its matmul plan wants (poplin's ``createMatMulInputRHS``: the matmul then neither
    copies nor re-lays it out on every call; with ``read_back``, also a training weight that the
    backward reads again, :func:`linear_rows`), anything else linearly."""
    graph = ctx.graph
    embedding = torch.ops.aten.embedding.default
    if len(shape) == 2 and node.users and all(u.target is embedding and u.args[0] is node
                                              and not _static_index(u.args[1]) for u in node.users):
        return create_slicable_table(graph, shape, dtype, name=name, split_rows=training)
    conv = conv_weight_use(node) if dtype.is_float else None
    if conv is not None:  # poplin's createWeights (passes.conv_weight_use)
        return create_conv_weights(graph, dtype, weight_shape=shape, name=name,
                                   options=ctx.matmul_options(dtype), **conv)
    rows = linear_rows(node, read_back) if len(shape) == 2 and dtype.is_float else None
    if rows is not None:
        n, k = shape
        rhs = create_matmul_input_rhs(graph, dtype, (rows, k), (k, n), name=name,
                                      options=ctx.matmul_options(dtype))
        return rhs.T
    var = graph.add_variable(dtype, shape, name=name)
    map_tensor(graph, var)
    return var


def linear_rows(node: torch.fx.Node, read_back: bool = False) -> int | None:
    """The lhs row count M when a 2-D weight's only use is ``mm``/``addmm(bias, x[M, K], W.T)``
    (a linear layer, every use with the same M); else None. With ``read_back``, also when the
    training graph's backward reads ``W.T`` transposed back (the input gradient's matmul)."""
    aten = torch.ops.aten
    users = list(node.users)
    if len(users) != 1 or users[0].target not in (aten.permute.default, aten.t.default):
        return None
    t = users[0]
    if t.target is aten.permute.default and list(t.args[1]) != [1, 0]:
        return None
    rows = set()
    for u in t.users:
        if u.target is aten.mm.default and u.args[1] is t and u.args[0] is not t:
            lhs = u.args[0]
        elif u.target is aten.addmm.default and u.args[2] is t and u.args[1] is not t:
            lhs = u.args[1]
        elif read_back and _transposes_back(u, t):
            continue  # autograd's backward (the input gradient's matmul reads W again)
        else:
            return None
        val = lhs.meta.get("val") if isinstance(lhs, torch.fx.Node) else None
        if val is None or val.ndim != 2:
            return None
        rows.add(int(val.shape[0]))
    return rows.pop() if len(rows) == 1 else None


def _transposes_back(node: torch.fx.Node, t: torch.fx.Node) -> bool:
    """Whether ``node`` is ``t`` transposed back (``permute(t, [1, 0])`` or ``t(t)``): in a
    training graph autograd's backward of ``x @ W.T`` reads ``W`` as ``permute(permute(W))`` for
    the input gradient's matmul, a view of the weight, not another use of its layout."""
    aten = torch.ops.aten
    if node.target is aten.t.default:
        return node.args[0] is t
    return node.target is aten.permute.default and node.args[0] is t and list(node.args[1]) == [1, 0]


def _static_index(node: Any) -> bool:
    """Whether an index argument is known when compiling (an ``arange``): such lookups are views
    of whole rows, so the table is best laid out by rows."""
    return isinstance(node, torch.fx.Node) and node.op == "call_function" and \
        getattr(node.target, "overloadpacket", None) is torch.ops.aten.arange


# -- running one node at the user's line -----------------------------------------------------------
def _at_user_line(line: UserLine | None, fn: Callable[[], Any]) -> Any:
    """``fn()`` with everything it creates attributed to the user's line of this node."""
    if line is None or line.lineno < 1 or line.filename.startswith("<"):
        return fn()
    with user_location(SourceLocation(os.path.abspath(line.filename), line.lineno)):
        return fn()


# -- the lowering ----------------------------------------------------------------------------------
def stream_out(graph: Graph, k: int, name: str, value: Tensor, torch_dtype: torch.dtype,
               copies: list[P.Program]) -> StreamSlot:
    """The ``k``-th output's device-to-host stream: its slot, and the copy onto it (appended to
    ``copies``; none for an empty tensor)."""
    stream = f"outputs/{k}"
    graph.add_device_to_host_fifo(stream, value.dtype, value.numel)
    if value.numel:
        copies.append(P.Copy(value, graph.streams[stream]))
    return StreamSlot(name, stream, value.shape, torch_dtype, value.dtype)


class _Lowerer:
    def __init__(self, ep: Any, options: Options, input_names: Sequence[str]) -> None:
        self.ep = ep
        self.options = options
        self.graph = Graph(options.target, options.replication_factor)
        # with I/O tiles reserved, the model's work on the compute tiles only (placement.compute_graph)
        self.ctx = LoweringContext(compute_graph(self.graph), P.Sequence(name="step"), options)
        self.env: dict[torch.fx.Node, Any] = {}
        self.input_names = list(input_names)
        self.weights: list[tuple[str, np.ndarray | HostWeight]] = []
        self.load = P.Sequence(name="load_weights")
        self.in_copies: list[P.Program] = []
        self.inputs: list[StreamSlot | None] = []
        self.buffers: dict[str, Tensor] = {}  # buffer variables by name (for in-place changes)
        self.input_index: dict[str, int] = {}  # user input placeholders' flat indices
        self.folded: dict[str, tuple[str, torch.Tensor]] = {}  # graph passes' new weights (inference)
        self.rewrites: list[str] = []

    def run(self) -> Lowered:
        placeholders = [n for n in self.ep.graph.nodes if n.op == "placeholder"]
        specs = self.ep.graph_signature.input_specs
        for node, spec in zip(placeholders, specs, strict=True):
            self.place(node)  # a weight on its layer's IPU (model parallelism)
            self._placeholder(node, spec)
        self.place(None)
        self.ctx.lower_subgraph = self.lower_subgraph
        count = 0
        for node in self.ep.graph.nodes:
            if node.op == "call_function":
                self.env[node] = self.lower_node(node, self.env)
                count += 1
            elif node.op == "get_attr":  # a torch.cond branch
                self.env[node] = getattr(self.ep.graph_module, str(node.target))
        output = next(n for n in self.ep.graph.nodes if n.op == "output")
        return self._finish(output, count)

    def lower_subgraph(self, module: torch.fx.GraphModule, inputs: Sequence[Any],
                       prog: P.Sequence) -> list[Any]:
        """Lower ``module``'s graph with its placeholders bound to ``inputs``, appending to ``prog``;
        returns its outputs (used for ``torch.cond`` branches)."""
        env: dict[torch.fx.Node, Any] = {}
        outer, self.ctx.prog = self.ctx.prog, prog
        try:
            placeholders = iter(inputs)
            for node in module.graph.nodes:
                if node.op == "placeholder":
                    env[node] = next(placeholders)
                elif node.op == "get_attr":
                    env[node] = getattr(module, str(node.target))
                elif node.op == "call_function":
                    env[node] = self.lower_node(node, env)
                elif node.op == "output":
                    return list(torch.fx.node.map_arg(node.args[0], env.__getitem__))
        finally:
            self.ctx.prog = outer
        raise LoweringError(f"subgraph {type(module).__name__} has no output")

    def _placeholder(self, node: torch.fx.Node, spec: Any) -> None:
        val = node.meta.get("val")
        if spec.kind == InputKind.USER_INPUT:
            self.env[node] = self._user_input(node, val)
            return
        if spec.kind not in (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR):
            # A torch.Generator made in forward and never used on tensors; an effect token
            # (with_effects orders effectful checks, which have nothing to order on the device).
            if not node.users or spec.kind == InputKind.TOKEN:
                self.env[node] = None
                return
            raise LoweringError(f"placeholder {node.name} is a {spec.kind.name} input, which softipu "
                                "does not lower (custom objects and tokens)")
        stream, value = self.folded.get(spec.target, (f"weights/{spec.target}", None))
        if value is None:
            value = self.ep.state_dict.get(spec.target)
        if value is None:
            value = self.ep.constants[spec.target]
        dtype = self.ctx.dtype(value.dtype)
        var = _weight_variable(self.ctx, node, dtype, tuple(value.shape), spec.target)
        self.graph.add_host_to_device_fifo(stream, dtype, var.numel)
        if var.numel:
            self.load.add(P.Copy(self.graph.streams[stream], var))
        kind = "buffer" if spec.kind == InputKind.BUFFER else spec.kind.name.lower().replace("_", " ")
        # Converted when loaded (host_values): an estimate-only compile never needs the data.
        self.weights.append((stream, HostWeight(value, dtype, f"{kind} {spec.target!r}")))
        if spec.kind == InputKind.BUFFER:
            self.buffers[spec.target] = var
        self.env[node] = var

    def _user_input(self, node: torch.fx.Node, val: Any) -> Any:
        index = len(self.inputs)
        self.input_index[node.name] = index
        name = self.input_names[index] if index < len(self.input_names) else node.name
        if not isinstance(val, torch.Tensor):
            self.inputs.append(None)
            return val
        dtype = self.ctx.dtype(val.dtype)
        shape = tuple(int(d) for d in val.shape)
        var = self.graph.add_variable(dtype, shape, name=f"inputs/{name}")
        map_tensor(io_graph(self.graph), var)  # on the I/O tiles, where any are reserved
        stream = f"inputs/{index}/{name}"
        self.graph.add_host_to_device_fifo(stream, dtype, var.numel)
        if var.numel:
            self.in_copies.append(P.Copy(self.graph.streams[stream], var))
        self.inputs.append(StreamSlot(name, stream, shape, val.dtype, dtype))
        return var

    def place(self, node: torch.fx.Node | None) -> None:
        """Model parallelism's hook (frontends/torch/pipeline.py): what follows is made on ``node``'s
        IPU. One IPU here: nothing to do."""

    def lower_node(self, node: torch.fx.Node, env: dict[torch.fx.Node, Any]) -> Any:
        if node.target is operator.getitem:
            source, index = node.args
            return env[source][index]
        name, lowering = find_lowering(node.target)
        if lowering is None:  # check_supported ran first: a lowering was unregistered since
            raise LoweringError(f"no lowering for {name} (node {node.name})")
        args = torch.fx.node.map_arg(node.args, env.__getitem__)
        kwargs = torch.fx.node.map_arg(node.kwargs, env.__getitem__)
        line = user_line(node)
        outer, self.ctx.node = self.ctx.node, node
        try:
            result = _at_user_line(line, lambda: lowering.fn(self.ctx, node, *args, **kwargs))
            return self._conform(node, name, result)
        except LoweringError:
            raise
        except Exception as exc:
            where = f" from {line}" if line else ""
            raise LoweringError(f"lowering {name} (node {node.name}{where}) failed: "
                                f"{type(exc).__name__}: {exc}") from exc
        finally:
            self.ctx.node = outer

    def _conform(self, node: torch.fx.Node, name: str, result: Any) -> Any:
        """Check the result's shapes against torch's and cast to the expected device dtypes."""
        val = node.meta.get("val")
        if isinstance(result, Tensor) and isinstance(val, torch.Tensor):
            return self._conform_one(node, name, result, val)
        if isinstance(result, (tuple, list)) and isinstance(val, (tuple, list)):
            return tuple(self._conform_one(node, name, r, v) if isinstance(r, Tensor) and
                         isinstance(v, torch.Tensor) else r for r, v in zip(result, val, strict=False))
        return result

    def _conform_one(self, node: torch.fx.Node, name: str, t: Tensor, val: torch.Tensor) -> Tensor:
        shape = tuple(int(d) for d in val.shape)
        if t.shape != shape:
            raise LoweringError(f"the lowering of {name} (node {node.name}) made shape {t.shape}; "
                                f"torch says {shape}: the lowering is wrong")
        return self.ctx.cast(t, self.ctx.dtype(val.dtype))

    def _finish(self, output: torch.fx.Node, count: int) -> Lowered:
        specs = self.ep.graph_signature.output_specs
        outs: list[Any] = []
        copies: list[P.Program] = []
        mutations, mutation_copies = self._mutations(output, specs)
        for k, (arg, spec) in enumerate(zip(output.args[0], specs, strict=True)):
            if spec.kind != OutputKind.USER_OUTPUT:
                continue  # buffer and input mutations: streamed by _mutations
            if not isinstance(arg, torch.fx.Node):
                outs.append(arg)
                continue
            value = self.env[arg]
            val = arg.meta.get("val")
            if not isinstance(value, Tensor):
                outs.append(value)
                continue
            outs.append(stream_out(self.graph, k, arg.name, value, val.dtype, copies))
        self._load_seed()
        step = P.Sequence([*self.in_copies, self.ctx.prog, *mutation_copies], name="step")
        final = self.options.output_mode is OutputMode.FINAL
        if not final:
            for c in copies:
                step.add(c)
        di = self.options.device_iterations
        run: P.Program = P.Repeat(di, step) if di > 1 else step
        if final:
            run = P.Sequence([run, *copies], name="run")
        return Lowered(self.graph, (self.load, run), tuple(self.inputs), tuple(outs),
                       tuple(self.weights), count, tuple(self.rewrites),
                       mutations=tuple(mutations),
                       views={n.name: v for n, v in self.env.items() if isinstance(v, Tensor)})

    def _mutations(self, output: torch.fx.Node, specs: Any) -> tuple[list, list[P.Program]]:
        """In-place changes of inputs and buffers: each new value streamed out every iteration
        (the runtime writes it back to the caller's tensor or the module's buffer); a buffer's
        is also copied into the buffer's variable, so the next iteration and call see it."""
        mutations: list[tuple[str, str, StreamSlot]] = []
        copies: list[P.Program] = []
        kinds = {OutputKind.BUFFER_MUTATION: "buffer", OutputKind.USER_INPUT_MUTATION: "input"}
        for k, (arg, spec) in enumerate(zip(output.args[0], specs, strict=True)):
            kind = kinds.get(spec.kind)
            value = self.env.get(arg) if isinstance(arg, torch.fx.Node) else None
            if kind is None or not isinstance(value, Tensor):
                continue
            if kind == "buffer":
                var = self.buffers[spec.target]
                if value is not var and var.numel:
                    self.ctx.prog.add(P.Copy(self.ctx.cast(value, var.dtype), var))
                target = spec.target
            else:
                target = str(self.input_index[spec.target])
            slot = stream_out(self.graph, k, f"{kind}:{spec.target}", value, arg.meta["val"].dtype, copies)
            mutations.append((kind, target, slot))
        return mutations, copies


    def _load_seed(self) -> None:
        seed = self.ctx.seed_variable
        if seed is None:
            return
        value = (self.options.seed or 0) & ((1 << 64) - 1)
        stream = "weights/__seed__"
        self.graph.add_host_to_device_fifo(stream, uint32, 2)
        self.load.add(P.Copy(self.graph.streams[stream], seed))
        self.weights.append((stream, np.array([value & 0xFFFFFFFF, value >> 32], np.uint32)))
        ew.add_(self.graph, seed[0:1], 1, self.ctx.prog, name="seed/advance")


def lower_program(ep: Any, options: Options, input_names: Sequence[str] = ()) -> Lowered:
    """Lower an exported, decomposed program (checked by ``check_supported``) onto a new graph."""
    from softipu.frontends.torch.pipeline import placed_lowerer  # noqa: PLC0415 - it subclasses _Lowerer

    folded, rewrites = inference_passes(ep)  # PopART's inference patterns (passes.py)
    lowerer = placed_lowerer(ep, options, input_names) or _Lowerer(ep, options, input_names)  # blocks
    lowerer.folded, lowerer.rewrites = folded, rewrites
    return lowerer.run()

