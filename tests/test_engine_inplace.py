"""A user codelet whose body is one elementwise assignment runs in place (engine/inplace.py):
the same bits as its own body run by numpy (the oracle here), on the fast engine and the
reference; bodies that could round or alias differently keep their own code."""

from __future__ import annotations

import numpy as np
import pytest

import softipu as sp
from codelets_for_tests import AddOne
from softipu import program as P
from softipu.engine.fast import GroupRunner
from softipu.engine.inplace import InPlace, plan

K = 0.5  # a module-level name: not a field, so a body using it is not taken


class Mixed(sp.Vertex):
    """Several ufuncs and operators, two operands that are operations (one gets its own array)."""

    x = sp.Input(sp.float32)
    z = sp.Input(sp.float32)
    y = sp.Output(sp.float32)

    @staticmethod
    def compute(x, z, y):
        """A docstring is allowed."""
        y[:] = (np.exp(-x) * 3 - z / 7) * np.sqrt(np.abs(z) + 1) + np.maximum(x, z) % 2.5


class Narrows(sp.Vertex):
    """float32 arithmetic stored as float16: an intermediate kept in y would round."""

    x = sp.Input(sp.float32)
    y = sp.Output(sp.float16)

    @staticmethod
    def compute(x, y):
        y[...] = x * 3 + 1


class UsesOut(sp.Vertex):
    x = sp.Input(sp.float32)
    y = sp.InOut(sp.float32)

    @staticmethod
    def compute(x, y):
        y[...] = y * 2 + x


class Power(sp.Vertex):
    x = sp.Input(sp.float32)
    y = sp.Output(sp.float32)

    @staticmethod
    def compute(x, y):
        y[...] = x ** 2 + 1


class Global(sp.Vertex):
    x = sp.Input(sp.float32)
    y = sp.Output(sp.float32)

    @staticmethod
    def compute(x, y):
        y[...] = x * K


class TwoStatements(sp.Vertex):
    x = sp.Input(sp.float32)
    y = sp.Output(sp.float32)

    @staticmethod
    def compute(x, y):
        t = x + 1
        y[...] = t * 2


def _run(codelet, inputs: dict[str, np.ndarray], out: str, out_dtype, reference: bool = False):
    n = next(iter(inputs.values())).size
    g = sp.Graph(sp.targets.ipu_model(tiles=4))
    fields = {name: g.add_variable(sp.float32, (n,), name=name) for name in inputs}
    fields[out] = g.add_variable(out_dtype, (n,), name=out)
    cs = g.add_compute_set("c")
    for t in fields.values():
        sp.ops.map_linearly(g, t)
    step = n // 4
    for tile in range(4):
        part = slice(tile * step, (tile + 1) * step)
        g.add_vertex(cs, codelet, {k: t[part] for k, t in fields.items()}, tile=tile)
    eng = sp.Engine(g, [P.Execute(cs)], {"engine.reference": reference})
    for name, values in inputs.items():
        eng.write_tensor(fields[name], values)
    eng.run(0)
    return eng, eng.read_tensor(fields[out])


def _oracle(codelet, inputs: dict[str, np.ndarray], out: str, out_dtype) -> np.ndarray:
    """The codelet's own body on whole numpy arrays."""
    result = np.zeros(next(iter(inputs.values())).size, out_dtype)
    codelet.compute(**inputs, **{out: result})
    return result


def _runners(eng: sp.Engine) -> list[GroupRunner]:
    return [job.func.__self__ for r in eng._interpreter._runners.values() for job in r.jobs
            if isinstance(getattr(job.func, "__self__", None), GroupRunner)]


@pytest.mark.parametrize("reference", [False, True], ids=["fast", "reference"])
def test_mixed_body_runs_in_place_with_the_bodys_bits(reference):
    rng = np.random.default_rng(0)
    inputs = {"x": rng.standard_normal(4096).astype(np.float32) * 4,
              "z": rng.standard_normal(4096).astype(np.float32) * 4}
    eng, got = _run(Mixed, inputs, "y", sp.float32, reference)
    assert got.tobytes() == _oracle(Mixed, inputs, "y", np.float32).tobytes()
    if not reference:
        runners = _runners(eng)
        assert runners and all(isinstance(r.compute, InPlace) for r in runners)


def test_add_one_runs_in_place():
    x = np.arange(4096, dtype=np.float32) * 0.37
    eng, got = _run(AddOne, {"x": x}, "y", sp.float32)
    assert got.tobytes() == (x + np.float32(1)).tobytes()
    runners = _runners(eng)
    assert runners and all(isinstance(r.compute, InPlace) for r in runners)


@pytest.mark.parametrize("codelet", [UsesOut, Power, Global, TwoStatements], ids=lambda c: c.__name__)
def test_bodies_that_are_not_taken(codelet):
    assert plan(codelet, set(codelet.fields)) is None


def test_a_narrowing_output_keeps_the_codelets_own_code():
    """x * 3 + 1 rounded once to float16, not x * 3 rounded first."""
    x = np.random.default_rng(1).standard_normal(4096).astype(np.float32) * 1000
    eng, got = _run(Narrows, {"x": x}, "y", sp.float16)
    runners = _runners(eng)
    assert runners and not any(isinstance(r.compute, InPlace) for r in runners)
    assert got.tobytes() == _oracle(Narrows, {"x": x}, "y", np.float16).tobytes()


def test_an_output_sharing_memory_with_an_input_keeps_the_codelets_own_code():
    body = plan(Mixed, set(Mixed.fields))
    buf = np.arange(8, dtype=np.float32)
    assert body is not None and not body.fits({"x": buf[:4], "z": buf[4:], "y": buf[2:6]})
    assert body.fits({"x": buf[:4], "z": buf[4:], "y": np.zeros(4, np.float32)})
