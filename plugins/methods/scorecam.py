"""Score-CAM (Wang et al. 2020): the weight of channel k is the target's softmax probability
when the input is masked by the channel's upsampled, min-max normalised activation.

Batched: the (sample, channel) masked inputs go through the model in chunks of ``chunk_size``,
each chunk's masks made just before its forward, so memory is bounded by the chunk. A channel whose
activation is constant (dead after ReLU) normalises to an all-zero mask, i.e. an all-zero input:
one forward pass of that input serves every such pair, exactly.

``masked_input_scores`` is the engine SS-CAM and IS-CAM share: each mask may be varied (noise, a
scale) several times and the probabilities averaged."""

import warnings
from typing import Any, Callable, Sequence

from camkit.hookspecs import hookimpl
from camkit.kernels import ConstantMapWarning
from camkit.methods import CamMethod, WeightContext, Weights

# a variant turns the chunk's normalised masks (P, *input sites) into the masks actually applied
Variant = Callable[[Any], Any]


def masked_input_scores(ctx: WeightContext, chunk_size: int, variants: Sequence[Variant] = (), *,
                        zero_stays_zero: bool = True, progress: bool = False, desc: str = "scorecam") -> Any:
    """``(N, K, C)`` channel weights: the target's softmax probability for the input times each
    (sample, channel) mask, averaged over ``variants`` (none: the mask itself). With
    ``zero_stays_zero`` (every variant maps a zero mask to zero), the dead channels share one
    forward of the all-zero input."""
    import torch

    from camkit.contraction import postprocess

    layout, in_layout = ctx.layout, ctx.input_layout
    if ctx.targets is None:
        raise ValueError(f"{desc} scores masked inputs by a class's probability: it needs class-id targets; for "
                         f"other targets use a gradient method such as 'gradcam'")
    missing = [ch for ch in layout.site_letters if ch not in in_layout.letters]
    if missing:
        raise ValueError(f"{desc} masks the input with the features: feature axes {''.join(missing)!r} "
                         f"of layout {layout} are not in the input layout {in_layout}")
    variants = list(variants) or [lambda masks: masks]
    # one activation map per (sample, channel) pair: (N * C, 1, *sites), "K" of size 1
    f = ctx.features.movedim((layout.batch_axis, layout.channel_axis), (0, 1))
    n, channels = f.shape[:2]
    pair_maps = f.reshape(n * channels, 1, *f.shape[2:])
    letters = "NK" + layout.site_letters
    size = {ch: ctx.input_size[ch] for ch in layout.continuous_letters}
    batch_axis = in_layout.batch_axis
    ids = ctx.targets if ctx.multi_target else ctx.targets[:, None]
    flat = pair_maps.flatten(1)
    if zero_stays_zero:
        live = (flat.amax(dim=1) > flat.amin(dim=1)).nonzero()[:, 0]
    else:
        live = torch.arange(n * channels, device=f.device)
    scores = torch.zeros(n * channels, ids.shape[1], device=f.device, dtype=torch.float32)
    if len(live) < n * channels:  # constant maps -> zero masks -> the all-zero input, forwarded once
        rows = torch.arange(n if ctx.other_inputs else 1, device=f.device)  # unless other inputs differ per sample
        blank = torch.zeros_like(ctx.inputs.index_select(batch_axis, rows))
        probabilities = ctx.forward(blank, owners=rows).float().softmax(dim=1).expand(n, -1)
        scores[:] = probabilities.gather(1, ids).repeat_interleave(channels, dim=0)
    starts = range(0, len(live), chunk_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc=desc, unit="chunk")
    for start in starts:  # live (sample, channel) pairs, chunked across samples
        pairs = live[start:start + chunk_size]
        owner = pairs // channels
        with warnings.catch_warnings():  # a map constant within rounding after resampling is a zero mask
            warnings.simplefilter("ignore", ConstantMapWarning)
            masks = postprocess(pair_maps[pairs], letters, layout=layout, relu=False, normalize=True, size=size)
        total = 0
        inputs = ctx.inputs.index_select(batch_axis, owner)
        for vary in variants:
            masked = inputs * in_layout.broadcast(vary(masks[:, 0]).to(inputs.dtype), "N" + layout.site_letters)
            probs = ctx.forward(masked, owners=owner).float().softmax(dim=1)
            total = total + probs.gather(1, ids[owner])
        scores[pairs] = total / len(variants)
    return scores.view(n, channels, -1).transpose(1, 2)  # (N, K, C)


def as_weights(ctx: WeightContext, scores: Any) -> Weights:
    """``(N, K, C)`` scores as channel weights in the features' dtype (``(N, C)`` for one target)."""
    weights = scores.to(ctx.features.dtype)
    return Weights.channel(weights if ctx.multi_target else weights[:, 0])


def check_chunk_size(chunk_size: int) -> int:
    if int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    return int(chunk_size)


class ScoreCam(CamMethod):
    name = "scorecam"
    description = "target probability of the input masked by each channel"
    needs_gradients = False
    runs_model = True

    def __init__(self, chunk_size: int = 256, progress: bool = False) -> None:
        self.chunk_size = check_chunk_size(chunk_size)
        self.progress = progress

    def weights(self, ctx: WeightContext) -> Weights:
        return as_weights(ctx, masked_input_scores(ctx, self.chunk_size, progress=self.progress, desc=self.name))


@hookimpl
def camkit_register_methods() -> dict[str, Any]:
    return {"scorecam": ScoreCam}
