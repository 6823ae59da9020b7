"""EigenGrad-CAM (pytorch-grad-cam's ``EigenGradCAM``): Eigen-CAM of the gradient-weighted features.
With P = g * f as a sites x channels matrix per sample and target, v its first right-singular vector,

    M_c(s) = sum_k v_k g_k(s) f_k(s)        (the projection of P(s) on v),

i.e. the site weight w_k(s) = v_k g_k(s). As in camkit's Eigen-CAM, P is not centred and v is
oriented so that the projection sums to a positive value; pytorch-grad-cam centres each channel
before the SVD (which changes the principal direction itself) and keeps the SVD's arbitrary sign."""

from typing import Any

from camkit.hookspecs import hookimpl
from camkit.methods import CamMethod, WeightContext, Weights


class EigenGradCam(CamMethod):
    name = "eigengradcam"
    description = "first principal component of gradient x activation"
    needs_gradients = True

    def weights(self, ctx: WeightContext) -> Weights:
        from camkit_plugins.methods.eigencam import oriented_first_component, sites_by_channels

        g = ctx.gradients
        # one decomposition per sample and target, batched: (N [K], sites, C)
        p = sites_by_channels(g * ctx.expand_features(), ctx.layout, ctx.multi_target)
        v = oriented_first_component(p).to(g.dtype)
        v = v.view(*g.shape[:2], -1) if ctx.multi_target else v
        return Weights.site(g * ctx.as_site_tensor(v))


@hookimpl
def camkit_register_methods() -> dict[str, Any]:
    return {"eigengradcam": EigenGradCam}
