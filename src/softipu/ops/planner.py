"""The matmul planner: how a grouped matmul ``C[g] = A[g] . B[g]`` is cut across tiles.

poplin plans a matmul as a 1-D convolution (ipu-facts.md §4): batch = M, input channels = K,
output channels = N, conv groups = G. A plan partitions the four dimensions over the tiles:

* ``g_split``, ``m_split``, ``n_split``: parallel splits (poplin's convGroupSplit, batchSplit /
  fieldSplit, outChanSplit.parallel);
* ``k_split``: parallel split of the reduction dimension (inChanSplit.parallel): each of the
  ``k_split`` tiles of an output block computes a partial sum and a second compute set adds them;
* ``k_serial``: serial split of each tile's K range (inChanSplit.serial): the tile receives and
  multiplies its inputs chunk by chunk, accumulating in place, so that it needs less memory; the
  steps run as one loop body where they are alike (:func:`_loop_steps`, ``ops/_matmul_loop.py``).

Tile ``(g, i, j, l)`` (a group block, an M block, an N block, a K block) runs one AMP partial
product per group of its group block (codelet ``AmpMatMul``) over blocks of ``m_block x
k_block`` and ``k_block x n_block``. Its inputs arrive by exchange: with the inputs laid out as the
plan wants (``create_matmul_input_lhs/rhs``), each A block is spread over the ``n_split`` tiles
that use it and each B block over the ``m_split`` tiles, so a tile receives all but its own share
(the exchange multicasts: a sender sends a piece once however many tiles listen).

Supertiles (poplin places work the same way): the two tiles of a supertile share one exchange bus
of twice a tile's rate, and data both of them receive crosses it once (ipu-facts.md §1). A plan
may pair neighbouring N blocks of the same A block on the two tiles (``pair == "n"``: the pair's
bus carries one A block and two B blocks instead of two of each) or neighbouring M blocks of the
same B block (``"m"``); unpaired plans of at most half the tiles use one tile per supertile.

The price of a candidate is built from the cost model's own pieces (see :func:`price`): AMP
cycles from the codelet's estimator, exchange cycles of the bytes crossing each supertile's bus
at ``target.exchange_cycles`` per tile (as the compiler charges them), sync, and the reduction
stage (ReducePartials vertices on the workers plus the partials' exchange). Temporary bytes per
tile, counted as poplin's planner counts them (:func:`temp_bytes`: a step's whole A and B blocks,
the partials, the running sum of a serial split), must stay below ``availableMemoryProportion x
target.bytes_per_tile``, and what they add beside the tile's own share of A, B and C below
``target.bytes_per_tile``. The fastest candidate wins; plans are cached by problem,
target and options.

Where the price differs from poplin's cost model (it only orders the candidates): poplin
(lib/poplin/ConvModel.cpp addExchangeCycleEstimates, ExchangeEstimator.hpp) charges a tile's
received inputs at twice ``exchangeBytesPerCycle`` when ``outChanSplit.parallel`` is even, its
received weights at once, and its whole block of partials at once even with no reduction, all
times the serial steps, with no sync, per-region or latency terms, and it reduces after every
serial step; here exchange is priced as the compiled program charges it (the supertile's bus,
a region per piece received, the phase's latency), partials only where K is split, and a serial
split accumulates in its partials and reduces once. poplin also requires ``inChanSplit.serial``
to divide K (constructModel, ``m.factorOf``); here a serial split is made alike where it can be
(``K = k_split x steps x chunk``, a stricter rule: poplin's serial slice is the outer cut, each
turn's K then split unevenly over the tiles alike at every turn) and one that cannot stays
unrolled, taken only where nothing else fits.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from softipu.codelets.elementwise.estimates import binary_op_cycles
from softipu.codelets.elementwise.ops import BinaryOp
from softipu.codelets.indexing import _dynamic_cycles, _stream_cycles, dynamic_slice_codelet
from softipu.codelets.matmul import amp_codelet, amp_cycles, reduce_codelet, reduce_cycles
from softipu.dtypes import DType, uint32
from softipu.graph.accounting import control_code_bytes, exchange_code_bytes, vertex_state_bytes
from softipu.target import Target

__all__ = ["MatMulProblem", "Plan", "plan", "plan_report", "rearrange_cycles", "temp_bytes", "DIMS",
           "PAIRINGS"]

DIMS = ("g", "m", "n", "k")
# What the two tiles of a supertile split between them (poplin's use of the shared exchange bus):
# nothing in particular (""), two N blocks sharing one A block ("n"), or two M blocks sharing one
# B block ("m"). Data both partners receive crosses their bus once (ipu-facts.md §1).
PAIRINGS = ("", "n", "m")
# poplin's serial loop counter (lib/poplin/Convolution.cpp, convolutionImpl: UNSIGNED_INT, tile 0).
LOOP_COUNTER_DTYPE = uint32


@dataclass(frozen=True, slots=True)
class MatMulProblem:
    """What to plan: ``groups`` products of ``(m x k) . (k x n)``.

    The output is stored row-major, ``(g, m, n)``. ``*_grain``: block sizes of that dimension are
    multiples of it (a convolution's K blocks hold whole kernels).
    """

    groups: int
    m: int
    k: int
    n: int
    in_dtype: DType
    partials_dtype: DType
    out_dtype: DType
    m_grain: int = 1
    k_grain: int = 1
    n_grain: int = 1

    def __post_init__(self) -> None:
        for name in ("groups", "m", "k", "n"):
            if getattr(self, name) < 1:
                raise ValueError(f"MatMulProblem.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("m_grain", "k_grain", "n_grain"):
            if getattr(self, name) < 1:
                raise ValueError(f"MatMulProblem.{name} must be >= 1")

    @property
    def flops(self) -> int:
        return 2 * self.groups * self.m * self.k * self.n


@dataclass(frozen=True, slots=True)
class Plan:
    """A chosen partition and what the cost model expects it to cost (per tile, cycles)."""

    problem: MatMulProblem
    target_name: str
    num_tiles: int
    splits: tuple[int, int, int, int]  # g, m, n, k (parallel)
    blocks: tuple[int, int, int, int]  # g, m, n, k (a K block is one serial chunk)
    k_serial: int
    two_stage: bool  # partials reduced (or cast) by a second compute set
    spread: int  # 2: at most one busy tile per supertile
    pair: str  # one of PAIRINGS: the dimension split across the two tiles of a supertile
    amp_cycles: int
    exchange_cycles: int
    reduce_cycles: int
    sync_cycles: int
    temp_bytes_per_tile: int
    resident_bytes_per_tile: int  # its share of A, B and C, and code and vertex state
    budget_bytes_per_tile: int
    peak_flops_per_cycle: int
    candidates: int
    fits: bool = True
    # Cycles to bring A and B into this plan's layout when they arrive in another one (the
    # layout of the op before, a linear mapping): not part of ``cycles``, which is for operands
    # made by ``create_matmul_input_lhs/rhs`` (see :func:`rearrange_cycles`).
    rearrange_cycles: int = 0
    # The serial steps run as one loop body (see :func:`_loop_steps`), and what the loop adds
    # (zeroing, slices, counter, control: :func:`loop_cycles`), part of ``cycles``.
    looped: bool = False
    loop_cycles: int = 0
    planning_seconds: float = field(default=0.0, compare=False)

    @property
    def g_split(self) -> int:
        return self.splits[0]

    @property
    def m_split(self) -> int:
        return self.splits[1]

    @property
    def n_split(self) -> int:
        return self.splits[2]

    @property
    def k_split(self) -> int:
        return self.splits[3]

    @property
    def tiles_used(self) -> int:
        return int(np.prod(self.splits))

    @property
    def cycles(self) -> int:
        return (self.amp_cycles + self.exchange_cycles + self.reduce_cycles + self.sync_cycles
                + self.loop_cycles)

    @property
    def k_blocks(self) -> int:
        """K blocks in all: ``k_split`` tile ranges of ``k_serial`` chunks (the last may be short)."""
        return -(-self.problem.k // self.blocks[3])

    @property
    def efficiency(self) -> float:
        """Modeled flops / (cycles x the whole chip's AMP peak)."""
        return self.problem.flops / max(1, self.cycles * self.peak_flops_per_cycle)

    @property
    def efficiency_rearranged(self) -> float:
        """As :attr:`efficiency`, for operands that must first be rearranged into the plan's
        layout (``cycles + rearrange_cycles``)."""
        total = self.cycles + self.rearrange_cycles
        return self.problem.flops / max(1, total * self.peak_flops_per_cycle)

    def tile_of(self, gi, i, j, kr) -> np.ndarray:
        """The tile of partition (group block, M block, N block, K range); arrays broadcast.

        The paired dimension varies fastest, so the two tiles of a supertile hold neighbouring
        blocks of it and the same blocks of every other dimension.
        """
        g_s, m_s, n_s, k_s = self.splits
        gi = np.asarray(gi, np.int64)
        if self.pair == "n":
            return ((gi * m_s + i) * k_s + kr) * n_s + j
        if self.pair == "m":
            return ((gi * n_s + j) * k_s + kr) * m_s + i
        u = ((gi * m_s + i) * n_s + j) * k_s + kr
        if self.spread > 1:
            return (u * self.num_tiles) // self.tiles_used
        return u

    def report(self) -> str:
        return plan_report(self)


# -- candidate enumeration ---------------------------------------------------------------------
def _split_options(size: int, grain: int, max_split: int) -> tuple[np.ndarray, np.ndarray]:
    """(splits, block sizes): every distinct block size ``grain x ceil(units / s)`` (at most
    ``size``: a single block may be shorter than a grain)."""
    units = -(-size // grain)
    s = np.arange(1, max(1, min(units, max_split)) + 1, dtype=np.int64)
    blocks = np.unique(np.minimum(grain * (-(-units // s)), size))
    return -(-size // blocks), blocks


def _candidates(p: MatMulProblem, target: Target) -> dict[str, np.ndarray]:
    """All (g, m, n, k) partitions using at most every tile, as columns, each with every
    pairing it allows (``pair``: an index into :data:`PAIRINGS`)."""
    tiles = target.num_tiles
    cols: dict[str, np.ndarray] = {"used": np.ones(1, np.int64)}
    for dim, size, grain in (("g", p.groups, 1), ("m", p.m, p.m_grain), ("n", p.n, p.n_grain),
                             ("k", p.k, p.k_grain)):
        s, b = _split_options(size, grain, tiles)
        rows, picks = np.nonzero(cols["used"][:, None] * s[None, :] <= tiles)
        cols = {key: v[rows] for key, v in cols.items()}
        cols["s" + dim], cols["b" + dim] = s[picks], b[picks]
        cols["used"] = cols["used"] * s[picks]
    tps = target.tiles_per_supertile
    pairs = [np.zeros(cols["used"].size, bool)]
    if tps == 2 and target.tiles_per_ipu % tps == 0:  # a pair never straddles two IPUs
        pairs += [cols["sn"] % tps == 0, cols["sm"] % tps == 0]
    else:
        pairs += [np.zeros_like(pairs[0])] * 2
    rows = np.concatenate([np.flatnonzero(ok | (k == 0)) for k, ok in enumerate(pairs)])
    kind = np.concatenate([np.full(int((ok | (k == 0)).sum()), k, np.int64) for k, ok in enumerate(pairs)])
    cols = {key: v[rows] for key, v in cols.items()}
    cols["pair"] = kind
    return cols


def _serial_chunks(p: MatMulProblem, bk: np.ndarray, recv_per_k: np.ndarray,
                   room: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(serial steps, chunk): the fewest K chunks of a tile's range whose inputs fit ``room``.

    Chunks are whole K grains (or the whole range); 0 steps: not even one grain fits.
    """
    max_chunk = np.where(recv_per_k > 0, np.maximum(room, 0) // np.maximum(recv_per_k, 1), bk)
    whole = max_chunk >= bk
    max_units = max_chunk // p.k_grain
    k_units = -(-bk // p.k_grain)
    serial = np.where(whole, 1, np.where(max_units >= 1, -(-k_units // np.maximum(max_units, 1)), 0))
    chunk = np.where(whole, bk, np.minimum(bk, p.k_grain * -(-k_units // np.maximum(serial, 1))))
    return serial, chunk


def _inputs_per_k(c: dict[str, np.ndarray], isz: int, tps: int) -> tuple[np.ndarray, np.ndarray]:
    """Per unit of K, the input bytes a tile receives and those crossing its supertile's bus.

    Each block is spread over the tiles that use it, so a tile receives all but its own share of
    its A block (used by sn tiles) and of its B block (sm tiles). On the bus, per tile of it:
    partners' blocks of the paired dimension differ; their shared block crosses once (whole: each
    partner lacks the other's share); unpaired partners each bring all they receive.
    """
    bg, bm, bn, sm, sn, pair = c["bg"], c["bm"], c["bn"], c["sm"], c["sn"], c["pair"]
    a_recv, b_recv = bg * bm * (sn - 1) // sn * isz, bg * bn * (sm - 1) // sm * isz
    bus = np.where(pair == 1, bg * bm * isz + tps * b_recv,
                   np.where(pair == 2, tps * a_recv + bg * bn * isz, tps * (a_recv + b_recv)))
    return a_recv + b_recv, bus


def temp_bytes(p: MatMulProblem, bg, bm, bn, chunk, k_split, steps) -> np.ndarray:
    """Temporary bytes per tile of a plan, as poplin's planner counts them [V] (ints or arrays).

    lib/poplin/ConvModel.cpp, ``addEstimates``: ``totalTempBytes = max(transform temp, tile
    transform temp + convTempBytes, reduceTempBytes, ...) + addInPlaceTempBytes``, with

    * ``addConvTempMemoryEstimate``: the tile's WHOLE input block (``inputsPerLevel.back()``,
      taken before ``addExchangeCycleEstimates`` subtracts the share already on the tile, which
      only the exchange cycles leave out), its whole weights block, and its partials
      (``addPartialsPerTile``, ``partialType``), one serial step's worth ("when splitting
      serially the temp memory should not outlive an iteration of the loop"; the tile-level
      sizes divide K by ``inChanSplit.parallel x inChanSplit.serial``, constructModel). The
      partials count whether or not a second compute set follows. Here: ``bg x (bm x chunk +
      chunk x bn) x in bytes + bg x bm x bn x partial bytes``;
    * ``addReduceCycleEstimate``: with a reduction depth (``inChanSplit.parallel``) above 1, its
      first stage holds ``ceil(partials / depth) x depth`` partials of the tile level's result
      type (the partials type here: ``interTilePartialsType`` is never wider, getConvTypes);
    * ``addInPlaceEstimate``: with ``inChanSplit.serial`` above 1, the running sum of the
      tile's outputs, ``ceil(partials / depth)`` of the same type, live across the serial loop
      and so added on top;
    * the transform terms (operands rearranged into the plan's layout) are 0 for operands made
      by ``create_matmul_input_lhs/rhs``, as :attr:`Plan.cycles` leaves out their cycles; the
      AMP padding terms (``addTileLevelTransformEstimates``) are 0 for a 1x1 convolution with
      a full AMP input group (convUnitWeightHeight 1), and blocks here are whole grains.
    """
    isz, psz = p.in_dtype.itemsize, p.partials_dtype.itemsize
    bg, bm, bn, chunk, k_split, steps = (np.asarray(x, np.int64)
                                         for x in (bg, bm, bn, chunk, k_split, steps))
    partials = bg * bm * bn
    outputs = -(-partials // k_split)  # outputsPerLevel: what each tile reduces and keeps
    conv = bg * (bm * chunk + chunk * bn) * isz + partials * psz
    reduce = np.where(k_split > 1, outputs * k_split * psz, 0)
    in_place = np.where(steps > 1, outputs * psz, 0)
    return np.maximum(conv, reduce) + in_place


def price(p: MatMulProblem, target: Target, c: dict[str, np.ndarray],
          budget: int, loops: bool = True) -> dict[str, np.ndarray]:
    """Cycles and temporary bytes per tile of each candidate (columns of ``c``), vectorized.

    Per tile: ``k_serial`` steps of (sync, exchange of the step's A and B chunks, AMP), then, when
    partials must be added or cast, a second step (sync, exchange of the partials, ReducePartials
    on the workers). Temporaries: as poplin's planner counts them (:func:`temp_bytes`).
    """
    sg, sm, sn, sk = c["sg"], c["sm"], c["sn"], c["sk"]
    bg, bm, bn, bk = c["bg"], c["bm"], c["bn"], c["bk"]
    isz, psz, osz = p.in_dtype.itemsize, p.partials_dtype.itemsize, p.out_dtype.itemsize
    direct = sn == 1  # the AMP writes whole output rows: no second stage needed
    tps = target.tiles_per_supertile
    _, bus_per_k = _inputs_per_k(c, isz, tps)
    # The fewest serial steps whose temporaries fit: one step if the whole K range does, else
    # as many as needed with the running sum of the outputs beside each step's blocks.
    block_per_k = bg * (bm + bn) * isz
    partial_bytes = bg * bm * bn * psz
    running = -(-(bg * bm * bn) // sk) * psz
    reduce_room = budget - np.where(sk > 1, -(-(bg * bm * bn) // sk) * sk * psz, 0)
    one, whole_chunk = _serial_chunks(p, bk, block_per_k, budget - partial_bytes)
    many, part_chunk = _serial_chunks(p, bk, block_per_k, budget - partial_bytes - running)
    alone = (one == 1) & (reduce_room >= 0)
    serial = np.where(alone, 1, np.where(reduce_room - running >= 0, many, 0))
    chunk = np.where(alone, whole_chunk, part_chunk)
    serial, chunk, looped = _loop_steps(p, sk, serial, chunk, loops)
    steps = np.maximum(serial, 1)
    k_blocks = -(-p.k // chunk)
    sk = -(-k_blocks // steps)  # K ranges actually used with these chunks
    two_stage = (sk > 1) | (psz != osz) | ~direct
    used = sg * sm * sn * sk
    pair = c["pair"]
    spread = np.where((pair == 0) & (used * tps <= target.num_tiles), tps, 1)
    bus_in = -(-bus_per_k * chunk // tps)
    # Unrolled: the first step writes its partials, the later ones accumulate. A loop's one body
    # accumulates at every turn, onto partials zeroed before it (see :func:`_loop_steps`).
    amp = bg * (np.where(looped, 0, amp_cycles(bm, chunk, bn, p.in_dtype, p.partials_dtype, target))
                + np.where(looped, steps, steps - 1) * amp_cycles(bm, chunk, bn, p.in_dtype,
                                                                  p.partials_dtype, target, zeroing=False))
    runs = bg * -(-bm // sk)  # output rows each tile reduces
    recv_red = (sk - 1) * runs * bn * psz
    workers = target.workers_per_tile
    # One N block: a vertex per worker's share of each block's rows (ops.matmul, poplin's
    # ReduceAdd over a tile's region); several: still priced as a vertex per row (ops builds
    # worker shares there too; pricing them moves plan choices and figures tested by hand).
    rows = -(-bm // sk)
    share = np.where(direct, -(-rows // workers), 1)
    verts = np.where(direct, bg * -(-rows // share), runs)
    each = reduce_cycles(sk, share * bn, p.partials_dtype, p.out_dtype, target)
    red = np.where(two_stage, workers * np.maximum(each, -(-(verts * each) // workers)), 0)
    sync = target.on_chip_sync_cycles
    # Regions received per step: a piece of the A block from each other tile sharing it and of
    # the B block likewise; in the reduction, partials from the other K ranges.
    exchange = steps * target.exchange_phase_cycles(bus_in, (sn - 1) + (sm - 1), spread) + np.where(
        two_stage, target.exchange_phase_cycles(recv_red, sk - 1, spread), 0)
    temp = temp_bytes(p, bg, bm, bn, chunk, sk, steps)
    # What the candidate needs at least: one grain of K at a time (for the no-fit message).
    least = temp_bytes(p, bg, bm, bn, np.minimum(p.k_grain, bk), c["sk"], 2)
    temp = np.where(serial > 0, temp, least)
    # The tile's own share of A, B and C, laid out as planned, must fit beside what the step
    # really adds, and so must the code and state of every step (exchange code per region
    # received). poplin's count holds the tile's own share of each block, which the AMP here
    # reads in place, and partials the AMP writes straight into C when no second stage follows.
    k_range = chunk * steps
    resident = bg * (bm * k_range * isz // sn + k_range * bn * isz // sm + bm * bn * osz // sk)
    resident = resident + _code_bytes(p, target, steps, bg, sm, sn, sk, verts, two_stage, looped,
                                      bm * chunk, chunk * bn)
    read_in_place = bg * (bm * chunk * isz // sn + chunk * bn * isz // sm) + np.where(
        two_stage, 0, bg * bm * bn * psz)
    return {"sk": sk, "used": used, "spread": spread, "pair": pair, "two_stage": two_stage,
            "serial": serial, "looped": looped,
            "loop": np.where(looped, loop_cycles(p, target, bg, bm, bn, chunk, sm, sn, steps), 0),
            "chunk": chunk, "amp": amp, "exchange": exchange, "reduce": red,
            "sync": steps * sync + np.where(two_stage, sync, 0), "temp": temp,
            "resident": resident, "held": temp - read_in_place,
            "fits": (serial > 0) & (temp <= budget)
            & (temp - read_in_place + resident <= target.bytes_per_tile)}


def _code_bytes(p: MatMulProblem, target: Target, steps, bg, sm, sn, sk, verts, two_stage,
                looped, a_block=0, b_block=0) -> np.ndarray:
    """Per tile: exchange code (a region per sending tile), control code and vertex state of
    the AMP steps and the reduction, by the rules the compiler's memory plan charges
    (:mod:`softipu.graph.accounting`), for the codelets :mod:`softipu.ops.matmul` adds.

    Unrolled serial steps each hold their own; a loop (``looped``) holds one step's, plus its
    slice (``DynamicSlice2d``s of ``steps`` rows, a worker's share of the tile's piece of each
    group's A block (``a_block`` elements over ``sn`` tiles) and B block (``b_block`` over ``sm``),
    :func:`slice_share`; and the loop counter received), and 5 more program steps: the zeroing,
    the counter's reset, the slice, the counter's increment and the ``Repeat``
    (:mod:`softipu.ops._matmul_loop`)."""
    amp_state = vertex_state_bytes(amp_codelet(p.in_dtype, p.partials_dtype), target)
    per_step = (exchange_code_bytes(sn + sm, target) + control_code_bytes(1, target)
                + bg * amp_state)
    red = reduce_codelet(p.partials_dtype, p.out_dtype)
    reduce_state = (verts * vertex_state_bytes(red, target, {"partials": sk})
                    + exchange_code_bytes(sk + 1, target) + control_code_bytes(1, target))
    slicer = dynamic_slice_codelet(p.in_dtype, LOOP_COUNTER_DTYPE)
    slices = 0
    for piece in (-(-np.asarray(a_block, np.int64) // sn), -(-np.asarray(b_block, np.int64) // sm)):
        slices = slices + -(-piece // slice_share(target, p.in_dtype, np.maximum(piece, 1)))
    loop = (bg * slices * vertex_state_bytes(slicer, target, {"base": steps, "out": 1})
            + exchange_code_bytes(1, target) + control_code_bytes(5, target))
    return np.where(looped, per_step + loop, steps * per_step) + np.where(two_stage, reduce_state, 0)


def _loop_steps(p: MatMulProblem, sk, serial, chunk,
                loops: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(serial steps, chunk, looped): serial splits made alike where they can be, so that they run
    as one loop.

    poplin runs a serial split as a loop (lib/poplin/ConvProgramTree.hpp, ``lower``:
    ``Repeat(loopCount, Sequence{slice, body, update, loopPost})``; lib/poplin/Convolution.cpp,
    ``convolutionImpl``: the serial slice of the input and the weights taken by
    ``popops::dynamicSlice`` at a ``loopCounter`` that ``loopPost`` increments), so the body's
    compute sets, their exchange code and vertex state exist once; its planner only takes a
    serial split that divides the channels (ConvModel.cpp, constructModel: ``m.factorOf``), each
    turn's slice then cut over the tiles, alike at every turn. Here the body is alike at every
    turn when each tile's K range is ``steps`` chunks of one size: ``chunk`` (whole K grains,
    ``ceil(K / (k_split x steps))``) on every K range but the last, and ``(K - (k_split - 1) x
    steps x chunk) / steps`` on the last (:func:`softipu.ops._matmul_blocks.k_grid`). A
    candidate's fewest fitting steps are raised to the next count that makes it so (each chunk is
    then no larger, so it still fits); a split that cannot be made alike stays unrolled (each step
    its own compute set and code), and is chosen only where no other candidate fits
    (:func:`_eligible`). With ``loops`` off (the matmul option ``serialLoops``), every serial split stays
    unrolled as it comes.
    """
    sk, serial, chunk = (np.asarray(x, np.int64) for x in (sk, serial, chunk))
    grain = p.k_grain
    found = np.zeros(serial.shape, np.int64)
    want = serial > 1
    units = -(-p.k // grain)
    if loops and want.any():
        top = min(units, 4 * int(serial[want].max()))
        for s in range(2, top + 1):  # the fewest steps, from each candidate's own
            c = grain * -(-units // (sk * s))
            last = p.k - (sk - 1) * s * c  # the last K range's share
            ok = (last >= s) & (last % s == 0) & (last <= s * c)
            found = np.where((found == 0) & want & (s >= serial) & ok, s, found)
    looped = found > 1
    chunk = np.where(looped, grain * -(-units // np.maximum(sk * found, 1)), chunk)
    return np.where(looped, found, serial), chunk, looped


def slice_share(target: Target, dtype: DType, length):
    """The elements of a piece of ``length`` that one serial-slice vertex copies: a worker's share,
    in whole vectors (popops' dynamicSlice divides a tile's regions between its workers)."""
    vector = max(1, target.vector_width_bytes // dtype.itemsize)
    per_worker = -(-np.asarray(length, np.int64) // target.workers_per_tile)
    return np.maximum(vector, -(-per_worker // vector) * vector)


def loop_cycles(p: MatMulProblem, target: Target, bg, bm, bn, chunk, sm, sn, steps) -> np.ndarray:
    """Cycles a serial loop adds to its steps' own (see :func:`_loop_steps`): the partials zeroed
    before it (popops ``zero``'s Fill, a tile's share), and at every turn the slice compute set
    (``DynamicSlice2d`` vertices copying the tile's share of the step's A and B blocks, a
    worker's share each, after the loop counter reaches every tile), the counter's increment
    (popops' BinaryOp1D estimate for one element) and the ``Repeat``'s control; and the
    counter's reset (an on-tile copy) before it: as the compiled program charges them."""
    workers = target.workers_per_tile
    each, total = 0, 0
    for piece in (-(-(bm * chunk) // sn), -(-(chunk * bn) // sm)):  # the tile's share of A, B
        share = slice_share(target, p.in_dtype, piece)
        vertex = _dynamic_cycles(p.in_dtype, 1, share, target)
        each = np.maximum(each, vertex)
        total = total + bg * -(-piece // share) * vertex
    slice_ = workers * np.maximum(each, -(-total // workers))
    counter = target.exchange_phase_cycles(np.full(np.shape(steps), LOOP_COUNTER_DTYPE.itemsize),
                                           np.ones(np.shape(steps), np.int64), 1)
    sync = target.on_chip_sync_cycles
    increment = binary_op_cycles(BinaryOp.ADD, LOOP_COUNTER_DTYPE, 1, target)
    turn = slice_ + counter + increment + 2 * sync + target.control_cycles_per_step
    reset = -(-LOOP_COUNTER_DTYPE.itemsize // int(target.on_tile_copy_bytes_per_cycle)) + sync
    zero = _stream_cycles(p.partials_dtype, bg * bm * bn, target) + sync
    return steps * turn + zero + reset


def rearrange_cycles(p: MatMulProblem, target: Target, tiles_used: int) -> int:
    """Cycles to rearrange A and B into a plan's layout when they arrive in another one.

    poplin's planner prices an operand rearrangement (lib/poplin/ConvModel.cpp,
    addTransformCycleEstimate: rearrangeInput / rearrangeWeights) per tile as an on-tile copy
    ``ceil(bytes x 5 / (min(memcpyBytesPerCycle, element bytes) x 4))`` (``x 3`` when
    in-channels x out-channels is not a multiple of 2 (fp32) or 4 (fp16):
    getScaleFactorForTransform) plus an exchange ``ceil(bytes / exchangeBytesPerCycle)``, with
    ``bytes`` the operand's bytes over the tiles the plan uses [V]. memcpyBytesPerCycle is
    ``target.on_tile_copy_bytes_per_cycle``. A skinny product does ``2 N`` flops per element of
    A, so this costs as much as the product itself there; a cube's is a few percent.
    """
    size = p.in_dtype.itemsize
    granule = 2 if size == 4 else 4
    num, den = (5, 4) if (p.k * p.n) % granule == 0 else (5, 3)
    per_cycle = min(int(target.on_tile_copy_bytes_per_cycle), size)
    total = 0
    for elements in (p.groups * p.m * p.k, p.groups * p.k * p.n):
        per_tile = -(-elements * size // max(tiles_used, 1))
        total += -(-per_tile * num // (per_cycle * den))
        total += int(np.ceil(per_tile / target.exchange_bytes_per_cycle))
    return total


# -- the planner ---------------------------------------------------------------------------------
def plan(p: MatMulProblem, target: Target, available_memory_proportion: float = 0.6,
         loops: bool = True) -> Plan:
    """The fastest partition of ``p`` on ``target`` within the memory budget (cached); its serial
    split as one loop body where ``loops`` (the matmul option ``serialLoops``: off, every serial
    step is its own compute set, which the fast engine fuses into one GEMM chain,
    engine/chains.py; a loop's steps run group by group, 2-4x the host time)."""
    return _plan_cached(p, target, float(available_memory_proportion), bool(loops))


def _lower_bound(p: MatMulProblem, target: Target, c: dict[str, np.ndarray]) -> np.ndarray:
    """Cycles no candidate can beat: its AMP over the tile's whole K range in one step, plus
    the exchange of its inputs across its supertile's bus (each tile alone on it when unpaired)."""
    bg, bm, bn, bk = c["bg"], c["bm"], c["bn"], c["bk"]
    isz, tps = p.in_dtype.itemsize, target.tiles_per_supertile
    amp = bg * amp_cycles(bm, bk, bn, p.in_dtype, p.partials_dtype, target)
    recv, paired_bus = _inputs_per_k(c, isz, tps)
    bus = np.where(c["pair"] == 0, recv, paired_bus)  # an unpaired tile alone on its bus
    rate = target.exchange_bytes_per_cycle * tps
    return amp + (bus * bk / rate).astype(np.int64)


_FIRST_PRICED = 1024


def _promising(p: MatMulProblem, target: Target, every: dict[str, np.ndarray],
               budget: int, loops: bool = True) -> dict[str, np.ndarray]:
    """The candidates that may be best: priced in order of their lower bounds, stopping where
    the bound passes the best fitting price found (branch and bound, vectorized)."""
    if every["used"].size <= _FIRST_PRICED:
        return every
    bound = _lower_bound(p, target, every)
    order = np.argsort(bound, kind="stable")
    head = {k: v[order[:_FIRST_PRICED]] for k, v in every.items()}
    costs = price(p, target, head, budget, loops)
    total = _total(costs)
    if not costs["fits"].any():
        # Memory does not depend on the pairing: the unpaired partitions tell whether any fits
        # (and, if none does, hold the one needing least memory).
        alone = {k: v[every["pair"] == 0] for k, v in every.items()}
        costs = price(p, target, alone, budget, loops)
        if not costs["fits"].any():
            return alone
        total = _total(costs)
    best = int(total[_eligible(costs, loops)].min())
    keep = order[bound[order] <= best]
    return {k: v[keep] for k, v in every.items()}


def _total(costs: dict[str, np.ndarray]) -> np.ndarray:
    return costs["amp"] + costs["exchange"] + costs["reduce"] + costs["sync"] + costs["loop"]


def _eligible(costs: dict[str, np.ndarray], loops: bool = True) -> np.ndarray:
    """The fitting candidates to choose from: those whose serial steps (if any) run as a loop,
    as poplin's always do (:func:`_loop_steps`); an unrolled serial split only where none fits."""
    fits = costs["fits"]
    alike = fits & ((costs["serial"] <= 1) | costs["looped"])
    return alike if loops and alike.any() else fits


@lru_cache(maxsize=512)
def _plan_cached(p: MatMulProblem, target: Target, proportion: float, loops: bool = True) -> Plan:
    t0 = time.perf_counter()
    budget = int(proportion * target.bytes_per_tile)
    every = _candidates(p, target)
    cols = _promising(p, target, every, budget, loops)
    costs = price(p, target, cols, budget, loops)
    total = _total(costs)
    fits = costs["fits"]
    if fits.any():
        key = np.where(_eligible(costs, loops), total, np.iinfo(np.int64).max)
        best = int(np.lexsort((costs["serial"], costs["used"], key))[0])
    else:  # nothing fits: the least memory, so the caller can say how much is missing
        over = (np.maximum(costs["temp"] - budget, 0)
                + np.maximum(costs["held"] + costs["resident"] - target.bytes_per_tile, 0))
        best = int(np.lexsort((total, over))[0])
    get = {k: int(v[best]) for k, v in costs.items()}
    splits = (int(cols["sg"][best]), int(cols["sm"][best]), int(cols["sn"][best]), get["sk"])
    peak = (target.amp_macs_per_cycle_fp16 if p.in_dtype.itemsize == 2
            else target.amp_macs_per_cycle_fp32) * 2 * target.num_tiles
    return Plan(
        problem=p, target_name=target.name, num_tiles=target.num_tiles,
        splits=splits,
        blocks=(int(cols["bg"][best]), int(cols["bm"][best]), int(cols["bn"][best]), get["chunk"]),
        k_serial=max(1, get["serial"]), two_stage=bool(get["two_stage"]), spread=get["spread"],
        pair=PAIRINGS[get["pair"]],
        amp_cycles=get["amp"], exchange_cycles=get["exchange"], reduce_cycles=get["reduce"],
        sync_cycles=get["sync"], temp_bytes_per_tile=get["temp"],
        resident_bytes_per_tile=get["resident"], budget_bytes_per_tile=budget,
        peak_flops_per_cycle=peak, candidates=int(every["used"].size), fits=bool(fits[best]),
        rearrange_cycles=rearrange_cycles(p, target, int(np.prod(splits))),
        looped=bool(get["looped"]), loop_cycles=get["loop"],
        planning_seconds=time.perf_counter() - t0)


def plan_report(plan_: Plan) -> str:
    """A readable account of a plan: the partition, the blocks, the cycles and the memory."""
    p = plan_
    q = p.problem
    g, m, n, k = p.blocks
    lines = [
        f"matmul plan on {p.target_name} ({p.num_tiles} tiles): {q.groups} x ({q.m} x {q.k}) . "
        f"({q.k} x {q.n}), {q.in_dtype.name} in, {q.partials_dtype.name} partials, "
        f"{q.out_dtype.name} out",
        f"  partition: groups {p.g_split} x M {p.m_split} x N {p.n_split} x K {p.k_split} "
        f"(parallel) = {p.tiles_used} tiles"
        + (", one per supertile" if p.spread > 1 else "")
        + (f", supertile partners split {p.pair.upper()}" if p.pair else "")
        + f"; K serial {p.k_serial}",
        f"  per tile: {g} group(s) of ({m} x {k}) . ({k} x {n})"
        + (" per serial step" if p.k_serial > 1 else ""),
        f"  cycles: {p.cycles:,} = AMP {p.amp_cycles:,} + exchange {p.exchange_cycles:,} + "
        f"reduce {p.reduce_cycles:,} + sync {p.sync_cycles:,}"
        + (f" + loop {p.loop_cycles:,} (the serial steps as one loop body)" if p.looped else "")
        + (" (partials reduced in a second compute set)" if p.two_stage else ""),
        f"  efficiency: {100 * p.efficiency:.1f}% of the AMP peak "
        f"({p.peak_flops_per_cycle:,} flops/cycle); operands from another layout: "
        f"+{p.rearrange_cycles:,} cycles to rearrange them, {100 * p.efficiency_rearranged:.1f}%",
        f"  memory per tile: {p.temp_bytes_per_tile:,} B of temporaries (budget "
        f"{p.budget_bytes_per_tile:,} B) + {p.resident_bytes_per_tile:,} B of operands, code and "
        "state" + ("" if p.fits else " (DOES NOT FIT)"),
        f"  {p.candidates:,} candidates priced in {1000 * p.planning_seconds:.1f} ms",
    ]
    return "\n".join(lines)
