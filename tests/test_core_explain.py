"""explain(): methods against hand-written formulas, targets, scoped hooks, state left as found, errors."""

import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import camkit
from camkit import Explainer, explain

METHODS = ["cam", "gradcam", "gradcam++", "xgradcam", "layercam", "hirescam", "scorecam", "eigencam"]


class GapNet(nn.Module):
    """conv features -> global average pool -> linear: the CAM architecture."""

    def __init__(self, classes: int = 4, channels: int = 6) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(channels, channels, 3, padding=1))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, classes)

    def forward(self, x):
        return self.fc(self.pool(self.body(x)).flatten(1))


class DeepHead(nn.Module):
    """A non-linear head after the target layer, so gradient methods differ from CAM."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.Conv2d(5, 5, 1), nn.Tanh(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 3))

    def forward(self, x):
        return self.head(self.features(x))


@pytest.fixture
def model():
    return GapNet().eval()


@pytest.fixture
def images():
    return torch.randn(3, 3, 8, 8)


def manual_features_and_grads(model, layer, x, targets):
    feats = {}
    handle = layer.register_forward_hook(lambda m, i, o: feats.setdefault("f", o))
    try:
        with torch.enable_grad():
            out = model(x)
            f = feats["f"]
            g = torch.autograd.grad(out.gather(1, targets[:, None]).sum(), f)[0]
    finally:
        handle.remove()
    return f.detach(), g, out.detach()


def normalise(m):
    m = m.clamp_min(0)
    flat = m.flatten(1)
    lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    return ((flat - lo) / (hi - lo)).view_as(m)


def test_cam_equals_gradcam_on_gap_linear(model, images):
    a = explain(model, images, "cam")
    b = explain(model, images, "gradcam")
    assert a.maps.shape == (3, 8, 8) and a.layer == "body"
    torch.testing.assert_close(a.maps, b.maps, atol=1e-5, rtol=0)
    # and CAM itself against its definition: M = sum_k w_k^c f_k
    f, _, logits = manual_features_and_grads(model, model.body, images, a.targets)
    raw = torch.einsum("nchw,nc->nhw", f, model.fc.weight[a.targets].detach())
    torch.testing.assert_close(a.maps, normalise(raw))
    assert torch.equal(a.targets, logits.argmax(1))


def gradcampp_by_hand(f, g):
    g2, g3 = g ** 2, g ** 3
    alpha = torch.nan_to_num(g2 / (2 * g2 + f.sum((2, 3), keepdim=True) * g3))
    return ((alpha * g.clamp_min(0)).sum((2, 3), keepdim=True) * f).sum(1)


FORMULAS = {  # each method's map before ReLU and normalisation, from features f and gradients g
    "gradcam": lambda f, g: (g.mean((2, 3), keepdim=True) * f).sum(1),
    "gradcam++": gradcampp_by_hand,
    "xgradcam": lambda f, g: (((g * f).sum((2, 3)) / f.sum((2, 3)))[..., None, None] * f).sum(1),
    "layercam": lambda f, g: (g.clamp_min(0) * f).sum(1),
    "hirescam": lambda f, g: (g * f).sum(1),
}


@pytest.mark.parametrize("method, formula", FORMULAS.items(), ids=list(FORMULAS))
def test_gradient_methods_against_formulas(method, formula):
    net = DeepHead().eval()
    x = torch.randn(2, 3, 6, 6)
    targets = torch.tensor([0, 2])
    f, g, _ = manual_features_and_grads(net, net.features, x, targets)
    got = explain(net, x, method, layer="features", targets=targets, upsample=False)
    torch.testing.assert_close(got.maps, normalise(formula(f, g)), atol=1e-5, rtol=1e-4)


def scorecam_by_loop(net, x, targets):
    f, _, _ = manual_features_and_grads(net, net.features, x, targets)
    raw = torch.zeros(x.shape[0], *f.shape[2:])
    for n in range(x.shape[0]):
        for k in range(f.shape[1]):
            a = f[n, k]
            mask = (a - a.min()) / (a.max() - a.min()) if a.max() > a.min() else torch.zeros_like(a)
            with torch.no_grad():
                p = net((x[n] * mask)[None]).softmax(1)[0, targets[n]]
            raw[n] += p * a
    return normalise(raw)


def test_scorecam_against_a_loop():
    net = DeepHead().eval()
    x = torch.randn(2, 3, 6, 6)
    res = explain(net, x, "scorecam", layer="features", upsample=False, method_options={"chunk_size": 3})
    torch.testing.assert_close(res.maps, scorecam_by_loop(net, x, res.targets), atol=1e-5, rtol=1e-4)


def test_scorecam_forwards_the_all_zero_input_once_for_every_dead_channel():
    net = DeepHead().eval()
    with torch.no_grad():
        net.features[0].bias[:2] = -100.0  # channels 0 and 1 are zero after the ReLU for these inputs
    x = torch.randn(3, 3, 6, 6)
    inputs_seen = []
    handle = net.register_forward_hook(lambda module, args, out: inputs_seen.append(args[0].shape[0]))
    try:
        res = explain(net, x, "scorecam", layer="features", upsample=False, method_options={"chunk_size": 4})
    finally:
        handle.remove()
    # one plain forward, one of the zero input, then the 3 samples x 3 live channels in chunks of 4
    assert inputs_seen == [3, 1, 4, 4, 1]
    torch.testing.assert_close(res.maps, scorecam_by_loop(net, x, res.targets), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("scale", [1e-25, 1e20])
@pytest.mark.parametrize("sites", [5, 60])
def test_eigencam_singular_vector_at_extreme_feature_scales(scale, sites):
    from camkit_plugins.methods.eigencam import first_right_singular_vector

    a = torch.rand(3, sites, 40, dtype=torch.float64)
    expected = torch.linalg.svd(a, full_matrices=False)[2][:, 0]
    got = first_right_singular_vector((a * scale).float()).double()
    assert torch.isfinite(got).all()
    torch.testing.assert_close((got * expected).sum(dim=1).abs(), torch.ones(3, dtype=torch.float64), atol=1e-5, rtol=0)


@pytest.mark.parametrize("channels", [6, 80])  # more sites than channels (C x C Gram), and fewer (S x S)
def test_eigencam_against_numpy_svd(channels, images):
    model = GapNet(channels=channels).eval()
    res = explain(model, images, "eigencam", upsample=False)
    f, _, _ = manual_features_and_grads(model, model.body, images, res.targets)
    for n in range(images.shape[0]):
        a = f[n].flatten(1).T.double().numpy()  # (sites, C)
        u, s, _ = np.linalg.svd(a, full_matrices=False)
        projection = u[:, 0] * s[0]  # = a @ v: the rank-1 principal projection
        projection *= np.sign(projection.sum()) or 1
        raw = torch.from_numpy(projection.reshape(8, 8)).float()
        torch.testing.assert_close(res.maps[n], normalise(raw[None])[0], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("method", METHODS)
def test_batch_equals_loop_and_topk(method, model, images):
    opts = {"method_options": {"chunk_size": 4}} if method == "scorecam" else {}
    batch = explain(model, images, method, **opts)
    for i in range(images.shape[0]):
        single = explain(model, images[i:i + 1], method, **opts)
        torch.testing.assert_close(single.maps[0], batch.maps[i], atol=1e-5, rtol=1e-4)
    top = explain(model, images, method, topk=2, **opts)
    assert top.maps.shape == (3, 2, 8, 8) and top.targets.shape == (3, 2)
    torch.testing.assert_close(top.maps[:, 0], batch.maps, atol=1e-5, rtol=1e-4)
    for k in range(2):
        one = explain(model, images, method, targets=top.targets[:, k], **opts)
        torch.testing.assert_close(top.maps[:, k], one.maps, atol=1e-5, rtol=1e-4)


def test_all_classes_and_result_fields(model, images):
    res = explain(model, images, "cam", targets="all")
    assert res.maps.shape == (3, 4, 8, 8) and res.map_letters == "NKHW"
    assert torch.equal(res.targets, torch.arange(4).expand(3, 4))
    torch.testing.assert_close(res.probabilities.sum(1), torch.ones(3))
    torch.testing.assert_close(res.scores, res.probabilities)
    assert res.numpy().dtype == np.float32 and len(res) == 3


def test_targets_validation(model, images):
    with pytest.raises(ValueError, match="2 target.*batch of 3"):
        explain(model, images, targets=[0, 1])
    with pytest.raises(ValueError, match=r"out of range.*4 classes"):
        explain(model, images, targets=[0, 1, 7])
    with pytest.raises(ValueError, match="topk"):
        explain(model, images, topk=9)
    with pytest.raises(TypeError, match="integer"):
        explain(model, images, targets=[0.5, 1.0, 2.0])
    res = explain(model, images, targets=2)
    assert res.targets.tolist() == [2, 2, 2]


def test_hooks_removed_and_state_restored_even_when_forward_raises(model, images):
    model.train()
    model.body[0].eval()  # a mixed state must come back exactly
    for p in model.parameters():
        p.grad = torch.full_like(p, 7.0)
    before = {n: m.training for n, m in model.named_modules()}
    explain(model, images, "gradcam")
    assert {n: m.training for n, m in model.named_modules()} == before
    assert all(torch.equal(p.grad, torch.full_like(p, 7.0)) for p in model.parameters())
    assert all(not m._forward_hooks for m in model.modules())
    with pytest.raises(RuntimeError):
        explain(model, torch.randn(2, 5, 8, 8), "gradcam")  # wrong channel count: conv raises
    assert all(not m._forward_hooks for m in model.modules())
    assert {n: m.training for n, m in model.named_modules()} == before
    assert torch.is_grad_enabled()


def test_gradcam_records_autograd_only_after_the_target_layer(model, images):
    seen = {}

    def before(module, inputs, output):
        seen["before"] = torch.is_grad_enabled()

    def after(module, inputs, output):
        seen["after"] = (torch.is_grad_enabled(), output.grad_fn is not None)

    handles = [model.body[0].register_forward_hook(before), model.fc.register_forward_hook(after)]
    try:
        explain(model, images, "gradcam")
    finally:
        for h in handles:
            h.remove()
    assert seen["before"] is False
    assert seen["after"] == (True, True)


def test_explainer_context_keeps_one_hook(model, images):
    with Explainer(model, "gradcam") as explainer:
        a = explainer(images)
        assert len(model.body._forward_hooks) == 1
        b = explainer(images[:2])
        assert len(model.body._forward_hooks) == 1
    assert not model.body._forward_hooks
    torch.testing.assert_close(a.maps[:2], b.maps)


def test_layer_by_module_by_name_and_unknown(model, images):
    by_module = explain(model, images, layer=model.body)
    by_name = explain(model, images, layer="body")
    torch.testing.assert_close(by_module.maps, by_name.maps)
    with pytest.raises(ValueError, match=r"no layer 'bdy'.*body"):
        explain(model, images, layer="bdy")


def test_cam_without_classifier_is_a_clear_error(images):
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(ValueError, match="no recognisable classifier"):
        explain(net, images, "cam", layer="1")
    # a gradient method needs no classifier
    assert explain(net, images, "gradcam", layer="1").maps.shape == (3, 8, 8)


def test_non_finite_features_are_rejected(model, images):
    with torch.no_grad():
        model.body[0].weight[0, 0, 0, 0] = float("nan")  # finite inputs, NaN features
    with pytest.raises(ValueError, match="features of 'body' contain NaN or infinite"):
        explain(model, images)


def test_layout_rank_mismatch_names_layout_and_shape(model, images):
    with pytest.raises(ValueError, match=r"NCTV.*|.*NCTV"):
        explain(model, images, layout="NCTVM")


def test_traced_target_layer_without_pool_module(images):
    class MeanPool(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.act = nn.ReLU()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(self.act(self.conv(x)).mean((2, 3)))

    net = MeanPool().eval()
    res = explain(net, images)
    assert res.layer == "act" and res.maps.shape == (3, 8, 8)
    torch.testing.assert_close(res.maps, explain(net, images, "gradcam").maps, atol=1e-5, rtol=0)


@pytest.mark.parametrize("layout", ["NCL", "NCDHW", "NHWC"])
def test_other_layouts_end_to_end(layout, gap_net_factory):
    if layout == "NCL":
        net = gap_net_factory(rank=1, in_channels=2, channels=4, classes=3)
        x = torch.randn(2, 2, 10)
        res = explain(net, x, "gradcam")
        assert res.maps.shape == (2, 10)
    elif layout == "NCDHW":
        net = gap_net_factory(rank=3, in_channels=1, channels=4, classes=3, stride=2)
        x = torch.randn(2, 1, 4, 6, 6)
        res = explain(net, x, "cam")
        assert res.maps.shape == (2, 4, 6, 6)
        torch.testing.assert_close(res.maps, explain(net, x, "gradcam").maps, atol=1e-5, rtol=0)
    else:
        class ChannelsLast(nn.Module):  # a token-style model whose features are (N, H, W, C)
            def __init__(self):
                super().__init__()
                self.embed = nn.Conv2d(3, 4, 2, stride=2)
                self.mix = nn.Linear(4, 4)
                self.fc = nn.Linear(4, 3)

            def forward(self, x):
                return self.fc(self.mix(self.embed(x).permute(0, 2, 3, 1)).mean((1, 2)))

        net = ChannelsLast().eval()
        x = torch.randn(2, 3, 8, 8)
        cam = explain(net, x, "cam", layer="mix", layout="NHWC")
        grad = explain(net, x, "gradcam", layer="mix", layout="NHWC")
        assert cam.maps.shape == (2, 8, 8)
        torch.testing.assert_close(cam.maps, grad.maps, atol=1e-5, rtol=0)


class TinyViT(nn.Module):
    """Patch tokens + a class token, a token mixer, mean-pooled patch tokens, a linear head."""

    def __init__(self):
        super().__init__()
        self.patch = nn.Conv2d(3, 6, 2, stride=2)
        self.cls = nn.Parameter(torch.randn(1, 1, 6))
        self.block = nn.Sequential(nn.Linear(6, 6), nn.Tanh())
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(x.shape[0], -1, -1), tokens], dim=1)
        tokens = self.block(tokens)
        return self.head(tokens[:, 1:].mean(1))


def test_token_features_with_a_grid_transform():
    net = TinyViT().eval()
    x = torch.randn(2, 3, 8, 8)
    grid = camkit.tokens_to_grid(4, 4, prefix_tokens=1)
    cam = explain(net, x, "cam", layer="block", layout="NHWC", feature_transform=grid)
    grad = explain(net, x, "gradcam", layer="block", layout="NHWC", feature_transform=grid)
    assert cam.maps.shape == (2, 8, 8)
    torch.testing.assert_close(cam.maps, grad.maps, atol=1e-5, rtol=0)  # mean-pool + linear: same map
    top = explain(net, x, "layercam", layer="block", layout="NHWC", feature_transform=grid, topk=2)
    assert top.maps.shape == (2, 2, 8, 8)
    with pytest.raises(ValueError, match="do not fill a 5x5 grid"):
        explain(net, x, "cam", layer="block", layout="NHWC", feature_transform=camkit.tokens_to_grid(5, 5))


def test_targets_made_under_inference_mode_work_with_gradients(model, images):
    with torch.inference_mode():
        targets = model(images).argmax(1)
    res = explain(model, images, "gradcam", targets=targets)
    torch.testing.assert_close(res.maps, explain(model, images, "gradcam").maps)


def test_two_open_explainers_on_one_layer_is_a_clear_error(model, images):
    with Explainer(model, "gradcam") as first:
        first(images)
        with pytest.raises(RuntimeError, match="already has an active camkit capture"):
            with Explainer(model, "gradcam") as second:
                second(images)
        assert len(model.body._forward_hooks) == 1
    assert not model.body._forward_hooks


def test_a_layer_called_twice_is_an_error():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)
            self.fc = nn.Linear(3, 2)

        def forward(self, x):
            return self.fc(self.conv(self.conv(x)).mean((2, 3)))

    with pytest.raises(RuntimeError, match="called 2 times"):
        explain(Shared().eval(), torch.randn(2, 3, 6, 6), "gradcam", layer="conv")


def test_gradient_methods_inside_inference_mode(model, images):
    expected = explain(model, images, "gradcam").maps
    with torch.inference_mode():
        inside = explain(model, images.clone(), "gradcam")
    torch.testing.assert_close(inside.maps, expected)


def test_class_weights_need_shared_targets(model, images):
    from camkit.methods import CamMethod, Weights

    class ClassMatrix(CamMethod):
        name = "class-matrix"

        def weights(self, ctx):
            return Weights.per_class(ctx.classifier(6)[:2])

    with pytest.raises(ValueError, match="K targets shared by every sample"):
        explain(model, images, ClassMatrix())  # one target per sample: a class matrix does not apply
    res = explain(model, images, ClassMatrix(), targets=torch.tensor([[0, 1]] * 3))
    torch.testing.assert_close(res.maps, explain(model, images, "cam", targets=torch.tensor([[0, 1]] * 3)).maps)


def test_cam_refuses_a_hidden_layer_as_class_matrix(images):
    # GAP -> Linear(6, 10) -> ReLU -> Linear(10, 4): the first Linear takes the 6 channels but is no class matrix
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 10),
                          nn.ReLU(), nn.Linear(10, 4)).eval()
    with pytest.raises(ValueError, match=r"shape \(10, 6\) give 10 scores but the model outputs 4.*'gradcam'"):
        explain(model, images, "cam", layer="0")
    assert explain(model, images, "gradcam", layer="0").maps.shape == (3, 8, 8)


def test_gradcampp_in_half_precision_matches_fp32():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10)).eval()
    x = torch.randn(2, 3, 64, 64)
    reference = explain(model, x, "gradcam++", layer="2", targets=[1, 2]).maps
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # before the fix: g^3 underflowed and every map was constant
        half = explain(model.half(), x.half(), "gradcam++", layer="2", targets=[1, 2]).maps
    assert half.dtype == torch.float16 and reference.amax() == 1
    torch.testing.assert_close(half.float(), reference, atol=5e-3, rtol=0)


class InPlaceAfterTarget(nn.Module):
    """The target layer's output is changed in place by the next op (torchvision's DenseNet does this)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Conv2d(3, 5, 3, padding=1)
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        return self.fc(F.relu(self.features(x), inplace=True).mean(dim=(2, 3)))


@pytest.mark.parametrize("method", ["cam", "gradcam"])
def test_an_in_place_op_after_the_layer_does_not_change_the_captured_features(method, images):
    model = InPlaceAfterTarget().eval()
    with torch.no_grad():
        raw = model.features(images)  # the layer's own output, before the in-place ReLU
        logits = model(images)
    # the ReLU between the layer and the pooling also means CAM is not the class evidence here
    with pytest.warns(camkit.HeadMismatchWarning) if method == "cam" else warnings.catch_warnings():
        result = explain(model, images, method, layer="features", targets=[0, 1, 2], normalize=False, relu=False,
                         upsample=False)
    rows = model.fc.weight[[0, 1, 2]].detach()
    # Grad-CAM by hand: d logit / d raw = w_c * [raw > 0] / (H W), averaged over the sites
    weights = rows if method == "cam" else rows * (raw > 0).float().mean(dim=(2, 3)) / raw[0, 0].numel()
    torch.testing.assert_close(result.maps, torch.einsum("nc,nchw->nhw", weights, raw))
    torch.testing.assert_close(result.logits, logits)


def test_an_open_explainer_leaves_the_callers_own_passes_alone(model, images):
    grad_mode = torch.is_grad_enabled()
    with Explainer(model, "gradcam") as explainer:
        with torch.no_grad():
            first = explainer(images)
            assert model(images).requires_grad is False  # the caller's no_grad holds between calls
        model(images).sum().backward()  # the caller trains with the explainer open
        assert model.body[0].weight.grad is not None and model.body[0].weight.grad.abs().sum() > 0
        model.zero_grad(set_to_none=True)
        torch.testing.assert_close(explainer(images).maps, first.maps)
    assert torch.is_grad_enabled() == grad_mode
    with torch.no_grad(), Explainer(model, "cam") as explainer:
        explainer(images)
    assert torch.is_grad_enabled() == grad_mode  # the block does not restore the first call's mode


def test_cam_warns_when_the_logits_are_not_gap_then_its_classifier(images):
    class NormedHead(nn.Module):  # ConvNeXt-style: LayerNorm between pooling and the classifier
        def __init__(self):
            super().__init__()
            self.features = nn.Conv2d(3, 6, 3, padding=1)
            self.norm = nn.LayerNorm(6)
            self.fc = nn.Linear(6, 4)

        def forward(self, x):
            return self.fc(self.norm(self.features(x).mean(dim=(2, 3))))

    with pytest.warns(camkit.HeadMismatchWarning, match=r"layer 'features'.*deviate by up to"):
        explain(NormedHead().eval(), images, "cam", layer="features")
    with warnings.catch_warnings():
        warnings.simplefilter("error", camkit.HeadMismatchWarning)
        explain(GapNet().eval(), images, "cam")  # GAP + linear: silent
        explain(GapNet().eval(), images[:1], "cam")  # one sample cannot be checked: silent
        explain(GapNet().eval().to(torch.bfloat16), images.to(torch.bfloat16), "cam")  # rounding is not a mismatch
