"""Fuzz campaign for the executable and cache loaders (issue 18): mutated files must never run code,
never touch anything outside their folder, never hang, and always fail as a softipu error (or, in the
executable cache, as a miss that recompiles).

Three seeds are saved once: a graph-API executable (``save_executable``), a ``softipu.torch``
executable cache entry and an exported model (``export``). Each input copies one seed into a fresh
folder, applies one to three seeded mutations (bit flips, truncation, deleted or swapped JSON
values, wrong types, ``..`` and absolute paths, huge and negative sizes, run-length arrays that
would decode to terabytes, a pickle payload in the array file, symlinks and pipes in place of the
files, deep nesting) and calls the loader under a time bound:

* executable: ``load_executable`` then ``Engine.from_executable``;
* cache: ``ExecutableCache.load`` (a damaged entry must be a miss: ``None``);
* export: ``inference_model(...).load_executable`` (``FrontendError``).

Outcomes are counted as ``loaded`` (the mutation was harmless), ``softipu`` (a SoftIPUError),
``miss`` (the cache recompiles), ``other`` (any other exception: a bug), ``hang`` (over the time
bound), ``escaped`` (a file outside the case folder changed, or the pickle payload ran). One JSON
line with the counts and the first few reproducers of each bad kind.

    .venv/bin/python bench/fuzz_loaders.py --count 100000 --seconds 3600 --seed 0
"""

from __future__ import annotations

import gc
import io
import json
import os
import random
import shutil
import sys
import tempfile
import time
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _fuzz_common import Timeout, alarm_handler, bounded, campaign_parser  # noqa: E402

KINDS = ("executable", "cache", "export")
BAD = ("other", "hang", "escaped")
HUGE = (2**31, 2**40, 2**62, 2**63, 2**64 + 5, -1, -(2**40), 10**30)
DEEP = "<deep nesting>"  # marks where mutate() writes a nesting too deep for json.dumps
PATHS = ("..", "../..", "../../etc/passwd", "/etc/passwd", "/dev/zero", "a/../../b", "\x00", "~root")


class _Payload:
    """Pickles to a call that creates ``path``: if a loader ever unpickles, the campaign sees it."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.path, "w"))


# -- seeds ---------------------------------------------------------------------------------------
def make_seeds(root: Path) -> dict[str, Any]:
    """The three seed folders and what their loaders need."""
    import torch

    import softipu as sp
    import softipu.torch as st
    from softipu import program as P
    from softipu.compiler.serialize import save_executable
    from softipu.frontends.torch.cache import ExecutableCache

    g = sp.Graph(sp.targets.ipu_model(tiles=2))
    x = g.add_variable(sp.float32, (4,), name="x")
    y = g.add_variable(sp.float32, (4,), name="y")
    sp.ops.map_linearly(g, x)
    sp.ops.map_linearly(g, y)
    save_executable(sp.Engine(g, [P.Copy(x, y), P.Repeat(3, P.Copy(y, x))]).executable,
                    root / "seed-executable", {"note": "seed", "values": np.arange(2000, dtype=np.int32)})

    torch.manual_seed(0)
    net, inp = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU()), torch.randn(2, 4)
    target = sp.targets.ipu_model(tiles=4)
    opts = st.Options(target=target, executable_cache_dir=str(root / "seed-cache"))
    st.inference_model(net, opts)(inp)
    (entry,) = [p for p, _, _ in ExecutableCache.for_options(opts).entries()]
    export_opts = st.Options(target=target)
    st.inference_model(net, export_opts).export(root / "seed-export", inp)
    return {"executable": root / "seed-executable", "cache": entry, "export": root / "seed-export",
            "net": net, "options": export_opts}


def load(kind: str, folder: Path, seeds: dict[str, Any]) -> str:
    """Run the loader of ``kind`` on ``folder``: 'loaded' or 'miss', or raise."""
    import softipu as sp
    import softipu.torch as st
    from softipu.compiler.serialize import load_executable
    from softipu.frontends.torch.cache import ExecutableCache

    if kind == "executable":
        exe, graph, _ = load_executable(folder)
        sp.Engine.from_executable(exe, graph)
        return "loaded"
    if kind == "cache":
        found = ExecutableCache(folder.parent, 10**9).load(folder.name, seeds["net"])
        return "miss" if found is None else "loaded"
    st.inference_model(seeds["net"], seeds["options"]).load_executable(folder)
    return "loaded"


# -- mutations -----------------------------------------------------------------------------------
def _nodes(tree: Any, path: tuple = ()) -> list[tuple]:
    """Paths to every value of a JSON tree."""
    found = [path]
    if isinstance(tree, dict):
        for k, v in tree.items():
            found += _nodes(v, (*path, k))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            found += _nodes(v, (*path, i))
    return found


def _set(tree: Any, path: tuple, value: Any) -> Any:
    if not path:
        return value
    parent = tree
    for k in path[:-1]:
        parent = parent[k]
    parent[path[-1]] = value
    return tree


def _delete(tree: Any, path: tuple) -> Any:
    if not path:
        return {}
    parent = tree
    for k in path[:-1]:
        parent = parent[k]
    del parent[path[-1]]
    return tree


def _get(tree: Any, path: tuple) -> Any:
    for k in path:
        tree = tree[k]
    return tree


def _odd_value(rng: random.Random, tree: Any) -> Any:
    choices = [None, True, False, 0, 1, -1, 1.5, float("nan"), "", "x", [], {}, [[]], {"": None},
               rng.choice(HUGE), rng.choice(PATHS), {"f": "inf"}, {"a": rng.choice(HUGE)},
               {"t": rng.randrange(-3, 50)}, {"e": ["StepKind", "__class__"]}, {"e": ["os", "system"]},
               {"dt": "object"}, {"li": [{"tu": []}] * 3}, {"di": [[{"li": []}, 1]]}, {"p": -1},
               {"fn": 10**9}, {"cs": "x"}, {"s": None}, {"l": 99}, {"zz": 1}, list(range(rng.randrange(8)))]
    nodes = _nodes(tree)
    choices.append(json.loads(json.dumps(_get(tree, rng.choice(nodes)))))  # another subtree
    return rng.choice(choices)


def _mutate_json(rng: random.Random, tree: Any) -> tuple[Any, str]:
    nodes = _nodes(tree)
    extra = [p for p in nodes if p[:1] == ("extra",)]  # the frontends' part, past the format's checks
    path = rng.choice(extra if extra and rng.random() < 0.4 else nodes)
    action = rng.choice(("replace", "replace", "replace", "delete", "number", "deep", "huge_entry"))
    if action == "delete" and path:
        return _delete(tree, path), f"delete {list(path)}"
    if action == "number":
        numbers = [p for p in nodes if type(_get(tree, p)) is int]
        if numbers:
            p = rng.choice(numbers)
            value = rng.choice((*HUGE, _get(tree, p) + rng.choice((-1, 1)), 0))
            return _set(tree, p, value), f"number {list(p)} = {value}"
    if action == "deep":  # a marker that mutate() writes as the nesting (json.dumps cannot go so deep)
        depth = rng.choice((50, 2000, 100000))
        return _set(tree, path, f"{DEEP}{depth}"), f"deep nesting {depth} at {list(path)}"
    if action == "huge_entry" and isinstance(tree, dict) and isinstance(tree.get("arrays"), list) \
            and tree["arrays"]:  # (an earlier mutation may have made it a dict or a string)
        i = rng.randrange(len(tree["arrays"]))
        entry = tree["arrays"][i]
        if isinstance(entry, dict):
            entry["shape"] = [rng.choice(HUGE)] + ([rng.choice(HUGE)] if rng.random() < 0.3 else [])
            return tree, f"arrays[{i}].shape = {entry['shape']}"
    value = _odd_value(rng, tree)
    return _set(tree, path, value), f"replace {list(path)} = {str(value)[:60]}"


def _dumps(tree: Any) -> str:
    """``tree`` as JSON text, a ``deep`` marker written as that many nested ``{"li": [...]}``."""
    text = json.dumps(tree)
    start = text.find(f'"{DEEP}')
    if start < 0:
        return text
    end = text.index('"', start + 1)
    depth = int(text[start + 1 + len(DEEP):end])
    return text[:start] + '{"li":[' * depth + "1" + "]}" * depth + text[end + 1:]


def _rewrite_npz(rng: random.Random, path: Path, outside: Path) -> str:
    with np.load(path, allow_pickle=False) as npz:
        pools = {k: npz[k] for k in npz.files}
    action = rng.choice(("object", "dtype", "2d", "drop", "extra", "short"))
    key = rng.choice(sorted(pools)) if pools else "i4"
    if action == "object":
        pools[key] = np.array([_Payload(str(outside / "pwned")), 1], dtype=object)
    elif action == "dtype":
        try:  # (values that do not fit the new dtype: numpy refuses some casts outright)
            pools[key] = pools.get(key, np.zeros(1)).astype(rng.choice(("<f8", "<i8", "|u1", "<c8", "<U3")))
        except (OverflowError, ValueError, TypeError):
            pools[key] = np.zeros(1, "|u1")
    elif action == "2d":
        pools[key] = np.zeros((2, 3), pools.get(key, np.zeros(1)).dtype)
    elif action == "drop":
        pools.pop(key, None)
    elif action == "extra":
        pools["../../evil"] = np.zeros(3)
    else:
        pools[key] = pools.get(key, np.zeros(1))[: rng.randrange(2)]
    buf = io.BytesIO()
    if action == "object":  # np.savez pickles object arrays: exactly what a hostile file would hold
        with zipfile.ZipFile(buf, "w") as z:
            for k, v in pools.items():
                with z.open(f"{k}.npy", "w") as f:
                    np.lib.format.write_array(f, v, allow_pickle=True)
    else:
        np.savez(buf, **pools)
    path.write_bytes(buf.getvalue())
    return f"npz {action} {key}"


def _mutate_bytes(rng: random.Random, path: Path) -> str:
    data = bytearray(path.read_bytes())
    action = rng.choice(("flip", "flip", "truncate", "empty", "garbage"))
    if action == "flip" and data:
        for _ in range(rng.randrange(1, 9)):
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
    elif action == "truncate":
        data = data[: rng.randrange(len(data) + 1)]
    elif action == "empty":
        data = bytearray()
    else:
        data = bytearray(rng.randbytes(rng.randrange(1, 200)))
    path.write_bytes(bytes(data))
    return f"{action} {path.name}"


def _mutate_file(rng: random.Random, folder: Path, outside: Path) -> str:
    name = rng.choice(("manifest.json", "arrays.npz"))
    path = folder / name
    action = rng.choice(("symlink_out", "symlink_dev", "fifo", "dir", "delete"))
    if path.is_dir() and not path.is_symlink():  # made a folder by an earlier mutation
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
    if action == "symlink_out":
        path.symlink_to(outside / name)
    elif action == "symlink_dev":
        path.symlink_to(rng.choice(("/dev/null", "/proc/self/environ")))  # not /dev/zero: unbounded
    elif action == "fifo":
        os.mkfifo(path)
    elif action == "dir":
        path.mkdir()
    return f"{action} {name}"


def mutate(rng: random.Random, folder: Path, outside: Path) -> list[str]:
    done = []
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        manifest, arrays = folder / "manifest.json", folder / "arrays.npz"
        what = rng.random()
        plain = manifest.is_file() and not manifest.is_symlink()
        if what < 0.55 and plain:
            try:
                tree = json.loads(manifest.read_text())
            except (ValueError, UnicodeDecodeError, RecursionError):  # (an earlier deep nesting)
                continue
            tree, said = _mutate_json(rng, tree)
            manifest.write_text(_dumps(tree))
            done.append(said)
        elif what < 0.75 and arrays.is_file() and not arrays.is_symlink():
            try:
                done.append(_rewrite_npz(rng, arrays, outside))
            except (ValueError, OSError, zipfile.BadZipFile, EOFError, NotImplementedError):
                continue  # an earlier mutation left arrays the mutator cannot read (e.g. an unknown
                # zip compression method, after a bit flip): the loader gets it as it is
        elif what < 0.93:
            plain_files = [p for p in (manifest, arrays) if p.is_file() and not p.is_symlink()]
            target = rng.choice(plain_files or [None])
            if target is not None:
                done.append(_mutate_bytes(rng, target))
        else:
            done.append(_mutate_file(rng, folder, outside))
    return done


# -- the campaign --------------------------------------------------------------------------------
def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.lstat().st_mtime_ns, p.lstat().st_size) for p in sorted(folder.rglob("*"))}


def run_one(kind: str, seeds: dict[str, Any], rng: random.Random, work: Path, limit: float
            ) -> tuple[str, list[str], str]:
    """(outcome, mutations, detail) of one input."""
    from softipu.errors import SoftIPUError

    case = work / "case"
    shutil.rmtree(case, ignore_errors=True)
    folder = case / seeds[kind].name
    shutil.copytree(seeds[kind], folder)
    outside = work / "outside"
    mutations = mutate(rng, folder, outside)
    before = _snapshot(outside)
    loaded, exc, hang = bounded(lambda: load(kind, folder, seeds), limit)
    if exc is None or isinstance(exc, Timeout):
        outcome, detail = loaded or "hang", ""
    elif isinstance(exc, SoftIPUError):
        outcome, detail = "softipu", f"{type(exc).__name__}: {str(exc)[:160]}"
    else:
        outcome, detail = "other", f"{type(exc).__name__}: {str(exc)[:200]}"
    if hang:
        outcome, detail = "hang", f"over {limit} CPU s ({outcome}: {detail})"
    if outcome == "loaded" and any(m.startswith("symlink") for m in mutations):
        outcome, detail = "escaped", "loaded through a symlink out of its folder"
    if _snapshot(outside) != before or (outside / "pwned").exists():
        outcome, detail = "escaped", f"files outside changed ({outcome}: {detail})"
        (outside / "pwned").unlink(missing_ok=True)
    return outcome, mutations, detail


def campaign(count: int, seconds: float, seed: int, limit: float = 5.0, kinds: tuple[str, ...] = KINDS,
             first: int = 0) -> dict[str, Any]:
    """Run up to ``count`` inputs for at most ``seconds``; the counts and a few reproducers."""
    counts: dict[str, Counter] = {k: Counter() for k in kinds}
    examples: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="softipu-fuzz-") as tmp, alarm_handler():
        work = Path(tmp)
        seeds = make_seeds(work)
        gc.freeze()  # torch's and the seeds' objects: no collection of an input walks them again
        outside = work / "outside"
        outside.mkdir()
        for name in ("manifest.json", "arrays.npz"):  # what an outward symlink points at
            shutil.copy(seeds["executable"] / name, outside / name)
        end = time.monotonic() + seconds
        tried = first
        count += first
        while tried < count and time.monotonic() < end:
            kind = kinds[tried % len(kinds)]
            rng = random.Random(f"{seed}-{tried}")  # each input reproducible alone: --seed S --first I
            outcome, mutations, detail = run_one(kind, seeds, rng, work, limit)
            counts[kind][outcome] += 1
            tried += 1
            if outcome in BAD and sum(e["outcome"] == outcome for e in examples) < 5:
                examples.append({"kind": kind, "outcome": outcome, "mutations": mutations, "detail": detail,
                                 "input": tried - 1})
    total = sum(counts.values(), Counter())
    return {"bench": "fuzz_loaders", "seed": seed, "tried": tried - first,
            "softipu_errors": total["softipu"], "cache_misses": total["miss"], "loaded": total["loaded"],
            "other_exceptions": total["other"], "hangs": total["hang"], "escaped": total["escaped"],
            "by_kind": {k: dict(c) for k, c in counts.items()}, "examples": examples}


def main(argv: list[str] | None = None) -> int:
    parser = campaign_parser(__doc__)
    parser.add_argument("--kinds", default=",".join(KINDS))
    args = parser.parse_args(argv)
    result = campaign(args.count, args.seconds, args.seed, args.limit, tuple(args.kinds.split(",")),
                      args.first)
    print(json.dumps(result))
    return 1 if any(result[k] for k in ("other_exceptions", "hangs", "escaped")) else 0


if __name__ == "__main__":
    sys.exit(main())
