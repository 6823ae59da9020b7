"""Faithfulness metrics: deletion / insertion curves (RISE), ROAD, Average Drop / Increase in Confidence.

Curves are batched: every (sample, step) perturbed input is built on the fly from the sites'
saliency ranks and forwarded ``chunk_size`` inputs at a time, so the whole batch costs
``N * (steps + 1) / chunk_size`` forward passes and bounded memory."""

from __future__ import annotations

from typing import Any

from camkit_plugins.metrics.base import EvalBatch, Metric, MetricValues, check_options


def _perturbation(name: str, options: dict[str, Any] | None) -> Any:
    from camkit.plugin_manager import lookup

    return lookup("perturbations", name)(**dict(options or {}))


def perturbation_curve(batch: EvalBatch, perturbation: Any, steps: int, insert: bool,
                       least_relevant_first: bool = False) -> Any:
    """``(N, steps + 1)`` target probability after removing (or, with ``insert``, restoring onto the
    perturbed input) the ``round(k * S / steps)`` most salient sites, k = 0..steps. Sites of equal
    saliency are taken in a random order seeded by ``(batch.seed, batch.indices[i])``."""
    import torch

    from camkit.capture import evaluation_mode
    from camkit_plugins.metrics.base import saliency_ranks, to_input_shape

    x, layout = batch.inputs, batch.input_layout
    flat = batch.flat_maps()
    # ties (large all-zero areas of normalised maps) in a random order seeded per sample, not raster order
    ranks = saliency_ranks(-flat if least_relevant_first else flat, batch.indices, batch.seed)
    n, sites = flat.shape
    counts = torch.round(torch.linspace(0, sites, steps + 1, device=flat.device, dtype=torch.float64)).long()
    fill = perturbation.fill(x, layout, batch.indices) if perturbation.precomputable else None
    xb = x.movedim(layout.batch_axis, 0)
    fill_b = fill.movedim(layout.batch_axis, 0) if fill is not None else None
    targets = batch.targets.to(x.device)
    curve = torch.empty(n * (steps + 1), dtype=torch.float64, device=x.device)
    with torch.inference_mode(), evaluation_mode(batch.model):
        for start in range(0, n * (steps + 1), batch.chunk_size):
            pairs = torch.arange(start, min(start + batch.chunk_size, n * (steps + 1)), device=x.device)
            owner, step = pairs // (steps + 1), pairs % (steps + 1)
            changed = ranks[owner] < counts[step][:, None]
            removed = ~changed if insert else changed
            removed = to_input_shape(removed.view(len(pairs), *batch.site_shape), batch.map_letters, layout)
            inputs = xb[owner].movedim(0, layout.batch_axis)
            chunk_fill = fill_b[owner].movedim(0, layout.batch_axis) if fill_b is not None else None
            perturbed = perturbation.apply(inputs, removed, layout, batch.indices[owner.cpu()], fill=chunk_fill)
            probs = batch.model(perturbed).float().softmax(dim=1)
            curve[pairs] = probs.gather(1, targets[owner][:, None])[:, 0].double()
    return curve.view(n, steps + 1)


class _CurveMetric(Metric):
    default_perturbation = "zeros"
    insert = False

    def __init__(self, steps: int = 20, perturbation: str | None = None,
                 perturbation_options: dict[str, Any] | None = None) -> None:
        if int(steps) < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        self.steps = int(steps)
        self.perturbation_name = perturbation or self.default_perturbation
        self.perturbation_options = dict(perturbation_options or {})
        self.perturbation = _perturbation(self.perturbation_name, self.perturbation_options)

    def evaluate(self, batch: EvalBatch) -> MetricValues:
        from camkit_plugins.metrics.base import curve_auc

        curve = perturbation_curve(batch, self.perturbation, self.steps, self.insert)
        labels = [f"{k / self.steps:.3g}" for k in range(self.steps + 1)]
        return MetricValues({"auc": curve_auc(curve), "curve": curve}, {"curve": labels})

    def options(self) -> dict[str, Any]:
        return {"steps": self.steps, "perturbation": self.perturbation_name, **self.perturbation.options()}


class Deletion(_CurveMetric):
    """Deletion (RISE): remove the most salient sites first; area under the probability curve, lower is
    better. Sites per step = sites / ``steps``; removed sites are filled by ``perturbation``."""

    name = "deletion"
    primary = "auc"
    higher_is_better = False
    default_perturbation = "zeros"
    insert = False


class Insertion(_CurveMetric):
    """Insertion (RISE): start from the fully perturbed input (blurred by default) and restore the most
    salient sites first; area under the probability curve, higher is better."""

    name = "insertion"
    primary = "auc"
    higher_is_better = True
    default_perturbation = "blur"
    insert = True


class RoadMetric(Metric):
    """ROAD (Rong et al. 2022): remove sites with neighbour imputation (perturbation ``road``), most
    relevant first (MoRF, lower is better) and least relevant first (LeRF, higher is better);
    ``gap`` = LeRF AUC - MoRF AUC, higher is better."""

    name = "road"
    primary = "gap"
    higher_is_better = True

    def __init__(self, steps: int = 10, noise: float = 0.01) -> None:
        if int(steps) < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        self.steps = int(steps)
        self.perturbation = _perturbation("road", {"noise": noise})

    def evaluate(self, batch: EvalBatch) -> MetricValues:
        from camkit_plugins.metrics.base import curve_auc

        morf = perturbation_curve(batch, self.perturbation, self.steps, insert=False)
        lerf = perturbation_curve(batch, self.perturbation, self.steps, insert=False, least_relevant_first=True)
        labels = [f"{k / self.steps:.3g}" for k in range(self.steps + 1)]
        morf_auc, lerf_auc = curve_auc(morf), curve_auc(lerf)
        return MetricValues({"gap": lerf_auc - morf_auc, "morf_auc": morf_auc, "lerf_auc": lerf_auc,
                             "morf_curve": morf, "lerf_curve": lerf},
                            {"morf_curve": labels, "lerf_curve": labels})

    def options(self) -> dict[str, Any]:
        return {"steps": self.steps, **self.perturbation.options()}


class AverageDrop(Metric):
    """Average Drop and Increase in Confidence (Grad-CAM++): Y = target probability on the input,
    O = on the input multiplied by its [0, 1] map. ``average_drop`` = mean max(0, Y - O) / Y x 100
    (lower is better); ``increase_in_confidence`` = % of samples with O > Y.

    ``space="normalized"`` multiplies the tensor the model sees; ``"raw"`` un-standardises it with the
    data set's ``(mean, std)``, multiplies the raw image, and standardises again. They differ: in the
    normalised space a masked pixel goes to the data set mean, in the raw space to black."""

    name = "average_drop"
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


METRICS = (Deletion, Insertion, RoadMetric, AverageDrop,)
