"""The ``softipu`` command line (also ``python -m softipu``).

Subcommands live in a registry: :func:`register` adds one (its name, a one-line help, a function
that adds its arguments to an ``argparse`` parser, and the function that runs it), so other parts
of softipu (the systems launcher's ``softipu run``) plug in without editing this file's parser:
either a module registered in :data:`PLUGINS` (imported when the command line starts; it calls
:func:`register`), or a package's entry point in the group ``softipu.commands`` (a callable
that is given :func:`register`).
Built in:

* ``softipu info``: version, Python and library versions, targets, systems, where caches live;
* ``softipu report PATH``: a saved JSON report's summary; ``--html [OUT]`` writes the page (and
  ``--open`` opens it); ``--compare A B`` compares two reports (with ``--html``, as a page);
* ``softipu cache ls|clear [--dir DIR]``: the executable cache of ``softipu.torch`` (the
  directory of ``Options(executable_cache_dir=...)``; default ``$SOFTIPU_CACHE_DIR``).

Output uses ``rich`` tables and colours on a terminal when it is installed (the ``[report]``
extra), and plain text in a pipe, a file, or with ``NO_COLOR`` set.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import os
import platform
import shutil
import sys
import time
import webbrowser
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from softipu.errors import SoftIPUError
from softipu.log import configure_from_env

__all__ = ["Command", "register", "commands", "main", "Output"]

CACHE_ENV = "SOFTIPU_CACHE_DIR"
PLUGINS: list[str] = ["softipu.poprun"]  # softipu modules that register subcommands when imported


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, Output], int]


_COMMANDS: dict[str, Command] = {}


def register(name: str, help: str, arguments: Callable[[argparse.ArgumentParser], None],
             run: Callable[[argparse.Namespace, Output], int]) -> Command:
    """Add (or replace) the subcommand ``softipu NAME``; ``run`` returns the exit status."""
    cmd = Command(name, help, arguments, run)
    _COMMANDS[name] = cmd
    return cmd


def commands() -> dict[str, Command]:
    return dict(_COMMANDS)


# -- output ------------------------------------------------------------------------------------------
class Output:
    """Tables and lines: ``rich`` on a colour terminal, aligned plain text otherwise."""

    def __init__(self, stream: IO[str] | None = None, rich: bool | None = None) -> None:
        self.stream = sys.stdout if stream is None else stream
        if rich is None:
            rich = _isatty(self.stream) and not os.environ.get("NO_COLOR") and _has_rich()
        self.console = None
        if rich:
            from rich.console import Console
            self.console = Console(file=self.stream, highlight=False)

    def line(self, text: str = "", style: str = "") -> None:
        if self.console is not None:
            self.console.print(text, style=style or None, markup=False)
        else:
            print(text, file=self.stream)

    def heading(self, text: str) -> None:
        self.line(text, "bold cyan")

    def table(self, title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]],
              styles: Sequence[str] | None = None) -> None:
        """``columns`` named ``"<name"`` are left-aligned, others right-aligned; numbers get
        thousands separators."""
        names = [c.lstrip("<") for c in columns]
        left = [c.startswith("<") for c in columns]
        cells = [[_cell(v) for v in row] for row in rows]
        if self.console is not None:
            from rich.table import Table
            table = Table(title=title or None, title_justify="left", header_style="bold")
            for name, is_left in zip(names, left, strict=True):
                table.add_column(name, justify="left" if is_left else "right", overflow="fold")
            for i, row in enumerate(cells):
                table.add_row(*row, style=(styles[i] if styles else None) or None)
            self.console.print(table)
            return
        widths = [max([len(n)] + [len(r[i]) for r in cells]) for i, n in enumerate(names)]

        def fmt(row: Sequence[str]) -> str:
            return "  ".join(v.ljust(w) if lf else v.rjust(w)
                             for v, w, lf in zip(row, widths, left, strict=True)).rstrip()

        if title:
            print(title, file=self.stream)
        print(fmt(names), file=self.stream)
        for row in cells:
            print(fmt(row), file=self.stream)


def _cell(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return "" if v is None else str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:,.3f}".rstrip("0").rstrip(".")
    return str(v)


def _isatty(stream: IO[str]) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _has_rich() -> bool:
    try:
        import rich  # noqa: F401
    except ImportError:
        return False
    return True


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


# -- info --------------------------------------------------------------------------------------------
def _info_arguments(parser: argparse.ArgumentParser) -> None:
    del parser


def _run_info(args: argparse.Namespace, out: Output) -> int:
    import softipu as sp
    from softipu.target import systems, targets

    out.heading(f"softipu {sp.__version__}")
    out.table("", ["<component", "<version"], [
        ["python", platform.python_version()], ["numpy", _version("numpy")], ["torch", _version("torch")],
        ["onnx", _version("onnx")], ["rich", _version("rich")]])
    chips = [(n, t) for n, t in vars(targets).items() if isinstance(t, targets.Target) and n.isupper()]
    out.table("targets (sp.targets)", ["<name", "IPUs", "tiles per IPU", "bytes per tile", "GHz",
                                       "fp16 TFLOPS"],
              [[t.name, t.num_ipus, t.tiles_per_ipu, t.bytes_per_tile, round(t.clock_hz / 1e9, 3),
                round(t.peak_fp16_flops / 1e12, 1)] for _, t in chips])
    found = [s for s in vars(systems).values() if isinstance(s, systems.System)]
    out.table("systems (softipu.target.systems)", ["<name", "IPUs", "<chip"],
              [[s.name, s.num_ipus, getattr(getattr(s, "chip", None), "name", "")] for s in found])
    cache = os.environ.get(CACHE_ENV)
    out.table("caches", ["<what", "<where"], [
        ["executable cache (softipu.torch)",
         f"{cache} (${CACHE_ENV})" if cache else
         f"off unless Options(executable_cache_dir=...) or poptorch enableExecutableCaching(path); "
         f"`softipu cache` reads ${CACHE_ENV} or --dir"],
        ["logging", f"SOFTIPU_LOG_LEVEL={os.environ.get('SOFTIPU_LOG_LEVEL', '(unset: WARN)')} "
                    f"SOFTIPU_LOG_DEST={os.environ.get('SOFTIPU_LOG_DEST', '(unset: stderr)')}"],
    ])
    return 0


# -- report ------------------------------------------------------------------------------------------
def _report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", nargs="?", help="a report saved with Report.save_json (.json)")
    parser.add_argument("--html", nargs="?", const="", metavar="OUT",
                        help="write the HTML page (to OUT, default: PATH with .html)")
    parser.add_argument("--open", action="store_true", help="open the written page in a browser")
    parser.add_argument("--compare", nargs=2, metavar=("A", "B"), help="compare two reports")
    parser.add_argument("--top", type=int, default=10, help="steps to list (default 10)")


def _run_report(args: argparse.Namespace, out: Output) -> int:
    from softipu.profile import Report

    if args.compare and args.path:
        raise SystemExit("softipu report: give PATH or --compare A B, not both")
    if args.compare:
        a, b = (Report.load(p) for p in args.compare)
        _print_compare(out, a, b, *args.compare)
        page, default = a.html(compare=b), Path(args.compare[0]).with_suffix(".compare.html")
    elif args.path:
        a = Report.load(args.path)
        _print_report(out, a, args.top)
        page, default = a.html(), Path(args.path).with_suffix(".html")
    else:
        raise SystemExit("softipu report: give a report PATH (a .json file), or --compare A B")
    if args.html is not None or args.open:
        target = Path(args.html) if args.html else default
        target.write_text(page, encoding="utf-8")
        out.line(f"wrote {target}")
        if args.open:
            webbrowser.open(target.resolve().as_uri())
    return 0


def _print_report(out: Output, report: Any, top: int) -> None:
    if out.console is None:
        out.line(report.summary(top))
        return
    first, *_ = report.summary(top).split("\n")
    d = report.data
    out.heading(first)
    if report.has_run:
        out.line(f"{report.cycles:,} cycles = {report.seconds * 1e6:,.2f} us; "
                 f"{report.flops / 1e9:,.3f} GFLOP")
    fit = report.fit()
    out.line(f"peak tile {fit['worst_tile']}: {fit['worst_tile_bytes']:,} of {fit['bytes_per_tile']:,} B",
             "green" if fit["fits"] else "bold red")
    cats = sorted(report.memory_by_category.items(), key=lambda kv: -kv[1])
    out.table("memory by category", ["<category", "bytes"], cats)
    ran = [s for s in d["steps"] if s["count"]] or d["steps"]
    steps = sorted(ran, key=lambda s: -s["cycles"] * s["count"])
    out.table(f"steps (top {min(top, len(steps))} of {len(d['steps'])} by total cycles)",
              ["<step", "runs", "cycles", "compute", "exchange", "sync", "<source"],
              [[s["name"], s["count"], s["cycles"], s["compute_cycles"], s["exchange_cycles"],
                s["sync_cycles"], s["source"]] for s in steps[:top]])


def _print_compare(out: Output, a: Any, b: Any, name_a: str, name_b: str) -> None:
    def figures(r: Any) -> dict[str, int]:
        f = {"cycles": r.data["execution"]["cycles"],
             "time (ns)": round(r.data["execution"]["cycles"] / r.data["target"]["clock_hz"] * 1e9),
             "peak tile bytes": int(r.tile_memory.max(initial=0)),
             "all tiles bytes": int(r.tile_memory.sum()),
             "flops": sum(s["flops"] * s["count"] for s in r.data["steps"]), "steps": len(r.data["steps"])}
        f.update({f"  {k}": v for k, v in r.memory_by_category.items()})
        return f

    fa, fb = figures(a), figures(b)
    rows, styles = [], []
    for k in dict.fromkeys([*fa, *fb]):
        x, y = fa.get(k, 0), fb.get(k, 0)
        change = "=" if x == y else (f"{y - x:+,}" + (f" ({(y - x) / x:+.1%})" if x else ""))
        rows.append([k, x, y, change])
        higher_better = k == "flops"
        styles.append("" if x == y else ("green" if (y > x) == higher_better else "red"))
    out.table(f"A: {name_a}   B: {name_b}", ["<figure", "A", "B", "<B - A"], rows, styles)


# -- cache -------------------------------------------------------------------------------------------
def _cache_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("ls", "clear"), help="list or remove the cached executables")
    parser.add_argument("--dir", help=f"the cache directory (default: ${CACHE_ENV})")


def _run_cache(args: argparse.Namespace, out: Output) -> int:
    directory = args.dir or os.environ.get(CACHE_ENV)
    if not directory:
        raise SystemExit(f"softipu cache: no cache directory: pass --dir DIR or set {CACHE_ENV} (the "
                         "directory given to Options(executable_cache_dir=...) or enableExecutableCaching)")
    try:
        from softipu.frontends.torch.cache import ExecutableCache
    except ImportError as exc:
        raise SystemExit(f"softipu cache: the executable cache belongs to softipu.torch, which needs "
                         f"torch ({exc}): pip install 'softipu[torch]'") from None
    cache = ExecutableCache(directory, max_bytes=0)
    entries = sorted(cache.entries(), key=lambda e: -e[2])
    if args.action == "ls":
        now = time.time()
        out.table(f"executable cache {cache.directory}: {len(entries)} entries, "
                  f"{sum(e[1] for e in entries) / 1e6:,.1f} MB", ["<entry", "MB", "<last used"],
                  [[p.name[:16], round(n / 1e6, 2), _ago(now - t)] for p, n, t in entries])
        return 0
    for path, _, _ in entries:
        shutil.rmtree(path, ignore_errors=True)
    out.line(f"removed {len(entries)} entries ({sum(e[1] for e in entries) / 1e6:,.1f} MB) "
             f"from {cache.directory}")
    return 0


def _ago(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit} ago"
    return f"{seconds:.0f} s ago"


register("info", "version, targets, systems, and where caches live", _info_arguments, _run_info)
register("report", "a saved report: summary, --html page, --compare A B", _report_arguments, _run_report)
register("cache", "the executable cache: ls | clear", _cache_arguments, _run_cache)


# -- entry point -------------------------------------------------------------------------------------
def parser() -> argparse.ArgumentParser:
    import softipu as sp

    p = argparse.ArgumentParser(prog="softipu", description="softipu: the Graphcore IPU platform as "
                                "open software. Subcommands:")
    p.add_argument("--version", action="version", version=f"softipu {sp.__version__}")
    subs = p.add_subparsers(dest="command", metavar="COMMAND")
    for cmd in _COMMANDS.values():
        cmd.arguments(subs.add_parser(cmd.name, help=cmd.help, description=cmd.help))
    return p


def load_plugins() -> None:
    """Import :data:`PLUGINS` and call every ``softipu.commands`` entry point with :func:`register`;
    a plugin that fails is reported on stderr and skipped (the built-in commands still work)."""
    import importlib

    for name in PLUGINS:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not take the CLI down
            print(f"softipu: subcommands of {name} unavailable: {type(exc).__name__}: {exc}", file=sys.stderr)
    for ep in importlib.metadata.entry_points(group="softipu.commands"):
        try:
            ep.load()(register)
        except Exception as exc:  # noqa: BLE001
            print(f"softipu: subcommand plugin {ep.name} unavailable: {type(exc).__name__}: {exc}",
                  file=sys.stderr)


def main(argv: Sequence[str] | None = None, stream: IO[str] | None = None) -> int:
    """Run ``softipu ARGV``; returns the exit status (errors of softipu: 1, with the message)."""
    configure_from_env()
    load_plugins()
    args = parser().parse_args(argv)
    if args.command is None:
        parser().print_help(stream)
        return 2
    out = Output(stream)
    try:
        return _COMMANDS[args.command].run(args, out)
    except SoftIPUError as exc:
        print(f"softipu {args.command}: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `softipu info | head`: the reader left; end quietly, as Unix tools do
        if stream is None:
            with contextlib.suppress(OSError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a tool killed by it


if __name__ == "__main__":
    sys.exit(main())
