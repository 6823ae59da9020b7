"""Ultralytics YOLO models, explained as users hold them: the ``YOLO`` object (or its network) accepted
as it is, detections scored after non-maximum suppression, classifiers by their logits.

Ultralytics is AGPL-3.0: camkit never imports it to recognise a model (the model's type lives in an
``ultralytics.*`` module) and imports it only to load a file the user names (``--model ultralytics:...``).
Importing this module imports neither torch nor ultralytics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from camkit.families import ModelFamily

SUFFIXES = (".pt", ".yaml", ".yml")
DEFAULT_SIZE = 640


def is_ultralytics(model: Any) -> bool:
    """Whether ``model`` is an Ultralytics object (found by its type's module; ultralytics not imported)."""
    return type(model).__module__.split(".")[0] == "ultralytics"


class UltralyticsFamily(ModelFamily):
    """YOLO classification, detection, segmentation and pose models. Detectors: the features are the
    first input of the detection head (``model.15`` of YOLOv8, ``model.16`` of YOLO11; a ``YOLO``
    object's names start with ``model.``); classifiers: found by data flow (the head's convolution, which
    global pooling receives, and its Linear: CAM's identity holds)."""

    name = "ultralytics"

    def matches(self, model: Any) -> bool:
        return is_ultralytics(model) or type(model).__name__ == "YoloNetwork" and \
            type(model).__module__.endswith("image.yolo_adapter")

    def adapt(self, model: Any) -> Any:
        if not is_ultralytics(model):
            return model
        from camkit_plugins.image.yolo_adapter import YoloNetwork

        return YoloNetwork(model)

    def locate(self, model: Any) -> Any:
        from camkit.capture import CapturePoint
        from camkit.layout import Layout
        from camkit.locate import FeatureSource

        network = self.adapt(model)
        layer = network.feature_layer()
        if layer is None:
            return None  # a classifier: data flow finds its pooled features and classifier
        return FeatureSource(CapturePoint.parse(model, layer), Layout.parse("NCHW"),
                             reason=f"output of {layer!r}, the first input of the YOLO detection head (stride "
                                    f"{int(min(network.network.stride.tolist()))}; every detection depends on it)")


def restore_pil_open() -> None:
    """Undo ultralytics' patch of ``PIL.Image.open`` (made when it is imported): on a file Pillow cannot
    identify, the patch tries to install ``pi-heif`` from the network and raises ``ModuleNotFoundError``
    instead of ``UnidentifiedImageError``, which breaks camkit's reporting of unreadable pictures."""
    import sys

    patches = sys.modules.get("ultralytics.utils.patches")
    original = getattr(patches, "_image_open", None)
    if original is not None:
        import PIL.Image

        PIL.Image.open = original


def load_ultralytics(spec: str) -> tuple[Any, dict[str, Any]]:
    """``(YOLO object, partial config)`` for ``path.pt`` (a checkpoint ultralytics saved: it unpickles it,
    so load only files you trust) or ``model.yaml`` (random weights); nothing downloads."""
    from camkit_plugins.image.model_spec import ModelSpecError

    path = Path(spec).expanduser()
    if path.suffix not in SUFFIXES:
        raise ModelSpecError(f"--model ultralytics:{spec}: name a local .pt checkpoint or a .yaml model file")
    if path.suffix == ".pt" and not path.is_file():
        raise ModelSpecError(f"--model ultralytics:{spec}: no such file {path}; camkit never downloads (ultralytics "
                             f"would): on a machine with internet run python -c \"from ultralytics import YOLO; "
                             f"YOLO('{path.name}')\" and copy the file here")
    try:
        from ultralytics import YOLO
    except ModuleNotFoundError:
        raise ModelSpecError("--model ultralytics:... needs the package 'ultralytics' (AGPL-3.0): pip install "
                             "ultralytics") from None
    restore_pil_open()
    try:
        yolo = YOLO(str(path) if path.is_file() else spec)
    except (FileNotFoundError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelSpecError(f"--model ultralytics:{spec}: ultralytics could not load it ({type(exc).__name__}: "
                             f"{str(exc)[:160]})") from None
    network = yolo.model
    task = {"ClassificationModel": "classify"}.get(type(network).__name__, "detect")
    names = dict(getattr(network, "names", {}) or {})
    size = getattr(network, "args", {}).get("imgsz") if isinstance(getattr(network, "args", None), dict) else None
    config = {"classes": [str(names.get(i, i)) for i in range(len(names))], "input_size": int(size or DEFAULT_SIZE),
              "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0],
              "task": "detection" if task == "detect" else "classification"}
    return yolo, config
