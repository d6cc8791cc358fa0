"""The executable cache: safe files, bitwise-identical reloads, keys, corruption and eviction.

Models run on a small ipu_model; a cached model must give the very outputs and cycle counts of an
uncached compile, skip export, lowering and compiling, and never run code from the cache files.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import softipu as sp
import softipu.torch as st
from softipu import program as P
from softipu.codelets import elementwise as E
from softipu.compiler.serialize import (
    ARRAYS,
    MANIFEST,
    ExecutableFormatError,
    load_executable,
    save_executable,
)
from softipu.engine import engine as engine_module
from softipu.errors import OptionError
from softipu.frontends.torch import cache as cache_module
from softipu.frontends.torch import runtime
from softipu.frontends.torch.cache import ExecutableCache
from softipu.graph import codelet_registry as registry
from softipu.ops import elementwise as ew

SMALL = sp.targets.ipu_model(tiles=8, bytes_per_tile=1024 * 1024)
SRC = Path(__file__).resolve().parents[1] / "src"


def options(tmp_path: Path, **changes) -> st.Options:
    return st.Options(target=SMALL, executable_cache_dir=str(tmp_path / "cache"), **changes)


def entries(opts: st.Options) -> list[Path]:
    return [p for p, _, _ in ExecutableCache.for_options(opts).entries()]


def same(a, b) -> None:
    """Bitwise equal output trees."""
    fa, sa = torch.utils._pytree.tree_flatten(a)
    fb, sb = torch.utils._pytree.tree_flatten(b)
    assert sa == sb
    for x, y in zip(fa, fb, strict=True):
        assert (torch.equal(x, y) and x.dtype == y.dtype) if isinstance(x, torch.Tensor) else x == y


def mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)).eval()


class CNN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.c1 = torch.nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.pool = torch.nn.MaxPool2d(2)
        self.fc = torch.nn.Linear(8, 10)

    def forward(self, x):
        y = torch.relu(self.bn(self.stem(x)))
        y = torch.relu(y + self.c1(y))
        return self.fc(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(self.pool(y), 1), 1))


class Encoder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        layer = torch.nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
        self.enc = torch.nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)

    def forward(self, x, pad):
        return {"out": self.enc(x, src_key_padding_mask=pad), "first": x[:, 0]}


def mlp_case():
    return mlp(), (torch.randn(8, 16),), {}


def replicated_case():  # 2 iterations x 2 replicas x micro-batch 2, fp16
    return mlp(), (torch.randn(8, 16),), dict(device_iterations=2, replication_factor=2, precision="fp16")


def cnn_case():
    torch.manual_seed(1)
    return CNN().eval(), (torch.randn(2, 3, 12, 12),), {}


def encoder_case():
    torch.manual_seed(2)
    pad = torch.zeros(2, 5, dtype=torch.bool)
    pad[1, 3:] = True
    return Encoder().eval(), (torch.randn(2, 5, 16), pad), {}


def no_compiling(monkeypatch) -> None:
    """Make export, lowering and compiling fail: only a cache hit can run a model."""
    def boom(*args, **kwargs):
        raise AssertionError("compiled although the executable cache holds the model")
    monkeypatch.setattr(runtime, "export_program", boom)
    monkeypatch.setattr(runtime, "lower_program", boom)
    monkeypatch.setattr(engine_module, "compile_graph", boom)


# -- round trips -------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", [mlp_case, replicated_case, cnn_case, encoder_case],
                         ids=["mlp", "replicated-fp16", "cnn", "transformer"])
def test_a_cached_model_matches_an_uncached_compile_bit_for_bit(case, tmp_path, monkeypatch):
    net, args, changes = case()
    plain = st.inference_model(net, st.Options(target=SMALL, **changes))
    want = plain(*args)
    opts = options(tmp_path, **changes)
    cold = st.inference_model(net, opts)
    same(cold(*args), want)
    assert "cache" in cold.compile_seconds and len(entries(opts)) == 1
    no_compiling(monkeypatch)
    warm = st.inference_model(net, opts)
    same(warm(*args), want)
    assert set(warm.compile_seconds) == {"cache_load", "load"}
    assert warm.cycle_count == plain.cycle_count > 0
    assert warm.report.cycles == plain.report.cycles
    assert np.array_equal(warm.report.tile_memory, plain.report.tile_memory)
    same(warm(*args), plain(*args))  # later calls too
    assert warm.cycle_count == plain.cycle_count


def test_a_fresh_process_loads_the_model_without_compiling(tmp_path):
    net, x = mlp(), torch.randn(8, 16)
    opts = options(tmp_path)
    want = st.inference_model(net, opts)(x)
    torch.save({"state": net.state_dict(), "x": x}, tmp_path / "inputs.pt")
    script = textwrap.dedent(f"""
        import torch, softipu as sp, softipu.torch as st
        from softipu.frontends.torch import cache, runtime
        from softipu.engine import engine
        def boom(*a, **k):
            raise SystemExit("compiled")
        runtime.export_program = runtime.lower_program = engine.compile_graph = boom
        cache._softipu_build = lambda: {cache_module._softipu_build()!r}  # sources edited meanwhile
        saved = torch.load({str(tmp_path / "inputs.pt")!r})
        net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
        net.load_state_dict(saved["state"])
        opts = st.Options(target=sp.targets.ipu_model(tiles=8, bytes_per_tile=1024 * 1024),
                          executable_cache_dir={opts.executable_cache_dir!r})
        torch.save(st.inference_model(net, opts)(saved["x"]), {str(tmp_path / "out.pt")!r})
    """)
    env = dict(os.environ, PYTHONPATH=str(SRC))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert torch.equal(torch.load(tmp_path / "out.pt"), want)


def test_new_weights_reuse_the_entry_and_give_new_outputs(tmp_path, monkeypatch, caplog):
    net, x = mlp(), torch.randn(8, 16)
    opts = options(tmp_path)
    st.inference_model(net, opts)(x)
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(-0.5).add_(0.1)
    no_compiling(monkeypatch)
    with caplog.at_level(logging.INFO, logger="softipu.torch"):
        model = st.inference_model(net, opts)
        out = model(x)
    assert "executable cache hit" in caplog.text and len(entries(opts)) == 1
    with torch.no_grad():
        assert torch.allclose(out, net(x), rtol=1e-4, atol=1e-6)
        net[2].bias.add_(1.0)
    model.copy_weights_to_device()  # the loaded graph knows its weight streams
    with torch.no_grad():
        assert torch.allclose(model(x), net(x), rtol=1e-4, atol=1e-6)


def test_poptorch_executable_caching_is_the_cache(tmp_path, recwarn):
    import softipu.poptorch as poptorch

    net, x = mlp(), torch.randn(8, 16)
    opts = poptorch.Options().enableExecutableCaching(str(tmp_path / "pop")).setTarget(SMALL).logCycleCount(True)
    first = poptorch.inferenceModel(net, opts)
    out = first(x)
    second = poptorch.inferenceModel(net, opts)
    assert torch.equal(second(x), out) and second.cycleCount() == first.cycleCount()
    assert set(second._impl.compile_seconds) == {"cache_load", "load"}
    assert not [w for w in recwarn if "executable_cache" in str(w.message)]


def test_a_model_loaded_from_the_cache_exports_the_same_executable(tmp_path, monkeypatch):
    net, x = mlp(), torch.randn(8, 16)
    opts = options(tmp_path)
    cold = st.inference_model(net, opts)
    want = cold(x)
    no_compiling(monkeypatch)
    warm = st.inference_model(net, opts)
    warm.export(tmp_path / "exported", x)  # the loaded executable, saved again
    loaded = st.inference_model(mlp(), opts.replace(executable_cache_dir=None))
    loaded.load_executable(tmp_path / "exported")
    same(loaded(x), want)
    assert loaded.cycle_count == cold.cycle_count > 0


# -- keys --------------------------------------------------------------------------------------------
def key(net, args, opts, kwargs=None):
    kwargs = kwargs or {}
    flat = torch.utils._pytree.tree_flatten((tuple(args), kwargs))[0]
    leaves = tuple(runtime._leaf_of(f"in{i}", v) for i, v in enumerate(flat))
    return ExecutableCache.for_options(opts).key(net, (tuple(args), kwargs), leaves, opts)


def test_the_key_follows_what_is_compiled_and_not_the_weights(tmp_path):
    net, x = mlp(), torch.randn(8, 16)
    opts = options(tmp_path)
    base = key(net, [x], opts)
    assert key(mlp(), [x], opts) == base  # a new instance, same structure
    with torch.no_grad():
        net[0].weight.add_(1.0)
    assert key(net, [x], opts) == base  # weights are streamed in: same entry
    assert key(net, [torch.randn(4, 16)], opts) != base  # shape
    assert key(net, [x.double()], opts) != base  # dtype
    assert key(net, [x], opts.replace(precision="fp16")) != base
    assert key(net, [x], opts.replace(available_memory_proportion=0.3)) != base
    assert key(net, [x], opts.replace(target=sp.targets.ipu_model(tiles=4))) != base
    assert key(net, [x], opts.replace(log_cycle_count=True, executable_cache_max_bytes=10)) == base
    wider = torch.nn.Sequential(torch.nn.Linear(16, 33), torch.nn.ReLU(), torch.nn.Linear(33, 4))
    assert key(wider, [x], opts) != base
    other = mlp()
    other[1] = torch.nn.GELU()
    assert key(other, [x], opts) != base
    ln = torch.nn.LayerNorm(16)
    ln_base = key(ln, [x], opts)
    ln.eps = 1e-3  # a hyperparameter that is no tensor
    assert key(ln, [x], opts) != ln_base


def test_every_option_is_either_in_the_key_or_known_not_to_matter():
    fields = {f.name for f in st.Options.__dataclass_fields__.values()}
    assert set(cache_module.KEY_OPTIONS) | set(cache_module.NOT_KEY_OPTIONS) == fields
    assert not set(cache_module.KEY_OPTIONS) & set(cache_module.NOT_KEY_OPTIONS)
    with pytest.raises(OptionError, match="executable_cache_max_bytes"):
        st.Options(executable_cache_max_bytes=-1)


def test_changed_model_code_is_a_miss(tmp_path):
    source = tmp_path / "cache_test_model.py"
    code = textwrap.dedent("""
        import torch
        class Net(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.lin = torch.nn.Linear(4, 4)
            def forward(self, x):
                return self.lin(x) * 2
    """)
    source.write_text(code)
    spec = importlib.util.spec_from_file_location("cache_test_model", source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    net, x, opts = module.Net(), torch.randn(2, 4), options(tmp_path)
    before = key(net, [x], opts)
    source.write_text(code.replace("* 2", "* 3 + 1"))
    assert key(net, [x], opts) != before
    net.forward = lambda x: x  # a forward replaced on the instance
    assert key(net, [x], opts) != before


def test_a_plain_tensor_attribute_is_part_of_the_key():
    class Shift(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.offset = torch.ones(3)  # not a buffer: torch.export bakes it in as a constant

        def forward(self, x):
            return x + self.offset

    net, x, opts = Shift(), torch.randn(2, 3), st.Options(target=SMALL, executable_cache_dir="unused")
    before = key(net, [x], opts)
    net.offset = torch.full((3,), 2.0)
    assert key(net, [x], opts) != before


# -- damaged, foreign and hostile files --------------------------------------------------------------
def stored_entry(tmp_path: Path) -> tuple[torch.nn.Module, torch.Tensor, st.Options, Path]:
    net, x = mlp(), torch.randn(8, 16)
    opts = options(tmp_path)
    st.inference_model(net, opts)(x)
    (entry,) = entries(opts)
    return net, x, opts, entry


@pytest.mark.parametrize("damage", ["manifest_text", "manifest_field", "arrays_truncated", "arrays_missing",
                                    "version", "codelet"])
def test_a_damaged_entry_is_a_logged_miss_that_recompiles(damage, tmp_path, caplog):
    net, x, opts, entry = stored_entry(tmp_path)
    manifest = json.loads((entry / MANIFEST).read_text())
    if damage == "manifest_text":
        (entry / MANIFEST).write_text("{ not json")
    elif damage == "manifest_field":
        manifest["tensors"][0][2] = "offset"
        (entry / MANIFEST).write_text(json.dumps(manifest))
    elif damage == "arrays_truncated":
        data = (entry / ARRAYS).read_bytes()
        (entry / ARRAYS).write_bytes(data[: len(data) // 2])
    elif damage == "arrays_missing":
        (entry / ARRAYS).unlink()
    elif damage == "version":
        manifest["version"] += 1
        (entry / MANIFEST).write_text(json.dumps(manifest))
    else:  # a codelet this process cannot name
        manifest["codelets"][0] = {"factory": ["softipu.codelets.elementwise", "no_such_factory"], "args": []}
        (entry / MANIFEST).write_text(json.dumps(manifest))
    with caplog.at_level(logging.INFO, logger="softipu.torch"):
        model = st.inference_model(net, opts)
        out = model(x)
    assert "unusable and was removed" in caplog.text and "stored" in caplog.text
    assert "export" in model.compile_seconds  # compiled again
    with torch.no_grad():
        assert torch.allclose(out, net(x), rtol=1e-4, atol=1e-6)
    assert entries(opts) == [entry]  # replaced by a good one
    load_executable(entry)


class _Planted:
    """Unpickling this creates a file: proof that a loader unpickled it."""

    marker = ""

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_files_holding_pickles_are_refused_unread(tmp_path, caplog):
    net, x, opts, entry = stored_entry(tmp_path)
    marker = tmp_path / "unpickled"
    _Planted.marker = str(marker)
    with open(entry / ARRAYS, "wb") as f:  # an object array: numpy would pickle it
        np.savez(f, i8=np.array([_Planted()], dtype=object))
    with pytest.raises(ExecutableFormatError, match="pickle"):
        load_executable(entry)
    (entry / ARRAYS).write_bytes(pickle.dumps(_Planted()))  # a bare pickle
    with pytest.raises(ExecutableFormatError, match="pickle"):
        load_executable(entry)
    with caplog.at_level(logging.INFO, logger="softipu.torch"):
        st.inference_model(net, opts)(x)
    assert "unusable" in caplog.text and not marker.exists()


# -- bound and eviction ------------------------------------------------------------------------------
def fake_entry(directory: Path, name: str, nbytes: int, used: float) -> Path:
    path = directory / (name * 64)
    path.mkdir(parents=True)
    (path / MANIFEST).write_bytes(b"x" * nbytes)
    os.utime(path, (used, used))
    return path


def test_eviction_keeps_the_bound_removing_the_least_recently_used(tmp_path):
    cache = ExecutableCache(tmp_path, max_bytes=2500)
    old = fake_entry(tmp_path, "a", 1000, 1_000)
    recent = fake_entry(tmp_path, "b", 1000, 3_000)
    middle = fake_entry(tmp_path, "c", 1000, 2_000)
    stray = tmp_path / "notes"
    stray.mkdir()
    cache.evict()
    assert not old.exists() and recent.exists() and middle.exists() and stray.exists()
    assert sum(n for _, n, _ in cache.entries()) <= 2500
    ExecutableCache(tmp_path, max_bytes=1500).evict()
    assert recent.exists() and not middle.exists()


def test_a_hit_makes_an_entry_recent_and_storing_respects_the_bound(tmp_path, caplog):
    net, x, opts, entry = stored_entry(tmp_path)
    size = ExecutableCache.for_options(opts).entries()[0][1]
    os.utime(entry, (1_000, 1_000))
    st.inference_model(net, opts)(x)
    assert entry.stat().st_mtime > 1_000  # used just now
    other = fake_entry(Path(opts.executable_cache_dir), "d", 100, 500)  # older than the hit
    small = opts.replace(executable_cache_max_bytes=size + 50)
    wider = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU()).eval()
    st.inference_model(wider, small)(x)  # stores a second entry: the bound keeps only one
    assert not other.exists() and not entry.exists() and len(entries(small)) == 1
    tiny = opts.replace(executable_cache_max_bytes=10)
    with caplog.at_level(logging.INFO, logger="softipu.torch"):
        st.inference_model(mlp(), tiny)(torch.randn(3, 16))
    assert "exceed the bound" in caplog.text


# -- what cannot be cached runs anyway -----------------------------------------------------------------
def test_a_model_with_an_unnameable_codelet_runs_uncached(tmp_path, caplog):
    class Twice(sp.Vertex):  # made inside a function: no process but this one can make it
        x = sp.Input(sp.float32)
        y = sp.Output(sp.float32)

        @staticmethod
        def compute(x, y):
            y[...] = 2 * x

    def lower_i0(ctx, node, x):
        out = ctx.variable(x.dtype, x.shape)
        cs = ctx.graph.add_compute_set(ctx.name)
        ctx.graph.add_vertex(cs, Twice, {"x": x.flatten(), "y": out.flatten()}, tile=0)
        ctx.prog.add(P.Execute(cs))
        return out

    class Special(torch.nn.Module):
        def forward(self, x):
            return torch.special.i0(x) + 1

    built_in = st.LOWERINGS["aten::i0"]  # softipu lowers i0: this test stands its own in for it
    st.register_lowering("aten::i0", lower_i0, override=True)
    try:
        opts, x = options(tmp_path), torch.randn(5)
        with caplog.at_level(logging.INFO, logger="softipu.torch"):
            out = st.inference_model(Special(), opts)(x)
    finally:
        st.LOWERINGS.register("aten::i0", built_in, override=True)
    assert torch.allclose(out, 2 * x + 1)
    assert "not storing" in caplog.text and "Twice" in caplog.text and not entries(opts)


# -- the serializer and the codelet registry on their own ---------------------------------------------
def test_every_program_kind_round_trips_through_a_saved_executable(tmp_path):
    g = sp.Graph(SMALL)
    x = g.add_variable(sp.float32, (64,), name="x")
    c = g.add_constant(sp.float32, (64,), np.arange(64) / 7, name="c")
    flag = g.add_variable(sp.int32, (1,), name="flag")
    for t in (x, c, flag):
        sp.ops.map_linearly(g, t)
    body = P.Sequence()
    y = ew.add(g, x, c, body, name="y")
    ew.map_(g, ew.E.add(ew.E.mul(ew.E.input(0), 0.5), -0.0), [y], body, name="half")
    fn = g.add_function(body, name="fn")
    stream = g.add_device_to_host_fifo("y", sp.float32, 64)
    prog = P.Sequence(P.Repeat(2, P.Call(fn)), P.If(flag, P.Sync(), P.Call(fn)),
                      P.Switch(flag, {0: P.Sequence(P.Call(fn)), 1: P.Sync()}, P.WriteUndef(x)),
                      P.Copy(y, stream))
    counter = sp.cycle_count(g, prog)
    eng = sp.Engine(g, [prog])
    path = tmp_path / "exe"
    save_executable(eng.executable, path, {"note": ("a", 1, 2.5, None), "values": np.arange(3)})
    exe, graph, extra = load_executable(path)
    assert extra["note"] == ("a", 1, 2.5, None) and extra["values"].tolist() == [0, 1, 2]
    loaded = sp.Engine.from_executable(exe, graph)
    results = []
    for e, gr in ((eng, g), (loaded, graph)):
        out = np.zeros(64, np.float32)
        e.connect_stream("y", out)
        xv = sp.Tensor(gr, sp.float32, (64,), x.offset, (1,))
        e.write_tensor(xv, np.linspace(-1, 1, 64))
        e.run(0)
        results.append((out, e.read_tensor(sp.Tensor(gr, sp.uint32, (2,), counter.offset, (1,))),
                        e.report.cycles))
    assert np.array_equal(results[0][0], results[1][0]) and results[0][0].any()
    assert np.array_equal(results[0][1], results[1][1]) and results[0][2] == results[1][2]
    assert [s.name for s in exe.steps] == [s.name for s in eng.executable.steps]
    assert graph.variables[1].is_constant and np.array_equal(graph.tile_of(xv), g.tile_of(x))


def test_library_codelets_are_named_by_factory_and_arguments():
    add = E.binary_op_codelet(E.BinaryOp.ADD, sp.float16)
    name = registry.codelet_name(add)
    assert name["factory"] == ["softipu.codelets.elementwise", "binary_op_codelet"]
    assert json.loads(json.dumps(name)) == name and registry.rebuild_codelet(name) is add
    expr = E.typecheck(ew.E.add(ew.E.mul(ew.E.input(0), float("nan")), -0.0), (sp.float32,))
    fused = E.map_codelet(expr, (sp.float32,), (E.Operand.FULL,), inplace=True)
    rebuilt = registry.rebuild_codelet(json.loads(json.dumps(registry.codelet_name(fused))))
    assert registry.same_codelet(fused, rebuilt)
    with pytest.raises(registry.UnnameableCodelet):
        registry.rebuild_codelet({"factory": ["os", "system"], "args": ["true"]})
    with pytest.raises(registry.UnnameableCodelet):
        registry.rebuild_codelet({"module": "not.imported", "qualname": "Codelet"})


@functools.cache
def scaled_codelet(dtype: sp.DType, *, scale: float) -> type[sp.Vertex]:
    """A user's codelet factory: nameable like the library's once it has made a codelet here."""

    class Scaled(sp.Vertex):
        x = sp.Input(dtype)
        y = sp.Output(dtype)

        @staticmethod
        def compute(x, y):
            y[...] = x * scale

    return Scaled


def test_a_users_cached_factory_is_nameable_with_keyword_arguments():
    cls = scaled_codelet(sp.float32, scale=0.25)
    name = json.loads(json.dumps(registry.codelet_name(cls)))
    assert name["kwargs"] == {"scale": {"float": "0.25"}}
    assert registry.rebuild_codelet(name) is cls


def test_arrays_of_every_kind_and_layout_round_trip_exactly(tmp_path):
    g = sp.Graph(SMALL)
    x = g.add_variable(sp.float32, (4,), name="x")
    sp.ops.map_linearly(g, x)
    exe = sp.Engine(g, [P.Copy(x, x)]).executable
    rng = np.random.default_rng(0)
    rows = np.arange(300, dtype=np.int64)[:, None] * 1000 + np.array([0, 1, 2, 7, 8, 9, 40])  # row pattern
    arrays = {
        "rows": rows, "runs": np.concatenate([np.arange(0, 3000, 3), np.arange(5000, 4000, -1)]).astype(np.int32),
        "random": rng.integers(-9, 9, 5000).astype(np.int64), "bcast": np.broadcast_to(np.arange(3.0), (500, 3)),
        "half": rng.standard_normal((7, 3)).astype(np.float16), "flags": rng.random(2000) > 0.5,
        "big_u32": np.arange(2000, dtype=np.uint32) * 7, "u64": np.array([2**64 - 1, 0], np.uint64),
        "scalar": np.array(np.float32(-0.0)), "empty": np.zeros((0, 3), np.int16),
        "transposed": rows.T, "nan": np.array([np.nan, np.inf, -np.inf], np.float64),
    }
    save_executable(exe, tmp_path / "e", {"arrays": arrays})
    manifest = json.loads((tmp_path / "e" / MANIFEST).read_text())
    codecs = {next(k for k in ("outer", "rle", "broadcast", "raw") if k in e) for e in manifest["arrays"]}
    assert codecs == {"outer", "rle", "broadcast", "raw"}
    got = load_executable(tmp_path / "e")[2]["arrays"]
    for name, want in arrays.items():
        have = got[name]
        assert have.dtype == want.dtype and have.shape == want.shape, name
        assert np.array_equal(have, want, equal_nan=want.dtype.kind == "f"), name
        assert np.signbit(have).tolist() == np.signbit(want).tolist() if want.dtype.kind == "f" else True
