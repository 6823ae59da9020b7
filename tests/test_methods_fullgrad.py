"""FullGrad against a hand-written sum over layers (gradients kept with retain_grad, each term
normalised per sample and interpolated channel by channel)."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from camkit.fullgrad import fullgrad
from tests.methods_models import normalise

CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
NORM = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
MODE = {1: "linear", 2: "bilinear", 3: "trilinear"}


def net_for(dims):
    bn = NORM[dims](4)
    with torch.no_grad():  # a batch norm with non-trivial statistics
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
    return nn.Sequential(CONV[dims](3, 4, 3, padding=1), bn, nn.ReLU(inplace=True),
                         CONV[dims](4, 5, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(1), nn.LazyLinear(3)).eval()


def post(t):
    t = t.abs()
    t = t - t.flatten(1).amin(1).view(-1, *[1] * (t.ndim - 1))
    return t / (t.flatten(1).amax(1).view(-1, *[1] * (t.ndim - 1)) + 1e-6)


def by_hand(net, x, target):
    x = x.clone().requires_grad_(True)
    outs = []
    h = x
    for module in net:
        h = module(h)
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
            h.retain_grad()
            outs.append((module, h))
            h = h.clone()
    net(x)  # lazy layers are built by now
    h.gather(1, target[:, None]).sum().backward()
    total = post(x.grad * x.detach()).sum(1)
    for module, out in outs:
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            b = module.bias - module.running_mean * module.weight / torch.sqrt(module.running_var + module.eps)
        else:
            b = module.bias
        term = post(out.grad * b.detach().view(1, -1, *[1] * (out.ndim - 2)))
        term = F.interpolate(term, size=x.shape[2:], mode=MODE[x.ndim - 2], align_corners=False)
        total = total + term.sum(1)
    return normalise(total.detach())


@pytest.mark.parametrize("dims,shape", [(1, (2, 3, 8)), (2, (2, 3, 6, 6)), (3, (2, 3, 4, 4, 4))])
def test_fullgrad_against_a_hand_written_sum_over_layers(dims, shape):
    x = torch.randn(shape)
    net = net_for(dims)
    net(x)  # materialise the lazy layer
    top = fullgrad(net, x, topk=2)
    assert top.maps.shape == (2, 2, *shape[2:]) and top.map_letters[:2] == "NK"
    for k in range(2):
        torch.testing.assert_close(top.maps[:, k], by_hand(net, x, top.targets[:, k]), atol=1e-5, rtol=1e-4)
    single = fullgrad(net, x[:1], top.targets[:1, 0])
    torch.testing.assert_close(single.maps[0], top.maps[0, 0], atol=1e-5, rtol=1e-4)


def test_fullgrad_leaves_the_model_alone_and_rejects_a_model_without_biases():
    net = net_for(2)
    x = torch.randn(2, 3, 6, 6)
    net(x)
    net.train()
    for p in net.parameters():
        p.grad = torch.ones_like(p)
    stats = net[1].running_mean.clone()
    fullgrad(net, x)
    assert all(m.training for m in net.modules()) and torch.equal(net[1].running_mean, stats)
    assert all(torch.equal(p.grad, torch.ones_like(p)) for p in net.parameters())
    assert all(not m._forward_hooks for m in net.modules())
    with pytest.raises(ValueError, match="no convolution or batch norm with a bias"):
        fullgrad(nn.Sequential(nn.Conv2d(3, 2, 3, bias=False), nn.Flatten(), nn.LazyLinear(2)), x)
