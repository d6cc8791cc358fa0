"""PyTorch's own OpInfo samples run through softipu: how much of ``op_db`` gives eager's answers.

For each OpInfo of ``torch.testing._internal.common_methods_invocations.op_db`` the sweep takes
the first few samples of one dtype (float32, else int64, else bool), wraps the call of the op on
a sample in a one-op module and runs it through :func:`softipu.torch.inference_model` on a small
IPU model: ``torch.export``, Core ATen, the lowerings, the engine, as a user's model goes. Each
result is compared with eager PyTorch: floats within ``rtol=1e-4, atol=1e-5`` (NaNs in the same
places), integers and booleans exactly, dtypes and shapes always. Random ops (eager ran an ATen
op tagged ``nondeterministic_seeded``) and ops whose values are undefined (``empty``) are
compared by shape and dtype only.

Each op gets one :class:`OpResult`; its status is one of :class:`Status`. The full sweep takes
about a quarter of an hour on one core, so ``python -m softipu.frontends.torch.opinfo >
docs/opinfo_results.json`` stores it and ``python -m softipu.frontends.torch.coverage`` renders
the table of ``docs/torch_coverage.md`` from that file; ``tests/test_frontend_opinfo.py`` reruns a
fixed subset of ops against it. ``--dtypes int64`` sweeps integer samples instead (not stored).

>>> from softipu.frontends.torch.opinfo import opinfos, run_op
>>> run_op(opinfos(["abs"])[0]).status
<Status.PASSED: 'passed'>
"""

from __future__ import annotations

import argparse
import enum
import json
import sys
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from softipu.frontends.errors import ExportError, UnsupportedOpsError
from softipu.frontends.torch.export import _DATA_DEPENDENT
from softipu.frontends.torch.options import Options
from softipu.frontends.torch.runtime import inference_model
from softipu.target import ipu_model

__all__ = ["OpResult", "Status", "opinfos", "run_op", "sweep", "to_json", "from_json", "full_name",
           "DTYPES"]

SAMPLES_PER_OP = 3
MAX_ELEMENTS = 100_000
RTOL, ATOL = 1e-4, 1e-5
# float16 samples: about two fp16 ulps (eager rounds once per op as the IPU does; the order of
# accumulation differs), so a float16 result is judged at float16's own precision.
HALF_RTOL, HALF_ATOL = 2e-3, 1e-3
# Memory per tile is not what the sweep measures: a roomy tile keeps large samples compiling.
TARGET = ipu_model(tiles=4, bytes_per_tile=1 << 20)
DTYPES = (torch.float32, torch.int64, torch.bool)  # an op's samples are of the first it supports
# Data-dependent ops softipu refuses by design (export.py's list): a skip, not a missing lowering.
# ``torch::sym_ite`` is the symbolic if-then-else an export keeps beside ``.item()`` when a size
# depends on a tensor's value (``narrow`` with a tensor start): data-dependent too.
_REFUSED = (*_DATA_DEPENDENT, "torch::sym_ite")
# Ops whose results are uninitialised memory: only shape and dtype mean anything.
_UNDEFINED_VALUES = {"empty", "empty_like", "empty_strided", "empty_permuted", "new_empty",
                     "new_empty_strided"}


class Status(enum.Enum):
    """An op's result: *passed* (every sample softipu ran matched eager), *partial* (some did),
    *failed* (none did: wrong results or errors), *unsupported* (softipu listed ops it cannot
    lower), *export-failed* (``torch.export`` itself could not capture any sample: not
    softipu's doing) and *skipped* (no usable sample: dtypes, sizes, complex values, shapes that
    depend on the data)."""

    PASSED = "passed"
    PARTIAL = "partial"
    FAILED = "failed"
    UNSUPPORTED = "unsupported"
    EXPORT_FAILED = "export-failed"
    SKIPPED = "skipped"


class _Outcome(enum.Enum):
    """One sample's result."""

    PASS = "pass"
    WRONG = "wrong result"
    ERROR = "error"
    UNSUPPORTED = "unsupported"
    EXPORT_FAILED = "export failed"
    SKIP = "skipped"


@dataclass(frozen=True, slots=True)
class OpResult:
    """One OpInfo's row: ``passed`` of ``total`` samples matched eager (``total`` counts the
    samples that eager ran and torch.export captured); ``reason`` is the first failure of the
    kind that decided ``status``; ``missing`` lists the ATen ops softipu said it cannot lower."""

    name: str
    status: Status
    dtype: str = ""
    passed: int = 0
    total: int = 0
    reason: str = ""
    missing: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not 0 <= self.passed <= self.total:
            raise ValueError(f"OpResult {self.name}: passed={self.passed} must be within "
                             f"0..total={self.total}")
        if (self.status is Status.PASSED) != (self.total > 0 and self.passed == self.total):
            raise ValueError(f"OpResult {self.name}: status {self.status.value} but {self.passed} of "
                             f"{self.total} samples passed")


def opinfos(names: Iterable[str] | None = None) -> list[Any]:
    """The OpInfos of ``op_db`` (all, or those whose full name is in ``names``), in op_db's order.

    A full name is ``name`` or ``name.variant_test_name``.
    """
    from torch.testing._internal.common_methods_invocations import op_db  # noqa: PLC0415 - slow

    if names is None:
        return list(op_db)
    wanted = set(names)
    found = [o for o in op_db if full_name(o) in wanted]
    unknown = wanted - {full_name(o) for o in found}
    if unknown:
        raise KeyError(f"no OpInfo named {sorted(unknown)}")
    return found


def full_name(opinfo: Any) -> str:
    return f"{opinfo.name}.{opinfo.variant_test_name}" if opinfo.variant_test_name else opinfo.name


class _Call(torch.nn.Module):
    """``op(sample.input, *sample.args, **sample.kwargs)`` with the sample's tensors as inputs and
    everything else baked in."""

    def __init__(self, op: Any, spec: Any, leaves: list[Any]) -> None:
        super().__init__()
        self.op = op
        self.spec = spec
        self.constants = [None if isinstance(v, torch.Tensor) else v for v in leaves]
        self.is_tensor = [isinstance(v, torch.Tensor) for v in leaves]

    def forward(self, *tensors: torch.Tensor) -> Any:
        it = iter(tensors)
        leaves = [next(it) if t else c for t, c in zip(self.is_tensor, self.constants, strict=True)]
        inp, args, kwargs = pytree.tree_unflatten(leaves, self.spec)
        return self.op(inp, *args, **kwargs)


def _usable(sample: Any) -> str:
    """Why a sample is not run ('' if it is)."""
    for t in pytree.tree_leaves((sample.input, sample.args, sample.kwargs)):
        if not isinstance(t, torch.Tensor):
            continue
        if t.is_complex():
            return "complex input"
        if t.layout != torch.strided:
            return "sparse input"
        if t.numel() == 0:
            return "zero-size input"
        if t.numel() > MAX_ELEMENTS:
            return f"input of {t.numel()} elements"
    return ""


def _samples(opinfo: Any, dtype: torch.dtype, cap: int) -> tuple[list[Any], str]:
    """The first ``cap`` usable samples, and why the first unusable one was left out."""
    torch.manual_seed(0)  # make_tensor draws from the global generator
    kept, why = [], ""
    samples = opinfo.sample_inputs("cpu", dtype)
    for sample in samples:
        reason = _usable(sample)
        if reason:
            why = why or reason
            continue
        kept.append(sample)
        if len(kept) == cap:
            break
    if hasattr(samples, "close"):
        # NOTE: a generator left open is closed when collected, which may be while torch.export
        # traces the next op: its no_grad exit then runs under the tracer and fails, noisily.
        samples.close()
    return kept, why


def _clone(tree: Any) -> Any:
    return pytree.tree_map(lambda v: v.clone() if isinstance(v, torch.Tensor) else v, tree)


class _SeededOps(TorchDispatchMode):
    """Notes whether eager ran an op that draws random numbers.

    NOTE: OpInfo wraps random ops in ``wrapper_set_seed``, so eager's own results do not change
    with the seed; the ``nondeterministic_seeded`` tag on the ATen ops says what is random.
    """

    def __init__(self) -> None:
        super().__init__()
        self.seen = False

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        self.seen = self.seen or torch.Tag.nondeterministic_seeded in func.tags
        return func(*args, **(kwargs or {}))


def _eager(op: Any, sample: Any) -> tuple[Any, bool]:
    """Eager's result, and whether it is random."""
    torch.manual_seed(0)
    inp, args, kwargs = _clone((sample.input, sample.args, sample.kwargs))
    with _SeededOps() as mode:
        out = op(inp, *args, **kwargs)
    return out, mode.seen


def _mismatch(got: Any, want: Any, values: bool) -> str:
    """How ``got`` differs from eager's ``want`` ('' if it does not)."""
    g_leaves, w_leaves = pytree.tree_leaves(got), pytree.tree_leaves(want)
    if len(g_leaves) != len(w_leaves):
        return f"{len(g_leaves)} outputs, eager has {len(w_leaves)}"
    for i, (g, w) in enumerate(zip(g_leaves, w_leaves, strict=True)):
        where = f"output {i}: " if len(w_leaves) > 1 else ""
        if not isinstance(w, torch.Tensor):
            if g != w:
                return f"{where}got {g!r}, eager {w!r}"
            continue
        if not isinstance(g, torch.Tensor):
            return f"{where}got {type(g).__name__}, eager a tensor"
        if g.dtype != w.dtype or g.shape != w.shape:
            return (f"{where}got {str(g.dtype).removeprefix('torch.')}{list(g.shape)}, eager "
                    f"{str(w.dtype).removeprefix('torch.')}{list(w.shape)}")
        if values and not _close(g, w):
            return f"{where}{_worst(g, w)}"
    return ""


def _close(g: torch.Tensor, w: torch.Tensor) -> bool:
    if w.dtype == torch.float16:
        return torch.allclose(g.float(), w.float(), rtol=HALF_RTOL, atol=HALF_ATOL, equal_nan=True)
    if w.is_floating_point():
        return torch.allclose(g, w, rtol=RTOL, atol=ATOL, equal_nan=True)
    return torch.equal(g, w)


def _worst(g: torch.Tensor, w: torch.Tensor) -> str:
    """The element furthest from eager, for the failure reason."""
    nan = g.isnan() != w.isnan() if w.is_floating_point() else torch.zeros_like(w, dtype=torch.bool)
    if nan.any():
        i = int(nan.flatten().nonzero()[0])
        return f"NaN differs at flat index {i}: got {g.flatten()[i].item()}, eager {w.flatten()[i].item()}"
    err = (g.double() - w.double()).abs().nan_to_num(nan=0.0, posinf=float("inf"))
    err = torch.where(g.double() == w.double(), 0.0, err)  # equal infinities
    i = int(err.flatten().argmax())
    return (f"max error at flat index {i}: got {g.flatten()[i].item():.6g}, eager "
            f"{w.flatten()[i].item():.6g} ({int((err > 0).sum())} of {w.numel()} elements differ)")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:200]


def _run_sample(opinfo: Any, sample: Any) -> tuple[_Outcome, str, tuple[str, ...]]:
    """Run one sample through softipu: (outcome, reason, ops softipu cannot lower)."""
    try:
        want, random = _eager(opinfo.op, sample)
    except Exception as exc:  # noqa: BLE001 - eager's own refusal: nothing to compare
        return _Outcome.SKIP, f"eager raised {_first_line(exc)}", ()
    out_tensors = [w for w in pytree.tree_leaves(want) if isinstance(w, torch.Tensor)]
    if any(w.is_complex() for w in out_tensors):
        return _Outcome.SKIP, "complex output", ()
    if any(w.layout != torch.strided for w in out_tensors):
        return _Outcome.SKIP, "sparse output", ()
    leaves, spec = pytree.tree_flatten(_clone((sample.input, sample.args, sample.kwargs)))
    tensors = [v for v in leaves if isinstance(v, torch.Tensor)]
    model = inference_model(_Call(opinfo.op, spec, leaves), Options(target=TARGET))
    try:
        got = model(*tensors)
    except UnsupportedOpsError as exc:
        ops = tuple(exc.ops)
        if all(op.split(" ", 1)[0] in _REFUSED for op in ops):
            names = ", ".join(op.split(" ", 1)[0] for op in ops)
            return _Outcome.SKIP, f"the output depends on the data: {names}, refused by design", ops
        return _Outcome.UNSUPPORTED, "cannot lower " + ", ".join(ops), ops
    except ExportError as exc:
        return _Outcome.EXPORT_FAILED, _first_line(exc.__cause__ or exc), ()
    except Exception as exc:  # noqa: BLE001 - any failure of softipu is a result to record
        return _Outcome.ERROR, _first_line(exc), ()
    try:
        wrong = _mismatch(got, want, values=not random and opinfo.name not in _UNDEFINED_VALUES)
    except Exception as exc:  # noqa: BLE001 - an output eager's checks cannot compare
        return _Outcome.ERROR, f"comparing the outputs raised {_first_line(exc)}", ()
    return (_Outcome.WRONG, wrong, ()) if wrong else (_Outcome.PASS, "", ())


def run_op(opinfo: Any, samples_per_op: int = SAMPLES_PER_OP,
           dtypes: Sequence[torch.dtype] = DTYPES) -> OpResult:
    """Run up to ``samples_per_op`` samples of one OpInfo, of the first of ``dtypes`` it supports,
    through softipu and classify the op."""
    name = full_name(opinfo)
    supported = opinfo.supported_dtypes("cpu")
    dtype = next((d for d in dtypes if d in supported), None)
    if dtype is None:
        listed = ", ".join(str(d).removeprefix("torch.") for d in dtypes)
        return OpResult(name, Status.SKIPPED, reason=f"no {listed} samples")
    dtype_name = str(dtype).removeprefix("torch.")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        samples, why_not = _samples(opinfo, dtype, samples_per_op)
        if not samples:
            why_not = f"no usable sample ({why_not or 'none'})"
            return OpResult(name, Status.SKIPPED, dtype_name, reason=why_not)
        outcomes = [_run_sample(opinfo, sample) for sample in samples]
    return _classify(name, dtype_name, outcomes)


def _classify(name: str, dtype: str, outcomes: Sequence[tuple[_Outcome, str, tuple[str, ...]]]) -> OpResult:
    kinds = [o for o, _, _ in outcomes]
    ran = [o for o in kinds if o not in (_Outcome.SKIP, _Outcome.EXPORT_FAILED)]
    passed = kinds.count(_Outcome.PASS)
    missing = tuple(sorted({op for o, _, ops in outcomes if o is _Outcome.UNSUPPORTED for op in ops}))
    if passed:
        status = Status.PASSED if passed == len(ran) else Status.PARTIAL
        why = (_Outcome.WRONG, _Outcome.ERROR, _Outcome.UNSUPPORTED)
    elif _Outcome.WRONG in kinds or _Outcome.ERROR in kinds:
        status, why = Status.FAILED, (_Outcome.WRONG, _Outcome.ERROR)
    elif _Outcome.UNSUPPORTED in kinds:
        status, why = Status.UNSUPPORTED, (_Outcome.UNSUPPORTED,)
    elif _Outcome.EXPORT_FAILED in kinds:
        status, why = Status.EXPORT_FAILED, (_Outcome.EXPORT_FAILED,)
    else:
        status, why = Status.SKIPPED, (_Outcome.SKIP,)
    # The reason is the first sample's of the kind that decided the status.
    reason = next((f"{o.value}: {r}" for o, r, _ in outcomes if o in why), "")
    return OpResult(name, status, dtype, passed, len(ran), reason, missing)


def sweep(names: Iterable[str] | None = None, samples_per_op: int = SAMPLES_PER_OP,
          dtypes: Sequence[torch.dtype] = DTYPES, progress: bool = False) -> list[OpResult]:
    """:func:`run_op` over ``op_db`` (or the OpInfos named), in op_db's order."""
    results = []
    for opinfo in opinfos(names):
        start = time.perf_counter()
        results.append(run_op(opinfo, samples_per_op, dtypes))
        if progress:
            r = results[-1]
            print(f"{time.perf_counter() - start:6.2f} s  {r.name}: {r.status.value} {r.passed}/{r.total} "
                  f"{r.reason[:100]}", file=sys.stderr, flush=True)
    return results


def to_json(results: Sequence[OpResult], seconds: float | None = None,
            dtypes: Sequence[torch.dtype] = DTYPES) -> str:
    """The results, and how they were made, as the text of ``docs/opinfo_results.json``."""
    rows = [asdict(r) | {"status": r.status.value, "missing": list(r.missing)} for r in results]
    header = {"torch": torch.__version__.split("+")[0], "samples_per_op": SAMPLES_PER_OP,
              "dtypes": [str(d).removeprefix("torch.") for d in dtypes], "target": TARGET.name,
              "seconds": None if seconds is None else round(seconds)}
    return json.dumps(header | {"ops": rows}, indent=1) + "\n"


def from_json(text: str) -> tuple[dict[str, Any], list[OpResult]]:
    """(the run's header, its results) from :func:`to_json`'s text."""
    data = json.loads(text)
    rows = [OpResult(**(r | {"status": Status(r["status"]), "missing": tuple(r["missing"])}))
            for r in data.pop("ops")]
    return data, rows


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m softipu.frontends.torch.opinfo [--dtypes int64,bool] [NAME ...]``: the sweep as
    JSON on stdout (the docs keep the default, every op), one progress line per op on stderr."""
    parser = argparse.ArgumentParser(prog="python -m softipu.frontends.torch.opinfo")
    parser.add_argument("--dtypes", default=",".join(str(d).removeprefix("torch.") for d in DTYPES),
                        help="the dtypes to take samples of, the first an op supports (default: %(default)s)")
    parser.add_argument("names", nargs="*", help="OpInfo names (default: all of op_db)")
    args = parser.parse_args(argv)
    dtypes = tuple(getattr(torch, d) for d in args.dtypes.split(","))
    start = time.perf_counter()
    found = sweep(args.names or None, dtypes=dtypes, progress=True)
    print(to_json(found, time.perf_counter() - start, dtypes), end="")


if __name__ == "__main__":
    main()
