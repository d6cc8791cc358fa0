"""PopART's ``TrainingSession`` and optimizers (``ConstSGD``, ``SGD``, ``Adam``) on a simulated IPU.

The ONNX model (with its loss from ``builder.aiGraphcore``) is re-expressed as a torch module
(:mod:`.to_torch`) and trained by the torch frontend's training path (``training_model``): PyTorch's
autograd makes the gradients, the PopTorch optimizers' device updates apply them. PopART's
optimizer dictionaries map onto those optimizers: ``SGD`` (Combined variant, PopART's default) ->
``poptorch.optim.SGD(use_combined_accum=True)``; ``Adam`` with ``WeightDecayMode.Decay`` (PopART's
default) -> ``AdamW``, with ``L2Regularization`` -> ``Adam``. A ``(value, isConst)`` pair marks the
hyper-parameter constant or variable as PopART does (``updateOptimizerFromHost`` may change only
the variable ones; the learning rate is always variable).

>>> import numpy as np, softipu.popart as popart
>>> popart.ConstSGD(0.1).learning_rate
0.1
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx
import torch

from softipu.frontends.errors import InputError
from softipu.frontends.onnx.popart import DataFlow, DeviceInfo, PopartError, PyStepIO, SessionOptions
from softipu.frontends.onnx.popart_parallel import model_blocks, placed_model, replica_ipus
from softipu.frontends.onnx.to_torch import OnnxModule

__all__ = ["Adam", "AdamMode", "ConstSGD", "PyWeightsIO", "SGD", "TrainingSession", "WeightDecayMode"]


class WeightDecayMode:
    Decay, L2Regularization = "Decay", "L2Regularization"


class AdamMode:
    Adam, AdamNoBias, AdaMax, Lamb, LambNoBias = "Adam", "AdamNoBias", "AdaMax", "Lamb", "LambNoBias"


def _pair(value: Any, const_default: bool) -> tuple[float, bool]:
    if isinstance(value, (tuple, list)):
        return float(value[0]), bool(value[1])
    return float(value), const_default


class _Optimizer:
    """A PopART optimizer: hyper-parameters as ``name -> (value, isConst)``."""

    _KEYS: dict[str, float] = {}

    def __init__(self, values: Mapping[str, Any]) -> None:
        unknown = sorted(set(values) - set(self._KEYS))
        if unknown:
            raise PopartError(f"{type(self).__name__}: unknown hyper-parameter(s) {unknown}; "
                              f"known: {sorted(self._KEYS)}")
        # A bare value (or one not given) is constant, as PopART's defaults are.
        self.values = {k: _pair(values.get(k, d), True) for k, d in self._KEYS.items()}

    def value(self, key: str) -> float:
        return self.values[key][0]

    @property
    def learning_rate(self) -> float:
        return self.value("defaultLearningRate")

    def _mark(self, opt: Any, names: Mapping[str, str]) -> Any:
        for key, attr in names.items():
            if attr == "lr":
                continue
            if self.values[key][1]:
                opt.variable_attrs.markAsConstant(attr)
            else:
                opt.variable_attrs.markAsVariable(attr)
        return opt


class SGD(_Optimizer):
    """``popart.SGD({"defaultLearningRate": (0.1, False), "defaultMomentum": (0.9, True), ...})``."""

    _KEYS = {"defaultLearningRate": 0.1, "defaultMomentum": 0.0, "defaultDampening": 0.0,
             "defaultWeightDecay": 0.0, "defaultVelocityScaling": 1.0, "lossScaling": 1.0}
    _ATTRS = {"defaultLearningRate": "lr", "defaultMomentum": "momentum", "defaultDampening": "dampening",
              "defaultWeightDecay": "weight_decay", "lossScaling": "loss_scaling"}

    def torch_optimizer(self, params: Any) -> Any:
        from softipu.frontends.torch import optim  # noqa: PLC0415 - poptorch.optim's definitions

        opt = optim.SGD(params, lr=self.learning_rate, momentum=self.value("defaultMomentum"),
                        dampening=self.value("defaultDampening"),
                        weight_decay=self.value("defaultWeightDecay"),
                        loss_scaling=self.value("lossScaling"), use_combined_accum=True,
                        velocity_scaling=self.value("defaultVelocityScaling"))
        return self._mark(opt, self._ATTRS)


class ConstSGD(SGD):
    """``popart.ConstSGD(learning_rate, weight_decay=0, loss_scaling=1)``: every value constant
    (softipu keeps the learning rate a device variable; changing it needs a new session in PopART)."""

    def __init__(self, learning_rate: float, weight_decay: float = 0.0, loss_scaling: float = 1.0) -> None:
        super().__init__({"defaultLearningRate": (learning_rate, True),
                          "defaultWeightDecay": (weight_decay, True), "lossScaling": (loss_scaling, True)})


class Adam(_Optimizer):
    """``popart.Adam({"defaultLearningRate": ..., "defaultBeta1", "defaultBeta2", "defaultEps",
    "defaultWeightDecay", "lossScaling"}, mode=AdamMode.Adam, weight_decay_mode=WeightDecayMode.Decay)``."""

    _KEYS = {"defaultLearningRate": 1e-3, "defaultBeta1": 0.9, "defaultBeta2": 0.999, "defaultEps": 1e-6,
             "defaultWeightDecay": 0.0, "lossScaling": 1.0, "maxWeightNorm": float("inf")}
    _ATTRS = {"defaultLearningRate": "lr", "defaultEps": "eps", "defaultWeightDecay": "weight_decay",
              "lossScaling": "loss_scaling"}

    def __init__(self, values: Mapping[str, Any], mode: str = AdamMode.Adam,
                 weight_decay_mode: str = WeightDecayMode.Decay, **kwargs: Any) -> None:
        super().__init__(values)
        if str(mode).split(".")[-1] != AdamMode.Adam:
            raise PopartError(f"popart.Adam(mode={mode!r}): softipu trains with AdamMode.Adam only; "
                              "use AdamMode.Adam (or softipu.poptorch with optim.LAMB for LAMB)")
        self.weight_decay_mode = str(weight_decay_mode).split(".")[-1]
        if self.values["maxWeightNorm"][0] != float("inf"):
            raise PopartError("popart.Adam: maxWeightNorm is not supported; leave it unset")

    def torch_optimizer(self, params: Any) -> Any:
        from softipu.frontends.torch import optim  # noqa: PLC0415 - poptorch.optim's definitions

        cls = optim.AdamW if self.weight_decay_mode == WeightDecayMode.Decay else optim.Adam
        betas = (self.value("defaultBeta1"), self.value("defaultBeta2"))
        opt = cls(params, lr=self.learning_rate, betas=betas,
                  eps=self.value("defaultEps"), weight_decay=self.value("defaultWeightDecay"),
                  loss_scaling=self.value("lossScaling"))
        return self._mark(opt, self._ATTRS)


class PyWeightsIO:
    """``PyWeightsIO({name: array})``: arrays ``readWeights`` fills (``writeWeights`` reads)."""

    def __init__(self, weights: Mapping[str, np.ndarray]) -> None:
        self.weights = weights


class TrainingSession:
    """PopART's ``TrainingSession(fnModel, dataFlow, loss, optimizer, deviceInfo, ...)``:
    ``prepareDevice()`` builds the training step, ``weightsFromHost()``, then each
    ``run(PyStepIO(...))`` trains ``batchesPerStep`` steps (each over ``accumulationFactor``
    micro-batches when gradient accumulation is on); ``weightsToHost()`` + ``readWeights`` or
    ``modelToHost(path)`` give the trained weights."""

    def __init__(self, fnModel: Any, dataFlow: DataFlow, loss: str, optimizer: Any,  # noqa: N803
                 deviceInfo: DeviceInfo, inputShapeInfo: Any = None, patterns: Any = None,  # noqa: N803
                 userOptions: SessionOptions | None = None, name: str = "training") -> None:  # noqa: N803
        from softipu.frontends.onnx.popart import _read_model  # noqa: PLC0415

        if not isinstance(optimizer, _Optimizer):
            raise PopartError(f"TrainingSession: optimizer must be popart.ConstSGD, SGD or Adam, "
                              f"got {type(optimizer).__name__}")
        self.dataFlow, self.deviceInfo, self.name = dataFlow, deviceInfo, name
        self.options = userOptions or SessionOptions()
        self._model = fnModel if isinstance(fnModel, onnx.ModelProto) else _read_model(fnModel)
        produced = {o for n in self._model.graph.node for o in n.output}
        if loss not in produced:
            raise PopartError(f"TrainingSession: no op of the model makes the loss tensor {loss!r}")
        missing = [a for a in dataFlow.anchors if a not in produced]
        if missing:
            raise PopartError(f"DataFlow anchors tensor(s) {missing}, which no op of the model makes")
        self.loss, self._optimizer = loss, optimizer
        self._outputs = list(dataFlow.anchors) + ([] if loss in dataFlow.anchors else [loss])
        self._module: OnnxModule | None = None
        self._trainer: Any = None
        self._weights_loaded = False
        self._out_shapes: dict[str, tuple[int, ...]] | None = None

    # -- set-up ----------------------------------------------------------------------------------
    def _factors(self) -> tuple[int, int]:
        o = self.options
        af = int(o.accumulationFactor) if o.enableGradientAccumulation else 1
        rf = int(o.replicatedGraphCount) if o.enableReplicatedGraphs else 1
        return af, rf

    def _check_options(self) -> int:
        """PopART's refusals of bad option combinations; the IPUs of one replica."""
        o, (af, rf) = self.options, self._factors()
        if int(o.accumulationFactor) > 1 and not o.enableGradientAccumulation:
            raise PopartError(f"SessionOptions: accumulationFactor is {o.accumulationFactor} but "
                              "enableGradientAccumulation is False; set it True (or the factor to 1)")
        if int(o.replicatedGraphCount) > 1 and not o.enableReplicatedGraphs:
            raise PopartError(f"SessionOptions: replicatedGraphCount is {o.replicatedGraphCount} but "
                              "enableReplicatedGraphs is False; set it True (or the count to 1)")
        if af < 1 or rf < 1:
            raise PopartError(f"SessionOptions: accumulationFactor ({af}) and replicatedGraphCount ({rf}) "
                              "must be >= 1")
        return replica_ipus(o, self.deviceInfo.numIpus, rf)

    def prepareDevice(self, loadEngine: bool = True) -> None:  # noqa: N802, N803
        from softipu.frontends.torch.options import Options, OutputMode  # noqa: PLC0415
        from softipu.frontends.torch.training.model import training_model  # noqa: PLC0415

        af, rf = self._factors()
        per_replica = self._check_options()
        self._model = placed_model(self._model, self.options, per_replica, training=True,
                                   accumulation=af > 1)
        parallel = model_blocks(self._model, self.options, per_replica)
        self._module = OnnxModule(self._model, self._outputs, placed=parallel is not None)
        reduction = str(self.options.accumulationAndReplicationReductionType).lower()
        opts = Options(target=self.deviceInfo.target.with_num_ipus(per_replica), replication_factor=rf,
                       device_iterations=self.dataFlow.batchesPerStep, gradient_accumulation=af,
                       accumulation_reduction="sum" if reduction.endswith("sum") else "mean",
                       output_mode=OutputMode.ALL, engine_options=dict(self.options.engineOptions),
                       model_parallel=parallel or {})
        optimizer = self._optimizer.torch_optimizer(self._module.parameters())
        self._trainer = training_model(self._module, optimizer, opts)
        # PopART compiles here (and refuses a bad placement here): with every input's shape known,
        # the step is compiled for a step's inputs now rather than at the first run.
        shapes, lead = self._input_shapes(), self.dataFlow.batchesPerStep * af * rf
        names = self._module.input_names
        if all(n in shapes for n in names):
            dims = [[lead * shapes[n][0], *shapes[n][1:]] if shapes[n] else [lead] for n in names]
            self._trainer.compile(*(torch.from_numpy(np.zeros(d, self._anchor_dtype(n)))
                                    for n, d in zip(names, dims, strict=True)))

    def weightsFromHost(self) -> None:  # noqa: N802
        self._need("weightsFromHost")
        self._weights_loaded = True

    def updateOptimizerFromHost(self, optimizer: Any) -> None:  # noqa: N802
        """New values of the variable hyper-parameters (the learning rate...) from the next run."""
        trainer = self._need("updateOptimizerFromHost")
        if type(optimizer) is not type(self._optimizer):
            raise PopartError(f"updateOptimizerFromHost: the session trains with "
                              f"{type(self._optimizer).__name__}, got {type(optimizer).__name__}; make a new "
                              "session to change the optimizer")
        for key, (value, const) in self._optimizer.values.items():
            if const and optimizer.values[key][0] != value and key != "defaultLearningRate":
                raise PopartError(f"updateOptimizerFromHost: {key} is constant in the session ({value}); "
                                  f"it cannot become {optimizer.values[key][0]} (give it as (value, False))")
        self._optimizer = optimizer
        trainer.set_optimizer(optimizer.torch_optimizer(self._module.parameters()))

    # -- running ---------------------------------------------------------------------------------
    def initAnchorArrays(self) -> dict[str, np.ndarray]:  # noqa: N802
        self._need("initAnchorArrays")
        return {name: np.zeros(self._anchor_shape(name, art), self._anchor_dtype(name))
                for name, art in self.dataFlow.anchors.items()}

    def _anchor_shape(self, name: str, art: Any) -> list[int]:
        af, rf = self._factors()
        bps = self.dataFlow.batchesPerStep
        lead = {"ALL": bps, "EVERYN": bps // art.rp()}.get(art.kind, 1)
        return [d for d in (lead, af, rf) if d > 1] + list(self._shapes()[name])

    def _shapes(self) -> dict[str, tuple[int, ...]]:
        """Every output's shape, from one eager run of the module on zeros (PopART's losses are
        unknown to ONNX shape inference)."""
        if self._out_shapes is None:
            zeros = []
            inits = {t.name for t in self._model.graph.initializer}
            for vi in self._model.graph.input:
                if vi.name in inits:
                    continue
                dims = [int(d.dim_value) for d in vi.type.tensor_type.shape.dim]
                dtype = onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
                zeros.append(torch.from_numpy(np.zeros(dims, dtype)))
            with torch.no_grad():
                outs = self._module(*zeros)
            self._out_shapes = {n: tuple(o.shape) for n, o in zip(self._outputs, outs, strict=True)}
        return self._out_shapes

    def _input_shapes(self) -> dict[str, list[int]]:
        """The model's inputs' shapes, where every dimension is known."""
        shapes = {}
        for vi in self._model.graph.input:
            dims = vi.type.tensor_type.shape.dim
            if all(d.HasField("dim_value") for d in dims):
                shapes[vi.name] = [int(d.dim_value) for d in dims]
        return shapes

    def _anchor_dtype(self, name: str) -> np.dtype:
        from softipu.frontends.onnx.popart import _elem  # noqa: PLC0415

        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(_elem(self._model, name)))

    def run(self, stepio: PyStepIO, debugName: str = "") -> None:  # noqa: N803
        trainer = self._need("run")
        if not self._weights_loaded:
            raise PopartError("run: call weightsFromHost() first (the weights are not on the device)")
        names = self._module.input_names
        missing = [n for n in names if n not in stepio.inputs]
        if missing:
            raise InputError(f"PyStepIO has no data for input(s) {missing}; the model's inputs are {names}")
        af, rf = self._factors()
        bps = self.dataFlow.batchesPerStep
        feeds = []
        for n in names:
            value = np.asarray(stepio.inputs[n])
            micro = [d for d in (bps, af, rf) if d > 1]
            if list(value.shape[:len(micro)]) != micro:
                raise InputError(f"PyStepIO input {n!r} has shape {value.shape}; a step needs leading "
                                 f"dimensions {micro} (batchesPerStep, accumulationFactor, replicas)")
            rest = value.shape[len(micro):]
            want = self._input_shapes().get(n)
            if want is not None and list(rest) != want:
                raise InputError(f"PyStepIO input {n!r} has shape {value.shape}: after the leading "
                                 f"dimensions {micro} (batchesPerStep, accumulationFactor, replicas, those "
                                 f"> 1) a micro-batch must have the input's shape {want}")
            feeds.append(torch.from_numpy(np.ascontiguousarray(value.reshape((-1,) + rest[1:]))
                                          if rest else value.reshape(-1)))
        outs = trainer(*feeds)
        outs = outs if isinstance(outs, tuple) else (outs,)
        for name, value in zip(self._outputs, outs, strict=False):
            if name in self.dataFlow.anchors:
                self._fill(stepio.outputs[name], name, value.detach().numpy())

    def _fill(self, dest: np.ndarray, name: str, values: np.ndarray) -> None:
        af, rf = self._factors()
        bps = self.dataFlow.batchesPerStep
        art = self.dataFlow.anchors[name]
        values = values.reshape((bps, af, rf) + tuple(self._shapes()[name]))
        if art.kind == "FINAL":
            picked = values[-1]
        elif art.kind == "SUM":
            picked = values.sum(axis=0, dtype=values.dtype)
        elif art.kind == "EVERYN":
            picked = values[art.rp() - 1::art.rp()]
        else:
            picked = values
        np.copyto(dest, picked.reshape(dest.shape))

    # -- weights ---------------------------------------------------------------------------------
    def weightsToHost(self) -> None:  # noqa: N802
        self._need("weightsToHost").copy_weights_to_host()

    def _trained(self) -> dict[str, np.ndarray]:
        self._need("weights").copy_weights_to_host()  # PopART needs weightsToHost() first; harmless here
        return {name: getattr(self._module, attr).detach().numpy()
                for name, attr in self._module.param_names.items()}

    def readWeights(self, weightsIo: PyWeightsIO) -> None:  # noqa: N802, N803
        trained = self._trained()
        for name, dest in weightsIo.weights.items():
            if name not in trained:
                raise PopartError(f"readWeights: no weight {name!r}; the weights are {sorted(trained)}")
            np.copyto(dest, trained[name].reshape(np.shape(dest)))

    def writeWeights(self, weightsIo: PyWeightsIO) -> None:  # noqa: N802, N803
        self._need("writeWeights")
        with torch.no_grad():
            for name, value in weightsIo.weights.items():
                attr = self._module.param_names.get(name)
                if attr is None:
                    raise PopartError(f"writeWeights: no weight {name!r}")
                getattr(self._module, attr).copy_(torch.from_numpy(np.asarray(value)))
        self._trainer.copy_weights_to_device()

    def modelToHost(self, path: str) -> None:  # noqa: N802
        """Write the model with its trained weights as an ONNX file."""
        trained = self._trained()
        model = onnx.ModelProto()
        model.CopyFrom(self._model)
        for t in model.graph.initializer:
            t.CopyFrom(onnx.numpy_helper.from_array(trained[t.name].astype(
                onnx.helper.tensor_dtype_to_np_dtype(t.data_type)), t.name))
        onnx.save(model, path)

    def getCycleCount(self) -> int:  # noqa: N802
        return self._need("getCycleCount").cycle_count

    @property
    def report(self) -> Any:
        return self._need("report").report

    def _need(self, what: str) -> Any:
        if self._trainer is None:
            raise PopartError(f"{what}: call prepareDevice() first")
        return self._trainer
