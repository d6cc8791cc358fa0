"""The built-in ATen lowerings; importing this package registers them in ``LOWERINGS``."""

from softipu.frontends.torch.lowerings import (
    backward,
    block_sparse,
    composite,
    control,
    indexing,
    linalg,
    nn,
    pointwise,
    poptorch_ops,
    random,
    reduce,
    scans,
    shape,
    special,
    windows,
)

__all__ = ["backward", "block_sparse", "composite", "control", "indexing", "linalg", "nn", "pointwise",
           "poptorch_ops", "random", "reduce", "scans", "shape", "special", "windows"]
