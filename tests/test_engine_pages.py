"""Engine option host.hugePages (engine.host_pages): with False numpy's huge-page advice is off
inside the context and restored after it, also when the body raises; an array made inside carries
no MADV_HUGEPAGE advice where one made outside does; with True nothing changes. The torch training
frontend's engines take False."""

import re

import numpy as np
import pytest
import torch

import softipu as sp
import softipu.torch as st
from _torch_models import LinearMSE
from softipu.engine.engine import base_pages_array, host_pages

_switch = getattr(getattr(np, "_core", None), "multiarray", None)
_switch = getattr(_switch, "_set_madvise_hugepage", None)
pytestmark = pytest.mark.skipif(_switch is None, reason="this numpy has no huge-page switch")


def _current() -> bool:
    before = _switch(True)
    _switch(before)
    return before


@pytest.mark.parametrize("outside", [True, False])
def test_advice_off_inside_and_restored_after(outside):
    before = _switch(outside)
    try:
        with host_pages(huge=False):
            assert _current() is False
        assert _current() is outside
        with pytest.raises(RuntimeError), host_pages(huge=False):
            raise RuntimeError("boom")
        assert _current() is outside
    finally:
        _switch(before)


def _advised(a: np.ndarray) -> bool:
    """Whether the mapping holding ``a``'s middle byte carries MADV_HUGEPAGE ("hg" in its VmFlags,
    /proc/self/smaps): the advice itself, whether or not the kernel found a huge page to give.
    (numpy advises from the array's first whole page on, so its first byte may lie outside.)"""
    addr = a.__array_interface__["data"][0] + a.nbytes // 2
    inside = False
    with open("/proc/self/smaps") as f:
        for line in f:
            m = re.match(r"^([0-9a-f]+)-([0-9a-f]+) ", line)
            if m:
                inside = int(m.group(1), 16) <= addr < int(m.group(2), 16)
            elif inside and line.startswith("VmFlags:"):
                return "hg" in line.split()[1:]
    raise AssertionError("the array's mapping is not in /proc/self/smaps")


def test_array_made_inside_is_not_advised():
    try:
        open("/proc/self/smaps").close()
    except OSError:
        pytest.skip("no /proc/self/smaps here")
    before = _switch(True)
    try:
        advised = np.zeros(64 << 20, np.uint8)  # numpy advises from 4 MiB; above glibc's 32 MiB
        # largest mmap threshold, so each array is a fresh mapping, not reused heap
        if not _advised(advised):
            pytest.skip("this numpy or kernel does not advise huge pages")
        with host_pages(huge=False):
            plain = np.zeros(64 << 20, np.uint8)
        assert not _advised(plain)
    finally:
        _switch(before)


def test_base_pages_array_is_not_advised_where_the_heap_was():
    # A freed heap chunk keeps the advice numpy gave it, and malloc hands it out again: an array
    # made under host_pages(False) can land in it (CI saw the rollback's saved array do so).
    before = _switch(True)
    try:
        probe = np.empty(30 << 20, np.uint8)  # mmapped; freeing it lifts malloc's threshold to 30 MiB
        del probe
        parts = [np.ones(20 << 20, np.uint8) for _ in range(3)]  # heap chunks now, advised
        blocker = np.ones(5 << 20, np.uint8)  # keeps the freed chunks off the heap's trimmed top
        if not _advised(parts[0]):
            pytest.skip("this numpy or kernel does not advise huge pages")
        del parts
        with host_pages(huge=False):
            a = base_pages_array((1 << 20, 5), np.float32)  # 20 MiB: a heap size
        assert a.shape == (1 << 20, 5) and a.dtype == np.float32 and a.flags.writeable
        assert not a.any()
        assert not _advised(a)
        del blocker
    finally:
        _switch(before)


def test_huge_true_changes_nothing():
    before = _switch(True)
    try:
        with host_pages(huge=True):
            assert _current() is True
    finally:
        _switch(before)


@pytest.mark.parametrize(("given", "huge"), [({}, False), ({"host.hugePages": True}, True)])
def test_training_engines_take_base_pages_unless_told(given, huge):
    torch.manual_seed(0)
    module = LinearMSE()
    opts = st.Options(target=sp.targets.ipu_model(tiles=4), engine_options=given)
    model = st.training_model(module, torch.optim.SGD(module.parameters(), lr=0.1), opts)
    model(torch.ones(2, 4), torch.zeros(2, 2))
    assert model._engine.options.huge_pages is huge


class _Wide(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(2048, 4096)  # 8 M weights: a saved array of 32 MiB and more

    def forward(self, x, y):
        return torch.nn.functional.mse_loss(self.linear(x), y)


def test_training_rollback_saves_into_base_pages():
    # numpy advises at allocation, so the rollback's saved array must be made inside the context.
    before = _switch(True)
    try:
        probe = np.zeros(64 << 20, np.uint8)
        if not _advised(probe):
            pytest.skip("this numpy or kernel does not advise huge pages")
        del probe
        torch.manual_seed(0)
        module = _Wide()
        opts = st.Options(target=sp.targets.ipu_model(tiles=4, bytes_per_tile=32 << 20))
        model = st.training_model(module, torch.optim.SGD(module.parameters(), lr=0.1), opts)
        model(torch.ones(2, 2048), torch.zeros(2, 4096))
        saved = [s[2] for s in model._rollback._spans]
        assert max(a.nbytes for a in saved) >= 32 << 20
        assert not any(_advised(a) for a in saved)
    finally:
        _switch(before)
