"""Model parallelism (issue 14 item 2): PopTorch blocks on several IPUs, pipelined, sharded, phased.

Oracles: the same model on one IPU with the same gradient accumulation (a pipelined step is that
mathematics), eager PyTorch with the effective batch, and PopART's schedule worked out by hand.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import softipu as sp
import softipu.poptorch as poptorch
from softipu.errors import SoftIPUError
from softipu.graph.virtual import VirtualGraph

CHIP = sp.targets.ipu_model(tiles=4, bytes_per_tile=256 * 1024)
HIDDEN, SEQ, LAYERS = 8, 4, 4


class Layer(torch.nn.Module):
    """A BERT-style encoder layer: self-attention, feed-forward, post-layer-norms."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = torch.nn.Linear(HIDDEN, 3 * HIDDEN)
        self.out = torch.nn.Linear(HIDDEN, HIDDEN)
        self.ln1 = torch.nn.LayerNorm(HIDDEN)
        self.ff1 = torch.nn.Linear(HIDDEN, 2 * HIDDEN)
        self.ff2 = torch.nn.Linear(2 * HIDDEN, HIDDEN)
        self.ln2 = torch.nn.LayerNorm(HIDDEN)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        att = torch.softmax(q @ k.transpose(-1, -2) / HIDDEN ** 0.5, dim=-1) @ v
        x = self.ln1(x + self.out(att))
        return self.ln2(x + self.ff2(torch.nn.functional.gelu(self.ff1(x))))


class Encoder(torch.nn.Module):
    def __init__(self, blocks: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layers = torch.nn.ModuleList(Layer() for _ in range(LAYERS))
        if blocks:
            for i, layer in enumerate(self.layers):
                poptorch.BeginBlock(layer, f"layer{i}", ipu_id=i)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for layer in self.layers:
            x = layer(x)
        return x, torch.nn.functional.mse_loss(x, y)


def _data(batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(batch, SEQ, HIDDEN, generator=g), torch.randn(batch, SEQ, HIDDEN, generator=g)


def _train(model: torch.nn.Module, ga: int, steps: int, strategy=None, replicas: int = 1):
    opts = poptorch.Options().setTarget(CHIP).replicationFactor(replicas)
    opts.Training.gradientAccumulation(ga)
    if strategy is not None:
        opts.setExecutionStrategy(strategy)
    ipu = poptorch.trainingModel(model, opts, torch.optim.SGD(model.parameters(), lr=0.05))
    x, y = _data(ga * replicas)
    losses = [float(ipu(x, y)[1].mean()) for _ in range(steps)]
    return ipu, losses


def test_four_ipu_pipelined_encoder_equals_one_ipu_and_eager_torch():
    ga, steps = 7, 10  # 4 IPUs: 2 x 4 - 1 = 7 stages, the least accumulation PopART allows
    piped, piped_losses = _train(Encoder(blocks=True), ga, steps)
    single, single_losses = _train(Encoder(blocks=False), ga, steps)
    np.testing.assert_allclose(piped_losses, single_losses, rtol=1e-5, atol=1e-6)
    for (n, a), (_, b) in zip(piped.named_parameters(), single.named_parameters(), strict=True):
        np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), rtol=1e-5, atol=1e-5, err_msg=n)
    eager = Encoder(blocks=False)  # the effective batch in one step; mean over micro-batches = batch mean
    opt = torch.optim.SGD(eager.parameters(), lr=0.05)
    x, y = _data(ga)
    for _ in range(steps):
        opt.zero_grad()
        eager(x, y)[1].backward()
        opt.step()
    for (n, a), (_, b) in zip(piped.named_parameters(), eager.named_parameters(), strict=True):
        np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), rtol=1e-4, atol=1e-5, err_msg=n)
    # each layer's weights live on its own IPU; the target has 4
    low = piped._impl.lowered
    assert low.graph.target.num_ipus == 4
    for i in range(LAYERS):
        tiles = low.graph.tile_of(low.params[f"layers.{i}.qkv.weight"])
        assert set(CHIP.with_num_ipus(4).ipu_of_tile(np.unique(tiles)).tolist()) == {i}
    pipe = piped._impl.summary()["pipeline"]
    assert [s["ipu"] for s in pipe["stages"]] == [0, 1, 2, 3]
    assert pipe["schedule"]["stages"] == 7 and pipe["schedule"]["stash_depth"] == [7, 5, 3, 0]
    assert pipe["stash_bytes"][3] == 0 and min(pipe["stash_bytes"][:3]) > 0
    assert len(pipe["ipu_memory_bytes"]) == 4 and min(pipe["ipu_memory_bytes"]) > max(pipe["stash_bytes"])
    assert 0 < pipe["cycles"] < pipe["sequential_cycles"]  # the stages overlap


def test_poptorch_script_with_blocks_pipelining_replication_and_accumulation_runs_unchanged():
    # -- what a PopTorch user writes ---------------------------------------------------------------------
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.l1 = torch.nn.Linear(6, 6)
            self.l2 = poptorch.BeginBlock(torch.nn.Linear(6, 3), "head", ipu_id=1)

        def forward(self, x, labels=None):
            out = self.l2(torch.relu(self.l1(x)))
            if labels is None:
                return out
            return out, poptorch.identity_loss(torch.nn.functional.cross_entropy(out, labels), "mean")

    torch.manual_seed(3)
    model = Net()
    opts = poptorch.Options()  # GC200s, as PopTorch's default Mk2 IPUs
    opts.setExecutionStrategy(poptorch.PipelinedExecution(poptorch.AutoStage.SameAsIpu))
    opts.replicationFactor(2)
    opts.Training.gradientAccumulation(3)
    optimizer = poptorch.optim.SGD(model.parameters(), lr=0.1)
    training = poptorch.trainingModel(model, opts, optimizer)
    x, labels = torch.randn(12, 6), torch.randint(0, 3, (12,))
    for _ in range(2):
        _, loss = training(x, labels)
    # -- checks: eager torch on the effective batch (replicas x accumulation) ------------------------------
    torch.manual_seed(3)
    eager = Net()
    poptorch.removeBlocks(eager)
    opt = torch.optim.SGD(eager.parameters(), lr=0.1)
    for _ in range(2):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(eager(x), labels).backward()
        opt.step()
    for a, b in zip(model.parameters(), eager.parameters(), strict=True):
        np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), rtol=1e-5, atol=1e-6)
    assert training._impl.lowered.graph.target.num_ipus == 2


def _two_stage(strategy):
    class Two(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(5)
            self.a = torch.nn.Linear(8, 8)
            self.b = torch.nn.Linear(8, 8)

        def forward(self, x, y):
            with poptorch.Block("A", ipu_id=0):
                h = torch.relu(self.a(x))
            with poptorch.Block("B", ipu_id=1):
                o = self.b(h)
            return o, torch.nn.functional.mse_loss(o, y)

    model = Two()
    ipu, losses = _train(model, 3, 2, strategy)
    return ipu, losses, model


def test_sharded_gives_the_same_values_and_its_cycles_are_the_program_s():
    piped, piped_losses, a = _two_stage(None)
    sharded, sharded_losses, b = _two_stage(poptorch.ShardedExecution())
    np.testing.assert_allclose(piped_losses, sharded_losses, rtol=1e-6)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        np.testing.assert_allclose(p.detach().numpy(), q.detach().numpy(), rtol=1e-6)
    s = sharded._impl.summary()["pipeline"]
    assert s["strategy"] == "sharded" and "schedule" not in s
    # one IPU at a time: the stages' work adds up, so the step is the program run as it is
    assert sharded._impl.cycle_count == s["sequential_cycles"] == s["cycles"]


def test_two_stage_schedule_by_hand():
    ipu, _, _ = _two_stage(None)
    s = ipu._impl.summary()["pipeline"]
    f0, b0 = s["stages"][0]["forward_cycles"], s["stages"][0]["backward_cycles"]
    f1, b1 = s["stages"][1]["forward_cycles"], s["stages"][1]["backward_cycles"]
    c01 = s["stages"][1]["copy_in_cycles"]  # activation IPU0 -> IPU1
    c10 = s["stages"][0]["copy_in_cycles"]  # gradient IPU1 -> IPU0
    # Training on 2 IPUs: S = 3 stages [f0 | f1+b1 | b0]; A = 3 micro-batches: 5 pipeline cycles.
    # Stage s runs in cycles s..s+2; a cycle lasts its busiest IPU plus its dearest copy:
    # p0: {0}: f0 + c01;  p1: {0,1}: max(f0, f1+b1) + max(c01, c10);  p2: {0,1,2}: max(f0+b0, f1+b1)
    # + max(c01, c10);  p3: {1,2}: max(b0, f1+b1) + c10;  p4: {2}: b0.
    cycle = [f0 + c01, max(f0, f1 + b1) + max(c01, c10), max(f0 + b0, f1 + b1) + max(c01, c10),
             max(b0, f1 + b1) + c10, b0]
    sched = s["schedule"]
    assert sched["fill_cycles"] == cycle[0] + cycle[1]
    assert sched["main_cycles"] == cycle[2]
    assert sched["flush_cycles"] == cycle[3] + cycle[4]
    staged = f0 + b0 + f1 + b1 + c01 + c10
    assert s["cycles"] == s["sequential_cycles"] - 3 * staged + sum(cycle)
    assert s["other_cycles"] == s["cycles"] - sum(cycle)  # streams, accumulation, the update
    assert ipu._impl.cycle_count == s["cycles"]


# -- bad input -----------------------------------------------------------------------------------------
class _Blocks(torch.nn.Module):
    def __init__(self, ipus):
        super().__init__()
        torch.manual_seed(0)
        self.layers = torch.nn.ModuleList(torch.nn.Linear(4, 4) for _ in ipus)
        for layer, ipu in zip(self.layers, ipus, strict=True):
            poptorch.BeginBlock(layer, ipu_id=ipu)

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x, poptorch.identity_loss(x.sum(), "none")


def _compile(ipus, ga=8, auto_round=False):
    opts = poptorch.Options().setTarget(CHIP).autoRoundNumIPUs(auto_round)
    opts.Training.gradientAccumulation(ga)
    net = _Blocks(ipus)
    model = poptorch.trainingModel(net, opts, torch.optim.SGD(net.parameters(), lr=0.1))
    model(torch.randn(ga, 4))
    return model


def test_bad_input_is_named():
    with pytest.raises(SoftIPUError, match=r"test_torch_pipeline.py.*stages must ascend"):
        _compile([1, 0])
    with pytest.raises(SoftIPUError, match="depth \\(gradient accumulation factor\\) must equal at least the "
                                           "number of pipeline stages.*at least 5"):
        _compile([0, 1, 2], ga=4, auto_round=True)
    with pytest.raises(SoftIPUError, match="3 IPUs: the number of IPUs must be a power of 2.*autoRoundNumIPUs"):
        _compile([0, 1, 2])
    assert _compile([0, 1, 2], ga=5, auto_round=True)._impl.lowered.graph.target.num_ipus == 4
    with pytest.raises(SoftIPUError, match="Invalid key: GPU0"):
        poptorch.Options().setAvailableMemoryProportion({"GPU0": 0.5})


def test_block_api():
    layer = poptorch.BeginBlock(torch.nn.Linear(2, 2), "enc", ipu_id=1)
    assert poptorch.block_of(layer) == ("enc", 1)
    poptorch.removeBlocks(layer)
    assert poptorch.block_of(layer) is None and not layer._forward_pre_hooks

    @poptorch.BlockFunction("f", ipu_id=0)
    def double(x):
        return x * 2

    assert torch.equal(double(torch.ones(2)), torch.full((2,), 2.0))
    s = poptorch.SerialPhasedExecution(poptorch.Phase(poptorch.Stage("a"), poptorch.Stage("b")), ["c"])
    s.phase(0).ipus(0, 1)
    assert s.config()["blocks"] == {"a": (0, 0, 0), "b": (1, 0, 1), "c": (2, 1, None)}
    with pytest.raises(SoftIPUError, match="associated with more than one stage"):
        poptorch.PipelinedExecution("a", poptorch.Stage("a"))
    assert VirtualGraph.of_ipu(sp.Graph(CHIP.with_num_ipus(2)), 1).tile_offset == 4


# -- inference, per-IPU memory, phases, a stage that does not fit -----------------------------------------
class _TwoLayers(torch.nn.Module):
    def __init__(self, width: int = 16):
        super().__init__()
        torch.manual_seed(2)
        self.a = torch.nn.Linear(width, 2 * width)
        self.b = poptorch.BeginBlock(torch.nn.Linear(2 * width, width), "b", ipu_id=1)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def _infer(strategy=None, memory=None, chip=CHIP, width=16):
    opts = poptorch.Options().setTarget(chip).deviceIterations(4)
    if strategy is not None:
        opts.setExecutionStrategy(strategy)
    if memory is not None:
        opts.setAvailableMemoryProportion(memory)
    net = _TwoLayers(width).eval()
    model = poptorch.inferenceModel(net, opts)
    x = torch.randn(8, width)
    with torch.no_grad():
        np.testing.assert_allclose(model(x).numpy(), net(x).numpy(), rtol=1e-5, atol=1e-6)
    return model


def test_pipelined_inference_values_and_schedule():
    piped, sharded = _infer(), _infer(poptorch.ShardedExecution())
    low = piped._impl._current.lowered
    plan = low.extra["pipeline"]
    assert low.graph.target.num_ipus == 2 and [i for _, _, i in plan.placement.stages] == [0, 1]
    s = plan.summary(piped._impl.engine.executable, sharded._impl.cycle_count)
    f0, f1 = (st["forward_cycles"] for st in s["stages"])
    c = s["stages"][1]["copy_in_cycles"]
    # inference: S = 2 stages over A = 4 device iterations: 5 pipeline cycles
    # p0: f0 + c; p1..p3: max(f0, f1) + c; p4: f1
    assert s["schedule"]["fill_cycles"] + s["schedule"]["main_cycles"] + s["schedule"]["flush_cycles"] == \
        f0 + c + 3 * (max(f0, f1) + c) + f1
    assert piped._impl.cycle_count < sharded._impl.cycle_count


def test_available_memory_proportion_per_ipu_reaches_each_ipu_s_planner(monkeypatch):
    import importlib

    matmul = importlib.import_module("softipu.ops.matmul")
    seen = []
    plan = matmul._plan

    def spy(spec, opts, *args, **kwargs):
        seen.append(opts["availableMemoryProportion"])
        return plan(spec, opts, *args, **kwargs)

    monkeypatch.setattr(matmul, "_plan", spy)
    _infer(memory={"IPU0": 0.6, "IPU1": 0.05})
    assert seen[:2] == [0.6, 0.05]  # layer a on IPU 0, layer b on IPU 1


def test_phased_strategies_give_the_same_values():
    for strategy in (poptorch.SerialPhasedExecution(poptorch.Phase(poptorch.Stage("b").ipu(1))),
                     poptorch.ParallelPhasedExecution(poptorch.Phase(poptorch.Stage("b").ipu(1)))):
        model = _infer(strategy)
        s = model._impl._current.lowered.extra["pipeline"]
        assert s.placement.strategy in ("serial_phased", "parallel_phased")
    with pytest.raises(SoftIPUError, match="Unknown Block 'b'"):
        _infer(poptorch.PipelinedExecution("x"))


def test_a_stage_that_does_not_fit_names_its_ipu():
    class Wide(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Linear(8, 8)
            self.b = poptorch.BeginBlock(torch.nn.Linear(8, 2000), "wide", ipu_id=1)  # 64 KB of weights

        def forward(self, x):
            return self.b(self.a(x))

    tiny = sp.targets.ipu_model(tiles=4, bytes_per_tile=8 * 1024)
    model = poptorch.inferenceModel(Wide().eval(), poptorch.Options().setTarget(tiny).deviceIterations(2))
    # layer b cannot fit IPU 1's four 8 KiB tiles: the message names the IPU, the stage and what
    # dominates (the matmul planner's operands per tile)
    with pytest.raises(SoftIPUError, match=r"(?s)pipelined execution, IPU 1 \(stage 1\).*no plan.*operands"):
        model(torch.randn(4, 8))
