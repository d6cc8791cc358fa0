"""The layer rule of design.md §1, enforced on the source with ``ast``.

Every ``import softipu.X`` / ``from softipu.X import ...`` (and relative imports) in every module
under ``src/softipu`` is checked against an explicit table of which layers a layer may import.

Decisions:

* Imports under ``if TYPE_CHECKING:`` are checked like any other. A type-only import still states
  a dependency, and ``typing.get_type_hints`` executes it; none needs an exemption today.
* Imports inside functions (lazy imports) are checked too: they are the usual way around a cycle,
  which is exactly what the rule forbids.
* ``softipu/__init__.py`` and ``softipu/program.py`` only re-export, so they are exempt.
* ``profile`` was not in the first table: the engine builds ``eng.report``, so the engine may import
  ``profile``, and ``profile`` reads compiled artifacts (compiler, graph, codelets) but never the
  engine ("profile reads engine output", design.md §1).
* A top-level module missing from the table fails the test: a new layer needs a decision here.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "softipu"

BASE = frozenset({"errors", "debug", "dtypes", "target", "log"})
ALLOWED: dict[str, frozenset[str]] = {
    **{layer: BASE for layer in BASE},
    "graph": BASE | {"graph"},
    "codelets": BASE | {"graph", "codelets"},
    "ops": BASE | {"ops", "codelets", "graph"},
    "compiler": BASE | {"compiler", "graph", "codelets"},
    "engine": BASE | {"engine", "compiler", "graph", "codelets", "profile"},
    "profile": BASE | {"profile", "compiler", "graph", "codelets"},
    # GCL-shaped collectives sit at the ops level: rings of popops ops and cross-replica copies.
    "collectives": BASE | {"collectives", "ops", "codelets", "graph"},
    # Frontends sit on top: they lower models onto ops and run them on the engine.
    "frontends": BASE | {"frontends", "ops", "collectives", "codelets", "graph", "compiler", "engine",
                         "profile"},
    "torch": BASE | {"frontends"},  # softipu.torch and softipu.poptorch only re-export
    "poptorch": BASE | {"frontends"},
    "onnx": BASE | {"frontends"},  # softipu.onnx and softipu.popart only re-export
    "popart": BASE | {"frontends"},
    # The command line sits above everything (the package root included, for its version).
    "cli": BASE | {"cli", "softipu", "profile", "frontends", "engine", "compiler", "graph"},
    "__main__": BASE | {"cli"},
    # Replicas over processes: popdist's queries and the ``softipu run`` launcher (engine/distributed.py).
    "popdist": BASE | {"engine"},
    "poprun": BASE | {"cli", "engine"},
}
EXEMPT = frozenset({"softipu/__init__.py", "softipu/program.py"})
NEED_ALL = ("graph", "compiler", "engine", "ops")


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> str:
    """``softipu.graph.tensor`` -> ``graph``; the bare package is its own "softipu" layer."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "softipu"


def imported_modules(source: str, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, absolute module) of every softipu import in ``source``, wherever it appears."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                package = module.split(".") if is_package else module.split(".")[:-1]
                base = package[: len(package) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
                # `from . import x` imports the submodule x.
                names = [f"{target}.{a.name}" for a in node.names] if not node.module else [target]
                found += [(node.lineno, name) for name in names]
            elif node.module:
                found.append((node.lineno, node.module))
    return sorted((line, name) for line, name in found if name == "softipu" or name.startswith("softipu."))


def violations(source: str, path: str, module: str, is_package: bool = False) -> list[str]:
    """Messages for every import of ``source`` that breaks the layer table."""
    layer = layer_of(module)
    if layer not in ALLOWED:
        return [f"{path}: top-level module softipu.{layer} has no entry in the layer table of "
                f"tests/test_layering.py; add one (design.md §1 says which layers it may import)"]
    out = []
    for line, target in imported_modules(source, module, is_package):
        target_layer = layer_of(target)
        if target_layer not in ALLOWED[layer]:
            allowed = ", ".join(sorted(ALLOWED[layer]))
            out.append(f"{path}:{line}: {module} (layer {layer}) imports {target} "
                       f"(layer {target_layer}); {layer} may import only: {allowed}")
    return out


def source_files() -> list[Path]:
    files = sorted(PACKAGE.rglob("*.py"))
    assert files, f"no sources under {PACKAGE}"
    return files


def test_imports_follow_the_layer_table():
    problems = []
    for path in source_files():
        rel = path.relative_to(SRC).as_posix()
        if rel in EXEMPT:
            continue
        problems += violations(path.read_text(), rel, module_name(path), path.name == "__init__.py")
    assert not problems, "layering violations:\n" + "\n".join(problems)


def test_the_checker_names_the_offending_module_and_import():
    source = (
        "from typing import TYPE_CHECKING\n"
        "from softipu.errors import TensorError\n"
        "from softipu.graph.tensor import Tensor\n"
        "if TYPE_CHECKING:\n"
        "    from softipu.compiler.executable import Executable\n"
        "def lazy():\n"
        "    import softipu.engine.engine\n"
        "    from .. import ops\n"
        "    from . import tensor\n"
    )
    found = violations(source, "softipu/graph/bad.py", "softipu.graph.bad")
    assert len(found) == 3
    assert found[0].startswith("softipu/graph/bad.py:5: softipu.graph.bad (layer graph) imports "
                               "softipu.compiler.executable (layer compiler)")
    assert "softipu/graph/bad.py:7:" in found[1] and "softipu.engine.engine (layer engine)" in found[1]
    assert "softipu/graph/bad.py:8:" in found[2] and "imports softipu.ops (layer ops)" in found[2]
    assert "graph may import only: debug, dtypes, errors, graph, log, target" in found[0]


def test_relative_imports_resolve_from_packages_and_modules():
    assert imported_modules("from .tensor import Tensor", "softipu.graph", True) == \
        [(1, "softipu.graph.tensor")]
    assert imported_modules("from .tensor import Tensor", "softipu.graph.graph", False) == \
        [(1, "softipu.graph.tensor")]
    assert imported_modules("from ..engine import Engine", "softipu.ops.mapping", False) == \
        [(1, "softipu.engine")]
    assert imported_modules("import numpy\nimport softipu", "softipu.ops.mapping", False) == \
        [(2, "softipu")]


def test_the_bare_package_and_unknown_layers_are_refused():
    assert violations("import softipu", "softipu/graph/x.py", "softipu.graph.x")
    (message,) = violations("", "softipu/frontend/x.py", "softipu.frontend.x")
    assert "softipu.frontend has no entry in the layer table" in message


@pytest.mark.parametrize("layer", sorted(BASE))
def test_base_modules_import_only_base(layer):
    assert ALLOWED[layer] == BASE
    assert not violations("from softipu.errors import TargetError", f"softipu/{layer}.py", f"softipu.{layer}")
    assert violations("from softipu.graph import Graph", f"softipu/{layer}.py", f"softipu.{layer}")


def _defined_names(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                names |= {n.id for n in ast.walk(t) if isinstance(n, ast.Name)}
    return names


def _public_modules() -> list[Path]:
    return [p for sub in NEED_ALL for p in sorted((PACKAGE / sub).rglob("*.py"))
            if not p.name.startswith("_") or p.name == "__init__.py"]


@pytest.mark.parametrize("path", _public_modules(), ids=lambda p: p.relative_to(PACKAGE).as_posix())
def test_public_modules_define_all(path):
    tree = ast.parse(path.read_text())
    assigned = [node for node in tree.body if isinstance(node, (ast.Assign, ast.AnnAssign))
                and any(isinstance(t, ast.Name) and t.id == "__all__"
                        for t in (node.targets if isinstance(node, ast.Assign) else [node.target]))]
    rel = path.relative_to(SRC).as_posix()
    assert assigned, f"{rel} is public but defines no __all__"
    value = assigned[-1].value
    assert isinstance(value, (ast.List, ast.Tuple)), f"{rel}: __all__ should be a literal list"
    if any(isinstance(e, ast.Starred) for e in value.elts):
        # A re-export module splicing in a family's __all__: check what it exports at run time.
        module = importlib.import_module(rel.removesuffix(".py").removesuffix("/__init__").replace("/", "."))
        missing = sorted(n for n in module.__all__ if not hasattr(module, n))
        assert not missing, f"{rel}: __all__ names {missing}, which the module does not define"
        assert len(set(module.__all__)) == len(module.__all__), f"{rel}: __all__ lists a name twice"
        return
    exported = [e.value for e in value.elts if isinstance(e, ast.Constant)]
    assert len(exported) == len(value.elts), f"{rel}: __all__ should list names as strings"
    missing = sorted(set(exported) - _defined_names(tree))
    assert not missing, f"{rel}: __all__ names {missing}, which the module does not define"
    assert len(set(exported)) == len(exported), f"{rel}: __all__ lists a name twice"
