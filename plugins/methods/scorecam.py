"""Score-CAM (Wang et al. 2020): the weight of channel k is the target's softmax probability
when the input is masked by the channel's upsampled, min-max normalised activation.

Batched: every (sample, channel) masked input goes through the model in chunks of
``chunk_size`` inputs, which bounds the memory."""

import warnings
from typing import Any

from camkit.hookspecs import hookimpl
from camkit.kernels import ConstantMapWarning
from camkit.methods import CamMethod, WeightContext, Weights


class ScoreCam(CamMethod):
    name = "scorecam"
    needs_gradients = False

    def __init__(self, chunk_size: int = 256, progress: bool = False) -> None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        self.chunk_size = int(chunk_size)
        self.progress = progress

    def weights(self, ctx: WeightContext) -> Weights:
        import torch

        from camkit.contraction import postprocess

        layout, in_layout = ctx.layout, ctx.input_layout
        missing = [ch for ch in layout.site_letters if ch not in in_layout.letters]
        if missing:
            raise ValueError(f"scorecam masks the input with the features: feature axes {''.join(missing)!r} "
                             f"of layout {layout} are not in the input layout {in_layout}")
        # activations as maps with the channel axis in the role of K: (N, C, *sites)
        f = ctx.features.movedim((layout.batch_axis, layout.channel_axis), (0, 1))
        letters = "NK" + layout.site_letters
        size = {ch: ctx.input_size[ch] for ch in layout.continuous_letters}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConstantMapWarning)  # dead channels are all-zero masks by design
            masks = postprocess(f, letters, layout=layout, relu=False, normalize=True, size=size)
        n, channels = masks.shape[:2]
        flat_masks = masks.reshape(n * channels, *masks.shape[2:])
        batch_axis = in_layout.batch_axis
        x = ctx.inputs.movedim(batch_axis, 0)
        rest = in_layout.letters.replace("N", "").lower()
        equation = f"b{rest},b{layout.site_letters.lower()}->b{rest}"
        ids = ctx.targets if ctx.multi_target else ctx.targets[:, None]
        scores = torch.empty(n * channels, ids.shape[1], device=f.device, dtype=torch.float32)
        starts = range(0, n * channels, self.chunk_size)
        if self.progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc="scorecam", unit="chunk")
        for start in starts:  # (sample, channel) pairs, chunked across samples
            pairs = torch.arange(start, min(start + self.chunk_size, n * channels), device=f.device)
            owner = pairs // channels
            masked = torch.einsum(equation, x[owner], flat_masks[pairs].to(x.dtype))
            probs = ctx.forward(masked.movedim(0, batch_axis)).float().softmax(dim=1)
            scores[pairs] = probs.gather(1, ids[owner])
        weights = scores.view(n, channels, -1).transpose(1, 2)  # (N, K, C)
        weights = weights.to(ctx.features.dtype)
        return Weights.channel(weights if ctx.multi_target else weights[:, 0])


@hookimpl
def camkit_register_methods() -> dict[str, Any]:
    return {"scorecam": ScoreCam}
