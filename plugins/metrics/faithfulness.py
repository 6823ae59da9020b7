"""Faithfulness metrics that remove features in order of relevance: deletion / insertion (RISE),
Quantus's PixelFlipping, RegionPerturbation, Selectivity, Monotonicity (Arya), IROF and ROAD,
pytorch-grad-cam's ROAD-combined, and Average Drop / Increase in Confidence.

Every schedule runs on the one perturbation engine (``plugins/metrics/engine.py``): features ranked
(ties seeded per sample id), removal masks over the map letters broadcast onto the input, perturbed
inputs built and forwarded ``batch.chunk_size`` at a time. Costs are in forwards per sample; F = the
features (map sites, or channels x sites with ``features="element"``).

Quantus-compatible metrics take Quantus 0.6's parameter names and defaults; ``softmax`` is the flag
Quantus passes at call time (probabilities or logits), with its per-metric default. Where Quantus is
wrong, camkit is right by default and ``convention="quantus"`` reproduces Quantus's numbers."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from camkit_plugins.metrics.base import EvalBatch, Metric, MetricValues, check_options

CONVENTIONS = ("camkit", "quantus")


class FaithfulnessMetric(Metric):
    """Base of the engine's metrics: ``defaults`` lists every option (Quantus's names and defaults);
    an unknown option is an error naming the close matches; ``options()`` records them all."""

    family = "faithfulness"
    defaults: dict[str, Any] = {}
    choices: dict[str, tuple[Any, ...]] = {"features": ("site", "element"), "convention": CONVENTIONS}

    def __init__(self, **options: Any) -> None:
        from camkit.plugin_manager import UnknownNameError

        for key in options:
            if key not in self.defaults:
                raise UnknownNameError.of(f"option of metric {self.name!r}", key, list(self.defaults))
        self.config = SimpleNamespace(**{**self.defaults, **options})
        for key, allowed in self.choices.items():
            if key in self.defaults:
                check_options(key, getattr(self.config, key), allowed)
        self.validate()

    def validate(self) -> None:
        """Check option values (subclasses)."""

    def options(self) -> dict[str, Any]:
        return dict(vars(self.config))

    # shared steps
    def features(self, batch: EvalBatch) -> Any:
        from camkit_plugins.metrics.engine import Features

        c = self.config
        return Features(batch, getattr(c, "features", "site"), c.normalise, c.abs)

    def perturbation(self, batch: EvalBatch) -> Any:
        from camkit_plugins.metrics.engine import baseline

        return baseline(self.config.perturb_baseline, seed=batch.seed)

    def ranks(self, batch: EvalBatch, scores: Any, descending: bool = True) -> Any:
        """Feature ranks; with ``convention="quantus"`` in Quantus's (numpy's) tie order."""
        from camkit_plugins.metrics.engine import ranks

        return ranks(batch, scores, descending, getattr(self.config, "convention", "camkit"))

    @property
    def output(self) -> str:
        return "probability" if self.config.softmax else "logit"


def positive(name: str, value: Any) -> None:
    if not int(value) >= 1:
        raise ValueError(f"{name} must be >= 1, got {value}")


# ---------------------------------------------------------------- deletion / insertion (RISE)


def perturbation_curve(batch: EvalBatch, perturbation: Any, steps: int, insert: bool,
                       least_relevant_first: bool = False) -> Any:
    """``(N, steps + 1)`` target probability after removing (or, with ``insert``, restoring onto the
    perturbed input) the ``round(k * S / steps)`` most salient sites, k = 0..steps. Sites of equal
    saliency are taken in a random order seeded by ``(batch.seed, batch.indices[i])``."""
    import torch

    from camkit_plugins.metrics.engine import Features, cumulative, ranks, removal_scores

    features = Features(batch, "site", normalise=False)
    order = ranks(batch, features.attributions, descending=not least_relevant_first)
    counts = torch.round(torch.linspace(0, features.count, steps + 1, device=order.device, dtype=torch.float64))
    return removal_scores(batch, features, cumulative(order, counts.long()), steps + 1, perturbation,
                          insert=insert)


class _CurveMetric(Metric):
    family = "faithfulness"
    default_perturbation = "zeros"
    insert = False

    def __init__(self, steps: int = 20, perturbation: str | None = None,
                 perturbation_options: dict[str, Any] | None = None) -> None:
        from camkit.plugin_manager import lookup

        positive("steps", steps)
        self.steps = int(steps)
        self.perturbation_name = perturbation or self.default_perturbation
        self.perturbation_options = dict(perturbation_options or {})
        self.perturbation = lookup("perturbations", self.perturbation_name)(**self.perturbation_options)

    def evaluate(self, batch: EvalBatch) -> MetricValues:
        from camkit_plugins.metrics.base import curve_auc

        curve = perturbation_curve(batch, self.perturbation, self.steps, self.insert)
        labels = [f"{k / self.steps:.3g}" for k in range(self.steps + 1)]
        return MetricValues({"auc": curve_auc(curve), "curve": curve}, {"curve": labels})

    def options(self) -> dict[str, Any]:
        return {"steps": self.steps, "perturbation": self.perturbation_name, **self.perturbation.options()}


class Deletion(_CurveMetric):
    """Deletion (Petsiuk et al., RISE, BMVC 2018): remove the most salient sites first; area under the
    probability curve on [0, 1], lower is better. ``steps=20``: sites per step = S / steps; removed sites
    are filled by ``perturbation`` (``"zeros"``). Cost: N (steps + 1) forwards."""

    name = "deletion"
    primary = "auc"
    higher_is_better = False
    default_perturbation = "zeros"
    insert = False


class Insertion(_CurveMetric):
    """Insertion (RISE): start from the fully perturbed input (``"blur"`` by default) and restore the most
    salient sites first; area under the probability curve, higher is better. Cost: N (steps + 1)."""

    name = "insertion"
    primary = "auc"
    higher_is_better = True
    default_perturbation = "blur"
    insert = True


# ---------------------------------------------------------------- Quantus: ordered removal


class PixelFlipping(FaithfulnessMetric):
    """Pixel-Flipping (Bach et al., PLoS ONE 2015): remove the features in decreasing order of
    relevance, ``features_in_step`` at a time, cumulatively; ``curve`` (N, ceil(F / features_in_step))
    = target score after each step (the clean input is not a point), ``auc`` = its trapezoid with
    dx = 1 (Quantus's ``get_auc_score``), lower is better.

    Options (Quantus 0.6 defaults): ``features_in_step=1``, ``perturb_baseline="black"`` (per-sample
    minimum; or ``"white"``, ``"mean"``, ``"uniform"``, a number, any camkit perturbation),
    ``normalise=True``, ``abs=False``, ``softmax=True``, ``return_auc_per_sample=False`` (recorded;
    both are always returned), ``features="site"`` (Quantus: ``"element"``, 3x the forwards on RGB),
    ``convention="camkit"`` (``"quantus"``: ties in numpy's order, as the channels of one pixel).
    Cost: ceil(F / features_in_step) forwards per sample (224 px RGB, element: 150,528)."""

    name = "pixel_flipping"
    quantus_name = "PixelFlipping"
    primary = "auc"
    higher_is_better = False
    defaults = {"features_in_step": 1, "perturb_baseline": "black", "normalise": True, "abs": False,
                "softmax": True, "return_auc_per_sample": False, "features": "site", "convention": "camkit"}

    def validate(self) -> None:
        positive("features_in_step", self.config.features_in_step)

    def evaluate(self, batch: EvalBatch) -> MetricValues:
        from camkit_plugins.metrics.engine import cumulative, removal_scores, step_counts, trapezoid

        features = self.features(batch)
        counts = step_counts(features.count, self.config.features_in_step, batch.maps.device)
        order = self.ranks(batch, features.attributions)
        curve = removal_scores(batch, features, cumulative(order, counts), len(counts), self.perturbation(batch),
                               self.output)
        return MetricValues({"auc": trapezoid(curve), "curve": curve}, {"curve": [str(int(k)) for k in counts]})


class _RegionMetric(FaithfulnessMetric):
    """Square patches of ``patch_size`` sites over the continuous axes (``engine.block_labels``)."""

    def validate(self) -> None:
        positive("patch_size", self.config.patch_size)

    def region_curve(self, batch: EvalBatch, order: str, limit: int | None) -> tuple[Any, Any]:
        import torch

        from camkit_plugins.metrics.base import saliency_ranks, sample_generator
        from camkit_plugins.metrics.engine import block_labels, region_scores, regions, removal_scores

        features = self.features(batch)  # sites: a patch covers all channels
        labels, count = block_labels(batch, self.config.patch_size)
        sums = region_scores(features.attributions, labels, count)
        if order == "random":
            rows = [torch.randperm(count, generator=sample_generator(batch.seed, i, f"{self.name}:order"))
                    for i in batch.indices.reshape(-1).tolist()]
            order_ranks = torch.stack(rows).argsort(dim=1).to(sums.device)
        else:
            order_ranks = saliency_ranks(sums if order == "morf" else -sums, batch.indices, batch.seed)
        steps = count if limit is None else min(int(limit), count)
        counts = torch.arange(1, steps + 1, device=sums.device)
        curve = removal_scores(batch, features, regions(labels, order_ranks, counts), steps, self.perturbation(batch),
                               self.output)
        return curve, counts

    def features(self, batch: EvalBatch) -> Any:
        from camkit_plugins.metrics.engine import Features

        return Features(batch, "site", self.config.normalise, self.config.abs)


class RegionPerturbation(_RegionMetric):
    """Region Perturbation (Samek et al., IEEE TNNLS 2017): patches of ``patch_size`` x ``patch_size``
    sites ranked by their summed relevance (``order="morf"``, ``"lerf"`` or ``"random"``, seeded), removed
    cumulatively; ``curve`` (N, R) = clean score - score after r patches, r = 1..min(``regions_evaluation``,
    patches); ``auc`` = its trapezoid (dx = 1), higher is better for MoRF. A side that ``patch_size`` does
    not divide is padded evenly (partial border patches), as Quantus does.

    Options (Quantus 0.6): ``patch_size=8``, ``order="morf"``, ``regions_evaluation=100``,
    ``perturb_baseline="black"``, ``normalise=True``, ``abs=False``, ``softmax=True``.
    Cost: 1 + min(regions_evaluation, patches) forwards per sample."""

    name = "region_perturbation"
    quantus_name = "RegionPerturbation"
    primary = "auc"
    higher_is_better = True
    defaults = {"patch_size": 8, "order": "morf", "regions_evaluation": 100, "perturb_baseline": "black",
                "normalise": True, "abs": False, "softmax": True}
    choices = {"order": ("morf", "lerf", "random")}

    def evaluate(self, batch: EvalBatch) -> MetricValues:
        from camkit_plugins.metrics.engine import clean_scores, trapezoid

        curve, counts = self.region_curve(batch, self.config.order, self.config.regions_evaluation)
        deltas = clean_scores(batch, self.output)[:, None] - curve
        return MetricValues({"auc": trapezoid(deltas), "curve": deltas}, {"curve": [str(int(k)) for k in counts]})


class Selectivity(_RegionMetric):
    """Selectivity (Montavon et al., Digital Signal Processing 2018): remove every ``patch_size`` patch in
    decreasing order of summed relevance; ``curve`` (N, R) = target score after each; ``auc`` = its
    trapezoid (dx = 1), lower is better.

    Options (Quantus 0.6): ``patch_size=8``, ``perturb_baseline="black"``, ``normalise=True``,
    ``abs=False``, ``softmax=True``. Cost: R (patches) forwards per sample (224 px: 784)."""

    name = "selectivity"
    quantus_name = "Selectivity"
    primary = "auc"
    higher_is_better = False
    defaults = {"patch_size": 8, "perturb_baseline": "black", "normalise": True, "abs": False, "softmax": True}

    def evaluate(self, batch: EvalBatch) -> MetricValues:
        from camkit_plugins.metrics.engine import trapezoid

        curve, counts = self.region_curve(batch, "morf", None)
        return MetricValues({"auc": trapezoid(curve), "curve": curve}, {"curve": [str(int(k)) for k in counts]})


class Monotonicity(FaithfulnessMetric):
    """Monotonicity (Arya et al., 2019, "One explanation does not fit all"): start from the baseline
    (every feature perturbed) and put the features back in *increasing* order of relevance,
    ``features_in_step`` at a time; 1.0 where the target score never decreases, else 0.0; ``curve`` = the
    scores. Higher is better.

    Quantus fault (fixed): Quantus replaces the added features by the baseline again, so the model only
    ever sees the baseline image and the answer is always True; ``convention="quantus"`` reproduces that
    (one forward: the baseline image).

    Options (Quantus 0.6): ``features_in_step=1``, ``perturb_baseline="black"``, ``normalise=True``,
    ``abs=True``, ``softmax=True``, ``features="site"``, ``convention="camkit"``.
    Cost: ceil(F / features_in_step) forwards per sample."""

    name = "monotonicity"
    quantus_name = "Monotonicity"
    primary = "monotonic"
    higher_is_better = True
    defaults = {"features_in_step": 1, "perturb_baseline": "black", "normalise": True, "abs": True,
                "softmax": True, "features": "site", "convention": "camkit"}

    def validate(self) -> None:
        positive("features_in_step", self.config.features_in_step)

    def evaluate(self, batch: EvalBatch) -> MetricValues:
        import torch

        from camkit_plugins.metrics.engine import cumulative, removal_scores, step_counts

        features = self.features(batch)
        counts = step_counts(features.count, self.config.features_in_step, batch.maps.device)
        if self.config.convention == "quantus":  # nothing is ever put back: the baseline image only
            everything = cumulative(torch.zeros_like(features.attributions, dtype=torch.long), counts[:1])
            base = removal_scores(batch, features, everything, 1, self.perturbation(batch), self.output)
            curve = base.expand(-1, len(counts))
        else:
            added = cumulative(self.ranks(batch, features.attributions, descending=False), counts)
            curve = removal_scores(batch, features, added, len(counts), self.perturbation(batch), self.output,
                                   insert=True)
        monotonic = (curve.diff(dim=1) >= 0).all(dim=1).double()
        return MetricValues({"monotonic": monotonic, "curve": curve}, {"curve": [str(int(k)) for k in counts]})


class IROF(FaithfulnessMetric):
    """IROF, Iterative Removal Of Features (Rieger & Hansen, 2020): superpixels (SLIC, scikit-image) ranked
    by mean relevance and removed cumulatively; curve = target score / clean score after each of the
    sample's n segments; ``aoc`` = n - trapezoid (dx = 1) of that curve, higher is better; ``aoc_share``
    = aoc / n (comparable across images).

    Quantus faults (fixed): it crashes on RGB input (a (N, 1, H, W) mask against (N, 3, H, W)); its
    ``"mean"``/``"black"`` fill is taken over the whole batch's already perturbed array; its curves are
    zero-padded to the batch's largest segment count, so a sample's AOC depends on its batch.
    ``convention="quantus"`` pads the same way (on the given batch); fills stay per sample.

    Options (Quantus 0.6): ``segmentation_method="slic"`` (or ``"felzenszwalb"``),
    ``perturb_baseline="mean"`` (per-sample mean), ``normalise=True``, ``abs=False``, ``softmax=True``,
    ``convention="camkit"``. Needs image maps (NHW). Cost: 1 + max segments forwards per sample (~100)."""

    name = "irof"
    quantus_name = "IROF"
    primary = "aoc"
    higher_is_better = True
    defaults = {"segmentation_method": "slic", "perturb_baseline": "mean", "normalise": True, "abs": False,
                "softmax": True, "convention": "camkit"}
    choices = {"segmentation_method": ("slic", "felzenszwalb"), "convention": CONVENTIONS}

    def evaluate(self, batch: EvalBatch) -> MetricValues:
        import torch

        from camkit_plugins.metrics.base import saliency_ranks
        from camkit_plugins.metrics.engine import (
            Features,
            clean_scores,
            region_scores,
            regions,
            removal_scores,
            superpixel_labels,
            trapezoid,
        )

        features = Features(batch, "site", self.config.normalise, self.config.abs)
        labels, segments = superpixel_labels(batch, self.config.segmentation_method)
        steps = int(segments.max().item())
        means = region_scores(features.attributions, labels, steps, reduce="mean")
        order = saliency_ranks(means, batch.indices, batch.seed)
        counts = torch.arange(1, steps + 1, device=labels.device)
        curve = removal_scores(batch, features, regions(labels, order, counts), steps, self.perturbation(batch),
                               self.output)
        curve = curve / clean_scores(batch, self.output)[:, None]
        valid = counts[None, :] <= segments[:, None]
        curve = torch.where(valid, curve, torch.zeros_like(curve))
        if self.config.convention == "quantus":
            area = trapezoid(curve)
        else:  # each sample's own n points only
            last = (segments - 1)[:, None]
            area = trapezoid(curve) - 0.5 * curve.gather(1, last)[:, 0] * (segments < steps).double()
        aoc = segments.double() - area
        return MetricValues({"aoc": aoc, "aoc_share": aoc / segments.double(), "segments": segments.double()})


# ---------------------------------------------------------------- ROAD


def road_counts(sites: int, percentages: Any, device: Any) -> Any:
    """Sites removed at each percentage: ``int(sites * p / 100)`` (Quantus's count)."""
    import torch

    return torch.tensor([int(sites * float(p) / 100) for p in percentages], device=device, dtype=torch.long)


class RoadMetric(FaithfulnessMetric):
    """ROAD, RemOve And Debias (Rong et al., ICML 2022): remove ``p`` % of the sites, most relevant first
    (MoRF) and least relevant first (LeRF), imputing them by noisy linear imputation (the ``road``
    perturbation, solved exactly: the system Quantus solves); per percentage the target probability
    (``morf_curve``, ``lerf_curve``) and Quantus's score, whether the top-1 class is still the target
    (``morf_accuracy``; Quantus's ROAD = its mean over samples per percentage). ``gap`` = LeRF AUC -
    MoRF AUC over the removed fraction, higher is better.

    Quantus faults (fixed): it crashes on RGB input (indices over C x H x W used on an H x W grid) and
    returns only the first batch's curve.

    Options: ``percentages`` (Quantus: 1, 3, ..., 99) or ``steps`` (camkit's earlier spelling: k / steps x
    100 %, k = 0..steps; default when neither is given: Quantus's), ``noise=0.01``, ``normalise=True``,
    ``abs=False`` (Quantus's; ranks only), ``exact=True`` (``False``: a few Jacobi sweeps, cheaper).
    Cost: 2 P forwards per sample (P percentages) plus one imputation solve each."""

    name = "road"
    quantus_name = "ROAD"
    primary = "gap"
    higher_is_better = True
    defaults = {"percentages": None, "steps": None, "noise": 0.01, "normalise": True, "abs": False, "exact": True}

    def validate(self) -> None:
        c = self.config
        if c.steps is not None:
            positive("steps", c.steps)
            if c.percentages is not None:
                raise ValueError("give road either percentages or steps, not both")
            c.percentages = [100.0 * k / int(c.steps) for k in range(int(c.steps) + 1)]
        elif c.percentages is None:
            c.percentages = list(range(1, 100, 2))
        if not c.percentages or any(not 0 <= float(p) <= 100 for p in c.percentages):
            raise ValueError(f"road percentages must lie in [0, 100], got {c.percentages}")
        from camkit.plugin_manager import lookup

        self.imputation = lookup("perturbations", "road")(noise=c.noise, exact=c.exact)

    def evaluate(self, batch: EvalBatch) -> MetricValues:
        import torch

        from camkit_plugins.metrics.engine import Features, cumulative, ranks

        self.imputation.seed = batch.seed
        features = Features(batch, "site", self.config.normalise, self.config.abs)
        counts = road_counts(features.count, self.config.percentages, features.attributions.device)
        fractions = torch.tensor([float(p) / 100 for p in self.config.percentages], dtype=torch.float64)
        values: dict[str, Any] = {}
        for order in ("morf", "lerf"):
            removal = cumulative(ranks(batch, features.attributions, descending=order == "morf"), counts)
            scores = self._scores(batch, features, removal, len(counts))
            values[f"{order}_curve"], values[f"{order}_accuracy"] = scores[..., 0], scores[..., 1]
            values[f"{order}_auc"] = _auc_over(values[f"{order}_curve"], fractions.to(scores.device))
        values["gap"] = values["lerf_auc"] - values["morf_auc"]
        labels = [f"{float(p):.3g}" for p in self.config.percentages]
        return MetricValues(values, {key: labels for key in values if key.endswith(("_curve", "_accuracy"))})

    def _scores(self, batch: EvalBatch, features: Any, removal: Any, steps: int) -> Any:
        """``(N, steps, 2)``: target probability and top-1 hit of each perturbed input, from one forward."""
        import torch

        from camkit_plugins.metrics.engine import forward_scores

        layout = batch.input_layout
        indices = torch.as_tensor(batch.indices).reshape(-1)

        def perturb(inputs: Any, owner: Any, step: Any) -> Any:
            removed = features.to_input(removal(owner, step))
            return self.imputation.apply(inputs, removed, layout, indices[owner.cpu()], draws=step.cpu())

        return forward_scores(batch, steps, perturb, ("probability", "correct"))


def _auc_over(curve: Any, xs: Any) -> Any:
    """Trapezoid of ``(N, K)`` curves over the points ``xs`` (K,), divided by their span (0 for one point)."""
    if len(xs) < 2:
        return curve[:, 0] * 0
    widths = (xs[1:] - xs[:-1]).to(curve.dtype)
    area = ((curve[:, 1:] + curve[:, :-1]) * widths).sum(dim=1) / 2.0
    return area / (xs[-1] - xs[0]).to(curve.dtype)


class RoadCombined(FaithfulnessMetric):
    """ROAD-combined as pytorch-grad-cam's ``ROADCombined``: for each percentile p, MoRF keeps the sites
    below the map's p-th percentile (removes the top 100 - p %), LeRF keeps those above the (100 - p)-th
    (removes the bottom 100 - p %), both imputed by ROAD's noisy linear imputation; each score is the
    change of the target score; ``combined`` = (mean LeRF change - mean MoRF change) / 2, higher is
    better. Counts follow numpy's linear percentile on distinct values: kept = ceil(p (S - 1) / 100).

    Options: ``percentiles=(10, 20, ..., 90)``, ``noise=0.01``, ``softmax=True`` (the target as
    ``ClassifierOutputSoftmaxTarget``; False: the logit, ``ClassifierOutputTarget``). Cost: 1 + 2 P
    forwards per sample."""

    name = "road_combined"
    primary = "combined"
    higher_is_better = True
    defaults = {"percentiles": (10, 20, 30, 40, 50, 60, 70, 80, 90), "noise": 0.01, "softmax": True}

    def validate(self) -> None:
        from camkit.plugin_manager import lookup

        if not self.config.percentiles or any(not 0 <= float(p) <= 100 for p in self.config.percentiles):
            raise ValueError(f"road_combined percentiles must lie in [0, 100], got {self.config.percentiles}")
        self.imputation = lookup("perturbations", "road")(noise=self.config.noise, exact=True)

    def evaluate(self, batch: EvalBatch) -> MetricValues:
        import math

        import torch

        from camkit_plugins.metrics.engine import Features, clean_scores, cumulative, ranks, removal_scores

        self.imputation.seed = batch.seed
        features = Features(batch, "site", normalise=False)
        sites = features.count
        kept = [math.ceil(float(p) * (sites - 1) / 100) for p in self.config.percentiles]
        counts = torch.tensor([sites - k for k in kept], device=features.attributions.device)
        clean = clean_scores(batch, self.output)[:, None]
        changes = {}
        for order in ("morf", "lerf"):
            removal = cumulative(ranks(batch, features.attributions, descending=order == "morf"), counts)
            changes[order] = removal_scores(batch, features, removal, len(counts), self.imputation, self.output) - clean
        combined = (changes["lerf"].mean(dim=1) - changes["morf"].mean(dim=1)) / 2
        labels = [str(p) for p in self.config.percentiles]
        return MetricValues({"combined": combined, "morf": changes["morf"], "lerf": changes["lerf"]},
                            {"morf": labels, "lerf": labels})


# ---------------------------------------------------------------- Average Drop


class AverageDrop(Metric):
    """Average Drop and Increase in Confidence (Chattopadhyay et al., Grad-CAM++, WACV 2018): Y = target
    probability on the input, O = on the input multiplied by its [0, 1] map. ``average_drop`` = mean
    max(0, Y - O) / Y x 100 (lower is better); ``increase_in_confidence`` = % of samples with O > Y.
    Cost: 2 forwards per sample.

    ``space="normalized"`` multiplies the tensor the model sees; ``"raw"`` un-standardises it with the
    data set's ``(mean, std)``, multiplies the raw image, and standardises again. They differ: in the
    normalised space a masked pixel goes to the data set mean, in the raw space to black."""

    name = "average_drop"
    family = "faithfulness"
    primary = "average_drop"
    higher_is_better = False

    def __init__(self, space: str = "normalized", mean: Any = None, std: Any = None) -> None:
        check_options("space", space, ("normalized", "raw"))
        self.space = space
        self.mean, self.std = mean, std

    def evaluate(self, batch: EvalBatch) -> MetricValues:
        from camkit_plugins.metrics.base import to_input_shape

        x, layout = batch.inputs, batch.input_layout
        weight = to_input_shape(batch.maps.to(x.dtype), batch.map_letters, layout)
        if self.space == "normalized":
            masked = x * weight
        else:
            mean, std = self._normalization(batch)
            masked = (((x * std + mean) * weight) - mean) / std
        y = batch.probabilities(x).double()
        o = batch.probabilities(masked).double()
        drop = 100.0 * (y - o).clamp_min(0) / y.clamp_min(1e-12)
        return MetricValues({"average_drop": drop, "increase_in_confidence": 100.0 * (o > y).double()})

    def _normalization(self, batch: EvalBatch) -> tuple[Any, Any]:
        import torch

        mean, std = (self.mean, self.std) if self.mean is not None else (batch.normalization or (None, None))
        if mean is None or std is None:
            raise ValueError("average_drop with space='raw' needs the data's mean and std: pass mean=/std= "
                             "or use a data set / checkpoint that records them")
        layout = batch.input_layout
        shape = [1] * layout.rank
        shape[layout.channel_axis] = -1

        def as_tensor(values: Any) -> Any:
            return torch.as_tensor(values, dtype=batch.inputs.dtype, device=batch.inputs.device).reshape(shape)

        return as_tensor(mean), as_tensor(std)

    def options(self) -> dict[str, Any]:
        return {"space": self.space}


METRICS = (Deletion, Insertion, PixelFlipping, RegionPerturbation, Selectivity, Monotonicity, IROF, RoadMetric,
           RoadCombined, AverageDrop)
