"""Grad-CAM element-wise (pytorch-grad-cam's ``GradCAMElementWise``): the positive part of every
gradient x activation product, summed over channels,

    M_c(s) = sum_k relu(g_k(s) f_k(s)),        g = dS_c / df.

relu(g f) = f * (g * [g f > 0]), so the site weight w_k(s) = g_k(s) [g_k(s) f_k(s) > 0] gives the map
through the one contraction, exactly."""

from typing import Any

from camkit.hookspecs import hookimpl
from camkit.methods import CamMethod, WeightContext, Weights


class GradCamElementWise(CamMethod):
    name = "gradcam-elementwise"
    description = "sum over channels of relu(gradient x activation), per site"
    needs_gradients = True

    def weights(self, ctx: WeightContext) -> Weights:
        g = ctx.gradients
        return Weights.site(g * (g * ctx.expand_features() > 0))


@hookimpl
def camkit_register_methods() -> dict[str, Any]:
    return {"gradcam-elementwise": GradCamElementWise}
