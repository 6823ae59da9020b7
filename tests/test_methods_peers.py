"""The peer differences docs/methods.md writes down, each shown where the peer (torchcam, pytorch-grad-cam)
is installed: the peer's map equals a hand-written formula with the peer's convention and differs from the
same formula without it (or from camkit) by far more than float error."""

import copy

import pytest
import torch
import torch.nn as nn

import camkit
from tests.methods_models import DeepHead, features_and_gradients


def _torchcam_normalise(m):
    """torchcam's ``_normalize``: minus the minimum, over the maximum + 1e-8, per map."""
    m = m - m.flatten(1).amin(1).view(-1, *[1] * (m.ndim - 1))
    return m / (m.flatten(1).amax(1).view(-1, *[1] * (m.ndim - 1)) + 1e-8)


class StridedNet(nn.Module):
    """strided conv (``stem``, 8 x 8 for 16 x 16 inputs) -> ReLU -> strided conv (``features``, 4 x 4) -> ReLU ->
    GAP -> tanh head."""

    def __init__(self, classes=4):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Sequential(nn.Conv2d(3, 6, 3, stride=2, padding=1), nn.ReLU())
        self.features = nn.Sequential(nn.Conv2d(6, 5, 3, stride=2, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 6), nn.Tanh(),
                                  nn.Linear(6, classes))

    def forward(self, x):
        return 10 * self.head(self.features(self.stem(x)))  # scores far apart: channel weights that differ


def test_torchcam_smooth_gradcampp_contracts_with_the_last_noisy_copys_features():
    methods = pytest.importorskip("torchcam.methods")
    net, x, ids = DeepHead().eval(), torch.randn(2, 3, 8, 8), torch.tensor([0, 2])
    with methods.SmoothGradCAMpp(net, "features", num_samples=3, std=0.3, input_shape=(3, 8, 8)) as extractor:
        net(x)
        torch.manual_seed(5)
        theirs = extractor(ids.tolist())[0]
    torch.manual_seed(5)
    noisy = [x + torch.distributions.normal.Normal(0, 0.3).sample(x.shape) for _ in range(3)]
    clean, _, _ = features_and_gradients(net, net.features, x, ids)
    copies = [features_and_gradients(net, net.features, xm, ids)[:2] for xm in noisy]
    d2 = sum(g ** 2 for _, g in copies) / 3
    d3 = sum(g ** 3 for _, g in copies) / 3
    alpha = d2 / (2 * d2 + (d3 * clean).sum((2, 3), keepdim=True) + 1e-8)
    last_features, last_gradient = copies[-1]
    w = (alpha * last_gradient.relu()).sum((2, 3), keepdim=True)
    with_last = _torchcam_normalise((w * last_features).sum(1).relu())
    with_clean = _torchcam_normalise((w * clean).sum(1).relu())
    torch.testing.assert_close(theirs, with_last, atol=1e-5, rtol=1e-4)
    assert (theirs - with_clean).abs().max() > 1e-2


def _torchcam_iscam_by_hand(net, x, ids, normalise_first, num_samples=3):
    """torchcam's IS-CAM by hand: masks from the features min-max normalised per channel *before* (its way) or
    after upsampling, the coefficient accumulated (1/N, 1/N + 2/N, ...), the mean of the score minus the
    unmasked score, a softmax over channels."""
    import torch.nn.functional as F

    f = net.features(net.stem(x)).detach()

    def per_channel(t):
        t = t - t.amin((2, 3), keepdim=True)
        return t / (t.amax((2, 3), keepdim=True) + 1e-8)

    def upsample(t):
        return F.interpolate(t, x.shape[2:], mode="bilinear", align_corners=False)

    masks = upsample(per_channel(f)) if normalise_first else per_channel(upsample(f))
    with torch.no_grad():
        baseline = net(x).gather(1, ids[:, None])
        scores = torch.zeros(f.shape[:2])
        coefficient = 0.0
        for i in range(num_samples):
            coefficient += (i + 1) / num_samples
            for k in range(f.shape[1]):
                scores[:, k] += net(coefficient * masks[:, k:k + 1] * x).gather(1, ids[:, None])[:, 0] - baseline[:, 0]
    weights = (scores / num_samples).softmax(dim=1)
    return _torchcam_normalise((weights[:, :, None, None] * f).sum(1).relu())


def test_torchcam_score_cams_normalise_each_channel_before_upsampling():
    methods = pytest.importorskip("torchcam.methods")
    net, x, ids = StridedNet().eval(), torch.randn(2, 3, 16, 16), torch.tensor([1, 3])
    with methods.ISCAM(net, "features", num_samples=3, input_shape=(3, 16, 16)) as extractor:
        net(x)
        theirs = extractor(ids.tolist())[0]
    torch.testing.assert_close(theirs, _torchcam_iscam_by_hand(net, x, ids, normalise_first=True),
                               atol=1e-5, rtol=1e-4)
    assert (theirs - _torchcam_iscam_by_hand(net, x, ids, normalise_first=False)).abs().max() > 1e-3


def test_fullgrad_per_channel_reaches_pytorch_grad_cam_with_its_epsilon():
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from camkit.fullgrad import fullgrad

    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 5, 3, padding=1),
                        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 3))
    with torch.no_grad():  # batch-norm statistics and a small bias: terms whose maxima are ~1e-3
        net[1].running_mean.uniform_(-1, 1)
        net[1].running_var.uniform_(0.5, 2)
        net[3].bias.mul_(1e-3)
    net.eval()
    x, ids = torch.randn(2, 3, 16, 16), [0, 2]
    theirs = torch.from_numpy(pgc.FullGrad(copy.deepcopy(net), target_layers=[])(
        input_tensor=x, targets=[ClassifierOutputTarget(i) for i in ids]))
    ours = {eps: fullgrad(net, x, torch.tensor(ids), per_channel=True, eps=eps).maps for eps in (1e-7, 1e-6)}
    close, default = (theirs - ours[1e-7]).abs().max(), (theirs - ours[1e-6]).abs().max()
    assert close < 1e-5 and default > 10 * close, (close, default)


class Relu6Net(nn.Module):
    def __init__(self, activation):
        super().__init__()
        torch.manual_seed(2)
        self.body = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), activation(), nn.Conv2d(5, 5, 3, padding=1),
                                  activation(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 3))

    def forward(self, x):
        return self.body(3 * x)  # inputs large enough that ReLU6 clips somewhere


@pytest.mark.parametrize("activation", [nn.ReLU, nn.ReLU6])
def test_pytorch_grad_cam_guides_only_nn_relu(activation):
    pgc = pytest.importorskip("pytorch_grad_cam")
    from camkit.guided import guided_backprop

    net = Relu6Net(activation).eval()
    x = torch.randn(1, 3, 12, 12)
    target = int(net(x).argmax())
    theirs = torch.from_numpy(pgc.GuidedBackpropReLUModel(copy.deepcopy(net), device="cpu")(x.clone(), target))
    theirs = theirs.permute(2, 0, 1)[None]  # (H, W, C) -> (1, C, H, W)
    ours = guided_backprop(net, x, target).maps
    xr = x.clone().requires_grad_(True)
    plain = torch.autograd.grad(net(xr)[0, target], xr)[0]
    if activation is nn.ReLU:
        torch.testing.assert_close(theirs, ours, atol=1e-6, rtol=1e-5)
    else:  # nothing guided: the plain input gradient, far from camkit's guided one
        torch.testing.assert_close(theirs, plain, atol=1e-6, rtol=1e-5)
        assert (theirs - ours).abs().max() > 0.1 * ours.abs().max()


def test_torchcam_finercam_subtracts_the_plain_mean_of_the_comparison_logits():
    methods = pytest.importorskip("torchcam.methods")
    net, x = StridedNet(classes=6).eval(), torch.randn(2, 3, 16, 16)
    logits = net(x).detach()
    ids = logits.argmax(1)
    closest = (logits - logits.gather(1, ids[:, None])).abs().scatter(1, ids[:, None], torch.inf).topk(
        2, dim=1, largest=False).indices  # the two classes whose logits are nearest the target's

    def contrast(out):
        return out.gather(1, ids[:, None])[:, 0] - 0.6 * out.gather(1, closest).mean(dim=1)

    with methods.FinerCAM(net, "features", input_shape=(3, 16, 16), gamma=0.6, num_references=2) as extractor:
        scores = net(x)
        theirs = extractor(ids.tolist(), scores)[0]
    by_hand = camkit.explain(net, x, "gradcam", layer="features", targets=contrast, upsample=False)
    torch.testing.assert_close(theirs, by_hand.maps, atol=1e-5, rtol=1e-4)
    ours = camkit.explain(net, x, "finercam", layer="features", targets=ids, upsample=False,
                          method_options={"comparisons": 2})  # softmax-weighted comparisons, alpha 1
    assert (theirs - ours.maps).abs().max() > 1e-2


def test_torchcam_refinecam_multiplies_on_the_largest_layers_grid():
    import torch.nn.functional as F

    methods = pytest.importorskip("torchcam.methods")
    net, x = StridedNet().eval(), torch.randn(2, 3, 16, 16)
    ids = net(x).argmax(1)
    layers = ["stem", "features"]  # 8 x 8 and 4 x 4 maps of 16 x 16 images
    with methods.RefineCAM(net, layers, input_shape=(3, 16, 16), base_method=methods.GradCAM) as extractor:
        theirs = extractor(ids.tolist(), net(x))[0]
    maps = [camkit.explain(net, x, "gradcam", layer=layer, targets=ids, upsample=False, normalize=False).maps
            for layer in layers]
    grid = [F.interpolate(_torchcam_normalise(m)[:, None], (8, 8), mode="bilinear", align_corners=False)[:, 0]
            for m in maps]  # each layer normalised on its own grid, then resized to the largest
    torch.testing.assert_close(theirs, _torchcam_normalise(grid[0] * grid[1]), atol=1e-5, rtol=1e-4)
    ours = camkit.explain(net, x, "gradcam", layer=layers, targets=ids, fusion="product")  # on the input's grid
    assert theirs.shape == (2, 8, 8) and ours.maps.shape == (2, 16, 16)
    on_their_grid = camkit.explain(net, x, "gradcam", layer=layers, targets=ids, fusion="product",
                                   output_size={"H": 8, "W": 8})
    torch.testing.assert_close(on_their_grid.maps, theirs, atol=1e-5, rtol=1e-4)
