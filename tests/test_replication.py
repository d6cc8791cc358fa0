"""Data-parallel training with replicationFactor: gradients all-reduced across replicas.

Oracles: eager PyTorch on the effective batch (micro-batch x replicas x gradient accumulation,
PopART's host layout ``[accumulation, replicas, micro_batch]``, ipu-facts-scale §1) with the loss
PopTorch's reduction implies (Mean: the mean of the micro-batches' losses; Sum: their sum); the
link model ``softipu.target.links.collective_cost`` (checked by hand in test_systems.py) for the
cost of the all-reduces.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

import softipu as sp
import softipu.poptorch as poptorch
from softipu.errors import SoftIPUError
from softipu.target import links, systems

CHIP = sp.targets.ipu_model(tiles=4, bytes_per_tile=256 * 1024)


class Encoder(nn.Module):
    """A small encoder-style block: projection, GELU, LayerNorm, head; every size a multiple of 8."""

    def __init__(self) -> None:
        super().__init__()
        self.inp, self.norm, self.head = nn.Linear(8, 16), nn.LayerNorm(16), nn.Linear(16, 8)

    def forward(self, x, y):
        out = self.head(self.norm(F.gelu(self.inp(x))))
        return out, F.mse_loss(out, y)


def batch(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 8, generator=g), torch.randn(n, 8, generator=g)


def options(replicas: int, accumulation: int) -> poptorch.Options:
    o = poptorch.Options().replicationFactor(replicas).setTarget(CHIP)
    o.Training.gradientAccumulation(accumulation)
    return o


def micro_losses(net: nn.Module, x, y, replicas: int, accumulation: int) -> torch.Tensor:
    """Each micro-batch's loss, ``[accumulation, replicas]``: the host batch's PopART layout."""
    xs = x.reshape(accumulation, replicas, -1, x.shape[-1])
    ys = y.reshape(accumulation, replicas, -1, y.shape[-1])
    return torch.stack([torch.stack([net(xs[a, r], ys[a, r])[1] for r in range(replicas)])
                        for a in range(accumulation)])


def relative_close(a: nn.Module, b: nn.Module, tol: float = 1e-4) -> None:
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        err = float((p - q).abs().max().detach() / q.abs().max().detach())
        assert err < tol, f"{name}: relative error {err}"


def test_replication_4_x_accumulation_2_equals_eager_on_the_effective_batch():
    torch.manual_seed(0)
    net = Encoder()
    ref = copy.deepcopy(net)
    R, GA, micro = 4, 2, 2
    model = poptorch.trainingModel(net, options(R, GA), torch.optim.AdamW(net.parameters(), lr=0.01))
    eager = torch.optim.AdamW(ref.parameters(), lr=0.01)
    for step in range(2):
        x, y = batch(R * GA * micro, step)
        out, loss = model(x, y)
        eager.zero_grad()
        losses = micro_losses(ref, x, y, R, GA)
        losses.mean().backward()  # PopTorch's Mean: over accumulation and replicas
        # outputMode Final: each replica's last micro-batch, concatenated along dim 0
        assert loss.shape == (R,) and out.shape == (R * micro, 8)
        torch.testing.assert_close(loss, losses[-1].detach(), rtol=1e-4, atol=1e-6)
        eager.step()
    relative_close(net, ref)
    # The update saw the same gradients everywhere: every replica holds the same weights.
    for var in model._impl.lowered.params.values():
        w = model._impl.engine.read_tensor(var)
        assert w.shape[0] == R and all((w[r] == w[0]).all() for r in range(R))


def test_sum_reduction_adds_the_replicas_and_micro_batches_gradients():
    torch.manual_seed(1)
    net = Encoder()
    ref, start = copy.deepcopy(net), copy.deepcopy(net)
    R, GA, micro = 2, 2, 2
    o = options(R, GA)
    o.Training.accumulationAndReplicationReductionType(poptorch.ReductionType.Sum)
    model = poptorch.trainingModel(net, o, torch.optim.SGD(net.parameters(), lr=0.02, momentum=0.9))
    eager = torch.optim.SGD(ref.parameters(), lr=0.02, momentum=0.9)
    for step in range(2):
        x, y = batch(R * GA * micro, 10 + step)
        model(x, y)
        eager.zero_grad()
        micro_losses(ref, x, y, R, GA).sum().backward()
        eager.step()
    relative_close(net, ref)
    # ... and not what the mean would have given (R x GA times smaller gradients).
    mean = copy.deepcopy(start)
    eager = torch.optim.SGD(mean.parameters(), lr=0.02, momentum=0.9)
    for step in range(2):
        x, y = batch(R * GA * micro, 10 + step)
        eager.zero_grad()
        micro_losses(mean, x, y, R, GA).mean().backward()
        eager.step()
    assert not torch.allclose(net.head.weight, mean.head.weight, rtol=1e-2, atol=1e-3)


def test_host_batch_must_divide_by_replicas_and_accumulation():
    model = poptorch.trainingModel(Encoder(), options(4, 2), None)
    with pytest.raises(SoftIPUError, match=r"'x' has batch size 12, which is not divisible by the product of "
                       r"deviceIterations \(1\) x replicationFactor \(4\) x gradientAccumulation \(2\) = 8"):
        model(*batch(12, 0))


def per_step(model) -> tuple[dict[str, int], int]:
    """Cycles of the last run by step (op and name), and the engine's total."""
    eng = model._impl.engine
    steps, out = eng.executable.steps, {}
    for i, count in enumerate(eng.log.step_counts):
        if count:
            key = f"{steps[i].op}: {steps[i].name}"
            out[key] = out.get(key, 0) + steps[i].cycles * count
    return out, model.cycleCount()


def test_cycles_grow_by_the_all_reduces_priced_on_the_links():
    R, GA, micro = 4, 2, 2
    x, y = batch(R * GA * micro, 3)
    one = poptorch.trainingModel(Encoder(), options(1, GA).logCycleCount(True), None)
    one(x[:GA * micro], y[:GA * micro])
    many = poptorch.trainingModel(Encoder(), options(R, GA).logCycleCount(True), None)
    many(x, y)
    (a, total_one), (b, total_many) = per_step(one), per_step(many)
    collective = {k: v for k, v in b.items() if "upd/all_reduce/" in k}
    loops = sum(b.get(k, 0) - a.get(k, 0) for k in b if k.startswith("Repeat:"))
    # Every other step costs what it does on one replica (the all-reduce is in place on the
    # accumulators): the cycles grow by the collectives' compute sets, copies and loops.
    assert {k: v for k, v in b.items() if k not in collective and not k.startswith("Repeat:")} == \
        {k: v for k, v in a.items() if not k.startswith("Repeat:")}
    assert total_many - total_one == sum(collective.values()) + loops
    # Their links: one all-reduce per gradient (float32, Mean) over the 4 IPUs of the smallest
    # fabric holding the replicas, each priced by the link model for the whole collective by the
    # rings run (poplibs' AUTO choice, meet-in-middle included, run as such by softipu.collectives).
    links_cycles = sum(v for k, v in collective.items() if k.startswith("CrossReplicaCopy:"))
    system = systems.smallest_fabric(R, CHIP)
    expected = 0
    for p in Encoder().parameters():
        nbytes = p.numel() * 4
        method = sp.collectives.auto_method(system, "all_reduce", nbytes, R).name.lower()
        expected += links.collective_cost(system, "all_reduce", nbytes, R, method=method,
                                          compute=False).cycles
    assert links_cycles == expected > 0


def test_a_replicated_training_step_exports_and_loads_every_replicas_state(tmp_path):
    torch.manual_seed(4)
    R, GA, micro = 2, 1, 2
    net = Encoder()
    model = poptorch.trainingModel(net, options(R, GA), torch.optim.SGD(net.parameters(), lr=0.05))
    model(*batch(R * micro, 20))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.compileAndExport(tmp_path / "step")
    expected = [model(*batch(R * micro, 21 + i))[1] for i in range(2)]
    other = Encoder()
    loaded = poptorch.trainingModel(other, options(R, GA), torch.optim.SGD(other.parameters(), lr=0.05))
    loaded.loadExecutable(tmp_path / "step")
    got = [loaded(*batch(R * micro, 21 + i))[1] for i in range(2)]
    for a, b in zip(got, expected, strict=True):
        assert a.shape == (R,) and torch.equal(a, b)


@pytest.mark.parametrize("kind,slices", [(poptorch.CommGroupType.Consecutive, [0, 0, 1, 1]),
                                         (poptorch.CommGroupType.Orthogonal, [0, 1, 0, 1])])
def test_input_replica_grouping_feeds_a_group_one_slice_and_returns_every_replica(kind, slices):
    torch.manual_seed(5)
    net = nn.Linear(8, 3).eval()
    o = poptorch.Options().replicationFactor(4).deviceIterations(2).setTarget(CHIP)
    o.inputReplicaGrouping(2, kind)
    x = torch.randn(2 * 2 * 3, 8)  # deviceIterations x (4 replicas / groups of 2) x micro-batch 3
    out = poptorch.inferenceModel(net, o)(x)
    # PopTorch's order: iteration, then replica; replica r was fed its group's slice.
    xs = x.reshape(2, 2, 3, 8)
    expected = torch.cat([net(xs[i, s]) for i in range(2) for s in slices])
    torch.testing.assert_close(out, expected.detach(), rtol=1e-5, atol=1e-6)


def test_grouped_inputs_in_training_average_the_groups_gradients():
    torch.manual_seed(6)
    net = Encoder()
    ref = copy.deepcopy(net)
    o = options(4, 1).inputReplicaGrouping(2, poptorch.CommGroupType.Consecutive)
    model = poptorch.trainingModel(net, o, torch.optim.SGD(net.parameters(), lr=0.1))
    x, y = batch(2 * 2, 30)  # (4 replicas / groups of 2) x micro-batch 2
    _, loss = model(x, y)
    eager = torch.optim.SGD(ref.parameters(), lr=0.1)
    losses = micro_losses(ref, x, y, 2, 1)[0]  # the two slices
    losses.mean().backward()  # each slice's gradient on two replicas: the mean over four is theirs
    eager.step()
    relative_close(net, ref)
    torch.testing.assert_close(loss, losses.detach()[[0, 0, 1, 1]], rtol=1e-4, atol=1e-6)


def test_bad_input_replica_grouping_is_a_clear_error():
    with pytest.raises(SoftIPUError, match="CommGroupType.All is not allowed"):
        poptorch.Options().replicationFactor(4).inputReplicaGrouping(4, poptorch.CommGroupType.All)
    o = poptorch.Options().replicationFactor(4).setTarget(CHIP).inputReplicaGrouping(
        3, poptorch.CommGroupType.Consecutive)
    with pytest.raises(SoftIPUError, match="input group size 3 must divide the replication factor 4"):
        poptorch.inferenceModel(nn.Linear(2, 2), o)
    o = options(4, 2).inputReplicaGrouping(2, poptorch.CommGroupType.Orthogonal)
    with pytest.raises(SoftIPUError, match=r"batch size 6, .* replicationFactor \(4\) / input group size \(2\) "
                                           r"x gradientAccumulation \(2\) = 4"):
        poptorch.trainingModel(Encoder(), o, None)(*batch(6, 0))


@pytest.mark.parametrize("accumulation", [1, 2])
def test_merged_all_reduce_is_one_collective_with_the_same_result(accumulation):
    torch.manual_seed(7)
    net = Encoder()
    ref = copy.deepcopy(net)
    R, micro = 4, 2
    o = options(R, accumulation).logCycleCount(True)
    o._Popart.set("replicatedCollectivesSettings.mergeAllReduceCollectives", True)
    model = poptorch.trainingModel(net, o, torch.optim.SGD(net.parameters(), lr=0.1))
    x, y = batch(R * accumulation * micro, 40)
    model(x, y)
    eager = torch.optim.SGD(ref.parameters(), lr=0.1)
    micro_losses(ref, x, y, R, accumulation).mean().backward()
    eager.step()
    relative_close(net, ref)
    # One all-reduce of every float32 gradient, concatenated: its links are the link model's
    # price of one collective of the total bytes.
    b, _ = per_step(model)
    assert {k.split("upd/all_reduce/")[1].split("/")[0] for k in b if "upd/all_reduce/" in k} == {"merged_float32"}
    system = systems.smallest_fabric(R, CHIP)
    nbytes = sum(p.numel() for p in net.parameters()) * 4
    method = sp.collectives.auto_method(system, "all_reduce", nbytes, R).name.lower()
    expected = links.collective_cost(system, "all_reduce", nbytes, R, method=method, compute=False).cycles
    assert sum(v for k, v in b.items() if k.startswith("CrossReplicaCopy:")) == expected
