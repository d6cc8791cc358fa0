"""Automatic placement (frontends/torch/scale/placement.py) against a brute-force oracle."""

from __future__ import annotations

import itertools
import random

import pytest
import torch

from softipu.frontends.errors import FrontendError
from softipu.frontends.torch.scale import LayerCost
from softipu.frontends.torch.scale.placement import apply_placement, begin_block_lines, propose_split
from softipu.frontends.torch.scale.pod import TrainingConfig, ipu_memory
from softipu.target.pipeline import stash_depths


def layer(i, fwd, bwd, params, saved):
    return LayerCost(name=f"layers[{i}]", forward=fwd, backward=bwd, update_per_param=0.0, params=params,
                     param_bytes=2 * params, saved_bytes=saved, input_bytes=saved // 10, output_bytes=0,
                     code_bytes=0, temporary_bytes=0)


def oracle(layers, k, cfg, capacity):
    """Every composition of len(layers) into k positive parts; the smallest slowest stage that fits."""
    n, best = len(layers), None
    depths = stash_depths(k, True)
    for cuts in itertools.combinations(range(1, n), k - 1):
        bounds = (0, *cuts, n)
        parts = [layers[a:b] for a, b in itertools.pairwise(bounds)]
        if not all(ipu_memory(i, p, cfg, depths[i], capacity).fits for i, p in enumerate(parts)):
            continue
        slowest = max(sum(x.forward + x.backward + (x.forward if cfg.recompute else 0) for x in p)
                      for p in parts)
        best = slowest if best is None else min(best, slowest)
    return best


@pytest.mark.parametrize("seed", range(12))
def test_matches_brute_force(seed):
    rng = random.Random(seed)
    n, k = rng.randint(4, 9), rng.randint(2, 4)
    layers = [layer(i, rng.randint(1, 50), rng.randint(1, 90), rng.randint(1, 40), rng.randint(0, 30))
              for i in range(n)]
    cfg = TrainingConfig(micro_batch=1, accumulation=16, replicas=1, layers_per_ipu=(n,),
                         recompute=bool(seed % 2), optimizer_state_bytes_per_param=4)
    capacity = rng.randint(150, 700)
    want = oracle(layers, k, cfg, capacity)
    if want is None:
        with pytest.raises(FrontendError, match="no split"):
            propose_split(layers, k, cfg, capacity)
        return
    got = propose_split(layers, k, cfg, capacity)
    assert got.slowest == want
    assert sum(got.layers_per_ipu) == n and min(got.layers_per_ipu) >= 1
    assert all(m.fits for m in got.memory)


def test_no_fit_names_ipu_and_what_dominates():
    layers = [layer(i, 10, 10, 1000, 0) for i in range(4)]
    cfg = TrainingConfig(1, 8, 1, (4,), recompute=True)
    with pytest.raises(FrontendError, match=r"IPU \d \(stage \d, layers layers\[\d\]\.\.layers\[\d\]\).*"
                                            r"optimizer_state dominating"):
        propose_split(layers, 2, cfg, capacity=1000)
    with pytest.raises(FrontendError, match="cannot fill 5 pipeline IPUs"):
        propose_split(layers, 5, cfg, capacity=10**9)


def test_begin_block_lines_and_apply():
    assert begin_block_lines(["emb", "layers[0]", "layers[1]", "layers[2]"], (1, 2, 1)) == [
        'model.emb = poptorch.BeginBlock(model.emb, "ipu0", ipu_id=0)',
        'model.layers[0] = poptorch.BeginBlock(model.layers[0], "ipu1", ipu_id=1)',
        'model.layers[2] = poptorch.BeginBlock(model.layers[2], "ipu2", ipu_id=2)']
    import softipu.poptorch as poptorch

    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    apply_placement(net, ["[0]", "[1]", "[2]"], (2, 1))
    assert poptorch.block_of(net[0]) == ("ipu0", 0)
    assert poptorch.block_of(net[2]) == ("ipu1", 1)
    assert poptorch.block_of(net[1]) is None
