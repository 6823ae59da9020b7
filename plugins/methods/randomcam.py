"""Random-CAM (pytorch-grad-cam's ``RandomCAM``), a baseline: channel weights drawn uniformly from
[-1, 1) for every sample and target, M(s) = sum_k u_k f_k(s). A method that does no better than this
on a metric explains nothing. ``seed`` makes the draw reproducible (on the features' device)."""

from typing import Any

from camkit.hookspecs import hookimpl
from camkit.methods import CamMethod, WeightContext, Weights


class RandomCam(CamMethod):
    name = "randomcam"
    description = "baseline: channel weights uniform in [-1, 1)"
    needs_gradients = False

    def __init__(self, seed: int | None = None) -> None:
        self.seed = seed

    def weights(self, ctx: WeightContext) -> Weights:
        import torch

        f = ctx.features
        shape = (*ctx.target_shape, f.shape[ctx.layout.channel_axis])  # (N, [K,] C), any kind of target
        generator = None
        if self.seed is not None:
            generator = torch.Generator(device=f.device).manual_seed(int(self.seed))
        u = torch.rand(shape, generator=generator, device=f.device, dtype=torch.float32)
        return Weights.channel((2 * u - 1).to(f.dtype))


@hookimpl
def camkit_register_methods() -> dict[str, Any]:
    return {"randomcam": RandomCam}
