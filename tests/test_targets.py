"""Chip presets against their published figures, derived figures, cost formulas and validation."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from softipu.errors import TargetError
from softipu.target import BOW, GC2, GC200, Target, ipu_model

# --- Figures ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "tiles", "bytes_per_tile", "clock_hz", "macs16", "macs32"),
    [
        (GC2, 1216, 262144, 1.6e9, 32, 8),
        (GC200, 1472, 638976, 1.33e9, 64, 16),
        (BOW, 1472, 638976, 1.85e9, 64, 16),
    ],
    ids=["GC2", "GC200", "BOW"],
)
def test_preset_figures(target, tiles, bytes_per_tile, clock_hz, macs16, macs32):
    assert target.num_ipus == 1
    assert target.tiles_per_ipu == target.num_tiles == tiles
    assert target.bytes_per_tile == bytes_per_tile
    assert target.clock_hz == clock_hz
    assert (target.amp_macs_per_cycle_fp16, target.amp_macs_per_cycle_fp32) == (macs16, macs32)
    assert target.workers_per_tile == 6
    assert target.vector_width_bytes == 8
    assert target.tiles_per_supertile == 2
    assert target.supervisor_overhead_cycles == 11


def test_in_processor_memory():
    assert GC2.bytes_per_ipu == 304 * 2**20  # 304 MiB [S]
    assert GC200.bytes_per_ipu == pytest.approx(900 * 2**20, rel=0.01)  # "~900 MB" [V]
    assert GC200.bytes_per_tile == 624 * 1024
    assert BOW.bytes_per_ipu == GC200.bytes_per_ipu


def test_total_bytes_and_tiles_scale_with_ipus():
    four = GC200.with_num_ipus(4)
    assert four.num_tiles == 4 * 1472
    assert four.total_bytes == 4 * GC200.bytes_per_ipu
    assert four.bytes_per_ipu == GC200.bytes_per_ipu
    assert four.peak_fp16_flops == pytest.approx(4 * GC200.peak_fp16_flops)


# --- Derived figures against datasheets ---------------------------------------------------------


def test_gc200_peak_flops_match_datasheet():
    # 1472 tiles x 64 MACs x 2 flops x 1.33 GHz ~ 250 TFLOPS
    assert GC200.peak_fp16_flops == pytest.approx(250e12, rel=0.01)
    assert GC200.peak_fp32_flops == pytest.approx(62.5e12, rel=0.01)


@pytest.mark.parametrize("target", [GC2, GC200, BOW], ids=["GC2", "GC200", "BOW"])
def test_peak_flops_match_each_datasheet(target):
    if target.datasheet_fp16_flops is not None:
        assert target.peak_fp16_flops == pytest.approx(target.datasheet_fp16_flops, rel=0.01)
    if target.datasheet_fp32_flops is not None:
        assert target.peak_fp32_flops == pytest.approx(target.datasheet_fp32_flops, rel=0.01)


def test_bow_figures():
    assert BOW.peak_fp16_flops == pytest.approx(350e12, rel=0.01)
    assert BOW.peak_fp32_flops == pytest.approx(87e12, rel=0.01)


def test_gc200_clock_1325_matches_datasheet_exactly():
    # NOTE in the preset: 1.325 GHz gives the 249.7 TFLOPS datasheet figure to 0.1%.
    assert dataclasses.replace(GC200, clock_hz=1.325e9).peak_fp16_flops == pytest.approx(
        249.7e12, rel=1e-3
    )


def test_aggregate_exchange_bandwidth():
    # 1472 tiles x 4 B x 1.33 GHz ~ 7.8 TB/s, the "8 TB/s" of press material
    assert GC200.exchange_bytes_per_second == pytest.approx(7.83e12, rel=0.01)
    assert GC200.exchange_bytes_per_second == pytest.approx(8e12, rel=0.03)


def test_aggregate_local_memory_bandwidth():
    # GC200: derived from the 47.5 TB/s datasheet figure; 16 B/cycle would give only 31.3 TB/s.
    assert GC200.local_memory_bytes_per_second == pytest.approx(47.5e12, rel=1e-9)
    assert GC200.local_load_bytes_per_cycle == pytest.approx(24.26, abs=0.01)
    assert 1472 * 16 * GC200.clock_hz == pytest.approx(31.3e12, rel=0.01)
    # GC2: Jia et al.'s 16 B/cycle/tile reproduces their ~31.1 TB/s ceiling.
    assert GC2.local_load_bytes_per_cycle == 16
    assert GC2.local_memory_bytes_per_second == pytest.approx(31.1e12, rel=0.01)


def test_link_figures():
    assert GC200.ipu_link_bytes_per_second == 16 * 2**30  # 128 Gibit/s
    assert GC200.ipu_links_per_ipu == 10 == 4 + 2 + 2 + 2  # poplibs ladder model
    assert GC200.ipu_link_efficiency == 0.85
    assert GC200.ipu_link_bytes_per_cycle == pytest.approx(16 * 2**30 * 0.85 / 1.33e9)
    assert GC200.host_link_bytes_per_second == pytest.approx(31.5e9, rel=0.01)
    assert GC200.host_link_bytes_per_cycle == pytest.approx(31.5e9 / 1.33e9, rel=0.01)


# --- Vector width and tile numbering -----------------------------------------------------------


def test_vector_width():
    assert GC200.vector_width(2) == 4
    assert GC200.vector_width(4) == 2
    assert GC200.vector_width(1) == 8
    assert GC200.vector_width(8) == 1
    assert GC200.vector_width(16) == 1
    assert GC200.vector_width(np.dtype(np.float16)) == 4
    for bad in (0, -2, 2.0, True):
        with pytest.raises(TargetError):
            GC200.vector_width(bad)


def test_conv_units():
    assert (GC200.conv_units_fp16, GC200.conv_units_fp32) == (16, 8)
    assert (GC2.conv_units_fp16, GC2.conv_units_fp32) == (8, 4)


def test_ipu_of_tile():
    t = ipu_model(tiles=4, num_ipus=3)
    assert t.ipu_of_tile(0) == 0
    assert t.ipu_of_tile(3) == 0
    assert t.ipu_of_tile(4) == 1
    assert t.ipu_of_tile(11) == 2
    assert type(t.ipu_of_tile(np.int64(5))) is int
    np.testing.assert_array_equal(t.ipu_of_tile(np.arange(12)), np.repeat([0, 1, 2], 4))
    assert t.ipu_of_tile(np.arange(12)).dtype == np.int64
    assert t.ipu_of_tile(np.array([], dtype=np.int32)).shape == (0,)
    for bad in (12, -1, [0, 12]):
        with pytest.raises(TargetError, match="does not exist"):
            t.ipu_of_tile(bad)
    with pytest.raises(TargetError):
        t.ipu_of_tile(1.5)


def test_supertile_and_tiles_of_ipu():
    t = ipu_model(tiles=4, num_ipus=2)
    np.testing.assert_array_equal(t.supertile_of_tile(np.arange(8)), [0, 0, 1, 1, 2, 2, 3, 3])
    odd = ipu_model(tiles=3, num_ipus=2)  # a supertile never straddles two IPUs
    np.testing.assert_array_equal(odd.supertile_of_tile(np.arange(6)), [0, 0, 1, 2, 2, 3])
    assert t.tiles_of_ipu(1) == range(4, 8)
    with pytest.raises(TargetError):
        t.tiles_of_ipu(2)


# --- Costs --------------------------------------------------------------------------------------


def test_global_sync_cycles_poplibs_formula():
    # A sync across IPUs = each IPU's on-chip sync (150 [U]) + the poplibs fabric term
    # ceil(15e-9 s x clock x hops x 2) with hops = 1 + (n // 2) // 2 [V] (ipu-facts §2).
    two = GC200.with_num_ipus(2)
    assert two.fabric_sync_cycles(2) == 40  # ceil(15e-9 x 1.33e9 x 1 hop x 2) = ceil(39.9)
    assert two.global_sync_cycles() == 150 + 40
    assert GC200.global_sync_cycles(4) == 150 + math.ceil(15e-9 * 1.33e9 * 2 * 2) == 150 + 80
    assert GC200.global_sync_cycles(6) == 150 + 80
    assert GC200.global_sync_cycles(16) == 150 + math.ceil(15e-9 * 1.33e9 * 5 * 2) == 150 + 200
    assert BOW.global_sync_cycles(2) == 150 + math.ceil(15e-9 * 1.85e9 * 2) == 150 + 56
    # Never below the on-chip sync it contains.
    assert all(GC200.global_sync_cycles(n) > GC200.on_chip_sync_cycles for n in (2, 4, 64, 1024))


def test_single_ipu_sync_is_on_chip_parameter():
    assert GC200.global_sync_cycles() == GC200.on_chip_sync_cycles == 150
    assert dataclasses.replace(GC200, on_chip_sync_cycles=7).global_sync_cycles() == 7


def test_global_sync_override():
    mk1_style = dataclasses.replace(GC2, num_ipus=2, global_sync_cycles_override=500)
    assert mk1_style.global_sync_cycles() == 500
    assert mk1_style.global_sync_cycles(1) == GC2.on_chip_sync_cycles
    with pytest.raises(TargetError):
        GC200.global_sync_cycles(0)


def test_exchange_cycles():
    assert GC200.exchange_cycles(0) == 0
    assert GC200.exchange_cycles(1) == 1
    assert GC200.exchange_cycles(4) == 1
    assert GC200.exchange_cycles(5) == 2
    assert GC200.exchange_cycles(4096) == 1024
    assert type(GC200.exchange_cycles(np.int32(8))) is int
    # round(exchange_bytes_per_cycle x 16): 2.5 B/cycle -> 40 sixteenths
    slow = dataclasses.replace(GC200, exchange_bytes_per_cycle=2.5)
    assert slow.exchange_cycles(100) == math.ceil(100 * 16 / 40) == 40
    assert slow.exchange_cycles(101) == 41
    odd = dataclasses.replace(GC200, exchange_bytes_per_cycle=3.01)  # rounds to 48/16 = 3
    assert odd.exchange_cycles(9) == 3


def test_exchange_cycles_vectorized():
    b = np.array([[0, 1, 4], [5, 8, 1 << 40]])
    out = GC200.exchange_cycles(b)
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, [[0, 1, 1], [2, 2, 1 << 38]])
    for bad in (-1, [3, -1], 2.5):
        with pytest.raises(TargetError):
            GC200.exchange_cycles(bad)


def test_seconds():
    assert GC200.seconds(1_330_000) == pytest.approx(1e-3)
    assert isinstance(GC200.seconds(10), float)
    np.testing.assert_allclose(GC2.seconds(np.array([0, 1.6e9])), [0.0, 1.0])


# --- Validation and immutability ----------------------------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [
        {"tiles_per_ipu": 0},
        {"tiles_per_ipu": -4},
        {"tiles_per_ipu": 2.0},
        {"tiles_per_ipu": True},
        {"bytes_per_tile": -1},
        {"num_ipus": 0},
        {"workers_per_tile": 0},
        {"clock_hz": 0.0},
        {"clock_hz": -1e9},
        {"clock_hz": float("nan")},
        {"clock_hz": float("inf")},
        {"clock_hz": "1.33e9"},
        {"exchange_bytes_per_cycle": 0.0},
        {"exchange_bytes_per_cycle": 0.01},  # rounds to 0 sixteenths
        {"ipu_link_efficiency": 0.0},
        {"ipu_link_efficiency": 1.5},
        {"on_chip_sync_cycles": -1},
        {"global_sync_cycles_override": -5},
        {"datasheet_fp16_flops": -1.0},
        {"name": ""},
    ],
    ids=lambda c: "-".join(f"{k}={v!r}" for k, v in c.items()),
)
def test_invalid_figures_raise_target_error(changes):
    with pytest.raises(TargetError) as info:
        dataclasses.replace(GC200, **changes)
    assert isinstance(info.value, ValueError)
    field = next(iter(changes))
    if field != "name":
        assert field in str(info.value)


def test_zero_overheads_are_allowed():
    ideal = dataclasses.replace(
        GC200, on_chip_sync_cycles=0, supervisor_overhead_cycles=0, local_memory_latency_cycles=0
    )
    assert ideal.global_sync_cycles() == 0


def test_numbers_are_normalised():
    t = dataclasses.replace(GC200, tiles_per_ipu=np.int64(8), clock_hz=1_000_000_000)
    assert type(t.tiles_per_ipu) is int
    assert type(t.clock_hz) is float
    assert t == dataclasses.replace(GC200, tiles_per_ipu=8, clock_hz=1e9)


def test_frozen_and_hashable():
    with pytest.raises(dataclasses.FrozenInstanceError):
        GC200.tiles_per_ipu = 4  # type: ignore[misc]
    assert not hasattr(GC200, "__dict__")  # slots
    assert len({GC200, BOW, GC2, dataclasses.replace(GC200)}) == 3


def test_keyword_only():
    with pytest.raises(TypeError):
        Target("x", 4, 1024)  # type: ignore[misc]


# --- ipu_model ----------------------------------------------------------------------------------


def test_ipu_model_defaults():
    m = ipu_model()
    assert m.name == "ipu_model(16 tiles)"
    assert (m.num_ipus, m.tiles_per_ipu, m.bytes_per_tile) == (1, 16, 64 * 1024)
    assert m.clock_hz == GC200.clock_hz
    assert m.amp_macs_per_cycle_fp16 == GC200.amp_macs_per_cycle_fp16
    assert m.datasheet_fp16_flops is None and m.datasheet_fp32_flops is None
    assert m.peak_fp16_flops == pytest.approx(16 * 64 * 2 * 1.33e9)


def test_ipu_model_overrides_and_base():
    m = ipu_model(
        tiles=4,
        bytes_per_tile=1024,
        num_ipus=2,
        base=GC2,
        clock_hz=1e9,
        exchange_bytes_per_cycle=8.0,
    )
    assert m.name == "ipu_model(2x4 tiles)"
    assert (m.num_tiles, m.total_bytes) == (8, 8 * 1024)
    assert m.amp_macs_per_cycle_fp16 == GC2.amp_macs_per_cycle_fp16
    assert m.clock_hz == 1e9
    assert m.exchange_cycles(16) == 2
    # GC2's on-chip 150 + ceil(15e-9 x 1e9 x 1 hop x 2) = 30 over the fabric.
    assert m.global_sync_cycles() == 150 + 30
    assert ipu_model(name="tiny").name == "tiny"


def test_ipu_model_validates():
    with pytest.raises(TargetError):
        ipu_model(tiles=0)
    with pytest.raises(TargetError):
        ipu_model(bytes_per_tile=-1)
    with pytest.raises(TargetError, match="clock_hz"):
        ipu_model(clock_hz=-1.0)
    with pytest.raises(TargetError, match="did you mean clock_hz"):
        ipu_model(clock_hz_=1e9)


def test_public_names():
    import softipu.target as targets

    assert set(targets.__all__) == {"Target", "GC2", "GC200", "BOW", "C600", "ipu_model"}
    assert all(isinstance(getattr(targets, n), Target) for n in ("GC2", "GC200", "BOW", "C600"))


def test_exchange_phase_prices_bytes_regions_and_latency():
    # GC200: 4 B/cycle per tile, 4 cycles per region, 30 cycles of latency ([U] fields).
    # One 4 KiB block: ceil(4096 x 16 / 64) = 1024 + 1 x 4 = 1028 cycles on the tile.
    assert GC200.exchange_tile_cycles(4096, 1) == 1024 + 4
    # The same bytes as 1,024 one-float pieces: 1024 + 1024 x 4 = 5120 cycles.
    assert GC200.exchange_tile_cycles(4096, 1024) == 1024 + 4096
    # Twice the rate on a whole supertile bus: ceil(4096 / 2) = 2048 B -> 512 cycles, + 4, + 30.
    assert GC200.exchange_phase_cycles(4096, 1, 2) == 512 + 4 + 30
    # Nothing moved: nothing paid, not even the latency.
    assert GC200.exchange_phase_cycles(0, 0) == 0
    assert dataclasses.replace(GC200, exchange_cycles_per_region=0).exchange_tile_cycles(4096, 1024) == 1024


# --- C600 card and I/O tiles --------------------------------------------------------------------


def test_c600_card_figures_by_hand():
    from softipu.target import C600

    assert (C600.tiles_per_ipu, C600.bytes_per_tile, C600.num_ipus) == (1472, 638976, 1)
    assert C600.clock_hz == 1.5e9
    # 1472 tiles x 64 MACs x 2 flops x 1.5 GHz = 282.6 TFLOPS, the card's "280 TFLOPS" within 1%
    assert C600.peak_fp16_flops == 1472 * 64 * 2 * 1.5e9
    assert C600.peak_fp16_flops == pytest.approx(280e12, rel=0.01)
    # 1472 x 16 x 2 x 1.5 GHz = 70.65 TFLOPS against "70 TFLOPS"
    assert C600.peak_fp32_flops == pytest.approx(70e12, rel=0.01)
    # "32 lanes, 64 GB/s each direction": 4 links x 128 Gibit/s / 8 = 68.7 GB/s raw, within 8%
    assert C600.ipu_links_per_ipu * C600.ipu_link_bytes_per_second == pytest.approx(64e9, rel=0.08)
    # PCIe Gen4 x16: 16 GT/s x 16 lanes x 128/130 / 8 bits = 31.5 GB/s each way
    assert C600.host_link_bytes_per_second == pytest.approx(31.51e9, rel=1e-3)


def test_num_io_tiles_default_and_validation():
    assert GC200.num_io_tiles == 0 and GC200.compute_tiles_per_ipu == 1472
    io = dataclasses.replace(GC200, num_io_tiles=32)
    assert io.compute_tiles_per_ipu == 1440 and io.num_tiles == 1472
    assert ipu_model(tiles=16, num_io_tiles=2).compute_tiles_per_ipu == 14
    with pytest.raises(TargetError, match="num_io_tiles must be even"):
        dataclasses.replace(GC200, num_io_tiles=33)
    with pytest.raises(TargetError, match="num_io_tiles must be even"):
        ipu_model(tiles=16, num_io_tiles=16)
    with pytest.raises(TargetError, match="num_io_tiles must be a non-negative int"):
        dataclasses.replace(GC200, num_io_tiles=-2)
