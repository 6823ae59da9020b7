"""Bounding boxes from class activation maps, and their IoU with ground truth.

The CAM paper's protocol: keep the sites whose value is at least 20% of the map's maximum, take the
largest connected component (8-connectivity), box it. Boxes are ``(x0, y0, x1, y1)`` in map pixels,
end exclusive. A map with nothing kept (all zeros) gets the empty box ``(0, 0, 0, 0)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from camkit.plugin_manager import UnknownNameError

RULES = ("max_fraction", "percentile")
COMPONENTS = ("largest", "all")


def _as_numpy_maps(maps: Any) -> np.ndarray:
    if hasattr(maps, "detach"):
        maps = maps.detach().float().cpu().numpy()
    maps = np.asarray(maps, dtype=np.float64)
    if maps.ndim != 3:
        raise ValueError(f"boxes_from_maps expects maps of shape (N, H, W), got {tuple(maps.shape)}")
    if not np.isfinite(maps).all():
        raise ValueError("boxes_from_maps: maps contain NaN or infinite values")
    return maps


def threshold_maps(maps: Any, rule: str = "max_fraction", value: float = 0.2) -> np.ndarray:
    """Boolean masks (N, H, W) of the kept sites before the connected-component step.

    ``max_fraction``: sites >= value * max (positive maxima only); ``percentile``: the top
    ``value`` fraction of sites (at least one; sites tied with the cut-off are kept too), positive
    sites only, so the zeros of a normalised map never widen the box and an all-zero map has none."""
    maps = _as_numpy_maps(maps)
    if rule not in RULES:
        raise UnknownNameError.of("box rule", rule, RULES)
    if not 0.0 < value <= 1.0:
        raise ValueError(f"box rule {rule!r} needs 0 < value <= 1, got {value}")
    flat = maps.reshape(len(maps), -1)
    if rule == "max_fraction":
        peak = flat.max(axis=1, keepdims=True)
        kept = (flat >= value * peak) & (peak > 0)
    else:
        count = max(1, int(round(value * flat.shape[1])))
        cut = -np.sort(-flat, axis=1)[:, count - 1 : count]
        kept = (flat >= cut) & (flat > 0)
    return kept.reshape(maps.shape)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of a 2-D boolean mask (ties: the first in raster order)."""
    from scipy import ndimage

    labels, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if count == 0:
        return np.zeros_like(mask, dtype=bool)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    return labels == (int(np.argmax(sizes)) + 1)


def boxes_from_maps(maps: Any, rule: str = "max_fraction", value: float = 0.2, components: str = "largest") -> Any:
    """``torch.LongTensor (N, 4)`` of ``(x0, y0, x1, y1)`` boxes (end exclusive) for maps ``(N, H, W)``.

    ``rule="max_fraction"`` keeps sites >= ``value`` x the map's maximum (the CAM paper, 0.2);
    ``rule="percentile"`` keeps the top ``value`` fraction of sites (positive ones only). Then
    ``components="largest"`` boxes the largest connected component (the CAM paper), ``"all"`` every kept
    site (one object per picture whose evidence is split into fragments, e.g. the corners of a shape).
    Maps may be torch tensors (any device) or numpy arrays."""
    import torch

    if components not in COMPONENTS:
        raise UnknownNameError.of("components rule", components, COMPONENTS)
    kept = threshold_maps(maps, rule, value)
    boxes = np.zeros((len(kept), 4), dtype=np.int64)
    for index, mask in enumerate(kept):  # connected components are inherently per image
        component = largest_component(mask) if components == "largest" else mask
        rows = np.flatnonzero(component.any(axis=1))
        cols = np.flatnonzero(component.any(axis=0))
        if rows.size:
            boxes[index] = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
    return torch.from_numpy(boxes)


def box_iou(a: Any, b: Any) -> Any:
    """``torch.FloatTensor (N,)``: intersection over union of matching rows of two (N, 4) box sets.

    Boxes are end exclusive; two empty boxes have IoU 0."""
    import torch

    def as_boxes(boxes: Any) -> Any:
        boxes = boxes.detach().cpu() if torch.is_tensor(boxes) else boxes
        return torch.as_tensor(boxes, dtype=torch.float64).reshape(-1, 4)

    a, b = as_boxes(a), as_boxes(b)
    if a.shape != b.shape:
        raise ValueError(f"box_iou needs two box sets of the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    width = (torch.minimum(a[:, 2], b[:, 2]) - torch.maximum(a[:, 0], b[:, 0])).clamp_min(0)
    height = (torch.minimum(a[:, 3], b[:, 3]) - torch.maximum(a[:, 1], b[:, 1])).clamp_min(0)
    inter = width * height
    area_a = (a[:, 2] - a[:, 0]).clamp_min(0) * (a[:, 3] - a[:, 1]).clamp_min(0)
    area_b = (b[:, 2] - b[:, 0]).clamp_min(0) * (b[:, 3] - b[:, 1]).clamp_min(0)
    union = area_a + area_b - inter
    iou = torch.where(union > 0, inter / union.clamp_min(1e-12), torch.zeros_like(union))
    return iou.float()
