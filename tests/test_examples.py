"""The tutorial examples run and compute what they teach, checked against plain numpy."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

import softipu as sp

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"examples_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def demo() -> ModuleType:
    return load("demo")


def test_tut1_variables_and_mapping(capsys):
    r = load("tut1_variables_and_mapping").main()
    c = np.arange(16, dtype=np.float32).reshape(4, 4)
    np.testing.assert_array_equal(r["v1"], c)
    np.testing.assert_array_equal(r["v2"], c.T)
    np.testing.assert_allclose(r["v4"], np.linspace(0.0, 0.9, 10, dtype=np.float32)[::-1])
    assert r["v1_mapping"] == [[(4 * t, 4 * t + 4)] for t in range(4)]
    assert r["v2_mapping"] == r["v1_mapping"]
    assert r["v3_tiles"] == [0, 0, 0, 0, 1, 1, 2, 2, 3, 3]  # 5 grains of 2 over 4 tiles
    assert "'lost'" in r["unmapped_error"] and "2 of 8 elements are not mapped" in r["unmapped_error"]
    assert "v2 on the device" in capsys.readouterr().out  # the PrintTensor program ran


def test_tut2_custom_vertex():
    mod = load("tut2_custom_vertex")
    r = mod.main()
    x, tile = np.arange(16, dtype=np.float32), np.arange(16) // 4
    y = (tile + 1) * x + 1
    np.testing.assert_allclose(r["y"], y)
    np.testing.assert_allclose(r["sumsq"], (y**2).reshape(4, 4).sum(axis=1))
    data = np.arange(24, dtype=np.float64) ** 2
    expected = [sum(data[lo:hi].sum() for lo, hi in segments) for segments in mod.SEGMENTS]
    np.testing.assert_allclose(r["totals"], expected)
    assert r["axpy_cycles"] > 0 and len(r["sum_vectors_cycles"]) == 4


def test_tut3_compute_sets():
    mod = load("tut3_compute_sets")
    r = mod.main()
    u = mod.initial().astype(np.float64)
    for _ in range(mod.STEPS):  # explicit Euler, fixed ends: the whole array at once
        u[1:-1] = u[1:-1] + mod.ALPHA * (u[:-2] - 2 * u[1:-1] + u[2:])
    np.testing.assert_allclose(r["u"], u, rtol=1e-5, atol=1e-7)
    assert r["u"][0] == 1.0 and r["u"][-1] == 0.0
    message = r["in_place_error"]
    assert "diffuse_in_place" in message and "reads element" in message and "writes" in message


def heron_numpy(x: np.ndarray, tol: float | None, steps: int = 0) -> tuple[np.ndarray, int]:
    """Heron's method in float32: ``steps`` steps, or (tol given) until nothing moves more than tol."""
    r, count = x.copy(), 0
    while True:
        new = np.float32(0.5) * (r + x / r)
        change, r, count = np.abs(new - r).max(), new, count + 1
        if (tol is None and count == steps) or (tol is not None and change <= tol):
            return r, count


def test_tut4_loops_and_branches():
    mod = load("tut4_loops_and_branches")
    r = mod.main()
    x = np.linspace(1.0, 1000.0, mod.N, dtype=np.float32)
    fixed, _ = heron_numpy(x, None, steps=3)
    converged, steps = heron_numpy(x, mod.TOL)
    np.testing.assert_allclose(r["fixed_r"], fixed, rtol=1e-6)
    assert r["fixed_steps"] == 3
    np.testing.assert_allclose(r["until_converged_r"], converged, rtol=1e-6)
    np.testing.assert_allclose(r["until_converged_r"], np.sqrt(x), rtol=1e-6)
    assert r["until_converged_steps"] == steps

    v = np.arange(-2.0, 6.0, 0.5, dtype=np.float32)
    expected = {"if_True": 2 * v, "if_False": -v, "switch_0": v + 1, "switch_1": 2 * v,
                "switch_2": -v, "switch_3": 0 * v, "call_twice": 4 * v + 6}
    for key, value in expected.items():
        np.testing.assert_allclose(r[key], value, err_msg=key)


def test_tut5_host_streams():
    mod = load("tut5_host_streams")
    r = mod.main()
    xs = r["xs"]
    scales = np.arange(1, mod.BATCHES + 1, dtype=np.float32)
    assert r["scales"] == scales.tolist()
    ys = scales[:, None] * xs * xs
    np.testing.assert_allclose(r["ys"], ys, rtol=1e-6)
    np.testing.assert_allclose(r["sums"], ys.reshape(mod.BATCHES, mod.TILES, -1).sum(axis=2), rtol=1e-6)


def test_tut6_replication():
    mod = load("tut6_replication")
    r = mod.main()
    expected = r["w"] * r["xs"] + r["offsets"][:, None, None]
    assert r["ys"].shape == (mod.REPLICAS, mod.BATCHES, mod.N)
    assert len(np.unique(r["offsets"])) == mod.REPLICAS  # replicas really got different data
    np.testing.assert_allclose(r["ys"], expected, rtol=1e-6)
    np.testing.assert_allclose(r["y_last"], expected[:, -1], rtol=1e-6)


def jacobi_numpy(grid: np.ndarray, iterations: int) -> np.ndarray:
    """The 5-point Jacobi sweep written with np.roll, independent of the demo's slicing."""
    g = grid.astype(np.float64)
    for _ in range(iterations):
        mean = (np.roll(g, 1, 0) + np.roll(g, -1, 0) + np.roll(g, 1, 1) + np.roll(g, -1, 1)) / 4
        g[1:-1, 1:-1] = mean[1:-1, 1:-1]
    return g


def test_demo_main_small(demo, capsys, tmp_path):
    target = sp.targets.ipu_model(tiles=8)
    results = demo.main(report_dir=str(tmp_path), target=target, rows_per_tile=3, width=16, iterations=6)
    assert set(results) == {*demo.TUTORIALS, "heat"}
    heat = results["heat"]
    assert heat["shape"] == (8 * 3 + 2, 16) and heat["tiles"] == 8
    expected = jacobi_numpy(demo.initial_grid(*heat["shape"]), 6)
    np.testing.assert_allclose(heat["result"], expected, rtol=1e-5, atol=1e-5)
    assert heat["max_abs_diff"] == 0.0  # same float32 operations in the same order as numpy
    out = capsys.readouterr().out
    assert all(f"=== {name}" in out for name in demo.TUTORIALS) and "check against numpy" in out
    # The report files are written, and the JSON reads back as the same report.
    saved = sp.Report.from_json((tmp_path / "heat.report.json").read_text())
    assert saved.cycles == heat["report"].cycles > 0
    assert 'id="softipu-report"' in (tmp_path / "heat.report.html").read_text()  # the page holds the JSON
    assert '"traceEvents"' in (tmp_path / "heat.perfetto.json").read_text()


def test_demo_heat_mapping(demo):
    """Each tile owns one band of rows of each buffer; the fixed edge rows sit on the end tiles."""
    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    a = demo.add_grid(g, "a", rows_per_tile=2, width=5)
    tiles = g.tile_of(a)[:, 0]
    assert tiles.tolist() == [0, 0, 0, 1, 1, 2, 2, 3, 3, 3]


def test_demo_rejects_odd_iterations(demo):
    with pytest.raises(ValueError, match="even"):
        demo.heat(sp.targets.ipu_model(tiles=2), rows_per_tile=1, width=4, iterations=3)


def test_demo_torch_small(capsys, tmp_path):
    """The PopTorch demo's main path on a 16-tile chip with small models (the GC200 run is ``make demo``)."""
    demo_torch = load("demo_torch")
    target = sp.targets.ipu_model(tiles=16)
    results = demo_torch.main(report_dir=str(tmp_path), target=target,
                              bert={"hidden": 32, "heads": 2, "seq": 16},
                              cnn={"batch": 2, "size": 8, "device_iterations": 2})
    assert set(results) == {"bert", "cnn"}
    bert, cnn = results["bert"], results["cnn"]
    assert bert["out"]["last_hidden_state"].shape == (2, 16, 32) and bert["out"]["pooled"].shape == (2, 32)
    assert cnn["out"].shape == (4, 10) and cnn["samples"] == 4  # 2 device iterations x batch 2
    for name, r in results.items():
        with torch.no_grad():  # eager PyTorch again, on the module and inputs the demo ran
            want = r["ipu_model"].model(*r["inputs"])
        torch.testing.assert_close(r["out"], want, rtol=1e-4, atol=1e-5, msg=name)
        assert r["passed"] and r["rel_diff"] <= 1e-4
        assert r["cycles"] > 0 and r["latency_s"] == pytest.approx(r["cycles"] / target.clock_hz)
        assert r["samples_per_s"] == pytest.approx(r["samples"] / r["latency_s"])
        assert r["fits"] and 0 < r["mean_tile_bytes"] <= r["max_tile_bytes"] <= r["bytes_per_tile"]
        # The report files are written, and the JSON reads back as the same report.
        saved = sp.Report.from_json((tmp_path / f"{name}.report.json").read_text())
        assert saved.cycles == r["report"].cycles > 0
        np.testing.assert_array_equal(saved.tile_memory, r["report"].tile_memory)
        assert 'id="softipu-report"' in (tmp_path / f"{name}.report.html").read_text()
        assert '"traceEvents"' in (tmp_path / f"{name}.perfetto.json").read_text()
    out = capsys.readouterr().out
    assert out.count("(PASS, tolerance 0.0001)") == 2 and "FAIL" not in out
    assert "samples/s" in out and "memory per tile over 16 tiles" in out


def test_train_mnist_poptorch(capsys):
    """Graphcore's PopTorch MNIST tutorial, only the import changed: it trains, and the inference
    model validates with the trained weights (the same outputs as eager on the trained network)."""
    r = load("train_mnist_poptorch").main()
    losses = r["losses"]
    assert len(losses) == 8 and all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < np.mean(losses[:3])  # it learns
    with torch.no_grad():
        want = r["model"](r["last_batch"])
    torch.testing.assert_close(r["last_output"], want, rtol=1e-4, atol=1e-5)
    assert "Accuracy on test set" in capsys.readouterr().out
