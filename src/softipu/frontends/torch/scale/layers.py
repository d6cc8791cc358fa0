"""Price one distinct layer of a model for training, estimate-only, on one IPU.

A model at Pod scale is priced from its DISTINCT layers (a transformer layer, the embedding, the
head; ResNet's blocks), each built once in plain ``torch.nn`` at its real size and lowered through
the training path (:func:`~softipu.frontends.torch.training.joint.joint_graph` ->
:func:`~softipu.frontends.torch.training.lowering.lower_training` -> an estimate-only
:class:`~softipu.engine.Engine`), so its cycles and memory are the compiled graph's, never a FLOP
count. Nothing is multiplied per IPU or per replica here: :mod:`.pod` composes.

How one layer is priced:

* The layer is built under torch's ``FakeTensorMode`` (weights with shapes and dtypes, no data:
  estimate-only pricing never reads them), so tracing runs no arithmetic.
* Its activation input is made a parameter of a small wrapper, so the backward computes the input
  gradient (dX) the previous pipeline stage needs, as a middle layer of a model does; other inputs
  (masks, token ids) stay inputs. The wrapper's loss is ``identity_loss(out, "sum")``.
* The step is run once (GA 1): compute sets named ``fwd/``, ``bwd/``, ``upd/`` give the forward,
  backward and weight-update cycles (copies, streams and syncs are added to the phase they belong
  to by name; the rest is ``other``, reported). The update of the wrapper's input parameter is not
  part of the layer: the update is scaled by ``params / (params + input elements)`` (it is an
  elementwise pass over every element, spread over the tiles [D]).
* Memory: weights, saved activations (forward values the backward reads, per micro-batch), the
  layer's output (the activation a pipeline stage passes on), and what the compiled graph holds
  besides variables, from the memory plan: the layer's own code (exchange and control code,
  vertex state), what a tile holds once whatever runs on it (codelet code, stacks: :mod:`.pod`
  counts them once per IPU), the peak of temporary values. It is compiled with the frontends'
  engine options (PopART's: outlining on), as in a PopTorch program.
"""

from __future__ import annotations

import contextlib
import gc
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from softipu.engine import Engine
from softipu.frontends.defaults import engine_options
from softipu.frontends.errors import FrontendError
from softipu.frontends.torch.options import Options
from softipu.frontends.torch.training.joint import joint_graph
from softipu.frontends.torch.training.lowering import lower_training
from softipu.frontends.torch.training.summary import phase_of
from softipu.target.targets import GC200, Target

__all__ = ["LayerCost", "price_layer", "fake_build"]

_DTYPES = {"fp16": torch.float16, "fp32": torch.float32}


@dataclass(frozen=True)
class LayerCost:
    """One layer's training costs on one IPU for one micro-batch (cycles of the chip's clock)."""

    name: str
    forward: int
    backward: int  # input and weight gradients
    update_per_param: float  # cycles of the optimizer update per parameter element (whole chip)
    params: int  # parameter elements
    param_bytes: int
    saved_bytes: int  # activations the backward reads, per micro-batch
    input_bytes: int  # the activation entering the layer (a recomputation checkpoint), per micro-batch
    output_bytes: int  # the activation leaving it (sent to the next stage), per micro-batch
    code_bytes: int  # the layer's own code: exchange + control code and vertex state
    temporary_bytes: int  # peak of not-always-live values while the layer runs
    other_cycles: int = 0  # steps of the priced step outside fwd/bwd/upd (reported only)
    price_seconds: float = 0.0
    flops: float = 0.0  # 2 x multiply-accumulates of its matmuls/convs, forward (for reporting only)
    # Held once per tile whatever runs there, so once per IPU, not per layer: the codelets' code
    # (per codelet type on a tile) and the workers' and supervisor's stacks.
    codelet_bytes: int = 0
    stack_bytes: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def recompute(self) -> int:
        """Cycles to recompute the forward from its checkpointed input (recomputation on)."""
        return self.forward

    def scaled(self, name: str, times: int) -> LayerCost:
        """``times`` identical layers in a row priced as one (their code is shared: outlining)."""
        return LayerCost(name, self.forward * times, self.backward * times, self.update_per_param,
                         self.params * times, self.param_bytes * times, self.saved_bytes * times,
                         self.input_bytes, self.output_bytes, self.code_bytes, self.temporary_bytes,
                         self.other_cycles * times, 0.0, self.flops * times, self.codelet_bytes,
                         self.stack_bytes, dict(self.extra))

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "forward": self.forward, "backward": self.backward,
                "update_per_param": round(self.update_per_param, 6), "params": self.params,
                "param_bytes": self.param_bytes, "saved_bytes": self.saved_bytes,
                "input_bytes": self.input_bytes, "output_bytes": self.output_bytes,
                "code_bytes": self.code_bytes, "codelet_bytes": self.codelet_bytes,
                "stack_bytes": self.stack_bytes, "temporary_bytes": self.temporary_bytes,
                "price_seconds": round(self.price_seconds, 2)}


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def fake_build(factory: Callable[[], torch.nn.Module],
               precision: str = "fp16") -> tuple[torch.nn.Module, Any]:
    """``factory()`` built under a FakeTensorMode in ``precision``: shapes and dtypes, no data."""
    from torch._subclasses.fake_tensor import FakeTensorMode  # noqa: PLC0415 - torch internals

    mode = FakeTensorMode(allow_non_fake_inputs=True)
    with mode, _default_dtype(_DTYPES[precision]):
        module = factory()
    return module, mode


class _Priced(torch.nn.Module):
    """The layer with its activation input as a parameter (so dX is computed) and a sum loss."""

    def __init__(self, layer: torch.nn.Module, activation: torch.Tensor | None,
                 call: Callable[..., torch.Tensor], placeholder: bool, channels_last: bool = False) -> None:
        super().__init__()
        self.layer = layer
        self.act = None if activation is None else torch.nn.Parameter(activation)
        self._call = call
        self._placeholder = placeholder  # the one input is a stand-in (a layer fed by its activation only)
        self._channels_last = channels_last  # act is stored (N, *spatial, C): the layer sees (N, C, *spatial)

    def activation(self) -> torch.Tensor | None:
        if self.act is None or not self._channels_last:
            return self.act
        return self.act.movedim(-1, 1)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        from softipu.frontends.poptorch import identity_loss  # noqa: PLC0415 - the PopTorch name

        inputs = () if self._placeholder else inputs
        args = inputs if self.act is None else (self.activation(), *inputs)
        out = self._call(self.layer, *args)
        return identity_loss(out, reduction="sum")


def _nbytes(t: torch.Tensor) -> int:
    return int(t.numel()) * t.element_size()


def price_layer(name: str, factory: Callable[[], torch.nn.Module], activation: Sequence[int] | None,
                inputs: Sequence[torch.Tensor] = (), *, precision: str = "fp16", target: Target = GC200,
                optimizer: Callable[[Any], Any] | None = None,
                call: Callable[..., torch.Tensor] | None = None, flops: float = 0.0,
                channels_last: bool = False) -> LayerCost:
    """Price ``factory()`` (one layer) for one training micro-batch on ``target`` (one IPU).

    ``activation``: the shape of the activation input (made a parameter so its gradient is priced),
    or None for a first layer fed only by ``inputs`` (token ids...). ``inputs``: the other inputs,
    real (small) tensors. ``optimizer``: ``params -> optimizer`` (default plain SGD: the update is
    scaled per element by the caller's optimizer model). ``call(layer, *args)``: how to run the
    layer (default ``layer(*args)``). ``channels_last``: the ``(N, C, *spatial)`` activation arrives
    stored channels innermost, as a convolution's output (and the elementwise ops after it) leave
    it in a CNN, not in the host's NCHW order (a ResNet block's input is the previous block's
    residual sum).
    """
    if precision not in _DTYPES:
        raise FrontendError(f"price_layer {name}: precision must be fp16 or fp32, got {precision!r}")
    start = time.perf_counter()
    dtype = _DTYPES[precision]
    layer, mode = fake_build(factory, precision)
    act = None
    if activation is not None:
        with mode:
            shape = tuple(activation)
            act = torch.zeros((shape[0], *shape[2:], shape[1]) if channels_last else shape, dtype=dtype)
    model = _Priced(layer, act, call or (lambda m, *a: m(*a)), placeholder=not inputs,
                    channels_last=channels_last)
    from softipu.frontends.torch.optim import (
        SGD,  # noqa: PLC0415 - poptorch.optim's definitions
        optimizer_spec,  # noqa: PLC0415
    )

    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    opt = (optimizer or (lambda ps: SGD(ps, lr=0.01)))(list(named.values()))
    spec = optimizer_spec(opt, named)
    options = Options(target=target, precision=precision, partials_type="half" if precision == "fp16"
                      else "float", engine_options={"debug.allowOutOfMemory": True})
    args = tuple(inputs) if inputs else (torch.zeros(1),)
    joint = joint_graph(model, args, {}, False)
    names = [f"input{i}" for i in range(len(args))]
    every = dict(model.named_parameters(remove_duplicate=False))
    lowered = lower_training(joint, spec, options, names, every)
    # The frontends' engine options (PopART's defaults: outlining on, so a compute set or copy the
    # layer repeats keeps its code once), as the layer compiles in a PopTorch program.
    engine = Engine(lowered.graph, list(lowered.programs),
                    options=engine_options({"debug.allowOutOfMemory": True}), estimate_only=True)
    for i in range(engine.num_programs):
        engine.run(i)
    report = engine.report
    phases = {"forward": 0, "backward": 0, "weight_update": 0, "other": 0}
    # The wrapper's loss (the sum of the layer's output) is the pricing harness, not the layer: in
    # a model the next layer consumes the output. Its steps are left out (reported apart).
    harness = _loss_steps(joint)
    loss_cycles = 0
    for step in report.steps:
        cycles = int(step["cycles"]) * int(step["count"])
        step_name = str(step["name"])
        if harness and (step_name == harness or step_name.startswith(harness + "/")):
            loss_cycles += cycles
            continue
        phases[phase_of(step_name)] += cycles
    layer_params = sum(int(p.numel()) for n, p in model.named_parameters() if n != "act")
    act_elems = int(act.numel()) if act is not None else 0
    per_param = phases["weight_update"] / max(1, layer_params + act_elems)
    cats = report.memory_by_category
    code = sum(int(cats.get(k, 0)) for k in ("exchange_code", "control_code", "vertex_state"))
    with mode:
        out = model._call(layer, *((model.activation(),) if act is not None else ()), *inputs)
    param_bytes = sum(_nbytes(p) for n, p in model.named_parameters() if n != "act")
    saved = int(lowered.saved_bytes)
    # The engine, graph and trace hold reference cycles; free them now, not at some later
    # collection, so pricing several layers in one process peaks at the largest one's memory.
    del engine, report, lowered, joint
    gc.collect()
    return LayerCost(name=name, forward=phases["forward"], backward=phases["backward"],
                     update_per_param=per_param, params=layer_params, param_bytes=param_bytes,
                     saved_bytes=saved, input_bytes=_nbytes(act) if act is not None else 0,
                     output_bytes=_nbytes(out), code_bytes=code,
                     temporary_bytes=int(cats.get("not_always_live", 0)), other_cycles=phases["other"],
                     price_seconds=time.perf_counter() - start, flops=flops,
                     codelet_bytes=int(cats.get("codelet_code", 0)), stack_bytes=int(cats.get("stacks", 0)),
                     extra={"compile_memory": {k: int(v) for k, v in cats.items()}, "target": target.name,
                            "precision": precision, "harness_loss_cycles": loss_cycles})


def _loss_steps(joint: Any) -> str:
    """The step name of the wrapper's loss: the forward output node the loss is (the sum of
    ``identity_loss(out, "sum")``), its compute sets named ``fwd/<node>/...``; "" if not found."""
    output = next(n for n in reversed(joint.gm.graph.nodes) if n.op == "output")
    node = output.args[0][len(joint.mutated) + joint.loss_index]
    if not isinstance(node, torch.fx.Node) or node.target is not torch.ops.aten.sum.dim_IntList:
        return ""
    return f"fwd/{node.name}"


def mm_flops(*shapes: tuple[int, int, int]) -> float:
    """2 x M x K x N summed over matmuls (reporting only)."""
    return float(sum(2 * math.prod(s) for s in shapes))
