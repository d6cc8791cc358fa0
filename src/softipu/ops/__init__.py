"""PopLibs-shaped operations: ``op(graph, *inputs, prog, *, name="", options=None) -> Tensor``.

Families, each documented in its module and re-exported here as ``sp.ops.<name>``:

* ``elementwise`` — popops unary/binary/ternary ops, ``map`` fusion, casts (stochastic rounding);
* ``reduce`` — multi-stage reductions over any dims, argmax/argmin;
* ``random`` — poprand distributions and dropout from a counter-based (Philox) generator;
* ``indexing`` — gather/scatter, embeddings (multi-slice/update), dynamic slices, sort, top-k...;
* ``nn`` — popnn activations, softmax, norms, pooling, losses, each with its gradient;
* ``matmul`` / ``conv`` — poplin: planned (grouped) matmul and 1-D/2-D convolution with the
  input-gradient and weight-update passes.
"""

from softipu.ops import conv as _conv_family
from softipu.ops import elementwise, indexing, nn, random, sparse, sparse_dynamic
from softipu.ops import matmul as _matmul_family
from softipu.ops import reduce as _reduce_family  # ``sp.ops.reduce`` is the op, as in popops
from softipu.ops.common import OpError
from softipu.ops.conv import *  # noqa: F403
from softipu.ops.elementwise import *  # noqa: F403 - each family's __all__
from softipu.ops.indexing import *  # noqa: F403
from softipu.ops.mapping import map_linearly
from softipu.ops.matmul import *  # noqa: F403
from softipu.ops.nn import *  # noqa: F403
from softipu.ops.random import *  # noqa: F403
from softipu.ops.reduce import *  # noqa: F403

__all__ = [
    "OpError", "elementwise", "indexing", "map_linearly", "nn", "random", "sparse", "sparse_dynamic",
    *elementwise.__all__, *indexing.__all__, *nn.__all__, *random.__all__, *_reduce_family.__all__,
    *_matmul_family.__all__, *_conv_family.__all__,
]
