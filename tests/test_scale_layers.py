"""price_layer (frontends/torch/scale/layers.py): one small layer priced estimate-only on fake weights."""

from __future__ import annotations

import pytest
import torch

import softipu as sp
from softipu.frontends.errors import FrontendError
from softipu.frontends.torch.scale import price_layer


def test_linear_layer_sizes_and_phases():
    target = sp.targets.ipu_model(tiles=4)
    cost = price_layer("fc", lambda: torch.nn.Linear(8, 12), (4, 8), precision="fp32", target=target)
    assert cost.params == 8 * 12 + 12 and cost.param_bytes == 4 * cost.params  # torch's count, fp32
    assert cost.input_bytes == 4 * 8 * 4 and cost.output_bytes == 4 * 12 * 4
    # the backward computes dX and dW (two products) where the forward computes one
    assert cost.forward > 0 and cost.backward > cost.forward
    assert cost.update_per_param > 0 and cost.code_bytes > 0
    assert cost.recompute() == cost.forward
    twice = cost.scaled("fc2", 2)
    assert (twice.forward, twice.params, twice.code_bytes) == (2 * cost.forward, 2 * cost.params, cost.code_bytes)


def test_bad_precision():
    with pytest.raises(FrontendError, match="precision must be fp16 or fp32"):
        price_layer("fc", lambda: torch.nn.Linear(2, 2), (1, 2), precision="bf16")


class _Scale(torch.nn.Module):
    """y = x * w, w a (4, 8) parameter: the smallest layer with a weight, its gradient and an update."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(4, 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.w


def test_memory_classes_of_a_small_layer_hand_worked():
    """Every memory class of one priced layer, worked by hand, so per-layer figures cannot drift unseen.

    The layer (fp32, on 4 tiles of ``ipu_model``): the wrapper's activation ``act`` (4, 8) and the
    weight ``w`` (4, 8), 128 B each, are mapped linearly, 64 B on each of two tiles: act on tiles
    1-2, w on tiles 0-1. The step's compute sets (an elementwise op runs where its tensor operand
    lives; a scalar is one region its tile sends once, multicast, and each reader receives):

    ====================  =========  ==========================================================
    step                   tiles      exchange regions (send + receive, per tile 0/1/2/3)
    ====================  =========  ==========================================================
    fwd/mul  x*w           1, 2       w's halves 0->1, 1->2: 1/2/1/0
    fwd/sum partials       1, 2       none
    fwd/sum reduce         0          a partial from 1 and from 2: 1/1/1/0
    bwd/mul_1 g*act (dw)   1, 2       the scalar g (a constant on tile 3) to 1 and 2: 0/1/1/1
    bwd/mul_2 g*w (dact)   0, 1       g to 0 and 1: 1/1/0/1
    upd/step counter += 1  0          none
    upd act -= lr*dact     1, 2       dact's halves 0->1, 1->2 and lr (tile 0) to 1, 2: 2/3/2/0
    upd w -= lr*dw         0, 1       dw's halves 1->0, 2->1 and lr to 1: 2/3/1/0
    ====================  =========  ==========================================================

    plus the host copies of the (placeholder) input and the loss: 10 program steps in all.
    """
    t = sp.targets.ipu_model(tiles=4)
    cost = price_layer("scale", _Scale, (4, 8), precision="fp32", target=t)
    mem = cost.extra["compile_memory"]
    assert (cost.params, cost.param_bytes, cost.input_bytes, cost.output_bytes) == (32, 128, 128, 128)
    # act + w, and three fp32 scalars (lr, the input placeholder, the step counter) in 8-byte slots
    assert mem["always_live_variables"] == 128 + 128 + 3 * 8
    assert mem["constants"] == 8  # g = 1.0, the sum loss's gradient
    regions = (1 + 1 + 0 + 1 + 2 + 2) + (2 + 1 + 1 + 1 + 3 + 3) + (1 + 1 + 1 + 0 + 2 + 1) + (1 + 1)
    assert regions == 26 and mem["exchange_code"] == regions * t.exchange_code_bytes_per_region
    assert mem["control_code"] == 10 * t.control_code_bytes_per_step * 4  # every step, on every tile
    # codelet types per tile: tile 0 {ReduceGather, BinaryOp1D, MapInPlace add, MapInPlace fused},
    # tiles 1 and 2 {BinaryOp1D, ReduceSegments, MapInPlace fused}, tile 3 none
    assert mem["codelet_code"] == (4 + 3 + 3) * t.codelet_code_bytes
    f = t.vertex_state_bytes_per_field  # a vector field: pointer + size
    binary, fused, counter = 3 * f, 3 * f, f  # (in1, in2, out); (in0, in1, in2); (in0)
    segments, gather = 2 * f + 8 + 8, 2 * f + 4  # (x, out, first: int64, period: int64); (parts, out, scale)
    assert mem["vertex_state"] == 6 * binary + 4 * fused + counter + 2 * segments + gather
    assert mem["stacks"] == 4 * (6 * t.worker_stack_bytes + t.supervisor_stack_bytes)
    # Each tile's peak of not-always-live bytes (outputs and what it receives in that step):
    # tile 0 at bwd/mul_2: dact 64 + the loss 8 + g received 4; tile 1 at the act update: dw 64 +
    # dact 64 + received 64 + 4; tile 2 at the act update: dw 64 + received 64 + 4; tile 3 none.
    assert mem["not_always_live"] == (64 + 8 + 4) + (64 + 64 + 68) + (64 + 68) + 0
    assert cost.temporary_bytes == mem["not_always_live"]
    # the layer's own code; codelet code and stacks apart (a tile holds them once, pod.py per IPU)
    assert cost.code_bytes == mem["exchange_code"] + mem["control_code"] + mem["vertex_state"]
    assert (cost.codelet_bytes, cost.stack_bytes) == (mem["codelet_code"], mem["stacks"])


def test_channels_last_activation_is_a_cnn_layout():
    """A CNN layer's input arrives as its producer left it, channels innermost (a convolution's
    output): the wrapper stores the activation (N, H, W, C) and hands the layer the (N, C, H, W)
    view, so the layer's dX is computed into that storage too."""
    from softipu.frontends.torch.scale.layers import _Priced

    act = torch.zeros(2, 5, 6, 3)  # (N, H, W, C)
    wrapper = _Priced(torch.nn.Identity(), act, lambda m, x: m(x), placeholder=True, channels_last=True)
    view = wrapper.activation()
    assert view.shape == (2, 3, 5, 6) and view.stride() == (90, 1, 18, 3)
    assert _Priced(torch.nn.Identity(), act, lambda m, x: m(x), True).activation() is not None
    t = sp.targets.ipu_model(tiles=4)
    conv = price_layer("conv", lambda: torch.nn.Conv2d(3, 4, 1, bias=False), (2, 3, 4, 4), precision="fp32",
                       target=t, channels_last=True)
    assert (conv.params, conv.input_bytes, conv.output_bytes) == (12, 2 * 3 * 16 * 4, 2 * 4 * 16 * 4)
    assert conv.forward > 0 and conv.backward > 0


def test_the_wrappers_sum_loss_is_not_the_layers_forward():
    """The sum of the layer's output is the pricing harness (in a model the next layer reads the
    output): an identity layer does no work, so its forward is 0 cycles; the harness's reduction
    is reported apart, and the scale layer's forward is its multiply alone."""
    t = sp.targets.ipu_model(tiles=4)
    ident = price_layer("id", torch.nn.Identity, (4, 8), precision="fp32", target=t)
    assert ident.forward == 0 and ident.extra["harness_loss_cycles"] > 0
    scale = price_layer("scale", _Scale, (4, 8), precision="fp32", target=t)
    assert scale.extra["harness_loss_cycles"] == ident.extra["harness_loss_cycles"]  # the same (4, 8) sum
    assert 0 < scale.forward < scale.backward  # x*w; the backward is two products (dw, dx)


def test_a_priced_layers_classes_on_each_ipu_by_hand():
    """The hand-worked layer above, three times over a pipelined replica of 2 IPUs as Graphcore's
    configurations run (a checkpoint at each layer's input, optimizer state off chip and sharded
    over 2 replicas): each IPU's memory classes worked by hand from the layer's priced figures."""
    from softipu.frontends.torch.scale import TrainingConfig, price_training
    from softipu.target.systems import POD16

    cost = price_layer("scale", _Scale, (4, 8), precision="fp32", target=sp.targets.ipu_model(tiles=4))
    layers = [cost.scaled(f"scale[{i}]", 1) for i in range(3)]
    cfg = TrainingConfig(micro_batch=4, accumulation=4, replicas=2, layers_per_ipu=(2, 1), recompute=True,
                         optimizer_off_chip=True, rts=True)
    est = price_training(layers, cfg, POD16)
    m0, m1 = est.memory
    # off chip: each IPU's half of its layers' two fp32 moments, (64 / 2 + 32 / 2) x 8 B
    assert est.off_chip_bytes_per_replica == (32 + 16) * 8
    own = cost.code_bytes + cost.codelet_bytes + cost.stack_bytes  # one kind of layer: its code once an IPU
    # IPU 0 (forward stage 0 of 2): a stash of 2 x (2 - 1 - 0) + 1 = 3 checkpoints (each layer's
    # 128 B input); IPU 1, the last, whose forward and backward are one stage, none. Gradient
    # accumulators in fp16 (2 B a parameter); the optimizer state is in Streaming Memory.
    assert m0.by_class == {"weights": 2 * 128, "gradients": 2 * 32 * 2, "optimizer_state": 0, "stash": 3 * 256,
                           "activations": cost.temporary_bytes + 2 * 128, "code": own}
    assert m1.by_class == {"weights": 128, "gradients": 32 * 2, "optimizer_state": 0, "stash": 0,
                           "activations": cost.temporary_bytes + 128, "code": own}
