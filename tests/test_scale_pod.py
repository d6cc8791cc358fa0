"""Pod-scale pricing (frontends/torch/scale/pod.py) composed from hand-made layer costs.

The layer figures are made up so every expected value can be worked by hand from the rules in the
module docstring; link and collective prices come from ``target.links`` (tested on their own), the
schedule from ``target.pipeline`` (tests/test_pipeline_schedule.py).
"""

from __future__ import annotations

import math

import pytest

from softipu.frontends.errors import FrontendError
from softipu.frontends.torch.scale import LayerCost
from softipu.frontends.torch.scale.pod import TrainingConfig, price_training
from softipu.target import links
from softipu.target.systems import POD16


def layer(name, fwd, bwd, params=100, saved=1000, inp=50, out=0, code=300, temp=400, upd=0.5):
    return LayerCost(name=name, forward=fwd, backward=bwd, update_per_param=upd, params=params,
                     param_bytes=2 * params, saved_bytes=saved, input_bytes=inp, output_bytes=out,
                     code_bytes=code, temporary_bytes=temp)


def test_two_stage_pipeline_one_replica():
    layers = [layer("a", 10, 20), layer("b", 30, 40)]
    cfg = TrainingConfig(micro_batch=2, accumulation=4, replicas=1, layers_per_ipu=(1, 1), recompute=False)
    est = price_training(layers, cfg, POD16)
    t0 = links.flows_cost(POD16, [(0, 1)], 0).cycles  # forward activation IPU0 -> IPU1
    t1 = links.flows_cost(POD16, [(1, 0)], 0).cycles  # its gradient back
    o = POD16.sync_cycles(2)
    m = max(t0, t1)
    # stages (10, 30+40, 20) on IPUs (0, 1, 0), A = 4, 6 pipeline cycles:
    # p0 {0}: 10+t0 | p1 {0,1}: 70+m | p2,p3 steady: max(10+20, 70)+m | p4 {1,2}: 70+t1 | p5 {2}: 20
    want = (10 + t0) + (70 + m) * 3 + (70 + t1) + 20 + 6 * o
    assert est.timeline.fill + est.timeline.main + est.timeline.flush == want
    assert est.split["forward"] == 30 * 4 and est.split["backward"] == 40 * 4  # the slowest IPU (1)
    assert est.split["recompute"] == 0 and est.split["gradient_reduction"] == 0
    assert est.split["optimizer"] == 50  # the slower IPU: 100 params x 0.5 cycles
    assert est.cycles == want + 50
    assert est.samples_per_second == pytest.approx(2 * 4 / (est.cycles / POD16.chip.clock_hz))
    m0, m1 = est.memory
    # IPU0: stash depth 2(2-1-0)+1 = 3 x saved 1000 (no recomputation); IPU1 none.
    assert m0.by_class == {"weights": 200, "gradients": 200, "optimizer_state": 800, "stash": 3000,
                           "activations": 400 + 1000, "code": 300}  # peak + this micro-batch's saved
    assert m1.by_class["stash"] == 0 and m1.total == 200 + 200 + 800 + 1400 + 300
    assert est.fits


def test_replicas_rts_offchip_recompute():
    layers = [layer("L[0]", 10, 20, params=1000), layer("L[1]", 10, 20, params=3000)]
    cfg = TrainingConfig(micro_batch=1, accumulation=8, replicas=4, layers_per_ipu=(2,), recompute=True,
                         optimizer_off_chip=True, rts=True, input_bytes_per_sample=100)
    est = price_training(layers, cfg, POD16)
    # One IPU a replica: S = 1, 8 micro-batches of fwd 20 + bwd 40 + recompute 20.
    assert est.timeline.total == 8 * 80
    assert (est.split["forward"], est.split["backward"], est.split["recompute"]) == (160, 320, 160)
    grad = 4000 * 2
    rs = links.collective_cost(POD16, "reduce_scatter", grad, 4, itemsize=2).cycles
    ag = links.collective_cost(POD16, "all_gather", grad, 4, itemsize=2).cycles
    assert est.split["gradient_reduction"] == rs and est.split["weight_all_gather"] == ag
    assert est.split["optimizer"] == math.ceil(4000 * 0.5 / 4)
    clock = POD16.chip.clock_hz
    state = 1000 * 8  # a quarter of 4000 params x 8 B
    rate = POD16.streaming_memory_bytes_per_second_per_ipu
    assert est.split["streaming_memory"] == math.ceil(2 * state / rate * clock)
    assert est.split["host_io"] == math.ceil(8 * 100 / POD16.host_bytes_per_second_per_ipu * clock)
    (mem,) = est.memory
    assert mem.by_class["optimizer_state"] == 0 and mem.by_class["stash"] == 0  # last IPU: no stash
    assert mem.by_class["activations"] == 400 + 2 * 50  # peak + both checkpoints
    assert mem.by_class["code"] == 300  # two layers of one kind: code once (outlining)
    assert est.off_chip_bytes_per_replica == state
    assert est.as_dict()["samples_per_step"] == 32


def test_bad_input():
    layers = [layer("a", 1, 1), layer("b", 1, 1)]
    with pytest.raises(FrontendError, match="must place each of the 2 layers once"):
        price_training(layers, TrainingConfig(1, 4, 1, (1, 2)), POD16)
    with pytest.raises(Exception, match="must equal at least the number of pipeline stages"):
        price_training(layers, TrainingConfig(1, 2, 1, (1, 1)), POD16)
    with pytest.raises(FrontendError, match="3 IPUs a replica: the number of IPUs must be a power of 2"):
        price_training([*layers, layer("c", 1, 1)], TrainingConfig(1, 8, 1, (1, 1, 1)), POD16)
    with pytest.raises(Exception, match="16"):
        price_training(layers, TrainingConfig(1, 4, 16, (1, 1)), POD16)  # 32 IPUs on a POD16


def test_head_back_on_ipu0():
    # Graphcore's BERT layout: stages (a | b | c) on IPUs (0, 1, 0), c the head. F = 3 forward
    # stages, S = 5: (a 10, b 30, c 5+6, b 40, a 20) on IPUs (0, 1, 0, 1, 0); A = 5, 9 cycles.
    layers = [layer("a", 10, 20), layer("b", 30, 40), layer("c", 5, 6)]
    cfg = TrainingConfig(micro_batch=1, accumulation=5, replicas=1, layers_per_ipu=(1, 1, 1), recompute=False,
                         stage_ipus=(0, 1, 0))
    assert cfg.ipus_per_replica == 2
    est = price_training(layers, cfg, POD16)
    t01 = links.flows_cost(POD16, [(0, 1)], 0).cycles
    t10 = links.flows_cost(POD16, [(1, 0)], 0).cycles
    # copies after stages 0..3: a->b (0->1), b->c (1->0), c's gradient to b (0->1), b's to a (1->0)
    c = [t01, t10, t01, t10]
    o = POD16.sync_cycles(2)
    # a cycle: the busiest IPU's active stages + the dearest copy of its active stages + sync
    want = [10 + c[0], 30 + max(c[:2]), max(10 + 11, 30) + max(c[:3]), max(21, 30 + 40) + max(c),
            max(10 + 11 + 20, 70) + max(c), max(11 + 20, 70) + max(c[1:]), max(31, 40) + max(c[2:]),
            max(20, 40) + c[3], 20]
    assert est.timeline.cycle_lengths == tuple(w + o for w in want)
    assert est.timeline.stage_ipus == (0, 1, 0, 1, 0)
    m0, m1 = est.memory
    assert m0.layers == ("a", "c") and m1.layers == ("b",)
    # stash per forward stage 2(F-1-f)+1: a 5, b 3, c (the last) none; saved 1000 each
    assert (m0.by_class["stash"], m1.by_class["stash"]) == (5 * 1000, 3 * 1000)
    assert m0.by_class["weights"] == 400 and m0.by_class["code"] == 600  # a and c: two kinds
    # the slowest IPU in a steady cycle is IPU 1 (70 > 41): its forward and backward x A
    assert (est.split["forward"], est.split["backward"]) == (30 * 5, 40 * 5)
    with pytest.raises(FrontendError, match="stage_ipus"):
        price_training(layers, TrainingConfig(1, 5, 1, (1, 1, 1), stage_ipus=(0, 1)), POD16)


def test_code_once_per_distinct_layer_codelets_and_stacks_once_per_ipu():
    # IPU 0 holds a, b[0], b[1] (two kinds); a tile keeps each codelet's code and its stacks once,
    # whatever layers run there: the IPU's code is a's + b's own code + the larger codelet set +
    # one set of stacks. Optimizer state off chip is none of its SRAM.
    def with_shared(x, codelets, stacks):
        return LayerCost(**{**x.as_dict(), "price_seconds": 0.0, "codelet_bytes": codelets,
                            "stack_bytes": stacks, "update_per_param": x.update_per_param})

    a = with_shared(layer("a", 1, 1, code=300), 40, 7)
    b = with_shared(layer("b", 1, 1, code=500), 60, 7)
    layers = [a, b.scaled("b[0]", 1), b.scaled("b[1]", 1)]
    cfg = TrainingConfig(micro_batch=1, accumulation=2, replicas=2, layers_per_ipu=(3,),
                         optimizer_off_chip=True, rts=True)
    (mem,) = price_training(layers, cfg, POD16).memory
    assert mem.by_class["code"] == 300 + 500 + 60 + 7
    assert mem.by_class["optimizer_state"] == 0
    assert mem.by_class["weights"] == 3 * 200 and mem.by_class["gradients"] == 3 * 200
