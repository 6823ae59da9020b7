"""Grad-CAM (Selvaraju et al. 2017): channel weight = gradient of the score averaged over sites."""

from typing import Any

from camkit.hookspecs import hookimpl
from camkit.methods import CamMethod, WeightContext, Weights


class GradCam(CamMethod):
    name = "gradcam"
    description = "gradient averaged over sites"
    needs_gradients = True

    def weights(self, ctx: WeightContext) -> Weights:
        return Weights.channel(ctx.sum_over_sites(ctx.gradients) / ctx.num_sites)


@hookimpl
def camkit_register_methods() -> dict[str, Any]:
    return {"gradcam": GradCam}
