"""`make browser` (run by `make test`, hence by .ci/run): installs Debian's chromium only when it is
missing, with apt as root or through `sudo -n`, and never fails the build when it cannot.

The Makefile's recipe runs under a PATH of stubs (chromium, apt-get, sudo, id) that record how they
were called, so each branch of the decision is taken without touching the machine's chromium."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAKE = shutil.which("make")
pytestmark = pytest.mark.skipif(MAKE is None, reason="no make installed")


def _stub(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text(f"#!/bin/sh\necho \"{name} $*\" >> \"$CALLS\"\n{body}\n")
    path.chmod(0o755)


def _browser(tmp_path: Path, *, chromium: bool, apt: str | None, uid: int) -> tuple[str, list[str]]:
    """Runs `make browser`; apt: None (no apt-get), "ok" or "fails". Returns (output, calls)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    calls.write_text("")
    _stub(bin_dir, "id", f"echo {uid}")
    _stub(bin_dir, "sudo", '[ "$1" = -n ] && shift\nexec "$@"')
    if chromium:
        _stub(bin_dir, "chromium", "")
    if apt is not None:
        _stub(bin_dir, "apt-get", "exit 0" if apt == "ok" else "exit 100")
    env = {"PATH": str(bin_dir), "CALLS": str(calls), "HOME": os.environ.get("HOME", "/tmp")}
    done = subprocess.run([MAKE, "--no-print-directory", "-C", str(ROOT), "browser"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr  # the browser is optional: make test goes on
    return done.stdout + done.stderr, calls.read_text().splitlines()


def test_nothing_is_installed_when_chromium_is_there(tmp_path):
    out, calls = _browser(tmp_path, chromium=True, apt="ok", uid=0)
    assert calls == [] and out == ""


def test_root_installs_chromium_with_apt(tmp_path):
    out, calls = _browser(tmp_path, chromium=False, apt="ok", uid=0)
    assert [c for c in calls if c.startswith(("apt-get", "sudo"))] == [
        "apt-get update -qq", "apt-get install -y -qq chromium"]


def test_a_user_goes_through_sudo_without_a_password_prompt(tmp_path):
    out, calls = _browser(tmp_path, chromium=False, apt="ok", uid=1000)
    assert [c for c in calls if c.startswith(("apt-get", "sudo"))] == [
        "sudo -n apt-get update -qq", "apt-get update -qq",
        "sudo -n apt-get install -y -qq chromium", "apt-get install -y -qq chromium"]


def test_a_failed_install_or_no_apt_only_says_the_browser_tests_will_skip(tmp_path):
    (tmp_path / "a").mkdir()
    out, calls = _browser(tmp_path / "a", chromium=False, apt="fails", uid=0)
    assert "chromium not installed; the browser tests will skip" in out
    assert "apt-get install -y -qq chromium" not in calls  # update failed: no install tried
    (tmp_path / "b").mkdir()
    out, calls = _browser(tmp_path / "b", chromium=False, apt=None, uid=0)
    assert "no apt-get; install Chromium yourself or the browser tests skip" in out
    assert [c for c in calls if c.startswith(("apt-get", "sudo"))] == []
