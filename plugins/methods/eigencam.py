"""Eigen-CAM (Muhammad & Yeasin 2020): project the features on their first principal component
(first right-singular vector of the sites x channels activation matrix, as in the paper; not
centred). pytorch-grad-cam centres each channel over the sites before its SVD: that changes the
principal direction itself, not just an offset, and it keeps the SVD's arbitrary sign, so its maps
can differ in shape and come out inverted.
Gradient-free and class-agnostic: every target of a sample gets the same map."""

from typing import Any

from camkit.hookspecs import hookimpl
from camkit.methods import CamMethod, WeightContext, Weights


def first_right_singular_vector(a: Any) -> Any:
    """``(N, C)`` unit first right-singular vectors of ``(N, S, C)`` matrices, from the top eigenvector
    of the smaller Gram matrix (S x S or C x C, of the scaled matrix; eigh in float64): the same vector as an SVD (up to
    sign, ~1e-6) at a fraction of its cost (e.g. 9x on a CPU for 256 x 49 x 2048)."""
    import torch

    # the singular vectors do not depend on scale: dividing by each matrix's largest entry keeps the
    # fp32 Gram product from underflowing (tiny features) or overflowing (huge ones)
    a = a / a.abs().amax(dim=(1, 2), keepdim=True).clamp_min(torch.finfo(a.dtype).tiny)
    if a.shape[1] < a.shape[2]:  # few sites: v = A^T u / |A^T u| with u the top eigenvector of A A^T
        u = torch.linalg.eigh(torch.bmm(a, a.transpose(1, 2)).double())[1][..., -1].to(a.dtype)
        v = torch.bmm(u[:, None, :], a)[:, 0]
        return v / v.norm(dim=1, keepdim=True).clamp_min(torch.finfo(a.dtype).tiny)
    return torch.linalg.eigh(torch.bmm(a.transpose(1, 2), a).double())[1][..., -1].to(a.dtype)


class EigenCam(CamMethod):
    name = "eigencam"
    description = "first principal component of the activations (class-agnostic)"
    needs_gradients = False

    def weights(self, ctx: WeightContext) -> Weights:
        import torch

        layout = ctx.layout
        f = ctx.features.movedim((layout.batch_axis, layout.channel_axis), (0, -1))
        sites = f.reshape(f.shape[0], -1, f.shape[-1]).float()  # (N, sites, C)
        # the paper's decomposition of the activations themselves (not centred), so the map is
        # exactly their projection on the first right-singular vector v: a contraction
        v = first_right_singular_vector(sites)  # (N, C)
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
