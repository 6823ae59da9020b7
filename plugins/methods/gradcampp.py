"""Grad-CAM++ (Chattopadhay et al. 2018): positive gradients weighted by the closed-form alphas
alpha = g^2 / (2 g^2 + sum_s(f) g^3), using the exponential-score identities."""

from typing import Any

from camkit.hookspecs import hookimpl
from camkit.methods import CamMethod, WeightContext, Weights


class GradCamPlusPlus(CamMethod):
    name = "gradcam++"
    description = "positive gradients weighted by closed-form alphas"
    needs_gradients = True

    def weights(self, ctx: WeightContext) -> Weights:
        import torch

        # g^3 underflows in fp16 / bf16 (alpha would collapse to 1/2 or to 0): compute in at least fp32
        dtype = torch.promote_types(ctx.gradients.dtype, torch.float32)
        g = ctx.gradients.to(dtype)
        g2 = g * g
        feature_sums = ctx.sum_over_sites(ctx.features.to(dtype), keep_targets=False)
        feature_sums = ctx.as_site_tensor(feature_sums[:, None] if ctx.multi_target else feature_sums)
        denominator = 2 * g2 + feature_sums * g2 * g
        alpha = torch.where(denominator != 0, g2 / torch.where(denominator != 0, denominator, 1), 0)
        weights = ctx.sum_over_sites(alpha * g.clamp_min(0))
        return Weights.channel(weights.to(ctx.gradients.dtype))


@hookimpl
def camkit_register_methods() -> dict[str, Any]:
    return {"gradcam++": GradCamPlusPlus}
