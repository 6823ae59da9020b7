"""SESS, Saliency Enhancing with Scaling and Sliding (Tursun, Denman, Sridharan & Fookes, ECCV 2022,
arXiv 2207.01769), as a meta-method any camkit method can use on images.

    from camkit.sess import explain_sess

    result = explain_sess(model, images, "gradcam")   # result.maps: (N, H, W), method "gradcam+sess"

    camkit.explain(model, images, "gradcam+sess")     # the same, as a method: "<any method>+sess"

The image is resized to several scales, square windows slide over every scaled image, each patch is
explained with the base method, and the patch maps are weighted by their patch's class score, pasted
back where they came from and fused. Costs: one forward per image (its class), then per patch one
scoring forward plus, for the patches kept by the pre-filter, the base method's cost.
"""

from __future__ import annotations

import math
import numbers
import warnings
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping, Sequence

from camkit.hookspecs import hookimpl
from camkit.methods import CamMethod, InputMapMethod

if TYPE_CHECKING:  # importing camkit stays torch-free
    from torch import Tensor, nn

    from camkit.explainer import CamResult, Explainer
    from camkit.layout import Layout

POOLS = ("mean", "max")
SMOOTH_SIZE, SMOOTH_SIGMA = 11, 5.0  # pytorch-grad-cam's cv2.GaussianBlur(cam, (11, 11), 5)


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Where windows of size ``window`` start along an axis of ``length`` (>= window): every ``stride``
    from 0; the first window that would reach past the end is shifted back to end at the border and is
    the last one (pytorch-grad-cam's rule, so with ``stride > window`` gaps stay between windows)."""
    starts = []
    for start in range(0, length, stride):
        if start + window >= length:
            starts.append(length - window)
            break
        starts.append(start)
    return starts


def scaled_size(height: int, width: int, scale: int) -> tuple[int, int]:
    """The image size once its shorter side is resized to ``scale``, aspect ratio kept: the longer side
    becomes ``int(scale * long / short)``, torchvision's ``resize`` rule."""
    if width <= height:
        return int(scale * height / width), scale
    return scale, int(scale * width / height)


def resize_operator(size_in: int, size_out: int, *, antialias: bool = False, device: Any = None,
                    dtype: Any = None) -> Tensor:
    """The ``(size_out, size_in)`` matrix of ``F.interpolate``'s bilinear resampling (``align_corners=
    False``) along one axis, read off by resampling an identity: resampling is linear and separable, so
    ``R_h @ image @ R_w.T`` is the resized image and any window of it is a slice of ``R_h`` and ``R_w``."""
    import torch
    import torch.nn.functional as F

    identity = torch.eye(size_in, device=device, dtype=dtype)[None, None]
    return F.interpolate(identity, size=(size_out, size_in), mode="bilinear", align_corners=False,
                         antialias=antialias)[0, 0]


def gaussian_smooth(maps: Tensor, size: int = SMOOTH_SIZE, sigma: float = SMOOTH_SIGMA) -> Tensor:
    """Every ``(H, W)`` map of ``maps`` (..., H, W) blurred as ``cv2.GaussianBlur(map, (size, size), sigma)``:
    a separable Gaussian, borders reflected without repeating the edge pixel (OpenCV's default
    BORDER_REFLECT_101), as two 1-D convolutions on the maps' device."""
    import torch
    import torch.nn.functional as F

    radius = size // 2
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-offsets**2 / (2.0 * sigma**2))
    kernel = (kernel / kernel.sum()).to(device=maps.device, dtype=maps.dtype)
    out = maps.reshape(-1, 1, *maps.shape[-2:])
    for axis, shape in ((2, (1, 1, size, 1)), (3, (1, 1, 1, size))):
        padded = out.index_select(axis, _reflect_101(out.shape[axis], radius, maps.device))
        out = F.conv2d(padded, kernel.view(shape))
    return out.reshape(maps.shape)


def _reflect_101(length: int, radius: int, device: Any) -> Tensor:
    """Indices of an axis of ``length`` padded by ``radius`` on both sides, mirrored about the edge pixels
    as often as needed (``F.pad``'s reflect mode refuses a pad as long as the axis)."""
    import torch

    index = torch.arange(-radius, length + radius, device=device)
    if length == 1:
        return torch.zeros_like(index)
    period = 2 * (length - 1)
    index = index.remainder(period)
    return torch.where(index >= length, period - index, index)


class SlidingWindows:
    """The patches of an ``(H, W)`` image: for every scale, the windows over the image resized to it.
    Patch ``p`` is the window at ``(top[p], left[p])`` of its scaled image; patches are numbered scale by
    scale (scale i's start at ``firsts[i]``), row by row. Every image of a batch has the same patches."""

    def __init__(self, height: int, width: int, window: int, stride: int, scales: Sequence[int], device: Any,
                 dtype: Any) -> None:
        import torch

        self.window = window
        self.sizes = [scaled_size(height, width, s) for s in scales]
        self.firsts: list[int] = []  # the first patch of each scale
        tops: list[int] = []
        lefts: list[int] = []
        row_offsets: list[int] = []  # where each patch's scale starts in the stacked paste operators
        col_offsets: list[int] = []
        shrink_rows, shrink_cols = [], []
        row_offset = col_offset = 0
        for scaled_height, scaled_width in self.sizes:
            self.firsts.append(len(tops))
            ys = window_starts(scaled_height, window, stride)
            xs = window_starts(scaled_width, window, stride)
            tops += [y for y in ys for _ in xs]
            lefts += [x for _ in ys for x in xs]
            row_offsets += [row_offset] * (len(ys) * len(xs))
            col_offsets += [col_offset] * (len(ys) * len(xs))
            # a patch map pasted on a zero canvas of the scaled size and resized to (H, W) only meets the
            # window's columns of the (H, scaled) resize operators: no canvas of the scaled size is built
            shrink_rows.append(resize_operator(scaled_height, height, device=device, dtype=dtype).T)
            shrink_cols.append(resize_operator(scaled_width, width, device=device, dtype=dtype).T)
            row_offset += scaled_height
            col_offset += scaled_width
        self.counts = [end - start for start, end in zip(self.firsts, [*self.firsts[1:], len(tops)])]
        self.top = torch.tensor(tops, device=device)
        self.left = torch.tensor(lefts, device=device)
        self.first_row = self.top + torch.tensor(row_offsets, device=device)
        self.first_col = self.left + torch.tensor(col_offsets, device=device)
        self.shrink_rows = torch.cat(shrink_rows)  # (sum of scaled heights, H)
        self.shrink_cols = torch.cat(shrink_cols)  # (sum of scaled widths, W)
        self.span = torch.arange(window, device=device)

    def __len__(self) -> int:
        return len(self.top)

    def crops(self, images: Tensor, wanted: Tensor, image_of_job: Tensor,
              batch_size: int) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """The patches ``wanted`` (jobs x patches, bool) asks for, of image ``image_of_job[job]``, as
        ``(patches (B, C, window, window), jobs (B,), patch ids (B,))`` of ``batch_size`` rows (the last
        may be shorter). Images are resized a group at a time (about ``batch_size`` windows' worth), so
        memory stays bounded whatever the number of images and scales."""
        import torch
        import torch.nn.functional as F

        window = self.window
        work = torch.promote_types(images.dtype, torch.float32)  # CPU interpolation of half floats is patchy

        def pieces() -> Iterator[tuple[Tensor, Tensor, Tensor]]:
            for size, first, count in zip(self.sizes, self.firsts, self.counts):
                here = wanted[:, first:first + count]
                jobs = here.any(dim=1).nonzero()[:, 0]
                group = max(1, batch_size // count)
                for start in range(0, len(jobs), group):
                    chunk = jobs[start:start + group]
                    # antialias: torchvision's resize (pytorch-grad-cam's) does it; it changes nothing when
                    # enlarging, and a scale below the image size would otherwise alias
                    scaled = F.interpolate(images[image_of_job[chunk]].to(work), size=size, mode="bilinear",
                                           align_corners=False, antialias=True)
                    every_window = scaled.unfold(2, window, 1).unfold(3, window, 1)  # a view, no copy
                    local, patch = here[chunk].nonzero(as_tuple=True)
                    patch = patch + first
                    patches = every_window[local, :, self.top[patch], self.left[patch]]  # (B, C, w, w)
                    yield patches.to(images.dtype), chunk[local], patch

        return _rebatched(pieces(), batch_size)

    def paste(self, maps: Tensor, patch_ids: Tensor) -> Tensor:
        """Patch maps ``(B, window, window)``, each pasted on a zero canvas of its scaled image at its
        window and resized to ``(H, W)`` (bilinear, as ``F.interpolate``): ``(B, H, W)``."""
        rows = self.shrink_rows[self.first_row[patch_ids, None] + self.span]  # (B, window, H)
        cols = self.shrink_cols[self.first_col[patch_ids, None] + self.span]  # (B, window, W)
        return rows.transpose(1, 2) @ maps.to(rows.dtype) @ cols


def _rebatched(pieces: Iterable[tuple[Tensor, ...]], size: int) -> Iterator[tuple[Any, ...]]:
    """The rows of ``pieces`` (tuples of tensors sharing their first axis) regrouped into tuples of
    ``size`` rows; the last may be shorter."""
    import torch

    pending: list[tuple[Tensor, ...]] = []
    count = 0
    for piece in pieces:
        pending.append(piece)
        count += len(piece[0])
        while count >= size:
            joined = [torch.cat(parts) for parts in zip(*pending)]
            yield tuple(t[:size] for t in joined)
            pending, count = [tuple(t[size:] for t in joined)], count - size
    if count:
        yield tuple(torch.cat(parts) for parts in zip(*pending))


class _Fusion:
    """The per-pixel fusion of resized patch maps into one map per job, patch chunk by patch chunk."""

    def __init__(self, jobs: int, height: int, width: int, pool: str, theta: float, like: Tensor) -> None:
        self.pool, self.theta = pool, theta
        self.total = like.new_zeros(jobs, height, width)
        self.count = like.new_zeros(jobs, height, width) if pool == "mean" else None

    def add(self, maps: Tensor, jobs: Tensor) -> None:
        if self.count is None:  # max: the canvas starts at 0, below every (non-negative) patch map
            flat = maps.flatten(1)
            self.total.view(len(self.total), -1).scatter_reduce_(0, jobs[:, None].expand_as(flat), flat, "amax")
            return
        counted = maps > self.theta
        self.total.index_add_(0, jobs, maps * counted)
        self.count.index_add_(0, jobs, counted.to(maps.dtype))

    def result(self) -> Tensor:
        if self.count is None:
            return self.total
        return self.total / self.count.clamp_min(1)  # a pixel no patch counts at stays 0


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class SessSettings:
    """SESS's own options (see ``explain_sess``), checked on construction."""

    scales: Sequence[int] | None = None
    num_scales: int = 12
    scale_step: float = 2 / 7
    window: int | None = None
    stride: int | None = None
    pre_filter: float = 0.0
    theta: float = 0.0
    pool: str = "mean"
    smooth: bool = True
    softmax_scores: bool = True
    batch_size: int = 32
    progress: bool = False

    def __post_init__(self) -> None:
        if self.pool not in POOLS:
            raise ValueError(f"pool must be one of {', '.join(POOLS)}, got {self.pool!r}")
        if not 0.0 <= self.pre_filter < 1.0:
            raise ValueError(f"pre_filter is the fraction of patches dropped: it must be in [0, 1), got "
                             f"{self.pre_filter!r}")
        if not 0.0 <= self.theta < 1.0:
            raise ValueError(f"theta must be in [0, 1) (patch maps lie in [0, 1]), got {self.theta!r}")
        _positive_int(self.num_scales, "num_scales")
        _positive_int(self.batch_size, "batch_size")
        if not self.scale_step > 0:
            raise ValueError(f"scale_step must be positive, got {self.scale_step!r}")
        for name in ("window", "stride"):
            if getattr(self, name) is not None:
                _positive_int(getattr(self, name), name)

    @classmethod
    def of(cls, options: Mapping[str, Any]) -> "SessSettings":
        """Settings from keyword options; an unknown name lists close matches."""
        from camkit.plugin_manager import UnknownNameError

        known = [f.name for f in fields(cls)]
        for name in options:
            if name not in known:
                raise UnknownNameError.of("SESS option", name, known)
        return cls(**options)


def _check_inputs(explainer: Explainer, inputs: Any, targets: Any) -> None:
    import torch

    if not isinstance(inputs, torch.Tensor) or inputs.ndim != 4:
        shape = tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs).__name__
        raise ValueError(f"SESS slides square windows over images: inputs must be one (N, C, H, W) tensor, got "
                         f"{shape}")
    if len(inputs) == 0:
        raise ValueError("inputs hold no image: nothing to explain")
    if explainer.input_layout is not None and explainer.input_layout.letters != "NCHW":
        raise ValueError(f"SESS slides windows over NCHW images, got input_layout={str(explainer.input_layout)!r}")
    if callable(targets) and not hasattr(targets, "shape"):
        raise ValueError("SESS weights each patch by the score of its image's class: targets must be class ids "
                         "(an int, one per image, (N, K) ids, 'all' or topk=k), not a callable")
    if not explainer.normalize:
        raise ValueError("SESS weights and fuses normalised patch maps: keep normalize on")
    if not explainer.eval_mode:
        raise ValueError("SESS runs the model on every patch (hundreds of forwards); with eval_mode=False they "
                         "would update BatchNorm's running statistics and change the model: keep eval_mode=True")
    if explainer.output_size is not None or not explainer.upsample:
        raise ValueError("SESS returns maps of the input's size: do not pass output_size or upsample=False")


def _scales(scales: Sequence[int] | None, window: int, num_scales: int, scale_step: float) -> list[int]:
    if scales is None:
        step = round(window * scale_step)
        return [window + step * i for i in range(num_scales)]
    scales = [_positive_int(s, "scales") for s in scales]
    if not scales:
        raise ValueError("scales must list at least one size (or be None for the default)")
    small = [s for s in scales if s < window]
    if small:
        raise ValueError(f"scales must be at least the window size {window} (the shorter side is resized to "
                         f"each scale, then cut into windows), got {small}")
    return scales


def _logits(explainer: Explainer, images: Tensor) -> Tensor:
    """The model's class scores for ``images``, without gradients, in eval mode unless told otherwise."""
    import torch

    from camkit.adapters import describe, select_output
    from camkit.capture import evaluation_mode

    with torch.no_grad(), evaluation_mode(explainer.model, explainer.eval_mode):
        logits = select_output(explainer.model(images), explainer.output)
    if getattr(logits, "ndim", None) != 2:
        raise ValueError(f"SESS weights each patch by its class's score, so it needs (N, classes) logits; the model "
                         f"output is {describe(logits)}: pass output=... to pick the logits")
    return logits


def explain_sess(model: nn.Module, inputs: Tensor, method: "str | CamMethod" = "gradcam", layer: Any = None,
                 targets: Any = None, layout: "str | Layout | None" = None, *, topk: int | None = None,
                 **options: Any) -> CamResult:
    """SESS maps of ``method`` for the images ``inputs`` (N, C, H, W): a ``CamResult`` with maps (N, H, W)
    (or (N, K, H, W) for ``topk=k``, (N, K) ids or ``"all"``), method ``"<method>+sess"``. Per image and
    target class c (chosen once on the unresized image, as ``explain_augmented`` does):

    1. scales: the shorter side is resized to each s in ``scales`` (aspect ratio kept; default
       ``num_scales`` sizes ``window + round(window * scale_step) * i``, i = 0, 1, ...);
    2. sliding: ``window`` x ``window`` windows every ``stride`` pixels on each scaled image, a window
       crossing the right / bottom border shifted back inside (``window_starts``);
    3. pre-filtering: every patch p is scored s_p = softmax(f(p))_c (``softmax_scores=True``, as the
       authors' code) or max(f(p)_c, 0); the lowest ``pre_filter`` fraction (rounded down) is dropped;
    4. each kept patch is explained for c by ``method``, its map M_p min-max normalised and weighted by
       s_p / max_q s_q (the best kept patch; 1 when every score is 0);
    5. each weighted map is pasted at its window on a zero canvas of its scaled image, and the canvas
       resized to (H, W): m_p;
    6. fusion: ``pool="mean"``: per pixel, the mean of the m_p that exceed ``theta`` (0 where none
       does); ``pool="max"``: the per-pixel maximum of the m_p;
    7. ``smooth``: an 11 x 11 Gaussian blur of sigma 5; then min-max normalisation.

    Defaults: 12 scales of step 2/7 of the window, window = the shorter side (the first scale is the
    image itself; 224, 288, ..., 928 for a 224-pixel image, as in the authors' code),
    stride = window, no pre-filtering, theta = 0, mean fusion, smoothing: pytorch-grad-cam's ``SESS``
    defaults. Resizing is ``F.interpolate``'s bilinear with half-pixel centres (``align_corners=False``);
    images are resized with ``antialias=True`` as torchvision's ``resize`` does (no change when
    enlarging), canvases without, like OpenCV's ``INTER_LINEAR``.

    pytorch-grad-cam's ``SESS`` gives the same maps (checked to ~1e-6 with Grad-CAM on a small conv
    net, mean and max fusion, pre-filtering, theta, non-square images, smoothing) except that it adds
    1e-7 to the denominators of its min-max normalisations, drops tied lowest patches in
    ``np.argsort``'s order (camkit: the first patch, in scale then raster order, goes first), loops per
    image and per patch chunk in numpy / OpenCV, and explains one class per image (camkit: K classes,
    every patch scored once for all of them).

    Options: ``scales=None``, ``num_scales=12``, ``scale_step=2/7``, ``window=None``, ``stride=None``,
    ``pre_filter=0.0``, ``theta=0.0``, ``pool="mean"``, ``smooth=True``, ``softmax_scores=True``,
    ``batch_size=32``, ``progress=False`` (``SessSettings``); the others go to the ``Explainer`` of
    ``method``. The method ``"<method>+sess"`` (e.g. ``camkit.explain(model, x, "gradcam+sess")``, ``camkit
    explain --method gradcam+sess``, ``camkit bench``) is the same, its options SESS's (``base_options``:
    the base method's).

    Cost: one forward of the N images, one scoring forward per patch (N x patches, in chunks of
    ``batch_size``) and the base method on every kept patch, for each of the K classes (chunks of
    ``batch_size`` through one ``Explainer``). Memory holds about ``batch_size`` patches and their
    (H, W) canvases at a time, plus two (H, W) canvases per image and class. ``progress``: a tqdm bar
    over the chunks. Other options (``relu``, ``method_options``, ``eval_mode``, ``output`` ...) as for
    ``Explainer``; ``normalize`` stays on and maps come at the input's size."""
    from camkit.explainer import Explainer

    settings = SessSettings.of({k: options.pop(k) for k in [f.name for f in fields(SessSettings)] if k in options})
    return sess_maps(Explainer(model, method, layer, layout, **options), inputs, targets, topk, settings)


def sess_maps(explainer: Explainer, inputs: Tensor, targets: Any, topk: int | None,
              settings: SessSettings) -> CamResult:
    """SESS of ``explainer``'s method on ``inputs`` (see ``explain_sess``), as named steps: the windows, the
    image classes, every patch scored, pre-filtered and calibrated, the kept patches explained and fused."""
    from tqdm import tqdm

    from camkit.contraction import postprocess
    from camkit.targets import resolve_targets

    _check_inputs(explainer, inputs, targets)
    inputs = inputs.detach()  # patches are new tensors: nothing flows back to the caller's images
    windows = _windows(inputs, settings)
    logits = _logits(explainer, inputs)
    class_ids = resolve_targets(targets, logits.detach(), topk)  # (N,) or (N, K)
    ids = class_ids if class_ids.ndim == 2 else class_ids[:, None]
    n, k = ids.shape
    kept_per_image = len(windows) - math.floor(len(windows) * settings.pre_filter)
    chunks = math.ceil(n * len(windows) / settings.batch_size) + math.ceil(n * k * kept_per_image /
                                                                          settings.batch_size)
    with tqdm(total=chunks, desc="SESS", unit="chunk", disable=not settings.progress, leave=False) as bar:
        job_scores = _patch_scores(explainer, inputs, windows, ids, settings, bar)  # (N * K, patches)
        kept = _kept(job_scores, len(windows) - kept_per_image)
        fusion, first = _fused_patch_maps(explainer, inputs, windows, ids, kept,
                                          _calibration_weights(job_scores, kept), settings, bar)
    maps = fusion.result()
    if settings.smooth:
        maps = gaussian_smooth(maps)
    maps = postprocess(maps, "NHW", layout=first.layout, relu=False, normalize=True)
    multi, (height, width) = class_ids.ndim == 2, inputs.shape[-2:]
    target_scores = logits.gather(1, ids)
    return replace(first, maps=(maps.view(n, k, height, width) if multi else maps).to(first.maps.dtype),
                   targets=class_ids, logits=logits, target_scores=target_scores if multi else target_scores[:, 0],
                   method=f"{first.method}+sess", map_letters="NKHW" if multi else "NHW")


def _windows(inputs: Tensor, settings: SessSettings) -> SlidingWindows:
    """The patches of every scale; the window defaults to the shorter side and the stride to the window."""
    import torch

    height, width = (int(s) for s in inputs.shape[-2:])
    window = min(height, width) if settings.window is None else int(settings.window)
    if window > min(height, width):
        raise ValueError(f"window must fit in the image: window={window} but the image is {height} x {width}")
    stride = window if settings.stride is None else int(settings.stride)
    scale_list = _scales(settings.scales, window, settings.num_scales, settings.scale_step)
    work = torch.promote_types(inputs.dtype, torch.float32)
    return SlidingWindows(height, width, window, stride, scale_list, inputs.device, work)


def _patch_scores(explainer: Explainer, inputs: Tensor, windows: SlidingWindows, ids: Tensor,
                  settings: SessSettings, bar: Any) -> Tensor:
    """Every patch's score for each of its image's K classes (softmax or clamped logit), one row per job
    (image, class): ``(N * K, patches)``."""
    import torch

    n, k = ids.shape
    scores = torch.zeros(n, len(windows), k, device=inputs.device)
    every_patch = torch.ones(n, len(windows), dtype=torch.bool, device=inputs.device)
    for patches, images, patch_ids in windows.crops(inputs, every_patch, torch.arange(n, device=inputs.device),
                                                    settings.batch_size):
        patch_logits = _logits(explainer, patches).float()
        values = patch_logits.softmax(dim=-1) if settings.softmax_scores else patch_logits
        scores[images, patch_ids] = values.gather(1, ids[images]).clamp_min(0)
        bar.update()
    return scores.permute(0, 2, 1).reshape(n * k, len(windows))


def _fused_patch_maps(explainer: Explainer, inputs: Tensor, windows: SlidingWindows, ids: Tensor, kept: Tensor,
                      weights: Tensor, settings: SessSettings, bar: Any) -> tuple[_Fusion, CamResult]:
    """The kept patches explained for their job's class, weighted, pasted and fused; and the first patch
    result (its method, layer and layout name the SESS result)."""
    import torch

    from camkit.kernels import ConstantMapWarning

    n, k = ids.shape
    image_of_job = torch.arange(n, device=inputs.device).repeat_interleave(k)  # job = (image, class)
    class_of_job = ids.reshape(-1)
    fusion = _Fusion(n * k, *inputs.shape[-2:], settings.pool, settings.theta, like=windows.shrink_rows)
    first = None
    with explainer:
        for patches, jobs, patch_ids in windows.crops(inputs, kept, image_of_job, settings.batch_size):
            with warnings.catch_warnings():  # a patch without evidence of the class maps to 0: expected
                warnings.simplefilter("ignore", ConstantMapWarning)
                result = explainer(patches, class_of_job[jobs])
            if tuple(result.maps.shape) != (len(jobs), windows.window, windows.window):
                raise ValueError(f"SESS needs one (window, window) map per patch; {result.method} gives maps "
                                 f"{result.map_letters} {tuple(result.maps.shape)} from layer {result.layer!r}")
            if first is None:
                first = result
            weighted = result.maps.to(fusion.total.dtype) * weights[jobs, patch_ids][:, None, None]
            fusion.add(windows.paste(weighted, patch_ids), jobs)
            bar.update()
    assert first is not None  # pre_filter < 1 keeps at least one patch per image
    return fusion, first


def _kept(scores: Tensor, dropped: int) -> Tensor:
    """Which patches survive pre-filtering: all but the ``dropped`` lowest scores of each row (ties: the
    earlier patch goes first)."""
    import torch

    order = scores.argsort(dim=1, stable=True)
    return torch.zeros_like(scores, dtype=torch.bool).scatter_(1, order[:, dropped:], True)


def _calibration_weights(scores: Tensor, kept: Tensor) -> Tensor:
    """Each patch's score over the best kept score of its row; 1 for a row whose scores are all 0
    (pytorch-grad-cam's convention: no patch is preferred)."""
    import torch

    best = scores.masked_fill(~kept, 0).amax(dim=1, keepdim=True)
    return torch.where(best > 0, scores / best.where(best > 0, 1.0), 1.0)


class Sess(InputMapMethod):
    """``sess``, named ``"<method>+sess"`` (``"gradcam+sess"``; plain ``"sess"`` is Grad-CAM's): SESS of the base
    method with the explainer's layer and options. Options: ``SessSettings``' (``window``, ``stride``,
    ``num_scales``, ``pre_filter``, ...) and ``base_options`` for the base method."""

    name = "sess"
    description = "SESS: any method's maps of sliding windows over rescaled images, fused ('<method>+sess')"
    wraps = True

    def __init__(self, base: str = "gradcam", base_options: Mapping[str, Any] | None = None,
                 **settings: Any) -> None:
        self.base, self.base_options = base, dict(base_options or {})
        self.settings = SessSettings.of(settings)

    def explain(self, explainer: "Explainer", inputs: Any, targets: Any, topk: int | None) -> "CamResult":
        return sess_maps(explainer.with_method(self.base, self.base_options), inputs, targets, topk, self.settings)


@hookimpl
def camkit_register_methods() -> dict[str, Any]:
    return {"sess": Sess}
