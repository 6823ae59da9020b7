"""SS-CAM, smoothed Score-CAM (Wang et al. 2020): Score-CAM with Gaussian noise on every mask,

    w_k = mean_m softmax(S(x * (m_k + d_m)))_c,    d_m ~ N(0, std^2) per input site, m = 1..num_samples,

with m_k the channel's upsampled, min-max normalised activation (as in Score-CAM) and
M_c(s) = sum_k w_k f_k(s). ``chunk_size`` (sample, channel) pairs per forward, each pair's noisy copies
made just before theirs; ``seed`` fixes the noise (for a given chunk size). std = 0 is Score-CAM.

torchcam's ``SSCAM`` (defaults num_samples=35, std=2.0, kept here) weights the channels by a softmax
over channels of (target logit - baseline logit), as its Score-CAM does; camkit keeps Score-CAM's
softmax over classes, the authors' code."""

from typing import Any

from camkit.hookspecs import hookimpl
from camkit.methods import CamMethod, WeightContext, Weights


class SsCam(CamMethod):
    name = "sscam"
    description = "Score-CAM with Gaussian noise on the masks, averaged"
    needs_gradients = False
    runs_model = True

    def __init__(self, num_samples: int = 35, std: float = 2.0, chunk_size: int = 256, seed: int | None = None,
                 progress: bool = False) -> None:
        from camkit_plugins.methods.scorecam import check_chunk_size

        if int(num_samples) < 1 or std < 0:
            raise ValueError(f"num_samples must be positive and std >= 0, got {num_samples} and {std}")
        self.num_samples, self.std, self.seed = int(num_samples), float(std), seed
        self.chunk_size, self.progress = check_chunk_size(chunk_size), progress

    def weights(self, ctx: WeightContext) -> Weights:
        import torch

        from camkit_plugins.methods.scorecam import as_weights, masked_input_scores

        device = ctx.features.device
        generator = None if self.seed is None else torch.Generator(device=device).manual_seed(int(self.seed))

        def noisy(masks: Any) -> Any:
            return masks + self.std * torch.randn(masks.shape, generator=generator, device=device, dtype=masks.dtype)

        scores = masked_input_scores(ctx, self.chunk_size, [noisy] * self.num_samples,
                                     zero_stays_zero=self.std == 0, progress=self.progress, desc=self.name)
        return as_weights(ctx, scores)


@hookimpl
def camkit_register_methods() -> dict[str, Any]:
    return {"sscam": SsCam}
