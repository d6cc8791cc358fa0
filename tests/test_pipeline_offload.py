"""Pipelining with weights and activations in Streaming Memory: the values of the on-chip run (and
eager torch), each stage's Streaming Memory traffic priced as part of its stage work, and the
stashed activations kept off chip (the remote buffer is the stash: PopART's depth rows) instead of
an on-chip stash.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F  # noqa: N812

import softipu as sp
import softipu.poptorch as poptorch

GA, MICRO = 3, 2


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = torch.nn.Linear(8, 30)
        self.fc2 = poptorch.BeginBlock(torch.nn.Linear(30, 3), "b", ipu_id=1)

    def forward(self, x, y):
        out = self.fc2(torch.tanh(self.fc1(x)))
        return out, F.cross_entropy(out, y)


def _train(off_chip: bool, sharded: bool = False):
    module = Net()
    eager = copy.deepcopy(module)
    replicas = 2 if sharded else 1
    opts = poptorch.Options().setTarget(sp.targets.ipu_model(tiles=4, bytes_per_tile=256 * 1024))
    opts.Training.gradientAccumulation(GA)  # 2 IPUs pipelined: 3 stages
    opts.replicationFactor(replicas)
    if sharded:  # each replica keeps half of every weight of >= 8 elements
        opts.TensorLocations.setWeightLocation(poptorch.TensorLocationSettings().useReplicatedTensorSharding(True)
                                               .minElementsForReplicatedTensorSharding(8))
    if off_chip:
        off = poptorch.TensorLocationSettings().useOnChipStorage(False)
        opts.TensorLocations.setWeightLocation(off)
        opts.TensorLocations.setActivationLocation(off)
    model = poptorch.trainingModel(module, opts, torch.optim.SGD(module.parameters(), lr=0.1))
    eager_opt = torch.optim.SGD(eager.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(0)
    n = GA * MICRO * replicas
    x, y = torch.randn(n, 8, generator=g), torch.randint(0, 3, (n,), generator=g)
    model(x, y)
    eager_opt.zero_grad()
    eager(x, y)[1].backward()
    eager_opt.step()
    for (name, p), q in zip(module.named_parameters(), eager.parameters(), strict=True):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-5, atol=1e-6, msg=name)
    return model._impl


def test_pipelined_step_with_weights_and_activations_off_chip():
    model, base = _train(True), _train(False)
    s, s0 = model.summary()["pipeline"], base.summary()["pipeline"]
    assert all(st["load_cycles"] > 0 for st in s["stages"]) and all(st["load_cycles"] == 0 for st in s0["stages"])
    # IPU 0's stage stashes tanh's output (MICRO x 30 fp32) for 2 x (2 - 1) + 1 = 3 micro-batches on
    # chip; off chip that stash is the activation's remote buffer, 3 rows; IPU 1 (last) keeps one row
    assert s0["stash_bytes"] == [3 * MICRO * 30 * 4, 0] and s["stash_bytes"] == [0, 0]
    buffers = {name.split("/")[-1]: b for name, b in model.lowered.graph.remote_buffers.items()
               if name.startswith("activations/")}
    assert buffers["tanh"].repeats == 3 and buffers["tanh"].nbytes == 3 * MICRO * 30 * 4
    # the schedule's stages carry their loads: it is longer than the on-chip one
    assert s["schedule"]["total_cycles"] > s0["schedule"]["total_cycles"]
    assert model.cycle_count > base.cycle_count


def test_pipelined_step_with_sharded_weights():
    model = _train(False, sharded=True)  # values vs eager torch on the effective batch
    stages = model.summary()["pipeline"]["stages"]
    # each stage all-gathers its weights' fragments before its forward and backward readers
    assert all(st["load_cycles"] > 0 for st in stages)
    offload = model.lowered.offload
    assert offload.fragments["fc1.weight"].shape == (120,) and offload.fragments["fc2.weight"].shape == (45,)


def test_pipelined_lamb_with_sharded_state_and_accumulators_equals_eager():
    # Graphcore's BERT configurations: pipelined and replicated, LAMB with its optimizer state and
    # gradient accumulators sharded over the replicas. Eager: PopTorch's LAMB stepping on the host
    # (its published rule: tests/test_training_optim.py), on the effective batch.
    module = Net()
    eager = copy.deepcopy(module)
    opts = poptorch.Options().setTarget(sp.targets.ipu_model(tiles=4, bytes_per_tile=256 * 1024))
    opts.Training.gradientAccumulation(GA)
    opts.replicationFactor(2)
    sharded = poptorch.TensorLocationSettings().useReplicatedTensorSharding(True) \
        .minElementsForReplicatedTensorSharding(8)
    opts.TensorLocations.setOptimizerLocation(sharded)
    opts.TensorLocations.setAccumulatorLocation(sharded)
    model = poptorch.trainingModel(module, opts, poptorch.optim.LAMB(module.parameters(), lr=0.02))
    eager_opt = poptorch.optim.LAMB(eager.parameters(), lr=0.02)
    for step in range(2):
        g = torch.Generator().manual_seed(step)
        n = GA * MICRO * 2
        x, y = torch.randn(n, 8, generator=g), torch.randint(0, 3, (n,), generator=g)
        model(x, y)
        eager_opt.zero_grad()
        eager(x, y)[1].backward()
        eager_opt.step()
    for (name, p), q in zip(module.named_parameters(), eager.parameters(), strict=True):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-5, atol=1e-6, msg=name)
    low = model._impl.lowered
    # fragments: fc1 (240 + 30 elements) and fc2.weight (90) halved; fc2.bias (3) whole
    assert low.state[("fc1.weight", "exp_avg")].shape == (120,) and low.state[("fc2.bias", "exp_avg")].shape == (3,)
    accums = {v.name: v.shape for v in low.graph.variables if v.name.startswith("accum/fc")}
    assert accums == {"accum/fc1.weight": (120,), "accum/fc1.bias": (15,), "accum/fc2.weight": (45,),
                      "accum/fc2.bias": (3,)}
