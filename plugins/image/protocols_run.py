"""The data-set CAM protocols over a whole image set, for `camkit eval image --protocol`: WSSS pseudo-mask
mIoU (IRN's seeds), WSOL MaxBoxAccV2 and PxAP (Choe et al., CVPR 2020). The metric code is
``camkit_plugins.metrics.protocols`` (the accumulators `camkit bench` uses); this module brings the data:
maps computed on the fly or read from a `camkit explain --save-maps` folder (``--maps``), ground truth from
the data set (the shapes set has masks and boxes), a folder of PNG masks (VOC palette) or boxes from VOC
XML files or a JSON file. Under ``torchrun`` each rank takes its batches and the accumulators' states are
summed, so N processes give the numbers of one."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from camkit_plugins.image.dataset_inputs import ImageInputs

PROTOCOLS = ("wsss", "wsol", "pxap")
BASELINES = ("center", "random")


@dataclass
class GroundTruth:
    """Where the protocols' truth comes from: ``masks`` a folder of ``<stem>.png`` class-index masks (VOC
    palette: value c is the model's class c - 1, 0 background, 255 void); ``boxes`` a folder of VOC
    ``<stem>.xml`` files or a JSON file ``{"<stem, file name or path>": [[x0, y0, x1, y1], ...]}`` (end
    exclusive).
    Without them, the data set's own masks and boxes (`ImageInputs.masks` / ``boxes``)."""

    inputs: ImageInputs
    classes: list[str]
    masks: Path | None = None
    boxes: Path | None = None
    _json_boxes: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.boxes is not None and self.boxes.is_file():
            self._json_boxes = json.loads(self.boxes.read_text())

    def mask(self, index: int, size: tuple[int, int]) -> Any:
        """int64 (H, W) segmentation labels (0 background, 1 + class id, 255 void) of image ``index``."""
        import numpy as np

        from camkit_plugins.image.masks import read_mask

        if self.masks is not None:
            path = self.masks / f"{Path(self.inputs.names[index]).stem}.png"
            if not path.is_file():
                raise FileNotFoundError(f"{path}: no ground-truth mask for {self.inputs.names[index]}")
            labels = read_mask(path).astype(np.int64)
        elif self.inputs.masks is not None:
            label = self._label_id(index)
            labels = np.where(self.inputs.masks[index].numpy(), label + 1, 0).astype(np.int64)
        else:
            raise ValueError("the WSSS and PxAP protocols need ground-truth masks: --masks DIR, or a data set with "
                             "masks (--dataset shapes)")
        if tuple(labels.shape) != tuple(size):
            raise ValueError(f"{self.inputs.names[index]}: its mask is {labels.shape[1]}x{labels.shape[0]} but the "
                             f"image is {size[1]}x{size[0]}")
        return labels

    def box_list(self, index: int) -> Any:
        """float (K, 4) ground-truth boxes x0, y0, x1, y1 (end exclusive) of image ``index``."""
        import numpy as np

        name = self.inputs.names[index]
        if self.boxes is not None and self.boxes.is_dir():
            return read_voc_boxes(self.boxes / f"{Path(name).stem}.xml")
        if self.boxes is not None:
            keys = (Path(name).stem, Path(name).name, name)
            found = next((self._json_boxes[key] for key in keys if key in self._json_boxes), None)
            if found is None:
                raise KeyError(f"{self.boxes}: no boxes for {name} (keys are image stems, file names or paths)")
            return np.asarray(found, dtype=np.float64).reshape(-1, 4)
        if self.inputs.boxes is not None:
            return self.inputs.boxes[index].numpy().astype(np.float64).reshape(-1, 4)
        raise ValueError("the WSOL protocol needs ground-truth boxes: --boxes DIR (VOC XML) or FILE.json, or a "
                         "data set with boxes (--dataset shapes)")

    def _label_id(self, index: int) -> int:
        return self.inputs.label_indices(self.classes)[index] if self.inputs.labelled else -1

    def class_ids(self, index: int, mask: Any = None) -> list[int]:
        """The model's classes present in image ``index``: its label, else the classes of its mask."""
        import numpy as np

        if self.inputs.labelled:
            return [self._label_id(index)]
        if mask is None:
            raise ValueError(f"{self.inputs.names[index]}: no label and no mask to tell which classes it holds")
        values = np.unique(mask)
        return [int(v) - 1 for v in values if 0 < v < 255]


def read_voc_boxes(path: Path) -> Any:
    """(K, 4) boxes of a PASCAL VOC annotation file, turned from VOC's 1-based inclusive pixel coordinates
    into 0-based end-exclusive ones (``xmin - 1, ymin - 1, xmax, ymax``)."""
    import xml.etree.ElementTree as ElementTree

    import numpy as np

    if not path.is_file():
        raise FileNotFoundError(f"{path}: no VOC annotation")
    boxes = []
    for box in ElementTree.parse(path).getroot().iter("bndbox"):
        values = [float(box.findtext(tag, "nan")) for tag in ("xmin", "ymin", "xmax", "ymax")]
        if not np.isfinite(values).all():
            raise ValueError(f"{path}: a bndbox without xmin, ymin, xmax and ymax")
        boxes.append([values[0] - 1, values[1] - 1, values[2], values[3]])
    if not boxes:
        raise ValueError(f"{path}: no bndbox")
    return np.asarray(boxes, dtype=np.float64)


@dataclass
class ProtocolSettings:
    """``protocols`` (of ``PROTOCOLS``); maps from ``maps`` (a `camkit explain --save-maps` folder) or computed
    with ``method`` / ``scales`` / ``flip``; ``baseline`` ("center" or "random") replaces them by a
    model-free map; ``background`` a WSSS threshold also reported besides the sweep's best."""

    protocols: Sequence[str]
    maps: Path | None = None
    method: str = "cam"
    scales: Sequence[float] = (1.0,)
    flip: bool = False
    baseline: str | None = None
    background: float | None = None
    seed: int = 0


def check_protocols(names: Sequence[str], baseline: str | None) -> None:
    from camkit.plugin_manager import UnknownNameError

    for name in names:
        if name not in PROTOCOLS:
            raise UnknownNameError.of("protocol", name, PROTOCOLS)
    if baseline is not None and baseline not in BASELINES:
        raise UnknownNameError.of("baseline", baseline, BASELINES)


def saved_map_records(folder: Path, inputs: ImageInputs) -> dict[str, dict[str, Any]]:
    """The records of an explain run in ``folder`` for every image of ``inputs``: an image without a record,
    or a record without a map file, is an error naming how many and the first few."""
    from camkit_plugins.image.explain_run import read_manifest

    records = {record["file"]: record for record in read_manifest(folder)}
    missing = [name for name in inputs.names if name not in records or not records[name].get("map")]
    if missing:
        raise ValueError(f"--maps {folder} does not match the data set: {len(missing)} of {len(inputs)} image(s) have "
                         f"no saved map (e.g. {', '.join(missing[:3])}); write them with camkit explain --save-maps "
                         "on the same inputs")
    return records


def run_protocols(model: Any, config: dict[str, Any], inputs: ImageInputs, truth: GroundTruth,
                  settings: ProtocolSettings, batch_size: int = 16, workers: int = 2, device: Any = "cpu",
                  progress: bool = True, distributed: Any = None) -> dict[str, Any]:
    """The protocols' results (``{"wsss": SegmentationSeeds.result(), "wsol": BoxAccuracy.result(), "pxap":
    PixelAveragePrecision.result()}``, plus ``"unreadable"``) over ``inputs``; see the module docstring.
    ``distributed``: a ``camkit.distributed.Distributed`` to use (default: join the job, leave it after)."""
    import torch
    from tqdm import tqdm

    from camkit.distributed import joined, local_device
    from camkit_plugins.image.explain_files import shard_loader
    from camkit_plugins.metrics.protocols import BoxAccuracy, PixelAveragePrecision, SegmentationSeeds

    check_protocols(settings.protocols, settings.baseline)
    classes = list(config["classes"])
    records = saved_map_records(settings.maps, inputs) if settings.maps is not None else None
    accumulators: dict[str, Any] = {}
    if "wsss" in settings.protocols:
        accumulators["wsss"] = SegmentationSeeds(num_classes=len(classes) + 1)
    if "wsol" in settings.protocols:
        accumulators["wsol"] = BoxAccuracy()
    if "pxap" in settings.protocols:
        accumulators["pxap"] = PixelAveragePrecision()
    device = local_device(device)
    with joined(device, distributed) as distributed:
        loader, positions = shard_loader(inputs, config, batch_size, workers, distributed)
        model = model.to(device)
        bad: list[str] = []
        with tqdm(total=len(positions), desc="protocols", unit="img", position=distributed.rank,
                  disable=not progress) as bar:
            for items in loader:
                good = [item for item in items if "error" not in item]
                bad += [item["error"] for item in items if "error" in item]
                if good:
                    _score_batch(model, config, good, truth, settings, records, accumulators, device)
                bar.update(len(items))
        for accumulator in accumulators.values():  # the states add up: every rank's summed into each
            for key, value in accumulator.state().items():
                setattr(accumulator, key, distributed.sum(torch.from_numpy(value)).numpy())
        bad = [line for part in distributed.gather(bad) for line in part]
    results: dict[str, Any] = {name: acc.result() for name, acc in accumulators.items()}
    if "wsss" in results and settings.background is not None:
        results["wsss_at_background"] = accumulators["wsss"].result(threshold=settings.background)
    results["unreadable"] = bad
    return results


def _score_batch(model: Any, config: dict[str, Any], good: list[dict[str, Any]], truth: GroundTruth,
                 settings: ProtocolSettings, records: dict[str, dict[str, Any]] | None, accumulators: dict[str, Any],
                 device: Any) -> None:
    """One batch: each image's maps of its classes at its own size, added to every accumulator."""
    import numpy as np
    import torch.nn.functional as F

    sizes = [tuple(item["picture"].shape[-2:]) for item in good]
    masks = [truth.mask(item["index"], size) if {"wsss", "pxap"} & set(accumulators) else None
             for item, size in zip(good, sizes)]
    class_ids = [truth.class_ids(item["index"], mask) for item, mask in zip(good, masks)]
    maps = _class_maps(model, config, good, class_ids, settings, records, device)  # per image (K_i, h, w)
    cams = [F.interpolate(m[None].float(), size=size, mode="bilinear", align_corners=False)[0].clamp(0, 1).numpy()
            for m, size in zip(maps, sizes)]
    if "wsss" in accumulators:
        accumulators["wsss"].add(cams, [[c + 1 for c in ids] for ids in class_ids], masks)
    strongest = [cam.max(axis=0) if len(cam) else np.zeros(cam.shape[1:]) for cam in cams]
    for index, (item, score) in enumerate(zip(good, strongest)):
        if "wsol" in accumulators:
            accumulators["wsol"].add(score[None], [truth.box_list(item["index"])])
        if "pxap" in accumulators:
            mask = masks[index]
            accumulators["pxap"].add(score[None], (mask > 0) & (mask != 255), (mask == 255)[None])


def _class_maps(model: Any, config: dict[str, Any], good: list[dict[str, Any]], class_ids: list[list[int]],
                settings: ProtocolSettings, records: dict[str, dict[str, Any]] | None, device: Any) -> list[Any]:
    """Per image a float tensor (K_i, h, w) in [0, 1]: the maps of its classes, read from the saved maps,
    computed (every class at once when the images hold different numbers of classes), or a baseline."""
    import numpy as np
    import torch

    import camkit
    from camkit_plugins.metrics.baselines import baseline_maps

    size = int(config["input_size"])
    if settings.baseline is not None:
        like = torch.zeros(len(good), size, size)
        indices = torch.tensor([item["index"] for item in good])
        maps = baseline_maps(settings.baseline, like, "NHW", indices, settings.seed)
        return [maps[i][None].expand(len(ids), -1, -1) for i, ids in enumerate(class_ids)]
    if records is not None:
        out = []
        for item, ids in zip(good, class_ids):
            record = records[item["path"]]
            saved = record.get("target_ids") or []
            absent = [c for c in ids if c not in saved]
            if absent:
                raise ValueError(f"--maps: {item['path']}'s saved maps explain {record.get('targets')}, not its "
                                 f"class(es) {[config['classes'][c] for c in absent]}: rerun camkit explain with "
                                 "--targets label (or --topk covering them)")
            array = np.load(Path(settings.maps) / record["map"])
            out.append(torch.from_numpy(array[[saved.index(c) for c in ids]].astype(np.float32)))
        return out
    inputs = torch.stack([item["input"].to(device) for item in good])
    single = all(len(ids) == 1 for ids in class_ids)
    targets: Any = torch.tensor([ids[0] for ids in class_ids], device=device) if single else "all"
    extra = [float(s) for s in settings.scales if float(s) != 1.0]
    augment = ({"flips": "W" if settings.flip else "", "scales": extra, "convention": "irn"}
               if extra or settings.flip else None)  # the WSSS papers' multi-scale inference
    result = camkit.explain(model, inputs, settings.method, config.get("layer"), targets, augment=augment)
    maps = result.maps.detach().float().cpu()
    if single:
        return [maps[i][None] for i in range(len(good))]
    return [maps[i, ids] for i, ids in enumerate(class_ids)]


def protocol_table(results: dict[str, Any], classes: Sequence[str]) -> str:
    """Markdown of the protocols' numbers (WSSS with per-class IoU at the best background threshold)."""
    lines = []
    if "wsss" in results:
        wsss = results["wsss"]
        lines.append(f"WSSS pseudo-mask mIoU {wsss['miou']:.2f}% at background {wsss['background']:.2f} (best of the "
                     f"sweep {wsss['thresholds'][0]:.2f}..{wsss['thresholds'][-1]:.2f})")
        if "wsss_at_background" in results:
            fixed = results["wsss_at_background"]
            lines.append(f"WSSS mIoU at --background {fixed['background']:.2f}: {fixed['miou']:.2f}%")
        lines += ["", "| class | IoU |", "|---|---:|"]
        for name, value in zip(["background", *classes], wsss["iou_per_class"]):
            lines.append(f"| {name} | {'n/a' if value != value else f'{value:.2f}%'} |")
        lines.append("")
    if "wsol" in results:
        wsol = results["wsol"]
        per_iou = ", ".join(f"IoU {d:.1f}: {v:.2f}% (tau {wsol['thresholds_per_iou'][d]:.2f})"
                            for d, v in wsol["box_acc_per_iou"].items())
        lines.append(f"WSOL MaxBoxAccV2 {wsol['max_box_acc_v2']:.2f}% ({per_iou}) over {wsol['count']} images")
    if "pxap" in results:
        lines.append(f"PxAP {results['pxap']['pxap']:.2f}%")
    return "\n".join(lines) + "\n"


def jsonable(results: dict[str, Any]) -> Any:
    """The results with numpy arrays as lists and NaN as None (JSON has no NaN)."""
    import math

    import numpy as np

    def convert(value: Any) -> Any:
        if isinstance(value, dict):
            return {str(k): convert(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [convert(v) for v in value]
        if isinstance(value, np.ndarray):
            return convert(value.tolist())
        if isinstance(value, (float, np.floating)):
            return None if math.isnan(float(value)) else float(value)
        if isinstance(value, np.integer):
            return int(value)
        return value

    return convert(results)
