"""``camkit explain --model SPEC``: any pretrained network, loaded the way its library loads it, offline.

SPEC is one of

- ``torchvision:NAME`` (weights from the local torch cache; ``--weights DEFAULT|none|<enum name>``),
- ``timm:NAME`` (weights from the local Hugging Face cache),
- ``hf:NAME_OR_PATH`` (a transformers image classifier, ``local_files_only``),
- ``ultralytics:PATH`` (a YOLO ``.pt`` checkpoint or ``.yaml`` model file, loaded by ultralytics: detectors
  and segmenters are explained one detection at a time, classifiers as any other),
- ``package.module:callable`` or ``path/to/file.py:callable`` (called with no arguments, returns a module),
  a classifier or a detector with torchvision's output (``[{"boxes", "labels", "scores"}, ...]`` in eval
  mode, as ``torchvision:fasterrcnn_resnet50_fpn``): detectors are explained one detection at a time,
- a ``torch.export`` archive (``.pt2``, exported with a dynamic batch dimension); TorchScript files
  (``.pt``, ``.pth``, ``.ts``) load, but cannot be explained: TorchScript modules take no hooks.

Nothing downloads: a weight file that is not cached is an error saying how to get it. Preprocessing comes
from the weights' own transforms where the library has them (crop size, mean, std), else ``--size``,
``--mean``, ``--std``; class names from the weights' metadata, ``--labels imagenet`` or ``--labels FILE``
(one name per line). camkit resizes the whole picture to the input size (no centre crop), so the overlay
covers all of it.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from camkit.plugin_manager import UnknownNameError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_SIZE = 224
DETECTOR_SIZE = 640  # pictures are resized to a square; torchvision detectors rescale them again inside
SCRIPT_SUFFIXES = (".pt", ".pth", ".ts")
EXPORT_SUFFIXES = (".pt2",)


class ModelSpecError(ValueError):
    """A ``--model`` spec that cannot be turned into a model (the message says why and what to do)."""


@dataclass
class Preprocessing:
    size: int | None = None
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None
    classes: list[str] = field(default_factory=list)


def load_model_spec(spec: str, weights: str = "DEFAULT", labels: str | None = None, size: int | None = None,
                    mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> tuple[Any, dict]:
    """``(model in eval mode, config)`` for ``spec``; ``config`` has what ``explain_files`` needs
    (classes, input_size, mean, std, in_channels). Given ``size`` / ``mean`` / ``std`` win over the
    weights' own."""
    import torch

    if size is not None:  # before any loading: a wrong size is the user's, whatever the model
        _check_preprocessing(size, mean or IMAGENET_MEAN, std or IMAGENET_STD, channels=3)
    prefix, _, rest = spec.partition(":")
    if prefix == "ultralytics" and rest:  # AGPL-3.0: imported only here, when the user names such a model
        return _ultralytics(spec, rest, labels, size)
    loaders = {"torchvision": _torchvision, "timm": _timm, "hf": _transformers}
    if prefix in loaders and rest:
        model, found = loaders[prefix](rest, weights)
    elif Path(spec).suffix in SCRIPT_SUFFIXES + EXPORT_SUFFIXES and Path(spec).is_file():
        model, found = _serialized(Path(spec)), Preprocessing()
    elif ":" in spec:
        model, found = _callable(spec), Preprocessing()
    else:
        raise ModelSpecError(f"--model {spec!r}: use torchvision:NAME, timm:NAME, hf:NAME_OR_PATH, "
                             f"package.module:callable, path/to/file.py:callable, or a TorchScript (.pt/.ts) or "
                             f"torch.export (.pt2) file")
    if not isinstance(model, torch.nn.Module):
        raise ModelSpecError(f"--model {spec!r} gave a {type(model).__name__}, not a torch.nn.Module")
    if isinstance(model, torch.jit.ScriptModule):
        raise ModelSpecError(f"--model {spec!r} is a TorchScript module, which camkit cannot explain: TorchScript "
                             f"modules take no forward hooks, which capture the features; pass the eager model "
                             f"(file.py:callable) or a torch.export archive (.pt2)")
    model.eval()
    input_size = int(size or found.size or DEFAULT_SIZE)
    mean = tuple(mean or found.mean or IMAGENET_MEAN)
    std = tuple(std or found.std or IMAGENET_STD)
    _check_preprocessing(input_size, mean, std, channels=3)
    num_classes = _num_classes(model, input_size)
    config = {"model": spec, "input_size": input_size, "mean": list(mean), "std": list(std), "in_channels": 3,
              "domain": "image", "input_layout": "NCHW"}
    if num_classes is None:  # a detector: labels are indices into whatever names it was trained with
        return model, {**config, "task": "detection",
                       "classes": read_labels(labels, None) if labels else found.classes}
    classes = read_labels(labels, num_classes) if labels else found.classes or [str(i) for i in range(num_classes)]
    if len(classes) != num_classes:
        raise ModelSpecError(f"{len(classes)} class names for a model with {num_classes} outputs")
    return model, {**config, "classes": classes}


def _check_preprocessing(size: int, mean: Sequence[float], std: Sequence[float], channels: int) -> None:
    """A positive input size, one finite mean and one positive finite std per input channel."""
    import math

    if size < 1:
        raise ModelSpecError(f"--size {size}: an input size is a positive number of pixels")
    for flag, values in (("--mean", mean), ("--std", std)):
        if len(values) != channels:
            raise ModelSpecError(f"{flag} takes {channels} values, one per input channel (R,G,B), got {len(values)}: "
                                 f"{','.join(f'{v:g}' for v in values)}")
        if not all(math.isfinite(v) for v in values):
            raise ModelSpecError(f"{flag} {','.join(f'{v:g}' for v in values)}: values must be finite")
    if not all(v > 0 for v in std):
        raise ModelSpecError(f"--std {','.join(f'{v:g}' for v in std)}: every std must be positive (inputs are "
                             f"divided by it)")


def _ultralytics(spec: str, path: str, labels: str | None, size: int | None) -> tuple[Any, dict]:
    from camkit_plugins.image.ultralytics_support import load_ultralytics

    model, found = load_ultralytics(path)
    model.model.eval()
    classes = read_labels(labels, len(found["classes"])) if labels else found["classes"]
    return model, {**found, "model": spec, "classes": classes, "input_size": int(size or found["input_size"]),
                   "in_channels": 3, "domain": "image", "input_layout": "NCHW"}


def read_labels(labels: str, num_classes: int | None) -> list[str]:
    """Class names: ``"imagenet"`` (torchvision's list, offline) or a file with one name per line; as many
    as the model has classes (``num_classes``; None: any number, for a detector's label indices)."""
    if labels == "imagenet":
        names = imagenet_classes()
        source = "ImageNet"
    else:
        path = Path(labels).expanduser()
        if not path.is_file():
            raise ModelSpecError(f"--labels {labels!r}: no such file (or use --labels imagenet)")
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        source = str(path)
    if num_classes is not None and len(names) != num_classes:
        raise ModelSpecError(f"--labels {source} has {len(names)} class names but the model outputs {num_classes} "
                             f"classes")
    return names


def imagenet_classes() -> list[str]:
    from torchvision.models import ResNet18_Weights

    return list(ResNet18_Weights.DEFAULT.meta["categories"])


def _num_classes(model: Any, size: int) -> int | None:
    """The number of scores the model gives one picture (one forward pass of a blank input); None for a
    detector (a list of ``{"boxes", "labels", "scores"}`` dicts)."""
    import torch

    from camkit.adapters import select_output
    from camkit.capture import evaluation_mode
    from camkit.targets import is_detections

    with torch.inference_mode(), evaluation_mode(model):
        output = model(torch.zeros(1, 3, size, size, device=_device_of(model)))
        if is_detections(output):
            return None
        output = select_output(output)
    if getattr(output, "ndim", 0) != 2:
        raise ModelSpecError(f"the model returns {getattr(output, 'shape', type(output).__name__)} for a picture; "
                             f"camkit explain needs a classifier's (N, classes) logits")
    return int(output.shape[1])


def _device_of(model: Any) -> Any:
    parameter = next(iter(model.parameters()), None)
    return parameter.device if parameter is not None else "cpu"


def _torchvision(name: str, weights: str) -> tuple[Any, Preprocessing]:
    import torch
    import torchvision

    try:
        enum = torchvision.models.get_model_weights(name)
    except (ValueError, KeyError):
        available = ", ".join(torchvision.models.list_models()[:8])
        raise ModelSpecError(f"torchvision has no model {name!r} (e.g. {available}, ...: torchvision.models."
                             f"list_models())") from None
    import inspect

    # detection, segmentation and video builders otherwise fetch ImageNet weights for their backbone
    offline = {"weights_backbone": None} if "weights_backbone" in inspect.signature(
        torchvision.models.get_model_builder(name)).parameters else {}
    # a detector normalises its pictures itself: camkit gives it [0, 1] values
    detector = torchvision.models.get_model_builder(name).__module__.startswith("torchvision.models.detection")
    raw = {"size": DETECTOR_SIZE, "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)} if detector else {}
    if weights.lower() == "none":
        return torchvision.models.get_model(name, weights=None, **offline), Preprocessing(**raw)
    try:
        chosen = enum.DEFAULT if weights == "DEFAULT" else enum[weights]
    except KeyError:
        known = ["DEFAULT", *(w.name for w in enum), "none"]
        raise ModelSpecError(str(UnknownNameError.of("weights", weights, known, where=name))) from None
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(chosen.url).name
    if not path.is_file():
        raise ModelSpecError(f"torchvision weights {name} {chosen.name} are not in the local torch cache ({path}); "
                             f"camkit never downloads. On a machine with internet run: python -c \"import "
                             f"torchvision; torchvision.models.get_model('{name}', weights='{chosen.name}')\" and copy "
                             f"{path.name} into {path.parent} (or point TORCH_HOME at that cache), or pass "
                             "--weights none")
    model = torchvision.models.get_model(name, weights=None, num_classes=len(chosen.meta["categories"]), **offline)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    if detector:
        return model, Preprocessing(**raw, classes=list(chosen.meta["categories"]))
    transforms = chosen.transforms()
    crop = getattr(transforms, "crop_size", [DEFAULT_SIZE])
    return model, Preprocessing(int(crop[0]), tuple(transforms.mean), tuple(transforms.std),
                                list(chosen.meta["categories"]))


def _timm(name: str, weights: str) -> tuple[Any, Preprocessing]:
    timm = _require("timm", "timm")
    pretrained = weights.lower() != "none"
    try:
        with _hub_offline():
            model = timm.create_model(name, pretrained=pretrained)
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            raise ModelSpecError(f"timm has no model {name!r} (timm.list_models('*{name[:6]}*'))") from None
        raise
    except (OSError, ValueError) as exc:
        raise ModelSpecError(f"timm weights for {name} are not in the local Hugging Face cache "
                             f"({exc.__class__.__name__}); camkit never downloads. On a machine with internet run: "
                             f"python -c \"import timm; "
                             f"timm.create_model('{name}', pretrained=True)\" and copy the cache (HF_HOME), or pass "
                             f"--weights none") from None
    config = timm.data.resolve_model_data_config(model)
    classes = imagenet_classes() if getattr(model, "num_classes", 0) == 1000 else []
    return model, Preprocessing(int(config["input_size"][-1]), tuple(config["mean"]), tuple(config["std"]), classes)


def _transformers(name: str, weights: str) -> tuple[Any, Preprocessing]:
    transformers = _require("transformers", "transformers")
    try:
        model = transformers.AutoModelForImageClassification.from_pretrained(name, local_files_only=True)
    except OSError as exc:
        raise ModelSpecError(f"hf:{name}: not found locally ({str(exc).splitlines()[0][:160]}); camkit never "
                             f"downloads. Pass a folder written by save_pretrained(), or on a machine with internet "
                             f"run: python -c \"import transformers; transformers.AutoModelForImageClassification."
                             f"from_pretrained('{name}')\" and copy the cache (HF_HOME)") from None
    found = Preprocessing(classes=[model.config.id2label[i] for i in range(model.config.num_labels)])
    try:
        processor = transformers.AutoImageProcessor.from_pretrained(name, local_files_only=True)
    except OSError:
        return model, found
    size = getattr(processor, "crop_size", None) or getattr(processor, "size", None) or {}
    size = dict(size) if hasattr(size, "keys") else vars(size) if hasattr(size, "__dict__") else {}
    found.size = size.get("height") or size.get("shortest_edge")
    found.mean, found.std = getattr(processor, "image_mean", None), getattr(processor, "image_std", None)
    return model, found


def _serialized(path: Path) -> Any:
    import torch

    try:
        if path.suffix in EXPORT_SUFFIXES:
            return torch.export.unflatten(torch.export.load(str(path)))  # keeps the module tree hooks need
        with warnings.catch_warnings():  # loaded only to be named in the refusal: torch's deprecation is noise
            warnings.simplefilter("ignore", FutureWarning)
            return torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        kind = "torch.export archive" if path.suffix in EXPORT_SUFFIXES else "TorchScript file"
        raise ModelSpecError(f"{path}: not a readable {kind} ({type(exc).__name__}: {str(exc)[:160]})") from exc


def _callable(spec: str) -> Any:
    """``module:callable`` or ``file.py:callable``, called with no arguments."""
    target, _, attribute = spec.rpartition(":")
    if target.endswith(".py"):
        path = Path(target).expanduser()
        if not path.is_file():
            raise ModelSpecError(f"--model {spec!r}: no such file {path}")
        module_spec = importlib.util.spec_from_file_location(f"camkit_user_model_{path.stem}", path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_spec.name] = module
        try:
            module_spec.loader.exec_module(module)
        except Exception as exc:  # the user's file: report it as theirs, with its own error
            del sys.modules[module_spec.name]
            raise ModelSpecError(f"--model {spec!r}: importing {path} failed: {_one_line(exc)}") from exc
    else:
        try:
            module = importlib.import_module(target)
        except Exception as exc:
            raise ModelSpecError(f"--model {spec!r}: cannot import {target!r}: {_one_line(exc)}") from exc
    factory = getattr(module, attribute, None)
    if factory is None or not callable(factory):
        raise ModelSpecError(f"--model {spec!r}: {target} has no callable {attribute!r}")
    try:
        return factory()
    except Exception as exc:
        raise ModelSpecError(f"--model {spec!r}: calling {attribute}() failed: {_one_line(exc)}") from exc


def _one_line(exc: BaseException) -> str:
    """``"TypeName: first line of the message"`` (CAMKIT_TRACEBACK=1 shows the whole chain)."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def _require(module: str, package: str) -> Any:
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError:
        raise ModelSpecError(f"--model {module}:... needs the package {package!r}: pip install {package} "
                             f"(or pip install 'camkit[zoo]')") from None


class _hub_offline:
    """Hugging Face Hub in offline mode for the block: cached files only, never the network."""

    def __enter__(self) -> None:
        import os

        self.saved = os.environ.get("HF_HUB_OFFLINE")
        os.environ["HF_HUB_OFFLINE"] = "1"
        try:
            from huggingface_hub import constants
        except ImportError:
            self.constants = None
            return
        self.constants, self.flag = constants, constants.HF_HUB_OFFLINE
        constants.HF_HUB_OFFLINE = True

    def __exit__(self, *exc: Any) -> None:
        import os

        if self.saved is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = self.saved
        if self.constants is not None:
            self.constants.HF_HUB_OFFLINE = self.flag
