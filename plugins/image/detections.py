"""``camkit explain`` for detectors: one overlay per detection, its own map with its box, label and score.

Each picture's ``max_detections`` best detections are explained in one forward pass (the default target
of a detector, ``TopDetections``: one map per detection, each the gradient of that detection's score
alone), then drawn as ``<name>_det<k>_<label>_<pp.pp>pct.jpg``: the map blended over the picture, the
detection's box and its label and score. Works for any model whose output is a torchvision-style list of
``{"boxes", "labels", "scores"}`` dicts in input pixels (Ultralytics YOLO networks through camkit's
adapter, torchvision detectors)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

BOX_COLOUR = (255, 255, 255)


@dataclass
class DetectionReport:
    """What `explain_detections` did: overlays written, unreadable files, pictures with no detection."""

    written: list[Path] = field(default_factory=list)
    bad: list[str] = field(default_factory=list)
    empty: list[str] = field(default_factory=list)
    images_per_second: float = 0.0


def detection_file_name(stem: str, rank: int, class_name: str, score: float) -> str:
    """``<name>_det<k>_<label>_<pp.pp>pct.jpg`` (k from 0, best first)."""
    from camkit_plugins.image.render import overlay_file_name

    return overlay_file_name(f"{stem}_det{rank}", class_name, score).replace("_pred_", "_", 1)


def draw_detection(picture_rgb: Any, box: Sequence[float], text: str) -> Any:
    """The picture (H, W, 3) uint8 numpy RGB with ``box`` ``[x1, y1, x2, y2]`` (its pixels) outlined and
    ``text`` written on a dark band above it (inside the picture)."""
    import cv2
    import numpy as np

    out = np.ascontiguousarray(picture_rgb).copy()
    height, width = out.shape[:2]
    x1, y1, x2, y2 = (int(round(float(v))) for v in box)
    x1, x2 = sorted((min(max(x1, 0), width - 1), min(max(x2, 0), width - 1)))
    y1, y2 = sorted((min(max(y1, 0), height - 1), min(max(y2, 0), height - 1)))
    thickness = max(1, min(height, width) // 200)
    cv2.rectangle(out, (x1, y1), (x2, y2), (0, 0, 0), thickness + 2)
    cv2.rectangle(out, (x1, y1), (x2, y2), BOX_COLOUR, thickness)
    scale = max(0.35, min(height, width) / 600.0)
    (text_w, text_h), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    top = y1 - text_h - baseline - 4 if y1 - text_h - baseline - 4 >= 0 else min(y1 + 1, height - text_h - baseline)
    left = min(x1, max(0, width - text_w - 4))
    cv2.rectangle(out, (left, top), (left + text_w + 4, top + text_h + baseline + 4), (0, 0, 0), -1)
    cv2.putText(out, text, (left + 2, top + text_h + 2), cv2.FONT_HERSHEY_SIMPLEX, scale, BOX_COLOUR, 1,
                cv2.LINE_AA)
    return out


def explain_detections(model: Any, config: dict[str, Any], files: Sequence[Path], out: str | Path,
                       method: str = "gradcam", max_detections: int = 5, alpha: float = 0.5, device: str = "cpu",
                       batch_size: int = 4, workers: int = 0, min_score: float | None = None,
                       method_options: Any = None) -> DetectionReport:
    """Overlays ``<name>_det<k>_<label>_<pp.pp>pct.jpg`` for the ``max_detections`` best detections of every
    readable picture (``config``: ``input_size``, ``mean``, ``std``, ``classes``, optional ``layer``); the
    pictures are resized to ``input_size`` squared for the model and the boxes scaled back to them.
    ``method``: any CAM method (gradient methods give each detection its own map; ``eigencam`` the same
    map for all). ``min_score``: the confidence threshold of an Ultralytics model (its ``overrides["conf"]``;
    None: the model's own)."""
    import time

    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader

    import camkit
    from camkit.distributed import local_device
    from camkit.io import output_folder
    from camkit_plugins.image.explain_files import PictureFiles, unique_stem
    from camkit_plugins.image.render import label_text, overlay, write_overlay

    if max_detections < 1:
        raise ValueError(f"--max-detections {max_detections}: must be at least 1")
    if min_score is not None:
        if not isinstance(getattr(model, "overrides", None), dict):
            raise ValueError("--min-score sets an Ultralytics model's confidence threshold; this model has none")
        model.overrides["conf"] = float(min_score)
    device = local_device(device)
    out = output_folder(out)
    size, classes = int(config["input_size"]), list(config.get("classes") or [])
    dataset = PictureFiles(files, size, config["mean"], config["std"], 3)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=list)
    model = model.to(device) if hasattr(model, "to") else model
    report, stems, start = DetectionReport(), set(), time.perf_counter()
    with camkit.Explainer(model, method=method, layer=config.get("layer"), method_options=method_options) as explainer:
        for items in loader:
            report.bad += [item["error"] for item in items if "error" in item]
            good = [item for item in items if "error" not in item]
            if not good:
                continue
            inputs = torch.stack([item["input"].to(device) for item in good])
            result = explainer(inputs, topk=max_detections)
            maps = result.maps if result.maps.ndim == 4 else result.maps[:, None]
            for i, item in enumerate(good):
                stem = unique_stem(Path(item["path"]).stem, stems)
                detections = result.logits[i]
                order = detections["scores"].detach().argsort(descending=True)[:max_detections]  # as TopDetections
                count = len(order)
                if count == 0:
                    report.empty.append(item["path"])
                    continue
                picture = item["picture"].to(maps.device)
                height, width = picture.shape[-2:]
                scale = torch.tensor([width / size, height / size] * 2)
                panels = F.interpolate(maps[i, :count, None].float(), size=(height, width), mode="bilinear",
                                       align_corners=False)[:, 0]
                blended = overlay(picture[None].expand(count, -1, -1, -1), panels, alpha).cpu()
                for k, index in enumerate(order.tolist()):
                    label = int(detections["labels"][index])
                    name = classes[label] if label < len(classes) else str(label)
                    score = float(detections["scores"][index].detach())
                    box = (detections["boxes"][index].detach().float().cpu() * scale).tolist()
                    drawn = draw_detection(blended[k].permute(1, 2, 0).numpy(), box, label_text(name, score))
                    report.written.append(write_overlay(out / detection_file_name(stem, k, name, score), drawn))
    report.images_per_second = len(files) / max(time.perf_counter() - start, 1e-9)
    return report


def print_detection_report(report: DetectionReport, out: str | Path) -> int:
    """The command's summary lines; status 1 when a file could not be read."""
    import sys

    print(f"wrote {len(report.written)} detection overlay(s) to {out} ({report.images_per_second:.1f} images/s)")
    if report.empty:
        print(f"{len(report.empty)} picture(s) with no detection (the model's confidence threshold: --min-score "
              f"for YOLO, box_score_thresh for torchvision): {', '.join(report.empty)}")
    if report.bad:
        print(f"error: {len(report.bad)} unreadable file(s): " + "; ".join(report.bad), file=sys.stderr)
    return 1 if report.bad else 0
