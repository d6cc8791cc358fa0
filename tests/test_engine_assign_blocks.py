"""engine/storage.assign: copies between crossing layouts in blocks cover every element once, with
the narrow blocks taken where the source's lines alias one cache set (strides of 4 KiB multiples)."""

from __future__ import annotations

import numpy as np
import pytest

from softipu.engine.storage import assign


@pytest.mark.parametrize("shape", [(1030, 129), (129, 1030), (600, 1024)])
def test_transposing_copies_match_numpy_whatever_the_source_stride(shape):
    rng = np.random.default_rng(0)
    for cols in (shape[0], 1024 * 4):  # source lines plain apart, and 16 KiB apart (aliased)
        base = rng.standard_normal((shape[1], cols)).astype(np.float32)
        src = base[:, :shape[0]].T  # the destination's fastest axis is the source's slowest
        dst = np.full(shape, np.nan, np.float32)
        assign(dst, src)
        assert np.array_equal(dst, src)
