"""Fine-tuning handlers: L2-SP anchor towards the starting weights, frozen batch-norm statistics."""

from __future__ import annotations

import torch
from ignite.engine import Engine
from torch import nn

from plimonai.handlers import AnchorToInit, KeepBatchNormStats


def make_engine(net: nn.Module, lr: float = 0.05) -> Engine:
    """A trainer-like engine: every iteration pushes all weights one way (constant gradient) with Adam."""
    opt = torch.optim.Adam(net.parameters(), lr=lr)

    def step(engine, batch):
        net.train()
        opt.zero_grad()
        out = net(batch)
        (out.mean() * 0 + sum(p.sum() for p in net.parameters())).backward()
        opt.step()

    eng = Engine(step)
    eng.network, eng.optimizer = net, opt  # what MONAI's SupervisedTrainer exposes
    return eng


def net_with_bn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())


def drift(strength: float, path: str = "") -> float:
    net = net_with_bn()
    start = [p.detach().clone() for p in net.parameters()]
    eng = make_engine(net)
    AnchorToInit(path, strength).attach(eng)
    eng.run([torch.rand(2, 1, 8, 8) for _ in range(200)], max_epochs=1)
    return max((p.detach() - s).abs().max().item() for p, s in zip(net.parameters(), start))


def test_anchor_limits_the_drift_from_the_start():
    free, anchored = drift(0.0), drift(10.0)
    assert free > 5.0  # Adam: ~lr per step, 200 steps
    assert anchored < 0.1  # each step: +lr from Adam, then half the distance back (lr * strength = 0.5)
    assert drift(1e4) < 1e-6  # lr * strength capped at 1: back on the anchor, no overshoot
    assert drift(0.0) == free  # strength 0: the handler does nothing


def test_anchor_from_file_pulls_to_those_weights(tmp_path):
    ref = net_with_bn()
    with torch.no_grad():
        for p in ref.parameters():
            p.fill_(0.5)
    torch.save(ref.state_dict(), tmp_path / "init.pt")
    net = net_with_bn()
    eng = make_engine(net, lr=1e-3)
    AnchorToInit(str(tmp_path / "init.pt"), 500.0).attach(eng)
    eng.run([torch.rand(2, 1, 8, 8) for _ in range(300)], max_epochs=1)
    assert all((p.detach() - 0.5).abs().max().item() < 0.05 for p in net.parameters())


def test_keep_batch_norm_stats():
    for enabled in (False, True):
        net = net_with_bn()
        before = net[1].running_mean.clone()
        eng = make_engine(net)
        KeepBatchNormStats(enabled).attach(eng)
        eng.run([torch.rand(2, 1, 8, 8) + 3.0 for _ in range(5)], max_epochs=1)
        assert torch.equal(net[1].running_mean, before) == enabled
        assert not torch.equal(net[1].weight, torch.ones(4))  # affine weights still train either way
