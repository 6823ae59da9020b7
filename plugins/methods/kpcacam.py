"""KPCA-CAM (Karmani et al. 2024; pytorch-grad-cam's ``KPCA_CAM``): Eigen-CAM with kernel PCA. With x_s the
features at site s (channels centred over the sites, as pytorch-grad-cam does), a kernel matrix over the
sites, centred in feature space, and its top eigenpair (lambda, u),

    K_st = k(x_s, x_t),    K~ = (I - 1/Z) K (I - 1/Z),    K~ u = lambda u,    M(s) = sqrt(lambda) u_s,

i.e. each site's coordinate on the first kernel principal component (scikit-learn's ``KernelPCA``
``fit_transform``, of which it is the batched torch version). Kernels: ``"rbf"`` exp(-gamma |x - y|^2)
(default, as the issue asks), ``"sigmoid"`` tanh(gamma x.y + coef0) (pytorch-grad-cam's default),
``"poly"`` (gamma x.y + coef0)^degree and ``"linear"`` x.y (centred PCA: pytorch-grad-cam's Eigen-CAM);
gamma defaults to 1 / channels. u's sign is scikit-learn's: its largest-magnitude entry is positive.

The map is no sum over channels of weighted features (the kernel is not linear), so the method returns
the map itself (``Weights.direct_map``). Gradient-free and class-agnostic: every target of a sample gets
the same map. Cost: a Z x Z kernel and its eigendecomposition per sample (Z sites)."""

from typing import Any

from camkit.hookspecs import hookimpl
from camkit.methods import CamMethod, WeightContext, Weights

KERNELS = ("rbf", "sigmoid", "poly", "linear")


def kernel_matrix(x: Any, kernel: str, gamma: float, coef0: float, degree: int) -> Any:
    """``(N, Z, Z)`` kernel of the rows of ``(N, Z, C)``."""
    import torch

    if kernel == "rbf":
        return torch.exp(-gamma * torch.cdist(x, x).square())
    dot = torch.bmm(x, x.transpose(1, 2))
    if kernel == "sigmoid":
        return torch.tanh(gamma * dot + coef0)
    if kernel == "poly":
        return (gamma * dot + coef0) ** degree
    return dot


def first_kernel_component(x: Any, kernel: str, gamma: float | None = None, coef0: float = 1.0,
                           degree: int = 3) -> Any:
    """``(N, Z)`` coordinates of the Z rows of ``(N, Z, C)`` on their first kernel principal component."""
    import torch

    x = x.double()
    x = x - x.mean(dim=1, keepdim=True)
    k = kernel_matrix(x, kernel, 1.0 / x.shape[2] if gamma is None else gamma, coef0, degree)
    k = k - k.mean(dim=1, keepdim=True)  # centring in feature space: rows, then columns
    k = k - k.mean(dim=2, keepdim=True)
    k = (k + k.transpose(1, 2)) / 2
    if kernel in ("rbf", "linear"):  # positive semi-definite: the top eigenvector by squaring (Eigen-CAM's)
        from camkit_plugins.methods.eigencam import top_eigenvectors

        u = top_eigenvectors(k)
        top = torch.einsum("ns,nst,nt->n", u, k, u).clamp_min(0)
    else:  # sigmoid (and poly with coef0 < 0) kernels may have negative eigenvalues: the largest, as scikit-learn
        values, vectors = torch.linalg.eigh(k)
        u, top = vectors[..., -1], values[..., -1].clamp_min(0)
    largest = u.gather(1, u.abs().argmax(dim=1, keepdim=True))
    u = u * torch.where(largest < 0, -1.0, 1.0)
    return u * top.sqrt()[:, None]


class KpcaCam(CamMethod):
    name = "kpcacam"
    description = "first kernel-PCA component of the activations (RBF kernel; class-agnostic)"
    needs_gradients = False

    def __init__(self, kernel: str = "rbf", gamma: float | None = None, coef0: float = 1.0, degree: int = 3) -> None:
        if kernel not in KERNELS:
            raise ValueError(f"kernel {kernel!r}: expected one of {', '.join(KERNELS)}")
        if gamma is not None and not float(gamma) > 0:
            raise ValueError(f"gamma must be positive (or None for 1 / channels), got {gamma}")
        if int(degree) < 1:
            raise ValueError(f"degree must be at least 1, got {degree}")
        self.kernel, self.coef0, self.degree = kernel, float(coef0), int(degree)
        self.gamma = None if gamma is None else float(gamma)

    def weights(self, ctx: WeightContext) -> Weights:
        layout = ctx.layout
        f = ctx.features.movedim((layout.batch_axis, layout.channel_axis), (0, -1))
        sites = f.reshape(f.shape[0], -1, f.shape[-1])  # (N, Z, C), sites in the layout's order
        z = first_kernel_component(sites, self.kernel, self.gamma, self.coef0, self.degree)
        maps = z.to(f.dtype).view(f.shape[:-1])  # (N, *sites)
        if ctx.multi_target:
            maps = maps[:, None].expand(-1, ctx.target_shape[1], *maps.shape[1:])
        return Weights.direct_map(maps)


@hookimpl
def camkit_register_methods() -> dict[str, Any]:
    return {"kpcacam": KpcaCam}
