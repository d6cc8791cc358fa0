"""Lowering an ONNX graph onto a softipu graph.

Values are either device tensors (softipu ``Tensor``) or host arrays known when compiling
(initializers a node needs as values, ``Constant`` outputs, ``Shape`` of a static shape, inputs a
lowering declared ``static``). A node whose inputs are all small host arrays is folded on the host
(onnx's reference evaluator), as PopART's constant folding does; every other node is lowered by its
registered :class:`~softipu.frontends.onnx.registry.OnnxLowering`, appending to the step program.

Program 0 streams the weights (initializers used on the device) in; program 1 streams the inputs
in, runs the step and streams the outputs out.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

import softipu.ops as sp_ops
from softipu.dtypes import (
    DType,
    bool_,
    float16,
    float32,
    int8,
    int16,
    int32,
    narrow,
    uint8,
    uint16,
    uint32,
    value_range,
)
from softipu.frontends.errors import InputError, LoweringError, UnsupportedOpsError
from softipu.frontends.onnx.bounds import check_output_size
from softipu.frontends.onnx.load import IPU_NUMBERS, MAX_TENSOR_BYTES, to_numpy
from softipu.frontends.onnx.registry import ONNX_LOWERINGS, OnnxLowering, onnx_op_name
from softipu.frontends.placement import map_tensor
from softipu.graph import program as P
from softipu.graph.graph import Graph
from softipu.graph.tensor import Tensor
from softipu.graph.virtual import VirtualGraph
from softipu.ops import elementwise as ew
from softipu.target import GC200, Target

__all__ = ["DEVICE_DTYPES", "OnnxContext", "OnnxLowered", "OnnxOptions", "Slot", "check_supported",
           "device_dtype", "lower_model"]

T = onnx.TensorProto
# The IPU holds int64 as int32 and double as float (as PopTorch and PopART do).
DEVICE_DTYPES: dict[int, DType] = {
    T.FLOAT: float32, T.FLOAT16: float16, T.DOUBLE: float32, T.INT64: int32, T.INT32: int32,
    T.INT16: int16, T.INT8: int8, T.UINT8: uint8, T.UINT16: uint16, T.UINT32: uint32, T.UINT64: uint32,
    T.BOOL: bool_,
}
FOLD_LIMIT = 1 << 16  # elements: host inputs up to this size fold on the host (constant folding)
NO_FOLD = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                     "Bernoulli", "Multinomial"})


def device_dtype(elem_type: int, what: str = "a tensor", precision: str = "fp32") -> DType:
    """The IPU dtype holding ONNX type ``elem_type``; with precision "fp16" every float is float16."""
    if precision == "fp16" and int(elem_type) in (T.FLOAT, T.DOUBLE, T.FLOAT16):
        return float16
    found = DEVICE_DTYPES.get(int(elem_type))
    if found is None:
        raise LoweringError(f"{what} has ONNX type {onnx_type_name(elem_type)}, which the IPU does not "
                            f"hold: use one of {', '.join(sorted(onnx_type_name(t) for t in DEVICE_DTYPES))}")
    return found


def onnx_type_name(elem_type: int) -> str:
    try:
        return T.DataType.Name(int(elem_type))
    except ValueError:
        return f"type {elem_type}"


@dataclass(frozen=True, slots=True)
class OnnxOptions:
    """How an ONNX model is compiled: the chip, replication and engine options.

    >>> import softipu as sp
    >>> OnnxOptions(target=sp.targets.ipu_model(tiles=4)).replication_factor
    1
    """

    target: Target = GC200
    replication_factor: int = 1
    engine_options: Mapping[str, Any] = field(default_factory=dict)
    fold_constants: bool = True
    precision: str = "fp32"  # "fp16": float inputs, weights and constants held (and computed) as float16

    def __post_init__(self) -> None:
        if not isinstance(self.target, Target):
            raise TypeError(f"OnnxOptions.target must be a softipu Target, got {type(self.target).__name__}")
        if self.precision not in ("fp32", "fp16"):
            raise ValueError(f"OnnxOptions.precision must be 'fp32' or 'fp16', got {self.precision!r}")
        if int(self.replication_factor) < 1:
            raise ValueError(f"OnnxOptions.replication_factor must be >= 1, got {self.replication_factor}")


@dataclass(frozen=True, slots=True)
class Slot:
    """One streamed input or output: its ONNX name, stream, shape, ONNX type and device dtype."""

    name: str
    stream: str
    shape: tuple[int, ...]
    elem_type: int
    dtype: DType

    @property
    def numpy(self) -> np.dtype:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(self.elem_type))


@dataclass(frozen=True, slots=True)
class OnnxLowered:
    """A lowered ONNX model: graph, programs (0 loads weights, 1 runs a step), streams, weights."""

    graph: Graph
    programs: tuple[P.Program, P.Program]
    inputs: tuple[Slot, ...]
    outputs: tuple[Slot | np.ndarray, ...]  # a Slot, or the host constant an output always is
    weights: tuple[tuple[str, np.ndarray], ...]  # (stream, host values in the device dtype)
    weight_names: tuple[str, ...]  # the initializer of each weight stream
    nodes: int
    folded: int


class OnnxContext:
    """What a lowering gets: the graph, the program, the node and its inputs and attributes."""

    ops = sp_ops  # the library, for lowerings written against ``ctx.ops``

    def __init__(self, lowerer: _Lowerer) -> None:
        self._lw = lowerer
        self.graph = lowerer.graph
        self.prog = lowerer.step
        self.node: onnx.NodeProto | None = None
        self.opset = lowerer.opset

    @property
    def name(self) -> str:
        n = self.node
        return (n.name or f"{n.op_type}_{n.output[0]}") if n is not None else "onnx"

    # -- attributes ---------------------------------------------------------------------------
    def attr(self, name: str, default: Any = None) -> Any:
        for a in self.node.attribute:
            if a.name == name:
                value = onnx.helper.get_attribute_value(a)
                if isinstance(value, bytes):
                    return value.decode()
                if isinstance(value, onnx.TensorProto):
                    return to_numpy(value)
                if isinstance(value, list) and value and isinstance(value[0], bytes):
                    return [v.decode() for v in value]
                return value
        return default

    # -- inputs -------------------------------------------------------------------------------
    @property
    def n_inputs(self) -> int:
        return len(self.node.input)

    def has(self, i: int) -> bool:
        return i < len(self.node.input) and bool(self.node.input[i])

    def host(self, i: int) -> np.ndarray | None:
        """Input ``i``'s value when known while compiling, else None."""
        return self._lw.host.get(self.node.input[i]) if self.has(i) else None

    def static(self, i: int, what: str = "") -> np.ndarray:
        """Input ``i``'s value, which must be known while compiling (a shape, axes, pads...)."""
        value = self.host(i)
        if value is None:
            raise LoweringError(f"{self.node.op_type} node {self.name!r}: input {i} "
                                f"({what or self.node.input[i]!r}) must be known when compiling "
                                "(a constant or initializer): the IPU's shapes are static")
        return value

    def input(self, i: int) -> Tensor | None:
        """Input ``i`` on the device (host values become constants); None for an absent input."""
        return self._lw.device(self.node.input[i]) if self.has(i) else None

    def inputs(self) -> list[Tensor | None]:
        return [self.input(i) for i in range(self.n_inputs)]

    def shape(self, i: int) -> tuple[int, ...]:
        value = self._lw.value(self.node.input[i])
        return tuple(int(d) for d in value.shape)

    def elem_type(self, i: int) -> int:
        return self._lw.types.get(self.node.input[i], T.FLOAT)

    def out_elem_type(self, k: int = 0, default: int | None = None) -> int:
        found = self._lw.declared.get(self.node.output[k])
        return found if found is not None else (default if default is not None else self.elem_type(0))

    # -- making tensors -----------------------------------------------------------------------
    def constant(self, values: Any, dtype: DType, suffix: str = "const") -> Tensor:
        return self._lw.make_constant(np.asarray(values), dtype, f"{self.name}/{suffix}")

    def variable(self, dtype: DType, shape: Sequence[int], suffix: str = "out") -> Tensor:
        t = self.graph.add_variable(dtype, tuple(int(d) for d in shape), name=f"{self.name}/{suffix}")
        map_tensor(self.graph, t)
        return t

    def conv_weight(self, i: int, input_shape: tuple[int, ...], **geometry: Any) -> Tensor:
        """Input ``i`` as a convolution's weights (laid out for the convolution when it is an
        initializer only convolutions use); ``geometry``: stride, padding, dilation, groups."""
        return self._lw.conv_weight(self.node.input[i], tuple(input_shape), geometry)

    def device_dtype(self, elem_type: int, what: str = "") -> DType:
        """The IPU dtype of ONNX type ``elem_type`` under the options' precision."""
        return self._lw.dtype(elem_type, what or f"{self.node.op_type} node {self.name!r}")

    def cast(self, t: Any, dtype: DType) -> Any:
        if not isinstance(t, Tensor) or t.dtype is dtype:
            return t
        return ew.cast(self.graph, t, dtype, self.prog, name=f"{self.name}/cast")

    def lower_graph(self, graph: onnx.GraphProto, inputs: Sequence[Any]) -> list[Any]:
        """Lower a subgraph (a Loop/Scan body, an If branch) with its inputs bound to ``inputs``
        (tensors or host arrays); returns its outputs. Its own values are forgotten afterwards, so
        an unrolled body can be lowered again; outer values stay visible (ONNX's scoping)."""
        return self._lw.lower_graph(graph, inputs)

    def copy(self, t: Tensor) -> Tensor:
        """A new variable holding ``t``'s values (a view made a tensor of its own)."""
        out = self.variable(t.dtype, t.shape)
        if t.numel:
            self.prog.add(P.Copy(t, out))
        return out


def check_supported(model: onnx.ModelProto, label: str) -> None:
    """Every op without a lowering and every unheld dtype, listed at once with node names."""
    missing: dict[str, list[str]] = {}
    for k, node in enumerate(model.graph.node):
        name = onnx_op_name(node.domain, node.op_type)
        lowering = ONNX_LOWERINGS.get(name)
        where = node.name or f"#{k} ({node.output[0] if node.output else node.op_type})"
        if lowering is None and not has_function(node, model):
            missing.setdefault(name, []).append(where)
    bad_types = []
    for vi in [*model.graph.input, *model.graph.output]:
        tt = vi.type.tensor_type if vi.type.HasField("tensor_type") else None
        if tt is None:
            bad_types.append(f"{vi.name!r} is not a tensor ({vi.type.WhichOneof('value')})")
        elif tt.elem_type not in DEVICE_DTYPES:
            bad_types.append(f"{vi.name!r} has type {onnx_type_name(tt.elem_type)}")
    if not missing and not bad_types:
        return
    lines = [f"  {op}: node{'s' if len(w) > 1 else ''} {', '.join(w[:8])}{' ...' if len(w) > 8 else ''}"
             for op, w in sorted(missing.items())]
    text = f"ONNX model {label} cannot run on the IPU:"
    if lines:
        text += f"\n {len(missing)} op(s) have no lowering:\n" + "\n".join(lines)
        near = {op: ONNX_LOWERINGS.near(op) for op in missing}
        hints = [f"{op} (did you mean {', '.join(n)}?)" for op, n in near.items() if n]
        if hints:
            text += "\n near names: " + "; ".join(hints)
        text += f"\n ({ONNX_LOWERINGS.hint})"
    if bad_types:
        text += "\n values the IPU cannot hold: " + "; ".join(bad_types)
    raise UnsupportedOpsError(text, {op: w for op, w in missing.items()})


class _Lowerer:
    def __init__(self, model: onnx.ModelProto, options: OnnxOptions, static_feeds: Mapping[str, np.ndarray],
                 shapes: Mapping[str, tuple[int, ...]]) -> None:
        self.model = model
        self.options = options
        self.graph = Graph(options.target, options.replication_factor)
        self.step = P.Sequence(name="step")
        self.load = P.Sequence(name="load_weights")
        self.opset = {o.domain or "": int(o.version) for o in model.opset_import}
        self.host: dict[str, np.ndarray] = {}
        self.dev: dict[str, Tensor] = {}
        self.types: dict[str, int] = {}
        self.declared: dict[str, int] = {}
        self.initializers: dict[str, np.ndarray] = {}
        self.weights: list[tuple[str, np.ndarray]] = []
        self.weight_names: list[str] = []
        self.in_copies: list[P.Program] = []
        self.inputs: list[Slot] = []
        self.static_feeds = dict(static_feeds)
        self.shapes = dict(shapes)
        self.ipu_graphs: dict[int, Graph] = {}  # virtual graph number -> that IPU's view
        placed = next((p.value for p in model.metadata_props if p.key == IPU_NUMBERS), "{}")
        self.ipu_numbers: dict[str, int] = {str(k): int(v) for k, v in json.loads(placed).items()}
        self.ctx = OnnxContext(self)
        self.folded = 0

    # -- values ---------------------------------------------------------------------------------
    def dtype(self, elem_type: int, what: str) -> DType:
        return device_dtype(elem_type, what, self.options.precision)

    def value(self, name: str) -> Any:
        if name in self.dev:
            return self.dev[name]
        if name in self.host:
            return self.host[name]
        raise LoweringError(f"ONNX value {name!r} is used before any node makes it")

    def device(self, name: str) -> Tensor:
        found = self.dev.get(name)
        if found is not None:
            return found
        if name in self.initializers:
            t = self._weight(name)
        else:
            host = self.host.get(name)
            if host is None:
                raise LoweringError(f"ONNX value {name!r} is used before any node makes it")
            dtype = self.dtype(self.types.get(name, _elem_type_of(host)), f"value {name!r}")
            t = self.make_constant(host, dtype, name)
        self.dev[name] = t
        return t

    def make_constant(self, values: np.ndarray, dtype: DType, name: str) -> Tensor:
        cast = _to_device(values, dtype, f"constant {name!r}", LoweringError)
        t = self.graph.add_constant(dtype, values.shape, cast, name=name)
        map_tensor(self.graph, t)
        return t

    def _weight(self, name: str, made: Tensor | None = None) -> Tensor:
        """An initializer as a device variable streamed in by the load program (``made``: one laid
        out for its use already, else mapped linearly)."""
        host = self.initializers[name]
        dtype = self.dtype(self.types[name], f"initializer {name!r}")
        t = made
        if t is None:
            t = self.graph.add_variable(dtype, host.shape, name=name)
            map_tensor(self.graph, t)
        stream = f"weights/{name}"
        self.graph.add_host_to_device_fifo(stream, dtype, t.numel)
        if t.numel:
            self.load.add(P.Copy(self.graph.streams[stream], t))
        self.weights.append((stream, _to_device(host, dtype, f"initializer {name!r}", LoweringError)))
        self.weight_names.append(name)
        return t

    def conv_weight(self, name: str, input_shape: tuple[int, ...], geometry: dict[str, Any]) -> Tensor:
        """A convolution's weights: an initializer only convolutions use is created as the
        convolution's plan lays it out (poplin's createWeights: no re-layout on every call)."""
        if name in self.dev or name not in self.initializers or not self._only_conv_weight(name):
            return self.device(name)
        dtype = self.dtype(self.types[name], f"initializer {name!r}")
        if not dtype.is_float:
            return self.device(name)
        from softipu.ops.conv import create_conv_weights  # noqa: PLC0415

        made = create_conv_weights(self.graph, dtype, input_shape, self.initializers[name].shape, name=name,
                                   **geometry)
        self.dev[name] = t = self._weight(name, made)
        return t

    def _only_conv_weight(self, name: str) -> bool:
        uses = [(n, i) for n in self.model.graph.node for i, x in enumerate(n.input) if x == name]
        return bool(uses) and all(n.op_type == "Conv" and n.domain in ("", "ai.onnx") and i == 1
                                  for n, i in uses)

    # -- the graph ------------------------------------------------------------------------------
    def run(self) -> OnnxLowered:
        g = self.model.graph
        for vi in [*g.input, *g.output, *g.value_info]:
            if vi.type.HasField("tensor_type"):
                self.declared[vi.name] = vi.type.tensor_type.elem_type
        for init in g.initializer:
            value = to_numpy(init)
            self.initializers[init.name] = value
            self.host[init.name] = value
            self.types[init.name] = init.data_type
        for vi in g.input:
            if vi.name in self.initializers and vi.name not in self.shapes:
                continue
            self.initializers.pop(vi.name, None)
            self.host.pop(vi.name, None)
            self._graph_input(vi)
        count = 0
        for node in g.node:
            self._node(node)
            count += 1
        return self._finish(count)

    def _graph_input(self, vi: onnx.ValueInfoProto) -> None:
        elem = vi.type.tensor_type.elem_type
        self.types[vi.name] = elem
        if vi.name in self.static_feeds:
            self.host[vi.name] = self.static_feeds[vi.name]
            return
        shape = self.shapes[vi.name]
        dtype = self.dtype(elem, f"input {vi.name!r}")
        var = self.graph.add_variable(dtype, shape, name=f"inputs/{vi.name}")
        map_tensor(self.graph, var)
        stream = f"inputs/{len(self.inputs)}/{vi.name}"
        self.graph.add_host_to_device_fifo(stream, dtype, var.numel)
        if var.numel:
            self.in_copies.append(P.Copy(self.graph.streams[stream], var))
        self.inputs.append(Slot(vi.name, stream, shape, elem, dtype))
        self.dev[vi.name] = var

    def _node(self, node: onnx.NodeProto) -> None:
        name = onnx_op_name(node.domain, node.op_type)
        lowering = ONNX_LOWERINGS.get(name)
        if lowering is None:
            self._expand(node, name)
            return
        self.ctx.node = node
        outer = self.ctx.graph  # a subgraph's nodes stay on their If/Loop node's IPU
        self.ctx.graph = self._ipu_graph(node, outer)
        try:
            self._check_size(node)
            if self._can_fold(node, lowering):
                results = self._fold(node)
            else:
                if lowering.check is not None:
                    why = lowering.check(self.ctx)
                    if why:
                        raise LoweringError(f"ONNX {name} node {self.ctx.name!r}: {why}")
                results = lowering.fn(self.ctx, node)
        except (LoweringError, InputError):
            raise
        except Exception as exc:
            raise LoweringError(f"lowering ONNX {name} node {self.ctx.name!r} failed: "
                                f"{type(exc).__name__}: {exc}") from exc
        finally:
            self.ctx.node = None
            self.ctx.graph = outer
        if not isinstance(results, (tuple, list)):
            results = (results,)
        for k, out in enumerate(node.output):
            if not out or k >= len(results) or results[k] is None:
                continue
            self._bind(node, out, results[k])

    def _ipu_graph(self, node: onnx.NodeProto, outer: Graph) -> Graph:
        """The graph a node's ops are planned on: its ``virtualGraph`` IPU (PopART's ``__ipu_number``
        attribute) of a multi-IPU target, else the whole graph (one IPU: the annotation is kept)."""
        ipu = next((int(a.i) for a in node.attribute if a.name == "__ipu_number"), None)
        if ipu is None and node.output:
            ipu = self.ipu_numbers.get(node.output[0])
        if ipu is None or self.graph.target.num_ipus == 1:
            return outer
        if not 0 <= ipu < self.graph.target.num_ipus:
            raise LoweringError(f"ONNX {node.op_type} node {node.name or node.output[0]!r} is placed on "
                                f"virtual graph {ipu}, but {self.graph.target.name} has "
                                f"{self.graph.target.num_ipus} IPUs: use 0..{self.graph.target.num_ipus - 1}")
        if ipu not in self.ipu_graphs:
            self.ipu_graphs[ipu] = VirtualGraph.of_ipu(self.graph, ipu)
        return self.ipu_graphs[ipu]

    def _expand(self, node: onnx.NodeProto, name: str) -> None:
        """An op with no lowering of its own that ONNX defines as a function of other ops: its
        function body is lowered in its place (node by node, names prefixed by the node's)."""
        types = [onnx.helper.make_tensor_type_proto(self.types.get(n, T.FLOAT), self._shape_of(n)) if n
                 else onnx.TypeProto() for n in node.input]
        found = function_body(node, self.opset.get(node.domain or "", 1), types)
        if found is None:
            raise LoweringError(f"no lowering for ONNX op {name} (node {node.name!r})")
        body, opsets = found
        outer = dict(self.opset)
        self.opset.update(opsets)
        try:
            for inner in body:
                self._node(inner)
        finally:
            self.opset.clear()
            self.opset.update(outer)

    def lower_graph(self, graph: onnx.GraphProto, inputs: Sequence[Any]) -> list[Any]:
        node = self.ctx.node
        before_host, before_dev, before_types = set(self.host), set(self.dev), set(self.types)
        try:
            for vi, value in zip(graph.input, inputs, strict=False):
                if value is None:
                    continue
                elem = vi.type.tensor_type.elem_type if vi.type.HasField("tensor_type") else 0
                if isinstance(value, Tensor):
                    self.dev[vi.name] = value
                else:
                    self.host[vi.name] = np.asarray(value)
                self.types[vi.name] = elem or (self.types.get(vi.name) or T.FLOAT)
            for init in graph.initializer:
                self.host[init.name] = to_numpy(init)
                self.types[init.name] = init.data_type
            for inner in graph.node:
                self._node(inner)
            return [self.dev[o.name] if o.name in self.dev else self.host[o.name] for o in graph.output]
        finally:
            tables = ((self.host, before_host), (self.dev, before_dev), (self.types, before_types))
            for table, before in tables:
                for key in set(table) - before:
                    del table[key]
            self.ctx.node = node

    def _shape_of(self, name: str) -> list[int] | None:
        value = self.dev.get(name)
        value = self.host.get(name) if value is None else value
        return None if value is None else [int(d) for d in value.shape]

    def _bind(self, node: onnx.NodeProto, out: str, value: Any) -> None:
        if isinstance(value, Tensor):
            self.dev[out] = value
            self.types[out] = self.declared.get(out) or _elem_type_of_device(value.dtype, node, self)
        else:
            value = np.asarray(value)
            want = self.declared.get(out)
            if want is not None and want in DEVICE_DTYPES:
                value = value.astype(onnx.helper.tensor_dtype_to_np_dtype(want), copy=False)
            self.host[out] = value
            self.types[out] = want or _elem_type_of(value)

    def _check_size(self, node: onnx.NodeProto) -> None:
        """Refuse a node whose output, set by a value (ConstantOfShape's shape...), could not be held."""
        shapes = [np.shape(self.host[n]) if n in self.host else tuple(self.dev[n].shape) if n in self.dev
                  else None for n in node.input]
        check_output_size(node, [self.host.get(n) for n in node.input], shapes,
                          min(self.options.target.total_bytes, MAX_TENSOR_BYTES))

    def _can_fold(self, node: onnx.NodeProto, lowering: OnnxLowering) -> bool:
        if not self.options.fold_constants or node.op_type in NO_FOLD or node.domain not in ("", "ai.onnx"):
            return False
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            return False
        names = [n for n in node.input if n]
        if not names:
            return node.op_type in ("Constant", "ConstantOfShape")
        if any(n not in self.host for n in names):
            return False
        return sum(self.host[n].size for n in names) <= FOLD_LIMIT

    def _fold(self, node: onnx.NodeProto) -> list[np.ndarray]:
        from onnx.reference import ReferenceEvaluator  # noqa: PLC0415 - only when folding

        self.folded += 1
        feeds = {n: self.host[n] for n in node.input if n}
        # As a one-node model with the graph's opsets: a bare NodeProto is evaluated at onnx's latest
        # opset whatever ``opsets`` says (an opset-11 Unsqueeze's ``axes`` attribute is then refused).
        info = onnx.helper.make_value_info
        graph = onnx.helper.make_graph([node], "fold", [info(n, onnx.TypeProto()) for n in feeds],
                                       [info(n, onnx.TypeProto()) for n in node.output if n])
        model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid(d, v)
                                                             for d, v in self.opset.items()])
        return list(ReferenceEvaluator(model).run(None, feeds))

    def _finish(self, count: int) -> OnnxLowered:
        outs: list[Slot | np.ndarray] = []
        copies: list[P.Program] = []
        for k, vi in enumerate(self.model.graph.output):
            elem = vi.type.tensor_type.elem_type
            value = self.value(vi.name)
            if not isinstance(value, Tensor):
                outs.append(np.asarray(value).astype(onnx.helper.tensor_dtype_to_np_dtype(elem)))
                continue
            stream = f"outputs/{k}/{vi.name}"
            self.graph.add_device_to_host_fifo(stream, value.dtype, value.numel)
            if value.numel:
                copies.append(P.Copy(value, self.graph.streams[stream]))
            outs.append(Slot(vi.name, stream, value.shape, elem, value.dtype))
        run = P.Sequence([*self.in_copies, self.step, *copies], name="run")
        return OnnxLowered(self.graph, (self.load, run), tuple(self.inputs), tuple(outs),
                           tuple(self.weights), tuple(self.weight_names), count, self.folded)


def _schema(node: onnx.NodeProto, version: int) -> Any:
    try:
        return onnx.defs.get_schema(node.op_type, version, domain=node.domain)
    except Exception:  # noqa: BLE001 - onnx.defs.SchemaError: no such op
        return None


def has_function(node: onnx.NodeProto, model: onnx.ModelProto) -> bool:
    """Whether ONNX defines ``node``'s op as a function of other ops (at the model's opset)."""
    version = next((int(o.version) for o in model.opset_import if (o.domain or "") == (node.domain or "")), 1)
    schema = _schema(node, version)
    return schema is not None and bool(schema.has_function or schema.has_context_dependent_function)


def function_body(node: onnx.NodeProto, version: int, input_types: list[onnx.TypeProto]
                  ) -> tuple[list[onnx.NodeProto], dict[str, int]] | None:
    """The nodes of ``node``'s function body (its values renamed under the node's name, its
    attributes bound) and the body's opsets; None when ONNX defines no function for the op."""
    from onnx.backend.test.case.node import function_expand_helper  # noqa: PLC0415 - onnx's own expander

    schema = _schema(node, version)
    if schema is None:
        return None
    node = onnx.NodeProto.FromString(node.SerializeToString())
    for attr, spec in schema.attributes.items():
        if attr not in {a.name for a in node.attribute} and spec.default_value.name:
            node.attribute.append(spec.default_value)
    proto = onnx.FunctionProto()
    plain = [v for v in schema.function_opset_versions if v <= version]
    context = [v for v in schema.context_dependent_function_opset_versions if v <= version]
    if plain and (not context or max(plain) >= max(context)):
        proto.ParseFromString(schema.get_function_with_opset_version(max(plain)))
    elif context:
        proto.ParseFromString(schema.get_context_dependent_function_with_opset_version(
            max(context), node.SerializeToString(), [t.SerializeToString() for t in input_types]))
    else:
        return None
    prefix = f"{node.name or node.op_type + '_' + node.output[0]}/"
    body = function_expand_helper(node, proto, prefix)
    return body, {o.domain or "": int(o.version) for o in proto.opset_import}


def _elem_type_of(value: np.ndarray) -> int:
    return int(onnx.helper.np_dtype_to_tensor_dtype(np.asarray(value).dtype))


_BACK = {float32: T.FLOAT, float16: T.FLOAT16, int32: T.INT32, int16: T.INT16, int8: T.INT8, uint8: T.UINT8,
         uint16: T.UINT16, uint32: T.UINT32, bool_: T.BOOL}


def _elem_type_of_device(dtype: DType, node: onnx.NodeProto, lw: _Lowerer) -> int:
    """The ONNX type a device result stands for: int32 is INT64 when the node read INT64."""
    elem = _BACK.get(dtype, T.FLOAT)
    ins = [lw.types.get(n) for n in node.input if n]
    if elem == T.INT32 and T.INT64 in ins:
        return T.INT64
    if elem == T.FLOAT and T.DOUBLE in ins:
        return T.DOUBLE
    return elem


def _to_device(host: np.ndarray, dtype: DType, what: str, error: type[Exception]) -> np.ndarray:
    """``host`` as a C-contiguous array of the device dtype; a value the dtype cannot hold (an
    int64 beyond int32) is an error naming ``what`` (a plain cast would wrap it)."""
    host = np.asarray(host)
    if dtype.is_float or host.dtype.kind == "f":
        with np.errstate(over="ignore", invalid="ignore"):
            return np.ascontiguousarray(host.astype(dtype.numpy, copy=False)).reshape(host.shape)
    cast, bad = narrow(host, dtype)
    if bad is not None:
        raise error(f"{what} holds {host[bad].item()!r} at index {bad}, beyond {dtype} "
                    f"({value_range(dtype)}), the dtype the IPU holds it in")
    return np.ascontiguousarray(cast).reshape(host.shape)


def lower_model(model: onnx.ModelProto, options: OnnxOptions, static_feeds: Mapping[str, np.ndarray],
                shapes: Mapping[str, tuple[int, ...]]) -> OnnxLowered:
    """Lower a checked model (``check_supported`` ran) with the given input shapes; inputs named in
    ``static_feeds`` are compile-time values (they fed a ``static`` input of some lowering)."""
    return _Lowerer(model, options, static_feeds, shapes).run()


to_device = _to_device
