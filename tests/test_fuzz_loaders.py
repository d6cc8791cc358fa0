"""The executable and cache loaders under mutated files (issue 18): a short run of the campaign in
bench/fuzz_loaders.py, and one regression test for each kind of failure it found."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import re
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import softipu as sp
import softipu.torch as st
from softipu import program as P
from softipu.compiler.serialize import (
    ARRAYS,
    MANIFEST,
    ExecutableFormatError,
    load_executable,
    save_executable,
)
from softipu.frontends.torch.cache import ExecutableCache

BENCH = Path(__file__).resolve().parents[1] / "bench" / "fuzz_loaders.py"


def fuzz_module():
    spec = importlib.util.spec_from_file_location("fuzz_loaders", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def saved(path: Path, values: np.ndarray | None = None) -> Path:
    g = sp.Graph(sp.targets.ipu_model(tiles=2))
    x, y = g.add_variable(sp.float32, (4,), name="x"), g.add_variable(sp.float32, (4,), name="y")
    sp.ops.map_linearly(g, x)
    sp.ops.map_linearly(g, y)
    extra = {} if values is None else {"values": values}
    save_executable(sp.Engine(g, [P.Copy(x, y)]).executable, path, extra)
    return path


def exported_linear(path: Path) -> tuple[torch.nn.Module, st.Options, dict]:
    """A Linear(4, 3) exported to ``path`` for a 4-tile IPU: the model, its options and the
    export's manifest as JSON (tests damage it and write it back)."""
    torch.manual_seed(0)
    net, x = torch.nn.Linear(4, 3), torch.randn(2, 4)
    opts = st.Options(target=sp.targets.ipu_model(tiles=4))
    st.inference_model(net, opts).export(path, x)
    return net, opts, json.loads((path / MANIFEST).read_text())


@contextlib.contextmanager
def within(seconds: float):
    """Fail (instead of hanging the suite) when the body takes over 10 s, and when over ``seconds``."""
    def stuck(signum, frame):
        raise TimeoutError("the loader hangs")

    old = signal.signal(signal.SIGALRM, stuck)
    signal.alarm(10)
    start = time.monotonic()
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert time.monotonic() - start < seconds


def test_a_short_campaign_finds_no_internal_error_hang_or_escape():
    result = fuzz_module().campaign(count=120, seconds=60, seed=1, limit=5.0)
    bad = {k: result[k] for k in ("other_exceptions", "hangs", "escaped")}
    assert bad == {"other_exceptions": 0, "hangs": 0, "escaped": 0}, result["examples"]
    assert result["tried"] == 120
    # the mutations bite: most inputs are refused, a few are harmless
    assert result["softipu_errors"] + result["cache_misses"] > 80


@pytest.mark.parametrize("name", [MANIFEST, ARRAYS])
def test_a_file_linked_out_of_the_folder_is_refused_unread(name, tmp_path):
    """Found by the campaign: a symlinked manifest (or array file) pointing at a valid executable
    outside the folder loaded it, i.e. the loader read outside its folder."""
    outside = saved(tmp_path / "outside")
    folder = saved(tmp_path / "folder")
    (folder / name).unlink()
    (folder / name).symlink_to(outside / name)
    with pytest.raises(ExecutableFormatError, match="not a plain file"):
        load_executable(folder)


def test_a_pipe_in_place_of_the_manifest_fails_at_once_instead_of_blocking(tmp_path):
    """Found by the campaign: a named pipe as manifest.json made the loader wait forever."""
    folder = saved(tmp_path / "folder")
    (folder / MANIFEST).unlink()
    os.mkfifo(folder / MANIFEST)
    with within(1.0), pytest.raises(ExecutableFormatError, match="not a plain file"):
        load_executable(folder)  # without the fix, the open would never return


def test_a_huge_run_length_array_is_refused_before_allocating(tmp_path):
    """A run-length array whose shape says 2**40 int32 elements, with runs adding up to it, would
    allocate 8 TiB (or, with overcommit, swap the host to death) before any check."""
    folder = saved(tmp_path / "folder", np.arange(5000, dtype=np.int32))
    manifest = json.loads((folder / MANIFEST).read_text())
    (i, entry), = [(i, e) for i, e in enumerate(manifest["arrays"]) if "rle" in e]
    n = 2**40
    with np.load(folder / ARRAYS) as npz:
        pools = dict(npz)
    pools["i8"] = np.concatenate((pools["i8"], [1, n - 1]))  # one run of step 1, n - 1 long
    base = pools["i8"].size - 2
    entry.update(shape=[n], rle=[0, ["i8", base, 1], ["i8", base + 1, 1]])
    (folder / MANIFEST).write_text(json.dumps(manifest))
    np.savez(folder / ARRAYS, **pools)
    with pytest.raises(ExecutableFormatError, match=r"would need 8796093022208 bytes"):
        load_executable(folder)  # the size check comes before np.empty (else MemoryError or swapping)


def test_a_negative_array_shape_is_a_format_error(tmp_path):
    folder = saved(tmp_path / "folder", np.arange(5000, dtype=np.int32))
    manifest = json.loads((folder / MANIFEST).read_text())
    (entry,) = [e for e in manifest["arrays"] if "rle" in e]
    entry["shape"] = [-5000]
    (folder / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ExecutableFormatError, match="negative shape"):
        load_executable(folder)


def test_a_cache_entry_linked_out_of_the_cache_is_a_miss_and_not_followed(tmp_path, caplog):
    """An entry that is a symlink to a folder elsewhere is not read (nor removed, nor its target)."""
    net, x = torch.nn.Linear(4, 3), torch.randn(2, 4)
    opts = st.Options(target=sp.targets.ipu_model(tiles=4), executable_cache_dir=str(tmp_path / "cache"))
    st.inference_model(net, opts)(x)
    cache = ExecutableCache.for_options(opts)
    (entry,) = [p for p, _, _ in cache.entries()]
    elsewhere = tmp_path / "elsewhere"
    entry.rename(elsewhere)
    entry.symlink_to(elsewhere, target_is_directory=True)
    with caplog.at_level(logging.WARNING, "softipu.torch.cache"):
        assert cache.load(entry.name, net) is None
    assert "symbolic link" in caplog.text
    assert (elsewhere / MANIFEST).is_file() and entry.is_symlink()


@pytest.mark.parametrize("parts", [{"li": [1]}, "x"])
def test_an_export_whose_key_parts_are_not_a_dict_is_a_frontend_error(parts, tmp_path):
    """Found by the campaign: AttributeError ('list' object has no attribute 'get') escaped
    load_exported when the export's recorded key parts were damaged into a list or a string."""
    from softipu.frontends.errors import FrontendError

    net, opts, manifest = exported_linear(tmp_path / "e")
    (export,) = [v for k, v in manifest["extra"]["di"] if k == "export"]
    (row,) = [kv for kv in export["di"] if kv[0] == "parts"]
    row[1] = parts
    (tmp_path / "e" / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(FrontendError, match="description is damaged"):
        st.inference_model(net, opts).load_executable(tmp_path / "e")


@pytest.mark.parametrize("table", ["compute_sets", "functions"])
def test_a_huge_compute_set_or_function_id_is_refused_at_once(table, tmp_path):
    """Found by the campaign: a compute set id of 2**62 made the loader fill the graph's list with
    placeholders up to it (a hang, then memory exhaustion)."""
    _, _, manifest = exported_linear(tmp_path / "e")
    if table == "functions":  # an inference step has no function: add one naming the first program node
        manifest["functions"].append([0, "f", 0, manifest["programs"][0]])
    manifest[table][0][0] = 2**62
    (tmp_path / "e" / MANIFEST).write_text(json.dumps(manifest))
    with within(2.0), pytest.raises(ExecutableFormatError, match=f"{table[:-1].replace('_', ' ')} id .* out"):
        load_executable(tmp_path / "e")


def test_an_address_space_larger_than_the_hosts_memory_is_refused_before_the_engine_allocates(tmp_path):
    """Found by the campaign: a space size of 2**40 loaded, then Engine.from_executable raised
    MemoryError allocating 4 TiB."""
    folder = saved(tmp_path / "folder")
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["space_sizes"][0][1] = 2**40
    (folder / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ExecutableFormatError, match="would need 4398046511104 bytes"):
        load_executable(folder)


def test_a_step_field_of_the_wrong_type_is_a_format_error(tmp_path):
    """Found by the campaign (seed 0, input 4002): a step's sync_cycles damaged into a list loaded,
    then Engine.from_executable raised TypeError summing the step's cycles."""
    folder = saved(tmp_path / "folder")
    manifest = json.loads((folder / MANIFEST).read_text())
    fields = manifest["steps"]["fields"]
    manifest["steps"]["rows"][0][fields.index("sync_cycles")] = {"li": [{"tu": []}]}
    (folder / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ExecutableFormatError, match="sync_cycles is a list, not int"):
        load_executable(folder)


def test_a_variable_whose_initial_value_is_not_an_array_is_a_format_error(tmp_path):
    """Found by the campaign (seed 0, input 21918): a constant's initial value damaged into a nested
    list loaded, then the engine raised AttributeError ('list' object has no attribute 'size')."""
    g = sp.Graph(sp.targets.ipu_model(tiles=2))
    c = g.add_constant(sp.float32, (4,), np.arange(4, dtype=np.float32), name="c")
    y = g.add_variable(sp.float32, (4,), name="y")
    sp.ops.map_linearly(g, c)
    sp.ops.map_linearly(g, y)
    save_executable(sp.Engine(g, [P.Copy(c, y)]).executable, tmp_path / "e")
    manifest = json.loads((tmp_path / "e" / MANIFEST).read_text())
    (row,) = [v for v in manifest["variables"] if v[6] is not None]
    row[6] = {"li": [{"li": [1]}]}
    (tmp_path / "e" / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ExecutableFormatError, match="initial value is a list, not an array"):
        load_executable(tmp_path / "e")


def test_json_mutations_take_any_tree_earlier_mutations_left():
    """The harness's own bug (it stopped a campaign at an unknown input): a manifest whose
    ``arrays`` an earlier mutation made a dict or a string must still mutate, never raise."""
    import random

    fz = fuzz_module()
    for i in range(300):
        for arrays in ({"x": 1}, "abc", [], [1, {"shape": [2]}]):
            fz._mutate_json(random.Random(i), {"arrays": arrays, "steps": [1, 2]})


def test_npz_mutations_take_values_no_dtype_holds(tmp_path):
    """The harness's own bug (it stopped a campaign run): recasting a pool of strings such as
    '768' to uint8 raises in numpy; the mutation must still write an archive, never raise."""
    import random

    fz = fuzz_module()
    path = tmp_path / "arrays.npz"
    for i in range(200):
        np.savez(path, s=np.array(["768"]), f=np.array([1.5e300]))
        fz._rewrite_npz(random.Random(i), path, tmp_path)


def test_deep_nesting_mutations_reach_the_file_and_the_loader_refuses_them(tmp_path):
    """The harness's own bug: a 2000- or 100000-deep nesting was built as a Python tree that
    json.dumps cannot write (RecursionError, suppressed), so those mutations never reached a loader.
    They are now written as text; the loader must refuse them as a format error."""
    import random
    import shutil

    fz = fuzz_module()
    seed = saved(tmp_path / "seed")
    found = set()
    for i in range(400):
        folder = tmp_path / "case"
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(seed, folder)
        mutations = fz.mutate(random.Random(i), folder, tmp_path)
        last = re.match(r"deep nesting (\d+)", mutations[-1] if mutations else "")
        if last:  # (the last mutation: nothing overwrote it)
            depth = int(last[1])
            assert (folder / MANIFEST).read_text().count('{"li":[') >= depth
            if depth > 50:
                with pytest.raises(ExecutableFormatError):
                    load_executable(folder)
            found.add(depth)
        if {2000, 100000} <= found:
            break
    assert {2000, 100000} <= found


@pytest.mark.parametrize("size", [{"f": "inf"}, {"f": "2.5"}, -4, True])
def test_an_export_whose_recorded_input_shape_is_not_sizes_is_a_frontend_error(size, tmp_path):
    """Found by the campaign (seed 0, input 89045): an input's recorded shape damaged to hold inf
    raised OverflowError from load_exported (and 2.5 was read as 2)."""
    from softipu.frontends.errors import FrontendError

    net, opts, manifest = exported_linear(tmp_path / "e")
    (export,) = [v for k, v in manifest["extra"]["di"] if k == "export"]
    (signature,) = [v for k, v in export["di"] if k == "signature"]
    (leaves,) = [v for k, v in signature["di"] if k == "leaves"]
    (shape,) = [v for k, v in leaves["li"][0]["di"] if k == "shape"]
    shape["li"][1] = size
    (tmp_path / "e" / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(FrontendError, match="not a list of sizes"):
        st.inference_model(net, opts).load_executable(tmp_path / "e")
