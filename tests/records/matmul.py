"""Matmul records: numpy's matmul in float64 is the oracle (numpy broadcasting and 1-D rules)."""

from __future__ import annotations

import numpy as np
from tests.records import OpRecord, default_input

import softipu as sp
from softipu.ops.matmul import matmul


def _oracle(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):  # inf * 0 is NaN, as on the device
        return np.matmul(a.astype(np.float64), b.astype(np.float64))


def _with_specials(rng: np.random.Generator, shape, dtype, index: int) -> np.ndarray:
    """Normals with a NaN, a +Inf and a -Inf in the first operand (they spread along rows)."""
    x = default_input(rng, shape, dtype, index)
    if index == 0 and x.size >= 3:
        flat = x.reshape(-1)
        flat[0], flat[x.size // 2], flat[-1] = np.nan, np.inf, -np.inf
    return x


def _small_ints(rng: np.random.Generator, shape, dtype, index: int) -> np.ndarray:
    """Small integers: every partial sum is exact in fp16 with fp32 partials."""
    return rng.integers(-3, 4, size=shape).astype(dtype.numpy)


RECORDS = [
    OpRecord(
        "matmul",
        lambda g, a, b, prog: matmul(g, a, b, prog),
        _oracle,
        shapes=(
            ((3, 5), (5, 2)),
            ((1, 64), (64, 33)),  # 1 x K
            ((17, 1), (1, 9)),  # K = 1
            ((37, 53), (53, 29)),  # nothing divides anything
            ((5,), (5, 7)),  # 1-D left operand
            ((6, 4), (4,)),  # 1-D right operand
            ((6,), (6,)),  # dot product: a 0-d result
            ((2, 3, 4, 5), (5, 6)),  # batch on one side
            ((3, 1, 4, 5), (2, 5, 6)),  # batches broadcast both ways
            ((0, 4), (4, 3)),  # empty result
            ((3, 0), (0, 2)),  # K = 0: zeros
            ((2, 0, 3), (2, 3, 4)),  # empty batch
            ((70, 130), (130, 45)),  # K split over tiles and reduced
            ((4, 6, 3), (4, 3, 5)),
        ),
        dtypes=(sp.float32, sp.float16),
        # fp16 inputs, fp32 partials: only the final rounding to fp16 is lost.
        tolerance={sp.float32: (1e-5, 1e-5), sp.float16: (2e-3, 2e-3)},
    ),
    OpRecord(
        "matmul_half_partials",
        lambda g, a, b, prog: matmul(g, a, b, prog, options={"partialsType": "half"}),
        _oracle,
        shapes=(((9, 40), (40, 7)), ((2, 5, 8), (8, 3))),
        dtypes=(sp.float16,),
        make_input=_small_ints,
        tolerance={sp.float16: (1e-3, 1e-3)},
    ),
    OpRecord(
        "matmul_nan_inf",
        lambda g, a, b, prog: matmul(g, a, b, prog),
        _oracle,
        shapes=(((6, 10), (10, 4)), ((5, 9), (9, 3))),
        dtypes=(sp.float32, sp.float16),
        make_input=_with_specials,
        tolerance={sp.float32: (1e-5, 1e-5), sp.float16: (2e-3, 2e-3)},
    ),
]
