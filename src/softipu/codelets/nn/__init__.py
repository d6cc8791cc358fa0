"""popnn-style codelets: non-linearities, softmax, norms, pooling, losses, and the column reduction
their statistics and parameter gradients share. Compute and cycle estimate sit side by side.

Layouts. A *row* codelet (softmax, layer/group norm, losses) gets whole rows: its vector fields
hold ``k`` rows of ``n`` elements back to back and it reduces along each row, so no row is ever
split across vertices or tiles. The row length comes from a field of length ``k`` (per-row
statistics) or from a ``Param`` when no such field exists. Plane codelets (batch norm) get ``cb``
channel blocks of one sample, pooling codelets a band of output rows of one ``(n, c)`` plane.

Numerics: every statistic, sum and transcendental is computed in float32 (fp16 storage, fp32
arithmetic, as popnn does); outputs are rounded once to the output dtype. Reductions run along a
fixed axis of per-vertex data, so results do not depend on how the engine batches vertices.

NOTE: ``Param`` values must be equal across one ``add_vertices`` call (the ops add one group per
geometry); compute reads the first and checks the rest.

Cycle estimates. PopLibs publishes no formulas for popnn's fused codelets, so every estimate
here is **[U]**, built from the per-vector costs of the popops estimators that *are* published
(ipu-facts.md §5; W workers, fp32 vector width 2):

============  =====================================================  =================
pass          cycles per fp32 vector, one worker                     source
============  =====================================================  =================
max           3                                                      [V] MAX float {3,2}
add/mul/sub   3  (1 + 2 load/store)                                  [V] ADD {1,natural}
accumulate    1  (loads pipelined into an add, no store)             [U]
exp           10 (6 + 4)                                             [V] EXP float {6,2}
log           16 (12 + 4)                                            [V] LOG float
tanh          16 (12 + 4)                                            [V] TANH float
sigmoid       14 (10 + 4)                                            [V] SIGMOID float
divide        10 per row (one reciprocal, then multiplies)           [V] DIVIDE float
rsqrt         8 per row                                              [V] RSQRT float
half I/O      +1 per 4 halves read or written (f16v4 <-> f32v2 cvt)  [U]
============  =====================================================  =================

plus :data:`VERTEX_CYCLES` per vertex and :data:`ROW_CYCLES` per row (loop set-up) [U].
MultiVertex estimates follow popops' UnaryOp1D shape ``W x (fixed + inner(ceil(n / W))) + 20``.
"""

from softipu.codelets.nn import _common
from softipu.codelets.nn import activations as _activations
from softipu.codelets.nn import losses as _losses
from softipu.codelets.nn import norms as _norms
from softipu.codelets.nn import pooling as _pooling
from softipu.codelets.nn import softmax as _softmax
from softipu.codelets.nn._common import *  # noqa: F403
from softipu.codelets.nn._common import (  # noqa: F401 - public constants of the former single module
    C_ACC,
    C_ADD,
    C_DIVIDE,
    C_EXP,
    C_LOG,
    C_MAX,
    C_RSQRT,
    C_SIGMOID,
    C_TANH,
    ROW_CYCLES,
    VERTEX_CYCLES,
)
from softipu.codelets.nn.activations import *  # noqa: F403
from softipu.codelets.nn.losses import *  # noqa: F403
from softipu.codelets.nn.norms import *  # noqa: F403
from softipu.codelets.nn.pooling import *  # noqa: F403
from softipu.codelets.nn.softmax import *  # noqa: F403

# NOTE: the section modules are reached as softipu.codelets.nn.<section>; every name the single
# module had is still importable from here.
__all__ = [
    *_activations.__all__,
    *_softmax.__all__,
    *_norms.__all__,
    *_pooling.__all__,
    *_losses.__all__,
    *_common.__all__,
]
