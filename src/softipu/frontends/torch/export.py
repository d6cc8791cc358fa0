"""From a ``torch.nn.Module`` to a Core ATen graph, and the checks made before building anything.

* :func:`export_program` exports to Core ATen (in eval mode, without gradients) in one trace:
  torch's post-autograd export given the decomposition table ``run_decompositions()`` would apply
  (the same graph as ``torch.export.export(...).run_decompositions()``, which is the fallback).
  Export failures (data-dependent control flow, unsupported Python) become :class:`ExportError`
  naming the user's line and what to do instead.
* :func:`check_supported` walks the graph once and raises one :class:`UnsupportedOpsError` that
  lists every op without a lowering and every dtype the IPU cannot hold (bfloat16, complex...),
  each with the user's source lines, before anything is built.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import operator
import os
import re
import sys
import threading
import traceback
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from softipu.dtypes import DType, bool_, float16, float32, int8, int16, int32, uint8, uint16, uint32
from softipu.frontends.errors import ExportError, UnsupportedOpsError
from softipu.frontends.torch.decompositions import extra_decompositions
from softipu.frontends.torch.registry import find_lowering

__all__ = ["UserLine", "export_program", "check_supported", "user_line", "graph_nodes", "IPU_DTYPES",
           "dtype_problem"]

_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__)) + os.sep
_SOFTIPU_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))) + os.sep
_STDLIB_DIR = os.path.dirname(os.path.abspath(os.__file__)) + os.sep
_FRAME = re.compile(r'File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<fn>[^\n]+)\n(?P<code>[^\n]*)')

_UNIQUE = ("torch.unique's output length is the number of distinct values, known only from the data; "
           "compare with a fixed set of candidates (x.unsqueeze(-1) == values) or sort (torch.sort) "
           "and mask the first of each run (s[1:] != s[:-1])")

# Ops whose output shape or value depends on the data: say why, not just "unsupported".
_DATA_DEPENDENT = {
    "aten::_local_scalar_dense": "Tensor.item() (or int()/float()/bool() of a tensor) reads a device value "
                                 "into Python; keep it a tensor (e.g. x * t.sum() instead of "
                                 "x * t.sum().item())",
    "aten::nonzero": "its output shape depends on the data, and IPU graphs have static shapes; use "
                     "torch.where(mask, x, 0) or a fixed-size torch.topk",
    "aten::masked_select": "its output shape depends on the data; use torch.where(mask, x, 0)",
    # torch.unique (sorted or not, with inverse and counts), torch._unique, unique(dim=...) and
    # unique_consecutive (with or without dim) export as these.
    "aten::_unique2": _UNIQUE,
    "aten::_unique": _UNIQUE,
    "aten::unique_dim": "torch.unique(dim=...) returns as many slices as there are distinct ones, known "
                        "only from the data; keep every slice and a mask of the first of each (torch.where)",
    "aten::unique_consecutive": "its output length is the number of runs, known only from the data; "
                                "keep the full shape and mask the first of each run (x[1:] != x[:-1])",
    "aten::bincount": "its output length is max(input) + 1, known only from the data; count into a fixed "
                      "number of bins with torch.zeros(n).scatter_add(0, x, torch.ones_like(x, "
                      "dtype=torch.float)) or one_hot(x, n).sum(0)",
}

# The IPU dtype that holds each torch dtype: int64 -> int32 and float64 -> float32, as in PopTorch.
IPU_DTYPES: dict[torch.dtype, DType] = {
    torch.float32: float32, torch.float16: float16, torch.float64: float32,
    torch.int64: int32, torch.int32: int32, torch.int16: int16, torch.int8: int8,
    torch.uint8: uint8, torch.uint16: uint16, torch.uint32: uint32, torch.bool: bool_,
}


def dtype_problem(dtype: torch.dtype) -> str:
    """Why no IPU dtype holds ``dtype``, and what to use instead ('' when one does)."""
    if dtype in IPU_DTYPES:
        return ""
    if dtype == torch.bfloat16:
        return "the IPU has no bfloat16; use torch.float16"
    if dtype.is_complex:
        return "the IPU has no complex dtypes; pass and compute real and imaginary parts as float tensors"
    held = ", ".join(str(d).removeprefix("torch.") for d in IPU_DTYPES)
    return f"no IPU dtype holds it; use one of {held}"


@dataclass(frozen=True, slots=True)
class UserLine:
    """A line of the user's code: where an op came from."""

    filename: str
    lineno: int
    function: str
    code: str

    def __str__(self) -> str:
        code = f": {self.code.strip()}" if self.code.strip() else ""
        return f"{self.filename}:{self.lineno} in {self.function}{code}"


def _is_user_file(filename: str) -> bool:
    path = os.path.abspath(filename) if not filename.startswith("<") else filename
    return not (path.startswith(_TORCH_DIR) or path.startswith(_SOFTIPU_DIR) or path.startswith(_STDLIB_DIR))


def user_line(node: Any) -> UserLine | None:
    """The innermost frame of the user's code in an FX node's ``stack_trace`` (None if unknown)."""
    trace = node.meta.get("stack_trace") if hasattr(node, "meta") else None
    if not trace:
        return None
    found = None
    for m in _FRAME.finditer(trace):
        if _is_user_file(m["file"]):
            found = UserLine(m["file"], int(m["line"]), m["fn"].strip(), m["code"])
    return found


def _exception_line(exc: BaseException) -> UserLine | None:
    """The innermost user frame in ``exc``'s traceback, or in its causes'."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if _is_user_file(f.filename)]
        if frames:
            f = frames[-1]
            return UserLine(f.filename, f.lineno or 0, f.name, f.line or "")
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return None


def _message_line(text: str) -> UserLine | None:
    """torch's own "The following call raised this error" location, when the traceback has none."""
    found = None
    for m in _FRAME.finditer(text):
        if _is_user_file(m["file"]):
            found = UserLine(m["file"], int(m["line"]), m["fn"].strip(), m["code"])
    return found


# Ops lowered whole (frontends/torch/lowerings/poptorch_ops.py): their decompositions compute values
# the op never needs (softplus's exp above its threshold, celu's of positive inputs, overflow and trap).
KEPT_WHOLE = (torch.ops.aten.softplus.default, torch.ops.aten.celu.default)


def export_program(module: torch.nn.Module, args: tuple, kwargs: dict | None) -> Any:
    """``torch.export`` of ``module`` in eval mode, decomposed to Core ATen.

    The module's training flag is restored afterwards. Failures raise :class:`ExportError`.
    """
    was_training = module.training
    module.train(False)
    try:
        with torch.no_grad(), _quiet_torch():
            try:
                return _export_decomposed(module, tuple(args), dict(kwargs or {}), *_split_tables())
            except Exception as exc:  # noqa: BLE001 - the two-trace export below reports (or passes) it
                _LOG.debug("one-trace export of %s failed (%s: %s); exporting in two traces",
                           type(module).__name__, type(exc).__name__, _first_lines(str(exc), 1))
            exported = torch.export.export(module, tuple(args), dict(kwargs or {}))
            return exported.run_decompositions(_table())
    except Exception as exc:  # noqa: BLE001 - every export failure is reported the same way
        raise ExportError(_explain(module, exc)) from exc
    finally:
        module.train(was_training)


_ONE_TRACE = threading.Lock()
_LOG = logging.getLogger(__name__)


def _table() -> Any:
    """The decomposition table: torch's defaults but :data:`KEPT_WHOLE`, and softipu's own."""
    table = torch.export.default_decompositions()
    for op in KEPT_WHOLE:
        table.pop(op)
    table.update(extra_decompositions())
    return table


class _DefaultSplit:
    """torch's split of its default table (less :data:`KEPT_WHOLE`) into CompositeImplicitAutograd
    overrides and Python decompositions, and the set of CIA ops export may keep: made once per
    process (the split reads every registered op: ~0.2 s of CPU an export), copied for each, and
    made again when more ops have been registered since (importing ``torch.distributed``'s
    functional collectives, a custom op: torch's split of the moment would include them).

    The set of CIA ops is collected once for the three uses torch's own calls would each collect
    it for (``default_decompositions()``'s materializing, the split, and the set kept here;
    ~0.1 s of CPU each, walking every op namespace): :meth:`_made_now` is
    ``_split_decomp_table_to_cia_and_python_decomp(default_decompositions() less KEPT_WHOLE)``
    with that one set (the same dicts: tests/test_compile_shortcuts.py)."""

    _lock = threading.Lock()
    _made: tuple[dict, dict, frozenset] | None = None
    _ops_seen = 0  # how many operators were registered when _made was made

    @classmethod
    def get(cls) -> tuple[dict, dict, frozenset]:
        with cls._lock:
            registered = len(torch._C._dispatch_get_all_op_names())  # ~4 ms
            if cls._made is None or registered != cls._ops_seen:
                cls._ops_seen = registered
                cls._made = cls._made_now()
            return cls._made

    @staticmethod
    def _made_now() -> tuple[dict, dict, frozenset]:
        from torch._export.utils import (
            _collect_all_valid_cia_ops,
            _get_decomp_for_cia,
            _is_aten_op,
            _is_preservable_cia_op,
        )
        from torch.export.exported_program import _special_op_to_preserve_cia

        preservable = frozenset(_collect_all_valid_cia_ops())
        # default_decompositions() materialized (CustomDecompTable.materialize) with that set
        table = dict(torch.export.default_decompositions().decomp_table)
        for op in preservable:
            if not _is_aten_op(op) and op not in table:
                table[op] = _get_decomp_for_cia(op)
        for op in KEPT_WHOLE:
            table.pop(op)
        # _split_decomp_table_to_cia_and_python_decomp(table) with that set
        cia: dict = {}
        unclaimed = set(preservable)
        for op in list(table):
            if op in unclaimed:
                cia[op] = table.pop(op)
                unclaimed.remove(op)
            elif _is_preservable_cia_op(op):  # a custom op: kept in both, as torch's split does
                cia[op] = table[op]
        for op in unclaimed:
            cia[op] = _special_op_to_preserve_cia
        return cia, table, preservable


def _split_tables() -> tuple[dict, dict]:
    """``_split_decomp_table_to_cia_and_python_decomp(_table())``: the default split (made once)
    with softipu's own entries added as that function files them (a core CIA op's entry replaces
    its override and leaves the Python table; a custom CIA op's goes to both; any other op's to
    the Python table)."""
    from torch.export.exported_program import _is_preservable_cia_op

    extras = extra_decompositions()  # first: it may register the ops it names
    default_cia, default_python, preservable = _DefaultSplit.get()
    cia, python = dict(default_cia), dict(default_python)
    for op, fn in extras.items():
        if op in preservable:
            cia[op] = fn
            python.pop(op, None)
        elif _is_preservable_cia_op(op):
            cia[op] = python[op] = fn
        else:
            python[op] = fn
    return cia, python


def _export_decomposed(module: torch.nn.Module, args: tuple, kwargs: dict, cia: dict, python: dict) -> Any:
    """``torch.export.export(...).run_decompositions(table)`` in one trace: torch's own
    post-autograd export (``torch.export._trace._export`` without pre-dispatch, the path
    ``run_decompositions`` re-traces with) given the decomposition table while it traces, as
    ``run_decompositions`` gives it (:func:`_split_tables`: ``cia``'s CompositeImplicitAutograd
    decompositions overridden, ``python``'s applied by AOTAutograd). The graph is the same Core
    ATen graph without a second trace of the model. Raises whatever torch raises;
    :func:`export_program` then exports the usual way.

    NOTE: ``_export`` fixes the table its AOTAutograd trace uses (none); the table is bound into
    ``torch.export._trace._export_to_aten_ir`` for the call only, under a lock.
    """
    from torch.export import _trace
    from torch.export.exported_program import _override_composite_implicit_decomp

    with _ONE_TRACE:
        plain = _trace._export_to_aten_ir
        _trace._export_to_aten_ir = functools.partial(plain, decomp_table=python)
        try:
            with _override_composite_implicit_decomp(cia):
                return _trace._export(module, args, kwargs, strict=False, pre_dispatch=False)
        finally:
            _trace._export_to_aten_ir = plain


# torch logs the failures it raises (with tracebacks and graph dumps); softipu re-raises them
# with the user's line, so the logs would only repeat them.
_NOISY_LOGGERS = ("torch._subclasses.fake_tensor", "torch.fx.experimental.symbolic_shapes",
                  "torch._dynamo", "torch._export", "torch.export")


@contextlib.contextmanager
def _quiet_torch() -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in _NOISY_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    # torch.export prints a failed trace's partial graph to stderr; keep stderr for success only.
    captured = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(captured):
            # NOTE: torch.export's own use of pytree trips this deprecation in torch 2.13.
            warnings.filterwarnings("ignore", message=".*treespec, LeafSpec", category=FutureWarning)
            # NOTE: torch's own RNN modules set _flat_weights while exporting; nothing to fix.
            warnings.filterwarnings("ignore", message=".*_flat_weights.*were assigned during export")
            yield
        sys.stderr.write(captured.getvalue())
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _explain(module: torch.nn.Module, exc: Exception) -> str:
    text = str(exc)
    line = _exception_line(exc) or _message_line(text)
    where = f" at {line}" if line else ""
    name = type(module).__name__
    data_dependent = ("data-dependent" in text or "GuardOnDataDependent" in type(exc).__name__
                      or "data dependent" in text)
    if data_dependent:
        return (f"torch.export could not capture {name}: Python control flow{where} depends on the "
                "values of a tensor, which are not known while the IPU graph is built (static "
                "graphs). Write the choice with tensor ops instead (torch.where(cond, a, b), masks, "
                "clamp) or with torch.cond(pred, true_fn, false_fn, operands); avoid .item(), "
                "bool(tensor) and int(tensor) in forward.\n"
                f"torch says: {_first_lines(text)}")
    return (f"torch.export could not capture {name}{where}: {type(exc).__name__}: {_first_lines(text)}\n"
            "softipu runs what torch.export captures; see "
            "https://pytorch.org/docs/stable/export.html for what it supports")


def _first_lines(text: str, n: int = 3) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return "\n  ".join(lines[:n]) if lines else "(no message)"


def graph_nodes(graph: torch.fx.Graph) -> Iterator[torch.fx.Node]:
    """Every call_function node of ``graph`` and of the subgraphs it calls (torch.cond branches)."""
    owner = graph.owning_module
    for node in graph.nodes:
        if node.op == "call_function":
            yield node
        elif node.op == "get_attr" and owner is not None:
            sub = getattr(owner, str(node.target), None)
            if isinstance(sub, torch.fx.GraphModule):
                yield from graph_nodes(sub.graph)


def check_supported(graph: torch.fx.Graph) -> None:
    """Raise one :class:`UnsupportedOpsError` listing every op without a usable lowering and every
    dtype no IPU dtype holds (where such tensors are made)."""
    missing: dict[str, list[str]] = {}
    for node in graph_nodes(graph):
        if node.target is operator.getitem:
            continue
        name, lowering = find_lowering(node.target)
        reason = _DATA_DEPENDENT.get(name, "")
        if lowering is not None:
            reason = lowering.check(node) if lowering.check is not None else None
            if not reason:
                continue
        _note(missing, f"{name} ({reason})" if reason else name, node)
    if any(name.split(" ", 1)[0] in _DATA_DEPENDENT for name in missing):
        # Symbolic-size arithmetic only follows a data-dependent shape: the cause is listed.
        missing = {k: v for k, v in missing.items() if not _is_symbolic(k)}
    dtypes = _unheld_dtypes(graph)
    if missing or dtypes:
        raise UnsupportedOpsError(_unsupported_message(dtypes, missing), dtypes | missing)


def _note(found: dict[str, list[str]], key: str, node: torch.fx.Node, where: str = "") -> None:
    line = user_line(node)
    where = where or (str(line) if line else f"node {node.name} (no source line recorded)")
    if where not in found.setdefault(key, []):
        found[key].append(where)


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _tensors(v)


def _unheld_dtypes(graph: torch.fx.Graph) -> dict[str, list[str]]:
    """Each dtype no IPU dtype holds, with where its tensors enter the graph: the inputs and
    weights that have it and the ops that make it from other dtypes (not every op it flows on)."""
    found: dict[str, list[str]] = {}
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    for node in [*placeholders, *graph_nodes(graph)]:
        made = {t.dtype for t in _tensors(node.meta.get("val"))}
        given = {t.dtype for a in node.all_input_nodes for t in _tensors(a.meta.get("val"))}
        for dtype in sorted(made - given, key=str):
            problem = dtype_problem(dtype)
            if problem:
                where = f"input or weight {node.name}" if node.op == "placeholder" else ""
                _note(found, f"{dtype} ({problem})", node, where)
    return found


def _is_symbolic(key: str) -> bool:
    name = key.split(" ", 1)[0]
    return name.startswith(("aten::sym_", "_operator::", "aten::_assert"))


def _unsupported_message(dtypes: dict[str, list[str]], missing: dict[str, list[str]]) -> str:
    counts = [f"{n} {what}{'s' if n > 1 else ''}"
              for n, what in ((len(dtypes), "dtype"), (len(missing), "op")) if n]
    lines = [f"the model uses {' and '.join(counts)} softipu cannot lower (all listed; nothing was "
             "compiled):"]
    for key, wheres in (dtypes | missing).items():
        lines.append(f"  {key}")
        for w in wheres[:5]:
            lines.append(f"      at {w}")
        if len(wheres) > 5:
            lines.append(f"      ... and {len(wheres) - 5} more places")
    addable = [k.split(" ", 1)[0] for k in missing if k.split(" ", 1)[0] not in _DATA_DEPENDENT]
    if not addable:
        return "\n".join(lines)
    example = addable[0]
    lines.append(f'To add a lowering: softipu.torch.register_lowering("{example}", fn), where '
                 "fn(ctx, node, *args, **kwargs) builds the result with softipu.ops on ctx.graph, "
                 "appending to ctx.prog (see docs/torch_coverage.md).")
    return "\n".join(lines)
