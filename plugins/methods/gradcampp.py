"""Grad-CAM++ (Chattopadhay et al. 2018): positive gradients weighted by the closed-form alphas
alpha = g^2 / (2 g^2 + sum_s(f) g^3), using the exponential-score identities."""

from typing import Any

from camkit.hookspecs import hookimpl
from camkit.methods import CamMethod, WeightContext, Weights


class GradCamPlusPlus(CamMethod):
    name = "gradcam++"
    needs_gradients = True

    def weights(self, ctx: WeightContext) -> Weights:
        import torch

        g = ctx.gradients
        g2 = g * g
        feature_sums = ctx.sum_over_sites(ctx.features, keep_targets=False)
        feature_sums = ctx.as_site_tensor(feature_sums[:, None] if ctx.multi_target else feature_sums)
        denominator = 2 * g2 + feature_sums * g2 * g
        alpha = torch.where(denominator != 0, g2 / torch.where(denominator != 0, denominator, 1), 0)
        return Weights.channel(ctx.sum_over_sites(alpha * g.clamp_min(0)))


@hookimpl
def camkit_register_methods() -> dict[str, Any]:
    return {"gradcam++": GradCamPlusPlus}
