"""A convolution's im2col copies fused into its matmul chain's gather (engine/copy_fusion.py):
the copies stop running from the second call, the chain reads their source, and the answers stay
those of an independent float64 convolution, within the contraction bound, the same bits as
with the fusion off, on every call with fresh inputs."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

import softipu as sp
from softipu import program as P
from softipu.codelets._common import contraction_bound
from softipu.engine import copy_fusion
from softipu.ops.conv import conv

SMALL = sp.targets.ipu_model(tiles=4, bytes_per_tile=128 * 1024)  # K split: an im2col matrix
OPTS = {"debug.allowOutOfMemory": True}
F32 = sp.float32


@pytest.fixture(autouse=True)
def _im2col_path(monkeypatch):
    """These K-split convs would read their windows in place (ops/conv.py WINDOWS_FOR_K_SPLIT); the
    im2col copies this file fuses are what a conv whose windows are not read in place still builds."""
    monkeypatch.setattr(importlib.import_module("softipu.ops.conv"), "WINDOWS_FOR_K_SPLIT", False)


def _conv(x_shape, w_shape, after=None, **kw):
    g = sp.Graph(SMALL)
    x, w = g.add_variable(F32, x_shape, name="x"), g.add_variable(F32, w_shape, name="w")
    for t in (x, w):
        sp.ops.map_linearly(g, t)
    prog = P.Sequence()
    y = conv(g, x, w, prog, **kw)
    extra = after(g, prog) if after is not None else None
    return g, prog, x, w, y, extra


def _oracle(xv, wv, **kw):
    tx, tw = torch.tensor(xv, dtype=torch.float64), torch.tensor(wv, dtype=torch.float64)
    ref = torch.nn.functional.conv2d(tx, tw, **kw).numpy()
    terms = torch.nn.functional.conv2d(tx.abs(), tw.abs(), **kw).numpy()
    return ref, terms


def _calls(eng, x, w, y, values):
    out = []
    for xv, wv in values:
        eng.write_tensor(x, xv)
        eng.write_tensor(w, wv)
        eng.run(0)
        out.append(eng.read_tensor(y))
    return out


CASES = [((1, 64, 8, 8), (32, 64, 3, 3), {"padding": 1}),
         ((2, 64, 9, 7), (16, 64, 3, 3), {"stride": 2, "padding": 1})]


@pytest.mark.parametrize(("x_shape", "w_shape", "kw"), CASES)
def test_im2col_copies_fused_give_the_oracles_values_on_every_call(x_shape, w_shape, kw):
    g, prog, x, w, y, _ = _conv(x_shape, w_shape, **kw)
    eng = sp.Engine(g, [prog], OPTS)
    rng = np.random.default_rng(3)
    values = [(rng.standard_normal(x_shape).astype(np.float32), rng.standard_normal(w_shape).astype(np.float32))
              for _ in range(3)]
    got = _calls(eng, x, w, y, values)
    chains = eng._interpreter._chains
    assert chains.fused() and chains.skipped(), "the im2col copies were not fused"
    k = w_shape[1] * w_shape[2] * w_shape[3]
    for out, (xv, wv) in zip(got, values, strict=True):
        ref, terms = _oracle(xv, wv, **kw)
        assert np.all(np.abs(out - ref) <= contraction_bound(terms, k))
    # The same bits as the gather from the copies' destination (the fusion switched off).
    g2, prog2, x2, w2, y2, _ = _conv(x_shape, w_shape, **kw)
    plain = sp.Engine(g2, [prog2], OPTS)
    plain._interpreter._chains.copies = None
    assert not plain._interpreter._chains.skipped()
    for out, want in zip(got, _calls(plain, x2, w2, y2, values), strict=True):
        assert np.array_equal(out, want)


def test_destination_read_elsewhere_keeps_the_copies():
    """A later copy of the im2col matrix's variable (read by something else): no fusion, and
    the copy still reads the values the im2col copies wrote."""
    def read_im2col(g, prog):
        im2col = next(n for n in P.walk(prog)  # an im2col window copy
                      if n.kind is P.ProgramKind.COPY and len(n.dst.shape) == 6 and n.dst.shape[2:] == (1, 8, 8, 64))
        out = g.add_variable(F32, im2col.dst.shape, name="seen")
        sp.ops.map_linearly(g, out)
        prog.add(P.Copy(im2col.dst, out))
        return im2col.src, out

    g, prog, x, w, y, (window, seen) = _conv((1, 64, 8, 8), (32, 64, 3, 3), after=read_im2col, padding=1)
    eng = sp.Engine(g, [prog], OPTS)
    rng = np.random.default_rng(5)
    values = [(rng.standard_normal((1, 64, 8, 8)).astype(np.float32),
               rng.standard_normal((32, 64, 3, 3)).astype(np.float32)) for _ in range(2)]
    _calls(eng, x, w, y, values)
    assert eng._interpreter._chains.fused() and not eng._interpreter._chains.skipped()
    assert np.array_equal(eng.read_tensor(seen), eng.read_tensor(window))


def test_strided_form_splits_axes_where_addresses_jump():
    addr = (np.arange(3)[:, None, None] * 100 + np.arange(2)[None, :, None] * 10
            + np.arange(4)[None, None, :]).reshape(6, 4) + 7
    shape, strides, splits = copy_fusion._strided_form(addr)
    assert shape == (3, 2, 4) and strides == (100, 10, 1) and splits == [[3, 2], [4]]
    assert copy_fusion._strided_form(np.array([[0, 1, 3]])) is None


def test_pieces_cut_block_rows_where_pixels_wrap_to_the_next_image_row():
    """Blocks of 5 output pixels over image rows of 4 (row pitch 10, pixel pitch 2): no one
    strided view holds them, pieces of whole and partial rows do, every element once."""
    p = np.arange(15).reshape(3, 5)
    src = ((p // 4) * 10 + (p % 4) * 2)[:, :, None, None] + np.arange(2)[None, None, None, :] + 100
    pieces = copy_fusion._pieces(src)
    assert pieces is not None and len(pieces) > 1
    seen = np.zeros(src.shape, int)
    for at_, (shape, strides, _) in pieces:
        want = src[at_]
        got = copy_fusion._addresses(int(want.flat[0]), shape, strides).reshape(want.shape)
        assert np.array_equal(got, want)
        seen[at_] += 1
    assert (seen == 1).all()


def test_switched_off_the_copies_run(monkeypatch):
    monkeypatch.setattr(copy_fusion, "FUSE_COPIES", False)
    g, prog, x, w, y, _ = _conv((1, 64, 8, 8), (32, 64, 3, 3), padding=1)
    eng = sp.Engine(g, [prog], OPTS)
    rng = np.random.default_rng(9)
    values = [(rng.standard_normal((1, 64, 8, 8)).astype(np.float32),
               rng.standard_normal((32, 64, 3, 3)).astype(np.float32)) for _ in range(2)]
    got = _calls(eng, x, w, y, values)
    assert eng._interpreter._chains.fused() and not eng._interpreter._chains.skipped()
    ref, terms = _oracle(*values[-1], padding=1)
    assert np.all(np.abs(got[-1] - ref) <= contraction_bound(terms, 64 * 9))



@pytest.mark.parametrize("dst_view,src_view", [
    (lambda a: a, lambda b: b.transpose()),                               # the logits' transposed copy
    (lambda a: a[::-1, 1:], lambda b: b[1:, :].transpose()[::-1]),        # negative and gapped strides
    (lambda a: a.reshape(24), lambda b: b.transpose().reshape(24)),       # a listed source
    (lambda a: a.transpose().reshape(24), lambda b: b.reshape(24)),       # a listed destination
])
def test_source_table_equals_the_definition_written_by_addresses(dst_view, src_view):
    # Redirect's table of sources: inv[dst address - lo] = src address, copy by copy.
    g = sp.Graph(sp.targets.ipu_model(tiles=2))
    a = g.add_variable(sp.float32, (4, 6), name="a")
    b = g.add_variable(sp.float32, (6, 4), name="b")
    dst, src = dst_view(a), src_view(b)
    assert dst.shape == src.shape
    lo = int(a.addresses().min())
    size = int(a.addresses().max()) + 1 - lo
    expected = np.full(size, -1, np.int64)
    expected[dst.addresses().reshape(-1) - lo] = src.addresses().reshape(-1)
    got = np.full(size, -1, np.int64)
    copy_fusion._write_sources(got, lo, P.Copy(src, dst))
    np.testing.assert_array_equal(got, expected)
