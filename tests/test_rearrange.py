"""Transposing re-layouts (ops.rearrange) and the Transpose2d codelet, against numpy transposes
and hand-worked region counts and cycle figures."""

from __future__ import annotations

import numpy as np
import pytest

import softipu as sp
import softipu.torch as st
from softipu import program as P
from softipu.codelets.transpose import transpose_codelet, transpose_cycles
from softipu.compiler.exchange import copy_transfers
from softipu.ops.common import OpContext
from softipu.ops.matmul import _grouped, _options, _Spec
from softipu.ops.rearrange import is_column_major, transpose_into_slabs

torch = pytest.importorskip("torch")

ENGINES = [False, True]  # engine.reference


def _slab_case(dtype, reference: bool):
    """A 256 x 256 matrix stored row-major, read as its transpose (column-major), re-laid into
    two column slabs of 128 columns, row blocks of 64 rows cut into 4 pieces of 16 rows over 8
    tiles."""
    g = sp.Graph(sp.targets.ipu_model(tiles=8, bytes_per_tile=1024 * 1024))
    x = g.add_variable(dtype, (256, 256), name="x")
    sp.ops.map_linearly(g, x)
    prog = P.Sequence()
    ctx = OpContext(g, prog, "t", "t")
    src = x.T.reshape(1, 256, 256)
    assert is_column_major(src) and not is_column_major(x.reshape(1, 256, 256))
    rows, cols = np.arange(0, 256, 64), np.arange(0, 256, 128)
    dst = transpose_into_slabs(ctx, src, rows, np.full(4, 64), cols, np.full(2, 128), 4,
                               lambda gg, rb, p, cb: (p + 4 * cb) % 8, "d")
    eng = sp.Engine(g, [prog], options={"engine.reference": reference})
    return g, x, dst, prog, eng


@pytest.mark.parametrize("reference", ENGINES)
@pytest.mark.parametrize("dtype", [sp.float32, sp.float16])
def test_transposed_slabs_are_numpys_transpose_bitwise(dtype, reference):
    g, x, dst, _, eng = _slab_case(dtype, reference)
    host = np.random.default_rng(0).standard_normal((256, 256)).astype(dtype.numpy)
    eng.write_tensor(x, host)
    eng.run(0)
    want = np.concatenate([host.T[:, :128].ravel(), host.T[:, 128:].ravel()])  # slab 0, slab 1
    assert eng.read_tensor(dst).tobytes() == want.tobytes()


def test_a_transposing_relayout_exchanges_runs_not_elements():
    """Hand count: 4 row blocks x 4 pieces x 2 slabs = 32 pieces of 16 rows x 128 columns. fp32
    units on Transpose2d's fast path are 8 rows (128 x (8 - 2) / 2 = 384 < 512; 10 rows would be
    512), so each piece is 2 units, and each unit's column is one run of 8 elements contiguous in
    the source (x row c) and in the unit's buffer: 64 x 128 = 8,192 runs, each sent and received
    once at most. Element by element it would be up to 65,536 regions a side; the exchange code is
    16 B a region a side."""
    g, _, _, prog, eng = _slab_case(sp.float32, False)
    copy = next(p for p in prog.programs if isinstance(p, P.Copy))
    transfers, _ = copy_transfers(copy.src, copy.dst, {sp.float32: g.resolved_mapping(sp.float32)}, 8)
    send, recv = transfers.pieces_per_tile(8)
    # x is 32 rows a tile; piece p of slab j sits on tile 4 j + p, which holds x's rows
    # 128 j + 32 p ..+ 31: 32 of each unit's 128 runs stay put, 64 x 32 = 2,048 in all.
    assert send.sum() == recv.sum() == 8192 - 2048
    per_side = g.target.exchange_code_bytes_per_region
    assert eng.report.memory_by_category["exchange_code"] <= 2 * 8192 * per_side
    # Always live: x (read from the host) and the slabs (never read here); the buffer, written
    # by one copy per box, is an intermediate (WriteUndef first), not a third 256 KiB.
    assert eng.report.memory_by_category["always_live_variables"] == 2 * 256 * 256 * 4
    # 8 units a tile of 27 + 11 + 64 x (6 + 3 x 3) = 998 worker cycles each, shared by the
    # tile's 6 worker contexts (6 x ceil(8 x 998 / 6) tile cycles).
    assert int(transpose_cycles(128, 8, 4)) == 998
    step = next(s for s in eng.report.steps if s["name"] == "t/transpose")
    assert step["compute_cycles"] == 6 * -(-8 * 998 // 6)


def test_transpose2d_cycles_are_poplibs_figures():
    """poplibs' Transpose2d estimator, one matrix: fp32 16x16 fast path 27 + 11 + 8 x (6 + 3 x 7)
    = 254; fp32 128 x 16 (stride 128 x 14 / 2 = 896 >= 512): slow 13 + 8 + 16 x (5 + 256) = 4,197;
    fp16 16x16: 37 + 12 + 4 x (15 + 4 x 2) = 141; fp16 4x4: 32 + 15 = 47; fp16 3 x 5 (slow):
    15 + 8 + 5 x (5 + 7) = 83."""
    assert int(transpose_cycles(16, 16, 4)) == 254
    assert int(transpose_cycles(128, 16, 4)) == 4197
    assert int(transpose_cycles(16, 16, 2)) == 141
    assert int(transpose_cycles(4, 4, 2)) == 47
    assert int(transpose_cycles(3, 5, 2)) == 83


def test_transpose2d_batches_mixed_shapes():
    """One batch of equal field lengths holding 2 x 6 and 3 x 4 matrices (and a replica axis)."""
    codelet = transpose_codelet(sp.float32)
    src = np.arange(2 * 3 * 12, dtype=np.float32).reshape(2, 3, 12)
    dst = np.zeros_like(src)
    rows = np.array([2, 3, 2], np.int32).reshape(3, 1)
    codelet.compute(src, dst, rows, 12 // rows)
    for r in range(2):
        for v, k in enumerate((2, 3, 2)):
            assert np.array_equal(dst[r, v], src[r, v].reshape(k, 12 // k).T.ravel())


@pytest.mark.parametrize("reference", ENGINES)
def test_matmul_of_a_column_major_operand_rearranges_and_matches_numpy(reference):
    """``a.T @ b`` with ``a`` row-major and an unswapped plan: the left operand is column-major,
    so it is rearranged (exchange + Transpose2d) rather than copied element by element."""
    g = sp.Graph(sp.targets.ipu_model(tiles=16, bytes_per_tile=512 * 1024))
    a = g.add_variable(sp.float32, (96, 128), name="a")
    sp.ops.map_linearly(g, a)
    b = g.add_variable(sp.float32, (96, 40), name="b")
    sp.ops.map_linearly(g, b)
    prog = P.Sequence()
    ctx = OpContext.start(g, prog, "matmul", "mm", a, b)
    opts = _options(ctx, None, sp.float32)
    spec = _Spec.of(ctx, (128, 96), (96, 40), sp.float32, sp.float32)
    c = _grouped(ctx, spec.lhs(a.T), spec.rhs(b), spec, opts, allow_swap=False)
    names = [p.compute_set.name for p in prog.programs if isinstance(p, P.Execute)]
    assert "mm/transpose" in names
    eng = sp.Engine(g, [prog], options={"engine.reference": reference})
    rng = np.random.default_rng(1)
    ha, hb = rng.standard_normal((96, 128)).astype(np.float32), rng.standard_normal((96, 40)).astype(np.float32)
    eng.write_tensor(a, ha)
    eng.write_tensor(b, hb)
    eng.run(0)
    want = ha.T.astype(np.float64) @ hb
    assert np.allclose(eng.read_tensor(c).reshape(128, 40), want, rtol=1e-4, atol=1e-4)


def test_a_linear_weight_needs_no_copy():
    """A torch Linear's weight is created in the layout its matmul wants (createMatMulInputRHS):
    no Copy program reads it on the device."""
    torch.manual_seed(0)
    net = torch.nn.Linear(64, 48).eval()
    model = st.inference_model(net, st.Options(target=sp.targets.ipu_model(tiles=16)))
    x = torch.randn(32, 64)
    got = model(x)
    with torch.no_grad():
        assert torch.allclose(got, net(x), rtol=1e-4, atol=1e-4)
    steps = model.report.steps
    copies = [s["name"] for s in steps if s["name"].startswith("Copy ") and "weight" in s["name"]
              and "'" not in s["name"]]
    assert copies == []


@pytest.mark.parametrize("reference", ENGINES)
def test_grouped_indexed_column_major_operand(reference):
    """Attention's ``q @ k^T`` shape: 3 groups, ``k^T`` an indexed (gathered) column-major view
    whose K (512) the plan cuts into blocks shorter than a column; fp16 through fp32 partials,
    against numpy."""
    g = sp.Graph(sp.targets.ipu_model(tiles=16, bytes_per_tile=512 * 1024))
    q = g.add_variable(sp.float16, (3, 64, 512), name="q")
    k = g.add_variable(sp.float16, (3, 64, 512), name="k")
    for t in (q, k):
        sp.ops.map_linearly(g, t)
    kt = k[:, np.arange(64)].transpose(0, 2, 1)  # (3, 512, 64), one address per element
    assert kt.index is not None or kt.slabs is not None
    prog = P.Sequence()
    ctx = OpContext.start(g, prog, "matmul", "qk", q, kt)
    opts = _options(ctx, None, sp.float16)
    spec = _Spec.of(ctx, q.shape, kt.shape, sp.float16, sp.float16)
    c = _grouped(ctx, spec.lhs(q), spec.rhs(kt), spec, opts, allow_swap=False)
    assert "qk/transpose" in [p.compute_set.name for p in prog.programs if isinstance(p, P.Execute)]
    eng = sp.Engine(g, [prog], options={"engine.reference": reference})
    rng = np.random.default_rng(2)
    hq, hk = (rng.standard_normal((3, 64, 512)).astype(np.float16) for _ in range(2))
    eng.write_tensor(q, hq)
    eng.write_tensor(k, hk)
    eng.run(0)
    want = np.matmul(hq.astype(np.float64), hk.astype(np.float64).transpose(0, 2, 1))
    assert np.allclose(eng.read_tensor(c).astype(np.float64), want, rtol=2e-2, atol=5e-2)


@pytest.mark.parametrize("reference", ENGINES)
@pytest.mark.parametrize("indexed", [False, True])
def test_ragged_blocks_and_pieces_match_numpy(indexed, reference):
    """Row blocks 50, 50, 7 (pieces of 17, 17, 16 rows and one of 7), column slabs 32, 32, 6, two
    groups; the source strided or indexed: the slabs hold numpy's values bitwise."""
    g = sp.Graph(sp.targets.ipu_model(tiles=8, bytes_per_tile=256 * 1024))
    x = g.add_variable(sp.float32, (2, 70, 107), name="x")
    sp.ops.map_linearly(g, x)
    src = x.transpose(0, 2, 1)
    if indexed:
        src = src[:, np.arange(107)]
        assert not src.is_strided
    assert is_column_major(src)
    prog = P.Sequence()
    rows, rsz = np.array([0, 50, 100]), np.array([50, 50, 7])
    cols, csz = np.array([0, 32, 64]), np.array([32, 32, 6])
    dst = transpose_into_slabs(OpContext(g, prog, "t", "t"), src, rows, rsz, cols, csz, 3,
                               lambda gg, rb, p, cb: (gg + rb + 3 * p + cb) % 8, "d")
    eng = sp.Engine(g, [prog], options={"engine.reference": reference})
    host = np.random.default_rng(3).standard_normal((2, 70, 107)).astype(np.float32)
    eng.write_tensor(x, host)
    eng.run(0)
    t = host.transpose(0, 2, 1)
    slabs = list(zip(cols.tolist(), csz.tolist(), strict=True))
    want = np.concatenate([t[k][:, c:c + w].ravel() for k in range(2) for c, w in slabs])
    assert eng.read_tensor(dst).tobytes() == want.tobytes()


def test_operand_copies_into_slabs_are_intermediates():
    """A matmul operand copied into column slabs in two copies (full slabs, then a narrower last
    one) or rearranged box by box is not always live: each copy alone writes part of it."""
    g = sp.Graph(sp.targets.ipu_model(tiles=16, bytes_per_tile=512 * 1024))
    a = g.add_variable(sp.float32, (48, 1100), name="a")
    b = g.add_variable(sp.float32, (64, 1000), name="b")
    for t in (a, b):
        sp.ops.map_linearly(g, t)
    prog = P.Sequence()
    sp.ops.matmul(g, a[:, :1000], b.T, prog, name="mm")  # a: 7 slabs of 128 and one of 104
    eng = sp.Engine(g, [prog], estimate_only=True)
    made = [v for v in g.variables if v.name.startswith("mm/") and v.name != "mm/out"]
    assert len(made) >= 2 and any(p for p in prog.programs if isinstance(p, P.WriteUndef))
    for v in made:
        assert not eng.executable.memory.always_live[v.id], v.name
