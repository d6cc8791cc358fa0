"""union_per_key (the unions behind every step's bytes and regions) against figures worked out by
hand, for intervals given in (key, start) order, which it takes without sorting, and the same
intervals shuffled."""

from __future__ import annotations

import numpy as np
import pytest

import softipu.compiler.exchange as exchange
from softipu.compiler.exchange import union_per_key

# Key 0: [0, 4) and [2, 6) overlap, [6, 8) touches them: one region of 8; [10, 11): a second.
# Key 1: [3, 5) twice (equal starts, the longer first), [5, 6) touching: one region of 3.
# Key 2: nothing. Key 3: [0, 1) and [2, 3): two regions of one element each.
KEYS = np.array([0, 0, 0, 0, 1, 1, 1, 3, 3])
STARTS = np.array([0, 2, 6, 10, 3, 3, 5, 0, 2])
ENDS = np.array([4, 6, 8, 11, 5, 4, 6, 1, 3])
LENGTHS, REGIONS = [9, 3, 0, 2], [2, 1, 0, 2]


def test_intervals_in_key_order_are_not_sorted(monkeypatch):
    def no_sort(*args, **kwargs):
        raise AssertionError("sorted intervals were sorted again")

    monkeypatch.setattr(exchange.np, "argsort", no_sort)
    length, regions = union_per_key(KEYS, STARTS, ENDS, 4, lambda: no_sort())
    assert length.tolist() == LENGTHS and regions.tolist() == REGIONS


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("shared_order", [False, True])
def test_shuffled_intervals_give_the_same_unions(seed, shared_order):
    order = np.random.default_rng(seed).permutation(KEYS.size)
    keys, starts, ends = KEYS[order], STARTS[order], ENDS[order]
    by_start = (lambda: np.argsort(starts, kind="stable")) if shared_order else None
    length, regions = union_per_key(keys, starts, ends, 4, by_start)
    assert length.tolist() == LENGTHS and regions.tolist() == REGIONS
