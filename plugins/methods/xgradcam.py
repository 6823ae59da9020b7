"""XGrad-CAM (Fu et al. 2020): weights = sum_s(g * f) / sum_s(f)."""

from typing import Any

from camkit.hookspecs import hookimpl
from camkit.methods import CamMethod, WeightContext, Weights


class XGradCam(CamMethod):
    name = "xgradcam"
    description = "sum of gradient x activation over the sum of activations"
    needs_gradients = True

    def weights(self, ctx: WeightContext) -> Weights:
        import torch

        feature_sums = ctx.sum_over_sites(ctx.features, keep_targets=False)
        if ctx.multi_target:
            feature_sums = feature_sums.unsqueeze(1)
        weighted = ctx.sum_over_sites(ctx.gradients * ctx.expand_features())
        safe = torch.where(feature_sums.abs() > 1e-7, feature_sums, torch.ones_like(feature_sums))
        return Weights.channel(torch.where(feature_sums.abs() > 1e-7, weighted / safe, torch.zeros_like(weighted)))


@hookimpl
def camkit_register_methods() -> dict[str, Any]:
    return {"xgradcam": XGradCam}
