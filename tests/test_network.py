import pytest
import torch

from plimonai.networks import PLIUNet


@pytest.mark.parametrize("channels", [(4, 8), (4, 8, 16), (4, 8, 16, 32, 64)])
@pytest.mark.parametrize("hw", [(64, 64), (100, 77), (33, 150), (1, 5)])
def test_shapes_any_size(channels, hw):
    net = PLIUNet(in_channels=1, out_channels=2, channels=channels).eval()
    with torch.no_grad():
        y = net(torch.rand(2, 1, *hw))
    assert y.shape == (2, 2, *hw)
    assert net.size_multiple == 2 ** (len(channels) - 1)


def test_in_out_channels_and_structure():
    net = PLIUNet(in_channels=2, out_channels=3, channels=(4, 8, 16))
    assert len(net.encoders) == 2 and len(net.decoders) == 2
    assert net(torch.rand(1, 2, 32, 32)).shape == (1, 3, 32, 32)
    # decoder: transposed conv 2x2 stride 2, BN over concat, conv block of 2 x [conv, BN, ReLU]
    dec = net.decoders[0]
    assert isinstance(dec.up, torch.nn.ConvTranspose2d) and dec.up.kernel_size == (2, 2) and dec.up.stride == (2, 2)
    assert dec.norm.num_features == 8 + 8
    convs = [m for m in dec.conv if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 2 and all(c.kernel_size == (3, 3) for c in convs)


def test_padding_does_not_change_valid_region_much():
    # output for an exact multiple and for the same image cropped by one pixel agree away from the edge
    torch.manual_seed(0)
    net = PLIUNet(1, 2, (4, 8, 16)).eval()
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        full, cropped = net(x), net(x[..., :63, :63])
    assert torch.allclose(full[..., 8:40, 8:40], cropped[..., 8:40, 8:40], atol=1e-4)


def test_gradient_reaches_every_parameter():
    torch.manual_seed(0)
    net = PLIUNet(1, 2, (4, 8, 16))
    loss = net(torch.rand(2, 1, 40, 36)).logsumexp(1).mean()
    loss.backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_rejects_single_level():
    with pytest.raises(ValueError):
        PLIUNet(channels=(8,))


def test_split_decoders_same_outputs():
    # the ONNX export's decoder form (no concat) must compute what the trained network computes, BN statistics included
    import copy

    from plimonai.networks.fusion import SplitDecoder, fuse_conv_bn, split_decoders

    torch.manual_seed(0)
    net = PLIUNet(1, 2, channels=(4, 8, 16))
    for m in net.modules():  # non-trivial running statistics and affine parameters
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.3, 0.3)
    net.eval()
    x = torch.rand(2, 1, 48, 72)
    with torch.no_grad():
        ref = net(x)
        for prepare in (lambda n: n, fuse_conv_bn):  # with or without conv + BN folding first
            split = split_decoders(prepare(copy.deepcopy(net)))
            assert sum(isinstance(m, SplitDecoder) for m in split.modules()) == 2
            assert not any(type(m).__name__ == "DecoderBlock" for m in split.modules())
            torch.testing.assert_close(split(x), ref, atol=1e-5, rtol=1e-4)
