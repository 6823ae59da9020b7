"""Guided backpropagation against a copy of the model whose ReLUs are replaced by a hand-written guided
ReLU; Guided Grad-CAM = that times the Grad-CAM map; the model is left as found."""

import copy

import pytest
import torch
import torch.nn as nn

from camkit import explain
from camkit.guided import guided_backprop, guided_gradcam
from tests.methods_models import GapNet


class HandGuidedReLU(nn.Module):
    def forward(self, x):
        class Fn(torch.autograd.Function):
            @staticmethod
            def forward(ctx, inp):
                ctx.save_for_backward(inp)
                return inp.clamp_min(0)

            @staticmethod
            def backward(ctx, grad):
                (inp,) = ctx.saved_tensors
                return grad * (grad > 0) * (inp > 0)

        return Fn.apply(x)


def by_hand(net, x, targets):
    guided = copy.deepcopy(net)
    for name, module in list(guided.body.named_children()):
        if isinstance(module, nn.ReLU):
            setattr(guided.body, name, HandGuidedReLU())
    x = x.clone().requires_grad_(True)
    return torch.autograd.grad(guided(x).gather(1, targets[:, None]).sum(), x)[0]


@pytest.mark.parametrize("dims,shape", [(1, (2, 3, 12)), (2, (3, 3, 8, 8)), (3, (2, 3, 4, 6, 6))])
def test_guided_backprop_matches_hand_guided_relus(dims, shape):
    net = GapNet(dims).eval()
    x = torch.randn(shape)
    top = guided_backprop(net, x, topk=2)
    assert top.maps.shape == (shape[0], 2, *shape[1:])
    for k in range(2):
        torch.testing.assert_close(top.maps[:, k], by_hand(net, x, top.targets[:, k]), atol=1e-6, rtol=1e-5)
    one = guided_backprop(net, x, top.targets[:, 0])
    torch.testing.assert_close(one.maps, top.maps[:, 0])
    plain = torch.autograd.grad(net(x.requires_grad_(True)).gather(1, top.targets[:, :1]).sum(), x)[0]
    assert not torch.equal(one.maps, plain)  # the guidance changes the plain gradient


def test_guided_gradcam_is_guided_backprop_times_the_gradcam_map_and_leaves_the_model_alone():
    net = GapNet(2).train()
    for p in net.parameters():
        p.grad = torch.full_like(p, 3.0)
    x = torch.randn(2, 3, 8, 8)
    got = guided_gradcam(net, x, topk=2)
    cam = explain(net, x, "gradcam", topk=2)
    guided = guided_backprop(net, x, cam.targets)
    torch.testing.assert_close(got.maps, guided.maps * cam.maps[:, :, None])
    assert got.map_letters == "NKCHW"
    assert all(m.training for m in net.modules())
    assert all(torch.equal(p.grad, torch.full_like(p, 3.0)) for p in net.parameters())
    assert all(not m._forward_hooks for m in net.modules())


def test_a_model_without_relu_modules_is_a_clear_error():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Tanh(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="no torch.nn.ReLU"):
        guided_backprop(net, torch.randn(1, 3, 6, 6))
