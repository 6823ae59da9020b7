"""What every metric sees (``EvalBatch``), returns (``MetricValues``) and is (``Metric``), plus
the site helpers they share. Maps are ``(N, *sites)`` over the map letters (``"NHW"``, ``"NTV"``);
inputs are in their own layout (``"NCHW"``, ``"NCTVM"``): a site mask is broadcast onto the input
by letter, never by hand-written indexing.

Per-sample values are the unit of reduction: the suite sums them (and counts the finite ones)
over the data set and across processes, so a mean over 1 process equals a mean over N. A value
that is not defined for a sample (empty ground truth, constant map) is NaN and left out of the
count."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from camkit.layout import Layout


@dataclass
class EvalBatch:
    """One batch of maps to evaluate.

    ``maps``: ``(N, *sites)`` in [0, 1] (normalised, input resolution), axes named by
    ``map_letters``; ``targets``: the class each map explains; ``indices``: global sample ids
    (seed per-sample randomness, so results do not depend on batching or sharding);
    ``explain(model, inputs, targets)`` recomputes maps the same way (used by sanity checks);
    ``normalization``: ``(mean, std)`` per channel when known (for raw-space masking);
    ``predictions``: the model's top-1 classes on ``inputs`` (computed when needed if not given)."""

    model: Any
    inputs: Any
    input_layout: Layout
    labels: Any
    targets: Any
    maps: Any
    map_letters: str
    indices: Any
    explain: Callable[[Any, Any, Any], Any]
    mask: Any = None
    box: Any = None
    normalization: tuple[Any, Any] | None = None
    chunk_size: int | None = None  # None: auto_chunk_size (256 on a GPU, fewer for large inputs on a CPU)
    seed: int = 0
    predictions: Any = None

    def __post_init__(self) -> None:
        if self.chunk_size is None:
            self.chunk_size = auto_chunk_size(self.inputs, self.input_layout)
        elif int(self.chunk_size) < 1:
            raise ValueError(f"chunk_size must be a positive number of inputs per forward, got {self.chunk_size}")

    def top1(self) -> Any:
        """The model's top-1 class per sample (``predictions``, else one forward pass)."""
        if self.predictions is None:
            import torch

            with torch.inference_mode():
                self.predictions = self.model(self.inputs).argmax(dim=1)
        return self.predictions

    @property
    def site_shape(self) -> tuple[int, ...]:
        return tuple(self.maps.shape[1:])

    def flat_maps(self) -> Any:
        return self.maps.reshape(self.maps.shape[0], -1).float()

    def ground_truth_mask(self) -> Any:
        """The relevance mask ``(N, *sites)``: the batch's mask, else one drawn from its boxes."""
        if self.mask is not None:
            mask = self.mask.to(self.maps.device).bool()
            if tuple(mask.shape) != tuple(self.maps.shape):
                raise ValueError(f"ground-truth mask of shape {tuple(mask.shape)} does not match maps of shape "
                                 f"{tuple(self.maps.shape)} (axes {self.map_letters})")
            return mask
        if self.box is not None:
            return box_masks(self.box, self.maps.shape, self.map_letters).to(self.maps.device)
        raise ValueError("this metric needs a ground-truth 'mask' or 'box' in the data set items")

    def probabilities(self, inputs: Any) -> Any:
        """Softmax probability of each sample's target class, in chunks (no autograd)."""
        return target_probabilities(self.model, inputs, self.targets.to(inputs.device), self.chunk_size)


@dataclass
class MetricValues:
    """Per-sample values ``name -> (N,)`` or ``(N, S)`` (a curve) and labels for curve points."""

    values: dict[str, Any]
    labels: dict[str, list[str]] = field(default_factory=dict)


class Metric:
    """Base class: subclasses set the class attributes and implement ``evaluate``.

    ``requires``: batch fields needed (``"ground_truth"``, ``"box"``); ``primary``: the value used to
    rank methods; ``higher_is_better``: its direction; ``options()``: what a report must record;
    ``family``: one of ``FAMILIES``; ``quantus_name``: the Quantus 0.6 class it corresponds to, if any
    (the metric is then registered under that name in snake_case, with Quantus's parameter names and
    defaults where they apply)."""

    name: str = ""
    requires: tuple[str, ...] = ()
    primary: str = ""
    higher_is_better: bool = True
    family: str = ""
    quantus_name: str = ""

    def __init__(self, **options: Any) -> None:
        if options:
            raise TypeError(f"metric {self.name!r} takes no options, got {', '.join(options)}")

    def evaluate(self, batch: EvalBatch) -> MetricValues:  # pragma: no cover - interface
        raise NotImplementedError

    def options(self) -> dict[str, Any]:
        return {}

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        return f"{type(self).__name__}({opts})"


# ---------------------------------------------------------------- helpers


# On a CPU a convolutional network runs fastest per input on batches of about a million input values
# (ResNet-18 at 224 px, 2 threads: 32.8 ms per input in batches of 8, 41.7 ms in batches of 64; at
# 112 px about 32 inputs); larger batches spill the caches. GPUs want large batches.
CPU_FORWARD_ELEMENTS = 1_200_000
GPU_CHUNK = 256


def auto_chunk_size(inputs: Any, layout: Layout) -> int:
    """Perturbed inputs per forward pass when none is given: ``GPU_CHUNK`` on an accelerator, on a CPU as
    many as make about ``CPU_FORWARD_ELEMENTS`` input values (at least 1, at most ``GPU_CHUNK``)."""
    if getattr(inputs, "device", None) is None or inputs.device.type != "cpu":
        return GPU_CHUNK
    per_input = max(1, inputs.numel() // max(1, inputs.shape[layout.batch_axis]))
    return max(1, min(GPU_CHUNK, CPU_FORWARD_ELEMENTS // per_input))


def target_probabilities(model: Any, inputs: Any, targets: Any, chunk_size: int = 256) -> Any:
    """``(N,)`` softmax probability of ``targets`` for ``inputs``, forwarded ``chunk_size`` at a time."""
    import torch

    from camkit.capture import evaluation_mode

    out = []
    with torch.inference_mode(), evaluation_mode(model):
        for start in range(0, inputs.shape[0], chunk_size):
            logits = model(inputs[start:start + chunk_size])
            probs = logits.float().softmax(dim=1)
            out.append(probs.gather(1, targets[start:start + chunk_size, None])[:, 0])
    return torch.cat(out)


def to_input_shape(site_tensor: Any, map_letters: str, input_layout: Layout) -> Any:
    """View a ``(N, *sites)`` tensor so it broadcasts against inputs of ``input_layout``
    (``Layout.broadcast``)."""
    return input_layout.broadcast(site_tensor, map_letters)


def box_masks(boxes: Any, map_shape: tuple[int, ...], map_letters: str) -> Any:
    """Boolean ``(N, H, W)`` masks of ``(x0, y0, x1, y1)`` end-exclusive boxes."""
    import torch

    if map_letters != "NHW":
        raise ValueError(f"boxes describe image maps (axes NHW), not maps with axes {map_letters!r}")
    boxes = torch.as_tensor(boxes).long().reshape(-1, 4).cpu()
    n, h, w = map_shape
    if boxes.shape[0] != n:
        raise ValueError(f"got {boxes.shape[0]} boxes for {n} maps")
    ys = torch.arange(h)[None, :, None]
    xs = torch.arange(w)[None, None, :]
    x0, y0, x1, y1 = (boxes[:, i, None, None] for i in range(4))
    return (xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)


FAMILIES = ("faithfulness", "robustness", "localisation", "complexity", "randomisation", "axiomatic", "protocol")

# Metric random streams are told apart by a name, so two metrics (or two draws of one metric) never share
# draws by accident; each (seed, stream, sample id) has its own generator.
def sample_generator(seed: int, index: int, stream: str, device: Any = "cpu") -> Any:
    """A ``torch.Generator`` on ``device`` seeded by ``(seed, stream, sample id)``: a sample's random draws
    do not depend on the batch it is in, the shard or the world size."""
    import zlib

    import torch

    key = zlib.crc32(f"{stream}:{int(seed)}:{int(index)}".encode())
    return torch.Generator(device=device).manual_seed(key)


TIE_SEED_OFFSET = 7_919  # keeps the tie-breaking streams apart from the random baseline's and the noise's


def tie_breaking_permutations(indices: Any, sites: int, seed: int = 0, device: Any = "cpu") -> Any:
    """``(N, S)`` random permutations of the sites, row i seeded by ``(seed, indices[i])``: the same
    sample gets the same permutation whatever the batch, shard or call."""
    import torch

    rows = []
    for index in torch.as_tensor(indices).reshape(-1).tolist():
        generator = torch.Generator().manual_seed(seed * 1_000_003 + int(index) + TIE_SEED_OFFSET)
        rows.append(torch.randperm(sites, generator=generator))
    if not rows:
        return torch.empty(0, sites, dtype=torch.long, device=device)
    return torch.stack(rows).to(device)


def saliency_ranks(flat_maps: Any, indices: Any = None, seed: int = 0) -> Any:
    """``(N, S)`` position of each site when sorted by decreasing saliency.

    Ties: with ``indices`` (the samples' global ids), sites of equal saliency are ordered by a random
    permutation seeded per sample by ``(seed, indices[i])`` (reproducible, independent of batching);
    without, by increasing index (raster order, which biases removal towards the top-left)."""
    import torch

    n, sites = flat_maps.shape
    if indices is None:
        order = torch.sort(flat_maps, dim=1, descending=True, stable=True).indices
    else:
        if torch.as_tensor(indices).numel() != n:
            raise ValueError(f"got {torch.as_tensor(indices).numel()} indices for {n} maps")
        shuffle = tie_breaking_permutations(indices, sites, seed, flat_maps.device)
        # a stable sort of the shuffled sites orders every tie by its (random) shuffled position
        shuffled_order = torch.sort(flat_maps.gather(1, shuffle), dim=1, descending=True, stable=True).indices
        order = shuffle.gather(1, shuffled_order)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(sites, device=order.device).expand_as(order))
    return ranks


def average_ranks(values: Any) -> Any:
    """Ranks ``(N, S)`` starting at 1 with ties sharing their average rank (as Spearman needs)."""
    import torch

    ordered, order = values.sort(dim=1)  # one sort (in the values' own precision: the same order and ties),
    ordered = ordered.double()  # then tie groups in linear passes, no binary searches
    starts = torch.ones_like(ordered, dtype=torch.bool)
    starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    group = starts.long().cumsum(dim=1) - 1  # tie group of each sorted position
    sizes = torch.zeros_like(ordered).scatter_add_(1, group, torch.ones_like(ordered))
    first = sizes.cumsum(dim=1) - sizes  # 0-based position where each group starts
    average = (first + (sizes + 1) / 2.0).gather(1, group)  # 1-based ranks, ties sharing their mean
    return torch.empty_like(average).scatter_(1, order, average)


def spearman(a: Any, b: Any) -> Any:
    """Per-row Spearman rank correlation of two ``(N, S)`` tensors; NaN where a row is constant."""
    import torch

    ra, rb = average_ranks(a), average_ranks(b)
    ra = ra - ra.mean(dim=1, keepdim=True)
    rb = rb - rb.mean(dim=1, keepdim=True)
    denom = ra.norm(dim=1) * rb.norm(dim=1)
    corr = (ra * rb).sum(dim=1) / denom.clamp_min(1e-300)
    return torch.where(denom > 0, corr, torch.full_like(corr, float("nan")))


def curve_auc(curve: Any) -> Any:
    """Trapezoidal area under ``(N, S+1)`` curves sampled evenly on [0, 1]."""
    steps = curve.shape[1] - 1
    if steps < 1:
        raise ValueError("a curve needs at least two points")
    return (curve[:, 1:] + curve[:, :-1]).sum(dim=1) / (2.0 * steps)


def check_options(name: str, value: Any, allowed: Mapping[str, Any] | tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r}: choose one of {', '.join(map(str, allowed))}")


def require_batch_size(batch: EvalBatch, minimum: int, metric: str) -> None:
    """A clear error when a metric that compares the samples of a batch gets fewer than ``minimum``
    (such a metric sets ``min_batch = minimum``, so the bench never hands it a smaller last batch)."""
    n = int(batch.maps.shape[0])
    if n < minimum:
        raise ValueError(f"metric {metric!r} compares the samples of a batch and needs at least {minimum}; got a "
                         f"batch of {n} (use a larger batch_size)")
