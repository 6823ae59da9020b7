"""Score-CAM (Wang et al. 2020): the weight of channel k is the target's softmax probability
when the input is masked by the channel's upsampled, min-max normalised activation.

Batched: the (sample, channel) masked inputs go through the model in chunks of ``chunk_size``,
each chunk's masks made just before its forward, so memory is bounded by the chunk. A channel whose
activation is constant (dead after ReLU) normalises to an all-zero mask, i.e. an all-zero input:
one forward pass of that input serves every such pair, exactly."""

import warnings
from typing import Any

from camkit.hookspecs import hookimpl
from camkit.kernels import ConstantMapWarning
from camkit.methods import CamMethod, WeightContext, Weights


class ScoreCam(CamMethod):
    name = "scorecam"
    needs_gradients = False
    runs_model = True

    def __init__(self, chunk_size: int = 256, progress: bool = False) -> None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        self.chunk_size = int(chunk_size)
        self.progress = progress

    def weights(self, ctx: WeightContext) -> Weights:
        import torch

        from camkit.contraction import postprocess

        layout, in_layout = ctx.layout, ctx.input_layout
        if ctx.targets is None:
            raise ValueError("scorecam scores masked inputs by a class's probability: it needs class-id targets; "
                             "for other targets use a gradient method such as 'gradcam'")
        missing = [ch for ch in layout.site_letters if ch not in in_layout.letters]
        if missing:
            raise ValueError(f"scorecam masks the input with the features: feature axes {''.join(missing)!r} "
                             f"of layout {layout} are not in the input layout {in_layout}")
        # one activation map per (sample, channel) pair: (N * C, 1, *sites), "K" of size 1
        f = ctx.features.movedim((layout.batch_axis, layout.channel_axis), (0, 1))
        n, channels = f.shape[:2]
        pair_maps = f.reshape(n * channels, 1, *f.shape[2:])
        letters = "NK" + layout.site_letters
        size = {ch: ctx.input_size[ch] for ch in layout.continuous_letters}
        batch_axis = in_layout.batch_axis
        x = ctx.inputs.movedim(batch_axis, 0)
        rest = in_layout.letters.replace("N", "").lower()
        equation = f"b{rest},b{layout.site_letters.lower()}->b{rest}"
        ids = ctx.targets if ctx.multi_target else ctx.targets[:, None]
        flat = pair_maps.flatten(1)
        live = (flat.amax(dim=1) > flat.amin(dim=1)).nonzero()[:, 0]
        scores = torch.empty(n * channels, ids.shape[1], device=f.device, dtype=torch.float32)
        if len(live) < n * channels:  # constant maps -> zero masks -> the all-zero input, forwarded once
            # one zero input serves every sample, unless other model inputs differ per sample
            rows = torch.arange(n if ctx.other_inputs else 1, device=x.device)
            blank = ctx.forward(torch.zeros_like(x[rows]).movedim(0, batch_axis), owners=rows).float().softmax(dim=1)
            scores[:] = blank.expand(n, -1).gather(1, ids).repeat_interleave(channels, dim=0)
        starts = range(0, len(live), self.chunk_size)
        if self.progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc="scorecam", unit="chunk")
        for start in starts:  # live (sample, channel) pairs, chunked across samples
            pairs = live[start:start + self.chunk_size]
            owner = pairs // channels
            with warnings.catch_warnings():  # a map constant within rounding after resampling is a zero mask
                warnings.simplefilter("ignore", ConstantMapWarning)
                masks = postprocess(pair_maps[pairs], letters, layout=layout, relu=False, normalize=True, size=size)
            masked = torch.einsum(equation, x[owner], masks[:, 0].to(x.dtype))
            probs = ctx.forward(masked.movedim(0, batch_axis), owners=owner).float().softmax(dim=1)
            scores[pairs] = probs.gather(1, ids[owner])
        weights = scores.view(n, channels, -1).transpose(1, 2)  # (N, K, C)
        weights = weights.to(ctx.features.dtype)
        return Weights.channel(weights if ctx.multi_target else weights[:, 0])


@hookimpl
def camkit_register_methods() -> dict[str, Any]:
    return {"scorecam": ScoreCam}
