"""Eigen smoothing, multi-layer fusion and test-time augmentation (camkit.ensemble) against explicit
compositions of plain ``explain`` calls and a numpy SVD."""

import pytest
import torch
import torch.nn as nn

from camkit import explain
from camkit.ensemble import eigen_smooth, explain_augmented, explain_layers
from camkit.targets import ClassProbability, ClassScore, Negative
from tests.methods_models import DeepHead, GapNet, features_and_gradients, normalise, numpy_projection_maps


def test_eigen_smoothing_projects_the_weighted_features_on_their_first_component():
    net = DeepHead().eval()
    x = torch.randn(2, 3, 6, 6)
    targets = torch.tensor([0, 2])
    f, g, _ = features_and_gradients(net, net.features, x, targets)
    expected = numpy_projection_maps(g.mean((2, 3), keepdim=True) * f)
    got = explain(net, x, eigen_smooth("gradcam"), layer="features", targets=targets, upsample=False)
    torch.testing.assert_close(got.maps, normalise(expected), atol=1e-4, rtol=1e-3)
    assert got.method == "gradcam+eigen"


@pytest.mark.parametrize("method", ["cam", "layercam", "scorecam"])  # class, site and channel weights
def test_eigen_smoothing_of_top_k_equals_one_target_at_a_time(method):
    net = GapNet(2).eval()
    x = torch.randn(2, 3, 8, 8)
    top = explain(net, x, eigen_smooth(method), topk=2)
    for k in range(2):
        one = explain(net, x, eigen_smooth(method), targets=top.targets[:, k])
        torch.testing.assert_close(top.maps[:, k], one.maps, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("fusion", ["mean", "max", "product"])
def test_layers_fused_from_the_single_layer_maps(fusion):
    net = GapNet(2).eval()
    x = torch.randn(3, 3, 8, 8)
    fused = explain_layers(net, x, "gradcam", ["body.1", "body.3"], fusion=fusion, topk=2)
    a = explain(net, x, "gradcam", layer="body.1", targets=fused.targets)
    b = explain(net, x, "gradcam", layer="body.3", targets=fused.targets)
    combined = {"mean": (a.maps + b.maps) / 2, "max": torch.maximum(a.maps, b.maps), "product": a.maps * b.maps}[fusion]
    lo = combined.flatten(2).amin(2)[..., None, None]
    hi = combined.flatten(2).amax(2)[..., None, None]
    torch.testing.assert_close(fused.maps, (combined - lo) / (hi - lo), atol=1e-5, rtol=1e-4)
    assert fused.layer == "body.1,body.3" and torch.equal(fused.targets, net(x).topk(2).indices)


def test_layer_fusion_errors():
    net = GapNet(2).eval()
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(ValueError, match="fusion must be one of"):
        explain_layers(net, x, "gradcam", ["body.1"], fusion="median")
    with pytest.raises(ValueError, match="at least one layer"):
        explain_layers(net, x, "gradcam", [])
    with pytest.raises(ValueError, match="upsample"):
        explain_layers(net, x, "gradcam", ["body.1", "body.3"], upsample=False)


def test_augmentation_averages_the_maps_of_flipped_and_rescaled_inputs_undone():
    net = GapNet(2).eval()
    x = torch.randn(2, 3, 8, 8)
    got = explain_augmented(net, x, "gradcam", flips="W", scales=(0.5,))
    plain = explain(net, x, "gradcam")
    flipped = explain(net, x.flip(3), "gradcam", targets=plain.targets).maps.flip(2)
    small = nn.functional.interpolate(x, size=(4, 4), mode="bilinear", align_corners=False)
    rescaled = explain(net, small, "gradcam", targets=plain.targets, output_size={"H": 8, "W": 8}).maps
    torch.testing.assert_close(got.maps, normalise((plain.maps + flipped + rescaled) / 3), atol=1e-5, rtol=1e-4)
    assert torch.equal(got.targets, plain.targets) and got.method == "gradcam+tta"
    none = explain_augmented(net, x, "gradcam", flips="", scales=(1.0,))
    torch.testing.assert_close(none.maps, plain.maps, atol=1e-5, rtol=1e-4)


def test_irn_convention_sums_raw_maps_of_every_scale_and_its_flip_then_normalises():
    """WSSS multi-scale inference (IRN): each rescaled copy is flipped too, and the ReLU'd maps are summed
    before the one normalisation, so a scale where the class responds strongly weighs more."""
    net = GapNet(2).eval()
    x = torch.randn(2, 3, 8, 8)
    got = explain_augmented(net, x, "gradcam", flips="W", scales=(0.5,), convention="irn")
    raw = {"normalize": False}
    plain = explain(net, x, "gradcam", **raw)
    small = nn.functional.interpolate(x, size=(4, 4), mode="bilinear", align_corners=False)
    passes = [plain.maps, explain(net, x.flip(3), "gradcam", targets=plain.targets, **raw).maps.flip(2)]
    for copy, undo in ((small, lambda m: m), (small.flip(3), lambda m: m.flip(2))):
        passes.append(undo(explain(net, copy, "gradcam", targets=plain.targets, output_size={"H": 8, "W": 8},
                                   **raw).maps))
    torch.testing.assert_close(got.maps, normalise(sum(passes)), atol=1e-5, rtol=1e-4)
    mean = explain_augmented(net, x, "gradcam", flips="W", scales=(0.5,))
    assert float((mean.maps - got.maps).abs().max()) > 1e-3  # the two conventions differ on this net
    with pytest.raises(ValueError, match="augment convention 'irm'.*irn"):
        explain_augmented(net, x, "gradcam", scales=(0.5,), convention="irm")


class Skeleton(nn.Module):
    """(N, C, T, V, M) clips -> features (N, 4, T, V, M) -> mean -> classes."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv3d(3, 4, (3, 1, 1), padding=(1, 0, 0)), nn.ReLU())
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.body(x).mean((2, 3, 4)))


def test_augmentation_flips_time_but_never_joints_or_persons():
    net = Skeleton().eval()
    x = torch.randn(2, 3, 8, 5, 2)
    opts = {"layer": "body", "layout": "NCTVM", "reduce": "M"}
    got = explain_augmented(net, x, "gradcam", flips="T", scales=(2.0,), **opts)
    assert got.maps.shape == (2, 8, 5) and got.map_letters == "NTV" and torch.isfinite(got.maps).all()
    for bad in ("V", "M"):
        with pytest.raises(ValueError, match="discrete|reducible"):
            explain_augmented(net, x, "gradcam", flips=bad, **opts)
    with pytest.raises(ValueError, match="rescale axis 'V'"):
        explain_augmented(net, x, "gradcam", flips="", scales=(2.0,), scale_axes="TV", **opts)
    with pytest.raises(ValueError, match="no such axis"):
        explain_augmented(net, x, "gradcam", flips="W", **opts)


def test_explain_keywords_are_the_ensemble_options(gap_net_factory):
    import camkit
    from camkit.ensemble import eigen_smooth, explain_augmented, explain_layers

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 5, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(5, 6, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(6, 3)).eval()
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(camkit.explain(model, x, "gradcam", eigen_smooth=True).maps,
                               camkit.explain(model, x, eigen_smooth("gradcam")).maps)
    torch.testing.assert_close(camkit.explain(model, x, "gradcam", layer=["1", "3"], fusion="max").maps,
                               explain_layers(model, x, "gradcam", ["1", "3"], "max").maps)
    torch.testing.assert_close(camkit.explain(model, x, "gradcam", augment={"flips": "HW"}).maps,
                               explain_augmented(model, x, "gradcam", flips="HW").maps)


@pytest.mark.parametrize("target", [Negative(ClassScore(1)), Negative(1), ClassProbability(2)])
def test_a_callable_target_scores_every_augmented_copy(target):
    """relu=False: a negative target's Grad-CAM of a tiny net is often all below zero."""
    torch.manual_seed(0)
    net = GapNet(2).eval()
    x = torch.randn(2, 3, 8, 8)
    got = explain(net, x, "gradcam", targets=target, relu=False, augment={"flips": "W", "scales": (0.5,)})
    plain = explain(net, x, "gradcam", targets=target, relu=False).maps
    flipped = explain(net, x.flip(3), "gradcam", targets=target, relu=False).maps.flip(2)
    small = nn.functional.interpolate(x, size=(4, 4), mode="bilinear", align_corners=False)
    rescaled = explain(net, small, "gradcam", targets=target, relu=False, output_size={"H": 8, "W": 8}).maps
    torch.testing.assert_close(got.maps, normalise((plain + flipped + rescaled) / 3), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("target", [Negative(ClassScore(1)), Negative(1), ClassProbability(2)])
def test_a_callable_target_scores_every_fused_layer(target):
    torch.manual_seed(0)
    net = GapNet(2).eval()
    x = torch.randn(2, 3, 8, 8)
    fused = explain(net, x, "gradcam", layer=["body.1", "body.3"], targets=target, relu=False, fusion="mean")
    a = explain(net, x, "gradcam", layer="body.1", targets=target, relu=False).maps
    b = explain(net, x, "gradcam", layer="body.3", targets=target, relu=False).maps
    torch.testing.assert_close(fused.maps, normalise((a + b) / 2), atol=1e-5, rtol=1e-4)
