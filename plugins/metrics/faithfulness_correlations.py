"""Faithfulness metrics that correlate relevance with the effect of removing it: Quantus's
FaithfulnessCorrelation, FaithfulnessEstimate, MonotonicityCorrelation, SensitivityN, Infidelity and
Sufficiency, Xplique's MuFidelity and captum's infidelity (an option of ``infidelity``).

All run on the one perturbation engine (``plugins/metrics/engine.py``); random subsets, fill values and
noise come from generators seeded by ``(seed, sample id, draw)``, so a sample's value does not depend
on its batch. Quantus's own draws can be injected in tests through the ``draw_*`` methods."""

from __future__ import annotations

from typing import Any

from camkit_plugins.metrics.base import EvalBatch, MetricValues
from camkit_plugins.metrics.faithfulness import CONVENTIONS, FaithfulnessMetric, positive


class FaithfulnessCorrelation(FaithfulnessMetric):
    """Faithfulness Correlation (Bhatt et al., IJCAI 2020): ``nr_runs`` random subsets of ``subset_size``
    features are removed; value = correlation (``similarity_func``, Pearson) between the subsets'
    summed relevance and the drops of the target score, higher is better; NaN when either is constant.

    Options (Quantus 0.6): ``nr_runs=100``, ``subset_size=224``, ``perturb_baseline="black"``,
    ``similarity_func="pearson"`` (or ``"spearman"``), ``normalise=True``, ``abs=False``,
    ``softmax=False`` (logits), ``features="site"`` (Quantus: ``"element"``). Cost: 1 + nr_runs forwards
    per sample. Subsets are seeded per sample (Quantus draws from numpy's global state)."""

    name = "faithfulness_correlation"
    quantus_name = "FaithfulnessCorrelation"
    primary = "correlation"
    higher_is_better = True
    defaults = {"nr_runs": 100, "subset_size": 224, "perturb_baseline": "black", "similarity_func": "pearson",
                "normalise": True, "abs": False, "softmax": False, "features": "site"}

    def validate(self) -> None:
        positive("nr_runs", self.config.nr_runs)
        positive("subset_size", self.config.subset_size)

    def draw_subsets(self, batch: EvalBatch, features: int) -> Any:
        """``(N, nr_runs, subset_size)`` feature indices (replace to inject other draws)."""
        from camkit_plugins.metrics.engine import random_subsets

        c = self.config
        return random_subsets(batch, features, int(c.nr_runs), int(c.subset_size), f"{self.name}:subsets")

    def evaluate(self, batch: EvalBatch) -> MetricValues:
        from camkit_plugins.metrics.engine import clean_scores, correlation, removal_scores, subsets

        features = self.features(batch)
        chosen = self.draw_subsets(batch, features.count).to(features.attributions.device)
        n, runs, size = chosen.shape
        sums = features.attributions.gather(1, chosen.reshape(n, -1)).view(n, runs, size).sum(dim=2)
        scores = removal_scores(batch, features, subsets(chosen, features.count), runs, self.perturbation(batch),
                                self.output)
        drops = clean_scores(batch, self.output)[:, None] - scores
        return MetricValues({"correlation": correlation(self.config.similarity_func)(sums, drops)})


class FaithfulnessEstimate(FaithfulnessMetric):
    """Faithfulness Estimate (Alvarez-Melis & Jaakkola, NeurIPS 2018): remove each window of
    ``features_in_step`` features (in decreasing relevance) on its own; value = correlation
    (``similarity_func``: Pearson, Quantus's code default, though its docstring says Spearman) between
    the windows' summed relevance and the drops of the target score, higher is better.

    Options (Quantus 0.6): ``features_in_step=1``, ``perturb_baseline="black"``,
    ``similarity_func="pearson"``, ``normalise=True``, ``abs=False``, ``softmax=False``,
    ``features="site"``, ``convention="camkit"`` (``"quantus"``: ties in numpy's order).
    Cost: 1 + ceil(F / features_in_step) forwards per sample."""

    name = "faithfulness_estimate"
    quantus_name = "FaithfulnessEstimate"
    primary = "correlation"
    higher_is_better = True
    defaults = {"features_in_step": 1, "perturb_baseline": "black", "similarity_func": "pearson",
                "normalise": True, "abs": False, "softmax": False, "features": "site", "convention": "camkit"}

    def validate(self) -> None:
        positive("features_in_step", self.config.features_in_step)

    def evaluate(self, batch: EvalBatch) -> MetricValues:
        from camkit_plugins.metrics import engine

        features = self.features(batch)
        width = int(self.config.features_in_step)
        stops = engine.step_counts(features.count, width, features.attributions.device)
        order = self.ranks(batch, features.attributions)
        scores = engine.removal_scores(batch, features, engine.window(order, stops - width, stops), len(stops),
                                self.perturbation(batch), self.output)
        drops = engine.clean_scores(batch, self.output)[:, None] - scores
        sums = engine.window_sums(features.attributions, order, width, len(stops))
        return MetricValues({"correlation": engine.correlation(self.config.similarity_func)(sums, drops)})


class MonotonicityCorrelation(FaithfulnessMetric):
    """Monotonicity Correlation (Nguyen & Rodríguez Martínez, 2020): each window of ``features_in_step``
    features (in increasing relevance) is perturbed ``nr_samples`` times on its own; its variance =
    mean (f(x') - f(x))² / f(x)² (by 1 when |f(x)| < ``eps``); value = correlation (Spearman) between
    the windows' summed relevance and their variances, higher is better.

    Options (Quantus 0.6): ``nr_samples=100``, ``features_in_step=1``, ``eps=1e-5``,
    ``perturb_baseline="uniform"`` (one U(0, 1) value per copy, seeded), ``similarity_func="spearman"``,
    ``normalise=True``, ``abs=True``, ``softmax=True``, ``features="site"``, ``convention="camkit"``
    (``"quantus"``: ties in numpy's order).
    Cost: 1 + nr_samples x ceil(F / features_in_step) forwards per sample (224 px RGB, element: 15 M)."""

    name = "monotonicity_correlation"
    quantus_name = "MonotonicityCorrelation"
    primary = "correlation"
    higher_is_better = True
    defaults = {"nr_samples": 100, "features_in_step": 1, "eps": 1e-5, "perturb_baseline": "uniform",
                "similarity_func": "spearman", "normalise": True, "abs": True, "softmax": True, "features": "site",
                "convention": "camkit"}

    def validate(self) -> None:
        positive("nr_samples", self.config.nr_samples)
        positive("features_in_step", self.config.features_in_step)

    def evaluate(self, batch: EvalBatch) -> MetricValues:
        import torch

        from camkit_plugins.metrics import engine

        features = self.features(batch)
        width, draws = int(self.config.features_in_step), int(self.config.nr_samples)
        stops = engine.step_counts(features.count, width, features.attributions.device)
        order = self.ranks(batch, features.attributions, descending=False)
        inner = engine.window(order, stops - width, stops)
        # copy c = window c // draws, draw c % draws
        scores = engine.removal_scores(batch, features, lambda owner, copy: inner(owner, copy // draws),
                                len(stops) * draws, self.perturbation(batch), self.output)
        clean = engine.clean_scores(batch, self.output)
        inverse = torch.where(clean.abs() >= self.config.eps, 1.0 / clean.abs().clamp_min(1e-300),
                              torch.ones_like(clean)) ** 2
        spread = ((scores.view(len(clean), len(stops), draws) - clean[:, None, None]) ** 2).mean(dim=2)
        variances = spread * inverse[:, None]
        sums = engine.window_sums(features.attributions, order, width, len(stops))
        return MetricValues({"correlation": engine.correlation(self.config.similarity_func)(sums, variances)})


class SensitivityN(FaithfulnessMetric):
    """Sensitivity-n (Ancona et al., ICLR 2018): for ``nr_steps`` subset sizes n, log-spaced from
    ``features_in_step`` to ``n_max_percentage`` x F, remove ``nr_samples`` random subsets of n features;
    ``curve`` (N, nr_steps) = per-sample Pearson correlation between the subsets' summed relevance and
    the drops of the target score; ``mean`` = its mean over n, higher is better.

    Quantus fault (fixed): Quantus removes the features cumulatively in decreasing relevance and
    correlates *across the samples of the first batch* at each step, dropping every other batch.
    ``convention="quantus"`` returns its per-sample ingredients, ``att_sums`` and ``pred_deltas``
    (N, steps), and ``quantus_sensitivity_n`` correlates them over every sample given (``mean`` is then
    NaN: Quantus's score has no per-sample value).

    Options: ``n_max_percentage=0.8``, ``features_in_step=1``, ``perturb_baseline="black"``,
    ``similarity_func="pearson"``, ``normalise=True``, ``abs=False``, ``softmax=True``,
    ``features="site"``, camkit's ``nr_steps=10``, ``nr_samples=100``, ``convention="camkit"``.
    Cost: 1 + nr_steps x nr_samples forwards per sample (quantus: 1 + n_max_percentage x sites /
    features_in_step)."""

    name = "sensitivity_n"
    quantus_name = "SensitivityN"
    primary = "mean"
    higher_is_better = True
    defaults = {"n_max_percentage": 0.8, "features_in_step": 1, "perturb_baseline": "black",
                "similarity_func": "pearson", "normalise": True, "abs": False, "softmax": True, "features": "site",
                "nr_steps": 10, "nr_samples": 100, "convention": "camkit"}

    def validate(self) -> None:
        c = self.config
        positive("features_in_step", c.features_in_step)
        positive("nr_steps", c.nr_steps)
        positive("nr_samples", c.nr_samples)
        if not 0 < float(c.n_max_percentage) <= 1:
            raise ValueError(f"n_max_percentage must lie in (0, 1], got {c.n_max_percentage}")

    def subset_sizes(self, features: int) -> list[int]:
        import numpy as np

        c = self.config
        low, high = int(c.features_in_step), max(int(c.features_in_step), int(c.n_max_percentage * features))
        sizes = np.unique(np.round(np.geomspace(low, high, int(c.nr_steps))).astype(int))
        return [int(k) for k in sizes if 1 <= k <= features]

    def evaluate(self, batch: EvalBatch) -> MetricValues:
        if self.config.convention == "quantus":
            return self._quantus(batch)
        import torch

        from camkit_plugins.metrics.engine import clean_scores, correlation, random_subsets, removal_scores, subsets

        features = self.features(batch)
        similarity = correlation(self.config.similarity_func)
        clean = clean_scores(batch, self.output)[:, None]
        sizes = self.subset_sizes(features.count)
        curve = []
        for size in sizes:
            chosen = random_subsets(batch, features.count, int(self.config.nr_samples), size, f"{self.name}:{size}")
            n, draws, _ = chosen.shape
            sums = features.attributions.gather(1, chosen.reshape(n, -1)).view(n, draws, size).sum(dim=2)
            scores = removal_scores(batch, features, subsets(chosen, features.count), draws,
                                    self.perturbation(batch), self.output)
            curve.append(similarity(sums, clean - scores))
        stacked = torch.stack(curve, dim=1)
        return MetricValues({"mean": stacked.nanmean(dim=1), "curve": stacked}, {"curve": [str(k) for k in sizes]})

    def _quantus(self, batch: EvalBatch) -> MetricValues:
        import torch

        from camkit_plugins.metrics.engine import (
            Features,
            clean_scores,
            cumulative,
            removal_scores,
            step_counts,
            window_sums,
        )

        c = self.config
        # Quantus divides the whole batch by one max: a common scale, which a correlation across samples ignores,
        # so the sums stay unnormalised (a per-sample max would change it)
        features = Features(batch, c.features, normalise=False, abs=c.abs)
        width = int(self.config.features_in_step)
        sites = 1
        for size in batch.site_shape:
            sites *= size
        steps = int(self.config.n_max_percentage * sites // width)
        stops = step_counts(features.count, width, features.attributions.device)[:steps]
        order = self.ranks(batch, features.attributions)
        scores = removal_scores(batch, features, cumulative(order, stops), len(stops), self.perturbation(batch),
                                self.output)
        deltas = clean_scores(batch, self.output)[:, None] - scores
        sums = window_sums(features.attributions, order, width, -(-features.count // width))[:, :len(stops)]
        labels = [str(int(k)) for k in stops]
        # Quantus's score exists only across samples: no per-sample value (NaN, counted as undefined)
        undefined = torch.full((len(sums),), float("nan"), dtype=torch.float64, device=sums.device)
        return MetricValues({"mean": undefined, "att_sums": sums, "pred_deltas": deltas},
                            {"att_sums": labels, "pred_deltas": labels})


def quantus_sensitivity_n(att_sums: Any, pred_deltas: Any, similarity_func: str = "pearson") -> Any:
    """Quantus's SensitivityN score from ``sensitivity_n(convention="quantus")``'s ``(N, steps)`` values,
    gathered over the whole data set: ``(steps,)`` correlations across the samples at each step."""
    from camkit_plugins.metrics.engine import correlation

    return correlation(similarity_func)(pred_deltas.T, att_sums.T)


class Infidelity(FaithfulnessMetric):
    """Infidelity (Yeh et al., NeurIPS 2019): mean over perturbations I of (sum(a * I) - (f(x) - f(x - I)))²,
    lower is better.

    ``convention="camkit"`` (default) and ``"quantus"``: Quantus's perturbations, for each patch size in
    ``perturb_patch_sizes`` the patches (raster order) are set to ``perturb_baseline`` one more at a time,
    I = x - x'; mean over patches, patch sizes and ``n_perturb_samples`` repeats (run once when the
    fill is not random: the repeats are identical). Quantus fault (fixed): it crashes when the image
    side is not divisible by the patch; camkit pads the grid evenly as Quantus's other patch metrics do.
    ``convention="captum"``: captum's convention, I ~ N(0, ``noise_std``²) on every input element,
    ``n_perturb_samples`` draws, ``normalize`` scales the attributions by captum's optimal beta first.

    Options (Quantus 0.6): ``loss_func="mse"``, ``perturb_patch_sizes=[4]``, ``n_perturb_samples=10``,
    ``perturb_baseline="black"``, ``normalise=False``, ``abs=False``, ``softmax=False``; captum's
    ``noise_std=0.003``, ``normalize=False``. Cost: 1 + sum of patches per size (x n_perturb_samples for a
    random fill) forwards per sample; captum: 1 + n_perturb_samples."""

    name = "infidelity"
    quantus_name = "Infidelity"
    primary = "infidelity"
    higher_is_better = False
    defaults = {"loss_func": "mse", "perturb_patch_sizes": None, "n_perturb_samples": 10,
                "perturb_baseline": "black", "normalise": False, "abs": False, "softmax": False,
                "noise_std": 0.003, "normalize": False, "convention": "camkit"}
    choices = {"loss_func": ("mse",), "convention": (*CONVENTIONS, "captum")}

    def validate(self) -> None:
        c = self.config
        c.perturb_patch_sizes = list(c.perturb_patch_sizes or [4])
        for size in c.perturb_patch_sizes:
            positive("perturb_patch_sizes", size)
        positive("n_perturb_samples", c.n_perturb_samples)

    def relevance(self, batch: EvalBatch) -> Any:
        """The map, pre-processed, broadcast onto the input's shape (batch first)."""
        from camkit_plugins.metrics.engine import Features, to_input

        flat = Features(batch, "site", self.config.normalise, self.config.abs).attributions
        spread = to_input(batch, flat, "site").expand(batch.inputs.shape)
        return spread.movedim(batch.input_layout.batch_axis, 0).to(batch.inputs.dtype)

    def evaluate(self, batch: EvalBatch) -> MetricValues:
        import torch

        from camkit_plugins.metrics.engine import clean_scores, forward_scores

        relevance = self.relevance(batch)
        n = relevance.shape[0]
        clean = clean_scores(batch, self.output)
        groups, perturb = self._perturbations(batch)
        copies = sum(groups)
        explained = torch.zeros(n, copies, dtype=torch.float64, device=relevance.device)
        layout = batch.input_layout

        def perturb_and_explain(inputs: Any, owner: Any, copy: Any) -> Any:
            perturbed = perturb(inputs, owner, copy)
            change = (inputs - perturbed).movedim(layout.batch_axis, 0)
            explained[owner, copy] = (relevance[owner] * change).flatten(1).sum(dim=1).double()
            return perturbed

        drops = clean[:, None] - forward_scores(batch, copies, perturb_and_explain, self.output)
        if self.config.convention == "captum" and self.config.normalize:
            beta = (explained * drops).mean(dim=1) / (explained ** 2).mean(dim=1).clamp_min(1e-300)
            explained = explained * beta[:, None]
        losses = ((explained - drops) ** 2).split(groups, dim=1)
        # mean within each patch size, then over sizes and repeats (Quantus's order)
        return MetricValues({"infidelity": torch.stack([part.mean(dim=1) for part in losses], dim=1).mean(dim=1)})

    def _perturbations(self, batch: EvalBatch) -> tuple[list[int], Any]:
        """The perturbed copies per sample, in groups averaged separately, and ``perturb(inputs, owner, copy)``."""
        import torch

        from camkit_plugins.metrics.base import sample_generator
        from camkit_plugins.metrics.engine import Features, block_labels

        c = self.config
        layout = batch.input_layout
        indices = torch.as_tensor(batch.indices).reshape(-1)
        if c.convention == "captum":
            def add_noise(inputs: Any, owner: Any, copy: Any) -> Any:
                shape = inputs.movedim(layout.batch_axis, 0).shape[1:]
                noise = torch.stack([torch.randn(shape, generator=sample_generator(
                    batch.seed, int(indices[o]), f"{self.name}:noise:{int(d)}"), dtype=torch.float64)
                    for o, d in zip(owner.tolist(), copy.tolist())])
                noise = (c.noise_std * noise).to(device=inputs.device, dtype=inputs.dtype)
                return inputs - noise.movedim(0, layout.batch_axis)

            return [int(c.n_perturb_samples)], add_noise
        features = Features(batch, "site", normalise=False)
        perturbation = self.perturbation(batch)
        repeats = 1 if perturbation.precomputable else int(c.n_perturb_samples)
        grids = [block_labels(batch, size) for size in c.perturb_patch_sizes]
        schedule = [(labels, k) for _ in range(repeats) for labels, count in grids for k in range(1, count + 1)]
        fill = perturbation.fill(batch.inputs, layout, batch.indices) if perturbation.precomputable else None
        fill_b = fill.movedim(layout.batch_axis, 0) if fill is not None else None

        def remove_patches(inputs: Any, owner: Any, copy: Any) -> Any:
            removed = torch.stack([labels < k for labels, k in (schedule[int(i)] for i in copy.tolist())])
            chunk_fill = fill_b[owner].movedim(0, layout.batch_axis) if fill_b is not None else None
            return perturbation.apply(inputs, features.to_input(removed), layout, indices[owner.cpu()],
                                      fill=chunk_fill, draws=copy.cpu())

        return [count for _ in range(repeats) for _, count in grids], remove_patches


class Sufficiency(FaithfulnessMetric):
    """Sufficiency (Dasgupta et al., ICML 2022): among the other samples whose explanations lie within
    ``threshold`` of this one's, the share predicted as the same class, higher is better; NaN when no
    other sample is that close. The comparison set is the batch: evaluate the data set as one batch.

    Quantus fault (fixed): Quantus measures "close" with the standardised Euclidean distance, whose
    variances come from the batch, divided by the batch's largest distance, so whether two samples are
    close depends on which others share their batch; and it scores 0 where no sample is close. camkit's
    default ``distance_func="euclidean"`` is the root-mean-square difference of the two pre-processed maps
    (in [0, 1] for [0, 1] maps), so each pair's verdict is fixed. ``convention="quantus"`` reproduces
    Quantus (``"seuclidean"``, max-normalised, 0 when none).

    Options (Quantus 0.6): ``threshold=0.6``, ``distance_func`` (camkit: ``"euclidean"``; Quantus:
    ``"seuclidean"``), ``normalise=True``, ``abs=True``, ``convention="camkit"``. Cost: 1 forward per
    sample."""

    name = "sufficiency"
    quantus_name = "Sufficiency"
    primary = "sufficiency"
    higher_is_better = True
    defaults = {"threshold": 0.6, "distance_func": None, "normalise": True, "abs": True, "convention": "camkit"}

    def validate(self) -> None:
        if self.config.distance_func is None:
            self.config.distance_func = "seuclidean" if self.config.convention == "quantus" else "euclidean"

    def evaluate(self, batch: EvalBatch) -> MetricValues:
        import numpy as np
        import torch

        from camkit_plugins.metrics.engine import Features

        quantus = self.config.convention == "quantus"
        # Quantus normalises by the whole batch's max: one scale, which its standardised distance ignores
        flat = Features(batch, "site", self.config.normalise and not quantus, self.config.abs).attributions
        n = flat.shape[0]
        if quantus:
            from scipy.spatial.distance import cdist

            array = flat.cpu().numpy()
            distances = torch.as_tensor(cdist(array, array, self.config.distance_func), device=flat.device)
            peak = distances.abs().max()
            distances = distances / peak if peak > 0 else distances
        elif self.config.distance_func == "euclidean":
            distances = torch.cdist(flat, flat) / np.sqrt(max(1, flat.shape[1]))
        else:
            from scipy.spatial.distance import cdist

            array = flat.cpu().numpy()
            distances = torch.as_tensor(cdist(array, array, self.config.distance_func), device=flat.device)
        close = (distances <= self.config.threshold) & ~torch.eye(n, dtype=torch.bool, device=flat.device)
        predicted = batch.top1().to(flat.device)
        same = (predicted[None, :] == predicted[:, None]) & close
        count = close.sum(dim=1).double()
        share = same.sum(dim=1).double() / count.clamp_min(1)
        empty = 0.0 if self.config.convention == "quantus" else float("nan")
        return MetricValues({"sufficiency": torch.where(count > 0, share, torch.full_like(share, empty))})


class MuFidelity(FaithfulnessMetric):
    """MuFidelity (Bhatt et al., IJCAI 2020, as Xplique's ``MuFidelity``): the continuous axes are cut
    into a ``grid_size`` grid (cells reach sites by nearest resizing, as ``tf.image.resize``), each cell
    removed with probability ``subset_percent`` and set to ``baseline_mode``; value = Spearman correlation
    between the removed relevance (summed over sites) and the drop of the target score over
    ``nb_samples`` draws, higher is better. NaN where the drops are constant (Xplique scores 0).

    Options (Xplique): ``grid_size=9``, ``subset_percent=0.2``, ``baseline_mode=0.0`` (or any
    ``perturb_baseline`` name), ``nb_samples=200``, ``softmax=False`` (Xplique's ``activation=None``).
    Cost: 1 + nb_samples forwards per sample."""

    name = "mu_fidelity"
    primary = "correlation"
    higher_is_better = True
    defaults = {"grid_size": 9, "subset_percent": 0.2, "baseline_mode": 0.0, "nb_samples": 200, "softmax": False}

    def validate(self) -> None:
        positive("grid_size", self.config.grid_size)
        positive("nb_samples", self.config.nb_samples)
        if not 0 < float(self.config.subset_percent) < 1:
            raise ValueError(f"subset_percent must lie in (0, 1), got {self.config.subset_percent}")

    def grid_labels(self, batch: EvalBatch) -> tuple[Any, int]:
        """``(S,)`` grid cell of each site and the number of cells."""
        import torch

        continuous = batch.input_layout.continuous_letters
        shape, letters = batch.site_shape, batch.map_letters[1:]
        coords = torch.meshgrid(*[torch.arange(size) for size in shape], indexing="ij")
        label = torch.zeros(shape, dtype=torch.long)
        for axis, (letter, size) in enumerate(zip(letters, shape)):
            cells = int(self.config.grid_size) if letter in continuous else size
            cell = ((coords[axis] + 0.5) * cells / size).floor().long().clamp_max(cells - 1)
            label = label * cells + cell
        _, dense = torch.unique(label.reshape(-1), return_inverse=True)
        return dense.to(batch.maps.device), int(dense.max().item()) + 1

    def draw_cells(self, batch: EvalBatch, cells: int) -> Any:
        """``(N, nb_samples, cells)`` boolean, True = removed (replace to inject other draws)."""
        import torch

        from camkit_plugins.metrics.base import sample_generator

        rows = [torch.rand(int(self.config.nb_samples), cells, generator=sample_generator(batch.seed, i, self.name))
                for i in batch.indices.reshape(-1).tolist()]
        return (torch.stack(rows) <= float(self.config.subset_percent)).to(batch.maps.device)

    def evaluate(self, batch: EvalBatch) -> MetricValues:
        from camkit_plugins.metrics.base import spearman
        from camkit_plugins.metrics.engine import Features, baseline, clean_scores, removal_scores

        features = Features(batch, "site", normalise=False)
        labels, cells = self.grid_labels(batch)
        removed_cells = self.draw_cells(batch, cells)
        site_removed = removed_cells[:, :, labels]  # (N, draws, S)
        sums = (site_removed * features.attributions[:, None, :]).sum(dim=2)
        scores = removal_scores(batch, features, lambda owner, copy: site_removed[owner, copy],
                                int(self.config.nb_samples), baseline(self.config.baseline_mode, seed=batch.seed),
                                self.output)
        drops = clean_scores(batch, self.output)[:, None] - scores
        return MetricValues({"correlation": spearman(sums, drops)})


METRICS = (FaithfulnessCorrelation, FaithfulnessEstimate, MonotonicityCorrelation, SensitivityN, Infidelity,
           Sufficiency, MuFidelity)
