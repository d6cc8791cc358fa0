"""A compute set's channels-innermost pooling bands run batched by the fast engine
(codelets/nn/pool_groups.py): the same bits as the reference interpreter's vertex-by-vertex run
(max, average with and without padding, fp16), in fewer calls than groups; a group whose params
differ from vertex to vertex keeps the codelet's own error."""

from __future__ import annotations

import numpy as np
import pytest

import softipu as sp
from softipu import program as P
from softipu.codelets.nn.pool_groups import PoolGroupsRunner
from softipu.ops import nn

SMALL = sp.targets.ipu_model(tiles=8, bytes_per_tile=256 * 1024)


def _pool(a: np.ndarray, fn, reference: bool, dtype=sp.float32):
    g = sp.Graph(SMALL)
    n, c, h, w = a.shape
    var = g.add_variable(dtype, (n, h, w, c), name="x")
    sp.ops.map_linearly(g, var, grain_size=4)
    x = var.transpose(0, 3, 1, 2)
    prog = P.Sequence()
    y = fn(g, x, prog)
    eng = sp.Engine(g, [prog], {"engine.reference": reference, "debug.poisonUnwritten": True})
    eng.write_tensor(x, a)
    for _ in range(2):
        eng.run(0)
    return eng, eng.read_tensor(y)


POOLS = {
    "max": lambda g, x, p: nn.max_pool(g, x, p, kernel=3, stride=2, padding=1),
    "avg": lambda g, x, p: nn.avg_pool(g, x, p, kernel=3, stride=2, padding=1),
    "avg_exclude_pad": lambda g, x, p: nn.avg_pool(g, x, p, kernel=3, stride=2, padding=1,
                                                   count_include_pad=False),
}


@pytest.mark.parametrize("kind", sorted(POOLS))
@pytest.mark.parametrize("shape", [(2, 5, 9, 7), (1, 36, 11, 12)])
def test_batched_bands_give_the_reference_bits(kind, shape, monkeypatch):
    built: list[PoolGroupsRunner] = []
    build = PoolGroupsRunner.build

    def recording(*args, **kwargs):
        runner = build(*args, **kwargs)
        built.append(runner)
        return runner

    monkeypatch.setattr(PoolGroupsRunner, "build", recording)
    a = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    a[0, 0, 0, :2] = np.nan if kind == "max" else 7.0
    eng, got = _pool(a, POOLS[kind], reference=False)
    _, want = _pool(a, POOLS[kind], reference=True)
    assert got.tobytes() == want.tobytes()
    groups = [grp for c in eng.executable.compute_sets.values() for grp in c.groups
              if "PoolGroups" in grp.codelet.__name__]
    assert len(groups) > 1 and len(built) == 1
    assert built[0] is not None and len(built[0].batches) < len(groups)


def test_params_that_differ_between_vertices_leave_the_groups_to_the_codelet():
    a = np.random.default_rng(3).standard_normal((2, 36, 11, 12)).astype(np.float32)
    eng, _ = _pool(a, POOLS["max"], reference=False)
    (groups,) = [c.groups for c in eng.executable.compute_sets.values()
                 if any("PoolGroups" in grp.codelet.__name__ for grp in c.groups)]
    g = next(grp for grp in groups if grp.num_vertices > 1)
    fields = dict(g.fields)
    fields["kh"] = np.arange(g.num_vertices, dtype=np.int32)
    import dataclasses

    assert PoolGroupsRunner.build([dataclasses.replace(g, fields=fields)], eng.storage, "t", None) is None


def test_fp16_batched_bands_give_the_reference_bits():
    a = np.random.default_rng(2).standard_normal((2, 8, 6, 6)).astype(np.float16)
    _, got = _pool(a, POOLS["max"], reference=False, dtype=sp.float16)
    _, want = _pool(a, POOLS["max"], reference=True, dtype=sp.float16)
    assert got.tobytes() == want.tobytes()
