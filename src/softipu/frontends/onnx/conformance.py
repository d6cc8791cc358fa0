"""ONNX's backend node tests on a simulated IPU, and the coverage table they make.

``python -m softipu.frontends.onnx.conformance [--out docs/onnx_coverage.md] [--ops Relu,Add]``
generates every node test the installed ``onnx`` package ships (``onnx.backend.test.case.node``:
the model, its inputs and the expected outputs), runs each through :class:`SoftIPUBackend` and
writes the table: the figure is the share of default-domain node tests with float, integer or
boolean data that pass (ONNX's own tolerances). Tests with no IPU meaning (strings, sequences,
optional and map types, bfloat16/float8/complex/4-bit data, other domains) are listed as excluded
with the reason. One failing test never stops the run; each has a time limit.
"""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import signal
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.numpy_helper

from softipu.frontends.onnx.backend import SoftIPUBackend
from softipu.frontends.onnx.lower import DEVICE_DTYPES

__all__ = ["Outcome", "collect", "run_case", "main", "excluded_reason"]

LIMIT_S = 60
_RANDOM = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Bernoulli",
                     "Multinomial"})


@dataclass(frozen=True, slots=True)
class Outcome:
    name: str
    op: str
    status: str  # "pass", "fail", "excluded"
    reason: str = ""
    seconds: float = 0.0


def collect(modules: list[str] | None = None) -> list[Any]:
    """The node test cases (``TestCase`` records), from all of onnx's node test modules or the named
    ones (module names such as ``"relu"``; importing a module generates its cases)."""
    import onnx.backend.test.case.node as node_cases  # noqa: PLC0415

    names = modules if modules is not None else [m.name for m in pkgutil.iter_modules(node_cases.__path__)]
    for name in names:
        importlib.import_module(f"onnx.backend.test.case.node.{name}")
    return list(node_cases._NodeTestCases)  # noqa: SLF001 - where onnx keeps what expect() made


def _op_of(case: Any) -> str:
    ops = [n for n in case.model.graph.node]
    return ops[0].op_type if ops else "?"


def _value_reason(vi: onnx.ValueInfoProto) -> str:
    kind = vi.type.WhichOneof("value")
    if kind != "tensor_type":
        return f"{kind.replace('_type', '')} values (no IPU meaning)"
    elem = vi.type.tensor_type.elem_type
    if elem not in DEVICE_DTYPES:
        return f"{onnx.TensorProto.DataType.Name(elem)} data (no IPU dtype)"
    return ""


def excluded_reason(case: Any) -> str:
    """Why a test is outside the figure ('' when it counts)."""
    model = case.model
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx"):
            return f"domain {node.domain} (not the default domain)"
    for node in model.graph.node:
        if node.op_type in _RANDOM or (node.op_type == "Dropout" and len(node.input) > 2 and node.input[2]):
            return "random numbers: the expected values are numpy's generator's (the IPU's differs)"
    for vi in [*model.graph.input, *model.graph.output]:
        why = _value_reason(vi)
        if why:
            return why
    return ""


class _Timeout(Exception):
    pass


def _alarm(signum: int, frame: Any) -> None:
    raise _Timeout(f"took longer than {LIMIT_S} s")


def _compare(expected: list[np.ndarray], got: tuple, rtol: float, atol: float) -> str:
    if len(got) < len(expected):
        return f"{len(got)} outputs, expected {len(expected)}"
    for k, (want, have) in enumerate(zip(expected, got, strict=False)):
        want = onnx.numpy_helper.to_array(want) if isinstance(want, onnx.TensorProto) else np.asarray(want)
        have = np.asarray(have)
        if want.shape != have.shape:
            return f"output {k}: shape {have.shape}, expected {want.shape}"
        if want.dtype != have.dtype:
            return f"output {k}: dtype {have.dtype}, expected {want.dtype}"
        try:
            if want.dtype.kind in "fc":
                np.testing.assert_allclose(have, want, rtol=rtol, atol=atol)
            else:
                np.testing.assert_array_equal(have, want)
        except AssertionError as exc:
            lines = [ln for ln in str(exc).splitlines() if ln.strip()]
            return f"output {k}: values differ ({'; '.join(lines[1:3])})"
    return ""


def _typed(x: Any, vi: onnx.ValueInfoProto) -> np.ndarray:
    """A test input as the declared type (some generated inputs are object arrays; the .pb files
    ONNX ships hold them typed)."""
    if isinstance(x, onnx.TensorProto):
        x = onnx.numpy_helper.to_array(x)
    x = np.asarray(x)
    if x.dtype == object:
        x = x.astype(onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type))
    return x


def run_case(case: Any) -> Outcome:
    """Run one test case; never raises."""
    op = _op_of(case)
    why = excluded_reason(case)
    if why:
        return Outcome(case.name, op, "excluded", why)
    start = time.perf_counter()
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(LIMIT_S)
    try:
        rep = SoftIPUBackend.prepare(case.model)
        declared = [vi for vi in case.model.graph.input
                    if vi.name not in {t.name for t in case.model.graph.initializer}]
        for inputs, outputs in case.data_sets:
            got = rep.run([_typed(x, vi) for x, vi in zip(inputs, declared, strict=False)])
            problem = _compare(list(outputs), got, case.rtol, case.atol)
            if problem:
                return Outcome(case.name, op, "fail", problem, time.perf_counter() - start)
        return Outcome(case.name, op, "pass", "", time.perf_counter() - start)
    except (Exception, _Timeout) as exc:  # noqa: BLE001 - every failure is a table row
        text = str(exc).strip().splitlines()
        reason = f"{type(exc).__name__}: {text[0] if text else ''}"
        if len(text) > 1 and text[0].endswith(":"):
            reason += " " + " ".join(t.strip() for t in text[1:3])
        return Outcome(case.name, op, "fail", reason[:300], time.perf_counter() - start)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _table(outcomes: list[Outcome]) -> str:
    counted = [o for o in outcomes if o.status != "excluded"]
    passed = sum(o.status == "pass" for o in counted)
    share = passed / len(counted) if counted else 0.0
    lines = [
        "# ONNX backend node tests on a simulated IPU",
        "",
        "Generated by `python -m softipu.frontends.onnx.conformance` (do not edit by hand) from the node "
        f"tests of onnx {onnx.__version__}, each run through `softipu.frontends.onnx.backend.SoftIPUBackend` "
        "and compared with ONNX's expected outputs at the test's own tolerances.",
        "",
        f"**{passed} of {len(counted)} default-domain node tests with float, integer or boolean data pass "
        f"({100 * share:.1f}%)**; {len(outcomes) - len(counted)} more are excluded (reasons below).",
        "",
        "## By op",
        "",
        "| op | pass | fail | excluded |",
        "|---|---:|---:|---:|",
    ]
    by_op: dict[str, Counter] = defaultdict(Counter)
    for o in outcomes:
        by_op[o.op][o.status] += 1
    for op in sorted(by_op):
        c = by_op[op]
        lines.append(f"| {op} | {c['pass']} | {c['fail']} | {c['excluded']} |")
    lines += ["", "## Failing tests", "", "| test | op | why |", "|---|---|---|"]
    lines += [f"| {o.name} | {o.op} | {_cell(o.reason)} |" for o in sorted(counted, key=lambda o: o.name)
              if o.status == "fail"]
    lines += ["", "## Excluded tests", "", "| test | op | why |", "|---|---|---|"]
    lines += [f"| {o.name} | {o.op} | {_cell(o.reason)} |" for o in sorted(outcomes, key=lambda o: o.name)
              if o.status == "excluded"]
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/onnx_coverage.md", help="the table to write ('' for none)")
    parser.add_argument("--modules", default="", help="comma-separated onnx node test modules (default: all)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    modules = [m for m in args.modules.split(",") if m] or None
    np.seterr(all="ignore")
    cases = collect(modules)
    outcomes = []
    for case in cases:
        outcome = run_case(case)
        outcomes.append(outcome)
        if not args.quiet and outcome.status == "fail":
            print(f"FAIL {outcome.name}: {outcome.reason}", file=sys.stderr)
    counted = [o for o in outcomes if o.status != "excluded"]
    passed = sum(o.status == "pass" for o in counted)
    print(json.dumps({"bench": "onnx_conformance", "passed": passed, "counted": len(counted),
                      "excluded": len(outcomes) - len(counted),
                      "share": round(passed / max(len(counted), 1), 4)}))
    if args.out:
        Path(args.out).write_text(_table(outcomes))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
