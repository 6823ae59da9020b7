"""Eigen-CAM (Muhammad & Yeasin 2020): project the features on their first principal component.
Gradient-free and class-agnostic: every target of a sample gets the same map."""

from typing import Any

from camkit.hookspecs import hookimpl
from camkit.methods import CamMethod, WeightContext, Weights


class EigenCam(CamMethod):
    name = "eigencam"
    needs_gradients = False

    def weights(self, ctx: WeightContext) -> Weights:
        import torch

        layout = ctx.layout
        f = ctx.features.movedim((layout.batch_axis, layout.channel_axis), (0, -1))
        sites = f.reshape(f.shape[0], -1, f.shape[-1]).float()  # (N, sites, C)
        mean = sites.mean(dim=1, keepdim=True)
        _, _, vh = torch.linalg.svd(sites - mean, full_matrices=False)
        v = vh[:, 0, :]  # (N, C) first principal direction
        # an eigenvector's sign is arbitrary: orient it along the mean activation
        sign = torch.sign((v * mean[:, 0]).sum(dim=1, keepdim=True))
        v = v * torch.where(sign == 0, torch.ones_like(sign), sign)
        v = v.to(ctx.features.dtype)
        if ctx.multi_target:
            v = v[:, None, :].expand(-1, ctx.targets.shape[1], -1)
        return Weights.channel(v)


@hookimpl
def camkit_register_methods() -> dict[str, Any]:
    return {"eigencam": EigenCam}
