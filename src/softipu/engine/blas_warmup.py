"""numpy's OpenBLAS made to run at its full speed from the first product of a process.

Measured on the 2-core AMD host (numpy 2's scipy-openblas 0.3.31, Haswell kernels, one thread):
a product whose output has at most ~320 columns (OpenBLAS's ``m``: numpy's row-major product is
its column-major transpose) ran at 11 GFLOP/s of CPU time instead of 34 (256 x 768 x 288,
128 x 512 x 128, 64 x 3072 x 96 alike) — until any product with more columns had run once in the
process; from then on every product ran at full speed, with the same bits. The slow state belongs
to each of OpenBLAS's work buffers (a second thread's product, using its own buffer, stayed slow
after the first thread's had been cured), and the cure grows with how much of the buffer the
curing product wrote (a 64 x 64 . 64 x 352 product did nothing, 96 x 64 . 64 x 352 half). So: a
product of at most ~320 columns packs every ``b`` panel at the start of the 32 MiB buffer (which
OpenBLAS maps but never writes further), while its kernel prefetches ahead into pages never
touched — each such prefetch a page walk that finds no page, on every call; a wider product
packs its panels side by side and so writes those pages. (The earlier reading, "slow depending on
the operands' addresses", came from wall-clock timings on a loaded host and from fresh processes.)

:func:`warm_blas_buffers` therefore runs one such product on each thread that runs products (the
engine's thread and the host pool's), all at once so that each holds its own buffer, once per
process, when a fast engine is made. It changes no value: OpenBLAS computes the same bits either
way (checked on the shapes above); only the time changes.
"""

from __future__ import annotations

import threading

import numpy as np

from softipu.codelets import host

__all__ = ["warm_blas_buffers", "WARM_SHAPE"]

# (rows, depth, columns): more than ~320 columns, so OpenBLAS writes its panels side by side over
# the first ~0.4 MiB of its buffer (384 deep x 256 rows); ~2 ms a thread. Cured every shape
# tried, 2048 x 2048 x 128 and 64 x 3072 x 96 among them.
WARM_SHAPE = (256, 384, 352)
_WAIT_S = 0.2  # a pool thread not there in this long (busy with other work) warms on its own later
_warmed = False
_lock = threading.Lock()


def warm_blas_buffers() -> None:
    """One wide product on this thread and each host pool thread at once (module doc); once."""
    global _warmed
    with _lock:
        if _warmed:
            return
        _warmed = True
    if host.BLAS.set is None:  # not numpy's OpenBLAS: nothing known to warm
        return
    rows, depth, cols = WARM_SHAPE
    a, b = np.ones((rows, depth), np.float32), np.ones((depth, cols), np.float32)
    helpers = max(0, host.CORES - 1)
    together = threading.Barrier(helpers + 1)

    def product() -> None:
        with host.BLAS.single_threaded():
            try:
                together.wait(_WAIT_S)  # every thread in its product at once: one buffer each
                np.matmul(a, b)
                together.wait(_WAIT_S)
            except threading.BrokenBarrierError:
                np.matmul(a, b)

    pool = host._pool() if helpers else None
    for _ in range(helpers):  # not waited for: a pool thread busy elsewhere must not hold us up
        pool.submit(product)
    product()
