"""Model parallelism of the PopART sessions: virtual graph modes, pipelining checks, the blocks the
torch frontend places, and pipelined inference.

Both sessions read the same options: ``virtualGraphMode`` (Off, Manual: ops placed with
``builder.virtualGraph``; Auto: placed by PopART's AutoVirtualGraph transform,
:mod:`~softipu.frontends.onnx.auto_virtual`) and ``enablePipelining``. A placed model runs through
the torch frontend's model parallelism (``frontends/torch/pipeline.py``): the ONNX graph becomes an
:class:`~softipu.frontends.onnx.to_torch.OnnxModule` whose placed nodes sit in PopTorch blocks.
A pipelined inference step runs its ``batchesPerStep`` batches as the pipeline's micro-batches
(PopART's fill / main / flush), and its cycle count is the pipeline's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
import torch

from softipu.frontends.onnx.auto_virtual import with_auto_virtual_graphs
from softipu.frontends.onnx.errors import PopartError
from softipu.frontends.onnx.to_torch import OnnxModule, node_placement

__all__ = ["PipelinedInference", "model_blocks", "placed_model", "replica_ipus", "virtual_graph_mode"]


def virtual_graph_mode(options: Any) -> str:
    """``options.virtualGraphMode`` as "Off", "Manual" or "Auto" (an enum or its name)."""
    return str(options.virtualGraphMode).split(".")[-1]


def replica_ipus(options: Any, ipus: int, rf: int) -> int:
    """The IPUs of one replica; PopART's refusal of pipelining without IPUs or virtual graphs."""
    if ipus % rf:
        raise PopartError(f"SessionOptions: replicatedGraphCount {rf} does not divide the device's "
                          f"{ipus} IPUs; acquire a device with a multiple of {rf} IPUs")
    per_replica = ipus // rf
    mode = virtual_graph_mode(options)
    if options.enablePipelining and (mode == "Off" or per_replica < 2):
        raise PopartError(f"Pipelining requires more than 1 IPU (currently {per_replica} a replica: "
                          f"{ipus} IPUs / {rf} replicas) and the 'virtualGraphMode' session option to "
                          f"not be VirtualGraphMode::Off (it is {mode}); set "
                          "virtualGraphMode = popart.VirtualGraphMode.Manual and place the ops with "
                          "builder.virtualGraph, or VirtualGraphMode.Auto")
    return per_replica


def placed_model(model: onnx.ModelProto, options: Any, per_replica: int, training: bool,
                 accumulation: bool = False) -> onnx.ModelProto:
    """``model`` with Auto mode's placement written in (PopART runs the transform on a replica's
    IPUs); the model itself in the other modes."""
    if virtual_graph_mode(options) != "Auto" or per_replica < 2:
        return model
    return with_auto_virtual_graphs(model, per_replica, training, accumulation,
                                    stages=bool(options.enablePipelining))


def model_blocks(model: onnx.ModelProto, options: Any, per_replica: int) -> dict[str, Any] | None:
    """The torch frontend's ``model_parallel`` config from the ops' virtual graphs and pipeline
    stages (Manual or Auto), or None when the model runs on one IPU."""
    if virtual_graph_mode(options) == "Off":
        return None
    placed, unplaced = {}, []
    for k, (node, (ipu, stage)) in enumerate(zip(model.graph.node, node_placement(model), strict=True)):
        if node.op_type == "Constant":
            continue
        if ipu is None:
            unplaced.append(node.name or f"#{k}")
            continue
        if not 0 <= ipu < per_replica:
            raise PopartError(f"op {node.name or node.op_type!r} is on virtual graph {ipu}, but a "
                              f"replica has {per_replica} IPU(s) (virtual graphs 0..{per_replica - 1})")
        placed[f"stage{ipu if stage is None else stage}"] = (ipu if stage is None else stage, 0, ipu)
    if placed and unplaced:
        raise PopartError(f"Either all Ops in the main graph must have their virtual graph ids set, or "
                          f"none must: {len(unplaced)} op(s) have none ({', '.join(unplaced[:5])}); "
                          "place them with builder.virtualGraph")
    if not placed:
        return None
    return {"strategy": "pipelined" if options.enablePipelining else "sharded", "blocks": placed}


class PipelinedInference:
    """An inference step of ``batchesPerStep`` batches pipelined over a replica's IPUs."""

    def __init__(self, model: onnx.ModelProto, outputs: Sequence[str], blocks: dict[str, Any], target: Any,
                 rf: int, batches: int, engine_options: Mapping[str, Any]) -> None:
        from softipu.frontends.torch.options import Options, OutputMode  # noqa: PLC0415
        from softipu.frontends.torch.runtime import inference_model  # noqa: PLC0415

        self.outputs = list(outputs)
        self.module = OnnxModule(model, self.outputs, placed=True)
        self.batches, self.rf = batches, rf
        opts = Options(target=target, replication_factor=rf, device_iterations=batches,
                       output_mode=OutputMode.ALL, engine_options=dict(engine_options), model_parallel=blocks)
        self.model = inference_model(self.module, opts)

    def run(self, inputs: Mapping[str, np.ndarray], shapes: Mapping[str, Sequence[int]]) -> list[dict]:
        """Per batch, the outputs (name -> array, a replica axis first when replicated);
        ``inputs`` are PopART's step arrays (``[batches][replicas]`` leading axes where above one),
        ``shapes`` each output's shape in one batch of one replica. The step's batches and replicas,
        in that order, are PopTorch's combined host batch."""
        lead = [d for d in (self.batches, self.rf) if d > 1]
        args = []
        for name in self.module.input_names:
            value = np.asarray(inputs[name])
            one = value.shape[len(lead):]
            rows = int(np.prod(lead, dtype=np.int64))
            args.append(torch.from_numpy(np.ascontiguousarray(
                value.reshape((rows * one[0], *one[1:]) if one else (rows,)))))
        with torch.no_grad():
            outs = self.model(*args)
        outs = outs if isinstance(outs, tuple) else (outs,)
        stacked = {n: o.numpy().reshape((self.batches, *lead[1 if self.batches > 1 else 0:], *shapes[n]))
                   for n, o in zip(self.outputs, outs, strict=True)}
        return [{n: v[b] for n, v in stacked.items()} for b in range(self.batches)]

    @property
    def cycle_count(self) -> int:
        return self.model.cycle_count

    @property
    def report(self) -> Any:
        return self.model.report
