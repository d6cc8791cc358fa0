"""softipu.poptorch: a PopTorch-style script runs with only its import changed."""

from __future__ import annotations

import os
import shutil
import warnings

import pytest
import torch

import softipu as sp
import softipu.poptorch as poptorch
import softipu.torch as st
from softipu.compiler.serialize import ARRAYS, MANIFEST
from softipu.engine import engine as engine_module
from softipu.errors import OptionError, SoftIPUError
from softipu.frontends.torch import options as options_module
from softipu.frontends.torch import runtime

SMALL = sp.targets.ipu_model(tiles=8, bytes_per_tile=512 * 1024)


@pytest.fixture(autouse=True)
def fresh_warnings():
    """Each test sees its own one-time warnings (they are once per process otherwise)."""
    options_module._WARNED.clear()
    yield


class Classifier(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.l1 = poptorch.BeginBlock(torch.nn.Linear(8, 16), "encoder", ipu_id=0)
        self.l2 = torch.nn.Linear(16, 4)

    def forward(self, x, labels=None):
        out = self.l2(torch.relu(self.l1(x)))
        if labels is None:
            return out
        return out, poptorch.identity_loss(torch.nn.functional.cross_entropy(out, labels), "mean")


def test_a_poptorch_inference_script_runs_unchanged():
    # -- what a PopTorch user writes (on GC200, the default chip) --------------------------------------
    torch.manual_seed(0)
    model = Classifier()
    model.eval()
    opts = poptorch.Options()
    opts.deviceIterations(2)
    opts.replicationFactor(1)
    opts.randomSeed(42)
    opts.logCycleCount(True)
    opts.outputMode(poptorch.OutputMode.All)
    opts.setAvailableMemoryProportion({"IPU0": 0.5})
    opts.Precision.setPartialsType(torch.float)
    poptorch_model = poptorch.inferenceModel(model, opts)
    x = torch.randn(8, 8)
    out = poptorch_model(x)
    cycles = poptorch_model.cycleCount()
    # -- checks -------------------------------------------------------------------------------------
    assert torch.allclose(out, model(x), rtol=1e-4, atol=1e-5)
    assert cycles > 0 and poptorch_model.isCompiled() and poptorch_model.isAttachedToDevice()
    assert poptorch_model.options is opts and poptorch_model.l2 is model.l2  # attribute forwarding
    assert poptorch.block_of(model.l1) == ("encoder", 0)


def test_options_chain_validate_and_convert():
    opts = poptorch.Options().deviceIterations(4).replicationFactor(2).randomSeed(7).setTarget(SMALL)
    converted = opts.toSoftipu()
    assert isinstance(converted, st.Options)
    assert (converted.device_iterations, converted.replication_factor, converted.seed) == (4, 2, 7)
    assert opts.device_iterations == 4 and opts.replication_factor == 2
    assert poptorch.Options().useOfflineIpuTarget(21).toSoftipu().target is sp.targets.BOW
    with pytest.raises(OptionError, match="device_iterations must be an int >= 1"):
        poptorch.Options().deviceIterations(0)
    with pytest.raises(AttributeError, match="did you mean 'deviceIterations'"):
        poptorch.Options().deviceIteration(3)
    with pytest.raises(AttributeError, match="Precision has no option"):
        poptorch.Options().Precision.setPartialType(torch.half)
    assert poptorch.Options().Precision.setPartialsType(torch.half) is not None
    assert poptorch.Options().outputMode(poptorch.OutputMode.EveryN, 2).toSoftipu().output_return_period == 2


def test_options_without_meaning_are_stored_and_warned_once():
    opts = poptorch.Options()
    with pytest.warns(st.UnusedOptionWarning, match="Training.setConvolutionDithering"):
        assert opts.Training.setConvolutionDithering(False) is opts.Training
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opts.Training.setConvolutionDithering(True)  # the second time: stored, no warning
    with pytest.warns(st.UnusedOptionWarning, match="Precision.halfFloatCasting"):
        opts.Precision.halfFloatCasting(poptorch.HalfFloatCastingBehavior.HalfUpcastToFloat)
    with pytest.warns(st.UnusedOptionWarning, match="syncPattern"):
        opts.syncPattern(poptorch.SyncPattern.SinglePipeline)
    assert opts.stored["Training.setConvolutionDithering"] is True
    assert opts.toSoftipu().stored["Precision.halfFloatCasting"] == poptorch.HalfFloatCastingBehavior.HalfUpcastToFloat
    opts.Precision.enableFloatingPointExceptions(True)
    assert opts.toSoftipu().engine_options == {"debug.floatingPointExceptions": True}
    opts.Precision.enableStochasticRounding(True)
    opts.randomSeed(7)
    assert opts.toSoftipu().engine_options == {"debug.floatingPointExceptions": True,
                                              "prng.enableStochasticRounding": True, "prng.seed": 7}


def test_executor_methods():
    torch.manual_seed(1)
    net = torch.nn.Linear(3, 2).eval()
    model = poptorch.inferenceModel(net, poptorch.Options().setTarget(SMALL))
    x = torch.randn(2, 3)
    model.compile(x)
    assert model.isCompiled()
    with pytest.raises(SoftIPUError, match="logCycleCount"):
        model.cycleCount()
    model.detachFromDevice()
    assert not model.isAttachedToDevice()
    model.attachToDevice()
    with torch.no_grad():
        net.bias.add_(1.0)
    model.copyWeightsToDevice()
    model.copyWeightsToHost()
    assert torch.allclose(model(x), net(x), atol=1e-6)
    assert set(model.getPerfCounters()) == {"input", "input_complete", "output", "output_complete"}
    model.destroy()
    assert not model.isCompiled()


# -- compileAndExport / loadExecutable -----------------------------------------------------------------
def classifier_wrapper() -> tuple[torch.nn.Module, poptorch.PoplarExecutor]:
    """The same module and options each time, as a second process would build them."""
    torch.manual_seed(0)
    model = Classifier().eval()
    opts = poptorch.Options().deviceIterations(2).setTarget(SMALL).logCycleCount(True)
    return model, poptorch.inferenceModel(model, opts)


def no_compiling(monkeypatch) -> None:
    def boom(*args, **kwargs):
        raise AssertionError("compiled although an exported executable was loaded")
    monkeypatch.setattr(runtime, "export_program", boom)
    monkeypatch.setattr(runtime, "lower_program", boom)
    monkeypatch.setattr(engine_module, "compile_graph", boom)


def test_an_exported_executable_loads_into_a_fresh_wrapper_without_compiling(tmp_path, monkeypatch):
    _, original = classifier_wrapper()
    x = torch.randn(8, 8)
    with pytest.warns(st.UnusedOptionWarning, match=r"build the module again.*loadExecutable"):
        original.compileAndExport(str(tmp_path / "a" / "model.poptorch"), x)  # export_model=True
    assert original.isCompiled()
    want, cycles = original(x), original.cycleCount()
    assert (tmp_path / "a" / "model.poptorch").is_file()  # one file, as PopTorch writes
    moved = tmp_path / "b" / "model.poptorch"  # another directory, the original gone
    moved.parent.mkdir()
    shutil.copy(tmp_path / "a" / "model.poptorch", moved)
    shutil.rmtree(tmp_path / "a")
    no_compiling(monkeypatch)
    model, loaded = classifier_wrapper()
    loaded.loadExecutable(str(moved))
    assert loaded.isCompiled() and set(loaded._impl.compile_seconds) == {"executable_load", "load"}
    out = loaded(x)
    assert torch.equal(out, want) and loaded.cycleCount() == cycles > 0
    with torch.no_grad():
        assert torch.allclose(out, model(x), rtol=1e-4, atol=1e-5)
        model.l2.bias.add_(1.0)  # the weights are the module's, not the file's
    loaded.copyWeightsToDevice()
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x), rtol=1e-4, atol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded.compileAndExport(moved, x, export_model=False)  # replaces it; compiled already


def test_loading_into_another_model_names_what_differs(tmp_path):
    path = tmp_path / "net"
    opts = poptorch.Options().setTarget(SMALL)
    x = torch.randn(2, 4)
    narrow = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU())
    poptorch.inferenceModel(narrow, opts).compileAndExport(path, x, export_model=False)
    wider = poptorch.inferenceModel(torch.nn.Sequential(torch.nn.Linear(5, 3), torch.nn.ReLU()), opts)
    with pytest.raises(SoftIPUError, match=r"0.weight is float32\[3, 5\] here, float32\[3, 4\] in the file"):
        wider.loadExecutable(path)
    assert not wider.isCompiled()  # nothing half-loaded
    other_act = poptorch.inferenceModel(torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.GELU()), opts)
    with pytest.raises(SoftIPUError, match="code, classes or attributes"):
        other_act.loadExecutable(path)
    iterating = poptorch.inferenceModel(narrow, poptorch.Options().setTarget(SMALL).deviceIterations(2))
    with pytest.raises(SoftIPUError, match="option device_iterations is 2 here, 1 in the file"):
        iterating.loadExecutable(path)
    assert not iterating.isCompiled()


def test_corrupt_and_foreign_files_are_refused_clearly(tmp_path):
    net, x = torch.nn.Linear(4, 3), torch.randn(2, 4)
    opts = st.Options(target=SMALL)
    path = tmp_path / "net"
    st.inference_model(net, opts).export(path, x)  # softipu.torch's export: a directory
    damaged = {"manifest": tmp_path / "manifest", "arrays": tmp_path / "arrays", "signature": tmp_path / "sig"}
    for copy in damaged.values():
        shutil.copytree(path, copy)
    (damaged["manifest"] / MANIFEST).write_text("{ not json")
    data = (damaged["arrays"] / ARRAYS).read_bytes()
    (damaged["arrays"] / ARRAYS).write_bytes(data[: len(data) // 2])
    text = (damaged["signature"] / MANIFEST).read_text()
    assert text.count('["signature",') == 1
    (damaged["signature"] / MANIFEST).write_text(text.replace('["signature",', '["signatur",'))
    popart_file = tmp_path / "model.poptorch"
    popart_file.write_bytes(b"\x80\x04 a PopTorch pickle")
    cache_dir = tmp_path / "cache"  # an executable cache entry: an executable but no signature
    poptorch.inferenceModel(net, poptorch.Options().setTarget(SMALL).enableExecutableCaching(str(cache_dir)))(x)
    (entry,) = cache_dir.iterdir()
    cases = [(damaged["manifest"], "cannot load"), (damaged["arrays"], "cannot load"),
             (damaged["signature"], "cannot load"), (popart_file, "not a softipu archive"),
             (tmp_path / "absent", "does not exist"), (entry, "no exported signature")]
    for where, message in cases:
        model = poptorch.inferenceModel(net, poptorch.Options().setTarget(SMALL))
        with pytest.raises(poptorch.Error, match=message) as caught:
            model.loadExecutable(where)
        assert isinstance(caught.value, SoftIPUError)
        assert not model.isCompiled()
    truncated = tmp_path / "truncated.poptorch"
    poptorch.inferenceModel(net, poptorch.Options().setTarget(SMALL)).compileAndExport(
        truncated, x, export_model=False)
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(SoftIPUError, match="not a softipu archive|damaged archive|cannot load"):
        poptorch.inferenceModel(net, poptorch.Options().setTarget(SMALL)).loadExecutable(truncated)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    with pytest.raises(SoftIPUError, match="not a softipu export"):
        poptorch.inferenceModel(net, poptorch.Options().setTarget(SMALL)).compileAndExport(
            tmp_path / "notes", x, export_model=False)
    assert (tmp_path / "notes" / "todo.txt").read_text() == "mine"
    with pytest.raises(SoftIPUError, match=r"never pickles.*loadExecutable"):
        poptorch.load(path)


def test_output_mode_final_and_replication():
    torch.manual_seed(2)
    net = torch.nn.Linear(4, 2).eval()
    opts = poptorch.Options().deviceIterations(3).replicationFactor(2).setTarget(SMALL)
    opts.outputMode(poptorch.OutputMode.Final)
    x = torch.randn(12, 4)
    out = poptorch.inferenceModel(net, opts)(x)
    assert torch.allclose(out, net(x[8:]), atol=1e-6)


def test_ipu_print_tensor_prints_on_the_device(capsys):
    class Printer(torch.nn.Module):
        def forward(self, x):
            return poptorch.ipu_print_tensor(x * 2, "doubled") + 1

    model = poptorch.inferenceModel(Printer(), poptorch.Options().setTarget(SMALL))
    assert torch.equal(model(torch.tensor([1.0, 2.0])), torch.tensor([3.0, 5.0]))
    assert "doubled: [2. 4.]" in capsys.readouterr().out


def test_dataloader_batches_what_one_call_consumes():
    opts = poptorch.Options().deviceIterations(3).replicationFactor(2)
    data = torch.utils.data.TensorDataset(torch.arange(60.0).view(30, 2))
    loader = poptorch.DataLoader(opts, data, batch_size=2)
    (batch,) = next(iter(loader))
    assert batch.shape == (12, 2) and len(loader) == 2


def test_annotations_and_helpers():
    with poptorch.Block("stage", ipu_id=0):
        t = torch.ones(2)
    assert poptorch.recomputationCheckpoint(t) is t
    with pytest.warns(st.UnusedOptionWarning, match="set_available_memory"):
        assert poptorch.set_available_memory(t, 0.3) is t
    assert float(poptorch.identity_loss(torch.tensor([1.0, 3.0]), "sum")) == 4.0
    with pytest.raises(SoftIPUError, match="reduction"):
        poptorch.identity_loss(t, "max")
    assert not poptorch.ipuHardwareIsAvailable()
    poptorch.setLogLevel("INFO")
    assert st.logger.level == 20
    poptorch.setLogLevel("WARNING")


def test_docstring_example():
    import doctest

    import softipu.frontends.poptorch

    assert doctest.testmod(softipu.frontends.poptorch).failed == 0


def test_a_failed_export_leaves_the_earlier_one_in_place(tmp_path, monkeypatch):
    """Exporting over an earlier export swaps directories (softipu.torch) or replaces the one file
    (softipu.poptorch); when that fails, the earlier export is there whole and the error says why."""
    from softipu.frontends import poptorch_executor
    from softipu.frontends.torch import cache
    net, x = torch.nn.Linear(4, 3), torch.randn(2, 4)
    opts = st.Options(target=SMALL)
    path = tmp_path / "net"
    st.inference_model(net, opts).export(path, x)
    before = sorted(p.name for p in path.iterdir())
    real = os.rename

    def rename(src, dst):
        if ".tmp-" in str(src):
            raise OSError("disk full")
        real(src, dst)

    monkeypatch.setattr(cache.os, "rename", rename)
    with pytest.raises(SoftIPUError, match="cannot export to .*disk full"):
        st.inference_model(net, opts).export(path, torch.randn(5, 4))
    monkeypatch.setattr(cache.os, "rename", real)
    assert sorted(p.name for p in path.iterdir()) == before
    assert [p.name for p in tmp_path.iterdir()] == ["net"]  # no temporaries left behind
    loaded = st.inference_model(net, opts)
    loaded.load_executable(path)
    with torch.no_grad():
        assert torch.allclose(loaded(x), net(x), atol=1e-6)
    # softipu.poptorch's one file
    popts = poptorch.Options().setTarget(SMALL)
    file = tmp_path / "net.poptorch"
    poptorch.inferenceModel(net, popts).compileAndExport(file, x, export_model=False)
    data = file.read_bytes()

    def replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(poptorch_executor.os, "replace", replace)
    with pytest.raises(poptorch.Error, match="disk full"):
        poptorch.inferenceModel(net, popts).compileAndExport(file, torch.randn(5, 4), export_model=False)
    assert file.read_bytes() == data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net", "net.poptorch"]
