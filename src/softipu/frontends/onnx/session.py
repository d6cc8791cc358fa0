"""``InferenceSession``: an ONNX model on a simulated IPU, shaped like onnxruntime's.

Code written for onnxruntime runs with the session's construction changed:

>>> import numpy as np, onnx, softipu as sp
>>> from onnx import helper, TensorProto as T
>>> g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
...                       [helper.make_tensor_value_info("x", T.FLOAT, [2, 3])],
...                       [helper.make_tensor_value_info("y", T.FLOAT, [2, 3])])
>>> model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
>>> sess = InferenceSession(model.SerializeToString(),
...                         OnnxOptions(target=sp.targets.ipu_model(tiles=4)))
>>> [(i.name, i.shape, i.type) for i in sess.get_inputs()]
[('x', [2, 3], 'tensor(float)')]
>>> sess.run(None, {"x": np.array([[-1, 2, -3], [4, -5, 6]], np.float32)})[0]
array([[0., 2., 0.],
       [4., 0., 6.]], dtype=float32)
>>> sess.report.cycles > 0
True

A model with symbolic dimensions, or whose inputs feed values the IPU needs when compiling (a
Reshape's shape), compiles on its first ``run`` for the shapes (and those values) it is given, and
again for new ones, as the IPU's static shapes need; each compiled signature is kept.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from softipu.engine import Engine
from softipu.frontends.defaults import engine_options as frontend_engine_options
from softipu.frontends.errors import InputError
from softipu.frontends.onnx.load import load_model
from softipu.frontends.onnx.lower import (
    DEVICE_DTYPES,
    OnnxLowered,
    OnnxOptions,
    Slot,
    check_supported,
    lower_model,
    to_device,
)
from softipu.frontends.onnx.registry import ONNX_LOWERINGS, onnx_op_name
from softipu.profile import Report

__all__ = ["InferenceSession", "NodeArg", "static_inputs"]


@dataclass(frozen=True, slots=True)
class NodeArg:
    """onnxruntime's ``NodeArg``: an input or output's name, shape (ints or dim names) and type."""

    name: str
    shape: list[int | str | None]
    type: str


def _type_string(elem: int) -> str:
    name = onnx.helper.tensor_dtype_to_np_dtype(elem).name if elem in DEVICE_DTYPES else "unknown"
    return "tensor(" + {"float32": "float", "float64": "double", "bool": "bool"}.get(name, name) + ")"


_NUMPY_NAMES = {_type_string(e): onnx.helper.tensor_dtype_to_np_dtype(e).name for e in DEVICE_DTYPES}


def _node_arg(vi: onnx.ValueInfoProto) -> NodeArg:
    tt = vi.type.tensor_type
    dims: list[int | str | None] = []
    for d in tt.shape.dim:
        dims.append(int(d.dim_value) if d.HasField("dim_value") else (d.dim_param or None))
    return NodeArg(vi.name, dims, _type_string(tt.elem_type))


# Their outputs are known while compiling whatever their inputs hold (shapes are static).
_SHAPE_ONLY = frozenset({"Shape", "Size"})


def static_inputs(model: onnx.ModelProto) -> set[str]:
    """Graph inputs whose values a lowering needs while compiling: those feeding a ``static`` input
    (a Reshape's shape...), directly or through default-domain nodes that fold on the host."""
    names = {vi.name for vi in model.graph.input} - {t.name for t in model.graph.initializer}
    flat = _flatten(model.graph.node)
    int64_inputs = {vi.name for vi in model.graph.input
                    if vi.type.tensor_type.elem_type == onnx.TensorProto.INT64}
    need: set[str] = set()
    for node, _ in flat:
        lowering = ONNX_LOWERINGS.get(onnx_op_name(node.domain, node.op_type))
        if lowering is None:  # lowered through its ONNX function body: its int64 inputs are shape-like
            need.update(n for n in node.input if n in int64_inputs)
        for i in lowering.static if lowering is not None else ():
            if i < len(node.input) and node.input[i]:
                need.add(node.input[i])
    for _ in range(2):  # producers of needed values need their inputs too (twice: nested scopes)
        for node, reads in reversed(flat):
            if node.op_type in _SHAPE_ONLY or node.domain not in ("", "ai.onnx"):
                continue
            if any(out in need for out in node.output):
                need.update(reads)
    return need & names


def _flatten(nodes: Any) -> list[tuple[onnx.NodeProto, set[str]]]:
    """Every node, subgraph nodes before the node holding them, with the names each reads (a node
    with subgraphs reads its inputs and every name its subgraphs read)."""
    out: list[tuple[onnx.NodeProto, set[str]]] = []
    for node in nodes:
        reads = {n for n in node.input if n}
        for attr in node.attribute:
            graphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
            for g in graphs:
                inner = _flatten(g.node)
                out += inner
                for _, r in inner:
                    reads |= r
        out.append((node, reads))
    return out


class _Compiled:
    """One compiled signature: the lowered model and its engine with the weights loaded."""

    def __init__(self, lowered: OnnxLowered, options: OnnxOptions) -> None:
        self.lowered = lowered
        self.options = options
        self.engine = Engine(lowered.graph, list(lowered.programs),
                             options=frontend_engine_options(options.engine_options))
        self.load_weights()

    def load_weights(self, weights: Sequence[tuple[str, np.ndarray]] | None = None) -> None:
        for stream, values in self.lowered.weights if weights is None else weights:
            for r in range(self.options.replication_factor):
                self.engine.connect_stream(stream, values, replica=r)
        self.engine.run(0)

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        rf = self.options.replication_factor
        for slot in self.lowered.inputs:
            if int(np.prod(slot.shape)) == 0:
                continue
            host = to_device(feeds[slot.name], slot.dtype, f"input {slot.name!r}", InputError).reshape(-1)
            for r in range(rf):
                self.engine.connect_stream(slot.stream, host, replica=r)
        buffers: list[np.ndarray | None] = []
        for slot in self.lowered.outputs:
            if not isinstance(slot, Slot) or int(np.prod(slot.shape)) == 0:
                buffers.append(None)
                continue
            buf = np.empty((rf, int(np.prod(slot.shape))), slot.dtype.numpy)
            for r in range(rf):
                self.engine.connect_stream(slot.stream, buf[r], replica=r)
            buffers.append(buf)
        self.engine.run(1)
        return [_output(slot, buf) for slot, buf in zip(self.lowered.outputs, buffers, strict=True)]

    @property
    def cycles(self) -> int:
        runs = [cycles for index, cycles in self.engine.log.runs if index == 1]
        return int(runs[-1]) if runs else 0


def _output(slot: Slot | np.ndarray, buf: np.ndarray | None) -> np.ndarray:
    if not isinstance(slot, Slot):
        return np.array(slot)
    host = np.zeros(slot.shape, slot.dtype.numpy) if buf is None else buf[0].reshape(slot.shape)
    with np.errstate(over="ignore", invalid="ignore"):
        return host.astype(slot.numpy)


class InferenceSession:
    """An ONNX model compiled for a simulated IPU, with onnxruntime's session API.

    ``path_or_bytes``: a path, serialized bytes or an ``onnx.ModelProto``. ``options``: an
    :class:`~softipu.frontends.onnx.lower.OnnxOptions` (chip, replication, engine options);
    onnxruntime's ``sess_options`` and ``providers`` are accepted and ignored. Attributes:
    ``report`` (``softipu.Report`` of the last compiled signature), ``cycle_count`` (modeled
    cycles of the last run), ``compile_seconds``.
    """

    def __init__(self, path_or_bytes: Any, options: OnnxOptions | None = None, *, sess_options: Any = None,
                 providers: Any = None, provider_options: Any = None, **kwargs: Any) -> None:
        if options is not None and not isinstance(options, OnnxOptions):
            options = None  # onnxruntime's positional sess_options: ignored
        self.options = options or OnnxOptions()
        self.model, self.label = load_model(path_or_bytes)
        check_supported(self.model, self.label)
        g = self.model.graph
        inits = {t.name for t in g.initializer}
        self._inputs = [vi for vi in g.input if vi.name not in inits]
        self._outputs = list(g.output)
        self._static = static_inputs(self.model)
        self._compiled: dict[tuple, _Compiled] = {}
        self._current: _Compiled | None = None
        self.compile_seconds = 0.0
        if not self._static and all(isinstance(d, int) for i in self.get_inputs() for d in i.shape):
            self._compile({}, {i.name: tuple(i.shape) for i in self.get_inputs()})

    # -- onnxruntime's API ----------------------------------------------------------------------
    def get_inputs(self) -> list[NodeArg]:
        return [_node_arg(vi) for vi in self._inputs]

    def get_outputs(self) -> list[NodeArg]:
        return [_node_arg(vi) for vi in self._outputs]

    def get_providers(self) -> list[str]:
        return ["SoftIPUExecutionProvider"]

    def get_modelmeta(self) -> Any:
        return self.model.metadata_props

    def run(self, output_names: Sequence[str] | None, input_feed: Mapping[str, Any],
            run_options: Any = None) -> list[np.ndarray]:
        """The outputs named (all when None) for ``input_feed`` (name -> numpy array)."""
        feeds = self._check_feeds(input_feed)
        names = [vi.name for vi in self._outputs]
        wanted = list(names) if output_names is None else list(output_names)
        unknown = [n for n in wanted if n not in names]
        if unknown:
            raise InputError(f"{self.label} has no output named {', '.join(map(repr, unknown))}; its "
                             f"outputs are {', '.join(map(repr, names))}")
        static = {n: feeds[n] for n in sorted(self._static)}
        shapes = {n: tuple(v.shape) for n, v in feeds.items()}
        compiled = self._compile(static, shapes)
        results = dict(zip(names, compiled.run(feeds), strict=True))
        return [results[n] for n in wanted]

    # -- softipu's ------------------------------------------------------------------------------
    @property
    def report(self) -> Report:
        return self._need().engine.report

    @property
    def cycle_count(self) -> int:
        return self._need().cycles

    @property
    def lowered(self) -> OnnxLowered:
        return self._need().lowered

    @property
    def engine(self) -> Engine:
        return self._need().engine

    def _need(self) -> _Compiled:
        if self._current is None:
            raise InputError(f"{self.label} has not been compiled yet: its input shapes are symbolic "
                             "or it needs input values when compiling; call run() first")
        return self._current

    def _compile(self, static: Mapping[str, np.ndarray], shapes: Mapping[str, tuple[int, ...]]) -> _Compiled:
        key = (tuple(sorted(shapes.items())),
               tuple((n, v.dtype.str, v.tobytes()) for n, v in sorted(static.items())))
        found = self._compiled.get(key)
        if found is None:
            start = time.perf_counter()
            found = _Compiled(lower_model(self.model, self.options, static, shapes), self.options)
            self.compile_seconds = time.perf_counter() - start
            self._compiled[key] = found
        self._current = found
        return found

    def _check_feeds(self, input_feed: Mapping[str, Any]) -> dict[str, np.ndarray]:
        if not isinstance(input_feed, Mapping):
            raise InputError(f"run() takes the inputs as a dict of name -> numpy array, got "
                             f"{type(input_feed).__name__}")
        expected = {vi.name: _node_arg(vi) for vi in self._inputs}
        unknown = [n for n in input_feed if n not in expected]
        missing = [n for n in expected if n not in input_feed]
        if unknown or missing:
            text = f"the feeds of {self.label} do not match its inputs {list(expected)}:"
            if unknown:
                text += f" unknown name(s) {unknown}"
                near = {n: [e for e in expected if e.lower() == n.lower()] for n in unknown}
                hints = [f"{n!r} -> {v[0]!r}" for n, v in near.items() if v]
                text += f" (did you mean {', '.join(hints)}?)" if hints else ""
            if missing:
                text += f"{';' if unknown else ''} missing {missing}"
            raise InputError(text)
        return {name: self._check_feed(expected[name], input_feed[name]) for name in expected}

    def _check_feed(self, arg: NodeArg, value: Any) -> np.ndarray:
        if not isinstance(value, np.ndarray):
            value = np.asarray(value)
        got = _type_string(int(onnx.helper.np_dtype_to_tensor_dtype(value.dtype))) \
            if value.dtype.kind in "biuf" else f"numpy {value.dtype}"
        if got != arg.type:
            raise InputError(f"input {arg.name!r} of {self.label} is {arg.type}; the feed is {got}: "
                             f"convert it (x.astype(numpy.{_NUMPY_NAMES.get(arg.type, arg.type)}))")
        shape = tuple(value.shape)
        if len(shape) != len(arg.shape) or any(isinstance(d, int) and d != s
                                               for d, s in zip(arg.shape, shape, strict=False)):
            raise InputError(f"input {arg.name!r} of {self.label} has shape {arg.shape}; the feed has "
                             f"shape {list(shape)}")
        return value
