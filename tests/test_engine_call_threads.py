"""A later call of the demo's encoder gives the same bits on one host thread or two: its matmul
chains' GEMMs are cut into pieces by their shapes alone (engine/chain_run.py ``_gemm_pieces``),
the pieces shared with a second core where one is idle. Cutting a GEMM differently changes its
bits (OpenBLAS sums a slice's dot products in another order than the whole product's), so a cut
that followed the thread count would show here."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

import softipu as sp
import softipu.torch as st
from softipu.codelets import host
from softipu.codelets._common import contraction_bound
from softipu.codelets.host import BLAS
from softipu.engine import chain_run

ROOT = Path(__file__).resolve().parent.parent
_REAL_SHARE = host._share


@pytest.fixture(scope="module")
def demo():
    spec = importlib.util.spec_from_file_location("demo_torch_threads", ROOT / "examples" / "demo_torch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _calls(demo, monkeypatch, idle: int, cores: int) -> tuple[list[np.ndarray], list[int]]:
    """The outputs of a first and a later call with ``idle`` cores free (of ``cores``), and the
    piece counts of every share-out made."""
    monkeypatch.setattr(host, "CORES", cores)
    monkeypatch.setattr(host, "idle_cores", lambda: idle)
    shared: list[int] = []

    def share(jobs, helpers):
        shared.append(len(jobs))
        _REAL_SHARE(jobs, helpers)

    monkeypatch.setattr(host, "_share", share)
    torch.manual_seed(0)
    net = demo.Bert(layers=1, hidden=128, heads=4).eval()
    model = st.inference_model(net, st.Options(target=sp.targets.ipu_model(tiles=16, bytes_per_tile=256 * 1024)))
    inputs = demo.bert_inputs(2, 64)
    outs = []
    for _ in range(2):
        got = model(*inputs)
        outs += [got["last_hidden_state"].numpy().copy(), got["pooled"].numpy().copy()]
    return outs, shared


def test_the_demo_encoder_gives_the_same_bits_on_one_thread_or_two(demo, monkeypatch):
    one, shared_one = _calls(demo, monkeypatch, idle=0, cores=1)
    two, shared_two = _calls(demo, monkeypatch, idle=1, cores=2)
    assert not shared_one
    # The FFN's products (128 x 128 x 512 MACs, 8.4 M) go out in four pieces of 32 lines.
    assert shared_two.count(4) >= 2, shared_two
    for a, b in zip(one, two, strict=True):
        assert a.tobytes() == b.tobytes()
    assert one[0].tobytes() == one[2].tobytes()  # and the same on every call


def test_a_band_is_cut_by_its_shape_alone(monkeypatch):
    """The demo's FFN product, 128 x 512 . 512 x 128: four row pieces of 32 whatever the cores,
    each element within the contraction bound of the float64 product."""
    rng = np.random.default_rng(3)
    a = rng.standard_normal((128, 512)).astype(np.float32)
    b = rng.standard_normal((512, 128)).astype(np.float32)
    results, shapes = [], []
    for cores, idle in ((1, 0), (2, 1), (16, 15)):
        monkeypatch.setattr(host, "CORES", cores)
        monkeypatch.setattr(host, "idle_cores", lambda idle=idle: idle)
        c = np.empty((128, 128), np.float32)
        pieces = chain_run._gemm_pieces(a, b, c)
        shapes.append([p.args[0].shape for p in pieces])
        with BLAS.single_threaded():
            host.run_pieces(pieces)
        results.append(c.tobytes())
    assert shapes == [[(32, 512)] * 4] * 3
    assert results[0] == results[1] == results[2]
    exact = a.astype(np.float64) @ b.astype(np.float64)
    terms = np.abs(a.astype(np.float64)) @ np.abs(b.astype(np.float64))
    assert np.all(np.abs(np.frombuffer(results[0], np.float32).reshape(128, 128) - exact)
                  <= contraction_bound(terms, 512))
