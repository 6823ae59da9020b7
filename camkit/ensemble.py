"""Options any method can use, built on the public ``Explainer``: eigen smoothing, several layers
fused into one map, and test-time augmentation (flips and rescales, undone and averaged).

    import camkit
    from camkit.ensemble import eigen_smooth, explain_layers, explain_augmented

    camkit.explain(model, x, eigen_smooth("gradcam"))                        # first principal component
    explain_layers(model, x, "gradcam", ["layer3", "layer4"], fusion="max")   # multi-layer fusion
    explain_augmented(model, x, "gradcam", flips="W", scales=(0.75, 1.25))   # test-time augmentation

Continuous axes (H, W, D, T, L) may be flipped and rescaled; discrete ones (joints V, graph nodes G,
persons M) never are: asking for it is an error.
"""

from __future__ import annotations

import functools
from dataclasses import replace
from typing import Any, Callable, Iterable, Sequence

from camkit.explainer import Explainer
from camkit.layout import CONTINUOUS, Layout
from camkit.methods import CamMethod, InputMapMethod, WeightContext, Weights, method_factory
from camkit.plugin_manager import UnknownNameError

FUSIONS = ("mean", "max", "product")


# -- eigen smoothing ---------------------------------------------------------------------------------


class EigenSmoothed(CamMethod):
    """Any method's map replaced by the first principal component of its weighted features.

    With P_k(s) = w_k(s) f_k(s) (sites x channels, per sample and target) and v its first
    right-singular vector (not centred, oriented so the projection sums to a positive value), the map
    is the projection sum_k P_k(s) v_k = sum_k (w_k(s) v_k) f_k(s): new weights for the same
    contraction. pytorch-grad-cam's ``eigen_smooth`` centres P's channels first (another direction)
    and keeps the SVD's arbitrary sign."""

    def __init__(self, method: "str | CamMethod", **method_options: Any) -> None:
        if isinstance(method, str):
            inner: CamMethod = method_factory(method)(**method_options)
        elif method_options:
            raise TypeError("method options go with a method name, not with a method object")
        else:
            inner = method
        if isinstance(inner, InputMapMethod):
            raise ValueError(f"eigen smoothing projects one layer's weighted features, but "
                             f"{getattr(inner, 'name', type(inner).__name__)} computes its map from the whole model: "
                             f"use it without eigen_smooth")
        self.inner = inner
        method = inner
        self.name = f"{getattr(method, 'name', type(method).__name__)}+eigen"
        self.needs_gradients = method.needs_gradients
        self.needs_hessian = getattr(method, "needs_hessian", False)
        self.runs_model = getattr(method, "runs_model", False)
        self.records_forward = getattr(method, "records_forward", False)

    def recording(self, model: Any, layer: str, inputs: Any) -> Any:
        return self.inner.recording(model, layer, inputs)

    def weights(self, ctx: WeightContext) -> Weights:
        import torch

        from camkit_plugins.methods.eigencam import oriented_first_component, sites_by_channels

        found = self.inner.weights(ctx)
        if found.kind == "map":
            raise ValueError(f"eigen smoothing projects the weighted features, but {self.name.removesuffix('+eigen')} "
                             f"gives its map directly (no weights over channels): use it without eigen_smooth")
        layout, f = ctx.layout, ctx.features
        multi = ctx.multi_target
        w = found.tensor
        if found.kind == "class":  # (K, C) shared by every sample
            w = w[None].expand(f.shape[layout.batch_axis], -1, -1)
        if found.kind in ("class", "channel"):
            w = ctx.as_site_tensor(w)  # broadcasts over the sites
        expanded = ctx.expand_features() if multi else f
        weighted = w * expanded  # features' shape, or (N, K, ...)
        v = oriented_first_component(sites_by_channels(weighted, layout, multi)).to(weighted.dtype)  # (N*K, C)
        v = v.view(*ctx.target_shape, -1)
        return Weights.site(torch.broadcast_to(w, weighted.shape) * ctx.as_site_tensor(v))


def eigen_smooth(method: "str | CamMethod", **method_options: Any) -> EigenSmoothed:
    """``method`` with eigen smoothing, for ``camkit.explain(model, x, eigen_smooth("gradcam"))``."""
    return EigenSmoothed(method, **method_options)


# -- several layers ----------------------------------------------------------------------------------


def fuse(maps: Sequence[Any], fusion: str) -> Any:
    """One map from several equally shaped ones: ``mean``, ``max`` or ``product`` (element-wise)."""
    import torch

    if fusion not in FUSIONS:
        raise ValueError(f"fusion must be one of {', '.join(FUSIONS)}, got {fusion!r}")
    stacked = torch.stack(list(maps))
    if fusion == "mean":
        return stacked.mean(dim=0)
    if fusion == "max":
        return stacked.amax(dim=0)
    return stacked.prod(dim=0)


def _for_every_pass(targets: Any, first: Any) -> Any:
    """What every later pass explains: a callable target itself (it scores each pass's own output: its class
    ids, if it has any, would lose e.g. ``Negative``'s sign), else the class ids the first pass chose."""
    return targets if callable(targets) and not hasattr(targets, "shape") else first.targets


TTA_CONVENTIONS = ("mean", "irn")


def _renormalised(result: Any, maps: Any) -> Any:
    from camkit.contraction import postprocess

    return postprocess(maps, result.map_letters, layout=result.layout, relu=False, normalize=True)


def explain_layers(model: Any, inputs: Any, method: "str | CamMethod" = "gradcam", layers: Iterable[Any] = (),
                   fusion: str = "mean", targets: Any = None, *, topk: int | None = None,
                   layouts: Sequence[Any] | None = None, **options: Any) -> Any:
    """Maps of several layers, each resampled to the input's size (continuous axes) and min-max
    normalised, fused into one (``mean``, ``max`` or ``product``) and normalised again. Class targets are
    chosen once (from the logits) and shared by every layer; a callable target scores every layer's pass.
    Returns a ``CamResult`` whose ``layer`` lists the layers. ``layouts``: one feature layout per layer
    (None: as ``explain`` guesses)."""
    layers = list(layers)
    if not layers:
        raise ValueError("pass at least one layer")
    if fusion not in FUSIONS:
        raise ValueError(f"fusion must be one of {', '.join(FUSIONS)}, got {fusion!r}")
    if layouts is not None and len(layouts) != len(layers):
        raise ValueError(f"{len(layouts)} layouts for {len(layers)} layers")
    if not options.get("normalize", True) or not options.get("upsample", True) and "output_size" not in options:
        raise ValueError("fusing layers needs maps on one scale and one grid: keep normalize and upsample on")
    results: list[Any] = []
    for i, layer in enumerate(layers):
        layout = layouts[i] if layouts is not None else None
        result = Explainer(model, method, layer, layout, **options)(inputs, targets, topk=topk)
        if not results:  # the first layer chose the classes: every other layer explains the same ones
            targets, topk = _for_every_pass(targets, result), None
        elif result.maps.shape != results[0].maps.shape or result.map_letters != results[0].map_letters:
            raise ValueError(f"layer {result.layer!r} gives maps {result.map_letters} {tuple(result.maps.shape)}, "
                             f"layer "
                             f"{results[0].layer!r} {results[0].map_letters} {tuple(results[0].maps.shape)}: "
                             f"they cannot be fused (a discrete axis such as joints differs?)")
        results.append(result)
    first = results[0]
    maps = fuse([r.maps for r in results], fusion)
    return replace(first, maps=_renormalised(first, maps), method=f"{first.method}+{fusion}",
                   layer=",".join(r.layer for r in results))


# -- test-time augmentation ------------------------------------------------------------------------


def _continuous(layout: Layout, letters: str, what: str) -> None:
    for letter in letters:
        if letter not in layout.site_letters:
            raise ValueError(f"cannot {what} axis {letter!r}: the input layout {layout} has no such axis")
        if layout.kind(letter) != CONTINUOUS:
            raise ValueError(f"cannot {what} axis {letter!r} of {layout}: it is {layout.kind(letter)} "
                             f"(joints, nodes and persons have no order to flip or scale)")


def explain_augmented(model: Any, inputs: Any, method: "str | CamMethod" = "gradcam", layer: Any = None,
                      targets: Any = None, layout: "str | Layout | None" = None, *, flips: str = "W",
                      scales: Sequence[float] = (), scale_axes: str | None = None, topk: int | None = None,
                      convention: str = "mean", **options: Any) -> Any:
    """Test-time augmentation smoothing: the map of the input, plus that of the input flipped along each
    axis in ``flips`` and rescaled by each factor in ``scales`` (along ``scale_axes``, default every
    continuous axis of the input), each undone (flipped back, resampled to the input's size) and
    averaged, then min-max normalised. Class targets are chosen once on the unaugmented input;
    a callable target scores every copy's own output (a region mask is not flipped with the input). Only
    continuous axes of the input layout (``input_layout``, default ``NC`` + the sites of the
    features, e.g. ``NCHW``) may be flipped or scaled. Other options as for ``Explainer``.

    ``convention``: "mean" (each pass normalised, then averaged) or "irn", the WSSS papers' multi-scale
    inference (IRN, Ahn et al. 2019): every rescaled copy is also flipped, and the passes' ReLU'd maps are
    summed *before* normalising, so a scale at which the class responds strongly weighs more."""
    import torch

    from camkit.kernels import select_kernel

    if not options.get("normalize", True):
        raise ValueError("test-time augmentation averages normalised maps: keep normalize on")
    if "output_size" in options or not options.get("upsample", True):
        raise ValueError("test-time augmentation returns maps of the input's size: do not pass output_size or "
                         "upsample=False")
    if any(float(s) <= 0 for s in scales):
        raise ValueError(f"scales must be positive, got {tuple(scales)}")
    if convention not in TTA_CONVENTIONS:
        raise UnknownNameError.of("augment convention", convention, TTA_CONVENTIONS)
    if convention == "irn":  # raw maps summed, normalised once at the end
        options = {**options, "normalize": False}
    first = Explainer(model, method, layer, layout, **options)(inputs, targets, topk=topk)
    from camkit.targets import is_detections

    if is_detections(first.logits):  # a flipped or rescaled copy has other boxes: its "best" is another object
        raise ValueError("test-time augmentation (augment=, --scales, --flip) on a detector would average the "
                         "maps of different detections (a flip or a rescale moves the boxes); explain detections "
                         "without it")
    feature_layout = Layout.parse(first.layout)
    input_layout = Layout.parse(options.get("input_layout") or "NC" + feature_layout.site_letters)
    _continuous(input_layout, flips, "flip")
    axes = input_layout.continuous_letters if scale_axes is None else scale_axes
    if scales:
        _continuous(input_layout, axes, "rescale")
    sizes = input_layout.sizes(inputs.shape)
    augmented: list[tuple[Any, Callable[[Any], Any]]] = []
    for letter in flips:  # flip the input; flip the map back
        axis = first.map_letters.index(letter)
        augmented.append((inputs.flip(input_layout.letters.index(letter)), functools.partial(torch.flip, dims=(axis,))))
    for factor in scales:  # the map is resampled straight to the input's size: nothing left to undo
        new = {input_layout.letters.index(ch): max(1, round(sizes[ch] * float(factor))) for ch in axes}
        scaled = select_kernel(inputs).resample(inputs, new)
        augmented.append((scaled, lambda maps: maps))
        for letter in flips if convention == "irn" else "":  # IRN flips every scale, not only the original
            augmented.append((scaled.flip(input_layout.letters.index(letter)),
                              functools.partial(torch.flip, dims=(first.map_letters.index(letter),))))
    size = {ch: sizes[ch] for ch in feature_layout.continuous_letters if ch in sizes and ch in first.map_letters}
    explainer = Explainer(model, method, layer, layout, **{**options, "output_size": size})
    total = first.maps.clone()
    targets = _for_every_pass(targets, first)
    for x, undo in augmented:
        total = total + undo(explainer(x, targets).maps)
    maps = total / (1 + len(augmented))
    return replace(first, maps=_renormalised(first, maps), method=f"{first.method}+tta")
