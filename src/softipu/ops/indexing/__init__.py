"""Indexing (popops): gather, scatter(-add), multi-slice/update-add (embeddings), dynamic
slice/update with device-side offsets, sort, top-k, cumsum, pad, one-hot, iota, fill.

Data-dependent ops read their indices **at run time** inside the vertex; the graph (which
vertices exist, what they may read and write) is static:

* **multi_slice / gather** split the table's columns into blocks (the table's own column layout
  when it has one, see :func:`create_slicable_table`); each block's vertex looks up every index
  (split into lookup blocks for parallelism). Out-of-range indices (negative or ``>= rows``)
  give rows of **zeros**.
* **multi_update_add / scatter / scatter_add** update a column block in place, one vertex per
  block; out-of-range indices are **skipped**. Repeated indices all add (``*_add``); for plain
  scatter the last update wins.
* **dynamic_slice / dynamic_update** follow popops' DynamicSlice2d: an offset at or past the end
  of the dimension (or negative) starts at 0, and the rows of the slice wrap around the end
  (``row = (start + j) % size``).

Row-wise ops (sort, top-k, cumsum) give each row to one vertex on the tile that holds the
output row (outputs are mapped in whole rows).

Sections, in ``softipu.ops.indexing.<module>``: ``fills`` (fill, zero, full, zeros, iota, one-hot),
``padding`` (pad, static gathers), ``tables`` (multi-slice/update, slicable tables),
``gather_scatter``, ``dynamic`` (dynamic slice/update) and ``rowwise`` (sort, top-k, cumsum);
``_common`` holds the shared checks and layout helpers.
"""

from softipu.ops.indexing._common import _axis as _axis
from softipu.ops.indexing._common import _dtype as _dtype
from softipu.ops.indexing._common import _fill_value as _fill_value
from softipu.ops.indexing._common import _index_tensor as _index_tensor
from softipu.ops.indexing._common import _int as _int
from softipu.ops.indexing._common import _map_rest as _map_rest
from softipu.ops.indexing._common import _moveaxis as _moveaxis
from softipu.ops.indexing._common import _prod as _prod
from softipu.ops.indexing._common import _rows_view as _rows_view
from softipu.ops.indexing._common import _runs as _runs
from softipu.ops.indexing._common import fill_tensor as fill_tensor
from softipu.ops.indexing.dynamic import _check_offset as _check_offset
from softipu.ops.indexing.dynamic import _dynamic as _dynamic
from softipu.ops.indexing.dynamic import dynamic_slice, dynamic_update
from softipu.ops.indexing.fills import _shape as _shape
from softipu.ops.indexing.fills import fill, full, iota, one_hot, zero, zeros
from softipu.ops.indexing.gather_scatter import _gathered_shape as _gathered_shape
from softipu.ops.indexing.gather_scatter import _scatter as _scatter
from softipu.ops.indexing.gather_scatter import gather, scatter, scatter_add
from softipu.ops.indexing.padding import PadMode, pad
from softipu.ops.indexing.padding import static_gather as static_gather
from softipu.ops.indexing.rowwise import _row_op as _row_op
from softipu.ops.indexing.rowwise import _sort_args as _sort_args
from softipu.ops.indexing.rowwise import cumsum, sort, sort_with_indices, top_k
from softipu.ops.indexing.tables import _check_table as _check_table
from softipu.ops.indexing.tables import _check_updates as _check_updates
from softipu.ops.indexing.tables import _column_blocks as _column_blocks
from softipu.ops.indexing.tables import _column_major as _column_major
from softipu.ops.indexing.tables import _slice_rows as _slice_rows
from softipu.ops.indexing.tables import _table_blocks as _table_blocks
from softipu.ops.indexing.tables import _update_rows as _update_rows
from softipu.ops.indexing.tables import create_slicable_like as create_slicable_like
from softipu.ops.indexing.tables import create_slicable_table, multi_slice, multi_update_add, plan_table_split

__all__ = ["fill", "zero", "full", "zeros", "iota", "pad", "PadMode", "one_hot", "gather",
           "scatter", "scatter_add", "multi_slice", "multi_update_add", "create_slicable_table",
           "create_slicable_like", "plan_table_split",
           "dynamic_slice", "dynamic_update", "sort", "sort_with_indices", "top_k", "cumsum"]

