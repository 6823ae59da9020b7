"""Eigen-CAM (Muhammad & Yeasin 2020): project the features on their first principal component
(first right-singular vector of the sites x channels activation matrix, as in the paper; not
centred). pytorch-grad-cam centres each channel over the sites before its SVD: that changes the
principal direction itself, not just an offset, and it keeps the SVD's arbitrary sign, so its maps
can differ in shape and come out inverted.
Gradient-free and class-agnostic: every target of a sample gets the same map."""

from typing import Any

from camkit.hookspecs import hookimpl
from camkit.methods import CamMethod, WeightContext, Weights

# a Gram matrix up to this size gets its top eigenvector by repeated squaring (tiny single-threaded matrix
# products); larger ones by LAPACK's eigh, whose threads stall on a busy CPU for matrices this small
SQUARING_MAX_SIZE = 64
SQUARINGS = 12  # G^(2^12): a top eigenvector converged unless lambda_2 / lambda_1 > 0.997
RESIDUAL_TOLERANCE = 1e-10  # |G u - rho u| / trace(G) above this: not converged, eigh decides


def top_eigenvectors(gram: Any) -> Any:
    """``(B, n)`` unit eigenvectors of the largest eigenvalue of ``(B, n, n)`` symmetric positive
    semi-definite float64 matrices (zero for a zero matrix). Up to ``SQUARING_MAX_SIZE``: the power
    method run 2^SQUARINGS steps by squaring the trace-normalised matrix, read off its column of largest
    diagonal, and checked by the residual of the eigen-equation; a matrix that fails the check (a top
    eigenvalue nearly double) goes to ``torch.linalg.eigh``, like every larger one. Equal to eigh's vector
    up to sign (to ~1e-12; tested to 1e-5)."""
    import torch

    n = gram.shape[-1]
    if n > SQUARING_MAX_SIZE:
        nonzero = gram.diagonal(dim1=1, dim2=2).sum(dim=1) > 0
        return torch.linalg.eigh(gram)[1][..., -1] * nonzero[:, None]
    power = gram
    for _ in range(SQUARINGS):
        trace = power.diagonal(dim1=1, dim2=2).sum(dim=1)
        power = power / torch.where(trace > 0, trace, 1.0)[:, None, None]
        power = torch.bmm(power, power)
    column = power.diagonal(dim1=1, dim2=2).argmax(dim=1)
    u = power.gather(2, column[:, None, None].expand(-1, n, 1))[..., 0]
    u = u / u.norm(dim=1, keepdim=True).clamp_min(torch.finfo(u.dtype).tiny)
    gu = torch.bmm(gram, u[..., None])[..., 0]
    residual = (gu - (u * gu).sum(dim=1, keepdim=True) * u).norm(dim=1)
    unsettled = ~(residual <= RESIDUAL_TOLERANCE * gram.diagonal(dim1=1, dim2=2).sum(dim=1))  # NaN-safe
    if bool(unsettled.any()):
        u[unsettled] = torch.linalg.eigh(gram[unsettled])[1][..., -1]
    return u


def sites_by_channels(tensor: Any, layout: Any, multi_target: bool = False) -> Any:
    """``(B, S, C)``: features-shaped ``tensor`` as one sites x channels matrix per sample (B = N), or per
    sample and target for ``(N, K, ...)`` tensors (B = N K); a view, no copy, for channels-first layouts."""
    if not multi_target:
        return tensor.movedim((layout.batch_axis, layout.channel_axis), (0, 1)).flatten(2).transpose(1, 2)
    channel_axis = layout.channel_axis + (1 if layout.channel_axis > layout.batch_axis else 2)
    return tensor.movedim(channel_axis, 2).flatten(3).flatten(0, 1).transpose(1, 2)


def first_right_singular_vector(a: Any) -> Any:
    """``(N, C)`` unit first right-singular vectors of ``(N, S, C)`` matrices (any strides), from the top
    eigenvector of the smaller Gram matrix (S x S or C x C) in float64, where neither tiny nor huge features
    under- or overflow: the same vector as an SVD (up to sign, ~1e-6) at a fraction of its cost."""
    return _first_component(a)[0].to(a.dtype)


def oriented_first_component(a: Any) -> Any:
    """``(N, C)`` first right-singular vectors of ``(N, S, C)`` matrices, signed so that the projection of
    each matrix on its vector sums to a non-negative value (a singular vector's sign is arbitrary)."""
    import torch

    v, sums = _first_component(a)
    return (v * torch.where(sums < 0, -1.0, 1.0)[:, None]).to(a.dtype)


def _first_component(a: Any) -> tuple[Any, Any]:
    """``(v, sum_s (a v)_s)`` in float64. Few sites: v = a^T u / |a^T u| with u the top eigenvector of
    G = a a^T, and the projection's sum 1^T G u / |a^T u| costs no pass over ``a``."""
    import torch

    a64 = a.double()
    tiny = torch.finfo(torch.float64).tiny
    if a.shape[1] < a.shape[2]:
        gram = torch.bmm(a64, a64.transpose(1, 2))
        u = top_eigenvectors(gram)
        v = torch.bmm(u[:, None, :], a64)[:, 0]
        norm = v.norm(dim=1).clamp_min(tiny)
        return v / norm[:, None], torch.bmm(gram, u[..., None])[..., 0].sum(dim=1) / norm
    v = top_eigenvectors(torch.bmm(a64.transpose(1, 2), a64))
    return v, torch.einsum("nc,nc->n", a64.sum(dim=1), v)


class EigenCam(CamMethod):
    name = "eigencam"
    description = "first principal component of the activations (class-agnostic)"
    needs_gradients = False

    def weights(self, ctx: WeightContext) -> Weights:
        sites = sites_by_channels(ctx.features, ctx.layout)  # (N, sites, C)
        # the paper's decomposition of the activations themselves (not centred), so the map is
        # exactly their projection on the first right-singular vector v: a contraction
        v = oriented_first_component(sites).to(ctx.features.dtype)  # (N, C)
        if ctx.multi_target:
            v = v[:, None, :].expand(-1, ctx.targets.shape[1], -1)
        return Weights.channel(v)


@hookimpl
def camkit_register_methods() -> dict[str, Any]:
    return {"eigencam": EigenCam}
