"""Callable targets: class scores, segmentation regions, detections, embeddings, regression and the
counterfactual form, against hand-computed gradients; torchvision segmentation and detection models."""

import pytest
import torch
import torch.nn as nn

import camkit
from camkit.targets import (
    ClassProbability,
    ClassScore,
    DetectionBox,
    EmbeddingSimilarity,
    Negative,
    Regression,
    SegmentationRegion,
)


def gap_net(outputs: int = 4) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1), nn.Tanh(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, outputs)).eval()


class TinySegmenter(nn.Module):
    """features -> 1x1 conv to class logits -> upsample; returns torchvision's {"out": ...} dict."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.backbone = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1, stride=2), nn.ReLU())
        self.classifier = nn.Conv2d(5, 3, 1)

    def forward(self, x):
        logits = self.classifier(self.backbone(x))
        return {"out": nn.functional.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)}


def hand_gradcam(model, layer, x, score_fn):
    """Grad-CAM without camkit: features of ``layer``, d score / d features by autograd, ReLU, no resampling."""
    captured = {}
    handle = layer.register_forward_hook(lambda m, i, out: captured.setdefault("f", out))
    try:
        scores = score_fn(model(x))
    finally:
        handle.remove()
    grads = torch.autograd.grad(scores.sum(), captured["f"])[0]
    weights = grads.mean(dim=(2, 3))
    return torch.einsum("nchw,nc->nhw", captured["f"], weights).relu().detach()


RAW = {"relu": True, "normalize": False, "upsample": False}


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "layercam", "cam"])
def test_a_class_score_target_equals_the_class_id(method):
    model, x = gap_net(), torch.randn(3, 3, 8, 8)
    ids = torch.tensor([2, 0, 3])
    by_id = camkit.explain(model, x, method, targets=ids)
    by_callable = camkit.explain(model, x, method, targets=ClassScore(ids))
    torch.testing.assert_close(by_callable.maps, by_id.maps)
    assert torch.equal(by_callable.targets, ids)
    torch.testing.assert_close(by_callable.target_scores, by_id.logits.gather(1, ids[:, None])[:, 0])


def test_a_plain_function_of_the_output_with_k_scores():
    model, x = gap_net(), torch.randn(2, 3, 8, 8)
    result = camkit.explain(model, x, "gradcam", targets=lambda logits: logits[:, [1, 3]])
    assert result.maps.shape == (2, 2, 8, 8) and result.targets is None
    torch.testing.assert_close(result.maps, camkit.explain(model, x, "gradcam", targets=[[1, 3], [1, 3]]).maps)
    torch.testing.assert_close(result.scores, result.target_scores)


def test_class_probability_explains_the_softmax():
    model, x = gap_net(), torch.randn(2, 3, 8, 8)
    expected = hand_gradcam(model, model[2], x, lambda out: out.softmax(1)[:, 1])
    result = camkit.explain(model, x, "gradcam", layer="2", targets=ClassProbability(1), **RAW)
    torch.testing.assert_close(result.maps, expected, atol=1e-6, rtol=1e-4)


def test_segmentation_region_against_hand_computed_gradients():
    model, x = TinySegmenter().eval(), torch.randn(2, 3, 8, 8)
    mask = torch.zeros(8, 8)
    mask[2:6, 1:4] = 1
    expected = hand_gradcam(model, model.backbone, x, lambda out: (out["out"][:, 1] * mask).sum(dim=(1, 2)))
    result = camkit.explain(model, x, "gradcam", layer="backbone", targets=SegmentationRegion(1, mask), **RAW)
    torch.testing.assert_close(result.maps, expected, atol=1e-6, rtol=1e-4)
    predicted = camkit.explain(model, x, "gradcam", layer="backbone", targets=SegmentationRegion(2), **RAW)
    region = lambda out: (out["out"][:, 2] * (out["out"].argmax(1) == 2)).sum(dim=(1, 2))  # noqa: E731
    torch.testing.assert_close(predicted.maps, hand_gradcam(model, model.backbone, x, region), atol=1e-6, rtol=1e-4)


def test_segeigencam_of_a_segmentation_region_against_hand_computed_gradients():
    model, x = TinySegmenter().eval(), torch.randn(2, 3, 8, 8)
    mask = torch.zeros(8, 8)
    mask[2:6, 1:4] = 1
    captured = {}
    handle = model.backbone.register_forward_hook(lambda m, i, out: captured.setdefault("f", out))
    try:
        scores = (model(x)["out"][:, 1] * mask).sum(dim=(1, 2))
    finally:
        handle.remove()
    f = captured["f"]
    weighted = (torch.autograd.grad(scores.sum(), f)[0].abs() * f).detach().double()  # |g| f: (2, 5, 4, 4)
    expected = []
    for n in range(2):
        matrix = weighted[n].flatten(1).T
        projection = (matrix @ torch.linalg.svd(matrix, full_matrices=False)[2][0]).view(4, 4)
        expected.append(-projection if projection.min().abs() > projection.max().abs() else projection)
    result = camkit.explain(model, x, "segeigencam", layer="backbone", targets=SegmentationRegion(1, mask), **RAW)
    torch.testing.assert_close(result.maps.double(), torch.stack(expected).relu(), atol=1e-6, rtol=1e-4)


def test_embedding_similarity_against_hand_computed_gradients():
    model, x = gap_net(outputs=5), torch.randn(3, 3, 8, 8)
    reference = torch.randn(5)
    cosine = lambda out: nn.functional.cosine_similarity(out, reference[None], dim=1)  # noqa: E731
    result = camkit.explain(model, x, "gradcam", layer="2", targets=EmbeddingSimilarity(reference), **RAW)
    torch.testing.assert_close(result.maps, hand_gradcam(model, model[2], x, cosine), atol=1e-6, rtol=1e-4)
    with torch.no_grad():
        torch.testing.assert_close(result.target_scores, cosine(model(x)))


def test_regression_and_the_counterfactual_form():
    model, x = gap_net(outputs=3), torch.randn(2, 3, 8, 8)
    raw = {"relu": False, "normalize": False, "upsample": False}
    score = camkit.explain(model, x, "gradcam", targets=Regression(2), **raw)
    torch.testing.assert_close(score.maps, camkit.explain(model, x, "gradcam", targets=2, **raw).maps)
    against = camkit.explain(model, x, "gradcam", targets=Negative(Regression(2)), **raw)
    torch.testing.assert_close(against.maps, -score.maps)
    torch.testing.assert_close(camkit.explain(model, x, "gradcam", targets=Negative(2), **raw).maps, -score.maps)


def test_bad_callable_targets_are_clear_errors():
    model, x = gap_net(), torch.randn(2, 3, 8, 8)
    with pytest.raises(ValueError, match=r"returned scores of shape \(3,\); expected \(N,\) or \(N, K\) with N = 2"):
        camkit.explain(model, x, "gradcam", targets=lambda out: torch.zeros(3))
    with pytest.raises(TypeError, match="returned a list"):
        camkit.explain(model, x, "gradcam", targets=lambda out: [0.0, 1.0])
    with pytest.raises(ValueError, match="scores of target <lambda> is not finite: 1 NaN"):
        camkit.explain(model, x, "gradcam", targets=lambda out: out[:, 0] / torch.tensor([1.0, 0.0]) * 0)
    with pytest.raises(ValueError, match="cam reads the classifier's rows, so it needs class-id targets"):
        camkit.explain(model, x, "cam", targets=lambda out: out[:, 0])
    with pytest.raises(ValueError, match="either a callable target or topk"):
        camkit.explain(model, x, "gradcam", targets=ClassScore(1), topk=2)
    with pytest.raises(TypeError, match="topk must be an integer, got 2.5"):
        camkit.explain(model, x, "gradcam", topk=2.5)
    with pytest.raises(TypeError, match=r"class-id targets need \(N, classes\) logits.*SegmentationRegion"):
        camkit.explain(TinySegmenter().eval(), x, "gradcam", layer="backbone")
    with pytest.raises(ValueError, match=r"mask of shape \(3, 3\) does not fit"):
        camkit.explain(TinySegmenter().eval(), x, "gradcam", layer="backbone",
                       targets=SegmentationRegion(0, torch.ones(3, 3)))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["deeplabv3_mobilenet_v3_large", "fcn_resnet50"])
def test_torchvision_segmentation_models(name):
    import torchvision

    model = torchvision.models.get_model(name, weights=None, weights_backbone=None, num_classes=4).eval()
    x = torch.randn(2, 3, 64, 64)
    layer = {"fcn_resnet50": "backbone.layer4"}.get(name)
    result = camkit.explain(model, x, "gradcam", layer=layer, targets=SegmentationRegion(1, torch.ones(64, 64)))
    assert result.maps.shape == (2, 64, 64) and bool(result.maps.isfinite().all())
    assert float(result.maps.amax()) == pytest.approx(1.0)  # a real, normalised map, not all zeros


@pytest.mark.slow
@pytest.mark.parametrize("name, layer", [("fasterrcnn_mobilenet_v3_large_320_fpn", "backbone.body.16"),
                                         ("retinanet_resnet50_fpn", "backbone.body.layer4")])
def test_torchvision_detectors(name, layer):
    import torchvision

    torch.manual_seed(0)
    options = {"box_score_thresh": 0.0} if "rcnn" in name else {"score_thresh": 0.0, "min_size": 128, "max_size": 128}
    model = torchvision.models.get_model(name, weights=None, weights_backbone=None, num_classes=3, **options).eval()
    x = torch.rand(2, 3, 128, 128)
    with torch.no_grad():
        detections = model(x)
    boxes = torch.stack([d["boxes"][0] for d in detections])
    result = camkit.explain(model, x, "gradcam", layer=layer, targets=DetectionBox(boxes))
    assert result.maps.shape == (2, 128, 128) and bool(result.maps.isfinite().all())
    torch.testing.assert_close(result.target_scores, torch.stack([d["scores"][0] for d in detections]))
    with pytest.raises(TypeError, match="DetectionBox needs a detector's list"):
        camkit.explain(gap_net(), x, "gradcam", targets=DetectionBox([0, 0, 4, 4]))
