"""Localisation metrics: Quantus 0.6's seven (``pointing_game``, ``top_k_intersection``,
``relevance_mass_accuracy``, ``relevance_rank_accuracy``, ``attribution_localisation``, ``auc``, ``focus``)
plus the CAM paper's box protocol (``box_localization``). ``energy_pointing_game`` is
``relevance_mass_accuracy`` under its Score-CAM name.

Each takes Quantus's parameter names and defaults (``abs``, ``normalise``, ...) and compares the map with
the batch's ground truth (``batch.mask``, else its boxes), on any layout: a *feature* is one map site
(``features="site"``, the default) or, as in Quantus when attributions have the input's shape, one element
of the input the map is broadcast onto (``features="element"``). Where Quantus 0.6 has a fault the
paper's definition is the default and ``convention="quantus"`` reproduces Quantus's numbers.

Ties are never broken by index: a score that depends on "the top k features" counts tied features by
their share (the expected value over every order of the ties), so a flat map is never rewarded for where
its first site happens to be."""

from __future__ import annotations

from typing import Any

from camkit_plugins.metrics.base import EvalBatch, Metric, MetricValues, check_options, to_input_shape

EMPTY_POLICIES = ("nan", "miss")
"""What a sample with an empty ground truth (nothing to point at) scores: ``"nan"``, left out of the
mean (the metrics' rule); ``"miss"``, 0 (the skeleton evaluation's rule). A map that points nowhere
(no positive site, or a constant map) is a miss under both, so a method cannot raise its score by
returning empty maps on hard samples."""

FEATURES = ("site", "element")
CONVENTIONS = ("camkit", "quantus")


# ---------------------------------------------------------------- shared pieces


def feature_rows(batch: EvalBatch, tensor: Any, features: str) -> Any:
    """``(N, F)``: a ``(N, *sites)`` tensor with one column per map site (``"site"``) or per input element
    (``"element"``: broadcast onto ``batch.inputs`` by axis letter, as Quantus sees a channel-expanded map)."""
    check_options("features", features, FEATURES)
    if features == "element":
        tensor = to_input_shape(tensor, batch.map_letters, batch.input_layout).expand(*batch.inputs.shape)
    return tensor.reshape(tensor.shape[0], -1)


def prepared_maps(batch: EvalBatch, abs: bool, normalise: bool, features: str, convention: str) -> Any:
    """``(N, F)`` float64 maps as Quantus prepares attributions: divided by the largest ``|a|`` when
    ``normalise`` (per sample; over the whole batch under ``convention="quantus"``, as Quantus's
    ``normalise_by_max`` does, which makes scale-dependent scores depend on the batch), then ``|a|`` when
    ``abs``."""
    import torch

    check_options("convention", convention, CONVENTIONS)
    maps = batch.maps.double()
    if not torch.isfinite(maps).all():
        raise ValueError("maps contain NaN or infinite values")
    a = feature_rows(batch, maps, features)
    if normalise:
        if convention == "quantus":
            peak = a.abs().max() if a.numel() else a.new_zeros(())
            a = a / peak if peak > 0 else a
        else:
            peak = a.abs().amax(dim=1, keepdim=True)
            a = a / torch.where(peak > 0, peak, torch.ones_like(peak))
    return a.abs() if abs else a


def truth_rows(batch: EvalBatch, features: str) -> Any:
    """``(N, F)`` boolean ground truth in the same feature order as ``prepared_maps``."""
    return feature_rows(batch, batch.ground_truth_mask(), features)


def top_share(a: Any, truth: Any, k: Any) -> Any:
    """``(N,)`` float64: the share of each row's ``k`` highest features that lie in ``truth``, features tied
    with the k-th counted by their share of the tie (the mean over every order of the ties). ``k``: an int
    or an ``(N,)`` tensor, each in 1..F."""
    import torch

    n, f = a.shape
    if isinstance(k, int):  # one k for every row: a partial selection, not a sort
        kth = a.topk(min(max(k, 1), f), dim=1).values[:, -1:]
    else:
        kth = a.sort(dim=1, descending=True).values.gather(1, (torch.as_tensor(k) - 1).clamp(0, f - 1)[:, None])
    k = torch.as_tensor(k, device=a.device).expand(n).long()
    above, tied = a > kth, a == kth
    truth = truth.bool()
    tied_share = (tied & truth).sum(dim=1).double() / tied.sum(dim=1).clamp_min(1).double()
    inside = (above & truth).sum(dim=1).double() + (k - above.sum(dim=1)).double() * tied_share
    return inside / k.clamp_min(1).double()


def _undefined_where_empty(scores: Any, flat_truth: Any, empty: str = "nan") -> Any:
    import torch

    if empty == "miss":
        return scores
    return torch.where(flat_truth.any(dim=1), scores, torch.full_like(scores, float("nan")))


def pointing_hits(maps: Any, truth: Any, empty: str = "nan") -> Any:
    """``(N,)`` float64 pointing-game hits of ``(N, *sites)`` maps against the boolean ``truth`` (same
    shape): 1 when the maximum lies in the truth, the inside share of the maxima when several sites tie
    for it; 0 for a map that points nowhere (no positive site, or constant); NaN (``empty="nan"``) or 0
    (``empty="miss"``) for an empty truth."""
    import torch

    check_options("empty", empty, EMPTY_POLICIES)
    a = maps.reshape(maps.shape[0], -1)
    flat_truth = truth.reshape(truth.shape[0], -1).bool()
    if a.shape[1] == 0:
        return torch.full((a.shape[0],), float("nan"), dtype=torch.float64, device=a.device)
    hit = top_share(a, flat_truth, 1)
    points = (a.amax(dim=1) > 0) & (a.amax(dim=1) > a.amin(dim=1))
    hit = torch.where(points, hit, torch.zeros_like(hit))
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


class AttributionMetric(Metric):
    """A metric over prepared maps (Quantus's ``abs=False`` / ``normalise=True``, ``features``,
    ``convention``) and the ground truth: subclasses implement ``score(a, truth, batch) -> MetricValues``
    on ``(N, F)`` rows. No forward pass."""

    family = "localisation"
    requires: tuple[str, ...] = ("ground_truth",)

    def __init__(self, abs: bool = False, normalise: bool = True, features: str = "site",
                 convention: str = "camkit") -> None:
        self._setup(abs, normalise, features, convention)

    def _setup(self, abs: bool, normalise: bool, features: str, convention: str) -> None:
        check_options("features", features, FEATURES)
        check_options("convention", convention, CONVENTIONS)
        self.abs, self.normalise, self.features, self.convention = bool(abs), bool(normalise), features, convention

    def evaluate(self, batch: EvalBatch) -> MetricValues:
        a = prepared_maps(batch, self.abs, self.normalise, self.features, self.convention)
        truth = truth_rows(batch, self.features) if "ground_truth" in self.requires else None
        return self.score(a, truth, batch)

    def score(self, a: Any, truth: Any, batch: EvalBatch) -> MetricValues:  # pragma: no cover - interface
        raise NotImplementedError

    def options(self) -> dict[str, Any]:
        return {"abs": self.abs, "normalise": self.normalise, "features": self.features,
                "convention": self.convention}


# ---------------------------------------------------------------- the metrics


class PointingGame(AttributionMetric):
    """Pointing game (Zhang et al., "Top-down neural attention by excitation backprop", ECCV 2016; Quantus
    ``PointingGame``): ``hit_rate`` 100 when the map's maximum lies in the ground truth, widened by
    ``tolerance`` sites (Euclidean, along the continuous axes only: joints are not neighbours by index).

    Parameters: ``weighted=False`` (a hit scores ``1 - |truth| / F``: a hit on a small object counts more,
    Quantus's documented intent); ``abs=False``, ``normalise=True`` (Quantus's; they do not move the
    maximum); ``tolerance=0.0``; ``features`` (does not change the score); ``convention``.

    Ties for the maximum count by their inside share; a map that points nowhere (no positive site, or a
    constant map) is a miss; an empty ground truth is NaN (not counted). Quantus 0.6 counts a site tied
    for the maximum anywhere in the truth as a hit, so a constant map always hits, and scores an empty
    truth as a hit (its NaN is cast to True); ``convention="quantus"`` reproduces both. Its
    ``weighted=True`` raises. No forward pass."""

    name = "pointing_game"
    quantus_name = "PointingGame"
    primary = "hit_rate"
    higher_is_better = True

    def __init__(self, weighted: bool = False, abs: bool = False, normalise: bool = True, tolerance: float = 0.0,
                 features: str = "site", convention: str = "camkit") -> None:
        if tolerance < 0:
            raise ValueError(f"pointing-game tolerance must be >= 0 sites, got {tolerance}")
        self._setup(abs, normalise, features, convention)
        self.weighted, self.tolerance = bool(weighted), float(tolerance)

    def evaluate(self, batch: EvalBatch) -> MetricValues:
        import torch

        a = prepared_maps(batch, self.abs, self.normalise, self.features, self.convention)
        truth = batch.ground_truth_mask()
        if self.tolerance > 0:
            truth = dilate(truth, batch.map_letters, self.tolerance)
        truth = feature_rows(batch, truth, self.features).bool()
        if self.convention == "quantus":
            hit = (truth & (a == a.amax(dim=1, keepdim=True))).any(dim=1).double()
            hit = torch.where(truth.any(dim=1), hit, torch.ones_like(hit))  # Quantus: NaN cast to True
        else:
            hit = pointing_hits(a, truth, empty="nan")
        if self.weighted:
            hit = hit * (1.0 - truth.sum(dim=1).double() / truth.shape[1])
        return MetricValues({"hit_rate": 100.0 * hit})

    def options(self) -> dict[str, Any]:
        return {**super().options(), "weighted": self.weighted, "tolerance": self.tolerance}


class TopKIntersection(AttributionMetric):
    """Top-k intersection (Theiner et al., "Interpretable semantic photo geolocation", WACV 2022; Quantus
    ``TopKIntersection``): ``intersection``, the share of the ``k`` highest features inside the ground
    truth (ties by their share); with ``concept_influence=True`` divided by the truth's share of the
    features (``x F / |truth|``: 1 = chance).

    Parameters: ``k=1000`` (features; more than the sample has is an error); ``concept_influence=False``;
    ``abs=False``; ``normalise=True``; ``features`` (``k`` counts sites or input elements: Quantus counts
    elements of the attribution it is given); ``convention`` (no fault: both equal). NaN for an empty
    truth. No forward pass."""

    name = "top_k_intersection"
    quantus_name = "TopKIntersection"
    primary = "intersection"
    higher_is_better = True

    def __init__(self, k: int = 1000, concept_influence: bool = False, abs: bool = False, normalise: bool = True,
                 features: str = "site", convention: str = "camkit") -> None:
        if int(k) < 1:
            raise ValueError(f"top_k_intersection needs k >= 1, got {k}")
        self._setup(abs, normalise, features, convention)
        self.k, self.concept_influence = int(k), bool(concept_influence)

    def score(self, a: Any, truth: Any, batch: EvalBatch) -> MetricValues:
        if self.k > a.shape[1]:
            raise ValueError(f"top_k_intersection k={self.k} but the maps have {a.shape[1]} features "
                             f"({self.features}s): choose k <= {a.shape[1]}")
        share = top_share(a, truth, self.k)
        if self.concept_influence:
            share = share * a.shape[1] / truth.sum(dim=1).clamp_min(1).double()
        return MetricValues({"intersection": _undefined_where_empty(share, truth)})

    def options(self) -> dict[str, Any]:
        return {**super().options(), "k": self.k, "concept_influence": self.concept_influence}


class RelevanceMassAccuracy(AttributionMetric):
    """Relevance mass accuracy (Arras et al., "CLEVR-XAI", Information Fusion 2022; Quantus
    ``RelevanceMassAccuracy``): ``mass_accuracy``, the share of the map's positive relevance inside the
    ground truth (the paper sums relevance ``R > 0`` only); ``energy`` the same in % (Score-CAM's energy
    pointing game, the same definition).

    Parameters: ``abs=False``; ``normalise=True`` (no effect on the share); ``features`` (no effect);
    ``convention``: ``"quantus"`` sums signed relevance as Quantus 0.6 does (negative relevance outside
    the truth can push the score above 1) and gives NaN for a map summing to 0. A map with no positive
    mass scores 0; an empty truth is NaN. No forward pass."""

    name = "relevance_mass_accuracy"
    quantus_name = "RelevanceMassAccuracy"
    primary = "mass_accuracy"
    higher_is_better = True

    def score(self, a: Any, truth: Any, batch: EvalBatch) -> MetricValues:
        share = energy_share(a, truth)
        if self.convention == "quantus":
            share = _undefined_where_empty((a * truth).sum(dim=1) / a.sum(dim=1), truth)
        return MetricValues({"mass_accuracy": share, "energy": 100.0 * energy_share(a, truth)})


class EnergyPointingGame(RelevanceMassAccuracy):
    """``relevance_mass_accuracy`` under its earlier camkit name (Score-CAM's energy pointing game); its
    primary value is ``energy`` (%)."""

    name = "energy_pointing_game"
    primary = "energy"


class RelevanceRankAccuracy(AttributionMetric):
    """Relevance rank accuracy (Arras et al., "CLEVR-XAI", Information Fusion 2022; Quantus
    ``RelevanceRankAccuracy``): with K = |truth|, ``rank_accuracy`` is the share of the K highest features
    inside the truth (ties by their share).

    Parameters: ``abs=False``; ``normalise=True``; ``features`` (no effect); ``convention`` (no fault).
    NaN for an empty truth. No forward pass."""

    name = "relevance_rank_accuracy"
    quantus_name = "RelevanceRankAccuracy"
    primary = "rank_accuracy"
    higher_is_better = True

    def score(self, a: Any, truth: Any, batch: EvalBatch) -> MetricValues:
        share = top_share(a, truth, truth.sum(dim=1).clamp_min(1))
        return MetricValues({"rank_accuracy": _undefined_where_empty(share, truth)})


class AttributionLocalisation(AttributionMetric):
    """Attribution localisation (Kohlbrenner et al., "Towards best practice in explaining neural network
    decisions with LRP", IJCNN 2020; Quantus ``AttributionLocalisation``): ``localisation``, the
    inside-total relevance ratio (relevance inside the truth / total; NaN above 1, which only signed maps
    reach); ``weighted=True`` multiplies it by the truth's share of the sample's features.

    Parameters: ``weighted=False``; ``max_size=1.0`` (samples whose truth covers more than this share of
    the features are NaN, the paper's size filter; Quantus only warns); ``positive_attributions=False``
    (clip at 0 first); ``abs=True``; ``normalise=True``; ``features`` (no effect); ``convention``:
    ``"quantus"`` divides the weight by ``x_batch[2:].size`` as Quantus 0.6 does (every element of the
    batch's samples after the first two: the score depends on the batch size and is infinite for batches
    of one or two) and keeps samples above ``max_size``. A map with no relevance scores 0; an empty truth
    is NaN. No forward pass."""

    name = "attribution_localisation"
    quantus_name = "AttributionLocalisation"
    primary = "localisation"
    higher_is_better = True

    def __init__(self, weighted: bool = False, max_size: float = 1.0, positive_attributions: bool = False,
                 abs: bool = True, normalise: bool = True, features: str = "site", convention: str = "camkit") -> None:
        if not 0 < max_size <= 1:
            raise ValueError(f"max_size is a share of the sample's features in (0, 1], got {max_size}")
        self._setup(abs, normalise, features, convention)
        self.weighted, self.max_size = bool(weighted), float(max_size)
        self.positive_attributions = bool(positive_attributions)

    def score(self, a: Any, truth: Any, batch: EvalBatch) -> MetricValues:
        import torch

        if self.positive_attributions:
            a = a.clamp_min(0)
        inside, total = (a * truth).sum(dim=1), a.sum(dim=1)
        nan = torch.full_like(total, float("nan"))
        if self.convention == "quantus":
            ratio = inside / (total + 1e-9)
            size = truth.sum(dim=1).double() / batch.inputs[2:].numel()
        else:
            ratio = torch.where(total != 0, inside / torch.where(total != 0, total, torch.ones_like(total)), 0 * total)
            size = truth.sum(dim=1).double() / truth.shape[1]
            ratio = torch.where(size > self.max_size, nan, ratio)
        ratio = torch.where(ratio > 1, nan, ratio)
        if self.weighted:
            ratio = ratio * size
        return MetricValues({"localisation": _undefined_where_empty(ratio, truth)})

    def options(self) -> dict[str, Any]:
        return {**super().options(), "weighted": self.weighted, "max_size": self.max_size,
                "positive_attributions": self.positive_attributions}


class AUC(AttributionMetric):
    """Area under the ROC curve of the map's scores as a detector of the ground truth (Fawcett 2006;
    Quantus ``AUC``): ``auc``, the probability that a random truth feature outscores a random other one,
    ties counting one half (the Mann-Whitney statistic: equal to scikit-learn's ``roc_auc_score``).

    Parameters: ``abs=False``; ``normalise=True``; ``features`` (no effect); ``convention`` (no fault).
    NaN when the truth is empty or covers every feature. No forward pass."""

    name = "auc"
    quantus_name = "AUC"
    primary = "auc"
    higher_is_better = True

    def score(self, a: Any, truth: Any, batch: EvalBatch) -> MetricValues:
        import torch

        # one sort per row; tied values form groups, and a truth feature beats the negatives of the groups
        # below its own and half of those in it
        values, order = a.sort(dim=1)
        positive = truth.gather(1, order).double()
        starts = torch.ones_like(values, dtype=torch.bool)
        starts[:, 1:] = values[:, 1:] != values[:, :-1]
        group = starts.long().cumsum(dim=1) - 1
        negatives_in = torch.zeros_like(positive).scatter_add_(1, group, 1.0 - positive)
        positives_in = torch.zeros_like(positive).scatter_add_(1, group, positive)
        below = negatives_in.cumsum(dim=1) - negatives_in
        u = (positives_in * (below + 0.5 * negatives_in)).sum(dim=1)
        positives = positive.sum(dim=1)
        negatives = truth.shape[1] - positives
        defined = (positives > 0) & (negatives > 0)
        auc = torch.where(defined, u / (positives * negatives).clamp_min(1), torch.full_like(u, float("nan")))
        return MetricValues({"auc": auc})


class Focus(AttributionMetric):
    """Focus (Arias-Duart et al., "Focus! Rating XAI methods and finding biases", FUZZ-IEEE 2022; Quantus
    ``Focus``): on a mosaic of tiles, two of them of the explained class, ``focus`` is the share of the
    map's positive relevance on those tiles. The batch's ground-truth mask marks the target's tiles
    (``mosaic_masks`` turns Quantus's per-tile flags into masks; ``build_mosaics`` makes mosaics).

    Parameters: ``mosaic_shape=None`` (accepted for Quantus calls; the mask carries the tiles); ``abs=False``;
    ``normalise=True``; ``features`` (no effect); ``convention`` (no fault: Quantus divides by the total
    + 1e-9). A map with no positive relevance scores 0; a mosaic without target tiles is NaN. No forward
    pass."""

    name = "focus"
    quantus_name = "Focus"
    primary = "focus"
    higher_is_better = True

    def __init__(self, mosaic_shape: Any = None, abs: bool = False, normalise: bool = True, features: str = "site",
                 convention: str = "camkit") -> None:
        self._setup(abs, normalise, features, convention)
        self.mosaic_shape = None if mosaic_shape is None else tuple(mosaic_shape)

    def score(self, a: Any, truth: Any, batch: EvalBatch) -> MetricValues:
        return MetricValues({"focus": energy_share(a, truth)})

    def options(self) -> dict[str, Any]:
        return {**super().options(), "mosaic_shape": self.mosaic_shape}


def mosaic_masks(tile_flags: Any, site_shape: tuple[int, int]) -> Any:
    """``(N, H, W)`` boolean masks of the target's tiles of 2 x 2 mosaics from per-mosaic flags
    ``(N, 4)`` (top-left, top-right, bottom-left, bottom-right: Quantus's ``p_batch``), split at
    ``H // 2`` and ``W // 2`` as Quantus does."""
    import torch

    flags = torch.as_tensor(tile_flags).bool().reshape(-1, 2, 2)
    h, w = site_shape
    rows = (torch.arange(h) >= h // 2).long()
    cols = (torch.arange(w) >= w // 2).long()
    return flags[:, rows[:, None], cols[None, :]]


def build_mosaics(images: Any, labels: Any, mosaics_per_class: int, seed: int = 0) -> dict[str, Any]:
    """2 x 2 mosaics for Focus (Arias-Duart et al. 2022): for every class, ``mosaics_per_class`` mosaics of
    two images of that class and two of other classes, in a random arrangement (seeded). Images
    ``(N, C, H, W)``; returns ``inputs (M, C, 2H, 2W)``, ``targets (M,)`` (the class to explain),
    ``tile_labels (M, 4)``, ``source_indices (M, 4)`` and ``mask (M, 2H, 2W)`` (the target's tiles)."""
    import torch

    images, labels = torch.as_tensor(images), torch.as_tensor(labels).long()
    classes = labels.unique().tolist()
    if len(classes) < 2:
        raise ValueError("mosaics need images of at least two classes")
    generator = torch.Generator().manual_seed(int(seed))
    picks, targets = [], []
    for target in classes:
        own = torch.nonzero(labels == target)[:, 0]
        other = torch.nonzero(labels != target)[:, 0]
        for _ in range(int(mosaics_per_class)):
            chosen = torch.cat([own[torch.randint(len(own), (2,), generator=generator)],
                                other[torch.randint(len(other), (2,), generator=generator)]])
            picks.append(chosen[torch.randperm(4, generator=generator)])
            targets.append(target)
    index = torch.stack(picks)
    tiles = images[index]  # (M, 4, C, H, W)
    top = torch.cat([tiles[:, 0], tiles[:, 1]], dim=-1)
    bottom = torch.cat([tiles[:, 2], tiles[:, 3]], dim=-1)
    inputs = torch.cat([top, bottom], dim=-2)
    target_tensor = torch.tensor(targets)
    tile_labels = labels[index]
    mask = mosaic_masks(tile_labels == target_tensor[:, None], (inputs.shape[-2], inputs.shape[-1]))
    return {"inputs": inputs, "targets": target_tensor, "tile_labels": tile_labels, "source_indices": index,
            "mask": mask}


class BoxLocalization(Metric):
    """CAM-box protocol (Zhou et al. 2016): threshold the map (``rule="max_fraction"``: sites >= ``value``
    x max, 0.2 in the paper; ``"percentile"``: the top ``value`` fraction), box the largest connected
    component (``components="all"``: every kept site), compare with the ground-truth box. ``accuracy`` (%):
    right class AND IoU >= ``iou``."""

    name = "box_localization"
    family = "localisation"
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


METRICS = (PointingGame, TopKIntersection, RelevanceMassAccuracy, RelevanceRankAccuracy, AttributionLocalisation,
           AUC, Focus, BoxLocalization)
ALIASES = {"energy_pointing_game": EnergyPointingGame}
