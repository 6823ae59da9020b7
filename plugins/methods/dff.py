"""Deep Feature Factorization (Collins, Achanta & Süsstrunk, ECCV 2018): the features of a whole batch,
as a channels x (samples x sites) matrix A, factorised into K non-negative concepts,

    A - a ~= W H,    W >= 0 (C x K, the concepts' channel profiles),   H >= 0 (K x samples x sites),

a = each channel's minimum (so A - a >= 0, as pytorch-grad-cam does). H gives one map per concept and
sample; the classifier after global pooling scores each concept: ``concept_scores = (W + a)^T`` passed
through the classifier matrix, and ``concept_classes`` lists the classes each concept supports most.

Factorised by Lee & Seung's multiplicative updates for the Frobenius loss, batched on the features'
device (pytorch-grad-cam runs scikit-learn's NMF on the CPU); ``seed`` fixes the random start.

    result = deep_feature_factorization(model, images, concepts=4)
    result.maps            # (N, K, H, W) in [0, 1], one map per concept
    result.concept_classes # (K, top) class ids each concept supports

The method ``dff`` (``camkit.explain(..., "dff")``, ``camkit explain --method dff``, ``camkit bench``)
gives one map per target instead: CAM on the features rebuilt from the concepts,

    M_c(s) = sum_k W_ck (a + W H)_k(s),          (W_c: the classifier's row of class c),

i.e. the class evidence that the K concepts carry (CAM itself as K reaches the rank of A). The
factorisation runs over the whole batch, so a sample's map depends on the others in its batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from camkit.hookspecs import hookimpl
from camkit.layout import Layout
from camkit.methods import CamMethod, WeightContext, Weights


@dataclass
class FactorizationResult:
    """``maps`` ``(N, K, *sites)`` (resampled and normalised like CAMs, ``map_letters`` names the axes);
    ``concepts`` ``(K, C)``; ``concept_scores`` ``(K, classes)`` (None without a classifier);
    ``concept_classes`` ``(K, top)``; ``logits`` ``(N, classes)``; ``loss`` the relative
    reconstruction error ``|A - a - W H| / |A - a|``."""

    maps: Any
    concepts: Any
    concept_scores: Any
    concept_classes: Any
    logits: Any
    layer: str
    layout: str
    map_letters: str
    loss: float


def nonnegative_factorization(a: Any, rank: int, iterations: int = 200, seed: int = 0) -> tuple[Any, Any]:
    """``W (rows, rank), H (rank, cols)``, both >= 0, with ``W H ~= a`` (``a >= 0``), by multiplicative
    updates (Lee & Seung 2001), which never increase the Frobenius error."""
    import torch

    generator = torch.Generator(device=a.device).manual_seed(int(seed))
    scale = (a.mean() / rank).clamp_min(1e-12).sqrt()  # scikit-learn's random init scale
    w = torch.rand((a.shape[0], rank), generator=generator, device=a.device, dtype=a.dtype) * scale
    h = torch.rand((rank, a.shape[1]), generator=generator, device=a.device, dtype=a.dtype) * scale
    tiny = torch.finfo(a.dtype).tiny
    for _ in range(iterations):
        h = h * (w.T @ a) / (w.T @ w @ h).clamp_min(tiny)
        w = w * (a @ h.T) / (w @ (h @ h.T)).clamp_min(tiny)
    return w, h


@dataclass
class Factors:
    """``A - a ~= W H`` for the features ``A`` (channels x (samples x sites)): ``w`` (C, K), ``h`` (K, N * sites)
    in float64, ``offset`` ``a`` (C, 1), ``shape`` of the features with channels first and samples second
    (``(C, N, *sites)``) and ``loss`` the relative reconstruction error."""

    w: Any
    h: Any
    offset: Any
    shape: tuple[int, ...]
    loss: float

    def rebuilt(self) -> Any:
        """``a + W H`` shaped ``(C, N, *sites)``, float32."""
        return (self.offset.double() + self.w @ self.h).float().view(self.shape)


def factorize(features: Any, layout: Layout, concepts: int, iterations: int = 200, seed: int = 0) -> Factors:
    """The non-negative factorisation of ``features`` (in ``layout``) over the whole batch, shifted by each
    channel's minimum."""
    f = features.movedim((layout.channel_axis, layout.batch_axis), (0, 1)).float()  # (C, N, *sites)
    a = f.flatten(1)
    offset = a.amin(dim=1, keepdim=True)
    shifted = (a - offset).double()
    w, h = nonnegative_factorization(shifted, concepts, iterations, seed)
    loss = float((shifted - w @ h).norm() / shifted.norm().clamp_min(1e-30))
    return Factors(w, h, offset, tuple(f.shape), loss)


def deep_feature_factorization(model: Any, inputs: Any, layer: Any = None, layout: "str | Layout | None" = None, *,
                               concepts: int = 5, iterations: int = 200, seed: int = 0, top: int = 3,
                               **options: Any) -> FactorizationResult:
    """Factorise the features of ``layer`` (found as for ``explain`` when None) over the whole batch into
    ``concepts`` non-negative concepts. ``options`` as for ``Explainer`` (``upsample``, ``reduce``,
    ``output_size``, ``classifier_weights``, ...). Works for any layout: the factorised matrix is
    channels x (samples x sites)."""

    from camkit.contraction import postprocess
    from camkit.explainer import Explainer

    if int(concepts) < 1 or int(iterations) < 1:
        raise ValueError(f"concepts and iterations must be positive, got {concepts} and {iterations}")
    normalize, upsample = options.pop("normalize", True), options.pop("upsample", True)
    output_size, reduce = options.pop("output_size", None), options.pop("reduce", "")
    # the features through the public API: an Explainer with a method that only keeps them (its zero
    # map is neither resampled nor normalised)
    kept: dict[str, Any] = {}
    result = Explainer(model, _KeepFeatures(kept), layer, layout, normalize=False, upsample=False,
                       **options)(inputs)
    ctx = kept["ctx"]
    lay = ctx.layout
    factors = factorize(ctx.features, lay, int(concepts), int(iterations), seed)
    w, h, offset = factors.w, factors.h, factors.offset
    loss = factors.loss
    maps = h.float().view(int(concepts), *factors.shape[1:]).movedim(0, 1)  # (N, K, *sites)
    letters = "NK" + lay.site_letters
    size = output_size if output_size is not None else {
        ch: ctx.input_size[ch] for ch in lay.continuous_letters
        if upsample and ch in ctx.input_size and ch not in reduce} or None
    maps = postprocess(maps, letters, layout=lay, relu=False, normalize=normalize, size=size, reduce=reduce)
    profiles = (w.float() + offset).T  # (K, C)
    scores = classes = None
    try:
        matrix = ctx.classifier(profiles.shape[1]).to(profiles.device).float()
    except ValueError:
        matrix = None
    if matrix is not None:
        scores = profiles @ matrix.T
        classes = scores.topk(min(int(top), scores.shape[1]), dim=1).indices
    return FactorizationResult(maps=maps, concepts=profiles, concept_scores=scores, concept_classes=classes,
                               logits=result.logits, layer=result.layer, layout=str(lay),
                               map_letters="".join(ch for ch in letters if ch not in reduce), loss=loss)


class _KeepFeatures(CamMethod):
    """A method that records its context and returns zero weights (its map is not used)."""

    name = "dff"
    needs_gradients = False

    def __init__(self, kept: dict[str, Any]) -> None:
        self.kept = kept

    def weights(self, ctx: Any) -> Any:
        import torch

        from camkit.methods import Weights

        self.kept["ctx"] = ctx
        return Weights.channel(torch.zeros(*ctx.targets.shape, ctx.features.shape[ctx.layout.channel_axis],
                                           device=ctx.features.device, dtype=ctx.features.dtype))


class DeepFeatureFactorization(CamMethod):
    """``dff``: CAM on the batch's features rebuilt from ``concepts`` non-negative factors (``iterations``
    multiplicative updates from the random start ``seed``). Needs the classifier, as CAM does."""

    name = "dff"
    description = "CAM on the features rebuilt from K non-negative concepts (Deep Feature Factorization)"

    def __init__(self, concepts: int = 5, iterations: int = 200, seed: int = 0) -> None:
        if int(concepts) < 1 or int(iterations) < 1:
            raise ValueError(f"concepts and iterations must be positive, got {concepts} and {iterations}")
        self.concepts, self.iterations, self.seed = int(concepts), int(iterations), int(seed)

    def weights(self, ctx: WeightContext) -> Weights:
        import torch

        from camkit.contraction import class_activation_map

        layout = ctx.layout
        rows = ctx.classifier(ctx.features.shape[layout.channel_axis])  # (classes, C); needs class ids
        assert ctx.targets is not None  # ctx.classifier refuses targets without class ids
        weights = rows.to(ctx.features.device, torch.float32)[ctx.targets]  # (N, [K,] C)
        rebuilt = factorize(ctx.features, layout, self.concepts, self.iterations, self.seed).rebuilt()
        features = rebuilt.movedim((0, 1), (layout.channel_axis, layout.batch_axis))  # back to the layout
        return Weights.direct_map(class_activation_map(features, layout, channel_weights=weights)
                                  .to(ctx.features.dtype))


@hookimpl
def camkit_register_methods() -> dict[str, Any]:
    return {"dff": DeepFeatureFactorization}
