"""Eigen-CAM (Muhammad & Yeasin 2020): project the features on their first principal component
(first right-singular vector of the sites x channels activation matrix, as in the paper; not
centred, unlike pytorch-grad-cam, whose maps differ by a per-map offset before the ReLU).
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
        # the paper's decomposition of the activations themselves (not centred), so the map is
        # exactly their projection on the first right-singular vector: a contraction
        _, _, vh = torch.linalg.svd(sites, full_matrices=False)
        v = vh[:, 0, :]  # (N, C)
        # a singular vector's sign is arbitrary: orient it so the projection is mostly positive
        sign = torch.sign(torch.einsum("nsc,nc->n", sites, v))[:, None]
        v = v * torch.where(sign == 0, torch.ones_like(sign), sign)
        v = v.to(ctx.features.dtype)
        if ctx.multi_target:
            v = v[:, None, :].expand(-1, ctx.targets.shape[1], -1)
        return Weights.channel(v)


@hookimpl
def camkit_register_methods() -> dict[str, Any]:
    return {"eigencam": EigenCam}
