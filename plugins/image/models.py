"""Image models: torchvision ResNets (optionally pretrained, offline) and the MNIST GAP CNN. Where their
class activation maps come from is found by data flow (``camkit.locate``): they need no model family."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from camkit.plugin_manager import UnknownNameError

RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")


class PretrainedWeightsMissing(FileNotFoundError):
    """Pretrained weights were asked for but are not in the local torch cache."""


def _cached_weights_file(weights: Any) -> Path:
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)


BASIC_BLOCK_RESNETS = ("resnet18", "resnet34")  # torchvision's BasicBlock refuses dilation > 1


def build_resnet(arch: str, num_classes: int, weights: str | None = None, output_stride: int = 32,
                 in_channels: int = 3, dilate: bool | None = None) -> Any:
    """A torchvision ResNet with a ``num_classes`` head.

    ``weights="DEFAULT"`` (or a torchvision weight name) loads ImageNet weights from the local torch
    cache only (never the network); the head is replaced when ``num_classes != 1000``.
    ``output_stride=16`` keeps layer4 at stride 1, ``8`` also layer3 and ``4`` also layer2, doubling /
    quadrupling / octupling the
    CAM's resolution (a 64x64 input gives a 4x4 / 8x8 map instead of 2x2) for more computation.

    ``dilate``: whether the 3x3 convolutions after a removed stride are dilated by it (DeepLab's
    atrous trick: every layer keeps the receptive field the pretrained weights were trained with).
    Default: yes for the Bottleneck ResNets (50/101/152, torchvision's ``replace_stride_with_dilation``);
    no for resnet18/34, whose torchvision BasicBlock does not support dilation: the stride is only
    removed, so later layers see a smaller receptive field (fine when training from scratch, as the
    shapes demo does; with pretrained weights pass ``dilate=True``, which dilates the BasicBlock
    convolutions here, the same way torchvision does for Bottleneck)."""
    import warnings

    import torch
    import torch.nn as nn
    import torchvision

    if arch not in RESNETS:
        raise UnknownNameError.of("ResNet", arch, RESNETS)
    if output_stride not in (4, 8, 16, 32):
        raise ValueError(f"output_stride must be 4, 8, 16 or 32, got {output_stride}")
    basic = arch in BASIC_BLOCK_RESNETS
    if dilate is None:
        dilate = not basic
        if basic and weights and output_stride != 32:
            warnings.warn(f"{arch} with output_stride={output_stride} and pretrained weights: the strides are removed "
                          f"without dilation (the default for BasicBlock ResNets), so the pretrained layers see a "
                          f"smaller receptive field; pass dilate=True to dilate them", stacklevel=2)
    removed = {32: [False, False, False], 16: [False, False, True], 8: [False, True, True],
               4: [True, True, True]}[output_stride]
    extra = {"replace_stride_with_dilation": removed} if dilate and not basic else {}
    model = torchvision.models.get_model(arch, weights=None, num_classes=1000 if weights else num_classes, **extra)
    if weights:
        enum = torchvision.models.get_model_weights(arch)
        try:
            chosen = enum[weights] if weights != "DEFAULT" else enum.DEFAULT
        except KeyError:
            raise UnknownNameError.of("weights", weights, ["DEFAULT", *(w.name for w in enum)], where=arch) from None
        path = _cached_weights_file(chosen)
        if not path.is_file():
            raise PretrainedWeightsMissing(
                f"pretrained weights {arch} {chosen} are not in the local torch cache ({path}); camkit never "
                f"downloads at run time. On a machine with internet run: python -c \"import torchvision; "
                f"torchvision.models.{arch}(weights='{weights}')\" and copy {path.name} into {path.parent} "
                f"(or point TORCH_HOME at a cache that has it), or train without --weights.")
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        if num_classes != 1000:
            model.fc = nn.Linear(model.fc.in_features, num_classes)
    if in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    if not extra:  # remove the strides by hand (BasicBlock, or dilate=False)
        _remove_strides(model, removed, dilate)
    return model


def _remove_strides(model: Any, removed: list[bool], dilate: bool) -> None:
    """Stride 1 in the first block of layer2 / layer3 / layer4 where ``removed``; with ``dilate``, every 3x3
    convolution after a removed stride is dilated (and padded) by the product of the strides removed
    before it, as torchvision's ``replace_stride_with_dilation`` does (for BasicBlock too)."""
    dilation = 1
    for layer, remove in zip((model.layer2, model.layer3, model.layer4), removed):
        if not remove:
            continue
        block = layer[0]
        strided = block.conv2 if hasattr(block, "conv3") else block.conv1  # Bottleneck strides conv2
        strided.stride = (1, 1)
        block.downsample[0].stride = (1, 1)
        if not dilate:
            continue
        previous, dilation = dilation, dilation * 2
        for index, block in enumerate(layer):
            convs = [block.conv2] if hasattr(block, "conv3") else [block.conv1, block.conv2]
            for position, conv in enumerate(convs):
                # the formerly strided conv of the first block works at the previous spacing; the rest after it
                d = previous if index == 0 and position == 0 else dilation
                conv.dilation, conv.padding = (d, d), (d, d)


def gap_network(features: Any, channels: int, num_classes: int) -> Any:
    """``features -> global average pooling -> flatten -> linear``: CAM's architecture, with the children
    named ``features``, ``pool``, ``flatten``, ``classifier`` (data flow finds ``features``, the tensor
    pooling receives)."""
    import torch.nn as nn

    class GapNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = features
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.flatten = nn.Flatten(1)
            self.classifier = nn.Linear(channels, num_classes)

        def forward(self, x: Any) -> Any:
            return self.classifier(self.flatten(self.pool(self.features(x))))

    return GapNet()


def _conv_bn_relu(cin: int, cout: int, kernel: int) -> list[Any]:
    import torch.nn as nn

    return [nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


def build_mnist_gap(num_classes: int = 10, in_channels: int = 1, kernel_size: int = 5) -> Any:
    """The seed's MNIST GAP CNN: two conv(``kernel_size``) + ReLU + 2x2 max-pool blocks (32 and 128
    channels), global average pooling, linear. 5x5 kernels (the seed's) let each pooled feature see
    16x16 pixels; with 3x3 it sees 10x10, too little of a 28x28 digit for GAP to tell the classes apart
    (about 88% on the 5,000 real digits, against 90% and more with 5x5)."""
    import torch.nn as nn

    if kernel_size not in (3, 5):
        raise ValueError(f"mnist-gap: kernel_size must be 3 or 5, got {kernel_size}")
    pad = kernel_size // 2
    features = nn.Sequential(nn.Conv2d(in_channels, 32, kernel_size, padding=pad), nn.ReLU(inplace=True),
                             nn.MaxPool2d(2),
                             nn.Conv2d(32, 128, kernel_size, padding=pad), nn.ReLU(inplace=True), nn.MaxPool2d(2))
    return gap_network(features, 128, num_classes)


def build_mnist_gap_bn(num_classes: int = 10, in_channels: int = 1) -> Any:
    """The stronger variant: the seed's two 5x5 blocks with batch normalisation, plus one 3x3 conv
    (128 channels) at 7x7 before global average pooling, so each pooled feature sees 24x24 pixels.
    Reaches 98% on the 5,000 real MNIST digits in 8 epochs (the seed's net: 90%)."""
    import torch.nn as nn

    conv = _conv_bn_relu
    features = nn.Sequential(*conv(in_channels, 32, 5), nn.MaxPool2d(2), *conv(32, 128, 5), nn.MaxPool2d(2),
                             *conv(128, 128, 3))
    return gap_network(features, 128, num_classes)


def build_gap_cnn(num_classes: int = 5, in_channels: int = 3, width: int = 32, last_kernel: int = 3) -> Any:
    """A small CNN for sharp CAMs: conv3x3 (``width``) + pool, conv3x3 (2 ``width``) + pool, conv
    ``last_kernel`` x ``last_kernel`` and conv1x1 (4 ``width``), each with batch norm and ReLU, then global
    average pooling and linear.

    Maps come out at a quarter of the input size and each feature sees only 18x18 pixels (10x10 with
    ``last_kernel=1``), so the class evidence stops close to the object's edge: the CAM paper's
    20%-of-max boxes fit much better than on a ResNet, whose features see the whole picture
    (docs/images.md)."""
    import torch.nn as nn

    if last_kernel not in (1, 3):
        raise ValueError(f"gap-cnn: last_kernel must be 1 or 3, got {last_kernel}")
    conv = _conv_bn_relu
    features = nn.Sequential(*conv(in_channels, width, 3), nn.MaxPool2d(2), *conv(width, 2 * width, 3),
                             nn.MaxPool2d(2), *conv(2 * width, 4 * width, last_kernel), *conv(4 * width, 4 * width, 1))
    return gap_network(features, 4 * width, num_classes)


def model_builders() -> dict[str, Any]:
    import functools

    builders: dict[str, Any] = {name: functools.partial(build_resnet, name) for name in RESNETS}
    for name, builder in builders.items():
        builder.__doc__ = (f"torchvision {name}: build(num_classes, weights=None|'DEFAULT', "
                           "output_stride=32|16|8|4, dilate=None|True|False)")
    builders["mnist-gap"] = build_mnist_gap
    builders["mnist-gap-bn"] = build_mnist_gap_bn
    builders["gap-cnn"] = build_gap_cnn
    from camkit_plugins.image.pretrained import build_efficientnet_lite0

    builders["efficientnet-lite0"] = build_efficientnet_lite0
    return builders
