"""EigenGrad-CAM (pytorch-grad-cam's ``EigenGradCAM``): Eigen-CAM of the gradient-weighted features.
With P = g * f as a sites x channels matrix per sample and target, v its first right-singular vector,

    M_c(s) = sum_k v_k g_k(s) f_k(s)        (the projection of P(s) on v),

i.e. the site weight w_k(s) = v_k g_k(s). As in camkit's Eigen-CAM, P is not centred and v is
oriented so that the projection sums to a positive value; pytorch-grad-cam centres each channel
before the SVD (which changes the principal direction itself) and keeps the SVD's arbitrary sign."""

from typing import Any

from camkit.hookspecs import hookimpl
from camkit.methods import CamMethod, WeightContext, Weights


def oriented_first_component(matrices: Any) -> Any:
    """``(B, C)`` first right-singular vectors of ``(B, S, C)`` matrices, signed so that the projection
    of each matrix on its vector sums to a non-negative value."""
    import torch

    from camkit_plugins.methods.eigencam import first_right_singular_vector

    v = first_right_singular_vector(matrices.float())
    sign = torch.sign(torch.einsum("bsc,bc->b", matrices.float(), v))[:, None]
    return v * torch.where(sign == 0, torch.ones_like(sign), sign)


class EigenGradCam(CamMethod):
    name = "eigengradcam"
    description = "first principal component of gradient x activation"
    needs_gradients = True

    def weights(self, ctx: WeightContext) -> Weights:
        layout = ctx.layout
        g = ctx.gradients
        product = g * ctx.expand_features()
        # (N, [K,] ...) -> (N*K, sites, C): one decomposition per sample and target, batched
        if ctx.multi_target:
            channel_axis = layout.channel_axis + (1 if layout.channel_axis > layout.batch_axis else 2)
            p = product.movedim(channel_axis, -1).flatten(2, -2).flatten(0, 1)
        else:
            p = product.movedim((layout.batch_axis, layout.channel_axis), (0, -1)).flatten(1, -2)
        v = oriented_first_component(p).to(g.dtype)
        v = v.view(*g.shape[:2], -1) if ctx.multi_target else v
        return Weights.site(g * ctx.as_site_tensor(v))


@hookimpl
def camkit_register_methods() -> dict[str, Any]:
    return {"eigengradcam": EigenGradCam}
