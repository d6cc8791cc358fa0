"""Determinism (design.md principle 6, issue 18): the same program gives the same bits on every run,
every engine, every host thread count (``$SOFTIPU_HOST_THREADS=1`` forces one), every process,
whether the executable was saved and loaded, and however many device iterations one call batches.

The program mixes what could depend on the host: random numbers, a matmul big enough to be cut
into pieces, reductions, a softmax, stochastic rounding to float16 and dropout. Every check
compares the bytes of every output (never a tolerance)."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

import softipu as sp
from softipu import program as P
from softipu.codelets import host
from softipu.compiler.serialize import load_executable, save_executable
from softipu.engine import chains, fast, reductions

TARGET = sp.targets.ipu_model(tiles=8, bytes_per_tile=256 * 1024)
OPTIONS = {"prng.enableStochasticRounding": True, "prng.seed": 11}


def build():
    """(graph, program, inputs, outputs): every kind of work whose result could depend on the host."""
    g = sp.Graph(TARGET)
    prog = P.Sequence()
    a = g.add_variable(sp.float32, (4, 48, 96), name="a")
    b = g.add_variable(sp.float32, (96, 80), name="b")
    sp.ops.map_linearly(g, a)
    sp.ops.map_linearly(g, b)
    noise = sp.ops.uniform(g, prog, shape=(4, 48, 80), low=-1.0, high=1.0, seed=3)
    c = sp.ops.add(g, sp.ops.matmul(g, a, b, prog), noise, prog)
    total = sp.ops.reduce_sum(g, c, prog, dims=(0, 2))
    probs = sp.ops.softmax(g, c, prog)
    half = sp.ops.cast(g, probs, sp.float16, prog)  # stochastically rounded (OPTIONS)
    dropped = sp.ops.dropout(g, c, prog, p=0.25, seed=5)
    return g, prog, (a, b), (c, total, probs, half, dropped)


def inputs(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((4, 48, 96), np.float32), rng.standard_normal((96, 80), np.float32)


def digests(eng: sp.Engine, ins, outs, runs: int = 2) -> list[str]:
    """The SHA-256 of every output's bytes after each of ``runs`` runs."""
    for t, v in zip(ins, inputs(), strict=True):
        eng.write_tensor(t, v)
    found = []
    for _ in range(runs):
        eng.run(0)
        found.append(hashlib.sha256(b"".join(eng.read_tensor(o).tobytes() for o in outs)).hexdigest())
    return found


def fresh_digests(options=OPTIONS, runs: int = 2) -> list[str]:
    g, prog, ins, outs = build()
    return digests(sp.Engine(g, [prog], options=options), ins, outs, runs)


def test_same_bits_on_every_run_and_every_engine():
    g, prog, ins, outs = build()
    first = digests(sp.Engine(g, [prog], options=OPTIONS), ins, outs, runs=3)
    again = digests(sp.Engine(g, [prog], options=OPTIONS), ins, outs, runs=3)
    assert first == again
    rebuilt = fresh_digests()
    assert rebuilt == first[:2]
    assert fresh_digests({**OPTIONS, "prng.seed": 12}) != rebuilt  # the check can fail


def test_same_bits_with_one_host_thread_and_with_every_piece_shared(monkeypatch):
    monkeypatch.setattr(host, "idle_cores", lambda: 0)  # everything on the calling thread
    alone = fresh_digests(runs=4)
    shared = []
    real = host._share
    monkeypatch.setattr(host, "_share", lambda jobs, helpers: (shared.append(len(jobs)), real(jobs, helpers)))
    monkeypatch.setattr(host, "idle_cores", lambda: 3)  # helpers take what they can
    monkeypatch.setattr(host, "PARALLEL_WORK", 1)  # batches cut into vertex ranges...
    monkeypatch.setattr(host, "_PIECE_WORK", 1)
    monkeypatch.setattr(fast, "SIDE_BY_SIDE_SECONDS", 0.0)  # ... and groups run side by side
    monkeypatch.setattr(chains, "FUSE_MATMULS", False)
    monkeypatch.setattr(reductions, "FUSE_REDUCTIONS", False)
    together = fresh_digests(runs=4)  # the fast engine tries sharing a compute set from its 3rd run
    assert shared, "nothing was shared out: the test checks nothing"
    monkeypatch.undo()
    assert together == alone == fresh_digests(runs=4)  # and the default (fused) engine agrees


SCRIPT = """
import sys, json
sys.path.insert(0, {tests!r})
import test_determinism as t
from softipu.codelets import host
print(json.dumps({{"cores": host.CORES, "digests": t.fresh_digests()}}))
"""


def in_processes(*threads: str) -> list[dict]:
    """What the script prints in one fresh process per ``$SOFTIPU_HOST_THREADS`` value, run at once."""
    script = SCRIPT.format(tests=str(Path(__file__).parent))
    running = [subprocess.Popen([sys.executable, "-c", script], env={**os.environ, host.HOST_THREADS: n},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for n in threads]
    found = []
    for p in running:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
        found.append(json.loads(out.strip().splitlines()[-1]))
    return found


def test_same_bits_in_other_processes_with_one_and_many_host_threads():
    one, many = in_processes("1", "4")
    assert one["cores"] == 1 and many["cores"] == 4  # $SOFTIPU_HOST_THREADS is what the engine uses
    assert one["digests"] == many["digests"] == fresh_digests()


def test_a_bad_host_thread_count_is_refused():
    env = {**os.environ, host.HOST_THREADS: "0"}
    done = subprocess.run([sys.executable, "-c", "import softipu"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode != 0 and "SOFTIPU_HOST_THREADS must be a whole number >= 1" in done.stderr


def test_same_bits_from_a_saved_and_loaded_executable(tmp_path):
    g, prog, ins, outs = build()
    eng = sp.Engine(g, [prog], options=OPTIONS)
    want = digests(eng, ins, outs)
    save_executable(eng.executable, tmp_path / "exe")
    exe, graph, _ = load_executable(tmp_path / "exe")
    loaded = sp.Engine.from_executable(exe, graph, options=OPTIONS)

    def same(t):  # the loaded graph's tensor at the same addresses
        return sp.Tensor(graph, t.dtype, t.shape, t.offset, t.strides, t.index, t.slabs)

    assert digests(loaded, [same(t) for t in ins], [same(t) for t in outs]) == want


# -- device-iteration batching (softipu.torch; imported here, so that the processes above need no torch)
def net():
    import torch

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2 = torch.nn.Linear(6, 16), torch.nn.Linear(16, 3)

        def forward(self, x, y):
            out = self.fc2(torch.relu(self.fc1(x)))
            return out, torch.nn.functional.cross_entropy(out, y)

    torch.manual_seed(0)
    return Net()


def batches(n: int, b: int = 4):
    import torch

    gen = torch.Generator().manual_seed(1)
    return torch.randn(n * b, 6, generator=gen), torch.randint(0, 3, (n * b,), generator=gen)


def options(iterations: int):
    import softipu.torch as st

    return st.Options(target=TARGET, device_iterations=iterations, output_mode=st.OutputMode.ALL)


def test_inference_same_bits_whether_one_call_runs_four_iterations_or_four_calls_run_one():
    import torch

    import softipu.torch as st

    module = net()
    x, y = batches(4)
    together = st.inference_model(module, options(4))(x, y)[0]
    one = st.inference_model(module, options(1))
    apart = torch.cat([one(x[i * 4 : i * 4 + 4], y[i * 4 : i * 4 + 4])[0] for i in range(4)])
    assert together.numpy().tobytes() == apart.numpy().tobytes()


def test_training_same_bits_whether_one_call_runs_two_steps_or_two_calls_run_one():
    import torch

    import softipu.torch as st

    net_a = net()
    net_b = copy.deepcopy(net_a)
    x, y = batches(2)
    st.training_model(net_a, torch.optim.SGD(net_a.parameters(), lr=0.1), options(2))(x, y)
    model_b = st.training_model(net_b, torch.optim.SGD(net_b.parameters(), lr=0.1), options(1))
    model_b(x[:4], y[:4])
    model_b(x[4:], y[4:])
    for p, q in zip(net_a.parameters(), net_b.parameters(), strict=True):
        assert p.detach().numpy().tobytes() == q.detach().numpy().tobytes()
    assert not torch.equal(net_a.fc1.weight, net().fc1.weight)  # it trained
