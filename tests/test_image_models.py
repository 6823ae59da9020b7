"""Image models: ResNets of any head size, output stride 16, the MNIST GAP CNN, CAM
equal to the hand-written sum, the offline pretrained-weights error, and a torch-free plugin import."""

import subprocess
import sys

import pytest
import torch
import torch.nn as nn

import camkit
from camkit.adapters import ModelInputs
from camkit_plugins.image.models import PretrainedWeightsMissing


def test_registered_models_need_no_family():
    assert {"resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "mnist-gap"} <= set(camkit.registry("models"))
    assert not {"torchvision-resnet", "gap-linear"} & set(camkit.registry("model_families"))  # data flow finds them


def test_resnet_any_head_and_output_stride():
    build = camkit.lookup("models", "resnet18")
    model, stride16, stride8 = (build(num_classes=3), build(num_classes=3, output_stride=16),
                                build(num_classes=3, output_stride=8))
    x = torch.randn(2, 3, 32, 32)
    assert model.eval()(x).shape == (2, 3) and stride8.eval()(x).shape == (2, 3)
    source = camkit.locate_features(model.eval(), ModelInputs.of(x))
    assert str(source.point) == "layer4" and source.classifier is model.fc.weight and str(source.layout) == "NCHW"
    assert camkit.explain(model, x, upsample=False, normalize=False).maps.shape == (2, 1, 1)
    assert camkit.explain(stride16.eval(), x, upsample=False).maps.shape == (2, 2, 2)  # twice the resolution
    assert camkit.explain(stride8.eval(), x, upsample=False).maps.shape == (2, 4, 4)
    stride4 = build(num_classes=3, output_stride=4).eval()
    assert camkit.explain(stride4, x, upsample=False).maps.shape == (2, 8, 8)  # layer2 keeps its stride 1 too
    assert stride4.layer2[0].conv1.stride == (1, 1) and stride4.layer2[0].downsample[0].stride == (1, 1)
    with pytest.raises(ValueError, match="output_stride must be 4, 8, 16 or 32"):
        build(num_classes=3, output_stride=2)


def test_bottleneck_resnet_output_stride():
    model = camkit.lookup("models", "resnet50")(num_classes=4, output_stride=16).eval()
    assert model.layer4[0].conv2.stride == (1, 1) and model.fc.out_features == 4
    assert camkit.explain(model, torch.randn(1, 3, 64, 64), upsample=False).maps.shape == (1, 4, 4)


def _features(model, x):
    m = model
    out = m.maxpool(m.relu(m.bn1(m.conv1(x))))
    return m.layer4(m.layer3(m.layer2(m.layer1(out))))


def test_output_stride_8_gives_8x8_features_at_64x64_and_dilates_after_removed_strides():
    torch.manual_seed(0)
    x = torch.randn(1, 3, 64, 64)
    resnet50 = camkit.lookup("models", "resnet50")(num_classes=2, output_stride=8).eval()
    resnet18 = camkit.lookup("models", "resnet18")(num_classes=2, output_stride=8, dilate=True).eval()
    demo = camkit.lookup("models", "resnet18")(num_classes=2, output_stride=8).eval()  # the shapes demo's model
    with torch.no_grad():
        for model in (resnet50, resnet18, demo):
            assert _features(model, x).shape[-2:] == (8, 8)
    # Bottleneck: each removed stride of 2 becomes a dilation of 2 of the 3x3 convs after it
    assert resnet50.layer3[0].conv2.stride == (1, 1) and resnet50.layer3[0].conv2.dilation == (1, 1)
    assert all(block.conv2.dilation == (2, 2) == block.conv2.padding for block in resnet50.layer3[1:])
    assert resnet50.layer4[0].conv2.stride == (1, 1) and resnet50.layer4[0].conv2.dilation == (2, 2)
    assert all(block.conv2.dilation == (4, 4) == block.conv2.padding for block in resnet50.layer4[1:])
    # BasicBlock with dilate=True: the same rule, by hand
    assert resnet18.layer3[0].conv1.stride == (1, 1) and resnet18.layer3[0].conv1.dilation == (1, 1)
    assert resnet18.layer3[0].conv2.dilation == (2, 2) == resnet18.layer3[1].conv1.dilation
    assert resnet18.layer4[0].conv1.dilation == (2, 2) and resnet18.layer4[0].conv2.dilation == (4, 4)
    assert resnet18.layer4[1].conv2.dilation == (4, 4) == resnet18.layer4[1].conv2.padding
    # the default resnet18 (the trained demo's) keeps its undilated convolutions
    assert all(conv.dilation == (1, 1) for conv in demo.modules() if isinstance(conv, nn.Conv2d))
    undilated = camkit.lookup("models", "resnet50")(num_classes=2, output_stride=16, dilate=False)
    assert undilated.layer4[1].conv2.dilation == (1, 1) and undilated.layer4[0].conv2.stride == (1, 1)


def test_output_stride_16_dilation_keeps_the_receptive_field():
    # dilating after the removed stride makes the stride-16 features equal the stock features where they overlap
    torch.manual_seed(0)
    stock = camkit.lookup("models", "resnet50")(num_classes=2).eval()
    dilated = camkit.lookup("models", "resnet50")(num_classes=2, output_stride=16)
    dilated.load_state_dict(stock.state_dict())
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        a = stock.layer3(stock.layer2(stock.layer1(stock.maxpool(stock.relu(stock.bn1(stock.conv1(x)))))))
        coarse = stock.layer4(a)
        fine = dilated.eval().layer4(a)
        undilated = camkit.lookup("models", "resnet50")(num_classes=2, output_stride=16, dilate=False)
        undilated.load_state_dict(stock.state_dict())
        shrunk = undilated.eval().layer4(a)
    # the central coarse cell equals the fine cell at twice its position (same taps, away from the border)
    assert torch.allclose(fine[..., 2, 2], coarse[..., 1, 1], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(shrunk[..., 2, 2], coarse[..., 1, 1], rtol=1e-2)  # the old stride-only way


def test_mnist_gap_architecture_and_cam_oracle():
    model = camkit.lookup("models", "mnist-gap")(num_classes=10).eval()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 128]
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 2
    x = torch.randn(3, 1, 28, 28)
    result = camkit.explain(model, x, method="cam", relu=False, normalize=False, upsample=False)
    assert result.layer == "features" and result.maps.shape == (3, 7, 7)
    with torch.no_grad():
        features = model.features(x)  # (3, 128, 7, 7)
        expected = torch.stack([
            sum(model.classifier.weight[int(c), k] * features[n, k] for k in range(128))
            for n, c in enumerate(result.targets)])
    assert torch.allclose(result.maps, expected, atol=1e-4)
    # CAM's identity: the map's mean plus the bias is the logit
    logits = result.maps.mean(dim=(1, 2)) + model.classifier.bias[result.targets]
    assert torch.allclose(logits, result.logits.gather(1, result.targets[:, None])[:, 0], atol=1e-4)


def test_data_flow_finds_any_cnn_ending_in_gap_and_linear():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 16, 3), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Dropout(0.1), nn.Linear(16, 4)).eval()
    source = camkit.locate_features(model, ModelInputs.of(torch.randn(1, 3, 12, 12)))
    assert str(source.point) == "2" and source.classifier is model[6].weight
    hidden = nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                           nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
    with pytest.raises(ValueError, match="not a single linear layer"):  # the hidden Linear is no class matrix
        camkit.explain(hidden, torch.randn(2, 3, 12, 12))


def test_pretrained_weights_offline_without_cache_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))  # an empty cache
    with pytest.raises(PretrainedWeightsMissing, match=r"not in the local torch cache.*resnet18-f37072fd.pth"
                                                        r".*weights='DEFAULT'"):
        camkit.lookup("models", "resnet18")(num_classes=2, weights="DEFAULT")
    with pytest.raises(KeyError, match="resnet18: unknown weights 'BEST'. Available: DEFAULT, IMAGENET1K_V1"):
        camkit.lookup("models", "resnet18")(num_classes=2, weights="BEST")
    assert not any(tmp_path.rglob("*.pth"))  # nothing was downloaded


def test_pretrained_weights_load_from_a_local_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    reference = camkit.lookup("models", "resnet18")(num_classes=1000)
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(reference.state_dict(), checkpoints / "resnet18-f37072fd.pth")
    model = camkit.lookup("models", "resnet18")(num_classes=2, weights="DEFAULT")
    assert torch.equal(model.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)
    assert model.fc.out_features == 2
    with pytest.warns(UserWarning, match="without dilation.*dilate=True"):
        camkit.lookup("models", "resnet18")(num_classes=2, weights="DEFAULT", output_stride=8)
    dilated = camkit.lookup("models", "resnet18")(num_classes=2, weights="DEFAULT", output_stride=8, dilate=True)
    assert dilated.layer4[1].conv1.dilation == (4, 4)
    assert torch.equal(dilated.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)


def test_importing_the_plugin_does_not_import_torch():
    code = ("import sys, camkit, camkit_plugins.image as p; p.camkit_register_models(); "
            "p.camkit_register_datasets(); p.camkit_register_commands(); p.camkit_register_renderers(); "
            "print(sorted(m for m in ('torch', 'torchvision', 'cv2', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
