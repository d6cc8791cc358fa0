"""PopART's names over the ONNX frontend: build a model with ``Builder``, run it with
``InferenceSession`` on a simulated IPU (``softipu.popart``).

>>> import numpy as np, softipu.popart as popart
>>> builder = popart.Builder()
>>> x = builder.addInputTensor(popart.TensorInfo("FLOAT", [2, 3]))
>>> w = builder.addInitializedInputTensor(np.ones((3, 4), np.float32))
>>> y = builder.aiOnnx.relu([builder.aiOnnx.matmul([x, w])])
>>> builder.addOutputTensor(y)
>>> flow = popart.DataFlow(1, {y: popart.AnchorReturnType("ALL")})
>>> device = popart.DeviceManager().createIpuModelDevice({"numIPUs": 1, "tilesPerIPU": 4})
>>> session = popart.InferenceSession(builder.getModelProto(), flow, device)
>>> session.prepareDevice(); session.weightsFromHost()
>>> anchors = session.initAnchorArrays()
>>> session.run(popart.PyStepIO({x: np.array([[1, -2, 3], [-4, 5, -6]], np.float32)}, anchors))
>>> anchors[y]
array([[2., 2., 2., 2.],
       [0., 0., 0., 0.]], dtype=float32)

``virtualGraph`` places an op on that IPU of a multi-IPU device (``numIPUs``); on one IPU the
annotation is kept and every op runs there. ``TrainingSession`` and the optimizers are in
:mod:`.popart_training`.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import helper

from softipu.frontends.errors import InputError
from softipu.frontends.onnx.errors import PopartError
from softipu.frontends.onnx.lower import OnnxOptions
from softipu.frontends.onnx.popart_parallel import (
    PipelinedInference,
    model_blocks,
    placed_model,
    replica_ipus,
)
from softipu.frontends.onnx.session import InferenceSession as _OrtSession
from softipu.target import GC200, Target, ipu_model

__all__ = ["AnchorReturnType", "Builder", "DataFlow", "DeviceInfo", "DeviceManager", "InferenceSession",
           "PyStepIO", "ReductionType", "SessionOptions", "TensorInfo", "VirtualGraphMode"]

GRAPHCORE = "ai.graphcore"
_OPSET = 11  # the highest ONNX opset PopART supports (ipu-facts-scale.md §6)
_TYPES = {"FLOAT": onnx.TensorProto.FLOAT, "FLOAT16": onnx.TensorProto.FLOAT16,
          "INT32": onnx.TensorProto.INT32,
          "INT64": onnx.TensorProto.INT64, "INT8": onnx.TensorProto.INT8, "UINT8": onnx.TensorProto.UINT8,
          "INT16": onnx.TensorProto.INT16, "UINT16": onnx.TensorProto.UINT16,
          "UINT32": onnx.TensorProto.UINT32,
          "BOOL": onnx.TensorProto.BOOL, "DOUBLE": onnx.TensorProto.DOUBLE}


class TensorInfo:
    """A tensor's type and shape: ``TensorInfo("FLOAT", [2, 3])`` or ``TensorInfo(numpy_array)``."""

    def __init__(self, dtype: Any, shape: Sequence[int] | None = None) -> None:
        if isinstance(dtype, np.ndarray):
            dtype, shape = onnx.helper.tensor_dtype_to_string(
                helper.np_dtype_to_tensor_dtype(dtype.dtype)).removeprefix("TensorProto."), dtype.shape
        name = str(dtype).upper()
        if name not in _TYPES:
            raise PopartError(f"TensorInfo: unknown data type {dtype!r}; use one of {sorted(_TYPES)}")
        self.data_type = name
        self.elem_type = _TYPES[name]
        self._shape = [int(d) for d in (shape or [])]

    def shape(self) -> list[int]:
        return list(self._shape)

    def dataType(self) -> str:  # noqa: N802 - PopART's name
        return self.data_type

    def __repr__(self) -> str:
        return f"TensorInfo({self.data_type}, {self._shape})"


class _OpSet:
    """``builder.aiOnnx`` / ``builder.aiGraphcore``: one method per op, ``op(inputs, **attributes)``.

    Attributes are keyword arguments named as in the ONNX schema (``axis=1``, ``perm=[1, 0]``);
    ``debugContext``/``debugPrefix`` name the node; ``num_outputs`` asks for several outputs.
    """

    def __init__(self, builder: Builder, domain: str, version: int) -> None:
        self._builder, self._domain, self._version = builder, domain, version

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        op = _op_type(name, self._domain)
        return lambda *args, **kwargs: self._builder._add(op, self._domain, args, kwargs)  # noqa: SLF001


_SPECIAL = {"matmul": "MatMul", "nllloss": "NllLoss", "identityloss": "IdentityLoss", "l1loss": "L1Loss",
            "batchnormalization": "BatchNormalization", "globalaveragepool": "GlobalAveragePool",
            "globalmaxpool": "GlobalMaxPool", "averagepool": "AveragePool", "maxpool": "MaxPool",
            "logsoftmax": "LogSoftmax", "leakyrelu": "LeakyRelu", "reducesum": "ReduceSum",
            "reducemean": "ReduceMean", "reducemax": "ReduceMax", "reducemin": "ReduceMin",
            "convtranspose": "ConvTranspose", "gatherelements": "GatherElements", "constantofshape":
            "ConstantOfShape", "layernormalization": "LayerNormalization", "instancenormalization":
            "InstanceNormalization", "scatterelements": "ScatterElements", "topk": "TopK", "argmax": "ArgMax",
            "argmin": "ArgMin", "hardsigmoid": "HardSigmoid", "lessorequal": "LessOrEqual", "greaterorequal":
            "GreaterOrEqual", "isnan": "IsNaN", "isinf": "IsInf", "lrn": "LRN", "prelu": "PRelu",
            "thresholdedrelu": "ThresholdedRelu", "depthtospace": "DepthToSpace",
            "spacetodepth": "SpaceToDepth",
            "gathernd": "GatherND", "scatternd": "ScatterND", "cumsum": "CumSum", "onehot": "OneHot"}


_POSITIONAL = {"L1Loss": ("lambda", "reduction"), "IdentityLoss": ("reduction",),
               "NllLoss": ("reduction", "ignoreIndex", "inputIsLogProbability")}


def _op_type(name: str, domain: str) -> str:
    """PopART's method name (``matmul``, ``reducesum``...) -> the op type (``MatMul``, ``ReduceSum``)."""
    found = _SPECIAL.get(name.lower())
    if found is not None:
        return found
    if domain == "":
        lowered = {s.name.lower(): s.name for s in onnx.defs.get_all_schemas() if s.domain == ""}
        if name.lower() in lowered:
            return lowered[name.lower()]
    return name[:1].upper() + name[1:]


class Builder:
    """PopART's ``popart.Builder``: adds inputs, weights and ONNX ops, gives the model proto."""

    def __init__(self, opsets: Mapping[str, int] | None = None) -> None:
        self._nodes: list[onnx.NodeProto] = []
        self._inputs: list[onnx.ValueInfoProto] = []
        self._outputs: list[str] = []
        self._inits: list[onnx.TensorProto] = []
        self._count = 0
        self._ipu: int | None = None
        self._stage: int | None = None
        self._scopes: list[str] = []
        version = dict(opsets or {}).get("ai.onnx", _OPSET)
        self.aiOnnx = _OpSet(self, "", version)
        self.aiGraphcore = _OpSet(self, GRAPHCORE, 1)
        self._opset = version

    # -- tensors -----------------------------------------------------------------------------------
    def _name(self, base: str) -> str:
        self._count += 1
        scope = "/".join(self._scopes)
        return f"{scope + '/' if scope else ''}{base or 't'}:{self._count}"

    def addInputTensor(self, info: Any, debugContext: str = "") -> str:  # noqa: N802, N803
        if not isinstance(info, TensorInfo):
            info = TensorInfo(*info) if isinstance(info, tuple) else TensorInfo(info)
        name = self._name(debugContext or "input")
        self._inputs.append(helper.make_tensor_value_info(name, info.elem_type, info.shape()))
        return name

    def addInitializedInputTensor(self, value: Any, debugContext: str = "") -> str:  # noqa: N802, N803
        value = np.asarray(value)
        name = self._name(debugContext or "weight")
        self._inits.append(onnx.numpy_helper.from_array(value, name))
        return name

    def addOutputTensor(self, name: str) -> None:  # noqa: N802
        self._outputs.append(name)

    # -- ops ----------------------------------------------------------------------------------------
    def _add(self, op: str, domain: str, args: tuple, kwargs: dict[str, Any]) -> Any:
        if op == "Constant" and args and not isinstance(args[0], (list, tuple)):
            value = np.asarray(args[0])
            name = self._name(kwargs.get("debugContext", "") or "constant")
            self._nodes.append(helper.make_node("Constant", [], [name], name=name,
                                                value=onnx.numpy_helper.from_array(value)))
            return name
        inputs = list(args[0]) if args else list(kwargs.pop("args", []))
        for attr, value in zip(_POSITIONAL.get(op, ()), args[1:], strict=False):  # PopART's positional attrs
            kwargs.setdefault(attr, value)
        debug = kwargs.pop("debugContext", "") or kwargs.pop("debugPrefix", "")
        n_out = int(kwargs.pop("num_outputs", 1))
        attrs = {k: (v.value if hasattr(v, "value") and not isinstance(v, np.ndarray) else v)
                 for k, v in kwargs.items() if v is not None}
        base = self._name(debug or op)
        outputs = [f"{base}" if n_out == 1 else f"{base}/{k}" for k in range(n_out)]
        node = helper.make_node(op, [str(i) for i in inputs], outputs, name=base, domain=domain, **attrs)
        if self._ipu is not None:
            node.attribute.append(helper.make_attribute("__ipu_number", self._ipu))
        if self._stage is not None:
            node.attribute.append(helper.make_attribute("__pipeline_stage", self._stage))
        self._nodes.append(node)
        return outputs[0] if n_out == 1 else outputs

    # -- placement and scopes -------------------------------------------------------------------------
    def virtualGraph(self, tensor_or_ipu: Any, value: int | None = None) -> Any:  # noqa: N802
        """``with builder.virtualGraph(1):`` places the ops added inside on IPU 1;
        ``builder.virtualGraph(t, 1)`` places the op making ``t``."""
        if value is None:
            return self._on_ipu(int(tensor_or_ipu))
        for node in self._nodes:
            if tensor_or_ipu in node.output:
                node.attribute.append(helper.make_attribute("__ipu_number", int(value)))
                return None
        raise PopartError(f"virtualGraph: no op makes tensor {tensor_or_ipu!r}")

    @contextlib.contextmanager
    def _on_ipu(self, ipu: int) -> Iterator[None]:
        outer, self._ipu = self._ipu, ipu
        try:
            yield
        finally:
            self._ipu = outer

    @contextlib.contextmanager
    def pipelineStage(self, stage: int) -> Iterator[None]:  # noqa: N802
        """``with builder.pipelineStage(1):`` tags the ops added inside with PopART's
        ``__pipeline_stage``. A TrainingSession with ``enablePipelining`` (and
        ``VirtualGraphMode.Manual``) pipelines the stages over their ``virtualGraph`` IPUs with the
        torch frontend's pipeline machinery; inference runs the stages in order."""
        outer, self._stage = self._stage, int(stage)
        try:
            yield
        finally:
            self._stage = outer

    @contextlib.contextmanager
    def nameScope(self, name: str) -> Iterator[None]:  # noqa: N802
        self._scopes.append(name)
        try:
            yield
        finally:
            self._scopes.pop()

    # -- the model ------------------------------------------------------------------------------------
    def _model(self) -> onnx.ModelProto:
        outputs = [helper.make_empty_tensor_value_info(n) for n in self._outputs]
        graph = helper.make_graph(self._nodes, "BuilderGraph", self._inputs, outputs, initializer=self._inits)
        opsets = [helper.make_opsetid("", self._opset), helper.make_opsetid(GRAPHCORE, 1)]
        model = helper.make_model(graph, opset_imports=opsets, producer_name="softipu.popart")
        inferred = onnx.shape_inference.infer_shapes(model)
        known = {vi.name: vi for vi in [*inferred.graph.value_info, *inferred.graph.input]}
        for t in self._inits:
            known[t.name] = helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
        for node in self._nodes:  # shape inference does not know PopART's own ops: the losses
            if node.domain == GRAPHCORE and node.input and node.input[0] in known:
                src = known[node.input[-1] if node.op_type == "NllLoss" else node.input[0]]
                reduction = next((helper.get_attribute_value(a) for a in node.attribute
                                  if a.name == "reduction"), b"mean")
                dims = _dims(src) if reduction in (b"none", "none") else []
                elem = known[node.input[0]].type.tensor_type.elem_type
                known[node.output[0]] = helper.make_tensor_value_info(node.output[0], elem, dims)
        for out in model.graph.output:
            if out.name in known:
                out.type.CopyFrom(known[out.name].type)
            else:
                raise PopartError(f"the type of output {out.name!r} is unknown (an op shape inference "
                                  "does not know); add it with a known op")
        return model

    def getModelProto(self) -> bytes:  # noqa: N802
        """The serialized ONNX model (what PopART's sessions take)."""
        return self._model().SerializeToString()

    def getInputTensorIds(self) -> list[str]:  # noqa: N802
        return [vi.name for vi in self._inputs]

    def getOutputTensorIds(self) -> list[str]:  # noqa: N802
        return list(self._outputs)

    def getTensorShape(self, name: str) -> list[int]:  # noqa: N802
        inferred = onnx.shape_inference.infer_shapes(self._model())
        for vi in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
            if vi.name == name:
                return [int(d.dim_value) for d in vi.type.tensor_type.shape.dim]
        for t in self._inits:
            if t.name == name:
                return list(t.dims)
        raise PopartError(f"getTensorShape: no tensor {name!r}")


class ReductionType:
    """PopART's loss reductions."""

    Sum, Mean, NoReduction = "sum", "mean", "none"


class VirtualGraphMode:
    Off, Manual, Auto = "Off", "Manual", "Auto"


class AnchorReturnType:
    """How an anchor returns its values over the batches of a step: ``"ALL"``, ``"FINAL"``,
    ``"SUM"`` or ``"EVERYN"`` with a period."""

    def __init__(self, kind: str = "ALL", period: int = 1) -> None:
        kind = str(kind).upper()
        if kind not in ("ALL", "FINAL", "SUM", "EVERYN"):
            raise PopartError(f"AnchorReturnType: unknown kind {kind!r} (ALL, FINAL, SUM, EVERYN)")
        if kind == "EVERYN" and int(period) < 1:
            raise PopartError(f"AnchorReturnType('EVERYN', {period}): the period must be >= 1")
        self.kind, self._period = kind, int(period)

    def id(self) -> str:
        return self.kind

    def rp(self) -> int:
        return self._period

    def __repr__(self) -> str:
        return f"AnchorReturnType({self.kind!r}{', ' + str(self._period) if self.kind == 'EVERYN' else ''})"


class DataFlow:
    """``DataFlow(batchesPerStep, anchors)``: ``anchors`` maps tensor names to
    :class:`AnchorReturnType` (a list of names means ``ALL`` for each)."""

    def __init__(self, batchesPerStep: int, anchors: Any) -> None:  # noqa: N803
        if int(batchesPerStep) < 1:
            raise PopartError(f"DataFlow: batchesPerStep must be >= 1, got {batchesPerStep}")
        self.batchesPerStep = int(batchesPerStep)
        if not isinstance(anchors, Mapping):
            anchors = {name: AnchorReturnType("ALL") for name in anchors}
        self.anchors = dict(anchors)

    def nAnchors(self) -> int:  # noqa: N802
        return len(self.anchors)


@dataclasses.dataclass
class SessionOptions:
    """PopART's ``SessionOptions`` with its defaults (ipu-facts-scale.md §6); the ones softipu
    acts on are ``replicatedGraphCount``, ``enableOutlining`` and ``engineOptions``,
    ``virtualGraphMode`` (Manual or Auto) and ``enablePipelining`` (both sessions), and in a
    TrainingSession ``accumulationFactor`` and ``accumulationAndReplicationReductionType``; the rest
    are kept as set."""

    replicatedGraphCount: int = 1  # noqa: N815
    enableReplicatedGraphs: bool = False  # noqa: N815
    accumulationFactor: int = 1  # noqa: N815
    enableGradientAccumulation: bool = False  # noqa: N815
    accumulationAndReplicationReductionType: str = ReductionType.Sum  # noqa: N815
    virtualGraphMode: str = VirtualGraphMode.Off  # noqa: N815
    enablePipelining: bool = False  # noqa: N815
    autoRecomputation: str = "None"  # noqa: N815
    enableEngineCaching: bool = False  # noqa: N815
    cachePath: str = "session_cache"  # noqa: N815
    enableOutlining: bool = True  # noqa: N815
    defaultBufferingDepth: int = 1  # noqa: N815
    constantWeights: bool = True  # noqa: N815
    engineOptions: dict = dataclasses.field(default_factory=dict)  # noqa: N815


class DeviceInfo:
    """An acquired (simulated) device: its target chip and IPU count."""

    def __init__(self, target: Target, num_ipus: int = 1, device_id: int = 0, kind: str = "ipu") -> None:
        self.target, self.numIpus, self.id, self.type = target, int(num_ipus), int(device_id), kind

    @property
    def tilesPerIPU(self) -> int:  # noqa: N802
        return self.target.num_tiles // max(self.numIpus, 1)

    def detach(self) -> None:
        return None

    def __repr__(self) -> str:
        return f"DeviceInfo({self.type}, {self.numIpus} IPU(s), {self.target.name})"


class DeviceManager:
    """``DeviceManager()``: simulated devices only (no hardware is ever attached)."""

    def createCpuDevice(self) -> DeviceInfo:  # noqa: N802
        return DeviceInfo(ipu_model(tiles=4), 1, 0, "cpu")

    def createIpuModelDevice(self, options: Mapping[str, Any] | None = None) -> DeviceInfo:  # noqa: N802
        opts = {k.lower(): v for k, v in dict(options or {}).items()}
        tiles = int(opts.get("tilesperipu", 4))
        ipus = int(opts.get("numipus", 1))
        if ipus < 1:
            raise PopartError(f"createIpuModelDevice: numIPUs must be >= 1, got {ipus}")
        return DeviceInfo(ipu_model(tiles=tiles).with_num_ipus(ipus), ipus, 0, "ipu-model")

    def acquireAvailableDevice(self, numIpus: int = 1, tilesPerIpu: int = 0, **kwargs: Any) -> DeviceInfo:  # noqa: N802, N803
        if int(numIpus) < 1:
            raise PopartError(f"acquireAvailableDevice: numIpus must be >= 1, got {numIpus}")
        whole = not tilesPerIpu or tilesPerIpu == GC200.num_tiles
        target = GC200 if whole else ipu_model(tiles=int(tilesPerIpu))
        return DeviceInfo(target.with_num_ipus(int(numIpus)), int(numIpus), 0, "ipu")

    def acquireDeviceById(self, device_id: int, **kwargs: Any) -> DeviceInfo:  # noqa: N802
        return DeviceInfo(GC200, 1, int(device_id), "ipu")


class PyStepIO:
    """``PyStepIO(inputs, anchors)``: input arrays by tensor name (leading dim ``batchesPerStep``
    when it is > 1) and the anchor arrays (from :meth:`InferenceSession.initAnchorArrays`) to fill."""

    def __init__(self, inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]) -> None:
        self.inputs, self.outputs = dict(inputs), outputs


class InferenceSession:
    """PopART's ``InferenceSession(fnModel, dataFlow, deviceInfo, ...)``: ``prepareDevice()`` compiles,
    ``weightsFromHost()`` loads the weights, ``run(PyStepIO(...))`` runs ``batchesPerStep`` batches."""

    def __init__(self, fnModel: Any, dataFlow: DataFlow, deviceInfo: DeviceInfo,  # noqa: N803
                 inputShapeInfo: Any = None, patterns: Any = None, userOptions: SessionOptions | None = None,
                 name: str = "inference") -> None:
        self.dataFlow, self.deviceInfo = dataFlow, deviceInfo
        self.options = userOptions or SessionOptions()
        self.name = name
        model = fnModel if isinstance(fnModel, onnx.ModelProto) else _read_model(fnModel)
        self._model = _with_anchor_outputs(model, list(dataFlow.anchors))
        self._session: _OrtSession | None = None
        self._pipelined: PipelinedInference | None = None
        self._weights_loaded = False

    def prepareDevice(self, loadEngine: bool = True) -> None:  # noqa: N802, N803
        """Compiles; with ``virtualGraphMode`` Auto the ops are placed first (PopART's
        AutoVirtualGraph), with ``enablePipelining`` the step's batches are pipelined over the IPUs."""
        rf = int(self.options.replicatedGraphCount) if self.options.enableReplicatedGraphs else 1
        per_replica = replica_ipus(self.options, self.deviceInfo.numIpus, rf)
        model = placed_model(self._model, self.options, per_replica, training=False)
        engine_options = {"opt.enableOutlining": bool(self.options.enableOutlining),
                          **self.options.engineOptions}
        opts = OnnxOptions(target=self.deviceInfo.target, replication_factor=rf,
                           engine_options=engine_options)
        self._session = _OrtSession(model, opts)
        if self.options.enablePipelining:
            blocks = model_blocks(model, self.options, per_replica)
            if blocks is None:
                raise PopartError("enablePipelining: no op of the model is placed on a virtual graph; place "
                                  "them with builder.virtualGraph or use VirtualGraphMode.Auto")
            self._pipelined = PipelinedInference(
                model, list(self.dataFlow.anchors), blocks, self.deviceInfo.target.with_num_ipus(per_replica),
                rf, self.dataFlow.batchesPerStep, engine_options)

    def weightsFromHost(self) -> None:  # noqa: N802
        self._need("weightsFromHost")
        self._weights_loaded = True  # the engine loaded them when it was compiled

    def initAnchorArrays(self) -> dict[str, np.ndarray]:  # noqa: N802
        shapes = _output_shapes(self._need("initAnchorArrays"))
        out = {}
        for name, art in self.dataFlow.anchors.items():
            shape = shapes[name]
            lead = self._turns(art)
            dtype = onnx.helper.tensor_dtype_to_np_dtype(_elem(self._model, name))
            out[name] = np.zeros(([lead] if lead > 1 else []) + shape, dtype)
        return out

    def _turns(self, art: AnchorReturnType) -> int:
        bps = self.dataFlow.batchesPerStep
        if art.kind == "ALL":
            return bps
        if art.kind == "EVERYN":
            return bps // art.rp()
        return 1

    def run(self, stepio: PyStepIO, debugName: str = "") -> None:  # noqa: N803
        sess = self._need("run")
        if not self._weights_loaded:
            raise PopartError("run: call weightsFromHost() first (the weights are not on the device)")
        bps = self.dataFlow.batchesPerStep
        names = [i.name for i in sess.get_inputs()]
        missing = [n for n in names if n not in stepio.inputs]
        if missing:
            raise InputError(f"PyStepIO has no data for input(s) {missing}; the model's inputs are {names}")
        if self._pipelined is not None:  # the step's batches are the pipeline's micro-batches
            results = self._pipelined.run({n: stepio.inputs[n] for n in names}, _output_shapes(sess))
        else:
            results = []
            for b in range(bps):
                feeds = {n: np.asarray(stepio.inputs[n])[b] if bps > 1 else np.asarray(stepio.inputs[n])
                         for n in names}
                outs = sess.run(list(self.dataFlow.anchors), feeds)
                results.append(dict(zip(self.dataFlow.anchors, outs, strict=True)))
        for name, art in self.dataFlow.anchors.items():
            values = np.stack([r[name] for r in results])
            if art.kind == "FINAL":
                picked = values[-1]
            elif art.kind == "SUM":
                picked = values.sum(axis=0, dtype=values.dtype)
            elif art.kind == "EVERYN":
                picked = values[art.rp() - 1::art.rp()]
                picked = picked[0] if picked.shape[0] == 1 else picked
            else:
                picked = values if bps > 1 else values[0]
            np.copyto(stepio.outputs[name], picked.reshape(stepio.outputs[name].shape))

    def getCycleCount(self) -> int:  # noqa: N802
        sess = self._need("getCycleCount")
        return (self._pipelined or sess).cycle_count

    def getInfo(self, name: str) -> TensorInfo:  # noqa: N802
        sess = self._need("getInfo")
        for arg in [*sess.get_inputs(), *sess.get_outputs()]:
            if arg.name == name:
                return TensorInfo(onnx.TensorProto.DataType.Name(_elem(self._model, name)), arg.shape)
        raise PopartError(f"getInfo: no input or anchor named {name!r}")

    @property
    def report(self) -> Any:
        sess = self._need("report")
        return (self._pipelined or sess).report

    def _need(self, what: str) -> _OrtSession:
        if self._session is None:
            raise PopartError(f"{what}: call prepareDevice() first")
        return self._session


def _output_shapes(sess: _OrtSession) -> dict[str, list[int]]:
    """Each output's shape in one batch (a symbolic dimension as 1)."""
    return {o.name: [d if isinstance(d, int) else 1 for d in o.shape] for o in sess.get_outputs()}


def _dims(vi: onnx.ValueInfoProto) -> list[int]:
    return [int(d.dim_value) for d in vi.type.tensor_type.shape.dim]


def _read_model(fn: Any) -> onnx.ModelProto:
    from softipu.frontends.onnx.load import load_model  # noqa: PLC0415

    return load_model(fn)[0]


def _elem(model: onnx.ModelProto, name: str) -> int:
    for vi in [*model.graph.output, *model.graph.input, *model.graph.value_info]:
        if vi.name == name and vi.type.tensor_type.elem_type:
            return vi.type.tensor_type.elem_type
    return onnx.TensorProto.FLOAT


def _with_anchor_outputs(model: onnx.ModelProto, anchors: list[str]) -> onnx.ModelProto:
    """The model with every anchored tensor among its outputs (PopART anchors any tensor)."""
    model = onnx.shape_inference.infer_shapes(model)
    outputs = {o.name for o in model.graph.output}
    known = {vi.name: vi for vi in [*model.graph.value_info, *model.graph.input]}
    produced = {o for n in model.graph.node for o in n.output} | {vi.name for vi in model.graph.input}
    for name in anchors:
        if name in outputs:
            continue
        if name not in produced:
            raise PopartError(f"DataFlow anchors tensor {name!r}, which no op of the model makes")
        vi = known.get(name) or helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
        model.graph.output.append(vi)
    return model
