"""An ONNX graph re-expressed as a ``torch.nn.Module``, so that PyTorch's autograd (through the torch
frontend's training path) differentiates it: no gradient is written here.

Every float initializer becomes a trainable ``nn.Parameter`` (named by the initializer, dots made
safe); other initializers are buffers. ``forward(*inputs)`` evaluates the nodes in order with one
torch function per op type (:data:`TORCH_OPS`), following the ONNX semantics of the opset the model
imports (``Softmax``/``LogSoftmax`` below opset 13 work on the input flattened at ``axis``). PopART's
losses (``ai.graphcore`` ``L1Loss``, ``NllLoss``, ``IdentityLoss``) call torch's loss functions or
``record_loss``, so the training path finds them as it finds a PopTorch model's loss.

>>> import numpy as np, onnx
>>> from onnx import helper
>>> g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
...     [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])],
...     [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])])
>>> OnnxModule(helper.make_model(g), ["y"])(torch.tensor([-1.0, 2.0]))
(tensor([0., 2.]),)
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F  # noqa: N812 - torch's own alias

from softipu.frontends.errors import UnsupportedOpsError
from softipu.frontends.onnx.load import IPU_NUMBERS, PIPELINE_STAGES, to_numpy
from softipu.frontends.poptorch_blocks import Block
from softipu.frontends.torch.custom_ops import NAME_SCOPES
from softipu.frontends.torch.training.losses import record_loss

__all__ = ["OnnxModule", "TORCH_OPS", "missing_torch_ops", "node_placement"]

Fn = Callable[[list[Any], dict[str, Any], int], Any]  # (inputs, attributes, opset) -> value(s)


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    out = {}
    for a in node.attribute:
        value = onnx.helper.get_attribute_value(a)
        if isinstance(value, bytes):
            value = value.decode()
        elif isinstance(value, onnx.TensorProto):
            value = torch.from_numpy(np.array(to_numpy(value)))
        out[a.name] = value
    return out


def _flat_softmax(fn: Callable[..., torch.Tensor]) -> Fn:
    def run(x: list[Any], a: dict[str, Any], opset: int) -> torch.Tensor:
        t = x[0]
        axis = int(a.get("axis", -1 if opset >= 13 else 1)) % max(t.ndim, 1)
        if opset >= 13:
            return fn(t, dim=axis)
        lead = int(np.prod(t.shape[:axis], dtype=np.int64))
        return fn(t.reshape(lead, -1), dim=1).reshape(t.shape)
    return run


def _gemm(x: list[Any], a: dict[str, Any], _: int) -> torch.Tensor:
    m = x[0].t() if a.get("transA", 0) else x[0]
    w = x[1].t() if a.get("transB", 0) else x[1]
    y = float(a.get("alpha", 1.0)) * (m @ w)
    return y + float(a.get("beta", 1.0)) * x[2] if len(x) > 2 and x[2] is not None else y


def _reduced(value: torch.Tensor, a: dict[str, Any]) -> torch.Tensor:
    red = str(a.get("reduction", "mean")).lower()
    if red in ("none", "noreduction", "2"):
        return value
    return value.sum() if red in ("sum", "0") else value.mean()


def _l1loss(x: list[Any], a: dict[str, Any], _: int) -> torch.Tensor:
    # PopART's L1Loss is lambda * |x| reduced (x is the difference already); marked as the loss
    # itself, scaled, so the scaled value is what is differentiated.
    out = _reduced(float(a.get("lambda", 1.0)) * x[0].abs(), a)
    record_loss(out)
    return out


def _nllloss(x: list[Any], a: dict[str, Any], _: int) -> torch.Tensor:
    probs, labels = x[0], x[1].long()
    logp = probs if int(a.get("inputIsLogProbability", 0)) else torch.log(probs)
    red = str(a.get("reduction", "mean")).lower()
    torch_red = "none" if red in ("none", "noreduction", "2") else ("sum" if red in ("sum", "0") else "mean")
    ignore = a.get("ignoreIndex")
    flat = logp.reshape(-1, logp.shape[-1])
    out = F.nll_loss(flat, labels.reshape(-1), reduction=torch_red,
                     ignore_index=-100 if ignore is None else int(ignore))
    if torch_red == "none":
        out = out.reshape(labels.shape)
        record_loss(out)
    return out


def _identityloss(x: list[Any], a: dict[str, Any], _: int) -> torch.Tensor:
    out = _reduced(x[0], a)
    record_loss(out)
    return out


def _reshape(x: list[Any], a: dict[str, Any], _: int) -> torch.Tensor:
    shape = [int(d) for d in x[1].tolist()]
    if not int(a.get("allowzero", 0)):
        shape = [x[0].shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return x[0].reshape(shape)


def _flatten(x: list[Any], a: dict[str, Any], _: int) -> torch.Tensor:
    axis = int(a.get("axis", 1)) % (x[0].ndim + 1) if x[0].ndim else 0
    return x[0].reshape(int(np.prod(x[0].shape[:axis], dtype=np.int64)), -1)


def _reduce(fn: Callable[..., torch.Tensor]) -> Fn:
    def run(x: list[Any], a: dict[str, Any], _: int) -> torch.Tensor:
        axes = a.get("axes")
        if axes is None and len(x) > 1 and x[1] is not None:
            axes = [int(v) for v in x[1].tolist()]
        keep = bool(a.get("keepdims", 1))
        if not axes:
            return fn(x[0], dim=tuple(range(x[0].ndim)), keepdim=keep)
        return fn(x[0], dim=tuple(int(v) for v in axes), keepdim=keep)
    return run


def _conv(x: list[Any], a: dict[str, Any], _: int) -> torch.Tensor:
    spatial = x[0].ndim - 2
    pads = list(a.get("pads", [0] * 2 * spatial))
    if a.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        raise UnsupportedOpsError(f"Conv auto_pad={a['auto_pad']!r} in a TrainingSession: give explicit pads")
    fn = (F.conv1d, F.conv2d, F.conv3d)[spatial - 1]
    inp = x[0]
    if pads[:spatial] != pads[spatial:]:
        inp = F.pad(inp, [p for i in reversed(range(spatial)) for p in (pads[i], pads[i + spatial])])
        pads = [0] * 2 * spatial
    return fn(inp, x[1], x[2] if len(x) > 2 else None, stride=tuple(a.get("strides", [1] * spatial)),
              padding=tuple(pads[:spatial]), dilation=tuple(a.get("dilations", [1] * spatial)),
              groups=int(a.get("group", 1)))


def _pool(kind: str) -> Fn:
    def run(x: list[Any], a: dict[str, Any], _: int) -> torch.Tensor:
        spatial = x[0].ndim - 2
        k = tuple(a["kernel_shape"])
        pads = list(a.get("pads", [0] * 2 * spatial))
        stride = tuple(a.get("strides", [1] * spatial))
        if pads[:spatial] != pads[spatial:]:
            raise UnsupportedOpsError(f"{kind} with uneven pads {pads} in a TrainingSession")
        if kind == "MaxPool":
            fn = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[spatial - 1]
            return fn(x[0], k, stride, tuple(pads[:spatial]), ceil_mode=bool(a.get("ceil_mode", 0)))
        fn = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[spatial - 1]
        return fn(x[0], k, stride, tuple(pads[:spatial]), ceil_mode=bool(a.get("ceil_mode", 0)),
                  count_include_pad=bool(a.get("count_include_pad", 0)))
    return run


def _binary(fn: Callable[[Any, Any], Any]) -> Fn:
    return lambda x, a, _: fn(x[0], x[1])


def _unary(fn: Callable[[Any], Any]) -> Fn:
    return lambda x, a, _: fn(x[0])


TORCH_OPS: dict[str, Fn] = {
    "Add": _binary(torch.add), "Sub": _binary(torch.sub), "Mul": _binary(torch.mul),
    "Div": _binary(torch.div), "Pow": _binary(torch.pow), "MatMul": _binary(torch.matmul),
    "Max": lambda x, a, _: torch.stack(torch.broadcast_tensors(*x)).amax(0),
    "Min": lambda x, a, _: torch.stack(torch.broadcast_tensors(*x)).amin(0),
    "Sum": lambda x, a, _: sum(x[1:], x[0]),
    "Gemm": _gemm, "Relu": _unary(torch.relu), "Sigmoid": _unary(torch.sigmoid), "Tanh": _unary(torch.tanh),
    "Exp": _unary(torch.exp), "Log": _unary(torch.log), "Neg": _unary(torch.neg), "Abs": _unary(torch.abs),
    "Sqrt": _unary(torch.sqrt), "Reciprocal": _unary(torch.reciprocal), "Identity": _unary(lambda t: t),
    "Erf": _unary(torch.erf), "Softplus": _unary(F.softplus),
    "LeakyRelu": lambda x, a, _: F.leaky_relu(x[0], float(a.get("alpha", 0.01))),
    "Elu": lambda x, a, _: F.elu(x[0], float(a.get("alpha", 1.0))),
    "Gelu": lambda x, a, _: F.gelu(x[0], approximate=str(a.get("approximate", "none"))),
    "Dropout": lambda x, a, _: x[0],  # ONNX Dropout in an exported graph is the identity when not training
    "Softmax": _flat_softmax(torch.softmax), "LogSoftmax": _flat_softmax(torch.log_softmax),
    "Reshape": _reshape, "Flatten": _flatten,
    "Transpose": lambda x, a, _: x[0].permute(*(a.get("perm") or reversed(range(x[0].ndim)))),
    "Concat": lambda x, a, _: torch.cat(list(x), dim=int(a["axis"])),
    "Unsqueeze": lambda x, a, _: x[0].reshape(_unsqueezed(x, a)),
    "Squeeze": lambda x, a, _: x[0].squeeze(tuple(a.get("axes") or (x[1].tolist() if len(x) > 1 else ()))
                                            or None) if (a.get("axes") or len(x) > 1) else x[0].squeeze(),
    "Cast": lambda x, a, _: x[0].to(torch.from_numpy(
        np.zeros(0, onnx.helper.tensor_dtype_to_np_dtype(int(a["to"])))).dtype),
    "Constant": lambda x, a, _: a["value"],
    "ReduceMean": _reduce(torch.mean), "ReduceSum": _reduce(torch.sum),
    "ReduceMax": _reduce(torch.amax), "ReduceMin": _reduce(torch.amin),
    "Conv": _conv, "MaxPool": _pool("MaxPool"), "AveragePool": _pool("AveragePool"),
    "GlobalAveragePool": lambda x, a, _: x[0].mean(dim=tuple(range(2, x[0].ndim)), keepdim=True),
    "GlobalMaxPool": lambda x, a, _: x[0].amax(dim=tuple(range(2, x[0].ndim)), keepdim=True),
    "ai.graphcore::L1Loss": _l1loss, "ai.graphcore::NllLoss": _nllloss,
    "ai.graphcore::IdentityLoss": _identityloss,
}


def _unsqueezed(x: list[Any], a: dict[str, Any]) -> list[int]:
    axes = a.get("axes") or [int(v) for v in x[1].tolist()]
    rank = x[0].ndim + len(axes)
    axes = sorted(int(v) % rank for v in axes)
    dims = list(x[0].shape)
    for ax in axes:
        dims.insert(ax, 1)
    return dims


def _key(node: onnx.NodeProto) -> str:
    return node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"


def missing_torch_ops(model: onnx.ModelProto) -> dict[str, list[str]]:
    """Op types without a torch re-expression, with the names of their nodes (all at once)."""
    missing: dict[str, list[str]] = {}
    for k, node in enumerate(model.graph.node):
        if _key(node) not in TORCH_OPS:
            missing.setdefault(_key(node), []).append(node.name or f"#{k}")
    return missing


def node_placement(model: onnx.ModelProto) -> list[tuple[int | None, int | None]]:
    """(``virtualGraph`` IPU, ``pipelineStage``) of each node, None where not set: PopART's
    ``__ipu_number`` and ``__pipeline_stage``, as attributes or as the metadata the loader keeps
    them in (:data:`~softipu.frontends.onnx.load.IPU_NUMBERS`)."""
    props = {p.key: p.value for p in model.metadata_props}
    ipus = {k: int(v) for k, v in json.loads(props.get(IPU_NUMBERS, "{}")).items()}
    stages = {k: int(v) for k, v in json.loads(props.get(PIPELINE_STAGES, "{}")).items()}
    out = []
    for node in model.graph.node:
        attrs = {a.name: int(a.i) for a in node.attribute if a.name in ("__ipu_number", "__pipeline_stage")}
        first = node.output[0] if node.output else ""
        out.append((attrs.get("__ipu_number", ipus.get(first)),
                    attrs.get("__pipeline_stage", stages.get(first))))
    return out


def _safe(name: str) -> str:
    return "w_" + "".join(c if c.isalnum() else "_" for c in name)


class OnnxModule(torch.nn.Module):
    """``model``'s graph as a module returning ``outputs`` (tensor names) in order. With ``placed``
    each node with a ``virtualGraph`` runs in a PopTorch block on that IPU (block ``stage{s}`` of
    its ``pipelineStage``, else of its IPU), so the torch frontend's model parallelism
    (``frontends/torch/pipeline.py``) places, shards or pipelines it."""

    def __init__(self, model: onnx.ModelProto, outputs: Sequence[str], placed: bool = False) -> None:
        super().__init__()
        missing = missing_torch_ops(model)
        if missing:
            listed = "; ".join(f"{op} ({', '.join(names[:5])})" for op, names in missing.items())
            raise UnsupportedOpsError(f"these ONNX ops have no torch re-expression for training: {listed}; "
                                      f"supported: {', '.join(sorted(TORCH_OPS))}")
        self._graph = model.graph
        self._opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 11)
        inits = {t.name for t in model.graph.initializer}
        self.input_names = [vi.name for vi in model.graph.input if vi.name not in inits]
        self.output_names = list(outputs)
        self._blocks: list[tuple[str, int] | None] = []
        for ipu, stage in node_placement(model):
            self._blocks.append(None if not placed or ipu is None
                                else (f"stage{ipu if stage is None else stage}", ipu))
        if any(self._blocks):
            NAME_SCOPES[0] += 1  # traces keep node annotations (the blocks) from now on
        self.param_names: dict[str, str] = {}  # initializer -> attribute
        for t in model.graph.initializer:
            value = torch.from_numpy(np.array(to_numpy(t)))
            attr = _safe(t.name)
            self.param_names[t.name] = attr
            if value.is_floating_point():
                self.register_parameter(attr, torch.nn.Parameter(value))
            else:
                self.register_buffer(attr, value)

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        env: dict[str, Any] = {name: getattr(self, attr) for name, attr in self.param_names.items()}
        env.update(zip(self.input_names, inputs, strict=True))
        for node, block in zip(self._graph.node, self._blocks, strict=True):
            args = [env[i] if i else None for i in node.input]
            with contextlib.nullcontext() if block is None else Block(block[0], ipu_id=block[1]):
                out = TORCH_OPS[_key(node)](args, _attrs(node), self._opset)
            outs = out if isinstance(out, (tuple, list)) else (out,)
            env.update(zip(node.output, outs, strict=False))
        return tuple(env[name] for name in self.output_names)
