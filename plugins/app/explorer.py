"""What the explorer app computes, without the web page: read a picture (or pick a clip), explain it with one
or several methods for one class, and draw the maps; the Gradio page (``server.py``) only wires these to
its widgets, and ``benchmarks/app_overhead.py`` times them against ``camkit.explain``."""

from __future__ import annotations

import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")
MAX_PIXELS = 40_000_000  # a larger picture is refused before decoding (a decompression bomb costs no memory)
TOP = 5  # classes offered
DELETION_STEPS = 20
CANDIDATES = 6  # layers offered besides the located one


class PictureError(ValueError):
    """A file the app cannot use as a picture; the message is shown in the page."""


@dataclass
class Loaded:
    """One picture (or clip) in the page: what the model sees, its top classes, and maps already computed."""

    name: str
    picture: Any  # uint8 (3, H, W) for pictures, the clip (C, T, V, M) for skeletons
    inputs: Any  # the model input, batch of one
    top: list[tuple[int, float]]  # (class id, probability), best first
    # (method, layer, class) -> CamResult, ("deletion", method, layer, class) -> its deletion AUC
    results: dict[tuple, Any] = field(default_factory=dict)


@dataclass
class Panel:
    """One method's map of the loaded sample: its picture, caption, raw map and deletion AUC (if asked)."""

    method: str
    caption: str
    picture: Any  # PIL image
    cam: Any  # numpy float32, the raw map as camkit.explain returns it
    deletion_auc: float | None = None


class Explorer:
    """A model and its config (``classes``, ``input_size``, ``mean``, ``std`` for pictures; a skeleton
    checkpoint's ``graph`` for clips), the methods offered, and where downloads are written."""

    def __init__(self, model: Any, config: dict[str, Any], out: str | Path | None = None) -> None:
        self.model = model  # its train/eval flags are left as found: camkit runs it in eval mode
        self.config = config
        self.classes: list[str] = list(config["classes"])
        self.skeleton = config.get("domain") == "skeleton"
        self.out = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="camkit-app-"))
        self._layers: list[str] | None = None
        # the page may run two events at once; camkit's hooks on one model must not overlap
        self.lock = threading.RLock()

    # -- inputs
    def read_picture(self, path: str | Path, name: str | None = None) -> Loaded:
        """Decode an uploaded or example picture; ``PictureError`` names what is wrong with it."""
        from PIL import Image, UnidentifiedImageError

        from camkit_plugins.image.datasets import CorruptImageError, decode_image_file

        path = Path(path)
        if path.suffix.lower() not in PICTURE_SUFFIXES:
            raise PictureError(f"{path.name}: not a picture file; use one of {', '.join(PICTURE_SUFFIXES)}")
        try:
            with Image.open(path) as header:  # reads the header only
                width, height = header.size
        except (UnidentifiedImageError, OSError) as exc:
            raise PictureError(f"{path.name}: cannot read this picture ({type(exc).__name__}: {exc})") from None
        if width * height > MAX_PIXELS:
            raise PictureError(f"{path.name}: {width} x {height} pixels is more than the {MAX_PIXELS:,} allowed")
        try:
            picture = decode_image_file(path)
        except CorruptImageError as exc:
            raise PictureError(str(exc).replace(str(path), path.name)) from None
        return self.load_picture(picture, name or path.name)

    def load_picture(self, picture: Any, name: str) -> Loaded:
        """A decoded uint8 ``(3, H, W)`` picture, prepared as the model's input (no forward yet)."""
        from camkit_plugins.image.datasets import prepare_image

        grey = int(self.config.get("in_channels", 3)) == 1
        source = picture.float().mean(dim=0, keepdim=True).round().to(picture.dtype) if grey else picture
        inputs = prepare_image(source, int(self.config["input_size"]), self.config["mean"], self.config["std"])[None]
        return Loaded(name, picture, inputs.to(self.device), [])

    def load_clip(self, clip: Any, name: str) -> Loaded:
        """A skeleton clip ``(C, T, V, M)`` as the model's input."""
        import torch

        clip = torch.as_tensor(clip, dtype=torch.float32)
        return Loaded(name, clip, clip[None].to(self.device), [])

    @property
    def device(self) -> Any:
        parameter = next(iter(self.model.parameters()), None)
        return parameter.device if parameter is not None else "cpu"

    # -- layers
    def layers(self, loaded: Loaded) -> list[str]:
        """The located layer first, then up to ``CANDIDATES`` more, deepest first: the model's stages (its
        top-level modules and the blocks of a top-level ``Sequential`` / ``ModuleList``) whose output has the
        located features' rank and more than one site; a stage giving the same tensor as a deeper one is
        left out."""
        with self.lock:
            if self._layers is None:
                self._layers = self._candidates(loaded)
            return self._layers

    def _candidates(self, loaded: Loaded) -> list[str]:
        import torch

        import camkit
        from camkit.adapters import ModelInputs
        from camkit.capture import evaluation_mode

        located = str(camkit.locate_features(self.model, ModelInputs.of(loaded.inputs)).point)
        stages = []
        for name, module in self.model.named_children():
            stages.append((name, module))
            if isinstance(module, (torch.nn.Sequential, torch.nn.ModuleList)):
                stages += [(f"{name}.{child}", block) for child, block in module.named_children()
                           if len(list(block.children())) >= 2]  # blocks, not single layers
        rank = loaded.inputs.ndim - (1 if self.skeleton else 0)  # skeleton features (N, C, T, V) drop M
        order: list[tuple[str, Any]] = []

        def record(name: str) -> Any:
            def hook(module: Any, args: Any, output: Any) -> None:
                if isinstance(output, torch.Tensor) and output.ndim == rank and output[0, 0].numel() > 1:
                    order.append((name, output))  # held, so no two outputs share an id
            return hook

        hooks = [module.register_forward_hook(record(name)) for name, module in stages]
        try:
            with torch.inference_mode(), evaluation_mode(self.model):
                self.model(loaded.inputs)
        finally:
            for handle in hooks:
                handle.remove()
        found, tensors = [located], set()
        for name, output in reversed(order):  # deepest first; a wrapper's output is its last block's
            if id(output) not in tensors and name not in found:
                found.append(name)
            tensors.add(id(output))
        return found[:CANDIDATES + 1]

    # -- maps
    def explain(self, loaded: Loaded, method: str, layer: str | None, class_id: int | None) -> Any:
        """The map of ``loaded`` for ``class_id`` (None: the predicted class), computed once per
        (method, layer, class); the first call also fills ``loaded.top``."""
        import camkit

        key = (method, layer or "", -1 if class_id is None else int(class_id))
        with self.lock:
            if key not in loaded.results:
                options: dict[str, Any] = {"reduce": "M"} if self.skeleton else {}
                result = camkit.explain(self.model, loaded.inputs, method=method, layer=layer or None,
                                        targets=None if class_id is None else [int(class_id)], **options)
                loaded.results[key] = result
                if not loaded.top:
                    probabilities = result.probabilities[0]
                    top = probabilities.topk(min(TOP, probabilities.numel()))
                    loaded.top = [(int(i), float(p)) for p, i in zip(top.values, top.indices)]
            return loaded.results[key]

    def label(self, class_id: int, probability: float) -> str:
        from camkit.display import label_text

        return label_text(self.classes[class_id], probability)

    def panels(self, loaded: Loaded, methods: Sequence[str], layer: str | None, class_id: int | None,
               alpha: float = 0.5, deletion: bool = False) -> list[Panel]:
        """One panel per method, side by side in the page."""
        if not methods:
            raise ValueError("choose at least one method")
        with self.lock:
            return [self._panel(loaded, method, layer, class_id, alpha, deletion) for method in methods]

    def _panel(self, loaded: Loaded, method: str, layer: str | None, class_id: int | None, alpha: float,
               deletion: bool) -> Panel:
        """One method's panel (``panels`` holds the lock)."""
        result = self.explain(loaded, method, layer, class_id)
        target = int(result.targets[0])
        caption = f"{method}: {self.label(target, float(result.scores[0]))}"
        picture = self.picture(loaded, result, alpha, caption)
        auc = None
        if deletion and not self.skeleton:
            key = ("deletion", method, layer or "", target)
            auc = loaded.results[key] = loaded.results.get(key) or self.deletion_auc(loaded, result)
        return Panel(method, caption, picture, result.numpy()[0], auc)

    def picture(self, loaded: Loaded, result: Any, alpha: float, caption: str) -> Any:
        """The overlay on the picture at its own resolution, labelled like ``camkit explain``'s files; for
        clips, the joint x time map beside the skeleton drawing."""
        import numpy as np
        from PIL import Image

        from camkit.display import overlay, skeleton_picture
        from camkit_plugins.image.render import draw_label

        if self.skeleton:
            return skeleton_picture(result.maps[0], loaded.picture, self.config.get("graph"))
        blended = overlay(loaded.picture, result.maps[0], alpha)
        return Image.fromarray(draw_label(np.asarray(blended), caption.split(": ", 1)[1]))

    def deletion_auc(self, loaded: Loaded, result: Any) -> float:
        """Deletion AUC (camkit's ``deletion`` metric, ``DELETION_STEPS`` steps): lower is more faithful."""
        import torch

        import camkit
        from camkit.layout import Layout
        from camkit_plugins.metrics.base import EvalBatch

        metric = camkit.lookup("metrics", "deletion")(steps=DELETION_STEPS)
        batch = EvalBatch(model=self.model, inputs=loaded.inputs, input_layout=Layout.parse("NCHW"),
                          labels=result.targets, targets=result.targets, maps=result.maps.float(),
                          map_letters=result.map_letters, indices=torch.zeros(1, dtype=torch.long),
                          explain=None, chunk_size=DELETION_STEPS + 1)
        return float(metric.evaluate(batch).values["auc"][0])

    def downloads(self, loaded: Loaded, panels: Sequence[Panel]) -> list[Path]:
        """Each panel's raw map (``.npy``) and picture (``.jpg`` at quality 92 like ``camkit explain``'s
        overlays; the page shows these files, so no picture is encoded twice), written atomically in a new
        folder under ``out``."""
        from camkit.io import atomic_path, save_numpy_atomic

        stem = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in Path(loaded.name).stem) or "picture"
        self.out.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(dir=self.out))  # per call: two pages' "photo.jpg" never share a file
        written = []
        for panel in panels:
            base = folder / f"{stem}_{panel.method}"
            written.append(save_numpy_atomic(base.with_suffix(".npy"), panel.cam))
            with atomic_path(base.with_suffix(".jpg")) as temporary:
                panel.picture.save(temporary, format="JPEG", quality=92)
            written.append(base.with_suffix(".jpg"))
        return written

    def class_choices(self, loaded: Loaded) -> list[tuple[str, int]]:
        """``("<class> <probability>", class id)`` for the top classes."""
        return [(self.label(class_id, p), class_id) for class_id, p in loaded.top]
