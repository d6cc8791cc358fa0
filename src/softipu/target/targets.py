"""Frozen descriptions of IPU chips: the numbers every other layer prices work with.

A :class:`Target` is one replica's worth of hardware: ``num_ipus`` identical chips whose tiles are
numbered globally (tile ``t`` lives on IPU ``t // tiles_per_ipu``). Nothing about a chip is a
literal anywhere else in softipu; cost models, planners and the memory checker read it from here.

Every figure cites its source with the tags of ``ipu-facts.md``:

- **[V]** read in a primary source (Graphcore docs and datasheets, the open poplibs sources, MLPerf
  system descriptions);
- **[S]** secondary (press, blogs, Jia et al. 2019 "Dissecting the Graphcore IPU Architecture via
  Microbenchmarking", arXiv 1912.03413);
- **[D]** derived by arithmetic from cited figures (the arithmetic is in the comment);
- **[U]** uncertain or conflicting: kept as a named field so that a user can change it, never as a
  literal buried in a formula.

Presets: :data:`GC2` (Mk1), :data:`GC200` (Mk2, the IPU of the M2000 and the IPU-PODs), :data:`BOW`
(Bow IPU), :data:`C600` (the GC200-class PCIe card). :func:`ipu_model` makes small custom chips for
tests and teaching.
"""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import Any, Protocol, overload

import numpy as np
import numpy.typing as npt

from softipu.errors import TargetError

__all__ = ["Target", "GC2", "GC200", "BOW", "C600", "ipu_model"]

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

# Cycle counts that may be zero in an idealised teaching model; every other number must be > 0.
_MAY_BE_ZERO = frozenset(
    {
        "local_memory_latency_cycles",
        "supervisor_overhead_cycles",
        "on_chip_sync_cycles",
        "global_sync_cycles_override",
        # The SDK model's overheads may be zeroed for idealised teaching chips.
        "exchange_latency_cycles",
        "exchange_cycles_per_region",
        "control_cycles_per_step",
        "vertex_state_bytes_per_field",
        "codelet_code_bytes",
        "exchange_code_bytes_per_region",
        "control_code_bytes_per_step",
        "worker_stack_bytes",
        "supervisor_stack_bytes",
        "num_io_tiles",
    }
)


class _HasItemsize(Protocol):
    @property
    def itemsize(self) -> int: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class Target:
    """One replica's hardware: ``num_ipus`` identical IPUs of ``tiles_per_ipu`` tiles each.

    Fields are per tile or per IPU as named; properties aggregate over the whole target. Build
    variants with :func:`ipu_model` or :func:`dataclasses.replace`; both re-run the validation.

    >>> from softipu.target import GC200
    >>> GC200.num_tiles, GC200.bytes_per_tile, GC200.vector_width(2)
    (1472, 638976, 4)
    >>> GC200.with_num_ipus(2).global_sync_cycles()  # 150 on chip + 40 over the fabric
    190
    """

    name: str

    # --- Size ---------------------------------------------------------------------------------
    tiles_per_ipu: int
    bytes_per_tile: int
    num_ipus: int = 1
    # Tiles of each IPU reserved for host I/O that overlaps compute (PopART/PopTorch
    # ``numIOTiles``; the I/O tiles are the last ones of each IPU here). PopART requires an even
    # count from 32 to 192 when I/O tiles are used [V] (ipu-facts-scale §2); 0 (the default, as in
    # Poplar) reserves none. Checked: even and fewer than ``tiles_per_ipu``; the 32..192 range is
    # PopART's rule, not the chip's, and is left to the frontend that sets it (small teaching
    # chips of 16 tiles may reserve 2).
    num_io_tiles: int = 0

    # --- Tile core ----------------------------------------------------------------------------
    clock_hz: float
    # Barrel-scheduled worker contexts, round robin, plus a supervisor [V] (ipu-facts §1).
    workers_per_tile: int = 6
    # Vector (load/ALU) width: 64 bits per worker per cycle = 4 x fp16 or 2 x fp32 [V] (§1).
    vector_width_bytes: int = 8
    # Accumulating matrix product (AMP) unit: multiply-accumulates per tile per cycle (chip preset).
    amp_macs_per_cycle_fp16: int
    amp_macs_per_cycle_fp32: int
    # Per-worker scratch memory [V] (§1).
    worker_scratch_bytes: int = 48
    # poplibs' supervisor overhead of a MultiVertex launch, basicOpSupervisorOverhead [V] (§5).
    supervisor_overhead_cycles: int = 11

    # --- Local memory -------------------------------------------------------------------------
    # Load-to-use latency of tile SRAM, measured on Mk1 by Jia et al. [S] (§6); assumed for Mk2 [U].
    local_memory_latency_cycles: int = 6
    # Peak SRAM read bytes per tile per cycle (chip preset; sources differ per chip).
    local_load_bytes_per_cycle: float

    # --- On-chip exchange ---------------------------------------------------------------------
    # Bytes a tile sends or receives per cycle. poplibs' IPUModel default; 1472 x 1.325 GHz x 4 B
    # ~ 7.8 TB/s, close to the "8 TB/s" of press material [U] (§1, §5).
    exchange_bytes_per_cycle: float = 4.0
    # Two tiles share one exchange bus (a "supertile") [V] (§1).
    tiles_per_supertile: int = 2

    # --- Synchronisation ----------------------------------------------------------------------
    # Cost of a sync barrier across the tiles of one IPU. No primary source gives it: an
    # ASSUMPTION of softipu [U]. A sync across IPUs pays it too, plus the fabric term below.
    on_chip_sync_cycles: int = 150
    # poplibs test model of inter-IPU sync: 15 ns per hop, each hop paid twice [V] (§2). It is
    # the fabric part only: every IPU still syncs its own tiles first.
    sync_seconds_per_hop: float = 15e-9
    # If set, every sync spanning more than one IPU costs this many cycles in all instead of the
    # on-chip sync plus the poplibs fabric term: Poplar's IPUModel ``globalSyncCycles`` (Mk1-era
    # code used 500 [V], §2).
    global_sync_cycles_override: int | None = None

    # --- Off-chip links -----------------------------------------------------------------------
    # Raw bandwidth of one IPU-Link in one direction, and how many links each IPU has.
    ipu_link_bytes_per_second: float
    ipu_links_per_ipu: int
    # Fraction of raw link bandwidth that carries payload: poplibs test model [V] (§1).
    ipu_link_efficiency: float = 0.85
    # Host <-> IPU bandwidth in one direction.
    host_link_bytes_per_second: float

    # --- What the SDK adds: the cost and memory model's own figures --------------------------
    # None of these is published; each is an ASSUMPTION of softipu [U], kept here so that a
    # calibration can change it in one place. Cycles are tile clock cycles.
    # Fixed cost of an exchange phase that moves data: exchange code start-up and fabric
    # latency [U] (Jia et al. measured tens of cycles tile to tile on Mk1 [S], §6).
    exchange_latency_cycles: int = 30
    # Per contiguous region a tile sends or receives in an exchange phase: the exchange code
    # sets up each region (address, count) before its data moves. [U]: no published figure;
    # [D] from ``exchange_code_bytes_per_region`` = 16 B = four 32-bit instructions, one issue
    # cycle each. So 1,024 one-element pieces cost more than one 4 KiB block.
    exchange_cycles_per_region: int = 4
    # AMP weight (coefficient) loads into the conv units. poplin loads them 64 bits at a time
    # unless the convolution option ``use128BitConvUnitLoad`` is set, and it defaults to false
    # [V] (poplibs include/poplin/Convolution.hpp; lib/poplin/ConvPartialsStubs / poplin cycle
    # estimators halve ``getConvUnitCoeffLoadBytesPerCycle`` then); that target figure is 16 B
    # per cycle in poplibs' IPU model options [V], so 8 B per cycle with default options.
    conv_unit_coeff_load_bytes_per_cycle: int = 8
    # On-tile copies: one 64-bit load and one 64-bit store per cycle (ld64st64 pipelining) [U].
    on_tile_copy_bytes_per_cycle: float = 8.0
    # Supervisor control code for one program step (a branch, a call, a loop turn) [U].
    control_cycles_per_step: int = 10
    # Variables are placed on 8-byte boundaries on each tile (64-bit loads) [U].
    variable_alignment_bytes: int = 8
    # Vertex state: a 32-bit pointer and a 32-bit size per vector field; 8 bytes per entry of a
    # vector list; params and scalar pointers round up to 4 bytes [U].
    vertex_state_bytes_per_field: int = 8
    # Code of one codelet type on a tile, unless the codelet declares ``code_bytes`` [U].
    codelet_code_bytes: int = 256
    # Exchange code: instructions per contiguous region a tile sends or receives in a step [U].
    exchange_code_bytes_per_region: int = 16
    # Control code per program step, on every tile of the IPU [U].
    control_code_bytes_per_step: int = 24
    # Stacks per tile: each worker context and the supervisor (Poplar's target.workerStackSize
    # and target.supervisorStackSize options; defaults not sourced here) [U].
    worker_stack_bytes: int = 72
    supervisor_stack_bytes: int = 76

    # --- Reference only -----------------------------------------------------------------------
    # Published peak of ONE IPU, for checking the derived peak_*_flops; None for custom chips.
    datasheet_fp16_flops: float | None = None
    datasheet_fp32_flops: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise TargetError(f"Target name must be a non-empty string, got {self.name!r}")
        for f in fields(self):
            if f.name != "name":
                self._check_number(f.name, str(f.type))
        if not 0.0 < self.ipu_link_efficiency <= 1.0:
            raise TargetError(
                f"Target {self.name!r}: ipu_link_efficiency must lie in (0, 1], "
                f"got {self.ipu_link_efficiency}"
            )
        if self.num_io_tiles % 2 or self.num_io_tiles >= self.tiles_per_ipu:
            raise TargetError(
                f"Target {self.name!r}: num_io_tiles must be even and fewer than the "
                f"{self.tiles_per_ipu} tiles of an IPU, got {self.num_io_tiles}"
            )
        if round(self.exchange_bytes_per_cycle * 16) < 1:
            raise TargetError(
                f"Target {self.name!r}: exchange_bytes_per_cycle must be at least 1/32 (poplibs "
                f"rounds it to sixteenths), got {self.exchange_bytes_per_cycle}"
            )

    def _check_number(self, name: str, annotation: str) -> None:
        """Check one numeric field and normalise it to a plain ``int`` / ``float``."""
        value = getattr(self, name)
        if value is None and annotation.endswith("| None"):
            return
        value = checked_number(f"Target {self.name!r}", name, value, annotation, name in _MAY_BE_ZERO)
        object.__setattr__(self, name, value)

    # --- Sizes ------------------------------------------------------------------------------------

    @property
    def num_tiles(self) -> int:
        """Tiles of the whole target, numbered globally ``0 .. num_tiles - 1``."""
        return self.num_ipus * self.tiles_per_ipu

    @property
    def compute_tiles_per_ipu(self) -> int:
        """Tiles of each IPU left for compute: ``tiles_per_ipu - num_io_tiles``."""
        return self.tiles_per_ipu - self.num_io_tiles

    @property
    def bytes_per_ipu(self) -> int:
        return self.tiles_per_ipu * self.bytes_per_tile

    @property
    def total_bytes(self) -> int:
        return self.num_tiles * self.bytes_per_tile

    def vector_width(self, itemsize_bytes: int | _HasItemsize) -> int:
        """Elements of one vector: 4 for 2-byte types, 2 for 4-byte types (never less than 1).

        Takes an item size in bytes or anything with ``.itemsize`` (a softipu or numpy dtype).
        """
        size = getattr(itemsize_bytes, "itemsize", itemsize_bytes)
        if not isinstance(size, numbers.Integral) or isinstance(size, bool) or size <= 0:
            raise TargetError(f"vector_width needs a positive item size in bytes, got {size!r}")
        return max(1, self.vector_width_bytes // int(size))

    @property
    def conv_units_fp16(self) -> int:
        """AMP conv units for fp16: each does one vector of MACs per cycle [D] (poplin, §1)."""
        return max(1, self.amp_macs_per_cycle_fp16 // self.vector_width(2))

    @property
    def conv_units_fp32(self) -> int:
        return max(1, self.amp_macs_per_cycle_fp32 // self.vector_width(4))

    # --- Tiles and IPUs ---------------------------------------------------------------------------

    @overload
    def ipu_of_tile(self, tile: int) -> int: ...
    @overload
    def ipu_of_tile(self, tile: npt.ArrayLike) -> IntArray: ...

    def ipu_of_tile(self, tile: int | npt.ArrayLike) -> int | IntArray:
        """The IPU holding global tile ``tile`` (an int, or elementwise over an array)."""
        return _apply(self._checked_tiles(tile), lambda t: t // self.tiles_per_ipu)

    @overload
    def supertile_of_tile(self, tile: int) -> int: ...
    @overload
    def supertile_of_tile(self, tile: npt.ArrayLike) -> IntArray: ...

    def supertile_of_tile(self, tile: int | npt.ArrayLike) -> int | IntArray:
        """The global supertile (shared exchange bus) of ``tile``; counted within each IPU."""
        t = self._checked_tiles(tile)
        per_ipu = -(-self.tiles_per_ipu // self.tiles_per_supertile)
        return _apply(
            t,
            lambda t: (
                (t // self.tiles_per_ipu) * per_ipu
                + (t % self.tiles_per_ipu) // self.tiles_per_supertile
            ),
        )

    def tiles_of_ipu(self, ipu: int) -> range:
        """Global tile numbers of IPU ``ipu``."""
        if not 0 <= ipu < self.num_ipus:
            raise TargetError(f"IPU {ipu} does not exist on {self.name!r} ({self.num_ipus} IPUs)")
        return range(ipu * self.tiles_per_ipu, (ipu + 1) * self.tiles_per_ipu)

    def compute_tiles_of_ipu(self, ipu: int) -> range:
        """Global tile numbers of IPU ``ipu`` left for compute: all but its ``num_io_tiles`` last."""
        tiles = self.tiles_of_ipu(ipu)
        return range(tiles.start, tiles.stop - self.num_io_tiles)

    def io_tiles_of_ipu(self, ipu: int) -> range:
        """Global tile numbers of IPU ``ipu`` reserved for host I/O (its ``num_io_tiles`` last)."""
        tiles = self.tiles_of_ipu(ipu)
        return range(tiles.stop - self.num_io_tiles, tiles.stop)

    def with_num_ipus(self, num_ipus: int) -> Target:
        """The same chip, ``num_ipus`` of them in one replica."""
        return replace(self, num_ipus=num_ipus)

    def _checked_tiles(self, tile: int | npt.ArrayLike) -> int | IntArray:
        arr = np.asarray(tile)
        if arr.dtype.kind not in "iu":
            raise TargetError(f"tile numbers must be integers, got {tile!r}")
        if arr.size and (arr.min() < 0 or arr.max() >= self.num_tiles):
            bad = arr[(arr < 0) | (arr >= self.num_tiles)].flat[0]
            raise TargetError(
                f"tile {bad} does not exist on {self.name!r}: it has {self.num_tiles} tiles "
                f"(0..{self.num_tiles - 1})"
            )
        return int(arr) if arr.ndim == 0 else arr.astype(np.int64)

    # --- Costs ------------------------------------------------------------------------------------

    def global_sync_cycles(self, num_ipus: int | None = None) -> int:
        """Cycles of one sync barrier across ``num_ipus`` IPUs (default: all of this target's).

        One IPU: :attr:`on_chip_sync_cycles`. More: each IPU syncs its own tiles, then the IPUs
        sync over the fabric, so the on-chip figure plus the poplibs test model of the fabric [V]
        (ipu-facts §2): ``hops = 1 + (num_ipus // 2) // 2`` (one hop within a card plus one per
        card pair), ``ceil(sync_seconds_per_hop * clock_hz * hops * 2)``; or
        :attr:`global_sync_cycles_override` in all where set. A sync across every replica
        passes ``num_ipus`` = IPUs per replica x replicas.
        """
        n = self.num_ipus if num_ipus is None else num_ipus
        if not isinstance(n, numbers.Integral) or isinstance(n, bool) or n <= 0:
            raise TargetError(f"global_sync_cycles needs a positive number of IPUs, got {n!r}")
        if n == 1:
            return self.on_chip_sync_cycles
        if self.global_sync_cycles_override is not None:
            return self.global_sync_cycles_override
        return self.on_chip_sync_cycles + self.fabric_sync_cycles(int(n))

    def fabric_sync_cycles(self, num_ipus: int) -> int:
        """The fabric part of a sync across ``num_ipus`` > 1 IPUs: poplibs' test model [V]."""
        hops = 1 + (int(num_ipus) // 2) // 2
        return math.ceil(self.sync_seconds_per_hop * self.clock_hz * hops * 2)

    @overload
    def exchange_cycles(self, num_bytes: int) -> int: ...
    @overload
    def exchange_cycles(self, num_bytes: npt.ArrayLike) -> IntArray: ...

    def exchange_cycles(self, num_bytes: int | npt.ArrayLike) -> int | IntArray:
        """Cycles for one tile to send (or receive) ``num_bytes`` over the on-chip exchange.

        poplibs [V] (ipu-facts §5): ``ceil(bytes * 16 / round(exchange_bytes_per_cycle * 16))``.
        Elementwise over an array of byte counts.
        """
        arr = np.asarray(num_bytes)
        if arr.dtype.kind not in "iu" or (arr.size and arr.min() < 0):
            raise TargetError(
                f"exchange_cycles needs non-negative integer byte counts, got {num_bytes!r}"
            )
        per_16_cycles = round(self.exchange_bytes_per_cycle * 16)
        checked = int(arr) if arr.ndim == 0 else arr.astype(np.int64)
        return _apply(checked, lambda b: -(-(b * 16) // per_16_cycles))

    def exchange_tile_cycles(self, num_bytes: npt.ArrayLike, regions: npt.ArrayLike,
                             bytes_per_cycle_scale: npt.ArrayLike = 1) -> IntArray:
        """Cycles a tile spends moving ``num_bytes`` in ``regions`` contiguous regions in one
        exchange phase, before the phase's fixed latency (elementwise; 0 where nothing moves).

        The one rule both the compiler's exchange plan and the matmul planner price with:
        ``exchange_cycles(ceil(bytes / scale)) + regions x exchange_cycles_per_region``;
        ``bytes_per_cycle_scale`` 2 where a tile has its supertile's whole bus (ipu-facts §1).
        """
        nbytes = np.maximum(np.asarray(num_bytes, np.int64), 0)
        cycles = self.exchange_cycles(-(-nbytes // np.asarray(bytes_per_cycle_scale, np.int64)))
        cycles = cycles + np.asarray(regions, np.int64) * self.exchange_cycles_per_region
        return np.where(nbytes > 0, cycles, 0).astype(np.int64)

    def exchange_phase_cycles(self, num_bytes: npt.ArrayLike, regions: npt.ArrayLike,
                              bytes_per_cycle_scale: npt.ArrayLike = 1) -> IntArray:
        """:meth:`exchange_tile_cycles` plus :attr:`exchange_latency_cycles` where data moves."""
        cycles = self.exchange_tile_cycles(num_bytes, regions, bytes_per_cycle_scale)
        return np.where(cycles > 0, cycles + self.exchange_latency_cycles, 0).astype(np.int64)

    @overload
    def seconds(self, cycles: int | float) -> float: ...
    @overload
    def seconds(self, cycles: npt.ArrayLike) -> FloatArray: ...

    def seconds(self, cycles: int | float | npt.ArrayLike) -> float | FloatArray:
        """Wall time of ``cycles`` tile cycles at :attr:`clock_hz`."""
        arr = np.asarray(cycles, dtype=np.float64)
        return float(arr) / self.clock_hz if arr.ndim == 0 else arr / self.clock_hz

    # --- Aggregate rates (whole target) -----------------------------------------------------------

    @property
    def peak_fp16_flops(self) -> float:
        """AMP peak, fp16 in / fp32 accumulate: tiles x MACs x 2 x clock [D]."""
        return self.num_tiles * self.amp_macs_per_cycle_fp16 * 2 * self.clock_hz

    @property
    def peak_fp32_flops(self) -> float:
        return self.num_tiles * self.amp_macs_per_cycle_fp32 * 2 * self.clock_hz

    @property
    def exchange_bytes_per_second(self) -> float:
        """On-chip exchange bandwidth of all tiles together [D]."""
        return self.num_tiles * self.exchange_bytes_per_cycle * self.clock_hz

    @property
    def local_memory_bytes_per_second(self) -> float:
        """Tile SRAM read bandwidth of all tiles together [D]."""
        return self.num_tiles * self.local_load_bytes_per_cycle * self.clock_hz

    @property
    def ipu_link_bytes_per_cycle(self) -> float:
        """Payload bytes per tile cycle of one IPU-Link in one direction, after efficiency."""
        return self.ipu_link_bytes_per_second * self.ipu_link_efficiency / self.clock_hz

    @property
    def host_link_bytes_per_cycle(self) -> float:
        return self.host_link_bytes_per_second / self.clock_hz


def checked_number(owner: str, name: str, value: Any, annotation: str, may_be_zero: bool) -> int | float:
    """A hardware description's numeric field as a plain ``int`` (annotation ``int...``) or
    ``float``: finite and positive (or zero where ``may_be_zero``), else a ``TargetError`` naming
    ``owner`` (``"Target 'GC200'"``, say) and the field."""
    want_int = annotation.startswith("int")
    kind = numbers.Integral if want_int else numbers.Real
    ok = isinstance(value, kind) and not isinstance(value, bool)
    if ok:
        value = int(value) if want_int else float(value)
        ok = math.isfinite(value) and (value > 0 or (value == 0 and may_be_zero))
    if not ok:
        sign = "non-negative" if may_be_zero else "positive"
        what = f"a {sign} {'int' if want_int else 'finite number'}"
        raise TargetError(f"{owner}: {name} must be {what}, got {value!r}")
    return value


def _apply(value: int | IntArray, fn: Callable[[Any], Any]) -> int | IntArray:
    """``fn(value)``: a plain ``int`` for an int, an int64 array for an array."""
    return int(fn(value)) if isinstance(value, int) else np.asarray(fn(value), dtype=np.int64)


# --- Presets ----------------------------------------------------------------------------------

# PCIe Gen4 x16, one direction: 16 GT/s x 16 lanes x 128b/130b / 8 ~ 31.5 GB/s [D] ("64 GB/s" in
# press material counts both directions [S]).
_PCIE_GEN4_X16_BYTES_PER_SECOND = 16e9 * 16 * (128 / 130) / 8

GC2 = Target(
    name="GC2",  # Mk1 IPU, C2 card
    tiles_per_ipu=1216,  # [V]
    bytes_per_tile=256 * 1024,  # 256 KiB [V]; x 1216 = 304 MiB [S]
    clock_hz=1.6e9,  # [U]: the figure that reproduces the 124.5 TFLOPS [S] peak
    amp_macs_per_cycle_fp16=32,  # [D] from 124.5 TFLOPS / (1216 tiles x 2 x 1.6 GHz)
    amp_macs_per_cycle_fp32=8,  # [D] from 31.1 TFLOPS / (1216 tiles x 2 x 1.6 GHz)
    # Jia et al. measured a ~31.1 TB/s aggregate read ceiling = 1216 x 16 B x 1.6 GHz [S] (§6);
    # NOTE: the 45 TB/s "nominal" of press material [S] would need ~23 B/cycle/tile.
    local_load_bytes_per_cycle=16.0,
    # "3 per board pair at 64 GB/s bidirectional" [S][U]: 32 GB/s per link per direction.
    ipu_link_bytes_per_second=32e9,
    ipu_links_per_ipu=3,
    host_link_bytes_per_second=_PCIE_GEN4_X16_BYTES_PER_SECOND,  # PCIe Gen4 x16 [S]
    datasheet_fp16_flops=124.5e12,  # [S]
    datasheet_fp32_flops=31.1e12,  # [S]
)

GC200 = Target(
    name="GC200",  # Mk2 IPU: M2000, IPU-POD16 .. POD256
    tiles_per_ipu=1472,  # [V]
    # Poplar's own OOM message: "tiles only have 638976 bytes" [V] (§3) = 624 KiB;
    # x 1472 = 897 MiB, the "~900 MB" in-processor memory [V]; 900 MB / 1472 ~ 626 KiB [D].
    bytes_per_tile=638976,
    # MLPerf system JSON [V]. NOTE: 1.325 GHz also appears; it matches the 249.7 TFLOPS datasheet
    # figure exactly (1472 x 64 x 2 x 1.325e9), 1.33 GHz gives 250.6 (+0.4%).
    clock_hz=1.33e9,
    amp_macs_per_cycle_fp16=64,  # [D]: 16 conv units x 4 (poplin, fp16 on IPU2 [V])
    amp_macs_per_cycle_fp32=16,  # [D]: 8 conv units x 2 (poplin [V])
    # [D] from the 47.5 TB/s datasheet figure [V]: 47.5e12 / (1472 x 1.33e9) ~ 24.3 B/cycle/tile.
    # (Jia et al.'s Mk1 16 B/cycle would give only 31.3 TB/s here.)
    local_load_bytes_per_cycle=47.5e12 / (1472 * 1.33e9),
    # poplibs test model: 128 Gibit/s per link [V]; 10 links per IPU [S], matching the poplibs
    # ladder model's 4 intra-card + 2 cross + 2 up + 2 down [V] (§1, §2).
    ipu_link_bytes_per_second=128 * 2**30 / 8,
    ipu_links_per_ipu=10,
    host_link_bytes_per_second=_PCIE_GEN4_X16_BYTES_PER_SECOND,  # PCIe Gen4 x16 [S]
    datasheet_fp16_flops=249.7e12,  # [V]
    datasheet_fp32_flops=62.5e12,  # [V]
)

BOW = replace(
    GC200,
    name="BOW",  # Bow IPU (wafer-on-wafer GC200): Bow-2000, Bow Pod16 .. 256
    clock_hz=1.85e9,  # MLPerf v2.0 [V]
    # Tiles, memory [S] and per-cycle figures as GC200; local_load_bytes_per_cycle is GC200's [D]
    # per-cycle figure, assuming the faster clock leaves it unchanged [U].
    # NOTE: Bow's "512 Gbps" IPU-Link figure [V] is not broken down per link; GC200's model kept.
    datasheet_fp16_flops=350e12,  # [S]
    datasheet_fp32_flops=None,  # no published figure; ~87 TFLOPS [D] = peak_fp32_flops
)


# C600 PCIe card: one GC200-class IPU (1472 tiles, ~900 MB SRAM) at a higher clock, for
# inference in a server. [S] ByteMLPerf C600 README (ipu-facts-scale §3): 280 TFLOPS fp16, 560
# fp8, 70 fp32, 185 W; IPU-Link "32 lanes, 128 GB/s (64 GB/s each direction)".
C600 = replace(
    GC200,
    name="C600",
    # [D] 280e12 / (1472 tiles x 64 MACs x 2) = 1.486 GHz; Graphcore quotes 1.5 GHz [S], which gives
    # 282.6 TFLOPS fp16 and 70.7 fp32 (both within 1% of the card's figures).
    clock_hz=1.5e9,
    # 32 lanes at 16 GT/s = 4 links of x8 lanes, each 128 Gbit/s per direction as on the M2000
    # (6 x PCIe-Gen4-x8 SerDes per IPU pair [S]): 4 x 16 GB/s = 64 GB/s each direction [D]. The
    # per-link rate is GC200's poplibs figure [V]; the card links to other cards in a chassis.
    ipu_links_per_ipu=4,
    # The card sits in a PCIe Gen4 x16 slot [S] (C600 product brief): 31.5 GB/s each direction [D].
    host_link_bytes_per_second=_PCIE_GEN4_X16_BYTES_PER_SECOND,
    datasheet_fp16_flops=280e12,  # [S]
    datasheet_fp32_flops=70e12,  # [S]
)


def ipu_model(
    tiles: int = 16,
    bytes_per_tile: int = 64 * 1024,
    num_ipus: int = 1,
    base: Target = GC200,
    **overrides: object,
) -> Target:
    """A small custom chip: ``base`` with fewer tiles and less memory, for tests and teaching.

    Per-tile figures (clock, AMP, exchange, sync) come from ``base``; any field can be set by
    keyword. Datasheet peaks are dropped, since they describe the full-size chip.

    >>> m = ipu_model(tiles=4, clock_hz=1e9)
    >>> m.name, m.num_tiles, m.bytes_per_tile, m.clock_hz
    ('ipu_model(4 tiles)', 4, 65536, 1000000000.0)
    """
    unknown = [k for k in overrides if k not in _FIELD_NAMES]
    if unknown:
        hints = {k: difflib.get_close_matches(k, _FIELD_NAMES, n=3) for k in unknown}
        listed = "; ".join(
            f"{k!r} (did you mean {', '.join(v) or 'none'}?)" for k, v in hints.items()
        )
        raise TargetError(f"ipu_model got unknown Target fields: {listed}")
    name = f"ipu_model({tiles} tiles)" if num_ipus == 1 else f"ipu_model({num_ipus}x{tiles} tiles)"
    changes: dict[str, object] = {
        "name": name,
        "tiles_per_ipu": tiles,
        "bytes_per_tile": bytes_per_tile,
        "num_ipus": num_ipus,
        "datasheet_fp16_flops": None,
        "datasheet_fp32_flops": None,
    }
    return replace(base, **(changes | overrides))  # type: ignore[arg-type]


_FIELD_NAMES = tuple(f.name for f in fields(Target))
