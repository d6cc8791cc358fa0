"""Stochastic rounding as a device mode (engine options ``prng.enableStochasticRounding`` and
``prng.seed``, Poplar's names; PopTorch's ``Precision.enableStochasticRounding``).

On the IPU stochastic rounding is a mode of the tiles' floating-point units, on for the whole
program: a float32 -> float16 conversion then rounds up or down with probability proportional
to the distance, from the hardware PRNG. softipu applies it to every float32 -> float16 cast
vertex (``popops::cast``, softipu's ``Cast1D``/``Cast2D`` codelets with a full-length input):
after such a compute set has run, the engine rounds each cast's output again from its float32
input with :func:`softipu.codelets.elementwise.stochastic_round_to_half` (unbiased: the
expected result is the float32 value) keyed by

* the engine's ``prng.seed`` and the number of compute sets the engine has executed so far
  (:func:`step_seed`): a fresh draw every step, the same sequence for the same seed in every
  run, process and host thread count;
* the replica and the **storage address** of the output element.

It runs on storage outside the codelets, the same code for the fast engine and the reference
interpreter, so the two stay bitwise equal. Casts already asked for stochastic rounding by the
op (``cast(..., options={"stochasticRounding": True})``, keyed by the op's own seed) keep theirs.
Not covered (they still round to nearest): float16 results of fused maps and of fp16
arithmetic, and the float16 outputs of matmul/convolution partials.
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
    return (codelet.__module__ == "softipu.codelets.elementwise" and codelet.__name__.startswith("Cast")
            and set(fields) == {"x", "out"} and fields["x"].direction is Direction.INPUT
            and fields["x"].dtype is float32 and fields["out"].direction is Direction.OUTPUT
            and fields["out"].dtype is float16)


def _casts(executable: Executable, replicas: int) -> dict[int, list[tuple[Any, Any, np.ndarray]]]:
    """Per compute set: (input tensor, output tensor, element keys) of each plain cast group."""
    shift = (np.arange(replicas, dtype=np.int64) << REPLICA_SHIFT)[:, None, None]
    found: dict[int, list[tuple[Any, Any, np.ndarray]]] = {}
    for cs_id, compiled in executable.compute_sets.items():
        for group in compiled.groups:
            if not _is_plain_cast(group.codelet):
                continue
            x, out = group.fields["x"], group.fields["out"]
            if x.shape != out.shape or not out.numel:
                continue  # a broadcast input (a row or column per block): not covered
            found.setdefault(cs_id, []).append((x, out, out.addresses()[None] + shift))
    return found


class StochasticRounding:
    """Interpreter mixin: rounds the outputs of float32 -> float16 casts stochastically after
    each compute set (see the module docstring). Made by :func:`with_stochastic_rounding`."""

    seed: int = 0

    def __init__(self, executable: Executable, storage: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(executable, storage, *args, **kwargs)
        self._sr_casts = _casts(executable, storage.replicas)
        self._sr_steps = 0

    def execute(self, compute_set_id: int) -> None:
        super().execute(compute_set_id)
        self._sr_steps += 1
        casts = self._sr_casts.get(compute_set_id)
        if not casts:
            return
        key = step_seed(self.seed, self._sr_steps)
        storage = self.storage
        for x, out, index in casts:
            values = storage.gather(x, replica_axis=True)
            storage.scatter(out, stochastic_round_to_half(values, key, index), replica_axis=True)


def with_stochastic_rounding(interpreter: type, seed: int) -> type:
    """``interpreter`` (the fast engine's or the reference's class) with stochastic rounding."""
    return type(f"StochasticRounding{interpreter.__name__}", (StochasticRounding, interpreter),
                {"seed": int(seed), "__module__": __name__})
