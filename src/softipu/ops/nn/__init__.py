"""popnn: pooling, non-linearities, softmax, norms and losses, each with the backward op a
training step needs.

Layouts (how work lands on tiles):

* **Row ops** (softmax, log-softmax, layer norm, group norm, cross-entropy, NLL) reduce along
  rows. A vertex owns ``k`` *whole* rows and runs on the tile holding the middle of them; the
  outputs are mapped row by row to that tile. A row is never split across tiles, so no row needs
  a cross-tile reduction: where the input's mapping cuts a row, the exchange brings the remote
  part to the row's tile (priced like any exchange). The limit: a row's input and output must
  fit one tile (a 50k-class float32 row pair takes ~400 KB of a GC200 tile's 624 KiB); longer
  rows are not split across tiles, and compiling them fails with the out-of-memory report.
* **Plane ops** (batch norm) give each vertex ``cb`` channels of one sample, or a piece of one
  channel's plane when planes are large; per-channel statistics then need a reduction across
  samples and pieces on many tiles.
* **Pooling** gives each vertex a band of output rows of one ``(n, c)`` plane (its input rows,
  with the window halo, read through the exchange); gradients own bands of input rows.
* **Parameter gradients, batch statistics and reduced losses** use one two-stage reduction
  (:func:`_sum_rows`): per-vertex partial rows are first added on the tile that holds them
  (stage A, only when some tile holds several), then column blocks spread over the tiles add
  the per-tile partials (stage B) — popops' reduce shape, in fp32.

Numerics: float16 inputs are computed with float32 statistics and accumulation.
"""

from softipu.codelets.nn import NonLinearity
from softipu.ops.nn import activations as _activations
from softipu.ops.nn import losses as _losses
from softipu.ops.nn import norms as _norms
from softipu.ops.nn import pooling as _pooling
from softipu.ops.nn import softmax as _softmax
from softipu.ops.nn.activations import *  # noqa: F403
from softipu.ops.nn.losses import *  # noqa: F403
from softipu.ops.nn.norms import *  # noqa: F403
from softipu.ops.nn.pooling import *  # noqa: F403
from softipu.ops.nn.softmax import *  # noqa: F403

# NOTE: ``nn.softmax`` is the op; the section modules are reached as softipu.ops.nn.<section>.
__all__ = [
    "NonLinearity",
    *_activations.__all__,
    *_softmax.__all__,
    *_norms.__all__,
    *_pooling.__all__,
    *_losses.__all__,
]
