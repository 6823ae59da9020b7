"""Seg-Eigen-CAM (Chung & Ying, Applied Sciences 2025): Eigen-CAM of the features weighted by the
absolute gradient, for segmentation (any target works: ``camkit.targets.SegmentationRegion`` sums a
region's scores). With P = |g| * f as a sites x channels matrix per sample and target and v its first
right-singular vector,

    M_c(s) = sum_k v_k |g_k(s)| f_k(s)        (the projection of P(s) on v),

i.e. the site weight w_k(s) = v_k |g_k(s)|, with v's sign chosen so that the projection's largest
magnitude is positive (the paper's sign correction: flip when |min| > |max|). The absolute value keeps
the evidence of negative gradients that Grad-CAM's averaging cancels.

As camkit's Eigen-CAM, P is not centred by default; pytorch-grad-cam's ``SegEigenCAM`` centres each
channel of P over the sites before its SVD (another principal direction, as in its Eigen-CAM), and so
does ``centre=True``: the map is then the centred projection itself (not a sum of weighted features)."""

from typing import Any

from camkit.hookspecs import hookimpl
from camkit.methods import CamMethod, WeightContext, Weights


class SegEigenCam(CamMethod):
    name = "segeigencam"
    description = "first principal component of |gradient| x activation, its largest extreme positive"
    needs_gradients = True

    def __init__(self, centre: bool = False) -> None:
        self.centre = bool(centre)

    def weights(self, ctx: WeightContext) -> Weights:
        import torch

        from camkit_plugins.methods.eigencam import first_right_singular_vector, sites_by_channels

        magnitude = ctx.gradients.abs()
        # one decomposition per sample and target, batched: (N [K], sites, C)
        p = sites_by_channels(magnitude * ctx.expand_features(), ctx.layout, ctx.multi_target)
        if self.centre:
            p = p - p.mean(dim=1, keepdim=True)
        v = first_right_singular_vector(p)
        projection = torch.bmm(p, v[..., None])[..., 0]  # (N [K], sites)
        lowest, highest = torch.aminmax(projection, dim=1)
        sign = torch.where(lowest.abs() > highest.abs(), -1.0, 1.0).to(v.dtype)[:, None]
        if self.centre:  # the centred projection is no longer a sum of weighted features
            sites = [ctx.features.shape[ctx.layout.letters.index(ch)] for ch in ctx.layout.site_letters]
            return Weights.direct_map((projection * sign).view(*ctx.target_shape, *sites))
        v = (v * sign).view(*magnitude.shape[:2], -1) if ctx.multi_target else v * sign
        return Weights.site(magnitude * ctx.as_site_tensor(v))


@hookimpl
def camkit_register_methods() -> dict[str, Any]:
    return {"segeigencam": SegEigenCam}
