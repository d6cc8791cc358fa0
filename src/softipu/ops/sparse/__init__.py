"""popsparse-shaped sparse ops. :mod:`.static`: block-sparse products with a pattern fixed at compile
time (popsparse::static_); :mod:`.softmax`: block-sparse softmax for masked attention (bsSoftmax).
The names of both are re-exported here (``sp.ops.sparse.sparse_dense_matmul`` ...)."""

from softipu.ops.sparse import softmax, static
from softipu.ops.sparse.softmax import *  # noqa: F403
from softipu.ops.sparse.static import *  # noqa: F403

__all__ = [*static.__all__, *softmax.__all__]
