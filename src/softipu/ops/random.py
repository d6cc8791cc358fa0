"""Random numbers (poprand): uniform, normal, truncated normal, bernoulli, dropout.

Values come from a counter-based generator (Philox4x32-10, see codelets/random.py) keyed by the
seed and each element's index in the output, so:

* the same seed gives **bitwise the same tensor** whatever the target's tile count, the output's
  tile mapping, or how the engine batches vertices;
* different elements — on one tile or on different tiles — never share a random stream;
* different seeds, or different ``seed_modifier`` values with one seed, give independent tensors.

**Seeds.** ``seed`` is either an int (a 64-bit constant baked into the graph) or a device tensor
of two ``uint32`` words ``[low, high]`` read at run time, like poprand's seed tensor: write a new
seed between runs to draw new numbers without recompiling. ``seed_modifier`` (a uint32) tells
apart several random ops that share one seed (poprand's ``seedModifier``).

Ops without a data input take the output's ``shape`` and ``dtype`` (mapped linearly), or a
``reference`` tensor whose shape and tile mapping the output copies (poprand's ``reference``).
"""

from __future__ import annotations

import operator
from typing import Any

import numpy as np

from softipu.codelets.random import Distribution, dropout_codelet, random_codelet
from softipu.dtypes import DType, as_dtype, float32, uint32
from softipu.errors import DTypeError
from softipu.graph.graph import Graph
from softipu.graph.tensor import Tensor
from softipu.ops.common import OpContext, parse_options, rows_of, tile_regions

__all__ = ["uniform", "normal", "truncated_normal", "bernoulli", "dropout", "seed_tensor"]

# Elements per vertex at most, so one tile's work spreads over several vertices and workers.
MAX_ELEMENTS_PER_VERTEX = 16 * 1024


def seed_tensor(graph: Graph, value: int | None = None, name: str = "seed", tile: int = 0) -> Tensor:
    """A ``(2,)`` uint32 seed tensor ``[low, high]`` on ``tile``; a constant when ``value`` is given.

    >>> import softipu as sp
    >>> g = sp.Graph(sp.targets.ipu_model(tiles=2))
    >>> s = seed_tensor(g); s.shape, s.dtype
    ((2,), sp.uint32)
    """
    if value is None:
        t = graph.add_variable(uint32, (2,), name=name)
    else:
        t = graph.add_constant(uint32, (2,), _seed_words(int(value)), name=name)
    graph.set_tile_mapping(t, tile)
    return t


def _seed_words(value: int) -> np.ndarray:
    value &= (1 << 64) - 1
    return np.array([value & 0xFFFFFFFF, value >> 32], np.uint32)


def _seed(ctx: OpContext, seed: Any) -> Tensor:
    if isinstance(seed, Tensor):
        if seed.graph is not ctx.graph.root:
            raise ctx.error(f"seed tensor {seed.name} belongs to another graph")
        if seed.dtype is not uint32 or seed.numel != 2:
            raise ctx.error(f"a seed tensor holds two uint32 words [low, high]; {seed.name} is "
                            f"{seed.dtype} of shape {seed.shape}")
        return seed.reshape(2)
    try:
        value = operator.index(seed)
    except TypeError:
        raise ctx.error(f"seed must be an int or a (2,) uint32 tensor, got {seed!r}") from None
    return seed_tensor(ctx.graph, value, name=f"{ctx.name}/seed")


def _modifier(ctx: OpContext, modifier: Any) -> int:
    try:
        m = operator.index(modifier)
    except TypeError:
        raise ctx.error(f"seed_modifier must be an int, got {modifier!r}") from None
    if not 0 <= m < 2**32:
        raise ctx.error(f"seed_modifier must fit in a uint32, got {m}")
    return m


def clone_mapping(graph: Graph, out: Tensor, like: Tensor) -> None:
    """Map ``out``'s flattened elements to the tiles of ``like``'s (same element count)."""
    starts, lengths, tiles = tile_regions(graph, like)
    flat = out.reshape(-1)
    for s, n, t in zip(starts.tolist(), lengths.tolist(), tiles.tolist(), strict=True):
        graph.set_tile_mapping(flat[s : s + n], t)


def _output(ctx: OpContext, shape: Any, dtype: Any, reference: Tensor | None) -> Tensor:
    if reference is not None:
        if not isinstance(reference, Tensor) or reference.graph is not ctx.graph.root:
            raise ctx.error(f"reference must be a tensor of this graph, got {reference!r}")
        if shape is not None and tuple(shape) != reference.shape:
            raise ctx.error(f"shape {tuple(shape)} differs from reference {reference.name} "
                            f"{reference.shape}; give one of them")
        out = ctx.graph.add_variable(_dtype(ctx, dtype), reference.shape, name=f"{ctx.name}/out")
        clone_mapping(ctx.graph, out, reference)
        return out
    if shape is None:
        raise ctx.error("give the output's shape (or a reference tensor)")
    try:
        shape = tuple(operator.index(d) for d in (shape if isinstance(shape, (tuple, list)) else (shape,)))
    except TypeError:
        raise ctx.error(f"shape must be ints, got {shape!r}") from None
    if any(d < 0 for d in shape):
        raise ctx.error(f"shape {shape} has a negative dimension")
    return ctx.output(_dtype(ctx, dtype), shape)


def _dtype(ctx: OpContext, dtype: Any) -> DType:
    try:
        return as_dtype(dtype)
    except DTypeError as exc:
        raise ctx.error(str(exc)) from None


def _add_vertices(ctx: OpContext, codelet: type, out: Tensor, seed: Tensor, modifier: int,
                  x: Tensor | None = None) -> None:
    """One vertex per tile-local run of ``out`` (cut to MAX_ELEMENTS_PER_VERTEX), run at once."""
    if out.numel == 0:
        return
    graph = ctx.graph
    cs = ctx.compute_set()
    starts, lengths, tiles = tile_regions(graph, out, MAX_ELEMENTS_PER_VERTEX)
    flat = out.reshape(-1)
    xflat = x.reshape(-1) if x is not None else None
    for n in np.unique(lengths).tolist():
        pick = lengths == n
        v = int(pick.sum())
        fields: dict[str, Any] = {"seed": seed.reshape(1, 2).broadcast((v, 2)),
                                  "out": rows_of(flat, starts[pick], n),
                                  "offset": starts[pick], "modifier": modifier}
        if xflat is not None:
            fields["x"] = rows_of(xflat, starts[pick], n)
        graph.add_vertices(cs, codelet, fields, tiles[pick])
    ctx.execute(cs)


def _random(op: str, dist: Distribution, graph: Graph, prog: Any, shape: Any, dtype: Any,
            a: float, b: float, alpha: float, seed: Any, seed_modifier: Any, reference: Tensor | None,
            name: str, options: dict | None) -> Tensor:
    ctx = OpContext.start(graph, prog, op, name)
    parse_options(ctx, options, {})
    out = _output(ctx, shape, dtype, reference)
    if dist is not Distribution.BERNOULLI and out.dtype.numpy.kind == "b":
        raise ctx.error(f"{op} cannot produce {out.dtype} values")
    if dist in (Distribution.NORMAL, Distribution.TRUNCATED_NORMAL) and not out.dtype.is_float:
        raise ctx.error(f"{op} produces floats; {out.dtype} was asked for")
    codelet = random_codelet(dist, out.dtype, float(a), float(b), float(alpha))
    _add_vertices(ctx, codelet, out, _seed(ctx, seed), _modifier(ctx, seed_modifier))
    return out


def uniform(graph: Graph, prog: Any, *, shape: Any = None, dtype: Any = float32, low: float = 0.0,
            high: float = 1.0, seed: int | Tensor = 0, seed_modifier: int = 0,
            reference: Tensor | None = None, name: str = "", options: dict | None = None) -> Tensor:
    """Uniform samples in ``[low, high)`` (integers: ``low <= v < high``); poprand ``uniform``.

    >>> import softipu as sp
    >>> from softipu import program as P
    >>> from softipu.ops.random import uniform
    >>> g = sp.Graph(sp.targets.ipu_model(tiles=4)); prog = P.Sequence()
    >>> u = uniform(g, prog, shape=(1000,), low=-1.0, high=1.0, seed=7)
    >>> eng = sp.Engine(g, [prog]); eng.run(0); v = eng.read_tensor(u)
    >>> bool(v.min() >= -1.0 and v.max() < 1.0 and abs(v.mean()) < 0.1)
    True
    """
    if not high >= low:
        raise _arg_error(graph, prog, "uniform", name, f"high ({high}) must be >= low ({low})")
    return _random("uniform", Distribution.UNIFORM, graph, prog, shape, dtype, low, high, 0.0, seed,
                   seed_modifier, reference, name, options)


def normal(graph: Graph, prog: Any, *, shape: Any = None, dtype: Any = float32, mean: float = 0.0,
           std: float = 1.0, seed: int | Tensor = 0, seed_modifier: int = 0,
           reference: Tensor | None = None, name: str = "", options: dict | None = None) -> Tensor:
    """Normal samples with ``mean`` and ``std``; poprand ``normal``.

    >>> import softipu as sp
    >>> from softipu import program as P
    >>> from softipu.ops.random import normal
    >>> g = sp.Graph(sp.targets.ipu_model(tiles=4)); prog = P.Sequence()
    >>> z = normal(g, prog, shape=(4000,), mean=3.0, seed=1)
    >>> eng = sp.Engine(g, [prog]); eng.run(0)
    >>> bool(abs(eng.read_tensor(z).mean() - 3.0) < 0.1)
    True
    """
    if not std >= 0:
        raise _arg_error(graph, prog, "normal", name, f"std must be >= 0, got {std}")
    return _random("normal", Distribution.NORMAL, graph, prog, shape, dtype, mean, std, 0.0, seed,
                   seed_modifier, reference, name, options)


def truncated_normal(graph: Graph, prog: Any, *, shape: Any = None, dtype: Any = float32,
                     mean: float = 0.0, std: float = 1.0, alpha: float = 2.0,
                     seed: int | Tensor = 0, seed_modifier: int = 0,
                     reference: Tensor | None = None, name: str = "",
                     options: dict | None = None) -> Tensor:
    """Normal samples conditioned on ``|v - mean| <= alpha * std`` (default ±2 std).

    Out-of-range draws are redrawn (up to 8 Philox draws of 4 candidates each), then replaced by
    a uniform in range — so every value is in range.

    >>> import softipu as sp
    >>> from softipu import program as P
    >>> from softipu.ops.random import truncated_normal
    >>> g = sp.Graph(sp.targets.ipu_model(tiles=4)); prog = P.Sequence()
    >>> t = truncated_normal(g, prog, shape=(1000,), seed=3)
    >>> eng = sp.Engine(g, [prog]); eng.run(0)
    >>> bool(abs(eng.read_tensor(t)).max() <= 2.0)
    True
    """
    if not std >= 0 or not alpha > 0:
        raise _arg_error(graph, prog, "truncated_normal", name,
                       f"std must be >= 0 and alpha > 0, got std={std}, alpha={alpha}")
    return _random("truncated_normal", Distribution.TRUNCATED_NORMAL, graph, prog, shape, dtype,
                   mean, std, alpha, seed, seed_modifier, reference, name, options)


def bernoulli(graph: Graph, prog: Any, *, p: float, shape: Any = None, dtype: Any = float32,
              seed: int | Tensor = 0, seed_modifier: int = 0, reference: Tensor | None = None,
              name: str = "", options: dict | None = None) -> Tensor:
    """1 with probability ``p``, else 0 (in ``dtype``; bool gives True/False); poprand ``bernoulli``.

    >>> import softipu as sp
    >>> from softipu import program as P
    >>> from softipu.ops.random import bernoulli
    >>> g = sp.Graph(sp.targets.ipu_model(tiles=4)); prog = P.Sequence()
    >>> m = bernoulli(g, prog, p=0.25, shape=(4000,), dtype=sp.bool_, seed=5)
    >>> eng = sp.Engine(g, [prog]); eng.run(0)
    >>> bool(abs(eng.read_tensor(m).mean() - 0.25) < 0.03)
    True
    """
    if not 0.0 <= p <= 1.0:
        raise _arg_error(graph, prog, "bernoulli", name, f"p must be in [0, 1], got {p}")
    return _random("bernoulli", Distribution.BERNOULLI, graph, prog, shape, dtype, p, 0.0, 0.0,
                   seed, seed_modifier, reference, name, options)


def dropout(graph: Graph, x: Tensor, prog: Any, *, p: float, seed: int | Tensor = 0,
            seed_modifier: int = 0, name: str = "", options: dict | None = None) -> Tensor:
    """``x * mask / (1 - p)`` with ``mask`` kept with probability ``1 - p``; poprand ``dropout``.

    The output is mapped like ``x``; fp16 inputs are scaled in fp32. The mask depends only on the
    seed, the modifier and the element index, so a backward pass with the same seed drops the
    same elements.

    >>> import numpy as np, softipu as sp
    >>> from softipu import program as P
    >>> from softipu.ops.random import dropout
    >>> g = sp.Graph(sp.targets.ipu_model(tiles=4)); prog = P.Sequence()
    >>> x = g.add_variable(sp.float32, (1000,)); sp.ops.map_linearly(g, x)
    >>> y = dropout(g, x, prog, p=0.5, seed=11)
    >>> eng = sp.Engine(g, [prog]); eng.write_tensor(x, np.ones(1000)); eng.run(0)
    >>> sorted(set(eng.read_tensor(y).tolist()))
    [0.0, 2.0]
    """
    ctx = OpContext.start(graph, prog, "dropout", name, x)
    parse_options(ctx, options, {})
    if not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
        raise ctx.error(f"p must be a number in [0, 1], got {p!r}")
    if not x.dtype.is_float:
        raise ctx.error(f"dropout scales its input; {x.name} is {x.dtype}, not a float type")
    out = graph.add_variable(x.dtype, x.shape, name=f"{ctx.name}/out")
    clone_mapping(graph, out, x)
    _add_vertices(ctx, dropout_codelet(x.dtype, float(p)), out, _seed(ctx, seed),
                  _modifier(ctx, seed_modifier), x)
    return out


def _arg_error(graph: Graph, prog: Any, op: str, name: str, message: str):
    """The op's error for a bad scalar argument (named and located like every op error)."""
    return OpContext.start(graph, prog, op, name).error(message)
