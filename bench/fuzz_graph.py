"""Fuzz campaign for the graph API (issue 18): seeded random sequences of valid and invalid calls
— variables and constants, tile mappings, views (slices, reshapes, transposes, broadcasts,
concatenations), compute sets, vertices and their fields, programs, host streams, an Engine and its
runs, reads and writes — each of which must either work or raise a ``SoftIPUError`` that names the
user's line, never a numpy or Python error from inside softipu, and never hang.

Each input is a fresh small graph (1-4 tiles, 1 or 2 replicas) and 2-14 calls drawn from a menu;
a few percent of the arguments are "odd" (negative, huge, wrong type, NaN, another graph's tensor,
a ragged list...), and shapes, indices and mappings are often out of range. Most inputs end by
compiling and running every program. The input stops at its first exception. Outcomes are
counted as

* ``ok`` (every call worked, including the engine's runs),
* ``softipu`` (a SoftIPUError whose message names a line of this file: the user's line),
* ``no_line`` (a SoftIPUError whose message names no line of this file),
* ``python`` (a builtin error raised by Python at the call itself, e.g. a missing argument: the
  innermost frame is this file's),
* ``other`` (any other exception raised inside softipu: a bug),
* ``hang`` (over the time bound).

One JSON line with the counts and the first few reproducers of each bad kind. An input is rerun
alone with ``--seed S --first I --count 1 --verbose`` (which prints the calls and the traceback).

    .venv/bin/python bench/fuzz_graph.py --count 100000 --seconds 3600 --seed 0
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import random
import sys
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

import softipu as sp
from softipu import program as P
from softipu.errors import SoftIPUError

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _fuzz_common import Timeout, alarm_handler, bounded, campaign_parser  # noqa: E402

HERE = Path(__file__).resolve()
PACKAGE = Path(sp.__file__).resolve().parent
BAD = ("other", "hang", "no_line")
DTYPES = (sp.float32, sp.float16, sp.int32, sp.bool_)


# -- codelets the vertices use -------------------------------------------------------------------
class AddOne(sp.Vertex):
    x = sp.Input(sp.float32)
    y = sp.Output(sp.float32)

    @staticmethod
    def compute(x, y):
        y[...] = x + 1


class Scale(sp.Vertex):
    x = sp.Input(sp.float32)
    factor = sp.Param(sp.float32)
    y = sp.Output(sp.float32)

    @staticmethod
    def compute(x, factor, y):
        y[...] = x * factor


class Accumulate(sp.Vertex):
    acc = sp.InOut(sp.float32)
    x = sp.Input(sp.float32)

    @staticmethod
    def compute(acc, x):
        acc += x


class Total(sp.Vertex):
    x = sp.Input(sp.float32)
    total = sp.Output(sp.float32, sp.SCALAR)

    @staticmethod
    def compute(x, total):
        total[...] = x.sum(axis=-1, keepdims=True)


class Count(sp.Vertex):
    count = sp.InOut(sp.int32, sp.SCALAR)
    step = sp.Param(sp.int32)

    @staticmethod
    def compute(count, step):
        count += step


CODELETS = (AddOne, Scale, Accumulate, Total, Count)


# -- the state of one input ----------------------------------------------------------------------
class Case:
    """One input: a graph and what the calls made on it so far."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.replicas = rng.choice((1, 1, 1, 2))
        self.graph = sp.Graph(sp.targets.ipu_model(tiles=rng.choice((1, 2, 4)), bytes_per_tile=32 * 1024),
                              replication_factor=self.replicas)
        self.tensors: list[Any] = []
        self.compute_sets: list[Any] = []
        self.streams: list[Any] = []
        self.programs: list[Any] = []
        self.roots: list[Any] = []  # every variable made
        self.engine: Any = None
        for dtype, shape in ((sp.float32, (8,)), (sp.float32, (8,)), (sp.int32, (1,))):
            t = self.graph.add_variable(dtype, shape, "seed")
            self.tensors.append(t)
            self.roots.append(t)

    # -- arguments -------------------------------------------------------------------------------
    def odd(self) -> Any:
        """A value that is wrong almost everywhere."""
        other = sp.Graph(sp.targets.ipu_model(tiles=1)).add_variable(sp.float32, (2,), "alien")
        return self.rng.choice((-1, -(2**40), 2**31, 2**63, 10**30, 1.5, math.nan, math.inf, "x", None, (),
                                [1, [2]], (2, -3), np.int64(3), np.array([1, 2]), True, object(), other,
                                b"\x00", slice(None), {1: 2}))

    def maybe(self, value: Any, p: float = 0.06) -> Any:
        return self.odd() if self.rng.random() < p else value

    def shape(self) -> Any:
        rng = self.rng
        return self.maybe(tuple(rng.choice((1, 2, 3, 4, 6, 8)) for _ in range(rng.randint(0, 3))))

    def tensor(self) -> Any:
        if not self.tensors or self.rng.random() < 0.02:
            return self.odd()
        return self.rng.choice(self.tensors)

    def vector(self, dtype: Any = sp.float32, n: int | None = None) -> Any:
        """A mapped 1-D variable of ``dtype`` (of ``n`` elements where given), new or made before."""
        found = [t for t in self.tensors if isinstance(t, sp.Tensor) and t.dtype == dtype and t.ndim == 1
                 and t.numel > 0 and (n is None or t.numel == n)]
        if found and self.rng.random() < 0.5:
            return self.rng.choice(found)
        t = self.graph.add_variable(dtype, (n or self.rng.choice((1, 2, 4, 8)),), "f")
        self.graph.set_tile_mapping(t, self.rng.randrange(self.graph.target.num_tiles))
        self.tensors.append(t)
        return t

    def tile(self) -> Any:
        return self.maybe(self.rng.randrange(self.graph.target.num_tiles), 0.1)

    def index(self, size: int) -> Any:
        rng = self.rng
        kind = rng.randrange(6)
        if kind == 0:
            return rng.randint(-size - 1, size)
        if kind == 1:
            return slice(rng.choice((None, rng.randint(-size - 1, size + 1))),
                         rng.choice((None, rng.randint(-size - 1, size + 1))),
                         rng.choice((None, None, 1, 2, -1, -2, 0)))
        if kind == 2:
            return [rng.randint(-size, max(size, 1)) for _ in range(rng.randint(0, 3))]
        if kind == 3:
            return rng.choice((None, Ellipsis))
        if kind == 4:
            return np.array([rng.random() < 0.5 for _ in range(size)])
        return self.odd()


# -- the calls -----------------------------------------------------------------------------------
def add_variable(c: Case) -> None:
    t = c.graph.add_variable(c.maybe(c.rng.choice(DTYPES), 0.05), c.shape(), name=c.maybe("v", 0.05))
    c.tensors.append(t)
    c.roots.append(t)


def add_constant(c: Case) -> None:
    shape = c.shape()
    dtype = c.maybe(c.rng.choice(DTYPES), 0.05)
    values = c.rng.choice((1.5, 0, -(2**40), math.nan, "x", np.arange(3), np.ones(shape) if isinstance(
        shape, tuple) and all(isinstance(d, int) and 0 <= d < 64 for d in shape) else 1, [[1, 2], [3]]))
    c.tensors.append(c.graph.add_constant(dtype, shape, values, name="k"))
    c.roots.append(c.tensors[-1])


def set_mapping(c: Case) -> None:
    t, rng, g = c.tensor(), c.rng, c.graph
    kind = rng.randrange(4)
    if kind == 0:
        g.set_tile_mapping(t, c.tile())
    elif kind == 1:
        sp.ops.map_linearly(g, t, grain_size=c.maybe(rng.choice((1, 2, 4)), 0.1))
    elif kind == 2:
        n = getattr(t, "numel", 4)
        cut = rng.randint(-1, n + 1)
        g.map_intervals(t, c.maybe([0, cut]), c.maybe([cut, n]), [c.tile(), c.tile()])
    else:
        rows = getattr(t, "shape", (2,))[:1] or (1,)
        g.set_tile_mappings(t, c.maybe([c.tile() for _ in range(min(rows[0], 64))], 0.2))


def view(c: Case) -> None:
    t, rng = c.tensor(), c.rng
    if not isinstance(t, sp.Tensor):
        return
    shape = getattr(t, "shape", (1,))
    kind = rng.randrange(9)
    if kind == 0:
        key = tuple(c.index(shape[i] if i < len(shape) else 2) for i in range(rng.randint(1, len(shape) + 1)))
        v = t[key if len(key) > 1 else key[0]]
    elif kind == 1:
        n = getattr(t, "numel", 1)
        v = t.reshape(c.maybe(rng.choice(((n,), (1, n), (-1,), (n, -1), (2, -1), (n + 1,), (-1, -1)))))
    elif kind == 2:
        perm = list(range(len(shape)))
        rng.shuffle(perm)
        v = t.transpose(c.maybe(perm))
    elif kind == 3:
        v = t.broadcast(c.maybe((rng.choice((1, 2, 3)), *shape)))
    elif kind == 4:
        v = t.reverse(c.maybe(rng.randint(-1, len(shape))))
    elif kind == 5:
        v = t.subsample(c.maybe(rng.choice((1, 2, 3, 0))), c.maybe(rng.randint(0, max(len(shape) - 1, 0))))
    elif kind == 6:
        v = t.squeeze(c.maybe(rng.choice((None, 0, len(shape)))))
    elif kind == 7:
        v = t.expand_dims(c.maybe(rng.randint(-len(shape) - 1, len(shape) + 1)))
    else:
        v = sp.concat([c.tensor() for _ in range(rng.randint(0, 3))], axis=c.maybe(0))
    c.tensors.append(v)


def add_vertex(c: Case) -> None:
    rng, g = c.rng, c.graph
    if not c.compute_sets or rng.random() < 0.2:
        c.compute_sets.append(g.add_compute_set(c.maybe("cs", 0.05)))
    cs = c.maybe(rng.choice(c.compute_sets), 0.05)
    codelet = c.maybe(rng.choice(CODELETS), 0.05)
    names = [k for k in ("x", "y", "acc", "total", "count", "factor", "step") if hasattr(codelet, k)]
    fields: dict[Any, Any] = {}
    if rng.random() < 0.6:  # well formed (the compiler still refuses overlapping writes)
        _good_fields(c, codelet, fields)
        names = []
    for name in names:
        if rng.random() < 0.9:
            value = rng.choice((1.5, 2, -1)) if name in ("factor", "step") else c.tensor()
            fields[name] = c.maybe(value, 0.05)
    if rng.random() < 0.05:
        fields["nosuch"] = c.tensor()
    ref = g.add_vertex(cs, codelet, fields, tile=c.tile())
    if rng.random() < 0.1:
        g.connect(ref, rng.choice(names + ["nosuch"]), c.tensor())


def _good_fields(c: Case, codelet: Any, fields: dict[str, Any]) -> None:
    n = c.rng.choice((1, 2, 4, 8))
    for name in ("x", "y", "acc"):
        if hasattr(codelet, name):
            fields[name] = c.vector(n=n)
    if hasattr(codelet, "total"):
        fields["total"] = c.vector(n=1)
    if hasattr(codelet, "count"):
        fields["count"] = c.vector(sp.int32, 1)
    for name in ("factor", "step"):
        if hasattr(codelet, name):
            fields[name] = 2


def add_stream(c: Case) -> None:
    rng, g = c.rng, c.graph
    make = rng.choice((g.add_host_to_device_fifo, g.add_device_to_host_fifo))
    name = c.maybe(f"s{len(c.streams) % 3}", 0.05)  # names repeat: duplicates are errors
    c.streams.append(make(name, c.maybe(rng.choice(DTYPES), 0.05), c.maybe(rng.choice((1, 2, 4, 8, 0)), 0.1)))


def _endpoint(c: Case) -> Any:
    if c.streams and c.rng.random() < 0.3:
        return c.rng.choice(c.streams)
    return c.tensor()


def add_program(c: Case) -> None:
    rng = c.rng
    kids = c.programs or [P.Sequence()]
    kind = rng.randrange(9)
    if kind == 0:
        p = P.Copy(_endpoint(c), _endpoint(c))
    elif kind == 1:
        p = P.Execute(c.maybe(rng.choice(c.compute_sets) if c.compute_sets else c.odd(), 0.05))
    elif kind == 2:
        # Counts 0..2 (nested Repeats run 2**depth times) or invalid: a valid huge count is a
        # program that legitimately runs for ages.
        count = rng.randint(0, 2) if rng.random() < 0.9 else rng.choice((-1, 1.5, "x", None, 2**32, 2**70))
        p = P.Repeat(count, c.maybe(rng.choice(kids), 0.05))
    elif kind == 3:
        p = P.If(c.maybe(c.vector(rng.choice(DTYPES[2:]), 1), 0.2), rng.choice(kids),
                 c.maybe(rng.choice(kids + [None]), 0.05))
    elif kind == 4:
        cases = c.maybe({rng.randint(-1, 2): rng.choice(kids)}, 0.1)
        p = P.Switch(c.maybe(c.vector(sp.int32, 1), 0.2), cases, rng.choice(kids + [None]))
    elif kind == 5:
        p = P.WriteUndef(c.tensor())
    elif kind == 6:
        p = P.Call(c.graph.add_function(c.maybe(rng.choice(kids), 0.05)))
    elif kind == 7:
        p = P.PrintTensor(c.maybe("t", 0.05), c.tensor()) if rng.random() < 0.5 else P.Sync()
    else:
        p = P.Sequence([c.maybe(rng.choice(kids), 0.05) for _ in range(rng.randint(0, 3))])
    c.programs.append(p)


def make_engine(c: Case) -> None:
    rng = c.rng
    if rng.random() < 0.85:  # map what no call mapped, element by element
        for t in c.roots:
            if t.numel > 4096:  # a huge variable stays unmapped: the compiler says so
                continue
            unmapped = np.flatnonzero(c.graph.tile_of(t).reshape(-1) < 0)
            c.graph.map_intervals(t, unmapped, unmapped + 1, np.zeros_like(unmapped))
    options = rng.choice(({}, {}, {}, {}, {"engine.reference": True}, {"debug.poisonUnwritten": True},
                          {"debug.floatingPointExceptions": True}, {"engine.reference": True}))
    options = c.maybe(options, 0.03)
    programs = c.programs[-rng.randint(1, 3):] if c.programs else [c.maybe(P.Sequence(), 0.3)]
    c.engine = sp.Engine(c.graph, c.maybe(programs, 0.03), options=options,
                         estimate_only=rng.random() < 0.1)


def use_engine(c: Case) -> None:
    if c.engine is None:
        make_engine(c)
    rng, eng = c.rng, c.engine
    kind = rng.randrange(4)
    if kind == 0:
        eng.run(c.maybe(rng.randrange(eng.num_programs), 0.1))
    elif kind == 1:
        t = c.tensor()
        shape = getattr(t, "shape", (2,))
        values = rng.choice((np.ones(shape), np.full(shape, 2**40), np.full(shape, np.nan), np.zeros(3),
                             "x", np.ones(shape, dtype=np.complex64), np.ones((c.replicas, *shape))))
        eng.write_tensor(t, values)
    elif kind == 2:
        eng.read_tensor(c.tensor())
    else:
        stream = rng.choice(c.streams) if c.streams else c.odd()
        n = getattr(stream, "num_elements", 2)
        data = rng.choice((np.zeros(n, np.float32), np.zeros((3, n), np.float32), np.zeros(n + 1),
                           lambda buf: None, lambda buf: 1 / 0, "x", np.zeros(n, np.int64) + 2**40))
        eng.connect_stream(c.maybe(getattr(stream, "name", "s"), 0.1), data)


CALLS = ((add_variable, 4), (add_constant, 1), (set_mapping, 4), (view, 4), (add_vertex, 3),
         (add_stream, 1), (add_program, 3), (make_engine, 1), (use_engine, 3))


def _finish(c: Case) -> None:
    """End most inputs by compiling (when no call did) and running every program: most calls
    only reach the compiler and the engine this way."""
    if c.engine is None:
        make_engine(c)
    for i in range(c.engine.num_programs):
        c.engine.run(i)


# -- the campaign --------------------------------------------------------------------------------
def _inside_softipu(exc: BaseException) -> bool:
    """Whether softipu's code was running when ``exc`` was raised (an error Python raises at the
    call itself, such as a missing argument, has no softipu frame)."""
    frames = traceback.extract_tb(exc.__traceback__)
    return any(Path(f.filename).resolve().is_relative_to(PACKAGE) for f in frames)


def run_one(rng: random.Random, limit: float, verbose: bool = False) -> tuple[str, list[str], str]:
    """(outcome, calls, detail) of one input."""
    funcs, weights = zip(*CALLS, strict=True)
    calls: list[str] = []

    def body() -> None:
        c = Case(rng)
        for _ in range(rng.randint(2, 14)):
            call = rng.choices(funcs, weights)[0]
            calls.append(call.__name__)
            call(c)
        if rng.random() < 0.7:
            calls.append("finish")
            _finish(c)

    _, exc, hang = bounded(body, limit)
    if exc is None or isinstance(exc, Timeout):
        outcome, detail = "ok", ""
    elif isinstance(exc, SoftIPUError):
        outcome = "softipu" if f"{HERE.name}:" in str(exc) else "no_line"
        detail = f"{type(exc).__name__}: {str(exc)[:240]}"
    else:
        outcome = "other" if _inside_softipu(exc) else "python"
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        detail = f"{type(exc).__name__}: {str(exc)[:200]} [{Path(frame.filename).name}:{frame.lineno}]"
    if verbose and exc is not None and not isinstance(exc, Timeout):
        traceback.print_exception(exc)
    if hang:
        outcome, detail = "hang", f"over {limit} CPU s ({outcome}: {detail})"
    return outcome, calls, detail


def campaign(count: int, seconds: float, seed: int, limit: float = 5.0, first: int = 0,
             verbose: bool = False) -> dict[str, Any]:
    """Run up to ``count`` inputs for at most ``seconds``; the counts and a few reproducers."""
    import logging
    import warnings

    logging.getLogger("softipu").setLevel(logging.ERROR)
    counts: Counter = Counter()
    details: Counter = Counter()
    examples: list[dict[str, Any]] = []
    end = time.monotonic() + seconds
    tried = first
    printed = io.StringIO()  # what PrintTensor programs print: the JSON line stays alone on stdout
    with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stdout if verbose else printed), \
            alarm_handler():
        warnings.simplefilter("ignore")
        while tried < first + count and time.monotonic() < end:
            rng = random.Random(f"{seed}-{tried}")  # each input reproducible alone: --seed S --first I
            outcome, calls, detail = run_one(rng, limit, verbose)
            counts[outcome] += 1
            if outcome in BAD or outcome == "python":
                details[f"{outcome}: {detail[:90]}"] += 1
            if verbose:
                print(tried, outcome, calls, detail)
            if outcome in BAD and sum(e["outcome"] == outcome for e in examples) < 5:
                examples.append({"outcome": outcome, "calls": calls, "detail": detail, "input": tried})
            tried += 1
            printed.seek(0)
            printed.truncate()
    return {"bench": "fuzz_graph", "seed": seed, "tried": tried - first, "ok": counts["ok"],
            "softipu_errors": counts["softipu"], "softipu_errors_without_line": counts["no_line"],
            "python_call_errors": counts["python"], "other_exceptions": counts["other"],
            "hangs": counts["hang"], "top_bad": dict(details.most_common(12)), "examples": examples}


def main(argv: list[str] | None = None) -> int:
    parser = campaign_parser(__doc__)
    parser.add_argument("--verbose", action="store_true", help="print each input's calls and tracebacks")
    args = parser.parse_args(argv)
    result = campaign(args.count, args.seconds, args.seed, args.limit, args.first, args.verbose)
    print(json.dumps(result))
    return 1 if any(result[k] for k in ("other_exceptions", "hangs")) else 0


if __name__ == "__main__":
    sys.exit(main())
