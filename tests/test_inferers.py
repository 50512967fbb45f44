import torch
from monai.inferers import SlidingWindowInferer

from helpers import ThresholdNet
from plimonai.inferers import FlipTTAPredictor, GlassSkipPredictor, PLISlidingWindowInferer
from plimonai.networks import PLIUNet, fuse_conv_bn


def test_plain_equals_monai():
    torch.manual_seed(0)
    x = torch.rand(1, 1, 150, 170)
    net = PLIUNet(1, 2, (4, 8)).eval()
    kw = dict(roi_size=(64, 64), sw_batch_size=2, overlap=0.25, mode="gaussian")
    with torch.no_grad():
        assert torch.allclose(PLISlidingWindowInferer(**kw)(x, net), SlidingWindowInferer(**kw)(x, net), atol=1e-6)


def test_flip_tta_is_flip_equivariant_and_averages():
    torch.manual_seed(0)
    net = PLIUNet(1, 2, (4, 8)).eval()
    x = torch.rand(1, 1, 32, 40)
    tta = FlipTTAPredictor(net)
    with torch.no_grad():
        y = tta(x)
        expected = (net(x) + torch.flip(net(torch.flip(x, (2,))), (2,)) + torch.flip(net(torch.flip(x, (3,))), (3,))) / 3
    assert torch.allclose(y, expected, atol=1e-5)
    assert not torch.allclose(y, net(x), atol=1e-4)  # really averages


def test_glass_windows_skip_the_network():
    calls = []

    def net(x):
        calls.append(x.shape[0])
        return ThresholdNet()(x)

    x = torch.zeros(1, 1, 128, 256)
    x[..., 30:60, 20:50] = 0.6  # tissue in the first 128 x 128 window only
    inf = PLISlidingWindowInferer(roi_size=(128, 128), sw_batch_size=2, overlap=0.0, skip_glass_below=0.03)
    out = inf(x, net)
    assert inf.last_counts == (1, 1) and sum(calls) == 1
    ref = SlidingWindowInferer(roi_size=(128, 128), sw_batch_size=2, overlap=0.0)(x, ThresholdNet())
    assert torch.equal(out.argmax(1), ref.argmax(1))
    assert GlassSkipPredictor(net, 0.03).is_glass(torch.full((2, 1, 16, 16), 0.5)).tolist() == [False, False]


def test_fuse_conv_bn_keeps_outputs():
    torch.manual_seed(0)
    net = PLIUNet(1, 2, (4, 8, 16))
    net.train()
    for _ in range(3):  # give batch norm non-trivial running stats
        net(torch.rand(2, 1, 32, 32) * 3)
    net.eval()
    x = torch.rand(1, 1, 48, 40)
    with torch.no_grad():
        ref = net(x)
        fused = fuse_conv_bn(net)
        n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
        assert n_bn == 2  # only the decoders' norm after concat remains
        assert torch.allclose(fused(x), ref, atol=1e-4)
