"""Stochastic rounding as a device mode (engine options ``prng.enableStochasticRounding`` and
``prng.seed``, Poplar's names; PopTorch's ``Precision.enableStochasticRounding``).

On the IPU stochastic rounding is a mode of the tiles' floating-point units, on for the whole
program: a float32 -> float16 conversion then rounds up or down with probability proportional
to the distance, from the hardware PRNG. softipu applies it to every float32 -> float16 cast
vertex (``popops::cast``, softipu's ``Cast1D``/``Cast2D`` codelets with a full-length input) and
to the float16 outputs of matmul and convolution partials (``ReducePartials<float32,float16>``,
``poplin::ReduceAdd``): after such a compute set has run, the engine rounds each output again
from its float32 value (the cast's input; the partials added in the codelet's order, which
gives the codelet's own float32 sum bit for bit) with
:func:`softipu.codelets.elementwise.stochastic_round_to_half` (unbiased: the expected result is
the float32 value) keyed by

* the engine's ``prng.seed`` and the number of compute sets the engine has executed so far
  (:func:`step_seed`): a fresh draw every step, the same sequence for the same seed in every
  run, process and host thread count;
* the replica and the **storage address** of the output element.

It runs on storage outside the codelets, the same code for the fast engine and the reference
interpreter, so the two stay bitwise equal. Casts already asked for stochastic rounding by the
op (``cast(..., options={"stochasticRounding": True})``, keyed by the op's own seed) keep theirs.
Not covered (they still round to nearest): float16 results of fused maps, of fp16 arithmetic,
of float reductions (``reduce``) and casts of a broadcast input.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from softipu.codelets.elementwise import stochastic_round_to_half
from softipu.compiler.executable import Executable
from softipu.dtypes import float16, float32
from softipu.graph.vertex import Direction

__all__ = ["StochasticRounding", "with_stochastic_rounding", "step_seed", "REPLICA_SHIFT"]

_MASK64 = (1 << 64) - 1
# An element's key is its storage address plus its replica shifted above any address.
REPLICA_SHIFT = 40


def step_seed(seed: int, step: int) -> int:
    """The key of the ``step``-th compute set an engine seeded with ``seed`` executes
    (splitmix64 of both, so neighbouring steps draw unrelated bits)."""
    z = ((seed & _MASK64) ^ ((step * 0x9E3779B97F4A7C15) & _MASK64)) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def _is_plain_cast(codelet: type) -> bool:
    """softipu's float32 -> float16 cast codelet, round-to-nearest form (no ``base``/seed param)."""
    fields = codelet.fields
    return (codelet.__module__.startswith("softipu.codelets.elementwise")
            and codelet.__name__.startswith("Cast") and set(fields) == {"x", "out"}
            and fields["x"].direction is Direction.INPUT
            and fields["x"].dtype is float32 and fields["out"].direction is Direction.OUTPUT
            and fields["out"].dtype is float16)


def _is_half_partials_sum(codelet: type) -> bool:
    """poplin's ReduceAdd from float32 partials to a float16 output (codelets/matmul.py)."""
    fields = codelet.fields
    return (codelet.__module__.startswith("softipu.codelets.matmul")
            and codelet.__name__ == "ReducePartials<float32,float16>"
            and set(fields) == {"partials", "out"} and fields["out"].dtype is float16)


def _sources(group: Any) -> tuple[Any, ...] | None:
    """The float32 tensors whose in-order sum is each output element before rounding, or None."""
    out = group.fields["out"] if "out" in group.fields else None
    if out is None or not out.numel:
        return None
    if _is_plain_cast(group.codelet):
        x = group.fields["x"]
        return (x,) if x.shape == out.shape else None  # a broadcast input: not covered
    if _is_half_partials_sum(group.codelet):
        parts = group.fields["partials"]
        return parts if all(p.shape == out.shape for p in parts) else None
    return None


def _roundings(executable: Executable, replicas: int) -> dict[int, list[tuple[tuple, Any, np.ndarray]]]:
    """Per compute set: (float32 sources, float16 output, element keys) of each covered group."""
    shift = (np.arange(replicas, dtype=np.int64) << REPLICA_SHIFT)[:, None, None]
    found: dict[int, list[tuple[tuple, Any, np.ndarray]]] = {}
    for cs_id, compiled in executable.compute_sets.items():
        for group in compiled.groups:
            sources = _sources(group)
            if sources:
                out = group.fields["out"]
                found.setdefault(cs_id, []).append((sources, out, out.addresses()[None] + shift))
    return found


def _float32_value(storage: Any, sources: tuple) -> np.ndarray:
    """The sources added in order in float32 (ReducePartials' arithmetic; one source: itself)."""
    acc = storage.gather(sources[0], replica_axis=True)
    if len(sources) > 1:
        acc = np.add(acc, storage.gather(sources[1], replica_axis=True), dtype=np.float32)
        for t in sources[2:]:
            np.add(acc, storage.gather(t, replica_axis=True), out=acc, dtype=np.float32)
    return acc


class StochasticRounding:
    """Interpreter mixin: rounds the float16 outputs of casts and partials sums stochastically
    after each compute set (see the module docstring). Made by :func:`with_stochastic_rounding`."""

    seed: int = 0

    def __init__(self, executable: Executable, storage: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(executable, storage, *args, **kwargs)
        self._sr_outputs = _roundings(executable, storage.replicas)
        self._sr_steps = 0

    def execute(self, compute_set_id: int) -> None:
        super().execute(compute_set_id)
        self._sr_steps += 1
        outputs = self._sr_outputs.get(compute_set_id)
        if not outputs:
            return
        key = step_seed(self.seed, self._sr_steps)
        storage = self.storage
        for sources, out, index in outputs:
            values = _float32_value(storage, sources)
            storage.scatter(out, stochastic_round_to_half(values, key, index), replica_axis=True)


def with_stochastic_rounding(interpreter: type, seed: int) -> type:
    """``interpreter`` (the fast engine's or the reference's class) with stochastic rounding."""
    return type(f"StochasticRounding{interpreter.__name__}", (StochasticRounding, interpreter),
                {"seed": int(seed), "__module__": __name__})
