"""Properties every method added for issue 12 keeps: batch = loop, top-k = one target at a time,
1D / 2D / 3D features, finite maps, and the model left exactly as found."""

import warnings

import pytest
import torch

from camkit import explain
from tests.methods_models import GapNet

# name -> method options that keep the test fast (perturbation methods: small chunks, few samples)
NEW_METHODS = {
    "gradcam-elementwise": {},
    "eigengradcam": {},
    "fem": {},
    "randomcam": {"seed": 0},
    "ablationcam": {"chunk_size": 16},
    "finercam": {"comparisons": 2},
    "smoothgradcam++": {"std": 0.0, "num_samples": 2},  # noise draws differ between a batch and a loop
    "sscam": {"std": 0.0, "num_samples": 2, "chunk_size": 16},
    "iscam": {"num_samples": 2, "chunk_size": 16},
    "kpcacam": {},
    "shapleycam": {},
    "segeigencam": {},
}
SHAPES = {1: (3, 3, 12), 2: (3, 3, 8, 8), 3: (3, 3, 4, 6, 6)}


def run(model, x, method, **kw):
    with warnings.catch_warnings():  # a tiny random net may give a constant map (tested elsewhere)
        warnings.simplefilter("ignore")
        return explain(model, x, method, method_options=NEW_METHODS[method], **kw)


@pytest.mark.parametrize("method", sorted(NEW_METHODS))
@pytest.mark.parametrize("dims", [1, 2, 3])
def test_shapes_and_finite_maps_in_1d_2d_3d(method, dims):
    model = GapNet(dims).eval()
    x = torch.randn(SHAPES[dims])
    res = run(model, x, method)
    assert res.maps.shape == (3, *SHAPES[dims][2:])
    assert torch.isfinite(res.maps).all() and res.maps.min() >= 0 and res.maps.max() <= 1
    top = run(model, x, method, topk=2)
    assert top.maps.shape == (3, 2, *SHAPES[dims][2:]) and torch.isfinite(top.maps).all()


@pytest.mark.parametrize("method", sorted(set(NEW_METHODS) - {"randomcam"}))  # random: a new draw per call
def test_batch_equals_loop_and_topk_equals_one_target_at_a_time(method):
    model = GapNet(2).eval()
    x = torch.randn(3, 3, 8, 8)
    batch = run(model, x, method)
    for i in range(3):
        single = run(model, x[i:i + 1], method)
        torch.testing.assert_close(single.maps[0], batch.maps[i], atol=1e-5, rtol=1e-4)
    top = run(model, x, method, topk=3)
    for k in range(3):
        one = run(model, x, method, targets=top.targets[:, k])
        torch.testing.assert_close(top.maps[:, k], one.maps, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("method", sorted(NEW_METHODS))
def test_model_state_is_left_as_found(method):
    model = GapNet(2).train()
    model.body[0].eval()
    for p in model.parameters():
        p.grad = torch.full_like(p, 7.0)
    before = {n: m.training for n, m in model.named_modules()}
    params = [p.detach().clone() for p in model.parameters()]
    run(model, torch.randn(2, 3, 8, 8), method, topk=2)
    assert {n: m.training for n, m in model.named_modules()} == before
    assert all(torch.equal(p.grad, torch.full_like(p, 7.0)) for p in model.parameters())
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), params))
    assert all(not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks for m in model.modules())
    assert torch.is_grad_enabled()


@pytest.mark.parametrize("method", sorted(NEW_METHODS))
def test_works_inside_the_callers_inference_mode(method):
    model = GapNet(2).eval()
    x = torch.randn(2, 3, 8, 8)
    expected = run(model, x, method).maps
    with torch.inference_mode():
        got = run(model, torch.randn(2, 3, 8, 8).copy_(x), method).maps
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


class ChannelsLast(torch.nn.Module):
    """A token-style model whose target layer outputs (N, H, W, C) (layout NHWC)."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Conv2d(3, 4, 2, stride=2)
        self.mix = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU())
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.mix(self.embed(x).permute(0, 2, 3, 1)).mean((1, 2)))


class Skeleton(torch.nn.Module):
    """(N, C, T, V, M) clips -> features (N, 4, T, V, M) (layout NCTVM) -> mean -> classes."""

    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Conv3d(3, 4, (3, 1, 1), padding=(1, 0, 0)), torch.nn.ReLU())
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.body(x).mean((2, 3, 4)))


@pytest.mark.parametrize("method", sorted(NEW_METHODS))
def test_channels_last_and_skeleton_layouts(method):
    x = torch.randn(2, 3, 8, 8)
    res = run(ChannelsLast().eval(), x, method, layer="mix", layout="NHWC", topk=2)
    assert res.maps.shape == (2, 2, 8, 8) and torch.isfinite(res.maps).all()
    clips = torch.randn(2, 3, 6, 5, 2)
    res = run(Skeleton().eval(), clips, method, layer="body", layout="NCTVM", reduce="M")
    assert res.maps.shape == (2, 6, 5) and res.map_letters == "NTV" and torch.isfinite(res.maps).all()
