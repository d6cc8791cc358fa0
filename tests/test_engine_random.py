"""The fast engine against the reference engine on random graphs, and both against numpy.

Random graphs: a few float32 / int32 / float16 variables with random tile mappings; compute sets
whose vertices (six codelets per dtype: elementwise, in-place InOut, scalar reduction, scalar
input, vector lists, Param) take their fields as slices, strided, reversed, transposed, broadcast,
fancy-indexed and concatenated views; vertices added one at a time (shuffled, some connected
later) and in bulk; programs of Sequence / Repeat / Copy / Call; replication factor 1 or 2 with
different data per replica. Each compute set splits the variables into read-only and written ones,
so vertices never write an element twice nor read what another writes. The fast engine (with
chunk sizes small enough to split groups) and the reference engine must end bitwise equal.
Contractions (library matmuls, whose AMP products the fast engine merges, and float sums) on
random shapes and mappings must agree within the written rounding bound
(:func:`softipu.codelets._common.contraction_bound`) and give the same bits run after run.

Every generated view is also checked against the same view taken of a numpy array of addresses,
so the generator's idea of which elements a field touches is independent of softipu's.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

import softipu as sp
import softipu.engine.fast as fast_engine
from codelets_for_tests import family, sequential_sum
from softipu import program as P
from softipu.codelets._common import contraction_bound
from softipu.ops.common import OpError

DTYPES = (sp.float32, sp.int32, sp.float16)


# -- views of a tensor and of its address model, side by side --------------------------------
@dataclass(frozen=True)
class View:
    """A softipu tensor and a numpy array of the addresses it should hold, built by the same ops."""

    t: sp.Tensor
    m: np.ndarray

    def __getitem__(self, key) -> View:
        return View(self.t[key], self.m[key])

    @property
    def T(self) -> View:  # noqa: N802
        return View(self.t.T, self.m.T)

    def reverse(self, axis: int) -> View:
        return View(self.t.reverse(axis), np.flip(self.m, axis))

    def reshape(self, *shape: int) -> View:
        return View(self.t.reshape(*shape), self.m.reshape(*shape))

    def flatten(self) -> View:
        return View(self.t.flatten(), self.m.reshape(-1))

    def broadcast(self, shape: tuple[int, ...]) -> View:
        return View(self.t.broadcast(shape), np.broadcast_to(self.m, shape))


def concat(views: list[View], axis: int = 0) -> View:
    return View(sp.concat([v.t for v in views], axis), np.concatenate([v.m for v in views], axis))


@dataclass
class Var:
    view: View  # the whole variable, 2-D
    dtype: sp.DType
    name: str
    constant: bool = False  # made with add_constant: only ever read

    @property
    def shape(self) -> tuple[int, int]:
        return self.view.m.shape


@dataclass
class Roles:
    """Which variables a compute set reads and writes, and the elements already written."""

    read: dict[sp.DType, list[Var]]
    written: dict[sp.DType, list[Var]]
    used: dict[sp.DType, set[int]] = field(default_factory=dict)


# -- the generator -----------------------------------------------------------------------------
class GraphMaker:
    """Builds one random graph from a seeded ``random.Random`` and structural knobs."""

    def __init__(self, rng: random.Random, replicas: int, tiles: int, dtypes: list[sp.DType]) -> None:
        self.rng = rng
        self.g = sp.Graph(sp.targets.ipu_model(tiles=tiles), replication_factor=replicas)
        self.vars: list[Var] = []
        for dtype in dtypes:
            for k in range(rng.randint(2, 4)):
                shape = (rng.randint(1, 10), rng.randint(1, 12))
                name = f"{dtype.name}_{len(self.vars)}"
                if k < 2:
                    t = self.g.add_variable(dtype, shape, name=name)
                else:
                    values = random_values(np.random.default_rng(rng.randrange(2**32)), dtype, shape)
                    t = self.g.add_constant(dtype, shape, values, name=name)
                m = t.offset + np.arange(t.numel, dtype=np.int64).reshape(shape)
                self.vars.append(Var(View(t, m), dtype, t.name, constant=k >= 2))
                self._map(t)

    def _map(self, t: sp.Tensor) -> None:
        rng, tiles, flat = self.rng, self.g.num_tiles, t.flatten()
        how = rng.randrange(3)
        if how == 0:
            sp.ops.map_linearly(self.g, t)
        elif how == 1:
            self.g.set_tile_mappings(t, [rng.randrange(tiles) for _ in range(t.shape[0])])
        else:
            cuts = sorted(rng.sample(range(1, t.numel), min(3, t.numel - 1))) if t.numel > 1 else []
            for lo, hi in zip([0, *cuts], [*cuts, t.numel], strict=True):
                self.g.set_tile_mapping(flat[lo:hi], rng.randrange(tiles))

    # -- fields ---------------------------------------------------------------------------------
    def roles(self) -> Roles:
        read: dict[sp.DType, list[Var]] = {}
        written: dict[sp.DType, list[Var]] = {}
        by_dtype: dict[sp.DType, list[Var]] = {}
        for v in self.vars:
            by_dtype.setdefault(v.dtype, []).append(v)
        for dtype, vs in by_dtype.items():
            variables = [v for v in vs if not v.constant]
            self.rng.shuffle(variables)
            k = 1 if self.rng.random() < 0.85 else len(variables)  # sometimes nothing is written
            read[dtype] = variables[:k] + [v for v in vs if v.constant]
            written[dtype] = variables[k:]
        return Roles(read, written)

    def block(self, roles: Roles, dtype: sp.DType, rows: int, n: int, writes: bool) -> View | None:
        """A (rows, n) view: distinct unwritten elements of written variables, or any read-only ones."""
        pool = (roles.written if writes else roles.read)[dtype]
        used = roles.used.setdefault(dtype, set())
        if not pool:
            return None
        for _ in range(12):
            v = self._candidate(pool, rows, n, writes, used)
            if v is None:
                continue
            assert v.m.shape == (rows, n)
            assert np.array_equal(v.t.addresses(), v.m), "softipu's view disagrees with numpy's"
            flat = v.m.reshape(-1).tolist()
            if writes and (len(set(flat)) != len(flat) or used.intersection(flat)):
                continue
            if writes:
                used.update(flat)
            return v
        return None

    def _candidate(self, pool: list[Var], rows: int, n: int, writes: bool, used: set[int]) -> View | None:
        rng = self.rng
        var = rng.choice(pool)
        (a, b), whole, size = var.shape, var.view, rows * n
        # Batches of strided views are what the fast engine chunks; indexed ones it gathers.
        strided = ["rows", "cols", "flat"] + ([] if writes else ["broadcast"])
        kind = rng.choice(strided * (3 if rows > 1 else 1) + ["fancy", "concat"])
        if kind == "rows" and rows <= a and n <= b:
            r0, c0 = rng.randint(0, a - rows), rng.randint(0, b - n)
            return self._maybe_reverse(whole[r0 : r0 + rows, c0 : c0 + n])
        if kind == "cols" and n <= a and rows <= b:  # transposed: the vector runs down a column
            r0, c0 = rng.randint(0, a - n), rng.randint(0, b - rows)
            return self._maybe_reverse(whole[r0 : r0 + n, c0 : c0 + rows].T)
        flat = whole.flatten()
        if kind == "flat":
            step = rng.randint(1, 3)
            span = (size - 1) * step + 1 if size else 0
            if span <= a * b:
                s = rng.randint(0, a * b - span)
                return self._maybe_reverse(flat[s : s + span : step].reshape(rows, n))  # slices do not clamp
        if kind == "fancy":
            free = [i for i in range(a * b) if int(var.view.m.flat[i]) not in used] if writes else range(a * b)
            if len(free) >= size:
                picked = np.array(rng.sample(list(free), size), np.int64).reshape(rows, n)
                return flat[picked]
        if kind == "concat":  # pieces of two variables (maybe the same one): an indexed view
            other = rng.choice(pool)
            k = rng.randint(0, size)
            (oa, ob) = other.shape
            if k <= a * b and size - k <= oa * ob:
                s1, s2 = rng.randint(0, a * b - k), rng.randint(0, oa * ob - (size - k))
                return concat([flat[s1 : s1 + k], other.view.flatten()[s2 : s2 + size - k]]).reshape(rows, n)
        if kind == "broadcast" and n <= a * b:  # every vertex reads the same vector
            s = rng.randint(0, a * b - n)
            return flat[s : s + n].reshape(1, n).broadcast((rows, n))
        return None

    def _maybe_reverse(self, v: View) -> View:
        for axis in (0, 1):
            if self.rng.random() < 0.3:
                v = v.reverse(axis)
        return v

    def param(self, dtype: sp.DType, count: int) -> np.ndarray:
        choices = [-2, -1, 0, 1, 2, 3] if dtype is sp.int32 else [-2.0, -0.5, 0.25, 1.0, 1.5]
        return np.array([self.rng.choice(choices) for _ in range(count)], dtype=dtype.numpy)

    # -- vertices -------------------------------------------------------------------------------
    def fields(self, roles: Roles, name: str, dtype: sp.DType, rows: int) -> dict | None:
        """Batched (rows, ...) fields of one codelet, or None when no room is left."""
        rng = self.rng
        n = rng.choice([0, 1, 2, 3, 4, 5, 8]) if rng.random() < 0.9 else rng.randint(9, 20)
        out: dict = {}
        if name == "Lists":
            lengths = [rng.randint(0, 4) for _ in range(rng.randint(1, 3))]
            xs = [self.block(roles, dtype, rows, k, writes=False) for k in lengths]
            ys = [self.block(roles, dtype, rows, k, writes=True) for k in lengths]
            if any(v is None for v in xs + ys):
                return None
            return {"xs": xs, "ys": ys}
        spec = {
            "Axpb": {"x": (n, False), "y": (n, True)},
            "InPlace": {"acc": (n, True), "x": (n, False)},
            "Reduce": {"x": (n, False), "total": (1, True)},
            "AddScalar": {"x": (n, False), "c": (1, False), "y": (n, True)},
            "ScaleParam": {"x": (n, False), "y": (n, True)},
        }[name]
        for fname, (length, writes) in spec.items():
            v = self.block(roles, dtype, rows, length, writes)
            if v is None:
                return None
            out[fname] = v
        if name == "ScaleParam":
            out["factor"] = self.param(dtype, rows)
        return out

    def add_compute_set(self, k: int) -> sp.ComputeSet:
        rng, g = self.rng, self.g
        cs = g.add_compute_set(f"cs{k}")
        roles = self.roles()
        singles = []
        for _ in range(rng.randint(1, 5)):  # codelet groups
            dtype = rng.choice(sorted(roles.read, key=lambda d: d.name))
            name = rng.choice(list(family(dtype)))
            if rng.random() < 0.4:
                self._add_bulk(cs, roles, dtype, name)
            else:
                for _ in range(rng.randint(1, 5)):
                    f = self.fields(roles, name, dtype, 1)
                    if f is not None:
                        singles.append((family(dtype)[name], f, rng.randrange(g.num_tiles)))
        if rng.random() < 0.7:
            rng.shuffle(singles)
        for codelet, f, tile in singles:
            self._add_single(cs, codelet, f, tile)
        return cs

    def _add_bulk(self, cs: sp.ComputeSet, roles: Roles, dtype: sp.DType, name: str) -> None:
        rows = self.rng.randint(1, 10)
        f = self.fields(roles, name, dtype, rows)
        if f is None:
            return
        batched = {}
        for fname, v in f.items():
            if isinstance(v, np.ndarray):  # a param: per-vertex values, or one for all
                batched[fname] = v if self.rng.random() < 0.7 else v[0].item()
            elif isinstance(v, list):
                batched[fname] = [p.t for p in v]
            elif v.m.shape[1] == 1 and self.rng.random() < 0.5:  # scalars also go as (rows,)
                batched[fname] = v.t.reshape(rows)
            else:
                batched[fname] = v.t
        self.g.add_vertices(cs, family(dtype)[name], batched, [self.rng.randrange(self.g.num_tiles)
                                                              for _ in range(rows)])

    def _add_single(self, cs: sp.ComputeSet, codelet: type[sp.Vertex], f: dict, tile: int) -> None:
        rng = self.rng
        values = {}
        for fname, v in f.items():
            if isinstance(v, np.ndarray):
                values[fname] = v[0].item()
            elif isinstance(v, list):
                values[fname] = [p.t[0] for p in v]
            else:  # a (1, n) row: pass it as 1-D, as 2-D, or (scalars) as a 0-d tensor
                values[fname] = rng.choice([v.t[0], v.t, v.t.reshape(()) if v.t.numel == 1 else v.t[0]])
        later = [k for k in values if rng.random() < 0.25]
        ref = self.g.add_vertex(cs, codelet, {k: x for k, x in values.items() if k not in later}, tile=tile)
        for k in later:
            self.g.connect(ref, k, values[k])

    # -- programs -------------------------------------------------------------------------------
    def copy(self) -> P.Program | None:
        rng = self.rng
        dtype = rng.choice(sorted({v.dtype for v in self.vars}, key=lambda d: d.name))
        everything = [v for v in self.vars if v.dtype is dtype]
        roles = Roles({dtype: everything}, {dtype: [v for v in everything if not v.constant]})
        n = rng.randint(1, 8)
        src = self.block(roles, dtype, 1, n, writes=False)
        dst = self.block(roles, dtype, 1, n, writes=True)
        if src is None or dst is None:
            return None
        return P.Copy(src.t[0], dst.t[0])

    def program(self, compute_sets: list[sp.ComputeSet]) -> P.Program:
        rng = self.rng
        steps: list[P.Program] = []
        for cs in compute_sets:
            step: P.Program = P.Execute(cs)
            r = rng.random()
            if r < 0.3:
                step = P.Repeat(rng.randint(0, 3), P.Sequence([step]))
            elif r < 0.45:
                step = P.Call(self.g.add_function(step))
            steps.append(step)
            if rng.random() < 0.5:
                c = self.copy()
                if c is not None:
                    steps.insert(rng.randrange(len(steps) + 1), c)
        return P.Sequence(steps)


def random_values(rng: np.random.Generator, dtype: sp.DType, shape: tuple[int, ...]) -> np.ndarray:
    if dtype is sp.int32:
        big = rng.integers(-(2**31), 2**31, size=shape, dtype=np.int64)
        small = rng.integers(-9, 10, size=shape)
        return np.where(rng.random(shape) < 0.2, big, small).astype(np.int32)
    if rng.random() < 0.5:  # exact quarters, or values whose sums round (order shows in the bits)
        return (rng.integers(-16, 17, size=shape) / 4).astype(dtype.numpy)
    return rng.standard_normal(shape).astype(dtype.numpy) * np.array(3, dtype.numpy)


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    replicas=st.sampled_from([1, 2]),
    tiles=st.sampled_from([4, 16]),
    dtypes=st.lists(st.sampled_from(DTYPES), min_size=1, max_size=3, unique=True),
    num_compute_sets=st.integers(1, 3),
    chunk_bytes=st.sampled_from([fast_engine.CHUNK_BYTES, 1, 16, 32, 48]),
)
def test_fast_engine_matches_reference_on_random_graphs(seed, replicas, tiles, dtypes, num_compute_sets,
                                                         chunk_bytes):
    rng = random.Random(seed)
    maker = GraphMaker(rng, replicas, tiles, dtypes)
    compute_sets = [maker.add_compute_set(k) for k in range(num_compute_sets)]
    programs = [maker.program(compute_sets), maker.program(compute_sets[::-1])]
    with mock.patch.object(fast_engine, "CHUNK_BYTES", chunk_bytes):
        fast = sp.Engine(maker.g, programs)
    ref = sp.Engine(maker.g, programs, {"engine.reference": True})

    data = np.random.default_rng(seed)
    for var in maker.vars:
        if var.constant:
            continue
        shape = var.shape if replicas == 1 or rng.random() < 0.2 else (replicas, *var.shape)
        values = random_values(data, var.dtype, shape)
        fast.write_tensor(var.view.t, values)
        ref.write_tensor(var.view.t, values)
    for index in (0, 1, 0):
        fast.run(index)
        ref.run(index)
    for var in maker.vars:
        got, want = fast.read_tensor(var.view.t), ref.read_tensor(var.view.t)
        if not same_bits(got, want):
            at = np.argwhere(got.view(f"u{got.itemsize}") != want.view(f"u{want.itemsize}"))[:4]
            pytest.fail(f"{var.name}: fast and reference differ at {at.tolist()}: fast "
                        f"{[got[tuple(i)] for i in at]}, reference {[want[tuple(i)] for i in at]}")


# -- contractions: within the written rounding bound, deterministic --------------------------------
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    replicas=st.sampled_from([1, 2]),
    tiles=st.sampled_from([4, 16]),
    dtype=st.sampled_from([sp.float32, sp.float16]),
    dims=st.tuples(st.integers(1, 3), st.integers(1, 70), st.integers(1, 200), st.integers(1, 60)),
    memory=st.sampled_from([0.6, 0.05]),
    transpose=st.booleans(),
)
def test_contractions_agree_with_the_reference_within_the_rounding_bound(seed, replicas, tiles, dtype, dims,
                                                                         memory, transpose):
    """Matmuls (AMP partial products, merged by the fast engine where vertices share a block;
    serial K chunks where memory is short) and float sums on random shapes and mappings: the
    fast engine is within :func:`contraction_bound` of the per-vertex reference, and two
    engines of the same graph give the same bits (design.md principle 6)."""
    batch, m, k, n = dims
    rng = random.Random(seed)
    g = sp.Graph(sp.targets.ipu_model(tiles=tiles, bytes_per_tile=256 * 1024), replication_factor=replicas)
    a = g.add_variable(dtype, (batch, m, k), name="a")
    b = g.add_variable(dtype, (n, k) if transpose else (k, n), name="b")
    for t in (a, b):
        sp.ops.map_linearly(g, t, grain_size=rng.choice([1, 2, 7]))
    prog = P.Sequence()
    try:
        c = sp.ops.matmul(g, a, b.T if transpose else b, prog, options={"availableMemoryProportion": memory})
    except OpError as e:
        if "fits" not in str(e):
            raise
        reject()  # no plan fits this memory proportion (that error: test_ops_matmul MARK-fit)
    total = sp.ops.reduce(g, a, prog, dims=(0, 1))
    data = np.random.default_rng(seed)
    lead = (replicas,) if replicas > 1 else ()
    av = data.standard_normal(lead + a.shape).astype(dtype.numpy)
    bv = data.standard_normal(lead + b.shape).astype(dtype.numpy)
    got = {}
    for name, options in (("fast", {}), ("again", {}), ("ref", {"engine.reference": True})):
        eng = sp.Engine(g, [prog], options)
        eng.write_tensor(a, av)
        eng.write_tensor(b, bv)
        eng.run(0)
        got[name] = [eng.read_tensor(c), eng.read_tensor(total)]
    for x, y in zip(got["fast"], got["again"], strict=True):
        assert x.tobytes() == y.tobytes(), "the same graph gave other bits"
    abs_a, abs_b = np.abs(av.astype(np.float64)), np.abs(bv.astype(np.float64))
    abs_b = np.swapaxes(abs_b, -1, -2) if transpose else abs_b
    terms = np.matmul(abs_a, abs_b[..., None, :, :] if replicas > 1 else abs_b)
    out = dtype.numpy if dtype is sp.float16 else None
    bounds = [contraction_bound(terms, k, np.float32, out),
              contraction_bound(abs_a.sum(axis=(-3, -2)), batch * m, np.float32, out)]
    for x, y, bound in zip(got["fast"], got["ref"], bounds, strict=True):
        diff = np.abs(x.astype(np.float64) - y.astype(np.float64))
        assert np.all(diff <= bound), f"{float((diff - bound).max())} over the bound"


# -- fixed graphs against numpy ----------------------------------------------------------------
ENGINES = pytest.mark.parametrize("reference", [False, True], ids=["fast", "reference"])
F32 = family(sp.float32)
I32 = family(sp.int32)


def _engine(g, programs, reference):
    return sp.Engine(g, programs, {"engine.reference": reference})


@ENGINES
def test_transposed_and_reversed_fields_against_numpy(reference):
    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    x = g.add_variable(sp.float32, (6, 8), name="x")
    y = g.add_variable(sp.float32, (8, 6), name="y")
    z = g.add_variable(sp.float32, (48,), name="z")
    for t in (x, y, z):
        sp.ops.map_linearly(g, t)
    cs = g.add_compute_set("transpose")
    order = [5, 2, 7, 0, 3, 6, 1, 4]  # added out of order, on tiles that hold none of the data
    for j in order:
        g.add_vertex(cs, F32["Axpb"], {"x": x[:, j], "y": y[j]}, tile=(j + 1) % 4)
    g.add_vertex(cs, F32["Axpb"], {"x": x.flatten(), "y": z.reverse()}, tile=2)
    eng = _engine(g, [P.Execute(cs)], reference)
    xs = np.arange(48, dtype=np.float32).reshape(6, 8) / 8
    eng.write_tensor(x, xs)
    eng.run(0)
    np.testing.assert_array_equal(eng.read_tensor(y), (xs * 3 + 1).T)
    np.testing.assert_array_equal(eng.read_tensor(z), (xs * 3 + 1).reshape(-1)[::-1])


@ENGINES
def test_repeated_in_place_update_per_replica_against_numpy(reference):
    g = sp.Graph(sp.targets.ipu_model(tiles=8), replication_factor=2)
    acc = g.add_variable(sp.int32, (4, 5), name="acc")
    x = g.add_variable(sp.int32, (5, 4), name="x")
    sp.ops.map_linearly(g, acc)
    sp.ops.map_linearly(g, x)
    cs = g.add_compute_set("update")
    # bulk: vertex i updates row i of acc from column i of x
    g.add_vertices(cs, I32["InPlace"], {"acc": acc, "x": x.T}, tiles=[7, 5, 3, 1])
    eng = _engine(g, [P.Repeat(3, P.Execute(cs))], reference)
    rng = np.random.default_rng(1)
    a0 = rng.integers(-(2**31), 2**31, size=(2, 4, 5)).astype(np.int32)
    x0 = rng.integers(-100, 100, size=(2, 5, 4)).astype(np.int32)
    eng.write_tensor(acc, a0)
    eng.write_tensor(x, x0)
    eng.run(0)
    want = a0.copy()
    for _ in range(3):
        want = want * np.int32(2) - x0.transpose(0, 2, 1)  # wraps like int32 arithmetic
    np.testing.assert_array_equal(eng.read_tensor(acc), want)


@ENGINES
def test_vector_lists_over_concatenated_views_against_numpy(reference):
    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    a = g.add_variable(sp.float32, (10,), name="a")
    b = g.add_variable(sp.float32, (10,), name="b")
    out = g.add_variable(sp.float32, (3, 8), name="out")
    for t in (a, b, out):
        sp.ops.map_linearly(g, t)
    cs = g.add_compute_set("lists")
    # list item k of each vertex is copied minus k; the concatenations are indexed views
    xs0 = [sp.concat([a[0:3], b[7:10]]), a[3:5]]
    ys0 = [out[0, 2:8][::-1], out[1, 0:2]]
    xs1 = [b[0:6:2].reverse(), sp.concat([b[9:10], a[9:10]])]
    ys1 = [out[2, 0:3], out[2, 6:8]]
    g.add_vertex(cs, F32["Lists"], {"xs": xs0, "ys": ys0}, tile=3)
    g.add_vertex(cs, F32["Lists"], {"xs": xs1, "ys": ys1}, tile=0)
    eng = _engine(g, [P.Execute(cs)], reference)
    av, bv = np.arange(10, dtype=np.float32), 100 + np.arange(10, dtype=np.float32)
    eng.write_tensor(a, av)
    eng.write_tensor(b, bv)
    eng.write_tensor(out, np.full((3, 8), -7, np.float32))
    eng.run(0)
    want = np.full((3, 8), -7, np.float32)
    want[0, 2:8] = np.concatenate([av[0:3], bv[7:10]])[::-1]  # list item 0: minus 0
    want[1, 0:2] = av[3:5] - 1
    want[2, 0:3] = bv[0:6:2][::-1]
    want[2, 6:8] = np.array([bv[9], av[9]]) - 1
    np.testing.assert_array_equal(eng.read_tensor(out), want)


@ENGINES
def test_reductions_scalars_and_params_against_numpy(reference):
    g = sp.Graph(sp.targets.ipu_model(tiles=4), replication_factor=2)
    m = g.add_variable(sp.float32, (7, 5), name="m")
    c = g.add_variable(sp.float32, (5,), name="c")
    sums = g.add_variable(sp.float32, (5,), name="sums")
    shifted = g.add_variable(sp.float32, (5, 7), name="shifted")
    scaled = g.add_variable(sp.float32, (5, 7), name="scaled")
    for t in (m, c, sums, shifted, scaled):
        sp.ops.map_linearly(g, t)
    reduce_cs, use_cs = g.add_compute_set("reduce"), g.add_compute_set("use")
    g.add_vertices(reduce_cs, F32["Reduce"], {"x": m.T, "total": sums}, tiles=[0, 1, 2, 3, 0])
    for j in range(5):
        g.add_vertex(use_cs, F32["AddScalar"], {"x": m[:, j], "c": sums[j], "y": shifted[j]}, tile=j % 4)
    factors = np.array([0.5, -1, 2, 4, 0.25], np.float32)
    g.add_vertices(use_cs, F32["ScaleParam"], {"x": m.T, "factor": factors, "y": scaled}, tiles=[1] * 5)
    eng = _engine(g, [P.Sequence([P.Execute(reduce_cs), P.Execute(use_cs)])], reference)
    mv = (np.arange(2 * 35, dtype=np.float32).reshape(2, 7, 5) - 30) / 4
    eng.write_tensor(m, mv)
    eng.run(0)
    col = mv.transpose(0, 2, 1)  # (replica, column, row)
    want_sums = sequential_sum(np.ascontiguousarray(col))[..., 0]
    np.testing.assert_array_equal(eng.read_tensor(sums), want_sums)
    np.testing.assert_array_equal(eng.read_tensor(shifted), col + want_sums[..., None])
    np.testing.assert_array_equal(eng.read_tensor(scaled), col * factors[:, None])
