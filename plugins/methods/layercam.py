"""LayerCAM (Jiang et al. 2021): a weight per channel and site, the positive gradient there."""

from typing import Any

from camkit.hookspecs import hookimpl
from camkit.methods import CamMethod, WeightContext, Weights


class LayerCam(CamMethod):
    name = "layercam"
    description = "positive gradient as a per-site weight"
    needs_gradients = True

    def weights(self, ctx: WeightContext) -> Weights:
        return Weights.site(ctx.gradients.clamp_min(0))


@hookimpl
def camkit_register_methods() -> dict[str, Any]:
    return {"layercam": LayerCam}
