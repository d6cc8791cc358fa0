"""A fresh engine's all-zero optimizer state is not written again (training/model.py
``_write_state(fresh=True)``): only state whose every bit is 0, as untouched engine memory reads.
A -0.0 is zero to ``np.any`` but not to the device, so it is still written."""

import numpy as np

from softipu.frontends.torch.training.model import _all_zero_bits


def test_only_all_zero_bits_count_as_untouched_memory():
    assert _all_zero_bits(0.0) and _all_zero_bits(np.zeros((3, 2), np.float16))
    assert _all_zero_bits(np.broadcast_to(np.float32(0), (4, 4)))  # a broadcast initial value
    assert not _all_zero_bits(-0.0) and not _all_zero_bits(np.array([0.0, -0.0], np.float32))
    assert not _all_zero_bits(np.array([0, 1], np.int32))
