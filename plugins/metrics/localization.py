"""Localization metrics: pointing game, energy-based pointing game, CAM-box protocol."""

from __future__ import annotations

from typing import Any

from camkit_plugins.metrics.base import EvalBatch, Metric, MetricValues, check_options

EMPTY_POLICIES = ("nan", "miss")
"""What a sample with an empty ground truth (nothing to point at) scores: ``"nan"``, left out of the
mean (the metrics' rule); ``"miss"``, 0 (the skeleton evaluation's rule). A map that points nowhere
(no positive site: e.g. every gradient was negative) is a miss under both, so a method cannot raise
its score by returning empty maps on hard samples."""


def pointing_hits(maps: Any, truth: Any, empty: str = "nan") -> Any:
    """``(N,)`` float64: 1 where the first maximum (raster order) of each ``(N, *sites)`` map lies in
    the boolean ground truth ``truth`` (same shape), else 0; 0 for a map with no positive site, and
    NaN (``empty="nan"``) or 0 (``empty="miss"``) for an empty ground truth."""
    import torch

    check_options("empty", empty, EMPTY_POLICIES)
    flat_maps = maps.reshape(maps.shape[0], -1)
    flat_truth = truth.reshape(truth.shape[0], -1)
    hit = flat_truth.gather(1, flat_maps.argmax(dim=1)[:, None])[:, 0].double()
    hit = torch.where(flat_maps.amax(dim=1) > 0, hit, torch.zeros_like(hit))
    return _undefined_where_empty(hit, flat_truth, empty)


def energy_share(maps: Any, truth: Any, empty: str = "nan") -> Any:
    """``(N,)`` share (0..1, in the maps' dtype) of each ``(N, *sites)`` map's positive mass that lies
    in the boolean ground truth ``truth``; 0 for a map with no positive mass, and NaN
    (``empty="nan"``) or 0 (``empty="miss"``) for an empty ground truth."""
    import torch

    check_options("empty", empty, EMPTY_POLICIES)
    mass = maps.reshape(maps.shape[0], -1).clamp_min(0)
    flat_truth = truth.reshape(truth.shape[0], -1)
    total = mass.sum(dim=1)
    share = (mass * flat_truth).sum(dim=1) / torch.where(total > 0, total, torch.ones_like(total))
    return _undefined_where_empty(share, flat_truth, empty)


def _undefined_where_empty(scores: Any, flat_truth: Any, empty: str) -> Any:
    import torch

    if empty == "miss":
        return scores
    return torch.where(flat_truth.any(dim=1), scores, torch.full_like(scores, float("nan")))


class PointingGame(Metric):
    """Hit (100) when the map's maximum falls inside the ground truth, widened by ``tolerance`` sites
    (Euclidean, along the continuous axes only: joints are not neighbours by index). The first
    maximum in raster order is the point; a map with no positive site is a miss; an empty ground
    truth gives NaN (not counted)."""

    name = "pointing_game"
    requires = ("ground_truth",)
    primary = "hit_rate"
    higher_is_better = True

    def __init__(self, tolerance: float = 0.0) -> None:
        if tolerance < 0:
            raise ValueError(f"pointing-game tolerance must be >= 0 sites, got {tolerance}")
        self.tolerance = float(tolerance)

    def evaluate(self, batch: EvalBatch) -> MetricValues:
        truth = batch.ground_truth_mask()
        if self.tolerance > 0:
            truth = dilate(truth, batch.map_letters, self.tolerance)
        return MetricValues({"hit_rate": 100.0 * pointing_hits(batch.flat_maps(), truth, empty="nan")})

    def options(self) -> dict[str, Any]:
        return {"tolerance": self.tolerance}


class EnergyPointingGame(Metric):
    """Share (%) of the positive map's mass inside the ground truth (Score-CAM's energy pointing game).
    A map with no positive mass scores 0; an empty ground truth gives NaN (not counted)."""

    name = "energy_pointing_game"
    requires = ("ground_truth",)
    primary = "energy"
    higher_is_better = True

    def evaluate(self, batch: EvalBatch) -> MetricValues:
        share = energy_share(batch.flat_maps().double(), batch.ground_truth_mask(), empty="nan")
        return MetricValues({"energy": 100.0 * share})


class BoxLocalization(Metric):
    """CAM-box protocol (Zhou et al. 2016): threshold the map (``rule="max_fraction"``: sites >= ``value``
    x max, 0.2 in the paper; ``"percentile"``: the top ``value`` fraction), box the largest connected
    component (``components="all"``: every kept site), compare with the ground-truth box. ``accuracy`` (%):
    right class AND IoU >= ``iou``."""

    name = "box_localization"
    requires = ("box",)
    primary = "accuracy"
    higher_is_better = True

    def __init__(self, rule: str = "max_fraction", value: float = 0.2, iou: float = 0.5,
                 components: str = "largest") -> None:
        check_options("rule", rule, ("max_fraction", "percentile"))
        check_options("components", components, ("largest", "all"))
        if not 0 < value <= 1 or not 0 < iou <= 1:
            raise ValueError(f"box value and iou threshold must be in (0, 1], got {value} and {iou}")
        self.rule, self.value, self.iou, self.components = rule, float(value), float(iou), components

    def evaluate(self, batch: EvalBatch) -> MetricValues:
        import torch

        from camkit_plugins.image.boxes import box_iou, boxes_from_maps

        if batch.map_letters != "NHW":
            raise ValueError(f"box localization needs image maps (axes NHW), got axes {batch.map_letters!r}")
        predicted = boxes_from_maps(batch.maps, rule=self.rule, value=self.value, components=self.components)
        truth = torch.as_tensor(batch.box).long().reshape(-1, 4).cpu()
        iou = box_iou(predicted, truth).double()
        # the CAM protocol: the model's own top-1 must be the label (not the class the map explains,
        # which is the label itself when maps explain the ground truth)
        right_class = batch.top1().cpu() == batch.labels.cpu()
        accuracy = 100.0 * (right_class & (iou >= self.iou)).double()
        return MetricValues({"accuracy": accuracy, "iou": iou, "correct_class": 100.0 * right_class.double()})

    def options(self) -> dict[str, Any]:
        return {"rule": self.rule, "value": self.value, "iou": self.iou, "components": self.components}


def dilate(mask: Any, map_letters: str, radius: float) -> Any:
    """Grow a boolean ``(N, *sites)`` mask by ``radius`` sites along the continuous axes (a ball)."""
    import torch
    import torch.nn.functional as F

    from camkit.layout import CONTINUOUS, axis_kinds

    kinds = axis_kinds()
    cont = [i for i, ch in enumerate(map_letters) if ch != "N" and kinds.get(ch) == CONTINUOUS]
    if not cont:
        return mask
    if len(cont) > 3:
        raise ValueError(f"tolerance works on up to 3 continuous axes, maps have {len(cont)}")
    last = list(range(-len(cont), 0))
    moved = mask.movedim(cont, last)
    spatial = moved.shape[-len(cont):]
    r = int(radius)
    grid = torch.stack(torch.meshgrid(*[torch.arange(-r, r + 1.0)] * len(cont), indexing="ij"), 0)
    ball = ((grid ** 2).sum(0) <= radius ** 2).float()[None, None].to(mask.device)
    conv = (F.conv1d, F.conv2d, F.conv3d)[len(cont) - 1]
    grown = conv(moved.reshape(-1, 1, *spatial).float(), ball, padding=r) > 0
    return grown.reshape(moved.shape).movedim(last, cont)


METRICS = (PointingGame, EnergyPointingGame, BoxLocalization,)
