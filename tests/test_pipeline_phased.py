"""Phased execution priced as PopTorch documents it: ``SerialPhasedExecution`` runs the phases one
after another on one group of IPUs (each phase loads, then computes); ``ParallelPhasedExecution``
alternates the phases between two groups of IPUs, so phase ``i + 1``'s loads (weights from
Streaming Memory, activations from the other group) run while phase ``i`` computes.

Oracles: eager PyTorch (the values never change), and the cycles worked out by hand from the
per-phase compute and load figures the summary lists (the phase order from PopTorch's
``useSeparateBackwardPhase`` docstring: forward 0, 1, 2; the last forward phase is also the first
backward phase; then backward 1, 0).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F  # noqa: N812

import softipu as sp
import softipu.poptorch as poptorch


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = poptorch.BeginBlock(torch.nn.Linear(8, 30), "a", ipu_id=0)
        self.fc2 = poptorch.BeginBlock(torch.nn.Linear(30, 30), "b", ipu_id=1)
        self.fc3 = poptorch.BeginBlock(torch.nn.Linear(30, 3), "c", ipu_id=0)

    def forward(self, x, y):
        out = self.fc3(torch.tanh(self.fc2(torch.tanh(self.fc1(x)))))
        return out, F.cross_entropy(out, y)


def _strategy(cls):
    return cls(poptorch.Phase(poptorch.Stage("a").ipu(0)), poptorch.Phase(poptorch.Stage("b").ipu(1)),
               poptorch.Phase(poptorch.Stage("c").ipu(0)))


def _train(cls, off_chip: bool = True):
    torch.manual_seed(0)
    module = Net()
    eager = copy.deepcopy(module)
    opts = poptorch.Options().setTarget(sp.targets.ipu_model(tiles=4, bytes_per_tile=256 * 1024))
    opts.setExecutionStrategy(_strategy(cls))
    if off_chip:  # each phase loads its weights from Streaming Memory
        opts.TensorLocations.setWeightLocation(poptorch.TensorLocationSettings().useOnChipStorage(False))
    model = poptorch.trainingModel(module, opts, torch.optim.SGD(module.parameters(), lr=0.1))
    eager_opt = torch.optim.SGD(eager.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(4, 8, generator=g), torch.randint(0, 3, (4,), generator=g)
    model(x, y)
    eager_opt.zero_grad()
    eager(x, y)[1].backward()
    eager_opt.step()
    for (name, p), q in zip(module.named_parameters(), eager.parameters(), strict=True):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-5, atol=1e-6, msg=name)
    return model._impl.summary()["pipeline"]


@pytest.fixture(scope="module")
def serial():
    return _train(poptorch.SerialPhasedExecution)


@pytest.fixture(scope="module")
def parallel():
    return _train(poptorch.ParallelPhasedExecution)


def test_phase_order_and_serial_phases_add_up(serial):
    seq = serial["phases"]
    assert [(p["phase"], p["pass"]) for p in seq] == [(0, "fwd"), (1, "fwd"), (2, "fwd+bwd"), (1, "bwd"),
                                                     (0, "bwd")]
    # weights off chip: every phase loads (phase 0's forward: its weights; later ones also the
    # activations copied in from the other IPU)
    assert all(p["load_cycles"] > 0 for p in seq)
    assert serial["phased_cycles"] == sum(p["compute_cycles"] + p["load_cycles"] for p in seq)
    assert serial["overlapped_cycles"] == 0
    # one stage per phase: the serial schedule is the program as it runs
    assert serial["cycles"] == serial["sequential_cycles"]


def test_parallel_phases_overlap_the_next_phase_s_loads(serial, parallel):
    seq = parallel["phases"]
    c = [p["compute_cycles"] for p in seq]
    ld = [p["load_cycles"] for p in seq]
    # phase 0 loads alone; then each phase's compute hides the next phase's loads (other IPUs)
    by_hand = ld[0] + max(c[0], ld[1]) + max(c[1], ld[2]) + max(c[2], ld[3]) + max(c[3], ld[4]) + c[4]
    assert parallel["phased_cycles"] == by_hand
    assert parallel["overlapped_cycles"] == sum(c) + sum(ld) - by_hand > 0
    assert parallel["cycles"] == serial["cycles"] - parallel["overlapped_cycles"]
    assert [p["compute_cycles"] for p in serial["phases"]] == c  # the same work, differently overlapped


def test_parallel_phases_with_weights_on_chip_overlap_only_the_activation_copies(parallel):
    on_chip = _train(poptorch.ParallelPhasedExecution, off_chip=False)
    seq = on_chip["phases"]
    assert seq[0]["load_cycles"] == 0  # nothing to load before the first phase: weights on chip
    assert sum(p["load_cycles"] for p in seq) < sum(p["load_cycles"] for p in parallel["phases"])
