"""Randomisation metrics (Quantus 0.6's family of 4): do the maps depend on the learned weights and on the
explained class? MPRT, Smooth MPRT, Efficient MPRT (cascading parameter randomisation) and Random Logit.

Every map comes through the batch's re-explanation path ``batch.explain(model, inputs, targets)`` (any
camkit method). Randomised models are deep copies: the user's model, its mode and its gradients are left
as they were. Layers are Quantus's: every module with ``reset_parameters`` (BatchNorm counted), in
``named_modules`` order, reversed for ``layer_order="top_down"``; each is re-initialised by its own
``reset_parameters`` under a CPU generator seeded from ``seed`` (the global random state is untouched, and
a model on a GPU gets the very same weights). ``convention="quantus"`` seeds every layer with
``seed + 1`` exactly as Quantus's ``torch.manual_seed(seed + 1)`` does, so ``seed=42`` reproduces its
randomised models; camkit's default gives every layer its own seed (Quantus gives layers of the same shape
the same weights).

The cascading check of ``sanity.py`` stays registered as ``randomization`` (parameter groups by name)."""

from __future__ import annotations

from typing import Any, Iterator

from camkit_plugins.metrics.base import EvalBatch, Metric, MetricValues, check_options
from camkit_plugins.metrics.robustness import CONVENTIONS, batch_first, from_batch_first, postprocess, reexplain

LAYER_ORDERS = ("top_down", "bottom_up", "independent")
SIMILARITIES = ("correlation_spearman", "correlation_pearson", "ssim")


def randomisable_layers(model: Any) -> list[tuple[str, Any]]:
    """Quantus's layers: every module of ``model`` with a ``reset_parameters`` method, in module order."""
    return [(name, module) for name, module in model.named_modules() if hasattr(module, "reset_parameters")]


def reset_layer_(module: Any, seed: int) -> None:
    """``module.reset_parameters()`` with torch's CPU generator seeded by ``seed`` (as Quantus's
    ``torch.manual_seed(seed)`` then reset, on the CPU), moved back to its device after; the caller's random
    state, CPU or CUDA, is restored."""
    import torch

    devices = {t.device for t in [*module.parameters(), *module.buffers()]}
    device = devices.pop() if len(devices) == 1 else None
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.default_generator.manual_seed(int(seed))
        if device is not None and device.type != "cpu":
            module.to("cpu")
        module.reset_parameters()
        if device is not None and device.type != "cpu":
            module.to(device)


def randomised_models(model: Any, order: str, seed: int, convention: str) -> Iterator[tuple[str, Any]]:
    """Yield ``(layer name, model copy)`` with one more layer randomised each time (cascading), or, with
    ``order="independent"``, only that layer randomised. The copy is made once; ``model`` is not touched."""
    import copy

    randomised = copy.deepcopy(model)
    layers = randomisable_layers(randomised)
    if not layers:
        raise ValueError(f"model {type(model).__name__} has no module with reset_parameters to randomise")
    if order == "top_down":
        layers = layers[::-1]
    original = copy.deepcopy(randomised.state_dict()) if order == "independent" else None
    for position, (name, module) in enumerate(layers):
        if original is not None:
            randomised.load_state_dict(original)
        reset_layer_(module, seed + 1 if convention == "quantus" else seed * 1_000_003 + position + 1)
        yield name or type(model).__name__, randomised


def similarity(name: str, a: Any, b: Any, site_shape: tuple[int, ...], map_letters: str, convention: str) -> Any:
    """Per-row similarity of ``(N, S)`` maps: Spearman (ties averaged, as scipy), Pearson or SSIM."""
    from camkit_plugins.metrics.base import spearman

    if name == "correlation_spearman":
        return spearman(a, b)
    if name == "correlation_pearson":
        return pearson(a, b)
    shape = (a.shape[1],) if convention == "quantus" else site_shape  # Quantus: SSIM of the flattened maps
    return ssim(a.reshape(-1, *shape), b.reshape(-1, *shape), window_axes(shape, map_letters, convention))


def pearson(a: Any, b: Any) -> Any:
    import torch

    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    denom = a.norm(dim=1) * b.norm(dim=1)
    return torch.where(denom > 0, (a * b).sum(dim=1) / denom.clamp_min(1e-300), torch.full_like(denom, float("nan")))


def window_axes(shape: tuple[int, ...], map_letters: str, convention: str) -> tuple[int, ...]:
    """SSIM window per axis: 7 (skimage's default) along continuous axes, at most the axis length (odd),
    1 along discrete axes (joints)."""
    from camkit.layout import CONTINUOUS, axis_kinds

    kinds = axis_kinds()
    letters = "L" if convention == "quantus" else map_letters[1:]
    windows = []
    for size, letter in zip(shape, letters):
        if kinds.get(letter) != CONTINUOUS:
            windows.append(1)
        else:
            windows.append(min(7, size if size % 2 else size - 1))
    return tuple(windows)


def ssim(a: Any, b: Any, windows: tuple[int, ...]) -> Any:
    """Mean structural similarity per sample (Wang et al. 2004) as ``skimage.metrics.structural_similarity``
    computes it: uniform windows, K1 = 0.01, K2 = 0.03, sample covariances, data range = max - min of both
    maps, mean over the positions whose window lies inside the map. ``a``, ``b``: ``(N, *sites)``."""
    import math

    import torch

    a, b = a.double(), b.double()
    n = a.shape[0]
    both = torch.cat([a.reshape(n, -1), b.reshape(n, -1)], dim=1)
    data_range = (both.amax(dim=1) - both.amin(dim=1)).view(-1, *([1] * (a.ndim - 1)))

    def local_mean(t: Any) -> Any:
        for axis, size in enumerate(windows, start=1):
            t = t.unfold(axis, size, 1).mean(dim=-1)
        return t

    points = math.prod(windows)
    cov_norm = points / (points - 1) if points > 1 else 1.0
    ux, uy = local_mean(a), local_mean(b)
    vx = cov_norm * (local_mean(a * a) - ux * ux)
    vy = cov_norm * (local_mean(b * b) - uy * uy)
    vxy = cov_norm * (local_mean(a * b) - ux * uy)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux ** 2 + uy ** 2 + c1) * (vx + vy + c2))
    return s.reshape(n, -1).mean(dim=1)


class MPRT(Metric):
    """Model Parameter Randomisation Test (Adebayo et al., NeurIPS 2018; Quantus's MPRT): randomise the
    layers one after another (cascading, ``layer_order``), re-explain the batch for the same targets after
    each, and compare with the original maps. Values: ``correlation`` (a curve over the layers),
    ``average_correlation`` (its mean) and ``last_correlation`` (the fully randomised model). Lower is
    better: a method whose maps survive randomisation does not explain the model.

    Quantus's fault fixed: its ``return_average_correlation`` averages in the original-vs-original score
    (it skips a key ``"orig"`` while the key is ``"original"``), pulling every average towards 1;
    ``convention="quantus"`` reproduces it (one more re-explanation of the unchanged model).

    Cost: one re-explanation per layer (L: every module with ``reset_parameters``, BatchNorm included;
    ``skip_layers=True``: one, of the fully randomised model). Options (Quantus's names and defaults):
    ``similarity_func="correlation_spearman"`` (or ``"correlation_pearson"``, ``"ssim"``),
    ``layer_order="top_down"`` (``"bottom_up"``, ``"independent"``), ``seed=None`` (the batch's seed; Quantus
    uses 42), ``return_average_correlation=False``, ``return_last_correlation=False`` (which value is the
    primary; default the average), ``skip_layers=False``, ``abs=True``, ``normalise=True``, ``convention``.
    NaN: a constant map (correlation undefined)."""

    name = "mprt"
    family = "randomisation"
    quantus_name = "MPRT"
    primary = "average_correlation"
    higher_is_better = False
    default_order = "top_down"

    def __init__(self, similarity_func: str = "correlation_spearman", layer_order: str | None = None,
                 seed: int | None = None, return_average_correlation: bool = False,
                 return_last_correlation: bool = False, skip_layers: bool = False, abs: bool = True,
                 normalise: bool = True, convention: str = "camkit") -> None:
        check_options("similarity_func", similarity_func, SIMILARITIES)
        self.layer_order = layer_order or self.default_order
        check_options("layer_order", self.layer_order, LAYER_ORDERS)
        check_options("convention", convention, CONVENTIONS)
        if return_average_correlation and return_last_correlation:
            raise ValueError("return_average_correlation and return_last_correlation cannot both be True")
        if return_average_correlation and skip_layers:
            raise ValueError("return_average_correlation needs every layer: it cannot go with skip_layers=True")
        self.similarity_func, self.seed, self.convention = similarity_func, seed, convention
        self.return_average_correlation = bool(return_average_correlation)
        self.return_last_correlation = bool(return_last_correlation)
        self.skip_layers, self.abs, self.normalise = bool(skip_layers), bool(abs), bool(normalise)
        if self.return_last_correlation or self.skip_layers:
            self.primary = "last_correlation"

    def explain(self, batch: EvalBatch, model: Any) -> Any:
        """``(N, S)`` maps of the batch by ``model`` (Smooth MPRT averages noisy copies here)."""
        return reexplain(batch, batch.inputs, model)

    def compare(self, batch: EvalBatch, original: Any, maps: Any) -> Any:
        return similarity(self.similarity_func, original, postprocess(maps, self.normalise, self.abs, self.convention),
                          batch.site_shape, batch.map_letters, self.convention)

    def original_maps(self, batch: EvalBatch) -> Any:
        return postprocess(batch.flat_maps().double(), self.normalise, self.abs, self.convention)

    def evaluate(self, batch: EvalBatch) -> MetricValues:
        import torch

        seed = batch.seed if self.seed is None else int(self.seed)
        original = self.original_maps(batch)
        layers = randomised_models(batch.model, self.layer_order, seed, self.convention)
        names, rows = [], []
        total = len(randomisable_layers(batch.model))
        for position, (name, model) in enumerate(layers):
            if self.skip_layers and position + 1 < total:
                continue
            names.append(name)
            rows.append(self.compare(batch, original, self.explain(batch, model)))
        curve = torch.stack(rows, dim=1)
        average = torch.nanmean(curve, dim=1)
        if self.convention == "quantus" and not self.skip_layers:  # Quantus averages in original vs original
            itself = self.compare(batch, original, self.explain(batch, batch.model))
            average = torch.nanmean(torch.cat([itself[:, None], curve], dim=1), dim=1)
        return MetricValues({"average_correlation": average, "last_correlation": curve[:, -1], "correlation": curve},
                            {"correlation": names})

    def options(self) -> dict[str, Any]:
        return {"similarity_func": self.similarity_func, "layer_order": self.layer_order, "seed": self.seed,
                "return_average_correlation": self.return_average_correlation,
                "return_last_correlation": self.return_last_correlation, "skip_layers": self.skip_layers,
                "abs": self.abs, "normalise": self.normalise, "convention": self.convention}


class SmoothMPRT(MPRT):
    """Smooth MPRT (Hedström et al., TMLR 2023): MPRT on denoised maps, each the mean of the maps of
    ``nr_samples`` copies of the input, ``nr_samples - 1`` of them with Gaussian noise of std
    ``noise_magnitude`` x (max - min) of the sample and the last one clean, for the original model and for
    every randomised one. The noise comes from each sample's own generator (``batch.seed``, sample id) and is
    the same for every model (common random numbers: the comparison sees the models' difference, not the
    noise's). Lower is better.

    Cost: ``nr_samples`` re-explanations per layer plus ``nr_samples`` for the original maps. Options
    (Quantus's defaults): ``nr_samples=50``, ``noise_magnitude=0.1``, ``layer_order="bottom_up"``, the rest as
    ``mprt``. Quantus's ``normalise`` divides by the average second moment, camkit's by the max: rank
    correlations (the default similarity) do not depend on it. Quantus's SmoothMPRT calls ``quantus.explain``
    and never the ``explain_func`` it is given; camkit uses the batch's method."""

    name = "smooth_mprt"
    quantus_name = "SmoothMPRT"
    default_order = "bottom_up"

    def __init__(self, nr_samples: int = 50, noise_magnitude: float = 0.1, **options: Any) -> None:
        super().__init__(**options)
        if int(nr_samples) < 1:
            raise ValueError(f"nr_samples must be >= 1, got {nr_samples}")
        self.nr_samples, self.noise_magnitude = int(nr_samples), float(noise_magnitude)

    def noise(self, batch: EvalBatch, draw: int, generators: list[Any], shape: tuple[int, ...]) -> Any:
        """Draw ``draw``'s ``(N, *shape)`` standard normal noise (a hook: parity tests inject Quantus's)."""
        import torch

        return torch.stack([torch.randn(shape, generator=g) for g in generators])

    def explain(self, batch: EvalBatch, model: Any) -> Any:
        from camkit_plugins.metrics.base import sample_generator

        layout = batch.input_layout
        xb = batch_first(batch.inputs, layout)
        n = xb.shape[0]
        flat = xb.reshape(n, -1)
        std = (self.noise_magnitude * (flat.amax(dim=1) - flat.amin(dim=1))).view(-1, *([1] * (xb.ndim - 1)))
        generators = [sample_generator(batch.seed, int(i), f"{self.name}:noise") for i in batch.indices.tolist()]
        total = None
        for draw in range(self.nr_samples):
            if draw == self.nr_samples - 1:
                noisy = xb
            else:
                noise = self.noise(batch, draw, generators, tuple(xb.shape[1:])).to(xb.device, xb.dtype)
                noisy = xb + noise * std
            maps = reexplain(batch, from_batch_first(noisy, layout), model)
            total = maps / self.nr_samples if total is None else total + maps / self.nr_samples
        return total

    def original_maps(self, batch: EvalBatch) -> Any:
        return postprocess(self.explain(batch, batch.model), self.normalise, self.abs, self.convention)

    def options(self) -> dict[str, Any]:
        return {**super().options(), "nr_samples": self.nr_samples, "noise_magnitude": self.noise_magnitude}


class EfficientMPRT(Metric):
    """Efficient MPRT (Hedström et al., TMLR 2023): the relative rise in the complexity of the maps when
    every layer is randomised, (H(a_random) - H(a)) / H(a), H = discrete entropy of the map's histogram
    (``n_bins`` equal bins over its range; scipy's entropy, natural log). Higher is better: maps of a random
    model should be noisier. Values: ``efficient_mprt`` and both complexities.

    Cost: one re-explanation (the fully randomised model; randomising costs no forward). Options (Quantus's
    names and defaults): ``complexity_func="discrete_entropy"``, ``n_bins=100`` (Quantus's
    ``complexity_func_kwargs={"n_bins": ...}`` is accepted too), ``layer_order="bottom_up"``, ``seed=None``
    (the batch's seed), ``skip_layers=True`` (the score only needs the last model: camkit never explains the
    intermediate ones), ``abs=False``, ``normalise=False``, ``convention``. NaN: H(a) = 0 (a map with one
    value)."""

    name = "efficient_mprt"
    family = "randomisation"
    quantus_name = "EfficientMPRT"
    primary = "efficient_mprt"
    higher_is_better = True

    def __init__(self, complexity_func: str = "discrete_entropy", complexity_func_kwargs: dict[str, Any] | None = None,
                 n_bins: int = 100, layer_order: str = "bottom_up", seed: int | None = None, skip_layers: bool = True,
                 abs: bool = False, normalise: bool = False, convention: str = "camkit") -> None:
        check_options("complexity_func", complexity_func, ("discrete_entropy",))
        check_options("layer_order", layer_order, LAYER_ORDERS)
        check_options("convention", convention, CONVENTIONS)
        n_bins = int((complexity_func_kwargs or {}).get("n_bins", n_bins))
        if n_bins < 1:
            raise ValueError(f"n_bins must be >= 1, got {n_bins}")
        self.complexity_func, self.n_bins, self.layer_order, self.seed = complexity_func, n_bins, layer_order, seed
        self.skip_layers, self.abs, self.normalise, self.convention = bool(skip_layers), bool(abs), bool(normalise), \
            convention

    def evaluate(self, batch: EvalBatch) -> MetricValues:
        import torch

        seed = batch.seed if self.seed is None else int(self.seed)
        model = None
        for _, model in randomised_models(batch.model, self.layer_order, seed, self.convention):
            pass  # cascading: the last copy has every layer randomised
        original = postprocess(batch.flat_maps().double(), self.normalise, self.abs, self.convention)
        randomised = postprocess(reexplain(batch, batch.inputs, model), self.normalise, self.abs, self.convention)
        before, after = discrete_entropy(original, self.n_bins), discrete_entropy(randomised, self.n_bins)
        score = torch.where(before != 0, (after - before) / before, torch.full_like(before, float("nan")))
        return MetricValues({"efficient_mprt": score, "complexity_original": before, "complexity_randomised": after})

    def options(self) -> dict[str, Any]:
        return {"complexity_func": self.complexity_func, "n_bins": self.n_bins, "layer_order": self.layer_order,
                "seed": self.seed, "skip_layers": self.skip_layers, "abs": self.abs, "normalise": self.normalise,
                "convention": self.convention}


def discrete_entropy(flat_maps: Any, n_bins: int) -> Any:
    """Per row: entropy (natural log) of the histogram of the values in ``n_bins`` equal bins over the row's
    [min, max] (numpy's rule: the last bin closed, a constant row binned over [v - 0.5, v + 0.5])."""
    import torch

    values = flat_maps.double()
    low, high = values.amin(dim=1, keepdim=True), values.amax(dim=1, keepdim=True)
    flat = high == low
    low, high = torch.where(flat, low - 0.5, low), torch.where(flat, high + 0.5, high)
    index = ((values - low) * (n_bins / (high - low))).long().clamp(0, n_bins - 1)
    # numpy's correction for values that rounding put one bin off their linspace edges
    edges = low + torch.arange(n_bins + 1, dtype=torch.float64, device=values.device) * ((high - low) / n_bins)
    edges[:, -1:] = high
    index = index - (values < edges.gather(1, index)).long()
    index = index + ((values >= edges.gather(1, index + 1)) & (index != n_bins - 1)).long()
    counts = torch.zeros(values.shape[0], n_bins, dtype=torch.float64, device=values.device)
    counts.scatter_add_(1, index, torch.ones_like(values))
    p = counts / counts.sum(dim=1, keepdim=True)
    return -(p * torch.where(p > 0, p.log(), torch.zeros_like(p))).sum(dim=1)


class RandomLogit(Metric):
    """Random Logit (Sixt et al., ICML 2020): explain each sample for a class drawn uniformly among the
    others and compare with its map for the target by SSIM. Lower is better (a map that does not change with
    the class does not explain the class). The off class is drawn from the sample's own generator
    (``batch.seed``, sample id): the same for any batch.

    Cost: one re-explanation (+ one forward when ``num_classes`` is not given). Options (Quantus's names):
    ``similarity_func="ssim"`` (or ``"correlation_spearman"``, ``"correlation_pearson"``), ``num_classes=None``
    (the model's output width; Quantus's default is 1000, wrong for any other model), ``seed=42`` (used by
    ``convention="quantus"`` only), ``abs=False``, ``normalise=True``, ``convention``: ``"quantus"`` draws the
    off classes as Quantus does (``np.random.seed(seed)`` per batch, so they depend on the batch) and computes
    SSIM on the flattened maps (1-D windows, as Quantus); camkit's SSIM slides windows over the map's own
    axes (7 x 7 on images)."""

    name = "random_logit"
    family = "randomisation"
    quantus_name = "RandomLogit"
    primary = "random_logit"
    higher_is_better = False

    def __init__(self, similarity_func: str = "ssim", num_classes: int | None = None, seed: int = 42,
                 abs: bool = False, normalise: bool = True, convention: str = "camkit") -> None:
        check_options("similarity_func", similarity_func, SIMILARITIES)
        check_options("convention", convention, CONVENTIONS)
        if num_classes is not None and int(num_classes) < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.similarity_func, self.num_classes, self.seed = similarity_func, num_classes, int(seed)
        self.abs, self.normalise, self.convention = bool(abs), bool(normalise), convention

    def off_classes(self, batch: EvalBatch, num_classes: int) -> Any:
        """``(N,)`` classes other than each sample's target, drawn uniformly."""
        import numpy as np
        import torch

        from camkit_plugins.metrics.base import sample_generator

        targets = batch.targets.reshape(-1).cpu()
        if self.convention == "quantus":  # Quantus's np.random.seed(seed) + randint, without touching numpy's state
            draws = torch.as_tensor(np.random.RandomState(self.seed).randint(0, num_classes - 1, len(targets)))
        else:
            draws = torch.cat([torch.randint(0, num_classes - 1, (1,),
                                             generator=sample_generator(batch.seed, int(i), f"{self.name}:class"))
                               for i in batch.indices.reshape(-1).tolist()])
        return (draws + (draws >= targets).long()).to(batch.targets.device)  # skip the target itself

    def evaluate(self, batch: EvalBatch) -> MetricValues:
        from camkit_plugins.metrics.robustness import model_outputs

        num_classes = self.num_classes
        if num_classes is None:
            first = from_batch_first(batch_first(batch.inputs, batch.input_layout)[:1], batch.input_layout)
            num_classes = int(model_outputs(batch.model, first, batch.input_layout).shape[1])
        original = postprocess(batch.flat_maps().double(), self.normalise, self.abs, self.convention)
        off = postprocess(reexplain(batch, batch.inputs, targets=self.off_classes(batch, num_classes)),
                          self.normalise, self.abs, self.convention)
        return MetricValues({"random_logit": similarity(self.similarity_func, original, off, batch.site_shape,
                                                        batch.map_letters, self.convention)})

    def options(self) -> dict[str, Any]:
        return {"similarity_func": self.similarity_func, "num_classes": self.num_classes, "seed": self.seed,
                "abs": self.abs, "normalise": self.normalise, "convention": self.convention}


METRICS = (MPRT, SmoothMPRT, EfficientMPRT, RandomLogit)
