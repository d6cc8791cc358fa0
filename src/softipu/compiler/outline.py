"""Outlining: the code of a repeated layer held once, as PopART's outliner makes it.

PopART (and PopTorch, which compiles through it) outlines by default (``SessionOptions.
enableOutlining`` is true, ipu-facts-scale.md): sequences of ops that repeat with the same
shapes, attributes and placement (a transformer's layers) become one subgraph, and each
occurrence is a ``CallOp`` of it. In Poplar the subgraph is one function: its compute sets, their
vertex state and their exchange code exist once on each tile however many times it is called.
What a call costs instead is its inputs: ``CallOpx`` copies each CallOp input into the subgraph's
own input tensor before the call (graphcore/popart ``willow/include/popart/popx/op/callx.hpp``:
"Copy CallOp inputs to Graph input tensors"), so a layer's weights are copied, on tile (the
subgraph's tensor is laid out by the same creator), into tensors that hold one layer's worth.

softipu builds every layer separately, so the model finds the outlined code from the structure:
two compute sets with equal layout and work keys (``softipu.compiler.structure``: the same
codelets on the same tiles, fields of the same shapes at the same offsets in variables of the
same sizes, the same params; the variables' own tile mappings may differ, as the call copies
its inputs into the subgraph's tensors) are the same subgraph compute set, and two copies with
equal copy keys the same subgraph copy. With the engine option ``opt.enableOutlining``:

* the exchange code of each such compute set or copy is counted once (its first occurrence);
* vertex state of each such compute set is counted once;
* at every occurrence of an outlined compute set, the always-live (weight) bytes it reads are
  held a second time on their tiles for that step: the subgraph's input copy
  (``compiler.memory`` adds them to the not-always-live peak).

* control code: the steps of an outlined compute set or copy after the first are the
  subgraph's, held once; each call's input copy is a step of its own (one per occurrence of an
  outlined compute set that reads weights).

Not modelled: the on-tile copy cycles of those inputs (one layer's weights at
``Target.on_tile_copy_bytes_per_cycle``: ~1,100 cycles per BERT-base layer, against ~600,000 for
the layer itself), the copies of activation inputs and outputs, and PopART's
``outlineThreshold`` (every repeat is outlined, however small).
"""

from __future__ import annotations

from softipu.compiler.executable import CompiledComputeSet
from softipu.compiler.structure import StructureKeys

__all__ = ["Outline"]


class Outline:
    """Which compute sets and copies share an outlined subgraph's code (held by one pricer)."""

    def __init__(self) -> None:
        self._seen: dict[tuple, int] = {}  # (layout, work) key -> compute sets with it
        self._key_of: dict[int, tuple] = {}  # compute set id -> its key
        self._first: dict[tuple, int] = {}  # key -> the compute set holding its code
        self._copies: set[tuple] = set()

    def first(self, keys: StructureKeys | None, compiled: CompiledComputeSet) -> bool:
        """Whether this compute set (priced once per id) brings its own code: True unless an
        earlier compute set had equal layout and work keys."""
        layout = keys.layout(compiled) if keys is not None else None
        if layout is None:
            return True
        # The subgraph's compute set reads its own input tensors: the callers' variables need the
        # same sizes and fields, not the same tile mapping (a differently mapped input, such as a
        # layer's bias spread from another tile, is exchanged into place by the call's copy).
        (parts, (variables, _)) = layout
        key = (parts, tuple(v[:2] for v in variables), keys.work(compiled))
        count = self._seen.get(key, 0)
        self._seen[key] = count + 1
        self._key_of[compiled.compute_set.id] = key
        if count == 0:
            self._first[key] = compiled.compute_set.id
        return count == 0

    def first_copy(self, key: tuple | None) -> bool:
        """Whether a copy with this copy key (:meth:`StructureKeys.copy`; None: none) brings its own
        exchange code: no earlier copy had the key."""
        if key is None:
            return True
        if key in self._copies:
            return False
        self._copies.add(key)
        return True

    def shares_code(self, cs_id: int) -> bool:
        """A compute set whose code an earlier one holds (not the first of its key)."""
        key = self._key_of.get(cs_id)
        return key is not None and self._first[key] != cs_id

    def called(self, cs_id: int) -> bool:
        """A compute set of an outlined subgraph: its key occurs in two compute sets or more."""
        key = self._key_of.get(cs_id)
        return key is not None and self._seen[key] > 1
