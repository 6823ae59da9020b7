"""The published data-set protocols for class activation maps, as one-pass accumulators.

- WSOL (Choe et al., "Evaluating Weakly Supervised Object Localization Methods Right", CVPR 2020;
  clovaai/wsolevaluation): **MaxBoxAcc** (V1: largest contour, IoU >= 0.5) and **MaxBoxAccV2** (every
  contour, IoU thresholds 0.3 / 0.5 / 0.7, a sample is right when any of its boxes reaches the IoU with any
  ground-truth box; the mean over the IoU thresholds, each at its own best CAM threshold), and **PxAP**
  (average precision of the pixel scores against masks, ignore regions left out).
- WSSS seeds (Ahn et al., IRN, CVPR 2019): pseudo-masks from the CAMs of the image's ground-truth classes
  (each max-normalised), a constant background score as channel 0, argmax; **mIoU** over the classes from
  the confusion matrix, for every background threshold of a sweep in one pass.

Every accumulator keeps its state as numpy arrays that *add up*: ``state()`` returns them, ``merge(state)``
adds another accumulator's (or another torchrun rank's, after an all-reduce sum), so a data set is one
pass in any number of pieces. ``result()`` reads the protocol's numbers off the state; the threshold is
chosen on a held-out split with ``choose_threshold()`` and applied to the test split with
``result(threshold=...)`` (choosing it on the test set is the trap Choe et al. name).

The ``Metric`` classes at the end (``max_box_acc``, ``max_box_acc_v2``, ``pxap``, ``wsss_miou``) put the
same computations in ``camkit bench``: their per-sample values are curves over the thresholds whose
*mean* carries the data-set value, and ``dataset_values(means)`` reads it off those means (the max of
the mean hit curve; the AP of the mean histograms; the IoU of the mean confusion counts)."""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from camkit_plugins.metrics.base import EvalBatch, Metric, MetricValues, check_options

BOX_CONVENTIONS = ("camkit", "wsolevaluation")
"""``"camkit"``: a site is kept where the map is > tau, regions are 8-connected components, boxes are
``(x0, y0, x1, y1)`` end exclusive and the largest region has the most sites. ``"wsolevaluation"``: the
reference code's arithmetic, for its published numbers: the map is quantised to uint8 and kept where >
``int(tau * max)``, regions are ``cv2.findContours`` (``RETR_TREE``, holes included), the largest has the
largest polygon area, boxes are ``(x, y, x + w, y + h)`` clipped to ``(W - 1, H - 1)``, the IoU adds 1
to every side (inclusive pixel coordinates) and a map with no region gets the box ``(0, 0, 0, 0)``."""


def _numpy(values: Any, dtype: Any = np.float64) -> np.ndarray:
    if hasattr(values, "detach"):
        values = values.detach().cpu()
        values = (values.double() if values.is_floating_point() else values).numpy()
    return np.asarray(values, dtype=dtype)


def _check_maps(maps: Any, name: str = "maps") -> np.ndarray:
    """``(N, H, W)`` float64 maps, finite and in [0, 1] (the protocols threshold normalised maps)."""
    maps = _numpy(maps)
    if maps.ndim == 2:
        maps = maps[None]
    if maps.ndim != 3:
        raise ValueError(f"{name} must be (N, H, W) score maps, got shape {maps.shape}")
    if not np.isfinite(maps).all():
        raise ValueError(f"{name} contain NaN or infinite values")
    if maps.size and (maps.min() < 0 or maps.max() > 1 + 1e-6):
        raise ValueError(f"{name} must be normalised to [0, 1] (got values in [{maps.min():.4g}, {maps.max():.4g}])")
    return maps


# ---------------------------------------------------------------- boxes


def map_boxes(score_map: Any, threshold: float, multi_contour: bool = True, convention: str = "camkit") -> np.ndarray:
    """``(B, 4)`` boxes ``(x0, y0, x1, y1)`` of the regions of one ``(H, W)`` map above ``threshold``.

    ``multi_contour=False`` keeps the largest region only (MaxBoxAcc V1). ``convention``: see
    ``BOX_CONVENTIONS``. With ``"camkit"`` a map with nothing above the threshold has no box (``(0, 4)``)."""
    import cv2

    check_options("convention", convention, BOX_CONVENTIONS)
    score_map = _numpy(score_map)
    height, width = score_map.shape
    if convention == "camkit":
        kept = (score_map > threshold).astype(np.uint8)
        if multi_contour:  # outer contours bound the 8-connected regions (4x faster than labelling them):
            # RETR_CCOMP puts every outer contour, also one inside another region's hole, at the top level
            # (no parent); findContours skips the image's outermost pixels, so they get a zero border first
            padded = cv2.copyMakeBorder(kept, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
            contours, hierarchy = cv2.findContours(padded, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)[-2:]
            outer = [c for c, links in zip(contours, hierarchy[0] if hierarchy is not None else []) if links[3] < 0]
            stats = np.array([cv2.boundingRect(c) for c in outer], dtype=np.int64).reshape(-1, 4)
            stats[:, :2] -= 1
        else:  # the largest region by its number of sites needs the labels
            count, _, stats, _ = cv2.connectedComponentsWithStats(kept, connectivity=8)
            stats = stats[1:]  # label 0 is the background
            stats = stats[[int(np.argmax(stats[:, cv2.CC_STAT_AREA]))]] if count > 1 else stats
        x, y, w, h = (stats[:, i] for i in range(4))
        return np.stack([x, y, x + w, y + h], axis=1).astype(np.int64)
    image = (score_map * 255).astype(np.uint8)
    _, binary = cv2.threshold(image, int(threshold * np.max(image)), 255, cv2.THRESH_BINARY)
    contours = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[-2]
    if len(contours) == 0:
        return np.zeros((1, 4), dtype=np.int64)
    if not multi_contour:
        contours = [max(contours, key=cv2.contourArea)]
    boxes = []
    for contour in contours:
        left, top, span_x, span_y = cv2.boundingRect(contour)
        boxes.append([left, top, min(left + span_x, width - 1), min(top + span_y, height - 1)])
    return np.asarray(boxes, dtype=np.int64)


def box_iou_matrix(boxes: Any, truth: Any, convention: str = "camkit") -> np.ndarray:
    """``(B, G)`` IoU of every box with every ground-truth box (``(x0, y0, x1, y1)``; end exclusive under
    ``"camkit"``, inclusive with +1 under ``"wsolevaluation"``); an empty union gives 0."""
    check_options("convention", convention, BOX_CONVENTIONS)
    a = _numpy(boxes).reshape(-1, 4)[:, None, :]
    b = _numpy(truth).reshape(-1, 4)[None, :, :]
    one = 1.0 if convention == "wsolevaluation" else 0.0
    width = np.maximum(0.0, np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]) + one)
    height = np.maximum(0.0, np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]) + one)
    inter = width * height

    def area(box: np.ndarray) -> np.ndarray:
        return np.maximum(0.0, box[..., 2] - box[..., 0] + one) * np.maximum(0.0, box[..., 3] - box[..., 1] + one)

    union = area(a) + area(b) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def _box_lists(boxes: Any, count: int) -> list[np.ndarray]:
    """Ground-truth boxes per image as a list of ``(K_i, 4)`` arrays, from a list, an ``(N, 4)`` or an
    ``(N, K, 4)`` array (rows with ``x1 <= x0`` or ``y1 <= y0`` are padding and dropped)."""
    if isinstance(boxes, (list, tuple)):
        per_image = [_numpy(b).reshape(-1, 4) for b in boxes]
    else:
        array = _numpy(boxes)
        if array.ndim == 2:
            array = array[:, None, :]
        if array.ndim != 3 or array.shape[-1] != 4:
            raise ValueError(f"boxes must be (N, 4), (N, K, 4) or a list of (K_i, 4), got shape {array.shape}")
        per_image = [b[(b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])] for b in array]
    if len(per_image) != count:
        raise ValueError(f"got ground-truth boxes for {len(per_image)} images and {count} maps")
    return per_image


def box_hits(maps: Any, boxes: Any, thresholds: Any, iou_thresholds: Any,
             multi_contour: bool = True, convention: str = "camkit") -> np.ndarray:
    """``(N, T, D)`` booleans: sample n at CAM threshold ``thresholds[t]`` is right at IoU threshold
    ``iou_thresholds[d]`` (some box of its map reaches IoU >= delta with some ground-truth box).

    ``maps``: ``(N, H, W)`` in [0, 1]; ``boxes``: per image ``(K_i, 4)`` ground-truth boxes (see
    ``_box_lists``), or a list of ``(H_i, W_i)`` maps of different sizes. An image without ground-truth
    boxes is an error (the protocol has no such image)."""
    if isinstance(maps, (list, tuple)):
        truth = _box_lists(boxes, len(maps))
        parts = [box_hits(m, [b], thresholds, iou_thresholds, multi_contour, convention) for m, b in zip(maps, truth)]
        return np.concatenate(parts) if parts else np.zeros((0, len(thresholds), len(iou_thresholds)), dtype=bool)
    maps = _check_maps(maps)
    truth = _box_lists(boxes, len(maps))
    deltas = np.asarray(iou_thresholds, dtype=np.float64)
    hits = np.zeros((len(maps), len(thresholds), len(deltas)), dtype=bool)
    for n, (score_map, gt) in enumerate(zip(maps, truth)):
        if len(gt) == 0:
            raise ValueError(f"image {n} has no ground-truth box")
        for t, tau in enumerate(thresholds):
            predicted = map_boxes(score_map, float(tau), multi_contour, convention)
            best = box_iou_matrix(predicted, gt, convention).max() if len(predicted) else 0.0
            hits[n, t] = best >= deltas
    return hits


def _threshold_index(thresholds: np.ndarray, value: float) -> int:
    index = int(np.argmin(np.abs(thresholds - value)))
    if abs(thresholds[index] - value) > 1e-9:
        raise ValueError(f"threshold {value} is not one of the accumulator's thresholds "
                         f"({thresholds[0]:g} .. {thresholds[-1]:g}, {len(thresholds)} steps)")
    return index


class _Accumulator:
    """State as numpy arrays that add up: ``state()`` / ``merge(state)``."""

    _state_keys: tuple[str, ...] = ()

    def state(self) -> dict[str, np.ndarray]:
        return {key: getattr(self, key).copy() for key in self._state_keys}

    def merge(self, state: Mapping[str, Any]) -> None:
        for key in self._state_keys:
            mine = getattr(self, key)
            other = _numpy(state[key], mine.dtype)
            if other.shape != mine.shape:
                raise ValueError(f"cannot merge state {key!r} of shape {other.shape} into {mine.shape} "
                                 f"(accumulators with different settings)")
            setattr(self, key, mine + other)


class BoxAccuracy(_Accumulator):
    """MaxBoxAcc / MaxBoxAccV2 (Choe et al., CVPR 2020).

    ``thresholds``: CAM thresholds tau (default 0, 0.01, ..., 0.99); ``iou_thresholds``: the deltas
    (V2: 0.3, 0.5, 0.7); ``multi_contour``: every region's box (V2) or the largest region's only (V1:
    ``multi_contour=False, iou_thresholds=(0.5,)``); ``convention``: ``BOX_CONVENTIONS``.
    ``add(maps (N, H, W) in [0, 1] or a list of (H_i, W_i), boxes)`` with boxes per image ``(K_i, 4)`` (a
    list, ``(N, 4)`` or ``(N, K, 4)``) counts the hits at every (tau, delta); state: ``hits (T, D)``,
    ``count (1,)``."""

    _state_keys = ("hits", "count")

    def __init__(self, thresholds: Iterable[float] = np.arange(0, 1, 0.01),
                 iou_thresholds: Iterable[float] = (0.3, 0.5, 0.7), multi_contour: bool = True,
                 convention: str = "camkit") -> None:
        check_options("convention", convention, BOX_CONVENTIONS)
        self.thresholds = np.asarray(list(thresholds), dtype=np.float64)
        self.iou_thresholds = np.asarray(list(iou_thresholds), dtype=np.float64)
        if self.thresholds.size == 0 or self.iou_thresholds.size == 0:
            raise ValueError("BoxAccuracy needs at least one CAM threshold and one IoU threshold")
        if not ((self.iou_thresholds > 0) & (self.iou_thresholds <= 1)).all():
            raise ValueError(f"IoU thresholds must be in (0, 1], got {self.iou_thresholds.tolist()}")
        self.multi_contour, self.convention = bool(multi_contour), convention
        self.hits = np.zeros((len(self.thresholds), len(self.iou_thresholds)), dtype=np.int64)
        self.count = np.zeros(1, dtype=np.int64)

    def add(self, maps: Any, boxes: Any) -> np.ndarray:
        """Count one batch; returns its per-sample hits ``(N, T, D)``."""
        hits = box_hits(maps, boxes, self.thresholds, self.iou_thresholds, self.multi_contour, self.convention)
        self.hits += hits.sum(axis=0)
        self.count += len(hits)
        return hits

    def curve(self) -> np.ndarray:
        """``(T, D)`` box accuracy (%) at every CAM threshold and IoU threshold."""
        if self.count[0] == 0:
            raise ValueError("BoxAccuracy has seen no image")
        return 100.0 * self.hits / float(self.count[0])

    def choose_threshold(self) -> np.ndarray:
        """``(D,)`` the best CAM threshold per IoU threshold (the first of equals): choose on a held-out
        split, pass to the test split's ``result(threshold=...)``."""
        return self.thresholds[np.argmax(self.curve(), axis=0)]

    def result(self, threshold: float | Sequence[float] | None = None) -> dict[str, Any]:
        """The protocol's numbers. ``threshold=None``: each IoU threshold at its best CAM threshold (the
        published MaxBoxAcc); a float or one per IoU threshold: the accuracy at those (chosen elsewhere).

        Keys: ``max_box_acc_v2`` (``multi_contour``) or ``max_box_acc`` (largest region) and ``box_acc``
        (the same number: the mean over IoU thresholds, %), ``box_acc_per_iou`` and ``thresholds_per_iou``
        (dicts keyed by the IoU threshold), ``curve (T, D)``, ``thresholds``, ``iou_thresholds``, ``count``."""
        curve = self.curve()
        if threshold is None:
            index = np.argmax(curve, axis=0)
        else:
            wanted = np.broadcast_to(np.asarray(threshold, dtype=np.float64), self.iou_thresholds.shape)
            index = np.array([_threshold_index(self.thresholds, float(v)) for v in wanted])
        per_iou = curve[index, np.arange(len(self.iou_thresholds))]
        value = float(per_iou.mean())
        return {
            ("max_box_acc_v2" if self.multi_contour else "max_box_acc"): value, "box_acc": value,
            "box_acc_per_iou": {float(d): float(v) for d, v in zip(self.iou_thresholds, per_iou)},
            "thresholds_per_iou": {float(d): float(self.thresholds[i]) for d, i in zip(self.iou_thresholds, index)},
            "curve": curve, "thresholds": self.thresholds.copy(), "iou_thresholds": self.iou_thresholds.copy(),
            "count": int(self.count[0]),
        }


# ---------------------------------------------------------------- PxAP


def pxap_edges(bins: int = 1000) -> np.ndarray:
    """Histogram edges ``[0, 1/bins, ..., 1 - 1/bins, 1, 2, 3]`` (wsolevaluation's, so scores of exactly 1
    have a bin of their own)."""
    edges = np.append(np.arange(0, 1, 1.0 / bins), [1.0, 2.0, 3.0])
    if len(edges) != bins + 3:  # float steps can add a point: fall back to exact fractions
        edges = np.append(np.arange(bins) / bins, [1.0, 2.0, 3.0])
    return edges


def pixel_histograms(maps: Any, masks: Any, ignore: Any = None, bins: int = 1000) -> np.ndarray:
    """``(N, 2, bins + 2)`` counts of each map's scores over the ground-truth pixels (row 0) and the other
    pixels (row 1), ``ignore`` pixels left out; bins as ``pxap_edges`` (``np.histogram``'s rule). Lists of
    per-image ``(H_i, W_i)`` arrays are taken too (images of different sizes)."""
    if isinstance(maps, (list, tuple)):
        ignores = [None] * len(maps) if ignore is None else list(ignore)
        if not (len(maps) == len(masks) == len(ignores)):
            raise ValueError(f"got {len(maps)} maps, {len(masks)} masks and {len(ignores)} ignore regions")
        parts = [pixel_histograms(m, k, i, bins) for m, k, i in zip(maps, masks, ignores)]
        return np.concatenate(parts) if parts else np.zeros((0, 2, bins + 2))
    maps = _check_maps(maps)
    masks = _numpy(masks, bool)
    if masks.size != maps.size:
        raise ValueError(f"masks of shape {masks.shape} do not match maps of shape {maps.shape}")
    masks = masks.reshape(maps.shape)
    keep = np.ones_like(masks)
    if ignore is not None:
        ignore = _numpy(ignore, bool)
        if ignore.size != maps.size:
            raise ValueError(f"ignore of shape {ignore.shape} does not match maps of shape {maps.shape}")
        keep = ~ignore.reshape(maps.shape)
    edges = pxap_edges(bins)
    nbins = len(edges) - 1
    index = np.clip(np.searchsorted(edges, maps, side="right") - 1, 0, nbins - 1)
    rows = np.arange(len(maps))[:, None, None] * 2 + (~masks).astype(np.int64)
    flat = (rows * nbins + index)[keep]
    return np.bincount(flat, minlength=len(maps) * 2 * nbins).reshape(len(maps), 2, nbins).astype(np.float64)


def pxap_from_histograms(positive: np.ndarray, negative: np.ndarray) -> dict[str, Any]:
    """PxAP (%) and the precision / recall curves (thresholds from high to low) from score histograms:
    ``sum_k precision_k (recall_k - recall_{k-1})`` as wsolevaluation computes it; a threshold that keeps
    no pixel adds nothing (its recall step is 0). NaN without positive pixels."""
    tp = np.cumsum(positive[::-1])
    fp = np.cumsum(negative[::-1])
    total = tp[-1] if len(tp) else 0.0
    kept = tp + fp
    precision = np.where(kept > 0, tp / np.where(kept > 0, kept, 1.0), np.nan)
    if total <= 0:
        return {"pxap": float("nan"), "precision": precision, "recall": np.full_like(tp, np.nan)}
    recall = tp / total
    step = np.diff(recall)
    ap = float(np.sum(np.where(step > 0, np.nan_to_num(precision[1:]) * step, 0.0)))
    return {"pxap": 100.0 * ap, "precision": precision, "recall": recall}


class PixelAveragePrecision(_Accumulator):
    """PxAP (Choe et al., CVPR 2020): average precision of the pixel scores against ground-truth masks.

    ``bins``: score histogram resolution (1000, wsolevaluation's ``cam_curve_interval=0.001``).
    ``add(maps (N, H, W) in [0, 1], masks (N, H, W) bool, ignore=None (N, H, W) bool)``; state:
    ``positive`` and ``negative`` histograms ``(bins + 2,)``. ``result()``: ``pxap`` (%), ``precision`` and
    ``recall`` (thresholds from high to low), ``thresholds`` (the bins' lower edges, high to low)."""

    _state_keys = ("positive", "negative")

    def __init__(self, bins: int = 1000) -> None:
        if int(bins) < 1:
            raise ValueError(f"PxAP needs at least one bin, got {bins}")
        self.bins = int(bins)
        self.positive = np.zeros(self.bins + 2, dtype=np.float64)
        self.negative = np.zeros(self.bins + 2, dtype=np.float64)

    def add(self, maps: Any, masks: Any, ignore: Any = None) -> np.ndarray:
        """Count one batch; returns its per-sample histograms ``(N, 2, bins + 2)``."""
        histograms = pixel_histograms(maps, masks, ignore, self.bins)
        self.positive += histograms[:, 0].sum(axis=0)
        self.negative += histograms[:, 1].sum(axis=0)
        return histograms

    def result(self) -> dict[str, Any]:
        out = pxap_from_histograms(self.positive, self.negative)
        out["thresholds"] = pxap_edges(self.bins)[:-1][::-1].copy()
        return out


# ---------------------------------------------------------------- WSSS seeds


def _per_image_cams(cams: Any, class_ids: Sequence[Sequence[int]], num_classes: int | None) -> list[np.ndarray]:
    """Per image ``(len(ids), H, W)`` CAMs aligned with its class ids. A 4-D ``(N, C, H, W)`` array holds
    every foreground class (channel ``c - 1`` for class ``c``); a list holds each image's listed classes."""
    if isinstance(cams, (list, tuple)):
        per_image = [_numpy(c) for c in cams]
        for n, (cam, listed) in enumerate(zip(per_image, class_ids)):
            if cam.ndim != 3 or cam.shape[0] != len(listed):
                raise ValueError(f"image {n}: CAMs of shape {cam.shape} for {len(listed)} classes; expected "
                                 f"({len(listed)}, H, W)")
    else:
        array = _numpy(cams)
        if array.ndim != 4:
            raise ValueError(f"CAMs must be (N, C, H, W) or a list of (K_i, H, W), got shape {array.shape}")
        if num_classes is not None and array.shape[1] != num_classes - 1:
            raise ValueError(f"(N, C, H, W) CAMs hold the {num_classes - 1} foreground classes (channel c - 1 for "
                             f"class c), got C = {array.shape[1]}")
        per_image = []
        for n, listed in enumerate(class_ids):
            ids = np.asarray(listed, dtype=np.int64)
            if ids.size and (ids.min() < 1 or ids.max() > array.shape[1]):
                raise ValueError(f"image {n}: class ids {ids.tolist()} outside 1..{array.shape[1]}")
            per_image.append(array[n, ids - 1])
    if len(per_image) != len(class_ids):
        raise ValueError(f"got CAMs for {len(per_image)} images and class ids for {len(class_ids)}")
    return per_image


def _foreground(cam: np.ndarray, listed: Any) -> tuple[np.ndarray, np.ndarray]:
    """The strongest max-normalised foreground score per pixel and its class id (0 where no class)."""
    ids = np.asarray(listed, dtype=np.int64)
    if not np.isfinite(cam).all():
        raise ValueError("CAMs contain NaN or infinite values")
    if ids.size == 0:
        return np.zeros(cam.shape[1:]), np.zeros(cam.shape[1:], dtype=np.int64)
    cam = np.maximum(cam, 0.0)
    peak = cam.reshape(len(cam), -1).max(axis=1)[:, None, None]
    cam = cam / np.where(peak > 0, peak, 1.0)
    strongest = cam.argmax(axis=0)
    return np.take_along_axis(cam, strongest[None], 0)[0], ids[strongest]


def pseudo_masks(cams: Any, class_ids: Sequence[Sequence[int]], background: float,
                 num_classes: int | None = None) -> Any:
    """IRN's pseudo-masks: per image, its ground-truth classes' CAMs (ReLU, each divided by its maximum),
    a constant ``background`` score as channel 0, argmax (ties go to the background, then to the first
    listed class); class ids are segmentation labels (1 .. num_classes - 1, 0 = background).

    ``cams``: ``(N, C, H, W)`` with every foreground class (channel ``c - 1`` for class ``c``) or a list of
    per-image ``(len(class_ids[n]), H, W)``. Returns ``(N, H, W)`` int64 for an array, a list for a list."""
    masks = []
    for cam, ids in zip(_per_image_cams(cams, class_ids, num_classes), class_ids):
        score, label = _foreground(cam, ids)
        masks.append(np.where(score > background, label, 0))
    return masks if isinstance(cams, (list, tuple)) else np.stack(masks) if masks else np.zeros((0, 0, 0), np.int64)


class SegmentationSeeds(_Accumulator):
    """WSSS seed mIoU (IRN, Ahn et al. CVPR 2019; PASCAL VOC's convention): confusion matrices of the
    pseudo-masks (``pseudo_masks``) against ground-truth masks, for every background threshold in one pass.

    ``num_classes``: classes including the background (21 for VOC); ``background_thresholds``: one float
    (IRN 0.15) or a sweep (default 0.00 .. 0.59, SEAM's); ``ignore_index``: ground-truth label left out
    (255, VOC's boundaries). ``add(cams, class_ids, masks)``: ``cams`` as ``pseudo_masks``, ``class_ids`` per
    image (its ground-truth foreground classes), ``masks`` ``(N, H, W)`` or a list of ``(H, W)`` integer
    labels. State: ``confusion (T, K, K)`` (rows ground truth, columns prediction)."""

    _state_keys = ("confusion",)

    def __init__(self, num_classes: int = 21, background_thresholds: float | Iterable[float] = np.arange(0, 0.6, 0.01),
                 ignore_index: int = 255) -> None:
        if int(num_classes) < 2:
            raise ValueError(f"num_classes counts the background too: at least 2, got {num_classes}")
        thresholds = np.atleast_1d(np.asarray(background_thresholds, dtype=np.float64))
        if thresholds.size == 0 or (np.diff(thresholds) <= 0).any():
            raise ValueError("background thresholds must be one value or a strictly increasing sweep")
        self.num_classes, self.thresholds, self.ignore_index = int(num_classes), thresholds, int(ignore_index)
        self.confusion = np.zeros((len(thresholds), self.num_classes, self.num_classes), dtype=np.int64)

    def add(self, cams: Any, class_ids: Sequence[Sequence[int]], masks: Any) -> np.ndarray:
        """Count one batch; returns its per-image confusion ``(N, T, K, K)`` (small batches: K^2 T each)."""
        per_image = _per_image_cams(cams, class_ids, self.num_classes)
        masks = list(masks) if isinstance(masks, (list, tuple)) else list(_numpy(masks, np.int64))
        if len(masks) != len(per_image):
            raise ValueError(f"got {len(masks)} ground-truth masks for {len(per_image)} images")
        out = np.zeros((len(per_image), *self.confusion.shape), dtype=np.int64)
        for n, (cam, listed, labels) in enumerate(zip(per_image, class_ids, masks)):
            truth = _numpy(labels, np.int64)
            if truth.shape != cam.shape[1:]:
                raise ValueError(f"image {n}: ground-truth mask of shape {truth.shape} does not match its CAMs "
                                 f"{cam.shape[1:]}")
            ids = np.asarray(listed, dtype=np.int64)
            if ids.size and (ids.min() < 1 or ids.max() >= self.num_classes):
                raise ValueError(f"image {n}: class ids {ids.tolist()} outside 1..{self.num_classes - 1}")
            out[n] = self._confusions(*_foreground(cam, ids), truth, n)
        self.confusion += out.sum(axis=0)
        return out

    def _confusions(self, score: np.ndarray, label: np.ndarray, truth: np.ndarray, n: int) -> np.ndarray:
        k, steps = self.num_classes, len(self.thresholds)
        keep = truth != self.ignore_index
        truth, label, score = truth[keep], label[keep], score[keep]
        if truth.size and (truth.min() < 0 or truth.max() >= k):
            raise ValueError(f"image {n}: ground-truth labels outside 0..{k - 1} (and ignore {self.ignore_index})")
        # a pixel is foreground at threshold t exactly when its score is above thresholds[t]: with `above`
        # thresholds below its score it is foreground for t < above, so one histogram covers the sweep
        above = np.searchsorted(self.thresholds, score, side="left")
        counts = np.bincount((truth * k + label) * (steps + 1) + above, minlength=k * k * (steps + 1))
        counts = counts.reshape(k, k, steps + 1)
        foreground = np.cumsum(counts[..., ::-1], axis=-1)[..., ::-1][..., 1:]  # (K, K, T): above > t
        confusion = np.moveaxis(foreground, -1, 0).copy()  # (T, K, K)
        confusion[:, :, 0] += (counts.sum(axis=-1)[None] - confusion).sum(axis=2)  # the rest: background
        return confusion

    def iou(self) -> np.ndarray:
        """``(T, K)`` IoU per threshold and class; NaN for a class absent from both truth and prediction."""
        diagonal = np.diagonal(self.confusion, axis1=1, axis2=2).astype(np.float64)
        union = self.confusion.sum(axis=2) + self.confusion.sum(axis=1) - diagonal
        return np.where(union > 0, diagonal / np.where(union > 0, union, 1), np.nan)

    def choose_threshold(self) -> float:
        """The background threshold with the best mIoU (choose on a held-out split)."""
        return float(self.thresholds[int(np.nanargmax(self._miou()))])

    def _miou(self) -> np.ndarray:
        iou = self.iou()
        if self.confusion.sum() == 0:
            raise ValueError("SegmentationSeeds has seen no labelled pixel")
        return 100.0 * np.nanmean(iou, axis=1)

    def result(self, threshold: float | None = None) -> dict[str, Any]:
        """``miou`` (%) at the best background threshold (``threshold=None``; the sweep's maximum) or at
        ``threshold``; ``background`` (that threshold), ``iou_per_class`` (%), ``miou_curve`` and
        ``thresholds``; mIoU is the mean over classes present in the truth or the prediction (IRN's nanmean)."""
        curve = self._miou()
        index = int(np.nanargmax(curve)) if threshold is None else _threshold_index(self.thresholds, threshold)
        return {"miou": float(curve[index]), "background": float(self.thresholds[index]),
                "iou_per_class": 100.0 * self.iou()[index], "miou_curve": curve, "thresholds": self.thresholds.copy()}


# ---------------------------------------------------------------- the protocols as bench metrics


def _percent_label(value: float) -> str:
    return f"{round(100 * value):d}"


class MaxBoxAccV2(Metric):
    """MaxBoxAccV2 (Choe et al., CVPR 2020) in the bench: boxes of every region of the map above each CAM
    threshold tau (0, ``cam_curve_interval``, ..., < 1); a sample is right at IoU threshold delta when one
    of its boxes reaches IoU >= delta with the ground-truth box (``batch.box``, ``(N, 4)`` or ``(N, K, 4)``
    end exclusive). No forward pass; maps ``(N, H, W)`` in [0, 1] of the ground-truth class.

    Parameters (wsolevaluation's names): ``cam_curve_interval=0.01``; ``iou_threshold_list=(30, 50, 70)``
    (percent); ``multi_contour_eval=True``; ``cam_threshold=None`` (a tau chosen on a held-out split);
    ``convention`` (``BOX_CONVENTIONS``, ``"camkit"``).

    Values: ``hits_iou<delta>`` curves ``(N, T)`` (100 = right) and their mean over deltas
    ``box_acc_curve``; the primary ``box_acc`` ``(N,)`` is the sample's hit (mean over deltas) at
    ``cam_threshold``, or without one its mean over every tau (a threshold-free summary that selects
    nothing on the evaluated set). The published number is not a mean of per-sample numbers (tau is the
    best for the whole set): ``dataset_values(means)`` reads it off the mean curves (max over tau per
    delta, mean over deltas), which the bench's sums and torchrun's all-reduce give exactly."""

    name = "max_box_acc_v2"
    family = "protocol"
    requires = ("box",)
    primary = "box_acc"
    higher_is_better = True
    _defaults: dict[str, Any] = {"iou_threshold_list": (30, 50, 70), "multi_contour_eval": True}

    def __init__(self, cam_curve_interval: float = 0.01, iou_threshold_list: Sequence[int] | None = None,
                 multi_contour_eval: bool | None = None, cam_threshold: float | None = None,
                 convention: str = "camkit") -> None:
        if not 0 < cam_curve_interval < 1:
            raise ValueError(f"cam_curve_interval must be in (0, 1), got {cam_curve_interval}")
        ious = self._defaults["iou_threshold_list"] if iou_threshold_list is None else iou_threshold_list
        multi = self._defaults["multi_contour_eval"] if multi_contour_eval is None else multi_contour_eval
        self.cam_curve_interval, self.iou_threshold_list = float(cam_curve_interval), tuple(int(v) for v in ious)
        self.accumulator = BoxAccuracy(np.arange(0, 1, self.cam_curve_interval),
                                       [v / 100.0 for v in self.iou_threshold_list], bool(multi), convention)
        self.multi_contour_eval, self.convention = bool(multi), convention
        self.cam_threshold = None if cam_threshold is None else float(cam_threshold)
        self._tau_index = (None if cam_threshold is None
                           else _threshold_index(self.accumulator.thresholds, float(cam_threshold)))

    def evaluate(self, batch: EvalBatch) -> MetricValues:
        import torch

        if batch.map_letters != "NHW":
            raise ValueError(f"{self.name} needs image maps (axes NHW), got axes {batch.map_letters!r}")
        if batch.box is None:
            raise ValueError(f"{self.name} needs ground-truth boxes ('box' in the data set items)")
        acc = self.accumulator
        hits = 100.0 * box_hits(batch.maps, batch.box, acc.thresholds, acc.iou_thresholds, acc.multi_contour,
                                acc.convention)
        taus = [f"{tau:.3g}" for tau in acc.thresholds]
        values = {f"hits_iou{v}": torch.from_numpy(hits[:, :, d]) for d, v in enumerate(self.iou_threshold_list)}
        mean = hits.mean(axis=2)
        values["box_acc_curve"] = torch.from_numpy(mean)
        values["box_acc"] = torch.from_numpy(mean.mean(axis=1) if self._tau_index is None else mean[:, self._tau_index])
        labels = {name: taus for name, value in values.items() if value.ndim == 2}
        return MetricValues(values, labels)

    def dataset_values(self, means: Mapping[str, Any]) -> dict[str, Any]:
        """The published numbers from the mean curves: per delta the max over tau and its tau, the mean."""
        taus = self.accumulator.thresholds
        out: dict[str, Any] = {}
        best = []
        for v in self.iou_threshold_list:
            curve = np.asarray(means[f"hits_iou{v}"], dtype=np.float64)
            index = int(np.argmax(curve)) if self._tau_index is None else self._tau_index
            out[f"box_acc_iou{v}"], out[f"tau_iou{v}"] = float(curve[index]), float(taus[index])
            best.append(curve[index])
        out[self.name] = float(np.mean(best))
        return out

    def options(self) -> dict[str, Any]:
        return {"cam_curve_interval": self.cam_curve_interval, "iou_threshold_list": list(self.iou_threshold_list),
                "multi_contour_eval": self.multi_contour_eval, "cam_threshold": self.cam_threshold,
                "convention": self.convention}


class MaxBoxAcc(MaxBoxAccV2):
    """MaxBoxAcc (V1; Choe et al., CVPR 2020): ``MaxBoxAccV2`` with the largest region only
    (``multi_contour_eval=False``) and IoU >= 0.5 (``iou_threshold_list=(50,)``)."""

    name = "max_box_acc"
    _defaults: dict[str, Any] = {"iou_threshold_list": (50,), "multi_contour_eval": False}


class PixelAP(Metric):
    """PxAP (Choe et al., CVPR 2020) in the bench: average precision of the pixel (site) scores against the
    ground-truth mask (``batch.mask``, else the box's). Any map layout; no forward pass.

    ``cam_curve_interval=0.001`` (wsolevaluation's name: 1000 score bins). Values: ``positive_histogram``
    and ``negative_histogram`` ``(N, bins + 2)``, each sample's score counts inside / outside the mask
    (their means give the data-set PxAP exactly: ``dataset_values``); ``ap`` ``(N,)``: the sample's own AP
    (%; NaN for an empty mask), whose mean is the mean per-image AP, not PxAP."""

    name = "pxap"
    family = "protocol"
    requires = ("ground_truth",)
    primary = "ap"
    higher_is_better = True

    def __init__(self, cam_curve_interval: float = 0.001) -> None:
        if not 0 < cam_curve_interval < 1:
            raise ValueError(f"cam_curve_interval must be in (0, 1), got {cam_curve_interval}")
        self.cam_curve_interval = float(cam_curve_interval)
        self.bins = int(round(1.0 / self.cam_curve_interval))

    def evaluate(self, batch: EvalBatch) -> MetricValues:
        import torch

        n = batch.maps.shape[0]
        maps = batch.maps.reshape(n, 1, -1)
        histograms = pixel_histograms(maps, batch.ground_truth_mask().reshape(n, 1, -1), None, self.bins)
        ap = [pxap_from_histograms(h[0], h[1])["pxap"] for h in histograms]
        labels = [f"{edge:.4g}" for edge in pxap_edges(self.bins)[:-1]]
        return MetricValues({"ap": torch.tensor(ap, dtype=torch.float64),
                             "positive_histogram": torch.from_numpy(histograms[:, 0]),
                             "negative_histogram": torch.from_numpy(histograms[:, 1])},
                            {"positive_histogram": labels, "negative_histogram": labels})

    def dataset_values(self, means: Mapping[str, Any]) -> dict[str, Any]:
        """PxAP (%) of the mean histograms (equal to that of the summed ones)."""
        result = pxap_from_histograms(np.asarray(means["positive_histogram"], dtype=np.float64),
                                      np.asarray(means["negative_histogram"], dtype=np.float64))
        return {"pxap": result["pxap"]}

    def options(self) -> dict[str, Any]:
        return {"cam_curve_interval": self.cam_curve_interval}


class WSSSMeanIoU(Metric):
    """WSSS seed mIoU (IRN's protocol) in the bench, two classes (the explained class vs background): the
    map (ReLU, divided by its maximum) against a constant ``background`` score; a site is the class where
    the map is above it. Compared with the ground-truth mask (``batch.mask``, else the box's); any layout;
    no forward pass. VOC's per-class mIoU over data sets with several classes per image is
    ``SegmentationSeeds`` (``camkit eval image``).

    Parameters: ``background=0.15`` (IRN's; the primary's threshold); ``background_thresholds`` (the sweep
    for the curves, default 0.00 .. 0.59). Values: ``miou`` ``(N,)`` the sample's mean of foreground and
    background IoU (%) at ``background``; curves ``(N, T)`` ``true_positive``, ``false_positive``,
    ``false_negative``, ``true_negative`` (fractions of the sample's sites) whose means give the data-set
    IoUs exactly (``dataset_values``: mIoU per threshold, the best, and at ``background``)."""

    name = "wsss_miou"
    family = "protocol"
    requires = ("ground_truth",)
    primary = "miou"
    higher_is_better = True

    def __init__(self, background: float = 0.15,
                 background_thresholds: Iterable[float] = np.arange(0, 0.6, 0.01)) -> None:
        sweep = np.asarray(list(background_thresholds), dtype=np.float64)
        self.background = float(background)
        self.thresholds = np.unique(np.append(sweep, self.background))
        self._index = _threshold_index(self.thresholds, self.background)

    def evaluate(self, batch: EvalBatch) -> MetricValues:
        import torch

        n = batch.maps.shape[0]
        seeds = SegmentationSeeds(2, self.thresholds, ignore_index=-1)
        truth = batch.ground_truth_mask().reshape(n, 1, -1).long()
        confusion = seeds.add(batch.maps.reshape(n, 1, 1, -1), [[1]] * n, truth).astype(np.float64)
        confusion /= np.maximum(confusion[:, 0].sum(axis=(1, 2)), 1)[:, None, None, None]
        parts = {"true_positive": confusion[..., 1, 1], "false_positive": confusion[..., 0, 1],
                 "false_negative": confusion[..., 1, 0], "true_negative": confusion[..., 0, 0]}
        miou = _two_class_miou(parts)[:, self._index]
        labels = [f"{tau:.3g}" for tau in self.thresholds]
        values = {"miou": torch.from_numpy(miou), **{k: torch.from_numpy(v) for k, v in parts.items()}}
        return MetricValues(values, {k: labels for k in parts})

    def dataset_values(self, means: Mapping[str, Any]) -> dict[str, Any]:
        parts = {k: np.asarray(means[k], dtype=np.float64)[None] for k in
                 ("true_positive", "false_positive", "false_negative", "true_negative")}
        curve = _two_class_miou(parts)[0]
        best = int(np.nanargmax(curve))
        return {"wsss_miou": float(curve[self._index]), "best_miou": float(curve[best]),
                "best_background": float(self.thresholds[best]), "miou_curve": curve.tolist()}

    def options(self) -> dict[str, Any]:
        return {"background": self.background, "background_thresholds": self.thresholds.tolist()}


def _two_class_miou(parts: Mapping[str, np.ndarray]) -> np.ndarray:
    """Mean of the foreground and background IoU (%), NaN classes (empty union) left out."""
    tp, fp, fn, tn = (parts[k] for k in ("true_positive", "false_positive", "false_negative", "true_negative"))
    import warnings

    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a sample without sites: NaN, said in the docstring
        foreground = np.where(tp + fp + fn > 0, tp / (tp + fp + fn), np.nan)
        background = np.where(tn + fp + fn > 0, tn / (tn + fp + fn), np.nan)
        return 100.0 * np.nanmean(np.stack([foreground, background]), axis=0)


METRICS = (MaxBoxAcc, MaxBoxAccV2, PixelAP, WSSSMeanIoU)
