"""A training step's one-time costs (issue 11's first call): slab-laid fields read piece by piece
through strided views (no int64 index built), copy fusion's source check without address lists,
and the rollback's all-zero chunks not copied. Oracles: addresses worked out by hand with numpy,
values read before a failing step."""

from __future__ import annotations

import numpy as np
import pytest

import softipu as sp
from softipu.engine import copy_fusion, fast
from softipu.engine.fast import _bound
from softipu.graph.tensor import _INDEX_SLOT, Slabs, Tensor


def _slab_tensor(g: sp.Graph, base: int) -> tuple[Tensor, np.ndarray]:
    """A (7, 5) tensor of three row pieces at irregular places (rows 2 apart, then 3 rows 9
    apart, then one), as an elementwise op's field over a matmul output's rows is laid out; and
    its addresses worked out row by row."""
    pieces = ((base + 3, (2, 5), (11, 1), (2, 5)), (base + 40, (4, 5), (9, 1), (4, 5)),
              (base + 100, (1, 5), (0, 1), (1, 5)))
    starts = [3, 14, 40, 49, 58, 67, 100]
    want = np.array([[base + s + j for j in range(5)] for s in starts])
    return Tensor(g, sp.float32, (7, 5), 0, (), None, Slabs(pieces, 0, (0, 1))), want


def _storage(replicas: int = 1):
    g = sp.Graph(sp.targets.ipu_model(tiles=2))
    v = g.add_variable(sp.float32, (128,), name="v")
    sp.ops.map_linearly(g, v)
    eng = sp.Engine(g, [sp.program.Sequence()], {"debug.allowOutOfMemory": True})
    storage = eng._interpreter.storage
    values = np.arange(storage.buffers[sp.float32].shape[1], dtype=np.float32) * 0.5 - 7
    storage.buffers[sp.float32][:] = values
    return g, v, storage, values


def test_a_slab_gather_reads_its_pieces_without_building_an_index():
    g, v, storage, values = _storage()
    t, want = _slab_tensor(g, v.offset)
    np.testing.assert_array_equal(storage.gather(t, replica_axis=False), values[want])
    np.testing.assert_array_equal(storage.gather(t, replica_axis=True), values[want][None])
    assert _INDEX_SLOT.__get__(t, Tensor) is None  # no int64 an element kept on the tensor
    tt = t.transpose((1, 0))  # the pieces joined along the transposed tensor's axis 1
    np.testing.assert_array_equal(storage.gather(tt, replica_axis=False), values[want].T)
    assert _INDEX_SLOT.__get__(tt, Tensor) is None


@pytest.mark.parametrize("writes", [False, True])
def test_a_bound_slab_field_copies_in_and_out_piece_by_piece(monkeypatch, writes):
    """The fast engine's field binding (engine/fast.py _bound): a slab-laid field of several
    pieces, too large to look for one strided form (a training step's logits rows), gets an
    array kept between runs, filled from the pieces' views and, where written, copied back into
    exactly the field's elements."""
    monkeypatch.setattr(fast, "STRIDED_FORM_MAX", 16)
    g, v, storage, values = _storage()
    t, want = _slab_tensor(g, v.offset)
    bound = _bound(storage, t, writes, replica_axis=False)
    assert bound is not None and _INDEX_SLOT.__get__(t, Tensor) is None
    handed, copy_in, copy_out = bound[2], bound[3], bound[4]
    copy_in()
    np.testing.assert_array_equal(handed, values[want])
    assert handed.flags.c_contiguous and handed.flags.writeable == writes
    if writes:
        handed[...] = -np.arange(35, dtype=np.float32).reshape(7, 5)
        copy_out()
        expect = values.copy()
        expect[want] = handed
        np.testing.assert_array_equal(storage.buffers[sp.float32][0], expect)
    else:
        assert copy_out is None


def test_separable_check_finds_one_wrong_address_in_a_large_view():
    """copy_fusion._strided_form checks a view of the source table chunk by chunk: a strided
    (and a split-axis) form is found exactly, and one wrong element far inside is caught."""
    shape = (3, 40, 7, 300)  # more than one chunk of SEPARABLE_CHUNK elements
    strides = (5_000_000, 300, 100_000, 1)
    src = np.zeros(shape, np.int64) + 17
    for ax, (n, s) in enumerate(zip(shape, strides, strict=True)):
        src += (np.arange(n) * s).reshape((n,) + (1,) * (len(shape) - ax - 1))
    form = copy_fusion._strided_form(src[:, :, :, :].astype(np.int32))
    assert form == (shape, strides, [[3], [40], [7], [300]])
    split = src.reshape(3, 40, 7 * 300)  # axis 2 splits into (7, 300): 100,000 then 1
    assert copy_fusion._strided_form(split) == ((3, 40, 7, 300), strides, [[3], [40], [7, 300]])
    bad = src.copy()
    bad[2, 31, 5, 123] += 1
    assert copy_fusion._strided_form(bad) is None
    unwritten = src.copy()
    unwritten -= 17 + 1  # the first element reads -1: an element no copy writes
    assert copy_fusion._strided_form(unwritten) is None


def _data(seed: int):
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.randn(4, 8, generator=g), torch.randint(0, 3, (4,), generator=g)


def test_a_failing_first_step_puts_back_zero_state_and_negative_zero_weights(monkeypatch, step_fails_after_running):
    """Before the first step Adam's moments are all zero bits: the rollback marks their chunks
    instead of copying them, copies only chunks holding weights (-0.0 included: its bits are not
    zero), and a first step that fails leaves every bit as it was."""
    import torch

    import softipu.poptorch as poptorch
    from _torch_models import TanhMLP
    from softipu.frontends.torch.training import rollback

    monkeypatch.setattr(rollback, "CHUNK", 16)
    torch.manual_seed(0)
    net = TanhMLP()
    with torch.no_grad():
        net.fc1.bias.fill_(-0.0)
    opts = poptorch.Options().setTarget(sp.targets.ipu_model(tiles=4, bytes_per_tile=256 * 1024))
    optimizer = poptorch.optim.Adam(net.parameters(), lr=0.01)
    model = poptorch.trainingModel(net, opts, optimizer)
    model.compile(*_data(0))
    before = [p.detach().numpy().tobytes() for p in net.parameters()]
    state = {k: {n: np.asarray(v).tobytes() for n, v in s.items()}
             for k, s in optimizer.state_dict()["state"].items()}
    engine = model._impl.engine
    with step_fails_after_running(engine):
        model(*_data(0))
    assert [p.detach().numpy().tobytes() for p in net.parameters()] == before
    assert np.signbit(net.fc1.bias.detach().numpy()).all()
    after = optimizer.state_dict()["state"]
    assert {k: {n: np.asarray(v).tobytes() for n, v in s.items()} for k, s in after.items()} == state
    # the chunks copied are exactly those holding a weight: none of the moments alone
    weights = np.zeros(engine.storage.buffers[sp.float32].shape[1], bool)
    for var in model._impl._lowered.params.values():
        starts, lengths = var.runs()
        for s, n in zip(starts.tolist(), lengths.tolist(), strict=True):
            weights[s : s + n] = True
    (_, spans, _, zero), = [x for x in model._impl._rollback._spans if x[0] == sp.float32]
    copied = [not z for z in zero.tolist()]
    assert copied == [bool(weights[s:e].any()) for s, e, _ in spans]
    assert sum(copied) < len(spans)


def test_gathered_slab_fields_share_arrays_between_compute_sets_only():
    """storage.SharedArrays: the k-th ask of a shape in each compute set gets the same array;
    two asks in one compute set (groups that may run side by side) never do."""
    from softipu.engine.storage import SharedArrays

    shared = SharedArrays()
    shared.compute_set()
    a, b = shared.get((3, 4), np.dtype(np.float32)), shared.get((3, 4), np.dtype(np.float32))
    c = shared.get((3, 4), np.dtype(np.float16))
    assert a is not b and c.dtype == np.float16
    shared.compute_set()
    assert shared.get((3, 4), np.dtype(np.float32)) is a
    assert shared.get((3, 4), np.dtype(np.float32)) is b
    third = shared.get((3, 4), np.dtype(np.float32))
    assert third is not a and third is not b
    assert shared.get((4, 3), np.dtype(np.float32)).shape == (4, 3)
