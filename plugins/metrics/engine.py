"""The one perturbation engine behind every faithfulness metric (DESIGN §6b).

A metric is a *schedule* over four steps, each a function here:

1. ``Features``: what is ranked and removed, the map's sites broadcast over the channels by letter
   (``"site"``, camkit's default) or each channel of each input element (``"element"``, Quantus's
   notion), with Quantus's attribution pre-processing (``normalise``: divide by max |a|, per sample;
   ``abs``).
2. ``ranks`` / ``region_ranks``: the order of the features or of regions (patches, superpixels); ties
   in a random order seeded per sample id.
3. A removal rule ``(owner, step) -> (M, F)`` boolean mask: the k most / least relevant features
   (``cumulative``), a window of ranks (``window``), regions (``regions``), random subsets
   (``subsets``).
4. ``removal_scores``: the mask is broadcast onto the input (``to_input``), filled from a perturbation
   (``baseline``: zeros, Quantus's black / white / mean / uniform, blur, mean pose, ROAD imputation),
   forwarded ``batch.chunk_size`` inputs at a time under ``inference_mode`` and
   ``evaluation_mode``, and scored (``target_scores``: probability, logit or top-1 hit).

Everything stays on the inputs' device; every random draw comes from a generator seeded by
``(seed, sample id, draw)``, so per-sample values do not depend on the batch or the world size."""

from __future__ import annotations

from typing import Any, Callable

from camkit_plugins.metrics.base import EvalBatch, check_options

FEATURES = ("site", "element")
OUTPUTS = ("probability", "logit", "correct")
QUANTUS_BASELINES = {"black": "minimum", "white": "maximum", "mean": "sample-mean", "uniform": "uniform"}


# ---------------------------------------------------------------- 1. features


class Features:
    """The attributions a metric ranks, ``(N, F)`` float64, and how a ``(M, F)`` removal mask reaches
    the input. ``kind="site"``: F = map sites, a removed site takes all its channels;
    ``kind="element"``: F = input elements (channels x sites, Quantus's features), the map broadcast
    onto every channel. ``normalise`` divides each sample by its max |a| (Quantus divides by the whole
    batch's, which changes nothing but scale); ``abs`` then takes |a|."""

    def __init__(self, batch: EvalBatch, kind: str = "site", normalise: bool = True, abs: bool = False) -> None:
        check_options("features", kind, FEATURES)
        self.batch, self.kind = batch, kind
        maps = batch.maps.double()
        if kind == "site":
            flat = maps.reshape(maps.shape[0], -1)
        else:
            layout = batch.input_layout
            spread = to_input(batch, maps, kind="site").expand(batch.inputs.shape)
            flat = spread.movedim(layout.batch_axis, 0).reshape(maps.shape[0], -1)
        self.attributions = preprocess(flat, normalise, abs)

    @property
    def count(self) -> int:
        return int(self.attributions.shape[1])

    def to_input(self, removed: Any) -> Any:
        """A ``(M, F)`` mask as a tensor that broadcasts against ``M`` inputs in the batch's layout."""
        return to_input(self.batch, removed, self.kind)


def preprocess(flat: Any, normalise: bool, abs: bool) -> Any:
    """Quantus's order: divide by max |a| (per sample; an all-zero map is left alone), then |a|."""
    import torch

    if normalise:
        peak = flat.abs().amax(dim=1, keepdim=True)
        flat = flat / torch.where(peak > 0, peak, torch.ones_like(peak))
    return flat.abs() if abs else flat


def to_input(batch: EvalBatch, removed: Any, kind: str) -> Any:
    """A ``(M, F)`` (or ``(M, *sites)``) tensor over sites or elements, shaped to broadcast onto ``M``
    inputs of ``batch.input_layout``."""
    from camkit_plugins.metrics.base import to_input_shape

    layout = batch.input_layout
    m = removed.shape[0]
    if kind == "site":
        return to_input_shape(removed.reshape(m, *batch.site_shape), batch.map_letters, layout)
    sample_shape = batch.inputs.movedim(layout.batch_axis, 0).shape[1:]
    return removed.reshape(m, *sample_shape).movedim(0, layout.batch_axis)


# ---------------------------------------------------------------- 2. orders


def ranks(batch: EvalBatch, scores: Any, descending: bool = True, convention: str = "camkit") -> Any:
    """``(N, F)`` position of each feature in decreasing (or increasing) order of ``scores``; ties in a
    random order seeded by ``(batch.seed, sample id)``. ``convention="quantus"``: numpy's ``argsort`` of
    ``-scores`` (or ``scores``), Quantus's tie order (e.g. the channels of one pixel, features="element")."""
    import torch

    from camkit_plugins.metrics.base import saliency_ranks

    if convention != "quantus":
        return saliency_ranks(scores if descending else -scores, batch.indices, batch.seed)
    import numpy as np

    array = scores.detach().cpu().numpy()
    order = torch.as_tensor(np.argsort(-array if descending else array, axis=1), device=scores.device)
    positions = torch.arange(order.shape[1], device=scores.device).expand_as(order)
    return torch.empty_like(order).scatter_(1, order, positions)


def block_labels(batch: EvalBatch, patch_size: int) -> tuple[Any, int]:
    """``(S,)`` region id of each map site for square blocks of ``patch_size`` sites along every
    continuous axis (one site along the others), and the number of regions. Like Quantus, an axis that
    ``patch_size`` does not divide is padded evenly on both sides, so border blocks are partial (Quantus
    pads the image; its Infidelity then crashes)."""
    import torch

    if int(patch_size) < 1:
        raise ValueError(f"patch_size must be >= 1, got {patch_size}")
    continuous = batch.input_layout.continuous_letters
    shape, letters = batch.site_shape, batch.map_letters[1:]
    coords = torch.meshgrid(*[torch.arange(size) for size in shape], indexing="ij")
    label = torch.zeros(shape, dtype=torch.long)
    for axis, (letter, size) in enumerate(zip(letters, shape)):
        step = int(patch_size) if letter in continuous else 1
        before = (-size % step) // 2
        blocks = (size + (-size % step)) // step
        label = label * blocks + (coords[axis] + before) // step
    flat = label.reshape(-1)
    # raster order of the blocks, numbered 0..R-1 (Quantus's get_block_indices order)
    _, dense = torch.unique(flat, return_inverse=True)
    return dense.to(batch.maps.device), int(dense.max().item()) + 1


def superpixel_labels(batch: EvalBatch, method: str = "slic") -> tuple[Any, Any]:
    """``(N, S)`` superpixel id of each site (SLIC or Felzenszwalb from scikit-image, on the input image
    as H x W x C doubles, labels from 0, as Quantus's ``get_superpixel_segments``) and ``(N,)`` counts."""
    import numpy as np
    import torch

    check_options("segmentation_method", method, ("slic", "felzenszwalb"))
    layout = batch.input_layout
    if batch.map_letters != "NHW" or not set("HW") <= set(layout.letters):
        raise ValueError(f"superpixels need image maps (axes NHW), got maps {batch.map_letters} on {layout}")
    from skimage.segmentation import felzenszwalb, slic

    images = batch.inputs.permute(*[layout.letters.index(ch) for ch in "NHWC"]).detach().cpu().double().numpy()
    labels = []
    for image in images:
        segments = slic(image, start_label=0) if method == "slic" else felzenszwalb(image)
        labels.append(np.unique(segments, return_inverse=True)[1].reshape(-1))
    stacked = torch.as_tensor(np.stack(labels), dtype=torch.long, device=batch.maps.device)
    return stacked, stacked.amax(dim=1) + 1


def region_scores(attributions: Any, labels: Any, regions: int, reduce: str = "sum") -> Any:
    """``(N, R)`` sum or mean of ``(N, S)`` attributions over each region (``labels``: ``(S,)`` or
    ``(N, S)``); a region with no site scores -inf (ranked last)."""
    import torch

    labels = labels.expand_as(attributions)
    total = torch.zeros(attributions.shape[0], regions, dtype=attributions.dtype, device=attributions.device)
    total.scatter_add_(1, labels, attributions)
    size = torch.zeros_like(total).scatter_add_(1, labels, torch.ones_like(attributions))
    if reduce == "mean":
        total = total / size.clamp_min(1)
    return torch.where(size > 0, total, torch.full_like(total, float("-inf")))


# ---------------------------------------------------------------- 3. removal rules

Removal = Callable[[Any, Any], Any]


def cumulative(feature_ranks: Any, counts: Any) -> Removal:
    """Step s removes the ``counts[s]`` features ranked first."""
    return lambda owner, step: feature_ranks[owner] < counts[step][:, None]


def window(feature_ranks: Any, starts: Any, stops: Any) -> Removal:
    """Step s removes only the features ranked in ``[starts[s], stops[s])``."""
    def removal(owner: Any, step: Any) -> Any:
        rank = feature_ranks[owner]
        return (rank >= starts[step][:, None]) & (rank < stops[step][:, None])

    return removal


def regions(labels: Any, order_ranks: Any, counts: Any) -> Removal:
    """Step s removes the ``counts[s]`` regions ranked first (``order_ranks``: ``(N, R)`` position of
    each region; ``labels``: ``(S,)`` or ``(N, S)`` region of each site)."""
    def removal(owner: Any, step: Any) -> Any:
        site_labels = labels.expand(order_ranks.shape[0], -1)[owner]
        return order_ranks[owner].gather(1, site_labels) < counts[step][:, None]

    return removal


def subsets(chosen: Any, features: int) -> Removal:
    """Draw d of sample i removes the features ``chosen[i, d]`` (``(N, D, k)`` indices)."""
    import torch

    def removal(owner: Any, step: Any) -> Any:
        mask = torch.zeros(len(owner), features, dtype=torch.bool, device=chosen.device)
        return mask.scatter_(1, chosen[owner, step], True)

    return removal


def random_subsets(batch: EvalBatch, features: int, draws: int, size: int, stream: str) -> Any:
    """``(N, draws, size)`` feature indices, each row a uniform subset without replacement, seeded by
    ``(batch.seed, sample id, stream)``."""
    import torch

    from camkit_plugins.metrics.base import sample_generator

    if not 0 < size <= features:
        raise ValueError(f"a subset of {size} features cannot be drawn from {features}")
    rows = []
    for index in batch.indices.reshape(-1).tolist():
        generator = sample_generator(batch.seed, index, stream)
        rows.append(torch.stack([torch.randperm(features, generator=generator)[:size] for _ in range(draws)]))
    return torch.stack(rows).to(batch.maps.device)


# ---------------------------------------------------------------- 4. perturb, forward, score


def baseline(perturb_baseline: Any, seed: int = 0, **options: Any) -> Any:
    """A perturbation from Quantus's ``perturb_baseline`` (``"black"`` = per-sample min, ``"white"``,
    ``"mean"``, ``"uniform"``, a number) or any camkit perturbation name (``zeros``, ``blur``,
    ``mean-pose``, ``road``, ...)."""
    from camkit.plugin_manager import lookup

    if isinstance(perturb_baseline, (int, float)) and not isinstance(perturb_baseline, bool):
        return lookup("perturbations", "constant")(value=float(perturb_baseline))
    name = QUANTUS_BASELINES.get(perturb_baseline, perturb_baseline)
    if name == "uniform":
        options = {"low": options.pop("uniform_low", 0.0), "high": options.pop("uniform_high", 1.0), "seed": seed,
                   **options}
    return lookup("perturbations", name)(**options)


def target_scores(logits: Any, targets: Any, output: str | tuple[str, ...]) -> Any:
    """``(M,)`` float64: the target's softmax probability, its logit, or 1.0 where it is the top-1 class;
    ``(M, k)`` for a tuple of those."""
    import torch

    if isinstance(output, tuple):
        return torch.stack([target_scores(logits, targets, one) for one in output], dim=-1)
    if output == "correct":
        return (logits.argmax(dim=1) == targets).double()
    scores = logits.float().softmax(dim=1) if output == "probability" else logits
    return scores.gather(1, targets[:, None])[:, 0].double()


def forward_scores(batch: EvalBatch, copies: int, perturb: Callable[[Any, Any, Any], Any],
                   output: str | tuple[str, ...]) -> Any:
    """``(N, copies)`` (``(N, copies, k)`` for k outputs) scores of ``copies`` perturbed versions of every
    sample: pairs (sample, copy) are built ``batch.chunk_size`` at a time by ``perturb(inputs, owner, copy)``
    (``inputs``: those samples in the batch's layout) and forwarded without autograd in evaluation mode."""
    import torch

    from camkit.capture import evaluation_mode

    for one in output if isinstance(output, tuple) else (output,):
        check_options("output", one, OUTPUTS)
    x, layout = batch.inputs, batch.input_layout
    n = x.shape[layout.batch_axis]
    xb = x.movedim(layout.batch_axis, 0)
    targets = batch.targets.to(x.device)
    width = (len(output),) if isinstance(output, tuple) else ()
    scores = torch.empty(n * copies, *width, dtype=torch.float64, device=x.device)
    with torch.inference_mode(), evaluation_mode(batch.model):
        for start in range(0, n * copies, batch.chunk_size):
            pairs = torch.arange(start, min(start + batch.chunk_size, n * copies), device=x.device)
            owner, copy = pairs // copies, pairs % copies
            inputs = xb[owner].movedim(0, layout.batch_axis)
            scores[pairs] = target_scores(batch.model(perturb(inputs, owner, copy)), targets[owner], output)
    return scores.view(n, copies, *width)


def clean_scores(batch: EvalBatch, output: str) -> Any:
    """``(N,)`` scores of the unperturbed inputs (one forward per sample)."""
    return forward_scores(batch, 1, lambda inputs, owner, copy: inputs, output)[:, 0]


def removal_scores(batch: EvalBatch, features: Features, removal: Removal, steps: int, perturbation: Any,
                   output: str = "probability", insert: bool = False) -> Any:
    """``(N, steps)`` scores after removing, at each step, the features ``removal(owner, step)`` marks
    (``insert=True``: keeping only those, the rest perturbed), filled from ``perturbation``."""
    import torch

    layout = batch.input_layout
    fill = perturbation.fill(batch.inputs, layout, batch.indices) if perturbation.precomputable else None
    fill_b = fill.movedim(layout.batch_axis, 0) if fill is not None else None
    indices = torch.as_tensor(batch.indices).reshape(-1)

    def perturb(inputs: Any, owner: Any, step: Any) -> Any:
        removed = removal(owner, step)
        removed = features.to_input(~removed if insert else removed)
        chunk_fill = fill_b[owner].movedim(0, layout.batch_axis) if fill_b is not None else None
        return perturbation.apply(inputs, removed, layout, indices[owner.cpu()], fill=chunk_fill, draws=step.cpu())

    return forward_scores(batch, steps, perturb, output)


# ---------------------------------------------------------------- statistics the schedules share


def step_counts(total: int, features_in_step: int, device: Any = "cpu") -> Any:
    """``ceil(total / features_in_step)`` cumulative counts ``min((s + 1) * features_in_step, total)``."""
    import torch

    if int(features_in_step) < 1:
        raise ValueError(f"features_in_step must be >= 1, got {features_in_step}")
    steps = -(-total // int(features_in_step))
    return (torch.arange(1, steps + 1, device=device) * int(features_in_step)).clamp_max(total)


def window_sums(attributions: Any, feature_ranks: Any, width: int, windows: int) -> Any:
    """``(N, windows)`` relevance summed over each window of ``width`` consecutive ranks."""
    import torch

    total = torch.zeros(attributions.shape[0], windows, dtype=attributions.dtype, device=attributions.device)
    return total.scatter_add_(1, feature_ranks // width, attributions)


def trapezoid(curve: Any, dx: float = 1.0) -> Any:
    """Trapezoidal area under ``(N, K)`` curves with spacing ``dx`` (Quantus's ``calculate_auc``; camkit
    needs no ``np.trapz``, which numpy 2.4 removed)."""
    if curve.shape[1] < 2:
        return curve.new_zeros(curve.shape[0])
    return (curve[:, 1:] + curve[:, :-1]).sum(dim=1) * (dx / 2.0)


def pearson(a: Any, b: Any) -> Any:
    """Per-row Pearson correlation of two ``(N, K)`` tensors (float64); NaN where a row is constant."""
    import torch

    a = a.double() - a.double().mean(dim=1, keepdim=True)
    b = b.double() - b.double().mean(dim=1, keepdim=True)
    denom = a.norm(dim=1) * b.norm(dim=1)
    corr = (a * b).sum(dim=1) / denom.clamp_min(1e-300)
    return torch.where(denom > 0, corr.clamp(-1.0, 1.0), torch.full_like(corr, float("nan")))


def correlation(name: str) -> Callable[[Any, Any], Any]:
    """Quantus's ``similarity_func`` by name: ``"pearson"`` or ``"spearman"`` (row-wise)."""
    from camkit_plugins.metrics.base import spearman

    check_options("similarity_func", name, ("pearson", "spearman"))
    return pearson if name == "pearson" else spearman
