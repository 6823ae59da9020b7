"""Image models: torchvision ResNets (optionally pretrained, offline) and the MNIST GAP CNN,
plus the model families that tell camkit where their class activation maps come from."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from camkit.families import ModelFamily

RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")


class PretrainedWeightsMissing(FileNotFoundError):
    """Pretrained weights were asked for but are not in the local torch cache."""


def _cached_weights_file(weights: Any) -> Path:
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)


def build_resnet(arch: str, num_classes: int, weights: str | None = None, output_stride: int = 32,
                 in_channels: int = 3) -> Any:
    """A torchvision ResNet with a ``num_classes`` head.

    ``weights="DEFAULT"`` (or a torchvision weight name) loads ImageNet weights from the local torch
    cache only (never the network); the head is replaced when ``num_classes != 1000``.
    ``output_stride=16`` keeps layer4 at stride 1 and ``8`` also layer3, doubling / quadrupling the
    CAM's resolution (a 64x64 input gives a 4x4 / 8x8 map instead of 2x2) for more computation."""
    import torch
    import torch.nn as nn
    import torchvision

    if arch not in RESNETS:
        raise KeyError(f"unknown ResNet {arch!r}; available: {', '.join(RESNETS)}")
    if output_stride not in (8, 16, 32):
        raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
    model = torchvision.models.get_model(arch, weights=None, num_classes=1000 if weights else num_classes)
    if weights:
        enum = torchvision.models.get_model_weights(arch)
        try:
            chosen = enum[weights] if weights != "DEFAULT" else enum.DEFAULT
        except KeyError:
            raise KeyError(f"unknown weights {weights!r} for {arch}; available: DEFAULT, "
                           f"{', '.join(w.name for w in enum)}") from None
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
    for layer in (model.layer4, model.layer3)[: {32: 0, 16: 1, 8: 2}[output_stride]]:
        block = layer[0]
        strided = block.conv2 if hasattr(block, "conv3") else block.conv1  # Bottleneck strides conv2
        strided.stride = (1, 1)
        block.downsample[0].stride = (1, 1)
    return model


def build_mnist_gap(num_classes: int = 10, in_channels: int = 1) -> Any:
    """Two conv+ReLU+max-pool blocks (32 and 128 channels), global average pooling, linear."""
    import torch.nn as nn

    class MnistGapNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(in_channels, 32, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
                nn.Conv2d(32, 128, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2))
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.flatten = nn.Flatten(1)
            self.classifier = nn.Linear(128, num_classes)

        def forward(self, x: Any) -> Any:
            return self.classifier(self.flatten(self.pool(self.features(x))))

    return MnistGapNet()


def model_builders() -> dict[str, Any]:
    import functools

    builders: dict[str, Any] = {name: functools.partial(build_resnet, name) for name in RESNETS}
    for name, builder in builders.items():
        builder.__doc__ = f"torchvision {name}: build(num_classes, weights=None|'DEFAULT', output_stride=32|16)"
    builders["mnist-gap"] = build_mnist_gap
    return builders


# ---------------------------------------------------------------- model families


def _gap_head(model: Any) -> tuple[str, Any] | None:
    """``(features_layer_name, linear)`` when ``model`` ends in ... -> X -> global avg pool ->
    [Flatten/Dropout] -> Linear as direct children of one module."""
    import torch.nn as nn

    for parent_name, parent in model.named_modules():
        children = list(parent.named_children())
        for position, (_, child) in enumerate(children):
            if not (isinstance(child, nn.AdaptiveAvgPool2d) and child.output_size in (1, (1, 1))) or position == 0:
                continue
            rest = [module for _, module in children[position + 1:]]
            while rest and isinstance(rest[0], (nn.Flatten, nn.Dropout, nn.Identity)):
                rest.pop(0)
            if len(rest) == 1 and isinstance(rest[0], nn.Linear):
                before = children[position - 1][0]
                return (f"{parent_name}.{before}" if parent_name else before), rest[0]
    return None


class GapLinearFamily(ModelFamily):
    """Any CNN whose head is global average pooling + one linear layer (CAM's architecture)."""

    name = "gap-linear"

    def matches(self, model: Any) -> bool:
        return _gap_head(model) is not None

    def target_layer(self, model: Any) -> str:
        return _gap_head(model)[0]

    def classifier_weights(self, model: Any) -> Any:
        return _gap_head(model)[1].weight


class TorchvisionResNetFamily(ModelFamily):
    """torchvision ResNets (18 ... 152, any head size): features from ``layer4``, classifier ``fc``."""

    name = "torchvision-resnet"

    def matches(self, model: Any) -> bool:
        try:
            from torchvision.models import ResNet
        except ImportError:  # pragma: no cover - torchvision is a dependency
            return False
        return isinstance(model, ResNet)

    def target_layer(self, model: Any) -> str:
        return "layer4"

    def classifier_weights(self, model: Any) -> Any:
        return model.fc.weight
