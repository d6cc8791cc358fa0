"""Replicated tensor sharding with updates that read whole tensors (LAMB's trust ratio, a global
gradient-norm clip, automatic loss scaling), sharded gradient accumulators, and the sharded
activation location (kept whole, as PopART keeps it).

Oracles: eager PyTorch on the effective batch (torch's Adam with ``clip_grad_norm_``; PopTorch's
LAMB stepping on the host, its published rule: tests/test_training_optim.py), the same replicated
model unsharded, and bytes and collective counts worked out by hand from the parameter sizes
(ceil(n / R) elements per replica).
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch.fx.experimental.proxy_tensor import make_fx

import softipu as sp
import softipu.poptorch as poptorch
import softipu.torch as st
from _torch_models import TanhMLP
from softipu.frontends.errors import FrontendError
from softipu.frontends.torch.training.locations import Location, StatePlacement, sum_partials_across_replicas

STEPS = 2
# fc1: 8x30 weight (240) + 30 bias; fc2: 30x3 weight (90) + 3 bias (below the 8-element threshold:
# whole on every replica).
SIZES = {"fc1.weight": 240, "fc1.bias": 30, "fc2.weight": 90, "fc2.bias": 3}
SHARDED = [n for n, k in SIZES.items() if k >= 8]


Net = TanhMLP


def _chip():
    return sp.targets.ipu_model(tiles=8, bytes_per_tile=256 * 1024)


def _sharded(min_elements: int = 8):
    return poptorch.TensorLocationSettings().useReplicatedTensorSharding(True) \
        .minElementsForReplicatedTensorSharding(min_elements)


def _run(make_opt, replicas=2, ga=1, locations=None, eager_step=None, half=False, steps=STEPS):
    """PopTorch's training model (its optimizer from ``make_opt``, tensor locations by kind) trained
    ``steps`` steps; eager torch on the same effective batches when ``eager_step`` is given."""
    torch.manual_seed(0)
    module = Net()
    eager = copy.deepcopy(module)
    if half:
        module = module.half()
    opts = poptorch.Options().setTarget(_chip()).replicationFactor(replicas)
    opts.Training.gradientAccumulation(ga)
    for kind, settings in (locations or {}).items():
        getattr(opts.TensorLocations, f"set{kind}Location")(settings)
    if half:
        opts.Training.setAutomaticLossScaling(True)
    executor = poptorch.trainingModel(module, opts, make_opt(module.parameters()))
    eager_opt = make_opt(eager.parameters()) if eager_step is not None else None
    scales = []
    for i in range(steps):
        g = torch.Generator().manual_seed(i)
        n = 4 * replicas * ga
        x, y = torch.randn(n, 8, generator=g), torch.randint(0, 3, (n,), generator=g)
        executor(x.half() if half else x, y)
        if half:
            scales.append(np.asarray(executor._impl.engine.read_tensor(executor._impl.lowered.hyper["loss_scaling"])))
        if eager_step is not None:
            eager_opt.zero_grad()
            eager(x, y)[1].backward()
            eager_step(eager, eager_opt)
    return module, eager, executor._impl, scales


def _close(a: torch.nn.Module, b: torch.nn.Module, rtol=1e-5, atol=1e-6) -> None:
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p.detach().float(), q.detach().float(), rtol=rtol, atol=atol, msg=name)


def _steps(model, fragment: str) -> list[dict]:
    return [s for s in model.report.steps if fragment in str(s["name"])]


def _cycles(model, fragment: str) -> int:
    return sum(int(s["cycles"]) * int(s["count"]) for s in _steps(model, fragment))


def _replica_sums(model) -> set[str]:
    """The partial sums all-reduced across replicas: ``<parameter>/<k>``, one per all-reduce."""
    return {"/".join(str(s["name"]).split("upd/replica_sum/")[1].split("/")[:2])
            for s in _steps(model, "upd/replica_sum/")}


def _lamb(params):
    return poptorch.optim.LAMB(params, lr=0.02, weight_decay=0.01)


def test_sharded_lamb_equals_eager_and_unsharded_with_norms_all_reduced():
    # LAMB's trust ratio reads each weight's whole norm and its update's: on fragments, the two sums
    # of squares of each sharded weight are all-reduced (PopART's LambSquareOp under RTS).
    module, eager, model, _ = _run(_lamb, locations={"Optimizer": _sharded()},
                                   eager_step=lambda m, opt: opt.step())
    _close(module, eager)
    # two scalar all-reduces (|w|^2, |r|^2) per sharded weight; fc2.bias (3 elements) is whole
    assert _replica_sums(model) == {f"{n}/{k}" for n in SHARDED for k in (0, 1)}
    # the moments of the sharded weights are fragments: ceil(n / 2) elements per replica
    for (name, _slot), var in model.lowered.state.items():
        assert var.shape == ((math.ceil(SIZES[name] / 2),) if name in SHARDED else (SIZES[name],))


def _clip_step(max_norm):
    def step(m, opt):
        torch.nn.utils.clip_grad_norm_(m.parameters(), max_norm)
        opt.step()
    return step


@pytest.mark.parametrize("kind", ["Optimizer", "Weight"])
def test_sharded_global_norm_clip_equals_eager(kind):
    # The clip's norm sums every gradient's squares: the sharded gradients' partial sums are
    # all-reduced once each, the whole ones (fc2.bias) are not; 0.05 is far below the norm (clips).
    def adam(params):
        return poptorch.optim.Adam(params, lr=0.01, max_grad_norm=0.05)
    module, eager, model, _ = _run(adam, locations={kind: _sharded()}, eager_step=_clip_step(0.05))
    _close(module, eager)
    assert len(_replica_sums(model)) == len(SHARDED)


def test_sharded_automatic_loss_scaling_counts_every_replica():
    # fp16 weights, SGD with momentum (a sharded state), automatic loss scaling from 2**14. Step 1:
    # no scaled gradient reaches the upper bin (|g| x 2**14 >= 0.125 x 65535 needs |g| >= 0.5; eager's
    # largest is 0.40), the scale doubles. Step 2 (x 2**15: |g| >= 0.25): one element of fc2.weight
    # does (0.27), in the second half of the flattened tensor: replica 1's fragment alone. Its count
    # reaches replica 0 only through the all-reduce of the counts: both halve, as the unsharded model.
    def sgd(params):
        return poptorch.optim.SGD(params, lr=0.01, momentum=0.9, loss_scaling=2.0**14)
    module, _, model, scales = _run(sgd, locations={"Optimizer": _sharded()}, half=True, steps=3)
    plain, _, _, plain_scales = _run(sgd, half=True, steps=3)
    assert [float(s[0]) for s in plain_scales] == [2.0**15, 2.0**14, 2.0**15]
    for got, want in zip(scales, plain_scales, strict=True):
        assert got.shape == (2,) and got[0] == got[1] == want[0] == want[1], (scales, plain_scales)
    assert len(_replica_sums(model)) == len(SHARDED)
    _close(module, plain, rtol=1e-3, atol=1e-3)


def test_sharded_accumulators_reduce_scatter_each_micro_batch():
    # setAccumulatorLocation(useReplicatedTensorSharding(True)) with the optimizer state sharded:
    # each micro-batch's gradient is reduce-scattered and each replica accumulates its fragment;
    # the update reads it as it is (no reduce-scatter after the loop). Same weights as eager Adam on
    # the effective batch and as the unsharded accumulators.
    def adam(params):
        return poptorch.optim.Adam(params, lr=0.01)
    ga = 2
    locations = {"Optimizer": _sharded(), "Accumulator": _sharded()}
    module, eager, model, _ = _run(adam, ga=ga, locations=locations, eager_step=lambda m, opt: opt.step())
    _close(module, eager)
    plain, _, base, _ = _run(adam, ga=ga, locations={"Optimizer": _sharded()})
    _close(module, plain, rtol=0, atol=1e-6)
    loc, loc0 = model.summary()["locations"]["gradients"], base.summary()["locations"]["gradients"]
    assert loc["sharded_over"] == 2 and loc0["sharded_over"] == 1
    # fp32 accumulators: sharded ones hold ceil(n / 2) elements, fc2.bias its 3; the role's bytes
    # on chip drop by at least those (tile memory adds each piece's alignment)
    accums = {v.name: v.shape for v in model.lowered.graph.variables if v.name.startswith("accum/")}
    for n, k in SIZES.items():
        assert accums[f"accum/{n}"] == ((math.ceil(k / 2),) if n in SHARDED else base.lowered.params[n].shape)
    saved = 4 * sum(SIZES[n] - math.ceil(SIZES[n] / 2) for n in SHARDED)
    assert loc0["on_chip_bytes_per_replica"] - loc["on_chip_bytes_per_replica"] >= saved
    for n in SHARDED:
        per_step = {int(s["count"]) for s in _steps(model, f"bwd/reduce_scatter/{n}/")}
        assert per_step and max(per_step) == STEPS * ga, (n, per_step)  # once per micro-batch
        assert _cycles(model, f"upd/reduce_scatter/{n}/") == 0 < _cycles(base, f"upd/reduce_scatter/{n}/")


def test_sharded_activations_are_kept_whole_with_a_warning():
    def adam(params):
        return poptorch.optim.Adam(params, lr=0.01)
    with pytest.warns(st.UnusedOptionWarning, match="activations are never sharded"):
        module, eager, model, _ = _run(adam, locations={"Activation": _sharded(1).useOnChipStorage(False)},
                                       eager_step=lambda m, opt: opt.step())
    _close(module, eager)
    # off chip still applies: the saved activations are stored in Streaming Memory
    assert model.lowered.offload.activations


def test_refused_sharding_combinations_are_named():
    module = Net()

    def compile_with(replicas, **locations):
        opts = poptorch.Options().setTarget(_chip()).replicationFactor(replicas)
        opts.Training.gradientAccumulation(2)
        for kind, settings in locations.items():
            getattr(opts.TensorLocations, f"set{kind}Location")(settings)
        model = poptorch.trainingModel(module, opts, poptorch.optim.Adam(module.parameters(), lr=0.01))
        model.compile(torch.randn(8 * replicas, 8), torch.randint(0, 3, (8 * replicas,)))

    with pytest.raises(FrontendError, match=r"setAccumulatorLocation\(useReplicatedTensorSharding\(True\)\).*"
                                            r"neither the optimizer state nor the weights.*setOptimizerLocation"):
        compile_with(2, Accumulator=_sharded())
    with pytest.raises(FrontendError, match=r"gradient accumulators needs replicas.*replicationFactor"):
        compile_with(1, Accumulator=_sharded())


def test_partial_sums_get_an_all_reduce_and_mixing_ops_are_refused():
    plan = StatePlacement(2, Location(sharded=True), sharded={"w": (16, 8)})
    w, g = torch.zeros(8), torch.zeros(8)

    def norms(p, grad):
        return [p - grad * torch.sqrt(torch.sum(p * p)) / torch.sum(grad * grad)]

    gm = sum_partials_across_replicas(make_fx(norms)(w, g), plan, ["w"], [], {})
    targets = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    assert targets.count(torch.ops.softipu.replica_sum.default) == 2
    # each sum's readers read the all-reduced value
    for node in gm.graph.nodes:
        if node.target is torch.ops.aten.sum.default:
            assert [u.target for u in node.users] == [torch.ops.softipu.replica_sum.default]
    # the same parameter unsharded (or no parameter sharded): unchanged
    unsharded = make_fx(norms)(w, g)
    assert sum_partials_across_replicas(unsharded, StatePlacement(2, Location()), ["w"], [], {}) is unsharded

    def mixing(p, grad):
        return [p - torch.cumsum(grad, 0)]

    with pytest.raises(FrontendError, match="update of w reads a fragment.*cumsum.*useReplicatedTensorSharding"):
        sum_partials_across_replicas(make_fx(mixing)(w, g), plan, ["w"], [], {})
