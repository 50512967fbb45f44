"""Network backends: eager, ONNX Runtime, torch.compile give the same logits; ``auto`` selection and fallbacks."""

from __future__ import annotations

import importlib.util
import logging

import pytest
import torch

from plimonai.networks import PLIUNet, fuse_conv_bn, load_backend, resolve_backend
from plimonai.networks import backends as bk


def trained_like_net(seed: int = 0) -> PLIUNet:
    """A small PLIUNet with non-trivial batch-norm statistics, folded as the inference handlers do."""
    torch.manual_seed(seed)
    net = PLIUNet(1, 2, (4, 8, 16)).eval()
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return fuse_conv_bn(net) or net


@pytest.fixture
def x() -> torch.Tensor:
    return torch.rand(2, 1, 96, 130, generator=torch.Generator().manual_seed(1))  # 130: not a multiple of 4


def test_onnxruntime_matches_eager(x):
    pytest.importorskip("onnxruntime")
    net = trained_like_net()
    ort = load_backend("onnxruntime", net, None, "cpu")
    assert isinstance(ort, bk.OnnxRuntimeNetwork) and ort.module is net
    with torch.inference_mode():
        ref, out = net(x), ort(x)
        odd = ort(x[:1, :, :37, :50])  # another size, batch 1: a second fixed-size session
        ref_odd = net(x[:1, :, :37, :50])
        third = ort(x[:, :, :64, :64])  # a third size: beyond max_shapes, the dynamic session
        ref_third = net(x[:, :, :64, :64])
        again = ort(x[:1])  # the first size at another batch size: its session again
    assert out.shape == ref.shape and odd.shape == ref_odd.shape
    assert torch.allclose(out, ref, atol=1e-4) and torch.allclose(odd, ref_odd, atol=1e-4)
    assert torch.allclose(third, ref_third, atol=1e-4) and torch.allclose(again, ref[:1], atol=1e-4)
    assert (out.argmax(1) == ref.argmax(1)).float().mean() >= 0.999
    sessions = ort._runtime["sessions"]  # padded sizes (multiple of 4) -> session; None: any size
    assert set(sessions) == {(96, 132), (40, 52), None}
    fixed = [i.shape for i in sessions[(96, 132)].get_inputs()][0]
    assert fixed[1:] == [1, 96, 132] and not isinstance(fixed[0], int)  # spatial size fixed, batch dynamic
    assert not all(isinstance(d, int) for d in sessions[None].get_inputs()[0].shape)


def test_fixed_size_graph_same_outputs(x):
    pytest.importorskip("onnxruntime")
    net = trained_like_net()
    model = bk.export_onnx(net, 1, 4)
    opts = bk.ort_session_options(1)
    dyn, fixed = bk.ort_session(model, opts), bk.ort_session(model, opts, (96, 132))
    xp = torch.nn.functional.pad(x, (0, 2)).numpy()
    a, b = dyn.run(None, {"image": xp})[0], fixed.run(None, {"image": xp})[0]
    assert a.shape == b.shape == (2, 2, 96, 132) and abs(a - b).max() < 1e-4
    with pytest.raises(Exception):  # the fixed graph refuses another size instead of computing garbage
        fixed.run(None, {"image": xp[..., :64]})


def test_onnxruntime_takes_new_weights(x):
    """CheckpointLoader calls load_state_dict on the wrapper: the session must be rebuilt from those weights."""
    pytest.importorskip("onnxruntime")
    a, b = trained_like_net(0), trained_like_net(1)
    ort = load_backend("onnxruntime", a, None, "cpu")
    with torch.inference_mode():
        before = ort(x)
        ort.load_state_dict(b.state_dict())
        after = ort(x)
        ref_b = b(x)
    assert not torch.allclose(before, after, atol=1e-3)
    assert torch.allclose(after, ref_b, atol=1e-4)
    assert set(ort.state_dict()) == set(b.state_dict())  # keys without a wrapper prefix


def test_compile_matches_eager_or_falls_back(x, monkeypatch, caplog):
    net = trained_like_net()
    comp = load_backend("compile", net, None, "cpu")
    assert isinstance(comp, bk.CompiledNetwork)

    def broken(*a, **k):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", broken)  # the fallback path: eager, with a warning
    with caplog.at_level(logging.WARNING), torch.inference_mode():
        out = comp(x)
        ref = net(x)
    assert "torch.compile failed" in caplog.text and comp._runtime is net
    assert torch.equal(out, ref)


@pytest.mark.slow
def test_compile_really_compiles_and_matches(x):
    """Slow: inductor compilation takes tens of seconds on 2 cores."""
    net = trained_like_net()
    comp = load_backend("compile", net, None, "cpu")
    with torch.inference_mode():
        out, ref = comp(x), net(x)
    assert comp._runtime is not net
    assert torch.allclose(out, ref, atol=1e-4)


def test_auto_selection(monkeypatch):
    have_ort = importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None
    assert resolve_backend("auto", "cpu") == ("onnxruntime" if have_ort else "eager")
    assert resolve_backend("auto", "cuda") == "eager"
    assert resolve_backend("Eager", "cpu") == "eager"
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "onnxruntime" else real(n, *a))
    assert resolve_backend("auto", "cpu") == "eager"  # onnxruntime missing: graceful fallback
    net = PLIUNet(1, 2, (4, 8))
    assert load_backend("auto", net, None, "cpu") is net
    with pytest.raises(ImportError, match=r"plimonai\[fast\]"):  # asked for explicitly: a clear error
        load_backend("onnxruntime", net, None, "cpu")


def test_uses_checkpoint():
    assert all(bk.uses_checkpoint(b) for b in ("auto", "eager", "onnxruntime", "compile"))
    assert not bk.uses_checkpoint("torchscript")
    with pytest.raises(ValueError, match="unknown"):
        bk.uses_checkpoint("tvm")
